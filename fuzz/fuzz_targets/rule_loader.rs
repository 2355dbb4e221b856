//! The rule loader over all rule files at once: input is routes.yaml, access.yaml and
//! fields.yaml separated by a line `---8<---`. Never panics, whatever the YAML.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::config::rules::{RuleSnapshot, RuleSources};
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, "\n---8<---\n");
    let routes = parts.next().unwrap_or_default().to_string();
    let access = parts.next().unwrap_or_default().to_string();
    let fields = parts.next().map(str::to_string);
    let src = RuleSources {
        routes: (PathBuf::from("routes.yaml"), routes),
        access: (PathBuf::from("access.yaml"), access),
        fields: fields.map(|f| (PathBuf::from("fields.yaml"), f)),
    };
    let settings = phigate::demo::settings(
        "127.0.0.1:0".parse().unwrap(),
        None,
        PathBuf::from("rules"),
        "127.0.0.1:9".parse().unwrap(),
        PathBuf::from("jwks.json"),
    );
    let env = |name: &str| (name == "PHIGATE_PSEUDONYM_KEY").then(|| "fuzz-key".to_string());
    if let Ok(snap) = RuleSnapshot::compile(&src, &settings, &env) {
        // A snapshot that loads can be routed against.
        for p in ["/", "/api/patients", "/api/patients/7", "/healthz"] {
            let _ = phigate::decision::find_route(&snap, &http::Method::GET, p);
        }
    }
});
