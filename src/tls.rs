//! TLS to Redis (`rediss://`): the CA to trust, the client certificate for mTLS, the name to
//! check the server's certificate against, and the handshake itself.
//!
//! redis-lookout does the TLS handshake itself (tokio-rustls) and hands the encrypted stream to
//! redis-rs. That way a name override works for IP addresses, verification can be turned off
//! without a special build of the client, and every handshake or certificate failure is reported
//! as the poll error kind `tls` rather than as a dropped connection.
//!
//! Certificate and key files are read at every connect, so rotated files are picked up on the
//! next reconnect; the system's roots (used when no `ca_file` is given) are read once.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// A target's `tls:` settings (and redis_exporter's `--tls-*` flags). All optional: with none,
/// the server's certificate is checked against the system's roots and the URL's host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA certificate(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers with `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (unencrypted: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the URL's host.
    pub server_name: Option<String>,
    /// Accept any server certificate. The session is still encrypted, but not authenticated.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    /// True when nothing is set (system roots, URL host, no client certificate).
    pub fn is_default(&self) -> bool {
        *self == TlsSettings::default()
    }

    /// Checks the settings and every file they name, so a mistake stops the start instead of
    /// failing each poll.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("tls: cert_file and key_file go together (one without the other)".into());
        }
        if let Some(name) = &self.server_name {
            ServerName::try_from(name.clone())
                .map_err(|_| format!("tls: server_name {name:?} is not a DNS name or IP"))?;
        }
        self.client_config().map(|_| ())
    }

    /// The rustls client configuration these settings describe (files read now).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_file {
                Some(path) => {
                    for cert in read_certs(path)? {
                        roots.add(cert).map_err(|e| {
                            format!("tls: ca_file {}: unusable CA: {e}", path.display())
                        })?;
                    }
                }
                None => {
                    roots.add_parsable_certificates(system_roots().iter().cloned());
                }
            }
            builder.with_root_certificates(roots)
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("tls: client certificate and key do not match: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// The name to verify the server's certificate against: `server_name`, else `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned())
            .map_err(|_| format!("tls: {name:?} is not a DNS name or IP"))
    }
}

/// Certificate and key files are small; a bigger one is a mistake (or a device).
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("tls: cannot read {}: {}", path.display(), e.kind()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("tls: {} is larger than 1 MiB", path.display()));
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem_file(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("tls: {} is not PEM", path.display()))?;
    if certs.is_empty() {
        return Err(format!("tls: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads a private key. Errors name the file, never its content.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "tls: {} holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

/// Reads a PEM certificate chain (for the exporter's own HTTPS too).
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_certs(path)
}

/// The system's trusted roots, read once per process (they are many files and rarely change).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// `insecure_skip_verify`: any certificate, any name. Handshake signatures are still checked,
/// so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_without_key_and_missing_files_are_refused_by_name() {
        let half = TlsSettings {
            cert_file: Some("/nonexistent/client.pem".into()),
            ..Default::default()
        };
        assert!(half.validate().unwrap_err().contains("go together"));
        let missing = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = missing.validate().unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = TlsSettings {
            ca_file: Some(junk),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn the_server_name_overrides_the_host_and_ip_hosts_work() {
        let plain = TlsSettings::default();
        assert_eq!(
            plain.server_name_for("127.0.0.1").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert!(plain.server_name_for("[::1]").is_ok());
        let named = TlsSettings {
            server_name: Some("redis.internal".into()),
            ..Default::default()
        };
        assert_eq!(
            named.server_name_for("10.0.0.1").unwrap(),
            ServerName::try_from("redis.internal").unwrap()
        );
        assert!(TlsSettings {
            server_name: Some("bad name!".into()),
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
