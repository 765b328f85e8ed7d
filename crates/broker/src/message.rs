//! Application messages as the broker carries them: one shared [`Message`] per PUBLISH
//! received, and one small [`Delivery`] per subscriber pointing at it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sagitta_proto::{PublishProperties, QoS, SubscriptionId, TopicName};

/// A client identifier, shared.
pub type ClientId = Arc<str>;

/// A message published to the broker. Shared by every subscriber it goes to.
#[derive(Debug)]
pub struct Message {
    /// Topic it was published to.
    pub topic: TopicName,
    /// Payload (shared bytes).
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// 5.0 properties to forward (never a Topic Alias or Subscription Identifier); `None`
    /// when there are none, as for all 3.x traffic, which keeps the message small.
    pub properties: Option<Box<PublishProperties>>,
    /// The publishing client, for No Local; `None` for messages the broker makes itself.
    pub origin: Option<ClientId>,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Its body in the store, once it is queued for a persistent session.
    pub(crate) stored: StoredBody,
    /// When the broker read it, for the messages whose publish-to-deliver latency is
    /// measured (a sample; see `metrics::sample_publish`).
    pub(crate) received_at: Option<Instant>,
}

/// A message's body in the store: its id (0 until stored) and how many queued messages
/// point at it (the publisher holds one more while it routes).
#[derive(Debug, Default)]
pub(crate) struct StoredBody {
    pub id: AtomicU64,
    pub refs: AtomicU32,
}

impl Message {
    /// A message to `topic` with no properties, from the broker itself.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain,
            properties: None,
            origin: None,
            expires_at: None,
            stored: StoredBody::default(),
            received_at: None,
        }
    }

    /// The 5.0 properties to forward (empty if none).
    pub fn properties(&self) -> &PublishProperties {
        static NONE: std::sync::LazyLock<PublishProperties> =
            std::sync::LazyLock::new(PublishProperties::default);
        self.properties.as_deref().unwrap_or(&NONE)
    }

    /// Boxes `properties` unless they are empty.
    pub(crate) fn boxed_properties(
        properties: PublishProperties,
    ) -> Option<Box<PublishProperties>> {
        (!properties.is_empty()).then(|| Box::new(properties))
    }

    /// True if the message's expiry interval has run out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The Message Expiry Interval to forward at `now`: what is left, rounded up.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }

    /// Sets `expires_at` from a Message Expiry Interval received now.
    pub(crate) fn expiry_from_interval(interval: Option<u32>) -> Option<Instant> {
        interval.map(|s| Instant::now() + Duration::from_secs(u64::from(s)))
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    /// QoS of this delivery: min(published, granted).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions (5.0).
    pub sub_ids: Vec<SubscriptionId>,
    /// Its sequence number in the store (queue order), or 0 if it is not stored.
    pub seq: u64,
    /// A live delivery of a message whose latency is measured (not a retained message sent
    /// on subscribe, nor one read from the store).
    pub timed: bool,
}

/// The hash map of the broker's hot paths (router, retained store, sessions): foldhash is
/// several times faster than SipHash on short keys such as topic levels and client ids, and
/// its per-process random seed keeps crafted collisions impractical.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
