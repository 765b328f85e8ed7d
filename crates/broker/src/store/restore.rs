//! Puts what the store holds back into a starting broker: retained messages, sessions with
//! their subscriptions, queues, in-flight windows and QoS 2 ids, expiry timers and delayed
//! wills. What expired while the broker was down is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::record::{Snapshot, secs_until_wall, wall_ms};
use super::{Op, Table};
use crate::broker::Shared;
use crate::message::{ClientId, Delivery};
use crate::session::{NEVER_EXPIRES, SessionEntry};

/// Restores `snapshot` into `shared` (whose store it came from).
pub(crate) fn restore(shared: &Arc<Shared>, snapshot: Snapshot) {
    let Some(store) = &shared.store else {
        return;
    };
    let started = Instant::now();
    let Snapshot {
        retained,
        sessions,
        bodies,
        stale,
    } = snapshot;
    let retained_count = retained.len();
    for msg in retained {
        shared.retained.restore(Arc::new(msg));
    }
    let mut cleanup = stale;
    let now_ms = wall_ms();
    let (mut restored, mut expired, mut queued) = (0usize, 0usize, 0usize);
    for s in sessions {
        // A session whose client left before the broker stopped counts from then; one that
        // was connected when it stopped counts from now.
        let left_ms = if s.disconnected_ms == 0 {
            now_ms
        } else {
            s.disconnected_ms
        };
        let remaining = if s.expiry == NEVER_EXPIRES {
            None
        } else {
            let ends = left_ms.saturating_add(u64::from(s.expiry) * 1000);
            Some(secs_until_wall(ends))
        };
        if remaining == Some(0) {
            expired += 1;
            cleanup.extend(super::broker_ops::session_ops(&s.client_id));
            continue;
        }
        let client_id: ClientId = s.client_id.as_str().into();
        let entry = Arc::new(SessionEntry::new(
            client_id.clone(),
            shared.config.max_queued_messages,
        ));
        entry.set_persistent(true);
        let Ok(mut state) = entry.state.try_lock() else {
            warn!(client_id = %client_id, "session state busy while restoring; skipped");
            continue;
        };
        state.exists = true;
        state.expiry = s.expiry;
        for (filter, options, id) in s.subscriptions {
            shared
                .router
                .subscribe_then(&entry, &filter, options, id, |_| ());
            state.subscriptions.insert(filter, (options, id));
        }
        let mut waiting = Vec::new();
        for d in s.queued {
            let Some(msg) = bodies.get(&d.body) else {
                continue;
            };
            msg.stored.id.store(d.body, Ordering::Release);
            msg.stored.refs.fetch_add(1, Ordering::AcqRel);
            let delivery = Delivery {
                msg: msg.clone(),
                qos: d.qos,
                retain: d.retain,
                sub_ids: d.sub_ids,
                seq: d.seq,
                timed: false,
            };
            queued += 1;
            match d.inflight {
                Some((id, stage)) => {
                    if let Err(e) = state.outbound.restore(id, stage, delivery.clone()) {
                        warn!(client_id = %client_id, error = %e, "duplicate in-flight packet id in the store; sent as a new message");
                        waiting.push(delivery);
                    }
                }
                None => waiting.push(delivery),
            }
        }
        entry.restore_queue(waiting);
        entry.set_inflight(state.outbound.len());
        entry.set_expiry(s.expiry);
        state.restored_qos2 = s.qos2.iter().map(|id| id.get()).collect();
        for id in s.qos2 {
            state.inbound.restore(id);
        }
        state.will_stored = s.will.is_some();
        drop(state);
        shared.sessions.restore(entry.clone());
        if let Some((msg, at_ms)) = s.will {
            shared.schedule_will(entry.clone(), 0, msg, secs_until_wall(at_ms));
        }
        if let Some(secs) = remaining {
            shared.schedule_expiry(entry, 0, secs);
        }
        restored += 1;
    }
    // Bodies only expired sessions pointed at.
    for (id, msg) in &bodies {
        if msg.stored.refs.load(Ordering::Acquire) == 0 {
            cleanup.push(Op::Delete(Table::Bodies, super::record::body_key(*id)));
        }
    }
    if !cleanup.is_empty() {
        store.submit_all(cleanup);
    }
    info!(
        retained = retained_count,
        sessions = restored,
        expired_sessions = expired,
        queued_messages = queued,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state restored from the store"
    );
}
