//! fields.yaml: parsing (serde-saphyr, spans for error positions), validation
//! and compilation into `FieldSet`s.

use super::actions::{Action, Pseudonymizer, MAX_MASK_KEEP, REDACTED};
use super::detect::{Detector, Detectors};
use super::path::{compile_path, CompiledPath, FastSel};
use super::{FastRule, FieldSet, KeyRule, NameSet, RuleInfo, RuleIssue};
use crate::per_thread::PerThread;
use regex::Regex;
use regex_syntax::hir::{Hir, HirKind, Look};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    owner: Spanned<String>,
    #[serde(default)]
    pseudonym_key_env: Option<Spanned<String>>,
    sets: Spanned<BTreeMap<String, Spanned<RawSet>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    #[serde(default)]
    fields: Vec<Spanned<RawRule>>,
    #[serde(default)]
    detect: Vec<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    /// Loosely typed so every bad action is reported, not just the first.
    action: Spanned<Value>,
}

/// Max `key` rules per set (their matches are a u64 bitmask).
const MAX_KEY_RULES: usize = 64;

fn issue<T>(at: &Spanned<T>, message: impl Into<String>) -> RuleIssue {
    RuleIssue {
        line: at.referenced.line(),
        column: at.referenced.column(),
        message: message.into(),
    }
}

fn yaml_issue(e: &serde_saphyr::Error) -> RuleIssue {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    // The Display form is "error: line L column C: msg" plus a source snippet;
    // keep only the message.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML");
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    let msg = match msg.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest,
        _ => msg,
    };
    RuleIssue {
        line,
        column,
        message: msg.to_string(),
    }
}

const ACTIONS: &str = "redact, remove, null, pseudonymize, year, zip3, age90, mask, { mask: {...} }, { replace: <scalar> }";

fn parse_action(v: &Value) -> Result<Action, String> {
    match v {
        // YAML `action: null` is a null scalar, not the string "null".
        Value::Null => Ok(Action::Null),
        Value::String(s) => match s.as_str() {
            "redact" => Ok(Action::Redact),
            "remove" => Ok(Action::Remove),
            "null" => Ok(Action::Null),
            "pseudonymize" => Ok(Action::Pseudonymize),
            "year" => Ok(Action::Year),
            "zip3" => Ok(Action::Zip3),
            "age90" => Ok(Action::Age90),
            "mask" => parse_mask(&Value::Null),
            "replace" => Err("replace needs a value: { replace: <scalar> }".into()),
            other => Err(format!(
                "unknown action '{other}' (expected one of {ACTIONS})"
            )),
        },
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one entry");
            match k.as_str() {
                "mask" => parse_mask(inner),
                "replace" => match inner {
                    Value::Array(_) | Value::Object(_) => {
                        Err("replace value must be a JSON scalar".into())
                    }
                    scalar => Ok(Action::Replace(scalar.clone())),
                },
                other => Err(format!(
                    "unknown action '{other}' (expected one of {ACTIONS})"
                )),
            }
        }
        _ => Err(format!("invalid action (expected one of {ACTIONS})")),
    }
}

fn parse_mask(opts: &Value) -> Result<Action, String> {
    let (mut keep_first, mut keep_last, mut ch) = (0usize, 0usize, '*');
    match opts {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                match k.as_str() {
                    "keep_first" | "keep_last" => {
                        let n = v
                            .as_u64()
                            .ok_or_else(|| format!("mask {k} must be a non-negative integer"))?;
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        if k == "keep_first" {
                            keep_first = n;
                        } else {
                            keep_last = n;
                        }
                    }
                    "char" => {
                        let s = v.as_str().ok_or("mask char must be a string")?;
                        let mut it = s.chars();
                        match (it.next(), it.next()) {
                            (Some(c), None) if !c.is_control() => ch = c,
                            _ => return Err("mask char must be exactly one character".into()),
                        }
                    }
                    other => {
                        return Err(format!(
                            "unknown mask option '{other}' (expected keep_first, keep_last, char)"
                        ))
                    }
                }
            }
        }
        _ => return Err("mask options must be a mapping".into()),
    }
    if keep_first.saturating_add(keep_last) > MAX_MASK_KEEP {
        return Err(format!(
            "mask keeps too much: keep_first + keep_last must be at most {MAX_MASK_KEEP}"
        ));
    }
    Ok(Action::Mask {
        keep_first,
        keep_last,
        ch,
    })
}

fn parse_detector(v: &Value) -> Result<Detector, String> {
    match v {
        Value::String(s) => match s.as_str() {
            "ssn" => Ok(Detector::Ssn),
            "email" => Ok(Detector::Email),
            "phone" => Ok(Detector::Phone),
            "credit_card" => Ok(Detector::CreditCard),
            other => Err(format!(
                "unknown detector '{other}' (expected ssn, email, phone, credit_card or {{ regex: ... }})"
            )),
        },
        Value::Object(m) if m.len() == 1 && m.contains_key("regex") => {
            let src = m["regex"].as_str().ok_or("detector regex must be a string")?;
            let re = Regex::new(src).map_err(|e| format!("invalid detector regex: {e}"))?;
            // An empty match would insert [REDACTED] everywhere; matching inside
            // [REDACTED] would break idempotence.
            if re.is_match("") {
                return Err("detector regex must not match the empty string".into());
            }
            if re.is_match(REDACTED) {
                return Err(format!("detector regex must not match {REDACTED}"));
            }
            if never_matches_src(src) {
                return Err("detector regex can never match".into());
            }
            Ok(Detector::Custom(Box::new(PerThread::new(re))))
        }
        _ => Err("invalid detector (expected a name or { regex: ... })".into()),
    }
}

fn never_matches_src(src: &str) -> bool {
    regex_syntax::Parser::new()
        .parse(src)
        .map(|h| never_matches(&h))
        .unwrap_or(false)
}

fn is_look(h: &Hir, want: &[Look]) -> bool {
    match h.kind() {
        HirKind::Look(l) => want.contains(l),
        HirKind::Capture(c) => is_look(&c.sub, want),
        _ => false,
    }
}

fn must_consume(h: &Hir) -> bool {
    h.properties().minimum_len().is_some_and(|n| n > 0)
}

/// Conservative "can this regex never match anything" check: empty classes
/// (regex-syntax reports no minimum length), and text anchors placed where
/// they cannot hold (`a^b`, `$x`).
pub(crate) fn never_matches(h: &Hir) -> bool {
    if h.properties().minimum_len().is_none() {
        return true;
    }
    match h.kind() {
        HirKind::Concat(items) => {
            if items.iter().any(never_matches) {
                return true;
            }
            let mut consumed = false;
            for it in items {
                if consumed && is_look(it, &[Look::Start]) {
                    return true;
                }
                consumed |= must_consume(it);
            }
            let mut consumed = false;
            for it in items.iter().rev() {
                if consumed && is_look(it, &[Look::End]) {
                    return true;
                }
                consumed |= must_consume(it);
            }
            false
        }
        HirKind::Alternation(alts) => alts.iter().all(never_matches),
        HirKind::Capture(c) => never_matches(&c.sub),
        HirKind::Repetition(r) => r.min > 0 && never_matches(&r.sub),
        _ => false,
    }
}

fn compile_key_regex(src: &str, rule: u32) -> Result<KeyRule, String> {
    let re = Regex::new(src).map_err(|e| format!("invalid key regex: {e}"))?;
    let hir = regex_syntax::Parser::new()
        .parse(src)
        .map_err(|e| format!("invalid key regex: {e}"))?;
    if never_matches(&hir) {
        return Err(format!("key regex /{src}/ can never match any member name"));
    }
    let props = hir.properties();
    let anchored = props.look_set_prefix().contains(Look::Start)
        && props.look_set_suffix().contains(Look::End);
    Ok(KeyRule {
        re: PerThread::new(re),
        rule,
        min_len: props.minimum_len().unwrap_or(0),
        max_len: if anchored { props.maximum_len() } else { None },
    })
}

fn build_fast(segs: Vec<super::path::FastSeg>, rule: u32) -> FastRule {
    let mut desc_mask = 0u64;
    let mut wild_mask = 0u64;
    for (i, s) in segs.iter().enumerate() {
        if s.descendant {
            desc_mask |= 1 << i;
        }
        if s.sels.iter().any(|x| matches!(x, FastSel::Wildcard)) {
            wild_mask |= 1 << i;
        }
    }
    FastRule {
        accept: 1 << segs.len(),
        segs,
        desc_mask,
        wild_mask,
        rule,
    }
}

pub(crate) fn compile(
    yaml: &str,
    dpo_user: Option<&str>,
    key_lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, BTreeMap<String, FieldSet>), Vec<RuleIssue>> {
    let raw: RawFile = serde_saphyr::from_str(yaml).map_err(|e| vec![yaml_issue(&e)])?;
    let mut issues = Vec::new();

    match dpo_user {
        Some(d) if d == raw.owner.value => {}
        Some(d) => issues.push(issue(
            &raw.owner,
            format!(
                "owner '{}' is not the data protection officer (the user with data_access: dpo is '{d}')",
                raw.owner.value
            ),
        )),
        None => issues.push(issue(
            &raw.owner,
            format!(
                "owner '{}' cannot be verified: no user has data_access: dpo",
                raw.owner.value
            ),
        )),
    }

    // The key is needed only if some rule pseudonymizes.
    let first_pseudo = raw
        .sets
        .value
        .values()
        .flat_map(|s| &s.value.fields)
        .find(|r| {
            matches!(
                parse_action(&r.value.action.value),
                Ok(Action::Pseudonymize)
            )
        });
    let pseudonymizer = match (first_pseudo, &raw.pseudonym_key_env) {
        (None, _) => None,
        (Some(rule), None) => {
            issues.push(issue(
                &rule.value.action,
                "pseudonymize needs pseudonym_key_env (the environment variable holding the HMAC key)",
            ));
            None
        }
        (Some(_), Some(env)) => match key_lookup(&env.value).filter(|k| !k.is_empty()) {
            Some(k) => Some(Arc::new(Pseudonymizer::new(k.as_bytes()))),
            None => {
                issues.push(issue(
                    env,
                    format!(
                        "environment variable {} (pseudonym key) is unset or empty",
                        env.value
                    ),
                ));
                None
            }
        },
    };

    if raw.sets.value.is_empty() {
        issues.push(issue(&raw.sets, "no sets defined"));
    }

    let mut sets = BTreeMap::new();
    for (name, set) in &raw.sets.value {
        if let Some(fs) = compile_set(name, set, pseudonymizer.clone(), &mut issues) {
            sets.insert(name.clone(), fs);
        }
    }
    if issues.is_empty() {
        Ok((raw.owner.value, sets))
    } else {
        issues.sort_by_key(|i| (i.line, i.column));
        Err(issues)
    }
}

fn compile_set(
    name: &str,
    set: &Spanned<RawSet>,
    pseudonymizer: Option<Arc<Pseudonymizer>>,
    issues: &mut Vec<RuleIssue>,
) -> Option<FieldSet> {
    let before = issues.len();
    let raw = &set.value;
    if raw.fields.is_empty() && raw.detect.is_empty() {
        issues.push(issue(
            set,
            format!("set '{name}' is empty (no fields and no detect)"),
        ));
    }
    let mut fs = FieldSet {
        name: name.to_string(),
        rules: Vec::new(),
        fast: Vec::new(),
        fast_names: NameSet::default(),
        slow: Vec::new(),
        keys: Vec::new(),
        needs_key_info: false,
        dfa: None,
        detectors: Detectors::default(),
        pseudonymizer,
    };
    for (pos, rule) in raw.fields.iter().enumerate() {
        let r = &rule.value;
        let action = match parse_action(&r.action.value) {
            Ok(a) => Some(a),
            Err(m) => {
                issues.push(issue(&r.action, m));
                None
            }
        };
        let idx = fs.rules.len() as u32;
        let selector_text = match (&r.path, &r.key) {
            (Some(_), Some(_)) => {
                issues.push(issue(
                    rule,
                    "a rule has exactly one of path / key, not both",
                ));
                continue;
            }
            (None, None) => {
                issues.push(issue(rule, "a rule needs a path or a key"));
                continue;
            }
            (Some(p), None) => match compile_path(&p.value) {
                Ok(CompiledPath::Fast(segs)) => {
                    for s in &segs {
                        for sel in &s.sels {
                            if let FastSel::Name(n) = sel {
                                fs.fast_names.insert(n);
                            }
                        }
                    }
                    fs.fast.push(build_fast(segs, idx));
                    p.value.clone()
                }
                Ok(CompiledPath::Slow(q)) => {
                    fs.slow.push((q, idx));
                    p.value.clone()
                }
                Err(e) => {
                    issues.push(issue(p, e.0));
                    continue;
                }
            },
            (None, Some(k)) => match compile_key_regex(&k.value, idx) {
                Ok(kr) => {
                    if fs.keys.len() == MAX_KEY_RULES {
                        issues.push(issue(
                            k,
                            format!("at most {MAX_KEY_RULES} key rules per set"),
                        ));
                        continue;
                    }
                    fs.keys.push(kr);
                    format!("key /{}/", k.value)
                }
                Err(m) => {
                    issues.push(issue(k, m));
                    continue;
                }
            },
        };
        if let Some(action) = action {
            let display = format!("{selector_text} -> {}", action.describe());
            fs.rules.push(RuleInfo::new(action, pos as u32, display));
        } else {
            // Keep indices aligned; the set is discarded because of the issue.
            fs.rules
                .push(RuleInfo::new(Action::Redact, pos as u32, String::new()));
        }
    }
    let mut dets = Vec::new();
    let mut seen = HashSet::new();
    for d in &raw.detect {
        match parse_detector(&d.value) {
            Ok(det) => {
                if seen.insert(det.name()) {
                    dets.push(det);
                }
            }
            Err(m) => issues.push(issue(d, m)),
        }
    }
    fs.detectors = Detectors::new(dets);
    fs.needs_key_info = !fs.keys.is_empty() || !fs.fast_names.is_empty();
    fs.dfa = super::dfa::Dfa::build(&fs.fast, &fs.rules);
    (issues.len() == before).then_some(fs)
}
