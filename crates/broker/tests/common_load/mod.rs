//! Helpers for tests under load (hostile clients, resources): the memory and open files of
//! this process (the broker runs in it), a Prometheus scrape of the broker's HTTP listener,
//! and the [`Bystander`], a well-behaved client that must keep being served during an attack.

// Test helpers: a failed expectation must abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sagitta_proto::{ProtocolVersion, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::common::{Peer, WAIT};

/// The longest a well-behaved client may take for a whole round (connect, subscribe,
/// publish at QoS 1, receive its message, disconnect) while the broker is under attack.
pub const BYSTANDER_BOUND: Duration = Duration::from_secs(3);

/// Resident memory of this process, in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// File descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// `GET /metrics` from the broker's HTTP listener: the samples by series (`name{labels}`).
pub async fn scrape(http: SocketAddr) -> HashMap<String, f64> {
    let text = tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    })
    .await
    .expect("metrics in time");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// One sample of a scrape (0 if absent).
pub fn sample(samples: &HashMap<String, f64>, series: &str) -> u64 {
    samples.get(series).copied().unwrap_or(0.0) as u64
}

/// Polls `cond` every 20 ms until it holds; fails after `bound` with `what`.
pub async fn wait_until<F, Fut>(bound: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One round of a well-behaved 5.0 client with its own id: connect, subscribe to its own
/// topic, publish to it at QoS 1 and receive the message back, disconnect. Fails unless it
/// all takes less than [`BYSTANDER_BOUND`]; returns how long it took.
pub async fn good_round(addr: SocketAddr, id: &str) -> Duration {
    let started = Instant::now();
    let round = async {
        let mut c = Peer::connect(addr, ProtocolVersion::V5, id).await;
        let topic = format!("bystander/{id}");
        c.subscribe(&topic, QoS::AtLeastOnce).await;
        c.publish(&topic, id, QoS::AtLeastOnce, false).await;
        let m = c.recv_publish().await;
        assert_eq!(&m.payload[..], id.as_bytes());
        c.ack(&m).await;
        c.disconnect().await;
    };
    if tokio::time::timeout(BYSTANDER_BOUND, round).await.is_err() {
        panic!("the well-behaved client {id} was not served within {BYSTANDER_BOUND:?}");
    }
    started.elapsed()
}

/// A well-behaved client that runs [`good_round`]s back to back (50 ms apart) while a test
/// attacks the broker, then once more after the attack.
pub struct Bystander {
    addr: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u32, Duration)>,
}

impl Bystander {
    pub fn start(addr: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, prefix) = (stop.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let (mut rounds, mut worst) = (0u32, Duration::ZERO);
            while !flag.load(Ordering::Relaxed) {
                worst = worst.max(good_round(addr, &format!("{prefix}-{rounds}")).await);
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (rounds, worst)
        });
        Bystander {
            addr,
            name: name.to_owned(),
            stop,
            task,
        }
    }

    /// Stops the rounds, checks that every one was served in time, runs one more now (after
    /// the attack) and returns how many rounds ran during it.
    pub async fn finish(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let (rounds, worst) = tokio::time::timeout(2 * BYSTANDER_BOUND, self.task)
            .await
            .expect("the bystander's last round ends")
            .expect("every round of the well-behaved client was served in time");
        assert!(worst < BYSTANDER_BOUND, "slowest round {worst:?}");
        good_round(self.addr, &format!("{}-after", self.name)).await;
        rounds
    }
}
