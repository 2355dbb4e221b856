//! Step 3: header hygiene, proven by what the upstream received.

use crate::support::{raw_status, Harness};

#[tokio::test]
async fn spoofed_and_dangerous_headers_never_reach_the_upstream() {
    let h = Harness::start().await;
    let token = h.token("mia@clinic.example");
    let request = format!(
        "GET /api/maps/3/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
X-Phigate-User: dana@clinic.example\r\nX_Phigate_User: dana@clinic.example\r\nx.phigate.user: dana@clinic.example\r\n\
X-PHIGATE-DATA-ACCESS: dpo\r\nx-phigate-route: health\r\n\
X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\n\
X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Request-Id: spoofed\r\n\
Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
TE: trailers\r\nUpgrade-Insecure-Requests: 1\r\nX-Kept: yes\r\n\r\n"
    );
    let out = h.raw(request.as_bytes()).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = h.upstream.requests().pop().expect("forwarded");
    for folded in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
        "x-real-ip",
        "x-secret-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
        "authorization",
    ] {
        assert!(
            !seen.has_header_like(folded),
            "upstream saw {folded}: {:?}",
            seen.headers
        );
    }
    // Exactly one x-phigate-user, and it is the gateway's.
    let users: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().replace(['_', '.'], "-") == "x-phigate-user")
        .collect();
    assert_eq!(users.len(), 1, "{:?}", seen.headers);
    assert_eq!(users[0].1, "mia@clinic.example");
    assert_eq!(seen.header("x-phigate-route"), Some("map-embed-view"));
    assert_eq!(seen.header("x-phigate-data-access"), Some("anonymized"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k.contains("phigate"))
            .count(),
        3,
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The client's Host travels as X-Forwarded-Host; Host is the upstream's own.
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    let upstream_host = h.upstream.addr.to_string();
    assert_eq!(seen.header("host"), Some(upstream_host.as_str()));
    assert_ne!(seen.header("x-request-id"), Some("spoofed"));
    assert_eq!(seen.header("x-kept"), Some("yes"));
    assert_eq!(seen.method, "GET");
}

#[tokio::test]
async fn two_authorization_headers_is_a_400() {
    let h = Harness::start().await;
    let t = h.token("dana@clinic.example");
    let out = h
        .raw(format!("GET /api/reports HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nauthorization: Bearer {t}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw_status(&out), 400, "{out}");
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn upgrade_requests_are_refused() {
    let h = Harness::start().await;
    let t = h.token("dana@clinic.example");
    let out = h
        .raw(format!("GET /api/reports HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw_status(&out), 403, "{out}");
    assert_eq!(h.upstream.count(), 0);
}
