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
