//! Password-file authentication, compatible with Mosquitto 2's `password_file`.
//!
//! The file has one `username:hash` line per user; blank lines and lines starting with `#`
//! are ignored. The hash is Mosquitto 2's PBKDF2-HMAC-SHA512 format:
//!
//! ```text
//! alice:$7$100000$<base64 salt>$<base64 hash>
//! ```
//!
//! `$7$` names PBKDF2-HMAC-SHA512, then the iteration count in decimal, the salt (12 bytes
//! when we or `mosquitto_passwd` make it) and the 64-byte derived key, both in standard
//! base64 with padding. Files made by `mosquitto_passwd` work here, and ours work with
//! Mosquitto.
//!
//! # Cost
//! We write [`DEFAULT_ITERATIONS`] = 100 000 iterations (Mosquitto writes 101); the count is
//! stored on each line, so either side reads the other's lines. Checking one password costs
//! tens of milliseconds of CPU, spent on the connection's task. Successful checks are
//! remembered (a bounded set of SHA-512 digests of user and password, see [`CACHE_LIMIT`]),
//! so a client that reconnects with the same credentials pays only once per broker run.
//! Wrong passwords and unknown users always pay the full cost (unknown users are checked
//! against a dummy hash so that timing does not tell which users exist).
//!
//! # SCRAM-SHA-256
//! A line may instead hold SCRAM-SHA-256 credentials (salt, iteration count, StoredKey and
//! ServerKey, in PostgreSQL's format; `sagitta passwd --scram` writes them):
//!
//! ```text
//! bob:SCRAM-SHA-256$4096:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
//! ```
//!
//! Such a user can log in with MQTT 5.0 enhanced authentication (method `SCRAM-SHA-256`:
//! the password never crosses the network, and the client learns that the broker knows it)
//! and with a plain CONNECT password as well. Mosquitto does not read these lines.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sagitta_proto::ReasonCode;
use sagitta_proto::scram::{self, Credentials};
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq as _;

use crate::auth::{Authenticator, ConnectInfo};

/// Iterations written into new hashes. Mosquitto's `mosquitto_passwd` writes 101; we pay
/// more per check for much slower offline guessing.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
/// Salt length of new hashes, in bytes (as Mosquitto).
pub const SALT_LEN: usize = 12;
/// Length of the derived key: one SHA-512 output.
pub const HASH_LEN: usize = 64;
/// Successful verifications remembered; past this the memory is cleared and refilled.
pub const CACHE_LIMIT: usize = 1024;
/// Highest iteration count accepted from a file (a bound on the cost of one check).
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// A PBKDF2-HMAC-SHA512 password hash in Mosquitto's `$7$` format.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and [`DEFAULT_ITERATIONS`].
    pub fn new(password: &[u8]) -> Self {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Self::with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Hashes `password` with the given salt and iteration count.
    pub fn with_salt(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
        Self {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Parses `$7$<iterations>$<base64 salt>$<base64 hash>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('$');
        if parts.next() != Some("") {
            return Err("the hash must start with `$7$`".into());
        }
        match parts.next() {
            Some("7") => {}
            Some("6") => {
                return Err(
                    "`$6$` (salted SHA-512) hashes are not supported; re-create the password \
                     with `sagitta passwd` or Mosquitto 2's `mosquitto_passwd`"
                        .into(),
                );
            }
            _ => return Err("the hash must start with `$7$` (PBKDF2-SHA512)".into()),
        }
        let (Some(iterations), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected `$7$<iterations>$<base64 salt>$<base64 hash>`".into());
        };
        let iterations: u32 = match iterations.parse() {
            Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "the iteration count `{iterations}` is not a number from 1 to {MAX_ITERATIONS}"
                ));
            }
        };
        let salt = STANDARD
            .decode(salt)
            .map_err(|e| format!("the salt is not valid base64: {e}"))?;
        if salt.is_empty() {
            return Err("the salt is empty".into());
        }
        let hash = STANDARD
            .decode(hash)
            .map_err(|e| format!("the hash is not valid base64: {e}"))?;
        let hash: [u8; HASH_LEN] = hash.try_into().map_err(|h: Vec<u8>| {
            format!("the hash is {} bytes long, expected {HASH_LEN}", h.len())
        })?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut computed = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &self.salt, self.iterations, &mut computed);
        computed.ct_eq(&self.hash).into()
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$7${}${}${}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.hash)
        )
    }
}

/// SCRAM-SHA-256 credentials for `password` with a fresh random 16-byte salt and
/// [`scram::DEFAULT_ITERATIONS`], for a password-file line (`Display` writes the format).
pub fn scram_credentials(password: &[u8]) -> Credentials {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    Credentials::derive(password, &salt, scram::DEFAULT_ITERATIONS)
}

/// Why a password file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("password file {path}, line {line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Checks a username's validity as a password-file key; `Err` says why not.
pub fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        Err("the username is empty".into())
    } else if user.contains(':') {
        Err("the username contains `:`".into())
    } else if user.chars().any(char::is_control) {
        Err("the username contains a control character".into())
    } else if user.len() > 65_535 {
        Err("the username is longer than 65535 bytes".into())
    } else {
        Ok(())
    }
}

/// Users and their password hashes, read from a Mosquitto-style password file; an
/// [`Authenticator`].
///
/// Refusals: a client without a username gets `NotAuthorized` (0x87, 3.x return code 5)
/// unless anonymous clients are allowed; an unknown user, a missing or a wrong password
/// get `BadUserNameOrPassword` (0x86, 3.x return code 4).
pub struct PasswordFile {
    users: HashMap<String, Secret>,
    allow_anonymous: bool,
    /// Makes the SCRAM salts of unknown users (a digest of the file: stable while the file
    /// is, and unguessable because the file holds random salts).
    scram_seed: [u8; 32],
    /// Stands in for unknown users so that they cost as much as known ones (it has the
    /// highest iteration count of the file).
    dummy: PasswordHash,
    /// SHA-512 digests of (user, password) that verified.
    verified: Mutex<HashSet<[u8; 64]>>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Reads and parses a password file. Anonymous clients are refused; see
    /// [`PasswordFile::allow_anonymous`].
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a password file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| PasswordFileError::Line {
                path: origin.to_owned(),
                line: index + 1,
                message,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(error("expected `username:hash`".into()));
            };
            check_username(user).map_err(error)?;
            let secret = if hash.starts_with("SCRAM-SHA-256$") {
                Secret::Scram(Credentials::parse(hash).map_err(error)?)
            } else {
                Secret::Pbkdf2(PasswordHash::parse(hash).map_err(error)?)
            };
            if users.insert(user.to_owned(), secret).is_some() {
                return Err(error(format!("user `{user}` appears twice")));
            }
        }
        let dummy_iterations = users
            .values()
            .filter_map(|s| match s {
                Secret::Pbkdf2(hash) => Some(hash.iterations()),
                Secret::Scram(_) => None,
            })
            .max()
            .unwrap_or(DEFAULT_ITERATIONS);
        Ok(Self {
            users,
            allow_anonymous: false,
            scram_seed: Sha256::digest(text.as_bytes()).into(),
            dummy: PasswordHash {
                iterations: dummy_iterations,
                salt: vec![0; SALT_LEN],
                hash: [0; HASH_LEN],
            },
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether clients without a username may connect (builder style). Default false.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `user`'s `password`.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let key = cache_key(user, password);
        if let Ok(set) = self.verified.lock()
            && set.contains(&key)
        {
            return true;
        }
        let ok = match self.users.get(user) {
            Some(Secret::Pbkdf2(hash)) => hash.verify(password),
            Some(Secret::Scram(credentials)) => credentials.verify_password(password),
            None => {
                let _ = self.dummy.verify(password);
                false
            }
        };
        if ok {
            let mut set = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if set.len() >= CACHE_LIMIT {
                set.clear();
            }
            set.insert(key);
        }
        ok
    }

    /// What a SCRAM-SHA-256 exchange for `user` needs: the salt and iteration count to send,
    /// and the credentials to check the proof with. A user without SCRAM credentials (unknown,
    /// or with a PBKDF2-SHA512 hash) gets a made-up salt, the same each time while the file
    /// is unchanged, and `None`: the exchange then fails at the proof, as a wrong password
    /// does, so that the answers do not tell which users exist.
    pub fn scram(&self, user: &str) -> (Vec<u8>, u32, Option<&Credentials>) {
        if let Some(Secret::Scram(credentials)) = self.users.get(user) {
            return (
                credentials.salt.clone(),
                credentials.iterations,
                Some(credentials),
            );
        }
        let mut digest = Sha256::new();
        digest.update(self.scram_seed);
        digest.update(user.as_bytes());
        let salt = digest.finalize()[..16].to_vec();
        (salt, scram::DEFAULT_ITERATIONS, None)
    }
}

/// What the file keeps for one user.
enum Secret {
    /// Mosquitto's `$7$` PBKDF2-SHA512 hash.
    Pbkdf2(PasswordHash),
    /// SCRAM-SHA-256 credentials.
    Scram(Credentials),
}

/// A digest of user and password: the user is length-prefixed so pairs cannot collide.
fn cache_key(user: &str, password: &[u8]) -> [u8; 64] {
    let mut digest = Sha512::new();
    digest.update((user.len() as u64).to_be_bytes());
    digest.update(user.as_bytes());
    digest.update(password);
    digest.finalize().into()
}

impl Authenticator for PasswordFile {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<(), ReasonCode> {
        let Some(user) = info.username else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(ReasonCode::NotAuthorized)
            };
        };
        let password = info.password.unwrap_or_default();
        if info.password.is_some() && self.verify(user, password) {
            Ok(())
        } else {
            Err(ReasonCode::BadUserNameOrPassword)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use sagitta_proto::ProtocolVersion;

    use super::*;
    use crate::config::ListenerKind;
    use crate::listener::ListenerInfo;

    /// Computed independently with Python:
    /// `hashlib.pbkdf2_hmac('sha512', b'correct horse', b'0123456789ab', 100000)`, base64.
    const PYTHON_VECTOR: &str = "$7$100000$MDEyMzQ1Njc4OWFi$lxwMLr9RfinXPmzVv4zG4iog9us3XK9mJwSkCM0PpimxBis/vknzn39Gi0CdgjfPVuYHrm/anXNwJ1LeW3Zs3w==";

    /// The same with 1000 iterations (cheap enough to check right and wrong passwords in
    /// an unoptimized build).
    const PYTHON_VECTOR_1000: &str = "$7$1000$MDEyMzQ1Njc4OWFi$OCzQ5wJtyzNPznJ+C6mINKa1QDiEe5NZq8ghhv2qWhDU9CE3LuZOAO1bVV+NFIPH9Y1r7vqAQiaTmpL0W5EO9A==";

    /// Made by Debian's `mosquitto_passwd -b file alice secret` (Mosquitto 2, 101 iterations).
    const MOSQUITTO_LINE: &str = "alice:$7$101$A1Xa9Yr7a42RYx7Z$H/MrrRHXb2rx+bJ0kwg4x6nCbtUWcrHTMUvRGisaIGTgbeupv1QKxB7ajPpS16zY2KJWYxpB7RvQsdl7/7Spgg==";

    static LISTENER: ListenerInfo = ListenerInfo {
        name: String::new(),
        kind: ListenerKind::Tcp,
        local_addr: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            1883,
        )),
        allow_anonymous: false,
        verifies_client_certificates: false,
    };

    fn info<'a>(user: Option<&'a str>, password: Option<&'a [u8]>) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: "c",
            username: user,
            password,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            protocol: ProtocolVersion::V3_1_1,
            listener: &LISTENER,
            certificate: None,
        }
    }

    fn fast(user: &str, password: &str) -> String {
        format!(
            "{user}:{}",
            PasswordHash::with_salt(password.as_bytes(), b"saltsaltsalt", 10)
        )
    }

    #[test]
    fn known_vector_from_python() {
        let h = PasswordHash::parse(PYTHON_VECTOR_1000).unwrap();
        assert_eq!(h.iterations(), 1000);
        assert!(h.verify(b"correct horse"));
        assert!(!h.verify(b"correct horsE"));
        assert_eq!(
            PasswordHash::parse(PYTHON_VECTOR).unwrap().iterations(),
            100_000
        );
        // One full-cost hash: our default parameters give Python's bytes.
        let made = PasswordHash::with_salt(b"correct horse", b"0123456789ab", 100_000);
        assert_eq!(made.to_string(), PYTHON_VECTOR);
    }

    #[test]
    fn mosquitto_line_verifies() {
        let file = PasswordFile::parse(MOSQUITTO_LINE, "test").unwrap();
        assert!(file.verify("alice", b"secret"));
        assert!(!file.verify("alice", b"Secret"));
    }

    #[test]
    fn format_round_trip() {
        let h = PasswordHash::with_salt(b"pw", b"0123456789ab", 7);
        let text = h.to_string();
        assert!(text.starts_with("$7$7$MDEyMzQ1Njc4OWFi$"), "{text}");
        assert_eq!(PasswordHash::parse(&text).unwrap(), h);
        let fresh = PasswordHash::new(b"pw");
        assert_eq!(fresh.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(fresh.salt.len(), SALT_LEN);
        assert_eq!(PasswordHash::parse(&fresh.to_string()).unwrap(), fresh);
        assert_ne!(PasswordHash::new(b"pw").salt, fresh.salt);
    }

    #[test]
    fn parses_comments_blank_lines_and_users() {
        let text = format!(
            "# users\n\n{}\r\n  \n{}\n",
            fast("alice", "a"),
            fast("bob", "b")
        );
        let file = PasswordFile::parse(&text, "test").unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"a"));
        assert!(file.verify("bob", b"b"));
        assert!(!file.verify("bob", b"a"));
    }

    #[test]
    fn refusals() {
        let file = PasswordFile::parse(&fast("alice", "a"), "test").unwrap();
        let a: &[u8] = b"a";
        let wrong: &[u8] = b"x";
        assert_eq!(file.authenticate(&info(Some("alice"), Some(a))), Ok(()));
        // Twice: the second comes from the cache.
        assert_eq!(file.authenticate(&info(Some("alice"), Some(a))), Ok(()));
        assert_eq!(
            file.authenticate(&info(Some("alice"), Some(wrong))),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            file.authenticate(&info(Some("alice"), None)),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            file.authenticate(&info(Some("mallory"), Some(a))),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            file.authenticate(&info(None, None)),
            Err(ReasonCode::NotAuthorized)
        );
        let file = file.allow_anonymous(true);
        assert_eq!(file.authenticate(&info(None, None)), Ok(()));
        assert_eq!(
            file.authenticate(&info(Some("mallory"), Some(a))),
            Err(ReasonCode::BadUserNameOrPassword)
        );
    }

    #[test]
    fn cache_is_bounded() {
        let file = PasswordFile::parse(&fast("alice", "a"), "test").unwrap();
        for _ in 0..3 {
            assert!(file.verify("alice", b"a"));
        }
        assert_eq!(file.verified.lock().unwrap().len(), 1);
        assert!(!file.verify("alice", b"b"));
        assert_eq!(file.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let good = fast("alice", "a");
        let cases = [
            ("no colon here", "username:hash"),
            (":$7$10$c2FsdA==$AA==", "username is empty"),
            ("bob:plain", "$7$"),
            ("bob:$6$abc$def", "not supported"),
            ("bob:$7$0$c2FsdA==$AA==", "iteration count"),
            ("bob:$7$x$c2FsdA==$AA==", "iteration count"),
            ("bob:$7$10$!!$AA==", "salt is not valid base64"),
            ("bob:$7$10$c2FsdA==$AA==", "64"),
            ("bob:$7$10$c2FsdA==", "expected"),
            (good.as_str(), "twice"),
        ];
        for (bad, expect) in cases {
            let text = format!("# header\n{good}\n\n{bad}\n");
            let e = PasswordFile::parse(&text, "/etc/pw")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/pw") && e.contains("line 4") && e.contains(expect),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn load_reports_missing_file() {
        let e = PasswordFile::load(Path::new("/nonexistent/sagitta-pw"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/sagitta-pw"), "{e}");
    }
}
