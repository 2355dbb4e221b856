//! Shared by the criterion benches and the load-bench driver (`examples/bench_gateway.rs`):
//! synthetic patient lists of the same shape as `shared/bench-peers/gen_fixtures.py`, and the
//! field set that does the same masking as the peers' `lua/mask.lua`.
#![allow(dead_code)]

use serde_json::{json, Value};

/// The peers' masking (lua/mask.lua), expressed with phigate's actions. Same fields touched;
/// where phigate has no identical action the output differs (see benches/RESULTS.md):
///   ssn   "***-**-6789"          -> mask keep_last 4   "******6789"
///   email "a***@example.com"     -> mask keep_first 1  "a******"   (the domain is not kept)
///   phone "***-***-0142"         -> mask keep_last 4   "******0142"
///   name.first/last, street, mrn "***" -> redact "[REDACTED]"
///   dob -> year, zip -> zip3 ("021**"), as the peers.
/// No detectors: the peers' /masked route does not scan the notes either.
pub const BENCH_FIELDS_YAML: &str = r#"owner: dpo@bench.example
sets:
  bench:
    fields:
      - { path: "$..ssn",            action: { mask: { keep_last: 4 } } }
      - { path: "$..email",          action: { mask: { keep_first: 1 } } }
      - { path: "$..phone",          action: { mask: { keep_last: 4 } } }
      - { path: "$..name.first",     action: redact }
      - { path: "$..name.last",      action: redact }
      - { path: "$..dob",            action: year }
      - { path: "$..address.street", action: redact }
      - { path: "$..address.zip",    action: zip3 }
      - { path: "$..mrn",            action: redact }
"#;

/// Body sizes of the peers' fixtures (small, medium, large).
pub const SIZES: &[(&str, usize)] = &[("1KB", 1024), ("64KB", 64 * 1024), ("1MB", 1024 * 1024)];

const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jia", "Kofi",
    "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vera",
];
const LAST: &[&str] = &[
    "Abara", "Becker", "Castillo", "Dubois", "Eriksen", "Fujita", "Garcia", "Haddad", "Ibsen",
    "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Schmidt",
];
const STREETS: &[&str] = &[
    "Maple Ave",
    "Oak St",
    "Pine Rd",
    "Cedar Ln",
    "Elm Blvd",
    "Mill Rd",
];
const CITIES: &[&str] = &["Springfield", "Riverton", "Fairview", "Georgetown", "Salem"];
const PLANS: &[&str] = &[
    "bronze", "silver", "gold", "platinum", "medicaid", "medicare",
];
const ICD10: &[&str] = &[
    "E11.9", "I10", "J45.909", "M54.5", "F41.1", "K21.9", "E78.5", "N39.0", "R51.9", "Z00.00",
];
const NOTES: &[&str] = &[
    "Patient reports improved sleep since last visit.",
    "Follow up in 6 weeks; continue current dosage.",
    "Discussed diet and exercise plan at length.",
    "No known drug allergies. Vitals within normal range.",
    "Referred to cardiology for further evaluation.",
    "Lab results pending; will call with results.",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

fn phone(r: &mut Rng) -> String {
    format!(
        "{:03}-{:03}-{:04}",
        r.range(201, 989),
        r.range(200, 999),
        r.range(0, 9999)
    )
}

fn record(r: &mut Rng, i: u64) -> Value {
    let (first, last) = (r.pick(FIRST), r.pick(LAST));
    let email = format!(
        "{}.{}{}@example.com",
        first.to_lowercase(),
        last.to_lowercase(),
        r.range(1, 99)
    );
    let mut notes = String::new();
    for _ in 0..r.range(1, 3) {
        if !notes.is_empty() {
            notes.push(' ');
        }
        notes.push_str(r.pick(NOTES));
    }
    match r.range(0, 19) {
        0..=4 => notes.push_str(&format!(" Prefers contact by email at {email}.")),
        5..=8 => notes.push_str(&format!(" Call back at {} after 5pm.", phone(r))),
        _ => {}
    }
    let codes: Vec<&str> = (0..r.range(1, 4)).map(|_| r.pick(ICD10)).collect();
    json!({
        "id": 100_000 + i,
        "name": {"first": first, "last": last},
        "ssn": format!("{:03}-{:02}-{:04}", r.range(100, 899), r.range(1, 99), r.range(1, 9999)),
        "email": email,
        "phone": phone(r),
        "dob": format!("{:04}-{:02}-{:02}", r.range(1935, 2015), r.range(1, 12), r.range(1, 28)),
        "address": {
            "street": format!("{} {}", r.range(1, 9999), r.pick(STREETS)),
            "city": r.pick(CITIES),
            "zip": format!("{:05}", r.range(1000, 99950)),
        },
        "mrn": format!("MRN-{:08}", r.range(0, 99_999_999)),
        "diagnosis_codes": codes,
        "notes": notes,
        "visits": r.range(0, 120),
        "plan": r.pick(PLANS),
        "created_at": format!("20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            r.range(15, 24), r.range(1, 12), r.range(1, 28), r.range(0, 23), r.range(0, 59), r.range(0, 59)),
    })
}

/// A compact JSON array of patient records, as close to `target` bytes as whole records allow.
pub fn patient_list(target: usize) -> Vec<u8> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ target as u64);
    let mut out = b"[".to_vec();
    let mut i = 0;
    loop {
        let rec = serde_json::to_vec(&record(&mut r, i)).expect("serializable");
        if i > 0 && out.len() + rec.len() + 2 > target {
            break;
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&rec);
        i += 1;
    }
    out.push(b']');
    out
}
