//! A received application message.

use bytes::Bytes;
use sagitta_proto::{Publish, PublishProperties, QoS, TopicName};

/// An application message delivered by the broker.
///
/// Topic and payload share the receive buffer (no copy). The topic is always the full topic
/// name: a Topic Alias has already been resolved and is removed from `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: TopicName,
    /// Payload; may be empty.
    pub payload: Bytes,
    /// QoS of this delivery.
    pub qos: QoS,
    /// True for a retained message (sent because of a new subscription, or forwarded with
    /// Retain As Published).
    pub retain: bool,
    /// True if the broker says this may be a re-delivery.
    pub dup: bool,
    /// PUBLISH properties (5.0): Subscription Identifiers, Content Type, Response Topic,
    /// Correlation Data, User Properties...
    pub properties: PublishProperties,
}

impl Message {
    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    pub(crate) fn from_publish(p: Publish) -> Self {
        let mut properties = p.properties;
        properties.topic_alias = None;
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            properties,
        }
    }
}

/// The acknowledgement of a QoS 1/2 message received with manual acknowledgements
/// (`ClientBuilder::manual_acks`): give it to `Client::ack` once the message is taken care
/// of. An acknowledgement from an earlier connection is not sent (the broker sends the
/// message again on the resumed session).
#[doc(hidden)]
#[derive(Debug)]
pub struct Ack {
    pub(crate) connection: u32,
    pub(crate) packet: sagitta_proto::Packet,
}

/// A message in the `recv()` queue, with its acknowledgement when acknowledgements are
/// manual.
pub(crate) type Delivered = (Message, Option<Ack>);
