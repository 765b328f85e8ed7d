//! `sagitta pub` and `sagitta sub` as users run them: the built binary against `sagitta
//! broker` and against Debian's Mosquitto (each started on a free port, killed on drop), and
//! against `mosquitto_pub` / `mosquitto_sub`. Round trips at QoS 0/1/2 with MQTT 3.1.1 and
//! 5.0, retained and empty messages, line mode, files, stdin, output formats, `-C`, `-W`,
//! wills, and the exit codes scripts rely on (0, 1, 2, 27).
//!
//! A subscriber is known to be ready when it prints a "ready" message that is published
//! again and again until it shows up: no blind sleeps.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sagitta");
/// Longest any single command may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        Self::new(cmd.spawn().unwrap())
    }

    /// Waits (at most [`PATIENCE`]) for the process to exit by itself.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What a finished command printed.
struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {:?}\nstderr: {}",
            self.status,
            self.stderr
        );
    }
}

/// Runs a command to completion (at most [`PATIENCE`]), feeding it `stdin`.
fn run(cmd: &mut Command, stdin: &[u8]) -> Out {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = Running::spawn(cmd);
    let child = running.child();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let status = running.wait();
    writer.join().unwrap();
    Out {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// `sagitta` with the whitespace-separated arguments of `line` (none contains a space).
fn sagitta(line: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(line.split_whitespace()).env_remove("RUST_LOG");
    cmd
}

/// Runs `sagitta LINE` with `stdin` and returns what it printed.
fn sagitta_run(line: &str, stdin: &[u8]) -> Out {
    run(&mut sagitta(line), stdin)
}

/// A Mosquitto client program with the arguments of `line`.
fn mosquitto_tool(program: &str, line: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(line.split_whitespace());
    cmd
}

fn wait_up(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "broker on {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A broker subprocess on a free port.
struct Broker {
    _process: Running,
    port: String,
    _dir: Option<TempDir>,
}

fn sagitta_broker() -> Broker {
    let port = free_port();
    let process = Running::spawn(
        sagitta(&format!("broker --memory --listen 127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_up(port);
    Broker {
        _process: process,
        port: port.to_string(),
        _dir: None,
    }
}

fn mosquitto_broker(extra_conf: &str) -> Broker {
    let program = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .expect("this test needs Mosquitto: apt-get install mosquitto (scripts/test-all does)");
    let port = free_port();
    let dir = TempDir::new("sagitta-pubsub-mosq");
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npersistence false\n{extra_conf}"),
    )
    .unwrap();
    let process = Running::spawn(
        Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_up(port);
    Broker {
        _process: process,
        port: port.to_string(),
        _dir: Some(dir),
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-running subscriber whose stdout lines arrive on a channel.
struct Subscriber {
    process: Running,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Subscriber {
    fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Running::spawn(cmd);
        let (tx, lines) = mpsc::channel();
        let stdout = process.child().stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = process.child().stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Self {
            process,
            lines,
            stderr,
        }
    }

    /// Publishes `payload` to `topic` with `publish` until this subscriber prints a line
    /// containing `payload`.
    fn wait_ready(&self, publish: impl Fn(&str, &str), topic: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            publish(topic, "ready");
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if line.contains("ready") {
                    return;
                }
                panic!("unexpected line before ready: {line:?}");
            }
            assert!(
                Instant::now() < deadline,
                "subscriber never got ready: {:?}",
                self.stderr.try_recv()
            );
        }
    }

    /// The next line that is not a "ready" ping; it must be `want`.
    fn expect(&self, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("ready") => {}
                Ok(line) => {
                    assert_eq!(line, want);
                    return;
                }
                Err(_) => panic!("no line {want:?}; stderr: {:?}", self.stderr.try_recv()),
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sagitta pub -p PORT LINE` must succeed.
fn publish(port: &str, line: &str, stdin: &[u8]) {
    let line = format!("pub -p {port} {line}");
    sagitta_run(&line, stdin).assert_ok(&format!("sagitta {line}"));
}

/// Everything `sagitta pub` / `sagitta sub` do with one broker and one MQTT version, seen
/// by one subscriber printing `%q|%r|%l|%t|%C|%P|%x` (QoS, retain, length, topic, content
/// type, user properties, payload in hex).
fn round_trips(broker: &Broker, v: &str) {
    let port = broker.port.as_str();
    let base = format!("rt/{v}");
    let sub = Subscriber::spawn(&mut sagitta(&format!(
        "sub -p {port} -V {v} -q 2 -t {base}/# -F %q|%r|%l|%t|%C|%P|%x"
    )));
    let ping = |t: &str, m: &str| publish(port, &format!("-V {v} -t {t} -m {m}"), b"");
    sub.wait_ready(ping, &format!("{base}/ready"));

    // QoS 0, 1 and 2: delivered at min(publish, subscription) = the publish QoS.
    for q in ["0", "1", "2"] {
        publish(port, &format!("-V {v} -q {q} -t {base}/q{q} -m hello"), b"");
        sub.expect(&format!("{q}|0|5|{base}/q{q}|||{}", hex(b"hello")));
    }
    // -n: an empty payload.
    publish(port, &format!("-V {v} -q 1 -t {base}/empty -n"), b"");
    sub.expect(&format!("1|0|0|{base}/empty|||"));
    // -l: one message per line; an empty line is an empty message; \r\n ends a line too.
    publish(
        port,
        &format!("-V {v} -q 1 -t {base}/lines -l"),
        b"one\n\ntwo\r\nthree",
    );
    for line in ["one", "", "two", "three"] {
        let (n, h) = (line.len(), hex(line.as_bytes()));
        sub.expect(&format!("1|0|{n}|{base}/lines|||{h}"));
    }
    // -s: all of stdin; -f: a file, byte for byte.
    publish(port, &format!("-V {v} -t {base}/stdin -s"), b"all\nof it\n");
    sub.expect(&format!("0|0|10|{base}/stdin|||{}", hex(b"all\nof it\n")));
    let dir = TempDir::new("sagitta-pubsub-file");
    let file = dir.0.join("payload.bin");
    let data: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    std::fs::write(&file, &data).unwrap();
    let file = file.to_str().unwrap();
    publish(port, &format!("-V {v} -q 2 -t {base}/file -f {file}"), b"");
    sub.expect(&format!("2|0|512|{base}/file|||{}", hex(&data)));
    // --repeat.
    publish(
        port,
        &format!("-V {v} -q 1 -t {base}/rep -m x --repeat 3"),
        b"",
    );
    for _ in 0..3 {
        sub.expect(&format!("1|0|1|{base}/rep|||{}", hex(b"x")));
    }
    // MQTT 5 properties pass through the broker.
    if v == "5" {
        let props = "-D publish content-type text/plain -D publish user-property k v \
                     -D publish message-expiry-interval 60";
        publish(port, &format!("-V 5 -t {base}/props -m p {props}"), b"");
        sub.expect(&format!("0|0|1|{base}/props|text/plain|k:v|{}", hex(b"p")));
    }

    // A retained message: live subscribers see retain 0, a new one retain 1; -r -n deletes
    // it, after which a new subscriber times out with exit code 27.
    let t = format!("{base}/retained");
    publish(port, &format!("-V {v} -q 1 -r -t {t} -m kept"), b"");
    sub.expect(&format!("1|0|4|{t}|||{}", hex(b"kept")));
    let got = sagitta_run(
        &format!("sub -p {port} -V {v} -t {t} -C 1 -F %r|%t|%p"),
        b"",
    );
    got.assert_ok("sub -C 1 for the retained message");
    assert_eq!(got.stdout(), format!("1|{t}|kept\n"));
    publish(port, &format!("-V {v} -q 1 -r -t {t} -n"), b"");
    sub.expect(&format!("1|0|0|{t}|||"));
    let got = sagitta_run(&format!("sub -p {port} -V {v} -t {t} -W 0.3"), b"");
    assert_eq!(got.code(), Some(27), "{}", got.stderr);
    assert!(got.stdout.is_empty());

    // A will: published when its client dies without DISCONNECT.
    let ready = format!("{base}/will-client-ready");
    let mut doomed = Subscriber::spawn(&mut sagitta(&format!(
        "sub -p {port} -V {v} -t {ready} --will-topic {base}/will --will-payload gone \
         --will-qos 1"
    )));
    doomed.wait_ready(ping, &ready);
    doomed.process.child().kill().unwrap();
    sub.expect(&format!("1|0|4|{base}/will|||{}", hex(b"gone")));

    // SIGINT: a clean exit 0.
    let mut sub = sub;
    let pid = sub.process.child().id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    assert!(sub.process.wait().success());
}

#[test]
fn round_trips_sagitta_broker_v311() {
    round_trips(&sagitta_broker(), "311");
}

#[test]
fn round_trips_sagitta_broker_v5() {
    round_trips(&sagitta_broker(), "5");
}

#[test]
fn round_trips_mosquitto_v311() {
    round_trips(&mosquitto_broker("allow_anonymous true\n"), "311");
}

#[test]
fn round_trips_mosquitto_v5() {
    round_trips(&mosquitto_broker("allow_anonymous true\n"), "5");
}

/// -C exits 0 after that many messages, -v prints "topic payload", -N drops the newline,
/// -F %j is JSON, -R skips retained messages (and then -W times out with 27).
#[test]
fn count_verbose_json_and_timeouts() {
    let broker = sagitta_broker();
    let port = broker.port.as_str();
    for i in 1..=3 {
        publish(port, &format!("-q 1 -r -t c/{i} -m payload-{i}"), b"");
    }
    let got = sagitta_run(&format!("sub -p {port} -t c/# -v -C 2"), b"");
    got.assert_ok("sub -C 2");
    let lines: Vec<String> = got.stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let (t, p) = line.split_once(' ').unwrap();
        assert_eq!(p, format!("payload-{}", &t[2..]), "{line}");
    }

    let got = sagitta_run(&format!("sub -p {port} -t c/1 -N -C 1"), b"");
    got.assert_ok("sub -N");
    assert_eq!(got.stdout, b"payload-1");

    let got = sagitta_run(&format!("sub -p {port} -V 5 -t c/2 -F %j -C 1"), b"");
    got.assert_ok("sub -F %j");
    let json: serde_json::Value = serde_json::from_str(got.stdout().trim_end()).unwrap();
    assert_eq!(json["topic"], "c/2");
    assert_eq!(json["payload"], "payload-2");
    assert_eq!(json["retain"], 1);
    assert_eq!(json["payloadlen"], 9);

    let start = Instant::now();
    let got = sagitta_run(&format!("sub -p {port} -t c/# -R -C 1 -W 0.5"), b"");
    assert_eq!(got.code(), Some(27), "{}", got.stderr);
    assert!(got.stdout.is_empty(), "{}", got.stdout());
    let want = "sagitta sub: timed out after 0.5s (0 of 1 message received)\n";
    assert_eq!(got.stderr, want);
    assert!(start.elapsed() < Duration::from_secs(5));

    // --remove-retained clears what it reads, except what -T hides.
    for t in ["rm/a", "rm/b", "rm/keep"] {
        publish(port, &format!("-q 1 -r -t {t} -m x"), b"");
    }
    let got = sagitta_run(
        &format!("sub -p {port} -t rm/# -T rm/keep --remove-retained -C 2 -v"),
        b"",
    );
    got.assert_ok("sub --remove-retained");
    let got = sagitta_run(&format!("sub -p {port} -t rm/# -v -W 0.3"), b"");
    assert_eq!(got.code(), Some(27));
    assert_eq!(got.stdout(), "rm/keep x\n");

    // With --quiet the exit code alone tells.
    let got = sagitta_run(&format!("sub -p {port} -t none -W 0.2 --quiet"), b"");
    assert_eq!(got.code(), Some(27));
    assert!(got.stderr.is_empty(), "{}", got.stderr);
}

/// `sagitta pub` → `mosquitto_sub` and `mosquitto_pub` → `sagitta sub`, with MQTT 5
/// properties both ways.
#[test]
fn cross_tool_with_mosquitto_clients() {
    let broker = mosquitto_broker("allow_anonymous true\n");
    let port = broker.port.as_str();

    // sagitta pub → mosquitto_sub
    let theirs = Subscriber::spawn(&mut mosquitto_tool(
        "mosquitto_sub",
        &format!("-p {port} -V mqttv5 -q 2 -t x/# -F %q|%t|%P|%p"),
    ));
    theirs.wait_ready(
        |t, m| publish(port, &format!("-t {t} -m {m}"), b""),
        "x/ready",
    );
    publish(port, "-q 1 -t x/a -m from-sagitta", b"");
    theirs.expect("1|x/a||from-sagitta");
    let props = "-D publish user-property k v";
    publish(port, &format!("-V mqttv5 -q 2 -t x/b -m v5 {props}"), b"");
    theirs.expect("2|x/b|k:v|v5");
    publish(port, "-t x/c -l", b"l1\nl2\n");
    theirs.expect("0|x/c||l1");
    theirs.expect("0|x/c||l2");

    // mosquitto_pub → sagitta sub
    let ours = Subscriber::spawn(&mut sagitta(&format!(
        "sub -p {port} -V 5 -q 2 -t y/# -F %q|%t|%C|%p"
    )));
    let mosquitto_pub = |line: &str| {
        let mut cmd = mosquitto_tool("mosquitto_pub", &format!("-p {port} {line}"));
        run(&mut cmd, b"").assert_ok(&format!("mosquitto_pub {line}"));
    };
    ours.wait_ready(|t, m| mosquitto_pub(&format!("-t {t} -m {m}")), "y/ready");
    mosquitto_pub("-q 1 -t y/a -m from-mosquitto");
    ours.expect("1|y/a||from-mosquitto");
    mosquitto_pub("-V mqttv5 -q 2 -t y/b -m typed -D publish content-type text/plain");
    ours.expect("2|y/b|text/plain|typed");

    // mosquitto_sub -C reads our retained message.
    publish(port, "-q 1 -r -t z/kept -m still-here", b"");
    let mut cmd = mosquitto_tool("mosquitto_sub", &format!("-p {port} -t z/kept -C 1 -v"));
    let got = run(&mut cmd, b"");
    got.assert_ok("mosquitto_sub -C 1");
    assert_eq!(got.stdout(), "z/kept still-here\n");
}

/// Bad arguments are exit code 2 with a message naming the problem, before any connection
/// (the port is closed: a connection attempt would be exit code 1).
#[test]
fn bad_arguments_exit_2() {
    let closed = free_port();
    let cases: &[(&str, &str)] = &[
        ("pub -t a", "required"),
        ("pub -m x", "--topic"),
        ("pub -t a -m x -n", "cannot be used with"),
        ("pub -t a -m x -q 3", "3"),
        ("pub -t a -m x --bogus", "--bogus"),
        ("pub -t a/# -m x", "sagitta pub: -t a/#: "),
        ("pub -t a -m x -V 4", "expected 5, 311 or 31"),
        ("pub -t a -m x -c", "sagitta pub: -c needs a client id"),
        (
            "pub -t a -m x -V 311 -D publish content-type t",
            "needs MQTT 5",
        ),
        (
            "pub -t a -m x -D publish colour red",
            "unknown property \"colour\"",
        ),
        (
            "pub -t a -m x -D publish session-expiry-interval 1",
            "not a publish property",
        ),
        (
            "pub -t a -m x -D publish user-property k",
            "takes a name and a value",
        ),
        ("pub -t a -m x --will-qos 1", "--will-topic"),
        ("pub -t a -m x -P secret", "needs a user name (-u)"),
        ("sub", "--topic"),
        ("sub -t a/#/b", "sagitta sub: -t a/#/b: "),
        ("sub -t a -F %m", "%m (message id) is not available"),
        ("sub -t a -F %k", "unknown conversion %k"),
        ("sub -t a -W 0", "-W"),
        ("sub -t a -C 0", "0"),
        ("sub -t a -D publish content-type t", "sends no PUBLISH"),
    ];
    for (line, want) in cases {
        let line = format!("{line} -p {closed}");
        let got = sagitta_run(&line, b"");
        assert_eq!(got.code(), Some(2), "{line}: {}", got.stderr);
        assert!(
            got.stderr.contains(want),
            "{line}: {want:?} not in {}",
            got.stderr
        );
    }
    // A client certificate without TLS turned on.
    let got = sagitta_run("sub -t a --cert c.pem --key c.key", b"");
    assert_eq!(got.code(), Some(2));
    assert!(got.stderr.contains("need TLS"), "{}", got.stderr);
    // --help (not -h, which is the host) shows examples and exit codes.
    for tool in ["pub", "sub"] {
        let got = sagitta_run(&format!("{tool} --help"), b"");
        got.assert_ok("--help");
        let help = got.stdout();
        for want in ["-h, --host", "Examples:", "Exit codes:", "27"] {
            assert!(help.contains(want), "{tool} --help lacks {want:?}");
        }
    }
}

/// Connection failures are exit code 1 with one line naming the cause.
#[test]
fn connection_failures_exit_1() {
    let closed = free_port();
    for line in ["pub -t a -m x", "sub -t a"] {
        let got = sagitta_run(&format!("{line} -h 127.0.0.1 -p {closed}"), b"");
        assert_eq!(got.code(), Some(1), "{}", got.stderr);
        let tool = &line[..3];
        let want = format!("sagitta {tool}: could not connect to 127.0.0.1:{closed}: ");
        assert!(got.stderr.starts_with(&want), "{}", got.stderr);
        assert_eq!(got.stderr.lines().count(), 1, "{}", got.stderr);
    }

    // Refused by the broker: the CONNACK reason is printed (3.1.1 return code 5, and 5.0).
    let broker = mosquitto_broker("allow_anonymous false\n");
    let port = broker.port.as_str();
    for v in ["311", "5"] {
        let got = sagitta_run(&format!("pub -p {port} -V {v} -t a -m x"), b"");
        assert_eq!(got.code(), Some(1), "{}", got.stderr);
        let want = "sagitta pub: not authorized by the broker: Not authorized (0x87)\n";
        assert_eq!(got.stderr, want);
        let got = sagitta_run(&format!("sub -p {port} -V {v} -t a --quiet"), b"");
        assert_eq!(got.code(), Some(1));
        assert!(got.stderr.is_empty(), "{}", got.stderr);
    }
}

/// `-h ws://...`: pub and sub over MQTT-over-WebSocket to a broker's `ws` listener.
#[test]
fn pub_and_sub_over_websocket() {
    let (tcp, ws) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("sagitta-cli-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let config = dir.join("sagitta.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{tcp}\"]\n[[listener]]\ntype = \"ws\"\n\
             bind = \"127.0.0.1:{ws}\"\nallow_anonymous = true\n"
        ),
    )
    .unwrap();
    let _broker = Running::spawn(
        sagitta("broker --memory --config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_up(ws);
    let url = format!("ws://127.0.0.1:{ws}/mqtt");
    let got = run(
        &mut sagitta(&format!("pub -h {url} -t ws/cli -q 1 -r -m over-websocket")),
        b"",
    );
    got.assert_ok("pub over ws");
    let got = run(
        &mut sagitta(&format!("sub -h {url} -t ws/cli -C 1 -W 10")),
        b"",
    );
    got.assert_ok("sub over ws");
    assert_eq!(got.stdout().trim_end(), "over-websocket");
}
