//! # sagitta-proto
//!
//! A sans-IO codec for every control packet of MQTT 3.1, 3.1.1 and 5.0, with the validated
//! string and topic types, reason codes and typed properties that Sagitta's broker and client
//! share. No I/O, no async runtime, no clock.
//!
//! ## Layout
//! - [`types`]: protocol version, QoS, packet identifiers, packet types.
//! - [`string`]: [`MqttStr`], a validated, zero-copy MQTT UTF-8 string.
//! - [`topic`]: [`TopicName`], [`TopicFilter`], wildcard matching, shared subscriptions.
//! - [`reason`]: [`ReasonCode`] and its 3.x return-code mapping.
//! - [`properties`]: one typed property struct per packet (the spec's allow-list).
//! - [`packet`]: the [`Packet`] model, one set of types for all versions.
//! - [`decode`]: check-then-parse incremental decoding ([`decode()`], [`parse_header`]).
//! - `encode`: [`Packet::encode`] / [`Packet::encoded_len`], sizes computed once.
//! - [`session`]: per-session protocol state shared by broker and client (in-flight window,
//!   QoS 2 de-duplication, topic aliases, keep-alive deadlines).
//! - `scram` (feature `scram`): SCRAM-SHA-256 for 5.0 enhanced authentication, both sides.
//! - [`error`]: [`DecodeError`] (each maps to a 5.0 reason code) and [`EncodeError`].
//!
//! ## Example
//! ```
//! use bytes::BytesMut;
//! use sagitta_proto::{Packet, ProtocolVersion, Publish, TopicName, decode};
//!
//! let publish = Publish::new(TopicName::new("sensors/1").unwrap(), "21.5");
//! let mut buf = BytesMut::new();
//! Packet::Publish(publish.clone()).encode(ProtocolVersion::V5, &mut buf).unwrap();
//!
//! // Bytes arrive in pieces: an incomplete packet is `Ok(None)`, not an error.
//! let mut rx = BytesMut::from(&buf[..3]);
//! assert_eq!(decode(&mut rx, ProtocolVersion::V5, 1 << 20), Ok(None));
//! rx.extend_from_slice(&buf[3..]);
//! assert_eq!(decode(&mut rx, ProtocolVersion::V5, 1 << 20), Ok(Some(Packet::Publish(publish))));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod decode;
mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
#[cfg(feature = "scram")]
pub mod scram;
pub mod session;
pub mod string;
pub mod topic;
pub mod types;
mod wire;

pub use decode::{FixedHeader, decode, decode_body, parse_header};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubResponse, Publish, PublishRef, RetainHandling,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, SubscriptionId, UnsubscribeProperties, UserProperty,
    WillProperties,
};
pub use reason::{PacketKind, ReasonCode};
pub use string::{MqttStr, StringError};
pub use topic::{SharedFilter, TopicError, TopicFilter, TopicName};
pub use types::{PacketId, PacketType, ProtocolVersion, QoS};
pub use wire::MAX_VAR_INT;
