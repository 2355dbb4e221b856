//! The request's way through the gateway, one phase after another, each reading and filling
//! the same per-request context: check -> route -> authenticate -> authorize -> forward ->
//! filter response -> audit.

pub mod conn;
pub mod filter;
pub mod headers;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::AuditLog;
use crate::auth::jwt::{AuthError, JwtVerifier};
use crate::config::rules::{Route, RuleSnapshot};
use crate::config::settings::Settings;
use crate::decision;
use crate::error::{Body, GatewayError};
use crate::masking::{FieldSet, MaskReport};
use crate::routing::canonical::canonical_path;
use crate::server::workers::{current_shard, SHARDS};
use crate::telemetry::Metrics;
use conn::{Caller, Connection, Pinned};
use upstream::Upstream;

/// The shared state every request reads.
pub struct Gateway {
    pub settings: Arc<Settings>,
    pub rules: Arc<ArcSwap<RuleSnapshot>>,
    pub jwt: JwtVerifier,
    pub upstreams: Vec<Upstream>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    /// Request sequence numbers, one counter per worker shard (`workers::SHARDS`): counter
    /// `i` hands out `i`, `i + SHARDS`, `i + 2 * SHARDS`, ...
    request_seq: [PaddedCounter; SHARDS],
    id_prefix: String,
}

#[derive(Default)]
#[repr(align(128))]
struct PaddedCounter(AtomicU64);

/// What one request accumulates on its way through; the audit record is made from it.
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub method: Method,
    /// The snapshot this request started with; it finishes on it, whatever reloads happen.
    pub rules: Arc<Pinned>,
    pub canonical_path: Option<String>,
    pub route: Option<usize>,
    /// Who called and what was concluded (authenticated routes).
    pub caller: Option<Arc<Caller>>,
    pub masked: Option<MaskReport>,
    pub upstream_status: Option<u16>,
}

impl RequestCtx {
    pub fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.rules.routes[i])
    }

    /// The field set this response is masked with (a permitted anonymized caller on a
    /// masked route); `None` for raw callers and public routes.
    pub fn mask(&self) -> Option<&Arc<FieldSet>> {
        self.caller.as_ref()?.mask.as_ref()
    }
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        rules: Arc<ArcSwap<RuleSnapshot>>,
        jwt: JwtVerifier,
        upstreams: Vec<Upstream>,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // A per-process random prefix keeps request ids unique across restarts.
        let mut rnd = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut rnd);
        Gateway {
            settings,
            rules,
            jwt,
            upstreams,
            audit,
            metrics,
            request_seq: Default::default(),
            id_prefix: crate::config::rules::hex(&rnd),
        }
    }

    fn next_request_id(&self) -> String {
        let shard = current_shard();
        let n = self.request_seq[shard].0.fetch_add(1, Ordering::Relaxed);
        request_id(&self.id_prefix, n * SHARDS as u64 + shard as u64)
    }

    /// Serves one request of `conn`: never fails, every refusal is a response.
    pub async fn handle(&self, req: Request<Incoming>, conn: &Arc<Connection>) -> Response<Body> {
        let mut ctx = RequestCtx {
            request_id: self.next_request_id(),
            started: Instant::now(),
            method: req.method().clone(),
            rules: conn.rules(),
            canonical_path: None,
            route: None,
            caller: None,
            masked: None,
            upstream_status: None,
        };
        let http1 = req.version() != Version::HTTP_2;
        let mut resp = self.respond(&mut ctx, conn, req, http1).await;
        // Served over TLS only: browsers should never try plain HTTP, nor sniff types.
        let h = resp.headers_mut();
        h.entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static("max-age=31536000"));
        h.entry(header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(HeaderValue::from_static("nosniff"));
        resp
    }

    async fn respond(
        &self,
        ctx: &mut RequestCtx,
        conn: &Arc<Connection>,
        req: Request<Incoming>,
        http1: bool,
    ) -> Response<Body> {
        match self.phases(ctx, conn, req).await {
            Ok(mut resp) => {
                if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                    resp.headers_mut().insert(headers::X_REQUEST_ID, v);
                }
                self.finish(ctx, resp.status(), None);
                resp
            }
            Err(e) => {
                let mut resp = e.to_response(&ctx.request_id);
                if http1 && e.closes_http1_connection() {
                    // The rest of this connection's bytes cannot be trusted to be framed
                    // the way we think (or are an unread body): never read another request.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                self.finish(ctx, resp.status(), Some(&e));
                resp
            }
        }
    }

    /// Audit and count every request, allowed or refused.
    fn finish(&self, ctx: &RequestCtx, status: http::StatusCode, refusal: Option<&GatewayError>) {
        let m = &self.metrics;
        // One clock read for the metrics and the audit record.
        let latency = ctx.started.elapsed();
        m.request(
            ctx.route().map(|r| r.name.as_str()),
            refusal.is_none(),
            status.as_u16(),
            latency,
        );
        match refusal {
            Some(GatewayError::UpstreamUnavailable) => {
                m.upstream_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(GatewayError::UpstreamTimeout) => {
                m.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(r) = &ctx.masked {
            m.masked(r.count as u64);
        }
        self.audit.request(ctx, status, refusal, latency);
    }

    async fn phases(
        &self,
        ctx: &mut RequestCtx,
        conn: &Arc<Connection>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let canonical = check_request(&req, &self.settings.limits)?;
        ctx.canonical_path = Some(canonical.clone());
        let route_ix = decision::find_route(&ctx.rules, &ctx.method, &canonical)?;
        ctx.route = Some(route_ix);
        let rules = ctx.rules.clone();
        let route = &rules.routes[route_ix];
        if !route.public {
            self.authenticate_authorize(ctx, conn, &req, route_ix)?;
        }
        if is_upgrade(&req) {
            return Err(GatewayError::Forbidden {
                route: route.name.clone(),
                missing: Vec::new(),
                detail: "protocol upgrades (WebSocket and others) are not proxied".into(),
            });
        }
        self.forward(ctx, conn, route, &canonical, req).await
    }

    /// Authenticate and authorize phases: the caller this connection's last permitted
    /// request settled when it answers (same token, snapshot and route), else the token is
    /// verified (or found in the token cache) and the route's permissions checked.
    fn authenticate_authorize(
        &self,
        ctx: &mut RequestCtx,
        conn: &Connection,
        req: &Request<Incoming>,
        route_ix: usize,
    ) -> Result<(), GatewayError> {
        let m = &self.metrics;
        let Some(header) = req.headers().get(header::AUTHORIZATION) else {
            return Err(GatewayError::Unauthenticated(AuthError::Missing));
        };
        let now = crate::auth::jwt::now_s();
        if let Some(c) = conn.remembered(header, &ctx.rules, route_ix, now) {
            m.token_cache(true);
            m.permission_cache(true);
            ctx.caller = Some(c);
            return Ok(());
        }
        let known = conn.identity_for(header, &ctx.rules, now);
        let (identity, token_hit, resolved, resolve_hit) = match known {
            Some((identity, resolved)) => (identity, true, resolved, true),
            None => {
                let (identity, hit) = self
                    .jwt
                    .verify_header_cached(Some(header))
                    .map_err(GatewayError::Unauthenticated)?;
                let (resolved, resolve_hit) = ctx.rules.access.resolve_cached(&identity.user);
                (identity, hit, resolved, resolve_hit)
            }
        };
        m.token_cache(token_hit);
        m.permission_cache(resolve_hit);
        let route = &ctx.rules.routes[route_ix];
        let (verdicts, outcome) = decision::authorize_resolved(&ctx.rules, route, &resolved);
        let (mask, refusal) = match outcome {
            Ok(mask) => (mask, None),
            Err(e) => (None, Some(e)),
        };
        let caller = Arc::new(Caller::new(
            header,
            ctx.rules.clone(),
            route_ix,
            identity,
            resolved,
            verdicts,
            mask,
        ));
        ctx.caller = Some(caller.clone());
        // Only a permitted caller is remembered: a refusal is judged afresh every time.
        match refusal {
            Some(e) => Err(e),
            None => {
                conn.remember(caller);
                Ok(())
            }
        }
    }

    /// Forward phase: one canonical path, sanitized headers, the gateway's identity headers.
    async fn forward(
        &self,
        ctx: &mut RequestCtx,
        conn: &Arc<Connection>,
        route: &Route,
        canonical: &str,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let upstream = &self.upstreams[route.upstream];
        let us = &upstream.settings;
        let (parts, body) = req.into_parts();
        let is_head = parts.method == Method::HEAD;
        let accept_encoding = parts.headers.get(header::ACCEPT_ENCODING).cloned();
        if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
            if len > self.settings.limits.max_request_body {
                return Err(GatewayError::PayloadTooLarge);
            }
        }
        let query = parts.uri.query();
        let mut path_and_query = String::with_capacity(
            us.base_path.len() + canonical.len() + query.map_or(0, |q| q.len() + 1),
        );
        path_and_query.push_str(&us.base_path);
        path_and_query.push_str(canonical);
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let target = http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))?;
        let mut headers = parts.headers;
        // h2's `:authority`, else the Host header (checked by `check_request`).
        let original_host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => headers
                .get(header::HOST)
                .filter(|h| h.to_str().is_ok())
                .cloned(),
        };
        headers::sanitize_request_headers(&mut headers, us.forward_authorization);
        if ctx.mask().is_some() {
            filter::prepare_masked_request(&mut headers);
        }
        let add = |h: &mut http::HeaderMap, name: http::HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        // Room for the seven headers below at once: one growth of the map, not two.
        headers.reserve(7);
        headers.insert(headers::X_FORWARDED_FOR, conn.peer_ip.clone());
        headers.insert(
            headers::X_FORWARDED_PROTO,
            HeaderValue::from_static("https"),
        );
        if let Some(host) = original_host {
            headers.insert(headers::X_FORWARDED_HOST, host);
        }
        add(&mut headers, headers::X_REQUEST_ID, &ctx.request_id);
        if let Some(v) = &route.name_header {
            headers.insert(headers::X_PHIGATE_ROUTE, v.clone());
        }
        if let Some(c) = &ctx.caller {
            if let Some(v) = &c.user_header {
                headers.insert(headers::X_PHIGATE_USER, v.clone());
            }
            headers.insert(
                headers::X_PHIGATE_DATA_ACCESS,
                HeaderValue::from_static(c.resolved.data_access.as_str()),
            );
        }
        // The body streams through; past the limit it fails, the upstream request is
        // aborted (the upstream sees an unfinished message and a closed connection) and
        // the client gets 413, with or without a Content-Length.
        // A request with no body at all (most GETs) sends an empty one: no limit to watch.
        let too_large = (!http_body::Body::is_end_stream(&body))
            .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let body: Body = match &too_large {
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            Some(flag) => {
                let flag = flag.clone();
                let limit = self.settings.limits.max_request_body as usize;
                http_body_util::Limited::new(body, limit)
                    .map_err(move |e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            flag.store(true, Ordering::Relaxed);
                        }
                        e
                    })
                    .boxed_unsync()
            }
        };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.headers_mut() = headers;
        *out.version_mut() = Version::HTTP_11;

        // The response head within the upstream timeout, counted from the request's start;
        // a masked body within it again once the head is in. The timer goes back to the
        // connection when this returns.
        let mut timer = conn.timer((ctx.started + us.timeout).into());
        let sent = tokio::select! {
            biased;
            r = upstream.send(out, target) => Some(r),
            _ = &mut timer => None,
        };
        let (resp, lease) = match sent {
            _ if too_large.is_some_and(|f| f.load(Ordering::Relaxed)) => {
                return Err(GatewayError::PayloadTooLarge)
            }
            None => return Err(GatewayError::UpstreamTimeout),
            Some(Err(e)) => {
                tracing::warn!(upstream = %us.name, error = %e, "upstream request failed");
                return Err(GatewayError::UpstreamUnavailable);
            }
            Some(Ok(resp)) => resp,
        };
        ctx.upstream_status = Some(resp.status().as_u16());
        let (mut parts, body) = resp.into_parts();
        headers::sanitize_response_headers(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let resp = Response::from_parts(parts, body);
        match ctx.mask().cloned() {
            None => {
                // Passed through as it streams: a failure after this point can only break
                // the response (never complete it), and is audited on its own record.
                // Through the connection: a clone of the gateway's own `Arc` would touch a
                // count both workers share (see `conn`).
                let conn = conn.clone();
                let request_id = ctx.request_id.clone();
                let rules = ctx.rules.clone();
                let route_ix = ctx.route;
                let on_abort: upstream::OnAbort = Box::new(move |why| {
                    let g = &conn.gateway;
                    g.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    g.audit.write(&serde_json::json!({
                        "type": "response_aborted",
                        "ts": crate::audit::humantime_now(),
                        "request_id": request_id,
                        "route": route_ix.map(|i| rules.routes[i].name.as_str()),
                        "reason": why,
                    }));
                });
                Ok(resp.map(|b| {
                    upstream::WatchedBody::new(b, us.timeout, on_abort, lease).boxed_unsync()
                }))
            }
            Some(set) => {
                let job = filter::MaskJob {
                    set,
                    passthrough_types: &route.passthrough_types,
                    passthrough_headers: &route.passthrough_headers,
                    is_head,
                    accept_encoding,
                    max_body: self.settings.limits.max_masked_body,
                    max_depth: self.settings.limits.max_json_depth,
                };
                // The whole body must arrive within the upstream timeout to be masked.
                // Boxed: kept out of the passthrough request's future (see `Upstream::send`).
                timer.reset(tokio::time::Instant::now() + us.timeout);
                let filtered = tokio::select! {
                    biased;
                    r = Box::pin(job.run(resp)) => r?,
                    _ = &mut timer => return Err(GatewayError::UpstreamTimeout),
                };
                // `run` read the body to its end (or streams it: then it is not given back).
                if let Some(l) = lease.filter(|_| filtered.body_read_whole) {
                    l.give_back();
                }
                ctx.masked = filtered.report;
                Ok(filtered.response)
            }
        }
    }
}

/// `<process prefix>-<sequence in hex>`, without the formatting machinery (this runs on
/// every request).
fn request_id(prefix: &str, seq: u64) -> String {
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    let digits = (64 - seq.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        let d = ((seq >> (i * 4)) & 0xf) as u8;
        id.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
    id
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE) || req.method() == Method::CONNECT
}

/// Request-line and Host checks, then the canonical path.
fn check_request(
    req: &Request<Incoming>,
    limits: &crate::config::settings::Limits,
) -> Result<String, GatewayError> {
    let scan = headers::HeadScan::new(
        req.headers(),
        req.uri().path_and_query().map_or(0, |p| p.as_str().len()),
    );
    scan.check_limits(limits.max_header_bytes, limits.max_headers)?;
    if req.method() == Method::CONNECT {
        return Err(GatewayError::BadRequest("CONNECT is not supported"));
    }
    scan.check_repeats()?;
    if req.version() != Version::HTTP_2 {
        scan.check_http1_framing(req.version())?;
    }
    let uri = req.uri();
    let host_header = scan.host_value;
    if req.version() == Version::HTTP_2 {
        // h2: `:authority` is the authority; a Host header, if any, must agree.
        match (uri.authority(), host_header) {
            (None, None) => return Err(GatewayError::BadRequest("missing :authority")),
            (Some(a), Some(h)) if h.as_bytes() != a.as_str().as_bytes() => {
                return Err(GatewayError::BadRequest("Host conflicts with :authority"))
            }
            _ => {}
        }
    } else {
        // HTTP/1.x: only origin-form targets; absolute form is a proxy request we do not serve.
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(GatewayError::BadRequest(
                "absolute-form request targets are not accepted",
            ));
        }
        if host_header.is_none_or(|h| h.is_empty()) {
            return Err(GatewayError::BadRequest("missing Host header"));
        }
    }
    canonical_path(uri.path()).map_err(GatewayError::BadPath)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_prefix_and_hex_sequence() {
        for seq in [0u64, 1, 9, 10, 15, 16, 0xabc, 0x1_0000_0000, u64::MAX] {
            assert_eq!(super::request_id("a1b2", seq), format!("a1b2-{seq:x}"));
        }
    }
}
