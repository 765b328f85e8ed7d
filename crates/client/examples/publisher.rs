//! The seed's publisher, with Sagitta's blocking client (no async runtime needed): a text
//! and an empty payload, to the topics the `subscriber` example listens to.
//!
//! ```sh
//! cargo run -p sagitta-client --example publisher -- [host:port] [text]
//! ```
//! `host:port` defaults to `localhost:1883`.

use sagitta_client::QoS;
use sagitta_client::blocking::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "localhost:1883".to_owned());
    let text = args
        .next()
        .unwrap_or_else(|| "hello from sagitta".to_owned());

    let client = Client::connect(addr.as_str())?;

    // QoS 0: returns once queued.
    client.publish("sagitta/demo/callback/text", text.clone())?;
    // QoS 1: returns when the broker has acknowledged (PUBACK).
    client.publish_with("sagitta/demo/loop/text", text, QoS::AtLeastOnce)?;
    // An empty payload is a valid message.
    client.publish_with("sagitta/demo/loop/empty", "", QoS::AtLeastOnce)?;

    client.disconnect()?;
    println!("published a text and an empty payload to {addr}");
    Ok(())
}
