//! TLS for listeners of `type = "tls"`: PEM files to a rustls [`ServerConfig`] (TLS 1.2 and
//! 1.3 only, the `ring` provider), optional client-certificate verification against a CA
//! bundle (mTLS), a configuration that can be swapped while connections run (certificate
//! reload), and the identity of a client certificate (common name, DNS names).
//!
//! The identity is read with a small DER reader of our own: only certificates that rustls has
//! verified against the listener's CA reach it, but it still treats its input as untrusted
//! (every length is checked; malformed input gives no identity, never a panic).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why a TLS listener's files cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// Which file: `certificate`, `private key` or `client CA`.
        what: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not usable PEM, or holds nothing of the expected kind.
    #[error("{what} file {path}: {message}")]
    Pem {
        /// Which file: `certificate`, `private key` or `client CA`.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate chain and key (unsupported key type, key not matching
    /// the certificate) or a CA certificate.
    #[error("{path}: {message}")]
    Rejected {
        /// The file (or files) concerned.
        path: String,
        /// rustls's reason.
        message: String,
    },
}

/// The files of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
    /// PEM bundle of the CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client must present a certificate (`false`: one is
    /// verified if presented).
    pub require_client_cert: bool,
    /// With `client_ca`: PEM certificate revocation lists; a revoked client certificate
    /// fails the handshake.
    pub crl: Option<PathBuf>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        what,
        path: path.display().to_string(),
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

/// Every certificate revocation list of a PEM file (at least one).
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let what = "CRL";
    let pem = read(what, path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, format!("invalid PEM: {e}")))?;
    if crls.is_empty() {
        return Err(pem_error(
            what,
            path,
            "no `-----BEGIN X509 CRL-----` section found",
        ));
    }
    Ok(crls)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
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

/// Reads the files and builds the server configuration: TLS 1.2 and 1.3 with the `ring`
/// provider; with `client_ca`, client certificates are verified against it (and required
/// unless `require_client_cert` is false).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs("certificate", &files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rejected {
            path: files.cert.display().to_string(),
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs("client CA", ca_path)? {
                roots.add(cert).map_err(|e| TlsError::Rejected {
                    path: ca_path.display().to_string(),
                    message: format!("unusable CA certificate: {e}"),
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_path) = &files.crl {
                verifier = verifier.with_crls(load_crls(crl_path)?);
            }
            if !files.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::Rejected {
                path: ca_path.display().to_string(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rejected {
            path: format!("{} and {}", files.cert.display(), files.key.display()),
            message: match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the private key does not belong to the certificate".to_owned()
                }
                other => format!("certificate and key cannot be used together: {other}"),
            },
        })?;
    Ok(Arc::new(config))
}

/// A TLS listener's files and its current configuration, which [`TlsState::reload`]
/// replaces: new handshakes use the new one, established connections keep theirs.
pub(crate) struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Reads the files once.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// Whether client certificates are verified (`client_ca` is set).
    pub fn verifies_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The listener's files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again into a configuration, without using it yet.
    pub fn prepare(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.files)
    }

    /// Makes `config` the one new handshakes use.
    pub fn install(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// What the broker knows of a verified client certificate (mTLS), for authenticators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The first common name (CN) of the subject, if any.
    pub common_name: Option<String>,
    /// The DNS names of the Subject Alternative Name extension, in order.
    pub dns_names: Vec<String>,
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
}

impl ClientCertificate {
    /// Reads the common name and DNS names of a DER certificate. Malformed parts are left
    /// out (this never fails).
    pub fn from_der(der: &[u8]) -> Self {
        let (common_name, dns_names) = der::identity(der);
        Self {
            common_name,
            dns_names,
            der: der.to_vec(),
        }
    }

    /// The identity used as username (`use_identity_as_username`): the common name, else
    /// the first DNS name.
    pub fn identity(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or(self.dns_names.first().map(String::as_str))
    }
}

/// Just enough DER to read a certificate's subject common name and SAN DNS names
/// (RFC 5280 §4.1, §4.2.1.6).
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const BOOLEAN: u8 = 0x01;
    /// `[0] EXPLICIT Version` of TBSCertificate.
    const VERSION: u8 = 0xa0;
    /// `[3] EXPLICIT Extensions` of TBSCertificate.
    const EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IA5String` of GeneralName.
    const DNS_NAME: u8 = 0x82;
    /// id-at-commonName, 2.5.4.3.
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// id-ce-subjectAltName, 2.5.29.17.
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// One element: tag, contents, and what follows it.
    fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags do not occur in what we read
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, rest) = rest.split_at_checked(n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest)
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        Some((tag, contents, rest))
    }

    /// The contents of an element that must have `tag`, and what follows it.
    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        match next(input)? {
            (t, contents, rest) if t == tag => Some((contents, rest)),
            _ => None,
        }
    }

    /// The elements of a constructed value, until the end or the first malformed one.
    fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, contents, rest) = next(input)?;
            input = rest;
            Some((tag, contents))
        })
    }

    /// A directory string as text (UTF8String, PrintableString, IA5String, TeletexString as
    /// Latin-1, BMPString).
    fn text(tag: u8, contents: &[u8]) -> Option<String> {
        match tag {
            0x0c => std::str::from_utf8(contents).ok().map(str::to_owned),
            0x13 | 0x16 => contents
                .is_ascii()
                .then(|| String::from_utf8_lossy(contents).into_owned()),
            0x14 => Some(contents.iter().map(|&b| char::from(b)).collect()),
            0x1e => {
                if !contents.len().is_multiple_of(2) {
                    return None;
                }
                let units = contents
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .ok()
            }
            _ => None,
        }
    }

    /// The subject's first common name and the SAN DNS names of a DER certificate.
    pub(super) fn identity(cert: &[u8]) -> (Option<String>, Vec<String>) {
        let Some((subject, after_subject)) = subject(cert) else {
            return (None, Vec::new());
        };
        (common_name(subject), dns_names(after_subject))
    }

    /// The contents of the subject Name and what follows it in TBSCertificate.
    fn subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
        let (certificate, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(certificate, SEQUENCE)?;
        let mut rest = tbs;
        if let Some((VERSION, _, after)) = next(rest) {
            rest = after;
        }
        // serialNumber, signature, issuer, validity
        for _ in 0..4 {
            rest = next(rest)?.2;
        }
        expect(rest, SEQUENCE)
    }

    fn common_name(name: &[u8]) -> Option<String> {
        for (tag, rdn) in elements(name) {
            if tag != SET {
                return None;
            }
            for (tag, attribute) in elements(rdn) {
                if tag != SEQUENCE {
                    continue;
                }
                let Some((oid, value)) = expect(attribute, OID) else {
                    continue;
                };
                if oid == OID_COMMON_NAME {
                    let (tag, contents, _) = next(value)?;
                    return text(tag, contents).filter(|s| !s.is_empty());
                }
            }
        }
        None
    }

    /// DNS names from the extensions that follow the subject (subjectPublicKeyInfo, optional
    /// unique ids, `[3]` extensions).
    fn dns_names(after_subject: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for (tag, contents) in elements(after_subject) {
            if tag != EXTENSIONS {
                continue;
            }
            let Some((extensions, _)) = expect(contents, SEQUENCE) else {
                break;
            };
            for (tag, extension) in elements(extensions) {
                if tag != SEQUENCE {
                    continue;
                }
                let Some((oid, mut rest)) = expect(extension, OID) else {
                    continue;
                };
                if oid != OID_SUBJECT_ALT_NAME {
                    continue;
                }
                if let Some((BOOLEAN, _, after)) = next(rest) {
                    rest = after; // critical
                }
                let Some((value, _)) = expect(rest, OCTET_STRING) else {
                    continue;
                };
                let Some((general_names, _)) = expect(value, SEQUENCE) else {
                    continue;
                };
                for (tag, contents) in elements(general_names) {
                    if tag == DNS_NAME && contents.is_ascii() && !contents.is_empty() {
                        names.push(String::from_utf8_lossy(contents).into_owned());
                    }
                }
            }
        }
        names
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lengths_are_checked() {
            assert_eq!(next(&[0x30, 0x03, 1, 2]), None);
            assert_eq!(next(&[0x30, 0x81]), None);
            assert_eq!(next(&[0x30, 0x80]), None);
            assert_eq!(next(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
            assert_eq!(
                next(&[0x04, 0x81, 0x01, 9, 7]),
                Some((0x04, &[9u8][..], &[7u8][..]))
            );
            assert_eq!(next(&[]), None);
        }

        #[test]
        fn strings() {
            assert_eq!(text(0x0c, "é".as_bytes()).as_deref(), Some("é"));
            assert_eq!(text(0x13, b"abc").as_deref(), Some("abc"));
            assert_eq!(text(0x13, &[0xff]), None);
            assert_eq!(text(0x14, &[0xe9]).as_deref(), Some("é"));
            assert_eq!(text(0x1e, &[0, 0x41, 0, 0xe9]).as_deref(), Some("Aé"));
            assert_eq!(text(0x1e, &[0]), None);
            assert_eq!(text(0x02, b"1"), None);
        }

        #[test]
        fn garbage_gives_no_identity() {
            assert_eq!(identity(&[]), (None, vec![]));
            assert_eq!(identity(&[0x30, 0x02, 0x30, 0x00]), (None, vec![]));
            let mut bytes = vec![0x30, 0x82, 0xff, 0xff];
            bytes.extend_from_slice(&[0x30; 64]);
            assert_eq!(identity(&bytes), (None, vec![]));
        }
    }
}
