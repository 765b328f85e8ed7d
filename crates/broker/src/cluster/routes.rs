//! Which topics other nodes want: each node records the filters its sessions hold in the
//! key-value bucket `<cluster>_routes` (key `<node>.<hash>`, value: `p` or `g` for a plain or
//! shared subscription, then the filter), and every node keeps the whole bucket in a tree of
//! filters. A message goes to NATS only if some other node holds a matching filter, or any
//! node (this one included) a shared group on one (shared groups are served through NATS):
//! traffic that stays on its node costs no NATS or JetStream work.
//!
//! The record is written before the SUBACK is sent; other nodes see it a few milliseconds
//! later (their watch of the bucket), so a message published elsewhere in that window may
//! miss the new subscription, as it would have if it had been published just before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{Key, Link};
use crate::broker::Shared;

/// A tree of topic filters; each filter counts the reasons to forward its messages.
#[derive(Default)]
pub(crate) struct FilterTree {
    children: HashMap<Box<str>, FilterTree>,
    here: usize,
}

impl FilterTree {
    fn add(&mut self, filter: &str) {
        let mut node = self;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.here += 1;
    }

    fn remove(&mut self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove(self, &levels);
    }

    /// Whether some filter in the tree matches `topic` (wildcards in the first level do not
    /// match topics starting with `$`).
    pub fn matches(&self, topic: &str) -> bool {
        matches(self, Some(topic), topic.starts_with('$'))
    }
}

fn remove(node: &mut FilterTree, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        node.here = node.here.saturating_sub(1);
        return node.here == 0 && node.children.is_empty();
    };
    if let Some(child) = node.children.get_mut(*first)
        && remove(child, rest)
    {
        node.children.remove(*first);
    }
    node.here == 0 && node.children.is_empty()
}

/// Walks `rest` (the topic's remaining levels, `None` past the last) without allocating:
/// this runs for every message a node receives.
fn matches(node: &FilterTree, rest: Option<&str>, system: bool) -> bool {
    let Some(rest) = rest else {
        return node.here > 0 || node.children.get("#").is_some_and(|h| h.here > 0);
    };
    let (level, next) = match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    };
    if node
        .children
        .get(level)
        .is_some_and(|c| matches(c, next, false))
    {
        return true;
    }
    if system {
        return false;
    }
    node.children
        .get("+")
        .is_some_and(|c| matches(c, next, false))
        || node.children.get("#").is_some_and(|h| h.here > 0)
}

/// The bucket key of this node's record of `key`.
pub(super) fn record_key(node: &str, key: &Key) -> String {
    let mut h = Sha256::new();
    match key {
        Key::Plain(f) => {
            h.update(b"p");
            h.update(f.as_bytes());
        }
        Key::Group(g, f) => {
            h.update(b"g");
            h.update(g.as_bytes());
            h.update([0]);
            h.update(f.as_bytes());
        }
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(node.len() + 33);
    out.push_str(node);
    out.push('.');
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The record's value.
pub(super) fn record_value(key: &Key) -> Bytes {
    let (kind, filter) = match key {
        Key::Plain(f) => ('p', f),
        Key::Group(_, f) => ('g', f),
    };
    Bytes::from(format!("{kind}{filter}"))
}

/// A record as kept: the filter, and whether it counts as a reason to forward.
struct Record {
    filter: String,
    counts: bool,
}

/// Whether a record of `node` with `value` is a reason for this node to forward.
fn parse(link: &Link, node: &str, value: &[u8]) -> Option<Record> {
    let s = std::str::from_utf8(value).ok()?;
    let (kind, filter) = s.split_at_checked(1)?;
    let counts = match kind {
        "g" => true,
        "p" => node != link.config.node,
        _ => return None,
    };
    Some(Record {
        filter: filter.to_owned(),
        counts,
    })
}

/// Keeps `link.remote` equal to the bucket. Signals `loaded` once the records already there
/// are in.
pub(super) async fn watch(shared: Arc<Shared>, link: Arc<Link>, loaded: oneshot::Sender<()>) {
    let mut loaded = Some(loaded);
    loop {
        let empty = link.routes_kv.status().await.is_ok_and(|s| s.values() == 0);
        let watch = tokio::select! {
            w = link.routes_kv.watch_with_history(">") => w,
            _ = shared.shutdown.cancelled() => return,
        };
        let Ok(mut watch) = watch else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shared.shutdown.cancelled() => return,
            }
        };
        // Built afresh from the history, then swapped in: records deleted while no watch ran
        // are gone.
        let mut records: HashMap<String, Record> = HashMap::new();
        let mut tree = FilterTree::default();
        let mut current = empty;
        if current {
            *link.remote.write().unwrap_or_else(|e| e.into_inner()) = FilterTree::default();
            if let Some(tx) = loaded.take() {
                let _ = tx.send(());
            }
        }
        loop {
            let entry = tokio::select! {
                e = watch.next() => e,
                _ = shared.shutdown.cancelled() => return,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    warn!(error = %e, "cluster: the routes bucket's watch failed; watching again");
                    break;
                }
                None => break,
            };
            let node = entry.key.split('.').next().unwrap_or("").to_owned();
            let apply = |tree: &mut FilterTree, records: &mut HashMap<String, Record>| {
                if let Some(old) = records.remove(&entry.key)
                    && old.counts
                {
                    tree.remove(&old.filter);
                }
                if entry.operation == kv::Operation::Put
                    && let Some(r) = parse(&link, &node, &entry.value)
                {
                    if r.counts {
                        tree.add(&r.filter);
                    }
                    records.insert(entry.key.clone(), r);
                }
            };
            if current {
                let mut live = link.remote.write().unwrap_or_else(|e| e.into_inner());
                apply(&mut live, &mut records);
                drop(live);
                link.applied.send_if_modified(|r| {
                    let newer = entry.revision > *r;
                    *r = (*r).max(entry.revision);
                    newer
                });
            } else {
                apply(&mut tree, &mut records);
                if entry.delta == 0 {
                    *link.remote.write().unwrap_or_else(|e| e.into_inner()) =
                        std::mem::take(&mut tree);
                    current = true;
                    link.applied.send_modify(|r| *r = (*r).max(entry.revision));
                    if let Some(tx) = loaded.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Waits (at most a second) until every other live node has applied the routes bucket up
/// to `revision`: a subscription's SUBACK waits for it, so that a message published on any
/// node after the SUBACK is forwarded to this one.
pub(super) async fn await_peers(link: &Link, revision: u64) {
    let peers = link
        .members()
        .iter()
        .filter(|m| m.node != link.config.node)
        .count();
    if peers == 0 {
        return;
    }
    let inbox = link.data.new_inbox();
    let Ok(mut replies) = link.data.subscribe(inbox.clone()).await else {
        return;
    };
    let subject = format!("{}.r.sync", link.config.name);
    if link
        .data
        .publish_with_reply(subject, inbox, Bytes::from(revision.to_string()))
        .await
        .is_err()
    {
        return;
    }
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while answered < peers {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(_)) => answered += 1,
            _ => {
                debug!(
                    answered,
                    peers, "cluster: not every node confirmed a new route in time"
                );
                break;
            }
        }
    }
}

/// Answers other nodes' [`await_peers`] once this node has applied their route.
pub(super) async fn serve_sync(shared: Arc<Shared>, link: Arc<Link>) {
    let subject = format!("{}.r.sync", link.config.name);
    let Ok(mut requests) = link.data.subscribe(subject).await else {
        warn!("cluster: cannot answer route confirmations");
        return;
    };
    loop {
        let m = tokio::select! {
            m = requests.next() => m,
            _ = shared.shutdown.cancelled() => return,
        };
        let Some(m) = m else { return };
        let (Some(reply), Some(revision)) = (
            m.reply,
            std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|r| r.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let link = link.clone();
        tokio::spawn(async move {
            let mut applied = link.applied.subscribe();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), applied.wait_for(|r| *r >= revision))
                    .await;
            let _ = link.data.publish(reply, Bytes::new()).await;
        });
    }
}

/// Deletes the records a previous run of this node left (its sessions' filters are recorded
/// again as they come back).
pub(super) async fn clear_own(link: &Link) {
    let prefix = format!("{}.", link.config.node);
    let Ok(keys) = link.routes_kv.keys().await else {
        return;
    };
    let keys: Vec<String> = keys
        .filter_map(|k| async move { k.ok() })
        .filter(|k| std::future::ready(k.starts_with(&prefix)))
        .collect()
        .await;
    for k in &keys {
        let _ = link.routes_kv.delete(k).await;
    }
    if !keys.is_empty() {
        debug!(
            records = keys.len(),
            "cluster: routes of this node's previous run removed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_matches_like_mqtt() {
        let mut t = FilterTree::default();
        assert!(!t.matches("a"));
        t.add("a/#");
        assert!(t.matches("a"));
        assert!(t.matches("a/b/c"));
        assert!(!t.matches("b"));
        t.add("+/x");
        assert!(t.matches("q/x"));
        assert!(
            !t.matches("$q/x"),
            "wildcards at the first level skip `$` topics"
        );
        t.add("#");
        assert!(t.matches("anything/at/all"));
        assert!(!t.matches("$SYS/x"));
        t.add("$SYS/#");
        assert!(t.matches("$SYS/x"));
        t.remove("#");
        t.remove("$SYS/#");
        assert!(!t.matches("$SYS/x"));
        assert!(!t.matches("z"));
        // Counted: a filter added twice stays until removed twice.
        t.add("c");
        t.add("c");
        t.remove("c");
        assert!(t.matches("c"));
        t.remove("c");
        assert!(!t.matches("c"));
        t.remove("a/#");
        t.remove("+/x");
        assert!(t.children.is_empty(), "an emptied tree has no nodes left");
    }

    #[test]
    fn record_keys_are_per_node_and_kind() {
        let plain = Key::Plain("a/+".into());
        let group = Key::Group("g".into(), "a/+".into());
        assert!(record_key("n1", &plain).starts_with("n1."));
        assert_ne!(record_key("n1", &plain), record_key("n1", &group));
        assert_ne!(record_key("n1", &plain), record_key("n2", &plain));
        assert_eq!(&record_value(&group)[..], b"ga/+");
    }
}
