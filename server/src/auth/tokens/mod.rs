//! Access tokens: a rotating key ring (HS256, Ed25519), JWT issue and verify, and the JWKS.

mod jwt;
mod key;
mod key_files;
mod key_set_file;
mod keyring;
mod reloading;
#[cfg(test)]
mod tests;

pub use jwt::{
    AccessClaims, IssueRequest, IssueSettings, IssuedToken, MAX_LEEWAY, MAX_TOKEN_LEN, TOKEN_TYPE,
    TokenError, VerifyExpectations,
};
pub use key::{Key, KeyAlgorithm, KeyRingError, KeyState, MIN_HS256_SECRET_LEN};
pub use keyring::{ENV_FILE_SUFFIX, ENV_SECRET, ENV_SECRET_OLD, KeyRing};
pub use reloading::ReloadingKeyRing;
