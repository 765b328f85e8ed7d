//! The web dashboard end to end, in a real browser: Debian's `chromium` (headless), driven by
//! `tests/dashboard/e2e.js` with playwright-core, against a broker started here with an HTTP
//! listener and a token. The script logs in (nothing shows without the token), sees a real
//! MQTT client in the clients list and kicks it with the Disconnect button, publishes from
//! the form and finds the message in the topic explorer, deletes a retained message, and
//! saves a screenshot of each page into `docs/dashboard/`. This test then checks, from the
//! broker's side, that the client was dropped and the retained message is gone.
//!
//! Needs Node.js, `npm ci --prefix crates/broker/tests/dashboard` and `/usr/bin/chromium`
//! (`scripts/test-all` installs them). Without them the test fails under CI (`CI=true`) and
//! is skipped, with a message, elsewhere.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common_dashboard;
mod common_interop;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common_dashboard::{
    Browser, TOKEN, client, connected, get_with_token, required, screenshot_dir,
};
use common_interop::{args, run_ok};
use sagitta_broker::{BridgeConfig, Broker, Direction, TopicRule};
use sagitta_client::QoS;
use sagitta_proto::TopicName;

/// Outer limit for the browser script (its own watchdog fires at 50 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(70);
/// Messages per second of the flood the topic explorer watches (a ceiling: a debug build on
/// a small machine sends what it can).
const FLOOD_RATE: u64 = 100_000;

/// Where the browser and the script are, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    common_dashboard::prerequisites(
        &Browser {
            env_var: "SAGITTA_CHROMIUM",
            default: "/usr/bin/chromium",
            debian: "chromium",
            driver: "playwright-core",
        },
        "e2e.js",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let Some(script) = required("the_dashboard_in_a_real_browser", prerequisites()) else {
        return;
    };
    let started = Instant::now();
    let mut config = common_dashboard::dashboard_config();
    // A bridge whose remote never answers: the Bridges page shows it disconnected, with the
    // reason. Its local side is a connected session of the broker.
    config.bridges.push(
        BridgeConfig::new("cloud", "127.0.0.1:1")
            .topic(TopicRule::new("sensors/#", Direction::Out)),
    );
    let broker = Broker::start(config).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let dashboard = format!("http://{}/", broker.http_addr().expect("an HTTP listener"));

    // The client the dashboard kicks, a shared group, some traffic, a retained message.
    let victim = client(mqtt, "sensor-kick").await;
    victim
        .subscribe_recv("sensors/kick/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut others = Vec::new();
    for id in ["worker-1", "worker-2", "sensor-hall", "sensor-roof"] {
        let c = client(mqtt, id).await;
        if id.starts_with("worker") {
            c.subscribe_recv("$share/workers/jobs/#", QoS::AtLeastOnce)
                .await
                .unwrap();
        } else {
            c.subscribe_recv("sensors/+/temp", QoS::AtMostOnce)
                .await
                .unwrap();
        }
        others.push(c);
    }
    broker.publish(
        TopicName::new("dash/retained/one").unwrap(),
        r#"{"state": "on", "brightness": 80}"#,
        QoS::AtLeastOnce,
        true,
    );
    broker.publish(
        TopicName::new("dash/retained/two").unwrap(),
        "21.5",
        QoS::AtMostOnce,
        true,
    );
    let traffic = Arc::new(AtomicBool::new(true));
    let publisher = client(mqtt, "load-gen").await;
    let running = traffic.clone();
    let load = tokio::spawn(async move {
        let mut n = 0u64;
        while running.load(Ordering::Relaxed) {
            for room in ["hall", "roof", "lab"] {
                let t = 20.0 + ((n as f64) / 7.0).sin() * 3.0;
                let _ = publisher
                    .publish(format!("sensors/{room}/temp"), format!("{t:.2}"))
                    .await;
            }
            let _ = publisher
                .publish(format!("jobs/{}", n % 4), format!("job {n}"))
                .await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(20 + (n % 5) * 10)).await;
        }
        publisher
    });
    // A flood for the explorer's "stays responsive" step: up to FLOOD_RATE msg/s of QoS 0
    // from a real client, paced in 10 ms slices, for the whole run.
    let flooder = client(mqtt, "flood").await;
    let running = traffic.clone();
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0u64;
        let payload = bytes::Bytes::from_static(b"{\"v\": 1234567}");
        while running.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * FLOOD_RATE as f64) as u64;
            while sent < due && running.load(Ordering::Relaxed) {
                if flooder
                    .publish(format!("flood/{}", sent % 100), payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (flooder, sent, started.elapsed())
    });
    // Seven clients and the bridge's local session.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected(&broker) != 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connected(&broker), 8);

    let shots = screenshot_dir();
    // The child inherits SAGITTA_CHROMIUM, if set.
    let out = run_ok(
        "node",
        &args([
            script.to_string_lossy().as_ref(),
            &dashboard,
            TOKEN,
            shots.to_string_lossy().as_ref(),
        ]),
        SCRIPT_LIMIT,
    )
    .await;
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.pop(), Some("ok"), "{out}");
    for line in lines {
        eprintln!("{line}");
    }

    // The broker's side: the client was dropped (5.0: DISCONNECT 0x98, administrative
    // action) and the retained message is gone.
    let reason = tokio::time::timeout(Duration::from_secs(5), victim.closed())
        .await
        .expect("the kicked client sees its connection end");
    assert!(
        format!("{reason:?}").contains("AdministrativeAction"),
        "{reason:?}"
    );
    assert_eq!(connected(&broker), 7, "only the kicked client left");
    traffic.store(false, Ordering::Relaxed);
    let publisher = load.await.unwrap();
    drop(publisher);
    let (flooder, flooded, flood_time) = flood.await.unwrap();
    drop(flooder);
    eprintln!(
        "flood: {flooded} messages in {flood_time:?} ({:.0} msg/s)",
        flooded as f64 / flood_time.as_secs_f64()
    );
    let left = get_with_token(
        broker.http_addr().unwrap(),
        "/api/v1/retained?topic=dash/%23",
    )
    .await;
    assert!(left.contains("dash/retained/two"), "{left}");
    assert!(!left.contains("dash/retained/one"), "{left}");
    drop(others);
    broker.shutdown().await;
    eprintln!("dashboard end-to-end test: {:?}", started.elapsed());
}
