//! Codec benchmarks: decoding and encoding a PUBLISH with a 16-byte topic and a 64-byte payload,
//! for MQTT 3.1.1 at QoS 0 and QoS 1 and for MQTT 5.0 at QoS 1 with properties (Message Expiry
//! Interval, Content Type and one User Property).
//!
//! Each iteration handles 1000 packets (`Throughput::Elements(1000)`), so criterion's
//! "elements/s" is packets per second and the time per iteration divided by 1000 is the cost
//! of one packet:
//!
//! - `decode/*`: a receive buffer holding 1000 back-to-back encodings is decoded packet by
//!   packet, as a connection's read buffer would be; each packet is dropped after decoding. The
//!   buffer is refilled from a pre-encoded copy just before each iteration, outside the
//!   measurement.
//! - `encode/*`: 1000 encodings are appended to one reused `BytesMut`, cleared per iteration.
//!
//! Run with `cargo bench -p sagitta-proto --bench codec`.

// Benchmark setup on constant, known-valid inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sagitta_proto::{
    MqttStr, Packet, ProtocolVersion, Publish, PublishProperties, QoS, TopicName, decode,
};

/// Packets per iteration.
const COPIES: usize = 1000;
/// Maximum packet size given to the decoder.
const MAX_PACKET_SIZE: usize = 1 << 20;

struct Case {
    name: &'static str,
    version: ProtocolVersion,
    packet: Packet,
}

fn publish(qos: QoS) -> Publish {
    let topic = TopicName::new("sensors/room/t01").unwrap();
    assert_eq!(topic.len(), 16);
    let mut publish = Publish::new(topic, Bytes::from(vec![0x5A; 64]));
    if qos != QoS::AtMostOnce {
        publish.qos = qos;
        publish.packet_id = NonZeroU16::new(1);
    }
    publish
}

fn cases() -> Vec<Case> {
    let mut v5 = publish(QoS::AtLeastOnce);
    v5.properties = PublishProperties {
        message_expiry_interval: Some(3600),
        content_type: Some(MqttStr::new("application/json").unwrap()),
        user_properties: vec![(
            MqttStr::new("trace-id").unwrap(),
            MqttStr::new("4bf92f3577b34da6").unwrap(),
        )],
        ..PublishProperties::default()
    };
    vec![
        Case {
            name: "v3.1.1-qos0",
            version: ProtocolVersion::V3_1_1,
            packet: Packet::Publish(publish(QoS::AtMostOnce)),
        },
        Case {
            name: "v3.1.1-qos1",
            version: ProtocolVersion::V3_1_1,
            packet: Packet::Publish(publish(QoS::AtLeastOnce)),
        },
        Case {
            name: "v5-qos1-props",
            version: ProtocolVersion::V5,
            packet: Packet::Publish(v5),
        },
    ]
}

/// `COPIES` encodings of the case's packet, back to back.
fn stream(case: &Case) -> Bytes {
    let mut buf = BytesMut::new();
    for _ in 0..COPIES {
        case.packet.encode(case.version, &mut buf).unwrap();
    }
    buf.freeze()
}

/// Decodes every packet in `buf`, dropping each; returns how many there were.
fn decode_all(buf: &mut BytesMut, version: ProtocolVersion) -> usize {
    let mut n = 0;
    while let Ok(Some(packet)) = decode(buf, version, MAX_PACKET_SIZE) {
        black_box(packet);
        n += 1;
    }
    n
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(COPIES as u64));
    for case in cases() {
        let stream = stream(&case);
        // The stream must decode to exactly the packets it was made of.
        let mut check = BytesMut::from(&stream[..]);
        assert_eq!(
            decode(&mut check, case.version, MAX_PACKET_SIZE),
            Ok(Some(case.packet.clone()))
        );
        assert_eq!(decode_all(&mut check, case.version), COPIES - 1);
        assert!(check.is_empty());

        group.bench_function(case.name, |b| {
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                |mut buf| {
                    let n = decode_all(&mut buf, black_box(case.version));
                    // Returned, so the emptied buffer is dropped outside the measurement.
                    (n, buf)
                },
                // Each buffer is filled just before it is decoded, as a socket read fills a
                // connection's buffer, so decoding reads what is still in cache. (Filling a
                // whole batch of buffers first measured decoding from memory.)
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(COPIES as u64));
    for case in cases() {
        let mut buf = BytesMut::with_capacity(stream(&case).len());
        group.bench_function(case.name, |b| {
            b.iter(|| {
                buf.clear();
                for _ in 0..COPIES {
                    black_box(&case.packet)
                        .encode(case.version, &mut buf)
                        .unwrap();
                }
                black_box(buf.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
