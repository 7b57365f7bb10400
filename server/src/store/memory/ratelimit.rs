//! The memory store's counters: sharded hash maps under per-shard locks, and the runtime
//! overrides.
//!
//! A batch locks every shard it touches in ascending shard order (so two batches can never
//! wait on each other in a cycle), decides all its keys, and commits all or nothing, the same
//! guarantee the Redis script gives.
//!
//! The shards are plain `Mutex<HashMap>`s rather than a `DashMap` because a batch must hold
//! several shards at once in a fixed order, which dashmap's public API does not offer.
//!
//! Callers choose keys, so the keys held are capped per owner (tenant, or Envoy domain: see
//! [`key_owner`]) and in total: a new key past a cap is not created, and the caller's fail
//! mode decides (`KEY_LIMIT`). A live counter is never evicted to make room, since forgetting
//! it would admit more than its limit.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, MutexGuard};

use super::MemoryStore;
use crate::clock::Clock;
use crate::keys::key_owner;
use crate::ratelimit::gcra::{self, KeyOutcome, Verdict};
use crate::ratelimit::policy::{Limit, PolicyOverride};
use crate::ratelimit::store::{
    BatchOutcome, LimitRequest, OverrideSnapshot, RateLimitStore, StoreError,
};

/// What a key-limited batch reports per key: nothing (the fail mode decides).
const KEY_LIMITED: KeyOutcome = KeyOutcome {
    verdict: Verdict::Denied { retry_after_us: 0 },
    remaining: 0,
    reset_after_us: 0,
};

/// Number of lock shards: enough that two cores rarely meet on one, few enough to sweep fast.
const SHARDS: usize = 64;

/// TAT per key.
type Tats = HashMap<Box<str>, u64, foldhash::fast::RandomState>;

/// One lock and its map, aligned to its own cache lines so neighbouring locks do not contend.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(Mutex<Tats>);

/// A key a batch touches: where it lives and its TAT as the batch goes.
struct Touched<'a> {
    key: &'a str,
    /// Index into the batch's shard guards.
    shard: usize,
    /// `None` while the store holds no TAT for the key.
    tat: Option<u64>,
    /// A clamp was applied: the TAT is stored even if the batch does not commit.
    clamped: bool,
    /// The store held no TAT for the key: it took room under the key caps.
    new: bool,
}

/// How many keys the memory store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCaps {
    /// Keys one owner (tenant, or Envoy domain) may hold.
    pub per_owner: usize,
    /// Keys all owners together may hold.
    pub total: usize,
}

impl Default for KeyCaps {
    /// About 100 bytes a key: at most about 100 MB of counters, a tenth of it per tenant.
    fn default() -> Self {
        Self {
            per_owner: 100_000,
            total: 1_000_000,
        }
    }
}

/// Keys held per owner and in total, against [`KeyCaps`].
#[derive(Debug)]
struct KeyCount {
    /// The caps.
    caps: KeyCaps,
    /// Keys held per owner; an owner leaves when its last key does.
    by_owner: DashMap<Box<str>, usize, foldhash::fast::RandomState>,
    /// Keys held in all.
    total: AtomicUsize,
}

impl KeyCount {
    /// Takes room for one more key of `owner`; false, taking nothing, past a cap.
    fn take(&self, owner: &str) -> bool {
        let caps = self.caps;
        let total = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < caps.total).then_some(n + 1)
            });
        if total.is_err() {
            return false;
        }
        let mut held = self.by_owner.entry(owner.into()).or_insert(0);
        if *held >= caps.per_owner {
            drop(held);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        *held += 1;
        true
    }

    /// Gives back the room of one key of `owner` (dropped, or never created).
    fn give_back(&self, owner: &str) {
        if let Entry::Occupied(mut held) = self.by_owner.entry(owner.into()) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
            self.total.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The counters and runtime overrides of a [`MemoryStore`].
#[derive(Debug)]
pub(super) struct Counters {
    /// TAT per key, spread over shards by key hash.
    shards: Box<[Shard]>,
    /// Picks a key's shard; seeded per process so shard placement cannot be aimed at.
    shard_hasher: foldhash::fast::RandomState,
    /// Runtime overrides, versioned like the Redis copy.
    overrides: Mutex<Overrides>,
    /// Keys held, against their caps.
    key_count: KeyCount,
}

#[derive(Debug, Default)]
struct Overrides {
    version: u64,
    by_target: BTreeMap<(String, Option<String>), Limit>,
}

impl Counters {
    pub(super) fn new(caps: KeyCaps) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            overrides: Mutex::default(),
            key_count: KeyCount {
                caps,
                by_owner: DashMap::default(),
                total: AtomicUsize::new(0),
            },
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.shard_hasher.hash_one(key) as usize) % SHARDS
    }

    /// Number of keys held (idle ones included until the next sweep).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Forgets `key` and, with `with_children`, every key under `key:`; returns how many.
    fn reset(&self, key: &str, with_children: bool) -> u64 {
        let mut forgotten = 0;
        let mut forget = |tats: &mut Tats, k: &str| {
            if tats.remove(k).is_some() {
                self.key_count.give_back(key_owner(k));
                forgotten += 1;
            }
        };
        if !with_children {
            forget(&mut self.shards[self.shard_of(key)].0.lock(), key);
            return forgotten;
        }
        for shard in self.shards.iter() {
            let mut tats = shard.0.lock();
            let children: Vec<Box<str>> = tats
                .keys()
                .filter(|k| {
                    k.strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .cloned()
                .collect();
            forget(&mut tats, key);
            for child in children {
                forget(&mut tats, &child);
            }
        }
        forgotten
    }

    /// Removes keys whose TAT has passed: they decide exactly as absent keys do.
    pub(super) fn sweep(&self, clock: &dyn Clock) {
        for shard in self.shards.iter() {
            let now = clock.now_us();
            shard.0.lock().retain(|key, tat| {
                let live = *tat > now;
                if !live {
                    self.key_count.give_back(key_owner(key));
                }
                live
            });
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
        // The keys this batch touches, each once, with its TAT as the batch goes: a key named
        // twice sees its own pending update. As in the Lua script, a clamp (see gcra.rs) stands
        // whatever the batch decides, and takes are undone in reverse when it does not commit.
        let mut touched: Vec<Touched<'_>> = Vec::new();
        let mut undo: Vec<(usize, Option<u64>)> = Vec::new();
        let mut steps = Vec::with_capacity(batch.len());
        let mut committed = true;
        for (req, &g) in batch.iter().zip(&shard_ids) {
            let t = match touched.iter().position(|t| t.key == req.key) {
                Some(t) => t,
                None => {
                    let tat = guards[g].get(req.key.as_str()).copied();
                    // Room for a key the store does not hold yet, before anything is stored:
                    // a batch with a key past its cap decides (and stores) nothing.
                    if tat.is_none() && !counters.key_count.take(key_owner(&req.key)) {
                        for t in touched.iter().filter(|t| t.new) {
                            counters.key_count.give_back(key_owner(t.key));
                        }
                        return BatchOutcome {
                            now_us: now,
                            committed: false,
                            keys: vec![KEY_LIMITED; batch.len()],
                            key_limited: true,
                        };
                    }
                    touched.push(Touched {
                        key: &req.key,
                        shard: g,
                        tat,
                        clamped: false,
                        new: tat.is_none(),
                    });
                    touched.len() - 1
                }
            };
            let step = gcra::step(req.gcra, touched[t].tat, now, req.cost);
            if let Some(tat) = step.clamped_tat_us {
                touched[t].tat = Some(tat);
                touched[t].clamped = true;
            }
            if let Some(tat) = step.new_tat_us {
                undo.push((t, touched[t].tat));
                touched[t].tat = Some(tat);
            } else if req.enforced {
                committed = false;
            }
            steps.push(step);
        }
        if !committed {
            for (t, tat) in undo.into_iter().rev() {
                touched[t].tat = tat;
            }
        }
        for t in touched {
            match (committed || t.clamped, t.tat) {
                (true, Some(tat)) => {
                    guards[t.shard].insert(t.key.into(), tat);
                }
                // A new key that was not created after all (a denial, or a shadow limit over)
                // gives its room back.
                _ if t.new => counters.key_count.give_back(key_owner(t.key)),
                _ => {}
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
            key_limited: false,
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

    async fn reset_counters(&self, key: &str, with_children: bool) -> Result<u64, StoreError> {
        Ok(self.counters.reset(key, with_children))
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

    /// A store holding at most `per_owner` keys per tenant and `total` in all.
    fn capped(clock: Arc<ManualClock>, per_owner: usize, total: usize) -> MemoryStore {
        MemoryStore::with_clock_and_caps(clock, KeyCaps { per_owner, total })
    }

    fn key(tenant: &str, id: usize) -> String {
        crate::keys::check_key(tenant, "search", &format!("user-{id}"))
    }

    #[test]
    fn a_tenant_past_its_cap_gets_no_new_key_and_keeps_its_old_ones() {
        let store = capped(Arc::new(ManualClock::new(1_000_000_000)), 3, 100);
        for i in 0..3 {
            let out = store.decide_locked(&[req(&key("a", i), 2)]);
            assert!(out.committed && !out.key_limited);
        }
        let refused = store.decide_locked(&[req(&key("a", 3), 2)]);
        assert!(refused.key_limited && !refused.committed);
        assert_eq!(store.len(), 3, "the refused key was not created");
        // The live counters are decided as before, never evicted: the second request fits the
        // burst of 2, the third does not.
        assert!(store.decide_locked(&[req(&key("a", 0), 2)]).committed);
        let over = store.decide_locked(&[req(&key("a", 0), 2)]);
        assert!(!over.key_limited);
        assert!(matches!(over.keys[0].verdict, Verdict::Denied { .. }));
        // Another tenant has its own share.
        assert!(store.decide_locked(&[req(&key("b", 0), 2)]).committed);
    }

    #[test]
    fn the_total_cap_holds_across_tenants() {
        let store = capped(Arc::new(ManualClock::new(1_000_000_000)), 10, 4);
        for (tenant, i) in [("a", 0), ("a", 1), ("b", 0), ("c", 0)] {
            assert!(store.decide_locked(&[req(&key(tenant, i), 2)]).committed);
        }
        assert!(store.decide_locked(&[req(&key("d", 0), 2)]).key_limited);
        assert!(store.decide_locked(&[req(&key("a", 2), 2)]).key_limited);
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn a_batch_with_one_key_past_the_cap_creates_none() {
        let store = capped(Arc::new(ManualClock::new(1_000_000_000)), 3, 100);
        assert!(store.decide_locked(&[req(&key("a", 0), 2)]).committed);
        let batch = [
            req(&key("a", 1), 2),
            req(&key("a", 2), 2),
            req(&key("a", 3), 2),
        ];
        let out = store.decide_locked(&batch);
        assert!(out.key_limited && !out.committed);
        assert_eq!(store.len(), 1);
        // The room the batch took for its first two keys was given back.
        assert!(store.decide_locked(&batch[..2]).committed);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn keys_never_created_and_keys_swept_give_their_room_back() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = capped(clock.clone(), 2, 100);
        // Costing more than the burst, the new key is denied and never stored.
        let too_big = LimitRequest {
            cost: 5,
            ..req(&key("a", 0), 2)
        };
        for _ in 0..10 {
            let out = store.decide_locked(std::slice::from_ref(&too_big));
            assert!(!out.key_limited && !out.committed);
        }
        assert!(store.is_empty());
        assert!(store.decide_locked(&[req(&key("a", 1), 2)]).committed);
        assert!(store.decide_locked(&[req(&key("a", 2), 2)]).committed);
        assert!(store.decide_locked(&[req(&key("a", 3), 2)]).key_limited);
        // Once idle keys are swept their tenant may hold new ones.
        clock.advance_us(1_000_000);
        store.sweep();
        assert!(store.is_empty());
        assert!(store.decide_locked(&[req(&key("a", 3), 2)]).committed);
        assert!(store.decide_locked(&[req(&key("a", 4), 2)]).committed);
        assert!(store.decide_locked(&[req(&key("a", 5), 2)]).key_limited);
    }
}
