//! Topic names, topic filters, matching and shared subscriptions.
//!
//! A [`TopicName`] is what a PUBLISH is sent to: no wildcards [MQTT-3.3.2-2]. A [`TopicFilter`]
//! is what a SUBSCRIBE asks for: `+` fills exactly one level, `#` the rest (including the
//! parent level itself, so `a/#` matches `a`), and each wildcard occupies a whole level
//! [MQTT-4.7.1-1] [MQTT-4.7.1-2]. Filters starting with a wildcard do not match topic names
//! starting with `$` [MQTT-4.7.2-1]. `$share/<group>/<filter>` names a shared subscription.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::string::{MqttStr, StringError};

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string itself is not a valid MQTT string.
    #[error(transparent)]
    String(#[from] StringError),
    /// Topic names and filters must be at least one character long [MQTT-4.7.3-1].
    #[error("topic must not be empty [MQTT-4.7.3-1]")]
    Empty,
    /// A topic name contains `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character [MQTT-3.3.2-2]")]
    WildcardInName,
    /// `#` is not alone in the last level, or `+` is not alone in its level [MQTT-4.7.1-1]
    /// [MQTT-4.7.1-2].
    #[error("wildcard must occupy a whole level, '#' only the last [MQTT-4.7.1-1]")]
    MisplacedWildcard,
    /// `$share/` without a non-empty group name without wildcards, or without a filter after
    /// it [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error("malformed shared subscription, expected $share/<group>/<filter> [MQTT-4.8.2-1]")]
    InvalidShare,
}

/// A validated topic name (no wildcards). Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(MqttStr);

impl TopicName {
    /// Validates `s` as a non-empty topic name.
    pub fn new(s: impl Into<bytestring::ByteString>) -> Result<Self, TopicError> {
        let s = MqttStr::new(s)?;
        check_name(&s, false)?;
        Ok(Self(s))
    }

    /// Validates a topic name that may be empty (an MQTT 5 PUBLISH using a Topic Alias).
    pub(crate) fn from_mqtt_str(s: MqttStr, allow_empty: bool) -> Result<Self, TopicError> {
        check_name(&s, allow_empty)?;
        Ok(Self(s))
    }

    /// Validates the raw bytes of a received topic name, with one pass over them for U+0000
    /// and the wildcards. Errors of the string itself come back as [`TopicError::String`].
    pub(crate) fn from_received(bytes: Bytes, allow_empty: bool) -> Result<Self, TopicError> {
        let s = MqttStr::from_bytes_utf8(bytes)?;
        if s.is_empty() && !allow_empty {
            return Err(TopicError::Empty);
        }
        if crate::string::contains_any3(s.as_bytes(), 0, b'+', b'#') {
            // Rare: find out which.
            MqttStr::new(s.clone())?;
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(MqttStr::from_checked(s)))
    }

    /// The empty topic name, only valid in an MQTT 5 PUBLISH that carries a Topic Alias.
    pub const fn empty() -> Self {
        Self(MqttStr::empty())
    }

    /// The name as `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a validated MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The underlying shared bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// True for names reserved to the server, such as `$SYS/...`.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

fn check_name(s: &str, allow_empty: bool) -> Result<(), TopicError> {
    if s.is_empty() && !allow_empty {
        return Err(TopicError::Empty);
    }
    if crate::string::contains_any(s.as_bytes(), b'+', b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A validated topic filter, possibly a shared subscription `$share/<group>/<filter>`.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(MqttStr);

impl TopicFilter {
    /// Validates `s` as a topic filter.
    pub fn new(s: impl Into<bytestring::ByteString>) -> Result<Self, TopicError> {
        Self::from_mqtt_str(MqttStr::new(s)?)
    }

    pub(crate) fn from_mqtt_str(s: MqttStr) -> Result<Self, TopicError> {
        match split_share(&s) {
            Some((group, filter)) => {
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(TopicError::InvalidShare);
                }
                match filter {
                    Some(f) if !f.is_empty() => check_filter(f)?,
                    _ => return Err(TopicError::InvalidShare),
                }
            }
            None => check_filter(&s)?,
        }
        Ok(Self(s))
    }

    /// The whole filter as `&str` (including any `$share/<group>/` prefix).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter as a validated MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The shared-subscription parts, if this is `$share/<group>/<filter>`.
    pub fn shared(&self) -> Option<SharedFilter<'_>> {
        match split_share(&self.0) {
            Some((group, Some(filter))) => Some(SharedFilter { group, filter }),
            _ => None,
        }
    }

    /// The filter that topic names are matched against: without a `$share/<group>/` prefix.
    pub fn match_filter(&self) -> &str {
        self.shared().map_or(self.as_str(), |s| s.filter)
    }

    /// True if the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().contains(['+', '#'])
    }

    /// True if `topic` matches this filter (a shared filter matches what its inner filter does).
    pub fn matches(&self, topic: &str) -> bool {
        matches(self.match_filter(), topic)
    }
}

/// The parts of a shared subscription filter `$share/<group>/<filter>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (group).
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Splits `$share/group/filter` into the group and (if present) the filter.
fn split_share(s: &str) -> Option<(&str, Option<&str>)> {
    let rest = s.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, filter)) => (group, Some(filter)),
        None => (rest, None),
    })
}

fn check_filter(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            "#" => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// True if topic name `topic` matches topic filter `filter`.
///
/// Both are assumed valid (see [`TopicName`] and [`TopicFilter`]). A filter starting with a
/// wildcard does not match a topic starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    matches_with(filter, topic, |f, t| f == t)
}

/// [`matches`] with `level_matches(filter_level, topic_level)` deciding for the filter's
/// levels that are not wildcards (e.g. levels with placeholders to expand).
pub fn matches_with(filter: &str, topic: &str, level_matches: impl Fn(&str, &str) -> bool) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if level_matches(fl, tl) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

macro_rules! str_wrapper_impls {
    ($ty:ident) => {
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = TopicError;
            fn try_from(s: &str) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }
    };
}

str_wrapper_impls!(TopicName);
str_wrapper_impls!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(TopicName::new("a/b/c").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert!(TopicName::new("$SYS/broker").unwrap().is_system());
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a#"), Err(TopicError::WildcardInName));
        assert_eq!(
            TopicName::new("a\0"),
            Err(TopicError::String(StringError::NullCharacter))
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/", "//", "a//#", "$SYS/#", "+/#",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#/", "++", "a/+b/c", "##"] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_filters() {
        let f = TopicFilter::new("$share/g1/a/+").unwrap();
        assert_eq!(
            f.shared(),
            Some(SharedFilter {
                group: "g1",
                filter: "a/+"
            })
        );
        assert_eq!(f.match_filter(), "a/+");
        assert!(f.matches("a/x"));
        assert!(f.has_wildcards());
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
            "$share/g/a/#/b",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
        assert_eq!(TopicFilter::new("$sharex/a").unwrap().shared(), None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/", true),
            ("+", "", true),
            ("a/+/c", "a//c", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/b/#", "a/b", true),
            ("a/b/#", "a/bc", false),
            ("A", "a", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }
}
