//! Password hashing errors: [`HashError`] (hash or verify) and [`NewPasswordError`] (new password).

use std::time::Duration;

use super::policy::PolicyViolation;

/// Why a hash or verify did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Every permit stayed busy for the whole `queue_timeout`. **Retryable** after about
    /// `retry_after`; map to `UNAVAILABLE`/`RESOURCE_EXHAUSTED` with a retry hint. It says
    /// nothing about the password, so it must not count as a failed login.
    #[error("password hashing is overloaded; retry after {retry_after:?}")]
    Overloaded {
        /// A hint: the recent hash time multiplied by the number of rounds the queue needs.
        retry_after: Duration,
    },
    /// The stored hash is malformed, not Argon2id, or costs more than the caps allow; it was
    /// **not** evaluated. **Not retryable**: the record needs repair (or was tampered with), so
    /// alert and treat the login as failed. The reason never quotes the stored string.
    #[error("stored password hash refused: {0}")]
    UntrustedHash(String),
    /// The OS random generator, the allocator or a hashing thread failed. **Retryable** with
    /// backoff; usually a symptom of memory pressure or shutdown.
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Why [`PasswordHasher::hash_new`](super::PasswordHasher::hash_new) produced no hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewPasswordError {
    /// The password breaks the policy: tell the user which rule ([`PolicyViolation::rule`]).
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// The hash could not be made; see [`HashError`] for which variants may be retried.
    #[error(transparent)]
    Hash(#[from] HashError),
}
