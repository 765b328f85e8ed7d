//! Codec errors. Every decode error names the rule it enforces and maps to the MQTT 5.0 reason
//! code a server or client sends before closing the connection.

use crate::reason::ReasonCode;
use crate::string::StringError;
use crate::topic::TopicError;
use crate::types::PacketType;

/// Why received bytes are not a valid packet. "Not enough bytes yet" is not an error: the
/// decoder returns `Ok(None)` for that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared packet size exceeds the receiver's maximum (checked before buffering).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size of the packet (fixed header included).
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// The remaining length uses more than four bytes, or more than its value needs
    /// [MQTT-1.5.5-1].
    #[error("remaining length is longer than 4 bytes or not minimally encoded [MQTT-1.5.5-1]")]
    MalformedRemainingLength,
    /// A variable byte integer in the body uses more than four bytes, or more than its value
    /// needs [MQTT-1.5.5-1].
    #[error("variable byte integer is longer than 4 bytes or not minimally encoded [MQTT-1.5.5-1]")]
    MalformedVarInt,
    /// Packet type 0 is reserved [MQTT-2.1.2].
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// AUTH (type 15) does not exist before MQTT 5.0.
    #[error("packet type 15 (AUTH) is not defined before MQTT 5.0")]
    AuthBeforeV5,
    /// The low nibble of the first byte is not what the packet type requires [MQTT-2.1.3-1].
    #[error("invalid fixed header flags {flags:#06b} for {packet} [MQTT-2.1.3-1]")]
    InvalidHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The flags received.
        flags: u8,
    },
    /// QoS 3 in a PUBLISH, a will or a subscription [MQTT-3.3.1-4].
    #[error("QoS 3 is not a valid QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// The body ended before a field it declares.
    #[error("{packet} ends before its fields do")]
    Truncated {
        /// The packet type.
        packet: PacketType,
    },
    /// Bytes left over after the last field of the packet.
    #[error("{packet} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The packet type.
        packet: PacketType,
        /// How many bytes were left.
        extra: usize,
    },
    /// A string field is not a valid MQTT string.
    #[error("invalid string in {packet}: {source}")]
    InvalidString {
        /// The packet type.
        packet: PacketType,
        /// The string rule that was broken.
        source: StringError,
    },
    /// The protocol name is neither "MQTT" nor "MQIsdp" [MQTT-3.1.2-1].
    #[error("unknown protocol name [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    /// The protocol level is not 3, 4 or 5 (or does not fit the protocol name) [MQTT-3.1.2-2].
    /// A server answers with CONNACK 0x01 (3.x) or 0x84 (5.0).
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion(u8),
    /// A CONNECT flag combination the spec forbids (reserved bit, will QoS/retain without a
    /// will, password without user name in 3.x).
    #[error("invalid CONNECT flags {flags:#010b}: {rule}")]
    InvalidConnectFlags {
        /// The flags byte received.
        flags: u8,
        /// The rule broken, with its spec statement.
        rule: &'static str,
    },
    /// A CONNACK acknowledge-flags byte with reserved bits set [MQTT-3.2.2-1].
    #[error("invalid CONNACK flags {0:#010b} [MQTT-3.2.2-1]")]
    InvalidConnAckFlags(u8),
    /// A packet identifier of zero where one is required [MQTT-2.2.1-3].
    #[error("packet identifier 0 in {packet} [MQTT-2.2.1-3]")]
    ZeroPacketId {
        /// The packet type.
        packet: PacketType,
    },
    /// A topic name that is empty or has wildcards.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// A topic filter that is empty or malformed.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// SUBSCRIBE or UNSUBSCRIBE with no topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    #[error("{packet} carries no topic filter [MQTT-3.8.3-3]")]
    NoTopicFilters {
        /// The packet type.
        packet: PacketType,
    },
    /// A subscription asking for QoS 3 (5.0: a Protocol Error; 3.1.1 [MQTT-3.8.3-4]).
    #[error("subscription QoS 3 is not a valid QoS")]
    InvalidSubscriptionQoS,
    /// Authentication Data without an Authentication Method (5.0 section 3.1.2.11.10).
    #[error("authentication data without an authentication method")]
    AuthDataWithoutMethod,
    /// Subscription options with reserved bits set [MQTT-3.8.3-5].
    #[error("reserved bits set in subscription options {0:#010b} [MQTT-3.8.3-5]")]
    InvalidSubscriptionOptions(u8),
    /// Retain Handling value 3.
    #[error("retain handling 3 is not defined")]
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// A reason code that is not defined, or not allowed in this packet.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The byte received.
        code: u8,
    },
    /// A property identifier the spec does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property that is not allowed in this packet.
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The packet type.
        packet: PacketType,
        /// The property identifier.
        id: u8,
    },
    /// A property that may appear once appears again.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range (e.g. Receive Maximum 0).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A PUBLISH with an empty topic name and no Topic Alias [MQTT-3.3.2-1].
    #[error("empty topic name without a topic alias [MQTT-3.3.2-1]")]
    EmptyTopicWithoutAlias,
}

impl DecodeError {
    /// The MQTT 5.0 reason code to send in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            // The 5.0 spec calls these Protocol Errors rather than malformed packets.
            DupOnQoS0
            | ZeroPacketId { .. }
            | NoTopicFilters { .. }
            | InvalidRetainHandling
            | InvalidSubscriptionQoS
            | AuthDataWithoutMethod
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | EmptyTopicWithoutAlias
            | InvalidProtocolName
            | AuthBeforeV5 => ReasonCode::ProtocolError,
            MalformedRemainingLength
            | MalformedVarInt
            | ReservedPacketType
            | InvalidHeaderFlags { .. }
            | InvalidQoS
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidString { .. }
            | InvalidConnectFlags { .. }
            | InvalidConnAckFlags(_)
            | InvalidSubscriptionOptions(_)
            | InvalidReasonCode { .. }
            | UnknownProperty(_)
            | PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed the 268 435 455-byte remaining-length limit.
    #[error("packet body of {0} bytes exceeds the MQTT limit of 268435455 bytes")]
    PacketTooLarge(usize),
    /// A binary field (password, will payload, correlation or authentication data) is longer
    /// than 65 535 bytes.
    #[error("binary field of {0} bytes is longer than 65535 bytes")]
    BinaryTooLong(usize),
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet} does not exist in MQTT {version}")]
    NotInVersion {
        /// The packet type.
        packet: PacketType,
        /// The version asked for.
        version: crate::types::ProtocolVersion,
    },
    /// A QoS 1/2 PUBLISH without a packet identifier, or a QoS 0 one with one.
    #[error("PUBLISH packet identifier does not match its QoS [MQTT-2.2.1-2]")]
    PacketIdMismatch,
    /// SUBSCRIBE, UNSUBSCRIBE or SUBACK without entries.
    #[error("{0} must carry at least one entry")]
    Empty(PacketType),
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    #[error("DUP must be 0 on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// An empty topic name without a Topic Alias (or in 3.x, which has no aliases).
    #[error("empty topic name without a topic alias [MQTT-4.7.3-1]")]
    EmptyTopic,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("No Local must not be set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// An MQTT 3.x CONNECT with a password but no user name [MQTT-3.1.2-22].
    #[error("MQTT 3.x does not allow a password without a user name [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
}
