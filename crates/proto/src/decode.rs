//! Incremental, strict decoding.
//!
//! Check, then parse: [`parse_header`] reads only the fixed header and rejects bad flags and
//! sizes over the caller's maximum before the body is buffered; [`decode`] then takes a packet
//! out of the buffer only once all of it is there. Missing bytes are `Ok(None)`, never an error.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubResponse, Publish, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use crate::reason::{PacketKind, ReasonCode};
use crate::topic::{TopicError, TopicFilter, TopicName};
use crate::types::{PacketId, PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, VarInt, read_var_int};

/// A parsed and checked fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Length of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
    /// The Remaining Length: variable header plus payload.
    pub remaining_len: usize,
}

impl FixedHeader {
    /// Total size of the packet.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads and checks the fixed header at the front of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold the whole fixed header. Rejects a reserved
/// packet type, AUTH before 5.0, wrong flags, QoS 3, DUP on QoS 0, a remaining length longer
/// than four bytes, and a packet larger than `max_packet_size` (fixed header included) — all
/// before the body has arrived.
pub fn parse_header(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(first >> 4).ok_or(DecodeError::ReservedPacketType)?;
    let flags = first & 0x0F;
    match packet_type {
        PacketType::Auth if !version.is_v5() => return Err(DecodeError::AuthBeforeV5),
        PacketType::Publish => {
            let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
            if qos == QoS::AtMostOnce && flags & 0b1000 != 0 {
                return Err(DecodeError::DupOnQoS0);
            }
        }
        _ if flags != packet_type.fixed_flags() => {
            return Err(DecodeError::InvalidHeaderFlags {
                packet: packet_type,
                flags,
            });
        }
        _ => {}
    }
    let (remaining_len, len_bytes) = match read_var_int(&buf[1..]) {
        VarInt::Value(v, n) => (v as usize, n),
        VarInt::Incomplete => return Ok(None),
        VarInt::TooLong => return Err(DecodeError::MalformedRemainingLength),
    };
    let header = FixedHeader {
        packet_type,
        flags,
        header_len: 1 + len_bytes,
        remaining_len,
    };
    if header.packet_len() > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: header.packet_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Decodes one packet from the front of `buf`, removing its bytes, or returns `Ok(None)` and
/// leaves `buf` untouched if the packet is not complete yet.
///
/// `version` is the connection's negotiated version; a CONNECT carries its own and is decoded
/// whatever `version` says. Payloads and strings of the result share `buf`'s memory.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = parse_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.packet_len() {
        return Ok(None);
    }
    if let Some(packet) = short_ack(buf, &header)? {
        return Ok(Some(packet));
    }
    let mut frame = buf.split_to(header.packet_len()).freeze();
    frame.advance(header.header_len);
    if header.packet_type == PacketType::Publish {
        // The hot path of every connection, kept out of `decode_body`'s match so that the
        // packet is built in place.
        return decode_publish(frame, header.flags, version.is_v5())
            .map(|p| Some(Packet::Publish(p)));
    }
    decode_body(&header, frame, version).map(Some)
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP of just a packet id (every 3.x one, and 5.0 ones with
/// Success and no properties), read in place: no shared frame is split off for four bytes.
/// `None` for any other packet, which takes the general path.
#[inline]
fn short_ack(buf: &mut BytesMut, header: &FixedHeader) -> Result<Option<Packet>, DecodeError> {
    let make: fn(PubResponse) -> Packet = match header.packet_type {
        PacketType::PubAck => Packet::PubAck,
        PacketType::PubRec => Packet::PubRec,
        PacketType::PubRel => Packet::PubRel,
        PacketType::PubComp => Packet::PubComp,
        _ => return Ok(None),
    };
    if header.remaining_len != 2 {
        return Ok(None);
    }
    let Some(&[hi, lo]) = buf.get(header.header_len..header.header_len + 2) else {
        return Ok(None);
    };
    buf.advance(header.packet_len());
    let id = PacketId::new(u16::from_be_bytes([hi, lo])).ok_or(DecodeError::ZeroPacketId {
        packet: header.packet_type,
    })?;
    Ok(Some(make(PubResponse::new(id))))
}

/// Decodes a PUBLISH body (fixed header checked by [`parse_header`]). The topic and the
/// payload are two slices of the body, read without an intermediate [`Reader`].
#[inline(always)]
fn decode_publish(mut frame: Bytes, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let truncated = DecodeError::Truncated {
        packet: PacketType::Publish,
    };
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let &[hi, lo, ..] = &frame[..] else {
        return Err(truncated);
    };
    let topic_end = 2 + usize::from(u16::from_be_bytes([hi, lo]));
    if frame.len() < topic_end {
        return Err(truncated);
    }
    let topic = TopicName::from_received(frame.slice(2..topic_end), v5).map_err(|e| match e {
        TopicError::String(source) => DecodeError::InvalidString {
            packet: PacketType::Publish,
            source,
        },
        e => DecodeError::InvalidTopicName(e),
    })?;
    let id_end = topic_end + if qos == QoS::AtMostOnce { 0 } else { 2 };
    let packet_id = match frame.get(topic_end..id_end) {
        Some(&[hi, lo]) => Some(PacketId::new(u16::from_be_bytes([hi, lo])).ok_or(
            DecodeError::ZeroPacketId {
                packet: PacketType::Publish,
            },
        )?),
        Some(_) => None,
        None => return Err(truncated),
    };
    frame.advance(id_end);
    let (properties, payload) = if v5 {
        let mut r = Reader::new(frame, PacketType::Publish);
        (PublishProperties::decode(&mut r)?, r.rest())
    } else {
        (PublishProperties::default(), frame)
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicWithoutAlias);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        payload,
        properties,
    })
}

/// Decodes a packet body whose fixed header has been checked by [`parse_header`].
pub fn decode_body(
    header: &FixedHeader,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body, header.packet_type);
    let v5 = version.is_v5();
    let packet = match header.packet_type {
        PacketType::Connect => return decode_connect(&mut r).map(|c| Packet::Connect(Box::new(c))),
        PacketType::ConnAck => Packet::ConnAck(decode_connack(&mut r, v5)?),
        PacketType::Publish => {
            return decode_publish(r.rest(), header.flags, v5).map(Packet::Publish);
        }
        PacketType::PubAck => Packet::PubAck(decode_pub_response(&mut r, v5, PacketKind::PubAck)?),
        PacketType::PubRec => Packet::PubRec(decode_pub_response(&mut r, v5, PacketKind::PubRec)?),
        PacketType::PubRel => Packet::PubRel(decode_pub_response(&mut r, v5, PacketKind::PubRel)?),
        PacketType::PubComp => {
            Packet::PubComp(decode_pub_response(&mut r, v5, PacketKind::PubComp)?)
        }
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(&mut r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
        PacketType::Auth => Packet::Auth(decode_auth(&mut r)?),
    };
    r.finish()?;
    Ok(packet)
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId { packet: r.packet() })
}

fn reason(r: &mut Reader, kind: PacketKind) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    ReasonCode::from_u8(code)
        .filter(|rc| rc.allowed_in(kind))
        .ok_or(DecodeError::InvalidReasonCode {
            packet: r.packet(),
            code,
        })
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // 0x83 / 0x84: a 3.x broker's bridge (the top bit of the level, Mosquitto's `try_private`).
    let bridge = matches!(level, 0x83 | 0x84);
    let protocol = match (&name[..], level & if bridge { 0x7F } else { 0xFF }) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let flags = r.u8()?;
    let bad = |rule| DecodeError::InvalidConnectFlags { flags, rule };
    if flags & 0x01 != 0 {
        return Err(bad("reserved bit must be 0 [MQTT-3.1.2-3]"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 0b11).ok_or(bad("will QoS 3 [MQTT-3.1.2-14]"))?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(bad(
            "will QoS and retain must be 0 without a will [MQTT-3.1.2-11]",
        ));
    }
    if has_password && !has_username && !protocol.is_v5() {
        return Err(bad("password flag without user name flag [MQTT-3.1.2-22]"));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        ConnectProperties::decode(r)?
    } else {
        ConnectProperties::default()
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            WillProperties::decode(r)?
        } else {
            WillProperties::default()
        };
        let topic =
            TopicName::from_mqtt_str(r.string()?, false).map_err(DecodeError::InvalidTopicName)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let code = r.u8()?;
    let reason = if v5 {
        ReasonCode::from_u8(code).filter(|rc| rc.allowed_in(PacketKind::ConnAck))
    } else {
        ReasonCode::from_v3_connack(code)
    }
    .ok_or(DecodeError::InvalidReasonCode {
        packet: PacketType::ConnAck,
        code,
    })?;
    let properties = if v5 {
        ConnAckProperties::decode(r)?
    } else {
        ConnAckProperties::default()
    };
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason,
        properties: Box::new(properties),
    })
}

fn decode_pub_response(
    r: &mut Reader,
    v5: bool,
    kind: PacketKind,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut response = PubResponse::new(packet_id);
    if v5 && r.has_remaining() {
        response.reason = reason(r, kind)?;
        if r.has_remaining() {
            response.properties = AckProperties::decode(r)?;
        }
    }
    Ok(response)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        SubscribeProperties::decode(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while r.has_remaining() {
        let filter =
            TopicFilter::from_mqtt_str(r.string()?).map_err(DecodeError::InvalidTopicFilter)?;
        let byte = r.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionQoS)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        let options = SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        };
        if options.no_local && filter.shared().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Subscribe,
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        AckProperties::decode(r)?
    } else {
        AckProperties::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while r.has_remaining() {
        reasons.push(if v5 {
            reason(r, PacketKind::SubAck)?
        } else {
            let code = r.u8()?;
            ReasonCode::from_v3_suback(code).ok_or(DecodeError::InvalidReasonCode {
                packet: PacketType::SubAck,
                code,
            })?
        });
    }
    if reasons.is_empty() {
        return Err(DecodeError::Truncated {
            packet: PacketType::SubAck,
        });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        UnsubscribeProperties::decode(r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while r.has_remaining() {
        filters.push(
            TopicFilter::from_mqtt_str(r.string()?).map_err(DecodeError::InvalidTopicFilter)?,
        );
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Unsubscribe,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = UnsubAck {
        packet_id,
        reasons: Vec::new(),
        properties: AckProperties::default(),
    };
    if v5 {
        ack.properties = AckProperties::decode(r)?;
        while r.has_remaining() {
            ack.reasons.push(reason(r, PacketKind::UnsubAck)?);
        }
        if ack.reasons.is_empty() {
            return Err(DecodeError::Truncated {
                packet: PacketType::UnsubAck,
            });
        }
    }
    Ok(ack)
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if v5 && r.has_remaining() {
        disconnect.reason = reason(r, PacketKind::Disconnect)?;
        if r.has_remaining() {
            disconnect.properties = DisconnectProperties::decode(r)?;
        }
    }
    Ok(disconnect)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if r.has_remaining() {
        auth.reason = reason(r, PacketKind::Auth)?;
        if r.has_remaining() {
            auth.properties = AuthProperties::decode(r)?;
        }
    }
    Ok(auth)
}
