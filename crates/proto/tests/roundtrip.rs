//! Property tests of the sagitta-proto codec.
//!
//! - Every packet type, for every protocol version, survives `decode(encode(p)) == p`, and
//!   `encoded_len` is the number of bytes `encode` writes. Generators only produce packets the
//!   version can carry (3.x: no properties, only mappable reason codes, no AUTH, no 5.0
//!   subscription option bits, a password only with a user name).
//! - Every strict prefix of an encoding decodes to `Ok(None)` and leaves the buffer untouched.
//! - Two concatenated packets decode in order and leave an empty buffer.
//! - Arbitrary bytes, arbitrary bodies behind a well-formed fixed header, and mutated valid
//!   encodings never panic, whatever the version and maximum packet size; whatever the decoder
//!   accepts re-encodes to something that decodes to the same packet.
//! - A packet larger than the maximum packet size is rejected from its fixed header alone.

// The generators and helpers below unwrap values they build valid, as the tests do; clippy's
// `allow-unwrap-in-tests` only covers the `#[test]` functions themselves.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;
use sagitta_proto::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    DecodeError, Disconnect, DisconnectProperties, EncodeError, MAX_VAR_INT, MqttStr, Packet,
    PacketKind, PacketType, ProtocolVersion, PubResponse, Publish, PublishProperties, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties, UserProperty, Will,
    WillProperties, decode, parse_header,
};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// No maximum packet size.
const NO_LIMIT: usize = usize::MAX;

/// Proptest settings: `cases` cases (or `PROPTEST_CASES` for a deeper run), and no regression
/// files (this test must not write into the source tree).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strings, binary data, topics
// ---------------------------------------------------------------------------------------------

fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

/// A character allowed in an MQTT string: anything but U+0000, with multi-byte UTF-8 often.
fn mqtt_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::char::range(' ', '~'),
        2 => select(vec![
            'é', 'ß', '€', '日', '本', '😀', '\u{7f}', '\u{80}', '\u{7ff}', '\u{800}', '\u{feff}',
            '\u{ffff}', '\u{10000}', '\u{10ffff}',
        ]),
        2 => any::<char>(),
    ]
    .prop_filter("U+0000 is not allowed in MQTT strings", |c| *c != '\0')
}

fn mqtt_string(max_chars: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(mqtt_char(), 0..max_chars).prop_map(|cs| cs.into_iter().collect())
}

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    mqtt_string(12).prop_map(|s| MqttStr::new(s).unwrap())
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// A character of a topic level: no separator, no wildcard, no U+0000.
fn level_char() -> impl Strategy<Value = char> {
    mqtt_char().prop_filter("no separator or wildcard", |c| {
        !matches!(c, '/' | '+' | '#')
    })
}

/// One level of a topic name; may be empty.
fn name_level() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[a-z0-9]{1,5}",
        2 => prop::collection::vec(level_char(), 1..5).prop_map(|cs| cs.into_iter().collect()),
    ]
}

/// A first level starting with `$` (`$SYS`, `$`, `$abc`).
fn dollar_level() -> impl Strategy<Value = String> {
    prop_oneof![Just("$SYS".to_owned()), "\\$[A-Za-z]{0,4}"]
}

fn topic_name_string() -> impl Strategy<Value = String> {
    (
        prop::option::weighted(0.25, dollar_level()),
        prop::collection::vec(name_level(), 1..5),
    )
        .prop_map(|(first, levels)| {
            first
                .into_iter()
                .chain(levels)
                .collect::<Vec<_>>()
                .join("/")
        })
        .prop_filter("topic names are not empty", |s| !s.is_empty())
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    topic_name_string().prop_map(|s| TopicName::new(s).unwrap())
}

/// A filter without `$share/`: name levels, `+` levels and maybe a final `#`.
fn plain_filter_string() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => name_level(), 1 => Just("+".to_owned())];
    (
        prop::option::weighted(0.25, dollar_level()),
        prop::collection::vec(level, 0..4),
        any::<bool>(),
    )
        .prop_map(|(first, levels, hash)| {
            let hash = hash.then(|| "#".to_owned());
            first
                .into_iter()
                .chain(levels)
                .chain(hash)
                .collect::<Vec<_>>()
                .join("/")
        })
        .prop_filter("topic filters are not empty", |s| !s.is_empty())
        .prop_filter("not a shared subscription", |s| !s.starts_with("$share/"))
}

/// `$share/<group>/<filter>`.
fn shared_filter_string() -> impl Strategy<Value = String> {
    let group = prop_oneof![
        "[a-z0-9_-]{1,6}",
        prop::collection::vec(level_char(), 1..4).prop_map(|cs| cs.into_iter().collect()),
    ];
    (group, plain_filter_string()).prop_map(|(g, f)| format!("$share/{g}/{f}"))
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    prop_oneof![
        4 => plain_filter_string(),
        1 => shared_filter_string(),
    ]
    .prop_map(|s| TopicFilter::new(s).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Small values
// ---------------------------------------------------------------------------------------------

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).unwrap())
}

/// Subscription identifiers of every variable byte integer length.
fn subscription_id() -> impl Strategy<Value = SubscriptionId> {
    prop_oneof![
        1u32..128,
        128u32..16_384,
        16_384u32..2_097_152,
        2_097_152u32..=MAX_VAR_INT,
        select(vec![
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VAR_INT
        ]),
    ]
    .prop_map(|v| SubscriptionId::new(v).unwrap())
}

fn qos() -> impl Strategy<Value = sagitta_proto::QoS> {
    use sagitta_proto::QoS;
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn retain_handling() -> impl Strategy<Value = RetainHandling> {
    select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ])
}

/// The reason codes allowed in a packet of `kind` (MQTT 5.0).
fn reason_in(kind: PacketKind) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|rc| rc.allowed_in(kind))
        .collect();
    select(codes)
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::of(s)
}

/// User properties, in order, sometimes with a repeated pair.
fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    (
        prop::collection::vec((mqtt_str(), mqtt_str()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut props, repeat)| {
            if repeat && let Some(first) = props.first().cloned() {
                props.push(first);
            }
            props
        })
}

/// `s` in 5.0, the default (nothing) in 3.x.
fn only_v5<T, S>(v: ProtocolVersion, s: S) -> BoxedStrategy<T>
where
    T: Default + Clone + Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    if v.is_v5() {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties (every field of every struct)
// ---------------------------------------------------------------------------------------------

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        opt(any::<u32>()),
        opt(nz16()),
        opt(nz32()),
        opt(any::<u16>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(mqtt_str()),
        opt(binary()),
        user_properties(),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, am, ad, user)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                // Authentication Data requires an Authentication Method (5.0 3.1.2.11.10).
                authentication_data: ad.filter(|_| am.is_some()),
                authentication_method: am,
                user_properties: user,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        opt(any::<u32>()),
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(mqtt_str()),
        opt(topic_name()),
        opt(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, user)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
        })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    use sagitta_proto::QoS;
    (
        (
            opt(any::<u32>()),
            opt(nz16()),
            opt(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
            opt(any::<bool>()),
            opt(nz32()),
            opt(mqtt_str()),
            opt(any::<u16>()),
            opt(mqtt_str()),
            opt(any::<bool>()),
        ),
        (
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(any::<u16>()),
            opt(mqtt_str()),
            opt(mqtt_str()),
            opt(mqtt_str()),
            opt(binary()),
            user_properties(),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, wsa), (sia, ssa, ska, ri, sr, am, ad, user))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                    user_properties: user,
                }
            },
        )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(nz16()),
        opt(topic_name()),
        opt(binary()),
        prop::collection::vec(subscription_id(), 0..4),
        opt(mqtt_str()),
        user_properties(),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, sids, ct, user)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: sids,
            content_type: ct,
            user_properties: user,
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (opt(mqtt_str()), user_properties()).prop_map(|(rs, user)| AckProperties {
        reason_string: rs,
        user_properties: user,
    })
}

fn subscribe_properties() -> impl Strategy<Value = SubscribeProperties> {
    (opt(subscription_id()), user_properties()).prop_map(|(id, user)| SubscribeProperties {
        subscription_identifier: id,
        user_properties: user,
    })
}

fn unsubscribe_properties() -> impl Strategy<Value = UnsubscribeProperties> {
    user_properties().prop_map(|user| UnsubscribeProperties {
        user_properties: user,
    })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        opt(any::<u32>()),
        opt(mqtt_str()),
        opt(mqtt_str()),
        user_properties(),
    )
        .prop_map(|(sei, rs, sr, user)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            server_reference: sr,
            user_properties: user,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        opt(mqtt_str()),
        opt(binary()),
        opt(mqtt_str()),
        user_properties(),
    )
        .prop_map(|(am, ad, rs, user)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: user,
        })
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        only_v5(v, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let credentials = if v.is_v5() {
        (opt(mqtt_str()), opt(binary())).boxed()
    } else {
        // 3.x: a password only together with a user name [MQTT-3.1.2-22].
        opt((mqtt_str(), opt(binary())))
            .prop_map(|c| c.map_or((None, None), |(u, p)| (Some(u), p)))
            .boxed()
    };
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_str(),
        opt(will(v)),
        credentials,
        only_v5(v, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, (username, password), properties)| {
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                    bridge: false,
                }))
            },
        )
        .boxed()
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = if v.is_v5() {
        reason_in(PacketKind::ConnAck).boxed()
    } else {
        (0u8..=5)
            .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap())
            .boxed()
    };
    (any::<bool>(), reason, only_v5(v, connack_properties()))
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // Session Present is 0 on a refused connection [MQTT-3.2.2-4] [MQTT-3.2.2-6].
                session_present: session_present && reason == ReasonCode::Success,
                reason,
                properties: Box::new(properties),
            })
        })
        .boxed()
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..32),
        1 => prop::collection::vec(any::<u8>(), 100..300),
    ]
    .prop_map(Bytes::from)
}

fn publish_with(
    v: ProtocolVersion,
    payload: impl Strategy<Value = Bytes> + 'static,
) -> BoxedStrategy<Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        nz16(),
        payload,
        only_v5(v, publish_properties()),
        any::<bool>(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, id, payload, properties, alias_only)| {
                let qos0 = qos == sagitta_proto::QoS::AtMostOnce;
                // An empty topic name only in 5.0, and only with a Topic Alias [MQTT-3.3.2-1].
                let topic = if v.is_v5() && alias_only && properties.topic_alias.is_some() {
                    TopicName::empty()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: (!qos0).then_some(id),
                    payload,
                    properties,
                })
            },
        )
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    publish_with(v, payload())
}

fn pub_response(v: ProtocolVersion, kind: PacketKind) -> BoxedStrategy<Packet> {
    let reason = if v.is_v5() {
        reason_in(kind).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (nz16(), reason, only_v5(v, ack_properties()))
        .prop_map(move |(packet_id, reason, properties)| {
            let r = PubResponse {
                packet_id,
                reason,
                properties,
            };
            match kind {
                PacketKind::PubAck => Packet::PubAck(r),
                PacketKind::PubRec => Packet::PubRec(r),
                PacketKind::PubRel => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        })
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let entry = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling(),
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if v.is_v5() {
                    SubscriptionOptions {
                        qos,
                        // No Local is a Protocol Error on a shared subscription [MQTT-3.8.3-4].
                        no_local: no_local && filter.shared().is_none(),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions::new(qos)
                };
                (filter, options)
            },
        );
    (
        nz16(),
        prop::collection::vec(entry, 1..6),
        only_v5(v, subscribe_properties()),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = if v.is_v5() {
        reason_in(PacketKind::SubAck).boxed()
    } else {
        select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (
        nz16(),
        prop::collection::vec(reason, 1..6),
        only_v5(v, ack_properties()),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        nz16(),
        prop::collection::vec(topic_filter(), 1..6),
        only_v5(v, unsubscribe_properties()),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    // 3.x UNSUBACK carries no reason codes.
    let reasons = if v.is_v5() {
        prop::collection::vec(reason_in(PacketKind::UnsubAck), 1..6).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (nz16(), reasons, only_v5(v, ack_properties()))
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if v.is_v5() {
        (reason_in(PacketKind::Disconnect), disconnect_properties())
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed()
    } else {
        Just(Packet::Disconnect(Disconnect::default())).boxed()
    }
}

fn auth() -> BoxedStrategy<Packet> {
    (reason_in(PacketKind::Auth), auth_properties())
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
        .boxed()
}

/// Any valid packet for `v`, every packet type equally likely.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut arms = vec![
        connect(v),
        connack(v),
        publish(v),
        pub_response(v, PacketKind::PubAck),
        pub_response(v, PacketKind::PubRec),
        pub_response(v, PacketKind::PubRel),
        pub_response(v, PacketKind::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v),
    ];
    if v.is_v5() {
        arms.push(auth());
    }
    Union::new(arms).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

/// PUBLISH packets whose remaining length sits around each variable byte integer boundary
/// (127/128, 16 383/16 384, 2 097 151/2 097 152), so the fixed header is 2 to 5 bytes long.
fn big_publish() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    let payload = prop_oneof![0usize..200, 16_300usize..16_400, 2_097_000usize..2_097_200,]
        .prop_map(|n| Bytes::from(vec![0xA5; n]));
    (version(), payload).prop_flat_map(|(v, payload)| (Just(v), publish_with(v, Just(payload))))
}

/// A string of exactly `len` bytes, mostly 3-byte characters.
fn long_string(len: usize) -> String {
    format!("{}{}", "€".repeat(len / 3), "a".repeat(len % 3))
}

/// CONNECT and PUBLISH packets whose strings and binary fields are at or near the 65 535-byte
/// limit of their two-byte length prefix (and whose property blocks need 3-byte lengths).
fn long_fields() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    let len = prop_oneof![Just(65_535usize), 65_000usize..=65_535];
    (version(), len, any::<bool>()).prop_map(|(v, n, is_connect)| {
        let text = MqttStr::new(long_string(n)).unwrap();
        let topic = TopicName::new(long_string(n)).unwrap();
        let data = Bytes::from(vec![0x5A; n]);
        let user = vec![(text.clone(), text.clone())];
        let p = if is_connect {
            let mut will = Will {
                topic: topic.clone(),
                payload: data.clone(),
                qos: sagitta_proto::QoS::ExactlyOnce,
                retain: true,
                properties: WillProperties::default(),
            };
            let mut c = Connect::new(v, text.clone());
            c.username = Some(text.clone());
            c.password = Some(data.clone());
            if v.is_v5() {
                will.properties.correlation_data = Some(data.clone());
                will.properties.response_topic = Some(topic);
                will.properties.user_properties = user.clone();
                c.properties.authentication_method = Some(text);
                c.properties.authentication_data = Some(data);
                c.properties.user_properties = user;
            }
            c.will = Some(will);
            Packet::Connect(Box::new(c))
        } else {
            let mut p = Publish::new(topic.clone(), data.clone());
            if v.is_v5() {
                p.properties.correlation_data = Some(data);
                p.properties.content_type = Some(text);
                p.properties.response_topic = Some(topic);
                p.properties.user_properties = user;
            }
            Packet::Publish(p)
        };
        (v, p)
    })
}

/// A maximum packet size: none, small, or anything.
fn max_packet_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(NO_LIMIT), 0usize..600, any::<usize>()]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf).unwrap();
    buf
}

/// Decodes from `buf` until it is incomplete or invalid, checking what a decoder must never
/// do: change the buffer when answering `Ok(None)`, accept a packet it cannot round-trip.
fn decode_all(buf: &mut BytesMut, v: ProtocolVersion, max: usize) -> Result<(), TestCaseError> {
    loop {
        let before = buf.clone();
        match decode(buf, v, max) {
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before.len());
                prop_assert_eq!(&before[before.len() - buf.len()..], &buf[..]);
                // Whatever is accepted is a valid packet: it re-encodes, and decodes back.
                let mut again = BytesMut::new();
                let encoded = p.encode(v, &mut again);
                prop_assert!(encoded.is_ok(), "{:?} does not re-encode: {:?}", p, encoded);
                let back = decode(&mut again, v, NO_LIMIT);
                prop_assert_eq!(back, Ok(Some(p)));
                prop_assert!(again.is_empty());
            }
            Ok(None) => {
                prop_assert_eq!(&before[..], &buf[..]);
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

/// A byte-level edit of an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, u8),
    FlipBit(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Insert(ref i, b) => {
            let at = i.index(buf.len() + 1);
            buf.insert(at, b);
        }
        _ if buf.is_empty() => {}
        Mutation::Replace(ref i, b) => {
            let at = i.index(buf.len());
            buf[at] = b;
        }
        Mutation::FlipBit(ref i, bit) => {
            let at = i.index(buf.len());
            buf[at] ^= 1 << bit;
        }
        Mutation::Remove(ref i) => {
            buf.remove(i.index(buf.len()));
        }
        Mutation::Truncate(ref i) => buf.truncate(i.index(buf.len())),
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// decode(encode(p)) == p for every packet type and version; encoded_len is exact.
    #[test]
    fn round_trip((v, p) in versioned_packet()) {
        let buf = encode(&p, v);
        prop_assert_eq!(p.encoded_len(v), Ok(buf.len()));

        let header = parse_header(&buf, v, NO_LIMIT).unwrap().unwrap();
        prop_assert_eq!(header.packet_type, p.packet_type());
        prop_assert_eq!(header.packet_len(), buf.len());

        // A limit equal to the packet size is not exceeded.
        let mut rx = buf.clone();
        prop_assert_eq!(decode(&mut rx, v, buf.len()), Ok(Some(p.clone())));
        prop_assert!(rx.is_empty());

        // Encoding appends, leaving what is already in the buffer alone.
        let mut appended = BytesMut::from(&b"xyz"[..]);
        p.encode(v, &mut appended).unwrap();
        prop_assert_eq!(&appended[..3], b"xyz");
        prop_assert_eq!(&appended[3..], &buf[..]);

        // A PUBLISH encodes the same from borrowed parts.
        if let Packet::Publish(publish) = &p {
            let view = publish.borrowed();
            prop_assert_eq!(view.encoded_len(v), Ok(buf.len()));
            let mut borrowed = BytesMut::from(&b"xyz"[..]);
            view.encode(v, &mut borrowed).unwrap();
            prop_assert_eq!(&borrowed[3..], &buf[..]);
        }
    }

    /// Every strict prefix is incomplete, and decoding it leaves the buffer untouched.
    #[test]
    fn strict_prefixes_are_incomplete((v, p) in versioned_packet()) {
        let buf = encode(&p, v);
        for n in 0..buf.len() {
            let mut rx = BytesMut::from(&buf[..n]);
            prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(None), "prefix of {} bytes", n);
            prop_assert_eq!(rx.len(), n);
            prop_assert_eq!(&rx[..], &buf[..n]);
        }
    }

    /// Two packets back to back come out in order, and nothing is left.
    #[test]
    fn concatenated_packets_decode_in_order(
        (v, a, b) in version().prop_flat_map(|v| (Just(v), packet(v), packet(v)))
    ) {
        let mut rx = encode(&a, v);
        rx.extend_from_slice(&encode(&b, v));
        prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(Some(a)));
        prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(Some(b)));
        prop_assert!(rx.is_empty());
        prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(None));
    }

    /// Arbitrary bytes never panic, whatever the version and limit.
    #[test]
    fn arbitrary_bytes_never_panic(
        v in version(),
        max in max_packet_size(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_all(&mut BytesMut::from(&bytes[..]), v, max)?;
    }

    /// Arbitrary bodies behind a well-formed fixed header (right flags, right length) reach
    /// every body decoder, and never panic.
    #[test]
    fn arbitrary_bodies_never_panic(
        v in version(),
        max in max_packet_size(),
        ty in 1u8..=15,
        publish_flags in 0u8..16,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let flags = match ty {
            3 => publish_flags,
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        let mut buf = BytesMut::new();
        buf.put_u8((ty << 4) | flags);
        let mut len = body.len();
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            buf.put_u8(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        buf.extend_from_slice(&body);
        decode_all(&mut buf, v, max)?;
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Flipped, replaced, inserted and removed bytes in valid encodings never panic, decoded
    /// with the packet's version or another one.
    #[test]
    fn mutated_encodings_never_panic(
        (v, p) in versioned_packet(),
        mutations in prop::collection::vec(mutation(), 1..5),
        other in version(),
        same_version in prop::bool::weighted(0.75),
        max in max_packet_size(),
        second in prop::option::of(versioned_packet()),
    ) {
        let mut bytes = encode(&p, v).to_vec();
        if let Some((v2, q)) = second {
            bytes.extend_from_slice(&encode(&q, v2));
        }
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let decode_version = if same_version { v } else { other };
        decode_all(&mut BytesMut::from(&bytes[..]), decode_version, max)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// A packet over the limit is rejected from its fixed header alone: the first 5 bytes (or
    /// fewer for a shorter packet), however much of the body is missing.
    #[test]
    fn oversized_packets_are_rejected_from_the_fixed_header(
        (v, p) in prop_oneof![versioned_packet(), big_publish()],
        limit in any::<Index>(),
    ) {
        let buf = encode(&p, v);
        let size = buf.len();
        let max = limit.index(size);
        let too_large = DecodeError::PacketTooLarge { size, max };

        let mut rx = BytesMut::from(&buf[..size.min(5)]);
        prop_assert_eq!(decode(&mut rx, v, max), Err(too_large.clone()));

        // Exactly the fixed header is enough; one byte less is not yet a header.
        let header = parse_header(&buf, v, NO_LIMIT).unwrap().unwrap();
        prop_assert!((2..=5).contains(&header.header_len));
        prop_assert_eq!(parse_header(&buf[..header.header_len], v, max), Err(too_large));
        prop_assert_eq!(parse_header(&buf[..header.header_len - 1], v, max), Ok(None));
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Large PUBLISH packets (2- to 4-byte remaining lengths) round-trip, and report their size.
    #[test]
    fn large_publish_round_trip((v, p) in big_publish()) {
        let buf = encode(&p, v);
        prop_assert_eq!(p.encoded_len(v), Ok(buf.len()));
        let mut rx = buf.clone();
        prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(Some(p)));
        prop_assert!(rx.is_empty());
    }

    /// Strings and binary fields up to their 65 535-byte limit round-trip.
    #[test]
    fn long_fields_round_trip((v, p) in long_fields()) {
        let buf = encode(&p, v);
        prop_assert_eq!(p.encoded_len(v), Ok(buf.len()));
        let mut rx = buf.clone();
        prop_assert_eq!(decode(&mut rx, v, NO_LIMIT), Ok(Some(p)));
        prop_assert!(rx.is_empty());
    }
}

/// A binary field one byte over the limit is refused, and the buffer is left as it was.
#[test]
fn binary_over_65535_bytes_is_refused() {
    for v in VERSIONS {
        let mut c = Connect::new(v, MqttStr::empty());
        c.username = Some(MqttStr::empty());
        c.password = Some(Bytes::from(vec![0; 65_536]));
        let p = Packet::Connect(Box::new(c));
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            p.encode(v, &mut buf),
            Err(EncodeError::BinaryTooLong(65_536))
        );
        assert_eq!(p.encoded_len(v), Err(EncodeError::BinaryTooLong(65_536)));
        assert_eq!(&buf[..], b"keep");
    }
}

/// True if any property of the packet (or of its will) is set.
fn has_properties(p: &Packet) -> bool {
    match p {
        Packet::Connect(c) => {
            !c.properties.is_empty() || c.will.as_ref().is_some_and(|w| !w.properties.is_empty())
        }
        Packet::ConnAck(c) => !c.properties.is_empty(),
        Packet::Publish(p) => !p.properties.is_empty(),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            !r.properties.is_empty()
        }
        Packet::Subscribe(s) => !s.properties.is_empty(),
        Packet::SubAck(s) => !s.properties.is_empty(),
        Packet::Unsubscribe(u) => !u.properties.is_empty(),
        Packet::UnsubAck(u) => !u.properties.is_empty(),
        Packet::PingReq | Packet::PingResp => false,
        Packet::Disconnect(d) => !d.properties.is_empty(),
        Packet::Auth(a) => !a.properties.is_empty(),
    }
}

/// The generators reach every packet type of every version, with properties only in 5.0 (and
/// there for every packet type that has them).
#[test]
fn generators_cover_every_packet_type() {
    let mut runner = TestRunner::deterministic();
    for v in VERSIONS {
        let strategy = packet(v);
        let mut seen = BTreeSet::new();
        let mut with_properties = BTreeSet::new();
        for _ in 0..2_000 {
            let p = strategy.new_tree(&mut runner).unwrap().current();
            let ty = p.packet_type() as u8;
            seen.insert(ty);
            if has_properties(&p) {
                with_properties.insert(ty);
            }
        }
        let last = if v.is_v5() {
            PacketType::Auth
        } else {
            PacketType::Disconnect
        };
        let all: BTreeSet<u8> = (1..=last as u8).collect();
        assert_eq!(seen, all, "packet types generated for {v}");
        if v.is_v5() {
            let without_properties = [PacketType::PingReq as u8, PacketType::PingResp as u8];
            let expected: BTreeSet<u8> = all
                .into_iter()
                .filter(|ty| !without_properties.contains(ty))
                .collect();
            assert_eq!(
                with_properties, expected,
                "packet types with properties for {v}"
            );
        } else {
            assert!(with_properties.is_empty(), "properties generated for {v}");
        }
    }
}
