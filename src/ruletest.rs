//! `phigate test`: decision tests for the rules, in the spirit of Cerbos policy tests. Each
//! case names a caller, a request and the expected decision; masking cases also give an
//! upstream body and the body the caller must receive. A reload runs them before swapping.

use std::path::{Path, PathBuf};

use http::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::config::diag::{parse_yaml, read_file, Diagnostics};
use crate::config::rules::RuleSnapshot;
use crate::config::settings::Settings;
use crate::explain::explain;
use crate::proxy::filter::{classify, BodyKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    name: Option<String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A user from access.yaml (or any authenticated name).
    #[serde(default)]
    user: Option<String>,
    /// Raw token claims; the user comes from the configured user claim.
    #[serde(default)]
    claims: Option<serde_json::Map<String, Value>>,
    /// `GET /api/patients/7`
    request: String,
    /// `allow`, or a status code.
    expect: Expect,
    #[serde(default)]
    upstream: Option<Upstream>,
    #[serde(default)]
    expect_body: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expect {
    Status(u16),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upstream {
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    body: Option<Value>,
    /// A body given verbatim (for bodies that are not valid JSON).
    #[serde(default)]
    body_raw: Option<String>,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let file = r
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if r.passed {
                out.push_str(&format!("PASS {file}: {}\n", r.name));
            } else {
                out.push_str(&format!("FAIL {file}: {} -- {}\n", r.name, r.detail));
            }
        }
        out.push_str(&format!(
            "{} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        out
    }
}

/// The test files of a directory, sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs every test file in `dir` against `rules`.
pub fn run_dir(
    dir: &Path,
    rules: &RuleSnapshot,
    settings: &Settings,
) -> Result<Report, Diagnostics> {
    let files = test_files(dir).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(
            dir,
            Default::default(),
            format!("cannot read the tests directory: {e}"),
        );
        d
    })?;
    let mut report = Report::default();
    let mut errors = Diagnostics::default();
    for file in files {
        let text = match read_file(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let tf: TestFile = match parse_yaml(&file, &text) {
            Ok(t) => t,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let _ = &tf.name;
        for case in &tf.cases {
            let (passed, detail) = match run_case(case, rules, settings) {
                Ok(()) => (true, String::new()),
                Err(why) => (false, why),
            };
            report.results.push(CaseResult {
                file: file.clone(),
                name: case.name.clone(),
                passed,
                detail,
            });
        }
    }
    errors.into_result(report)
}

fn run_case(case: &Case, rules: &RuleSnapshot, settings: &Settings) -> Result<(), String> {
    let (method, target) = case
        .request
        .split_once(' ')
        .ok_or_else(|| format!("request '{}' must be 'METHOD /path'", case.request))?;
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("bad method '{method}'"))?;
    let user: Option<String> = match (&case.user, &case.claims) {
        (Some(u), None) => Some(u.clone()),
        (None, Some(c)) => c
            .get(&settings.jwt.user_claim)
            .and_then(Value::as_str)
            .map(str::to_string),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("give 'user' or 'claims', not both".into()),
    };
    let e = explain(rules, user.as_deref(), &method, target.trim());
    let mut status = e.status;
    let mut body: Option<Value> = None;
    if e.decision == "allow" {
        if let Some(up) = &case.upstream {
            let raw: Vec<u8> = match (&up.body, &up.body_raw) {
                (Some(v), None) => serde_json::to_vec(v).map_err(|x| x.to_string())?,
                (None, Some(s)) => s.clone().into_bytes(),
                _ => return Err("upstream needs exactly one of 'body' and 'body_raw'".into()),
            };
            let set = e
                .masking
                .as_ref()
                .filter(|m| m.applies)
                .and_then(|m| m.field_set.as_deref());
            match set.and_then(|n| rules.fields.as_ref().and_then(|f| f.set(n))) {
                None => body = serde_json::from_slice(&raw).ok(),
                Some(set) => {
                    let ct = up
                        .content_type
                        .as_deref()
                        .map(http::HeaderValue::from_str)
                        .transpose()
                        .map_err(|x| x.to_string())?;
                    let route = rules
                        .routes
                        .iter()
                        .find(|r| Some(&r.name) == e.route.as_ref());
                    let passthrough = route
                        .map(|r| r.passthrough_types.as_slice())
                        .unwrap_or_default();
                    match classify(ct.as_ref(), passthrough) {
                        BodyKind::Json => {
                            match set.mask_document(&raw, settings.limits.max_json_depth) {
                                Ok((out, _)) => body = serde_json::from_slice(&out).ok(),
                                Err(_) => status = 502,
                            }
                        }
                        BodyKind::Ndjson => {
                            let mut lines = Vec::new();
                            for line in raw.split(|b| *b == b'\n') {
                                match set.mask_line(line, settings.limits.max_json_depth) {
                                    Ok((out, _)) if !out.is_empty() => lines
                                        .push(serde_json::from_slice(&out).unwrap_or(Value::Null)),
                                    Ok(_) => {}
                                    Err(_) => status = 502,
                                }
                            }
                            body = Some(Value::Array(lines));
                        }
                        BodyKind::Passthrough => body = serde_json::from_slice(&raw).ok(),
                        BodyKind::Refused => status = 502,
                    }
                }
            }
        }
    }
    let status_ok = match &case.expect {
        Expect::Word(w) if w == "allow" => status == 200,
        Expect::Word(w) if w == "deny" => status == 401 || status == 403,
        Expect::Word(w) => {
            return Err(format!(
                "expect '{w}' is not 'allow', 'deny' or a status code"
            ))
        }
        Expect::Status(s) => status == *s,
    };
    if !status_ok {
        return Err(format!(
            "expected {}, got {status} ({})",
            expect_text(&case.expect),
            e.reason
        ));
    }
    if let Some(want) = &case.expect_body {
        let got = body.ok_or("no body to compare (add 'upstream')")?;
        if !matches_expected(want, &got) {
            return Err(format!(
                "body differs:\n    expected {want}\n    got      {got}"
            ));
        }
    }
    Ok(())
}

fn expect_text(e: &Expect) -> String {
    match e {
        Expect::Status(s) => s.to_string(),
        Expect::Word(w) => w.clone(),
    }
}

/// Equality, except that the string "<pseudonym>" matches any pseudonym token (their value
/// depends on the deployment's key).
fn matches_expected(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), Value::String(g)) if w == "<pseudonym>" => g.starts_with("pse:"),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches_expected(a, b))
        }
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|gv| matches_expected(v, gv)))
        }
        (w, g) => w == g,
    }
}

/// The reload gate: when the rules directory has `tests/`, new rules must pass them.
pub fn gate_for(rules_dir: &Path, settings: &Settings) -> Option<crate::config::reload::Gate> {
    let dir = rules_dir.join("tests");
    if !dir.is_dir() {
        return None;
    }
    let settings = settings.clone();
    Some(Box::new(move |snap: &RuleSnapshot| {
        match run_dir(&dir, snap, &settings) {
            Ok(r) if r.failed() == 0 => Ok(()),
            Ok(r) => Err(r
                .results
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{}: {} -- {}", c.file.display(), c.name, c.detail))
                .collect::<Vec<_>>()
                .join("\n")),
            Err(d) => Err(d.to_string()),
        }
    }))
}
