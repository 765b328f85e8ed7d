//! What the operators' HTTP endpoints do, apart from HTTP: each function reads or changes
//! the broker's state and returns JSON (or the Prometheus text), or an [`ApiError`] with the
//! status code to answer. The `http` module only parses requests and writes responses.
//!
//! Listing functions copy what they need under short locks (the session registry, one
//! mailbox at a time, the router's read lock) and never hold a lock the publish path waits
//! for while they format; they are meant to run on a blocking thread.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use sagitta_proto::{MqttStr, PublishProperties, QoS, TopicFilter, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::broker::Shared;
use crate::message::Message;
use crate::metrics::{HistogramSnapshot, Metrics, Refused};
use crate::session::{KickReason, NEVER_EXPIRES, SessionEntry};
use crate::store::SyncMode;

/// An error answer: an HTTP status and a message for `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
        }
    }
}

pub(crate) type ApiResult = Result<Value, ApiError>;

/// Which part of a list to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub offset: usize,
    pub limit: usize,
}

/// Items per page unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub(crate) const MAX_LIMIT: usize = 10_000;

impl Default for Page {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Page {
    fn slice<'a, T>(&self, items: &'a [T]) -> impl Iterator<Item = &'a T> + use<'a, T> {
        items.iter().skip(self.offset).take(self.limit)
    }
}

// --- clients --------------------------------------------------------------------------

/// One session as the API shows it (without its subscriptions).
fn client_json(entry: &SessionEntry) -> Value {
    let info = entry.info();
    json!({
        "client_id": &*entry.client_id,
        "connected": entry.is_connected(),
        "peer": info.peer.map(|p| p.to_string()),
        "protocol": info.protocol.map(|p| p.to_string()),
        "keep_alive": info.protocol.map(|_| info.keep_alive),
        "username": info.username.as_deref(),
        "inflight": entry.inflight(),
        "queued": entry.queued(),
        "session_expiry": (info.expiry != NEVER_EXPIRES).then_some(info.expiry),
    })
}

/// The order of `GET /api/v1/clients` (`sort`, `desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientSort {
    key: SortKey,
    desc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    ClientId,
    Peer,
    Username,
    Connected,
    Inflight,
    Queued,
}

impl ClientSort {
    /// `sort`: `client_id` (the default), `peer`, `username`, `connected`, `inflight` or
    /// `queued`; ties are in client id order.
    pub fn parse(sort: Option<&str>, desc: bool) -> Result<Self, ApiError> {
        let key = match sort.unwrap_or("client_id") {
            "client_id" => SortKey::ClientId,
            "peer" => SortKey::Peer,
            "username" => SortKey::Username,
            "connected" => SortKey::Connected,
            "inflight" => SortKey::Inflight,
            "queued" => SortKey::Queued,
            other => {
                return Err(ApiError::bad_request(format!(
                    "sort: expected client_id, peer, username, connected, inflight or queued, \
                     got {other:?}"
                )));
            }
        };
        Ok(Self { key, desc })
    }
}

/// `GET /api/v1/clients`: sessions (connected, and disconnected persistent ones) whose
/// client id, address or username contains `search`, sorted by `sort`.
pub(crate) fn list_clients(
    shared: &Shared,
    search: Option<&str>,
    sort: ClientSort,
    page: Page,
) -> Value {
    /// A session and what it is sorted by, read once.
    struct Row {
        entry: Arc<SessionEntry>,
        peer: String,
        user: String,
        connected: bool,
        inflight: u32,
        queued: usize,
    }
    let mut all: Vec<Row> = shared
        .sessions
        .all()
        .into_iter()
        .filter_map(|entry| {
            let info = entry.info();
            let peer = info.peer.map(|p| p.to_string()).unwrap_or_default();
            let user = info.username.as_deref().unwrap_or_default().to_owned();
            let hit = search.is_none_or(|s| {
                entry.client_id.contains(s) || peer.contains(s) || user.contains(s)
            });
            hit.then(|| Row {
                connected: entry.is_connected(),
                inflight: entry.inflight(),
                queued: entry.queued(),
                entry,
                peer,
                user,
            })
        })
        .collect();
    all.sort_unstable_by(|a, b| {
        let by = match sort.key {
            SortKey::ClientId => std::cmp::Ordering::Equal,
            SortKey::Peer => a.peer.cmp(&b.peer),
            SortKey::Username => a.user.cmp(&b.user),
            SortKey::Connected => a.connected.cmp(&b.connected),
            SortKey::Inflight => a.inflight.cmp(&b.inflight),
            SortKey::Queued => a.queued.cmp(&b.queued),
        }
        .then_with(|| a.entry.client_id.cmp(&b.entry.client_id));
        if sort.desc { by.reverse() } else { by }
    });
    let clients: Vec<Value> = page.slice(&all).map(|r| client_json(&r.entry)).collect();
    json!({
        "total": all.len(),
        "offset": page.offset,
        "limit": page.limit,
        "clients": clients,
    })
}

/// `GET /api/v1/clients/{id}`: one session with its subscriptions.
pub(crate) fn get_client(shared: &Shared, client_id: &str) -> ApiResult {
    let entry = shared
        .sessions
        .get(client_id)
        .ok_or_else(|| ApiError::not_found(format!("no client {client_id:?}")))?;
    let mut subs = shared.router.list(|c, _| c == client_id);
    subs.sort_unstable_by(|a, b| a.filter.cmp(&b.filter));
    let mut client = client_json(&entry);
    client["subscriptions"] = subs
        .iter()
        .map(|s| {
            json!({
                "filter": s.filter,
                "qos": s.options.qos as u8,
                "no_local": s.options.no_local,
                "retain_as_published": s.options.retain_as_published,
                "retain_handling": s.options.retain_handling as u8,
                "subscription_id": s.id.map(|id| id.get()),
            })
        })
        .collect();
    Ok(client)
}

/// `DELETE /api/v1/clients/{id}`: disconnects the client (5.0: DISCONNECT 0x98
/// Administrative action; its will is sent) and, with `end_session`, ends its session too
/// (also when no client is connected).
pub(crate) async fn disconnect_client(
    shared: &Arc<Shared>,
    client_id: &str,
    end_session: bool,
) -> ApiResult {
    if shared.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the broker is shutting down"));
    }
    let entry = shared
        .sessions
        .get(client_id)
        .ok_or_else(|| ApiError::not_found(format!("no client {client_id:?}")))?;
    let reason = if end_session {
        KickReason::AdminEndSession
    } else {
        KickReason::Admin
    };
    let disconnected = entry.kick_owner(reason);
    let mut removed = disconnected && end_session;
    if !disconnected && end_session && shared.sessions.remove_idle(&entry) {
        let mut state = entry.state.lock().await;
        shared.clear_session(&entry, &mut state);
        removed = true;
    }
    if disconnected {
        tracing::info!(client_id, end_session, "client disconnected by an operator");
    } else if removed {
        tracing::info!(client_id, "session ended by an operator");
    }
    Ok(json!({
        "client_id": client_id,
        "disconnected": disconnected,
        "session_removed": removed,
    }))
}

// --- subscriptions --------------------------------------------------------------------

/// `GET /api/v1/subscriptions`: every subscription whose filter contains `filter` (an
/// exact filter is its own substring), sorted by client id and filter.
pub(crate) fn list_subscriptions(shared: &Shared, filter: Option<&str>, page: Page) -> Value {
    let mut subs = shared
        .router
        .list(|_, f| filter.is_none_or(|want| f.contains(want)));
    subs.sort_unstable_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
    let items: Vec<Value> = page
        .slice(&subs)
        .map(|s| {
            json!({
                "client_id": &*s.client_id,
                "filter": s.filter,
                "qos": s.options.qos as u8,
            })
        })
        .collect();
    json!({
        "total": subs.len(),
        "offset": page.offset,
        "limit": page.limit,
        "subscriptions": items,
    })
}

// --- retained messages ----------------------------------------------------------------

/// Message properties as JSON, both ways (`POST /api/v1/publish` and the retained list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PropertiesJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expiry_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<String>,
    /// `[["key", "value"], ...]` (keys may repeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

impl PropertiesJson {
    pub(crate) fn from_message(msg: &Message, now: Instant) -> Option<Self> {
        let p = msg.properties.as_deref()?;
        Some(Self {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: msg.remaining_expiry(now),
            content_type: p.content_type.as_ref().map(|s| s.as_str().to_owned()),
            response_topic: p.response_topic.as_ref().map(|s| s.as_str().to_owned()),
            correlation_data: p.correlation_data.as_ref().map(|d| BASE64.encode(d)),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
                .collect(),
        })
    }

    fn into_properties(self) -> Result<PublishProperties, ApiError> {
        let string = |name: &str, s: String| {
            MqttStr::new(s).map_err(|e| ApiError::bad_request(format!("properties.{name}: {e}")))
        };
        let mut p = PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            ..Default::default()
        };
        if let Some(ct) = self.content_type {
            p.content_type = Some(string("content_type", ct)?);
        }
        if let Some(rt) = self.response_topic {
            p.response_topic =
                Some(TopicName::new(rt).map_err(|e| {
                    ApiError::bad_request(format!("properties.response_topic: {e}"))
                })?);
        }
        if let Some(cd) = self.correlation_data {
            let data = BASE64.decode(cd.as_bytes()).map_err(|e| {
                ApiError::bad_request(format!("properties.correlation_data: not base64: {e}"))
            })?;
            p.correlation_data = Some(Bytes::from(data));
        }
        for (k, v) in self.user_properties {
            p.user_properties
                .push((string("user_properties", k)?, string("user_properties", v)?));
        }
        Ok(p)
    }
}

/// A payload as JSON: UTF-8 text as it is, anything else in base64.
fn payload_json(payload: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (text.to_owned(), "text"),
        Err(_) => (BASE64.encode(payload), "base64"),
    }
}

/// `GET /api/v1/retained`: the unexpired retained messages matching `filter`, sorted by
/// topic, at most `limit`.
pub(crate) fn list_retained(shared: &Shared, filter: &str, limit: usize) -> ApiResult {
    let f = TopicFilter::new(filter.to_owned())
        .map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    if f.shared().is_some() {
        return Err(ApiError::bad_request(
            "topic: a shared subscription filter matches no retained message",
        ));
    }
    let now = Instant::now();
    let mut msgs = shared.retained.matching(f.match_filter(), now);
    msgs.sort_unstable_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    let items: Vec<Value> = msgs
        .iter()
        .take(limit)
        .map(|m| {
            let (payload, encoding) = payload_json(&m.payload);
            let mut v = json!({
                "topic": m.topic.as_str(),
                "payload": payload,
                "encoding": encoding,
                "qos": m.qos as u8,
            });
            if let Some(p) = PropertiesJson::from_message(m, now) {
                v["properties"] = serde_json::to_value(p).unwrap_or(Value::Null);
            }
            v
        })
        .collect();
    Ok(json!({
        "total": msgs.len(),
        "limit": limit,
        "retained": items,
    }))
}

/// With `sync = "always"`, waits until what was submitted to the store so far is on disk, as
/// a client's acknowledgement would: the answer then means what a PUBACK means.
async fn durable(shared: &Shared) -> Result<(), ApiError> {
    let Some(store) = shared
        .store
        .as_ref()
        .filter(|s| s.mode() == SyncMode::Always)
    else {
        return Ok(());
    };
    let ticket = store.submitted();
    let mut durable = store.durable();
    while *durable.borrow_and_update() < ticket {
        if store.failed() || durable.changed().await.is_err() {
            break;
        }
    }
    if store.failed() {
        return Err(ApiError::unavailable("the store cannot be written"));
    }
    Ok(())
}

/// `DELETE /api/v1/retained`: deletes the retained message of one topic, from the store too.
pub(crate) async fn delete_retained(shared: &Shared, topic: &str) -> ApiResult {
    if shared.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the broker is shutting down"));
    }
    let t = TopicName::new(topic.to_owned())
        .map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    if !shared.retained.remove(t.as_str(), shared.store.as_ref()) {
        return Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    if let Some(link) = &shared.cluster {
        link.retained_deleted(t.as_str());
    }
    tracing::info!(topic, "retained message deleted by an operator");
    durable(shared).await?;
    Ok(json!({ "topic": topic, "deleted": true }))
}

// --- publish --------------------------------------------------------------------------

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest {
    pub topic: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub encoding: Encoding,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub properties: Option<PropertiesJson>,
}

/// How the payload of a [`PublishRequest`] is written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The payload is the string's UTF-8 bytes.
    #[default]
    Text,
    /// The payload is base64 (standard alphabet, padded).
    Base64,
}

/// `POST /api/v1/publish`: publishes a message as the broker (no client origin), through
/// the normal routing: retained store, persistent sessions, the store. The ACL does not
/// apply; the broker's own limits (QoS, retain, topic levels, packet size) do. With
/// `sync = "always"` it answers once what the message wrote to the store is on disk.
pub(crate) async fn publish(shared: &Shared, body: &[u8]) -> ApiResult {
    if shared.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the broker is shutting down"));
    }
    let req: PublishRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
    let config = &shared.config;
    let topic =
        TopicName::new(req.topic).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    if topic.starts_with("$SYS") {
        return Err(ApiError::bad_request(
            "topic: $SYS topics belong to the broker",
        ));
    }
    if topic.bytes().filter(|b| *b == b'/').count() >= config.max_topic_levels {
        return Err(ApiError::bad_request(format!(
            "topic: more than max_topic_levels ({}) levels",
            config.max_topic_levels
        )));
    }
    let qos = QoS::from_u8(req.qos)
        .filter(|q| *q as u8 <= config.maximum_qos)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "qos: must be 0 to maximum_qos ({})",
                config.maximum_qos
            ))
        })?;
    if req.retain && !config.retain_available {
        return Err(ApiError::bad_request(
            "retain: retained messages are not available (retain_available = false)",
        ));
    }
    let payload = match req.encoding {
        Encoding::Text => Bytes::from(req.payload),
        Encoding::Base64 => Bytes::from(
            BASE64
                .decode(req.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload: not base64: {e}")))?,
        ),
    };
    if payload.len() > config.max_packet_size as usize {
        return Err(ApiError::bad_request(format!(
            "payload: larger than max_packet_size ({} bytes)",
            config.max_packet_size
        )));
    }
    let properties = req
        .properties
        .map(PropertiesJson::into_properties)
        .transpose()?
        .unwrap_or_default();
    if properties.payload_format_indicator == Some(true) && std::str::from_utf8(&payload).is_err() {
        return Err(ApiError::bad_request(
            "payload: not UTF-8, but payload_format_indicator says it is",
        ));
    }
    let mut msg = Message::new(topic, payload, qos, req.retain);
    msg.expires_at = Message::expiry_from_interval(properties.message_expiry_interval);
    msg.properties = Message::boxed_properties(properties);
    let topic = msg.topic.as_str().to_owned();
    let routed = shared.publish(Arc::new(msg), &mut Vec::new());
    // Closed before waiting: the writer takes nothing of an open group.
    drop(routed.group);
    if routed.stored {
        durable(shared).await?;
    }
    tracing::debug!(topic, "message published by an operator");
    Ok(json!({ "topic": topic, "queued_for": routed.queued }))
}

// --- metrics --------------------------------------------------------------------------

/// What the metrics endpoint reads of the sessions, in one pass.
#[derive(Debug, Default)]
struct SessionTotals {
    sessions: u64,
    connected: u64,
    queued: u64,
    inflight: u64,
    /// Sessions by queue depth: at most 0, 1, 10, 100, 1000, 10000 messages, more.
    depths: [u64; QUEUE_DEPTH_BOUNDS.len() + 1],
}

const QUEUE_DEPTH_BOUNDS: [usize; 6] = [0, 1, 10, 100, 1000, 10_000];

fn session_totals(shared: &Shared) -> SessionTotals {
    let mut t = SessionTotals::default();
    for e in shared.sessions.all() {
        let queued = e.queued();
        t.sessions += 1;
        t.connected += u64::from(e.is_connected());
        t.queued += queued as u64;
        t.inflight += u64::from(e.inflight());
        let i = QUEUE_DEPTH_BOUNDS.partition_point(|b| *b < queued);
        if let Some(d) = t.depths.get_mut(i) {
            *d += 1;
        }
    }
    t
}

/// Writes Prometheus text exposition (format 0.0.4).
struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (impl std::fmt::Display, u64)>,
    ) {
        self.header(name, kind, help);
        for (l, v) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.header(name, "histogram", help);
        for (bound, count) in &h.buckets {
            if bound.is_finite() {
                let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {count}");
            } else {
                let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
            }
        }
        let _ = writeln!(self.0, "{name}_sum {}", h.sum_seconds);
        let _ = writeln!(self.0, "{name}_count {}", h.count);
    }
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub(crate) fn metrics_text(shared: &Shared) -> String {
    let m = &shared.metrics;
    let get = Metrics::get;
    let by_qos = |counters: &[std::sync::atomic::AtomicU64; 3]| -> [(usize, u64); 3] {
        [0, 1, 2].map(|q| (q, get(&counters[q])))
    };
    let totals = session_totals(shared);
    let mut out = Exposition(String::with_capacity(8 * 1024));
    out.labelled(
        "sagitta_build_info",
        "gauge",
        "The broker's version.",
        "version",
        [(env!("CARGO_PKG_VERSION"), 1)],
    );
    out.one(
        "sagitta_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        shared.started.elapsed().as_secs(),
    );
    out.one(
        "sagitta_connections",
        "gauge",
        "Clients connected now.",
        get(&m.clients_connected),
    );
    out.one(
        "sagitta_connections_total",
        "counter",
        "Connections accepted (CONNACK with success) since start.",
        get(&m.clients_total),
    );
    out.one(
        "sagitta_connections_maximum",
        "gauge",
        "Most clients connected at once since start.",
        get(&m.clients_maximum),
    );
    out.labelled(
        "sagitta_connections_refused_total",
        "counter",
        "Connections refused before they became clients, by reason.",
        "reason",
        Refused::ALL.map(|r| (r.label(), m.refused_count(r))),
    );
    out.labelled(
        "sagitta_messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
        "qos",
        by_qos(&m.received_by_qos),
    );
    out.labelled(
        "sagitta_messages_sent_total",
        "counter",
        "PUBLISH packets sent to clients, by delivery QoS.",
        "qos",
        by_qos(&m.sent_by_qos),
    );
    out.labelled(
        "sagitta_payload_bytes_received_total",
        "counter",
        "Payload bytes of the PUBLISH packets received, by QoS.",
        "qos",
        by_qos(&m.payload_received_by_qos),
    );
    out.labelled(
        "sagitta_payload_bytes_sent_total",
        "counter",
        "Payload bytes of the PUBLISH packets sent, by delivery QoS.",
        "qos",
        by_qos(&m.payload_sent_by_qos),
    );
    out.one(
        "sagitta_network_bytes_received_total",
        "counter",
        "Bytes read from MQTT clients (all packets).",
        get(&m.bytes_received),
    );
    out.one(
        "sagitta_network_bytes_sent_total",
        "counter",
        "Bytes written to MQTT clients (all packets).",
        get(&m.bytes_sent),
    );
    out.labelled(
        "sagitta_messages_dropped_total",
        "counter",
        "Messages not delivered, by reason.",
        "reason",
        [
            ("queue_full", get(&m.dropped_queue_full)),
            ("offline_qos0", get(&m.dropped_offline)),
            ("too_large", get(&m.dropped_too_large)),
            ("expired", get(&m.dropped_expired)),
        ],
    );
    out.one(
        "sagitta_retained_messages",
        "gauge",
        "Retained messages.",
        shared.retained.len() as u64,
    );
    out.labelled(
        "sagitta_sessions",
        "gauge",
        "Sessions, by whether a client is connected to them.",
        "state",
        [
            ("connected", totals.connected),
            (
                "disconnected",
                totals.sessions.saturating_sub(totals.connected),
            ),
        ],
    );
    out.one(
        "sagitta_subscriptions",
        "gauge",
        "Subscriptions (shared ones counted per member).",
        shared.router.len() as u64,
    );
    out.one(
        "sagitta_queued_messages",
        "gauge",
        "Messages waiting in session queues.",
        totals.queued,
    );
    out.one(
        "sagitta_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent and not yet acknowledged.",
        totals.inflight,
    );
    let mut cumulative = 0;
    let depth_buckets: Vec<(f64, u64)> = totals
        .depths
        .iter()
        .enumerate()
        .map(|(i, n)| {
            cumulative += n;
            let bound = QUEUE_DEPTH_BOUNDS
                .get(i)
                .map_or(f64::INFINITY, |b| *b as f64);
            (bound, cumulative)
        })
        .collect();
    out.histogram(
        "sagitta_session_queue_depth",
        "Sessions by the number of messages in their queue.",
        &HistogramSnapshot {
            buckets: depth_buckets,
            count: totals.sessions,
            sum_seconds: totals.queued as f64,
        },
    );
    out.histogram(
        "sagitta_publish_to_deliver_seconds",
        "Time from a PUBLISH being read to its delivery being written to a subscriber's \
         socket (one message in 64 per worker thread is measured; live deliveries only).",
        &m.publish_latency.snapshot(),
    );
    if let Some(store) = &shared.store {
        out.histogram(
            "sagitta_store_sync_seconds",
            "Time the store took to sync to disk.",
            &store.sync_latency().snapshot(),
        );
        out.one(
            "sagitta_store_backlog",
            "gauge",
            "Changes queued for the store's writer.",
            store.backlog() as u64,
        );
        out.one(
            "sagitta_store_failed",
            "gauge",
            "1 once a store write has failed (persistence stopped).",
            u64::from(store.failed()),
        );
    }
    for (name, kind, help, value) in crate::cluster::metrics(shared) {
        out.one(name, kind, help, value);
    }
    for (name, kind, help, values) in crate::bridge::metric_families(shared) {
        out.labelled(name, kind, help, "bridge", values);
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_text_when_they_can_be() {
        assert_eq!(payload_json(b"21.5"), ("21.5".into(), "text"));
        assert_eq!(payload_json(&[0xff, 0]), ("/wA=".into(), "base64"));
    }

    #[test]
    fn properties_go_both_ways() {
        let json: PropertiesJson = serde_json::from_value(json!({
            "content_type": "text/plain",
            "correlation_data": "AQI=",
            "user_properties": [["k", "v"], ["k", "w"]],
            "message_expiry_interval": 60,
        }))
        .unwrap();
        let p = json.clone().into_properties().unwrap();
        assert_eq!(p.correlation_data.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(p.user_properties.len(), 2);
        let mut msg = Message::new(
            TopicName::new("t").unwrap(),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
        );
        msg.expires_at = Message::expiry_from_interval(Some(60));
        msg.properties = Message::boxed_properties(p);
        let back = PropertiesJson::from_message(&msg, Instant::now()).unwrap();
        assert_eq!(back, json);
        let bad: PropertiesJson =
            serde_json::from_value(json!({"correlation_data": "%%"})).unwrap();
        assert_eq!(bad.into_properties().unwrap_err().status, 400);
        assert!(serde_json::from_value::<PropertiesJson>(json!({"bogus": 1})).is_err());
    }
}
