//! Typed Rust client for Portcullis: [`Portcullis`], a handle balanced over the replicas with
//! deadlines, retries, typed errors and metrics; and the older [`PortcullisClient`] wrapper.
//!
//! ```no_run
//! # async fn demo() -> Result<(), portcullis_client::Error> {
//! use portcullis_client::{Portcullis, Reason};
//!
//! // Lazy: no connection is made until the first call.
//! let portcullis = Portcullis::builder()
//!     .dns("portcullis-headless.auth.svc.cluster.local", 50051)
//!     .admin_token_file("/var/run/secrets/portcullis/admin-token")
//!     .build()?;
//!
//! let decision = portcullis.check("acme", "search", "user-42", 1).await?;
//! if !decision.allowed {
//!     // answer 429 with decision.headers
//! }
//!
//! match portcullis.verify_token("eyJ…", Some("acme"), &["orders:read"], &[]).await {
//!     Ok(claims) => println!("user {}", claims.user_id),
//!     Err(e) if e.reason() == Some(&Reason::InsufficientScope) => { /* 403 */ }
//!     Err(e) if e.is_retryable() => { /* 503, Retry-After: e.retry_after() */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! # Replicas
//! [`PortcullisBuilder::endpoints`] (a static list) or [`PortcullisBuilder::dns`] (a headless
//! Service, resolved every [`resolve_every`](PortcullisBuilder::resolve_every)) feed tonic's
//! balanced channel (tower's power-of-two-choices). A background task probes each address
//! with a TCP connect at every resolution and right after a call met a connect error, and
//! keeps only the addresses that accept connections in the balancer (all of them when none
//! does, so calls fail fast with [`Error::Unavailable`]).
//!
//! # Deadlines and retries
//! Every call has a deadline by [`CallKind`] (Check/CheckMany/VerifyToken 250 ms, GetJwks 1 s,
//! Login/ChangePassword/CreateUser 10 s, Refresh/Logout 2 s, admin calls 5 s), retries
//! included, sent as `grpc-timeout` too. Attempts are spaced by exponential backoff with
//! jitter (backon), never less than the server's `RetryInfo`, and limited by a retry budget
//! (tower's `TpsBudget`) shared by the handle's clones. Idempotent calls (VerifyToken,
//! GetJwks, admin reads) are retried on `UNAVAILABLE` (a broken connection, the store, a replica
//! that has not loaded revocations). Every other call (Check, CheckMany: a timed-out Check may
//! have taken units; Refresh: a second one is reuse; Login, Logout, every write) is retried
//! only when the request was never sent: tonic wraps every failure to set up a connection in
//! [`tonic::ConnectError`], kept in the status's `source` chain, and requests are only
//! written to established connections. Deadlines are not retried (no time is left).
//!
//! # Metrics (through the `metrics` facade)
//! - `portcullis_client_calls_total{method, outcome}`: outcome `ok`, `refused` (an error
//!   status from the server), `unavailable`, `deadline`, `config` (and `error` for a stream
//!   that could not be opened);
//! - `portcullis_client_errors_total{method, reason}`: the `ErrorInfo` reason (e.g.
//!   `INVALID_CREDENTIALS`), else the code, `TRANSPORT` or `DEADLINE`;
//! - `portcullis_client_retries_total{method}`;
//! - `portcullis_client_call_duration_seconds{method}` (histogram, retries included).
//!
//! # Features
//! - `otel`: sends the current tracing span's OpenTelemetry context as `traceparent`
//!   ([`Portcullis::with_traceparent`] sets one explicitly without it);
//! - `testing`: [`testing::TestPortcullis`], an in-process server for tests.

#[cfg(feature = "axum")]
pub mod axum;
mod builder;
mod calls;
mod discovery;
mod error;
mod handle;
#[cfg(feature = "tower")]
pub mod layers;
pub mod metrics_names;
mod retry;
mod simple;
#[cfg(feature = "testing")]
pub mod testing;
mod trace;
#[cfg(feature = "verify")]
pub mod verify;

pub use builder::PortcullisBuilder;
pub use calls::Jwks;
pub use error::{ERROR_DOMAIN, Error, FieldViolation, Reason};
pub use handle::{CallKind, Portcullis};
pub use portcullis_proto::{envoy, pb};
pub use simple::{
    Certificate, ClientError, ClientTlsConfig, DEFAULT_TIMEOUT, Identity, PortcullisClient,
};
/// The gRPC status codes of [`Error::code`].
pub use tonic::Code;
