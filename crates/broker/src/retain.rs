//! Retained messages, stored in a tree by topic level so that a wildcard subscription visits
//! only the branches its filter can match.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::message::{FastMap, Message};
use crate::store::Store;

#[derive(Default)]
struct Node {
    children: FastMap<Box<str>, Node>,
    msg: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.msg.is_none()
    }
}

/// The retained-message store.
#[derive(Default)]
pub(crate) struct RetainStore {
    root: RwLock<Node>,
    count: AtomicUsize,
}

impl RetainStore {
    /// Stores `msg` as the retained message of its topic, or deletes the retained message if
    /// the payload is empty [MQTT-3.3.1-6] [MQTT-3.3.1-7].
    /// With a `store`, the change is written to it (not for `$SYS` topics, which the broker
    /// makes afresh); returns whether it was.
    pub fn set(&self, msg: Arc<Message>, store: Option<&Store>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        // Under the lock, so that the store sees changes of one topic in the same order.
        let stored = match store {
            Some(store) if !msg.topic.starts_with("$SYS") => {
                store.retained(&msg);
                true
            }
            _ => false,
        };
        self.set_locked(&mut root, msg);
        stored
    }

    /// Deletes the retained message of `topic` (an exact topic name), from the store too.
    /// Returns whether there was one.
    pub fn remove(&self, topic: &str, store: Option<&Store>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = topic.split('/').collect();
        if !remove(&mut root, &levels) {
            return false;
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(store) = store.filter(|_| !topic.starts_with("$SYS")) {
            store.retained_deleted(topic);
        }
        true
    }

    /// Puts back a retained message read from the store.
    pub fn restore(&self, msg: Arc<Message>) {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        self.set_locked(&mut root, msg);
    }

    fn set_locked(&self, root: &mut Node, msg: Arc<Message>) {
        let topic = msg.topic.as_str().to_owned();
        if msg.payload.is_empty() {
            let levels: Vec<&str> = topic.split('/').collect();
            if remove(root, &levels) {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        let mut node = root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.msg.replace(msg).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The unexpired retained messages whose topics match `filter` (a plain filter, without
    /// any `$share/` prefix).
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&root, &levels, true, &mut out);
        out.retain(|m| !m.is_expired(now));
        out
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.msg.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn walk(node: &Node, levels: &[&str], top: bool, out: &mut Vec<Arc<Message>>) {
    let Some((first, rest)) = levels.split_first() else {
        out.extend(node.msg.clone());
        return;
    };
    // Wildcards at the first level skip topics starting with '$' [MQTT-4.7.2-1].
    let visible = |name: &str| !(top && name.starts_with('$'));
    match *first {
        "#" => {
            // "a/#" matches "a" itself.
            if !top {
                out.extend(node.msg.clone());
            }
            for (name, child) in &node.children {
                if visible(name) {
                    everything(child, out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    walk(child, rest, false, out);
                }
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                walk(child, rest, false, out);
            }
        }
    }
}

fn everything(node: &Node, out: &mut Vec<Arc<Message>>) {
    out.extend(node.msg.clone());
    for child in node.children.values() {
        everything(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sagitta_proto::{QoS, TopicName};

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::new(topic).unwrap(),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
        ))
    }

    fn topics(store: &RetainStore, filter: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn set_replace_delete_and_match() {
        let s = RetainStore::default();
        for t in ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "/lead"] {
            s.set(msg(t, "1"), None);
        }
        s.set(msg("a/b", "2"), None);
        assert_eq!(s.len(), 6);
        assert_eq!(topics(&s, "#"), ["/lead", "a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&s, "a/+"), ["a/b", "a/c"]);
        assert_eq!(topics(&s, "+"), ["a"]);
        assert_eq!(topics(&s, "+/lead"), ["/lead"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&s, "+/x"), Vec::<String>::new());
        assert_eq!(&s.matching("a/b", Instant::now())[0].payload[..], b"2");
        s.set(msg("a/b", ""), None);
        assert_eq!(s.len(), 5);
        assert_eq!(topics(&s, "a/+"), ["a/c"]);
        s.set(msg("nothing/here", ""), None);
        assert_eq!(s.len(), 5);
        assert!(s.remove("a/c", None));
        assert!(!s.remove("a/c", None));
        assert!(!s.remove("a/+", None));
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/+"), Vec::<String>::new());
    }
}
