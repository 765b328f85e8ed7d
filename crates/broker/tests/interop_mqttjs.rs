//! Interoperability with MQTT.js (npm `mqtt`, a client we did not write) against a Sagitta
//! broker started in-process on a free port: SCRAM-SHA-256, and MQTT over WebSocket (`ws`,
//! and `wss` with a test PKI).
//!
//! Each test runs a script of `tests/mqttjs/` with Node.js; the script exits 0 when the
//! broker behaved and 1 with the reason on stderr when it did not. MQTT.js is installed
//! into `tests/mqttjs/node_modules` by `scripts/test-all` (`npm ci`).

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_interop;
mod common_tls;

use std::time::Duration;

use common_interop::{TestBroker, args, mqttjs_script, run_ok};
use sagitta_broker::ListenerConfig;
use sagitta_proto::scram::Credentials;

/// Outer limit for one script (their own watchdog fires at 15 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// SCRAM-SHA-256 through MQTT.js's enhanced-authentication hooks: the right password logs
/// in (and the broker proves it knows the password), a wrong one and an unknown user are
/// refused with 0x86. The ACL lets a user use only topics under its own name, so the message
/// coming back also shows that the broker took the name from the SCRAM exchange.
#[tokio::test]
async fn mqttjs_logs_in_with_scram_sha_256() {
    let script = mqttjs_script("scram.js");
    let dir = std::env::temp_dir().join(format!("sagitta-mqttjs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let credentials = Credentials::derive(b"wonder land", b"16 bytes of salt", 4096);
    std::fs::write(&passwords, format!("alice:{credentials}\n")).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "pattern readwrite %u/#\n").unwrap();
    let broker = TestBroker::start_with(|c| {
        c.password_file = Some(passwords.clone());
        c.acl_file = Some(acl.clone());
        c.failed_login_delay_ms = 0;
    })
    .await;
    for (user, password, expect) in [
        ("alice", "wonder land", "ok"),
        ("alice", "wonderland", "refused"),
        ("mallory", "wonder land", "refused"),
    ] {
        let out = run_ok(
            "node",
            &args([&script, &broker.port(), user, password, expect]),
            SCRIPT_LIMIT,
        )
        .await;
        assert_eq!(out.trim(), expect, "{user} / {password}");
    }
    broker.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// MQTT.js over `ws://` and `wss://` (verifying the test CA, `rejectUnauthorized`), MQTT
/// 3.1.1 and 5.0: a subscription at QoS 2 gets back the messages published at QoS 0, 1 and 2
/// (one of 40 KB), through the broker's WebSocket listeners at `/mqtt`.
#[tokio::test]
async fn mqttjs_over_websocket_and_secure_websocket() {
    let script = mqttjs_script("websocket.js");
    let pki = common_tls::Pki::new("mqttjs-ws");
    let any = "127.0.0.1:0".parse().unwrap();
    let broker = TestBroker::start_with(|c| {
        c.listeners = vec![
            ListenerConfig::ws(any).allow_anonymous(true),
            ListenerConfig::wss(any, pki.path("server.pem"), pki.path("server.key"))
                .allow_anonymous(true),
        ];
    })
    .await;
    let addrs = broker.local_addrs();
    let (ws, wss) = (addrs[1], addrs[2]);
    let ca = pki.arg("ca.pem");
    for version in ["4", "5"] {
        let plain = format!("ws://127.0.0.1:{}/mqtt", ws.port());
        let out = run_ok("node", &args([&script, &plain, version]), SCRIPT_LIMIT).await;
        assert_eq!(out.trim(), "ok", "ws, version {version}");
        let secure = format!("wss://localhost:{}/mqtt", wss.port());
        let out = run_ok(
            "node",
            &args([&script, &secure, version, &ca]),
            SCRIPT_LIMIT,
        )
        .await;
        assert_eq!(out.trim(), "ok", "wss, version {version}");
    }
    // The client verifies the broker: with another CA it refuses the connection.
    let secure = format!("wss://localhost:{}/mqtt", wss.port());
    let other = pki.arg("other-ca.pem");
    let status = tokio::process::Command::new("node")
        .args([&script, &secure, "5", &other])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(SCRIPT_LIMIT, status)
        .await
        .expect("the script ends")
        .unwrap();
    assert!(
        !status.success(),
        "MQTT.js accepted a broker signed by another CA"
    );
    broker.stop().await;
}
