//! `sagitta pub`, `sagitta sub` and `sagitta bench` over TLS, as users run them: the built
//! binary against `sagitta broker` with a TLS listener and a mutual-TLS listener (a
//! subprocess on free ports, killed on drop), and with `mosquitto_pub` / `mosquitto_sub
//! --cafile` as the other client. Certificates are made here with rcgen (never committed).
//!
//! Messages are retained so that a subscriber started after the publisher gets them: no
//! readiness dance, no sleeps.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const BIN: &str = env!("CARGO_BIN_EXE_sagitta");
/// Longest any single command may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A CA: its PEM and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// A leaf certificate signed by `issuer`: (certificate PEM, key PEM).
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The test's files and broker: `ca.pem` signs `server.pem` (localhost, 127.0.0.1) and
/// `client.pem`; `other-ca.pem` signs nothing the broker knows. The broker has a TLS
/// listener (`port`) and a listener requiring client certificates from `ca.pem`
/// (`mtls_port`).
struct Setup {
    dir: PathBuf,
    port: u16,
    mtls_port: u16,
    _broker: Running,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sagitta-tls-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, issuer) = ca("Sagitta CLI Test CA");
        let (other_pem, _) = ca("Some Other CA");
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write("ca.pem", &ca_pem);
        write("other-ca.pem", &other_pem);
        let (cert, key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            "server",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = leaf(&issuer, &[], "client1", ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &cert);
        write("client.key", &key);

        let (port, mtls_port) = (free_port(), free_port());
        let path = |f: &str| dir.join(f).display().to_string();
        let config = format!(
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:{port}\"\n\
             cert = \"{cert}\"\nkey = \"{key}\"\nallow_anonymous = true\n\n\
             [[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:{mtls_port}\"\n\
             cert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\nallow_anonymous = true\n",
            cert = path("server.pem"),
            key = path("server.key"),
            ca = path("ca.pem"),
        );
        write("sagitta.toml", &config);
        let broker = Running::new(
            Command::new(BIN)
                .args(["broker", "--memory", "--config"])
                .arg(dir.join("sagitta.toml"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for p in [port, mtls_port] {
            let deadline = Instant::now() + PATIENCE;
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "broker on {p} did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            dir,
            port,
            mtls_port,
            _broker: broker,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a finished command printed.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    fn assert_fails(&self, code: i32, stderr_has: &str, what: &str) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: {:?}\nstderr: {}",
            self.status,
            self.stderr
        );
        assert!(
            self.stderr.contains(stderr_has),
            "{what}: stderr lacks {stderr_has:?}: {}",
            self.stderr
        );
    }
}

/// Runs `program` with `args` to completion (at most [`PATIENCE`]).
fn run(program: &str, args: &[String]) -> Out {
    run_with_env(program, args, &[])
}

/// [`run`] with these environment variables set.
fn run_with_env(program: &str, args: &[String], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = Running::new(cmd.spawn().unwrap_or_else(|e| {
        panic!("{program}: {e} (mosquitto-clients is installed by scripts/test-all)")
    }));
    let mut stdout = running.child().stdout.take().unwrap();
    let mut stderr = running.child().stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = running.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{program} {args:?} did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `sagitta` with these arguments (each a whole argument: paths may hold anything).
fn sagitta(args: &[&str]) -> Out {
    run(
        BIN,
        &args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
}

#[test]
fn pub_and_sub_with_cafile_round_trip() {
    let s = Setup::new("round-trip");
    let port = s.port.to_string();
    let ca = s.path("ca.pem");
    for (host, version, qos) in [
        ("localhost", "311", "1"),
        ("127.0.0.1", "5", "2"),
        ("localhost", "5", "0"),
    ] {
        let topic = format!("tls/{host}/{version}/{qos}");
        let payload = format!("hello over TLS {version} {qos}");
        sagitta(&[
            "pub", "-h", host, "-p", &port, "--cafile", &ca, "-V", version, "-q", qos, "-r", "-t",
            &topic, "-m", &payload,
        ])
        .assert_ok("sagitta pub --cafile");
        let out = sagitta(&[
            "sub", "-h", host, "-p", &port, "--cafile", &ca, "-V", version, "-q", qos, "-t",
            &topic, "-C", "1", "-W", "10",
        ]);
        out.assert_ok("sagitta sub --cafile");
        assert_eq!(out.stdout.trim_end(), payload);
    }
    // -L mqtts:// turns TLS on (the port is given: the default would be 8883).
    sagitta(&[
        "pub",
        "-L",
        &format!("mqtts://localhost:{port}/tls/url"),
        "--cafile",
        &ca,
        "-r",
        "-m",
        "by url",
    ])
    .assert_ok("sagitta pub -L mqtts://");
    let out = sagitta(&[
        "sub", "-p", &port, "--cafile", &ca, "-t", "tls/url", "-C", "1", "-W", "10",
    ]);
    out.assert_ok("sagitta sub");
    assert_eq!(out.stdout.trim_end(), "by url");
}

/// `sagitta` with these arguments and a system trust store made of `bundle` alone:
/// rustls-native-certs reads `SSL_CERT_FILE` and `SSL_CERT_DIR` instead of the system's.
fn sagitta_trusting(s: &Setup, bundle: &str, args: &[&str]) -> Out {
    let empty = s.path("empty-cert-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    run_with_env(
        BIN,
        &args,
        &[("SSL_CERT_FILE", &s.path(bundle)), ("SSL_CERT_DIR", &empty)],
    )
}

#[test]
fn mqtts_urls_and_tls_use_os_certs_trust_the_system_store() {
    let s = Setup::new("os-certs");
    let port = s.port.to_string();
    let url = format!("mqtts://localhost:{port}/os/url");
    // An mqtts:// URL with no trust flag: the system's CAs.
    sagitta_trusting(
        &s,
        "ca.pem",
        &["pub", "-L", &url, "-r", "-m", "system roots"],
    )
    .assert_ok("sagitta pub -L mqtts:// with the CA in the system store");
    let out = sagitta_trusting(
        &s,
        "ca.pem",
        &[
            "sub",
            "-p",
            &port,
            "--tls-use-os-certs",
            "-t",
            "os/url",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    out.assert_ok("sagitta sub --tls-use-os-certs");
    assert_eq!(out.stdout.trim_end(), "system roots");
    // The same with a system store that lacks the broker's CA: refused.
    sagitta_trusting(&s, "other-ca.pem", &["pub", "-L", &url, "-m", "x"]).assert_fails(
        1,
        "not signed by a trusted CA",
        "mqtts:// with the CA not in the system store",
    );
    sagitta_trusting(
        &s,
        "other-ca.pem",
        &[
            "pub",
            "-p",
            &port,
            "--tls-use-os-certs",
            "-t",
            "t",
            "-m",
            "x",
        ],
    )
    .assert_fails(
        1,
        "not signed by a trusted CA",
        "--tls-use-os-certs, CA unknown",
    );
    // --cafile and --tls-use-os-certs together are a usage error.
    sagitta(&[
        "pub",
        "-p",
        &port,
        "--cafile",
        &s.path("ca.pem"),
        "--tls-use-os-certs",
        "-t",
        "t",
        "-m",
        "x",
    ])
    .assert_fails(2, "--tls-use-os-certs", "both trust flags");
}

#[test]
fn mutual_tls_with_cert_and_key() {
    let s = Setup::new("mtls");
    let port = s.mtls_port.to_string();
    let (ca, cert, key) = (s.path("ca.pem"), s.path("client.pem"), s.path("client.key"));
    sagitta(&[
        "pub", "-p", &port, "--cafile", &ca, "--cert", &cert, "--key", &key, "-q", "1", "-r", "-t",
        "m/t", "-m", "mutual",
    ])
    .assert_ok("sagitta pub --cert --key");
    let out = sagitta(&[
        "sub", "-p", &port, "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "m/t", "-C",
        "1", "-W", "10",
    ]);
    out.assert_ok("sagitta sub --cert --key");
    assert_eq!(out.stdout.trim_end(), "mutual");

    // Without a client certificate the broker refuses the handshake.
    sagitta(&["pub", "-p", &port, "--cafile", &ca, "-t", "m/t", "-m", "x"]).assert_fails(
        1,
        "TLS handshake",
        "no client certificate",
    );
    sagitta(&[
        "sub", "-p", &port, "--cafile", &ca, "-t", "m/t", "-C", "1", "-W", "5",
    ])
    .assert_fails(1, "client certificate", "sub without a client certificate");
}

#[test]
fn verification_failures_and_bad_flags() {
    let s = Setup::new("refused");
    let port = s.port.to_string();
    let ca = s.path("ca.pem");
    sagitta(&[
        "pub",
        "-p",
        &port,
        "--cafile",
        &s.path("other-ca.pem"),
        "-t",
        "t",
        "-m",
        "x",
    ])
    .assert_fails(1, "not signed by a trusted CA", "unknown CA");
    sagitta(&[
        "pub",
        "-p",
        &port,
        "--cafile",
        &ca,
        "--tls-server-name",
        "wrong.example",
        "-t",
        "t",
        "-m",
        "x",
    ])
    .assert_fails(1, "wrong.example", "server name mismatch");
    // --insecure verifies nothing: another CA and another name go through.
    sagitta(&[
        "pub",
        "-p",
        &port,
        "--insecure",
        "--tls-server-name",
        "wrong.example",
        "-t",
        "t",
        "-m",
        "x",
    ])
    .assert_ok("sagitta pub --insecure");
    // A CA file that does not exist is named.
    let missing = s.path("missing.pem");
    sagitta(&[
        "pub", "-p", &port, "--cafile", &missing, "-t", "t", "-m", "x",
    ])
    .assert_fails(1, &missing, "missing CA file");
    // Bad combinations are usage errors (exit 2) found before connecting.
    sagitta(&[
        "pub",
        "-p",
        &port,
        "--cafile",
        &ca,
        "--cert",
        &s.path("client.pem"),
        "-t",
        "t",
        "-m",
        "x",
    ])
    .assert_fails(2, "--key", "--cert without --key");
    sagitta(&[
        "sub",
        "-p",
        &port,
        "--cert",
        &s.path("client.pem"),
        "--key",
        &s.path("client.key"),
        "-t",
        "t",
    ])
    .assert_fails(2, "--cafile", "--cert without TLS");
    // Plain MQTT to a TLS port.
    sagitta(&["pub", "-p", &port, "-t", "t", "-m", "x"]).assert_fails(
        1,
        "needs a TLS connection",
        "plain MQTT to a TLS port",
    );
}

#[test]
fn mosquitto_clients_with_cafile_against_sagitta() {
    let s = Setup::new("mosquitto");
    let port = s.port.to_string();
    let ca = s.path("ca.pem");
    // sagitta pub -> mosquitto_sub
    sagitta(&[
        "pub",
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-r",
        "-t",
        "x/ours",
        "-m",
        "from sagitta pub",
    ])
    .assert_ok("sagitta pub");
    let got = run(
        "mosquitto_sub",
        &[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "x/ours",
            "-C",
            "1",
            "-W",
            "10",
        ]
        .map(str::to_owned),
    );
    got.assert_ok("mosquitto_sub --cafile");
    assert_eq!(got.stdout.trim_end(), "from sagitta pub");
    // mosquitto_pub --cert --key -> sagitta sub --cert --key (mutual TLS)
    let mport = s.mtls_port.to_string();
    let (cert, key) = (s.path("client.pem"), s.path("client.key"));
    run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &mport,
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-q",
            "1",
            "-r",
            "-t",
            "x/theirs",
            "-m",
            "from mosquitto_pub",
        ]
        .map(str::to_owned),
    )
    .assert_ok("mosquitto_pub --cert --key");
    let out = sagitta(&[
        "sub",
        "-h",
        "localhost",
        "-p",
        &mport,
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-t",
        "x/theirs",
        "-C",
        "1",
        "-W",
        "10",
    ]);
    out.assert_ok("sagitta sub");
    assert_eq!(out.stdout.trim_end(), "from mosquitto_pub");
}

#[test]
fn bench_over_tls_and_mutual_tls() {
    let s = Setup::new("bench");
    let ca = s.path("ca.pem");
    let out = sagitta(&[
        "bench",
        "pairs",
        "--pubs",
        "2",
        "-n",
        "300",
        "-q",
        "1",
        "-s",
        "2048",
        "-h",
        "localhost",
        "-p",
        &s.port.to_string(),
        "--cafile",
        &ca,
        "--drain",
        "5",
        "--json",
        "--quiet",
    ]);
    out.assert_ok("sagitta bench pairs over TLS");
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["tls"], true, "{summary}");
    assert_eq!(summary["delivered"], 600, "{summary}");
    assert_eq!(summary["losses"], 0, "{summary}");
    assert_eq!(summary["acked"], 600, "{summary}");

    let mport = s.mtls_port.to_string();
    let out = sagitta(&[
        "bench",
        "conn",
        "-c",
        "5",
        "-d",
        "0.5",
        "-p",
        &mport,
        "--cafile",
        &ca,
        "--cert",
        &s.path("client.pem"),
        "--key",
        &s.path("client.key"),
        "--json",
        "--quiet",
    ]);
    out.assert_ok("sagitta bench conn with mutual TLS");
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["connect"]["connected"], 5, "{summary}");

    // Refused handshakes are counted as failed connections (exit 1).
    let out = sagitta(&[
        "bench", "conn", "-c", "2", "-d", "0.2", "-p", &mport, "--cafile", &ca, "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    // An unreadable CA file is reported at once.
    sagitta(&[
        "bench",
        "pub",
        "-n",
        "1",
        "--cafile",
        &s.path("missing.pem"),
    ])
    .assert_fails(2, "missing.pem", "bench with a missing CA file");
}

/// The TLS flags are documented in `--help`.
#[test]
fn help_shows_the_tls_flags() {
    for tool in ["pub", "sub", "bench"] {
        let out = sagitta(&[tool, "--help"]);
        out.assert_ok("--help");
        for flag in [
            "--cafile",
            "--cert",
            "--key",
            "--insecure",
            "--tls-server-name",
        ] {
            assert!(out.stdout.contains(flag), "{tool} --help lacks {flag}");
        }
    }
}
