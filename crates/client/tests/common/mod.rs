//! Test harness: a broker started per test on a free port — Debian's Mosquitto or our own
//! ([`BrokerKind`]) —, a TCP proxy that can cut or freeze connections, and a scripted mock
//! broker speaking raw MQTT with the codec.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pki;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sagitta_client::proto::{ConnAck, Connect, Packet, ProtocolVersion, ReasonCode, decode};
use sagitta_client::{ReconnectPolicy, State, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A reconnect policy fast enough for tests.
pub fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy::exponential(Duration::from_millis(20), Duration::from_millis(200))
}

/// Waits until the client's status satisfies `pred`.
pub async fn wait_status(
    client: &sagitta_client::Client,
    what: &str,
    pred: impl FnMut(&Status) -> bool,
) -> Status {
    let mut rx = client.watch_status();
    within(what, async move {
        rx.wait_for(pred)
            .await
            .map(|s| s.clone())
            .expect("status sender alive")
    })
    .await
}

/// Waits until the client is connected for the `n`th time.
pub async fn wait_connected(client: &sagitta_client::Client, n: u32) -> Status {
    wait_status(client, "reconnection", |s| {
        s.state == State::Connected && s.connections >= n
    })
    .await
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Which broker an integration test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Debian's Mosquitto, a child process.
    Mosquitto,
    /// Our own broker (`sagitta-broker`), in-process on a runtime of its own.
    Sagitta,
}

/// What a test needs from the broker beyond anonymous access on a free port of 127.0.0.1,
/// without persistence.
#[derive(Debug, Clone, Default)]
pub struct BrokerSetup {
    /// Only this user, with this password, may connect; anonymous clients are refused.
    pub user: Option<(String, String)>,
    /// The largest packet the broker accepts (and announces to 5.0 clients).
    pub max_packet_size: Option<u32>,
    /// A Mosquitto ACL file. Our broker has no ACLs yet: starting it with one fails the test,
    /// so a scenario that needs them must be skipped for it explicitly.
    pub mosquitto_acl: Option<String>,
    /// Listen with TLS (instead of plain TCP).
    pub tls: Option<TlsSetup>,
}

/// The TLS listener of a test broker: PEM files, and the CA client certificates must chain
/// to (required when given).
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl BrokerSetup {
    /// Only `user` with `password` may connect.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// The broker's maximum packet size.
    pub fn max_packet_size(mut self, max: u32) -> Self {
        self.max_packet_size = Some(max);
        self
    }

    /// A Mosquitto ACL file's text.
    pub fn mosquitto_acl(mut self, acl: &str) -> Self {
        self.mosquitto_acl = Some(acl.to_owned());
        self
    }

    /// A TLS listener instead of plain TCP.
    pub fn tls(mut self, tls: TlsSetup) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A broker of either kind, stopped when dropped.
pub enum TestBroker {
    Mosquitto(Mosquitto),
    Sagitta(Sagitta),
}

impl TestBroker {
    /// Starts a broker of `kind` with anonymous access.
    pub fn start(kind: BrokerKind) -> Self {
        Self::start_with(kind, &BrokerSetup::default())
    }

    /// Starts a broker of `kind` set up as `setup` says.
    pub fn start_with(kind: BrokerKind, setup: &BrokerSetup) -> Self {
        match kind {
            BrokerKind::Mosquitto => Self::Mosquitto(Mosquitto::start_with(setup)),
            BrokerKind::Sagitta => Self::Sagitta(Sagitta::start_with(setup)),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        match self {
            Self::Mosquitto(_) => BrokerKind::Mosquitto,
            Self::Sagitta(_) => BrokerKind::Sagitta,
        }
    }

    /// The port the broker listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        match self {
            Self::Mosquitto(m) => m.port,
            Self::Sagitta(s) => s.port,
        }
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Stops the broker at once: no DISCONNECT, no goodbye, no will; sessions are lost.
    pub fn kill(&mut self) {
        match self {
            Self::Mosquitto(m) => m.kill(),
            Self::Sagitta(s) => s.kill(),
        }
    }

    /// (Re)starts the broker on the same port, with the same setup and an empty state, and
    /// waits until it accepts connections.
    pub fn start_again(&mut self) {
        match self {
            Self::Mosquitto(m) => m.start_again(),
            Self::Sagitta(s) => s.start_again(),
        }
    }
}

fn mosquitto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    for candidate in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "mosquitto not found (looked at $MOSQUITTO, /usr/sbin/mosquitto, \
         /usr/local/sbin/mosquitto): install Debian's `mosquitto` package \
         (scripts/test-all does) to run the client's integration tests"
    );
}

/// A Mosquitto process on 127.0.0.1, killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts Mosquitto with anonymous access and no persistence.
    pub fn start() -> Self {
        Self::start_with(&BrokerSetup::default())
    }

    /// Starts Mosquitto set up as `setup` says.
    pub fn start_with(setup: &BrokerSetup) -> Self {
        Self::with_config(|dir| {
            let mut lines = String::new();
            match &setup.user {
                Some((user, password)) => {
                    lines.push_str("allow_anonymous false\n");
                    lines.push_str(&Self::password_file(dir, user, password));
                }
                None => lines.push_str("allow_anonymous true\n"),
            }
            if let Some(max) = setup.max_packet_size {
                lines.push_str(&format!("max_packet_size {max}\n"));
            }
            if let Some(acl) = &setup.mosquitto_acl {
                let path = dir.join("acl");
                std::fs::write(&path, acl).expect("write ACL file");
                lines.push_str(&format!("acl_file {}\n", path.display()));
            }
            if let Some(tls) = &setup.tls {
                // These lines follow the `listener` line: they make it a TLS listener.
                lines.push_str(&format!(
                    "certfile {}\nkeyfile {}\n",
                    tls.cert.display(),
                    tls.key.display()
                ));
                if let Some(ca) = &tls.client_ca {
                    lines.push_str(&format!(
                        "cafile {}\nrequire_certificate true\n",
                        ca.display()
                    ));
                }
            }
            lines
        })
    }

    /// Starts Mosquitto with the config lines `extra` returns; it gets the directory for the
    /// test's files (password file, ACL file).
    pub fn with_config(extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sagitta-client-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let extra = extra(&dir);
        // A port found free can be taken by a parallel test before Mosquitto binds it: retry
        // with another port when that happens.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "listener {port} 127.0.0.1\npersistence false\nuser root\n\
                 log_dest stderr\nlog_type all\n{extra}"
            );
            std::fs::write(dir.join("mosquitto.conf"), config).expect("write config");
            let mut m = Self {
                port,
                dir: dir.clone(),
                child: None,
            };
            match m.try_start() {
                Ok(()) => return m,
                Err(why) if why.contains("Address already in use") => last_error = why,
                Err(why) => panic!("{why}"),
            }
        }
        panic!("no free port for mosquitto: {last_error}");
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the broker at once (SIGKILL): no DISCONNECT, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the broker on the same port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        self.kill();
        let runs_before = self.log().matches(" running").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("open log");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            // Ready when this Mosquitto says it runs and the port answers. The log check
            // matters: tests run in parallel, and another test's listener may hold a port
            // that was free a moment ago (Mosquitto then exits: "Address already in use").
            if self.log().matches(" running").count() > runs_before
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "mosquitto exited with {status}; log: {}",
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "mosquitto did not accept connections on port {}; log: {}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Writes a password file with one user and returns the config line for it.
    pub fn password_file(dir: &Path, user: &str, password: &str) -> String {
        let path = dir.join("passwords");
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg("-c")
            .arg(&path)
            .arg(user)
            .arg(password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run mosquitto_passwd (from Debian's mosquitto package)");
        assert!(status.success(), "mosquitto_passwd failed");
        format!("password_file {}\n", path.display())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our broker, in-process on 127.0.0.1: it runs on a Tokio runtime of its own, on a thread
/// of its own, so it neither shares the test's runtime nor needs one (blocking tests), and
/// can be killed like a process: dropping the runtime drops every task and closes every
/// socket, with no DISCONNECT and no will. Stopped when dropped.
///
/// `RUST_LOG=sagitta_broker=debug` shows its log in a failing test's output.
pub struct Sagitta {
    pub port: u16,
    setup: BrokerSetup,
    running: Option<RunningSagitta>,
}

struct RunningSagitta {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Sagitta {
    /// Starts our broker with default settings and anonymous access.
    pub fn start() -> Self {
        Self::start_with(&BrokerSetup::default())
    }

    /// Starts our broker set up as `setup` says, on a free port.
    pub fn start_with(setup: &BrokerSetup) -> Self {
        init_tracing();
        let mut s = Self {
            port: 0,
            setup: setup.clone(),
            running: None,
        };
        s.start_again();
        s
    }

    /// Starts our broker set up as `setup` says, on `port` (e.g. the port of one killed
    /// before, to replace it under the clients' feet).
    pub fn start_on(port: u16, setup: &BrokerSetup) -> Self {
        init_tracing();
        let mut s = Self {
            port,
            setup: setup.clone(),
            running: None,
        };
        s.start_again();
        s
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker at once, as SIGKILL stops a process: every task is dropped, every
    /// socket closed; clients get no DISCONNECT and no will is published.
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.thread.join().expect("broker thread panicked");
        }
    }

    /// (Re)starts the broker (on the port it got first), with an empty state.
    pub fn start_again(&mut self) {
        self.kill();
        let defaults = sagitta_broker::Config::default().in_memory();
        // Port 0 the first time; then the port we got, so clients find us again.
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let (listen, listeners) = match &self.setup.tls {
            None => (vec![bind], Vec::new()),
            Some(tls) => {
                let mut listener = sagitta_broker::ListenerConfig::tls(bind, &tls.cert, &tls.key)
                    .allow_anonymous(true);
                if let Some(ca) = &tls.client_ca {
                    listener = listener.client_ca(ca);
                }
                (Vec::new(), vec![listener])
            }
        };
        let config = sagitta_broker::Config {
            listen,
            listeners,
            max_packet_size: self
                .setup
                .max_packet_size
                .unwrap_or(defaults.max_packet_size),
            // The same ACL file as Mosquitto's: Sagitta reads that format.
            acl_file: self.setup.mosquitto_acl.as_ref().map(|acl| {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("sagitta-client-acl-{}-{n}", std::process::id()));
                std::fs::write(&path, acl).expect("write ACL file");
                path
            }),
            ..defaults
        };
        let user = self.setup.user.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("sagitta-broker-{}", self.port))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("broker runtime");
                runtime.block_on(async move {
                    let mut builder = sagitta_broker::Broker::builder(config);
                    if let Some((user, password)) = user {
                        builder = builder.authenticator(OneUser { user, password });
                    }
                    match builder.start().await {
                        Ok(broker) => {
                            let _ = ready_tx.send(Ok(broker.local_addrs()[0]));
                            let _ = stop_rx.await;
                            // Not `shutdown()`: the runtime is dropped with the broker's
                            // tasks still running, which is the point.
                            drop(broker);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                        }
                    }
                });
                drop(runtime);
            })
            .expect("spawn broker thread");
        let addr = match ready_rx.recv_timeout(WAIT) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("our broker did not start on port {}: {e}", self.port),
            Err(e) => panic!("our broker did not start on port {}: {e}", self.port),
        };
        self.port = addr.port();
        self.running = Some(RunningSagitta {
            stop: stop_tx,
            thread,
        });
    }
}

impl Drop for Sagitta {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            let _ = running.thread.join();
        }
    }
}

/// One user with a password, as Mosquitto's `allow_anonymous false` + password file:
/// anonymous clients are not authorized (0x87, 3.x return code 5), a wrong user name or
/// password is 0x86 (3.x return code 4).
struct OneUser {
    user: String,
    password: String,
}

impl sagitta_broker::Authenticator for OneUser {
    fn authenticate(&self, info: &sagitta_broker::ConnectInfo<'_>) -> Result<(), ReasonCode> {
        match (info.username, info.password) {
            (None, _) => Err(ReasonCode::NotAuthorized),
            (Some(user), Some(password))
                if user == self.user && password == self.password.as_bytes() =>
            {
                Ok(())
            }
            _ => Err(ReasonCode::BadUserNameOrPassword),
        }
    }
}

/// Sends `tracing` output (the in-process broker's log) to the test's captured output when
/// `RUST_LOG` is set.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
}

/// A TCP proxy in front of a broker: `cut` closes the current connections, `freeze` stops
/// forwarding on them while keeping them open. New connections are forwarded normally.
pub struct Proxy {
    pub port: u16,
    cut: Arc<Mutex<CancellationToken>>,
    freeze: Arc<Mutex<CancellationToken>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let (c, f) = (cut.clone(), freeze.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let cut = c.lock().unwrap().clone();
                let freeze = f.lock().unwrap().clone();
                tokio::spawn(async move {
                    let frozen = tokio::select! {
                        () = cut.cancelled() => false,
                        () = freeze.cancelled() => true,
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    };
                    if frozen {
                        cut.cancelled().await;
                    }
                });
            }
        });
        Self {
            port,
            cut,
            freeze,
            accept,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every current connection (both sides), as a network failure would.
    pub fn cut(&self) {
        let old = std::mem::take(&mut *self.cut.lock().unwrap());
        old.cancel();
    }

    /// Stops forwarding on every current connection but keeps them open: a silent network.
    pub fn freeze(&self) {
        let old = std::mem::take(&mut *self.freeze.lock().unwrap());
        old.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A scripted broker: the test drives each packet.
pub struct MockBroker {
    listener: TcpListener,
    pub port: u16,
}

impl MockBroker {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let port = listener.local_addr().expect("mock addr").port();
        Self { listener, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Accepts the next connection.
    pub async fn accept(&self, version: ProtocolVersion) -> MockConn {
        let (stream, _) = within("a client connection", self.listener.accept())
            .await
            .expect("accept");
        MockConn {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    /// Accepts a connection, reads CONNECT and answers `connack`.
    pub async fn accept_with(
        &self,
        version: ProtocolVersion,
        connack: ConnAck,
    ) -> (MockConn, Connect) {
        let mut conn = self.accept(version).await;
        let connect = match conn.recv().await {
            Packet::Connect(c) => *c,
            other => panic!("expected CONNECT, got {other:?}"),
        };
        conn.send(&Packet::ConnAck(connack)).await;
        (conn, connect)
    }
}

/// A successful CONNACK.
pub fn connack(session_present: bool) -> ConnAck {
    ConnAck::new(session_present, ReasonCode::Success)
}

/// One connection of the mock broker.
pub struct MockConn {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl MockConn {
    /// The next packet, or `None` at end of stream.
    pub async fn next(&mut self, limit: Duration) -> Option<Packet> {
        let read = async {
            loop {
                if let Some(p) = decode(&mut self.buf, self.version, 1 << 24).expect("decode") {
                    return Some(p);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        };
        tokio::time::timeout(limit, read).await.ok().flatten()
    }

    /// The next packet; fails the test on end of stream or timeout.
    pub async fn recv(&mut self) -> Packet {
        match self.next(WAIT).await {
            Some(p) => p,
            None => panic!("connection closed or silent while a packet was expected"),
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(p) = self.next(quiet).await {
            panic!("expected silence, got {p:?}");
        }
    }

    /// Reads until the client closes; returns what came before.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        within("the client to close the connection", async {
            while let Some(p) = self.next(WAIT).await {
                packets.push(p);
            }
        })
        .await;
        packets
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encode");
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The client may already have closed: that is for the test to check.
        let _ = self.stream.write_all(bytes).await;
    }
}
