//! WebSocket framing (RFC 6455 §5), server side and sans-IO: [`FrameReader`] turns the bytes
//! a client sent into the payload of its binary messages, in place, and collects its control
//! frames; [`header`] writes the header of a frame the server sends.
//!
//! Decoding in place is what lets a WebSocket connection cost what a TCP one costs: the
//! connection's own read buffer (which an idle connection gives back) receives the socket's
//! bytes, and the frame headers are cut out of it and the payload unmasked where it lies.
//! The reader itself keeps a partial header (at most 14 bytes), the position in the current
//! frame, and the payload of a control frame while it arrives (at most 125 bytes).

/// Opcodes (§5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Longest control frame payload (§5.5).
const MAX_CONTROL: u64 = 125;

/// Longest frame header: 2 bytes, an 8-byte extended length, a 4-byte masking key.
const MAX_HEADER: usize = 14;

/// Close status codes the server sends (§7.4.1).
pub(crate) mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Data of a type the endpoint cannot accept (text frames, for MQTT).
    pub const UNSUPPORTED: u16 = 1003;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

/// A control frame the client sent, for the stream to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The client's close frame, with its status code if it gave one. The reader ignores
    /// whatever follows it.
    Close(Option<u16>),
}

/// Why the client's frames are refused; the connection then closes with [`FrameError::code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A text frame: MQTT travels in binary frames [MQTT-6.0.0-1].
    #[error("text frame: MQTT is sent in binary frames [MQTT-6.0.0-1]")]
    Text,
    /// A frame from the client without a masking key (§5.1).
    #[error("unmasked frame from the client")]
    Unmasked,
    /// RSV bits set: no extension was negotiated.
    #[error("reserved bits set in a frame header")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A continuation frame outside a fragmented message, or a new message inside one.
    #[error("fragments out of order")]
    Fragments,
    /// A control frame fragmented or longer than 125 bytes.
    #[error("malformed control frame")]
    Control,
    /// A close frame whose payload is one byte (a status code takes two).
    #[error("malformed close frame")]
    Close,
    /// A message longer than the listener takes.
    #[error("WebSocket message over {0} bytes")]
    TooBig(u64),
}

impl FrameError {
    /// The close status code that answers this error.
    pub(crate) fn code(&self) -> u16 {
        match self {
            FrameError::Text => close_code::UNSUPPORTED,
            FrameError::TooBig(_) => close_code::TOO_BIG,
            _ => close_code::PROTOCOL,
        }
    }
}

/// Incoming frames, decoded in place (see the module documentation).
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// The header being read: its first `header_len` bytes.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Inside a frame's payload: `remaining` bytes of it still to come.
    in_payload: bool,
    remaining: u64,
    /// The frame's masking key, and the position in it of the next payload byte.
    mask: [u8; 4],
    mask_pos: usize,
    /// The opcode of the frame being read.
    opcode: u8,
    /// A fragmented binary message is open (its last frame is still to come).
    in_message: bool,
    /// Payload bytes of the current message so far, against `max_message`.
    message_len: u64,
    max_message: u64,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// Control frames completed by the last [`FrameReader::decode`].
    events: Vec<Control>,
    /// The client's close frame has arrived.
    closed: bool,
}

impl FrameReader {
    /// A reader taking messages of up to `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            header: [0; MAX_HEADER],
            header_len: 0,
            in_payload: false,
            remaining: 0,
            mask: [0; 4],
            mask_pos: 0,
            opcode: 0,
            in_message: false,
            message_len: 0,
            max_message: u64::try_from(max_message).unwrap_or(u64::MAX),
            control: Vec::new(),
            events: Vec::new(),
            closed: false,
        }
    }

    /// Decodes the bytes just read, `buf`, in place: afterwards its first `n` bytes (`n` is
    /// returned) are the unmasked payload bytes of binary messages they held, in order.
    /// Control frames completed are in [`FrameReader::take_events`]. Bytes after the client's
    /// close frame are ignored. An error is final.
    pub(crate) fn decode(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let (mut read, mut kept) = (0, 0);
        while read < buf.len() && !self.closed {
            if !self.in_payload {
                read += self.read_header(&buf[read..])?;
                continue;
            }
            let available = (buf.len() - read) as u64;
            // Fits in usize: at most `buf.len() - read`.
            let n = self.remaining.min(available) as usize;
            if self.is_control() {
                let start = self.control.len();
                self.control.extend_from_slice(&buf[read..read + n]);
                unmask(&mut self.control[start..], self.mask, self.mask_pos);
            } else {
                buf.copy_within(read..read + n, kept);
                unmask(&mut buf[kept..kept + n], self.mask, self.mask_pos);
                kept += n;
            }
            read += n;
            self.mask_pos = (self.mask_pos + n) % 4;
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.end_frame()?;
            }
        }
        Ok(kept)
    }

    /// The control frames the last [`FrameReader::decode`] completed.
    pub(crate) fn take_events(&mut self) -> Vec<Control> {
        std::mem::take(&mut self.events)
    }

    fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The header's full length, as far as its bytes so far tell.
    fn header_size(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + 4
    }

    /// Takes header bytes from `bytes`; returns how many. When the header is complete, checks
    /// it and enters the payload.
    fn read_header(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < bytes.len() {
            let want = self.header_size();
            if self.header_len == want {
                break;
            }
            let n = (want - self.header_len).min(bytes.len() - used);
            self.header[self.header_len..self.header_len + n]
                .copy_from_slice(&bytes[used..used + n]);
            self.header_len += n;
            used += n;
            if self.header_len >= 2 && self.header[1] & 0x80 == 0 {
                return Err(FrameError::Unmasked);
            }
        }
        if self.header_len == self.header_size() {
            self.start_frame()?;
        }
        Ok(used)
    }

    /// Checks a complete header and enters its payload.
    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = &self.header[..self.header_len];
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = h[0] & 0x0F;
        let (len, key) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..8]),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), &h[10..14])
            }
            short => (u64::from(short), &h[2..6]),
        };
        if len >> 63 != 0 {
            return Err(FrameError::TooBig(self.max_message));
        }
        self.mask.copy_from_slice(key);
        match opcode {
            TEXT => return Err(FrameError::Text),
            BINARY | CONTINUATION => {
                if (opcode == BINARY) == self.in_message {
                    return Err(FrameError::Fragments);
                }
                self.message_len = if opcode == BINARY {
                    len
                } else {
                    self.message_len.saturating_add(len)
                };
                if self.message_len > self.max_message {
                    return Err(FrameError::TooBig(self.max_message));
                }
                self.in_message = !fin;
            }
            CLOSE | PING | PONG => {
                if !fin || len > MAX_CONTROL {
                    return Err(FrameError::Control);
                }
            }
            other => return Err(FrameError::Opcode(other)),
        }
        self.opcode = opcode;
        self.header_len = 0;
        self.mask_pos = 0;
        self.remaining = len;
        self.in_payload = true;
        if len == 0 {
            self.end_frame()?;
        }
        Ok(())
    }

    /// The current frame's payload is complete.
    fn end_frame(&mut self) -> Result<(), FrameError> {
        self.in_payload = false;
        if !self.is_control() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.control);
        match self.opcode {
            PING => self.events.push(Control::Ping(payload)),
            CLOSE => {
                let code = match payload.as_slice() {
                    [] => None,
                    [_] => return Err(FrameError::Close),
                    [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
                };
                self.events.push(Control::Close(code));
                self.closed = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// XORs `data` with the masking key, starting at position `pos` of the key (§5.3): eight
/// bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4], pos: usize) {
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(pos + i) % 4];
    }
    let wide = u64::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Room to keep in front of an outgoing payload for its header (see [`header`]).
pub(crate) const HEADER_ROOM: usize = 10;

/// Writes the header of an unfragmented, unmasked server frame with this opcode and payload
/// length into the end of `room`; returns its length (2, 4 or 10).
pub(crate) fn header(room: &mut [u8; HEADER_ROOM], opcode: u8, len: usize) -> usize {
    let first = 0x80 | opcode;
    let size = match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    let h = &mut room[HEADER_ROOM - size..];
    h[0] = first;
    match size {
        2 => h[1] = len as u8,
        4 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
    size
}

/// A whole server frame: header and payload.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut room = [0u8; HEADER_ROOM];
    let size = header(&mut room, opcode, payload.len());
    let mut out = Vec::with_capacity(size + payload.len());
    out.extend_from_slice(&room[HEADER_ROOM - size..]);
    out.extend_from_slice(payload);
    out
}

/// A pong answering a ping with `payload`.
pub(crate) fn pong(payload: &[u8]) -> Vec<u8> {
    frame(PONG, payload)
}

/// A close frame with a status code and a reason (at most 123 bytes of it are sent).
pub(crate) fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &payload)
}

/// The opcode of a binary frame, for [`header`].
pub(crate) const BINARY_OPCODE: u8 = BINARY;

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `key`.
    fn client_frame(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// Decodes `input` split into pieces of `step` bytes; the payload and the events.
    fn decode_in_steps(
        reader: &mut FrameReader,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<Control>), FrameError> {
        let (mut payload, mut events) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            let mut buf = piece.to_vec();
            let n = reader.decode(&mut buf)?;
            payload.extend_from_slice(&buf[..n]);
            events.extend(reader.take_events());
        }
        Ok((payload, events))
    }

    #[test]
    fn binary_frames_fragments_and_controls_in_any_split() {
        let key = [0x37, 0xFA, 0x21, 0x3D];
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let mut input = client_frame(0x82, b"hello", key);
        input.extend(client_frame(0x02, &big[..300], [1, 2, 3, 4]));
        input.extend(client_frame(0x89, b"ping!", [9, 9, 9, 9]));
        input.extend(client_frame(0x80, &big[300..], [5, 6, 7, 8]));
        input.extend(client_frame(0x8A, b"", key));
        input.extend(client_frame(0x82, b"", key));
        input.extend(client_frame(0x88, &[0x03, 0xE8], key));
        input.extend(client_frame(0x82, b"after close", key));
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big);
        for step in [1, 2, 3, 5, 13, 64, 1000, input.len()] {
            let mut reader = FrameReader::new(100_000);
            let (payload, events) = decode_in_steps(&mut reader, &input, step).unwrap();
            assert!(payload == want, "step {step}");
            assert_eq!(
                events,
                [Control::Ping(b"ping!".to_vec()), Control::Close(Some(1000))],
                "step {step}"
            );
            assert!(reader.closed);
        }
    }

    #[test]
    fn refusals() {
        let key = [1, 2, 3, 4];
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (client_frame(0x81, b"text", key), FrameError::Text),
            (
                vec![0x82, 0x05, b'h', b'e', b'l', b'l', b'o'],
                FrameError::Unmasked,
            ),
            (client_frame(0xC2, b"x", key), FrameError::Reserved),
            (client_frame(0x83, b"x", key), FrameError::Opcode(3)),
            (client_frame(0x80, b"x", key), FrameError::Fragments),
            (
                [client_frame(0x02, b"x", key), client_frame(0x82, b"y", key)].concat(),
                FrameError::Fragments,
            ),
            (client_frame(0x09, b"x", key), FrameError::Control),
            (client_frame(0x89, &[0; 126], key), FrameError::Control),
            (client_frame(0x88, &[3], key), FrameError::Close),
            (client_frame(0x82, &[0; 101], key), FrameError::TooBig(100)),
            (
                [
                    client_frame(0x02, &[0; 60], key),
                    client_frame(0x80, &[0; 41], key),
                ]
                .concat(),
                FrameError::TooBig(100),
            ),
            (
                {
                    let mut f = vec![0x82, 0x80 | 127];
                    f.extend_from_slice(&u64::MAX.to_be_bytes());
                    f.extend_from_slice(&key);
                    f
                },
                FrameError::TooBig(100),
            ),
        ];
        for (input, want) in cases {
            for step in [1, input.len()] {
                let mut reader = FrameReader::new(100);
                let got = decode_in_steps(&mut reader, &input, step).unwrap_err();
                assert_eq!(got, want, "{input:02x?} in steps of {step}");
            }
        }
        assert_eq!(FrameError::Text.code(), close_code::UNSUPPORTED);
        assert_eq!(FrameError::TooBig(1).code(), close_code::TOO_BIG);
        assert_eq!(FrameError::Unmasked.code(), close_code::PROTOCOL);
    }

    #[test]
    fn server_frames() {
        assert_eq!(frame(BINARY, b"ab"), [0x82, 2, b'a', b'b']);
        let f = frame(BINARY, &[7; 300]);
        assert_eq!(&f[..4], [0x82, 126, 0x01, 0x2C]);
        assert_eq!(f.len(), 304);
        let f = frame(BINARY, &vec![7; 70_000]);
        assert_eq!(&f[..10], [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        assert_eq!(pong(b"p"), [0x8A, 1, b'p']);
        let c = close(1003, &"é".repeat(100));
        assert_eq!(&c[..4], [0x88, 124, 0x03, 0xEB]);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    proptest::proptest! {
        /// Any sequence of binary messages (fragmented anyhow, with pings between frames),
        /// split anyhow into reads, decodes to the concatenation of the payloads.
        #[test]
        fn any_frames_in_any_reads(
            messages in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::collection::vec(proptest::num::u8::ANY, 0..300), proptest::bool::ANY),
                    1..4,
                ),
                0..6,
            ),
            key in proptest::array::uniform4(proptest::num::u8::ANY),
            cuts in proptest::collection::vec(1usize..200, 1..20),
        ) {
            let mut input = Vec::new();
            let mut want = Vec::new();
            let mut pings = 0;
            for fragments in &messages {
                for (i, (payload, ping_after)) in fragments.iter().enumerate() {
                    let opcode = if i == 0 { 0x2 } else { 0x0 };
                    let fin = if i + 1 == fragments.len() { 0x80 } else { 0 };
                    input.extend(client_frame(fin | opcode, payload, key));
                    want.extend_from_slice(payload);
                    if *ping_after {
                        input.extend(client_frame(0x89, b"p", key));
                        pings += 1;
                    }
                }
            }
            let mut reader = FrameReader::new(usize::MAX);
            let (mut payload, mut events) = (Vec::new(), Vec::new());
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= input.len() {
                    break;
                }
                let end = (at + cut).min(input.len());
                let mut buf = input[at..end].to_vec();
                let n = reader.decode(&mut buf).unwrap();
                payload.extend_from_slice(&buf[..n]);
                events.extend(reader.take_events());
                at = end;
            }
            proptest::prop_assert_eq!(payload, want);
            proptest::prop_assert_eq!(events.len(), pings);
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, split at any point, decode exactly as they do whole: the same
        /// payload bytes up to the same error, and never a panic.
        #[test]
        fn arbitrary_bytes_decode_alike_in_any_split(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            cut in 0usize..400,
            max in 0usize..300,
        ) {
            let whole = {
                let mut reader = FrameReader::new(max);
                let mut buf = input.clone();
                reader.decode(&mut buf).map(|n| buf[..n].to_vec())
            };
            let cut = cut.min(input.len());
            let mut reader = FrameReader::new(max);
            let mut first = input[..cut].to_vec();
            let split = reader.decode(&mut first).and_then(|n| {
                let mut out = first[..n].to_vec();
                let mut second = input[cut..].to_vec();
                let m = reader.decode(&mut second)?;
                out.extend_from_slice(&second[..m]);
                Ok(out)
            });
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn unmasking_at_every_offset() {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        for pos in 0..4 {
            for len in 0..20 {
                let plain: Vec<u8> = (0..len as u8).collect();
                let mut data: Vec<u8> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(pos + i) % 4])
                    .collect();
                unmask(&mut data, mask, pos);
                assert_eq!(data, plain, "pos {pos} len {len}");
            }
        }
    }
}
