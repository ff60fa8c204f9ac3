//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`): the certificate files a deployment
//! names for each backend (`<section>.tls_ca_file`, `tls_cert_file`, `tls_key_file`), read and
//! checked once when the configuration loads, and what a failed handshake is reported as.
//!
//! Trust, the same for both backends:
//! - no CA file: the system's root certificates (the OS store as `rustls-native-certs` finds
//!   it: `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE` / `SSL_CERT_DIR`);
//! - a CA file: its certificates *instead* of the system's, so a private CA pins the server to
//!   it (as `redis-cli --cacert` and curl's `--cacert` do).
//!
//! The server's certificate must always name the host of the URL (a DNS name, or an IP address
//! in its subject alternative names); there is no switch to turn verification off. A client
//! certificate and key, when both are set, are offered for mutual TLS.
//!
//! Redis connections are made by the `redis` crate from these files ([`TlsFiles::redis`]);
//! broker connections by [`TlsFiles::amqp_client_config`] (lapin's own connector would add the
//! CA file to the system's roots rather than use it alone).

use std::error::Error as StdError;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The TLS files of one backend, read at start. Cheap to clone.
#[derive(Clone, Default)]
pub struct TlsFiles {
    inner: Option<Arc<Loaded>>,
}

struct Loaded {
    /// The CA file's PEM and its certificates; `None`: the system's roots.
    ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
    /// The client certificate chain and key (PEM, and parsed), for mutual TLS.
    client: Option<ClientIdentity>,
}

struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The paths of one backend's TLS files, as configured (empty: not set).
pub struct TlsPaths<'a> {
    /// The configuration section, for messages: `amqp` or `redis`.
    pub section: &'a str,
    pub ca_file: &'a str,
    pub cert_file: &'a str,
    pub key_file: &'a str,
}

impl TlsFiles {
    /// Reads and checks the files `paths` names. An error names the key and the path.
    pub fn read(paths: &TlsPaths<'_>) -> Result<TlsFiles, String> {
        let section = paths.section;
        let (ca_file, cert_file, key_file) = (
            paths.ca_file.trim(),
            paths.cert_file.trim(),
            paths.key_file.trim(),
        );
        if ca_file.is_empty() && cert_file.is_empty() && key_file.is_empty() {
            return Ok(TlsFiles::default());
        }
        let ca = if ca_file.is_empty() {
            None
        } else {
            let key = format!("{section}.tls_ca_file");
            let pem = read_file(&key, ca_file)?;
            let certs = certificates(&key, ca_file, &pem)?;
            let mut roots = RootCertStore::empty();
            for cert in &certs {
                roots.add(cert.clone()).map_err(|e| {
                    format!(
                        "{key}: {ca_file} holds a certificate that cannot be a trust anchor: {e}"
                    )
                })?;
            }
            Some((pem, certs))
        };
        let client = match (cert_file.is_empty(), key_file.is_empty()) {
            (true, true) => None,
            (false, true) | (true, false) => {
                return Err(format!(
                    "{section}.tls_cert_file and {section}.tls_key_file must be set together \
                     (a client certificate for mutual TLS needs its key)"
                ))
            }
            (false, false) => {
                let cert_key = format!("{section}.tls_cert_file");
                let cert_pem = read_file(&cert_key, cert_file)?;
                let chain = certificates(&cert_key, cert_file, &cert_pem)?;
                let key_key = format!("{section}.tls_key_file");
                let key_pem = read_file(&key_key, key_file)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("{key_key}: {key_file} holds no PEM private key: {e}"))?;
                Some(ClientIdentity {
                    cert_pem,
                    key_pem,
                    chain,
                    key,
                })
            }
        };
        let files = TlsFiles {
            inner: Some(Arc::new(Loaded { ca, client })),
        };
        // Builds a configuration once, so a key that does not belong to its certificate fails
        // here rather than at the first handshake. The roots do not matter for that.
        files.client_config(RootCertStore::empty()).map_err(|e| {
            format!(
                "{section}.tls_cert_file {cert_file} and {section}.tls_key_file {key_file}: {e}"
            )
        })?;
        Ok(files)
    }

    /// Whether any file is configured.
    pub fn is_set(&self) -> bool {
        self.inner.is_some()
    }

    /// The files in the form the `redis` crate takes them, if any is set (else the crate uses
    /// the system's roots by itself).
    pub fn redis(&self) -> Option<redis::TlsCertificates> {
        let loaded = self.inner.as_ref()?;
        Some(redis::TlsCertificates {
            client_tls: loaded.client.as_ref().map(|client| redis::ClientTlsConfig {
                client_cert: client.cert_pem.clone(),
                client_key: client.key_pem.clone(),
            }),
            root_cert: loaded.ca.as_ref().map(|(pem, _)| pem.clone()),
        })
    }

    /// The rustls configuration for `amqps://` connections: the CA file's roots, or the
    /// system's; the client certificate if one is set.
    pub fn amqp_client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let roots = match self.inner.as_ref().and_then(|l| l.ca.as_ref()) {
            Some((_, certs)) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(certs.iter().cloned());
                roots
            }
            None => system_roots("amqp")?,
        };
        self.client_config(roots).map(Arc::new)
    }

    fn client_config(&self, roots: RootCertStore) -> Result<ClientConfig, String> {
        // ring, as everywhere in this workspace; set explicitly, so no process-wide default is
        // needed (or changed).
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        match self.inner.as_ref().and_then(|l| l.client.as_ref()) {
            Some(client) => builder
                .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
                .map_err(|e| e.to_string()),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The `redis` crate's TLS handshakes take rustls's process-wide crypto provider: make it
/// ring's, as lapin's and reqwest's are here. Installing fails only if one is installed
/// already, which is as good.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read_file(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))
}

fn certificates(key: &str, path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {path} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {path} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The system's root certificates, as the `redis` crate also loads them.
fn system_roots(section: &str) -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "no system root certificates found{why} (install the ca-certificates package, or \
             set {section}.tls_ca_file)"
        ));
    }
    Ok(roots)
}

/// The TLS error somewhere in `error`'s chain, if a handshake or certificate check is what
/// failed. io errors carry it inside rather than as their source, and the `redis` crate's
/// errors carry that io error in an `Arc` (whose own `source` skips it).
pub fn tls_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = tls_cause(inner) {
                return Some(tls);
            }
        }
        if let Some(shared) = e.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            let inner: &(dyn StdError + 'static) = &**shared;
            if let Some(tls) = tls_cause(inner) {
                return Some(tls);
            }
        }
        current = e.source();
    }
    None
}

/// `error` as an operator should read it: "TLS handshake with `endpoint` failed: <why>" when
/// TLS is what failed, else the error as it is.
pub fn describe(error: &(dyn StdError + 'static), endpoint: &str) -> String {
    match tls_cause(error) {
        Some(tls) => format!("TLS handshake with {endpoint} failed: {tls}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths<'a>(ca: &'a str, cert: &'a str, key: &'a str) -> TlsPaths<'a> {
        TlsPaths {
            section: "redis",
            ca_file: ca,
            cert_file: cert,
            key_file: key,
        }
    }

    #[test]
    fn nothing_set_is_the_system_roots() {
        let files = TlsFiles::read(&paths("", " ", "")).unwrap();
        assert!(!files.is_set());
        assert!(files.redis().is_none());
    }

    #[test]
    fn a_bad_file_is_named_with_its_key() {
        let missing = TlsFiles::read(&paths("/nonexistent/ca.pem", "", ""))
            .err()
            .unwrap();
        assert!(
            missing.starts_with("redis.tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let junk = junk.to_str().unwrap();
        let no_pem = TlsFiles::read(&paths(junk, "", "")).err().unwrap();
        assert!(no_pem.contains("holds no PEM certificate"), "{no_pem}");
        assert!(no_pem.contains(junk), "{no_pem}");
        let half = TlsFiles::read(&paths("", junk, "")).err().unwrap();
        assert!(half.contains("must be set together"), "{half}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tls_error_is_found_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let redis = redis::RedisError::from(io);
        assert_eq!(
            describe(&redis, "127.0.0.1:6390"),
            "TLS handshake with 127.0.0.1:6390 failed: invalid peer certificate: UnknownIssuer"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&plain, "x"), "refused");
    }
}
