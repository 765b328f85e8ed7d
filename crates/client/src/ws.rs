//! MQTT over WebSocket (`ws://` and `wss://` addresses): the URL parsed into the TCP address
//! and the request path, the client handshake (subprotocol `mqtt`, MQTT-6.0.0-3), and
//! [`WsIo`], which turns the WebSocket connection into the byte stream the event loop reads
//! and writes: reads give the payloads of binary messages, a flush sends what was written
//! since the last one as one binary message. tungstenite does the framing (the client
//! masks its frames, answers pings and close frames).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_core::Stream as _;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Default ports of `ws://` and `wss://` URLs.
const WS_PORT: u16 = 80;
const WSS_PORT: u16 = 443;

/// A `ws://` or `wss://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsUrl {
    /// The URL as given (the handshake's request target and `Host`).
    pub url: String,
    /// `host:port` to open TCP to.
    pub addr: String,
    /// `wss://`: TLS under the WebSocket.
    pub secure: bool,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path]` or `wss://...`; `None` for other addresses.
    pub fn parse(addr: &str) -> Option<Result<WsUrl, String>> {
        let (rest, secure) = if let Some(rest) = addr.strip_prefix("ws://") {
            (rest, false)
        } else if let Some(rest) = addr.strip_prefix("wss://") {
            (rest, true)
        } else {
            return None;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.is_empty() {
            return Some(Err(format!("{addr}: no host in the WebSocket URL")));
        }
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6
                .split_once(']')
                .is_some_and(|(_, rest)| rest.starts_with(':')),
            None => authority.contains(':'),
        };
        let port = if secure { WSS_PORT } else { WS_PORT };
        let host_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{port}")
        };
        let url = if rest.len() == authority.len() {
            format!("{addr}/")
        } else {
            addr.to_owned()
        };
        Some(Ok(WsUrl {
            url,
            addr: host_port,
            secure,
        }))
    }
}

/// The client handshake over `stream`: `GET` the URL with `Sec-WebSocket-Protocol: mqtt`.
pub(crate) async fn handshake<S>(url: &WsUrl, stream: S) -> io::Result<WsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| match e {
            WsError::Io(e) => e,
            WsError::Http(response) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the WebSocket upgrade was refused with HTTP {}",
                    response.status()
                ),
            ),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })?;
    Ok(WsIo {
        ws,
        pending: Bytes::new(),
        out: BytesMut::new(),
        eof: false,
    })
}

/// A WebSocket connection as a byte stream (see the module documentation).
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary message, not yet read.
    pending: Bytes,
    /// Written, not yet sent.
    out: BytesMut,
    /// The broker closed (or the stream ended).
    eof: bool,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
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
                Some(Ok(Message::Text(_))) => {
                    this.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the broker sent a text frame: MQTT is sent in binary frames",
                    )));
                }
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

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Sends what was written as one binary message, and flushes.
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
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = |s: &str| WsUrl::parse(s).unwrap().unwrap();
        assert_eq!(
            u("ws://broker.example/mqtt"),
            WsUrl {
                url: "ws://broker.example/mqtt".into(),
                addr: "broker.example:80".into(),
                secure: false
            }
        );
        assert_eq!(u("wss://broker.example").addr, "broker.example:443");
        assert_eq!(u("wss://broker.example").url, "wss://broker.example/");
        assert!(u("wss://broker.example").secure);
        assert_eq!(u("ws://127.0.0.1:8080/mqtt?x=1").addr, "127.0.0.1:8080");
        assert_eq!(u("ws://[::1]:9001/mqtt").addr, "[::1]:9001");
        assert_eq!(u("ws://[::1]/mqtt").addr, "[::1]:80");
        assert!(WsUrl::parse("broker.example:1883").is_none());
        assert!(WsUrl::parse("ws:///mqtt").unwrap().is_err());
    }
}
