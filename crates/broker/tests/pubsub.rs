//! PUBLISH, SUBSCRIBE, UNSUBSCRIBE, QoS flows, retained messages, overlapping and shared
//! subscriptions (MQTT 3.1.1 sections 3.3-3.11, 4.3-4.8; 5.0 sections 3.3-3.11, 4.3-4.8).

mod common;

use common::*;
use sagitta_proto::{
    Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

#[tokio::test]
async fn every_qos_in_every_version() {
    let b = broker().await;
    for v in [V3_1, V3_1_1, V5] {
        let mut sub = Peer::connect(addr(&b), v, "sub").await;
        sub.subscribe("q/#", QoS::ExactlyOnce).await;
        let mut publ = Peer::connect(addr(&b), v, "pub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publ.publish("q/x", &format!("{v} {qos}"), qos, false).await;
            let p = sub.recv_publish().await;
            assert_eq!(p.topic, "q/x");
            assert_eq!(p.qos, qos);
            assert_eq!(p.payload, format!("{v} {qos}").as_bytes());
            assert!(!p.retain && !p.dup);
            sub.ack(&p).await;
        }
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    // MQTT-3.8.4-6 / 5.0 section 3.8.4.
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("m", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("m", "2", QoS::ExactlyOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.ack(&p).await;
    publ.publish("m", "0", QoS::AtMostOnce, false).await;
    assert_eq!(sub.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn qos2_is_forwarded_on_receipt_and_deduplicated_until_pubrel() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("x", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.send(Packet::Publish(publish(
        "x",
        "once",
        QoS::ExactlyOnce,
        false,
        9,
    )))
    .await;
    assert!(matches!(publ.recv().await, Packet::PubRec(r) if r.packet_id == pid(9)));
    // Forwarded before PUBREL.
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    // A re-send with DUP before PUBREL is acknowledged but not forwarded again.
    let mut again = publish("x", "once", QoS::ExactlyOnce, false, 9);
    again.dup = true;
    publ.send(Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(r) if r.packet_id == pid(9)));
    sub.expect_silence().await;
    publ.send(Packet::PubRel(PubResponse::new(pid(9)))).await;
    assert!(matches!(publ.recv().await, Packet::PubComp(c) if c.packet_id == pid(9)));
    // After PUBREL the id is free: the same id is a new message.
    publ.send(Packet::Publish(publish(
        "x",
        "twice",
        QoS::ExactlyOnce,
        false,
        9,
    )))
    .await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    assert_eq!(&sub.recv_publish().await.payload[..], b"twice");
}

#[tokio::test]
async fn pubrel_for_unknown_id_gets_pubcomp_0x92_in_v5() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "c").await;
    p.send(Packet::PubRel(PubResponse::new(pid(77)))).await;
    match p.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::PacketIdentifierNotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn outbound_qos2_flow_completes() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("e", QoS::ExactlyOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("e", "x", QoS::ExactlyOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    sub.ack(&p).await;
    sub.ping().await;
}

#[tokio::test]
async fn v5_puback_says_no_matching_subscribers() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "lonely").await;
    p.send(Packet::Publish(publish(
        "nobody/listens",
        "x",
        QoS::AtLeastOnce,
        false,
        3,
    )))
    .await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let b = broker_with(sagitta_broker::Config {
        sys_interval: 1,
        ..Default::default()
    })
    .await;
    let mut all = Peer::connect(addr(&b), V3_1_1, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut sys = Peer::connect(addr(&b), V3_1_1, "sys").await;
    sys.subscribe("$SYS/broker/version", QoS::AtMostOnce).await;
    // $SYS values are retained and refreshed every second.
    let v = sys.recv_publish().await;
    assert!(v.payload.starts_with(b"sagitta "), "{v:?}");
    // '#' does not match '$' topics [MQTT-4.7.2-1].
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("a/b", "plain", QoS::AtMostOnce, false).await;
    assert_eq!(all.recv_publish().await.topic, "a/b");
    all.expect_silence().await;
}

/// Mosquitto's `$SYS` names for counters and load averages, with values that follow a
/// known load.
#[tokio::test]
async fn sys_counters_and_load_averages_follow_the_traffic() {
    let b = broker_with(sagitta_broker::Config {
        sys_interval: 1,
        ..Default::default()
    })
    .await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    for _ in 0..50 {
        publ.publish("t", "x", QoS::AtMostOnce, false).await;
        sub.recv_publish().await;
    }
    // Counters are flushed by the connections in batches and read every second: wait for
    // an update that has all 50.
    let mut sys = Peer::connect(addr(&b), V3_1_1, "sys").await;
    sys.subscribe("$SYS/broker/publish/messages/received", QoS::AtMostOnce)
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = sys.recv_publish().await;
        if p.payload == "50" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "last seen {p:?}");
    }
    let mut seen = std::collections::HashMap::new();
    let mut watch = Peer::connect(addr(&b), V3_1_1, "watch").await;
    watch.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    // The retained values arrive at once: one of each topic.
    while seen.len() < 41 {
        let p = watch.recv_publish().await;
        let value = String::from_utf8(p.payload.to_vec()).unwrap();
        seen.insert(p.topic.to_string(), value);
    }
    let get = |t: &str| {
        seen.get(&format!("$SYS/broker/{t}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(get("messages/received"), "50");
    // sub, pub and sys; watch too if an update came after it connected.
    assert!(
        ["3", "4"].contains(&get("clients/connected").as_str()),
        "{seen:?}"
    );
    assert_eq!(get("clients/active"), get("clients/connected"));
    for name in [
        "messages/received",
        "publish/received",
        "bytes/received",
        "connections",
    ] {
        for window in ["1min", "5min", "15min"] {
            let load: f64 = get(&format!("load/{name}/{window}")).parse().unwrap();
            assert!(load > 0.0, "load/{name}/{window} = {load}");
        }
    }
    let dropped: f64 = get("load/publish/dropped/1min").parse().unwrap();
    assert_eq!(dropped, 0.0);
}

#[tokio::test]
async fn clients_cannot_publish_to_sys_topics() {
    let b = broker_with(sagitta_broker::Config {
        sys_interval: 0,
        ..Default::default()
    })
    .await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut p = Peer::connect(addr(&b), V5, "forger").await;
    p.send(Packet::Publish(publish(
        "$SYS/broker/version",
        "fake",
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    match p.recv().await {
        Packet::PubAck(a) => {
            assert_eq!(a.reason, ReasonCode::NotAuthorized);
            assert!(
                a.properties.reason_string.is_some(),
                "reason string explains"
            );
        }
        other => panic!("{other:?}"),
    }
    sub.expect_silence().await;
}

#[tokio::test]
async fn retained_messages_stored_replaced_deleted() {
    // MQTT-3.3.1-5 .. 3.3.1-12.
    let b = broker().await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("r/1", "first", QoS::AtLeastOnce, true).await;
    publ.publish("r/1", "second", QoS::AtLeastOnce, true).await;
    publ.publish("r/2", "other", QoS::AtMostOnce, true).await;

    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got = [sub.recv_publish().await, sub.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(&got[0].payload[..], b"second");
    assert!(
        got.iter().all(|p| p.retain),
        "retain flag set for retained messages"
    );
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].qos, QoS::AtMostOnce);
    sub.ack(&got[0]).await;

    // A live message to a subscriber is sent with RETAIN 0 in 3.1.1 [MQTT-3.3.1-9].
    publ.publish("r/1", "live", QoS::AtMostOnce, true).await;
    let live = sub.recv_publish().await;
    assert_eq!(&live.payload[..], b"live");
    assert!(!live.retain);

    // An empty retained payload deletes (and is forwarded as usual).
    publ.publish("r/1", "", QoS::AtMostOnce, true).await;
    assert!(sub.recv_publish().await.payload.is_empty());
    let mut late = Peer::connect(addr(&b), V3_1_1, "late").await;
    late.subscribe("r/#", QoS::AtMostOnce).await;
    assert_eq!(late.recv_publish().await.topic, "r/2");
    late.expect_silence().await;
}

#[tokio::test]
async fn v5_retain_handling_and_retain_as_published() {
    let b = broker().await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("rh", "kept", QoS::AtMostOnce, true).await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;

    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    sub.subscribe_opts("rh", never, 1).await;
    sub.expect_silence().await;

    let if_new = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        retain_as_published: true,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    // Exists already: not sent.
    sub.subscribe_opts("rh", if_new, 2).await;
    sub.expect_silence().await;
    // New subscription: sent.
    sub.subscribe_opts("rh/#", if_new, 3).await;
    let p = sub.recv_publish().await;
    assert!(p.retain && &p.payload[..] == b"kept");

    // Retain As Published keeps the flag on live messages.
    publ.publish("rh", "live", QoS::AtMostOnce, true).await;
    let p = sub.recv_publish().await;
    assert!(p.retain, "retain as published");
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_highest_qos_with_all_ids() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    for (f, qos, id) in [("o/+", QoS::AtMostOnce, 1u32), ("o/#", QoS::AtLeastOnce, 2)] {
        sub.send(Packet::Subscribe(sagitta_proto::Subscribe {
            packet_id: pid(id as u16),
            filters: vec![(filter(f), SubscriptionOptions::new(qos))],
            properties: sagitta_proto::SubscribeProperties {
                subscription_identifier: SubscriptionId::new(id),
                ..Default::default()
            },
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::SubAck(_)));
    }
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("o/x", "one", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids: Vec<u32> = p
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    sub.ack(&p).await;
    sub.expect_silence().await;
}

#[tokio::test]
async fn resubscribe_replaces_and_unsubscribe_reports_per_filter() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("u", QoS::AtMostOnce).await;
    sub.subscribe("u", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    publ.publish("u", "x", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce, "options replaced, not added");
    sub.ack(&p).await;
    sub.expect_silence().await;
    assert_eq!(sub.unsubscribe("u", 5).await, [ReasonCode::Success]);
    assert_eq!(
        sub.unsubscribe("u", 6).await,
        [ReasonCode::NoSubscriptionExisted]
    );
    publ.publish("u", "y", QoS::AtMostOnce, false).await;
    sub.expect_silence().await;
}

#[tokio::test]
async fn clients_receive_their_own_messages_unless_no_local() {
    let b = broker().await;
    let mut c3 = Peer::connect(addr(&b), V3_1_1, "c3").await;
    c3.subscribe("self", QoS::AtMostOnce).await;
    c3.publish("self", "echo", QoS::AtMostOnce, false).await;
    assert_eq!(&c3.recv_publish().await.payload[..], b"echo");

    let mut c5 = Peer::connect(addr(&b), V5, "c5").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    c5.subscribe_opts("self", no_local, 1).await;
    c5.publish("self", "mine", QoS::AtMostOnce, false).await;
    c5.expect_silence().await;
    c3.recv_publish().await;
    let mut other = Peer::connect(addr(&b), V5, "other").await;
    other
        .publish("self", "theirs", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&c5.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_one_member() {
    let b = broker().await;
    let mut a = Peer::connect(addr(&b), V5, "a").await;
    let mut c = Peer::connect(addr(&b), V3_1_1, "c").await;
    a.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    c.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V5, "pub").await;
    for i in 0..10 {
        publ.publish("jobs/x", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let mut seen = Vec::new();
    for peer in [&mut a, &mut c] {
        for _ in 0..5 {
            let p = peer.recv_publish().await;
            peer.ack(&p).await;
            seen.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        peer.expect_silence().await;
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(seen, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());

    // A member that leaves gets no more; the rest of the group gets everything.
    c.disconnect().await;
    for i in 0..4 {
        publ.publish("jobs/y", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    for _ in 0..4 {
        let p = a.recv_publish().await;
        a.ack(&p).await;
    }
}

#[tokio::test]
async fn in_flight_window_limits_unacknowledged_messages() {
    let b = broker_with(sagitta_broker::Config {
        max_inflight: 2,
        ..Default::default()
    })
    .await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "slow").await;
    sub.subscribe("w", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    for i in 0..5 {
        publ.publish("w", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    sub.expect_silence().await;
    sub.ack(&first).await;
    let third = sub.recv_publish().await;
    assert_eq!(&third.payload[..], b"2", "order kept");
    sub.ack(&second).await;
    sub.ack(&third).await;
    for want in ["3", "4"] {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], want.as_bytes());
        sub.ack(&p).await;
    }
}

#[tokio::test]
async fn invalid_subscribe_filter_closes_with_0x8f() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "bad-filter").await;
    // SUBSCRIBE id 1, no properties, filter "a/#/b", QoS 0.
    p.send_raw(&[
        0x82, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
    ])
    .await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::TopicFilterInvalid),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wildcard_in_publish_topic_closes_with_0x90() {
    let b = broker().await;
    let mut p = Peer::connect(addr(&b), V5, "bad-topic").await;
    // PUBLISH QoS 0 to "a/+", no properties.
    p.send_raw(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00])
        .await;
    match p.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::TopicNameInvalid),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn empty_payload_is_legal() {
    let b = broker().await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("empty", QoS::AtLeastOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    publ.publish("empty", "", QoS::AtLeastOnce, false).await;
    let p = sub.recv_publish().await;
    assert!(p.payload.is_empty());
    sub.ack(&p).await;
}

#[tokio::test]
async fn a_slow_subscriber_does_not_stall_others_and_its_queue_is_bounded() {
    let b = broker_with(sagitta_broker::Config {
        max_queued_messages: 200,
        ..Default::default()
    })
    .await;
    // `stuck` subscribes and then never reads its socket again.
    let mut stuck = Peer::connect(addr(&b), V3_1_1, "stuck").await;
    stuck.subscribe("flood", QoS::AtMostOnce).await;
    let mut fast = Peer::connect(addr(&b), V3_1_1, "fast").await;
    fast.subscribe("flood", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    let payload = "x".repeat(4096);
    // 20 MB in rounds of 100 messages; `fast` reads each round before the next, so its own
    // queue never holds more than 100 and it must get every message.
    let mut round = bytes::BytesMut::new();
    for _ in 0..100 {
        Packet::Publish(publish("flood", &payload, QoS::AtMostOnce, false, 0))
            .encode(V3_1_1, &mut round)
            .unwrap();
    }
    for _ in 0..50 {
        publ.send_raw(&round).await;
        for _ in 0..100 {
            fast.recv_publish().await;
        }
    }
    // 20 MB went to `stuck`: far more than socket buffers and its 200-message queue hold.
    let dropped = b
        .metrics()
        .dropped_queue_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped > 0,
        "the stuck subscriber's queue overflowed and was bounded"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_burst_larger_than_one_write_is_delivered_without_further_traffic() {
    // Regression: the connection stopped encoding at its output high-water mark and then
    // waited for a wake-up that had already been used; the tail of a QoS 0 burst stayed
    // queued until the subscriber sent something.
    let b = broker_with(sagitta_broker::Config {
        max_queued_messages: 100_000,
        ..Default::default()
    })
    .await;
    let mut sub = Peer::connect(addr(&b), V3_1_1, "sub").await;
    sub.subscribe("burst", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(addr(&b), V3_1_1, "pub").await;
    // 6 MB to a subscriber that is not reading yet: its socket fills up, the broker's write
    // blocks, and the rest waits in the mailbox; then the subscriber reads everything.
    let total = 6_000;
    let pad = "x".repeat(1000);
    let mut bytes = bytes::BytesMut::new();
    for i in 0..total {
        Packet::Publish(publish(
            "burst",
            &format!("{i:08}{pad}"),
            QoS::AtMostOnce,
            false,
            0,
        ))
        .encode(V3_1_1, &mut bytes)
        .unwrap();
    }
    publ.send_raw(&bytes).await;
    publ.ping().await;
    for i in 0..total {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..8], format!("{i:08}").as_bytes());
    }
}
