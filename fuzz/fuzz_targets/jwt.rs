//! JWT header and claims handling. Mode 0: the input is the token. Mode 1: the input is a
//! header and a claims object (split at 0xFF), signed with the right HS256 key, so the
//! checks after the signature are reached. Never panics; an accepted token always has
//! HS256, the right issuer and audience, and has not expired.
#![no_main]
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use phigate::auth::jwt::JwtVerifier;
use phigate::config::settings::JwtSettings;
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzz-hs256-secret-of-at-least-32-bytes!!";

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        JwtVerifier::new(
            &JwtSettings {
                issuer: "https://idp.fuzz".into(),
                audience: "phigate".into(),
                jwks_file: None,
                hs256_secret: Some(SECRET.to_vec()),
                leeway_s: 30,
                user_claim: "sub".into(),
                cache_size: 0,
            },
            None,
        )
        .expect("verifier")
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, claims) = if mode % 2 == 0 {
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        (t.to_string(), None)
    } else {
        let mut it = rest.splitn(2, |b| *b == 0xff);
        let header = it.next().unwrap_or_default();
        let claims = it.next().unwrap_or_default();
        (
            sign(header, claims),
            Some((header.to_vec(), claims.to_vec())),
        )
    };
    let v = verifier();
    let _ = v.verify_header(
        http::HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .as_ref(),
    );
    if let (Ok(id), Some((header, claims))) = (v.verify_uncached(&token), claims) {
        let h: serde_json::Value =
            serde_json::from_slice(&header).expect("accepted header is JSON");
        assert_eq!(h["alg"], "HS256", "accepted alg {h}");
        let c: serde_json::Value =
            serde_json::from_slice(&claims).expect("accepted claims are JSON");
        assert_eq!(c["iss"], "https://idp.fuzz", "{c}");
        let aud_ok = c["aud"] == "phigate"
            || c["aud"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "phigate"));
        assert!(aud_ok, "{c}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(id.exp + 30 >= now, "expired token accepted: {c}");
        assert!(!id.user.is_empty(), "{c}");
    }
});
