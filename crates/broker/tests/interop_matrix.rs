//! The interoperability matrix: every client kind × MQTT 3.1.1 and 5.0 × QoS 0, 1 and 2
//! against our broker, each cell in three cases, plus cross-kind checks (one kind publishes,
//! another receives). The table is in README.md ("Testing").
//!
//! Client kinds ([`Kind`]): our client (`sagitta-client`, in-process), Mosquitto's
//! `mosquitto_pub` / `mosquitto_sub`, paho-mqtt 2.x (`tests/paho/matrix.py`) and MQTT.js
//! (`tests/mqttjs/matrix.js`). Every kind plays three roles the same way, so the checks are
//! written once, here:
//!
//! - a subscriber, ready once its SUBACK is in, whose messages are read as
//!   `topic|qos|retain|payload` lines (the scripts and `mosquitto_sub -F` print them; our
//!   client's messages are formatted alike);
//! - a publisher that returns once its QoS flow is complete and it has disconnected;
//! - a will owner: connected with a will, then killed abruptly (SIGKILL for a process; for our
//!   client, its runtime is dropped, closing the socket without DISCONNECT).
//!
//! Cases of a cell at QoS q (publisher and subscriber of the same kind):
//! - `pubsub`: a message published at q reaches a subscription at q, at q, not retained;
//! - `retained`: a message published retained at q reaches a later subscription at q with the
//!   RETAIN flag [MQTT-3.3.1-6];
//! - `will`: the will (QoS q) of a client dropped without DISCONNECT reaches a subscription at
//!   q [MQTT-3.1.2-8].
//!
//! Test names say the cell: `paho::v5::qos2::will`, `cross::v311::mqttjs_to_mosquitto`.
//! Every cell starts its own broker on a free port, so cells run in parallel; every wait is
//! bounded ([`WAIT`]) and every child process is killed when its handle drops.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_interop;

use std::time::Duration;

use common_interop::{
    Proc, TestBroker, WAIT, args, mqttjs_script, python, require_program, run_ok,
};
use sagitta_client::{Client, LastWill, Message, ProtocolVersion, PublishOptions, QoS};

/// Limit for a publisher process (its own watchdog fires at 20 s).
const PUBLISH_LIMIT: Duration = Duration::from_secs(15);

/// A client implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `sagitta-client`, in this process.
    Sagitta,
    /// `mosquitto_pub` / `mosquitto_sub` (Debian package `mosquitto-clients`).
    Mosquitto,
    /// paho-mqtt 2.x for Python: `tests/paho/matrix.py`.
    Paho,
    /// MQTT.js for Node.js: `tests/mqttjs/matrix.js`.
    Mqttjs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    V311,
    V5,
}

impl V {
    /// As the scripts take it.
    fn name(self) -> &'static str {
        match self {
            V::V311 => "v311",
            V::V5 => "v5",
        }
    }

    fn mosquitto(self) -> &'static str {
        match self {
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }

    fn ours(self) -> ProtocolVersion {
        match self {
            V::V311 => ProtocolVersion::V3_1_1,
            V::V5 => ProtocolVersion::V5,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Case {
    PubSub,
    Retained,
    Will,
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).expect("QoS 0, 1 or 2")
}

/// Checks that the programs `kind` needs are installed (with advice if not).
fn require(kind: Kind) {
    match kind {
        Kind::Sagitta => {}
        Kind::Mosquitto => {
            let advice = "Install Debian's `mosquitto-clients` package.";
            require_program("mosquitto_pub", advice);
            require_program("mosquitto_sub", advice);
            require_program("stdbuf", "Install GNU coreutils.");
        }
        Kind::Paho => {
            python();
        }
        Kind::Mqttjs => {
            mqttjs_script("matrix.js");
        }
    }
}

/// The command line running `tests/paho/matrix.py` or `tests/mqttjs/matrix.js` in `role`.
fn script(kind: Kind, broker: &TestBroker, v: V, role: &[&str]) -> (String, Vec<String>) {
    let (program, mut a) = match kind {
        Kind::Paho => {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/matrix.py");
            let a = args([
                "-B", // no __pycache__ in the source tree
                &path.to_string_lossy(),
                &broker.host(),
            ]);
            (python().to_string_lossy().into_owned(), a)
        }
        Kind::Mqttjs => ("node".to_owned(), args([mqttjs_script("matrix.js")])),
        other => panic!("{other:?} has no script"),
    };
    a.extend(args([&broker.port(), v.name()]));
    a.extend(args(role));
    (program, a)
}

/// `mosquitto_pub` / `mosquitto_sub` arguments to reach `broker` with version `v`.
fn mosquitto_conn(broker: &TestBroker, v: V) -> Vec<String> {
    args([
        "-h",
        &broker.host(),
        "-p",
        &broker.port(),
        "-V",
        v.mosquitto(),
    ])
}

/// `mosquitto_sub` with `-d` among `a`, its debug lines ("Client ...") skipped. Its debug
/// output is not flushed line by line, so it runs under `stdbuf -oL` (GNU coreutils).
fn mosquitto_sub(a: &[String]) -> Proc {
    let mut line_buffered = args(["-oL", "mosquitto_sub"]);
    line_buffered.extend_from_slice(a);
    Proc::spawn("stdbuf", &line_buffered).ignoring("Client ")
}

/// Our client, connected with version `v` (and `will`).
async fn our_client(broker: &TestBroker, v: V, will: Option<LastWill>) -> Client {
    let mut builder = Client::builder(broker.addr.to_string()).protocol(v.ours());
    if let Some(will) = will {
        builder = builder.will(will);
    }
    tokio::time::timeout(WAIT, builder.connect())
        .await
        .expect("our client connects within WAIT")
        .expect("our client connects")
}

/// A subscriber whose SUBACK is in.
enum Subscriber {
    Ours(Client),
    Process(Box<Proc>),
}

impl Subscriber {
    /// The next message as `topic|qos|retain|payload`; fails the test after [`WAIT`].
    async fn next(&mut self, what: &str) -> String {
        match self {
            Subscriber::Ours(client) => {
                let m: Message = tokio::time::timeout(WAIT, client.recv())
                    .await
                    .unwrap_or_else(|_| panic!("our client: no message within {WAIT:?} ({what})"))
                    .expect("our client is still open");
                format!(
                    "{}|{}|{}|{}",
                    m.topic.as_str(),
                    m.qos as u8,
                    u8::from(m.retain),
                    String::from_utf8_lossy(&m.payload)
                )
            }
            Subscriber::Process(p) => p.expect_line(what).await,
        }
    }

    /// Ends the subscriber (a process is killed), before its broker stops.
    async fn close(self) {
        match self {
            Subscriber::Ours(client) => {
                let _ = tokio::time::timeout(WAIT, client.disconnect()).await;
            }
            Subscriber::Process(mut p) => p.kill().await,
        }
    }
}

/// Subscribes a client of `kind` to `topic` at QoS `q`; returns once the SUBACK (granting q)
/// is in.
async fn subscribe(kind: Kind, broker: &TestBroker, v: V, topic: &str, q: u8) -> Subscriber {
    let qs = q.to_string();
    match kind {
        Kind::Sagitta => {
            let client = our_client(broker, v, None).await;
            let granted = tokio::time::timeout(WAIT, client.subscribe_recv(topic, qos(q)))
                .await
                .expect("SUBACK within WAIT")
                .expect("subscribe");
            assert_eq!(granted, qos(q), "granted QoS");
            Subscriber::Ours(client)
        }
        Kind::Mosquitto => {
            // -d prints the protocol exchange, lines starting with "Client "; the SUBACK is
            // followed by "Subscribed (mid: 1): GRANTED".
            let mut a = mosquitto_conn(broker, v);
            a.extend(args(["-d", "-q", &qs, "-t", topic, "-F", "%t|%q|%r|%p"]));
            let mut p = mosquitto_sub(&a);
            let line = p.expect_line("the SUBACK").await;
            assert_eq!(
                line,
                format!("Subscribed (mid: 1): {q}"),
                "mosquitto_sub's SUBACK"
            );
            Subscriber::Process(Box::new(p))
        }
        Kind::Paho | Kind::Mqttjs => {
            let (program, a) = script(kind, broker, v, &["sub", topic, &qs]);
            let mut p = Proc::spawn(&program, &a);
            let line = p.expect_line("the SUBACK").await;
            assert_eq!(line, format!("ready|{q}"), "{kind:?} subscriber's SUBACK");
            Subscriber::Process(Box::new(p))
        }
    }
}

/// Publishes with a client of `kind`; returns once its QoS flow is complete and the broker has
/// handled its disconnection (so whatever it published has been routed and stored).
async fn publish(
    kind: Kind,
    broker: &TestBroker,
    v: V,
    topic: &str,
    payload: &str,
    q: u8,
    retain: bool,
) {
    let before = broker.connected();
    let qs = q.to_string();
    match kind {
        Kind::Sagitta => {
            let client = our_client(broker, v, None).await;
            let options = PublishOptions::new().qos(qos(q)).retain(retain);
            tokio::time::timeout(
                WAIT,
                client.publish_with(topic, payload.to_owned(), options),
            )
            .await
            .expect("publish completes within WAIT")
            .expect("publish");
            tokio::time::timeout(WAIT, client.disconnect())
                .await
                .expect("disconnect within WAIT")
                .expect("disconnect");
        }
        Kind::Mosquitto => {
            let mut a = mosquitto_conn(broker, v);
            a.extend(args(["-q", &qs, "-t", topic, "-m", payload]));
            if retain {
                a.push("-r".to_owned());
            }
            run_ok("mosquitto_pub", &a, PUBLISH_LIMIT).await;
        }
        Kind::Paho | Kind::Mqttjs => {
            let r = if retain { "1" } else { "0" };
            let (program, a) = script(kind, broker, v, &["pub", topic, &qs, r, payload]);
            let out = run_ok(&program, &a, PUBLISH_LIMIT).await;
            assert_eq!(out.trim(), "ok", "{kind:?} publisher");
        }
    }
    broker.wait_connected(before).await;
}

/// A connected client with a will, waiting to be killed.
enum WillOwner {
    /// Our client on a runtime of its own, in a thread that drops the runtime (and with it
    /// the connection, without DISCONNECT) when the sender is dropped or sent to.
    Ours(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
    Process(Box<Proc>),
}

impl WillOwner {
    /// Connects a client of `kind` with a will (QoS `q`, not retained); returns once the
    /// CONNACK is in.
    async fn connect(
        kind: Kind,
        broker: &TestBroker,
        v: V,
        topic: &str,
        payload: &str,
        q: u8,
    ) -> Self {
        let qs = q.to_string();
        match kind {
            Kind::Sagitta => {
                let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                let will = LastWill::new(topic, payload.to_owned()).qos(qos(q));
                let addr = broker.addr.to_string();
                let thread = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let client = runtime.block_on(async {
                        let connect = Client::builder(addr)
                            .protocol(v.ours())
                            .will(will)
                            .connect();
                        match tokio::time::timeout(WAIT, connect).await {
                            Ok(connected) => connected.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no CONNACK within {WAIT:?}")),
                        }
                    });
                    let connected = client.is_ok();
                    let _ = ready_tx.send(client.as_ref().map(drop).map_err(Clone::clone));
                    if connected {
                        // Until killed (or the test is gone); bounded all the same.
                        let _ = kill_rx.recv_timeout(Duration::from_secs(30));
                    }
                    // The event loop goes with the runtime: the socket closes, no DISCONNECT.
                    drop(runtime);
                    drop(client);
                });
                match tokio::time::timeout(WAIT, ready_rx).await {
                    Ok(Ok(Ok(()))) => WillOwner::Ours(kill_tx, thread),
                    Ok(Ok(Err(e))) => panic!("our will owner cannot connect: {e}"),
                    Ok(Err(_)) => panic!("our will owner's thread died"),
                    Err(_) => panic!("our will owner did not answer within {WAIT:?}"),
                }
            }
            Kind::Mosquitto => {
                let mut a = mosquitto_conn(broker, v);
                #[rustfmt::skip]
                a.extend(args([
                    "-d", "-t", "matrix/will-owner/idle",
                    "--will-topic", topic, "--will-payload", payload, "--will-qos", &qs,
                ]));
                let mut p = mosquitto_sub(&a);
                let line = p.expect_line("the will owner's SUBACK").await;
                assert!(line.starts_with("Subscribed"), "mosquitto_sub: {line:?}");
                WillOwner::Process(Box::new(p))
            }
            Kind::Paho | Kind::Mqttjs => {
                let (program, a) = script(kind, broker, v, &["will", topic, &qs, payload]);
                let mut p = Proc::spawn(&program, &a);
                let line = p.expect_line("the will owner's CONNACK").await;
                assert_eq!(line, "ready", "{kind:?} will owner");
                WillOwner::Process(Box::new(p))
            }
        }
    }

    /// Kills the client abruptly: the broker sees the connection end without DISCONNECT.
    async fn kill(self) {
        match self {
            WillOwner::Ours(kill, thread) => {
                kill.send(()).unwrap();
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .unwrap()
                    .expect("the will owner's thread ends cleanly");
            }
            WillOwner::Process(mut p) => p.kill().await,
        }
    }
}

/// One cell: `kind` with version `v` at QoS `q`, in `case`, against a broker of its own.
async fn cell(kind: Kind, v: V, q: u8, case: Case) {
    require(kind);
    let broker = TestBroker::start().await;
    let name = format!("{kind:?} {} qos{q} {case:?}", v.name());
    match case {
        Case::PubSub => {
            let topic = "matrix/pubsub";
            let mut sub = subscribe(kind, &broker, v, topic, q).await;
            publish(kind, &broker, v, topic, &name, q, false).await;
            assert_eq!(
                sub.next("the message").await,
                format!("{topic}|{q}|0|{name}"),
                "{name}: topic|qos|retain|payload received"
            );
            sub.close().await;
        }
        Case::Retained => {
            let topic = "matrix/retained";
            publish(kind, &broker, v, topic, &name, q, true).await;
            let mut sub = subscribe(kind, &broker, v, topic, q).await;
            assert_eq!(
                sub.next("the retained message").await,
                format!("{topic}|{q}|1|{name}"),
                "{name}: topic|qos|retain|payload received by a later subscriber"
            );
            sub.close().await;
        }
        Case::Will => {
            let topic = "matrix/will";
            let mut watcher = subscribe(kind, &broker, v, topic, q).await;
            let owner = WillOwner::connect(kind, &broker, v, topic, &name, q).await;
            owner.kill().await;
            assert_eq!(
                watcher.next("the will").await,
                format!("{topic}|{q}|0|{name}"),
                "{name}: topic|qos|retain|payload of the will received"
            );
            watcher.close().await;
        }
    }
    broker.stop().await;
}

/// A cross-kind check: `from` (with version `from_v`) publishes at QoS 0, 1 and 2 to a
/// subscription at QoS 2 of `to` (with `to_v`), which gets each message at its QoS.
async fn cross(from: Kind, from_v: V, to: Kind, to_v: V) {
    require(from);
    require(to);
    let broker = TestBroker::start().await;
    let topic = "matrix/cross";
    let mut sub = subscribe(to, &broker, to_v, topic, 2).await;
    for q in 0..=2 {
        let payload = format!(
            "{from:?} {} -> {to:?} {} qos{q}",
            from_v.name(),
            to_v.name()
        );
        publish(from, &broker, from_v, topic, &payload, q, false).await;
        assert_eq!(
            sub.next("the message").await,
            format!("{topic}|{q}|0|{payload}"),
            "topic|qos|retain|payload received"
        );
    }
    sub.close().await;
    broker.stop().await;
}

/// Generates the cells: `KIND::VERSION::qosN::{pubsub, retained, will}`.
macro_rules! matrix {
    ($($module:ident: $kind:ident;)*) => {$(
        mod $module {
            matrix!(@version $kind, v311, V311);
            matrix!(@version $kind, v5, V5);
        }
    )*};
    (@version $kind:ident, $module:ident, $v:ident) => {
        mod $module {
            matrix!(@qos $kind, $v, qos0, 0);
            matrix!(@qos $kind, $v, qos1, 1);
            matrix!(@qos $kind, $v, qos2, 2);
        }
    };
    (@qos $kind:ident, $v:ident, $module:ident, $q:literal) => {
        mod $module {
            matrix!(@case $kind, $v, $q, pubsub, PubSub);
            matrix!(@case $kind, $v, $q, retained, Retained);
            matrix!(@case $kind, $v, $q, will, Will);
        }
    };
    (@case $kind:ident, $v:ident, $q:literal, $name:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crate::cell(crate::Kind::$kind, crate::V::$v, $q, crate::Case::$case).await;
        }
    };
}

matrix! {
    sagitta: Sagitta;
    mosquitto: Mosquitto;
    paho: Paho;
    mqttjs: Mqttjs;
}

/// Generates the cross-kind checks: `cross::GROUP::NAME`.
macro_rules! cross {
    ($($group:ident { $($name:ident: $from:ident $from_v:ident -> $to:ident $to_v:ident;)* })*) => {
        mod cross {$(
            mod $group {$(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::cross(
                        crate::Kind::$from,
                        crate::V::$from_v,
                        crate::Kind::$to,
                        crate::V::$to_v,
                    )
                    .await;
                }
            )*}
        )*}
    };
}

// Per version, a ring: every kind publishes to another kind and receives from a third.
// Then versions mixed: a 5.0 publisher and a 3.1.1 subscriber, and the other way round.
cross! {
    v311 {
        paho_to_mqttjs: Paho V311 -> Mqttjs V311;
        mqttjs_to_mosquitto: Mqttjs V311 -> Mosquitto V311;
        mosquitto_to_sagitta: Mosquitto V311 -> Sagitta V311;
        sagitta_to_paho: Sagitta V311 -> Paho V311;
    }
    v5 {
        paho_to_mqttjs: Paho V5 -> Mqttjs V5;
        mqttjs_to_mosquitto: Mqttjs V5 -> Mosquitto V5;
        mosquitto_to_sagitta: Mosquitto V5 -> Sagitta V5;
        sagitta_to_paho: Sagitta V5 -> Paho V5;
    }
    mixed {
        mqttjs_v5_to_paho_v311: Mqttjs V5 -> Paho V311;
        sagitta_v311_to_mosquitto_v5: Sagitta V311 -> Mosquitto V5;
    }
}
