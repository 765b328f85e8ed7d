//! Statistics kept by each simulated client without locks, and merged at the end.
//!
//! A subscriber owns a [`SubStats`]: an end-to-end latency histogram and, per publisher, a
//! [`PairTrack`] that classifies every arrival as in order, after a gap, late (fills an
//! earlier gap: out of order) or duplicate. A publisher owns a [`PubStats`]. When the run
//! ends the coordinator folds them into [`Totals`], computing losses per (publisher,
//! subscriber) pair from the number of messages each publisher sent.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::payload::Header;

/// Largest latency recorded exactly, in microseconds (one hour); larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Most distinct gaps remembered per pair. Past it the oldest gap is forgotten: its messages
/// count as lost, and a late arrival into it counts as a duplicate.
const MAX_GAPS: usize = 65_536;

/// Most publishers a subscriber tracks by id (a foreign payload could claim any id).
pub const MAX_PUBLISHERS: u32 = 1 << 20;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| format!("histogram: {e}"))
}

/// Records a latency in nanoseconds into a microsecond histogram.
pub fn record_ns(hist: &mut Histogram<u64>, ns: u64) {
    hist.saturating_record((ns / 1_000).max(1));
}

/// How one message arrived, for one (publisher, subscriber) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next sequence number.
    InOrder,
    /// A later sequence number: this many messages before it are missing (for now).
    Gap(u64),
    /// A missing message arrived after later ones: out of order.
    Late,
    /// A message already received.
    Duplicate,
}

impl Arrival {
    /// Deliveries this arrival settles for the closed loop: the message itself when it is new
    /// and in sequence, plus the messages skipped by a gap (they are presumed lost, and a late
    /// arrival of one of them settles nothing more). Every delivery is settled at most once.
    pub fn credits(self) -> u64 {
        match self {
            Arrival::InOrder => 1,
            Arrival::Gap(g) => g.saturating_add(1),
            Arrival::Late | Arrival::Duplicate => 0,
        }
    }

    /// True if this is the first receipt of the message.
    pub fn is_new(self) -> bool {
        !matches!(self, Arrival::Duplicate)
    }
}

/// Order, loss and duplicate tracking for the messages of one publisher at one subscriber.
#[derive(Debug, Clone, Default)]
pub struct PairTrack {
    /// One past the highest sequence number seen.
    next: u64,
    /// Distinct sequence numbers received.
    unique: u64,
    /// Gaps not filled yet, as `start -> end` (exclusive) ranges.
    missing: BTreeMap<u64, u64>,
}

impl PairTrack {
    /// Classifies the arrival of `seq` and updates the state.
    pub fn on_seq(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
            Arrival::InOrder
        } else if seq > self.next {
            let gap = seq - self.next;
            if self.missing.len() >= MAX_GAPS {
                self.missing.pop_first();
            }
            self.missing.insert(self.next, seq);
            self.next = seq.saturating_add(1);
            self.unique += 1;
            Arrival::Gap(gap)
        } else if self.take_missing(seq) {
            self.unique += 1;
            Arrival::Late
        } else {
            Arrival::Duplicate
        }
    }

    fn take_missing(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        true
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// One past the highest sequence number seen (a lower bound of what was sent).
    pub fn highest_plus_one(&self) -> u64 {
        self.next
    }
}

/// What one subscriber saw.
#[derive(Debug, Clone)]
pub struct SubStats {
    /// End-to-end latency (µs) of new messages received after the warm-up.
    pub latency: Histogram<u64>,
    /// Per publisher id.
    pub pairs: Vec<PairTrack>,
    /// PUBLISH packets received, duplicates and foreign payloads included.
    pub received: u64,
    /// Distinct benchmark messages received.
    pub unique: u64,
    /// Distinct messages received after the warm-up (for the delivery rate).
    pub measured: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages that arrived after a later message of the same publisher.
    pub out_of_order: u64,
    /// Payloads without a bench header (too short or an unknown publisher id).
    pub foreign: u64,
    /// Clock reading of the last new message received after the warm-up.
    pub last_ns: Option<u64>,
}

impl SubStats {
    /// Empty statistics.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            latency: histogram()?,
            pairs: Vec::new(),
            received: 0,
            unique: 0,
            measured: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            last_ns: None,
        })
    }

    /// Accounts for one received payload at clock reading `now_ns`; latency and rate count
    /// only when `now_ns >= warmup_end_ns`. Returns the deliveries it settles (see
    /// [`Arrival::credits`]).
    pub fn record(&mut self, payload: &[u8], now_ns: u64, warmup_end_ns: u64) -> u64 {
        self.received += 1;
        let Some(h) = Header::read(payload).filter(|h| h.publisher < MAX_PUBLISHERS) else {
            self.foreign += 1;
            return 0;
        };
        let idx = h.publisher as usize;
        if idx >= self.pairs.len() {
            self.pairs.resize_with(idx + 1, PairTrack::default);
        }
        let arrival = self.pairs[idx].on_seq(h.seq);
        match arrival {
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Late => self.out_of_order += 1,
            Arrival::InOrder | Arrival::Gap(_) => {}
        }
        if arrival.is_new() {
            self.unique += 1;
            if now_ns >= warmup_end_ns {
                self.measured += 1;
                self.last_ns = Some(now_ns);
                record_ns(&mut self.latency, now_ns.saturating_sub(h.sent_ns));
            }
        }
        arrival.credits()
    }

    /// Messages of `publisher` missing here, given that it sent `sent` (`None`: unknown, count
    /// only the gaps below the highest sequence number seen).
    pub fn lost_from(&self, publisher: u32, sent: Option<u64>) -> u64 {
        let track = self.pairs.get(publisher as usize);
        let unique = track.map_or(0, PairTrack::unique);
        match sent {
            Some(sent) => sent.saturating_sub(unique),
            None => track.map_or(0, |t| t.highest_plus_one().saturating_sub(unique)),
        }
    }
}

/// What one publisher did.
#[derive(Debug, Clone)]
pub struct PubStats {
    /// Messages sent (sequence numbers `0..sent`).
    pub sent: u64,
    /// Messages sent after the warm-up (for the publish rate).
    pub measured: u64,
    /// Clock reading of the last write of messages.
    pub last_send_ns: Option<u64>,
    /// QoS 1/2 messages acknowledged (PUBACK, or PUBCOMP).
    pub acked: u64,
    /// QoS 1/2 messages refused by the broker (error reason code).
    pub refused: u64,
    /// QoS 1/2 messages still unacknowledged when the publisher stopped.
    pub unacked: u64,
    /// Latency (µs) from send to PUBACK / PUBCOMP, after the warm-up.
    pub ack_latency: Histogram<u64>,
}

impl PubStats {
    /// Empty statistics.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            sent: 0,
            measured: 0,
            last_send_ns: None,
            acked: 0,
            refused: 0,
            unacked: 0,
            ack_latency: histogram()?,
        })
    }
}

/// Everything merged.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Messages published.
    pub published: u64,
    /// Messages published after the warm-up.
    pub published_measured: u64,
    /// Last publish write, clock reading.
    pub last_send_ns: Option<u64>,
    /// QoS 1/2 acknowledgements received.
    pub acked: u64,
    /// QoS 1/2 publishes refused by the broker.
    pub refused: u64,
    /// QoS 1/2 publishes never acknowledged.
    pub unacked: u64,
    /// Publish-to-acknowledgement latency (µs).
    pub ack_latency: Histogram<u64>,
    /// Deliveries expected by the subscribers (`None` when unknown, as in `sub`).
    pub expected: Option<u64>,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Distinct deliveries after the warm-up.
    pub delivered_measured: u64,
    /// PUBLISH packets received in all.
    pub received: u64,
    /// Last delivery after the warm-up, clock reading.
    pub last_delivery_ns: Option<u64>,
    /// End-to-end latency (µs).
    pub latency: Histogram<u64>,
    /// Deliveries expected but not received.
    pub losses: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    /// Deliveries out of order.
    pub out_of_order: u64,
    /// Payloads without a bench header.
    pub foreign: u64,
}

impl Totals {
    /// Empty totals.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            published: 0,
            published_measured: 0,
            last_send_ns: None,
            acked: 0,
            refused: 0,
            unacked: 0,
            ack_latency: histogram()?,
            expected: None,
            delivered: 0,
            delivered_measured: 0,
            received: 0,
            last_delivery_ns: None,
            latency: histogram()?,
            losses: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
        })
    }

    /// Adds a publisher's statistics.
    pub fn add_pub(&mut self, p: &PubStats) -> Result<(), String> {
        self.published += p.sent;
        self.published_measured += p.measured;
        self.last_send_ns = self.last_send_ns.max(p.last_send_ns);
        self.acked += p.acked;
        self.refused += p.refused;
        self.unacked += p.unacked;
        self.ack_latency
            .add(&p.ack_latency)
            .map_err(|e| format!("merging histograms: {e}"))
    }

    /// Adds a subscriber's statistics. `expected` lists the publishers whose messages it
    /// should all have received, with how many each sent; `None` means unknown (then only
    /// gaps count as losses, for every publisher seen).
    pub fn add_sub(&mut self, s: &SubStats, expected: Option<&[(u32, u64)]>) -> Result<(), String> {
        match expected {
            Some(list) => {
                let mut want = 0u64;
                for &(publisher, sent) in list {
                    want += sent;
                    self.losses += s.lost_from(publisher, Some(sent));
                }
                *self.expected.get_or_insert(0) += want;
            }
            None => {
                for publisher in 0..s.pairs.len() {
                    let id = u32::try_from(publisher).unwrap_or(u32::MAX);
                    self.losses += s.lost_from(id, None);
                }
            }
        }
        self.delivered += s.unique;
        self.delivered_measured += s.measured;
        self.received += s.received;
        self.last_delivery_ns = self.last_delivery_ns.max(s.last_ns);
        self.duplicates += s.duplicates;
        self.out_of_order += s.out_of_order;
        self.foreign += s.foreign;
        self.latency
            .add(&s.latency)
            .map_err(|e| format!("merging histograms: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::payload::HEADER_LEN;

    fn payload(publisher: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + 4];
        assert!(
            Header {
                publisher,
                seq,
                sent_ns
            }
            .write(&mut p)
        );
        p
    }

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut t = PairTrack::default();
        for seq in 0..100 {
            assert_eq!(t.on_seq(seq), Arrival::InOrder);
        }
        assert_eq!(t.unique(), 100);
        assert_eq!(t.highest_plus_one(), 100);
    }

    #[test]
    fn gap_then_late_then_duplicate() {
        let mut t = PairTrack::default();
        assert_eq!(t.on_seq(0), Arrival::InOrder);
        assert_eq!(t.on_seq(4), Arrival::Gap(3)); // 1, 2, 3 missing
        assert_eq!(t.on_seq(2), Arrival::Late); // splits the gap into {1} and {3}
        assert_eq!(t.on_seq(2), Arrival::Duplicate);
        assert_eq!(t.on_seq(1), Arrival::Late);
        assert_eq!(t.on_seq(3), Arrival::Late);
        assert_eq!(t.on_seq(3), Arrival::Duplicate);
        assert_eq!(t.on_seq(4), Arrival::Duplicate);
        assert_eq!(t.on_seq(0), Arrival::Duplicate);
        assert_eq!(t.on_seq(5), Arrival::InOrder);
        assert_eq!(t.unique(), 6);
    }

    #[test]
    fn credits_settle_each_delivery_once() {
        let mut t = PairTrack::default();
        let seqs = [0u64, 1, 5, 3, 3, 2, 4, 6, 6, 7];
        let credits: u64 = seqs.iter().map(|&s| t.on_seq(s).credits()).sum();
        assert_eq!(credits, 8); // seqs 0..=7, each once
    }

    #[test]
    fn losses_duplicates_and_order_per_pair() {
        let mut s = SubStats::new().unwrap();
        // Publisher 0 sends 0..5; 2 is lost, 4 arrives twice, 3 before 1.
        for seq in [0u64, 3, 1, 4, 4] {
            s.record(&payload(0, seq, 0), 1_000_000, 0);
        }
        // Publisher 1 sends 0..3, all in order.
        for seq in 0..3u64 {
            s.record(&payload(1, seq, 0), 2_000_000, 0);
        }
        // A foreign payload.
        assert_eq!(s.record(b"hello", 3_000_000, 0), 0);
        assert_eq!(s.received, 9);
        assert_eq!(s.unique, 7);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.out_of_order, 1);
        assert_eq!(s.foreign, 1);
        assert_eq!(s.lost_from(0, Some(5)), 1);
        assert_eq!(s.lost_from(1, Some(3)), 0);
        assert_eq!(s.lost_from(2, Some(10)), 10); // never heard from
        assert_eq!(s.lost_from(0, None), 1); // gap below the highest seen
        let mut totals = Totals::new().unwrap();
        totals.add_sub(&s, Some(&[(0, 5), (1, 3)])).unwrap();
        assert_eq!(totals.losses, 1);
        assert_eq!(totals.expected, Some(8));
        assert_eq!(totals.delivered, 7);
        assert_eq!(totals.duplicates, 1);
        assert_eq!(totals.out_of_order, 1);
        assert_eq!(totals.latency.len(), 7);
    }

    #[test]
    fn warmup_excludes_latency_and_rate() {
        let mut s = SubStats::new().unwrap();
        s.record(&payload(0, 0, 0), 500, 1_000);
        s.record(&payload(0, 1, 0), 2_000, 1_000);
        assert_eq!(s.unique, 2);
        assert_eq!(s.measured, 1);
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.last_ns, Some(2_000));
    }

    #[test]
    fn merging_two_subscribers_and_publishers() {
        let mut a = SubStats::new().unwrap();
        let mut b = SubStats::new().unwrap();
        for seq in 0..100u64 {
            // a sees 1 ms latencies, b sees 3 ms.
            a.record(&payload(0, seq, 10_000_000), 11_000_000, 0);
            b.record(&payload(0, seq, 10_000_000), 13_000_000 + seq, 0);
        }
        let mut totals = Totals::new().unwrap();
        totals.add_sub(&a, Some(&[(0, 100)])).unwrap();
        totals.add_sub(&b, Some(&[(0, 120)])).unwrap();
        assert_eq!(totals.delivered, 200);
        assert_eq!(totals.losses, 20);
        assert_eq!(totals.expected, Some(220));
        assert_eq!(totals.last_delivery_ns, Some(13_000_099));
        assert_eq!(totals.latency.len(), 200);
        assert_eq!(totals.latency.value_at_quantile(0.25), 1_000);
        assert!(totals.latency.value_at_quantile(0.75) >= 2_990);
        assert!(totals.latency.max() <= 3_010);

        let mut p1 = PubStats::new().unwrap();
        p1.sent = 10;
        p1.measured = 8;
        p1.acked = 10;
        p1.last_send_ns = Some(5);
        record_ns(&mut p1.ack_latency, 2_000_000);
        let mut p2 = PubStats::new().unwrap();
        p2.sent = 7;
        p2.measured = 7;
        p2.unacked = 1;
        p2.last_send_ns = Some(9);
        totals.add_pub(&p1).unwrap();
        totals.add_pub(&p2).unwrap();
        assert_eq!(totals.published, 17);
        assert_eq!(totals.published_measured, 15);
        assert_eq!(totals.unacked, 1);
        assert_eq!(totals.last_send_ns, Some(9));
        assert_eq!(totals.ack_latency.len(), 1);
    }

    #[test]
    fn gap_memory_is_bounded() {
        let mut t = PairTrack::default();
        for i in 0..(MAX_GAPS as u64 + 10) {
            t.on_seq(i * 2 + 1); // every even seq is missing
        }
        assert!(t.missing.len() <= MAX_GAPS);
        // The oldest gap (seq 0) was forgotten: its late arrival reads as a duplicate.
        assert_eq!(t.on_seq(0), Arrival::Duplicate);
        // A recent gap is still known.
        let recent = (MAX_GAPS as u64 + 9) * 2;
        assert_eq!(t.on_seq(recent), Arrival::Late);
    }
}
