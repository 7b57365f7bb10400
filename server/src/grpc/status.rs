//! The one place domain errors become gRPC statuses; each arm says whether a caller may retry.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::ratelimit::RateLimitError;

impl From<RateLimitError> for Status {
    fn from(e: RateLimitError) -> Self {
        match &e {
            // Not retryable: the same request fails the same way. BadRequest names the field.
            RateLimitError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                e.to_string(),
                ErrorDetails::with_bad_request_violation(field.clone(), reason.clone()),
            ),
            // Retryable: the store is down or slow; it recovers without intervention.
            RateLimitError::StoreUnavailable(_) => store_unavailable(e.to_string()),
            // Not retryable by the caller: a bug or corrupt data, logged where it happened.
            RateLimitError::Store(_) => Status::internal(e.to_string()),
        }
    }
}

/// `ErrorInfo.domain` of every Portcullis error.
pub const ERROR_DOMAIN: &str = "portcullis";

/// The `RetryInfo` delay of a store that is down or slow: long enough that every client's
/// retry does not land on a store that is reconnecting within the same few milliseconds, short
/// enough that a blip (a reconnect, a failover's promotion) costs a caller little. Clients
/// back off further themselves when retries keep failing.
pub const STORE_RETRY_AFTER: Duration = Duration::from_millis(200);

/// UNAVAILABLE with `ErrorInfo` `STORE_UNAVAILABLE` and `RetryInfo` [`STORE_RETRY_AFTER`].
fn store_unavailable(message: String) -> Status {
    with_reason(
        Code::Unavailable,
        message,
        "STORE_UNAVAILABLE",
        HashMap::new(),
        Some(STORE_RETRY_AFTER),
    )
}

/// A status with an `ErrorInfo` reason and, when given, a `RetryInfo` delay.
fn with_reason(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
    retry_after: Option<Duration>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, message, details)
}

fn bad_request(message: String, field: &str, reason: String) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        let none = HashMap::new;
        match e {
            // Not retryable: the same request fails the same way.
            AuthError::InvalidArgument { field, reason } => bad_request(message, &field, reason),
            AuthError::WeakPassword { field, violation } => {
                let rule = violation.rule.as_str().to_owned();
                let mut details =
                    ErrorDetails::with_bad_request_violation(field, violation.to_string());
                details.set_error_info("WEAK_PASSWORD", ERROR_DOMAIN, [("rule".to_owned(), rule)]);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            AuthError::PasswordReused => bad_request(
                message,
                "new_password",
                "must differ from the current password".into(),
            ),
            // Not retryable with the same credentials. One reason for unknown user, wrong
            // password and (unless revealed) a locked account: nothing to enumerate.
            AuthError::InvalidCredentials => with_reason(
                Code::Unauthenticated,
                message,
                "INVALID_CREDENTIALS",
                none(),
                None,
            ),
            // Retryable after the lock ends (RetryInfo), or after an admin unlocks.
            AuthError::AccountLocked { retry_after } => with_reason(
                Code::Unauthenticated,
                message,
                "ACCOUNT_LOCKED",
                none(),
                retry_after,
            ),
            // Retryable after the hint.
            AuthError::Throttled { retry_after } => with_reason(
                Code::ResourceExhausted,
                message,
                "LOGIN_THROTTLED",
                none(),
                Some(retry_after),
            ),
            // Retryable after the hint: hashing capacity frees up as calls finish.
            AuthError::Overloaded { retry_after } => with_reason(
                Code::ResourceExhausted,
                message,
                "HASHING_OVERLOADED",
                none(),
                Some(retry_after),
            ),
            // Not retryable: the caller needs a new token (log in or refresh).
            AuthError::InvalidToken(problem) => with_reason(
                Code::Unauthenticated,
                message,
                "INVALID_TOKEN",
                [("problem".to_owned(), problem.reason().to_owned())].into(),
                None,
            ),
            // Not retryable: a refresh token whose secret is not its session's.
            AuthError::WrongRefreshSecret => with_reason(
                Code::Unauthenticated,
                message,
                "INVALID_TOKEN",
                [("problem".to_owned(), "REFRESH_TOKEN_MISMATCH".to_owned())].into(),
                None,
            ),
            // Retryable, on another replica at once or here after the hint: this replica has
            // not read the revocation feed yet.
            AuthError::RevocationsNotLoaded { retry_after } => with_reason(
                Code::Unavailable,
                message,
                "REVOCATIONS_NOT_LOADED",
                none(),
                Some(retry_after),
            ),
            // Retryable after the hint, here or on another replica.
            AuthError::TooManySubscribers { retry_after } => with_reason(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_SUBSCRIBERS",
                none(),
                Some(retry_after),
            ),
            // Retryable at once: resubscribe with the last cursor (nothing is lost).
            AuthError::SubscriberTooSlow { missed } => with_reason(
                Code::Aborted,
                message,
                "SUBSCRIBER_TOO_SLOW",
                [("missed".to_owned(), missed.to_string())].into(),
                Some(Duration::ZERO),
            ),
            // Not retryable: the session is over; log in again.
            AuthError::SessionEnded | AuthError::RefreshTokenReused => with_reason(
                Code::Unauthenticated,
                message,
                "SESSION_ENDED",
                none(),
                None,
            ),
            // Not retryable with this token.
            AuthError::InsufficientScope => with_reason(
                Code::PermissionDenied,
                message,
                "INSUFFICIENT_SCOPE",
                none(),
                None,
            ),
            // Not retryable with this token.
            AuthError::InsufficientRole => with_reason(
                Code::PermissionDenied,
                message,
                "INSUFFICIENT_ROLE",
                none(),
                None,
            ),
            // Not retryable.
            AuthError::UsernameTaken => Status::already_exists(message),
            AuthError::NotFound => Status::not_found(message),
            // Retryable: the store is down or slow and recovers on its own.
            AuthError::Store(store) if store.transient => store_unavailable(message),
            // Not retryable by the caller: a bug or corrupt data, logged where it happened.
            AuthError::Store(_) | AuthError::Internal => Status::internal("internal error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::{PolicyRule, PolicyViolation};
    use crate::auth::store::StoreError;
    use crate::auth::tokens::TokenError;

    /// Whether a status carries `RetryInfo`.
    fn retry_info(status: &Status) -> Option<Duration> {
        status
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
    }

    fn reason(status: &Status) -> Option<String> {
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
    }

    /// The codes a client may retry (AccountLocked retries once its lock ends; ABORTED is a
    /// dropped stream, resumed from its cursor).
    fn retryable(code: Code) -> bool {
        matches!(
            code,
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted
        )
    }

    #[test]
    fn every_auth_error_carries_retry_info_iff_retryable() {
        let second = Duration::from_secs(1);
        let cases: Vec<(AuthError, bool)> = vec![
            (
                AuthError::InvalidArgument {
                    field: "f".into(),
                    reason: "r".into(),
                },
                false,
            ),
            (AuthError::InvalidCredentials, false),
            (AuthError::AccountLocked { retry_after: None }, false),
            (
                AuthError::AccountLocked {
                    retry_after: Some(second),
                },
                true,
            ),
            (
                AuthError::Throttled {
                    retry_after: second,
                },
                true,
            ),
            (
                AuthError::Overloaded {
                    retry_after: second,
                },
                true,
            ),
            (
                AuthError::WeakPassword {
                    field: "new_password",
                    violation: PolicyViolation {
                        rule: PolicyRule::TooShort,
                        message: "short".into(),
                    },
                },
                false,
            ),
            (AuthError::PasswordReused, false),
            (AuthError::InvalidToken(TokenError::Malformed), false),
            (AuthError::WrongRefreshSecret, false),
            (AuthError::InsufficientScope, false),
            (AuthError::InsufficientRole, false),
            (
                AuthError::RevocationsNotLoaded {
                    retry_after: second,
                },
                true,
            ),
            (
                AuthError::TooManySubscribers {
                    retry_after: second,
                },
                true,
            ),
            (AuthError::SubscriberTooSlow { missed: 3 }, true),
            (AuthError::SessionEnded, false),
            (AuthError::RefreshTokenReused, false),
            (AuthError::UsernameTaken, false),
            (AuthError::NotFound, false),
            (AuthError::Store(StoreError::transient("down")), true),
            (AuthError::Store(StoreError::permanent("broken")), false),
            (AuthError::Internal, false),
        ];
        for (error, expected) in cases {
            let name = format!("{error:?}");
            let status = Status::from(error);
            assert_eq!(retry_info(&status).is_some(), expected, "{name}");
            // A locked account is UNAUTHENTICATED yet retryable once its lock ends; every
            // other retryable status has a retryable code.
            if !name.starts_with("AccountLocked") {
                assert_eq!(retryable(status.code()), expected, "{name}");
            }
        }
    }

    #[test]
    fn every_rate_limit_error_carries_retry_info_iff_retryable() {
        let cases = [
            (
                RateLimitError::InvalidArgument {
                    field: "f".into(),
                    reason: "r".into(),
                },
                false,
            ),
            (
                RateLimitError::StoreUnavailable(StoreError::transient("slow")),
                true,
            ),
            (
                RateLimitError::Store(StoreError::permanent("broken")),
                false,
            ),
        ];
        for (error, expected) in cases {
            let name = format!("{error:?}");
            let status = Status::from(error);
            assert_eq!(retry_info(&status).is_some(), expected, "{name}");
            assert_eq!(retryable(status.code()), expected, "{name}");
        }
    }

    #[test]
    fn an_unavailable_store_says_so_with_a_short_delay() {
        for status in [
            Status::from(AuthError::Store(StoreError::transient("down"))),
            Status::from(RateLimitError::StoreUnavailable(StoreError::transient(
                "down",
            ))),
        ] {
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(retry_info(&status), Some(STORE_RETRY_AFTER));
            assert_eq!(reason(&status).as_deref(), Some("STORE_UNAVAILABLE"));
            assert_eq!(
                status.get_error_details().error_info().unwrap().domain,
                ERROR_DOMAIN
            );
        }
    }
}
