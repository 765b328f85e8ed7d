//! The benchmark payload: a fixed header that lets a subscriber tell which publisher sent a
//! message, its sequence number and when it was sent, followed by padding up to `--size`.
//!
//! Layout (big-endian): publisher id `u32`, sequence `u64`, send time `u64` in nanoseconds on
//! the bench [`Clock`](super::clock::Clock). [`HEADER_LEN`] is the smallest payload.

/// Bytes taken by the header; the smallest `--size` accepted.
pub const HEADER_LEN: usize = 4 + 8 + 8;

/// What a benchmark payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Index of the publisher within its run.
    pub publisher: u32,
    /// Sequence number of the message for that publisher, from 0.
    pub seq: u64,
    /// Send time in nanoseconds on the bench clock.
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`; returns false (and
    /// writes nothing) if `out` is shorter.
    pub fn write(&self, out: &mut [u8]) -> bool {
        let Some(dst) = out.get_mut(..HEADER_LEN) else {
            return false;
        };
        dst[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        dst[4..12].copy_from_slice(&self.seq.to_be_bytes());
        dst[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
        true
    }

    /// Reads a header from the front of `payload`, or `None` if it is too short.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let h = payload.get(..HEADER_LEN)?;
        let mut p = [0u8; 4];
        let mut s = [0u8; 8];
        let mut t = [0u8; 8];
        p.copy_from_slice(&h[0..4]);
        s.copy_from_slice(&h[4..12]);
        t.copy_from_slice(&h[12..20]);
        Some(Self {
            publisher: u32::from_be_bytes(p),
            seq: u64::from_be_bytes(s),
            sent_ns: u64::from_be_bytes(t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            publisher: 0xDEAD_BEEF,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 1,
        };
        let mut buf = vec![0xAAu8; 64];
        assert!(h.write(&mut buf));
        assert_eq!(Header::read(&buf), Some(h));
        // Padding after the header is untouched.
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn header_bytes_are_big_endian() {
        let h = Header {
            publisher: 1,
            seq: 2,
            sent_ns: 3,
        };
        let mut buf = [0u8; HEADER_LEN];
        assert!(h.write(&mut buf));
        assert_eq!(
            buf,
            [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn short_payload_is_rejected() {
        let h = Header {
            publisher: 1,
            seq: 2,
            sent_ns: 3,
        };
        let mut short = [0u8; HEADER_LEN - 1];
        assert!(!h.write(&mut short));
        assert_eq!(short, [0u8; HEADER_LEN - 1]);
        assert_eq!(Header::read(&short), None);
        assert_eq!(Header::read(&[]), None);
    }
}
