//! Pooled clients to the upstreams (HTTP/1.1 or h2, plain or TLS).

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::settings::UpstreamSettings;
use crate::error::Body;

pub struct Upstream {
    pub settings: UpstreamSettings,
    pub client: Client<HttpsConnector<HttpConnector>, Body>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream '{0}': cannot read CA file {1}: {2}")]
    Ca(String, String, String),
    #[error("upstream '{0}': {1}")]
    Tls(String, String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Upstream {
    pub fn new(s: &UpstreamSettings) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        match &s.ca {
            Some(ca) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        UpstreamError::Ca(s.name.clone(), ca.display().to_string(), e.to_string())
                    })?;
                for c in certs {
                    roots.add(c).map_err(|e| {
                        UpstreamError::Ca(s.name.clone(), ca.display().to_string(), e.to_string())
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| UpstreamError::Tls(s.name.clone(), e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(s.connect_timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if s.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .http2_only(s.http2);
        Ok(Upstream {
            settings: s.clone(),
            client: client.build(connector),
        })
    }
}
