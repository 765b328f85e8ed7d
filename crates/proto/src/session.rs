//! Per-session protocol state shared by broker and client: packet identifiers, the outbound
//! in-flight window with the QoS 1/2 flows, inbound QoS 2 de-duplication, topic aliases and
//! keep-alive deadlines. Sans-IO: callers pass time in and send the packets these return.
//!
//! Order of use on the sending side: [`OutboundWindow::insert`] a QoS 1/2 message (it assigns a
//! packet id), send PUBLISH; on PUBACK call [`OutboundWindow::puback`]; on PUBREC call
//! [`OutboundWindow::pubrec`] and send the PUBREL it asks for; on PUBCOMP call
//! [`OutboundWindow::pubcomp`]. After a reconnect, [`OutboundWindow::resend`] lists what to
//! send again, in the original order (PUBLISH with DUP, or PUBREL).
//!
//! On the receiving side: [`InboundQos2::publish`] says whether a QoS 2 PUBLISH is new (deliver
//! it now, forward-on-receipt) or a duplicate (only acknowledge); [`InboundQos2::pubrel`]
//! releases its packet id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use crate::reason::ReasonCode;
use crate::string::MqttStr;
use crate::topic::TopicName;
use crate::types::{PacketId, QoS};

/// Why an acknowledgement does not fit the session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// No message in flight has this packet id (5.0: reason 0x92 for PUBREL/PUBCOMP).
    #[error("packet identifier {0} is not in flight")]
    UnknownPacketId(u16),
    /// The acknowledgement does not match the message's QoS or stage (PUBACK for QoS 2...).
    #[error("unexpected acknowledgement for packet identifier {0}")]
    UnexpectedAck(u16),
    /// The window is full: the peer's Receive Maximum is reached.
    #[error("in-flight window is full")]
    WindowFull,
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

#[derive(Debug, Clone)]
struct Slot<T> {
    id: PacketId,
    stage: Stage,
    /// The counter step at which `id` was taken (see [`OutboundWindow::steps`]).
    step: u64,
    item: T,
}

/// Outbound QoS 1/2 messages in flight, in send order, bounded by the peer's Receive Maximum.
#[derive(Debug, Clone)]
pub struct OutboundWindow<T> {
    slots: VecDeque<Slot<T>>,
    limit: usize,
    next_id: u16,
    /// How many ids the rotating counter has offered so far. Slots are in allocation order,
    /// so while fewer than 65 535 steps separate the oldest slot from now, every id in flight
    /// was taken less than one lap ago and the counter's next id cannot be one of them: the
    /// common case needs no scan of the window.
    steps: u64,
}

/// Result of a PUBREC.
#[derive(Debug, PartialEq, Eq)]
pub enum PubRecOutcome<T> {
    /// Send PUBREL with this packet id; the message stays in flight until PUBCOMP.
    SendPubRel(PacketId),
    /// The receiver refused the message (reason code >= 0x80): the flow ends here.
    Refused(T, ReasonCode),
}

impl<T> OutboundWindow<T> {
    /// An empty window allowing `limit` messages in flight (at least 1).
    pub fn new(limit: u16) -> Self {
        Self {
            slots: VecDeque::new(),
            limit: usize::from(limit.max(1)),
            next_id: 1,
            steps: 0,
        }
    }

    /// Changes the limit (e.g. after a new CONNACK). Messages already in flight stay.
    pub fn set_limit(&mut self, limit: u16) {
        self.limit = usize::from(limit.max(1));
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// How many messages may be in flight at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many more messages may be put in flight now.
    pub fn space(&self) -> usize {
        self.limit.saturating_sub(self.slots.len())
    }

    /// True if no more message may be sent until one completes.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.limit
    }

    /// Puts a QoS 1/2 message in flight and assigns it an unused packet id.
    pub fn insert(&mut self, qos: QoS, item: T) -> Result<PacketId, FlowError> {
        if self.is_full() || self.slots.len() >= usize::from(u16::MAX) {
            return Err(FlowError::WindowFull);
        }
        let stage = match qos {
            QoS::ExactlyOnce => Stage::AwaitingPubRec,
            _ => Stage::AwaitingPubAck,
        };
        let (id, step) = self.allocate();
        self.slots.push_back(Slot {
            id,
            stage,
            step,
            item,
        });
        Ok(id)
    }

    /// Puts back a message that was in flight with packet id `id` at `stage`, e.g. read from a
    /// store after a restart, after those in flight already; allowed beyond the limit. The
    /// counter goes on after `id`. [`FlowError::UnexpectedAck`] if `id` is in flight already.
    pub fn restore(&mut self, id: PacketId, stage: Stage, item: T) -> Result<(), FlowError> {
        if self.contains(id) {
            return Err(FlowError::UnexpectedAck(id.get()));
        }
        // Restored ids were not taken from the counter: step 0 makes every allocation check
        // the window until they are gone (see `in_use`).
        self.steps = self.steps.max(u64::from(u16::MAX));
        self.next_id = id.get().checked_add(1).unwrap_or(1);
        self.slots.push_back(Slot {
            id,
            stage,
            step: 0,
            item,
        });
        Ok(())
    }

    /// The message in flight with packet id `id`.
    pub fn get(&self, id: PacketId) -> Option<&T> {
        self.position(id).ok().map(|i| &self.slots[i].item)
    }

    /// The message most recently put in flight, e.g. to encode it right after
    /// [`Self::insert`] took it.
    pub fn last(&self) -> Option<&T> {
        self.slots.back().map(|s| &s.item)
    }

    /// True if a message with packet id `id` is in flight.
    pub fn contains(&self, id: PacketId) -> bool {
        self.slots.iter().any(|s| s.id == id)
    }

    /// Like [`Self::insert`], but also skips packet ids for which `reserved` returns true. A
    /// client uses it to keep the ids of its QoS 1/2 PUBLISHes apart from those of its
    /// unacknowledged SUBSCRIBE and UNSUBSCRIBE packets: they share one id space
    /// [MQTT-2.2.1-3]. [`FlowError::WindowFull`] also when no id is free.
    pub fn insert_avoiding(
        &mut self,
        qos: QoS,
        item: T,
        reserved: impl Fn(PacketId) -> bool,
    ) -> Result<PacketId, FlowError> {
        if self.is_full() {
            return Err(FlowError::WindowFull);
        }
        let (id, step) = self
            .allocate_avoiding(&reserved)
            .ok_or(FlowError::WindowFull)?;
        let stage = match qos {
            QoS::ExactlyOnce => Stage::AwaitingPubRec,
            _ => Stage::AwaitingPubAck,
        };
        self.slots.push_back(Slot {
            id,
            stage,
            step,
            item,
        });
        Ok(id)
    }

    /// Allocates a packet id that is neither in flight nor `reserved`, from the same rotating
    /// counter as [`Self::insert`], without putting anything in flight: for a SUBSCRIBE or
    /// UNSUBSCRIBE, whose id the caller holds until the SUBACK or UNSUBACK. `None` if every id
    /// is taken.
    pub fn allocate_id(&mut self, reserved: impl Fn(PacketId) -> bool) -> Option<PacketId> {
        self.allocate_avoiding(&reserved).map(|(id, _)| id)
    }

    fn allocate_avoiding(
        &mut self,
        reserved: &impl Fn(PacketId) -> bool,
    ) -> Option<(PacketId, u64)> {
        for _ in 0..u16::MAX {
            let (candidate, step) = self.step();
            if !reserved(candidate) && !self.in_use(candidate, step) {
                return Some((candidate, step));
            }
        }
        None
    }

    /// The next id not in flight and its counter step. The caller has checked that the
    /// window holds fewer than 65 535 messages, so a free id exists.
    fn allocate(&mut self) -> (PacketId, u64) {
        loop {
            let (candidate, step) = self.step();
            if !self.in_use(candidate, step) {
                return (candidate, step);
            }
        }
    }

    /// Advances the rotating counter (1..=65 535) by one id.
    fn step(&mut self) -> (PacketId, u64) {
        let candidate = NonZeroU16::new(self.next_id).unwrap_or(NonZeroU16::MIN);
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let step = self.steps;
        self.steps += 1;
        (candidate, step)
    }

    /// Lets the counter skip ids up to `id` (the next one offered), as a long run of other
    /// messages would.
    #[cfg(test)]
    fn jump_to(&mut self, id: u16) {
        while self.next_id != id {
            self.step();
        }
    }

    /// Whether `candidate`, offered at counter step `step`, is in flight.
    fn in_use(&self, candidate: PacketId, step: u64) -> bool {
        match self.slots.front() {
            None => false,
            // Everything in flight was taken within the last lap of the counter.
            Some(oldest) if step - oldest.step < u64::from(u16::MAX) => false,
            Some(_) => self.contains(candidate),
        }
    }

    fn position(&self, id: PacketId) -> Result<usize, FlowError> {
        // Ids are mostly consecutive in send order, so the id's distance from the oldest one
        // is usually its index: acknowledgements in order (and QoS 2 windows holding messages
        // awaiting PUBCOMP) then need no scan.
        if let Some(oldest) = self.slots.front() {
            let guess = (i32::from(id.get()) - i32::from(oldest.id.get())).rem_euclid(65_535);
            if let Ok(i) = usize::try_from(guess)
                && self.slots.get(i).is_some_and(|s| s.id == id)
            {
                return Ok(i);
            }
        }
        self.slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(FlowError::UnknownPacketId(id.get()))
    }

    fn remove(&mut self, index: usize, id: PacketId) -> Result<T, FlowError> {
        self.slots
            .remove(index)
            .map(|s| s.item)
            .ok_or(FlowError::UnknownPacketId(id.get()))
    }

    /// Completes a QoS 1 message.
    pub fn puback(&mut self, id: PacketId) -> Result<T, FlowError> {
        let i = self.position(id)?;
        if self.slots[i].stage != Stage::AwaitingPubAck {
            return Err(FlowError::UnexpectedAck(id.get()));
        }
        self.remove(i, id)
    }

    /// Advances a QoS 2 message on PUBREC. A repeated PUBREC (after a resend) asks for PUBREL
    /// again.
    pub fn pubrec(
        &mut self,
        id: PacketId,
        reason: ReasonCode,
    ) -> Result<PubRecOutcome<T>, FlowError> {
        let i = self.position(id)?;
        match self.slots[i].stage {
            Stage::AwaitingPubAck => Err(FlowError::UnexpectedAck(id.get())),
            _ if reason.is_error() => Ok(PubRecOutcome::Refused(self.remove(i, id)?, reason)),
            _ => {
                self.slots[i].stage = Stage::AwaitingPubComp;
                Ok(PubRecOutcome::SendPubRel(id))
            }
        }
    }

    /// Completes a QoS 2 message on PUBCOMP.
    pub fn pubcomp(&mut self, id: PacketId) -> Result<T, FlowError> {
        let i = self.position(id)?;
        if self.slots[i].stage != Stage::AwaitingPubComp {
            return Err(FlowError::UnexpectedAck(id.get()));
        }
        self.remove(i, id)
    }

    /// What to send again after a reconnect, in the original order: a PUBLISH with DUP set
    /// for [`Stage::AwaitingPubAck`] and [`Stage::AwaitingPubRec`], a PUBREL for
    /// [`Stage::AwaitingPubComp`] [MQTT-4.4.0-1].
    pub fn resend(&self) -> impl Iterator<Item = (PacketId, Stage, &T)> {
        self.slots.iter().map(|s| (s.id, s.stage, &s.item))
    }

    /// Removes everything in flight, in order (e.g. when a session ends).
    pub fn drain(&mut self) -> impl Iterator<Item = (PacketId, Stage, T)> + '_ {
        self.slots.drain(..).map(|s| (s.id, s.stage, s.item))
    }
}

/// What to do with an incoming QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Publish {
    /// First time this packet id is seen: deliver the message, answer PUBREC.
    New,
    /// A re-send of a message already delivered: answer PUBREC only.
    Duplicate,
}

/// Hashes a packet id by one multiplication (Fibonacci hashing): ids are small integers, at
/// most a Receive Maximum of them are tracked, and SipHash costs more than the set work.
#[derive(Debug, Clone, Copy, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n);
    }
}

type IdHasherBuilder = std::hash::BuildHasherDefault<IdHasher>;

/// Incoming QoS 2 packet ids between PUBLISH and PUBREL.
#[derive(Debug, Clone, Default)]
pub struct InboundQos2 {
    pending: HashSet<u16, IdHasherBuilder>,
}

impl InboundQos2 {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a QoS 2 PUBLISH, refusing a new id when `limit` ids are already pending (5.0:
    /// the sender exceeded our Receive Maximum, reason 0x93).
    pub fn publish(&mut self, id: PacketId, limit: usize) -> Result<Qos2Publish, FlowError> {
        if self.pending.contains(&id.get()) {
            return Ok(Qos2Publish::Duplicate);
        }
        if self.pending.len() >= limit {
            return Err(FlowError::WindowFull);
        }
        self.pending.insert(id.get());
        Ok(Qos2Publish::New)
    }

    /// Releases a packet id on PUBREL. The answer is PUBCOMP with Success, or with 0x92
    /// (Packet Identifier not found) if the id was not pending.
    pub fn pubrel(&mut self, id: PacketId) -> ReasonCode {
        if self.pending.remove(&id.get()) {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        }
    }

    /// Number of ids awaiting PUBREL.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True if no id awaits PUBREL.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The pending ids (for persistence).
    pub fn pending(&self) -> impl Iterator<Item = u16> + '_ {
        self.pending.iter().copied()
    }

    /// Puts back an id that awaited PUBREL, e.g. read from a store after a restart.
    pub fn restore(&mut self, id: PacketId) {
        self.pending.insert(id.get());
    }

    /// Forgets every pending id (a new session).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Why a Topic Alias in a received PUBLISH is invalid (5.0 reason 0x94).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// The alias is above the maximum we announced [MQTT-3.3.2-9].
    #[error("topic alias {0} is above the maximum of {1}")]
    OutOfRange(u16, u16),
    /// An empty topic name with an alias that has no topic yet (a Protocol Error).
    #[error("topic alias {0} is not set")]
    Unknown(u16),
}

/// Topic aliases received from the peer: alias → topic, up to the maximum we announced.
#[derive(Debug, Clone, Default)]
pub struct InboundAliases {
    max: u16,
    map: HashMap<u16, TopicName>,
}

impl InboundAliases {
    /// A map accepting aliases 1..=`max` (0: aliases not allowed).
    pub fn new(max: u16) -> Self {
        Self {
            max,
            map: HashMap::new(),
        }
    }

    /// Resolves the topic of a received PUBLISH: a non-empty topic with an alias sets the
    /// alias; an empty topic uses it.
    pub fn resolve(
        &mut self,
        topic: &TopicName,
        alias: Option<NonZeroU16>,
    ) -> Result<TopicName, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic.clone());
        };
        let a = alias.get();
        if a > self.max {
            return Err(AliasError::OutOfRange(a, self.max));
        }
        if topic.is_empty() {
            self.map.get(&a).cloned().ok_or(AliasError::Unknown(a))
        } else {
            self.map.insert(a, topic.clone());
            Ok(topic.clone())
        }
    }
}

/// How to send a topic given the peer's Topic Alias Maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundAlias {
    /// Send the topic without an alias.
    None,
    /// Send the topic and set this alias for it.
    Set(NonZeroU16),
    /// Send an empty topic with this alias.
    Use(NonZeroU16),
}

/// Topic aliases we assign when sending: the first `max` distinct topics get an alias, later
/// PUBLISHes to them are sent with an empty topic.
#[derive(Debug, Clone, Default)]
pub struct OutboundAliases {
    max: u16,
    map: HashMap<MqttStr, NonZeroU16>,
}

impl OutboundAliases {
    /// An allocator for a peer whose Topic Alias Maximum is `max` (0: none).
    pub fn new(max: u16) -> Self {
        Self {
            max,
            map: HashMap::new(),
        }
    }

    /// Chooses how to send `topic`.
    pub fn assign(&mut self, topic: &TopicName) -> OutboundAlias {
        if let Some(alias) = self.map.get(topic.as_str()) {
            return OutboundAlias::Use(*alias);
        }
        let next = self.map.len() + 1;
        match u16::try_from(next)
            .ok()
            .filter(|n| *n <= self.max)
            .and_then(NonZeroU16::new)
        {
            Some(alias) => {
                self.map.insert(topic.as_mqtt_str().clone(), alias);
                OutboundAlias::Set(alias)
            }
            None => OutboundAlias::None,
        }
    }
}

/// The server's keep-alive rule: the connection is closed when nothing has been received for
/// one and a half times the keep-alive [MQTT-3.1.2-24].
pub fn server_keep_alive_deadline(last_received: Instant, keep_alive: u16) -> Option<Instant> {
    if keep_alive == 0 {
        return None;
    }
    Some(last_received + Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// The client's keep-alive rule: a PINGREQ is due when nothing has been sent for the
/// keep-alive interval [MQTT-3.1.2-23].
pub fn client_ping_due(last_sent: Instant, keep_alive: u16) -> Option<Instant> {
    if keep_alive == 0 {
        return None;
    }
    Some(last_sent + Duration::from_secs(u64::from(keep_alive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_slots_keep_their_ids_and_new_ids_avoid_them() {
        let mut w: OutboundWindow<u32> = OutboundWindow::new(10);
        let id = |v| NonZeroU16::new(v).unwrap();
        w.restore(id(2), Stage::AwaitingPubComp, 20).unwrap();
        w.restore(id(1), Stage::AwaitingPubAck, 10).unwrap();
        assert!(w.restore(id(2), Stage::AwaitingPubAck, 0).is_err());
        let resend: Vec<_> = w.resend().map(|(i, s, v)| (i.get(), s, *v)).collect();
        assert_eq!(
            resend,
            [
                (2, Stage::AwaitingPubComp, 20),
                (1, Stage::AwaitingPubAck, 10)
            ]
        );
        // The counter goes on after the last restored id and skips those in flight.
        let mut fresh = Vec::new();
        for n in 0..3 {
            fresh.push(w.insert(QoS::AtLeastOnce, 100 + n).unwrap().get());
        }
        assert_eq!(fresh, [3, 4, 5]);
        assert_eq!(w.get(id(2)), Some(&20));
        assert_eq!(w.pubcomp(id(2)), Ok(20));
        assert_eq!(w.puback(id(1)), Ok(10));
        assert_eq!(w.get(id(1)), None);
    }

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    #[test]
    fn qos1_flow_and_window_limit() {
        let mut w = OutboundWindow::new(2);
        let a = w.insert(QoS::AtLeastOnce, "a").unwrap();
        let b = w.insert(QoS::AtLeastOnce, "b").unwrap();
        assert_ne!(a, b);
        assert!(w.is_full());
        assert_eq!(w.insert(QoS::AtLeastOnce, "c"), Err(FlowError::WindowFull));
        assert_eq!(w.puback(b), Ok("b"));
        assert_eq!(w.puback(b), Err(FlowError::UnknownPacketId(b.get())));
        assert_eq!(w.pubcomp(a), Err(FlowError::UnexpectedAck(a.get())));
        assert_eq!(w.puback(a), Ok("a"));
        assert!(w.is_empty());
    }

    #[test]
    fn qos2_flow_with_repeated_pubrec() {
        let mut w = OutboundWindow::new(10);
        let a = w.insert(QoS::ExactlyOnce, 1).unwrap();
        assert_eq!(w.puback(a), Err(FlowError::UnexpectedAck(a.get())));
        assert_eq!(w.pubcomp(a), Err(FlowError::UnexpectedAck(a.get())));
        assert_eq!(
            w.pubrec(a, ReasonCode::Success),
            Ok(PubRecOutcome::SendPubRel(a))
        );
        assert_eq!(
            w.pubrec(a, ReasonCode::Success),
            Ok(PubRecOutcome::SendPubRel(a))
        );
        assert_eq!(
            w.resend().map(|(_, s, _)| s).collect::<Vec<_>>(),
            [Stage::AwaitingPubComp]
        );
        assert_eq!(w.pubcomp(a), Ok(1));
    }

    #[test]
    fn qos2_refused_by_pubrec_error() {
        let mut w = OutboundWindow::new(10);
        let a = w.insert(QoS::ExactlyOnce, 1).unwrap();
        assert_eq!(
            w.pubrec(a, ReasonCode::QuotaExceeded),
            Ok(PubRecOutcome::Refused(1, ReasonCode::QuotaExceeded))
        );
        assert!(w.is_empty());
    }

    #[test]
    fn resend_keeps_order_and_ids_skip_those_in_use() {
        let mut w = OutboundWindow::new(u16::MAX);
        let ids: Vec<_> = (0..5)
            .map(|i| w.insert(QoS::AtLeastOnce, i).unwrap())
            .collect();
        assert_eq!(ids, [pid(1), pid(2), pid(3), pid(4), pid(5)]);
        w.puback(pid(2)).unwrap();
        let order: Vec<_> = w.resend().map(|(_, _, i)| *i).collect();
        assert_eq!(order, [0, 2, 3, 4]);
        // Wrap around: ids still in flight (1, 3, 4, 5) are skipped.
        w.jump_to(u16::MAX);
        assert_eq!(w.insert(QoS::AtLeastOnce, 9).unwrap(), pid(u16::MAX));
        assert_eq!(w.insert(QoS::AtLeastOnce, 10).unwrap(), pid(2));
        assert_eq!(w.insert(QoS::AtLeastOnce, 11).unwrap(), pid(6));
    }

    #[test]
    fn acknowledgements_in_any_order_find_their_message() {
        let mut w = OutboundWindow::new(100);
        // Start near the end of the id range so that the window wraps.
        w.jump_to(65_530);
        let ids: Vec<_> = (0..12u32)
            .map(|i| w.insert(QoS::ExactlyOnce, i).unwrap())
            .collect();
        assert_eq!(ids[5], pid(65_535));
        assert_eq!(ids[6], pid(1));
        for &i in &[3usize, 0, 11, 6, 5, 7] {
            assert_eq!(
                w.pubrec(ids[i], ReasonCode::Success),
                Ok(PubRecOutcome::SendPubRel(ids[i]))
            );
        }
        for &i in &[5usize, 3, 11, 0, 6, 7] {
            assert_eq!(w.pubcomp(ids[i]), Ok(u32::try_from(i).unwrap()));
        }
        assert_eq!(w.pubcomp(ids[5]), Err(FlowError::UnknownPacketId(65_535)));
        let left: Vec<_> = w.resend().map(|(_, _, i)| *i).collect();
        assert_eq!(left, [1, 2, 4, 8, 9, 10]);
    }

    #[test]
    fn a_message_in_flight_for_laps_keeps_its_id() {
        let mut w = OutboundWindow::new(2);
        let stuck = w.insert(QoS::AtLeastOnce, 0).unwrap();
        let mut ids = HashSet::new();
        for i in 0..200_000u32 {
            let id = w.insert(QoS::AtLeastOnce, i).unwrap();
            assert_ne!(
                id, stuck,
                "id of a message in flight reused after {i} messages"
            );
            ids.insert(id);
            assert_eq!(w.puback(id), Ok(i));
        }
        // Every other id was used: the counter went round three times.
        assert_eq!(ids.len(), usize::from(u16::MAX) - 1);
        assert_eq!(w.puback(stuck), Ok(0));
    }

    #[test]
    fn ids_avoid_reserved_ones_and_run_out() {
        let mut w = OutboundWindow::new(10);
        let reserved = [pid(1), pid(3)];
        let is_reserved = |id: PacketId| reserved.contains(&id);
        // SUBSCRIBE ids come from the same counter and skip those in flight.
        assert_eq!(
            w.insert_avoiding(QoS::AtLeastOnce, "a", is_reserved),
            Ok(pid(2))
        );
        assert!(w.contains(pid(2)));
        assert!(!w.contains(pid(1)));
        assert_eq!(w.allocate_id(is_reserved), Some(pid(4)));
        assert_eq!(
            w.insert_avoiding(QoS::ExactlyOnce, "b", is_reserved),
            Ok(pid(5))
        );
        assert_eq!(
            w.pubrec(pid(5), ReasonCode::Success),
            Ok(PubRecOutcome::SendPubRel(pid(5)))
        );
        w.jump_to(1);
        assert_eq!(w.allocate_id(is_reserved), Some(pid(4)));
        // Every id taken: no id, and no endless search.
        assert_eq!(w.allocate_id(|_| true), None);
        assert_eq!(
            w.insert_avoiding(QoS::AtLeastOnce, "c", |_| true),
            Err(FlowError::WindowFull)
        );
        assert_eq!(w.len(), 2);
        let mut full = OutboundWindow::new(1);
        full.insert(QoS::AtLeastOnce, "x").unwrap();
        assert_eq!(
            full.insert_avoiding(QoS::AtLeastOnce, "y", |_| false),
            Err(FlowError::WindowFull)
        );
    }

    #[test]
    fn inbound_qos2_dedup_and_limit() {
        let mut q = InboundQos2::new();
        assert_eq!(q.publish(pid(7), 2), Ok(Qos2Publish::New));
        assert_eq!(q.publish(pid(7), 2), Ok(Qos2Publish::Duplicate));
        assert_eq!(q.publish(pid(8), 2), Ok(Qos2Publish::New));
        assert_eq!(q.publish(pid(9), 2), Err(FlowError::WindowFull));
        assert_eq!(q.pubrel(pid(7)), ReasonCode::Success);
        assert_eq!(q.pubrel(pid(7)), ReasonCode::PacketIdentifierNotFound);
        assert_eq!(q.publish(pid(7), 2), Ok(Qos2Publish::New));
    }

    #[test]
    fn inbound_aliases() {
        let mut a = InboundAliases::new(2);
        let t = TopicName::new("a/b").unwrap();
        let empty = TopicName::empty();
        assert_eq!(
            a.resolve(&empty, NonZeroU16::new(1)),
            Err(AliasError::Unknown(1))
        );
        assert_eq!(a.resolve(&t, NonZeroU16::new(1)), Ok(t.clone()));
        assert_eq!(a.resolve(&empty, NonZeroU16::new(1)), Ok(t.clone()));
        assert_eq!(
            a.resolve(&t, NonZeroU16::new(3)),
            Err(AliasError::OutOfRange(3, 2))
        );
        assert_eq!(a.resolve(&t, None), Ok(t));
    }

    #[test]
    fn outbound_aliases() {
        let mut a = OutboundAliases::new(1);
        let x = TopicName::new("x").unwrap();
        let y = TopicName::new("y").unwrap();
        assert_eq!(a.assign(&x), OutboundAlias::Set(pid(1)));
        assert_eq!(a.assign(&x), OutboundAlias::Use(pid(1)));
        assert_eq!(a.assign(&y), OutboundAlias::None);
        assert_eq!(OutboundAliases::new(0).assign(&x), OutboundAlias::None);
    }

    #[test]
    fn keep_alive_deadlines() {
        let t = Instant::now();
        assert_eq!(server_keep_alive_deadline(t, 0), None);
        assert_eq!(
            server_keep_alive_deadline(t, 10),
            Some(t + Duration::from_secs(15))
        );
        assert_eq!(client_ping_due(t, 10), Some(t + Duration::from_secs(10)));
    }
}
