//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), the mechanism behind MQTT 5.0 enhanced
//! authentication with the Authentication Method `SCRAM-SHA-256`: both sides of the
//! exchange as sans-IO state machines, and the credentials a server stores.
//!
//! In MQTT the messages travel as Authentication Data: client-first in CONNECT (or in an
//! AUTH 0x19 to re-authenticate), server-first in AUTH 0x18, client-final in AUTH 0x18,
//! server-final in the CONNACK (or the AUTH 0x00 that ends a re-authentication).
//!
//! Not supported: channel binding (`p=` is refused; `y` and `n` are accepted), an
//! authorization identity different from the username, and SASLprep: names and passwords
//! are compared as their UTF-8 bytes, which is the same for the ASCII ones.
//!
//! Nonces are the caller's: this module draws no random numbers. Use at least 16 random
//! bytes, e.g. base64 of 18.
//!
//! ```
//! use sagitta_proto::scram::{Credentials, ScramClient, ServerExchange};
//!
//! let stored = Credentials::derive(b"pencil", b"salt-of-user", 4096);
//! let (client, client_first) = ScramClient::start("user", b"pencil", "cnonce123");
//! let server = ServerExchange::start(&client_first).unwrap();
//! assert_eq!(server.username(), "user");
//! let (server, server_first) = server.challenge(&stored.salt, stored.iterations, "snonce456");
//! let (client, client_final) = client.respond(&server_first).unwrap();
//! let server_final = server.finish(&client_final, Some(&stored)).unwrap();
//! client.verify(&server_final).unwrap();
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The MQTT Authentication Method name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations for new credentials (RFC 7677's minimum, as PostgreSQL).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Fewest iterations a client accepts from a server (RFC 7677).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations either side accepts (a bound on the cost of one login).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Length of keys and signatures: one SHA-256 output.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the grammar; says what is wrong.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=`), which is not supported.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The client named an authorization identity other than its username.
    #[error("an authorization identity other than the username is not supported")]
    AuthzId,
    /// The server's nonce does not start with the client's, or the client's final nonce
    /// is not the combined one.
    #[error("the nonces do not match")]
    Nonce,
    /// The iteration count is outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`] (client) or
    /// 1..=[`MAX_ITERATIONS`] (stored credentials).
    #[error("iteration count {0} refused")]
    Iterations(u32),
    /// The client's proof is wrong: wrong password or unknown user.
    #[error("invalid proof")]
    InvalidProof,
    /// The server's signature is wrong: the server does not know the password.
    #[error("the server's signature does not verify")]
    ServerSignature,
    /// The server ended the exchange with `e=<reason>`.
    #[error("the server refused: {0}")]
    Server(String),
}

/// What a server keeps for one user: salt, iteration count, StoredKey and ServerKey. The
/// password cannot be recovered from it, and it cannot be used to log in as the user.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Iteration count of PBKDF2.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; KEY_LEN],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Derives the credentials of `password` with `salt` and `iterations`.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(hmac(&salted, b"Client Key")).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one these credentials were derived from (constant-time
    /// comparison; costs one PBKDF2 run).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let other = Self::derive(password, &self.salt, self.iterations);
        let stored = other.stored_key.ct_eq(&self.stored_key);
        let server = other.server_key.ct_eq(&self.server_key);
        (stored & server).into()
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64
    /// ServerKey>` (the format PostgreSQL stores).
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = "expected `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`";
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or(shape)?;
        let (params, keys) = rest.split_once('$').ok_or(shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(shape)?;
        let (stored, server) = keys.split_once(':').ok_or(shape)?;
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
        let key = |name: &str, text: &str| -> Result<[u8; KEY_LEN], String> {
            let bytes = STANDARD
                .decode(text)
                .map_err(|e| format!("the {name} is not valid base64: {e}"))?;
            bytes.try_into().map_err(|b: Vec<u8>| {
                format!("the {name} is {} bytes long, expected {KEY_LEN}", b.len())
            })
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// HMAC-SHA-256 with a 32-byte key. HMAC pads keys shorter than the hash's 64-byte block
/// with zeros, so padding here gives the same MAC without a fallible constructor.
fn hmac(key: &[u8; KEY_LEN], data: &[u8]) -> [u8; KEY_LEN] {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Splits a message into its `x=value` attributes, in order.
fn attributes(message: &str) -> Result<Vec<(u8, &str)>, ScramError> {
    message
        .split(',')
        .map(|part| match part.as_bytes() {
            [name, b'=', ..] if name.is_ascii_alphabetic() => Ok((*name, &part[2..])),
            _ => Err(ScramError::Malformed("expected `name=value` attributes")),
        })
        .collect()
}

/// Encodes a username as a saslname (`,` → `=2C`, `=` → `=3D`).
fn encode_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// Decodes a saslname; any other `=` escape is malformed.
fn decode_name(text: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at + 1..at + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad `=` escape in the username")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A nonce is printable ASCII without `,`.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

// ---------------------------------------------------------------------------------------
// Server side.

/// The server's side after the client-first message: it knows who the client claims to be.
#[derive(Debug)]
pub struct ServerExchange {
    username: String,
    client_nonce: String,
    gs2_header: String,
    client_first_bare: String,
}

impl ServerExchange {
    /// Reads the client-first message.
    pub fn start(client_first: &[u8]) -> Result<Self, ScramError> {
        let message = text(client_first)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = message.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ScramError::Malformed("no GS2 header"));
        };
        match cbind {
            "n" | "y" => {}
            _ if cbind.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        }
        let attrs = attributes(bare)?;
        let (username, client_nonce) = match attrs.as_slice() {
            [(b'm', _), ..] => return Err(ScramError::Malformed("mandatory extension")),
            [(b'n', name), (b'r', nonce), ..] => (decode_name(name)?, *nonce),
            _ => return Err(ScramError::Malformed("expected `n=<user>,r=<nonce>`")),
        };
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        if !authzid.is_empty() {
            match authzid.strip_prefix("a=").map(decode_name) {
                Some(Ok(a)) if a == username => {}
                Some(Err(e)) => return Err(e),
                _ => return Err(ScramError::AuthzId),
            }
        }
        Ok(Self {
            username,
            client_nonce: client_nonce.to_owned(),
            gs2_header: message[..cbind.len() + authzid.len() + 2].to_owned(),
            client_first_bare: bare.to_owned(),
        })
    }

    /// The username the client claims.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Builds the server-first message with the user's salt and iteration count (for an
    /// unknown user, a made-up salt that is the same every time for that name, so that a
    /// client cannot tell) and the server's part of the nonce (printable ASCII without `,`).
    pub fn challenge(
        self,
        salt: &[u8],
        iterations: u32,
        server_nonce: &str,
    ) -> (ServerChallenge, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", self.client_nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
        let challenge = ServerChallenge {
            auth_message_head: format!("{},{server_first},", self.client_first_bare),
            nonce,
            gs2_header: self.gs2_header,
            username: self.username,
        };
        (challenge, server_first.into_bytes())
    }
}

/// The server's side after server-first: waiting for the client's proof.
#[derive(Debug)]
pub struct ServerChallenge {
    username: String,
    nonce: String,
    gs2_header: String,
    /// client-first-bare "," server-first ","
    auth_message_head: String,
}

impl ServerChallenge {
    /// The username the client claims.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks the client-final message against the user's credentials (`None` for an
    /// unknown user: always [`ScramError::InvalidProof`]) and returns the server-final
    /// message, which proves to the client that the server knows its password.
    pub fn finish(
        self,
        client_final: &[u8],
        credentials: Option<&Credentials>,
    ) -> Result<Vec<u8>, ScramError> {
        let message = text(client_final)?;
        let Some((without_proof, proof)) = message.rsplit_once(",p=") else {
            return Err(ScramError::Malformed("no proof"));
        };
        let attrs = attributes(without_proof)?;
        let [(b'c', binding), (b'r', nonce), ..] = attrs.as_slice() else {
            return Err(ScramError::Malformed("expected `c=<binding>,r=<nonce>`"));
        };
        if STANDARD.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "the channel binding does not repeat the GS2 header",
            ));
        }
        if *nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; KEY_LEN] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
        let Some(credentials) = credentials else {
            return Err(ScramError::InvalidProof);
        };
        let auth_message = format!("{}{without_proof}", self.auth_message_head);
        let client_signature = hmac(&credentials.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let stored: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&credentials.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

/// The client's side after client-first: waiting for the server's challenge.
pub struct ScramClient {
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange for `username` with the client's nonce (printable ASCII without
    /// `,`): returns the state and the client-first message.
    pub fn start(username: &str, password: &[u8], client_nonce: &str) -> (Self, Vec<u8>) {
        let client_first_bare = format!("n={},r={client_nonce}", encode_name(username));
        let first = format!("n,,{client_first_bare}").into_bytes();
        let client = Self {
            password: password.to_vec(),
            client_nonce: client_nonce.to_owned(),
            client_first_bare,
        };
        (client, first)
    }

    /// Reads the server-first message and computes the proof (one PBKDF2 run of the
    /// server's iteration count): returns the state and the client-final message.
    pub fn respond(self, server_first: &[u8]) -> Result<(ScramFinal, Vec<u8>), ScramError> {
        let message = text(server_first)?;
        let attrs = attributes(message)?;
        let [(b'r', nonce), (b's', salt), (b'i', iterations), ..] = attrs.as_slice() else {
            if let [(b'e', reason), ..] = attrs.as_slice() {
                return Err(ScramError::Server((*reason).to_owned()));
            }
            return Err(ScramError::Malformed(
                "expected `r=<nonce>,s=<salt>,i=<count>`",
            ));
        };
        if !nonce.starts_with(&self.client_nonce)
            || nonce.len() == self.client_nonce.len()
            || !valid_nonce(nonce)
        {
            return Err(ScramError::Nonce);
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed("the iteration count is not a number"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{message},{without_proof}", self.client_first_bare);
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        let server_key = hmac(&salted, b"Server Key");
        let expected = hmac(&server_key, auth_message.as_bytes());
        let client_final = format!("{without_proof},p={}", STANDARD.encode(proof));
        Ok((
            ScramFinal {
                server_signature: expected,
            },
            client_final.into_bytes(),
        ))
    }
}

/// The client's side after client-final: waiting for the server's signature.
#[derive(Debug)]
pub struct ScramFinal {
    server_signature: [u8; KEY_LEN],
}

impl ScramFinal {
    /// Checks the server-final message: `Ok` only if the server proved it knows the
    /// password.
    pub fn verify(self, server_final: &[u8]) -> Result<(), ScramError> {
        let message = text(server_final)?;
        let attrs = attributes(message)?;
        match attrs.as_slice() {
            [(b'e', reason), ..] => Err(ScramError::Server((*reason).to_owned())),
            [(b'v', signature), ..] => {
                let signature = STANDARD
                    .decode(signature)
                    .map_err(|_| ScramError::Malformed("the signature is not base64"))?;
                if bool::from(signature.ct_eq(&self.server_signature)) {
                    Ok(())
                } else {
                    Err(ScramError::ServerSignature)
                }
            }
            _ => Err(ScramError::Malformed("expected `v=<signature>`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credentials() -> Credentials {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Credentials::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_client() {
        let (client, first) = ScramClient::start("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, CLIENT_FIRST.as_bytes());
        let (client, last) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), CLIENT_FINAL);
        client.verify(SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn rfc7677_server() {
        let server = ServerExchange::start(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(server.username(), "user");
        let creds = rfc_credentials();
        let (server, first) = server.challenge(
            &creds.salt,
            creds.iterations,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        assert_eq!(first, SERVER_FIRST.as_bytes());
        let last = server
            .finish(CLIENT_FINAL.as_bytes(), Some(&creds))
            .unwrap();
        assert_eq!(last, SERVER_FINAL.as_bytes());
    }

    fn exchange(password: &[u8], stored: Option<&Credentials>) -> Result<(), ScramError> {
        let (client, first) = ScramClient::start("a,b=c", password, "abc");
        let server = ServerExchange::start(&first)?;
        assert_eq!(server.username(), "a,b=c");
        let (salt, iterations) = stored.map_or((&b"fake"[..], 4096), |c| (&c.salt, c.iterations));
        let (server, server_first) = server.challenge(salt, iterations, "xyz");
        let (client, client_final) = client.respond(&server_first)?;
        let server_final = server.finish(&client_final, stored)?;
        client.verify(&server_final)
    }

    #[test]
    fn wrong_password_and_unknown_user_fail() {
        let creds = Credentials::derive(b"right", b"salt", 4096);
        assert_eq!(exchange(b"right", Some(&creds)), Ok(()));
        assert_eq!(
            exchange(b"wrong", Some(&creds)),
            Err(ScramError::InvalidProof)
        );
        assert_eq!(exchange(b"right", None), Err(ScramError::InvalidProof));
    }

    #[test]
    fn client_detects_a_server_without_the_password() {
        let (client, _) = ScramClient::start("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
        let (client, _) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        let forged = format!("v={}", STANDARD.encode([7u8; 32]));
        assert_eq!(
            client.verify(forged.as_bytes()),
            Err(ScramError::ServerSignature)
        );
        let (client, _) = ScramClient::start("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
        let (client, _) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client.verify(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
    }

    #[test]
    fn client_refuses_bad_server_first() {
        let start = || ScramClient::start("user", b"pencil", "abc").0;
        // The server must extend the client's nonce.
        assert_eq!(
            start().respond(b"r=abc,s=c2FsdA==,i=4096").unwrap_err(),
            ScramError::Nonce
        );
        assert_eq!(
            start().respond(b"r=xyzabc,s=c2FsdA==,i=4096").unwrap_err(),
            ScramError::Nonce
        );
        assert_eq!(
            start().respond(b"r=abcd,s=c2FsdA==,i=1").unwrap_err(),
            ScramError::Iterations(1)
        );
        assert!(matches!(
            start().respond(b"r=abcd,s=!!,i=4096").unwrap_err(),
            ScramError::Malformed(_)
        ));
        assert_eq!(
            start().respond(b"e=unknown-user").unwrap_err(),
            ScramError::Server("unknown-user".into())
        );
    }

    #[test]
    fn server_refuses_bad_client_messages() {
        for (message, error) in [
            ("p=tls-unique,,n=user,r=abc", ScramError::ChannelBinding),
            ("n,a=other,n=user,r=abc", ScramError::AuthzId),
            (
                "n,,m=ext,n=user,r=abc",
                ScramError::Malformed("mandatory extension"),
            ),
            (
                "n,,n=user",
                ScramError::Malformed("expected `n=<user>,r=<nonce>`"),
            ),
            (
                "n,,n=us=er,r=abc",
                ScramError::Malformed("bad `=` escape in the username"),
            ),
            ("n,,n=user,r=", ScramError::Malformed("bad nonce")),
            (
                "x,,n=user,r=abc",
                ScramError::Malformed("bad channel-binding flag"),
            ),
            ("n=user,r=abc", ScramError::Malformed("no GS2 header")),
            ("", ScramError::Malformed("no GS2 header")),
        ] {
            assert_eq!(
                ServerExchange::start(message.as_bytes()).unwrap_err(),
                error,
                "{message}"
            );
        }
        assert_eq!(
            ServerExchange::start(&[0xff, b',', b',']).unwrap_err(),
            ScramError::Malformed("not UTF-8")
        );
        // An authorization identity equal to the username is fine.
        let s = ServerExchange::start(b"y,a=user,n=user,r=abc").unwrap();
        assert_eq!(s.gs2_header, "y,a=user,");

        let creds = rfc_credentials();
        let challenge = || {
            ServerExchange::start(CLIENT_FIRST.as_bytes())
                .unwrap()
                .challenge(&creds.salt, 4096, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
                .0
        };
        let wrong_nonce = CLIENT_FINAL.replace("$k0", "$k1");
        let wrong_binding = CLIENT_FINAL.replace("c=biws", "c=eSws");
        for (message, error) in [
            (wrong_nonce.as_str(), ScramError::Nonce),
            (
                wrong_binding.as_str(),
                ScramError::Malformed("the channel binding does not repeat the GS2 header"),
            ),
            ("c=biws,r=x", ScramError::Malformed("no proof")),
            (
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
                ScramError::Malformed("the proof is not 32 bytes of base64"),
            ),
        ] {
            assert_eq!(
                challenge()
                    .finish(message.as_bytes(), Some(&creds))
                    .unwrap_err(),
                error,
                "{message}"
            );
        }
    }

    #[test]
    fn credentials_format_round_trip_and_password_check() {
        let creds = rfc_credentials();
        let text = creds.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        assert_eq!(Credentials::parse(&text).unwrap(), creds);
        assert!(creds.verify_password(b"pencil"));
        assert!(!creds.verify_password(b"pencil2"));
        for bad in [
            "SCRAM-SHA-1$4096:c2FsdA==$a:b",
            "SCRAM-SHA-256$0:c2FsdA==$a:b",
            "SCRAM-SHA-256$4096:$a:b",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn saslname_escapes_round_trip() {
        for name in ["plain", "a,b", "a=b", "=2C", ",,==", ""] {
            assert_eq!(decode_name(&encode_name(name)).unwrap(), name);
        }
    }
}
