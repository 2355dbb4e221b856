//! JWT bearer verification. The algorithm is pinned by the key (selected by `kid`), never
//! taken from the token; tokens that ask for anything we do not do (`crit`, embedded or
//! remote keys) are refused; verified tokens are cached until, never past, their `exp`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::settings::JwtSettings;

/// Why a token was refused. Never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("malformed token")]
    Malformed,
    #[error("the token's algorithm is not the one its key is pinned to")]
    WrongAlgorithm,
    #[error("unknown key id")]
    UnknownKey,
    #[error("the token carries a 'crit' header")]
    Critical,
    #[error(
        "the token embeds or points to a key (jwk/jku/x5u/x5c); keys are configured, never fetched"
    )]
    EmbeddedKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("missing required claim '{0}'")]
    MissingClaim(String),
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub exp: u64,
}

struct Key {
    key: DecodingKey,
    alg: Algorithm,
    validation: Validation,
}

/// Verifies bearer tokens against the configured keys.
pub struct JwtVerifier {
    by_kid: HashMap<String, Arc<Key>>,
    /// The key for tokens without a `kid`: only when exactly one key is configured.
    sole: Option<Arc<Key>>,
    user_claim: String,
    leeway: u64,
    /// foldhash (seeded per process): keys are only tokens that verified, and SipHash over
    /// a ~500-byte token cost more than the rest of the lookup.
    cache: moka::sync::Cache<String, Arc<Identity>, foldhash::fast::RandomState>,
}

/// Entries expire at the token's own `exp`.
struct ExpireAtExp;
impl moka::Expiry<String, Arc<Identity>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Arc<Identity>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(now_s())))
    }
}

/// Seconds since the epoch, as token `exp` counts them.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not a JWK set: {1}")]
    Parse(String, String),
    #[error("{0}: key {1}: {2}")]
    Key(String, String, String),
}

fn alg_for(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let from_alg = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(other) => {
            return Err(format!(
                "algorithm {other:?} is not supported for verification keys"
            ))
        }
        None => None,
    };
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric keys do not belong in a JWK set file; use hs256_secret_env".into(),
            )
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = from_alg.unwrap_or(by_type);
    let family_ok = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    if !family_ok
        || (by_type == Algorithm::ES256 && alg == Algorithm::ES384)
        || (by_type == Algorithm::ES384 && alg == Algorithm::ES256)
    {
        return Err(format!("'alg' {alg:?} does not fit the key type"));
    }
    Ok(alg)
}

impl JwtVerifier {
    pub fn from_settings(s: &JwtSettings) -> Result<Self, KeyError> {
        let jwks = match &s.jwks_file {
            Some(f) => Some(load_jwks(f)?),
            None => None,
        };
        Self::new(s, jwks.as_ref())
    }

    pub fn new(s: &JwtSettings, jwks: Option<&JwkSet>) -> Result<Self, KeyError> {
        let file = s
            .jwks_file
            .as_deref()
            .map_or("jwks".to_string(), |p| p.display().to_string());
        let validation_for = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = s.leeway_s;
            v.set_issuer(&[&s.issuer]);
            v.set_audience(&[&s.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v
        };
        let mut keys: Vec<(Option<String>, Arc<Key>)> = Vec::new();
        for (i, jwk) in jwks
            .map(|j| j.keys.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let label = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            let alg = alg_for(jwk).map_err(|e| KeyError::Key(file.clone(), label.clone(), e))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| KeyError::Key(file.clone(), label.clone(), e.to_string()))?;
            keys.push((
                jwk.common.key_id.clone(),
                Arc::new(Key {
                    key,
                    alg,
                    validation: validation_for(alg),
                }),
            ));
        }
        if let Some(secret) = &s.hs256_secret {
            keys.push((
                None,
                Arc::new(Key {
                    key: DecodingKey::from_secret(secret),
                    alg: Algorithm::HS256,
                    validation: validation_for(Algorithm::HS256),
                }),
            ));
        }
        let mut by_kid = HashMap::new();
        for (kid, k) in &keys {
            if let Some(kid) = kid {
                if by_kid.insert(kid.clone(), k.clone()).is_some() {
                    return Err(KeyError::Key(
                        file.clone(),
                        kid.clone(),
                        "duplicate kid".into(),
                    ));
                }
            }
        }
        // Tokens without `kid`: the HS256 secret if there is one, else a lone key.
        let sole = keys
            .iter()
            .find(|(kid, _)| kid.is_none())
            .map(|(_, k)| k.clone())
            .or_else(|| (keys.len() == 1).then(|| keys[0].1.clone()));
        Ok(JwtVerifier {
            by_kid,
            sole,
            user_claim: s.user_claim.clone(),
            leeway: s.leeway_s,
            cache: moka::sync::Cache::builder()
                .max_capacity(s.cache_size)
                .expire_after(ExpireAtExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<Arc<Identity>, AuthError> {
        self.verify_header_cached(header).map(|(id, _)| id)
    }

    /// Like `verify_header`, also telling whether the answer came from the cache.
    pub fn verify_header_cached(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<(Arc<Identity>, bool), AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        self.verify_cached(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.verify_cached(token).map(|(id, _)| id)
    }

    fn verify_cached(&self, token: &str) -> Result<(Arc<Identity>, bool), AuthError> {
        if let Some(hit) = self.cache.get(token) {
            if now_s() < hit.exp {
                return Ok((hit, true));
            }
        }
        let id = Arc::new(self.verify_uncached(token)?);
        // Cache only while the token is valid without leeway, so a hit is never past `exp`.
        if id.exp > now_s() {
            self.cache.insert(token.to_string(), id.clone());
        }
        Ok((id, false))
    }

    pub fn verify_uncached(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() || token.split('.').count() != 3 {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
            _ => AuthError::Malformed,
        })?;
        if header.crit.is_some() {
            return Err(AuthError::Critical);
        }
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(AuthError::EmbeddedKey);
        }
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).ok_or(AuthError::UnknownKey)?,
            None => self.sole.as_ref().ok_or(AuthError::UnknownKey)?,
        };
        if header.alg != key.alg {
            return Err(AuthError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &key.validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::WrongIssuer,
                K::InvalidAudience => AuthError::WrongAudience,
                K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                K::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        let user = claims
            .get(&self.user_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::MissingClaim(self.user_claim.clone()))?;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        // jsonwebtoken checks `exp` with leeway; `nbf` likewise. Re-check exp as a number.
        if exp + self.leeway < now_s() {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            user: user.to_string(),
            exp,
        })
    }

    pub fn cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

pub fn load_jwks(file: &Path) -> Result<JwkSet, KeyError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| KeyError::Read(file.display().to_string(), e))?;
    serde_json::from_str(&text)
        .map_err(|e| KeyError::Parse(file.display().to_string(), e.to_string()))
}
