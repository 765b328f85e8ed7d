//! Access control (`acl_file`): publish, subscribe and receive rules per anonymous client,
//! user, client id and pattern; what a refused client is told (5.0: PUBACK/PUBREC/SUBACK/CONNACK
//! 0x87; 3.1.1: a positive PUBACK and nothing delivered [MQTT-3.3.5-2], SUBACK 0x80, CONNACK 5);
//! retained messages and wills are checked too.

// Test helpers: a failed expectation aborts the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use sagitta_broker::{Broker, BrokerError, Config};
use sagitta_proto::{
    Connect, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions, Will, WillProperties,
};

use ProtocolVersion::{V3_1_1, V5};

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/private/#
topic read #
topic deny secret/#

user bob
topic write public/#
topic write secret/#

client gateway-1
topic write telemetry/#

pattern readwrite devices/%c/#
";

fn acl_file(text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "sagitta-acl-{}-{}.acl",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn broker_with_acl() -> Broker {
    broker_with(Config {
        acl_file: Some(acl_file(ACL)),
        ..Config::default().in_memory()
    })
    .await
}

fn login(version: ProtocolVersion, client_id: &str, user: &str) -> Connect {
    let mut c = connect_packet(version, client_id);
    c.username = Some(mstr(user));
    c
}

async fn connect_as(b: &Broker, version: ProtocolVersion, id: &str, user: &str) -> Peer {
    let (peer, ack) = Peer::connect_with(addr(b), login(version, id, user)).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    peer
}

#[tokio::test]
async fn refused_publishes_get_0x87_in_5_0_and_are_dropped_silently_in_3_1_1() {
    let b = broker_with_acl().await;
    let mut alice = connect_as(&b, V5, "a", "alice").await;
    alice.subscribe("#", QoS::AtLeastOnce).await;
    // 5.0: bob may not publish to alice/x.
    let mut bob = connect_as(&b, V5, "b5", "bob").await;
    assert_eq!(
        bob.publish_reason("alice/x", "no", QoS::AtLeastOnce, 1)
            .await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        bob.publish_reason("alice/x", "no", QoS::ExactlyOnce, 2)
            .await,
        ReasonCode::NotAuthorized
    );
    // 3.1.1: acknowledged, not delivered.
    let mut bob3 = connect_as(&b, V3_1_1, "b3", "bob").await;
    bob3.publish("alice/y", "no", QoS::AtLeastOnce, false).await;
    // What bob may publish arrives.
    bob3.publish("public/ok", "yes", QoS::AtLeastOnce, false)
        .await;
    let m = alice.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("public/ok", &b"yes"[..])
    );
    alice.ack(&m).await;
    alice.expect_silence().await;
}

#[tokio::test]
async fn refused_subscriptions_get_0x87_in_5_0_and_0x80_in_3_1_1() {
    let b = broker_with_acl().await;
    for (version, code) in [(V5, 0x87u8), (V3_1_1, 0x80)] {
        let mut anon = Peer::connect(addr(&b), version, "anon").await;
        let reasons = anon
            .subscribe_opts("alice/#", SubscriptionOptions::new(QoS::AtLeastOnce), 1)
            .await;
        let encoded = match version {
            V5 => reasons[0] as u8,
            _ => reasons[0].to_v3_suback(),
        };
        assert_eq!(encoded, code, "{version:?}");
        anon.subscribe("public/+", QoS::AtLeastOnce).await;
        // A filter wider than the grant is refused too.
        let reasons = anon
            .subscribe_opts("#", SubscriptionOptions::new(QoS::AtMostOnce), 2)
            .await;
        assert!(reasons[0].is_error());
        anon.disconnect().await;
    }
}

#[tokio::test]
async fn messages_on_denied_topics_are_not_delivered_live_or_retained() {
    let b = broker_with_acl().await;
    let mut bob = connect_as(&b, V5, "b", "bob").await;
    bob.publish("secret/plan", "retained secret", QoS::AtLeastOnce, true)
        .await;
    bob.publish("public/news", "retained news", QoS::AtLeastOnce, true)
        .await;
    // alice reads `#` but not `secret/#`: the subscription is granted, the secret is not
    // delivered, retained or live.
    let mut alice = connect_as(&b, V5, "a", "alice").await;
    alice.subscribe("#", QoS::AtLeastOnce).await;
    let m = alice.recv_publish().await;
    assert_eq!(m.topic.as_str(), "public/news");
    alice.ack(&m).await;
    bob.publish("secret/plan", "live secret", QoS::AtLeastOnce, false)
        .await;
    bob.publish("public/news", "live news", QoS::AtLeastOnce, false)
        .await;
    let m = alice.recv_publish().await;
    assert_eq!(&m.payload[..], b"live news");
    alice.ack(&m).await;
    alice.expect_silence().await;
}

#[tokio::test]
async fn client_id_rules_and_patterns_apply_to_whoever_connects() {
    let b = broker_with_acl().await;
    let mut watcher = connect_as(&b, V5, "w", "alice").await;
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    // gateway-1 may write telemetry/#, whatever its username; another client id may not.
    let mut gw = Peer::connect(addr(&b), V5, "gateway-1").await;
    gw.publish("telemetry/t", "1", QoS::AtLeastOnce, false)
        .await;
    let mut other = Peer::connect(addr(&b), V5, "gateway-2").await;
    assert_eq!(
        other
            .publish_reason("telemetry/t", "2", QoS::AtLeastOnce, 1)
            .await,
        ReasonCode::NotAuthorized
    );
    // The pattern: each client owns devices/<its client id>/#.
    other
        .publish("devices/gateway-2/state", "on", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        other
            .publish_reason("devices/gateway-1/state", "x", QoS::AtLeastOnce, 2)
            .await,
        ReasonCode::NotAuthorized
    );
    for want in ["telemetry/t", "devices/gateway-2/state"] {
        let m = watcher.recv_publish().await;
        assert_eq!(m.topic.as_str(), want);
        watcher.ack(&m).await;
    }
    watcher.expect_silence().await;
}

#[tokio::test]
async fn a_will_on_a_denied_topic_refuses_the_connection() {
    let b = broker_with_acl().await;
    for (version, code) in [(V5, 0x87u8), (V3_1_1, 5)] {
        let mut c = login(version, "dying", "bob");
        c.will = Some(Will {
            topic: topic("alice/last-words"),
            payload: "bye".to_owned().into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let (_peer, ack) = Peer::connect_with(addr(&b), c.clone()).await;
        let got = match version {
            V5 => ack.reason as u8,
            _ => ack.reason.to_v3_connack(),
        };
        assert_eq!(got, code, "{version:?}");
        c.will.as_mut().unwrap().topic = topic("public/last-words");
        let (_peer, ack) = Peer::connect_with(addr(&b), c).await;
        assert_eq!(ack.reason, ReasonCode::Success);
    }
}

#[tokio::test]
async fn a_bad_acl_file_stops_the_start_naming_file_and_line() {
    let path = acl_file("user alice\ntopic sometimes alice/#/x\n");
    let config = Config {
        acl_file: Some(path.clone()),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default().in_memory()
    };
    match Broker::start(config).await {
        Err(e @ BrokerError::Acl(_)) => {
            let text = e.to_string();
            assert!(text.contains(&format!("{}:2", path.display())), "{text}");
        }
        Err(other) => panic!("expected an ACL error, got {other}"),
        Ok(_) => panic!("a bad ACL file must stop the start"),
    }
}

/// Only lets clients publish to topics that start with their client id.
struct OwnTopicsOnly;

impl sagitta_broker::Authorizer for OwnTopicsOnly {
    fn authorize(
        &self,
        action: sagitta_broker::Action,
        topic: &str,
        client_id: &str,
        _username: Option<&str>,
    ) -> bool {
        action != sagitta_broker::Action::Publish || topic.starts_with(client_id)
    }
}

#[tokio::test]
async fn a_custom_authorizer_replaces_the_acl_file() {
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default().in_memory()
    };
    let b = Broker::builder(config)
        .authorizer(OwnTopicsOnly)
        .start()
        .await
        .unwrap();
    let mut c = Peer::connect(addr(&b), V5, "me").await;
    c.publish("me/x", "mine", QoS::AtLeastOnce, false).await;
    assert_eq!(
        c.publish_reason("you/x", "yours", QoS::AtLeastOnce, 2)
            .await,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn the_acl_file_is_reloaded_on_request_all_or_nothing() {
    let path = acl_file("user u\ntopic write first/#\n");
    let b = broker_with(Config {
        acl_file: Some(path.clone()),
        ..Config::default().in_memory()
    })
    .await;
    let mut c = connect_as(&b, V5, "c", "u").await;
    assert!(
        c.publish_reason("first/x", "1", QoS::AtLeastOnce, 1)
            .await
            .is_success()
    );
    assert_eq!(
        c.publish_reason("second/x", "1", QoS::AtLeastOnce, 2).await,
        ReasonCode::NotAuthorized
    );
    std::fs::write(&path, "user u\ntopic write second/#\n").unwrap();
    assert_eq!(b.handle().reload_auth_files().unwrap(), 1);
    // The connected client's next publish is checked against the new file.
    assert!(
        c.publish_reason("second/x", "1", QoS::AtLeastOnce, 3)
            .await
            .is_success()
    );
    assert_eq!(
        c.publish_reason("first/x", "1", QoS::AtLeastOnce, 4).await,
        ReasonCode::NotAuthorized
    );
    // A bad file is refused and the current rules stay.
    std::fs::write(&path, "user u\ntopic write bad/#/x\n").unwrap();
    assert!(b.handle().reload_auth_files().is_err());
    assert!(
        c.publish_reason("second/y", "1", QoS::AtLeastOnce, 5)
            .await
            .is_success()
    );
}
