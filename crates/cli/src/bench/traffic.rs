//! The publish/subscribe scenarios: connect and subscribe every subscriber, connect every
//! publisher, start publishing, stop at the duration or count, drain, merge the statistics.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sagitta_proto::TopicName;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::progress::{self, Counters};
use super::publisher::Publisher;
use super::report::Summary;
use super::stats::{PubStats, SubStats, Totals};
use super::subscriber::Subscriber;
use super::usage::{Probe, Usage};
use super::{Config, Scenario};

/// Connection attempts in progress at once during set-up.
const SETUP_CONCURRENCY: usize = 64;
/// How often the coordinator checks for the end of the drain.
const POLL: Duration = Duration::from_millis(5);

/// State shared by every task of a run.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Timestamps for payloads.
    pub clock: Clock,
    /// Live counters.
    pub counters: Counters,
    /// Closed-loop credits: deliveries that may still be put in flight.
    pub credits: Option<Semaphore>,
    /// Clock reading before which nothing counts in latency or rates.
    pub warmup_end_ns: AtomicU64,
    /// Tells subscribers to finish.
    pub stop: CancellationToken,
    /// Subscribers that reached their `--count` (`sub`).
    pub subs_done: AtomicU32,
    /// Prefix of client identifiers, unique per process.
    pub client_prefix: String,
}

/// Topic of publisher `i`.
fn pub_topic(c: &Config, i: u32) -> Result<TopicName, String> {
    let name = match c.scenario {
        Scenario::Fanout => c.topic.clone(),
        _ => format!("{}/{i}", c.topic),
    };
    TopicName::new(name).map_err(|e| format!("topic: {e}"))
}

/// Filter of subscriber `i`.
fn sub_filter(c: &Config, i: u32) -> String {
    match c.scenario {
        Scenario::Fanin => format!("{}/+", c.topic),
        Scenario::Pairs => format!("{}/{i}", c.topic),
        _ => c.topic.clone(),
    }
}

/// The publishers whose every message subscriber `i` should receive (`None`: unknown).
fn expected_for(c: &Config, i: u32, sent: &[u64]) -> Option<Vec<(u32, u64)>> {
    match c.scenario {
        Scenario::Fanin | Scenario::Fanout => Some((0..).zip(sent.iter().copied()).collect()),
        Scenario::Pairs => Some(vec![(i, sent.get(i as usize).copied().unwrap_or(0))]),
        _ => None,
    }
}

/// Runs a traffic scenario to the end and summarises it.
pub async fn run(config: &Config) -> Result<Summary, String> {
    let c = config.clone();
    let credits = (c.fanout() > 0).then(|| Semaphore::new(c.inflight as usize));
    let sh = Arc::new(Shared {
        clock: Clock::new(),
        counters: Counters::default(),
        credits,
        warmup_end_ns: AtomicU64::new(u64::MAX),
        stop: CancellationToken::new(),
        subs_done: AtomicU32::new(0),
        client_prefix: format!("sgb{}-", std::process::id()),
        config: c,
    });
    let c = &sh.config;
    let setup_start = Instant::now();
    let show = !c.quiet && std::io::stderr().is_terminal();
    let progress_stop = CancellationToken::new();
    let progress_task = show.then(|| {
        let sh = sh.clone();
        let stop = progress_stop.clone();
        tokio::spawn(async move { progress::run(&sh.counters, setup_start, stop).await })
    });

    let outcome = drive(&sh).await;
    progress_stop.cancel();
    if let Some(t) = progress_task {
        let _ = t.await;
    }
    let (pubs, subs, elapsed, drain, usage) = outcome?;

    let mut totals = Totals::new()?;
    for p in &pubs {
        totals.add_pub(p)?;
    }
    let sent: Vec<u64> = pubs.iter().map(|p| p.sent).collect();
    for (i, s) in (0..).zip(&subs) {
        let expected = expected_for(c, i, &sent);
        totals.add_sub(s, expected.as_deref())?;
    }
    Ok(Summary::traffic(
        c,
        &totals,
        sh.warmup_end_ns.load(Ordering::Relaxed),
        elapsed,
        drain,
        &sh.counters,
        usage,
    ))
}

type Outcome = (Vec<PubStats>, Vec<SubStats>, Duration, Duration, Usage);

/// Set-up, publishing, drain. On a set-up failure everything opened is closed.
async fn drive(sh: &Arc<Shared>) -> Result<Outcome, String> {
    let c = &sh.config;
    // 1. Subscribers, all subscribed before anyone publishes.
    let mut subscribers = connect_all(sh, c.subs, |sh, i| async move {
        let filter = sub_filter(&sh.config, i);
        Subscriber::connect(&sh, i, &filter).await
    })
    .await?;
    // 2. Publishers.
    let publishers = match connect_all(sh, c.pubs, |sh, i| async move {
        let topic = pub_topic(&sh.config, i)?;
        let p = Publisher::connect(&sh, i, &topic).await?;
        sh.counters.connection(1);
        Ok(p)
    })
    .await
    {
        Ok(p) => p,
        Err(e) => {
            sh.stop.cancel();
            for s in subscribers.drain(..) {
                s.run(sh, None).await;
            }
            return Err(e);
        }
    };

    // 3. Go. CPU and memory are measured from here to the end of the drain.
    let probe = Probe::start(c.broker_pid);
    let start = Instant::now();
    sh.warmup_end_ns
        .store(sh.clock.at(start + c.warmup), Ordering::Relaxed);
    let end = c.duration.map(|d| start + d);
    let target = match c.scenario {
        Scenario::Sub => c.count,
        _ => None,
    };
    let mut sub_tasks = JoinSet::new();
    for s in subscribers {
        let sh = sh.clone();
        sub_tasks.spawn(async move { (s.index_hint(), s.run(&sh, target).await) });
    }
    let mut pub_tasks = JoinSet::new();
    for (i, p) in (0u32..).zip(publishers) {
        let sh = sh.clone();
        pub_tasks.spawn(async move { (i, p.run(&sh, start, end).await) });
    }
    let mut pubs: Vec<Option<PubStats>> = vec![None; c.pubs as usize];
    while let Some(joined) = pub_tasks.join_next().await {
        match joined {
            Ok((i, stats)) => pubs[i as usize] = Some(stats),
            Err(e) => sh.counters.error(format!("publisher task: {e}")),
        }
    }
    let mut pubs_out = Vec::with_capacity(pubs.len());
    for p in pubs {
        pubs_out.push(match p {
            Some(p) => p,
            None => PubStats::new()?,
        });
    }

    // 4. Stop and drain.
    let publishing_done = Instant::now();
    let (elapsed, drain) = if c.scenario == Scenario::Sub {
        // No publishers: run to the duration, or until every subscriber has its count.
        loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e)
                || (target.is_some() && sh.subs_done.load(Ordering::Relaxed) >= c.subs)
            {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        (start.elapsed(), Duration::ZERO)
    } else {
        if c.subs > 0 {
            let expected: u64 = match c.scenario {
                Scenario::Pairs => pubs_out.iter().map(|p| p.sent).sum(),
                _ => pubs_out.iter().map(|p| p.sent).sum::<u64>() * u64::from(c.subs),
            };
            let deadline = publishing_done + c.drain;
            while sh.counters.delivered.0.load(Ordering::Relaxed) < expected
                && Instant::now() < deadline
            {
                tokio::time::sleep(POLL).await;
            }
        }
        (
            publishing_done.duration_since(start),
            publishing_done.elapsed(),
        )
    };
    let usage = probe.finish();
    sh.stop.cancel();
    let mut subs: Vec<Option<SubStats>> = vec![None; c.subs as usize];
    while let Some(joined) = sub_tasks.join_next().await {
        match joined {
            Ok((i, stats)) => subs[i as usize] = Some(stats),
            Err(e) => sh.counters.error(format!("subscriber task: {e}")),
        }
    }
    let mut subs_out = Vec::with_capacity(subs.len());
    for s in subs {
        subs_out.push(match s {
            Some(s) => s,
            None => SubStats::new()?,
        });
    }
    Ok((pubs_out, subs_out, elapsed, drain, usage))
}

/// Runs `make(sh, i)` for `i` in `0..n`, at most [`SETUP_CONCURRENCY`] at a time; returns the
/// results in order, or the first error (after closing what did connect).
async fn connect_all<T, F, Fut>(sh: &Arc<Shared>, n: u32, make: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(Arc<Shared>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..n {
        let fut = make(sh.clone(), i);
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire().await;
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(v))) => out[i as usize] = Some(v),
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("set-up task: {e}"));
            }
        }
    }
    match first_error {
        // Dropping the connected clients closes their sockets.
        Some(e) => Err(format!("set-up failed: {e}")),
        None => Ok(out.into_iter().flatten().collect()),
    }
}
