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

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

pub struct Upstream {
    pub settings: UpstreamSettings,
    /// One pool per connection worker (slot 0: any other thread), so an upstream
    /// connection is only ever driven by the worker whose requests use it.
    clients: Vec<UpstreamClient>,
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
    /// The pool of the calling thread's worker.
    pub fn client(&self) -> &UpstreamClient {
        &self.clients[crate::server::workers::current_slot() % self.clients.len()]
    }

    /// `slots`: one pool per connection worker plus one for other threads.
    pub fn new(s: &UpstreamSettings, slots: usize) -> Result<Upstream, UpstreamError> {
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
            clients: (0..slots.max(1))
                .map(|_| client.build(connector.clone()))
                .collect(),
        })
    }
}

/// What happened to an upstream body after the response head was already sent on.
pub type OnAbort = Box<dyn FnOnce(&'static str) + Send>;

/// A passed-through upstream response body that fails (so the client sees a broken
/// response, never a complete-looking one) when the upstream errors or sends nothing for
/// `idle`, and reports either once.
pub struct WatchedBody {
    inner: hyper::body::Incoming,
    idle: std::time::Duration,
    /// Armed only once the body is not ready at once: most small bodies arrive with the
    /// head, and then no timer is ever registered.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last (re)armed.
    progressed: bool,
    on_abort: Option<OnAbort>,
}

impl WatchedBody {
    pub fn new(inner: hyper::body::Incoming, idle: std::time::Duration, on_abort: OnAbort) -> Self {
        WatchedBody {
            inner,
            idle,
            timer: None,
            progressed: false,
            on_abort: Some(on_abort),
        }
    }

    fn abort(&mut self, why: &'static str) {
        if let Some(f) = self.on_abort.take() {
            f(why);
        }
    }
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                // Progress: the stall clock starts again at the next wait.
                this.progressed = true;
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.abort("upstream_body_error");
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.on_abort = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = match &mut this.timer {
                    Some(t) => {
                        if std::mem::take(&mut this.progressed) {
                            t.as_mut().reset(tokio::time::Instant::now() + idle);
                        }
                        t
                    }
                    None => {
                        this.progressed = false;
                        this.timer.insert(Box::pin(tokio::time::sleep(idle)))
                    }
                };
                if timer.as_mut().poll(cx).is_ready() {
                    this.abort("upstream_body_timeout");
                    return Poll::Ready(Some(Err("the upstream stalled mid-body".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
