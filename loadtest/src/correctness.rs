//! Correctness mode: the stated limit, per-key admission ledger, and the GCRA upper bound.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::scenario::ScenarioKind;

/// Smallest period Portcullis accepts.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Largest period Portcullis accepts (366 days).
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// How many worst keys the verdict keeps.
const WORST_KEYS: usize = 5;

/// A limit `RATE/PERIOD[:BURST]`, e.g. `100/1m` or `100/1m:20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Requests admitted per period in the long run.
    pub rate: u64,
    /// The period the rate is measured over.
    pub period: Duration,
    /// Requests admissible at once after an idle spell (defaults to `rate`).
    pub burst: u64,
}

/// Why a `--verify-limit` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitSpecError {
    /// Not of the form RATE/PERIOD[:BURST].
    #[error("expected RATE/PERIOD[:BURST], e.g. 100/1m or 100/1m:20")]
    Shape,
    /// The rate is not a whole number >= 1.
    #[error("rate `{0}` is not a whole number >= 1")]
    Rate(String),
    /// The period is not a duration within Portcullis's range.
    #[error("period `{0}` is not a duration between 1ms and 366 days (e.g. 1s, 1m, 1h)")]
    Period(String),
    /// The burst is not a whole number >= 1.
    #[error("burst `{0}` is not a whole number >= 1 (omit it for burst = rate)")]
    Burst(String),
}

impl FromStr for LimitSpec {
    type Err = LimitSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rate, rest) = s.split_once('/').ok_or(LimitSpecError::Shape)?;
        let (period, burst) = match rest.split_once(':') {
            Some((p, b)) => (p, Some(b)),
            None => (rest, None),
        };
        let rate_value: u64 = rate
            .trim()
            .parse()
            .ok()
            .filter(|&r| r >= 1)
            .ok_or_else(|| LimitSpecError::Rate(rate.to_owned()))?;
        let period_text = period.trim();
        // "100/s" and "100/minute" read as one unit.
        let with_count = if period_text.starts_with(|c: char| c.is_ascii_alphabetic()) {
            format!("1{period_text}")
        } else {
            period_text.to_owned()
        };
        let period_value = humantime::parse_duration(&with_count)
            .ok()
            .filter(|p| (MIN_PERIOD..=MAX_PERIOD).contains(p))
            .ok_or_else(|| LimitSpecError::Period(period.to_owned()))?;
        let burst_value = match burst {
            None => rate_value,
            Some(b) => b
                .trim()
                .parse()
                .ok()
                .filter(|&b| b >= 1)
                .ok_or_else(|| LimitSpecError::Burst(b.to_owned()))?,
        };
        Ok(Self {
            rate: rate_value,
            period: period_value,
            burst: burst_value,
        })
    }
}

impl std::fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}:{}",
            self.rate,
            humantime::format_duration(self.period),
            self.burst
        )
    }
}

impl LimitSpec {
    /// The most GCRA may admit for one key between two instants `elapsed` apart:
    /// `burst + floor(rate × elapsed / period)`. Exact integer arithmetic, saturating.
    pub fn allowed_admissions(&self, elapsed: Duration) -> u64 {
        let period = self.period.as_nanos().max(1);
        let replenished = u128::from(self.rate).saturating_mul(elapsed.as_nanos()) / period;
        self.burst
            .saturating_add(u64::try_from(replenished).unwrap_or(u64::MAX))
    }
}

/// One rate-limited counter as the load generator addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerKey {
    /// Check and Envoy counters are different counters on the server.
    pub scenario: ScenarioKind,
    /// Tenant rank.
    pub tenant: u32,
    /// Key rank.
    pub key: u32,
}

/// What was seen for one key over the whole run (warmup included: the bound covers every
/// admission since the counter was fresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    /// Requests answered `allowed`.
    pub admitted: u64,
    /// Requests answered with a decision (allowed or denied).
    pub decisions: u64,
    /// When the earliest decided request was sent: no decision for it can be earlier.
    pub first_sent: Instant,
    /// When the latest decision arrived: no decision for it can be later.
    pub last_received: Instant,
}

impl KeyRecord {
    /// The span from first send to last receipt: an upper bound of the server-side span
    /// between the key's first and last decision.
    pub fn elapsed(&self) -> Duration {
        self.last_received
            .saturating_duration_since(self.first_sent)
    }
}

/// Per-key admissions of one executor, merged at the end.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// The records by key.
    keys: HashMap<LedgerKey, KeyRecord>,
    /// Check answers whose policy differed from the limit we set (a replica had not picked
    /// it up, or something else overrides it): the bound is then about the wrong limit.
    policy_mismatches: u64,
}

impl Ledger {
    /// Records one decision.
    pub fn record(&mut self, key: LedgerKey, sent: Instant, received: Instant, admitted: bool) {
        let admitted = u64::from(admitted);
        self.keys
            .entry(key)
            .and_modify(|r| {
                r.admitted += admitted;
                r.decisions += 1;
                r.first_sent = r.first_sent.min(sent);
                r.last_received = r.last_received.max(received);
            })
            .or_insert(KeyRecord {
                admitted,
                decisions: 1,
                first_sent: sent,
                last_received: received,
            });
    }

    /// Counts an answer whose policy was not the one set.
    pub fn record_policy_mismatch(&mut self) {
        self.policy_mismatches += 1;
    }

    /// Adds another executor's ledger.
    pub fn merge(&mut self, other: Ledger) {
        self.policy_mismatches += other.policy_mismatches;
        for (key, o) in other.keys {
            self.keys
                .entry(key)
                .and_modify(|r| {
                    r.admitted += o.admitted;
                    r.decisions += o.decisions;
                    r.first_sent = r.first_sent.min(o.first_sent);
                    r.last_received = r.last_received.max(o.last_received);
                })
                .or_insert(o);
        }
    }

    /// The record of one key.
    #[cfg(test)]
    pub fn get(&self, key: &LedgerKey) -> Option<&KeyRecord> {
        self.keys.get(key)
    }

    /// Compares every key with the bound of `limit`.
    pub fn verdict(&self, limit: &LimitSpec) -> Verdict {
        let mut verdict = Verdict {
            limit: *limit,
            keys: self.keys.len(),
            admitted: 0,
            allowed: 0,
            over_admitted: 0,
            policy_mismatches: self.policy_mismatches,
            worst: Vec::new(),
        };
        let mut all: Vec<KeyVerdict> = Vec::with_capacity(self.keys.len());
        for (key, record) in &self.keys {
            let allowed = limit.allowed_admissions(record.elapsed());
            verdict.admitted += record.admitted;
            verdict.allowed = verdict.allowed.saturating_add(allowed);
            verdict.over_admitted += record.admitted.saturating_sub(allowed);
            all.push(KeyVerdict {
                key: *key,
                admitted: record.admitted,
                allowed,
                elapsed: record.elapsed(),
            });
        }
        // Worst first: most over the bound, then closest to it; ties by key for stable output.
        all.sort_by(|a, b| {
            b.margin()
                .cmp(&a.margin())
                .then_with(|| b.admitted.cmp(&a.admitted))
                .then_with(|| a.key.cmp(&b.key))
        });
        all.truncate(WORST_KEYS);
        verdict.worst = all;
        verdict
    }
}

/// The outcome of correctness mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The limit the bound is computed for.
    pub limit: LimitSpec,
    /// Keys that got at least one decision.
    pub keys: usize,
    /// Admissions over all keys.
    pub admitted: u64,
    /// Sum of the per-key bounds.
    pub allowed: u64,
    /// Sum over keys of max(0, admitted − allowed); must be 0.
    pub over_admitted: u64,
    /// Check answers carrying another policy than the one set.
    pub policy_mismatches: u64,
    /// The keys nearest to (or furthest over) their bound.
    pub worst: Vec<KeyVerdict>,
}

/// One key's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVerdict {
    /// The key.
    pub key: LedgerKey,
    /// Admissions seen.
    pub admitted: u64,
    /// The bound for its elapsed time.
    pub allowed: u64,
    /// First send to last receipt.
    pub elapsed: Duration,
}

impl KeyVerdict {
    /// admitted − allowed (negative: under the bound).
    pub fn margin(&self) -> i128 {
        i128::from(self.admitted) - i128::from(self.allowed)
    }
}

/// Whether a policy read from the server is `limit`.
pub fn policy_matches(
    limit: &LimitSpec,
    rate: u64,
    period: Option<&prost_types::Duration>,
    burst: u64,
) -> bool {
    let period_matches = period.is_some_and(|p| {
        u64::try_from(p.seconds).ok() == Some(limit.period.as_secs())
            && u32::try_from(p.nanos).ok() == Some(limit.period.subsec_nanos())
    });
    rate == limit.rate && burst == limit.burst && period_matches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> LimitSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_rate_period_and_optional_burst() {
        assert_eq!(
            spec("100/1m"),
            LimitSpec {
                rate: 100,
                period: Duration::from_secs(60),
                burst: 100
            }
        );
        assert_eq!(spec("5/250ms:2").burst, 2);
        assert_eq!(spec("5/250ms:2").period, Duration::from_millis(250));
        assert_eq!(spec("10/s").period, Duration::from_secs(1));
        assert_eq!(spec("10/minute").period, Duration::from_secs(60));
        assert_eq!(spec("100/1m:20").to_string(), "100/1m:20");
    }

    #[test]
    fn rejects_bad_limits_naming_the_part() {
        let err = |s: &str| s.parse::<LimitSpec>().unwrap_err();
        assert_eq!(err("100"), LimitSpecError::Shape);
        assert_eq!(err("0/1m"), LimitSpecError::Rate("0".into()));
        assert_eq!(err("x/1m"), LimitSpecError::Rate("x".into()));
        assert_eq!(err("1/0s"), LimitSpecError::Period("0s".into()));
        assert_eq!(err("1/400days"), LimitSpecError::Period("400days".into()));
        assert_eq!(err("1/1m:0"), LimitSpecError::Burst("0".into()));
        assert_eq!(err("1/1m:-3"), LimitSpecError::Burst("-3".into()));
    }

    #[test]
    fn bound_is_burst_plus_whole_replenished_units() {
        let l = spec("100/1m");
        assert_eq!(l.allowed_admissions(Duration::ZERO), 100);
        // One unit every 600 ms: 599 ms replenishes nothing, 600 ms one, 6.0 s ten.
        assert_eq!(l.allowed_admissions(Duration::from_millis(599)), 100);
        assert_eq!(l.allowed_admissions(Duration::from_millis(600)), 101);
        assert_eq!(l.allowed_admissions(Duration::from_millis(6_000)), 110);
        assert_eq!(l.allowed_admissions(Duration::from_millis(6_599)), 110);
        let burst = spec("10/1s:3");
        assert_eq!(burst.allowed_admissions(Duration::from_millis(250)), 5);
        // Huge values saturate instead of overflowing.
        let huge = spec(&format!("{}/1ms:{}", u64::MAX, u64::MAX));
        assert_eq!(huge.allowed_admissions(Duration::from_secs(1)), u64::MAX);
    }

    fn key(tenant: u32, key: u32) -> LedgerKey {
        LedgerKey {
            scenario: ScenarioKind::Check,
            tenant,
            key,
        }
    }

    #[test]
    fn ledger_keeps_first_send_and_last_receipt_across_merges() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut a = Ledger::default();
        a.record(key(0, 0), at(100), at(110), true);
        a.record(key(0, 0), at(50), at(60), false);
        let mut b = Ledger::default();
        b.record(key(0, 0), at(200), at(900), true);
        b.record(key(1, 0), at(5), at(6), true);
        b.record_policy_mismatch();
        a.merge(b);
        let r = a.get(&key(0, 0)).unwrap();
        assert_eq!((r.admitted, r.decisions), (2, 3));
        assert_eq!(r.elapsed(), Duration::from_millis(850));
        assert_eq!(a.verdict(&spec("1/1s")).policy_mismatches, 1);
    }

    #[test]
    fn verdict_counts_only_the_excess_and_lists_worst_first() {
        let t0 = Instant::now();
        let l = spec("2/1s");
        let mut ledger = Ledger::default();
        // key (0,0): 5 admitted over 1.0 s → bound 2 + 2 = 4 → 1 over.
        for i in 0..5 {
            ledger.record(key(0, 0), t0, t0 + Duration::from_millis(250 * i), true);
        }
        // key (0,1): 2 admitted at once → bound 2 → at the bound.
        ledger.record(key(0, 1), t0, t0, true);
        ledger.record(key(0, 1), t0, t0, true);
        // key (0,2): 1 admitted, 3 denied → under.
        ledger.record(key(0, 2), t0, t0, true);
        for _ in 0..3 {
            ledger.record(key(0, 2), t0, t0, false);
        }
        let v = ledger.verdict(&l);
        assert_eq!(v.keys, 3);
        assert_eq!(v.admitted, 8);
        assert_eq!(v.allowed, 4 + 2 + 2);
        assert_eq!(v.over_admitted, 1);
        let order: Vec<u32> = v.worst.iter().map(|w| w.key.key).collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(v.worst[0].margin(), 1);
    }

    #[test]
    fn policy_comparison_checks_every_field() {
        let l = spec("100/1m:20");
        let minute = prost_types::Duration {
            seconds: 60,
            nanos: 0,
        };
        assert!(policy_matches(&l, 100, Some(&minute), 20));
        assert!(!policy_matches(&l, 100, Some(&minute), 100));
        assert!(!policy_matches(&l, 60, Some(&minute), 20));
        assert!(!policy_matches(&l, 100, None, 20));
        let second = prost_types::Duration {
            seconds: 1,
            nanos: 0,
        };
        assert!(!policy_matches(&l, 100, Some(&second), 20));
    }
}
