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

/// A browser, how the tests find it: the path in `env_var`, else `default`, installed by the
/// Debian package `debian`, and the npm package that drives it.
pub struct Browser {
    pub env_var: &'static str,
    pub default: &'static str,
    pub debian: &'static str,
    pub driver: &'static str,
}

/// The path of `script` (in [`script_dir`]) if Node.js, the browser and its driver are
/// there, or why the test cannot run.
pub fn prerequisites(browser: &Browser, script: &str) -> Result<PathBuf, String> {
    let dir = script_dir();
    let path = std::env::var_os(browser.env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(browser.default));
    if !node_runs() {
        return Err("`node` cannot be run (Debian: `apt-get install nodejs npm`)".into());
    }
    if !path.exists() {
        return Err(format!(
            "{} does not exist (Debian: `apt-get install {}`)",
            path.display(),
            browser.debian
        ));
    }
    let driver = format!("node_modules/{}/package.json", browser.driver);
    if !dir.join(driver).exists() {
        return Err(format!(
            "{} is not installed: run `npm ci --prefix {}`",
            browser.driver,
            dir.display()
        ));
    }
    Ok(dir.join(script))
}

/// The configuration of the browser tests' brokers: an MQTT listener and the HTTP listener
/// with [`TOKEN`], on free loopback ports; no `$SYS` messages.
pub fn dashboard_config() -> sagitta_broker::Config {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let http = sagitta_broker::HttpConfig::new(loopback).token(TOKEN);
    let mut config = sagitta_broker::Config::default()
        .in_memory()
        .listen([loopback])
        .http(http);
    config.sys_interval = 0;
    config
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
