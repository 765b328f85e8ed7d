//! How `sagitta sub` prints a message: the default (`%p`), `-v` (`%t %p`) and `-F FORMAT`,
//! a subset of `mosquitto_sub`'s format language. Times are UTC.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use sagitta_client::Message;

/// The `-F` section of `sagitta sub --help`.
pub const FORMAT_HELP: &str = "\
Output format (-F), as in mosquitto_sub; a newline follows each message unless -N:
  %t topic            %p payload (raw bytes)   %x / %X payload in hex (lower / upper case)
  %l payload length   %q QoS                   %r retain flag (0 or 1)
  %C content type     %D correlation data      %E message expiry interval
  %F payload format   %R response topic        %S subscription identifiers (comma-separated)
  %P user properties (name:value, space-separated)
  %I ISO-8601 time    %U Unix time with nanoseconds
  %j JSON of the message (payload as a string)  %J the same with a JSON payload inserted as is
  %% a literal %
  Flags and widths as in printf: %-20t (left-aligned), %05l (zero-padded), %.10t (at most 10)
  @Y @m @d @H @M @S @N @s @F @T @z  UTC date and time parts (strftime), @@ a literal @
  \\n \\t \\r \\0 \\a \\e \\v \\\\  escapes
Not available: %m (message id) and %A (topic alias: the client resolves aliases).";

/// A parsed output format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Text(Vec<u8>),
    Field(Field, Spec),
    Time(char),
}

/// Flags, width and precision of a `%` conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Topic,
    Payload,
    Hex,
    HexUpper,
    Length,
    Qos,
    Retain,
    ContentType,
    CorrelationData,
    ExpiryInterval,
    PayloadFormat,
    UserProperties,
    ResponseTopic,
    SubscriptionIds,
    Iso,
    Unix,
    Json,
    JsonRaw,
}

impl Field {
    fn from_char(c: char) -> Result<Self, String> {
        Ok(match c {
            't' => Self::Topic,
            'p' => Self::Payload,
            'x' => Self::Hex,
            'X' => Self::HexUpper,
            'l' => Self::Length,
            'q' => Self::Qos,
            'r' => Self::Retain,
            'C' => Self::ContentType,
            'D' => Self::CorrelationData,
            'E' => Self::ExpiryInterval,
            'F' => Self::PayloadFormat,
            'P' => Self::UserProperties,
            'R' => Self::ResponseTopic,
            'S' => Self::SubscriptionIds,
            'I' => Self::Iso,
            'U' => Self::Unix,
            'j' => Self::Json,
            'J' => Self::JsonRaw,
            'm' => {
                return Err(
                    "%m (message id) is not available: the client does not expose \
                            packet ids"
                        .into(),
                );
            }
            'A' => {
                return Err(
                    "%A (topic alias) is not available: the client resolves topic aliases".into(),
                );
            }
            c => return Err(format!("unknown conversion %{c} (see --help)")),
        })
    }

    /// Numbers: zero padding applies, precision does not.
    fn numeric(self) -> bool {
        matches!(
            self,
            Self::Length
                | Self::Qos
                | Self::Retain
                | Self::ExpiryInterval
                | Self::PayloadFormat
                | Self::SubscriptionIds
                | Self::Hex
                | Self::HexUpper
        )
    }
}

const TIME_CHARS: &str = "YmdHMSNsFTz";

impl Format {
    /// The default output: the payload.
    pub fn payload() -> Self {
        Self {
            items: vec![Item::Field(Field::Payload, Spec::default())],
        }
    }

    /// `-v`: topic, a space, the payload.
    pub fn verbose() -> Self {
        Self {
            items: vec![
                Item::Field(Field::Topic, Spec::default()),
                Item::Text(b" ".to_vec()),
                Item::Field(Field::Payload, Spec::default()),
            ],
        }
    }

    /// Parses a `-F` format string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        let mut text = Vec::new();
        let mut chars = s.chars().peekable();
        let flush = |text: &mut Vec<u8>, items: &mut Vec<Item>| {
            if !text.is_empty() {
                items.push(Item::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    if chars.peek() == Some(&'%') {
                        chars.next();
                        text.push(b'%');
                        continue;
                    }
                    let mut spec = Spec::default();
                    while let Some(&f) = chars.peek() {
                        match f {
                            '-' => spec.left = true,
                            '0' => spec.zero = true,
                            _ => break,
                        }
                        chars.next();
                    }
                    spec.width = digits(&mut chars).unwrap_or(0);
                    if chars.peek() == Some(&'.') {
                        chars.next();
                        spec.precision = Some(digits(&mut chars).unwrap_or(0));
                    }
                    let conv = chars.next().ok_or("the format ends inside a % sequence")?;
                    flush(&mut text, &mut items);
                    items.push(Item::Field(Field::from_char(conv)?, spec));
                }
                '@' => match chars.next() {
                    Some('@') => text.push(b'@'),
                    Some(t) if TIME_CHARS.contains(t) => {
                        flush(&mut text, &mut items);
                        items.push(Item::Time(t));
                    }
                    Some(t) => {
                        return Err(format!(
                            "@{t} is not supported (time parts: @Y @m @d @H @M @S @N @s @F @T \
                             @z; @@ for a literal @)"
                        ));
                    }
                    None => return Err("the format ends inside an @ sequence".into()),
                },
                '\\' => {
                    let byte = match chars.peek() {
                        Some('\\') => Some(b'\\'),
                        Some('0') => Some(0),
                        Some('a') => Some(0x07),
                        Some('e') => Some(0x1B),
                        Some('n') => Some(b'\n'),
                        Some('r') => Some(b'\r'),
                        Some('t') => Some(b'\t'),
                        Some('v') => Some(0x0B),
                        _ => None,
                    };
                    match byte {
                        Some(b) => {
                            chars.next();
                            text.push(b);
                        }
                        None => text.push(b'\\'),
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        flush(&mut text, &mut items);
        Ok(Self { items })
    }

    /// Appends `message` as formatted to `out`. Returns a warning for stderr when part of it
    /// could not be printed (`%J` with a payload that is not JSON).
    pub fn render(&self, message: &Message, now: SystemTime, out: &mut Vec<u8>) -> Option<String> {
        let mut warning = None;
        let mut value = Vec::new();
        for item in &self.items {
            match item {
                Item::Text(t) => out.extend_from_slice(t),
                Item::Time(c) => out.extend_from_slice(time_part(*c, now).as_bytes()),
                Item::Field(field, spec) => {
                    value.clear();
                    if let Err(w) = field_value(*field, message, now, &mut value) {
                        warning = Some(w);
                    }
                    pad(&value, *spec, field.numeric(), out);
                }
            }
        }
        warning
    }
}

fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
    }
    n
}

fn pad(value: &[u8], spec: Spec, numeric: bool, out: &mut Vec<u8>) {
    let value = match spec.precision {
        Some(p) if !numeric && value.len() > p => &value[..p],
        _ => value,
    };
    let fill = spec.width.saturating_sub(value.len());
    if spec.left {
        out.extend_from_slice(value);
        out.resize(out.len() + fill, b' ');
    } else {
        let c = if spec.zero && numeric { b'0' } else { b' ' };
        out.resize(out.len() + fill, c);
        out.extend_from_slice(value);
    }
}

fn field_value(
    field: Field,
    m: &Message,
    now: SystemTime,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let p = &m.properties;
    let mut text = String::new();
    match field {
        Field::Topic => out.extend_from_slice(m.topic.as_str().as_bytes()),
        Field::Payload => out.extend_from_slice(&m.payload),
        Field::Hex => m.payload.iter().for_each(|b| {
            let _ = write!(text, "{b:02x}");
        }),
        Field::HexUpper => m.payload.iter().for_each(|b| {
            let _ = write!(text, "{b:02X}");
        }),
        Field::Length => text = m.payload.len().to_string(),
        Field::Qos => text = (m.qos as u8).to_string(),
        Field::Retain => text = u8::from(m.retain).to_string(),
        Field::ContentType => text = p.content_type.as_deref().unwrap_or("").to_owned(),
        Field::CorrelationData => {
            out.extend_from_slice(p.correlation_data.as_deref().unwrap_or(&[]));
        }
        Field::ExpiryInterval => {
            text = p
                .message_expiry_interval
                .map(|e| e.to_string())
                .unwrap_or_default();
        }
        Field::PayloadFormat => {
            text = p
                .payload_format_indicator
                .map(|f| u8::from(f).to_string())
                .unwrap_or_default();
        }
        Field::UserProperties => {
            let pairs: Vec<String> = p
                .user_properties
                .iter()
                .map(|(k, v)| format!("{}:{}", k.as_str(), v.as_str()))
                .collect();
            text = pairs.join(" ");
        }
        Field::ResponseTopic => {
            text = p
                .response_topic
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default();
        }
        Field::SubscriptionIds => {
            let ids: Vec<String> = p
                .subscription_identifiers
                .iter()
                .map(|i| i.get().to_string())
                .collect();
            text = ids.join(",");
        }
        Field::Iso => text = iso(now, false),
        Field::Unix => {
            let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            text = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
        }
        Field::Json => json(m, now, false, out)?,
        Field::JsonRaw => json(m, now, true, out)?,
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// mosquitto's `%j` / `%J` object: tst, topic, qos, retain, payloadlen, properties (5.0, when
/// any), payload (`null` when empty). `raw` inserts the payload as JSON, which it must be.
fn json(m: &Message, now: SystemTime, raw: bool, out: &mut Vec<u8>) -> Result<(), String> {
    if raw
        && !m.payload.is_empty()
        && serde_json::from_slice::<serde::de::IgnoredAny>(&m.payload).is_err()
    {
        return Err(format!(
            "message payload is not valid JSON on topic {}",
            m.topic.as_str()
        ));
    }
    let mut s = String::from("{\"tst\":");
    json_str(&iso(now, true), &mut s);
    s.push_str(",\"topic\":");
    json_str(m.topic.as_str(), &mut s);
    let _ = write!(
        s,
        ",\"qos\":{},\"retain\":{},\"payloadlen\":{}",
        m.qos as u8,
        u8::from(m.retain),
        m.payload.len()
    );
    let p = &m.properties;
    let mut props = Vec::new();
    if let Some(f) = p.payload_format_indicator {
        props.push(format!("\"payload-format-indicator\":{}", u8::from(f)));
    }
    if let Some(e) = p.message_expiry_interval {
        props.push(format!("\"message-expiry-interval\":{e}"));
    }
    let mut string_prop = |name: &str, value: &str| {
        let mut v = String::new();
        json_str(value, &mut v);
        props.push(format!("\"{name}\":{v}"));
    };
    if let Some(c) = &p.content_type {
        string_prop("content-type", c.as_str());
    }
    if let Some(t) = &p.response_topic {
        string_prop("response-topic", t.as_str());
    }
    if let Some(d) = &p.correlation_data {
        string_prop("correlation-data", &String::from_utf8_lossy(d));
    }
    match p.subscription_identifiers.as_slice() {
        [] => {}
        [one] => props.push(format!("\"subscription-identifier\":{}", one.get())),
        many => {
            let ids: Vec<String> = many.iter().map(|i| i.get().to_string()).collect();
            props.push(format!("\"subscription-identifier\":[{}]", ids.join(",")));
        }
    }
    if !p.user_properties.is_empty() {
        let mut u = String::from("\"user-properties\":{");
        for (i, (k, v)) in p.user_properties.iter().enumerate() {
            if i > 0 {
                u.push(',');
            }
            json_str(k.as_str(), &mut u);
            u.push(':');
            json_str(v.as_str(), &mut u);
        }
        u.push('}');
        props.push(u);
    }
    if !props.is_empty() {
        let _ = write!(s, ",\"properties\":{{{}}}", props.join(","));
    }
    s.push_str(",\"payload\":");
    out.extend_from_slice(s.as_bytes());
    if m.payload.is_empty() {
        out.extend_from_slice(b"null");
    } else if raw {
        out.extend_from_slice(&m.payload);
    } else {
        let mut v = String::new();
        json_str(&String::from_utf8_lossy(&m.payload), &mut v);
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
    Ok(())
}

/// Appends `s` as a quoted JSON string.
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// UTC date and time: `2016-08-10T08:47:38+0000`, or with microseconds and `Z`
/// (`2016-08-10T08:47:38.123456Z`, the JSON `tst`).
fn iso(now: SystemTime, micros: bool) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = civil(d.as_secs());
    if micros {
        format!(
            "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
            d.subsec_micros()
        )
    } else {
        format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}+0000")
    }
}

/// One `@` time part (UTC).
fn time_part(c: char, now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = civil(d.as_secs());
    match c {
        'Y' => format!("{y:04}"),
        'm' => format!("{mo:02}"),
        'd' => format!("{day:02}"),
        'H' => format!("{h:02}"),
        'M' => format!("{mi:02}"),
        'S' => format!("{s:02}"),
        'N' => format!("{:09}", d.subsec_nanos()),
        's' => d.as_secs().to_string(),
        'F' => format!("{y:04}-{mo:02}-{day:02}"),
        'T' => format!("{h:02}:{mi:02}:{s:02}"),
        'z' => "+0000".to_owned(),
        _ => String::new(),
    }
}

/// Year, month, day, hour, minute, second of a Unix time (UTC), by Howard Hinnant's
/// days-to-civil algorithm.
fn civil(secs: u64) -> (i64, u64, u64, u64, u64, u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month.unsigned_abs(),
        day.unsigned_abs(),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use sagitta_client::proto::MqttStr;
    use sagitta_client::{PublishProperties, QoS, SubscriptionId, TopicName};

    use super::*;

    fn message(payload: &'static [u8]) -> Message {
        Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            dup: false,
            properties: PublishProperties::default(),
        }
    }

    fn render(format: &str, m: &Message) -> (String, Option<String>) {
        let now = UNIX_EPOCH + Duration::new(1_470_818_943, 786_368_637);
        let mut out = Vec::new();
        let w = Format::parse(format).unwrap().render(m, now, &mut out);
        (String::from_utf8(out).unwrap(), w)
    }

    #[test]
    fn conversions() {
        let m = message(b"hi\x01");
        assert_eq!(render("%t|%q|%r|%l|%x|%X", &m).0, "a/b|1|1|3|686901|686901");
        assert_eq!(render("%%t %%", &m).0, "%t %");
        assert_eq!(render("%I", &m).0, "2016-08-10T08:49:03+0000");
        assert_eq!(render("%U", &m).0, "1470818943.786368637");
        assert_eq!(
            render("@F @T.@N @s @z @@", &m).0,
            "2016-08-10 08:49:03.786368637 1470818943 +0000 @"
        );
        assert_eq!(render("\\t\\n\\0\\\\\\q", &m).0, "\t\n\0\\\\q");
        assert_eq!(
            render("[%5t][%-5t][%05l][%.1t][%5.1t]", &m).0,
            "[  a/b][a/b  ][00003][a][    a]"
        );
    }

    #[test]
    fn properties() {
        let mut m = message(b"x");
        m.properties.content_type = Some(MqttStr::new("text/plain").unwrap());
        m.properties.response_topic = Some(TopicName::new("r/t").unwrap());
        m.properties.correlation_data = Some(Bytes::from_static(b"cd"));
        m.properties.message_expiry_interval = Some(9);
        m.properties.payload_format_indicator = Some(true);
        m.properties.subscription_identifiers = vec![SubscriptionId::new(3).unwrap()];
        m.properties.user_properties = vec![
            (MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap()),
            (MqttStr::new("k2").unwrap(), MqttStr::new("v2").unwrap()),
        ];
        assert_eq!(
            render("%C|%R|%D|%E|%F|%S|%P", &m).0,
            "text/plain|r/t|cd|9|1|3|k:v k2:v2"
        );
        let (j, _) = render("%j", &m);
        assert_eq!(
            j,
            "{\"tst\":\"2016-08-10T08:49:03.786368Z\",\"topic\":\"a/b\",\"qos\":1,\"retain\":1,\
             \"payloadlen\":1,\"properties\":{\"payload-format-indicator\":1,\
             \"message-expiry-interval\":9,\"content-type\":\"text/plain\",\
             \"response-topic\":\"r/t\",\"correlation-data\":\"cd\",\
             \"subscription-identifier\":3,\"user-properties\":{\"k\":\"v\",\"k2\":\"v2\"}},\
             \"payload\":\"x\"}"
        );
        serde_json::from_str::<serde_json::Value>(&j).unwrap();
    }

    #[test]
    fn json_payloads() {
        let (j, w) = render("%j", &message(b"say \"hi\"\n"));
        assert!(j.ends_with(",\"payload\":\"say \\\"hi\\\"\\n\"}"), "{j}");
        assert!(w.is_none());
        let (j, _) = render("%J", &message(b"{\"t\":21.5}"));
        assert!(j.ends_with(",\"payload\":{\"t\":21.5}}"), "{j}");
        assert!(j.contains("\"payloadlen\":10,"), "{j}");
        let (j, _) = render("%j", &message(b""));
        assert!(j.ends_with(",\"payload\":null}"), "{j}");
        let (j, w) = render("[%J]", &message(b"not json"));
        assert_eq!(j, "[]");
        assert!(w.unwrap().contains("not valid JSON on topic a/b"));
    }

    #[test]
    fn bad_formats_are_errors() {
        for (f, want) in [
            ("%m", "message id"),
            ("%A", "topic alias"),
            ("%k", "unknown conversion %k"),
            ("abc %", "ends inside"),
            ("@Q", "@Q is not supported"),
            ("@", "ends inside"),
        ] {
            let e = Format::parse(f).unwrap_err();
            assert!(e.contains(want), "{f}: {e}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_709_251_199), (2024, 2, 29, 23, 59, 59));
        assert_eq!(civil(4_102_444_800), (2100, 1, 1, 0, 0, 0));
    }
}
