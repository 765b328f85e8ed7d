//! Publish rate of one client against a broker: QoS 0, QoS 1 pipelined (many in flight, as
//! the broker's Receive Maximum allows) and QoS 1 one at a time (each waits for its PUBACK).
//!
//! ```sh
//! cargo run --release -p sagitta-client --example rate -- \
//!     [host:port] [count] [payload-bytes] [3|5] [phases] [runtime-threads]
//! ```
//! Defaults: `localhost:1883`, 100 000 messages, 16 bytes, MQTT 5.0, phases `01s` (QoS 0,
//! QoS 1 pipelined, QoS 1 sequential), tokio's multi-threaded runtime (`1`: current-thread).
//! With `CAFILE=ca.pem` in the environment the client connects with TLS (trusting that CA).
//! No subscriber is needed: the rate is how fast the broker takes the messages in. For QoS 0
//! the clock stops when a final QoS 1 message is acknowledged, so every message has reached
//! the broker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sagitta_client::{Client, ProtocolVersion, QoS, TlsOptions, TopicName};

fn report(what: &str, count: usize, elapsed: Duration) {
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{what:<22} {count:>8} msgs in {elapsed:>10.3?}  {rate:>12.0} msgs/s");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: Option<usize> = std::env::args().nth(6).map(|n| n.parse()).transpose()?;
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "localhost:1883".to_owned());
    let count: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let size: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(16);
    let protocol = match args.next().as_deref() {
        Some("3") => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let phases = args.next().unwrap_or_else(|| "01s".to_owned());

    let mut builder = Client::builder(addr.as_str()).protocol(protocol);
    if let Some(ca) = std::env::var_os("CAFILE") {
        builder = builder.tls(TlsOptions::ca_file(ca));
    }
    let client = builder.connect().await?;
    let topic = TopicName::new("sagitta/rate")?;
    let payload = Bytes::from(vec![b'x'; size]);
    let over = if std::env::var_os("CAFILE").is_some() {
        " over TLS"
    } else {
        ""
    };
    println!("MQTT {protocol} to {addr}{over}, {size}-byte payloads");

    if phases.contains('0') {
        let start = Instant::now();
        for _ in 0..count {
            client.publish(&topic, payload.clone()).await?;
        }
        client
            .publish_with(&topic, payload.clone(), QoS::AtLeastOnce)
            .await?;
        report("QoS 0", count, start.elapsed());
    }
    if phases.contains('1') {
        qos1_pipelined(&client, &topic, &payload, count).await?;
    }
    if phases.contains('s') {
        let sequential = count.min(20_000);
        let start = Instant::now();
        for _ in 0..sequential {
            client
                .publish_with(&topic, payload.clone(), QoS::AtLeastOnce)
                .await?;
        }
        report("QoS 1 one at a time", sequential, start.elapsed());
    }
    client.disconnect().await?;
    Ok(())
}

async fn qos1_pipelined(
    client: &Client,
    topic: &TopicName,
    payload: &Bytes,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for _ in 0..count {
        let ack = client
            .start_publish(topic, payload.clone(), QoS::AtLeastOnce)
            .await?;
        pending.push_back(ack);
        if pending.len() >= 4096
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
    }
    for ack in pending {
        ack.await?;
    }
    report("QoS 1 pipelined", count, start.elapsed());
    Ok(())
}
