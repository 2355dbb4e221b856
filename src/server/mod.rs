//! Accepting connections: TCP, TLS handshake (bounded in time), then HTTP/1.1 or HTTP/2.

pub mod admin;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::proxy::Gateway;

/// Runs the accept loop until `shutdown` turns true; then waits for open connections to
/// finish their requests, up to `drain` time.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = gateway.settings.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let acceptor = TlsAcceptor::from(tls.load_full());
        let gateway = gateway.clone();
        let limits = limits.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new(&gateway.metrics);
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
            let svc = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, peer).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(256)
                .keep_alive_interval(Some(limits.idle_timeout / 2))
                .keep_alive_timeout(limits.idle_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = gateway.settings.limits.shutdown_deadline;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached with connections still open");
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
