//! The web dashboard end to end in Firefox: Debian's `firefox-esr` (headless), driven over
//! WebDriver BiDi by `tests/dashboard/firefox.js` with puppeteer-core, against a broker
//! started here with an HTTP listener and a token. The script checks that only the login
//! form shows without the token, logs in, sees live numbers, drawn charts and the live
//! indicator connected, finds a real MQTT client in the clients list and kicks it with the
//! Disconnect button, sees in the topic explorer what a client here publishes and a message
//! it publishes from the form, deletes a retained message, checks that the page made no
//! request to any other host, and saves `docs/dashboard/firefox-overview.png`. This test
//! then checks, from the broker's side, that the client was dropped and the retained
//! message is gone. (The Chromium test, `dashboard.rs`, also covers the flood and the
//! narrow screen.)
//!
//! Needs Node.js, `npm ci --prefix crates/broker/tests/dashboard` and `/usr/bin/firefox-esr`
//! (`scripts/test-all` installs them; `SAGITTA_FIREFOX` for another binary). Without them
//! the test fails under CI (`CI=true`) and is skipped, with a message, elsewhere.

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
use sagitta_broker::Broker;
use sagitta_client::QoS;
use sagitta_proto::TopicName;

/// Outer limit for the browser script (its own watchdog fires at 50 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(70);

/// Where the browser and the script are, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    common_dashboard::prerequisites(
        &Browser {
            env_var: "SAGITTA_FIREFOX",
            default: "/usr/bin/firefox-esr",
            debian: "firefox-esr",
            driver: "puppeteer-core",
        },
        "firefox.js",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_firefox() {
    let Some(script) = required("the_dashboard_in_firefox", prerequisites()) else {
        return;
    };
    let started = Instant::now();
    let config = common_dashboard::dashboard_config();
    let broker = Broker::start(config).await.expect("broker starts");
    let mqtt = broker.local_addrs()[0];
    let dashboard = format!("http://{}/", broker.http_addr().expect("an HTTP listener"));

    // The client the dashboard kicks, a shared group, some traffic, retained messages.
    let victim = client(mqtt, "sensor-kick").await;
    victim
        .subscribe_recv("sensors/kick/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut others = Vec::new();
    for id in ["worker-1", "worker-2"] {
        let c = client(mqtt, id).await;
        c.subscribe_recv("$share/workers/jobs/#", QoS::AtLeastOnce)
            .await
            .unwrap();
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
    // What the overview's numbers and charts show, and the explorer finds on sensors/#.
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
    assert_eq!(connected(&broker), 4);

    // The child inherits SAGITTA_FIREFOX, if set.
    let shots = screenshot_dir();
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
    // action) and the retained message is gone, the other one still there.
    let reason = tokio::time::timeout(Duration::from_secs(5), victim.closed())
        .await
        .expect("the kicked client sees its connection end");
    assert!(
        format!("{reason:?}").contains("AdministrativeAction"),
        "{reason:?}"
    );
    assert_eq!(connected(&broker), 3, "only the kicked client left");
    traffic.store(false, Ordering::Relaxed);
    drop(load.await.unwrap());
    let left = get_with_token(
        broker.http_addr().unwrap(),
        "/api/v1/retained?topic=dash/%23",
    )
    .await;
    assert!(left.contains("dash/retained/two"), "{left}");
    assert!(!left.contains("dash/retained/one"), "{left}");
    drop(others);
    broker.shutdown().await;
    eprintln!(
        "dashboard end-to-end test in Firefox: {:?}",
        started.elapsed()
    );
}
