//! The admin listener (plain HTTP, keep it on loopback): health and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::rules::RuleSnapshot;
use crate::error::{full_body, Body};

pub struct AdminState {
    pub rules: Arc<ArcSwap<RuleSnapshot>>,
    pub shutting_down: AtomicBool,
}

fn respond(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full_body(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, serde_json::json!({"status": "alive"})),
        "/readyz" => {
            if state.shutting_down.load(Ordering::Relaxed) {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "shutting down"}),
                )
            } else {
                let rules = state.rules.load();
                respond(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "rules_sha256": rules.sha256}),
                )
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
