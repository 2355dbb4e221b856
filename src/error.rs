//! Every refusal the gateway makes, mapped to a status and an RFC 9457 problem body.
//! Bodies name routes and permissions, never tokens or payload values.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::auth::jwt::AuthError;
use crate::routing::canonical::PathRejection;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request path: {0}")]
    BadPath(PathRejection),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("authentication required: {0}")]
    Unauthenticated(AuthError),
    #[error("forbidden: {detail}")]
    Forbidden {
        route: String,
        missing: Vec<String>,
        detail: String,
    },
    #[error("no route for this request")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed(Vec<String>),
    #[error("more than one route matches this request")]
    AmbiguousRoute,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream response refused: {0}")]
    BadUpstreamResponse(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::AmbiguousRoute => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UpstreamUnavailable | GatewayError::BadUpstreamResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Refusals after which an HTTP/1 connection is closed: the request's framing is
    /// suspect, or its body was left unread.
    pub fn closes_http1_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_)
                | GatewayError::BadPath(_)
                | GatewayError::PayloadTooLarge
                | GatewayError::HeadersTooLarge(_)
        )
    }

    /// A short machine-readable reason, also used in audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) => "bad_path",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unauthenticated(_) => "unauthenticated",
            GatewayError::Forbidden { .. } => "forbidden",
            GatewayError::NoRoute => "no_route",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::AmbiguousRoute => "ambiguous_route",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::HeadersTooLarge(_) => "headers_too_large",
            GatewayError::UpstreamUnavailable => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::BadUpstreamResponse(_) => "bad_upstream_response",
        }
    }

    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let mut problem = json!({
            "type": format!("https://phigate.dev/problems/{}", self.reason().replace('_', "-")),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "request_id": request_id,
        });
        match self {
            GatewayError::Forbidden { route, missing, .. } => {
                problem["route"] = json!(route);
                problem["missing"] = json!(missing);
            }
            GatewayError::MethodNotAllowed(allowed) => problem["allowed"] = json!(allowed),
            _ => {}
        }
        let mut resp = Response::new(full_body(problem.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(crate::proxy::headers::X_REQUEST_ID, v);
        }
        match self {
            GatewayError::Unauthenticated(AuthError::Missing | AuthError::NotBearer) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::Unauthenticated(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            GatewayError::MethodNotAllowed(allowed) => {
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    h.insert(header::ALLOW, v);
                }
            }
            _ => {}
        }
        resp
    }
}
