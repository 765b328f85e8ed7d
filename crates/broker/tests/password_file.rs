//! Password-file authentication end to end: a broker started with `password_file` accepts
//! the right password, refuses a wrong one (3.1.1 return code 4, 5.0 reason 0x86) and
//! anonymous clients (5 / 0x87), and reports a bad line by file and line number. Also
//! compatibility with Mosquitto 2: a line made by `mosquitto_passwd -b` verifies here, and a
//! line we make (100 000 iterations) lets `mosquitto_pub -u -P` into `/usr/sbin/mosquitto`.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Peer, broker_with, connect_packet, mstr};
use sagitta_broker::{Broker, BrokerError, Config, PasswordFile, PasswordHash};
use sagitta_proto::{ProtocolVersion, ReasonCode};

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagitta-pw-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A cheap line (few iterations) so that unoptimized test builds stay fast.
fn line(user: &str, password: &str) -> String {
    format!(
        "{user}:{}",
        PasswordHash::with_salt(password.as_bytes(), b"0123456789ab", 50)
    )
}

async fn connack(
    broker: &Broker,
    version: ProtocolVersion,
    user: Option<&str>,
    password: Option<&str>,
) -> ReasonCode {
    let mut c = connect_packet(version, "pw-client");
    c.username = user.map(mstr);
    c.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    let (_peer, ack) = Peer::connect_with(common::addr(broker), c).await;
    ack.reason
}

/// Sends a 3.1.1 CONNECT and returns the CONNACK's four raw bytes.
async fn raw_v311(broker: &Broker, credentials: Option<(&str, &str)>) -> [u8; 4] {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = connect_packet(ProtocolVersion::V3_1_1, "raw");
    if let Some((user, pw)) = credentials {
        c.username = Some(mstr(user));
        c.password = Some(Bytes::copy_from_slice(pw.as_bytes()));
    }
    let mut buf = bytes::BytesMut::new();
    sagitta_proto::Packet::Connect(Box::new(c))
        .encode(ProtocolVersion::V3_1_1, &mut buf)
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(common::addr(broker))
        .await
        .unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(common::WAIT, stream.read_exact(&mut ack))
        .await
        .unwrap()
        .unwrap();
    ack
}

#[tokio::test]
async fn password_file_accepts_and_refuses() {
    let dir = temp_dir("broker");
    let path = dir.join("passwd");
    std::fs::write(
        &path,
        format!(
            "# test users\n{}\n\n{}\n",
            line("alice", "wonder"),
            line("bob", "builder")
        ),
    )
    .unwrap();
    let config = Config {
        password_file: Some(path.clone()),
        // Refusals answered at once here; the delay has its own test.
        failed_login_delay_ms: 0,
        ..Config::default().in_memory()
    };
    let broker = broker_with(config).await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let ok = connack(&broker, v, Some("alice"), Some("wonder")).await;
        assert_eq!(ok, ReasonCode::Success, "{v:?}");
        let ok = connack(&broker, v, Some("bob"), Some("builder")).await;
        assert_eq!(ok, ReasonCode::Success, "{v:?}");
        // 3.1.1: return code 4; 5.0: 0x86.
        for (user, pw) in [
            (Some("alice"), Some("builder")),
            (Some("mallory"), Some("wonder")),
            (Some("alice"), None),
        ] {
            let code = connack(&broker, v, user, pw).await;
            assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{v:?} {user:?}");
        }
        // 3.1.1: return code 5; 5.0: 0x87.
        let code = connack(&broker, v, None, None).await;
        assert_eq!(code, ReasonCode::NotAuthorized, "{v:?}");
    }
    // The bytes on the wire for 3.1.1: CONNACK return codes 4 and 5.
    assert_eq!(
        raw_v311(&broker, Some(("alice", "x"))).await,
        [0x20, 2, 0, 4]
    );
    assert_eq!(raw_v311(&broker, None).await, [0x20, 2, 0, 5]);
    assert_eq!(
        raw_v311(&broker, Some(("alice", "wonder"))).await,
        [0x20, 2, 0, 0]
    );
    broker.handle().shutdown();

    // allow_anonymous = true lets clients without a username in, still checks the others.
    let config = Config {
        password_file: Some(path),
        allow_anonymous: Some(true),
        failed_login_delay_ms: 0,
        ..Config::default().in_memory()
    };
    let broker = broker_with(config).await;
    let v = ProtocolVersion::V3_1_1;
    assert_eq!(connack(&broker, v, None, None).await, ReasonCode::Success);
    assert_eq!(
        connack(&broker, v, Some("alice"), Some("nope")).await,
        ReasonCode::BadUserNameOrPassword
    );
    broker.handle().shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_refused_login_waits_before_its_connack() {
    let dir = temp_dir("delay");
    let path = dir.join("passwd");
    std::fs::write(&path, format!("{}\n", line("alice", "wonder"))).unwrap();
    let config = Config {
        password_file: Some(path),
        failed_login_delay_ms: 600,
        ..Config::default().in_memory()
    };
    let broker = broker_with(config).await;
    for (user, pw, expected) in [
        (
            Some("alice"),
            Some("guess"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (None, None, ReasonCode::NotAuthorized),
    ] {
        let started = std::time::Instant::now();
        let code = connack(&broker, ProtocolVersion::V5, user, pw).await;
        assert_eq!(code, expected);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(600),
            "refused after {:?}",
            started.elapsed()
        );
    }
    // Meanwhile others are served: a good login while a bad one waits.
    let slow = connack(&broker, ProtocolVersion::V5, Some("alice"), Some("guess"));
    let good = connack(&broker, ProtocolVersion::V5, Some("alice"), Some("wonder"));
    let (slow, good) = tokio::join!(slow, good);
    assert_eq!(good, ReasonCode::Success);
    assert_eq!(slow, ReasonCode::BadUserNameOrPassword);
    broker.handle().shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_password_file_fails_start_with_file_and_line() {
    let dir = temp_dir("bad");
    let path = dir.join("passwd");
    std::fs::write(&path, format!("{}\nbob:not-a-hash\n", line("alice", "a"))).unwrap();
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        password_file: Some(path.clone()),
        ..Config::default().in_memory()
    };
    let e = match Broker::start(config).await {
        Err(e @ BrokerError::PasswordFile(_)) => e.to_string(),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started with a bad password file"),
    };
    assert!(
        e.contains(&path.display().to_string()) && e.contains("line 2"),
        "{e}"
    );
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        password_file: Some(dir.join("missing")),
        ..Config::default().in_memory()
    };
    assert!(Broker::start(config).await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mosquitto_passwd_line_verifies_here() {
    let dir = temp_dir("mosq-made");
    let path = dir.join("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&path)
        .args(["carol", "s3cret pass"])
        .stdin(Stdio::null())
        .status()
        .expect("Debian's `mosquitto_passwd` (package mosquitto) is needed");
    assert!(status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("carol:$7$"), "{text}");
    let file = PasswordFile::load(&path).unwrap();
    assert!(file.verify("carol", b"s3cret pass"));
    assert!(!file.verify("carol", b"s3cret"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto_pub(port: u16, user: &str, password: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "t",
            "-m",
            "x",
        ])
        .args(["-u", user, "-P", password, "-V", "mqttv311"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("`mosquitto_pub` (package mosquitto-clients) is needed")
        .success()
}

#[test]
fn our_line_works_in_mosquitto() {
    let dir = temp_dir("ours");
    let hash = PasswordHash::new(b"from sagitta");
    assert_eq!(hash.iterations(), 100_000);
    let pw = dir.join("passwd");
    std::fs::write(&pw, format!("dave:{hash}\n")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\npassword_file {}\nallow_anonymous false\n",
            pw.display()
        ),
    )
    .unwrap();
    // Mosquitto started as root drops to its own user, which must be able to read these.
    use std::os::unix::fs::PermissionsExt;
    for p in [&dir, &pw, &conf] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let _mosquitto = Running(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's `mosquitto` broker is needed"),
    );
    // Ready once the right password gets in (retried until the broker listens).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mosquitto_pub(port, "dave", "from sagitta") {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not accept our 100 000-iteration line"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!mosquitto_pub(port, "dave", "wrong"));
    assert!(!mosquitto_pub(port, "nobody", "from sagitta"));
    drop(_mosquitto);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_password_file_is_reloaded_on_request() {
    let dir = temp_dir("reload");
    let path = dir.join("passwd");
    std::fs::write(&path, format!("{}\n", line("alice", "old"))).unwrap();
    let broker = broker_with(Config {
        password_file: Some(path.clone()),
        failed_login_delay_ms: 0,
        ..Config::default().in_memory()
    })
    .await;
    let v = ProtocolVersion::V5;
    assert_eq!(
        connack(&broker, v, Some("alice"), Some("old")).await,
        ReasonCode::Success
    );
    std::fs::write(
        &path,
        format!("{}\n{}\n", line("alice", "new"), line("bob", "b")),
    )
    .unwrap();
    assert_eq!(broker.handle().reload_auth_files().unwrap(), 1);
    assert_eq!(
        connack(&broker, v, Some("alice"), Some("old")).await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        connack(&broker, v, Some("bob"), Some("b")).await,
        ReasonCode::Success
    );
    // A bad line: refused, the current users stay.
    std::fs::write(&path, "alice:not-a-hash\n").unwrap();
    let e = broker.handle().reload_auth_files().unwrap_err();
    assert!(e.to_string().contains("passwd"), "{e}");
    assert_eq!(
        connack(&broker, v, Some("alice"), Some("new")).await,
        ReasonCode::Success
    );
}
