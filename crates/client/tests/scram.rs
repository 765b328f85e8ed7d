//! SCRAM-SHA-256 (MQTT 5.0 enhanced authentication, `ClientBuilder::scram_sha256`) against our
//! broker with SCRAM credentials in its password file, and against a fake broker that does
//! not know the password: the client must refuse a broker that cannot prove it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::within;
use sagitta_broker::{Broker, Config};
use sagitta_client::{Client, ConnectError, ProtocolVersion, QoS, ReasonCode, ReconnectPolicy};
use sagitta_proto::scram::{Credentials, ScramError, ServerExchange};
use sagitta_proto::{Auth, ConnAck, MqttStr, Packet, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scram_broker() -> Broker {
    let dir = std::env::temp_dir().join(format!("sagitta-client-scram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let line = Credentials::derive(b"open sesame", b"salt for alice!!", 4096);
    std::fs::write(&passwords, format!("alice:{line}\n")).unwrap();
    let config = Config {
        password_file: Some(passwords),
        failed_login_delay_ms: 0,
        ..Config::default()
            .in_memory()
            .listen([SocketAddr::from(([127, 0, 0, 1], 0))])
    };
    Broker::start(config).await.unwrap()
}

fn builder(addr: String, password: &str) -> sagitta_client::ClientBuilder {
    Client::builder(addr)
        .credentials("alice", password.to_owned())
        .scram_sha256()
        .reconnect(ReconnectPolicy::disabled())
        .connect_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn scram_login_with_our_broker() {
    let broker = scram_broker().await;
    let addr = broker.local_addrs()[0].to_string();
    let client = builder(addr.clone(), "open sesame")
        .connect()
        .await
        .unwrap();
    client.subscribe_recv("t", QoS::AtLeastOnce).await.unwrap();
    client
        .publish_with("t", "over scram", QoS::AtLeastOnce)
        .await
        .unwrap();
    let msg = within("the message", client.recv()).await.unwrap();
    assert_eq!(&msg.payload[..], b"over scram");

    // A wrong password is refused by the broker (0x86), and not retried.
    let err = builder(addr.clone(), "open sesame!")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        err.reason(),
        Some(ReasonCode::BadUserNameOrPassword),
        "{err}"
    );
    assert!(err.is_fatal());

    // SCRAM needs 5.0 and credentials.
    let err = builder(addr.clone(), "x")
        .protocol(ProtocolVersion::V3_1_1)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidOptions(_)), "{err}");
    let err = Client::builder(addr)
        .username("alice")
        .scram_sha256()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidOptions(_)), "{err}");
    broker.shutdown().await;
}

/// A broker that answers the SCRAM challenge but cannot know the password: it accepts with
/// a made-up signature.
async fn impostor() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let next = async |socket: &mut tokio::net::TcpStream, buf: &mut BytesMut| loop {
            if let Some(p) = decode(buf, ProtocolVersion::V5, usize::MAX).unwrap() {
                return p;
            }
            assert!(socket.read_buf(buf).await.unwrap() > 0);
        };
        let Packet::Connect(connect) = next(&mut socket, &mut buf).await else {
            panic!("expected CONNECT");
        };
        assert!(connect.username.is_none() && connect.password.is_none());
        let first = connect.properties.authentication_data.clone().unwrap();
        let exchange = ServerExchange::start(&first).unwrap();
        assert_eq!(exchange.username(), "alice");
        let (_, server_first) = exchange.challenge(b"some salt", 4096, "impostor");
        let method = MqttStr::new("SCRAM-SHA-256").unwrap();
        let mut challenge = Auth {
            reason: ReasonCode::ContinueAuthentication,
            ..Auth::default()
        };
        challenge.properties.authentication_method = Some(method.clone());
        challenge.properties.authentication_data = Some(server_first.into());
        let mut out = BytesMut::new();
        Packet::Auth(challenge)
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        socket.write_all(&out).await.unwrap();
        assert!(matches!(next(&mut socket, &mut buf).await, Packet::Auth(_)));
        let mut ack = ConnAck::new(false, ReasonCode::Success);
        ack.properties.authentication_method = Some(method);
        ack.properties.authentication_data =
            Some("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
        out.clear();
        Packet::ConnAck(ack)
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        socket.write_all(&out).await.unwrap();
        // Hold the socket until the client goes away.
        let _ = socket.read_buf(&mut buf).await;
    });
    addr
}

#[tokio::test]
async fn a_broker_that_cannot_prove_the_password_is_refused() {
    let addr = impostor().await;
    let err = builder(addr.to_string(), "open sesame")
        .connect()
        .await
        .unwrap_err();
    match &err {
        ConnectError::Scram { error, .. } => assert_eq!(*error, ScramError::ServerSignature),
        other => panic!("expected a SCRAM error, got {other}"),
    }
    assert!(err.is_fatal());
}
