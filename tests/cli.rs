//! The `phigate` binary itself: serve (SIGHUP reload, SIGTERM drain), test, explain,
//! report, check --format json / --strict.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    admin_get, closed_port, eventually, example_rules, rules_dir_with, Echo, PSEUDONYM_KEY,
};
use phigate::server::tls::DevPki;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phigate"));
    c.env("PHIGATE_PSEUDONYM_KEY", PSEUDONYM_KEY);
    c
}

fn run(args: &[&str]) -> (i32, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn repo_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("phigate.yaml")
        .display()
        .to_string()
}

#[test]
fn test_command_runs_the_example_rule_tests() {
    let (code, out) = run(&["test", "--config", &repo_config()]);
    assert_eq!(code, 0, "{out}");
    let summary = out.lines().last().unwrap();
    let passed: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{summary}");
    assert!(summary.ends_with("0 failed"), "{summary}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        passed
    );
}

#[test]
fn test_command_fails_on_a_wrong_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("wrong.yaml"),
        "cases:\n  - { name: right, user: dana@clinic.example, request: GET /api/patients, expect: allow }\n  - { name: wrong, user: mia@clinic.example, request: GET /api/patients, expect: allow }\n  - name: wrong body\n    user: bob@clinic.example\n    request: GET /api/patients\n    expect: allow\n    upstream: { body: { ssn: \"123-45-6789\" } }\n    expect_body: { ssn: \"123-45-6789\" }\n",
    )
    .unwrap();
    let (code, out) = run(&["test", dir.to_str().unwrap(), "--config", &repo_config()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS wrong.yaml: right"), "{out}");
    assert!(
        out.contains("FAIL wrong.yaml: wrong -- expected allow, got 403"),
        "{out}"
    );
    assert!(
        out.contains("FAIL wrong.yaml: wrong body -- body differs"),
        "{out}"
    );
    assert!(out.contains("\"[REDACTED]\""), "{out}");
    assert!(out.contains("1 passed, 2 failed"), "{out}");
}

#[test]
fn explain_prints_the_trace() {
    let (code, out) = run(&[
        "explain",
        "--config",
        &repo_config(),
        "--user",
        "bob@clinic.example",
        "GET",
        "/api/patients/7",
    ]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "canonical path /api/patients/7",
        "patient-detail",
        "DENIED by inline deny cdp:patient:view",
        "DENY (403)",
    ] {
        assert!(out.contains(want), "'{want}' not in:\n{out}");
    }
    let (_, out) = run(&[
        "explain",
        "--config",
        &repo_config(),
        "--user",
        "bob@clinic.example",
        "--format",
        "json",
        "GET",
        "/api/patients",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["permissions"][0]["source"]["via"], "policy");
    assert_eq!(v["masking"]["applies"], true);
    assert!(v["masking"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().starts_with("$..ssn")));
}

#[test]
fn reports_in_three_formats() {
    let (code, table) = run(&["report", "phi-access", "--config", &repo_config()]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("bob@clinic.example")
            && l.contains("patient-read (direct)")
            && l.contains("patient-list (masked)")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("alex@clinic.example")
            && l.contains("patient-read (role Analyst)")
            && l.contains("(raw)")),
        "{table}"
    );
    let (_, json) = run(&[
        "report",
        "phi-access",
        "--config",
        &repo_config(),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mia = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "mia@clinic.example")
        .unwrap();
    assert_eq!(mia["phi_routes"], serde_json::json!([]));
    let holders = v["phi_policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "patient-read")
        .unwrap();
    assert_eq!(holders["holders"].as_array().unwrap().len(), 2);
    let (_, csv) = run(&[
        "report",
        "phi-access",
        "--config",
        &repo_config(),
        "--format",
        "csv",
    ]);
    assert!(
        csv.starts_with("user,data_access,kind,name,via_or_sees\n"),
        "{csv}"
    );
    assert!(
        csv.contains("bob@clinic.example,anonymized,route,patient-list,masked"),
        "{csv}"
    );
    let (_, review) = run(&[
        "report",
        "review",
        "--config",
        &repo_config(),
        "--format",
        "csv",
    ]);
    assert!(
        review.contains(
            "bob@clinic.example,anonymized,Editor,patient-read,report:export,cdp:patient:view"
        ),
        "{review}"
    );
}

fn write_config(
    dir: &Path,
    rules: &Path,
    upstream: std::net::SocketAddr,
    listen: u16,
    admin: u16,
    audit: &Path,
) -> PathBuf {
    let pki = DevPki::generate().unwrap();
    std::fs::write(dir.join("gateway.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("gateway-key.pem"), &pki.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    let issuer = phigate::demo::tokens::DevIssuer::generate("https://idp.test", "phigate").unwrap();
    std::fs::write(dir.join("jwks.json"), &issuer.jwks_json).unwrap();
    std::fs::write(dir.join("token"), issuer.mint("dana@clinic.example", 600)).unwrap();
    let cfg = dir.join("phigate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{listen}\ntls: {{ cert: gateway.pem, key: gateway-key.pem }}\nrules: {}\nupstreams:\n  api: {{ url: \"http://{upstream}\" }}\nauth:\n  jwt:\n    issuer: \"https://idp.test\"\n    audience: phigate\n    jwks_file: jwks.json\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\naudit: {{ sink: file, path: {} }}\nlimits: {{ shutdown_deadline: 10s }}\n",
            rules.display(),
            audit.display()
        ),
    )
    .unwrap();
    cfg
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Whether the file at `path` holds `needle` within 5 s.
async fn file_comes_to_hold(path: &Path, needle: &str) -> bool {
    eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
    })
    .await
    .is_some()
}

#[tokio::test]
async fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Echo::start().await;
    let rules = rules_dir_with(tmp.path(), &[]);
    let (listen, admin) = (closed_port().port(), closed_port().port());
    let audit = tmp.path().join("audit.log");
    let cfg = write_config(tmp.path(), &rules, upstream.addr, listen, admin, &audit);
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && admin_get(admin_addr, "/readyz", None).await.0 == 200
    })
    .await;
    assert!(up.is_some(), "the gateway did not come up");

    // SIGHUP after a rotation that renamed the audit file: the file is reopened at its
    // path, then the rules are reloaded (forced), recorded with its trigger in the new file.
    let rotated = tmp.path().join("audit.log.1");
    assert!(
        file_comes_to_hold(&audit, "\"trigger\":\"start\"").await,
        "no start record in the audit log"
    );
    std::fs::rename(&audit, &rotated).unwrap();
    signal(child.id(), "-HUP");
    assert!(
        file_comes_to_hold(&audit, "\"trigger\":\"sighup\"").await,
        "no sighup reload in the new audit file"
    );
    let new_file = std::fs::read_to_string(&audit).unwrap();
    assert!(
        new_file.starts_with("{\"type\":\"audit_reopen\"")
            && new_file.contains("\"trigger\":\"signal\""),
        "the new file starts with its reopen record, the signal's: {new_file}"
    );
    let old_file = std::fs::read_to_string(&rotated).unwrap();
    assert!(old_file.contains("\"trigger\":\"start\"") && !old_file.contains("sighup"));
    let st: serde_json::Value =
        serde_json::from_str(&admin_get(admin_addr, "/status", None).await.1).unwrap();
    assert_eq!(st["generation"], 2);

    // SIGTERM with a slow request in flight: it finishes, then the process exits 0.
    let ca = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
    let token = std::fs::read_to_string(tmp.path().join("token")).unwrap();
    let slow = tokio::spawn(async move {
        let tls = crate::support::client_tls(&ca, &[]);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        let req = http::Request::get(format!(
            "https://localhost:{listen}/api/reports?sleep_ms=1500"
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
        client.request(req).await.map(|r| r.status().as_u16())
    });
    let seen = eventually(Duration::from_secs(5), || async { upstream.count() > 0 }).await;
    assert!(
        seen.is_some(),
        "the slow request never reached the upstream"
    );
    signal(child.id(), "-TERM");
    let status = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(status, 200);
    let exited = eventually(Duration::from_secs(10), || {
        let done = child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited.is_some(), "the gateway did not exit after SIGTERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{listen}")).is_err(),
        "still accepting after shutdown"
    );
    let _ = example_rules();
}

#[test]
fn check_json_and_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_dir_with(tmp.path(), &[]);
    let audit = tmp.path().join("a.log");
    let cfg = write_config(
        tmp.path(),
        &rules,
        "127.0.0.1:9".parse().unwrap(),
        1,
        2,
        &audit,
    );
    let (code, out) = run(&[
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let kinds: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    for k in ["inline_exceptions", "unused_policy", "unused_role"] {
        assert!(kinds.contains(&k), "{k} missing in {kinds:?}");
    }
    let (code, out) = run(&["check", "--config", cfg.to_str().unwrap(), "--strict"]);
    assert_eq!(code, 1, "--strict fails on warnings: {out}");
    assert!(
        out.contains("warning[unused_role]: role 'Publisher' is given to no user"),
        "{out}"
    );
    // A PHI route without a field set, and a route nobody can reach, are reported.
    let routes = std::fs::read_to_string(example_rules().join("routes.yaml")).unwrap()
        + "\n  - name: lab-results\n    methods: [GET]\n    path: /api/labs/{id}\n    require: cdp:patient:view\n\n  - name: nobody\n    path: /api/nobody\n    require: secret:thing:read\n";
    let access = std::fs::read_to_string(example_rules().join("access.yaml"))
        .unwrap()
        .replace(
            "    roles: [Admin]\n",
            "    roles: [Admin]\n    deny: [secret:thing:read]\n",
        );
    let rules2 = rules_dir_with(
        tmp.path(),
        &[("routes.yaml", &routes), ("access.yaml", &access)],
    );
    let cfg2 = write_config(
        tmp.path(),
        &rules2,
        "127.0.0.1:9".parse().unwrap(),
        1,
        2,
        &audit,
    );
    let (code, out) = run(&["check", "--config", cfg2.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning[phi_route_without_field_set]: route 'lab-results'"),
        "{out}"
    );
    assert!(
        out.contains("warning[unreachable_route]: no caller can reach route 'nobody'"),
        "{out}"
    );
    assert!(
        out.contains(
            "warning[permission_not_granted]: route 'nobody' requires 'secret:thing:read'"
        ),
        "{out}"
    );
}
