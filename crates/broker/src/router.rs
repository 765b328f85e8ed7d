//! The subscription tree: topic filters by level, with the subscribers of each filter and its
//! shared-subscription groups. Publishers match against it from their own tasks under a read
//! lock; only SUBSCRIBE and UNSUBSCRIBE take the write lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use sagitta_proto::{QoS, SubscriptionId, SubscriptionOptions, TopicFilter};

use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::{Interest, Key};
use crate::message::{ClientId, FastMap};
use crate::session::SessionEntry;

/// A subscription as the router keeps it.
#[derive(Clone)]
struct Sub {
    session: Arc<SessionEntry>,
    options: SubscriptionOptions,
    id: Option<SubscriptionId>,
}

struct Group {
    members: Vec<Sub>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: FastMap<Box<str>, Node>,
    subs: FastMap<ClientId, Sub>,
    groups: FastMap<Box<str>, Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.groups.is_empty()
    }
}

/// A session a message must go to, with the delivery details merged over all of the
/// session's matching subscriptions.
pub(crate) struct Target {
    pub session: Arc<SessionEntry>,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub sub_ids: Vec<SubscriptionId>,
}

impl Target {
    fn from_sub(sub: &Sub) -> Self {
        Self {
            session: sub.session.clone(),
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            sub_ids: sub.id.into_iter().collect(),
        }
    }
}

/// One subscription as the admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionInfo {
    pub client_id: ClientId,
    /// The filter as subscribed (with its `$share/<group>/` prefix for a shared one).
    pub filter: String,
    pub options: SubscriptionOptions,
    pub id: Option<SubscriptionId>,
}

/// The subscription tree.
#[derive(Default)]
pub(crate) struct Router {
    root: RwLock<Node>,
    count: AtomicUsize,
    /// In a cluster: where subscriptions added and removed are reported, for the node's
    /// NATS subscriptions.
    interest: Option<UnboundedSender<Interest>>,
}

impl Router {
    /// A router that reports every subscription added and removed to `interest`.
    pub fn with_interest(interest: Option<UnboundedSender<Interest>>) -> Self {
        Self {
            interest,
            ..Self::default()
        }
    }

    fn report(&self, filter: &TopicFilter, change: fn(Key) -> Interest) {
        if let (Some(tx), Some(key)) = (&self.interest, Key::of(filter)) {
            let _ = tx.send(change(key));
        }
    }

    /// Adds or replaces `session`'s subscription to `filter`. Returns true if it existed.
    #[cfg(test)]
    pub fn subscribe(
        &self,
        session: &Arc<SessionEntry>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<SubscriptionId>,
    ) -> bool {
        self.subscribe_then(session, filter, options, id, |existed| existed)
    }

    /// Adds or replaces `session`'s subscription to `filter`, then runs `then` with whether it
    /// existed, still under the write lock: no publish is routed in between, so retained
    /// messages queued by `then` come before any live message routed to the subscription.
    pub fn subscribe_then<R>(
        &self,
        session: &Arc<SessionEntry>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<SubscriptionId>,
        then: impl FnOnce(bool) -> R,
    ) -> R {
        let sub = Sub {
            session: session.clone(),
            options,
            id,
        };
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let shared = filter.shared();
        let mut node = &mut *root;
        for level in filter.match_filter().split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match shared {
            None => node.subs.insert(session.client_id.clone(), sub).is_some(),
            Some(s) => {
                let group = node.groups.entry(s.group.into()).or_insert_with(|| Group {
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                });
                match group
                    .members
                    .iter_mut()
                    .find(|m| m.session.client_id == session.client_id)
                {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        group.members.push(sub);
                        false
                    }
                }
            }
        };
        if !existed {
            self.count.fetch_add(1, Ordering::Relaxed);
            session.routes.fetch_add(1, Ordering::Relaxed);
            self.report(filter, Interest::Add);
        }
        then(existed)
    }

    /// Removes `client_id`'s subscription to `filter`. Returns true if it existed.
    pub fn unsubscribe(&self, client_id: &str, filter: &TopicFilter) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = filter.match_filter().split('/').collect();
        let group = filter.shared().map(|s| s.group);
        let removed = remove(&mut root, &levels, client_id, group);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.report(filter, Interest::Remove);
        }
        removed
    }

    /// The subscriptions for which `keep(client_id, filter)` is true, in no particular
    /// order. Walks the whole tree under the read lock: publishes go on meanwhile, but
    /// subscribes wait; meant for operators, not for the publish path.
    pub fn list(&self, mut keep: impl FnMut(&str, &str) -> bool) -> Vec<SubscriptionInfo> {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut path = String::new();
        list_node(&root, &mut path, true, &mut keep, &mut out);
        out
    }

    /// Number of subscriptions in the tree.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Collects the sessions `topic` must go to. Overlapping subscriptions of one session are
    /// merged into one target at the highest QoS with all their Subscription Identifiers;
    /// each shared group contributes one member. `origin` is the publisher, for No Local.
    /// `under_lock` runs first, under the read lock (the retained store is updated there, so
    /// that it and the routing are one step for a concurrent subscribe). Without `groups`,
    /// shared groups are left out (in a cluster, NATS picks the node that picks a member).
    pub fn route(
        &self,
        topic: &str,
        origin: Option<&str>,
        groups: bool,
        out: &mut Vec<Target>,
        under_lock: impl FnOnce(),
    ) {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        under_lock();
        let mut shared = Vec::new();
        let system = topic.starts_with('$');
        collect(&root, Some(topic), system, origin, out, &mut shared);
        // Under the lock: the subscription counts `merge` relies on change only under the
        // write lock.
        merge(out);
        drop(root);
        if groups {
            out.append(&mut shared);
        }
    }

    /// One member of shared group `group` on `filter` (the filter without `$share/`), picked
    /// as [`Router::route`] picks; `None` if the group has no member here.
    pub fn pick_member(&self, filter: &str, group: &str) -> Option<Target> {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let mut node = &*root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.groups.get(group).and_then(pick).map(Target::from_sub)
    }
}

fn list_node(
    node: &Node,
    path: &mut String,
    top: bool,
    keep: &mut impl FnMut(&str, &str) -> bool,
    out: &mut Vec<SubscriptionInfo>,
) {
    if !top {
        for sub in node.subs.values() {
            if keep(&sub.session.client_id, path) {
                out.push(SubscriptionInfo {
                    client_id: sub.session.client_id.clone(),
                    filter: path.clone(),
                    options: sub.options,
                    id: sub.id,
                });
            }
        }
        for (group, g) in &node.groups {
            let filter = format!("$share/{group}/{path}");
            for m in &g.members {
                if keep(&m.session.client_id, &filter) {
                    out.push(SubscriptionInfo {
                        client_id: m.session.client_id.clone(),
                        filter: filter.clone(),
                        options: m.options,
                        id: m.id,
                    });
                }
            }
        }
    }
    for (level, child) in &node.children {
        let len = path.len();
        if !top {
            path.push('/');
        }
        path.push_str(level);
        list_node(child, path, false, keep, out);
        path.truncate(len);
    }
}

fn remove(node: &mut Node, levels: &[&str], client_id: &str, group: Option<&str>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => match node.subs.remove(client_id) {
                Some(sub) => {
                    sub.session.routes.fetch_sub(1, Ordering::Relaxed);
                    true
                }
                None => false,
            },
            Some(g) => {
                let Some(grp) = node.groups.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|m| {
                    let keep = &*m.session.client_id != client_id;
                    if !keep {
                        m.session.routes.fetch_sub(1, Ordering::Relaxed);
                    }
                    keep
                });
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, client_id, group);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect(
    node: &Node,
    rest: Option<&str>,
    system: bool,
    origin: Option<&str>,
    out: &mut Vec<Target>,
    shared: &mut Vec<Target>,
) {
    let Some(rest) = rest else {
        add(node, origin, out, shared);
        // "a/#" also matches "a".
        if let Some(hash) = node.children.get("#") {
            add(hash, origin, out, shared);
        }
        return;
    };
    // A byte search: '/' is ASCII, so both halves stay valid UTF-8.
    let (level, next) = match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], rest.get(i + 1..)),
        None => (rest, None),
    };
    if let Some(child) = node.children.get(level) {
        collect(child, next, false, origin, out, shared);
    }
    // Wildcards in the first level do not match topics starting with '$' [MQTT-4.7.2-1].
    if system {
        return;
    }
    if let Some(plus) = node.children.get("+") {
        collect(plus, next, false, origin, out, shared);
    }
    if let Some(hash) = node.children.get("#") {
        add(hash, origin, out, shared);
    }
}

fn add(node: &Node, origin: Option<&str>, out: &mut Vec<Target>, shared: &mut Vec<Target>) {
    for sub in node.subs.values() {
        if sub.options.no_local && origin == Some(&*sub.session.client_id) {
            continue;
        }
        out.push(Target::from_sub(sub));
    }
    for group in node.groups.values() {
        if let Some(member) = pick(group) {
            shared.push(Target::from_sub(member));
        }
    }
}

/// Round-robin over the group, preferring members that are connected.
fn pick(group: &Group) -> Option<&Sub> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &group.members[(start + i) % n])
        .find(|m| m.session.is_connected())
        .or_else(|| group.members.get(start % n))
}

/// Merges targets of the same session (overlapping subscriptions).
fn merge(out: &mut Vec<Target>) {
    // A session with a single subscription cannot be matched twice.
    if out.len() < 2
        || out
            .iter()
            .all(|t| t.session.routes.load(Ordering::Relaxed) <= 1)
    {
        return;
    }
    out.sort_unstable_by_key(|t| Arc::as_ptr(&t.session) as usize);
    out.dedup_by(|later, kept| {
        if !Arc::ptr_eq(&later.session, &kept.session) {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.sub_ids.append(&mut later.sub_ids);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionEntry;

    fn session(id: &str) -> Arc<SessionEntry> {
        Arc::new(SessionEntry::new(id.into(), 100))
    }

    fn opts(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions::new(qos)
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    fn route(r: &Router, topic: &str, origin: Option<&str>) -> Vec<(String, QoS, Vec<u32>)> {
        let mut out = Vec::new();
        r.route(topic, origin, true, &mut out, || {});
        let mut v: Vec<_> = out
            .into_iter()
            .map(|t| {
                (
                    t.session.client_id.to_string(),
                    t.qos,
                    t.sub_ids.iter().map(|i| i.get()).collect(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let r = Router::default();
        let a = session("a");
        r.subscribe(&a, &f("#"), opts(QoS::AtMostOnce), None);
        let b = session("b");
        r.subscribe(&b, &f("sport/+/score"), opts(QoS::AtLeastOnce), None);
        let c = session("c");
        r.subscribe(&c, &f("sport/#"), opts(QoS::ExactlyOnce), None);
        let s = session("s");
        r.subscribe(&s, &f("$SYS/#"), opts(QoS::AtMostOnce), None);
        assert_eq!(route(&r, "sport/tennis/score", None).len(), 3);
        assert_eq!(
            route(&r, "sport", None),
            [
                ("a".into(), QoS::AtMostOnce, vec![]),
                ("c".into(), QoS::ExactlyOnce, vec![])
            ]
        );
        assert_eq!(
            route(&r, "$SYS/broker/uptime", None),
            [("s".into(), QoS::AtMostOnce, vec![])]
        );
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn overlapping_subscriptions_merge_with_all_ids() {
        let r = Router::default();
        let a = session("a");
        r.subscribe(&a, &f("a/+"), opts(QoS::AtMostOnce), SubscriptionId::new(1));
        r.subscribe(
            &a,
            &f("a/#"),
            opts(QoS::ExactlyOnce),
            SubscriptionId::new(2),
        );
        r.subscribe(&a, &f("a/b"), opts(QoS::AtLeastOnce), None);
        let got = route(&r, "a/b", None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, QoS::ExactlyOnce);
        let mut ids = got[0].2.clone();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let r = Router::default();
        let a = session("a");
        let o = SubscriptionOptions {
            no_local: true,
            ..opts(QoS::AtMostOnce)
        };
        r.subscribe(&a, &f("t"), o, None);
        assert!(route(&r, "t", Some("a")).is_empty());
        assert_eq!(route(&r, "t", Some("b")).len(), 1);
    }

    #[test]
    fn shared_group_round_robin_and_unsubscribe() {
        let r = Router::default();
        let a = session("a");
        let b = session("b");
        r.subscribe(&a, &f("$share/g/t/+"), opts(QoS::AtLeastOnce), None);
        r.subscribe(&b, &f("$share/g/t/+"), opts(QoS::AtLeastOnce), None);
        // Neither is connected: plain round-robin.
        let got: Vec<_> = (0..4)
            .map(|_| route(&r, "t/x", None)[0].0.clone())
            .collect();
        assert_eq!(got.iter().filter(|x| *x == "a").count(), 2);
        assert!(r.unsubscribe("a", &f("$share/g/t/+")));
        assert!(!r.unsubscribe("a", &f("$share/g/t/+")));
        assert!((0..3).all(|_| route(&r, "t/x", None)[0].0 == "b"));
        assert!(r.unsubscribe("b", &f("$share/g/t/+")));
        assert!(route(&r, "t/x", None).is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn list_rebuilds_every_filter() {
        let r = Router::default();
        let a = session("a");
        let b = session("b");
        for f_ in ["#", "/x", "a/+/c", "a", "a/#"] {
            r.subscribe(&a, &f(f_), opts(QoS::AtLeastOnce), SubscriptionId::new(3));
        }
        r.subscribe(&b, &f("$share/g/a/+/c"), opts(QoS::AtMostOnce), None);
        let mut all: Vec<(String, String)> = r
            .list(|_, _| true)
            .into_iter()
            .map(|s| (s.client_id.to_string(), s.filter))
            .collect();
        all.sort();
        let want: Vec<(String, String)> = [
            ("a", "#"),
            ("a", "/x"),
            ("a", "a"),
            ("a", "a/#"),
            ("a", "a/+/c"),
            ("b", "$share/g/a/+/c"),
        ]
        .iter()
        .map(|(c, f)| (c.to_string(), f.to_string()))
        .collect();
        assert_eq!(all, want);
        let only_b = r.list(|c, _| c == "b");
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].options.qos, QoS::AtMostOnce);
        assert_eq!(r.list(|_, f| f.contains("+/c")).len(), 2);
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_prunes() {
        let r = Router::default();
        let a = session("a");
        assert!(!r.subscribe(&a, &f("x/y"), opts(QoS::AtMostOnce), None));
        assert!(r.subscribe(&a, &f("x/y"), opts(QoS::ExactlyOnce), None));
        assert_eq!(route(&r, "x/y", None)[0].1, QoS::ExactlyOnce);
        assert_eq!(r.len(), 1);
        assert!(r.unsubscribe("a", &f("x/y")));
        assert!(r.root.read().unwrap().is_empty());
    }
}
