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

use crate::acl::{Acl, Action, Authorizer};
use crate::auth::{AuthMethod, Authenticator};
use crate::config::{Config, ConfigError, ListenerKind};
use crate::http::HttpServer;
use crate::limits::TokenBucket;
use crate::listener::{Listener, ListenerInfo, Prepared};
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::password::PasswordFile;
use crate::reload::FileBacked;
use crate::retain::RetainStore;
use crate::router::{Router, Target};
use crate::session::{Enqueued, SessionEntry, SessionState, Sessions};
use crate::store::{Group, Store};
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
    /// The ACL file cannot be read or has a bad line (the error names file and line).
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// The store cannot be opened or read (the error names the data directory and what to
    /// do).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The `[cluster]` NATS servers cannot be reached or refuse the cluster's buckets.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// State shared by every task of one broker.
pub(crate) struct Shared {
    pub config: Config,
    pub router: Router,
    pub retained: RetainStore,
    pub sessions: Sessions,
    pub metrics: Metrics,
    /// The web dashboard's live data: samples and topic-explorer taps.
    pub live: Arc<crate::live::Live>,
    /// Where persistent state goes; `None` for an in-memory broker.
    pub store: Option<Store>,
    /// Who may do what where; `None`: everything is allowed.
    pub acl: Option<Box<dyn Authorizer>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub started: Instant,
    /// The bridges' status, in configuration order.
    pub bridges: Vec<Arc<crate::bridge::BridgeState>>,
    /// The link to the other nodes of the cluster (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Link>>,
    next_conn_id: AtomicU64,
    /// `max_connection_rate`: the bucket, and when a refusal was last logged.
    connect_rate: Option<std::sync::Mutex<(TokenBucket, Option<Instant>)>>,
}

impl Shared {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a new connection is within `max_connection_rate` (refusals are logged at
    /// most once a second).
    pub fn admit_connection(&self) -> bool {
        let Some(rate) = &self.connect_rate else {
            return true;
        };
        let now = Instant::now();
        let mut guard = rate.lock().unwrap_or_else(|e| e.into_inner());
        let (bucket, last_log) = &mut *guard;
        if bucket.try_take(1.0, now) {
            return true;
        }
        if last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last_log = Some(now);
            warn!(
                max_per_sec = self.config.max_connection_rate,
                "connection rate limit reached, refusing new connections"
            );
        }
        false
    }

    /// Routes a message from this node (a client, a will, `$SYS`, the admin API) to every
    /// matching session, stores it if retained, and in a cluster hands it to the other nodes
    /// (all but `$SYS` messages). `targets` is scratch space (kept to reuse).
    pub fn publish(&self, msg: Arc<Message>, targets: &mut Vec<Target>) -> Routed {
        let cluster = self
            .cluster
            .as_ref()
            .filter(|_| !msg.topic.starts_with("$SYS"));
        let mut routed = self.route(&msg, targets, cluster.is_none(), true);
        if let Some(link) = cluster {
            routed.forwarded = link.forward(&msg);
        }
        routed
    }

    /// Routes a message another node of the cluster received to this node's sessions (not
    /// to shared groups, whose messages come their own way; its retained state comes through
    /// the cluster's bucket).
    pub fn route_remote(&self, msg: Arc<Message>, targets: &mut Vec<Target>) {
        let routed = self.route(&msg, targets, false, false);
        drop(routed.group);
    }

    /// Gives a message of shared subscription `$share/<group>/<filter>` to one member on this
    /// node (NATS chose this node). False if there is no member left here.
    pub fn deliver_shared(&self, msg: Arc<Message>, group: &str, filter: &str) -> bool {
        self.live.taps.offer(&msg);
        let Some(t) = self.router.pick_member(filter, group) else {
            return false;
        };
        if self.may_receive(&t.session, &msg.topic) {
            let mut hold = BodyHold::default();
            let delivery = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(t.qos),
                retain: false,
                sub_ids: t.sub_ids,
                seq: 0,
                timed: msg.received_at.is_some(),
            };
            self.offer(&t.session, delivery, &mut hold);
            drop(self.let_go(&msg, hold));
        }
        true
    }

    fn route(
        &self,
        msg: &Arc<Message>,
        targets: &mut Vec<Target>,
        groups: bool,
        retain: bool,
    ) -> Routed {
        self.live.taps.offer(msg);
        targets.clear();
        let mut routed = Routed::default();
        let mut hold = BodyHold::default();
        self.router
            .route(&msg.topic, msg.origin.as_deref(), groups, targets, || {
                if retain && msg.retain && self.config.retain_available {
                    if let Some(store) = &self.store {
                        hold.group.get_or_insert_with(|| store.group());
                    }
                    routed.stored |= self.retained.set(msg.clone(), self.store.as_ref());
                }
            });
        for t in targets.drain(..) {
            if !self.may_receive(&t.session, &msg.topic) {
                continue;
            }
            let delivery = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(t.qos),
                retain: msg.retain && t.retain_as_published,
                sub_ids: t.sub_ids,
                seq: 0,
                timed: msg.received_at.is_some(),
            };
            match self.offer(&t.session, delivery, &mut hold) {
                Enqueued::Queued => routed.queued += 1,
                Enqueued::DroppedQueueFull => {
                    debug!(client_id = %t.session.client_id, topic = %msg.topic, "queue full, message dropped");
                }
                Enqueued::DroppedOffline => {}
            }
        }
        routed.stored |= hold.stored;
        routed.group = self.let_go(msg, hold);
        routed
    }

    /// Whether the ACL lets `session` receive messages on `topic`.
    pub fn may_receive(&self, session: &SessionEntry, topic: &str) -> bool {
        crate::bridge::is_bridge_id(&session.client_id)
            || self.acl.as_ref().is_none_or(|acl| {
                session
                    .with_username(|u| acl.authorize(Action::Receive, topic, &session.client_id, u))
            })
    }

    /// Offers a message to a session's mailbox, writing it to the store first if the session
    /// is persistent and the delivery QoS 1/2. Counts drops. `hold` carries the message's
    /// body across the sessions of one publish; end with [`Shared::let_go`].
    pub fn offer(
        &self,
        session: &SessionEntry,
        mut delivery: Delivery,
        hold: &mut BodyHold,
    ) -> Enqueued {
        let store = self
            .store
            .as_ref()
            .filter(|_| delivery.qos != QoS::AtMostOnce && session.is_persistent());
        if let Some(store) = store {
            // Opened before this publish's first write, so that all of them share one
            // transaction; publishes that write nothing never touch the store.
            hold.group.get_or_insert_with(|| store.group());
            // The body is written with the first stored message that points at it; the
            // publisher holds a reference on it meanwhile.
            if !hold.held {
                hold.body = store.hold_body(&delivery.msg);
                hold.held = true;
            }
            delivery.seq = store.next_id();
        }
        let client_id = &session.client_id;
        let queued = session.enqueue_with(delivery, self.config.queue_qos0_offline, |d| {
            if let Some(store) = store {
                store.queued(client_id, d, hold.body.take());
                hold.stored = true;
            }
        });
        match queued {
            Enqueued::Queued => {}
            Enqueued::DroppedQueueFull => Metrics::add(&self.metrics.dropped_queue_full, 1),
            Enqueued::DroppedOffline => Metrics::add(&self.metrics.dropped_offline, 1),
        }
        queued
    }

    /// Drops the publisher's reference on `msg`'s body after [`Shared::offer`], and returns
    /// the store group of the publish (if it wrote anything): the caller keeps it open
    /// while it writes what belongs with the publish (a QoS 2 packet id).
    pub fn let_go(&self, msg: &Message, hold: BodyHold) -> Option<Group> {
        if let (true, true, Some(store)) = (hold.held, hold.stored, &self.store)
            && let Some(op) = store.release_body(msg)
        {
            store.submit(op);
        }
        hold.group
    }

    /// Ends a session's state: its subscriptions leave the router, its queue and in-flight
    /// messages are dropped, and the store forgets it.
    pub fn clear_session(&self, entry: &SessionEntry, state: &mut SessionState) {
        for filter in state.subscriptions.keys() {
            self.router.unsubscribe(&entry.client_id, filter);
        }
        state.subscriptions.clear();
        let in_flight: Vec<Delivery> = state.outbound.drain().map(|(_, _, d)| d).collect();
        let queued = entry.clear_queue();
        entry.set_inflight(0);
        state.inbound.clear();
        state.restored_qos2 = Vec::new();
        state.exists = false;
        if entry.is_persistent() {
            entry.set_persistent(false);
            if let Some(store) = &self.store {
                store.session_ended(&entry.client_id);
                for d in in_flight.iter().chain(queued.iter()) {
                    if d.seq == 0 {
                        continue;
                    }
                    if let Some(op) = store.release_body(&d.msg) {
                        store.submit(op);
                    }
                }
            }
        }
    }

    /// Lets go of a stored message that will not be delivered (acknowledged, expired,
    /// dropped).
    pub fn done(&self, entry: &SessionEntry, d: &Delivery) {
        if let (Some(store), true) = (&self.store, d.seq != 0) {
            store.done(&entry.client_id, d);
        }
    }

    /// Schedules the end of a session that is left without a connection, `expiry` seconds
    /// from now, unless a client claims it again first.
    pub fn schedule_expiry(
        self: &Arc<Self>,
        entry: Arc<SessionEntry>,
        generation: u64,
        expiry: u64,
    ) {
        let shared = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(expiry)) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            if shared.sessions.remove_expired(&entry, generation) {
                let mut state = entry.state.lock().await;
                shared.clear_session(&entry, &mut state);
                if let Some(link) = &shared.cluster {
                    link.session_ended(&entry.client_id);
                }
                debug!(client_id = %entry.client_id, "session expired");
            }
        });
    }

    /// Publishes a will `delay` seconds from now unless the session's client comes back
    /// (its generation changes) first. The store keeps it meanwhile.
    pub fn schedule_will(
        self: &Arc<Self>,
        entry: Arc<SessionEntry>,
        generation: u64,
        msg: Message,
        delay: u64,
    ) {
        let shared = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(delay)) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            if entry.generation() == generation {
                if let Some(store) = &shared.store {
                    store.will_gone(&entry.client_id);
                }
                shared.publish(Arc::new(msg), &mut Vec::new());
                if let Some(link) = &shared.cluster {
                    link.will_done(&entry.client_id);
                }
            }
        });
    }
}

/// A publisher's hold on a message body while it offers the message to sessions.
#[derive(Debug, Default)]
pub(crate) struct BodyHold {
    held: bool,
    /// The body's write, until a stored message takes it along.
    body: Option<crate::store::Op>,
    /// Whether a message was written to the store.
    stored: bool,
    /// Open from the publish's first write to the store.
    group: Option<Group>,
}

/// What routing a message did.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Sessions it was queued for.
    pub queued: usize,
    /// Whether it went to the other nodes of the cluster too.
    pub forwarded: bool,
    /// Whether it was written to the store (for a persistent session, or retained).
    pub stored: bool,
    /// The store group of its writes, if any.
    pub group: Option<Group>,
}

/// Builds a broker with non-default parts.
pub struct BrokerBuilder {
    config: Config,
    /// `None`: decided by the configuration (password file or allow all).
    auth: Option<Box<dyn Authenticator>>,
    /// `None`: decided by the configuration (`acl_file`, or allow all).
    authorizer: Option<Box<dyn Authorizer>>,
    /// Enhanced-authentication methods for every listener.
    methods: Vec<Arc<dyn AuthMethod>>,
}

impl BrokerBuilder {
    /// Uses `auth` to decide who may connect (instead of `password_file` and
    /// `allow_anonymous` from the configuration).
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Box::new(auth));
        self
    }

    /// Offers `method` for MQTT 5.0 enhanced authentication on every listener (a CONNECT
    /// naming it is decided by it alone). A method named `SCRAM-SHA-256` replaces the
    /// built-in one of listeners with a password file.
    pub fn auth_method(mut self, method: impl AuthMethod) -> Self {
        self.methods.push(Arc::new(method));
        self
    }

    /// Uses `authorizer` to decide what connected clients may publish, subscribe to and
    /// receive (instead of `acl_file` from the configuration).
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Box::new(authorizer));
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
        let (prepared, passwords) = crate::listener::prepare(&self.config, custom, &self.methods)?;
        // First, so that `/health` answers and `/ready` says why not yet while the store is
        // read. Dropped (stopped) if the start fails.
        let mut http_tls = None;
        let http = match &self.config.http {
            Some(h) => {
                http_tls = crate::http::tls_state(h)?;
                Some(
                    HttpServer::start(h, &self.config, http_tls.clone())
                        .await
                        .map_err(|source| BrokerError::Bind {
                            addr: format!("{} (http)", h.bind),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let mut files = AuthFiles {
            passwords,
            acl: None,
        };
        let acl = match self.authorizer {
            Some(custom) => Some(custom),
            None => match &self.config.acl_file {
                Some(path) => {
                    let file = Arc::new(FileBacked::new(path, Acl::from_file(path)?));
                    files.acl = Some(file.clone());
                    Some(Box::new(file) as Box<dyn Authorizer>)
                }
                None => None,
            },
        };
        // Opened before binding: a store that cannot be read stops the start.
        let store = if self.config.persistence {
            let dir = self.config.data_dir.clone();
            let (mode, interval) = (self.config.sync, self.config.sync_interval());
            let opened = tokio::task::spawn_blocking(move || Store::open(&dir, mode, interval))
                .await
                .map_err(|e| crate::store::StoreError::Backend {
                    path: self.config.data_dir.clone(),
                    message: format!("opening failed: {e}"),
                })??;
            Some(opened)
        } else {
            None
        };
        // The state comes back before the listeners open: no client sees a half-restored
        // broker.
        // Joined before the state comes back, so that restored subscriptions are
        // subscribed on NATS too.
        let cluster = match &self.config.cluster {
            Some(c) => Some(crate::cluster::Link::connect(c, CLUSTER_JOIN_WAIT).await?),
            None => None,
        };
        let (store, snapshot) = store.unzip();
        let shared = Broker::shared(self.config, store, acl, cluster);
        if let Some(h) = &http {
            h.attach(shared.clone());
        }
        if let Some(snapshot) = snapshot {
            crate::store::restore(&shared, snapshot);
        }
        crate::cluster::start(&shared, CLUSTER_JOIN_WAIT).await;
        let mut bound = Vec::new();
        for p in prepared {
            match listen(p.bind) {
                Ok(socket) => bound.push((socket, p)),
                Err(source) => {
                    // Ends the timers the restore started, which closes the store.
                    shared.shutdown.cancel();
                    return Err(BrokerError::Bind {
                        addr: p.bind.to_string(),
                        source,
                    });
                }
            }
        }
        let mut broker = Broker::serve(shared, bound);
        broker.files = Arc::new(files);
        match &broker.first {
            Some((listener, _)) => crate::bridge::start(&broker.shared, listener),
            None if !broker.shared.config.bridges.is_empty() => {
                warn!("bridges need a listener; none is configured, so no bridge runs");
            }
            None => {}
        }
        if let Some(h) = &http {
            h.ready(broker.listeners());
        }
        if let Some(state) = http_tls {
            // Reloaded on SIGHUP with the MQTT listeners' certificates.
            let mut states = broker.tls.to_vec();
            states.push(state);
            broker.tls = Arc::from(states);
        }
        broker.http = http;
        Ok(broker)
    }
}

/// How long a starting node tries to reach NATS and load the cluster's retained messages.
const CLUSTER_JOIN_WAIT: Duration = Duration::from_secs(15);

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
    files: Arc<AuthFiles>,
    /// The operators' HTTP listener, if configured.
    http: Option<HttpServer>,
    /// The first listener and the connection limit, for [`Broker::serve_stream`].
    first: Option<(Arc<Listener>, Arc<Semaphore>)>,
}

/// A cheap handle that can stop the broker, or reload its TLS certificates, from anywhere.
#[derive(Clone)]
pub struct BrokerHandle {
    shutdown: CancellationToken,
    tls: Arc<[Arc<TlsState>]>,
    files: Arc<AuthFiles>,
}

/// The password files and the ACL file the broker reads again on request.
#[derive(Default)]
struct AuthFiles {
    passwords: Vec<crate::listener::SharedPasswordFile>,
    acl: Option<Arc<FileBacked<Acl>>>,
}

impl BrokerHandle {
    /// Reads every password file and the ACL file again and uses them for the next checks
    /// (connected clients stay connected; their next publish or subscribe is checked against
    /// the new ACL). All or nothing: if any file cannot be used, all keep their current
    /// contents and the error (naming the file and line) is returned. Returns the number of
    /// files reloaded. `sagitta broker` calls this on SIGHUP.
    pub fn reload_auth_files(&self) -> Result<usize, BrokerError> {
        let passwords = self
            .files
            .passwords
            .iter()
            .map(|f| PasswordFile::load(f.path()))
            .collect::<Result<Vec<_>, _>>()?;
        let acl = match &self.files.acl {
            Some(f) => Some(Acl::from_file(f.path())?),
            None => None,
        };
        let mut n = 0;
        for (file, new) in self.files.passwords.iter().zip(passwords) {
            file.replace(new);
            n += 1;
        }
        if let (Some(file), Some(new)) = (&self.files.acl, acl) {
            file.replace(new);
            n += 1;
        }
        Ok(n)
    }

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
    /// Starts an in-memory broker (no store) with default settings listening on `addr` (port
    /// 0 picks a free port; see [`Broker::local_addrs`]).
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
        let config = Config::default().listen([local]).in_memory();
        let shared = Self::shared(config, None, None, None);
        let info = Listener::open_tcp(local);
        let mut broker = Broker {
            shared,
            local_addrs: Vec::new(),
            listeners: Vec::new(),
            tls: Arc::from(Vec::new()),
            files: Arc::default(),
            http: None,
            first: None,
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
        let _ = crate::listener::prepare(config, None, &[])?;
        if let Some(http) = &config.http {
            crate::http::tls_state(http)?;
        }
        if let Some(path) = &config.acl_file {
            Acl::from_file(path)?;
        }
        Ok(())
    }

    /// Starts a broker with `config`.
    pub async fn start(config: Config) -> Result<Broker, BrokerError> {
        Self::builder(config).start().await
    }

    /// A builder for a broker with `config` and non-default parts.
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            auth: None,
            methods: Vec::new(),
            authorizer: None,
        }
    }

    pub(crate) fn shared(
        config: Config,
        store: Option<Store>,
        acl: Option<Box<dyn Authorizer>>,
        cluster: Option<Arc<crate::cluster::Link>>,
    ) -> Arc<Shared> {
        let rate = config.max_connection_rate;
        let connect_rate = (rate > 0).then(|| {
            std::sync::Mutex::new((TokenBucket::new(f64::from(rate), Instant::now()), None))
        });
        let bridges = config
            .bridges
            .iter()
            .map(|b| Arc::new(crate::bridge::BridgeState::new(&b.name)))
            .collect();
        Arc::new(Shared {
            bridges,
            config,
            store,
            acl,
            router: Router::with_interest(cluster.as_ref().map(|c| c.interest_sender())),
            cluster,
            retained: RetainStore::default(),
            sessions: Sessions::default(),
            metrics: Metrics::default(),
            live: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connect_rate,
            started: Instant::now(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    fn serve(shared: Arc<Shared>, bound: Vec<(TcpListener, Prepared)>) -> Broker {
        let mut broker = Broker {
            shared,
            local_addrs: Vec::new(),
            listeners: Vec::new(),
            tls: Arc::from(Vec::new()),
            files: Arc::default(),
            http: None,
            first: None,
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
        let transport = match info.kind {
            ListenerKind::Tcp => "mqtt over tcp",
            ListenerKind::Tls => "mqtt over tls",
            ListenerKind::Ws => "mqtt over websocket",
            ListenerKind::Wss => "mqtt over websocket over tls",
        };
        let certs = if info.verifies_client_certificates {
            ", client certificates verified"
        } else {
            ""
        };
        let path = listener
            .ws_path()
            .map(|p| format!(", path {p}"))
            .unwrap_or_default();
        info!(addr = %info.local_addr, name = %info.name, anonymous = info.allow_anonymous, "listening ({transport}{path}{certs})");
        self.local_addrs.push(info.local_addr);
        self.listeners.push(info.clone());
        if self.first.is_none() {
            self.first = Some((listener.clone(), limit.clone()));
        }
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
            self.shared
                .tracker
                .spawn(crate::sys::sys_loop(self.shared.clone()));
        }
    }

    /// The addresses the listeners are bound to: `listen` addresses first, then the
    /// `[[listener]]` tables, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The address of the HTTP listener (`[http]`), if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
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
            files: self.files.clone(),
        }
    }

    /// Publishes a message as the broker itself (no client origin).
    pub fn publish(&self, topic: TopicName, payload: impl Into<Bytes>, qos: QoS, retain: bool) {
        let msg = Arc::new(Message::new(topic, payload.into(), qos, retain));
        self.shared.publish(msg, &mut Vec::new());
    }

    /// Serves `stream` as a connection accepted by the first listener, with that listener's
    /// authentication and the broker's connection limits, but as plain MQTT: no TLS
    /// handshake, no WebSocket upgrade. `peer` is the address it is known by (logs, admin
    /// API). Returns `false` if the connection limits refuse it (the stream is dropped).
    ///
    /// For tests and fuzzing without sockets (a `tokio::io::duplex` pair stands in for a
    /// TCP connection; see `fuzz/`). Must be called within the broker's tokio runtime. Not
    /// part of the supported API.
    #[doc(hidden)]
    pub fn serve_stream<S>(&self, stream: S, peer: SocketAddr) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match &self.first {
            Some((listener, limit)) => {
                crate::listener::serve_stream(&self.shared, stream, peer, listener, limit)
            }
            None => false,
        }
    }

    /// The status of each `[[bridge]]`, in configuration order.
    pub fn bridges(&self) -> Vec<crate::bridge::BridgeStatus> {
        crate::bridge::statuses(&self.shared)
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
        if self.shared.store.is_some() {
            // Every connection has written its session's last state: sync and stop.
            let shared = self.shared.clone();
            let closing = tokio::task::spawn_blocking(move || {
                if let Some(store) = &shared.store {
                    store.close();
                }
            });
            if closing.await.is_err() {
                tracing::error!("closing the store failed");
            }
        }
        // Last: `/ready` answered 503 while the broker drained.
        if let Some(http) = self.http {
            http.stop().await;
        }
        info!("broker stopped");
    }

    /// Shuts down and waits for every connection to close.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.wait().await;
    }
}
