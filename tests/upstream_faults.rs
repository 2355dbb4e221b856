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

#[tokio::test]
async fn upstream_slow_is_504() {
    let h = Harness::start_with(Options {
        upstream_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let t = Instant::now();
    let r = h
        .get_as(Some("dana@clinic.example"), "/api/reports?sleep_ms=3000")
        .await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2), "timed out promptly");
    let r = h.get_as(Some("dana@clinic.example"), "/api/reports").await;
    assert_eq!(r.status, 200, "a fast request right after still works");
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
