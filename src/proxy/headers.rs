//! Header hygiene: what a client sends is never allowed to speak for the gateway, and
//! connection-level headers never cross the proxy.

use http::header::{self, HeaderMap, HeaderName};

use crate::error::GatewayError;

/// Names the gateway sets, parsed at compile time (a `&str` name is parsed and validated
/// on every insert).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_PHIGATE_ROUTE: HeaderName = HeaderName::from_static("x-phigate-route");
pub const X_PHIGATE_USER: HeaderName = HeaderName::from_static("x-phigate-user");
pub const X_PHIGATE_DATA_ACCESS: HeaderName = HeaderName::from_static("x-phigate-data-access");
pub const X_PHIGATE_MASKED: HeaderName = HeaderName::from_static("x-phigate-masked");

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones proxies must not forward.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers that ask a server to treat the request as another method or URL.
const OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Identity and client-address headers only the gateway may set.
const GATEWAY_OWNED: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
];

/// `X_Phigate_User`, `x.phigate.user`, `X-PHIGATE-USER` all normalise to `x-phigate-user`:
/// some upstream frameworks fold `_` and `.` into `-`, so every spelling is ours.
fn is_phigate_header(name: &str) -> bool {
    let n = name.as_bytes();
    let (p, rest) = n.split_at(n.len().min(9));
    folds_to(p, b"x-phigate") && (rest.is_empty() || fold(rest[0]) == b'-')
}

/// `_` and `.` read as `-`, ASCII case ignored (hyper's names are lower-case already).
fn fold(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

fn folds_to(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len() && name.iter().zip(target).all(|(a, b)| fold(*a) == *b)
}

/// `Transfer_Encoding`, `content.length` and the like: not framing headers to us, but some
/// upstream stacks (CGI-style, frameworks folding `_` into `-`) read them as such, and then
/// the two sides would disagree on where the message ends. They never cross.
fn is_framing_lookalike(name: &str) -> bool {
    if !name.contains(['_', '.']) {
        return false;
    }
    let n = name.as_bytes();
    ["content-length", "host"]
        .iter()
        .chain(HOP_BY_HOP)
        .chain(GATEWAY_OWNED)
        .any(|t| folds_to(n, t.as_bytes()))
}

/// What the request checks need of a head, gathered in one pass over its fields (one
/// hashed lookup per header name asked about would cost more than the pass).
pub struct HeadScan<'a> {
    /// Fields, as HTTP/1 counts them (`name: value\r\n`), plus the request target.
    bytes: usize,
    fields: usize,
    authorization: usize,
    host: usize,
    content_length: usize,
    transfer_encoding: usize,
    first_te: Option<&'a http::HeaderValue>,
    /// The (first) Host value.
    pub host_value: Option<&'a http::HeaderValue>,
}

impl<'a> HeadScan<'a> {
    pub fn new(h: &'a HeaderMap, target_len: usize) -> HeadScan<'a> {
        let mut s = HeadScan {
            bytes: target_len,
            fields: h.len(),
            authorization: 0,
            host: 0,
            content_length: 0,
            transfer_encoding: 0,
            first_te: None,
            host_value: None,
        };
        for (k, v) in h {
            s.bytes += k.as_str().len() + v.len() + 4;
            if k == header::AUTHORIZATION {
                s.authorization += 1;
            } else if k == header::HOST {
                s.host += 1;
                s.host_value.get_or_insert(v);
            } else if k == header::CONTENT_LENGTH {
                s.content_length += 1;
            } else if k == header::TRANSFER_ENCODING {
                s.transfer_encoding += 1;
                s.first_te.get_or_insert(v);
            }
        }
        s
    }

    /// The request head limits (431): number of header fields and their total size,
    /// whatever the protocol.
    pub fn check_limits(&self, max_bytes: u64, max_count: usize) -> Result<(), GatewayError> {
        if self.fields > max_count {
            return Err(GatewayError::HeadersTooLarge("too many header fields"));
        }
        if self.bytes as u64 > max_bytes {
            return Err(GatewayError::HeadersTooLarge("request head too large"));
        }
        Ok(())
    }

    /// Fields that make the request ambiguous when repeated.
    pub fn check_repeats(&self) -> Result<(), GatewayError> {
        if self.authorization > 1 {
            return Err(GatewayError::BadRequest(
                "more than one Authorization header",
            ));
        }
        if self.host > 1 {
            return Err(GatewayError::BadRequest("more than one Host header"));
        }
        Ok(())
    }

    /// HTTP/1 message framing (RFC 9112 6): one way to find the body's end, or a 400.
    /// hyper already refuses conflicting Content-Length values and a Transfer-Encoding
    /// that does not end in `chunked`; this also refuses what it tolerates: Content-Length
    /// together with Transfer-Encoding, Transfer-Encoding on HTTP/1.0, and any coding but
    /// a single `chunked` (no obfuscated or stacked codings are passed on).
    pub fn check_http1_framing(&self, version: http::Version) -> Result<(), GatewayError> {
        if self.content_length > 1 {
            return Err(GatewayError::BadRequest("more than one Content-Length"));
        }
        let Some(te) = self.first_te else {
            return Ok(());
        };
        if self.content_length > 0 {
            return Err(GatewayError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version == http::Version::HTTP_10 || version == http::Version::HTTP_09 {
            return Err(GatewayError::BadRequest("Transfer-Encoding on HTTP/1.0"));
        }
        if self.transfer_encoding != 1 || !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding other than 'chunked'",
            ));
        }
        Ok(())
    }
}

fn is_hop_by_hop(n: &str) -> bool {
    HOP_BY_HOP.contains(&n)
}

/// What `sanitize_request_headers` drops, by name alone.
fn client_may_not_send(n: &str, keep_authorization: bool) -> bool {
    is_hop_by_hop(n)
        || OVERRIDES.contains(&n)
        || GATEWAY_OWNED.contains(&n)
        || n == "host"
        || (!keep_authorization && n == "authorization")
        || is_phigate_header(n)
        || is_framing_lookalike(n)
}

/// Header names to remove once a pass over the map is done: the first few on the stack,
/// since a request or response usually drops one to three (an allocation per message
/// otherwise).
#[derive(Default)]
struct Doomed {
    few: [Option<HeaderName>; 4],
    n: usize,
    more: Vec<HeaderName>,
}

impl Doomed {
    fn push(&mut self, name: HeaderName) {
        if self.n < self.few.len() {
            self.few[self.n] = Some(name);
            self.n += 1;
        } else {
            self.more.push(name);
        }
    }

    fn remove_from(self, h: &mut HeaderMap) {
        for k in self.few.into_iter().flatten().chain(self.more) {
            h.remove(k);
        }
    }
}

/// Removes everything a client may not forward. `keep_authorization` is the upstream's choice.
pub fn sanitize_request_headers(h: &mut HeaderMap, keep_authorization: bool) {
    remove_where(h, |n| client_may_not_send(n, keep_authorization));
}

/// Removes hop-by-hop headers from an upstream response.
pub fn sanitize_response_headers(h: &mut HeaderMap) {
    remove_where(h, is_hop_by_hop);
}

/// Removes the names a `Connection` header lists, then every name `drop` picks: one pass
/// over the few headers a message has, rather than one hashed lookup per name we might
/// drop (and none for `Connection` when there is none).
fn remove_where(h: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed = Doomed::default();
    let mut connection = false;
    for k in h.keys() {
        connection |= k == header::CONNECTION;
        if drop(k.as_str()) {
            doomed.push(k.clone());
        }
    }
    if connection {
        remove_connection_listed(h);
    }
    doomed.remove_from(h);
}

/// Removes the headers a `Connection` header lists. Both callers then remove every
/// hop-by-hop header, so listed hop-by-hop names (`keep-alive`, the usual one) are left to
/// them: no name is parsed or looked up for those.
fn remove_connection_listed(h: &mut HeaderMap) {
    let values = h.get_all(header::CONNECTION);
    // What nearly every message says: nothing to parse.
    if values.iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    }) {
        return;
    }
    let mut listed = Doomed::default();
    let tokens = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for t in tokens {
        if t.is_empty() || HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(t)) {
            continue;
        }
        // Never let `Connection: authorization`-style tricks strip what we add later; they
        // only remove client headers here.
        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
            if h.contains_key(&n) {
                listed.push(n);
            }
        }
    }
    listed.remove_from(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_every_spelling_of_our_headers() {
        let mut h = HeaderMap::new();
        for n in [
            "x-phigate-user",
            "X_Phigate_User",
            "x.phigate.user",
            "X-PHIGATE-DATA-ACCESS",
            "x_phigate_route",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x-other", HeaderValue::from_static("ok"));
        sanitize_request_headers(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn strips_connection_listed_and_overrides() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        sanitize_request_headers(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn a_listed_name_in_any_connection_value_is_stripped() {
        // The plain `keep-alive` / `close` shortcut must look at every value.
        for first in ["keep-alive", "Close", "KEEP-ALIVE"] {
            let mut h = HeaderMap::new();
            h.append("connection", HeaderValue::from_static(first));
            h.append("connection", HeaderValue::from_static("x-secret"));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("accept", HeaderValue::from_static("*/*"));
            sanitize_response_headers(&mut h);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        }
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Keep-Alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        sanitize_response_headers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn strips_more_listed_and_forbidden_names_than_fit_on_the_stack() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-A, x-b,, X-C , x-d, x-e, x-absent"),
        );
        for n in [
            "x-a",
            "x-b",
            "x-c",
            "x-d",
            "x-e",
            "keep-alive",
            "te",
            "upgrade",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        for n in [
            "x-phigate-user",
            "x-real-ip",
            "forwarded",
            "x-original-url",
            "host",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        sanitize_request_headers(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn strips_hop_by_hop_from_responses_only() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("x-forwarded-for", "1.2.3.4"),
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        sanitize_response_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-forwarded-for"]);
    }

    #[test]
    fn hop_by_hop_names_exactly() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in ["content-type", "te2", "connectio", "x-upgrade", "date"] {
            assert!(!is_hop_by_hop(n), "{n}");
        }
    }

    #[test]
    fn rejects_duplicate_authorization() {
        let mut h = HeaderMap::new();
        h.append("authorization", HeaderValue::from_static("Bearer a"));
        h.append("authorization", HeaderValue::from_static("Bearer b"));
        assert!(HeadScan::new(&h, 0).check_repeats().is_err());
    }

    #[test]
    fn one_pass_counts_what_the_checks_need() {
        use http::Version;
        let scan = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let ok = scan(&[
            ("host", "a"),
            ("authorization", "Bearer t"),
            ("accept", "*/*"),
        ]);
        let s = HeadScan::new(&ok, 10);
        // 10 + "host: a\r\n" (4+1+4) + 13+8+4 + 6+3+4
        assert_eq!(s.bytes, 10 + 9 + 25 + 13);
        assert!(s.check_limits(57, 3).is_ok());
        assert!(s.check_limits(56, 3).is_err());
        assert!(s.check_limits(57, 2).is_err());
        assert!(s.check_repeats().is_ok());
        assert_eq!(s.host_value.map(|v| v.as_bytes()), Some(&b"a"[..]));
        assert!(s.check_http1_framing(Version::HTTP_11).is_ok());
        let two_hosts = scan(&[("host", "a"), ("host", "b")]);
        assert!(HeadScan::new(&two_hosts, 0).check_repeats().is_err());
        let framing = |pairs: &[(&str, &str)], v| {
            let h = scan(pairs);
            let r = HeadScan::new(&h, 0).check_http1_framing(v);
            r.map_err(|e| e.to_string())
        };
        assert!(framing(&[("transfer-encoding", "chunked")], Version::HTTP_11).is_ok());
        assert!(framing(&[("transfer-encoding", "Chunked")], Version::HTTP_11).is_ok());
        assert!(framing(&[("content-length", "1")], Version::HTTP_11).is_ok());
        for bad in [
            &[("content-length", "1"), ("content-length", "1")][..],
            &[("content-length", "1"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert!(framing(bad, Version::HTTP_11).is_err(), "{bad:?}");
        }
        assert!(framing(&[("transfer-encoding", "chunked")], Version::HTTP_10).is_err());
    }
}
