//! The names of the metrics the client records through the `metrics` facade.

/// Counter of calls by `method` and `outcome`.
pub const CALLS: &str = "portcullis_client_calls_total";
/// Counter of failed calls by `method` and `reason`.
pub const ERRORS: &str = "portcullis_client_errors_total";
/// Counter of retries by `method`.
pub const RETRIES: &str = "portcullis_client_retries_total";
/// Histogram of call durations in seconds by `method`, retries included.
pub const DURATION: &str = "portcullis_client_call_duration_seconds";
