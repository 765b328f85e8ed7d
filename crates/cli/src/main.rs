//! `sagitta`: the Sagitta MQTT broker and command-line tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sagitta_broker::{Broker, Config};
use tracing_subscriber::EnvFilter;

mod bench;
mod passwd;
mod pubsub;
mod signal;

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
  RUST_LOG=debug sagitta broker                   more logging

Exit codes: 0 after a clean shutdown (Ctrl-C or SIGTERM), 1 if the broker cannot start
(e.g. the address is in use), 2 for a bad configuration.")]
struct BrokerArgs {
    /// Address to listen on for MQTT over TCP (repeatable). Default 127.0.0.1:1883.
    #[arg(short, long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (file and flags) and exit: 0 if valid, 2 if not.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // pub and sub keep stderr for their own one-line errors.
    let default_log = match cli.command {
        Command::Pub(_) | Command::Sub(_) | Command::Passwd(_) => "error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
    if args.check_config {
        return match config.validate() {
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
    });
    broker.wait().await;
    ExitCode::SUCCESS
}
