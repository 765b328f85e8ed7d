//! MQTT 5.0 enhanced authentication with SCRAM-SHA-256 against a password file, driven by a
//! raw peer: the CONNECT / AUTH / CONNACK exchange, refusals (wrong password, unknown user,
//! method not offered, a packet out of turn, silence), re-authentication on a running
//! connection, the authenticated name in ACL checks, and a custom method plugged in with
//! `BrokerBuilder::auth_method`.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::{Peer, addr, broker_with, connect_packet, mstr, publish};
use sagitta_broker::{
    AuthExchange, AuthMethod, AuthStep, Broker, Config, ConnectInfo, PasswordHash,
};
use sagitta_proto::scram::{Credentials, ScramClient, ScramFinal};
use sagitta_proto::{Auth, Packet, ProtocolVersion::V5, QoS, ReasonCode};

const METHOD: &str = "SCRAM-SHA-256";

fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagitta-scram-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// alice and carol have SCRAM credentials, bob a PBKDF2-SHA512 hash; the ACL lets each user write and
/// read only under their own name.
async fn scram_broker() -> Broker {
    let passwords = format!(
        "alice:{}\nbob:{}\ncarol:{}\n",
        Credentials::derive(b"wonderland", b"alice-salt-16byt", 4096),
        PasswordHash::with_salt(b"builder", b"0123456789ab", 50),
        Credentials::derive(b"singer", b"carol-salt", 4096),
    );
    let config = Config {
        password_file: Some(temp_file("passwd", &passwords)),
        acl_file: Some(temp_file("acl", "pattern readwrite %u/#\n")),
        failed_login_delay_ms: 0,
        connect_timeout: 1,
        ..Config::default().in_memory()
    };
    broker_with(config).await
}

fn auth(reason: ReasonCode, method: &str, data: &[u8]) -> Packet {
    let mut a = Auth {
        reason,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(mstr(method));
    a.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    Packet::Auth(a)
}

fn auth_data(packet: &Packet, reason: ReasonCode) -> Vec<u8> {
    match packet {
        Packet::Auth(a) if a.reason == reason => {
            assert_eq!(a.properties.authentication_method, Some(mstr(METHOD)));
            a.properties.authentication_data.clone().unwrap().to_vec()
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

/// Sends CONNECT with client-first, answers the challenge, and returns the peer, the CONNACK
/// and what the client needs to check the server's signature.
async fn scram_connect(
    broker: &Broker,
    client_id: &str,
    connect_user: Option<&str>,
    user: &str,
    password: &[u8],
) -> (Peer, sagitta_proto::ConnAck, ScramFinal) {
    let (client, first) = ScramClient::start(user, password, "fyko+d2lbbFgONRv9qkxdawL");
    let mut c = connect_packet(V5, client_id);
    c.username = connect_user.map(mstr);
    c.properties.authentication_method = Some(mstr(METHOD));
    c.properties.authentication_data = Some(first.into());
    let mut peer = Peer::open(addr(broker), V5).await;
    peer.send(Packet::Connect(Box::new(c))).await;
    let server_first = auth_data(&peer.recv().await, ReasonCode::ContinueAuthentication);
    let (client, last) = client.respond(&server_first).unwrap();
    peer.send(auth(ReasonCode::ContinueAuthentication, METHOD, &last))
        .await;
    match peer.recv().await {
        Packet::ConnAck(ack) => (peer, ack, client),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn scram_login_proves_both_sides_and_sets_the_username() {
    let b = scram_broker().await;
    let (mut peer, ack, client) = scram_connect(&b, "a1", None, "alice", b"wonderland").await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(ack.properties.authentication_method, Some(mstr(METHOD)));
    let server_final = ack.properties.authentication_data.clone().unwrap();
    client
        .verify(&server_final)
        .expect("the broker knows alice's password");

    // The ACL sees the name SCRAM vouched for (the CONNECT had none).
    peer.subscribe("alice/#", QoS::AtLeastOnce).await;
    assert_eq!(
        peer.unsubscribe("bob/#", 2).await,
        [ReasonCode::NoSubscriptionExisted]
    );
    peer.publish("alice/x", "hi", QoS::AtLeastOnce, false).await;
    assert_eq!(peer.recv_publish().await.payload, "hi");
    assert_eq!(
        peer.publish_reason("bob/x", "no", QoS::AtLeastOnce, 9)
            .await,
        ReasonCode::NotAuthorized
    );

    // With a CONNECT User Name, it must be the same user.
    let (_p, ack, _) = scram_connect(&b, "a2", Some("alice"), "alice", b"wonderland").await;
    assert_eq!(ack.reason, ReasonCode::Success);
}

#[tokio::test]
async fn wrong_password_unknown_user_and_hash_only_user_are_refused_alike() {
    let b = scram_broker().await;
    for (user, password) in [
        ("alice", &b"Wonderland"[..]),
        ("mallory", b"x"),
        ("bob", b"builder"),
    ] {
        let (mut peer, ack, _) = scram_connect(&b, "c", None, user, password).await;
        assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword, "{user}");
        assert!(ack.properties.authentication_data.is_none());
        peer.expect_closed().await;
    }
    // Another user in the CONNECT than in SCRAM: refused at once.
    let (client, first) = ScramClient::start("alice", b"wonderland", "nonce");
    drop(client);
    let mut c = connect_packet(V5, "c");
    c.username = Some(mstr("bob"));
    c.properties.authentication_method = Some(mstr(METHOD));
    c.properties.authentication_data = Some(first.into());
    let (_p, ack) = Peer::connect_with(addr(&b), c).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
}

#[tokio::test]
async fn scram_credentials_also_serve_plain_password_logins() {
    let b = scram_broker().await;
    for (password, expect) in [
        ("wonderland", ReasonCode::Success),
        ("nope", ReasonCode::BadUserNameOrPassword),
    ] {
        let mut c = connect_packet(V5, "plain");
        c.username = Some(mstr("alice"));
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        let (_p, ack) = Peer::connect_with(addr(&b), c).await;
        assert_eq!(ack.reason, expect, "{password}");
        assert!(ack.properties.authentication_method.is_none());
    }
}

#[tokio::test]
async fn methods_not_offered_are_refused_with_0x8c() {
    // No password file: no SCRAM.
    let open = broker_with(Config::default().in_memory()).await;
    let b = scram_broker().await;
    for (broker, method) in [(&open, METHOD), (&b, "SCRAM-SHA-1"), (&b, "PLAIN")] {
        let mut c = connect_packet(V5, "m");
        c.properties.authentication_method = Some(mstr(method));
        let (_p, ack) = Peer::connect_with(addr(broker), c).await;
        assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod, "{method}");
    }
}

#[tokio::test]
async fn out_of_turn_packets_and_silence_end_the_exchange() {
    let b = scram_broker().await;
    let start = |client_id: &str| {
        let (_, first) = ScramClient::start("alice", b"wonderland", "nonce");
        let mut c = connect_packet(V5, client_id);
        c.properties.authentication_method = Some(mstr(METHOD));
        c.properties.authentication_data = Some(first.into());
        Packet::Connect(Box::new(c))
    };
    // A PUBLISH instead of AUTH: CONNACK 0x82.
    let mut peer = Peer::open(addr(&b), V5).await;
    peer.send(start("p1")).await;
    auth_data(&peer.recv().await, ReasonCode::ContinueAuthentication);
    peer.send(Packet::Publish(publish(
        "alice/x",
        "early",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    match peer.expect_closed().await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
    // AUTH with another method: CONNACK 0x82.
    let mut peer = Peer::open(addr(&b), V5).await;
    peer.send(start("p2")).await;
    auth_data(&peer.recv().await, ReasonCode::ContinueAuthentication);
    peer.send(auth(ReasonCode::ContinueAuthentication, "OTHER", b"x"))
        .await;
    match peer.expect_closed().await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
    // No answer: closed after the connect timeout (1 s here), without a CONNACK.
    let mut peer = Peer::open(addr(&b), V5).await;
    peer.send(start("p3")).await;
    auth_data(&peer.recv().await, ReasonCode::ContinueAuthentication);
    assert!(peer.expect_closed().await.is_empty());
}

/// Runs a re-authentication on a connected peer; returns the packet that ends it.
async fn reauthenticate(peer: &mut Peer, user: &str, password: &[u8]) -> (Packet, ScramFinal) {
    let (client, first) = ScramClient::start(user, password, "reauth-nonce");
    peer.send(auth(ReasonCode::ReAuthenticate, METHOD, &first))
        .await;
    let server_first = auth_data(&peer.recv().await, ReasonCode::ContinueAuthentication);
    let (client, last) = client.respond(&server_first).unwrap();
    peer.send(auth(ReasonCode::ContinueAuthentication, METHOD, &last))
        .await;
    (peer.recv().await, client)
}

#[tokio::test]
async fn reauthentication_keeps_the_connection_or_ends_it() {
    let b = scram_broker().await;
    let (mut peer, ack, _) = scram_connect(&b, "r1", None, "alice", b"wonderland").await;
    assert_eq!(ack.reason, ReasonCode::Success);
    peer.subscribe("alice/#", QoS::AtMostOnce).await;
    // Twice in a row, with the session going on in between.
    for _ in 0..2 {
        let (end, client) = reauthenticate(&mut peer, "alice", b"wonderland").await;
        client
            .verify(&auth_data(&end, ReasonCode::Success))
            .unwrap();
        peer.publish("alice/t", "still here", QoS::AtMostOnce, false)
            .await;
        assert_eq!(peer.recv_publish().await.payload, "still here");
    }
    // A wrong password ends the connection with DISCONNECT 0x87 (DISCONNECT has no 0x86).
    let (end, _) = reauthenticate(&mut peer, "alice", b"guess").await;
    match end {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    peer.expect_closed().await;

    // Re-authenticating as another user (who exists): 0x87 at once.
    let (mut peer, _, _) = scram_connect(&b, "r1", None, "alice", b"wonderland").await;
    let (_, first) = ScramClient::start("carol", b"singer", "n");
    peer.send(auth(ReasonCode::ReAuthenticate, METHOD, &first))
        .await;
    match peer.recv().await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_packets_that_break_the_rules_are_protocol_errors() {
    let b = scram_broker().await;
    let expect_disconnect = |packet: Packet, reason: ReasonCode| match packet {
        Packet::Disconnect(d) => assert_eq!(d.reason, reason),
        other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
    };
    // AUTH on a connection that did not use enhanced authentication.
    let mut c = connect_packet(V5, "plain");
    c.username = Some(mstr("alice"));
    c.password = Some("wonderland".into());
    let (mut peer, _) = Peer::connect_with(addr(&b), c).await;
    peer.send(auth(ReasonCode::ReAuthenticate, METHOD, b"n,,n=alice,r=x"))
        .await;
    expect_disconnect(peer.recv().await, ReasonCode::ProtocolError);
    // Another method than the CONNECT's [MQTT-4.12.1-1].
    let (mut peer, _, _) = scram_connect(&b, "r2", None, "alice", b"wonderland").await;
    peer.send(auth(ReasonCode::ReAuthenticate, "OTHER", b"x"))
        .await;
    expect_disconnect(peer.recv().await, ReasonCode::ProtocolError);
    // Continue without a re-authentication under way.
    let (mut peer, _, _) = scram_connect(&b, "r3", None, "alice", b"wonderland").await;
    peer.send(auth(ReasonCode::ContinueAuthentication, METHOD, b"x"))
        .await;
    expect_disconnect(peer.recv().await, ReasonCode::ProtocolError);
}

/// A method that accepts the data `open sesame` as the user `genie`, in two steps.
struct Riddle;

struct RiddleExchange {
    asked: bool,
}

impl AuthMethod for Riddle {
    fn name(&self) -> &str {
        "RIDDLE"
    }

    fn start(&self, _info: &ConnectInfo<'_>) -> Box<dyn AuthExchange> {
        Box::new(RiddleExchange { asked: false })
    }
}

impl AuthExchange for RiddleExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        if !std::mem::replace(&mut self.asked, true) {
            return AuthStep::Continue(b"say the words".to_vec());
        }
        if data == Some(b"open sesame") {
            AuthStep::Success {
                username: "genie".into(),
                data: None,
            }
        } else {
            AuthStep::Failure(ReasonCode::NotAuthorized)
        }
    }
}

#[tokio::test]
async fn a_custom_method_plugs_in() {
    let config = Config {
        failed_login_delay_ms: 0,
        acl_file: Some(temp_file("acl", "user genie\ntopic write lamp\n")),
        ..Config::default().in_memory()
    };
    let b = Broker::builder(config)
        .auth_method(Riddle)
        .start()
        .await
        .unwrap();
    for (words, expect) in [
        ("open sesame", ReasonCode::Success),
        ("abracadabra", ReasonCode::NotAuthorized),
    ] {
        let mut c = connect_packet(V5, "g");
        c.properties.authentication_method = Some(mstr("RIDDLE"));
        let mut peer = Peer::open(addr(&b), V5).await;
        peer.send(Packet::Connect(Box::new(c))).await;
        match peer.recv().await {
            Packet::Auth(a) => {
                assert_eq!(a.reason, ReasonCode::ContinueAuthentication);
                assert_eq!(
                    a.properties.authentication_data.as_deref(),
                    Some(&b"say the words"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        let mut a = Auth {
            reason: ReasonCode::ContinueAuthentication,
            ..Auth::default()
        };
        a.properties.authentication_method = Some(mstr("RIDDLE"));
        a.properties.authentication_data = Some(Bytes::copy_from_slice(words.as_bytes()));
        peer.send(Packet::Auth(a)).await;
        let Packet::ConnAck(ack) = peer.recv().await else {
            panic!("expected CONNACK");
        };
        assert_eq!(ack.reason, expect, "{words}");
        if expect == ReasonCode::Success {
            // The ACL knows the client as genie.
            assert_eq!(
                peer.publish_reason("lamp", "wish", QoS::AtLeastOnce, 1)
                    .await,
                ReasonCode::NoMatchingSubscribers
            );
        }
    }
}
