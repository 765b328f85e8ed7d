//! One MQTT connection of a simulated client: a `TcpStream` (TCP_NODELAY), or TLS over it,
//! with a read buffer decoded by `sagitta_proto::decode` and a write buffer filled by
//! `Packet::encode` and written with one `write_all` per batch.
//!
//! Only `&self` socket operations are used to wait for input (`readable`), so a task can
//! wait for incoming bytes in a `select!` while owning the link; `try_fill` then reads what
//! is there without waiting. Over TLS, `try_fill` polls the TLS stream once per read with a
//! waker that does nothing, until it would block: then nothing decrypted is left inside
//! rustls, and waiting for the socket to be readable is right.

use std::future::Future;
use std::io;
use std::num::NonZeroU16;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sagitta_proto::{
    ConnAck, Connect, Disconnect, MqttStr, Packet, ProtocolVersion, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions, TopicFilter, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 24;
/// Read buffer space reserved before each read.
const READ_CHUNK: usize = 64 * 1024;
/// Time allowed for TCP connect + CONNECT/CONNACK, and for SUBSCRIBE/SUBACK.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive announced in CONNECT; the clients ping at half of it when idle.
pub const KEEP_ALIVE: u16 = 60;
/// TLS reads per `try_fill` at most; more input then waits for the next call.
const TLS_READS: usize = 16;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// The broker sent bytes that do not decode.
    #[error("bad packet from broker: {0}")]
    Decode(#[from] sagitta_proto::DecodeError),
    /// A packet could not be encoded.
    #[error("cannot encode packet: {0}")]
    Encode(#[from] sagitta_proto::EncodeError),
    /// The broker closed the connection.
    #[error("connection closed by broker")]
    Closed,
    /// The broker sent DISCONNECT.
    #[error("broker sent DISCONNECT ({0:?})")]
    Disconnected(ReasonCode),
    /// CONNACK refused the connection.
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
    /// SUBACK refused the subscription.
    #[error("subscription to {0} refused: {1:?}")]
    SubscribeRefused(String, ReasonCode),
    /// A packet that does not fit the exchange.
    #[error("unexpected {0} from broker")]
    Unexpected(&'static str),
    /// The broker did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// User name and password for CONNECT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// User Name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a str>,
}

/// What the CONNACK told us.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// The broker's Receive Maximum (5.0), or 65 535.
    pub receive_maximum: u16,
    /// Keep-alive in force (the 5.0 Server Keep Alive if any).
    pub keep_alive: u16,
}

/// TLS for every connection of a run.
#[derive(Debug, Clone)]
pub struct LinkTls {
    /// The rustls configuration (from `--cafile`, `--cert`, `--key`, `--insecure`).
    pub config: Arc<ClientConfig>,
    /// The name the broker's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// The byte stream.
#[derive(Debug)]
enum Transport {
    Tcp(TcpStream),
    /// Boxed: the rustls state is large.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection to the broker.
#[derive(Debug)]
pub struct Link {
    stream: Transport,
    /// TLS: decrypted input may still wait inside rustls (a `try_fill` stopped early, or
    /// `fill` read once), so `readable` must not wait for the socket.
    more: bool,
    /// Bytes received and not decoded yet.
    rbuf: BytesMut,
    /// Encoded packets waiting for [`Link::flush`].
    pub wbuf: BytesMut,
    version: ProtocolVersion,
}

impl Link {
    /// Opens a TCP connection (and TLS over it with `tls`), sends CONNECT and waits for a
    /// successful CONNACK.
    pub async fn connect(
        addr: &str,
        tls: Option<&LinkTls>,
        version: ProtocolVersion,
        client_id: &str,
        credentials: Credentials<'_>,
        persistent: bool,
    ) -> Result<(Self, Session), LinkError> {
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            Self::connect_inner(addr, tls, version, client_id, credentials, persistent),
        )
        .await
        .map_err(|_| LinkError::Timeout("CONNACK"))?
    }

    async fn connect_inner(
        addr: &str,
        tls: Option<&LinkTls>,
        version: ProtocolVersion,
        client_id: &str,
        credentials: Credentials<'_>,
        persistent: bool,
    ) -> Result<(Self, Session), LinkError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Transport::Tcp(tcp),
            Some(tls) => Transport::Tls(Box::new(
                tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(LinkError::Tls)?,
            )),
        };
        let mut link = Self {
            stream,
            more: false,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            version,
        };
        let id =
            MqttStr::new(client_id.to_owned()).map_err(|_| LinkError::Unexpected("client id"))?;
        let mut connect = Connect::new(version, id);
        connect.keep_alive = KEEP_ALIVE;
        if let Some(user) = credentials.username {
            connect.username = Some(
                MqttStr::new(user.to_owned()).map_err(|_| LinkError::Unexpected("user name"))?,
            );
        }
        connect.password = credentials
            .password
            .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
        if version.is_v5() {
            connect.properties.receive_maximum = NonZeroU16::new(u16::MAX);
        }
        if persistent {
            connect.clean_start = false;
            if version.is_v5() {
                connect.properties.session_expiry_interval = Some(3600);
            }
        }
        link.queue(&Packet::Connect(Box::new(connect)))?;
        link.flush().await?;
        let connack: ConnAck = match link.recv().await? {
            Packet::ConnAck(c) => c,
            _ => return Err(LinkError::Unexpected("packet before CONNACK")),
        };
        if connack.reason.is_error() {
            return Err(LinkError::Refused(connack.reason));
        }
        let session = Session {
            receive_maximum: connack
                .properties
                .receive_maximum
                .map_or(u16::MAX, NonZeroU16::get),
            keep_alive: connack.properties.server_keep_alive.unwrap_or(KEEP_ALIVE),
        };
        Ok((link, session))
    }

    /// Subscribes to `filter` and waits for a SUBACK granting it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), LinkError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.subscribe_inner(filter, qos))
            .await
            .map_err(|_| LinkError::Timeout("SUBACK"))?
    }

    async fn subscribe_inner(&mut self, filter: &str, qos: QoS) -> Result<(), LinkError> {
        let topic = TopicFilter::new(filter.to_owned()).map_err(|_| {
            LinkError::SubscribeRefused(filter.to_owned(), ReasonCode::TopicFilterInvalid)
        })?;
        let packet_id = NonZeroU16::MIN;
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(topic, SubscriptionOptions::new(qos))],
            properties: Default::default(),
        }))?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(SubAck {
                    packet_id: id,
                    reasons,
                    ..
                }) if id == packet_id => {
                    return match reasons.first() {
                        Some(r) if r.is_success() => Ok(()),
                        Some(r) => Err(LinkError::SubscribeRefused(filter.to_owned(), *r)),
                        None => Err(LinkError::Unexpected("empty SUBACK")),
                    };
                }
                // A retained message may come first; it is not part of the run.
                Packet::PingResp | Packet::Publish(_) => {}
                Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason)),
                _ => return Err(LinkError::Unexpected("packet before SUBACK")),
            }
        }
    }

    /// Appends a packet to the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), LinkError> {
        packet.encode(self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Writes the whole write buffer (one `write_all`; TLS: and a flush) and empties it.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        if !self.wbuf.is_empty() {
            match &mut self.stream {
                Transport::Tcp(tcp) => tcp.write_all(&self.wbuf).await?,
                Transport::Tls(tls) => {
                    tls.write_all(&self.wbuf).await?;
                    tls.flush().await?;
                }
            }
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Waits until the socket may have bytes to read (for `select!`).
    pub async fn readable(&self) -> io::Result<()> {
        match &self.stream {
            Transport::Tcp(tcp) => tcp.readable().await,
            Transport::Tls(_) if self.more => Ok(()),
            Transport::Tls(tls) => tls.get_ref().0.readable().await,
        }
    }

    /// Reads what the socket holds now without waiting. `Ok(false)` on end of stream.
    pub fn try_fill(&mut self) -> Result<bool, LinkError> {
        let tcp = match &mut self.stream {
            Transport::Tcp(tcp) => tcp,
            Transport::Tls(tls) => {
                return try_fill_tls(tls, &mut self.rbuf, &mut self.more);
            }
        };
        loop {
            self.rbuf.reserve(READ_CHUNK);
            match tcp.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                // A full read: there may be more.
                Ok(n) if n >= READ_CHUNK => continue,
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for bytes and reads them. `Ok(false)` on end of stream.
    pub async fn fill(&mut self) -> Result<bool, LinkError> {
        let tcp = match &mut self.stream {
            Transport::Tcp(tcp) => tcp,
            Transport::Tls(tls) => {
                self.rbuf.reserve(READ_CHUNK);
                return match tls.read_buf(&mut self.rbuf).await {
                    Ok(0) => Ok(false),
                    Ok(_) => {
                        self.more = true;
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
        };
        loop {
            tcp.readable().await?;
            self.rbuf.reserve(READ_CHUNK);
            match tcp.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes the next complete packet out of the read buffer.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, LinkError> {
        Ok(decode(&mut self.rbuf, self.version, MAX_PACKET)?)
    }

    /// Waits for the next packet.
    pub async fn recv(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            if !self.fill().await? {
                return Err(LinkError::Closed);
            }
        }
    }

    /// Sends DISCONNECT (best effort) and closes the connection.
    pub async fn disconnect(mut self) {
        if self
            .queue(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        let shutdown = async {
            match &mut self.stream {
                Transport::Tcp(tcp) => tcp.shutdown().await,
                // Sends a close_notify first.
                Transport::Tls(tls) => tls.shutdown().await,
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), shutdown).await;
    }
}

/// `try_fill` over TLS: reads (decrypting) until the stream would block, at most
/// [`TLS_READS`] times; `more` tells whether input may be left inside rustls. A read that
/// returns `Pending` registered no waker that matters: the caller waits with `readable`.
fn try_fill_tls(
    tls: &mut TlsStream<TcpStream>,
    rbuf: &mut BytesMut,
    more: &mut bool,
) -> Result<bool, LinkError> {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..TLS_READS {
        rbuf.reserve(READ_CHUNK);
        let read = pin!(tls.read_buf(rbuf));
        match read.poll(&mut cx) {
            Poll::Ready(Ok(0)) => return Ok(false),
            Poll::Ready(Ok(_)) => {}
            // The broker closed TCP without a TLS close_notify: the end, as over TCP.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Pending => {
                *more = false;
                return Ok(true);
            }
        }
    }
    *more = true;
    Ok(true)
}
