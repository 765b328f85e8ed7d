//! `sagitta-relay`: a deliberately bare MQTT 3.1.1 forwarder. It marks what this machine can
//! move at all, as the reference line in `bench/compare.sh`; it is not a broker.
//!
//! ## Layout
//! - [`serve`]: the accept loop; per connection one reader task (`connection`) and one writer
//!   task (`write_loop`).
//! - `Outbox`: a connection's outbound bytes, one buffer behind a mutex plus a `Notify`. Any
//!   task appends; the writer takes everything queued and writes it with one call.
//! - `Table`: the subscriptions behind one `RwLock`: exact topics in a map, filters with `+`
//!   or `#` in a list.
//! - `handle` and friends: one packet from a client.
//!
//! What it does: CONNECT → CONNACK 0; SUBSCRIBE → SUBACK granting the requested QoS;
//! UNSUBSCRIBE → UNSUBACK; PINGREQ → PINGRESP; PUBLISH QoS 1 → PUBACK at once, and every
//! PUBLISH goes to each matching subscription at min(publish QoS, subscription QoS) with a
//! per-subscriber packet id (the original bytes, with the packet id patched where needed).
//! Subscribers' PUBACKs are ignored. What it does not: validation, sessions, retained
//! messages, wills, limits, MQTT 5, QoS 2 (a QoS 2 PUBLISH closes the connection).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Largest step by which a connection's read buffer grows.
const READ_STEP: usize = 64 * 1024;
/// A write buffer larger than this is released after use instead of kept.
const KEEP_WRITE_BUFFER: usize = 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes waiting for a connection's writer.
#[derive(Default)]
struct Pending {
    buf: BytesMut,
    /// Last packet id used towards this connection.
    last_id: u16,
    /// No more bytes are accepted: the reader ended or the socket failed.
    closed: bool,
}

/// A connection's outbound queue.
#[derive(Default)]
struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Outbox {
    /// Appends with `f(buffer, last packet id)` and wakes the writer if it was idle.
    fn push(&self, f: impl FnOnce(&mut BytesMut, &mut u16)) {
        let mut p = lock(&self.pending);
        if p.closed {
            return;
        }
        let was_empty = p.buf.is_empty();
        let Pending { buf, last_id, .. } = &mut *p;
        f(buf, last_id);
        drop(p);
        // A non-empty buffer already has a wake-up pending or a writer about to take it.
        if was_empty {
            self.ready.notify_one();
        }
    }

    fn close(&self) {
        lock(&self.pending).closed = true;
        self.ready.notify_one();
    }
}

/// One subscription.
struct Sub {
    conn: u64,
    qos: u8,
    out: Arc<Outbox>,
}

/// Every subscription.
#[derive(Default)]
struct Table {
    exact: HashMap<Vec<u8>, Vec<Sub>>,
    wild: Vec<(Vec<u8>, Sub)>,
}

impl Table {
    fn insert(&mut self, filter: &[u8], sub: Sub) {
        self.remove(sub.conn, Some(filter));
        if filter.iter().any(|&b| b == b'+' || b == b'#') {
            self.wild.push((filter.to_vec(), sub));
        } else {
            self.exact.entry(filter.to_vec()).or_default().push(sub);
        }
    }

    /// Removes `conn`'s subscription to `filter`, or all of them.
    fn remove(&mut self, conn: u64, filter: Option<&[u8]>) {
        let other = |f: &[u8], s: &Sub| s.conn != conn || filter.is_some_and(|x| x != f);
        self.wild.retain(|(f, s)| other(f, s));
        self.exact.retain(|f, subs| {
            subs.retain(|s| other(f, s));
            !subs.is_empty()
        });
    }
}

/// `+` matches one level, a trailing `#` the rest (and the parent level).
fn matches(filter: &[u8], topic: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some([b'#']), _) => return true,
            (Some([b'+']), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Default)]
struct Shared {
    table: RwLock<Table>,
    next_conn: AtomicU64,
}

/// Accepts connections on `listener` and relays between them; runs until the process ends.
pub async fn serve(listener: TcpListener) {
    let shared = Arc::new(Shared::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                // Typically out of file descriptors: wait for some to be freed.
                eprintln!("sagitta-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The next complete packet at the start of `buf`: (offset of its body, total length).
/// `Err` for a remaining length longer than four bytes.
fn frame(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut len = 0usize;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = i + 1 + len;
            return Ok((buf.len() >= total).then_some((i + 1, total)));
        }
    }
    Err(())
}

fn put_var_int(buf: &mut BytesMut, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 2)?;
    Some(usize::from(u16::from_be_bytes([s[0], s[1]])))
}

/// Reads and handles one connection's packets; its writer runs beside it.
async fn connection(stream: TcpStream, sh: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let conn = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    let (mut rd, wr) = stream.into_split();
    let out = Arc::new(Outbox::default());
    let writer = tokio::spawn(write_loop(out.clone(), wr));
    let mut buf = BytesMut::new();
    let mut reply = BytesMut::new();
    let mut open = true;
    while open {
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(buf.capacity().clamp(256, READ_STEP));
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Replies to this client go out once per read.
        while open {
            let Ok(framed) = frame(&buf) else {
                open = false;
                break;
            };
            let Some((body_at, total)) = framed else {
                break;
            };
            open = handle(&sh, conn, &out, &mut reply, &buf[..total], body_at);
            buf.advance(total);
        }
        if !reply.is_empty() {
            out.push(|b, _| b.extend_from_slice(&reply));
            reply.clear();
        }
    }
    match sh.table.write() {
        Ok(mut t) => t.remove(conn, None),
        Err(p) => p.into_inner().remove(conn, None),
    }
    out.close();
    let _ = writer.await;
}

/// Writes whatever is queued, one write per batch, until the outbox is closed.
async fn write_loop(out: Arc<Outbox>, mut wr: OwnedWriteHalf) {
    let mut batch = BytesMut::new();
    loop {
        out.ready.notified().await;
        let closed = {
            let mut p = lock(&out.pending);
            std::mem::swap(&mut p.buf, &mut batch);
            p.closed
        };
        if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
            out.close();
            return;
        }
        if closed {
            return;
        }
        if batch.capacity() > KEEP_WRITE_BUFFER {
            batch = BytesMut::new();
        }
        batch.clear();
    }
}

/// Handles one packet; false closes the connection.
fn handle(
    sh: &Shared,
    conn: u64,
    out: &Arc<Outbox>,
    reply: &mut BytesMut,
    pkt: &[u8],
    body_at: usize,
) -> bool {
    let Some(&first) = pkt.first() else {
        return false;
    };
    let body = pkt.get(body_at..).unwrap_or_default();
    match first >> 4 {
        1 => reply.extend_from_slice(&[0x20, 2, 0, 0]),
        3 => return publish(sh, reply, pkt, body_at),
        8 => return subscribe(sh, conn, out, reply, body),
        10 => {
            let Some(id) = body.get(..2) else {
                return false;
            };
            let mut rest = &body[2..];
            let mut table = sh.table.write().unwrap_or_else(PoisonError::into_inner);
            while let Some(len) = be16(rest, 0) {
                table.remove(conn, rest.get(2..2 + len));
                rest = rest.get(2 + len..).unwrap_or_default();
            }
            reply.extend_from_slice(&[0xB0, 2]);
            reply.extend_from_slice(id);
        }
        12 => reply.extend_from_slice(&[0xD0, 0]),
        // DISCONNECT, and the QoS 2 flow (PUBREC, PUBREL, PUBCOMP) which we do not do.
        14 | 5..=7 => return false,
        // PUBACK from a subscriber, and anything else: ignored.
        _ => {}
    }
    true
}

fn subscribe(sh: &Shared, conn: u64, out: &Arc<Outbox>, reply: &mut BytesMut, body: &[u8]) -> bool {
    let Some(id) = body.get(..2) else {
        return false;
    };
    let mut rest = &body[2..];
    let mut granted = Vec::new();
    let mut table = sh.table.write().unwrap_or_else(PoisonError::into_inner);
    while !rest.is_empty() {
        let Some(len) = be16(rest, 0) else {
            return false;
        };
        let (Some(filter), Some(&qos)) = (rest.get(2..2 + len), rest.get(2 + len)) else {
            return false;
        };
        if qos > 2 {
            granted.push(0x80);
        } else {
            let out = out.clone();
            table.insert(filter, Sub { conn, qos, out });
            granted.push(qos);
        }
        rest = &rest[3 + len..];
    }
    reply.put_u8(0x90);
    put_var_int(reply, 2 + granted.len());
    reply.extend_from_slice(id);
    reply.extend_from_slice(&granted);
    // Queued while the table is locked, so no forward to a new subscription precedes it.
    out.push(|b, _| b.extend_from_slice(reply));
    reply.clear();
    true
}

fn publish(sh: &Shared, reply: &mut BytesMut, pkt: &[u8], body_at: usize) -> bool {
    let qos = pkt.first().map_or(3, |b| (b >> 1) & 3);
    if qos > 1 {
        return false;
    }
    let Some(topic_len) = be16(pkt, body_at) else {
        return false;
    };
    let topic_end = body_at + 2 + topic_len;
    let Some(topic) = pkt.get(body_at + 2..topic_end) else {
        return false;
    };
    if qos == 1 {
        let Some(id) = pkt.get(topic_end..topic_end + 2) else {
            return false;
        };
        reply.extend_from_slice(&[0x40, 2]);
        reply.extend_from_slice(id);
    }
    let table = sh.table.read().unwrap_or_else(PoisonError::into_inner);
    let forward = |sub: &Sub| forward(sub, pkt, qos, body_at, topic_end);
    if let Some(subs) = table.exact.get(topic) {
        subs.iter().for_each(forward);
    }
    for (filter, sub) in &table.wild {
        if matches(filter, topic) {
            forward(sub);
        }
    }
    true
}

/// Queues `pkt` (a PUBLISH at `qos`, whose topic ends at `topic_end`) for `sub`.
fn forward(sub: &Sub, pkt: &[u8], qos: u8, body_at: usize, topic_end: usize) {
    let q = qos.min(sub.qos);
    sub.out.push(|buf, last_id| {
        let start = buf.len();
        if q == qos {
            buf.extend_from_slice(pkt);
            // A fresh delivery: no DUP, no RETAIN.
            buf[start] = 0x30 | (q << 1);
            if q == 1 {
                *last_id = last_id.checked_add(1).unwrap_or(1);
                let at = start + topic_end;
                buf[at..at + 2].copy_from_slice(&last_id.to_be_bytes());
            }
        } else {
            // QoS 1 to a QoS 0 subscription: the same packet without its packet id.
            buf.put_u8(0x30);
            put_var_int(buf, pkt.len() - body_at - 2);
            buf.extend_from_slice(&pkt[body_at..topic_end]);
            buf.extend_from_slice(&pkt[topic_end + 2..]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(matches(b"a/+", b"a/b"));
        assert!(!matches(b"a/+", b"a/b/c"));
        assert!(!matches(b"a/+", b"a"));
        assert!(matches(b"a/#", b"a"));
        assert!(matches(b"a/#", b"a/b/c"));
        assert!(matches(b"#", b"x/y"));
        assert!(matches(b"+/b", b"a/b"));
        assert!(!matches(b"a/b", b"a/c"));
    }

    #[test]
    fn frames_and_var_ints() {
        assert_eq!(frame(&[0xC0]), Ok(None));
        assert_eq!(frame(&[0xC0, 0]), Ok(Some((2, 2))));
        assert_eq!(frame(&[0x30, 3, 0, 1]), Ok(None));
        assert_eq!(frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 1]), Err(()));
        let mut b = BytesMut::new();
        put_var_int(&mut b, 321);
        assert_eq!(&b[..], &[0xC1, 0x02]);
        let mut big = vec![0x30, 0xC1, 0x02];
        big.resize(3 + 321, 0);
        assert_eq!(frame(&big), Ok(Some((3, 324))));
    }
}
