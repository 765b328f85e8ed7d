//! Run-wide counters updated by every task (once per batch, not per message) and the live
//! progress line printed once per second.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Most error messages kept for the summary.
const MAX_ERROR_MESSAGES: usize = 10;

/// A value alone on its cache line, so tasks on different cores do not false-share.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Counters shared by all tasks of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written by publishers.
    pub published: Padded<AtomicU64>,
    /// Distinct messages received by subscribers.
    pub delivered: Padded<AtomicU64>,
    /// Connections open now.
    pub connections: Padded<AtomicI64>,
    /// Errors so far.
    pub errors: Padded<AtomicU64>,
    /// The first few error messages, with how often each occurred.
    messages: Mutex<Vec<(String, u64)>>,
}

impl Counters {
    /// Adds `n` published messages.
    pub fn published(&self, n: u64) {
        self.published.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` delivered messages.
    pub fn delivered(&self, n: u64) {
        self.delivered.0.fetch_add(n, Ordering::Relaxed);
    }

    /// A connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records an error.
    pub fn error(&self, message: impl Into<String>) {
        self.errors.0.fetch_add(1, Ordering::Relaxed);
        let message = message.into();
        if let Ok(mut list) = self.messages.lock() {
            if let Some(entry) = list.iter_mut().find(|(m, _)| *m == message) {
                entry.1 += 1;
            } else if list.len() < MAX_ERROR_MESSAGES {
                list.push((message, 1));
            }
        }
    }

    /// Errors so far.
    pub fn error_count(&self) -> u64 {
        self.errors.0.load(Ordering::Relaxed)
    }

    /// The recorded error messages ("message (xN)").
    pub fn error_messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .map(|list| {
                list.iter()
                    .map(|(m, n)| {
                        if *n > 1 {
                            format!("{m} (x{n})")
                        } else {
                            m.clone()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Prints one progress line per second to stderr until `stop` is cancelled.
pub async fn run(counters: &Counters, start: Instant, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_pub, mut last_del, mut last_at) = (0u64, 0u64, start);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let published = counters.published.0.load(Ordering::Relaxed);
        let delivered = counters.delivered.0.load(Ordering::Relaxed);
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-9);
        let line = format!(
            "{:>6.1}s  pub {:>9.0}/s  recv {:>9.0}/s  total pub {published} recv {delivered}  conns {}  errors {}",
            now.duration_since(start).as_secs_f64(),
            (published - last_pub) as f64 / secs,
            (delivered - last_del) as f64 / secs,
            counters.connections.0.load(Ordering::Relaxed),
            counters.error_count(),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
        (last_pub, last_del, last_at) = (published, delivered, now);
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}
