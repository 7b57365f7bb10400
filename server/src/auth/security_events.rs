//! What services verifying tokens themselves need to know: the published key set, and the
//! stream of revocations and key changes each replica fans out to its subscribers.

use std::time::Duration;

use super::authenticator::Authenticator;
use super::store::AuthStore;
use crate::ratelimit::store::RateLimitStore;

/// How long a verifier may use a fetched key set before fetching it again. A key removed from
/// the key set (its tokens no longer valid) may be accepted by such a verifier this long; one
/// that watches the security events hears of the change at once.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(60);

/// The key set as published for verifiers: the public keys and the claims every token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKeys {
    /// The JSON Web Key Set of the public verification keys (never an HS256 secret).
    pub jwks_json: String,
    /// The `iss` of every access token.
    pub issuer: String,
    /// The `aud` of every access token.
    pub audience: String,
    /// See [`JWKS_MAX_AGE`].
    pub max_age: Duration,
}

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
    /// The key set in force, as published.
    pub fn published_keys(&self) -> PublishedKeys {
        PublishedKeys {
            jwks_json: self.keys().current().jwks_json(),
            issuer: self.settings.issuer.clone(),
            audience: self.settings.audience.clone(),
            max_age: JWKS_MAX_AGE,
        }
    }
}
