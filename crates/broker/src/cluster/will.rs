//! Wills across the cluster: each node records the wills of its connected clients in the
//! key-value bucket `<cluster>_wills` (key: the client id's tokens; value: the node's
//! instance, the will delay and the message). A node publishes its clients' wills itself as
//! usual and then deletes their records. When a node dies, its records stay: every node
//! watches the bucket, and once a record's instance has had no heartbeat for three periods,
//! the first node to delete it (a delete that expects the record's revision, so exactly one
//! succeeds) publishes the will after its delay, unless the client has connected again
//! (to any node) meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Link, subject};
use crate::broker::Shared;
use crate::message::Message;
use crate::store::record::{decode_message, encode_message};

/// A change of a will record.
pub(super) enum WillOp {
    /// A connected client's will, and its delay in seconds.
    Set(String, Arc<Message>, u32),
    /// The will was published, cancelled or replaced by nothing.
    Clear(String),
}

impl Link {
    /// Records the will of `client_id`, now connected to this node (or forgets an older one
    /// when `will` is `None`).
    pub fn will_connected(&self, client_id: &str, will: Option<(Arc<Message>, u32)>) {
        let op = match will {
            Some((msg, delay)) => WillOp::Set(client_id.to_owned(), msg, delay),
            None => WillOp::Clear(client_id.to_owned()),
        };
        let _ = self.wills_out.send(op);
    }

    /// Forgets `client_id`'s will record (published or discarded here), unless another
    /// node recorded one since.
    pub fn will_done(&self, client_id: &str) {
        let _ = self.wills_out.send(WillOp::Clear(client_id.to_owned()));
    }
}

fn encode(instance: u64, delay: u32, msg: &Message) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u64(instance);
    b.put_u32(delay);
    encode_message(msg, &mut b);
    b.freeze()
}

fn instance_of(value: &[u8]) -> Option<u64> {
    let mut v = value;
    (v.remaining() >= 8).then(|| v.get_u64())
}

fn decode(mut value: Bytes) -> Option<(u64, u32, Message)> {
    if value.remaining() < 12 {
        return None;
    }
    let instance = value.get_u64();
    let delay = value.get_u32();
    Some((instance, delay, decode_message(&value)?))
}

/// Writes this node's will records, in order. At shutdown it goes on for a moment: the
/// connections closing publish their wills and the records must go, or another node would
/// publish them again once this one is gone.
pub(super) async fn writer(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<WillOp>,
    cancel: CancellationToken,
) {
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = cancel.cancelled() => break,
        };
        let Some(op) = op else { return };
        apply(&link, op, &cancel).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(Some(op))) = tokio::time::timeout_at(
        until,
        tokio::time::timeout(Duration::from_millis(300), rx.recv()),
    )
    .await
    {
        apply(&link, op, &cancel).await;
    }
}

async fn apply(link: &Link, op: WillOp, cancel: &CancellationToken) {
    match op {
        WillOp::Set(client_id, msg, delay) => {
            let key = subject::topic_tokens(&client_id);
            let value = encode(link.instance, delay, &msg);
            let kv = &link.wills_kv;
            let _ = super::persist("will", cancel, || async {
                kv.put(key.as_str(), value.clone())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        }
        WillOp::Clear(client_id) => {
            let key = subject::topic_tokens(&client_id);
            if let Ok(Some(e)) = link.wills_kv.entry(key.clone()).await
                && e.operation == kv::Operation::Put
                && instance_of(&e.value) == Some(link.instance)
            {
                let _ = link
                    .wills_kv
                    .delete_expect_revision(&key, Some(e.revision))
                    .await;
            }
        }
    }
}

/// A will record as watched: its instance, revision, and when this node first saw it.
struct Seen {
    instance: u64,
    revision: u64,
    since: Instant,
}

/// Watches the will records and publishes those of nodes that died.
pub(super) async fn reaper(shared: Arc<Shared>, link: Arc<Link>) {
    let mut records: HashMap<String, Seen> = HashMap::new();
    let period = link.config.heartbeat();
    let silence = period * 3;
    'watch: loop {
        let watch = tokio::select! {
            w = link.wills_kv.watch_with_history(">") => w,
            _ = shared.shutdown.cancelled() => return,
        };
        let Ok(mut watch) = watch else {
            tokio::select! {
                _ = tokio::time::sleep(period) => continue,
                _ = shared.shutdown.cancelled() => return,
            }
        };
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                e = watch.next() => match e {
                    Some(Ok(e)) => match e.operation {
                        kv::Operation::Put => {
                            if let Some(instance) = instance_of(&e.value) {
                                records.insert(e.key.clone(), Seen { instance, revision: e.revision, since: Instant::now() });
                            }
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            records.remove(&e.key);
                        }
                    },
                    _ => continue 'watch,
                },
                _ = tick.tick() => reap(&shared, &link, &mut records, silence).await,
                _ = shared.shutdown.cancelled() => return,
            }
        }
    }
}

async fn reap(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    records: &mut HashMap<String, Seen>,
    silence: Duration,
) {
    let live: Vec<u64> = link.members().iter().map(|m| m.instance).collect();
    let orphans: Vec<(String, u64)> = records
        .iter()
        .filter(|(_, s)| !live.contains(&s.instance) && s.since.elapsed() >= silence)
        .map(|(k, s)| (k.clone(), s.revision))
        .collect();
    for (key, revision) in orphans {
        records.remove(&key);
        // Read before deleting: the delete's success makes this node the one to publish.
        let Ok(Some(entry)) = link.wills_kv.entry(key.clone()).await else {
            continue;
        };
        if entry.revision != revision || entry.operation != kv::Operation::Put {
            continue;
        }
        let claimed = link
            .wills_kv
            .delete_expect_revision(&key, Some(revision))
            .await
            .is_ok();
        let (true, Some((instance, delay, msg))) = (claimed, decode(entry.value)) else {
            continue;
        };
        let Some(client_id) = subject::tokens_topic(&key) else {
            continue;
        };
        info!(
            client_id,
            delay, "cluster: the client's node is gone; its will is published from here"
        );
        let (shared, link) = (shared.clone(), link.clone());
        shared.tracker.clone().spawn(async move {
            if delay > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                if link.client_is_back(&client_id, instance).await {
                    debug!(
                        client_id,
                        "cluster: the client came back; its will is not published"
                    );
                    return;
                }
            }
            shared.publish(Arc::new(msg), &mut Vec::new());
        });
    }
}

impl Link {
    /// Whether `client_id`'s session is owned by a live node other than the dead
    /// `instance` (the client connected again).
    async fn client_is_back(&self, client_id: &str, instance: u64) -> bool {
        let key = subject::topic_tokens(client_id);
        let Ok(Some(e)) = self.sessions_kv.entry(key).await else {
            return false;
        };
        let owner = std::str::from_utf8(&e.value).unwrap_or("");
        let owner_instance = owner.split(' ').nth(1).and_then(|i| i.parse::<u64>().ok());
        e.operation == kv::Operation::Put
            && owner_instance
                .is_some_and(|i| i != instance && self.members().iter().any(|m| m.instance == i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagitta_proto::{QoS, TopicName};

    #[test]
    fn records_round_trip() {
        let msg = Message::new(
            TopicName::new("will/t".to_owned()).unwrap(),
            Bytes::from_static(b"gone"),
            QoS::AtLeastOnce,
            true,
        );
        let v = encode(42, 7, &msg);
        assert_eq!(instance_of(&v), Some(42));
        let (i, d, m) = decode(v).unwrap();
        assert_eq!(
            (i, d, &*m.topic, &m.payload[..], m.retain),
            (42, 7, "will/t", &b"gone"[..], true)
        );
        assert!(decode(Bytes::from_static(b"short")).is_none());
    }
}
