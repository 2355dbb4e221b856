//! The admin listener (plain HTTP: keep it on loopback or a private interface):
//! `/healthz`, `/readyz`, `/status`, `/metrics`, and `/explain` for admins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Permission;
use crate::config::reload::RulesHandle;
use crate::error::{full_body, Body};
use crate::proxy::Gateway;

/// The permission a caller needs for `/explain` on the admin listener.
pub const EXPLAIN_PERMISSION: &str = "phigate:admin:explain";

pub struct AdminState {
    pub rules: Arc<RulesHandle>,
    pub gateway: Arc<Gateway>,
    pub shutting_down: AtomicBool,
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    respond(status, "application/json", body.to_string())
}

pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "only GET"}));
    }
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, json!({"status": "alive"})),
        "/readyz" => {
            let audit_failures = state.gateway.audit.failures();
            let shutting_down = state.shutting_down.load(Ordering::Relaxed);
            let ready = !shutting_down && audit_failures == 0;
            let status = if shutting_down {
                "shutting down"
            } else if audit_failures > 0 {
                "audit log failing"
            } else {
                "ready"
            };
            json_response(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                json!({
                    "status": status,
                    "rules_loaded": true,
                    "rules_sha256": state.rules.current.load().sha256,
                    "audit_write_failures": audit_failures,
                }),
            )
        }
        "/status" => json_response(StatusCode::OK, state.rules.status_json()),
        "/metrics" => {
            let m = &state.gateway.metrics;
            m.audit_write_failures
                .store(state.gateway.audit.failures(), Ordering::Relaxed);
            respond(StatusCode::OK, "text/plain; version=0.0.4", m.render())
        }
        "/explain" => explain(state, req),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// `/explain?user=U&method=GET&path=/api/patients/7`, for callers holding
/// `phigate:admin:explain`, proven by the same bearer tokens the gateway accepts.
fn explain(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    let gw = &state.gateway;
    let caller = match gw
        .jwt
        .verify_header(req.headers().get(header::AUTHORIZATION))
    {
        Ok(id) => id,
        Err(e) => {
            gw.audit
                .admin("explain", None, false, json!({"reason": e.to_string()}));
            return json_response(StatusCode::UNAUTHORIZED, json!({"error": e.to_string()}));
        }
    };
    let rules = state.rules.current.load_full();
    let needed = Permission::parse(EXPLAIN_PERMISSION).expect("a valid permission");
    if !rules
        .access
        .resolve(&caller.user)
        .verdict(&needed)
        .is_granted()
    {
        gw.audit.admin(
            "explain",
            Some(&caller.user),
            false,
            json!({"missing": EXPLAIN_PERMISSION}),
        );
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": format!("requires {EXPLAIN_PERMISSION}")}),
        );
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    };
    let (Some(path), Some(method)) = (
        param("path"),
        Some(param("method").unwrap_or_else(|| "GET".into())),
    ) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "need path= (and user=, method=)"}),
        );
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return json_response(StatusCode::BAD_REQUEST, json!({"error": "bad method"}));
    };
    let user = param("user");
    let e = crate::explain::explain(&rules, user.as_deref(), &method, &path);
    gw.audit.admin(
        "explain",
        Some(&caller.user),
        true,
        json!({"subject": user, "method": method.as_str(), "route": e.route, "decision": e.decision}),
    );
    json_response(StatusCode::OK, serde_json::to_value(&e).unwrap_or_default())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_query_values() {
        assert_eq!(
            super::percent_decode("%2Fapi%2Fpatients%2F7"),
            "/api/patients/7"
        );
        assert_eq!(super::percent_decode("a+b%zz%4"), "a b%zz%4");
        assert_eq!(
            super::percent_decode("bob%40clinic.example"),
            "bob@clinic.example"
        );
    }
}
