//! The client over TLS against real brokers with TLS listeners: our own (`sagitta-broker`,
//! in-process) and Debian's Mosquitto, each started by the test on a free port of 127.0.0.1
//! with certificates made at run time by rcgen (`common::pki`; no key is committed).
//!
//! Round trips at QoS 0/1/2 with MQTT 3.1.1 and 5.0 (by DNS name and by IP address, a payload
//! of many TLS records, a burst), mutual TLS, refusals (unknown CA, wrong server name, expired
//! certificate, missing or foreign client certificate, a plain TCP port) as typed fatal
//! errors, `insecure`, a ready rustls configuration, reconnect after a broker restart, the
//! blocking facade, and `mosquitto_sub` / `mosquitto_pub` with `--cafile` as the other peer.
//!
//! `cargo test -p sagitta-client --test tls sagitta::` runs the cases against ours only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Pki;
use common::{
    BrokerKind, BrokerSetup, TestBroker, fast_reconnect, wait_connected, wait_status, within,
};
use sagitta_client::rustls;
use sagitta_client::{
    Client, ConnectError, Message, ProtocolVersion, PublishOptions, QoS, ReconnectPolicy, State,
    TlsOptions,
};

/// Runs each scenario against both brokers.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod mosquitto {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::$name(crate::BrokerKind::Mosquitto).await
                }
            )*
        }
        mod sagitta {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::$name(crate::BrokerKind::Sagitta).await
                }
            )*
        }
    };
}

against_both![
    round_trips_at_every_qos_over_tls,
    mutual_tls_accepts_our_certificate_and_refuses_others,
    untrusted_broker_certificates_are_refused,
    insecure_skips_verification,
    reconnects_over_tls_after_broker_restart,
];

/// A broker with a TLS listener (requiring client certificates if `mutual`).
fn tls_broker(kind: BrokerKind, pki: &Pki, mutual: bool) -> TestBroker {
    TestBroker::start_with(kind, &BrokerSetup::default().tls(pki.listener(mutual)))
}

fn trust(pki: &Pki) -> TlsOptions {
    TlsOptions::ca_file(pki.path("ca.pem"))
}

async fn connect(
    addr: String,
    v: ProtocolVersion,
    tls: TlsOptions,
) -> Result<Client, ConnectError> {
    Client::builder(addr)
        .protocol(v)
        .tls(tls)
        .reconnect(ReconnectPolicy::disabled())
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn next(client: &Client) -> Message {
    within("a message", client.recv())
        .await
        .expect("client open")
}

/// The handshake error of a refused connection; fails the test otherwise.
fn handshake_error(result: Result<Client, ConnectError>) -> (ConnectError, rustls::Error) {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => match &e {
            ConnectError::TlsHandshake { error, .. } => {
                let error = error.clone();
                (e, error)
            }
            other => panic!("expected a TLS handshake error, got {other:?}: {other}"),
        },
    }
}

async fn round_trips_at_every_qos_over_tls(kind: BrokerKind) {
    let pki = Pki::new("round-trip");
    let m = tls_broker(kind, &pki, false);
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // By DNS name (SNI sent) and by IP address: the certificate has both.
        let sub = connect(format!("localhost:{}", m.port()), v, trust(&pki))
            .await
            .unwrap();
        let publisher = connect(m.addr(), v, trust(&pki)).await.unwrap();
        sub.subscribe_recv("tls/#", QoS::ExactlyOnce).await.unwrap();

        publisher.publish("tls/0", "zero").await.unwrap();
        publisher
            .publish_with("tls/1", "one", QoS::AtLeastOnce)
            .await
            .unwrap();
        publisher
            .publish_with("tls/2", "two", QoS::ExactlyOnce)
            .await
            .unwrap();
        for (topic, payload, qos) in [
            ("tls/0", &b"zero"[..], QoS::AtMostOnce),
            ("tls/1", b"one", QoS::AtLeastOnce),
            ("tls/2", b"two", QoS::ExactlyOnce),
        ] {
            let msg = next(&sub).await;
            assert_eq!(
                (msg.topic.as_str(), &msg.payload[..], msg.qos),
                (topic, payload, qos),
                "{v}"
            );
        }

        // 300 KB: many TLS records, more than one socket write.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        publisher
            .publish_with("tls/big", big.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        let msg = next(&sub).await;
        assert_eq!(msg.topic, "tls/big");
        assert!(msg.payload[..] == big[..], "the large payload was altered");

        // A burst of pipelined publishes: every one acknowledged, all delivered in order.
        let n = 500u32;
        let mut pending = Vec::new();
        for i in 0..n {
            pending.push(
                publisher
                    .start_publish(
                        "tls/burst",
                        format!("{i:04}").repeat(1024),
                        PublishOptions::new().qos(QoS::AtLeastOnce),
                    )
                    .await
                    .unwrap(),
            );
        }
        for p in pending {
            within("a burst acknowledgement", p).await.unwrap();
        }
        for i in 0..n {
            let msg = next(&sub).await;
            assert_eq!(msg.topic, "tls/burst");
            assert_eq!(&msg.payload[..4], format!("{i:04}").as_bytes(), "{v}");
            assert_eq!(msg.payload.len(), 4096);
        }
        publisher.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
        assert_eq!(sub.status().state, State::Closed);
    }
}

async fn mutual_tls_accepts_our_certificate_and_refuses_others(kind: BrokerKind) {
    let pki = Pki::new("mtls");
    let m = tls_broker(kind, &pki, true);
    let v = ProtocolVersion::V5;
    let ours = trust(&pki).client_cert(pki.path("client.pem"), pki.path("client.key"));
    let client = connect(m.addr(), v, ours.clone()).await.unwrap();
    client
        .subscribe_recv("mtls/echo", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish_with("mtls/echo", "hello", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(&next(&client).await.payload[..], b"hello");

    for (tls, what) in [
        (trust(&pki), "no client certificate"),
        (
            trust(&pki).client_cert(pki.path("foreign.pem"), pki.path("foreign.key")),
            "a certificate from another CA",
        ),
    ] {
        let (e, _) = handshake_error(connect(m.addr(), v, tls).await);
        assert!(e.is_fatal(), "{what}: {e}");
        assert!(e.to_string().contains("TLS handshake"), "{what}: {e}");
    }
    // The refused attempts did not disturb the accepted client.
    client
        .publish_with("mtls/echo", "still here", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(&next(&client).await.payload[..], b"still here");
    client.disconnect().await.unwrap();
}

async fn untrusted_broker_certificates_are_refused(kind: BrokerKind) {
    let pki = Pki::new("refused");
    let m = tls_broker(kind, &pki, false);
    let v = ProtocolVersion::V3_1_1;

    let (e, error) =
        handshake_error(connect(m.addr(), v, TlsOptions::ca_file(pki.path("other-ca.pem"))).await);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
    assert!(e.is_fatal());
    let text = e.to_string();
    assert!(
        text.contains("TLS handshake") && text.contains("trusted CA"),
        "{text}"
    );

    let (e, error) =
        handshake_error(connect(m.addr(), v, trust(&pki).server_name("broker.example")).await);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{error:?}"
    );
    assert!(e.is_fatal());
    assert!(e.to_string().contains("broker.example"), "{e}");

    // The right name given explicitly (an IP address here) is accepted.
    connect(m.addr(), v, trust(&pki).server_name("127.0.0.1"))
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();

    // An expired certificate from the trusted CA.
    let expired = TestBroker::start_with(
        kind,
        &BrokerSetup::default().tls(pki.listener_with("expired-server", false)),
    );
    let (e, error) = handshake_error(connect(expired.addr(), v, trust(&pki)).await);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            )
        ),
        "{error:?}"
    );
    assert!(e.is_fatal());
    assert!(e.to_string().contains("expired"), "{e}");
}

async fn insecure_skips_verification(kind: BrokerKind) {
    let pki = Pki::new("insecure");
    let m = tls_broker(kind, &pki, false);
    // Neither the CA nor the name would pass verification.
    let tls = TlsOptions::insecure().server_name("broker.example");
    assert!(tls.is_insecure());
    let client = connect(m.addr(), ProtocolVersion::V5, tls).await.unwrap();
    client
        .subscribe_recv("insecure/t", QoS::AtMostOnce)
        .await
        .unwrap();
    client.publish("insecure/t", "x").await.unwrap();
    assert_eq!(&next(&client).await.payload[..], b"x");
    client.disconnect().await.unwrap();
}

async fn reconnects_over_tls_after_broker_restart(kind: BrokerKind) {
    let pki = Pki::new("reconnect");
    let mut m = tls_broker(kind, &pki, false);
    let tls = trust(&pki);
    let builder = |tls: TlsOptions| {
        Client::builder(m.addr())
            .protocol(ProtocolVersion::V5)
            .tls(tls)
            .reconnect(fast_reconnect())
    };
    let sub = builder(tls.clone()).connect().await.unwrap();
    sub.subscribe_recv("re/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = builder(tls).connect().await.unwrap();

    m.kill();
    wait_status(&publisher, "reconnecting", |s| {
        s.state == State::Reconnecting
    })
    .await;
    let during = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publisher
                .publish_with("re/during", "queued", QoS::AtLeastOnce)
                .await
        })
    };
    m.start_again();
    within("the queued publish", during).await.unwrap().unwrap();
    wait_connected(&sub, 2).await;
    // The subscription is restored over the new TLS connection.
    within("the restored subscription", async {
        loop {
            publisher
                .publish_with("re/probe", "p", QoS::AtLeastOnce)
                .await
                .unwrap();
            if let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(100), sub.recv()).await
                && msg.topic == "re/probe"
            {
                break;
            }
        }
    })
    .await;
    assert_eq!(publisher.status().connections, 2);
    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
}

/// A broker whose certificate becomes untrusted while the client is away: reconnecting stops
/// at the first refused handshake instead of retrying forever.
#[tokio::test]
async fn a_refused_certificate_ends_reconnecting() {
    let good = Pki::new("rotate-good");
    let other = Pki::new("rotate-other");
    let mut first = common::Sagitta::start_with(&BrokerSetup::default().tls(good.listener(false)));
    let client = Client::builder(first.addr())
        .tls(trust(&good))
        .reconnect(fast_reconnect())
        .connect()
        .await
        .unwrap();
    first.kill();
    // The same port, now with a certificate from a CA the client does not trust.
    let mut replacement = common::Sagitta::start_on(
        first.port,
        &BrokerSetup::default().tls(other.listener(false)),
    );
    let status = wait_status(&client, "the client to give up", |s| {
        s.state == State::Closed
    })
    .await;
    match status.last_error {
        Some(sagitta_client::ClientError::Reconnect(e @ ConnectError::TlsHandshake { .. })) => {
            assert!(e.is_fatal(), "{e}");
        }
        other => panic!("expected a fatal TLS handshake error, got {other:?}"),
    }
    replacement.kill();
}

/// Connecting with TLS to a plain TCP port fails with an error that says so (not a timeout).
#[tokio::test]
async fn tls_to_a_plain_tcp_port_fails_clearly() {
    let pki = Pki::new("plain");
    let m = TestBroker::start(BrokerKind::Sagitta);
    let e = connect(m.addr(), ProtocolVersion::V5, trust(&pki))
        .await
        .expect_err("refused");
    assert!(!matches!(e, ConnectError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    assert!(!e.is_fatal(), "{e}");
}

/// Connecting without TLS to a TLS port fails with an error that says so, when the broker
/// answers with a TLS alert as ours does (Mosquitto resets the connection instead).
#[tokio::test]
async fn plain_mqtt_to_a_tls_port_fails_clearly() {
    let pki = Pki::new("needs-tls");
    let m = tls_broker(BrokerKind::Sagitta, &pki, false);
    let e = Client::builder(m.addr())
        .reconnect(ReconnectPolicy::disabled())
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("refused");
    assert!(matches!(e, ConnectError::TlsRequired { .. }), "{e:?}: {e}");
    assert!(e.is_fatal());
    assert!(e.to_string().contains("needs a TLS connection"), "{e}");
}

/// Files that cannot be used are reported before connecting, naming the file.
#[tokio::test]
async fn unusable_files_are_named() {
    let pki = Pki::new("files");
    let m = tls_broker(BrokerKind::Sagitta, &pki, false);
    let missing = pki.path("missing.pem");
    let e = connect(m.addr(), ProtocolVersion::V5, TlsOptions::ca_file(&missing))
        .await
        .expect_err("refused");
    assert!(matches!(e, ConnectError::Tls(_)), "{e}");
    assert!(e.is_fatal());
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    // A key that is not the certificate's.
    let e = connect(
        m.addr(),
        ProtocolVersion::V5,
        trust(&pki).client_cert(pki.path("client.pem"), pki.path("foreign.key")),
    )
    .await
    .expect_err("refused");
    assert!(matches!(e, ConnectError::Tls(_)), "{e}");
    assert!(e.to_string().contains("client.pem"), "{e}");
}

/// A rustls configuration made by the application is used as it is.
#[tokio::test]
async fn a_ready_rustls_configuration() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let pki = Pki::new("ready");
    let m = tls_broker(BrokerKind::Sagitta, &pki, false);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = connect(
        m.addr(),
        ProtocolVersion::V5,
        TlsOptions::with_config(Arc::new(config)),
    )
    .await
    .unwrap();
    client
        .subscribe_recv("ready/t", QoS::ExactlyOnce)
        .await
        .unwrap();
    client
        .publish_with("ready/t", "over TLS 1.2", QoS::ExactlyOnce)
        .await
        .unwrap();
    assert_eq!(&next(&client).await.payload[..], b"over TLS 1.2");
    client.disconnect().await.unwrap();
}

/// The blocking facade takes the same option.
#[test]
fn blocking_client_over_tls() {
    let pki = Pki::new("blocking");
    let m = tls_broker(BrokerKind::Sagitta, &pki, true);
    let client = sagitta_client::blocking::Client::builder(m.addr())
        .tls(trust(&pki).client_cert(pki.path("client.pem"), pki.path("client.key")))
        .connect_blocking()
        .unwrap();
    client
        .subscribe_recv("blocking/t", QoS::AtLeastOnce)
        .unwrap();
    client
        .publish_with("blocking/t", "sync", QoS::AtLeastOnce)
        .unwrap();
    let msg = client.recv_timeout(common::WAIT).unwrap();
    assert_eq!(&msg.payload[..], b"sync");
    client.disconnect().unwrap();
}

/// Runs a Mosquitto client program to completion (at most [`common::WAIT`]) and returns its
/// stdout; fails the test if it fails.
fn mosquitto_client(program: &str, args: &[String]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (install Debian's mosquitto-clients; scripts/test-all does)")
        });
    let deadline = std::time::Instant::now() + common::WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `-h localhost -p PORT --cafile ca.pem --cert client.pem --key client.key` and `extra`.
fn tls_args(port: u16, pki: &Pki, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-h".to_owned(),
        "localhost".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        "--cafile".to_owned(),
        pki.arg("ca.pem"),
        "--cert".to_owned(),
        pki.arg("client.pem"),
        "--key".to_owned(),
        pki.arg("client.key"),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Our client and Mosquitto's command-line clients on a Mosquitto TLS listener with client
/// certificates: `mosquitto_sub --cafile --cert --key` reads what we published, and we
/// receive what `mosquitto_pub` publishes.
#[tokio::test]
async fn mosquitto_clients_with_cafile_interoperate() {
    let pki = Pki::new("mosquitto-interop");
    let m = tls_broker(BrokerKind::Mosquitto, &pki, true);
    let ours = trust(&pki).client_cert(pki.path("client.pem"), pki.path("client.key"));
    let client = connect(
        format!("localhost:{}", m.port()),
        ProtocolVersion::V3_1_1,
        ours,
    )
    .await
    .unwrap();
    // Retained, so that mosquitto_sub gets it whenever it subscribes.
    client
        .publish_with(
            "interop/retained",
            "from sagitta over TLS",
            PublishOptions::new().qos(QoS::AtLeastOnce).retain(true),
        )
        .await
        .unwrap();
    let args = tls_args(
        m.port(),
        &pki,
        &["-t", "interop/retained", "-C", "1", "-W", "5"],
    );
    let got = tokio::task::spawn_blocking(move || mosquitto_client("mosquitto_sub", &args))
        .await
        .unwrap();
    assert_eq!(got.trim_end(), "from sagitta over TLS");

    client
        .subscribe_recv("interop/to-us", QoS::AtLeastOnce)
        .await
        .unwrap();
    let args = tls_args(
        m.port(),
        &pki,
        &["-q", "1", "-t", "interop/to-us", "-m", "from mosquitto_pub"],
    );
    tokio::task::spawn_blocking(move || mosquitto_client("mosquitto_pub", &args))
        .await
        .unwrap();
    let msg = next(&client).await;
    assert_eq!(&msg.payload[..], b"from mosquitto_pub");
    client.disconnect().await.unwrap();
}
