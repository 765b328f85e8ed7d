//! `$SYS/broker/...`: broker statistics published as retained QoS 0 messages every
//! `sys_interval` seconds, with Mosquitto's topic names for the common ones, so that tools
//! written for Mosquitto read them as they are.
//!
//! The `load/...` topics are Mosquitto-style moving averages of rates per minute, over 1, 5
//! and 15 minutes: at each update the rate since the previous one moves each average by
//! `1 - exp(-elapsed / window)` of the distance (as Unix load averages do).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sagitta_proto::{QoS, TopicName};

use crate::broker::Shared;
use crate::message::Message;
use crate::metrics::Metrics;

/// The counters that have load averages, in the order of [`LOAD_NAMES`].
const LOADS: usize = 7;
const LOAD_NAMES: [&str; LOADS] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
];
/// Averaging windows, in seconds, and their topic suffixes.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// Moving averages of per-minute rates.
#[derive(Debug, Default, Clone, PartialEq)]
struct Load {
    averages: [f64; 3],
}

impl Load {
    /// Takes a count of `delta` over `elapsed` seconds into each average.
    fn update(&mut self, delta: u64, elapsed: f64) {
        if elapsed <= 0.0 {
            return;
        }
        let per_minute = delta as f64 * 60.0 / elapsed;
        for (average, (window, _)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-elapsed / window).exp();
            *average = per_minute + keep * (*average - per_minute);
        }
    }
}

/// The counters behind the load averages, read once per update.
fn load_counters(m: &Metrics) -> [u64; LOADS] {
    let received = Metrics::get(&m.messages_received);
    let sent = Metrics::get(&m.messages_sent);
    [
        received,
        sent,
        received,
        sent,
        dropped(m),
        Metrics::get(&m.bytes_received),
        Metrics::get(&m.bytes_sent),
    ]
}

/// Messages dropped for any reason.
fn dropped(m: &Metrics) -> u64 {
    [
        &m.dropped_queue_full,
        &m.dropped_offline,
        &m.dropped_too_large,
        &m.dropped_expired,
    ]
    .into_iter()
    .map(Metrics::get)
    .sum()
}

/// Everything published at one update: (topic below `$SYS/broker/`, value).
struct Snapshot {
    values: Vec<(String, String)>,
}

/// State kept between updates.
struct Sys {
    version: String,
    last: Instant,
    counters: [u64; LOADS],
    connections: u64,
    loads: [Load; LOADS],
    connection_load: Load,
}

impl Sys {
    fn new(shared: &Shared, now: Instant) -> Self {
        Self {
            version: format!("sagitta {}", env!("CARGO_PKG_VERSION")),
            last: now,
            counters: load_counters(&shared.metrics),
            connections: Metrics::get(&shared.metrics.clients_total),
            loads: Default::default(),
            connection_load: Load::default(),
        }
    }

    fn update(&mut self, shared: &Shared, now: Instant) -> Snapshot {
        let m = &shared.metrics;
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let counters = load_counters(m);
        for ((load, new), old) in self.loads.iter_mut().zip(counters).zip(self.counters) {
            load.update(new.saturating_sub(old), elapsed);
        }
        self.counters = counters;
        let connections = Metrics::get(&m.clients_total);
        self.connection_load
            .update(connections.saturating_sub(self.connections), elapsed);
        self.connections = connections;

        let connected = Metrics::get(&m.clients_connected);
        let sessions = shared.sessions.len() as u64;
        let disconnected = sessions.saturating_sub(connected);
        let mut values: Vec<(String, String)> = [
            ("version", self.version.clone()),
            (
                "uptime",
                format!("{} seconds", shared.started.elapsed().as_secs()),
            ),
            ("clients/connected", connected.to_string()),
            ("clients/active", connected.to_string()),
            ("clients/disconnected", disconnected.to_string()),
            ("clients/inactive", disconnected.to_string()),
            ("clients/total", sessions.max(connected).to_string()),
            (
                "clients/maximum",
                Metrics::get(&m.clients_maximum).to_string(),
            ),
            ("messages/received", counters[0].to_string()),
            ("messages/sent", counters[1].to_string()),
            ("publish/messages/received", counters[2].to_string()),
            ("publish/messages/sent", counters[3].to_string()),
            ("publish/messages/dropped", counters[4].to_string()),
            ("bytes/received", counters[5].to_string()),
            ("bytes/sent", counters[6].to_string()),
            ("retained messages/count", shared.retained.len().to_string()),
            ("subscriptions/count", shared.router.len().to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let loads = LOAD_NAMES
            .iter()
            .zip(&self.loads)
            .chain(std::iter::once((&"connections", &self.connection_load)));
        for (name, load) in loads {
            for (average, (_, suffix)) in load.averages.iter().zip(WINDOWS) {
                values.push((format!("load/{name}/{suffix}"), format!("{average:.2}")));
            }
        }
        values.extend(crate::bridge::sys_values(shared));
        values.extend(crate::cluster::sys_values(shared));
        Snapshot { values }
    }
}

/// Publishes `$SYS/broker/...` every `sys_interval` seconds until shutdown.
pub(crate) async fn sys_loop(shared: Arc<Shared>) {
    let interval = Duration::from_secs(shared.config.sys_interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now(), interval);
    let mut targets = Vec::new();
    let mut sys = Sys::new(&shared, Instant::now());
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for (name, value) in sys.update(&shared, Instant::now()).values {
            let Ok(topic) = TopicName::new(format!("$SYS/broker/{name}")) else {
                continue;
            };
            let msg = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
            shared.publish(Arc::new(msg), &mut targets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_approached_by_each_window_at_its_pace() {
        let mut load = Load::default();
        // 100 messages every 10 s = 600 per minute, for one minute.
        for _ in 0..6 {
            load.update(100, 10.0);
        }
        let [one, five, fifteen] = load.averages;
        let expect = |window: f64| 600.0 * (1.0 - (-60.0 / window).exp());
        assert!((one - expect(60.0)).abs() < 1e-6, "{one}");
        assert!((five - expect(300.0)).abs() < 1e-6, "{five}");
        assert!((fifteen - expect(900.0)).abs() < 1e-6, "{fifteen}");
        assert!(one > five && five > fifteen);
        // Silence decays every average; no time passing changes nothing.
        let before = load.clone();
        load.update(0, 0.0);
        assert_eq!(load, before);
        load.update(0, 60.0);
        assert!((load.averages[0] - one * (-1.0f64).exp()).abs() < 1e-6);
    }
}
