//! The connection's byte stream: plain TCP or TLS over TCP, split into the halves the event
//! loop reads and writes at the same time.
//!
//! TCP keeps tokio's owned halves and writes with `try_write` first (no wake-up needed when
//! the socket has room). TLS splits the `tokio-rustls` stream with [`tokio::io::split`]; a
//! write there may leave encrypted records inside rustls when the socket is full, so the
//! writer remembers that it owes a flush and the event loop keeps polling it until done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;

use crate::options::BoxedStream;

/// A connected stream, before it is split.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP, the handshake done (boxed: the rustls state is large).
    Tls(Box<TlsStream<TcpStream>>),
    /// A stream from a `Connector` (in-process, e.g. the broker's bridges).
    Boxed(BoxedStream),
}

impl Stream {
    /// The read and write halves.
    pub(crate) fn into_split(self) -> (Reader, Writer) {
        match self {
            Stream::Tcp(tcp) => {
                let (rd, wr) = tcp.into_split();
                (Reader::Tcp(rd), Writer::Tcp(wr))
            }
            Stream::Tls(tls) => {
                let (rd, wr) = tokio::io::split(*tls);
                (
                    Reader::Tls(rd),
                    Writer::Tls {
                        half: wr,
                        unflushed: false,
                    },
                )
            }
            Stream::Boxed(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                (
                    Reader::Boxed(rd),
                    Writer::Boxed {
                        half: wr,
                        unflushed: false,
                    },
                )
            }
        }
    }
}

/// The read half.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
    Boxed(ReadHalf<BoxedStream>),
}

impl AsyncRead for Reader {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(rd) => Pin::new(rd).poll_read(cx, buf),
            Reader::Tls(rd) => match Pin::new(rd).poll_read(cx, buf) {
                // The broker closed TCP without a TLS close_notify. MQTT packets carry their
                // own length, so no truncation can go unnoticed: it is the end of stream, as
                // over TCP.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
            Reader::Boxed(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

/// The write half.
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Tls {
        half: WriteHalf<TlsStream<TcpStream>>,
        /// Bytes were handed to rustls since the last completed flush: encrypted records
        /// may still wait inside it for room in the socket.
        unflushed: bool,
    },
    Boxed {
        half: WriteHalf<BoxedStream>,
        unflushed: bool,
    },
}

impl Writer {
    /// True if there is something to write: bytes in `buf`, or (TLS) records not flushed.
    #[inline]
    pub(crate) fn has_pending(&self, buf: &BytesMut) -> bool {
        !buf.is_empty()
            || matches!(
                self,
                Writer::Tls {
                    unflushed: true,
                    ..
                } | Writer::Boxed {
                    unflushed: true,
                    ..
                }
            )
    }

    /// Writes what the socket takes now, without waiting, and removes it from `buf`.
    /// `Ok(true)` if anything was written.
    #[inline]
    pub(crate) fn try_write(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        match self {
            Writer::Tcp(wr) => match wr.try_write(buf) {
                Ok(n) => {
                    buf.advance(n);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e),
            },
            Writer::Tls { half, unflushed } => try_write_tls(half, unflushed, buf),
            Writer::Boxed { half, unflushed } => try_write_tls(half, unflushed, buf),
        }
    }

    /// Waits until some of `buf` is written (TLS: or what rustls holds is flushed) and
    /// removes what was written from `buf`. Cancel-safe: if the future is dropped, nothing
    /// was lost, and [`Writer::has_pending`] still says what is left.
    pub(crate) async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => {
                wr.write_buf(buf).await?;
            }
            Writer::Tls { half, unflushed } => write_flushed(half, unflushed, buf).await?,
            Writer::Boxed { half, unflushed } => write_flushed(half, unflushed, buf).await?,
        }
        Ok(())
    }

    /// Writes all of `buf`, then closes our direction (TLS: with a close_notify).
    pub(crate) async fn finish(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => {
                wr.write_all(buf).await?;
                wr.shutdown().await
            }
            Writer::Tls { half, unflushed } => finish_flushed(half, unflushed, buf).await,
            Writer::Boxed { half, unflushed } => finish_flushed(half, unflushed, buf).await,
        }
    }
}

/// `Writer::write` for a stream that may hold bytes until flushed (TLS, boxed).
async fn write_flushed<W: AsyncWrite + Unpin>(
    half: &mut W,
    unflushed: &mut bool,
    buf: &mut BytesMut,
) -> io::Result<()> {
    if !buf.is_empty() {
        if half.write_buf(buf).await? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *unflushed = true;
    }
    if buf.is_empty() && *unflushed {
        half.flush().await?;
        *unflushed = false;
    }
    Ok(())
}

/// `Writer::finish` for a stream that may hold bytes until flushed (TLS, boxed).
async fn finish_flushed<W: AsyncWrite + Unpin>(
    half: &mut W,
    unflushed: &mut bool,
    buf: &[u8],
) -> io::Result<()> {
    half.write_all(buf).await?;
    half.flush().await?;
    *unflushed = false;
    half.shutdown().await
}

/// The TLS counterpart of `try_write`: polls the write and the flush once with a waker that
/// does nothing. A `Pending` here leaves [`Writer::has_pending`] true, so the event loop then
/// polls [`Writer::write`] with its real waker, which registers for the wake-up.
fn try_write_tls<W: AsyncWrite + Unpin>(
    half: &mut W,
    unflushed: &mut bool,
    buf: &mut BytesMut,
) -> io::Result<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut wrote = false;
    while !buf.is_empty() {
        match Pin::new(&mut *half).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                *unflushed = true;
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    if buf.is_empty() && *unflushed {
        match Pin::new(&mut *half).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::server::TlsStream as ServerTls;

    use super::*;

    /// A TLS server on 127.0.0.1 with a fresh self-signed certificate for `localhost`: its
    /// address, and the task accepting one connection and handing it to `serve`.
    async fn server<F, Fut, T>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<T>)
    where
        F: FnOnce(ServerTls<TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
        T: Send + 'static,
    {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(acceptor.accept(tcp).await.unwrap()).await
        });
        (addr, task)
    }

    /// The client side over TLS, split (not verified: the certificate is self-signed).
    async fn client(addr: SocketAddr) -> (Reader, Writer) {
        Stream::Tls(Box::new(tls_client(addr).await)).into_split()
    }

    async fn tls_client(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tls = crate::TlsOptions::insecure().load("localhost:0").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(tls.config)
            .connect(tls.server_name, tcp)
            .await
            .unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Everything written reaches a peer that starts reading only once the socket and
    /// rustls are full, when written as the event loop writes (`try_write`, then `write`
    /// while anything is pending).
    #[tokio::test]
    async fn tls_writes_survive_back_pressure_and_get_flushed() {
        let len = 16 * 1024 * 1024;
        let (addr, peer) = server(move |mut tls| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Exactly `len`: not helped by the close at the end.
            let mut got = vec![0u8; len];
            tls.read_exact(&mut got).await.unwrap();
            got
        })
        .await;
        let (_rd, mut wr) = client(addr).await;
        let data = pattern(len);
        let mut stalls = 0;
        for chunk in data.chunks(100_000) {
            let mut buf = BytesMut::from(chunk);
            while wr.has_pending(&buf) {
                if !wr.try_write(&mut buf).unwrap() {
                    stalls += 1;
                    wr.write(&mut buf).await.unwrap();
                }
            }
        }
        assert!(
            stalls > 0,
            "the socket never filled: the test proves nothing"
        );
        assert!(!wr.has_pending(&BytesMut::new()), "all flushed");
        let got = tokio::time::timeout(Duration::from_secs(10), peer)
            .await
            .expect("everything reached the peer without a close")
            .unwrap();
        wr.finish(&[]).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes changed on the way");
    }

    /// Records that rustls holds after the last write (the socket was full) are flushed:
    /// the writer says they are pending until they are on the wire. With rustls's buffer
    /// unlimited, one `try_write` takes everything while the peer does not read.
    #[tokio::test]
    async fn records_left_inside_rustls_are_flushed() {
        // More than the kernel buffers of a loopback connection hold.
        let len = 32 * 1024 * 1024;
        let (addr, peer) = server(move |mut tls| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = vec![0u8; len];
            tls.read_exact(&mut got).await.unwrap();
            got
        })
        .await;
        let mut stream = tls_client(addr).await;
        stream.get_mut().1.set_buffer_limit(None);
        let (_rd, mut wr) = Stream::Tls(Box::new(stream)).into_split();
        let data = pattern(len);
        let mut buf = BytesMut::from(&data[..]);
        assert!(wr.try_write(&mut buf).unwrap());
        assert!(buf.is_empty(), "rustls took everything");
        assert!(
            wr.has_pending(&buf),
            "the socket is full: records wait inside rustls"
        );
        while wr.has_pending(&buf) {
            if !wr.try_write(&mut buf).unwrap() {
                wr.write(&mut buf).await.unwrap();
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(10), peer)
            .await
            .expect("everything reached the peer")
            .unwrap();
        assert!(got == data, "the bytes changed on the way");
    }

    /// A small write is on the wire once `try_write` (or `write`) says nothing is pending,
    /// without any further call.
    #[tokio::test]
    async fn a_small_tls_write_needs_no_further_call() {
        let (addr, peer) = server(|mut tls| async move {
            let mut got = [0u8; 5];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
            got
        })
        .await;
        let (mut rd, mut wr) = client(addr).await;
        let mut buf = BytesMut::from(&b"hello"[..]);
        assert!(wr.try_write(&mut buf).unwrap());
        if wr.has_pending(&buf) {
            wr.write(&mut buf).await.unwrap();
        }
        assert!(!wr.has_pending(&buf));
        let got = tokio::time::timeout(Duration::from_secs(5), peer)
            .await
            .expect("the peer got the bytes")
            .unwrap();
        assert_eq!(&got, b"hello");
        let mut answer = BytesMut::new();
        while answer.len() < 4 {
            assert!(rd.read_buf(&mut answer).await.unwrap() > 0);
        }
        assert_eq!(&answer[..], b"pong");
    }

    /// A peer that closes TCP without a TLS close_notify ends the stream like a TCP close.
    #[tokio::test]
    async fn a_close_without_close_notify_is_the_end_of_stream() {
        let (addr, peer) = server(|tls| async move {
            let (tcp, _) = tls.into_inner();
            drop(tcp);
        })
        .await;
        let (mut rd, _wr) = client(addr).await;
        peer.await.unwrap();
        let mut buf = BytesMut::new();
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut buf))
            .await
            .expect("the close is seen")
            .unwrap();
        assert_eq!(n, 0);
    }
}
