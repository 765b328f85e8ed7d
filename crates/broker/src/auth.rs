//! Where authentication plugs in. The broker asks an [`Authenticator`] about every CONNECT;
//! the default, [`AllowAll`], lets every client in (the security issue adds password files,
//! certificates and ACLs behind the same trait).

use std::net::SocketAddr;

use sagitta_proto::{ProtocolVersion, ReasonCode};

/// What a client presented in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// Client identifier (after assignment for an empty one).
    pub client_id: &'a str,
    /// User Name, if any.
    pub username: Option<&'a str>,
    /// Password, if any.
    pub password: Option<&'a [u8]>,
    /// Address of the peer.
    pub peer: SocketAddr,
    /// Protocol version.
    pub protocol: ProtocolVersion,
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
