//! gRPC front: thin handlers that unpack requests, call the domain, and convert once.

pub mod admin;
pub mod admin_guard;
pub mod auth;
pub mod envoy;
pub mod ratelimit;
pub mod status;

use std::time::Duration;

/// A protobuf duration from a std one.
pub(crate) fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or_default(),
    }
}

/// A std duration from a protobuf one; negative or malformed durations are rejected.
pub(crate) fn from_proto_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Duration, crate::ratelimit::RateLimitError> {
    let invalid = |reason: &str| crate::ratelimit::RateLimitError::InvalidArgument {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    let d = d.ok_or_else(|| invalid("is required"))?;
    let secs = u64::try_from(d.seconds).map_err(|_| invalid("must not be negative"))?;
    let nanos = u32::try_from(d.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| invalid("has nanos outside 0..1e9"))?;
    Ok(Duration::new(secs, nanos))
}
