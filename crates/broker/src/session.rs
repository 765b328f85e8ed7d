//! Sessions: the registry by client id, each session's mailbox (the bounded queue publishers
//! push into), and its protocol state (subscriptions, in-flight window, QoS 2 ids), which the
//! connection that owns the session holds locked for its whole life.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sagitta_proto::session::{InboundQos2, OutboundWindow};
use sagitta_proto::{ProtocolVersion, QoS, SubscriptionId, SubscriptionOptions, TopicFilter};
use tokio::sync::Notify;

use crate::message::{ClientId, Delivery, FastMap};

/// Session expiry meaning "never".
pub(crate) const NEVER_EXPIRES: u32 = u32::MAX;

/// What happened to a message offered to a session's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued for delivery.
    Queued,
    /// The queue was full: dropped.
    DroppedQueueFull,
    /// QoS 0 for a session without a connection: dropped.
    DroppedOffline,
}

/// How the connection that owns a session is told to let go of it: a takeover, or an
/// operator's request (admin API). Each connection has its own, and only that connection
/// waits on it. Lighter than a cancellation token, which matters with 100k mostly idle
/// connections.
#[derive(Default)]
pub(crate) struct Kick {
    notify: Notify,
    /// 0: not kicked; else a [`KickReason`].
    kicked: AtomicU8,
}

/// Why a connection was told to let go of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KickReason {
    /// Another connection claimed the session.
    TakenOver = 1,
    /// An operator disconnected the client (5.0: DISCONNECT 0x98).
    Admin = 2,
    /// An operator disconnected the client and ended its session.
    AdminEndSession = 3,
}

impl Kick {
    /// Tells the connection to let go: another connection takes the session over.
    pub fn kick(&self) {
        self.kick_for(KickReason::TakenOver);
    }

    /// Tells the connection to let go for `reason`. A takeover wins over an operator's
    /// request; the first reason stays otherwise.
    pub fn kick_for(&self, reason: KickReason) {
        let r = reason as u8;
        let _ = self
            .kicked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old == 0 || reason == KickReason::TakenOver).then_some(r)
            });
        // Leaves a permit if the connection is not waiting right now.
        self.notify.notify_one();
    }

    /// Whether [`Kick::kick`] (or [`Kick::kick_for`]) was called.
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire) != 0
    }

    /// Why the connection was kicked, if it was.
    pub fn reason(&self) -> Option<KickReason> {
        match self.kicked.load(Ordering::Acquire) {
            1 => Some(KickReason::TakenOver),
            2 => Some(KickReason::Admin),
            3 => Some(KickReason::AdminEndSession),
            _ => None,
        }
    }

    /// Resolves once kicked.
    pub async fn kicked(&self) {
        while !self.is_kicked() {
            self.notify.notified().await;
        }
    }
}

/// What is known of a session's (last) client, recorded once per connection, for ACL
/// checks and the admin API.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    /// The username the client is known by.
    pub username: Option<Arc<str>>,
    /// Its address; `None` for a session read from the store that no client claimed yet.
    pub peer: Option<SocketAddr>,
    /// The protocol version it connected with.
    pub protocol: Option<ProtocolVersion>,
    /// The keep-alive in force, in seconds.
    pub keep_alive: u16,
    /// Session Expiry Interval in seconds ([`NEVER_EXPIRES`] for never).
    pub expiry: u32,
}

struct Mailbox {
    queue: VecDeque<Delivery>,
    limit: usize,
}

/// A session as publishers and the registry see it.
pub(crate) struct SessionEntry {
    pub client_id: ClientId,
    mailbox: Mutex<Mailbox>,
    notify: Notify,
    connected: AtomicBool,
    /// Kept in the store: its QoS 1/2 messages are stored as they are queued.
    persistent: AtomicBool,
    /// Its last client (the username is read by ACL checks on delivery).
    info: Mutex<ClientInfo>,
    /// Subscriptions of this session in the router (kept by the router): with at most one,
    /// a message cannot match the session twice and routing skips merging its targets.
    pub(crate) routes: AtomicU32,
    /// Messages in flight to the client, as its connection last reported (admin API,
    /// metrics).
    inflight: AtomicU32,
    /// Messages dropped for this session: queue full, or QoS 0 while offline (bridge
    /// status).
    dropped: AtomicU64,
    /// Incremented each time a connection claims the session; timers (expiry, delayed will)
    /// compare it to know whether the client came back.
    generation: AtomicU64,
    /// The protocol state, held by the owning connection.
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
    /// The owning connection's id, and the token that makes it let go (takeover).
    owner: Mutex<Option<(u64, Arc<Kick>)>>,
}

impl SessionEntry {
    pub fn new(client_id: ClientId, queue_limit: usize) -> Self {
        Self {
            client_id,
            mailbox: Mutex::new(Mailbox {
                queue: VecDeque::new(),
                limit: queue_limit,
            }),
            notify: Notify::new(),
            connected: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            info: Mutex::new(ClientInfo::default()),
            routes: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            state: Arc::new(tokio::sync::Mutex::new(SessionState::default())),
            owner: Mutex::new(None),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }

    /// Whether the session is kept in the store.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Release);
    }

    fn info_lock(&self) -> std::sync::MutexGuard<'_, ClientInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the username of the session's (last) client.
    pub fn with_username<R>(&self, f: impl FnOnce(Option<&str>) -> R) -> R {
        f(self.info_lock().username.as_deref())
    }

    /// Records what is known of the client that claimed the session.
    pub fn set_info(&self, info: ClientInfo) {
        *self.info_lock() = info;
    }

    /// What is known of the session's (last) client.
    pub fn info(&self) -> ClientInfo {
        self.info_lock().clone()
    }

    /// Records the session's expiry interval (set again by a 5.0 DISCONNECT).
    pub fn set_expiry(&self, expiry: u32) {
        self.info_lock().expiry = expiry;
    }

    /// Messages in flight to the client, as last reported.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Reports the number of messages in flight (cheap when unchanged).
    pub fn set_inflight(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.inflight.load(Ordering::Relaxed) != n {
            self.inflight.store(n, Ordering::Relaxed);
        }
    }

    /// Messages dropped for this session (queue full, or QoS 0 while offline).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sets the most messages the mailbox holds (a bridge's `max_queued`).
    pub fn set_queue_limit(&self, limit: usize) {
        self.mailbox().limit = limit;
    }

    /// Messages waiting in the mailbox.
    pub fn queued(&self) -> usize {
        self.mailbox().queue.len()
    }

    /// Tells the connection that owns the session, if any, to let go for `reason`. Returns
    /// whether there was one.
    pub fn kick_owner(&self, reason: KickReason) -> bool {
        match &*self.owner.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, kick)) => {
                kick.kick_for(reason);
                true
            }
            None => false,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn mailbox(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a message. QoS 0 messages are dropped while no connection owns the session
    /// unless `queue_qos0_offline`; anything past the queue limit is dropped.
    /// `on_queued` is called with the message under the mailbox lock once it is queued
    /// (before the connection can take it).
    pub fn enqueue_with(
        &self,
        delivery: Delivery,
        queue_qos0_offline: bool,
        on_queued: impl FnOnce(&Delivery),
    ) -> Enqueued {
        let connected = self.is_connected();
        if !connected && delivery.qos == QoS::AtMostOnce && !queue_qos0_offline {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Enqueued::DroppedOffline;
        }
        let was_empty = {
            let mut mb = self.mailbox();
            if mb.queue.len() >= mb.limit {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Enqueued::DroppedQueueFull;
            }
            let was_empty = mb.queue.is_empty();
            on_queued(&delivery);
            mb.queue.push_back(delivery);
            was_empty
        };
        // Only the first message into an empty mailbox wakes the connection: while messages
        // wait, it has been woken already, or it left them for lack of window space and
        // pulls again on the next acknowledgement (or it woke itself; see `Conn::pull`).
        if connected && was_empty {
            self.notify.notify_one();
        }
        Enqueued::Queued
    }

    /// Moves queued messages into `out`, in order: any number of QoS 0 and at most
    /// `window_space` QoS 1/2 ones, `max` in all. Stops at the first QoS 1/2 message that does
    /// not fit, so that order is kept.
    pub fn take_batch(&self, mut window_space: usize, max: usize, out: &mut Vec<Delivery>) {
        let mut mb = self.mailbox();
        while out.len() < max {
            match mb.queue.front() {
                Some(d) if d.qos == QoS::AtMostOnce => {}
                Some(_) if window_space > 0 => window_space -= 1,
                _ => break,
            }
            if let Some(d) = mb.queue.pop_front() {
                out.push(d);
            }
        }
    }

    /// A copy of the queued messages, in order.
    pub fn queue_snapshot(&self) -> Vec<Delivery> {
        self.mailbox().queue.iter().cloned().collect()
    }

    /// Removes every queued message.
    pub fn clear_queue(&self) -> VecDeque<Delivery> {
        std::mem::take(&mut self.mailbox().queue)
    }

    /// Puts messages read from the store back in the queue, in order, whatever the limit.
    pub fn restore_queue(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        self.mailbox().queue.extend(deliveries);
    }

    /// Makes the next [`SessionEntry::notified`] return at once.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves when a message has been queued for the connected client.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// What the session remembers between connections.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// A session exists (false for a new or ended one: `session present` is 0).
    pub exists: bool,
    /// Subscriptions by filter (the router holds the same set for matching).
    pub subscriptions: FastMap<TopicFilter, (SubscriptionOptions, Option<SubscriptionId>)>,
    /// Outbound QoS 1/2 messages in flight.
    pub outbound: OutboundWindow<Delivery>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound: InboundQos2,
    /// Session Expiry Interval in seconds ([`NEVER_EXPIRES`] for never).
    pub expiry: u32,
    /// A will waiting for its delay is in the store.
    pub will_stored: bool,
    /// Inbound QoS 2 ids read from the store at start that still await PUBREL.
    pub restored_qos2: Vec<u16>,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            exists: false,
            subscriptions: FastMap::default(),
            outbound: OutboundWindow::new(u16::MAX),
            inbound: InboundQos2::new(),
            expiry: 0,
            will_stored: false,
            restored_qos2: Vec::new(),
        }
    }
}

/// Every session, by client id. Its lock is taken on connect, disconnect and expiry only.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<ClientId, Arc<SessionEntry>>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Arc<SessionEntry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the session of `client_id` for a new connection, creating
    /// the entry if needed. `conn_id` names the connection and `kick` makes it let go later.
    /// A connection that owned it is told to let go (takeover). The
    /// caller then waits for the session state lock. Returns the entry and its new generation.
    pub fn claim(
        &self,
        client_id: &ClientId,
        conn_id: u64,
        kick: Arc<Kick>,
        queue_limit: usize,
    ) -> (Arc<SessionEntry>, u64) {
        let mut map = self.map();
        let entry = map
            .entry(client_id.clone())
            .or_insert_with(|| Arc::new(SessionEntry::new(client_id.clone(), queue_limit)))
            .clone();
        // A session read from the store got the global limit; the one in force now wins.
        entry.set_queue_limit(queue_limit);
        let previous = entry
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((conn_id, kick));
        if let Some((_, previous)) = previous {
            previous.kick();
        }
        let generation = entry.generation.fetch_add(1, Ordering::AcqRel) + 1;
        (entry, generation)
    }

    /// Called by a connection as it ends: gives up ownership if it still has it, and removes
    /// the entry if `remove` (the session ended) and nobody claimed it since.
    pub fn release(&self, entry: &Arc<SessionEntry>, conn_id: u64, remove: bool) {
        let mut map = self.map();
        let mut owner = entry.owner.lock().unwrap_or_else(|e| e.into_inner());
        let still_ours = owner.as_ref().is_some_and(|(id, _)| *id == conn_id);
        if still_ours {
            *owner = None;
            if remove
                && map
                    .get(&entry.client_id)
                    .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                map.remove(&entry.client_id);
            }
        }
    }

    /// Removes an expired session: only if no connection claimed it since `generation`.
    pub fn remove_expired(&self, entry: &Arc<SessionEntry>, generation: u64) -> bool {
        self.remove_unowned(entry, Some(generation))
    }

    /// Removes a session that no connection owns (an operator ends it). Returns false if a
    /// connection owns it, or it is no longer the registered session of its client id.
    pub fn remove_idle(&self, entry: &Arc<SessionEntry>) -> bool {
        self.remove_unowned(entry, None)
    }

    /// Removes `entry` if no connection owns it, it is still the registered session of its
    /// client id, and (with `generation`) no connection claimed it since.
    fn remove_unowned(&self, entry: &Arc<SessionEntry>, generation: Option<u64>) -> bool {
        let mut map = self.map();
        let idle = entry
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        if idle
            && generation.is_none_or(|g| entry.generation() == g)
            && map
                .get(&entry.client_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            map.remove(&entry.client_id);
            true
        } else {
            false
        }
    }

    /// The session of `client_id`, if there is one.
    pub fn get(&self, client_id: &str) -> Option<Arc<SessionEntry>> {
        self.map().get(client_id).cloned()
    }

    /// Every session (connected or not), in no particular order. The registry is locked
    /// only while the entries are copied.
    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        self.map().values().cloned().collect()
    }

    /// Adds a session read from the store.
    pub fn restore(&self, entry: Arc<SessionEntry>) {
        self.map().insert(entry.client_id.clone(), entry);
    }

    /// Number of sessions (connected or not).
    pub fn len(&self) -> usize {
        self.map().len()
    }
}
