//! Bridges: forwarding topics between this broker and another MQTT broker.
//!
//! A bridge is two sessions of our own client library (`sagitta-client`):
//!
//! - The **local** one, client id `$bridge/<name>`, speaks MQTT 5.0 to this broker over an
//!   in-process duplex stream (`listener::serve_internal`: no authentication, no ACL). It is a
//!   persistent session (clean start off, expiry "never"), so the broker keeps what the
//!   bridge has not acknowledged: QoS 1/2 messages in flight to it, and the rest in the
//!   session's queue, bounded by the bridge's `max_queued`, dropped and counted past it, and
//!   written to the store like any persistent session's. Its subscriptions (the `out` rules)
//!   have No Local (what the bridge publishes locally does not go back out) and Retain As
//!   Published.
//! - The **remote** one connects to the configured addresses in turn (fail-over), with TLS
//!   if asked, and backoff between attempts. Its subscriptions (the `in` rules) have No Local
//!   for 5.0; for 3.1.1 the CONNECT carries Mosquitto's bridge flag (`try_private`). One
//!   [`Client`] serves one address: when its connection is lost, the client reconnects by
//!   itself (backoff from the bridge's configuration) and, the remote session being
//!   persistent (the default), resumes it: unacknowledged PUBLISHes go again with DUP and
//!   their packet ids, PUBRELs for what was PUBREC'd, so the remote's QoS 2 de-duplication
//!   holds (exactly once). The bridge only watches the client's status. With several
//!   addresses, a client whose reconnects keep failing ([`FAILOVER_AFTER`] attempts) is
//!   closed and the next address gets a new client (a new session there: what was not
//!   acknowledged is published again as new).
//!
//! Acknowledgements are manual on both sides: a local message is acknowledged to this broker
//! only once the remote broker has acknowledged it (PUBACK / PUBCOMP), and a remote message
//! only once this broker has. While the remote is unreachable the local in-flight window
//! fills and the broker queues the rest; after a reconnect, what was not acknowledged is sent
//! again in order, then the queue drains. Nothing acknowledged is ever held only in memory.
//! (The remote client's in-flight window is in memory, but every message in it is still
//! unacknowledged to this broker, so it is also in the local session.)

pub mod config;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagitta_client::{
    Ack, BoxedStream, Client, ClientBuilder, ClientError, ConnectError, Connector, PendingPublish,
    PublishOptions, ReconnectPolicy, State, Status, Subscription, TlsOptions,
};
use sagitta_proto::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::Shared;
use crate::listener::Listener;
use config::{BridgeConfig, BridgeProtocol};

/// With several addresses, failed reconnects in a row to the current one before the bridge
/// fails over to the next.
pub const FAILOVER_AFTER: u32 = 3;

/// Client ids of the local sessions of bridges start with this; no network client may use one.
pub(crate) const ID_PREFIX: &str = "$bridge/";

/// Whether `client_id` is a bridge's local session.
pub(crate) fn is_bridge_id(client_id: &str) -> bool {
    client_id.starts_with(ID_PREFIX)
}

/// The local session's client id of the bridge `name`.
pub fn local_client_id(name: &str) -> String {
    format!("{ID_PREFIX}{name}")
}

/// Why a bridge cannot run, or why its connection ended.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The local session could not be opened.
    #[error("cannot open the local session: {0}")]
    Local(#[source] ConnectError),
    /// A local subscription failed.
    #[error("local subscription to {filter}: {reason}")]
    LocalSubscribe {
        /// The filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// The TLS settings cannot be used.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// A remote subscription failed.
    #[error("remote subscription to {filter}: {source}")]
    RemoteSubscribe {
        /// The filter.
        filter: String,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// A bridge's status: `$SYS/broker/bridge/<name>/...`, the `sagitta_bridge_*` metrics and
/// `GET /api/v1/bridges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeStatus {
    /// The bridge's name.
    pub name: String,
    /// Connected to the remote broker now.
    pub connected: bool,
    /// The remote address of the current (or last) connection.
    pub remote: Option<String>,
    /// Messages for the remote waiting in the local session's queue.
    pub queued: u64,
    /// Messages for the remote taken from the queue and not yet acknowledged by it.
    pub inflight: u64,
    /// Messages forwarded to the remote (acknowledged by it for QoS 1/2).
    pub sent: u64,
    /// Messages forwarded from the remote to this broker.
    pub received: u64,
    /// Messages dropped: the local queue was full (or QoS 0 with the bridge away), or a
    /// broker refused a message.
    pub dropped: u64,
    /// Connections to the remote after the first.
    pub reconnects: u64,
    /// Why the last connection (attempt) failed, if it did.
    pub last_error: Option<String>,
}

/// A bridge's live counters, shared with `$SYS`, metrics and the admin API.
pub(crate) struct BridgeState {
    pub name: String,
    connected: AtomicBool,
    remote: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl BridgeState {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            connected: AtomicBool::new(false),
            remote: Mutex::new(None),
            last_error: Mutex::new(None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    fn set_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    fn set_remote(&self, addr: &str) {
        *self.remote.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.to_owned());
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The status now, with the local session's queue.
    pub fn status(&self, shared: &Shared) -> BridgeStatus {
        let session = shared.sessions.get(&local_client_id(&self.name));
        let (queued, inflight, session_dropped) = session.map_or((0, 0, 0), |s| {
            (s.queued() as u64, u64::from(s.inflight()), s.dropped())
        });
        BridgeStatus {
            name: self.name.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            remote: self
                .remote
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            queued,
            inflight,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed) + session_dropped,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Every bridge's status, in configuration order.
pub(crate) fn statuses(shared: &Shared) -> Vec<BridgeStatus> {
    shared.bridges.iter().map(|b| b.status(shared)).collect()
}

/// The `GET /api/v1/bridges` answer.
pub(crate) fn status_json(shared: &Shared) -> serde_json::Value {
    serde_json::json!({ "bridges": statuses(shared) })
}

/// One metric family per bridge counter: (name, type, help, values by bridge).
pub(crate) type MetricFamily = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// The `sagitta_bridge_*` metric families (none without bridges).
pub(crate) fn metric_families(shared: &Shared) -> Vec<MetricFamily> {
    let all = statuses(shared);
    if all.is_empty() {
        return Vec::new();
    }
    let family = |f: fn(&BridgeStatus) -> u64| -> Vec<(String, u64)> {
        all.iter().map(|s| (s.name.clone(), f(s))).collect()
    };
    vec![
        (
            "sagitta_bridge_connected",
            "gauge",
            "1 while the bridge is connected to its remote broker.",
            family(|s| u64::from(s.connected)),
        ),
        (
            "sagitta_bridge_queued_messages",
            "gauge",
            "Messages for the remote waiting in the bridge's local queue.",
            family(|s| s.queued),
        ),
        (
            "sagitta_bridge_inflight_messages",
            "gauge",
            "Messages for the remote not yet acknowledged by it.",
            family(|s| s.inflight),
        ),
        (
            "sagitta_bridge_sent_total",
            "counter",
            "Messages forwarded to the remote broker.",
            family(|s| s.sent),
        ),
        (
            "sagitta_bridge_received_total",
            "counter",
            "Messages forwarded from the remote broker.",
            family(|s| s.received),
        ),
        (
            "sagitta_bridge_dropped_total",
            "counter",
            "Messages the bridge dropped (queue full, or refused by a broker).",
            family(|s| s.dropped),
        ),
        (
            "sagitta_bridge_reconnects_total",
            "counter",
            "Connections to the remote broker after the first.",
            family(|s| s.reconnects),
        ),
    ]
}

/// The `$SYS/broker/bridge/<name>/...` values: (topic below `$SYS/broker/`, value).
pub(crate) fn sys_values(shared: &Shared) -> Vec<(String, String)> {
    let mut values = Vec::new();
    for s in statuses(shared) {
        let p = format!("bridge/{}", s.name);
        values.push((format!("{p}/connected"), u8::from(s.connected).to_string()));
        values.push((format!("{p}/remote"), s.remote.clone().unwrap_or_default()));
        values.push((format!("{p}/queued"), s.queued.to_string()));
        values.push((format!("{p}/inflight"), s.inflight.to_string()));
        values.push((format!("{p}/sent"), s.sent.to_string()));
        values.push((format!("{p}/received"), s.received.to_string()));
        values.push((format!("{p}/dropped"), s.dropped.to_string()));
        values.push((format!("{p}/reconnects"), s.reconnects.to_string()));
        values.push((
            format!("{p}/last_error"),
            s.last_error.clone().unwrap_or_default(),
        ));
    }
    values
}

/// A topic rule, parsed.
struct Rule {
    out: bool,
    into: bool,
    local: TopicFilter,
    remote: TopicFilter,
    qos: QoS,
    local_prefix: String,
    remote_prefix: String,
}

/// Maps a topic from one side's prefix to the other's.
fn remap(topic: &str, from: &str, to: &str) -> Option<TopicName> {
    let rest = topic.strip_prefix(from)?;
    TopicName::new(format!("{to}{rest}")).ok()
}

struct Rules(Vec<Rule>);

impl Rules {
    fn new(config: &BridgeConfig) -> Self {
        let rules = config
            .topics
            .iter()
            .filter_map(|r| {
                // Checked by `Config::validate`.
                let local = TopicFilter::new(r.local_filter()).ok()?;
                let remote = TopicFilter::new(r.remote_filter()).ok()?;
                Some(Rule {
                    out: r.direction.out(),
                    into: r.direction.is_in(),
                    local,
                    remote,
                    qos: r.qos_level(),
                    local_prefix: r.local_prefix.clone(),
                    remote_prefix: r.remote_prefix.clone(),
                })
            })
            .collect();
        Self(rules)
    }

    /// The remote topic of a local message, by the first `out` rule it matches.
    fn to_remote(&self, topic: &str) -> Option<TopicName> {
        self.0
            .iter()
            .filter(|r| r.out && r.local.matches(topic))
            .find_map(|r| remap(topic, &r.local_prefix, &r.remote_prefix))
    }

    /// The local topic of a remote message, by the first `in` rule it matches.
    fn to_local(&self, topic: &str) -> Option<TopicName> {
        self.0
            .iter()
            .filter(|r| r.into && r.remote.matches(topic))
            .find_map(|r| remap(topic, &r.remote_prefix, &r.local_prefix))
    }

    /// The subscription of one side: No Local, Retain As Published, retained messages only
    /// for a new subscription.
    fn subscriptions(&self, local: bool) -> Vec<(TopicFilter, SubscriptionOptions)> {
        self.0
            .iter()
            .filter(|r| if local { r.out } else { r.into })
            .map(|r| {
                let filter = if local { &r.local } else { &r.remote };
                let options = SubscriptionOptions {
                    qos: r.qos,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                };
                (filter.clone(), options)
            })
            .collect()
    }
}

/// A local message on its way to the remote broker.
struct Out {
    topic: TopicName,
    message: sagitta_client::Message,
    ack: Option<Ack>,
}

impl Out {
    fn options(&self) -> PublishOptions {
        PublishOptions::new()
            .qos(self.message.qos)
            .retain(self.message.retain)
            .properties(self.message.properties.clone())
    }
}

/// A remote message published locally, waiting for this broker's acknowledgement.
struct In {
    ack: Option<Ack>,
    /// The remote connection it came over.
    connection: u64,
    done: PendingPublish,
}

/// The end of one connection attempt.
struct Attempt {
    addr: String,
    private: bool,
    result: Result<Client, ConnectError>,
}

/// A connection attempt, as a task of its own (aborted if the bridge stops first).
type Connecting = tokio::task::JoinHandle<Attempt>;

/// What the bridge loop reacts to.
enum Event {
    Shutdown,
    Local(Option<(sagitta_client::Message, Option<Ack>)>),
    OutDone(Result<(), ClientError>),
    Remote(Option<(sagitta_client::Message, Option<Ack>)>),
    InDone(Result<(), ClientError>),
    /// The remote client's status changed (connected again, reconnecting, closed).
    RemoteStatus(Status),
    Attempt(Result<Attempt, tokio::task::JoinError>),
}

/// Whether a failed publish is final (the broker refused that message) rather than the
/// connection's end (send it again on the next one).
fn refused(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::PublishRefused { .. }
            | ClientError::NotAuthorized { .. }
            | ClientError::PacketTooLarge { .. }
            | ClientError::QoSNotSupported { .. }
            | ClientError::RetainNotSupported
            | ClientError::InvalidTopic(_)
            | ClientError::Encode(_)
    )
}

/// Starts the bridges of the configuration as tasks of the broker.
pub(crate) fn start(shared: &Arc<Shared>, listener: &Arc<Listener>) {
    for (config, state) in shared.config.bridges.iter().zip(shared.bridges.iter()) {
        let span = info_span!("bridge", name = %config.name);
        let task = run(
            shared.clone(),
            listener.clone(),
            config.clone(),
            state.clone(),
        );
        shared.tracker.spawn(task.instrument(span));
    }
}

async fn run(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    config: BridgeConfig,
    state: Arc<BridgeState>,
) {
    let local = tokio::select! {
        local = connect_local(&shared, &listener, &config) => local,
        () = shared.shutdown.cancelled() => return,
    };
    let local = match local {
        Ok(local) => local,
        Err(e) => {
            warn!(error = %e, "bridge not started");
            state.set_error(&e);
            return;
        }
    };
    let tls = match tls_options(&config) {
        Ok(tls) => tls,
        Err(e) => {
            warn!(error = %e, "bridge not started");
            state.set_error(&e);
            let _ = local.disconnect().await;
            return;
        }
    };
    let mut bridge = Bridge {
        rules: Rules::new(&config),
        config,
        tls,
        state,
        local,
        remote: None,
        remote_status: None,
        remote_up: false,
        remote_addr: String::new(),
        seen_connections: 0,
        remote_connection: 0,
        connecting: None,
        next_addr: 0,
        failures: 0,
        private: true,
        waiting: VecDeque::new(),
        out_flight: VecDeque::new(),
        in_flight: VecDeque::new(),
        ever_connected: false,
    };
    bridge.private = bridge.config.try_private;
    bridge.schedule(Duration::ZERO);
    bridge.run(&shared).await;
}

/// The local session: MQTT 5.0 over an in-process stream served by this broker.
async fn connect_local(
    shared: &Arc<Shared>,
    listener: &Arc<Listener>,
    config: &BridgeConfig,
) -> Result<Client, BridgeError> {
    let limit = config
        .max_queued
        .unwrap_or(shared.config.max_queued_messages);
    let (sh, l) = (shared.clone(), listener.clone());
    let connector = Connector(Arc::new(move || {
        let up = !sh.shutdown.is_cancelled();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        if up {
            crate::listener::serve_internal(&sh, theirs, &l, limit);
        }
        Box::pin(async move {
            if up {
                Ok(Box::new(ours) as BoxedStream)
            } else {
                Err(std::io::Error::other("the broker is shutting down"))
            }
        })
    }));
    let inflight = config.inflight();
    let id = local_client_id(&config.name);
    let client = Client::builder("in-process:0")
        .client_id(id)
        .protocol(ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry(Duration::from_secs(u64::from(u32::MAX)))
        .keep_alive(Duration::from_secs(60))
        .receive_maximum(inflight)
        .max_inflight(inflight)
        .message_capacity(usize::from(inflight) + 1024)
        .topic_aliases(false)
        .manual_acks(true)
        .reconnect(ReconnectPolicy::exponential(
            Duration::from_millis(50),
            Duration::from_secs(2),
        ))
        .connector(connector)
        .connect()
        .await
        .map_err(BridgeError::Local)?;
    let wanted = Rules::new(config).subscriptions(true);
    // Subscriptions the persistent session kept from rules no longer configured.
    let local_id = local_client_id(&config.name);
    let stale: Vec<String> = shared
        .router
        .list(|c, _| c == local_id)
        .into_iter()
        .map(|s| s.filter)
        .filter(|f| !wanted.iter().any(|(w, _)| w.as_str() == f))
        .collect();
    if !stale.is_empty() {
        info!(filters = ?stale, "removing local subscriptions of rules no longer configured");
        if let Err(e) = client
            .unsubscribe_many(stale.iter().map(String::as_str))
            .await
        {
            warn!(error = %e, "cannot remove stale local subscriptions");
        }
    }
    for (filter, options) in wanted {
        let refused = |reason: String| BridgeError::LocalSubscribe {
            filter: filter.to_string(),
            reason,
        };
        let ack = client
            .subscribe_with(Subscription::with_options(filter.clone(), options))
            .await
            .map_err(|e| refused(e.to_string()))?;
        match ack.reasons.first() {
            Some(r) if r.is_success() => {}
            other => {
                return Err(refused(
                    other
                        .copied()
                        .unwrap_or(ReasonCode::UnspecifiedError)
                        .to_string(),
                ));
            }
        }
    }
    Ok(client)
}

fn tls_options(config: &BridgeConfig) -> Result<Option<TlsOptions>, BridgeError> {
    if !config.tls {
        return Ok(None);
    }
    let mut tls = match (&config.ca_file, config.insecure) {
        (_, true) => TlsOptions::insecure(),
        (Some(ca), false) => TlsOptions::ca_file(ca),
        (None, false) => TlsOptions::system_roots(),
    };
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        tls = tls.client_cert(cert, key);
    }
    if let Some(name) = &config.server_name {
        tls = tls.server_name(name);
    }
    Ok(Some(tls))
}

/// Waits on `f` if there is one, forever otherwise.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Waits for the front publish of `queue` to complete (forever if empty).
async fn front<T>(
    queue: &mut VecDeque<T>,
    done: impl Fn(&mut T) -> &mut PendingPublish,
) -> Result<(), ClientError> {
    match queue.front_mut() {
        Some(item) => done(item).await,
        None => std::future::pending().await,
    }
}

struct Bridge {
    config: BridgeConfig,
    rules: Rules,
    tls: Option<TlsOptions>,
    state: Arc<BridgeState>,
    local: Client,
    /// The client of the current remote address; it reconnects by itself.
    remote: Option<Client>,
    /// Its status changes.
    remote_status: Option<watch::Receiver<Status>>,
    /// Its connection is up (as far as the last status change said).
    remote_up: bool,
    /// Its address.
    remote_addr: String,
    /// Its connections seen so far (the status counts them): reconnects are the difference.
    seen_connections: u32,
    /// Counts remote clients: acknowledgements for an earlier one are not sent (the client
    /// itself drops acknowledgements for an earlier connection of its own).
    remote_connection: u64,
    connecting: Option<Connecting>,
    next_addr: usize,
    /// Failed attempts in a row.
    failures: u32,
    /// Send the 3.1.1 bridge flag (until a remote refuses it).
    private: bool,
    /// QoS 1/2 local messages not sent on the current remote connection, in order.
    waiting: VecDeque<Out>,
    /// Local messages sent to the remote, waiting for its acknowledgement, in order.
    out_flight: VecDeque<(Out, PendingPublish)>,
    /// Remote messages published locally, waiting for this broker's acknowledgement.
    in_flight: VecDeque<In>,
    ever_connected: bool,
}

impl Bridge {
    async fn run(&mut self, shared: &Shared) {
        loop {
            let (local, remote) = (&self.local, &self.remote);
            let (out_flight, in_flight) = (&mut self.out_flight, &mut self.in_flight);
            let connecting = &mut self.connecting;
            let remote_status = &mut self.remote_status;
            let event = tokio::select! {
                () = shared.shutdown.cancelled() => Event::Shutdown,
                m = local.recv_manual() => Event::Local(m),
                r = front(out_flight, |(_, p)| p) => Event::OutDone(r),
                m = async {
                    match remote {
                        Some(r) => r.recv_manual().await,
                        None => std::future::pending().await,
                    }
                } => Event::Remote(m),
                r = front(in_flight, |i| &mut i.done) => Event::InDone(r),
                s = async {
                    match remote_status {
                        Some(rx) => match rx.changed().await {
                            Ok(()) => rx.borrow_and_update().clone(),
                            // Its status can no longer change.
                            Err(_) => std::future::pending().await,
                        },
                        None => std::future::pending().await,
                    }
                } => Event::RemoteStatus(s),
                a = maybe(connecting) => Event::Attempt(a),
            };
            match event {
                Event::Shutdown => break,
                Event::Local(None) => {
                    warn!("the local session closed; bridge stopped");
                    break;
                }
                Event::Local(Some((message, ack))) => self.on_local(message, ack).await,
                Event::OutDone(result) => self.on_out_done(result).await,
                Event::Remote(None) => self.lost(VecDeque::new(), None).await,
                Event::Remote(Some((message, ack))) => self.on_remote(message, ack).await,
                Event::InDone(result) => self.on_in_done(result).await,
                Event::RemoteStatus(status) => self.on_status(status).await,
                Event::Attempt(attempt) => self.on_attempt(attempt).await,
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
        if let Some(connecting) = self.connecting.take() {
            connecting.abort();
        }
        if let Some(remote) = self.remote.take() {
            let _ = remote.disconnect().await;
        }
        let _ = self.local.disconnect().await;
        info!("bridge stopped");
    }

    /// Acknowledges a local message to this broker.
    async fn ack_local(&self, ack: Option<Ack>) {
        if let Some(ack) = ack {
            // Only fails once the local client is closed (shutdown).
            let _ = self.local.ack(ack).await;
        }
    }

    async fn on_local(&mut self, message: sagitta_client::Message, ack: Option<Ack>) {
        let Some(topic) = self.rules.to_remote(&message.topic) else {
            // Of a rule no longer configured (a resumed session): not forwarded.
            debug!(topic = %message.topic, "local message matches no `out` rule");
            self.ack_local(ack).await;
            return;
        };
        let out = Out {
            topic,
            message,
            ack,
        };
        if out.message.qos == QoS::AtMostOnce {
            let sent = match self.up() {
                Some(remote) => remote
                    .start_publish(
                        out.topic.clone(),
                        out.message.payload.clone(),
                        out.options(),
                    )
                    .await
                    .is_ok(),
                None => false,
            };
            BridgeState::count(if sent {
                &self.state.sent
            } else {
                &self.state.dropped
            });
            return;
        }
        if self.up().is_none() || !self.waiting.is_empty() {
            self.waiting.push_back(out);
            return;
        }
        self.send(out).await;
    }

    /// Sends a QoS 1/2 message on the current remote connection (at the remote's maximum
    /// QoS if that is lower).
    async fn send(&mut self, mut out: Out) {
        loop {
            let Some(remote) = self.up() else {
                self.waiting.push_back(out);
                return;
            };
            match remote
                .start_publish(
                    out.topic.clone(),
                    out.message.payload.clone(),
                    out.options(),
                )
                .await
            {
                Ok(done) => self.out_flight.push_back((out, done)),
                Err(ClientError::QoSNotSupported { maximum, .. }) if maximum < out.message.qos => {
                    debug!(topic = %out.topic, %maximum, "the remote's maximum QoS is lower");
                    out.message.qos = maximum;
                    continue;
                }
                Err(e) if refused(&e) => self.drop_out(out, &e).await,
                Err(_) => self.waiting.push_back(out),
            }
            return;
        }
    }

    async fn drop_out(&mut self, out: Out, e: &ClientError) {
        warn!(topic = %out.topic, error = %e, "the remote broker refused a message; dropped");
        BridgeState::count(&self.state.dropped);
        self.ack_local(out.ack).await;
    }

    async fn on_out_done(&mut self, result: Result<(), ClientError>) {
        let Some((out, _)) = self.out_flight.pop_front() else {
            return;
        };
        match result {
            Ok(()) => {
                BridgeState::count(&self.state.sent);
                self.ack_local(out.ack).await;
            }
            Err(e) if refused(&e) => self.drop_out(out, &e).await,
            // The connection ended: sent again on the next one, before anything else.
            Err(e) => self.lost(VecDeque::from([out]), Some(e)).await,
        }
    }

    async fn on_remote(&mut self, message: sagitta_client::Message, ack: Option<Ack>) {
        let Some(topic) = self.rules.to_local(&message.topic) else {
            debug!(topic = %message.topic, "remote message matches no `in` rule");
            if let (Some(ack), Some(remote)) = (ack, &self.remote) {
                let _ = remote.ack(ack).await;
            }
            return;
        };
        let options = PublishOptions::new()
            .qos(message.qos)
            .retain(message.retain)
            .properties(message.properties);
        match self
            .local
            .start_publish(topic, message.payload, options)
            .await
        {
            Ok(done) => self.in_flight.push_back(In {
                ack,
                connection: self.remote_connection,
                done,
            }),
            Err(e) => {
                warn!(error = %e, "cannot publish a remote message locally; dropped");
                BridgeState::count(&self.state.dropped);
                if let (Some(ack), Some(remote)) = (ack, &self.remote) {
                    let _ = remote.ack(ack).await;
                }
            }
        }
    }

    async fn on_in_done(&mut self, result: Result<(), ClientError>) {
        let Some(item) = self.in_flight.pop_front() else {
            return;
        };
        match result {
            Ok(()) => BridgeState::count(&self.state.received),
            Err(e) => {
                warn!(error = %e, "this broker refused a remote message; dropped");
                BridgeState::count(&self.state.dropped);
            }
        }
        if let (Some(ack), Some(remote)) = (item.ack, &self.remote)
            && item.connection == self.remote_connection
        {
            let _ = remote.ack(ack).await;
        }
    }

    /// The remote client, if its connection is up.
    fn up(&self) -> Option<&Client> {
        self.remote.as_ref().filter(|_| self.remote_up)
    }

    /// The remote client's status changed. Reconnects (and resuming the session) are the
    /// client's: the bridge follows them for its status, sends what waited once connected
    /// again, and takes over (fail-over) only once the client is closed.
    async fn on_status(&mut self, status: Status) {
        match status.state {
            State::Connected => {
                let new = status.connections.saturating_sub(self.seen_connections);
                if new == 0 {
                    return;
                }
                self.seen_connections = status.connections;
                for _ in 0..new {
                    BridgeState::count(&self.state.reconnects);
                }
                if status.session_present {
                    info!("bridge reconnected to the remote broker; session resumed");
                } else {
                    // The client published what the remote had not acknowledged again as
                    // new messages (a QoS 2 one may arrive twice) and restored the
                    // subscriptions.
                    warn!(
                        "bridge reconnected, but the remote broker had lost the session: \
                         unacknowledged messages are published again"
                    );
                }
                self.remote_up = true;
                self.state.connected.store(true, Ordering::Relaxed);
                self.send_waiting().await;
            }
            State::Reconnecting => {
                // Why the connection was lost (the client's failed attempts are not told).
                let why = status
                    .last_error
                    .map_or_else(|| "connection lost".to_owned(), |e| e.to_string());
                if self.remote_up {
                    warn!(error = %why, "bridge disconnected from the remote broker; reconnecting");
                } else {
                    debug!(error = %why, "reconnecting to the remote broker");
                }
                let addr = self.remote_addr.as_str();
                self.state.set_error(format!("{addr}: {why}"));
                self.remote_up = false;
                self.state.connected.store(false, Ordering::Relaxed);
            }
            State::Closed => self.lost(VecDeque::new(), status.last_error).await,
        }
    }

    /// Sends what waited for the remote connection, in order.
    async fn send_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        if !waiting.is_empty() {
            info!(
                count = waiting.len(),
                "sending what waited for the remote broker"
            );
        }
        for out in waiting {
            self.send(out).await;
        }
    }

    /// The remote client is closed (its reconnects failed, or it was refused for good): what
    /// it did not acknowledge (`first`, then the rest in flight, then what waited) goes out
    /// on the next client, in order, as new messages (a new client has a new session).
    async fn lost(&mut self, first: VecDeque<Out>, error: Option<ClientError>) {
        let Some(remote) = self.remote.take() else {
            self.waiting = first.into_iter().chain(self.waiting.drain(..)).collect();
            return;
        };
        self.remote_status = None;
        self.remote_up = false;
        // Its reconnects to this address ran out: the next address, if there is one.
        let fail_over = matches!(error, Some(ClientError::Reconnect(_)));
        let why = error.map_or_else(|| "connection closed".to_owned(), |e| e.to_string());
        warn!(error = %why, "bridge disconnected from the remote broker");
        self.state.connected.store(false, Ordering::Relaxed);
        self.state.set_error(format!("{}: {why}", self.remote_addr));
        // Closes the client if it is not yet (a local message failed on it).
        let _ = remote.disconnect().await;
        drop(remote);
        // Every publish of the closed client completes now (acknowledged or failed).
        let mut again = first;
        for (out, done) in std::mem::take(&mut self.out_flight) {
            match done.await {
                Ok(()) => {
                    BridgeState::count(&self.state.sent);
                    self.ack_local(out.ack).await;
                }
                Err(e) if refused(&e) => self.drop_out(out, &e).await,
                Err(_) => again.push_back(out),
            }
        }
        again.extend(self.waiting.drain(..));
        self.waiting = again;
        self.failures = 1;
        if fail_over {
            self.next_addr = (self.next_addr + 1) % self.config.addresses.len().max(1);
        }
        self.schedule(Duration::from_millis(self.config.reconnect_delay_ms));
    }

    /// Starts a connection attempt to the next address after `delay`.
    fn schedule(&mut self, delay: Duration) {
        let count = self.config.addresses.len().max(1);
        let addr = self
            .config
            .addresses
            .get(self.next_addr % count)
            .cloned()
            .unwrap_or_default();
        let private = self.private;
        let builder = self.remote_builder(&addr, private);
        if let Some(previous) = self.connecting.take() {
            previous.abort();
        }
        self.connecting = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            debug!(%addr, "connecting to the remote broker");
            let result = builder.connect().await;
            Attempt {
                addr,
                private,
                result,
            }
        }));
    }

    fn remote_builder(&self, addr: &str, private: bool) -> ClientBuilder {
        let c = &self.config;
        let v5 = c.protocol == BridgeProtocol::V5;
        let mut b = Client::builder(addr)
            .protocol(if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            })
            .client_id(c.remote_client_id())
            .keep_alive(Duration::from_secs(u64::from(c.keep_alive)))
            .clean_start(c.clean_start)
            .reconnect(self.reconnect_policy())
            .manual_acks(true)
            .bridge(!v5 && private)
            .receive_maximum(c.inflight())
            .max_inflight(c.inflight())
            .message_capacity(usize::from(c.inflight()) + 1024)
            .connect_timeout(Duration::from_secs(10));
        if v5 {
            b = b.session_expiry(Duration::from_secs(u64::from(c.session_expiry)));
        }
        if let Some(user) = &c.username {
            b = match &c.password {
                Some(p) => b.credentials(user.clone(), p.clone().into_bytes()),
                None => b.username(user.clone()),
            };
        }
        if let Some(tls) = &self.tls {
            b = b.tls(tls.clone());
        }
        b
    }

    /// The remote client's own reconnects: the bridge's backoff; with several addresses, at
    /// most [`FAILOVER_AFTER`] failed attempts in a row before failing over.
    fn reconnect_policy(&self) -> ReconnectPolicy {
        let c = &self.config;
        let policy = ReconnectPolicy::exponential(
            Duration::from_millis(c.reconnect_delay_ms),
            Duration::from_millis(c.reconnect_max_delay_ms),
        );
        if c.addresses.len() > 1 {
            policy.max_attempts(FAILOVER_AFTER)
        } else {
            policy
        }
    }

    async fn on_attempt(&mut self, attempt: Result<Attempt, tokio::task::JoinError>) {
        self.connecting = None;
        let Ok(attempt) = attempt else {
            // Not reachable: the task is aborted only when replaced or at the end.
            self.retry();
            return;
        };
        let Attempt {
            addr,
            private,
            result,
        } = attempt;
        let remote = match result {
            Ok(remote) => remote,
            Err(ConnectError::Refused {
                reason: ReasonCode::UnsupportedProtocolVersion,
                ..
            }) if private => {
                info!(%addr, "the remote broker refused the bridge flag; connecting without it");
                self.private = false;
                self.schedule(Duration::ZERO);
                return;
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot connect to the remote broker");
                self.state.set_error(format!("{addr}: {e}"));
                self.retry();
                return;
            }
        };
        if let Err(e) = self.subscribe_remote(&remote).await {
            warn!(%addr, error = %e, "bridge subscription failed");
            self.state.set_error(format!("{addr}: {e}"));
            let _ = remote.disconnect().await;
            self.retry();
            return;
        }
        info!(%addr, session_present = remote.status().session_present, "bridge connected to the remote broker");
        if self.ever_connected {
            BridgeState::count(&self.state.reconnects);
        }
        self.ever_connected = true;
        self.failures = 0;
        self.remote_connection += 1;
        // Changes from now on; the connection may already be lost again (then the client
        // reconnects, and the status says so).
        let mut status = remote.watch_status();
        let now = status.borrow_and_update().clone();
        self.remote_status = Some(status);
        self.seen_connections = 1;
        self.remote_up = false;
        self.remote = Some(remote);
        self.state.set_remote(&addr);
        self.remote_addr = addr;
        match now.state {
            State::Connected if now.connections <= 1 => {
                self.remote_up = true;
                self.state.connected.store(true, Ordering::Relaxed);
                self.send_waiting().await;
            }
            _ => self.on_status(now).await,
        }
    }

    /// The next address, after a growing delay.
    fn retry(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.next_addr = (self.next_addr + 1) % self.config.addresses.len().max(1);
        let initial = self.config.reconnect_delay_ms;
        let shift = self.failures.saturating_sub(1).min(20);
        let delay = initial
            .saturating_mul(1u64 << shift)
            .min(self.config.reconnect_max_delay_ms);
        self.schedule(Duration::from_millis(delay));
    }

    async fn subscribe_remote(&self, remote: &Client) -> Result<(), BridgeError> {
        for (filter, options) in self.rules.subscriptions(false) {
            let ack = remote
                .subscribe_with(Subscription::with_options(filter.clone(), options))
                .await
                .map_err(|source| BridgeError::RemoteSubscribe {
                    filter: filter.to_string(),
                    source,
                })?;
            if let Some(reason) = ack.reasons.first().filter(|r| r.is_error()) {
                // Not fatal: the other rules still work. Said in the status.
                warn!(%filter, %reason, "the remote broker refused a bridge subscription");
                self.state
                    .set_error(format!("remote subscription to {filter} refused: {reason}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::config::{Direction, TopicRule};
    use super::*;

    #[test]
    fn topics_are_remapped_by_prefix() {
        let config = BridgeConfig::new("b", "h:1")
            .topic(TopicRule::new("sensors/#", Direction::Out).prefixes("edge/", "site1/"))
            .topic(TopicRule::new("cmd/+", Direction::In).prefixes("local/", ""))
            .topic(TopicRule::new("both/x", Direction::Both));
        let rules = Rules::new(&config);
        assert_eq!(
            rules.to_remote("edge/sensors/t1").map(|t| t.to_string()),
            Some("site1/sensors/t1".into())
        );
        assert!(rules.to_remote("sensors/t1").is_none());
        assert!(rules.to_remote("local/cmd/a").is_none(), "an `in` rule");
        assert_eq!(
            rules.to_local("cmd/a").map(|t| t.to_string()),
            Some("local/cmd/a".into())
        );
        assert_eq!(
            rules.to_local("both/x").map(|t| t.to_string()),
            Some("both/x".into())
        );
        assert_eq!(
            rules.to_remote("both/x").map(|t| t.to_string()),
            Some("both/x".into())
        );
        let local: Vec<String> = rules
            .subscriptions(true)
            .iter()
            .map(|(f, _)| f.to_string())
            .collect();
        assert_eq!(local, ["edge/sensors/#", "both/x"]);
        assert!(rules.subscriptions(false).iter().all(|(_, o)| o.no_local));
    }

    #[test]
    fn bridge_ids_are_reserved() {
        assert!(is_bridge_id(&local_client_id("x")));
        assert!(!is_bridge_id("bridge/x"));
    }
}
