//! The TLS flags of `sagitta pub`, `sagitta sub` and `sagitta bench`, named as
//! `mosquitto_pub`'s: `--cafile` or `--tls-use-os-certs` turns TLS on, `--cert`/`--key` add
//! a client certificate, `--insecure` skips verification, `--tls-server-name` overrides the
//! name checked. An `mqtts://` URL without a trust flag trusts the system's CAs.

use std::path::PathBuf;

use sagitta_client::TlsOptions;

/// TLS flags, shared by the tools that connect to a broker.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Connect with TLS, trusting the CA certificates of this PEM file (the broker's
    /// certificate must chain to one of them and name the host). The port stays 1883 unless
    /// -p says otherwise (usually -p 8883).
    #[arg(long = "cafile", value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Connect with TLS, trusting the operating system's CA certificates (on Debian the
    /// ca-certificates bundle; SSL_CERT_FILE / SSL_CERT_DIR override it): for brokers with a
    /// public certificate. The default trust of an mqtts:// URL.
    #[arg(long = "tls-use-os-certs", conflicts_with = "cafile")]
    pub os_certs: bool,
    /// Client certificate chain (PEM) for mutual TLS; needs --key.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --cert.
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// TLS without verifying the broker's certificate (CA, name, dates): tests only. Unlike
    /// mosquitto's --insecure (name check only), it needs no --cafile.
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// The name the broker's certificate must be valid for, and the SNI sent (default: the
    /// host, -h); a DNS name or an IP address.
    #[arg(long = "tls-server-name", value_name = "NAME")]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS options the flags ask for, `None` for plain TCP. `required`: TLS was asked for
    /// in another way (an `mqtts://` URL), so a trust setting must be given.
    pub fn options(&self, required: bool) -> Result<Option<TlsOptions>, String> {
        let mut options = match (&self.cafile, self.insecure) {
            (_, true) => TlsOptions::insecure(),
            (Some(ca), false) => TlsOptions::ca_file(ca),
            (None, false) if self.os_certs || required => TlsOptions::system_roots(),
            (None, false) => {
                let lone = if self.cert.is_some() {
                    Some("--cert and --key")
                } else if self.server_name.is_some() {
                    Some("--tls-server-name")
                } else {
                    None
                };
                return match lone {
                    Some(flags) => Err(format!(
                        "{flags} need TLS: give --cafile FILE or --tls-use-os-certs (or \
                         --insecure)"
                    )),
                    None => Ok(None),
                };
            }
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.client_cert(cert, key);
        }
        if let Some(name) = &self.server_name {
            options = options.server_name(name);
        }
        Ok(Some(options))
    }
}

/// The `--help` lines on TLS shared by the tools.
pub const TLS_HELP: &str = "\
TLS: --cafile or --tls-use-os-certs turns TLS on (TLS 1.2 or 1.3); the port stays 1883
unless -p says otherwise. An mqtts:// URL (-L) means TLS on port 8883 with the system's CAs.
  --cafile ca.pem -p 8883                       verify the broker against ca.pem
  --tls-use-os-certs -p 8883                    verify it against the system's CAs
  --cafile ca.pem --cert me.pem --key me.key    mutual TLS with a client certificate
  --insecure -p 8883                            TLS without verification (tests only)";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cafile: bool, cert: bool, insecure: bool, name: bool) -> TlsArgs {
        TlsArgs {
            cafile: cafile.then(|| "ca.pem".into()),
            os_certs: false,
            cert: cert.then(|| "c.pem".into()),
            key: cert.then(|| "c.key".into()),
            insecure,
            server_name: name.then(|| "broker.example".into()),
        }
    }

    #[test]
    fn cafile_or_insecure_turns_tls_on() {
        assert!(
            args(false, false, false, false)
                .options(false)
                .unwrap()
                .is_none()
        );
        assert!(
            args(true, false, false, false)
                .options(false)
                .unwrap()
                .is_some()
        );
        assert!(
            args(true, true, false, true)
                .options(false)
                .unwrap()
                .is_some()
        );
        let insecure = args(false, false, true, false).options(false).unwrap();
        assert!(insecure.is_some_and(|o| o.is_insecure()));
        let both = args(true, false, true, false).options(false).unwrap();
        assert!(both.is_some_and(|o| o.is_insecure()));
    }

    #[test]
    fn tls_flags_without_tls_are_errors() {
        let e = args(false, true, false, false).options(false).unwrap_err();
        assert!(e.contains("--cert") && e.contains("--cafile"), "{e}");
        let e = args(false, false, false, true).options(false).unwrap_err();
        assert!(e.contains("--tls-server-name"), "{e}");
        // mqtts:// alone trusts the system's CAs; so does --tls-use-os-certs.
        assert!(
            args(false, false, false, false)
                .options(true)
                .unwrap()
                .is_some()
        );
        assert!(args(true, false, false, false).options(true).is_ok());
        let os = TlsArgs {
            os_certs: true,
            ..args(false, true, false, false)
        };
        assert!(os.options(false).unwrap().is_some());
    }
}
