//! Bridges (`[[bridge]]`) with a real Mosquitto (`/usr/sbin/mosquitto`, Debian package
//! `mosquitto`) started by each test on a free port of 127.0.0.1: topics both ways with
//! prefix remapping, MQTT 5.0 and 3.1.1 remotes, no loop when both sides forward the same
//! topic, nothing lost while the remote is stopped and started again (and across a restart
//! of our broker with its store), status in the admin API, `$SYS` and metrics;
//! Mosquitto's own bridge (`connection`) into Sagitta; and QoS 2 exactly once across
//! connections cut by a proxy (the bridge resumes its remote session).
//!
//! Mosquitto missing fails the tests (with installation advice), as in the other interop
//! tests; `scripts/test-all` installs it.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sagitta_broker::{
    BridgeConfig, BridgeProtocol, BridgeStatus, Broker, Config, Direction, HttpConfig, TopicRule,
};
use sagitta_client::{Client, Message, ProtocolVersion, QoS, ReconnectPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one expected event may take.
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn mosquitto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    for candidate in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "mosquitto not found (looked at $MOSQUITTO, /usr/sbin/mosquitto, \
         /usr/local/sbin/mosquitto): install Debian's `mosquitto` package \
         (scripts/test-all does) to run the bridge tests"
    );
}

/// A Mosquitto process on 127.0.0.1 with its own directory (config, log, persistence),
/// killed when dropped.
struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts Mosquitto (anonymous access) with `extra` config lines.
    fn start(extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sagitta-bridge-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
                 log_dest stderr\nlog_type all\n{extra}\n"
            );
            std::fs::write(dir.join("mosquitto.conf"), config).expect("write config");
            let mut m = Self {
                port,
                dir: dir.clone(),
                child: None,
            };
            match m.try_start() {
                Ok(()) => return m,
                Err(why) if why.contains("Address already in use") => last = why,
                Err(why) => panic!("{why}"),
            }
        }
        panic!("no free port for mosquitto: {last}");
    }

    /// With persistence in its directory (saved when stopped with SIGTERM).
    fn persistent() -> Self {
        let m = Self::start("");
        let lines = format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1\n",
            m.dir.display()
        );
        let config = std::fs::read_to_string(m.dir.join("mosquitto.conf")).unwrap() + &lines;
        std::fs::write(m.dir.join("mosquitto.conf"), config).unwrap();
        let mut m = m;
        m.start_again();
        m
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops it with SIGTERM (Mosquitto saves its persistence file) and waits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it at once (SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_again(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        self.kill();
        let runs_before = self.log().matches(" running").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("open log");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if self.log().matches(" running").count() > runs_before
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "mosquitto exited with {status}; log: {}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("mosquitto did not start; log: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our broker on a free port, in memory unless `tweak` says otherwise.
async fn sagitta(tweak: impl FnOnce(&mut Config)) -> Broker {
    let mut config = Config::default()
        .in_memory()
        .listen([SocketAddr::from(([127, 0, 0, 1], 0))]);
    config.sys_interval = 1;
    tweak(&mut config);
    Broker::start(config).await.expect("broker starts")
}

/// A bridge to `remote` with fast reconnects.
fn bridge(name: &str, remote: &str, protocol: BridgeProtocol) -> BridgeConfig {
    let mut b = BridgeConfig::new(name, remote);
    b.protocol = protocol;
    b.reconnect_delay_ms = 100;
    b.reconnect_max_delay_ms = 500;
    b
}

fn status(broker: &Broker, name: &str) -> BridgeStatus {
    broker
        .bridges()
        .into_iter()
        .find(|b| b.name == name)
        .expect("the bridge exists")
}

/// Waits (bounded) until the bridge's status satisfies `ok`.
async fn wait_status(broker: &Broker, name: &str, what: &str, ok: impl Fn(&BridgeStatus) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(broker, name);
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: bridge status {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(addr: impl Into<String>, v: ProtocolVersion) -> Client {
    Client::builder(addr)
        .protocol(v)
        .connect()
        .await
        .expect("client connects")
}

async fn next(c: &Client, what: &str) -> Message {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within {WAIT:?}: {what}"))
        .expect("client open")
}

/// Every message `c` gets within `quiet` of the previous one.
async fn drain(c: &Client, quiet: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, c.recv()).await {
        got.push(m);
    }
    got
}

/// Publishes `topic` from `publisher` until `subscriber` gets it as `expect` (a subscriber
/// or a bridge on the way may not be ready yet); other messages meanwhile are skipped, and
/// the pings are not counted.
async fn until_flowing(publisher: &Client, subscriber: &Client, topic: &str, expect: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        publisher
            .publish_with(topic, "ping", QoS::AtLeastOnce)
            .await
            .unwrap();
        let round = Instant::now() + Duration::from_millis(200);
        while let Ok(Some(m)) = tokio::time::timeout(
            round.saturating_duration_since(Instant::now()),
            subscriber.recv(),
        )
        .await
        {
            if m.topic.as_str() == expect {
                // Pings published meanwhile may follow.
                drain(subscriber, Duration::from_millis(300)).await;
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing flows from {topic} to {expect}"
        );
    }
}

fn v(protocol: BridgeProtocol) -> ProtocolVersion {
    match protocol {
        BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
        BridgeProtocol::V5 => ProtocolVersion::V5,
    }
}

/// Out with `edge/` → `site1/`, in with `site1/cmd/` → `local/cmd/`.
async fn flows_both_ways_with_remapping(protocol: BridgeProtocol) {
    let mosquitto = Mosquitto::start("");
    let broker = sagitta(|c| {
        c.bridges.push(
            bridge("cloud", &mosquitto.addr(), protocol)
                .topic(TopicRule::new("sensors/#", Direction::Out).prefixes("edge/", "site1/"))
                .topic(
                    TopicRule::new("cmd/#", Direction::In)
                        .prefixes("local/", "site1/")
                        .qos(2),
                ),
        );
    })
    .await;
    let local_addr = broker.local_addrs()[0].to_string();
    wait_status(&broker, "cloud", "connected", |s| s.connected).await;

    let remote_sub = client(mosquitto.addr(), v(protocol)).await;
    remote_sub
        .subscribe_recv("#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let local_pub = client(&local_addr, ProtocolVersion::V5).await;
    until_flowing(
        &local_pub,
        &remote_sub,
        "edge/sensors/ping",
        "site1/sensors/ping",
    )
    .await;
    local_pub
        .publish_with("edge/sensors/t1", "21.5", QoS::AtLeastOnce)
        .await
        .unwrap();
    let m = next(&remote_sub, "out").await;
    assert_eq!(m.topic.as_str(), "site1/sensors/t1");
    assert_eq!(&m.payload[..], b"21.5");
    // Not an `out` topic.
    local_pub
        .publish_with("other/t", "x", QoS::AtLeastOnce)
        .await
        .unwrap();

    let local_sub = client(&local_addr, ProtocolVersion::V5).await;
    local_sub
        .subscribe_recv("local/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    let remote_pub = client(mosquitto.addr(), v(protocol)).await;
    until_flowing(&remote_pub, &local_sub, "site1/cmd/ping", "local/cmd/ping").await;
    remote_pub
        .publish_with("site1/cmd/reboot", "now", QoS::ExactlyOnce)
        .await
        .unwrap();
    let m = next(&local_sub, "in").await;
    assert_eq!(m.topic.as_str(), "local/cmd/reboot");
    assert_eq!(&m.payload[..], b"now");
    assert_eq!(m.qos, QoS::ExactlyOnce);
    // The remote subscriber sees the remote's own `site1/cmd/...` messages; nothing else
    // (`other/t`) went out.
    let rest: Vec<String> = drain(&remote_sub, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|m| m.topic.to_string())
        .filter(|t| !t.starts_with("site1/cmd/"))
        .collect();
    assert!(rest.is_empty(), "nothing else went out: {rest:?}");
    let s = status(&broker, "cloud");
    assert!(s.sent >= 2 && s.received >= 2, "{s:?}");
    assert_eq!(s.remote.as_deref(), Some(mosquitto.addr().as_str()));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_remote_flows_both_ways_with_remapping() {
    flows_both_ways_with_remapping(BridgeProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_remote_flows_both_ways_with_remapping() {
    flows_both_ways_with_remapping(BridgeProtocol::V311).await;
}

/// `both` on the same topic: one message published on each side arrives once on each side,
/// and nothing comes back.
async fn no_loop(protocol: BridgeProtocol) {
    let mosquitto = Mosquitto::start("");
    let broker = sagitta(|c| {
        c.bridges.push(
            bridge("loop", &mosquitto.addr(), protocol)
                .topic(TopicRule::new("loop/#", Direction::Both)),
        );
    })
    .await;
    let local_addr = broker.local_addrs()[0].to_string();
    wait_status(&broker, "loop", "connected", |s| s.connected).await;
    let local = client(&local_addr, ProtocolVersion::V5).await;
    local
        .subscribe_recv("loop/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let remote = client(mosquitto.addr(), v(protocol)).await;
    remote
        .subscribe_recv("loop/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // Both directions work before counting (pings may arrive on both sides).
    until_flowing(&local, &remote, "loop/ping-out", "loop/ping-out").await;
    until_flowing(&remote, &local, "loop/ping-in", "loop/ping-in").await;
    drain(&local, Duration::from_millis(500)).await;
    drain(&remote, Duration::from_millis(500)).await;
    let before = status(&broker, "loop");

    local
        .publish_with("loop/a", "from-local", QoS::AtLeastOnce)
        .await
        .unwrap();
    remote
        .publish_with("loop/b", "from-remote", QoS::AtLeastOnce)
        .await
        .unwrap();
    let on_local = drain(&local, Duration::from_millis(1500)).await;
    let on_remote = drain(&remote, Duration::from_millis(1500)).await;
    let topics = |ms: &[Message]| {
        let mut t: Vec<String> = ms.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    };
    assert_eq!(topics(&on_local), ["loop/a", "loop/b"], "local side");
    assert_eq!(topics(&on_remote), ["loop/a", "loop/b"], "remote side");
    let after = status(&broker, "loop");
    assert_eq!(after.sent - before.sent, 1, "{after:?}");
    assert_eq!(after.received - before.received, 1, "{after:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_remote_no_loop_when_both_sides_forward_the_same_topic() {
    no_loop(BridgeProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_remote_no_loop_when_both_sides_forward_the_same_topic() {
    no_loop(BridgeProtocol::V311).await;
}

/// A persistent QoS 1 subscriber on Mosquitto, reconnecting.
async fn persistent_subscriber(mosquitto: &Mosquitto, id: &str, filter: &str) -> Client {
    let c = Client::builder(mosquitto.addr())
        .client_id(id)
        .clean_start(false)
        .session_expiry(Duration::from_secs(3600))
        .reconnect(ReconnectPolicy::exponential(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .connect()
        .await
        .expect("subscriber connects");
    c.subscribe_recv(filter, QoS::AtLeastOnce).await.unwrap();
    c
}

/// Reads `n` distinct messages `0..n` and checks they came in order (a message sent again
/// after a reconnect may repeat, QoS 1).
async fn expect_in_order(c: &Client, n: usize) {
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {seen} of {n} messages arrived"))
            .unwrap();
        let i: usize = m.payload_str().unwrap().parse().unwrap();
        if i < seen {
            continue; // A duplicate.
        }
        assert_eq!(
            i, seen,
            "message {seen} expected, got {i}: out of order or lost"
        );
        seen += 1;
    }
}

/// The remote stops (SIGTERM) and starts again while 200 QoS 1 messages are published
/// locally: all of them reach a subscriber on the remote, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_restart_while_publishing_loses_nothing() {
    let mut mosquitto = Mosquitto::persistent();
    let broker = sagitta(|c| {
        c.bridges.push(
            bridge("up", &mosquitto.addr(), BridgeProtocol::V5)
                .topic(TopicRule::new("data/#", Direction::Out).prefixes("", "edge1/")),
        );
    })
    .await;
    wait_status(&broker, "up", "connected", |s| s.connected).await;
    let sub = persistent_subscriber(&mosquitto, "remote-sub", "edge1/data/#").await;
    let publisher = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    const N: usize = 200;
    for i in 0..N {
        publisher
            .publish_with("data/seq", i.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
        if i == 50 {
            mosquitto.stop();
        }
        if i == 150 {
            let s = status(&broker, "up");
            assert!(!s.connected, "{s:?}");
            assert!(s.queued + s.inflight > 0, "messages wait locally: {s:?}");
            mosquitto.start_again();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expect_in_order(&sub, N).await;
    let s = status(&broker, "up");
    assert!(s.reconnects >= 1, "{s:?}");
    assert_eq!(s.dropped, 0, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    broker.shutdown().await;
}

/// Messages queued while the remote is down survive a restart of our broker (persistent
/// store) and are delivered once the remote is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_survive_a_broker_restart() {
    let mut mosquitto = Mosquitto::persistent();
    // A persistent subscriber session on the remote, then the remote goes away.
    let sub = persistent_subscriber(&mosquitto, "sub-restart", "edge/#").await;
    sub.disconnect().await.unwrap();
    mosquitto.stop();

    let data = mosquitto.dir.join("sagitta-data");
    let port = free_port();
    let remote = mosquitto.addr();
    let config = move |c: &mut Config| {
        c.persistence = true;
        c.data_dir = data.clone();
        c.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        c.bridges.push(
            bridge("store", &remote, BridgeProtocol::V311)
                .topic(TopicRule::new("m/#", Direction::Out).prefixes("", "edge/")),
        );
    };
    let broker = sagitta(config.clone()).await;
    let publisher = client(format!("127.0.0.1:{port}"), ProtocolVersion::V5).await;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .publish_with("m/x", i.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    wait_status(&broker, "store", "20 messages held", |s| {
        s.queued + s.inflight == N as u64
    })
    .await;
    publisher.disconnect().await.unwrap();
    broker.shutdown().await;

    let broker = sagitta(config).await;
    wait_status(&broker, "store", "20 messages restored", |s| {
        s.queued + s.inflight == N as u64
    })
    .await;
    mosquitto.start_again();
    wait_status(&broker, "store", "delivered", |s| {
        s.connected && s.sent == N as u64
    })
    .await;
    let sub = persistent_subscriber(&mosquitto, "sub-restart", "edge/#").await;
    expect_in_order(&sub, N).await;
    broker.shutdown().await;
}

/// Status: `GET /api/v1/bridges`, `$SYS/broker/bridge/<name>/...`, Prometheus metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_in_admin_api_sys_and_metrics() {
    let mosquitto = Mosquitto::start("");
    let broker = sagitta(|c| {
        c.http = Some(HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))));
        c.bridges.push(
            bridge("st", &mosquitto.addr(), BridgeProtocol::V5)
                .topic(TopicRule::new("s/#", Direction::Out)),
        );
        // Never reachable: connected stays false, the error says why.
        c.bridges.push(
            bridge(
                "down",
                &format!("127.0.0.1:{}", free_port()),
                BridgeProtocol::V5,
            )
            .topic(TopicRule::new("d/#", Direction::Out)),
        );
    })
    .await;
    let local_addr = broker.local_addrs()[0].to_string();
    wait_status(&broker, "st", "connected", |s| s.connected).await;
    wait_status(&broker, "down", "an error", |s| s.last_error.is_some()).await;
    let local = client(&local_addr, ProtocolVersion::V5).await;
    local
        .publish_with("s/1", "x", QoS::AtLeastOnce)
        .await
        .unwrap();
    local
        .publish_with("d/1", "x", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_status(&broker, "st", "sent", |s| s.sent == 1).await;
    wait_status(&broker, "down", "held", |s| s.queued + s.inflight == 1).await;

    let http = broker.http_addr().unwrap();
    let body = http_get(http, "/api/v1/bridges").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bridges = json["bridges"].as_array().unwrap();
    assert_eq!(bridges.len(), 2);
    assert_eq!(bridges[0]["name"], "st");
    assert_eq!(bridges[0]["connected"], true);
    assert_eq!(bridges[0]["sent"], 1);
    assert_eq!(bridges[0]["remote"], mosquitto.addr());
    assert_eq!(bridges[1]["connected"], false);
    assert!(
        bridges[1]["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );

    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("sagitta_bridge_connected{bridge=\"st\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sagitta_bridge_connected{bridge=\"down\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sagitta_bridge_sent_total{bridge=\"st\"} 1"),
        "{metrics}"
    );

    let sys = client(&local_addr, ProtocolVersion::V5).await;
    sys.subscribe_recv("$SYS/broker/bridge/st/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    let deadline = Instant::now() + WAIT;
    // Retained values of earlier updates come first.
    while !(seen.get("connected").is_some_and(|v| v == "1")
        && seen.get("sent").is_some_and(|v| v == "1"))
    {
        assert!(Instant::now() < deadline, "$SYS topics: {seen:?}");
        let m = next(&sys, "$SYS").await;
        let leaf = m.topic.as_str().rsplit('/').next().unwrap().to_owned();
        seen.insert(leaf, m.payload_str().unwrap().to_owned());
    }
    broker.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Network clients cannot take a bridge's local session id.
#[tokio::test]
async fn bridge_client_ids_are_reserved() {
    let broker = sagitta(|_| {}).await;
    let e = Client::builder(broker.local_addrs()[0].to_string())
        .client_id("$bridge/x")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        e.reason(),
        Some(sagitta_client::proto::ReasonCode::ClientIdentifierNotValid),
        "{e}"
    );
    broker.shutdown().await;
}

#[test]
fn bridge_config_is_checked() {
    let ok = r#"
        [[bridge]]
        name = "cloud"
        addresses = ["a:1883", "b:1883"]
        protocol = "3.1.1"
        [[bridge.topic]]
        pattern = "sensors/#"
        direction = "both"
        qos = 2
        local_prefix = "edge/"
        remote_prefix = "site1/"
    "#;
    let c = Config::from_toml(ok).unwrap();
    c.validate().unwrap();
    assert_eq!(c.bridges[0].protocol, BridgeProtocol::V311);
    assert_eq!(c.bridges[0].topics[0].direction, Direction::Both);
    assert_eq!(c.bridges[0].addresses.len(), 2);

    let error = |toml: &str| match Config::from_toml(toml) {
        Ok(c) => c.validate().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    let base = "[[bridge]]\nname = \"b\"\naddresses = [\"h:1\"]\n";
    let e = error(&format!(
        "{base}[[bridge.topic]]\npattern = \"a/#\"\nlocal_prefix = \"x/#/\"\n"
    ));
    assert!(
        e.contains("`[[bridge]]` b") && e.contains("local_prefix"),
        "{e}"
    );
    let e = error(&format!("{base}[[bridge.topic]]\npattern = \"a/#/b\"\n"));
    assert!(e.contains("not valid"), "{e}");
    let e = error(&format!(
        "{base}[[bridge.topic]]\npattern = \"a\"\nqos = 3\n"
    ));
    assert!(e.contains("qos"), "{e}");
    let e = error(base);
    assert!(e.contains("at least one `[[bridge.topic]]`"), "{e}");
    let e = error(&format!(
        "{base}[[bridge.topic]]\npattern = \"a\"\n{base}[[bridge.topic]]\npattern = \"a\"\n"
    ));
    assert!(e.contains("same name"), "{e}");
    let e = error(
        "[[bridge]]\nname = \"a b\"\naddresses = [\"h:1\"]\n[[bridge.topic]]\npattern = \"a\"\n",
    );
    assert!(e.contains("`name`"), "{e}");
    let e = error(&format!(
        "{base}ca_file = \"ca.pem\"\n[[bridge.topic]]\npattern = \"a\"\n"
    ));
    assert!(e.contains("need `tls = true`"), "{e}");
    let e = error(&format!(
        "{base}[[bridge.topic]]\npattern = \"a\"\ndirection = \"sideways\"\n"
    ));
    assert!(e.contains("sideways"), "{e}");
}

/// Mosquitto's own bridge (`connection`) into Sagitta: both directions, and no loop on a
/// topic both sides forward.
async fn mosquitto_bridges_into_sagitta(version: &str) {
    let broker = sagitta(|_| {}).await;
    let sagitta_addr = broker.local_addrs()[0].to_string();
    let mosquitto = Mosquitto::start(&format!(
        "connection to-sagitta\naddress {sagitta_addr}\nbridge_protocol_version {version}\n\
         try_private true\ncleansession true\nrestart_timeout 1\n\
         topic up/# out 1\ntopic down/# in 1\ntopic both/# both 1\n"
    ));
    let local = client(&sagitta_addr, ProtocolVersion::V5).await;
    local
        .subscribe_recv("up/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let remote = client(mosquitto.addr(), ProtocolVersion::V5).await;
    remote
        .subscribe_recv("down/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    until_flowing(&remote, &local, "up/ping", "up/ping").await;
    until_flowing(&local, &remote, "down/ping", "down/ping").await;

    local
        .subscribe_recv("both/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    remote
        .subscribe_recv("both/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    until_flowing(&local, &remote, "both/ping-out", "both/ping-out").await;
    until_flowing(&remote, &local, "both/ping-in", "both/ping-in").await;
    drain(&local, Duration::from_millis(500)).await;
    drain(&remote, Duration::from_millis(500)).await;
    local
        .publish_with("both/a", "from-sagitta", QoS::AtLeastOnce)
        .await
        .unwrap();
    remote
        .publish_with("both/b", "from-mosquitto", QoS::AtLeastOnce)
        .await
        .unwrap();
    let on_local = drain(&local, Duration::from_millis(1500)).await;
    let on_remote = drain(&remote, Duration::from_millis(1500)).await;
    let topics = |ms: &[Message]| {
        let mut t: Vec<String> = ms.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    };
    assert_eq!(topics(&on_local), ["both/a", "both/b"], "Sagitta side");
    assert_eq!(topics(&on_remote), ["both/a", "both/b"], "Mosquitto side");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_bridge_with_try_private_into_sagitta() {
    mosquitto_bridges_into_sagitta("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_bridge_into_sagitta() {
    mosquitto_bridges_into_sagitta("mqttv50").await;
}

/// Bridged throughput against direct, in one run (numbers in docs/performance.md): K QoS 1
/// messages of 64 bytes to a QoS 1 subscriber on Mosquitto, published straight to Mosquitto,
/// then published to Sagitta and bridged. Run with
/// `cargo test --release -p sagitta-broker --test bridge throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_bridged_vs_direct() {
    const K: usize = 100_000;
    let mosquitto = Mosquitto::start("max_inflight_messages 0\nmax_queued_messages 0\n");
    let broker = sagitta(|c| {
        let mut b = bridge("bench", &mosquitto.addr(), BridgeProtocol::V5)
            .topic(TopicRule::new("bench/#", Direction::Out));
        b.max_queued = Some(K);
        b.max_inflight = Some(1000);
        c.bridges.push(b);
    })
    .await;
    wait_status(&broker, "bench", "connected", |s| s.connected).await;
    let sub = Client::builder(mosquitto.addr())
        .message_capacity(K)
        .connect()
        .await
        .unwrap();
    sub.subscribe_recv("bench/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let mut rates = Vec::new();
    for (name, addr) in [
        ("direct to Mosquitto", mosquitto.addr()),
        (
            "bridged Sagitta -> Mosquitto",
            broker.local_addrs()[0].to_string(),
        ),
    ] {
        let publisher = client(addr, ProtocolVersion::V5).await;
        let start = Instant::now();
        let sending = tokio::spawn({
            let publisher = publisher.clone();
            let payload = payload.clone();
            async move {
                let mut pending = Vec::with_capacity(K);
                for _ in 0..K {
                    let p = publisher
                        .start_publish("bench/t", payload.clone(), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                    pending.push(p);
                }
                for p in pending {
                    p.await.unwrap();
                }
            }
        });
        for i in 0..K {
            tokio::time::timeout(Duration::from_secs(60), sub.recv())
                .await
                .unwrap_or_else(|_| panic!("{name}: {i} of {K} arrived"))
                .unwrap();
        }
        let elapsed = start.elapsed();
        sending.await.unwrap();
        let rate = K as f64 / elapsed.as_secs_f64();
        println!("{name}: {K} QoS 1 messages in {elapsed:.2?}: {rate:.0} msg/s");
        rates.push(rate);
        publisher.disconnect().await.unwrap();
    }
    println!(
        "bridged/direct: {:.2}; bridge status: {:?}",
        rates[1] / rates[0],
        status(&broker, "bench")
    );
    broker.shutdown().await;
}

/// A CA (PEM, issuer) made with rcgen for the mTLS test.
fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Bridge Test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A certificate signed by `issuer` for `names` (server) or with common name `names[0]`
/// (client): (certificate PEM, key PEM).
fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: &[&str],
    server: bool,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = if server {
        names.iter().map(|n| (*n).to_owned()).collect()
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A bridge over mutual TLS to a Mosquitto that requires client certificates; one without
/// a client certificate is refused and says so in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_over_mutual_tls() {
    let dir = std::env::temp_dir().join(format!(
        "sagitta-bridge-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_pem, issuer) = ca();
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca_pem);
    let (cert, key) = leaf(&issuer, &["localhost", "127.0.0.1"], true);
    let server_cert = write("server.pem", &cert);
    let server_key = write("server.key", &key);
    let (cert, key) = leaf(&issuer, &["edge-1"], false);
    let client_cert = write("client.pem", &cert);
    let client_key = write("client.key", &key);
    let mosquitto = Mosquitto::start(&format!(
        "certfile {}\nkeyfile {}\ncafile {}\nrequire_certificate true\n",
        server_cert.display(),
        server_key.display(),
        ca_file.display()
    ));
    let broker = sagitta(|c| {
        let mut b = bridge("secure", &mosquitto.addr(), BridgeProtocol::V5)
            .topic(TopicRule::new("t/#", Direction::Out));
        b.tls = true;
        b.ca_file = Some(ca_file.clone());
        b.cert = Some(client_cert.clone());
        b.key = Some(client_key.clone());
        c.bridges.push(b);
        let mut without = bridge("no-cert", &mosquitto.addr(), BridgeProtocol::V311)
            .topic(TopicRule::new("u/#", Direction::Out));
        without.tls = true;
        without.ca_file = Some(ca_file.clone());
        c.bridges.push(without);
    })
    .await;
    wait_status(&broker, "secure", "connected", |s| s.connected).await;
    wait_status(&broker, "no-cert", "refused", |s| s.last_error.is_some()).await;
    assert!(!status(&broker, "no-cert").connected);

    let sub = Client::builder(mosquitto.addr())
        .tls(sagitta_client::TlsOptions::ca_file(&ca_file).client_cert(&client_cert, &client_key))
        .connect()
        .await
        .expect("a TLS client connects to Mosquitto");
    sub.subscribe_recv("t/#", QoS::AtLeastOnce).await.unwrap();
    let local = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    until_flowing(&local, &sub, "t/ping", "t/ping").await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The addresses are tried in turn: the first is down, the second is used; when that one
/// goes away too, the bridge fails over to a third that came up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_address() {
    let dead = format!("127.0.0.1:{}", free_port());
    let mut b = Mosquitto::start("");
    let c = Mosquitto::start("");
    let broker = sagitta(|config| {
        let mut bridge =
            bridge("fo", &dead, BridgeProtocol::V5).topic(TopicRule::new("f/#", Direction::Out));
        bridge.addresses.push(b.addr());
        bridge.addresses.push(c.addr());
        config.bridges.push(bridge);
    })
    .await;
    wait_status(&broker, "fo", "connected to the second address", |s| {
        s.connected && s.remote.as_deref() == Some(b.addr().as_str())
    })
    .await;
    b.kill();
    wait_status(&broker, "fo", "connected to the third address", |s| {
        s.connected && s.remote.as_deref() == Some(c.addr().as_str())
    })
    .await;
    let sub = client(c.addr(), ProtocolVersion::V5).await;
    sub.subscribe_recv("f/#", QoS::AtLeastOnce).await.unwrap();
    let local = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    until_flowing(&local, &sub, "f/ping", "f/ping").await;
    assert!(status(&broker, "fo").reconnects >= 1);
    broker.shutdown().await;
}

/// Sagitta bridged to Sagitta, `both` ways on one topic, 3.1.1 (the remote Sagitta honours
/// the bridge flag) and 5.0: each message arrives once on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagitta_to_sagitta_no_loop() {
    for protocol in [BridgeProtocol::V311, BridgeProtocol::V5] {
        let remote = sagitta(|_| {}).await;
        let remote_addr = remote.local_addrs()[0].to_string();
        let broker = sagitta(|c| {
            c.bridges.push(
                bridge("s2s", &remote_addr, protocol)
                    .topic(TopicRule::new("loop/#", Direction::Both)),
            );
        })
        .await;
        wait_status(&broker, "s2s", "connected", |s| s.connected).await;
        let local = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
        local
            .subscribe_recv("loop/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let far = client(&remote_addr, v(protocol)).await;
        far.subscribe_recv("loop/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        until_flowing(&local, &far, "loop/ping-out", "loop/ping-out").await;
        until_flowing(&far, &local, "loop/ping-in", "loop/ping-in").await;
        drain(&local, Duration::from_millis(500)).await;
        drain(&far, Duration::from_millis(500)).await;
        local
            .publish_with("loop/a", "a", QoS::AtLeastOnce)
            .await
            .unwrap();
        far.publish_with("loop/b", "b", QoS::AtLeastOnce)
            .await
            .unwrap();
        for (side, c) in [("local", &local), ("remote", &far)] {
            let mut t: Vec<String> = drain(c, Duration::from_millis(1000))
                .await
                .iter()
                .map(|m| m.topic.to_string())
                .collect();
            t.sort();
            assert_eq!(t, ["loop/a", "loop/b"], "{side} side, {protocol:?}");
        }
        broker.shutdown().await;
        remote.shutdown().await;
    }
}

/// A remote whose maximum QoS is 1 gets QoS 2 messages at QoS 1 (not dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_lowered_to_the_remote_maximum() {
    let remote = sagitta(|c| c.maximum_qos = 1).await;
    let remote_addr = remote.local_addrs()[0].to_string();
    let broker = sagitta(|c| {
        c.bridges.push(
            bridge("q", &remote_addr, BridgeProtocol::V5)
                .topic(TopicRule::new("q/#", Direction::Out).qos(2)),
        );
    })
    .await;
    wait_status(&broker, "q", "connected", |s| s.connected).await;
    let far = client(&remote_addr, ProtocolVersion::V5).await;
    far.subscribe_recv("q/#", QoS::AtLeastOnce).await.unwrap();
    let local = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    until_flowing(&local, &far, "q/ping", "q/ping").await;
    local
        .publish_with("q/two", "x", QoS::ExactlyOnce)
        .await
        .unwrap();
    let m = next(&far, "the QoS 2 message").await;
    assert_eq!(m.topic.as_str(), "q/two");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(status(&broker, "q").dropped, 0);
    broker.shutdown().await;
    remote.shutdown().await;
}

/// A TCP proxy in front of `upstream` whose connections the test can cut (both sockets
/// closed at once, the remote broker keeps running), which can swallow packets of one type
/// each way before a cut (e.g. the remote's PUBCOMPs: the remote then has delivered a
/// message the bridge does not know it has, the case where re-publishing it as a new message
/// would deliver it twice), and which can refuse new connections for a while.
struct Proxy {
    addr: String,
    /// The packet type (4 PUBACK, 7 PUBCOMP) from the remote swallowed now, 0 for none.
    swallow: Arc<AtomicU8>,
    /// The packet type (6 PUBREL) to the remote swallowed now, 0 for none.
    swallow_up: Arc<AtomicU8>,
    swallowed: Arc<AtomicUsize>,
    /// New connections are closed at once.
    refuse: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Copies whole MQTT packets from `rd` to `wr`, except those of the type `swallow` says.
async fn relay(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    swallow: Arc<AtomicU8>,
    swallowed: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return wr.shutdown().await;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(len) = packet_len(&buf) {
            let packet: Vec<u8> = buf.drain(..len).collect();
            let kind = swallow.load(Ordering::SeqCst);
            if kind != 0 && packet[0] >> 4 == kind {
                swallowed.fetch_add(1, Ordering::SeqCst);
            } else {
                out.extend_from_slice(&packet);
            }
        }
        wr.write_all(&out).await?;
    }
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let swallow = Arc::new(AtomicU8::new(0));
        let swallow_up = Arc::new(AtomicU8::new(0));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (sw, swu, sd, rf, cs) = (
            swallow.clone(),
            swallow_up.clone(),
            swallowed.clone(),
            refuse.clone(),
            conns.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if rf.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let (upstream, sw, swu, sd) =
                    (upstream.clone(), sw.clone(), swu.clone(), sd.clone());
                let task = tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (down_rd, down_wr) = down.into_split();
                    let (up_rd, up_wr) = up.into_split();
                    let _ = tokio::join!(
                        relay(down_rd, up_wr, swu, sd.clone()),
                        relay(up_rd, down_wr, sw, sd)
                    );
                });
                cs.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            swallow,
            swallow_up,
            swallowed,
            refuse,
            conns,
            accept,
        }
    }

    /// Closes every connection through the proxy; returns how many were open.
    fn cut(&self) -> usize {
        let tasks = std::mem::take(&mut *self.conns.lock().unwrap());
        let open = tasks.iter().filter(|t| !t.is_finished()).count();
        for t in tasks {
            t.abort();
        }
        open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The length of the complete MQTT packet at the start of `buf`, if there is one.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + remaining;
            return (buf.len() >= total).then_some(total);
        }
    }
    panic!("malformed remaining length from the remote");
}

/// 300 local messages at `qos` go out over a bridge whose connection the test cuts three
/// times mid-stream, each time after the remote's acknowledgements (PUBCOMP for QoS 2,
/// PUBACK for QoS 1) were swallowed for a while: the remote (Mosquitto, kept running) has
/// delivered those messages, the bridge does not know it. The bridge resumes its session,
/// sending the unacknowledged messages again with DUP and their packet ids (PUBREL for QoS 2
/// ones already PUBREC'd): a QoS 2 subscriber on the remote gets every message exactly once
/// and in order; with QoS 1 every message, in order, repeats allowed (QoS 1 has no
/// de-duplication).
async fn resumes_the_remote_session(protocol: BridgeProtocol, qos: QoS) {
    let mosquitto = Mosquitto::start("");
    let proxy = Proxy::start(mosquitto.addr()).await;
    let broker = sagitta(|c| {
        // 3.1.1 has no Receive Maximum: Mosquitto drops QoS 2 messages past its
        // `max_inflight_messages` (20) with only a log line; the 3.1.1 default `max_inflight`
        // (20) stays within it.
        let b = bridge("rs", &proxy.addr, protocol).topic(
            TopicRule::new("seq/#", Direction::Out)
                .prefixes("", "edge/")
                .qos(2),
        );
        c.bridges.push(b);
    })
    .await;
    wait_status(&broker, "rs", "connected", |s| s.connected).await;
    let sub = client(mosquitto.addr(), ProtocolVersion::V5).await;
    sub.subscribe_recv("edge/seq/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    let publisher = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    const N: usize = 300;
    let publishing = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish_with("seq/n", i.to_string(), qos)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        publisher
    });
    let ack = if qos == QoS::ExactlyOnce { 7 } else { 4 };
    for cut in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.swallow.store(ack, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(proxy.cut(), 1, "one bridge connection through the proxy");
        proxy.swallow.store(0, Ordering::SeqCst);
        wait_status(&broker, "rs", "reconnected", |s| {
            s.connected && s.reconnects >= cut
        })
        .await;
    }
    assert!(
        !publishing.is_finished(),
        "the cuts must happen while publishing"
    );
    let publisher = publishing.await.unwrap();
    assert!(
        proxy.swallowed.load(Ordering::SeqCst) >= 3,
        "acknowledgements were swallowed before the cuts"
    );
    // Everything, then nothing more for a while.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < N && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(m)) = tokio::time::timeout(left, sub.recv()).await else {
            break;
        };
        got.push(m.payload_str().unwrap().parse::<usize>().unwrap());
    }
    got.extend(
        drain(&sub, Duration::from_secs(1))
            .await
            .iter()
            .map(|m| m.payload_str().unwrap().parse::<usize>().unwrap()),
    );
    if qos == QoS::ExactlyOnce {
        let expected: Vec<usize> = (0..N).collect();
        assert!(
            got == expected,
            "exactly once, in order: {} messages, duplicates {:?}, missing {:?}",
            got.len(),
            got.iter()
                .enumerate()
                .filter(|(k, i)| got[..*k].contains(i))
                .map(|(_, i)| *i)
                .collect::<Vec<_>>(),
            expected
                .iter()
                .filter(|i| !got.contains(i))
                .collect::<Vec<_>>()
        );
    } else {
        // In order: each message is the next new one or a repeat.
        let mut seen = 0;
        for &i in &got {
            assert!(
                i <= seen,
                "message {seen} expected, got {i}: lost or out of order"
            );
            if i == seen {
                seen += 1;
            }
        }
        assert_eq!(seen, N, "every message");
    }
    wait_status(&broker, "rs", "every message acknowledged", |s| {
        s.sent == N as u64 && s.inflight == 0 && s.queued == 0
    })
    .await;
    let s = status(&broker, "rs");
    assert_eq!(s.reconnects, 3, "{s:?}");
    assert_eq!(s.dropped, 0, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    publisher.disconnect().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_exactly_once_across_reconnects() {
    resumes_the_remote_session(BridgeProtocol::V5, QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_exactly_once_across_reconnects() {
    resumes_the_remote_session(BridgeProtocol::V311, QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos1_nothing_lost_in_order_across_reconnects() {
    resumes_the_remote_session(BridgeProtocol::V5, QoS::AtLeastOnce).await;
}

/// The remote loses the bridge's session (5.0 session expiry 1 s, the proxy refusing
/// connections for longer) while QoS 2 messages are PUBREC'd but their PUBRELs were
/// swallowed: Mosquitto, which delivers QoS 2 on PUBREL, drops them with the session. The
/// remote answers the reconnect with Session Present 0 and the bridge's client publishes
/// every unacknowledged message again, PUBREC'd ones included: nothing is lost, in order
/// (at least once in this case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_remote_session_loses_nothing() {
    let mosquitto = Mosquitto::start("");
    let proxy = Proxy::start(mosquitto.addr()).await;
    let broker = sagitta(|c| {
        let mut b = bridge("ls", &proxy.addr, BridgeProtocol::V5).topic(
            TopicRule::new("seq/#", Direction::Out)
                .prefixes("", "edge/")
                .qos(2),
        );
        b.session_expiry = 1;
        c.bridges.push(b);
    })
    .await;
    wait_status(&broker, "ls", "connected", |s| s.connected).await;
    let sub = client(mosquitto.addr(), ProtocolVersion::V5).await;
    sub.subscribe_recv("edge/seq/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    let publisher = client(broker.local_addrs()[0].to_string(), ProtocolVersion::V5).await;
    const N: usize = 200;
    let publishing = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish_with("seq/n", i.to_string(), QoS::ExactlyOnce)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        publisher
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.swallow_up.store(6, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.refuse.store(true, Ordering::SeqCst);
    assert_eq!(proxy.cut(), 1, "one bridge connection through the proxy");
    proxy.swallow_up.store(0, Ordering::SeqCst);
    assert!(
        proxy.swallowed.load(Ordering::SeqCst) > 0,
        "PUBRELs were swallowed before the cut"
    );
    wait_status(&broker, "ls", "disconnected", |s| !s.connected).await;
    // Past the session expiry (Mosquitto checks it about every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.refuse.store(false, Ordering::SeqCst);
    wait_status(&broker, "ls", "reconnected", |s| {
        s.connected && s.reconnects >= 1
    })
    .await;
    let publisher = publishing.await.unwrap();
    expect_in_order(&sub, N).await;
    wait_status(&broker, "ls", "every message acknowledged", |s| {
        s.sent == N as u64 && s.inflight == 0 && s.queued == 0
    })
    .await;
    assert_eq!(status(&broker, "ls").dropped, 0);
    assert!(
        mosquitto
            .log()
            .matches("Sending CONNACK to sagitta-bridge-ls (0, 0)")
            .count()
            >= 2,
        "the remote had lost the session: {}",
        mosquitto.log()
    );
    publisher.disconnect().await.unwrap();
    broker.shutdown().await;
}
