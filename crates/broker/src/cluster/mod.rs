//! Cluster mode: several Sagitta nodes that behave as one broker, on NATS (JetStream).
//!
//! Each node stays a whole MQTT broker; NATS carries what crosses nodes:
//!
//! - Messages: a PUBLISH received from a local client is routed to the node's own
//!   subscribers at once and published on NATS to `<cluster>.m.<topic tokens>` (see
//!   [`subject`]). A node subscribes on NATS only to the filters its own sessions hold,
//!   counted so that the first subscription of a filter subscribes and the last
//!   unsubscription unsubscribes. The publishing connection does not get its own messages
//!   back (NATS `no_echo`). One node's messages come from one NATS connection, in order;
//!   a message that matches several of a node's subjects (`a/+` and `a/#`) arrives once per
//!   subject and is routed once: messages carry their node's instance and a sequence
//!   number, and a window of recent numbers per instance drops the repeats.
//! - Shared subscriptions: the publishing node does not pick a member of a shared group
//!   itself. Every node with members of `$share/<g>/<f>` subscribes to `<f>`'s subjects in a
//!   NATS queue group named after `(g, f)`, on a second connection (which does get the
//!   node's own messages), so that NATS hands each message to one node of the whole cluster,
//!   which gives it to one of its members.
//! - Retained messages: a JetStream key-value bucket `<cluster>_retained`, one key per topic
//!   (the topic's tokens), written by the node that received the PUBLISH, watched by every
//!   node into its own retained store.
//! - Membership: the bucket `<cluster>_nodes`, where each node writes a heartbeat; entries
//!   older than the bucket's age limit disappear.
//! - `$SYS` topics stay on their node: each node reports its own.

pub(crate) mod config;
mod routes;
mod session;
mod subject;
mod will;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::Shared;
use crate::message::Message;
use crate::store::record::{decode_message, encode_message};
pub use config::{ClusterConfig, StreamStorage};
pub(crate) use session::import as import_session;

/// Why the broker cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server could be reached, or one refused the connection.
    #[error("cannot connect to the NATS servers {servers}: {message}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// The last error.
        message: String,
    },
    /// JetStream is not available or refused to create or open a bucket.
    #[error("cannot open the JetStream bucket {bucket}: {message}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The error.
        message: String,
    },
}

/// A change of the filters this node's sessions hold, for the NATS subscriptions.
#[derive(Debug)]
pub(crate) enum Interest {
    /// A session subscribed to a filter.
    Add(Key),
    /// A session's subscription to a filter is gone.
    Remove(Key),
    /// Answer once the NATS servers have the subscriptions of the changes before.
    Sync(oneshot::Sender<()>),
}

/// What a node subscribes to on NATS: a plain filter, or a shared group's filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A filter (without `$share/`).
    Plain(Box<str>),
    /// A shared subscription: group and filter.
    Group(Box<str>, Box<str>),
}

impl Key {
    /// The key of a router subscription, or `None` for a filter that never matches a
    /// forwarded message (`$SYS/...`, which stays on its node).
    pub fn of(filter: &sagitta_proto::TopicFilter) -> Option<Key> {
        let plain = filter.match_filter();
        if plain.starts_with("$SYS") {
            return None;
        }
        Some(match filter.shared() {
            Some(s) => Key::Group(s.group.into(), plain.into()),
            None => Key::Plain(plain.into()),
        })
    }
}

/// The wire format's version byte: instance (u64), sequence (u64), then the message as the
/// store encodes it.
const WIRE_VERSION: u8 = 1;

/// Messages forwarded but not yet handed to NATS beyond which publishers are not read from
/// until it is back under.
const BACKLOG_LIMIT: usize = 20_000;

/// Sequence numbers remembered per sending instance, for dropping repeats.
const WINDOW_BITS: u64 = 1 << 16;

/// Counters of the cluster link, for `$SYS`, `/metrics` and the admin API.
#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    duplicates: AtomicU64,
    publish_errors: AtomicU64,
    group_misses: AtomicU64,
    subjects: AtomicUsize,
}

/// A cluster member as this node last saw its heartbeat.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Member {
    /// Node name.
    pub node: String,
    /// Random id of the node's process (changes at each start).
    pub instance: u64,
    /// Unix time the node started, in seconds.
    pub started: u64,
    /// Its version.
    pub version: String,
    /// Its connected clients.
    pub clients: u64,
}

/// The node's link to the cluster, shared by its connections.
pub(crate) struct Link {
    config: ClusterConfig,
    instance: u64,
    started: u64,
    /// Publishes and plain subscriptions (`no_echo`), JetStream.
    data: async_nats::Client,
    /// Queue subscriptions of shared groups.
    share: async_nats::Client,
    retained_kv: kv::Store,
    nodes_kv: kv::Store,
    /// Which node owns each client id's session.
    sessions_kv: kv::Store,
    /// The filters every node's sessions hold, and the tree of those that make this node
    /// forward (see `routes`).
    routes_kv: kv::Store,
    remote: std::sync::RwLock<routes::FilterTree>,
    /// Restarts of the stream consumers (see `StreamSource`).
    consumer_epoch: AtomicU64,
    /// The last revision of the routes bucket applied to `remote`.
    applied: tokio::sync::watch::Sender<u64>,
    /// Client ids whose sessions ended here.
    ended: mpsc::UnboundedSender<String>,
    /// The wills of connected clients, by client id.
    wills_kv: kv::Store,
    wills_out: mpsc::UnboundedSender<will::WillOp>,
    /// JetStream, and the stream of QoS 1/2 messages.
    js: jetstream::Context,
    msgs: stream::Stream,
    /// `<cluster>.m` (QoS 0, core NATS).
    prefix: String,
    /// `<cluster>.q` (QoS 1/2, through the stream).
    qprefix: String,
    seq: AtomicU64,
    backlog: AtomicUsize,
    out: mpsc::UnboundedSender<Arc<Message>>,
    retained_out: mpsc::UnboundedSender<RetainedOp>,
    interest: mpsc::UnboundedSender<Interest>,
    receivers: Mutex<Option<Receivers>>,
    stats: Stats,
    members: Mutex<BTreeMap<String, (Member, Instant)>>,
}

struct Receivers {
    ended: mpsc::UnboundedReceiver<String>,
    wills: mpsc::UnboundedReceiver<will::WillOp>,
    out: mpsc::UnboundedReceiver<Arc<Message>>,
    retained: mpsc::UnboundedReceiver<RetainedOp>,
    interest: mpsc::UnboundedReceiver<Interest>,
}

/// A change of a retained message for the cluster's bucket.
enum RetainedOp {
    Set(Arc<Message>),
    Delete(String),
}

impl Link {
    /// Connects to NATS and opens the cluster's buckets (creating them if needed). Tries for
    /// up to `wait` (NATS servers and JetStream may be starting too).
    pub async fn connect(
        config: &ClusterConfig,
        wait: Duration,
    ) -> Result<Arc<Link>, ClusterError> {
        let deadline = Instant::now() + wait;
        let servers = config.servers.join(", ");
        let (data, share) = loop {
            let attempt = async {
                let data = options(config, "data")
                    .no_echo()
                    .connect(config.servers.as_slice())
                    .await?;
                let share = options(config, "share")
                    .connect(config.servers.as_slice())
                    .await?;
                Ok::<_, async_nats::ConnectError>((data, share))
            };
            match attempt.await {
                Ok(pair) => break pair,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClusterError::Connect {
                        servers,
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    debug!(error = %e, "cluster: NATS not reachable yet, retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let mut js = jetstream::new(data.clone());
        // A request to a NATS server that just died is given up soon and made again.
        js.set_timeout(Duration::from_secs(2));
        let open = |suffix: &str, max_age: Duration| {
            let name = format!("{}_{suffix}", config.name);
            let js = &js;
            async move { bucket(js, &name, config.replicas, max_age, deadline).await }
        };
        let retained_kv = open("retained", Duration::ZERO).await?;
        let nodes_kv = open("nodes", config.heartbeat() * 3).await?;
        let sessions_kv = open("sessions", Duration::ZERO).await?;
        let msgs = message_stream(&js, config, deadline).await?;
        let routes_kv = open("routes", Duration::ZERO).await?;
        let wills_kv = open("wills", Duration::ZERO).await?;
        let (wills_out, wills_rx) = mpsc::unbounded_channel();
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (retained_out, retained_rx) = mpsc::unbounded_channel();
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Link {
            config: config.clone(),
            instance: rand::random::<u64>() | 1,
            started: now.as_secs(),
            data,
            share,
            retained_kv,
            nodes_kv,
            sessions_kv,
            routes_kv,
            remote: std::sync::RwLock::new(routes::FilterTree::default()),
            applied: tokio::sync::watch::Sender::new(0),
            consumer_epoch: AtomicU64::new(0),
            ended,
            wills_kv,
            wills_out,
            js,
            msgs,
            prefix: format!("{}.m", config.name),
            qprefix: format!("{}.q", config.name),
            seq: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            out,
            retained_out,
            interest,
            receivers: Mutex::new(Some(Receivers {
                ended: ended_rx,
                wills: wills_rx,
                out: out_rx,
                retained: retained_rx,
                interest: interest_rx,
            })),
            stats: Stats::default(),
            members: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The sender the router reports subscription changes to.
    pub fn interest_sender(&self) -> mpsc::UnboundedSender<Interest> {
        self.interest.clone()
    }

    /// Resolves once the NATS server has this node's subscriptions for every subscription
    /// made so far (at most 2 s: without NATS, SUBACKs are not held up for long).
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.interest.send(Interest::Sync(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }

    /// Hands a message received on this node to the other nodes if one of them wants it
    /// (or a shared group does), and its retained state to the bucket. Returns whether it
    /// went to NATS. Never waits; see [`Link::backlogged`].
    pub fn forward(&self, msg: &Arc<Message>) -> bool {
        if msg.retain {
            let _ = self.retained_out.send(RetainedOp::Set(msg.clone()));
        }
        let wanted = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matches(&msg.topic);
        if !wanted {
            return false;
        }
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.out.send(msg.clone()).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Deletes a retained message cluster-wide (the admin API's delete).
    pub fn retained_deleted(&self, topic: &str) {
        let _ = self.retained_out.send(RetainedOp::Delete(topic.to_owned()));
    }

    /// Whether so many messages wait for NATS that publishers should slow down.
    pub fn backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > BACKLOG_LIMIT
    }

    /// Whether the data connection to NATS is up.
    pub fn connected(&self) -> bool {
        self.data.connection_state() == async_nats::connection::State::Connected
    }

    /// The live members (this node included once its first heartbeat is back), by name.
    pub fn members(&self) -> Vec<Member> {
        let limit = self.config.heartbeat() * 3;
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members
            .values()
            .filter(|(_, seen)| seen.elapsed() <= limit)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The status for `$SYS`, metrics and the admin API.
    pub fn status(&self) -> ClusterStatus {
        let s = &self.stats;
        ClusterStatus {
            node: self.config.node.clone(),
            name: self.config.name.clone(),
            connected: self.connected(),
            server: server_name(&self.data),
            nodes: self.members().into_iter().map(|m| m.node).collect(),
            messages_sent: s.sent.load(Ordering::Relaxed),
            messages_received: s.received.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            bytes_received: s.bytes_received.load(Ordering::Relaxed),
            duplicates_dropped: s.duplicates.load(Ordering::Relaxed),
            publish_errors: s.publish_errors.load(Ordering::Relaxed),
            shared_misses: s.group_misses.load(Ordering::Relaxed),
            subjects: s.subjects.load(Ordering::Relaxed) as u64,
            backlog: self.backlog.load(Ordering::Relaxed) as u64,
        }
    }
}

/// What `$SYS/broker/cluster/...`, the `sagitta_cluster_*` metrics and
/// `GET /api/v1/cluster` show.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    pub node: String,
    pub name: String,
    pub connected: bool,
    pub server: String,
    pub nodes: Vec<String>,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duplicates_dropped: u64,
    pub publish_errors: u64,
    pub shared_misses: u64,
    pub subjects: u64,
    pub backlog: u64,
}

/// The NATS server a client is connected to, as `name (host:port)`.
fn server_name(client: &async_nats::Client) -> String {
    let info = client.server_info();
    format!("{} ({}:{})", info.server_name, info.host, info.port)
}

fn options(config: &ClusterConfig, role: &str) -> async_nats::ConnectOptions {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("sagitta {} {}", config.node, role))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2000))
        });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        o = o.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        o = o.token(token.clone());
    }
    if let Some(ca) = &config.ca_file {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    o
}

/// Opens key-value bucket `name`, creating its stream first if needed. (The stream is
/// created by hand, as a KV bucket's stream: the client's own bucket creation first asks
/// for account details in a form nats-server 2.9 does not give.)
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
    deadline: Instant,
) -> Result<kv::Store, ClusterError> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        discard: stream::DiscardPolicy::New,
        allow_direct: true,
        deny_delete: true,
        allow_rollup: true,
        num_replicas: replicas,
        ..Default::default()
    };
    loop {
        let attempt = async {
            js.get_or_create_stream(config.clone())
                .await
                .map_err(|e| e.to_string())?;
            js.get_key_value(name).await.map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(store) => return Ok(store),
            Err(message) if Instant::now() >= deadline => {
                return Err(ClusterError::Bucket {
                    bucket: name.to_owned(),
                    message,
                });
            }
            Err(message) => {
                debug!(bucket = name, %message, "cluster: JetStream not ready yet, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Opens (or creates) the stream `<cluster>_msgs` that carries QoS 1/2 messages.
async fn message_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    deadline: Instant,
) -> Result<stream::Stream, ClusterError> {
    let max_age = Duration::from_secs(config.stream_max_age_secs);
    let stream_config = stream::Config {
        name: format!("{}_msgs", config.name),
        subjects: vec![format!("{}.q.>", config.name)],
        storage: match config.stream_storage {
            StreamStorage::Memory => stream::StorageType::Memory,
            StreamStorage::File => stream::StorageType::File,
        },
        max_age,
        max_bytes: config.stream_max_bytes,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        num_replicas: config.replicas,
        ..Default::default()
    };
    loop {
        match js.get_or_create_stream(stream_config.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(ClusterError::Bucket {
                    bucket: stream_config.name.clone(),
                    message: e.to_string(),
                });
            }
            Err(e) => {
                debug!(error = %e, "cluster: JetStream not ready yet, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Starts the link's tasks for `shared` (which holds it): forwarding, NATS subscriptions,
/// delivery of what arrives, the retained bucket and the heartbeat. Returns once the
/// retained messages already in the cluster are in the node's store (or after `wait`).
pub(crate) async fn start(shared: &Arc<Shared>, wait: Duration) {
    let Some(link) = shared.cluster.clone() else {
        return;
    };
    let taken = link
        .receivers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(rx) = taken else {
        return;
    };
    let (inbound, inbound_rx) = mpsc::unbounded_channel();
    let cancel = shared.shutdown.clone();
    let tracker = &shared.tracker;
    // The records of a previous run go before this run's are written.
    let _ = tokio::time::timeout(wait, routes::clear_own(&link)).await;
    tracker.spawn(forward_loop(link.clone(), rx.out, cancel.clone()));
    tracker.spawn(retained_writer(link.clone(), rx.retained, cancel.clone()));
    tracker.spawn(interest_loop(
        link.clone(),
        rx.interest,
        inbound,
        cancel.clone(),
    ));
    tracker.spawn(deliver_loop(shared.clone(), link.clone(), inbound_rx));
    tracker.spawn(heartbeat_loop(shared.clone(), link.clone()));
    tracker.spawn(members_loop(link.clone(), cancel.clone()));
    tracker.spawn(session::serve_takes(shared.clone(), link.clone()));
    tracker.spawn(routes::serve_sync(shared.clone(), link.clone()));
    tracker.spawn(consumer_watchdog(link.clone(), cancel.clone()));
    tracker.spawn(session::reconcile(shared.clone(), link.clone()));
    tracker.spawn(session::ended_loop(link.clone(), rx.ended, cancel.clone()));
    tracker.spawn(will::writer(link.clone(), rx.wills, cancel.clone()));
    tracker.spawn(will::reaper(shared.clone(), link.clone()));
    // The retained messages already in the cluster come first: no client of this node sees
    // a partial set.
    let (loaded_tx, loaded_rx) = oneshot::channel();
    tracker.spawn(retained_watch(shared.clone(), link.clone(), loaded_tx));
    let (routes_tx, routes_rx) = oneshot::channel();
    tracker.spawn(routes::watch(shared.clone(), link.clone(), routes_tx));
    if tokio::time::timeout(wait, loaded_rx).await.is_err() {
        warn!("cluster: the retained messages are still loading; serving meanwhile");
    }
    if tokio::time::timeout(wait, routes_rx).await.is_err() {
        warn!("cluster: the other nodes' subscriptions are still loading; serving meanwhile");
    }
    info!(
        node = %link.config.node,
        cluster = %link.config.name,
        server = %server_name(&link.data),
        "cluster: joined"
    );
}

async fn forward_loop(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<Arc<Message>>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(1024);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The batch's QoS 1/2 messages: subject, wire bytes, JetStream message id.
    let mut durable: Vec<(String, Bytes, String)> = Vec::new();
    let mut last_error: Option<Instant> = None;
    // At shutdown it goes on for a moment, so that the wills the closing connections
    // publish reach the other nodes.
    let mut until = None;
    loop {
        let n = if cancel.is_cancelled() {
            let until =
                *until.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(3));
            let wait =
                tokio::time::timeout(Duration::from_millis(300), rx.recv_many(&mut batch, 1024));
            match tokio::time::timeout_at(until, wait).await {
                Ok(Ok(n)) => n,
                _ => break,
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, 1024) => n,
                _ = cancel.cancelled() => continue,
            }
        };
        if n == 0 {
            break;
        }
        for msg in batch.drain(..) {
            let seq = link.seq.fetch_add(1, Ordering::Relaxed) + 1;
            buf.put_u8(WIRE_VERSION);
            buf.put_u64(link.instance);
            buf.put_u64(seq);
            encode_message(&msg, &mut buf);
            let payload = buf.split().freeze();
            let len = payload.len() as u64;
            link.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
            link.stats.sent.fetch_add(1, Ordering::Relaxed);
            if msg.qos != sagitta_proto::QoS::AtMostOnce {
                let subject = subject::topic_subject(&link.qprefix, &msg.topic);
                durable.push((subject, payload, format!("{:x}-{seq}", link.instance)));
                continue;
            }
            let subject = subject::topic_subject(&link.prefix, &msg.topic);
            if let Err(e) = link.data.publish(subject, payload).await {
                link.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last_error = Some(Instant::now());
                    warn!(error = %e, "cluster: a QoS 0 message could not be handed to NATS");
                }
            }
        }
        store_durable(&link, &mut durable, &cancel).await;
        link.backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Publishes QoS 1/2 messages to the stream, all before waiting for the acknowledgements,
/// and publishes again those that got none (a NATS server died, JetStream is electing a
/// leader) until every one is stored; the message ids make JetStream drop the repeats.
async fn store_durable(
    link: &Link,
    durable: &mut Vec<(String, Bytes, String)>,
    cancel: &CancellationToken,
) {
    let mut failures = 0u32;
    while !durable.is_empty() {
        let mut acks = Vec::with_capacity(durable.len());
        for (subject, payload, id) in durable.iter() {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(id.as_str());
            acks.push(link.js.send_publish(subject.clone(), publish).await);
        }
        let mut stored = vec![false; durable.len()];
        let mut error = None;
        for (i, ack) in acks.into_iter().enumerate() {
            match ack {
                Ok(future) => match future.await {
                    Ok(_) => stored[i] = true,
                    Err(e) => error = Some(e.to_string()),
                },
                Err(e) => error = Some(e.to_string()),
            }
        }
        let mut i = 0;
        durable.retain(|_| {
            i += 1;
            !stored[i - 1]
        });
        if let Some(error) = error.filter(|_| !durable.is_empty()) {
            if failures.is_multiple_of(10) {
                warn!(messages = durable.len(), %error, "cluster: QoS 1/2 messages not stored by JetStream yet; retrying");
            }
            failures += 1;
            link.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

async fn retained_writer(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<RetainedOp>,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = cancel.cancelled() => break,
        };
        let Some(op) = op else { break };
        let (topic, value) = match op {
            RetainedOp::Set(msg) if !msg.payload.is_empty() => {
                encode_message(&msg, &mut buf);
                (msg.topic.to_string(), Some(buf.split().freeze()))
            }
            RetainedOp::Set(msg) => (msg.topic.to_string(), None),
            RetainedOp::Delete(topic) => (topic, None),
        };
        let key = subject::topic_tokens(&topic);
        // Retried until it is written (JetStream may be electing a leader), in order.
        let kv = &link.retained_kv;
        let _ = persist("retained message", &cancel, || async {
            match &value {
                Some(v) => kv
                    .put(key.as_str(), v.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => kv.delete(key.as_str()).await.map_err(|e| e.to_string()),
            }
        })
        .await;
    }
}

/// Runs `op` until it succeeds or the broker stops, waiting longer after each failure (up
/// to 2 s). The first failure and every tenth after it are logged.
async fn persist<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    info!(
                        what,
                        failures, "cluster: written to JetStream after retrying"
                    );
                }
                return Some(v);
            }
            Err(error) => {
                if failures.is_multiple_of(10) {
                    warn!(what, %error, "cluster: JetStream write failed; retrying");
                }
                failures += 1;
                let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    }
}

/// A message from NATS, with the subscription it came through.
struct Inbound {
    payload: Bytes,
    via: Arc<Key>,
}

async fn interest_loop(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<Interest>,
    inbound: mpsc::UnboundedSender<Inbound>,
    cancel: CancellationToken,
) {
    let mut held: HashMap<Key, (usize, CancellationToken)> = HashMap::new();
    // The last route written, and the last one the other nodes confirmed.
    let (mut written, mut confirmed) = (0u64, 0u64);
    loop {
        let change = tokio::select! {
            c = rx.recv() => c,
            _ = cancel.cancelled() => break,
        };
        let Some(change) = change else { break };
        match change {
            Interest::Add(key) => {
                if let Some((count, _)) = held.get_mut(&key) {
                    *count += 1;
                    continue;
                }
                let stop = cancel.child_token();
                let subjects = subscribe(&link, &key, &inbound, &stop).await;
                link.stats.subjects.fetch_add(subjects, Ordering::Relaxed);
                let (record, value) = (
                    routes::record_key(&link.config.node, &key),
                    routes::record_value(&key),
                );
                let kv = &link.routes_kv;
                let revision = persist("route", &cancel, || async {
                    kv.put(record.as_str(), value.clone())
                        .await
                        .map_err(|e| e.to_string())
                })
                .await;
                written = written.max(revision.unwrap_or(0));
                held.insert(key, (1, stop));
            }
            Interest::Remove(key) => {
                let Some((count, _)) = held.get_mut(&key) else {
                    continue;
                };
                *count -= 1;
                if *count == 0
                    && let Some((_, stop)) = held.remove(&key)
                {
                    stop.cancel();
                    let record = routes::record_key(&link.config.node, &key);
                    let kv = &link.routes_kv;
                    let _ = persist("route", &cancel, || async {
                        kv.delete(record.as_str()).await.map_err(|e| e.to_string())
                    })
                    .await;
                }
            }
            Interest::Sync(done) => {
                let _ = tokio::join!(link.data.flush(), link.share.flush());
                if written > confirmed {
                    routes::await_peers(&link, written).await;
                    confirmed = written;
                }
                let _ = done.send(());
            }
        }
    }
}

/// Subscribes to `key`'s subjects, each pumped into `inbound` by a task of its own until
/// `stop`. Returns how many subjects.
async fn subscribe(
    link: &Arc<Link>,
    key: &Key,
    inbound: &mpsc::UnboundedSender<Inbound>,
    stop: &CancellationToken,
) -> usize {
    let (filter, queue) = match key {
        Key::Plain(f) => (f, None),
        Key::Group(g, f) => (f, Some(queue_name(g, f))),
    };
    let via = Arc::new(key.clone());
    let mut n = 0;
    let core = subject::filter_subjects(&link.prefix, filter);
    let durable = subject::filter_subjects(&link.qprefix, filter);
    // QoS 0 from core NATS; QoS 1/2 from the stream for plain subscriptions (an ordered
    // consumer per subject: a gap, as when the node moves to another NATS server, makes it
    // start again from the last message it had) and from core NATS queue groups for shared
    // ones (NATS picks the node).
    let mut pumps: Vec<(String, MessageSource)> = Vec::new();
    for s in core
        .iter()
        .chain(queue.is_some().then_some(&durable).into_iter().flatten())
    {
        let sub = match &queue {
            None => link.data.subscribe(s.clone()).await,
            Some(q) => link.share.queue_subscribe(s.clone(), q.clone()).await,
        };
        match sub {
            Ok(sub) => pumps.push((s.clone(), MessageSource::Core(sub))),
            Err(e) => warn!(subject = %s, error = %e, "cluster: cannot subscribe on NATS"),
        }
    }
    if queue.is_none() {
        for s in durable {
            let mut source = StreamSource {
                link: link.clone(),
                subject: s.clone(),
                last: None,
                epoch: 0,
                messages: None,
            };
            // Created now, so that the SUBACK's sync covers it.
            if let Err(e) = source.open().await {
                warn!(subject = %s, error = %e, "cluster: cannot consume the stream of QoS 1/2 messages yet; retrying");
            }
            pumps.push((s, MessageSource::Stream(Box::new(source))));
        }
    }
    for (subject, mut source) in pumps {
        n += 1;
        let (inbound, via, stop, link) = (inbound.clone(), via.clone(), stop.clone(), link.clone());
        tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                tokio::select! {
                    m = source.next() => match m {
                        Some(Ok(payload)) => {
                            if inbound.send(Inbound { payload, via: via.clone() }).is_err() {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            if errors.is_multiple_of(100) {
                                warn!(%subject, error = %e, "cluster: the stream consumer failed; it carries on from its last message");
                            }
                            errors += 1;
                        }
                        None => break,
                    },
                    _ = stop.cancelled() => {
                        if let MessageSource::Core(sub) = &mut source {
                            let _ = sub.unsubscribe().await;
                        }
                        break;
                    }
                }
            }
            link.stats.subjects.fetch_sub(1, Ordering::Relaxed);
        });
    }
    n
}

/// Where a NATS subscription's messages come from.
enum MessageSource {
    Core(async_nats::Subscriber),
    Stream(Box<StreamSource>),
}

impl MessageSource {
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            MessageSource::Core(sub) => sub.next().await.map(|m| Ok(m.payload)),
            MessageSource::Stream(source) => Some(source.next().await),
        }
    }
}

/// Makes every stream consumer of the node start again after its last message when the
/// stream's leader changes or the node's NATS connection moves to another server: the
/// consumers held by a NATS server that died may go silent without telling this side.
async fn consumer_watchdog(link: Arc<Link>, cancel: CancellationToken) {
    let name = format!("{}_msgs", link.config.name);
    let mut seen: Option<(String, String)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => return,
        }
        let Ok(stream) = link.js.get_stream(&name).await else {
            continue;
        };
        // The leader, and the replicas that are online and current: the consumers live on
        // those servers.
        let cluster = stream.cached_info().cluster.as_ref();
        let mut peers: Vec<String> = cluster
            .map(|c| {
                c.replicas
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        peers.sort();
        if let Some(leader) = cluster.and_then(|c| c.leader.clone()) {
            peers.insert(0, leader);
        }
        let now = (peers.join(","), link.data.server_info().server_id);
        if seen.as_ref().is_some_and(|s| *s != now) {
            info!(servers = %now.0, "cluster: the message stream's servers or this node's NATS server changed; its consumers start again");
            link.consumer_epoch.fetch_add(1, Ordering::AcqRel);
        }
        seen = Some(now);
    }
}

/// An ordered push consumer of the QoS 1/2 stream on one subject, from the stream's end
/// when it is made. The client's ordered consumer starts again by itself after a gap it
/// notices; but when a NATS server dies, the consumers it held may go silent without an
/// error on this side. So any consumer's error (a missed heartbeat) makes every consumer
/// of the node start again after the last message it had: nothing is skipped, and repeats
/// are dropped by sequence number on delivery.
struct StreamSource {
    link: Arc<Link>,
    subject: String,
    /// Stream sequence of the last message received (or the stream's last when made).
    last: Option<u64>,
    /// The node's consumer restarts counted when this one was opened.
    epoch: u64,
    messages: Option<jetstream::consumer::push::Ordered>,
}

impl StreamSource {
    async fn open(&mut self) -> Result<(), String> {
        use jetstream::consumer::DeliverPolicy;
        self.epoch = self.link.consumer_epoch.load(Ordering::Acquire);
        let last = match self.last {
            Some(seq) => seq,
            None => {
                let name = format!("{}_msgs", self.link.config.name);
                let stream = self
                    .link
                    .js
                    .get_stream(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                stream.cached_info().state.last_sequence
            }
        };
        let consumer = self
            .link
            .msgs
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.link.data.new_inbox(),
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        self.messages = Some(consumer.messages().await.map_err(|e| e.to_string())?);
        self.last = Some(last);
        Ok(())
    }

    async fn next(&mut self) -> Result<Bytes, String> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.link.consumer_epoch.load(Ordering::Acquire) != self.epoch {
                self.messages = None;
            }
            let Some(messages) = self.messages.as_mut() else {
                if let Err(e) = self.open().await {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Err(e);
                }
                continue;
            };
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(m)) => {
                        if let Ok(info) = m.info() {
                            self.last = Some(info.stream_sequence);
                        }
                        return Ok(m.message.payload);
                    }
                    Some(Err(e)) => {
                        // Every consumer of this node starts again (this one too).
                        self.link.consumer_epoch.fetch_add(1, Ordering::AcqRel);
                        return Err(e.to_string());
                    }
                    None => self.messages = None,
                },
                _ = tick.tick() => {}
            }
        }
    }
}

/// The NATS queue group of shared subscription `$share/<group>/<filter>`: the same on every
/// node, and a valid queue name whatever the group and filter hold.
fn queue_name(group: &str, filter: &str) -> String {
    let mut h = Sha256::new();
    h.update(group.as_bytes());
    h.update([0]);
    h.update(filter.as_bytes());
    let digest = h.finalize();
    let mut name = String::with_capacity(34);
    name.push_str("g-");
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Remembers the sequence numbers seen from each sending instance.
#[derive(Default)]
struct Windows {
    by_instance: HashMap<u64, Window>,
}

struct Window {
    max: u64,
    bits: Box<[u64]>,
    used: Instant,
}

impl Windows {
    /// Whether `(instance, seq)` is seen for the first time (and marks it seen).
    fn first_time(&mut self, instance: u64, seq: u64) -> bool {
        let w = self.by_instance.entry(instance).or_insert_with(|| Window {
            max: 0,
            bits: vec![0; (WINDOW_BITS / 64) as usize].into_boxed_slice(),
            used: Instant::now(),
        });
        w.used = Instant::now();
        if seq > w.max {
            let gap = seq - w.max;
            if gap >= WINDOW_BITS {
                w.bits.fill(0);
            } else {
                for s in w.max + 1..seq {
                    clear(&mut w.bits, s);
                }
            }
            w.max = seq;
            set(&mut w.bits, seq);
            return true;
        }
        if w.max - seq >= WINDOW_BITS {
            // Older than the window: a repeat this late cannot be told apart.
            return false;
        }
        let new = !get(&w.bits, seq);
        set(&mut w.bits, seq);
        new
    }

    /// Forgets instances not heard from for ten minutes (nodes that stopped).
    fn prune(&mut self) {
        self.by_instance
            .retain(|_, w| w.used.elapsed() < Duration::from_secs(600));
    }
}

fn slot(seq: u64) -> (usize, u64) {
    let i = seq % WINDOW_BITS;
    ((i / 64) as usize, 1 << (i % 64))
}

fn set(bits: &mut [u64], seq: u64) {
    let (i, m) = slot(seq);
    bits[i] |= m;
}

fn clear(bits: &mut [u64], seq: u64) {
    let (i, m) = slot(seq);
    bits[i] &= !m;
}

fn get(bits: &[u64], seq: u64) -> bool {
    let (i, m) = slot(seq);
    bits[i] & m != 0
}

/// Splits a message from NATS: instance, sequence and the message.
fn decode_wire(mut payload: Bytes) -> Option<(u64, u64, Message)> {
    if payload.len() < 17 || payload.get_u8() != WIRE_VERSION {
        return None;
    }
    let instance = payload.get_u64();
    let seq = payload.get_u64();
    Some((instance, seq, decode_message(&payload)?))
}

async fn deliver_loop(
    shared: Arc<Shared>,
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
) {
    let mut windows = Windows::default();
    let mut targets = Vec::new();
    let mut pruned = Instant::now();
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for Inbound { payload, via } in batch.drain(..) {
            let len = payload.len() as u64;
            let Some((instance, seq, msg)) = decode_wire(payload) else {
                debug!("cluster: a NATS message that is not ours, ignored");
                continue;
            };
            match &*via {
                Key::Plain(_) => {
                    if instance == link.instance {
                        // This node's own message back from the stream (`no_echo` covers
                        // core NATS only): its subscribers had it when it was published.
                        continue;
                    }
                    if !windows.first_time(instance, seq) {
                        link.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    link.stats.received.fetch_add(1, Ordering::Relaxed);
                    link.stats.bytes_received.fetch_add(len, Ordering::Relaxed);
                    shared.route_remote(Arc::new(msg), &mut targets);
                }
                Key::Group(group, filter) => {
                    link.stats.received.fetch_add(1, Ordering::Relaxed);
                    link.stats.bytes_received.fetch_add(len, Ordering::Relaxed);
                    if !shared.deliver_shared(Arc::new(msg), group, filter) {
                        link.stats.group_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        crate::metrics::flush_local(&shared.metrics);
        if pruned.elapsed() > Duration::from_secs(60) {
            windows.prune();
            pruned = Instant::now();
        }
    }
}

async fn retained_watch(shared: Arc<Shared>, link: Arc<Link>, loaded: oneshot::Sender<()>) {
    let mut loaded = Some(loaded);
    loop {
        let empty = match link.retained_kv.status().await {
            Ok(s) => s.values() == 0,
            Err(_) => false,
        };
        if empty && let Some(tx) = loaded.take() {
            let _ = tx.send(());
        }
        let watch = tokio::select! {
            w = link.retained_kv.watch_with_history(">") => w,
            _ = shared.shutdown.cancelled() => return,
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cluster: cannot watch the retained bucket; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                e = watch.next() => e,
                _ = shared.shutdown.cancelled() => return,
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    warn!(error = %e, "cluster: the retained bucket's watch failed; watching again");
                    break;
                }
                None => break,
            };
            apply_retained(&shared, &entry);
            if entry.delta == 0
                && let Some(tx) = loaded.take()
            {
                let _ = tx.send(());
            }
        }
        // A watch that ends is started again (from the whole bucket: the store is
        // idempotent).
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

fn apply_retained(shared: &Shared, entry: &kv::Entry) {
    let Some(topic) = subject::tokens_topic(&entry.key) else {
        debug!(key = %entry.key, "cluster: a retained key that is not a topic, ignored");
        return;
    };
    match entry.operation {
        kv::Operation::Put => match decode_message(&entry.value) {
            Some(mut msg) if msg.topic.as_str() == topic => {
                msg.retain = true;
                shared.retained.restore(Arc::new(msg));
            }
            _ => debug!(%topic, "cluster: a retained value that is not a message, ignored"),
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            shared.retained.remove(&topic, None);
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, link: Arc<Link>) {
    let mut tick = tokio::time::interval(link.config.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        let me = Member {
            node: link.config.node.clone(),
            instance: link.instance,
            started: link.started,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            clients: shared.metrics.clients_connected.load(Ordering::Relaxed),
        };
        let Ok(value) = serde_json::to_vec(&me) else {
            continue;
        };
        if let Err(e) = link.nodes_kv.put(&link.config.node, value.into()).await {
            debug!(error = %e, "cluster: heartbeat not written");
        }
    }
    // Leaving: the others stop listing this node at once.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        link.nodes_kv.delete(&link.config.node),
    )
    .await;
}

async fn members_loop(link: Arc<Link>, cancel: CancellationToken) {
    loop {
        let watch = tokio::select! {
            w = link.nodes_kv.watch_with_history(">") => w,
            _ = cancel.cancelled() => return,
        };
        if let Ok(mut watch) = watch {
            loop {
                let entry = tokio::select! {
                    e = watch.next() => e,
                    _ = cancel.cancelled() => return,
                };
                let Some(Ok(entry)) = entry else { break };
                let mut members = link.members.lock().unwrap_or_else(|e| e.into_inner());
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(m) = serde_json::from_slice::<Member>(&entry.value) {
                            if m.node == link.config.node && m.instance != link.instance {
                                warn!(node = %m.node, "cluster: another node uses this node's name");
                            }
                            members.insert(entry.key.clone(), (m, Instant::now()));
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        members.remove(&entry.key);
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// `$SYS/broker/cluster/...` values.
pub(crate) fn sys_values(shared: &Shared) -> Vec<(String, String)> {
    let Some(link) = &shared.cluster else {
        return Vec::new();
    };
    let s = link.status();
    vec![
        ("cluster/node".into(), s.node),
        (
            "cluster/connected".into(),
            u8::from(s.connected).to_string(),
        ),
        ("cluster/nodes".into(), s.nodes.len().to_string()),
        ("cluster/members".into(), s.nodes.join(",")),
        ("cluster/messages/sent".into(), s.messages_sent.to_string()),
        (
            "cluster/messages/received".into(),
            s.messages_received.to_string(),
        ),
        ("cluster/bytes/sent".into(), s.bytes_sent.to_string()),
        (
            "cluster/bytes/received".into(),
            s.bytes_received.to_string(),
        ),
    ]
}

/// One metric: name, type, help, value.
pub(crate) type Metric = (&'static str, &'static str, &'static str, u64);

/// The `sagitta_cluster_*` metrics (none without a cluster).
pub(crate) fn metrics(shared: &Shared) -> Vec<Metric> {
    let Some(link) = &shared.cluster else {
        return Vec::new();
    };
    let s = link.status();
    vec![
        (
            "sagitta_cluster_connected",
            "gauge",
            "1 while the node is connected to NATS.",
            u64::from(s.connected),
        ),
        (
            "sagitta_cluster_nodes",
            "gauge",
            "Cluster members with a recent heartbeat, this node included.",
            s.nodes.len() as u64,
        ),
        (
            "sagitta_cluster_messages_sent_total",
            "counter",
            "Messages this node published to the other nodes.",
            s.messages_sent,
        ),
        (
            "sagitta_cluster_messages_received_total",
            "counter",
            "Messages from other nodes routed to this node's subscribers.",
            s.messages_received,
        ),
        (
            "sagitta_cluster_bytes_sent_total",
            "counter",
            "Bytes of messages published to the other nodes.",
            s.bytes_sent,
        ),
        (
            "sagitta_cluster_bytes_received_total",
            "counter",
            "Bytes of messages received from the other nodes.",
            s.bytes_received,
        ),
        (
            "sagitta_cluster_duplicates_dropped_total",
            "counter",
            "Messages that arrived again through another of the node's NATS subscriptions.",
            s.duplicates_dropped,
        ),
        (
            "sagitta_cluster_publish_errors_total",
            "counter",
            "Messages that could not be handed to NATS.",
            s.publish_errors,
        ),
        (
            "sagitta_cluster_shared_misses_total",
            "counter",
            "Shared-subscription messages that found no member left on this node.",
            s.shared_misses,
        ),
        (
            "sagitta_cluster_subjects",
            "gauge",
            "NATS subjects the node subscribes to for its sessions' filters.",
            s.subjects,
        ),
        (
            "sagitta_cluster_backlog",
            "gauge",
            "Messages waiting to be handed to NATS.",
            s.backlog,
        ),
    ]
}

/// The `GET /api/v1/cluster` answer.
pub(crate) fn status_json(shared: &Shared) -> serde_json::Value {
    match &shared.cluster {
        None => serde_json::json!({ "enabled": false }),
        Some(link) => {
            let mut v = serde_json::to_value(link.status()).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("enabled".into(), true.into());
                o.insert(
                    "members".into(),
                    serde_json::to_value(link.members()).unwrap_or_default(),
                );
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_across_interleavings() {
        let mut w = Windows::default();
        assert!(w.first_time(7, 1));
        assert!(w.first_time(7, 3));
        assert!(!w.first_time(7, 1));
        // 2 arrives after 3 (another subscription was behind): still new.
        assert!(w.first_time(7, 2));
        assert!(!w.first_time(7, 2));
        assert!(!w.first_time(7, 3));
        // Another instance has its own numbers.
        assert!(w.first_time(8, 1));
        // A jump past the window forgets everything before it.
        assert!(w.first_time(7, 3 + WINDOW_BITS * 2));
        assert!(!w.first_time(7, 3));
        assert!(w.first_time(7, 4 + WINDOW_BITS * 2));
    }

    #[test]
    fn queue_names_are_stable_and_distinct() {
        assert_eq!(queue_name("g", "a/#"), queue_name("g", "a/#"));
        assert_ne!(queue_name("g", "a/#"), queue_name("g", "a/+"));
        assert_ne!(queue_name("g", "a"), queue_name("ga", ""));
        assert!(
            queue_name("g h.*", "a b")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        );
    }

    #[test]
    fn wire_round_trip() {
        let msg = Message::new(
            sagitta_proto::TopicName::new("a/b".to_owned()).unwrap(),
            Bytes::from_static(b"x"),
            sagitta_proto::QoS::AtLeastOnce,
            true,
        );
        let mut buf = BytesMut::new();
        buf.put_u8(WIRE_VERSION);
        buf.put_u64(5);
        buf.put_u64(9);
        encode_message(&msg, &mut buf);
        let (i, s, m) = decode_wire(buf.freeze()).unwrap();
        assert_eq!(
            (i, s, &*m.topic, &m.payload[..], m.retain),
            (5, 9, "a/b", &b"x"[..], true)
        );
        assert!(decode_wire(Bytes::from_static(b"\x02rest-of-it-here....")).is_none());
    }
}
