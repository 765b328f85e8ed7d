//! TLS: the options ([`TlsOptions`]), their PEM files turned into a rustls `ClientConfig`
//! (TLS 1.2 and 1.3 with the `ring` provider), the server name checked against the broker's
//! certificate, and what a failed handshake means ([`describe`], [`is_fatal`]).
//!
//! The files are read once, when the client is built; reconnects use the same configuration
//! (and resume TLS sessions from rustls's in-memory cache).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{CertificateError, SignatureScheme};

/// TLS settings for [`crate::ClientBuilder::tls`]: whom to trust, an optional client
/// certificate (mutual TLS), and the name the broker's certificate must carry.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sagitta_client::{Client, TlsOptions};
///
/// let client = Client::builder("broker.example:8883")
///     .tls(
///         TlsOptions::ca_file("/etc/mqtt/ca.pem")
///             .client_cert("/etc/mqtt/device.pem", "/etc/mqtt/device.key"),
///     )
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
///
/// TLS 1.2 and 1.3 only, with rustls and its `ring` provider. Trust the operating system's
/// CAs ([`TlsOptions::system_roots`], for brokers with a public certificate), a CA bundle of
/// your own ([`TlsOptions::ca_file`]), or pass a ready rustls configuration
/// ([`TlsOptions::with_config`]) built with the roots of your choice.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    trust: Trust,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

#[derive(Debug, Clone)]
enum Trust {
    /// The CAs of these PEM bundles.
    CaFiles(Vec<PathBuf>),
    /// The operating system's trust store.
    System,
    /// Nothing verified.
    Insecure,
    /// A configuration made by the caller.
    Config(Arc<ClientConfig>),
}

impl TlsOptions {
    /// Trusts the CA certificates of a PEM bundle (one or more `BEGIN CERTIFICATE` sections):
    /// the broker's certificate must chain to one of them and be valid for the server name.
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        Self {
            trust: Trust::CaFiles(vec![path.into()]),
            identity: None,
            server_name: None,
        }
    }

    /// Trusts the operating system's CA certificates, as a browser would: on Linux the
    /// bundle and directory OpenSSL uses (`/etc/ssl/certs` on Debian, from the
    /// `ca-certificates` package), or the files named by the `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` environment variables; the platform's store on macOS and Windows. They
    /// are read when the client is built; finding none is an error then.
    pub fn system_roots() -> Self {
        Self {
            trust: Trust::System,
            identity: None,
            server_name: None,
        }
    }

    /// Trusts the CAs of another PEM bundle as well (after [`TlsOptions::ca_file`]; after
    /// [`TlsOptions::insecure`] or [`TlsOptions::with_config`] it replaces what they set).
    pub fn add_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        match &mut self.trust {
            Trust::CaFiles(files) => files.push(path.into()),
            other => *other = Trust::CaFiles(vec![path.into()]),
        }
        self
    }

    /// **For tests only**: encrypts, but does not verify the broker's certificate at all —
    /// neither its CA, nor its name, nor its dates. Anyone on the path can impersonate the
    /// broker and read everything, credentials included. The handshake signatures are still
    /// checked, so the connection is at least bound to the certificate the broker sent.
    pub fn insecure() -> Self {
        Self {
            trust: Trust::Insecure,
            identity: None,
            server_name: None,
        }
    }

    /// Uses a ready rustls configuration as it is (roots, client certificate, versions,
    /// ALPN, key log...). The rustls version is the one re-exported as
    /// [`sagitta_client::rustls`](crate::rustls). [`TlsOptions::client_cert`] cannot be
    /// combined with it (put the certificate in the configuration);
    /// [`TlsOptions::server_name`] can.
    pub fn with_config(config: Arc<ClientConfig>) -> Self {
        Self {
            trust: Trust::Config(config),
            identity: None,
            server_name: None,
        }
    }

    /// Presents a client certificate (mutual TLS): `cert` is a PEM certificate chain, the
    /// client's certificate first; `key` its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the broker's certificate must be valid for, and the SNI sent (default: the
    /// host part of the address). A DNS name or an IP address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// True if the broker's certificate is not verified ([`TlsOptions::insecure`]).
    pub fn is_insecure(&self) -> bool {
        matches!(self.trust, Trust::Insecure)
    }

    /// Reads the files and makes the rustls configuration these options describe (for your
    /// own connections; the client does this itself when it is built).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsError::Rejected {
                    what: "TLS versions".into(),
                    message: e.to_string(),
                })
        };
        let wants_identity = match &self.trust {
            Trust::Config(config) => {
                if self.identity.is_some() {
                    return Err(TlsError::Rejected {
                        what: "client certificate".into(),
                        message: "cannot be added to a ready rustls ClientConfig: put it in \
                                  the configuration"
                            .into(),
                    });
                }
                return Ok(config.clone());
            }
            Trust::CaFiles(files) => {
                let mut roots = RootCertStore::empty();
                for path in files {
                    for cert in load_certs("CA", path)? {
                        roots.add(cert).map_err(|e| TlsError::Pem {
                            what: "CA",
                            path: path.clone(),
                            message: format!("unusable CA certificate: {e}"),
                        })?;
                    }
                }
                builder()?.with_root_certificates(roots)
            }
            Trust::System => builder()?.with_root_certificates(system_roots()?),
            Trust::Insecure => builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification {
                    algorithms: provider.signature_verification_algorithms,
                })),
        };
        let config = match &self.identity {
            None => wants_identity.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs("client certificate", cert)?;
                let key_der = load_key(key)?;
                wants_identity
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::Rejected {
                        what: format!(
                            "client certificate {} with key {}",
                            cert.display(),
                            key.display()
                        ),
                        message: e.to_string(),
                    })?
            }
        };
        Ok(Arc::new(config))
    }

    /// The server name for a broker at `host` (a DNS name or an IP address, IPv6 with or
    /// without brackets): [`TlsOptions::server_name`] if set, else `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
    }

    /// The configuration and server name for the broker at `addr` (`host:port`).
    pub(crate) fn load(&self, addr: &str) -> Result<Tls, TlsError> {
        Ok(Tls {
            config: self.client_config()?,
            server_name: self.server_name_for(host_of(addr))?,
        })
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[')
        && let Some((host, _)) = rest.split_once(']')
    {
        return host;
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// TLS ready to use: what [`TlsOptions`] loaded.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Why the TLS settings cannot be used. Each variant names the file concerned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        /// Which file: `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// A file is not usable PEM, or holds nothing of the expected kind.
    #[error("{what} file {}: {message}", path.display())]
    Pem {
        /// Which file: `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the settings (a key that does not match its certificate, an
    /// unsupported key type...).
    #[error("{what}: {message}")]
    Rejected {
        /// What was refused (naming the files).
        what: String,
        /// rustls's reason.
        message: String,
    },
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}: not a DNS name or an IP address")]
    ServerName(String),
}

/// The operating system's CA certificates. Unreadable or unusable ones are skipped, as
/// OpenSSL does; none at all is an error naming what went wrong.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "no CA certificate found (on Debian: install ca-certificates; or set \
                     SSL_CERT_FILE)"
                .to_owned(),
        };
        return Err(TlsError::Rejected {
            what: "system trust store".into(),
            message: why,
        });
    }
    Ok(roots)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        source: Arc::new(e),
    })
}

fn pem_error(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Every certificate of a PEM file (at least one).
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            what,
            path,
            "no `-----BEGIN CERTIFICATE-----` section found",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "client key";
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem_error(
            what,
            path,
            "no private key found (expected `PRIVATE KEY`, `RSA PRIVATE KEY` or \
             `EC PRIVATE KEY` PEM)",
        ),
        other => pem_error(what, path, format!("invalid PEM: {other}")),
    })
}

/// The verifier of [`TlsOptions::insecure`]: any certificate is accepted; the handshake
/// signatures are still checked with the provider's algorithms.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Alerts a broker sends when it refuses our certificate (or the lack of one).
fn refuses_our_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// What a handshake failure means, for the error message.
pub(crate) fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the broker's certificate is not signed by a trusted CA (unknown issuer)".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the broker's certificate is not valid for the server name".into()
        }
        rustls::Error::InvalidCertificate(c) => {
            format!("the broker's certificate was refused: {c}")
        }
        rustls::Error::AlertReceived(alert) if refuses_our_certificate(*alert) => format!(
            "the broker refused our client certificate, or the lack of one ({alert:?} alert)"
        ),
        rustls::Error::AlertReceived(alert) => format!("the broker sent a fatal {alert:?} alert"),
        other => other.to_string(),
    }
}

/// True if connecting again with the same settings cannot succeed: a certificate refused on
/// either side, or no protocol in common.
pub(crate) fn is_fatal(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::PeerIncompatible(_) => true,
        rustls::Error::AlertReceived(alert) => {
            refuses_our_certificate(*alert)
                || matches!(
                    alert,
                    AlertDescription::HandshakeFailure
                        | AlertDescription::ProtocolVersion
                        | AlertDescription::InsufficientSecurity
                )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_of("localhost:8883"), "localhost");
        assert_eq!(host_of("127.0.0.1:8883"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8883"), "::1");
        assert_eq!(host_of("broker"), "broker");
    }

    #[test]
    fn server_names_dns_and_ip() {
        let o = TlsOptions::insecure();
        assert!(matches!(
            o.server_name_for("broker.example").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            o.server_name_for("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            o.server_name_for("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        let o = o.server_name("[::1]");
        assert!(matches!(
            o.server_name_for("ignored").unwrap(),
            ServerName::IpAddress(_)
        ));
        let e = TlsOptions::insecure()
            .server_name("not a name")
            .server_name_for("h")
            .unwrap_err();
        assert!(e.to_string().contains("not a name"), "{e}");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("sagitta-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = TlsOptions::ca_file(&missing).client_config().unwrap_err();
        assert!(matches!(e, TlsError::Read { what: "CA", .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = TlsOptions::ca_file(&empty).client_config().unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");

        let e = TlsOptions::insecure()
            .client_cert(&empty, &missing)
            .client_config()
            .unwrap_err();
        assert!(
            e.to_string().contains("client certificate file") && e.to_string().contains("empty"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificate_failures_are_fatal_and_explained() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(is_fatal(&unknown));
        assert!(describe(&unknown).contains("trusted CA"));
        let refused = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(is_fatal(&refused));
        assert!(describe(&refused).contains("client certificate"));
        assert!(!is_fatal(&rustls::Error::DecryptError));
        assert!(!is_fatal(&rustls::Error::AlertReceived(
            AlertDescription::InternalError
        )));
    }

    #[test]
    fn a_ready_config_takes_no_client_certificate() {
        let config = TlsOptions::insecure().client_config().unwrap();
        assert!(
            TlsOptions::with_config(config.clone())
                .client_config()
                .is_ok()
        );
        let e = TlsOptions::with_config(config)
            .client_cert("c.pem", "c.key")
            .client_config()
            .unwrap_err();
        assert!(matches!(e, TlsError::Rejected { .. }), "{e}");
    }
}
