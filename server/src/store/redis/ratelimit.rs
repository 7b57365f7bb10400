//! The Redis store's rate limiting: the decision script on a single node (through the
//! batcher) or on a Cluster (slot by slot, with refunds across slots), and runtime overrides.

use redis::cluster_routing::Slot;
use redis::{AsyncCommands, Script};

use super::RedisStore;
use super::connection::{RedisConnection, store_error};
use crate::ratelimit::gcra::{KeyOutcome, Verdict};
use crate::ratelimit::policy::{Limit, PolicyOverride};
use crate::ratelimit::store::{
    BatchOutcome, LimitRequest, OverrideSnapshot, RateLimitStore, StoreError,
};

/// The hash of runtime overrides: field `tenant\nresource` (resource empty for tenant-wide;
/// validated ids cannot contain a newline) → `rate period_us burst`, plus the version field.
const OVERRIDES_KEY: &str = "portcullis:limits";
/// Bumped on every change so replicas poll one field instead of the whole hash.
const VERSION_FIELD: &str = "\nversion";

/// Keys a reset looks at per script call: large enough to be quick, small enough that one call
/// never holds Redis for more than a few milliseconds.
const RESET_SCAN_COUNT: u32 = 1000;

/// `key` as a SCAN MATCH pattern matching itself only: ids may hold glob characters.
fn glob_escaped(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStore {
    /// Decides `requests` in order in one script call, each all or nothing, as the single-node
    /// queue does with the requests it gathers (on a Cluster, all their keys must share one
    /// slot). The same answers as one call per request: exposed so tests can hold the script to
    /// the memory store's sequential decisions.
    pub async fn decide_in_one_call(
        &self,
        requests: &[&[LimitRequest]],
    ) -> Result<Vec<BatchOutcome>, StoreError> {
        let requests: Vec<Vec<&LimitRequest>> =
            requests.iter().map(|r| r.iter().collect()).collect();
        run_decisions(&self.conn, &self.gcra, &requests).await
    }

    /// Runs the decision script on one request whose keys share one slot.
    async fn decide_slot(&self, request: Vec<&LimitRequest>) -> Result<BatchOutcome, StoreError> {
        let mut outcomes = run_decisions(&self.conn, &self.gcra, &[request]).await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::permanent("decision script answered no request"))
    }

    /// Cluster: decide each slot's share in parallel; if any denied, give back what the
    /// others took. Between the take and the refund a concurrent request may see less
    /// capacity than there is (a spurious denial), never more: the guarantee stays exact.
    async fn decide_across_slots(
        &self,
        batch: &[LimitRequest],
    ) -> Result<BatchOutcome, StoreError> {
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (i, req) in batch.iter().enumerate() {
            let slot = Slot::for_key(req.key.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let outcomes =
            futures::future::join_all(groups.iter().map(|(_, members)| {
                self.decide_slot(members.iter().map(|&i| &batch[i]).collect())
            }))
            .await;
        let mut keys = vec![None; batch.len()];
        let mut now_us = 0;
        let mut committed = true;
        let mut taken_groups = Vec::new();
        let mut first_error = None;
        for ((_, members), outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Ok(o) => {
                    now_us = now_us.max(o.now_us);
                    committed &= o.committed;
                    if o.committed {
                        taken_groups.push(members);
                    }
                    for (&i, k) in members.iter().zip(o.keys) {
                        keys[i] = Some(k);
                    }
                }
                Err(e) => {
                    committed = false;
                    first_error.get_or_insert(e);
                }
            }
        }
        if !committed {
            for members in taken_groups {
                // Only allowed limits were taken (a denied shadow-mode limit took nothing).
                let taken: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| keys[i].is_some_and(|k| k.verdict == Verdict::Allowed))
                    .collect();
                self.refund_slot(batch, &taken).await?;
                for i in taken {
                    if let Some(k) = keys[i].as_mut() {
                        *k = untaken_view(*k, &batch[i]);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(BatchOutcome {
            now_us,
            committed,
            keys: keys
                .into_iter()
                .map(|k| k.unwrap_or(DENIED_UNKNOWN))
                .collect(),
            key_limited: false,
        })
    }

    async fn refund_slot(&self, batch: &[LimitRequest], taken: &[usize]) -> Result<(), StoreError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut invocation = self.refund.prepare_invoke();
        for &i in taken {
            let req = &batch[i];
            invocation
                .key(req.key.as_str())
                .arg(req.gcra.emission_interval_us.saturating_mul(req.cost));
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// Placeholder never reported: every slot group fills its keys or the batch errors out.
const DENIED_UNKNOWN: KeyOutcome = KeyOutcome {
    verdict: Verdict::Denied { retry_after_us: 0 },
    remaining: 0,
    reset_after_us: 0,
};

/// What an allowed-then-refunded limit reports: the state before the request.
fn untaken_view(taken: KeyOutcome, req: &LimitRequest) -> KeyOutcome {
    if taken.verdict != Verdict::Allowed {
        return taken;
    }
    KeyOutcome {
        verdict: Verdict::Allowed,
        remaining: (taken.remaining + req.cost).min(req.gcra.burst),
        reset_after_us: taken
            .reset_after_us
            .saturating_sub(req.gcra.emission_interval_us.saturating_mul(req.cost)),
    }
}

/// Runs the decision script once over `requests`, decided in order, each all or nothing (on a
/// Cluster all keys must share one slot).
pub(super) async fn run_decisions(
    conn: &RedisConnection,
    script: &Script,
    requests: &[Vec<&LimitRequest>],
) -> Result<Vec<BatchOutcome>, StoreError> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(requests.len());
    for request in requests {
        invocation.arg(request.len());
        for limit in request {
            invocation
                .key(limit.key.as_str())
                .arg(limit.gcra.emission_interval_us)
                .arg(limit.gcra.burst)
                .arg(limit.cost)
                .arg(if limit.enforced { "1" } else { "0" });
        }
    }
    let reply: Vec<i64> = invocation
        .invoke_async(&mut conn.clone())
        .await
        .map_err(store_error)?;
    parse_decisions(&reply, requests.iter().map(|r| r.len()))
}

/// Decodes the script's flat reply (see the contract at the top of `gcra.lua`) for requests
/// of the given sizes.
fn parse_decisions(
    reply: &[i64],
    sizes: impl ExactSizeIterator<Item = usize> + Clone,
) -> Result<Vec<BatchOutcome>, StoreError> {
    let expected = 1 + sizes.clone().map(|n| 1 + 4 * n).sum::<usize>();
    if reply.len() != expected {
        return Err(StoreError::permanent(format!(
            "decision script returned {} values where {expected} were expected",
            reply.len()
        )));
    }
    let non_negative = |v: i64| u64::try_from(v).unwrap_or_default();
    let now_us = non_negative(reply[0]);
    let mut at = 1;
    let mut outcomes = Vec::with_capacity(sizes.len());
    for n in sizes {
        let committed = reply[at] == 1;
        let keys = reply[at + 1..at + 1 + 4 * n]
            .chunks_exact(4)
            .map(|c| {
                let verdict = match c[0] {
                    1 => Verdict::Allowed,
                    2 => Verdict::CostExceedsBurst,
                    _ => Verdict::Denied {
                        retry_after_us: non_negative(c[3]),
                    },
                };
                KeyOutcome {
                    verdict,
                    remaining: non_negative(c[1]),
                    reset_after_us: non_negative(c[2]),
                }
            })
            .collect();
        outcomes.push(BatchOutcome {
            now_us,
            committed,
            keys,
            key_limited: false,
        });
        at += 1 + 4 * n;
    }
    Ok(outcomes)
}

fn override_field(tenant: &str, resource: Option<&str>) -> String {
    format!("{tenant}\n{}", resource.unwrap_or_default())
}

/// Encodes an override for storage as `rate period_us burst`.
fn encode_limit(limit: &Limit) -> String {
    format!(
        "{} {} {}",
        limit.rate(),
        limit.period().as_micros(),
        limit.burst()
    )
}

/// The inverse of [`encode_limit`].
fn decode_limit(text: &str) -> Result<Limit, StoreError> {
    let bad = || StoreError::permanent(format!("malformed stored limit {text:?}"));
    let mut parts = text.split(' ').map(|p| p.parse::<u64>().map_err(|_| bad()));
    let (Some(rate), Some(period_us), Some(burst), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Limit::new(rate?, std::time::Duration::from_micros(period_us?), burst?)
        .map_err(|e| StoreError::permanent(format!("stored limit {text:?} is invalid: {e}")))
}

impl RateLimitStore for RedisStore {
    async fn decide(&self, batch: &[LimitRequest]) -> Result<BatchOutcome, StoreError> {
        // A single node batches; a Cluster call can only hold keys of one slot.
        if let Some(batcher) = &self.batcher {
            return batcher.decide(batch).await;
        }
        let first = batch.first().map(|r| Slot::for_key(r.key.as_bytes()));
        let one_slot = batch
            .iter()
            .all(|r| Some(Slot::for_key(r.key.as_bytes())) == first);
        if one_slot {
            self.decide_slot(batch.iter().collect()).await
        } else {
            self.decide_across_slots(batch).await
        }
    }

    async fn set_override(&self, policy: &PolicyOverride) -> Result<(), StoreError> {
        let field = override_field(&policy.tenant, policy.resource.as_deref());
        let _: () = redis::pipe()
            .atomic()
            .hset(OVERRIDES_KEY, field, encode_limit(&policy.limit))
            .ignore()
            .hincr(OVERRIDES_KEY, VERSION_FIELD, 1)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn delete_override(
        &self,
        tenant: &str,
        resource: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (deleted, _version): (u64, u64) = redis::pipe()
            .atomic()
            .hdel(OVERRIDES_KEY, override_field(tenant, resource))
            .hincr(OVERRIDES_KEY, VERSION_FIELD, 1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(deleted > 0)
    }

    async fn load_overrides(
        &self,
        known: Option<u64>,
    ) -> Result<Option<OverrideSnapshot>, StoreError> {
        let mut conn = self.conn.clone();
        let version: Option<u64> = conn
            .hget(OVERRIDES_KEY, VERSION_FIELD)
            .await
            .map_err(store_error)?;
        let version = version.unwrap_or_default();
        if known == Some(version) {
            return Ok(None);
        }
        let all: Vec<(String, String)> = conn.hgetall(OVERRIDES_KEY).await.map_err(store_error)?;
        let mut overrides = Vec::with_capacity(all.len());
        let mut snapshot_version = version;
        for (field, value) in all {
            if field == VERSION_FIELD {
                // The hash is read whole, so its own version is the one that matches it.
                snapshot_version = value.parse().unwrap_or(version);
                continue;
            }
            let Some((tenant, resource)) = field.split_once('\n') else {
                return Err(StoreError::permanent(format!(
                    "malformed override field {field:?}"
                )));
            };
            overrides.push(PolicyOverride {
                tenant: tenant.to_owned(),
                resource: (!resource.is_empty()).then(|| resource.to_owned()),
                limit: decode_limit(&value)?,
            });
        }
        Ok(Some(OverrideSnapshot {
            version: snapshot_version,
            overrides,
        }))
    }

    async fn reset_counters(&self, key: &str, with_children: bool) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut deleted: u64 = 0;
        if with_children {
            let pattern = format!("{}:*", glob_escaped(key));
            let mut cursor = "0".to_owned();
            loop {
                let (next, n): (String, u64) = self
                    .reset
                    .key(key)
                    .arg(&cursor)
                    .arg(&pattern)
                    .arg(RESET_SCAN_COUNT)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(store_error)?;
                deleted += n;
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        } else {
            deleted = conn.del(key).await.map_err(store_error)?;
        }
        // Every replica reloads the overrides when their version moves, and clears its deny
        // cache then, so no replica keeps answering a reset key from it.
        let _: u64 = conn
            .hincr(OVERRIDES_KEY, VERSION_FIELD, 1)
            .await
            .map_err(store_error)?;
        Ok(deleted)
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_shares_a_slot_and_tenants_spread_over_the_cluster() {
        use crate::keys::{check_key, envoy_key};
        let slot = |k: String| Slot::for_key(k.as_bytes());
        let acme = slot(check_key("acme", "default", ""));
        assert_eq!(slot(check_key("acme", "search", "user-1")), acme);
        assert_eq!(slot(check_key("acme", "upload", "user-2")), acme);
        let slots: std::collections::HashSet<_> = (0..200)
            .map(|i| slot(check_key(&format!("tenant-{i}"), "default", "")))
            .collect();
        assert!(
            slots.len() > 150,
            "200 tenants on only {} slots",
            slots.len()
        );
        let edge: std::collections::HashSet<_> = (0..200)
            .map(|i| slot(envoy_key("edge", [("ip", format!("10.0.0.{i}").as_str())])))
            .collect();
        assert!(
            edge.len() > 150,
            "one Envoy domain on only {} slots",
            edge.len()
        );
    }

    #[test]
    fn decision_reply_is_decoded_per_limit() {
        let reply = [
            1_700_000_000_000_000,
            0,
            1,
            4,
            100,
            0,
            0,
            0,
            600,
            250,
            2,
            5,
            0,
            0,
        ];
        let out = parse_decisions(&reply, [3].into_iter()).unwrap().remove(0);
        assert_eq!(out.now_us, 1_700_000_000_000_000);
        assert!(!out.committed);
        assert_eq!(out.keys[0].verdict, Verdict::Allowed);
        assert_eq!(out.keys[0].remaining, 4);
        assert_eq!(
            out.keys[1].verdict,
            Verdict::Denied {
                retry_after_us: 250
            }
        );
        assert_eq!(out.keys[2].verdict, Verdict::CostExceedsBurst);
        assert!(parse_decisions(&reply, [2].into_iter()).is_err());
        // Two requests in one call: the second's verdicts follow the first's.
        let two = [7, 1, 1, 3, 0, 0, 0, 0, 9, 9, 40];
        let outs = parse_decisions(&two, [1, 1].into_iter()).unwrap();
        assert_eq!(outs.len(), 2);
        assert!(outs[0].committed && !outs[1].committed);
        assert_eq!(outs[1].now_us, 7);
        assert_eq!(
            outs[1].keys[0].verdict,
            Verdict::Denied { retry_after_us: 40 }
        );
    }
}
