//! Sessions across the cluster: each client id has one owner node at a time, recorded in the
//! key-value bucket `<cluster>_sessions` (value: `<node> <instance>`). A client connecting
//! to node B whose session is owned by node A makes B ask A (NATS request to
//! `<cluster>.s.<A>.take`): A disconnects the client's connection there (DISCONNECT 0x8E,
//! Session taken over), hands over the session (subscriptions, in-flight messages with their
//! packet ids and stages, queued messages, QoS 2 ids awaiting PUBREL) and forgets it; B then
//! records itself as the owner with a compare-and-set on the key's revision, so that two
//! nodes claiming at once end with one owner.
//!
//! A session whose owner node is gone (no heartbeat) cannot be handed over: the client
//! starts a new session on its new node.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use sagitta_proto::session::Stage;
use sagitta_proto::{PacketId, QoS, SubscriptionId, SubscriptionOptions, TopicFilter};
use tracing::{debug, info, warn};

use super::{Link, subject};
use crate::broker::Shared;
use crate::message::Delivery;
use crate::session::{Kick, SessionEntry, SessionState};
use crate::store::record::{
    decode_message, decode_queued, decode_subscription, encode_message, encode_queued,
    encode_subscription,
};

/// The format's version byte.
const HANDOFF_VERSION: u8 = 1;

/// How long a node waits for the session's previous owner to hand it over.
const TAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A session handed over by another node.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// In order: the in-flight ones (with packet id and stage) first, then the queued ones.
    deliveries: Vec<(Delivery, Option<(PacketId, Stage)>)>,
    qos2: Vec<PacketId>,
}

/// Encodes what `state` and `entry`'s queue hold (without changing them).
fn encode(state: &SessionState, entry: &SessionEntry) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(HANDOFF_VERSION);
    b.put_u32(state.subscriptions.len() as u32);
    for (filter, (options, id)) in &state.subscriptions {
        let f = filter.as_str().as_bytes();
        b.put_u16(f.len() as u16);
        b.put_slice(f);
        b.put_slice(&encode_subscription(options, *id));
    }
    let inflight: Vec<(PacketId, Stage, Delivery)> = state
        .outbound
        .resend()
        .map(|(id, stage, d)| (id, stage, d.clone()))
        .collect();
    let queued = entry.queue_snapshot();
    b.put_u32((inflight.len() + queued.len()) as u32);
    let mut msg = BytesMut::new();
    let all = inflight
        .into_iter()
        .map(|(id, stage, d)| (d, Some((id, stage))))
        .chain(queued.into_iter().map(|d| (d, None)));
    for (d, flight) in all {
        let record = encode_queued(0, d.qos, d.retain, &d.sub_ids, flight);
        b.put_u16(record.len() as u16);
        b.put_slice(&record);
        encode_message(&d.msg, &mut msg);
        b.put_u32(msg.len() as u32);
        b.put_slice(&msg.split());
    }
    let qos2: Vec<u16> = state.inbound.pending().collect();
    b.put_u32(qos2.len() as u32);
    for id in qos2 {
        b.put_u16(id);
    }
    b.freeze()
}

/// Decodes [`encode`]'s bytes; `None` if they are not a handoff.
fn decode(mut b: Bytes) -> Option<Handoff> {
    fn take(b: &mut Bytes, n: usize) -> Option<Bytes> {
        (b.remaining() >= n).then(|| b.split_to(n))
    }
    if b.remaining() < 1 || b.get_u8() != HANDOFF_VERSION {
        return None;
    }
    let mut h = Handoff::default();
    let n = take(&mut b, 4)?.get_u32();
    for _ in 0..n {
        let len = usize::from(take(&mut b, 2)?.get_u16());
        let filter = take(&mut b, len)?;
        let filter = TopicFilter::new(std::str::from_utf8(&filter).ok()?.to_owned()).ok()?;
        let (options, id) = decode_subscription(&take(&mut b, 6)?)?;
        h.subscriptions.push((filter, options, id));
    }
    let n = take(&mut b, 4)?.get_u32();
    for _ in 0..n {
        let len = usize::from(take(&mut b, 2)?.get_u16());
        let record = decode_queued(0, &take(&mut b, len)?)?;
        let len = take(&mut b, 4)?.get_u32() as usize;
        let msg = decode_message(&take(&mut b, len)?)?;
        let d = Delivery {
            msg: Arc::new(msg),
            qos: record.qos,
            retain: record.retain,
            sub_ids: record.sub_ids,
            seq: 0,
            timed: false,
        };
        h.deliveries.push((d, record.inflight));
    }
    let n = take(&mut b, 4)?.get_u32();
    for _ in 0..n {
        h.qos2.push(PacketId::new(take(&mut b, 2)?.get_u16())?);
    }
    Some(h)
}

impl Link {
    fn owner_value(&self) -> Bytes {
        Bytes::from(format!("{} {}", self.config.node, self.instance))
    }

    fn take_subject(&self, node: &str) -> String {
        format!("{}.s.{node}.take", self.config.name)
    }

    /// Makes this node the owner of `client_id`'s session, taking the session over from
    /// the node that owns it. Returns the handed-over session, if any (`clean_start`: the
    /// previous owner only lets go). Without NATS the client is served from this node's own
    /// state, and a warning says so.
    pub async fn acquire(&self, client_id: &str, clean_start: bool) -> Option<Handoff> {
        let key = subject::topic_tokens(client_id);
        let mine = self.owner_value();
        let mut handoff = None;
        for _ in 0..5 {
            let entry = match self.sessions_kv.entry(key.clone()).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(client_id, error = %e, "cluster: session owner unknown (NATS); serving from this node's state");
                    return handoff;
                }
            };
            let claimed = match entry {
                None => self.sessions_kv.create(&key, mine.clone()).await.is_ok(),
                Some(e) => {
                    let owner = std::str::from_utf8(&e.value).unwrap_or("");
                    let node = owner.split(' ').next().unwrap_or("");
                    let live = e.operation == async_nats::jetstream::kv::Operation::Put;
                    if live && node == self.config.node && e.value == mine {
                        return handoff;
                    }
                    if live
                        && !node.is_empty()
                        && node != self.config.node
                        && let Some(h) = self.take_from(node, client_id, clean_start).await
                    {
                        handoff = Some(h);
                    }
                    self.sessions_kv
                        .update(&key, mine.clone(), e.revision)
                        .await
                        .is_ok()
                }
            };
            if claimed {
                return handoff;
            }
        }
        warn!(
            client_id,
            "cluster: could not record this node as the session's owner (claimed elsewhere at the same time, or JetStream unavailable)"
        );
        handoff
    }

    /// Asks `node` to hand over `client_id`'s session.
    async fn take_from(&self, node: &str, client_id: &str, clean_start: bool) -> Option<Handoff> {
        let alive = self.members().iter().any(|m| m.node == node);
        if !alive {
            info!(
                client_id,
                node, "cluster: the session's previous node is gone; a new session starts"
            );
            return None;
        }
        let mut req = BytesMut::with_capacity(client_id.len() + 1);
        req.put_u8(u8::from(clean_start));
        req.put_slice(client_id.as_bytes());
        let reply = tokio::time::timeout(
            TAKE_TIMEOUT,
            self.data.request(self.take_subject(node), req.freeze()),
        )
        .await;
        match reply {
            Ok(Ok(m)) if m.payload.is_empty() => None,
            Ok(Ok(m)) => {
                let h = decode(m.payload);
                if h.is_none() {
                    warn!(
                        client_id,
                        node,
                        "cluster: a session handoff that cannot be read; a new session starts"
                    );
                }
                h
            }
            Ok(Err(e)) => {
                info!(client_id, node, error = %e, "cluster: the session's previous node did not answer; a new session starts");
                None
            }
            Err(_) => {
                warn!(
                    client_id,
                    node,
                    "cluster: the session's previous node did not hand it over in time; a new session starts"
                );
                None
            }
        }
    }

    /// Forgets this node's ownership of `client_id`'s session (it ended), unless another
    /// node owns it by now.
    pub fn session_ended(&self, client_id: &str) {
        let _ = self.ended.send(client_id.to_owned());
    }
}

/// Deletes the ownership records of sessions that ended on this node.
pub(super) async fn ended_loop(
    link: Arc<Link>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mine = link.owner_value();
    loop {
        let client_id = tokio::select! {
            c = rx.recv() => c,
            _ = cancel.cancelled() => return,
        };
        let Some(client_id) = client_id else { return };
        let key = subject::topic_tokens(&client_id);
        if let Ok(Some(e)) = link.sessions_kv.entry(key.clone()).await
            && e.value == mine
        {
            let _ = link
                .sessions_kv
                .delete_expect_revision(&key, Some(e.revision))
                .await;
        }
    }
}

/// After a restart: sessions read from this node's store whose client connected to another
/// node meanwhile (the bucket names another owner) are ended here; those nobody claimed are
/// recorded as this node's.
pub(super) async fn reconcile(shared: Arc<Shared>, link: Arc<Link>) {
    let mine = link.owner_value();
    let (mut kept, mut dropped) = (0usize, 0usize);
    for entry in shared.sessions.all() {
        if shared.shutdown.is_cancelled() {
            return;
        }
        if entry.is_connected() || crate::bridge::is_bridge_id(&entry.client_id) {
            continue;
        }
        let key = subject::topic_tokens(&entry.client_id);
        let owner = match link.sessions_kv.entry(key.clone()).await {
            Ok(e) => e,
            Err(_) => continue,
        };
        let elsewhere = owner.as_ref().is_some_and(|e| {
            e.operation == async_nats::jetstream::kv::Operation::Put
                && std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|v| v.split(' ').next())
                    .is_some_and(|node| node != link.config.node)
        });
        if elsewhere {
            if shared.sessions.remove_idle(&entry) {
                let mut state = entry.state.lock().await;
                shared.clear_session(&entry, &mut state);
                dropped += 1;
            }
        } else {
            match owner {
                Some(e) => {
                    let _ = link
                        .sessions_kv
                        .update(&key, mine.clone(), e.revision)
                        .await;
                }
                None => {
                    let _ = link.sessions_kv.create(&key, mine.clone()).await;
                }
            }
            kept += 1;
        }
    }
    if kept + dropped > 0 {
        info!(
            kept,
            dropped, "cluster: stored sessions checked against the cluster's owners"
        );
    }
}

/// Answers other nodes' requests for this node's sessions.
pub(super) async fn serve_takes(shared: Arc<Shared>, link: Arc<Link>) {
    let mut sub = match link
        .data
        .subscribe(link.take_subject(&link.config.node))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cluster: cannot serve session takeovers");
            return;
        }
    };
    loop {
        let m = tokio::select! {
            m = sub.next() => m,
            _ = shared.shutdown.cancelled() => return,
        };
        let Some(m) = m else { return };
        let Some(reply) = m.reply else { continue };
        let mut payload = m.payload;
        if payload.is_empty() {
            continue;
        }
        let clean_start = payload.get_u8() != 0;
        let Ok(client_id) = std::str::from_utf8(&payload).map(str::to_owned) else {
            continue;
        };
        let (shared, link) = (shared.clone(), link.clone());
        tokio::spawn(async move {
            let answer = give_up(&shared, &client_id, clean_start).await;
            if let Err(e) = link.data.publish(reply, answer).await {
                debug!(error = %e, "cluster: session handoff not sent");
            }
        });
    }
}

/// Lets go of `client_id`'s session on this node: its connection is told to go (taken
/// over), then the session is encoded (unless `clean_start`) and ended here.
async fn give_up(shared: &Shared, client_id: &str, clean_start: bool) -> Bytes {
    let Some(existing) = shared.sessions.get(client_id) else {
        return Bytes::new();
    };
    let conn_id = shared.next_conn_id();
    let kick = Arc::new(Kick::default());
    let (entry, _) = shared.sessions.claim(
        &existing.client_id,
        conn_id,
        kick.clone(),
        shared.config.max_queued_messages,
    );
    let state = tokio::time::timeout(TAKE_TIMEOUT, entry.state.clone().lock_owned()).await;
    let Ok(mut state) = state else {
        shared.sessions.release(&entry, conn_id, false);
        return Bytes::new();
    };
    if kick.is_kicked() {
        // A client of this node claimed it meanwhile: it stays here.
        shared.sessions.release(&entry, conn_id, false);
        return Bytes::new();
    }
    let out = if !clean_start && state.exists {
        encode(&state, &entry)
    } else {
        Bytes::new()
    };
    if std::mem::take(&mut state.will_stored)
        && let Some(store) = &shared.store
    {
        // The client is back (elsewhere) before its delayed will was published.
        store.will_gone(client_id);
    }
    shared.clear_session(&entry, &mut state);
    drop(state);
    shared.sessions.release(&entry, conn_id, true);
    info!(client_id, "cluster: session handed over to another node");
    out
}

/// Puts a handed-over session into `entry`'s state (claimed by a new connection, with
/// `state.exists` and the new expiry already set), writing it to the store if the session
/// is persistent.
pub(crate) fn import(
    shared: &Shared,
    entry: &Arc<SessionEntry>,
    state: &mut SessionState,
    h: Handoff,
) {
    let client_id = &entry.client_id;
    let store = shared.store.as_ref().filter(|_| entry.is_persistent());
    for (filter, options, id) in h.subscriptions {
        if let Some(store) = store {
            store.subscribed(client_id, &filter, &options, id);
        }
        shared
            .router
            .subscribe_then(entry, &filter, options, id, |_| ());
        state.subscriptions.insert(filter, (options, id));
    }
    let mut waiting = Vec::new();
    for (mut d, flight) in h.deliveries {
        if let Some(store) = store.filter(|_| d.qos != QoS::AtMostOnce) {
            let body = store.hold_body(&d.msg);
            d.seq = store.next_id();
            store.queued(client_id, &d, body);
            if let Some((id, stage)) = flight {
                store.in_flight(client_id, &d, id, stage);
            }
            if let Some(op) = store.release_body(&d.msg) {
                store.submit(op);
            }
        }
        match flight {
            Some((id, stage)) => {
                if state.outbound.restore(id, stage, d.clone()).is_err() {
                    waiting.push(d);
                }
            }
            None => waiting.push(d),
        }
    }
    entry.restore_queue(waiting);
    entry.set_inflight(state.outbound.len());
    for id in h.qos2 {
        if let Some(store) = store {
            store.qos2_received(client_id, id);
        }
        state.inbound.restore(id);
        state.restored_qos2.push(id.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use sagitta_proto::TopicName;

    #[test]
    fn a_session_survives_encoding() {
        let entry = SessionEntry::new("c".into(), 100);
        let mut state = SessionState {
            exists: true,
            ..SessionState::default()
        };
        let f = TopicFilter::new("a/+".to_owned()).unwrap();
        let opts = SubscriptionOptions::new(QoS::ExactlyOnce);
        state
            .subscriptions
            .insert(f.clone(), (opts, SubscriptionId::new(7)));
        let msg = |t: &str| {
            Arc::new(Message::new(
                TopicName::new(t.to_owned()).unwrap(),
                Bytes::from_static(b"p"),
                QoS::ExactlyOnce,
                false,
            ))
        };
        let d = |t: &str| Delivery {
            msg: msg(t),
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![],
            seq: 0,
            timed: false,
        };
        let id = state.outbound.insert(QoS::ExactlyOnce, d("a/1")).unwrap();
        entry.restore_queue([d("a/2")]);
        state.inbound.restore(PacketId::new(9).unwrap());
        let h = decode(encode(&state, &entry)).unwrap();
        assert_eq!(h.subscriptions.len(), 1);
        assert_eq!(h.subscriptions[0].0, f);
        assert_eq!(h.deliveries.len(), 2);
        assert_eq!(&*h.deliveries[0].0.msg.topic, "a/1");
        assert_eq!(h.deliveries[0].1, Some((id, Stage::AwaitingPubRec)));
        assert_eq!(&*h.deliveries[1].0.msg.topic, "a/2");
        assert_eq!(h.deliveries[1].1, None);
        assert_eq!(h.qos2, [PacketId::new(9).unwrap()]);
        assert!(decode(Bytes::from_static(b"\x01\x00\x00")).is_none());
    }
}
