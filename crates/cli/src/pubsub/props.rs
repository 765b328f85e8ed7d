//! `-D COMMAND PROPERTY VALUE` (and `-D COMMAND user-property NAME VALUE`): MQTT 5.0
//! properties, named as in `mosquitto_pub` / `mosquitto_sub`.
//!
//! Supported:
//! - `connect`: session-expiry-interval, receive-maximum, maximum-packet-size,
//!   topic-alias-maximum, user-property
//! - `publish` (pub): payload-format-indicator, message-expiry-interval, content-type,
//!   response-topic, correlation-data, user-property
//! - `subscribe` (sub): subscription-identifier, user-property
//! - `will`: will-delay-interval, payload-format-indicator, message-expiry-interval,
//!   content-type, response-topic, correlation-data, user-property
//! - `disconnect`: session-expiry-interval, reason-string, user-property
//!
//! Anything else is an error that says why (unknown, not a property of that packet, or not
//! supported by the client).

use std::num::NonZeroU32;

use bytes::Bytes;
use sagitta_client::proto::MqttStr;
use sagitta_client::{
    DisconnectProperties, PublishProperties, SubscribeProperties, SubscriptionId, TopicName,
    WillProperties,
};

/// The help text listing the supported properties.
pub const PROPERTIES_HELP: &str = "\
MQTT 5 properties (-D COMMAND PROPERTY VALUE; -D COMMAND user-property NAME VALUE):
  connect     session-expiry-interval receive-maximum maximum-packet-size
              topic-alias-maximum user-property
  publish     payload-format-indicator message-expiry-interval content-type
              response-topic correlation-data user-property            (pub)
  subscribe   subscription-identifier user-property                     (sub)
  will        will-delay-interval payload-format-indicator message-expiry-interval
              content-type response-topic correlation-data user-property
  disconnect  session-expiry-interval reason-string user-property
-D selects MQTT 5 when -V is not given.";

/// The packet a property goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT.
    Connect,
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// The will (in CONNECT).
    Will,
    /// DISCONNECT.
    Disconnect,
}

impl Command {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Will => "will",
            Self::Disconnect => "disconnect",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "connect" => Ok(Self::Connect),
            "publish" => Ok(Self::Publish),
            "subscribe" => Ok(Self::Subscribe),
            "will" => Ok(Self::Will),
            "disconnect" => Ok(Self::Disconnect),
            "unsubscribe" | "auth" | "puback" | "pubrec" | "pubrel" | "pubcomp" => {
                Err(format!("{s} properties are not supported"))
            }
            _ => Err(format!(
                "unknown command {s:?} (expected connect, publish, subscribe, will or disconnect)"
            )),
        }
    }
}

/// CONNECT properties the client builder takes.
#[derive(Debug, Default)]
pub struct ConnectProps {
    /// Session Expiry Interval.
    pub session_expiry: Option<u32>,
    /// Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// User Properties.
    pub user_properties: Vec<(String, String)>,
}

/// Every `-D` given, by packet.
#[derive(Debug, Default)]
pub struct Properties {
    /// The commands that appeared, in order of first use.
    pub used: Vec<Command>,
    /// CONNECT.
    pub connect: ConnectProps,
    /// The will.
    pub will: WillProperties,
    /// PUBLISH.
    pub publish: PublishProperties,
    /// SUBSCRIBE.
    pub subscribe: SubscribeProperties,
    /// DISCONNECT.
    pub disconnect: DisconnectProperties,
}

/// Every property name mosquitto knows, to tell "wrong packet" from "unknown".
const KNOWN: [&str; 23] = [
    "payload-format-indicator",
    "message-expiry-interval",
    "content-type",
    "response-topic",
    "correlation-data",
    "subscription-identifier",
    "session-expiry-interval",
    "assigned-client-identifier",
    "server-keep-alive",
    "authentication-method",
    "authentication-data",
    "request-problem-information",
    "will-delay-interval",
    "request-response-information",
    "response-information",
    "server-reference",
    "reason-string",
    "receive-maximum",
    "topic-alias-maximum",
    "topic-alias",
    "maximum-qos",
    "retain-available",
    "maximum-packet-size",
];

/// Parses every `-D` occurrence.
pub fn parse(specs: &[Vec<String>]) -> Result<Properties, String> {
    let mut props = Properties::default();
    for spec in specs {
        props
            .add(spec)
            .map_err(|e| format!("-D {}: {e}", spec.join(" ")))?;
    }
    Ok(props)
}

/// The `-D` flag, one list of values per occurrence. Written by hand because clap's derive
/// cannot group the values of a repeated multi-value flag (`Vec<Vec<String>>` needs an
/// unstable feature); `ArgMatches::get_occurrences` can.
#[derive(Debug, Clone, Default)]
pub struct PropertyArgs(pub Vec<Vec<String>>);

const PROPERTY_ID: &str = "property";

impl clap::FromArgMatches for PropertyArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let occurrences = matches
            .try_get_occurrences::<String>(PROPERTY_ID)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
        Ok(Self(
            occurrences
                .map(|o| o.map(|values| values.cloned().collect()).collect())
                .unwrap_or_default(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for PropertyArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(PROPERTY_ID)
                .short('D')
                .long("property")
                .value_names(["COMMAND", "PROPERTY", "VALUE"])
                .num_args(3..=4)
                .action(clap::ArgAction::Append)
                .value_parser(clap::value_parser!(String))
                .help(
                    "MQTT 5 property, as in mosquitto: -D COMMAND PROPERTY VALUE, or \
                     -D COMMAND user-property NAME VALUE (repeatable; see below)",
                ),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The fields PUBLISH and the will share.
struct MessageFields<'a> {
    payload_format_indicator: &'a mut Option<bool>,
    message_expiry_interval: &'a mut Option<u32>,
    content_type: &'a mut Option<MqttStr>,
    response_topic: &'a mut Option<TopicName>,
    correlation_data: &'a mut Option<Bytes>,
}

impl Properties {
    fn add(&mut self, spec: &[String]) -> Result<(), String> {
        let (command, name, values) = match spec {
            [c, n, rest @ ..] => (Command::parse(c)?, n.to_ascii_lowercase(), rest),
            _ => return Err("expected COMMAND PROPERTY VALUE".into()),
        };
        if name == "user-property" {
            let [k, v] = values else {
                return Err("user-property takes a name and a value".into());
            };
            let pair = (string(k)?, string(v)?);
            match command {
                Command::Connect => self
                    .connect
                    .user_properties
                    .push((pair.0.to_string(), pair.1.to_string())),
                Command::Publish => self.publish.user_properties.push(pair),
                Command::Subscribe => self.subscribe.user_properties.push(pair),
                Command::Will => self.will.user_properties.push(pair),
                Command::Disconnect => self.disconnect.user_properties.push(pair),
            }
        } else {
            let [value] = values else {
                return Err(format!("{name} takes one value"));
            };
            self.add_one(command, &name, value)?;
        }
        if !self.used.contains(&command) {
            self.used.push(command);
        }
        Ok(())
    }

    fn add_one(&mut self, command: Command, name: &str, value: &str) -> Result<(), String> {
        let message = match command {
            Command::Publish => Some(MessageFields {
                payload_format_indicator: &mut self.publish.payload_format_indicator,
                message_expiry_interval: &mut self.publish.message_expiry_interval,
                content_type: &mut self.publish.content_type,
                response_topic: &mut self.publish.response_topic,
                correlation_data: &mut self.publish.correlation_data,
            }),
            Command::Will => Some(MessageFields {
                payload_format_indicator: &mut self.will.payload_format_indicator,
                message_expiry_interval: &mut self.will.message_expiry_interval,
                content_type: &mut self.will.content_type,
                response_topic: &mut self.will.response_topic,
                correlation_data: &mut self.will.correlation_data,
            }),
            _ => None,
        };
        if let Some(m) = message {
            match name {
                "payload-format-indicator" => {
                    let v = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err("expected 0 (bytes) or 1 (UTF-8 text)".into()),
                    };
                    return set(m.payload_format_indicator, v);
                }
                "message-expiry-interval" => return set(m.message_expiry_interval, number(value)?),
                "content-type" => return set(m.content_type, string(value)?),
                "response-topic" => {
                    let topic = TopicName::new(value).map_err(|e| e.to_string())?;
                    return set(m.response_topic, topic);
                }
                "correlation-data" => {
                    if value.len() > usize::from(u16::MAX) {
                        return Err("longer than 65535 bytes".into());
                    }
                    return set(m.correlation_data, Bytes::from(value.to_owned()));
                }
                _ => {}
            }
        }
        match (command, name) {
            (Command::Will, "will-delay-interval") => {
                set(&mut self.will.will_delay_interval, number(value)?)
            }
            (Command::Connect, "session-expiry-interval") => set(
                &mut self.connect.session_expiry,
                super::common::parse_expiry(value)?,
            ),
            (Command::Connect, "receive-maximum") => {
                let n: u16 = number(value)?;
                if n == 0 {
                    return Err("must be 1 or more".into());
                }
                set(&mut self.connect.receive_maximum, n)
            }
            (Command::Connect, "maximum-packet-size") => {
                let n = NonZeroU32::new(number(value)?).ok_or("must be 1 or more")?;
                set(&mut self.connect.maximum_packet_size, n.get())
            }
            (Command::Connect, "topic-alias-maximum") => {
                set(&mut self.connect.topic_alias_maximum, number(value)?)
            }
            (Command::Subscribe, "subscription-identifier") => {
                let id = SubscriptionId::new(number(value)?).ok_or("expected 1 to 268435455")?;
                set(&mut self.subscribe.subscription_identifier, id)
            }
            (Command::Disconnect, "session-expiry-interval") => set(
                &mut self.disconnect.session_expiry_interval,
                super::common::parse_expiry(value)?,
            ),
            (Command::Disconnect, "reason-string") => {
                set(&mut self.disconnect.reason_string, string(value)?)
            }
            (Command::Publish, "topic-alias") => {
                Err("topic aliases are chosen by the client itself".into())
            }
            (
                Command::Connect,
                "request-problem-information"
                | "request-response-information"
                | "authentication-method"
                | "authentication-data",
            ) => Err("not supported yet".into()),
            (c, n) if KNOWN.contains(&n) => Err(format!("{n} is not a {} property", c.name())),
            (_, n) => Err(format!("unknown property {n:?}")),
        }
    }
}

/// Sets a property given at most once.
fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err("given twice".into());
    }
    *slot = Some(value);
    Ok(())
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a number in range"))
}

fn string(value: &str) -> Result<MqttStr, String> {
    MqttStr::new(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(specs: &[&str]) -> Result<Properties, String> {
        let specs: Vec<Vec<String>> = specs
            .iter()
            .map(|s| s.split(' ').map(str::to_owned).collect())
            .collect();
        parse(&specs)
    }

    #[test]
    fn the_issue_list_parses() {
        let p = parse_all(&[
            "publish user-property k v",
            "publish user-property k w",
            "publish message-expiry-interval 60",
            "PUBLISH content-type text/plain",
            "publish response-topic re/ply",
            "publish correlation-data abc",
            "publish payload-format-indicator 1",
            "connect session-expiry-interval 30",
            "subscribe user-property a b",
            "subscribe subscription-identifier 7",
            "will will-delay-interval 5",
            "disconnect reason-string bye",
        ])
        .unwrap();
        assert_eq!(p.publish.user_properties.len(), 2);
        assert_eq!(p.publish.message_expiry_interval, Some(60));
        assert_eq!(p.publish.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            p.publish.response_topic.as_ref().map(|t| t.as_str()),
            Some("re/ply")
        );
        assert_eq!(p.publish.correlation_data.as_deref(), Some(&b"abc"[..]));
        assert_eq!(p.publish.payload_format_indicator, Some(true));
        assert_eq!(p.connect.session_expiry, Some(30));
        assert_eq!(
            p.subscribe.subscription_identifier.map(|i| i.get()),
            Some(7)
        );
        assert_eq!(p.will.will_delay_interval, Some(5));
        assert_eq!(
            p.used,
            [
                Command::Publish,
                Command::Connect,
                Command::Subscribe,
                Command::Will,
                Command::Disconnect
            ]
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |s: &str| parse_all(&[s]).unwrap_err();
        assert!(
            e("publish bogus 1").contains("unknown property"),
            "{}",
            e("publish bogus 1")
        );
        assert!(e("publish will-delay-interval 1").contains("not a publish property"));
        assert!(e("connect content-type x").contains("not a connect property"));
        assert!(e("bogus content-type x").contains("unknown command"));
        assert!(e("publish topic-alias 3").contains("chosen by the client"));
        assert!(e("publish message-expiry-interval x").contains("not a number"));
        assert!(e("publish user-property k").contains("name and a value"));
        assert!(e("publish content-type a b").contains("takes one value"));
        assert!(e("subscribe subscription-identifier 0").contains("1 to 268435455"));
        assert!(e("publish response-topic a/+").starts_with("-D publish response-topic a/+: "));
        let twice = parse_all(&["publish content-type a", "publish content-type b"]);
        assert!(twice.unwrap_err().contains("given twice"));
    }
}
