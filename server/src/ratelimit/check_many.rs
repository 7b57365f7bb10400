//! `CheckMany`: several limits of one tenant decided in one atomic store step, all or nothing.

use std::time::{Duration, Instant};

use super::gcra::{KeyOutcome, Verdict};
use super::limiter::{
    CheckDecision, CheckInput, DenyReason, FailMode, Limiter, RateLimitError, count_decision,
    key_limit_error, normalise_resource,
};
use super::store::{LimitRequest, RateLimitStore, StoreError};
use crate::clock::unix_time;
use crate::keys;

/// The most items one `CheckMany` may hold: enough for "per user, per tenant, per route" and
/// a few more, few enough that one call's script stays short.
pub const MAX_CHECK_ITEMS: usize = 16;

/// The `api` label of `CheckMany` decisions.
const CHECK_MANY: &str = "check_many";

/// The answer to a `CheckMany`.
#[derive(Debug, Clone)]
pub struct CheckManyDecision {
    /// True when every item was admitted and every cost taken.
    pub allowed: bool,
    /// One decision per item, in request order.
    pub items: Vec<CheckDecision>,
    /// True when the fail mode decided instead of the counters.
    pub degraded: bool,
}

impl CheckManyDecision {
    /// When denied, the longest wait of the denied items (`None` when one can never fit).
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        let mut longest = Duration::ZERO;
        for item in self.items.iter().filter(|d| !d.allowed) {
            longest = longest.max(item.retry_after?);
        }
        Some(longest)
    }

    /// The item whose headers speak for the call: the denied one with the longest wait when
    /// denied, else the one with the fewest units left.
    pub fn headline(&self) -> Option<&CheckDecision> {
        if self.allowed {
            self.items.iter().min_by_key(|d| d.remaining)
        } else {
            self.items
                .iter()
                .filter(|d| !d.allowed)
                .max_by_key(|d| d.retry_after.unwrap_or(Duration::MAX))
        }
    }
}

impl<S: RateLimitStore> Limiter<S> {
    /// Decides a `CheckMany`: every item's cost is taken, or, when any item is denied, none.
    /// Items are validated with their index in the field name (`items[2].key`). A denial this
    /// replica remembers answers without a store call; the items it does not remember then
    /// report nothing known (0 remaining).
    pub async fn check_many(
        &self,
        tenant: &str,
        items: &[CheckInput<'_>],
    ) -> Result<CheckManyDecision, RateLimitError> {
        keys::validate_id("tenant_id", tenant, true)?;
        if items.is_empty() || items.len() > MAX_CHECK_ITEMS {
            return Err(RateLimitError::InvalidArgument {
                field: "items".into(),
                reason: format!(
                    "must hold 1 to {MAX_CHECK_ITEMS} items, not {}",
                    items.len()
                ),
            });
        }
        for (i, item) in items.iter().enumerate() {
            keys::validate_id(&format!("items[{i}].resource"), item.resource, false)?;
            keys::validate_id(&format!("items[{i}].key"), item.key, false)?;
        }
        let table = self.policies.load();
        let resolved: Vec<_> = items
            .iter()
            .map(|item| {
                let resource = normalise_resource(item.resource);
                (resource, table.resolve(tenant, resource))
            })
            .collect();
        let batch: Vec<LimitRequest> = items
            .iter()
            .zip(&resolved)
            .map(|(item, (resource, policy))| LimitRequest {
                key: keys::check_key(tenant, resource, item.key),
                gcra: policy.limit.gcra(),
                cost: u64::from(item.cost.max(1)),
                enforced: true,
            })
            .collect();
        let decisions = |outcomes: &mut dyn Iterator<Item = KeyOutcome>, now_us: u64| {
            resolved
                .iter()
                .zip(outcomes)
                .map(|((resource, policy), outcome)| {
                    CheckDecision::from_outcome(*policy, resource, outcome, now_us)
                })
                .collect::<Vec<_>>()
        };
        let nothing_known = KeyOutcome {
            verdict: Verdict::Allowed,
            remaining: 0,
            reset_after_us: 0,
        };

        let sent_at = Instant::now();
        if let Some(cache) = &self.deny_cache {
            let cached: Vec<_> = batch.iter().map(|r| cache.lookup(r, sent_at)).collect();
            if cached.iter().any(Option::is_some) {
                count_decision(CHECK_MANY, "denied_cached");
                let mut outcomes = cached
                    .into_iter()
                    .map(|hit| hit.map_or(nothing_known, KeyOutcome::from));
                return Ok(CheckManyDecision {
                    allowed: false,
                    items: decisions(&mut outcomes, unix_time().as_micros() as u64),
                    degraded: false,
                });
            }
        }
        let degraded = |reason: DenyReason, error: RateLimitError| {
            let allowed = match self.settings.check_fail_mode {
                FailMode::Open => true,
                FailMode::Closed => false,
                FailMode::Unavailable => return Err(error),
            };
            let mut outcomes = std::iter::repeat(nothing_known);
            let items = decisions(&mut outcomes, unix_time().as_micros() as u64)
                .into_iter()
                .map(|d| CheckDecision {
                    allowed,
                    deny_reason: (!allowed).then_some(reason),
                    degraded: true,
                    ..d
                })
                .collect();
            Ok(CheckManyDecision {
                allowed,
                items,
                degraded: true,
            })
        };
        match self.decide(&batch).await {
            Ok(outcome) if outcome.key_limited => {
                count_decision(CHECK_MANY, "key_limit");
                degraded(DenyReason::KeyLimit, key_limit_error())
            }
            Ok(outcome) => {
                if outcome.keys.len() != batch.len() {
                    return Err(RateLimitError::Store(StoreError::permanent(
                        "store answered for a different number of limits",
                    )));
                }
                self.remember_denials(&batch, &outcome, sent_at);
                count_decision(
                    CHECK_MANY,
                    if outcome.committed {
                        "allowed"
                    } else {
                        "denied"
                    },
                );
                Ok(CheckManyDecision {
                    allowed: outcome.committed,
                    items: decisions(&mut outcome.keys.into_iter(), outcome.now_us),
                    degraded: false,
                })
            }
            Err(e) => {
                count_decision(CHECK_MANY, self.settings.check_fail_mode.outcome());
                degraded(DenyReason::StoreUnavailable, e)
            }
        }
    }
}
