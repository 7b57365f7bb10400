//! The one place domain errors become gRPC statuses; each arm says whether a caller may retry.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
            RateLimitError::StoreUnavailable(_) => Status::unavailable(e.to_string()),
            // Not retryable by the caller: a bug or corrupt data, logged where it happened.
            RateLimitError::Store(_) => Status::internal(e.to_string()),
        }
    }
}
