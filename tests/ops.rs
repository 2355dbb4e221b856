//! Operations: live reload (watch, poll, ConfigMap symlink swap, broken files, rule-test
//! gate, reloads under load), audit log, metrics, status, admin explain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{admin_get, eventually, example_rules, rules_dir_with, Harness, Options};

const MIA: &str = "mia@clinic.example";
const DANA: &str = "dana@clinic.example";

/// A harness on a private, writable copy of the rules, auditing to a file.
async fn live(dir: &Path, rules: PathBuf) -> (Harness, PathBuf) {
    let audit = dir.join("audit.log");
    let a = audit.clone();
    let h = Harness::start_with(Options {
        rules,
        tweak: Some(Box::new(move |s| {
            s.audit = phigate::audit::AuditSink::File(a);
            s.reload.poll_interval = Duration::from_millis(500);
            s.reload.debounce = Duration::from_millis(50);
        })),
        ..Options::default()
    })
    .await;
    (h, audit)
}

fn example(file: &str) -> String {
    std::fs::read_to_string(example_rules().join(file)).unwrap()
}

/// access.yaml with mia also holding patient-read.
fn access_mia_reads_patients() -> String {
    let a = example("access.yaml");
    let out = a.replace(
        "    roles: [Marketer]\n",
        "    roles: [Marketer]\n    policies: [patient-read]\n",
    );
    assert_ne!(a, out, "replacement applied");
    out
}

async fn status_of(h: &Harness) -> serde_json::Value {
    let (code, body) = admin_get(h.gateway.admin_addr.unwrap(), "/status", None).await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn an_edited_rule_file_is_enforced_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    let (h, audit) = live(tmp.path(), rules.clone()).await;
    assert_eq!(h.get_as(Some(MIA), "/api/patients").await.status, 403);
    let gen_before = status_of(&h).await["generation"].as_u64().unwrap();
    std::fs::write(rules.join("access.yaml"), access_mia_reads_patients()).unwrap();
    let took = eventually(Duration::from_secs(2), || async {
        h.get_as(Some(MIA), "/api/patients").await.status == 200
    })
    .await;
    assert!(took.is_some(), "the edit was not enforced within 2 s");
    let st = status_of(&h).await;
    assert!(st["generation"].as_u64().unwrap() > gen_before);
    assert!(st["last_reload_error"].is_null());
    h.flush_audit().await;
    let log = std::fs::read_to_string(audit).unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"type\":\"rules_reload\"")
            && l.contains("\"outcome\":\"success\"")
            && l.contains("\"trigger\":\"watch\"")),
        "{log}"
    );
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_rules_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    let (h, audit) = live(tmp.path(), rules.clone()).await;
    let sha = status_of(&h).await["rules_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    // A policy that names an unknown role on line 3 of the new file.
    let broken = example("access.yaml").replace("roles: [Marketer]", "roles: [Marketeer]");
    std::fs::write(rules.join("access.yaml"), &broken).unwrap();
    let reported = eventually(Duration::from_secs(3), || async {
        !status_of(&h).await["last_reload_error"].is_null()
    })
    .await;
    assert!(reported.is_some(), "the broken file was not reported");
    let st = status_of(&h).await;
    let err = st["last_reload_error"]["error"].as_str().unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("Marketeer"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("access.yaml:{line}:")), "{err}");
    assert!(err.contains("unknown role 'Marketeer'"), "{err}");
    assert_eq!(st["rules_sha256"], sha.as_str(), "the old rules stay");
    // Old rules still enforced, in both directions.
    assert_eq!(h.get_as(Some(MIA), "/api/maps/3/embed").await.status, 200);
    assert_eq!(h.get_as(Some(MIA), "/api/patients").await.status, 403);
    assert_eq!(h.get_as(Some(DANA), "/api/patients").await.status, 200);
    let (_, metrics) = admin_get(h.gateway.admin_addr.unwrap(), "/metrics", None).await;
    assert!(
        metrics.contains("phigate_rules_reload_failure_total 1"),
        "{metrics}"
    );
    h.flush_audit().await;
    let log = std::fs::read_to_string(audit).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"outcome\":\"failure\"") && l.contains("Marketeer")),
        "{log}"
    );
    // Fixing the file recovers.
    std::fs::write(rules.join("access.yaml"), access_mia_reads_patients()).unwrap();
    let fixed = eventually(Duration::from_secs(3), || async {
        h.get_as(Some(MIA), "/api/patients").await.status == 200
    })
    .await;
    assert!(fixed.is_some());
    assert!(status_of(&h).await["last_reload_error"].is_null());
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_is_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("configmap");
    let v1 = dir.join("..2026_11_23_v1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["routes.yaml", "access.yaml", "fields.yaml"] {
        std::fs::write(v1.join(f), example(f)).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(f), dir.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("..2026_11_23_v1", dir.join("..data")).unwrap();
    let (h, _) = live(tmp.path(), dir.clone()).await;
    assert_eq!(h.get_as(Some(MIA), "/api/patients").await.status, 403);
    // What the kubelet does: write a new version folder, then atomically swap `..data`.
    let v2 = dir.join("..2026_11_23_v2");
    std::fs::create_dir_all(&v2).unwrap();
    for f in ["routes.yaml", "fields.yaml"] {
        std::fs::write(v2.join(f), example(f)).unwrap();
    }
    std::fs::write(v2.join("access.yaml"), access_mia_reads_patients()).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    let took = eventually(Duration::from_secs(2), || async {
        h.get_as(Some(MIA), "/api/patients").await.status == 200
    })
    .await;
    assert!(
        took.is_some(),
        "the ConfigMap swap was not enforced within 2 s"
    );
}

#[tokio::test]
async fn a_hundred_reloads_under_continuous_traffic_fail_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    let (h, _) = live(tmp.path(), rules.clone()).await;
    let h = Arc::new(h);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (h, stop, ok, failed) = (h.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let (user, path) = if i % 2 == 0 {
                (DANA, "/api/patients")
            } else {
                (MIA, "/api/maps/3/embed")
            };
            while !stop.load(Ordering::Relaxed) {
                let r = h.get_as(Some(user), path).await;
                if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let base = example("access.yaml");
    let gen0 = status_of(&h).await["generation"].as_u64().unwrap();
    for i in 0..100 {
        // Each version differs (a comment) so each reload really swaps a new snapshot.
        std::fs::write(
            rules.join("access.yaml"),
            format!("{base}\n# version {i}\n"),
        )
        .unwrap();
        h.gateway.reload("test").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let gen1 = status_of(&h).await["generation"].as_u64().unwrap();
    assert!(gen1 >= gen0 + 100, "generation went from {gen0} to {gen1}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little traffic: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn new_rules_that_fail_the_rule_tests_are_not_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    std::fs::create_dir_all(rules.join("tests")).unwrap();
    std::fs::write(
        rules.join("tests/guard.yaml"),
        "cases:\n  - { name: marketers never read patients, user: mia@clinic.example, request: GET /api/patients, expect: 403 }\n",
    )
    .unwrap();
    let (h, _) = live(tmp.path(), rules.clone()).await;
    std::fs::write(rules.join("access.yaml"), access_mia_reads_patients()).unwrap();
    let reported = eventually(Duration::from_secs(3), || async {
        !status_of(&h).await["last_reload_error"].is_null()
    })
    .await;
    assert!(reported.is_some());
    let err = status_of(&h).await["last_reload_error"]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("rule tests failed") && err.contains("marketers never read patients"),
        "{err}"
    );
    assert_eq!(h.get_as(Some(MIA), "/api/patients").await.status, 403);
}

#[tokio::test]
async fn the_audit_log_records_decisions_without_tokens_or_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (h, audit) = live(tmp.path(), rules_dir_with(tmp.path(), &[])).await;
    h.upstream.script(crate::support::Script::json(
        &serde_json::json!({"patients": [{"ssn": "123-45-6789", "email": "x@example.com"}]}),
    ));
    let token = h.token("bob@clinic.example");
    let r = h.with_bearer(&token, "/api/patients").await;
    assert_eq!(r.status, 200);
    let masked_id = r.request_id();
    let denied = h.with_bearer(&token, "/api/patients/1").await;
    assert_eq!(denied.status, 403);
    h.flush_audit().await;
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(!log.contains(&token), "a token in the audit log");
    assert!(
        !log.contains("123-45-6789") && !log.contains("x@example.com"),
        "a value in the audit log"
    );
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rec = records
        .iter()
        .find(|r| r["request_id"] == masked_id.as_str())
        .expect("a record per request");
    assert_eq!(rec["user"], "bob@clinic.example");
    assert_eq!(rec["data_access"], "anonymized");
    assert_eq!(rec["route"], "patient-list");
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["path"], "/api/patients");
    assert_eq!(rec["required"], serde_json::json!(["cdp:patient:list"]));
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["granted_by"][0]["source"], "policy patient-read");
    assert_eq!(rec["masked_count"], 2);
    assert_eq!(
        rec["masked_paths"],
        serde_json::json!(["$['patients'][0]['ssn']", "$['patients'][0]['email']"])
    );
    assert_eq!(rec["upstream_status"], 200);
    assert!(rec["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(rec["ts"].as_str().unwrap().ends_with('Z'));
    let deny = records
        .iter()
        .find(|r| r["request_id"] == denied.request_id().as_str())
        .unwrap();
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reason"], "forbidden");
    assert!(records
        .iter()
        .any(|r| r["type"] == "rules_reload" && r["trigger"] == "start"));
}

#[tokio::test]
async fn long_masked_path_lists_are_cut_and_flagged_with_the_count_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (h, audit) = live(tmp.path(), rules_dir_with(tmp.path(), &[])).await;
    let patients: Vec<serde_json::Value> = (0..150)
        .map(|i| serde_json::json!({"id": i, "ssn": "123-45-6789", "email": "x@example.com"}))
        .collect();
    h.upstream.script(crate::support::Script::json(
        &serde_json::json!({ "patients": patients }),
    ));
    let r = h.get_as(Some("bob@clinic.example"), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-phigate-masked"), Some("300"));
    let id = r.request_id();
    h.flush_audit().await;
    let log = std::fs::read_to_string(&audit).unwrap();
    let rec: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["request_id"] == id.as_str())
        .expect("the request's record");
    assert_eq!(rec["masked_count"], 300);
    assert_eq!(rec["masked_paths"].as_array().unwrap().len(), 200);
    assert_eq!(rec["masked_paths"][199], "$['patients'][99]['email']");
    assert_eq!(rec["masked_paths_truncated"], true);
}

#[tokio::test]
async fn audit_write_failures_are_counted_and_make_readyz_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.audit = phigate::audit::AuditSink::File("/dev/full".into())
        })),
        ..Options::default()
    })
    .await;
    let _ = tmp;
    let _ = h.get_as(Some(DANA), "/api/reports").await;
    h.flush_audit().await;
    let (code, body) = admin_get(h.gateway.admin_addr.unwrap(), "/readyz", None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("audit log failing"), "{body}");
    let (_, metrics) = admin_get(h.gateway.admin_addr.unwrap(), "/metrics", None).await;
    assert!(
        !metrics.contains("phigate_audit_write_failures_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_status_and_metrics_endpoints() {
    let h = Harness::start().await;
    let admin = h.gateway.admin_addr.unwrap();
    assert_eq!(admin_get(admin, "/healthz", None).await.0, 200);
    let (code, body) = admin_get(admin, "/readyz", None).await;
    assert_eq!(code, 200, "{body}");
    for _ in 0..3 {
        assert_eq!(h.get_as(Some(DANA), "/api/reports").await.status, 200);
    }
    assert_eq!(h.get_as(Some(MIA), "/api/patients").await.status, 403);
    assert_eq!(
        h.get_as(Some("bob@clinic.example"), "/api/patients")
            .await
            .status,
        200
    );
    let (code, m) = admin_get(admin, "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(
        m.contains(
            "phigate_requests_total{route=\"report-list\",decision=\"allow\",status=\"200\"} 3"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "phigate_requests_total{route=\"patient-list\",decision=\"deny\",status=\"403\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("phigate_request_duration_seconds_count{decision=\"allow\"} 4"),
        "{m}"
    );
    assert!(m.contains("phigate_masked_responses_total 1"), "{m}");
    assert!(m.contains("phigate_token_cache_hits_total"), "{m}");
    assert!(
        m.contains("phigate_cache_hit_ratio{cache=\"permission\"}"),
        "{m}"
    );
    assert!(m.contains("phigate_open_connections"), "{m}");
    assert!(
        m.contains("phigate_rules_last_reload_success_timestamp_seconds"),
        "{m}"
    );
    let st: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status", None).await.1).unwrap();
    assert_eq!(st["generation"], 1);
    assert_eq!(st["rules_sha256"].as_str().unwrap().len(), 64);
    assert!(st["loaded_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn admin_explain_is_for_admins_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (h, audit) = live(tmp.path(), rules_dir_with(tmp.path(), &[])).await;
    let admin = h.gateway.admin_addr.unwrap();
    let q = "/explain?user=bob%40clinic.example&method=GET&path=%2Fapi%2Fpatients%2F7";
    assert_eq!(admin_get(admin, q, None).await.0, 401);
    assert_eq!(admin_get(admin, q, Some(&h.token(MIA))).await.0, 403);
    let (code, body) = admin_get(admin, q, Some(&h.token(DANA))).await;
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["route"], "patient-detail");
    assert_eq!(e["decision"], "deny");
    assert_eq!(e["status"], 403);
    assert_eq!(e["permissions"][0]["outcome"], "denied");
    h.flush_audit().await;
    let log = std::fs::read_to_string(audit).unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"type\":\"admin\"")
            && l.contains("\"action\":\"explain\"")
            && l.contains(DANA)),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("\"type\":\"admin\"")
            && l.contains("\"decision\":\"deny\"")
            && l.contains(MIA)),
        "{log}"
    );
}

/// A keep-alive connection remembers its last permitted caller (`proxy::conn`): what it
/// remembers must never answer for another token, nor outlive a reload that revokes it.
#[tokio::test]
async fn a_remembered_caller_never_outlives_its_token_or_its_rules() {
    use crate::hardening::{read_h1_response, tls_connect};
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    std::fs::write(rules.join("access.yaml"), access_mia_reads_patients()).unwrap();
    let (h, _audit) = live(tmp.path(), rules.clone()).await;
    let mia = h.token(MIA);
    let stranger = h.token("stranger@clinic.example");
    let mut tls = tls_connect(&h, b"http/1.1").await;
    let mut status_on_this_connection = async |token: &str| -> u16 {
        let req = format!(
            "GET /api/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let resp = read_h1_response(&mut tls, Duration::from_secs(5))
            .await
            .expect("a response on the kept-alive connection");
        crate::support::raw_status(&resp)
    };
    assert_eq!(status_on_this_connection(&mia).await, 200);
    assert_eq!(status_on_this_connection(&mia).await, 200);
    // Another token on the same connection is judged on its own.
    assert_eq!(status_on_this_connection(&stranger).await, 403);
    assert_eq!(status_on_this_connection("not.a.token").await, 401);
    assert_eq!(status_on_this_connection(&mia).await, 200);
    // The grant is revoked: the same token on the same connection is refused.
    std::fs::write(rules.join("access.yaml"), example("access.yaml")).unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if status_on_this_connection(&mia).await == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a revoked grant still answered on a kept-alive connection"
    );
}
