//! MQTT over WebSocket against MQTT over TCP on the same load: starts a broker in-process with a
//! TCP and a WebSocket listener, and moves N messages from one publisher to one subscriber
//! over each transport (QoS 0 and QoS 1, 16-byte and 1 KB payloads), alternating TCP and
//! WebSocket run after run. Prints msg/s per run, then the medians and the ratio ws/tcp.
//!
//! `cargo run --release -p sagitta-broker --example ws_throughput -- [RUNS] [N_QOS0] [N_QOS1]`
//! (defaults 3, 1 000 000 and 300 000).
//!
//! Both clients are raw: the publisher writes its packets in batches of up to 32 (one write on
//! TCP, one binary frame on WebSocket), the subscriber acknowledges QoS 1 messages in one
//! write per read. QoS 1 publishing keeps up to 1 000 messages unacknowledged. The time is
//! from the first publish to the last message received.

use std::error::Error;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use sagitta_broker::{Broker, Config, ListenerConfig, ListenerKind};
use sagitta_proto::{
    Connect, MqttStr, Packet, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, decode,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::Message,
>;
type WsSource = futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<TcpStream>>;

const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;
/// Packets per write (TCP) or frame (WebSocket).
const BATCH: usize = 32;
/// Unacknowledged QoS 1 messages the publisher allows itself.
const WINDOW: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Tcp,
    Ws,
}

/// The writing half of a connection.
enum Tx {
    Tcp(OwnedWriteHalf),
    Ws(WsSink),
}

/// The reading half of a connection.
enum Rx {
    Tcp(OwnedReadHalf),
    Ws(WsSource),
}

impl Tx {
    async fn send(&mut self, bytes: Bytes) -> Result<()> {
        match self {
            Tx::Tcp(w) => w.write_all(&bytes).await?,
            Tx::Ws(w) => w.send(Message::Binary(bytes)).await?,
        }
        Ok(())
    }
}

impl Rx {
    /// Appends what arrives to `buf`; `false` at the end of the stream.
    async fn recv(&mut self, buf: &mut BytesMut) -> Result<bool> {
        match self {
            Rx::Tcp(r) => {
                buf.reserve(64 * 1024);
                Ok(r.read_buf(buf).await? > 0)
            }
            Rx::Ws(r) => loop {
                match r.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }

    /// The next packet.
    async fn packet(&mut self, buf: &mut BytesMut) -> Result<Packet> {
        loop {
            if let Some(p) = decode(buf, VERSION, usize::MAX)? {
                return Ok(p);
            }
            if !self.recv(buf).await? {
                return Err("connection closed".into());
            }
        }
    }
}

fn encode(packet: Packet) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    packet.encode(VERSION, &mut buf)?;
    Ok(buf.freeze())
}

/// Opens a connection and completes CONNECT / CONNACK.
async fn connect(transport: Transport, addr: SocketAddr, id: &str) -> Result<(Tx, Rx, BytesMut)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut tx, mut rx) = match transport {
        Transport::Tcp => {
            let (r, w) = tcp.into_split();
            (Tx::Tcp(w), Rx::Tcp(r))
        }
        Transport::Ws => {
            let mut request = format!("ws://{addr}/mqtt").into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
            let (w, r) = ws.split();
            (Tx::Ws(w), Rx::Ws(r))
        }
    };
    let mut connect = Connect::new(VERSION, MqttStr::new(id)?);
    connect.keep_alive = 0;
    tx.send(encode(Packet::Connect(Box::new(connect)))?).await?;
    let mut buf = BytesMut::new();
    match rx.packet(&mut buf).await? {
        Packet::ConnAck(a) if a.reason == sagitta_proto::ReasonCode::Success => {}
        other => return Err(format!("CONNECT refused: {other:?}").into()),
    }
    Ok((tx, rx, buf))
}

fn packet_id(i: usize) -> Result<NonZeroU16> {
    NonZeroU16::new(u16::try_from(i % 65535 + 1)?).ok_or_else(|| "packet id".into())
}

/// One measurement: msg/s from the first publish to the last message received.
async fn measure(
    transport: Transport,
    addr: SocketAddr,
    qos: QoS,
    size: usize,
    n: usize,
    run: usize,
) -> Result<f64> {
    let tag = format!("{transport:?}-{qos:?}-{size}-{run}");
    let topic = TopicName::new(format!("bench/{tag}"))?;
    let (mut sub_tx, mut sub_rx, mut sub_buf) =
        connect(transport, addr, &format!("s-{tag}")).await?;
    let subscribe = Subscribe {
        packet_id: packet_id(0)?,
        filters: vec![(
            TopicFilter::new(topic.to_string())?,
            SubscriptionOptions::new(qos),
        )],
        properties: Default::default(),
    };
    sub_tx.send(encode(Packet::Subscribe(subscribe))?).await?;
    match sub_rx.packet(&mut sub_buf).await? {
        Packet::SubAck(_) => {}
        other => return Err(format!("expected SUBACK, got {other:?}").into()),
    }
    let (mut pub_tx, mut pub_rx, mut pub_buf) =
        connect(transport, addr, &format!("p-{tag}")).await?;

    // Subscriber: counts messages, acknowledges QoS 1 in one write per read.
    let subscriber = tokio::spawn(async move {
        let mut got = 0;
        let mut acks = BytesMut::new();
        while got < n {
            if !sub_rx.recv(&mut sub_buf).await? {
                return Err::<Tx, Box<dyn Error + Send + Sync>>("subscriber closed".into());
            }
            while let Some(p) = decode(&mut sub_buf, VERSION, usize::MAX)? {
                if let Packet::Publish(p) = p {
                    got += 1;
                    if let Some(id) = p.packet_id {
                        Packet::PubAck(PubResponse::new(id)).encode(VERSION, &mut acks)?;
                    }
                }
            }
            if !acks.is_empty() {
                sub_tx.send(acks.split().freeze()).await?;
            }
        }
        Ok(sub_tx)
    });

    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    // Publisher's reader: PUBACKs give their window place back.
    let acker = {
        let window = window.clone();
        tokio::spawn(async move {
            if qos == QoS::AtMostOnce {
                return Ok::<(), Box<dyn Error + Send + Sync>>(());
            }
            let mut acked = 0;
            while acked < n {
                if let Packet::PubAck(_) = pub_rx.packet(&mut pub_buf).await? {
                    acked += 1;
                    window.add_permits(1);
                }
            }
            Ok(())
        })
    };

    let payload = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut out = BytesMut::new();
    let mut sent = 0;
    while sent < n {
        let mut batch = 0;
        while batch < BATCH && sent < n {
            if qos != QoS::AtMostOnce {
                let permit = if batch == 0 {
                    window.acquire().await?
                } else {
                    match window.try_acquire() {
                        Ok(p) => p,
                        Err(_) => break,
                    }
                };
                permit.forget();
            }
            let mut p = Publish::new(topic.clone(), payload.clone());
            p.qos = qos;
            p.packet_id = (qos != QoS::AtMostOnce)
                .then(|| packet_id(sent))
                .transpose()?;
            Packet::Publish(p).encode(VERSION, &mut out)?;
            sent += 1;
            batch += 1;
        }
        pub_tx.send(out.split().freeze()).await?;
    }
    let mut sub_tx = tokio::time::timeout(Duration::from_secs(120), subscriber).await???;
    let elapsed = started.elapsed();
    acker.await??;
    let _ = pub_tx
        .send(encode(Packet::Disconnect(Default::default()))?)
        .await;
    let _ = sub_tx
        .send(encode(Packet::Disconnect(Default::default()))?)
        .await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize| args.next().and_then(|s| s.parse().ok()).unwrap_or(default);
    let runs = number(3);
    let n_qos0 = number(1_000_000);
    let n_qos1 = number(300_000);

    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config::default()
        .in_memory()
        .listen([any])
        .listener(ListenerConfig::ws(any).allow_anonymous(true));
    config.sys_interval = 0;
    // Nothing is dropped: the subscriber's queue holds a whole run.
    config.max_queued_messages = n_qos0.max(n_qos1) + 1;
    let broker = Broker::start(config).await?;
    let addr_of = |kind| {
        broker
            .listeners()
            .iter()
            .position(|l| l.kind == kind)
            .map(|i| broker.local_addrs()[i])
            .ok_or("listener missing")
    };
    let (tcp, ws) = (addr_of(ListenerKind::Tcp)?, addr_of(ListenerKind::Ws)?);

    let loads = [
        (QoS::AtMostOnce, 16, n_qos0),
        (QoS::AtMostOnce, 1024, n_qos0),
        (QoS::AtLeastOnce, 16, n_qos1),
        (QoS::AtLeastOnce, 1024, n_qos1),
    ];
    let mut results = vec![(Vec::new(), Vec::new()); loads.len()];
    for run in 0..runs {
        // Alternate which transport goes first.
        let order = if run % 2 == 0 {
            [Transport::Tcp, Transport::Ws]
        } else {
            [Transport::Ws, Transport::Tcp]
        };
        for (i, &(qos, size, n)) in loads.iter().enumerate() {
            for transport in order {
                let addr = if transport == Transport::Tcp { tcp } else { ws };
                let rate = measure(transport, addr, qos, size, n, run).await?;
                println!(
                    "run {} {:?} qos{} {:>5} B: {:>10.0} msg/s",
                    run + 1,
                    transport,
                    qos as u8,
                    size,
                    rate
                );
                let (t, w) = &mut results[i];
                if transport == Transport::Tcp {
                    t.push(rate);
                } else {
                    w.push(rate);
                }
            }
        }
    }
    println!("\nmedians of {runs} runs:");
    println!("load           tcp msg/s    ws msg/s   ws/tcp");
    for (&(qos, size, _), (t, w)) in loads.iter().zip(results) {
        let (t, w) = (median(t), median(w));
        println!(
            "qos{} {:>5} B {:>12.0} {:>11.0} {:>8.2}",
            qos as u8,
            size,
            t,
            w,
            w / t
        );
    }
    broker.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws_throughput: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws_throughput: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
