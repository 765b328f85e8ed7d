//! `sagitta-relay [--listen ADDR] [--threads N]`: see the library's documentation.

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage: sagitta-relay [--listen ADDR (127.0.0.1:1884)] [--threads N]\n\
    A bare MQTT 3.1.1 forwarder (QoS 0 and 1; no sessions, retained messages or limits),\n\
    the reference line of bench/compare.sh.";

fn main() -> ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1884));
    let mut threads: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let parsed = match arg.as_str() {
            "--listen" | "-l" => args.next().and_then(|v| v.parse().ok()).map(|a| listen = a),
            "--threads" => args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .map(|n| threads = Some(n)),
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("sagitta-relay: bad argument {arg:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sagitta-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or(listen);
                eprintln!("sagitta-relay: listening on {addr}");
                sagitta_relay::serve(listener).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sagitta-relay: cannot listen on {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
