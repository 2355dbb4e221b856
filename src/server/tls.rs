//! TLS termination: TLS 1.2 and 1.3 only, aws-lc-rs, ALPN h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: cannot read certificate chain: {1}")]
    Cert(String, String),
    #[error("{0}: cannot read private key: {1}")]
    Key(String, String),
    #[error("certificate and key do not fit together: {0}")]
    Config(String),
}

pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert(cert.display().to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(
            cert.display().to_string(),
            "no certificate in file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.display().to_string(), e.to_string()))?;
    server_config(certs, key)
}

pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert("<pem>".into(), e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key("<pem>".into(), e.to_string()))?;
    server_config(certs, key)
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::proxy::upstream::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (rustls': AEAD suites, strongest first), not the client's.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Development certificates are valid from today for one year (under the 398 days browsers
/// and scanners accept); `demo` regenerates them well before that.
fn set_dev_validity(p: &mut rcgen::CertificateParams) {
    let today = crate::audit::humantime_now();
    let num = |r: std::ops::Range<usize>| {
        today
            .get(r)
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or(1)
    };
    let (y, m, d) = (num(0..4), num(5..7) as u8, num(8..10).min(28) as u8);
    p.not_before = rcgen::date_time_ymd(y, m, d);
    p.not_after = rcgen::date_time_ymd(y + 1, m, d);
}

/// A throwaway development PKI: a CA and a leaf for localhost / 127.0.0.1 / ::1.
/// Only `demo` and tests use it; production certificates come from files.
pub struct DevPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevPki {
    pub fn generate() -> Result<DevPki, rcgen::Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "phigate development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_dev_validity(&mut ca);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "phigate development gateway");
        set_dev_validity(&mut leaf);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok(DevPki {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }
}

/// Certificate and key reload without restart: polls the two files every `interval`
/// and, when their bytes change and the new pair loads, swaps the server config that
/// every new connection's handshake reads. A pair that does not load (half-written, key
/// not matching) is refused and the last good one stays; it is tried again on the next
/// change. Each attempt writes an audit record.
pub async fn watch_files(
    tls: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    cert: PathBuf,
    key: PathBuf,
    interval: std::time::Duration,
    audit: Arc<crate::audit::AuditLog>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let read = |cert: &Path, key: &Path| -> Option<(Vec<u8>, Vec<u8>)> {
        Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
    };
    let mut last = read(&cert, &key);
    let interval = interval.max(std::time::Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let now = read(&cert, &key);
        if now.is_none() || now == last {
            // A missing file is a rotation in progress (or a mistake): keep serving.
            continue;
        }
        last = now.clone();
        let (c, k) = now.expect("checked");
        let outcome = std::str::from_utf8(&c)
            .ok()
            .zip(std::str::from_utf8(&k).ok())
            .ok_or_else(|| "not PEM text".to_string())
            .and_then(|(c, k)| server_config_from_pem(c, k).map_err(|e| e.to_string()));
        let record = match outcome {
            Ok(cfg) => {
                tls.store(cfg);
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                serde_json::json!({"type": "tls_reload", "ts": crate::audit::humantime_now(),
                    "cert": cert.display().to_string(), "outcome": "applied"})
            }
            Err(e) => {
                tracing::warn!(cert = %cert.display(), error = %e,
                    "TLS certificate change refused; the previous certificate stays");
                serde_json::json!({"type": "tls_reload", "ts": crate::audit::humantime_now(),
                    "cert": cert.display().to_string(), "outcome": "refused", "error": e})
            }
        };
        audit.write(&record);
    }
}
