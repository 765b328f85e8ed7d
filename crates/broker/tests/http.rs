//! The operators' HTTP listener (`[http]`): Prometheus metrics after a known load, health
//! and readiness, every admin endpoint, the bearer token, and the rule that a non-loopback
//! bind needs a token. The HTTP client is a few lines over a TCP stream.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod common_tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use common::*;
use sagitta_broker::{Broker, BrokerError, Config, HttpConfig};
use sagitta_proto::{
    Connect, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscribeProperties, SubscriptionOptions, UserProperty,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ProtocolVersion::{V3_1_1, V5};

// --- a tiny HTTP/1.1 client --------------------------------------------------------------

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, None, None).await
}

/// `GET path`, which must answer 200 with JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// The samples of a Prometheus text exposition, by series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    samples(&r.body)
}

// --- brokers --------------------------------------------------------------------------

fn http_config() -> Config {
    let mut config = Config::default().http(HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))));
    // No $SYS messages: they would be retained messages of their own.
    config.sys_interval = 0;
    config
}

async fn http_broker() -> (Broker, SocketAddr) {
    let b = broker_with(http_config()).await;
    let http = b.http_addr().expect("an HTTP listener");
    (b, http)
}

fn wire_len(packet: &Packet, version: ProtocolVersion) -> u64 {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).unwrap();
    buf.len() as u64
}

fn payload(n: usize, fill: u8) -> String {
    String::from_utf8(vec![fill; n]).unwrap()
}

// --- metrics --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_load_exactly() {
    let (b, http) = http_broker().await;
    // What the broker reads from and writes to its two clients, packet by packet.
    let (mut rx_bytes, mut tx_bytes) = (0u64, 0u64);

    let connect = connect_packet(V5, "sub");
    rx_bytes += wire_len(&Packet::Connect(Box::new(connect.clone())), V5);
    let (mut sub, ack) = Peer::connect_with(addr(&b), connect).await;
    tx_bytes += wire_len(&Packet::ConnAck(ack), V5);
    let subscribe = Subscribe {
        packet_id: pid(1),
        filters: vec![(filter("load/#"), SubscriptionOptions::new(QoS::AtLeastOnce))],
        properties: Default::default(),
    };
    rx_bytes += wire_len(&Packet::Subscribe(subscribe.clone()), V5);
    sub.send(Packet::Subscribe(subscribe)).await;
    let suback = sub.recv().await;
    tx_bytes += wire_len(&suback, V5);

    let connect = connect_packet(V3_1_1, "pub");
    rx_bytes += wire_len(&Packet::Connect(Box::new(connect.clone())), V3_1_1);
    let (mut publisher, ack) = Peer::connect_with(addr(&b), connect).await;
    tx_bytes += wire_len(&Packet::ConnAck(ack), V3_1_1);

    // 10 QoS 1 messages of 100 bytes and 5 QoS 0 messages of 7 bytes.
    for i in 1..=10u16 {
        let p = publish("load/q1", &payload(100, b'a'), QoS::AtLeastOnce, false, i);
        rx_bytes += wire_len(&Packet::Publish(p.clone()), V3_1_1);
        publisher.send(Packet::Publish(p)).await;
        let puback = publisher.recv().await;
        assert!(matches!(puback, Packet::PubAck(_)));
        tx_bytes += wire_len(&puback, V3_1_1);
    }
    for _ in 0..5 {
        let p = publish("load/q0", &payload(7, b'b'), QoS::AtMostOnce, false, 0);
        rx_bytes += wire_len(&Packet::Publish(p.clone()), V3_1_1);
        publisher.send(Packet::Publish(p)).await;
    }
    for _ in 0..15 {
        let p = sub.recv_publish().await;
        tx_bytes += wire_len(&Packet::Publish(p.clone()), V5);
        if let Some(id) = p.packet_id {
            let ack = Packet::PubAck(PubResponse::new(id));
            rx_bytes += wire_len(&ack, V5);
            sub.send(ack).await;
        }
    }
    for (peer, v) in [(&mut sub, V5), (&mut publisher, V3_1_1)] {
        peer.ping().await;
        rx_bytes += wire_len(&Packet::PingReq, v);
        tx_bytes += wire_len(&Packet::PingResp, v);
    }

    // Refused connections: a first packet that is not CONNECT, and an empty client id with
    // a persistent 3.1.1 session.
    let mut bad = Peer::open(addr(&b), V3_1_1).await;
    bad.send(Packet::PingReq).await;
    assert!(bad.expect_closed().await.is_empty());
    let mut c = connect_packet(V3_1_1, "");
    c.clean_start = false;
    let (_, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);

    let m = scrape(http).await;
    let expect = [
        ("sagitta_messages_received_total{qos=\"0\"}", 5.0),
        ("sagitta_messages_received_total{qos=\"1\"}", 10.0),
        ("sagitta_messages_received_total{qos=\"2\"}", 0.0),
        ("sagitta_messages_sent_total{qos=\"0\"}", 5.0),
        ("sagitta_messages_sent_total{qos=\"1\"}", 10.0),
        ("sagitta_payload_bytes_received_total{qos=\"0\"}", 35.0),
        ("sagitta_payload_bytes_received_total{qos=\"1\"}", 1000.0),
        ("sagitta_payload_bytes_sent_total{qos=\"0\"}", 35.0),
        ("sagitta_payload_bytes_sent_total{qos=\"1\"}", 1000.0),
        ("sagitta_network_bytes_received_total", rx_bytes as f64),
        ("sagitta_network_bytes_sent_total", tx_bytes as f64),
        ("sagitta_connections", 2.0),
        ("sagitta_connections_total", 2.0),
        (
            "sagitta_connections_refused_total{reason=\"protocol\"}",
            1.0,
        ),
        (
            "sagitta_connections_refused_total{reason=\"client_id\"}",
            1.0,
        ),
        (
            "sagitta_connections_refused_total{reason=\"bad_credentials\"}",
            0.0,
        ),
        ("sagitta_messages_dropped_total{reason=\"queue_full\"}", 0.0),
        ("sagitta_sessions{state=\"connected\"}", 2.0),
        ("sagitta_sessions{state=\"disconnected\"}", 0.0),
        ("sagitta_subscriptions", 1.0),
        ("sagitta_retained_messages", 0.0),
        ("sagitta_queued_messages", 0.0),
        ("sagitta_inflight_messages", 0.0),
        ("sagitta_session_queue_depth_bucket{le=\"0\"}", 2.0),
    ];
    for (series, value) in expect {
        assert_eq!(m.get(series), Some(&value), "{series}");
    }
    // In memory: no store metrics.
    assert!(!m.keys().any(|k| k.starts_with("sagitta_store_")));

    // The latency of one message in 64 per thread is measured: 200 more messages give at
    // least two samples over two threads.
    for _ in 0..200 {
        publisher
            .send(Packet::Publish(publish(
                "load/x",
                "x",
                QoS::AtMostOnce,
                false,
                0,
            )))
            .await;
    }
    for _ in 0..200 {
        sub.recv_publish().await;
    }
    sub.ping().await;
    let m = scrape(http).await;
    let count = m["sagitta_publish_to_deliver_seconds_count"];
    assert!(count >= 1.0, "{count} latency samples");
    assert_eq!(
        m["sagitta_publish_to_deliver_seconds_bucket{le=\"+Inf\"}"],
        count
    );
    assert!(m["sagitta_publish_to_deliver_seconds_sum"] < count * 5.0);
    b.shutdown().await;
}

// --- health and readiness -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_shutdown() {
    let (b, http) = http_broker().await;
    let r = get(http, "/health").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = get(http, "/ready").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ready");
    let r = request(http, "POST", "/health", None, Some("{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    assert!(r.json()["error"].as_str().unwrap().contains("POST"));
    let r = get(http, "/nowhere").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());

    // Shutting down: MQTT stops, the HTTP listener says so until the broker has stopped.
    b.handle().shutdown();
    let r = get(http, "/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "shutting down");
    assert_eq!(get(http, "/health").await.status, 200);
    b.wait().await;
    assert!(TcpStream::connect(http).await.is_err(), "HTTP still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_http_connections_leaves_mqtt_alone() {
    let (b, http) = http_broker().await;
    // More connections than the HTTP server serves at once, none sending anything.
    let mut idle = Vec::new();
    for _ in 0..48 {
        idle.push(TcpStream::connect(http).await.unwrap());
    }
    let mut s = Peer::connect(addr(&b), V5, "s").await;
    s.subscribe("t", QoS::AtLeastOnce).await;
    let mut p = Peer::connect(addr(&b), V3_1_1, "p").await;
    p.publish("t", "still here", QoS::AtLeastOnce, false).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"still here");
    drop(idle);
    assert_eq!(get(http, "/health").await.status, 200);
    b.shutdown().await;
}

// --- clients --------------------------------------------------------------------------

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_list_search_paginate_and_detail() {
    let (b, http) = http_broker().await;
    let mut alpha1 = Peer::connect(addr(&b), V5, "alpha-1").await;
    let mut c = connect_packet(V3_1_1, "alpha-2");
    c.username = Some(mstr("ann"));
    c.keep_alive = 30;
    let (mut alpha2, _) = Peer::connect_with(addr(&b), c).await;
    let _slash = Peer::connect(addr(&b), V5, "dev/1 x").await;
    // A persistent session whose client has gone, with messages waiting.
    let (mut gamma, _) = Peer::connect_with(addr(&b), persistent(V5, "gamma")).await;
    gamma.subscribe("q/#", QoS::AtLeastOnce).await;
    gamma.disconnect().await;
    // alpha-2 takes QoS 1 messages and does not acknowledge them.
    alpha2.subscribe("q/#", QoS::AtLeastOnce).await;
    let options = SubscriptionOptions {
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::new(QoS::ExactlyOnce)
    };
    alpha1
        .send(Packet::Subscribe(Subscribe {
            packet_id: pid(3),
            filters: vec![
                (filter("a/+/c"), options),
                (
                    filter("$share/g/b"),
                    SubscriptionOptions::new(QoS::AtMostOnce),
                ),
            ],
            properties: SubscribeProperties {
                subscription_identifier: sagitta_proto::SubscriptionId::new(7),
                ..Default::default()
            },
        }))
        .await;
    assert!(matches!(alpha1.recv().await, Packet::SubAck(_)));
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    for _ in 0..3 {
        p.publish("q/x", "m", QoS::AtLeastOnce, false).await;
    }
    for _ in 0..3 {
        alpha2.recv_publish().await;
    }
    alpha2.ping().await;
    alpha1.ping().await;

    let all = get_json(http, "/api/v1/clients").await;
    assert_eq!(all["total"], 5);
    let ids: Vec<&str> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha-1", "alpha-2", "dev/1 x", "gamma", "pub"]);
    let by_id = |id: &str| {
        all["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .unwrap()
            .clone()
    };
    let a2 = by_id("alpha-2");
    assert_eq!(a2["connected"], true);
    assert_eq!(a2["protocol"], "3.1.1");
    assert_eq!(a2["keep_alive"], 30);
    assert_eq!(a2["username"], "ann");
    assert_eq!(a2["inflight"], 3);
    assert_eq!(a2["queued"], 0);
    assert_eq!(a2["session_expiry"], 0);
    assert!(a2["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let g = by_id("gamma");
    assert_eq!(g["connected"], false);
    assert_eq!(g["protocol"], "5.0");
    assert_eq!(g["queued"], 3);
    assert_eq!(g["session_expiry"], 300);
    assert_eq!(g["username"], Value::Null);

    let found = get_json(http, "/api/v1/clients?search=alpha").await;
    assert_eq!(found["total"], 2);
    let page = get_json(http, "/api/v1/clients?search=a&limit=2&offset=1").await;
    assert_eq!(page["total"], 3);
    let ids: Vec<&str> = page["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha-2", "gamma"]);
    assert_eq!(get(http, "/api/v1/clients?limit=x").await.status, 400);

    let one = get_json(http, "/api/v1/clients/alpha-1").await;
    assert_eq!(one["protocol"], "5.0");
    assert_eq!(one["keep_alive"], 60);
    assert_eq!(
        one["subscriptions"],
        json!([
            {"filter": "$share/g/b", "qos": 0, "no_local": false, "retain_as_published": false,
             "retain_handling": 0, "subscription_id": 7},
            {"filter": "a/+/c", "qos": 2, "no_local": true, "retain_as_published": true,
             "retain_handling": 2, "subscription_id": 7},
        ])
    );
    let slash = get_json(http, "/api/v1/clients/dev%2F1%20x").await;
    assert_eq!(slash["client_id"], "dev/1 x");
    assert_eq!(slash["subscriptions"], json!([]));
    let r = get(http, "/api/v1/clients/nobody").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nobody"));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_clients_and_ending_sessions() {
    let (b, http) = http_broker().await;
    let (mut v5, _) = Peer::connect_with(addr(&b), persistent(V5, "five")).await;
    let r = request(http, "DELETE", "/api/v1/clients/five", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"client_id": "five", "disconnected": true, "session_removed": false})
    );
    match v5.expect_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    // The session stays (the client may come back) until it is ended too. (The socket closes
    // just before the connection task marks the session disconnected: poll briefly.)
    let mut left = get_json(http, "/api/v1/clients/five").await;
    for _ in 0..100 {
        if left["connected"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left = get_json(http, "/api/v1/clients/five").await;
    }
    assert_eq!(left["connected"], false);
    let r = request(
        http,
        "DELETE",
        "/api/v1/clients/five?session=true",
        None,
        None,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"client_id": "five", "disconnected": false, "session_removed": true})
    );
    assert_eq!(get(http, "/api/v1/clients/five").await.status, 404);

    // A connected 3.1.1 client with its session: closed (3.1.1 has no server DISCONNECT),
    // and a reconnect finds no session.
    let (mut old, _) = Peer::connect_with(addr(&b), persistent(V3_1_1, "old")).await;
    old.subscribe("t", QoS::AtLeastOnce).await;
    let r = request(http, "DELETE", "/api/v1/clients/old?session=1", None, None).await;
    assert_eq!(r.json()["session_removed"], true);
    assert!(old.expect_closed().await.is_empty());
    let (_, ack) = Peer::connect_with(addr(&b), persistent(V3_1_1, "old")).await;
    assert!(!ack.session_present);

    let r = request(http, "DELETE", "/api/v1/clients/nobody", None, None).await;
    assert_eq!(r.status, 404);
    let r = request(
        http,
        "DELETE",
        "/api/v1/clients/old?session=maybe",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(http, "PUT", "/api/v1/clients/old", None, Some("{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, DELETE");
    b.shutdown().await;
}

// --- subscriptions --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_by_filter() {
    let (b, http) = http_broker().await;
    let mut a = Peer::connect(addr(&b), V5, "a").await;
    a.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    a.subscribe("alerts/#", QoS::AtMostOnce).await;
    let mut c = Peer::connect(addr(&b), V3_1_1, "c").await;
    c.subscribe("sensors/+/temp", QoS::ExactlyOnce).await;
    c.subscribe("$share/workers/jobs", QoS::AtLeastOnce).await;

    let all = get_json(http, "/api/v1/subscriptions").await;
    assert_eq!(all["total"], 4);
    let exact = get_json(http, "/api/v1/subscriptions?filter=sensors%2F%2B%2Ftemp").await;
    assert_eq!(
        exact["subscriptions"],
        json!([
            {"client_id": "a", "filter": "sensors/+/temp", "qos": 1},
            {"client_id": "c", "filter": "sensors/+/temp", "qos": 2},
        ])
    );
    let part = get_json(http, "/api/v1/subscriptions?filter=jobs").await;
    assert_eq!(
        part["subscriptions"],
        json!([{"client_id": "c", "filter": "$share/workers/jobs", "qos": 1}])
    );
    let page = get_json(http, "/api/v1/subscriptions?limit=1&offset=3").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["subscriptions"].as_array().unwrap().len(), 1);
    let none = get_json(http, "/api/v1/subscriptions?filter=nothing").await;
    assert_eq!(none["total"], 0);
    b.shutdown().await;
}

// --- retained messages ----------------------------------------------------------------

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagitta-http-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    TempDir(dir)
}

async fn persistent_http_broker(dir: &Path) -> (Broker, SocketAddr) {
    let b = broker_with(http_config().data_dir(dir)).await;
    let http = b.http_addr().unwrap();
    (b, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_read_and_delete_across_a_restart() {
    let dir = temp_dir("retained");
    let (b, http) = persistent_http_broker(&dir.0).await;
    let mut p = Peer::connect(addr(&b), V5, "pub").await;
    p.publish("r/a", "21.5", QoS::AtLeastOnce, true).await;
    let mut binary = Publish::new(topic("r/b"), Bytes::from_static(&[0xff, 0x00]));
    binary.retain = true;
    binary.properties.content_type = Some(mstr("application/octet-stream"));
    let prop: UserProperty = (mstr("k"), mstr("v"));
    binary.properties.user_properties.push(prop);
    p.send(Packet::Publish(binary)).await;
    p.publish("other", "x", QoS::AtMostOnce, true).await;
    p.ping().await;

    let list = get_json(http, "/api/v1/retained?topic=r%2F%23").await;
    assert_eq!(
        list,
        json!({"total": 2, "limit": 100, "retained": [
            {"topic": "r/a", "payload": "21.5", "encoding": "text", "qos": 1},
            {"topic": "r/b", "payload": "/wA=", "encoding": "base64", "qos": 0,
             "properties": {"content_type": "application/octet-stream",
                            "user_properties": [["k", "v"]]}},
        ]})
    );
    assert_eq!(get_json(http, "/api/v1/retained").await["total"], 3);
    let one = get_json(http, "/api/v1/retained?limit=1").await;
    assert_eq!(
        (
            one["total"].as_u64(),
            one["retained"].as_array().unwrap().len()
        ),
        (Some(3), 1)
    );
    assert_eq!(
        get(http, "/api/v1/retained?topic=a%2F%23%2Fb").await.status,
        400
    );

    let del = |path: &'static str| request(http, "DELETE", path, None, None);
    let r = del("/api/v1/retained?topic=r%2Fa").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"topic": "r/a", "deleted": true}));
    assert_eq!(del("/api/v1/retained?topic=r%2Fa").await.status, 404);
    assert_eq!(del("/api/v1/retained?topic=r%2F%2B").await.status, 400);
    assert_eq!(del("/api/v1/retained").await.status, 400);

    // A new subscriber no longer gets it.
    let mut s = Peer::connect(addr(&b), V5, "s").await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    assert_eq!(s.recv_publish().await.topic.as_str(), "r/b");
    s.expect_silence().await;

    // The store synced meanwhile (every 100 ms with sync = periodic).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let m = scrape(http).await;
    assert!(m["sagitta_store_sync_seconds_count"] >= 1.0);
    assert_eq!(m["sagitta_store_failed"], 0.0);
    b.shutdown().await;

    // Deleted from the store too.
    let (b, http) = persistent_http_broker(&dir.0).await;
    let topics: Vec<String> = get_json(http, "/api/v1/retained").await["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(topics, ["other", "r/b"]);
    b.shutdown().await;
}

// --- publish --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_the_api_reaches_subscribers_and_the_retained_store() {
    let (b, http) = http_broker().await;
    let mut s = Peer::connect(addr(&b), V5, "s").await;
    s.subscribe("ops/#", QoS::AtLeastOnce).await;
    let body = json!({
        "topic": "ops/x", "payload": "hello", "qos": 1, "retain": true,
        "properties": {"content_type": "text/plain", "user_properties": [["k", "v"]],
                       "correlation_data": "AQI="},
    });
    let r = request(
        http,
        "POST",
        "/api/v1/publish",
        None,
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"topic": "ops/x", "queued_for": 1}));
    let p = s.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("ops/x", &b"hello"[..], QoS::AtLeastOnce)
    );
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.correlation_data.as_deref(),
        Some(&[1u8, 2][..])
    );
    assert_eq!(p.properties.user_properties.len(), 1);
    s.ack(&p).await;
    let retained = get_json(http, "/api/v1/retained?topic=ops%2Fx").await;
    assert_eq!(retained["retained"][0]["payload"], "hello");

    let body = json!({"topic": "ops/bin", "payload": "/wA=", "encoding": "base64"});
    let r = request(
        http,
        "POST",
        "/api/v1/publish",
        None,
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = s.recv_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&[0xffu8, 0][..], QoS::AtMostOnce));

    for bad in [
        "not json",
        r#"{"payload": "no topic"}"#,
        r#"{"topic": "a/+", "payload": "x"}"#,
        r#"{"topic": "a", "qos": 3}"#,
        r#"{"topic": "a", "payload": "%%", "encoding": "base64"}"#,
        r#"{"topic": "a", "encoding": "hex"}"#,
        r#"{"topic": "$SYS/x"}"#,
        r#"{"topic": "a", "extra": 1}"#,
    ] {
        let r = request(http, "POST", "/api/v1/publish", None, Some(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].is_string());
    }
    s.expect_silence().await;
    let r = get(http, "/api/v1/publish").await;
    assert_eq!(r.status, 405);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_always_a_publish_is_answered_once_on_disk() {
    let dir = temp_dir("always");
    let mut config = http_config().data_dir(&dir.0);
    config.sync = sagitta_broker::SyncMode::Always;
    let b = broker_with(config).await;
    let http = b.http_addr().unwrap();
    let m = scrape(http).await;
    let syncs = m["sagitta_store_sync_seconds_count"];
    let body = json!({"topic": "kept", "payload": "1", "qos": 1, "retain": true}).to_string();
    let r = request(http, "POST", "/api/v1/publish", None, Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Answered after the sync that made it durable.
    let m = scrape(http).await;
    assert!(m["sagitta_store_sync_seconds_count"] > syncs);
    let r = request(http, "DELETE", "/api/v1/retained?topic=kept", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m2 = scrape(http).await;
    assert!(m2["sagitta_store_sync_seconds_count"] > m["sagitta_store_sync_seconds_count"]);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded() {
    let mut config = http_config();
    config.max_packet_size = 1024;
    let b = broker_with(config).await;
    let http = b.http_addr().unwrap();
    // Within the limit but over max_packet_size: refused by the broker's own rule.
    let body = json!({"topic": "t", "payload": payload(2000, b'x')}).to_string();
    let r = request(http, "POST", "/api/v1/publish", None, Some(&body)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Over the body limit (2 x max_packet_size + 64 KiB).
    let body = json!({"topic": "t", "payload": payload(100_000, b'x')}).to_string();
    let r = request(http, "POST", "/api/v1/publish", None, Some(&body)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    b.shutdown().await;
}

// --- the token --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_health_and_ready() {
    let mut config = http_config();
    config.http = Some(HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))).token("s3cret"));
    let b = broker_with(config).await;
    let http = b.http_addr().unwrap();
    assert_eq!(get(http, "/health").await.status, 200);
    assert_eq!(get(http, "/ready").await.status, 200);
    for path in ["/metrics", "/api/v1/clients", "/api/v1/retained"] {
        let r = get(http, path).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.headers["www-authenticate"].starts_with("Bearer"));
        assert_eq!(
            request(http, "GET", path, Some("wrong"), None).await.status,
            401
        );
        assert_eq!(
            request(http, "GET", path, Some("s3cre"), None).await.status,
            401
        );
        assert_eq!(
            request(http, "GET", path, Some("s3cret"), None)
                .await
                .status,
            200
        );
    }
    let body = r#"{"topic": "t"}"#;
    let r = request(http, "POST", "/api/v1/publish", None, Some(body)).await;
    assert_eq!(r.status, 401);
    let r = request(http, "POST", "/api/v1/publish", Some("s3cret"), Some(body)).await;
    assert_eq!(r.status, 200);
    b.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_bind_needs_a_token() {
    let mut config = http_config().in_memory();
    config.http = Some(HttpConfig::new(SocketAddr::from(([0, 0, 0, 0], 0))));
    match Broker::start(config.clone()).await {
        Err(BrokerError::Config(e)) => {
            let e = e.to_string();
            assert!(e.contains("http.token") && e.contains("loopback"), "{e}");
        }
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("started without a token on 0.0.0.0"),
    }
    assert!(Broker::check_config(&config).is_err());
    config.http = config.http.map(|h| h.token("t0ken"));
    config.validate().unwrap();
}

/// `GET path` over TLS (trusting `ca`), `Connection: close`: the status line and the body.
async fn https_get(
    addr: SocketAddr,
    ca: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(String, String)> {
    let mut tls = common_tls::tls_connect(addr, ca).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // The server closes after the response (a missing close_notify is no matter here).
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

#[tokio::test]
async fn https_with_cert_and_key() {
    let pki = common_tls::Pki::new("http-tls");
    let http = HttpConfig::new(any_port())
        .token("s3cret")
        .tls(pki.path("server.pem"), pki.path("server.key"));
    let broker = Broker::start(
        Config::default()
            .in_memory()
            .listen([any_port()])
            .http(http),
    )
    .await
    .unwrap();
    let addr = broker.http_addr().unwrap();
    let trusted = pki.client_config("ca.pem", None);
    let (status, _) = https_get(addr, trusted.clone(), "/health", None)
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (status, body) = https_get(addr, trusted.clone(), "/api/v1/clients", Some("s3cret"))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("\"clients\""), "{body}");
    let (status, _) = https_get(addr, trusted, "/api/v1/clients", None)
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    // The dashboard's page over HTTPS.
    let (status, body) = https_get(addr, pki.client_config("ca.pem", None), "/", None)
        .await
        .unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200") && body.contains("<html"),
        "{status}"
    );
    // A client trusting another CA fails the handshake; plain HTTP gets no HTTP answer.
    assert!(
        https_get(
            addr,
            pki.client_config("other-ca.pem", None),
            "/health",
            None
        )
        .await
        .is_err()
    );
    let plain = request_raw(
        addr,
        "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!plain.starts_with("HTTP/1.1"), "{plain:?}");
    broker.shutdown().await;
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Sends `raw` over plain TCP and returns what comes back until the server closes.
async fn request_raw(addr: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn https_needs_both_cert_and_key() {
    let e = Config::from_toml("[http]\ncert = \"c.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("http.cert") && e.contains("key"), "{e}");
    let mut config = Config::default().in_memory();
    config.http = Some(HttpConfig::new(any_port()).tls("/nonexistent.pem", "/nonexistent.key"));
    let e = Broker::check_config(&config).unwrap_err().to_string();
    assert!(e.contains("/nonexistent.pem"), "{e}");
}

#[tokio::test]
async fn https_certificate_is_reloaded_with_the_tls_listeners() {
    let pki = common_tls::Pki::new("http-tls-reload");
    let (cert, key) = (pki.path("http.pem"), pki.path("http.key"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let http = HttpConfig::new(any_port()).tls(&cert, &key);
    let broker = Broker::start(
        Config::default()
            .in_memory()
            .listen([any_port()])
            .http(http),
    )
    .await
    .unwrap();
    let addr = broker.http_addr().unwrap();
    let old_ca = pki.client_config("ca.pem", None);
    let new_ca = pki.client_config("other-ca.pem", None);
    assert!(
        https_get(addr, old_ca.clone(), "/health", None)
            .await
            .is_ok()
    );
    assert!(
        https_get(addr, new_ca.clone(), "/health", None)
            .await
            .is_err()
    );
    // A certificate from another CA, as a renewal would bring; SIGHUP calls reload_tls.
    std::fs::copy(pki.path("server2.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server2.key"), &key).unwrap();
    assert_eq!(
        broker.handle().reload_tls().unwrap(),
        1,
        "the HTTPS listener is reloaded"
    );
    let (status, _) = https_get(addr, new_ca, "/health", None).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(https_get(addr, old_ca, "/health", None).await.is_err());
    broker.shutdown().await;
}
