//! Step 6: upstream down is 502, too slow is 504, each with a problem body.

use std::time::{Duration, Instant};

use crate::support::{Harness, Options};

#[tokio::test]
async fn upstream_down_is_502() {
    let h = Harness::start_with(Options {
        upstream_down: true,
        ..Options::default()
    })
    .await;
    let r = h.get_as(Some("dana@clinic.example"), "/api/reports").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["type"],
        "https://phigate.dev/problems/upstream-unavailable"
    );
    // And the gateway keeps serving.
    let r = h.get_as(Some("dana@clinic.example"), "/api/reports").await;
    assert_eq!(r.status, 502);
}

/// A gateway whose upstream timeout is `ms`.
async fn with_upstream_timeout(ms: u64) -> Harness {
    Harness::start_with(Options {
        upstream_timeout: Duration::from_millis(ms),
        ..Options::default()
    })
    .await
}

/// A request the upstream answers after 3 s gets 504, well before that.
async fn assert_slow_request_times_out(h: &Harness) {
    let t = Instant::now();
    let r = h
        .get_as(Some("dana@clinic.example"), "/api/reports?sleep_ms=3000")
        .await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2), "timed out promptly");
}

#[tokio::test]
async fn upstream_slow_is_504() {
    let h = with_upstream_timeout(300).await;
    assert_slow_request_times_out(&h).await;
    let r = h.get_as(Some("dana@clinic.example"), "/api/reports").await;
    assert_eq!(r.status, 200, "a fast request right after still works");
}

/// The upstream deadline is one timer a connection keeps from request to request (the
/// test client reuses its connection): each request gets the whole timeout from its own
/// start, also after an idle spell longer than the timeout (the kept timer fired while
/// idle), and a slow request still times out after all that.
#[tokio::test]
async fn kept_upstream_timer_gives_each_request_its_own_deadline() {
    let h = with_upstream_timeout(400).await;
    let dana = Some("dana@clinic.example");
    let r = h.get_as(dana, "/api/reports").await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Past the first request's deadline, within its own.
    let r = h.get_as(dana, "/api/reports?sleep_ms=250").await;
    assert_eq!(r.status, 200, "a request within its own timeout");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = h.get_as(dana, "/api/reports").await;
    assert_eq!(r.status, 200, "after an idle spell longer than the timeout");
    assert_slow_request_times_out(&h).await;
}

/// A gateway whose upstream is the TLS echo `upstream`, trusting `ca_pem`.
async fn via_tls_upstream(
    upstream: &crate::support::Echo,
    ca_pem: &str,
    h2: bool,
) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let port = upstream.addr.port();
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(move |s| {
            let u = &mut s.upstreams[0];
            u.scheme = http::uri::Scheme::HTTPS;
            u.authority = format!("localhost:{port}").parse().unwrap();
            u.ca = Some(ca);
            u.http2 = h2;
        })),
        ..Options::default()
    })
    .await;
    (h, dir)
}

fn tls_echo_config(pki: &phigate::server::tls::DevPki) -> std::sync::Arc<rustls::ServerConfig> {
    phigate::server::tls::server_config_from_pem(&pki.cert_pem, &pki.key_pem).unwrap()
}

/// `https://` upstreams with a private CA (`ca:`), over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn tls_upstream_with_private_ca_over_h1_and_h2() {
    for h2 in [false, true] {
        let pki = phigate::server::tls::DevPki::generate().unwrap();
        let upstream = crate::support::Echo::start_tls(tls_echo_config(&pki)).await;
        let (h, _dir) = via_tls_upstream(&upstream, &pki.ca_pem, h2).await;
        let r = h.get_as(Some("dana@clinic.example"), "/api/reports").await;
        assert_eq!(
            r.status,
            200,
            "h2={h2}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(
            seen[0].header("x-phigate-user"),
            Some("dana@clinic.example")
        );
    }
}

/// An `https://` upstream whose certificate is not signed by the configured CA is refused.
#[tokio::test]
async fn tls_upstream_with_an_untrusted_certificate_is_502() {
    let pki = phigate::server::tls::DevPki::generate().unwrap();
    let other = phigate::server::tls::DevPki::generate().unwrap();
    let upstream = crate::support::Echo::start_tls(tls_echo_config(&pki)).await;
    let (h, _dir) = via_tls_upstream(&upstream, &other.ca_pem, false).await;
    assert_eq!(
        h.get_as(Some("dana@clinic.example"), "/api/reports")
            .await
            .status,
        502
    );
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------------------------------
// The HTTP/1.1 upstream pool: reuse what is whole, drop what is not.
// ---------------------------------------------------------------------------------------

const DANA: &str = "dana@clinic.example";
const BOB: &str = "bob@clinic.example";

fn patients() -> serde_json::Value {
    serde_json::json!({"patients": [{"id": 1, "name": {"first": "Eleanor", "last": "W"},
        "email": "e.w@example.com", "diagnosis": "Type 2 diabetes"}]})
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let h = Harness::start().await;
    h.upstream.script(crate::support::Script::json(&patients()));
    for h2 in [false, true] {
        for _ in 0..4 {
            // Passthrough (full access) and masked (anonymized) bodies alike.
            let r = h
                .call(h2, http::Method::GET, Some(DANA), "/api/patients")
                .await;
            assert_eq!(r.status, 200);
            assert_eq!(r.json(), patients());
            let r = h
                .call(h2, http::Method::GET, Some(BOB), "/api/patients")
                .await;
            assert_eq!(r.status, 200);
            assert!(r.header("x-phigate-masked").is_some());
            assert_ne!(r.json()["patients"][0]["email"], "e.w@example.com");
        }
    }
    assert_eq!(h.upstream.count(), 16);
    // One per client connection (h1 and h2 may be served by different workers, each with
    // its own pool), not one per request.
    assert!(
        h.upstream.connections() <= 2,
        "{}",
        h.upstream.connections()
    );
}

#[tokio::test]
async fn a_connection_whose_body_failed_is_not_reused() {
    let h = Harness::start().await;
    let mut cut = crate::support::Script::json(&patients());
    cut.fail_mid_body = true;
    h.upstream.script(cut);
    for user in [DANA, BOB] {
        let r = h.get_as(Some(user), "/api/patients").await;
        if user == BOB {
            assert_eq!(r.status, 502, "a masked body cut mid-way is refused");
        } else {
            assert_ne!(
                &r.body[..],
                patients().to_string().as_bytes(),
                "a cut passthrough body never looks whole"
            );
        }
    }
    assert_eq!(
        h.upstream.connections(),
        2,
        "each cut connection was dropped"
    );
    h.upstream.script(crate::support::Script::json(&patients()));
    for user in [DANA, BOB, DANA] {
        assert_eq!(h.get_as(Some(user), "/api/patients").await.status, 200);
    }
    assert_eq!(
        h.upstream.connections(),
        3,
        "then one fresh connection serves again"
    );
}

#[tokio::test]
async fn a_body_the_client_abandons_does_not_return_its_connection() {
    // A large passthrough body the client stops reading: its connection cannot serve the
    // next request (it still holds the rest of that body).
    let h = Harness::start().await;
    let big = "x".repeat(4 << 20);
    h.upstream
        .script(crate::support::Script::body("text/plain", big.clone()));
    let req = http::Request::get(format!("{}/api/patients", h.base()))
        .header("authorization", format!("Bearer {}", h.token(DANA)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h.h1.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    h.upstream.script(crate::support::Script::json(&patients()));
    let r = h.get_as(Some(DANA), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), patients());
    assert_eq!(h.upstream.connections(), 2);
}

/// A plain HTTP/1.1 upstream that answers each request and closes the connection
/// `linger` later without saying so (as servers with a short keep-alive timeout do).
async fn closing_upstream(
    linger: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let body = br#"{"ok":true}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    let (addr, accepted) = closing_upstream(Duration::from_millis(30)).await;
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(move |s| {
            s.upstreams[0].authority = addr.to_string().parse().unwrap();
        })),
        ..Options::default()
    })
    .await;
    for user in [DANA, BOB, DANA] {
        let r = h.get_as(Some(user), "/api/patients").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["ok"], true);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
