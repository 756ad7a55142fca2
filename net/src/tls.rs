//! TLS for the listeners: the `[tls]` settings, PEM loading and one rustls [`ServerConfig`] per
//! port (its ALPN protocols, and for the ingest ports the client-certificate check).
//!
//! Only the ring crypto provider is used, passed explicitly (never the process default), so a
//! build never needs aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::NetError;

/// `[tls]`: TLS on every listener, off unless `cert` and `key` are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file with the CA certificates that sign client certificates. When set, the two
    /// ingest listeners (OTLP gRPC and HTTP) accept only clients presenting a certificate signed
    /// by one of them (mTLS); the UI/API listener never asks for one.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Checks that the settings go together (files are read by [`Tls::load`]).
    pub fn validate(&self) -> Result<(), NetError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => invalid("key", "`cert` is set but `key` is not"),
            (None, Some(_)) => invalid("cert", "`key` is set but `cert` is not"),
            (None, None) if self.client_ca.is_some() => {
                invalid("client_ca", "client certificates need TLS: set `cert` and `key` too")
            }
            _ => Ok(()),
        }
    }
}

fn invalid(key: &'static str, reason: &str) -> Result<(), NetError> {
    Err(NetError::InvalidSetting { key, reason: reason.to_string() })
}

/// Which listener a [`ServerConfig`] is for: it decides ALPN and client authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// OTLP/gRPC: HTTP/2 only; client certificates when `client_ca` is set.
    OtlpGrpc,
    /// OTLP/HTTP: HTTP/2 and HTTP/1.1; client certificates when `client_ca` is set.
    OtlpHttp,
    /// UI and query APIs: HTTP/2 and HTTP/1.1; never client certificates.
    Ui,
}

/// The TLS material, read and checked once at start.
#[derive(Clone, Debug)]
pub struct Tls {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Tls {
    /// Reads the PEM files of `config`; `Ok(None)` when TLS is off. Errors name the file and
    /// what is wrong with it (missing, no certificate or key in it, key not matching the
    /// certificate, unusable CA).
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>, NetError> {
        config.validate()?;
        let (Some(cert_path), Some(key_path)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let certs = read_certs(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, "private key", e))?;
        let client_verifier = match &config.client_ca {
            Some(ca_path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(ca_path)? {
                    roots.add(ca).map_err(|e| tls_file(ca_path, format!("unusable CA certificate: {e}")))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| tls_file(ca_path, format!("unusable CA certificates: {e}")))?;
                Some(verifier)
            }
            None => None,
        };
        let tls = Tls { certs, key: Arc::new(key), client_verifier };
        // Builds one configuration now so that a key not matching the certificate stops start-up.
        tls.server_config(Port::Ui).map_err(|e| {
            tls_file(key_path, format!("does not go with the certificate in {}: {e}", cert_path.display()))
        })?;
        Ok(Some(tls))
    }

    /// Whether the ingest listeners require client certificates.
    pub fn requires_client_certs(&self) -> bool {
        self.client_verifier.is_some()
    }

    /// The rustls configuration for `port`.
    pub fn server_config(&self, port: Port) -> Result<Arc<ServerConfig>, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match (&self.client_verifier, port) {
            (Some(verifier), Port::OtlpGrpc | Port::OtlpHttp) => builder.with_client_cert_verifier(verifier.clone()),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols = match port {
            Port::OtlpGrpc => vec![b"h2".to_vec()],
            Port::OtlpHttp | Port::Ui => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(tls_file(path, "no certificate found (expected a PEM `CERTIFICATE` block)".into()));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> NetError {
    let reason = match e {
        pem::Error::NoItemsFound => format!("no {what} found in it"),
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        e => format!("not a valid PEM {what}: {e}"),
    };
    tls_file(path, reason)
}

fn tls_file(path: &Path, reason: String) -> NetError {
    NetError::TlsFile { path: path.to_path_buf(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn cert_and_key() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn config(cert: Option<PathBuf>, key: Option<PathBuf>, client_ca: Option<PathBuf>) -> TlsConfig {
        TlsConfig { cert, key, client_ca }
    }

    fn load_err(c: &TlsConfig) -> String {
        Tls::load(c).unwrap_err().to_string()
    }

    #[test]
    fn off_unless_cert_and_key_are_set() {
        assert!(Tls::load(&TlsConfig::default()).unwrap().is_none());
        let e = load_err(&config(Some("c.pem".into()), None, None));
        assert!(e.contains("`key`"), "{e}");
        let e = load_err(&config(None, Some("k.pem".into()), None));
        assert!(e.contains("`cert`"), "{e}");
        let e = load_err(&config(None, None, Some("ca.pem".into())));
        assert!(e.contains("`client_ca`"), "{e}");
    }

    #[test]
    fn loads_a_certificate_and_each_key_format() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_and_key();
        let cert = write(dir.path(), "cert.pem", &cert);
        let key = write(dir.path(), "key.pem", &key);
        let tls = Tls::load(&config(Some(cert.clone()), Some(key), None)).unwrap().unwrap();
        assert!(!tls.requires_client_certs());
        assert_eq!(tls.server_config(Port::OtlpGrpc).unwrap().alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(tls.server_config(Port::Ui).unwrap().alpn_protocols.len(), 2);

        // rcgen writes PKCS#8; SEC1 (EC) and PKCS#1 (RSA) keys come from openssl (testdata/README.md).
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        for label in ["sec1", "pkcs1"] {
            let (cert, key) = (testdata.join(format!("{label}.crt")), testdata.join(format!("{label}.key")));
            Tls::load(&config(Some(cert), Some(key), None)).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_and_key();
        let cert = write(dir.path(), "cert.pem", &cert);
        let key = write(dir.path(), "key.pem", &key);
        let missing = dir.path().join("missing.pem");
        let e = load_err(&config(Some(missing.clone()), Some(key.clone()), None));
        assert!(e.contains("missing.pem") && e.contains("cannot read"), "{e}");

        let e = load_err(&config(Some(key.clone()), Some(key.clone()), None));
        assert!(e.contains("key.pem") && e.contains("no certificate found"), "{e}");

        let e = load_err(&config(Some(cert.clone()), Some(cert.clone()), None));
        assert!(e.contains("cert.pem") && e.contains("no private key found"), "{e}");

        let (_, other_key) = cert_and_key();
        let other_key = write(dir.path(), "other.key", &other_key);
        let e = load_err(&config(Some(cert.clone()), Some(other_key), None));
        assert!(e.contains("other.key") && e.contains("does not go with the certificate"), "{e}");

        let garbage =
            write(dir.path(), "garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let e = load_err(&config(Some(garbage), Some(key.clone()), None));
        assert!(e.contains("garbage.pem") && e.contains("not a valid PEM"), "{e}");

        let e = load_err(&config(Some(cert.clone()), Some(key.clone()), Some(missing)));
        assert!(e.contains("missing.pem"), "{e}");
        let tls = Tls::load(&config(Some(cert.clone()), Some(key), Some(cert))).unwrap().unwrap();
        assert!(tls.requires_client_certs());
    }
}
