//! Persistence across a restart of the broker (in process, clean shutdown): retained messages,
//! persistent sessions with their subscriptions, offline queues, in-flight QoS 1/2 state,
//! inbound QoS 2 ids, session expiry while down, delayed wills, sync modes, and a clear error
//! for a store that cannot be read. Crashes (kill -9 of the real binary) are tested in
//! crates/cli/tests/crash.rs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sagitta_broker::{Broker, BrokerError, Config, SyncMode};
use sagitta_proto::{
    Connect, Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, Will, WillProperties,
};

use ProtocolVersion::{V3_1_1, V5};

/// A data directory, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagitta-store-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    TempDir(dir)
}

async fn start(dir: &Path, sync: SyncMode) -> Broker {
    let mut config = Config::default().data_dir(dir);
    config.sync = sync;
    broker_with(config).await
}

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

/// Connects a persistent session and checks `session present`.
async fn resume(b: &Broker, version: ProtocolVersion, id: &str, present: bool) -> Peer {
    let (peer, ack) = Peer::connect_with(addr(b), persistent(version, id)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(ack.session_present, present, "session present for {id}");
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart() {
    let dir = temp_dir("retained");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    p.publish("r/one", "1", QoS::AtLeastOnce, true).await;
    p.publish("r/two", "2", QoS::AtMostOnce, true).await;
    p.publish("r/gone", "x", QoS::AtLeastOnce, true).await;
    p.publish("r/gone", "", QoS::AtLeastOnce, true).await;
    p.publish("r/two", "2b", QoS::ExactlyOnce, true).await;
    p.disconnect().await;
    b.shutdown().await;

    let b = start(&dir, SyncMode::Periodic).await;
    let mut s = Peer::connect(addr(&b), V5, "sub").await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = s.recv_publish().await;
        assert!(m.retain);
        s.ack(&m).await;
        got.push((
            m.topic.as_str().to_owned(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [("r/one".into(), "1".into()), ("r/two".into(), "2b".into())]
    );
    s.expect_silence().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_and_subscriptions_survive_a_restart() {
    for version in [V3_1_1, V5] {
        let dir = temp_dir("queue");
        let b = start(&dir, SyncMode::Periodic).await;
        let mut s = resume(&b, version, "offline", false).await;
        s.subscribe("q/#", QoS::ExactlyOnce).await;
        s.disconnect().await;
        let mut p = Peer::connect(addr(&b), version, "pub").await;
        p.publish("q/1", "one", QoS::AtLeastOnce, false).await;
        p.publish("q/2", "two", QoS::ExactlyOnce, false).await;
        p.publish("q/0", "zero", QoS::AtMostOnce, false).await;
        p.disconnect().await;
        b.shutdown().await;

        let b = start(&dir, SyncMode::Periodic).await;
        let mut s = resume(&b, version, "offline", true).await;
        let one = s.recv_publish().await;
        assert_eq!((&one.payload[..], one.qos), (&b"one"[..], QoS::AtLeastOnce));
        s.ack(&one).await;
        let two = s.recv_publish().await;
        assert_eq!((&two.payload[..], two.qos), (&b"two"[..], QoS::ExactlyOnce));
        s.ack(&two).await;
        s.expect_silence().await;
        // The subscription came back too.
        let mut p = Peer::connect(addr(&b), version, "pub").await;
        p.publish("q/3", "three", QoS::AtLeastOnce, false).await;
        let three = s.recv_publish().await;
        assert_eq!(&three.payload[..], b"three");
        s.ack(&three).await;
        // The acknowledgement is handled before the shutdown.
        s.ping().await;
        s.disconnect().await;
        b.shutdown().await;

        // Acknowledged messages are gone from the store: nothing comes a second time.
        let b = start(&dir, SyncMode::Periodic).await;
        let mut s = resume(&b, version, "offline", true).await;
        s.expect_silence().await;
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_are_resent_with_their_packet_ids_after_a_restart() {
    let dir = temp_dir("inflight");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut s = resume(&b, V3_1_1, "flight", false).await;
    s.subscribe("f/#", QoS::ExactlyOnce).await;
    let mut p = Peer::connect(addr(&b), V3_1_1, "pub").await;
    p.publish("f/1", "q1", QoS::AtLeastOnce, false).await;
    p.publish("f/2", "q2", QoS::ExactlyOnce, false).await;
    p.publish("f/3", "q2-released", QoS::ExactlyOnce, false)
        .await;
    // Received, not acknowledged; the third gets as far as PUBREL.
    let q1 = s.recv_publish().await;
    let q2 = s.recv_publish().await;
    let q3 = s.recv_publish().await;
    let q3_id = q3.packet_id.unwrap();
    s.send(Packet::PubRec(PubResponse::new(q3_id))).await;
    match s.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, q3_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.ping().await;
    s.drop_connection();
    p.disconnect().await;
    b.shutdown().await;

    let b = start(&dir, SyncMode::Periodic).await;
    let mut s = resume(&b, V3_1_1, "flight", true).await;
    for want in [&q1, &q2] {
        let again = s.recv_publish().await;
        assert!(again.dup, "re-sent with DUP");
        assert_eq!(again.packet_id, want.packet_id);
        assert_eq!(again.payload, want.payload);
    }
    match s.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, q3_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.send(Packet::PubAck(PubResponse::new(q1.packet_id.unwrap())))
        .await;
    s.send(Packet::PubRec(PubResponse::new(q2.packet_id.unwrap())))
        .await;
    match s.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), q2.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.send(Packet::PubComp(PubResponse::new(q2.packet_id.unwrap())))
        .await;
    s.send(Packet::PubComp(PubResponse::new(q3_id))).await;
    s.ping().await;
    s.disconnect().await;
    b.shutdown().await;

    let b = start(&dir, SyncMode::Periodic).await;
    let mut s = resume(&b, V3_1_1, "flight", true).await;
    s.expect_silence().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_ids_survive_a_restart_so_a_resent_publish_is_not_delivered_twice() {
    let dir = temp_dir("qos2in");
    let b = start(&dir, SyncMode::Always).await;
    let mut s = resume(&b, V5, "watcher", false).await;
    s.subscribe("x", QoS::AtLeastOnce).await;
    let mut p = resume(&b, V5, "sender", false).await;
    p.send(Packet::Publish(publish(
        "x",
        "once",
        QoS::ExactlyOnce,
        false,
        7,
    )))
    .await;
    match p.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, pid(7)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let m = s.recv_publish().await;
    s.ack(&m).await;
    s.ping().await;
    p.drop_connection();
    s.disconnect().await;
    b.shutdown().await;

    let b = start(&dir, SyncMode::Always).await;
    let mut s = resume(&b, V5, "watcher", true).await;
    let mut p = resume(&b, V5, "sender", true).await;
    let mut again = publish("x", "once", QoS::ExactlyOnce, false, 7);
    again.dup = true;
    p.send(Packet::Publish(again)).await;
    match p.recv().await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, pid(7)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    p.send(Packet::PubRel(PubResponse::new(pid(7)))).await;
    match p.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::Success),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    s.expect_silence().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_expire_while_the_broker_is_down_are_gone_after_it() {
    let dir = temp_dir("expiry");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut short = persistent(V5, "short");
    short.properties.session_expiry_interval = Some(1);
    let (s, _) = Peer::connect_with(addr(&b), short.clone()).await;
    s.disconnect().await;
    let l = resume(&b, V5, "long", false).await;
    l.disconnect().await;
    // A clean session leaves nothing behind.
    let c = Peer::connect(addr(&b), V3_1_1, "clean").await;
    c.disconnect().await;
    b.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let b = start(&dir, SyncMode::Periodic).await;
    let (_s, ack) = Peer::connect_with(addr(&b), short).await;
    assert!(!ack.session_present, "expired while the broker was down");
    let _l = resume(&b, V5, "long", true).await;
    let mut clean = connect_packet(V3_1_1, "clean");
    clean.clean_start = false;
    let (_c, ack) = Peer::connect_with(addr(&b), clean).await;
    assert!(!ack.session_present);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_is_published_after_a_restart() {
    let dir = temp_dir("will");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut c = persistent(V5, "dying");
    c.will = Some(Will {
        topic: topic("wills/dying"),
        payload: "gone".to_owned().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(1),
            ..Default::default()
        },
    });
    let (dying, _) = Peer::connect_with(addr(&b), c).await;
    let mut w = resume(&b, V5, "watcher", false).await;
    w.subscribe("wills/#", QoS::AtLeastOnce).await;
    w.disconnect().await;
    dying.drop_connection();
    // Shut down before the delay runs out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.shutdown().await;

    let b = start(&dir, SyncMode::Periodic).await;
    let mut w = resume(&b, V5, "watcher", true).await;
    let m = w.recv_publish().await;
    assert_eq!(m.topic.as_str(), "wills/dying");
    assert_eq!(&m.payload[..], b"gone");
    w.ack(&m).await;
    b.shutdown().await;
}

/// A client still connected when the broker shuts down did not send DISCONNECT: its will is
/// published [MQTT-3.1.2-8] (here retained, so the next broker run still has it).
#[tokio::test]
async fn wills_of_clients_connected_at_shutdown_are_published() {
    let dir = temp_dir("shutdown-will");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut c = persistent(V3_1_1, "connected-at-shutdown");
    c.will = Some(Will {
        topic: topic("wills/at-shutdown"),
        payload: "broker went down".to_owned().into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    let (_client, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    b.shutdown().await;

    let b = start(&dir, SyncMode::Periodic).await;
    let mut w = Peer::connect(addr(&b), V5, "reader").await;
    w.subscribe("wills/#", QoS::AtLeastOnce).await;
    let m = w.recv_publish().await;
    assert_eq!(m.topic.as_str(), "wills/at-shutdown");
    assert_eq!(&m.payload[..], b"broker went down");
    assert!(m.retain);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_always_acknowledges_once_stored_and_keeps_order() {
    let dir = temp_dir("always");
    let b = start(&dir, SyncMode::Always).await;
    let s = resume(&b, V3_1_1, "slow", false).await;
    drop(s);
    let mut s = resume(&b, V3_1_1, "slow", true).await;
    s.subscribe("a", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Peer::connect(addr(&b), V3_1_1, "pub").await;
    // Pipelined: the PUBACKs come back in order.
    for i in 1..=50u16 {
        p.send(Packet::Publish(publish(
            "a",
            &i.to_string(),
            QoS::AtLeastOnce,
            false,
            i,
        )))
        .await;
    }
    for i in 1..=50u16 {
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id, pid(i)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    b.shutdown().await;
    let b = start(&dir, SyncMode::Always).await;
    let mut s = resume(&b, V3_1_1, "slow", true).await;
    for i in 1..=50 {
        let m = s.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes());
        s.ack(&m).await;
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_stops_the_start_with_a_clear_error() {
    let dir = temp_dir("corrupt");
    let b = start(&dir, SyncMode::Periodic).await;
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    p.publish("r", "1", QoS::AtLeastOnce, true).await;
    b.shutdown().await;
    // Overwrite every file of the store with garbage.
    fn scramble(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scramble(&path);
            } else if path.file_name().is_some_and(|n| n != "lock") {
                std::fs::write(&path, b"\x07not a store at all, just bytes").unwrap();
            }
        }
    }
    scramble(&dir);
    let mut config = Config::default().data_dir(&*dir);
    config.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    match Broker::start(config).await {
        Err(e @ BrokerError::Store(_)) => {
            let text = e.to_string();
            assert!(text.contains(&dir.display().to_string()), "{text}");
        }
        Err(other) => panic!("expected a store error, got {other}"),
        Ok(_) => panic!("a scrambled store must not start as if empty"),
    }
}
