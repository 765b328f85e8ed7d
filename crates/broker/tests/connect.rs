//! CONNECT, CONNACK, keep-alive, takeover and shutdown (MQTT 3.1.1 section 3.1-3.2, 5.0
//! section 3.1-3.2), over real sockets with raw packets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sagitta_broker::Config;
use sagitta_proto::{Packet, ProtocolVersion, QoS, ReasonCode, Will};

use ProtocolVersion::{V3_1, V3_1_1, V5};

#[tokio::test]
async fn accepts_all_three_versions() {
    let b = broker().await;
    for v in [V3_1, V3_1_1, V5] {
        let mut p = Peer::connect(addr(&b), v, "c").await;
        p.ping().await;
        p.disconnect().await;
    }
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01_then_close() {
    // MQTT-3.1.2-2: level 6 is refused with return code 0x01.
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    p.send_raw(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ])
    .await;
    let got = p.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    match &got[0] {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::UnsupportedProtocolVersion),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn regression_a_v5_connect_with_a_bad_body_was_closed_without_connack() {
    // The decoder takes a complete packet out of the buffer before it reads the body, and
    // the protocol level was looked for in the buffer afterwards: a 5.0 CONNECT with a bad
    // body was closed without the CONNACK that [MQTT-4.13.1-1] allows and the broker means
    // to send. Here the Will QoS is 3 [MQTT-3.1.2-12]: 0x81 Malformed Packet.
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V5).await;
    p.send_raw(&[
        0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x1e, 0x00, 0x3c, 0x00, 0x00, 0x01,
        b'c',
    ])
    .await;
    match p.expect_closed().await.as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::MalformedPacket),
        other => panic!("{other:?}"),
    }
    // A 3.1.1 CONNECT with the same fault has no code to be told: closed without a word.
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    p.send_raw(&[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1e, 0x00, 0x3c, 0x00, 0x01, b'c',
    ])
    .await;
    assert_eq!(p.expect_closed().await, []);
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // MQTT-3.1.0-1.
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    p.send(Packet::PingReq).await;
    assert!(p.expect_closed().await.is_empty());
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    // MQTT-3.1.0-2; 5.0 clients are told with DISCONNECT 0x82.
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "twice").await;
    p.send(Packet::Connect(Box::new(connect_packet(V5, "twice"))))
        .await;
    let got = p.expect_closed().await;
    match got.as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason, ReasonCode::ProtocolError);
            let why = d.properties.reason_string.as_deref().unwrap_or_default();
            assert!(
                why.contains("MQTT-3.1.0-2"),
                "reason string names the rule: {why}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connect_timeout_closes_silent_sockets() {
    let b = broker_with(Config {
        connect_timeout: 1,
        ..Config::default().in_memory()
    })
    .await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    let start = Instant::now();
    assert!(p.expect_closed().await.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn empty_client_id_rules() {
    let b = broker().await;
    // 3.1.1 with clean session: accepted, an id is assigned [MQTT-3.1.3-6].
    let (_p, ack) = Peer::connect_with(addr(&b), connect_packet(V3_1_1, "")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    // 3.1.1 without clean session: identifier rejected, return code 0x02 [MQTT-3.1.3-8].
    let mut c = connect_packet(V3_1_1, "");
    c.clean_start = false;
    let (mut p, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    assert!(p.expect_closed().await.is_empty());
    // 3.1 requires an identifier.
    let (_p, ack) = Peer::connect_with(addr(&b), connect_packet(V3_1, "")).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    // 5.0: assigned and returned in Assigned Client Identifier.
    let (_p, ack) = Peer::connect_with(addr(&b), connect_packet(V5, "")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn connack_announces_broker_limits_to_v5_clients() {
    let b = broker_with(Config {
        receive_maximum: 7,
        topic_alias_maximum: 3,
        max_packet_size: 5000,
        max_keep_alive: 30,
        ..Config::default().in_memory()
    })
    .await;
    let (_p, ack) = Peer::connect_with(addr(&b), connect_packet(V5, "limits")).await;
    let p = &ack.properties;
    assert_eq!(p.receive_maximum.map(|n| n.get()), Some(7));
    assert_eq!(p.topic_alias_maximum, Some(3));
    assert_eq!(p.maximum_packet_size.map(|n| n.get()), Some(5000));
    assert_eq!(
        p.server_keep_alive,
        Some(30),
        "keep-alive 60 lowered to the maximum"
    );
}

#[tokio::test]
async fn session_present_flag() {
    let b = broker().await;
    let mut c = connect_packet(V3_1_1, "sp");
    c.clean_start = false;
    let (p, ack) = Peer::connect_with(addr(&b), c.clone()).await;
    assert!(!ack.session_present, "new session");
    p.disconnect().await;
    let (p, ack) = Peer::connect_with(addr(&b), c.clone()).await;
    assert!(
        ack.session_present,
        "persistent session resumed [MQTT-3.2.2-2]"
    );
    p.disconnect().await;
    c.clean_start = true;
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert!(
        !ack.session_present,
        "clean session discards it [MQTT-3.2.2-1]"
    );
}

#[tokio::test]
async fn keep_alive_closes_idle_client_after_one_and_a_half_intervals() {
    // MQTT-3.1.2-24: 1.5 x keep-alive. The will is published [MQTT-3.1.2-8].
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V3_1_1, "watcher").await;
    watcher.subscribe("will/ka", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "idle");
    c.keep_alive = 1;
    c.will = Some(Will {
        topic: topic("will/ka"),
        payload: "gone".into(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    let start = Instant::now();
    let got = p.expect_closed().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "closed too late: {waited:?}"
    );
    match got.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("{other:?}"),
    }
    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn keep_alive_is_reset_by_any_packet() {
    let b = broker().await;
    let mut c = connect_packet(V3_1_1, "busy");
    c.keep_alive = 1;
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        p.ping().await;
    }
}

#[tokio::test]
async fn takeover_closes_the_old_connection_and_sends_its_will() {
    // MQTT-3.1.4-3; 5.0 tells the old client with DISCONNECT 0x8E.
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V3_1_1, "watcher").await;
    watcher.subscribe("will/takeover", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "dup-id");
    c.will = Some(Will {
        topic: topic("will/takeover"),
        payload: "old".into(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut old, _) = Peer::connect_with(addr(&b), c).await;
    let mut new = Peer::connect(addr(&b), V5, "dup-id").await;
    match old.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    assert_eq!(&watcher.recv_publish().await.payload[..], b"old");
    new.ping().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down_to_v5_clients() {
    let b = broker().await;
    let mut v5 = Peer::connect(addr(&b), V5, "v5").await;
    let mut v3 = Peer::connect(addr(&b), V3_1_1, "v3").await;
    let handle = b.handle();
    handle.shutdown();
    b.wait().await;
    match v5.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("{other:?}"),
    }
    assert!(v3.expect_closed().await.is_empty());
}

#[tokio::test]
async fn custom_authenticator_can_refuse() {
    struct OnlyAlice;
    impl sagitta_broker::Authenticator for OnlyAlice {
        fn authenticate(&self, info: &sagitta_broker::ConnectInfo<'_>) -> Result<(), ReasonCode> {
            match (info.username, info.password) {
                (Some("alice"), Some(b"secret")) => Ok(()),
                _ => Err(ReasonCode::BadUserNameOrPassword),
            }
        }
    }
    let config = Config {
        listen: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))],
        ..Config::default().in_memory()
    };
    let b = sagitta_broker::Broker::builder(config)
        .authenticator(OnlyAlice)
        .start()
        .await
        .unwrap();
    let (_p, ack) = Peer::connect_with(addr(&b), connect_packet(V3_1_1, "x")).await;
    assert_eq!(
        ack.reason,
        ReasonCode::BadUserNameOrPassword,
        "3.1.1 return code 4"
    );
    let mut c = connect_packet(V5, "y");
    c.username = Some(sagitta_proto::MqttStr::new("alice").unwrap());
    c.password = Some("secret".into());
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::Success);
}

#[tokio::test]
async fn enhanced_auth_without_a_known_method_is_refused() {
    let b = broker().await;
    let mut c = connect_packet(V5, "auth");
    c.properties.authentication_method = Some(sagitta_proto::MqttStr::new("SCRAM-SHA-1").unwrap());
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
}

#[tokio::test]
async fn malformed_packet_closes_only_that_connection() {
    let b = broker().await;
    let mut good = Peer::connect(addr(&b), V3_1_1, "good").await;
    good.subscribe("t", QoS::AtMostOnce).await;
    let mut bad = Peer::connect(addr(&b), V5, "bad").await;
    // PUBLISH with QoS 3 [MQTT-3.3.1-4].
    bad.send_raw(&[0x36, 0x03, 0x00, 0x01, b't']).await;
    match bad.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::MalformedPacket),
        other => panic!("{other:?}"),
    }
    let mut other = Peer::connect(addr(&b), V3_1_1, "other").await;
    other
        .publish("t", "still here", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&good.recv_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let b = broker_with(Config {
        max_packet_size: 1024,
        ..Config::default().in_memory()
    })
    .await;
    let mut p = Peer::connect(addr(&b), V5, "big").await;
    // Header of a PUBLISH declaring 256 MB; the body never comes.
    p.send_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::PacketTooLarge),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn packets_sent_together_with_connect_are_handled() {
    // A client may pipeline packets after CONNECT without waiting for CONNACK.
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    let mut bytes = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect_packet(V3_1_1, "eager")))
        .encode(V3_1_1, &mut bytes)
        .unwrap();
    Packet::Subscribe(sagitta_proto::Subscribe {
        packet_id: pid(1),
        filters: vec![(
            filter("eager"),
            sagitta_proto::SubscriptionOptions::new(QoS::AtMostOnce),
        )],
        properties: Default::default(),
    })
    .encode(V3_1_1, &mut bytes)
    .unwrap();
    Packet::Publish(publish("eager", "hi", QoS::AtMostOnce, false, 0))
        .encode(V3_1_1, &mut bytes)
        .unwrap();
    p.send_raw(&bytes).await;
    assert!(matches!(p.recv().await, Packet::ConnAck(a) if a.reason == ReasonCode::Success));
    assert!(matches!(p.recv().await, Packet::SubAck(_)));
    assert_eq!(&p.recv_publish().await.payload[..], b"hi");
}
