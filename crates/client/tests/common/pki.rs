//! A throw-away PKI for the TLS tests, made with rcgen at run time (no key is committed) and
//! written to a fresh directory that is removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::TlsSetup;

/// A certificate authority that signs certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost`, 127.0.0.1 and ::1, valid now unless `expired`:
    /// (certificate PEM, key PEM).
    pub fn server(&self, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "sagitta test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with common name `cn`: (certificate PEM, key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The test PKI, as files in a fresh directory (removed on drop):
///
/// - `ca.pem` signs `server.pem`/`server.key` (localhost, 127.0.0.1, ::1),
///   `expired-server.pem`/`expired-server.key` (the same names, expired in 2002) and
///   `client.pem`/`client.key` (CN `client1`);
/// - `other-ca.pem` signs `foreign.pem`/`foreign.key` (CN `intruder`).
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sagitta-client-tls-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Sagitta Client Test CA");
        let other = Ca::new("Some Other CA");
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write("ca.pem", &ca.pem);
        write("other-ca.pem", &other.pem);
        let (cert, key) = ca.server(false);
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = ca.server(true);
        write("expired-server.pem", &cert);
        write("expired-server.key", &key);
        let (cert, key) = ca.client("client1");
        write("client.pem", &cert);
        write("client.key", &key);
        let (cert, key) = other.client("intruder");
        write("foreign.pem", &cert);
        write("foreign.key", &key);
        Self { dir }
    }

    /// The path of one of the files.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The path as a string, for command lines.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A TLS listener with `server.pem`, requiring client certificates from `ca.pem` if
    /// `mutual`.
    pub fn listener(&self, mutual: bool) -> TlsSetup {
        self.listener_with("server", mutual)
    }

    /// A TLS listener with the certificate `NAME.pem` / `NAME.key`.
    pub fn listener_with(&self, name: &str, mutual: bool) -> TlsSetup {
        TlsSetup {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
