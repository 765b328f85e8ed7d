//! A pre-encoded PUBLISH: `Packet::encode` produces the bytes once per publisher, and each
//! message is a copy of them with its packet identifier and payload header patched in.
//!
//! The codec stays the only source of the wire layout: the offset of the packet identifier
//! is found by encoding the same PUBLISH with two different identifiers and comparing, and
//! the payload is, per the spec, the last part of the packet. Per message this costs one
//! `memcpy` of the packet instead of allocating a payload and walking the encoder.

use bytes::{Bytes, BytesMut};
use sagitta_proto::{EncodeError, Packet, PacketId, ProtocolVersion, Publish, QoS, TopicName};

use super::payload::{HEADER_LEN, Header};

/// Filler byte after the payload header.
const PAD: u8 = b'x';

/// The encoding of one PUBLISH, ready to be stamped per message.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
}

fn encode(
    version: ProtocolVersion,
    topic: &TopicName,
    qos: QoS,
    size: usize,
    id: Option<PacketId>,
) -> Result<Vec<u8>, EncodeError> {
    let mut publish = Publish::new(topic.clone(), Bytes::from(vec![PAD; size]));
    publish.qos = qos;
    publish.packet_id = id;
    let mut buf = BytesMut::new();
    Packet::Publish(publish).encode(version, &mut buf)?;
    Ok(buf.to_vec())
}

impl PublishTemplate {
    /// A template for `size`-byte payloads (at least [`HEADER_LEN`]) to `topic` at `qos`.
    pub fn new(
        version: ProtocolVersion,
        topic: &TopicName,
        qos: QoS,
        size: usize,
    ) -> Result<Self, String> {
        if size < HEADER_LEN {
            return Err(format!("payload size must be at least {HEADER_LEN} bytes"));
        }
        let err = |e: EncodeError| format!("cannot encode PUBLISH: {e}");
        let (bytes, packet_id_at) = if qos == QoS::AtMostOnce {
            (encode(version, topic, qos, size, None).map_err(err)?, None)
        } else {
            let a = encode(version, topic, qos, size, PacketId::new(0x1234)).map_err(err)?;
            let b = encode(version, topic, qos, size, PacketId::new(0xEDCB)).map_err(err)?;
            let at = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .filter(|&i| i + 2 <= a.len() && a[i..i + 2] == [0x12, 0x34])
                .ok_or("cannot locate the packet identifier in an encoded PUBLISH")?;
            (a, Some(at))
        };
        let payload_at = bytes.len() - size;
        Ok(Self {
            bytes,
            packet_id_at,
            payload_at,
        })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one message to `buf`. `packet_id` is used when the template's QoS is above 0.
    pub fn append(&self, buf: &mut BytesMut, packet_id: Option<PacketId>, header: &Header) {
        let start = buf.len();
        buf.extend_from_slice(&self.bytes);
        let out = &mut buf[start..];
        if let (Some(at), Some(id)) = (self.packet_id_at, packet_id) {
            out[at..at + 2].copy_from_slice(&id.get().to_be_bytes());
        }
        header.write(&mut out[self.payload_at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagitta_proto::decode;

    fn check(version: ProtocolVersion, qos: QoS, size: usize) {
        let topic = TopicName::new("bench/7").unwrap();
        let t = PublishTemplate::new(version, &topic, qos, size).unwrap();
        let mut buf = BytesMut::new();
        let ids = [PacketId::new(1), PacketId::new(0xABCD)];
        for (seq, id) in ids.iter().enumerate() {
            let h = Header {
                publisher: 7,
                seq: seq as u64,
                sent_ns: 42 + seq as u64,
            };
            t.append(
                &mut buf,
                (qos != QoS::AtMostOnce).then_some(id.unwrap()),
                &h,
            );
        }
        assert_eq!(buf.len(), 2 * t.len());
        for (seq, id) in ids.iter().enumerate() {
            let Some(Packet::Publish(p)) = decode(&mut buf, version, 1 << 20).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(p.topic.as_str(), "bench/7");
            assert_eq!(p.qos, qos);
            assert_eq!(p.payload.len(), size);
            if qos == QoS::AtMostOnce {
                assert_eq!(p.packet_id, None);
            } else {
                assert_eq!(p.packet_id, *id);
            }
            let h = Header::read(&p.payload).unwrap();
            assert_eq!(
                (h.publisher, h.seq, h.sent_ns),
                (7, seq as u64, 42 + seq as u64)
            );
            assert!(p.payload[HEADER_LEN..].iter().all(|&b| b == PAD));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn stamped_messages_decode_for_every_version_and_qos() {
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for size in [HEADER_LEN, 64, 200, 20_000] {
                    check(version, qos, size);
                }
            }
        }
    }

    #[test]
    fn payload_smaller_than_header_is_rejected() {
        let topic = TopicName::new("t").unwrap();
        let e = PublishTemplate::new(ProtocolVersion::V5, &topic, QoS::AtMostOnce, 19);
        assert!(e.unwrap_err().contains("at least 20"));
    }
}
