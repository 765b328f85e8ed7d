//! Access control: which client may publish to, subscribe to and receive from which topics,
//! read from an ACL file in Mosquitto's `acl_file` format with Sagitta's additions.
//!
//! ```text
//! # Rules before any `user` or `client` line apply to anonymous clients (no username).
//! topic read public/#
//!
//! user alice                     # rules for clients that logged in as alice
//! topic readwrite alice/#
//! topic deny alice/private/#
//!
//! client gateway-7               # Sagitta: rules for the client id gateway-7
//! topic write telemetry/#
//!
//! pattern read devices/%c/commands   # every client; %c = its client id, %u = its username
//! pattern write devices/%u/#
//!
//! default deny                   # Sagitta: what no rule decides (deny unless said otherwise)
//! ```
//!
//! Access words: `read` (subscribe and receive), `write` (publish), `readwrite`, `deny`, and
//! Sagitta's `subscribe`, `receive`, `publish`. A client's rules are the anonymous ones (if it
//! has no username), its user's, its client id's, and the patterns. A matching `deny` rule
//! wins over any grant; else a matching grant allows; else `default` decides. Publishing and
//! receiving match the topic against the rule's filter; a subscription is granted when a
//! rule's filter covers every topic the subscription's filter can match, and denied when a
//! `deny` rule covers it (messages it would receive from a denied part are then filtered at
//! delivery). A pattern whose `%u` or `%c` would be replaced by a value containing `/`, `+` or
//! `#` does not apply, so that a crafted name cannot widen access.

use std::path::{Path, PathBuf};

use sagitta_proto::TopicFilter;

use crate::message::FastMap;

/// Something a client does that an ACL decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publishing to a topic (also a will's and a retained message's topic).
    Publish,
    /// Subscribing with a topic filter.
    Subscribe,
    /// Getting a message (live or retained) on a topic.
    Receive,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Publish => PUBLISH,
            Action::Subscribe => SUBSCRIBE,
            Action::Receive => RECEIVE,
        }
    }
}

const PUBLISH: u8 = 1;
const SUBSCRIBE: u8 = 2;
const RECEIVE: u8 = 4;

/// Decides what a connected client may do. [`Acl`] (the `acl_file`) is one; a broker built
/// with `BrokerBuilder::authorizer` asks another (an HTTP callout, JWT claims...) instead.
/// Called on the publish path: keep it fast (or cache).
pub trait Authorizer: Send + Sync + 'static {
    /// Whether the client `client_id`, logged in as `username`, may do `action` on `topic`
    /// (a topic name; for [`Action::Subscribe`] a topic filter without `$share/<group>/`).
    fn authorize(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> bool;
}

impl Authorizer for Acl {
    fn authorize(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> bool {
        self.allows(action, topic, client_id, username)
    }
}

impl<T: Authorizer + ?Sized> Authorizer for std::sync::Arc<T> {
    fn authorize(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> bool {
        (**self).authorize(action, topic, client_id, username)
    }
}

/// The `acl_file`, reloadable.
impl Authorizer for crate::reload::FileBacked<Acl> {
    fn authorize(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> bool {
        self.with(|acl| acl.allows(action, topic, client_id, username))
    }
}

/// Why an ACL file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file cannot be read.
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not understood.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    /// Actions granted, or denied if `deny`.
    actions: u8,
    deny: bool,
    /// A topic filter, with `%u` / `%c` still in it for patterns.
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    default_allow: bool,
    anonymous: Vec<Rule>,
    users: FastMap<String, Vec<Rule>>,
    clients: FastMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

enum Section {
    Anonymous,
    User(String),
    Client(String),
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn from_file(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text, path)
    }

    /// Parses ACL text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut section = Section::Anonymous;
        for (i, raw) in text.lines().enumerate() {
            let error = |message: String| AclError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" | "client" if rest.is_empty() => {
                    return Err(error(format!("`{word}` needs a name")));
                }
                "user" => section = Section::User(rest.to_owned()),
                "client" => section = Section::Client(rest.to_owned()),
                "default" => {
                    acl.default_allow = match rest {
                        "allow" => true,
                        "deny" => false,
                        other => {
                            return Err(error(format!(
                                "`default` takes allow or deny, not {other:?}"
                            )));
                        }
                    }
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest, word == "pattern").map_err(error)?;
                    if word == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &section {
                            Section::Anonymous => acl.anonymous.push(rule),
                            Section::User(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            Section::Client(c) => {
                                acl.clients.entry(c.clone()).or_default().push(rule)
                            }
                        }
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?} (expected topic, pattern, user, client or default)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the client `client_id` (logged in as `username`) may do `action` on `topic`
    /// (a topic name, or for [`Action::Subscribe`] a topic filter without `$share/`).
    pub fn allows(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> bool {
        let bit = action.bit();
        let fixed = match username {
            None => Some(&self.anonymous),
            Some(u) => self.users.get(u),
        };
        let mut granted = false;
        for rule in fixed
            .into_iter()
            .chain(self.clients.get(client_id))
            .flatten()
        {
            if rule.actions & bit == 0 {
                continue;
            }
            let applies = match action {
                Action::Subscribe => covers(&rule.filter, topic),
                _ => sagitta_proto::topic::matches(&rule.filter, topic),
            };
            if applies {
                if rule.deny {
                    return false;
                }
                granted = true;
            }
        }
        for rule in &self.patterns {
            if rule.actions & bit == 0 {
                continue;
            }
            let applies = match action {
                Action::Subscribe => {
                    substitute(&rule.filter, client_id, username).is_some_and(|f| covers(&f, topic))
                }
                // The publish path: matched level by level, nothing allocated.
                _ => pattern_matches(&rule.filter, topic, client_id, username),
            };
            if applies {
                if rule.deny {
                    return false;
                }
                granted = true;
            }
        }
        granted || self.default_allow
    }
}

fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (access, filter) = match rest.split_once(char::is_whitespace) {
        Some((a, f))
            if matches!(
                a,
                "read" | "write" | "readwrite" | "deny" | "subscribe" | "receive" | "publish"
            ) =>
        {
            (a, f.trim())
        }
        // Mosquitto: no access word means readwrite.
        _ => ("readwrite", rest),
    };
    if filter.is_empty() {
        return Err("a topic filter is missing".into());
    }
    let (actions, deny) = match access {
        "read" => (SUBSCRIBE | RECEIVE, false),
        "write" | "publish" => (PUBLISH, false),
        "subscribe" => (SUBSCRIBE, false),
        "receive" => (RECEIVE, false),
        "deny" => (PUBLISH | SUBSCRIBE | RECEIVE, true),
        _ => (PUBLISH | SUBSCRIBE | RECEIVE, false),
    };
    // Checked as a filter with stand-ins for the substitutions.
    let probe = if pattern {
        filter.replace("%u", "u").replace("%c", "c")
    } else {
        filter.to_owned()
    };
    if let Err(e) = TopicFilter::new(probe) {
        return Err(format!("invalid topic filter {filter:?}: {e}"));
    }
    Ok(Rule {
        actions,
        deny,
        filter: filter.to_owned(),
    })
}

/// A pattern's filter for this client, or `None` if it does not apply (no username for
/// `%u`, or a value that would change the filter's structure).
fn substitute(filter: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['/', '+', '#']);
    let mut out = filter.to_owned();
    if out.contains("%c") {
        if unsafe_value(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let u = username.filter(|u| !unsafe_value(u))?;
        out = out.replace("%u", u);
    }
    Some(out)
}

/// [`sagitta_proto::topic::matches`] for a pattern's filter, with `%c` / `%u` standing for
/// the client id and username (a pattern with `%u` does not apply without a username, nor
/// one whose value contains `/`, `+` or `#`).
fn pattern_matches(filter: &str, topic: &str, client_id: &str, username: Option<&str>) -> bool {
    sagitta_proto::topic::matches_with(filter, topic, |fl, tl| {
        if fl.contains('%') {
            level_matches(fl, tl, client_id, username)
        } else {
            fl == tl
        }
    })
}

/// Whether a pattern level (with `%c` / `%u`) expands to `level`.
fn level_matches(pattern: &str, level: &str, client_id: &str, username: Option<&str>) -> bool {
    let usable = |v: &str| !v.contains(['/', '+', '#']);
    let mut p = pattern;
    let mut rest = level;
    while !p.is_empty() {
        let value = if let Some(after) = p.strip_prefix("%c") {
            p = after;
            Some(client_id)
        } else if let Some(after) = p.strip_prefix("%u") {
            p = after;
            match username {
                Some(u) => Some(u),
                None => return false,
            }
        } else {
            None
        };
        match value {
            Some(v) => match rest.strip_prefix(v) {
                Some(r) if usable(v) => rest = r,
                _ => return false,
            },
            None => {
                let mut chars = p.chars();
                let Some(c) = chars.next() else { break };
                p = chars.as_str();
                match rest.strip_prefix(c) {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
        }
    }
    rest.is_empty()
}

/// True if every topic that filter `inner` matches is matched by filter `outer`.
fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            // `#` covers the rest, and the parent level (`a/#` matches `a`).
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(ol), Some(il)) if ol == il && il != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text, Path::new("test.acl")).unwrap()
    }

    #[test]
    fn rules_apply_per_user_client_and_pattern_with_deny_winning() {
        let a = acl("topic read public/#\n\
             user alice\n\
             topic readwrite alice/#\n\
             topic deny alice/private/#\n\
             client gw-1\n\
             topic write telemetry/#\n\
             pattern read devices/%c/cmd\n\
             pattern write devices/%u/#\n");
        use Action::*;
        // Anonymous.
        assert!(a.allows(Receive, "public/x", "anon", None));
        assert!(a.allows(Subscribe, "public/#", "anon", None));
        assert!(!a.allows(Publish, "public/x", "anon", None));
        assert!(
            !a.allows(Receive, "public/x", "bob", Some("bob")),
            "not for users"
        );
        // A user's own rules, with deny winning.
        assert!(a.allows(Publish, "alice/a", "c1", Some("alice")));
        assert!(!a.allows(Receive, "alice/private/x", "c1", Some("alice")));
        assert!(!a.allows(Subscribe, "alice/private/#", "c1", Some("alice")));
        assert!(a.allows(Subscribe, "alice/+/x", "c1", Some("alice")));
        // A client id's rules, whoever logs in.
        assert!(a.allows(Publish, "telemetry/t", "gw-1", Some("bob")));
        assert!(!a.allows(Publish, "telemetry/t", "gw-2", Some("bob")));
        // Patterns.
        assert!(a.allows(Receive, "devices/gw-2/cmd", "gw-2", None));
        assert!(!a.allows(Receive, "devices/gw-1/cmd", "gw-2", None));
        assert!(a.allows(Publish, "devices/bob/x/y", "c9", Some("bob")));
        assert!(
            !a.allows(Publish, "devices/bob/x", "c9", None),
            "%u needs a username"
        );
    }

    #[test]
    fn patterns_match_level_by_level_like_their_expansion() {
        for (filter, topic, c, u, want) in [
            ("d/%c/x", "d/gw/x", "gw", None, true),
            ("d/%c/x", "d/gw2/x", "gw", None, false),
            ("d/pre-%c-%u/#", "d/pre-gw-bob/a/b", "gw", Some("bob"), true),
            ("d/pre-%c-%u/#", "d/pre-gw-bob", "gw", Some("bob"), true),
            ("d/%u/+", "d/bob/x", "gw", None, false),
            ("d/%c", "d/a", "a/b", None, false),
            ("+/%c", "$SYS/a", "a", None, false),
        ] {
            assert_eq!(
                pattern_matches(filter, topic, c, u),
                want,
                "{filter} {topic}"
            );
            let expanded = substitute(filter, c, u);
            assert_eq!(
                expanded.is_some_and(|f| sagitta_proto::topic::matches(&f, topic)),
                want,
                "{filter} {topic}: same as the expansion"
            );
        }
    }

    #[test]
    fn crafted_names_do_not_widen_patterns() {
        let a = acl("pattern readwrite devices/%u/#\npattern read c/%c\n");
        use Action::*;
        assert!(!a.allows(Publish, "devices/a/b/x", "c", Some("a/b")));
        assert!(!a.allows(Subscribe, "devices/#", "c", Some("#")));
        assert!(!a.allows(Receive, "c/x", "+", None));
    }

    #[test]
    fn default_policy_and_mosquitto_forms() {
        use Action::*;
        assert!(!acl("").allows(Publish, "a", "c", None));
        assert!(acl("default allow").allows(Publish, "a", "c", None));
        let a = acl("default allow\ntopic deny secret/#\n# comment\n\n  topic a/b\n");
        assert!(!a.allows(Receive, "secret/x", "c", None));
        assert!(
            a.allows(Publish, "a/b", "c", None),
            "no access word: readwrite"
        );
    }

    #[test]
    fn subscriptions_need_a_filter_that_covers_them() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(covers("a/+/c", "a/b/c"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+/c", "a/b/#"));
        assert!(covers("#", "x/#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, line) in [
            ("topic read a/#/b", 1),
            ("\nuser\n", 2),
            ("default maybe", 1),
            ("topics read a", 1),
            ("topic", 1),
        ] {
            match Acl::parse(text, Path::new("x.acl")) {
                Err(AclError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
