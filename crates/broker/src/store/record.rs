//! The byte format of the store's keys and values, and the [`Snapshot`] read at start.
//!
//! Keys: retained by topic; sessions and wills by client id; subscriptions, queued messages
//! and QoS 2 ids by client id, a 0 byte (never part of a client id: MQTT strings exclude
//! U+0000) and the filter, big-endian sequence number or packet id; bodies by big-endian id.
//! Values start with a format byte. A message is kept as a 5.0 PUBLISH packet (topic,
//! payload, flags and properties, decoded with the same strict codec as the network), after
//! its publisher and its expiry deadline.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use sagitta_proto::session::Stage;
use sagitta_proto::{
    Packet, PacketId, ProtocolVersion, PublishRef, QoS, RetainHandling, SubscriptionId,
    SubscriptionOptions, TopicFilter,
};

use super::{Backend, Op, StoreError, Table};
use crate::message::Message;

const FORMAT: u8 = 1;
/// Separates the client id from the rest of a key.
const SEP: u8 = 0;

/// Milliseconds since the Unix epoch now.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn client_key(client_id: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1 + rest.len());
    k.extend_from_slice(client_id.as_bytes());
    k.push(SEP);
    k.extend_from_slice(rest);
    k
}

/// The prefix of every per-client key of `client_id`.
pub fn client_prefix(client_id: &str) -> Vec<u8> {
    client_key(client_id, &[])
}

/// The key of a queued message.
pub fn queued_key(client_id: &str, seq: u64) -> Vec<u8> {
    client_key(client_id, &seq.to_be_bytes())
}

/// The key of a subscription.
pub fn subscription_key(client_id: &str, filter: &TopicFilter) -> Vec<u8> {
    client_key(client_id, filter.as_str().as_bytes())
}

/// The key of an inbound QoS 2 packet id.
pub fn qos2_key(client_id: &str, id: PacketId) -> Vec<u8> {
    client_key(client_id, &id.get().to_be_bytes())
}

/// The key of a message body.
pub fn body_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Encodes a message: publisher, expiry deadline (wall clock), and a 5.0 PUBLISH.
pub fn encode_message(msg: &Message, out: &mut BytesMut) {
    out.put_u8(FORMAT);
    let now = Instant::now();
    let expires = msg.expires_at.map_or(0, |t| {
        let left = t.saturating_duration_since(now);
        wall_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)) | 1
    });
    out.put_u64(expires);
    match &msg.origin {
        Some(o) => {
            out.put_u8(1);
            out.put_u16(u16::try_from(o.len()).unwrap_or(u16::MAX));
            out.put_slice(&o.as_bytes()[..o.len().min(usize::from(u16::MAX))]);
        }
        None => out.put_u8(0),
    }
    let view = PublishRef {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: &msg.topic,
        packet_id: (msg.qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
        payload: &msg.payload,
        properties: msg.properties(),
    };
    // A message the broker accepted is encodable: its topic and properties were validated.
    let _ = view.encode(ProtocolVersion::V5, out);
}

/// Decodes [`encode_message`]'s bytes; `None` if corrupt. An expired message is returned with
/// `expires_at` in the past.
pub fn decode_message(mut b: &[u8]) -> Option<Message> {
    if b.remaining() < 10 || b.get_u8() != FORMAT {
        return None;
    }
    let expires = b.get_u64();
    let origin = match b.get_u8() {
        0 => None,
        1 => {
            if b.remaining() < 2 {
                return None;
            }
            let len = usize::from(b.get_u16());
            if b.remaining() < len {
                return None;
            }
            let s = std::str::from_utf8(&b[..len]).ok()?;
            let o: Arc<str> = s.into();
            b.advance(len);
            Some(o)
        }
        _ => return None,
    };
    let mut buf = BytesMut::from(b);
    let Ok(Some(Packet::Publish(p))) =
        sagitta_proto::decode(&mut buf, ProtocolVersion::V5, usize::MAX)
    else {
        return None;
    };
    if !buf.is_empty() {
        return None;
    }
    let expires_at = (expires != 0).then(|| instant_of_wall(expires));
    Some(Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: Message::boxed_properties(p.properties),
        origin,
        expires_at,
        stored: Default::default(),
        received_at: None,
    })
}

/// The `Instant` of a wall-clock time in ms (in the past if it has passed).
fn instant_of_wall(ms: u64) -> Instant {
    let now_wall = wall_ms();
    let now = Instant::now();
    if ms >= now_wall {
        now + Duration::from_millis(ms - now_wall)
    } else {
        now.checked_sub(Duration::from_millis(now_wall - ms))
            .unwrap_or(now)
    }
}

/// Seconds from now until a wall-clock time in ms (0 if it has passed).
pub fn secs_until_wall(ms: u64) -> u64 {
    ms.saturating_sub(wall_ms()).div_ceil(1000)
}

/// A session record: expiry interval and when its client disconnected (0: connected, or
/// the broker stopped without knowing).
pub fn encode_session(expiry: u32, disconnected_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(13);
    v.push(FORMAT);
    v.extend_from_slice(&expiry.to_be_bytes());
    v.extend_from_slice(&disconnected_ms.to_be_bytes());
    v
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_of(byte: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0b11)?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling: match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// A subscription record: options and Subscription Identifier.
pub fn encode_subscription(options: &SubscriptionOptions, id: Option<SubscriptionId>) -> Vec<u8> {
    let mut v = Vec::with_capacity(6);
    v.push(FORMAT);
    v.push(options_byte(options));
    v.extend_from_slice(&id.map_or(0, SubscriptionId::get).to_be_bytes());
    v
}

/// Decodes [`encode_subscription`]'s bytes.
pub fn decode_subscription(v: &[u8]) -> Option<(SubscriptionOptions, Option<SubscriptionId>)> {
    if v.len() != 6 || v[0] != FORMAT {
        return None;
    }
    let options = options_of(v[1])?;
    Some((
        options,
        SubscriptionId::new(u32::from_be_bytes([v[2], v[3], v[4], v[5]])),
    ))
}

/// A queued message as stored: which body, and how it goes to this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// Its sequence number (queue order).
    pub seq: u64,
    /// The body's id.
    pub body: u64,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription Identifiers.
    pub sub_ids: Vec<SubscriptionId>,
    /// Packet id and stage once in flight.
    pub inflight: Option<(PacketId, Stage)>,
}

fn stage_byte(stage: Stage) -> u8 {
    match stage {
        Stage::AwaitingPubAck => 1,
        Stage::AwaitingPubRec => 2,
        Stage::AwaitingPubComp => 3,
    }
}

/// A queued-message record.
pub fn encode_queued(
    body: u64,
    qos: QoS,
    retain: bool,
    sub_ids: &[SubscriptionId],
    inflight: Option<(PacketId, Stage)>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 4 * sub_ids.len());
    v.push(FORMAT);
    v.extend_from_slice(&body.to_be_bytes());
    v.push(qos as u8 | (u8::from(retain) << 2));
    match inflight {
        Some((id, stage)) => {
            v.extend_from_slice(&id.get().to_be_bytes());
            v.push(stage_byte(stage));
        }
        None => v.extend_from_slice(&[0, 0, 0]),
    }
    for id in sub_ids {
        v.extend_from_slice(&id.get().to_be_bytes());
    }
    v
}

/// Decodes [`encode_queued`]'s bytes, for the message of sequence number `seq`.
pub fn decode_queued(seq: u64, mut b: &[u8]) -> Option<StoredDelivery> {
    if b.remaining() < 13 || b.get_u8() != FORMAT {
        return None;
    }
    let body = b.get_u64();
    let flags = b.get_u8();
    let qos = QoS::from_u8(flags & 0b11)?;
    let retain = flags & 0b100 != 0;
    let id = b.get_u16();
    let stage = match b.get_u8() {
        0 => None,
        1 => Some(Stage::AwaitingPubAck),
        2 => Some(Stage::AwaitingPubRec),
        3 => Some(Stage::AwaitingPubComp),
        _ => return None,
    };
    let inflight = match (NonZeroU16::new(id), stage) {
        (Some(id), Some(stage)) => Some((id, stage)),
        (None, None) => None,
        _ => return None,
    };
    if !b.remaining().is_multiple_of(4) {
        return None;
    }
    let mut sub_ids = Vec::with_capacity(b.remaining() / 4);
    while b.has_remaining() {
        sub_ids.push(SubscriptionId::new(b.get_u32())?);
    }
    Some(StoredDelivery {
        seq,
        body,
        qos,
        retain,
        sub_ids,
        inflight,
    })
}

/// A will record: when to publish it (wall clock ms) and the message.
pub fn encode_will(msg: &Message, publish_at_ms: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    out.put_u64(publish_at_ms);
    encode_message(msg, &mut out);
    out.to_vec()
}

/// Encodes a message as a value.
pub fn message_value(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.to_vec()
}

/// A persistent session as read from the store.
#[derive(Debug)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: String,
    /// Session Expiry Interval (seconds).
    pub expiry: u32,
    /// When its client disconnected (wall clock ms); 0 if unknown.
    pub disconnected_ms: u64,
    /// Subscriptions.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// Queued and in-flight messages, in order.
    pub queued: Vec<StoredDelivery>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub qos2: Vec<PacketId>,
    /// A will waiting for its delay, and when to publish it (wall clock ms).
    pub will: Option<(Message, u64)>,
}

/// Everything the store holds, read at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Retained messages (expired ones are left out).
    pub retained: Vec<Message>,
    /// Persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// Message bodies by id.
    pub bodies: HashMap<u64, Arc<Message>>,
    /// Stale records found (e.g. a body no message points to), to delete.
    pub stale: Vec<Op>,
}

impl Snapshot {
    /// Reads every table of `backend`.
    pub fn read(backend: &dyn Backend, dir: &Path) -> Result<Snapshot, StoreError> {
        let corrupt = |table: Table, message: String| StoreError::Corrupt {
            path: dir.to_path_buf(),
            table: table.name(),
            message,
        };
        let mut snap = Snapshot::default();
        let now = Instant::now();
        backend.scan(Table::Retained, &mut |k, v| {
            let msg = decode_message(v).ok_or_else(|| {
                corrupt(
                    Table::Retained,
                    format!("topic {:?}", String::from_utf8_lossy(k)),
                )
            })?;
            if msg.is_expired(now) {
                snap.stale.push(Op::Delete(Table::Retained, k.to_vec()));
            } else {
                snap.retained.push(msg);
            }
            Ok(())
        })?;
        let mut by_client: HashMap<Vec<u8>, usize> = HashMap::new();
        backend.scan(Table::Sessions, &mut |k, mut v| {
            let bad = || {
                corrupt(
                    Table::Sessions,
                    format!("client {:?}", String::from_utf8_lossy(k)),
                )
            };
            if v.remaining() != 13 || v.get_u8() != FORMAT {
                return Err(bad());
            }
            let client_id = String::from_utf8(k.to_vec()).map_err(|_| bad())?;
            by_client.insert(k.to_vec(), snap.sessions.len());
            snap.sessions.push(StoredSession {
                client_id,
                expiry: v.get_u32(),
                disconnected_ms: v.get_u64(),
                subscriptions: Vec::new(),
                queued: Vec::new(),
                qos2: Vec::new(),
                will: None,
            });
            Ok(())
        })?;
        // Per-client records: split the key at the separator and find the session.
        fn split(k: &[u8]) -> Option<(&[u8], &[u8])> {
            let i = k.iter().position(|b| *b == SEP)?;
            Some((&k[..i], &k[i + 1..]))
        }
        let sessions = &mut snap.sessions;
        let stale = &mut snap.stale;
        backend.scan(Table::Subscriptions, &mut |k, v| {
            let bad = || {
                corrupt(
                    Table::Subscriptions,
                    format!("key {:?}", String::from_utf8_lossy(k)),
                )
            };
            let (client, filter) = split(k).ok_or_else(bad)?;
            let Some(&i) = by_client.get(client) else {
                stale.push(Op::Delete(Table::Subscriptions, k.to_vec()));
                return Ok(());
            };
            let filter = std::str::from_utf8(filter)
                .ok()
                .and_then(|f| TopicFilter::new(f.to_owned()).ok())
                .ok_or_else(bad)?;
            let (options, id) = decode_subscription(v).ok_or_else(bad)?;
            sessions[i].subscriptions.push((filter, options, id));
            Ok(())
        })?;
        let bodies = &mut snap.bodies;
        backend.scan(Table::Bodies, &mut |k, v| {
            let id = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(Table::Bodies, "bad key".into()))?;
            let msg =
                decode_message(v).ok_or_else(|| corrupt(Table::Bodies, format!("message {id}")))?;
            bodies.insert(id, Arc::new(msg));
            Ok(())
        })?;
        let mut used: std::collections::HashSet<u64> = std::collections::HashSet::new();
        backend.scan(Table::Queued, &mut |k, v| {
            let bad = || corrupt(Table::Queued, format!("key {k:?}"));
            let (client, seq) = split(k).ok_or_else(bad)?;
            let seq = <[u8; 8]>::try_from(seq)
                .map(u64::from_be_bytes)
                .map_err(|_| bad())?;
            let d = decode_queued(seq, v).ok_or_else(bad)?;
            match by_client.get(client) {
                Some(&i) if bodies.contains_key(&d.body) => {
                    used.insert(d.body);
                    sessions[i].queued.push(d);
                }
                _ => stale.push(Op::Delete(Table::Queued, k.to_vec())),
            }
            Ok(())
        })?;
        for id in bodies.keys() {
            if !used.contains(id) {
                stale.push(Op::Delete(Table::Bodies, body_key(*id)));
            }
        }
        bodies.retain(|id, _| used.contains(id));
        backend.scan(Table::Qos2, &mut |k, _| {
            let bad = || corrupt(Table::Qos2, format!("key {k:?}"));
            let (client, id) = split(k).ok_or_else(bad)?;
            let id = <[u8; 2]>::try_from(id)
                .ok()
                .and_then(|b| NonZeroU16::new(u16::from_be_bytes(b)))
                .ok_or_else(bad)?;
            match by_client.get(client) {
                Some(&i) => sessions[i].qos2.push(id),
                None => stale.push(Op::Delete(Table::Qos2, k.to_vec())),
            }
            Ok(())
        })?;
        backend.scan(Table::Wills, &mut |k, mut v| {
            let bad = || {
                corrupt(
                    Table::Wills,
                    format!("client {:?}", String::from_utf8_lossy(k)),
                )
            };
            if v.remaining() < 9 || v.get_u8() != FORMAT {
                return Err(bad());
            }
            let at = v.get_u64();
            let msg = decode_message(v).ok_or_else(bad)?;
            match by_client.get(k) {
                Some(&i) => sessions[i].will = Some((msg, at)),
                None => stale.push(Op::Delete(Table::Wills, k.to_vec())),
            }
            Ok(())
        })?;
        Ok(snap)
    }

    /// Number of queued and in-flight messages.
    pub fn queued_count(&self) -> usize {
        self.sessions.iter().map(|s| s.queued.len()).sum()
    }

    /// The highest id in use (bodies and sequence numbers).
    pub fn max_id(&self) -> u64 {
        let bodies = self.bodies.keys().copied().max().unwrap_or(0);
        let seqs = self
            .sessions
            .iter()
            .flat_map(|s| s.queued.iter().map(|d| d.seq))
            .max()
            .unwrap_or(0);
        bodies.max(seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagitta_proto::{MqttStr, PublishProperties, TopicName};

    fn message() -> Message {
        let properties = PublishProperties {
            content_type: MqttStr::new("text/plain").ok(),
            message_expiry_interval: Some(60),
            user_properties: vec![(
                MqttStr::new("k").unwrap_or_default(),
                MqttStr::new("v").unwrap_or_default(),
            )],
            ..Default::default()
        };
        let mut msg = Message::new(
            TopicName::new("a/b").unwrap(),
            bytes::Bytes::from_static(b"payload"),
            QoS::ExactlyOnce,
            true,
        );
        msg.properties = Message::boxed_properties(properties);
        msg.origin = Some("publisher".into());
        msg.expires_at = Some(Instant::now() + Duration::from_secs(60));
        msg
    }

    #[test]
    fn a_message_round_trips_with_its_properties_origin_and_expiry() {
        let msg = message();
        let back = decode_message(&message_value(&msg)).unwrap();
        assert_eq!(back.topic, msg.topic);
        assert_eq!(back.payload, msg.payload);
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.properties(), msg.properties());
        assert_eq!(back.origin.as_deref(), Some("publisher"));
        let left = back.remaining_expiry(Instant::now()).unwrap();
        assert!((58..=60).contains(&left), "{left}");
        let plain = Message::new(
            TopicName::new("t").unwrap(),
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            false,
        );
        let back = decode_message(&message_value(&plain)).unwrap();
        assert!(back.origin.is_none() && back.expires_at.is_none() && back.properties.is_none());
    }

    #[test]
    fn corrupt_values_are_refused_not_misread() {
        let value = message_value(&message());
        for cut in 0..value.len() {
            assert!(decode_message(&value[..cut]).is_none(), "cut at {cut}");
        }
        let mut extra = value.clone();
        extra.push(0);
        assert!(decode_message(&extra).is_none());
        let mut wrong_format = value;
        wrong_format[0] = 9;
        assert!(decode_message(&wrong_format).is_none());
        assert!(decode_queued(1, &[FORMAT, 0, 0]).is_none());
    }

    #[test]
    fn a_queued_record_round_trips() {
        let ids = [
            SubscriptionId::new(5).unwrap(),
            SubscriptionId::new(70000).unwrap(),
        ];
        let inflight = Some((NonZeroU16::new(513).unwrap(), Stage::AwaitingPubComp));
        let v = encode_queued(42, QoS::ExactlyOnce, true, &ids, inflight);
        assert_eq!(
            decode_queued(7, &v),
            Some(StoredDelivery {
                seq: 7,
                body: 42,
                qos: QoS::ExactlyOnce,
                retain: true,
                sub_ids: ids.to_vec(),
                inflight,
            })
        );
        let v = encode_queued(1, QoS::AtLeastOnce, false, &[], None);
        assert_eq!(decode_queued(1, &v).map(|d| d.inflight), Some(None));
    }

    proptest::proptest! {
        /// A damaged store is refused record by record, never read into a panic.
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode_message(&bytes);
            let _ = decode_queued(1, &bytes);
            if let Some(&b) = bytes.first() {
                let _ = options_of(b);
            }
        }

        /// A message value with any byte changed decodes to something or nothing, safely.
        #[test]
        fn mutated_messages_decode_without_panicking(at in 0usize..200, to in proptest::num::u8::ANY) {
            let mut value = message_value(&message());
            let i = at % value.len();
            value[i] = to;
            let _ = decode_message(&value);
        }
    }

    #[test]
    fn subscription_options_round_trip() {
        for byte in 0..=0b10_1110u8 {
            if let Some(o) = options_of(byte) {
                assert_eq!(options_byte(&o), byte);
            }
        }
    }
}
