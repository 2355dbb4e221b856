//! The JSON masker with a fixed field set. The input is any body: the masker never panics
//! and never emits invalid JSON. When the input is JSON, a secret is planted under every
//! masked name at every depth (and in every string array element a detector must catch);
//! none may survive in the output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::masking::{FieldRules, FieldSet};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

const FIELDS: &str = r#"
owner: dana@clinic.example
pseudonym_key_env: K
sets:
  s:
    fields:
      - { path: "$..ssn", action: redact }
      - { path: "$..name", action: remove }
      - { path: "$..email", action: pseudonymize }
      - { path: "$..phone", action: { mask: { keep_last: 4 } } }
      - { key: "(?i)^(mrn|medical_record_number)$", action: redact }
    detect: [ssn, email]
"#;

const SECRET: &str = "PLANTEDSECRETVALUE";

fn set() -> &'static Arc<FieldSet> {
    static SET: OnceLock<Arc<FieldSet>> = OnceLock::new();
    SET.get_or_init(|| {
        let rules = FieldRules::compile(FIELDS, Some("dana@clinic.example"), &|_| {
            Some("fuzz-key".into())
        })
        .expect("fixed field set compiles");
        rules.set("s").unwrap().clone()
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn plant(v: &mut Value, depth: usize) {
    if depth > 60 {
        return;
    }
    match v {
        Value::Object(m) => {
            for k in [
                "ssn",
                "name",
                "email",
                "phone",
                "MRN",
                "medical_record_number",
            ] {
                if let Some(x) = m.get_mut(k) {
                    if !x.is_object() && !x.is_array() {
                        *x = Value::String(format!("{SECRET}-{k}"));
                    }
                }
            }
            m.insert("ssn".into(), Value::String(format!("{SECRET}-ssn")));
            for (_, x) in m.iter_mut() {
                plant(x, depth + 1);
            }
        }
        Value::Array(a) => {
            a.push(Value::String("123-45-6789".into()));
            for x in a.iter_mut() {
                plant(x, depth + 1);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let set = set();
    if let Ok((out, _)) = set.mask_document(data, 64) {
        serde_json::from_slice::<Value>(&out).expect("masker output is JSON");
    }
    let Ok(mut doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The marker must come from planting only (libFuzzer learns it from comparisons and
    // puts it in unmasked places of the input itself: finding 1, a harness issue).
    if doc.to_string().contains(SECRET) || doc.to_string().contains("123-45-6789") {
        return;
    }
    if depth(&doc) > 60 {
        return;
    }
    // Wrap so there is always at least one object to plant into.
    doc = serde_json::json!({ "data": doc, "ssn": "x" });
    plant(&mut doc, 0);
    let body = serde_json::to_vec(&doc).unwrap();
    let (out, _) = set
        .mask_document(&body, 128)
        .expect("valid, shallow JSON is masked");
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains(SECRET), "a planted value survived: {text}");
    assert!(!text.contains("123-45-6789"), "an SSN survived: {text}");
});
