//! Live data for the web dashboard: a once-a-second sample of the broker's counters (kept
//! for the last [`HISTORY`] seconds, for the overview's charts), topic-explorer taps on the
//! publish path, and the WebSocket at `GET /api/v1/live` that carries both to a browser.
//!
//! Nothing here can slow the broker. A tap is a bounded channel filled with `try_send`: when
//! the browser's task falls behind, messages are dropped and counted. The task itself keeps
//! only the newest [`BATCH`] messages of each quarter second (the rest are counted as
//! sampled out), so a page under 100k msg/s gets at most a few hundred rows a second.
//!
//! The WebSocket carries no token in its URL: the browser's first message is
//! `{"token": "..."}` (checked like the `Authorization` header), and nothing is sent before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_core::Stream;
use futures_sink::Sink;
use hyper_util::rt::TokioIo;
use sagitta_proto::TopicFilter;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::debug;

use crate::admin::PropertiesJson;
use crate::broker::Shared;
use crate::message::Message;
use crate::metrics::Metrics;

/// Seconds of samples kept for the overview's charts.
pub(crate) const HISTORY: usize = 600;
/// Explorer taps open at once (one per dashboard page with a subscription).
pub(crate) const MAX_TAPS: usize = 16;
/// Messages a tap holds for its WebSocket task before it drops (and counts) them.
pub(crate) const TAP_CAPACITY: usize = 1024;
/// Most messages sent to a browser per flush (every [`FLUSH`]); older ones are sampled out.
pub(crate) const BATCH: usize = 100;
/// How often the explorer's messages go to the browser.
pub(crate) const FLUSH: Duration = Duration::from_millis(250);
/// Payload bytes shown per message in the explorer.
pub(crate) const PREVIEW: usize = 2048;
/// Live WebSockets open at once.
pub(crate) const MAX_SOCKETS: usize = 16;
/// Time the browser has to send its token.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one live WebSocket; the page reconnects.
const SOCKET_LIFETIME: Duration = Duration::from_secs(3600);
/// Time one frame may take to be written before the socket is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

// --- taps -------------------------------------------------------------------------------

/// One explorer subscription.
struct Tap {
    id: u64,
    filter: String,
    tx: mpsc::Sender<Arc<Message>>,
    dropped: AtomicU64,
}

/// The explorer subscriptions, offered every message the broker routes. Free (one atomic
/// load) while no dashboard watches.
#[derive(Default)]
pub(crate) struct Taps {
    count: AtomicUsize,
    next_id: AtomicU64,
    taps: RwLock<Vec<Arc<Tap>>>,
}

impl Taps {
    /// Offers `msg` to every tap whose filter matches its topic; never waits.
    #[inline]
    pub fn offer(&self, msg: &Arc<Message>) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.offer_slow(msg);
    }

    #[cold]
    fn offer_slow(&self, msg: &Arc<Message>) {
        let taps = self.taps.read().unwrap_or_else(|e| e.into_inner());
        for tap in taps.iter() {
            if sagitta_proto::topic::matches(&tap.filter, msg.topic.as_str())
                && tap.tx.try_send(msg.clone()).is_err()
            {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Opens a tap on `filter` (a topic filter; not a shared subscription).
    fn open(self: &Arc<Self>, filter: &str) -> Result<TapHandle, String> {
        let f = TopicFilter::new(filter.to_owned()).map_err(|e| format!("filter: {e}"))?;
        if f.shared().is_some() {
            return Err("filter: the explorer does not take shared subscriptions".into());
        }
        let (tx, rx) = mpsc::channel(TAP_CAPACITY);
        let mut taps = self.taps.write().unwrap_or_else(|e| e.into_inner());
        if taps.len() >= MAX_TAPS {
            return Err(format!("at most {MAX_TAPS} explorer subscriptions at once"));
        }
        let tap = Arc::new(Tap {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter: f.as_str().to_owned(),
            tx,
            dropped: AtomicU64::new(0),
        });
        taps.push(tap.clone());
        self.count.store(taps.len(), Ordering::Relaxed);
        Ok(TapHandle {
            taps: self.clone(),
            tap,
            rx,
        })
    }

    fn close(&self, id: u64) {
        let mut taps = self.taps.write().unwrap_or_else(|e| e.into_inner());
        taps.retain(|t| t.id != id);
        self.count.store(taps.len(), Ordering::Relaxed);
    }

    /// Taps open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// An open tap: closed when dropped.
struct TapHandle {
    taps: Arc<Taps>,
    tap: Arc<Tap>,
    rx: mpsc::Receiver<Arc<Message>>,
}

impl Drop for TapHandle {
    fn drop(&mut self) {
        self.taps.close(self.tap.id);
    }
}

// --- samples ----------------------------------------------------------------------------

/// The broker's counters at one second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// PUBLISH packets received in the last second.
    pub msgs_in: u64,
    /// PUBLISH packets sent in the last second.
    pub msgs_out: u64,
    /// Bytes read from clients in the last second.
    pub bytes_in: u64,
    /// Bytes written to clients in the last second.
    pub bytes_out: u64,
    /// Messages dropped (queue full, offline QoS 0, too large, expired) in the last second.
    pub dropped: u64,
    pub connections: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    msgs_in: u64,
    msgs_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    dropped: u64,
}

impl Totals {
    fn read(m: &Metrics) -> Self {
        let sum = |a: &[AtomicU64]| a.iter().map(Metrics::get).sum::<u64>();
        Self {
            msgs_in: sum(&m.received_by_qos),
            msgs_out: sum(&m.sent_by_qos),
            bytes_in: Metrics::get(&m.bytes_received),
            bytes_out: Metrics::get(&m.bytes_sent),
            dropped: Metrics::get(&m.dropped_queue_full)
                + Metrics::get(&m.dropped_offline)
                + Metrics::get(&m.dropped_too_large)
                + Metrics::get(&m.dropped_expired),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the dashboard shares: the sample history, the taps, the live socket limit.
pub(crate) struct Live {
    history: Mutex<VecDeque<Sample>>,
    /// Bumped after each new sample.
    tick: watch::Sender<u64>,
    pub taps: Arc<Taps>,
    sockets: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            tick: watch::Sender::new(0),
            taps: Arc::new(Taps::default()),
            sockets: Arc::new(Semaphore::new(MAX_SOCKETS)),
        }
    }
}

impl Live {
    /// The samples of the last [`HISTORY`] seconds, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().copied().collect()
    }

    fn latest(&self) -> Option<Sample> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.back().copied()
    }

    fn push(&self, s: Sample) {
        {
            let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back(s);
        }
        self.tick.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Takes a sample every second until the broker shuts down.
pub(crate) async fn sample_loop(shared: Arc<Shared>) {
    let live = &shared.live;
    let mut last = Totals::read(&shared.metrics);
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let now = Totals::read(&shared.metrics);
        let s = Sample {
            t: now_ms(),
            msgs_in: now.msgs_in.saturating_sub(last.msgs_in),
            msgs_out: now.msgs_out.saturating_sub(last.msgs_out),
            bytes_in: now.bytes_in.saturating_sub(last.bytes_in),
            bytes_out: now.bytes_out.saturating_sub(last.bytes_out),
            dropped: now.dropped.saturating_sub(last.dropped),
            connections: Metrics::get(&shared.metrics.clients_connected),
            sessions: shared.sessions.len() as u64,
            subscriptions: shared.router.len() as u64,
            retained: shared.retained.len() as u64,
        };
        last = now;
        live.push(s);
    }
}

// --- the WebSocket ------------------------------------------------------------------------

/// The WebSocket settings: small messages from the browser.
fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 * 1024);
    c.max_frame_size = Some(64 * 1024);
    c
}

/// A place for one more live socket, if there is one.
pub(crate) fn socket_permit(live: &Live) -> Option<tokio::sync::OwnedSemaphorePermit> {
    live.sockets.clone().try_acquire_owned().ok()
}

/// One explorer message as the browser gets it.
fn message_json(msg: &Message, now: std::time::Instant) -> Value {
    let size = msg.payload.len();
    let shown = &msg.payload[..size.min(PREVIEW)];
    let mut v = json!({
        "topic": msg.topic.as_str(),
        "qos": msg.qos as u8,
        "retain": msg.retain,
        "size": size,
        "truncated": size > PREVIEW,
    });
    match std::str::from_utf8(shown) {
        Ok(text) => v["payload"] = Value::from(text),
        // A cut through a multi-byte character is still text.
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > shown.len() => {
            v["payload"] = Value::from(String::from_utf8_lossy(&shown[..e.valid_up_to()]));
        }
        Err(_) => v["payload_base64"] = Value::from(BASE64.encode(shown)),
    }
    if let Some(p) = PropertiesJson::from_message(msg, now) {
        v["properties"] = serde_json::to_value(p).unwrap_or(Value::Null);
    }
    v
}

/// What the browser asks for after its token.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Command {
    Subscribe { filter: String },
    Unsubscribe,
}

/// Serves an upgraded live WebSocket until the browser leaves, the broker shuts down or
/// [`SOCKET_LIFETIME`] passes. `authorize` checks the token the browser sends first.
pub(crate) async fn serve<F>(
    upgraded: hyper::upgrade::Upgraded,
    shared: Arc<Shared>,
    authorize: F,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    F: Fn(&str) -> bool,
{
    let _permit = permit;
    let io = TokioIo::new(upgraded);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
    let stop = shared.shutdown.clone();
    tokio::select! {
        r = session(ws, &shared.live, authorize) => {
            if let Err(e) = r {
                debug!(error = %e, "live dashboard socket ended");
            }
        }
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(SOCKET_LIFETIME) => {}
    }
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn send(ws: &mut Ws, v: &Value) -> Result<(), String> {
    let text = v.to_string();
    match tokio::time::timeout(SEND_TIMEOUT, SinkSend::new(ws, WsMessage::text(text))).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the browser does not read".into()),
    }
}

async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        SinkSend::new(ws, WsMessage::Close(Some(frame))),
    )
    .await;
}

/// The explorer's state on one socket.
struct Explorer {
    tap: TapHandle,
    /// The newest messages since the last flush, with when this task took them (ms).
    ring: VecDeque<(u64, Arc<Message>)>,
    /// Messages replaced in `ring` by newer ones since the last flush.
    sampled_out: u64,
    /// All messages matched since the subscription began.
    matched: u64,
}

async fn session<F>(mut ws: Ws, live: &Live, authorize: F) -> Result<(), String>
where
    F: Fn(&str) -> bool,
{
    // The token first.
    let first = tokio::time::timeout(AUTH_TIMEOUT, next(&mut ws)).await;
    let token = match first {
        Ok(Some(Ok(WsMessage::Text(t)))) => serde_json::from_str::<Value>(t.as_str())
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default(),
        Ok(_) => return Err("no token message".into()),
        Err(_) => {
            close(&mut ws, 1008, "no token in time").await;
            return Err("no token in time".into());
        }
    };
    if !authorize(&token) {
        let _ = send(&mut ws, &json!({"type": "error", "error": "unauthorized"})).await;
        close(&mut ws, 4001, "unauthorized").await;
        return Err("wrong token".into());
    }
    send(
        &mut ws,
        &json!({"type": "hello", "history": live.history()}),
    )
    .await?;
    let mut tick = live.tick.subscribe();
    tick.mark_unchanged();
    let mut flush = tokio::time::interval(FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut explorer: Option<Explorer> = None;
    loop {
        tokio::select! {
            changed = tick.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                if let Some(s) = live.latest() {
                    send(&mut ws, &json!({"type": "sample", "sample": s})).await?;
                }
            }
            msg = async {
                match explorer.as_mut() {
                    Some(e) => e.tap.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let (Some(e), Some(m)) = (explorer.as_mut(), msg) {
                    e.matched += 1;
                    if e.ring.len() >= BATCH {
                        e.ring.pop_front();
                        e.sampled_out += 1;
                    }
                    e.ring.push_back((now_ms(), m));
                }
            }
            _ = flush.tick() => {
                if let Some(e) = explorer.as_mut() {
                    let dropped = e.tap.tap.dropped.swap(0, Ordering::Relaxed);
                    if !e.ring.is_empty() || e.sampled_out > 0 || dropped > 0 {
                        let now = std::time::Instant::now();
                        let messages: Vec<Value> =
                            e.ring.drain(..).map(|(t, m)| {
                                let mut v = message_json(&m, now);
                                v["t"] = Value::from(t);
                                v
                            }).collect();
                        let v = json!({
                            "type": "messages",
                            "t": now_ms(),
                            "messages": messages,
                            "sampled_out": e.sampled_out,
                            "dropped": dropped,
                            "matched": e.matched,
                        });
                        e.sampled_out = 0;
                        send(&mut ws, &v).await?;
                    }
                }
            }
            incoming = next(&mut ws) => {
                let text = match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<Command>(text.as_str()) {
                    Ok(Command::Subscribe { filter }) => {
                        explorer = None;
                        match live.taps.open(&filter) {
                            Ok(tap) => {
                                debug!(filter, "dashboard explorer subscribed");
                                explorer = Some(Explorer {
                                    tap,
                                    ring: VecDeque::with_capacity(BATCH),
                                    sampled_out: 0,
                                    matched: 0,
                                });
                                send(&mut ws, &json!({"type": "subscribed", "filter": filter})).await?;
                            }
                            Err(e) => send(&mut ws, &json!({"type": "error", "error": e})).await?,
                        }
                    }
                    Ok(Command::Unsubscribe) => {
                        explorer = None;
                        send(&mut ws, &json!({"type": "unsubscribed"})).await?;
                    }
                    Err(e) => {
                        send(&mut ws, &json!({"type": "error", "error": format!("bad command: {e}")})).await?;
                    }
                }
            }
        }
    }
}

// --- small stream helpers (no futures-util in the library) --------------------------------

fn next(ws: &mut Ws) -> impl std::future::Future<Output = Option<Result<WsMessage, String>>> + '_ {
    std::future::poll_fn(move |cx| {
        std::pin::Pin::new(&mut *ws)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map_err(|e| e.to_string())))
    })
}

/// `SinkExt::send` without futures-util: ready, start_send, flush.
struct SinkSend<'a> {
    ws: &'a mut Ws,
    item: Option<WsMessage>,
}

impl<'a> SinkSend<'a> {
    fn new(ws: &'a mut Ws, item: WsMessage) -> Self {
        Self {
            ws,
            item: Some(item),
        }
    }
}

impl std::future::Future for SinkSend<'_> {
    type Output = Result<(), tokio_tungstenite::tungstenite::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        if this.item.is_some() {
            match std::pin::Pin::new(&mut *this.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if let Some(item) = this.item.take()
                && let Err(e) = std::pin::Pin::new(&mut *this.ws).start_send(item)
            {
                return Poll::Ready(Err(e));
            }
        }
        std::pin::Pin::new(&mut *this.ws).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sagitta_proto::{QoS, TopicName};

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::new(topic).unwrap(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false,
        ))
    }

    #[test]
    fn taps_see_what_they_asked_for_and_drop_beyond_their_capacity() {
        let taps = Arc::new(Taps::default());
        let mut a = taps.open("a/+").unwrap();
        let mut all = taps.open("#").unwrap();
        assert!(taps.open("$share/g/a").is_err());
        assert!(taps.open("a/#/b").is_err());
        taps.offer(&msg("a/1"));
        taps.offer(&msg("b/1"));
        taps.offer(&msg("$SYS/x"));
        assert_eq!(a.rx.try_recv().unwrap().topic.as_str(), "a/1");
        assert!(a.rx.try_recv().is_err());
        assert_eq!(all.rx.try_recv().unwrap().topic.as_str(), "a/1");
        assert_eq!(all.rx.try_recv().unwrap().topic.as_str(), "b/1");
        assert!(all.rx.try_recv().is_err(), "# does not match $SYS");
        for _ in 0..TAP_CAPACITY + 10 {
            taps.offer(&msg("a/2"));
        }
        assert_eq!(a.tap.dropped.load(Ordering::Relaxed), 10);
        drop(a);
        assert_eq!(taps.len(), 1);
        drop(all);
        assert_eq!(taps.len(), 0);
    }

    #[test]
    fn previews_are_bounded_text_or_base64() {
        let now = std::time::Instant::now();
        let mut m = Message::new(
            TopicName::new("t").unwrap(),
            Bytes::from(vec![b'a'; PREVIEW + 5]),
            QoS::AtLeastOnce,
            true,
        );
        let v = message_json(&m, now);
        assert_eq!(v["payload"].as_str().unwrap().len(), PREVIEW);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["qos"], 1);
        m.payload = Bytes::from_static(&[0xff, 0x00]);
        let v = message_json(&m, now);
        assert_eq!(v["payload_base64"], "/wA=");
    }
}
