//! `sagitta passwd` as users run it: create a file in batch mode, use it with `sagitta
//! broker` (`password_file` in the config) and `sagitta pub -u -P`, add a user from stdin,
//! delete one with `-D`, the file's mode (0600), and the exit codes (0, 1, 2).
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Running;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sagitta");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagitta-passwd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sagitta(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn passwd(args: &[&str]) -> Output {
    let mut all = vec!["passwd"];
    all.extend_from_slice(args);
    sagitta(&all)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn publish(port: u16, user: &str, pw: &str) -> Output {
    sagitta(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "t",
        "-m",
        "x",
        "-u",
        user,
        "-P",
        pw,
    ])
}

#[test]
fn passwd_file_works_with_the_broker() {
    let dir = temp_dir("broker");
    let file = dir.join("passwd");
    let out = passwd(&["-c", "-b", s(&file), "alice", "wonder land"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$7$100000$"), "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second user from stdin (not a terminal: one line).
    let mut child = Command::new(BIN)
        .args(["passwd", s(&file), "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"builder\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    // A third with SCRAM-SHA-256 credentials.
    let out = passwd(&["-b", "--scram", s(&file), "carol", "s3cret"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\ncarol:SCRAM-SHA-256$4096:"), "{text}");

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sagitta.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:{port}\"]\npassword_file = \"{}\"\n",
            s(&file)
        ),
    )
    .unwrap();
    let _broker = Running::new(
        Command::new(BIN)
            .args(["broker", "--memory", "--config", s(&config)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = publish(port, "alice", "wonder land");
    assert!(out.status.success(), "{out:?}");
    let out = publish(port, "bob", "builder");
    assert!(out.status.success(), "{out:?}");
    let out = publish(port, "alice", "wrong");
    assert!(!out.status.success(), "{out:?}");
    // SCRAM credentials serve plain-password logins too.
    let out = publish(port, "carol", "s3cret");
    assert!(out.status.success(), "{out:?}");
    let out = publish(port, "carol", "s3cre");
    assert!(!out.status.success(), "{out:?}");
    // And SCRAM-SHA-256 logins (MQTT 5 enhanced authentication) with `--scram`.
    let scram = |pw: &str| {
        sagitta(&[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "t",
            "-m",
            "x",
            "-u",
            "carol",
            "-P",
            pw,
            "--scram",
        ])
    };
    let out = scram("s3cret");
    assert!(out.status.success(), "{out:?}");
    let out = scram("s3cre");
    assert!(!out.status.success(), "{out:?}");

    // -D removes bob; alice stays.
    let out = passwd(&["-D", s(&file), "bob"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:") && !text.contains("bob:"), "{text}");
    let out = passwd(&["-D", s(&file), "bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("sagitta passwd: "));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn errors_and_exit_codes() {
    let dir = temp_dir("errors");
    let file = dir.join("passwd");
    // The file must exist without -c.
    let out = passwd(&["-b", s(&file), "alice", "pw"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("sagitta passwd: ") && err.contains("-c"),
        "{err}"
    );
    // Bad arguments.
    for args in [
        vec!["-b", s(&file), "alice"],
        vec![s(&file), "alice", "pw"],
        vec!["-c", "-b", s(&file), "al:ice", "pw"],
        vec!["-c", "-D", s(&file), "alice"],
        vec![s(&file)],
    ] {
        let out = passwd(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // An empty password from stdin is refused.
    let out = passwd(&["-c", s(&file), "alice"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!file.exists());
    let _ = std::fs::remove_dir_all(dir);
}
