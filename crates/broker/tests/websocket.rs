//! MQTT over WebSocket (`type = "ws"` and `"wss"` listeners), with a raw tokio-tungstenite
//! client that sends exact frames: messages between WebSocket and TCP clients in both
//! directions, packets split over frames and several packets in one frame [MQTT-6.0.0-2],
//! text frames [MQTT-6.0.0-1], pings and close frames, the upgrade's path and subprotocol
//! [MQTT-6.0.0-3, MQTT-6.0.0-4], TLS with a test PKI, password files, and the connect
//! timeout and connection limit around the upgrade.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod common_tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Peer, WAIT, connect_packet, mstr, publish};
use common_tls::{Pki, tls_connect};
use futures_util::{SinkExt as _, StreamExt as _};
use sagitta_broker::{Broker, Config, ListenerConfig, ListenerKind, PasswordHash};
use sagitta_proto::{
    ConnAck, Connect, Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, decode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A broker with a TCP listener (first address) and `listeners` after it.
async fn start(listeners: Vec<ListenerConfig>) -> Broker {
    start_with(Config::default(), listeners).await
}

async fn start_with(mut config: Config, listeners: Vec<ListenerConfig>) -> Broker {
    config.listen = vec![any()];
    config.persistence = false;
    config.listeners = listeners;
    Broker::start(config).await.expect("broker starts")
}

fn addr_of(broker: &Broker, kind: ListenerKind) -> SocketAddr {
    let i = broker
        .listeners()
        .iter()
        .position(|l| l.kind == kind)
        .expect("listener of that kind");
    broker.local_addrs()[i]
}

fn tcp_addr(broker: &Broker) -> SocketAddr {
    broker.local_addrs()[0]
}

/// A raw MQTT peer over WebSocket: each `send` is one binary frame.
struct WsPeer<S> {
    version: ProtocolVersion,
    ws: WebSocketStream<S>,
    rbuf: BytesMut,
    /// The subprotocol the broker answered with.
    protocol: Option<String>,
}

/// The WebSocket handshake over `stream` for `path`, offering `protocols` (none: no header).
async fn upgrade<S>(
    stream: S,
    host: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> Result<(WebSocketStream<S>, Option<String>), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    if let Some(p) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_with_config(request, stream, None),
    )
    .await
    .expect("handshake within 5 s")?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, protocol))
}

impl WsPeer<TcpStream> {
    /// Opens TCP and upgrades at `/mqtt` offering `mqtt`.
    async fn open(addr: SocketAddr, version: ProtocolVersion) -> Self {
        Self::open_with(addr, "/mqtt", Some("mqtt"), version).await
    }

    async fn open_with(
        addr: SocketAddr,
        path: &str,
        protocols: Option<&str>,
        version: ProtocolVersion,
    ) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (ws, protocol) = upgrade(tcp, addr, path, protocols)
            .await
            .expect("WebSocket upgrade");
        WsPeer::new(ws, protocol, version)
    }

    /// Opens, upgrades and connects with a clean start; expects success.
    async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Self {
        let mut peer = Self::open(addr, version).await;
        let ack = peer.connect_with(connect_packet(version, client_id)).await;
        assert_eq!(ack.reason, ReasonCode::Success, "CONNACK {ack:?}");
        peer
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsPeer<S> {
    fn new(ws: WebSocketStream<S>, protocol: Option<String>, version: ProtocolVersion) -> Self {
        Self {
            version,
            ws,
            rbuf: BytesMut::new(),
            protocol,
        }
    }

    async fn connect_with(&mut self, connect: Connect) -> ConnAck {
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn encode(&self, packet: Packet) -> Vec<u8> {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).unwrap();
        buf.to_vec()
    }

    /// Sends one packet as one binary frame.
    async fn send(&mut self, packet: Packet) {
        let bytes = self.encode(packet);
        self.send_frame(bytes).await;
    }

    async fn send_frame(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .expect("send");
    }

    /// The next MQTT packet (from however many frames), or `None` when the WebSocket ends.
    async fn try_recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = decode(&mut self.rbuf, self.version, usize::MAX).unwrap() {
                    return Some(p);
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(data))) => self.rbuf.extend_from_slice(&data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(other)) => panic!("unexpected message {other:?}"),
                }
            }
        })
        .await
        .expect("timed out waiting for a packet")
    }

    async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("connection closed")
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let sub = Subscribe {
            packet_id: common::pid(1),
            filters: vec![(common::filter(filter), SubscriptionOptions::new(qos))],
            properties: Default::default(),
        };
        self.send(Packet::Subscribe(sub)).await;
        match self.recv().await {
            Packet::SubAck(ack) => assert_eq!(ack.reasons.len(), 1),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next WebSocket message that is not a ping or pong, `None` at the end.
    async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(m)) => return Some(m),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("timed out waiting for a message")
    }
}

fn will(topic: &str, payload: &str) -> sagitta_proto::Will {
    sagitta_proto::Will {
        topic: common::topic(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    }
}

fn payload_of(p: &Packet) -> (&str, &[u8], QoS) {
    match p {
        Packet::Publish(p) => (&p.topic, &p.payload, p.qos),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_and_tcp_clients_exchange_messages_both_ways() {
    let broker = start(vec![ListenerConfig::ws(any()).allow_anonymous(true)]).await;
    let ws_addr = addr_of(&broker, ListenerKind::Ws);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut ws = WsPeer::connect(ws_addr, version, "ws-client").await;
        assert_eq!(ws.protocol.as_deref(), Some("mqtt"));
        let mut tcp = Peer::connect(tcp_addr(&broker), version, "tcp-client").await;
        ws.subscribe("to/ws", QoS::ExactlyOnce).await;
        tcp.subscribe("to/tcp", QoS::AtLeastOnce).await;

        // TCP → WebSocket, QoS 0 and 1; a payload larger than one read buffer too.
        tcp.publish("to/ws", "hello ws", QoS::AtMostOnce, false)
            .await;
        let p = ws.recv().await;
        assert_eq!(payload_of(&p), ("to/ws", &b"hello ws"[..], QoS::AtMostOnce));
        let big = "x".repeat(100_000);
        tcp.publish("to/ws", &big, QoS::AtLeastOnce, false).await;
        let Packet::Publish(p) = ws.recv().await else {
            panic!("expected PUBLISH")
        };
        assert_eq!(p.payload.len(), 100_000);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        ws.send(Packet::PubAck(PubResponse::new(p.packet_id.unwrap())))
            .await;

        // WebSocket → TCP, QoS 1 (PUBACK comes back over the WebSocket) and a large one.
        ws.send(Packet::Publish(publish(
            "to/tcp",
            "hello tcp",
            QoS::AtLeastOnce,
            false,
            7,
        )))
        .await;
        match ws.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.packet_id.get(), 7),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let p = tcp.recv_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), ("to/tcp", &b"hello tcp"[..]));
        tcp.ack(&p).await;
        ws.send(Packet::Publish(publish(
            "to/tcp",
            &big,
            QoS::AtMostOnce,
            false,
            0,
        )))
        .await;
        assert_eq!(tcp.recv_publish().await.payload.len(), 100_000);
        tcp.disconnect().await;
        ws.send(Packet::Disconnect(sagitta_proto::Disconnect::new(
            ReasonCode::Success,
        )))
        .await;
    }
    broker.shutdown().await;
}

/// [MQTT-6.0.0-2]: a packet may span frames, and a frame may hold several packets.
#[tokio::test]
async fn packets_split_over_frames_and_batched_in_one_frame() {
    let broker = start(vec![ListenerConfig::ws(any()).allow_anonymous(true)]).await;
    let ws_addr = addr_of(&broker, ListenerKind::Ws);
    let mut tcp = Peer::connect(tcp_addr(&broker), ProtocolVersion::V5, "sub").await;
    tcp.subscribe("frames/#", QoS::AtMostOnce).await;

    // CONNECT itself split in three frames.
    let mut ws = WsPeer::open(ws_addr, ProtocolVersion::V5).await;
    let connect = ws.encode(Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "framed",
    ))));
    let third = connect.len() / 3;
    for chunk in [&connect[..1], &connect[1..third], &connect[third..]] {
        ws.send_frame(chunk.to_vec()).await;
    }
    match ws.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // One PUBLISH over three frames: the fixed header's first byte alone, then the middle
    // of the variable header, then the rest.
    let packet = ws.encode(Packet::Publish(publish(
        "frames/split",
        "three frames",
        QoS::AtMostOnce,
        false,
        0,
    )));
    ws.send_frame(packet[..1].to_vec()).await;
    ws.send_frame(packet[1..6].to_vec()).await;
    ws.send_frame(packet[6..].to_vec()).await;
    let p = tcp.recv_publish().await;
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("frames/split", &b"three frames"[..])
    );

    // Three QoS 1 PUBLISHes in one frame: three PUBACKs and three messages, in order.
    let mut frame = Vec::new();
    for i in 1..=3u16 {
        frame.extend(ws.encode(Packet::Publish(publish(
            "frames/batch",
            &format!("m{i}"),
            QoS::AtLeastOnce,
            false,
            i,
        ))));
    }
    ws.send_frame(frame).await;
    for i in 1..=3u16 {
        match ws.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.packet_id.get(), i),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for i in 1..=3 {
        let p = tcp.recv_publish().await;
        assert_eq!(p.payload, format!("m{i}").as_bytes());
    }

    // The same through a fragmented WebSocket message (continuation frames).
    let packet = ws.encode(Packet::Publish(publish(
        "frames/fragmented",
        "continued",
        QoS::AtMostOnce,
        false,
        0,
    )));
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let (a, b) = packet.split_at(4);
    let first = Frame::from_payload(
        FrameHeader {
            is_final: false,
            opcode: OpCode::Data(Data::Binary),
            ..FrameHeader::default()
        },
        Bytes::copy_from_slice(a),
    );
    let last = Frame::from_payload(
        FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Continue),
            ..FrameHeader::default()
        },
        Bytes::copy_from_slice(b),
    );
    ws.ws.send(Message::Frame(first)).await.unwrap();
    ws.ws.send(Message::Frame(last)).await.unwrap();
    let p = tcp.recv_publish().await;
    assert_eq!(p.payload, &b"continued"[..]);
    broker.shutdown().await;
}

/// Sends `request` on a fresh TCP connection and returns everything the broker answers
/// until it closes.
async fn http_exchange(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8(read_until_closed(&mut tcp, "the broker answers and closes").await).unwrap()
}

/// Everything the broker sends until it closes the connection (or resets it after that).
async fn read_until_closed(tcp: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the broker did not close the connection"));
    answer
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn other_paths_get_404_and_no_upgrade() {
    let broker = start(vec![
        ListenerConfig::ws(any()).allow_anonymous(true),
        ListenerConfig::ws(any())
            .path("/custom")
            .allow_anonymous(true),
    ])
    .await;
    let default = broker.local_addrs()[1];
    let custom = broker.local_addrs()[2];

    for (addr, path) in [
        (default, "/"),
        (default, "/mqtt/"),
        (default, "/custom"),
        (custom, "/mqtt"),
    ] {
        let answer = http_exchange(addr, &upgrade_request(path, "")).await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
        assert!(!answer.contains("Sec-WebSocket-Accept"), "{answer}");
        // A client library sees the refusal as an HTTP error.
        let tcp = TcpStream::connect(addr).await.unwrap();
        match upgrade(tcp, addr, path, Some("mqtt")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 404)
            }
            other => panic!("{path}: expected 404, got {other:?}"),
        }
    }
    // Each refused upgrade counts as a refused connection (metrics: reason "protocol").
    let refused = || {
        broker
            .metrics()
            .refused_count(sagitta_broker::metrics::Refused::Protocol)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "refused {}",
            refused()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The configured paths upgrade.
    let mut tcp = TcpStream::connect(default).await.unwrap();
    tcp.write_all(upgrade_request("/mqtt", "").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and answer; no subprotocol offered, none answered.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
    let mut peer = WsPeer::open_with(custom, "/custom", Some("mqtt"), ProtocolVersion::V5).await;
    let ack = peer
        .connect_with(connect_packet(ProtocolVersion::V5, "custom-path"))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);

    // Plain HTTP is no upgrade: 426 on the path, 404 elsewhere; other methods 405; garbage 400.
    let plain = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let answer = http_exchange(default, plain).await;
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(answer.contains("Upgrade: websocket"), "{answer}");
    let answer = http_exchange(default, "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    let answer = http_exchange(default, "POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    let answer = http_exchange(default, "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // Headers beyond 16 KiB: 431, and the broker does not wait for the end of them.
    let huge = format!(
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\n",
        "a".repeat(20_000)
    );
    let answer = http_exchange(default, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // None of this disturbed the broker: a TCP client still connects.
    Peer::connect(tcp_addr(&broker), ProtocolVersion::V5, "after")
        .await
        .disconnect()
        .await;
    broker.shutdown().await;
}

/// [MQTT-6.0.0-3, MQTT-6.0.0-4]: `mqtt` is the subprotocol; `mqttv3.1` is accepted too; a
/// request without the header is served without one; other names alone are refused.
#[tokio::test]
async fn subprotocol_negotiation() {
    let broker = start(vec![ListenerConfig::ws(any()).allow_anonymous(true)]).await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    for (offered, answered, version) in [
        (Some("mqtt"), Some("mqtt"), ProtocolVersion::V5),
        (Some("mqttv3.1"), Some("mqttv3.1"), ProtocolVersion::V3_1),
        (
            Some("mqttv3.1, mqtt"),
            Some("mqtt"),
            ProtocolVersion::V3_1_1,
        ),
        (Some("chat, mqtt"), Some("mqtt"), ProtocolVersion::V3_1_1),
        (None, None, ProtocolVersion::V3_1_1),
    ] {
        let mut peer = WsPeer::open_with(addr, "/mqtt", offered, version).await;
        assert_eq!(peer.protocol.as_deref(), answered, "{offered:?}");
        let ack = peer
            .connect_with(connect_packet(version, "sub-proto"))
            .await;
        assert_eq!(ack.reason, ReasonCode::Success, "{offered:?}");
    }
    // Only other names: HTTP 400.
    let answer = http_exchange(
        addr,
        &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: chat, wamp\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let tcp = TcpStream::connect(addr).await.unwrap();
    match upgrade(tcp, addr, "/mqtt", Some("mqttv5")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected 400, got {other:?}"),
    }
    broker.shutdown().await;
}

/// [MQTT-6.0.0-1]: a text frame closes the connection (close code 1003); the client's will
/// is published, as for any connection that ends without DISCONNECT.
#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let broker = start(vec![ListenerConfig::ws(any()).allow_anonymous(true)]).await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    let mut watcher = Peer::connect(tcp_addr(&broker), ProtocolVersion::V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;

    let mut ws = WsPeer::open(addr, ProtocolVersion::V5).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "texter");
    connect.will = Some(will("wills/texter", "gone"));
    assert_eq!(ws.connect_with(connect).await.reason, ReasonCode::Success);
    ws.ws
        .send(Message::text("{\"cmd\":\"publish\"}"))
        .await
        .unwrap();
    match ws.next_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Unsupported),
        None => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    assert!(ws.next_message().await.is_none(), "the connection ends");
    assert_eq!(watcher.recv_publish().await.payload, &b"gone"[..]);

    // Before CONNECT too.
    let mut ws = WsPeer::open(addr, ProtocolVersion::V5).await;
    ws.ws.send(Message::text("hello")).await.unwrap();
    assert!(ws.try_recv().await.is_none());
    broker.shutdown().await;
}

/// Pings get pongs; a close frame from the client is answered with one and ends the
/// connection (the will is published: no DISCONNECT was sent); DISCONNECT ends with a close
/// frame from the broker.
#[tokio::test]
async fn ping_and_close_frames() {
    let broker = start(vec![ListenerConfig::ws(any()).allow_anonymous(true)]).await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    let mut watcher = Peer::connect(tcp_addr(&broker), ProtocolVersion::V3_1_1, "w").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;

    let mut ws = WsPeer::connect(addr, ProtocolVersion::V3_1_1, "pinger").await;
    ws.ws
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));
    // MQTT's own PINGREQ still works alongside.
    ws.send(Packet::PingReq).await;
    assert_eq!(ws.recv().await, Packet::PingResp);

    let mut connect = connect_packet(ProtocolVersion::V3_1_1, "closer");
    connect.will = Some(will("wills/closer", "closed"));
    let mut closer = WsPeer::open(addr, ProtocolVersion::V3_1_1).await;
    assert_eq!(
        closer.connect_with(connect).await.reason,
        ReasonCode::Success
    );
    closer.ws.close(None).await.unwrap();
    assert!(matches!(
        closer.next_message().await,
        Some(Message::Close(_)) | None
    ));
    assert_eq!(watcher.recv_publish().await.payload, &b"closed"[..]);

    // DISCONNECT: the broker closes with a normal close frame, no will.
    ws.send(Packet::Disconnect(sagitta_proto::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    match ws.next_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn wss_with_a_test_pki() {
    let pki = Pki::new("wss");
    let broker = start(vec![
        ListenerConfig::wss(any(), pki.path("server.pem"), pki.path("server.key"))
            .allow_anonymous(true),
        ListenerConfig::wss(any(), pki.path("server.pem"), pki.path("server.key"))
            .client_ca(pki.path("ca.pem"))
            .use_identity_as_username(true)
            .path("/devices"),
    ])
    .await;
    let wss = broker.local_addrs()[1];
    let mtls = broker.local_addrs()[2];
    assert_eq!(broker.listeners()[1].kind, ListenerKind::Wss);
    assert!(broker.listeners()[2].verifies_client_certificates);

    let mut tcp = Peer::connect(tcp_addr(&broker), ProtocolVersion::V5, "tcp").await;
    tcp.subscribe("secure/#", QoS::AtLeastOnce).await;

    // Server authentication only.
    let tls = tls_connect(wss, pki.client_config("ca.pem", None))
        .await
        .unwrap();
    let (ws, protocol) = upgrade(tls, wss, "/mqtt", Some("mqtt")).await.unwrap();
    let mut peer = WsPeer::new(ws, protocol, ProtocolVersion::V5);
    let ack = peer
        .connect_with(connect_packet(ProtocolVersion::V5, "wss-client"))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    peer.subscribe("back/#", QoS::AtLeastOnce).await;
    peer.send(Packet::Publish(publish(
        "secure/one",
        "over wss",
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    assert!(matches!(peer.recv().await, Packet::PubAck(_)));
    let p = tcp.recv_publish().await;
    assert_eq!(p.payload, &b"over wss"[..]);
    tcp.ack(&p).await;
    tcp.publish("back/one", "to wss", QoS::AtMostOnce, false)
        .await;
    assert_eq!(payload_of(&peer.recv().await).1, b"to wss");

    // A wrong path is refused inside TLS too.
    let tls = tls_connect(wss, pki.client_config("ca.pem", None))
        .await
        .unwrap();
    match upgrade(tls, wss, "/nope", Some("mqtt")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }

    // Mutual TLS: the certificate's CN is the username; no certificate, no upgrade.
    let tls = tls_connect(mtls, pki.client_config("ca.pem", Some("client")))
        .await
        .unwrap();
    let (ws, _) = upgrade(tls, mtls, "/devices", Some("mqtt")).await.unwrap();
    let mut device = WsPeer::new(ws, None, ProtocolVersion::V3_1_1);
    let ack = device
        .connect_with(connect_packet(ProtocolVersion::V3_1_1, "device"))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let refused = async {
        let tls = tls_connect(mtls, pki.client_config("ca.pem", None)).await?;
        upgrade(tls, mtls, "/devices", Some("mqtt"))
            .await
            .map_err(std::io::Error::other)
    };
    assert!(refused.await.is_err(), "no client certificate, no upgrade");
    broker.shutdown().await;
}

/// `reload_tls` (SIGHUP) swaps the certificate of `wss` listeners too: new clients see the
/// new one, a connection made before goes on.
#[tokio::test]
async fn wss_certificate_reload() {
    let pki = Pki::new("wss-reload");
    let (cert, key) = (pki.path("live.pem"), pki.path("live.key"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let broker = start(vec![
        ListenerConfig::wss(any(), &cert, &key).allow_anonymous(true),
    ])
    .await;
    let addr = addr_of(&broker, ListenerKind::Wss);
    let open = |ca: &'static str| {
        let config = pki.client_config(ca, None);
        async move {
            let tls = tls_connect(addr, config).await?;
            let (ws, p) = upgrade(tls, addr, "/mqtt", Some("mqtt"))
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(WsPeer::new(ws, p, ProtocolVersion::V5))
        }
    };
    let mut before = open("ca.pem").await.unwrap();
    let ack = before
        .connect_with(connect_packet(ProtocolVersion::V5, "before"))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);

    std::fs::copy(pki.path("server2.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server2.key"), &key).unwrap();
    assert_eq!(broker.handle().reload_tls().unwrap(), 1);
    assert!(
        open("ca.pem").await.is_err(),
        "the old CA no longer matches"
    );
    let mut after = open("other-ca.pem").await.unwrap();
    let ack = after
        .connect_with(connect_packet(ProtocolVersion::V5, "after"))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    before.send(Packet::PingReq).await;
    assert_eq!(before.recv().await, Packet::PingResp);
    broker.shutdown().await;
}

#[tokio::test]
async fn password_file_over_ws() {
    let dir = common_tls::temp_dir("ws-passwd");
    let passwd = dir.join("passwd");
    let line = PasswordHash::with_salt(b"secret", b"0123456789ab", 50);
    std::fs::write(&passwd, format!("alice:{line}\n")).unwrap();
    let config = Config {
        failed_login_delay_ms: 0,
        ..Config::default()
    };
    let broker = start_with(
        config,
        vec![ListenerConfig::ws(any()).password_file(&passwd)],
    )
    .await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    for (version, user, password, expect) in [
        (
            ProtocolVersion::V5,
            Some("alice"),
            Some("secret"),
            ReasonCode::Success,
        ),
        (
            ProtocolVersion::V5,
            Some("alice"),
            Some("wrong"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (ProtocolVersion::V5, None, None, ReasonCode::NotAuthorized),
        (
            ProtocolVersion::V3_1_1,
            Some("alice"),
            Some("secret"),
            ReasonCode::Success,
        ),
        (
            ProtocolVersion::V3_1_1,
            Some("bob"),
            Some("secret"),
            ReasonCode::BadUserNameOrPassword,
        ),
    ] {
        let mut c = connect_packet(version, "pw");
        c.username = user.map(mstr);
        c.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        let mut peer = WsPeer::open(addr, version).await;
        let ack = peer.connect_with(c).await;
        assert_eq!(ack.reason, expect, "{version:?} {user:?} {password:?}");
        if expect != ReasonCode::Success {
            assert!(peer.try_recv().await.is_none(), "closed after a refusal");
        }
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The connect timeout covers the upgrade: a client that opens TCP and sends nothing, or
/// half a request, is closed; meanwhile other clients are served (the upgrade runs on the
/// connection's own task). `max_connections` of the listener counts WebSocket clients.
#[tokio::test]
async fn connect_timeout_and_connection_limit_cover_the_upgrade() {
    let config = Config {
        connect_timeout: 1,
        ..Config::default()
    };
    let broker = start_with(
        config,
        vec![ListenerConfig {
            max_connections: Some(3),
            ..ListenerConfig::ws(any()).allow_anonymous(true)
        }],
    )
    .await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /mqtt HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    // Served while the two others hang.
    let mut ok = WsPeer::connect(addr, ProtocolVersion::V5, "quick").await;
    // The limit of 3 is reached: a fourth connection is closed at once.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, fourth.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "over the listener's limit");
    for stream in [&mut silent, &mut half] {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("closed by the connect timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    ok.send(Packet::PingReq).await;
    assert_eq!(ok.recv().await, Packet::PingResp);
    broker.shutdown().await;
}

/// Frames RFC 6455 forbids, each sent raw right after the upgrade: the broker answers with a
/// close frame naming the status (1002 protocol error, 1009 too big) and ends the connection.
#[tokio::test]
async fn protocol_errors_get_a_close_frame_with_their_status() {
    let mut config = Config::default().in_memory();
    config.max_packet_size = 1000; // WebSocket messages up to 64 KiB
    let broker = start_with(
        config,
        vec![ListenerConfig::ws(any()).allow_anonymous(true)],
    )
    .await;
    let addr = addr_of(&broker, ListenerKind::Ws);
    let key = [0x11, 0x22, 0x33, 0x44];
    let masked = |first: u8, payload: &[u8]| -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x82, 0x02, 0xC0, 0x00], 1002),
        ("reserved bit", masked(0xA2, &[0xC0, 0x00]), 1002),
        ("unknown opcode", masked(0x83, &[0xC0, 0x00]), 1002),
        ("stray continuation", masked(0x80, &[0xC0, 0x00]), 1002),
        ("fragmented ping", masked(0x09, b"p"), 1002),
        ("one-byte close", masked(0x88, &[0x03]), 1002),
        // Its header alone: the broker refuses it from the declared length.
        (
            "too big",
            masked(0x82, &vec![0; 70_000])[..14].to_vec(),
            1009,
        ),
        ("text", masked(0x81, b"{}"), 1003),
    ];
    for (what, frame, code) in cases {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                tcp.read(&mut byte).await.unwrap(),
                1,
                "{what}: upgrade answer"
            );
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{what}");
        let _ = tcp.write_all(&frame).await;
        let answer = read_until_closed(&mut tcp, what).await;
        assert!(
            answer.len() >= 4 && answer[0] == 0x88,
            "{what}: a close frame first, got {answer:02x?}"
        );
        assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), code, "{what}");
    }
    broker.shutdown().await;
}
