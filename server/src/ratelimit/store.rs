//! What the limiter needs from a store: atomic multi-key GCRA decisions, runtime overrides,
//! and the error every store reports. The memory and Redis stores implement it.

use std::future::Future;

use super::gcra::{GcraParams, KeyOutcome};
use super::policy::PolicyOverride;

/// One limit to decide within a batch.
#[derive(Debug, Clone)]
pub struct LimitRequest {
    /// The counter key (see [`crate::keys`]).
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
    /// True when the store refused to hold a new key of the batch (its owner, or the store,
    /// holds as many live keys as it may): nothing was decided or taken, the per-key outcomes
    /// mean nothing, and the caller's fail mode decides. Only the memory store has such caps.
    pub key_limited: bool,
}

/// A store failure. `transient` says whether retrying later may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store error: {message}")]
pub struct StoreError {
    /// What failed, without secrets (connection URLs are never included).
    pub message: String,
    /// True for timeouts and connection loss; false for protocol or data errors.
    pub transient: bool,
    /// A short name for the sort of failure (`timeout`, `unavailable`, `error`, or what the
    /// store knows better, e.g. Redis's `WRONGPASS` or `OOM`): the log names it once per
    /// incident rather than repeating every message.
    pub kind: &'static str,
}

impl StoreError {
    /// A failure that may pass (timeout, lost connection).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
            kind: "unavailable",
        }
    }

    /// A failure that retrying will not fix (malformed data, script error).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
            kind: "error",
        }
    }

    /// The same failure, named `kind`.
    #[must_use]
    pub fn with_kind(self, kind: &'static str) -> Self {
        Self { kind, ..self }
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

    /// Forgets the counter `key` and, with `with_children`, every counter whose key begins
    /// with `key:` (the keys of one resource); returns how many were forgotten. Counters that
    /// are gone start again from a full burst. Redis replicas clear their deny caches within
    /// a policy refresh.
    fn reset_counters(
        &self,
        key: &str,
        with_children: bool,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// True when the store is across the network, where a local cache of denials saves
    /// round trips (in memory it would only duplicate the counters).
    fn is_remote(&self) -> bool;
}
