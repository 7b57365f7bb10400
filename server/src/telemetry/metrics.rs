//! Metric names, their labels, and the process-wide Prometheus recorder.
//!
//! The domain records through the `metrics` facade (a no-op until a recorder is installed),
//! so it depends on no exporter. Labels are fixed sets of words chosen here, never caller
//! input: no tenant id, user, key or path can grow the label space.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// gRPC calls by `method` (`/package.Service/Method`, or `other`) and `code`.
pub const RPC_REQUESTS: &str = "portcullis_rpc_requests_total";
/// gRPC call latency by `method`, seconds.
pub const RPC_DURATION: &str = "portcullis_rpc_duration_seconds";
/// Rate-limit decisions by `api` (`check`, `envoy`) and `outcome` (`allowed`, `denied`,
/// `denied_cached`, `fail_open`, `fail_closed`, `unavailable`, `key_limit`: a new key the
/// memory store's key caps refused, decided by the fail mode).
pub const RATELIMIT_DECISIONS: &str = "portcullis_ratelimit_decisions_total";
/// Store calls by `op` (the store method), seconds.
pub const STORE_DURATION: &str = "portcullis_store_duration_seconds";
/// Failed store calls by `op` and `kind` (`transient`: unreachable or slow; `permanent`).
pub const STORE_ERRORS: &str = "portcullis_store_errors_total";
/// Password hashes waiting for a permit.
pub const ARGON2_QUEUE_DEPTH: &str = "portcullis_argon2_queue_depth";
/// Hashes refused because no permit freed up within the queue timeout.
pub const ARGON2_REJECTIONS: &str = "portcullis_argon2_rejections_total";
/// Accounts locked by failed logins.
pub const LOCKOUTS: &str = "portcullis_lockouts_total";
/// Access-token verifications by `outcome` (`valid`, `revoked`, `insufficient_scope`,
/// `insufficient_role`, or the token problem, e.g. `TOKEN_EXPIRED`, `TOKEN_BAD_SIGNATURE`:
/// the `problem` of the INVALID_TOKEN error).
pub const TOKEN_VERIFICATIONS: &str = "portcullis_token_verifications_total";
/// Audit events by `action` and `outcome` (logins, refreshes, admin calls, …).
pub const AUTH_EVENTS: &str = "portcullis_auth_events_total";
/// JWT keys in force: 1 per (`kid`, `algorithm`, `state`), 0 once removed.
pub const JWT_KEYS: &str = "portcullis_jwt_keys";
/// TLS handshakes on the gRPC port by `outcome` (`ok`, `failed`, `timeout`).
pub const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";
/// Connections closed on accept because `transport.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "portcullis_connections_refused_total";
/// Certificate reloads by `outcome` (`ok`, `failed`: the previous certificate stays).
pub const TLS_RELOADS: &str = "portcullis_tls_reloads_total";

/// Latency buckets, seconds: a rate-limit decision takes tens of microseconds to a few
/// milliseconds; a login hundreds of milliseconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The process's recorder, installed on first use (tests run several servers in one process;
/// they share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// HELP texts, so a scrape explains itself.
fn describe() {
    metrics::describe_counter!(RPC_REQUESTS, "gRPC calls by method and status code");
    metrics::describe_histogram!(RPC_DURATION, metrics::Unit::Seconds, "gRPC call latency");
    metrics::describe_counter!(
        RATELIMIT_DECISIONS,
        "Rate-limit decisions by API and outcome"
    );
    metrics::describe_histogram!(STORE_DURATION, metrics::Unit::Seconds, "Store call latency");
    metrics::describe_counter!(STORE_ERRORS, "Failed store calls by operation and kind");
    metrics::describe_gauge!(ARGON2_QUEUE_DEPTH, "Password hashes waiting for a permit");
    metrics::describe_counter!(ARGON2_REJECTIONS, "Hashes refused: the queue timed out");
    metrics::describe_counter!(LOCKOUTS, "Accounts locked after failed logins");
    metrics::describe_counter!(TOKEN_VERIFICATIONS, "Access-token verifications by outcome");
    metrics::describe_counter!(AUTH_EVENTS, "Audit events by action and outcome");
    metrics::describe_gauge!(JWT_KEYS, "JWT keys in force (1) or removed (0)");
    metrics::describe_counter!(TLS_HANDSHAKES, "TLS handshakes on the gRPC port by outcome");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "connections closed on accept because the connection limit was reached"
    );
    metrics::describe_counter!(TLS_RELOADS, "Certificate reloads by outcome");
}

/// The canonical name of a gRPC status code, as Prometheus label value.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
