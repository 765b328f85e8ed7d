//! Broker-wide counters, read by `$SYS` (and later by the metrics endpoint).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters. Connections flush their local counts here in batches, not per message.
#[derive(Debug, Default)]
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
}
