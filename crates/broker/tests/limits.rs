//! Limits against abuse: subscriptions per client, topic levels, connections per listener,
//! the connection rate and each client's publish rate (back-pressure, nothing dropped).

// Test helpers: a failed expectation aborts the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sagitta_broker::{Broker, Config, ListenerConfig};
use sagitta_proto::{Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

use ProtocolVersion::{V3_1_1, V5};

#[tokio::test]
async fn a_session_holds_at_most_max_subscriptions_per_client() {
    let b = broker_with(Config {
        max_subscriptions_per_client: 2,
        ..Config::default().in_memory()
    })
    .await;
    let mut c = Peer::connect(addr(&b), V5, "many").await;
    c.subscribe("a", QoS::AtMostOnce).await;
    c.subscribe("b", QoS::AtMostOnce).await;
    let opts = SubscriptionOptions::new(QoS::AtLeastOnce);
    assert_eq!(
        c.subscribe_opts("c", opts, 2).await,
        [ReasonCode::QuotaExceeded]
    );
    // Replacing one it has is fine; after an unsubscribe there is room again.
    assert_eq!(
        c.subscribe_opts("a", opts, 3).await,
        [ReasonCode::GrantedQoS1]
    );
    c.unsubscribe("b", 4).await;
    assert_eq!(
        c.subscribe_opts("c", opts, 5).await,
        [ReasonCode::GrantedQoS1]
    );
}

#[tokio::test]
async fn topics_with_too_many_levels_are_refused() {
    let b = broker_with(Config {
        max_topic_levels: 3,
        ..Config::default().in_memory()
    })
    .await;
    let mut c = Peer::connect(addr(&b), V5, "deep").await;
    let opts = SubscriptionOptions::new(QoS::AtLeastOnce);
    assert_eq!(
        c.subscribe_opts("a/b/c/#", opts, 1).await,
        [ReasonCode::TopicFilterInvalid]
    );
    c.subscribe("a/b/#", QoS::AtLeastOnce).await;
    assert_eq!(
        c.publish_reason("a/b/c/d", "deep", QoS::AtLeastOnce, 7)
            .await,
        ReasonCode::TopicNameInvalid
    );
    c.publish("a/b/c", "ok", QoS::AtLeastOnce, false).await;
    let m = c.recv_publish().await;
    assert_eq!(m.topic.as_str(), "a/b/c");
}

/// Opens a connection and sends CONNECT; true if a CONNACK came back, false if the broker
/// closed the connection without one.
async fn admitted(b: &Broker, id: &str) -> Option<Peer> {
    let mut p = Peer::open(addr(b), V3_1_1).await;
    p.send(Packet::Connect(Box::new(connect_packet(V3_1_1, id))))
        .await;
    match p.try_recv().await {
        Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => Some(p),
        Some(other) => panic!("unexpected {other:?}"),
        None => None,
    }
}

#[tokio::test]
async fn a_listener_admits_at_most_its_max_connections() {
    let b = Broker::start(Config::default().in_memory().listener(ListenerConfig {
        max_connections: Some(2),
        ..ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()).allow_anonymous(true)
    }))
    .await
    .unwrap();
    let first = admitted(&b, "one").await.expect("first admitted");
    let _second = admitted(&b, "two").await.expect("second admitted");
    assert!(admitted(&b, "three").await.is_none(), "third refused");
    // A place frees up when a connection closes.
    first.disconnect().await;
    let deadline = Instant::now() + WAIT;
    loop {
        if admitted(&b, "four").await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a disconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_beyond_max_connection_rate_are_closed() {
    let b = broker_with(Config {
        max_connection_rate: 3,
        ..Config::default().in_memory()
    })
    .await;
    let mut admitted_now = 0;
    let mut kept = Vec::new();
    for i in 0..10 {
        if let Some(p) = admitted(&b, &format!("c{i}")).await {
            admitted_now += 1;
            kept.push(p);
        }
    }
    // A burst of one second's worth, and whatever trickled in meanwhile.
    assert!(
        (3..10).contains(&admitted_now),
        "{admitted_now} of 10 admitted"
    );
}

#[tokio::test]
async fn a_client_over_max_publish_rate_is_slowed_down_not_dropped() {
    let b = broker_with(Config {
        max_publish_rate: 50,
        ..Config::default().in_memory()
    })
    .await;
    let mut sub = Peer::connect(addr(&b), V5, "sub").await;
    sub.subscribe("rate", QoS::AtLeastOnce).await;
    let mut p = Peer::connect(addr(&b), V5, "fast").await;
    let started = Instant::now();
    // One at a time (each read holds one PUBLISH): a burst of 50, then 50 per second, so
    // the last 50 take at least a second. A slower machine only makes it longer.
    for i in 1..=100u16 {
        p.send(Packet::Publish(publish(
            "rate",
            &i.to_string(),
            QoS::AtLeastOnce,
            false,
            i,
        )))
        .await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id, pid(i)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "100 publishes at 50/s were acknowledged in {:?}",
        started.elapsed()
    );
    for i in 1..=100 {
        let m = sub.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes());
        sub.ack(&m).await;
    }
}
