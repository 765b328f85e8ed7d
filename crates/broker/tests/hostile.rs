//! Hostile clients. Each attack runs against a live broker while a well-behaved client (the
//! `Bystander`: connect, subscribe, publish at QoS 1, receive, disconnect, over and over)
//! must keep being served within `BYSTANDER_BOUND`, during the attack and after it.
//!
//! Slowloris before CONNECT, a declared 256 MB packet, a CONNECT flood, a SUBSCRIBE flood,
//! deep topics, a subscriber that never reads, Receive Maximum overrun, QoS 2 packet id reuse
//! and unknown PUBRELs, invalid UTF-8, a half-closed socket and a stall in mid-packet.
//!
//! The broker runs in the test process: the tests that measure the process's memory take
//! `GATE` for writing, so that no other test of this file runs meanwhile; the others take it
//! for reading.

// Test helpers: a failed expectation aborts the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod common_load;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use common_load::*;
use sagitta_broker::metrics::Refused;
use sagitta_broker::{Config, HttpConfig};
use sagitta_proto::{
    Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, Subscribe, SubscriptionOptions, Will,
    WillProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio::task::JoinSet;

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Read by every test; written by those that measure the process's memory.
static GATE: RwLock<()> = RwLock::const_new(());

/// Remaining Length 268 435 455 (256 MB), the largest the encoding allows.
const HUGE: [u8; 4] = [0xFF, 0xFF, 0xFF, 0x7F];

fn http_config() -> Option<HttpConfig> {
    Some(HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// `packet` encoded for `version`.
fn encoded(packet: Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).unwrap();
    buf
}

/// Replaces the only occurrence of `from` in `buf` with `to` (same length): how invalid
/// bytes get into a packet the codec would refuse to encode.
fn patch(buf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = (0..=buf.len() - from.len())
        .filter(|i| &buf[*i..*i + from.len()] == from)
        .collect();
    assert_eq!(hits.len(), 1, "the pattern is in the packet once");
    let at = hits[0];
    buf[at..at + to.len()].copy_from_slice(to);
}

/// Waits for the broker to close `peer`; returns what came before and how long it took.
async fn closed(peer: &mut Peer) -> (Vec<Packet>, Duration) {
    let started = Instant::now();
    let before = peer.expect_closed().await;
    (before, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_connect_timeout() {
    let _gate = GATE.read().await;
    let b = broker_with(Config {
        connect_timeout: 2,
        ..Config::default().in_memory()
    })
    .await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "slowloris");
    // A CONNECT far longer than the 10 bytes that 1 byte per 200 ms gets through in 2 s.
    let connect = encoded(
        Packet::Connect(Box::new(connect_packet(V3_1_1, &"s".repeat(200)))),
        V3_1_1,
    )
    .freeze();
    const N: usize = 300;
    let mut set = JoinSet::new();
    for _ in 0..N {
        let bytes = connect.clone();
        set.spawn(async move {
            let stream = TcpStream::connect(a).await.unwrap();
            let opened = Instant::now();
            let (mut rd, mut wr) = stream.into_split();
            let trickle = async move {
                for byte in bytes.iter() {
                    if wr.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                std::future::pending::<()>().await;
            };
            let end = async move {
                let mut buf = [0u8; 64];
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => opened.elapsed(),
                    Ok(n) => panic!("the broker answered a partial CONNECT with {n} bytes"),
                }
            };
            tokio::time::timeout(Duration::from_secs(8), async {
                tokio::select! {
                    _ = trickle => unreachable!(),
                    t = end => t,
                }
            })
            .await
            .expect("the broker closed the trickling connection")
        });
    }
    let mut times = set.join_all().await;
    times.sort();
    // Closed at the deadline, which the trickle does not move, and not much later.
    assert!(times[0] >= Duration::from_millis(1800), "{:?}", times[0]);
    assert!(
        times[N - 1] < Duration::from_millis(4500),
        "{:?}",
        times[N - 1]
    );
    assert!(b.metrics().refused_count(Refused::Timeout) >= N as u64);
    let rounds = bystander.finish().await;
    assert!(rounds >= 2, "the well-behaved client ran during the attack");
    // Only the bystander's connections became clients (its rounds and one after).
    assert_eq!(
        b.metrics().clients_total.load(Ordering::Relaxed),
        u64::from(rounds) + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_256_mb_packet_is_refused_from_its_header_without_buffering() {
    let _gate = GATE.write().await;
    // The default connect timeout (10 s): an answer within a second did not wait for a body.
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "huge");
    let at_once = Duration::from_secs(1);

    // 5.0, before CONNECT: CONNACK 0x95 Packet too large, from the header and the protocol
    // level alone, then the connection closes.
    let mut p = Peer::open(a, V5).await;
    p.send_raw(&[&[0x10u8][..], &HUGE, b"\x00\x04MQTT\x05"].concat())
        .await;
    let (got, took) = closed(&mut p).await;
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(c)] if c.reason == ReasonCode::PacketTooLarge),
        "{got:?}"
    );
    assert!(took < at_once, "{took:?}");
    // 3.1.1 and 3.1 have no code for it: closed without an answer.
    for (version, prefix) in [
        (V3_1_1, &b"\x00\x04MQTT\x04"[..]),
        (V3_1, &b"\x00\x06MQIsdp\x03"[..]),
    ] {
        let mut p = Peer::open(a, version).await;
        p.send_raw(&[&[0x10u8][..], &HUGE, prefix].concat()).await;
        let (got, took) = closed(&mut p).await;
        assert!(got.is_empty(), "{version}: {got:?}");
        assert!(took < at_once, "{version}: {took:?}");
    }
    // After CONNECT: 5.0 DISCONNECT 0x95, 3.1.1 closed without a packet.
    for version in [V5, V3_1_1] {
        let mut p = Peer::connect(a, version, &format!("huge-{version}")).await;
        p.send_raw(&[&[0x30u8][..], &HUGE].concat()).await;
        let (got, took) = closed(&mut p).await;
        match version {
            V5 => assert!(
                matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::PacketTooLarge),
                "{got:?}"
            ),
            _ => assert!(got.is_empty(), "{got:?}"),
        }
        assert!(took < at_once, "{version}: {took:?}");
    }

    // 64 attackers at once, each streaming 4 MB of the body after the header as fast as
    // it can: had the broker taken the body in, the process would hold 256 MB more.
    let rss_before = rss_bytes();
    let mut set = JoinSet::new();
    for _ in 0..64 {
        set.spawn(async move {
            let stream = TcpStream::connect(a).await.unwrap();
            let opened = Instant::now();
            let (mut rd, mut wr) = stream.into_split();
            let header = [&[0x10u8][..], &HUGE, b"\x00\x04MQTT\x05"].concat();
            let body = async move {
                let chunk = vec![0u8; 64 * 1024];
                if wr.write_all(&header).await.is_ok() {
                    for _ in 0..64 {
                        if wr.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                }
                std::future::pending::<()>().await;
            };
            let end = async move {
                let mut buf = [0u8; 256];
                // CONNACK 0x95 may come first, or be lost to the reset that closing a
                // socket with unread bytes causes.
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                opened.elapsed()
            };
            tokio::time::timeout(WAIT, async {
                tokio::select! {
                    _ = body => unreachable!(),
                    t = end => t,
                }
            })
            .await
            .expect("the broker closed the connection")
        });
    }
    let slowest = set.join_all().await.into_iter().max().unwrap();
    assert!(slowest < 2 * at_once, "slowest close {slowest:?}");
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "the process grew by {} MiB", grown >> 20);
    bystander.finish().await;
}

/// One connection of the CONNECT flood: connects, subscribes, then leaves with DISCONNECT
/// or by dropping the socket. Returns whether it got a CONNACK; with a shared client id,
/// another connection may take the session over at any point.
async fn flood_one(a: SocketAddr, version: ProtocolVersion, id: String, polite: bool) -> bool {
    let shared = id.starts_with("shared");
    let mut p = Peer::open(a, version).await;
    p.send(Packet::Connect(Box::new(connect_packet(version, &id))))
        .await;
    match p.try_recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success, "{id}"),
        // Taken over while it waited for the session: closed before CONNACK.
        None if shared => return false,
        other => panic!("{id}: {other:?}"),
    }
    p.send(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            filter(&format!("flood/{id}")),
            SubscriptionOptions::new(QoS::AtLeastOnce),
        )],
        properties: Default::default(),
    }))
    .await;
    match p.try_recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reasons, [ReasonCode::GrantedQoS1]),
        Some(Packet::Disconnect(d)) if shared => {
            assert_eq!(d.reason, ReasonCode::SessionTakenOver);
            return true;
        }
        None if shared => return true,
        other => panic!("{id}: {other:?}"),
    }
    if polite {
        p.disconnect().await;
    } else {
        p.drop_connection();
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_leaves_no_session_or_subscription_behind() {
    let _gate = GATE.read().await;
    let b = broker_with(Config {
        http: http_config(),
        ..Config::default().in_memory()
    })
    .await;
    let (a, http) = (addr(&b), b.http_addr().unwrap());
    let bystander = Bystander::start(a, "flood");
    const N: usize = 600;
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut set = JoinSet::new();
    for i in 0..N {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let version = [V5, V3_1_1, V3_1][i % 3];
        // Half the connections share five client ids and take each other's sessions over.
        let id = if i % 4 < 2 {
            format!("shared-{}", i % 5)
        } else {
            format!("own-{i}")
        };
        set.spawn(async move {
            let _permit = permit;
            tokio::time::timeout(WAIT, flood_one(a, version, id, i % 2 == 0))
                .await
                .expect("a flood connection finished in time")
        });
    }
    let acked = set.join_all().await.into_iter().filter(|a| *a).count();
    assert!(acked >= N / 2, "only {acked} of {N} got a CONNACK");
    bystander.finish().await;
    // Every session was a clean one: once the connections are gone, so is every session and
    // subscription, whatever order the takeovers happened in.
    wait_until(WAIT, "sessions and subscriptions gone", || async {
        let m = scrape(http).await;
        sample(&m, "sagitta_sessions{state=\"connected\"}") == 0
            && sample(&m, "sagitta_sessions{state=\"disconnected\"}") == 0
            && sample(&m, "sagitta_subscriptions") == 0
    })
    .await;
    assert_eq!(b.metrics().clients_connected.load(Ordering::Relaxed), 0);
    assert!(b.metrics().clients_total.load(Ordering::Relaxed) >= acked as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_flood_is_bounded_by_max_subscriptions_per_client() {
    let _gate = GATE.read().await;
    const MAX: usize = 1000;
    let b = broker_with(Config {
        max_subscriptions_per_client: MAX,
        http: http_config(),
        ..Config::default().in_memory()
    })
    .await;
    let (a, http) = (addr(&b), b.http_addr().unwrap());
    let bystander = Bystander::start(a, "subflood");
    let subscribe = |id: u16, filters: std::ops::Range<usize>| {
        Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            filters: filters
                .map(|i| {
                    (
                        filter(&format!("flood/{i}")),
                        SubscriptionOptions::new(QoS::AtLeastOnce),
                    )
                })
                .collect(),
            properties: Default::default(),
        })
    };
    let suback = |p: Packet, id: u16| match p {
        Packet::SubAck(ack) if ack.packet_id == pid(id) => ack.reasons,
        other => panic!("expected SUBACK {id}, got {other:?}"),
    };

    // 5.0: one SUBSCRIBE with 5000 filters: the first MAX granted, the rest 0x97.
    let mut c = Peer::connect(a, V5, "flood5").await;
    c.send(subscribe(1, 0..5000)).await;
    let reasons = suback(c.recv().await, 1);
    assert_eq!(reasons.len(), 5000);
    assert!(reasons[..MAX].iter().all(|r| *r == ReasonCode::GrantedQoS1));
    assert!(
        reasons[MAX..]
            .iter()
            .all(|r| *r == ReasonCode::QuotaExceeded)
    );
    // Then 20 packets of 250 new filters each, back to back: all refused, in order.
    let mut burst = BytesMut::new();
    for k in 0..20u16 {
        let start = 5000 + usize::from(k) * 250;
        burst.extend_from_slice(&encoded(subscribe(k + 2, start..start + 250), V5));
    }
    c.send_raw(&burst).await;
    for k in 0..20 {
        let reasons = suback(c.recv().await, k + 2);
        assert_eq!(reasons.len(), 250);
        assert!(reasons.iter().all(|r| *r == ReasonCode::QuotaExceeded));
    }
    // Replacing a subscription it has is no new subscription; what was granted works.
    let opts = SubscriptionOptions::new(QoS::AtMostOnce);
    assert_eq!(
        c.subscribe_opts("flood/0", opts, 30).await,
        [ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(
        c.publish_reason("flood/999", "in", QoS::AtLeastOnce, 31)
            .await,
        ReasonCode::Success
    );
    assert_eq!(&c.recv_publish().await.payload[..], b"in");
    assert_eq!(
        c.publish_reason("flood/1000", "out", QoS::AtLeastOnce, 32)
            .await,
        ReasonCode::NoMatchingSubscribers
    );

    // 3.1.1: the same bound, refused with 0x80 Failure.
    let mut c3 = Peer::connect(a, V3_1_1, "flood3").await;
    c3.send(subscribe(1, 0..1500)).await;
    let reasons = suback(c3.recv().await, 1);
    assert!(reasons[..MAX].iter().all(|r| *r == ReasonCode::GrantedQoS1));
    assert!(
        reasons[MAX..]
            .iter()
            .all(|r| *r == ReasonCode::UnspecifiedError)
    );
    assert_eq!(reasons.len(), 1500);

    bystander.finish().await;
    wait_until(WAIT, "the router holds MAX per client", || async {
        sample(&scrape(http).await, "sagitta_subscriptions") == 2 * MAX as u64
    })
    .await;
}

#[tokio::test]
async fn topic_levels_at_the_default_limit_are_accepted_and_past_it_refused() {
    let _gate = GATE.read().await;
    // The default max_topic_levels: 128.
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "deep");
    let levels = |n: usize| vec!["l"; n].join("/");
    let opts = SubscriptionOptions::new(QoS::AtLeastOnce);

    let mut c = Peer::connect(a, V5, "deep5").await;
    // 128 levels (the last one `#`) accepted, 129 refused with 0x8F.
    let at_limit = format!("{}/#", levels(127));
    assert_eq!(
        c.subscribe_opts(&at_limit, opts, 1).await,
        [ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        c.subscribe_opts(&format!("{}/#", levels(128)), opts, 2)
            .await,
        [ReasonCode::TopicFilterInvalid]
    );
    // A topic name of 128 levels is delivered; 129 levels get PUBACK 0x90 and go nowhere.
    assert_eq!(
        c.publish_reason(&levels(128), "128", QoS::AtLeastOnce, 3)
            .await,
        ReasonCode::Success
    );
    let m = c.recv_publish().await;
    assert_eq!(&m.payload[..], b"128");
    c.ack(&m).await;
    assert_eq!(
        c.publish_reason(&levels(129), "129", QoS::AtLeastOnce, 4)
            .await,
        ReasonCode::TopicNameInvalid
    );
    // The longest topic and filter a packet can carry: 32 768 empty levels, 32 768 `+`.
    let slashes = "/".repeat(32_767);
    assert_eq!(
        c.publish_reason(&slashes, "empty levels", QoS::AtLeastOnce, 5)
            .await,
        ReasonCode::TopicNameInvalid
    );
    let pluses = vec!["+"; 32_768].join("/");
    assert_eq!(
        c.subscribe_opts(&pluses, opts, 6).await,
        [ReasonCode::TopicFilterInvalid]
    );
    c.ping().await;

    // 3.1.1: the filter gets 0x80; the PUBLISH is acknowledged (3.1.1 has no refusal) but
    // not delivered.
    let mut c3 = Peer::connect(a, V3_1_1, "deep3").await;
    assert_eq!(
        c3.subscribe_opts(&format!("{}/#", levels(128)), opts, 1)
            .await,
        [ReasonCode::UnspecifiedError]
    );
    c3.subscribe(&at_limit, QoS::AtLeastOnce).await;
    c3.publish(&levels(129), "129", QoS::AtLeastOnce, false)
        .await;
    c3.publish(&levels(128), "128", QoS::AtLeastOnce, false)
        .await;
    for peer in [&mut c, &mut c3] {
        let m = peer.recv_publish().await;
        assert_eq!(&m.payload[..], b"128");
        peer.ack(&m).await;
        peer.expect_silence().await;
    }
    bystander.finish().await;
}

/// Sends `rounds` rounds of `ROUND` QoS 1 messages of `payload` (the publisher reads its
/// PUBACKs) and has `fast` read each round before the next; checks that `fast` gets every
/// message, in order. Returns the time.
async fn pump(publ: &mut Peer, fast: &mut Peer, rounds: usize, payload: &Bytes) -> Duration {
    const ROUND: usize = 100;
    let started = Instant::now();
    for r in 0..rounds {
        let mut bytes = BytesMut::new();
        for i in 0..ROUND {
            let mut p = publish("firehose", "", QoS::AtLeastOnce, false, i as u16 + 1);
            let mut body = format!("{r:04}{i:04}").into_bytes();
            body.extend_from_slice(payload);
            p.payload = body.into();
            bytes.extend_from_slice(&encoded(Packet::Publish(p), V3_1_1));
        }
        publ.send_raw(&bytes).await;
        for i in 0..ROUND {
            match publ.recv().await {
                Packet::PubAck(a) => assert_eq!(a.packet_id, pid(i as u16 + 1)),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        for i in 0..ROUND {
            let m = fast.recv_publish().await;
            assert_eq!(&m.payload[..8], format!("{r:04}{i:04}").as_bytes());
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_and_does_not_slow_the_others() {
    let _gate = GATE.write().await;
    const QUEUE: usize = 200;
    const WINDOW: u16 = 10;
    let b = broker_with(Config {
        max_queued_messages: QUEUE,
        http: http_config(),
        ..Config::default().in_memory()
    })
    .await;
    let (a, http) = (addr(&b), b.http_addr().unwrap());
    let payload = Bytes::from(vec![b'x'; 8 * 1024]);
    let mut fast = Peer::connect(a, V3_1_1, "fast").await;
    fast.subscribe("firehose", QoS::AtMostOnce).await;
    let mut publ = Peer::connect(a, V3_1_1, "pub").await;
    // The fast subscriber alone, first (this also warms up the allocator).
    const BASE_ROUNDS: usize = 20;
    let alone = pump(&mut publ, &mut fast, BASE_ROUNDS, &payload).await;

    // Two subscribers that never read again: at QoS 0, and at QoS 1 with a Receive Maximum
    // of WINDOW (it never acknowledges either).
    let mut stuck0 = Peer::connect(a, V3_1_1, "stuck0").await;
    stuck0.subscribe("firehose", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "stuck1");
    c.properties.receive_maximum = NonZeroU16::new(WINDOW);
    let (mut stuck1, _) = Peer::connect_with(a, c).await;
    stuck1.subscribe("firehose", QoS::AtLeastOnce).await;

    let dropped_before = b.metrics().dropped_queue_full.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let bystander = Bystander::start(a, "neverreads");
    // 4000 messages of 8 KiB: 32 MB for each stuck subscriber.
    const ROUNDS: usize = 40;
    let with_stuck = pump(&mut publ, &mut fast, ROUNDS, &payload).await;
    bystander.finish().await;
    let grown = rss_bytes().saturating_sub(rss_before);

    // The fast subscriber got everything (pump checked), about as fast as alone.
    let per_round = |t: Duration, rounds: usize| t / rounds as u32;
    let (alone, with_stuck) = (per_round(alone, BASE_ROUNDS), per_round(with_stuck, ROUNDS));
    assert!(
        with_stuck < 4 * alone + Duration::from_millis(10),
        "a round took {with_stuck:?} with the stuck subscribers, {alone:?} without"
    );
    // The stuck ones hold their queue and window, no more; the rest was dropped and counted.
    let n = (ROUNDS * 100) as u64;
    let m = scrape(http).await;
    assert_eq!(sample(&m, "sagitta_queued_messages"), 2 * QUEUE as u64);
    assert_eq!(sample(&m, "sagitta_inflight_messages"), u64::from(WINDOW));
    let dropped = b.metrics().dropped_queue_full.load(Ordering::Relaxed) - dropped_before;
    // stuck1: everything past its window and queue; stuck0: what its socket did not take.
    let stuck1_drops = n - u64::from(WINDOW) - QUEUE as u64;
    assert!(
        dropped > stuck1_drops && dropped <= stuck1_drops + n - QUEUE as u64,
        "{dropped} dropped"
    );
    assert_eq!(
        sample(&m, "sagitta_messages_dropped_total{reason=\"queue_full\"}"),
        b.metrics().dropped_queue_full.load(Ordering::Relaxed)
    );
    // 32 MB went to each stuck subscriber: the process kept only their bounded share.
    assert!(grown < 16 << 20, "the process grew by {} MiB", grown >> 20);
    // The stuck clients are still connected and get their window when they read.
    for _ in 0..WINDOW {
        let m = stuck1.recv_publish().await;
        assert_eq!(m.qos, QoS::AtLeastOnce);
    }
    stuck0.recv_publish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_past_receive_maximum_closes_the_connection() {
    let _gate = GATE.read().await;
    const RM: u16 = 10;
    let b = broker_with(Config {
        receive_maximum: RM,
        ..Config::default().in_memory()
    })
    .await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "greedy");
    let mut sub = Peer::connect(a, V3_1_1, "rm-sub").await;
    sub.subscribe("rm/#", QoS::AtMostOnce).await;
    let flood = |t: &str, qos: QoS, n: u16, version: ProtocolVersion| {
        let mut bytes = BytesMut::new();
        for id in 1..=n {
            let p = publish(t, &id.to_string(), qos, false, id);
            bytes.extend_from_slice(&encoded(Packet::Publish(p), version));
        }
        bytes
    };

    for version in [V5, V3_1_1] {
        // 50 QoS 2 publishes in one write, never released: RM get PUBREC and are forwarded,
        // the next one ends the connection (5.0: DISCONNECT 0x93) and is not forwarded.
        let t = format!("rm/{version}");
        let mut greedy = Peer::connect(a, version, &format!("greedy-{version}")).await;
        greedy
            .send_raw(&flood(&t, QoS::ExactlyOnce, 50, version))
            .await;
        let (got, _) = closed(&mut greedy).await;
        let (recs, rest) = got.split_at(usize::from(RM).min(got.len()));
        for (i, p) in recs.iter().enumerate() {
            assert!(
                matches!(p, Packet::PubRec(r) if r.packet_id == pid(i as u16 + 1) && r.reason.is_success()),
                "{version}: {p:?}"
            );
        }
        match version {
            V5 => assert!(
                matches!(rest, [Packet::Disconnect(d)] if d.reason == ReasonCode::ReceiveMaximumExceeded),
                "{rest:?}"
            ),
            _ => assert!(rest.is_empty(), "{rest:?}"),
        }
        for i in 1..=RM {
            assert_eq!(sub.recv_publish().await.payload, i.to_string().as_bytes());
        }
        sub.expect_silence().await;
    }

    // QoS 1 is acknowledged as it arrives, so a client never has more than Receive Maximum
    // unacknowledged however fast it sends: 2000 at once all get PUBACK.
    let mut fast = Peer::connect(a, V5, "fast-qos1").await;
    fast.send_raw(&flood("unrouted", QoS::AtLeastOnce, 2000, V5))
        .await;
    for id in 1..=2000 {
        match fast.recv().await {
            Packet::PubAck(r) => assert_eq!(r.packet_id, pid(id)),
            other => panic!("{other:?}"),
        }
    }
    // The window is of unreleased QoS 2 ids: a PUBREL makes room for one more.
    fast.send_raw(&flood("unrouted", QoS::ExactlyOnce, RM, V5))
        .await;
    for _ in 0..RM {
        assert!(matches!(fast.recv().await, Packet::PubRec(_)));
    }
    fast.send(Packet::PubRel(PubResponse::new(pid(1)))).await;
    assert!(matches!(fast.recv().await, Packet::PubComp(c) if c.reason == ReasonCode::Success));
    assert_eq!(
        fast.publish_reason("unrouted", "one more", QoS::ExactlyOnce, 1)
            .await,
        ReasonCode::NoMatchingSubscribers
    );
    fast.ping().await;
    bystander.finish().await;
}

#[tokio::test]
async fn a_reused_qos2_packet_id_is_acknowledged_but_not_delivered_until_pubrel() {
    let _gate = GATE.read().await;
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "reuse");
    for version in [V5, V3_1_1] {
        let t = format!("reuse/{version}");
        let mut sub = Peer::connect(a, V3_1_1, &format!("reuse-sub-{version}")).await;
        sub.subscribe(&t, QoS::AtMostOnce).await;
        let mut p = Peer::connect(a, version, &format!("reuse-{version}")).await;
        let pubrec = |got: Packet| {
            assert!(
                matches!(&got, Packet::PubRec(r) if r.packet_id == pid(7) && r.reason == ReasonCode::Success),
                "{version}: {got:?}"
            )
        };
        let pubcomp = |got: Packet, reason: ReasonCode| {
            assert!(
                matches!(&got, Packet::PubComp(c) if c.packet_id == pid(7) && c.reason == reason),
                "{version}: {got:?}"
            )
        };
        p.send(Packet::Publish(publish(
            &t,
            "first",
            QoS::ExactlyOnce,
            false,
            7,
        )))
        .await;
        pubrec(p.recv().await);
        assert_eq!(&sub.recv_publish().await.payload[..], b"first");
        // The same id before PUBREL, without DUP and with another payload. The client breaks
        // [MQTT-2.2.1-3] (an id in use), but the receiver cannot tell it from a re-send:
        // PUBREC again and nothing delivered [MQTT-4.3.3-10].
        p.send(Packet::Publish(publish(
            &t,
            "second",
            QoS::ExactlyOnce,
            false,
            7,
        )))
        .await;
        pubrec(p.recv().await);
        sub.expect_silence().await;
        p.send(Packet::PubRel(PubResponse::new(pid(7)))).await;
        pubcomp(p.recv().await, ReasonCode::Success);
        // A second PUBREL for it: PUBCOMP 0x92 Packet Identifier not found (5.0); 3.1.1
        // answers every PUBREL with a plain PUBCOMP [MQTT-4.3.3-11].
        p.send(Packet::PubRel(PubResponse::new(pid(7)))).await;
        let unknown = match version {
            V5 => ReasonCode::PacketIdentifierNotFound,
            _ => ReasonCode::Success,
        };
        pubcomp(p.recv().await, unknown);
        // After PUBCOMP the id names a new message [MQTT-4.3.3-12].
        p.send(Packet::Publish(publish(
            &t,
            "third",
            QoS::ExactlyOnce,
            false,
            7,
        )))
        .await;
        pubrec(p.recv().await);
        assert_eq!(&sub.recv_publish().await.payload[..], b"third");
        p.send(Packet::PubRel(PubResponse::new(pid(7)))).await;
        pubcomp(p.recv().await, ReasonCode::Success);
        // PUBREL for ids never used, many at once: answered, the connection stays.
        let mut rels = BytesMut::new();
        for id in 100..200 {
            rels.extend_from_slice(&encoded(Packet::PubRel(PubResponse::new(pid(id))), version));
        }
        p.send_raw(&rels).await;
        for id in 100..200 {
            match p.recv().await {
                Packet::PubComp(c) => {
                    assert_eq!(c.packet_id, pid(id));
                    assert_eq!(c.reason, unknown);
                }
                other => panic!("{other:?}"),
            }
        }
        p.ping().await;
    }
    bystander.finish().await;
}

#[tokio::test]
async fn invalid_utf8_is_a_malformed_packet() {
    let _gate = GATE.read().await;
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "utf8");
    let mut sub = Peer::connect(a, V3_1_1, "utf8-sub").await;
    sub.subscribe("utf8/#", QoS::AtMostOnce).await;
    // Ill-formed UTF-8 and U+0000 make a packet malformed [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    let bad: [(&str, &[u8]); 4] = [
        ("~~", b"\xC3\x28"),      // a broken two-byte sequence
        ("~~~", b"\xED\xA0\x80"), // an encoded surrogate, U+D800
        ("~~", b"\xC0\xAF"),      // an overlong '/'
        ("~", b"\x00"),           // U+0000
    ];
    // Each packet is patched after encoding: `marker`, after a one-byte prefix that makes it
    // unique in the packet, becomes the bad bytes.
    let topic_publish = |version, marker: &str| {
        let p = publish(&format!("utf8/{marker}"), "p", QoS::AtLeastOnce, false, 1);
        encoded(Packet::Publish(p), version)
    };
    let property_publish = |marker: &str, in_key: bool| {
        let mut p = publish("utf8/ok", "p", QoS::AtLeastOnce, false, 1);
        let (k, v) = if in_key {
            (format!("k{marker}"), "v".to_owned())
        } else {
            ("k".to_owned(), format!("v{marker}"))
        };
        p.properties.user_properties.push((mstr(&k), mstr(&v)));
        encoded(Packet::Publish(p), V5)
    };
    let subscribe = |version, marker: &str| {
        encoded(
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                filters: vec![(
                    filter(&format!("utf8/{marker}/#")),
                    SubscriptionOptions::new(QoS::AtMostOnce),
                )],
                properties: Default::default(),
            }),
            version,
        )
    };
    for (marker, bytes) in bad {
        let cases = [
            (V5, topic_publish(V5, marker), "/"),
            (V5, property_publish(marker, false), "v"),
            (V5, property_publish(marker, true), "k"),
            (V5, subscribe(V5, marker), "/"),
            (V3_1_1, topic_publish(V3_1_1, marker), "/"),
            (V3_1_1, subscribe(V3_1_1, marker), "/"),
        ];
        for (i, (version, mut packet, prefix)) in cases.into_iter().enumerate() {
            let (from, to) = (
                format!("{prefix}{marker}"),
                [prefix.as_bytes(), bytes].concat(),
            );
            patch(&mut packet, from.as_bytes(), &to);
            let mut p = Peer::connect(a, version, &format!("utf8-{i}")).await;
            p.send_raw(&packet).await;
            let (got, _) = closed(&mut p).await;
            match version {
                // 5.0: DISCONNECT 0x81 Malformed Packet, then close.
                V5 => assert!(
                    matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
                    "case {i} {bytes:x?}: {got:?}"
                ),
                // 3.1.1: closed without a word [MQTT-1.5.3-1].
                _ => assert!(got.is_empty(), "case {i} {bytes:x?}: {got:?}"),
            }
        }
        // In CONNECT (client id, and a 5.0 user property): 5.0 gets CONNACK 0x81 [MQTT-4.13.1-1],
        // 3.1.1 is closed without one.
        let mut connects = Vec::new();
        for version in [V5, V3_1_1] {
            let c = connect_packet(version, &format!("id{marker}"));
            let mut packet = encoded(Packet::Connect(Box::new(c)), version);
            patch(
                &mut packet,
                format!("id{marker}").as_bytes(),
                &[&b"id"[..], bytes].concat(),
            );
            connects.push((version, packet));
        }
        let mut c = connect_packet(V5, "props");
        c.properties
            .user_properties
            .push((mstr("k"), mstr(&format!("v{marker}"))));
        let mut packet = encoded(Packet::Connect(Box::new(c)), V5);
        patch(
            &mut packet,
            format!("v{marker}").as_bytes(),
            &[&b"v"[..], bytes].concat(),
        );
        connects.push((V5, packet));
        for (version, packet) in connects {
            let mut p = Peer::open(a, version).await;
            p.send_raw(&packet).await;
            let (got, _) = closed(&mut p).await;
            match version {
                V5 => assert!(
                    matches!(got.as_slice(), [Packet::ConnAck(c)] if c.reason == ReasonCode::MalformedPacket),
                    "CONNECT {bytes:x?}: {got:?}"
                ),
                _ => assert!(got.is_empty(), "CONNECT {bytes:x?}: {got:?}"),
            }
        }
    }
    sub.expect_silence().await;
    bystander.finish().await;
}

#[tokio::test]
async fn a_half_closed_client_is_disconnected_and_its_will_published() {
    // TCP lets a client shut down only its sending side (FIN) and keep reading. MQTT needs
    // both directions (section 4.2): a client that can no longer send cannot acknowledge,
    // ping or DISCONNECT. The broker takes the end of the client's stream as the client
    // closing the Network Connection without DISCONNECT: it publishes the will
    // [MQTT-3.1.2-8], closes its side too, and keeps the session (a network close is not
    // the end of a session with an expiry interval).
    let _gate = GATE.read().await;
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "halfclosed");
    let mut watcher = Peer::connect(a, V3_1_1, "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let half_closed = |clean_start: bool| {
        let mut c = connect_packet(V5, "half");
        c.clean_start = clean_start;
        c.properties.session_expiry_interval = Some(60);
        c.will = Some(Will {
            topic: topic("will/half"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        c
    };
    let (mut c, _) = Peer::connect_with(a, half_closed(true)).await;
    c.subscribe("half/inbox", QoS::AtLeastOnce).await;
    c.shutdown_write().await;
    let will = watcher.recv_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/half", &b"gone"[..])
    );
    watcher.ack(&will).await;
    // The broker closed its side without a DISCONNECT (nothing went wrong in the protocol).
    let (got, _) = closed(&mut c).await;
    assert!(got.is_empty(), "{got:?}");
    // Messages for the session wait for its next connection.
    let mut publ = Peer::connect(a, V3_1_1, "half-pub").await;
    publ.publish("half/inbox", "later", QoS::AtLeastOnce, false)
        .await;
    let (mut back, ack) = Peer::connect_with(a, half_closed(false)).await;
    assert!(ack.session_present);
    let m = back.recv_publish().await;
    assert_eq!(&m.payload[..], b"later");
    back.ack(&m).await;
    back.disconnect().await;
    watcher.expect_silence().await;
    bystander.finish().await;
}

#[tokio::test]
async fn a_client_stalled_in_mid_packet_is_closed_by_keep_alive() {
    let _gate = GATE.read().await;
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let bystander = Bystander::start(a, "stall");
    for version in [V5, V3_1_1] {
        let mut c = connect_packet(version, &format!("stall-{version}"));
        c.keep_alive = 1;
        let (mut p, _) = Peer::connect_with(a, c).await;
        // The first bytes of a 16-byte PUBLISH, and then nothing.
        p.send_raw(&[0x30, 0x10, 0x00, 0x05, b's']).await;
        let (got, took) = closed(&mut p).await;
        match version {
            V5 => assert!(
                matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
                "{got:?}"
            ),
            _ => assert!(got.is_empty(), "{got:?}"),
        }
        // 1.5 x the keep-alive [MQTT-3.1.2-22].
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    bystander.finish().await;
}

#[tokio::test]
async fn a_packet_trickled_a_byte_at_a_time_does_not_keep_the_connection_alive() {
    // Keep-alive counts control packets, not bytes [MQTT-3.1.2-22]: a client that sends
    // one byte of a PUBLISH now and then must not hold a connection open forever.
    let _gate = GATE.read().await;
    let b = broker_with(Config::default().in_memory()).await;
    let a = addr(&b);
    let mut c = connect_packet(V3_1_1, "trickle");
    c.keep_alive = 1;
    let (mut p, _) = Peer::connect_with(a, c).await;
    let started = Instant::now();
    // A 50-byte PUBLISH at one byte per 250 ms would take 12.5 s to arrive.
    let mut publish = vec![0x30, 48, 0x00, 0x05];
    publish.extend_from_slice(b"tricklepayload-tricklepayload-tricklepayload-");
    let trickle = async {
        for byte in &publish {
            if p.try_send_raw(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    trickle.await;
    let took = started.elapsed();
    let got = p.expect_closed().await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "closed after {took:?}: each byte must not count as a packet"
    );
}
