//! Persistence: what the broker must not forget across a restart (retained messages,
//! persistent sessions with their subscriptions, queued and in-flight QoS 1/2 messages,
//! inbound QoS 2 packet ids awaiting PUBREL, delayed wills), written behind the in-memory
//! state to an embedded key-value store.
//!
//! ## Layout
//! - [`Backend`]: the key-value store trait (atomic batches of puts and deletes, a sync, a
//!   scan per table); [`RedbBackend`] is the one the broker uses.
//! - `record`: the byte format of keys and values, and the [`Snapshot`] read at start.
//! - [`Store`]: the handle the broker's tasks write through. Operations are queued in
//!   memory in the order the broker's state changed; one writer thread applies each queued
//!   group as one atomic batch and syncs according to [`SyncMode`], so that many publishes
//!   share one fsync (group commit). Each submission gets a ticket; [`Store::durable`]
//!   tells which tickets are on disk.

mod broker_ops;
pub(crate) mod record;
mod redb_backend;
mod restore;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::message::FastMap;
use tracing::{error, info};

pub(crate) use record::Snapshot;
pub use redb_backend::RedbBackend;
pub(crate) use restore::restore;

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Retained messages by topic.
    Retained,
    /// Persistent sessions by client id.
    Sessions,
    /// Subscriptions by client id and filter.
    Subscriptions,
    /// Message bodies by id, shared by the queued messages that point at them.
    Bodies,
    /// Queued and in-flight messages by client id and sequence number.
    Queued,
    /// Inbound QoS 2 packet ids awaiting PUBREL, by client id and packet id.
    Qos2,
    /// Wills waiting for their delay, by client id.
    Wills,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 7] = [
        Table::Retained,
        Table::Sessions,
        Table::Subscriptions,
        Table::Bodies,
        Table::Queued,
        Table::Qos2,
        Table::Wills,
    ];

    /// Its name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Table::Retained => "retained",
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Bodies => "bodies",
            Table::Queued => "queued",
            Table::Qos2 => "qos2",
            Table::Wills => "wills",
        }
    }
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Delete(Table, Vec<u8>),
    /// Removes every key that starts with the prefix.
    DeletePrefix(Table, Vec<u8>),
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, full disk); the message names the data directory.
    #[error("store in {path}: {message}")]
    Backend {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A record cannot be decoded: the data is corrupt or from an unknown format.
    #[error(
        "store in {path}: corrupt record in table `{table}`: {message}; move the data directory \
         away (or start with --memory) to start empty"
    )]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// What [`Backend::scan`] calls with each key and value.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// A key-value store the broker persists into.
pub trait Backend: Send + 'static {
    /// Applies `ops` as one atomic batch: after a crash, all of them or none are found.
    /// Need not be durable before [`Backend::sync`].
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes every batch written so far durable (fsync).
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Calls `f` with every key and value of `table`, in key order.
    fn scan(&self, table: Table, f: &mut Visit<'_>) -> Result<(), StoreError>;
}

/// When writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Every batch is synced before QoS 1/2 publishes it holds are acknowledged.
    Always,
    /// Synced every `sync_interval_ms`: a crash loses at most that much.
    #[default]
    Periodic,
    /// Acknowledgements never wait for the disk and the store is synced only every 10 s
    /// (to reclaim space) and at a clean stop: a crash loses up to 10 s.
    Never,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Always => "always",
            SyncMode::Periodic => "periodic",
            SyncMode::Never => "never",
        })
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncMode::Always),
            "periodic" => Ok(SyncMode::Periodic),
            "never" => Ok(SyncMode::Never),
            other => Err(format!(
                "unknown sync mode {other:?} (expected always, periodic or never)"
            )),
        }
    }
}

/// Queued changes past which acknowledgements wait for the writer (see
/// [`Store::backlogged`]).
pub(crate) const MAX_BACKLOG: usize = 50_000;

/// Tickets count changes: a submission's ticket is the number of changes queued over the
/// store's life up to and including its own.
struct Pending {
    /// Each with whether it creates its key (a new id that no earlier change used).
    ops: std::collections::VecDeque<(Op, bool)>,
    /// Changes submitted so far (the last ticket).
    submitted: u64,
    /// Changes taken by the writer so far.
    taken: u64,
    /// Open groups: id, and the ticket before their first change. The writer takes no change
    /// submitted after a group opened until it closes.
    open: Vec<(u64, u64)>,
    next_group: u64,
    closing: bool,
}

impl Pending {
    /// How many of the queued changes the writer may take now.
    fn ready(&self) -> usize {
        if self.closing {
            return self.ops.len();
        }
        let limit = self
            .open
            .iter()
            .map(|g| g.1)
            .min()
            .unwrap_or(self.submitted);
        usize::try_from(limit.saturating_sub(self.taken))
            .map_or(self.ops.len(), |n| n.min(self.ops.len()))
    }
}

/// Changes that reach the disk in one transaction, whichever other changes are submitted
/// meanwhile: everything one publish writes (the message for each persistent session, the
/// retained copy, the QoS 2 packet id), so that a crash keeps all of it or none. Ends when
/// dropped; keep it short, the writer waits for it.
pub(crate) struct Group {
    inner: Arc<Inner>,
    id: u64,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("id", &self.id).finish()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.open.retain(|g| g.0 != self.id);
        if !p.ops.is_empty() {
            self.inner.wake.notify_one();
        }
    }
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Highest ticket written, and synced in `always` mode (acknowledgements wait for it
    /// only in that mode).
    durable: tokio::sync::watch::Sender<u64>,
    failed: AtomicBool,
    /// Changes queued and not yet taken by the writer.
    backlog: std::sync::atomic::AtomicUsize,
    /// When the oldest of them was queued, in ns after `epoch` plus 1 (0: none queued).
    oldest: AtomicU64,
    epoch: Instant,
    /// How long changes may wait for the writer before acknowledgements wait for it too.
    max_lag: Duration,
    next_id: AtomicU64,
    mode: SyncMode,
    interval: Duration,
    path: PathBuf,
    /// How long each sync took.
    sync_latency: crate::metrics::Histogram,
}

/// The broker's handle on its store. Cheap to share; see the module documentation.
pub(crate) struct Store {
    inner: Arc<Inner>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and reads what it holds.
    pub fn open(
        dir: &Path,
        mode: SyncMode,
        interval: Duration,
    ) -> Result<(Store, Snapshot), StoreError> {
        let started = Instant::now();
        // A damaged file can make the storage engine panic rather than return an error.
        let opened = guard(dir, || {
            let backend = RedbBackend::open(dir)?;
            let snapshot = Snapshot::read(&backend, dir)?;
            Ok((backend, snapshot))
        });
        let (backend, snapshot) = opened?;
        info!(
            dir = %dir.display(),
            retained = snapshot.retained.len(),
            sessions = snapshot.sessions.len(),
            queued = snapshot.queued_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            sync = %mode,
            "store opened"
        );
        let store = Store::start(Box::new(backend), mode, interval, dir, snapshot.max_id())?;
        Ok((store, snapshot))
    }

    /// Starts the writer thread over an opened backend. Ids handed out start after `max_id`.
    pub fn start(
        backend: Box<dyn Backend>,
        mode: SyncMode,
        interval: Duration,
        dir: &Path,
        max_id: u64,
    ) -> Result<Store, StoreError> {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                ops: std::collections::VecDeque::new(),
                submitted: 0,
                taken: 0,
                open: Vec::new(),
                next_group: 0,
                closing: false,
            }),
            wake: Condvar::new(),
            durable: tokio::sync::watch::Sender::new(0),
            failed: AtomicBool::new(false),
            backlog: std::sync::atomic::AtomicUsize::new(0),
            oldest: AtomicU64::new(0),
            epoch: Instant::now(),
            max_lag: match mode {
                SyncMode::Never => NEVER_SYNC_EVERY,
                _ => interval,
            },
            next_id: AtomicU64::new(max_id + 1),
            mode,
            interval,
            path: dir.to_path_buf(),
            sync_latency: crate::metrics::Histogram::new(crate::metrics::SYNC_BOUNDS_US),
        });
        let thread_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("sagitta-store".into())
            .spawn(move || write_loop(&thread_inner, backend))
            .map_err(|e| StoreError::Backend {
                path: dir.to_path_buf(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            inner,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one change; returns its ticket.
    pub fn submit(&self, op: Op) -> u64 {
        self.submit_all([op])
    }

    /// Queues changes that must be applied together; returns their ticket.
    pub fn submit_all(&self, ops: impl IntoIterator<Item = Op>) -> u64 {
        self.submit_marked(ops.into_iter().map(|op| (op, false)))
    }

    /// Queues [`Op::Put`]s of keys that no change used before (new ids): when a delete of
    /// the same key reaches the writer in the same batch, neither goes to the disk.
    pub fn submit_new(&self, ops: impl IntoIterator<Item = Op>) -> u64 {
        self.submit_marked(ops.into_iter().map(|op| (op, true)))
    }

    fn submit_marked(&self, ops: impl IntoIterator<Item = (Op, bool)>) -> u64 {
        let mut p = self.pending();
        let was_empty = p.ops.is_empty();
        let before = p.ops.len();
        p.ops.extend(ops);
        p.submitted += (p.ops.len() - before) as u64;
        self.inner.backlog.store(p.ops.len(), Ordering::Relaxed);
        if was_empty {
            let since = self.inner.epoch.elapsed().as_nanos();
            let since = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
            self.inner.oldest.store(since, Ordering::Relaxed);
            self.inner.wake.notify_one();
        }
        p.submitted
    }

    /// True when more changes wait for the writer than [`MAX_BACKLOG`], or the oldest has
    /// waited longer than the sync interval: acknowledgements then wait for their writes
    /// whatever the sync mode, so that publishers cannot outrun the disk, neither with an
    /// ever-growing queue in memory nor past the loss window the mode promises.
    pub fn backlogged(&self) -> bool {
        let inner = &self.inner;
        if inner.backlog.load(Ordering::Relaxed) > MAX_BACKLOG {
            return true;
        }
        let oldest = inner.oldest.load(Ordering::Relaxed);
        oldest != 0
            && inner.epoch.elapsed().as_nanos() > u128::from(oldest - 1) + inner.max_lag.as_nanos()
    }

    /// The ticket of the last submission.
    pub fn submitted(&self) -> u64 {
        self.pending().submitted
    }

    /// Opens a [`Group`].
    pub fn group(&self) -> Group {
        let mut p = self.pending();
        let id = p.next_group;
        p.next_group += 1;
        let start = p.submitted;
        p.open.push((id, start));
        Group {
            inner: self.inner.clone(),
            id,
        }
    }

    /// A fresh id for message bodies and queued messages.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The sync mode.
    pub fn mode(&self) -> SyncMode {
        self.inner.mode
    }

    /// The highest durable ticket now.
    pub fn durable_ticket(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// Watches the highest durable ticket.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    /// How long syncs took (metrics).
    pub fn sync_latency(&self) -> &crate::metrics::Histogram {
        &self.inner.sync_latency
    }

    /// Changes queued and not yet taken by the writer (metrics).
    pub fn backlog(&self) -> usize {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// True once a write has failed: nothing more reaches the disk.
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Writes and syncs everything queued, then stops the writer thread.
    pub fn close(&self) {
        {
            let mut p = self.pending();
            p.closing = true;
            self.inner.wake.notify_one();
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer
            && w.join().is_err()
        {
            error!("the store writer thread panicked");
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// How often `sync = "never"` syncs all the same: the store reclaims the space of deleted
/// records only after a sync, so without one the file would grow under a steady load.
const NEVER_SYNC_EVERY: Duration = Duration::from_secs(10);

/// The writer thread: takes everything queued, writes it as one batch, syncs as the mode
/// says, and publishes the durable ticket.
fn write_loop(inner: &Inner, mut backend: Box<dyn Backend>) {
    let interval = match inner.mode {
        SyncMode::Always => Duration::ZERO,
        SyncMode::Periodic => inner.interval,
        SyncMode::Never => NEVER_SYNC_EVERY,
    };
    let mut last_sync = Instant::now();
    // Batches written since the last sync.
    let mut unsynced = false;
    loop {
        let (ops, ticket, closing) = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.ready() == 0 && !p.closing {
                if !unsynced {
                    p = inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                let left = interval.saturating_sub(last_sync.elapsed());
                if left.is_zero() {
                    break;
                }
                p = inner
                    .wake
                    .wait_timeout(p, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            let ready = p.ready();
            let ops: Vec<(Op, bool)> = if ready == p.ops.len() {
                std::mem::take(&mut p.ops).into()
            } else {
                p.ops.drain(..ready).collect()
            };
            p.taken += ops.len() as u64;
            inner.backlog.store(p.ops.len(), Ordering::Relaxed);
            if p.ops.is_empty() {
                inner.oldest.store(0, Ordering::Relaxed);
            }
            (ops, p.taken, p.closing)
        };
        if inner.failed.load(Ordering::Acquire) {
            if closing {
                return;
            }
            continue;
        }
        let result = guard(&inner.path, || {
            let ops = coalesce(ops);
            if !ops.is_empty() {
                backend.write(&ops)?;
                unsynced = true;
            }
            if unsynced && (closing || last_sync.elapsed() >= interval) {
                let started = Instant::now();
                backend.sync()?;
                inner.sync_latency.observe(started.elapsed());
                last_sync = Instant::now();
                unsynced = false;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                inner.durable.send_replace(ticket);
            }
            Err(e) => {
                error!(error = %e, dir = %inner.path.display(), "store write failed: persistence stops; QoS 1/2 messages are no longer acknowledged with sync = \"always\"");
                inner.failed.store(true, Ordering::Release);
                // Wake waiters so that they see the failure.
                inner.durable.send_modify(|_| {});
            }
        }
        if closing {
            return;
        }
    }
}

/// The net effect of a batch: one change per key (its last), and nothing at all for a key
/// created and deleted within the batch — a message acknowledged soon after it was queued
/// costs the disk nothing. Changes to different keys commute inside one transaction; a
/// [`Op::DeletePrefix`] is a barrier that nothing moves across.
fn coalesce(ops: Vec<(Op, bool)>) -> Vec<Op> {
    // Per key of the current segment: the index of its first and last change.
    let mut seen: FastMap<(Table, &[u8]), (usize, usize)> = FastMap::default();
    let mut keep = vec![true; ops.len()];
    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Op::Put(t, k, _) | Op::Delete(t, k) => {
                if let Some((_, last)) = seen.get_mut(&(*t, k.as_slice())) {
                    keep[*last] = false;
                    *last = i;
                } else {
                    seen.insert((*t, k.as_slice()), (i, i));
                }
            }
            Op::DeletePrefix(..) => drop_created_then_deleted(&ops, &mut seen, &mut keep),
        }
    }
    drop_created_then_deleted(&ops, &mut seen, &mut keep);
    ops.into_iter()
        .zip(keep)
        .filter_map(|((op, _), keep)| keep.then_some(op))
        .collect()
}

/// Ends a segment of [`coalesce`]: a key whose first change created it and whose last
/// deletes it leaves nothing (its other changes were dropped already).
fn drop_created_then_deleted(
    ops: &[(Op, bool)],
    seen: &mut FastMap<(Table, &[u8]), (usize, usize)>,
    keep: &mut [bool],
) {
    for (_, (first, last)) in seen.drain() {
        if ops[first].1 && matches!(ops[last].0, Op::Delete(..)) {
            keep[last] = false;
        }
    }
}

/// Runs `f`, turning a panic of the storage engine (a damaged file) into an error naming the
/// store's file.
fn guard<T>(dir: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(StoreError::Backend {
            path: dir.join(redb_backend::FILE),
            message: format!(
                "the storage engine failed ({why}): the file is damaged; move it away to start \
                 empty, or start with --memory"
            ),
        })
    })
}

/// Creates the data directory if it is missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
        path: dir.to_path_buf(),
        message: format!(
            "cannot create the data directory: {e} (set `data_dir`, or run with --memory)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keys and values, writes, syncs.
    type Recorded = (BTreeMap<Vec<u8>, Vec<u8>>, usize, usize);

    /// A backend in memory that counts its writes and syncs; a sync takes 2 ms, like a disk.
    #[derive(Default, Clone)]
    struct Recording {
        state: Arc<Mutex<Recorded>>,
    }

    impl Backend for Recording {
        fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
            let mut s = self.state.lock().unwrap();
            for op in ops {
                match op {
                    Op::Put(_, k, v) => {
                        s.0.insert(k.clone(), v.clone());
                    }
                    Op::Delete(_, k) => {
                        s.0.remove(k);
                    }
                    Op::DeletePrefix(_, p) => s.0.retain(|k, _| !k.starts_with(p)),
                }
            }
            s.1 += 1;
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            std::thread::sleep(Duration::from_millis(2));
            self.state.lock().unwrap().2 += 1;
            Ok(())
        }
        fn scan(&self, _: Table, _: &mut Visit<'_>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn put(i: u32) -> Op {
        Op::Put(Table::Retained, i.to_be_bytes().to_vec(), vec![1])
    }

    #[test]
    fn sync_always_groups_concurrent_submissions_into_few_syncs() {
        let backend = Recording::default();
        let store = Arc::new(
            Store::start(
                Box::new(backend.clone()),
                SyncMode::Always,
                Duration::from_millis(100),
                Path::new("mem"),
                0,
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut durable = store.durable();
                    for i in 0..250 {
                        let ticket = store.submit(put(t * 1000 + i));
                        // Like a publisher waiting for its PUBACK.
                        while *durable.borrow_and_update() < ticket {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (map, _, syncs) = backend.state.lock().unwrap().clone();
        assert_eq!(map.len(), 1000);
        assert!(
            syncs < 1000,
            "{syncs} syncs for 1000 acknowledged submissions"
        );
        assert!(*store.durable().borrow() >= 1000);
    }

    #[test]
    fn periodic_mode_syncs_on_its_interval_and_at_close() {
        let backend = Recording::default();
        let store = Store::start(
            Box::new(backend.clone()),
            SyncMode::Periodic,
            Duration::from_millis(300),
            Path::new("mem"),
            0,
        )
        .unwrap();
        let ticket = store.submit(put(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while *store.durable().borrow() < ticket && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Written at once, synced only when the interval has passed.
        assert_eq!(backend.state.lock().unwrap().2, 0);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(backend.state.lock().unwrap().2, 1);
        store.submit(put(2));
        store.close();
        let (map, _, syncs) = backend.state.lock().unwrap().clone();
        assert_eq!((map.len(), syncs), (2, 2));
    }

    #[test]
    fn a_group_reaches_the_backend_in_one_batch_once_it_closes() {
        let backend = Recording::default();
        let store = Store::start(
            Box::new(backend.clone()),
            SyncMode::Never,
            Duration::from_millis(100),
            Path::new("mem"),
            0,
        )
        .unwrap();
        let before = store.submit(put(0));
        let group = store.group();
        store.submit(put(1));
        // Submitted meanwhile by someone else: held back too, to keep the order.
        store.submit(put(2));
        std::thread::sleep(Duration::from_millis(100));
        {
            let s = backend.state.lock().unwrap();
            assert!(!s.0.contains_key(1u32.to_be_bytes().as_slice()));
            assert!(!s.0.contains_key(2u32.to_be_bytes().as_slice()));
        }
        assert!(*store.durable().borrow() >= before);
        store.submit(put(3));
        drop(group);
        let deadline = Instant::now() + Duration::from_secs(5);
        while *store.durable().borrow() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(backend.state.lock().unwrap().0.len(), 4);
        store.close();
    }

    #[test]
    fn a_batch_keeps_the_last_change_per_key_and_drops_what_it_created_and_deleted() {
        let key = |k: &str| k.as_bytes().to_vec();
        let put = |k: &str, v: u8| Op::Put(Table::Queued, key(k), vec![v]);
        let delete = |k: &str| Op::Delete(Table::Queued, key(k));
        let ops = vec![
            (put("new", 1), true),
            (put("new", 2), false),
            (delete("new"), false),
            (put("old", 1), false),
            (delete("old"), false),
            (put("kept", 1), true),
            (put("kept", 2), false),
            (Op::Put(Table::Bodies, key("new"), vec![9]), false),
            (Op::DeletePrefix(Table::Queued, key("k")), false),
            (delete("kept"), false),
        ];
        assert_eq!(
            coalesce(ops),
            vec![
                delete("old"),
                put("kept", 2),
                Op::Put(Table::Bodies, key("new"), vec![9]),
                Op::DeletePrefix(Table::Queued, key("k")),
                delete("kept"),
            ]
        );
    }

    /// A backend whose disk is full.
    struct Full;

    impl Backend for Full {
        fn write(&mut self, _: &[Op]) -> Result<(), StoreError> {
            Err(StoreError::Backend {
                path: "mem".into(),
                message: "No space left on device".into(),
            })
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn scan(&self, _: Table, _: &mut Visit<'_>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_never_counted_as_durable() {
        let store = Store::start(
            Box::new(Full),
            SyncMode::Always,
            Duration::from_millis(100),
            Path::new("mem"),
            0,
        )
        .unwrap();
        let mut durable = store.durable();
        let ticket = store.submit(put(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.failed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(store.failed());
        // Waiters are woken to see the failure, and the ticket never becomes durable.
        assert!(durable.has_changed().unwrap());
        assert!(*durable.borrow_and_update() < ticket);
        store.submit(put(2));
        store.close();
        assert!(*store.durable().borrow() < ticket);
    }

    #[test]
    fn a_sync_mode_is_read_from_its_name() {
        assert_eq!("always".parse(), Ok(SyncMode::Always));
        assert_eq!("never".parse(), Ok(SyncMode::Never));
        assert!("sometimes".parse::<SyncMode>().is_err());
    }
}
