//! MQTT 5.0 features: topic aliases both ways, message expiry, maximum packet size, payload
//! format, request/response and user properties, Receive Maximum (5.0 sections 3.3.2.3,
//! 3.1.2.11, 4.1, 4.9, 4.10).

mod common;

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sagitta_broker::Config;
use sagitta_proto::{Packet, ProtocolVersion, QoS, ReasonCode, TopicName};

use ProtocolVersion::V5;

#[tokio::test]
async fn inbound_topic_alias_is_resolved() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("alias/t", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    let mut first = publish("alias/t", "1", QoS::AtMostOnce, false, 0);
    first.properties.topic_alias = NonZeroU16::new(4);
    publ.send(Packet::Publish(first)).await;
    let mut second = publish("alias/t", "2", QoS::AtMostOnce, false, 0);
    second.topic = TopicName::empty();
    second.properties.topic_alias = NonZeroU16::new(4);
    publ.send(Packet::Publish(second)).await;
    for want in ["1", "2"] {
        let p = sub.recv_publish().await;
        assert_eq!(p.topic, "alias/t");
        assert_eq!(&p.payload[..], want.as_bytes());
        assert_eq!(
            p.properties.topic_alias, None,
            "the publisher's alias is not forwarded"
        );
    }
}

#[tokio::test]
async fn topic_alias_above_maximum_closes_with_0x94() {
    let b = broker_with(Config {
        topic_alias_maximum: 2,
        ..Config::default().in_memory()
    })
    .await;
    let mut p = Peer::connect(addr(&b), V5, "c").await;
    let mut publish = publish("x", "1", QoS::AtMostOnce, false, 0);
    publish.properties.topic_alias = NonZeroU16::new(3);
    p.send(Packet::Publish(publish)).await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::TopicAliasInvalid),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn outbound_topic_alias_honours_the_clients_maximum() {
    let b = broker().await;
    let mut c = connect_packet(V5, "sub");
    c.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    sub.subscribe("ta/#", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    for t in ["ta/a", "ta/a", "ta/b"] {
        publ.publish(t, "x", QoS::AtMostOnce, false).await;
    }
    let first = sub.recv_publish().await;
    assert_eq!(first.topic, "ta/a");
    let alias = first.properties.topic_alias.expect("alias set");
    let second = sub.recv_publish().await;
    assert!(second.topic.is_empty(), "alias used instead of the topic");
    assert_eq!(second.properties.topic_alias, Some(alias));
    let third = sub.recv_publish().await;
    assert_eq!(third.topic, "ta/b");
    assert_eq!(third.properties.topic_alias, None, "only one alias allowed");
}

#[tokio::test]
async fn message_expiry_is_decremented_and_expired_messages_dropped() {
    let b = broker().await;
    let mut c = connect_packet(V5, "sleeper");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Peer::connect_with(addr(&b), c.clone()).await;
    sub.subscribe("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    let mut short = publish("exp/short", "short", QoS::AtLeastOnce, false, 1);
    short.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(short)).await;
    publ.recv().await;
    let mut long = publish("exp/long", "long", QoS::AtLeastOnce, false, 2);
    long.properties.message_expiry_interval = Some(100);
    publ.send(Packet::Publish(long)).await;
    publ.recv().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "exp/long", "the expired message was dropped");
    let left = p
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(
        (97..=99).contains(&left),
        "decremented by the time spent queued: {left}"
    );
    sub.ack(&p).await;
    sub.expect_silence().await;
}

#[tokio::test]
async fn messages_larger_than_the_clients_maximum_are_not_sent() {
    let b = broker().await;
    let mut c = connect_packet(V5, "tiny");
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    sub.subscribe("size", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("size", &"x".repeat(200), QoS::AtMostOnce, false)
        .await;
    publ.publish("size", "small", QoS::AtMostOnce, false).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"small");
}

#[tokio::test]
async fn payload_format_indicator_is_checked() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "c").await;
    let mut bad = publish("pf", "", QoS::AtLeastOnce, false, 1);
    bad.payload = Bytes::from_static(b"\xff\xfe");
    bad.properties.payload_format_indicator = Some(true);
    p.send(Packet::Publish(bad)).await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::PayloadFormatInvalid),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn request_response_and_user_properties_pass_through() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "responder").await;
    sub.subscribe("req", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "requester").await;
    let mut req = publish("req", "{\"q\":1}", QoS::AtMostOnce, false, 0);
    req.properties.response_topic = Some(topic("resp/requester"));
    req.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
    req.properties.content_type = Some(mstr("application/json"));
    req.properties.payload_format_indicator = Some(true);
    req.properties.user_properties = vec![
        (mstr("k"), mstr("v1")),
        (mstr("a"), mstr("b")),
        (mstr("k"), mstr("v2")),
    ];
    let sent = req.properties.clone();
    publ.send(Packet::Publish(req)).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.properties.response_topic, sent.response_topic);
    assert_eq!(got.properties.correlation_data, sent.correlation_data);
    assert_eq!(got.properties.content_type, sent.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(true));
    assert_eq!(
        got.properties.user_properties, sent.user_properties,
        "order kept"
    );
}

#[tokio::test]
async fn exceeding_receive_maximum_closes_with_0x93() {
    let b = broker_with(Config {
        receive_maximum: 2,
        ..Config::default().in_memory()
    })
    .await;
    let mut p = Peer::connect(addr(&b), V5, "greedy").await;
    for id in 1..=3 {
        p.send(Packet::Publish(publish(
            "rm",
            "x",
            QoS::ExactlyOnce,
            false,
            id,
        )))
        .await;
    }
    let got = p.expect_closed().await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ReceiveMaximumExceeded),
        "{got:?}"
    );
}

#[tokio::test]
async fn client_receive_maximum_limits_the_brokers_in_flight_messages() {
    let b = broker().await;
    let mut c = connect_packet(V5, "rm1");
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = Peer::connect_with(addr(&b), c).await;
    sub.subscribe("one", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("one", "a", QoS::AtLeastOnce, false).await;
    publ.publish("one", "b", QoS::AtLeastOnce, false).await;
    let a = sub.recv_publish().await;
    sub.expect_silence().await;
    sub.ack(&a).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"b");
}

#[tokio::test]
async fn subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    // MQTT-3.3.4-6.
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "c").await;
    let mut publish = publish("x", "1", QoS::AtMostOnce, false, 0);
    publish.properties.subscription_identifiers =
        vec![sagitta_proto::SubscriptionId::new(5).unwrap()];
    p.send(Packet::Publish(publish)).await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
}
