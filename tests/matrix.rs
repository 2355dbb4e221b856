//! The allow/deny matrix of the example rules for every sample user, over HTTP/1.1 and h2.

use http::Method;

use crate::support::Harness;

const DANA: &str = "dana@clinic.example";
const ALEX: &str = "alex@clinic.example";
const BOB: &str = "bob@clinic.example";
const MIA: &str = "mia@clinic.example";
const CAROL: &str = "carol@elsewhere.example"; // authenticated, not listed: defaults

/// (method, path, [dana, alex, bob, mia, carol])
const MATRIX: &[(&str, &str, [u16; 5])] = &[
    ("GET", "/api/patients", [200, 200, 200, 403, 403]),
    ("GET", "/api/patients/1", [200, 200, 403, 403, 403]),
    ("HEAD", "/api/patients/1", [200, 200, 403, 403, 403]),
    ("GET", "/api/reports", [200, 200, 403, 200, 403]),
    ("POST", "/api/reports/7/export", [200, 200, 200, 403, 403]),
    ("GET", "/api/maps/3/embed", [200, 403, 200, 200, 403]),
    ("PUT", "/api/maps/3/embed", [200, 403, 200, 200, 403]),
    ("POST", "/api/maps/3/publish", [200, 403, 403, 200, 403]),
    ("GET", "/healthz", [200, 200, 200, 200, 200]),
    ("DELETE", "/api/patients/1", [405, 405, 405, 405, 405]),
    ("GET", "/api/unknown", [404, 404, 404, 404, 404]),
    ("GET", "/", [404, 404, 404, 404, 404]),
];

async fn run_matrix(h2: bool) {
    let h = Harness::start().await;
    let users = [DANA, ALEX, BOB, MIA, CAROL];
    let mut checked = 0;
    for (method, path, expected) in MATRIX {
        for (user, want) in users.iter().zip(expected) {
            let before = h.upstream.count();
            let r = h
                .call(
                    h2,
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    Some(user),
                    path,
                )
                .await;
            assert_eq!(
                r.status,
                *want,
                "{method} {path} as {user} (h2={h2}): {}",
                String::from_utf8_lossy(&r.body)
            );
            if h2 {
                assert_eq!(r.version, http::Version::HTTP_2);
            }
            let forwarded = h.upstream.by_request_id(&r.request_id());
            if *want == 200 {
                let seen = forwarded.expect("allowed requests reach the upstream");
                assert_eq!(seen.target, *path);
                assert_eq!(seen.method, *method);
                if *path != "/healthz" {
                    assert_eq!(seen.header("x-phigate-user"), Some(*user));
                }
            } else {
                assert!(
                    forwarded.is_none(),
                    "{method} {path} as {user} was refused but forwarded"
                );
                assert_eq!(
                    h.upstream.count(),
                    before,
                    "refused request reached the upstream"
                );
                assert_eq!(r.header("content-type"), Some("application/problem+json"));
                if *method != "HEAD" {
                    let p = r.json();
                    assert_eq!(p["status"], *want);
                    if *want == 403 {
                        assert!(
                            p["missing"].as_array().is_some_and(|m| !m.is_empty()),
                            "{p}"
                        );
                        assert!(p["route"].is_string());
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, MATRIX.len() * 5);
}

#[tokio::test]
async fn example_rules_matrix_http1() {
    run_matrix(false).await;
}

#[tokio::test]
async fn example_rules_matrix_http2() {
    run_matrix(true).await;
}

#[tokio::test]
async fn identity_headers_name_the_caller_and_level() {
    let h = Harness::start().await;
    for (user, level, route) in [
        (DANA, "dpo", "patient-list"),
        (ALEX, "full", "patient-list"),
        (BOB, "anonymized", "patient-list"),
        (CAROL, "anonymized", "report-list"),
    ] {
        let path = if route == "patient-list" {
            "/api/patients"
        } else {
            "/api/reports"
        };
        let r = h.get_as(Some(user), path).await;
        let seen = h.upstream.by_request_id(&r.request_id());
        if user == CAROL {
            assert_eq!(r.status, 403);
            assert!(seen.is_none());
            continue;
        }
        let seen = seen.unwrap();
        assert_eq!(seen.header("x-phigate-user"), Some(user));
        assert_eq!(seen.header("x-phigate-data-access"), Some(level));
        assert_eq!(seen.header("x-phigate-route"), Some(route));
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert!(
            seen.header("authorization").is_none(),
            "the caller's token is not forwarded"
        );
    }
}

#[tokio::test]
async fn public_route_needs_no_token_and_sends_no_identity() {
    let h = Harness::start().await;
    let r = h.get_as(None, "/healthz").await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.by_request_id(&r.request_id()).unwrap();
    assert!(seen.header("x-phigate-user").is_none());
    let r = h.get_as(None, "/api/patients").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn query_is_forwarded_untouched_and_ignored_for_matching() {
    let h = Harness::start().await;
    let r = h
        .get_as(Some(MIA), "/api/maps/3/embed?x=%2F..%2F&y=a;b")
        .await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.by_request_id(&r.request_id()).unwrap();
    assert_eq!(seen.target, "/api/maps/3/embed?x=%2F..%2F&y=a;b");
}

#[tokio::test]
async fn forbidden_body_names_route_and_missing_permission_never_the_token() {
    let h = Harness::start().await;
    let token = h.token(BOB);
    let r = h.with_bearer(&token, "/api/patients/1").await;
    assert_eq!(r.status, 403);
    let p = r.json();
    assert_eq!(p["route"], "patient-detail");
    assert_eq!(p["missing"], serde_json::json!(["cdp:patient:view"]));
    assert!(p["detail"].as_str().unwrap().contains("explicitly denied"));
    assert!(!String::from_utf8_lossy(&r.body).contains(&token));
}

/// A route whose permission comes from a PHI-tagged policy but names no field set: nobody said
/// what to hide, so anonymized callers are refused while raw-access callers pass.
#[tokio::test]
async fn phi_route_without_field_set_refuses_anonymized_callers() {
    let tmp = tempfile::tempdir().unwrap();
    let routes = std::fs::read_to_string(crate::support::example_rules().join("routes.yaml")).unwrap()
        + "\n  - name: lab-results\n    methods: [GET]\n    path: /api/labs/{id}\n    require: cdp:patient:list\n";
    let rules = crate::support::rules_dir_with(tmp.path(), &[("routes.yaml", &routes)]);
    let h = Harness::start_with(crate::support::Options {
        rules,
        ..Default::default()
    })
    .await;
    let r = h.get_as(Some(BOB), "/api/labs/1").await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("names no field set"),
        "{}",
        r.json()
    );
    assert!(h.upstream.by_request_id(&r.request_id()).is_none());
    assert_eq!(h.get_as(Some(ALEX), "/api/labs/1").await.status, 200);
    assert_eq!(h.get_as(Some(DANA), "/api/labs/1").await.status, 200);
}
