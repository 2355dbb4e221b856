//! A development token issuer: an ES256 key pair, its JWK set, and signed tokens.
//! Used by `demo` and the tests; production tokens come from the organisation's IdP.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

pub struct DevIssuer {
    pub issuer: String,
    pub audience: String,
    pub kid: String,
    key: EncodingKey,
    /// The public half, as a JWK set document.
    pub jwks_json: String,
}

impl DevIssuer {
    pub fn generate(issuer: &str, audience: &str) -> Result<DevIssuer, String> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        Self::from_key_pem(issuer, audience, &pair.serialize_pem())
    }

    /// Rebuilds an issuer from a PKCS#8 P-256 private key PEM (kept between demo runs).
    pub fn from_key_pem(issuer: &str, audience: &str, pem: &str) -> Result<DevIssuer, String> {
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let raw = pair.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("expected an uncompressed P-256 public key".into());
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x = b64.encode(&raw[1..33]);
        let y = b64.encode(&raw[33..65]);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw);
        let kid = format!("dev-{}", &crate::config::rules::hex(digest.as_ref())[..12]);
        let jwks_json = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"
        }]})
        .to_string();
        Ok(DevIssuer {
            issuer: issuer.into(),
            audience: audience.into(),
            kid,
            key: EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
            jwks_json,
        })
    }

    /// A token for `sub`, valid for `ttl_s` seconds.
    pub fn mint(&self, sub: &str, ttl_s: u64) -> String {
        let now = now_s();
        self.mint_claims(json!({
            "sub": sub, "iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + ttl_s
        }))
    }

    /// A token with exactly these claims (tests use it for bad claims).
    pub fn mint_claims(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        self.mint_with_header(header, claims)
    }

    pub fn mint_with_header(&self, header: Header, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&header, &claims, &self.key).expect("signing with a valid key")
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
