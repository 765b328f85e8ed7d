//! MQTT over WebSocket, for listeners of `type = "ws"` and `"wss"` (MQTT 3.1.1 §6, 5.0 §6):
//! the HTTP upgrade ([`accept`]: path, subprotocol, limits) and [`WsStream`], which turns the
//! WebSocket connection into the byte stream that `connection::serve` reads and writes, so
//! every broker semantic is the one of TCP.
//!
//! The upgrade request is read and checked here (httparse; at most 16 KiB of head, 64
//! headers) so that every refusal gets an HTTP answer: 404 for another path (whatever the
//! request), 405 for another method, 426 for a request that is no WebSocket upgrade or
//! another WebSocket version, 400 for a malformed one, 431 for one too large.
//!
//! Subprotocol policy (EMQX's default): a client offering `mqtt` gets `mqtt`, else one
//! offering `mqttv3.1` (MQTT 3.1's name, still sent by Paho JavaScript and others for 3.1)
//! gets `mqttv3.1`; a client offering only other names is refused with HTTP 400 (it could not
//! use an answer without one of its names anyway); a request with no `Sec-WebSocket-Protocol`
//! header at all is accepted without one in the answer, for clients that cannot set it (MQTT
//! requires clients to offer `mqtt` [MQTT-6.0.0-3], but some tools and embedded stacks do
//! not).
//!
//! Framing ([`frame`], our own): incoming binary frames (fragmented or not) are one byte
//! stream, so an MQTT packet may span frames and a frame may hold several packets
//! [MQTT-6.0.0-2]. Frames are decoded in the connection's own read buffer, so an idle
//! WebSocket connection holds no buffer, as an idle TCP one. A text frame closes the
//! connection [MQTT-6.0.0-1] (with close code 1003); other protocol errors with 1002, a
//! message over the listener's limit with 1009. Pings are answered and close frames
//! acknowledged. Outgoing bytes are buffered and sent as one binary frame per flush: the
//! connection task writes its whole batch and flushes once, so one batch is one frame.

mod frame;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use self::frame::{Control, FrameReader, HEADER_ROOM, close_code};
use crate::connection::Transport;

/// The subprotocols the broker speaks, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Outgoing bytes collected before they go out as a frame even without a flush (the
/// connection task flushes after each batch, well before this).
const MAX_PENDING_WRITE: usize = 1024 * 1024;

/// Control frames (pongs) waiting for the socket beyond which a client that pings without
/// reading is cut off.
const MAX_PENDING_CONTROL: usize = 64 * 1024;

/// The GUID of the `Sec-WebSocket-Accept` computation (RFC 6455 §1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` answering `key`: base64 of SHA-1 of the key and the GUID.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What a WebSocket listener accepts.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    /// The HTTP path of the upgrade request (the query is ignored).
    pub path: String,
    /// Largest WebSocket message (and frame) accepted.
    pub max_message: usize,
}

impl WsSettings {
    /// `path`, and messages up to twice the broker's `max_packet_size` (a client may put a
    /// maximal packet and the start of the next in one message), at least 64 KiB.
    pub fn new(path: &str, max_packet_size: u32) -> Self {
        let max_packet = usize::try_from(max_packet_size).unwrap_or(usize::MAX);
        Self {
            path: path.to_owned(),
            max_message: max_packet.saturating_mul(2).max(64 * 1024),
        }
    }
}

/// Largest HTTP request head (request line and headers) read before answering 431.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in the request.
const MAX_HEADERS: usize = 64;

/// Why an upgrade request was refused (answered with an HTTP error) or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// Refused with an HTTP error status.
    #[error("HTTP {status} for {method} {path}: {reason}")]
    Refused {
        /// The status answered.
        status: u16,
        /// The request's method, or `-` if it could not be read.
        method: String,
        /// The request's path, or `-`.
        path: String,
        /// Why.
        reason: String,
    },
    /// The peer closed before the end of its request.
    #[error("connection closed during the HTTP request")]
    Closed,
    /// Reading or writing failed.
    #[error("I/O error during the WebSocket handshake: {0}")]
    Io(#[from] io::Error),
}

/// What the broker answers to a request head.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 101: upgrade with this `Sec-WebSocket-Accept`, naming this subprotocol (or none).
    Upgrade {
        accept: String,
        protocol: Option<&'static str>,
    },
    /// An HTTP error: status, reason phrase, extra header, and why (for the log and body).
    Refuse {
        status: u16,
        phrase: &'static str,
        header: Option<&'static str>,
        why: &'static str,
    },
}

impl Answer {
    fn refuse(status: u16, why: &'static str) -> Self {
        let phrase = match status {
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let header = match status {
            405 => Some("Allow: GET"),
            426 => Some("Upgrade: websocket\r\nSec-WebSocket-Version: 13"),
            _ => None,
        };
        Answer::Refuse {
            status,
            phrase,
            header,
            why,
        }
    }
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(values: &[&[u8]], token: &str) -> bool {
    values.iter().any(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The subprotocol to answer with: `Ok(None)` when the client offers none, `Err` when it
/// offers only others.
fn choose_subprotocol(offered: &[&[u8]]) -> Result<Option<&'static str>, ()> {
    let names: Vec<&[u8]> = offered
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    SUBPROTOCOLS
        .iter()
        .find(|p| names.contains(&p.as_bytes()))
        .map(|p| Some(*p))
        .ok_or(())
}

/// Decides about a complete request head (RFC 6455 §4.2.1): the path first (404 for any
/// other), then what makes a WebSocket upgrade, then the subprotocol.
fn decide(request: &httparse::Request<'_, '_>, path: &str) -> Answer {
    let target = request.path.unwrap_or("");
    let request_path = target.split_once('?').map_or(target, |(p, _)| p);
    if request_path != path {
        return Answer::refuse(404, "not the WebSocket path");
    }
    if request.method != Some("GET") {
        return Answer::refuse(405, "a WebSocket upgrade is a GET request");
    }
    if request.version != Some(1) {
        return Answer::refuse(400, "a WebSocket upgrade needs HTTP/1.1");
    }
    let values = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    if !has_token(&values("upgrade"), "websocket") {
        return Answer::refuse(
            426,
            "not a WebSocket upgrade request (no `Upgrade: websocket`)",
        );
    }
    if !has_token(&values("connection"), "upgrade") {
        return Answer::refuse(400, "no `Connection: Upgrade`");
    }
    if values("sec-websocket-version") != [b"13".as_slice()] {
        return Answer::refuse(426, "unsupported WebSocket version (13 is supported)");
    }
    let key = match values("sec-websocket-key").as_slice() {
        [key] => key.trim_ascii(),
        _ => return Answer::refuse(400, "missing or repeated Sec-WebSocket-Key"),
    };
    let nonce = base64::engine::general_purpose::STANDARD.decode(key);
    if !nonce.is_ok_and(|n| n.len() == 16) {
        return Answer::refuse(400, "Sec-WebSocket-Key is not 16 bytes in base64");
    }
    match choose_subprotocol(&values("sec-websocket-protocol")) {
        Ok(protocol) => Answer::Upgrade {
            accept: accept_key(key),
            protocol,
        },
        Err(()) => Answer::refuse(
            400,
            "MQTT over WebSocket needs the subprotocol `mqtt` (or `mqttv3.1`)",
        ),
    }
}

/// The bytes of an answer.
fn response(answer: &Answer) -> Vec<u8> {
    match answer {
        Answer::Upgrade { accept, protocol } => {
            let protocol = protocol
                .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
                .unwrap_or_default();
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
            )
        }
        Answer::Refuse {
            status,
            phrase,
            header,
            why,
        } => {
            let header = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
            format!(
                "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n{header}\r\n{why}\n",
                why.len() + 1
            )
        }
    }
    .into_bytes()
}

/// Runs the server side of the WebSocket handshake on `stream` (TCP, or TLS after its own
/// handshake): reads the request head (at most 16 KiB), answers 101 or an HTTP error, and on
/// success returns the WebSocket stream and the subprotocol chosen. The caller bounds it
/// with a timeout: a silent client is waited for.
pub(crate) async fn accept<S>(
    mut stream: S,
    settings: &WsSettings,
) -> Result<(WsStream<S>, Option<&'static str>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (head_len, answer, method, path) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let (len, answer) = match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => (len, decide(&request, &settings.path)),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                (0, Answer::refuse(431, "request head too large"))
            }
            Err(_) => (0, Answer::refuse(400, "malformed HTTP request")),
        };
        let method = request.method.unwrap_or("-").to_owned();
        let path = request.path.unwrap_or("-").to_owned();
        break (len, answer, method, path);
    };
    stream.write_all(&response(&answer)).await?;
    stream.flush().await?;
    match answer {
        Answer::Upgrade { protocol, .. } => {
            // Frames the client sent right behind its request (it should wait for the 101).
            // Copied: a slice of `buf` would keep its whole allocation for the connection's life.
            let tail = Bytes::copy_from_slice(&buf[head_len..]);
            Ok((WsStream::new(stream, tail, settings.max_message), protocol))
        }
        Answer::Refuse { status, why, .. } => {
            let _ = stream.shutdown().await;
            linger(&mut stream).await;
            Err(HandshakeError::Refused {
                status,
                method,
                path,
                reason: why.to_owned(),
            })
        }
    }
}

/// Reads and drops what the client still sends after a refusal (briefly, a bounded amount):
/// closing a socket with unread input resets it, and the client could lose the answer.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = MAX_HEAD * 4;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}

/// A WebSocket connection as a byte stream: reads give the payloads of binary messages,
/// flushes send what was written since the last one as one binary message.
pub(crate) struct WsStream<S> {
    io: S,
    /// Bytes read with the HTTP request, not yet decoded.
    pre: Bytes,
    reader: FrameReader,
    /// The client's close frame arrived, or the stream ended or failed: reads return end of
    /// stream (after the error, if there was one).
    eof: bool,
    /// The payload of the next binary frame, behind [`HEADER_ROOM`] bytes for its header;
    /// empty when nothing is written.
    out: BytesMut,
    /// A frame partly written to the socket.
    sending: Bytes,
    /// Control frames (pongs, our close frame) to send before the next binary frame.
    control: BytesMut,
    /// Our close frame is queued: nothing more is sent after it.
    close_queued: bool,
}

impl<S> WsStream<S> {
    fn new(io: S, pre: Bytes, max_message: usize) -> Self {
        Self {
            io,
            pre,
            reader: FrameReader::new(max_message),
            eof: false,
            out: BytesMut::new(),
            sending: Bytes::new(),
            control: BytesMut::new(),
            close_queued: false,
        }
    }

    /// Queues our close frame, behind what was written so far (once).
    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_queued {
            return;
        }
        self.close_queued = true;
        self.seal_out();
        self.control.extend_from_slice(&frame::close(code, reason));
    }

    /// Turns the written bytes into a binary frame behind the queued control frames (used
    /// when a close frame must follow them).
    fn seal_out(&mut self) {
        if self.out.len() > HEADER_ROOM {
            let framed = binary_frame(std::mem::take(&mut self.out));
            self.control.extend_from_slice(&framed);
        }
    }
}

/// The frame of `out`: its payload behind [`HEADER_ROOM`] bytes, the header written in the
/// room's end, without copying the payload.
fn binary_frame(mut out: BytesMut) -> Bytes {
    let len = out.len() - HEADER_ROOM;
    let mut room = [0u8; HEADER_ROOM];
    let size = frame::header(&mut room, frame::BINARY_OPCODE, len);
    out[..HEADER_ROOM].copy_from_slice(&room);
    out.advance(HEADER_ROOM - size);
    out.freeze()
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes the pending frames to the socket: a partly written one, control frames, then
    /// the written bytes as a binary frame. Ready when all are written (not flushed).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.sending.is_empty() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.sending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.sending.advance(n);
            } else if !self.control.is_empty() {
                // Taken whole: an idle connection keeps no buffer.
                self.sending = std::mem::take(&mut self.control).freeze();
            } else if self.out.len() > HEADER_ROOM && !self.close_queued {
                self.sending = binary_frame(std::mem::take(&mut self.out));
            } else {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Acts on the control frames the last decode completed.
    fn on_controls(&mut self) -> io::Result<()> {
        for event in self.reader.take_events() {
            match event {
                Control::Ping(payload) if !self.close_queued => {
                    if self.control.len() > MAX_PENDING_CONTROL {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "WebSocket pings faster than the client reads the pongs",
                        ));
                    }
                    self.control.extend_from_slice(&frame::pong(&payload));
                }
                Control::Ping(_) => {}
                // The closing handshake: echo the code (§5.5.1), or a plain normal closure.
                Control::Close(code) => {
                    let echo = match code {
                        Some(c)
                            if (1000..5000).contains(&c)
                                && ![1004, 1005, 1006, 1015].contains(&c) =>
                        {
                            c
                        }
                        _ => close_code::NORMAL,
                    };
                    self.queue_close(echo, "");
                    self.eof = true;
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Answers (pongs, our close) go out when the socket takes them; if it is full,
            // the next write or flush sends them.
            if !this.sending.is_empty() || !this.control.is_empty() {
                match this.poll_send(cx) {
                    Poll::Ready(Err(e)) => {
                        this.eof = true;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let _ = Pin::new(&mut this.io).poll_flush(cx);
                    }
                    Poll::Pending => {}
                }
            }
            let start = buf.filled().len();
            if this.pre.is_empty() {
                if let Err(e) = ready!(Pin::new(&mut this.io).poll_read(cx, buf)) {
                    this.eof = true;
                    return Poll::Ready(Err(e));
                }
                if buf.filled().len() == start {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
            } else {
                let n = this.pre.len().min(buf.remaining());
                buf.put_slice(&this.pre[..n]);
                this.pre.advance(n);
            }
            let decoded = this.reader.decode(&mut buf.filled_mut()[start..]);
            match decoded {
                Ok(kept) => {
                    buf.set_filled(start + kept);
                    if let Err(e) = this.on_controls() {
                        this.eof = true;
                        this.queue_close(close_code::PROTOCOL, "");
                        return Poll::Ready(Err(e));
                    }
                    if kept > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) => {
                    buf.set_filled(start);
                    this.eof = true;
                    this.queue_close(e.code(), &e.to_string());
                    // The close frame goes out now if the socket takes it.
                    if this.poll_send(cx).is_ready() {
                        let _ = Pin::new(&mut this.io).poll_flush(cx);
                    }
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "WebSocket closing",
            )));
        }
        if this.out.len() >= MAX_PENDING_WRITE {
            ready!(this.poll_send(cx))?;
        }
        if this.out.is_empty() {
            this.out.reserve(HEADER_ROOM + buf.len());
            this.out.put_bytes(0, HEADER_ROOM);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends what is left and a close frame (normal closure), waits for the client's close
    /// frame, and shuts the socket down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close(close_code::NORMAL, "");
        ready!(this.poll_send(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // The closing handshake: the server closes the TCP connection once the client has
        // answered with its close frame (RFC 6455 §7.1.1); a client still writing its own
        // would otherwise meet a reset. What arrives meanwhile is dropped. The caller bounds
        // the wait.
        let mut scratch = [0u8; 512];
        while !this.eof {
            let mut rb = ReadBuf::new(&mut scratch);
            if ready!(Pin::new(&mut *this).poll_read(cx, &mut rb)).is_err() {
                break;
            }
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The frames are decoded in the caller's buffer, so the stream holds no bytes of its own
/// but those read with the HTTP request: it is readable when its socket is.
impl<S: Transport> Transport for WsStream<S> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_readable(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to a request for `target` with `extra` header lines.
    fn answer(method: &str, target: &str, extra: &str) -> Answer {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(head.as_bytes()).unwrap().is_complete());
        decide(&request, "/mqtt")
    }

    fn status(a: &Answer) -> u16 {
        match a {
            Answer::Upgrade { .. } => 101,
            Answer::Refuse { status, .. } => *status,
        }
    }

    fn protocol(a: Answer) -> Option<&'static str> {
        match a {
            Answer::Upgrade { protocol, .. } => protocol,
            other => panic!("refused: {other:?}"),
        }
    }

    #[test]
    fn upgrade_answer() {
        // RFC 6455 §1.3's example key and answer.
        let a = answer("GET", "/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
        let bytes = String::from_utf8(response(&a)).unwrap();
        assert_eq!(
            bytes,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        // The query is not part of the path.
        assert_eq!(status(&answer("GET", "/mqtt?token=1", "")), 101);
    }

    #[test]
    fn subprotocols() {
        let p = |extra: &str| protocol(answer("GET", "/mqtt", extra));
        assert_eq!(p(""), None);
        assert_eq!(p("Sec-WebSocket-Protocol: mqtt\r\n"), Some("mqtt"));
        assert_eq!(p("Sec-WebSocket-Protocol: mqttv3.1\r\n"), Some("mqttv3.1"));
        // `mqtt` is preferred wherever it is offered, in one header or several.
        assert_eq!(
            p("Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n"),
            Some("mqtt")
        );
        assert_eq!(
            p("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mqttv3.1,mqtt\r\n"),
            Some("mqtt")
        );
        assert_eq!(p("Sec-WebSocket-Protocol: \r\n"), None);
        for other in ["chat, wamp", "MQTT", "mqttv5"] {
            let a = answer(
                "GET",
                "/mqtt",
                &format!("Sec-WebSocket-Protocol: {other}\r\n"),
            );
            assert_eq!(status(&a), 400, "{other}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(status(&answer("GET", "/", "")), 404);
        assert_eq!(status(&answer("GET", "/mqtt/", "")), 404);
        assert_eq!(status(&answer("POST", "/other", "")), 404);
        assert_eq!(status(&answer("POST", "/mqtt", "")), 405);
        let plain = |head: &str| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            assert!(request.parse(head.as_bytes()).unwrap().is_complete());
            status(&decide(&request, "/mqtt"))
        };
        assert_eq!(plain("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(plain("GET /other HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
        assert_eq!(
            plain("GET /mqtt HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            400
        );
        assert_eq!(
            plain(
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
            426
        );
        assert_eq!(
            plain(
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n"
            ),
            400
        );
        assert_eq!(
            plain(
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: close\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
            400
        );
        let text = String::from_utf8(response(&Answer::refuse(404, "not here"))).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 9\r\nConnection: close\r\n\r\nnot here\n"
        );
    }

    #[test]
    fn message_limit_follows_the_packet_limit() {
        assert_eq!(
            WsSettings::new("/", 1024 * 1024).max_message,
            2 * 1024 * 1024
        );
        assert_eq!(WsSettings::new("/", 100).max_message, 64 * 1024);
        assert_eq!(
            WsSettings::new("/", u32::MAX).max_message,
            usize::try_from(u32::MAX)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
        );
    }
}
