//! Access-token JWTs: issuing and verifying against a key ring, and the public JWKS.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use super::key::Key;
use super::keyring::KeyRing;
use crate::keys::{MAX_ID_LEN, id_problem};

/// The `typ` header of every access token (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";
/// The largest clock leeway honoured; a bigger one is clamped to this.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Longer tokens are refused before any parsing: ours are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audiences: a string in the token when there is one, an array otherwise.
    #[serde(with = "one_or_many")]
    pub aud: Vec<String>,
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Session id: the caller checks that the session is still alive.
    pub sid: String,
    /// Token id: 128 random bits, base64url.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Role names.
    pub roles: Vec<String>,
    /// Space-separated scopes, e.g. `"password:change"`.
    pub scope: String,
}

impl AccessClaims {
    /// The scopes, one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); one audience is written as a string.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &[String], s: S) -> Result<S::Ok, S::Error> {
        match value {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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
}

/// Who and what a token is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueRequest {
    /// Becomes `sub`.
    pub user_id: String,
    /// Becomes `tid`.
    pub tenant_id: String,
    /// Becomes `sid`.
    pub session_id: String,
    /// Becomes `roles`.
    pub roles: Vec<String>,
    /// Joined with spaces into `scope`.
    pub scopes: Vec<String>,
}

/// How to issue.
#[derive(Debug, Clone, Copy)]
pub struct IssueSettings<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Lifetime; whole seconds, at least one.
    pub ttl: Duration,
    /// The issuing time (injected so tests control it).
    pub now: SystemTime,
}

/// A freshly signed token.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact JWT: a bearer credential, never to be logged.
    pub token: String,
    /// What it says.
    pub claims: AccessClaims,
    /// The kid of the key that signed it.
    pub key_id: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[redacted]")
            .field("claims", &self.claims)
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// What a token must say to be accepted.
#[derive(Debug, Clone, Copy)]
pub struct VerifyExpectations<'a> {
    /// `iss` must equal this.
    pub issuer: &'a str,
    /// `aud` must be or contain this.
    pub audience: &'a str,
    /// Clock skew allowed on `exp`, `nbf` and `iat`; clamped to [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// The verifying time (injected so tests control it).
    pub now: SystemTime,
}

/// Why a token was refused or could not be issued. Never carries token or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, too long, or a claim missing or of the wrong type.
    #[error("token is malformed")]
    Malformed,
    /// The header names no key of the ring (or no key at all).
    #[error("token names no known key")]
    UnknownKey,
    /// The header's `alg` is not the algorithm of the key it names (or is `none`).
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The header carries a member that could make a verifier fetch or trust another key.
    #[error("token header carries forbidden member `{0}`")]
    ForbiddenHeader(&'static str),
    /// `typ` is missing or not `at+jwt`.
    #[error("token is not an access token")]
    WrongType,
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is not ours.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not contain ours.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The signature does not verify with the named key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The issue request or settings are unusable (the caller's bug, not the client's).
    #[error("cannot issue a token: {0}")]
    InvalidRequest(&'static str),
    /// Something on our side failed (clock, random source, signer).
    #[error("token processing failed: {0}")]
    Internal(&'static str),
}

impl TokenError {
    /// A stable code for error details and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "TOKEN_MALFORMED",
            Self::UnknownKey => "TOKEN_UNKNOWN_KEY",
            Self::AlgorithmMismatch => "TOKEN_ALGORITHM_MISMATCH",
            Self::ForbiddenHeader(_) => "TOKEN_FORBIDDEN_HEADER",
            Self::WrongType => "TOKEN_WRONG_TYPE",
            Self::Expired => "TOKEN_EXPIRED",
            Self::NotYetValid => "TOKEN_NOT_YET_VALID",
            Self::WrongIssuer => "TOKEN_WRONG_ISSUER",
            Self::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            Self::BadSignature => "TOKEN_BAD_SIGNATURE",
            Self::InvalidRequest(_) => "TOKEN_INVALID_REQUEST",
            Self::Internal(_) => "TOKEN_INTERNAL",
        }
    }
}

/// Set when the member is present at all, even as `null`.
#[derive(Debug, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Self(true))
    }
}

/// The header as we read it ourselves: jsonwebtoken's `Header` would drop or reinterpret
/// members, and we must see every one that matters. Duplicate members are a parse error.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    #[serde(default)]
    jku: Present,
    #[serde(default)]
    jwk: Present,
    #[serde(default)]
    x5u: Present,
    #[serde(default)]
    x5c: Present,
    #[serde(default)]
    crit: Present,
}

impl RawHeader {
    fn forbidden(&self) -> Option<&'static str> {
        [
            ("jku", &self.jku),
            ("x5u", &self.x5u),
            ("jwk", &self.jwk),
            ("x5c", &self.x5c),
            // We understand no extension, so any critical one must be refused (RFC 7515 §4.1.11).
            ("crit", &self.crit),
        ]
        .into_iter()
        .find(|(_, present)| present.0)
        .map(|(name, _)| name)
    }
}

fn is_access_type(typ: &str) -> bool {
    // Media types compare case-insensitively; "application/" may be omitted (RFC 7515 §4.1.9).
    typ.eq_ignore_ascii_case(TOKEN_TYPE) || typ.eq_ignore_ascii_case("application/at+jwt")
}

fn unix_seconds(t: SystemTime) -> Result<u64, TokenError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| TokenError::Internal("clock is before 1970"))
}

/// An id we put in a claim: the same rule as every id of the API.
fn valid_id(id: &str) -> bool {
    id_problem(id, true, MAX_ID_LEN).is_none()
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn random_jti() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| TokenError::Internal("OS random source failed"))?;
    Ok(B64URL.encode(bytes))
}

impl KeyRing {
    /// Signs an access token with the active key.
    pub fn issue(
        &self,
        req: &IssueRequest,
        settings: &IssueSettings<'_>,
    ) -> Result<IssuedToken, TokenError> {
        if !valid_id(&req.user_id) {
            return Err(TokenError::InvalidRequest(
                "user_id is empty, too long or has control characters",
            ));
        }
        if !valid_id(&req.tenant_id) {
            return Err(TokenError::InvalidRequest(
                "tenant_id is empty, too long or has control characters",
            ));
        }
        if !valid_id(&req.session_id) {
            return Err(TokenError::InvalidRequest(
                "session_id is empty, too long or has control characters",
            ));
        }
        if !req.roles.iter().all(|r| valid_id(r)) {
            return Err(TokenError::InvalidRequest(
                "a role is empty, too long or has control characters",
            ));
        }
        if !req.scopes.iter().all(|s| valid_scope(s)) {
            return Err(TokenError::InvalidRequest(
                "a scope is empty or has characters RFC 6749 forbids",
            ));
        }
        if !valid_id(settings.issuer) || !valid_id(settings.audience) {
            return Err(TokenError::InvalidRequest(
                "issuer or audience is empty or invalid",
            ));
        }
        let ttl = settings.ttl.as_secs();
        if ttl == 0 {
            return Err(TokenError::InvalidRequest("ttl is shorter than one second"));
        }
        let now = unix_seconds(settings.now)?;
        let exp = now
            .checked_add(ttl)
            .ok_or(TokenError::InvalidRequest("ttl is too long"))?;
        let claims = AccessClaims {
            iss: settings.issuer.to_owned(),
            aud: vec![settings.audience.to_owned()],
            sub: req.user_id.clone(),
            tid: req.tenant_id.clone(),
            sid: req.session_id.clone(),
            jti: random_jti()?,
            iat: now,
            nbf: now,
            exp,
            roles: req.roles.clone(),
            scope: req.scopes.join(" "),
        };
        let key = self.active();
        let signer = key
            .signer()
            .ok_or(TokenError::Internal("the active key cannot sign"))?;
        let mut header = jsonwebtoken::Header::new(key.algorithm().jwt());
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, signer)
            .map_err(|_| TokenError::Internal("signing failed"))?;
        Ok(IssuedToken {
            token,
            claims,
            key_id: key.kid().to_owned(),
        })
    }

    /// Verifies an access token: the key is the one its `kid` names and the algorithm is that
    /// key's own; then signature, type, issuer, audience and times.
    pub fn verify(
        &self,
        token: &str,
        expected: &VerifyExpectations<'_>,
    ) -> Result<AccessClaims, TokenError> {
        self.verify_keyed(token, expected).map(|(claims, _)| claims)
    }

    /// [`verify`](Self::verify), also naming the key that verified the token.
    pub fn verify_keyed(
        &self,
        token: &str,
        expected: &VerifyExpectations<'_>,
    ) -> Result<(AccessClaims, &Key), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = B64URL
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed)?;
        let header: RawHeader =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if let Some(name) = header.forbidden() {
            return Err(TokenError::ForbiddenHeader(name));
        }
        let alg = header.alg.as_deref().ok_or(TokenError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgorithmMismatch);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.get(kid).ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm; the header only has to agree with it.
        if alg != key.algorithm().as_str() {
            return Err(TokenError::AlgorithmMismatch);
        }
        if !header.typ.as_deref().is_some_and(is_access_type) {
            return Err(TokenError::WrongType);
        }
        let signed = token
            .get(..header_b64.len() + 1 + payload_b64.len())
            .ok_or(TokenError::Malformed)?;
        match jsonwebtoken::crypto::verify(
            signature_b64,
            signed.as_bytes(),
            key.verifier(),
            key.algorithm().jwt(),
        ) {
            Ok(true) => {}
            Ok(false) => return Err(TokenError::BadSignature),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Base64(_)) => {
                return Err(TokenError::Malformed);
            }
            Err(_) => return Err(TokenError::Internal("signature check could not run")),
        }

        // Only signed bytes are interpreted from here on.
        let payload = B64URL
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if [&claims.sub, &claims.tid, &claims.sid, &claims.jti]
            .iter()
            .any(|c| c.is_empty())
        {
            return Err(TokenError::Malformed);
        }
        if claims.iss != expected.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.iter().any(|a| a == expected.audience) {
            return Err(TokenError::WrongAudience);
        }
        let now = unix_seconds(expected.now)?;
        let leeway = expected.leeway.min(MAX_LEEWAY).as_secs();
        // RFC 7519: the token is valid only *before* exp.
        if now >= claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        let latest_start = now.saturating_add(leeway);
        if claims.nbf > latest_start || claims.iat > latest_start {
            return Err(TokenError::NotYetValid);
        }
        Ok((claims, key))
    }

    /// The JWKS (RFC 7517) relying parties fetch: the Ed25519 keys' public halves only.
    /// HS256 keys are secrets and never appear, not even by kid.
    pub fn jwks_json(&self) -> String {
        #[derive(Serialize)]
        struct Jwk<'a> {
            kty: &'static str,
            crv: &'static str,
            x: String,
            kid: &'a str,
            alg: &'static str,
            #[serde(rename = "use")]
            use_: &'static str,
        }
        #[derive(Serialize)]
        struct Jwks<'a> {
            keys: Vec<Jwk<'a>>,
        }
        let keys = self
            .keys()
            .filter_map(|key| {
                key.ed25519_public().map(|public| Jwk {
                    kty: "OKP",
                    crv: "Ed25519",
                    x: B64URL.encode(public),
                    kid: key.kid(),
                    alg: "EdDSA",
                    use_: "sig",
                })
            })
            .collect();
        // Serializing strings cannot fail; the fallback is an empty but valid set.
        serde_json::to_string(&Jwks { keys }).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned())
    }
}
