//! Step 4: every bad token is a 401 with `WWW-Authenticate: Bearer error="invalid_token"`.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::{Harness, HS256_SECRET};
use phigate::demo::tokens::now_s;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(h: &Harness) -> serde_json::Value {
    let now = now_s();
    json!({"sub": "dana@clinic.example", "iss": h.issuer.issuer, "aud": "phigate", "iat": now, "exp": now + 300})
}

fn hs256(header: Header, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn valid_tokens_of_both_kinds_are_accepted() {
    let h = Harness::start().await;
    let es = h.issuer.mint("dana@clinic.example", 300);
    assert_eq!(h.with_bearer(&es, "/api/reports").await.status, 200);
    let hs = hs256(Header::new(Algorithm::HS256), &claims(&h));
    assert_eq!(h.with_bearer(&hs, "/api/reports").await.status, 200);
    // Cached: the same token again is still fine.
    assert_eq!(h.with_bearer(&es, "/api/reports").await.status, 200);
    assert!(h.gateway.gateway.jwt.cache_entries() >= 1);
}

#[tokio::test]
async fn every_bad_token_is_401_invalid_token() {
    let h = Harness::start().await;
    let now = now_s();
    let good = claims(&h);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let kid_header = |f: &dyn Fn(&mut Header)| {
        let mut hd = Header::new(Algorithm::ES256);
        hd.kid = Some(h.issuer.kid.clone());
        f(&mut hd);
        hd
    };
    let es_token = h.issuer.mint("dana@clinic.example", 300);
    let parts: Vec<&str> = es_token.split('.').collect();
    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            ),
        ),
        (
            "alg none with kid",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": h.issuer.kid})),
                b64(&good)
            ),
        ),
        (
            "unknown kid",
            h.issuer
                .mint_with_header(kid_header(&|hd| hd.kid = Some("nope".into())), good.clone()),
        ),
        (
            "crit",
            h.issuer.mint_with_header(
                kid_header(&|hd| hd.crit = Some(vec!["exp".into()])),
                good.clone(),
            ),
        ),
        (
            "jku",
            h.issuer.mint_with_header(
                kid_header(&|hd| hd.jku = Some("https://evil.example/jwks".into())),
                good.clone(),
            ),
        ),
        (
            "x5u",
            h.issuer.mint_with_header(
                kid_header(&|hd| hd.x5u = Some("https://evil.example/cert".into())),
                good.clone(),
            ),
        ),
        (
            "wrong iss",
            h.issuer
                .mint_claims(with("iss", json!("https://evil.example"))),
        ),
        (
            "wrong aud",
            h.issuer.mint_claims(with("aud", json!("someone-else"))),
        ),
        ("missing exp", h.issuer.mint_claims(without("exp"))),
        ("missing sub", h.issuer.mint_claims(without("sub"))),
        (
            "expired",
            h.issuer.mint_claims(with("exp", json!(now - 3600))),
        ),
        (
            "future nbf",
            h.issuer.mint_claims(with("nbf", json!(now + 3600))),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with("sub", json!("mallory"))),
                parts[2]
            ),
        ),
        (
            "bad signature",
            format!(
                "{}.{}.{}AAAA",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() - 4]
            ),
        ),
        ("garbage", "not-a-jwt".to_string()),
        ("two dots garbage", "a.b.c".to_string()),
        // Algorithm confusion: HS256 with the ES key's kid must not be accepted.
        ("hs256 with es kid", {
            let mut hd = Header::new(Algorithm::HS256);
            hd.kid = Some(h.issuer.kid.clone());
            hs256(hd, &good)
        }),
        (
            "hs256 wrong secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            )
            .unwrap(),
        ),
    ];
    // An embedded jwk header.
    let jwk_header = format!(
        "{}.{}.{}",
        b64(
            &json!({"alg": "ES256", "kid": h.issuer.kid, "jwk": serde_json::from_str::<serde_json::Value>(&h.issuer.jwks_json).unwrap()["keys"][0]})
        ),
        parts[1],
        parts[2]
    );
    cases.push(("embedded jwk", jwk_header));
    for (name, token) in &cases {
        let r = h.with_bearer(token, "/api/reports").await;
        assert_eq!(
            r.status,
            401,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{name}"
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains(token.as_str()),
            "{name}: token echoed"
        );
    }
    // Not a bearer scheme at all.
    let req = http::Request::get(format!("{}/api/reports", h.base()))
        .header("authorization", "Basic ZGFuYTpwYXNz")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h.send(false, req).await.status, 401);
    assert_eq!(h.upstream.count(), 0, "no bad token reached the upstream");
}
