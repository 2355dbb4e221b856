//! Criterion micro-benches; every group holds its baseline so the figure to read is a ratio.
//!   mask/<size>:      serde_json parse + serialize (baseline) vs masking with the example
//!                     `patient` set (rules/fields.yaml) and with the peers' equivalent set.
//!   route_match/<n>:  matching against 10, 1,000 and 10,000 template routes (must stay flat).
//!   access:           permission resolution, cold (uncached) and cached.
//!   jwt:              ES256 verification, cold (uncached) and cached.
//!   canonical_path:   canonical form of typical request paths.
//! Run: `cargo bench --bench micro` (about 2 minutes); one group: `cargo bench --bench micro -- mask`.

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;
use phigate::config::rules::RuleSnapshot;
use phigate::masking::FieldRules;
use phigate::routing::canonical::canonical_path;
use phigate::routing::matcher::{parse_template, Matcher, Methods, RouteMatch};

fn repo_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn key(_: &str) -> Option<String> {
    Some("bench-pseudonym-key".into())
}

fn masking(c: &mut Criterion) {
    let example = std::fs::read_to_string(repo_rules().join("fields.yaml")).expect("fields.yaml");
    let example = FieldRules::compile(&example, Some("dana@clinic.example"), &key).expect("rules");
    let patient = example.set("patient").expect("patient set").clone();
    let bench = FieldRules::compile(common::BENCH_FIELDS_YAML, Some("dpo@bench.example"), &key)
        .expect("bench rules");
    let bench = bench.set("bench").expect("bench set").clone();
    for &(label, size) in common::SIZES {
        let body = common::patient_list(size);
        let mut g = c.benchmark_group(format!("mask/{label}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        if size >= 1 << 20 {
            g.sample_size(20);
        }
        // Baseline: what any JSON-rewriting proxy must do at least once.
        g.bench_function("serde_json_roundtrip", |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
                let mut out = Vec::with_capacity(body.len());
                serde_json::to_writer(&mut out, &v).unwrap();
                out
            })
        });
        g.bench_function("mask_example_patient_set", |b| {
            b.iter(|| patient.mask_document(black_box(&body), 128).unwrap())
        });
        g.bench_function("mask_peer_equivalent_set", |b| {
            b.iter(|| bench.mask_document(black_box(&body), 128).unwrap())
        });
        g.finish();
    }
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let mut m = Matcher::new();
        for i in 0..n {
            // Shapes of a real API: shared prefixes, literals and parameters mixed.
            let t = match i % 3 {
                0 => format!("/api/v1/svc{}/items/{{id}}", i / 3),
                1 => format!("/api/v1/svc{}/items/{{id}}/history", i / 3),
                _ => format!("/api/v2/tenant/{{t}}/res{}", i / 3),
            };
            let segs = parse_template(&t).expect("template");
            m.add_template(i, &format!("r{i}"), &segs, Methods::Only(vec![Method::GET]))
                .expect("route");
        }
        // The last route added with a literal, a parameter and a literal again.
        let last = (0..n).rev().find(|i| i % 3 == 1).expect("n >= 2") / 3;
        let hit = format!("/api/v1/svc{last}/items/12345/history");
        let miss = "/api/v1/nope/items/1".to_string();
        assert!(matches!(m.find(&Method::GET, &hit), RouteMatch::Found(_)));
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, p| {
            b.iter(|| m.find(&Method::GET, black_box(p)))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, p| {
            b.iter(|| m.find(&Method::GET, black_box(p)))
        });
    }
    g.finish();
}

fn snapshot() -> RuleSnapshot {
    let s = phigate::demo::settings(
        "127.0.0.1:0".parse().unwrap(),
        None,
        repo_rules(),
        "127.0.0.1:9".parse().unwrap(),
        PathBuf::from("unused-jwks.json"),
    );
    let src = RuleSnapshot::read_sources(&repo_rules()).expect("rule files");
    RuleSnapshot::compile(&src, &s, &key).expect("example rules compile")
}

fn access(c: &mut Criterion) {
    let rules = snapshot();
    let mut g = c.benchmark_group("access");
    for user in ["bob@clinic.example", "dana@clinic.example"] {
        g.bench_function(BenchmarkId::new("resolve_cold", user), |b| {
            b.iter(|| rules.access.resolve_uncached(black_box(user)))
        });
        rules.access.resolve(user);
        g.bench_function(BenchmarkId::new("resolve_cached", user), |b| {
            b.iter(|| rules.access.resolve_cached(black_box(user)))
        });
    }
    let route = &rules.routes[rules.route_index("patient-list").expect("route")];
    g.bench_function("authorize_cached(bob, patient-list)", |b| {
        b.iter(|| phigate::decision::authorize(&rules, route, black_box("bob@clinic.example")))
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    use phigate::auth::jwt::JwtVerifier;
    use phigate::config::settings::JwtSettings;
    use phigate::demo::tokens::DevIssuer;
    let issuer = DevIssuer::generate(phigate::demo::ISSUER, phigate::demo::AUDIENCE).unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&issuer.jwks_json).unwrap();
    let settings = JwtSettings {
        issuer: phigate::demo::ISSUER.into(),
        audience: phigate::demo::AUDIENCE.into(),
        jwks_file: None,
        hs256_secret: None,
        leeway_s: 30,
        user_claim: "sub".into(),
        cache_size: 10_000,
    };
    let v = JwtVerifier::new(&settings, Some(&jwks)).unwrap();
    let token = issuer.mint("bob@clinic.example", 3600);
    let mut g = c.benchmark_group("jwt");
    g.bench_function("verify_cold_es256", |b| {
        b.iter(|| v.verify_uncached(black_box(&token)).unwrap())
    });
    v.verify(&token).unwrap();
    g.bench_function("verify_cached", |b| {
        b.iter(|| v.verify(black_box(&token)).unwrap())
    });
    g.finish();
}

fn canonical(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonical_path");
    for (name, p) in [
        ("plain", "/api/patients/12345/visits"),
        ("escapes", "/api/files/r%65port%20Q1//2024/%7Euser"),
        ("rejected_dotdot", "/api/../admin"),
    ] {
        g.bench_function(name, |b| b.iter(|| canonical_path(black_box(p))));
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = masking, routing, access, jwt, canonical
}
criterion_main!(benches);
