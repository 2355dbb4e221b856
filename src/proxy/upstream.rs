//! Clients to the upstreams: HTTP/1.1 over a pool of our own (one idle list per connection
//! worker), h2 over hyper-util's pooled client; plain or TLS either way.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::settings::UpstreamSettings;
use crate::error::{Body, BoxError};

type Connector = HttpsConnector<HttpConnector>;

/// An idle connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per worker; beyond this a returned connection is closed.
const MAX_IDLE_PER_WORKER: usize = 1024;

pub struct Upstream {
    pub settings: UpstreamSettings,
    connector: Connector,
    /// HTTP/1.1: one idle list per connection worker (slot 0: any other thread), so an
    /// upstream connection is only ever driven by the worker whose requests use it.
    idle: Vec<Arc<IdleList>>,
    /// h2 upstreams only: one multiplexed connection serves many requests at once, which
    /// is what hyper-util's pool is made for.
    h2: Option<Client<Connector, Body>>,
    /// `scheme://authority/`, what the connector dials.
    origin: Uri,
    /// The `Host` of every HTTP/1.1 request, made once.
    host: http::HeaderValue,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream '{0}': cannot read CA file {1}: {2}")]
    Ca(String, String, String),
    #[error("upstream '{0}': {1}")]
    Tls(String, String),
    #[error("upstream '{0}': address not usable in a request: {1}")]
    Address(String, String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The idle HTTP/1.1 connections of one worker, most recently used last.
#[derive(Default)]
pub struct IdleList {
    conns: Mutex<std::collections::VecDeque<(http1::SendRequest<Body>, Instant)>>,
}

impl IdleList {
    /// The most recently used connection that is still open and fresh; the others are
    /// dropped (which closes them).
    fn take(&self) -> Option<http1::SendRequest<Body>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((c, since)) = conns.pop_back() {
            if !c.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: http1::SendRequest<Body>) {
        if c.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest come first: close those the upstream closed or that idled too long,
        // so a burst's connections do not linger once traffic falls.
        while conns
            .front()
            .is_some_and(|(c, since)| c.is_closed() || since.elapsed() >= IDLE_TIMEOUT)
        {
            conns.pop_front();
        }
        if conns.len() < MAX_IDLE_PER_WORKER {
            conns.push_back((c, Instant::now()));
        }
    }
}

/// An HTTP/1.1 connection lent to one response: it goes back to its idle list only once
/// that response's body has been read to its end, never after a failure or an abandoned
/// body (then it is dropped, which closes it).
pub struct Lease {
    conn: http1::SendRequest<Body>,
    list: Arc<IdleList>,
}

impl Lease {
    pub fn give_back(self) {
        self.list.put(self.conn);
    }
}

impl Upstream {
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
        let h2 = s.http2.then(|| {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .http2_only(true)
                .build(connector.clone())
        });
        let origin = Uri::builder()
            .scheme(s.scheme.clone())
            .authority(s.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Address(s.name.clone(), e.to_string()))?;
        let host = http::HeaderValue::from_str(s.authority.as_str())
            .map_err(|e| UpstreamError::Address(s.name.clone(), e.to_string()))?;
        Ok(Upstream {
            settings: s.clone(),
            connector,
            idle: (0..slots.max(1)).map(|_| Arc::default()).collect(),
            h2,
            origin,
            host,
        })
    }

    /// The idle list of the calling thread's worker.
    fn idle_list(&self) -> &Arc<IdleList> {
        &self.idle[crate::server::workers::current_slot() % self.idle.len()]
    }

    /// Sends `req` to `target` (origin form: path and query) and returns the response
    /// head, with the HTTP/1.1 connection lent to it. A request that was never written on
    /// a reused connection (it closed in the meantime) is sent again on another.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        target: http::uri::PathAndQuery,
    ) -> Result<(Response<Incoming>, Option<Lease>), BoxError> {
        if let Some(h2) = &self.h2 {
            *req.uri_mut() = Uri::builder()
                .scheme(self.settings.scheme.clone())
                .authority(self.settings.authority.clone())
                .path_and_query(target)
                .build()?;
            return Ok((h2.request(req).await?, None));
        }
        // HTTP/1.1 to an origin server: origin-form target, and the upstream's Host.
        *req.uri_mut() = Uri::from(target);
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let list = self.idle_list();
        let lease = |conn| {
            Some(Lease {
                conn,
                list: list.clone(),
            })
        };
        while let Some(mut conn) = list.take() {
            // Not ready: it still carries an earlier exchange (a request body the upstream
            // answered before reading it whole). Waiting on it would tie this request to
            // that one, so it is left to finish and close on its own.
            if !conn.is_ready() {
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, lease(conn))),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: the connect future is large (connector, TLS and handshake states) and
        // would otherwise sit inside every request's future, copied with it at each move.
        let mut conn = Box::pin(self.connect()).await?;
        let resp = conn.send_request(req).await?;
        Ok((resp, lease(conn)))
    }

    /// A new HTTP/1.1 connection, driven by a task on the calling worker.
    async fn connect(&self) -> Result<http1::SendRequest<Body>, BoxError> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, self.origin.clone()).await?;
        let (conn, driver) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(conn)
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
    /// The connection the body comes over, given back once the body has been read whole.
    lease: Option<Lease>,
    finished: bool,
}

impl WatchedBody {
    pub fn new(
        inner: hyper::body::Incoming,
        idle: std::time::Duration,
        on_abort: OnAbort,
        lease: Option<Lease>,
    ) -> Self {
        WatchedBody {
            inner,
            idle,
            timer: None,
            progressed: false,
            on_abort: Some(on_abort),
            lease,
            finished: false,
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
                if this.inner.is_end_stream() {
                    this.on_abort = None;
                    this.finished = true;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.abort("upstream_body_error");
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.on_abort = None;
                this.finished = true;
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

impl Drop for WatchedBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, empty) may never be polled.
        if self.finished || http_body::Body::is_end_stream(&self.inner) {
            if let Some(l) = self.lease.take() {
                l.give_back();
            }
        }
    }
}
