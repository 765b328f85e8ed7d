//! MQTT over WebSocket from the client (`ws://` and `wss://` addresses) against our broker's
//! `ws` and `wss` listeners: the client frames with tungstenite, the broker with its own
//! RFC 6455 code, so each side is checked by an implementation it does not share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pki::Pki;
use sagitta_broker::{Broker, Config, ListenerConfig, ListenerKind};
use sagitta_client::{Client, ConnectError, ProtocolVersion, QoS, TlsOptions};

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn broker(pki: &Pki) -> Broker {
    let mut config = Config::default().in_memory();
    config.listen = vec![any()];
    config.listeners = vec![
        ListenerConfig::ws(any()).allow_anonymous(true),
        ListenerConfig::wss(any(), pki.path("server.pem"), pki.path("server.key"))
            .allow_anonymous(true),
    ];
    Broker::start(config).await.expect("broker starts")
}

fn addr_of(broker: &Broker, kind: ListenerKind) -> SocketAddr {
    let i = broker
        .listeners()
        .iter()
        .position(|l| l.kind == kind)
        .expect("listener");
    broker.local_addrs()[i]
}

/// Publishes at every QoS through `url` and receives the messages back, for both versions.
async fn round_trip(url: &str, tls: Option<TlsOptions>) {
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let builder = |id: &str| {
            let b = Client::builder(url)
                .protocol(version)
                .client_id(format!("{id}-{version}"));
            match &tls {
                Some(t) => b.tls(t.clone()),
                None => b,
            }
        };
        let sub = builder("sub").connect().await.unwrap();
        let topic = format!("ws/{version}");
        sub.subscribe_recv(format!("{topic}/#").as_str(), QoS::ExactlyOnce)
            .await
            .unwrap();
        let publisher = builder("pub").connect().await.unwrap();
        let big = vec![7u8; 200_000];
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = if i == 2 {
                big.clone()
            } else {
                vec![i as u8; 10]
            };
            publisher
                .publish_with(format!("{topic}/{i}").as_str(), payload.clone(), qos)
                .await
                .unwrap();
            let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("a message in time")
                .expect("the client is open");
            assert_eq!(m.topic.as_str(), format!("{topic}/{i}"), "{url} {version}");
            assert_eq!(&m.payload[..], &payload[..], "{url} {version} {qos:?}");
        }
        publisher.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn ws_and_wss_addresses_round_trip() {
    let pki = Pki::new("ws");
    let broker = broker(&pki).await;
    let ws = addr_of(&broker, ListenerKind::Ws);
    round_trip(&format!("ws://{ws}/mqtt"), None).await;
    let wss = addr_of(&broker, ListenerKind::Wss);
    round_trip(
        &format!("wss://localhost:{}/mqtt", wss.port()),
        Some(TlsOptions::ca_file(pki.path("ca.pem"))),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn websocket_refusals_are_clear() {
    let pki = Pki::new("ws-refused");
    let broker = broker(&pki).await;
    let ws = addr_of(&broker, ListenerKind::Ws);
    // Another path: the broker answers 404 to the upgrade.
    let e = Client::builder(format!("ws://{ws}/elsewhere"))
        .connect()
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("404"), "{e}");
    // wss:// to a broker whose CA is unknown: the TLS handshake fails.
    let wss = addr_of(&broker, ListenerKind::Wss);
    let e = Client::builder(format!("wss://localhost:{}/mqtt", wss.port()))
        .tls(TlsOptions::ca_file(pki.path("other-ca.pem")))
        .connect()
        .await
        .expect_err("refused");
    assert!(matches!(e, ConnectError::TlsHandshake { .. }), "{e:?}");
    // TLS options with a ws:// address are a mistake, said before connecting.
    let e = Client::builder(format!("ws://{ws}/mqtt"))
        .tls(TlsOptions::ca_file(pki.path("ca.pem")))
        .connect()
        .await
        .expect_err("invalid");
    assert!(matches!(e, ConnectError::InvalidOptions(_)), "{e:?}");
    broker.shutdown().await;
}
