//! The property checked by the `decode` fuzz target, shared with the seed-corpus replay test
//! (`crates/proto/tests/fuzz_corpus.rs` includes this file with `#[path]`).
//!
//! Input layout: the first byte selects the protocol version and the maximum packet size (see
//! [`params`]); the rest is a byte stream decoded packet by packet until the decoder asks for
//! more bytes or fails. For every packet the decoder accepts:
//!
//! - it consumed at least one byte, and the same bytes less the last one are `Ok(None)` without
//!   being touched (incomplete is never an error);
//! - re-encoding it with the same version (a CONNECT uses its own) succeeds, produces exactly
//!   `encoded_len` bytes, and decodes back to an equal packet with nothing left over;
//! - encoding that packet again gives the same bytes (the encoding is canonical).
//!
//! Any failed assertion is a codec bug.

use bytes::BytesMut;
use sagitta_proto::{DecodeError, Packet, ProtocolVersion, decode};

/// How a checked input ended.
#[derive(Debug)]
pub enum End {
    /// The input was empty (no selector byte).
    NoInput,
    /// Every byte was decoded into packets.
    Exhausted,
    /// The decoder wants more bytes; this many were left.
    Incomplete(usize),
    /// The decoder rejected the stream.
    Error(DecodeError),
}

/// What [`check`] saw: how many packets were decoded and how the stream ended.
#[derive(Debug)]
pub struct Outcome {
    /// Packets decoded (and round-tripped) before the end.
    pub packets: usize,
    /// Why decoding stopped.
    pub end: End,
}

/// The maximum packet sizes selectable by bits 2–3 of the selector byte.
pub const MAX_PACKET_SIZES: [usize; 4] = [usize::MAX, 4096, 128, 16];

/// Version and maximum packet size chosen by the selector byte: bits 0–1 are the version
/// (0: 3.1, 1: 3.1.1, 2 and 3: 5.0), bits 2–3 index [`MAX_PACKET_SIZES`] (0: no limit), the
/// other bits are ignored.
pub fn params(selector: u8) -> (ProtocolVersion, usize) {
    let version = match selector & 0b11 {
        0 => ProtocolVersion::V3_1,
        1 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    (
        version,
        MAX_PACKET_SIZES[usize::from((selector >> 2) & 0b11)],
    )
}

/// The selector byte for `version` with no packet size limit.
pub fn selector(version: ProtocolVersion) -> u8 {
    match version {
        ProtocolVersion::V3_1 => 0,
        ProtocolVersion::V3_1_1 => 1,
        ProtocolVersion::V5 => 2,
    }
}

/// Decodes `data` as described in the module docs, asserting the round-trip properties.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&selector, stream)) = data.split_first() else {
        return Outcome {
            packets: 0,
            end: End::NoInput,
        };
    };
    let (version, max_packet_size) = params(selector);
    let mut buf = BytesMut::from(stream);
    let mut offset = 0;
    let mut packets = 0;
    loop {
        let before = buf.len();
        match decode(&mut buf, version, max_packet_size) {
            Ok(Some(packet)) => {
                let consumed = before - buf.len();
                assert!(consumed > 0, "decoded {packet:?} from no bytes");
                let frame = &stream[offset..offset + consumed];
                offset += consumed;
                packets += 1;
                check_prefix(frame, version, max_packet_size);
                round_trip(&packet, version);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                let end = if before == 0 {
                    End::Exhausted
                } else {
                    End::Incomplete(before)
                };
                return Outcome { packets, end };
            }
            Err(err) => {
                // Every error names a reason code and displays without panicking.
                let _ = (err.reason_code(), err.to_string());
                return Outcome {
                    packets,
                    end: End::Error(err),
                };
            }
        }
    }
}

/// The bytes of a decoded packet less the last one are incomplete, not an error, and stay put.
fn check_prefix(frame: &[u8], version: ProtocolVersion, max_packet_size: usize) {
    let prefix = &frame[..frame.len() - 1];
    let mut buf = BytesMut::from(prefix);
    let result = decode(&mut buf, version, max_packet_size);
    assert_eq!(result, Ok(None), "prefix {prefix:02x?} of a valid packet");
    assert_eq!(&buf[..], prefix, "Ok(None) changed the buffer");
}

/// Encodes `packet` for `version`, decodes it again and compares.
fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let mut encoded = BytesMut::new();
    let result = packet.encode(version, &mut encoded);
    assert_eq!(result, Ok(()), "cannot re-encode decoded {packet:?}");
    assert_eq!(
        packet.encoded_len(version),
        Ok(encoded.len()),
        "encoded_len disagrees with encode for {packet:?}"
    );
    let bytes = encoded.clone().freeze();
    // No size limit here: re-encoding may legitimately grow a packet (an AUTH whose property
    // length was omitted gets one), so the original limit could reject it.
    let decoded = decode(&mut encoded, version, usize::MAX);
    assert_eq!(
        decoded.as_ref(),
        Ok(&Some(packet.clone())),
        "round trip changed the packet; re-encoded as {:02x?}",
        &bytes[..]
    );
    assert!(
        encoded.is_empty(),
        "re-encoding of {packet:?} left {} bytes after decoding",
        encoded.len()
    );
    if let Ok(Some(again)) = decoded {
        let mut reencoded = BytesMut::new();
        assert_eq!(again.encode(version, &mut reencoded), Ok(()));
        assert_eq!(&reencoded[..], &bytes[..], "encoding is not canonical");
    }
}
