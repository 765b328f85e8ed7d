//! `sagitta broker` with a TLS listener: SIGHUP reloads the certificate without dropping
//! connections, and `--check-config` reads the certificate and key files (of `wss` listeners
//! too). Certificates are
//! made here with rcgen (never committed).
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Running, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sagitta_proto::{Connect, MqttStr, Packet, ProtocolVersion, ReasonCode, decode};

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it:
/// (CA PEM, certificate PEM, key PEM).
fn ca_and_server(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

fn trusting(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection with a finished handshake, or the handshake error.
fn tls(port: u16, config: &Arc<ClientConfig>) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

fn send(stream: &mut Tls, packet: Packet) {
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V5, &mut out).unwrap();
    stream.write_all(&out).unwrap();
    stream.flush().unwrap();
}

fn recv(stream: &mut Tls, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = decode(buf, ProtocolVersion::V5, usize::MAX).unwrap() {
            return Some(p);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("tls.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:{port}\"\n\
             cert = \"{}\"\nkey = \"{}\"\nallow_anonymous = true\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagitta-cli-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_connections() {
    let dir = temp_dir("sighup");
    let (old_ca, cert, key) = ca_and_server("old CA");
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let port = free_port();
    let config = write_config(&dir, port);
    let child = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--memory", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut broker = Running::new(child);
    let old_trust = trusting(&old_ca);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut early = loop {
        match tls(port, &old_trust) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("broker did not come up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut buf = BytesMut::new();
    let connect = Connect::new(ProtocolVersion::V5, MqttStr::new("early").unwrap());
    send(&mut early, Packet::Connect(Box::new(connect)));
    match recv(&mut early, &mut buf) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    let (new_ca, cert, key) = ca_and_server("new CA");
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let new_trust = trusting(&new_ca);
    assert!(tls(port, &new_trust).is_err(), "not reloaded yet");
    let pid = broker.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = tls(port, &new_trust) {
        assert!(Instant::now() < deadline, "new certificate not served: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        tls(port, &old_trust).is_err(),
        "old certificate still served"
    );
    // The connection made before SIGHUP goes on.
    send(&mut early, Packet::PingReq);
    assert!(matches!(recv(&mut early, &mut buf), Some(Packet::PingResp)));

    // A reload that fails (bad key) keeps the broker and the current certificate.
    std::fs::write(dir.join("server.key"), "not a key").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut broker = broker;
    assert!(
        broker.child().try_wait().unwrap().is_none(),
        "broker exited"
    );
    assert!(tls(port, &new_trust).is_ok());
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_reads_the_tls_files() {
    let dir = temp_dir("check");
    let (_, cert, key) = ca_and_server("CA");
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let config = write_config(&dir, 8883);
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_sagitta"))
            .args(["broker", "--check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::write(dir.join("server.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.join("server.key").display().to_string()),
        "{err}"
    );
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.join("server.pem").display().to_string()),
        "{err}"
    );
    // Starting with it fails the same way (exit 1: the broker cannot start).
    let out = Command::new(env!("CARGO_BIN_EXE_sagitta"))
        .args(["broker", "--memory", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.pem"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_reads_the_wss_files_and_websocket_settings() {
    let dir = temp_dir("check-wss");
    let (_, cert, key) = ca_and_server("CA");
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let config = dir.join("ws.toml");
    let write = |path: &str| {
        std::fs::write(
            &config,
            format!(
                "[[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:8080\"\nallow_anonymous = true\n\
                 path = \"{path}\"\n\
                 [[listener]]\ntype = \"wss\"\nbind = \"127.0.0.1:8443\"\n\
                 cert = \"{}\"\nkey = \"{}\"\nallow_anonymous = true\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ),
        )
        .unwrap();
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_sagitta"))
            .args(["broker", "--check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    write("/mqtt");
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    write("mqtt");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`path`") && err.contains("#1"), "{err}");
    write("/mqtt");
    std::fs::write(dir.join("server.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.join("server.key").display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
