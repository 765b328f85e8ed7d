//! `sagitta`: the Sagitta MQTT broker and command-line tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sagitta_broker::{Broker, Config, HttpConfig, SyncMode};
use tracing_subscriber::EnvFilter;

mod bench;
mod passwd;
mod pubsub;
mod signal;
mod tls;

#[derive(Parser)]
#[command(name = "sagitta", version, about = "Sagitta MQTT broker and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
    Broker(BrokerArgs),
    /// Load-test an MQTT broker (any broker): conn, pub, sub, fanin, fanout, pairs.
    Bench(bench::BenchArgs),
    /// Publish a message, a file or stdin (like mosquitto_pub).
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages (like mosquitto_sub).
    Sub(pubsub::SubArgs),
    /// Manage a password file for `password_file` (like mosquitto_passwd).
    Passwd(passwd::PasswdArgs),
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sagitta broker                                  listen on 127.0.0.1:1883
  sagitta broker -l 0.0.0.0:1883 -l [::]:1883     listen on every IPv4 and IPv6 address
  sagitta broker -c sagitta.toml                  settings from a file (see sagitta.example.toml)
  sagitta broker -c sagitta.toml --check-config   check the file and exit
  sagitta broker --http 127.0.0.1:8080            metrics, health and admin API over HTTP
  sagitta broker --log-level debug                more logging (or RUST_LOG=debug)
  sagitta broker --log-format json                one JSON object per log line

Signals: SIGINT or SIGTERM shut down cleanly (5.0 clients get DISCONNECT 0x8B, the store is
flushed); a second one, or a shutdown that takes over 30 s, exits at once with code 1. SIGHUP reloads the password files, the ACL
file and the TLS listeners' certificates, keys and client CAs (established connections keep
going).

Exit codes: 0 after a clean shutdown (Ctrl-C or SIGTERM), 1 if the broker cannot start
(e.g. the address is in use, a certificate cannot be read), 2 for a bad configuration.")]
struct BrokerArgs {
    /// Address to listen on for MQTT over TCP (repeatable; replaces the file's `listen`).
    /// Default 127.0.0.1:1883 unless the file has `[[listener]]` tables.
    #[arg(short, long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (file, flags, and the password, certificate and key files it
    /// names) and exit: 0 if valid, 2 if not.
    #[arg(long)]
    check_config: bool,
    /// Keep everything in memory: no store, nothing survives a restart (sets
    /// `persistence = false`).
    #[arg(long, conflicts_with = "data_dir")]
    memory: bool,
    /// Directory of the store (sets `data_dir`; default `data`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When the store syncs to disk: always, periodic or never (sets `sync`).
    #[arg(long, value_name = "MODE")]
    sync: Option<SyncMode>,
    /// Serve Prometheus metrics (/metrics), /health, /ready and the admin API (/api/v1/...)
    /// over HTTP on this address (sets `[http] bind`; a token, required off loopback, comes
    /// from the file's `[http] token`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Log format: `text` (human-readable, the default) or `json` (one JSON object per
    /// line, for log collectors).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or a filter such as
    /// `info,sagitta_broker::connection=debug`. Default: `RUST_LOG`, else `info`.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Longest a clean shutdown may take before the process exits anyway (exit code 1).
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // pub and sub keep stderr for their own one-line errors.
    let default_log = match cli.command {
        Command::Pub(_) | Command::Sub(_) | Command::Passwd(_) => "error",
        // rustls warns about every client that sends an IP address as SNI (mosquitto_pub
        // -h 127.0.0.1 does): only its errors by default.
        _ => "info,rustls=error",
    };
    let (format, level) = match &cli.command {
        Command::Broker(args) => (args.log_format, args.log_level.as_deref()),
        _ => (LogFormat::Text, None),
    };
    let filter = match level {
        Some(level) => match EnvFilter::try_new(level) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("sagitta: --log-level {level}: {e}");
                return ExitCode::from(2);
            }
        },
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log)),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Bench(args) = &cli.command
        && let Some(n) = args.worker_threads()
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sagitta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Broker(args) => runtime.block_on(run_broker(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Pub(args) => runtime.block_on(pubsub::run_pub(args)),
        Command::Sub(args) => runtime.block_on(pubsub::run_sub(args)),
        Command::Passwd(args) => passwd::run(args),
    }
}

async fn run_broker(args: BrokerArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sagitta: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if args.memory {
        config.persistence = false;
    }
    if let Some(dir) = args.data_dir {
        config.persistence = true;
        config.data_dir = dir;
    }
    if let Some(sync) = args.sync {
        config.sync = sync;
    }
    if let Some(bind) = args.http {
        config.http.get_or_insert_with(HttpConfig::default).bind = bind;
    }
    if let Err(e) = config.validate() {
        eprintln!("sagitta: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        // Also reads the password files and the TLS certificates, keys and CAs.
        return match Broker::check_config(&config) {
            Ok(()) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sagitta: {e}");
                ExitCode::from(2)
            }
        };
    }
    let broker = match Broker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sagitta: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = broker.handle();
    tokio::spawn(async move {
        signal::interrupted().await;
        tracing::info!("shutting down");
        handle.shutdown();
        // Clients are told and the store is flushed; a second signal, or a shutdown that
        // hangs, ends the process without waiting.
        tokio::select! {
            () = signal::interrupted() => {
                tracing::warn!("second signal: exiting before the shutdown finished");
            }
            () = tokio::time::sleep(SHUTDOWN_LIMIT) => {
                tracing::error!(limit = ?SHUTDOWN_LIMIT, "the shutdown did not finish in time: exiting");
            }
        }
        std::process::exit(1);
    });
    let handle = broker.handle();
    tokio::spawn(signal::on_hangup(move || {
        match handle.reload_tls() {
            Ok(n) => tracing::info!(listeners = n, "SIGHUP: TLS certificates reloaded"),
            Err(e) => {
                tracing::error!("SIGHUP: TLS reload failed, keeping the current certificates: {e}")
            }
        }
        match handle.reload_auth_files() {
            Ok(n) => tracing::info!(files = n, "SIGHUP: password and ACL files reloaded"),
            Err(e) => tracing::error!(
                "SIGHUP: password/ACL reload failed, keeping the current files: {e}"
            ),
        }
    }));
    broker.wait().await;
    ExitCode::SUCCESS
}
