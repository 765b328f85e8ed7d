//! `sagitta pub`: publish a message, a file, all of stdin, or stdin line by line, then
//! disconnect. QoS 1 and 2 publishes are acknowledged before it exits 0.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::ArgGroup;
use sagitta_client::{
    Client, ClientError, Disconnect, PendingPublish, PublishOptions, ReconnectPolicy, TopicName,
};
use tokio::sync::mpsc;

use super::common::{self, ConnArgs, EXIT_CODES_HELP, Failure, Tool};
use super::props::PROPERTIES_HELP;
use crate::tls::TLS_HELP;

/// QoS 1/2 publishes awaited at most this far behind the newest, so that long runs keep
/// many messages in flight (the client itself caps those unacknowledged at the broker's
/// limit) without holding an unbounded list.
const WINDOW: usize = 1024;

fn after_help() -> String {
    format!(
        "\
Exactly one of -m, -f, -s, -l, -n gives the payload.

Examples:
  sagitta pub -t sensors/1/temp -m 21.5
  sagitta pub -t sensors/1/temp -m 21.5 -q 1 -r      retained; waits for the PUBACK
  sagitta pub -t sensors/1/temp -r -n                 delete the retained message
  sagitta pub -t logs/app -l < app.log                one message per line
  sagitta pub -t firmware/image -f image.bin -q 2
  sagitta pub -t s/1 -m '{{\"t\":21.5}}' -V 5 -D publish content-type application/json \\
              -D publish user-property origin lab
  sagitta pub -L mqtt://alice:secret@broker.example:1883/a/b -m hello
  sagitta pub -h broker.example -p 8883 --cafile ca.pem -t a/b -m hello      TLS
  sagitta pub -p 8883 --cafile ca.pem --cert me.pem --key me.key -t a -m hi  mutual TLS
  sagitta pub -L mqtts://alice:secret@broker.example/a/b --cafile ca.pem -m hello

{PROPERTIES_HELP}

{TLS_HELP}

{EXIT_CODES_HELP}"
    )
}

/// `sagitta pub` flags.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, after_help = after_help())]
#[command(group(
    ArgGroup::new("payload")
        .required(true)
        .args(["message", "file", "stdin_file", "stdin_line", "null_message"])
))]
pub struct PubArgs {
    /// Topic to publish to (no wildcards).
    #[arg(
        short = 't',
        long = "topic",
        value_name = "TOPIC",
        required_unless_present = "url"
    )]
    topic: Option<String>,
    /// The payload.
    #[arg(
        short = 'm',
        long = "message",
        value_name = "MESSAGE",
        allow_hyphen_values = true
    )]
    message: Option<OsString>,
    /// Send the contents of a file as the payload.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Read stdin to the end and send it as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Send each line of stdin as a message (without its newline; an empty line is an empty
    /// message).
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,
    /// Send an empty message (with -r: delete the retained message).
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Ask the broker to retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Publish the message N times (not with -l).
    #[arg(long = "repeat", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "stdin_line")]
    repeat: u32,
    /// Seconds to wait between repeats (fractions allowed).
    #[arg(long = "repeat-delay", value_name = "SECONDS", default_value_t = 0.0)]
    repeat_delay: f64,
    /// Most QoS 1/2 messages in flight (default: the broker's Receive Maximum with MQTT 5,
    /// 20 with 3.1.1).
    #[arg(short = 'M', long = "max-inflight", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    max_inflight: Option<u16>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `sagitta pub`; the exit code is documented in `--help`.
pub async fn run_pub(args: PubArgs) -> ExitCode {
    let quiet = args.conn.quiet;
    match publish(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(Tool::Pub, quiet),
    }
}

async fn publish(args: PubArgs) -> Result<(), Failure> {
    let resolved = args.conn.resolve(Tool::Pub, &[])?;
    let topic = args
        .topic
        .clone()
        .or(resolved.url_topic)
        .ok_or_else(|| Failure::Usage("a topic is needed (-t)".into()))?;
    let topic =
        TopicName::new(topic.as_str()).map_err(|e| Failure::Usage(format!("-t {topic}: {e}")))?;
    if !(args.repeat_delay.is_finite() && args.repeat_delay >= 0.0) {
        return Err(Failure::Usage(
            "--repeat-delay: expected a number of seconds, 0 or more".into(),
        ));
    }
    let delay = Duration::try_from_secs_f64(args.repeat_delay)
        .map_err(|e| Failure::Usage(format!("--repeat-delay: {e}")))?;
    let options = PublishOptions::new()
        .qos(common::qos(args.qos))
        .retain(args.retain)
        .properties(resolved.props.publish.clone());
    let goodbye = Disconnect {
        properties: resolved.props.disconnect.clone(),
        ..Disconnect::default()
    };

    // Read the payload before connecting, as mosquitto_pub does: a missing file is reported
    // without touching the broker.
    let payload = if let Some(m) = args.message {
        Some(Bytes::from(m.into_vec()))
    } else if let Some(path) = &args.file {
        let data = std::fs::read(path)
            .map_err(|e| Failure::Failed(format!("cannot read {}: {e}", path.display())))?;
        Some(Bytes::from(data))
    } else if args.stdin_file {
        let mut data = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
        Some(Bytes::from(data))
    } else if args.null_message {
        Some(Bytes::new())
    } else {
        None // -l
    };

    let mut builder = resolved.builder.reconnect(ReconnectPolicy::disabled());
    if let Some(n) = args.max_inflight {
        builder = builder.max_inflight(n);
    }
    let client = builder.connect().await?;
    let sent = match payload {
        Some(payload) => {
            send_repeated(&client, &topic, payload, &options, args.repeat, delay).await
        }
        None => send_lines(&client, &topic, &options).await,
    };
    // Queued QoS 0 messages go out before the DISCONNECT.
    let closed = client.disconnect_with(goodbye).await;
    sent?;
    closed.map_err(Failure::from)
}

async fn send_repeated(
    client: &Client,
    topic: &TopicName,
    payload: Bytes,
    options: &PublishOptions,
    repeat: u32,
    delay: Duration,
) -> Result<(), Failure> {
    let mut pipeline = Pipeline::default();
    for i in 0..repeat {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        pipeline
            .push(client, topic, payload.clone(), options)
            .await?;
    }
    Ok(pipeline.finish().await?)
}

async fn send_lines(
    client: &Client,
    topic: &TopicName,
    options: &PublishOptions,
) -> Result<(), Failure> {
    let mut lines = stdin_lines()?;
    let mut pipeline = Pipeline::default();
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            error = client.closed() => {
                return Err(error.map_or_else(|| ClientError::Closed.into(), Failure::from));
            }
        };
        match line {
            None => break,
            Some(Ok(line)) => {
                pipeline
                    .push(client, topic, Bytes::from(line), options)
                    .await?;
            }
            Some(Err(e)) => return Err(Failure::Failed(format!("cannot read stdin: {e}"))),
        }
    }
    Ok(pipeline.finish().await?)
}

/// Lines of stdin without their `\n` (or `\r\n`), read on a thread of their own: a read
/// blocked on a terminal or pipe must not keep the process from exiting.
fn stdin_lines() -> Result<mpsc::Receiver<std::io::Result<Vec<u8>>>, Failure> {
    let (tx, rx) = mpsc::channel(256);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut line = Vec::new();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        if tx.blocking_send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| Failure::Failed(format!("cannot start the stdin reader: {e}")))?;
    Ok(rx)
}

/// Publishes whose acknowledgements are awaited in order, at most [`WINDOW`] behind.
#[derive(Default)]
struct Pipeline {
    pending: VecDeque<PendingPublish>,
}

impl Pipeline {
    async fn push(
        &mut self,
        client: &Client,
        topic: &TopicName,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<(), ClientError> {
        let pending = client
            .start_publish(topic, payload, options.clone())
            .await?;
        self.pending.push_back(pending);
        if self.pending.len() > WINDOW
            && let Some(oldest) = self.pending.pop_front()
        {
            oldest.await?;
        }
        Ok(())
    }

    async fn finish(self) -> Result<(), ClientError> {
        for pending in self.pending {
            pending.await?;
        }
        Ok(())
    }
}
