//! A local cache of keys known to be over their limit, so abusive callers cost the store nothing.
//!
//! A denial for cost `c` with retry time `r` means no request of cost ≥ `c` can fit before `r`
//! (a counter only moves back by time passing). The cache therefore answers such requests
//! locally until `r`, measured from when the store call was *sent*, so the local deadline
//! ends no later than the true one. The one exception errs towards denying: on a Cluster, a
//! cross-slot refund (see `store::redis`) can end a denial before the cached deadline.
//!
//! A denial holds only under the limit that decided it: the same key asked about under another
//! limit (a runtime change on another replica, an Envoy descriptor's own limit) goes to the
//! store, which judges it by that limit.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::gcra::{GcraParams, KeyOutcome, Verdict};
use super::store::LimitRequest;

/// One remembered denial.
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// The limit that decided the denial; under another one it says nothing.
    gcra: GcraParams,
    /// Until when requests of at least `min_cost` are denied.
    until: Instant,
    /// The smallest cost known to be denied until `until`.
    min_cost: u64,
    /// When the key will be back to a full burst.
    reset_at: Instant,
    /// Units that were free at the denial (less than `min_cost`).
    remaining: u64,
}

/// A denial answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDenial {
    /// Time left until the cost fits.
    pub retry_after: Duration,
    /// Time left until a full burst is back.
    pub reset_after: Duration,
    /// Units free (fewer than asked for).
    pub remaining: u64,
}

impl From<CachedDenial> for KeyOutcome {
    fn from(hit: CachedDenial) -> Self {
        KeyOutcome {
            verdict: Verdict::Denied {
                retry_after_us: hit.retry_after.as_micros() as u64,
            },
            remaining: hit.remaining,
            reset_after_us: hit.reset_after.as_micros() as u64,
        }
    }
}

/// Bounded map of over-limit keys.
#[derive(Debug)]
pub struct DenyCache {
    /// Counter key → denial.
    entries: DashMap<String, Denial, foldhash::fast::RandomState>,
    /// Beyond this many keys, new denials are not cached (the store still answers correctly).
    max_entries: usize,
}

impl DenyCache {
    /// An empty cache holding at most `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            max_entries,
        }
    }

    /// The cached denial for `req` (its key, under its limit, at its cost), if one is still
    /// in force at `now`.
    pub fn lookup(&self, req: &LimitRequest, now: Instant) -> Option<CachedDenial> {
        let d = *self.entries.get(req.key.as_str())?;
        if now >= d.until || req.cost < d.min_cost || req.gcra != d.gcra {
            return None;
        }
        Some(CachedDenial {
            retry_after: d.until - now,
            reset_after: d.reset_at.saturating_duration_since(now),
            remaining: d.remaining,
        })
    }

    /// Remembers the outcome of `req` decided by a store call sent at `sent_at`, if a denial.
    pub fn remember(&self, req: &LimitRequest, sent_at: Instant, outcome: &KeyOutcome) {
        let Verdict::Denied { retry_after_us } = outcome.verdict else {
            return;
        };
        let key = req.key.as_str();
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(key) {
            return;
        }
        let denial = Denial {
            gcra: req.gcra,
            until: sent_at + Duration::from_micros(retry_after_us),
            min_cost: req.cost,
            reset_at: sent_at + Duration::from_micros(outcome.reset_after_us),
            remaining: outcome.remaining,
        };
        self.entries
            .entry(key.to_owned())
            .and_modify(|d| {
                let later = denial.until > d.until
                    || (denial.until == d.until && denial.min_cost < d.min_cost);
                if later || d.gcra != denial.gcra {
                    *d = denial;
                }
            })
            .or_insert(denial);
    }

    /// Forgets everything (limits changed, so old deadlines may be wrong).
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Drops denials that have ended.
    pub fn sweep(&self, now: Instant) {
        self.entries.retain(|_, d| d.until > now);
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A request for `cost` on `key` under 10 per second, burst `burst`.
    fn req(key: &str, cost: u64, burst: u64) -> LimitRequest {
        LimitRequest {
            key: key.into(),
            gcra: GcraParams {
                emission_interval_us: 100_000,
                burst,
            },
            cost,
            enforced: true,
        }
    }

    /// Remembers a denial of `r` sent at `t0`.
    fn deny(cache: &DenyCache, r: &LimitRequest, t0: Instant, retry: Duration, reset: Duration) {
        let outcome = KeyOutcome {
            verdict: Verdict::Denied {
                retry_after_us: retry.as_micros() as u64,
            },
            remaining: 1,
            reset_after_us: reset.as_micros() as u64,
        };
        cache.remember(r, t0, &outcome);
    }

    #[test]
    fn answers_until_the_deadline_for_costs_at_least_the_denied_one() {
        let cache = DenyCache::new(10);
        let t0 = Instant::now();
        deny(&cache, &req("k", 2, 5), t0, 100 * MS, 300 * MS);
        let hit = cache.lookup(&req("k", 2, 5), t0 + 40 * MS).unwrap();
        assert_eq!(hit.retry_after, 60 * MS);
        assert_eq!(hit.reset_after, 260 * MS);
        assert_eq!(hit.remaining, 1);
        assert!(
            cache.lookup(&req("k", 1, 5), t0 + 40 * MS).is_none(),
            "a smaller cost may fit"
        );
        assert!(
            cache.lookup(&req("k", 3, 5), t0 + 100 * MS).is_none(),
            "deadline passed"
        );
        assert!(cache.lookup(&req("other", 1, 5), t0).is_none());
    }

    #[test]
    fn a_denial_says_nothing_under_another_limit() {
        let cache = DenyCache::new(10);
        let t0 = Instant::now();
        deny(&cache, &req("k", 1, 5), t0, 100 * MS, 300 * MS);
        assert!(cache.lookup(&req("k", 1, 50), t0).is_none());
        // A denial under the new limit replaces the old one, even if it ends sooner.
        deny(&cache, &req("k", 1, 50), t0, 10 * MS, 300 * MS);
        assert_eq!(
            cache.lookup(&req("k", 1, 50), t0).unwrap().retry_after,
            10 * MS
        );
        assert!(cache.lookup(&req("k", 1, 5), t0).is_none());
    }

    #[test]
    fn allowed_outcomes_are_not_remembered() {
        let cache = DenyCache::new(10);
        let allowed = KeyOutcome {
            verdict: Verdict::Allowed,
            remaining: 0,
            reset_after_us: 1,
        };
        cache.remember(&req("k", 1, 5), Instant::now(), &allowed);
        assert!(cache.is_empty());
    }

    #[test]
    fn is_bounded_and_swept() {
        let cache = DenyCache::new(2);
        let t0 = Instant::now();
        deny(&cache, &req("a", 1, 5), t0, 10 * MS, 10 * MS);
        deny(&cache, &req("b", 1, 5), t0, 50 * MS, 50 * MS);
        deny(&cache, &req("c", 1, 5), t0, 50 * MS, 50 * MS);
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup(&req("c", 1, 5), t0).is_none());
        cache.sweep(t0 + 20 * MS);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }
}
