//! Parts of the broker on their own, for benchmarks: the subscription tree (criterion, in
//! `benches/`) and a store filled with many sessions and retained messages (the recovery
//! benchmark, `examples/recovery.rs`). Not part of the broker's supported API.

use std::sync::Arc;

use sagitta_proto::{QoS, SubscriptionOptions, TopicFilter};

use crate::router::{Router, Target};
use crate::session::SessionEntry;

/// A subscription tree with its subscribers.
#[derive(Default)]
pub struct RouterBench {
    router: Router,
    sessions: Vec<Arc<SessionEntry>>,
    out: Vec<Target>,
}

impl RouterBench {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes the `client`-th session (made on first use) to `filter` at QoS 1.
    pub fn subscribe(&mut self, client: usize, filter: &TopicFilter) {
        while self.sessions.len() <= client {
            let id = format!("client-{}", self.sessions.len());
            self.sessions
                .push(Arc::new(SessionEntry::new(id.into(), 1000)));
        }
        if let Some(session) = self.sessions.get(client) {
            self.router.subscribe_then(
                session,
                filter,
                SubscriptionOptions::new(QoS::AtLeastOnce),
                None,
                |_| (),
            );
        }
    }

    /// Removes the `client`-th session's subscription to `filter`.
    pub fn unsubscribe(&mut self, client: usize, filter: &TopicFilter) -> bool {
        match self.sessions.get(client) {
            Some(s) => self.router.unsubscribe(&s.client_id, filter),
            None => false,
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.router.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.router.len() == 0
    }

    /// Matches `topic` as a publish would: how many sessions get it.
    pub fn route(&mut self, topic: &str) -> usize {
        self.out.clear();
        self.router.route(topic, None, true, &mut self.out, || ());
        self.out.len()
    }
}

/// Fills the store in `dir` as a broker would after `retained` retained messages (64-byte
/// payloads, QoS 1) and `sessions` persistent 3.1.1 sessions, each with one subscription
/// and one queued QoS 1 message, all of them left while the broker ran.
pub fn populate_store(
    dir: &std::path::Path,
    retained: usize,
    sessions: usize,
) -> Result<(), crate::store::StoreError> {
    use crate::message::{Delivery, Message};
    use crate::store::{Store, SyncMode};

    let (store, _) = Store::open(dir, SyncMode::Never, std::time::Duration::from_secs(1))?;
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    // Let the writer keep up, so that memory stays bounded.
    let pace = |store: &Store| {
        while store.backlogged() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    for i in 0..retained {
        let Ok(topic) =
            sagitta_proto::TopicName::new(format!("bench/retained/{}/{}", i / 1000, i % 1000))
        else {
            continue;
        };
        store.retained(&Message::new(
            topic,
            payload.clone(),
            QoS::AtLeastOnce,
            true,
        ));
        pace(&store);
    }
    let left = crate::store::record::wall_ms();
    for i in 0..sessions {
        let id = format!("bench-session-{i}");
        let (Ok(filter), Ok(topic)) = (
            TopicFilter::new(format!("bench/s/{i}/#")),
            sagitta_proto::TopicName::new(format!("bench/s/{i}/x")),
        ) else {
            continue;
        };
        store.session(&id, crate::session::NEVER_EXPIRES, left);
        store.subscribed(
            &id,
            &filter,
            &SubscriptionOptions::new(QoS::AtLeastOnce),
            None,
        );
        let msg = Arc::new(Message::new(
            topic,
            payload.clone(),
            QoS::AtLeastOnce,
            false,
        ));
        let body = store.hold_body(&msg);
        let d = Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: store.next_id(),
            timed: false,
        };
        store.queued(&id, &d, body);
        if let Some(op) = store.release_body(&d.msg) {
            store.submit(op);
        }
        pace(&store);
    }
    store.close();
    Ok(())
}
