//! Interoperability with Eclipse Mosquitto's command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`, Debian package `mosquitto-clients`) against a Sagitta broker started
//! in-process on a free port, for MQTT 3.1, 3.1.1 and 5.0 (`-V mqttv31|mqttv311|mqttv5`).
//!
//! Readiness without sleeping: a subscriber is known to be subscribed once it prints a
//! "ping" message published to its own topic; pings are published until one arrives (at
//! most [`WAIT`]) and are skipped afterwards. Every wait is bounded, and every child process
//! is killed when its handle drops.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_interop;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common_interop::{Proc, TestBroker, WAIT, args, require_program, run_ok};

/// Marker in the payload of readiness pings; subscribers skip lines containing it.
const PING: &str = "__ping__";

/// Output format of every subscriber: topic, QoS, retain flag, payload.
const FORMAT: &str = "%t|%q|%r|%p";

#[derive(Clone, Copy, Debug)]
enum V {
    V31,
    V311,
    V5,
}

impl V {
    fn from_name(name: &str) -> Self {
        match name {
            "v31" => V::V31,
            "v311" => V::V311,
            "v5" => V::V5,
            other => panic!("unknown protocol version {other}"),
        }
    }

    fn flag(self) -> &'static str {
        match self {
            V::V31 => "mqttv31",
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }

    /// A client id unique to this version and test.
    fn id(self, name: &str) -> String {
        format!("{name}-{}", self.flag())
    }
}

fn require_mosquitto() {
    let advice = "Install Debian's `mosquitto-clients` package.";
    require_program("mosquitto_pub", advice);
    require_program("mosquitto_sub", advice);
}

/// Connection arguments common to both tools.
fn conn(broker: &TestBroker, v: V) -> Vec<String> {
    args(["-h", &broker.host(), "-p", &broker.port(), "-V", v.flag()])
}

/// Runs `mosquitto_pub` with `extra` arguments; fails the test if it fails.
async fn publish(broker: &TestBroker, v: V, extra: &[&str]) {
    let mut a = conn(broker, v);
    a.extend(args(extra));
    run_ok("mosquitto_pub", &a, WAIT).await;
}

/// Starts `mosquitto_sub` printing [`FORMAT`] lines, with `extra` arguments.
fn subscriber(broker: &TestBroker, v: V, extra: &[&str]) -> Proc {
    subscriber_with_format(broker, v, FORMAT, extra)
}

/// Starts `mosquitto_sub` printing `format` lines, with `extra` arguments.
fn subscriber_with_format(broker: &TestBroker, v: V, format: &str, extra: &[&str]) -> Proc {
    let mut a = conn(broker, v);
    a.extend(args(["-F", format]));
    a.extend(args(extra));
    Proc::spawn("mosquitto_sub", &a).ignoring(PING)
}

/// Waits until `sub` receives messages published to `topic`: publishes QoS 0 pings there
/// until one is printed. Fails the test after [`WAIT`].
async fn wait_ready(broker: &TestBroker, v: V, sub: &mut Proc, topic: &str) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let payload = format!("{PING}{}", SEQ.fetch_add(1, Ordering::Relaxed));
        publish(broker, v, &["-t", topic, "-m", &payload]).await;
        // Look at the raw lines, pings included.
        if let Some(line) = sub.next_line_raw(Duration::from_millis(150)).await {
            assert!(
                line.contains(PING),
                "expected a readiness ping on {topic}, got {line:?}"
            );
            return;
        }
    }
    panic!(
        "subscriber never received a ping on {topic} within {WAIT:?}; stderr: {}",
        sub.stderr()
    );
}

/// Generates one test per listed version (`v31`, `v311`, `v5`) running `$name(V)`.
macro_rules! versions {
    ($($name:ident: [$($version:ident),+];)*) => {$(
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $version() {
                    super::$name(super::V::from_name(stringify!($version))).await;
                }
            )+
        }
    )*};
}

versions! {
    qos_delivery: [v31, v311, v5];
    retained_then_cleared: [v31, v311, v5];
    will_on_abrupt_disconnect: [v31, v311, v5];
    persistent_session: [v31, v311, v5];
    sys_version: [v311, v5];
    acl: [v311, v5];
    v5_properties: [v5];
}

/// QoS 0/1/2 publishes reach a QoS 2 subscriber at the QoS they were published with, and a
/// QoS 1 subscriber at min(published, granted) [MQTT-3.8.4-8 / 3.1.1 §3.8.4].
async fn qos_delivery(v: V) {
    require_mosquitto();
    let broker = TestBroker::start().await;
    let mut sub2 = subscriber(&broker, v, &["-q", "2", "-t", "qos/#"]);
    let mut sub1 = subscriber(&broker, v, &["-q", "1", "-t", "qos/#"]);
    wait_ready(&broker, v, &mut sub2, "qos/ping").await;
    wait_ready(&broker, v, &mut sub1, "qos/ping").await;
    for qos in ["0", "1", "2"] {
        let topic = format!("qos/{qos}");
        let payload = format!("payload at qos {qos}");
        publish(&broker, v, &["-q", qos, "-t", &topic, "-m", &payload]).await;
        assert_eq!(
            sub2.expect_line("a message on the QoS 2 subscription")
                .await,
            format!("{topic}|{qos}|0|{payload}")
        );
        let downgraded = qos.min("1");
        assert_eq!(
            sub1.expect_line("a message on the QoS 1 subscription")
                .await,
            format!("{topic}|{downgraded}|0|{payload}")
        );
    }
    broker.stop().await;
}

/// A retained message reaches a later subscriber with RETAIN set [MQTT-3.3.1-6]; an empty
/// retained publish removes it, so the next subscriber gets nothing [MQTT-3.3.1-10/11].
async fn retained_then_cleared(v: V) {
    require_mosquitto();
    let broker = TestBroker::start().await;
    publish(&broker, v, &["-r", "-q", "1", "-t", "ret/a", "-m", "kept"]).await;

    let mut first = subscriber(&broker, v, &["-q", "1", "-t", "ret/a", "-C", "1"]);
    assert_eq!(
        first.expect_line("the retained message").await,
        "ret/a|1|1|kept"
    );
    first.wait_exit().await;

    publish(&broker, v, &["-r", "-n", "-t", "ret/a"]).await;

    // A retained message would be sent right after SUBACK, before any ping published later.
    let mut second = subscriber(&broker, v, &["-q", "1", "-t", "ret/a", "-t", "ret/ping"]);
    wait_ready(&broker, v, &mut second, "ret/ping").await;
    publish(&broker, v, &["-t", "ret/a", "-m", "live"]).await;
    assert_eq!(
        second
            .expect_line("the live message (no retained one)")
            .await,
        "ret/a|0|0|live",
        "the cleared retained message must not be delivered"
    );
    broker.stop().await;
}

/// The will of a client whose connection ends without DISCONNECT is published
/// [MQTT-3.1.2-8]; the will of a client that sends DISCONNECT is discarded [MQTT-3.1.2-10].
async fn will_on_abrupt_disconnect(v: V) {
    require_mosquitto();
    let broker = TestBroker::start().await;
    let mut watcher = subscriber(&broker, v, &["-q", "1", "-t", "will/watch"]);
    wait_ready(&broker, v, &mut watcher, "will/watch").await;

    // A client that exits politely (DISCONNECT after one message): no will.
    let polite_id = v.id("polite-owner");
    let mut polite = subscriber(
        &broker,
        v,
        &[
            "-i",
            &polite_id,
            "-t",
            "will/polite",
            "-C",
            "1",
            "--will-topic",
            "will/watch",
            "--will-payload",
            "polite-will-must-not-appear",
        ],
    );
    wait_ready(&broker, v, &mut polite, "will/polite").await;
    assert!(polite.wait_exit().await.success(), "{}", polite.stderr());
    // Let the broker handle the DISCONNECT (only the watcher is left connected) before
    // reusing the id; reusing it then waits for the broker to finish the old connection, so
    // a wrongly sent will would be queued before this marker.
    broker.wait_connected(1).await;
    publish(
        &broker,
        v,
        &[
            "-i",
            &polite_id,
            "-q",
            "1",
            "-t",
            "will/watch",
            "-m",
            "marker",
        ],
    )
    .await;
    assert_eq!(
        watcher.expect_line("the marker").await,
        "will/watch|1|0|marker",
        "a will was published after a normal DISCONNECT"
    );

    // A client killed with SIGKILL: the broker sees the socket close, publishes the will.
    let mut owner = subscriber(
        &broker,
        v,
        &[
            "-i",
            &v.id("will-owner"),
            "-t",
            "will/owner",
            "--will-topic",
            "will/watch",
            "--will-payload",
            "owner is gone",
            "--will-qos",
            "1",
        ],
    );
    wait_ready(&broker, v, &mut owner, "will/owner").await;
    owner.kill().await;
    assert_eq!(
        watcher.expect_line("the will message").await,
        "will/watch|1|0|owner is gone"
    );
    broker.stop().await;
}

/// A persistent session keeps its subscription while the client is away and queues QoS 1
/// messages for it, delivered when it comes back with the same client id
/// [MQTT-3.1.2-4/5] (3.1.1: CleanSession 0; 5.0: Clean Start 0 + Session Expiry 60 s).
async fn persistent_session(v: V) {
    require_mosquitto();
    let broker = TestBroker::start().await;
    let id = v.id("persistent");
    let mut session = vec!["-c", "-i", &id, "-q", "1", "-t", "persist/t"];
    if let V::V5 = v {
        session.extend(["-x", "60"]);
    }
    // First connection: subscribe, then leave with DISCONNECT after the first message.
    let mut first_args = session.clone();
    first_args.extend(["-C", "1"]);
    let mut first = subscriber(&broker, v, &first_args);
    wait_ready(&broker, v, &mut first, "persist/t").await;
    assert!(first.wait_exit().await.success(), "{}", first.stderr());

    // Reusing the id would take the session over, so publish from another client.
    for m in ["m1", "m2", "m3"] {
        publish(&broker, v, &["-q", "1", "-t", "persist/t", "-m", m]).await;
    }

    let mut second = subscriber(&broker, v, &session);
    for m in ["m1", "m2", "m3"] {
        assert_eq!(
            second
                .expect_line(&format!("queued message {m} after reconnecting"))
                .await,
            format!("persist/t|1|0|{m}")
        );
    }
    broker.stop().await;
}

/// `$SYS/broker/version` is published (with `sys_interval` 1 s) and readable by a plain
/// subscriber; once published it is retained, so a later subscriber gets it at once with
/// RETAIN 1.
async fn sys_version(v: V) {
    require_mosquitto();
    let broker = TestBroker::start_with(|c| c.sys_interval = 1).await;
    // The first subscriber may come before the first $SYS update: live or retained.
    let mut first = subscriber(&broker, v, &["-t", "$SYS/broker/version", "-C", "1"]);
    let line = first.expect_line("$SYS/broker/version").await;
    assert!(
        line.starts_with("$SYS/broker/version|0|0|sagitta ")
            || line.starts_with("$SYS/broker/version|0|1|sagitta "),
        "unexpected $SYS/broker/version: {line:?}"
    );
    first.wait_exit().await;
    // A live update may overtake the retained copy (a new one comes every second); the
    // retained copy must come all the same.
    let mut later = subscriber(&broker, v, &["-t", "$SYS/broker/version"]);
    let want = line.replacen("|0|0|", "|0|1|", 1);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = later.expect_line("the retained $SYS/broker/version").await;
        if next == want {
            break;
        }
        seen.push(next);
    }
    assert!(
        seen.len() < 3,
        "a later subscriber never got $SYS/broker/version retained: {seen:?}"
    );
    broker.stop().await;
}

/// 5.0 PUBLISH properties set by `mosquitto_pub -D publish ...` reach `mosquitto_sub`
/// unchanged: User Properties in order [MQTT-3.3.2-17/18], Content Type [MQTT-3.3.2-20],
/// Response Topic [MQTT-3.3.2-15], Correlation Data [MQTT-3.3.2-16], Payload Format Indicator
/// [MQTT-3.3.2-4], Message Expiry Interval less the time waited [MQTT-3.3.2-6]; the
/// subscription's identifier is added [MQTT-3.3.4-3]; a plain message carries none of them.
async fn v5_properties(v: V) {
    require_mosquitto();
    let broker = TestBroker::start().await;
    let mut sub = subscriber_with_format(
        &broker,
        v,
        "%t|%q|%P|%C|%R|%D|%F|%S|%p|%E",
        &[
            "-q",
            "1",
            "-t",
            "props/#",
            "-D",
            "subscribe",
            "subscription-identifier",
            "5",
        ],
    );
    wait_ready(&broker, v, &mut sub, "props/ping").await;
    #[rustfmt::skip]
    publish(&broker, v, &[
        "-q", "1", "-t", "props/a", "-m", "hello",
        "-D", "publish", "user-property", "k1", "v1",
        "-D", "publish", "user-property", "k2", "v2",
        "-D", "publish", "user-property", "k1", "again",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "response-topic", "props/reply",
        "-D", "publish", "correlation-data", "corr-42",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "message-expiry-interval", "60",
    ])
    .await;
    let line = sub.expect_line("the message with properties").await;
    let (fixed, expiry) = line.rsplit_once('|').unwrap();
    assert_eq!(
        fixed,
        "props/a|1|k1:v1 k2:v2 k1:again|text/plain|props/reply|corr-42|1|5|hello"
    );
    let expiry: u32 = expiry
        .parse()
        .unwrap_or_else(|_| panic!("Message Expiry Interval {expiry:?} in {line:?}"));
    assert!(
        (55..=60).contains(&expiry),
        "Message Expiry Interval forwarded as {expiry}, expected 55..=60"
    );

    publish(&broker, v, &["-q", "1", "-t", "props/b", "-m", "plain"]).await;
    assert_eq!(
        sub.expect_line("the message without properties").await,
        "props/b|1||||||5|plain|"
    );
    broker.stop().await;
}

/// An ACL file (`acl_file`) seen through Mosquitto's clients: a user reads only what the file
/// grants and its publishes elsewhere go nowhere (3.1.1: acknowledged and dropped; 5.0:
/// refused with 0x87, which mosquitto_pub reports on stderr).
async fn acl(v: V) {
    require_mosquitto();
    let path = std::env::temp_dir().join(format!(
        "sagitta-acl-interop-{}-{v:?}.acl",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "user reader\ntopic read feed/#\ntopic deny feed/hidden\n\
         user writer\ntopic write feed/#\n",
    )
    .unwrap();
    let acl = path.clone();
    let broker = TestBroker::start_with(|c| c.acl_file = Some(acl)).await;
    let mut sub = subscriber(&broker, v, &["-u", "reader", "-q", "1", "-t", "feed/#"]);
    // Readiness pings, from the writer (nobody else may publish there).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish(&broker, v, &["-u", "writer", "-t", "feed/ping", "-m", PING]).await;
        if sub
            .next_line_raw(Duration::from_millis(150))
            .await
            .is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader never got a ping"
        );
    }
    // The reader may not publish; the writer may not publish outside feed/#.
    let mut a = conn(&broker, v);
    a.extend(args([
        "-u",
        "reader",
        "-q",
        "1",
        "-t",
        "feed/x",
        "-m",
        "from the reader",
    ]));
    let denied_reader = tokio::process::Command::new("mosquitto_pub")
        .args(&a)
        .output()
        .await
        .unwrap();
    let mut a = conn(&broker, v);
    a.extend(args([
        "-u",
        "writer",
        "-q",
        "1",
        "-t",
        "feed/hidden",
        "-m",
        "hidden",
    ]));
    run_ok("mosquitto_pub", &a, WAIT).await;
    publish(
        &broker,
        v,
        &[
            "-u",
            "writer",
            "-q",
            "1",
            "-t",
            "feed/news",
            "-m",
            "allowed",
        ],
    )
    .await;
    assert_eq!(
        sub.expect_line("the allowed message").await,
        "feed/news|1|0|allowed"
    );
    if matches!(v, V::V5) {
        // It exits 0 but reports the PUBACK's reason code.
        let stderr = String::from_utf8_lossy(&denied_reader.stderr);
        assert!(
            stderr.contains("Not authorized"),
            "mosquitto_pub 5.0 should report the refusal (0x87): {stderr}"
        );
    }
    broker.stop().await;
    let _ = std::fs::remove_file(path);
}
