//! Errors, one enum per concern: [`ConnectError`] for establishing a connection (with
//! [`TlsError`] for unusable TLS settings),
//! [`ClientError`] for the calls of a connected client, [`ProtocolError`] for what a broker
//! sent that breaks the protocol (it ends that connection).

use std::fmt;
use std::io;
use std::sync::Arc;

use sagitta_proto::session::{AliasError, FlowError};
use sagitta_proto::{DecodeError, EncodeError, PacketType, QoS, ReasonCode, TopicError};

use crate::tls::TlsError;

/// An optional reason string, shown after a reason code in error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasonString(pub Option<String>);

impl fmt::Display for ReasonString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, ": \"{s}\""),
            None => Ok(()),
        }
    }
}

impl ReasonString {
    pub(crate) fn from_opt(s: Option<&sagitta_proto::MqttStr>) -> Self {
        Self(s.map(|s| s.to_string()))
    }
}

/// Why a connection could not be established.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The options cannot make a valid CONNECT (an invalid client id or will topic, a password
    /// without a user name in 3.x...).
    #[error("invalid connect options: {0}")]
    InvalidOptions(String),
    /// Resolving or connecting to the address failed, or the socket failed before CONNACK.
    #[error("could not connect to {addr}: {source}")]
    Io {
        /// The address as given.
        addr: String,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// No CONNACK within the connect timeout.
    #[error("no CONNACK from {addr} within {timeout:?}")]
    Timeout {
        /// The address as given.
        addr: String,
        /// The timeout in force.
        timeout: std::time::Duration,
    },
    /// The broker refused the credentials or the client (CONNACK 0x86 Bad User Name or
    /// Password, 0x87 Not authorized; 3.x return codes 4 and 5).
    #[error("not authorized by the broker: {reason}{reason_string}")]
    NotAuthorized {
        /// The CONNACK reason code.
        reason: ReasonCode,
        /// The broker's Reason String (5.0), if any.
        reason_string: ReasonString,
    },
    /// The broker refused the connection with this CONNACK reason code.
    #[error("connection refused by the broker: {reason}{reason_string}")]
    Refused {
        /// The CONNACK reason code (3.x return codes are mapped to their 5.0 equivalents).
        reason: ReasonCode,
        /// The broker's Reason String (5.0), if any.
        reason_string: ReasonString,
        /// The Server Reference (5.0), when the broker names another server to use.
        server_reference: Option<String>,
    },
    /// The TLS settings cannot be used: a CA, certificate or key file that cannot be read or
    /// holds nothing usable, a key that does not match its certificate, an invalid server
    /// name. The message names the file.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The TLS handshake failed: the broker's certificate was refused (unknown CA, not valid
    /// for the server name, expired...), the broker refused ours (or its absence), or there
    /// is no protocol version or cipher suite in common.
    #[error("TLS handshake with {addr} failed: {}", crate::tls::describe(.error))]
    TlsHandshake {
        /// The address as given.
        addr: String,
        /// The rustls error (re-exported as [`crate::rustls::Error`]).
        error: rustls::Error,
    },
    /// The broker answered a plain connection with TLS: the port is a TLS listener, connect
    /// with [`crate::ClientBuilder::tls`].
    #[error("{addr} answered with TLS: this port needs a TLS connection")]
    TlsRequired {
        /// The address as given.
        addr: String,
    },
    /// SCRAM-SHA-256 authentication ([`crate::ClientBuilder::scram_sha256`]) failed on our
    /// side: the broker's answers were malformed, or its final signature did not prove that
    /// it knows the password (a broker impersonating the real one).
    #[error("SCRAM-SHA-256 authentication with {addr} failed: {error}")]
    Scram {
        /// The address as given.
        addr: String,
        /// What went wrong.
        error: sagitta_proto::scram::ScramError,
    },
    /// The broker closed the connection before sending CONNACK.
    #[error("the broker closed the connection before CONNACK")]
    Closed,
    /// The broker's answer to CONNECT broke the protocol.
    #[error("protocol error before CONNACK: {0}")]
    Protocol(#[from] ProtocolError),
    /// A blocking call was made from inside an async runtime, where it would deadlock.
    #[error("the blocking client cannot be used from inside an async runtime")]
    BlockingInRuntime,
    /// The async client was used outside a tokio runtime (use the blocking client there).
    #[error("no tokio runtime: connect from within one, or use sagitta_client::blocking")]
    NoRuntime,
}

impl ConnectError {
    /// The CONNACK reason code, when the broker refused the connection.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Self::NotAuthorized { reason, .. } | Self::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// True if trying again cannot help (bad credentials, banned, invalid client id,
    /// unsupported protocol version, invalid options, unusable TLS files, a certificate
    /// refused by either side in the TLS handshake).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::InvalidOptions(_)
            | Self::NotAuthorized { .. }
            | Self::BlockingInRuntime
            | Self::Tls(_)
            | Self::TlsRequired { .. }
            | Self::Scram { .. } => true,
            Self::TlsHandshake { error, .. } => crate::tls::is_fatal(error),
            Self::Refused { reason, .. } => matches!(
                reason,
                ReasonCode::Banned
                    | ReasonCode::ClientIdentifierNotValid
                    | ReasonCode::UnsupportedProtocolVersion
                    | ReasonCode::BadAuthenticationMethod
            ),
            _ => false,
        }
    }
}

/// What a broker sent that breaks the protocol. The client closes that connection (5.0: with
/// a DISCONNECT carrying [`ProtocolError::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Bytes that do not decode as a packet.
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet a broker must not send (CONNECT, SUBSCRIBE...), or CONNACK twice.
    #[error("unexpected {0} from the broker")]
    Unexpected(PacketType),
    /// An acknowledgement that does not fit the message's QoS or stage.
    #[error("acknowledgement out of order: {0}")]
    Flow(FlowError),
    /// An invalid Topic Alias in a PUBLISH.
    #[error("invalid topic alias from the broker: {0}")]
    TopicAlias(#[from] AliasError),
    /// More unacknowledged QoS 2 PUBLISHes than our Receive Maximum.
    #[error("the broker exceeded our Receive Maximum")]
    ReceiveMaximumExceeded,
    /// A QoS 1/2 PUBLISH without a packet identifier.
    #[error("QoS {0} PUBLISH without a packet identifier")]
    MissingPacketId(QoS),
    /// The broker asked for enhanced authentication, which this client does not implement.
    #[error("enhanced authentication (AUTH) is not supported")]
    AuthNotSupported,
}

impl ProtocolError {
    /// The 5.0 reason code for the DISCONNECT the client sends before closing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Decode(e) => e.reason_code(),
            Self::TopicAlias(_) => ReasonCode::TopicAliasInvalid,
            Self::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            Self::AuthNotSupported => ReasonCode::BadAuthenticationMethod,
            Self::Unexpected(_) | Self::Flow(_) | Self::MissingPacketId(_) => {
                ReasonCode::ProtocolError
            }
        }
    }
}

/// Why a call on a connected client failed, or why its connection ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The client is closed: `disconnect()` was called, or its event loop ended.
    #[error("the client is closed")]
    Closed,
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(Arc<io::Error>),
    /// The broker closed the connection without a DISCONNECT.
    #[error("the broker closed the connection")]
    ConnectionClosed,
    /// No PINGRESP came in time: the connection is considered dead.
    #[error("no PINGRESP within {0:?}: connection is dead")]
    KeepAliveTimeout(std::time::Duration),
    /// The broker sent DISCONNECT (5.0).
    #[error("disconnected by the server: {reason}{reason_string}")]
    DisconnectedByServer {
        /// The DISCONNECT reason code.
        reason: ReasonCode,
        /// The broker's Reason String, if any.
        reason_string: ReasonString,
        /// The Server Reference, if the broker names another server to use.
        server_reference: Option<String>,
    },
    /// The broker broke the protocol; the client closed the connection.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Reconnecting failed for good (a fatal refusal, or the attempts ran out).
    #[error("reconnect failed: {0}")]
    Reconnect(ConnectError),
    /// The broker refused the request as not authorized (reason 0x87).
    #[error("not authorized: {operation}{reason_string}")]
    NotAuthorized {
        /// What was refused, e.g. `PUBLISH to a/b`.
        operation: String,
        /// The broker's Reason String, if any.
        reason_string: ReasonString,
    },
    /// The packet is larger than the broker's Maximum Packet Size (5.0).
    #[error("packet of {size} bytes exceeds the broker's maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The encoded size of the packet.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// The broker refused a QoS 1/2 PUBLISH (PUBACK or PUBREC reason code >= 0x80).
    #[error("PUBLISH to {topic} refused: {reason}{reason_string}")]
    PublishRefused {
        /// The topic published to.
        topic: String,
        /// The reason code.
        reason: ReasonCode,
        /// The broker's Reason String, if any.
        reason_string: ReasonString,
    },
    /// The broker refused a subscription (SUBACK reason code >= 0x80).
    #[error("subscription to {filter} refused: {reason}{reason_string}")]
    SubscribeRefused {
        /// The topic filter.
        filter: String,
        /// The reason code (3.x: 0x80 Unspecified error).
        reason: ReasonCode,
        /// The broker's Reason String, if any.
        reason_string: ReasonString,
    },
    /// The broker refused an unsubscription (UNSUBACK reason code >= 0x80, 5.0).
    #[error("unsubscribe from {filter} refused: {reason}{reason_string}")]
    UnsubscribeRefused {
        /// The topic filter.
        filter: String,
        /// The reason code.
        reason: ReasonCode,
        /// The broker's Reason String, if any.
        reason_string: ReasonString,
    },
    /// The QoS is above the broker's Maximum QoS (5.0).
    #[error("QoS {requested} is above the broker's maximum QoS {maximum}")]
    QoSNotSupported {
        /// The QoS asked for.
        requested: QoS,
        /// The broker's maximum.
        maximum: QoS,
    },
    /// The broker does not support retained messages (5.0 Retain Available = 0).
    #[error("the broker does not support retained messages")]
    RetainNotSupported,
    /// An invalid topic name or filter.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// A request that cannot be encoded (a field too long...).
    #[error("cannot encode the request: {0}")]
    Encode(#[from] EncodeError),
    /// A blocking call was made from inside an async runtime, where it would deadlock.
    #[error("the blocking client cannot be used from inside an async runtime")]
    BlockingInRuntime,
}

impl ClientError {
    pub(crate) fn io(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }

    /// The reason code the broker gave, if this error carries one.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Self::DisconnectedByServer { reason, .. }
            | Self::PublishRefused { reason, .. }
            | Self::SubscribeRefused { reason, .. }
            | Self::UnsubscribeRefused { reason, .. } => Some(*reason),
            Self::NotAuthorized { .. } => Some(ReasonCode::NotAuthorized),
            Self::Reconnect(e) => e.reason(),
            _ => None,
        }
    }
}
