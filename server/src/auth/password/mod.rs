//! Password policy, Argon2id hashing with capped stored parameters, and a bounded hashing pool.
//!
//! Three pieces, kept free of gRPC and Redis so they can be tested alone:
//!
//! - [`PasswordPolicy`] (`policy.rs`): what a new password must satisfy. `guide` (the default)
//!   is the platform hardening guide's composition rules; `nist` is NIST SP 800-63B rev 4
//!   (length plus blocklist, no composition rules). Both cap the length at 128 characters and
//!   refuse common passwords (ASVS 6.2.4).
//! - [`PasswordHasher`] (`hasher.rs`): Argon2id in PHC format with the guide's cost (64 MiB,
//!   t=3, p=4) instead of the `argon2` crate's lighter defaults, behind a semaphore so memory in
//!   flight is bounded (`permits × memory cost`), callers wait at most `queue_timeout` and are
//!   then told to retry, and the work runs on Tokio's blocking pool so async workers stay free
//!   for health checks and token verification. Stored hashes are untrusted input: a record whose
//!   cost exceeds fixed caps is refused *before* any work is done, so a tampered row cannot make
//!   one login take minutes or gigabytes. The cost settings ([`Argon2Params`]) and the caps are
//!   in `params.rs`; reading a stored record and the dummy record for unknown users, in `phc.rs`;
//!   the errors ([`HashError`], [`NewPasswordError`]), in `error.rs`.
//! - [`Secret`] (here): a password in memory, zeroed on drop and never printed.
//!
//! Typical use: registration and password change call [`PasswordHasher::hash_new`] (policy and
//! hash together, off the async workers); login calls [`PasswordHasher::verify`] for a known
//! user and [`PasswordHasher::verify_dummy`] for an unknown one, and rehashes with
//! [`PasswordHasher::hash`] when [`Verified::needs_rehash`] is set.

mod error;
mod hasher;
mod params;
mod phc;
mod policy;

use std::fmt;

use zeroize::Zeroizing;

pub use error::{HashError, NewPasswordError};
pub use hasher::{DEFAULT_QUEUE_TIMEOUT, HashPermit, PasswordHasher, Verified, default_permits};
pub use params::{
    Argon2Params, HasherConfigError, MAX_STORED_ITERATIONS, MAX_STORED_MEMORY_KIB,
    MAX_STORED_PARALLELISM,
};
pub use policy::{
    GUIDE_SPECIALS, MAX_PASSWORD_CHARS, PasswordPolicy, PolicyRule, PolicyViolation,
    SCORED_PREFIX_CHARS, UnknownPolicy,
};

/// A password in memory: zeroed when dropped, printed as `<redacted>` by `Debug`, and without
/// `Display`, `Clone` or serde so it cannot end up in a log or a response by accident.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Takes ownership of `value` without copying it. Move the request field in with
    /// `std::mem::take(&mut request.password)` so the only copy is the one that gets zeroed.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The password text, for the policy check and the hash. Do not format or log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from("Hunter2-Vq7#kLm2".to_owned());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s:#?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
        assert_eq!(s.expose(), "Hunter2-Vq7#kLm2");
    }

    #[test]
    fn secret_takes_the_string_without_copying() {
        let text = "Vq7#kLm2!xRw".to_owned();
        let ptr = text.as_ptr();
        let s = Secret::new(text);
        assert_eq!(s.expose().as_ptr(), ptr);
    }
}
