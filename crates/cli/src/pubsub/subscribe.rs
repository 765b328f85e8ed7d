//! `sagitta sub`: subscribe and print messages until Ctrl-C, `-C COUNT` messages, or the
//! `-W` timeout. A lost connection is re-established (with the subscriptions), as
//! `mosquitto_sub` does; a refusal that cannot change ends it with exit code 1.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sagitta_client::{
    Client, Disconnect, PublishOptions, QoS, State, Subscription, SubscriptionOptions, TopicFilter,
};

use super::common::{self, ConnArgs, EXIT_CODES_HELP, Failure, Tool};
use super::format::{FORMAT_HELP, Format};
use super::props::PROPERTIES_HELP;
use crate::tls::TLS_HELP;

fn after_help() -> String {
    format!(
        "\
Examples:
  sagitta sub -t 'sensors/#' -v                       print \"topic payload\" lines
  sagitta sub -t sensors/1/temp -C 1 -W 10            wait up to 10 s for one message
  sagitta sub -t 'a/#' -t 'b/+' -q 1 -F '%I %t %l bytes: %p'
  sagitta sub -t 'sensors/#' -F %j                    one JSON object per message
  sagitta sub -t 'sensors/#' -R                       skip retained (stale) messages
  sagitta sub -t 'sensors/#' --remove-retained -W 1   clear retained messages
  sagitta sub -t jobs -q 1 -c -i worker-1             persistent session: no message lost
  sagitta sub -t 'jobs/#' -V 5 -D subscribe subscription-identifier 7 -F '%S %t'
  sagitta sub -h broker.example -p 8883 --cafile ca.pem -t 'sensors/#' -v        TLS
  sagitta sub -p 8883 --cafile ca.pem --cert me.pem --key me.key -t 'a/#'      mutual TLS

{FORMAT_HELP}

{PROPERTIES_HELP}

{TLS_HELP}

{EXIT_CODES_HELP}"
    )
}

/// `sagitta sub` flags.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, after_help = after_help())]
pub struct SubArgs {
    /// Topic filter to subscribe to (repeatable; + and # wildcards).
    #[arg(
        short = 't',
        long = "topic",
        value_name = "FILTER",
        required_unless_present = "url"
    )]
    topics: Vec<String>,
    /// Maximum QoS of the messages: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Exit (0) after printing COUNT messages.
    #[arg(short = 'C', long = "count", value_name = "COUNT",
          value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit with code 27 when SECONDS (fractions allowed) have passed since connecting,
    /// before -C messages arrived (without -C: always, like mosquitto_sub).
    #[arg(short = 'W', long = "timeout", value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Print "topic payload".
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Output format (overrides -v; see below).
    #[arg(short = 'F', long = "format", value_name = "FORMAT")]
    format: Option<String>,
    /// No newline after each message.
    #[arg(short = 'N', long = "no-eol")]
    no_eol: bool,
    /// Skip retained (stale) messages; they do not count for -C.
    #[arg(short = 'R', long = "no-retained")]
    no_retained: bool,
    /// Print only retained messages; exit at the first message that is not retained.
    #[arg(long = "retained-only", conflicts_with = "no_retained")]
    retained_only: bool,
    /// Clear each retained message received (publish an empty retained message to its topic).
    #[arg(long = "remove-retained")]
    remove_retained: bool,
    /// Hide messages whose topic matches FILTER (repeatable).
    #[arg(short = 'T', long = "filter-out", value_name = "FILTER")]
    filter_out: Vec<String>,
    /// Exit (0) once the broker has acknowledged the subscriptions.
    #[arg(short = 'E', long = "exit-after-subscribe")]
    exit_after_subscribe: bool,
    /// MQTT 5 Retain As Published: keep the retain flag of forwarded messages.
    #[arg(long = "retain-as-published")]
    retain_as_published: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `sagitta sub`; the exit code is documented in `--help`.
pub async fn run_sub(args: SubArgs) -> ExitCode {
    let quiet = args.conn.quiet;
    match subscribe(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(Tool::Sub, quiet),
    }
}

/// What the message loop needs, checked before connecting.
struct Plan {
    filters: Vec<TopicFilter>,
    subscription: Subscription,
    filter_out: Vec<TopicFilter>,
    format: Format,
    count: Option<u64>,
    quiet: bool,
    no_eol: bool,
    no_retained: bool,
    retained_only: bool,
    remove_retained: bool,
    exit_after_subscribe: bool,
}

async fn subscribe(args: SubArgs) -> Result<(), Failure> {
    let v5_flags: &[&str] = if args.retain_as_published {
        &["--retain-as-published"]
    } else {
        &[]
    };
    let resolved = args.conn.resolve(Tool::Sub, v5_flags)?;
    let options = SubscriptionOptions {
        qos: common::qos(args.qos),
        retain_as_published: args.retain_as_published,
        ..SubscriptionOptions::default()
    };
    let mut filters = Vec::new();
    for f in args.topics.iter().chain(&resolved.url_topic) {
        let filter =
            TopicFilter::new(f.as_str()).map_err(|e| Failure::Usage(format!("-t {f}: {e}")))?;
        filters.push(filter);
    }
    let mut subscription: Option<Subscription> = None;
    for filter in &filters {
        subscription = Some(match subscription {
            None => Subscription::with_options(filter, options),
            Some(s) => s.filter_with_options(filter, options),
        });
    }
    let subscription = subscription
        .ok_or_else(|| Failure::Usage("a topic filter is needed (-t)".into()))?
        .properties(resolved.props.subscribe.clone());
    let filter_out = args
        .filter_out
        .iter()
        .map(|f| TopicFilter::new(f.as_str()).map_err(|e| Failure::Usage(format!("-T {f}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let format = match (&args.format, args.verbose) {
        (Some(f), _) => Format::parse(f).map_err(|e| Failure::Usage(format!("-F: {e}")))?,
        (None, true) => Format::verbose(),
        (None, false) => Format::payload(),
    };
    let timeout = match args.timeout {
        Some(w) if w.is_finite() && w > 0.0 => {
            Some(Duration::try_from_secs_f64(w).map_err(|e| Failure::Usage(format!("-W: {e}")))?)
        }
        Some(_) => return Err(Failure::Usage("-W: expected seconds above 0".into())),
        None => None,
    };
    let goodbye = Disconnect {
        properties: resolved.props.disconnect.clone(),
        ..Disconnect::default()
    };
    let plan = Plan {
        filters,
        subscription,
        filter_out,
        format,
        count: args.count,
        quiet: args.conn.quiet,
        no_eol: args.no_eol,
        no_retained: args.no_retained,
        retained_only: args.retained_only,
        remove_retained: args.remove_retained,
        exit_after_subscribe: args.exit_after_subscribe,
    };

    // Reconnects with the default backoff; the first connection is not retried.
    let client = resolved.builder.connect().await?;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut printed = 0u64;
    let session = async {
        tokio::select! {
            result = run(&client, plan, &mut printed) => result,
            () = crate::signal::interrupted() => Ok(()),
        }
    };
    let result = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, session).await.ok(),
        None => Some(session.await),
    };
    let _ = client.disconnect_with(goodbye).await;
    match (result, timeout) {
        (Some(result), _) => result,
        (None, Some(t)) => {
            let of = args.count.map(|c| format!(" of {c}")).unwrap_or_default();
            let s = if args.count.unwrap_or(printed) == 1 {
                ""
            } else {
                "s"
            };
            Err(Failure::TimedOut(format!(
                "timed out after {}s ({printed}{of} message{s} received)",
                t.as_secs_f64()
            )))
        }
        (None, None) => Ok(()),
    }
}

/// Subscribes and prints messages until done (count reached, `--retained-only` end, `-E`,
/// stdout closed) or the client closes for good.
async fn run(client: &Client, plan: Plan, printed: &mut u64) -> Result<(), Failure> {
    let warn = |message: &str| {
        if !plan.quiet {
            eprintln!("{}: {message}", Tool::Sub.name());
        }
    };
    let ack = client.subscribe_with(plan.subscription.clone()).await?;
    let refused: Vec<String> = plan
        .filters
        .iter()
        .zip(&ack.reasons)
        .filter(|(_, reason)| reason.is_error())
        .map(|(filter, reason)| format!("subscription to {filter} refused: {reason}"))
        .collect();
    if !refused.is_empty() && refused.len() >= plan.filters.len() {
        return Err(Failure::Failed(refused.join("; ")));
    }
    for r in &refused {
        warn(r);
    }
    if plan.exit_after_subscribe {
        return Ok(());
    }

    let mut status = client.watch_status();
    let mut out = Vec::new();
    // Topics whose retained message we cleared: the broker sends our empty message back.
    let mut cleared = HashSet::new();
    loop {
        let message = tokio::select! {
            message = client.recv() => message,
            Ok(()) = status.changed() => {
                let s = status.borrow_and_update().clone();
                match s.state {
                    State::Reconnecting => {
                        let why = s.last_error.map(|e| format!(" ({e})")).unwrap_or_default();
                        warn(&format!("connection lost{why}; reconnecting"));
                    }
                    State::Connected if s.connections > 1 => warn("reconnected"),
                    _ => {}
                }
                continue;
            }
        };
        let Some(message) = message else {
            // Closed for good: a fatal refusal on reconnect, a session taken over...
            return Err(client.status().last_error.map_or_else(
                || Failure::Failed("the connection was closed".into()),
                Failure::from,
            ));
        };
        if !message.retain && message.payload.is_empty() && cleared.remove(message.topic.as_str()) {
            continue;
        }
        if plan.retained_only && !message.retain {
            return Ok(());
        }
        let hidden = plan.filter_out.iter().any(|f| f.matches(&message.topic));
        if plan.remove_retained && message.retain && !hidden {
            let clear = PublishOptions::new().qos(QoS::AtMostOnce).retain(true);
            client
                .publish_with(&message.topic, Bytes::new(), clear)
                .await?;
            cleared.insert(message.topic.as_str().to_owned());
        }
        if hidden || (plan.no_retained && message.retain) {
            continue;
        }
        out.clear();
        if let Some(w) = plan.format.render(&message, SystemTime::now(), &mut out) {
            warn(&w);
        }
        if !plan.no_eol {
            out.push(b'\n');
        }
        if !print(&out)? {
            return Ok(()); // whoever read our output is gone
        }
        *printed += 1;
        if plan.count.is_some_and(|c| *printed >= c) {
            return Ok(());
        }
    }
}

/// Writes one message to stdout and flushes it. `Ok(false)` if the reader has gone away.
fn print(bytes: &[u8]) -> Result<bool, Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::Failed(format!("cannot write to stdout: {e}"))),
    }
}
