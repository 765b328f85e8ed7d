//! The client against a scripted broker: exact packets on the wire for what a real broker
//! cannot be made to do on cue (a dropped connection with messages in flight, a small
//! Receive Maximum, topic aliases, malformed packets, a DISCONNECT with a reason string,
//! silent pings).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use common::{MockBroker, MockConn, connack, fast_reconnect, wait_connected, within};
use sagitta_client::proto::{
    ConnAck, DecodeError, MqttStr, Packet, PacketId, PubResponse, Publish, SubAck, TopicName,
};
use sagitta_client::{
    Client, ClientError, ConnectError, Disconnect, PendingPublish, ProtocolError, ProtocolVersion,
    QoS, ReasonCode, ReconnectPolicy, State,
};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).unwrap()
}

fn ack(n: u16) -> PubResponse {
    PubResponse::new(pid(n))
}

async fn expect_publish(conn: &mut MockConn) -> Publish {
    match conn.recv().await {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

async fn start(client: &Client, topic: &str, payload: &str, qos: QoS) -> PendingPublish {
    client
        .start_publish(topic, payload.to_owned(), qos)
        .await
        .unwrap()
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_in_order_with_dup() {
    for v in [V311, V5] {
        let broker = MockBroker::start().await;
        let connecting = tokio::spawn(
            Client::builder(broker.addr())
                .protocol(v)
                .client_id("resender")
                .clean_start(false)
                .session_expiry(Duration::from_secs(60))
                .reconnect(fast_reconnect())
                .connect(),
        );
        let (mut conn, connect) = broker.accept_with(v, connack(false)).await;
        assert!(!connect.clean_start);
        let client = connecting.await.unwrap().unwrap();

        let a = start(&client, "t/a", "a", QoS::AtLeastOnce).await;
        let b = start(&client, "t/b", "b", QoS::ExactlyOnce).await;
        let c = start(&client, "t/c", "c", QoS::AtLeastOnce).await;
        let mut ids = Vec::new();
        for want in ["t/a", "t/b", "t/c"] {
            let p = expect_publish(&mut conn).await;
            assert_eq!((p.topic.as_str(), p.dup), (want, false));
            ids.push(p.packet_id.unwrap());
        }
        // b gets as far as PUBREC; then the connection breaks.
        conn.send(&Packet::PubRec(PubResponse::new(ids[1]))).await;
        assert_eq!(conn.recv().await, Packet::PubRel(PubResponse::new(ids[1])));
        drop(conn);

        let (mut conn, connect) = broker.accept_with(v, connack(true)).await;
        assert!(!connect.clean_start, "a reconnect resumes the session");
        assert_eq!(connect.client_id, "resender");
        // Same ids, same order, DUP set; b continues with PUBREL [MQTT-4.4.0-1].
        let p = expect_publish(&mut conn).await;
        assert_eq!(
            (p.topic.as_str(), p.packet_id, p.dup, p.qos),
            ("t/a", Some(ids[0]), true, QoS::AtLeastOnce)
        );
        assert_eq!(conn.recv().await, Packet::PubRel(PubResponse::new(ids[1])));
        let p = expect_publish(&mut conn).await;
        assert_eq!(
            (p.topic.as_str(), p.packet_id, p.dup),
            ("t/c", Some(ids[2]), true)
        );

        conn.send(&Packet::PubAck(PubResponse::new(ids[0]))).await;
        conn.send(&Packet::PubComp(PubResponse::new(ids[1]))).await;
        conn.send(&Packet::PubAck(PubResponse::new(ids[2]))).await;
        for pending in [a, b, c] {
            within("completion", pending).await.unwrap();
        }
        assert_eq!(client.status().connections, 2);
        assert!(client.status().session_present);
    }
}

#[tokio::test]
async fn lost_session_restores_subscriptions_and_publishes_again() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .reconnect(fast_reconnect())
            .connect(),
    );
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();

    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe_recv("s/#", QoS::AtLeastOnce).await })
    };
    let Packet::Subscribe(sub) = conn.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    conn.send(&Packet::SubAck(SubAck {
        packet_id: sub.packet_id,
        reasons: vec![ReasonCode::GrantedQoS1],
        properties: Default::default(),
    }))
    .await;
    assert_eq!(subscribing.await.unwrap().unwrap(), QoS::AtLeastOnce);

    let one = start(&client, "p/1", "one", QoS::AtLeastOnce).await;
    let first = expect_publish(&mut conn).await;
    drop(conn);

    // The broker lost the session: the client subscribes again and publishes again.
    let (mut conn, connect) = broker.accept_with(V5, connack(false)).await;
    assert!(
        connect.clean_start,
        "no session expiry: each connection starts clean"
    );
    let Packet::Subscribe(again) = conn.recv().await else {
        panic!("expected the subscription to be restored")
    };
    assert_eq!(again.filters, sub.filters);
    let p = expect_publish(&mut conn).await;
    assert_eq!((p.topic.as_str(), p.dup), ("p/1", false));
    assert_eq!(p.payload, first.payload);
    conn.send(&Packet::SubAck(SubAck {
        packet_id: again.packet_id,
        reasons: vec![ReasonCode::GrantedQoS1],
        properties: Default::default(),
    }))
    .await;
    conn.send(&Packet::PubAck(PubResponse::new(p.packet_id.unwrap())))
        .await;
    within("completion", one).await.unwrap();

    // Messages for the restored subscription reach recv().
    let mut incoming = Publish::new(TopicName::new("s/x").unwrap(), "hi");
    incoming.qos = QoS::AtLeastOnce;
    incoming.packet_id = Some(pid(9));
    conn.send(&Packet::Publish(incoming)).await;
    let msg = within("message", client.recv()).await.unwrap();
    assert_eq!(msg.topic, "s/x");
    assert_eq!(conn.recv().await, Packet::PubAck(ack(9)));
}

/// A QoS 2 message the broker PUBREC'd, then the broker lost the session: it is published
/// again as new (a broker may deliver QoS 2 only on PUBREL, so it may have lost it), and
/// completes with the new flow.
#[tokio::test]
async fn lost_session_publishes_a_pubrecd_qos2_message_again() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .client_id("q2")
            .clean_start(false)
            .session_expiry(Duration::from_secs(60))
            .reconnect(fast_reconnect())
            .connect(),
    );
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    let pending = start(&client, "t/q2", "two", QoS::ExactlyOnce).await;
    let first = expect_publish(&mut conn).await;
    let id = first.packet_id.unwrap();
    conn.send(&Packet::PubRec(PubResponse::new(id))).await;
    assert_eq!(conn.recv().await, Packet::PubRel(PubResponse::new(id)));
    drop(conn);

    let (mut conn, connect) = broker.accept_with(V5, connack(false)).await;
    assert!(!connect.clean_start, "asked to resume");
    let p = expect_publish(&mut conn).await;
    assert_eq!(
        (p.topic.as_str(), p.dup, p.qos, &p.payload),
        ("t/q2", false, QoS::ExactlyOnce, &first.payload),
        "published again as a new message"
    );
    let id = p.packet_id.unwrap();
    conn.send(&Packet::PubRec(PubResponse::new(id))).await;
    assert_eq!(conn.recv().await, Packet::PubRel(PubResponse::new(id)));
    conn.send(&Packet::PubComp(PubResponse::new(id))).await;
    within("completion", pending).await.unwrap();
}

#[tokio::test]
async fn receive_maximum_bounds_messages_in_flight() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let mut limited = connack(false);
    limited.properties.receive_maximum = NonZeroU16::new(2);
    let (mut conn, _) = broker.accept_with(V5, limited).await;
    let client = connecting.await.unwrap().unwrap();

    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(start(&client, "rm", &i.to_string(), QoS::AtLeastOnce).await);
    }
    let mut acked = 0;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        // Never more than two unacknowledged.
        while seen.len() - acked < 2 && seen.len() < 5 {
            seen.push(expect_publish(&mut conn).await);
        }
        conn.expect_silence(Duration::from_millis(100)).await;
        conn.send(&Packet::PubAck(PubResponse::new(
            seen[acked].packet_id.unwrap(),
        )))
        .await;
        acked += 1;
    }
    while acked < 5 {
        conn.send(&Packet::PubAck(PubResponse::new(
            seen[acked].packet_id.unwrap(),
        )))
        .await;
        acked += 1;
    }
    let payloads: Vec<_> = seen.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    for p in pending {
        within("completion", p).await.unwrap();
    }
}

#[tokio::test]
async fn repeated_topics_use_topic_aliases_up_to_the_maximum() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let mut aliases = connack(false);
    aliases.properties.topic_alias_maximum = Some(2);
    let (mut conn, _) = broker.accept_with(V5, aliases).await;
    let client = connecting.await.unwrap().unwrap();

    for topic in ["t/1", "t/1", "t/2", "t/3", "t/1", "t/2"] {
        client.publish(topic, "x").await.unwrap();
    }
    let mut wire = Vec::new();
    for _ in 0..6 {
        let p = expect_publish(&mut conn).await;
        wire.push((
            p.topic.to_string(),
            p.properties.topic_alias.map(NonZeroU16::get),
        ));
    }
    let want = [
        ("t/1", Some(1)),
        ("", Some(1)),
        ("t/2", Some(2)),
        ("t/3", None),
        ("", Some(1)),
        ("", Some(2)),
    ];
    let want: Vec<_> = want.iter().map(|(t, a)| (t.to_string(), *a)).collect();
    assert_eq!(wire, want);
}

#[tokio::test]
async fn server_disconnect_reports_reason_code_and_string() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .reconnect(ReconnectPolicy::disabled())
            .connect(),
    );
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    let pending = start(&client, "d/t", "x", QoS::AtLeastOnce).await;
    expect_publish(&mut conn).await;

    let mut bye = Disconnect::new(ReasonCode::AdministrativeAction);
    bye.properties.reason_string = Some(MqttStr::new("maintenance").unwrap());
    conn.send(&Packet::Disconnect(bye)).await;

    let error = within("close", client.closed()).await.unwrap();
    assert_eq!(
        error.to_string(),
        "disconnected by the server: Administrative action (0x98): \"maintenance\""
    );
    assert_eq!(error.reason(), Some(ReasonCode::AdministrativeAction));
    // The message in flight fails with the same error; so do later calls.
    let e = within("failure", pending).await.unwrap_err();
    assert!(matches!(e, ClientError::DisconnectedByServer { .. }), "{e}");
    let e = client.publish("d/t", "late").await.unwrap_err();
    assert!(matches!(e, ClientError::DisconnectedByServer { .. }), "{e}");
    assert_eq!(client.status().state, State::Closed);
}

/// Sends `bytes` to a fresh client and returns the error the client closed with.
async fn close_error_after(v: ProtocolVersion, bytes: &[u8]) -> (ClientError, Vec<Packet>) {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .protocol(v)
            .reconnect(ReconnectPolicy::disabled())
            .connect(),
    );
    let (mut conn, _) = broker.accept_with(v, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    conn.send_raw(bytes).await;
    let sent = conn.until_closed().await;
    drop(conn);
    let error = within("close", client.closed()).await.unwrap();
    (error, sent)
}

#[tokio::test]
async fn malformed_packets_end_the_connection_with_an_error() {
    type Case = (&'static [u8], fn(&ProtocolError) -> bool, ReasonCode);
    let cases: [Case; 5] = [
        // Reserved packet type 0.
        (
            &[0x00, 0x00],
            |e| matches!(e, ProtocolError::Decode(DecodeError::ReservedPacketType)),
            ReasonCode::MalformedPacket,
        ),
        // PUBLISH with QoS 3.
        (
            &[0x36, 0x03, 0x00, 0x01, b'a'],
            |e| matches!(e, ProtocolError::Decode(DecodeError::InvalidQoS)),
            ReasonCode::MalformedPacket,
        ),
        // PUBACK whose body is too short.
        (
            &[0x40, 0x01, 0x00],
            |e| matches!(e, ProtocolError::Decode(_)),
            ReasonCode::MalformedPacket,
        ),
        // PUBREL with reserved flags 0000 [MQTT-3.6.1-1].
        (
            &[0x60, 0x02, 0x00, 0x01],
            |e| {
                matches!(
                    e,
                    ProtocolError::Decode(DecodeError::InvalidHeaderFlags { .. })
                )
            },
            ReasonCode::MalformedPacket,
        ),
        // A remaining length longer than four bytes.
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            |e| {
                matches!(
                    e,
                    ProtocolError::Decode(DecodeError::MalformedRemainingLength)
                )
            },
            ReasonCode::MalformedPacket,
        ),
    ];
    for v in [V311, V5] {
        // Well-formed packets a broker must not send: a second CONNACK, a SUBSCRIBE.
        let subscribe = Packet::Subscribe(sagitta_client::proto::Subscribe {
            packet_id: pid(1),
            filters: vec![(
                sagitta_client::TopicFilter::new("a").unwrap(),
                sagitta_client::SubscriptionOptions::new(QoS::AtMostOnce),
            )],
            properties: Default::default(),
        });
        for packet in [Packet::ConnAck(connack(false)), subscribe] {
            let mut bytes = bytes::BytesMut::new();
            packet.encode(v, &mut bytes).unwrap();
            let (error, sent) = close_error_after(v, &bytes).await;
            assert!(
                matches!(error, ClientError::Protocol(ProtocolError::Unexpected(_))),
                "{error}"
            );
            if v.is_v5() {
                let reason = ReasonCode::ProtocolError;
                assert_eq!(sent, [Packet::Disconnect(Disconnect::new(reason))]);
            }
        }
        for (bytes, check, reason) in cases {
            let (error, sent) = close_error_after(v, bytes).await;
            let ClientError::Protocol(e) = &error else {
                panic!("{bytes:02x?}: expected a protocol error, got {error}");
            };
            assert!(check(e), "{bytes:02x?}: {e}");
            if v.is_v5() {
                // The 5.0 client says why before closing.
                assert_eq!(
                    sent,
                    [Packet::Disconnect(Disconnect::new(reason))],
                    "{bytes:02x?}"
                );
            } else {
                assert!(sent.is_empty(), "{sent:?}");
            }
        }
    }
}

#[tokio::test]
async fn inbound_qos2_duplicate_is_delivered_once() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();

    let mut publish = Publish::new(TopicName::new("q2").unwrap(), "once");
    publish.qos = QoS::ExactlyOnce;
    publish.packet_id = Some(pid(5));
    conn.send(&Packet::Publish(publish.clone())).await;
    assert_eq!(conn.recv().await, Packet::PubRec(ack(5)));
    publish.dup = true;
    conn.send(&Packet::Publish(publish.clone())).await;
    assert_eq!(conn.recv().await, Packet::PubRec(ack(5)));
    conn.send(&Packet::PubRel(ack(5))).await;
    assert_eq!(conn.recv().await, Packet::PubComp(ack(5)));
    // A PUBREL for an id not pending: PUBCOMP 0x92.
    conn.send(&Packet::PubRel(ack(6))).await;
    let mut not_found = ack(6);
    not_found.reason = ReasonCode::PacketIdentifierNotFound;
    assert_eq!(conn.recv().await, Packet::PubComp(not_found));

    // After release the id is free: the next message with it is new.
    publish.dup = false;
    publish.payload = "again".into();
    conn.send(&Packet::Publish(publish)).await;
    assert_eq!(conn.recv().await, Packet::PubRec(ack(5)));

    let first = within("message", client.recv()).await.unwrap();
    assert_eq!(first.payload_str(), Some("once"));
    let second = within("message", client.recv()).await.unwrap();
    assert_eq!(second.payload_str(), Some("again"));
    assert!(client.try_recv().is_none());
}

#[tokio::test]
async fn unanswered_ping_is_a_dead_connection() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .keep_alive(Duration::from_secs(30))
            .ping_timeout(Duration::from_millis(300))
            .reconnect(ReconnectPolicy::disabled())
            .connect(),
    );
    // The broker's Server Keep Alive overrides ours.
    let mut fast = connack(false);
    fast.properties.server_keep_alive = Some(1);
    let (mut conn, connect) = broker.accept_with(V5, fast).await;
    assert_eq!(connect.keep_alive, 30);
    let client = connecting.await.unwrap().unwrap();

    assert_eq!(conn.recv().await, Packet::PingReq);
    conn.send(&Packet::PingResp).await;
    assert_eq!(conn.recv().await, Packet::PingReq);
    // No answer this time.
    let error = within("close", client.closed()).await;
    assert!(
        matches!(error, Some(ClientError::KeepAliveTimeout(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn inbound_topic_aliases_are_resolved_and_checked() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .topic_alias_maximum(4)
            .reconnect(ReconnectPolicy::disabled())
            .connect(),
    );
    let (mut conn, connect) = broker.accept_with(V5, connack(false)).await;
    assert_eq!(connect.properties.topic_alias_maximum, Some(4));
    let client = connecting.await.unwrap().unwrap();

    let mut set = Publish::new(TopicName::new("long/topic/name").unwrap(), "1");
    set.properties.topic_alias = NonZeroU16::new(3);
    conn.send(&Packet::Publish(set)).await;
    let mut used = Publish::new(TopicName::empty(), "2");
    used.properties.topic_alias = NonZeroU16::new(3);
    conn.send(&Packet::Publish(used)).await;
    for payload in ["1", "2"] {
        let msg = within("message", client.recv()).await.unwrap();
        assert_eq!(msg.topic, "long/topic/name");
        assert_eq!(msg.payload_str(), Some(payload));
        assert_eq!(msg.properties.topic_alias, None);
    }

    let mut bad = Publish::new(TopicName::new("x").unwrap(), "3");
    bad.properties.topic_alias = NonZeroU16::new(5);
    conn.send(&Packet::Publish(bad)).await;
    let error = within("close", client.closed()).await.unwrap();
    assert!(
        matches!(error, ClientError::Protocol(ProtocolError::TopicAlias(_))),
        "{error}"
    );
    assert_eq!(
        conn.until_closed().await,
        [Packet::Disconnect(Disconnect::new(
            ReasonCode::TopicAliasInvalid
        ))]
    );
}

#[tokio::test]
async fn connack_refusal_carries_reason_and_reason_string() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let mut refusal = ConnAck::new(false, ReasonCode::Banned);
    refusal.properties.reason_string = Some(MqttStr::new("go away").unwrap());
    let _ = broker.accept_with(V5, refusal).await;
    let e = connecting.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: ReasonCode::Banned,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "connection refused by the broker: Banned (0x8A): \"go away\""
    );
    assert!(e.is_fatal());

    // 3.1.1 return codes map to reason codes.
    let connecting = tokio::spawn(Client::builder(broker.addr()).protocol(V311).connect());
    let _ = broker
        .accept_with(V311, ConnAck::new(false, ReasonCode::ServerUnavailable))
        .await;
    let e = connecting.await.unwrap().unwrap_err();
    assert_eq!(e.reason(), Some(ReasonCode::ServerUnavailable));
}

#[tokio::test]
async fn refusals_of_publish_and_subscribe_are_typed() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();

    let quota = start(&client, "r/1", "x", QoS::AtLeastOnce).await;
    let denied = start(&client, "r/2", "x", QoS::ExactlyOnce).await;
    let p1 = expect_publish(&mut conn).await;
    let p2 = expect_publish(&mut conn).await;
    let mut r1 = PubResponse::new(p1.packet_id.unwrap());
    r1.reason = ReasonCode::QuotaExceeded;
    r1.properties.reason_string = Some(MqttStr::new("slow down").unwrap());
    conn.send(&Packet::PubAck(r1)).await;
    let mut r2 = PubResponse::new(p2.packet_id.unwrap());
    r2.reason = ReasonCode::NotAuthorized;
    conn.send(&Packet::PubRec(r2)).await;
    let e = within("PUBACK", quota).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "PUBLISH to r/1 refused: Quota exceeded (0x97): \"slow down\""
    );
    let e = within("PUBREC", denied).await.unwrap_err();
    assert!(matches!(e, ClientError::NotAuthorized { .. }), "{e}");

    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe_recv("secret/#", QoS::AtMostOnce).await })
    };
    let Packet::Subscribe(sub) = conn.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    conn.send(&Packet::SubAck(SubAck {
        packet_id: sub.packet_id,
        reasons: vec![ReasonCode::NotAuthorized],
        properties: Default::default(),
    }))
    .await;
    let e = subscribing.await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "not authorized: SUBSCRIBE to secret/#");
    // Refusals do not end the connection.
    assert_eq!(client.status().connections, 1);
    assert_eq!(client.status().state, State::Connected);
}

#[tokio::test]
async fn a_full_message_queue_pauses_reading_until_recv() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::builder(broker.addr()).message_capacity(1).connect());
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();

    for id in 1..=3 {
        let mut p = Publish::new(TopicName::new("slow").unwrap(), id.to_string());
        p.qos = QoS::AtLeastOnce;
        p.packet_id = Some(pid(id));
        conn.send(&Packet::Publish(p)).await;
    }
    // The first fits in the queue and is acknowledged; the second waits unacknowledged.
    assert_eq!(conn.recv().await, Packet::PubAck(ack(1)));
    conn.expect_silence(Duration::from_millis(200)).await;
    for id in 1..=3u16 {
        let msg = within("message", client.recv()).await.unwrap();
        assert_eq!(msg.payload_str(), Some(id.to_string().as_str()));
        if id < 3 {
            assert_eq!(conn.recv().await, Packet::PubAck(ack(id + 1)));
        }
    }
}

#[tokio::test]
async fn subscribe_and_unsubscribe_ids_never_collide_with_publishes() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    let _p = start(&client, "x", "1", QoS::AtLeastOnce).await;
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe_recv("y", QoS::AtMostOnce).await })
    };
    let _q = start(&client, "x", "2", QoS::AtLeastOnce).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(match conn.recv().await {
            Packet::Publish(p) => p.packet_id.unwrap(),
            Packet::Subscribe(s) => s.packet_id,
            other => panic!("unexpected {other:?}"),
        });
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct packet ids");
    drop(subscribing);
}

#[tokio::test]
async fn reconnect_gives_up_after_max_attempts() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .reconnect(fast_reconnect().max_attempts(2))
            .connect(),
    );
    let (conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    let port = broker.port;
    drop(conn);
    drop(broker); // nothing listens any more
    let error = within("giving up", client.closed()).await;
    assert!(
        matches!(error, Some(ClientError::Reconnect(ConnectError::Io { .. }))),
        "{error:?} (port {port})"
    );
}

#[tokio::test]
async fn dropping_every_handle_disconnects() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    client.publish("last", "words").await.unwrap();
    drop(client);
    let sent = conn.until_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Publish(_), Packet::Disconnect(d)] if d.reason == ReasonCode::Success),
        "{sent:?}"
    );
}

#[tokio::test]
async fn reconnect_waits_out_a_refusing_broker() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .reconnect(fast_reconnect())
            .connect(),
    );
    let (conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    drop(conn);
    // Busy: retried. Then accepted.
    let _ = broker
        .accept_with(V5, ConnAck::new(false, ReasonCode::ServerBusy))
        .await;
    let (_conn, _) = broker.accept_with(V5, connack(false)).await;
    let status = wait_connected(&client, 2).await;
    assert!(matches!(
        status.last_error,
        Some(ClientError::ConnectionClosed)
    ));
}

async fn answer_subscribe(conn: &mut MockConn, reasons: Vec<ReasonCode>) {
    let Packet::Subscribe(sub) = conn.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    assert_eq!(sub.filters.len(), reasons.len());
    conn.send(&Packet::SubAck(SubAck {
        packet_id: sub.packet_id,
        reasons,
        properties: Default::default(),
    }))
    .await;
}

#[tokio::test]
async fn dispatch_calls_each_callback_once_and_queues_the_rest() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .subscribe_with(
                    sagitta_client::Subscription::new("o/#", QoS::AtMostOnce)
                        .filter("o/+", QoS::AtMostOnce)
                        .callback(move |_, _| {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }),
                )
                .await
        })
    };
    answer_subscribe(&mut conn, vec![ReasonCode::Success; 2]).await;
    subscribing.await.unwrap().unwrap();
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .subscribe("boom/#", QoS::AtMostOnce, |_, _| panic!("a buggy callback"))
                .await
        })
    };
    answer_subscribe(&mut conn, vec![ReasonCode::Success]).await;
    subscribing.await.unwrap().unwrap();
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe_recv("o/q", QoS::AtMostOnce).await })
    };
    answer_subscribe(&mut conn, vec![ReasonCode::Success]).await;
    subscribing.await.unwrap().unwrap();

    for topic in ["o/x", "boom/1", "o/q", "z/unmatched"] {
        conn.send(&Packet::Publish(Publish::new(
            TopicName::new(topic).unwrap(),
            "m",
        )))
        .await;
    }
    // o/q matches a callback subscription (once, though two of its filters match) and the
    // recv subscription; z/unmatched matches nothing and is queued too. The panicking
    // callback did not stop the event loop.
    assert_eq!(within("o/q", client.recv()).await.unwrap().topic, "o/q");
    assert_eq!(
        within("z/unmatched", client.recv()).await.unwrap().topic,
        "z/unmatched"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(client.try_recv().is_none());
    assert_eq!(client.status().state, State::Connected);
}

#[tokio::test]
async fn calls_outside_a_runtime_or_with_bad_input_are_errors() {
    // The async client needs a tokio runtime; outside one it says so instead of panicking.
    let outside = std::thread::spawn(|| plain_block_on(Client::connect("127.0.0.1:1")));
    let e = outside.join().unwrap().unwrap_err();
    assert!(matches!(e, ConnectError::NoRuntime), "{e}");

    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let (_conn, _) = broker.accept_with(V5, connack(false)).await;
    let client = connecting.await.unwrap().unwrap();
    assert!(matches!(
        client.publish("a/+", "x").await,
        Err(ClientError::InvalidTopic(_))
    ));
    assert!(matches!(
        client.subscribe_recv("a/#/b", QoS::AtMostOnce).await,
        Err(ClientError::InvalidTopic(_))
    ));
    assert!(matches!(
        client.unsubscribe_many(Vec::<String>::new()).await,
        Err(ClientError::Encode(_))
    ));
}

/// Polls a future to completion on this thread, outside any runtime.
fn plain_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn random_bytes_from_the_broker_never_break_the_event_loop() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(
        Client::builder(broker.addr())
            .reconnect(fast_reconnect())
            .connect(),
    );
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const ROUNDS: u32 = 40;
    for round in 0..ROUNDS {
        let (mut conn, _) = broker.accept_with(V5, connack(round % 2 == 1)).await;
        for _ in 0..4 {
            // Any packet type but DISCONNECT (a 0x8E reason would rightly end the client),
            // any flags, a short body of random bytes.
            let mut first = (random() as u8) | 0x10;
            if first >> 4 == 14 {
                first = 0x30 | (first & 0x0F);
            }
            let len = (random() % 10) as usize;
            let mut bytes = vec![first, len as u8];
            bytes.extend((0..len).map(|_| random() as u8));
            conn.send_raw(&bytes).await;
        }
        // Whether the client found a protocol error or not, this connection ends here.
        drop(conn);
    }
    let client = connecting.await.unwrap().unwrap();
    let (mut conn, _) = broker.accept_with(V5, connack(false)).await;
    let pending = start(&client, "alive", "yes", QoS::AtLeastOnce).await;
    let p = loop {
        // Acknowledgements owed to the random packets of earlier connections are gone;
        // only fresh traffic arrives.
        if let Packet::Publish(p) = conn.recv().await
            && p.topic == "alive"
        {
            break p;
        }
    };
    conn.send(&Packet::PubAck(PubResponse::new(p.packet_id.unwrap())))
        .await;
    within("completion", pending).await.unwrap();
    assert_eq!(client.status().connections, ROUNDS + 1);
}

#[tokio::test]
async fn disconnect_does_not_wait_forever_for_acknowledgements() {
    let broker = MockBroker::start().await;
    let connecting = tokio::spawn(Client::connect(broker.addr()));
    let mut one = connack(false);
    one.properties.receive_maximum = NonZeroU16::new(1);
    let (mut conn, _) = broker.accept_with(V5, one).await;
    let client = connecting.await.unwrap().unwrap();

    let in_flight = start(&client, "w", "1", QoS::AtLeastOnce).await;
    let stalled = start(&client, "w", "2", QoS::AtLeastOnce).await;
    expect_publish(&mut conn).await;
    // The broker never acknowledges: the second publish can never be sent.
    let started = std::time::Instant::now();
    let disconnecting = {
        let client = client.clone();
        tokio::spawn(async move { client.disconnect().await })
    };
    assert_eq!(
        conn.until_closed().await,
        [Packet::Disconnect(Disconnect::new(ReasonCode::Success))]
    );
    drop(conn);
    within("disconnect", disconnecting).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    for pending in [in_flight, stalled] {
        assert!(matches!(pending.await, Err(ClientError::Closed)));
    }
}

#[test]
fn dropping_a_blocking_client_disconnects() {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let broker = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut packets = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            while let Some(p) = sagitta_client::proto::decode(&mut buf, V5, 1 << 20).unwrap() {
                if matches!(p, Packet::Connect(_)) {
                    let mut out = bytes::BytesMut::new();
                    Packet::ConnAck(connack(false))
                        .encode(V5, &mut out)
                        .unwrap();
                    stream.write_all(&out).unwrap();
                }
                packets.push(p);
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return packets,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let client = sagitta_client::blocking::Client::connect(addr).unwrap();
    client.publish("bye", "now").unwrap();
    drop(client);
    let packets = broker.join().unwrap();
    assert!(
        matches!(
            &packets[..],
            [
                Packet::Connect(_),
                Packet::Publish(_),
                Packet::Disconnect(_)
            ]
        ),
        "{packets:?}"
    );
}
