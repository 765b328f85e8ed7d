//! Flow control of a publisher: the QoS 1/2 acknowledgement window and the rate pacer.
//!
//! [`AckWindow`] hands out packet identifiers in order and finds an acknowledged message by
//! arithmetic on its identifier, so every operation is O(1) however large the window. (The
//! shared `sagitta_proto::session::OutboundWindow` scans its slots for every identifier it
//! allocates, which at 1 024 messages in flight per publisher is a measurable cost for a load
//! generator; it also keeps no send time, which we need for the acknowledgement latency.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sagitta_proto::{PacketId, QoS};

/// Packet identifiers run 1..=65535.
const ID_SPACE: usize = u16::MAX as usize;

/// Stage of a message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, waiting for PUBACK.
    Puback,
    /// QoS 2, waiting for PUBREC.
    Pubrec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Pubcomp,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The flow is complete; the message was sent at this clock reading.
    Done(u64),
    /// QoS 2 PUBREC accepted: send PUBREL.
    SendPubRel,
}

/// Which acknowledgement arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// PUBACK.
    Puback,
    /// PUBREC (successful).
    Pubrec,
    /// PUBREC with an error reason code: the flow ends.
    PubrecRefused,
    /// PUBCOMP.
    Pubcomp,
}

/// The acknowledgement does not match anything in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownAck(pub u16);

/// QoS 1/2 messages in flight, in packet-identifier order.
#[derive(Debug)]
pub struct AckWindow {
    limit: usize,
    /// Packet identifier of `slots[0]`.
    front: u16,
    /// `None` once acknowledged (a hole until the front passes it).
    slots: VecDeque<Option<(Stage, u64)>>,
    live: usize,
}

fn id_after(id: u16, n: usize) -> u16 {
    // Identifiers 1..=65535 wrap to 1.
    let zero_based = (usize::from(id) - 1 + n) % ID_SPACE;
    u16::try_from(zero_based + 1).unwrap_or(1)
}

impl AckWindow {
    /// A window of at most `limit` unacknowledged messages (1..=65535).
    pub fn new(limit: u16) -> Self {
        Self {
            limit: usize::from(limit.max(1)),
            front: 1,
            slots: VecDeque::new(),
            live: 0,
        }
    }

    /// Unacknowledged messages.
    pub fn live(&self) -> usize {
        self.live
    }

    /// How many more messages may be sent now.
    pub fn space(&self) -> usize {
        // Holes behind a slow message also use identifiers: keep them unique.
        (self.limit - self.live.min(self.limit)).min(ID_SPACE - 1 - self.slots.len())
    }

    /// Puts a message sent at `sent_ns` in flight; `None` when there is no space.
    pub fn insert(&mut self, qos: QoS, sent_ns: u64) -> Option<PacketId> {
        if self.space() == 0 {
            return None;
        }
        let stage = if qos == QoS::ExactlyOnce {
            Stage::Pubrec
        } else {
            Stage::Puback
        };
        let id = id_after(self.front, self.slots.len());
        self.slots.push_back(Some((stage, sent_ns)));
        self.live += 1;
        PacketId::new(id)
    }

    /// Applies an acknowledgement for packet identifier `id`.
    pub fn ack(&mut self, id: PacketId, ack: Ack) -> Result<AckOutcome, UnknownAck> {
        let raw = id.get();
        let index = (usize::from(raw) + ID_SPACE - usize::from(self.front)) % ID_SPACE;
        let slot = self.slots.get_mut(index).ok_or(UnknownAck(raw))?;
        let (stage, sent_ns) = slot.ok_or(UnknownAck(raw))?;
        let outcome = match (stage, ack) {
            (Stage::Puback, Ack::Puback)
            | (Stage::Pubrec, Ack::PubrecRefused)
            | (Stage::Pubcomp, Ack::Pubcomp) => AckOutcome::Done(sent_ns),
            (Stage::Pubrec | Stage::Pubcomp, Ack::Pubrec) => {
                *slot = Some((Stage::Pubcomp, sent_ns));
                return Ok(AckOutcome::SendPubRel);
            }
            _ => return Err(UnknownAck(raw)),
        };
        *slot = None;
        self.live -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.front = id_after(self.front, 1);
        }
        Ok(outcome)
    }
}

/// Paces one publisher at a fixed rate (a token bucket refilled continuously).
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    per_sec: f64,
    /// Tokens used so far (including those written off after falling behind).
    used: u64,
    burst: u64,
}

impl Pacer {
    /// A pacer allowing `per_sec` messages per second from `start`.
    pub fn new(per_sec: f64, start: Instant) -> Self {
        Self {
            start,
            per_sec,
            used: 0,
            // Up to 100 ms of catch-up after a stall; beyond that the backlog is dropped so
            // the publisher does not burst.
            burst: (per_sec / 10.0).ceil().max(1.0) as u64,
        }
    }

    /// Messages that may be sent at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let earned = (elapsed * self.per_sec).floor() as u64 + 1;
        if earned > self.used + self.burst {
            self.used = earned - self.burst;
        }
        earned.saturating_sub(self.used)
    }

    /// Records `n` messages sent.
    pub fn consume(&mut self, n: u64) {
        self.used += n;
    }

    /// When the next token becomes available.
    pub fn next_at(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.used as f64 / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    #[test]
    fn qos1_in_order_and_out_of_order_acks() {
        let mut w = AckWindow::new(3);
        let a = w.insert(QoS::AtLeastOnce, 10).unwrap();
        let b = w.insert(QoS::AtLeastOnce, 20).unwrap();
        let c = w.insert(QoS::AtLeastOnce, 30).unwrap();
        assert_eq!((a.get(), b.get(), c.get()), (1, 2, 3));
        assert_eq!(w.space(), 0);
        assert_eq!(w.insert(QoS::AtLeastOnce, 40), None);
        assert_eq!(w.ack(b, Ack::Puback), Ok(AckOutcome::Done(20)));
        assert_eq!(w.ack(b, Ack::Puback), Err(UnknownAck(2)));
        assert_eq!(w.space(), 1);
        let d = w.insert(QoS::AtLeastOnce, 40).unwrap();
        assert_eq!(d.get(), 4);
        assert_eq!(w.ack(a, Ack::Puback), Ok(AckOutcome::Done(10)));
        assert_eq!(w.ack(c, Ack::Puback), Ok(AckOutcome::Done(30)));
        assert_eq!(w.ack(d, Ack::Puback), Ok(AckOutcome::Done(40)));
        assert_eq!(w.live(), 0);
        assert_eq!(w.ack(pid(9), Ack::Puback), Err(UnknownAck(9)));
    }

    #[test]
    fn qos2_flow() {
        let mut w = AckWindow::new(10);
        let a = w.insert(QoS::ExactlyOnce, 5).unwrap();
        assert_eq!(w.ack(a, Ack::Puback), Err(UnknownAck(1)));
        assert_eq!(w.ack(a, Ack::Pubcomp), Err(UnknownAck(1)));
        assert_eq!(w.ack(a, Ack::Pubrec), Ok(AckOutcome::SendPubRel));
        // A repeated PUBREC asks for PUBREL again.
        assert_eq!(w.ack(a, Ack::Pubrec), Ok(AckOutcome::SendPubRel));
        assert_eq!(w.ack(a, Ack::Pubcomp), Ok(AckOutcome::Done(5)));
        let b = w.insert(QoS::ExactlyOnce, 6).unwrap();
        assert_eq!(w.ack(b, Ack::PubrecRefused), Ok(AckOutcome::Done(6)));
        assert_eq!(w.live(), 0);
    }

    #[test]
    fn identifiers_wrap_and_skip_zero() {
        let mut w = AckWindow::new(1000);
        let mut last = 0u16;
        for i in 0..200_000u64 {
            let id = w.insert(QoS::AtLeastOnce, i).unwrap();
            assert_ne!(id.get(), last);
            last = id.get();
            assert_eq!(w.ack(id, Ack::Puback), Ok(AckOutcome::Done(i)));
        }
    }

    #[test]
    fn a_stuck_message_keeps_identifiers_unique() {
        let mut w = AckWindow::new(u16::MAX);
        let stuck = w.insert(QoS::AtLeastOnce, 0).unwrap();
        let mut n = 0u64;
        while let Some(id) = w.insert(QoS::AtLeastOnce, 1) {
            assert_ne!(id, stuck);
            assert_eq!(w.ack(id, Ack::Puback), Ok(AckOutcome::Done(1)));
            n += 1;
        }
        assert_eq!(n, u64::from(u16::MAX) - 2);
        assert_eq!(w.ack(stuck, Ack::Puback), Ok(AckOutcome::Done(0)));
        assert!(w.space() > 0);
    }

    #[test]
    fn pacer_spreads_messages_over_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000.0, t0);
        assert_eq!(p.available(t0), 1);
        p.consume(1);
        assert_eq!(p.available(t0), 0);
        let next = p.next_at().duration_since(t0);
        assert!(next.abs_diff(Duration::from_millis(1)) < Duration::from_micros(1));
        assert_eq!(p.available(t0 + Duration::from_millis(10)), 10);
        p.consume(10);
        // After a long stall only a 100 ms burst is allowed.
        assert_eq!(p.available(t0 + Duration::from_secs(5)), 100);
    }
}
