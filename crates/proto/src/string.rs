//! Validated MQTT strings.
//!
//! An MQTT "UTF-8 Encoded String" is at most 65 535 bytes of well-formed UTF-8 without U+0000
//! [MQTT-1.5.4-1] [MQTT-1.5.4-2]. Surrogates cannot occur in Rust's UTF-8, so a `str` that passes
//! [`MqttStr::new`] is always encodable. The bytes are shared (`bytes::Bytes` underneath), so
//! cloning a string or slicing it out of a received packet never copies.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Why a string is not a valid MQTT string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    /// Longer than the 65 535 bytes a two-byte length prefix can describe.
    #[error("string of {0} bytes is longer than 65535 bytes")]
    TooLong(usize),
    /// The bytes are not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// The string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
}

/// Largest length of a string or binary field.
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// A validated MQTT UTF-8 string: at most 65 535 bytes, no U+0000. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MqttStr(ByteString);

impl MqttStr {
    /// Validates `s` as an MQTT string.
    pub fn new(s: impl Into<ByteString>) -> Result<Self, StringError> {
        let s = s.into();
        check(&s)?;
        Ok(Self(s))
    }

    /// Validates raw bytes (e.g. a slice of a received packet) without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        if bytes.len() > MAX_STRING_LEN {
            return Err(StringError::TooLong(bytes.len()));
        }
        let s = ByteString::try_from(bytes).map_err(|_| StringError::InvalidUtf8)?;
        check(&s)?;
        Ok(Self(s))
    }

    /// Validates raw bytes as UTF-8 of at most 65 535 bytes, leaving the check for U+0000 to
    /// the caller (a topic name checks it together with the wildcards, in one pass).
    pub(crate) fn from_bytes_utf8(bytes: Bytes) -> Result<ByteString, StringError> {
        if bytes.len() > MAX_STRING_LEN {
            return Err(StringError::TooLong(bytes.len()));
        }
        ByteString::try_from(bytes).map_err(|_| StringError::InvalidUtf8)
    }

    /// Wraps a string whose checks the caller has made.
    pub(crate) fn from_checked(s: ByteString) -> Self {
        Self(s)
    }

    /// A string from a `'static` literal, checked like [`MqttStr::new`].
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        Self::new(ByteString::from_static(s))
    }

    /// The empty string.
    pub const fn empty() -> Self {
        Self(ByteString::from_static(""))
    }

    /// The string as `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying shared bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// The underlying shared string.
    pub fn into_inner(self) -> ByteString {
        self.0
    }
}

fn check(s: &str) -> Result<(), StringError> {
    if s.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong(s.len()));
    }
    if contains_any(s.as_bytes(), 0, 0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

/// True if any byte of `bytes` equals `x` or `y`. Checks eight bytes per step (SWAR): strings
/// and topics are short, and this is on the decode path of every PUBLISH.
#[inline]
pub(crate) fn contains_any(bytes: &[u8], x: u8, y: u8) -> bool {
    contains_any3(bytes, x, y, y)
}

/// True if any byte of `bytes` equals `x`, `y` or `z`, eight bytes per step.
#[inline]
pub(crate) fn contains_any3(bytes: &[u8], x: u8, y: u8, z: u8) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let (mx, my, mz) = (LO * u64::from(x), LO * u64::from(y), LO * u64::from(z));
    // A byte of `v` is zero iff the classic "haszero" expression has its high bit set.
    let zero_bytes = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word);
        if zero_bytes(v ^ mx) | zero_bytes(v ^ my) | zero_bytes(v ^ mz) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c == x || c == y || c == z)
}

impl Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for MqttStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl TryFrom<&str> for MqttStr {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        Self::new(s)
    }
}

impl TryFrom<String> for MqttStr {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_text() {
        let s = MqttStr::new("sensors/température").unwrap();
        assert_eq!(s, "sensors/température");
    }

    #[test]
    fn rejects_null_character() {
        assert_eq!(MqttStr::new("a\0b"), Err(StringError::NullCharacter));
    }

    #[test]
    fn contains_any_finds_bytes_at_every_position() {
        for len in 0..40 {
            let base = vec![b'a'; len];
            assert!(!contains_any(&base, 0, b'+'));
            for i in 0..len {
                for needle in [0u8, b'+', 0x80, 0xFF] {
                    let mut v = base.clone();
                    v[i] = needle;
                    assert!(contains_any(&v, needle, b'#'), "{len} {i} {needle}");
                    assert!(contains_any(&v, b'#', needle), "{len} {i} {needle}");
                    assert!(!contains_any(&v, b'#', b'$'), "{len} {i} {needle}");
                }
            }
        }
    }

    #[test]
    fn rejects_too_long() {
        let long = "x".repeat(MAX_STRING_LEN + 1);
        assert_eq!(
            MqttStr::new(long),
            Err(StringError::TooLong(MAX_STRING_LEN + 1))
        );
        assert!(MqttStr::new("x".repeat(MAX_STRING_LEN)).is_ok());
    }

    #[test]
    fn rejects_ill_formed_utf8_and_surrogates() {
        // 0xED 0xA0 0x80 is the CESU/WTF-8 encoding of the surrogate U+D800.
        for raw in [&b"\xff"[..], b"\xed\xa0\x80", b"\xc0\x80"] {
            assert_eq!(
                MqttStr::from_bytes(Bytes::copy_from_slice(raw)),
                Err(StringError::InvalidUtf8)
            );
        }
    }
}
