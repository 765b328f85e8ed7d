//! Shared helpers for the interoperability tests: a broker on a free port, child processes
//! that are killed when dropped, and bounded waits on their output.
//!
//! Every wait here is bounded, so a misbehaving peer fails a test instead of hanging it.

// Test helpers: a failed expectation must abort the test with a message, which is what
// unwrap/expect/panic do. The workspace denies them outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sagitta_broker::{Broker, Config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a single expected event (a line, an exit) may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker started in-process on a free port of 127.0.0.1. Shut down when dropped.
pub struct TestBroker {
    broker: Option<Broker>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl TestBroker {
    /// Starts a broker with the default configuration (and `$SYS` every second).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with the default configuration changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default()
            .in_memory()
            .listen([SocketAddr::from(([127, 0, 0, 1], 0))]);
        config.sys_interval = 1;
        tweak(&mut config);
        let broker = Broker::start(config).await.expect("broker starts");
        let addr = broker.local_addrs()[0];
        Self {
            broker: Some(broker),
            addr,
        }
    }

    /// Every address the broker listens on, in [`Broker::local_addrs`] order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.broker
            .as_ref()
            .map(|b| b.local_addrs().to_vec())
            .unwrap_or_default()
    }

    /// The port as a string, for command lines.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// The host as a string, for command lines.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// How many clients are connected now.
    pub fn connected(&self) -> u64 {
        self.broker
            .as_ref()
            .expect("broker running")
            .metrics()
            .clients_connected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded by [`WAIT`]) until exactly `n` clients are connected, i.e. the broker
    /// has finished handling the connections that ended.
    pub async fn wait_connected(&self, n: u64) {
        wait_connected(self.broker.as_ref().expect("broker running"), n).await;
    }

    /// Shuts the broker down and waits (bounded) for its tasks to finish.
    pub async fn stop(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.handle().shutdown();
            tokio::time::timeout(WAIT, broker.wait())
                .await
                .expect("broker shuts down within 5 s");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = &self.broker {
            broker.handle().shutdown();
        }
    }
}

/// Fails the test with installation advice if `program` cannot be started.
pub fn require_program(program: &str, advice: &str) {
    match std::process::Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "interop test needs `{program}`, which cannot be run ({e}). {advice} \
             (scripts/test-all installs it)"
        ),
    }
}

/// The Python interpreter to run the scripts with: `python3`'s own executable (resolved once,
/// which skips wrappers such as pyenv shims). Fails the test with installation advice unless
/// `python3` can import paho-mqtt 2.x.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let probe = "import sys, paho.mqtt, paho.mqtt.client as c; \
                     assert int(paho.mqtt.__version__.split('.')[0]) >= 2, paho.mqtt.__version__; \
                     c.CallbackAPIVersion.VERSION2; print(sys.executable)";
        match std::process::Command::new("python3")
            .args(["-c", probe])
            .stdin(Stdio::null())
            .output()
        {
            Err(e) => Err(format!("`python3` cannot be run ({e})")),
            Ok(out) if !out.status.success() => Err(format!(
                "`python3` cannot import paho-mqtt 2.x: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(out) => {
                let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                Ok(if exe.is_empty() {
                    PathBuf::from("python3")
                } else {
                    PathBuf::from(exe)
                })
            }
        }
    });
    match found {
        Ok(path) => path,
        Err(why) => panic!(
            "interop test needs python3 with paho-mqtt 2.x: {why}. Install it with \
             `python3 -m pip install 'paho-mqtt>=2,<3'` (scripts/test-all does)"
        ),
    }
}

/// The path of a script of `tests/mqttjs/`, after checking that Node.js and MQTT.js are
/// there (fails the test with installation advice if not).
pub fn mqttjs_script(name: &str) -> String {
    require_program(
        "node",
        "Install Node.js (Debian: `apt-get install nodejs npm`).",
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mqttjs");
    assert!(
        dir.join("node_modules/mqtt/package.json").exists(),
        "MQTT.js is not installed: run `npm ci --prefix {}` (scripts/test-all does)",
        dir.display()
    );
    dir.join(name).to_string_lossy().into_owned()
}

/// A running child process, SIGKILLed when dropped, whose stdout is read line by line and
/// whose stderr is kept for failure messages.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Lines containing this marker are skipped by [`Proc::expect_line`] (readiness pings).
    ignore: Option<String>,
}

impl Proc {
    /// Starts `program` with `args`.
    pub fn spawn(program: &str, args: &[String]) -> Self {
        let (name, mut child) = start_child(program, args);
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            name,
            child,
            lines,
            stderr,
            ignore: None,
        }
    }

    /// Makes [`Proc::expect_line`] and [`Proc::next_line`] skip lines containing `marker`.
    pub fn ignoring(mut self, marker: &str) -> Self {
        self.ignore = Some(marker.to_owned());
        self
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line (skipping ignored ones) within `timeout`, or `None` on timeout or
    /// end of output.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = self
                .next_line_raw(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await?;
            match &self.ignore {
                Some(marker) if line.contains(marker.as_str()) => continue,
                _ => return Some(line),
            }
        }
    }

    /// The next stdout line, ignored ones included, within `timeout`.
    pub async fn next_line_raw(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next stdout line (skipping ignored ones); fails the test after [`WAIT`].
    pub async fn expect_line(&mut self, what: &str) -> String {
        match self.next_line(WAIT).await {
            Some(line) => line,
            None => panic!(
                "`{}`: no line within {WAIT:?} while waiting for {what}; stderr: {}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!(
                "`{}` did not exit within {WAIT:?}; stderr: {}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        self.wait_exit().await;
    }
}

/// Runs `program` to completion (bounded by `timeout`); fails the test unless it exits 0.
/// Returns its stdout.
pub async fn run_ok(program: &str, args: &[String], timeout: Duration) -> String {
    let (name, child) = start_child(program, args);
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.expect("collect child output"),
        Err(_) => panic!("`{name}` did not finish within {timeout:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{name}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Turns string literals into an argument vector.
pub fn args<S: AsRef<str>>(list: impl IntoIterator<Item = S>) -> Vec<String> {
    list.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// Waits (bounded by [`WAIT`]) until exactly `n` clients are connected to `broker`.
pub async fn wait_connected(broker: &Broker, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = broker
            .metrics()
            .clients_connected
            .load(std::sync::atomic::Ordering::Relaxed);
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} clients connected after {WAIT:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts `program` with `args`, stdout and stderr piped, killed when dropped: its command
/// line (for messages) and the child.
fn start_child(program: &str, args: &[String]) -> (String, Child) {
    let name = format!("{program} {}", args.join(" "));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{name}`: {e}"));
    (name, child)
}
