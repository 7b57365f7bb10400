//! Recording completed calls: counts, error codes, latency histograms; one recorder per executor.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::correctness::{Ledger, LedgerKey};
use crate::scenario::{Outcome, ScenarioKind};

/// Highest latency tracked, in microseconds (one hour); larger values count as one hour.
const MAX_TRACKED_MICROS: u64 = 3_600_000_000;
/// Significant digits of the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;

/// gRPC status code names, by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A new latency histogram (1 µs .. 1 h, 3 significant digits).
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1, high >= 2 × low,
    // sigfig <= 5), so creation cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Adds `from` into `into`.
fn add_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Every histogram here comes from new_histogram with the same bounds, so every value of
    // `from` is trackable by `into` and addition cannot fail.
    #[allow(clippy::expect_used)]
    into.add(from).expect("histograms with equal bounds add");
}

/// Microseconds from `from` to `to`, at least 1 (the histogram's lowest value).
pub fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One finished call.
#[derive(Debug, Clone, Copy)]
pub struct Completed {
    /// Its scenario.
    pub scenario: ScenarioKind,
    /// (tenant rank, key rank) for rate-limit calls.
    pub key: Option<(u32, u32)>,
    /// When it should have been sent: the schedule's time in the open loop, the send time in
    /// the closed loop. Latency counts from here, so a late send is not hidden.
    pub intended: Instant,
    /// When it was handed to the gRPC client.
    pub sent: Instant,
    /// When the answer (or the timeout) came.
    pub received: Instant,
    /// How it counts.
    pub outcome: Outcome,
}

/// Counters of one scenario (or of all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls completed (answered, failed or timed out).
    pub requests: u64,
    /// Rate-limit decisions that allowed.
    pub allowed: u64,
    /// Rate-limit decisions that denied.
    pub denied: u64,
    /// Decisions made by the fail mode (store unreachable); also counted as allowed/denied.
    pub degraded: u64,
    /// Envoy answers with overall code UNKNOWN.
    pub unknown_decisions: u64,
    /// verify/login calls answered OK.
    pub answered: u64,
    /// Error statuses, by code number.
    pub errors: [u64; 17],
}

impl Counts {
    /// All error statuses.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Non-zero error counts by code name.
    pub fn errors_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CODE_NAMES
            .iter()
            .zip(self.errors)
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| (*name, n))
    }

    /// Adds `other`.
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.degraded += other.degraded;
        self.unknown_decisions += other.unknown_decisions;
        self.answered += other.answered;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
    }

    /// Counts one outcome.
    fn count(&mut self, outcome: Outcome) {
        self.requests += 1;
        match outcome {
            Outcome::Decision {
                allowed, degraded, ..
            } => {
                if allowed {
                    self.allowed += 1;
                } else {
                    self.denied += 1;
                }
                self.degraded += u64::from(degraded);
            }
            Outcome::UnknownDecision => self.unknown_decisions += 1,
            Outcome::Answered => self.answered += 1,
            Outcome::Error(code) => {
                if let Some(slot) = usize::try_from(code as i32)
                    .ok()
                    .and_then(|i| self.errors.get_mut(i))
                {
                    *slot += 1;
                }
            }
        }
    }
}

/// Counters and histograms of one scenario over the measured period.
#[derive(Debug, Clone)]
pub struct ScenarioStats {
    /// The counters.
    pub counts: Counts,
    /// Intended send time to answer, µs: the latency a user of the service would see.
    pub latency: Histogram<u64>,
    /// Actual send time to answer, µs: the server's share (differs in the open loop when the
    /// generator sends late).
    pub service_time: Histogram<u64>,
}

impl Default for ScenarioStats {
    fn default() -> Self {
        Self {
            counts: Counts::default(),
            latency: new_histogram(),
            service_time: new_histogram(),
        }
    }
}

impl ScenarioStats {
    /// Adds `other`.
    fn add(&mut self, other: &ScenarioStats) {
        self.counts.add(&other.counts);
        add_histogram(&mut self.latency, &other.latency);
        add_histogram(&mut self.service_time, &other.service_time);
    }
}

/// Everything one executor saw.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Calls intended before this belong to the warmup and are not measured.
    measure_from: Instant,
    /// Measured statistics per scenario, by [`ScenarioKind::index`].
    scenarios: [ScenarioStats; 4],
    /// Calls completed during the warmup.
    warmup_requests: u64,
    /// Per-key admissions (correctness mode only), over the whole run.
    ledger: Option<Ledger>,
}

impl Recorder {
    /// A recorder measuring calls intended from `measure_from` on; with a ledger when
    /// `correctness` is on.
    pub fn new(measure_from: Instant, correctness: bool) -> Self {
        Self {
            measure_from,
            scenarios: Default::default(),
            warmup_requests: 0,
            ledger: correctness.then(Ledger::default),
        }
    }

    /// Records one call.
    pub fn record(&mut self, c: &Completed) {
        if let (Some(ledger), Some((tenant, key))) = (self.ledger.as_mut(), c.key)
            && let Outcome::Decision {
                allowed,
                policy_mismatch,
                ..
            } = c.outcome
        {
            let key = LedgerKey {
                scenario: c.scenario,
                tenant,
                key,
            };
            ledger.record(key, c.sent, c.received, allowed);
            if policy_mismatch {
                ledger.record_policy_mismatch();
            }
        }
        if c.intended < self.measure_from {
            self.warmup_requests += 1;
            return;
        }
        let stats = &mut self.scenarios[c.scenario.index()];
        stats.counts.count(c.outcome);
        stats
            .latency
            .saturating_record(micros_between(c.intended, c.received));
        stats
            .service_time
            .saturating_record(micros_between(c.sent, c.received));
    }

    /// Adds another executor's recorder.
    pub fn merge(&mut self, other: Recorder) {
        self.warmup_requests += other.warmup_requests;
        for (mine, theirs) in self.scenarios.iter_mut().zip(&other.scenarios) {
            mine.add(theirs);
        }
        match (&mut self.ledger, other.ledger) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// Measured statistics of one scenario.
    pub fn scenario(&self, kind: ScenarioKind) -> &ScenarioStats {
        &self.scenarios[kind.index()]
    }

    /// Measured statistics of all scenarios together.
    pub fn total(&self) -> ScenarioStats {
        let mut total = ScenarioStats::default();
        for s in &self.scenarios {
            total.add(s);
        }
        total
    }

    /// Calls completed during the warmup.
    pub fn warmup_requests(&self) -> u64 {
        self.warmup_requests
    }

    /// The correctness ledger, in correctness mode.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencySummary {
    /// The summary of `h`, or `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn completed(intended: Instant, sent_ms: u64, received_ms: u64, outcome: Outcome) -> Completed {
        Completed {
            scenario: ScenarioKind::Check,
            key: Some((0, 0)),
            intended,
            sent: intended + Duration::from_millis(sent_ms),
            received: intended + Duration::from_millis(received_ms),
            outcome,
        }
    }

    const ALLOWED: Outcome = Outcome::Decision {
        allowed: true,
        degraded: false,
        policy_mismatch: false,
    };

    #[test]
    fn latency_counts_from_the_intended_time_not_the_send() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, false);
        // Intended at t0, sent 50 ms late (generator or connection stalled), answered 10 ms
        // after the send: the user waited 60 ms.
        r.record(&completed(t0, 50, 60, ALLOWED));
        let s = r.scenario(ScenarioKind::Check);
        let latency = LatencySummary::of(&s.latency).unwrap();
        let service = LatencySummary::of(&s.service_time).unwrap();
        assert!((59_900..=60_100).contains(&latency.max), "{latency:?}");
        assert!((9_990..=10_010).contains(&service.max), "{service:?}");
    }

    #[test]
    fn warmup_calls_are_not_measured_but_enter_the_ledger() {
        let t0 = Instant::now();
        let measure_from = t0 + Duration::from_secs(1);
        let mut r = Recorder::new(measure_from, true);
        r.record(&completed(t0, 0, 1, ALLOWED));
        r.record(&completed(measure_from, 0, 1, ALLOWED));
        assert_eq!(r.warmup_requests(), 1);
        assert_eq!(r.total().counts.requests, 1);
        let v = r.ledger().unwrap().verdict(&"1/1h".parse().unwrap());
        assert_eq!(v.admitted, 2);
    }

    #[test]
    fn outcomes_and_error_codes_are_counted_by_name() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, false);
        r.record(&completed(t0, 0, 1, ALLOWED));
        r.record(&completed(
            t0,
            0,
            1,
            Outcome::Decision {
                allowed: false,
                degraded: true,
                policy_mismatch: false,
            },
        ));
        for _ in 0..3 {
            r.record(&completed(
                t0,
                0,
                1,
                Outcome::Error(tonic::Code::Unimplemented),
            ));
        }
        r.record(&completed(
            t0,
            0,
            1000,
            Outcome::Error(tonic::Code::DeadlineExceeded),
        ));
        let c = r.total().counts;
        assert_eq!((c.requests, c.allowed, c.denied, c.degraded), (6, 1, 1, 1));
        assert_eq!(c.errors_total(), 4);
        let by_name: Vec<_> = c.errors_by_name().collect();
        assert_eq!(by_name, [("DEADLINE_EXCEEDED", 1), ("UNIMPLEMENTED", 3)]);
    }

    #[test]
    fn merging_adds_counts_histograms_and_ledgers() {
        let t0 = Instant::now();
        let mut a = Recorder::new(t0, true);
        let mut b = Recorder::new(t0, true);
        for ms in 1..=100 {
            a.record(&completed(t0, 0, ms, ALLOWED));
            b.record(&completed(t0, 0, 100 + ms, ALLOWED));
        }
        a.merge(b);
        let total = a.total();
        assert_eq!(total.counts.requests, 200);
        let l = LatencySummary::of(&total.latency).unwrap();
        assert_eq!(l.count, 200);
        // 3 significant digits: the median of 1..=200 ms is 100 ms, within 0.1 %.
        assert!((99_900..=100_100).contains(&l.p50), "{l:?}");
        assert!((199_800..=200_200).contains(&l.max), "{l:?}");
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max);
        assert_eq!(
            a.ledger()
                .unwrap()
                .verdict(&"1/1h".parse().unwrap())
                .admitted,
            200
        );
    }

    #[test]
    fn code_names_are_canonical() {
        let name = |code: tonic::Code| CODE_NAMES[code as usize];
        assert_eq!(name(tonic::Code::Ok), "OK");
        assert_eq!(name(tonic::Code::Unimplemented), "UNIMPLEMENTED");
        assert_eq!(name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(CODE_NAMES.len(), tonic::Code::Unauthenticated as usize + 1);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(LatencySummary::of(&new_histogram()), None);
    }
}
