//! Soak load for a broker (driven by `bench/soak.sh`, which starts our broker and samples its
//! memory): publishers at QoS 0, 1 and 2 and subscribers with persistent sessions, MQTT 5.0
//! and 3.1.1, for a given time, while connections of random clients are killed; then checks
//! that every acknowledged QoS 1 message reached every subscriber at least once and every
//! QoS 2 message exactly once.
//!
//! ```sh
//! cargo run --release -p sagitta-client --example soak -- HOST:PORT SECONDS \
//!     [--publishers N] [--subscribers N] [--rate MSG_PER_S_PER_PUBLISHER] [--kill-every MS]
//! ```
//!
//! Each client reaches the broker through its own small TCP relay in this process; killing a
//! client cuts its relay's connections at once (no DISCONNECT: for the broker, the same as a
//! client that died or lost its network). The client then reconnects by itself, resumes its
//! session and sends again what was not acknowledged (DUP), which is what the broker must get
//! right: QoS 2 de-duplication across reconnects, queued messages of offline subscribers,
//! in-flight messages sent again.
//!
//! Publisher `i` publishes at QoS `i % 3` on `soak/q<qos>/p<i>` payloads `p<i>:<seq>`, seq from
//! 1, paced at `--rate`. Every subscriber subscribes to `soak/#` at QoS 2 (so each message
//! arrives at its publish QoS) with a persistent session. Exit code 0 if nothing was lost or
//! duplicated, 1 otherwise; the summary is printed either way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sagitta_client::{Client, ProtocolVersion, QoS, ReconnectPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP relay in front of the broker for one client, whose connections can be cut.
struct Relay {
    addr: String,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn start(broker: String) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let conns = live.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let broker = broker.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&broker).await {
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Ok(Relay { addr, live })
    }

    /// Cuts every connection through the relay at once (both sockets are dropped).
    fn kill(&self) {
        for h in self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

struct Args {
    broker: String,
    seconds: u64,
    publishers: usize,
    subscribers: usize,
    rate: u64,
    kill_every: Duration,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: soak HOST:PORT SECONDS [--publishers N] [--subscribers N] [--rate N] [--kill-every MS]";
    let broker = it.next().ok_or(usage)?;
    let seconds = it.next().and_then(|s| s.parse().ok()).ok_or(usage)?;
    let mut a = Args {
        broker,
        seconds,
        publishers: 6,
        subscribers: 4,
        rate: 200,
        kill_every: Duration::from_millis(1500),
    };
    while let Some(flag) = it.next() {
        let v: u64 = it.next().and_then(|s| s.parse().ok()).ok_or(usage)?;
        match flag.as_str() {
            "--publishers" => a.publishers = v as usize,
            "--subscribers" => a.subscribers = v as usize,
            "--rate" => a.rate = v.max(1),
            "--kill-every" => a.kill_every = Duration::from_millis(v.max(10)),
            _ => return Err(usage.to_owned()),
        }
    }
    Ok(a)
}

/// What one publisher did: the highest seq sent, and which QoS 1/2 seqs were acknowledged.
struct PubStats {
    qos: QoS,
    sent: AtomicU64,
    acked: Mutex<Vec<u64>>,
    failed: AtomicU64,
}

/// What one subscriber got: per publisher, per seq, how many times.
type Received = Mutex<HashMap<(usize, u64), u32>>;

fn builder(addr: &str, id: String, v5: bool) -> sagitta_client::ClientBuilder {
    Client::builder(addr)
        .client_id(id)
        .protocol(if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        })
        .clean_start(false)
        .session_expiry(Duration::from_secs(3600))
        .keep_alive(Duration::from_secs(10))
        .reconnect(ReconnectPolicy::exponential(
            Duration::from_millis(20),
            Duration::from_millis(500),
        ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut relays = Vec::new();

    // Subscribers first, so that they get every message.
    let mut subs = Vec::new();
    let mut received = Vec::new();
    for i in 0..a.subscribers {
        let relay = Relay::start(a.broker.clone()).await?;
        let client = builder(&relay.addr, format!("soak-sub-{i}"), i % 2 == 0)
            .message_capacity(100_000)
            .connect()
            .await?;
        client.subscribe_recv("soak/#", QoS::ExactlyOnce).await?;
        let got: Arc<Received> = Arc::default();
        let (c, g) = (client.clone(), got.clone());
        tokio::spawn(async move {
            while let Some(m) = c.recv().await {
                let key = m.payload_str().and_then(|p| {
                    let (p, seq) = p.trim_start_matches('p').split_once(':')?;
                    Some((p.parse::<usize>().ok()?, seq.parse::<u64>().ok()?))
                });
                if let Some(key) = key {
                    *g.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key)
                        .or_default() += 1;
                }
            }
        });
        subs.push(client);
        received.push(got);
        relays.push(relay);
    }

    let mut pubs = Vec::new();
    let mut pub_tasks = Vec::new();
    for i in 0..a.publishers {
        let relay = Relay::start(a.broker.clone()).await?;
        let qos = QoS::from_u8((i % 3) as u8).unwrap_or(QoS::AtMostOnce);
        let client = builder(&relay.addr, format!("soak-pub-{i}"), i % 2 == 1)
            .connect()
            .await?;
        let stats = Arc::new(PubStats {
            qos,
            sent: AtomicU64::new(0),
            acked: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
        });
        let (st, stop2, rate) = (stats.clone(), stop.clone(), a.rate);
        pub_tasks.push(tokio::spawn(async move {
            let topic = format!("soak/q{}/p{i}", qos as u8);
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut pending = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                st.sent.store(seq, Ordering::Relaxed);
                let payload = format!("p{i}:{seq}");
                match client.start_publish(topic.as_str(), payload, qos).await {
                    Ok(p) if qos != QoS::AtMostOnce => pending.push((seq, p)),
                    Ok(_) => {}
                    Err(_) => {
                        st.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Collect the acknowledgements, keeping at most 50 messages in flight.
                while pending.len() > 50 {
                    let (s, p) = pending.remove(0);
                    match p.await {
                        Ok(()) => st.acked.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                        Err(_) => {
                            st.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            for (s, p) in pending {
                match tokio::time::timeout(Duration::from_secs(30), p).await {
                    Ok(Ok(())) => st.acked.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                    _ => {
                        st.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = client.disconnect().await;
        }));
        pubs.push(stats);
        relays.push(relay);
    }

    // The killer: a random client's connection every `kill_every`.
    let relays = Arc::new(relays);
    let kills = Arc::new(AtomicU64::new(0));
    let (r2, k2, stop2, every) = (relays.clone(), kills.clone(), stop.clone(), a.kill_every);
    let killer = tokio::spawn(async move {
        while !stop2.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            let i = rand::random_range(0..r2.len());
            r2[i].kill();
            k2.fetch_add(1, Ordering::Relaxed);
        }
    });

    let deadline = start + Duration::from_secs(a.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline - Instant::now())).await;
        let sent: u64 = pubs.iter().map(|p| p.sent.load(Ordering::Relaxed)).sum();
        let got: usize = received
            .iter()
            .map(|r| {
                r.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|n| *n as usize)
                    .sum::<usize>()
            })
            .sum();
        println!(
            "soak: {:>4}s  published {sent}  delivered {got}  kills {}",
            start.elapsed().as_secs(),
            kills.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = killer.await;
    for t in pub_tasks {
        let _ = t.await;
    }

    // Wait until every subscriber has every acknowledged message (or 60 s).
    let expected: Vec<(usize, Vec<u64>)> = pubs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.qos != QoS::AtMostOnce)
        .map(|(i, p)| (i, p.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()))
        .collect();
    let missing = |r: &Received| -> usize {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        expected
            .iter()
            .map(|(i, seqs)| seqs.iter().filter(|s| !r.contains_key(&(*i, **s))).count())
            .sum()
    };
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(60) && received.iter().any(|r| missing(r) > 0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The verdict.
    let mut ok = true;
    println!(
        "\nsoak summary after {:.0?} (kills: {})",
        start.elapsed(),
        kills.load(Ordering::Relaxed)
    );
    for (i, p) in pubs.iter().enumerate() {
        let acked = p.acked.lock().unwrap_or_else(|e| e.into_inner()).len();
        println!(
            "  publisher {i}: QoS {} sent {} acknowledged {} failed {}",
            p.qos as u8,
            p.sent.load(Ordering::Relaxed),
            if p.qos == QoS::AtMostOnce {
                "-".to_owned()
            } else {
                acked.to_string()
            },
            p.failed.load(Ordering::Relaxed)
        );
        if p.failed.load(Ordering::Relaxed) > 0 {
            ok = false;
        }
    }
    let acked: Vec<std::collections::HashSet<u64>> = pubs
        .iter()
        .map(|p| {
            p.acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect()
        })
        .collect();
    for (s, r) in received.iter().enumerate() {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        let (mut lost, mut dup2, mut dup1, mut q0, mut q0_sent) = (0, 0, 0, 0, 0u64);
        for (i, p) in pubs.iter().enumerate() {
            match p.qos {
                QoS::AtMostOnce => {
                    q0_sent += p.sent.load(Ordering::Relaxed);
                    q0 += r.iter().filter(|((pi, _), _)| *pi == i).count();
                }
                qos => {
                    for s in &acked[i] {
                        match r.get(&(i, *s)).copied().unwrap_or(0) {
                            0 => lost += 1,
                            1 => {}
                            n if qos == QoS::ExactlyOnce => dup2 += n - 1,
                            n => dup1 += n - 1,
                        }
                    }
                    // Messages not acknowledged to the publisher may arrive, but QoS 2 ones once.
                    if qos == QoS::ExactlyOnce {
                        dup2 += r
                            .iter()
                            .filter(|((pi, _), n)| *pi == i && **n > 1)
                            .filter(|((_, seq), _)| !acked[i].contains(seq))
                            .map(|(_, n)| n - 1)
                            .sum::<u32>();
                    }
                }
            }
        }
        println!(
            "  subscriber {s} ({}): QoS 1/2 lost {lost}, QoS 2 duplicates {dup2}, QoS 1 duplicates {dup1} (allowed), QoS 0 {q0}/{q0_sent}",
            if s % 2 == 0 { "5.0" } else { "3.1.1" }
        );
        if lost > 0 || dup2 > 0 {
            ok = false;
        }
    }
    for c in &subs {
        let _ = c.disconnect().await;
    }
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}
