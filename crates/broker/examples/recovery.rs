//! The recovery benchmark of docs/persistence.md: fills a data directory with retained
//! messages and persistent sessions, for `sagitta broker --data-dir DIR` to start from.
//!
//! `cargo run --release -p sagitta-broker --example recovery -- DIR [RETAINED] [SESSIONS]`
//! (defaults 1 000 000 and 100 000); bench/recovery.sh runs it and times the broker's start.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: recovery DIR [RETAINED] [SESSIONS]");
        return ExitCode::from(2);
    };
    let number =
        |v: Option<String>, default: usize| v.and_then(|s| s.parse().ok()).unwrap_or(default);
    let retained = number(args.next(), 1_000_000);
    let sessions = number(args.next(), 100_000);
    let started = std::time::Instant::now();
    match sagitta_broker::bench_support::populate_store(dir.as_ref(), retained, sessions) {
        Ok(()) => {
            eprintln!(
                "stored {retained} retained messages and {sessions} sessions in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recovery: {e}");
            ExitCode::FAILURE
        }
    }
}
