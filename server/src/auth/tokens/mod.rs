//! Access tokens: a rotating key ring (HS256, Ed25519), JWT issue and verify, and the JWKS.

mod jwt;
mod key_set_file;
mod keyring;
#[cfg(test)]
mod tests;

pub use jwt::{
    AccessClaims, IssueRequest, IssueSettings, IssuedToken, MAX_LEEWAY, MAX_TOKEN_LEN, TOKEN_TYPE,
    TokenError, VerifyExpectations,
};
pub use keyring::{
    ENV_FILE_SUFFIX, ENV_SECRET, ENV_SECRET_OLD, Key, KeyAlgorithm, KeyRing, KeyRingError,
    KeyState, MIN_HS256_SECRET_LEN, ReloadingKeyRing,
};
