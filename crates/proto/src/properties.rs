//! MQTT 5.0 properties (section 2.2.2), typed per packet.
//!
//! Each packet has its own property struct holding exactly the properties the spec allows in
//! it, so the allow-list is the type. Decoding rejects identifiers that are unknown, not allowed
//! in the packet, or repeated when the spec allows only one; values outside their range (a
//! Receive Maximum of 0, a flag byte of 2) are Protocol Errors. User Properties keep their order
//! and may repeat.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::string::MqttStr;
use crate::topic::TopicName;
use crate::types::QoS;
use crate::wire::{MAX_VAR_INT, Reader, put_binary, put_str, put_var_int, var_int_len};

/// A User Property: a name and value pair, passed through untouched.
pub type UserProperty = (MqttStr, MqttStr);

/// Property identifiers (MQTT 5.0 table 2-4).
pub mod id {
    /// Payload Format Indicator.
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Message Expiry Interval.
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// Content Type.
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic.
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data.
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier.
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// Session Expiry Interval.
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// Assigned Client Identifier.
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Server Keep Alive.
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method.
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Authentication Data.
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Request Problem Information.
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Will Delay Interval.
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Request Response Information.
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// Response Information.
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// Server Reference.
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// Reason String.
    pub const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum.
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum.
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias.
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS.
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available.
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property.
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size.
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available.
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available.
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available.
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

    /// Every identifier the spec defines.
    pub const ALL: [u8; 27] = [
        0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A,
        0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
    ];
}

/// A Subscription Identifier: 1 to 268 435 455, carried as a variable byte integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// The identifier for `v`, or `None` if it is 0 or above 268 435 455.
    pub const fn new(v: u32) -> Option<Self> {
        if v > MAX_VAR_INT {
            return None;
        }
        match NonZeroU32::new(v) {
            Some(nz) => Some(Self(nz)),
            None => None,
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

/// A property value type: how it is read, sized and written.
trait Value: Sized {
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError>;
    fn len(&self) -> usize;
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError>;
}

impl Value for bool {
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(&self) -> usize {
        1
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u8(u8::from(*self));
        Ok(())
    }
}

impl Value for QoS {
    /// Maximum QoS: 0 or 1 only (absence means 2) [MQTT-3.2.2-9].
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(&self) -> usize {
        1
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u8(*self as u8);
        Ok(())
    }
}

impl Value for u16 {
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        r.u16()
    }
    fn len(&self) -> usize {
        2
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u16(*self);
        Ok(())
    }
}

impl Value for NonZeroU16 {
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        NonZeroU16::new(r.u16()?).ok_or(DecodeError::InvalidPropertyValue(id))
    }
    fn len(&self) -> usize {
        2
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u16(self.get());
        Ok(())
    }
}

impl Value for u32 {
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        r.u32()
    }
    fn len(&self) -> usize {
        4
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u32(*self);
        Ok(())
    }
}

impl Value for NonZeroU32 {
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        NonZeroU32::new(r.u32()?).ok_or(DecodeError::InvalidPropertyValue(id))
    }
    fn len(&self) -> usize {
        4
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u32(self.get());
        Ok(())
    }
}

impl Value for SubscriptionId {
    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        SubscriptionId::new(r.var_int()?).ok_or(DecodeError::InvalidPropertyValue(id))
    }
    fn len(&self) -> usize {
        var_int_len(self.get() as usize)
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_var_int(buf, self.get() as usize);
        Ok(())
    }
}

impl Value for MqttStr {
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        r.string()
    }
    fn len(&self) -> usize {
        2 + self.as_str().len()
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_str(buf, self);
        Ok(())
    }
}

impl Value for TopicName {
    /// Response Topic: a topic name without wildcards [MQTT-3.3.2-14].
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        TopicName::from_mqtt_str(r.string()?, false).map_err(DecodeError::InvalidTopicName)
    }
    fn len(&self) -> usize {
        2 + self.as_str().len()
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_str(buf, self);
        Ok(())
    }
}

impl Value for Bytes {
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        r.binary()
    }
    fn len(&self) -> usize {
        2 + self.as_ref().len()
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_binary(buf, self)
    }
}

impl Value for UserProperty {
    fn read(r: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        Ok((r.string()?, r.string()?))
    }
    fn len(&self) -> usize {
        4 + self.0.as_str().len() + self.1.as_str().len()
    }
    fn write(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        put_str(buf, &self.0);
        put_str(buf, &self.1);
        Ok(())
    }
}

/// A property field of a packet: `Option<T>` may appear once, `Vec<T>` any number of times.
trait Field {
    fn read_into(&mut self, r: &mut Reader, id: u8) -> Result<(), DecodeError>;
    /// Encoded size including one identifier byte per value.
    fn len(&self) -> usize;
    fn write(&self, id: u8, buf: &mut BytesMut) -> Result<(), EncodeError>;
}

impl<T: Value> Field for Option<T> {
    fn read_into(&mut self, r: &mut Reader, id: u8) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(DecodeError::DuplicateProperty(id));
        }
        *self = Some(T::read(r, id)?);
        Ok(())
    }
    fn len(&self) -> usize {
        self.as_ref().map_or(0, |v| 1 + v.len())
    }
    fn write(&self, id: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if let Some(v) = self {
            buf.put_u8(id);
            v.write(buf)?;
        }
        Ok(())
    }
}

impl<T: Value> Field for Vec<T> {
    fn read_into(&mut self, r: &mut Reader, id: u8) -> Result<(), DecodeError> {
        self.push(T::read(r, id)?);
        Ok(())
    }
    fn len(&self) -> usize {
        self.iter().map(|v| 1 + v.len()).sum()
    }
    fn write(&self, id: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        for v in self {
            buf.put_u8(id);
            v.write(buf)?;
        }
        Ok(())
    }
}

macro_rules! property_set {
    (
        $(#[$doc:meta])*
        $name:ident {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty = $id:ident, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: $ty, )*
            /// User Properties, in order; names may repeat.
            pub user_properties: Vec<UserProperty>,
        }

        impl $name {
            /// True if no property is set.
            pub fn is_empty(&self) -> bool {
                self.user_properties.is_empty() $( && Field::len(&self.$field) == 0 )*
            }

            /// Reads a property length and the properties it covers.
            pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
                let len = r.var_int()? as usize;
                let mut r = r.sub(len)?;
                let mut props = Self::default();
                while r.has_remaining() {
                    let raw = r.var_int()?;
                    let Ok(pid) = u8::try_from(raw) else {
                        return Err(DecodeError::UnknownProperty(raw));
                    };
                    match pid {
                        $( id::$id => Field::read_into(&mut props.$field, &mut r, pid)?, )*
                        id::USER_PROPERTY => {
                            Field::read_into(&mut props.user_properties, &mut r, pid)?
                        }
                        _ if id::ALL.contains(&pid) => {
                            return Err(DecodeError::PropertyNotAllowed {
                                packet: r.packet(),
                                id: pid,
                            });
                        }
                        _ => return Err(DecodeError::UnknownProperty(raw)),
                    }
                }
                Ok(props)
            }

            /// Size of the properties, without the property length prefix.
            pub(crate) fn encoded_len(&self) -> usize {
                Field::len(&self.user_properties) $( + Field::len(&self.$field) )*
            }

            /// Writes the properties (`len` from [`Self::encoded_len`]) with their length prefix.
            pub(crate) fn encode(&self, len: usize, buf: &mut BytesMut) -> Result<(), EncodeError> {
                put_var_int(buf, len);
                $( Field::write(&self.$field, id::$id, buf)?; )*
                Field::write(&self.user_properties, id::USER_PROPERTY, buf)
            }
        }
    };
}

property_set! {
    /// CONNECT properties.
    ConnectProperties {
        /// Session Expiry Interval in seconds (absent: 0, the session ends with the connection).
        session_expiry_interval: Option<u32> = SESSION_EXPIRY_INTERVAL,
        /// Receive Maximum: QoS 1/2 publishes the client accepts at once (absent: 65 535).
        receive_maximum: Option<NonZeroU16> = RECEIVE_MAXIMUM,
        /// Maximum Packet Size the client accepts.
        maximum_packet_size: Option<NonZeroU32> = MAXIMUM_PACKET_SIZE,
        /// Topic Alias Maximum the client accepts (absent: 0).
        topic_alias_maximum: Option<u16> = TOPIC_ALIAS_MAXIMUM,
        /// Request Response Information.
        request_response_information: Option<bool> = REQUEST_RESPONSE_INFORMATION,
        /// Request Problem Information (absent: true).
        request_problem_information: Option<bool> = REQUEST_PROBLEM_INFORMATION,
        /// Authentication Method for enhanced authentication.
        authentication_method: Option<MqttStr> = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Option<Bytes> = AUTHENTICATION_DATA,
    }
}

property_set! {
    /// Will properties (in CONNECT).
    WillProperties {
        /// Will Delay Interval in seconds.
        will_delay_interval: Option<u32> = WILL_DELAY_INTERVAL,
        /// Payload Format Indicator: true if the payload is UTF-8 text.
        payload_format_indicator: Option<bool> = PAYLOAD_FORMAT_INDICATOR,
        /// Message Expiry Interval in seconds.
        message_expiry_interval: Option<u32> = MESSAGE_EXPIRY_INTERVAL,
        /// Content Type.
        content_type: Option<MqttStr> = CONTENT_TYPE,
        /// Response Topic.
        response_topic: Option<TopicName> = RESPONSE_TOPIC,
        /// Correlation Data.
        correlation_data: Option<Bytes> = CORRELATION_DATA,
    }
}

property_set! {
    /// CONNACK properties.
    ConnAckProperties {
        /// Session Expiry Interval chosen by the server.
        session_expiry_interval: Option<u32> = SESSION_EXPIRY_INTERVAL,
        /// Receive Maximum of the server.
        receive_maximum: Option<NonZeroU16> = RECEIVE_MAXIMUM,
        /// Maximum QoS the server supports (absent: 2).
        maximum_qos: Option<QoS> = MAXIMUM_QOS,
        /// Retain Available (absent: true).
        retain_available: Option<bool> = RETAIN_AVAILABLE,
        /// Maximum Packet Size the server accepts.
        maximum_packet_size: Option<NonZeroU32> = MAXIMUM_PACKET_SIZE,
        /// Client identifier assigned by the server.
        assigned_client_identifier: Option<MqttStr> = ASSIGNED_CLIENT_IDENTIFIER,
        /// Topic Alias Maximum of the server.
        topic_alias_maximum: Option<u16> = TOPIC_ALIAS_MAXIMUM,
        /// Reason String.
        reason_string: Option<MqttStr> = REASON_STRING,
        /// Wildcard Subscription Available (absent: true).
        wildcard_subscription_available: Option<bool> = WILDCARD_SUBSCRIPTION_AVAILABLE,
        /// Subscription Identifiers Available (absent: true).
        subscription_identifiers_available: Option<bool> = SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        /// Shared Subscription Available (absent: true).
        shared_subscription_available: Option<bool> = SHARED_SUBSCRIPTION_AVAILABLE,
        /// Server Keep Alive, overriding the client's keep-alive.
        server_keep_alive: Option<u16> = SERVER_KEEP_ALIVE,
        /// Response Information.
        response_information: Option<MqttStr> = RESPONSE_INFORMATION,
        /// Server Reference (another server to use).
        server_reference: Option<MqttStr> = SERVER_REFERENCE,
        /// Authentication Method.
        authentication_method: Option<MqttStr> = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Option<Bytes> = AUTHENTICATION_DATA,
    }
}

property_set! {
    /// PUBLISH properties.
    PublishProperties {
        /// Payload Format Indicator: true if the payload is UTF-8 text.
        payload_format_indicator: Option<bool> = PAYLOAD_FORMAT_INDICATOR,
        /// Message Expiry Interval in seconds.
        message_expiry_interval: Option<u32> = MESSAGE_EXPIRY_INTERVAL,
        /// Topic Alias.
        topic_alias: Option<NonZeroU16> = TOPIC_ALIAS,
        /// Response Topic.
        response_topic: Option<TopicName> = RESPONSE_TOPIC,
        /// Correlation Data.
        correlation_data: Option<Bytes> = CORRELATION_DATA,
        /// Subscription Identifiers of the matching subscriptions (server to client).
        subscription_identifiers: Vec<SubscriptionId> = SUBSCRIPTION_IDENTIFIER,
        /// Content Type.
        content_type: Option<MqttStr> = CONTENT_TYPE,
    }
}

property_set! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    AckProperties {
        /// Reason String.
        reason_string: Option<MqttStr> = REASON_STRING,
    }
}

property_set! {
    /// SUBSCRIBE properties.
    SubscribeProperties {
        /// Subscription Identifier.
        subscription_identifier: Option<SubscriptionId> = SUBSCRIPTION_IDENTIFIER,
    }
}

property_set! {
    /// UNSUBSCRIBE properties (User Properties only).
    UnsubscribeProperties {}
}

property_set! {
    /// DISCONNECT properties.
    DisconnectProperties {
        /// Session Expiry Interval (client to server only).
        session_expiry_interval: Option<u32> = SESSION_EXPIRY_INTERVAL,
        /// Reason String.
        reason_string: Option<MqttStr> = REASON_STRING,
        /// Server Reference (server to client).
        server_reference: Option<MqttStr> = SERVER_REFERENCE,
    }
}

property_set! {
    /// AUTH properties.
    AuthProperties {
        /// Authentication Method.
        authentication_method: Option<MqttStr> = AUTHENTICATION_METHOD,
        /// Authentication Data.
        authentication_data: Option<Bytes> = AUTHENTICATION_DATA,
        /// Reason String.
        reason_string: Option<MqttStr> = REASON_STRING,
    }
}
