//! # sagitta-client
//!
//! An MQTT 3.1.1 / 5.0 client: connect, subscribe with a callback or read messages with
//! `recv()`, publish with QoS 0, 1 or 2, unsubscribe, disconnect. A background event loop owns
//! the socket: it answers and sends pings, acknowledges, retries, and reconnects with capped
//! exponential backoff, resuming the session.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sagitta_client::{Client, QoS};
//!
//! let client = Client::connect("localhost:1883").await?;
//! client
//!     .subscribe("sensors/+/temp", QoS::AtLeastOnce, |topic, payload| {
//!         println!("{topic}: {}", String::from_utf8_lossy(payload));
//!     })
//!     .await?;
//! client.publish("sensors/1/temp", "21.5").await?; // QoS 0: returns once queued
//! client.publish_with("sensors/1/temp", "", QoS::ExactlyOnce).await?; // waits for PUBCOMP
//! client.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! Programs without an async runtime use [`blocking::Client`], with the same calls.
//!
//! ## Behaviour
//! - MQTT 5.0 by default; [`ClientBuilder::protocol`] selects 3.1.1 (or 3.1). The async client
//!   needs a tokio runtime (it spawns its event loop on the current one).
//! - Callbacks run on the event loop task, in the order messages arrive: they must not block.
//!   Messages that match a subscription without callback, or none (a resumed session can
//!   deliver before you subscribe again), go to the bounded queue read by [`Client::recv`];
//!   while it is full the event loop stops reading from the broker.
//! - Outbound flow control follows the broker's CONNACK: Receive Maximum bounds the QoS 1/2
//!   messages in flight (further publishes wait; 3.x brokers cannot say, so the client keeps
//!   at most 20 by default, see [`ClientBuilder::max_inflight`]), Maximum Packet Size is
//!   checked before sending ([`ClientError::PacketTooLarge`]), and repeated topics use Topic
//!   Aliases when the broker allows them.
//! - On reconnect with a session the broker kept, unacknowledged QoS 1/2 PUBLISHes are sent
//!   again in order with DUP (and PUBRELs); when the broker has no session, subscriptions are
//!   restored and unacknowledged messages published again.
//! - Anything malformed from the broker ends that connection with a [`ProtocolError`], never a
//!   panic.
//! - TLS 1.2 / 1.3 (rustls, `ring` provider) with [`ClientBuilder::tls`]: a CA file, an
//!   optional client certificate (mutual TLS), a server name override, or a ready
//!   [`rustls::ClientConfig`]; see [`TlsOptions`]. A certificate refused in the handshake is a
//!   [`ConnectError::TlsHandshake`] that ends reconnecting ([`ConnectError::is_fatal`]).
//!
//! ## Layout
//! - [`Client`] (`client.rs`): the cheap-to-clone async handle; requests go to the event loop
//!   through a bounded channel and come back through oneshot replies. Also [`Status`].
//! - `event_loop.rs`: the task that owns the socket — read, decode, dispatch, batch writes,
//!   keep-alive, QoS flows on `sagitta_proto::session`, reconnect and session resume.
//! - `connect.rs`: TCP connect, TLS handshake, CONNECT, CONNACK.
//! - `transport.rs`: the TCP or TLS stream and its read and write halves.
//! - [`TlsOptions`], [`TlsError`] (`tls.rs`): PEM files to a rustls configuration.
//! - [`ClientBuilder`], [`PublishOptions`], [`Subscription`], [`LastWill`] (`options.rs`).
//! - [`ReconnectPolicy`] (`reconnect.rs`): capped exponential backoff with jitter.
//! - [`Message`] (`message.rs`): a received message.
//! - [`blocking`]: the blocking facade.
//! - Errors (`error.rs`): [`ConnectError`], [`ClientError`], [`ProtocolError`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod client;
mod connect;
mod error;
mod event_loop;
mod message;
mod options;
mod reconnect;
mod tls;
mod transport;
mod ws;

pub use client::{Client, PendingPublish, State, Status};
pub use error::{ClientError, ConnectError, ProtocolError, ReasonString};
pub use message::{Ack, Message};
pub use options::{
    BoxedStream, ClientBuilder, Connector, DEFAULT_PORT, DEFAULT_TLS_PORT, IntoTopicFilter,
    IntoTopicName, IoStream, LastWill, PublishOptions, Subscription,
};
pub use reconnect::ReconnectPolicy;
pub use tls::{TlsError, TlsOptions};

/// The rustls version the client uses, for [`TlsOptions::with_config`] and
/// [`ConnectError::TlsHandshake`].
pub use rustls;

/// The codec crate, for the packet and property types used in advanced calls.
pub use sagitta_proto as proto;
pub use sagitta_proto::{
    Disconnect, DisconnectProperties, ProtocolVersion, PublishProperties, QoS, ReasonCode,
    RetainHandling, SubAck, SubscribeProperties, SubscriptionId, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, WillProperties,
};
