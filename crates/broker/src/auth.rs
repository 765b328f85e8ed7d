//! Where authentication plugs in. Each listener decides about every CONNECT with its own
//! settings (`allow_anonymous`, `password_file`, `use_identity_as_username`), or a broker
//! built with `BrokerBuilder::authenticator` asks that [`Authenticator`] for every listener;
//! [`ConnectInfo`] tells it which listener and which client certificate the client came
//! with.
//!
//! MQTT 5.0 enhanced authentication (a CONNECT with an Authentication Method, then AUTH
//! packets) is run by an [`AuthMethod`]: listeners with a `password_file` offer
//! `SCRAM-SHA-256` ([`crate::ScramSha256`]), and `BrokerBuilder::auth_method` adds others.
//! A CONNECT that names a method is decided by that method alone.

use std::net::SocketAddr;

use sagitta_proto::{ProtocolVersion, ReasonCode};

use crate::listener::ListenerInfo;
use crate::tls::ClientCertificate;

/// What a client presented in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// Client identifier (after assignment for an empty one).
    pub client_id: &'a str,
    /// User Name, if any. On a listener with `use_identity_as_username`, the client
    /// certificate's identity instead (the CONNECT's username and password are ignored).
    pub username: Option<&'a str>,
    /// Password, if any.
    pub password: Option<&'a [u8]>,
    /// Address of the peer.
    pub peer: SocketAddr,
    /// Protocol version.
    pub protocol: ProtocolVersion,
    /// The listener the client connected through.
    pub listener: &'a ListenerInfo,
    /// The client's certificate, verified against the listener's `client_ca` (mTLS).
    pub certificate: Option<&'a ClientCertificate>,
}

/// Decides whether a client may connect.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok(())` to accept, or the 5.0 reason code to refuse with (mapped to a 3.x return code
    /// for older clients, e.g. 0x86 → 4, 0x87 → 5).
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode>;
}

/// Accepts every client.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        Ok(())
    }
}

/// One step of an enhanced-authentication exchange, decided by an [`AuthExchange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 (Continue authentication) with this Authentication Data and wait
    /// for the client's next AUTH.
    Continue(Vec<u8>),
    /// The client is who it says: it is known as `username` from now on, and the CONNACK
    /// (or the AUTH 0x00 that ends a re-authentication) carries `data`.
    Success {
        /// The authenticated user.
        username: String,
        /// Final Authentication Data for the client, if the method has any.
        data: Option<Vec<u8>>,
    },
    /// Refuse with this reason code (e.g. 0x86 Bad User Name or Password, 0x87 Not
    /// authorized); the CONNACK or DISCONNECT carries it.
    Failure(ReasonCode),
}

/// An MQTT 5.0 enhanced authentication method (the Authentication Method property).
pub trait AuthMethod: Send + Sync + 'static {
    /// The method's name, as clients send it (e.g. `SCRAM-SHA-256`).
    fn name(&self) -> &str;

    /// Starts an exchange for a client; `info` is its CONNECT (for a re-authentication,
    /// what the connection began with). Each exchange is driven by one connection task;
    /// a step should not block for long (it runs on that task).
    fn start(&self, info: &ConnectInfo<'_>) -> Box<dyn AuthExchange>;
}

/// One client's exchange with an [`AuthMethod`].
pub trait AuthExchange: Send {
    /// Takes the client's next Authentication Data (first the CONNECT's, or the AUTH 0x19's
    /// of a re-authentication; then each AUTH 0x18's) and decides the next step.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}
