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
