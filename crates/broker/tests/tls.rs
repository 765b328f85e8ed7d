//! Typed listeners, TLS and mutual TLS end to end, with certificates made by the tests
//! (rcgen; see `common_tls`).
//!
//! With a Rust TLS client (rustls) and raw MQTT packets: TCP and TLS listeners on one broker,
//! TLS 1.2 and 1.3, client certificates required / optional / missing / from another CA /
//! expired, a client that does not trust the server, per-listener anonymous access and
//! passwords (3.1.1 return codes 4 and 5, 5.0 reasons 0x86 and 0x87, nothing leaked by a
//! refused client), the certificate identity as username, certificate reload while
//! connections run, unusable files named at start, and a silent peer that cannot hold up
//! the TLS accept loop.
//!
//! With real peers: `mosquitto_pub` / `mosquitto_sub` with `--cafile`, `--cert/--key` and
//! `-u/-P` (paho-mqtt over TLS is in `interop_paho.rs`). These fail with installation advice
//! when the programs are missing, like the other interop tests.

// Test code: failed expectations abort the test with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod common_interop;
mod common_tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Peer, connect_packet, mstr, topic};
use common_interop::{Proc, args, require_program, run_ok};
use common_tls::{Pki, TlsPeer, client_config, tls_connect};
use sagitta_broker::{
    Authenticator, Broker, BrokerError, ClientCertificate, Config, ConnectInfo, ListenerConfig,
    ListenerKind, PasswordHash,
};
use sagitta_proto::{
    Connect, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter,
    Will,
};

const ANY: &str = "127.0.0.1:0";

fn any() -> SocketAddr {
    ANY.parse().unwrap()
}

/// A TLS listener on a free port with the PKI's server certificate.
fn tls_listener(pki: &Pki) -> ListenerConfig {
    ListenerConfig::tls(any(), pki.path("server.pem"), pki.path("server.key"))
}

/// A broker with only the given listeners (no `listen` address).
async fn start(listeners: Vec<ListenerConfig>) -> Broker {
    let config = Config {
        listeners,
        ..Config::default().in_memory()
    };
    Broker::start(config).await.expect("broker starts")
}

/// The address of the first listener of `kind`.
fn addr_of(broker: &Broker, kind: ListenerKind) -> SocketAddr {
    broker
        .listeners()
        .iter()
        .find(|l| l.kind == kind)
        .map(|l| l.local_addr)
        .expect("listener of that kind")
}

fn connect_as(
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Connect {
    let mut c = connect_packet(version, id);
    c.username = user.map(mstr);
    c.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// Connects over TLS and returns the CONNACK reason, or `Err` if TLS refused the client.
async fn tls_connack(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    connect: Connect,
) -> Result<ReasonCode, String> {
    TlsPeer::connect(addr, config, connect)
        .await
        .map(|(_, ack)| ack.reason)
}

/// The will of a client that must be refused: it must never be published.
fn leaky_will() -> Will {
    Will {
        topic: topic("leak"),
        payload: Bytes::from_static(b"will of a refused client"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    }
}

fn subscribe_packet(f: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: common::pid(1),
        filters: vec![(TopicFilter::new(f).unwrap(), SubscriptionOptions::new(qos))],
        properties: Default::default(),
    })
}

#[tokio::test]
async fn tcp_and_tls_listeners_carry_messages_both_ways() {
    let pki = Pki::new("both");
    let broker = start(vec![
        ListenerConfig::tcp(any()).allow_anonymous(true),
        tls_listener(&pki).allow_anonymous(true).name("secure"),
    ])
    .await;
    let info = broker.listeners();
    assert_eq!(info.len(), 2);
    assert_eq!(info[0].kind, ListenerKind::Tcp);
    assert_eq!(info[0].name, format!("tcp://{}", info[0].local_addr));
    assert_eq!(info[1].kind, ListenerKind::Tls);
    assert_eq!(info[1].name, "secure");
    assert!(!info[1].verifies_client_certificates);
    let tcp = addr_of(&broker, ListenerKind::Tcp);
    let tls = addr_of(&broker, ListenerKind::Tls);
    let trust = pki.client_config("ca.pem", None);
    // 200 KB needs many TLS records and socket writes.
    let big = "x".repeat(200_000);

    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (mut secure, ack) = TlsPeer::connect(tls, trust.clone(), connect_packet(v, "s"))
            .await
            .unwrap();
        assert_eq!(ack.reason, ReasonCode::Success);
        secure.send(subscribe_packet("t/#", QoS::AtLeastOnce)).await;
        assert!(matches!(secure.recv().await, Packet::SubAck(_)));
        let mut plain = Peer::connect(tcp, v, "p").await;
        plain.subscribe("t/#", QoS::AtLeastOnce).await;

        plain
            .publish("t/from-tcp", &big, QoS::AtLeastOnce, false)
            .await;
        match secure.recv().await {
            Packet::Publish(p) => {
                assert_eq!(&*p.topic, "t/from-tcp");
                assert_eq!(p.payload.len(), big.len());
                secure
                    .send(Packet::PubAck(sagitta_proto::PubResponse::new(
                        p.packet_id.unwrap(),
                    )))
                    .await;
            }
            other => panic!("expected PUBLISH over TLS, got {other:?}"),
        }
        let p = plain.recv_publish().await;
        plain.ack(&p).await;

        secure
            .send(Packet::Publish(common::publish(
                "t/from-tls",
                "hello",
                QoS::AtMostOnce,
                false,
                1,
            )))
            .await;
        let p = plain.recv_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), ("t/from-tls", &b"hello"[..]));
        plain.disconnect().await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    let pki = Pki::new("versions");
    let broker = start(vec![tls_listener(&pki).allow_anonymous(true)]).await;
    let addr = addr_of(&broker, ListenerKind::Tls);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&pki.path("ca.pem"), None, Some(version));
        let stream = tls_connect(addr, config).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn mtls_refuses_missing_foreign_and_expired_certificates() {
    let pki = Pki::new("mtls");
    let broker = start(vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .allow_anonymous(true),
    ])
    .await;
    assert!(broker.listeners()[0].verifies_client_certificates);
    let addr = addr_of(&broker, ListenerKind::Tls);
    let v = ProtocolVersion::V5;

    let (mut watcher, ack) = TlsPeer::connect(
        addr,
        pki.client_config("ca.pem", Some("client")),
        connect_packet(v, "watcher"),
    )
    .await
    .unwrap();
    assert_eq!(ack.reason, ReasonCode::Success);
    watcher.send(subscribe_packet("#", QoS::AtMostOnce)).await;
    assert!(matches!(watcher.recv().await, Packet::SubAck(_)));

    for (identity, what) in [
        (None, "no client certificate"),
        (Some("foreign"), "a certificate from another CA"),
        (Some("expired"), "an expired certificate"),
    ] {
        let mut connect = connect_packet(v, "intruder");
        connect.will = Some(leaky_will());
        let refused = tls_connack(addr, pki.client_config("ca.pem", identity), connect).await;
        assert!(refused.is_err(), "{what}: {refused:?}");
    }
    // Nothing got in: one client connected, no will or message published.
    common_interop::wait_connected(&broker, 1).await;
    watcher.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_when_a_crl_is_configured() {
    let pki = Pki::new("crl");
    let (cert, key) = pki.ca.client_with_serial("revoked-device", 4242);
    std::fs::write(pki.path("revoked.pem"), cert).unwrap();
    std::fs::write(pki.path("revoked.key"), key).unwrap();
    std::fs::write(pki.path("crl.pem"), pki.ca.crl(&[4242])).unwrap();
    let broker = start(vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .crl_file(pki.path("crl.pem"))
            .allow_anonymous(true),
    ])
    .await;
    let addr = addr_of(&broker, ListenerKind::Tls);
    let v = ProtocolVersion::V5;
    let ok = tls_connack(
        addr,
        pki.client_config("ca.pem", Some("client")),
        connect_packet(v, "good"),
    )
    .await
    .unwrap();
    assert_eq!(ok, ReasonCode::Success);
    let refused = tls_connack(
        addr,
        pki.client_config("ca.pem", Some("revoked")),
        connect_packet(v, "bad"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a revoked certificate got in: {refused:?}"
    );
    // Without the CRL the same certificate is fine: the CRL is what refused it.
    broker.shutdown().await;
    let broker = start(vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .allow_anonymous(true),
    ])
    .await;
    let addr = addr_of(&broker, ListenerKind::Tls);
    let ack = tls_connack(
        addr,
        pki.client_config("ca.pem", Some("revoked")),
        connect_packet(v, "bad"),
    )
    .await
    .unwrap();
    assert_eq!(ack, ReasonCode::Success);
    broker.shutdown().await;
}

#[tokio::test]
async fn optional_client_certificate_is_verified_when_presented() {
    let pki = Pki::new("optional");
    let broker = start(vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .require_client_cert(false)
            .allow_anonymous(true),
    ])
    .await;
    let addr = addr_of(&broker, ListenerKind::Tls);
    let v = ProtocolVersion::V3_1_1;
    for identity in [None, Some("client")] {
        let ack = tls_connack(
            addr,
            pki.client_config("ca.pem", identity),
            connect_packet(v, "c"),
        )
        .await;
        assert_eq!(ack, Ok(ReasonCode::Success), "{identity:?}");
    }
    for identity in ["foreign", "expired"] {
        let refused = tls_connack(
            addr,
            pki.client_config("ca.pem", Some(identity)),
            connect_packet(v, "c"),
        )
        .await;
        assert!(refused.is_err(), "{identity}: {refused:?}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_gives_up() {
    let pki = Pki::new("wrong-ca");
    let broker = start(vec![tls_listener(&pki).allow_anonymous(true)]).await;
    let addr = addr_of(&broker, ListenerKind::Tls);
    let e = tls_connect(addr, pki.client_config("other-ca.pem", None))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("issuer"), "{e}");
    broker.shutdown().await;
}

/// One broker, two listeners: anonymous TCP, and TLS with a password file and anonymous
/// access off (the default for `[[listener]]` tables).
#[tokio::test]
async fn anonymous_and_passwords_are_decided_per_listener() {
    let pki = Pki::new("per-listener");
    let passwd = pki.path("passwd");
    let hash = PasswordHash::with_salt(b"wonder", b"0123456789ab", 50);
    std::fs::write(&passwd, format!("alice:{hash}\n")).unwrap();
    let broker = start(vec![
        ListenerConfig::tcp(any()).allow_anonymous(true),
        tls_listener(&pki).password_file(&passwd),
    ])
    .await;
    assert!(broker.listeners()[0].allow_anonymous);
    assert!(!broker.listeners()[1].allow_anonymous);
    let tcp = addr_of(&broker, ListenerKind::Tcp);
    let tls = addr_of(&broker, ListenerKind::Tls);
    let trust = pki.client_config("ca.pem", None);

    let mut watcher = Peer::connect(tcp, ProtocolVersion::V5, "watcher").await;
    watcher.subscribe("#", QoS::AtMostOnce).await;

    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        // Anonymous: refused over TLS with 5 / 0x87, accepted over TCP.
        let mut connect = connect_as(v, "anon", None, None);
        connect.will = Some(leaky_will());
        let (mut refused, ack) = TlsPeer::connect(tls, trust.clone(), connect).await.unwrap();
        assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{v:?}");
        assert!(refused.try_recv().await.is_none(), "closed after CONNACK");
        let ok = Peer::connect(tcp, v, "anon-tcp").await;
        ok.disconnect().await;
        // Wrong password, unknown user, no password: 4 / 0x86.
        for (user, pw) in [
            (Some("alice"), Some("nope")),
            (Some("mallory"), Some("wonder")),
            (Some("alice"), None),
        ] {
            let ack = tls_connack(tls, trust.clone(), connect_as(v, "c", user, pw)).await;
            assert_eq!(ack, Ok(ReasonCode::BadUserNameOrPassword), "{v:?} {user:?}");
        }
        let ack = tls_connack(
            tls,
            trust.clone(),
            connect_as(v, "c", Some("alice"), Some("wonder")),
        )
        .await;
        assert_eq!(ack, Ok(ReasonCode::Success), "{v:?}");
    }
    // The 3.1.1 CONNACK bytes over TLS.
    for (user, pw, code) in [(None, None, 5u8), (Some("alice"), Some("x"), 4)] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tls_connect(tls, trust.clone()).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        Packet::Connect(Box::new(connect_as(
            ProtocolVersion::V3_1_1,
            "raw",
            user,
            pw,
        )))
        .encode(ProtocolVersion::V3_1_1, &mut buf)
        .unwrap();
        stream.write_all(&buf).await.unwrap();
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x20, 2, 0, code]);
    }
    // No refused client's will reached anyone.
    watcher.expect_silence().await;
    broker.shutdown().await;
}

/// Records what the authenticator is told.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    username: Option<String>,
    password: Option<Vec<u8>>,
    listener: String,
    identity: Option<String>,
}

impl Authenticator for Recorder {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        self.0.lock().unwrap().push(Seen {
            username: info.username.map(str::to_owned),
            password: info.password.map(<[u8]>::to_vec),
            listener: info.listener.name.clone(),
            identity: info
                .certificate
                .and_then(ClientCertificate::identity)
                .map(str::to_owned),
        });
        Ok(())
    }
}

#[tokio::test]
async fn certificate_identity_is_the_username_an_authenticator_sees() {
    let pki = Pki::new("identity-plugin");
    let recorder = Recorder::default();
    let config = Config {
        listeners: vec![
            tls_listener(&pki)
                .client_ca(pki.path("ca.pem"))
                .use_identity_as_username(true)
                .name("by-certificate"),
            tls_listener(&pki)
                .client_ca(pki.path("ca.pem"))
                .name("by-password"),
        ],
        ..Config::default().in_memory()
    };
    // No allow_anonymous / password file: the authenticator decides alone.
    let broker = Broker::builder(config)
        .authenticator(recorder.clone())
        .start()
        .await
        .unwrap();
    let client = pki.client_config("ca.pem", Some("client"));
    for addr in broker.local_addrs() {
        let connect = connect_as(ProtocolVersion::V5, "c", Some("mallory"), Some("pw"));
        let ack = tls_connack(*addr, client.clone(), connect).await;
        assert_eq!(ack, Ok(ReasonCode::Success));
    }
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Seen {
                username: Some("client1".into()),
                password: None,
                listener: "by-certificate".into(),
                identity: Some("client1".into()),
            },
            Seen {
                username: Some("mallory".into()),
                password: Some(b"pw".to_vec()),
                listener: "by-password".into(),
                identity: Some("client1".into()),
            },
        ]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn certificate_identity_needs_no_password() {
    let pki = Pki::new("identity");
    let passwd = pki.path("passwd");
    let hash = PasswordHash::with_salt(b"wonder", b"0123456789ab", 50);
    std::fs::write(&passwd, format!("alice:{hash}\n")).unwrap();
    let mut config = Config {
        // The global password file applies to tables without their own, except those that
        // identify clients by certificate.
        password_file: Some(passwd),
        ..Config::default().in_memory()
    };
    config.listeners = vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .require_client_cert(false)
            .use_identity_as_username(true),
        tls_listener(&pki).client_ca(pki.path("ca.pem")),
    ];
    let broker = Broker::start(config).await.unwrap();
    let identity = broker.local_addrs()[0];
    let passwords = broker.local_addrs()[1];
    let client = pki.client_config("ca.pem", Some("client"));
    let v = ProtocolVersion::V3_1_1;
    // The certificate is the credential (the CONNECT's own username is ignored).
    for (user, pw) in [(None, None), (Some("alice"), Some("wrong"))] {
        let ack = tls_connack(identity, client.clone(), connect_as(v, "c", user, pw)).await;
        assert_eq!(ack, Ok(ReasonCode::Success), "{user:?}");
    }
    // Without a certificate the client is anonymous: refused.
    let ack = tls_connack(
        identity,
        pki.client_config("ca.pem", None),
        connect_as(v, "c", Some("alice"), Some("wonder")),
    )
    .await;
    assert_eq!(ack, Ok(ReasonCode::NotAuthorized));
    // On the other listener the certificate alone is not enough: username and password.
    let ack = tls_connack(passwords, client.clone(), connect_as(v, "c", None, None)).await;
    assert_eq!(ack, Ok(ReasonCode::NotAuthorized));
    let ack = tls_connack(
        passwords,
        client.clone(),
        connect_as(v, "c", Some("alice"), Some("wonder")),
    )
    .await;
    assert_eq!(ack, Ok(ReasonCode::Success));
    broker.shutdown().await;
}

#[test]
fn certificate_identity_is_the_common_name_else_the_first_dns_name() {
    let ca = common_tls::Ca::new("ca");
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let (pem, _) = ca.client(Some("sensor-1"), &["a.example", "b.example"], false);
    let cert = ClientCertificate::from_der(&der(&pem));
    assert_eq!(cert.common_name.as_deref(), Some("sensor-1"));
    assert_eq!(cert.dns_names, ["a.example", "b.example"]);
    assert_eq!(cert.identity(), Some("sensor-1"));
    let (pem, _) = ca.client(None, &["device7.example"], false);
    let cert = ClientCertificate::from_der(&der(&pem));
    assert_eq!(cert.common_name, None);
    assert_eq!(cert.identity(), Some("device7.example"));
    let (pem, _) = ca.client(Some("ünïcode"), &[], false);
    assert_eq!(
        ClientCertificate::from_der(&der(&pem)).identity(),
        Some("ünïcode")
    );
    let (pem, _) = ca.client(None, &[], false);
    assert_eq!(ClientCertificate::from_der(&der(&pem)).identity(), None);
    // Truncated or garbage input gives no identity and no panic.
    let full = der(&ca.client(Some("x"), &["y.example"], false).0);
    for len in 0..full.len() {
        let _ = ClientCertificate::from_der(&full[..len]);
    }
}

#[tokio::test]
async fn reload_swaps_the_certificate_and_keeps_connections() {
    let pki = Pki::new("reload");
    let cert = pki.path("live.pem");
    let key = pki.path("live.key");
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let broker = start(vec![
        ListenerConfig::tls(any(), &cert, &key).allow_anonymous(true),
    ])
    .await;
    let addr = broker.local_addrs()[0];
    let v = ProtocolVersion::V5;
    let old_trust = pki.client_config("ca.pem", None);
    let new_trust = pki.client_config("other-ca.pem", None);

    let (mut early, _) = TlsPeer::connect(addr, old_trust.clone(), connect_packet(v, "early"))
        .await
        .unwrap();
    early.send(subscribe_packet("news", QoS::AtLeastOnce)).await;
    assert!(matches!(early.recv().await, Packet::SubAck(_)));
    assert!(tls_connect(addr, new_trust.clone()).await.is_err());

    // The new certificate (another CA) on disk, then the reload.
    std::fs::copy(pki.path("server2.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server2.key"), &key).unwrap();
    assert_eq!(broker.handle().reload_tls().unwrap(), 1);
    let e = tls_connect(addr, old_trust.clone()).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("issuer"), "{e}");
    let (mut late, ack) = TlsPeer::connect(addr, new_trust.clone(), connect_packet(v, "late"))
        .await
        .unwrap();
    assert_eq!(ack.reason, ReasonCode::Success);
    // The connection made before the reload still works.
    late.send(Packet::Publish(common::publish(
        "news",
        "after reload",
        QoS::AtMostOnce,
        false,
        1,
    )))
    .await;
    match early.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"after reload"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // A failed reload changes nothing and names the file.
    std::fs::write(&key, "not a key").unwrap();
    let e = broker.handle().reload_tls().unwrap_err().to_string();
    assert!(e.contains(&key.display().to_string()), "{e}");
    let ack = tls_connack(addr, new_trust, connect_packet(v, "still")).await;
    assert_eq!(ack, Ok(ReasonCode::Success));
    broker.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_and_name_the_file() {
    let pki = Pki::new("bad-files");
    std::fs::write(pki.path("garbage.pem"), "-----BEGIN CERTIFICATE-----\n!!\n").unwrap();
    std::fs::write(pki.path("empty.pem"), "# nothing here\n").unwrap();
    let cases: Vec<(ListenerConfig, Vec<String>)> = vec![
        (
            ListenerConfig::tls(any(), pki.path("missing.pem"), pki.path("server.key")),
            vec![pki.arg("missing.pem")],
        ),
        (
            ListenerConfig::tls(any(), pki.path("garbage.pem"), pki.path("server.key")),
            vec![pki.arg("garbage.pem")],
        ),
        (
            ListenerConfig::tls(any(), pki.path("empty.pem"), pki.path("server.key")),
            vec![pki.arg("empty.pem")],
        ),
        (
            ListenerConfig::tls(any(), pki.path("server.pem"), pki.path("server.pem")),
            vec![pki.arg("server.pem"), "private key".into()],
        ),
        // A key that is not the certificate's.
        (
            ListenerConfig::tls(any(), pki.path("server.pem"), pki.path("client.key")),
            vec![
                pki.arg("server.pem"),
                pki.arg("client.key"),
                "does not belong".into(),
            ],
        ),
        (
            tls_listener(&pki).client_ca(pki.path("empty.pem")),
            vec![pki.arg("empty.pem"), "client CA".into()],
        ),
    ];
    for (listener, expected) in cases {
        let config = Config {
            listeners: vec![listener.allow_anonymous(true)],
            ..Config::default().in_memory()
        };
        let checked = Broker::check_config(&config).unwrap_err().to_string();
        let e = match Broker::start(config).await {
            Err(e @ BrokerError::Tls(_)) => e.to_string(),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("started with {expected:?}"),
        };
        assert_eq!(checked, e);
        for part in expected {
            assert!(e.contains(&part), "{e} should name {part}");
        }
    }
}

#[tokio::test]
async fn a_silent_peer_does_not_hold_up_tls_accepts() {
    let pki = Pki::new("silent");
    let mut config = Config {
        connect_timeout: 1,
        ..Config::default().in_memory()
    };
    config.listeners = vec![tls_listener(&pki).allow_anonymous(true)];
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Another client is served at once.
    let ack = tls_connack(
        addr,
        pki.client_config("ca.pem", None),
        connect_packet(ProtocolVersion::V5, "c"),
    )
    .await;
    assert_eq!(ack, Ok(ReasonCode::Success));
    // The silent one is dropped after the connect timeout.
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within the connect timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub

fn require_mosquitto() {
    let advice = "Install Debian's `mosquitto-clients` package.";
    require_program("mosquitto_pub", advice);
    require_program("mosquitto_sub", advice);
}

/// Connection arguments: host, port, protocol version, then `extra` (TLS and credentials).
fn mosq_args(addr: SocketAddr, version: &str, extra: &[String]) -> Vec<String> {
    let mut a = args([
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-V",
        version,
    ]);
    a.extend(extra.iter().cloned());
    a
}

fn tls_args(pki: &Pki, ca: &str, identity: Option<&str>) -> Vec<String> {
    let mut a = args(["--cafile", &pki.arg(ca)]);
    if let Some(name) = identity {
        a.extend(args([
            "--cert",
            &pki.arg(&format!("{name}.pem")),
            "--key",
            &pki.arg(&format!("{name}.key")),
        ]));
    }
    a
}

/// Runs `mosquitto_pub` to completion: (success, stderr).
async fn mosquitto_pub(addr: SocketAddr, version: &str, extra: &[String]) -> (bool, String) {
    let mut a = mosq_args(addr, version, extra);
    a.extend(args(["-t", "tls/test", "-m", "refused?", "-q", "1"]));
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("mosquitto_pub")
            .args(&a)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("mosquitto_pub finishes")
    .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `mosquitto_sub` on `tls/#` that is known to receive: pings are published with
/// `publisher` arguments until one arrives.
async fn ready_subscriber(
    addr: SocketAddr,
    version: &str,
    sub_extra: &[String],
    pub_extra: &[String],
) -> Proc {
    let mut a = mosq_args(addr, version, sub_extra);
    a.extend(args(["-t", "tls/#", "-v", "-q", "1"]));
    let mut sub = Proc::spawn("mosquitto_sub", &a);
    let deadline = tokio::time::Instant::now() + common_interop::WAIT;
    loop {
        let mut p = mosq_args(addr, version, pub_extra);
        p.extend(args(["-t", "tls/ping", "-m", "ping"]));
        run_ok("mosquitto_pub", &p, common_interop::WAIT).await;
        if let Some(line) = sub.next_line_raw(Duration::from_millis(200)).await {
            assert_eq!(line, "tls/ping ping");
            return sub;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub never received a ping; stderr: {}",
            sub.stderr()
        );
    }
}

async fn mosquitto_tls_pubsub(version: &str) {
    require_mosquitto();
    let pki = Pki::new("mosq-tls");
    let broker = start(vec![tls_listener(&pki).allow_anonymous(true)]).await;
    let addr = broker.local_addrs()[0];
    let trust = tls_args(&pki, "ca.pem", None);
    let mut sub = ready_subscriber(addr, version, &trust, &trust).await;
    let mut p = mosq_args(addr, version, &trust);
    p.extend(args(["-t", "tls/data", "-m", "over tls", "-q", "1"]));
    run_ok("mosquitto_pub", &p, common_interop::WAIT).await;
    assert_eq!(sub.expect_line("the message").await, "tls/data over tls");
    // The wrong CA on the client side: mosquitto_pub refuses the server.
    let (ok, stderr) = mosquitto_pub(addr, version, &tls_args(&pki, "other-ca.pem", None)).await;
    assert!(!ok, "a client trusting another CA connected: {stderr}");
    sub.kill().await;
    broker.shutdown().await;
}

async fn mosquitto_mtls(version: &str) {
    require_mosquitto();
    let pki = Pki::new("mosq-mtls");
    let broker = start(vec![
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .allow_anonymous(true),
    ])
    .await;
    let addr = broker.local_addrs()[0];
    let good = tls_args(&pki, "ca.pem", Some("client"));
    let mut sub = ready_subscriber(addr, version, &good, &good).await;
    for (identity, what) in [
        (None, "no certificate"),
        (Some("foreign"), "a certificate from another CA"),
        (Some("expired"), "an expired certificate"),
    ] {
        let (ok, stderr) = mosquitto_pub(addr, version, &tls_args(&pki, "ca.pem", identity)).await;
        assert!(!ok, "connected with {what}: {stderr}");
    }
    // Nothing the refused clients sent arrived.
    let mut p = mosq_args(addr, version, &good);
    p.extend(args([
        "-t",
        "tls/data",
        "-m",
        "with certificate",
        "-q",
        "1",
    ]));
    run_ok("mosquitto_pub", &p, common_interop::WAIT).await;
    assert_eq!(
        sub.expect_line("the message").await,
        "tls/data with certificate"
    );
    sub.kill().await;
    broker.shutdown().await;
}

async fn mosquitto_credentials(version: &str) {
    require_mosquitto();
    let pki = Pki::new("mosq-pw");
    let passwd = pki.path("passwd");
    let hash = PasswordHash::with_salt(b"wonder", b"0123456789ab", 50);
    std::fs::write(&passwd, format!("alice:{hash}\n")).unwrap();
    let broker = start(vec![
        tls_listener(&pki).password_file(&passwd),
        tls_listener(&pki)
            .client_ca(pki.path("ca.pem"))
            .use_identity_as_username(true),
    ])
    .await;
    let passwords = broker.local_addrs()[0];
    let identity = broker.local_addrs()[1];
    let trust = tls_args(&pki, "ca.pem", None);
    let mut alice = trust.clone();
    alice.extend(args(["-u", "alice", "-P", "wonder"]));
    let mut sub = ready_subscriber(passwords, version, &alice, &alice).await;

    let cases: [(&[&str], &str); 3] = [
        (&["-u", "alice", "-P", "wrong"], "bad user name or password"),
        (
            &["-u", "nobody", "-P", "wonder"],
            "bad user name or password",
        ),
        (&[], "not authori"),
    ];
    for (credentials, expected) in cases {
        let mut a = trust.clone();
        a.extend(args(credentials.iter()));
        let (ok, stderr) = mosquitto_pub(passwords, version, &a).await;
        assert!(!ok, "{credentials:?} connected");
        assert!(
            stderr.to_lowercase().contains(expected),
            "{credentials:?}: expected {expected:?} in {stderr:?}"
        );
    }
    // The certificate identity listener: no username or password needed.
    let mut p = mosq_args(identity, version, &tls_args(&pki, "ca.pem", Some("client")));
    p.extend(args(["-t", "tls/data", "-m", "by certificate", "-q", "1"]));
    run_ok("mosquitto_pub", &p, common_interop::WAIT).await;
    assert_eq!(
        sub.expect_line("the message").await,
        "tls/data by certificate"
    );
    sub.kill().await;
    broker.shutdown().await;
}

/// Generates one test per listed version running `$name("mqttv311" | "mqttv5")`.
macro_rules! mosquitto_tests {
    ($($name:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v311() {
                super::$name("mqttv311").await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v5() {
                super::$name("mqttv5").await;
            }
        }
    )*};
}

mosquitto_tests! {
    mosquitto_tls_pubsub;
    mosquitto_mtls;
    mosquitto_credentials;
}
