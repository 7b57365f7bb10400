//! Verification by the server's `VerifyToken`: the fallback while the local view is stale,
//! and the whole of [`super::Mode::Remote`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_proto::pb;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use super::{Principal, TokenProblem, VerifyError};

/// Asks the server whether `token` is valid (without demands: the caller checks those).
pub(super) async fn verify_token(
    channel: &Channel,
    token: &str,
    timeout: Duration,
) -> Result<Principal, VerifyError> {
    let mut request = tonic::Request::new(pb::VerifyTokenRequest {
        access_token: token.to_owned(),
        ..Default::default()
    });
    request.set_timeout(timeout);
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    let answer = tokio::time::timeout(timeout, client.verify_token(request))
        .await
        .map_err(|_| {
            VerifyError::Unavailable(format!("VerifyToken: no answer within {timeout:?}"))
        })?;
    match answer {
        Ok(response) => Ok(principal(response.into_inner())),
        Err(status) => Err(refusal(&status)),
    }
}

fn principal(r: pb::VerifyTokenResponse) -> Principal {
    let expires_at = r
        .expires_at
        .map(|t| UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0)))
        .unwrap_or(UNIX_EPOCH);
    Principal {
        user_id: r.user_id,
        tenant_id: r.tenant_id,
        session_id: r.session_id,
        roles: r.roles,
        scopes: r.scopes,
        expires_at: expires_at.max(SystemTime::UNIX_EPOCH),
        key_id: r.key_id,
    }
}

/// What a refusal from the server means, from its `ErrorInfo` reason.
fn refusal(status: &tonic::Status) -> VerifyError {
    let details = status.get_error_details();
    let info = details.error_info();
    let reason = info.map(|i| i.reason.as_str()).unwrap_or_default();
    let problem = info
        .and_then(|i| i.metadata.get("problem"))
        .map(String::as_str)
        .unwrap_or_default();
    match (status.code(), reason) {
        (Code::Unauthenticated, "SESSION_ENDED") => VerifyError::SessionEnded,
        (Code::Unauthenticated, "INVALID_TOKEN") => VerifyError::Invalid(token_problem(problem)),
        (Code::PermissionDenied, "INSUFFICIENT_SCOPE") => VerifyError::InsufficientScope,
        (Code::PermissionDenied, "INSUFFICIENT_ROLE") => VerifyError::InsufficientRole,
        (Code::InvalidArgument, _) => VerifyError::Invalid(TokenProblem::Malformed),
        (code, _) => VerifyError::Unavailable(format!("VerifyToken answered {code:?}")),
    }
}

/// The server's `problem` metadata (its token error reasons) as a [`TokenProblem`].
fn token_problem(problem: &str) -> TokenProblem {
    match problem {
        "TOKEN_UNKNOWN_KEY" => TokenProblem::UnknownKey,
        "TOKEN_ALGORITHM_MISMATCH" => TokenProblem::AlgorithmMismatch,
        "TOKEN_WRONG_TYPE" => TokenProblem::WrongType,
        "TOKEN_BAD_SIGNATURE" => TokenProblem::BadSignature,
        "TOKEN_WRONG_ISSUER" => TokenProblem::WrongIssuer,
        "TOKEN_WRONG_AUDIENCE" => TokenProblem::WrongAudience,
        "TOKEN_EXPIRED" => TokenProblem::Expired,
        "TOKEN_NOT_YET_VALID" => TokenProblem::NotYetValid,
        "TOKEN_FORBIDDEN_HEADER" => TokenProblem::ForbiddenHeader,
        _ => TokenProblem::Malformed,
    }
}
