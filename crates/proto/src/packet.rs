//! The packet model: one set of types for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Fields that exist only in 5.0 (properties, most reason codes) are ignored when encoding for
//! 3.x and hold their defaults when decoding 3.x. Version-specific bytes live only in the codec.

use bytes::Bytes;

use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use crate::reason::ReasonCode;
use crate::string::MqttStr;
use crate::topic::{TopicFilter, TopicName};
use crate::types::{PacketId, PacketType, ProtocolVersion, QoS};

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT: client to server, first packet of a connection.
    Connect(Box<Connect>),
    /// CONNACK: server to client.
    ConnAck(ConnAck),
    /// PUBLISH: either direction.
    Publish(Publish),
    /// PUBACK: QoS 1 acknowledgement.
    PubAck(PubResponse),
    /// PUBREC: QoS 2, step 1.
    PubRec(PubResponse),
    /// PUBREL: QoS 2, step 2.
    PubRel(PubResponse),
    /// PUBCOMP: QoS 2, step 3.
    PubComp(PubResponse),
    /// SUBSCRIBE: client to server.
    Subscribe(Subscribe),
    /// SUBACK: server to client.
    SubAck(SubAck),
    /// UNSUBSCRIBE: client to server.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK: server to client.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT: client to server, or (5.0) server to client.
    Disconnect(Disconnect),
    /// AUTH: enhanced authentication exchange (5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version requested.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty.
    pub client_id: MqttStr,
    /// The will message, if any.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttStr>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: ConnectProperties,
    /// The bridge flag of MQTT 3.x brokers (Mosquitto's `try_private`): the protocol level
    /// byte has its top bit set (0x83 for 3.1, 0x84 for 3.1.1). The peer is a broker's
    /// bridge: it gets no echo of its own publications and retained flags as published.
    /// Never set for 5.0, where subscriptions say the same with No Local and Retain As
    /// Published.
    pub bridge: bool,
}

impl Connect {
    /// A CONNECT with the given version and client id, a clean session, keep-alive 60 s and
    /// nothing else.
    pub fn new(protocol: ProtocolVersion, client_id: MqttStr) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        }
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: TopicName,
    /// Will Payload (at most 65 535 bytes).
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: WillProperties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// The result. For 3.x only the codes that map to return codes 0–5 survive a round trip
    /// (see [`ReasonCode::to_v3_connack`]).
    pub reason: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: Box<ConnAckProperties>,
}

impl ConnAck {
    /// A CONNACK with `reason` and no properties.
    pub fn new(session_present: bool, reason: ReasonCode) -> Self {
        Self {
            session_present,
            reason,
            properties: Box::default(),
        }
    }
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery.
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name. Empty only in 5.0 with a Topic Alias.
    pub topic: TopicName,
    /// Packet identifier: present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// Payload; may be empty.
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: PublishProperties,
}

impl Publish {
    /// A QoS 0, non-retained PUBLISH of `payload` to `topic`.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            payload: payload.into(),
            properties: PublishProperties::default(),
        }
    }

    /// This PUBLISH as borrowed parts, for [`PublishRef::encode`].
    pub fn borrowed(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            payload: &self.payload,
            properties: &self.properties,
        }
    }
}

/// A PUBLISH to encode from borrowed parts: what a broker writes for each subscriber of one
/// shared message, without cloning its properties or touching the reference counts of its
/// topic and payload. Encodes exactly as the equal [`Publish`] does.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// DUP: this may be a re-delivery.
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name. Empty only in 5.0 with a Topic Alias.
    pub topic: &'a TopicName,
    /// Packet identifier: present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// Payload; may be empty.
    pub payload: &'a [u8],
    /// PUBLISH properties (5.0; not encoded for 3.x).
    pub properties: &'a PublishProperties,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (the packet type says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// Packet identifier of the PUBLISH this answers.
    pub packet_id: PacketId,
    /// Reason code (5.0; always Success in 3.x).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful response for `packet_id`.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// What the server does with retained messages when a subscription is made (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// 2: never send them.
    DoNotSend = 2,
}

/// Subscription options (3.x: the maximum QoS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local: do not send the client its own publications (5.0).
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of forwarded messages (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with `qos` and 5.0 defaults.
    pub fn new(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Topic filters with their options; never empty.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// SUBSCRIBE properties (5.0).
    pub properties: SubscribeProperties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason code per filter, in order (3.x: granted QoS or failure).
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: AckProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Topic filters; never empty.
    pub filters: Vec<TopicFilter>,
    /// Properties (5.0).
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason code per filter (5.0; empty in 3.x, which has none).
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: AckProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (5.0; Normal Disconnection in 3.x).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}

/// AUTH (5.0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}
