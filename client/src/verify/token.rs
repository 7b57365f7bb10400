//! Local access-token checks, the same the server makes: header (`typ at+jwt`, no key-bearing
//! or critical members), the algorithm pinned to the key the `kid` names, signature, issuer,
//! audience, lifetime with leeway, and non-empty identifiers.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{Principal, TokenProblem};

/// The longest token looked at; the server issues far shorter ones.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The `typ` of access tokens (RFC 9068).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// One verification key.
pub(crate) struct VerificationKey {
    /// The algorithm tokens signed with this key must name.
    algorithm: Algorithm,
    /// The key itself.
    key: DecodingKey,
}

/// The keys and claims tokens are checked against: the published key set, or an HS256 secret
/// the application chose to share.
pub(crate) struct KeySet {
    /// Keys by kid.
    keys: HashMap<String, VerificationKey>,
    /// The `iss` every token must carry.
    pub(crate) issuer: String,
    /// An `aud` every token must carry.
    pub(crate) audience: String,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl KeySet {
    /// The Ed25519 keys of a published JWKS. Keys of any other kind are skipped: the server
    /// publishes only Ed25519 public keys, and a symmetric key in a key set would let its
    /// holder forge tokens.
    pub(crate) fn from_jwks(jwks_json: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| format!("JWKS is not valid: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), AlgorithmParameters::OctetKeyPair(okp)) =
                (&jwk.common.key_id, &jwk.algorithm)
            else {
                continue;
            };
            if okp.curve != EllipticCurve::Ed25519 {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
            keys.insert(
                kid.clone(),
                VerificationKey {
                    algorithm: Algorithm::EdDSA,
                    key,
                },
            );
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Adds a shared HS256 secret under `kid` (the explicit opt-in).
    pub(crate) fn with_hs256(mut self, kid: &str, secret: &[u8]) -> Self {
        self.keys.insert(
            kid.to_owned(),
            VerificationKey {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            },
        );
        self
    }

    /// Checks `token` at `now`, allowing `leeway` of clock skew.
    pub(crate) fn verify(
        &self,
        token: &str,
        now: SystemTime,
        leeway: Duration,
    ) -> Result<Principal, TokenProblem> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenProblem::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenProblem::Malformed);
        };
        let header: Header = B64URL
            .decode(header_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenProblem::Malformed)?;
        if header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(TokenProblem::ForbiddenHeader);
        }
        let kid = header.kid.as_deref().ok_or(TokenProblem::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenProblem::UnknownKey)?;
        // The key decides the algorithm; the header only has to agree.
        let named = header.alg.as_deref().ok_or(TokenProblem::Malformed)?;
        if named != algorithm_name(key.algorithm) {
            return Err(TokenProblem::AlgorithmMismatch);
        }
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenProblem::WrongType);
        }
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(
            signature_b64,
            signed.as_bytes(),
            &key.key,
            key.algorithm,
        ) {
            Ok(true) => {}
            Ok(false) => return Err(TokenProblem::BadSignature),
            Err(_) => return Err(TokenProblem::Malformed),
        }
        // Only signed bytes are interpreted from here on.
        let claims: Claims = B64URL
            .decode(payload_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenProblem::Malformed)?;
        if [&claims.sub, &claims.tid, &claims.sid, &claims.jti]
            .iter()
            .any(|c| c.is_empty())
        {
            return Err(TokenProblem::Malformed);
        }
        if claims.iss != self.issuer {
            return Err(TokenProblem::WrongIssuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenProblem::WrongAudience);
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TokenProblem::Expired)?
            .as_secs();
        let leeway = leeway.as_secs();
        // RFC 7519: valid only before exp.
        if now >= claims.exp.saturating_add(leeway) {
            return Err(TokenProblem::Expired);
        }
        if claims.nbf > now.saturating_add(leeway) || claims.iat > now.saturating_add(leeway) {
            return Err(TokenProblem::NotYetValid);
        }
        Ok(Principal {
            user_id: claims.sub,
            tenant_id: claims.tid,
            session_id: claims.sid,
            roles: claims.roles,
            scopes: claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
            key_id: kid.to_owned(),
        })
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        _ => "EdDSA",
    }
}

/// The header members that matter, read ourselves so none is dropped or reinterpreted.
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    jku: Option<serde_json::Value>,
    jwk: Option<serde_json::Value>,
    x5u: Option<serde_json::Value>,
    x5c: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// The claims of a Portcullis access token.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
    sub: String,
    tid: String,
    sid: String,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scope: String,
}

/// `aud` is a string when there is one audience, an array otherwise (RFC 7519 §4.1.3).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}
