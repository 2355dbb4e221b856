//! Issue 5: fault injection. A raw TCP upstream written by hand (bytes, resets, stalls)
//! and clients that go away. Every fault ends with a clear status, an audit record, and a
//! gateway that serves the next request; nothing leaks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::hardening::{tls_connect, DPO};
use crate::support::{eventually, Harness, Options};

/// Sees patients masked (anonymized).
const MASKED: &str = "bob@clinic.example";

type Handler =
    Arc<dyn Fn(TcpStream, usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// An upstream that reads one request head per connection and then does whatever the
/// test's handler does with the socket (`n` counts connections from 0).
struct RawUpstream {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start<F, Fut>(f: F) -> RawUpstream
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |s, n| Box::pin(f(s, n)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    if read_head(&mut s).await {
                        handler(s, n).await;
                    }
                });
            }
        });
        RawUpstream { addr, conns }
    }
}

/// Reads up to the end of one request head (bounded).
async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 1 << 20 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&b[..n]),
            _ => return false,
        }
    }
    true
}

/// Closes with a TCP reset instead of a FIN.
#[allow(deprecated)] // SO_LINGER 0 never blocks: it resets at once
fn reset(s: TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

fn json_head(len: usize) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
}

const PATIENTS: &str = r#"[{"id":7,"name":"Jane Planted-Secret","ssn":"123-45-6789"}]"#;

/// A good answer for connections after the faulty ones.
async fn good(mut s: TcpStream) {
    let _ = s
        .write_all(format!("{}{PATIENTS}", json_head(PATIENTS.len())).as_bytes())
        .await;
    let _ = s.shutdown().await;
}

async fn gateway_to(up: &RawUpstream, audit: &std::path::Path, timeout: Duration) -> Harness {
    let addr = up.addr;
    let audit = audit.to_path_buf();
    Harness::start_with(Options {
        upstream_timeout: timeout,
        tweak: Some(Box::new(move |s| {
            s.upstreams[0].authority = addr.to_string().parse().unwrap();
            s.audit = phigate::audit::AuditSink::File(audit);
        })),
        ..Options::default()
    })
    .await
}

fn audit_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The records of one request; waits (up to 2 s) for the audit writer's batch to land.
fn audited(path: &std::path::Path, request_id: &str) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let recs: Vec<serde_json::Value> = audit_records(path)
            .into_iter()
            .filter(|r| r["request_id"] == request_id)
            .collect();
        if !recs.is_empty() || std::time::Instant::now() > until {
            return recs;
        }
        // The writer is its own thread: blocking here does not hold it up.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A request whose body is read to the end: status, request id, and the body or the error.
async fn fetch(
    h: &Harness,
    h2: bool,
    user: &str,
    path: &str,
) -> (u16, String, Result<Bytes, String>) {
    let req = Request::get(format!("{}{}", h.base(), path))
        .header("authorization", format!("Bearer {}", h.token(user)))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client = if h2 { &h.h2 } else { &h.h1 };
    let resp = client.request(req).await.expect("response head");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body ends or fails in time")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (status, id, body)
}

#[tokio::test]
async fn upstream_refusing_connections_is_502_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let a = audit.clone();
    let h = Harness::start_with(Options {
        upstream_down: true,
        tweak: Some(Box::new(move |s| {
            s.audit = phigate::audit::AuditSink::File(a)
        })),
        ..Options::default()
    })
    .await;
    for user in [DPO, MASKED] {
        let (status, id, body) = fetch(&h, false, user, "/api/patients").await;
        assert_eq!(status, 502);
        assert!(body.unwrap().starts_with(b"{\"type\""));
        let rec = audited(&audit, &id);
        assert_eq!(rec[0]["reason"], "upstream_unavailable", "{rec:?}");
        assert_eq!(rec[0]["status"], 502);
    }
}

#[tokio::test]
async fn upstream_reset_mid_headers_is_502() {
    let up = RawUpstream::start(|mut s, n| async move {
        if n < 4 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConte")
                .await;
            reset(s);
        } else {
            good(s).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    for (h2, user) in [(false, DPO), (false, MASKED), (true, DPO), (true, MASKED)] {
        let (status, id, body) = fetch(&h, h2, user, "/api/patients").await;
        assert_eq!(status, 502, "{user} h2={h2}");
        assert!(!String::from_utf8_lossy(&body.unwrap()).contains("Planted"));
        assert_eq!(audited(&audit, &id)[0]["status"], 502);
    }
    let (status, _, body) = fetch(&h, false, DPO, "/api/patients").await;
    assert_eq!(status, 200, "the next request is served");
    assert!(body.unwrap().starts_with(b"[{"));
}

#[tokio::test]
async fn upstream_reset_mid_body_breaks_passthrough_and_is_502_when_masked() {
    // Connections 0-3: Content-Length framing; 4-7: chunked; each cut after half the body.
    let up = RawUpstream::start(|mut s, n| async move {
        let half = &PATIENTS[..PATIENTS.len() / 2];
        if n < 4 {
            let _ = s
                .write_all(format!("{}{half}", json_head(PATIENTS.len())).as_bytes())
                .await;
        } else if n < 8 {
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{half}\r\n",
                        half.len()
                    )
                    .as_bytes(),
                )
                .await;
        } else {
            return good(s).await;
        }
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        reset(s);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    for framing in ["content-length", "chunked"] {
        for h2 in [false, true] {
            // Passthrough: the head went out, so the body must fail, not end cleanly.
            let (status, id, body) = fetch(&h, h2, DPO, "/api/patients").await;
            assert_eq!(status, 200);
            assert!(
                body.is_err(),
                "{framing} h2={h2}: complete-looking body {body:?}"
            );
            let aborted = eventually(Duration::from_secs(2), || {
                let a = audit.clone();
                let id = id.clone();
                async move {
                    audited(&a, &id)
                        .iter()
                        .any(|r| r["type"] == "response_aborted")
                }
            })
            .await;
            assert!(aborted.is_some(), "{:?}", audited(&audit, &id));
            // Masked: nothing partial, a 502.
            let (status, id, body) = fetch(&h, h2, MASKED, "/api/patients").await;
            assert_eq!(status, 502, "{framing} h2={h2}");
            let body = body.unwrap();
            assert!(!String::from_utf8_lossy(&body).contains("Planted"));
            assert_eq!(audited(&audit, &id)[0]["status"], 502);
        }
    }
    assert_eq!(fetch(&h, false, MASKED, "/api/patients").await.0, 200);
}

#[tokio::test]
async fn upstream_body_longer_or_shorter_than_content_length() {
    let up = RawUpstream::start(|mut s, n| async move {
        match n {
            // Longer: the declared length wins; the rest is never read as anything.
            0 | 1 => {
                let declared = PATIENTS.len() - 10;
                let _ = s
                    .write_all(
                        format!("{}{PATIENTS}HTTP/1.1 200 OK\r\n\r\n", json_head(declared))
                            .as_bytes(),
                    )
                    .await;
                let _ = s.shutdown().await;
            }
            // Shorter: the upstream closes (FIN) before the declared length.
            2 | 3 => {
                let _ = s
                    .write_all(format!("{}{}", json_head(PATIENTS.len() + 50), PATIENTS).as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
            _ => good(s).await,
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    let (status, _, body) = fetch(&h, false, DPO, "/api/patients").await;
    assert_eq!(status, 200);
    assert_eq!(
        body.unwrap().len(),
        PATIENTS.len() - 10,
        "cut at the declared length"
    );
    let (status, _, body) = fetch(&h, false, MASKED, "/api/patients").await;
    assert_eq!(status, 502, "a truncated JSON body is refused when masked");
    assert!(!String::from_utf8_lossy(&body.unwrap()).contains("Planted"));
    let (status, _, body) = fetch(&h, false, DPO, "/api/patients").await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "short body must not look complete");
    let (status, _, body) = fetch(&h, false, MASKED, "/api/patients").await;
    assert_eq!(status, 502);
    assert!(!String::from_utf8_lossy(&body.unwrap()).contains("Planted"));
    assert_eq!(fetch(&h, false, MASKED, "/api/patients").await.0, 200);
}

#[tokio::test]
async fn upstream_stalling_mid_body_is_cut_off() {
    let up = RawUpstream::start(|mut s, n| async move {
        if n < 2 {
            let _ = s
                .write_all(format!("{}[{{\"id\":7,", json_head(PATIENTS.len())).as_bytes())
                .await;
            tokio::time::sleep(Duration::from_secs(8)).await;
        } else {
            good(s).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_millis(700)).await;
    let t = Instant::now();
    let (status, id, body) = fetch(&h, false, DPO, "/api/patients").await;
    assert_eq!(status, 200);
    assert!(body.is_err());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let aborted = eventually(Duration::from_secs(2), || {
        let (a, id) = (audit.clone(), id.clone());
        async move {
            audited(&a, &id)
                .iter()
                .any(|r| r["reason"] == "upstream_body_timeout")
        }
    })
    .await;
    assert!(aborted.is_some());
    let t = Instant::now();
    let (status, id, _) = fetch(&h, false, MASKED, "/api/patients").await;
    assert_eq!(status, 504);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(audited(&audit, &id)[0]["reason"], "upstream_timeout");
    assert_eq!(fetch(&h, false, MASKED, "/api/patients").await.0, 200);
}

#[tokio::test]
async fn a_slow_but_steady_body_is_not_cut_off() {
    // Each gap (300 ms) is under the upstream timeout (700 ms), the whole body (6 x 300 ms)
    // is not: the stall clock must restart on every frame, not run from the head.
    let pieces: Vec<String> = (0..6).map(|i| format!("{{\"id\":{i}}},")).collect();
    let body = format!("[{}{{\"id\":6}}]", pieces.concat());
    let total = body.len();
    let up = RawUpstream::start(move |mut s, _| {
        let pieces = pieces.clone();
        async move {
            let _ = s.write_all(json_head(total).as_bytes()).await;
            let _ = s.write_all(b"[").await;
            for p in pieces {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s.write_all(p.as_bytes()).await;
            }
            let _ = s.write_all(b"{\"id\":6}]").await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_millis(700)).await;
    let t = Instant::now();
    let (status, _, got) = fetch(&h, false, DPO, "/api/patients").await;
    assert_eq!(status, 200);
    assert_eq!(got.expect("the whole body").as_ref(), body.as_bytes());
    assert!(t.elapsed() > Duration::from_millis(1500));
}

#[tokio::test]
async fn upstream_informational_no_content_and_not_modified() {
    let up = RawUpstream::start(|mut s, n| async move {
        let bytes = match n % 3 {
            0 => format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n{}{PATIENTS}",
                json_head(PATIENTS.len())
            ),
            // Bodies where there must be none: never passed on, never read as a response.
            1 => "HTTP/1.1 204 No Content\r\nContent-Length: 14\r\n\r\nPlanted-Secret".to_string(),
            _ => "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 14\r\n\r\nPlanted-Secret".to_string(),
        };
        let _ = s.write_all(bytes.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    for user in [DPO, MASKED] {
        let (status, _, body) = fetch(&h, false, user, "/api/patients").await;
        assert_eq!(status, 200, "1xx skipped for {user}");
        let body = String::from_utf8_lossy(&body.unwrap()).into_owned();
        assert!(body.starts_with("[{"), "{body}");
        assert_eq!(body.contains("Planted"), user == DPO, "{body}");
        for expect in [204, 304] {
            let (status, _, body) = fetch(&h, false, user, "/api/patients").await;
            assert_eq!(status, expect);
            assert!(body.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn upstream_huge_response_headers_are_502() {
    let up = RawUpstream::start(|mut s, n| async move {
        let head = match n {
            0 => format!("HTTP/1.1 200 OK\r\nX-Huge: {}\r\n", "h".repeat(1 << 20)),
            1 => (0..500).map(|i| format!("X-H{i}: v\r\n")).fold(
                "HTTP/1.1 200 OK\r\n".to_string(),
                |mut a, h| {
                    a.push_str(&h);
                    a
                },
            ),
            _ => return good(s).await,
        };
        let _ = s
            .write_all(format!("{head}Content-Length: 2\r\n\r\n[]").as_bytes())
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    for _ in 0..2 {
        let (status, id, _) = fetch(&h, false, DPO, "/api/patients").await;
        assert_eq!(status, 502);
        assert_eq!(audited(&audit, &id)[0]["reason"], "upstream_unavailable");
    }
    assert_eq!(fetch(&h, false, DPO, "/api/patients").await.0, 200);
}

/// Tasks alive on the test's runtime and on the gateway's connection workers.
fn alive_tasks(h: &Harness) -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
        + h.gateway.worker_tasks()
}

#[tokio::test]
async fn client_disconnects_mid_request_and_mid_response_leak_nothing() {
    // Mid-response: the upstream streams a long body slowly; the client reads a little and
    // goes away. The upstream connection must be closed by the gateway (its writes fail).
    let upstream_saw_close = Arc::new(AtomicBool::new(false));
    let flag = upstream_saw_close.clone();
    let up = RawUpstream::start(move |mut s, n| {
        let flag = flag.clone();
        async move {
            if n > 0 {
                return good(s).await;
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000000\r\n\r\n",
                )
                .await;
            for _ in 0..400 {
                if s.write_all(&[b'x'; 16 << 10]).await.is_err() {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = gateway_to(&up, &audit, Duration::from_secs(5)).await;
    let metrics = h.gateway.gateway.metrics.clone();
    let open = move || metrics.open_connections.load(Ordering::Relaxed);
    let baseline = alive_tasks(&h);
    let t = h.token(DPO);

    let mut s = tls_connect(&h, b"http/1.1").await;
    s.write_all(&crate::hardening::get("/api/patients", &t))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < 100_000 {
        got += s.read(&mut buf).await.unwrap();
    }
    assert_eq!(open(), 1);
    // The count sees the gateway's connection tasks (so the check below can fail).
    assert!(alive_tasks(&h) > baseline);
    drop(s);
    let gone = eventually(Duration::from_secs(5), || {
        let f = upstream_saw_close.clone();
        async move { f.load(Ordering::SeqCst) }
    })
    .await;
    assert!(
        gone.is_some(),
        "the upstream transfer went on after the client left"
    );

    // Mid-request: a declared 1 MB body, 1 KB sent, then the client goes away.
    let mut s = tls_connect(&h, b"http/1.1").await;
    s.write_all(
        format!(
            "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nContent-Length: 1000000\r\n\r\n{}",
            "y".repeat(1024)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    // A client that leaves during the TLS handshake, and one that sends half a head.
    let mut raw = TcpStream::connect(h.gateway.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    drop(raw);
    let mut s = tls_connect(&h, b"http/1.1").await;
    s.write_all(b"GET /api/rep").await.unwrap();
    drop(s);

    let m = open.clone();
    let drained = eventually(Duration::from_secs(5), || {
        let m = m.clone();
        async move { m() == 0 }
    })
    .await;
    assert!(drained.is_some(), "open connections: {}", open());
    let settled = eventually(Duration::from_secs(5), || async {
        alive_tasks(&h) <= baseline
    })
    .await;
    assert!(
        settled.is_some(),
        "tasks: {} alive, {baseline} before",
        alive_tasks(&h)
    );
    // And the next request is served.
    assert_eq!(fetch(&h, false, MASKED, "/api/patients").await.0, 200);
    let _ = up.conns.load(Ordering::SeqCst);
}

#[tokio::test]
async fn rules_dir_deleted_or_unreadable_keeps_the_last_good_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = crate::support::rules_dir_with(tmp.path(), &[]);
    let audit = tmp.path().join("audit.jsonl");
    let (r, a) = (rules.clone(), audit.clone());
    let h = Harness::start_with(Options {
        rules: r,
        tweak: Some(Box::new(move |s| {
            s.reload.poll_interval = Duration::from_millis(100);
            s.reload.debounce = Duration::from_millis(20);
            s.audit = phigate::audit::AuditSink::File(a);
        })),
        ..Options::default()
    })
    .await;
    check(&h).await;
    let generation = h.gateway.rules.load().sha256.clone();
    let failures = |audit: &std::path::Path| {
        audit_records(audit)
            .iter()
            .filter(|r| r["type"] == "rules_reload" && r["outcome"] != "success")
            .count()
    };
    // Deleted while running.
    let saved = tmp.path().join("saved");
    std::fs::rename(&rules, &saved).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    check(&h).await;
    assert_eq!(h.gateway.rules.load().sha256, generation);
    // Back, but with routes.yaml unreadable (a directory where the file should be; the
    // tests run as root, so file modes would not stop a read).
    std::fs::rename(&saved, &rules).unwrap();
    let routes = std::fs::read_to_string(rules.join("routes.yaml")).unwrap();
    std::fs::remove_file(rules.join("routes.yaml")).unwrap();
    std::fs::create_dir(rules.join("routes.yaml")).unwrap();
    let failed = eventually(Duration::from_secs(5), || async { failures(&audit) > 0 }).await;
    assert!(failed.is_some(), "{:?}", audit_records(&audit));
    check(&h).await;
    assert_eq!(h.gateway.rules.load().sha256, generation);
    // Repaired: a change is picked up again.
    std::fs::remove_dir(rules.join("routes.yaml")).unwrap();
    std::fs::write(
        rules.join("routes.yaml"),
        routes.replace("# Which permission", "# (edited) Which permission"),
    )
    .unwrap();
    let applied = eventually(Duration::from_secs(5), || async {
        h.gateway.rules.load().sha256 != generation
    })
    .await;
    assert!(applied.is_some());
    check(&h).await;
}

async fn check(h: &Harness) {
    assert_eq!(h.get_as(Some(DPO), "/api/reports").await.status, 200);
    assert_eq!(
        h.get_as(Some("mia@clinic.example"), "/api/patients")
            .await
            .status,
        403
    );
    assert_eq!(h.get_as(None, "/api/reports").await.status, 401);
}
