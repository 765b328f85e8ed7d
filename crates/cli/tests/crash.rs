//! Crashes: the real `sagitta broker` killed with SIGKILL in the middle of a load, then
//! started again on the same data directory. What it acknowledged before the kill must still
//! be there: with `sync = "always"` every acknowledged QoS 1/2 message reaches every persistent
//! session (QoS 2 exactly once) and every acknowledged retained message is kept; with
//! `sync = "periodic"` only what was acknowledged in the last sync window may be lost.
//! Exactly once holds end to end when both sides resume their sessions as the protocol says:
//! a QoS 2 publisher that sends again what got no PUBREC and reuses the packet ids it got
//! PUBCOMP for, a QoS 2 subscriber connected at the time of the crash. Persistent sessions
//! made by Mosquitto's own clients resume after a crash too. And a store that cannot be used
//! (held by another broker, or damaged) stops the start with an error naming the file, never a
//! silent empty start.
//!
//! The MQTT side is the project's codec over blocking sockets: every packet is exact, every
//! read has a timeout. Each test prints what it counted to stderr (`--nocapture` shows it).
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sagitta_proto::{
    ConnAck, Connect, Disconnect, MqttStr, Packet, PacketId, ProtocolVersion, PubResponse, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, decode,
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
    /// Shared with a publisher's reader thread when it is to kill the broker itself.
    running: Arc<Mutex<Running>>,
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
            running: Arc::new(Mutex::new(spawn_broker(&config, &log))),
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
            if let Some(status) = self.running.lock().unwrap().child().try_wait().unwrap() {
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

    /// SIGKILL (unless done already), and reaps the process.
    fn kill(&mut self) {
        let mut running = self.running.lock().unwrap();
        let child = running.child();
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
    let log = File::options().create(true).append(true).open(log).unwrap();
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
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut running = Running::new(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}")),
    );
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

/// What a read gave (returned and matched at once: its size does not matter).
#[allow(clippy::large_enum_variant)]
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
        self.try_send(packet).unwrap();
    }

    fn try_send(&mut self, packet: &Packet) -> io::Result<()> {
        self.stream.write_all(&encode(packet, self.version))
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

/// A QoS 2 receiver as the protocol describes it (method B): a message goes to the
/// application when its PUBLISH comes, its packet id is kept until PUBREL, and a PUBLISH with
/// a kept packet id is a duplicate. The state outlives a connection, like a session's.
#[derive(Default)]
struct ExactlyOnceReceiver {
    /// Packet ids answered with PUBREC and not released yet.
    awaiting_pubrel: HashSet<u16>,
    /// What went to the application.
    delivered: Vec<Got>,
    /// PUBLISHes recognised as duplicates by their packet id.
    protocol_duplicates: usize,
    /// How many went to the application, for other threads to watch.
    progress: Arc<AtomicUsize>,
}

impl ExactlyOnceReceiver {
    /// Handles packets until the connection ends, or with `silence`, until nothing comes for
    /// that long (fails after [`DRAIN_LIMIT`]).
    fn run(&mut self, conn: &mut Conn, silence: Option<Duration>) {
        let end = Instant::now() + DRAIN_LIMIT;
        loop {
            assert!(
                Instant::now() < end,
                "still receiving after {DRAIN_LIMIT:?}"
            );
            let packet = match conn.recv_within(silence.unwrap_or(WAIT)) {
                Recv::Packet(p) => p,
                Recv::Timeout if silence.is_some() => return,
                Recv::Timeout => panic!("nothing for {WAIT:?} during the load"),
                Recv::Closed(why) => {
                    assert!(silence.is_none(), "connection ended: {why}");
                    return;
                }
            };
            let reply = match packet {
                Packet::Publish(p) => {
                    let id = p.packet_id.map(NonZeroU16::get);
                    let fresh = match (p.qos, id) {
                        (QoS::ExactlyOnce, Some(id)) => self.awaiting_pubrel.insert(id),
                        _ => true,
                    };
                    if fresh {
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        self.delivered.push(Got {
                            topic: p.topic.as_str().to_owned(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            qos: p.qos,
                            dup: p.dup,
                            packet_id: id,
                        });
                    } else {
                        self.protocol_duplicates += 1;
                    }
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(PubResponse::new(id))),
                        (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(PubResponse::new(id))),
                        _ => None,
                    }
                }
                Packet::PubRel(r) => {
                    self.awaiting_pubrel.remove(&r.packet_id.get());
                    Some(Packet::PubComp(PubResponse::new(r.packet_id)))
                }
                other => panic!("unexpected {other:?}"),
            };
            if let Some(reply) = reply
                && conn.try_send(&reply).is_err()
            {
                // The broker is gone; the reply is lost with it, as it would be for any client.
                assert!(silence.is_none(), "the broker closed the connection");
                return;
            }
        }
    }
}

/// Receives everything the broker sends until [`SILENCE`], acknowledging as a well-behaved
/// client, and returns what went to the application. Fails after [`DRAIN_LIMIT`].
fn drain(conn: &mut Conn) -> Vec<Got> {
    let mut receiver = ExactlyOnceReceiver::default();
    receiver.run(conn, Some(SILENCE));
    receiver.delivered
}

/// Resumes the persistent session `client_id` (session present must be 1), drains it and
/// leaves it offline.
fn resume_and_drain(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Vec<Got> {
    let (mut conn, ack) = Conn::connect(addr, persistent(version, client_id));
    assert!(
        ack.session_present,
        "{client_id}: session present is 0 after the restart"
    );
    let got = drain(&mut conn);
    conn.disconnect();
    got
}

/// [`resume_and_drain`] for a 5.0 session that should get `expected`: it ends after a short
/// silence once they have all come, after [`SILENCE`] otherwise.
fn resume_and_drain_expecting(addr: SocketAddr, client_id: &str, expected: Vec<&str>) -> Vec<Got> {
    const SHORT: Duration = Duration::from_millis(200);
    let (mut conn, ack) = Conn::connect(addr, persistent(V5, client_id));
    assert!(
        ack.session_present,
        "{client_id}: session present is 0 after the restart"
    );
    let mut receiver = ExactlyOnceReceiver::default();
    for _ in 0..SILENCE.as_millis() / SHORT.as_millis() {
        receiver.run(&mut conn, Some(SHORT));
        let got = counts(&receiver.delivered);
        if expected.iter().all(|p| got.contains_key(p)) {
            break;
        }
    }
    conn.disconnect();
    receiver.delivered
}

/// Creates the persistent session `client_id` subscribed to `filter` and leaves it offline.
fn make_session(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    filter: &str,
    qos: QoS,
) {
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

    /// The topic of message `n` of publisher `tag`.
    fn topic(self, tag: &str, n: u64) -> String {
        match self {
            Kind::Q1 => "load/q1".into(),
            Kind::Q2 => "load/q2".into(),
            Kind::Retained => format!("ret/{tag}/{n}"),
        }
    }

    /// The kind of a payload (`<prefix>-<publisher>-<n>`).
    fn of(payload: &str) -> Option<Kind> {
        match payload.split_once('-')?.0 {
            "q1" => Some(Kind::Q1),
            "q2" => Some(Kind::Q2),
            "r" => Some(Kind::Retained),
            _ => None,
        }
    }
}

/// A message published.
#[derive(Debug, Clone)]
struct Sent {
    topic: String,
    payload: String,
    kind: Kind,
}

/// A publisher's bookkeeping, shared by its writer and reader threads.
#[derive(Default)]
struct Window {
    /// Sent and not complete (no PUBACK, or no PUBCOMP), by packet id.
    outstanding: HashMap<u16, Sent>,
    /// Every payload sent.
    sent: HashSet<String>,
    /// Acknowledged (PUBACK or PUBREC with a success code), with when the acknowledgement
    /// arrived.
    acked: Vec<(Sent, Instant)>,
    /// QoS 2: packet ids whose PUBREC came (and PUBREL went), awaiting PUBCOMP.
    released: HashSet<u16>,
    /// QoS 2: packet ids in the order their PUBCOMP came.
    completed: Vec<u16>,
    /// Acknowledged with an error code.
    refused: Vec<String>,
    /// Why the connection ended, once it has.
    ended: Option<String>,
    /// Armed: the reader thread kills the broker as soon as the moment comes.
    kill_switch: Option<KillSwitch>,
    /// When the reader thread killed the broker.
    killed_at: Option<Instant>,
}

/// Kills a broker when `moment` holds for a publisher's window: tried by the publisher's
/// reader thread after each packet (at once: no thread has to be woken up first), and by the
/// test's thread every millisecond.
struct KillSwitch {
    broker: Arc<Mutex<Running>>,
    moment: Box<dyn FnMut(&Window) -> bool + Send>,
}

impl Window {
    /// Kills the broker if the kill switch is armed and its moment has come.
    fn try_kill(&mut self) {
        if let Some(mut switch) = self.kill_switch.take() {
            if (switch.moment)(self) {
                self.killed_at = Some(Instant::now());
                let _ = switch.broker.lock().unwrap().child().kill();
            } else {
                self.kill_switch = Some(switch);
            }
        }
    }
}

type Shared = Arc<(Mutex<Window>, Condvar)>;

/// A publisher connection that pipelines numbered messages (up to [`WINDOW`] unacknowledged)
/// until stopped or until the connection breaks. Its payloads are `<kind>-<name>-<n>`.
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

/// How a publisher picks packet ids.
#[derive(Debug, Clone, Copy)]
enum PacketIds {
    /// The one after the last one (wrapping), skipping those in use.
    Incrementing,
    /// The lowest one not in use: a packet id is reused as soon as its flow is complete, as
    /// many clients do.
    LowestFree,
}

impl Publisher {
    /// A publisher with a clean session, its client id `name` naming its payloads.
    fn start(
        addr: SocketAddr,
        version: ProtocolVersion,
        name: &str,
        kinds: &'static [Kind],
    ) -> Self {
        let connect = Connect::new(version, mstr(name));
        Self::start_with(addr, connect, name, kinds, PacketIds::Incrementing)
    }

    /// A publisher connected with `connect`, `name` naming its payloads.
    fn start_with(
        addr: SocketAddr,
        connect: Connect,
        name: &str,
        kinds: &'static [Kind],
        ids: PacketIds,
    ) -> Self {
        let version = connect.protocol;
        let (conn, _) = Conn::connect(addr, connect);
        let writer = Arc::new(Mutex::new(conn.stream.try_clone().unwrap()));
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let write = {
            let (shared, stop, writer) = (shared.clone(), stop.clone(), writer.clone());
            let name = name.to_owned();
            std::thread::spawn(move || {
                publish_loop(&shared, &stop, &writer, (version, ids), &name, kinds)
            })
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

    /// Counts the messages acknowledged so far, by kind; fails if the connection ended.
    fn count_acked(&self, counts: &mut HashMap<Kind, usize>) {
        let w = self.shared.0.lock().unwrap();
        if let Some(why) = &w.ended {
            panic!(
                "publisher {}: connection ended during the load: {why}",
                self.name
            );
        }
        for (sent, _) in &w.acked {
            *counts.entry(sent.kind).or_default() += 1;
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

fn write_packet(
    writer: &Mutex<TcpStream>,
    version: ProtocolVersion,
    packet: &Packet,
) -> io::Result<()> {
    writer.lock().unwrap().write_all(&encode(packet, version))
}

/// The first packet id after `after` (cyclically) not in use.
fn free_id(after: u16, in_use: impl Fn(u16) -> bool) -> u16 {
    (0..u16::MAX)
        .map(|k| ((u32::from(after) + u32::from(k)) % 65_535 + 1) as u16)
        .find(|id| !in_use(*id))
        .unwrap()
}

fn publish_loop(
    shared: &Shared,
    stop: &AtomicBool,
    writer: &Mutex<TcpStream>,
    (version, ids): (ProtocolVersion, PacketIds),
    name: &str,
    kinds: &[Kind],
) {
    let mut last_id: u16 = 0;
    for n in 0u64.. {
        let kind = kinds[n as usize % kinds.len()];
        let sent = Sent {
            topic: kind.topic(name, n),
            payload: format!("{}-{name}-{n}", kind.prefix()),
            kind,
        };
        let id = {
            let mut w = shared.0.lock().unwrap();
            loop {
                if w.ended.is_some() || stop.load(Ordering::Acquire) {
                    return;
                }
                if w.outstanding.len() < WINDOW {
                    break;
                }
                w = shared
                    .1
                    .wait_timeout(w, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
            let after = match ids {
                PacketIds::LowestFree => 0,
                PacketIds::Incrementing => last_id,
            };
            let id = free_id(after, |id| w.outstanding.contains_key(&id));
            last_id = id;
            w.outstanding.insert(id, sent.clone());
            w.sent.insert(sent.payload.clone());
            id
        };
        let mut p = Publish::new(
            TopicName::new(sent.topic.as_str()).unwrap(),
            Bytes::from(sent.payload),
        );
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
        let mut reply = None;
        match packet {
            Packet::PubAck(a) => match w.outstanding.remove(&a.packet_id.get()) {
                Some(sent) if a.reason.is_success() => w.acked.push((sent, now)),
                Some(sent) => w.refused.push(sent.payload),
                None => w.ended = Some(format!("PUBACK for an unknown packet id: {a:?}")),
            },
            Packet::PubRec(r) => match w.outstanding.get(&r.packet_id.get()).cloned() {
                Some(sent) if r.reason.is_success() => {
                    w.acked.push((sent, now));
                    w.released.insert(r.packet_id.get());
                    reply = Some(Packet::PubRel(PubResponse::new(r.packet_id)));
                }
                Some(sent) => {
                    w.outstanding.remove(&r.packet_id.get());
                    w.refused.push(sent.payload);
                }
                None => w.ended = Some(format!("PUBREC for an unknown packet id: {r:?}")),
            },
            Packet::PubComp(c) => {
                w.outstanding.remove(&c.packet_id.get());
                w.released.remove(&c.packet_id.get());
                w.completed.push(c.packet_id.get());
            }
            other => w.ended = Some(format!("unexpected {other:?}")),
        }
        w.try_kill();
        shared.1.notify_all();
        if w.ended.is_some() {
            return;
        }
        drop(w);
        if let Some(reply) = reply
            && let Err(e) = write_packet(writer, conn.version, &reply)
        {
            return end(shared, format!("write: {e}"));
        }
    }
}

/// What the publishers of a test sent and got acknowledged.
#[derive(Default)]
struct Load {
    sent: HashSet<String>,
    acked: Vec<(Sent, Instant)>,
}

impl Load {
    fn of(windows: &[Window]) -> Load {
        let mut load = Load::default();
        for w in windows {
            load.sent.extend(w.sent.iter().cloned());
            load.acked.extend(w.acked.iter().cloned());
        }
        load
    }
}

/// Runs `publishers` until [`LOAD`] has passed with every kind acknowledged at least once,
/// then kills the broker while they keep publishing. Returns the instant of the kill and
/// what each publisher sent and got acknowledged.
fn load_then_kill(
    broker: &mut Broker,
    publishers: Vec<Publisher>,
    kinds: &[Kind],
) -> (Instant, Vec<Window>) {
    load_then_kill_when(broker, publishers, kinds, LOAD, |_| true)
}

/// [`load_then_kill`] with a load of `load`, the kill coming at the first moment (within 2 s)
/// when `moment` holds for the first publisher's window.
fn load_then_kill_when(
    broker: &mut Broker,
    publishers: Vec<Publisher>,
    kinds: &[Kind],
    load: Duration,
    moment: impl FnMut(&Window) -> bool + Send + 'static,
) -> (Instant, Vec<Window>) {
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let mut counts = HashMap::new();
        for p in &publishers {
            p.count_acked(&mut counts);
        }
        if started.elapsed() >= load && kinds.iter().all(|k| counts.get(k).is_some_and(|&c| c > 0))
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "not every kind acknowledged after {WAIT:?}: {counts:?}\n{}",
            broker.log()
        );
    }
    let killed_at = {
        let (lock, wake) = &*publishers[0].shared;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut w = lock.lock().unwrap();
        w.kill_switch = Some(KillSwitch {
            broker: broker.running.clone(),
            moment: Box::new(moment),
        });
        while w.killed_at.is_none() && w.ended.is_none() && Instant::now() < deadline {
            w = wake.wait_timeout(w, Duration::from_millis(1)).unwrap().0;
            w.try_kill();
        }
        w.kill_switch = None;
        w.killed_at.unwrap_or_else(Instant::now)
    };
    broker.kill();
    let windows: Vec<Window> = publishers.into_iter().map(Publisher::finish).collect();
    for w in &windows {
        assert!(
            w.refused.is_empty(),
            "refused publishes: {}",
            some(&w.refused)
        );
    }
    (killed_at, windows)
}

/// Whether the retained messages hold `sent`.
fn has_retained(retained: &HashMap<String, String>, sent: &Sent) -> bool {
    retained.get(&sent.topic) == Some(&sent.payload)
}

/// How many times each payload arrived.
fn counts(got: &[Got]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for g in got {
        *m.entry(g.payload.as_str()).or_default() += 1;
    }
    m
}

/// The packet id and DUP flag of each delivery of a message.
type Deliveries = Vec<(Option<u16>, bool)>;

/// Payloads that arrived more than once, each with the packet id and DUP flag of every
/// delivery.
fn duplicates(got: &[Got]) -> Vec<(String, Deliveries)> {
    let mut by_payload: HashMap<&str, Deliveries> = HashMap::new();
    for g in got {
        by_payload
            .entry(g.payload.as_str())
            .or_default()
            .push((g.packet_id, g.dup));
    }
    let mut d: Vec<_> = by_payload
        .into_iter()
        .filter(|(_, deliveries)| deliveries.len() > 1)
        .map(|(p, deliveries)| (p.to_owned(), deliveries))
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
            panic!(
                "retained message {} sent twice ({old}, {})",
                g.topic, g.payload
            );
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
        Publisher::start(addr, V3_1_1, "p1", &[Kind::Q1, Kind::Retained]),
        Publisher::start(addr, V5, "p2", &[Kind::Q2]),
    ];
    let (_, windows) = load_then_kill(
        &mut broker,
        publishers,
        &[Kind::Q1, Kind::Q2, Kind::Retained],
    );
    let load = Load::of(&windows);

    let broker = broker.restart();
    let (s1, s2) = std::thread::scope(|s| {
        let s1 = s.spawn(|| resume_and_drain(addr, V3_1_1, "s1"));
        let s2 = s.spawn(|| resume_and_drain(addr, V5, "s2"));
        (s1.join().unwrap(), s2.join().unwrap())
    });
    let retained = retained_after_restart(addr);
    broker.assert_no_panic();

    let acked = |kind| -> Vec<&Sent> {
        load.acked
            .iter()
            .map(|(sent, _)| sent)
            .filter(|sent| sent.kind == kind)
            .collect()
    };
    let (q1, q2, ret) = (acked(Kind::Q1), acked(Kind::Q2), acked(Kind::Retained));
    let (c1, c2) = (counts(&s1), counts(&s2));
    let lost = |acked: &[&Sent], got: &HashMap<&str, usize>| -> Vec<String> {
        acked
            .iter()
            .filter(|sent| !got.contains_key(sent.payload.as_str()))
            .map(|sent| sent.payload.clone())
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
        .filter(|sent| !has_retained(&retained, sent))
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
        "sync=always: sent {}; acked q1 {} q2 {} retained {}; after restart: S1 got {} ({} \
         distinct, {} duplicated), S2 got {} ({} distinct, {} duplicated, {} of them QoS 2), \
         retained {}; lost: S1 {}, S2 {}, retained {}",
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
    assert!(
        unknown.is_empty(),
        "messages never sent: {}",
        some(&unknown)
    );
    assert!(
        s1_lost.is_empty(),
        "acknowledged, lost for S1: {}",
        some(&s1_lost)
    );
    assert!(
        s2_lost.is_empty(),
        "acknowledged, lost for S2: {}",
        some(&s2_lost)
    );
    assert!(
        ret_lost.is_empty(),
        "acknowledged retained messages lost: {}",
        some(&ret_lost)
    );
    assert!(
        s2_q2_dups.is_empty(),
        "QoS 2 messages delivered more than once to S2: {}",
        some(&s2_q2_dups)
    );
    assert!(
        s2_wrong_qos.is_empty(),
        "S2 got messages at the wrong QoS: {}",
        some(&s2_wrong_qos)
    );
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
        Publisher::start(addr, V3_1_1, "p1", &[Kind::Q1, Kind::Retained]),
        Publisher::start(addr, V5, "p2", &[Kind::Q1, Kind::Retained]),
    ];
    let (killed_at, windows) = load_then_kill(&mut broker, publishers, &[Kind::Q1, Kind::Retained]);
    let load = Load::of(&windows);

    let broker = broker.restart();
    let (s1, s2) = std::thread::scope(|s| {
        let s1 = s.spawn(|| resume_and_drain(addr, V3_1_1, "s1"));
        let s2 = s.spawn(|| resume_and_drain(addr, V5, "s2"));
        (s1.join().unwrap(), s2.join().unwrap())
    });
    let retained = retained_after_restart(addr);
    broker.assert_no_panic();

    let (c1, c2) = (counts(&s1), counts(&s2));
    let present = |sent: &Sent| match sent.kind {
        Kind::Retained => has_retained(&retained, sent),
        _ => c1.contains_key(sent.payload.as_str()) && c2.contains_key(sent.payload.as_str()),
    };
    // Age of each lost acknowledged message at the kill (negative: acknowledged after it).
    let mut lost: Vec<(String, i128)> = load
        .acked
        .iter()
        .filter(|(sent, _)| !present(sent))
        .map(|(sent, at)| {
            let age = if *at <= killed_at {
                (killed_at - *at).as_millis() as i128
            } else {
                -((*at - killed_at).as_millis() as i128)
            };
            (sent.payload.clone(), age)
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
    let oldest_lost = lost
        .first()
        .map_or("none".into(), |(_, age)| format!("{age} ms"));
    eprintln!(
        "sync=periodic ({} ms): sent {}; acked {}; after restart: S1 got {} ({} distinct, {} \
         duplicated), S2 got {} ({} distinct, {} duplicated), retained {}; acknowledged but \
         lost: {} (the oldest acknowledged {} before the kill); lost older than {} ms: {}",
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
    assert!(
        unknown.is_empty(),
        "messages never sent: {}",
        some(&unknown)
    );
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
            "-E",
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
    assert_eq!(
        got, want,
        "mosquitto_sub after the crash ({}): {}",
        out.status, out.stderr
    );
    assert!(out.status.success(), "{}: {}", out.status, out.stderr);
}

/// What a resumed QoS 2 publisher did.
struct Resumed {
    /// PUBLISHes sent again with DUP (no PUBREC before the crash).
    republished: usize,
    /// PUBRELs sent again (no PUBCOMP before the crash).
    rereleased: usize,
    /// PUBCOMPs with an error code (packet id, reason): 0x92 for a PUBREL sent again whose
    /// PUBCOMP was lost in the crash.
    not_found: Vec<(u16, ReasonCode)>,
    /// Payloads of the new messages, published on the lowest free packet ids.
    sent: Vec<String>,
}

/// Resumes the persistent QoS 2 publisher `client_id` whose state was `before`, as the
/// protocol says: PUBLISH again with DUP what got no PUBREC, PUBREL again what got no PUBCOMP;
/// then publishes `new` messages (payloads `q2-<tag>-<n>`) on the lowest packet ids not in
/// flight (with a publisher that always took the lowest free one, the ids released just before
/// the crash), and completes every flow.
fn resume_publisher(
    addr: SocketAddr,
    client_id: &str,
    before: &Window,
    new: usize,
    tag: &str,
) -> Resumed {
    let (mut conn, ack) = Conn::connect(addr, persistent(V5, client_id));
    assert!(ack.session_present, "the publisher's session is gone");
    let mut pending: Vec<(u16, Sent)> = before
        .outstanding
        .iter()
        .map(|(id, sent)| (*id, sent.clone()))
        .collect();
    pending.sort_by_key(|(id, _)| *id);
    let mut resumed = Resumed {
        republished: 0,
        rereleased: 0,
        not_found: Vec::new(),
        sent: Vec::new(),
    };
    for (id, sent) in &pending {
        if before.released.contains(id) {
            conn.send(&Packet::PubRel(PubResponse::new(pid(*id))));
            resumed.rereleased += 1;
        } else {
            let mut p = Publish::new(
                TopicName::new(sent.topic.as_str()).unwrap(),
                Bytes::from(sent.payload.clone()),
            );
            p.qos = QoS::ExactlyOnce;
            p.dup = true;
            p.packet_id = Some(pid(*id));
            conn.send(&Packet::Publish(p));
            resumed.republished += 1;
        }
    }
    let mut reused: Vec<u16> = Vec::new();
    for _ in 0..new {
        reused.push(free_id(0, |id| {
            before.outstanding.contains_key(&id) || reused.contains(&id)
        }));
    }
    for (k, id) in reused.iter().enumerate() {
        let payload = format!("q2-{tag}-{k}");
        let mut p = Publish::new(
            TopicName::new("load/q2").unwrap(),
            Bytes::from(payload.clone()),
        );
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid(*id));
        conn.send(&Packet::Publish(p));
        resumed.sent.push(payload);
    }
    let mut open: HashSet<u16> = pending.iter().map(|(id, _)| *id).collect();
    open.extend(&reused);
    while !open.is_empty() {
        match conn.recv() {
            Packet::PubRec(r) => {
                assert!(r.reason.is_success(), "{r:?}");
                conn.send(&Packet::PubRel(PubResponse::new(r.packet_id)));
            }
            Packet::PubComp(c) => {
                if c.reason.is_error() {
                    resumed.not_found.push((c.packet_id.get(), c.reason));
                }
                open.remove(&c.packet_id.get());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.disconnect();
    resumed
}

/// A persistent QoS 2 publisher, which always takes the lowest free packet id (as many
/// clients do), loads a broker with `sync = "always"` until it is killed; then it resumes its
/// session as the protocol says (PUBLISH again with DUP what got no PUBREC, PUBREL again what
/// got no PUBCOMP) and publishes 300 new messages, on the packet ids it got PUBCOMP for before
/// the crash. A persistent subscriber, offline meanwhile, must get every message exactly once:
/// the broker keeps on disk the inbound packet ids awaiting PUBREL, and only those. Several
/// rounds, each killed just after PUBCOMPs arrive: the broker sends them once the writes
/// before them are on disk, while it may still be writing the release of their packet ids.
#[test]
fn a_resumed_qos2_publisher_gets_exactly_once_across_a_crash() {
    const ROUNDS: usize = 8;
    let dir = TempDir::new("qos2-publisher");
    let port = free_port();
    let mut broker = Broker::start(
        &dir,
        port,
        "sync = \"always\"\nmax_queued_messages = 1000000",
    );
    let addr = broker.addr();
    make_session(addr, V5, "s2", "load/#", QoS::ExactlyOnce);
    let mut all_got = Vec::new();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let connect = persistent(V5, "p");
        let tag = format!("p{round}");
        let publisher =
            Publisher::start_with(addr, connect, &tag, &[Kind::Q2], PacketIds::LowestFree);
        let mut seen = None;
        let load = Duration::from_millis(200);
        let (_, mut windows) =
            load_then_kill_when(&mut broker, vec![publisher], &[Kind::Q2], load, move |w| {
                let completed = w.completed.len();
                *seen.get_or_insert(completed) < completed
            });
        let before = windows.pop().unwrap();
        broker = broker.restart();
        let after = resume_publisher(addr, "p", &before, 300, &format!("new{round}"));
        let expected = before.sent.iter().chain(&after.sent).map(String::as_str);
        let got = resume_and_drain_expecting(addr, "s2", expected.collect());
        let count = counts(&got);
        let old_lost: Vec<&String> = before
            .sent
            .iter()
            .filter(|p| !count.contains_key(p.as_str()))
            .collect();
        let new_lost: Vec<&String> = after
            .sent
            .iter()
            .filter(|p| !count.contains_key(p.as_str()))
            .collect();
        eprintln!(
            "QoS 2 publisher resumed, round {round}: sent {} before the crash ({} acknowledged, \
             {} complete), then {} PUBLISH again with DUP, {} PUBREL again ({} answered 0x92: \
             released before the crash), {} new on reused packet ids; S2 got {} ({} distinct); \
             lost: {} sent before the crash, {} new",
            before.sent.len(),
            before.acked.len(),
            before.completed.len(),
            after.republished,
            after.rereleased,
            after.not_found.len(),
            after.sent.len(),
            got.len(),
            count.len(),
            old_lost.len(),
            new_lost.len(),
        );
        if !new_lost.is_empty() {
            failures.push(format!(
                "round {round}: new messages on packet ids released (PUBCOMP) before the crash \
                 were acknowledged (PUBREC) and never delivered: {}",
                some(&new_lost)
            ));
        }
        if !old_lost.is_empty() {
            failures.push(format!(
                "round {round}: messages sent before the crash, complete (PUBCOMP) after it, \
                 never delivered: {}",
                some(&old_lost)
            ));
        }
        all_got.extend(got);
        if !failures.is_empty() {
            break;
        }
    }
    broker.assert_no_panic();
    let dups = duplicates(&all_got);
    if !dups.is_empty() {
        failures.push(format!("delivered more than once: {}", some(&dups)));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A persistent QoS 2 subscriber stays connected while its broker is killed under the load
/// of a persistent QoS 2 publisher; then both resume their sessions (the publisher sends
/// again, with DUP, what got no PUBREC, and PUBREL again what got no PUBCOMP). Every message
/// must reach the subscriber's application exactly once, and every packet id the subscriber
/// answered with PUBREC must be released (PUBREL) in the end. (With `sync = "always"` the
/// broker sends a stored message only once its packet id is on disk.)
#[test]
fn an_online_qos2_subscriber_gets_exactly_once_across_a_crash() {
    let dir = TempDir::new("qos2-subscriber");
    let port = free_port();
    let mut broker = Broker::start(
        &dir,
        port,
        "sync = \"always\"\nmax_queued_messages = 1000000",
    );
    let addr = broker.addr();
    let (mut conn, ack) = Conn::connect(addr, persistent(V5, "s2"));
    assert!(!ack.session_present);
    conn.subscribe("load/#", QoS::ExactlyOnce);
    let mut receiver = ExactlyOnceReceiver::default();
    let progress = receiver.progress.clone();
    let subscriber = std::thread::spawn(move || {
        receiver.run(&mut conn, None);
        receiver
    });
    let connect = persistent(V5, "p");
    let publisher = Publisher::start_with(addr, connect, "p", &[Kind::Q2], PacketIds::Incrementing);
    // The kill comes when the subscriber has got messages whose PUBREC the publisher has not.
    let (_, mut windows) =
        load_then_kill_when(&mut broker, vec![publisher], &[Kind::Q2], LOAD, move |w| {
            progress.load(Ordering::Relaxed) > w.acked.len()
        });
    let before = windows.pop().unwrap();
    let mut receiver = subscriber.join().unwrap();
    let (delivered_before, held_before) =
        (receiver.delivered.len(), receiver.awaiting_pubrel.len());

    let broker = broker.restart();
    let after = resume_publisher(addr, "p", &before, 0, "none");
    let (mut conn, ack) = Conn::connect(addr, persistent(V5, "s2"));
    assert!(ack.session_present, "the subscriber's session is gone");
    receiver.run(&mut conn, Some(SILENCE));
    broker.assert_no_panic();

    let got = counts(&receiver.delivered);
    let lost: Vec<&String> = before
        .sent
        .iter()
        .filter(|p| !got.contains_key(p.as_str()))
        .collect();
    let dups = duplicates(&receiver.delivered);
    // A duplicate that came again with DUP on the same packet id was re-sent from the
    // broker's restored in-flight state after the subscriber had released that id; the others
    // came as new messages.
    let resent = dups
        .iter()
        .filter(|(_, d)| d.len() > 1 && d[1].1 && d[1].0 == d[0].0)
        .count();
    let mut stuck: Vec<u16> = receiver.awaiting_pubrel.iter().copied().collect();
    stuck.sort_unstable();
    eprintln!(
        "QoS 2 subscriber online at the crash: publisher sent {} ({} acknowledged), then {} \
         PUBLISH again with DUP and {} PUBREL again; subscriber: {} delivered and {} packet ids \
         awaiting PUBREL at the crash, {} delivered after it, {} re-sent PUBLISH recognised by \
         packet id; lost {}, delivered twice {} ({} re-sent with DUP on a released packet id, {} \
         as new messages), packet ids never released {}",
        before.sent.len(),
        before.acked.len(),
        after.republished,
        after.rereleased,
        delivered_before,
        held_before,
        receiver.delivered.len() - delivered_before,
        receiver.protocol_duplicates,
        lost.len(),
        dups.len(),
        resent,
        dups.len() - resent,
        stuck.len(),
    );
    assert!(lost.is_empty(), "never delivered: {}", some(&lost));
    assert!(
        dups.is_empty(),
        "delivered twice to the application (payload: packet id and DUP of each delivery): {}",
        some(&dups)
    );
    assert!(
        stuck.is_empty(),
        "packet ids the subscriber answered with PUBREC and the broker never released (a new \
         message on one of them would be taken for a duplicate): {}",
        some(&stuck)
    );
}

/// A second broker on a data directory that a running broker holds exits with an error that
/// names the store; the first one goes on.
#[test]
fn a_second_broker_on_the_same_data_dir_is_refused_with_a_clear_error() {
    let dir = TempDir::new("locked");
    let port = free_port();
    let first = Broker::start(&dir, port, "");
    let other = free_port().to_string();
    let out = run(
        Command::new(BIN)
            .args([
                "broker",
                "--listen",
                &format!("127.0.0.1:{other}"),
                "--data-dir",
            ])
            .arg(dir.data())
            .env_remove("RUST_LOG"),
        WAIT,
    );
    eprintln!("second broker: {}: {}", out.status, out.stderr.trim());
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("sagitta.redb") && out.stderr.contains("in use"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // The first one still serves.
    let (conn, _) = Conn::connect(first.addr(), Connect::new(V5, mstr("still-there")));
    conn.disconnect();
}

/// A store with retained messages, written by a broker that was then stopped cleanly.
fn store_with_retained_messages(dir: &TempDir) {
    let broker = Broker::start(dir, free_port(), "sync = \"always\"");
    let (mut conn, _) = Conn::connect(broker.addr(), Connect::new(V5, mstr("filler")));
    for i in 0..50 {
        let mut p = Publish::new(
            TopicName::new(format!("ret/{i}")).unwrap(),
            Bytes::from(format!("value {i} {}", "x".repeat(200))),
        );
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = Some(pid(1));
        conn.send(&Packet::Publish(p));
        match conn.recv() {
            Packet::PubAck(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    conn.disconnect();
    let pid = broker.running.lock().unwrap().child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    while broker
        .running
        .lock()
        .unwrap()
        .child()
        .try_wait()
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the broker did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a broker on `data` (which must not start) and returns its exit status and stderr.
fn start_on_damaged(data: &Path) -> Out {
    run(
        Command::new(BIN)
            .args([
                "broker",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--data-dir",
            ])
            .arg(data)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE"),
        WAIT,
    )
}

/// Copies the store of `dir` to a new data directory and damages its file with `damage`.
fn damaged_copy(dir: &TempDir, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut bytes = std::fs::read(dir.data().join("sagitta.redb")).unwrap();
    damage(&mut bytes);
    std::fs::write(data.join("sagitta.redb"), bytes).unwrap();
    data
}

/// Bytes that look random (xorshift), the same in every run.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A store file with garbage appended, overwritten, cut short or with a damaged header stops
/// the start (exit 1) with an error that names the file, never a silent start.
#[test]
fn a_damaged_store_file_stops_the_start_with_an_error_naming_it() {
    let dir = TempDir::new("damaged");
    store_with_retained_messages(&dir);
    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage); 6] = [
        ("appended", |b| b.extend(garbage(10_000))),
        ("appended-line", |b| b.extend(b"garbage\n")),
        ("overwritten", |b| *b = garbage(b.len())),
        ("text", |b| *b = b"listen = [\"127.0.0.1:1883\"]\n".to_vec()),
        ("header", |b| b[..4096].copy_from_slice(&garbage(4096))),
        ("truncated", |b| b.truncate(b.len() / 2)),
    ];
    let mut failures = Vec::new();
    for (name, damage) in cases {
        let data = damaged_copy(&dir, name, damage);
        let out = start_on_damaged(&data);
        let err = out.stderr.trim();
        eprintln!("{name}: {}: {err}", out.status);
        if out.status.code() != Some(1)
            || !err.contains(&data.join("sagitta.redb").display().to_string())
            || err.contains("panicked")
        {
            failures.push(format!("{name}: {}: {err}", out.status));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The same for a file whose header is intact and whose pages are damaged.
#[test]
fn a_store_file_with_damaged_pages_stops_the_start_with_an_error_naming_it() {
    let dir = TempDir::new("damaged-pages");
    store_with_retained_messages(&dir);
    let data = damaged_copy(&dir, "pages", |b| b[4096..].fill(0xAB));
    let out = start_on_damaged(&data);
    let err = out.stderr.trim();
    eprintln!("damaged pages: {}: {err}", out.status);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The storage engine may report the damage as a panic of its own (printed by Rust's
    // panic hook); the broker's last word must still name the file and say what to do.
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&data.join("sagitta.redb").display().to_string())
            && last.contains("move it away"),
        "not a clear error naming the file: {err}"
    );
}
