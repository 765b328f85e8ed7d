//! `sagitta bench`: an MQTT load generator in the spirit of emqtt-bench, for any broker.
//!
//! ## Layout
//! - this file: command-line arguments, their validation into a [`Config`], and dispatch.
//! - `traffic`: the publish/subscribe scenarios (`pub`, `sub`, `fanin`, `fanout`, `pairs`):
//!   set-up, the closed loop, stop and drain. `publisher` and `subscriber` are the tasks.
//! - `conn`: the connection scenario.
//! - `link`: one MQTT connection over `sagitta-proto`, TCP or TLS (encode into a buffer, one
//!   write per batch; decode every complete packet read). `template`: a pre-encoded PUBLISH.
//! - `flow`: the QoS 1/2 acknowledgement window and the rate pacer.
//! - `payload`: the header each message carries; `clock`: the timestamps in it.
//! - `stats`: per-task statistics (latency histograms, loss/duplicate/order tracking) and
//!   their merge; `progress`: shared counters and the live line; `report`: the summary.
//! - `usage`: CPU time of the bench and of the broker (`--broker-pid`) and the broker's
//!   memory, from `/proc`.
//!
//! Exit status: 0 on success, 1 if any error, loss, refused or unacknowledged message or
//! failed connection occurred, 2 for bad arguments.

mod clock;
mod conn;
mod flow;
mod link;
mod payload;
mod progress;
mod publisher;
mod report;
mod stats;
mod subscriber;
mod template;
mod traffic;
mod usage;

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, ValueEnum};
use sagitta_proto::{ProtocolVersion, QoS, TopicFilter, TopicName};

use crate::tls::TlsArgs;

pub use payload::HEADER_LEN;

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open -c connections at --connect-rate and keep them open for the duration.
    Conn,
    /// --pubs publishers on PREFIX/<i>, no subscribers: publish throughput (and ack latency).
    Pub,
    /// --subs subscribers on the filter -t; count what an external publisher sends.
    Sub,
    /// --pubs publishers on PREFIX/<i> -> --subs (1) subscribers on PREFIX/+.
    Fanin,
    /// --pubs (1) publishers on PREFIX -> --subs subscribers on PREFIX.
    Fanout,
    /// --pubs publisher/subscriber pairs, pair i on PREFIX/<i>.
    Pairs,
}

impl Scenario {
    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
        }
    }
}

/// Arguments of `sagitta bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    disable_help_flag = true,
    after_help = "Examples:\n  \
    sagitta bench fanin --pubs 50 -q 1 -d 10\n  \
    sagitta bench fanout --subs 50 -r 1000 --json\n  \
    sagitta bench conn -c 10000 --connect-rate 500 -d 60\n  \
    sagitta bench pairs --pubs 100 --broker-pid \"$(pidof mosquitto)\" --json\n  \
    sagitta bench pairs --pubs 10 -h localhost -p 8883 --cafile ca.pem\n  \
    sagitta bench conn -c 1000 -p 8883 --cafile ca.pem --cert me.pem --key me.key\n\n\
    TLS: --cafile (or --insecure) turns TLS on; the port stays 1883 unless -p says \
    otherwise.\n\n\
    Without --rate the run is a closed loop: publishers pause while --inflight deliveries \
    are outstanding, so latency then includes that queue (about inflight / throughput); \
    use --rate or a small --inflight to measure latency.\n\n\
    Exit status: 0 success; 1 errors, losses, refused or unacknowledged publishes, or \
    failed connections; 2 bad arguments."
)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short, long, default_value_t = 1883)]
    port: u16,
    /// MQTT version: 31, 311 or 5.
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    version: ProtocolVersion,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 20: publisher id, sequence, timestamp).
    #[arg(short, long, default_value_t = 64)]
    size: usize,
    /// Total publish rate in messages/s over all publishers; 0 = unlimited (closed loop).
    #[arg(short, long, default_value_t = 0.0)]
    rate: f64,
    /// Run for this many seconds (default 10 unless --count is given).
    #[arg(short, long, value_name = "SECS")]
    duration: Option<f64>,
    /// Messages per publisher (`sub`: messages per subscriber to wait for).
    #[arg(short = 'n', long, value_name = "MSGS")]
    count: Option<u64>,
    /// Number of publishers (pub 1, fanin 10, fanout 1, pairs 10).
    #[arg(long, value_name = "N")]
    pubs: Option<u32>,
    /// Number of subscribers (sub 1, fanin 1, fanout 10; pairs: same as --pubs).
    #[arg(long, value_name = "N")]
    subs: Option<u32>,
    /// Connections to open (conn, default 100; pairs: number of pairs).
    #[arg(short, long, value_name = "N")]
    clients: Option<u32>,
    /// New connections per second for `conn`; 0 = as fast as possible.
    #[arg(long, value_name = "N", default_value_t = 1000.0)]
    connect_rate: f64,
    /// Most deliveries in flight over the whole run (a publish to N subscribers counts N).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    inflight: u32,
    /// QoS 1/2 messages in flight per publisher (lowered to the broker's Receive Maximum).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    window: u16,
    /// Topic prefix (for `sub`: the topic filter to subscribe to).
    #[arg(short, long, default_value = "bench")]
    topic: String,
    /// Seconds at the start excluded from latency and throughput.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    warmup: f64,
    /// Seconds to wait after publishing for messages still in flight.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    drain: f64,
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    password: Option<String>,
    /// Process id of the broker (on this machine): report its CPU time and memory (Linux).
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Subscribers keep persistent sessions (clean session 0; 5.0: Session Expiry Interval
    /// 1 hour), so that a broker with persistence stores their QoS 1/2 messages.
    #[arg(long)]
    persistent: bool,
    /// Worker threads of the bench's runtime (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    threads: Option<u16>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// No live progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl BenchArgs {
    /// Worker threads asked for with `--threads` (the runtime is built before [`run`]).
    pub fn worker_threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.to_ascii_lowercase().trim_start_matches("mqttv") {
        "31" | "3.1" => Ok(ProtocolVersion::V3_1),
        "311" | "3.1.1" | "4" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" | "50" => Ok(ProtocolVersion::V5),
        _ => Err(format!("unknown MQTT version {s:?} (use 31, 311 or 5)")),
    }
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Scenario.
    pub scenario: Scenario,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS for every connection (`--cafile`, `--insecure`...).
    pub tls: Option<link::LinkTls>,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// QoS.
    pub qos: QoS,
    /// Payload size.
    pub size: usize,
    /// Total publish rate, if limited.
    pub rate: Option<f64>,
    /// Run length, if limited by time.
    pub duration: Option<Duration>,
    /// Messages per publisher (per subscriber for `sub`), if limited by count.
    pub count: Option<u64>,
    /// Publishers.
    pub pubs: u32,
    /// Subscribers.
    pub subs: u32,
    /// Connections for `conn`.
    pub clients: u32,
    /// Connection rate for `conn`, if limited.
    pub connect_rate: Option<f64>,
    /// Deliveries in flight over the run.
    pub inflight: u32,
    /// QoS 1/2 window per publisher.
    pub window: u16,
    /// Topic prefix or (`sub`) filter.
    pub topic: String,
    /// Warm-up excluded from statistics.
    pub warmup: Duration,
    /// Drain time after publishing.
    pub drain: Duration,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// The broker's process id, to measure its CPU and memory.
    pub broker_pid: Option<u32>,
    /// Subscribers use persistent sessions.
    pub persistent: bool,
    /// JSON output.
    pub json: bool,
    /// No live progress.
    pub quiet: bool,
}

fn seconds(name: &str, v: f64, allow_zero: bool) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 1e7 {
        let want = if allow_zero { "0 or more" } else { "above 0" };
        return Err(format!(
            "{name} must be a number of seconds {want}, not {v}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Validates the arguments.
    pub fn from_args(a: BenchArgs) -> Result<Self, String> {
        use Scenario::*;
        let s = a.scenario;
        let qos = QoS::from_u8(a.qos).ok_or("--qos must be 0, 1 or 2")?;
        if a.size < HEADER_LEN {
            return Err(format!(
                "--size {} is too small: the payload carries a {HEADER_LEN}-byte header \
                 (publisher id, sequence, timestamp), so use --size {HEADER_LEN} or more",
                a.size
            ));
        }
        if a.size > 256 * 1024 * 1024 - 1024 {
            return Err(format!(
                "--size {} exceeds the MQTT packet size limit",
                a.size
            ));
        }
        let rate = match a.rate {
            0.0 => None,
            r if r.is_finite() && r > 0.0 => Some(r),
            r => return Err(format!("--rate must be 0 (unlimited) or positive, not {r}")),
        };
        let connect_rate = match a.connect_rate {
            0.0 => None,
            r if r.is_finite() && r > 0.0 => Some(r),
            r => {
                return Err(format!(
                    "--connect-rate must be 0 (unlimited) or positive, not {r}"
                ));
            }
        };
        let duration = a
            .duration
            .map(|d| seconds("--duration", d, false))
            .transpose()?;
        if a.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if s == Conn && a.count.is_some() {
            return Err("--count does not apply to conn (use -c and --duration)".into());
        }
        let duration = match (duration, a.count) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };
        let warmup = seconds("--warmup", a.warmup, true)?;
        if let Some(d) = duration
            && warmup >= d
        {
            return Err("--warmup must be shorter than --duration".into());
        }
        let drain = seconds("--drain", a.drain, true)?;
        if a.inflight == 0 {
            return Err("--inflight must be at least 1".into());
        }
        if a.window == 0 {
            return Err("--window must be at least 1".into());
        }
        let positive = |name: &str, v: Option<u32>| -> Result<Option<u32>, String> {
            match v {
                Some(0) => Err(format!("{name} must be at least 1")),
                v => Ok(v),
            }
        };
        let pubs_arg = positive("--pubs", a.pubs)?;
        let subs_arg = positive("--subs", a.subs)?;
        let clients_arg = positive("--clients", a.clients)?;
        let reject = |name: &str, v: Option<u32>| -> Result<(), String> {
            match v {
                Some(_) => Err(format!("{name} does not apply to {}", s.name())),
                None => Ok(()),
            }
        };
        let (pubs, subs, clients) = match s {
            Conn => {
                reject("--pubs", pubs_arg)?;
                reject("--subs", subs_arg)?;
                (0, 0, clients_arg.unwrap_or(100))
            }
            Pub => {
                reject("--subs", subs_arg)?;
                (pubs_arg.or(clients_arg).unwrap_or(1), 0, 0)
            }
            Sub => {
                reject("--pubs", pubs_arg)?;
                (0, subs_arg.or(clients_arg).unwrap_or(1), 0)
            }
            Fanin => {
                reject("--clients", clients_arg)?;
                (pubs_arg.unwrap_or(10), subs_arg.unwrap_or(1), 0)
            }
            Fanout => {
                reject("--clients", clients_arg)?;
                (pubs_arg.unwrap_or(1), subs_arg.unwrap_or(10), 0)
            }
            Pairs => {
                let given: Vec<u32> = [pubs_arg, subs_arg, clients_arg]
                    .into_iter()
                    .flatten()
                    .collect();
                if given.windows(2).any(|w| w[0] != w[1]) {
                    return Err("pairs: --pubs, --subs and -c must agree (number of pairs)".into());
                }
                let n = given.first().copied().unwrap_or(10);
                (n, n, 0)
            }
        };
        if pubs > stats::MAX_PUBLISHERS {
            return Err(format!("--pubs must be at most {}", stats::MAX_PUBLISHERS));
        }
        // Each publish to N subscribers needs N in-flight credits at once.
        let fanout = match s {
            Fanin | Fanout => subs,
            Pairs => 1,
            _ => 0,
        };
        if a.inflight < fanout {
            return Err(format!(
                "--inflight {} is below the {fanout} deliveries of a single publish",
                a.inflight
            ));
        }
        if a.topic.is_empty() {
            return Err("--topic must not be empty".into());
        }
        if s == Sub {
            TopicFilter::new(a.topic.clone())
                .map_err(|e| format!("--topic {:?} is not a valid topic filter: {e}", a.topic))?;
        } else {
            TopicName::new(a.topic.clone())
                .map_err(|e| format!("--topic {:?} is not a valid topic name: {e}", a.topic))?;
        }
        if a.password.is_some() && a.username.is_none() && a.version != ProtocolVersion::V5 {
            return Err("--password needs --username before MQTT 5".into());
        }
        if let Some(pid) = a.broker_pid {
            usage::check_pid(pid)?;
        }
        // The files are read once here, not once per connection.
        let tls = match a.tls.options(false)? {
            Some(options) => Some(link::LinkTls {
                config: options.client_config().map_err(|e| e.to_string())?,
                server_name: options
                    .server_name_for(&a.host)
                    .map_err(|e| e.to_string())?,
            }),
            None => None,
        };
        Ok(Self {
            scenario: s,
            host: a.host,
            port: a.port,
            tls,
            version: a.version,
            qos,
            size: a.size,
            rate,
            duration,
            count: a.count,
            pubs,
            subs,
            clients,
            connect_rate,
            inflight: a.inflight,
            window: a.window,
            topic: a.topic,
            warmup,
            drain,
            username: a.username,
            password: a.password,
            broker_pid: a.broker_pid,
            persistent: a.persistent,
            json: a.json,
            quiet: a.quiet,
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// User name and password for CONNECT.
    pub fn credentials(&self) -> link::Credentials<'_> {
        link::Credentials {
            username: self.username.as_deref(),
            password: self.password.as_deref(),
        }
    }

    /// Deliveries caused by one publish (the closed loop's unit), 0 without subscribers.
    pub fn fanout(&self) -> u32 {
        match self.scenario {
            Scenario::Fanin | Scenario::Fanout => self.subs,
            Scenario::Pairs => 1,
            _ => 0,
        }
    }
}

/// Runs `sagitta bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sagitta bench: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = match config.scenario {
        Scenario::Conn => conn::run(&config).await,
        _ => traffic::run(&config).await,
    };
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sagitta bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    summary.print(config.json);
    if summary.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn config(argv: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_args(cli.args)
    }

    #[test]
    fn defaults_per_scenario() {
        let c = config(&["fanin"]).unwrap();
        assert_eq!((c.pubs, c.subs, c.fanout()), (10, 1, 1));
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.addr(), "127.0.0.1:1883");
        assert_eq!(c.version, ProtocolVersion::V3_1_1);
        let c = config(&["fanout", "--subs", "50"]).unwrap();
        assert_eq!((c.pubs, c.subs, c.fanout()), (1, 50, 50));
        let c = config(&["pairs", "-c", "100", "-n", "5"]).unwrap();
        assert_eq!((c.pubs, c.subs, c.fanout()), (100, 100, 1));
        assert_eq!((c.duration, c.count), (None, Some(5)));
        let c = config(&["conn", "-h", "::1", "-p", "1884", "-V", "5"]).unwrap();
        assert_eq!(c.clients, 100);
        assert_eq!(c.addr(), "[::1]:1884");
        assert_eq!(c.version, ProtocolVersion::V5);
        assert_eq!(c.broker_pid, None);
    }

    #[test]
    fn threads_and_broker_pid() {
        let cli = Cli::try_parse_from(["bench", "pairs", "--threads", "3"]).unwrap();
        assert_eq!(cli.args.worker_threads(), Some(3));
        let cli = Cli::try_parse_from(["bench", "pairs"]).unwrap();
        assert_eq!(cli.args.worker_threads(), None);
        if cfg!(target_os = "linux") {
            let me = std::process::id().to_string();
            let c = config(&["conn", "--broker-pid", &me]).unwrap();
            assert_eq!(c.broker_pid, Some(std::process::id()));
        }
    }

    #[test]
    fn bad_arguments_are_explained() {
        let e = config(&["pub", "-s", "19"]).unwrap_err();
        assert!(e.contains("too small"), "{e}");
        assert!(config(&["pub", "-q", "3"]).is_err());
        assert!(config(&["pub", "-V", "6"]).is_err());
        assert!(config(&["fanout", "--subs", "50", "--inflight", "10"]).is_err());
        assert!(config(&["pairs", "--pubs", "3", "--subs", "4"]).is_err());
        assert!(config(&["fanin", "-t", "a/+"]).is_err());
        assert!(config(&["sub", "-t", "a/+"]).is_ok());
        assert!(config(&["pub", "-d", "2", "--warmup", "3"]).is_err());
        assert!(config(&["conn", "-n", "3"]).is_err());
        assert!(config(&["pub", "--subs", "3"]).is_err());
        assert!(config(&["pub", "--threads", "0"]).is_err());
        let e = config(&["pub", "--broker-pid", "4294967295"]).unwrap_err();
        assert!(e.contains("--broker-pid"), "{e}");
    }
}
