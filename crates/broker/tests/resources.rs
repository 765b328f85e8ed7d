//! Resources under churn, measured on this process (the broker runs in it): 10 000
//! connections opened and closed leave neither memory nor file descriptors behind, and an
//! offline persistent subscriber's queue holds at `max_queued_messages` while the drops are
//! reported (metrics, Prometheus, `$SYS`).
//!
//! The tests run one at a time (`SERIAL`): each measures the whole process.
//!
//! Open files: both ends of every connection are in this process, so N connections at once
//! take 2N descriptors. The test opens at most 2000 at once, fewer if the soft limit on open
//! files (`ulimit -n`) is lower, and then runs more rounds: 10 000 in all either way. Tests
//! deny unsafe code, so the limit is not raised here; `ulimit -n 5000` before `cargo test`
//! gives the full 2000 at once.

// Test helpers: a failed expectation aborts the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod common_load;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use common_load::*;
use sagitta_broker::{Config, HttpConfig};
use sagitta_proto::{Connect, Packet, ProtocolVersion, QoS};
use tokio::sync::{Barrier, Mutex};
use tokio::task::JoinSet;

use ProtocolVersion::{V3_1_1, V5};

static SERIAL: Mutex<()> = Mutex::const_new(());

fn http_config() -> Option<HttpConfig> {
    Some(HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// The soft limit on open files of this process (`Max open files` in /proc/self/limits).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/self/limits");
    let soft = line.split_whitespace().nth(3).unwrap();
    soft.parse().unwrap_or(usize::MAX)
}

/// Sessions, connected or not, and subscriptions, as the broker reports them.
async fn sessions_and_subscriptions(http: SocketAddr) -> (u64, u64) {
    let m = scrape(http).await;
    (
        sample(&m, "sagitta_sessions{state=\"connected\"}")
            + sample(&m, "sagitta_sessions{state=\"disconnected\"}"),
        sample(&m, "sagitta_subscriptions"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_opened_and_closed_leave_no_memory_or_descriptors_behind() {
    let _serial = SERIAL.lock().await;
    const TOTAL: usize = 10_000;
    // Two descriptors per connection, and room for the rest of the process.
    let at_once = 2000.min(open_files_limit().saturating_sub(256) / 2);
    assert!(
        at_once >= 100,
        "open files limit too low: {}",
        open_files_limit()
    );
    let rounds = TOTAL.div_ceil(at_once);
    let b = broker_with(Config {
        http: http_config(),
        ..Config::default().in_memory()
    })
    .await;
    let (a, http) = (addr(&b), b.http_addr().unwrap());
    let mut baseline = None;
    for round in 0..rounds {
        // Everyone connects (from 127.0.0.2 to 127.0.0.9, 3.1.1 and 5.0, a subscription
        // each), waits until all are connected, then half say DISCONNECT and half drop the
        // socket.
        let connected = Arc::new(Barrier::new(at_once + 1));
        let leave = Arc::new(Barrier::new(at_once + 1));
        let mut set = JoinSet::new();
        for i in 0..at_once {
            let (connected, leave) = (connected.clone(), leave.clone());
            set.spawn(async move {
                let host = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
                let version = if i % 2 == 0 { V5 } else { V3_1_1 };
                let mut p = Peer::open_from(a, host, version).await;
                let connect = connect_packet(version, &format!("r{round}-{i}"));
                p.send(Packet::Connect(Box::new(connect))).await;
                match p.recv().await {
                    Packet::ConnAck(ack) => assert!(ack.reason.is_success(), "{ack:?}"),
                    other => panic!("expected CONNACK, got {other:?}"),
                }
                p.subscribe(&format!("churn/{i}"), QoS::AtLeastOnce).await;
                connected.wait().await;
                leave.wait().await;
                if i % 4 < 2 {
                    p.disconnect().await;
                } else {
                    p.drop_connection();
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(15), connected.wait())
            .await
            .unwrap_or_else(|_| panic!("round {round}: not all {at_once} connected in time"));
        assert_eq!(
            b.metrics().clients_connected.load(Ordering::Relaxed),
            at_once as u64,
            "round {round}: all connected at once"
        );
        leave.wait().await;
        tokio::time::timeout(WAIT, set.join_all())
            .await
            .expect("every connection closed");
        wait_until(WAIT, "every connection and session gone", || async {
            b.metrics().clients_connected.load(Ordering::Relaxed) == 0
                && sessions_and_subscriptions(http).await == (0, 0)
        })
        .await;
        if round == 0 {
            // After a warm-up round: the allocator's pools and the runtime's threads are
            // in place.
            baseline = Some((rss_bytes(), open_fds()));
        }
    }
    let (rss0, fds0) = baseline.unwrap();
    let (rss, fds) = (rss_bytes(), open_fds());
    let grown = rss.saturating_sub(rss0);
    assert!(
        grown < 10 << 20,
        "{} rounds of {at_once} connections grew the process by {} KiB",
        rounds - 1,
        grown >> 10
    );
    assert!(
        fds <= fds0 + 8,
        "open descriptors: {fds0} after the warm-up, {fds} now"
    );
    assert_eq!(
        b.metrics().clients_total.load(Ordering::Relaxed),
        (rounds * at_once) as u64
    );
}

/// A CONNECT resuming (or starting) a persistent session: 3.1.1 clean session 0, 5.0 an
/// expiry of five minutes.
fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_persistent_subscribers_queue_holds_its_limit_and_drops_are_reported() {
    let _serial = SERIAL.lock().await;
    const QUEUE: usize = 100;
    const N: usize = 10_000;
    let b = broker_with(Config {
        max_queued_messages: QUEUE,
        sys_interval: 1,
        http: http_config(),
        ..Config::default().in_memory()
    })
    .await;
    let (a, http) = (addr(&b), b.http_addr().unwrap());
    let sessions = [(V3_1_1, "offline3"), (V5, "offline5")];
    for (version, id) in sessions {
        let (mut s, _) = Peer::connect_with(a, persistent(version, id)).await;
        s.subscribe("offline/t", QoS::AtLeastOnce).await;
        s.disconnect().await;
    }
    wait_until(WAIT, "both sessions offline", || async {
        let m = scrape(http).await;
        sample(&m, "sagitta_sessions{state=\"disconnected\"}") == 2
            && sample(&m, "sagitta_sessions{state=\"connected\"}") == 0
    })
    .await;

    // 10 000 messages of 4 KiB at QoS 1 (40 MB), in bursts of 100.
    let rss_before = rss_bytes();
    let pad = "x".repeat(4096);
    let mut publ = Peer::connect(a, V3_1_1, "offline-pub").await;
    for burst in 0..N / 100 {
        let mut bytes = BytesMut::new();
        for k in 0..100 {
            let i = burst * 100 + k;
            let p = publish(
                "offline/t",
                &format!("{i:06}{pad}"),
                QoS::AtLeastOnce,
                false,
                k as u16 + 1,
            );
            Packet::Publish(p).encode(V3_1_1, &mut bytes).unwrap();
        }
        publ.send_raw(&bytes).await;
        for k in 0..100u16 {
            match publ.recv().await {
                Packet::PubAck(ack) => assert_eq!(ack.packet_id, pid(k + 1)),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    let grown = rss_bytes().saturating_sub(rss_before);

    // Each session kept its first QUEUE messages; every other copy was dropped and counted.
    let drops = (2 * (N - QUEUE)) as u64;
    assert_eq!(
        b.metrics().dropped_queue_full.load(Ordering::Relaxed),
        drops
    );
    let m = scrape(http).await;
    assert_eq!(
        sample(&m, "sagitta_messages_dropped_total{reason=\"queue_full\"}"),
        drops
    );
    assert_eq!(sample(&m, "sagitta_queued_messages"), 2 * QUEUE as u64);
    // 40 MB went to each session, which kept 400 KB.
    assert!(grown < 16 << 20, "the process grew by {} KiB", grown >> 10);
    // $SYS says it at its next update (every second here).
    let mut watcher = Peer::connect(a, V3_1_1, "sys-watcher").await;
    watcher
        .subscribe("$SYS/broker/publish/messages/dropped", QoS::AtMostOnce)
        .await;
    let want = drops.to_string();
    let reported = async { while watcher.recv_publish().await.payload != want.as_bytes() {} };
    tokio::time::timeout(Duration::from_secs(4), reported)
        .await
        .expect("$SYS/broker/publish/messages/dropped reports the drops");

    // Back online: the first QUEUE messages, in order, and nothing after them.
    for (version, id) in sessions {
        let (mut s, ack) = Peer::connect_with(a, persistent(version, id)).await;
        assert!(ack.session_present, "{id}");
        for i in 0..QUEUE {
            let m = s.recv_publish().await;
            assert_eq!(&m.payload[..6], format!("{i:06}").as_bytes(), "{id}");
            s.ack(&m).await;
        }
        s.expect_silence().await;
    }
}
