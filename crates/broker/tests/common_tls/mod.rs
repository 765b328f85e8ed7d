//! TLS test helpers: a throw-away PKI made with rcgen (written to a fresh directory, never
//! committed), rustls client configurations, and a raw MQTT peer over TLS.

// Test helpers: a failed expectation must abort the test with a message, which is what
// unwrap/expect/panic do. The workspace denies them outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sagitta_proto::{ConnAck, Connect, Packet, ProtocolVersion, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A fresh, empty directory for one test (removed by [`Pki`]'s drop).
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagitta-tls-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "sagitta test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with common name `cn` (if any) and DNS names `dns`, valid now
    /// unless `expired`: (certificate PEM, key PEM).
    pub fn client(&self, cn: Option<&str>, dns: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sagitta tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with common name `cn` and serial number `serial` (to revoke it
    /// in a [`Ca::crl`]): (certificate PEM, key PEM).
    pub fn client_with_serial(&self, cn: &str, serial: u64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A CRL (PEM) from this CA revoking the certificates with these serial numbers.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// The test PKI, as files in a fresh directory (removed on drop):
///
/// - `ca.pem` signs `server.pem`/`server.key` (localhost, 127.0.0.1), `client.pem`/
///   `client.key` (CN `client1`, DNS `client1.example`) and `expired.pem`/`expired.key`;
/// - `other-ca.pem` signs `foreign.pem`/`foreign.key` (CN `intruder`) and
///   `server2.pem`/`server2.key` (the replacement certificate of the reload tests).
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub other_ca: Ca,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let ca = Ca::new("Sagitta Test CA");
        let other_ca = Ca::new("Some Other CA");
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write("ca.pem", &ca.pem);
        write("other-ca.pem", &other_ca.pem);
        let (cert, key) = ca.server();
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = ca.client(Some("client1"), &["client1.example"], false);
        write("client.pem", &cert);
        write("client.key", &key);
        let (cert, key) = ca.client(Some("client1"), &[], true);
        write("expired.pem", &cert);
        write("expired.key", &key);
        let (cert, key) = other_ca.client(Some("intruder"), &[], false);
        write("foreign.pem", &cert);
        write("foreign.key", &key);
        let (cert, key) = other_ca.server();
        write("server2.pem", &cert);
        write("server2.key", &key);
        // Mosquitto or paho may run as another user: let them read the files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, ca, other_ca }
    }

    /// The path of one of the files.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The path as a string, for command lines.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A client trusting `ca_file`, presenting `identity` (`"client"` → `client.pem` and
    /// `client.key`) if given.
    pub fn client_config(&self, ca_file: &str, identity: Option<&str>) -> Arc<ClientConfig> {
        client_config(
            &self.path(ca_file),
            identity.map(|name| {
                (
                    self.path(&format!("{name}.pem")),
                    self.path(&format!("{name}.key")),
                )
            }),
            None,
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A rustls client trusting the CAs of `ca`, with a client certificate if given, restricted
/// to one TLS version if given.
pub fn client_config(
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match version {
        Some(v) => builder.with_protocol_versions(&[v]).unwrap(),
        None => builder.with_safe_default_protocol_versions().unwrap(),
    }
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// Opens TCP and runs the TLS handshake for `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// A raw MQTT peer over TLS.
pub struct TlsPeer {
    pub version: ProtocolVersion,
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
}

impl TlsPeer {
    /// TLS handshake, CONNECT, CONNACK. `Err` says where it failed (TLS handshake, or the
    /// connection ended before a CONNACK).
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        connect: Connect,
    ) -> Result<(TlsPeer, ConnAck), String> {
        let stream = tls_connect(addr, config)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let mut peer = TlsPeer {
            version: connect.protocol,
            stream,
            rbuf: BytesMut::new(),
        };
        // With TLS 1.3 the server judges the client certificate after the client's side of
        // the handshake is done: a refusal shows up on the first write or read.
        if let Err(e) = peer.try_send(Packet::Connect(Box::new(connect))).await {
            return Err(format!("connection closed before CONNACK: {e}"));
        }
        match peer.next_packet().await {
            Ok(Some(Packet::ConnAck(ack))) => Ok((peer, ack)),
            Ok(Some(other)) => panic!("expected CONNACK, got {other:?}"),
            Ok(None) => Err("connection closed before CONNACK".into()),
            Err(e) => Err(format!("connection closed before CONNACK: {e}")),
        }
    }

    async fn try_send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).unwrap();
        self.stream.write_all(&buf).await?;
        self.stream.flush().await
    }

    pub async fn send(&mut self, packet: Packet) {
        self.try_send(packet).await.expect("write");
    }

    /// The next packet, `Ok(None)` at end of stream; fails after [`WAIT`].
    async fn next_packet(&mut self) -> std::io::Result<Option<Packet>> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = decode(&mut self.rbuf, self.version, usize::MAX).expect("decodes")
                {
                    return Ok(Some(p));
                }
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
        .expect("timed out waiting for a packet")
    }

    /// The next packet, or `None` if the connection ended.
    pub async fn try_recv(&mut self) -> Option<Packet> {
        self.next_packet().await.ok().flatten()
    }

    /// The next packet; fails if the connection ends.
    pub async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("connection closed")
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_silence(&mut self) {
        let quiet = Duration::from_millis(300);
        if let Ok(p) = tokio::time::timeout(quiet, self.next_packet()).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}
