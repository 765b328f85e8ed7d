//! A subscriber task: reads everything available, decodes every complete packet, records
//! each benchmark payload in its own [`SubStats`] (no locks), acknowledges QoS 1/2 with one
//! write per batch, and returns closed-loop credits once per batch.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sagitta_proto::session::{InboundQos2, Qos2Publish};
use sagitta_proto::{Packet, PubResponse, QoS};
use tokio::time::sleep_until;

use super::link::{Link, LinkError};
use super::publisher::ping_interval;
use super::stats::SubStats;
use super::traffic::Shared;

/// A connected and subscribed subscriber.
#[derive(Debug)]
pub struct Subscriber {
    index: u32,
    link: Link,
    keep_alive: u16,
    qos2: InboundQos2,
    stats: SubStats,
}

impl Subscriber {
    /// Connects subscriber `index` and subscribes it to `filter` (SUBACK received).
    pub async fn connect(sh: &Shared, index: u32, filter: &str) -> Result<Self, String> {
        let c = &sh.config;
        let client_id = format!("{}s{index}", sh.client_prefix);
        let (mut link, session) = Link::connect(
            &c.addr(),
            c.tls.as_ref(),
            c.version,
            &client_id,
            c.credentials(),
            c.persistent,
        )
        .await
        .map_err(|e| format!("subscriber {index}: {e}"))?;
        sh.counters.connection(1);
        if let Err(e) = link.subscribe(filter, c.qos).await {
            sh.counters.connection(-1);
            return Err(format!("subscriber {index}: {e}"));
        }
        Ok(Self {
            index,
            link,
            keep_alive: session.keep_alive,
            qos2: InboundQos2::new(),
            stats: SubStats::new()?,
        })
    }

    /// The subscriber's index in its run.
    pub fn index_hint(&self) -> u32 {
        self.index
    }

    /// Receives until the run's stop token is cancelled. `target`: distinct messages after
    /// which this subscriber reports itself done (`sub --count`).
    pub async fn run(mut self, sh: &Shared, target: Option<u64>) -> SubStats {
        let result = self.receive(sh, target).await;
        match result {
            Ok(()) => self.link.disconnect().await,
            Err(e) => sh.counters.error(format!("subscriber {}: {e}", self.index)),
        }
        sh.counters.connection(-1);
        self.stats
    }

    async fn receive(&mut self, sh: &Shared, target: Option<u64>) -> Result<(), LinkError> {
        let ping_every = ping_interval(self.keep_alive);
        let mut last_write = Instant::now();
        let mut reached = false;
        loop {
            tokio::select! {
                biased;
                _ = sh.stop.cancelled() => return Ok(()),
                r = self.link.readable() => r?,
                _ = sleep_until((last_write + ping_every).into()) => {
                    self.link.queue(&Packet::PingReq)?;
                }
            }
            if !self.link.try_fill()? {
                return Err(LinkError::Closed);
            }
            let now_ns = sh.clock.now_ns();
            let warmup_end = sh.warmup_end_ns.load(Ordering::Relaxed);
            let unique_before = self.stats.unique;
            let mut credits = 0u64;
            while let Some(packet) = self.link.next_packet()? {
                match packet {
                    Packet::Publish(p) => {
                        match (p.qos, p.packet_id) {
                            (QoS::AtMostOnce, _) => {}
                            (QoS::AtLeastOnce, Some(id)) => {
                                self.link.queue(&Packet::PubAck(PubResponse::new(id)))?;
                            }
                            (QoS::ExactlyOnce, Some(id)) => {
                                self.link.queue(&Packet::PubRec(PubResponse::new(id)))?;
                                let fresh = self
                                    .qos2
                                    .publish(id, usize::from(u16::MAX))
                                    .map_err(|_| LinkError::Unexpected("QoS 2 PUBLISH"))?;
                                if fresh == Qos2Publish::Duplicate {
                                    continue;
                                }
                            }
                            _ => return Err(LinkError::Unexpected("PUBLISH without packet id")),
                        }
                        credits += self.stats.record(&p.payload, now_ns, warmup_end);
                    }
                    Packet::PubRel(r) => {
                        self.qos2.pubrel(r.packet_id);
                        self.link
                            .queue(&Packet::PubComp(PubResponse::new(r.packet_id)))?;
                    }
                    Packet::PingResp | Packet::SubAck(_) => {}
                    Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason)),
                    _ => return Err(LinkError::Unexpected("packet type for a subscriber")),
                }
            }
            if !self.link.wbuf.is_empty() {
                self.link.flush().await?;
                last_write = Instant::now();
            }
            if credits > 0
                && let Some(sem) = &sh.credits
            {
                sem.add_permits(usize::try_from(credits).unwrap_or(usize::MAX));
            }
            let new = self.stats.unique - unique_before;
            if new > 0 {
                sh.counters.delivered(new);
            }
            if !reached && target.is_some_and(|t| self.stats.unique >= t) {
                reached = true;
                sh.subs_done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
