//! `sagitta`: the Sagitta MQTT broker and command-line tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sagitta_broker::{Broker, Config};
use tracing_subscriber::EnvFilter;

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
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// Address to listen on for MQTT over TCP (repeatable). Default 127.0.0.1:1883.
    #[arg(short, long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
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
    let broker = match Broker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sagitta: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = broker.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        handle.shutdown();
    });
    broker.wait().await;
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term => {}
        _ = int => {}
    }
}
