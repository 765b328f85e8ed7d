//! MQTT over WebSocket, for listeners of `type = "ws"` and `"wss"` (MQTT 3.1.1 §6, 5.0 §6):
//! the HTTP upgrade ([`accept`]: path, subprotocol, limits) and [`WsStream`], which turns the
//! WebSocket connection into the byte stream that `connection::serve` reads and writes, so
//! every broker semantic is the one of TCP.
//!
//! The upgrade request is read and checked here (httparse; at most 16 KiB of head, 64
//! headers) so that every refusal gets an HTTP answer: 404 for another path (whatever the
//! request), 405 for another method, 426 for a request that is no WebSocket upgrade or
//! another WebSocket version, 400 for a malformed one, 431 for one too large. tungstenite
//! derives the accept key and does the framing.
//!
//! Subprotocol policy (EMQX's default): a client offering `mqtt` gets `mqtt`, else one
//! offering `mqttv3.1` (MQTT 3.1's name, still sent by Paho JavaScript and others for 3.1)
//! gets `mqttv3.1`; a client offering only other names is refused with HTTP 400 (it could not
//! use an answer without one of its names anyway); a request with no `Sec-WebSocket-Protocol`
//! header at all is accepted without one in the answer, for clients that cannot set it (MQTT
//! requires clients to offer `mqtt` [MQTT-6.0.0-3], but some tools and embedded stacks do
//! not).
//!
//! Framing: incoming binary frames (fragmented or not) are one byte stream, so an MQTT packet
//! may span frames and a frame may hold several packets [MQTT-6.0.0-2]. A text frame closes
//! the connection [MQTT-6.0.0-1] (with close code 1003). Pings are answered and close frames
//! acknowledged by tungstenite. Outgoing bytes are buffered and sent as one binary frame per
//! flush: the connection task writes its whole batch and flushes once, so one batch is one
//! frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::{Buf as _, Bytes, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// The subprotocols the broker speaks, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes tungstenite reserves for reading frames, per connection (it reads at most this much
/// per system call; a larger frame grows the buffer for as long as it takes).
const READ_BUFFER: usize = 16 * 1024;

/// Outgoing bytes collected before they go out as a frame even without a flush (the
/// connection task flushes after each batch, well before this).
const MAX_PENDING_WRITE: usize = 1024 * 1024;

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

    fn config(&self) -> WebSocketConfig {
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = READ_BUFFER;
        // Each flush writes at once; nothing waits in tungstenite's buffer for more frames.
        config.write_buffer_size = 0;
        config.max_message_size = Some(self.max_message);
        config.max_frame_size = Some(self.max_message);
        config
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
            accept: derive_accept_key(key),
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
            let tail = buf.split_off(head_len);
            let ws = if tail.is_empty() {
                WebSocketStream::from_raw_socket(stream, Role::Server, Some(settings.config()))
                    .await
            } else {
                WebSocketStream::from_partially_read(
                    stream,
                    tail.to_vec(),
                    Role::Server,
                    Some(settings.config()),
                )
                .await
            };
            Ok((WsStream::new(ws), protocol))
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
    ws: WebSocketStream<S>,
    /// The rest of the last binary message, not yet read.
    pending: Bytes,
    /// Written, not yet sent.
    out: BytesMut,
    /// The peer closed (or the stream ended): reads return end of stream.
    eof: bool,
    /// Our close frame is queued.
    close_queued: bool,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            out: BytesMut::new(),
            eof: false,
            close_queued: false,
        }
    }
}

/// tungstenite's errors as I/O errors: its own I/O errors as they are, the rest (protocol
/// violations, oversized messages) as invalid data.
fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends the bytes written so far as one binary message and flushes.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.out.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            let data = self.out.split().freeze();
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(data))
                .map_err(io_error)?;
        }
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    /// A text frame: a protocol error that closes the connection [MQTT-6.0.0-1]. The close
    /// frame goes out if the socket takes it now.
    fn refuse_text(&mut self, cx: &mut Context<'_>) -> io::Error {
        let frame = CloseFrame {
            code: CloseCode::Unsupported,
            reason: Utf8Bytes::from_static("MQTT needs binary frames"),
        };
        self.close_queued = true;
        if Pin::new(&mut self.ws)
            .start_send(Message::Close(Some(frame)))
            .is_ok()
        {
            let _ = Pin::new(&mut self.ws).poll_flush(cx);
        }
        io::Error::new(
            io::ErrorKind::InvalidData,
            "text frame: MQTT is sent in binary frames [MQTT-6.0.0-1]",
        )
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
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => return Poll::Ready(Err(this.refuse_text(cx))),
                // tungstenite answers pings and acknowledges close frames itself; after a
                // close frame the stream ends.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(e)) => {
                    this.eof = true;
                    return Poll::Ready(Err(io_error(e)));
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
        if this.out.len() >= MAX_PENDING_WRITE {
            ready!(this.poll_send(cx))?;
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    /// Sends what is left and a close frame (normal closure), waits for the client's close
    /// frame, and shuts the socket down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            ready!(this.poll_send(cx))?;
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static(""),
            };
            this.close_queued = true;
            // The peer may have closed first: then there is nothing to send.
            match Pin::new(&mut this.ws).start_send(Message::Close(Some(frame))) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(WsError::Protocol(_)) => {}
                Err(e) => return Poll::Ready(Err(io_error(e))),
            }
        }
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(e) => return Poll::Ready(Err(io_error(e))),
        }
        // The closing handshake: the server closes the TCP connection once the client has
        // answered with its close frame (RFC 6455 §7.1.1); a client still writing its own
        // would otherwise meet a reset. What arrives meanwhile is dropped. The caller bounds
        // the wait.
        while !this.eof {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => this.eof = true,
            }
        }
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

/// Tungstenite may hold frames it has read: a read is tried at once (the default).
impl<S: AsyncRead + AsyncWrite + Unpin + Send> crate::connection::Transport for WsStream<S> {}

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
        assert_eq!(WsSettings::new("/", u32::MAX).config().max_frame_size, {
            Some(
                usize::try_from(u32::MAX)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(2),
            )
        });
    }
}
