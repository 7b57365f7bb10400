//! The limiter and its `Check` path: validates a request, picks its policy, answers from the
//! deny cache or asks the store, and falls back to the configured fail mode when the store does
//! not answer in time. Runtime overrides and the service's own throttles go through it too; the
//! Envoy path is in `envoy.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use super::deny_cache::DenyCache;
use super::envoy_config::EnvoyConfig;
use super::gcra::{KeyOutcome, Verdict};
use super::headers::{HeaderInput, rate_limit_headers};
use super::policy::{
    AppliedPolicy, InvalidLimit, Limit, PolicyOverride, PolicySource, PolicyTable,
};
use super::store::{BatchOutcome, LimitRequest, RateLimitStore, StoreError};
use crate::clock::unix_time;
use crate::keys::{self, DEFAULT_RESOURCE, InvalidId};
use crate::periodic::{OutageMessages, run_every};
use crate::telemetry::metrics::RATELIMIT_DECISIONS;

/// What to answer when the store does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Admit (availability over protection).
    Open,
    /// Deny (protection over availability).
    Closed,
    /// Answer with an error and let the caller decide (Envoy's `failure_mode_deny`).
    Unavailable,
}

impl FailMode {
    /// The decision-metric outcome of a decision this mode made.
    pub(super) const fn outcome(self) -> &'static str {
        match self {
            Self::Open => "fail_open",
            Self::Closed => "fail_closed",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Knobs of the limiter.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    /// The longest a caller waits for the store before the fail mode decides.
    pub store_timeout: Duration,
    /// Fail mode for `Check` (`Unavailable` answers with an error).
    pub check_fail_mode: FailMode,
    /// Fail mode for Envoy's `ShouldRateLimit`.
    pub envoy_fail_mode: FailMode,
    /// Whether Envoy responses carry rate-limit headers.
    pub envoy_response_headers: bool,
    /// Upper bound of the local deny cache; 0 disables it.
    pub deny_cache_entries: usize,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            store_timeout: Duration::from_millis(100),
            check_fail_mode: FailMode::Closed,
            envoy_fail_mode: FailMode::Unavailable,
            envoy_response_headers: true,
            deny_cache_entries: 100_000,
        }
    }
}

/// Errors of the rate-limit domain; `grpc::status` maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// A request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the request.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The store did not answer in time and the fail mode says to report it.
    #[error("rate limit store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The store failed in a way retrying will not fix.
    #[error("rate limit store failed")]
    Store(#[source] StoreError),
}

impl From<InvalidId> for RateLimitError {
    fn from(e: InvalidId) -> Self {
        Self::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<InvalidLimit> for RateLimitError {
    fn from(e: InvalidLimit) -> Self {
        Self::InvalidArgument {
            field: e.field.to_owned(),
            reason: e.reason,
        }
    }
}

/// A `Check` request.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The tenant (required).
    pub tenant: &'a str,
    /// The resource ("" means `default`).
    pub resource: &'a str,
    /// The key within the resource ("" means the whole tenant).
    pub key: &'a str,
    /// Units to take (0 means 1).
    pub cost: u32,
}

/// Why a check was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Not enough units now.
    OverLimit,
    /// More than the burst: can never fit.
    CostExceedsBurst,
    /// The store did not answer and the fail mode is closed.
    StoreUnavailable,
    /// The store holds as many keys as the tenant (or in all) may, this key is new, and the
    /// fail mode is closed.
    KeyLimit,
}

/// The answer to a `Check`.
#[derive(Debug, Clone)]
pub struct CheckDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The policy that applied.
    pub policy: AppliedPolicy,
    /// The normalised resource (for header names).
    pub resource: String,
    /// Units free after the decision.
    pub remaining: u64,
    /// Time until a full burst is back.
    pub reset_after: Duration,
    /// When denied and a retry can succeed: the wait.
    pub retry_after: Option<Duration>,
    /// Why denied.
    pub deny_reason: Option<DenyReason>,
    /// True when the fail mode decided instead of the counter.
    pub degraded: bool,
    /// The decision's clock, µs since the Unix epoch.
    pub now_unix_us: u64,
}

impl CheckDecision {
    /// The decision a counter outcome means.
    pub(super) fn from_outcome(
        policy: AppliedPolicy,
        resource: &str,
        outcome: KeyOutcome,
        now_unix_us: u64,
    ) -> Self {
        let (deny_reason, retry_after) = match outcome.verdict {
            Verdict::Allowed => (None, None),
            Verdict::Denied { retry_after_us } => (
                Some(DenyReason::OverLimit),
                Some(Duration::from_micros(retry_after_us)),
            ),
            Verdict::CostExceedsBurst => (Some(DenyReason::CostExceedsBurst), None),
        };
        Self {
            allowed: deny_reason.is_none(),
            policy,
            resource: resource.to_owned(),
            remaining: outcome.remaining,
            reset_after: Duration::from_micros(outcome.reset_after_us),
            retry_after,
            deny_reason,
            degraded: false,
            now_unix_us,
        }
    }

    /// The HTTP headers describing this decision.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        rate_limit_headers(&HeaderInput {
            name: &self.resource,
            quota: self.policy.limit.rate(),
            window: self.policy.limit.period(),
            remaining: self.remaining,
            reset_after: self.reset_after,
            retry_after: self.retry_after,
            now_unix_us: self.now_unix_us,
        })
    }
}

/// The `api` label of `Check` decisions.
const CHECK: &str = "check";
/// Counts one decision by API and outcome.
pub(super) fn count_decision(api: &'static str, outcome: &'static str) {
    metrics::counter!(RATELIMIT_DECISIONS, "api" => api, "outcome" => outcome).increment(1);
}

/// Logs store trouble once per incident instead of once per request: timeouts and lost
/// connections alike, and errors the store answers with (refused authentication, `NOAUTH`,
/// `WRONGPASS`, `OOM`, `READONLY`, script errors), which at production rates would otherwise
/// bury the log. `portcullis_store_errors_total` still counts every failed call.
#[derive(Debug, Default)]
struct Incident {
    /// True from the first failure until the next success.
    open: AtomicBool,
    /// Failed store calls during the current incident.
    failures: AtomicU64,
}

impl Incident {
    fn failure(&self, error: &StoreError, settings: &LimiterSettings) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        // The kind (e.g. `WRONGPASS`, `OOM`, `timeout`) is what an operator searches for.
        if error.transient {
            tracing::warn!(
                kind = error.kind,
                error = %error,
                check_fail_mode = ?settings.check_fail_mode,
                envoy_fail_mode = ?settings.envoy_fail_mode,
                "rate limit store unavailable; deciding by fail mode until it recovers"
            );
        } else {
            tracing::error!(
                kind = error.kind,
                error = %error,
                "rate limit store refuses our calls; logged once until it answers again"
            );
        }
    }

    fn success(&self) {
        if self.open.load(Ordering::Relaxed) && self.open.swap(false, Ordering::AcqRel) {
            let failures = self.failures.swap(0, Ordering::Relaxed);
            tracing::info!(failures, "rate limit store recovered");
        }
    }
}

/// The rate-limit service core, generic over its store.
#[derive(Debug)]
pub struct Limiter<S> {
    /// Counters and runtime overrides.
    store: S,
    /// The policy table in force; swapped whole when runtime overrides change.
    pub(super) policies: ArcSwap<PolicyTable>,
    /// The config file's default and overrides, kept to rebuild the table.
    config_default: Limit,
    config_overrides: Vec<PolicyOverride>,
    /// The runtime-override version the table was built from; the lock also keeps two
    /// refreshes from racing each other.
    overrides_version: Mutex<Option<u64>>,
    /// Envoy descriptor → limit configuration.
    pub(super) envoy: EnvoyConfig,
    /// Keys known to be over their limit (remote stores only).
    pub(super) deny_cache: Option<DenyCache>,
    /// Timeouts and fail modes.
    pub(super) settings: LimiterSettings,
    /// Store trouble, logged once per incident.
    incident: Incident,
}

impl<S: RateLimitStore> Limiter<S> {
    /// A limiter over `store` with the config file's policies.
    pub fn new(
        store: S,
        default: Limit,
        config_overrides: Vec<PolicyOverride>,
        envoy: EnvoyConfig,
        settings: LimiterSettings,
    ) -> Self {
        let deny_cache = (store.is_remote() && settings.deny_cache_entries > 0)
            .then(|| DenyCache::new(settings.deny_cache_entries));
        Self {
            policies: ArcSwap::from_pointee(PolicyTable::new(default, &config_overrides, &[])),
            store,
            config_default: default,
            config_overrides,
            overrides_version: Mutex::new(None),
            envoy,
            deny_cache,
            settings,
            incident: Incident::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Reloads runtime overrides if they changed; true when the table was rebuilt.
    pub async fn refresh_policies(&self) -> Result<bool, RateLimitError> {
        let mut version = self.overrides_version.lock().await;
        let loaded = self
            .with_timeout(self.store.load_overrides(*version), false)
            .await?;
        let Some(snapshot) = loaded else {
            return Ok(false);
        };
        let table = PolicyTable::new(
            self.config_default,
            &self.config_overrides,
            &snapshot.overrides,
        );
        self.policies.store(Arc::new(table));
        *version = Some(snapshot.version);
        // Limits changed: cached denial deadlines may no longer hold.
        if let Some(cache) = &self.deny_cache {
            cache.clear();
        }
        Ok(true)
    }

    /// Refreshes runtime overrides every `every` until `stop` resolves, so each replica
    /// applies an admin change within that interval plus one store round trip.
    pub async fn refresh_policies_every(
        self: Arc<Self>,
        every: Duration,
        stop: impl Future<Output = ()>,
    ) {
        // The caller loaded the policies once before serving; the first reload is one period on.
        let messages = OutageMessages {
            failing: "cannot load runtime limit overrides; keeping the last ones",
            recovered: "runtime limit overrides reachable again",
        };
        run_every(every, every, stop, messages, || async {
            let loaded = self.refresh_policies().await.map(drop);
            if let Some(cache) = &self.deny_cache {
                cache.sweep(Instant::now());
            }
            loaded
        })
        .await;
    }

    /// The policy for (tenant, resource) as it applies now.
    pub fn policy_for(
        &self,
        tenant: &str,
        resource: &str,
    ) -> Result<AppliedPolicy, RateLimitError> {
        validate_target(tenant, resource)?;
        Ok(self
            .policies
            .load()
            .resolve(tenant, normalise_resource(resource)))
    }

    /// Stores a runtime override and applies it on this replica at once.
    pub async fn set_override(
        &self,
        tenant: &str,
        resource: &str,
        limit: Limit,
    ) -> Result<AppliedPolicy, RateLimitError> {
        validate_target(tenant, resource)?;
        let policy = PolicyOverride {
            tenant: tenant.to_owned(),
            resource: (!resource.is_empty()).then(|| resource.to_owned()),
            limit,
        };
        self.with_timeout(self.store.set_override(&policy), false)
            .await?;
        self.refresh_policies().await?;
        Ok(AppliedPolicy {
            limit,
            source: PolicySource::Runtime,
        })
    }

    /// Deletes a runtime override; false when there was none.
    pub async fn delete_override(
        &self,
        tenant: &str,
        resource: &str,
    ) -> Result<bool, RateLimitError> {
        validate_target(tenant, resource)?;
        let resource = (!resource.is_empty()).then_some(resource);
        let deleted = self
            .with_timeout(self.store.delete_override(tenant, resource), false)
            .await?;
        self.refresh_policies().await?;
        Ok(deleted)
    }

    /// Forgets the counters of (tenant, resource): of one key, or with an empty `key` of every
    /// key and the shared counter. They start again from a full burst. Returns how many
    /// counters were forgotten.
    pub async fn reset_counters(
        &self,
        tenant: &str,
        resource: &str,
        key: &str,
    ) -> Result<u64, RateLimitError> {
        validate_target(tenant, resource)?;
        keys::validate_id("key", key, false)?;
        let counter = keys::check_key(tenant, normalise_resource(resource), key);
        // Not under the decision timeout: a resource with many keys takes several steps.
        let forgotten = self
            .store
            .reset_counters(&counter, key.is_empty())
            .await
            .map_err(RateLimitError::StoreUnavailable)?;
        if let Some(cache) = &self.deny_cache {
            cache.clear();
        }
        Ok(forgotten)
    }

    /// Decides a `Check`.
    pub async fn check(&self, input: CheckInput<'_>) -> Result<CheckDecision, RateLimitError> {
        validate_target(input.tenant, input.resource)?;
        keys::validate_id("key", input.key, false)?;
        let resource = normalise_resource(input.resource);
        let cost = u64::from(input.cost.max(1));
        let policy = self.policies.load().resolve(input.tenant, resource);
        let key = keys::check_key(input.tenant, resource, input.key);
        let decision = |outcome: KeyOutcome, now_unix_us| {
            CheckDecision::from_outcome(policy, resource, outcome, now_unix_us)
        };

        let batch = [LimitRequest {
            key,
            gcra: policy.limit.gcra(),
            cost,
            enforced: true,
        }];
        let sent_at = Instant::now();
        let cached = self
            .deny_cache
            .as_ref()
            .and_then(|c| c.lookup(&batch[0], sent_at));
        if let Some(hit) = cached {
            count_decision(CHECK, "denied_cached");
            return Ok(decision(hit.into(), unix_time().as_micros() as u64));
        }
        let degraded = |reason: DenyReason, error: RateLimitError| {
            let allowed = match self.settings.check_fail_mode {
                FailMode::Open => true,
                FailMode::Closed => false,
                FailMode::Unavailable => return Err(error),
            };
            let nothing_known = KeyOutcome {
                verdict: Verdict::Allowed,
                remaining: 0,
                reset_after_us: 0,
            };
            Ok(CheckDecision {
                allowed,
                deny_reason: (!allowed).then_some(reason),
                degraded: true,
                ..decision(nothing_known, unix_time().as_micros() as u64)
            })
        };
        match self.decide(&batch).await {
            Ok(outcome) if outcome.key_limited => {
                count_decision(CHECK, "key_limit");
                degraded(DenyReason::KeyLimit, key_limit_error())
            }
            Ok(outcome) => {
                self.remember_denials(&batch, &outcome, sent_at);
                let [key_outcome] = outcome.keys[..] else {
                    return Err(RateLimitError::Store(StoreError::permanent(
                        "store answered for a different number of limits",
                    )));
                };
                let verdict = if key_outcome.verdict == Verdict::Allowed {
                    "allowed"
                } else {
                    "denied"
                };
                count_decision(CHECK, verdict);
                Ok(decision(key_outcome, outcome.now_us))
            }
            Err(e) => {
                count_decision(CHECK, self.settings.check_fail_mode.outcome());
                degraded(DenyReason::StoreUnavailable, e)
            }
        }
    }

    /// Takes one unit from every `(key, limit)`, outside the policy table: the service's own
    /// throttles (logins), decided together in one store call, all or nothing, so a refusal by
    /// one charges none of the others. `Ok(None)` admits, `Ok(Some(wait))` refuses until
    /// `wait` (the longest of the refusing limits' waits) has passed. A store failure is an
    /// error whatever the fail modes say: the caller decides.
    pub async fn throttle(
        &self,
        limits: &[(String, Limit)],
    ) -> Result<Option<Duration>, RateLimitError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let batch: Vec<LimitRequest> = limits
            .iter()
            .map(|(key, limit)| LimitRequest {
                key: key.clone(),
                gcra: limit.gcra(),
                cost: 1,
                enforced: true,
            })
            .collect();
        let sent_at = Instant::now();
        if let Some(cache) = &self.deny_cache {
            let cached = batch
                .iter()
                .filter_map(|req| cache.lookup(req, sent_at))
                .map(|hit| hit.retry_after)
                .max();
            if cached.is_some() {
                return Ok(cached);
            }
        }
        let outcome = self.decide(&batch).await?;
        if outcome.key_limited {
            return Err(key_limit_error());
        }
        self.remember_denials(&batch, &outcome, sent_at);
        if outcome.committed {
            return Ok(None);
        }
        let wait = limits
            .iter()
            .zip(&outcome.keys)
            .filter_map(|((_, limit), k)| match k.verdict {
                Verdict::Allowed => None,
                Verdict::Denied { retry_after_us } => Some(Duration::from_micros(retry_after_us)),
                // A burst of 0 cannot be configured; treat it as a refusal for a period.
                Verdict::CostExceedsBurst => Some(limit.period()),
            })
            .max();
        Ok(Some(wait.unwrap_or(Duration::ZERO)))
    }

    pub(super) fn remember_denials(
        &self,
        batch: &[LimitRequest],
        outcome: &BatchOutcome,
        sent_at: Instant,
    ) {
        let Some(cache) = &self.deny_cache else {
            return;
        };
        for (i, (req, k)) in batch.iter().zip(&outcome.keys).enumerate() {
            // A key repeated in the batch was decided the second time on top of the first
            // occurrence's take, which an uncommitted batch never made: only the first
            // occurrence's verdict describes the stored counter.
            if batch[..i].iter().any(|earlier| earlier.key == req.key) {
                continue;
            }
            cache.remember(req, sent_at, k);
        }
    }

    /// Asks the store within the timeout; a failure opens (or continues) an incident.
    pub(super) async fn decide(
        &self,
        batch: &[LimitRequest],
    ) -> Result<BatchOutcome, RateLimitError> {
        self.with_timeout(self.store.decide(batch), true).await
    }

    /// Runs a store call within the timeout; a failure opens (or continues) an incident, and
    /// only a decision (`ends_incident`) ends one: a store refusing writes (`OOM`) still answers
    /// the override reads, which must not log a recovery in the middle of the incident.
    async fn with_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
        ends_incident: bool,
    ) -> Result<T, RateLimitError> {
        let result = match tokio::time::timeout(self.settings.store_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::transient(format!(
                "no answer within {}",
                humantime::format_duration(self.settings.store_timeout)
            ))
            .with_kind("timeout")),
        };
        match result {
            Ok(v) => {
                if ends_incident {
                    self.incident.success();
                }
                Ok(v)
            }
            Err(e) if e.transient => {
                self.incident.failure(&e, &self.settings);
                Err(RateLimitError::StoreUnavailable(e))
            }
            Err(e) => {
                self.incident.failure(&e, &self.settings);
                Err(RateLimitError::Store(e))
            }
        }
    }
}

/// The error a key-limited decision stands for where the fail mode says to report it.
pub(super) fn key_limit_error() -> RateLimitError {
    RateLimitError::StoreUnavailable(StoreError::transient(
        "the store holds as many keys as this tenant or domain may; new keys wait for old ones to expire",
    ))
}

/// Validates the (tenant, resource) a request or an admin call addresses.
pub(super) fn validate_target(tenant: &str, resource: &str) -> Result<(), InvalidId> {
    keys::validate_id("tenant_id", tenant, true)?;
    keys::validate_id("resource", resource, false)
}

pub(super) fn normalise_resource(resource: &str) -> &str {
    if resource.is_empty() {
        DEFAULT_RESOURCE
    } else {
        resource
    }
}
