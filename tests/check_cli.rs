//! `phigate check` reports every load error with file:line:column and exits 1; a valid
//! setup exits 0.

use std::path::Path;
use std::process::Command;

use crate::support::rules_dir_with;
use phigate::server::tls::DevPki;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate().unwrap();
        std::fs::write(dir.path().join("gateway.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("gateway-key.pem"), &pki.key_pem).unwrap();
        let issuer =
            phigate::demo::tokens::DevIssuer::generate("https://idp.test", "phigate").unwrap();
        std::fs::write(dir.path().join("jwks.json"), &issuer.jwks_json).unwrap();
        Setup { dir }
    }

    /// Writes phigate.yaml pointing at a rules dir built from the examples with replacements.
    fn config(&self, replace: &[(&str, &str)]) -> std::path::PathBuf {
        let rules = rules_dir_with(self.dir.path(), replace);
        let cfg = self.dir.path().join(format!(
            "phigate-{}.yaml",
            rules.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:8443\ntls: {{ cert: gateway.pem, key: gateway-key.pem }}\nrules: {}\nupstreams:\n  api: {{ url: \"http://127.0.0.1:9000\" }}\nauth:\n  jwt:\n    issuer: \"https://idp.test\"\n    audience: phigate\n    jwks_file: jwks.json\n",
                rules.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
        cfg
    }
}

fn check(cfg: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phigate"))
        .args(["check", "--config"])
        .arg(cfg)
        .env("PHIGATE_PSEUDONYM_KEY", "test-pseudonym-key")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn example(file: &str) -> String {
    std::fs::read_to_string(crate::support::example_rules().join(file)).unwrap()
}

#[test]
fn the_example_rules_pass() {
    let s = Setup::new();
    let (ok, out) = check(&s.config(&[]));
    assert!(ok, "{out}");
    assert!(out.contains("routes"), "{out}");
}

/// (what, file, original text, replacement, expected "file:line:" prefix, words in message)
#[test]
fn load_errors_name_file_line_and_column() {
    let s = Setup::new();
    let access = example("access.yaml");
    let routes = example("routes.yaml");
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let cases: Vec<(&str, &str, String, String, Vec<&str>)> = vec![
        (
            "unknown policy",
            "access.yaml",
            access.replace("Editor:    { policies: [embeddables-save] }", "Editor:    { policies: [embeddables-sav] }"),
            format!("access.yaml:{}:", line_of(&access, "Editor:    {")),
            vec!["unknown policy 'embeddables-sav'"],
        ),
        (
            "unknown role",
            "access.yaml",
            access.replace("roles: [Marketer]", "roles: [Marketeer]"),
            format!("access.yaml:{}:", line_of(&access, "roles: [Marketer]")),
            vec!["unknown role 'Marketeer'"],
        ),
        (
            "malformed permission",
            "access.yaml",
            access.replace("\"map:embed:publish\"", "\"map:embed:Publish!\""),
            format!("access.yaml:{}:", line_of(&access, "embeddables-publish: {")),
            vec!["map:embed:Publish!"],
        ),
        (
            "two dpo users",
            "access.yaml",
            access.replace("data_access: full", "data_access: dpo"),
            format!("access.yaml:{}:", line_of(&access, "alex@clinic.example:") + 1),
            vec!["second 'data_access: dpo'"],
        ),
        (
            "no dpo user",
            "access.yaml",
            access.replace("data_access: dpo", "data_access: full"),
            "access.yaml: exactly one user".to_string(),
            vec!["there is none"],
        ),
        (
            "unknown key",
            "access.yaml",
            access.replace("    data_access: anonymized", "    data_acess: anonymized"),
            format!("access.yaml:{}:", line_of(&access, "data_access: anonymized")),
            vec!["data_acess"],
        ),
        (
            "duplicate key",
            "access.yaml",
            access.replace("  mia@clinic.example:", "  bob@clinic.example:\n    roles: []\n  mia@clinic.example:"),
            "access.yaml:".to_string(),
            vec!["duplicate"],
        ),
        (
            "equally specific routes",
            "routes.yaml",
            routes.replace("  - name: report-export\n", "  - name: export-twin\n    methods: [POST, GET]\n    path: /api/reports/{rid}/export\n    require: report:export\n  - name: report-export\n"),
            format!("routes.yaml:{}:", line_of(&routes, "path: /api/reports/{id}/export") + 4),
            vec!["'report-export' is as specific as route 'export-twin'"],
        ),
        (
            "bad route template",
            "routes.yaml",
            routes.replace("path: /api/maps/{id}/publish", "path: /api/maps/{id*}/publish"),
            format!("routes.yaml:{}:", line_of(&routes, "path: /api/maps/{id}/publish")),
            vec!["must be the last segment"],
        ),
        (
            "route without require",
            "routes.yaml",
            routes.replace("    require: report:view\n", ""),
            "routes.yaml:".to_string(),
            vec!["needs 'require'"],
        ),
        (
            "wildcard in require",
            "routes.yaml",
            routes.replace("require: report:view", "require: report:*"),
            format!("routes.yaml:{}:", line_of(&routes, "require: report:view")),
            vec!["concrete permissions"],
        ),
        (
            "unknown upstream",
            "routes.yaml",
            routes.replace("    upstream: api\n\n  - name: map-publish", "    upstream: apii\n\n  - name: map-publish"),
            format!("routes.yaml:{}:", line_of(&routes, "name: map-publish") - 2),
            vec!["unknown upstream 'apii'"],
        ),
        (
            "bad regex",
            "routes.yaml",
            routes.replace("    path: /api/maps/{id}/publish", "    path_regex: \"/api/maps/([0-9]+/publish\""),
            format!("routes.yaml:{}:", line_of(&routes, "path: /api/maps/{id}/publish")),
            vec!["invalid path_regex"],
        ),
        (
            "yaml syntax",
            "routes.yaml",
            routes.replace("    methods: [GET]\n    path: /healthz", "    methods: [GET\n    path: /healthz"),
            "routes.yaml:".to_string(),
            vec![],
        ),
    ];
    for (what, file, text, prefix, words) in cases {
        assert_ne!(
            text,
            if file == "access.yaml" {
                access.clone()
            } else {
                routes.clone()
            },
            "{what}: replacement applied"
        );
        let cfg = s.config(&[(file, &text)]);
        let (ok, out) = check(&cfg);
        assert!(!ok, "{what}: check passed:\n{out}");
        let line = out
            .lines()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| panic!("{what}: no '{prefix}' in:\n{out}"));
        // file:line:column, with a column number.
        if prefix.ends_with(':') {
            let after = &line[line.find(&prefix).unwrap() + prefix.len()..];
            assert!(
                after
                    .split(':')
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .is_ok()
                    || prefix == format!("{file}:"),
                "{what}: no column in {line}"
            );
        }
        for w in words {
            assert!(out.contains(w), "{what}: '{w}' not in:\n{out}");
        }
    }
}

#[test]
fn config_errors_are_reported_with_position() {
    let s = Setup::new();
    let cfg = s.config(&[]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("audience: phigate", "audience: phigate\n    audiense: x");
    std::fs::write(&cfg, text).unwrap();
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(out.contains(&format!("{}:10:", cfg.display())), "{out}");
    assert!(out.contains("audiense"), "{out}");
}
