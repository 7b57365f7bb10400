//! Envoy rate limit requests in domain terms (descriptors in, per-descriptor statuses out) and
//! the limiter's Envoy path: each descriptor's limit, all of them decided together, all or
//! nothing, with the response headers of the most restrictive one.

use std::time::{Duration, Instant};

use super::envoy_config::{EnvoyRate, EnvoyUnit};
use super::gcra::{GcraParams, KeyOutcome, Verdict};
use super::headers::{HeaderInput, rate_limit_headers};
use super::limiter::{FailMode, Limiter, RateLimitError, count_decision, key_limit_error};
use super::policy::{Limit, MAX_BURST};
use super::store::{BatchOutcome, LimitRequest, RateLimitStore};
use crate::clock::unix_time;
use crate::keys;

/// Descriptors one `ShouldRateLimit` may carry. Envoy sends a handful; the cap keeps one request
/// from turning into a script call that holds Redis for long (each descriptor is a counter).
pub const MAX_DESCRIPTORS: usize = 64;
/// Entries one descriptor may carry; together they make one counter key.
pub const MAX_DESCRIPTOR_ENTRIES: usize = 32;

/// The `api` label of Envoy `ShouldRateLimit` decisions.
const ENVOY: &str = "envoy";

/// One descriptor of a `ShouldRateLimit` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyDescriptor {
    /// (key, value) entries, outermost first.
    pub entries: Vec<(String, String)>,
    /// A limit sent by Envoy that replaces the configured one.
    pub limit_override: Option<EnvoyRate>,
    /// Units this descriptor takes, replacing the request's `hits_addend`.
    pub hits_addend: Option<u64>,
}

/// A `ShouldRateLimit` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyRequest {
    /// The config domain.
    pub domain: String,
    /// The limits to apply together.
    pub descriptors: Vec<EnvoyDescriptor>,
    /// Units each descriptor takes; 0 means 1.
    pub hits_addend: u32,
}

/// The limit that applied to a descriptor, as reported back to Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEnvoyLimit {
    /// The limit's name from the config, if any.
    pub name: Option<String>,
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: EnvoyUnit,
}

/// One descriptor's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// True when this descriptor is over its limit (never for shadow-mode limits).
    pub over_limit: bool,
    /// The limit that applied; `None` when no limit (or an unlimited one) matched.
    pub limit: Option<AppliedEnvoyLimit>,
    /// Units left after the decision.
    pub remaining: u32,
    /// Time until the limit is fully replenished.
    pub reset_after: Duration,
}

/// The decision for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyDecision {
    /// True when any descriptor is over its limit; then no descriptor took anything.
    pub over_limit: bool,
    /// One status per descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
    /// Response headers for Envoy to add (empty when disabled or when no limit applied).
    pub response_headers: Vec<(&'static str, String)>,
    /// True when the store did not answer and the fail mode decided.
    pub degraded: bool,
}

impl AppliedEnvoyLimit {
    /// The period one `requests_per_unit` spans.
    pub fn period(&self) -> Duration {
        self.unit.period()
    }
}

impl<S: RateLimitStore> Limiter<S> {
    /// Decides an Envoy `ShouldRateLimit` request: all descriptors together, all or nothing.
    pub async fn should_rate_limit(
        &self,
        request: &EnvoyRequest,
    ) -> Result<EnvoyDecision, RateLimitError> {
        keys::validate_id("domain", &request.domain, true)?;
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(RateLimitError::InvalidArgument {
                field: "descriptors".to_owned(),
                reason: format!("at most {MAX_DESCRIPTORS} per request"),
            });
        }
        if let Some(i) = request
            .descriptors
            .iter()
            .position(|d| d.entries.len() > MAX_DESCRIPTOR_ENTRIES)
        {
            return Err(RateLimitError::InvalidArgument {
                field: format!("descriptors[{i}].entries"),
                reason: format!("at most {MAX_DESCRIPTOR_ENTRIES} per descriptor"),
            });
        }
        let default_cost = u64::from(request.hits_addend.max(1));
        // Per descriptor: the limit that applies and, when limited, its index in the batch.
        let mut applied: Vec<Option<(AppliedEnvoyLimit, usize)>> =
            Vec::with_capacity(request.descriptors.len());
        let mut batch: Vec<LimitRequest> = Vec::new();
        for (i, d) in request.descriptors.iter().enumerate() {
            for (j, (k, v)) in d.entries.iter().enumerate() {
                let problem = keys::id_problem(k, true, keys::MAX_ID_LEN)
                    .map(|reason| ("key", reason))
                    .or_else(|| {
                        keys::id_problem(v, false, keys::MAX_ENVOY_VALUE_LEN)
                            .map(|reason| ("value", reason))
                    });
                if let Some((part, reason)) = problem {
                    return Err(RateLimitError::InvalidArgument {
                        field: format!("descriptors[{i}].entries[{j}].{part}"),
                        reason,
                    });
                }
            }
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let configured = self.envoy.lookup(&request.domain, &entries);
            let shadow = configured.is_some_and(|l| l.shadow_mode);
            let (rate, name) = match (&d.limit_override, configured) {
                (Some(rate), configured) => (Some(*rate), configured.and_then(|l| l.name.clone())),
                (None, Some(l)) => (l.rate, l.name.clone()),
                (None, None) => (None, None),
            };
            let Some(rate) = rate else {
                applied.push(None);
                continue;
            };
            let cost = d.hits_addend.unwrap_or(default_cost).min(MAX_BURST + 1);
            let gcra = match Limit::new(u64::from(rate.requests_per_unit), rate.unit.period(), 0) {
                Ok(limit) => limit.gcra(),
                // 0 requests per unit: nothing ever fits, which a cost above the burst expresses.
                Err(_) if rate.requests_per_unit == 0 => GcraParams {
                    emission_interval_us: rate.unit.period().as_micros() as u64,
                    burst: 0,
                },
                Err(e) => {
                    return Err(RateLimitError::InvalidArgument {
                        field: format!("descriptors[{i}].limit"),
                        reason: e.to_string(),
                    });
                }
            };
            applied.push(Some((
                AppliedEnvoyLimit {
                    name,
                    requests_per_unit: rate.requests_per_unit,
                    unit: rate.unit,
                },
                batch.len(),
            )));
            batch.push(LimitRequest {
                key: keys::envoy_key(&request.domain, entries.iter().copied()),
                gcra,
                cost: cost.max(u64::from(gcra.burst == 0)),
                enforced: !shadow,
            });
        }

        let sent_at = Instant::now();
        let outcome = match self.cached_batch(&batch, sent_at) {
            Some(o) => {
                count_decision(ENVOY, "denied_cached");
                o
            }
            None if batch.is_empty() => BatchOutcome {
                now_us: unix_time().as_micros() as u64,
                committed: true,
                keys: Vec::new(),
                key_limited: false,
            },
            None => match self.decide(&batch).await {
                Ok(o) if o.key_limited => {
                    count_decision(ENVOY, "key_limit");
                    return self.envoy_fail_mode(key_limit_error(), applied);
                }
                Ok(o) => {
                    self.remember_denials(&batch, &o, sent_at);
                    count_decision(ENVOY, if o.committed { "allowed" } else { "denied" });
                    o
                }
                Err(e) => {
                    count_decision(ENVOY, self.settings.envoy_fail_mode.outcome());
                    return self.envoy_fail_mode(e, applied);
                }
            },
        };

        let statuses: Vec<DescriptorStatus> = applied
            .into_iter()
            .map(|a| match a {
                None => DescriptorStatus {
                    over_limit: false,
                    limit: None,
                    remaining: 0,
                    reset_after: Duration::ZERO,
                },
                Some((limit, idx)) => {
                    let k = outcome.keys[idx];
                    DescriptorStatus {
                        over_limit: batch[idx].enforced && k.verdict != Verdict::Allowed,
                        limit: Some(limit),
                        remaining: u32::try_from(k.remaining).unwrap_or(u32::MAX),
                        reset_after: Duration::from_micros(k.reset_after_us),
                    }
                }
            })
            .collect();
        let response_headers = if self.settings.envoy_response_headers {
            envoy_headers(&statuses, &batch, &outcome)
        } else {
            Vec::new()
        };
        Ok(EnvoyDecision {
            over_limit: !outcome.committed,
            statuses,
            response_headers,
            degraded: false,
        })
    }

    /// Answers a batch from the deny cache when every limit in it is cached as denied.
    fn cached_batch(&self, batch: &[LimitRequest], now: Instant) -> Option<BatchOutcome> {
        let cache = self.deny_cache.as_ref()?;
        if batch.is_empty() {
            return None;
        }
        let keys = batch
            .iter()
            .map(|r| cache.lookup(r, now).map(KeyOutcome::from))
            .collect::<Option<Vec<_>>>()?;
        Some(BatchOutcome {
            now_us: unix_time().as_micros() as u64,
            committed: !batch.iter().any(|r| r.enforced),
            keys,
            key_limited: false,
        })
    }

    fn envoy_fail_mode(
        &self,
        e: RateLimitError,
        applied: Vec<Option<(AppliedEnvoyLimit, usize)>>,
    ) -> Result<EnvoyDecision, RateLimitError> {
        let over_limit = match self.settings.envoy_fail_mode {
            FailMode::Open => false,
            FailMode::Closed => true,
            FailMode::Unavailable => return Err(e),
        };
        let statuses = applied
            .into_iter()
            .map(|a| DescriptorStatus {
                over_limit: over_limit && a.is_some(),
                limit: a.map(|(l, _)| l),
                remaining: 0,
                reset_after: Duration::ZERO,
            })
            .collect::<Vec<_>>();
        Ok(EnvoyDecision {
            over_limit: over_limit && statuses.iter().any(|s| s.limit.is_some()),
            statuses,
            response_headers: Vec::new(),
            degraded: true,
        })
    }
}

/// Headers for the most restrictive limit: the first one over limit, else the one with the
/// fewest units left.
fn envoy_headers(
    statuses: &[DescriptorStatus],
    batch: &[LimitRequest],
    outcome: &BatchOutcome,
) -> Vec<(&'static str, String)> {
    let pick = statuses
        .iter()
        .filter(|s| s.limit.is_some())
        .min_by_key(|s| (!s.over_limit, s.remaining));
    let Some(status) = pick else {
        return Vec::new();
    };
    let Some(limit) = &status.limit else {
        return Vec::new();
    };
    let retry_after = statuses
        .iter()
        .zip(batch)
        .zip(&outcome.keys)
        .filter(|((s, _), _)| s.over_limit)
        .find_map(|(_, k)| match k.verdict {
            Verdict::Denied { retry_after_us } => Some(Duration::from_micros(retry_after_us)),
            _ => None,
        });
    rate_limit_headers(&HeaderInput {
        name: limit.name.as_deref().unwrap_or("default"),
        quota: u64::from(limit.requests_per_unit),
        window: limit.period(),
        remaining: u64::from(status.remaining),
        reset_after: status.reset_after,
        retry_after: retry_after.filter(|_| status.over_limit),
        now_unix_us: outcome.now_us,
    })
}
