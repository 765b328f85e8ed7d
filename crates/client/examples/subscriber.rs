//! The seed's subscriber, with Sagitta's client: one subscription delivers to a callback,
//! another is read in a receive loop. No pumping: the client's event loop receives,
//! acknowledges and pings in the background.
//!
//! ```sh
//! cargo run -p sagitta-client --example subscriber -- [host:port] [count]
//! ```
//! `host:port` defaults to `localhost:1883`; with `count` it exits after that many messages
//! from the receive loop. Publish to it with the `publisher` example.

use sagitta_client::{Client, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "localhost:1883".to_owned());
    let count: Option<usize> = args.next().map(|n| n.parse()).transpose()?;

    let client = Client::connect(addr.as_str()).await?;

    // A callback: runs on the client's event loop for every message on these topics.
    client
        .subscribe(
            "sagitta/demo/callback/#",
            QoS::AtLeastOnce,
            |topic, payload| {
                println!("callback: {topic}: {:?}", String::from_utf8_lossy(payload));
            },
        )
        .await?;

    // No callback: messages are read with recv().
    client
        .subscribe_recv("sagitta/demo/loop/#", QoS::AtLeastOnce)
        .await?;
    println!("subscribed at {addr}; waiting for messages (Ctrl-C to stop)");

    let mut received = 0;
    while count.is_none_or(|n| received < n) {
        tokio::select! {
            message = client.recv() => {
                let Some(message) = message else { break };
                received += 1;
                println!(
                    "loop: {}: {:?} ({} bytes)",
                    message.topic,
                    String::from_utf8_lossy(&message.payload),
                    message.payload.len()
                );
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.disconnect().await?;
    Ok(())
}
