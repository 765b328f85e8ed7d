//! Broker configuration: a typed struct with defaults, read from TOML, checked by
//! [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::bridge::config::{BridgeConfig, BridgeProtocol, Direction, TopicRule};
pub use crate::cluster::ClusterConfig;
use crate::store::SyncMode;
use crate::tls::TlsFiles;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key has the wrong type or is unknown.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A `[[bridge]]` table is inconsistent.
    #[error("`[[bridge]]` {name}: {message}")]
    Bridge {
        /// Its `name`.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A `[[listener]]` table is inconsistent.
    #[error("`[[listener]]` #{index} (bind = {bind}): `{key}`: {message}")]
    Listener {
        /// Its position among the `[[listener]]` tables, from 1.
        index: usize,
        /// Its `bind` address.
        bind: SocketAddr,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS 1.2 / 1.3 (rustls).
    Tls,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS: the TLS settings of `tls`.
    Wss,
}

impl ListenerKind {
    /// Whether the transport runs TLS (`tls`, `wss`).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether the transport is a WebSocket (`ws`, `wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        })
    }
}

/// One `[[listener]]` table: a typed listener with its own authentication settings.
///
/// Anonymous clients (no username, or with `use_identity_as_username` no certificate
/// identity) are refused unless `allow_anonymous` here, or else the global
/// `allow_anonymous`, is true. `password_file` here, or else the global one, checks
/// usernames and passwords.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `tcp`, `tls`, `ws` or `wss`.
    #[serde(rename = "type")]
    pub kind: ListenerKind,
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Name in logs and for authenticators. Default: `<type>://<address>`.
    #[serde(default)]
    pub name: Option<String>,
    /// TLS: PEM certificate chain, the server's certificate first. Required for `tls` and
    /// `wss`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// TLS: PEM private key (PKCS#8, PKCS#1 or SEC1). Required for `tls` and `wss`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS: PEM bundle of CAs; clients must present a certificate that chains to one of
    /// them (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// TLS with `client_ca`: whether a client certificate is required. Default true;
    /// `false` verifies a certificate only if the client presents one.
    #[serde(default)]
    pub require_client_cert: Option<bool>,
    /// TLS with `client_ca`: PEM certificate revocation lists (from the CA); a revoked client
    /// certificate fails the handshake. Re-read with the certificates on SIGHUP.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// TLS with `client_ca`: the client certificate's common name (else its first DNS
    /// name) becomes the username; the username and password in CONNECT are ignored and
    /// no password file is consulted. Default false.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Whether anonymous clients may connect here. Absent: the global `allow_anonymous`,
    /// else false.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Password file for this listener. Absent: the global `password_file`, if any.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Most simultaneous connections through this listener (within the global
    /// `max_connections`). Absent: only the global limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// WebSocket (`ws`, `wss`): the HTTP path of the upgrade request. Requests for other
    /// paths get HTTP 404. Absent: `/mqtt`.
    #[serde(default)]
    pub path: Option<String>,
}

/// The HTTP path WebSocket listeners upgrade at unless `path` says otherwise.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(bind: SocketAddr) -> Self {
        Self {
            kind: ListenerKind::Tcp,
            bind,
            name: None,
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: None,
            crl_file: None,
            use_identity_as_username: false,
            allow_anonymous: None,
            password_file: None,
            max_connections: None,
            path: None,
        }
    }

    /// A TLS listener on `bind` with a PEM certificate chain and key.
    pub fn tls(bind: SocketAddr, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            kind: ListenerKind::Tls,
            cert: Some(cert.into()),
            key: Some(key.into()),
            ..Self::tcp(bind)
        }
    }

    /// A WebSocket listener on `bind` (path `/mqtt` unless [`ListenerConfig::path`] says
    /// otherwise).
    pub fn ws(bind: SocketAddr) -> Self {
        Self {
            kind: ListenerKind::Ws,
            ..Self::tcp(bind)
        }
    }

    /// A WebSocket-over-TLS listener on `bind` with a PEM certificate chain and key.
    pub fn wss(bind: SocketAddr, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            kind: ListenerKind::Wss,
            ..Self::tls(bind, cert, key)
        }
    }

    /// Sets the WebSocket path (builder style).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Verifies client certificates against a PEM CA bundle (builder style).
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// Sets `allow_anonymous` (builder style).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = Some(allow);
        self
    }

    /// Sets the password file (builder style).
    pub fn password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// Sets `use_identity_as_username` (builder style).
    pub fn use_identity_as_username(mut self, on: bool) -> Self {
        self.use_identity_as_username = on;
        self
    }

    /// Sets the CRL file (builder style).
    pub fn crl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl_file = Some(path.into());
        self
    }

    /// Sets `require_client_cert` (builder style).
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = Some(on);
        self
    }

    /// Sets the name (builder style).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The TLS files, for a `tls` or `wss` listener with `cert` and `key`.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (self.kind.is_tls(), &self.cert, &self.key) {
            (true, Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
                require_client_cert: self.require_client_cert.unwrap_or(true),
                crl: self.crl_file.clone(),
            }),
            _ => None,
        }
    }

    /// The HTTP path of a `ws` or `wss` listener (`path`, else `/mqtt`).
    pub fn ws_path(&self) -> Option<&str> {
        self.kind
            .is_websocket()
            .then(|| self.path.as_deref().unwrap_or(DEFAULT_WS_PATH))
    }
}

/// A listener as the broker runs it: a `listen` address or a `[[listener]]` table with the
/// global defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EffectiveListener {
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    pub name: Option<String>,
    pub tls: Option<TlsFiles>,
    pub allow_anonymous: bool,
    /// Not set with `use_identity_as_username`.
    pub password_file: Option<PathBuf>,
    pub use_identity_as_username: bool,
    pub max_connections: Option<usize>,
    /// The HTTP path of a WebSocket listener.
    pub ws_path: Option<String>,
}

/// Broker settings. Every field has a default; see `sagitta.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plain TCP addresses to listen on, with the global `password_file` and
    /// `allow_anonymous`. Empty by default; when both this and `listeners` are empty the
    /// broker listens on `127.0.0.1:1883`.
    pub listen: Vec<SocketAddr>,
    /// Typed listeners (`[[listener]]` tables in TOML): TCP, TLS, WebSocket or WebSocket over
    /// TLS, each with its own
    /// authentication settings. Unlike `listen`, they refuse anonymous clients unless
    /// `allow_anonymous` is true (on the table or globally).
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Largest packet accepted from a client, in bytes (fixed header included). Default 1 MiB.
    pub max_packet_size: u32,
    /// Seconds a new connection has to send CONNECT. Default 10.
    pub connect_timeout: u64,
    /// Milliseconds a connection refused for its credentials (bad username or password, or
    /// not authorized) waits before its CONNACK, so that guessing passwords is slow. Only
    /// that connection waits. Default 1000; 0 turns it off.
    pub failed_login_delay_ms: u64,
    /// Most simultaneous connections. Default 100 000.
    pub max_connections: usize,
    /// Most new connections accepted per second over all listeners (more are closed at
    /// once, before any TLS or MQTT work). 0 (the default) for no limit.
    pub max_connection_rate: u32,
    /// Most PUBLISH packets per second from one client; a faster client is not read from
    /// until it is back under the rate (back-pressure, nothing dropped). 0 (the default) for
    /// no limit.
    pub max_publish_rate: u32,
    /// Most bytes of PUBLISH packets per second from one client, enforced like
    /// `max_publish_rate`. 0 (the default) for no limit.
    pub max_publish_bandwidth: u64,
    /// Most subscriptions one session may hold; more are refused (5.0 SUBACK 0x97 Quota
    /// exceeded, 3.1.1 0x80). Default 10 000; 0 for no limit.
    pub max_subscriptions_per_client: usize,
    /// Most levels in a topic name or filter; a PUBLISH with more is refused like a denied
    /// one (5.0 PUBACK 0x90) and a subscription gets 0x8F (3.1.1: 0x80). Default 128.
    pub max_topic_levels: usize,
    /// QoS 1/2 messages the broker sends a client before waiting for acknowledgements (also
    /// capped by the client's 5.0 Receive Maximum). Default 1024: it bounds the QoS 1/2
    /// throughput to one client at this many messages per round trip.
    pub max_inflight: u16,
    /// QoS 2 publishes a client may have unreleased at once (the Receive Maximum announced to
    /// 5.0 clients). Default 1024.
    pub receive_maximum: u16,
    /// Messages queued per session (online or offline) beyond the in-flight window. Past it
    /// new messages are dropped and counted. Default 1000.
    pub max_queued_messages: usize,
    /// Queue QoS 0 messages for persistent sessions while their client is offline.
    /// Default false.
    pub queue_qos0_offline: bool,
    /// Upper bound on a session's expiry interval, in seconds; 3.x persistent sessions get
    /// this value. Absent: sessions may live forever.
    pub max_session_expiry: Option<u32>,
    /// Upper bound on the keep-alive a client may ask for, in seconds (5.0 clients are told
    /// with Server Keep Alive). 0 disables the bound. Default 0.
    pub max_keep_alive: u16,
    /// Topic aliases a 5.0 client may use towards the broker. Default 64.
    pub topic_alias_maximum: u16,
    /// Highest QoS the broker supports (0, 1 or 2). Default 2.
    pub maximum_qos: u8,
    /// Whether retained messages are supported. Default true.
    pub retain_available: bool,
    /// Accept an empty client id from 3.1.1 clients with a clean session, and assign one.
    /// Default true.
    pub allow_zero_length_client_id: bool,
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off. Default 10.
    pub sys_interval: u64,
    /// Mosquitto-compatible password file (`username:$7$...` lines, made by `sagitta passwd`
    /// or `mosquitto_passwd`), read when the broker starts and on SIGHUP. When set, clients must present
    /// a username and its password. Ignored when the broker is given its own authenticator
    /// (`BrokerBuilder::authenticator`). Absent by default: no password check.
    pub password_file: Option<PathBuf>,
    /// Whether clients without a username may connect. Absent (the default) means, for
    /// `listen` addresses: allowed when there is no `password_file`, refused when there is
    /// one (`false` without a `password_file` is then an error); for `[[listener]]` tables:
    /// refused unless the table says otherwise.
    pub allow_anonymous: Option<bool>,
    /// ACL file (Mosquitto's `acl_file` format, with `client` sections, `default` and the
    /// `subscribe` / `receive` / `publish` access words): who may publish, subscribe and
    /// receive on which topics. Read at start and again by `BrokerHandle::reload_auth_files`
    /// (SIGHUP). Absent by default: everything is allowed.
    pub acl_file: Option<PathBuf>,
    /// Keep retained messages and persistent sessions (subscriptions, queued and in-flight
    /// QoS 1/2 messages, inbound QoS 2 ids, delayed wills) in `data_dir` across restarts.
    /// Default true; `false` (or `sagitta broker --memory`) keeps everything in memory.
    pub persistence: bool,
    /// Directory of the store, created if missing. Default `data` (relative to the working
    /// directory).
    pub data_dir: PathBuf,
    /// When the store is synced to disk: `always` (a QoS 1/2 PUBLISH is acknowledged only
    /// once it is on disk for every persistent session that gets it; many publishes share one
    /// sync), `periodic` (every `sync_interval_ms`: a crash loses at most that window), or
    /// `never` (every 10 s and at a clean stop). Default `periodic`.
    pub sync: SyncMode,
    /// Milliseconds between syncs with `sync = "periodic"`. Default 100.
    pub sync_interval_ms: u64,
    /// The operators' HTTP listener (`[http]` table): Prometheus metrics, health and
    /// readiness, and the admin API. Absent by default: no HTTP listener.
    pub http: Option<HttpConfig>,
    /// Bridges to other MQTT brokers (`[[bridge]]` tables). None by default.
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
    /// Cluster mode (`[cluster]` table): this node's name and the NATS servers the cluster
    /// runs on. Absent by default: a single node that never talks to NATS.
    pub cluster: Option<ClusterConfig>,
}

/// The `[http]` table: where the operators' HTTP listener binds, and the bearer token its
/// endpoints (all but `/health` and `/ready`) require.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port. Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// When set, every endpoint except `/health` and `/ready` requires the header
    /// `Authorization: Bearer <token>`. Required when `bind` is not a loopback address.
    pub token: Option<String>,
    /// HTTPS: the PEM certificate chain (with `key`). Without it the listener speaks plain
    /// HTTP.
    pub cert: Option<PathBuf>,
    /// HTTPS: the PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            cert: None,
            key: None,
        }
    }
}

impl HttpConfig {
    /// An HTTP listener on `bind`, without a token.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            ..Self::default()
        }
    }

    /// Serves HTTPS with this certificate chain and key (PEM files; builder style).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Sets the bearer token (builder style).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The token is not shown.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            listeners: Vec::new(),
            max_packet_size: 1024 * 1024,
            connect_timeout: 10,
            failed_login_delay_ms: 1000,
            max_connections: 100_000,
            max_connection_rate: 0,
            max_publish_rate: 0,
            max_publish_bandwidth: 0,
            max_subscriptions_per_client: 10_000,
            max_topic_levels: 128,
            max_inflight: 1024,
            receive_maximum: 1024,
            max_queued_messages: 1000,
            queue_qos0_offline: false,
            max_session_expiry: None,
            max_keep_alive: 0,
            topic_alias_maximum: 64,
            maximum_qos: 2,
            retain_available: true,
            allow_zero_length_client_id: true,
            sys_interval: 10,
            password_file: None,
            allow_anonymous: None,
            acl_file: None,
            persistence: true,
            data_dir: PathBuf::from("data"),
            sync: SyncMode::Periodic,
            sync_interval_ms: 100,
            http: None,
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

impl Config {
    /// Turns persistence off: an in-memory broker (builder style).
    pub fn in_memory(mut self) -> Self {
        self.persistence = false;
        self
    }

    /// Keeps the store in `dir` (builder style; turns persistence on).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.persistence = true;
        self.data_dir = dir.into();
        self
    }

    /// The sync interval of `sync = "periodic"`.
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms)
    }

    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks values against their allowed ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.max_packet_size < 64 || self.max_packet_size > 268_435_460 {
            return invalid("max_packet_size", "must be between 64 and 268435460 bytes");
        }
        if self.maximum_qos > 2 {
            return invalid("maximum_qos", "must be 0, 1 or 2");
        }
        if self.max_inflight == 0 {
            return invalid("max_inflight", "must be at least 1");
        }
        if self.receive_maximum == 0 {
            return invalid("receive_maximum", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.allow_anonymous == Some(false)
            && self.password_file.is_none()
            && !self.listen_addrs().is_empty()
        {
            return invalid(
                "allow_anonymous",
                "`false` needs a `password_file` (without one no client can be identified)",
            );
        }
        if self.max_topic_levels == 0 {
            return invalid("max_topic_levels", "must be at least 1");
        }
        if self.sync_interval_ms == 0 {
            return invalid("sync_interval_ms", "must be at least 1");
        }
        if self.persistence && self.data_dir.as_os_str().is_empty() {
            return invalid(
                "data_dir",
                "must not be empty (or set `persistence = false`)",
            );
        }
        if self.connect_timeout == 0 {
            return invalid("connect_timeout", "must be at least 1 second");
        }
        if let Some(http) = &self.http {
            match &http.token {
                Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                    return invalid(
                        "http.token",
                        "must be printable ASCII without spaces, and not empty",
                    );
                }
                None if !http.bind.ip().is_loopback() => {
                    return Err(ConfigError::Invalid {
                        key: "http.token",
                        message: format!(
                            "required because `http.bind` ({}) is not a loopback address: \
                             the admin API could be reached from the network (set a token, or \
                             bind to 127.0.0.1)",
                            http.bind
                        ),
                    });
                }
                _ => {}
            }
            if http.cert.is_some() != http.key.is_some() {
                return invalid(
                    "http.cert",
                    "HTTPS needs both `cert` and `key` (or neither, for plain HTTP)",
                );
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            self.validate_listener(i + 1, l, true)?;
        }
        if let Some(c) = &self.cluster {
            c.validate()
                .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        }
        self.validate_bridges()
    }

    fn validate_bridges(&self) -> Result<(), ConfigError> {
        for (i, b) in self.bridges.iter().enumerate() {
            let error = |message: String| ConfigError::Bridge {
                name: if b.name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    b.name.clone()
                },
                message,
            };
            b.validate().map_err(error)?;
            if self.bridges[..i].iter().any(|other| other.name == b.name) {
                return Err(error("another `[[bridge]]` has the same name".into()));
            }
        }
        Ok(())
    }

    /// [`Config::validate`] for a broker with its own authenticator: listeners need not
    /// admit anyone by the configuration's own means.
    pub(crate) fn validate_with_authenticator(&self) -> Result<(), ConfigError> {
        let mut relaxed = self.clone();
        relaxed.allow_anonymous = None;
        let listeners = std::mem::take(&mut relaxed.listeners);
        relaxed.validate()?;
        for (i, l) in listeners.iter().enumerate() {
            self.validate_listener(i + 1, l, false)?;
        }
        Ok(())
    }

    fn validate_listener(
        &self,
        index: usize,
        l: &ListenerConfig,
        must_admit: bool,
    ) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Listener {
                index,
                bind: l.bind,
                key,
                message: message.to_owned(),
            })
        };
        if l.kind.is_tls() {
            if l.cert.is_none() {
                let message = format!("required for type = \"{}\" (PEM certificate chain)", l.kind);
                return invalid("cert", &message);
            }
            if l.key.is_none() {
                let message = format!("required for type = \"{}\" (PEM private key)", l.kind);
                return invalid("key", &message);
            }
        } else {
            let tls_only = [
                ("cert", l.cert.is_some()),
                ("key", l.key.is_some()),
                ("client_ca", l.client_ca.is_some()),
                ("require_client_cert", l.require_client_cert.is_some()),
                ("crl_file", l.crl_file.is_some()),
                ("use_identity_as_username", l.use_identity_as_username),
            ];
            if let Some((key, _)) = tls_only.into_iter().find(|(_, set)| *set) {
                return invalid(key, "only for type = \"tls\" or \"wss\"");
            }
        }
        if let Some(path) = &l.path {
            if !l.kind.is_websocket() {
                return invalid("path", "only for type = \"ws\" or \"wss\"");
            }
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c == '?') {
                return invalid(
                    "path",
                    "must start with `/` and hold no spaces or query (e.g. \"/mqtt\")",
                );
            }
        }
        if l.client_ca.is_none() {
            if l.require_client_cert.is_some() {
                return invalid("require_client_cert", "needs `client_ca`");
            }
            if l.crl_file.is_some() {
                return invalid("crl_file", "needs `client_ca`");
            }
            if l.use_identity_as_username {
                return invalid(
                    "use_identity_as_username",
                    "needs `client_ca` (client certificates are only read when verified)",
                );
            }
        }
        if l.use_identity_as_username && l.password_file.is_some() {
            return invalid(
                "password_file",
                "not used with `use_identity_as_username` (the certificate identifies the \
                 client); remove one of them",
            );
        }
        if l.max_connections == Some(0) {
            return invalid("max_connections", "must be at least 1");
        }
        if l.name.as_deref().is_some_and(str::is_empty) {
            return invalid("name", "must not be empty");
        }
        let e = self.effective(l);
        if must_admit
            && !e.allow_anonymous
            && e.password_file.is_none()
            && !e.use_identity_as_username
        {
            return invalid(
                "allow_anonymous",
                "this listener would admit no client: set `allow_anonymous = true`, a \
                 `password_file`, or (TLS with `client_ca`) `use_identity_as_username = true`",
            );
        }
        Ok(())
    }

    /// The plain TCP addresses of `listen`, or `127.0.0.1:1883` when neither `listen` nor
    /// `[[listener]]` tables are configured.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() && self.listeners.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 1883))]
        } else {
            self.listen.clone()
        }
    }

    /// A `[[listener]]` table with the global defaults applied.
    fn effective(&self, l: &ListenerConfig) -> EffectiveListener {
        EffectiveListener {
            kind: l.kind,
            bind: l.bind,
            name: l.name.clone(),
            tls: l.tls_files(),
            allow_anonymous: l.allow_anonymous.or(self.allow_anonymous).unwrap_or(false),
            password_file: if l.use_identity_as_username {
                None
            } else {
                l.password_file
                    .clone()
                    .or_else(|| self.password_file.clone())
            },
            use_identity_as_username: l.use_identity_as_username,
            max_connections: l.max_connections,
            ws_path: l.ws_path().map(str::to_owned),
        }
    }

    /// Every listener the broker runs, `listen` addresses first, in order.
    pub(crate) fn effective_listeners(&self) -> Vec<EffectiveListener> {
        let plain = self
            .listen_addrs()
            .into_iter()
            .map(|bind| EffectiveListener {
                kind: ListenerKind::Tcp,
                bind,
                name: None,
                tls: None,
                allow_anonymous: self.anonymous_allowed(),
                password_file: self.password_file.clone(),
                use_identity_as_username: false,
                max_connections: None,
                ws_path: None,
            });
        let typed = self.listeners.iter().map(|l| self.effective(l));
        plain.chain(typed).collect()
    }

    /// Sets the listen addresses (builder style).
    pub fn listen(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.listen = addrs.into_iter().collect();
        self
    }

    /// Serves the operators' HTTP endpoints (builder style).
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = Some(http);
        self
    }

    /// Adds a typed listener (builder style).
    pub fn listener(mut self, listener: ListenerConfig) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Whether clients without a username may connect to `listen` addresses:
    /// `allow_anonymous`, or by default true without a password file and false with one.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }

    pub(crate) fn failed_login_delay(&self) -> Duration {
        Duration::from_millis(self.failed_login_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides() {
        Config::default().validate().unwrap();
        let c = Config::from_toml("listen = [\"0.0.0.0:1884\"]\nmax_inflight = 10\n").unwrap();
        assert_eq!(c.listen, [SocketAddr::from(([0, 0, 0, 0], 1884))]);
        assert_eq!(c.max_inflight, 10);
        assert_eq!(c.max_queued_messages, 1000);
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagitta.example.toml");
        let example = Config::from_file(Path::new(path)).unwrap();
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn password_file_and_anonymous() {
        let c = Config::default();
        assert!(c.password_file.is_none() && c.anonymous_allowed());
        let c = Config::from_toml("password_file = \"/etc/sagitta/passwd\"").unwrap();
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/sagitta/passwd")));
        assert!(!c.anonymous_allowed());
        let c = Config::from_toml("password_file = \"p\"\nallow_anonymous = true").unwrap();
        assert!(c.anonymous_allowed());
        let e = Config::from_toml("allow_anonymous = false")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_anonymous"), "{e}");
    }

    /// The commented-out tables of `sagitta.example.toml` from `start` to `end`, uncommented.
    fn example_tables(start: &str, end: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagitta.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let from = text.find(start).unwrap();
        let to = from + text[from..].find(end).unwrap();
        text[from..to]
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn example_listener_tables_parse() {
        let c =
            Config::from_toml(&example_tables("# [[listener]]\n", "#\n# Certificates")).unwrap();
        assert_eq!(c.listeners.len(), 5);
        assert_eq!(c.listeners[3].ws_path(), Some("/mqtt"));
        assert_eq!(c.listeners[4].kind, ListenerKind::Wss);
        assert!(c.listeners[4].tls_files().is_some());
        assert!(c.listen.is_empty() && c.listen_addrs().is_empty());
        let mtls = &c.listeners[2];
        assert_eq!(mtls.kind, ListenerKind::Tls);
        assert_eq!(mtls.name.as_deref(), Some("devices"));
        assert!(mtls.use_identity_as_username);
        assert!(mtls.tls_files().unwrap().require_client_cert);
    }

    #[test]
    fn no_listener_means_loopback_and_anonymous() {
        let c = Config::default();
        let all = c.effective_listeners();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].bind, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert_eq!(all[0].kind, ListenerKind::Tcp);
        assert!(all[0].allow_anonymous && all[0].password_file.is_none());
        // `listen` keeps its meaning: anonymous unless there is a password file.
        let c = Config::from_toml("listen = [\"0.0.0.0:1884\"]").unwrap();
        assert!(c.effective_listeners()[0].allow_anonymous);
    }

    #[test]
    fn listener_tables_default_to_no_anonymous() {
        let toml = "password_file = \"/p\"\n\
                    [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1884\"\n\
                    [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1885\"\n\
                    allow_anonymous = true\n\
                    [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1886\"\n\
                    password_file = \"/q\"\n";
        let c = Config::from_toml(toml).unwrap();
        let all = c.effective_listeners();
        // No `listen`: only the tables.
        assert_eq!(all.len(), 3);
        assert!(!all[0].allow_anonymous);
        assert_eq!(all[0].password_file, Some(PathBuf::from("/p")));
        assert!(all[1].allow_anonymous);
        assert_eq!(all[2].password_file, Some(PathBuf::from("/q")));
        // The global allow_anonymous is the tables' default.
        let c = Config::from_toml(
            "allow_anonymous = true\n[[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        assert!(c.effective_listeners()[0].allow_anonymous);
        // `listen` and tables together: both, `listen` first.
        let c = Config::from_toml(
            "listen = [\"127.0.0.1:2\"]\n\
             [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1\"\nallow_anonymous = true\n",
        )
        .unwrap();
        let binds: Vec<u16> = c
            .effective_listeners()
            .iter()
            .map(|l| l.bind.port())
            .collect();
        assert_eq!(binds, [2, 1]);
    }

    #[test]
    fn listener_errors_name_the_table_and_key() {
        let table = |body: &str| format!("[[listener]]\nbind = \"127.0.0.1:8883\"\n{body}");
        let cases = [
            ("type = \"tls\"\nallow_anonymous = true\n", "cert"),
            (
                "type = \"tls\"\ncert = \"c\"\nallow_anonymous = true\n",
                "key",
            ),
            (
                "type = \"tcp\"\ncert = \"c\"\nallow_anonymous = true\n",
                "cert",
            ),
            (
                "type = \"tcp\"\nclient_ca = \"c\"\nallow_anonymous = true\n",
                "client_ca",
            ),
            (
                "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nrequire_client_cert = true\n\
                 allow_anonymous = true\n",
                "require_client_cert",
            ),
            (
                "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nuse_identity_as_username = true\n",
                "use_identity_as_username",
            ),
            (
                "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
                 use_identity_as_username = true\npassword_file = \"p\"\n",
                "password_file",
            ),
            // Admits nobody: no anonymous, no password file, no certificate identity.
            (
                "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n",
                "allow_anonymous",
            ),
            (
                "type = \"tcp\"\nallow_anonymous = true\nname = \"\"\n",
                "name",
            ),
        ];
        for (body, key) in cases {
            let e = Config::from_toml(&table(body)).unwrap_err().to_string();
            assert!(
                e.contains("[[listener]]` #1") && e.contains("127.0.0.1:8883") && e.contains(key),
                "{body}: {e}"
            );
        }
        let e = Config::from_toml(&table("type = \"udp\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp"), "{e}");
        let e = Config::from_toml(&table(
            "type = \"tcp\"\nallow_anonymous = true\nbogus = 1\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
        // Valid: mTLS with identities, optional client certificates, anonymous TLS.
        for body in [
            "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
             use_identity_as_username = true\n",
            "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
             require_client_cert = false\nallow_anonymous = true\n",
            "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\nallow_anonymous = true\n",
        ] {
            Config::from_toml(&table(body)).unwrap();
        }
        // With its own authenticator the broker needs no admission rule.
        let c: Config = toml::from_str(&table("type = \"tcp\"\n")).unwrap();
        assert!(c.validate().is_err());
        c.validate_with_authenticator().unwrap();
    }

    #[test]
    fn websocket_listeners() {
        let c = Config::from_toml(
            "[[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:8080\"\nallow_anonymous = true\n\
             [[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:8081\"\npath = \"/\"\n\
             allow_anonymous = true\n\
             [[listener]]\ntype = \"wss\"\nbind = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\n\
             client_ca = \"a\"\nuse_identity_as_username = true\npath = \"/mqtt/v1\"\n",
        )
        .unwrap();
        let all = c.effective_listeners();
        assert_eq!(all[0].kind, ListenerKind::Ws);
        assert_eq!(all[0].ws_path.as_deref(), Some("/mqtt"));
        assert!(all[0].tls.is_none());
        assert_eq!(all[1].ws_path.as_deref(), Some("/"));
        assert_eq!(all[2].kind, ListenerKind::Wss);
        assert_eq!(all[2].ws_path.as_deref(), Some("/mqtt/v1"));
        let tls = all[2].tls.as_ref().unwrap();
        assert!(tls.require_client_cert && tls.client_ca.is_some());
        assert!(all[2].use_identity_as_username);
        assert_eq!(ListenerConfig::ws(all[0].bind).ws_path(), Some("/mqtt"));
        assert_eq!(ListenerConfig::tcp(all[0].bind).ws_path(), None);

        let table = |body: &str| format!("[[listener]]\nbind = \"127.0.0.1:8080\"\n{body}");
        for (body, key) in [
            ("type = \"wss\"\nallow_anonymous = true\n", "cert"),
            (
                "type = \"wss\"\ncert = \"c\"\nallow_anonymous = true\n",
                "key",
            ),
            (
                "type = \"ws\"\ncert = \"c\"\nallow_anonymous = true\n",
                "cert",
            ),
            (
                "type = \"ws\"\nclient_ca = \"a\"\nallow_anonymous = true\n",
                "client_ca",
            ),
            (
                "type = \"tcp\"\npath = \"/mqtt\"\nallow_anonymous = true\n",
                "path",
            ),
            (
                "type = \"tls\"\ncert = \"c\"\nkey = \"k\"\npath = \"/m\"\nallow_anonymous = true\n",
                "path",
            ),
            (
                "type = \"ws\"\npath = \"mqtt\"\nallow_anonymous = true\n",
                "path",
            ),
            (
                "type = \"ws\"\npath = \"/a b\"\nallow_anonymous = true\n",
                "path",
            ),
            (
                "type = \"ws\"\npath = \"/a?b=1\"\nallow_anonymous = true\n",
                "path",
            ),
            ("type = \"ws\"\n", "allow_anonymous"),
        ] {
            let e = Config::from_toml(&table(body)).unwrap_err().to_string();
            assert!(
                e.contains("[[listener]]` #1") && e.contains(key),
                "{body}: {e}"
            );
        }
    }

    #[test]
    fn global_allow_anonymous_false_only_needs_a_password_file_for_listen() {
        assert!(Config::from_toml("allow_anonymous = false").is_err());
        Config::from_toml(
            "allow_anonymous = false\n\
             [[listener]]\ntype = \"tcp\"\nbind = \"127.0.0.1:1\"\npassword_file = \"p\"\n",
        )
        .unwrap();
    }

    #[test]
    fn example_bridge_tables_parse() {
        let c = Config::from_toml(&example_tables("# [[bridge]]\n", "\n\n")).unwrap();
        c.validate().unwrap();
        let b = &c.bridges[0];
        assert_eq!(b.addresses.len(), 2);
        assert_eq!(b.max_queued, Some(100_000));
        assert!(b.tls && b.cert.is_some());
        assert_eq!(b.topics.len(), 2);
        assert_eq!(b.topics[1].direction, Direction::In);
        assert_eq!(b.topics[0].local_filter(), "edge/sensors/#");
        assert_eq!(b.topics[0].remote_filter(), "site1/sensors/#");
        assert!(
            !format!("{b:?}").contains("secret"),
            "the password is not shown"
        );
    }

    #[test]
    fn example_cluster_table_parses() {
        let c = Config::from_toml(&example_tables("# [cluster]\n", "\n\n")).unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.node, "n1");
        assert_eq!(cluster.servers.len(), 3);
        assert_eq!(cluster.replicas, 3);
        c.validate().unwrap();
        assert!(
            !format!("{cluster:?}").contains("secret"),
            "the password is not shown"
        );
    }

    #[test]
    fn example_http_table_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagitta.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [http]\n").unwrap();
        let table: String = text[start..]
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .map(|l| format!("{l}\n"))
            .collect();
        let http = Config::from_toml(&table).unwrap().http.unwrap();
        assert_eq!(http.bind, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(http.token.as_deref(), Some("change-me"));
    }

    #[test]
    fn http_table_defaults_and_token_rules() {
        assert!(Config::default().http.is_none());
        let c = Config::from_toml("[http]\n").unwrap();
        let http = c.http.unwrap();
        assert_eq!(http.bind, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(http.token.is_none());
        let c = Config::from_toml("[http]\nbind = \"[::1]:9000\"\n").unwrap();
        assert_eq!(c.http.unwrap().bind.port(), 9000);
        let e = Config::from_toml("[http]\nbind = \"0.0.0.0:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.token") && e.contains("0.0.0.0:8080"),
            "{e}"
        );
        let c = Config::from_toml("[http]\nbind = \"0.0.0.0:8080\"\ntoken = \"s3cret\"\n").unwrap();
        let http = c.http.unwrap();
        assert_eq!(http.token.as_deref(), Some("s3cret"));
        assert!(!format!("{http:?}").contains("s3cret"));
        for bad in ["\"\"", "\"a b\""] {
            let e = Config::from_toml(&format!("[http]\ntoken = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("http.token"), "{e}");
        }
        let e = Config::from_toml("[http]\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("maximum_qos = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maximum_qos"), "{e}");
        let e = Config::from_toml("no_such_key = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_key"), "{e}");
        let e = Config::from_toml("max_inflight = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_inflight") && e.contains("line 1"), "{e}");
    }
}
