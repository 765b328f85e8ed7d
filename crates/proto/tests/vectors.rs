//! Hand-written byte-level test vectors for every MQTT control packet, written out from the
//! OASIS MQTT 3.1.1 and 5.0 specifications.
//!
//! - Section A: valid packets, checked in both directions (bytes → `decode` → struct, and
//!   struct → `encode` → the exact same bytes).
//! - Section B: malformed packets, checked for the exact [`DecodeError`] variant and the MQTT 5.0
//!   reason code it maps to.
//! - Section C: incremental decoding (partial buffers, size limits before the body arrives).
//! - Section D: encoder errors, which must leave the output buffer untouched.
//!
//! Spec statement identifiers (e.g. `[MQTT-3.3.1-4]`) refer to MQTT 5.0 unless marked 3.1.1.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use sagitta_proto::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    DecodeError, Disconnect, DisconnectProperties, EncodeError, FixedHeader, MqttStr, Packet,
    PacketId, PacketType, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS,
    ReasonCode, RetainHandling, StringError, SubAck, Subscribe, SubscribeProperties,
    SubscriptionId, SubscriptionOptions, TopicError, TopicFilter, TopicName, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties, decode, parse_header,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// A generous limit for tests that are not about the maximum packet size.
const MAX: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Test helpers. Panicking is how a test fails, so the workspace's `unwrap_used` / `panic`
/// denials (which clippy already relaxes inside `#[test]` functions) are relaxed here too.
#[allow(clippy::unwrap_used, clippy::panic)]
mod support {
    use super::*;

    /// Parses whitespace-separated hex bytes, e.g. `"10 0c 00 04"`.
    pub(super) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| {
                assert_eq!(b.len(), 2, "hex byte {b:?} is not two digits");
                u8::from_str_radix(b, 16).unwrap()
            })
            .collect()
    }

    /// Formats bytes the way [`hex`] reads them, for readable assertion failures.
    pub(super) fn to_hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(super) fn s(v: &str) -> MqttStr {
        MqttStr::new(v.to_owned()).unwrap()
    }

    pub(super) fn topic(v: &str) -> TopicName {
        TopicName::new(v.to_owned()).unwrap()
    }

    pub(super) fn filter(v: &str) -> TopicFilter {
        TopicFilter::new(v.to_owned()).unwrap()
    }

    pub(super) fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    pub(super) fn up(k: &str, v: &str) -> UserProperty {
        (s(k), s(v))
    }

    pub(super) fn sub_id(v: u32) -> SubscriptionId {
        SubscriptionId::new(v).unwrap()
    }

    /// Decodes one packet from exactly `bytes`: the packet must be complete and use every byte.
    #[track_caller]
    pub(super) fn decode_exact(
        bytes: &[u8],
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        match decode(&mut buf, version, MAX) {
            Ok(Some(packet)) => {
                assert!(
                    buf.is_empty(),
                    "{} bytes left after the packet: declared remaining length too short",
                    buf.len()
                );
                Ok(packet)
            }
            Ok(None) => panic!(
                "incomplete packet {}: declared remaining length too long",
                to_hex(bytes)
            ),
            Err(e) => Err(e),
        }
    }

    /// Encodes `packet` for `version`, checking `encoded_len` against the bytes written.
    #[track_caller]
    pub(super) fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf).unwrap();
        assert_eq!(
            packet.encoded_len(version).unwrap(),
            buf.len(),
            "encoded_len"
        );
        buf.to_vec()
    }

    /// Bytes decode to `packet`, and `packet` encodes to exactly the same bytes.
    #[track_caller]
    pub(super) fn vector(version: ProtocolVersion, bytes: &str, packet: Packet) {
        let bytes = hex(bytes);
        assert_eq!(decode_exact(&bytes, version), Ok(packet.clone()), "decode");
        assert_eq!(
            to_hex(&encode_to_vec(&packet, version)),
            to_hex(&bytes),
            "encode"
        );
    }

    /// Bytes decode to `packet` (used for accepted non-canonical forms).
    #[track_caller]
    pub(super) fn decodes_to(version: ProtocolVersion, bytes: &str, packet: Packet) {
        assert_eq!(decode_exact(&hex(bytes), version), Ok(packet));
    }

    /// `packet` encodes to exactly `bytes` (used where decoding would not give back `packet`).
    #[track_caller]
    pub(super) fn encodes_to(version: ProtocolVersion, packet: Packet, bytes: &str) {
        assert_eq!(
            to_hex(&encode_to_vec(&packet, version)),
            to_hex(&hex(bytes))
        );
    }

    /// The decode error for a complete (but invalid) packet.
    #[track_caller]
    pub(super) fn decode_err(version: ProtocolVersion, bytes: &str) -> DecodeError {
        match decode_exact(&hex(bytes), version) {
            Ok(p) => panic!("decoded {p:?}, expected an error"),
            Err(e) => e,
        }
    }

    /// Decoding fails with exactly `expected`, which maps to reason code `reason`.
    #[track_caller]
    pub(super) fn rejects(
        version: ProtocolVersion,
        bytes: &str,
        expected: DecodeError,
        reason: ReasonCode,
    ) {
        let err = decode_err(version, bytes);
        assert_eq!(err, expected);
        assert_eq!(err.reason_code(), reason, "reason code for {err:?}");
    }

    pub(super) fn connect(c: Connect) -> Packet {
        Packet::Connect(Box::new(c))
    }

    pub(super) fn ack(id: u16, reason: ReasonCode) -> PubResponse {
        PubResponse {
            packet_id: pid(id),
            reason,
            properties: AckProperties::default(),
        }
    }

    pub(super) fn ack_with_reason_string(id: u16, reason: ReasonCode, text: &str) -> PubResponse {
        PubResponse {
            packet_id: pid(id),
            reason,
            properties: AckProperties {
                reason_string: Some(s(text)),
                user_properties: vec![],
            },
        }
    }
}

use support::*;

// ---------------------------------------------------------------------------------------------
// A. Valid packets, both directions
// ---------------------------------------------------------------------------------------------

// ----- CONNECT -----

#[test]
fn connect_v3_1_uses_protocol_name_mqisdp_and_level_3() {
    // MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep alive 60, client id "c1".
    vector(
        V3_1,
        "10 10
         00 06 4D 51 49 73 64 70  03  02  00 3C
         00 02 63 31",
        connect(Connect::new(V3_1, s("c1"))),
    );
}

#[test]
fn connect_v3_1_1_minimal_with_empty_client_id() {
    // A zero-byte client id is allowed with clean session 1 [MQTT-3.1.3-7] (3.1.1).
    vector(
        V3_1_1,
        "10 0C
         00 04 4D 51 54 54  04  02  00 3C
         00 00",
        connect(Connect::new(V3_1_1, MqttStr::empty())),
    );
}

#[test]
fn connect_v3_1_1_with_will_username_and_password() {
    // Flags 0xEC: user name, password, will retain, will QoS 1, will flag; clean session 0.
    vector(
        V3_1_1,
        "10 23
         00 04 4D 51 54 54  04  EC  00 0A
         00 03 63 69 64
         00 03 77 2F 74
         00 03 62 79 65
         00 04 75 73 65 72
         00 02 01 02",
        connect(Connect {
            protocol: V3_1_1,
            clean_start: false,
            keep_alive: 10,
            client_id: s("cid"),
            will: Some(Will {
                topic: topic("w/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties::default(),
            }),
            username: Some(s("user")),
            password: Some(Bytes::from_static(&[0x01, 0x02])),
            properties: ConnectProperties::default(),
            bridge: false,
        }),
    );
}

#[test]
fn connect_v5_with_properties_will_properties_username_and_password() {
    // Flags 0xD6: user name, password, will QoS 2, will flag, clean start.
    // The payload order is client id, will properties, will topic, will payload, user name,
    // password (5.0 section 3.1.3).
    vector(
        V5,
        "10 62
         00 04 4D 51 54 54  05  D6  00 1E
         1B
            11 00 00 0E 10
            21 00 14
            27 00 00 10 00
            22 00 0A
            19 01
            17 00
            26 00 01 6B 00 01 76
         00 02 63 35
         2B
            18 00 00 00 05
            01 01
            02 00 00 00 3C
            03 00 0A 74 65 78 74 2F 70 6C 61 69 6E
            08 00 03 72 2F 74
            09 00 02 AB CD
            26 00 01 61 00 01 62
         00 01 77
         00 01 78
         00 01 75
         00 01 70",
        connect(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 30,
            client_id: s("c5"),
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(true),
                    message_expiry_interval: Some(60),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(topic("r/t")),
                    correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
                    user_properties: vec![up("a", "b")],
                },
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"p")),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: NonZeroU16::new(20),
                maximum_packet_size: NonZeroU32::new(4096),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                authentication_method: None,
                authentication_data: None,
                user_properties: vec![up("k", "v")],
            },
            bridge: false,
        }),
    );
}

#[test]
fn connect_v5_allows_password_without_username() {
    // 5.0 dropped 3.1.1's [MQTT-3.1.2-22]: flags 0x42 = password + clean start, no user name.
    vector(
        V5,
        "10 13
         00 04 4D 51 54 54  05  42  00 3C
         00
         00 02 63 35
         00 02 70 77",
        connect(Connect {
            password: Some(Bytes::from_static(b"pw")),
            ..Connect::new(V5, s("c5"))
        }),
    );
}

#[test]
fn connect_v5_with_authentication_method_and_data() {
    vector(
        V5,
        "10 1A
         00 04 4D 51 54 54  05  02  00 3C
         0D
            15 00 05 53 43 52 41 4D
            16 00 02 01 02
         00 00",
        connect(Connect {
            properties: ConnectProperties {
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[0x01, 0x02])),
                ..ConnectProperties::default()
            },
            ..Connect::new(V5, MqttStr::empty())
        }),
    );
}

#[test]
fn connect_is_decoded_with_its_own_version_whatever_the_connection_version() {
    // Before CONNECT the connection version is unknown; the packet's level decides.
    let bytes = "10 0C 00 04 4D 51 54 54 04 02 00 3C 00 00";
    for v in [V3_1, V3_1_1, V5] {
        decodes_to(v, bytes, connect(Connect::new(V3_1_1, MqttStr::empty())));
    }
}

// ----- CONNACK -----

#[test]
fn connack_v3_1_1_return_codes_0_to_5() {
    let codes = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for (byte, reason) in codes {
        vector(
            V3_1_1,
            &format!("20 02 00 {byte:02X}"),
            Packet::ConnAck(ConnAck::new(false, reason)),
        );
    }
}

#[test]
fn connack_v3_1_1_session_present() {
    vector(
        V3_1_1,
        "20 02 01 00",
        Packet::ConnAck(ConnAck::new(true, ReasonCode::Success)),
    );
}

#[test]
fn connack_v5_with_server_capabilities() {
    vector(
        V5,
        "20 33
         01 00
         30
            11 00 00 00 78
            21 00 0A
            24 01
            25 00
            27 00 01 00 00
            12 00 04 61 75 74 6F
            22 00 05
            1F 00 02 6F 6B
            28 01
            29 00
            2A 01
            13 00 1E
            26 00 01 6B 00 01 76",
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: Box::new(ConnAckProperties {
                session_expiry_interval: Some(120),
                receive_maximum: NonZeroU16::new(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: NonZeroU32::new(65536),
                assigned_client_identifier: Some(s("auto")),
                topic_alias_maximum: Some(5),
                reason_string: Some(s("ok")),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(30),
                user_properties: vec![up("k", "v")],
                ..ConnAckProperties::default()
            }),
        }),
    );
}

#[test]
fn connack_v5_use_another_server_with_reference_and_auth() {
    vector(
        V5,
        "20 14
         00 9C
         11
            1A 00 01 72
            1C 00 02 73 32
            15 00 01 6D
            16 00 01 01",
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::UseAnotherServer,
            properties: Box::new(ConnAckProperties {
                response_information: Some(s("r")),
                server_reference: Some(s("s2")),
                authentication_method: Some(s("m")),
                authentication_data: Some(Bytes::from_static(&[0x01])),
                ..ConnAckProperties::default()
            }),
        }),
    );
}

#[test]
fn connack_v5_error_reason_with_empty_properties() {
    vector(
        V5,
        "20 03 00 87 00",
        Packet::ConnAck(ConnAck::new(false, ReasonCode::NotAuthorized)),
    );
}

#[test]
fn connack_v5_reason_encodes_to_nearest_v3_return_code() {
    // 3.1.1 has only return codes 0-5: a 5.0 reason is mapped to the closest one.
    encodes_to(
        V3_1_1,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::Banned)),
        "20 02 00 05",
    );
    encodes_to(
        V3_1_1,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::ServerBusy)),
        "20 02 00 03",
    );
}

// ----- PUBLISH -----

#[test]
fn publish_v3_1_1_qos0() {
    vector(
        V3_1_1,
        "30 07 00 03 61 2F 62 68 69",
        Packet::Publish(Publish::new(topic("a/b"), "hi")),
    );
}

#[test]
fn publish_v3_1_qos0_is_identical_to_v3_1_1() {
    vector(
        V3_1,
        "30 07 00 03 61 2F 62 68 69",
        Packet::Publish(Publish::new(topic("a/b"), "hi")),
    );
}

#[test]
fn publish_v3_1_1_qos1_retain() {
    vector(
        V3_1_1,
        "33 09 00 03 61 2F 62 00 0A 68 69",
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            packet_id: Some(pid(10)),
            ..Publish::new(topic("a/b"), "hi")
        }),
    );
}

#[test]
fn publish_v3_1_1_qos2_dup() {
    vector(
        V3_1_1,
        "3C 09 00 03 61 2F 62 12 34 68 69",
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(0x1234)),
            ..Publish::new(topic("a/b"), "hi")
        }),
    );
}

#[test]
fn publish_v3_1_1_qos2_dup_retain() {
    vector(
        V3_1_1,
        "3D 09 00 03 61 2F 62 12 34 68 69",
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            packet_id: Some(pid(0x1234)),
            ..Publish::new(topic("a/b"), "hi")
        }),
    );
}

#[test]
fn publish_with_empty_payload() {
    vector(
        V3_1_1,
        "30 05 00 03 61 2F 62",
        Packet::Publish(Publish::new(topic("a/b"), Bytes::new())),
    );
}

#[test]
fn publish_with_two_byte_remaining_length() {
    // Remaining length 203 = 0xCB 0x01 (1.5.5: least significant group first).
    let payload = vec![0x55; 200];
    let bytes = format!("30 CB 01 00 01 74 {}", to_hex(&payload));
    vector(
        V3_1_1,
        &bytes,
        Packet::Publish(Publish::new(topic("t"), payload)),
    );
}

#[test]
fn encoder_uses_the_shortest_remaining_length_at_each_boundary() {
    // 1.5.5: 127 fits one byte, 128 needs two (80 01); 16 383 is FF 7F, 16 384 is 80 80 01.
    // Topic "t" takes 3 bytes of the remaining length, the payload the rest.
    let cases = [
        (127, "30 7F"),
        (128, "30 80 01"),
        (16_383, "30 FF 7F"),
        (16_384, "30 80 80 01"),
    ];
    for (remaining, header) in cases {
        let packet = Packet::Publish(Publish::new(topic("t"), vec![0xA5; remaining - 3]));
        let bytes = encode_to_vec(&packet, V3_1_1);
        let mut expected = hex(header);
        expected.extend_from_slice(&hex("00 01 74"));
        assert_eq!(
            to_hex(&bytes[..expected.len()]),
            to_hex(&expected),
            "{remaining}"
        );
        assert_eq!(bytes.len(), expected.len() + remaining - 3);
        assert_eq!(decode_exact(&bytes, V3_1_1), Ok(packet));
    }
}

#[test]
fn publish_v5_qos0_without_properties() {
    vector(
        V5,
        "30 08 00 03 61 2F 62 00 68 69",
        Packet::Publish(Publish::new(topic("a/b"), "hi")),
    );
}

#[test]
fn publish_v5_with_all_properties_repeated_user_properties_and_subscription_ids() {
    // User Property may appear more than once, also with the same name, and a server sends one
    // Subscription Identifier per matching subscription (3.3.2.3.8): both may repeat.
    vector(
        V5,
        "32 36
         00 01 74
         00 01
         2E
            01 01
            02 00 00 00 0A
            23 00 07
            08 00 03 72 2F 31
            09 00 01 FF
            0B 05
            0B 80 01
            03 00 04 6A 73 6F 6E
            26 00 01 6B 00 01 31
            26 00 01 6B 00 01 32
         7B 7D",
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(1)),
            properties: PublishProperties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(10),
                topic_alias: NonZeroU16::new(7),
                response_topic: Some(topic("r/1")),
                correlation_data: Some(Bytes::from_static(&[0xFF])),
                subscription_identifiers: vec![sub_id(5), sub_id(128)],
                content_type: Some(s("json")),
                user_properties: vec![up("k", "1"), up("k", "2")],
            },
            ..Publish::new(topic("t"), "{}")
        }),
    );
}

#[test]
fn publish_v5_topic_alias_with_empty_topic_name() {
    // A zero-length topic name is allowed when a Topic Alias is present (3.3.2.3.4).
    vector(
        V5,
        "30 07 00 00 03 23 00 07 70",
        Packet::Publish(Publish {
            properties: PublishProperties {
                topic_alias: NonZeroU16::new(7),
                ..PublishProperties::default()
            },
            ..Publish::new(TopicName::empty(), "p")
        }),
    );
}

#[test]
fn publish_v5_properties_are_dropped_when_encoding_for_v3_1_1() {
    encodes_to(
        V3_1_1,
        Packet::Publish(Publish {
            properties: PublishProperties {
                message_expiry_interval: Some(10),
                ..PublishProperties::default()
            },
            ..Publish::new(topic("a/b"), "hi")
        }),
        "30 07 00 03 61 2F 62 68 69",
    );
}

// ----- PUBACK / PUBREC / PUBREL / PUBCOMP -----

#[test]
fn pub_responses_v3_1_1() {
    // PUBREL's fixed header flags are 0010 [MQTT-3.6.1-1].
    let ok = || ack(10, ReasonCode::Success);
    vector(V3_1_1, "40 02 00 0A", Packet::PubAck(ok()));
    vector(V3_1_1, "50 02 00 0A", Packet::PubRec(ok()));
    vector(V3_1_1, "62 02 00 0A", Packet::PubRel(ok()));
    vector(V3_1_1, "70 02 00 0A", Packet::PubComp(ok()));
}

#[test]
fn pub_responses_v5_short_form_remaining_length_2_means_success() {
    // The Reason Code and Property Length can be omitted for Success without properties.
    let ok = || ack(10, ReasonCode::Success);
    vector(V5, "40 02 00 0A", Packet::PubAck(ok()));
    vector(V5, "50 02 00 0A", Packet::PubRec(ok()));
    vector(V5, "62 02 00 0A", Packet::PubRel(ok()));
    vector(V5, "70 02 00 0A", Packet::PubComp(ok()));
}

#[test]
fn pub_responses_v5_reason_only_remaining_length_3() {
    // Remaining length < 4: no Property Length, properties are empty.
    vector(
        V5,
        "40 03 00 0A 10",
        Packet::PubAck(ack(10, ReasonCode::NoMatchingSubscribers)),
    );
    vector(
        V5,
        "50 03 00 0A 80",
        Packet::PubRec(ack(10, ReasonCode::UnspecifiedError)),
    );
    vector(
        V5,
        "62 03 00 0A 92",
        Packet::PubRel(ack(10, ReasonCode::PacketIdentifierNotFound)),
    );
    vector(
        V5,
        "70 03 00 0A 92",
        Packet::PubComp(ack(10, ReasonCode::PacketIdentifierNotFound)),
    );
}

#[test]
fn pub_responses_v5_full_form_with_reason_string() {
    vector(
        V5,
        "40 08 00 0A 97 04 1F 00 01 71",
        Packet::PubAck(ack_with_reason_string(10, ReasonCode::QuotaExceeded, "q")),
    );
    vector(
        V5,
        "50 08 00 0A 87 04 1F 00 01 71",
        Packet::PubRec(ack_with_reason_string(10, ReasonCode::NotAuthorized, "q")),
    );
    // Success with properties must carry the reason byte explicitly.
    vector(
        V5,
        "62 08 00 0A 00 04 1F 00 01 78",
        Packet::PubRel(ack_with_reason_string(10, ReasonCode::Success, "x")),
    );
    vector(
        V5,
        "70 08 00 0A 00 04 1F 00 01 78",
        Packet::PubComp(ack_with_reason_string(10, ReasonCode::Success, "x")),
    );
}

#[test]
fn pub_response_v5_with_empty_property_block_decodes_like_reason_only() {
    // Remaining length 4 with Property Length 0 is valid; the encoder prefers the 3-byte form.
    decodes_to(
        V5,
        "40 04 00 0A 10 00",
        Packet::PubAck(ack(10, ReasonCode::NoMatchingSubscribers)),
    );
    decodes_to(
        V5,
        "40 04 00 0A 00 00",
        Packet::PubAck(ack(10, ReasonCode::Success)),
    );
}

#[test]
fn pub_response_v5_fields_are_dropped_when_encoding_for_v3_1_1() {
    encodes_to(
        V3_1_1,
        Packet::PubAck(ack_with_reason_string(
            10,
            ReasonCode::NoMatchingSubscribers,
            "q",
        )),
        "40 02 00 0A",
    );
}

// ----- SUBSCRIBE -----

#[test]
fn subscribe_v3_1_1() {
    // Flags 0010 [MQTT-3.8.1-1]; one QoS byte per filter.
    vector(
        V3_1_1,
        "82 0C
         00 01
         00 03 61 2F 62  01
         00 01 23  02",
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![
                (filter("a/b"), SubscriptionOptions::new(QoS::AtLeastOnce)),
                (filter("#"), SubscriptionOptions::new(QoS::ExactlyOnce)),
            ],
            properties: SubscribeProperties::default(),
        }),
    );
}

#[test]
fn subscribe_v5_with_subscription_identifier_and_every_option_bit() {
    // Options: bits 0-1 QoS, bit 2 No Local, bit 3 Retain As Published, bits 4-5 Retain
    // Handling (3.8.3.1). 0x2D = QoS 1 + NL + RAP + RH 2; 0x1A = QoS 2 + RAP + RH 1.
    vector(
        V5,
        "82 23
         00 02
         09
            0B 0A
            26 00 01 6B 00 01 76
         00 03 61 2F 2B  2D
         00 0A 24 73 68 61 72 65 2F 67 2F 78  1A
         00 01 62  00",
        Packet::Subscribe(Subscribe {
            packet_id: pid(2),
            filters: vec![
                (
                    filter("a/+"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    filter("$share/g/x"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                ),
                (filter("b"), SubscriptionOptions::new(QoS::AtMostOnce)),
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(sub_id(10)),
                user_properties: vec![up("k", "v")],
            },
        }),
    );
}

#[test]
fn subscribe_v5_options_are_dropped_when_encoding_for_v3_1_1() {
    encodes_to(
        V3_1_1,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                filter("a"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: SubscribeProperties {
                subscription_identifier: Some(sub_id(3)),
                user_properties: vec![],
            },
        }),
        "82 06 00 01 00 01 61 01",
    );
}

// ----- SUBACK -----

#[test]
fn suback_v3_1_1_with_granted_qos_and_failure_0x80() {
    vector(
        V3_1_1,
        "90 06 00 01 00 01 02 80",
        Packet::SubAck(SubAck {
            packet_id: pid(1),
            reasons: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        }),
    );
}

#[test]
fn suback_v5_error_reasons_become_0x80_in_v3_1_1() {
    encodes_to(
        V3_1_1,
        Packet::SubAck(SubAck {
            packet_id: pid(1),
            reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
            properties: AckProperties::default(),
        }),
        "90 04 00 01 01 80",
    );
}

#[test]
fn suback_v5_with_reason_string() {
    vector(
        V5,
        "90 0B
         00 02
         05 1F 00 02 6E 6F
         01 A2 9E",
        Packet::SubAck(SubAck {
            packet_id: pid(2),
            reasons: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::SharedSubscriptionsNotSupported,
            ],
            properties: AckProperties {
                reason_string: Some(s("no")),
                user_properties: vec![],
            },
        }),
    );
}

// ----- UNSUBSCRIBE -----

#[test]
fn unsubscribe_v3_1_1() {
    // Flags 0010 [MQTT-3.10.1-1].
    vector(
        V3_1_1,
        "A2 0A 00 03 00 03 61 2F 62 00 01 23",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: vec![filter("a/b"), filter("#")],
            properties: UnsubscribeProperties::default(),
        }),
    );
}

#[test]
fn unsubscribe_v5_with_user_property() {
    vector(
        V5,
        "A2 0F
         00 03
         07 26 00 01 6B 00 01 76
         00 03 61 2F 62",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: vec![filter("a/b")],
            properties: UnsubscribeProperties {
                user_properties: vec![up("k", "v")],
            },
        }),
    );
}

// ----- UNSUBACK -----

#[test]
fn unsuback_v3_1_1_has_no_reason_codes() {
    vector(
        V3_1_1,
        "B0 02 00 03",
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(3),
            reasons: vec![],
            properties: AckProperties::default(),
        }),
    );
}

#[test]
fn unsuback_v5_with_reason_codes() {
    vector(
        V5,
        "B0 05 00 03 00 00 11",
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(3),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: AckProperties::default(),
        }),
    );
    vector(
        V5,
        "B0 09 00 03 04 1F 00 01 7A 00 11",
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(3),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: AckProperties {
                reason_string: Some(s("z")),
                user_properties: vec![],
            },
        }),
    );
}

// ----- PINGREQ / PINGRESP -----

#[test]
fn pingreq_and_pingresp_in_every_version() {
    for v in [V3_1, V3_1_1, V5] {
        vector(v, "C0 00", Packet::PingReq);
        vector(v, "D0 00", Packet::PingResp);
    }
}

// ----- DISCONNECT -----

#[test]
fn disconnect_v3_1_1_is_empty() {
    vector(V3_1_1, "E0 00", Packet::Disconnect(Disconnect::default()));
}

#[test]
fn disconnect_v5_empty_means_normal_disconnection() {
    // Remaining length 0: Reason Code 0x00, no properties (3.14.2.1).
    vector(
        V5,
        "E0 00",
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
    );
}

#[test]
fn disconnect_v5_reason_only() {
    vector(
        V5,
        "E0 01 04",
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
    );
}

#[test]
fn disconnect_v5_with_properties() {
    vector(
        V5,
        "E0 0D 9C 0B 1F 00 03 62 79 65 1C 00 02 73 32",
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::UseAnotherServer,
            properties: DisconnectProperties {
                reason_string: Some(s("bye")),
                server_reference: Some(s("s2")),
                ..DisconnectProperties::default()
            },
        }),
    );
    // Normal disconnection that sets the session expiry: the reason byte must be present.
    vector(
        V5,
        "E0 07 00 05 11 00 00 00 3C",
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: DisconnectProperties {
                session_expiry_interval: Some(60),
                ..DisconnectProperties::default()
            },
        }),
    );
}

#[test]
fn disconnect_v5_reason_is_dropped_when_encoding_for_v3_1_1() {
    encodes_to(
        V3_1_1,
        Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
        "E0 00",
    );
}

// ----- AUTH -----

#[test]
fn auth_v5_empty_means_success() {
    vector(V5, "F0 00", Packet::Auth(Auth::default()));
}

#[test]
fn auth_v5_continue_authentication_with_method_and_data() {
    vector(
        V5,
        "F0 10
         18
         0E
            15 00 05 53 43 52 41 4D
            16 00 03 01 02 03",
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
                ..AuthProperties::default()
            },
        }),
    );
}

#[test]
fn auth_v5_reauthenticate_with_reason_string() {
    vector(
        V5,
        "F0 0F
         19
         0D
            15 00 05 53 43 52 41 4D
            1F 00 02 72 65",
        Packet::Auth(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM")),
                reason_string: Some(s("re")),
                ..AuthProperties::default()
            },
        }),
    );
}

#[test]
fn auth_v5_non_success_reason_without_properties_has_property_length_0() {
    vector(
        V5,
        "F0 02 18 00",
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties::default(),
        }),
    );
}

#[test]
fn back_to_back_packets_decode_one_at_a_time() {
    let mut buf = BytesMut::from(&hex("C0 00 40 02 00 0A D0 00")[..]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(
        decode(&mut buf, V3_1_1, MAX),
        Ok(Some(Packet::PubAck(ack(10, ReasonCode::Success))))
    );
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingResp)));
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
}

// ---------------------------------------------------------------------------------------------
// B. Malformed packets: exact error and reason code
// ---------------------------------------------------------------------------------------------

// ----- Fixed header -----

#[test]
fn reserved_packet_type_0_is_malformed() {
    // Packet type 0 is Reserved / Forbidden (2.1.2, table 2-1).
    for v in [V3_1_1, V5] {
        rejects(
            v,
            "00 00",
            DecodeError::ReservedPacketType,
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn wrong_fixed_header_flags_are_malformed() {
    // [MQTT-2.1.3-1]; PUBREL [MQTT-3.6.1-1], SUBSCRIBE [MQTT-3.8.1-1],
    // UNSUBSCRIBE [MQTT-3.10.1-1].
    let cases = [
        ("60 02 00 01", PacketType::PubRel, 0x0),
        ("80 06 00 01 00 01 61 00", PacketType::Subscribe, 0x0),
        ("A0 05 00 01 00 01 61", PacketType::Unsubscribe, 0x0),
        ("C1 00", PacketType::PingReq, 0x1),
        ("D8 00", PacketType::PingResp, 0x8),
        ("42 02 00 01", PacketType::PubAck, 0x2),
        ("E2 00", PacketType::Disconnect, 0x2),
        ("11 00", PacketType::Connect, 0x1),
        ("F1 00", PacketType::Auth, 0x1),
    ];
    for (bytes, packet, flags) in cases {
        rejects(
            V5,
            bytes,
            DecodeError::InvalidHeaderFlags { packet, flags },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    // A Variable Byte Integer is at most four bytes (1.5.5).
    let bytes = hex("30 FF FF FF FF 7F");
    assert_eq!(
        parse_header(&bytes, V5, usize::MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    rejects(
        V5,
        "30 FF FF FF FF 7F",
        DecodeError::MalformedRemainingLength,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn publish_qos_3_is_malformed() {
    // [MQTT-3.3.1-4]
    for v in [V3_1_1, V5] {
        rejects(
            v,
            "36 07 00 03 61 2F 62 00 01",
            DecodeError::InvalidQoS,
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn publish_dup_on_qos_0_is_rejected() {
    // [MQTT-3.3.1-2]
    for v in [V3_1_1, V5] {
        rejects(
            v,
            "38 05 00 03 61 2F 62",
            DecodeError::DupOnQoS0,
            ReasonCode::ProtocolError,
        );
    }
}

// ----- Topic names and filters -----

#[test]
fn publish_topic_name_with_wildcards_is_topic_name_invalid() {
    // [MQTT-3.3.2-2]
    for v in [V3_1_1, V5] {
        let props = if v == V5 { " 00" } else { "" };
        let len = if v == V5 { "06" } else { "05" };
        for wildcard in ["2B", "23"] {
            rejects(
                v,
                &format!("30 {len} 00 03 61 2F {wildcard}{props}"),
                DecodeError::InvalidTopicName(TopicError::WildcardInName),
                ReasonCode::TopicNameInvalid,
            );
        }
    }
}

#[test]
fn publish_v3_1_1_empty_topic_is_topic_name_invalid() {
    // Topic names must be at least one character long [MQTT-4.7.3-1].
    rejects(
        V3_1_1,
        "30 02 00 00",
        DecodeError::InvalidTopicName(TopicError::Empty),
        ReasonCode::TopicNameInvalid,
    );
}

#[test]
fn publish_v5_empty_topic_without_topic_alias_is_a_protocol_error() {
    // 3.3.2.1: a zero-length Topic Name without a Topic Alias is a Protocol Error.
    rejects(
        V5,
        "30 03 00 00 00",
        DecodeError::EmptyTopicWithoutAlias,
        ReasonCode::ProtocolError,
    );
    // Other properties do not stand in for the alias.
    rejects(
        V5,
        "30 05 00 00 02 01 01",
        DecodeError::EmptyTopicWithoutAlias,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn subscribe_invalid_topic_filters_are_topic_filter_invalid() {
    // '#' last and alone [MQTT-4.7.1-1], '+' alone in its level [MQTT-4.7.1-2],
    // $share/<ShareName>/<filter> [MQTT-4.8.2-1].
    let cases = [
        // a/#/b
        (
            "82 0A 00 01 00 05 61 2F 23 2F 62 00",
            TopicError::MisplacedWildcard,
        ),
        // a+
        ("82 07 00 01 00 02 61 2B 00", TopicError::MisplacedWildcard),
        // #/a
        (
            "82 08 00 01 00 03 23 2F 61 00",
            TopicError::MisplacedWildcard,
        ),
        // $share/g (no filter after the share name)
        (
            "82 0D 00 01 00 08 24 73 68 61 72 65 2F 67 00",
            TopicError::InvalidShare,
        ),
        // zero-length filter [MQTT-4.7.3-1]
        ("82 05 00 01 00 00 00", TopicError::Empty),
    ];
    for (bytes, error) in cases {
        rejects(
            V3_1_1,
            bytes,
            DecodeError::InvalidTopicFilter(error),
            ReasonCode::TopicFilterInvalid,
        );
    }
    // The same in 5.0, where a property length byte follows the packet identifier.
    rejects(
        V5,
        "82 0E 00 01 00 00 08 24 73 68 61 72 65 2F 67 00",
        DecodeError::InvalidTopicFilter(TopicError::InvalidShare),
        ReasonCode::TopicFilterInvalid,
    );
}

#[test]
fn unsubscribe_invalid_topic_filter_is_topic_filter_invalid() {
    rejects(
        V3_1_1,
        "A2 09 00 01 00 05 61 2F 23 2F 62",
        DecodeError::InvalidTopicFilter(TopicError::MisplacedWildcard),
        ReasonCode::TopicFilterInvalid,
    );
}

// ----- Packet identifiers -----

#[test]
fn packet_identifier_0_is_rejected() {
    // [MQTT-2.2.1-3]
    let cases = [
        ("32 07 00 03 61 2F 62 00 00", PacketType::Publish),
        ("40 02 00 00", PacketType::PubAck),
        ("50 02 00 00", PacketType::PubRec),
        ("62 02 00 00", PacketType::PubRel),
        ("70 02 00 00", PacketType::PubComp),
        ("82 06 00 00 00 01 61 00", PacketType::Subscribe),
        ("A2 05 00 00 00 01 61", PacketType::Unsubscribe),
    ];
    for (bytes, packet) in cases {
        rejects(
            V3_1_1,
            bytes,
            DecodeError::ZeroPacketId { packet },
            ReasonCode::ProtocolError,
        );
    }
}

// ----- SUBSCRIBE payload -----

#[test]
fn subscribe_without_filters_is_a_protocol_error() {
    // [MQTT-3.8.3-2] (5.0) / [MQTT-3.8.3-3] (3.1.1); UNSUBSCRIBE [MQTT-3.10.3-2].
    let sub = DecodeError::NoTopicFilters {
        packet: PacketType::Subscribe,
    };
    let unsub = DecodeError::NoTopicFilters {
        packet: PacketType::Unsubscribe,
    };
    rejects(
        V3_1_1,
        "82 02 00 01",
        sub.clone(),
        ReasonCode::ProtocolError,
    );
    rejects(V5, "82 03 00 01 00", sub, ReasonCode::ProtocolError);
    rejects(
        V3_1_1,
        "A2 02 00 01",
        unsub.clone(),
        ReasonCode::ProtocolError,
    );
    rejects(V5, "A2 03 00 01 00", unsub, ReasonCode::ProtocolError);
}

#[test]
fn subscription_option_qos_3_is_rejected() {
    // 3.1.1 [MQTT-3-8.3-4] calls this malformed (3.x sends no reason code either way); 5.0
    // section 3.8.3.1 calls it a Protocol Error (0x82).
    rejects(
        V3_1_1,
        "82 06 00 01 00 01 61 03",
        DecodeError::InvalidSubscriptionQoS,
        ReasonCode::ProtocolError,
    );
    rejects(
        V5,
        "82 07 00 01 00 00 01 61 03",
        DecodeError::InvalidSubscriptionQoS,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn non_minimal_variable_byte_integers_are_rejected() {
    // [MQTT-1.5.5-1]: the minimum number of bytes. PINGREQ with remaining length 0 as 80 00.
    rejects(
        V3_1_1,
        "C0 80 00",
        DecodeError::MalformedRemainingLength,
        ReasonCode::MalformedPacket,
    );
    // A property length of 0 as 80 00 in a 5.0 PUBACK.
    rejects(
        V5,
        "40 05 00 01 00 80 00",
        DecodeError::MalformedVarInt,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn authentication_data_without_method_is_rejected() {
    // 5.0 section 3.1.2.11.10: Authentication Data without Authentication Method.
    rejects(
        V5,
        "10 12 00 04 4D 51 54 54 05 02 00 3C 04 16 00 01 41 00 01 63",
        DecodeError::AuthDataWithoutMethod,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn encoder_refuses_packets_the_decoder_would_reject() {
    let mut dup0 = Publish::new(TopicName::new("t").unwrap(), "x");
    dup0.dup = true;
    let mut buf = BytesMut::new();
    assert_eq!(
        Packet::Publish(dup0).encode(V3_1_1, &mut buf),
        Err(EncodeError::DupOnQoS0)
    );
    let empty = Publish::new(TopicName::empty(), "x");
    assert_eq!(
        Packet::Publish(empty.clone()).encode(V3_1_1, &mut buf),
        Err(EncodeError::EmptyTopic)
    );
    assert_eq!(
        Packet::Publish(empty).encode(V5, &mut buf),
        Err(EncodeError::EmptyTopic)
    );
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    let sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![(TopicFilter::new("$share/g/t").unwrap(), no_local)],
        properties: Default::default(),
    };
    assert_eq!(
        Packet::Subscribe(sub).encode(V5, &mut buf),
        Err(EncodeError::NoLocalOnSharedSubscription)
    );
    assert!(buf.is_empty());
}

#[test]
fn subscription_option_reserved_bits_are_malformed() {
    // 3.1.1: bits 2-7 reserved [MQTT-3-8.3-4] (3.1.1); 5.0: bits 6-7 reserved [MQTT-3.8.3-5].
    rejects(
        V3_1_1,
        "82 06 00 01 00 01 61 04",
        DecodeError::InvalidSubscriptionOptions(0x04),
        ReasonCode::MalformedPacket,
    );
    for byte in [0x40u8, 0x80, 0xC1] {
        rejects(
            V5,
            &format!("82 07 00 01 00 00 01 61 {byte:02X}"),
            DecodeError::InvalidSubscriptionOptions(byte),
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn subscription_option_retain_handling_3_is_a_protocol_error() {
    // 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
    rejects(
        V5,
        "82 07 00 01 00 00 01 61 30",
        DecodeError::InvalidRetainHandling,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn no_local_on_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    rejects(
        V5,
        "82 10 00 01 00 00 0A 24 73 68 61 72 65 2F 67 2F 61 04",
        DecodeError::NoLocalOnSharedSubscription,
        ReasonCode::ProtocolError,
    );
}

// ----- Properties -----

#[test]
fn unknown_property_identifier_is_malformed() {
    // 2.2.2.2: an identifier that is not valid for the packet is a Malformed Packet.
    rejects(
        V5,
        "30 06 00 01 74 02 7F 00",
        DecodeError::UnknownProperty(0x7F),
        ReasonCode::MalformedPacket,
    );
    // A two-byte Variable Byte Integer identifier (128) is not defined either.
    rejects(
        V5,
        "30 07 00 01 74 03 80 01 00",
        DecodeError::UnknownProperty(128),
        ReasonCode::MalformedPacket,
    );
    rejects(
        V5,
        "E0 03 00 01 00",
        DecodeError::UnknownProperty(0),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn property_length_longer_than_four_bytes_is_malformed() {
    // The Property Length is a Variable Byte Integer of at most four bytes (1.5.5, 2.2.2.1).
    rejects(
        V5,
        "30 08 00 01 74 FF FF FF FF 7F",
        DecodeError::MalformedVarInt,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn property_not_allowed_in_the_packet_is_malformed() {
    // Topic Alias (0x23) in CONNECT.
    rejects(
        V5,
        "10 10 00 04 4D 51 54 54 05 02 00 3C 03 23 00 01 00 00",
        DecodeError::PropertyNotAllowed {
            packet: PacketType::Connect,
            id: 0x23,
        },
        ReasonCode::MalformedPacket,
    );
    // Session Expiry Interval (0x11) in PUBLISH.
    rejects(
        V5,
        "30 09 00 01 74 05 11 00 00 00 01",
        DecodeError::PropertyNotAllowed {
            packet: PacketType::Publish,
            id: 0x11,
        },
        ReasonCode::MalformedPacket,
    );
    // Reason String (0x1F) among will properties.
    rejects(
        V5,
        "10 17 00 04 4D 51 54 54 05 06 00 3C 00 00 00 04 1F 00 01 78 00 01 77 00 00",
        DecodeError::PropertyNotAllowed {
            packet: PacketType::Connect,
            id: 0x1F,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn duplicate_single_valued_property_is_a_protocol_error() {
    // "It is a Protocol Error to include the Message Expiry Interval more than once."
    rejects(
        V5,
        "30 0E 00 01 74 0A 02 00 00 00 01 02 00 00 00 02",
        DecodeError::DuplicateProperty(0x02),
        ReasonCode::ProtocolError,
    );
    // Reason String twice in a PUBACK.
    rejects(
        V5,
        "40 0C 00 01 00 08 1F 00 01 61 1F 00 01 62",
        DecodeError::DuplicateProperty(0x1F),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn repeated_user_properties_and_subscription_identifiers_are_allowed_in_publish() {
    decodes_to(
        V5,
        "30 16 00 01 74 12 0B 01 0B 02 26 00 01 61 00 01 62 26 00 01 61 00 01 62",
        Packet::Publish(Publish {
            properties: PublishProperties {
                subscription_identifiers: vec![sub_id(1), sub_id(2)],
                user_properties: vec![up("a", "b"), up("a", "b")],
                ..PublishProperties::default()
            },
            ..Publish::new(topic("t"), Bytes::new())
        }),
    );
}

#[test]
fn property_values_out_of_range_are_protocol_errors() {
    // Receive Maximum 0 (3.1.2.11.3).
    rejects(
        V5,
        "10 10 00 04 4D 51 54 54 05 02 00 3C 03 21 00 00 00 00",
        DecodeError::InvalidPropertyValue(0x21),
        ReasonCode::ProtocolError,
    );
    // Maximum Packet Size 0 (3.1.2.11.4).
    rejects(
        V5,
        "10 12 00 04 4D 51 54 54 05 02 00 3C 05 27 00 00 00 00 00 00",
        DecodeError::InvalidPropertyValue(0x27),
        ReasonCode::ProtocolError,
    );
    // Topic Alias 0 [MQTT-3.3.2-8].
    rejects(
        V5,
        "30 07 00 01 74 03 23 00 00",
        DecodeError::InvalidPropertyValue(0x23),
        ReasonCode::ProtocolError,
    );
    // Payload Format Indicator 2 (only 0 and 1 are defined).
    rejects(
        V5,
        "30 06 00 01 74 02 01 02",
        DecodeError::InvalidPropertyValue(0x01),
        ReasonCode::ProtocolError,
    );
    // Maximum QoS 2 (3.2.2.3.4: only 0 or 1).
    rejects(
        V5,
        "20 05 00 00 02 24 02",
        DecodeError::InvalidPropertyValue(0x24),
        ReasonCode::ProtocolError,
    );
    // Subscription Identifier 0 (3.8.2.1.2).
    rejects(
        V5,
        "82 09 00 01 02 0B 00 00 01 61 00",
        DecodeError::InvalidPropertyValue(0x0B),
        ReasonCode::ProtocolError,
    );
    // Subscription Identifier 0 in PUBLISH (3.3.2.3.8).
    rejects(
        V5,
        "30 06 00 01 74 02 0B 00",
        DecodeError::InvalidPropertyValue(0x0B),
        ReasonCode::ProtocolError,
    );
    // Request Problem Information 2 (3.1.2.11.7).
    rejects(
        V5,
        "10 0F 00 04 4D 51 54 54 05 02 00 3C 02 17 02 00 00",
        DecodeError::InvalidPropertyValue(0x17),
        ReasonCode::ProtocolError,
    );
}

// ----- Strings -----

#[test]
fn string_containing_u0000_is_malformed() {
    // [MQTT-1.5.4-2]
    rejects(
        V3_1_1,
        "30 04 00 02 61 00",
        DecodeError::InvalidString {
            packet: PacketType::Publish,
            source: StringError::NullCharacter,
        },
        ReasonCode::MalformedPacket,
    );
    // In a client identifier.
    rejects(
        V3_1_1,
        "10 0E 00 04 4D 51 54 54 04 02 00 3C 00 02 61 00",
        DecodeError::InvalidString {
            packet: PacketType::Connect,
            source: StringError::NullCharacter,
        },
        ReasonCode::MalformedPacket,
    );
    // In a User Property value.
    rejects(
        V5,
        "E0 09 00 07 26 00 01 6B 00 01 00",
        DecodeError::InvalidString {
            packet: PacketType::Disconnect,
            source: StringError::NullCharacter,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn ill_formed_utf8_in_topic_is_malformed() {
    // [MQTT-1.5.4-1]: ED A0 80 encodes the UTF-16 surrogate U+D800; C0 80 is an overlong NUL;
    // FF never occurs in UTF-8.
    for raw in ["ED A0 80", "C0 80 41", "FF 41 41"] {
        rejects(
            V3_1_1,
            &format!("30 05 00 03 {raw}"),
            DecodeError::InvalidString {
                packet: PacketType::Publish,
                source: StringError::InvalidUtf8,
            },
            ReasonCode::MalformedPacket,
        );
    }
}

// ----- CONNECT -----

#[track_caller]
fn assert_connect_flags_error(version: ProtocolVersion, bytes: &str, flags: u8, rule_id: &str) {
    let err = decode_err(version, bytes);
    assert!(
        matches!(
            err,
            DecodeError::InvalidConnectFlags { flags: f, rule } if f == flags && rule.contains(rule_id)
        ),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn connect_reserved_flag_bit_is_malformed() {
    // [MQTT-3.1.2-3]
    assert_connect_flags_error(
        V3_1_1,
        "10 0C 00 04 4D 51 54 54 04 03 00 3C 00 00",
        0x03,
        "MQTT-3.1.2-3",
    );
    assert_connect_flags_error(
        V5,
        "10 0D 00 04 4D 51 54 54 05 01 00 3C 00 00 00",
        0x01,
        "MQTT-3.1.2-3",
    );
}

#[test]
fn connect_will_qos_3_is_malformed() {
    // [MQTT-3.1.2-12]: Will QoS 3 (0x18) with the will flag (0x04) and clean session (0x02).
    assert_connect_flags_error(
        V3_1_1,
        "10 12 00 04 4D 51 54 54 04 1E 00 3C 00 00 00 01 77 00 01 78",
        0x1E,
        "QoS 3",
    );
}

#[test]
fn connect_will_retain_or_qos_without_will_flag_is_malformed() {
    // Will Retain without will [MQTT-3.1.2-13]; Will QoS without will [MQTT-3.1.2-11].
    assert_connect_flags_error(
        V3_1_1,
        "10 0C 00 04 4D 51 54 54 04 22 00 3C 00 00",
        0x22,
        "without a will",
    );
    assert_connect_flags_error(
        V5,
        "10 0D 00 04 4D 51 54 54 05 0A 00 3C 00 00 00",
        0x0A,
        "without a will",
    );
}

#[test]
fn connect_v3_1_1_password_without_username_is_malformed() {
    // [MQTT-3.1.2-22] (3.1.1). The same flags are accepted in 5.0, see
    // connect_v5_allows_password_without_username.
    assert_connect_flags_error(
        V3_1_1,
        "10 10 00 04 4D 51 54 54 04 42 00 3C 00 00 00 02 70 77",
        0x42,
        "MQTT-3.1.2-22",
    );
}

#[test]
fn connect_unknown_protocol_name_is_rejected() {
    // [MQTT-3.1.2-1]
    rejects(
        V5,
        "10 0C 00 04 4D 51 54 58 04 02 00 3C 00 00",
        DecodeError::InvalidProtocolName,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn connect_unsupported_protocol_level_maps_to_0x84() {
    // [MQTT-3.1.2-2]: "MQTT" level 6, and a name/level mismatch ("MQIsdp" level 4).
    rejects(
        V5,
        "10 0D 00 04 4D 51 54 54 06 02 00 3C 00 00 00",
        DecodeError::UnsupportedProtocolVersion(6),
        ReasonCode::UnsupportedProtocolVersion,
    );
    rejects(
        V5,
        "10 0E 00 06 4D 51 49 73 64 70 04 02 00 3C 00 00",
        DecodeError::UnsupportedProtocolVersion(4),
        ReasonCode::UnsupportedProtocolVersion,
    );
    assert_eq!(ReasonCode::UnsupportedProtocolVersion as u8, 0x84);
    // 3.1.1 servers answer with return code 1.
    assert_eq!(ReasonCode::UnsupportedProtocolVersion.to_v3_connack(), 1);
}

// ----- AUTH before 5.0 -----

#[test]
fn auth_before_v5_is_rejected() {
    for v in [V3_1, V3_1_1] {
        rejects(
            v,
            "F0 00",
            DecodeError::AuthBeforeV5,
            ReasonCode::ProtocolError,
        );
        // Rejected from the first byte alone.
        assert_eq!(
            parse_header(&[0xF0], v, MAX),
            Err(DecodeError::AuthBeforeV5)
        );
    }
}

// ----- Length mismatches -----

#[test]
fn body_ending_mid_field_is_truncated() {
    let cases = [
        // Topic length 5 but one byte follows.
        (V3_1_1, "30 03 00 05 61", PacketType::Publish),
        // CONNECT ends inside the keep alive.
        (
            V3_1_1,
            "10 09 00 04 4D 51 54 54 04 02 00",
            PacketType::Connect,
        ),
        // CONNECT ends before the client identifier.
        (
            V3_1_1,
            "10 0A 00 04 4D 51 54 54 04 02 00 3C",
            PacketType::Connect,
        ),
        // SUBSCRIBE filter without its options byte.
        (V3_1_1, "82 05 00 01 00 01 61", PacketType::Subscribe),
        // PUBACK with a one-byte packet identifier.
        (V3_1_1, "40 01 00", PacketType::PubAck),
        // CONNACK with only the flags byte.
        (V3_1_1, "20 01 00", PacketType::ConnAck),
        // 5.0 CONNACK without its property length.
        (V5, "20 02 00 00", PacketType::ConnAck),
        // Property length 5 but one byte follows.
        (V5, "40 05 00 01 10 05 1F", PacketType::PubAck),
        // Message Expiry Interval needs four bytes, the property block has one.
        (V5, "30 06 00 01 74 02 02 00", PacketType::Publish),
        // Property length whose continuation byte is missing.
        (V5, "30 04 00 01 74 80", PacketType::Publish),
        // SUBACK / UNSUBACK without any reason code.
        (V3_1_1, "90 02 00 01", PacketType::SubAck),
        (V5, "B0 03 00 01 00", PacketType::UnsubAck),
    ];
    for (v, bytes, packet) in cases {
        rejects(
            v,
            bytes,
            DecodeError::Truncated { packet },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn bytes_after_the_last_field_are_trailing_bytes() {
    let cases = [
        (V3_1_1, "C0 01 00", PacketType::PingReq, 1),
        (V5, "D0 02 00 00", PacketType::PingResp, 2),
        (V3_1_1, "40 03 00 01 00", PacketType::PubAck, 1),
        (V3_1_1, "B0 03 00 03 00", PacketType::UnsubAck, 1),
        (V3_1_1, "20 03 00 00 00", PacketType::ConnAck, 1),
        (V3_1_1, "E0 01 00", PacketType::Disconnect, 1),
        (
            V3_1_1,
            "10 0D 00 04 4D 51 54 54 04 02 00 3C 00 00 FF",
            PacketType::Connect,
            1,
        ),
        // 5.0 PUBACK: properties end before the remaining length does.
        (V5, "40 05 00 01 10 00 AA", PacketType::PubAck, 1),
    ];
    for (v, bytes, packet, extra) in cases {
        rejects(
            v,
            bytes,
            DecodeError::TrailingBytes { packet, extra },
            ReasonCode::MalformedPacket,
        );
    }
}

// ----- Reason codes -----

#[test]
fn reason_code_not_allowed_in_the_packet_is_malformed() {
    let cases = [
        // 0x04 (Disconnect with Will) exists but not in PUBACK.
        ("40 03 00 01 04", PacketType::PubAck, 0x04),
        // 0x10 (No matching subscribers) is PUBACK/PUBREC only, not PUBREL.
        ("62 03 00 01 10", PacketType::PubRel, 0x10),
        // 0x03 is not a reason code at all.
        ("40 03 00 01 03", PacketType::PubAck, 0x03),
        ("70 03 00 01 80", PacketType::PubComp, 0x80),
        ("90 04 00 01 00 11", PacketType::SubAck, 0x11),
        ("B0 04 00 01 00 01", PacketType::UnsubAck, 0x01),
        ("E0 01 01", PacketType::Disconnect, 0x01),
        ("F0 01 87", PacketType::Auth, 0x87),
        ("20 03 00 04 00", PacketType::ConnAck, 0x04),
    ];
    for (bytes, packet, code) in cases {
        rejects(
            V5,
            bytes,
            DecodeError::InvalidReasonCode { packet, code },
            ReasonCode::MalformedPacket,
        );
    }
    // 3.1.1 return codes: CONNACK 6 and SUBACK 0x03 are not defined.
    rejects(
        V3_1_1,
        "20 02 00 06",
        DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code: 6,
        },
        ReasonCode::MalformedPacket,
    );
    rejects(
        V3_1_1,
        "90 03 00 01 03",
        DecodeError::InvalidReasonCode {
            packet: PacketType::SubAck,
            code: 3,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn every_reason_byte_is_accepted_exactly_where_the_packet_tables_allow_it() {
    // The per-packet reason code tables of MQTT 5.0: CONNACK 3.2.2.2, PUBACK 3.4.2.1,
    // PUBREC 3.5.2.1, PUBREL 3.6.2.1, PUBCOMP 3.7.2.1, SUBACK 3.9.3, UNSUBACK 3.11.3,
    // DISCONNECT 3.14.2.1, AUTH 3.15.2.1. Every other byte is rejected.
    let tables: [(&str, PacketType, &[u8]); 9] = [
        (
            "20 03 00 {} 00",
            PacketType::ConnAck,
            &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
        ),
        (
            "40 03 00 01 {}",
            PacketType::PubAck,
            &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        ),
        (
            "50 03 00 01 {}",
            PacketType::PubRec,
            &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        ),
        ("62 03 00 01 {}", PacketType::PubRel, &[0x00, 0x92]),
        ("70 03 00 01 {}", PacketType::PubComp, &[0x00, 0x92]),
        (
            "90 04 00 01 00 {}",
            PacketType::SubAck,
            &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
        ),
        (
            "B0 04 00 01 00 {}",
            PacketType::UnsubAck,
            &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
        ),
        (
            "E0 01 {}",
            PacketType::Disconnect,
            &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
        ),
        ("F0 02 {} 00", PacketType::Auth, &[0x00, 0x18, 0x19]),
    ];
    for (template, packet, allowed) in tables {
        for code in 0..=255u8 {
            let bytes = template.replace("{}", &format!("{code:02X}"));
            let result = decode_exact(&hex(&bytes), V5);
            if allowed.contains(&code) {
                let reason = match result {
                    Ok(Packet::ConnAck(c)) => c.reason,
                    Ok(
                        Packet::PubAck(r)
                        | Packet::PubRec(r)
                        | Packet::PubRel(r)
                        | Packet::PubComp(r),
                    ) => r.reason,
                    Ok(Packet::SubAck(s)) => s.reasons[0],
                    Ok(Packet::UnsubAck(u)) => u.reasons[0],
                    Ok(Packet::Disconnect(d)) => d.reason,
                    Ok(Packet::Auth(a)) => a.reason,
                    other => panic!("{bytes}: {other:?}"),
                };
                assert_eq!(reason as u8, code, "{bytes}");
            } else {
                assert_eq!(
                    result,
                    Err(DecodeError::InvalidReasonCode { packet, code }),
                    "{bytes}"
                );
            }
        }
    }
}

#[test]
fn every_v3_1_1_return_code_outside_the_tables_is_rejected() {
    // CONNACK return codes 0-5 (3.1.1 section 3.2.2.3); SUBACK 0x00, 0x01, 0x02, 0x80
    // (3.1.1 section 3.9.3).
    for code in 0..=255u8 {
        let connack = decode_exact(&[0x20, 0x02, 0x00, code], V3_1_1);
        assert_eq!(connack.is_ok(), code <= 5, "CONNACK {code:#04x}");
        let suback = decode_exact(&[0x90, 0x03, 0x00, 0x01, code], V3_1_1);
        assert_eq!(
            suback.is_ok(),
            matches!(code, 0x00 | 0x01 | 0x02 | 0x80),
            "SUBACK {code:#04x}"
        );
    }
}

#[test]
fn connack_reserved_flag_bits_are_malformed() {
    // 3.2.2.1: bits 7-1 of the Connect Acknowledge Flags are reserved and must be 0.
    rejects(
        V3_1_1,
        "20 02 02 00",
        DecodeError::InvalidConnAckFlags(0x02),
        ReasonCode::MalformedPacket,
    );
    rejects(
        V5,
        "20 03 81 00 00",
        DecodeError::InvalidConnAckFlags(0x81),
        ReasonCode::MalformedPacket,
    );
}

// ---------------------------------------------------------------------------------------------
// C. Incremental decoding
// ---------------------------------------------------------------------------------------------

/// The 5.0 CONNECT vector of section A (client id "c5", password "pw").
const CONNECT_V5: &str = "10 13 00 04 4D 51 54 54 05 42 00 3C 00 00 02 63 35 00 02 70 77";

#[test]
fn packet_fed_byte_by_byte_is_none_until_the_last_byte_and_buffer_is_untouched() {
    let bytes = hex(CONNECT_V5);
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let result = decode(&mut buf, V5, MAX);
        if i + 1 < bytes.len() {
            assert_eq!(result, Ok(None), "after {} bytes", i + 1);
            assert_eq!(
                &buf[..],
                &bytes[..=i],
                "buffer changed after {} bytes",
                i + 1
            );
        } else {
            let Ok(Some(Packet::Connect(c))) = result else {
                panic!("expected a CONNECT, got {result:?}");
            };
            assert_eq!(c.client_id, "c5");
            assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn partial_packet_followed_by_the_rest_decodes_and_keeps_the_next_packet() {
    let bytes = hex("33 09 00 03 61 2F 62 00 0A 68 69 C0 00");
    let mut buf = BytesMut::from(&bytes[..5]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
    assert_eq!(buf.len(), 5);
    buf.extend_from_slice(&bytes[5..12]);
    assert!(matches!(
        decode(&mut buf, V3_1_1, MAX),
        Ok(Some(Packet::Publish(_)))
    ));
    // The first byte of the next packet stays in the buffer.
    assert_eq!(&buf[..], &[0xC0]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
    buf.extend_from_slice(&bytes[12..]);
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingReq)));
}

#[test]
fn packet_larger_than_maximum_fails_after_the_header_before_the_body() {
    // Remaining length 128 (80 01) + 3 header bytes = 131 bytes > 100; no body bytes present.
    let header = hex("30 80 01");
    let too_large = DecodeError::PacketTooLarge {
        size: 131,
        max: 100,
    };
    assert_eq!(parse_header(&header, V5, 100), Err(too_large.clone()));
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(decode(&mut buf, V5, 100), Err(too_large.clone()));
    assert_eq!(too_large.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(ReasonCode::PacketTooLarge as u8, 0x95);
    // The size check counts the fixed header: exactly at the limit is fine (body still missing).
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(decode(&mut buf, V5, 131), Ok(None));
    assert_eq!(&buf[..], &header[..]);
}

#[test]
fn invalid_first_byte_fails_before_the_remaining_length_arrives() {
    // QoS 3 PUBLISH and a bad PINGREQ are rejected from the first byte alone.
    assert_eq!(parse_header(&[0x36], V5, MAX), Err(DecodeError::InvalidQoS));
    assert_eq!(
        parse_header(&[0xC1], V5, MAX),
        Err(DecodeError::InvalidHeaderFlags {
            packet: PacketType::PingReq,
            flags: 1
        })
    );
    assert_eq!(
        parse_header(&[0x00], V5, MAX),
        Err(DecodeError::ReservedPacketType)
    );
}

#[test]
fn parse_header_returns_none_until_the_remaining_length_is_complete() {
    assert_eq!(parse_header(&[], V5, MAX), Ok(None));
    assert_eq!(parse_header(&hex("30"), V5, MAX), Ok(None));
    assert_eq!(parse_header(&hex("30 80"), V5, MAX), Ok(None));
    assert_eq!(parse_header(&hex("30 FF FF FF"), V5, usize::MAX), Ok(None));
    let mut buf = BytesMut::from(&hex("30 FF FF")[..]);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn parse_header_reports_type_flags_and_lengths() {
    let cases = [
        ("3B 00", PacketType::Publish, 0xB, 2, 0),
        ("30 7F", PacketType::Publish, 0x0, 2, 127),
        ("82 80 01", PacketType::Subscribe, 0x2, 3, 128),
        ("30 FF 7F", PacketType::Publish, 0x0, 3, 16_383),
        ("30 80 80 01", PacketType::Publish, 0x0, 4, 16_384),
        ("30 FF FF 7F", PacketType::Publish, 0x0, 4, 2_097_151),
        ("30 80 80 80 01", PacketType::Publish, 0x0, 5, 2_097_152),
        ("30 FF FF FF 7F", PacketType::Publish, 0x0, 5, 268_435_455),
    ];
    for (bytes, packet_type, flags, header_len, remaining_len) in cases {
        assert_eq!(
            parse_header(&hex(bytes), V5, usize::MAX),
            Ok(Some(FixedHeader {
                packet_type,
                flags,
                header_len,
                remaining_len,
            })),
            "{bytes}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// D. Encoder errors
// ---------------------------------------------------------------------------------------------

/// Encoding fails with `expected` and leaves a non-empty buffer exactly as it was.
#[track_caller]
fn encode_fails(packet: Packet, version: ProtocolVersion, expected: EncodeError) {
    let prefix = hex("C0 00 D0 00");
    let mut buf = BytesMut::from(&prefix[..]);
    assert_eq!(packet.encode(version, &mut buf), Err(expected));
    assert_eq!(&buf[..], &prefix[..], "buffer changed by a failed encode");
}

#[test]
fn encode_publish_packet_id_must_match_qos() {
    // [MQTT-2.2.1-2]: QoS 0 carries no packet identifier, QoS 1/2 one.
    for v in [V3_1_1, V5] {
        encode_fails(
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                ..Publish::new(topic("a"), "x")
            }),
            v,
            EncodeError::PacketIdMismatch,
        );
        encode_fails(
            Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                ..Publish::new(topic("a"), "x")
            }),
            v,
            EncodeError::PacketIdMismatch,
        );
        encode_fails(
            Packet::Publish(Publish {
                packet_id: Some(pid(1)),
                ..Publish::new(topic("a"), "x")
            }),
            v,
            EncodeError::PacketIdMismatch,
        );
    }
}

#[test]
fn encode_auth_before_v5_is_not_in_version() {
    for v in [V3_1, V3_1_1] {
        encode_fails(
            Packet::Auth(Auth::default()),
            v,
            EncodeError::NotInVersion {
                packet: PacketType::Auth,
                version: v,
            },
        );
    }
}

#[test]
fn encode_subscribe_and_unsubscribe_without_filters_is_empty() {
    encode_fails(
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![],
            properties: SubscribeProperties::default(),
        }),
        V5,
        EncodeError::Empty(PacketType::Subscribe),
    );
    encode_fails(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            filters: vec![],
            properties: UnsubscribeProperties::default(),
        }),
        V3_1_1,
        EncodeError::Empty(PacketType::Unsubscribe),
    );
    encode_fails(
        Packet::SubAck(SubAck {
            packet_id: pid(1),
            reasons: vec![],
            properties: AckProperties::default(),
        }),
        V3_1_1,
        EncodeError::Empty(PacketType::SubAck),
    );
}

#[test]
fn encode_will_payload_longer_than_65535_bytes_is_binary_too_long() {
    let will = |len: usize| Will {
        topic: topic("w"),
        payload: Bytes::from(vec![0u8; len]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    for v in [V3_1_1, V5] {
        encode_fails(
            connect(Connect {
                will: Some(will(65_536)),
                ..Connect::new(v, s("c"))
            }),
            v,
            EncodeError::BinaryTooLong(65_536),
        );
        // 65 535 bytes is the largest that fits the two-byte length.
        let packet = connect(Connect {
            will: Some(will(65_535)),
            ..Connect::new(v, s("c"))
        });
        let bytes = encode_to_vec(&packet, v);
        assert_eq!(decode_exact(&bytes, v), Ok(packet));
    }
}

#[test]
fn encode_binary_property_longer_than_65535_bytes_leaves_buffer_unchanged() {
    // Correlation Data is checked while writing; the partial packet must be removed.
    encode_fails(
        Packet::Publish(Publish {
            properties: PublishProperties {
                correlation_data: Some(Bytes::from(vec![0u8; 65_536])),
                ..PublishProperties::default()
            },
            ..Publish::new(topic("a"), "x")
        }),
        V5,
        EncodeError::BinaryTooLong(65_536),
    );
}

#[test]
fn encode_v3_password_without_username_is_rejected() {
    // [MQTT-3.1.2-22] (3.1.1)
    encode_fails(
        connect(Connect {
            password: Some(Bytes::from_static(b"pw")),
            ..Connect::new(V3_1_1, s("c"))
        }),
        V3_1_1,
        EncodeError::PasswordWithoutUsername,
    );
}

/// The bridge flag of 3.x (Mosquitto's `try_private`): the top bit of the protocol level,
/// 0x83 for 3.1 and 0x84 for 3.1.1, both ways; a 5.0 CONNECT never carries it.
#[test]
fn connect_bridge_flag_is_the_top_bit_of_the_level() {
    for v in [ProtocolVersion::V3_1, V3_1_1] {
        let packet = connect(Connect {
            bridge: true,
            ..Connect::new(v, s("bridge"))
        });
        let bytes = encode_to_vec(&packet, v);
        let level = 2 + 2 + v.protocol_name().len();
        assert_eq!(bytes[level], v.level() | 0x80);
        assert_eq!(decode_exact(&bytes, v), Ok(packet));
    }
    let packet = connect(Connect {
        bridge: true,
        ..Connect::new(V5, s("bridge"))
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes[2 + 2 + 4], 5);
}
