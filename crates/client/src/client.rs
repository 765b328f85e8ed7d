//! The async [`Client`] handle.

use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use sagitta_proto::{
    ConnAck, Disconnect, EncodeError, Packet, PacketType, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, TopicFilter, UnsubAck, Unsubscribe, UnsubscribeProperties,
};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{ClientError, ConnectError, ReasonString};
use crate::event_loop::{
    DisconnectRequest, EventLoop, PublishRequest, Request, SubscribeRequest, UnsubscribeRequest,
};
use crate::message::{Ack, Delivered, Message};
use crate::options::{
    ClientBuilder, IntoTopicFilter, IntoTopicName, Options, PublishOptions, Subscription,
};

/// The largest packet MQTT can encode: a 4-byte remaining length of 268 435 455 plus the
/// fixed header.
pub(crate) const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected to the broker.
    Connected,
    /// The connection was lost; the event loop is reconnecting.
    Reconnecting,
    /// The client is closed for good.
    Closed,
}

/// A snapshot of the connection: see [`Client::status`] and [`Client::watch_status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// Connected, reconnecting or closed.
    pub state: State,
    /// Successful connections so far (1 after `connect`, +1 per reconnect).
    pub connections: u32,
    /// Session Present of the latest CONNACK: the broker resumed a session.
    pub session_present: bool,
    /// Why the latest connection ended (`None` while the first is up, or after `disconnect`).
    pub last_error: Option<ClientError>,
}

/// What handles and the event loop share: the broker's limits of the current connection and
/// the status.
#[derive(Debug)]
pub(crate) struct Shared {
    pub version: ProtocolVersion,
    max_packet_size: AtomicUsize,
    max_qos: AtomicU8,
    retain_available: AtomicBool,
    pub status: watch::Sender<Status>,
}

impl Shared {
    fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            max_packet_size: AtomicUsize::new(MQTT_MAX_PACKET),
            max_qos: AtomicU8::new(QoS::ExactlyOnce as u8),
            retain_available: AtomicBool::new(true),
            status: watch::Sender::new(Status {
                state: State::Connected,
                connections: 0,
                session_present: false,
                last_error: None,
            }),
        }
    }

    /// Records a new connection's CONNACK: its limits and the status.
    pub fn connected(&self, connack: &ConnAck) {
        let limits = Limits::from_connack(connack);
        self.max_packet_size
            .store(limits.max_packet_size, Ordering::Relaxed);
        self.max_qos.store(limits.max_qos as u8, Ordering::Relaxed);
        self.retain_available
            .store(limits.retain_available, Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.state = State::Connected;
            s.connections = s.connections.saturating_add(1);
            s.session_present = connack.session_present;
        });
    }

    /// The error a call gets once the event loop is gone.
    pub fn closed_error(&self) -> ClientError {
        self.status
            .borrow()
            .last_error
            .clone()
            .unwrap_or(ClientError::Closed)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_packet_size: self.max_packet_size.load(Ordering::Relaxed),
            max_qos: QoS::from_u8(self.max_qos.load(Ordering::Relaxed)).unwrap_or(QoS::ExactlyOnce),
            retain_available: self.retain_available.load(Ordering::Relaxed),
        }
    }
}

/// The broker's limits on what we send, from its CONNACK (5.0; 3.x has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_packet_size: usize,
    pub max_qos: QoS,
    pub retain_available: bool,
}

impl Limits {
    pub fn from_connack(connack: &ConnAck) -> Self {
        let p = &connack.properties;
        Self {
            max_packet_size: p
                .maximum_packet_size
                .map_or(MQTT_MAX_PACKET, |m| m.get() as usize)
                .min(MQTT_MAX_PACKET),
            max_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
        }
    }

    /// Checks a PUBLISH against the limits. The size is computed only when a generous
    /// estimate does not fit, so the common case costs nothing.
    pub fn check(&self, publish: &Publish, version: ProtocolVersion) -> Result<(), ClientError> {
        if publish.qos > self.max_qos {
            return Err(ClientError::QoSNotSupported {
                requested: publish.qos,
                maximum: self.max_qos,
            });
        }
        if publish.retain && !self.retain_available {
            return Err(ClientError::RetainNotSupported);
        }
        // Fixed header 5, topic length 2, packet id 2, property length 4.
        let estimate = 13 + publish.topic.len() + publish.payload.len();
        if publish.properties.is_empty() && estimate <= self.max_packet_size {
            return Ok(());
        }
        check_size(
            &Packet::Publish(publish.clone()),
            version,
            self.max_packet_size,
        )
    }
}

/// Fails with [`ClientError::PacketTooLarge`] if `packet` is over `max` bytes.
pub(crate) fn check_size(
    packet: &Packet,
    version: ProtocolVersion,
    max: usize,
) -> Result<(), ClientError> {
    let size = packet.encoded_len(version)?;
    if size > max {
        return Err(ClientError::PacketTooLarge { size, max });
    }
    Ok(())
}

/// A handle to an MQTT connection. Cheap to clone; all clones talk to one background event
/// loop that owns the socket, answers pings, acknowledges, retries and reconnects.
///
/// Dropping the last clone disconnects gracefully. Callbacks run on the event loop task and
/// must not block.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sagitta_client::{Client, QoS};
///
/// let client = Client::connect("localhost:1883").await?;
/// client
///     .subscribe("greetings/#", QoS::AtLeastOnce, |topic, payload| {
///         println!("{topic}: {}", String::from_utf8_lossy(payload));
///     })
///     .await?;
/// client.publish("greetings/en", "hello").await?;
/// client.publish_with("greetings/fr", "bonjour", QoS::AtLeastOnce).await?; // waits for PUBACK
/// client.disconnect().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    messages: Mutex<mpsc::Receiver<Delivered>>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops a reconnecting event loop; a connected one sees the request channel close.
        self.shutdown.cancel();
    }
}

impl Client {
    /// Connects to `addr` (`host:port`, port 1883 by default) with the default options.
    pub async fn connect(addr: impl Into<String>) -> Result<Self, ConnectError> {
        ClientBuilder::new(addr).connect().await
    }

    /// A builder for client id, credentials, keep-alive, session, will, protocol version and
    /// reconnect policy.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    pub(crate) async fn connect_with(opts: Options) -> Result<Self, ConnectError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConnectError::NoRuntime);
        }
        let established = crate::connect::establish(&opts, &opts.connect).await?;
        let shared = Arc::new(Shared::new(opts.version()));
        shared.connected(&established.connack);
        let (tx, rx) = mpsc::channel(opts.request_capacity);
        let (msg_tx, msg_rx) = mpsc::channel(opts.message_capacity);
        let shutdown = CancellationToken::new();
        let span = tracing::info_span!(
            "mqtt_client",
            client_id = %opts.connect.client_id,
            addr = %opts.addr,
            tls = opts.tls.is_some()
        );
        tracing::info!(parent: &span, session_present = established.connack.session_present, "connected");
        let event_loop = EventLoop::new(opts, shared.clone(), rx, msg_tx, shutdown.clone());
        tokio::spawn(event_loop.run(established).instrument(span));
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                shared,
                messages: Mutex::new(msg_rx),
                shutdown,
            }),
        })
    }

    /// Publishes `payload` to `topic` with QoS 0, not retained. Returns once the message is
    /// queued for sending. An empty payload is allowed.
    pub async fn publish(
        &self,
        topic: impl IntoTopicName,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
    }

    /// Publishes with options (QoS, retain, 5.0 properties; a bare [`QoS`] will do). Completes
    /// when the QoS flow does: at once for QoS 0, on PUBACK for QoS 1, on PUBCOMP for QoS 2.
    /// Across a reconnect the message is sent again, so the call may wait that long.
    pub async fn publish_with(
        &self,
        topic: impl IntoTopicName,
        payload: impl Into<Bytes>,
        options: impl Into<PublishOptions>,
    ) -> Result<(), ClientError> {
        self.start_publish(topic, payload, options).await?.await
    }

    /// Queues a PUBLISH and returns without waiting for its acknowledgement: await the
    /// returned [`PendingPublish`] for that. Lets one task keep many QoS 1/2 messages in
    /// flight (up to the broker's Receive Maximum).
    pub async fn start_publish(
        &self,
        topic: impl IntoTopicName,
        payload: impl Into<Bytes>,
        options: impl Into<PublishOptions>,
    ) -> Result<PendingPublish, ClientError> {
        let options = options.into();
        let mut publish = Publish::new(topic.into_topic_name()?, payload);
        publish.qos = options.qos;
        publish.retain = options.retain;
        publish.properties = options.properties;
        publish.properties.topic_alias = None;
        publish.properties.subscription_identifiers.clear();
        self.inner
            .shared
            .limits()
            .check(&publish, self.inner.shared.version)?;
        let (done, rx) = if publish.qos == QoS::AtMostOnce {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        self.send(Request::Publish(PublishRequest { publish, done }))
            .await?;
        Ok(PendingPublish {
            rx,
            shared: self.inner.shared.clone(),
        })
    }

    /// Subscribes to `filter` and calls `callback` with the topic and payload of each
    /// matching message. Returns the QoS the broker granted. The callback runs on the event
    /// loop task: it must not block.
    pub async fn subscribe<F>(
        &self,
        filter: impl IntoTopicFilter,
        qos: QoS,
        callback: F,
    ) -> Result<QoS, ClientError>
    where
        F: Fn(&str, &[u8]) + Send + Sync + 'static,
    {
        let filter = filter.into_topic_filter()?;
        let ack = self
            .subscribe_with(Subscription::new(filter.clone(), qos).callback(callback))
            .await?;
        granted(&filter, &ack)
    }

    /// Subscribes to `filter` without a callback: matching messages are read with
    /// [`Client::recv`]. Returns the granted QoS.
    pub async fn subscribe_recv(
        &self,
        filter: impl IntoTopicFilter,
        qos: QoS,
    ) -> Result<QoS, ClientError> {
        let filter = filter.into_topic_filter()?;
        let ack = self
            .subscribe_with(Subscription::new(filter.clone(), qos))
            .await?;
        granted(&filter, &ack)
    }

    /// Subscribes to one or more filters with 5.0 options, a Subscription Identifier and an
    /// optional callback. Returns the SUBACK: one reason code per filter, in order; refused
    /// filters are not an error here.
    pub async fn subscribe_with(&self, subscription: Subscription) -> Result<SubAck, ClientError> {
        let Subscription {
            filters,
            properties,
            callback,
            error,
        } = subscription;
        if let Some(e) = error {
            return Err(e.into());
        }
        if filters.is_empty() {
            return Err(EncodeError::Empty(PacketType::Subscribe).into());
        }
        let (tx, rx) = oneshot::channel();
        let packet = Subscribe {
            packet_id: NonZeroU16::MIN,
            filters,
            properties,
        };
        self.send(Request::Subscribe(SubscribeRequest {
            packet,
            callback,
            done: tx,
        }))
        .await?;
        rx.await
            .unwrap_or_else(|_| Err(self.inner.shared.closed_error()))
    }

    /// Unsubscribes from `filter`; its callback is removed once the broker confirms.
    pub async fn unsubscribe(&self, filter: impl IntoTopicFilter) -> Result<(), ClientError> {
        let filter = filter.into_topic_filter()?;
        let ack = self.unsubscribe_many([filter.clone()]).await?;
        match ack.reasons.first() {
            Some(&ReasonCode::NotAuthorized) => Err(ClientError::NotAuthorized {
                operation: format!("UNSUBSCRIBE from {filter}"),
                reason_string: ReasonString::from_opt(ack.properties.reason_string.as_ref()),
            }),
            Some(&reason) if reason.is_error() => Err(ClientError::UnsubscribeRefused {
                filter: filter.to_string(),
                reason,
                reason_string: ReasonString::from_opt(ack.properties.reason_string.as_ref()),
            }),
            _ => Ok(()),
        }
    }

    /// Unsubscribes from several filters in one UNSUBSCRIBE and returns the UNSUBACK (5.0:
    /// one reason code per filter; 3.x: none).
    pub async fn unsubscribe_many<F: IntoTopicFilter>(
        &self,
        filters: impl IntoIterator<Item = F>,
    ) -> Result<UnsubAck, ClientError> {
        let filters = filters
            .into_iter()
            .map(IntoTopicFilter::into_topic_filter)
            .collect::<Result<Vec<TopicFilter>, _>>()?;
        if filters.is_empty() {
            return Err(EncodeError::Empty(PacketType::Unsubscribe).into());
        }
        let (tx, rx) = oneshot::channel();
        let packet = Unsubscribe {
            packet_id: NonZeroU16::MIN,
            filters,
            properties: UnsubscribeProperties::default(),
        };
        self.send(Request::Unsubscribe(UnsubscribeRequest {
            packet,
            done: tx,
        }))
        .await?;
        rx.await
            .unwrap_or_else(|_| Err(self.inner.shared.closed_error()))
    }

    /// The next message that matched no callback subscription (those made with
    /// [`Client::subscribe_recv`], or delivered by a resumed session before you subscribed
    /// again). `None` once the client is closed and the queue is empty.
    ///
    /// While the queue is full the event loop stops reading from the broker, so a program
    /// that makes such subscriptions must keep reading.
    pub async fn recv(&self) -> Option<Message> {
        self.inner
            .messages
            .lock()
            .await
            .recv()
            .await
            .map(|(m, _)| m)
    }

    /// Like [`Client::recv`] without waiting: `None` if no message is queued right now.
    pub fn try_recv(&self) -> Option<Message> {
        self.inner
            .messages
            .try_lock()
            .ok()?
            .try_recv()
            .ok()
            .map(|(m, _)| m)
    }

    /// With manual acknowledgements (`ClientBuilder::manual_acks`): the next message and,
    /// for QoS 1/2, the acknowledgement to give to [`Client::ack`] once it is taken care of.
    /// For the broker's bridges; not part of the supported API.
    #[doc(hidden)]
    pub async fn recv_manual(&self) -> Option<(Message, Option<Ack>)> {
        self.inner.messages.lock().await.recv().await
    }

    /// Sends the acknowledgement of a message received with [`Client::recv_manual`] (if its
    /// connection is still the current one). Not part of the supported API.
    #[doc(hidden)]
    pub async fn ack(&self, ack: Ack) -> Result<(), ClientError> {
        self.send(Request::Ack(ack)).await
    }

    /// Disconnects normally: sends DISCONNECT after everything queued before it and stops the
    /// event loop. If the broker's Receive Maximum holds queued publishes back, they get about
    /// two seconds to go out. The will is not published. Publishes still unacknowledged fail
    /// with [`ClientError::Closed`]. Calling it again is harmless.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// Disconnects with a 5.0 reason code and properties, e.g.
    /// `Disconnect::new(ReasonCode::DisconnectWithWill)` to have the will published, or a
    /// Session Expiry Interval.
    pub async fn disconnect_with(&self, packet: Disconnect) -> Result<(), ClientError> {
        // Cancel first: a reconnecting event loop does not read requests.
        self.inner.shutdown.cancel();
        let (tx, rx) = oneshot::channel();
        let request = Request::Disconnect(DisconnectRequest { packet, done: tx });
        if self.inner.tx.send(request).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// The connection status now.
    pub fn status(&self) -> Status {
        self.inner.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change (connected, reconnecting, closed).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.shared.status.subscribe()
    }

    /// Waits until the client is closed; returns the error that closed it (`None` after
    /// [`Client::disconnect`]).
    pub async fn closed(&self) -> Option<ClientError> {
        let mut rx = self.inner.shared.status.subscribe();
        let status = rx.wait_for(|s| s.state == State::Closed).await;
        status.ok().and_then(|s| s.last_error.clone())
    }

    /// The protocol version in use.
    pub fn protocol(&self) -> ProtocolVersion {
        self.inner.shared.version
    }

    async fn send(&self, request: Request) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(request)
            .await
            .map_err(|_| self.inner.shared.closed_error())
    }
}

/// The QoS granted for the single filter of a SUBACK, or the refusal as an error.
fn granted(filter: &TopicFilter, ack: &SubAck) -> Result<QoS, ClientError> {
    let reason_string = || ReasonString::from_opt(ack.properties.reason_string.as_ref());
    match ack.reasons.first().copied() {
        Some(ReasonCode::Success) => Ok(QoS::AtMostOnce),
        Some(ReasonCode::GrantedQoS1) => Ok(QoS::AtLeastOnce),
        Some(ReasonCode::GrantedQoS2) => Ok(QoS::ExactlyOnce),
        Some(ReasonCode::NotAuthorized) => Err(ClientError::NotAuthorized {
            operation: format!("SUBSCRIBE to {filter}"),
            reason_string: reason_string(),
        }),
        reason => Err(ClientError::SubscribeRefused {
            filter: filter.to_string(),
            reason: reason.unwrap_or(ReasonCode::UnspecifiedError),
            reason_string: reason_string(),
        }),
    }
}

/// A queued PUBLISH; await it for the end of its QoS flow (PUBACK for QoS 1, PUBCOMP for
/// QoS 2; ready at once for QoS 0).
#[derive(Debug)]
#[must_use = "a PendingPublish does nothing unless awaited; dropping it does not cancel the publish"]
pub struct PendingPublish {
    rx: Option<oneshot::Receiver<Result<(), ClientError>>>,
    shared: Arc<Shared>,
}

impl Future for PendingPublish {
    type Output = Result<(), ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.rx.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(this.shared.closed_error()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagitta_proto::TopicName;

    fn publish(len: usize) -> Publish {
        Publish::new(TopicName::new("t").unwrap(), vec![0u8; len])
    }

    #[test]
    fn limits_check_qos_retain_and_size() {
        let mut ack = ConnAck::new(false, ReasonCode::Success);
        ack.properties.maximum_packet_size = std::num::NonZeroU32::new(100);
        ack.properties.maximum_qos = Some(QoS::AtLeastOnce);
        ack.properties.retain_available = Some(false);
        let limits = Limits::from_connack(&ack);
        let v = ProtocolVersion::V5;
        assert!(limits.check(&publish(50), v).is_ok());
        // 1 + 1 + (2 + 1 + 1 + 95) = 101 bytes: over by one.
        let e = limits.check(&publish(95), v).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::PacketTooLarge {
                    size: 101,
                    max: 100
                }
            ),
            "{e}"
        );
        assert!(limits.check(&publish(94), v).is_ok());
        let mut p = publish(1);
        p.qos = QoS::ExactlyOnce;
        assert!(matches!(
            limits.check(&p, v),
            Err(ClientError::QoSNotSupported { .. })
        ));
        let mut p = publish(1);
        p.retain = true;
        assert!(matches!(
            limits.check(&p, v),
            Err(ClientError::RetainNotSupported)
        ));
        let none = Limits::from_connack(&ConnAck::new(false, ReasonCode::Success));
        assert_eq!(none.max_packet_size, MQTT_MAX_PACKET);
        assert!(none.check(&publish(100_000), v).is_ok());
    }

    #[test]
    fn suback_reasons_become_granted_qos_or_errors() {
        let f = TopicFilter::new("a/#").unwrap();
        let ack = |r| SubAck {
            packet_id: NonZeroU16::MIN,
            reasons: vec![r],
            properties: Default::default(),
        };
        assert_eq!(
            granted(&f, &ack(ReasonCode::GrantedQoS1)).unwrap(),
            QoS::AtLeastOnce
        );
        assert!(matches!(
            granted(&f, &ack(ReasonCode::NotAuthorized)),
            Err(ClientError::NotAuthorized { .. })
        ));
        let e = granted(&f, &ack(ReasonCode::UnspecifiedError)).unwrap_err();
        assert_eq!(e.reason(), Some(ReasonCode::UnspecifiedError));
    }
}
