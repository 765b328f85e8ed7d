//! Encoding. Sizes are computed once per packet (properties included), the buffer is reserved
//! once, and fields are written straight into the caller's `BytesMut`. A failed encoding leaves
//! the buffer as it was.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubResponse, PublishRef, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::reason::ReasonCode;
use crate::string::MAX_STRING_LEN;
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{MAX_VAR_INT, put_binary, put_str, put_var_int, var_int_len};

/// Sizes computed before writing: the remaining length and each property block's length.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    remaining: usize,
    props: usize,
    will_props: usize,
}

/// Size of a property block including its length prefix.
fn block(len: usize) -> usize {
    var_int_len(len) + len
}

impl Packet {
    /// Total encoded size of this packet for `version` (fixed header included), e.g. to check
    /// a peer's Maximum Packet Size before sending.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let plan = self.plan(version)?;
        Ok(1 + var_int_len(plan.remaining) + plan.remaining)
    }

    /// Appends the encoding of this packet for `version` to `buf`.
    ///
    /// Fields that do not exist in `version` (properties and most reason codes in 3.x) are
    /// left out. A CONNECT is always encoded for its own `protocol`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let plan = self.plan(version)?;
        let start = buf.len();
        buf.reserve(1 + var_int_len(plan.remaining) + plan.remaining);
        let result = self.write(version, plan, buf);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn plan(&self, version: ProtocolVersion) -> Result<Plan, EncodeError> {
        let v5 = version.is_v5();
        let mut plan = Plan::default();
        plan.remaining = match self {
            Packet::Connect(c) => plan_connect(c, &mut plan)?,
            Packet::ConnAck(c) => {
                if v5 {
                    plan.props = c.properties.encoded_len();
                    2 + block(plan.props)
                } else {
                    2
                }
            }
            Packet::Publish(p) => p.borrowed().plan(v5, &mut plan)?,
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                if v5 {
                    plan.props = r.properties.encoded_len();
                    match (r.reason, plan.props) {
                        (ReasonCode::Success, 0) => 2,
                        (_, 0) => 3,
                        _ => 3 + block(plan.props),
                    }
                } else {
                    2
                }
            }
            Packet::Subscribe(s) => {
                if s.filters.is_empty() {
                    return Err(EncodeError::Empty(PacketType::Subscribe));
                }
                if s.filters
                    .iter()
                    .any(|(f, o)| v5 && o.no_local && f.shared().is_some())
                {
                    return Err(EncodeError::NoLocalOnSharedSubscription);
                }
                let mut len = 2 + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
                if v5 {
                    plan.props = s.properties.encoded_len();
                    len += block(plan.props);
                }
                len
            }
            Packet::SubAck(s) => {
                if s.reasons.is_empty() {
                    return Err(EncodeError::Empty(PacketType::SubAck));
                }
                let mut len = 2 + s.reasons.len();
                if v5 {
                    plan.props = s.properties.encoded_len();
                    len += block(plan.props);
                }
                len
            }
            Packet::Unsubscribe(u) => {
                if u.filters.is_empty() {
                    return Err(EncodeError::Empty(PacketType::Unsubscribe));
                }
                let mut len = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
                if v5 {
                    plan.props = u.properties.encoded_len();
                    len += block(plan.props);
                }
                len
            }
            Packet::UnsubAck(u) => {
                if v5 {
                    if u.reasons.is_empty() {
                        return Err(EncodeError::Empty(PacketType::UnsubAck));
                    }
                    plan.props = u.properties.encoded_len();
                    2 + block(plan.props) + u.reasons.len()
                } else {
                    2
                }
            }
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(d) => {
                if v5 {
                    plan.props = d.properties.encoded_len();
                    match (d.reason, plan.props) {
                        (ReasonCode::Success, 0) => 0,
                        (_, 0) => 1,
                        _ => 1 + block(plan.props),
                    }
                } else {
                    0
                }
            }
            Packet::Auth(a) => {
                if !v5 {
                    return Err(EncodeError::NotInVersion {
                        packet: PacketType::Auth,
                        version,
                    });
                }
                plan.props = a.properties.encoded_len();
                match (a.reason, plan.props) {
                    (ReasonCode::Success, 0) => 0,
                    _ => 1 + block(plan.props),
                }
            }
        };
        if plan.remaining > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge(plan.remaining));
        }
        Ok(plan)
    }

    fn write(
        &self,
        version: ProtocolVersion,
        plan: Plan,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        let ty = self.packet_type();
        let flags = match self {
            Packet::Publish(p) => p.borrowed().flags(),
            _ => ty.fixed_flags(),
        };
        buf.put_u8(((ty as u8) << 4) | flags);
        put_var_int(buf, plan.remaining);
        match self {
            Packet::Connect(c) => write_connect(c, plan, buf)?,
            Packet::ConnAck(c) => write_connack(c, v5, plan, buf)?,
            Packet::Publish(p) => p.borrowed().write_body(v5, plan, buf)?,
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                write_pub_response(r, plan, buf)?
            }
            Packet::Subscribe(s) => write_subscribe(s, v5, plan, buf)?,
            Packet::SubAck(s) => write_suback(s, v5, plan, buf)?,
            Packet::Unsubscribe(u) => write_unsubscribe(u, v5, plan, buf)?,
            Packet::UnsubAck(u) => write_unsuback(u, v5, plan, buf)?,
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => write_disconnect(d, plan, buf)?,
            Packet::Auth(a) => write_auth(a, plan, buf)?,
        }
        Ok(())
    }
}

fn plan_connect(c: &Connect, plan: &mut Plan) -> Result<usize, EncodeError> {
    let v5 = c.protocol.is_v5();
    if c.password.is_some() && c.username.is_none() && !v5 {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    let mut len = 2 + c.protocol.protocol_name().len() + 1 + 1 + 2;
    if v5 {
        plan.props = c.properties.encoded_len();
        len += block(plan.props);
    }
    len += 2 + c.client_id.len();
    if let Some(w) = &c.will {
        if v5 {
            plan.will_props = w.properties.encoded_len();
            len += block(plan.will_props);
        }
        len += 2 + w.topic.len() + 2 + binary_len(&w.payload)?;
    }
    if let Some(u) = &c.username {
        len += 2 + u.len();
    }
    if let Some(p) = &c.password {
        len += 2 + binary_len(p)?;
    }
    Ok(len)
}

fn binary_len(b: &[u8]) -> Result<usize, EncodeError> {
    if b.len() > MAX_STRING_LEN {
        Err(EncodeError::BinaryTooLong(b.len()))
    } else {
        Ok(b.len())
    }
}

fn write_connect(c: &Connect, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    put_str(buf, c.protocol.protocol_name());
    let bridge = if c.bridge && !v5 { 0x80 } else { 0 };
    buf.put_u8(c.protocol.level() | bridge);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        c.properties.encode(plan.props, buf)?;
    }
    put_str(buf, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.properties.encode(plan.will_props, buf)?;
        }
        put_str(buf, &w.topic);
        put_binary(buf, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_str(buf, u);
    }
    if let Some(p) = &c.password {
        put_binary(buf, p)?;
    }
    Ok(())
}

fn write_connack(c: &ConnAck, v5: bool, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u8(u8::from(c.session_present));
    if v5 {
        buf.put_u8(c.reason as u8);
        c.properties.encode(plan.props, buf)
    } else {
        buf.put_u8(c.reason.to_v3_connack());
        Ok(())
    }
}

impl PublishRef<'_> {
    /// Total encoded size for `version` (fixed header included).
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.plan(version.is_v5(), &mut Plan::default())?;
        Ok(1 + var_int_len(remaining) + remaining)
    }

    /// Appends the encoding for `version` to `buf`, which is left as it was on error.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        let mut plan = Plan::default();
        plan.remaining = self.plan(v5, &mut plan)?;
        let start = buf.len();
        buf.reserve(1 + var_int_len(plan.remaining) + plan.remaining);
        buf.put_u8(((PacketType::Publish as u8) << 4) | self.flags());
        put_var_int(buf, plan.remaining);
        let result = self.write_body(v5, plan, buf);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    /// The remaining length; sets `plan.props`.
    fn plan(&self, v5: bool, plan: &mut Plan) -> Result<usize, EncodeError> {
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::DupOnQoS0);
        }
        if self.topic.is_empty() && !(v5 && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::EmptyTopic);
        }
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.packet_id.is_some() {
            len += 2;
        }
        if v5 {
            plan.props = self.properties.encoded_len();
            len += block(plan.props);
        }
        if len > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge(len));
        }
        Ok(len)
    }

    fn write_body(&self, v5: bool, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => put_str(buf, self.topic),
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => {
                put_str(buf, self.topic);
                buf.put_u16(id.get());
            }
            _ => return Err(EncodeError::PacketIdMismatch),
        }
        if v5 {
            self.properties.encode(plan.props, buf)?;
        }
        buf.put_slice(self.payload);
        Ok(())
    }
}

fn write_pub_response(r: &PubResponse, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(r.packet_id.get());
    // plan.remaining already chose the short forms (3.x, or 5.0 Success without properties).
    if plan.remaining >= 3 {
        buf.put_u8(r.reason as u8);
    }
    if plan.remaining > 3 {
        r.properties.encode(plan.props, buf)?;
    }
    Ok(())
}

fn write_subscribe(
    s: &Subscribe,
    v5: bool,
    plan: Plan,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id.get());
    if v5 {
        s.properties.encode(plan.props, buf)?;
    }
    for (filter, o) in &s.filters {
        put_str(buf, filter);
        let mut byte = o.qos as u8;
        if v5 {
            byte |= (u8::from(o.no_local) << 2)
                | (u8::from(o.retain_as_published) << 3)
                | ((o.retain_handling as u8) << 4);
        }
        buf.put_u8(byte);
    }
    Ok(())
}

fn write_suback(s: &SubAck, v5: bool, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id.get());
    if v5 {
        s.properties.encode(plan.props, buf)?;
        buf.extend(s.reasons.iter().map(|r| *r as u8));
    } else {
        buf.extend(s.reasons.iter().map(|r| r.to_v3_suback()));
    }
    Ok(())
}

fn write_unsubscribe(
    u: &Unsubscribe,
    v5: bool,
    plan: Plan,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id.get());
    if v5 {
        u.properties.encode(plan.props, buf)?;
    }
    for filter in &u.filters {
        put_str(buf, filter);
    }
    Ok(())
}

fn write_unsuback(
    u: &UnsubAck,
    v5: bool,
    plan: Plan,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id.get());
    if v5 {
        u.properties.encode(plan.props, buf)?;
        buf.extend(u.reasons.iter().map(|r| *r as u8));
    }
    Ok(())
}

fn write_disconnect(d: &Disconnect, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if plan.remaining >= 1 {
        buf.put_u8(d.reason as u8);
    }
    if plan.remaining > 1 {
        d.properties.encode(plan.props, buf)?;
    }
    Ok(())
}

fn write_auth(a: &Auth, plan: Plan, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if plan.remaining > 0 {
        buf.put_u8(a.reason as u8);
        a.properties.encode(plan.props, buf)?;
    }
    Ok(())
}
