//! The memory store's counters: sharded hash maps under per-shard locks, and the runtime
//! overrides.
//!
//! A batch locks every shard it touches in ascending shard order (so two batches can never
//! wait on each other in a cycle), decides all its keys, and commits all or nothing, the same
//! guarantee the Redis script gives.
//!
//! The shards are plain `Mutex<HashMap>`s rather than a `DashMap` because a batch must hold
//! several shards at once in a fixed order, which dashmap's public API does not offer.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use parking_lot::{Mutex, MutexGuard};

use super::MemoryStore;
use crate::clock::Clock;
use crate::ratelimit::gcra::{self, Verdict};
use crate::ratelimit::policy::{Limit, PolicyOverride};
use crate::ratelimit::store::{
    BatchOutcome, LimitRequest, OverrideSnapshot, RateLimitStore, StoreError,
};

/// Number of lock shards: enough that two cores rarely meet on one, few enough to sweep fast.
const SHARDS: usize = 64;

/// TAT per key.
type Tats = HashMap<Box<str>, u64, foldhash::fast::RandomState>;

/// One lock and its map, aligned to its own cache lines so neighbouring locks do not contend.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(Mutex<Tats>);

/// The counters and runtime overrides of a [`MemoryStore`].
#[derive(Debug)]
pub(super) struct Counters {
    /// TAT per key, spread over shards by key hash.
    shards: Box<[Shard]>,
    /// Picks a key's shard; seeded per process so shard placement cannot be aimed at.
    shard_hasher: foldhash::fast::RandomState,
    /// Runtime overrides, versioned like the Redis copy.
    overrides: Mutex<Overrides>,
}

#[derive(Debug, Default)]
struct Overrides {
    version: u64,
    by_target: BTreeMap<(String, Option<String>), Limit>,
}

impl Counters {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            overrides: Mutex::default(),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.shard_hasher.hash_one(key) as usize) % SHARDS
    }

    /// Number of keys held (idle ones included until the next sweep).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Removes keys whose TAT has passed: they decide exactly as absent keys do.
    pub(super) fn sweep(&self, clock: &dyn Clock) {
        for shard in self.shards.iter() {
            let now = clock.now_us();
            shard.0.lock().retain(|_, tat| *tat > now);
        }
    }
}

impl MemoryStore {
    fn decide_locked(&self, batch: &[LimitRequest]) -> BatchOutcome {
        let counters = &self.counters;
        let mut shard_ids: Vec<usize> = batch.iter().map(|r| counters.shard_of(&r.key)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        // Ascending order: no two batches can hold-and-wait in a cycle.
        let mut guards: Vec<MutexGuard<'_, Tats>> =
            order.iter().map(|&i| counters.shards[i].0.lock()).collect();
        for id in &mut shard_ids {
            *id = order.binary_search(id).unwrap_or_default();
        }
        let now = self.clock.now_us();
        // A key named twice in one batch must see its own pending update.
        let mut pending: Vec<(&str, u64)> = Vec::new();
        let mut steps = Vec::with_capacity(batch.len());
        let mut committed = true;
        for (req, &g) in batch.iter().zip(&shard_ids) {
            let stored = pending
                .iter()
                .rev()
                .find(|(k, _)| *k == req.key)
                .map(|(_, tat)| *tat)
                .or_else(|| guards[g].get(req.key.as_str()).copied());
            let step = gcra::step(req.gcra, stored, now, req.cost);
            if let Some(tat) = step.new_tat_us {
                pending.push((&req.key, tat));
            } else if req.enforced {
                committed = false;
            }
            steps.push(step);
        }
        if committed {
            for ((req, &g), step) in batch.iter().zip(&shard_ids).zip(&steps) {
                if let Some(tat) = step.new_tat_us {
                    guards[g].insert(req.key.as_str().into(), tat);
                }
            }
        }
        let keys = steps
            .iter()
            .map(|s| match (committed, s.outcome.verdict) {
                (false, Verdict::Allowed) => s.untaken,
                _ => s.outcome,
            })
            .collect();
        BatchOutcome {
            now_us: now,
            committed,
            keys,
        }
    }
}

impl RateLimitStore for MemoryStore {
    async fn decide(&self, batch: &[LimitRequest]) -> Result<BatchOutcome, StoreError> {
        Ok(self.decide_locked(batch))
    }

    async fn set_override(&self, policy: &PolicyOverride) -> Result<(), StoreError> {
        let mut o = self.counters.overrides.lock();
        o.by_target.insert(
            (policy.tenant.clone(), policy.resource.clone()),
            policy.limit,
        );
        o.version += 1;
        Ok(())
    }

    async fn delete_override(
        &self,
        tenant: &str,
        resource: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut o = self.counters.overrides.lock();
        let removed = o
            .by_target
            .remove(&(tenant.to_owned(), resource.map(str::to_owned)))
            .is_some();
        if removed {
            o.version += 1;
        }
        Ok(removed)
    }

    async fn load_overrides(
        &self,
        known: Option<u64>,
    ) -> Result<Option<OverrideSnapshot>, StoreError> {
        let o = self.counters.overrides.lock();
        if known == Some(o.version) {
            return Ok(None);
        }
        Ok(Some(OverrideSnapshot {
            version: o.version,
            overrides: o
                .by_target
                .iter()
                .map(|((tenant, resource), limit)| PolicyOverride {
                    tenant: tenant.clone(),
                    resource: resource.clone(),
                    limit: *limit,
                })
                .collect(),
        }))
    }

    fn is_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::ratelimit::gcra::GcraParams;

    fn req(key: &str, burst: u64) -> LimitRequest {
        LimitRequest {
            key: key.into(),
            gcra: GcraParams {
                emission_interval_us: 1_000_000,
                burst,
            },
            cost: 1,
            enforced: true,
        }
    }

    #[test]
    fn sweep_drops_only_idle_keys() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::with_clock(clock.clone());
        for i in 0..1000 {
            store.decide_locked(&[req(&format!("k{i}"), 5)]);
        }
        assert_eq!(store.len(), 1000);
        store.sweep();
        assert_eq!(store.len(), 1000, "keys within their tolerance stay");
        clock.advance_us(1_000_000);
        store.sweep();
        assert!(store.is_empty(), "a key whose TAT has passed is gone");
    }

    #[test]
    fn a_key_named_twice_in_a_batch_is_counted_twice() {
        let store = MemoryStore::with_clock(Arc::new(ManualClock::new(1_000_000_000)));
        let out = store.decide_locked(&[req("k", 1), req("k", 1)]);
        assert!(!out.committed);
        assert_eq!(out.keys[0].verdict, Verdict::Allowed);
        assert!(matches!(out.keys[1].verdict, Verdict::Denied { .. }));
        // Nothing was taken: a single request still fits.
        assert!(store.decide_locked(&[req("k", 1)]).committed);
    }
}
