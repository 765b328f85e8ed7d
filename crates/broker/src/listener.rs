//! Listeners: a bound socket with its transport (TCP, TLS, WebSocket, WebSocket over TLS) and
//! its authentication settings, the accept loop, and the per-connection context handed to the
//! connection task.
//!
//! The accept loop only accepts: the TLS handshake and the WebSocket upgrade run on the
//! connection's own task, bounded together by the connect timeout, so a slow or silent peer
//! cannot hold up other accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sagitta_proto::ReasonCode;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::auth::{AuthMethod, Authenticator, ConnectInfo};
use crate::broker::{BrokerError, Shared};
use crate::config::{Config, EffectiveListener, ListenerKind};
use crate::metrics::Refused;
use crate::password::PasswordFile;
use crate::reload::FileBacked;
use crate::scram::ScramSha256;
use crate::tls::{ClientCertificate, TlsState};
use crate::ws::WsSettings;

/// What an [`Authenticator`] is told about the listener a client connected through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The configured `name`, else `<type>://<local address>`.
    pub name: String,
    /// TCP, TLS, WS or WSS.
    pub kind: ListenerKind,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// Whether this listener admits anonymous clients (its effective `allow_anonymous`).
    pub allow_anonymous: bool,
    /// Whether client certificates are verified here (TLS with `client_ca`).
    pub verifies_client_certificates: bool,
}

/// How a listener decides who may connect (unless the broker has its own authenticator).
enum Check {
    /// The broker's own authenticator decides (`BrokerBuilder::authenticator`).
    Custom(Arc<dyn Authenticator>),
    /// Usernames and passwords from a password file (reloadable).
    PasswordFile(SharedPasswordFile),
    /// No password check.
    Open,
}

/// A listener's authentication settings.
pub(crate) struct Listener {
    pub info: ListenerInfo,
    use_identity_as_username: bool,
    check: Check,
    /// This listener's own connection limit, if it has one.
    limit: Option<(usize, Arc<Semaphore>)>,
    /// Enhanced-authentication methods offered here.
    methods: Vec<Arc<dyn AuthMethod>>,
    /// The WebSocket upgrade's settings (`ws`, `wss`).
    ws: Option<WsSettings>,
}

impl Listener {
    /// A plain TCP listener that lets every client in (`Broker::bind`).
    pub fn open_tcp(local_addr: SocketAddr) -> Self {
        Self {
            info: ListenerInfo {
                name: format!("tcp://{local_addr}"),
                kind: ListenerKind::Tcp,
                local_addr,
                allow_anonymous: true,
                verifies_client_certificates: false,
            },
            use_identity_as_username: false,
            check: Check::Open,
            limit: None,
            methods: Vec::new(),
            ws: None,
        }
    }

    /// The HTTP path of a WebSocket listener.
    pub fn ws_path(&self) -> Option<&str> {
        self.ws.as_ref().map(|w| w.path.as_str())
    }

    /// `Ok(())` to accept the client, or the reason to refuse it with.
    ///
    /// With `use_identity_as_username`, the certificate identity replaces the username
    /// (the password is dropped); a client without one is anonymous. Anonymous clients are
    /// refused with `NotAuthorized` (0x87, 3.x return code 5) unless the listener allows
    /// them; a password file refuses unknown users and wrong passwords with
    /// `BadUserNameOrPassword` (0x86, 3.x return code 4). A custom authenticator decides
    /// everything itself (seeing the mapped username).
    pub fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        let mapped;
        let info = if self.use_identity_as_username {
            mapped = ConnectInfo {
                username: info.certificate.and_then(ClientCertificate::identity),
                password: None,
                ..*info
            };
            &mapped
        } else {
            info
        };
        match &self.check {
            Check::Custom(auth) => auth.authenticate(info),
            _ if info.username.is_none() => {
                if self.info.allow_anonymous {
                    Ok(())
                } else {
                    Err(ReasonCode::NotAuthorized)
                }
            }
            // The certificate was verified during the TLS handshake.
            _ if self.use_identity_as_username => Ok(()),
            Check::PasswordFile(file) => file.get().authenticate(info),
            Check::Open => {
                if self.info.allow_anonymous {
                    Ok(())
                } else {
                    Err(ReasonCode::BadUserNameOrPassword)
                }
            }
        }
    }
}

/// What the connection task knows about how its client came in.
pub(crate) struct ConnContext {
    listener: Arc<Listener>,
    certificate: Option<ClientCertificate>,
    /// An in-process connection of the broker itself (a bridge's local side): the queue
    /// limit of its session. Only these may use client ids under `$bridge/`.
    internal: Option<usize>,
}

impl ConnContext {
    /// The session queue limit of an in-process connection of the broker (a bridge), else
    /// `None`.
    pub fn internal(&self) -> Option<usize> {
        self.internal
    }

    /// The listener the client connected through.
    pub fn listener(&self) -> &ListenerInfo {
        &self.listener.info
    }

    /// The client's verified certificate (mTLS), if any.
    pub fn certificate(&self) -> Option<&ClientCertificate> {
        self.certificate.as_ref()
    }

    /// The enhanced-authentication method called `name`, if this listener offers it.
    pub fn auth_method(&self, name: &str) -> Option<&Arc<dyn AuthMethod>> {
        self.listener.methods.iter().find(|m| m.name() == name)
    }

    /// Decides about a CONNECT; see [`Listener::authenticate`].
    pub fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        self.listener.authenticate(info)
    }

    /// The username the client is known by: the CONNECT's, or with
    /// `use_identity_as_username` its certificate's identity.
    pub fn username<'a>(&'a self, from_connect: Option<&'a str>) -> Option<&'a str> {
        if self.listener.use_identity_as_username {
            self.certificate
                .as_ref()
                .and_then(ClientCertificate::identity)
        } else {
            from_connect
        }
    }
}

/// A listener with its files read, ready to bind.
pub(crate) struct Prepared {
    pub bind: SocketAddr,
    name: Option<String>,
    kind: ListenerKind,
    allow_anonymous: bool,
    use_identity_as_username: bool,
    check: Check,
    pub tls: Option<Arc<TlsState>>,
    max_connections: Option<usize>,
    methods: Vec<Arc<dyn AuthMethod>>,
    ws: Option<WsSettings>,
}

impl Prepared {
    /// The listener's settings, once bound to `local_addr`.
    pub fn into_listener(self, local_addr: SocketAddr) -> Listener {
        Listener {
            info: ListenerInfo {
                name: self
                    .name
                    .unwrap_or_else(|| format!("{}://{local_addr}", self.kind)),
                kind: self.kind,
                local_addr,
                allow_anonymous: self.allow_anonymous,
                verifies_client_certificates: self
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.verifies_client_certificates()),
            },
            use_identity_as_username: self.use_identity_as_username,
            check: self.check,
            limit: self
                .max_connections
                .map(|n| (n, Arc::new(Semaphore::new(n)))),
            methods: self.methods,
            ws: self.ws,
        }
    }
}

/// Reads what every listener of `config` needs (password files, each once; TLS
/// certificates, keys and CAs), without binding anything. `custom` replaces password files
/// and `allow_anonymous`; `methods` are offered by every listener, before the
/// `SCRAM-SHA-256` of listeners with a password file (which a method of that name replaces).
/// A password file that listeners share and a reload replaces.
pub(crate) type SharedPasswordFile = Arc<FileBacked<PasswordFile>>;

/// Returns the listeners and the password files they use (each once, for reloading).
pub(crate) fn prepare(
    config: &Config,
    custom: Option<Arc<dyn Authenticator>>,
    methods: &[Arc<dyn AuthMethod>],
) -> Result<(Vec<Prepared>, Vec<SharedPasswordFile>), BrokerError> {
    let mut password_files: HashMap<PathBuf, SharedPasswordFile> = HashMap::new();
    let mut prepared = Vec::new();
    for l in config.effective_listeners() {
        let EffectiveListener {
            kind,
            bind,
            name,
            tls,
            allow_anonymous,
            password_file,
            use_identity_as_username,
            max_connections,
            ws_path,
        } = l;
        let check = match (&custom, password_file) {
            (Some(auth), _) => Check::Custom(auth.clone()),
            (None, Some(path)) => {
                let file = match password_files.get(&path) {
                    Some(file) => file.clone(),
                    None => {
                        let file = Arc::new(FileBacked::new(&path, PasswordFile::load(&path)?));
                        password_files.insert(path, file.clone());
                        file
                    }
                };
                Check::PasswordFile(file)
            }
            (None, None) => Check::Open,
        };
        let tls = match tls {
            Some(files) => Some(Arc::new(TlsState::load(files)?)),
            None => None,
        };
        let mut offered = methods.to_vec();
        // A username from the certificate is the identity: no method may set another.
        if use_identity_as_username {
            offered.clear();
        } else if let Check::PasswordFile(file) = &check
            && !offered
                .iter()
                .any(|m| m.name() == sagitta_proto::scram::MECHANISM)
        {
            offered.push(Arc::new(ScramSha256::new(file.clone())));
        }
        prepared.push(Prepared {
            bind,
            name,
            kind,
            allow_anonymous,
            use_identity_as_username,
            check,
            tls,
            max_connections,
            methods: offered,
            ws: ws_path.map(|path| WsSettings::new(&path, config.max_packet_size)),
        });
    }
    Ok((prepared, password_files.into_values().collect()))
}

/// Accepts connections until shutdown; each runs on its own task (TLS handshake and WebSocket
/// upgrade included).
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    socket: TcpListener,
    listener: Arc<Listener>,
    tls: Option<Arc<TlsState>>,
    limit: Arc<Semaphore>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, listener = %listener.info.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&shared, &listener, &limit, peer) else {
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        match &tls {
            _ if listener.ws.is_some() => {
                let (shared2, listener, tls) = (shared.clone(), listener.clone(), tls.clone());
                shared.tracker.spawn(async move {
                    serve_ws(shared2, stream, peer, listener, tls.as_deref(), permit).await
                });
            }
            // Plain TCP: the connection's task is the small future `serve` returns.
            None => {
                let ctx = ConnContext {
                    listener: listener.clone(),
                    certificate: None,
                    internal: None,
                };
                shared.tracker.spawn(crate::connection::serve(
                    shared.clone(),
                    stream,
                    peer,
                    ctx,
                    permit,
                ));
            }
            Some(tls) => {
                let (shared2, listener, tls) = (shared.clone(), listener.clone(), tls.clone());
                shared.tracker.spawn(async move {
                    serve_tls(shared2, stream, peer, listener, &tls, permit).await
                });
            }
        }
    }
}

/// Takes a new connection's places under `max_connection_rate`, `max_connections` and the
/// listener's own limit, or refuses it (counted, and logged).
fn admit(
    shared: &Shared,
    listener: &Listener,
    limit: &Arc<Semaphore>,
    peer: SocketAddr,
) -> Option<Slot> {
    if !shared.admit_connection() {
        shared.metrics.refused(Refused::Rate);
        return None;
    }
    let Ok(global) = limit.clone().try_acquire_owned() else {
        warn!(%peer, max = shared.config.max_connections, "connection limit reached, refusing");
        shared.metrics.refused(Refused::Limit);
        return None;
    };
    let own = match &listener.limit {
        None => None,
        Some((max, own)) => match own.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                warn!(%peer, listener = %listener.info.name, max, "listener connection limit reached, refusing");
                shared.metrics.refused(Refused::Limit);
                return None;
            }
        },
    };
    Some(Slot {
        _global: global,
        _listener: own,
    })
}

/// Serves an already connected byte stream as plain MQTT (no TLS, no WebSocket upgrade) on
/// `listener`, under the same limits as an accepted socket: `false` if they refuse it.
/// `Broker::serve_stream` (tests and fuzzing) is the only user.
pub(crate) fn serve_stream<S>(
    shared: &Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    listener: &Arc<Listener>,
    limit: &Arc<Semaphore>,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(slot) = admit(shared, listener, limit, peer) else {
        return false;
    };
    let ctx = ConnContext {
        listener: listener.clone(),
        certificate: None,
        internal: None,
    };
    shared.tracker.spawn(crate::connection::serve(
        shared.clone(),
        crate::connection::AnyStream(stream),
        peer,
        ctx,
        slot,
    ));
    true
}

/// Serves an in-process connection of the broker itself (a bridge's local side, client id
/// `$bridge/<name>`): no authentication, no ACL, not counted against `max_connections`, its
/// session's queue bounded by `queue_limit`.
pub(crate) fn serve_internal<S>(
    shared: &Arc<Shared>,
    stream: S,
    listener: &Arc<Listener>,
    queue_limit: usize,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let own = Arc::new(tokio::sync::Semaphore::new(1));
    let Ok(permit) = own.try_acquire_owned() else {
        return;
    };
    let ctx = ConnContext {
        listener: listener.clone(),
        certificate: None,
        internal: Some(queue_limit),
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    shared.tracker.spawn(crate::connection::serve(
        shared.clone(),
        crate::connection::AnyStream(stream),
        peer,
        ctx,
        Slot {
            _global: permit,
            _listener: None,
        },
    ));
}

/// A connection's places under `max_connections`, given back when it closes.
pub(crate) struct Slot {
    _global: OwnedSemaphorePermit,
    _listener: Option<OwnedSemaphorePermit>,
}

/// Runs the TLS handshake (bounded by the connect timeout), then serves the connection.
async fn serve_tls(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    tls: &TlsState,
    slot: Slot,
) {
    let handshake = async {
        // The span ends with the handshake: it is not kept for the connection's life.
        let span = info_span!("tls", %peer, listener = %listener.info.name);
        let deadline = tokio::time::Instant::now() + shared.config.connect_timeout();
        tls_handshake(&shared, stream, tls, deadline, &span).await
    };
    let Some((stream, certificate)) = handshake.await else {
        return;
    };
    let ctx = ConnContext {
        listener,
        certificate,
        internal: None,
    };
    crate::connection::serve(shared, stream, peer, ctx, slot).await;
}

/// The server side of a TLS handshake, until `deadline`: the stream and the client's verified
/// certificate, or `None` (logged) if it failed, timed out or the broker is shutting down.
async fn tls_handshake(
    shared: &Shared,
    stream: tokio::net::TcpStream,
    tls: &TlsState,
    deadline: tokio::time::Instant,
    span: &tracing::Span,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Option<ClientCertificate>,
)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
    let result = tokio::select! {
        r = handshake.instrument(span.clone()) => r,
        _ = shared.shutdown.cancelled() => return None,
    };
    let stream = match result {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            span.in_scope(|| info!(error = %e, "TLS handshake failed"));
            shared.metrics.refused(Refused::Tls);
            return None;
        }
        Err(_) => {
            span.in_scope(|| debug!("no TLS handshake within the connect timeout"));
            shared.metrics.refused(Refused::Timeout);
            return None;
        }
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| ClientCertificate::from_der(cert.as_ref()));
    if let Some(cert) = &certificate {
        span.in_scope(|| debug!(identity = ?cert.identity(), "client certificate verified"));
    }
    Some((stream, certificate))
}

/// A WebSocket listener's connection: the TLS handshake (`wss`) and the HTTP upgrade, both
/// within one connect timeout, then the MQTT connection over binary frames.
///
/// The handshakes run as a future of their own on the heap (several KiB with TLS): the task
/// keeps only the MQTT connection's small future afterwards, as on a TCP listener.
async fn serve_ws(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    tls: Option<&TlsState>,
    slot: Slot,
) {
    let opened = Box::pin(open_ws(&shared, stream, peer, &listener, tls)).await;
    match opened {
        Some(WsOpened::Plain(stream)) => {
            let ctx = ConnContext {
                listener,
                certificate: None,
                internal: None,
            };
            crate::connection::serve(shared, stream, peer, ctx, slot).await;
        }
        Some(WsOpened::Tls(stream, certificate)) => {
            let ctx = ConnContext {
                listener,
                certificate,
                internal: None,
            };
            crate::connection::serve(shared, stream, peer, ctx, slot).await;
        }
        None => {}
    }
}

/// A WebSocket connection after its handshakes.
#[allow(clippy::large_enum_variant)] // Passed on once, never kept: boxing would only add a copy.
enum WsOpened {
    /// `ws`.
    Plain(crate::ws::WsStream<tokio::net::TcpStream>),
    /// `wss`, with the client's certificate if it showed one.
    Tls(
        crate::ws::WsStream<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        Option<ClientCertificate>,
    ),
}

/// The TLS handshake (`wss`) and the WebSocket upgrade; `None` if either failed (logged and
/// counted).
async fn open_ws(
    shared: &Shared,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    tls: Option<&TlsState>,
) -> Option<WsOpened> {
    let span = info_span!("ws", %peer, listener = %listener.info.name);
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout();
    match tls {
        None => upgrade(shared, stream, listener, deadline, &span)
            .await
            .map(WsOpened::Plain),
        Some(tls) => {
            let (stream, certificate) = tls_handshake(shared, stream, tls, deadline, &span).await?;
            upgrade(shared, stream, listener, deadline, &span)
                .await
                .map(|s| WsOpened::Tls(s, certificate))
        }
    }
}

/// The WebSocket upgrade on `stream` until `deadline`.
async fn upgrade<S>(
    shared: &Shared,
    stream: S,
    listener: &Listener,
    deadline: tokio::time::Instant,
    span: &tracing::Span,
) -> Option<crate::ws::WsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let settings = listener.ws.as_ref()?;
    let upgrade = tokio::time::timeout_at(deadline, crate::ws::accept(stream, settings));
    let result = tokio::select! {
        r = upgrade.instrument(span.clone()) => r,
        _ = shared.shutdown.cancelled() => return None,
    };
    match result {
        Ok(Ok((stream, protocol))) => {
            span.in_scope(|| {
                debug!(
                    subprotocol = protocol.unwrap_or("none"),
                    "WebSocket upgrade"
                )
            });
            Some(stream)
        }
        Ok(Err(e @ crate::ws::HandshakeError::Refused { .. })) => {
            span.in_scope(|| info!(error = %e, "WebSocket upgrade refused"));
            shared.metrics.refused(Refused::Protocol);
            None
        }
        Ok(Err(e)) => {
            span.in_scope(|| debug!(error = %e, "WebSocket upgrade failed"));
            shared.metrics.refused(Refused::Protocol);
            None
        }
        Err(_) => {
            span.in_scope(|| debug!("no WebSocket upgrade within the connect timeout"));
            shared.metrics.refused(Refused::Timeout);
            None
        }
    }
}
