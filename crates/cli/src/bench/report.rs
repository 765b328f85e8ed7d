//! The final summary: human-readable on stdout, or one JSON object with `--json`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::progress::Counters;
use super::stats::Totals;
use super::usage::Usage;
use super::{Config, Scenario};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub samples: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a microsecond histogram; `None` when it is empty.
    pub fn from_us(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            samples: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, {} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean, self.samples
        )
    }
}

/// Outcome of the `conn` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectStats {
    /// Connections attempted.
    pub attempted: u64,
    /// CONNACKs received (success).
    pub connected: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Connections established per second.
    pub rate: f64,
    /// Time from TCP connect to CONNACK.
    pub latency_ms: Option<Latency>,
    /// Connections lost while being held open.
    pub dropped: u64,
    /// The broker's resident memory before connecting, KiB (with `--broker-pid`).
    pub broker_rss_before_kb: Option<u64>,
    /// The broker's resident memory once every connection had its CONNACK, KiB.
    pub broker_rss_connected_kb: Option<u64>,
    /// (connected - before) / connections, KiB: the broker's memory per idle connection.
    pub broker_rss_per_connection_kb: Option<f64>,
}

/// The summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario.
    pub scenario: Scenario,
    /// Broker address.
    pub broker: String,
    /// Connections over TLS.
    pub tls: bool,
    /// MQTT version.
    pub protocol: String,
    /// QoS.
    pub qos: u8,
    /// Payload size.
    pub size: usize,
    /// Publishers.
    pub pubs: u32,
    /// Subscribers.
    pub subs: u32,
    /// Connections (`conn`).
    pub clients: u32,
    /// Requested total publish rate (null: unlimited, closed loop).
    pub rate: Option<f64>,
    /// Closed-loop in-flight limit.
    pub inflight: u32,
    /// Requested duration in seconds.
    pub duration_s: Option<f64>,
    /// Requested messages per publisher.
    pub count: Option<u64>,
    /// Warm-up in seconds.
    pub warmup_s: f64,
    /// Time spent publishing (`conn`: connections held), seconds.
    pub elapsed_s: f64,
    /// Time spent waiting for messages in flight after publishing, seconds.
    pub drain_s: f64,
    /// Messages published.
    pub published: u64,
    /// Distinct messages delivered to subscribers.
    pub delivered: u64,
    /// Deliveries expected (null when unknown).
    pub expected: Option<u64>,
    /// Published messages/s after warm-up.
    pub publish_rate: f64,
    /// Delivered messages/s after warm-up.
    pub delivery_rate: f64,
    /// End-to-end latency.
    pub latency_ms: Option<Latency>,
    /// Publish to PUBACK/PUBCOMP latency (QoS 1/2).
    pub ack_latency_ms: Option<Latency>,
    /// QoS 1/2 publishes acknowledged.
    pub acked: u64,
    /// QoS 1/2 publishes refused by the broker.
    pub refused: u64,
    /// QoS 1/2 publishes never acknowledged.
    pub unacked: u64,
    /// Deliveries expected and not received.
    pub losses: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    /// Deliveries out of order.
    pub out_of_order: u64,
    /// Received payloads without a bench header.
    pub foreign: u64,
    /// `conn` results.
    pub connect: Option<ConnectStats>,
    /// Errors (failed connections, protocol errors, dropped connections).
    pub errors: u64,
    /// The first distinct error messages.
    pub error_messages: Vec<String>,
    /// CPU of the bench and the broker, the broker's memory (flattened: `bench_cpu_s`,
    /// `broker_cpu_s`, `broker_peak_rss_kb`...).
    #[serde(flatten)]
    pub usage: Usage,
}

fn rate(n: u64, from_ns: u64, to_ns: Option<u64>) -> f64 {
    match to_ns {
        Some(to) if to > from_ns => n as f64 / ((to - from_ns) as f64 / 1e9),
        _ => 0.0,
    }
}

impl Summary {
    fn base(c: &Config) -> Self {
        Self {
            scenario: c.scenario,
            broker: c.addr(),
            tls: c.tls.is_some(),
            protocol: c.version.to_string(),
            qos: c.qos as u8,
            size: c.size,
            pubs: c.pubs,
            subs: c.subs,
            clients: c.clients,
            rate: c.rate,
            inflight: c.inflight,
            duration_s: c.duration.map(|d| d.as_secs_f64()),
            count: c.count,
            warmup_s: c.warmup.as_secs_f64(),
            elapsed_s: 0.0,
            drain_s: 0.0,
            published: 0,
            delivered: 0,
            expected: None,
            publish_rate: 0.0,
            delivery_rate: 0.0,
            latency_ms: None,
            ack_latency_ms: None,
            acked: 0,
            refused: 0,
            unacked: 0,
            losses: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            connect: None,
            errors: 0,
            error_messages: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// Summary of a traffic scenario.
    pub fn traffic(
        c: &Config,
        t: &Totals,
        warmup_end_ns: u64,
        elapsed: Duration,
        drain: Duration,
        counters: &Counters,
        usage: Usage,
    ) -> Self {
        Self {
            elapsed_s: elapsed.as_secs_f64(),
            drain_s: drain.as_secs_f64(),
            published: t.published,
            delivered: t.delivered,
            expected: t.expected,
            publish_rate: rate(t.published_measured, warmup_end_ns, t.last_send_ns),
            delivery_rate: rate(t.delivered_measured, warmup_end_ns, t.last_delivery_ns),
            latency_ms: Latency::from_us(&t.latency),
            ack_latency_ms: Latency::from_us(&t.ack_latency),
            acked: t.acked,
            refused: t.refused,
            unacked: t.unacked,
            losses: t.losses,
            duplicates: t.duplicates,
            out_of_order: t.out_of_order,
            foreign: t.foreign,
            errors: counters.error_count(),
            error_messages: counters.error_messages(),
            usage,
            ..Self::base(c)
        }
    }

    /// Summary of the `conn` scenario.
    pub fn conn(
        c: &Config,
        stats: ConnectStats,
        elapsed: Duration,
        counters: &Counters,
        usage: Usage,
    ) -> Self {
        Self {
            elapsed_s: elapsed.as_secs_f64(),
            connect: Some(stats),
            errors: counters.error_count(),
            error_messages: counters.error_messages(),
            usage,
            ..Self::base(c)
        }
    }

    /// True if the run should exit with status 1.
    pub fn failed(&self) -> bool {
        self.errors > 0
            || self.losses > 0
            || self.refused > 0
            || self.unacked > 0
            || self
                .connect
                .as_ref()
                .is_some_and(|c| c.failed > 0 || c.dropped > 0)
    }

    /// Prints the summary on stdout (and, with JSON, a saturation warning on stderr).
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("sagitta bench: cannot format JSON: {e}"),
            }
            if let Some(w) = self.usage.warning() {
                eprintln!("sagitta bench: {w}");
            }
        } else {
            print!("{}", self.text());
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let rate = match self.rate {
            Some(r) => format!("{r} msg/s"),
            None => format!("unlimited (closed loop, {} in flight)", self.inflight),
        };
        let limit = match (self.duration_s, self.count) {
            (Some(d), Some(n)) => format!("{d} s or {n} msgs/publisher"),
            (Some(d), None) => format!("{d} s"),
            (None, Some(n)) => format!("{n} msgs/publisher"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            o,
            "sagitta bench {} against {} (MQTT {}{})",
            self.scenario.name(),
            self.broker,
            self.protocol,
            if self.tls { ", TLS" } else { "" }
        );
        if let Some(cs) = &self.connect {
            let _ = writeln!(
                o,
                "  clients       {}   held {:.2} s",
                self.clients, self.elapsed_s
            );
            let _ = writeln!(
                o,
                "  connected     {} of {}   failed {}   dropped {}   rate {:.0} conn/s",
                cs.connected, cs.attempted, cs.failed, cs.dropped, cs.rate
            );
            if let Some(l) = &cs.latency_ms {
                let _ = writeln!(o, "  CONNACK ms    {}", l.line());
            }
            if let (Some(before), Some(after)) =
                (cs.broker_rss_before_kb, cs.broker_rss_connected_kb)
            {
                let per = cs
                    .broker_rss_per_connection_kb
                    .map(|p| format!("   {p:.1} KiB per connection"))
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "  broker RSS    {} before, {} connected{per}",
                    mib(before),
                    mib(after)
                );
            }
        } else {
            let _ = writeln!(
                o,
                "  setup         {} pubs, {} subs, QoS {}, {} B payload, rate {}, {}{}",
                self.pubs,
                self.subs,
                self.qos,
                self.size,
                rate,
                limit,
                if self.warmup_s > 0.0 {
                    format!(", warm-up {} s", self.warmup_s)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                o,
                "  duration      {:.2} s publishing + {:.2} s drain",
                self.elapsed_s, self.drain_s
            );
            let _ = writeln!(
                o,
                "  published     {:<12} {:>12.0} msg/s",
                self.published, self.publish_rate
            );
            if self.subs > 0 {
                let expected = self
                    .expected
                    .map(|e| format!("   (expected {e})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "  delivered     {:<12} {:>12.0} msg/s{expected}",
                    self.delivered, self.delivery_rate
                );
            }
            if let Some(l) = &self.latency_ms {
                let _ = writeln!(o, "  latency ms    {}", l.line());
            }
            if let Some(l) = &self.ack_latency_ms {
                let _ = writeln!(o, "  ack ms        {}", l.line());
            }
            if self.qos > 0 {
                let _ = writeln!(
                    o,
                    "  acks          {} acked, {} refused, {} unacknowledged",
                    self.acked, self.refused, self.unacked
                );
            }
            let foreign = if self.foreign > 0 {
                format!("   foreign {}", self.foreign)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  losses {}   duplicates {}   out-of-order {}{foreign}",
                self.losses, self.duplicates, self.out_of_order
            );
        }
        self.usage_text(&mut o);
        let _ = writeln!(o, "  errors        {}", self.errors);
        for m in &self.error_messages {
            let _ = writeln!(o, "    {m}");
        }
        o
    }

    /// The CPU and memory lines.
    fn usage_text(&self, o: &mut String) {
        use std::fmt::Write;
        let u = &self.usage;
        let cpu = |s: f64, pct: Option<f64>| match pct {
            Some(p) => format!("{s:.2} s ({p:.0}% of a core over {:.2} s)", u.measured_s),
            None => format!("{s:.2} s"),
        };
        if let Some(pid) = u.broker_pid {
            let mut line = format!("  broker        pid {pid}");
            if let Some(s) = u.broker_cpu_s {
                let _ = write!(line, "   CPU {}", cpu(s, u.broker_cpu_pct));
            }
            if let (Some(rss), Some(peak)) = (u.broker_rss_kb, u.broker_peak_rss_kb) {
                let _ = write!(line, "   RSS {}, peak {}", mib(rss), mib(peak));
            }
            if u.broker_cpu_s.is_none() && u.broker_rss_kb.is_none() {
                line.push_str("   (gone: no figures)");
            }
            let _ = writeln!(o, "{line}");
        }
        if let Some(s) = u.bench_cpu_s {
            let _ = writeln!(
                o,
                "  bench CPU     {}, {} worker thread{}",
                cpu(s, u.bench_cpu_pct),
                u.bench_threads,
                if u.bench_threads == 1 { "" } else { "s" }
            );
        }
        if let Some(w) = u.warning() {
            let _ = writeln!(o, "  {w}");
        }
    }
}

/// KiB as a human-readable MiB figure.
fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}
