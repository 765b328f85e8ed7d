//! One client connection: CONNECT handshake, then a loop that reads and handles packets,
//! moves queued messages from the session mailbox to the socket, and watches keep-alive,
//! takeover and shutdown. The only code that touches the socket.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sagitta_proto::session::{
    FlowError, InboundAliases, OutboundAlias, OutboundAliases, PubRecOutcome, Qos2Publish, Stage,
    server_keep_alive_deadline,
};
use sagitta_proto::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, MqttStr, Packet, ProtocolVersion, PubResponse,
    Publish, PublishProperties, PublishRef, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    TopicName, UnsubAck, Unsubscribe, Will, decode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Sleep;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::acl::Action;
use crate::auth::{AuthExchange, AuthMethod, AuthStep, ConnectInfo};
use crate::broker::{BodyHold, Shared};
use crate::limits::PublishLimit;
use crate::listener::{ConnContext, Slot};
use crate::message::{ClientId, Delivery, Message};
use crate::metrics::{Metrics, Refused};
use crate::router::Target;
use crate::session::{ClientInfo, Kick, KickReason, NEVER_EXPIRES, SessionEntry, SessionState};
use crate::store::{Store, SyncMode};

/// Bytes reserved for a socket read at first; an idle connection keeps no more than this.
const READ_MIN: usize = 256;
/// Largest reservation for one read, reached by doubling while reads fill the buffer.
const READ_MAX: usize = 64 * 1024;
/// Stop encoding queued messages once this much output is pending, to go back to reading.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Messages taken from the mailbox per lock.
const BATCH: usize = 64;
/// How long a client whose QoS 0 writes find the store's queue full is not read from.
const STORE_BACKOFF: Duration = Duration::from_millis(10);

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT; `will` if it asked for its will to be sent (5.0 0x04).
    ClientDisconnect { will: bool },
    /// A protocol violation: 5.0 clients get DISCONNECT with this reason; the will is sent.
    Protocol(ReasonCode, String),
    /// Re-authentication failed: 5.0 DISCONNECT with this reason; the will is sent.
    Refused(ReasonCode),
    /// The socket closed or failed without DISCONNECT; the will is sent.
    Network,
    /// Nothing received for 1.5 x keep-alive; the will is sent.
    KeepAlive,
    /// Another connection took the session over: DISCONNECT 0x8E, the will is sent.
    TakenOver,
    /// An operator disconnected the client (admin API): DISCONNECT 0x98, the will is sent;
    /// with `end_session` the session ends too.
    Admin { end_session: bool },
    /// The broker is shutting down: DISCONNECT 0x8B, the will is sent.
    Shutdown,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::ClientDisconnect { will: false } => f.write_str("DISCONNECT from the client"),
            Close::ClientDisconnect { will: true } => {
                f.write_str("DISCONNECT from the client, with its will")
            }
            Close::Protocol(reason, why) => write!(f, "protocol error: {why} ({reason})"),
            Close::Refused(reason) => write!(f, "re-authentication failed ({reason})"),
            Close::Network => f.write_str("connection closed or failed without DISCONNECT"),
            Close::KeepAlive => f.write_str("keep-alive timeout"),
            Close::TakenOver => f.write_str("session taken over by another connection"),
            Close::Shutdown => f.write_str("broker shutting down"),
            Close::Admin { end_session: false } => f.write_str("disconnected by an operator"),
            Close::Admin { end_session: true } => {
                f.write_str("disconnected by an operator, session ended")
            }
        }
    }
}

/// Serves one accepted socket until it closes.
///
/// Each phase (CONNECT and handshake, the session, the goodbye) runs as a future of its own on
/// the heap, so that an idle connection keeps only its session phase's state: an async fn's
/// future is as large as its largest state, for its whole life.
pub(crate) fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    ctx: ConnContext,
    slot: Slot,
) -> impl Future<Output = ()> + Send
where
    S: Transport,
{
    // A debug-level span: at the default level it costs nothing per connection (a span
    // with its formatted fields takes ~400 bytes), so the lines logged at info and above
    // name the client themselves.
    let span = debug_span!("conn", %peer, client_id = tracing::field::Empty);
    let opening = Box::pin(open(shared, stream, peer, ctx, slot));
    async move {
        let Some(mut conn) = opening.await else {
            return;
        };
        let close = Box::pin(conn.run()).await;
        Box::pin(conn.finish(close)).await;
    }
    .instrument(span)
}

/// Reads CONNECT and answers it: the connection, ready to run, or `None`.
async fn open<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    ctx: ConnContext,
    slot: Slot,
) -> Option<Box<Conn<S>>>
where
    S: Transport,
{
    let mut io = Io {
        stream,
        _slot: slot,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        read_chunk: READ_MIN,
        bytes_in: 0,
        bytes_out: 0,
    };
    let connect = read_connect(&shared, &mut io).await?;
    handshake(shared, io, connect, peer, ctx)
        .await
        .map(Box::new)
}

thread_local! {
    /// Scratch space of the publish path, per worker thread rather than per connection: a
    /// connection uses it only between two awaits, and idle connections then carry none.
    static TARGETS: std::cell::Cell<Vec<Target>> = const { std::cell::Cell::new(Vec::new()) };
    /// Scratch space for messages taken from a mailbox; see [`TARGETS`].
    static BATCH_SCRATCH: std::cell::Cell<Vec<Delivery>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether a topic name or filter has more than `max` levels.
fn too_many_levels(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|b| *b == b'/').count() >= max
}

/// The topic of a 5.0 PUBLISH that uses an established topic alias.
static EMPTY_TOPIC: TopicName = TopicName::empty();

/// A byte stream the broker serves MQTT over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when the stream may have bytes to read, so that a quiet connection can wait
    /// without holding a read buffer. The default is ready at once (the read then waits,
    /// with its buffer), for streams that cannot tell, such as TLS with buffered plaintext.
    /// A poll function rather than an async one: the waiting future stays one pointer wide.
    fn poll_readable(
        &self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// TLS may hold decrypted bytes that the socket's readiness does not show: read at once.
impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

impl Transport for tokio::net::TcpStream {
    fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Any byte stream, served as a socket that cannot tell its readiness
/// (`Broker::serve_stream`: in-memory streams in tests and fuzzing).
pub(crate) struct AnyStream<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for AnyStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for AnyStream<S> {}

/// The socket and its buffers.
struct Io<S> {
    stream: S,
    /// This connection's place under `max_connections`, given back when the socket closes.
    _slot: Slot,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// How much to reserve for the next read: grows while reads fill it, shrinks when idle.
    read_chunk: usize,
    bytes_in: u64,
    bytes_out: u64,
}

impl<S: Transport> Io<S> {
    async fn read(&mut self) -> std::io::Result<usize> {
        if self.rbuf.is_empty() && self.read_chunk == READ_MIN {
            // A quiet connection: give the buffer back and wait for bytes without one, so an
            // idle client costs no read buffer at all.
            self.rbuf = BytesMut::new();
            let stream = &mut self.stream;
            std::future::poll_fn(move |cx| stream.poll_readable(cx)).await?;
        } else if self.rbuf.is_empty() && self.rbuf.capacity() > 2 * self.read_chunk {
            // Give back a large buffer once it is drained.
            self.rbuf = BytesMut::new();
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
            self.rbuf.reserve(self.read_chunk);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        self.read_chunk = if n == spare {
            (self.read_chunk * 2).min(READ_MAX)
        } else if n < self.read_chunk / 4 {
            (self.read_chunk / 2).max(READ_MIN)
        } else {
            self.read_chunk
        };
        self.bytes_in += n as u64;
        Ok(n)
    }

    /// Writes the output buffer out. Cancel-safe: each write takes what it wrote off the
    /// buffer, so a flush given up half-way (takeover, shutdown) leaves exactly the unwritten
    /// tail for the next one, and the peer never sees bytes twice.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let capacity = self.wbuf.capacity();
        while !self.wbuf.is_empty() {
            let n = self.stream.write_buf(&mut self.wbuf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.bytes_out += n as u64;
        }
        // TLS streams may keep the tail of a write buffered (a no-op for TCP).
        self.stream.flush().await?;
        // Give back a large buffer, and a small one on a quiet connection: an idle client
        // then holds no write buffer (its last write was CONNACK or a PINGRESP).
        let quiet = self.read_chunk == READ_MIN && capacity <= 1024;
        if quiet || capacity > 2 * WRITE_HIGH_WATER {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    fn send(&mut self, packet: &Packet, version: ProtocolVersion) {
        if let Err(e) = packet.encode(version, &mut self.wbuf) {
            warn!(error = %e, packet = %packet.packet_type(), "cannot encode packet");
        }
    }
}

/// Reads the first packet, which must be CONNECT, within the connect timeout.
async fn read_connect<S: Transport>(shared: &Shared, io: &mut Io<S>) -> Option<Box<Connect>> {
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout();
    match read_packet(shared, io, ProtocolVersion::V5, deadline).await? {
        Ok(Packet::Connect(c)) => Some(c),
        Ok(other) => {
            debug!(packet = %other.packet_type(), "first packet is not CONNECT [MQTT-3.1.0-1]");
            shared.metrics.refused(Refused::Protocol);
            None
        }
        Err(bad) => {
            shared.metrics.refused(Refused::Protocol);
            refuse_malformed_connect(io, &bad).await;
            None
        }
    }
}

/// A packet that could not be decoded.
struct Undecodable {
    error: DecodeError,
    /// The protocol level byte if the packet is a CONNECT, read before the decoder took the
    /// packet out of the buffer (it does so once the packet is complete, even if its body is
    /// bad): what version the refusal must be written in.
    connect_level: Option<u8>,
}

/// Reads one packet before the connection runs (CONNECT, then AUTH during enhanced
/// authentication): `None` if the peer closed, the deadline passed or the broker is shutting
/// down.
async fn read_packet<S: Transport>(
    shared: &Shared,
    io: &mut Io<S>,
    version: ProtocolVersion,
    deadline: tokio::time::Instant,
) -> Option<Result<Packet, Undecodable>> {
    let max = shared.config.max_packet_size as usize;
    loop {
        let connect_level = connect_level(&io.rbuf);
        match decode(&mut io.rbuf, version, max) {
            Ok(Some(packet)) => return Some(Ok(packet)),
            Ok(None) => {}
            Err(error) => {
                return Some(Err(Undecodable {
                    error,
                    connect_level,
                }));
            }
        }
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read()) => r,
            _ = shared.shutdown.cancelled() => return None,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => {
                debug!("connect timeout: the handshake did not finish in time");
                shared.metrics.refused(Refused::Timeout);
                return None;
            }
        }
    }
}

/// How an enhanced-authentication exchange during CONNECT ended, if not with success.
enum AuthEnd {
    /// Refuse with this reason code in CONNACK.
    Refuse(ReasonCode),
    /// The peer went away, broke the protocol beyond an answer, or took too long.
    Gone,
}

/// Runs an enhanced-authentication exchange [MQTT-4.12.0]: AUTH 0x18 packets both ways
/// until the method decides. Returns the authenticated username and the data for CONNACK.
async fn enhanced_auth<S: Transport>(
    shared: &Shared,
    io: &mut Io<S>,
    exchange: &mut dyn AuthExchange,
    method: &MqttStr,
    first: Option<&[u8]>,
) -> Result<(String, Option<Vec<u8>>), AuthEnd> {
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout();
    let mut step = exchange.step(first);
    loop {
        let data = match step {
            AuthStep::Success { username, data } => return Ok((username, data)),
            AuthStep::Failure(reason) => return Err(AuthEnd::Refuse(reason)),
            AuthStep::Continue(data) => data,
        };
        io.send(
            &Packet::Auth(auth_packet(
                ReasonCode::ContinueAuthentication,
                method,
                Some(data),
            )),
            ProtocolVersion::V5,
        );
        if io.flush().await.is_err() {
            return Err(AuthEnd::Gone);
        }
        match read_packet(shared, io, ProtocolVersion::V5, deadline).await {
            None | Some(Ok(Packet::Disconnect(_))) => return Err(AuthEnd::Gone),
            Some(Ok(Packet::Auth(a)))
                if a.reason == ReasonCode::ContinueAuthentication
                    && a.properties.authentication_method.as_ref() == Some(method) =>
            {
                step = exchange.step(a.properties.authentication_data.as_deref());
            }
            Some(Ok(other)) => {
                debug!(packet = %other.packet_type(), "expected AUTH 0x18 with the CONNECT's method [MQTT-4.12.0-4]");
                return Err(AuthEnd::Refuse(ReasonCode::ProtocolError));
            }
            Some(Err(bad)) => {
                debug!(error = %bad.error, "bad packet during authentication");
                return Err(AuthEnd::Refuse(bad.error.reason_code()));
            }
        }
    }
}

/// An AUTH packet of `method`.
fn auth_packet(reason: ReasonCode, method: &MqttStr, data: Option<Vec<u8>>) -> Auth {
    let mut auth = Auth {
        reason,
        ..Auth::default()
    };
    auth.properties.authentication_method = Some(method.clone());
    auth.properties.authentication_data = data.map(Into::into);
    auth
}

/// Answers a CONNECT that could not be decoded: an unsupported protocol level gets CONNACK
/// 0x01 (3.x format, which every version can read) [MQTT-3.1.2-2]; a 5.0 CONNECT gets a 5.0
/// CONNACK with the reason; anything else is closed without an answer.
async fn refuse_malformed_connect<S: Transport>(io: &mut Io<S>, bad: &Undecodable) {
    debug!(error = %bad.error, "bad CONNECT");
    let (version, reason) = match &bad.error {
        DecodeError::UnsupportedProtocolVersion(_) => (
            ProtocolVersion::V3_1_1,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        e if bad.connect_level == Some(5) => (ProtocolVersion::V5, e.reason_code()),
        _ => return,
    };
    io.send(&Packet::ConnAck(ConnAck::new(false, reason)), version);
    // The connection closes right after; a failed write changes nothing.
    let _ = io.flush().await;
}

/// The protocol level byte of a CONNECT at the front of `buf`, if it can be found.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let header_len = 1 + buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_len = u16::from_be_bytes([*buf.get(header_len)?, *buf.get(header_len + 1)?]);
    buf.get(header_len + 2 + usize::from(name_len)).copied()
}

/// Makes a successful 5.0 CONNACK fit the client's Maximum Packet Size [MQTT-3.1.2-24] by
/// leaving out what the client can do without: Reason String and User Properties (never sent
/// if too large [MQTT-3.2.2-19] [MQTT-3.2.2-20]), Response Information, then Topic Alias
/// Maximum (absent means 0: the client uses no aliases, which is always allowed). Whether it
/// fits then; the rest (assigned client id, limits the client must respect) cannot go.
fn fit_connack(ack: &mut ConnAck, max: usize) -> bool {
    let fits = |ack: &ConnAck| {
        Packet::ConnAck(ack.clone())
            .encoded_len(ProtocolVersion::V5)
            .is_ok_and(|len| len <= max)
    };
    if fits(ack) {
        return true;
    }
    let p = &mut ack.properties;
    p.reason_string = None;
    p.user_properties = Vec::new();
    p.response_information = None;
    if fits(ack) {
        return true;
    }
    ack.properties.topic_alias_maximum = None;
    fits(ack)
}

/// Checks CONNECT, claims the session and sends CONNACK: the connection, ready to run, or
/// `None` if it was refused.
async fn handshake<S>(
    shared: Arc<Shared>,
    mut io: Io<S>,
    connect: Box<Connect>,
    peer: SocketAddr,
    ctx: ConnContext,
) -> Option<Conn<S>>
where
    S: Transport,
{
    let version = connect.protocol;
    let v5 = version.is_v5();
    let client_max_packet = connect
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |n| n.get() as usize);
    let refuse = |io: &mut Io<S>, reason: ReasonCode| {
        shared.metrics.refused(Refused::from_reason(reason));
        let ack = Packet::ConnAck(ConnAck::new(false, reason));
        // Not even that if the client's Maximum Packet Size is below 5 bytes [MQTT-3.1.2-24].
        if ack
            .encoded_len(version)
            .is_ok_and(|len| len <= client_max_packet)
        {
            io.send(&ack, version);
        }
    };

    // Client identifier [MQTT-3.1.3-6] [MQTT-3.1.3-8].
    let mut assigned = None;
    let client_id: ClientId = if connect.client_id.is_empty() {
        let allowed = v5
            || (version == ProtocolVersion::V3_1_1
                && connect.clean_start
                && shared.config.allow_zero_length_client_id);
        if !allowed {
            refuse(&mut io, ReasonCode::ClientIdentifierNotValid);
            let _ = io.flush().await;
            return None;
        }
        let id = format!(
            "sagitta-{:x}-{:x}",
            std::process::id(),
            shared.next_conn_id()
        );
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };
    tracing::Span::current().record("client_id", &*client_id);
    // `$bridge/...` ids are the broker's own bridges: no network client may take one.
    let internal = ctx.internal();
    if internal.is_none() && crate::bridge::is_bridge_id(&client_id) {
        info!(%peer, client_id = &*client_id, "connection refused: client ids under $bridge/ are reserved for the broker's bridges");
        refuse(&mut io, ReasonCode::ClientIdentifierNotValid);
        let _ = io.flush().await;
        return None;
    }

    let info = ConnectInfo {
        client_id: &client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
        protocol: version,
        listener: ctx.listener(),
        certificate: ctx.certificate(),
    };
    // Enhanced authentication (5.0): the named method decides alone [MQTT-4.12.0].
    let method = match connect.properties.authentication_method.as_ref() {
        Some(name) if v5 && internal.is_none() => match ctx.auth_method(name) {
            Some(method) => Some((name.clone(), method.clone())),
            None => {
                info!(%peer, client_id = &*client_id, method = %name, "connection refused: authentication method not offered here");
                refuse(&mut io, ReasonCode::BadAuthenticationMethod);
                let _ = io.flush().await;
                return None;
            }
        },
        _ => None,
    };
    let verdict = match &method {
        Some((name, method)) => {
            let mut exchange = method.start(&info);
            let first = connect.properties.authentication_data.as_deref();
            match enhanced_auth(&shared, &mut io, &mut *exchange, name, first).await {
                Ok((user, data)) => Ok(Some((user, data))),
                Err(AuthEnd::Refuse(reason)) => Err(reason),
                Err(AuthEnd::Gone) => return None,
            }
        }
        // The broker's own bridge: trusted.
        None if internal.is_some() => Ok(None),
        None => ctx.authenticate(&info).map(|()| None),
    };
    let authenticated = match verdict {
        Ok(authenticated) => authenticated,
        Err(reason) => {
            info!(%peer, client_id = &*client_id, username = info.username, reason = %reason, "connection refused");
            if matches!(
                reason,
                ReasonCode::BadUserNameOrPassword | ReasonCode::NotAuthorized
            ) {
                // Slow down password guessing; only this connection waits.
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.failed_login_delay()) => {}
                    _ = shared.shutdown.cancelled() => return None,
                }
            }
            refuse(&mut io, reason);
            let _ = io.flush().await;
            return None;
        }
    };
    // The name the client is known by from now on: the one an authentication method
    // vouched for, else its certificate's identity on a listener with
    // `use_identity_as_username`, else the CONNECT's.
    let (username, auth_data): (Option<Arc<str>>, _) = match authenticated {
        Some((user, data)) => (Some(Arc::from(user)), data),
        None => (
            ctx.username(connect.username.as_deref()).map(Arc::from),
            None,
        ),
    };
    if let Some(will) = &connect.will {
        if let Some(acl) = &shared.acl
            && !acl.authorize(
                Action::Publish,
                &will.topic,
                &client_id,
                username.as_deref(),
            )
        {
            info!(%peer, client_id = &*client_id, username = username.as_deref(), topic = %will.topic, "connection refused: the ACL does not allow the will's topic");
            refuse(&mut io, ReasonCode::NotAuthorized);
            let _ = io.flush().await;
            return None;
        }
        if will.qos as u8 > shared.config.maximum_qos {
            refuse(&mut io, ReasonCode::QoSNotSupported);
            let _ = io.flush().await;
            return None;
        }
        if will.retain && !shared.config.retain_available {
            refuse(&mut io, ReasonCode::RetainNotSupported);
            let _ = io.flush().await;
            return None;
        }
    }

    // Session expiry: 3.x clean session ends with the connection, a persistent one lives on.
    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        NEVER_EXPIRES
    };
    let expiry = shared
        .config
        .max_session_expiry
        .map_or(requested_expiry, |max| requested_expiry.min(max));

    // Keep-alive, possibly lowered by the server (5.0 tells the client).
    let max_ka = shared.config.max_keep_alive;
    let keep_alive = if v5 && max_ka > 0 && (connect.keep_alive == 0 || connect.keep_alive > max_ka)
    {
        max_ka
    } else {
        connect.keep_alive
    };

    let mut ack = ConnAck::new(false, ReasonCode::Success);
    if v5 {
        let p = &mut ack.properties;
        p.assigned_client_identifier = assigned.and_then(|id| MqttStr::new(id).ok());
        p.receive_maximum = std::num::NonZeroU16::new(shared.config.receive_maximum);
        p.maximum_packet_size = std::num::NonZeroU32::new(shared.config.max_packet_size);
        p.topic_alias_maximum = Some(shared.config.topic_alias_maximum);
        if shared.config.maximum_qos < 2 {
            p.maximum_qos = QoS::from_u8(shared.config.maximum_qos);
        }
        if !shared.config.retain_available {
            p.retain_available = Some(false);
        }
        if expiry != requested_expiry {
            p.session_expiry_interval = Some(expiry);
        }
        if keep_alive != connect.keep_alive {
            p.server_keep_alive = Some(keep_alive);
        }
        if let Some((name, _)) = &method {
            // A successful CONNACK names the CONNECT's method [MQTT-4.12.0-5].
            p.authentication_method = Some(name.clone());
            p.authentication_data = auth_data.map(Into::into);
        }
        if client_max_packet < usize::MAX && !fit_connack(&mut ack, client_max_packet) {
            info!(%peer, client_id = &*client_id, max = client_max_packet, "connection refused: the client's Maximum Packet Size is too small for CONNACK");
            refuse(&mut io, ReasonCode::PacketTooLarge);
            let _ = io.flush().await;
            return None;
        }
    }

    // In a cluster, the session may live on another node: it is taken over from there first.
    let handoff = match (&shared.cluster, internal) {
        (Some(link), None) => link.acquire(&client_id, connect.clean_start).await,
        _ => None,
    };

    // Claim the session; a connection holding it is told to let go, and we wait for it.
    let conn_id = shared.next_conn_id();
    let kick = Arc::new(Kick::default());
    let (entry, generation) = shared.sessions.claim(
        &client_id,
        conn_id,
        kick.clone(),
        internal.unwrap_or(shared.config.max_queued_messages),
    );
    let mut state = tokio::select! {
        s = entry.state.clone().lock_owned() => s,
        _ = shared.shutdown.cancelled() => {
            shared.sessions.release(&entry, conn_id, false);
            return None;
        }
    };
    if kick.is_kicked() {
        // Yet another connection with this id came in meanwhile: it wins.
        shared.sessions.release(&entry, conn_id, false);
        return None;
    }
    let mut session_present = if connect.clean_start || !state.exists {
        shared.clear_session(&entry, &mut state);
        false
    } else {
        true
    };
    state.exists = true;
    state.expiry = expiry;
    if let Some(store) = &shared.store {
        if expiry > 0 {
            store.session(&client_id, expiry, 0);
            entry.set_persistent(true);
        }
        if std::mem::take(&mut state.will_stored) {
            // The client is back before its delayed will was published: it never will be.
            store.will_gone(&client_id);
        }
    }
    if let Some(handoff) = handoff.filter(|_| !connect.clean_start) {
        crate::cluster::import_session(&shared, &entry, &mut state, handoff);
        session_present = true;
    }
    let client_receive_max = connect
        .properties
        .receive_maximum
        .map_or(u16::MAX, |n| n.get());
    state
        .outbound
        .set_limit(client_receive_max.min(shared.config.max_inflight));

    ack.session_present = session_present;
    io.send(&Packet::ConnAck(ack), version);
    entry.set_connected(true);
    shared.metrics.client_connected();
    entry.set_info(ClientInfo {
        username: username.clone(),
        peer: Some(peer),
        protocol: Some(version),
        keep_alive,
        expiry,
    });
    info!(%peer, client_id = &*client_id, username = username.as_deref(), protocol = %version, keep_alive, clean_start = connect.clean_start, session_present, "client connected");

    let alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
    let problem_info = connect
        .properties
        .request_problem_information
        .unwrap_or(true);
    let Connect { will, bridge, .. } = *connect;
    if let (Some(link), None) = (&shared.cluster, internal) {
        // Published by another node if this one dies while the client is connected.
        let record = will.as_ref().map(|w| {
            (
                Arc::new(will_message(w.clone(), &client_id)),
                will_delay(w, expiry),
            )
        });
        link.will_connected(&client_id, record);
    }
    if bridge {
        info!(%peer, client_id = &*client_id, "the client is a bridge (protocol level with the bridge flag): its subscriptions get No Local and Retain As Published");
    }
    let reauth = method.map(|(name, method)| {
        Box::new(Reauth {
            name,
            method,
            ctx,
            exchange: None,
        })
    });
    let mut conn = Conn {
        shared: shared.clone(),
        io,
        version,
        client_id,
        peer,
        entry,
        state,
        generation,
        conn_id,
        kick,
        keep_alive,
        last_rx: Instant::now(),
        ka_timer: Box::pin(tokio::time::sleep_until(
            server_keep_alive_deadline(Instant::now(), keep_alive)
                .unwrap_or_else(Instant::now)
                .into(),
        )),
        will: will.map(Box::new),
        client_max_packet,
        problem_info,
        in_aliases: None,
        out_aliases: (alias_max > 0).then(|| Box::new(OutboundAliases::new(alias_max))),
        latency_from: None,
        username,
        publish_limit: PublishLimit::new(
            shared.config.max_publish_rate,
            shared.config.max_publish_bandwidth,
            Instant::now(),
        )
        .map(Box::new),
        paused_until: None,
        gate: None,
        out_ticket: 0,
        reauth,
        unsent: None,
        remote_bridge: bridge,
        cluster_sync: false,
    };
    conn.resend_inflight();
    Some(conn)
}

/// What a connection that logged in with an enhanced-authentication method keeps in order
/// to re-authenticate (5.0 AUTH 0x19, [MQTT-4.12.1]).
struct Reauth {
    name: MqttStr,
    method: Arc<dyn AuthMethod>,
    ctx: ConnContext,
    /// The re-authentication under way, if any.
    exchange: Option<Box<dyn AuthExchange>>,
}

struct Conn<S> {
    shared: Arc<Shared>,
    io: Io<S>,
    version: ProtocolVersion,
    client_id: ClientId,
    /// The client's address (the TCP peer).
    peer: SocketAddr,
    entry: Arc<SessionEntry>,
    state: OwnedMutexGuard<SessionState>,
    generation: u64,
    conn_id: u64,
    kick: Arc<Kick>,
    keep_alive: u16,
    last_rx: Instant,
    /// Fires at the keep-alive deadline (or later; see `run`).
    ka_timer: Pin<Box<Sleep>>,
    /// Boxed: most clients have none, and it is large.
    will: Option<Box<Will>>,
    client_max_packet: usize,
    /// 5.0 Request Problem Information: Reason Strings allowed on acknowledgements.
    problem_info: bool,
    /// Made when the client first uses a topic alias.
    in_aliases: Option<Box<InboundAliases>>,
    /// Only when the client accepts topic aliases.
    out_aliases: Option<Box<OutboundAliases>>,
    /// When the oldest message in the output buffer whose latency is measured was received:
    /// recorded once the buffer is written.
    latency_from: Option<Instant>,
    /// The username the client is known by (for ACL checks).
    username: Option<Arc<str>>,
    /// `max_publish_rate` / `max_publish_bandwidth`, if set.
    publish_limit: Option<Box<PublishLimit>>,
    /// Not reading from the client until then: it went over its publish limits.
    paused_until: Option<Instant>,
    /// With `sync = "always"`: acknowledgements waiting for the store.
    gate: Option<Box<AckGate>>,
    /// With `sync = "always"`: the store ticket that must be durable before the output buffer
    /// goes out, because it holds QoS 1/2 messages whose packet ids are being stored (0: none).
    out_ticket: u64,
    /// The enhanced authentication the client connected with, for re-authentication.
    reauth: Option<Box<Reauth>>,
    /// Messages in flight from an earlier connection not sent again yet, because the
    /// client came back with a smaller Receive Maximum: sent as acknowledgements free room.
    /// Boxed: one pointer on every connection instead of a `VecDeque` header, for a rare case.
    #[allow(clippy::box_collection)]
    unsent: Option<Box<std::collections::VecDeque<sagitta_proto::PacketId>>>,
    /// The client is another broker's 3.x bridge (protocol level 0x83/0x84).
    remote_bridge: bool,
    /// A SUBSCRIBE added subscriptions: in a cluster, its SUBACK waits until the node's
    /// NATS subscriptions are in place, so that messages published on other nodes after it
    /// are received.
    cluster_sync: bool,
}

/// Acknowledgements of QoS 1/2 publishes held until the store has made them durable, in the
/// order they must be sent [MQTT-4.6.0-2].
struct AckGate {
    /// Each with the store ticket it waits for (0: only for those before it).
    held: std::collections::VecDeque<(u64, Packet)>,
    durable: tokio::sync::watch::Receiver<u64>,
}

impl AckGate {
    /// Resolves once the store has moved on (or failed).
    async fn changed(&mut self) {
        if self.durable.changed().await.is_err() {
            // The writer is gone (shutdown): nothing more will become durable.
            std::future::pending::<()>().await;
        }
    }
}

impl<S: Transport> Conn<S> {
    /// Serves the client until the connection ends.
    async fn run(&mut self) -> Close {
        // Packets that arrived together with CONNECT.
        if let Some(close) = self.handle_input() {
            return close;
        }
        loop {
            self.pull();
            self.flush_metrics();
            if !self.io.wbuf.is_empty() {
                if self.out_ticket > 0
                    && let Some(close) = self.wait_for_store().await
                {
                    return close;
                }
                if std::mem::take(&mut self.cluster_sync)
                    && let Some(link) = &self.shared.cluster
                {
                    link.sync().await;
                }
                let flushed = tokio::select! {
                    r = self.io.flush() => r,
                    _ = self.kick.kicked() => return self.taken_over().await,
                    _ = self.shared.shutdown.cancelled() => return Close::Shutdown,
                };
                if let Err(e) = flushed {
                    debug!(error = %e, "write failed");
                    return Close::Network;
                }
                if let Some(t) = self.latency_from.take() {
                    self.shared.metrics.publish_latency.observe(t.elapsed());
                }
                Metrics::add(
                    &self.shared.metrics.bytes_sent,
                    std::mem::take(&mut self.io.bytes_out),
                );
            }
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => return Close::Shutdown,
                _ = self.kick.kicked() => return self.taken_over().await,
                r = self.io.read(), if self.paused_until.is_none() && !self.acks_piled_up() => match r {
                    Ok(0) => return Close::Network,
                    Err(e) => {
                        debug!(error = %e, "read failed");
                        return Close::Network;
                    }
                    Ok(_) => {
                        if let Some(close) = self.handle_input() {
                            return close;
                        }
                    }
                },
                _ = self.entry.notified() => {}
                _ = async { if let Some(g) = self.gate.as_mut() { g.changed().await } }, if self.gate.as_ref().is_some_and(|g| !g.held.is_empty()) => {
                    if let Some(close) = self.release_acks() {
                        return close;
                    }
                }
                _ = tokio::time::sleep_until(self.paused_until.unwrap_or_else(Instant::now).into()), if self.paused_until.is_some() => {
                    // Back under its publish limits: read again (in a cluster, once NATS has
                    // taken the backlog in). The pause was ours, not the client's silence.
                    self.paused_until = self
                        .shared
                        .cluster
                        .as_ref()
                        .filter(|c| c.backlogged())
                        .map(|_| Instant::now() + STORE_BACKOFF);
                    self.last_rx = Instant::now();
                }
                _ = &mut self.ka_timer, if self.keep_alive > 0 && self.paused_until.is_none() => {
                    // The timer is re-armed lazily: decoded packets only move `last_rx`.
                    match server_keep_alive_deadline(self.last_rx, self.keep_alive) {
                        Some(d) if d > Instant::now() => self.ka_timer.as_mut().reset(d.into()),
                        _ => return Close::KeepAlive,
                    }
                }
            }
        }
    }

    /// Another connection claims the session, or an operator ends the connection. A
    /// DISCONNECT the client already sent still counts [MQTT-3.1.2-10]: take in what is
    /// readable now, without waiting, first.
    async fn taken_over(&mut self) -> Close {
        for _ in 0..8 {
            match tokio::time::timeout(Duration::ZERO, self.io.read()).await {
                Ok(Ok(n)) if n > 0 && self.io.rbuf.len() < WRITE_HIGH_WATER => {}
                _ => break,
            }
        }
        match self.handle_input() {
            Some(close @ Close::ClientDisconnect { .. }) => close,
            _ => match self.kick.reason() {
                Some(KickReason::Admin) => Close::Admin { end_session: false },
                Some(KickReason::AdminEndSession) => Close::Admin { end_session: true },
                _ => Close::TakenOver,
            },
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_input(&mut self) -> Option<Close> {
        let max = self.shared.config.max_packet_size as usize;
        let mut decoded = false;
        loop {
            match decode(&mut self.io.rbuf, self.version, max) {
                Ok(Some(packet)) => {
                    decoded = true;
                    if let Some(close) = self.handle(packet) {
                        return Some(close);
                    }
                    if self.unsent.is_some() {
                        self.resend_unsent();
                    }
                }
                Ok(None) => {
                    // Keep-alive counts whole control packets, not bytes [MQTT-3.1.2-22]:
                    // a packet trickled in a byte at a time keeps nothing alive. One clock
                    // read per socket read that completed packets, not one per packet.
                    if decoded {
                        self.last_rx = Instant::now();
                    }
                    return None;
                }
                Err(e) => return Some(Close::Protocol(e.reason_code(), e.to_string())),
            }
        }
    }

    fn send(&mut self, packet: Packet) {
        self.io.send(&packet, self.version);
    }

    fn handle(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(r) => match self.state.outbound.puback(r.packet_id) {
                Ok(d) => self.shared.done(&self.entry, &d),
                Err(e) => debug!(error = %e, "unexpected PUBACK"),
            },
            Packet::PubRec(r) => match self.state.outbound.pubrec(r.packet_id, r.reason) {
                Ok(PubRecOutcome::SendPubRel(id)) => {
                    if let (Some(store), Some(d)) =
                        (&self.shared.store, self.state.outbound.get(id))
                        && d.seq != 0
                    {
                        store.in_flight(&self.client_id, d, id, Stage::AwaitingPubComp);
                        if store.mode() == SyncMode::Always {
                            // On disk before PUBREL lets the client forget the id: after a
                            // crash the broker then sends PUBREL again, not the message.
                            self.out_ticket = store.submitted();
                        }
                    }
                    self.send(Packet::PubRel(PubResponse::new(id)))
                }
                Ok(PubRecOutcome::Refused(d, reason)) => {
                    debug!(%reason, "client refused a QoS 2 message");
                    self.shared.done(&self.entry, &d);
                }
                Err(FlowError::UnknownPacketId(_)) => {
                    let mut rel = PubResponse::new(r.packet_id);
                    rel.reason = ReasonCode::PacketIdentifierNotFound;
                    self.send(Packet::PubRel(rel));
                }
                Err(e) => debug!(error = %e, "unexpected PUBREC"),
            },
            Packet::PubRel(r) => {
                let mut comp = PubResponse::new(r.packet_id);
                comp.reason = self.state.inbound.pubrel(r.packet_id);
                self.state
                    .restored_qos2
                    .retain(|id| *id != r.packet_id.get());
                let mut wrote = false;
                if let Some(store) = self.stored_session()
                    && comp.reason == ReasonCode::Success
                {
                    store.qos2_released(&self.client_id, r.packet_id);
                    wrote = true;
                }
                // The release must be stored before PUBCOMP lets the client reuse the id:
                // otherwise, after a crash, its next PUBLISH with that id would be taken for
                // a duplicate.
                match self.store_ticket(wrote) {
                    Ok(ticket) => self.send_ack(Packet::PubComp(comp), ticket),
                    Err(close) => return Some(close),
                }
            }
            Packet::PubComp(r) => match self.state.outbound.pubcomp(r.packet_id) {
                Ok(d) => self.shared.done(&self.entry, &d),
                Err(e) => debug!(error = %e, "unexpected PUBCOMP"),
            },
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => return self.on_disconnect(d),
            Packet::Connect(_) => {
                return Some(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "second CONNECT [MQTT-3.1.0-2]".into(),
                ));
            }
            Packet::Auth(a) => return self.on_auth(a),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "server-to-client packet received from a client".into(),
                ));
            }
        }
        None
    }

    /// AUTH on a running connection: a re-authentication with the method the client
    /// connected with [MQTT-4.12.1]. The connection goes on meanwhile; success is AUTH 0x00,
    /// failure a DISCONNECT with the method's reason. The client stays the same user.
    fn on_auth(&mut self, a: Auth) -> Option<Close> {
        let protocol = |why: &str| Some(Close::Protocol(ReasonCode::ProtocolError, why.into()));
        let Some(reauth) = self.reauth.as_deref_mut() else {
            return protocol("AUTH, but the CONNECT had no authentication method (section 4.12)");
        };
        if a.properties.authentication_method.as_ref() != Some(&reauth.name) {
            return protocol("AUTH with another authentication method [MQTT-4.12.1-1]");
        }
        let data = a.properties.authentication_data.as_deref();
        let step = match (a.reason, reauth.exchange.as_mut()) {
            (ReasonCode::ReAuthenticate, None) => {
                let info = ConnectInfo {
                    client_id: &self.client_id,
                    username: self.username.as_deref(),
                    password: None,
                    peer: self.peer,
                    protocol: self.version,
                    listener: reauth.ctx.listener(),
                    certificate: reauth.ctx.certificate(),
                };
                let exchange = reauth.exchange.insert(reauth.method.start(&info));
                exchange.step(data)
            }
            (ReasonCode::ContinueAuthentication, Some(exchange)) => exchange.step(data),
            _ => return protocol("unexpected AUTH reason code for the re-authentication state"),
        };
        match step {
            AuthStep::Continue(data) => {
                let auth =
                    auth_packet(ReasonCode::ContinueAuthentication, &reauth.name, Some(data));
                self.send(Packet::Auth(auth));
                None
            }
            AuthStep::Success { username, data } => {
                reauth.exchange = None;
                if self.username.as_deref() != Some(username.as_str()) {
                    info!(
                        client_id = &*self.client_id,
                        username = self.username.as_deref(),
                        new_username = username,
                        "re-authentication as another user refused"
                    );
                    return Some(Close::Refused(ReasonCode::NotAuthorized));
                }
                let auth = auth_packet(ReasonCode::Success, &reauth.name, data);
                self.send(Packet::Auth(auth));
                debug!("re-authenticated");
                None
            }
            AuthStep::Failure(reason) => {
                info!(client_id = &*self.client_id, username = self.username.as_deref(), %reason, "re-authentication failed");
                // DISCONNECT has no 0x86 (Bad User Name or Password): 0x87 says it.
                let allowed = reason.allowed_in(sagitta_proto::PacketKind::Disconnect);
                Some(Close::Refused(if allowed {
                    reason
                } else {
                    ReasonCode::NotAuthorized
                }))
            }
        }
    }

    fn on_publish(&mut self, p: Publish) -> Option<Close> {
        let v5 = self.version.is_v5();
        crate::metrics::count_received(p.qos, p.payload.len());
        if let Some(limit) = self.publish_limit.as_mut() {
            let now = Instant::now();
            let (wait, first) = limit.publish(p.topic.len() + p.payload.len(), now);
            if !wait.is_zero() {
                let until = now + wait;
                self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
                if first {
                    info!(
                        client_id = &*self.client_id,
                        max_publish_rate = self.shared.config.max_publish_rate,
                        max_publish_bandwidth = self.shared.config.max_publish_bandwidth,
                        "publish limit reached: reading from the client only as fast as the limits allow"
                    );
                }
            }
        }
        if p.qos as u8 > self.shared.config.maximum_qos {
            return Some(Close::Protocol(
                ReasonCode::QoSNotSupported,
                "QoS above Maximum QoS".into(),
            ));
        }
        if p.retain && !self.shared.config.retain_available {
            return Some(Close::Protocol(
                ReasonCode::RetainNotSupported,
                "retain not available".into(),
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Some(Close::Protocol(
                ReasonCode::ProtocolError,
                "Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6]".into(),
            ));
        }
        let topic = match p.properties.topic_alias {
            None => p.topic,
            alias @ Some(_) => {
                // The Topic Alias Maximum announced to the client (none in 3.x).
                let max = if self.version.is_v5() {
                    self.shared.config.topic_alias_maximum
                } else {
                    0
                };
                let aliases = self
                    .in_aliases
                    .get_or_insert_with(|| Box::new(InboundAliases::new(max)));
                match aliases.resolve(&p.topic, alias) {
                    Ok(t) => t,
                    Err(e) => {
                        return Some(Close::Protocol(
                            ReasonCode::TopicAliasInvalid,
                            e.to_string(),
                        ));
                    }
                }
            }
        };
        // The response to QoS 1/2, and whether the message goes on.
        let mut reason = ReasonCode::Success;
        let invalid_utf8 = p.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&p.payload).is_err();
        if invalid_utf8 {
            reason = ReasonCode::PayloadFormatInvalid;
        } else if too_many_levels(&topic, self.shared.config.max_topic_levels) {
            info!(
                client_id = &*self.client_id,
                max_topic_levels = self.shared.config.max_topic_levels,
                "PUBLISH refused: too many topic levels"
            );
            reason = ReasonCode::TopicNameInvalid;
        } else if topic.starts_with("$SYS") || !self.allowed(Action::Publish, &topic) {
            // Refused: a 5.0 client is told (PUBACK / PUBREC 0x87); a 3.x client's message
            // is acknowledged and dropped, as 3.1.1 allows [MQTT-3.3.5-2].
            reason = ReasonCode::NotAuthorized;
        }
        let mut deliver = reason == ReasonCode::Success;
        let mut new_qos2 = None;
        if p.qos == QoS::ExactlyOnce
            && let Some(id) = p.packet_id
        {
            match self
                .state
                .inbound
                .publish(id, usize::from(self.shared.config.receive_maximum))
            {
                Ok(Qos2Publish::New) => new_qos2 = Some(id),
                // A PUBLISH without DUP on an id restored from the store is new: the client
                // had its PUBCOMP, but the release did not reach the disk before a crash.
                Ok(Qos2Publish::Duplicate) if !p.dup && self.forget_restored_qos2(id) => {}
                Ok(Qos2Publish::Duplicate) => deliver = false,
                Err(_) => {
                    return Some(Close::Protocol(
                        ReasonCode::ReceiveMaximumExceeded,
                        "more unreleased QoS 2 publishes than Receive Maximum".into(),
                    ));
                }
            }
        }
        let mut matched = 0;
        let mut stored = false;
        // Open while this publish writes to the store, so that it all reaches the disk
        // together (the QoS 2 id below included).
        let mut _group = None;
        if deliver {
            let mut properties = p.properties;
            properties.topic_alias = None;
            let msg = Message {
                expires_at: Message::expiry_from_interval(properties.message_expiry_interval),
                topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: Message::boxed_properties(properties),
                origin: Some(self.client_id.clone()),
                stored: Default::default(),
                received_at: crate::metrics::sample_publish(),
            };
            let mut targets = TARGETS.take();
            let routed = self.shared.publish(Arc::new(msg), &mut targets);
            TARGETS.set(targets);
            // In a cluster, subscribers elsewhere are not counted: 0 says nothing.
            matched = routed.queued + usize::from(routed.forwarded);
            stored = routed.stored;
            _group = routed.group;
        }
        if let (Some(id), true) = (new_qos2, deliver)
            && let Some(store) = self.stored_session()
        {
            store.qos2_received(&self.client_id, id);
        }
        if v5 && reason == ReasonCode::Success && deliver && matched == 0 {
            reason = ReasonCode::NoMatchingSubscribers;
        }
        if self.shared.cluster.as_ref().is_some_and(|c| c.backlogged()) {
            // NATS takes messages slower than clients send them: slow the client down
            // rather than queue without bound.
            self.paused_until = Some(Instant::now() + STORE_BACKOFF);
        }
        if stored
            && p.qos == QoS::AtMostOnce
            && self.shared.store.as_ref().is_some_and(Store::backlogged)
        {
            // A QoS 0 retained message waits for no acknowledgement: slow the client down
            // instead, so that it cannot grow the store's queue without bound.
            self.paused_until = Some(Instant::now() + STORE_BACKOFF);
        }
        if let Some(id) = p.packet_id {
            // With sync = "always", what this publish wrote (and any QoS 2 id recorded above)
            // must be on disk before the acknowledgement; in every mode, it must at least be
            // written once the writer lags too far behind.
            let wrote = stored || p.qos == QoS::ExactlyOnce && self.entry.is_persistent();
            let ticket = match self.store_ticket(wrote) {
                Ok(ticket) => ticket,
                Err(close) => return Some(close),
            };
            let mut response = PubResponse::new(id);
            response.reason = reason;
            if reason.is_error() && self.problem_info {
                let why = match reason {
                    ReasonCode::PayloadFormatInvalid => "payload is not valid UTF-8",
                    ReasonCode::TopicNameInvalid => "too many topic levels",
                    _ => "not authorized to publish to this topic",
                };
                response.properties.reason_string = MqttStr::new(why).ok();
                // Not if it makes the packet larger than the client accepts
                // [MQTT-3.4.2-2] [MQTT-3.5.2-2].
                let fits = Packet::PubAck(response.clone())
                    .encoded_len(self.version)
                    .is_ok_and(|len| len <= self.client_max_packet);
                if !fits {
                    response.properties.reason_string = None;
                }
            }
            match p.qos {
                QoS::AtLeastOnce => self.send_ack(Packet::PubAck(response), ticket),
                QoS::ExactlyOnce => {
                    if reason.is_error() {
                        // A refused QoS 2 message does not wait for PUBREL.
                        self.state.inbound.pubrel(id);
                    }
                    self.send_ack(Packet::PubRec(response), ticket);
                }
                QoS::AtMostOnce => {}
            }
        }
        None
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        self.cluster_sync |= self.shared.cluster.is_some();
        let sub_id = s.properties.subscription_identifier;
        let max_qos = QoS::from_u8(self.shared.config.maximum_qos).unwrap_or(QoS::ExactlyOnce);
        let mut reasons = Vec::with_capacity(s.filters.len());
        let now = Instant::now();
        for (filter, mut options) in s.filters {
            options.qos = options.qos.min(max_qos);
            if self.remote_bridge {
                // Another broker's 3.x bridge (Mosquitto's `try_private`): its own messages
                // do not come back, retained flags stay as published.
                options.no_local = true;
                options.retain_as_published = true;
            }
            if too_many_levels(filter.match_filter(), self.shared.config.max_topic_levels) {
                info!(
                    client_id = &*self.client_id,
                    max_topic_levels = self.shared.config.max_topic_levels,
                    "subscription refused: too many topic levels"
                );
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            if !self.allowed(Action::Subscribe, filter.match_filter()) {
                // 5.0: 0x87 Not authorized; 3.x: 0x80 Failure.
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let max_subs = self.shared.config.max_subscriptions_per_client;
            if max_subs > 0
                && self.state.subscriptions.len() >= max_subs
                && !self.state.subscriptions.contains_key(&filter)
            {
                warn!(
                    client_id = &*self.client_id,
                    max_subscriptions_per_client = max_subs,
                    "subscription refused: the session has the most subscriptions allowed"
                );
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let (entry, shared, client_id) = (&self.entry, &self.shared, &self.client_id);
            self.shared
                .router
                .subscribe_then(entry, &filter, options, sub_id, |existed| {
                    // Retained messages are not sent for shared subscriptions.
                    let send_retained = filter.shared().is_none()
                        && match options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendIfNew => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if !send_retained {
                        return;
                    }
                    for msg in shared.retained.matching(filter.match_filter(), now) {
                        if options.no_local && msg.origin.as_deref() == Some(&**client_id) {
                            continue;
                        }
                        if !shared.may_receive(entry, &msg.topic) {
                            continue;
                        }
                        let d = Delivery {
                            qos: msg.qos.min(options.qos),
                            msg: msg.clone(),
                            retain: true,
                            sub_ids: sub_id.into_iter().collect(),
                            seq: 0,
                            timed: false,
                        };
                        let mut hold = BodyHold::default();
                        shared.offer(entry, d, &mut hold);
                        // The group (if any) closes here: one retained message's writes.
                        drop(shared.let_go(&msg, hold));
                    }
                });
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            if let Some(store) = self.stored_session() {
                store.subscribed(&self.client_id, &filter, &options, sub_id);
            }
            self.state.subscriptions.insert(filter, (options, sub_id));
        }
        // The SUBACK goes out before the retained messages: those wait in the mailbox until
        // the next pull, after every packet of this read has been handled.
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Default::default(),
        }));
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = self.state.subscriptions.remove(filter).is_some();
            self.shared.router.unsubscribe(&self.client_id, filter);
            if let Some(store) = self.stored_session().filter(|_| existed) {
                store.unsubscribed(&self.client_id, filter);
            }
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Default::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Option<Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.state.expiry == 0 && expiry != 0 {
                return Some(Close::Protocol(
                    ReasonCode::ProtocolError,
                    "session expiry set on DISCONNECT after 0 in CONNECT [MQTT-3.14.2-2]".into(),
                ));
            }
            self.state.expiry = self
                .shared
                .config
                .max_session_expiry
                .map_or(expiry, |max| expiry.min(max));
        }
        Some(Close::ClientDisconnect {
            will: d.reason == ReasonCode::DisconnectWithWill,
        })
    }

    /// Sends again what was in flight when the session's last connection ended, in order:
    /// PUBLISH with DUP, or PUBREL [MQTT-4.4.0-1]; no more than the window allows now (the
    /// client may have come back with a smaller Receive Maximum [MQTT-3.3.4-9]): the rest
    /// waits in `unsent`.
    fn resend_inflight(&mut self) {
        let resend: Vec<(sagitta_proto::PacketId, Stage, Delivery)> = self
            .state
            .outbound
            .resend()
            .map(|(id, stage, d)| (id, stage, d.clone()))
            .collect();
        let limit = self.state.outbound.limit();
        let mut sent = 0;
        let mut unsent = std::collections::VecDeque::new();
        for (id, stage, d) in resend {
            if sent >= limit {
                unsent.push_back(id);
            } else if self.resend(id, stage, &d) {
                sent += 1;
            }
        }
        if !unsent.is_empty() {
            self.unsent = Some(Box::new(unsent));
        }
    }

    /// Sends again what waits in `unsent`, as far as the window allows now.
    fn resend_unsent(&mut self) {
        let Some(mut unsent) = self.unsent.take() else {
            return;
        };
        // The client may have acknowledged some without being sent them again.
        unsent.retain(|id| self.state.outbound.contains(*id));
        let limit = self.state.outbound.limit();
        while self.state.outbound.len() - unsent.len() < limit {
            let Some(id) = unsent.pop_front() else {
                break;
            };
            let found = self
                .state
                .outbound
                .resend()
                .find(|(i, _, _)| *i == id)
                .map(|(_, stage, d)| (stage, d.clone()));
            if let Some((stage, d)) = found {
                self.resend(id, stage, &d);
            }
        }
        if !unsent.is_empty() {
            self.unsent = Some(unsent);
        }
    }

    /// Sends one message in flight again: whether it was sent (else it was too large for
    /// the client and is dropped).
    fn resend(&mut self, id: sagitta_proto::PacketId, stage: Stage, d: &Delivery) -> bool {
        if stage == Stage::AwaitingPubComp {
            self.send(Packet::PubRel(PubResponse::new(id)));
            return true;
        }
        let mut publish = self.build_publish(d, Instant::now());
        publish.packet_id = Some(id);
        publish.dup = true;
        let publish = Packet::Publish(publish);
        // The client may have come back with a smaller Maximum Packet Size than the message
        // was sent under: drop it rather than send it [MQTT-3.1.2-24].
        if publish
            .encoded_len(self.version)
            .is_ok_and(|len| len > self.client_max_packet)
        {
            let removed = match stage {
                Stage::AwaitingPubAck => self.state.outbound.puback(id).ok(),
                _ => match self.state.outbound.pubrec(id, ReasonCode::PacketTooLarge) {
                    Ok(PubRecOutcome::Refused(d, _)) => Some(d),
                    _ => None,
                },
            };
            if let Some(d) = removed {
                Metrics::add(&self.shared.metrics.dropped_too_large, 1);
                self.shared.done(&self.entry, &d);
            }
            return false;
        }
        crate::metrics::count_sent(d.qos, d.msg.payload.len());
        self.send(publish);
        true
    }

    /// Moves messages from the session's mailbox to the output buffer, as far as the
    /// in-flight window and the output high-water mark allow.
    fn pull(&mut self) {
        let now = Instant::now();
        let mut batch = BATCH_SCRATCH.take();
        while self.io.wbuf.len() < WRITE_HIGH_WATER {
            let space = self.state.outbound.space();
            batch.clear();
            self.entry.take_batch(space, BATCH, &mut batch);
            if batch.is_empty() {
                break;
            }
            for d in batch.drain(..) {
                self.deliver(d, now);
            }
        }
        BATCH_SCRATCH.set(batch);
        if self.io.wbuf.len() >= WRITE_HIGH_WATER {
            // Stopped for the output buffer, maybe with messages left: the wake-up for them
            // has been used already, so make sure the loop comes back after the flush.
            self.entry.wake();
        }
    }

    fn deliver(&mut self, d: Delivery, now: Instant) {
        if d.msg.is_expired(now) {
            Metrics::add(&self.shared.metrics.dropped_expired, 1);
            self.shared.done(&self.entry, &d);
            return;
        }
        let v5 = self.version.is_v5();
        // The message's own properties serve every 5.0 subscriber as they are, unless this
        // delivery adds Subscription Identifiers, a remaining expiry or a topic alias.
        let mut own_props = (v5 && (!d.sub_ids.is_empty() || d.msg.expires_at.is_some()))
            .then(|| self.delivery_properties(&d, now));
        let placeholder = (d.qos != QoS::AtMostOnce).then_some(std::num::NonZeroU16::MIN);
        let view = PublishRef {
            dup: false,
            qos: d.qos,
            retain: d.retain,
            topic: &d.msg.topic,
            packet_id: placeholder,
            payload: &d.msg.payload,
            properties: own_props.as_ref().unwrap_or(d.msg.properties()),
        };
        let len = match view.encoded_len(self.version) {
            // Never send a packet larger than the client accepts [MQTT-3.1.2-24]: drop it.
            Ok(len) if len > self.client_max_packet => {
                Metrics::add(&self.shared.metrics.dropped_too_large, 1);
                self.shared.done(&self.entry, &d);
                return;
            }
            Ok(len) => len,
            Err(_) => {
                self.shared.done(&self.entry, &d);
                return;
            }
        };
        let mut alias_only = false;
        if let Some(out_aliases) = self
            .out_aliases
            .as_mut()
            .filter(|_| v5 && len + 3 <= self.client_max_packet)
        {
            let alias = match out_aliases.assign(&d.msg.topic) {
                OutboundAlias::None => None,
                OutboundAlias::Set(alias) => Some(alias),
                OutboundAlias::Use(alias) => {
                    alias_only = true;
                    Some(alias)
                }
            };
            if alias.is_some() {
                own_props
                    .get_or_insert_with(|| d.msg.properties().clone())
                    .topic_alias = alias;
            }
        }
        let (d, packet_id) = if d.qos == QoS::AtMostOnce {
            (&d, None)
        } else {
            let qos = d.qos;
            let id = match self.state.outbound.insert(qos, d) {
                Ok(id) => id,
                Err(e) => {
                    warn!(client_id = &*self.client_id, error = %e, "in-flight window refused a message taken for it");
                    return;
                }
            };
            let Some(d) = self.state.outbound.last() else {
                return;
            };
            if let (Some(store), true) = (&self.shared.store, d.seq != 0) {
                let stage = match qos {
                    QoS::ExactlyOnce => Stage::AwaitingPubRec,
                    _ => Stage::AwaitingPubAck,
                };
                store.in_flight(&self.client_id, d, id, stage);
                if store.mode() == SyncMode::Always {
                    // The packet id is on disk before the client sees it: after a crash the
                    // message is re-sent with the same id, which the client recognises.
                    self.out_ticket = store.submitted();
                }
            }
            (d, Some(id))
        };
        let view = PublishRef {
            dup: false,
            qos: d.qos,
            retain: d.retain,
            topic: if alias_only {
                &EMPTY_TOPIC
            } else {
                &d.msg.topic
            },
            packet_id,
            payload: &d.msg.payload,
            properties: own_props.as_ref().unwrap_or(d.msg.properties()),
        };
        if let Err(e) = view.encode(self.version, &mut self.io.wbuf) {
            warn!(client_id = &*self.client_id, error = %e, "cannot encode PUBLISH");
            return;
        }
        crate::metrics::count_sent(d.qos, d.msg.payload.len());
        if d.timed && self.latency_from.is_none() {
            self.latency_from = d.msg.received_at;
        }
    }

    /// The 5.0 properties of one delivery: the message's, with this subscriber's
    /// Subscription Identifiers and the expiry interval left at `now`.
    fn delivery_properties(&self, d: &Delivery, now: Instant) -> PublishProperties {
        let mut properties = d.msg.properties().clone();
        properties.subscription_identifiers = d.sub_ids.clone();
        properties.message_expiry_interval = d.msg.remaining_expiry(now);
        properties
    }

    /// The PUBLISH for a delivery, without packet id.
    fn build_publish(&self, d: &Delivery, now: Instant) -> Publish {
        let mut publish = Publish::new(d.msg.topic.clone(), d.msg.payload.clone());
        publish.qos = d.qos;
        publish.retain = d.retain;
        if self.version.is_v5() {
            publish.properties = self.delivery_properties(d, now);
        }
        publish
    }

    fn flush_metrics(&mut self) {
        let m = &self.shared.metrics;
        crate::metrics::flush_local(m);
        Metrics::add(&m.bytes_received, std::mem::take(&mut self.io.bytes_in));
        Metrics::add(&m.bytes_sent, std::mem::take(&mut self.io.bytes_out));
        self.entry.set_inflight(self.state.outbound.len());
    }

    /// Says goodbye as the close reason requires, then hands the session back.
    async fn finish(mut self, close: Close) {
        let v5 = self.version.is_v5();
        let (goodbye, send_will) = match &close {
            Close::ClientDisconnect { will } => (None, *will),
            Close::Protocol(reason, why) => {
                info!(client_id = &*self.client_id, %reason, why, "closing connection: protocol error");
                (Some(*reason), true)
            }
            Close::Refused(reason) => (Some(*reason), true),
            Close::Network => (None, true),
            Close::KeepAlive => (Some(ReasonCode::KeepAliveTimeout), true),
            Close::TakenOver => (Some(ReasonCode::SessionTakenOver), true),
            Close::Admin { .. } => (Some(ReasonCode::AdministrativeAction), true),
            // The server closes without a DISCONNECT from the client: the will is published
            // [MQTT-3.1.2-8] (one with a delay is kept by the store for after a restart).
            Close::Shutdown => (Some(ReasonCode::ServerShuttingDown), true),
        };
        if let (true, Some(reason)) = (v5, goodbye) {
            let mut disconnect = Disconnect::new(reason);
            if let Close::Protocol(_, why) = &close {
                // A Reason String is allowed on DISCONNECT whatever Request Problem
                // Information says, but not if it makes the packet too large for the client.
                disconnect.properties.reason_string = MqttStr::new(why.as_str()).ok();
                let fits = Packet::Disconnect(disconnect.clone())
                    .encoded_len(self.version)
                    .is_ok_and(|len| len <= self.client_max_packet);
                if !fits {
                    disconnect.properties.reason_string = None;
                }
            }
            self.send(Packet::Disconnect(disconnect));
        }
        if !matches!(close, Close::Network) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.io.flush()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.io.stream.shutdown()).await;
        }
        self.flush_metrics();
        info!(client_id = &*self.client_id, peer = %self.peer, protocol = %self.version, username = self.username.as_deref(), reason = %close, "client disconnected");

        self.entry.set_connected(false);
        self.shared.metrics.client_disconnected();
        if let Close::Admin { end_session: true } = close {
            self.state.expiry = 0;
        }
        let expiry = self.state.expiry;
        self.entry.set_expiry(expiry);
        match self.will.take() {
            Some(will) if send_will => self.publish_will(*will, expiry),
            Some(_) => {
                if let Some(link) = &self.shared.cluster {
                    link.will_done(&self.client_id);
                }
            }
            None => {}
        }
        let ended = expiry == 0;
        if ended {
            self.shared.clear_session(&self.entry, &mut self.state);
            if let Some(link) = &self.shared.cluster {
                link.session_ended(&self.client_id);
            }
        } else if let Some(store) = self.stored_session() {
            store.session_left(&self.client_id, expiry);
        }
        self.shared
            .sessions
            .release(&self.entry, self.conn_id, ended);
        if !ended && expiry != NEVER_EXPIRES && !matches!(close, Close::TakenOver) {
            self.shared
                .schedule_expiry(self.entry.clone(), self.generation, u64::from(expiry));
        }
    }

    /// Publishes the will now, or after its delay (at most the session expiry) unless the
    /// client reconnects first [MQTT-3.1.3-9].
    fn publish_will(&mut self, will: Will, session_expiry: u32) {
        let delay = will_delay(&will, session_expiry);
        let msg = will_message(will, &self.client_id);
        if delay == 0 {
            self.shared.publish(Arc::new(msg), &mut Vec::new());
            if let Some(link) = &self.shared.cluster {
                link.will_done(&self.client_id);
            }
            return;
        }
        if let Some(store) = self.stored_session() {
            store.will_delayed(
                &self.client_id,
                &msg,
                crate::store::record::wall_ms() + u64::from(delay) * 1000,
            );
            self.state.will_stored = true;
        }
        self.shared
            .schedule_will(self.entry.clone(), self.generation, msg, u64::from(delay));
    }

    /// Whether the ACL (if any) lets this client do `action` on `topic`.
    fn allowed(&self, action: Action, topic: &str) -> bool {
        // The broker's own bridges are not subject to the ACL.
        crate::bridge::is_bridge_id(&self.client_id)
            || self.shared.acl.as_ref().is_none_or(|acl| {
                acl.authorize(action, topic, &self.client_id, self.username.as_deref())
            })
    }

    /// The store, if this session is kept in it.
    fn stored_session(&self) -> Option<&Store> {
        self.shared
            .store
            .as_ref()
            .filter(|_| self.entry.is_persistent())
    }

    /// The store ticket an acknowledgement of something that `wrote` to the store must wait
    /// for: with `sync = "always"` (or a writer lagging behind) the last submitted one, else
    /// 0. Never acknowledge what cannot be stored: a failed store closes the connection, and
    /// the client sends again after reconnecting.
    fn store_ticket(&self, wrote: bool) -> Result<u64, Close> {
        match &self.shared.store {
            Some(store) if wrote && (store.mode() == SyncMode::Always || store.backlogged()) => {
                if store.failed() {
                    return Err(Close::Protocol(
                        ReasonCode::UnspecifiedError,
                        "the broker cannot store messages".into(),
                    ));
                }
                Ok(store.submitted())
            }
            _ => Ok(0),
        }
    }

    /// Sends an acknowledgement once the store ticket `ticket` is durable, and after the
    /// acknowledgements held before it.
    fn send_ack(&mut self, packet: Packet, ticket: u64) {
        match (&mut self.gate, &self.shared.store) {
            (Some(gate), _) if !gate.held.is_empty() => gate.held.push_back((ticket, packet)),
            (_, Some(store)) if ticket > 0 && ticket > store.durable_ticket() => {
                let gate = self.gate.get_or_insert_with(|| {
                    Box::new(AckGate {
                        held: std::collections::VecDeque::new(),
                        durable: store.durable(),
                    })
                });
                gate.held.push_back((ticket, packet));
            }
            _ => self.send(packet),
        }
    }

    /// True when as many acknowledgements wait for the store as the client may have
    /// publishes in flight: reading more would only pile up more (back-pressure).
    fn acks_piled_up(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(|g| g.held.len() >= usize::from(self.shared.config.receive_maximum))
    }

    /// Forgets `id` if it was restored from the store awaiting PUBREL; true if it was.
    fn forget_restored_qos2(&mut self, id: sagitta_proto::PacketId) -> bool {
        let restored = &mut self.state.restored_qos2;
        match restored.iter().position(|r| *r == id.get()) {
            Some(i) => {
                restored.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Waits until the store has made `out_ticket` durable (or the connection must end).
    async fn wait_for_store(&mut self) -> Option<Close> {
        let ticket = std::mem::take(&mut self.out_ticket);
        let store = self.shared.store.as_ref()?;
        let mut durable = store.durable();
        loop {
            if *durable.borrow_and_update() >= ticket {
                return None;
            }
            if store.failed() {
                return Some(Close::Protocol(
                    ReasonCode::UnspecifiedError,
                    "the broker cannot store messages".into(),
                ));
            }
            tokio::select! {
                r = durable.changed() => {
                    if r.is_err() {
                        return Some(Close::Shutdown);
                    }
                }
                _ = self.kick.kicked() => return Some(self.taken_over().await),
                _ = self.shared.shutdown.cancelled() => return Some(Close::Shutdown),
            }
        }
    }

    /// Sends the held acknowledgements whose writes are durable now.
    fn release_acks(&mut self) -> Option<Close> {
        let gate = self.gate.as_mut()?;
        let durable = *gate.durable.borrow_and_update();
        let mut ready = Vec::new();
        while gate.held.front().is_some_and(|(t, _)| *t <= durable) {
            if let Some((_, p)) = gate.held.pop_front() {
                ready.push(p);
            }
        }
        for p in ready {
            self.send(p);
        }
        if self.shared.store.as_ref().is_some_and(Store::failed) {
            return Some(Close::Protocol(
                ReasonCode::UnspecifiedError,
                "the broker cannot store messages".into(),
            ));
        }
        None
    }
}

/// A will's delay: its Will Delay Interval, at most the session's expiry.
fn will_delay(will: &Will, session_expiry: u32) -> u32 {
    will.properties
        .will_delay_interval
        .unwrap_or(0)
        .min(session_expiry)
}

/// The message a will becomes.
fn will_message(will: Will, client_id: &ClientId) -> Message {
    let mut properties = sagitta_proto::PublishProperties {
        payload_format_indicator: will.properties.payload_format_indicator,
        message_expiry_interval: will.properties.message_expiry_interval,
        content_type: will.properties.content_type,
        response_topic: will.properties.response_topic,
        correlation_data: will.properties.correlation_data,
        ..Default::default()
    };
    properties.user_properties = will.properties.user_properties;
    Message {
        expires_at: Message::expiry_from_interval(properties.message_expiry_interval),
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: Message::boxed_properties(properties),
        origin: Some(client_id.clone()),
        stored: Default::default(),
        received_at: None,
    }
}
