//! Helpers shared by the dashboard's browser tests (`dashboard.rs`: Chromium,
//! `dashboard_firefox.rs`: Firefox): the prerequisite convention, MQTT clients, and a plain
//! `GET` of the operator API with the token.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sagitta_broker::Broker;
use sagitta_client::ReconnectPolicy;
use sagitta_client::{Client, ProtocolVersion};

/// The token the browser tests' brokers require.
pub const TOKEN: &str = "e2e-dashboard-token";

/// `crates/broker/tests/dashboard`: the scripts and their `node_modules`.
pub fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// `docs/dashboard`, where the scripts save their screenshots.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard")
}

/// Whether `node` can be run at all.
pub fn node_runs() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
}

/// The prerequisite convention: a missing browser, Node.js or npm package fails the test
/// under CI (`CI=true`) and skips it, with a message, elsewhere. `Some(value)` to go on.
pub fn required<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test} cannot run under CI: {why} (scripts/test-all installs it)")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why} (scripts/test-all installs it)");
            None
        }
    }
}

pub async fn client(mqtt: SocketAddr, id: &str) -> Client {
    Client::builder(mqtt.to_string())
        .client_id(id)
        .protocol(ProtocolVersion::V5)
        .reconnect(ReconnectPolicy::disabled())
        .connect()
        .await
        .expect("client connects")
}

pub fn connected(broker: &Broker) -> u64 {
    broker.metrics().clients_connected.load(Ordering::Relaxed)
}

/// `GET path` with the token, the body as text.
pub async fn get_with_token(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}
