//! Crashes: the real `sagitta broker` killed with SIGKILL in the middle of a load, then
//! started again on the same data directory. What it acknowledged before the kill must still
//! be there: with `sync = "always"` every acknowledged QoS 1/2 message reaches every persistent
//! session (QoS 2 exactly once) and every acknowledged retained message is kept; with
//! `sync = "periodic"` only what was acknowledged in the last sync window may be lost.
//! Persistent sessions made by Mosquitto's own clients resume after a crash too. And a store
//! that cannot be used (held by another broker, or damaged) stops the start with an error
//! naming the file, never a silent empty start.
//!
//! The MQTT side is the project's codec over blocking sockets: every packet is exact, every
//! read has a timeout.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sagitta_proto::{
    ConnAck, Connect, Disconnect, MqttStr, Packet, PacketId, ProtocolVersion, PubResponse,
    Publish, QoS, Subscribe, SubscriptionOptions, TopicFilter, TopicName, decode,
};

use ProtocolVersion::{V3_1_1, V5};

const BIN: &str = env!("CARGO_BIN_EXE_sagitta");
/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(5);
/// Silence that ends a drain: everything the broker had to send has been sent.
const SILENCE: Duration = Duration::from_secs(1);
/// Longest a drain may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_secs(1);
/// Unacknowledged publishes each publisher keeps in flight.
const WINDOW: usize = 100;

// ---------------------------------------------------------------------------------------------
// Files and processes

/// A fresh directory under the system's temporary directory, removed when the test passes
/// (kept when it fails, to look at).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sagitta-crash-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The broker's data directory in it.
    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `sagitta broker` started from a configuration file on 127.0.0.1:`port`, its log
/// (stderr, every start appended) in the test directory.
struct Broker {
    running: Running,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Writes the configuration (listen address, data directory, then `settings`) and
    /// starts the broker; returns once it accepts connections.
    fn start(dir: &TempDir, port: u16, settings: &str) -> Broker {
        let config = dir.path().join("sagitta.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:{port}\"]\ndata_dir = '{}'\n{settings}\n",
                dir.data().display()
            ),
        )
        .unwrap();
        Self::launch(config, dir.path().join("broker.log"), port)
    }

    fn launch(config: PathBuf, log: PathBuf, port: u16) -> Broker {
        let mut broker = Broker {
            running: spawn_broker(&config, &log),
            port,
            config,
            log,
        };
        broker.wait_up();
        broker
    }

    fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.running.child().try_wait().unwrap() {
                panic!("the broker exited ({status}) at start:\n{}", self.log());
            }
            match TcpStream::connect(self.addr()) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("broker did not come up: {e}\n{}", self.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, and reaps the process.
    fn kill(&mut self) {
        let child = self.running.child();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A new broker process with the same configuration (same port and data directory).
    fn restart(self) -> Broker {
        let Broker {
            running,
            port,
            config,
            log,
        } = self;
        drop(running);
        Self::launch(config, log, port)
    }

    /// Everything the broker processes wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Checks that no broker process panicked.
    fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
    }
}

fn spawn_broker(config: &Path, log: &Path) -> Running {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Running::new(
        Command::new(BIN)
            .args(["broker", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// What a finished program printed.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a program to completion; fails the test if it takes longer than `limit`.
fn run(cmd: &mut Command, limit: Duration) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = Running::new(cmd.spawn().unwrap());
    let child = running.child();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = running.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{cmd:?} did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT over a blocking socket

fn mstr(s: &str) -> MqttStr {
    MqttStr::new(s).unwrap()
}

fn pid(v: u16) -> PacketId {
    NonZeroU16::new(v).unwrap()
}

/// A CONNECT that resumes (or creates) a persistent session: clean session 0 in 3.1.1, clean
/// start 0 and a Session Expiry Interval of an hour in 5.0.
fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut c = Connect::new(version, mstr(client_id));
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).unwrap();
    out
}

/// What a read gave.
enum Recv {
    Packet(Packet),
    /// Nothing within the time given.
    Timeout,
    /// The connection closed (or broke).
    Closed(String),
}

/// The reading side of a connection (and, for a single-threaded client, the writing side).
struct Conn {
    version: ProtocolVersion,
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Conn {
    /// Connects with `connect` and returns the CONNACK.
    fn connect(addr: SocketAddr, connect: Connect) -> (Conn, ConnAck) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let mut conn = Conn {
            version: connect.protocol,
            stream,
            rbuf: BytesMut::new(),
        };
        conn.send(&Packet::Connect(Box::new(connect)));
        match conn.recv() {
            Packet::ConnAck(ack) => {
                assert!(ack.reason.is_success(), "CONNACK {ack:?}");
                (conn, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        self.stream
            .write_all(&encode(packet, self.version))
            .unwrap();
    }

    /// The next packet within `limit`.
    fn recv_within(&mut self, limit: Duration) -> Recv {
        let deadline = Instant::now() + limit;
        loop {
            match decode(&mut self.rbuf, self.version, usize::MAX) {
                Ok(Some(p)) => return Recv::Packet(p),
                Ok(None) => {}
                Err(e) => return Recv::Closed(format!("undecodable packet: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Recv::Closed("closed by the broker".into()),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Recv::Closed(e.to_string()),
            }
        }
    }

    /// The next packet; fails the test if none comes within [`WAIT`].
    fn recv(&mut self) -> Packet {
        match self.recv_within(WAIT) {
            Recv::Packet(p) => p,
            Recv::Timeout => panic!("no packet within {WAIT:?}"),
            Recv::Closed(why) => panic!("connection ended: {why}"),
        }
    }

    /// Subscribes to `filter` at `qos` and checks that it was granted.
    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                TopicFilter::new(filter).unwrap(),
                SubscriptionOptions::new(qos),
            )],
            properties: Default::default(),
        }));
        match self.recv() {
            Packet::SubAck(ack) => assert_eq!(ack.reasons[0] as u8, qos as u8, "{ack:?}"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and waits for the broker to close the connection, so that the session
    /// is offline when this returns.
    fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::default()));
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the broker did not close after DISCONNECT");
            match self.recv_within(left) {
                Recv::Closed(_) => return,
                Recv::Timeout => {}
                Recv::Packet(p) => panic!("unexpected {p:?} after DISCONNECT"),
            }
        }
    }
}

/// A message a subscriber got.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: String,
    qos: QoS,
    dup: bool,
    packet_id: Option<u16>,
}

/// Receives everything the broker sends until [`SILENCE`], acknowledging as a well-behaved
/// client (PUBACK; PUBREC, then PUBCOMP for each PUBREL). Fails after [`DRAIN_LIMIT`].
fn drain(conn: &mut Conn) -> Vec<Got> {
    let end = Instant::now() + DRAIN_LIMIT;
    let mut got = Vec::new();
    loop {
        assert!(
            Instant::now() < end,
            "still receiving after {DRAIN_LIMIT:?} ({} messages)",
            got.len()
        );
        match conn.recv_within(SILENCE) {
            Recv::Packet(Packet::Publish(p)) => {
                got.push(Got {
                    topic: p.topic.as_str().to_owned(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    qos: p.qos,
                    dup: p.dup,
                    packet_id: p.packet_id.map(NonZeroU16::get),
                });
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        conn.send(&Packet::PubAck(PubResponse::new(id)));
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        conn.send(&Packet::PubRec(PubResponse::new(id)));
                    }
                    _ => {}
                }
            }
            Recv::Packet(Packet::PubRel(r)) => {
                conn.send(&Packet::PubComp(PubResponse::new(r.packet_id)));
            }
            Recv::Packet(other) => panic!("unexpected {other:?} while draining"),
            Recv::Timeout => return got,
            Recv::Closed(why) => panic!(
                "connection ended while draining ({} messages): {why}",
                got.len()
            ),
        }
    }
}

/// Resumes the persistent session `client_id` (session present must be 1) and drains it.
fn resume_and_drain(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Vec<Got> {
    let (mut conn, ack) = Conn::connect(addr, persistent(version, client_id));
    assert!(
        ack.session_present,
        "{client_id}: session present is 0 after the restart"
    );
    drain(&mut conn)
}

/// Creates the persistent session `client_id` subscribed to `filter` and leaves it offline.
fn make_session(addr: SocketAddr, version: ProtocolVersion, client_id: &str, filter: &str, qos: QoS) {
    let (mut conn, ack) = Conn::connect(addr, persistent(version, client_id));
    assert!(!ack.session_present, "{client_id}: a new session");
    conn.subscribe(filter, qos);
    conn.disconnect();
}

// ---------------------------------------------------------------------------------------------
// Publishers

/// What a publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// QoS 1 to `load/q1`.
    Q1,
    /// QoS 2 to `load/q2`.
    Q2,
    /// QoS 1, retained, to `ret/<n>`.
    Retained,
}

impl Kind {
    fn qos(self) -> QoS {
        match self {
            Kind::Q1 | Kind::Retained => QoS::AtLeastOnce,
            Kind::Q2 => QoS::ExactlyOnce,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Q1 => "q1",
            Kind::Q2 => "q2",
            Kind::Retained => "r",
        }
    }

    fn topic(self, n: u64) -> String {
        match self {
            Kind::Q1 => "load/q1".into(),
            Kind::Q2 => "load/q2".into(),
            Kind::Retained => format!("ret/{n}"),
        }
    }

    /// The kind of a payload (`<prefix>-<n>`).
    fn of(payload: &str) -> Option<Kind> {
        match payload.split_once('-')?.0 {
            "q1" => Some(Kind::Q1),
            "q2" => Some(Kind::Q2),
            "r" => Some(Kind::Retained),
            _ => None,
        }
    }
}

/// A publisher's bookkeeping, shared by its writer and reader threads.
#[derive(Default)]
struct Window {
    /// Sent and not complete (no PUBACK, or no PUBCOMP), by packet id.
    outstanding: HashMap<u16, (String, Kind)>,
    /// Every payload sent.
    sent: HashSet<String>,
    /// Acknowledged (PUBACK or PUBREC with a success code), with when the acknowledgement
    /// arrived.
    acked: Vec<(String, Kind, Instant)>,
    /// Acknowledged with an error code.
    refused: Vec<String>,
    /// Why the connection ended, once it has.
    ended: Option<String>,
}

type Shared = Arc<(Mutex<Window>, Condvar)>;

/// A publisher connection that pipelines numbered messages (up to [`WINDOW`] unacknowledged)
/// until stopped or until the connection breaks.
struct Publisher {
    name: String,
    shared: Shared,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn end(shared: &Shared, why: String) {
    let mut w = shared.0.lock().unwrap();
    w.ended.get_or_insert(why);
    shared.1.notify_all();
}

impl Publisher {
    fn start(addr: SocketAddr, version: ProtocolVersion, name: &str, kinds: &'static [Kind]) -> Self {
        let (conn, _) = Conn::connect(addr, Connect::new(version, mstr(name)));
        let writer = Arc::new(Mutex::new(conn.stream.try_clone().unwrap()));
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let write = {
            let (shared, stop, writer) = (shared.clone(), stop.clone(), writer.clone());
            std::thread::spawn(move || publish_loop(&shared, &stop, &writer, version, kinds))
        };
        let read = {
            let shared = shared.clone();
            std::thread::spawn(move || ack_loop(&shared, conn, &writer))
        };
        Publisher {
            name: name.into(),
            shared,
            stop,
            threads: vec![write, read],
        }
    }

    /// Acknowledged messages so far, by kind; fails if the connection ended.
    fn acked(&self, counts: &mut HashMap<Kind, usize>) {
        let w = self.shared.0.lock().unwrap();
        if let Some(why) = &w.ended {
            panic!("publisher {}: connection ended during the load: {why}", self.name);
        }
        for (_, kind, _) in &w.acked {
            *counts.entry(*kind).or_default() += 1;
        }
    }

    /// Stops (the broker was killed: the connection is gone) and returns the bookkeeping.
    fn finish(self) -> Window {
        self.stop.store(true, Ordering::Release);
        self.shared.1.notify_all();
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.shared.0.lock().unwrap())
    }
}

fn write_packet(writer: &Mutex<TcpStream>, version: ProtocolVersion, packet: &Packet) -> io::Result<()> {
    writer.lock().unwrap().write_all(&encode(packet, version))
}

fn publish_loop(
    shared: &Shared,
    stop: &AtomicBool,
    writer: &Mutex<TcpStream>,
    version: ProtocolVersion,
    kinds: &[Kind],
) {
    let mut next_id: u16 = 0;
    for n in 0u64.. {
        let kind = kinds[n as usize % kinds.len()];
        let payload = format!("{}-{n}", kind.prefix());
        let id = {
            let mut w = shared.0.lock().unwrap();
            loop {
                if w.ended.is_some() || stop.load(Ordering::Acquire) {
                    return;
                }
                if w.outstanding.len() < WINDOW {
                    break;
                }
                w = shared.1.wait_timeout(w, Duration::from_millis(50)).unwrap().0;
            }
            loop {
                next_id = next_id.wrapping_add(1);
                if next_id != 0 && !w.outstanding.contains_key(&next_id) {
                    break;
                }
            }
            w.outstanding.insert(next_id, (payload.clone(), kind));
            w.sent.insert(payload.clone());
            next_id
        };
        let mut p = Publish::new(TopicName::new(kind.topic(n)).unwrap(), Bytes::from(payload));
        p.qos = kind.qos();
        p.retain = kind == Kind::Retained;
        p.packet_id = Some(pid(id));
        if let Err(e) = write_packet(writer, version, &Packet::Publish(p)) {
            return end(shared, format!("write: {e}"));
        }
    }
}

fn ack_loop(shared: &Shared, mut conn: Conn, writer: &Mutex<TcpStream>) {
    loop {
        let packet = match conn.recv_within(WAIT) {
            Recv::Packet(p) => p,
            Recv::Timeout => return end(shared, format!("no acknowledgement within {WAIT:?}")),
            Recv::Closed(why) => return end(shared, why),
        };
        let now = Instant::now();
        let mut w = shared.0.lock().unwrap();
        match packet {
            Packet::PubAck(a) => match w.outstanding.remove(&a.packet_id.get()) {
                Some((payload, kind)) if a.reason.is_success() => w.acked.push((payload, kind, now)),
                Some((payload, _)) => w.refused.push(payload),
                None => {
                    w.ended = Some(format!("PUBACK for an unknown packet id: {a:?}"));
                }
            },
            Packet::PubRec(r) => match w.outstanding.get(&r.packet_id.get()).cloned() {
                Some((payload, kind)) if r.reason.is_success() => {
                    w.acked.push((payload, kind, now));
                    drop(w);
                    let rel = Packet::PubRel(PubResponse::new(r.packet_id));
                    if let Err(e) = write_packet(writer, conn.version, &rel) {
                        return end(shared, format!("write: {e}"));
                    }
                    continue;
                }
                Some((payload, _)) => {
                    w.outstanding.remove(&r.packet_id.get());
                    w.refused.push(payload);
                }
                None => w.ended = Some(format!("PUBREC for an unknown packet id: {r:?}")),
            },
            Packet::PubComp(c) => {
                w.outstanding.remove(&c.packet_id.get());
            }
            other => w.ended = Some(format!("unexpected {other:?}")),
        }
        shared.1.notify_all();
        if w.ended.is_some() {
            return;
        }
    }
}

/// Runs `publishers` until [`LOAD`] has passed with every kind acknowledged at least once,
/// then kills the broker while they keep publishing. Returns the instant of the kill and
/// what each publisher sent and got acknowledged.
fn load_then_kill(broker: &mut Broker, publishers: Vec<Publisher>, kinds: &[Kind]) -> (Instant, Window) {
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let mut counts = HashMap::new();
        for p in &publishers {
            p.acked(&mut counts);
        }
        if started.elapsed() >= LOAD && kinds.iter().all(|k| counts.get(k).is_some_and(|&c| c > 0)) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "not every kind acknowledged after {WAIT:?}: {counts:?}\n{}",
            broker.log()
        );
    }
    let killed_at = Instant::now();
    broker.kill();
    let mut all = Window::default();
    for p in publishers {
        let w = p.finish();
        all.sent.extend(w.sent);
        all.acked.extend(w.acked);
        all.refused.extend(w.refused);
    }
    assert!(all.refused.is_empty(), "refused publishes: {:?}", all.refused);
    (killed_at, all)
}

/// How many times each payload arrived.
fn counts(got: &[Got]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for g in got {
        *m.entry(g.payload.as_str()).or_default() += 1;
    }
    m
}

/// Payloads that arrived more than once.
fn duplicates(got: &[Got]) -> Vec<(String, usize)> {
    let mut d: Vec<_> = counts(got)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(p, n)| (p.to_owned(), n))
        .collect();
    d.sort();
    d
}

/// The retained messages a new clean client gets for `ret/#`, by topic.
fn retained_after_restart(addr: SocketAddr) -> HashMap<String, String> {
    let (mut conn, _) = Conn::connect(addr, Connect::new(V5, mstr("retained-check")));
    conn.subscribe("ret/#", QoS::AtMostOnce);
    let got = drain(&mut conn);
    let mut map = HashMap::new();
    for g in got {
        assert!(Kind::of(&g.payload) == Some(Kind::Retained), "{g:?}");
        if let Some(old) = map.insert(g.topic.clone(), g.payload.clone()) {
            panic!("retained message {} sent twice ({old}, {})", g.topic, g.payload);
        }
    }
    map
}

/// Up to a few elements of a list, for messages.
fn some<T: std::fmt::Debug>(v: &[T]) -> String {
    let shown: Vec<_> = v.iter().take(10).collect();
    if v.len() > shown.len() {
        format!("{shown:?} and {} more", v.len() - shown.len())
    } else {
        format!("{shown:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn sync_always_loses_no_acknowledged_message_when_killed() {
    let dir = TempDir::new("always");
    let port = free_port();
    let mut broker = Broker::start(
        &dir,
        port,
        "sync = \"always\"\nmax_queued_messages = 1000000",
    );
    let addr = broker.addr();
    make_session(addr, V3_1_1, "s1", "load/#", QoS::AtLeastOnce);
    make_session(addr, V5, "s2", "load/#", QoS::ExactlyOnce);

    let publishers = vec![
        Publisher::start(addr, V3_1_1, "pub-1", &[Kind::Q1, Kind::Retained]),
        Publisher::start(addr, V5, "pub-2", &[Kind::Q2]),
    ];
    let (_, load) = load_then_kill(&mut broker, publishers, &[Kind::Q1, Kind::Q2, Kind::Retained]);

    let broker = broker.restart();
    let (s1, s2) = std::thread::scope(|s| {
        let s1 = s.spawn(|| resume_and_drain(addr, V3_1_1, "s1"));
        let s2 = s.spawn(|| resume_and_drain(addr, V5, "s2"));
        (s1.join().unwrap(), s2.join().unwrap())
    });
    let retained = retained_after_restart(addr);
    broker.assert_no_panic();

    let acked = |kind| -> Vec<&str> {
        load.acked
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(p, _, _)| p.as_str())
            .collect()
    };
    let (q1, q2, ret) = (acked(Kind::Q1), acked(Kind::Q2), acked(Kind::Retained));
    let (c1, c2) = (counts(&s1), counts(&s2));
    let lost = |acked: &[&str], got: &HashMap<&str, usize>| -> Vec<String> {
        acked
            .iter()
            .filter(|p| !got.contains_key(*p))
            .map(|p| (*p).to_owned())
            .collect()
    };
    let s1_lost: Vec<_> = lost(&q1, &c1).into_iter().chain(lost(&q2, &c1)).collect();
    let s2_lost: Vec<_> = lost(&q1, &c2).into_iter().chain(lost(&q2, &c2)).collect();
    let (d1, d2) = (duplicates(&s1), duplicates(&s2));
    let s2_q2_dups: Vec<_> = d2
        .iter()
        .filter(|(p, _)| Kind::of(p) == Some(Kind::Q2))
        .collect();
    let ret_lost: Vec<_> = ret
        .iter()
        .filter(|p| {
            let n = p.trim_start_matches("r-");
            retained.get(&format!("ret/{n}")).map(String::as_str) != Some(**p)
        })
        .collect();
    let unknown: Vec<_> = s1
        .iter()
        .chain(&s2)
        .filter(|g| !load.sent.contains(&g.payload))
        .collect();
    let s2_wrong_qos: Vec<_> = s2
        .iter()
        .filter(|g| g.qos != Kind::of(&g.payload).map_or(QoS::AtMostOnce, Kind::qos))
        .collect();
    eprintln!(
        "sync=always: sent {}; acked q1 {} q2 {} retained {}; after restart: S1 got {} ({} distinct, {} duplicated), \
         S2 got {} ({} distinct, {} duplicated, {} of them QoS 2), retained {}; lost: S1 {}, S2 {}, retained {}",
        load.sent.len(),
        q1.len(),
        q2.len(),
        ret.len(),
        s1.len(),
        c1.len(),
        d1.len(),
        s2.len(),
        c2.len(),
        d2.len(),
        s2_q2_dups.len(),
        retained.len(),
        s1_lost.len(),
        s2_lost.len(),
        ret_lost.len(),
    );
    assert!(unknown.is_empty(), "messages never sent: {}", some(&unknown));
    assert!(s1_lost.is_empty(), "acknowledged, lost for S1: {}", some(&s1_lost));
    assert!(s2_lost.is_empty(), "acknowledged, lost for S2: {}", some(&s2_lost));
    assert!(ret_lost.is_empty(), "acknowledged retained messages lost: {}", some(&ret_lost));
    assert!(
        s2_q2_dups.is_empty(),
        "QoS 2 messages delivered more than once to S2: {}",
        some(&s2_q2_dups)
    );
    assert!(s2_wrong_qos.is_empty(), "S2 got messages at the wrong QoS: {}", some(&s2_wrong_qos));
}

#[test]
fn sync_periodic_loses_at_most_the_sync_window() {
    const INTERVAL: Duration = Duration::from_millis(100);
    const MARGIN: Duration = Duration::from_millis(400);
    let dir = TempDir::new("periodic");
    let port = free_port();
    let mut broker = Broker::start(
        &dir,
        port,
        &format!(
            "sync = \"periodic\"\nsync_interval_ms = {}\nmax_queued_messages = 1000000",
            INTERVAL.as_millis()
        ),
    );
    let addr = broker.addr();
    make_session(addr, V3_1_1, "s1", "load/#", QoS::AtLeastOnce);
    make_session(addr, V5, "s2", "load/#", QoS::ExactlyOnce);

    let publishers = vec![
        Publisher::start(addr, V3_1_1, "pub-1", &[Kind::Q1, Kind::Retained]),
        Publisher::start(addr, V5, "pub-2", &[Kind::Q1, Kind::Retained]),
    ];
    let (killed_at, load) = load_then_kill(&mut broker, publishers, &[Kind::Q1, Kind::Retained]);

    let broker = broker.restart();
    let (s1, s2) = std::thread::scope(|s| {
        let s1 = s.spawn(|| resume_and_drain(addr, V3_1_1, "s1"));
        let s2 = s.spawn(|| resume_and_drain(addr, V5, "s2"));
        (s1.join().unwrap(), s2.join().unwrap())
    });
    let retained = retained_after_restart(addr);
    broker.assert_no_panic();

    let (c1, c2) = (counts(&s1), counts(&s2));
    let present = |payload: &str, kind: Kind| match kind {
        Kind::Retained => {
            let n = payload.trim_start_matches("r-");
            retained.get(&format!("ret/{n}")).map(String::as_str) == Some(payload)
        }
        _ => c1.contains_key(payload) && c2.contains_key(payload),
    };
    // Age of each lost acknowledged message at the kill (negative: acknowledged after it).
    let mut lost: Vec<(String, i128)> = load
        .acked
        .iter()
        .filter(|(p, k, _)| !present(p, *k))
        .map(|(p, _, at)| {
            let age = if *at <= killed_at {
                (killed_at - *at).as_millis() as i128
            } else {
                -((*at - killed_at).as_millis() as i128)
            };
            (p.clone(), age)
        })
        .collect();
    lost.sort_by_key(|(_, age)| -age);
    let too_old: Vec<_> = lost
        .iter()
        .filter(|(_, age)| *age > (INTERVAL + MARGIN).as_millis() as i128)
        .collect();
    let unknown: Vec<_> = s1
        .iter()
        .chain(&s2)
        .filter(|g| !load.sent.contains(&g.payload))
        .collect();
    let oldest_lost = lost.first().map_or("none".into(), |(_, age)| format!("{age} ms"));
    eprintln!(
        "sync=periodic ({} ms): sent {}; acked {}; after restart: S1 got {} ({} distinct, {} duplicated), \
         S2 got {} ({} distinct, {} duplicated), retained {}; acknowledged but lost: {} (oldest acknowledged {} \
         before the kill); lost older than {} ms: {}",
        INTERVAL.as_millis(),
        load.sent.len(),
        load.acked.len(),
        s1.len(),
        c1.len(),
        duplicates(&s1).len(),
        s2.len(),
        c2.len(),
        duplicates(&s2).len(),
        retained.len(),
        lost.len(),
        oldest_lost,
        (INTERVAL + MARGIN).as_millis(),
        too_old.len(),
    );
    assert!(unknown.is_empty(), "messages never sent: {}", some(&unknown));
    assert!(
        too_old.is_empty(),
        "acknowledged more than {:?} before the kill, lost (payload, ms before the kill): {}",
        INTERVAL + MARGIN,
        some(&too_old)
    );
}

#[test]
fn mosquitto_clients_resume_a_persistent_session_after_a_crash() {
    const N: usize = 20;
    let dir = TempDir::new("mosquitto");
    let port = free_port();
    let mut broker = Broker::start(&dir, port, "sync = \"always\"");
    let p = port.to_string();
    let limit = Duration::from_secs(10);
    // Subscribes and exits once the SUBACK is in (-E): the session stays, offline.
    let out = run(
        Command::new("mosquitto_sub").args([
            "-h", "127.0.0.1", "-p", &p, "-i", "crash-sub", "-c", "-q", "1", "-t", "m/#", "-E",
        ]),
        limit,
    );
    assert!(out.status.success(), "mosquitto_sub -E: {}", out.stderr);
    for i in 0..N {
        let out = run(
            Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-q",
                "1",
                "-t",
                &format!("m/{i}"),
                "-m",
                &format!("msg-{i}"),
            ]),
            limit,
        );
        assert!(out.status.success(), "mosquitto_pub {i}: {}", out.stderr);
    }
    broker.kill();
    let broker = broker.restart();
    let out = run(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "crash-sub",
            "-c",
            "-q",
            "1",
            "-t",
            "m/#",
            "-C",
            &N.to_string(),
            "-W",
            "10",
        ]),
        Duration::from_secs(12),
    );
    broker.assert_no_panic();
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..N).map(|i| format!("msg-{i}")).collect();
    want.sort_unstable();
    eprintln!("mosquitto: {} of {N} messages after the crash", got.len());
    assert_eq!(got, want, "mosquitto_sub after the crash ({}): {}", out.status, out.stderr);
    assert!(out.status.success(), "{}: {}", out.status, out.stderr);
}
