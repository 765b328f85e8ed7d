//! The broker: shared state, listeners, `$SYS` and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sagitta_proto::{QoS, TopicName};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, ListenerKind};
use crate::listener::{Listener, ListenerInfo, Prepared};
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::retain::RetainStore;
use crate::router::{Router, Target};
use crate::session::{Enqueued, SessionEntry, SessionState, Sessions};
use crate::tls::{TlsError, TlsState};

/// Why the broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password file cannot be read or has a bad line (the error names file and line).
    #[error(transparent)]
    PasswordFile(#[from] crate::password::PasswordFileError),
    /// A TLS listener's certificate, key or client CA file cannot be used (the error names
    /// the file).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// State shared by every task of one broker.
pub(crate) struct Shared {
    pub config: Config,
    pub router: Router,
    pub retained: RetainStore,
    pub sessions: Sessions,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub started: Instant,
    next_conn_id: AtomicU64,
}

impl Shared {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Routes a message to every matching session and stores it if retained. Returns the
    /// number of sessions it was queued for. `targets` is scratch space (kept to reuse).
    pub fn publish(&self, msg: Arc<Message>, targets: &mut Vec<Target>) -> usize {
        targets.clear();
        self.router
            .route(&msg.topic, msg.origin.as_deref(), targets, || {
                if msg.retain && self.config.retain_available {
                    self.retained.set(msg.clone());
                }
            });
        let mut queued = 0;
        for t in targets.drain(..) {
            let delivery = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(t.qos),
                retain: msg.retain && t.retain_as_published,
                sub_ids: t.sub_ids,
            };
            match t.session.enqueue(delivery, self.config.queue_qos0_offline) {
                Enqueued::Queued => queued += 1,
                Enqueued::DroppedQueueFull => {
                    Metrics::add(&self.metrics.dropped_queue_full, 1);
                    debug!(client_id = %t.session.client_id, topic = %msg.topic, "queue full, message dropped");
                }
                Enqueued::DroppedOffline => Metrics::add(&self.metrics.dropped_offline, 1),
            }
        }
        queued
    }

    /// Ends a session's state: its subscriptions leave the router, its queue and in-flight
    /// messages are dropped.
    pub fn clear_session(&self, entry: &SessionEntry, state: &mut SessionState) {
        for filter in state.subscriptions.keys() {
            self.router.unsubscribe(&entry.client_id, filter);
        }
        state.subscriptions.clear();
        state.outbound.drain().for_each(drop);
        state.inbound.clear();
        entry.clear_queue();
        state.exists = false;
    }

    /// Schedules the end of a session that is left without a connection, `expiry` seconds
    /// from now, unless a client claims it again first.
    pub fn schedule_expiry(
        self: &Arc<Self>,
        entry: Arc<SessionEntry>,
        generation: u64,
        expiry: u32,
    ) {
        let shared = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            if shared.sessions.remove_expired(&entry, generation) {
                let mut state = entry.state.lock().await;
                shared.clear_session(&entry, &mut state);
                debug!(client_id = %entry.client_id, "session expired");
            }
        });
    }
}

/// Builds a broker with non-default parts.
pub struct BrokerBuilder {
    config: Config,
    /// `None`: decided by the configuration (password file or allow all).
    auth: Option<Box<dyn Authenticator>>,
}

impl BrokerBuilder {
    /// Uses `auth` to decide who may connect (instead of `password_file` and
    /// `allow_anonymous` from the configuration).
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Box::new(auth));
        self
    }

    /// Reads every file the listeners need (password files, TLS certificates, keys and
    /// CAs), binds the listeners and starts serving.
    pub async fn start(self) -> Result<Broker, BrokerError> {
        let custom: Option<Arc<dyn Authenticator>> = self.auth.map(Arc::from);
        if custom.is_some() {
            self.config.validate_with_authenticator()?;
        } else {
            self.config.validate()?;
        }
        let prepared = crate::listener::prepare(&self.config, custom)?;
        let mut bound = Vec::new();
        for p in prepared {
            let socket = listen(p.bind).map_err(|source| BrokerError::Bind {
                addr: p.bind.to_string(),
                source,
            })?;
            bound.push((socket, p));
        }
        Ok(Broker::serve(self.config, bound))
    }
}

/// Pending connections the kernel may queue per listener before the broker accepts them
/// (capped by `net.core.somaxconn`). Larger than tokio's 1024 so that a reconnect storm of
/// thousands of clients is queued rather than dropped into 1 s SYN retransmissions.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A running broker.
///
/// ```no_run
/// # async fn run() -> Result<(), sagitta_broker::BrokerError> {
/// let broker = sagitta_broker::Broker::bind("127.0.0.1:5000").await?;
/// broker.wait().await;
/// # Ok(()) }
/// ```
pub struct Broker {
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    listeners: Vec<ListenerInfo>,
    tls: Arc<[Arc<TlsState>]>,
}

/// A cheap handle that can stop the broker, or reload its TLS certificates, from anywhere.
#[derive(Clone)]
pub struct BrokerHandle {
    shutdown: CancellationToken,
    tls: Arc<[Arc<TlsState>]>,
}

impl BrokerHandle {
    /// Starts a clean shutdown: listeners close, 5.0 clients get DISCONNECT 0x8B.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Reads every TLS listener's certificate chain, key and client CA bundle again and
    /// uses them for new handshakes; established connections are not touched. All or
    /// nothing: if any file cannot be used, every listener keeps its current configuration
    /// and the error (naming the file) is returned. Returns the number of TLS listeners
    /// reloaded. `sagitta broker` calls this on SIGHUP.
    pub fn reload_tls(&self) -> Result<usize, TlsError> {
        let fresh = self
            .tls
            .iter()
            .map(|state| state.prepare())
            .collect::<Result<Vec<_>, _>>()?;
        for (state, config) in self.tls.iter().zip(fresh) {
            state.install(config);
            info!(cert = %state.files().cert.display(), "TLS certificate reloaded");
        }
        Ok(self.tls.len())
    }
}

impl Broker {
    /// Starts a broker with default settings listening on `addr` (port 0 picks a free port;
    /// see [`Broker::local_addrs`]).
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Broker, BrokerError> {
        let bind_error = |source| BrokerError::Bind {
            addr: "requested address".into(),
            source,
        };
        let mut last = None;
        let mut bound = None;
        for a in tokio::net::lookup_host(addr).await.map_err(bind_error)? {
            match listen(a) {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let listener = bound.ok_or_else(|| {
            bind_error(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
            }))
        })?;
        let local = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: "requested address".into(),
            source,
        })?;
        let config = Config::default().listen([local]);
        let shared = Self::shared(config);
        let info = Listener::open_tcp(local);
        let mut broker = Broker {
            shared,
            local_addrs: Vec::new(),
            listeners: Vec::new(),
            tls: Arc::from(Vec::new()),
        };
        let limit = Arc::new(Semaphore::new(broker.shared.config.max_connections));
        broker.run_listener(listener, Arc::new(info), None, &limit);
        broker.start_sys();
        Ok(broker)
    }

    /// Checks `config` as [`Broker::start`] would, without binding: validates it and reads
    /// every password file and TLS certificate, key and CA file.
    pub fn check_config(config: &Config) -> Result<(), BrokerError> {
        config.validate()?;
        crate::listener::prepare(config, None)?;
        Ok(())
    }

    /// Starts a broker with `config`.
    pub async fn start(config: Config) -> Result<Broker, BrokerError> {
        Self::builder(config).start().await
    }

    /// A builder for a broker with `config` and non-default parts.
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder { config, auth: None }
    }

    fn shared(config: Config) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            router: Router::default(),
            retained: RetainStore::default(),
            sessions: Sessions::default(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    fn serve(config: Config, bound: Vec<(TcpListener, Prepared)>) -> Broker {
        let mut broker = Broker {
            shared: Self::shared(config),
            local_addrs: Vec::new(),
            listeners: Vec::new(),
            tls: Arc::from(Vec::new()),
        };
        let limit = Arc::new(Semaphore::new(broker.shared.config.max_connections));
        let mut tls_states = Vec::new();
        for (socket, prepared) in bound {
            let local = socket.local_addr().unwrap_or(prepared.bind);
            let tls = prepared.tls.clone();
            if let Some(state) = &tls {
                tls_states.push(state.clone());
            }
            let listener = Arc::new(prepared.into_listener(local));
            broker.run_listener(socket, listener, tls, &limit);
        }
        broker.tls = Arc::from(tls_states);
        broker.start_sys();
        broker
    }

    fn run_listener(
        &mut self,
        socket: TcpListener,
        listener: Arc<Listener>,
        tls: Option<Arc<TlsState>>,
        limit: &Arc<Semaphore>,
    ) {
        let info = &listener.info;
        let transport = match (info.kind, info.verifies_client_certificates) {
            (ListenerKind::Tcp, _) => "mqtt over tcp",
            (ListenerKind::Tls, false) => "mqtt over tls",
            (ListenerKind::Tls, true) => "mqtt over tls, client certificates verified",
        };
        info!(addr = %info.local_addr, name = %info.name, anonymous = info.allow_anonymous, "listening ({transport})");
        self.local_addrs.push(info.local_addr);
        self.listeners.push(info.clone());
        self.shared.tracker.spawn(crate::listener::accept_loop(
            self.shared.clone(),
            socket,
            listener,
            tls,
            limit.clone(),
        ));
    }

    fn start_sys(&self) {
        if self.shared.config.sys_interval > 0 {
            self.shared.tracker.spawn(sys_loop(self.shared.clone()));
        }
    }

    /// The addresses the listeners are bound to: `listen` addresses first, then the
    /// `[[listener]]` tables, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The listeners, in the order of [`Broker::local_addrs`].
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// A handle to stop the broker or reload its TLS certificates.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            shutdown: self.shared.shutdown.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Publishes a message as the broker itself (no client origin).
    pub fn publish(&self, topic: TopicName, payload: impl Into<Bytes>, qos: QoS, retain: bool) {
        let msg = Arc::new(Message::new(topic, payload.into(), qos, retain));
        self.shared.publish(msg, &mut Vec::new());
    }

    /// Broker-wide counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Waits until the broker has shut down (after [`BrokerHandle::shutdown`]) and every
    /// connection task has finished.
    pub async fn wait(self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        info!("broker stopped");
    }

    /// Shuts down and waits for every connection to close.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.wait().await;
    }
}

async fn sys_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(shared.config.sys_interval));
    let mut targets = Vec::new();
    let version = format!("sagitta {}", env!("CARGO_PKG_VERSION"));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let m = &shared.metrics;
        let connected = Metrics::get(&m.clients_connected);
        let sessions = shared.sessions.len() as u64;
        let values: [(&str, String); 12] = [
            ("version", version.clone()),
            (
                "uptime",
                format!("{} seconds", shared.started.elapsed().as_secs()),
            ),
            ("clients/connected", connected.to_string()),
            (
                "clients/disconnected",
                sessions.saturating_sub(connected).to_string(),
            ),
            ("clients/total", sessions.max(connected).to_string()),
            (
                "clients/maximum",
                Metrics::get(&m.clients_maximum).to_string(),
            ),
            (
                "messages/received",
                Metrics::get(&m.messages_received).to_string(),
            ),
            ("messages/sent", Metrics::get(&m.messages_sent).to_string()),
            (
                "bytes/received",
                Metrics::get(&m.bytes_received).to_string(),
            ),
            ("bytes/sent", Metrics::get(&m.bytes_sent).to_string()),
            ("retained messages/count", shared.retained.len().to_string()),
            ("subscriptions/count", shared.router.len().to_string()),
        ];
        for (name, value) in values {
            let Ok(topic) = TopicName::new(format!("$SYS/broker/{name}")) else {
                continue;
            };
            let msg = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
            shared.publish(Arc::new(msg), &mut targets);
        }
    }
}
