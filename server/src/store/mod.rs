//! Where counters and runtime policies live: the store traits, and the memory and Redis
//! implementations chosen by configuration.

/// Forwards a call on [`AnyStore`] to the chosen store, timing it for the store metrics
/// (`op` is the method's name), in a debug-level span `store.<op>` when the call is part of
/// a span (an RPC's; background polls outside any span would each start a trace of their
/// own). When neither traces nor debug logs are on, only a global level check is added.
macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        let span = if tracing::level_enabled!(tracing::Level::DEBUG)
            && !tracing::Span::current().is_none()
        {
            tracing::debug_span!(
                concat!("store.", stringify!($method)),
                otel.kind = "client",
                db.system.name = match $self {
                    AnyStore::Memory(_) => "memory",
                    AnyStore::Redis(_) => "redis",
                },
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        tracing::Instrument::instrument(
            async {
                let started = std::time::Instant::now();
                let result = match $self {
                    AnyStore::Memory(s) => s.$method($($arg),*).await,
                    AnyStore::Redis(s) => s.$method($($arg),*).await,
                };
                crate::telemetry::metrics::store_call(stringify!($method), started, &result);
                if result.is_err() {
                    tracing::Span::current().record("otel.status_code", "error");
                }
                result
            },
            span,
        )
        .await
    }};
}

pub mod auth;
pub mod memory;
pub mod redis;

use std::future::Future;

use crate::ratelimit::gcra::{GcraParams, KeyOutcome};
use crate::ratelimit::policy::PolicyOverride;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// One limit to decide within a batch.
#[derive(Debug, Clone)]
pub struct LimitRequest {
    /// The counter key (see `keys`).
    pub key: String,
    /// The limit's GCRA parameters.
    pub gcra: GcraParams,
    /// Units to take.
    pub cost: u64,
    /// False for shadow-mode limits: they are counted and reported, but their denial does not
    /// stop the other limits of the batch from being taken.
    pub enforced: bool,
}

/// The outcome of a batch: every limit is taken, or none is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The store's clock at the decision, µs since the Unix epoch (Redis `TIME` on Redis).
    pub now_us: u64,
    /// True when every enforced limit fitted and all allowed costs were taken.
    pub committed: bool,
    /// One outcome per request, in order. When not committed, allowed limits report the
    /// state before the request (nothing was taken).
    pub keys: Vec<KeyOutcome>,
}

/// A store failure. `transient` says whether retrying later may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store error: {message}")]
pub struct StoreError {
    /// What failed, without secrets (connection URLs are never included).
    pub message: String,
    /// True for timeouts and connection loss; false for protocol or data errors.
    pub transient: bool,
}

impl StoreError {
    /// A failure that may pass (timeout, lost connection).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }

    /// A failure that retrying will not fix (malformed data, script error).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

/// Runtime policy overrides, versioned so replicas notice changes cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideSnapshot {
    /// Increases on every change.
    pub version: u64,
    /// Every runtime override.
    pub overrides: Vec<PolicyOverride>,
}

/// The rate-limit half of a store: atomic multi-key GCRA decisions and runtime overrides.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides a batch all-or-nothing: if any enforced limit is over, nothing is taken.
    fn decide(
        &self,
        batch: &[LimitRequest],
    ) -> impl Future<Output = Result<BatchOutcome, StoreError>> + Send;

    /// Stores a runtime override (replacing one for the same tenant and resource).
    fn set_override(
        &self,
        policy: &PolicyOverride,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a runtime override; false when there was none.
    fn delete_override(
        &self,
        tenant: &str,
        resource: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The overrides, or `None` when the version is still `known_version`.
    fn load_overrides(
        &self,
        known_version: Option<u64>,
    ) -> impl Future<Output = Result<Option<OverrideSnapshot>, StoreError>> + Send;

    /// True when the store is across the network, where a local cache of denials saves
    /// round trips (in memory it would only duplicate the counters).
    fn is_remote(&self) -> bool;
}

/// The store chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// In-process, for a single replica.
    Memory(std::sync::Arc<MemoryStore>),
    /// Redis or Redis Cluster, shared by replicas.
    Redis(RedisStore),
}

impl RateLimitStore for AnyStore {
    async fn decide(&self, batch: &[LimitRequest]) -> Result<BatchOutcome, StoreError> {
        delegate!(self, decide(batch))
    }

    async fn set_override(&self, policy: &PolicyOverride) -> Result<(), StoreError> {
        delegate!(self, set_override(policy))
    }

    async fn delete_override(
        &self,
        tenant: &str,
        resource: Option<&str>,
    ) -> Result<bool, StoreError> {
        delegate!(self, delete_override(tenant, resource))
    }

    async fn load_overrides(
        &self,
        known: Option<u64>,
    ) -> Result<Option<OverrideSnapshot>, StoreError> {
        delegate!(self, load_overrides(known))
    }

    fn is_remote(&self) -> bool {
        match self {
            Self::Memory(s) => s.is_remote(),
            Self::Redis(s) => s.is_remote(),
        }
    }
}

/// Encodes an override for storage as `rate period_us burst`; shared by the stores that
/// serialise overrides.
pub(crate) fn encode_limit(limit: &crate::ratelimit::policy::Limit) -> String {
    format!(
        "{} {} {}",
        limit.rate(),
        limit.period().as_micros(),
        limit.burst()
    )
}

/// The inverse of [`encode_limit`].
pub(crate) fn decode_limit(text: &str) -> Result<crate::ratelimit::policy::Limit, StoreError> {
    let bad = || StoreError::permanent(format!("malformed stored limit {text:?}"));
    let mut parts = text.split(' ').map(|p| p.parse::<u64>().map_err(|_| bad()));
    let (Some(rate), Some(period_us), Some(burst), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    crate::ratelimit::policy::Limit::new(
        rate?,
        std::time::Duration::from_micros(period_us?),
        burst?,
    )
    .map_err(|e| StoreError::permanent(format!("stored limit {text:?} is invalid: {e}")))
}
