//! Why an authentication call failed, and how the errors of the parts it calls (ids, hashing,
//! the rate limiter, the store) become one.

use std::time::Duration;

use super::password::{HashError, NewPasswordError, PolicyViolation};
use super::store::StoreError;
use super::tokens::TokenError;
use crate::keys::InvalidId;
use crate::ratelimit::RateLimitError;

/// Why an authentication call failed. Messages never carry a password, token or hash.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the request.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Unknown user, wrong password, or (unless revealed) a locked account: one answer for all.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The account is locked (only with `reveal_lockout`).
    #[error("account locked")]
    AccountLocked {
        /// When a retry may succeed; `None` until an admin unlocks.
        retry_after: Option<Duration>,
    },
    /// Too many logins from this client or for this tenant; retry after the hint.
    #[error("too many login attempts")]
    Throttled {
        /// When a retry may be admitted.
        retry_after: Duration,
    },
    /// Password hashing is at capacity; retry after the hint.
    #[error("password hashing is overloaded")]
    Overloaded {
        /// A hint for the retry.
        retry_after: Duration,
    },
    /// The new password breaks the policy.
    #[error("{field}: {violation}")]
    WeakPassword {
        /// The request field that held the password.
        field: &'static str,
        /// The rule that failed.
        violation: PolicyViolation,
    },
    /// The new password equals the current one.
    #[error("new_password: must differ from the current password")]
    PasswordReused,
    /// The access token is not valid.
    #[error("invalid access token: {}", .0.reason())]
    InvalidToken(TokenError),
    /// A refresh token names a live session but carries a secret that is not the session's:
    /// forged from the session id every access token shows, or mistyped. Nothing was ended.
    #[error("invalid refresh token")]
    WrongRefreshSecret,
    /// The token's scope does not allow the call.
    #[error("the token's scope does not allow this call")]
    InsufficientScope,
    /// The token lacks a role the caller demanded.
    #[error("the token lacks a required role")]
    InsufficientRole,
    /// This replica has not yet read the revocation feed, so it cannot tell whether the
    /// token's session was revoked; another replica (or this one shortly) can.
    #[error("revocations not loaded yet; retry")]
    RevocationsNotLoaded {
        /// A hint for the retry.
        retry_after: Duration,
    },
    /// The session was revoked or has expired.
    #[error("session ended")]
    SessionEnded,
    /// This replica serves as many security-event subscribers as it may.
    #[error("too many security event subscribers on this replica; retry, perhaps on another")]
    TooManySubscribers {
        /// A hint for the retry.
        retry_after: Duration,
    },
    /// A security-event subscriber fell so far behind that events it had not read were
    /// dropped; it resubscribes with its last cursor.
    #[error("subscriber too slow: {missed} events dropped; resubscribe with the last cursor")]
    SubscriberTooSlow {
        /// Events dropped.
        missed: u64,
    },
    /// An already-used refresh token was presented: the session is now revoked.
    #[error("session ended")]
    RefreshTokenReused,
    /// The username is taken in this tenant.
    #[error("username already exists in this tenant")]
    UsernameTaken,
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a broken record (logged where it happened).
    #[error("internal error")]
    Internal,
}

impl From<InvalidId> for AuthError {
    fn from(e: InvalidId) -> Self {
        Self::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            other => {
                tracing::error!(error = %other, "password hashing failed");
                Self::Internal
            }
        }
    }
}

impl From<RateLimitError> for AuthError {
    fn from(e: RateLimitError) -> Self {
        match e {
            RateLimitError::InvalidArgument { field, reason } => {
                Self::InvalidArgument { field, reason }
            }
            RateLimitError::StoreUnavailable(e) | RateLimitError::Store(e) => Self::Store(e),
        }
    }
}

impl AuthError {
    /// The error a new password's problem means, for the request field `field`.
    pub(super) fn new_password(field: &'static str, e: NewPasswordError) -> Self {
        match e {
            NewPasswordError::Policy(violation) => Self::WeakPassword { field, violation },
            NewPasswordError::Hash(h) => h.into(),
        }
    }
}
