//! End-to-end masking: what an anonymized caller receives on a masked route, proven over
//! real TLS against a scripted upstream; every case the filter cannot vouch for is a 502.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use phigate::masking::Pseudonymizer;
use serde_json::{json, Value};

use crate::support::{raw_status, rules_dir_with, Harness, Options, Reply, Script, PSEUDONYM_KEY};

const BOB: &str = "bob@clinic.example";
const DANA: &str = "dana@clinic.example";
const ALEX: &str = "alex@clinic.example";
const MIA: &str = "mia@clinic.example";

const R: &str = "[REDACTED]";

/// A realistic patient list; every PHI value in it is listed in `PLANTED`.
fn patient_list() -> Value {
    json!({
        "patients": [
            {
                "id": 1, "mrn": "MRN-771204",
                "name": {"first": "Eleanor", "last": "Whitfield"},
                "dob": "1984-03-09", "age": 42, "ssn": "523-41-7788",
                "email": "eleanor.whitfield@example.com", "phone": "617-555-0142",
                "address": {"street": "12 Elm St", "city": "Cambridge", "state": "MA", "zip": "02139"},
                "diagnosis": "Type 2 diabetes",
                "visits": [{"clinic": "North", "detail": {"medical_record_number": "MRN-771204-B"}}],
                "notes": "Call 617-555-0188 or e.w@example.org; SSN 523-41-7789; card 4111 1111 1111 1111."
            },
            {
                "id": 2, "mrn": "MRN-381907",
                "name": {"first": "Bartholomew", "last": "Quincey"},
                "dob": "1931-11-23", "age": 95, "ssn": "287-65-4320",
                "email": "bart.quincey@example.org", "phone": "(413) 555-0199",
                "address": {"street": "4 Harbor Rd", "city": "Sample", "state": "NH", "zip": "03601"},
                "diagnosis": "Hypertension",
                "insurance": {"member": {"Mrn": "MRN-99182"}},
                "notes": "Daughter's email: kate.quincey@example.net"
            },
            {
                "id": 3, "mrn": "MRN-550231",
                "name": {"first": "Aiko", "last": "Tanakawa"},
                "dob": "1999-07-30", "age": 27, "ssn": "078-05-1121",
                "email": "eleanor.whitfield@example.com", "phone": "+1 206 555 0163",
                "address": {"street": "900 Pine Ave", "city": "Seattle", "state": "WA", "zip": "98101"},
                "diagnosis": "Asthma",
                "notes": "No known allergies."
            }
        ]
    })
}

/// Rule hits: 9 field rules x 3 records, 2 nested MRNs, 2 notes with detector finds.
const PATIENT_LIST_MASKED: usize = 9 * 3 + 2 + 2;

const PLANTED: &[&str] = &[
    "MRN-771204",
    "MRN-381907",
    "MRN-550231",
    "MRN-99182",
    "Eleanor",
    "Whitfield",
    "Bartholomew",
    "Quincey",
    "Aiko",
    "Tanakawa",
    "1984-03-09",
    "1931-11-23",
    "1999-07-30",
    "523-41-7788",
    "287-65-4320",
    "078-05-1121",
    "eleanor.whitfield@example.com",
    "bart.quincey@example.org",
    "617-555-0142",
    "(413) 555-0199",
    "+1 206 555 0163",
    "12 Elm St",
    "4 Harbor Rd",
    "900 Pine Ave",
    "02139",
    "03601",
    "98101",
    "617-555-0188",
    "e.w@example.org",
    "523-41-7789",
    "4111 1111 1111 1111",
    "kate.quincey@example.net",
];

/// A small document with PHI, used where the body must be refused.
const PHI_SSN: &str = "523-41-7788";
const PHI_EMAIL: &str = "leak.me@example.com";

fn small_doc() -> Value {
    json!({"patients": [{"id": 1, "ssn": PHI_SSN, "email": PHI_EMAIL, "name": {"first": "Eleanor"}}]})
}

fn contains(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && hay.windows(n.len()).any(|w| w == n)
}

fn assert_absent(body: &[u8], planted: &[&str], what: &str) {
    for p in planted {
        assert!(
            !contains(body, p),
            "{what}: raw {p:?} leaked: {}",
            String::from_utf8_lossy(body)
        );
    }
}

fn assert_refused(r: &Reply, planted: &[&str], what: &str) {
    assert_eq!(
        r.status,
        502,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(r.json()["status"], 502, "{what}");
    assert_absent(&r.body, planted, what);
}

fn pseudonym(v: &str) -> String {
    Pseudonymizer::new(PSEUDONYM_KEY.as_bytes()).token(v)
}

fn unlabelled(body: impl Into<Bytes>) -> Script {
    Script {
        status: 200,
        headers: vec![],
        chunks: vec![body.into()],
        fail_mid_body: false,
    }
}

/// Splits `data` into chunks of `n` bytes (lines and tokens are cut mid-way).
fn chunked(mut s: Script, data: &[u8], n: usize) -> Script {
    s.chunks = data.chunks(n).map(Bytes::copy_from_slice).collect();
    s
}

fn request(
    h: &Harness,
    method: Method,
    user: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{}", h.base(), path))
        .header("authorization", format!("Bearer {}", h.token(user)));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// A response read frame by frame, keeping what arrived before any body error.
struct Streamed {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    error: Option<String>,
}

async fn fetch_streamed(h: &Harness, h2: bool, req: Request<Full<Bytes>>) -> Streamed {
    let client = if h2 { &h.h2 } else { &h.h1 };
    let resp = client.request(req).await.expect("response head arrives");
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    let mut error = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Err(_) => {
                error = Some("timed out reading the body".to_string());
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Streamed {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: out,
        error,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
    out
}

/// Checks every action of the `patient` set on the masked `patient_list()`.
fn check_masked_patient_list(v: &Value) {
    let p = v["patients"].as_array().expect("patients array kept");
    assert_eq!(p.len(), 3);
    for (i, rec) in p.iter().enumerate() {
        assert_eq!(rec["id"], json!(i + 1), "non-PHI id kept");
        assert_eq!(rec["ssn"], R, "ssn redacted");
        assert_eq!(rec["mrn"], R, "mrn redacted (key rule)");
        assert_eq!(rec["address"]["street"], R, "street redacted");
        assert!(rec.get("name").is_none(), "name removed: {rec}");
        let email = rec["email"].as_str().unwrap();
        assert!(email.starts_with("pse:"), "pseudonymized: {email}");
    }
    // Equal inputs give equal pseudonyms, different inputs different ones.
    assert_eq!(p[0]["email"], p[2]["email"]);
    assert_ne!(p[0]["email"], p[1]["email"]);
    assert_eq!(p[0]["email"], pseudonym("eleanor.whitfield@example.com"));
    assert_eq!(p[1]["email"], pseudonym("bart.quincey@example.org"));
    // mask keep_last 4
    assert_eq!(p[0]["phone"], "******0142");
    assert_eq!(p[1]["phone"], "******0199");
    assert_eq!(p[2]["phone"], "******0163");
    // year
    assert_eq!(p[0]["dob"], "1984");
    assert_eq!(p[1]["dob"], "1931");
    assert_eq!(p[2]["dob"], "1999");
    // zip3, with a restricted prefix
    assert_eq!(p[0]["address"]["zip"], "021**");
    assert_eq!(p[1]["address"]["zip"], "000**");
    assert_eq!(p[2]["address"]["zip"], "981**");
    assert_eq!(p[0]["address"]["city"], "Cambridge", "non-PHI kept");
    // age90
    assert_eq!(p[0]["age"], 42);
    assert_eq!(p[1]["age"], "90+");
    assert_eq!(p[2]["age"], 27);
    // key rule at any depth, any case
    assert_eq!(p[0]["visits"][0]["detail"]["medical_record_number"], R);
    assert_eq!(p[0]["visits"][0]["clinic"], "North");
    assert_eq!(p[1]["insurance"]["member"]["Mrn"], R);
    // detectors inside free text
    assert_eq!(
        p[0]["notes"],
        "Call [REDACTED] or [REDACTED]; SSN [REDACTED]; card [REDACTED]."
    );
    assert_eq!(p[1]["notes"], "Daughter's email: [REDACTED]");
    assert_eq!(p[2]["notes"], "No known allergies.");
    assert_eq!(p[0]["diagnosis"], "Type 2 diabetes");
}

// ---------------------------------------------------------------------------------------
// 1. Who sees what
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn full_and_dpo_callers_get_raw_bytes_anonymized_caller_gets_masked_body() {
    let h = Harness::start().await;
    let raw = patient_list().to_string();
    h.upstream.script(Script::json(&patient_list()));

    for user in [DANA, ALEX] {
        for h2 in [false, true] {
            let r = h.call(h2, Method::GET, Some(user), "/api/patients").await;
            assert_eq!(r.status, 200, "{user}");
            assert_eq!(&r.body[..], raw.as_bytes(), "{user} h2={h2}: byte for byte");
            assert!(r.header("x-phigate-masked").is_none(), "{user}");
        }
    }

    let mut first_email = None;
    for h2 in [false, true] {
        let r = h.call(h2, Method::GET, Some(BOB), "/api/patients").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if h2 {
            assert_eq!(r.version, http::Version::HTTP_2);
        }
        assert_absent(&r.body, PLANTED, "bob's masked list");
        let v = r.json();
        check_masked_patient_list(&v);
        assert_eq!(
            r.header("x-phigate-masked"),
            Some(PATIENT_LIST_MASKED.to_string().as_str()),
            "x-phigate-masked counts the masked values"
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        // Stable across requests.
        let e = v["patients"][0]["email"].clone();
        if let Some(prev) = &first_email {
            assert_eq!(prev, &e, "pseudonyms are stable across requests");
        }
        first_email = Some(e);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Fail closed
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_json_bodies_are_refused() {
    let h = Harness::start().await;
    let deep = format!("{}\"{PHI_SSN}\"{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid UTF-8",
            [
                format!("{{\"ssn\":\"{PHI_SSN}\",\"email\":\"{PHI_EMAIL}\",\"x\":\"").as_bytes(),
                b"\xff\xfe",
                b"\"}",
            ]
            .concat(),
        ),
        (
            "UTF-8 BOM",
            [
                b"\xEF\xBB\xBF".as_slice(),
                small_doc().to_string().as_bytes(),
            ]
            .concat(),
        ),
        (
            "trailing garbage",
            format!("{} x", small_doc()).into_bytes(),
        ),
        (
            "two values",
            format!("{}{}", small_doc(), small_doc()).into_bytes(),
        ),
        (
            "two values, newline separated",
            format!("{}\n{}", small_doc(), small_doc()).into_bytes(),
        ),
        ("200 nested arrays", deep.into_bytes()),
        (
            "number out of range",
            format!("{{\"ssn\":\"{PHI_SSN}\",\"email\":\"{PHI_EMAIL}\",\"n\":1e400}}").into_bytes(),
        ),
    ];
    for (what, body) in cases {
        h.upstream.script(Script::body("application/json", body));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, &[PHI_SSN, PHI_EMAIL], what);
    }
    // The same harness still masks a valid body.
    h.upstream.script(Script::json(&small_doc()));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["patients"][0]["ssn"], R);
}

/// Bodies are checked for ASCII frame by frame as they arrive; a character cut by a frame
/// edge must neither be refused when whole nor pass when broken.
#[tokio::test]
async fn non_ascii_bodies_cut_into_frames_anywhere_are_masked_or_refused() {
    let h = Harness::start().await;
    let doc = json!({"patients": [{"id": 1, "ssn": PHI_SSN, "email": PHI_EMAIL,
        "remark": "Zoë Ünal 日本 😀"}]});
    let text = doc.to_string();
    for n in [1, 2, 3, 5, 64, text.len()] {
        h.upstream.script(chunked(
            Script::body("application/json", Bytes::new()),
            text.as_bytes(),
            n,
        ));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_eq!(r.status, 200, "frames of {n}");
        let v = r.json();
        assert_eq!(v["patients"][0]["ssn"], R, "frames of {n}");
        assert_eq!(
            v["patients"][0]["remark"], "Zoë Ünal 日本 😀",
            "frames of {n}"
        );
        assert_absent(&r.body, &[PHI_SSN, PHI_EMAIL], "non-ASCII body");
    }
    // A broken sequence in a later frame, after ASCII ones.
    let mut broken = text.clone().into_bytes();
    let at = text.find("日").expect("the CJK text");
    broken[at + 1] = b'x';
    for n in [1, 7, 64] {
        h.upstream.script(chunked(
            Script::body("application/json", Bytes::new()),
            &broken,
            n,
        ));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, &[PHI_SSN, PHI_EMAIL], "broken UTF-8 in a later frame");
    }
}

#[tokio::test]
async fn nesting_deeper_than_the_configured_limit_is_refused() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.max_json_depth = 8)),
        ..Options::default()
    })
    .await;
    let nest = |n: usize| {
        format!(
            "{}{{\"ssn\":\"{PHI_SSN}\"}}{}",
            "{\"a\":".repeat(n),
            "}".repeat(n)
        )
    };
    // 6 wrappers + the record = 7 containers: within the limit.
    h.upstream.script(Script::body("application/json", nest(6)));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_absent(&r.body, &[PHI_SSN], "within depth");
    // 12 wrappers: deeper than 8.
    h.upstream
        .script(Script::body("application/json", nest(12)));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&r, &[PHI_SSN], "deeper than max_json_depth");
}

#[tokio::test]
async fn json_family_text_plain_and_unlabelled_bodies_are_masked() {
    let h = Harness::start().await;
    let raw = small_doc().to_string();
    for (what, script) in [
        (
            "application/fhir+json",
            Script::body("application/fhir+json", raw.clone()),
        ),
        (
            "application/json; charset=utf-8",
            Script::body("application/json; charset=utf-8", raw.clone()),
        ),
        ("text/plain", Script::body("text/plain", raw.clone())),
        ("no content-type", unlabelled(raw.clone())),
    ] {
        h.upstream.script(script);
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_absent(&r.body, &[PHI_SSN, PHI_EMAIL, "Eleanor"], what);
        let v = r.json();
        assert_eq!(v["patients"][0]["ssn"], R, "{what}");
        assert_eq!(v["patients"][0]["email"], pseudonym(PHI_EMAIL), "{what}");
        assert!(v["patients"][0].get("name").is_none(), "{what}");
        assert_eq!(r.header("x-phigate-masked"), Some("3"), "{what}");
    }
}

#[tokio::test]
async fn other_content_types_are_refused() {
    let h = Harness::start().await;
    let raw = small_doc().to_string();
    for ct in [
        "text/html",
        "image/png",
        "text/event-stream",
        "application/octet-stream",
        "application/xml",
    ] {
        h.upstream.script(Script::body(ct, raw.clone()));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, &[PHI_SSN, PHI_EMAIL], ct);
    }
    // Not refused for callers who are not masked.
    h.upstream.script(Script::body("text/html", raw.clone()));
    let r = h.get_as(Some(DANA), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], raw.as_bytes());
}

/// A gateway on the example rules with one more option on the masked patient-list route.
async fn with_patient_list_option(option: &str) -> (Harness, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let routes =
        std::fs::read_to_string(crate::support::example_rules().join("routes.yaml")).unwrap();
    let anchor =
        "    fields: patient                    # anonymized callers get masked responses\n";
    assert!(routes.contains(anchor), "routes.yaml changed shape");
    let routes = routes.replacen(anchor, &format!("{anchor}    {option}\n"), 1);
    let rules = rules_dir_with(tmp.path(), &[("routes.yaml", &routes)]);
    let h = Harness::start_with(Options {
        rules,
        ..Options::default()
    })
    .await;
    (h, tmp)
}

#[tokio::test]
async fn passthrough_types_listed_on_the_route_pass_unchanged() {
    let (h, _tmp) = with_patient_list_option("passthrough_types: [image/png]").await;
    let png: Vec<u8> = [
        b"\x89PNG\r\n\x1a\n".as_slice(),
        b"\x00\x00\x00\x0dIHDR\xff\x00\x10",
    ]
    .concat();
    h.upstream.script(Script::body("image/png", png.clone()));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], &png[..], "image/png passes unchanged");
    // A second Content-Type cannot smuggle a JSON body through as a passthrough type.
    h.upstream.script(
        Script::body("image/png", small_doc().to_string())
            .header("content-type", "application/json"),
    );
    let two = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&two, &[PHI_SSN, PHI_EMAIL], "two content types");
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    // Other types are still refused on that route, and JSON is still masked.
    h.upstream
        .script(Script::body("image/gif", small_doc().to_string()));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&r, &[PHI_SSN, PHI_EMAIL], "image/gif not listed");
    h.upstream.script(Script::json(&small_doc()));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["patients"][0]["ssn"], R);
}

fn ndjson_stream() -> Vec<u8> {
    let lines = [
        r#"{"id":1,"name":{"first":"Eleanor"},"ssn":"523-41-7788","email":"eleanor.whitfield@example.com","notes":"cb 617-555-0188"}"#,
        r#"{"id":2,"phone":"(413) 555-0199","mrn":"MRN-381907","address":{"zip":"03601","street":"4 Harbor Rd"}}"#,
        r#"{"id":3,"dob":"1999-07-30","age":95,"email":"eleanor.whitfield@example.com"}"#,
        r#"{"id":4,"ssn":"078-05-1121"}"#,
    ];
    // A CRLF line, an empty line, and no newline after the last line.
    format!("{}\n{}\r\n\n{}\n{}", lines[0], lines[1], lines[2], lines[3]).into_bytes()
}

const NDJSON_PLANTED: &[&str] = &[
    "Eleanor",
    "523-41-7788",
    "eleanor.whitfield@example.com",
    "617-555-0188",
    "(413) 555-0199",
    "MRN-381907",
    "03601",
    "4 Harbor Rd",
    "1999-07-30",
    "078-05-1121",
];

fn check_masked_ndjson(body: &[u8], what: &str) {
    assert_absent(body, NDJSON_PLANTED, what);
    let text = std::str::from_utf8(body).unwrap();
    let lines: Vec<Value> = text
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 4, "{what}: {text}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], json!(i + 1), "{what}: order kept");
    }
    assert!(lines[0].get("name").is_none());
    assert_eq!(lines[0]["ssn"], R);
    assert_eq!(
        lines[0]["email"],
        pseudonym("eleanor.whitfield@example.com")
    );
    assert_eq!(lines[0]["notes"], "cb [REDACTED]");
    assert_eq!(lines[1]["phone"], "******0199");
    assert_eq!(lines[1]["mrn"], R);
    assert_eq!(lines[1]["address"]["zip"], "000**");
    assert_eq!(lines[1]["address"]["street"], R);
    assert_eq!(lines[2]["dob"], "1999");
    assert_eq!(lines[2]["age"], "90+");
    assert_eq!(lines[2]["email"], lines[0]["email"]);
    assert_eq!(lines[3]["ssn"], R);
}

#[tokio::test]
async fn ndjson_is_masked_line_by_line_across_chunk_boundaries() {
    let h = Harness::start().await;
    let data = ndjson_stream();
    for ct in ["application/x-ndjson", "application/jsonl"] {
        for n in [7, 50, data.len()] {
            h.upstream
                .script(chunked(Script::body(ct, Bytes::new()), &data, n));
            let s = fetch_streamed(
                &h,
                false,
                request(&h, Method::GET, BOB, "/api/patients", &[]),
            )
            .await;
            let what = format!("{ct} in {n}-byte chunks");
            assert_eq!(s.status, 200, "{what}");
            assert!(s.error.is_none(), "{what}: {:?}", s.error);
            assert_eq!(
                s.headers.get("x-phigate-masked").unwrap(),
                "stream",
                "{what}"
            );
            check_masked_ndjson(&s.body, &what);
        }
    }
    // gzip-compressed NDJSON is decoded whole and masked per line.
    h.upstream.script(
        Script::body("application/x-ndjson", gzip(&data)).header("content-encoding", "gzip"),
    );
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    check_masked_ndjson(&r.body, "gzip ndjson");
}

#[tokio::test]
async fn a_bad_ndjson_line_ends_the_stream_without_leaking_it() {
    let h = Harness::start().await;
    let good = r#"{"id":1,"ssn":"523-41-7788","email":"first.line@example.com"}"#;
    let bad = r#"{"id":2,"ssn":"219-44-1234","email":"leak.two@example.com","#;
    let after = r#"{"id":3,"ssn":"330-55-1234","marker":"after-bad-line"}"#;
    let planted = [
        "523-41-7788",
        "first.line@example.com",
        "219-44-1234",
        "leak.two@example.com",
        "330-55-1234",
        "after-bad-line",
    ];
    for ct in ["application/x-ndjson", "application/jsonl"] {
        let good_line = format!("{good}\n");
        let rest = format!("{bad}\n{after}\n");
        let mut s = Script::body(ct, Bytes::from(good_line));
        // The bad line and the one after arrive cut into pieces.
        s.chunks
            .extend(rest.as_bytes().chunks(9).map(Bytes::copy_from_slice));
        h.upstream.script(s);
        let got = fetch_streamed(
            &h,
            false,
            request(&h, Method::GET, BOB, "/api/patients", &[]),
        )
        .await;
        assert_absent(&got.body, &planted, ct);
        let text = String::from_utf8_lossy(&got.body).into_owned();
        // Whatever arrived is masked lines of the good part only.
        for l in text.split('\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{ct}: partial line sent ({e}): {l}"));
            assert_eq!(v["id"], 1, "{ct}: only lines before the bad one: {text}");
        }
        assert!(
            got.status == 502 || got.error.is_some(),
            "{ct}: the stream must end broken, not complete: status {} body {text}",
            got.status
        );
    }
}

#[tokio::test]
async fn masked_routes_ask_for_identity_and_decode_what_comes_anyway() {
    let h = Harness::start().await;
    let raw = patient_list().to_string();

    // The client asks for compression; the upstream is asked for identity.
    h.upstream.script(Script::json(&patient_list()));
    let r = h
        .send(
            false,
            request(
                &h,
                Method::GET,
                BOB,
                "/api/patients",
                &[("accept-encoding", "br, deflate")],
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = h
        .upstream
        .by_request_id(&r.request_id())
        .expect("forwarded");
    assert_eq!(seen.header("accept-encoding"), Some("identity"));

    for (coding, data) in [
        ("gzip", gzip(raw.as_bytes())),
        ("x-gzip", gzip(raw.as_bytes())),
        ("deflate", zlib(raw.as_bytes())),
        ("br", brotli(raw.as_bytes())),
    ] {
        h.upstream
            .script(Script::body("application/json", data).header("content-encoding", coding));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_eq!(
            r.status,
            200,
            "{coding}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("content-encoding").is_none(), "{coding}");
        assert_absent(&r.body, PLANTED, coding);
        check_masked_patient_list(&r.json());
    }

    for (what, coding, data) in [
        ("zstd", "zstd", raw.clone().into_bytes()),
        (
            "stacked gzip, br",
            "gzip, br",
            brotli(&gzip(raw.as_bytes())),
        ),
        ("corrupt gzip", "gzip", raw.clone().into_bytes()),
    ] {
        h.upstream
            .script(Script::body("application/json", data).header("content-encoding", coding));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, PLANTED, what);
    }
}

/// Valid JSON followed by `pad` bytes of whitespace: masks fine unless the limit applies.
fn padded_json(pad: usize) -> Vec<u8> {
    let mut v = small_doc().to_string().into_bytes();
    v.resize(v.len() + pad, b' ');
    v
}

#[tokio::test]
async fn decompression_bomb_is_refused() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.max_masked_body = 1 << 20)),
        ..Options::default()
    })
    .await;
    // Under the limit once decoded (and above the blocking threshold): masked.
    h.upstream.script(
        Script::body("application/json", gzip(&padded_json(600 << 10)))
            .header("content-encoding", "gzip"),
    );
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["patients"][0]["ssn"], R);
    // A few KB that decode to 8 MiB: refused.
    let bomb = gzip(&padded_json(8 << 20));
    assert!(bomb.len() < 64 << 10, "the bomb is small: {}", bomb.len());
    for (coding, data) in [("gzip", bomb), ("br", brotli(&padded_json(8 << 20)))] {
        h.upstream
            .script(Script::body("application/json", data).header("content-encoding", coding));
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, &[PHI_SSN, PHI_EMAIL], coding);
    }
}

#[tokio::test]
async fn decompression_bomb_is_refused_at_the_default_limit() {
    let h = Harness::start().await;
    let bomb = gzip(&padded_json(50 << 20));
    h.upstream
        .script(Script::body("application/json", bomb).header("content-encoding", "gzip"));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&r, &[PHI_SSN, PHI_EMAIL], "50 MB gzip bomb");
}

#[tokio::test]
async fn masked_body_is_gzipped_for_clients_that_accept_it() {
    let h = Harness::start().await;
    // The masked list plus non-PHI padding is well over 1 KiB.
    let mut doc = patient_list();
    doc["legend"] = json!("Readmission risk scores per clinic. ".repeat(40));
    h.upstream.script(Script::json(&doc));
    let r = h
        .send(
            false,
            request(
                &h,
                Method::GET,
                BOB,
                "/api/patients",
                &[("accept-encoding", "gzip")],
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let plain = gunzip(&r.body);
    assert!(plain.len() >= 1024, "masked list is over 1 KiB");
    assert!(r.body.len() < plain.len(), "actually compressed");
    assert_absent(&plain, PLANTED, "gzipped masked body");
    check_masked_patient_list(&serde_json::from_slice(&plain).unwrap());
    assert!(r.header("vary").unwrap().contains("Accept-Encoding"));

    // gzip;q=0 means no.
    let r = h
        .send(
            false,
            request(
                &h,
                Method::GET,
                BOB,
                "/api/patients",
                &[("accept-encoding", "gzip;q=0")],
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    check_masked_patient_list(&r.json());

    // Small bodies (< 1 KiB) are not compressed.
    h.upstream.script(Script::json(&small_doc()));
    let r = h
        .send(
            false,
            request(
                &h,
                Method::GET,
                BOB,
                "/api/patients",
                &[("accept-encoding", "gzip")],
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.json()["patients"][0]["ssn"], R);
}

#[tokio::test]
async fn bodies_over_the_masking_limit_are_refused() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.max_masked_body = 2048)),
        ..Options::default()
    })
    .await;
    let big = padded_json(4096);
    // With Content-Length.
    h.upstream.script(
        Script::body("application/json", big.clone())
            .header("content-length", &big.len().to_string()),
    );
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(
        &r,
        &[PHI_SSN, PHI_EMAIL],
        "over the limit, with Content-Length",
    );
    // Without Content-Length (chunked).
    h.upstream.script(chunked(
        Script::body("application/json", Bytes::new()),
        &big,
        512,
    ));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&r, &[PHI_SSN, PHI_EMAIL], "over the limit, chunked");
    // Under the limit: masked.
    let ok = padded_json(1000);
    h.upstream.script(chunked(
        Script::body("application/json", Bytes::new()),
        &ok,
        300,
    ));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["patients"][0]["ssn"], R);
}

#[tokio::test]
async fn range_requests_are_not_forwarded_and_partial_responses_are_refused() {
    let h = Harness::start().await;
    h.upstream.script(Script::json(&small_doc()));
    let r = h
        .send(
            false,
            request(
                &h,
                Method::GET,
                BOB,
                "/api/patients",
                &[
                    ("range", "bytes=0-10"),
                    ("if-range", "\"v1\""),
                    ("if-none-match", "\"v1\""),
                    ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ],
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = h
        .upstream
        .by_request_id(&r.request_id())
        .expect("forwarded");
    for name in ["range", "if-range", "if-none-match", "if-modified-since"] {
        assert!(
            seen.header(name).is_none(),
            "upstream saw {name}: {:?}",
            seen.headers
        );
    }

    let raw = small_doc().to_string();
    h.upstream.script(
        Script::body("application/json", raw[..20].to_string())
            .status(206)
            .header("content-range", &format!("bytes 0-19/{}", raw.len())),
    );
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_refused(&r, &[PHI_SSN, &raw[..20]], "upstream 206");
}

#[tokio::test]
async fn masked_responses_drop_representation_headers_and_are_private() {
    let h = Harness::start().await;
    h.upstream.script(
        Script::json(&patient_list())
            .header("etag", "\"v1\"")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
            .header(
                "digest",
                "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
            )
            .header(
                "repr-digest",
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            )
            .header(
                "content-digest",
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            )
            .header("accept-ranges", "bytes")
            .header("cache-control", "public, max-age=3600"),
    );
    for h2 in [false, true] {
        let r = h.call(h2, Method::GET, Some(BOB), "/api/patients").await;
        assert_eq!(r.status, 200);
        for name in [
            "etag",
            "last-modified",
            "content-md5",
            "digest",
            "repr-digest",
            "content-digest",
            "accept-ranges",
        ] {
            assert!(r.header(name).is_none(), "h2={h2}: {name} present");
        }
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str()),
            "h2={h2}"
        );
        assert_eq!(r.header("cache-control"), Some("private, no-store"));
        assert!(
            r.header("vary").unwrap().contains("Authorization"),
            "{:?}",
            r.header("vary")
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        check_masked_patient_list(&r.json());
    }
    // The DPO's unmasked response keeps the upstream's validators.
    let r = h.get_as(Some(DANA), "/api/patients").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(
        r.header("last-modified"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
}

#[tokio::test]
async fn head_on_a_masked_route_does_not_reveal_the_raw_length() {
    let h = Harness::start().await;
    let raw = patient_list().to_string();
    h.upstream.script(
        Script::json(&patient_list())
            .header("content-length", &raw.len().to_string())
            .header("etag", "\"v1\""),
    );
    for h2 in [false, true] {
        let r = h.call(h2, Method::HEAD, Some(BOB), "/api/patients").await;
        assert_eq!(r.status, 200, "h2={h2}");
        assert!(r.body.is_empty(), "h2={h2}");
        let cl = r.header("content-length");
        assert_ne!(
            cl,
            Some(raw.len().to_string().as_str()),
            "h2={h2}: raw length revealed"
        );
        assert!(r.header("etag").is_none(), "h2={h2}");
        assert_eq!(r.header("cache-control"), Some("private, no-store"));
    }
    // Sanity: the upstream does announce the raw length (the DPO sees it).
    let r = h
        .call(false, Method::HEAD, Some(DANA), "/api/patients")
        .await;
    assert_eq!(
        r.header("content-length"),
        Some(raw.len().to_string().as_str())
    );
}

#[tokio::test]
async fn duplicate_keys_yield_one_masked_member() {
    let h = Harness::start().await;
    let body = r#"{"patients":[{"id":1,"ssn":"111-22-3333","ssn":"444-55-6666","email":"dup@example.com","email":"dup2@example.com"}]}"#;
    h.upstream.script(Script::body("application/json", body));
    let r = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_absent(
        &r.body,
        &[
            "111-22-3333",
            "444-55-6666",
            "dup@example.com",
            "dup2@example.com",
        ],
        "duplicate keys",
    );
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(text.matches("\"ssn\"").count(), 1, "{text}");
    assert_eq!(text.matches("\"email\"").count(), 1, "{text}");
    let v = r.json();
    assert_eq!(v["patients"][0]["ssn"], R);
    assert!(v["patients"][0]["email"]
        .as_str()
        .unwrap()
        .starts_with("pse:"));
}

#[tokio::test]
async fn upstream_failure_mid_body_never_yields_a_complete_looking_body() {
    // With the scripted upstream the failure comes before its head is flushed, so the gateway
    // may see no response at all; `upstream_cut_after_a_partial_body_...` below covers a cut
    // after the head and a partial body have surely arrived.
    let h = Harness::start().await;
    let raw = patient_list().to_string();
    let cut = raw.find("523-41-7788").unwrap() + 11;
    let partial = Bytes::copy_from_slice(&raw.as_bytes()[..cut]);
    for with_length in [false, true] {
        let mut s = Script::body("application/json", partial.clone());
        s.fail_mid_body = true;
        if with_length {
            s = s.header("content-length", &raw.len().to_string());
        }
        h.upstream.script(s);
        let what = format!("with_length={with_length}");

        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, PLANTED, &format!("bob, {what}"));

        let got = fetch_streamed(
            &h,
            false,
            request(&h, Method::GET, DANA, "/api/patients", &[]),
        )
        .await;
        assert!(
            got.status == 502 || got.error.is_some(),
            "dana, {what}: the client must see a broken response, got {} with {} bytes and no error",
            got.status,
            got.body.len()
        );
        assert!(
            got.body.len() < raw.len(),
            "dana, {what}: more than the upstream sent?"
        );
    }
}

/// An upstream that answers every request with `head` and `partial` body bytes, waits so
/// they surely reach the gateway, then closes the connection mid-body.
async fn cutting_upstream(response: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !contains(&req, "\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(&response).await;
                let _ = tcp.flush().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                // Dropped here: the body is cut.
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_cut_after_a_partial_body_is_502_for_masked_and_broken_for_passthrough() {
    let raw = patient_list().to_string();
    let cut = raw.find("523-41-7788").unwrap() + 11;
    let partial = &raw.as_bytes()[..cut];
    let chunked_resp = [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .as_slice(),
        format!("{:x}\r\n", partial.len()).as_bytes(),
        partial,
        b"\r\n",
    ]
    .concat();
    let length_resp = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            raw.len()
        )
        .as_bytes(),
        partial,
    ]
    .concat();
    for (what, response) in [("chunked", chunked_resp), ("content-length", length_resp)] {
        let addr = cutting_upstream(response).await;
        let h = Harness::start_with(Options {
            tweak: Some(Box::new(move |s| {
                s.upstreams[0].authority = format!("{addr}").parse().unwrap()
            })),
            ..Options::default()
        })
        .await;
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_refused(&r, PLANTED, &format!("bob, {what}"));
        assert_eq!(
            r.json()["type"],
            "https://phigate.dev/problems/bad-upstream-response",
            "{what}: refused by the filter, after the head arrived"
        );

        let got = fetch_streamed(
            &h,
            false,
            request(&h, Method::GET, DANA, "/api/patients", &[]),
        )
        .await;
        assert_eq!(got.status, 200, "dana, {what}: the head was streamed");
        assert!(
            got.error.is_some(),
            "dana, {what}: the body must end in an error, got {} bytes cleanly",
            got.body.len()
        );
        assert!(got.body.len() <= partial.len(), "dana, {what}");
        assert_eq!(&got.body[..], &partial[..got.body.len()], "dana, {what}");
    }
}

#[tokio::test]
async fn error_bodies_are_masked_too() {
    let h = Harness::start().await;
    for status in [404u16, 500] {
        h.upstream.script(
            Script::json(&json!({
                "error": "no such patient",
                "query": {"ssn": PHI_SSN, "email": PHI_EMAIL},
                "detail": format!("lookup failed for {PHI_SSN} / {PHI_EMAIL}")
            }))
            .status(status),
        );
        let r = h.get_as(Some(BOB), "/api/patients").await;
        assert_eq!(r.status, status);
        assert_absent(&r.body, &[PHI_SSN, PHI_EMAIL], &status.to_string());
        let v = r.json();
        assert_eq!(v["error"], "no such patient");
        assert_eq!(v["query"]["ssn"], R);
        assert_eq!(v["query"]["email"], pseudonym(PHI_EMAIL));
        assert_eq!(v["detail"], "lookup failed for [REDACTED] / [REDACTED]");
        assert_eq!(r.header("x-phigate-masked"), Some("3"));
    }
}

#[tokio::test]
async fn websocket_upgrade_from_an_anonymized_caller_is_forbidden() {
    let h = Harness::start().await;
    h.upstream.script(Script::json(&small_doc()));
    let token = h.token(BOB);
    let req = format!(
        "GET /api/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let out = h.raw(req.as_bytes()).await;
    assert_eq!(raw_status(&out), 403, "{out}");
    assert!(!out.contains(PHI_SSN));
    assert_eq!(h.upstream.count(), 0, "never forwarded");
}

#[tokio::test]
async fn report_export_is_masked_for_the_anonymized_caller() {
    let h = Harness::start().await;
    let raw = patient_list().to_string();
    h.upstream.script(Script::json(&patient_list()));
    let r = h
        .call(false, Method::POST, Some(BOB), "/api/reports/7/export")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_absent(&r.body, PLANTED, "report export");
    check_masked_patient_list(&r.json());
    assert_eq!(
        r.header("x-phigate-masked"),
        Some(PATIENT_LIST_MASKED.to_string().as_str())
    );
    let seen = h.upstream.by_request_id(&r.request_id()).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/reports/7/export");
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    let r = h
        .call(false, Method::POST, Some(DANA), "/api/reports/7/export")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], raw.as_bytes());
}

// ---------------------------------------------------------------------------------------
// 3. The demo's sample API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn demo_sample_api_is_masked_for_bob() {
    use phigate::demo::sample_api;
    let (listener, addr) = sample_api::bind().await.unwrap();
    let server = tokio::spawn(sample_api::serve(listener));
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(move |s| {
            s.upstreams[0].authority = format!("{addr}").parse().unwrap()
        })),
        ..Options::default()
    })
    .await;

    let r = h.get_as(Some(DANA), "/api/patients/1").await;
    assert_eq!(r.status, 200);
    assert!(contains(&r.body, "123-45-6789"), "dpo sees the raw SSN");

    let mut planted: Vec<String> = vec![
        "4111 1111 1111 1111".into(),
        "kate.oneil@example.net".into(),
    ];
    for p in sample_api::patients().as_array().unwrap() {
        for ptr in [
            "/ssn",
            "/email",
            "/phone",
            "/name/first",
            "/name/last",
            "/address/street",
            "/address/zip",
            "/mrn",
            "/dob",
        ] {
            planted.push(p.pointer(ptr).unwrap().as_str().unwrap().to_string());
        }
    }
    let planted: Vec<&str> = planted.iter().map(String::as_str).collect();
    for h2 in [false, true] {
        let r = h.call(h2, Method::GET, Some(BOB), "/api/patients").await;
        assert_eq!(r.status, 200);
        assert_absent(&r.body, &planted, "demo list for bob");
        let v = r.json();
        let list = v["patients"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["ssn"], R);
        assert_eq!(list[0]["diagnosis"], "Type 2 diabetes");
        assert_eq!(list[1]["age"], "90+");
        assert_eq!(list[1]["address"]["zip"], "000**");
    }
    // bob holds a deny on patient view.
    let r = h.get_as(Some(BOB), "/api/patients/1").await;
    assert_eq!(r.status, 403);
    assert!(!contains(&r.body, "123-45-6789"));

    let r = h.get_as(Some(MIA), "/api/patients").await;
    assert_eq!(r.status, 403);
    assert_absent(&r.body, &planted, "mia");
    server.abort();
}

/// Upstream headers can carry PHI too: on a masked route only safe headers (and the ones
/// the route lists under `passthrough_headers`) reach an anonymized caller.
#[tokio::test]
async fn upstream_headers_are_allowlisted_on_masked_routes() {
    let (h, _tmp) = with_patient_list_option("passthrough_headers: [X-Total-Count]").await;
    h.upstream.script(
        Script::json(&small_doc())
            .header("x-patient-name", "Maria Gonzales")
            .header("location", "/api/patients?ssn=523-41-7788")
            .header("set-cookie", "last_patient=523-41-7788")
            .header("link", "</api/patients/523-41-7788>; rel=next")
            .header("x-total-count", "3")
            .header("content-language", "en"),
    );
    let bob = h.get_as(Some(BOB), "/api/patients").await;
    assert_eq!(bob.status, 200);
    for name in ["x-patient-name", "location", "set-cookie", "link"] {
        assert!(
            bob.header(name).is_none(),
            "{name} reached the anonymized caller"
        );
    }
    for (name, _) in bob.headers.iter() {
        for v in bob.headers.get_all(name) {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains("523-41-7788") && !v.contains("Maria"),
                "{name}: {v}"
            );
        }
    }
    assert_eq!(
        bob.header("x-total-count"),
        Some("3"),
        "listed under passthrough_headers"
    );
    assert_eq!(bob.header("content-language"), Some("en"), "a safe default");
    assert_eq!(bob.header("content-type"), Some("application/json"));
    let dana = h.get_as(Some(DANA), "/api/patients").await;
    assert_eq!(
        dana.header("x-patient-name"),
        Some("Maria Gonzales"),
        "raw callers see every header"
    );
    assert!(dana.header("set-cookie").is_some());
}

#[tokio::test]
async fn concurrent_large_bodies_are_all_masked() {
    // Above the blocking threshold (256 KiB), more at once than there are masking slots
    // (one per core): every response waits its turn and comes back whole and masked.
    let h = Harness::start().await;
    let mut doc = patient_list();
    let one = doc["patients"].as_array().unwrap().clone();
    let many: Vec<Value> = one.iter().cycle().take(one.len() * 300).cloned().collect();
    doc["patients"] = Value::Array(many);
    let raw = doc.to_string();
    assert!(raw.len() > 300 << 10, "{} bytes", raw.len());
    h.upstream.script(Script::json(&doc));
    let p = "/api/patients";
    let replies = tokio::join!(
        h.get_as(Some(BOB), p),
        h.get_as(Some(BOB), p),
        h.get_as(Some(BOB), p),
        h.get_as(Some(BOB), p),
        h.get_as(Some(BOB), p),
        h.get_as(Some(BOB), p),
    );
    for r in [
        replies.0, replies.1, replies.2, replies.3, replies.4, replies.5,
    ] {
        assert_eq!(
            r.status,
            200,
            "{}",
            String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
        );
        assert_absent(&r.body, PLANTED, "large masked list");
        let v = r.json();
        assert_eq!(v["patients"].as_array().unwrap().len(), one.len() * 300);
    }
}
