//! The changes the broker makes to its store, one function per event, each turning the
//! event into the [`Op`]s of the record format.

use std::sync::atomic::Ordering;

use sagitta_proto::session::Stage;
use sagitta_proto::{PacketId, SubscriptionId, SubscriptionOptions, TopicFilter};

use super::record::{
    body_key, client_prefix, encode_queued, encode_session, encode_subscription, encode_will,
    message_value, qos2_key, queued_key, subscription_key, wall_ms,
};
use super::{Op, Store, Table};
use crate::message::{Delivery, Message};

impl Store {
    /// A retained message was set (or deleted, with an empty payload).
    pub fn retained(&self, msg: &Message) -> u64 {
        let key = msg.topic.as_str().as_bytes().to_vec();
        if msg.payload.is_empty() {
            self.submit(Op::Delete(Table::Retained, key))
        } else {
            self.submit(Op::Put(Table::Retained, key, message_value(msg)))
        }
    }

    /// A retained message was deleted by an operator.
    pub fn retained_deleted(&self, topic: &str) -> u64 {
        self.submit(Op::Delete(Table::Retained, topic.as_bytes().to_vec()))
    }

    /// A persistent session was claimed by a connection (`disconnected_ms` 0) or left by it.
    pub fn session(&self, client_id: &str, expiry: u32, disconnected_ms: u64) {
        self.submit(Op::Put(
            Table::Sessions,
            client_id.as_bytes().to_vec(),
            encode_session(expiry, disconnected_ms),
        ));
    }

    /// A persistent session's client disconnected now.
    pub fn session_left(&self, client_id: &str, expiry: u32) {
        self.session(client_id, expiry, wall_ms());
    }

    /// A session ended: everything of it goes.
    pub fn session_ended(&self, client_id: &str) {
        self.submit_all(session_ops(client_id));
    }

    /// A subscription was made or replaced.
    pub fn subscribed(
        &self,
        client_id: &str,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
        id: Option<SubscriptionId>,
    ) {
        self.submit(Op::Put(
            Table::Subscriptions,
            subscription_key(client_id, filter),
            encode_subscription(options, id),
        ));
    }

    /// A subscription was removed.
    pub fn unsubscribed(&self, client_id: &str, filter: &TopicFilter) {
        self.submit(Op::Delete(
            Table::Subscriptions,
            subscription_key(client_id, filter),
        ));
    }

    /// Gives `msg` a body in the store if it has none yet; the caller then holds one
    /// reference on it, released with [`Store::release_body`]. Returns the op that writes the
    /// body, if it is new.
    pub fn hold_body(&self, msg: &Message) -> Option<Op> {
        if msg.stored.id.load(Ordering::Acquire) != 0 {
            msg.stored.refs.fetch_add(1, Ordering::AcqRel);
            return None;
        }
        let id = self.next_id();
        msg.stored.refs.store(1, Ordering::Release);
        msg.stored.id.store(id, Ordering::Release);
        Some(Op::Put(Table::Bodies, body_key(id), message_value(msg)))
    }

    /// Drops one reference on `msg`'s body; the last one deletes it.
    pub fn release_body(&self, msg: &Message) -> Option<Op> {
        let id = msg.stored.id.load(Ordering::Acquire);
        (id != 0 && msg.stored.refs.fetch_sub(1, Ordering::AcqRel) == 1)
            .then(|| Op::Delete(Table::Bodies, body_key(id)))
    }

    /// A message was queued for a persistent session (`body` is the body write if new):
    /// `d.seq` is its sequence number. Called under the mailbox lock.
    pub fn queued(&self, client_id: &str, d: &Delivery, body: Option<Op>) {
        msg_ref(&d.msg);
        let id = d.msg.stored.id.load(Ordering::Acquire);
        let put = Op::Put(
            Table::Queued,
            queued_key(client_id, d.seq),
            encode_queued(id, d.qos, d.retain, &d.sub_ids, None),
        );
        match body {
            Some(body) => self.submit_new([body, put]),
            None => self.submit_new([put]),
        };
    }

    /// A stored message was put in flight with `id`, or moved on to `stage`.
    pub fn in_flight(&self, client_id: &str, d: &Delivery, id: PacketId, stage: Stage) {
        let body = d.msg.stored.id.load(Ordering::Acquire);
        self.submit(Op::Put(
            Table::Queued,
            queued_key(client_id, d.seq),
            encode_queued(body, d.qos, d.retain, &d.sub_ids, Some((id, stage))),
        ));
    }

    /// A stored message is done with (acknowledged, expired, dropped or its session ended).
    pub fn done(&self, client_id: &str, d: &Delivery) {
        let delete = Op::Delete(Table::Queued, queued_key(client_id, d.seq));
        match self.release_body(&d.msg) {
            Some(body) => self.submit_all([delete, body]),
            None => self.submit(delete),
        };
    }

    /// An inbound QoS 2 packet id now awaits PUBREL.
    pub fn qos2_received(&self, client_id: &str, id: PacketId) {
        self.submit(Op::Put(Table::Qos2, qos2_key(client_id, id), vec![1]));
    }

    /// An inbound QoS 2 packet id was released.
    pub fn qos2_released(&self, client_id: &str, id: PacketId) {
        self.submit(Op::Delete(Table::Qos2, qos2_key(client_id, id)));
    }

    /// A will waits for its delay until `publish_at_ms` (wall clock).
    pub fn will_delayed(&self, client_id: &str, msg: &Message, publish_at_ms: u64) {
        self.submit(Op::Put(
            Table::Wills,
            client_id.as_bytes().to_vec(),
            encode_will(msg, publish_at_ms),
        ));
    }

    /// A delayed will was published or cancelled.
    pub fn will_gone(&self, client_id: &str) {
        self.submit(Op::Delete(Table::Wills, client_id.as_bytes().to_vec()));
    }
}

/// Counts one more queued message pointing at `msg`'s body.
fn msg_ref(msg: &Message) {
    msg.stored.refs.fetch_add(1, Ordering::AcqRel);
}

/// The ops that delete everything of a session.
pub(super) fn session_ops(client_id: &str) -> [Op; 5] {
    let prefix = client_prefix(client_id);
    [
        Op::Delete(Table::Sessions, client_id.as_bytes().to_vec()),
        Op::Delete(Table::Wills, client_id.as_bytes().to_vec()),
        Op::DeletePrefix(Table::Subscriptions, prefix.clone()),
        Op::DeletePrefix(Table::Queued, prefix.clone()),
        Op::DeletePrefix(Table::Qos2, prefix),
    ]
}
