//! The `conn` scenario: open `-c` connections at `--connect-rate`, measure the time to
//! CONNACK, keep them open (pinging) for the duration, then disconnect.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sagitta_proto::Packet;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use super::Config;
use super::link::{Link, LinkError};
use super::progress::{self, Counters};
use super::publisher::ping_interval;
use super::report::{ConnectStats, Latency, Summary};
use super::stats::{histogram, record_ns};
use super::usage::Probe;

/// Result of one connection attempt: time to CONNACK and when it arrived, or the error.
type Attempt = Result<(Duration, Instant), String>;

/// Connection attempts counted so far.
struct Tally {
    hist: hdrhistogram::Histogram<u64>,
    connected: u64,
    failed: u64,
    last_connack: Option<Instant>,
}

impl Tally {
    fn record(&mut self, a: Attempt, counters: &Counters) {
        match a {
            Ok((took, at)) => {
                self.connected += 1;
                record_ns(
                    &mut self.hist,
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                );
                self.last_connack = self.last_connack.max(Some(at));
            }
            Err(e) => {
                self.failed += 1;
                counters.error(e);
            }
        }
    }
}

/// Runs the `conn` scenario.
pub async fn run(c: &Config) -> Result<Summary, String> {
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let probe = Probe::start(c.broker_pid);
    let rss_before = probe.broker_memory().map(|m| m.rss_kb);
    let start = Instant::now();
    let progress_stop = CancellationToken::new();
    let progress_task = (!c.quiet && std::io::stderr().is_terminal()).then(|| {
        let counters = counters.clone();
        let stop = progress_stop.clone();
        tokio::spawn(async move { progress::run(&counters, start, stop).await })
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<Attempt>();
    let mut tasks = JoinSet::new();
    let prefix = format!("sgb{}-c", std::process::id());
    let mut tally = Tally {
        hist: histogram()?,
        connected: 0,
        failed: 0,
        last_connack: None,
    };
    for i in 0..c.clients {
        if let Some(r) = c.connect_rate {
            sleep_until((start + Duration::from_secs_f64(f64::from(i) / r)).into()).await;
        }
        while let Ok(a) = rx.try_recv() {
            tally.record(a, &counters);
        }
        let (tx, stop, counters) = (tx.clone(), stop.clone(), counters.clone());
        let addr = c.addr();
        let (version, client_id) = (c.version, format!("{prefix}{i}"));
        let (user, pass) = (c.username.clone(), c.password.clone());
        let tls = c.tls.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let creds = super::link::Credentials {
                username: user.as_deref(),
                password: pass.as_deref(),
            };
            match Link::connect(&addr, tls.as_ref(), version, &client_id, creds, false).await {
                Ok((link, session)) => {
                    let _ = tx.send(Ok((t.elapsed(), Instant::now())));
                    counters.connection(1);
                    let held = hold(link, session.keep_alive, &stop).await;
                    counters.connection(-1);
                    held.map_err(|e| format!("connection {client_id} dropped: {e}"))
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("connect {client_id}: {e}")));
                    Ok(())
                }
            }
        });
    }
    drop(tx);
    let attempted = u64::from(c.clients);
    while tally.connected + tally.failed < attempted {
        match rx.recv().await {
            Some(a) => tally.record(a, &counters),
            None => break,
        }
    }
    let rss_connected = probe.broker_memory().map(|m| m.rss_kb);
    if let Some(d) = c.duration {
        sleep_until((start + d).into()).await;
    }
    let elapsed = start.elapsed();
    let usage = probe.finish();
    stop.cancel();
    let mut dropped = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                dropped += 1;
                counters.error(e);
            }
            Err(e) => counters.error(format!("connection task: {e}")),
        }
    }
    progress_stop.cancel();
    if let Some(t) = progress_task {
        let _ = t.await;
    }
    let rate = match tally.last_connack {
        Some(at) if at > start => tally.connected as f64 / at.duration_since(start).as_secs_f64(),
        _ => 0.0,
    };
    let per_connection = match (rss_before, rss_connected) {
        (Some(b), Some(a)) if tally.connected > 0 => {
            Some((a as f64 - b as f64) / tally.connected as f64)
        }
        _ => None,
    };
    let stats = ConnectStats {
        attempted,
        connected: tally.connected,
        failed: tally.failed,
        rate,
        latency_ms: Latency::from_us(&tally.hist),
        dropped,
        broker_rss_before_kb: rss_before,
        broker_rss_connected_kb: rss_connected,
        broker_rss_per_connection_kb: per_connection,
    };
    Ok(Summary::conn(c, stats, elapsed, &counters, usage))
}

/// Keeps a connection open until `stop`, answering nothing but pinging when idle.
async fn hold(mut link: Link, keep_alive: u16, stop: &CancellationToken) -> Result<(), LinkError> {
    let every = ping_interval(keep_alive);
    let mut last_write = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                link.disconnect().await;
                return Ok(());
            }
            r = link.readable() => {
                r?;
                if !link.try_fill()? {
                    return Err(LinkError::Closed);
                }
                while let Some(p) = link.next_packet()? {
                    match p {
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason)),
                        _ => return Err(LinkError::Unexpected("packet on an idle connection")),
                    }
                }
            }
            _ = sleep_until((last_write + every).into()) => {
                link.queue(&Packet::PingReq)?;
                link.flush().await?;
                last_write = Instant::now();
            }
        }
    }
}
