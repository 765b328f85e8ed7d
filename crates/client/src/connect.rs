//! Opening a connection: TCP, CONNECT, CONNACK.

use std::sync::Arc;

use bytes::BytesMut;
use sagitta_proto::{ConnAck, Connect, Packet, ReasonCode, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ConnectError, ProtocolError, ReasonString};
use crate::options::Options;

/// Bytes reserved in the read buffer before each read.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// A connection whose CONNACK accepted us. `rbuf` may already hold the packets that followed
/// the CONNACK.
pub(crate) struct Established {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub connack: ConnAck,
}

/// Connects to `opts.addr`, sends `connect` and waits for the CONNACK, all within the connect
/// timeout.
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
    let io_err = |e: std::io::Error| ConnectError::Io {
        addr: opts.addr.clone(),
        source: Arc::new(e),
    };
    let version = connect.protocol;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect.clone()))
        .encode(version, &mut out)
        .map_err(|e| ConnectError::InvalidOptions(e.to_string()))?;

    let mut stream = TcpStream::connect(opts.addr.as_str())
        .await
        .map_err(io_err)?;
    stream.set_nodelay(true).map_err(io_err)?;
    stream.write_all(&out).await.map_err(io_err)?;

    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let packet = decode(&mut rbuf, version, opts.max_incoming)
            .map_err(|e| ConnectError::Protocol(e.into()))?;
        match packet {
            Some(Packet::ConnAck(connack)) => {
                check_connack(&connack)?;
                return Ok(Established {
                    stream,
                    rbuf,
                    connack,
                });
            }
            Some(Packet::Auth(_)) => return Err(ProtocolError::AuthNotSupported.into()),
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
