//! The relay over real sockets: two raw TCP clients, a subscription on `a/+` at QoS 1, and a
//! QoS 0 and a QoS 1 publish, checked byte for byte.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id `id`.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// PUBLISH `payload` on `topic` at `qos` (packet id `id` at QoS 1).
fn publish_packet(topic: &str, qos: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x30 | (qos << 1), body.len() as u8];
    p.extend(body);
    p
}

async fn expect(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0; want.len()];
    timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("timed out")
        .expect("read");
    assert_eq!(got, want);
}

async fn client(addr: std::net::SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&connect_packet(id)).await.unwrap();
    expect(&mut s, &[0x20, 2, 0, 0]).await;
    s
}

#[tokio::test]
async fn forwards_qos0_and_qos1_and_acknowledges() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sagitta_relay::serve(listener));

    let mut sub = client(addr, "sub").await;
    // SUBSCRIBE id 5: a/+ at QoS 1 -> SUBACK granting 1.
    sub.write_all(&[0x82, 8, 0, 5, 0, 3, b'a', b'/', b'+', 1])
        .await
        .unwrap();
    expect(&mut sub, &[0x90, 3, 0, 5, 1]).await;

    let mut publisher = client(addr, "pub").await;
    // Not matching a/+: never delivered (the next bytes the subscriber sees are the QoS 0 one).
    publisher
        .write_all(&publish_packet("b/x", 0, 0, b"no"))
        .await
        .unwrap();
    publisher
        .write_all(&publish_packet("a/b/c", 0, 0, b"no"))
        .await
        .unwrap();
    // QoS 0: forwarded as is.
    let q0 = publish_packet("a/b", 0, 0, b"hello");
    publisher.write_all(&q0).await.unwrap();
    expect(&mut sub, &q0).await;

    // QoS 1 with packet id 700: PUBACK 700 to the publisher, delivered at QoS 1 with the
    // subscriber's own packet id (its first: 1).
    publisher
        .write_all(&publish_packet("a/c", 1, 700, b"world"))
        .await
        .unwrap();
    expect(&mut publisher, &[0x40, 2, 0x02, 0xBC]).await;
    expect(&mut sub, &publish_packet("a/c", 1, 1, b"world")).await;
    // The subscriber's PUBACK is accepted silently; the next one gets id 2.
    sub.write_all(&[0x40, 2, 0, 1]).await.unwrap();
    publisher
        .write_all(&publish_packet("a/d", 1, 701, b"again"))
        .await
        .unwrap();
    expect(&mut publisher, &[0x40, 2, 0x02, 0xBD]).await;
    expect(&mut sub, &publish_packet("a/d", 1, 2, b"again")).await;

    // PINGREQ -> PINGRESP; UNSUBSCRIBE -> UNSUBACK, after which nothing is forwarded.
    sub.write_all(&[0xC0, 0]).await.unwrap();
    expect(&mut sub, &[0xD0, 0]).await;
    sub.write_all(&[0xA2, 7, 0, 6, 0, 3, b'a', b'/', b'+'])
        .await
        .unwrap();
    expect(&mut sub, &[0xB0, 2, 0, 6]).await;
    publisher
        .write_all(&publish_packet("a/b", 0, 0, b"gone"))
        .await
        .unwrap();
    sub.write_all(&[0xC0, 0]).await.unwrap();
    expect(&mut sub, &[0xD0, 0]).await;

    // DISCONNECT closes the connection.
    sub.write_all(&[0xE0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let n = timeout(Duration::from_secs(5), sub.read_to_end(&mut rest))
        .await
        .expect("not closed")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn qos1_to_a_qos0_subscription_drops_the_packet_id_and_qos2_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sagitta_relay::serve(listener));

    let mut sub = client(addr, "sub").await;
    sub.write_all(&[0x82, 6, 0, 1, 0, 1, b'#', 0])
        .await
        .unwrap();
    expect(&mut sub, &[0x90, 3, 0, 1, 0]).await;
    let mut publisher = client(addr, "pub").await;
    publisher
        .write_all(&publish_packet("x/y", 1, 9, b"down"))
        .await
        .unwrap();
    expect(&mut publisher, &[0x40, 2, 0, 9]).await;
    expect(&mut sub, &publish_packet("x/y", 0, 0, b"down")).await;

    publisher
        .write_all(&publish_packet("x/y", 2, 10, b"no"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = timeout(Duration::from_secs(5), publisher.read_to_end(&mut rest))
        .await
        .expect("not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
