//! The typed error of every [`Portcullis`](crate::Portcullis) call, read from the status details.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// `ErrorInfo.domain` of Portcullis's errors; reasons of other domains are not read.
pub const ERROR_DOMAIN: &str = "portcullis";

/// Why Portcullis refused a call: the `ErrorInfo` reason (domain `portcullis`), typed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Unknown user, wrong password, or a locked account (unless the server reveals locks).
    InvalidCredentials,
    /// The account is locked; [`Error::retry_after`] says until when, when the lock is timed.
    AccountLocked,
    /// Too many logins from this client IP or tenant; retry after [`Error::retry_after`].
    LoginThrottled,
    /// The password hashers are saturated; retry after [`Error::retry_after`].
    HashingOverloaded,
    /// The token is bad; `problem` says how (e.g. `TOKEN_EXPIRED`, `REFRESH_TOKEN_MISMATCH`).
    InvalidToken {
        /// The server's `problem` metadata (empty if it sent none).
        problem: String,
    },
    /// The session was revoked or expired, or a refresh token was reused: log in again.
    SessionEnded,
    /// The token lacks a scope the call required.
    InsufficientScope,
    /// The token lacks a role the call required.
    InsufficientRole,
    /// The new password breaks a policy rule (`rule`, e.g. `too_short`).
    WeakPassword {
        /// The server's `rule` metadata.
        rule: String,
    },
    /// The replica has not read the revocation feed yet; another replica may answer.
    RevocationsNotLoaded,
    /// Too many failed admin authentications from this address.
    AdminAuthThrottled,
    /// The server's store is unreachable (`UNAVAILABLE` from the server without an
    /// `ErrorInfo`, the one case in which Portcullis sends that).
    StoreUnavailable,
    /// A reason this client does not know (a newer server).
    Other(String),
}

impl Reason {
    /// The reason from its `ErrorInfo.reason` text and metadata.
    fn parse(reason: &str, metadata: &std::collections::HashMap<String, String>) -> Reason {
        let meta = |key: &str| metadata.get(key).cloned().unwrap_or_default();
        match reason {
            "INVALID_CREDENTIALS" => Reason::InvalidCredentials,
            "ACCOUNT_LOCKED" => Reason::AccountLocked,
            "LOGIN_THROTTLED" => Reason::LoginThrottled,
            "HASHING_OVERLOADED" => Reason::HashingOverloaded,
            "INVALID_TOKEN" => Reason::InvalidToken {
                problem: meta("problem"),
            },
            "SESSION_ENDED" => Reason::SessionEnded,
            "INSUFFICIENT_SCOPE" => Reason::InsufficientScope,
            "INSUFFICIENT_ROLE" => Reason::InsufficientRole,
            "WEAK_PASSWORD" => Reason::WeakPassword { rule: meta("rule") },
            "REVOCATIONS_NOT_LOADED" => Reason::RevocationsNotLoaded,
            "ADMIN_AUTH_THROTTLED" => Reason::AdminAuthThrottled,
            other => Reason::Other(other.to_owned()),
        }
    }

    /// The reason as the server spells it (`STORE_UNAVAILABLE` for the reason without one).
    pub fn as_str(&self) -> &str {
        match self {
            Reason::InvalidCredentials => "INVALID_CREDENTIALS",
            Reason::AccountLocked => "ACCOUNT_LOCKED",
            Reason::LoginThrottled => "LOGIN_THROTTLED",
            Reason::HashingOverloaded => "HASHING_OVERLOADED",
            Reason::InvalidToken { .. } => "INVALID_TOKEN",
            Reason::SessionEnded => "SESSION_ENDED",
            Reason::InsufficientScope => "INSUFFICIENT_SCOPE",
            Reason::InsufficientRole => "INSUFFICIENT_ROLE",
            Reason::WeakPassword { .. } => "WEAK_PASSWORD",
            Reason::RevocationsNotLoaded => "REVOCATIONS_NOT_LOADED",
            Reason::AdminAuthThrottled => "ADMIN_AUTH_THROTTLED",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::Other(other) => other,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::InvalidToken { problem } if !problem.is_empty() => {
                write!(f, "INVALID_TOKEN ({problem})")
            }
            Reason::WeakPassword { rule } if !rule.is_empty() => {
                write!(f, "WEAK_PASSWORD ({rule})")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// One invalid field of a request (`google.rpc.BadRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field, e.g. `tenant_id` or `required_roles[3]`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// What went wrong in a call. The messages never carry tokens or passwords: the server's
/// messages name no secret, and the client adds only addresses and durations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error("Portcullis refused the call: {code:?}{}: {message}", reason.as_ref().map(|r| format!(" {r}")).unwrap_or_default())]
    Status {
        /// The gRPC code.
        code: Code,
        /// The `ErrorInfo` reason, when the server sent one (or [`Reason::StoreUnavailable`]).
        reason: Option<Reason>,
        /// The server's message.
        message: String,
        /// `RetryInfo`: the earliest a retry can succeed.
        retry_after: Option<Duration>,
        /// `BadRequest`: the invalid fields.
        field_violations: Vec<FieldViolation>,
    },
    /// No answer from any server: no connection could be made, or it broke during the call.
    #[error("Portcullis is unreachable: {message}")]
    Unavailable {
        /// The transport's message (addresses, OS errors).
        message: String,
        /// The request never left this process (a connect error), so it had no effect.
        never_sent: bool,
    },
    /// The call's deadline passed (here, or at the server).
    #[error("Portcullis did not answer within {deadline:?}")]
    DeadlineExceeded {
        /// The deadline of the call.
        deadline: Duration,
    },
    /// The handle's configuration is invalid (bad URL, unreadable certificate, token not a
    /// header value, no Tokio runtime).
    #[error("invalid Portcullis client configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// The error of a failed attempt, read from the status and its local source chain.
    pub(crate) fn from_status(status: &tonic::Status, deadline: Duration) -> Error {
        // A status made in this process (transport) carries its cause as `source`; one sent
        // by a server has none.
        let local = status.source().is_some();
        if status.code() == Code::DeadlineExceeded
            || (local && status.code() == Code::Cancelled && has_timeout(status))
        {
            return Error::DeadlineExceeded { deadline };
        }
        if local
            && matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            )
        {
            return Error::Unavailable {
                message: status.message().to_owned(),
                never_sent: never_sent(status),
            };
        }
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .filter(|info| info.domain == ERROR_DOMAIN)
            .map(|info| Reason::parse(&info.reason, &info.metadata))
            .or_else(|| (status.code() == Code::Unavailable).then_some(Reason::StoreUnavailable));
        let retry_after = details.retry_info().and_then(|r| r.retry_delay);
        let field_violations = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Error::Status {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
            retry_after,
            field_violations,
        }
    }

    /// The gRPC code (`UNAVAILABLE` for transport errors, `DEADLINE_EXCEEDED` for deadlines,
    /// `INVALID_ARGUMENT` for configuration).
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::InvalidConfig(_) => Code::InvalidArgument,
        }
    }

    /// The server's reason, if it gave one.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Error::Status { reason, .. } => reason.as_ref(),
            _ => None,
        }
    }

    /// The server's `RetryInfo` delay: retrying sooner fails the same way.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's `BadRequest` field violations (empty when it sent none).
    pub fn field_violations(&self) -> &[FieldViolation] {
        match self {
            Error::Status {
                field_violations, ..
            } => field_violations,
            _ => &[],
        }
    }

    /// Whether the same call may succeed later: unreachable servers, deadlines, an unavailable
    /// store or replica, and refusals that carry a `RetryInfo` delay (throttles, timed locks).
    /// Not whether it is *safe* to repeat: a timed-out Check may have taken its units.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::DeadlineExceeded { .. } => true,
            Error::Status {
                code, retry_after, ..
            } => *code == Code::Unavailable || retry_after.is_some(),
            Error::InvalidConfig(_) => false,
        }
    }

    /// The reason or code as a metrics label.
    pub(crate) fn label(&self) -> String {
        match self {
            Error::Status {
                reason: Some(reason),
                ..
            } => reason.as_str().to_owned(),
            Error::Status { code, .. } => format!("{code:?}"),
            Error::Unavailable { .. } => "TRANSPORT".to_owned(),
            Error::DeadlineExceeded { .. } => "DEADLINE".to_owned(),
            Error::InvalidConfig(_) => "CONFIG".to_owned(),
        }
    }
}

/// Whether the status came from tonic's own per-request timeout.
fn has_timeout(status: &tonic::Status) -> bool {
    chain(status).any(|e| e.is::<tonic::TimeoutExpired>())
}

/// Whether the request certainly never reached a server: tonic wraps every failure to
/// establish a connection (TCP connect, TLS handshake, HTTP/2 handshake) in
/// [`tonic::ConnectError`] and keeps it in the status's `source` chain; a request is only
/// written to an established connection, so such a failure means nothing was sent. An h2
/// `REFUSED_STREAM` (e.g. a stream past a GOAWAY) means the server did not process it
/// (RFC 9113, 8.7). Any other broken connection does not count: it may have been processed.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    chain(status).any(|e| {
        e.is::<tonic::ConnectError>()
            || e.downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// The status's source chain (not the status itself).
fn chain(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(status.source(), |e| (*e).source())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn reads_reason_retry_info_and_violations() {
        let mut details = ErrorDetails::with_error_info(
            "WEAK_PASSWORD",
            ERROR_DOMAIN,
            [("rule".to_owned(), "too_short".to_owned())],
        );
        details.set_retry_info(Some(Duration::from_secs(3)));
        details.add_bad_request_violation("new_password", "too short");
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "weak", details);
        let error = Error::from_status(&status, Duration::from_secs(1));
        assert_eq!(
            error.reason(),
            Some(&Reason::WeakPassword {
                rule: "too_short".into()
            })
        );
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(error.field_violations()[0].field, "new_password");
        assert_eq!(error.code(), Code::InvalidArgument);
    }

    #[test]
    fn unknown_reasons_and_other_domains() {
        let status = tonic::Status::with_error_details(
            Code::PermissionDenied,
            "no",
            ErrorDetails::with_error_info("NEW_THING", ERROR_DOMAIN, []),
        );
        let error = Error::from_status(&status, Duration::from_secs(1));
        assert_eq!(error.reason(), Some(&Reason::Other("NEW_THING".into())));
        let status = tonic::Status::with_error_details(
            Code::PermissionDenied,
            "no",
            ErrorDetails::with_error_info("INSUFFICIENT_SCOPE", "elsewhere", []),
        );
        assert_eq!(
            Error::from_status(&status, Duration::from_secs(1)).reason(),
            None
        );
    }

    #[test]
    fn plain_unavailable_from_the_server_is_the_store() {
        let error = Error::from_status(&tonic::Status::unavailable("down"), Duration::from_secs(1));
        assert_eq!(error.reason(), Some(&Reason::StoreUnavailable));
        assert!(error.is_retryable());
        assert!(!matches!(error, Error::Unavailable { .. }));
    }

    #[test]
    fn connect_errors_are_never_sent() {
        let connect = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let status = tonic::Status::from_error(Box::new(connect));
        let error = Error::from_status(&status, Duration::from_secs(1));
        assert!(
            matches!(
                error,
                Error::Unavailable {
                    never_sent: true,
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
