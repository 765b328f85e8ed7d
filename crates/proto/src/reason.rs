//! Reason codes (MQTT 5.0 section 2.4) and the MQTT 3.x return codes they map to.

use std::fmt;

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        /// An MQTT 5.0 reason code. `0x00` means Success, Normal Disconnection or Granted QoS 0
        /// depending on the packet; see the associated constants for those aliases.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(u8)]
        pub enum ReasonCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ReasonCode {
            /// The reason code for a byte, or `None` for a value the spec does not define.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $value => Some(Self::$name), )*
                    _ => None,
                }
            }

            /// The spec's name for this code.
            pub const fn description(self) -> &'static str {
                match self {
                    $( Self::$name => $text, )*
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00: Success / Normal disconnection / Granted QoS 0.
    #[default]
    Success = 0x00, "Success";
    /// 0x01: Granted QoS 1.
    GrantedQoS1 = 0x01, "Granted QoS 1";
    /// 0x02: Granted QoS 2.
    GrantedQoS2 = 0x02, "Granted QoS 2";
    /// 0x04: Disconnect with Will Message.
    DisconnectWithWill = 0x04, "Disconnect with Will Message";
    /// 0x10: No matching subscribers.
    NoMatchingSubscribers = 0x10, "No matching subscribers";
    /// 0x11: No subscription existed.
    NoSubscriptionExisted = 0x11, "No subscription existed";
    /// 0x18: Continue authentication.
    ContinueAuthentication = 0x18, "Continue authentication";
    /// 0x19: Re-authenticate.
    ReAuthenticate = 0x19, "Re-authenticate";
    /// 0x80: Unspecified error.
    UnspecifiedError = 0x80, "Unspecified error";
    /// 0x81: Malformed Packet.
    MalformedPacket = 0x81, "Malformed Packet";
    /// 0x82: Protocol Error.
    ProtocolError = 0x82, "Protocol Error";
    /// 0x83: Implementation specific error.
    ImplementationSpecificError = 0x83, "Implementation specific error";
    /// 0x84: Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version";
    /// 0x85: Client Identifier not valid.
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid";
    /// 0x86: Bad User Name or Password.
    BadUserNameOrPassword = 0x86, "Bad User Name or Password";
    /// 0x87: Not authorized.
    NotAuthorized = 0x87, "Not authorized";
    /// 0x88: Server unavailable.
    ServerUnavailable = 0x88, "Server unavailable";
    /// 0x89: Server busy.
    ServerBusy = 0x89, "Server busy";
    /// 0x8A: Banned.
    Banned = 0x8A, "Banned";
    /// 0x8B: Server shutting down.
    ServerShuttingDown = 0x8B, "Server shutting down";
    /// 0x8C: Bad authentication method.
    BadAuthenticationMethod = 0x8C, "Bad authentication method";
    /// 0x8D: Keep Alive timeout.
    KeepAliveTimeout = 0x8D, "Keep Alive timeout";
    /// 0x8E: Session taken over.
    SessionTakenOver = 0x8E, "Session taken over";
    /// 0x8F: Topic Filter invalid.
    TopicFilterInvalid = 0x8F, "Topic Filter invalid";
    /// 0x90: Topic Name invalid.
    TopicNameInvalid = 0x90, "Topic Name invalid";
    /// 0x91: Packet Identifier in use.
    PacketIdentifierInUse = 0x91, "Packet Identifier in use";
    /// 0x92: Packet Identifier not found.
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found";
    /// 0x93: Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded";
    /// 0x94: Topic Alias invalid.
    TopicAliasInvalid = 0x94, "Topic Alias invalid";
    /// 0x95: Packet too large.
    PacketTooLarge = 0x95, "Packet too large";
    /// 0x96: Message rate too high.
    MessageRateTooHigh = 0x96, "Message rate too high";
    /// 0x97: Quota exceeded.
    QuotaExceeded = 0x97, "Quota exceeded";
    /// 0x98: Administrative action.
    AdministrativeAction = 0x98, "Administrative action";
    /// 0x99: Payload format invalid.
    PayloadFormatInvalid = 0x99, "Payload format invalid";
    /// 0x9A: Retain not supported.
    RetainNotSupported = 0x9A, "Retain not supported";
    /// 0x9B: QoS not supported.
    QoSNotSupported = 0x9B, "QoS not supported";
    /// 0x9C: Use another server.
    UseAnotherServer = 0x9C, "Use another server";
    /// 0x9D: Server moved.
    ServerMoved = 0x9D, "Server moved";
    /// 0x9E: Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported";
    /// 0x9F: Connection rate exceeded.
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded";
    /// 0xA0: Maximum connect time.
    MaximumConnectTime = 0xA0, "Maximum connect time";
    /// 0xA1: Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported";
    /// 0xA2: Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported";
}

impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: Self = Self::Success;
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: Self = Self::Success;

    /// True for codes below 0x80 (success or informational).
    pub const fn is_success(self) -> bool {
        (self as u8) < 0x80
    }

    /// True for codes 0x80 and above.
    pub const fn is_error(self) -> bool {
        !self.is_success()
    }

    /// True if `self` may appear in a packet of type `ty` (MQTT 5.0 section 2.4 table 2-6).
    pub fn allowed_in(self, ty: PacketKind) -> bool {
        use ReasonCode::*;
        match ty {
            PacketKind::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            PacketKind::PubAck | PacketKind::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            PacketKind::PubRel | PacketKind::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            PacketKind::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketKind::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            PacketKind::Disconnect => !matches!(
                self,
                GrantedQoS1
                    | GrantedQoS2
                    | NoMatchingSubscribers
                    | NoSubscriptionExisted
                    | ContinueAuthentication
                    | ReAuthenticate
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | ServerUnavailable
                    | Banned
                    | BadAuthenticationMethod
                    | PacketIdentifierNotFound
                    | PacketIdentifierInUse
            ),
            PacketKind::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
        }
    }

    /// The MQTT 3.x CONNACK return code (0–5) closest to this reason code.
    pub const fn to_v3_connack(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::UnsupportedProtocolVersion => 1,
            Self::ClientIdentifierNotValid => 2,
            Self::BadUserNameOrPassword => 4,
            Self::NotAuthorized | Self::Banned | Self::BadAuthenticationMethod => 5,
            _ => 3,
        }
    }

    /// The reason code for an MQTT 3.x CONNACK return code.
    pub const fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::UnsupportedProtocolVersion,
            2 => Self::ClientIdentifierNotValid,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code for this reason code: the granted QoS or 0x80.
    pub const fn to_v3_suback(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::GrantedQoS1 => 0x01,
            Self::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }

    /// The reason code for an MQTT 3.1.1 SUBACK return code.
    pub const fn from_v3_suback(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Self::Success,
            0x01 => Self::GrantedQoS1,
            0x02 => Self::GrantedQoS2,
            0x80 => Self::UnspecifiedError,
            _ => return None,
        })
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.description(), *self as u8)
    }
}

/// The packets that carry a reason code, for [`ReasonCode::allowed_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// CONNACK.
    ConnAck,
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
    /// SUBACK.
    SubAck,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_byte_round_trips() {
        let defined: Vec<u8> = (0..=255u8)
            .filter(|b| ReasonCode::from_u8(*b).is_some())
            .collect();
        assert_eq!(defined.len(), 43);
        for b in defined {
            assert_eq!(ReasonCode::from_u8(b).map(|c| c as u8), Some(b));
        }
    }

    #[test]
    fn v3_connack_codes_round_trip() {
        for code in 0..=5 {
            let rc = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(rc.to_v3_connack(), code);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
    }

    #[test]
    fn disconnect_allows_server_shutting_down_but_not_granted_qos() {
        assert!(ReasonCode::ServerShuttingDown.allowed_in(PacketKind::Disconnect));
        assert!(ReasonCode::DisconnectWithWill.allowed_in(PacketKind::Disconnect));
        assert!(!ReasonCode::GrantedQoS1.allowed_in(PacketKind::Disconnect));
        assert!(!ReasonCode::GrantedQoS1.allowed_in(PacketKind::PubAck));
    }
}
