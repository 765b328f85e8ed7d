//! Primitive data representations (MQTT 5.0 section 1.5): integers, variable byte integers,
//! strings and binary data, read from a packet body and written into a `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::string::{MAX_STRING_LEN, MqttStr};
use crate::types::PacketType;

/// Largest value a variable byte integer can hold.
pub const MAX_VAR_INT: u32 = 268_435_455;

/// Reads fields from the body of one packet. The body is shared: strings and binary fields are
/// slices of it, not copies.
pub(crate) struct Reader {
    buf: Bytes,
    packet: PacketType,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, packet: PacketType) -> Self {
        Self { buf, packet }
    }

    pub(crate) fn packet(&self) -> PacketType {
        self.packet
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn has_remaining(&self) -> bool {
        !self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated {
                packet: self.packet,
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        match read_var_int(&self.buf) {
            VarInt::Value(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated {
                packet: self.packet,
            }),
            VarInt::TooLong => Err(DecodeError::MalformedVarInt),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// UTF-8 Encoded String.
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let raw = self.binary()?;
        MqttStr::from_bytes(raw).map_err(|source| DecodeError::InvalidString {
            packet: self.packet,
            source,
        })
    }

    /// Everything not read yet (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Splits off the next `len` bytes as their own reader (a property block).
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len)?, self.packet))
    }

    /// Fails if anything is left unread.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra: self.buf.len(),
            })
        }
    }
}

/// Outcome of reading a variable byte integer from the front of a slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes it used.
    Value(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
    /// Four bytes with the continuation bit all set, or more bytes than the value needs
    /// [MQTT-1.5.5-1].
    TooLong,
}

pub(crate) fn read_var_int(buf: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return VarInt::Incomplete;
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after continuation bytes is a non-minimal encoding.
            if byte == 0 && i > 0 {
                return VarInt::TooLong;
            }
            return VarInt::Value(value, i + 1);
        }
    }
    VarInt::TooLong
}

/// Number of bytes the variable byte integer encoding of `v` takes.
pub(crate) const fn var_int_len(v: usize) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Writes `v` (at most [`MAX_VAR_INT`], checked by the caller) as a variable byte integer.
pub(crate) fn put_var_int(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Writes a validated string (its length always fits in two bytes).
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// Writes binary data, failing if it is longer than 65 535 bytes.
pub(crate) fn put_binary(buf: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    check_binary(b)?;
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
    Ok(())
}

pub(crate) fn check_binary(b: &[u8]) -> Result<(), EncodeError> {
    if b.len() > MAX_STRING_LEN {
        Err(EncodeError::BinaryTooLong(b.len()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries() {
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut buf = BytesMut::new();
            put_var_int(&mut buf, value);
            assert_eq!(&buf[..], bytes, "{value}");
            assert_eq!(var_int_len(value), bytes.len());
            assert_eq!(
                read_var_int(bytes),
                VarInt::Value(value as u32, bytes.len())
            );
        }
        assert_eq!(read_var_int(&[0x80, 0x80]), VarInt::Incomplete);
        // Non-minimal encodings of 0 and 1.
        assert_eq!(read_var_int(&[0x80, 0x00]), VarInt::TooLong);
        assert_eq!(read_var_int(&[0x81, 0x80, 0x00]), VarInt::TooLong);
        assert_eq!(
            read_var_int(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            VarInt::TooLong
        );
    }
}
