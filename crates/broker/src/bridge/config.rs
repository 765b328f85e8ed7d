//! The `[[bridge]]` tables: a connection to another MQTT broker and the topics forwarded
//! over it.

use std::path::PathBuf;

use serde::Deserialize;

use sagitta_proto::{QoS, TopicFilter};

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local messages go to the remote broker.
    #[default]
    Out,
    /// Remote messages come to the local broker.
    In,
    /// Both.
    Both,
}

impl Direction {
    /// Whether local messages go out.
    pub fn out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Whether remote messages come in.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// The MQTT version spoken to the remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1 (with `try_private`, the bridge flag Mosquitto understands).
    #[serde(rename = "3.1.1", alias = "mqttv311")]
    V311,
    /// MQTT 5.0 (No Local and Retain As Published on the remote subscriptions).
    #[default]
    #[serde(rename = "5.0", alias = "5", alias = "mqttv50", alias = "mqttv5")]
    V5,
}

/// One `[[bridge.topic]]` rule, with Mosquitto's semantics: local messages matching
/// `local_prefix + pattern` go to `remote_prefix + <the same rest>`, and remote messages
/// matching `remote_prefix + pattern` come to `local_prefix + <the same rest>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// A topic filter (wildcards allowed), below the prefixes.
    pub pattern: String,
    /// `out` (default), `in` or `both`.
    #[serde(default)]
    pub direction: Direction,
    /// The QoS of the subscriptions (local for `out`, remote for `in`): messages are
    /// forwarded at most at this QoS. Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Prefix of the local topics (no wildcards). Default none.
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of the remote topics (no wildcards). Default none.
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_qos() -> u8 {
    1
}

impl TopicRule {
    /// A rule for `pattern` in `direction` at QoS 1, without prefixes.
    pub fn new(pattern: impl Into<String>, direction: Direction) -> Self {
        Self {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    /// Sets the prefixes (builder style).
    pub fn prefixes(mut self, local: impl Into<String>, remote: impl Into<String>) -> Self {
        self.local_prefix = local.into();
        self.remote_prefix = remote.into();
        self
    }

    /// Sets the QoS (builder style).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// The local filter: `local_prefix + pattern`.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The remote filter: `remote_prefix + pattern`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// One `[[bridge]]` table.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Name in logs, `$SYS`, metrics and the admin API; letters, digits, `-`, `_`, `.`.
    /// The local session is `$bridge/<name>`.
    pub name: String,
    /// `host:port` of the remote broker, then of its fail-overs, tried in turn.
    pub addresses: Vec<String>,
    /// `"5.0"` (default) or `"3.1.1"`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// Client id at the remote broker. Default `sagitta-bridge-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name at the remote broker.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the remote broker.
    #[serde(default)]
    pub password: Option<String>,
    /// Keep-alive in seconds. Default 60.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u16,
    /// Clean start at the remote broker. Default false: the remote keeps the bridge's
    /// subscriptions and its QoS 1/2 messages for it while the bridge is away.
    #[serde(default)]
    pub clean_start: bool,
    /// 5.0: Session Expiry Interval asked of the remote broker, in seconds. Default 3600.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: u32,
    /// 3.1.1: send the bridge flag (protocol level 0x84), which Mosquitto takes as "a bridge:
    /// do not echo its own messages, keep retained flags"; a broker that refuses it is asked
    /// again without it. Default true.
    #[serde(default = "default_true")]
    pub try_private: bool,
    /// Most messages for the remote kept in the local session's queue (persisted with the
    /// store) while the remote is unreachable; past it new messages are dropped and counted.
    /// Default: the global `max_queued_messages`.
    #[serde(default)]
    pub max_queued: Option<usize>,
    /// QoS 1/2 messages in flight each way (unacknowledged). Default 100 with a 5.0 remote
    /// (which also states its own Receive Maximum), 20 with a 3.1.1 one: 3.1.1 cannot say
    /// how many a broker takes, and Mosquitto drops QoS 2 messages past its
    /// `max_inflight_messages` (default 20) with only a log line. See
    /// [`BridgeConfig::inflight`].
    #[serde(default)]
    pub max_inflight: Option<u16>,
    /// First delay before connecting again, in milliseconds; it doubles up to
    /// `reconnect_max_delay_ms`. Default 500.
    #[serde(default = "default_reconnect_delay")]
    pub reconnect_delay_ms: u64,
    /// Longest delay between connection attempts, in milliseconds. Default 30000.
    #[serde(default = "default_reconnect_max_delay")]
    pub reconnect_max_delay_ms: u64,
    /// Connect with TLS. Default false.
    #[serde(default)]
    pub tls: bool,
    /// TLS: PEM CA bundle to verify the remote with. Default: the system's CAs (those OpenSSL
    /// uses; `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: PEM client certificate chain (mTLS), with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// TLS: PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS: the name to verify the remote's certificate against. Default: the host of the
    /// address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// TLS: do not verify the remote's certificate (tests only). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// The topic rules (`[[bridge.topic]]`), at least one.
    #[serde(default, rename = "topic")]
    pub topics: Vec<TopicRule>,
}

fn default_keep_alive() -> u16 {
    60
}
fn default_session_expiry() -> u32 {
    3600
}
fn default_true() -> bool {
    true
}
fn default_reconnect_delay() -> u64 {
    500
}
fn default_reconnect_max_delay() -> u64 {
    30_000
}

/// The password is not shown.
impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("try_private", &self.try_private)
            .field("max_queued", &self.max_queued)
            .field("max_inflight", &self.max_inflight)
            .field("tls", &self.tls)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl BridgeConfig {
    /// A bridge called `name` to `address` with the defaults and no topic rules.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            addresses: vec![address.into()],
            protocol: BridgeProtocol::default(),
            client_id: None,
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
            clean_start: false,
            session_expiry: default_session_expiry(),
            try_private: true,
            max_queued: None,
            max_inflight: None,
            reconnect_delay_ms: default_reconnect_delay(),
            reconnect_max_delay_ms: default_reconnect_max_delay(),
            tls: false,
            ca_file: None,
            cert: None,
            key: None,
            server_name: None,
            insecure: false,
            topics: Vec::new(),
        }
    }

    /// The QoS 1/2 messages in flight each way: `max_inflight`, else 100 for a 5.0 remote and
    /// 20 for a 3.1.1 one.
    pub fn inflight(&self) -> u16 {
        self.max_inflight.unwrap_or(match self.protocol {
            BridgeProtocol::V5 => 100,
            BridgeProtocol::V311 => 20,
        })
    }

    /// Adds a topic rule (builder style).
    pub fn topic(mut self, rule: TopicRule) -> Self {
        self.topics.push(rule);
        self
    }

    /// The client id at the remote broker.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sagitta-bridge-{}", self.name))
    }

    /// Checks the table; the message says what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err("`name` must be letters, digits, `-`, `_` or `.` (not empty)".into());
        }
        if self.addresses.is_empty() || self.addresses.iter().any(|a| a.trim().is_empty()) {
            return Err("`addresses` must list at least one `host:port`".into());
        }
        if self.topics.is_empty() {
            return Err("at least one `[[bridge.topic]]` rule is needed".into());
        }
        if self.max_inflight == Some(0) {
            return Err("`max_inflight` must be at least 1".into());
        }
        if self.reconnect_delay_ms == 0 || self.reconnect_max_delay_ms < self.reconnect_delay_ms {
            return Err(
                "`reconnect_delay_ms` must be at least 1 and at most `reconnect_max_delay_ms`"
                    .into(),
            );
        }
        if self.client_id.as_deref() == Some("") {
            return Err("`client_id` must not be empty".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("`password` needs a `username`".into());
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("`cert` and `key` go together (mTLS)".into());
        }
        let tls_only = self.ca_file.is_some()
            || self.cert.is_some()
            || self.server_name.is_some()
            || self.insecure;
        if tls_only && !self.tls {
            return Err(
                "`ca_file`, `cert`, `key`, `server_name` and `insecure` need `tls = true`".into(),
            );
        }
        for (i, rule) in self.topics.iter().enumerate() {
            rule.validate()
                .map_err(|why| format!("topic rule #{} ({}): {why}", i + 1, rule.pattern))?;
        }
        Ok(())
    }
}

impl TopicRule {
    fn validate(&self) -> Result<(), String> {
        if self.qos > 2 {
            return Err("`qos` must be 0, 1 or 2".into());
        }
        if self.pattern.is_empty() {
            return Err("`pattern` must not be empty".into());
        }
        for (key, prefix) in [
            ("local_prefix", &self.local_prefix),
            ("remote_prefix", &self.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                return Err(format!("`{key}` must not contain `+`, `#` or NUL"));
            }
            if prefix.starts_with("$share/") {
                return Err(format!("`{key}` must not be a shared subscription"));
            }
        }
        for (side, filter) in [
            ("local", self.local_filter()),
            ("remote", self.remote_filter()),
        ] {
            let parsed = TopicFilter::new(filter.clone())
                .map_err(|e| format!("the {side} filter `{filter}` is not valid: {e}"))?;
            if parsed.shared().is_some() {
                return Err(format!(
                    "the {side} filter `{filter}` must not be a shared subscription"
                ));
            }
        }
        Ok(())
    }

    /// The QoS of the rule.
    pub(crate) fn qos_level(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce)
    }
}
