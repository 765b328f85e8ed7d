//! `sagitta bench` as a user runs it: the built binary against `sagitta broker` and against
//! Debian's Mosquitto, each started as a subprocess on a free port and killed on drop.
//! Small runs (`--count`), exact delivery counts, no timing assertions.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn wait_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "broker on port {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sagitta_broker() -> (Running, u16) {
    let (running, port, _) = sagitta_broker_with_pid();
    (running, port)
}

/// A `sagitta broker` subprocess, its port and its process id.
fn sagitta_broker_with_pid() -> (Running, u16, u32) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args([
            "broker",
            "--memory",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let running = Running::new(child);
    wait_up(port);
    (running, port, pid)
}

fn mosquitto_program() -> PathBuf {
    for candidate in ["mosquitto", "/usr/sbin/mosquitto"] {
        let ok = Command::new(candidate)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!("this test needs Mosquitto: apt-get install mosquitto (scripts/test-all installs it)");
}

fn mosquitto() -> (Running, u16, tempdir::Dir) {
    let program = mosquitto_program();
    let port = free_port();
    let dir = tempdir::Dir::new("sgb-mosq");
    let conf = dir.path.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nmax_inflight_messages 256\n"
        ),
    )
    .unwrap();
    let child = Command::new(program)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running::new(child);
    wait_up(port);
    (running, port, dir)
}

/// A temporary directory removed on drop (std only).
mod tempdir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new(prefix: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let path =
                std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `sagitta bench ARGS` (bounded by the bench's own --count/--drain) and returns its
/// output.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a bench that must succeed and returns its JSON summary.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet", "--drain", "3"]);
    let out = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_complete(v: &Value, published: u64, delivered: u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert_eq!(n("published"), published, "{v}");
    assert_eq!(n("expected"), delivered, "{v}");
    assert_eq!(n("delivered"), delivered, "{v}");
    assert_eq!(n("losses"), 0, "{v}");
    assert_eq!(n("duplicates"), 0, "{v}");
    assert_eq!(n("out_of_order"), 0, "{v}");
    assert_eq!(n("errors"), 0, "{v}");
    assert_eq!(v["latency_ms"]["samples"].as_u64(), Some(delivered), "{v}");
    let qos = v["qos"].as_u64().unwrap();
    if qos > 0 {
        assert_eq!(n("acked"), published, "{v}");
        assert_eq!(n("unacked"), 0, "{v}");
    }
}

/// Runs fanin / fanout / pairs at `qos` against the broker on `port`.
fn scenarios(port: u16, qos: &str, prefix: &str) {
    let port = port.to_string();
    let common = ["-p", &port, "-q", qos, "-n", "200"];
    let topic = format!("{prefix}/fanin/q{qos}");
    let mut args = vec!["fanin", "--pubs", "4", "-t", &topic];
    args.extend(common);
    assert_complete(&bench_json(&args), 800, 800);

    let topic = format!("{prefix}/fanout/q{qos}");
    let mut args = vec!["fanout", "--subs", "5", "-t", &topic];
    args.extend(common);
    assert_complete(&bench_json(&args), 200, 1000);

    let topic = format!("{prefix}/pairs/q{qos}");
    let mut args = vec!["pairs", "--pubs", "6", "-t", &topic, "-V", "5"];
    args.extend(common);
    assert_complete(&bench_json(&args), 1200, 1200);
}

#[test]
fn fanin_fanout_pairs_at_qos0_deliver_everything() {
    let (_broker, port) = sagitta_broker();
    scenarios(port, "0", "t0");
}

#[test]
fn fanin_fanout_pairs_at_qos1_deliver_everything() {
    let (_broker, port) = sagitta_broker();
    scenarios(port, "1", "t1");
}

#[test]
fn qos2_pairs_complete_the_four_way_handshake() {
    let (_broker, port) = sagitta_broker();
    let port = port.to_string();
    let v = bench_json(&["pairs", "--pubs", "3", "-q", "2", "-n", "200", "-p", &port]);
    assert_complete(&v, 600, 600);
}

#[test]
fn works_against_mosquitto() {
    let (_broker, port, _dir) = mosquitto();
    scenarios(port, "1", "m1");
    let p = port.to_string();
    let v = bench_json(&[
        "fanin", "--pubs", "3", "-q", "0", "-n", "200", "-p", &p, "-V", "311",
    ]);
    assert_complete(&v, 600, 600);
}

#[test]
fn pub_and_conn_scenarios_report_what_they_did() {
    let (_broker, port) = sagitta_broker();
    let p = port.to_string();
    let v = bench_json(&["pub", "--pubs", "2", "-q", "1", "-n", "300", "-p", &p]);
    assert_eq!(v["published"].as_u64(), Some(600), "{v}");
    assert_eq!(v["acked"].as_u64(), Some(600), "{v}");
    assert_eq!(v["ack_latency_ms"]["samples"].as_u64(), Some(600), "{v}");

    let v = bench_json(&["conn", "-c", "20", "-d", "0.3", "-p", &p]);
    assert_eq!(v["connect"]["connected"].as_u64(), Some(20), "{v}");
    assert_eq!(v["connect"]["failed"].as_u64(), Some(0), "{v}");

    // Human-readable summary on stdout.
    let out = bench(&["fanin", "--pubs", "2", "-n", "50", "-p", &p, "--quiet"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["published", "delivered", "latency ms", "p99.9", "losses 0"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let out = bench(&["pub", "--size", "8"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size 8 is too small"), "{err}");
    let out = bench(&["nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    // -h is the host, --help still works.
    let out = bench(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--host"));
}

#[test]
fn unreachable_broker_exits_1() {
    let port = free_port().to_string(); // nothing listens there
    let out = bench(&["fanin", "-n", "10", "-p", &port, "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn sub_measures_a_separate_pub_process() {
    let (_broker, port) = sagitta_broker();
    let p = port.to_string();
    let sub = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args([
            "bench", "sub", "-t", "ext/+", "-n", "400", "-d", "20", "-q", "1",
        ])
        .args(["-p", &p, "--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sub = Running::new(sub);
    // The subscriber needs its SUBACK before the publishers start.
    std::thread::sleep(Duration::from_millis(700));
    let v = bench_json(&[
        "pub", "--pubs", "2", "-n", "200", "-t", "ext", "-q", "1", "-p", &p,
    ]);
    assert_eq!(v["published"].as_u64(), Some(400), "{v}");
    let out = sub.output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["delivered"].as_u64(), Some(400), "{v}");
    assert_eq!(v["losses"].as_u64(), Some(0), "{v}");
    // Timestamps are comparable across processes: every message has a latency sample.
    assert_eq!(v["latency_ms"]["samples"].as_u64(), Some(400), "{v}");
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn broker_pid_adds_cpu_and_memory_of_broker_and_bench() {
    let (_broker, port, pid) = sagitta_broker_with_pid();
    let (p, pid_arg) = (port.to_string(), pid.to_string());
    let v = bench_json(&[
        "pairs",
        "--pubs",
        "3",
        "-q",
        "1",
        "-n",
        "300",
        "-p",
        &p,
        "--broker-pid",
        &pid_arg,
        "--threads",
        "2",
    ]);
    assert_complete(&v, 900, 900);
    assert_eq!(v["broker_pid"].as_u64(), Some(u64::from(pid)), "{v}");
    assert_eq!(v["bench_threads"].as_u64(), Some(2), "{v}");
    assert!(number(&v, "measured_s") > 0.0, "{v}");
    for key in [
        "broker_cpu_s",
        "broker_cpu_pct",
        "bench_cpu_s",
        "bench_cpu_pct",
    ] {
        assert!(number(&v, key) >= 0.0, "{key}: {v}");
    }
    let rss = number(&v, "broker_rss_kb");
    assert!(rss > 0.0, "{v}");
    assert!(number(&v, "broker_peak_rss_kb") >= rss, "{v}");
    assert!(v["bench_saturated"].is_boolean(), "{v}");
    // The keys scripts already read are still there.
    for key in [
        "publish_rate",
        "delivery_rate",
        "losses",
        "errors",
        "latency_ms",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }

    // conn: the broker's memory before and after, per connection.
    let v = bench_json(&[
        "conn",
        "-c",
        "50",
        "--connect-rate",
        "0",
        "-d",
        "0.5",
        "-p",
        &p,
        "--broker-pid",
        &pid_arg,
    ]);
    let c = &v["connect"];
    assert_eq!(c["connected"].as_u64(), Some(50), "{v}");
    assert!(number(c, "rate") > 0.0, "{v}");
    let before = number(c, "broker_rss_before_kb");
    let connected = number(c, "broker_rss_connected_kb");
    assert!(before > 0.0 && connected > 0.0, "{v}");
    let per = number(c, "broker_rss_per_connection_kb");
    assert!((per - (connected - before) / 50.0).abs() < 1e-6, "{v}");
    assert!(number(&v, "broker_peak_rss_kb") > 0.0, "{v}");

    // The text summary names them too.
    let out = bench(&[
        "fanin",
        "--pubs",
        "2",
        "-n",
        "50",
        "-p",
        &p,
        "--quiet",
        "--broker-pid",
        &pid_arg,
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        &format!("pid {pid}") as &str,
        "CPU",
        "RSS",
        "peak",
        "bench CPU",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn without_broker_pid_the_bench_still_reports_its_own_cpu() {
    let (_broker, port) = sagitta_broker();
    let p = port.to_string();
    let v = bench_json(&["pub", "-n", "100", "-p", &p]);
    assert!(v["broker_pid"].is_null(), "{v}");
    assert!(v["broker_cpu_s"].is_null(), "{v}");
    assert!(v["broker_peak_rss_kb"].is_null(), "{v}");
    assert!(number(&v, "bench_cpu_s") >= 0.0, "{v}");
    assert!(number(&v, "bench_threads") >= 1.0, "{v}");
    // A process that does not exist is a bad argument.
    let out = bench(&["pub", "-n", "1", "-p", &p, "--broker-pid", "4294967295"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--broker-pid"));
}
