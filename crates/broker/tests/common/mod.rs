//! Test harness: a broker on a free port and a raw MQTT peer that sends and receives exact
//! packets through the codec, so tests see what a client library would hide.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sagitta_broker::{Broker, Config};
use sagitta_proto::{
    ConnAck, Connect, Disconnect, MqttStr, Packet, ProtocolVersion, PubResponse, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker on 127.0.0.1 with a free port.
pub async fn broker() -> Broker {
    broker_with(Config::default().in_memory()).await
}

/// A broker with `config`, listening on a free port of 127.0.0.1. In memory unless the test
/// names a data directory of its own.
pub async fn broker_with(mut config: Config) -> Broker {
    config.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    if config.data_dir == Config::default().data_dir {
        config.persistence = false;
    }
    Broker::start(config).await.expect("broker starts")
}

pub fn addr(broker: &Broker) -> SocketAddr {
    broker.local_addrs()[0]
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

pub fn mstr(v: &str) -> MqttStr {
    MqttStr::new(v).unwrap()
}

pub fn pid(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap()
}

/// A CONNECT for `version` and `client_id` (clean start, keep-alive 60).
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect::new(version, MqttStr::new(client_id).unwrap())
}

/// A PUBLISH; `packet_id` is set for QoS > 0.
pub fn publish(t: &str, payload: &str, qos: QoS, retain: bool, packet_id: u16) -> Publish {
    let mut p = Publish::new(topic(t), Bytes::copy_from_slice(payload.as_bytes()));
    p.qos = qos;
    p.retain = retain;
    p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(packet_id));
    p
}

/// A raw MQTT peer.
pub struct Peer {
    pub version: ProtocolVersion,
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Peer {
    /// Opens a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Peer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Peer {
            version,
            stream,
            rbuf: BytesMut::new(),
        }
    }

    /// Opens a TCP connection from `local` (any port) without sending anything: tests that
    /// open thousands of connections spread them over several 127.0.0.x addresses.
    pub async fn open_from(addr: SocketAddr, local: IpAddr, version: ProtocolVersion) -> Peer {
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        socket.bind(SocketAddr::new(local, 0)).expect("bind");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Peer {
            version,
            stream,
            rbuf: BytesMut::new(),
        }
    }

    /// Connects with `connect` and returns the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Peer, ConnAck) {
        let mut peer = Peer::open(addr, connect.protocol).await;
        peer.send(Packet::Connect(Box::new(connect))).await;
        match peer.recv().await {
            Packet::ConnAck(ack) => (peer, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with a clean start and expects success.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Peer {
        let (peer, ack) = Self::connect_with(addr, connect_packet(version, client_id)).await;
        assert_eq!(ack.reason, ReasonCode::Success, "CONNACK {ack:?}");
        peer
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).unwrap();
        self.send_raw(&buf).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Writes `bytes`; an error once the broker has closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet, or `None` if the broker closed the connection. Fails after [`WAIT`].
    pub async fn try_recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.next_packet())
            .await
            .expect("timed out waiting for a packet")
    }

    async fn next_packet(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.rbuf, self.version, usize::MAX).expect("decodes") {
                return Some(p);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next packet; fails if the connection closes or nothing comes.
    pub async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("connection closed")
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Ok(p) = tokio::time::timeout(QUIET, self.next_packet()).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Asserts that the broker closes the connection (after any packets, which are returned).
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        while let Some(p) = self.try_recv().await {
            before.push(p);
        }
        before
    }

    /// Subscribes to one filter with `options` and returns the SUBACK reasons.
    pub async fn subscribe_opts(
        &mut self,
        f: &str,
        options: SubscriptionOptions,
        id: u16,
    ) -> Vec<ReasonCode> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            filters: vec![(filter(f), options)],
            properties: Default::default(),
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, pid(id));
                ack.reasons
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter at `qos` and checks it was granted.
    pub async fn subscribe(&mut self, f: &str, qos: QoS) {
        let reasons = self
            .subscribe_opts(f, SubscriptionOptions::new(qos), 1)
            .await;
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0] as u8, qos as u8, "granted QoS");
    }

    pub async fn unsubscribe(&mut self, f: &str, id: u16) -> Vec<ReasonCode> {
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(id),
            filters: vec![filter(f)],
            properties: Default::default(),
        }))
        .await;
        match self.recv().await {
            Packet::UnsubAck(ack) => ack.reasons,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow as a well-behaved client.
    pub async fn publish(&mut self, t: &str, payload: &str, qos: QoS, retain: bool) {
        self.send(Packet::Publish(publish(t, payload, qos, retain, 1)))
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) => assert!(a.reason.is_success(), "{a:?}"),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::PubRec(r) => assert!(r.reason.is_success(), "{r:?}"),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(PubResponse::new(pid(1)))).await;
                match self.recv().await {
                    Packet::PubComp(_) => {}
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Sends a QoS 1/2 PUBLISH with packet id `id` and returns the reason code of the PUBACK
    /// or PUBREC that answers it (a refused one ends the flow there).
    pub async fn publish_reason(
        &mut self,
        t: &str,
        payload: &str,
        qos: QoS,
        id: u16,
    ) -> ReasonCode {
        self.send(Packet::Publish(publish(t, payload, qos, false, id)))
            .await;
        match self.recv().await {
            Packet::PubAck(a) | Packet::PubRec(a) if a.packet_id == pid(id) => a.reason,
            other => panic!("expected PUBACK/PUBREC for {id}, got {other:?}"),
        }
    }

    /// Acknowledges a received PUBLISH as a well-behaved client (QoS 2: PUBREC, then expects
    /// PUBREL and answers PUBCOMP).
    pub async fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubResponse::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubResponse::new(id))).await;
                match self.recv().await {
                    Packet::PubRel(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(PubResponse::new(id))).await;
            }
        }
    }

    /// Round trip to the broker: everything sent before has been processed afterwards.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
    }

    /// Shuts down the write side of the socket (TCP FIN) without DISCONNECT; the read side
    /// stays open.
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.expect("shutdown");
    }

    /// Drops the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        drop(self);
    }
}
