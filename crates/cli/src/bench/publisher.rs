//! A publisher task: stamps pre-encoded PUBLISHes into one buffer per batch and writes it
//! with one `write_all`, within the closed loop's credits, the QoS 1/2 window and the pacer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sagitta_proto::{Packet, PubResponse, QoS, TopicName};
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use super::flow::{Ack, AckOutcome, AckWindow, Pacer};
use super::link::{Link, LinkError};
use super::payload::Header;
use super::stats::{PubStats, record_ns};
use super::template::PublishTemplate;
use super::traffic::Shared;

/// Bytes of PUBLISHes encoded per write, at most.
const BATCH_BYTES: usize = 64 * 1024;
/// Messages per write, at most.
const BATCH_MAX: usize = 1024;

/// A connected publisher, ready to start.
#[derive(Debug)]
pub struct Publisher {
    index: u32,
    link: Link,
    template: PublishTemplate,
    window: AckWindow,
    /// Deliveries each publish causes (closed-loop credits it needs).
    fanout: u64,
    keep_alive: u16,
    stats: PubStats,
}

impl Publisher {
    /// Connects publisher `index`, which will publish to `topic`.
    pub async fn connect(sh: &Shared, index: u32, topic: &TopicName) -> Result<Self, String> {
        let c = &sh.config;
        let template = PublishTemplate::new(c.version, topic, c.qos, c.size)?;
        let client_id = format!("{}p{index}", sh.client_prefix);
        let (link, session) = Link::connect(
            &c.addr(),
            c.tls.as_ref(),
            c.version,
            &client_id,
            c.credentials(),
            false,
        )
        .await
        .map_err(|e| format!("publisher {index}: {e}"))?;
        Ok(Self {
            index,
            link,
            template,
            window: AckWindow::new(c.window.min(session.receive_maximum)),
            fanout: u64::from(c.fanout()),
            keep_alive: session.keep_alive,
            stats: PubStats::new()?,
        })
    }

    /// Publishes until `end` or the configured count, then waits (up to the drain time) for
    /// outstanding acknowledgements. Errors are counted in the shared counters.
    pub async fn run(mut self, sh: &Shared, start: Instant, end: Option<Instant>) -> PubStats {
        let result = self.publish(sh, start, end).await;
        let result = match result {
            Ok(()) => self.await_acks(sh).await,
            Err(e) => Err(e),
        };
        self.stats.unacked = self.window.live() as u64;
        match result {
            Ok(()) => self.link.disconnect().await,
            Err(e) => sh.counters.error(format!("publisher {}: {e}", self.index)),
        }
        sh.counters.connection(-1);
        self.stats
    }

    async fn publish(
        &mut self,
        sh: &Shared,
        start: Instant,
        end: Option<Instant>,
    ) -> Result<(), LinkError> {
        let c = &sh.config;
        let qos = c.qos;
        let count = c.count;
        let credits = sh.credits.as_ref().filter(|_| self.fanout > 0);
        let mut pacer = c
            .rate
            .map(|r| Pacer::new(r / f64::from(c.pubs.max(1)), start));
        // Spread the in-flight budget so one publisher cannot take it all in one batch.
        let share =
            (u64::from(c.inflight) / (u64::from(c.pubs.max(1)) * self.fanout.max(1))).max(1);
        let batch_max = (BATCH_BYTES / self.template.len()).clamp(1, BATCH_MAX) as u64;
        let batch_max = batch_max.min(share);
        let ping_every = ping_interval(self.keep_alive);
        let mut last_write = Instant::now();
        let mut held = 0u64; // credits acquired and not spent yet
        let mut batches = 0u64;
        loop {
            // Acknowledgements (and, rarely for QoS 0, anything else) that arrived.
            if qos != QoS::AtMostOnce || batches.is_multiple_of(16) {
                if !self.link.try_fill()? {
                    return Err(LinkError::Closed);
                }
                self.handle_incoming(sh)?;
            }
            let now = Instant::now();
            let sent = self.stats.sent;
            if count.is_some_and(|n| sent >= n) || end.is_some_and(|e| now >= e) {
                return Ok(());
            }
            let mut k = batch_max;
            if let Some(n) = count {
                k = k.min(n - sent);
            }
            if qos != QoS::AtMostOnce {
                k = k.min(self.window.space() as u64);
            }
            if let Some(p) = pacer.as_mut() {
                k = k.min(p.available(now));
            }
            if let (Some(sem), true) = (credits, k > 0) {
                let need = k * self.fanout;
                if held < need {
                    let take = (need - held).min(sem.available_permits() as u64);
                    if take > 0
                        && let Ok(p) = sem.try_acquire_many(u32::try_from(take).unwrap_or(u32::MAX))
                    {
                        held += u64::from(p.num_permits() as u32);
                        p.forget();
                    }
                }
                k = k.min(held / self.fanout);
            }
            if k > 0 {
                let now_ns = sh.clock.now_ns();
                for i in 0..k {
                    let packet_id = if qos == QoS::AtMostOnce {
                        None
                    } else {
                        self.window.insert(qos, now_ns)
                    };
                    let header = Header {
                        publisher: self.index,
                        seq: sent + i,
                        sent_ns: now_ns,
                    };
                    self.template
                        .append(&mut self.link.wbuf, packet_id, &header);
                }
                held -= k * self.fanout;
                if let Some(p) = pacer.as_mut() {
                    p.consume(k);
                }
                self.link.flush().await?;
                self.stats.sent += k;
                if now_ns >= sh.warmup_end_ns.load(Ordering::Relaxed) {
                    self.stats.measured += k;
                }
                // The publish window ends when the last batch has been written.
                self.stats.last_send_ns = Some(sh.clock.now_ns());
                sh.counters.published(k);
                last_write = now;
                batches += 1;
                continue;
            }
            // Blocked: on credits, the window, the pacer or (count reached) nothing. PUBRELs
            // queued by handle_incoming go out now.
            if !self.link.wbuf.is_empty() {
                self.link.flush().await?;
                last_write = now;
            }
            let want_credits = credits.is_some() && held < self.fanout;
            let fanout = u32::try_from(self.fanout).unwrap_or(u32::MAX);
            let next_token = pacer.as_ref().map(Pacer::next_at);
            tokio::select! {
                r = self.link.readable() => {
                    r?;
                    if !self.link.try_fill()? {
                        return Err(LinkError::Closed);
                    }
                    self.handle_incoming(sh)?;
                }
                p = acquire(credits, fanout), if want_credits => held += p,
                _ = sleep_until(next_token.unwrap_or(now).into()), if next_token.is_some() => {}
                _ = sleep_until(end.unwrap_or(now).into()), if end.is_some() => {}
                _ = sleep_until((last_write + ping_every).into()) => {
                    self.link.queue(&Packet::PingReq)?;
                    self.link.flush().await?;
                    last_write = Instant::now();
                }
            }
        }
    }

    /// Waits for the acknowledgements of everything in flight, up to the drain time.
    async fn await_acks(&mut self, sh: &Shared) -> Result<(), LinkError> {
        let deadline = Instant::now() + sh.config.drain;
        while self.window.live() > 0 {
            self.link.flush().await?;
            tokio::select! {
                r = self.link.readable() => {
                    r?;
                    if !self.link.try_fill()? {
                        return Err(LinkError::Closed);
                    }
                    self.handle_incoming(sh)?;
                }
                _ = sleep_until(deadline.into()) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Handles every complete packet in the read buffer: acknowledgements, PINGRESP.
    fn handle_incoming(&mut self, sh: &Shared) -> Result<(), LinkError> {
        let warmup_end = sh.warmup_end_ns.load(Ordering::Relaxed);
        let mut now_ns = None;
        while let Some(packet) = self.link.next_packet()? {
            let (response, ack) = match packet {
                Packet::PubAck(r) => (r, Ack::Puback),
                Packet::PubRec(r) if r.reason.is_error() => (r, Ack::PubrecRefused),
                Packet::PubRec(r) => (r, Ack::Pubrec),
                Packet::PubComp(r) => (r, Ack::Pubcomp),
                Packet::PingResp => continue,
                Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason)),
                _ => return Err(LinkError::Unexpected("packet type for a publisher")),
            };
            let id = response.packet_id;
            match self.window.ack(id, ack) {
                Ok(AckOutcome::SendPubRel) => {
                    self.link.queue(&Packet::PubRel(PubResponse::new(id)))?;
                }
                Ok(AckOutcome::Done(sent_ns)) => {
                    if response.reason.is_error() {
                        self.stats.refused += 1;
                        sh.counters
                            .error(format!("publish refused: {:?}", response.reason));
                    } else {
                        self.stats.acked += 1;
                    }
                    if sent_ns >= warmup_end {
                        let now = *now_ns.get_or_insert_with(|| sh.clock.now_ns());
                        record_ns(&mut self.stats.ack_latency, now.saturating_sub(sent_ns));
                    }
                }
                Err(_) => {
                    return Err(LinkError::Unexpected(
                        "acknowledgement for an unknown packet id",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Acquires `n` closed-loop credits and returns how many (never resolves without credits).
async fn acquire(sem: Option<&Semaphore>, n: u32) -> u64 {
    match sem {
        Some(sem) => match sem.acquire_many(n).await {
            Ok(p) => {
                p.forget();
                u64::from(n)
            }
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// How long a client may stay silent before it pings.
pub fn ping_interval(keep_alive: u16) -> Duration {
    match keep_alive {
        0 => Duration::from_secs(3600),
        k => Duration::from_secs(u64::from(k)) / 2,
    }
}
