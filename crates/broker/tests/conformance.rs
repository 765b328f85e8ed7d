//! Normative statements of MQTT 3.1.1 and 5.0 that no other test file proves, one test per
//! rule or small group of rules, each naming the statements it covers ("3.1.1" or "5.0"
//! before an identifier says which specification it is from: the two number differently).
//! `docs/conformance.md` maps every server-side MUST of both specifications to its test.
// Tests may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use sagitta_broker::{Authenticator, Broker, Config, ConnectInfo};
use sagitta_proto::{
    Connect, Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    TopicName, Unsubscribe, Will,
};

use ProtocolVersion::{V3_1_1, V5};

/// A CONNECT that keeps its session: 3.1.1 clean session 0, 5.0 Clean Start 0 with a
/// Session Expiry Interval of 60 s.
fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(60);
    }
    c
}

fn will(t: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic(t),
        payload: payload.to_owned().into(),
        qos,
        retain,
        properties: Default::default(),
    }
}

/// Encodes `packets` back to back, to be sent in one write.
fn encode_all(version: ProtocolVersion, packets: Vec<Packet>) -> BytesMut {
    let mut bytes = BytesMut::new();
    for p in packets {
        p.encode(version, &mut bytes).unwrap();
    }
    bytes
}

/// The size of `packet` on the wire.
fn wire_len(packet: &Packet, version: ProtocolVersion) -> usize {
    encode_all(version, vec![packet.clone()]).len()
}

/// Refuses the user name "mallory", accepts everyone else.
struct NotMallory;

impl Authenticator for NotMallory {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        match info.username {
            Some("mallory") => Err(ReasonCode::BadUserNameOrPassword),
            _ => Ok(()),
        }
    }
}

async fn broker_refusing_mallory() -> Broker {
    let config = Config {
        listen: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))],
        failed_login_delay_ms: 0,
        ..Config::default().in_memory()
    };
    Broker::builder(config)
        .authenticator(NotMallory)
        .start()
        .await
        .unwrap()
}

/// 3.1.1: MQTT-3.1.4-5, MQTT-3.2.2-4, MQTT-3.2.2-5. 5.0: MQTT-3.1.4-2, MQTT-3.1.4-6,
/// MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-4.13.2-1. A refused CONNECT gets a CONNACK with Session
/// Present 0 (although the session exists), the connection closes, and nothing the client
/// sent after the CONNECT is acted on.
#[tokio::test]
async fn a_refused_connect_has_no_session_present_closes_and_ignores_what_follows() {
    let b = broker_refusing_mallory().await;
    for v in [V3_1_1, V5] {
        let mut watcher = Peer::connect(addr(&b), v, "watcher").await;
        watcher.subscribe("leak/#", QoS::AtMostOnce).await;
        let (owner, ack) = Peer::connect_with(addr(&b), persistent(v, "victim")).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        owner.disconnect().await;

        let mut c = persistent(v, "victim");
        c.username = Some(mstr("mallory"));
        let mut p = Peer::open(addr(&b), v).await;
        let bytes = encode_all(
            v,
            vec![
                Packet::Connect(Box::new(c)),
                Packet::Publish(publish("leak/1", "after CONNECT", QoS::AtMostOnce, true, 0)),
                Packet::Subscribe(Subscribe {
                    packet_id: pid(1),
                    filters: vec![(filter("#"), SubscriptionOptions::new(QoS::AtMostOnce))],
                    properties: Default::default(),
                }),
            ],
        );
        p.send_raw(&bytes).await;
        match p.expect_closed().await.as_slice() {
            [Packet::ConnAck(a)] => {
                assert_eq!(a.reason, ReasonCode::BadUserNameOrPassword, "{v}");
                assert!(!a.session_present, "{v}: Session Present 0 when refused");
            }
            other => panic!("{v}: {other:?}"),
        }
        watcher.expect_silence().await;
        // Nor was the PUBLISH kept as a retained message.
        let mut late = Peer::connect(addr(&b), v, "late").await;
        late.subscribe("leak/#", QoS::AtMostOnce).await;
        late.expect_silence().await;
        // The session itself is untouched.
        let (_owner, ack) = Peer::connect_with(addr(&b), persistent(v, "victim")).await;
        assert!(ack.session_present, "{v}");
    }
}

/// 3.1.1: MQTT-3.1.2-3, MQTT-3.1.4-1. 5.0: MQTT-3.1.2-3, MQTT-3.1.4-1, MQTT-3.14.0-1,
/// MQTT-4.13.1-1. A CONNECT with the reserved flag set is closed: in 3.1.1 without a CONNACK,
/// in 5.0 with at most a CONNACK 0x81, and never with a DISCONNECT (there was no CONNACK
/// 0x00 before it).
#[tokio::test]
async fn connect_with_the_reserved_flag_is_closed() {
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    p.send_raw(&[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3c, 0x00, 0x01, b'c',
    ])
    .await;
    assert!(p.expect_closed().await.is_empty());

    let mut p = Peer::open(addr(&b), V5).await;
    p.send_raw(&[
        0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3c, 0x00, 0x00, 0x01,
        b'c',
    ])
    .await;
    match p.expect_closed().await.as_slice() {
        [] => {}
        [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::MalformedPacket),
        other => panic!("{other:?}"),
    }
}

/// 3.1.1: MQTT-3.1.2-1. A CONNECT with another protocol name is not processed as MQTT: the
/// connection closes without a CONNACK.
#[tokio::test]
async fn connect_with_another_protocol_name_is_closed() {
    let b = broker().await;
    let mut p = Peer::open(addr(&b), V3_1_1).await;
    p.send_raw(&[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'c',
    ])
    .await;
    assert!(p.expect_closed().await.is_empty());
}

/// 3.1.1: MQTT-3.1.3-5. 5.0: MQTT-3.1.3-5. Client identifiers of 1 to 23 letters and digits
/// are accepted.
#[tokio::test]
async fn client_ids_of_1_to_23_letters_and_digits_are_accepted() {
    let b = broker().await;
    for v in [V3_1_1, V5] {
        for id in [
            "0",
            "abcdefghijklmnopqrstuvw",
            "ABCDEFGHIJKLMNOPQRSTUVW",
            "0123456789aZ",
        ] {
            let mut p = Peer::connect(addr(&b), v, id).await;
            p.ping().await;
            p.disconnect().await;
        }
    }
}

/// 5.0: MQTT-3.1.3-6, MQTT-3.1.3-7, MQTT-3.2.2-16. Each client that connects with an empty
/// client identifier is given one of its own, returned in the CONNACK.
#[tokio::test]
async fn assigned_client_identifiers_are_unique() {
    let b = broker().await;
    let mut seen = std::collections::HashSet::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (p, ack) = Peer::connect_with(addr(&b), connect_packet(V5, "")).await;
        let id = ack.properties.assigned_client_identifier.expect("assigned");
        assert!(seen.insert(id.to_string()), "{id} given twice");
        peers.push(p);
    }
    // Connected at once under their own ids: none took another's session over.
    for p in &mut peers {
        p.ping().await;
    }
}

/// 5.0: MQTT-3.1.2-4, MQTT-3.1.2-5, MQTT-3.1.2-6, MQTT-3.1.4-4, MQTT-3.2.2-2, MQTT-3.2.2-3,
/// MQTT-4.1.0-1. Clean Start 0 resumes an existing session (Session Present 1) or starts a
/// new one (Session Present 0); Clean Start 1 discards it (Session Present 0).
#[tokio::test]
async fn v5_clean_start_and_session_present() {
    let b = broker().await;
    let (mut p, ack) = Peer::connect_with(addr(&b), persistent(V5, "cs")).await;
    assert!(!ack.session_present, "no session yet: a new one");
    p.subscribe("cs/t", QoS::AtLeastOnce).await;
    p.disconnect().await;

    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("cs/t", "queued", QoS::AtLeastOnce, false)
        .await;
    let (mut p, ack) = Peer::connect_with(addr(&b), persistent(V5, "cs")).await;
    assert!(ack.session_present, "resumed");
    let got = p.recv_publish().await;
    assert_eq!(&got.payload[..], b"queued");
    p.ack(&got).await;
    p.disconnect().await;

    let mut clean = persistent(V5, "cs");
    clean.clean_start = true;
    let (mut p, ack) = Peer::connect_with(addr(&b), clean).await;
    assert!(!ack.session_present, "discarded");
    publ.publish("cs/t", "gone", QoS::AtLeastOnce, false).await;
    p.expect_silence().await;
}

/// 3.1.1: MQTT-3.1.2-6, MQTT-3.1.2.7, MQTT-4.1.0-2. A clean session lasts as long as its
/// connection and is not reused; retained messages outlive the session that published them.
#[tokio::test]
async fn a_clean_session_ends_with_its_connection_but_its_retained_messages_stay() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V3_1_1, "clean").await;
    p.subscribe("cl/#", QoS::AtLeastOnce).await;
    p.publish("cl/r", "kept", QoS::AtLeastOnce, true).await;
    let echo = p.recv_publish().await;
    p.ack(&echo).await;
    p.disconnect().await;

    let (mut p, ack) = Peer::connect_with(addr(&b), persistent(V3_1_1, "clean")).await;
    assert!(!ack.session_present);
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("cl/x", "not subscribed any more", QoS::AtLeastOnce, false)
        .await;
    p.expect_silence().await;

    let mut late = Peer::connect(addr(&b), V3_1_1, "late").await;
    late.subscribe("cl/r", QoS::AtMostOnce).await;
    let r = late.recv_publish().await;
    assert!(r.retain && &r.payload[..] == b"kept");
}

/// 3.1.1: MQTT-3.1.2-8, MQTT-3.1.2-16, MQTT-3.1.2-17. 5.0: MQTT-3.1.2-7, MQTT-3.1.2-8,
/// MQTT-3.1.2-14, MQTT-3.1.2-15. A will with Will Retain 0 is published as a non-retained
/// message, one with Will Retain 1 as a retained one.
#[tokio::test]
async fn the_will_retain_flag_decides_whether_the_will_is_retained() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut watcher = Peer::connect(addr(&b), v, "watcher").await;
        watcher.subscribe("wr/#", QoS::AtMostOnce).await;
        for (id, retain) in [("plain", false), ("kept", true)] {
            let mut c = connect_packet(v, id);
            c.will = Some(will(&format!("wr/{id}"), id, QoS::AtMostOnce, retain));
            let (p, _) = Peer::connect_with(addr(&b), c).await;
            p.drop_connection();
            let got = watcher.recv_publish().await;
            assert_eq!(got.topic, format!("wr/{id}").as_str());
        }
        let mut late = Peer::connect(addr(&b), v, "late").await;
        late.subscribe("wr/#", QoS::AtMostOnce).await;
        let r = late.recv_publish().await;
        assert_eq!(r.topic, "wr/kept", "{v}");
        assert!(r.retain);
        late.expect_silence().await;
    }
}

/// 5.0: MQTT-3.1.3-10, and MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17,
/// MQTT-3.3.2-18, MQTT-3.3.2-20 for the will. The will's properties reach subscribers
/// unaltered, its User Properties in their order.
#[tokio::test]
async fn a_wills_properties_are_forwarded_with_user_properties_in_order() {
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V5, "watcher").await;
    watcher.subscribe("wp", QoS::AtMostOnce).await;
    let mut w = will("wp", "{}", QoS::AtMostOnce, false);
    w.properties.user_properties = vec![
        (mstr("z"), mstr("1")),
        (mstr("a"), mstr("2")),
        (mstr("z"), mstr("3")),
    ];
    w.properties.content_type = Some(mstr("application/json"));
    w.properties.payload_format_indicator = Some(true);
    w.properties.response_topic = Some(topic("wp/reply"));
    w.properties.correlation_data = Some("c1".into());
    let sent = w.properties.clone();
    let mut c = connect_packet(V5, "props");
    c.will = Some(w);
    let (p, _) = Peer::connect_with(addr(&b), c).await;
    p.drop_connection();
    let got = watcher.recv_publish().await;
    assert_eq!(got.properties.user_properties, sent.user_properties);
    assert_eq!(got.properties.content_type, sent.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(true));
    assert_eq!(got.properties.response_topic, sent.response_topic);
    assert_eq!(got.properties.correlation_data, sent.correlation_data);
}

/// 5.0: MQTT-3.2.2-9, MQTT-3.2.2-10, MQTT-3.2.2-12, MQTT-3.2.2-13. A broker limited to QoS 1
/// without retained messages says so in CONNACK, still accepts SUBSCRIBE at QoS 2 (granting
/// QoS 1), and refuses a will it cannot honour with 0x9B or 0x9A, then closes.
#[tokio::test]
async fn a_broker_without_qos_2_or_retain_says_so_and_refuses_such_wills() {
    let b = broker_with(Config {
        maximum_qos: 1,
        retain_available: false,
        ..Config::default().in_memory()
    })
    .await;
    let (mut p, ack) = Peer::connect_with(addr(&b), connect_packet(V5, "caps")).await;
    assert_eq!(ack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(ack.properties.retain_available, Some(false));
    let reasons = p
        .subscribe_opts("caps", SubscriptionOptions::new(QoS::ExactlyOnce), 1)
        .await;
    assert_eq!(reasons, [ReasonCode::GrantedQoS1]);

    for (w, want) in [
        (
            will("w", "x", QoS::ExactlyOnce, false),
            ReasonCode::QoSNotSupported,
        ),
        (
            will("w", "x", QoS::AtMostOnce, true),
            ReasonCode::RetainNotSupported,
        ),
    ] {
        let mut c = connect_packet(V5, "will");
        c.will = Some(w);
        let (mut p, ack) = Peer::connect_with(addr(&b), c).await;
        assert_eq!(ack.reason, want);
        assert!(!ack.session_present);
        assert!(p.expect_closed().await.is_empty());
    }
}

/// 5.0: MQTT-3.1.2-28, MQTT-4.12.0-6. Sagitta sends no Response Information (certainly not
/// when Request Response Information is 0) and, to a client that named no authentication
/// method, no Authentication Method in CONNACK.
#[tokio::test]
async fn connack_has_no_response_information_unless_asked_and_no_auth_method_unless_used() {
    let b = broker().await;
    for request in [None, Some(false)] {
        let mut c = connect_packet(V5, "ri");
        c.properties.request_response_information = request;
        let (mut p, ack) = Peer::connect_with(addr(&b), c).await;
        assert_eq!(ack.properties.response_information, None);
        assert_eq!(ack.properties.authentication_method, None);
        assert_eq!(ack.properties.authentication_data, None);
        p.ping().await;
    }
}

/// 5.0: MQTT-4.12.0-7 (server side), MQTT-4.13.1-1. AUTH from a client that connected
/// without an authentication method is a protocol error: DISCONNECT 0x82, then close.
#[tokio::test]
async fn auth_without_an_authentication_method_is_a_protocol_error() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "noauth").await;
    let mut auth = sagitta_proto::Auth {
        reason: ReasonCode::ReAuthenticate,
        ..Default::default()
    };
    auth.properties.authentication_method = Some(mstr("SCRAM-SHA-256"));
    p.send(Packet::Auth(auth)).await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
}

/// 5.0: MQTT-3.1.2-29. With Request Problem Information 0, a refused PUBLISH is answered
/// without a Reason String (with 1, the default, it has one).
#[tokio::test]
async fn no_reason_string_on_acks_when_problem_information_is_not_requested() {
    let b = broker().await;
    for (request, wants_reason) in [(Some(false), false), (None, true)] {
        let mut c = connect_packet(V5, "pi");
        c.properties.request_problem_information = request;
        let (mut p, _) = Peer::connect_with(addr(&b), c).await;
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            p.send(Packet::Publish(publish("$SYS/x", "x", qos, false, 3)))
                .await;
            match p.recv().await {
                Packet::PubAck(a) | Packet::PubRec(a) => {
                    assert_eq!(a.reason, ReasonCode::NotAuthorized);
                    assert_eq!(a.properties.reason_string.is_some(), wants_reason, "{a:?}");
                    assert!(wants_reason || a.properties.user_properties.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// 5.0: MQTT-3.4.2-2, MQTT-3.4.2-3, MQTT-3.5.2-2, MQTT-3.5.2-3, MQTT-3.14.2-3,
/// MQTT-3.14.2-4, MQTT-3.1.2-24. A Reason String never makes a PUBACK, PUBREC or DISCONNECT
/// larger than the Maximum Packet Size the client announced: it is left out instead.
#[tokio::test]
async fn reason_strings_never_make_a_packet_larger_than_the_clients_maximum() {
    let b = broker().await;
    let max = 16;
    let mut c = connect_packet(V5, "small");
    c.properties.maximum_packet_size = NonZeroU32::new(max);
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        p.send(Packet::Publish(publish("$SYS/x", "x", qos, false, 4)))
            .await;
        let got = p.recv().await;
        match &got {
            Packet::PubAck(a) | Packet::PubRec(a) => {
                assert_eq!(a.reason, ReasonCode::NotAuthorized)
            }
            other => panic!("{other:?}"),
        }
        assert!(wire_len(&got, V5) <= max as usize, "{got:?}");
    }
    p.send(Packet::Connect(Box::new(connect_packet(V5, "small"))))
        .await;
    match p.expect_closed().await.as_slice() {
        [d @ Packet::Disconnect(_)] => assert!(wire_len(d, V5) <= max as usize, "{d:?}"),
        other => panic!("{other:?}"),
    }
}

/// 5.0: MQTT-3.14.2-2, MQTT-3.14.4-1, MQTT-3.14.4-2. A DISCONNECT from the broker carries
/// no Session Expiry Interval, and nothing follows it before the connection closes.
#[tokio::test]
async fn a_server_disconnect_has_no_session_expiry_and_is_the_last_packet() {
    let b = broker().await;
    let (mut p, _) = Peer::connect_with(addr(&b), persistent(V5, "last")).await;
    p.subscribe("last", QoS::AtMostOnce).await;
    p.send(Packet::Connect(Box::new(connect_packet(V5, "last"))))
        .await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason, ReasonCode::ProtocolError);
            assert_eq!(d.properties.session_expiry_interval, None);
        }
        other => panic!("{other:?}"),
    }
}

/// 3.1.1: MQTT-3.3.1-3. 5.0: MQTT-3.3.1-3. The DUP flag a subscriber sees says whether the
/// broker re-sends, not whether the publisher did.
#[tokio::test]
async fn dup_is_set_per_hop() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("dup", QoS::AtLeastOnce).await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        let mut p = publish("dup", "x", QoS::AtLeastOnce, false, 5);
        p.dup = true;
        publ.send(Packet::Publish(p)).await;
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
        let got = sub.recv_publish().await;
        assert!(!got.dup, "{v}: a first delivery has DUP 0");
        sub.ack(&got).await;
    }
}

/// 3.1.1: MQTT-3.3.1-5, MQTT-3.3.1-7, MQTT-3.3.1-8, MQTT-3.3.1-12. 5.0: MQTT-3.3.1-5,
/// MQTT-3.3.1-8. A retained QoS 0 message replaces the retained message of its topic; a
/// PUBLISH with RETAIN 0 neither stores nor removes nor replaces it.
#[tokio::test]
async fn retained_messages_are_replaced_only_by_retained_publishes() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        publ.publish("rr", "first", QoS::AtLeastOnce, true).await;
        publ.publish("rr", "second", QoS::AtMostOnce, true).await;
        publ.publish("rr", "live", QoS::AtLeastOnce, false).await;
        publ.publish("rr/none", "live only", QoS::AtLeastOnce, false)
            .await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("rr/#", QoS::ExactlyOnce).await;
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], b"second", "{v}");
        assert_eq!(got.qos, QoS::AtMostOnce, "stored with its QoS");
        assert!(got.retain);
        sub.expect_silence().await;
    }
}

/// 5.0: MQTT-3.3.1-12. With Retain As Published 0 a live message is forwarded with RETAIN 0
/// even though it was published with RETAIN 1.
#[tokio::test]
async fn retain_as_published_0_clears_the_flag_on_live_messages() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("rap", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("rap", "live", QoS::AtMostOnce, true).await;
    let got = sub.recv_publish().await;
    assert!(!got.retain);
}

/// 3.1.1: MQTT-3.8.4-3. 5.0: MQTT-3.8.4-3, MQTT-3.8.4-4. Subscribing again to the same
/// filter replaces the subscription (one copy of each message) and sends the retained
/// messages again.
#[tokio::test]
async fn resubscribing_replaces_the_subscription_and_resends_retained_messages() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        publ.publish("again", "retained", QoS::AtMostOnce, true)
            .await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        for _ in 0..2 {
            sub.subscribe("again", QoS::AtMostOnce).await;
            let r = sub.recv_publish().await;
            assert!(r.retain && &r.payload[..] == b"retained", "{v}");
        }
        publ.publish("again", "live", QoS::AtMostOnce, false).await;
        assert_eq!(&sub.recv_publish().await.payload[..], b"live");
        sub.expect_silence().await;
    }
}

/// 3.1.1: MQTT-2.3.1-7, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.8.4-4, MQTT-3.8.4-5, MQTT-3.9.3-1,
/// MQTT-3.9.3-2. 5.0: MQTT-2.2.1-6, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.8.4-5, MQTT-3.8.4-6,
/// MQTT-3.8.4-7, MQTT-3.9.3-1, MQTT-3.9.3-2. A SUBSCRIBE with several filters is handled
/// filter by filter and answered by one SUBACK with the same packet id and one code per
/// filter, in order: the granted QoS or a failure.
#[tokio::test]
async fn subscribe_with_several_filters_gets_one_code_per_filter_in_order() {
    let b = broker_with(Config {
        max_topic_levels: 3,
        ..Config::default().in_memory()
    })
    .await;
    for v in [V3_1_1, V5] {
        let mut p = Peer::connect(addr(&b), v, "multi").await;
        p.send(Packet::Subscribe(Subscribe {
            packet_id: pid(4242),
            filters: vec![
                (filter("m/2"), SubscriptionOptions::new(QoS::ExactlyOnce)),
                (
                    filter("m/a/b/c/d"),
                    SubscriptionOptions::new(QoS::AtMostOnce),
                ),
                (filter("m/0"), SubscriptionOptions::new(QoS::AtMostOnce)),
                (filter("m/1"), SubscriptionOptions::new(QoS::AtLeastOnce)),
            ],
            properties: Default::default(),
        }))
        .await;
        let failure = if v.is_v5() {
            ReasonCode::TopicFilterInvalid
        } else {
            ReasonCode::UnspecifiedError
        };
        match p.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, pid(4242));
                assert_eq!(
                    a.reasons,
                    [
                        ReasonCode::GrantedQoS2,
                        failure,
                        ReasonCode::GRANTED_QOS_0,
                        ReasonCode::GrantedQoS1
                    ],
                    "{v}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Each granted filter works on its own.
        p.publish("m/1", "x", QoS::AtLeastOnce, false).await;
        let got = p.recv_publish().await;
        assert_eq!((got.topic.as_str(), got.qos), ("m/1", QoS::AtLeastOnce));
        p.ack(&got).await;
        p.disconnect().await;
    }
}

/// 3.1.1: MQTT-2.3.1-7, MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-4, MQTT-3.10.4-5,
/// MQTT-3.10.4-6. 5.0: MQTT-2.2.1-6, MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-4,
/// MQTT-3.10.4-5, MQTT-3.10.4-6, MQTT-3.11.3-1, MQTT-3.11.3-2. UNSUBSCRIBE compares filters
/// character by character (a wildcard filter removes only itself), handles every filter and
/// answers once, with the same packet id (and in 5.0 one code per filter, in order).
#[tokio::test]
async fn unsubscribe_matches_filters_exactly_and_answers_once() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut p = Peer::connect(addr(&b), v, "unsub").await;
        p.subscribe("a/b", QoS::AtMostOnce).await;
        p.subscribe("a/+", QoS::AtMostOnce).await;
        p.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(777),
            filters: vec![filter("a/#"), filter("a/+"), filter("a/B")],
            properties: Default::default(),
        }))
        .await;
        match p.recv().await {
            Packet::UnsubAck(a) => {
                assert_eq!(a.packet_id, pid(777));
                if v.is_v5() {
                    assert_eq!(
                        a.reasons,
                        [
                            ReasonCode::NoSubscriptionExisted,
                            ReasonCode::Success,
                            ReasonCode::NoSubscriptionExisted
                        ]
                    );
                }
            }
            other => panic!("{other:?}"),
        }
        p.publish("a/b", "once", QoS::AtMostOnce, false).await;
        assert_eq!(&p.recv_publish().await.payload[..], b"once");
        p.publish("a/c", "no longer", QoS::AtMostOnce, false).await;
        p.expect_silence().await;
    }
}

/// 3.1.1: MQTT-3.10.4-3. 5.0: MQTT-3.10.4-3. A QoS 2 delivery already started completes
/// after its subscription is removed.
#[tokio::test]
async fn unsubscribe_completes_deliveries_already_started() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("u2", QoS::ExactlyOnce).await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        publ.publish("u2", "x", QoS::ExactlyOnce, false).await;
        let got = sub.recv_publish().await;
        sub.unsubscribe("u2", 9).await;
        // The flow goes on: PUBREC gets PUBREL.
        sub.ack(&got).await;
        sub.ping().await;
    }
}

/// 3.1.1: MQTT-4.3.2-2. 5.0: MQTT-4.3.2-4, MQTT-4.3.2-5. Once the broker has sent PUBACK,
/// a PUBLISH with the same packet id is a new message, DUP or not.
#[tokio::test]
async fn a_qos1_packet_id_is_a_new_message_after_puback() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("q1", QoS::AtMostOnce).await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        for (payload, dup) in [("one", false), ("two", true), ("three", false)] {
            let mut p = publish("q1", payload, QoS::AtLeastOnce, false, 7);
            p.dup = dup;
            publ.send(Packet::Publish(p)).await;
            match publ.recv().await {
                Packet::PubAck(a) => assert_eq!(a.packet_id, pid(7)),
                other => panic!("{other:?}"),
            }
            assert_eq!(&sub.recv_publish().await.payload[..], payload.as_bytes());
        }
    }
}

/// 5.0: MQTT-4.3.3-9. After a PUBREC with a failure code the packet id is free: the next
/// PUBLISH with it is a new message.
#[tokio::test]
async fn a_qos2_packet_id_is_free_again_after_a_refusing_pubrec() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("ok", QoS::AtMostOnce).await;
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    assert_eq!(
        p.publish_reason("$SYS/no", "x", QoS::ExactlyOnce, 8).await,
        ReasonCode::NotAuthorized
    );
    assert!(
        p.publish_reason("ok", "y", QoS::ExactlyOnce, 8)
            .await
            .is_success()
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"y");
    p.send(Packet::PubRel(PubResponse::new(pid(8)))).await;
    match p.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::Success),
        other => panic!("{other:?}"),
    }
}

/// 5.0: MQTT-4.3.3-13. The QoS 2 acknowledgements go on after the message expired.
#[tokio::test]
async fn the_qos2_flow_completes_after_the_message_expired() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    let mut m = publish("exp", "x", QoS::ExactlyOnce, false, 9);
    m.properties.message_expiry_interval = Some(1);
    p.send(Packet::Publish(m)).await;
    assert!(matches!(p.recv().await, Packet::PubRec(_)));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    p.send(Packet::PubRel(PubResponse::new(pid(9)))).await;
    match p.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::Success),
        other => panic!("{other:?}"),
    }
}

/// 5.0: MQTT-4.3.3-7, MQTT-4.4.0-1. A message the broker has sent is not expired any more:
/// unacknowledged, it is re-sent on reconnect after its expiry interval passed.
#[tokio::test]
async fn a_sent_message_is_resent_even_after_its_expiry() {
    let b = broker().await;
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V5, "slow")).await;
    sub.subscribe("sent/#", QoS::ExactlyOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    for (t, qos) in [("sent/1", QoS::AtLeastOnce), ("sent/2", QoS::ExactlyOnce)] {
        let mut m = publish(t, "x", qos, false, 1);
        m.properties.message_expiry_interval = Some(1);
        publ.send(Packet::Publish(m)).await;
        publ.recv().await;
        if qos == QoS::ExactlyOnce {
            publ.send(Packet::PubRel(PubResponse::new(pid(1)))).await;
            publ.recv().await;
        }
        sub.recv_publish().await;
    }
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut sub, ack) = Peer::connect_with(addr(&b), persistent(V5, "slow")).await;
    assert!(ack.session_present);
    for t in ["sent/1", "sent/2"] {
        let again = sub.recv_publish().await;
        assert_eq!(again.topic, t);
        assert!(again.dup);
        sub.ack(&again).await;
    }
    sub.expect_silence().await;
}

/// 5.0: MQTT-4.4.0-2, MQTT-4.3.2-3, MQTT-4.3.3-3. A PUBACK or PUBREC with a failure code
/// acknowledges the message: it is not sent again, not even on reconnect.
#[tokio::test]
async fn a_refusing_puback_or_pubrec_ends_the_delivery() {
    let b = broker().await;
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V5, "refuser")).await;
    sub.subscribe("refuse/#", QoS::ExactlyOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("refuse/1", "x", QoS::AtLeastOnce, false).await;
    publ.publish("refuse/2", "y", QoS::ExactlyOnce, false).await;
    for _ in 0..2 {
        let got = sub.recv_publish().await;
        let mut no = PubResponse::new(got.packet_id.unwrap());
        no.reason = ReasonCode::UnspecifiedError;
        sub.send(if got.qos == QoS::AtLeastOnce {
            Packet::PubAck(no)
        } else {
            Packet::PubRec(no)
        })
        .await;
    }
    sub.ping().await;
    sub.drop_connection();
    let (mut sub, ack) = Peer::connect_with(addr(&b), persistent(V5, "refuser")).await;
    assert!(ack.session_present);
    sub.expect_silence().await;
}

/// 5.0: MQTT-3.1.2-25. A QoS 1 message too large for the client is dropped as if it had been
/// delivered: the messages after it flow, and it is not sent on reconnect.
#[tokio::test]
async fn a_message_too_large_for_the_client_counts_as_delivered() {
    let b = broker().await;
    let mut c = persistent(V5, "tiny");
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = Peer::connect_with(addr(&b), c.clone()).await;
    sub.subscribe("big", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("big", &"x".repeat(200), QoS::AtLeastOnce, false)
        .await;
    publ.publish("big", "small", QoS::AtLeastOnce, false).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"small");
    sub.ack(&got).await;
    sub.ping().await;
    sub.drop_connection();
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    sub.expect_silence().await;
}

/// 5.0: MQTT-4.9.0-3, MQTT-3.3.4-10. With the client's send quota used up the broker still
/// answers everything else at once.
#[tokio::test]
async fn a_used_up_send_quota_delays_only_publishes() {
    let b = broker().await;
    let mut c = connect_packet(V5, "quota");
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    sub.subscribe("qt", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("qt", "1", QoS::AtLeastOnce, false).await;
    publ.publish("qt", "2", QoS::AtLeastOnce, false).await;
    let first = sub.recv_publish().await;
    sub.ping().await;
    assert_eq!(
        sub.subscribe_opts("qt/other", SubscriptionOptions::new(QoS::AtMostOnce), 2)
            .await,
        [ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(sub.unsubscribe("qt/other", 3).await, [ReasonCode::Success]);
    sub.publish("qt/mine", "x", QoS::AtLeastOnce, false).await;
    sub.ack(&first).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"2");
}

/// 3.1.1: MQTT-2.3.1-1, MQTT-2.3.1-4. 5.0: MQTT-2.2.1-4, MQTT-4.3.2-1, MQTT-4.3.3-1. The
/// broker gives each QoS 1/2 message in flight to a client its own non-zero packet id.
#[tokio::test]
async fn packet_ids_in_flight_are_distinct() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("ids", QoS::ExactlyOnce).await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        for i in 0..6 {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            publ.publish("ids", &i.to_string(), qos, false).await;
        }
        let mut ids = std::collections::HashSet::new();
        for _ in 0..6 {
            let p = sub.recv_publish().await;
            assert!(!p.dup);
            assert!(ids.insert(p.packet_id.expect("QoS > 0 has an id")), "{v}");
        }
    }
}

/// 5.0: MQTT-3.1.2-27, MQTT-3.3.2-7, MQTT-3.3.2-12. No topic alias to a client that
/// allowed none; every alias from 1 to the maximum announced is accepted; aliases do not
/// carry over to the next connection in either direction.
#[tokio::test]
async fn topic_aliases_stay_within_their_connection_and_limits() {
    let b = broker_with(Config {
        topic_alias_maximum: 3,
        ..Config::default().in_memory()
    })
    .await;
    // A client that announced no Topic Alias Maximum gets no alias.
    let mut plain = Peer::connect(addr(&b), V5, "plain").await;
    plain.subscribe("al/#", QoS::AtMostOnce).await;
    let mut with_max = persistent(V5, "aliases");
    with_max.properties.topic_alias_maximum = Some(5);
    let (mut aliased, _) = Peer::connect_with(addr(&b), with_max.clone()).await;
    aliased.subscribe("al/#", QoS::AtMostOnce).await;

    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    for alias in 1..=3u16 {
        let mut p = publish(&format!("al/{alias}"), "set", QoS::AtMostOnce, false, 0);
        p.properties.topic_alias = NonZeroU16::new(alias);
        publ.send(Packet::Publish(p)).await;
        let mut p = publish("x", "use", QoS::AtMostOnce, false, 0);
        p.topic = TopicName::empty();
        p.properties.topic_alias = NonZeroU16::new(alias);
        publ.send(Packet::Publish(p)).await;
    }
    publ.ping().await;
    for _ in 0..6 {
        let got = plain.recv_publish().await;
        assert!(!got.topic.is_empty());
        assert_eq!(got.properties.topic_alias, None);
        assert!(
            aliased
                .recv_publish()
                .await
                .properties
                .topic_alias
                .is_some()
        );
    }
    publ.disconnect().await;

    // The subscriber's aliases are forgotten: the next connection sees the topic again.
    aliased.drop_connection();
    let (mut aliased, _) = Peer::connect_with(addr(&b), with_max).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("al/1", "after", QoS::AtMostOnce, false).await;
    let got = aliased.recv_publish().await;
    assert_eq!(got.topic, "al/1", "the topic is sent, not a stale alias");
    assert_eq!(&plain.recv_publish().await.payload[..], b"after");

    // The publisher's aliases are forgotten too: alias 1 alone is unknown now.
    let mut p = publish("x", "stale", QoS::AtMostOnce, false, 0);
    p.topic = TopicName::empty();
    p.properties.topic_alias = NonZeroU16::new(1);
    publ.send(Packet::Publish(p)).await;
    match publ.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert!(d.reason.is_error(), "{d:?}"),
        other => panic!("{other:?}"),
    }
    plain.expect_silence().await;
}

/// 3.1.1: MQTT-4.7.3-4, MQTT-1.5.3-3. 5.0: MQTT-4.7.3-4, MQTT-1.5.4-3. Topics are matched
/// byte for byte: no case folding, no Unicode normalisation, and a U+FEFF is kept.
#[tokio::test]
async fn topics_are_matched_without_normalisation() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        for f in ["caf\u{e9}", "Case", "\u{feff}bom"] {
            sub.subscribe(f, QoS::AtMostOnce).await;
        }
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        for t in ["cafe\u{301}", "case", "CASE", "bom"] {
            publ.publish(t, "no", QoS::AtMostOnce, false).await;
        }
        publ.publish("\u{feff}bom", "yes", QoS::AtMostOnce, false)
            .await;
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, "\u{feff}bom", "{v}");
        assert_eq!(&got.payload[..], b"yes");
        sub.expect_silence().await;
    }
}

/// 5.0: MQTT-4.8.2-3, MQTT-4.8.2-6. A shared subscription's member gets messages at its
/// granted QoS; a message it refuses (PUBACK 0x80) goes to no other member.
#[tokio::test]
async fn shared_subscriptions_respect_the_granted_qos_and_a_refusal_is_final() {
    let b = broker().await;
    let mut low = Peer::connect(addr(&b), V5, "low").await;
    low.subscribe("$share/g/sq", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("sq", "x", QoS::AtLeastOnce, false).await;
    assert_eq!(low.recv_publish().await.qos, QoS::AtMostOnce);
    low.disconnect().await;

    let mut a = Peer::connect(addr(&b), V5, "a").await;
    a.subscribe("$share/h/sr", QoS::AtLeastOnce).await;
    let mut c = Peer::connect(addr(&b), V5, "c").await;
    c.subscribe("$share/h/sr", QoS::AtLeastOnce).await;
    publ.publish("sr", "refused", QoS::AtLeastOnce, false).await;
    let (got, refuser, other) = tokio::select! {
        p = a.recv_publish() => (p, &mut a, &mut c),
        p = c.recv_publish() => (p, &mut c, &mut a),
    };
    let mut no = PubResponse::new(got.packet_id.unwrap());
    no.reason = ReasonCode::UnspecifiedError;
    refuser.send(Packet::PubAck(no)).await;
    refuser.expect_silence().await;
    other.expect_silence().await;
}

/// 5.0: MQTT-4.8.2-4, MQTT-4.8.2-5. A QoS 2 message in flight to a shared subscription's
/// member is completed with that member when it reconnects, and goes to no other member when
/// the member's session ends first.
#[tokio::test]
async fn a_shared_qos2_delivery_stays_with_its_member() {
    let b = broker().await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;

    // The member comes back: the delivery is completed with it.
    let (mut keeper, _) = Peer::connect_with(addr(&b), persistent(V5, "keeper")).await;
    keeper.subscribe("$share/k/q2", QoS::ExactlyOnce).await;
    publ.publish("q2", "kept", QoS::ExactlyOnce, false).await;
    let first = keeper.recv_publish().await;
    let mut other = Peer::connect(addr(&b), V5, "other").await;
    other.subscribe("$share/k/q2", QoS::ExactlyOnce).await;
    keeper.drop_connection();
    other.expect_silence().await;
    let (mut keeper, ack) = Peer::connect_with(addr(&b), persistent(V5, "keeper")).await;
    assert!(ack.session_present);
    let again = keeper.recv_publish().await;
    assert!(again.dup && again.packet_id == first.packet_id);
    keeper.ack(&again).await;
    other.disconnect().await;
    keeper.disconnect().await;

    // The member's session ends: nobody else gets the message.
    let mut leaver = Peer::connect(addr(&b), V5, "leaver").await;
    leaver.subscribe("$share/l/q2", QoS::ExactlyOnce).await;
    publ.publish("q2", "lost", QoS::ExactlyOnce, false).await;
    leaver.recv_publish().await;
    let mut other = Peer::connect(addr(&b), V5, "other").await;
    other.subscribe("$share/l/q2", QoS::ExactlyOnce).await;
    leaver.drop_connection();
    other.expect_silence().await;
}

/// 5.0: MQTT-3.3.2-13, MQTT-3.3.2-14, MQTT-4.13.1-1. A Response Topic with a wildcard makes
/// the PUBLISH invalid: the connection is closed with a DISCONNECT reason of 0x80 or more.
#[tokio::test]
async fn a_response_topic_with_a_wildcard_closes_the_connection() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "rt").await;
    // PUBLISH QoS 0 to "t", Response Topic "a/#", no payload.
    p.send_raw(&[
        0x30, 0x0a, 0x00, 0x01, b't', 0x06, 0x08, 0x00, 0x03, b'a', b'/', b'#',
    ])
    .await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert!(d.reason.is_error(), "{d:?}"),
        other => panic!("{other:?}"),
    }
}

/// 5.0: MQTT-4.12.0-1. An authentication method the broker does not offer is refused with
/// CONNACK 0x8C, and the connection closes.
#[tokio::test]
async fn an_unknown_authentication_method_is_refused_and_closed() {
    let b = broker().await;
    let mut c = connect_packet(V5, "method");
    c.properties.authentication_method = Some(mstr("UNKNOWN-METHOD"));
    let (mut p, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
    assert!(p.expect_closed().await.is_empty());
}

/// 3.1.1: MQTT-3.1.2-4, MQTT-3.1.2-5, MQTT-4.5.0-1. A session with clean session 0 keeps
/// QoS 1 and QoS 2 messages that arrive while its client is away.
#[tokio::test]
async fn offline_qos1_and_qos2_messages_are_kept_for_a_persistent_3_1_1_session() {
    let b = broker().await;
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V3_1_1, "away")).await;
    sub.subscribe("off/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("off/1", "one", QoS::AtLeastOnce, false).await;
    publ.publish("off/2", "two", QoS::ExactlyOnce, false).await;
    let (mut sub, ack) = Peer::connect_with(addr(&b), persistent(V3_1_1, "away")).await;
    assert!(ack.session_present);
    for (t, qos) in [("off/1", QoS::AtLeastOnce), ("off/2", QoS::ExactlyOnce)] {
        let got = sub.recv_publish().await;
        assert_eq!((got.topic.as_str(), got.qos), (t, qos));
        sub.ack(&got).await;
    }
}

/// 3.1.1: MQTT-3.1.2-24. A 3.1.1 client silent for one and a half keep-alive periods is
/// disconnected (without a packet: 3.1.1 has no server DISCONNECT).
#[tokio::test]
async fn keep_alive_closes_an_idle_3_1_1_client() {
    let b = broker().await;
    let mut c = connect_packet(V3_1_1, "idle");
    c.keep_alive = 1;
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    let start = std::time::Instant::now();
    assert!(p.expect_closed().await.is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}

/// 3.1.1: MQTT-3.1.2-12. A client that connected without a will leaves no message behind
/// when its connection breaks.
#[tokio::test]
async fn no_will_is_published_without_the_will_flag() {
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V3_1_1, "watcher").await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    let p = Peer::connect(addr(&b), V3_1_1, "nowill").await;
    p.drop_connection();
    watcher.expect_silence().await;
}
