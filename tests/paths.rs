//! Step 2: every rejected path form gets 400 and never reaches the upstream; accepted forms
//! are forwarded in exactly the canonical form that was matched.

use crate::support::{raw_status, Harness};

fn req(target: &str, token: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn rejected_path_forms_never_reach_the_upstream() {
    let h = Harness::start().await;
    let token = h.token("dana@clinic.example");
    let cases = [
        "/api/../api/patients",
        "/api/./patients",
        "/api/patients/..",
        "/api/%2e%2e/api/patients",
        "/api/%2E/patients",
        "/api%2Fpatients",
        "/api%2fpatients",
        "/api%5Cpatients",
        "/api/patients/%00",
        "/api/patients/%0d%0a",
        "/api/patients;jsessionid=1",
        "/api/patients/1;x",
        "/api\\patients",
        "/api/patients/%252F",
        "/api/patients/%zz",
    ];
    for target in cases {
        let out = h.raw(&req(target, &token)).await;
        assert_eq!(raw_status(&out), 400, "{target}: {out}");
        assert!(
            out.contains("application/problem+json") || out.contains("content-length: 0"),
            "{target}: {out}"
        );
    }
    // A raw control byte in the request line: refused by the HTTP parser.
    let out = h.raw(&req("/api/pat\x01ients", &token)).await;
    assert_eq!(raw_status(&out), 400, "{out}");
    assert_eq!(
        h.upstream.count(),
        0,
        "the upstream saw: {:?}",
        h.upstream.requests()
    );
}

/// hyper's URI parser drops a raw `#fragment` before the gateway sees the target, so the
/// fragment is normalised away once: it is neither matched nor forwarded.
#[tokio::test]
async fn raw_fragment_is_never_forwarded() {
    let h = Harness::start().await;
    let token = h.token("dana@clinic.example");
    let out = h.raw(&req("/api/reports#/../patients", &token)).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/reports");
    assert_eq!(seen[0].header("x-phigate-route"), Some("report-list"));
}

#[tokio::test]
async fn absolute_form_and_bad_host_are_rejected() {
    let h = Harness::start().await;
    let token = h.token("dana@clinic.example");
    let cases = [
        format!("GET https://localhost/api/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET http://evil.example/api/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /api/patients HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /api/patients HTTP/1.1\r\nHost: localhost\r\nHost: other\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /api/patients HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("OPTIONS * HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nAuthorization: Bearer {token}\r\n\r\n"),
        format!("GET /api/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n\r\n"),
    ];
    for c in &cases {
        let out = h.raw(c.as_bytes()).await;
        assert_eq!(raw_status(&out), 400, "{c}\n---\n{out}");
    }
    assert_eq!(
        h.upstream.count(),
        0,
        "the upstream saw: {:?}",
        h.upstream.requests()
    );
}

#[tokio::test]
async fn accepted_forms_are_forwarded_canonically() {
    let h = Harness::start().await;
    let token = h.token("dana@clinic.example");
    let cases = [
        ("//api///patients", "/api/patients"),
        ("/api/%70atients/%31", "/api/patients/1"),
        ("/api/maps/a%20b/embed", "/api/maps/a%20b/embed"),
        (
            "/api/maps/%c3%a9/embed?q=%2e%2e",
            "/api/maps/%C3%A9/embed?q=%2e%2e",
        ),
    ];
    for (sent, forwarded) in cases {
        let out = h.raw(&req(sent, &token)).await;
        assert_eq!(raw_status(&out), 200, "{sent}: {out}");
        let last = h.upstream.requests().pop().unwrap();
        // Case of hex digits aside, the upstream sees what was matched.
        assert_eq!(
            last.target.to_ascii_uppercase(),
            forwarded.to_ascii_uppercase(),
            "{sent}"
        );
        assert!(!last.target.contains("//"));
    }
}
