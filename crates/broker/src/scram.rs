//! The `SCRAM-SHA-256` enhanced-authentication method, with the credentials of a password
//! file (see [`crate::password`]): offered by every listener that has a `password_file`
//! (and does not take usernames from client certificates).
//!
//! The exchange: CONNECT carries client-first, AUTH 0x18 server-first, AUTH 0x18
//! client-final, and the CONNACK server-final (or AUTH 0x00 at the end of a
//! re-authentication). A wrong password and an unknown user both end with 0x86 Bad User Name
//! or Password at the proof, after the same steps. A CONNECT that also has a User Name must
//! name the same user.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sagitta_proto::ReasonCode;
use sagitta_proto::scram::{MECHANISM, ServerChallenge, ServerExchange};
use tracing::info;

use crate::auth::{AuthExchange, AuthMethod, AuthStep, ConnectInfo};
use crate::listener::SharedPasswordFile;
use crate::password::PasswordFile;

/// SCRAM-SHA-256 against a password file's SCRAM credentials.
pub struct ScramSha256 {
    file: SharedPasswordFile,
}

impl ScramSha256 {
    pub(crate) fn new(file: SharedPasswordFile) -> Self {
        Self { file }
    }
}

impl AuthMethod for ScramSha256 {
    fn name(&self) -> &str {
        MECHANISM
    }

    fn start(&self, info: &ConnectInfo<'_>) -> Box<dyn AuthExchange> {
        Box::new(Exchange {
            file: self.file.get(),
            connect_username: info.username.map(str::to_owned),
            stage: Stage::First,
        })
    }
}

struct Exchange {
    /// The file as it was when the exchange began (a reload does not change it midway).
    file: Arc<PasswordFile>,
    connect_username: Option<String>,
    stage: Stage,
}

enum Stage {
    First,
    Challenged(ServerChallenge),
    Done,
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::First => {
                let exchange = match ServerExchange::start(data) {
                    Ok(e) => e,
                    Err(e) => {
                        info!(error = %e, "SCRAM: bad client-first message");
                        return AuthStep::Failure(ReasonCode::NotAuthorized);
                    }
                };
                if self
                    .connect_username
                    .as_deref()
                    .is_some_and(|u| u != exchange.username())
                {
                    info!(
                        scram_user = exchange.username(),
                        "SCRAM: the CONNECT names another user"
                    );
                    return AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
                }
                let (salt, iterations, _) = self.file.scram(exchange.username());
                let (challenge, server_first) =
                    exchange.challenge(&salt, iterations, &server_nonce());
                self.stage = Stage::Challenged(challenge);
                AuthStep::Continue(server_first)
            }
            Stage::Challenged(challenge) => {
                let username = challenge.username().to_owned();
                let (_, _, credentials) = self.file.scram(&username);
                match challenge.finish(data, credentials) {
                    Ok(server_final) => AuthStep::Success {
                        username,
                        data: Some(server_final),
                    },
                    Err(e) => {
                        info!(scram_user = username, error = %e, "SCRAM: authentication failed");
                        AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
                    }
                }
            }
            Stage::Done => AuthStep::Failure(ReasonCode::ProtocolError),
        }
    }
}

/// 18 random bytes in base64 (24 printable characters without `,`).
fn server_nonce() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use sagitta_proto::ProtocolVersion;
    use sagitta_proto::scram::{Credentials, ScramClient};

    use super::*;
    use crate::config::ListenerKind;
    use crate::listener::ListenerInfo;
    use crate::reload::FileBacked;

    fn method() -> ScramSha256 {
        let text = format!(
            "alice:{}\nbob:{}\n",
            Credentials::derive(b"wonderland", b"alice-salt", 4096),
            crate::PasswordHash::with_salt(b"builder", b"saltsaltsalt", 10)
        );
        let file = PasswordFile::parse(&text, "test").unwrap();
        ScramSha256::new(Arc::new(FileBacked::new("test".as_ref(), file)))
    }

    fn login(method: &ScramSha256, connect_user: Option<&str>, user: &str, pw: &[u8]) -> AuthStep {
        let listener = ListenerInfo {
            name: String::new(),
            kind: ListenerKind::Tcp,
            local_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            allow_anonymous: false,
            verifies_client_certificates: false,
        };
        let info = ConnectInfo {
            client_id: "c",
            username: connect_user,
            password: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            protocol: ProtocolVersion::V5,
            listener: &listener,
            certificate: None,
        };
        let mut exchange = method.start(&info);
        let (client, first) = ScramClient::start(user, pw, "clientnonce");
        let server_first = match exchange.step(Some(&first)) {
            AuthStep::Continue(data) => data,
            refused => return refused,
        };
        let (client, last) = client.respond(&server_first).unwrap();
        let step = exchange.step(Some(&last));
        if let AuthStep::Success {
            data: Some(data), ..
        } = &step
        {
            client.verify(data).unwrap();
        }
        step
    }

    #[test]
    fn logs_in_with_the_right_password_only() {
        let m = method();
        match login(&m, None, "alice", b"wonderland") {
            AuthStep::Success { username, data } => {
                assert_eq!(username, "alice");
                assert!(data.is_some_and(|d| d.starts_with(b"v=")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            login(&m, Some("alice"), "alice", b"wonderland"),
            AuthStep::Success { .. }
        ));
        let refused = AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
        assert_eq!(login(&m, None, "alice", b"Wonderland"), refused);
        // A user with only a PBKDF2-SHA512 hash, and an unknown one, fail the same way.
        assert_eq!(login(&m, None, "bob", b"builder"), refused);
        assert_eq!(login(&m, None, "mallory", b"x"), refused);
    }

    #[test]
    fn unknown_users_get_a_stable_made_up_salt() {
        let m = method();
        let file = m.file.get();
        let (salt1, iterations, creds) = file.scram("mallory");
        assert!(creds.is_none());
        assert_eq!(iterations, 4096);
        assert_eq!(file.scram("mallory").0, salt1);
        assert_ne!(file.scram("trudy").0, salt1);
        assert_eq!(file.scram("alice").0, b"alice-salt");
    }

    #[test]
    fn connect_username_must_match() {
        let m = method();
        assert_eq!(
            login(&m, Some("bob"), "alice", b"wonderland"),
            AuthStep::Failure(ReasonCode::BadUserNameOrPassword)
        );
    }
}
