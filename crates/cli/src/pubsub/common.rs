//! What `sagitta pub` and `sagitta sub` share: the connection flags and how they become a
//! `ClientBuilder`, the exit codes, the error type, and the signal wait.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::time::Duration;

use sagitta_client::{
    ClientBuilder, ClientError, ConnectError, LastWill, ProtocolVersion, QoS, TopicName,
};

use super::props::{self, Command, Properties, PropertyArgs};
use crate::tls::TlsArgs;

/// Exit code for connection, protocol and publish failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad arguments (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `sagitta sub -W` when the time ran out (as `mosquitto_sub`).
pub const EXIT_TIMEOUT: u8 = 27;

/// The exit code section of both `--help` texts.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   connection, protocol or publish failure (refused, not authorised, connection lost...)
  2   bad arguments
  27  sub -W: the timeout passed before -C messages arrived (or at all without -C)";

/// Which tool runs: its name for messages and the `-D` commands it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `sagitta pub`.
    Pub,
    /// `sagitta sub`.
    Sub,
}

impl Tool {
    /// The prefix of every message on stderr.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pub => "sagitta pub",
            Self::Sub => "sagitta sub",
        }
    }

    fn uses(self, command: Command) -> bool {
        match command {
            Command::Connect | Command::Will | Command::Disconnect => true,
            Command::Publish => self == Self::Pub,
            Command::Subscribe => self == Self::Sub,
        }
    }
}

/// Why a run ended badly; each maps to an exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments: exit 2, printed even with `--quiet`.
    Usage(String),
    /// Connection, protocol or publish failure: exit 1.
    Failed(String),
    /// `sagitta sub -W` ran out of time: exit 27.
    TimedOut(String),
}

impl Failure {
    /// Prints the one-line message (unless `quiet` hides it) and returns the exit code.
    pub fn exit(self, tool: Tool, quiet: bool) -> ExitCode {
        let (code, message, always) = match self {
            Self::Usage(m) => (EXIT_USAGE, m, true),
            Self::Failed(m) => (EXIT_FAILURE, m, false),
            Self::TimedOut(m) => (EXIT_TIMEOUT, m, false),
        };
        if always || !quiet {
            eprintln!("{}: {message}", tool.name());
        }
        ExitCode::from(code)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        match e {
            // The builder checks what clap cannot (a client id with U+0000...).
            ConnectError::InvalidOptions(m) => Self::Usage(m),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Connection flags, the same for `pub` and `sub`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnArgs {
    /// Broker host name or address, or a WebSocket URL (`ws://host:port/path`,
    /// `wss://host/path`; -p is then not used).
    #[arg(
        short = 'h',
        long = "host",
        value_name = "HOST",
        default_value = "localhost"
    )]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value_t = sagitta_client::DEFAULT_PORT)]
    pub port: u16,
    /// Host, port, credentials and topic as one URL: mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC
    /// (mqtts://: TLS, port 8883 by default; needs --cafile or --insecure).
    #[arg(short = 'L', long = "url", value_name = "URL", conflicts_with_all = ["host", "port"])]
    pub url: Option<String>,
    /// Client identifier (default: a random sagitta-XXXXXXXXXXXX).
    #[arg(short = 'i', long = "id", value_name = "ID")]
    pub id: Option<String>,
    /// Client identifier made of this prefix and the process id.
    #[arg(
        short = 'I',
        long = "id-prefix",
        value_name = "PREFIX",
        conflicts_with = "id"
    )]
    pub id_prefix: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username", value_name = "USER")]
    pub username: Option<String>,
    /// Password (needs -u).
    #[arg(short = 'P', long = "pw", alias = "password", value_name = "PASSWORD")]
    pub password: Option<OsString>,
    /// Log in with SCRAM-SHA-256 (MQTT 5 enhanced authentication) instead of sending the
    /// password; needs -u and -P, selects MQTT 5. The broker must prove that it knows the
    /// password too.
    #[arg(long)]
    pub scram: bool,
    /// Keep-alive interval in seconds (0: none).
    #[arg(
        short = 'k',
        long = "keepalive",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub keepalive: u16,
    /// MQTT version: 5, 311 or 31 (also mqttv5, mqttv311, mqttv31). Default 311; -D and -x
    /// select 5 when -V is not given.
    #[arg(short = 'V', long = "protocol-version", value_name = "VERSION", value_parser = parse_version)]
    pub version: Option<ProtocolVersion>,
    /// Persistent session: clean session off (needs -i or -I). With MQTT 5 the session never
    /// expires unless -x says otherwise.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT 5 Session Expiry Interval in seconds (-1 or 4294967295: never expires).
    #[arg(short = 'x', long = "session-expiry-interval", value_name = "SECONDS",
          value_parser = parse_expiry, allow_negative_numbers = true)]
    pub session_expiry: Option<u32>,
    /// Topic of the will, published by the broker if this client vanishes.
    #[arg(long = "will-topic", value_name = "TOPIC")]
    pub will_topic: Option<String>,
    /// Payload of the will (default: empty).
    #[arg(
        long = "will-payload",
        value_name = "PAYLOAD",
        requires = "will_topic",
        allow_hyphen_values = true
    )]
    pub will_payload: Option<OsString>,
    /// QoS of the will.
    #[arg(long = "will-qos", value_name = "QOS", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), requires = "will_topic")]
    pub will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain", requires = "will_topic")]
    pub will_retain: bool,
    #[command(flatten)]
    pub properties: PropertyArgs,
    /// Print no error messages, except about bad arguments (the exit code still tells).
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Accepted for mosquitto compatibility: Nagle's algorithm is always off.
    #[arg(long = "nodelay")]
    pub nodelay: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The connection flags checked and turned into a builder.
pub struct Resolved {
    /// Ready to `connect()`, except for what the tool adds (reconnect policy, in-flight cap).
    pub builder: ClientBuilder,
    /// The `-D` properties.
    pub props: Properties,
    /// The topic of `-L`, if given.
    pub url_topic: Option<String>,
}

impl ConnArgs {
    /// Checks the flags and builds the client. `v5_flags` names the tool's own flags in use
    /// that need MQTT 5 (they select it, like `-D` and `-x`, when `-V` is not given).
    pub fn resolve(&self, tool: Tool, v5_flags: &[&str]) -> Result<Resolved, Failure> {
        let props = props::parse(&self.properties.0).map_err(Failure::Usage)?;
        if let Some(c) = props.used.iter().find(|c| !tool.uses(**c)) {
            return Err(Failure::Usage(format!(
                "-D {}: {} sends no {} packet",
                c.name(),
                tool.name(),
                c.name().to_ascii_uppercase()
            )));
        }
        let mut needs_v5: Vec<&str> = v5_flags.to_vec();
        if !self.properties.0.is_empty() {
            needs_v5.push("-D");
        }
        if self.session_expiry.is_some() {
            needs_v5.push("-x");
        }
        if self.scram {
            needs_v5.push("--scram");
        }
        let version = match self.version {
            Some(v) if !v.is_v5() && !needs_v5.is_empty() => {
                return Err(Failure::Usage(format!(
                    "{} needs MQTT 5 (-V 5), not {v}",
                    needs_v5.join(", ")
                )));
            }
            Some(v) => v,
            None if needs_v5.is_empty() => ProtocolVersion::V3_1_1,
            None => ProtocolVersion::V5,
        };

        let url = self
            .url
            .as_deref()
            .map(parse_url)
            .transpose()
            .map_err(|e| Failure::Usage(format!("-L: {e}")))?;
        let (host, port) = match &url {
            Some(u) => (u.host.as_str(), u.port),
            None => (self.host.as_str(), self.port),
        };
        let websocket = url.is_none() && (host.starts_with("ws://") || host.starts_with("wss://"));
        let addr = if websocket {
            host.to_owned()
        } else if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut builder = ClientBuilder::new(addr)
            .protocol(version)
            .keep_alive(Duration::from_secs(u64::from(self.keepalive)));
        let url_tls = url.as_ref().is_some_and(|u| u.tls);
        if let Some(tls) = self.tls.options(url_tls).map_err(Failure::Usage)? {
            builder = builder.tls(tls);
        }

        let id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(prefix)) => Some(format!("{prefix}{}", std::process::id())),
            (None, None) => None,
        };
        match id {
            Some(id) => builder = builder.client_id(id),
            None if self.persistent => {
                return Err(Failure::Usage(
                    "-c needs a client id (-i or -I): the broker finds the session by it".into(),
                ));
            }
            None => {}
        }

        let username = self
            .username
            .clone()
            .or_else(|| url.as_ref().and_then(|u| u.username.clone()));
        let password = self
            .password
            .clone()
            .map(OsStringExt::into_vec)
            .or_else(|| {
                url.as_ref()
                    .and_then(|u| u.password.clone())
                    .map(String::into_bytes)
            });
        builder = match (username, password) {
            (Some(u), Some(p)) => builder.credentials(u, p),
            (Some(u), None) => builder.username(u),
            (None, Some(_)) => {
                return Err(Failure::Usage(
                    "a password (-P) needs a user name (-u)".into(),
                ));
            }
            (None, None) => builder,
        };
        if self.scram {
            if self.password.is_none() && url.as_ref().is_none_or(|u| u.password.is_none()) {
                return Err(Failure::Usage("--scram needs -u and -P".into()));
            }
            builder = builder.scram_sha256();
        }

        let expiry = match (self.session_expiry, props.connect.session_expiry) {
            (Some(_), Some(_)) => {
                return Err(Failure::Usage(
                    "give the session expiry once: -x or -D connect session-expiry-interval".into(),
                ));
            }
            (a, b) => a.or(b),
        };
        builder = builder.clean_start(!self.persistent);
        let mut connect_expiry = 0;
        if version.is_v5() {
            connect_expiry = expiry.unwrap_or(if self.persistent { u32::MAX } else { 0 });
            builder = builder.session_expiry(Duration::from_secs(u64::from(connect_expiry)));
        }
        if connect_expiry == 0
            && props
                .disconnect
                .session_expiry_interval
                .is_some_and(|e| e > 0)
        {
            return Err(Failure::Usage(
                "-D disconnect session-expiry-interval: the session must not expire at connect \
                 (use -c or -x) to set an expiry at disconnect [MQTT-3.14.2-2]"
                    .into(),
            ));
        }
        let c = &props.connect;
        if let Some(n) = c.receive_maximum {
            builder = builder.receive_maximum(n);
        }
        if let Some(n) = c.maximum_packet_size {
            builder = builder.max_packet_size(n);
        }
        if let Some(n) = c.topic_alias_maximum {
            builder = builder.topic_alias_maximum(n);
        }
        for (k, v) in &c.user_properties {
            builder = builder.user_property(k.clone(), v.clone());
        }

        if let Some(topic) = &self.will_topic {
            TopicName::new(topic.as_str())
                .map_err(|e| Failure::Usage(format!("--will-topic {topic}: {e}")))?;
            let payload = self
                .will_payload
                .clone()
                .map(OsStringExt::into_vec)
                .unwrap_or_default();
            let will = LastWill::new(topic.clone(), payload)
                .qos(qos(self.will_qos))
                .retain(self.will_retain)
                .properties(props.will.clone());
            builder = builder.will(will);
        } else if props.used.contains(&Command::Will) {
            return Err(Failure::Usage("-D will ...: needs --will-topic".into()));
        }

        Ok(Resolved {
            builder,
            props,
            url_topic: url.map(|u| u.topic),
        })
    }
}

/// A QoS from its number, already checked by clap to be 0, 1 or 2.
pub fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap_or(QoS::ExactlyOnce)
}

/// `-V`: the names mosquitto accepts, and a few obvious others.
fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.to_ascii_lowercase().as_str() {
        "5" | "5.0" | "mqttv5" | "mqttv50" => Ok(ProtocolVersion::V5),
        "311" | "3.1.1" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "31" | "3.1" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        _ => Err("expected 5, 311 or 31 (or mqttv5, mqttv311, mqttv31)".into()),
    }
}

/// A session expiry in seconds: `-1`, `inf` or `∞` mean "never" (4294967295).
pub fn parse_expiry(s: &str) -> Result<u32, String> {
    match s {
        "-1" | "inf" | "∞" => Ok(u32::MAX),
        _ => s
            .parse::<u32>()
            .map_err(|_| "expected 0 to 4294967295 seconds, or -1 for never".into()),
    }
}

/// The parts of an `-L` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    /// `mqtts://`.
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    topic: String,
}

/// Parses `mqtt://[user[:password]@]host[:port]/topic` (or `mqtts://`: TLS).
fn parse_url(s: &str) -> Result<Url, String> {
    const SHAPE: &str = "expected mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC (or mqtts://)";
    let (tls, rest) = match s.split_once("://") {
        Some(("mqtt", rest)) => (false, rest),
        Some(("mqtts", rest)) => (true, rest),
        _ => return Err(SHAPE.into()),
    };
    let (authority, topic) = rest.split_once('/').ok_or(SHAPE)?;
    if topic.is_empty() {
        return Err(format!("{SHAPE} (the topic is missing)"));
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (Some(user.to_owned()), Some(pw.to_owned())),
            None => (Some(u.to_owned()), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(SHAPE)?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{SHAPE} (the host is missing)"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?}"))?,
        None if tls => sagitta_client::DEFAULT_TLS_PORT,
        None => sagitta_client::DEFAULT_PORT,
    };
    Ok(Url {
        tls,
        host: host.to_owned(),
        port,
        username,
        password,
        topic: topic.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_by_every_name() {
        for s in ["5", "mqttv5", "MQTTV5", "5.0"] {
            assert_eq!(parse_version(s), Ok(ProtocolVersion::V5), "{s}");
        }
        for s in ["311", "mqttv311", "3.1.1"] {
            assert_eq!(parse_version(s), Ok(ProtocolVersion::V3_1_1), "{s}");
        }
        for s in ["31", "mqttv31"] {
            assert_eq!(parse_version(s), Ok(ProtocolVersion::V3_1), "{s}");
        }
        assert!(parse_version("4").is_err());
    }

    #[test]
    fn expiry_never_and_numbers() {
        assert_eq!(parse_expiry("-1"), Ok(u32::MAX));
        assert_eq!(parse_expiry("∞"), Ok(u32::MAX));
        assert_eq!(parse_expiry("4294967295"), Ok(u32::MAX));
        assert_eq!(parse_expiry("30"), Ok(30));
        assert!(parse_expiry("-2").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://alice:se:cret@broker.example:1884/a/b/c"),
            Ok(Url {
                tls: false,
                host: "broker.example".into(),
                port: 1884,
                username: Some("alice".into()),
                password: Some("se:cret".into()),
                topic: "a/b/c".into(),
            })
        );
        let u = parse_url("mqtt://[::1]/t").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.username), ("::1", 1883, None));
        let u = parse_url("mqtt://bob@h:1/#").unwrap();
        assert_eq!(
            (u.username.as_deref(), u.password, u.topic.as_str()),
            (Some("bob"), None, "#")
        );
        let u = parse_url("mqtts://h/t").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "h", 8883));
        let u = parse_url("mqtts://h:8884/t").unwrap();
        assert_eq!((u.tls, u.port), (true, 8884));
        assert!(!parse_url("mqtt://h/t").unwrap().tls);
        assert!(parse_url("mqtt://h").is_err());
        assert!(parse_url("mqtt://h/").is_err());
        assert!(parse_url("mqtt://:1/t").is_err());
        assert!(parse_url("mqtt://h:x/t").is_err());
        assert!(parse_url("http://h/t").is_err());
    }
}
