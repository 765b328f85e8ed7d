//! Broker configuration: a typed struct with defaults, read from TOML, checked by
//! [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
}

/// Broker settings. Every field has a default; see `sagitta.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP addresses to listen on. Default: `127.0.0.1:1883`.
    pub listen: Vec<SocketAddr>,
    /// Largest packet accepted from a client, in bytes (fixed header included). Default 1 MiB.
    pub max_packet_size: u32,
    /// Seconds a new connection has to send CONNECT. Default 10.
    pub connect_timeout: u64,
    /// Most simultaneous connections. Default 100 000.
    pub max_connections: usize,
    /// QoS 1/2 messages the broker sends a client before waiting for acknowledgements (also
    /// capped by the client's 5.0 Receive Maximum). Default 256.
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
    /// or `mosquitto_passwd`), read when the broker starts. When set, clients must present
    /// a username and its password. Ignored when the broker is given its own authenticator
    /// (`BrokerBuilder::authenticator`). Absent by default: no password check.
    pub password_file: Option<PathBuf>,
    /// Whether clients without a username may connect. Absent (the default) means: allowed
    /// when there is no `password_file`, refused when there is one. `false` without a
    /// `password_file` is an error.
    pub allow_anonymous: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            max_packet_size: 1024 * 1024,
            connect_timeout: 10,
            max_connections: 100_000,
            max_inflight: 256,
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
        }
    }
}

impl Config {
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
        if self.listen.is_empty() {
            return invalid("listen", "at least one address is needed");
        }
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
        if self.allow_anonymous == Some(false) && self.password_file.is_none() {
            return invalid(
                "allow_anonymous",
                "`false` needs a `password_file` (without one no client can be identified)",
            );
        }
        if self.connect_timeout == 0 {
            return invalid("connect_timeout", "must be at least 1 second");
        }
        Ok(())
    }

    /// Sets the listen addresses (builder style).
    pub fn listen(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.listen = addrs.into_iter().collect();
        self
    }

    /// Whether clients without a username may connect: `allow_anonymous`, or by default
    /// true without a password file and false with one.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
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
