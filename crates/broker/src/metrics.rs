//! Broker-wide counters and histograms, read by `$SYS` and the metrics endpoint
//! (`GET /metrics`, see the `http` module).
//!
//! The publish path never touches a shared counter per message: connections count into
//! per-thread cells ([`count_received`], [`count_sent`]) and move them into the shared atomics
//! once per loop iteration ([`flush_local`]), before they wait again. Latency is recorded for
//! a sample of messages only ([`sample_publish`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sagitta_proto::QoS;

/// Why a connection was refused before it became a client, as the `reason` label of
/// `sagitta_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refused {
    /// Unknown user or wrong password (CONNACK 0x86 / 3.x code 4).
    BadCredentials,
    /// Not authorized: anonymous where not allowed, a will the ACL refuses, an
    /// authenticator's or authentication method's refusal (0x87 / 5).
    NotAuthorized,
    /// A 5.0 Authentication Method the listener does not offer (0x8C).
    BadAuthMethod,
    /// A client identifier the broker does not accept (0x85 / 2).
    ClientId,
    /// `max_connections`, global or per listener.
    Limit,
    /// `max_connection_rate`.
    Rate,
    /// A malformed or unsupported CONNECT, another first packet, a will the broker cannot
    /// carry (QoS, retain), a broken authentication exchange, or a refused or failed
    /// WebSocket upgrade.
    Protocol,
    /// No CONNECT (or no end of the authentication exchange, the TLS handshake or the
    /// WebSocket upgrade) within `connect_timeout`.
    Timeout,
    /// The TLS handshake failed.
    Tls,
}

impl Refused {
    /// Every reason, in label order.
    pub const ALL: [Refused; 9] = [
        Refused::BadCredentials,
        Refused::NotAuthorized,
        Refused::BadAuthMethod,
        Refused::ClientId,
        Refused::Limit,
        Refused::Rate,
        Refused::Protocol,
        Refused::Timeout,
        Refused::Tls,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refused::BadCredentials => "bad_credentials",
            Refused::NotAuthorized => "not_authorized",
            Refused::BadAuthMethod => "bad_auth_method",
            Refused::ClientId => "client_id",
            Refused::Limit => "limit",
            Refused::Rate => "rate",
            Refused::Protocol => "protocol",
            Refused::Timeout => "timeout",
            Refused::Tls => "tls",
        }
    }

    /// The reason a CONNACK refusal code stands for.
    pub(crate) fn from_reason(reason: sagitta_proto::ReasonCode) -> Refused {
        use sagitta_proto::ReasonCode as R;
        match reason {
            R::BadUserNameOrPassword => Refused::BadCredentials,
            R::NotAuthorized => Refused::NotAuthorized,
            R::BadAuthenticationMethod => Refused::BadAuthMethod,
            R::ClientIdentifierNotValid => Refused::ClientId,
            _ => Refused::Protocol,
        }
    }
}

/// A histogram of durations with fixed buckets (upper bounds in microseconds), in the shape
/// of a Prometheus histogram: cumulative counts are computed when it is read.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, and the last for everything above (+Inf).
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// Bucket bounds for publish-to-deliver latency: 50 µs to 10 s.
pub(crate) const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Bucket bounds for store syncs: 100 µs to 10 s.
pub(crate) const SYNC_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 10_000_000,
];

impl Histogram {
    /// An empty histogram with these bucket bounds (microseconds, ascending).
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.bounds.partition_point(|b| *b < us);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The bucket bounds in seconds with their cumulative counts (the last bound is
    /// infinite), the number of observations and their sum in seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// What a [`Histogram`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds in seconds (the last one infinite) with the number of observations at or
    /// below each.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

/// Counters. Connections flush their local counts here in batches, not per message.
#[derive(Debug)]
pub struct Metrics {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start (CONNACK with success).
    pub clients_total: AtomicU64,
    /// Highest number of clients connected at once.
    pub clients_maximum: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped for offline sessions.
    pub dropped_offline: AtomicU64,
    /// Messages dropped because they were larger than the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Messages dropped because their Message Expiry Interval ran out.
    pub dropped_expired: AtomicU64,
    /// PUBLISH packets received, by QoS (0, 1, 2).
    pub received_by_qos: [AtomicU64; 3],
    /// PUBLISH packets sent, by delivery QoS.
    pub sent_by_qos: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_received_by_qos: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets sent, by delivery QoS.
    pub payload_sent_by_qos: [AtomicU64; 3],
    /// Connections refused before they became clients, by [`Refused`] reason.
    pub refused: [AtomicU64; Refused::ALL.len()],
    /// Time from a PUBLISH being read to the delivery of the message being written to a
    /// subscriber's socket, for one message in [`SAMPLE_EVERY`] per thread.
    pub publish_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            clients_connected: AtomicU64::new(0),
            clients_total: AtomicU64::new(0),
            clients_maximum: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_offline: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_expired: AtomicU64::new(0),
            received_by_qos: Default::default(),
            sent_by_qos: Default::default(),
            payload_received_by_qos: Default::default(),
            payload_sent_by_qos: Default::default(),
            refused: Default::default(),
            publish_latency: Histogram::new(LATENCY_BOUNDS_US),
        }
    }
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_total.fetch_add(1, Ordering::Relaxed);
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection refused for `reason`.
    pub(crate) fn refused(&self, reason: Refused) {
        if let Some(c) = self.refused.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections refused for `reason` so far.
    pub fn refused_count(&self, reason: Refused) -> u64 {
        self.refused
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One message in this many (per worker thread) has its publish-to-deliver latency measured.
pub const SAMPLE_EVERY: u32 = 64;

/// This thread's counts not yet in [`Metrics`].
struct Local {
    received: [Cell<u64>; 3],
    sent: [Cell<u64>; 3],
    payload_received: [Cell<u64>; 3],
    payload_sent: [Cell<u64>; 3],
    /// Publishes seen, for sampling.
    ticks: Cell<u32>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            received: [const { Cell::new(0) }; 3],
            sent: [const { Cell::new(0) }; 3],
            payload_received: [const { Cell::new(0) }; 3],
            payload_sent: [const { Cell::new(0) }; 3],
            ticks: Cell::new(0),
        }
    };
}

fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// Counts a PUBLISH received with `payload` bytes (moved to [`Metrics`] by [`flush_local`]).
pub(crate) fn count_received(qos: QoS, payload: usize) {
    LOCAL.with(|l| {
        let q = qos as usize;
        if let (Some(n), Some(b)) = (l.received.get(q), l.payload_received.get(q)) {
            bump(n, 1);
            bump(b, payload as u64);
        }
    });
}

/// Counts a PUBLISH sent with `payload` bytes (moved to [`Metrics`] by [`flush_local`]).
pub(crate) fn count_sent(qos: QoS, payload: usize) {
    LOCAL.with(|l| {
        let q = qos as usize;
        if let (Some(n), Some(b)) = (l.sent.get(q), l.payload_sent.get(q)) {
            bump(n, 1);
            bump(b, payload as u64);
        }
    });
}

/// Whether the message being published now is one whose latency is measured: the time it
/// was received, for one call in [`SAMPLE_EVERY`] on this thread.
pub(crate) fn sample_publish() -> Option<Instant> {
    LOCAL.with(|l| {
        let t = l.ticks.get().wrapping_add(1);
        l.ticks.set(t);
        (t % SAMPLE_EVERY == 0).then(Instant::now)
    })
}

/// Moves this thread's counts into `m`. Called by every connection before it waits, so that
/// nothing stays behind on a thread that goes idle.
pub(crate) fn flush_local(m: &Metrics) {
    LOCAL.with(|l| {
        let mut received = 0;
        let mut sent = 0;
        for q in 0..3 {
            let n = l.received[q].take();
            received += n;
            Metrics::add(&m.received_by_qos[q], n);
            Metrics::add(&m.payload_received_by_qos[q], l.payload_received[q].take());
            let n = l.sent[q].take();
            sent += n;
            Metrics::add(&m.sent_by_qos[q], n);
            Metrics::add(&m.payload_sent_by_qos[q], l.payload_sent[q].take());
        }
        Metrics::add(&m.messages_received, received);
        Metrics::add(&m.messages_sent, sent);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[100, 1_000]);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets, vec![(0.0001, 2), (0.001, 3), (f64::INFINITY, 4)]);
        assert!((s.sum_seconds - 1.00065).abs() < 1e-9);
    }

    #[test]
    fn local_counts_reach_the_metrics_on_flush() {
        let m = Metrics::default();
        count_received(QoS::AtLeastOnce, 10);
        count_received(QoS::AtLeastOnce, 5);
        count_sent(QoS::AtMostOnce, 7);
        assert_eq!(Metrics::get(&m.messages_received), 0);
        flush_local(&m);
        assert_eq!(Metrics::get(&m.received_by_qos[1]), 2);
        assert_eq!(Metrics::get(&m.payload_received_by_qos[1]), 15);
        assert_eq!(Metrics::get(&m.sent_by_qos[0]), 1);
        assert_eq!(Metrics::get(&m.payload_sent_by_qos[0]), 7);
        assert_eq!(Metrics::get(&m.messages_received), 2);
        assert_eq!(Metrics::get(&m.messages_sent), 1);
        flush_local(&m);
        assert_eq!(Metrics::get(&m.messages_received), 2);
    }

    #[test]
    fn one_publish_in_sample_every_is_sampled() {
        let n = (0..SAMPLE_EVERY * 4)
            .filter(|_| sample_publish().is_some())
            .count();
        assert_eq!(n, 4);
    }
}
