//! Where authentication plugs in. Each listener decides about every CONNECT with its own
//! settings (`allow_anonymous`, `password_file`, `use_identity_as_username`), or a broker
//! built with `BrokerBuilder::authenticator` asks that [`Authenticator`] for every listener;
//! [`ConnectInfo`] tells it which listener and which client certificate the client came
//! with.

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
