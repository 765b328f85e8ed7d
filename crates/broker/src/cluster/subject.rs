//! MQTT topics and filters as NATS subjects (and JetStream key-value keys).
//!
//! A topic's levels become a subject's tokens, one for one, so that NATS wildcards do the
//! matching: `+` becomes `*` and `#` becomes `>`. NATS tokens cannot be empty nor hold `.`,
//! `*`, `>` or white space, and KV keys allow only `A-Z a-z 0-9 - _ = . /`; so each level is
//! escaped to the same alphabet whatever it holds:
//!
//! - ASCII letters, digits, `-` and `_` stay as they are;
//! - every other byte (of the level's UTF-8) is `=` and two upper-case hex digits (`.` is
//!   `=2E`, space `=20`, `$` `=24`, `=` `=3D`, `é` `=C3=A9`);
//! - an empty level is the token `=` alone (never produced otherwise).
//!
//! Escaped tokens are never `*` or `>`, so a literal level cannot be taken for a wildcard.
//! A filter ending in `#` also matches its parent level (`a/#` matches `a`), which NATS's
//! `>` does not (`a.>` needs at least one more token): such a filter is two subjects,
//! `a` and `a.>`, which no subject matches both of.

use std::fmt::Write;

/// Appends the escaped form of one topic level.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// The tokens of a topic name: its escaped levels joined with `.` (also the topic's key in
/// a key-value bucket).
pub(crate) fn topic_tokens(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_level(&mut out, level);
    }
    out
}

/// The subject a message on `topic` is published to: `prefix.` and its tokens.
pub(crate) fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    out.push('.');
    out.push_str(&topic_tokens(topic));
    out
}

/// The subjects that together match what topic filter `filter` (without `$share/`) matches,
/// under `prefix`: one, or two for a filter ending in `#` below the first level.
pub(crate) fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(prefix.len() + filter.len() + 8);
    out.push_str(prefix);
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "#" => {
                if out.len() > prefix.len() {
                    parent = Some(out.clone());
                }
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            _ => {
                out.push('.');
                push_level(&mut out, level);
            }
        }
    }
    let mut subjects = Vec::with_capacity(2);
    subjects.extend(parent);
    subjects.push(out);
    subjects
}

/// The topic of a key made by [`topic_tokens`]; `None` if it is not one.
pub(crate) fn tokens_topic(tokens: &str) -> Option<String> {
    let mut out = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if token == "=" {
            continue;
        }
        if token.is_empty() {
            return None;
        }
        let bytes = token.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            match bytes[j] {
                b'=' => {
                    let hex = token.get(j + 1..j + 3)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    j += 3;
                }
                b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                    out.push(b);
                    j += 1;
                }
                _ => return None,
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn levels_map_to_tokens() {
        assert_eq!(topic_subject("s.m", "a/b/c"), "s.m.a.b.c");
        assert_eq!(
            topic_subject("s.m", "sensors/room-1/temp_c"),
            "s.m.sensors.room-1.temp_c"
        );
        // Empty levels, leading and trailing.
        assert_eq!(topic_subject("s.m", "a//b"), "s.m.a.=.b");
        assert_eq!(topic_subject("s.m", "/a"), "s.m.=.a");
        assert_eq!(topic_subject("s.m", "a/"), "s.m.a.=");
        assert_eq!(topic_subject("s.m", "/"), "s.m.=.=");
        // What NATS gives meaning to, and `$`.
        assert_eq!(topic_subject("s.m", "a.b/c d"), "s.m.a=2Eb.c=20d");
        assert_eq!(topic_subject("s.m", "*/>"), "s.m.=2A.=3E");
        assert_eq!(topic_subject("s.m", "$SYS/x"), "s.m.=24SYS.x");
        assert_eq!(topic_subject("s.m", "a=b"), "s.m.a=3Db");
        assert_eq!(topic_subject("s.m", "caf\u{e9}"), "s.m.caf=C3=A9");
        assert_eq!(topic_subject("s.m", "tab\there"), "s.m.tab=09here");
    }

    #[test]
    fn filters_map_to_wildcards() {
        assert_eq!(filter_subjects("p", "a/b"), ["p.a.b"]);
        assert_eq!(filter_subjects("p", "a/+/c"), ["p.a.*.c"]);
        assert_eq!(filter_subjects("p", "+"), ["p.*"]);
        // `a/#` matches `a` too: two subjects.
        assert_eq!(filter_subjects("p", "a/#"), ["p.a", "p.a.>"]);
        assert_eq!(filter_subjects("p", "a/+/#"), ["p.a.*", "p.a.*.>"]);
        assert_eq!(filter_subjects("p", "+/#"), ["p.*", "p.*.>"]);
        // `#` alone matches every topic, each of which has at least one level.
        assert_eq!(filter_subjects("p", "#"), ["p.>"]);
        assert_eq!(filter_subjects("p", "a//#"), ["p.a.=", "p.a.=.>"]);
        assert_eq!(filter_subjects("p", "$SYS/#"), ["p.=24SYS", "p.=24SYS.>"]);
        assert_eq!(filter_subjects("p", "a.b/+"), ["p.a=2Eb.*"]);
    }

    /// A NATS subject match (`*` one token, `>` one or more at the end).
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, tok) in p.iter().enumerate() {
            if *tok == ">" {
                return s.len() > i;
            }
            match s.get(i) {
                Some(t) if *tok == "*" || tok == t => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,2}",
            Just(".".to_owned()),
            Just("*".to_owned()),
            Just(">".to_owned()),
            Just("a b".to_owned()),
            Just("=".to_owned()),
            Just("$x".to_owned()),
            Just("\u{e9}".to_owned()),
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![4 => level(), 1 => Just("+".to_owned())]
    }

    proptest! {
        #[test]
        fn keys_round_trip(levels in prop::collection::vec(level(), 1..6)) {
            let topic = levels.join("/");
            let tokens = topic_tokens(&topic);
            prop_assert!(tokens.split('.').all(|t| !t.is_empty()
                && t != "*" && t != ">"
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))));
            prop_assert_eq!(tokens_topic(&tokens), Some(topic));
        }

        /// NATS matching of the mapped subjects agrees with MQTT matching (leaving aside
        /// MQTT's rule for topics starting with `$`, which the receiving node applies).
        #[test]
        fn nats_matching_agrees_with_mqtt(
            topic in prop::collection::vec(level(), 1..5),
            mut filter in prop::collection::vec(filter_level(), 1..4),
            hash in any::<bool>(),
        ) {
            let topic = topic.join("/");
            if hash {
                filter.push("#".into());
            }
            let filter = filter.join("/");
            if sagitta_proto::TopicFilter::new(filter.clone()).is_err()
                || (topic.starts_with('$') && filter.starts_with(['+', '#']))
            {
                return Ok(());
            }
            let mqtt = sagitta_proto::topic::matches(&filter, &topic);
            let subject = topic_subject("p", &topic);
            let subjects = filter_subjects("p", &filter);
            let hits = subjects.iter().filter(|s| nats_matches(s, &subject)).count();
            prop_assert!(hits <= 1, "{:?} both match {}", subjects, subject);
            prop_assert_eq!(hits == 1, mqtt, "topic {:?} filter {:?} subjects {:?}", topic, filter, subjects);
        }
    }
}
