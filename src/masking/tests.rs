//! Tests of the masking module (compile, actions, detectors, walk, strictness).

use super::actions::{mask_str, year_of, zip3_str, Action, Pseudonymizer, REDACTED};
use super::detect::{luhn, Detector, Detectors};
use super::path::{
    compile_path, format_normalized, parse_normalized, select_paths, to_pointer, Step,
};
use super::*;
use serde_json::{json, Value};

const KEY: &str = "test-key-0123456789abcdef";

/// The next state of a xorshift64 generator: the generated inputs of the masking tests.
pub(super) fn xorshift(seed: &mut u64) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
}

const PATIENT_YAML: &str = r#"owner: dana@clinic.example              # must equal the DPO
pseudonym_key_env: PHIGATE_PSEUDONYM_KEY
sets:
  patient:
    fields:
      - { path: "$..ssn",          action: redact }
      - { path: "$..email",        action: pseudonymize }
      - { path: "$..phone",        action: { mask: { keep_last: 4 } } }
      - { path: "$..dob",          action: year }
      - { path: "$..address.zip",  action: zip3 }
      - { path: "$..age",          action: age90 }
      - { path: "$..name",         action: remove }
      - { key: "(?i)^(mrn|medical_record_number)$", action: redact }
    detect: [ssn, email, phone, credit_card]
"#;

fn lookup(name: &str) -> Option<String> {
    (name == "PHIGATE_PSEUDONYM_KEY").then(|| KEY.to_string())
}

fn rules(yaml: &str) -> FieldRules {
    FieldRules::compile(yaml, Some("dana@clinic.example"), &lookup)
        .unwrap_or_else(|e| panic!("compile failed: {e:?}"))
}

fn issues(yaml: &str) -> Vec<RuleIssue> {
    match FieldRules::compile(yaml, Some("dana@clinic.example"), &lookup) {
        Ok(_) => panic!("expected load errors"),
        Err(e) => e,
    }
}

/// A one-set file with the given rule lines (each already indented).
fn one_set(fields: &str, detect: &str) -> String {
    format!(
        "owner: dana@clinic.example\npseudonym_key_env: PHIGATE_PSEUDONYM_KEY\nsets:\n  s:\n    fields:\n{fields}    detect: [{detect}]\n"
    )
}

fn mask_with(set: &FieldSet, v: Value) -> (Value, MaskReport) {
    let (out, rep) = set
        .mask_document(v.to_string().as_bytes(), 64)
        .expect("mask");
    (serde_json::from_slice(&out).expect("output is JSON"), rep)
}

fn apply(a: &Action, v: Value) -> Value {
    let p = Pseudonymizer::new(KEY.as_bytes());
    let mut v = v;
    assert!(!a.apply(&mut v, Some(&p)));
    v
}

// ---------- actions ----------

#[test]
fn action_redact_null_replace_any_type() {
    for v in [
        json!("x"),
        json!(5),
        json!({"a": [1]}),
        json!([1, 2]),
        json!(true),
    ] {
        assert_eq!(apply(&Action::Redact, v.clone()), json!(REDACTED));
        assert_eq!(apply(&Action::Null, v.clone()), Value::Null);
        assert_eq!(apply(&Action::Replace(json!(0)), v.clone()), json!(0));
    }
    let mut v = json!("x");
    assert!(
        Action::Remove.apply(&mut v, None),
        "remove asks the parent to delete"
    );
}

#[test]
fn action_mask() {
    let m = Action::Mask {
        keep_first: 0,
        keep_last: 4,
        ch: '*',
    };
    assert_eq!(apply(&m, json!("617-555-1234")), json!("******1234"));
    assert_eq!(
        apply(&m, json!("******1234")),
        json!("******1234"),
        "fixed point"
    );
    assert_eq!(
        apply(&m, json!(6175551234u64)),
        json!("******1234"),
        "numbers stringified"
    );
    assert_eq!(
        apply(&m, json!("12")),
        json!("******"),
        "too short: nothing kept"
    );
    assert_eq!(apply(&m, json!("******")), json!("******"));
    assert_eq!(apply(&m, json!({"a": 1})), json!(REDACTED), "fail closed");
    assert_eq!(apply(&m, json!(true)), json!(REDACTED));
    assert_eq!(
        apply(&m, json!(REDACTED)),
        json!(REDACTED),
        "fail-closed output is a fixed point"
    );
    let m2 = Action::Mask {
        keep_first: 2,
        keep_last: 2,
        ch: '#',
    };
    assert_eq!(apply(&m2, json!("abcdefghijkl")), json!("ab######kl"));
    assert_eq!(apply(&m2, json!("ab######kl")), json!("ab######kl"));
    assert_eq!(
        mask_str("héllo wörld", 1, 1, '*').as_deref(),
        Some("h******d")
    );
    // Fill chars of 2, 3 and 4 bytes: the run is six whole chars.
    assert_eq!(mask_str("abcdef", 1, 1, 'é').as_deref(), Some("aééééééf"));
    assert_eq!(mask_str("abcdef", 0, 0, '€').as_deref(), Some("€€€€€€"));
    assert_eq!(mask_str("ab", 1, 1, '🙂').as_deref(), Some("🙂🙂🙂🙂🙂🙂"));
}

#[test]
fn constant_actions_give_the_same_json_for_every_node_kind() {
    let nodes = [
        json!("123-45-6789"),
        json!(REDACTED),
        json!(42),
        json!(-1.5),
        json!(true),
        json!(null),
        json!({"a": [1]}),
        json!([]),
    ];
    for a in [
        Action::Null,
        Action::Redact,
        Action::Replace(json!("x\"y")),
        Action::Replace(json!({"k": [1, null]})),
    ] {
        let c = a.constant_json().expect("constant");
        let want: Value = serde_json::from_slice(&c).unwrap();
        for n in &nodes {
            assert_eq!(apply(&a, n.clone()), want, "{a:?} on {n}");
        }
    }
    for a in [
        Action::Remove,
        Action::Pseudonymize,
        Action::Year,
        Action::Zip3,
        Action::Age90,
        Action::Mask {
            keep_first: 0,
            keep_last: 4,
            ch: '*',
        },
    ] {
        assert_eq!(a.constant_json(), None, "{a:?} depends on the node");
    }
}

#[test]
fn action_year() {
    let a = Action::Year;
    assert_eq!(apply(&a, json!("1984-03-09")), json!("1984"));
    assert_eq!(apply(&a, json!("1984-03-09T10:11:12Z")), json!("1984"));
    assert_eq!(apply(&a, json!("1984/03/09")), json!("1984"));
    assert_eq!(apply(&a, json!("3/9/1984")), json!("1984"));
    assert_eq!(apply(&a, json!("1984-03")), json!("1984"));
    assert_eq!(apply(&a, json!("1984")), json!("1984"));
    assert_eq!(apply(&a, json!(1984)), json!(1984));
    assert_eq!(apply(&a, json!("1984-13-09")), json!(REDACTED));
    assert_eq!(apply(&a, json!("March 9, 1984")), json!(REDACTED));
    assert_eq!(apply(&a, json!(449712000)), json!(REDACTED));
    assert_eq!(apply(&a, json!(["1984-03-09"])), json!(REDACTED));
    assert_eq!(apply(&a, Value::Null), Value::Null);
    assert_eq!(year_of("2024-02-30x"), None);
}

#[test]
fn action_zip3() {
    let a = Action::Zip3;
    assert_eq!(apply(&a, json!("02139")), json!("021**"));
    assert_eq!(apply(&a, json!("02139-4307")), json!("021**"));
    assert_eq!(apply(&a, json!("021394307")), json!("021**"));
    assert_eq!(
        apply(&a, json!("03601")),
        json!("000**"),
        "restricted prefix"
    );
    assert_eq!(apply(&a, json!("89301")), json!("000**"));
    assert_eq!(apply(&a, json!("021**")), json!("021**"), "fixed point");
    assert_eq!(apply(&a, json!("000**")), json!("000**"));
    assert_eq!(apply(&a, json!(2139)), json!("021**"), "numeric zip padded");
    assert_eq!(apply(&a, json!("Cambridge")), json!(REDACTED));
    assert_eq!(apply(&a, json!({"zip": "02139"})), json!(REDACTED));
    assert_eq!(zip3_str("0213"), None);
}

#[test]
fn action_age90() {
    let a = Action::Age90;
    assert_eq!(apply(&a, json!(93)), json!("90+"));
    assert_eq!(apply(&a, json!(90)), json!("90+"));
    assert_eq!(apply(&a, json!(89)), json!(89));
    assert_eq!(apply(&a, json!(89.9)), json!(89.9));
    assert_eq!(apply(&a, json!("95")), json!("90+"));
    assert_eq!(apply(&a, json!("42")), json!("42"));
    assert_eq!(apply(&a, json!("90+")), json!("90+"));
    assert_eq!(apply(&a, json!("inf")), json!(REDACTED));
    assert_eq!(apply(&a, json!("ninety")), json!(REDACTED));
    assert_eq!(apply(&a, json!([93])), json!(REDACTED));
}

#[test]
fn action_pseudonymize() {
    let p = Pseudonymizer::new(KEY.as_bytes());
    let a = Action::Pseudonymize;
    let t1 = apply(&a, json!("alice@example.com"));
    let t2 = apply(&a, json!("alice@example.com"));
    let t3 = apply(&a, json!("bob@example.com"));
    assert_eq!(t1, t2, "stable");
    assert_ne!(t1, t3);
    let s = t1.as_str().unwrap();
    let prefix = format!("pse:{}:", p.keyid());
    assert!(s.starts_with(&prefix), "{s}");
    assert_eq!(s.len(), prefix.len() + 22);
    assert_eq!(p.keyid().len(), 8);
    assert!(p.is_token(s));
    assert_eq!(apply(&a, t1.clone()), t1, "tokens are fixed points");
    // A different key gives a different key id and token; it is not a token of ours.
    let other = Pseudonymizer::new(b"another key");
    assert_ne!(other.keyid(), p.keyid());
    assert!(!p.is_token(&other.token("alice@example.com")));
    assert_eq!(apply(&a, json!(42)), json!(p.token("42")));
    assert_eq!(apply(&a, json!({"a": 1})), json!(REDACTED));
    // Known-answer check of the construction (HMAC-SHA256, first 16 bytes, base64url).
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, KEY.as_bytes()),
        b"alice@example.com",
    );
    use base64::Engine as _;
    let expect = format!(
        "pse:{}:{}",
        p.keyid(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
    );
    assert_eq!(s, expect);
}

/// The pseudonym is HMAC-SHA256 as aws-lc-rs computes it, for keys shorter and longer than
/// a block and values across the one-/two-block padding boundary (55/56 bytes) and beyond.
#[test]
fn pseudonym_tags_agree_with_aws_lc_hmac() {
    use base64::Engine as _;
    let keys: Vec<Vec<u8>> = vec![
        b"k".to_vec(),
        KEY.as_bytes().to_vec(),
        vec![0x5a; 64],
        (0..=200u8).collect(),
    ];
    for key in &keys {
        let p = Pseudonymizer::new(key);
        let aws = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        let keyid = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
        let keyid: String = keyid.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(p.keyid(), keyid);
        for len in [0usize, 1, 17, 54, 55, 56, 63, 64, 65, 119, 120, 200, 1000] {
            let value: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let tag = aws_lc_rs::hmac::sign(&aws, value.as_bytes());
            let expect = format!(
                "pse:{keyid}:{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
            );
            assert_eq!(
                p.token(&value),
                expect,
                "key of {} bytes, value of {len}",
                key.len()
            );
            // The precomputed state is cloned, never advanced: the same value again agrees.
            assert_eq!(p.token(&value), expect);
        }
    }
}

// ---------- detectors ----------

fn scrub(d: Detector, s: &str) -> Option<String> {
    Detectors::new(vec![d]).scrub(s)
}

#[test]
fn detector_ssn() {
    assert_eq!(
        scrub(Detector::Ssn, "ssn 123-45-6789.").as_deref(),
        Some("ssn [REDACTED].")
    );
    assert_eq!(scrub(Detector::Ssn, "123456789").as_deref(), Some(REDACTED));
    for neg in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "1234567890",
        "ID123456789",
        "1.123456789",
        "555-123-45-6789",
        "order 123456789-2",
        "[REDACTED]",
    ] {
        assert_eq!(scrub(Detector::Ssn, neg), None, "{neg}");
    }
}

#[test]
fn detector_email() {
    assert_eq!(
        scrub(Detector::Email, "mail a.b+c@mail.example.co.uk now").as_deref(),
        Some("mail [REDACTED] now")
    );
    for neg in ["a@b", "user at example.com", "@example.com", "x@localhost"] {
        assert_eq!(scrub(Detector::Email, neg), None, "{neg}");
    }
}

#[test]
fn detector_phone() {
    for pos in [
        "(617) 555-1234",
        "617-555-1234",
        "617.555.1234",
        "+1 617 555 1234",
        "1-617-555-1234",
        "+441632960123",
    ] {
        assert_eq!(
            scrub(Detector::Phone, &format!("call {pos} today")).as_deref(),
            Some("call [REDACTED] today"),
            "{pos}"
        );
    }
    for neg in [
        "6175551234",
        "2024-03-09",
        "117-555-1234",
        "617-155-1234",
        "v1.617.555.12345",
        "+12",
    ] {
        assert_eq!(scrub(Detector::Phone, neg), None, "{neg}");
    }
}

#[test]
fn detector_credit_card() {
    assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
    assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    for pos in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "378282246310005",
    ] {
        assert_eq!(
            scrub(Detector::CreditCard, &format!("card: {pos}")).as_deref(),
            Some("card: [REDACTED]"),
            "{pos}"
        );
    }
    for neg in [
        "4111 1111 1111 1112",
        "123456789012",
        "41111111111111111111111",
    ] {
        assert_eq!(scrub(Detector::CreditCard, neg), None, "{neg}");
    }
}

#[test]
fn detector_custom_and_combined() {
    let d = Detectors::new(vec![
        Detector::Email,
        Detector::Custom(Box::new(crate::per_thread::PerThread::new(
            regex::Regex::new(r"MRN-\d{6}").unwrap(),
        ))),
        Detector::Ssn,
    ]);
    assert_eq!(
        d.scrub("MRN-123456 / 123-45-6789 / x@y.org").as_deref(),
        Some("[REDACTED] / [REDACTED] / [REDACTED]")
    );
    assert_eq!(d.scrub("nothing here"), None);
    assert_eq!(d.scrub(REDACTED), None);
}

// ---------- normalized paths ----------

#[test]
fn normalized_path_roundtrip_and_pointer() {
    let p = r"$['a.b'][0]['it\'s']['back\\slash']['\u000b']['~/x']['☺']";
    let steps = parse_normalized(p).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Key("a.b".into()),
            Step::Index(0),
            Step::Key("it's".into()),
            Step::Key("back\\slash".into()),
            Step::Key("\u{b}".into()),
            Step::Key("~/x".into()),
            Step::Key("☺".into()),
        ]
    );
    assert_eq!(format_normalized(&steps), p);
    assert_eq!(to_pointer(&steps), "/a.b/0/it's/back\\slash/\u{b}/~0~1x/☺");
    assert_eq!(
        parse_normalized(r"$['\ud83d\ude00']['\n']").unwrap(),
        vec![Step::Key("😀".into()), Step::Key("\n".into())]
    );
    for bad in [
        "",
        "a",
        "$[",
        "$['x'",
        "$[x]",
        r"$['\q']",
        r"$['\ud83d']",
        "$[0",
    ] {
        assert!(parse_normalized(bad).is_err(), "{bad}");
    }
    let doc = json!({"a.b": [{"it's": {"back\\slash": {"\u{b}": {"~/x": {"☺": 7}}}}}]});
    assert_eq!(doc.pointer(&to_pointer(&steps)), Some(&json!(7)));
}

#[test]
fn selector_layer_special_names() {
    let doc = json!({"a.b": 1, "it's": 2, "~/": 3, "ünï": 4, "a": {"b": 5}});
    let sel = |p: &str| select_paths(&compile_path(p).unwrap(), &doc);
    assert_eq!(sel("$['a.b']"), vec!["$['a.b']"]);
    assert_eq!(sel(r#"$["it's"]"#), vec![r"$['it\'s']"]);
    assert_eq!(sel("$['~/']"), vec!["$['~/']"]);
    assert_eq!(sel("$.ünï"), vec!["$['ünï']"]);
    assert_eq!(sel("$.a.b"), vec!["$['a']['b']"]);
    assert!(matches!(
        compile_path("$.a[?@.b]"),
        Ok(path::CompiledPath::Slow(_))
    ));
    assert!(matches!(
        compile_path("$..a[0,-1,*]"),
        Ok(path::CompiledPath::Fast(_))
    ));
    let e = compile_path("$[?@[?@>1]]").unwrap_err();
    assert!(e.0.starts_with("unsupported JSONPath form"), "{}", e.0);
    assert!(compile_path("$[?length(@.*)<3]").is_err());
    assert!(compile_path("$.a[").is_err());
}

// ---------- load errors ----------

#[test]
fn load_error_unknown_action_reports_its_line() {
    let yaml = "owner: dana@clinic.example
sets:
  s:
    fields:
      - { path: \"$..ssn\", action: redact }
      - { path: \"$..a\", action: redact }
      - { path: \"$..b\", action: obliterate }
";
    let e = issues(yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, 7);
    assert!(
        e[0].message.contains("unknown action 'obliterate'"),
        "{}",
        e[0].message
    );
}

#[test]
fn load_errors_are_all_reported_with_positions() {
    let yaml = "owner: dana@clinic.example
pseudonym_key_env: PHIGATE_PSEUDONYM_KEY
sets:
  s:
    fields:
      - { path: \"$..ssn[\", action: redact }
      - { path: \"$[?@[?@>1]]\", action: redact }
      - { key: \"a^b\", action: redact }
      - { key: \"$x\", action: redact }
      - { key: \"[\", action: redact }
      - { path: \"$.a\", key: \"b\", action: redact }
      - { path: \"$.c\", action: { mask: { keep_first: 6, keep_last: 6 } } }
      - { path: \"$.d\", action: { replace: [1, 2] } }
    detect: [ssn, retina_scan, { regex: \"x*\" }]
  empty: {}
";
    let e = issues(yaml);
    let lines: Vec<u64> = e.iter().map(|i| i.line).collect();
    assert_eq!(
        lines,
        vec![6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15],
        "{e:#?}"
    );
    assert!(e[0].message.contains("invalid JSONPath"));
    assert!(e[1].message.starts_with("unsupported JSONPath form"));
    assert!(e[2].message.contains("can never match"));
    assert!(e[3].message.contains("can never match"));
    assert!(e[4].message.contains("invalid key regex"));
    assert!(e[5].message.contains("exactly one of path / key"));
    assert!(e[6].message.contains("keep_first + keep_last"));
    assert!(e[7].message.contains("scalar"));
    assert!(e[8].message.contains("unknown detector 'retina_scan'"));
    assert!(e[9].message.contains("empty string"));
    assert!(e[10].message.contains("empty"));
    assert!(e.iter().all(|i| i.column > 0));
}

#[test]
fn load_error_owner_not_dpo() {
    let yaml = "# comment\nowner: mallory@clinic.example\nsets:\n  s:\n    detect: [ssn]\n";
    let e = FieldRules::compile(yaml, Some("dana@clinic.example"), &lookup).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (2, 8));
    assert!(e[0].message.contains("not the data protection officer"));
    let e = FieldRules::compile(yaml, None, &lookup).unwrap_err();
    assert!(e[0].message.contains("no user has data_access: dpo"));
}

#[test]
fn load_error_unset_or_empty_key_env() {
    let none = |_: &str| None;
    let e = FieldRules::compile(PATIENT_YAML, Some("dana@clinic.example"), &none).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 2);
    assert!(
        e[0].message.contains("PHIGATE_PSEUDONYM_KEY"),
        "{}",
        e[0].message
    );
    let empty = |_: &str| Some(String::new());
    assert!(FieldRules::compile(PATIENT_YAML, Some("dana@clinic.example"), &empty).is_err());
    // No pseudonymize rule: the key is not needed.
    let yaml =
        "owner: dana@clinic.example\npseudonym_key_env: NOPE\nsets:\n  s:\n    detect: [ssn]\n";
    assert!(FieldRules::compile(yaml, Some("dana@clinic.example"), &none).is_ok());
    // pseudonymize without pseudonym_key_env at all.
    let yaml = "owner: dana@clinic.example\nsets:\n  s:\n    fields:\n      - { path: $.a, action: pseudonymize }\n";
    let e = FieldRules::compile(yaml, Some("dana@clinic.example"), &lookup).unwrap_err();
    assert_eq!(e[0].line, 5);
}

#[test]
fn load_error_yaml_structure() {
    let e = issues("owner: dana@clinic.example\nsets:\n  s:\n    fields:\n      - { path: $.a, action: redact, colour: red }\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 5);
    assert!(e[0].message.contains("unknown field"), "{}", e[0].message);
    let e = issues("owner: dana@clinic.example\nowner: x\nsets: {}\n");
    assert_eq!(e[0].line, 2);
    assert!(e[0].message.contains("duplicate"), "{}", e[0].message);
    let e = issues("owner: dana@clinic.example\nsets:\n  s:\n    fields:\n      - { path: $.a }\n");
    assert!(e[0].message.contains("action"), "{}", e[0].message);
    let e = issues("owner: dana@clinic.example\nsets:\n  s:\n    fields: [\n");
    assert!(e[0].line >= 4);
}

#[test]
fn compile_accessors_and_describe() {
    let r = rules(PATIENT_YAML);
    assert_eq!(r.owner(), "dana@clinic.example");
    assert_eq!(r.set_names().collect::<Vec<_>>(), vec!["patient"]);
    assert!(r.set("nope").is_none());
    let d = r.set("patient").unwrap().describe();
    assert_eq!(d[0], "$..ssn -> redact");
    assert_eq!(d[7], "key /(?i)^(mrn|medical_record_number)$/ -> redact");
    assert!(d[8].contains("credit_card, ssn, phone, email"));
    // `action: null` (a YAML null) is the null action.
    let r = rules(&one_set("      - { path: $.a, action: null }\n", "ssn"));
    let (v, _) = mask_with(r.set("s").unwrap(), json!({"a": "x", "b": 1}));
    assert_eq!(v, json!({"a": null, "b": 1}));
}

// ---------- the walk ----------

#[test]
fn fixed_patient_example() {
    let r = rules(PATIENT_YAML);
    let set = r.set("patient").unwrap();
    let input = r#"{"patients":[
 {"id":1,"name":"Alice Smith","ssn":"123-45-6789","email":"alice@example.com","phone":"617-555-1234","dob":"1984-03-09","age":40,
  "address":{"street":"1 Main St","city":"Cambridge","zip":"02139"},"MRN":"MRN-001234",
  "notes":"Called from (617) 555-9876; card 4111 1111 1111 1111 on file"},
 {"id":2,"name":"Bob Jones","ssn":"987654321","email":"bob@example.org","phone":"+1 617 555 0000","dob":"1931-11-30","age":93,
  "address":{"street":"5 Elm","city":"Troy","zip":"03601-1234"},"medical_record_number":77881,
  "contacts":[{"name":"Carol","relation":"daughter","phone":"212.555.0199"}],"tags":["vip",null]}
],"page":{"next":null,"total":2}}"#;
    let expected = concat!(
        r#"{"patients":[{"id":1,"ssn":"[REDACTED]","email":"pse:0813ba6d:wnhz5RPdnK4ZfxfIFD4dFA","phone":"******1234","dob":"1984","age":40,"#,
        r#""address":{"street":"1 Main St","city":"Cambridge","zip":"021**"},"MRN":"[REDACTED]","#,
        r#""notes":"Called from [REDACTED]; card [REDACTED] on file"},"#,
        r#"{"id":2,"ssn":"[REDACTED]","email":"pse:0813ba6d:odDoN9uuzunLIPOAg4Jr5w","phone":"******0000","dob":"1931","age":"90+","#,
        r#""address":{"street":"5 Elm","city":"Troy","zip":"000**"},"medical_record_number":"[REDACTED]","#,
        r#""contacts":[{"relation":"daughter","phone":"******0199"}],"tags":["vip",null]}],"page":{"next":null,"total":2}}"#
    );
    let (out, rep) = set.mask_document(input.as_bytes(), 32).unwrap();
    assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    assert_eq!(rep.count, 19);
    assert_eq!(rep.paths.len(), 19);
    assert_eq!(&rep.paths[0], "$['patients'][0]['name']");
    assert!(rep.paths.contains("$['patients'][0]['notes']"));
    assert!(rep
        .paths
        .contains("$['patients'][1]['contacts'][0]['name']"));
    // Idempotent.
    let (again, _) = set.mask_document(&out, 32).unwrap();
    assert_eq!(again, out);
    // mask_line behaves the same.
    let (line_out, _) = set
        .mask_line(input.replace('\n', "").as_bytes(), 32)
        .unwrap();
    assert_eq!(line_out, out);
}

#[test]
fn precedence_most_destructive_then_path_then_order() {
    let yaml = one_set(
        "      - { path: \"$..ssn\", action: redact }\n      - { path: \"$.p.ssn\", action: remove }\n      - { key: \"^ssn$\", action: null }\n      - { path: \"$.q\", action: { replace: \"Q\" } }\n      - { key: \"^q$\", action: { replace: 1 } }\n",
        "",
    );
    let r = rules(&yaml);
    let (v, rep) = mask_with(
        r.set("s").unwrap(),
        json!({"p": {"ssn": 1}, "o": {"ssn": 2}, "q": 3}),
    );
    assert_eq!(v, json!({"p": {}, "o": {"ssn": null}, "q": "Q"}));
    assert_eq!(rep.count, 3);
}

#[test]
fn outer_selection_wins_and_fail_closed_on_containers() {
    let yaml = one_set(
        "      - { path: \"$.a\", action: year }\n      - { path: \"$..ssn\", action: pseudonymize }\n",
        "ssn",
    );
    let r = rules(&yaml);
    let (v, rep) = mask_with(
        r.set("s").unwrap(),
        json!({"a": {"ssn": "x", "n": "123-45-6789"}, "ssn": {"deep": 1}, "b": [true]}),
    );
    assert_eq!(v, json!({"a": REDACTED, "ssn": REDACTED, "b": [true]}));
    assert_eq!(rep.paths, vec!["$['a']", "$['ssn']"]);
}

#[test]
fn slow_path_filters_and_array_removals() {
    let yaml = one_set(
        "      - { path: \"$.items[?@.secret == true]\", action: remove }\n      - { path: \"$.list[1:3]\", action: remove }\n      - { path: \"$.list[-1]\", action: remove }\n      - { path: \"$.p[?@.age > 89].ssn\", action: redact }\n",
        "",
    );
    let r = rules(&yaml);
    let set = r.set("s").unwrap();
    let (v, rep) = mask_with(
        set,
        json!({
            "items": [{"secret": true, "n": 0}, {"secret": false, "n": 1}, {"secret": true, "n": 2}, {"n": 3}],
            "list": [0, 1, 2, 3, 4, 5],
            "p": [{"age": 95, "ssn": "a"}, {"age": 30, "ssn": "b"}]
        }),
    );
    assert_eq!(
        v,
        json!({
            "items": [{"secret": false, "n": 1}, {"n": 3}],
            "list": [0, 3, 4],
            "p": [{"age": 95, "ssn": REDACTED}, {"age": 30, "ssn": "b"}]
        })
    );
    // Report paths are the original locations.
    assert!(rep.paths.contains("$['items'][2]"));
    assert!(rep.paths.contains("$['list'][5]"));
    assert_eq!(rep.count, 6);
}

#[test]
fn special_member_names_in_selectors_and_documents() {
    let yaml = one_set(
        "      - { path: \"$..['a.b']\", action: redact }\n      - { path: \"$[\\\"it's\\\"]\", action: redact }\n      - { path: \"$['~/x']\", action: null }\n      - { path: \"$.ünï.名\", action: remove }\n",
        "",
    );
    let r = rules(&yaml);
    let (v, rep) = mask_with(
        r.set("s").unwrap(),
        json!({"a.b": 1, "a": {"b": 2, "a.b": [3]}, "it's": "x", "~/x": 4, "~1x": 5, "ünï": {"名": 1, "k": 2}}),
    );
    assert_eq!(
        v,
        json!({"a.b": REDACTED, "a": {"b": 2, "a.b": REDACTED}, "it's": REDACTED, "~/x": null, "~1x": 5, "ünï": {"k": 2}})
    );
    let mut paths: Vec<&str> = rep.paths.iter().collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "$['a']['a.b']",
            "$['a.b']",
            r"$['it\'s']",
            "$['~/x']",
            "$['ünï']['名']"
        ]
    );
}

#[test]
fn key_order_and_duplicate_members() {
    let r = rules(PATIENT_YAML);
    let set = r.set("patient").unwrap();
    let (out, _) = set
        .mask_document(br#"{"z":1,"ssn":"a","b":2,"ssn":"b","a":3}"#, 8)
        .unwrap();
    assert_eq!(out, br#"{"z":1,"ssn":"[REDACTED]","b":2,"a":3}"#);
    let (out, _) = set
        .mask_document(br#"{"z":1,"name":"n","b":2,"a":3}"#, 8)
        .unwrap();
    assert_eq!(out, br#"{"z":1,"b":2,"a":3}"#, "remove keeps member order");
}

#[test]
fn strict_parsing() {
    let r = rules(PATIENT_YAML);
    let set = r.set("patient").unwrap();
    let m = |b: &[u8], d: usize| set.mask_document(b, d);
    assert_eq!(m(b"\xEF\xBB\xBF{}", 8), Err(MaskError::Bom));
    assert_eq!(m(b"{\"a\":\"\xff\"}", 8), Err(MaskError::InvalidUtf8));
    assert!(matches!(m(b"{} x", 8), Err(MaskError::InvalidJson(_))));
    assert!(matches!(m(b"{}{}", 8), Err(MaskError::InvalidJson(_))));
    assert!(matches!(m(b"", 8), Err(MaskError::InvalidJson(_))));
    assert!(matches!(m(b"[1e400]", 8), Err(MaskError::InvalidJson(_))));
    assert!(
        matches!(m(br#"{"ssn":"123-45-6789",}"#, 8), Err(MaskError::InvalidJson(e)) if !e.contains("123"))
    );
    assert!(m(b" {} \n", 8).is_ok());
    assert_eq!(m(b"[[[1]]]", 3).unwrap().0, b"[[[1]]]");
    assert_eq!(m(b"[[[1]]]", 2), Err(MaskError::TooDeep));
    assert_eq!(m(b"1", 0).unwrap().0, b"1");
    // Depth is enforced even inside a subtree replaced by a rule.
    assert_eq!(m(br#"{"ssn":[[[]]]}"#, 3), Err(MaskError::TooDeep));
    let deep = "[".repeat(200) + &"]".repeat(200);
    assert_eq!(m(deep.as_bytes(), 1000), Err(MaskError::TooDeep));
    assert_eq!(
        set.mask_line(b"  \t\r", 8).unwrap(),
        (Vec::new(), MaskReport::default())
    );
    assert_eq!(set.mask_line(b"", 8).unwrap().0, b"");
    assert!(set.mask_line(b"{\"a\":1} {", 8).is_err());
}

#[test]
fn root_selection() {
    let r = rules(&one_set("      - { path: \"$\", action: remove }\n", ""));
    let (out, rep) = r.set("s").unwrap().mask_document(b"{\"a\":1}", 8).unwrap();
    assert_eq!(out, b"null");
    assert_eq!(rep.paths, vec!["$"]);
}

#[test]
fn detectors_skip_our_pseudonyms_and_redactions() {
    let r = rules(PATIENT_YAML);
    let set = r.set("patient").unwrap();
    let p = Pseudonymizer::new(KEY.as_bytes());
    // A well-formed token whose base64 part contains an SSN-shaped run: the
    // ssn detector would fire on it if tokens were scanned.
    let crafted = format!("pse:{}:AAAA-123456789-AAAAAAA", p.keyid());
    assert!(p.is_token(&crafted));
    // One character more or less is not a token.
    assert!(!p.is_token(&format!("{crafted}A")));
    assert!(!p.is_token(&crafted[..crafted.len() - 1]));
    let (v, rep) = mask_with(set, json!({"free": crafted.clone(), "r": REDACTED}));
    assert_eq!(v, json!({"free": crafted, "r": REDACTED}));
    assert_eq!(rep.count, 0);
    // The same text without the token frame is scrubbed.
    let (v, _) = mask_with(set, json!({"free": "AAAA-123456789-AAAAAAA"}));
    assert_eq!(v, json!({"free": "AAAA-[REDACTED]-AAAAAAA"}));
    // A token under a different key is ordinary text (here: nothing to find).
    let other = Pseudonymizer::new(b"other").token("x");
    assert!(!p.is_token(&other));
}

#[test]
fn mask_value_in_place() {
    let r = rules(PATIENT_YAML);
    let mut v = json!({"x": [{"ssn": "1"}], "note": "mail me: a@b.org"});
    let mut rep = MaskReport::default();
    r.set("patient").unwrap().mask_value(&mut v, &mut rep);
    assert_eq!(
        v,
        json!({"x": [{"ssn": REDACTED}], "note": "mail me: [REDACTED]"})
    );
    assert_eq!(rep.paths, vec!["$['x'][0]['ssn']", "$['note']"]);
}

// ---------- property tests ----------

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Member names no rule of the patient set names; include the awkward ones.
    fn filler_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("k".to_string()),
            Just("a.b".to_string()),
            Just("it's".to_string()),
            Just("~/x".to_string()),
            Just("~1".to_string()),
            Just("ünï名".to_string()),
            Just("$..ssn".to_string()),
            Just("na me".to_string()),
            "[a-z]{1,6}".prop_filter("not a rule key", |k| !matches!(
                k.as_str(),
                "ssn" | "email" | "phone" | "dob" | "zip" | "age" | "name" | "mrn" | "address"
            )),
        ]
    }

    /// Values without digits or '@' so the detectors cannot fire on filler.
    fn filler_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-zA-Z .'~/ü]{0,12}".prop_map(Value::from),
        ]
    }

    const PLANT_KEYS: [&str; 6] = [
        "ssn",
        "email",
        "mrn",
        "MEDICAL_RECORD_NUMBER",
        "name",
        "phone",
    ];

    fn tree() -> impl Strategy<Value = Value> {
        filler_leaf().prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                (
                    prop::collection::vec((filler_key(), inner.clone()), 0..5),
                    // Planted PHI members: (key index, distinctive value, wrap in object?)
                    prop::collection::vec((0..PLANT_KEYS.len(), "[A-Z]{10}", any::<bool>()), 0..3),
                )
                    .prop_map(|(members, plants)| {
                        let mut m = serde_json::Map::new();
                        for (k, v) in members {
                            m.insert(k, v);
                        }
                        for (ki, tag, wrap) in plants {
                            let val = Value::String(format!("PLANT-{tag}"));
                            let val = if wrap { json!({"inner": [val]}) } else { val };
                            m.insert(PLANT_KEYS[ki].to_string(), val);
                        }
                        Value::Object(m)
                    }),
            ]
        })
    }

    fn plants(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.starts_with("PLANT-") => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| plants(x, out)),
            Value::Object(m) => m.values().for_each(|x| plants(x, out)),
            _ => {}
        }
    }

    /// Drops every member a rule may touch; what is left must be unchanged.
    fn strip(v: &Value) -> Value {
        match v {
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !PLANT_KEYS.contains(&k.as_str()))
                    .map(|(k, x)| (k.clone(), strip(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Sets whose fast rules make DFAs with wildcards, descendants and indices.
    const SHAPES_YAML: &str = r#"owner: dana@clinic.example
pseudonym_key_env: PHIGATE_PSEUDONYM_KEY
sets:
  patient:
    fields:
      - { path: "$..ssn",          action: redact }
      - { path: "$..email",        action: pseudonymize }
      - { path: "$..phone",        action: { mask: { keep_last: 4 } } }
      - { path: "$..name",         action: remove }
      - { key: "(?i)^(mrn|medical_record_number)$", action: redact }
    detect: [ssn, email, phone, credit_card]
  wild:
    fields:
      - { path: "$.*.*",      action: { mask: { keep_first: 1 } } }
      - { path: "$..[1]",     action: remove }
      - { path: "$..inner",   action: null }
      - { path: "$..*.ssn",   action: redact }
      - { path: "$..name",    action: remove }
      - { path: "$..email",   action: redact }
      - { path: "$..phone",   action: redact }
      - { key: "(?i)^(mrn|medical_record_number)$", action: redact }
  idx:
    fields:
      - { path: "$[0]",             action: { replace: 0 } }
      - { path: "$.*[0]",           action: remove }
      - { path: "$..[2].inner[0]",  action: redact }
      - { path: "$['a.b'].k",       action: year }
      - { path: "$..['it\\'s',0]", action: zip3 }
      - { path: "$..ssn",           action: redact }
      - { path: "$..email",         action: redact }
      - { path: "$..phone",         action: redact }
      - { path: "$..name",          action: redact }
      - { path: "$..mrn",           action: redact }
      - { path: "$..MEDICAL_RECORD_NUMBER", action: redact }
  keys:
    fields:
      - { key: "^(ssn|email|phone|name|mrn)$", action: remove }
      - { key: "(?i)^medical", action: redact }
      - { path: "$..k",  action: age90 }
      - { path: "$..*.inner", action: null }
"#;

    fn patient() -> Arc<FieldSet> {
        rules(PATIENT_YAML).set("patient").unwrap().clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn planted_phi_never_leaks_and_rest_is_untouched(doc in tree()) {
            let set = patient();
            let input = serde_json::to_vec(&doc).unwrap();
            let (out, rep) = set.mask_document(&input, 64).unwrap();
            let out_text = String::from_utf8(out.clone()).unwrap();
            let mut planted = Vec::new();
            plants(&doc, &mut planted);
            for p in &planted {
                prop_assert!(!out_text.contains(p.as_str()), "{} leaked in {}", p, out_text);
            }
            let masked: Value = serde_json::from_slice(&out).unwrap();
            // Unaffected subtrees are byte-identical (incl. member order).
            prop_assert_eq!(
                serde_json::to_string(&strip(&masked)).unwrap(),
                serde_json::to_string(&strip(&doc)).unwrap()
            );
            // Every reported path is a valid normalized path of the input.
            for p in rep.paths.iter() {
                let steps = parse_normalized(p).unwrap();
                prop_assert!(doc.pointer(&to_pointer(&steps)).is_some(), "{}", p);
            }
            prop_assert_eq!(rep.count.min(MaskReport::MAX_PATHS), rep.paths.len());
            prop_assert_eq!(rep.truncated, rep.count > MaskReport::MAX_PATHS);
            // Idempotent.
            let (again, _) = set.mask_document(&out, 64).unwrap();
            prop_assert_eq!(again, out);
        }

        #[test]
        fn streaming_agrees_on_compact_and_pretty_input(
            doc in tree(),
            which in 0..4usize,
            pretty in any::<bool>(),
        ) {
            // mask_document compares the streaming pass with the tree walk (cfg(test));
            // here the pass must also really be taken, whitespace and all.
            let r = rules(SHAPES_YAML);
            let set = r.set(["patient", "wild", "idx", "keys"][which]).unwrap();
            let input = if pretty {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                serde_json::to_string(&doc).unwrap()
            };
            let mut rep = MaskReport::default();
            prop_assert!(super::super::stream::mask(set, &input, input.is_ascii(), 64, &mut rep).is_some());
            let (out, rep2) = set.mask_document(input.as_bytes(), 64).unwrap();
            prop_assert_eq!(&rep, &rep2);
            let compact = set.mask_document(serde_json::to_string(&doc).unwrap().as_bytes(), 64);
            prop_assert_eq!(compact.unwrap().0, out.clone());
            // A body gathered from frames (the gateway's way in): known to be ASCII when it
            // is, so values skip their own check; same output and report.
            let gathered = crate::masking::gather::Gathered::new(bytes::Bytes::from(input.clone()));
            prop_assert_eq!(gathered.ascii_text().is_some(), input.is_ascii());
            let (g_out, g_rep) = set.mask_gathered(&gathered, 64).unwrap();
            prop_assert_eq!(g_out, out);
            prop_assert_eq!(g_rep, rep2);
        }

        #[test]
        fn direct_string_writes_equal_apply_str(
            s in prop_oneof![
                "[0-9]{4}([-/][0-9]{1,2}([-/][0-9]{1,2}([T ][0-9:]{0,8})?)?)?",
                "[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}",
                "[0-9*-]{3,10}",
                "[a-z*#]{0,12}",
                "[ -~]{0,16}",
                "[a-zé名*]{0,8}",
                Just(REDACTED.to_string()),
                Just("******".to_string()),
                Just("u******".to_string()),
                Just("******6789".to_string()),
                Just("036**".to_string()),
                Just("03612".to_string()),
            ],
            which in 0..9usize,
            tail in 0..12usize,
        ) {
            use crate::masking::actions::{DirectMask, StrResult};
            let actions = [
                Action::Mask { keep_first: 0, keep_last: 4, ch: '*' },
                Action::Mask { keep_first: 1, keep_last: 0, ch: '*' },
                Action::Mask { keep_first: 0, keep_last: 0, ch: '#' },
                Action::Mask { keep_first: 3, keep_last: 5, ch: 'x' },
                Action::Mask { keep_first: 1, keep_last: 1, ch: 'é' },
                Action::Mask { keep_first: 1, keep_last: 1, ch: '"' },
                Action::Year,
                Action::Zip3,
                Action::Redact,
            ];
            // The precondition of the direct path: `s` itself needs no escaping.
            prop_assume!(!s.contains(['"', '\\']) && !s.chars().any(char::is_control));
            let a = &actions[which];
            let mut out = b"prefix".to_vec();
            let direct = a.write_str_direct(&s, &mut out);
            let mut buf = String::new();
            let general = a.apply_str(&s, None, &mut buf);
            match direct {
                None => prop_assert_eq!(&out, b"prefix"),
                Some(false) => {
                    prop_assert_eq!(&general, &StrResult::Keep);
                    prop_assert_eq!(&out, b"prefix");
                }
                Some(true) => {
                    let StrResult::Str(t) = general else {
                        return Err(TestCaseError::fail(format!("{general:?} for {s:?}")));
                    };
                    let mut want = b"prefix".to_vec();
                    serde_json::to_writer(&mut want, t.as_ref()).unwrap();
                    prop_assert_eq!(String::from_utf8(out.clone()).unwrap(), String::from_utf8(want).unwrap());
                }
            }
            // Where it can, the direct path is taken (ASCII fills, year, zip3).
            if which != 4 && which != 5 && which != 8 && s.is_ascii() {
                prop_assert!(direct.is_some(), "{:?} not direct for {:?}", a, s);
            }
            // The streaming masker's `mask` writer, with the string followed by `tail` bytes of
            // the document (its 8-byte moves read past the string, never past the text; too
            // near the end it writes part by part), writes the same bytes.
            let dm = DirectMask::of(a);
            prop_assert_eq!(dm.is_some(), which < 4);
            if let (Some(dm), true) = (dm, s.is_ascii()) {
                let mut text = b"\"".to_vec();
                text.extend_from_slice(s.as_bytes());
                text.push(b'"');
                text.extend(std::iter::repeat_n(b'x', tail));
                let mut out2 = b"prefix".to_vec();
                let w = dm.write(&text, 1, 1 + s.len(), &mut out2);
                prop_assert_eq!(Some(w), direct);
                prop_assert_eq!(String::from_utf8(out2).unwrap(), String::from_utf8(out.clone()).unwrap());
            }
        }

        #[test]
        fn detector_strings_are_idempotent(s in "[a-z0-9@. ()+-]{0,40}") {
            let set = patient();
            let doc = json!({"free": s});
            let (out, _) = set.mask_document(doc.to_string().as_bytes(), 8).unwrap();
            let (again, _) = set.mask_document(&out, 8).unwrap();
            prop_assert_eq!(again, out);
        }

        #[test]
        fn fast_path_agrees_with_jsonpath_rust(doc in tree(), which in 0..6usize) {
            // The fast matcher and the reference engine select the same node set.
            let p = ["$..ssn", "$.*[0]", "$..[-1]", "$..*", "$['a.b'].k", "$..['it\\'s',0]"][which];
            let fast = compile_path(p).unwrap();
            prop_assert!(matches!(fast, path::CompiledPath::Fast(_)));
            let q = jsonpath_rust::parser::parse_json_path(p).unwrap();
            let mut a = select_paths(&fast, &doc);
            let mut b = select_paths(&path::CompiledPath::Slow(q), &doc);
            a.sort();
            b.sort();
            b.dedup();
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn the_ascii_fast_check_agrees_with_from_utf8() {
    // A non-ASCII byte (valid sequence, lone continuation byte, cut sequence) at every
    // position of bodies around the 64-byte step, and plain ASCII of every length.
    let inserts: [&[u8]; 4] = ["é".as_bytes(), b"\x80", b"\xC3", "🙂".as_bytes()];
    for len in 0..200 {
        let ascii = vec![b'a'; len];
        assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii).ok());
        for at in 0..=len {
            for ins in inserts {
                let mut b = ascii.clone();
                b.splice(at..at, ins.iter().copied());
                assert_eq!(utf8(&b), std::str::from_utf8(&b).ok(), "{b:?}");
            }
        }
    }
}
