//! A local cache of keys known to be over their limit, so abusive callers cost the store nothing.
//!
//! A denial for cost `c` with retry time `r` means no request of cost ≥ `c` can fit before `r`
//! (a counter only moves back by time passing). The cache therefore answers such requests
//! locally until `r`, measured from when the store call was *sent*, so the local deadline
//! ends no later than the true one. The one exception errs towards denying: on a Cluster, a
//! cross-slot refund (see `store::redis`) can end a denial before the cached deadline.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::gcra::{KeyOutcome, Verdict};

/// One remembered denial.
#[derive(Debug, Clone, Copy)]
struct Denial {
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

    /// The cached denial for `key` at `cost`, if one is still in force at `now`.
    pub fn lookup(&self, key: &str, cost: u64, now: Instant) -> Option<CachedDenial> {
        let d = *self.entries.get(key)?;
        if now >= d.until || cost < d.min_cost {
            return None;
        }
        Some(CachedDenial {
            retry_after: d.until - now,
            reset_after: d.reset_at.saturating_duration_since(now),
            remaining: d.remaining,
        })
    }

    /// Remembers a denial decided by a store call sent at `sent_at`.
    pub fn remember(
        &self,
        key: &str,
        cost: u64,
        sent_at: Instant,
        retry_after: Duration,
        reset_after: Duration,
        remaining: u64,
    ) {
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(key) {
            return;
        }
        let denial = Denial {
            until: sent_at + retry_after,
            min_cost: cost,
            reset_at: sent_at + reset_after,
            remaining,
        };
        self.entries
            .entry(key.to_owned())
            .and_modify(|d| {
                // Keep whichever says more: a later deadline, or the same one for a lower cost.
                if denial.until > d.until || (denial.until == d.until && cost < d.min_cost) {
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

    #[test]
    fn answers_until_the_deadline_for_costs_at_least_the_denied_one() {
        let cache = DenyCache::new(10);
        let t0 = Instant::now();
        cache.remember("k", 2, t0, 100 * MS, 300 * MS, 1);
        let hit = cache.lookup("k", 2, t0 + 40 * MS).unwrap();
        assert_eq!(hit.retry_after, 60 * MS);
        assert_eq!(hit.reset_after, 260 * MS);
        assert_eq!(hit.remaining, 1);
        assert!(
            cache.lookup("k", 1, t0 + 40 * MS).is_none(),
            "a smaller cost may fit"
        );
        assert!(
            cache.lookup("k", 3, t0 + 100 * MS).is_none(),
            "deadline passed"
        );
        assert!(cache.lookup("other", 1, t0).is_none());
    }

    #[test]
    fn is_bounded_and_swept() {
        let cache = DenyCache::new(2);
        let t0 = Instant::now();
        cache.remember("a", 1, t0, 10 * MS, 10 * MS, 0);
        cache.remember("b", 1, t0, 50 * MS, 50 * MS, 0);
        cache.remember("c", 1, t0, 50 * MS, 50 * MS, 0);
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("c", 1, t0).is_none());
        cache.sweep(t0 + 20 * MS);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }
}
