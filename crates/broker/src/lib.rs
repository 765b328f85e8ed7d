//! # sagitta-broker
//!
//! The Sagitta MQTT broker as a library: MQTT 3.1, 3.1.1 and 5.0 over TCP, TLS,
//! WebSocket and WebSocket over TLS.
//!
//! ```no_run
//! # async fn run() -> Result<(), sagitta_broker::BrokerError> {
//! let broker = sagitta_broker::Broker::bind("127.0.0.1:5000").await?;
//! broker.wait().await; // until broker.handle().shutdown() is called
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`broker`]: [`Broker`] (start, listeners, shutdown, `$SYS`) and the state its tasks share.
//! - [`listener`]: typed listeners (TCP, TLS, WS, WSS), their accept loops and per-listener
//!   authentication ([`ListenerInfo`] is what authenticators see of them).
//! - [`tls`]: PEM files to a rustls server configuration (mTLS, reload) and the identity of
//!   client certificates.
//! - `ws`: the WebSocket upgrade (path, subprotocol) and the adapter that makes a WebSocket a
//!   byte stream for `connection`.
//! - `connection`: one task per client; the only code that reads and writes MQTT on a socket.
//! - `session`: the session registry, each session's bounded mailbox and protocol state.
//! - `router`: the subscription tree (wildcards, shared groups, No Local, overlap merging).
//! - `retain`: retained messages by topic level.
//! - [`message`]: the shared message type.
//! - [`config`]: typed TOML configuration with defaults and validation.
//! - [`auth`]: the [`Authenticator`] trait authentication plugs into.
//! - [`acl`]: [`Acl`], who may publish, subscribe and receive where (`acl_file`).
//! - [`password`]: [`PasswordFile`], Mosquitto-compatible password-file authentication.
//! - [`metrics`]: broker-wide counters and histograms.
//! - `http`: the operators' HTTP listener (`[http]`: Prometheus metrics, health, readiness)
//!   over `admin`, the admin API's operations (clients, subscriptions, retained messages,
//!   publish) as plain functions returning JSON, and the web dashboard at `/`
//!   (`dashboard`: embedded files, overview and configuration; `live`: once-a-second samples
//!   and topic-explorer taps over a WebSocket).
//! - [`store`]: persistence of retained messages and persistent sessions (the [`store::Backend`]
//!   trait and its redb implementation, group commit, restart recovery).
//!
//! The publish path: a connection task decodes a PUBLISH, matches it against the router under a
//! read lock, and pushes one `Arc`-shared message pointer into each matching session's bounded
//! mailbox; each subscriber's own task encodes and writes its messages in batches.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
mod admin;
pub mod auth;
#[doc(hidden)]
pub mod bench_support;
pub mod bridge;
pub mod broker;
pub mod cluster;
pub mod config;
mod connection;
mod dashboard;
mod http;
mod limits;
pub mod listener;
mod live;
pub mod message;
pub mod metrics;
pub mod password;
mod reload;
mod retain;
mod router;
mod scram;
mod session;
pub mod store;
mod sys;
pub mod tls;
mod ws;

pub use acl::{Acl, AclError, Action, Authorizer};
pub use auth::{AllowAll, AuthExchange, AuthMethod, AuthStep, Authenticator, ConnectInfo};
pub use bridge::BridgeStatus;
pub use broker::{Broker, BrokerBuilder, BrokerError, BrokerHandle};
pub use cluster::ClusterError;
pub use config::{
    BridgeConfig, BridgeProtocol, ClusterConfig, Config, ConfigError, Direction, HttpConfig,
    ListenerConfig, ListenerKind, TopicRule,
};
pub use listener::ListenerInfo;
pub use message::Message;
pub use metrics::Metrics;
pub use password::{PasswordFile, PasswordFileError, PasswordHash};
pub use scram::ScramSha256;
pub use store::{StoreError, SyncMode};
pub use tls::{ClientCertificate, TlsError};
