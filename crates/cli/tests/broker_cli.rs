//! `sagitta broker` as a user runs it: flags, config file errors, and a clean shutdown on
//! SIGINT that tells MQTT 5 clients (DISCONNECT 0x8B).
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sagitta_proto::{Connect, MqttStr, Packet, ProtocolVersion, ReasonCode, decode};

fn start(args: &[&str]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running::new(child)
}

fn connect_when_up(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("broker did not come up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn recv(stream: &mut TcpStream, buf: &mut BytesMut, v: ProtocolVersion) -> Option<Packet> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        if let Some(p) = decode(buf, v, usize::MAX).unwrap() {
            return Some(p);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn sigint_disconnects_v5_clients_with_0x8b_and_exits_0() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut broker = start(&["broker", "--memory", "--listen", &listen]);
    let (mut stream, mut buf) = connect_v5(listen.parse().unwrap(), "cli-test");

    let pid = broker.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    match recv(&mut stream, &mut buf, ProtocolVersion::V5) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = broker.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_config_is_a_clear_error_and_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("sagitta-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:1883\"]\nmax_inflight = \"many\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--memory", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_inflight") && err.contains("line 2"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_file_sets_the_listen_address() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sagitta-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.toml");
    std::fs::write(&path, format!("listen = [\"127.0.0.1:{port}\"]\n")).unwrap();
    let _broker = start(&["broker", "--memory", "--config", path.to_str().unwrap()]);
    let stream = connect_when_up(SocketAddr::from(([127, 0, 0, 1], port)));
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_validates_and_exits() {
    let dir = std::env::temp_dir().join(format!("sagitta-cli-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "max_inflight = 10\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "maximum_qos = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("maximum_qos"));
    // The example file shipped with the project is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sagitta.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--check-config", "--config", example])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Connects a 5.0 client called `id` and waits for its CONNACK.
fn connect_v5(addr: SocketAddr, id: &str) -> (TcpStream, BytesMut) {
    let mut stream = connect_when_up(addr);
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(Connect::new(
        ProtocolVersion::V5,
        MqttStr::new(id).unwrap(),
    )))
    .encode(ProtocolVersion::V5, &mut out)
    .unwrap();
    stream.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    match recv(&mut stream, &mut buf, ProtocolVersion::V5) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (stream, buf)
}

/// Publishes at QoS 1 and returns the PUBACK's reason code.
fn puback_reason(stream: &mut TcpStream, buf: &mut BytesMut, topic: &str, id: u16) -> ReasonCode {
    let mut p = sagitta_proto::Publish::new(sagitta_proto::TopicName::new(topic).unwrap(), "x");
    p.qos = sagitta_proto::QoS::AtLeastOnce;
    p.packet_id = std::num::NonZeroU16::new(id);
    let mut out = BytesMut::new();
    Packet::Publish(p)
        .encode(ProtocolVersion::V5, &mut out)
        .unwrap();
    stream.write_all(&out).unwrap();
    match recv(stream, buf, ProtocolVersion::V5) {
        Some(Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[test]
fn sighup_reloads_the_acl_while_clients_stay_connected() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sagitta-cli-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic write first\n").unwrap();
    let config = dir.join("sagitta.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nacl_file = \"{}\"\n",
            acl.display()
        ),
    )
    .unwrap();
    let mut broker = start(&["broker", "--memory", "--config", config.to_str().unwrap()]);
    let (mut stream, mut buf) = connect_v5(SocketAddr::from(([127, 0, 0, 1], port)), "hup");
    assert_eq!(
        puback_reason(&mut stream, &mut buf, "second", 1),
        ReasonCode::NotAuthorized
    );
    std::fs::write(&acl, "topic write second\n").unwrap();
    let pid = broker.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The same connection is checked against the new file from its next packet on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 2;
    while puback_reason(&mut stream, &mut buf, "second", id) == ReasonCode::NotAuthorized {
        assert!(Instant::now() < deadline, "the new ACL never applied");
        std::thread::sleep(Duration::from_millis(50));
        id += 1;
    }
    assert_eq!(
        puback_reason(&mut stream, &mut buf, "first", id + 1),
        ReasonCode::NotAuthorized
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = connect_when_up(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn http_flag_serves_health_ready_and_metrics() {
    let (port, http_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{http_port}");
    let _broker = start(&["broker", "--memory", "--listen", &listen, "--http", &http]);
    let addr: SocketAddr = http.parse().unwrap();
    assert_eq!(http_get(addr, "/health"), (200, "ok\n".to_owned()));
    // Ready once the MQTT listener is bound (the HTTP listener comes up first).
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(addr, "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("\nsagitta_connections 0\n"), "{metrics}");
}

#[test]
fn http_off_loopback_without_a_token_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args([
            "broker",
            "--memory",
            "--http",
            "0.0.0.0:1",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.token") && err.contains("0.0.0.0:1"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--memory", "--http", "0.0.0.0:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_with_json_logs_says_goodbye_and_logs_each_client() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut broker = start(&[
        "broker",
        "--memory",
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]);
    let (mut stream, mut buf) = connect_v5(listen.parse().unwrap(), "json-client");
    let pid = broker.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    match recv(&mut stream, &mut buf, ProtocolVersion::V5) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let out = broker.output();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["client_id"] == "json-client")
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"))
    };
    let connected = event("client connected");
    assert_eq!(connected["protocol"], "5.0");
    assert!(
        connected["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(connected["level"], "INFO");
    let disconnected = event("client disconnected");
    assert_eq!(disconnected["reason"], "broker shutting down");
    assert_eq!(disconnected["peer"], connected["peer"]);
}
