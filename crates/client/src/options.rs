//! Options: the connection builder, the will, publish options and subscription requests.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use sagitta_proto::{
    Connect, ConnectProperties, MqttStr, Packet, ProtocolVersion, PublishProperties, QoS,
    SubscribeProperties, SubscriptionId, SubscriptionOptions, TopicError, TopicFilter, TopicName,
    Will, WillProperties,
};

use crate::error::ConnectError;
use crate::message::Message;
use crate::reconnect::ReconnectPolicy;
use crate::tls::{Tls, TlsOptions};

/// The port used when an address has none.
pub const DEFAULT_PORT: u16 = 1883;

/// The port used when an address has none and TLS is on ([`ClientBuilder::tls`]).
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// Default cap on QoS 1/2 messages in flight with a 3.x broker.
const DEFAULT_INFLIGHT_V3: u16 = 20;

/// Something that can be turned into a validated [`TopicName`]: `&str`, `String`, or a
/// `TopicName` (no copy).
pub trait IntoTopicName {
    /// Validates and converts.
    fn into_topic_name(self) -> Result<TopicName, TopicError>;
}

impl IntoTopicName for TopicName {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self)
    }
}

impl IntoTopicName for &TopicName {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self.clone())
    }
}

impl IntoTopicName for &str {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self)
    }
}

impl IntoTopicName for String {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self)
    }
}

impl IntoTopicName for &String {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self.as_str())
    }
}

/// Something that can be turned into a validated [`TopicFilter`]: `&str`, `String`, or a
/// `TopicFilter` (no copy).
pub trait IntoTopicFilter {
    /// Validates and converts.
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError>;
}

impl IntoTopicFilter for TopicFilter {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        Ok(self)
    }
}

impl IntoTopicFilter for &TopicFilter {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        Ok(self.clone())
    }
}

impl IntoTopicFilter for &str {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self)
    }
}

impl IntoTopicFilter for String {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self)
    }
}

impl IntoTopicFilter for &String {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self.as_str())
    }
}

/// A message callback. It runs on the client's event loop task: it must not block.
pub(crate) type Callback = Arc<dyn Fn(&Message) + Send + Sync>;

/// QoS, retain and 5.0 properties of a PUBLISH. `From<QoS>` makes the common case short:
/// `client.publish_with(topic, payload, QoS::AtLeastOnce)`.
///
/// The client manages Topic Aliases itself and never sends Subscription Identifiers, so those
/// two properties are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Quality of service.
    pub qos: QoS,
    /// Ask the broker to retain the message.
    pub retain: bool,
    /// PUBLISH properties (5.0; ignored by 3.x).
    pub properties: PublishProperties,
}

impl PublishOptions {
    /// QoS 0, not retained, no properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the QoS.
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the retain flag.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the 5.0 properties.
    pub fn properties(mut self, properties: PublishProperties) -> Self {
        self.properties = properties;
        self
    }
}

impl From<QoS> for PublishOptions {
    fn from(qos: QoS) -> Self {
        Self::new().qos(qos)
    }
}

/// A subscription request: one or more filters with their options, a 5.0 Subscription
/// Identifier, and where matching messages go — a callback, or (without one) the queue read
/// by [`crate::Client::recv`].
///
/// ```
/// use sagitta_client::{QoS, Subscription, SubscriptionOptions, RetainHandling};
///
/// let sub = Subscription::new("sensors/+/temp", QoS::AtLeastOnce)
///     .filter_with_options(
///         "alerts/#",
///         SubscriptionOptions {
///             qos: QoS::ExactlyOnce,
///             no_local: true,
///             retain_handling: RetainHandling::DoNotSend,
///             ..Default::default()
///         },
///     )
///     .on_message(|msg| println!("{} {:?}", msg.topic, msg.payload));
/// # let _ = sub;
/// ```
#[derive(Clone)]
pub struct Subscription {
    pub(crate) filters: Vec<(TopicFilter, SubscriptionOptions)>,
    pub(crate) properties: SubscribeProperties,
    pub(crate) callback: Option<Callback>,
    pub(crate) error: Option<TopicError>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("filters", &self.filters)
            .field("properties", &self.properties)
            .field("callback", &self.callback.is_some())
            .field("error", &self.error)
            .finish()
    }
}

impl Subscription {
    /// A subscription to `filter` with maximum QoS `qos`.
    pub fn new(filter: impl IntoTopicFilter, qos: QoS) -> Self {
        Self::with_options(filter, SubscriptionOptions::new(qos))
    }

    /// A subscription to `filter` with 5.0 subscription options.
    pub fn with_options(filter: impl IntoTopicFilter, options: SubscriptionOptions) -> Self {
        Self {
            filters: Vec::new(),
            properties: SubscribeProperties::default(),
            callback: None,
            error: None,
        }
        .filter_with_options(filter, options)
    }

    /// Adds another filter with maximum QoS `qos`.
    pub fn filter(self, filter: impl IntoTopicFilter, qos: QoS) -> Self {
        self.filter_with_options(filter, SubscriptionOptions::new(qos))
    }

    /// Adds another filter with 5.0 subscription options.
    pub fn filter_with_options(
        mut self,
        filter: impl IntoTopicFilter,
        options: SubscriptionOptions,
    ) -> Self {
        match filter.into_topic_filter() {
            Ok(f) => self.filters.push((f, options)),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Sets the 5.0 Subscription Identifier; the broker adds it to the messages it delivers
    /// for these filters (see [`Message::properties`]).
    pub fn id(mut self, id: SubscriptionId) -> Self {
        self.properties.subscription_identifier = Some(id);
        self
    }

    /// Sets the 5.0 SUBSCRIBE properties.
    pub fn properties(mut self, properties: SubscribeProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Delivers matching messages to `callback` with their topic and payload. The callback
    /// runs on the client's event loop task: it must not block (hand long work to a task or a
    /// channel).
    pub fn callback<F>(self, callback: F) -> Self
    where
        F: Fn(&str, &[u8]) + Send + Sync + 'static,
    {
        self.on_message(move |m: &Message| callback(&m.topic, &m.payload))
    }

    /// Delivers matching messages to `callback` as full [`Message`]s (QoS, retain, 5.0
    /// properties). Runs on the event loop task: it must not block.
    pub fn on_message<F>(mut self, callback: F) -> Self
    where
        F: Fn(&Message) + Send + Sync + 'static,
    {
        self.callback = Some(Arc::new(callback));
        self
    }
}

/// The will: a message the broker publishes if the connection ends without a DISCONNECT (or,
/// in 5.0, with reason 0x04 Disconnect with Will Message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: WillProperties,
}

impl LastWill {
    /// A QoS 0, non-retained will of `payload` to `topic`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        }
    }

    /// Sets the will QoS.
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the will retain flag.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the 5.0 will properties (delay interval, expiry, content type...).
    pub fn properties(mut self, properties: WillProperties) -> Self {
        self.properties = properties;
        self
    }

    fn into_will(self) -> Result<Will, ConnectError> {
        let topic = TopicName::new(self.topic)
            .map_err(|e| ConnectError::InvalidOptions(format!("will topic: {e}")))?;
        Ok(Will {
            topic,
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            properties: self.properties,
        })
    }
}

/// Builds and connects a [`crate::Client`].
///
/// Defaults: MQTT 5.0, a random client id (`sagitta-` and 12 hex digits), keep-alive 60 s,
/// clean start, session expiry 0, reconnect on ([`ReconnectPolicy::default`]), connect timeout
/// 10 s, PINGRESP timeout = the keep-alive but at most 10 s, incoming packets up to 16 MiB,
/// automatic topic aliases when the broker allows them, QoS 1/2 messages in flight up to the
/// broker's Receive Maximum (5.0) or 20 (3.x), plain TCP (TLS with [`ClientBuilder::tls`]).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use sagitta_client::{Client, LastWill, ProtocolVersion, QoS, ReconnectPolicy};
///
/// let client = Client::builder("localhost:1883")
///     .client_id("sensor-17")
///     .credentials("alice", "secret")
///     .keep_alive(Duration::from_secs(30))
///     .clean_start(false)
///     .session_expiry(Duration::from_secs(3600))
///     .will(LastWill::new("sensors/17/status", "offline").qos(QoS::AtLeastOnce).retain(true))
///     .protocol(ProtocolVersion::V5)
///     .reconnect(ReconnectPolicy::exponential(Duration::from_millis(200), Duration::from_secs(30)))
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    protocol: ProtocolVersion,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<Bytes>,
    keep_alive: Duration,
    clean_start: bool,
    session_expiry: Duration,
    will: Option<LastWill>,
    reconnect: ReconnectPolicy,
    connect_timeout: Duration,
    ping_timeout: Option<Duration>,
    max_packet_size: u32,
    topic_alias_maximum: u16,
    receive_maximum: u16,
    max_inflight: Option<u16>,
    topic_aliases: bool,
    request_capacity: usize,
    message_capacity: usize,
    user_properties: Vec<(String, String)>,
    tls: Option<TlsOptions>,
    scram: bool,
    manual_acks: bool,
    bridge: bool,
    connector: Option<Connector>,
}

/// Opens the byte stream of a connection instead of TCP (`ClientBuilder::connector`).
#[doc(hidden)]
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct Connector(
    pub  std::sync::Arc<
        dyn Fn() -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<BoxedStream>> + Send>,
            > + Send
            + Sync,
    >,
);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}

/// A byte stream from a [`Connector`].
#[doc(hidden)]
pub type BoxedStream = Box<dyn IoStream>;

/// What a [`Connector`]'s stream must be.
#[doc(hidden)]
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

impl ClientBuilder {
    /// A builder for the broker at `addr`: `host:port` (the port defaults to 1883, or 8883
    /// with [`ClientBuilder::tls`]), or a WebSocket URL, `ws://host[:port]/path` or
    /// `wss://host[:port]/path` (ports 80 and 443 by default; `wss://` trusts the system's
    /// CAs unless [`ClientBuilder::tls`] says otherwise).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            protocol: ProtocolVersion::V5,
            client_id: None,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(60),
            clean_start: true,
            session_expiry: Duration::ZERO,
            will: None,
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            ping_timeout: None,
            max_packet_size: 16 * 1024 * 1024,
            topic_alias_maximum: 0,
            receive_maximum: u16::MAX,
            max_inflight: None,
            topic_aliases: true,
            request_capacity: 1024,
            message_capacity: 1024,
            user_properties: Vec::new(),
            tls: None,
            scram: false,
            manual_acks: false,
            bridge: false,
            connector: None,
        }
    }

    /// Manual acknowledgements: QoS 1/2 messages read with `Client::recv_manual` are
    /// acknowledged only when the caller passes their `Ack` to `Client::ack` (messages for
    /// callbacks are still acknowledged at once). For the broker's bridges; not part of the
    /// supported API.
    #[doc(hidden)]
    pub fn manual_acks(mut self, on: bool) -> Self {
        self.manual_acks = on;
        self
    }

    /// MQTT 3.x: set the bridge flag in CONNECT (protocol level 0x83 / 0x84, Mosquitto's
    /// `try_private`). Ignored for 5.0. Not part of the supported API.
    #[doc(hidden)]
    pub fn bridge(mut self, on: bool) -> Self {
        self.bridge = on;
        self
    }

    /// Opens each connection's byte stream with `connector` instead of TCP (and TLS). The
    /// address is then only a name in logs. Not part of the supported API.
    #[doc(hidden)]
    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// The MQTT version: [`ProtocolVersion::V5`] (default), `V3_1_1` or `V3_1`.
    pub fn protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.protocol = protocol;
        self
    }

    /// The client identifier (default: a random `sagitta-…`). An empty id asks a 5.0 broker
    /// to assign one, which is then used on reconnect.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// User name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Bytes>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Logs in with SCRAM-SHA-256 (MQTT 5.0 enhanced authentication) using the
    /// [`ClientBuilder::credentials`]: the password never crosses the network, and the
    /// connection is refused with [`ConnectError::Scram`] unless the broker proves that it
    /// knows the password too. Needs MQTT 5.0 and a broker offering the method (Sagitta does
    /// for users of `sagitta passwd --scram`).
    pub fn scram_sha256(mut self) -> Self {
        self.scram = true;
        self
    }

    /// User name only.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Keep-alive interval, rounded up to whole seconds (zero turns pings off; capped at
    /// 65 535 s). A 5.0
    /// broker's Server Keep Alive overrides it.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// How long to wait for PINGRESP before the connection is considered dead (default: the
    /// keep-alive, at most 10 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = Some(timeout);
        self
    }

    /// Clean Start (5.0) / Clean Session (3.x). `false` resumes the broker's session for this
    /// client id.
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Session Expiry Interval (5.0, whole seconds; `Duration::MAX`: never). Above zero the
    /// session outlives the connection, and reconnects resume it.
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = expiry;
        self
    }

    /// The will message.
    pub fn will(mut self, will: LastWill) -> Self {
        self.will = Some(will);
        self
    }

    /// The reconnect policy ([`ReconnectPolicy::disabled`] to turn reconnecting off).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Connects with TLS (1.2 or 1.3): see [`TlsOptions`] for whom to trust, the client
    /// certificate of mutual TLS and the server name. The files are read when the client is
    /// built ([`ClientBuilder::connect`]); an unusable one is a [`ConnectError::Tls`] naming
    /// it, and a failed handshake a [`ConnectError::TlsHandshake`] saying why.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Time allowed for the TCP connection, the TLS handshake and the CONNACK together.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest packet accepted from the broker, announced to 5.0 brokers (default 16 MiB).
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = bytes.max(64);
        self
    }

    /// Topic aliases the broker may use towards us (5.0; default 0, none).
    pub fn topic_alias_maximum(mut self, max: u16) -> Self {
        self.topic_alias_maximum = max;
        self
    }

    /// QoS 1/2 messages the broker may have unacknowledged towards us (5.0; default 65 535).
    pub fn receive_maximum(mut self, max: u16) -> Self {
        self.receive_maximum = max.max(1);
        self
    }

    /// Most outgoing QoS 1/2 messages unacknowledged at once; further publishes wait. A 5.0
    /// broker's Receive Maximum lowers it. Default: 65 535 for 5.0 (the broker says what it
    /// takes), 20 for 3.x, whose brokers cannot say (Mosquitto 2.0 takes 20 by default and
    /// silently drops further QoS 2 messages from a 3.1.1 client, though it acknowledges
    /// them).
    pub fn max_inflight(mut self, max: u16) -> Self {
        self.max_inflight = Some(max.max(1));
        self
    }

    /// Use topic aliases for repeated topics when the broker allows them (default on).
    pub fn topic_aliases(mut self, enabled: bool) -> Self {
        self.topic_aliases = enabled;
        self
    }

    /// Capacity of the request queue from the handles to the event loop (default 1024). A
    /// full queue makes callers wait.
    pub fn request_capacity(mut self, capacity: usize) -> Self {
        self.request_capacity = capacity.max(1);
        self
    }

    /// Capacity of the queue read by `recv()` (default 1024). When it is full, the event loop
    /// stops reading from the broker until there is room.
    pub fn message_capacity(mut self, capacity: usize) -> Self {
        self.message_capacity = capacity.max(1);
        self
    }

    /// Adds a 5.0 User Property to CONNECT.
    pub fn user_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((name.into(), value.into()));
        self
    }

    /// Connects: TCP, TLS if set, CONNECT, CONNACK. Spawns the event loop on the current
    /// tokio runtime.
    pub async fn connect(self) -> Result<crate::Client, ConnectError> {
        crate::client::Client::connect_with(self.build()?).await
    }

    /// Connects with a blocking client that runs its own runtime thread.
    pub fn connect_blocking(self) -> Result<crate::blocking::Client, ConnectError> {
        crate::blocking::Client::connect_with(self)
    }

    pub(crate) fn build(self) -> Result<Options, ConnectError> {
        let invalid =
            |what: &str, e: &dyn fmt::Display| ConnectError::InvalidOptions(format!("{what}: {e}"));
        let v5 = self.protocol.is_v5();
        let client_id = match self.client_id {
            Some(id) => MqttStr::new(id).map_err(|e| invalid("client id", &e))?,
            None => {
                // 20 characters: within the 23 that MQTT 3.1 allows [MQTT-3.1.3-5].
                let n: u64 = rand::rng().random::<u64>() & 0xFFFF_FFFF_FFFF;
                MqttStr::new(format!("sagitta-{n:012x}")).map_err(|e| invalid("client id", &e))?
            }
        };
        let mut connect = Connect::new(self.protocol, client_id);
        connect.clean_start = self.clean_start;
        connect.bridge = self.bridge && !v5;
        let keep_alive = self.keep_alive.as_secs() + u64::from(self.keep_alive.subsec_nanos() > 0);
        connect.keep_alive = u16::try_from(keep_alive).unwrap_or(u16::MAX);
        connect.username = match self.username {
            Some(u) => Some(MqttStr::new(u).map_err(|e| invalid("user name", &e))?),
            None => None,
        };
        connect.password = self.password;
        // SCRAM carries the name and proves the password: CONNECT has neither.
        let scram = if self.scram {
            if !v5 {
                return Err(ConnectError::InvalidOptions(
                    "SCRAM-SHA-256 needs MQTT 5.0 (enhanced authentication)".into(),
                ));
            }
            match (connect.username.take(), connect.password.take()) {
                (Some(user), Some(password)) => Some(Scram {
                    username: user.to_string(),
                    password,
                }),
                _ => {
                    return Err(ConnectError::InvalidOptions(
                        "SCRAM-SHA-256 needs credentials (a user name and a password)".into(),
                    ));
                }
            }
        } else {
            None
        };
        connect.will = self.will.map(LastWill::into_will).transpose()?;
        let session_expiry = u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX);
        if v5 {
            let mut user_properties = Vec::new();
            for (k, v) in self.user_properties {
                let k = MqttStr::new(k).map_err(|e| invalid("user property", &e))?;
                let v = MqttStr::new(v).map_err(|e| invalid("user property", &e))?;
                user_properties.push((k, v));
            }
            connect.properties = ConnectProperties {
                session_expiry_interval: (session_expiry > 0).then_some(session_expiry),
                receive_maximum: NonZeroU16::new(self.receive_maximum)
                    .filter(|m| m.get() != u16::MAX),
                maximum_packet_size: NonZeroU32::new(self.max_packet_size),
                topic_alias_maximum: (self.topic_alias_maximum > 0)
                    .then_some(self.topic_alias_maximum),
                user_properties,
                ..ConnectProperties::default()
            };
        }
        if connect.client_id.is_empty() && !v5 && !connect.clean_start {
            return Err(ConnectError::InvalidOptions(
                "MQTT 3.x needs a client id for a persistent session [MQTT-3.1.3-7]".into(),
            ));
        }
        Packet::Connect(Box::new(connect.clone()))
            .encoded_len(self.protocol)
            .map_err(|e| invalid("CONNECT", &e))?;
        let persistent = if v5 {
            session_expiry > 0
        } else {
            !connect.clean_start
        };
        let ws = crate::ws::WsUrl::parse(&self.addr)
            .transpose()
            .map_err(ConnectError::InvalidOptions)?;
        let (addr, tls) = match &ws {
            // wss:// trusts the system's CAs unless TLS options say otherwise.
            Some(ws) if ws.secure => (
                ws.addr.clone(),
                Some(self.tls.unwrap_or_else(TlsOptions::system_roots)),
            ),
            Some(_) if self.tls.is_some() => {
                return Err(ConnectError::InvalidOptions(
                    "a ws:// address is plain WebSocket: use wss:// for TLS".into(),
                ));
            }
            Some(ws) => (ws.addr.clone(), None),
            None => {
                let default_port = if self.tls.is_some() {
                    DEFAULT_TLS_PORT
                } else {
                    DEFAULT_PORT
                };
                (normalize_addr(self.addr, default_port), self.tls)
            }
        };
        let tls = tls.map(|t| t.load(&addr)).transpose()?;
        Ok(Options {
            addr,
            tls,
            ws,
            scram,
            connect,
            persistent,
            reconnect: self.reconnect,
            connect_timeout: self.connect_timeout,
            ping_timeout: self.ping_timeout,
            max_incoming: self.max_packet_size as usize,
            inbound_topic_aliases: if v5 { self.topic_alias_maximum } else { 0 },
            receive_maximum: if v5 { self.receive_maximum } else { u16::MAX },
            max_inflight: self.max_inflight.unwrap_or(if v5 {
                u16::MAX
            } else {
                DEFAULT_INFLIGHT_V3
            }),
            topic_aliases: self.topic_aliases && v5,
            request_capacity: self.request_capacity,
            message_capacity: self.message_capacity,
            manual_acks: self.manual_acks,
            connector: self.connector,
        })
    }
}

/// Credentials for SCRAM-SHA-256.
#[derive(Clone)]
pub(crate) struct Scram {
    pub username: String,
    pub password: Bytes,
}

impl fmt::Debug for Scram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scram")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Validated options, as the event loop uses them.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `host:port`.
    pub addr: String,
    /// TLS, when on.
    pub tls: Option<Tls>,
    /// MQTT over WebSocket (`ws://`, `wss://` addresses).
    pub ws: Option<crate::ws::WsUrl>,
    /// SCRAM-SHA-256 credentials, when logging in with it.
    pub scram: Option<Scram>,
    /// The CONNECT of the first connection; reconnects adjust Clean Start and the client id.
    pub connect: Connect,
    /// True if the session outlives a connection (5.0: session expiry > 0; 3.x: clean
    /// session off), so reconnects ask to resume it.
    pub persistent: bool,
    pub reconnect: ReconnectPolicy,
    pub connect_timeout: Duration,
    pub ping_timeout: Option<Duration>,
    pub max_incoming: usize,
    pub inbound_topic_aliases: u16,
    pub receive_maximum: u16,
    /// Our own cap on outgoing QoS 1/2 messages in flight.
    pub max_inflight: u16,
    pub topic_aliases: bool,
    pub request_capacity: usize,
    pub message_capacity: usize,
    /// QoS 1/2 messages for `recv()` are acknowledged by the caller.
    pub manual_acks: bool,
    /// Opens the stream instead of TCP.
    pub connector: Option<Connector>,
}

impl Options {
    pub fn version(&self) -> ProtocolVersion {
        self.connect.protocol
    }

    /// The PINGRESP timeout for a keep-alive of `keep_alive` seconds.
    pub fn ping_timeout_for(&self, keep_alive: u16) -> Duration {
        self.ping_timeout.unwrap_or_else(|| {
            Duration::from_secs(u64::from(keep_alive)).min(Duration::from_secs(10))
        })
    }
}

/// Adds the default port when `addr` has none (`localhost` → `localhost:1883`).
fn normalize_addr(addr: String, default_port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr;
    }
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| port.parse::<u16>().is_ok() && !host.ends_with(':'));
    let bare_ipv6 = addr.parse::<std::net::Ipv6Addr>().is_ok();
    match (has_port && !bare_ipv6, bare_ipv6) {
        (true, _) => addr,
        (false, true) => format!("[{addr}]:{default_port}"),
        (false, false) => format!("{addr}:{default_port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        let n = |a: &str| normalize_addr(a.into(), DEFAULT_PORT);
        assert_eq!(n("localhost"), "localhost:1883");
        assert_eq!(n("localhost:1884"), "localhost:1884");
        assert_eq!(n("127.0.0.1:5"), "127.0.0.1:5");
        assert_eq!(n("[::1]:1883"), "[::1]:1883");
        assert_eq!(n("::1"), "[::1]:1883");
        assert_eq!(normalize_addr("::1".into(), DEFAULT_TLS_PORT), "[::1]:8883");
    }

    #[test]
    fn tls_changes_the_default_port_and_names_the_server() {
        let o = ClientBuilder::new("localhost")
            .tls(TlsOptions::insecure())
            .build()
            .unwrap();
        assert_eq!(o.addr, "localhost:8883");
        let tls = o.tls.unwrap();
        assert_eq!(tls.server_name.to_str(), "localhost");
        let o = ClientBuilder::new("127.0.0.1:1884")
            .tls(TlsOptions::insecure())
            .build()
            .unwrap();
        assert_eq!(o.addr, "127.0.0.1:1884");
        assert!(matches!(
            o.tls.unwrap().server_name,
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(ClientBuilder::new("h").build().unwrap().tls.is_none());
        let e = ClientBuilder::new("h")
            .tls(TlsOptions::ca_file("/nonexistent/ca.pem"))
            .build()
            .unwrap_err();
        assert!(matches!(e, ConnectError::Tls(_)), "{e}");
        assert!(e.is_fatal());
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn build_connect_for_each_version() {
        let o = ClientBuilder::new("h")
            .client_id("c1")
            .credentials("u", "p")
            .keep_alive(Duration::from_secs(70_000))
            .session_expiry(Duration::from_secs(30))
            .topic_alias_maximum(5)
            .build()
            .unwrap();
        assert_eq!(o.connect.keep_alive, u16::MAX);
        assert_eq!(o.connect.properties.session_expiry_interval, Some(30));
        assert_eq!(o.connect.properties.topic_alias_maximum, Some(5));
        assert_eq!(o.connect.properties.receive_maximum, None);
        assert!(o.persistent);
        assert_eq!(o.max_inflight, u16::MAX);
        assert_eq!(o.ping_timeout_for(60), Duration::from_secs(10));
        assert_eq!(o.ping_timeout_for(3), Duration::from_secs(3));

        let o = ClientBuilder::new("h")
            .protocol(ProtocolVersion::V3_1_1)
            .session_expiry(Duration::from_secs(30))
            .topic_alias_maximum(5)
            .build()
            .unwrap();
        assert!(o.connect.properties.is_empty());
        assert!(!o.persistent);
        assert!(o.connect.client_id.starts_with("sagitta-"));
        assert_eq!(o.connect.client_id.len(), 20);
        assert_eq!(o.inbound_topic_aliases, 0);
        assert_eq!(o.max_inflight, 20);
        assert!(!o.topic_aliases);
    }

    #[test]
    fn invalid_options_are_errors() {
        let e = ClientBuilder::new("h")
            .will(LastWill::new("a/+", "x"))
            .build()
            .unwrap_err();
        assert!(matches!(e, ConnectError::InvalidOptions(_)), "{e}");
        let e = ClientBuilder::new("h")
            .protocol(ProtocolVersion::V3_1_1)
            .client_id("")
            .clean_start(false)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("MQTT-3.1.3-7"), "{e}");
        let e = ClientBuilder::new("h")
            .client_id("a\0b")
            .build()
            .unwrap_err();
        assert!(e.is_fatal());
    }

    #[test]
    fn subscription_collects_filters_and_the_first_error() {
        let s = Subscription::new("a/#", QoS::AtLeastOnce)
            .filter("b/+", QoS::AtMostOnce)
            .filter("bad/#/x", QoS::AtMostOnce)
            .id(SubscriptionId::new(7).unwrap())
            .callback(|_, _| {});
        assert_eq!(s.filters.len(), 2);
        assert_eq!(s.error, Some(TopicError::MisplacedWildcard));
        assert!(s.callback.is_some());
        assert_eq!(s.properties.subscription_identifier, SubscriptionId::new(7));
    }
}
