//! # sagitta-broker
//!
//! The Sagitta MQTT broker as a library: MQTT 3.1, 3.1.1 and 5.0 over TCP.
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
//! - `connection`: one task per client; the only code that touches a socket.
//! - `session`: the session registry, each session's bounded mailbox and protocol state.
//! - `router`: the subscription tree (wildcards, shared groups, No Local, overlap merging).
//! - `retain`: retained messages by topic level.
//! - [`message`]: the shared message type.
//! - [`config`]: typed TOML configuration with defaults and validation.
//! - [`auth`]: the [`Authenticator`] trait authentication plugs into.
//! - [`password`]: [`PasswordFile`], Mosquitto-compatible password-file authentication.
//! - [`metrics`]: broker-wide counters.
//!
//! The publish path: a connection task decodes a PUBLISH, matches it against the router under a
//! read lock, and pushes one `Arc`-shared message pointer into each matching session's bounded
//! mailbox; each subscriber's own task encodes and writes its messages in batches.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
#[doc(hidden)]
pub mod bench_support;
pub mod broker;
pub mod config;
mod connection;
pub mod message;
pub mod metrics;
pub mod password;
mod retain;
mod router;
mod session;

pub use auth::{AllowAll, Authenticator, ConnectInfo};
pub use broker::{Broker, BrokerBuilder, BrokerError, BrokerHandle};
pub use config::{Config, ConfigError};
pub use message::Message;
pub use metrics::Metrics;
pub use password::{PasswordFile, PasswordFileError, PasswordHash};
