//! Persistent sessions, offline queues, re-delivery, session expiry and wills (MQTT 3.1.1
//! sections 3.1.2.4, 3.1.2.5, 4.1, 4.4; 5.0 sections 3.1.2.4, 3.1.2.11.2, 3.1.3.2, 4.1, 4.4).

mod common;

use std::time::Duration;

use common::*;
use sagitta_broker::Config;
use sagitta_proto::{
    Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS, ReasonCode, Will,
    WillProperties,
};

use ProtocolVersion::{V3_1_1, V5};

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

fn will(t: &str, payload: &str) -> Will {
    Will {
        topic: topic(t),
        payload: payload.to_owned().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

#[tokio::test]
async fn offline_messages_are_queued_and_delivered_in_order() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let (mut sub, _) = Peer::connect_with(addr(&b), persistent(v, "p")).await;
        sub.subscribe("news/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;

        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        for i in 0..5 {
            publ.publish("news/a", &format!("q1-{i}"), QoS::AtLeastOnce, false)
                .await;
        }
        // QoS 0 is not queued for offline clients by default.
        publ.publish("news/a", "q0", QoS::AtMostOnce, false).await;
        publ.ping().await;

        let (mut sub, ack) = Peer::connect_with(addr(&b), persistent(v, "p")).await;
        assert!(ack.session_present);
        for i in 0..5 {
            let p = sub.recv_publish().await;
            assert_eq!(p.payload, format!("q1-{i}").as_bytes());
            sub.ack(&p).await;
        }
        sub.expect_silence().await;
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_after_reconnect() {
    // MQTT-4.4.0-1: re-send unacknowledged PUBLISH (DUP=1) and PUBREL, in order.
    let b = broker().await;
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V3_1_1, "r")).await;
    sub.subscribe("re", QoS::ExactlyOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("re", "one", QoS::AtLeastOnce, false).await;
    publ.publish("re", "two", QoS::ExactlyOnce, false).await;
    publ.publish("re", "three", QoS::ExactlyOnce, false).await;
    let one = sub.recv_publish().await;
    let two = sub.recv_publish().await;
    let three = sub.recv_publish().await;
    assert!(!one.dup);
    // "three" gets PUBREC (so the broker must re-send PUBREL), the others nothing.
    sub.send(Packet::PubRec(sagitta_proto::PubResponse::new(
        three.packet_id.unwrap(),
    )))
    .await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    sub.drop_connection();

    let (mut sub, ack) = Peer::connect_with(addr(&b), persistent(V3_1_1, "r")).await;
    assert!(ack.session_present);
    let again_one = sub.recv_publish().await;
    assert!(
        again_one.dup && again_one.packet_id == one.packet_id && &again_one.payload[..] == b"one"
    );
    let again_two = sub.recv_publish().await;
    assert!(again_two.dup && again_two.packet_id == two.packet_id);
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), three.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.ack(&again_one).await;
    sub.ack(&again_two).await;
    sub.send(Packet::PubComp(sagitta_proto::PubResponse::new(
        three.packet_id.unwrap(),
    )))
    .await;
    sub.ping().await;
}

#[tokio::test]
async fn offline_queue_is_bounded() {
    let b = broker_with(Config {
        max_queued_messages: 3,
        ..Config::default().in_memory()
    })
    .await;
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V3_1_1, "small")).await;
    sub.subscribe("flood", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    for i in 0..10 {
        publ.publish("flood", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let (mut sub, _) = Peer::connect_with(addr(&b), persistent(V3_1_1, "small")).await;
    for want in ["0", "1", "2"] {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], want.as_bytes());
        sub.ack(&p).await;
    }
    sub.expect_silence().await;
    assert_eq!(
        b.metrics()
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() {
    let b = broker().await;
    let mut c = persistent(V5, "short");
    c.properties.session_expiry_interval = Some(1);
    let (mut p, _) = Peer::connect_with(addr(&b), c.clone()).await;
    p.subscribe("s", QoS::AtLeastOnce).await;
    p.disconnect().await;
    // Still there before the interval ends.
    let (p, ack) = Peer::connect_with(addr(&b), c.clone()).await;
    assert!(ack.session_present);
    p.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert!(!ack.session_present, "expired");
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_with_the_connection() {
    let b = broker().await;
    let mut c = connect_packet(V5, "zero");
    c.clean_start = false;
    let (p, _) = Peer::connect_with(addr(&b), c.clone()).await;
    p.disconnect().await;
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn v5_disconnect_may_change_the_expiry_but_not_from_zero() {
    let b = broker().await;
    // Expiry 300 at CONNECT, 0 at DISCONNECT: the session ends.
    let (mut p, _) = Peer::connect_with(addr(&b), persistent(V5, "d")).await;
    p.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    }))
    .await;
    assert!(p.expect_closed().await.is_empty());
    let (_p, ack) = Peer::connect_with(addr(&b), persistent(V5, "d")).await;
    assert!(!ack.session_present);

    // Expiry 0 at CONNECT, non-zero at DISCONNECT: protocol error [MQTT-3.14.2-2].
    let mut p = Peer::connect(addr(&b), V5, "e").await;
    p.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    }))
    .await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn will_is_sent_on_network_failure_not_on_disconnect() {
    for v in [V3_1_1, V5] {
        let b = broker().await;
        let mut watcher = Peer::connect(addr(&b), v, "watcher").await;
        watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

        let mut c = connect_packet(v, "polite");
        c.will = Some(will("wills/polite", "should not appear"));
        let (p, _) = Peer::connect_with(addr(&b), c).await;
        p.disconnect().await;

        let mut c = connect_packet(v, "crashy");
        let mut w = will("wills/crashy", "crashed");
        w.retain = true;
        c.will = Some(w);
        let (p, _) = Peer::connect_with(addr(&b), c).await;
        p.drop_connection();

        let got = watcher.recv_publish().await;
        assert_eq!(got.topic, "wills/crashy");
        assert_eq!(&got.payload[..], b"crashed");
        assert_eq!(got.qos, QoS::AtLeastOnce);
        watcher.ack(&got).await;
        watcher.expect_silence().await;

        // Will retain is honoured.
        let mut late = Peer::connect(addr(&b), v, "late").await;
        late.subscribe("wills/crashy", QoS::AtMostOnce).await;
        let r = late.recv_publish().await;
        assert!(r.retain && &r.payload[..] == b"crashed");
    }
}

#[tokio::test]
async fn v5_disconnect_with_will_message_sends_the_will() {
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V5, "watcher").await;
    watcher.subscribe("w", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "leaver");
    c.will = Some(will("w", "bye"));
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    p.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWill,
    )))
    .await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"bye");
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnect_and_sent_otherwise() {
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V5, "watcher").await;
    watcher.subscribe("delayed", QoS::AtMostOnce).await;
    let with_delay = |id: &str| {
        let mut c = persistent(V5, id);
        let mut w = will("delayed", id);
        w.properties.will_delay_interval = Some(1);
        c.will = Some(w);
        c
    };
    // Comes back within the delay: no will [MQTT-3.1.3-9].
    let (p, _) = Peer::connect_with(addr(&b), with_delay("back")).await;
    p.drop_connection();
    let (_back, _) = Peer::connect_with(addr(&b), persistent(V5, "back")).await;
    // Stays away: the will is sent after about a second.
    let (p, _) = Peer::connect_with(addr(&b), with_delay("gone")).await;
    p.drop_connection();
    watcher.expect_silence().await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    watcher.expect_silence().await;
}

#[tokio::test]
async fn protocol_error_publishes_the_will() {
    let b = broker().await;
    let mut watcher = Peer::connect(addr(&b), V3_1_1, "watcher").await;
    watcher.subscribe("pe", QoS::AtMostOnce).await;
    let mut c = connect_packet(V3_1_1, "broken");
    c.will = Some(will("pe", "protocol error"));
    let (mut p, _) = Peer::connect_with(addr(&b), c).await;
    p.send_raw(&[0xF0, 0x00]).await; // AUTH does not exist in 3.1.1
    assert!(p.expect_closed().await.is_empty());
    assert_eq!(&watcher.recv_publish().await.payload[..], b"protocol error");
}
