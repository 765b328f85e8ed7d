//! Opening a connection: TCP, the TLS handshake when TLS is on, CONNECT, CONNACK.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rand::Rng as _;
use sagitta_proto::scram::{MECHANISM, ScramClient, ScramFinal};
use sagitta_proto::{ConnAck, Connect, MqttStr, Packet, ProtocolVersion, ReasonCode, decode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ConnectError, ProtocolError, ReasonString};
use crate::options::Options;
use crate::tls::{Tls, rustls_error};
use crate::transport::Stream;

/// Bytes reserved in the read buffer before each read.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// A connection whose CONNACK accepted us. `rbuf` may already hold the packets that followed
/// the CONNACK.
pub(crate) struct Established {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub connack: ConnAck,
}

/// Connects to `opts.addr`, runs the TLS handshake if TLS is on, sends `connect` and waits
/// for the CONNACK, all within the connect timeout.
pub(crate) async fn establish(
    opts: &Options,
    connect: &Connect,
) -> Result<Established, ConnectError> {
    let addr = opts.addr.as_str();
    match tokio::time::timeout(opts.connect_timeout, attempt(opts, connect)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            addr: addr.to_owned(),
            timeout: opts.connect_timeout,
        }),
    }
}

async fn attempt(opts: &Options, connect: &Connect) -> Result<Established, ConnectError> {
    let version = connect.protocol;
    let mut connect = connect.clone();
    let mut auth = Auth::None;
    if let Some(scram) = &opts.scram {
        let nonce: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let (client, first) = ScramClient::start(&scram.username, &scram.password, &nonce);
        connect.properties.authentication_method = Some(scram_method());
        connect.properties.authentication_data = Some(first.into());
        auth = Auth::Started(client);
    }
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect))
        .encode(version, &mut out)
        .map_err(|e| ConnectError::InvalidOptions(e.to_string()))?;

    let io_err = |e| stream_error(&opts.addr, e);
    if let Some(connector) = &opts.connector {
        let mut stream = (connector.0)().await.map_err(io_err)?;
        let (rbuf, connack) = exchange(&mut stream, &out, opts, version, auth).await?;
        return Ok(Established {
            stream: Stream::Boxed(stream),
            rbuf,
            connack,
        });
    }
    let tcp = TcpStream::connect(opts.addr.as_str())
        .await
        .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    if let Some(ws) = &opts.ws {
        let ws_err = |e| ConnectError::Io {
            addr: ws.url.clone(),
            source: Arc::new(e),
        };
        let mut stream: crate::options::BoxedStream = match &opts.tls {
            None => Box::new(crate::ws::handshake(ws, tcp).await.map_err(ws_err)?),
            Some(tls) => {
                let tls_stream = handshake(tls, tcp, &opts.addr).await?;
                Box::new(crate::ws::handshake(ws, tls_stream).await.map_err(ws_err)?)
            }
        };
        let (rbuf, connack) = exchange(&mut stream, &out, opts, version, auth).await?;
        return Ok(Established {
            stream: Stream::Boxed(stream),
            rbuf,
            connack,
        });
    }
    match &opts.tls {
        None => {
            let mut tcp = tcp;
            let (rbuf, connack) = exchange(&mut tcp, &out, opts, version, auth).await?;
            Ok(Established {
                stream: Stream::Tcp(tcp),
                rbuf,
                connack,
            })
        }
        Some(tls) => {
            let mut tls_stream = handshake(tls, tcp, &opts.addr).await?;
            let (rbuf, connack) = exchange(&mut tls_stream, &out, opts, version, auth).await?;
            Ok(Established {
                stream: Stream::Tls(Box::new(tls_stream)),
                rbuf,
                connack,
            })
        }
    }
}

/// The TLS handshake over `tcp`.
async fn handshake(
    tls: &Tls,
    tcp: TcpStream,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| {
            if rustls_error(&e).is_some() {
                return stream_error(addr, e);
            }
            let why = if e.kind() == io::ErrorKind::UnexpectedEof {
                "the broker closed the connection during the TLS handshake (is this port a \
                 TLS listener?)"
                    .to_owned()
            } else {
                format!("TLS handshake: {e}")
            };
            ConnectError::Io {
                addr: addr.to_owned(),
                source: Arc::new(io::Error::new(e.kind(), why)),
            }
        })
}

/// Where enhanced authentication stands before CONNACK.
enum Auth {
    /// Not used.
    None,
    /// SCRAM: client-first sent with CONNECT.
    Started(ScramClient),
    /// SCRAM: client-final sent; the CONNACK must carry the broker's signature.
    Answered(ScramFinal),
}

/// The Authentication Method `SCRAM-SHA-256`.
fn scram_method() -> MqttStr {
    MqttStr::from_static(MECHANISM).unwrap_or_else(|_| MqttStr::empty())
}

/// Sends the encoded CONNECT in `out` and reads up to the CONNACK, answering the broker's
/// AUTH challenge when `auth` has begun an exchange.
async fn exchange<S>(
    stream: &mut S,
    out: &[u8],
    opts: &Options,
    version: ProtocolVersion,
    mut auth: Auth,
) -> Result<(BytesMut, ConnAck), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io_err = |e| stream_error(&opts.addr, e);
    stream.write_all(out).await.map_err(io_err)?;
    // TLS may keep records inside rustls until flushed (a no-op for TCP).
    stream.flush().await.map_err(io_err)?;
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if opts.tls.is_none() && looks_like_tls(&rbuf) {
            return Err(ConnectError::TlsRequired {
                addr: opts.addr.clone(),
            });
        }
        let packet = decode(&mut rbuf, version, opts.max_incoming)
            .map_err(|e| ConnectError::Protocol(e.into()))?;
        match packet {
            Some(Packet::ConnAck(connack)) => {
                check_connack(&connack)?;
                let scram_error = |error| ConnectError::Scram {
                    addr: opts.addr.clone(),
                    error,
                };
                match auth {
                    Auth::None => {}
                    // Accepted without a challenge: nothing proved the broker knows us.
                    Auth::Started(_) => {
                        return Err(scram_error(sagitta_proto::scram::ScramError::Malformed(
                            "the broker accepted without a SCRAM exchange",
                        )));
                    }
                    Auth::Answered(last) => {
                        let data = connack.properties.authentication_data.as_deref();
                        last.verify(data.unwrap_or_default()).map_err(scram_error)?;
                    }
                }
                return Ok((rbuf, connack));
            }
            Some(Packet::Auth(challenge)) => {
                let Auth::Started(client) = auth else {
                    return Err(ProtocolError::AuthNotSupported.into());
                };
                let method = scram_method();
                if challenge.reason != ReasonCode::ContinueAuthentication
                    || challenge.properties.authentication_method.as_ref() != Some(&method)
                {
                    return Err(ProtocolError::Unexpected(sagitta_proto::PacketType::Auth).into());
                }
                let data = challenge.properties.authentication_data.as_deref();
                let (last, answer) = client.respond(data.unwrap_or_default()).map_err(|error| {
                    ConnectError::Scram {
                        addr: opts.addr.clone(),
                        error,
                    }
                })?;
                let mut reply = sagitta_proto::Auth {
                    reason: ReasonCode::ContinueAuthentication,
                    ..sagitta_proto::Auth::default()
                };
                reply.properties.authentication_method = Some(method);
                reply.properties.authentication_data = Some(answer.into());
                let mut buf = BytesMut::new();
                Packet::Auth(reply)
                    .encode(version, &mut buf)
                    .map_err(|e| ConnectError::InvalidOptions(e.to_string()))?;
                stream.write_all(&buf).await.map_err(io_err)?;
                stream.flush().await.map_err(io_err)?;
                auth = Auth::Answered(last);
            }
            Some(other) => return Err(ProtocolError::Unexpected(other.packet_type()).into()),
            None => {
                rbuf.reserve(READ_CHUNK);
                if stream.read_buf(&mut rbuf).await.map_err(io_err)? == 0 {
                    return Err(ConnectError::Closed);
                }
            }
        }
    }
}

/// True if `input` starts like a TLS record (an alert or a handshake, TLS 1.x): what a TLS
/// listener answers to a plain CONNECT. No MQTT broker sends those bytes: as a fixed header
/// they would be a CONNECT.
fn looks_like_tls(input: &[u8]) -> bool {
    matches!(input, [0x15 | 0x16, 0x03, ..])
}

/// An I/O error before CONNACK. A TLS error (from rustls) is a handshake failure: with TLS
/// 1.3 the broker checks our certificate after our side of the handshake is done, so its
/// refusal arrives as an alert on the first read. A TLS stream closed without close_notify is
/// a close.
fn stream_error(addr: &str, e: io::Error) -> ConnectError {
    if let Some(error) = rustls_error(&e) {
        return ConnectError::TlsHandshake {
            addr: addr.to_owned(),
            error: error.clone(),
        };
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return ConnectError::Closed;
    }
    ConnectError::Io {
        addr: addr.to_owned(),
        source: Arc::new(e),
    }
}

/// Turns a refusing CONNACK into its error.
fn check_connack(connack: &ConnAck) -> Result<(), ConnectError> {
    let reason = connack.reason;
    if reason.is_success() {
        return Ok(());
    }
    let props = &connack.properties;
    let reason_string = ReasonString::from_opt(props.reason_string.as_ref());
    Err(match reason {
        ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword => {
            ConnectError::NotAuthorized {
                reason,
                reason_string,
            }
        }
        _ => ConnectError::Refused {
            reason,
            reason_string,
            server_reference: props.server_reference.as_ref().map(|s| s.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records_are_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        // CONNACK, and input too short to tell.
        assert!(!looks_like_tls(&[0x20, 0x02, 0x00, 0x00]));
        assert!(!looks_like_tls(&[0x15]));
    }

    #[test]
    fn refusals_are_typed() {
        assert!(check_connack(&ConnAck::new(false, ReasonCode::Success)).is_ok());
        let e = check_connack(&ConnAck::new(false, ReasonCode::NotAuthorized)).unwrap_err();
        assert!(matches!(e, ConnectError::NotAuthorized { .. }), "{e}");
        assert!(e.is_fatal());
        let mut ack = ConnAck::new(false, ReasonCode::ServerBusy);
        ack.properties.reason_string = Some(sagitta_proto::MqttStr::new("try later").unwrap());
        let e = check_connack(&ack).unwrap_err();
        assert_eq!(e.reason(), Some(ReasonCode::ServerBusy));
        assert!(!e.is_fatal());
        assert_eq!(
            e.to_string(),
            "connection refused by the broker: Server busy (0x89): \"try later\""
        );
    }
}
