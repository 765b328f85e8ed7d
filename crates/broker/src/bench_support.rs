//! The subscription tree on its own, for the criterion benchmarks in `benches/`. Not part of
//! the broker's supported API.

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
        self.router.route(topic, None, &mut self.out, || ());
        self.out.len()
    }
}
