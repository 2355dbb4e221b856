//! Accepting connections: TCP, TLS handshake (bounded in time), then HTTP/1.1 or HTTP/2.

pub mod admin;
pub mod memory;
pub mod tls;
pub mod workers;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::settings::Limits;
use crate::error::{Body, BoxError};
use crate::proxy::Gateway;

/// Runs the accept loop until `shutdown` turns true; then waits for open connections to
/// finish their requests, up to `drain` time.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    gateway: Arc<Gateway>,
    workers: Arc<workers::Workers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = gateway.settings.limits.clone();
    let max = limits.max_connections.min(Semaphore::MAX_PERMITS) as u32;
    let permits = Arc::new(Semaphore::new(max as usize));
    let settings = &gateway.settings;
    if !settings.tls_cert.as_os_str().is_empty() {
        tokio::spawn(tls::watch_files(
            tls.clone(),
            settings.tls_cert.clone(),
            settings.tls_key.clone(),
            settings.reload.poll_interval,
            gateway.audit.clone(),
            shutdown.clone(),
        ));
    }
    loop {
        // Beyond the connection limit, new connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        // Handed to a worker: deregistered from this runtime, registered on that one.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(tls.load_full());
        let gateway = gateway.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        workers.spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new(&gateway.metrics);
            let tcp = match tokio::net::TcpStream::from_std(tcp) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot register the connection");
                    return;
                }
            };
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_connection(stream, peer, gateway, &limits, shutdown, h2).await;
        });
    }
    drop(listener);
    // Open connections were told to finish (their tasks watch `shutdown`); each holds a
    // permit until it ends, so all permits back means all connections closed.
    let drain = gateway.settings.limits.shutdown_deadline;
    if tokio::time::timeout(drain, permits.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached with connections still open");
    }
}

/// HTTP/1.1 or h2 on one accepted TLS stream, with the protocol limits, the idle timeout
/// and graceful shutdown.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
    h2: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracker = activity.clone();
    // An IP address is always a valid header value; formatted once per connection.
    let peer_ip = http::HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    let conn = Arc::new(crate::proxy::conn::Connection::new(gateway, peer_ip));
    let svc = service_fn(move |req| {
        // The connection's own `Arc`, not the gateway's: see `proxy::conn`.
        let conn = conn.clone();
        let guard = InFlight::new(tracker.clone());
        async move {
            let resp = conn.gateway.handle(req, &conn).await;
            Ok::<_, std::convert::Infallible>(resp.map(|body| GuardedBody { body, guard }))
        }
    });
    // Heads between the gateway's own limits and twice them get the gateway's 431 with a
    // problem body and an audit record; beyond that hyper and h2 refuse them on their own
    // (431 as well) before anything is buffered further.
    let head_cap = (limits.max_header_bytes as usize).saturating_mul(2);
    if !h2 {
        // The protocol is fixed once, by ALPN (h2 over TLS requires it, RFC 9113 3.2): no
        // version sniffing, and no replay buffer in front of every read.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers.saturating_mul(2))
            .max_buf_size(head_cap.max(64 << 10))
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        drive(conn, peer, &activity, limits.idle_timeout, shutdown).await;
        return;
    }
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(head_cap.min(u32::MAX as usize) as u32)
        // h2's own defaults, pinned: streams a client resets before we accept them (rapid
        // reset, CVE-2023-44487) and streams we reset for its errors, each bounded.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.idle_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    drive(conn, peer, &activity, limits.idle_timeout, shutdown).await;
}

/// Runs one connection to its end: closes it gracefully on shutdown or after `idle` with
/// no request in flight.
async fn drive<C>(
    conn: C,
    peer: SocketAddr,
    activity: &Activity,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    // One timer and one shutdown watch for the connection's life, not new ones at every
    // wake-up of its task: a new `Sleep` registers in the timer wheel and leaves it again
    // each time (several times per request), a kept one only when it fires.
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    let changed = shutdown.changed();
    tokio::pin!(changed);
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task nearly every time.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = &mut changed, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut idle_check, if !closing => {
                match activity.idle_for() {
                    Some(quiet) if quiet >= idle => {
                        tracing::debug!(%peer, "idle timeout");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(quiet) => idle_check.as_mut().reset(tokio::time::Instant::now() + (idle - quiet)),
                    None => idle_check.as_mut().reset(tokio::time::Instant::now() + idle),
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one started or ended.
struct Activity {
    base: std::time::Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }
    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.base.elapsed().as_millis() as u64;
        Some(Duration::from_millis(
            now.saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        ))
    }
}

/// One request in flight, from the service call until its response body is done or
/// dropped (also when the client goes away mid-request).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        // No touch: while a request is in flight the connection is not idle whatever the
        // time, and the drop below marks when it ended.
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body, carrying its request's in-flight guard.
struct GuardedBody {
    body: Body,
    #[allow(dead_code)]
    guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(std::sync::Arc<crate::telemetry::Metrics>);

impl OpenConnection {
    fn new(m: &std::sync::Arc<crate::telemetry::Metrics>) -> Self {
        m.open_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(m.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Binds a listener, with a clear error naming the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
