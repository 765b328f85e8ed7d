//! What the web dashboard needs of the HTTP listener, without a browser: its embedded files
//! (no token, strict Content-Security-Policy), the overview and the configuration (token
//! masked), the clients list's sort and search, and the live WebSocket (token as the first
//! message, same-origin only, the topic explorer sees only what it asked for, and a reader
//! that never reads cannot slow the broker: it drops and counts).
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use sagitta_broker::{Broker, Config, HttpConfig};
use sagitta_proto::{Packet, ProtocolVersion, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TOKEN: &str = "dash-token";

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn dashboard_broker() -> (Broker, SocketAddr) {
    let mut http = HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    http.token = Some(TOKEN.into());
    let mut config = Config::default().in_memory().http(http);
    config.sys_interval = 0;
    let b = broker_with(config).await;
    let h = b.http_addr().unwrap();
    (b, h)
}

#[tokio::test]
async fn the_page_is_served_without_the_token_and_with_a_strict_policy() {
    let (b, http) = dashboard_broker().await;
    for (path, ty) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/chart.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = get(http, path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ty), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert_eq!(r.header("x-content-type-options").unwrap(), "nosniff");
        assert!(r.header("etag").is_some());
    }
    let page = get(http, "/", None).await;
    // No external resources: every src and href is local.
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    assert!(!page.body.contains("<style") && !page.body.contains("style="));
    assert_eq!(get(http, "/assets/nothing.js", None).await.status, 404);
    // The data is not: 401 without the token.
    for path in ["/api/v1/overview", "/api/v1/config", "/api/v1/clients"] {
        assert_eq!(get(http, path, None).await.status, 401, "{path}");
    }
    b.shutdown().await;
}

#[tokio::test]
async fn the_overview_has_totals_and_a_history_of_samples() {
    let (b, http) = dashboard_broker().await;
    let mut c = Peer::connect(addr(&b), ProtocolVersion::V5, "counted").await;
    c.subscribe("t", QoS::AtMostOnce).await;
    c.send(Packet::Publish(publish("t", "x", QoS::AtMostOnce, true, 0)))
        .await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let o = get(http, "/api/v1/overview", Some(TOKEN)).await.json();
    assert_eq!(o["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(o["connections"], 1);
    assert_eq!(o["sessions"], 1);
    assert_eq!(o["subscriptions"], 1);
    assert_eq!(o["retained"], 1);
    assert_eq!(o["messages_received"], 1);
    let history = o["history"].as_array().unwrap();
    assert!(history.len() >= 2, "{o}");
    let last = history.last().unwrap();
    assert_eq!(last["connections"], 1);
    let received: u64 = history.iter().map(|s| s["msgs_in"].as_u64().unwrap()).sum();
    assert_eq!(received, 1, "{o}");
    b.shutdown().await;
}

#[tokio::test]
async fn the_configuration_masks_the_token_and_lists_bound_listeners() {
    let (b, http) = dashboard_broker().await;
    let r = get(http, "/api/v1/config", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(TOKEN), "{}", r.body);
    let c = r.json();
    assert_eq!(c["http"]["token"], "********");
    assert_eq!(c["max_packet_size"], Config::default().max_packet_size);
    let bound = c["bound"].as_array().unwrap();
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0]["local_addr"], addr(&b).to_string());
    assert_eq!(bound[0]["kind"], "Tcp");
    b.shutdown().await;
}

#[tokio::test]
async fn clients_sort_and_search_by_address() {
    let (b, http) = dashboard_broker().await;
    let mut peers = Vec::new();
    for id in ["c-a", "c-b", "c-c"] {
        peers.push(Peer::connect(addr(&b), ProtocolVersion::V5, id).await);
    }
    // c-b subscribes and has messages queued... none needed: sort by id, descending.
    let r = get(
        http,
        "/api/v1/clients?sort=client_id&desc=true",
        Some(TOKEN),
    )
    .await
    .json();
    let ids: Vec<&str> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-c", "c-b", "c-a"]);
    let one = get(http, "/api/v1/clients?search=c-b", Some(TOKEN))
        .await
        .json();
    let peer = one["clients"][0]["peer"].as_str().unwrap().to_owned();
    let port = peer.rsplit(':').next().unwrap();
    let by_addr = get(
        http,
        &format!("/api/v1/clients?search=%3A{port}"),
        Some(TOKEN),
    )
    .await
    .json();
    assert_eq!(by_addr["total"], 1, "{by_addr}");
    assert_eq!(by_addr["clients"][0]["client_id"], "c-b");
    for sort in ["peer", "username", "connected", "inflight", "queued"] {
        let r = get(http, &format!("/api/v1/clients?sort={sort}"), Some(TOKEN)).await;
        assert_eq!(r.status, 200, "{sort}");
        assert_eq!(r.json()["total"], 3);
    }
    let bad = get(http, "/api/v1/clients?sort=mood", Some(TOKEN)).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("sort"));
    drop(peers);
    b.shutdown().await;
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn live(http: SocketAddr, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{http}/api/v1/live")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let stream = TcpStream::connect(http).await.unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("no error");
        match m {
            WsMessage::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            WsMessage::Close(f) => return json!({"type": "closed", "frame": format!("{f:?}")}),
            _ => {}
        }
    }
}

/// The next message of type `ty`, skipping the others (samples arrive every second).
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::text(v.to_string())).await.unwrap();
}

#[tokio::test]
async fn the_live_socket_wants_the_token_first_and_the_same_origin() {
    let (b, http) = dashboard_broker().await;
    let mut ws = live(http, None).await.unwrap();
    send(&mut ws, json!({"token": "wrong"})).await;
    assert_eq!(next_json(&mut ws).await["error"], "unauthorized");
    let closed = next_json(&mut ws).await;
    assert_eq!(closed["type"], "closed");
    assert!(
        closed["frame"].as_str().unwrap().contains("4001"),
        "{closed}"
    );
    // Another site's page may not open it.
    assert_eq!(
        live(http, Some("http://evil.example")).await.unwrap_err(),
        403
    );
    let same = format!("http://{http}");
    let mut ws = live(http, Some(&same)).await.unwrap();
    send(&mut ws, json!({"token": TOKEN})).await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert!(hello["history"].is_array());
    let sample = next_of(&mut ws, "sample").await;
    assert!(sample["sample"]["t"].as_u64().unwrap() > 0);
    // A plain GET is not an upgrade.
    let r = get(http, "/api/v1/live", Some(TOKEN)).await;
    assert_eq!(r.status, 400);
    b.shutdown().await;
}

#[tokio::test]
async fn the_explorer_sees_what_it_asked_for_with_properties() {
    let (b, http) = dashboard_broker().await;
    let mut ws = live(http, None).await.unwrap();
    send(&mut ws, json!({"token": TOKEN})).await;
    next_of(&mut ws, "hello").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "filter": "$share/g/a"}),
    )
    .await;
    assert!(
        next_of(&mut ws, "error").await["error"]
            .as_str()
            .unwrap()
            .contains("shared")
    );
    send(&mut ws, json!({"type": "subscribe", "filter": "a/#"})).await;
    assert_eq!(next_of(&mut ws, "subscribed").await["filter"], "a/#");
    let mut p = Peer::connect(addr(&b), ProtocolVersion::V5, "pub").await;
    p.send(Packet::Publish(publish(
        "x/y",
        "not this",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    let mut m = publish("a/b", "21.5", QoS::AtLeastOnce, true, 1);
    m.properties.content_type = Some(mstr("text/plain"));
    m.properties.user_properties.push((mstr("k"), mstr("v")));
    p.send(Packet::Publish(m)).await;
    let batch = next_of(&mut ws, "messages").await;
    let msgs = batch["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{batch}");
    let m = &msgs[0];
    assert_eq!(m["topic"], "a/b");
    assert_eq!(m["payload"], "21.5");
    assert_eq!(m["qos"], 1);
    assert_eq!(m["retain"], true);
    assert_eq!(m["properties"]["content_type"], "text/plain");
    assert_eq!(m["properties"]["user_properties"], json!([["k", "v"]]));
    assert!(m["t"].as_u64().unwrap() > 0);
    send(&mut ws, json!({"type": "unsubscribe"})).await;
    next_of(&mut ws, "unsubscribed").await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_browser_that_does_not_read_cannot_slow_the_broker() {
    let (b, http) = dashboard_broker().await;
    let mut ws = live(http, None).await.unwrap();
    send(&mut ws, json!({"token": TOKEN})).await;
    next_of(&mut ws, "hello").await;
    send(&mut ws, json!({"type": "subscribe", "filter": "#"})).await;
    next_of(&mut ws, "subscribed").await;
    // 200k messages while the socket is not read: routing them stays quick.
    let t = topic("load/x");
    let started = Instant::now();
    for _ in 0..200_000 {
        b.publish(t.clone(), "0123456789", QoS::AtMostOnce, false);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "publishing took {took:?}");
    // What arrives is bounded per flush; the rest was sampled out or dropped, and counted.
    let mut shown = 0;
    let mut skipped = 0;
    while shown + skipped < 200_000 {
        let batch = next_of(&mut ws, "messages").await;
        let n = batch["messages"].as_array().unwrap().len() as u64;
        assert!(n <= 100, "{n} messages in one batch");
        shown += n;
        skipped += batch["sampled_out"].as_u64().unwrap() + batch["dropped"].as_u64().unwrap();
    }
    assert_eq!(shown + skipped, 200_000);
    assert!(shown < 10_000, "{shown} shown");
    b.shutdown().await;
}
