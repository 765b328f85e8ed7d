//! A NATS cluster with JetStream for the cluster tests: `n` nats-server processes (Debian's
//! `nats-server`, 2.9.10 in Debian 12) on free ports of 127.0.0.1, each with its own
//! directory (config file, log, JetStream store) under a fresh temporary directory, routed to
//! each other as one NATS cluster. [`NatsCluster::start`] returns once the cluster is usable
//! for JetStream (see [`NatsCluster::wait_ready`]); the servers can be killed (SIGKILL) and
//! restarted with the same ports and store; dropping the cluster kills them and removes the
//! directory (kept, and its path printed, when the test failed).
//!
//! nats-server missing fails the test (with installation advice), as Mosquitto missing does
//! in the interop tests; `scripts/test-all` installs it.
//!
//! The waits block the calling thread. A test whose brokers run on its own runtime uses the
//! `_async` variants, which let them run meanwhile.

// Test helpers: a failed expectation must abort the test with a message, which is what
// unwrap/expect/panic do. The workspace denies them outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`NatsCluster::start`], [`NatsCluster::restart`] and [`NatsCluster::wait_ready`]
/// wait for the cluster to be ready. Startup takes well under a second; electing a new
/// JetStream meta leader after the old one was killed takes 4 to 10 s on 2.9 (fixed Raft
/// election timeouts).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The NATS cluster name (the `cluster { name }` of every server).
pub const NATS_CLUSTER_NAME: &str = "sagitta-test";

/// Time between two readiness checks.
const POLL: Duration = Duration::from_millis(50);
/// Connect, read and reply timeout of one monitoring or NATS request.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Start attempts with fresh ports when a port was taken meanwhile.
const START_ATTEMPTS: usize = 5;
/// Log lines shown in panic messages, per server.
const LOG_TAIL: usize = 25;

/// The nats-server binary: `$NATS_SERVER`, else Debian's /usr/sbin/nats-server, else the
/// first on `$PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NATS_SERVER={} is not a file: point it at a nats-server binary, or unset it to \
             use Debian's `nats-server` package (scripts/test-all installs it)",
            p.display()
        );
        return p;
    }
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/nats-server"),
        PathBuf::from("/usr/bin/nats-server"),
        PathBuf::from("/usr/local/bin/nats-server"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return found;
    }
    panic!(
        "nats-server not found (looked at $NATS_SERVER, /usr/sbin/nats-server, \
         /usr/bin/nats-server, /usr/local/bin/nats-server and $PATH): install Debian's \
         `nats-server` package (apt-get install nats-server; scripts/test-all does) to run \
         the cluster tests"
    );
}

/// `n` nats-server processes forming one NATS cluster with JetStream, killed when dropped.
/// Servers are numbered from 0; server `i` is named `nats-{i}` (its `server_name`, the name
/// the monitoring endpoints and JetStream's peer lists use).
pub struct NatsCluster {
    binary: PathBuf,
    /// Holds one directory per server; removed on drop.
    dir: PathBuf,
    servers: Vec<Server>,
}

struct Server {
    name: String,
    dir: PathBuf,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    /// `None` once killed (or before the first start).
    child: Mutex<Option<Child>>,
}

impl Server {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }
}

/// What a readiness check found.
enum Problem {
    /// Server `.0`'s process exited by itself, with status `.1`.
    Exited(usize, String),
    /// Not ready (yet): why.
    NotReady(String),
}

impl NatsCluster {
    /// Starts `n` servers (one server with JetStream and no cluster block when `n` is 1) and
    /// waits until the cluster is ready ([`NatsCluster::wait_ready`]). Blocks the thread for
    /// about half a second; see [`NatsCluster::start_async`].
    pub fn start(n: usize) -> Self {
        assert!(n > 0, "a NATS cluster needs at least one server");
        let binary = nats_server_binary();
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sagitta-nats-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the NATS cluster's directory");
        let mut cluster = Self {
            binary,
            dir,
            servers: Vec::new(),
        };
        let mut collisions = Vec::new();
        for _ in 0..START_ATTEMPTS {
            cluster.configure(n);
            for i in 0..n {
                cluster.spawn(i);
            }
            match cluster.wait_blocking() {
                Ok(()) => return cluster,
                Err(Problem::Exited(i, status))
                    if cluster.log(i).contains("address already in use") =>
                {
                    // Another process took one of the free ports meanwhile: new ports.
                    collisions.push(format!(
                        "nats-{i} exited ({status}):\n{}",
                        cluster.log_tail(i, 3)
                    ));
                    cluster.kill_all();
                }
                Err(problem) => panic!(
                    "the NATS cluster of {n} did not start: {}",
                    cluster.describe(&problem)
                ),
            }
        }
        panic!(
            "the NATS cluster of {n} did not start: no free ports after {START_ATTEMPTS} \
             attempts:\n{}",
            collisions.join("\n")
        );
    }

    /// [`NatsCluster::start`] on a blocking thread, so that the runtime's other tasks (a
    /// broker under test) run meanwhile.
    pub async fn start_async(n: usize) -> Self {
        match tokio::task::spawn_blocking(move || Self::start(n)).await {
            Ok(cluster) => cluster,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("NatsCluster::start: {e}"),
            },
        }
    }

    /// The servers' client URLs, `nats://127.0.0.1:PORT`, in server order (killed ones too).
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Server `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].client_port
    }

    /// Server `i`'s monitoring URL, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].http_port)
    }

    /// Server `i`'s name, `nats-{i}`.
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// How many servers the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether server `i`'s process is alive (not killed, not exited).
    pub fn is_running(&self, i: usize) -> bool {
        matches!(
            self.servers[i].child().as_mut().map(Child::try_wait),
            Some(Ok(None))
        )
    }

    /// Kills server `i` at once (SIGKILL) and reaps it. Does not wait for the others to
    /// notice; [`NatsCluster::wait_ready`] does. Nothing happens if it is not running.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.servers[i].child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again (killing it first if it runs) with the same ports, config and
    /// JetStream store, and waits until the cluster is ready again with it
    /// ([`NatsCluster::wait_ready`]): it answers, its routes are up, and it is current with
    /// the JetStream meta leader.
    pub fn restart(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(problem) = self.wait_blocking() {
            panic!("nats-{i} restarted: {}", self.describe(&problem));
        }
    }

    /// [`NatsCluster::restart`] that lets the runtime's other tasks run while it waits.
    pub async fn restart_async(&self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(problem) = self.wait_async().await {
            panic!("nats-{i} restarted: {}", self.describe(&problem));
        }
    }

    /// Waits until the running servers form a cluster usable for JetStream, and panics with
    /// the reason and the servers' logs after [`READY_TIMEOUT`] or when a server exits by
    /// itself. Ready means, for the running servers:
    ///
    /// - each answers on its monitoring port, with a route to each of the other running
    ///   servers (`/varz` `routes`);
    ///
    /// and, if they are a majority of the cluster (a JetStream quorum; otherwise there is
    /// nothing more to wait for):
    ///
    /// - each says `/healthz` ok (2.9: JetStream enabled and current with the meta leader;
    ///   streams are not checked at once, see [`NatsCluster::wait_stream`]);
    /// - all of them name the same meta leader (`/jsz` `meta_cluster.leader`), a running
    ///   server (the others go on naming a killed leader for seconds), which lists every
    ///   other running server as a current peer;
    /// - each answers a JetStream API request (`$JS.API.INFO`, which only the meta leader
    ///   answers in a cluster) on its client port.
    pub fn wait_ready(&self) {
        if let Err(problem) = self.wait_blocking() {
            panic!("wait_ready: {}", self.describe(&problem));
        }
    }

    /// [`NatsCluster::wait_ready`] that lets the runtime's other tasks run while it waits.
    pub async fn wait_ready_async(&self) {
        if let Err(problem) = self.wait_async().await {
            panic!("wait_ready: {}", self.describe(&problem));
        }
    }

    /// Waits until JetStream stream `name` has a leader on a running server that answers
    /// (`$JS.API.STREAM.INFO`) and its replicas on the running servers are current; panics
    /// after [`READY_TIMEOUT`]. [`NatsCluster::wait_ready`] does not wait for that: after
    /// its leader is killed, a stream has no leader for 4 to 10 s while `/healthz` stays ok.
    /// A stream whose only replica is on a killed server never gets one.
    pub fn wait_stream(&self, name: &str) {
        if let Err(problem) = self.wait_for(|c| c.check_stream(name)) {
            panic!("wait_stream({name}): {}", self.describe(&problem));
        }
    }

    /// [`NatsCluster::wait_stream`] that lets the runtime's other tasks run while it waits.
    pub async fn wait_stream_async(&self, name: &str) {
        if let Err(problem) = self.wait_for_async(|c| c.check_stream(name)).await {
            panic!("wait_stream({name}): {}", self.describe(&problem));
        }
    }

    /// The running server that the running servers agree is the JetStream meta leader, if
    /// any (the only server when `n` is 1).
    pub fn meta_leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        if self.len() == 1 {
            return running.first().copied();
        }
        let mut leader = None;
        for &i in &running {
            let jsz = self.monitor(i, "/jsz").ok()?;
            let name = jsz["meta_cluster"]["leader"].as_str()?.to_owned();
            match &leader {
                None => leader = Some(name),
                Some(other) if *other != name => return None,
                Some(_) => {}
            }
        }
        let leader = leader?;
        running
            .into_iter()
            .find(|&i| self.servers[i].name == leader)
    }

    /// GETs `path` (with its query, e.g. `/jsz?streams=true`) from server `i`'s monitoring
    /// port: the JSON body of a 200 response.
    pub fn monitor(&self, i: usize, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.servers[i].http_port, path)
            .map_err(|e| format!("{}: GET {path}: {e}", self.servers[i].name))?;
        if status != 200 {
            return Err(format!(
                "{}: GET {path}: status {status}: {body}",
                self.servers[i].name
            ));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("{}: GET {path}: {e}: {body}", self.servers[i].name))
    }

    /// A NATS request through server `i`'s client port (a connection of its own, no
    /// headers): publishes `payload` to `subject` and returns the first reply's payload, or
    /// fails after 2 s.
    pub fn request(&self, i: usize, subject: &str, payload: &str) -> Result<String, String> {
        nats_request(self.servers[i].client_port, subject, payload)
            .map_err(|e| format!("{}: request on {subject}: {e}", self.servers[i].name))
    }

    /// A JetStream API request through server `i`: `api` is the subject after `$JS.API.`
    /// (`INFO`, `STREAM.CREATE.<name>`, `STREAM.INFO.<name>`...), `body` its JSON (may be
    /// empty). The reply's JSON, or its `error` as an Err.
    pub fn jetstream(&self, i: usize, api: &str, body: &str) -> Result<Value, String> {
        let reply = self.request(i, &format!("$JS.API.{api}"), body)?;
        let value: Value = serde_json::from_str(&reply)
            .map_err(|e| format!("{}: $JS.API.{api}: {e}: {reply}", self.servers[i].name))?;
        match value.get("error") {
            Some(error) => Err(format!("{}: $JS.API.{api}: {error}", self.servers[i].name)),
            None => Ok(value),
        }
    }

    /// Server `i`'s log so far (every run of it, appended).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.servers[i].log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of server `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = self.log(i);
        let all: Vec<&str> = log.lines().collect();
        if all.is_empty() {
            return "(empty)".to_owned();
        }
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // --- internals -----------------------------------------------------------------------

    /// Fresh ports, directories and config files for `n` servers (the old ones are killed
    /// and removed).
    fn configure(&mut self, n: usize) {
        self.kill_all();
        for server in &self.servers {
            let _ = std::fs::remove_dir_all(&server.dir);
        }
        // Hold every listener until all ports are chosen, so that they are distinct.
        let listeners: Vec<TcpListener> = (0..3 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local address").port())
            .collect();
        drop(listeners);
        self.servers = (0..n)
            .map(|i| Server {
                name: format!("nats-{i}"),
                dir: self.dir.join(format!("nats-{i}")),
                client_port: ports[3 * i],
                route_port: ports[3 * i + 1],
                http_port: ports[3 * i + 2],
                child: Mutex::new(None),
            })
            .collect();
        for (i, server) in self.servers.iter().enumerate() {
            std::fs::create_dir_all(&server.dir).expect("create a NATS server's directory");
            let mut config = format!(
                "# Written by the cluster tests' harness (common_cluster).\n\
                 server_name: {name:?}\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 http: \"127.0.0.1:{http}\"\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n",
                name = server.name,
                client = server.client_port,
                http = server.http_port,
                store = server.dir.join("jetstream").display().to_string(),
            );
            if n > 1 {
                let routes: Vec<String> = self
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, other)| format!("\"nats-route://127.0.0.1:{}\"", other.route_port))
                    .collect();
                config.push_str(&format!(
                    "cluster {{\n  name: {NATS_CLUSTER_NAME:?}\n  \
                     listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    server.route_port,
                    routes.join(", ")
                ));
            }
            std::fs::write(server.config_path(), config).expect("write a NATS config file");
        }
    }

    /// Starts server `i`'s process, its stdout and stderr appended to its log.
    fn spawn(&self, i: usize) {
        let server = &self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server.log_path())
            .expect("open a NATS server's log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(server.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        *server.child() = Some(child);
    }

    fn kill_all(&self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }

    fn wait_blocking(&self) -> Result<(), Problem> {
        self.wait_for(Self::check_cluster)
    }

    async fn wait_async(&self) -> Result<(), Problem> {
        self.wait_for_async(Self::check_cluster).await
    }

    /// Runs `check` until it passes, a server exits by itself, or [`READY_TIMEOUT`] passed.
    fn wait_for(&self, check: impl Fn(&Self) -> Result<(), Problem>) -> Result<(), Problem> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match check(self) {
                Ok(()) => return Ok(()),
                Err(problem @ Problem::Exited(..)) => return Err(problem),
                Err(problem) if Instant::now() >= deadline => return Err(problem),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// [`NatsCluster::wait_for`] with an async sleep between the checks.
    async fn wait_for_async(
        &self,
        check: impl Fn(&Self) -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match check(self) {
                Ok(()) => return Ok(()),
                Err(problem @ Problem::Exited(..)) => return Err(problem),
                Err(problem) if Instant::now() >= deadline => return Err(problem),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The servers that run; a server that exited by itself is a problem.
    fn running(&self) -> Result<Vec<usize>, Problem> {
        let mut running = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            if let Some(child) = server.child().as_mut() {
                match child.try_wait() {
                    Ok(None) => running.push(i),
                    Ok(Some(status)) => return Err(Problem::Exited(i, status.to_string())),
                    Err(e) => return Err(Problem::Exited(i, e.to_string())),
                }
            }
        }
        Ok(running)
    }

    /// One readiness check of the cluster (see [`NatsCluster::wait_ready`]): the first
    /// problem found.
    fn check_cluster(&self) -> Result<(), Problem> {
        let n = self.servers.len();
        let running = self.running()?;
        let not_ready = Problem::NotReady;
        for &i in &running {
            let varz = self.monitor(i, "/varz").map_err(not_ready)?;
            let routes = varz["routes"].as_u64().unwrap_or(0);
            if n > 1 && routes != running.len() as u64 - 1 {
                return Err(not_ready(format!(
                    "{}: {routes} routes, expected {} (one per other running server)",
                    self.servers[i].name,
                    running.len() - 1
                )));
            }
        }
        if running.len() < n / 2 + 1 {
            // No JetStream quorum: nothing more to wait for.
            return Ok(());
        }
        for &i in &running {
            let (status, body) = http_get(self.servers[i].http_port, "/healthz")
                .map_err(|e| not_ready(format!("{}: /healthz: {e}", self.servers[i].name)))?;
            if status != 200 {
                return Err(not_ready(format!(
                    "{}: /healthz: {status} {}",
                    self.servers[i].name,
                    body.trim()
                )));
            }
        }
        if n > 1 {
            let mut views = Vec::new();
            for &i in &running {
                let jsz = self.monitor(i, "/jsz").map_err(not_ready)?;
                let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                if leader.is_empty() {
                    return Err(not_ready(format!(
                        "{}: no JetStream meta leader",
                        self.servers[i].name
                    )));
                }
                views.push((i, leader.to_owned(), jsz));
            }
            let leader = views[0].1.clone();
            if let Some((i, other, _)) = views.iter().find(|(_, l, _)| *l != leader) {
                return Err(not_ready(format!(
                    "{} says the meta leader is {other}, {} says {leader}",
                    self.servers[*i].name, self.servers[views[0].0].name
                )));
            }
            let Some((_, _, leader_jsz)) = views
                .iter()
                .find(|(i, _, _)| self.servers[*i].name == leader)
            else {
                return Err(not_ready(format!(
                    "the meta leader is {leader}, which is not running"
                )));
            };
            let peers = leader_jsz["meta_cluster"]["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for &i in &running {
                let name = &self.servers[i].name;
                if *name == leader {
                    continue;
                }
                let current = peers
                    .iter()
                    .any(|p| p["name"] == name.as_str() && p["current"] == true);
                if !current {
                    return Err(not_ready(format!(
                        "the meta leader {leader} does not list {name} as a current peer"
                    )));
                }
            }
        }
        for &i in &running {
            self.jetstream(i, "INFO", "").map_err(not_ready)?;
        }
        Ok(())
    }

    /// One check of stream `name` (see [`NatsCluster::wait_stream`]).
    fn check_stream(&self, name: &str) -> Result<(), Problem> {
        let running = self.running()?;
        let Some(&via) = running.first() else {
            return Err(Problem::NotReady("no server runs".to_owned()));
        };
        let info = self
            .jetstream(via, &format!("STREAM.INFO.{name}"), "")
            .map_err(Problem::NotReady)?;
        if self.servers.len() == 1 {
            return Ok(());
        }
        let cluster = &info["cluster"];
        let leader = cluster["leader"].as_str().unwrap_or_default();
        if !running.iter().any(|&i| self.servers[i].name == leader) {
            return Err(Problem::NotReady(format!(
                "stream {name}: the leader is {leader:?}, not a running server"
            )));
        }
        let replicas = cluster["replicas"].as_array().cloned().unwrap_or_default();
        for replica in replicas {
            let on_running = running
                .iter()
                .any(|&i| replica["name"] == self.servers[i].name.as_str());
            if on_running && replica["current"] != true {
                return Err(Problem::NotReady(format!(
                    "stream {name}: the replica on {} is not current",
                    replica["name"]
                )));
            }
        }
        Ok(())
    }

    /// A panic message: the problem and the tail of the logs concerned.
    fn describe(&self, problem: &Problem) -> String {
        match problem {
            Problem::Exited(i, status) => format!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                self.servers[*i].name,
                self.servers[*i].log_path().display(),
                self.log_tail(*i, LOG_TAIL)
            ),
            Problem::NotReady(why) => {
                let mut message = format!("not ready after {} s: {why}", READY_TIMEOUT.as_secs());
                for (i, server) in self.servers.iter().enumerate() {
                    message.push_str(&format!(
                        "\n--- the end of {}'s log ({}{}):\n{}",
                        server.name,
                        server.log_path().display(),
                        if self.is_running(i) {
                            ""
                        } else {
                            ", not running"
                        },
                        self.log_tail(i, LOG_TAIL)
                    ));
                }
                message
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            // A failed test: keep the servers' logs and stores to look at.
            eprintln!(
                "the NATS servers' configs, logs and stores are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the server closes the connection after the
/// response): the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = connect(port)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A request over the NATS client protocol, on a connection of its own: INFO, CONNECT, SUB
/// to a fresh inbox, PUB with that reply subject, then the first MSG on the inbox.
fn nats_request(port: u16, subject: &str, payload: &str) -> Result<String, String> {
    static INBOXES: AtomicU64 = AtomicU64::new(0);
    let stream = connect(port)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("INFO ") {
        return Err(format!("expected INFO, got {line:?}"));
    }
    let inbox = format!(
        "_INBOX.sagitta_harness.{}.{}",
        std::process::id(),
        INBOXES.fetch_add(1, Ordering::Relaxed)
    );
    write!(
        writer,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"sagitta-test-harness\"}}\r\n\
         SUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
        payload.len()
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed".to_owned()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
        let l = line.trim_end();
        if l == "PING" {
            writer.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
        } else if l.starts_with("-ERR") {
            return Err(l.to_owned());
        } else if let Some(args) = l.strip_prefix("MSG ") {
            // MSG <subject> <sid> [reply-to] <size>
            let size: usize = args
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad MSG line {l:?}"))?;
            let mut body = vec![0; size + 2];
            reader.read_exact(&mut body).map_err(|e| e.to_string())?;
            body.truncate(size);
            return String::from_utf8(body).map_err(|e| e.to_string());
        }
        // +OK, PONG, INFO updates: nothing to do.
    }
    Err(format!("no reply within {} s", IO_TIMEOUT.as_secs()))
}
