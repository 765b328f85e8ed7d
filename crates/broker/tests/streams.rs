//! Connections served over in-memory streams (`Broker::serve_stream`), where the test decides
//! how much the broker may write at once.

// Test code: building fixed, known-valid values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::BytesMut;
use sagitta_broker::{Broker, Config};
use sagitta_proto::{
    Connect, MqttStr, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.encode(ProtocolVersion::V5, &mut out).unwrap();
    }
    out.to_vec()
}

fn connect(id: &str) -> Packet {
    let mut c = Connect::new(ProtocolVersion::V5, MqttStr::new(id.to_owned()).unwrap());
    c.keep_alive = 60;
    Packet::Connect(Box::new(c))
}

async fn open(broker: &Broker, buffer: usize) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(buffer);
    assert!(broker.serve_stream(theirs, SocketAddr::from(([127, 0, 0, 1], 1))));
    ours
}

/// Regression (found by the `connection` fuzz target): a connection taken over while a write
/// to its socket was half done wrote its whole output buffer again when it closed, so the
/// client read the start of a packet twice and the rest of the stream as garbage.
#[tokio::test]
async fn takeover_during_a_partial_write_sends_no_byte_twice() {
    let mut config = Config::default()
        .listen([SocketAddr::from(([127, 0, 0, 1], 0))])
        .in_memory();
    config.sys_interval = 0;
    let broker = Broker::start(config).await.unwrap();

    // A 64-byte pipe that the first client does not read yet: the broker's writes of the
    // messages below stop half-way.
    let mut first = open(&broker, 64).await;
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        filters: vec![(
            TopicFilter::new("t").unwrap(),
            SubscriptionOptions::new(QoS::AtLeastOnce),
        )],
        properties: SubscribeProperties::default(),
    });
    first
        .write_all(&encode(&[connect("same"), subscribe]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..4 {
        broker.publish(
            TopicName::new("t").unwrap(),
            vec![b'x'; 300],
            QoS::AtLeastOnce,
            false,
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The same client id again: the first connection is taken over mid-write.
    let mut second = open(&broker, 4096).await;
    second.write_all(&encode(&[connect("same")])).await.unwrap();

    // Everything the first connection got must decode, up to DISCONNECT 0x8E and the close.
    let mut rx = BytesMut::new();
    let mut packets = Vec::new();
    let read_all = async {
        while first.read_buf(&mut rx).await.unwrap() > 0 {
            while let Some(p) = decode(&mut rx, ProtocolVersion::V5, usize::MAX)
                .unwrap_or_else(|e| panic!("garbled output after {packets:?}: {e}"))
            {
                packets.push(p);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the first connection was not closed");
    assert!(rx.is_empty(), "{} bytes of a partial packet", rx.len());
    assert!(
        matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SessionTakenOver),
        "{packets:?}"
    );
    broker.shutdown().await;
}

/// How long a test waits for packets it expects.
const LONG: Duration = Duration::from_secs(5);

/// Reads packets from `stream` until `n` arrived (or `wait` passed: then what came).
async fn read_packets(
    stream: &mut DuplexStream,
    rx: &mut BytesMut,
    n: usize,
    wait: Duration,
) -> Vec<Packet> {
    let mut packets = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        loop {
            while let Some(p) = decode(rx, ProtocolVersion::V5, usize::MAX).unwrap() {
                packets.push(p);
            }
            if packets.len() >= n || stream.read_buf(rx).await.unwrap() == 0 {
                return;
            }
        }
    })
    .await;
    packets
}

/// Regression (found by the `connection` fuzz target): messages in flight when a session's
/// connection ended were all sent again on the next one, even past the smaller Receive
/// Maximum the client came back with [MQTT-3.3.4-9]. The rest now follows as acknowledgements
/// free room, in order.
#[tokio::test]
async fn resent_messages_respect_a_smaller_receive_maximum() {
    let mut config = Config::default()
        .listen([SocketAddr::from(([127, 0, 0, 1], 0))])
        .in_memory();
    config.sys_interval = 0;
    let broker = Broker::start(config).await.unwrap();
    let session = |receive_maximum: u16| {
        let mut c = Connect::new(ProtocolVersion::V5, MqttStr::new("r".to_owned()).unwrap());
        c.keep_alive = 60;
        c.clean_start = receive_maximum == 10;
        c.properties.session_expiry_interval = Some(60);
        c.properties.receive_maximum = NonZeroU16::new(receive_maximum);
        Packet::Connect(Box::new(c))
    };
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        filters: vec![(
            TopicFilter::new("t").unwrap(),
            SubscriptionOptions::new(QoS::AtLeastOnce),
        )],
        properties: SubscribeProperties::default(),
    });
    let mut first = open(&broker, 4096).await;
    let mut rx = BytesMut::new();
    first
        .write_all(&encode(&[session(10), subscribe]))
        .await
        .unwrap();
    read_packets(&mut first, &mut rx, 2, LONG).await;
    for _ in 0..3 {
        broker.publish(TopicName::new("t").unwrap(), "m", QoS::AtLeastOnce, false);
    }
    let sent = read_packets(&mut first, &mut rx, 3, LONG).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Back with Receive Maximum 1 and none of the three acknowledged.
    let mut second = open(&broker, 4096).await;
    let mut rx = BytesMut::new();
    second.write_all(&encode(&[session(1)])).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let got = read_packets(&mut second, &mut rx, 1, LONG).await;
        let publishes: Vec<_> = got
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(publishes.len(), 1, "one message at a time: {got:?}");
        assert!(publishes[0].dup);
        let id = publishes[0].packet_id.unwrap();
        ids.push(id.get());
        // Nothing more until the acknowledgement.
        assert!(
            read_packets(&mut second, &mut rx, 1, Duration::from_millis(200))
                .await
                .is_empty()
        );
        let ack = Packet::PubAck(sagitta_proto::PubResponse::new(id));
        second.write_all(&encode(&[ack])).await.unwrap();
    }
    assert_eq!(ids, [1, 2, 3], "in their original order");
    broker.shutdown().await;
}
