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
use tracing::{debug, info, warn};

use crate::auth::{AllowAll, Authenticator};
use crate::config::{Config, ConfigError};
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::retain::RetainStore;
use crate::router::{Router, Target};
use crate::session::{Enqueued, SessionEntry, SessionState, Sessions};

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
}

/// State shared by every task of one broker.
pub(crate) struct Shared {
    pub config: Config,
    pub router: Router,
    pub retained: RetainStore,
    pub sessions: Sessions,
    pub metrics: Metrics,
    pub auth: Box<dyn Authenticator>,
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

    /// Binds the listeners and starts serving.
    pub async fn start(self) -> Result<Broker, BrokerError> {
        self.config.validate()?;
        let auth: Box<dyn Authenticator> = match (self.auth, &self.config.password_file) {
            (Some(auth), _) => auth,
            (None, Some(path)) => Box::new(
                crate::password::PasswordFile::load(path)?
                    .allow_anonymous(self.config.anonymous_allowed()),
            ),
            (None, None) => Box::new(AllowAll),
        };
        let mut listeners = Vec::new();
        for addr in &self.config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            listeners.push(listener);
        }
        Ok(Broker::serve(self.config, auth, listeners))
    }
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
}

/// A cheap handle that can stop the broker from anywhere.
#[derive(Clone)]
pub struct BrokerHandle {
    shutdown: CancellationToken,
}

impl BrokerHandle {
    /// Starts a clean shutdown: listeners close, 5.0 clients get DISCONNECT 0x8B.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Broker {
    /// Starts a broker with default settings listening on `addr` (port 0 picks a free port;
    /// see [`Broker::local_addrs`]).
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Broker, BrokerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: "requested address".into(),
                source,
            })?;
        let mut config = Config::default();
        if let Ok(a) = listener.local_addr() {
            config.listen = vec![a];
        }
        Ok(Self::serve(config, Box::new(AllowAll), vec![listener]))
    }

    /// Starts a broker with `config`.
    pub async fn start(config: Config) -> Result<Broker, BrokerError> {
        Self::builder(config).start().await
    }

    /// A builder for a broker with `config` and non-default parts.
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder { config, auth: None }
    }

    fn serve(config: Config, auth: Box<dyn Authenticator>, listeners: Vec<TcpListener>) -> Broker {
        let shared = Arc::new(Shared {
            config,
            router: Router::default(),
            retained: RetainStore::default(),
            sessions: Sessions::default(),
            metrics: Metrics::default(),
            auth,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            next_conn_id: AtomicU64::new(1),
        });
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        let mut local_addrs = Vec::new();
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "listening (mqtt over tcp)");
                local_addrs.push(addr);
            }
            shared
                .tracker
                .spawn(accept_loop(shared.clone(), listener, limit.clone()));
        }
        if shared.config.sys_interval > 0 {
            shared.tracker.spawn(sys_loop(shared.clone()));
        }
        Broker {
            shared,
            local_addrs,
        }
    }

    /// The addresses the listeners are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// A handle to stop the broker.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            shutdown: self.shared.shutdown.clone(),
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

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, limit: Arc<Semaphore>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, max = shared.config.max_connections, "connection limit reached, refusing");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        shared.tracker.spawn(crate::connection::serve(
            shared.clone(),
            stream,
            peer,
            permit,
        ));
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
