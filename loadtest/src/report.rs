//! The end-of-run summary: built from the recorders, printed as text and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::correctness::Verdict;
use crate::driver::Mode;
use crate::scenario::{Mix, ScenarioKind};
use crate::stats::{Counts, LatencySummary, Recorder, ScenarioStats};

/// Facts about the run that the recorders do not know.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The scenarios and weights.
    pub mix: Mix,
    /// Closed or open loop.
    pub mode: Mode,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Connections per target.
    pub connections: u32,
    /// Tenants in the key space.
    pub tenants: u32,
    /// Keys per tenant.
    pub keys: u32,
    /// `uniform` or `zipfian(s=1)`.
    pub distribution: String,
    /// The seed, to rerun the same choices.
    pub seed: u64,
    /// Warmup length.
    pub warmup: Duration,
    /// Measured length (shorter than asked when interrupted).
    pub measured: Duration,
    /// Whether Ctrl-C ended the run.
    pub interrupted: bool,
    /// Open loop: calls due in the measured period that were dropped.
    pub dropped: u64,
}

/// The summary, in the shape of the JSON file (keys are always present; `null` where a
/// figure does not apply).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `check`, or the mix, e.g. `mixed(check=8,verify=1)`.
    pub scenario: String,
    /// Closed or open loop and its parameter.
    pub mode: ModeSummary,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Connections per target.
    pub connections_per_target: u32,
    /// Tenants in the key space.
    pub tenants: u32,
    /// Keys per tenant.
    pub keys: u32,
    /// Key distribution.
    pub distribution: String,
    /// Seed of the random choices.
    pub seed: u64,
    /// Warmup, seconds.
    pub warmup_secs: f64,
    /// Measured period, seconds.
    pub measured_secs: f64,
    /// Ended by Ctrl-C.
    pub interrupted: bool,
    /// Calls completed during the warmup (not in the figures).
    pub warmup_requests: u64,
    /// Open loop: measured calls not sent because max-in-flight calls were in flight.
    pub dropped: Option<u64>,
    /// All scenarios together.
    #[serde(flatten)]
    pub total: ScenarioSummary,
    /// Per scenario, when there are several.
    pub scenarios: BTreeMap<&'static str, ScenarioSummary>,
    /// Correctness mode's verdict.
    pub correctness: Option<CorrectnessSummary>,
}

/// The load mode.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModeSummary {
    /// Fixed calls in flight.
    ClosedLoop {
        /// Calls in flight.
        concurrency: u32,
    },
    /// Fixed call rate.
    OpenLoop {
        /// Calls per second scheduled.
        rate: f64,
        /// In-flight cap.
        max_in_flight: u64,
    },
}

/// Measured figures of one scenario or of all.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    /// Calls completed in the measured period (intended send time after the warmup).
    pub requests: u64,
    /// requests / measured seconds.
    pub throughput_rps: f64,
    /// Error statuses.
    pub errors: ErrorSummary,
    /// Rate-limit decisions (check, envoy-rls).
    pub decisions: Option<DecisionSummary>,
    /// verify/login calls answered OK.
    pub answered_ok: Option<u64>,
    /// Latency from the intended send time, µs, over every completed call (errors included).
    pub latency_us: Option<LatencySummary>,
    /// Open loop: latency from the actual send, µs (the server's share).
    pub service_time_us: Option<LatencySummary>,
}

/// Error statuses.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorSummary {
    /// All of them.
    pub total: u64,
    /// By gRPC code name, e.g. `UNIMPLEMENTED`.
    pub by_code: BTreeMap<&'static str, u64>,
}

/// Rate-limit decisions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DecisionSummary {
    /// Allowed.
    pub allowed: u64,
    /// Denied.
    pub denied: u64,
    /// Made by the server's fail mode (store unreachable); included in allowed/denied.
    pub degraded: u64,
    /// Envoy overall code UNKNOWN.
    pub unknown: u64,
}

/// Correctness mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CorrectnessSummary {
    /// The limit, `RATE/PERIOD:BURST`.
    pub limit: String,
    /// Keys that got decisions.
    pub keys: usize,
    /// Admissions over all keys (warmup included).
    pub admitted: u64,
    /// Sum of the per-key bounds.
    pub allowed: u64,
    /// Sum over keys of max(0, admitted − allowed); 0 for an exact limiter.
    pub over_admitted: u64,
    /// Check answers carrying another policy than the one set.
    pub policy_mismatches: u64,
    /// Keys nearest to, or furthest over, their bound.
    pub worst_keys: Vec<WorstKey>,
}

/// One key of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct WorstKey {
    /// check or envoy-rls.
    pub scenario: &'static str,
    /// Tenant name.
    pub tenant: String,
    /// Key name.
    pub key: String,
    /// Admissions seen.
    pub admitted: u64,
    /// The bound for its elapsed time.
    pub allowed: u64,
    /// First send to last answer, seconds.
    pub elapsed_secs: f64,
}

impl Summary {
    /// Builds the summary. `names` maps tenant and key ranks to the names sent.
    pub fn build(
        info: &RunInfo,
        recorder: &Recorder,
        verdict: Option<&Verdict>,
        names: (&[String], &[String]),
    ) -> Self {
        let open = matches!(info.mode, Mode::Open { .. });
        let kinds: Vec<ScenarioKind> = info.mix.kinds().collect();
        let rate_limited = kinds.iter().any(|k| k.is_rate_limit());
        let auth = kinds.iter().any(|k| !k.is_rate_limit());
        let summarize = |stats: &ScenarioStats, rate_limited: bool, auth: bool| {
            scenario_summary(stats, info.measured, open, rate_limited, auth)
        };
        let scenarios = if kinds.len() > 1 {
            kinds
                .iter()
                .map(|&k| {
                    let s = summarize(recorder.scenario(k), k.is_rate_limit(), !k.is_rate_limit());
                    (k.name(), s)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let scenario = match kinds.as_slice() {
            [single] => single.name().to_owned(),
            _ => format!("mixed({})", info.mix.describe()),
        };
        Self {
            scenario,
            mode: match info.mode {
                Mode::Closed { concurrency } => ModeSummary::ClosedLoop { concurrency },
                Mode::Open {
                    rate,
                    max_in_flight,
                } => ModeSummary::OpenLoop {
                    rate,
                    max_in_flight,
                },
            },
            targets: info.targets.clone(),
            connections_per_target: info.connections,
            tenants: info.tenants,
            keys: info.keys,
            distribution: info.distribution.clone(),
            seed: info.seed,
            warmup_secs: info.warmup.as_secs_f64(),
            measured_secs: info.measured.as_secs_f64(),
            interrupted: info.interrupted,
            warmup_requests: recorder.warmup_requests(),
            dropped: open.then_some(info.dropped),
            total: summarize(&recorder.total(), rate_limited, auth),
            scenarios,
            correctness: verdict.map(|v| correctness_summary(v, names)),
        }
    }

    /// The text summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    /// Writes the text summary into `out`.
    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        let mode = match self.mode {
            ModeSummary::ClosedLoop { concurrency } => {
                format!("closed loop, {concurrency} in flight")
            }
            ModeSummary::OpenLoop {
                rate,
                max_in_flight,
            } => format!("open loop, {rate} req/s (max {max_in_flight} in flight)"),
        };
        writeln!(out, "portcullis-load: {} — {mode}", self.scenario)?;
        writeln!(
            out,
            "targets         {} × {} connections",
            self.targets.join(", "),
            self.connections_per_target
        )?;
        writeln!(
            out,
            "key space       {} tenants × {} keys, {}; seed {}",
            self.tenants, self.keys, self.distribution, self.seed
        )?;
        let interrupted = if self.interrupted {
            " (interrupted)"
        } else {
            ""
        };
        writeln!(
            out,
            "period          {:.2}s measured after {:.2}s warmup ({} calls){interrupted}",
            self.measured_secs, self.warmup_secs, self.warmup_requests
        )?;
        render_scenario(out, "", &self.total)?;
        if let Some(dropped) = self.dropped {
            writeln!(
                out,
                "dropped         {dropped} (due while max-in-flight calls were in flight)"
            )?;
        }
        for (name, s) in &self.scenarios {
            writeln!(out)?;
            writeln!(out, "[{name}]")?;
            render_scenario(out, "  ", s)?;
        }
        if let Some(c) = &self.correctness {
            writeln!(out)?;
            writeln!(
                out,
                "correctness     limit {}; {} keys; admitted {} of at most {} (GCRA bound per key)",
                c.limit, c.keys, c.admitted, c.allowed
            )?;
            if c.policy_mismatches > 0 {
                writeln!(
                    out,
                    "WARNING         {} check answers carried another policy than {}",
                    c.policy_mismatches, c.limit
                )?;
            }
            writeln!(out, "over-admitted: {}", c.over_admitted)?;
            if !c.worst_keys.is_empty() {
                writeln!(out, "worst keys      (admitted − allowed, highest first)")?;
                writeln!(
                    out,
                    "  {:<10} {:<28} {:<12} {:>9} {:>9} {:>9}",
                    "scenario", "tenant", "key", "admitted", "allowed", "elapsed"
                )?;
                for w in &c.worst_keys {
                    writeln!(
                        out,
                        "  {:<10} {:<28} {:<12} {:>9} {:>9} {:>8.3}s",
                        w.scenario, w.tenant, w.key, w.admitted, w.allowed, w.elapsed_secs
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The JSON text.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// The summary of one scenario's stats.
fn scenario_summary(
    stats: &ScenarioStats,
    measured: Duration,
    open: bool,
    rate_limited: bool,
    auth: bool,
) -> ScenarioSummary {
    let c: &Counts = &stats.counts;
    let secs = measured.as_secs_f64();
    ScenarioSummary {
        requests: c.requests,
        throughput_rps: if secs > 0.0 {
            (c.requests as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        },
        errors: ErrorSummary {
            total: c.errors_total(),
            by_code: c.errors_by_name().collect(),
        },
        decisions: rate_limited.then_some(DecisionSummary {
            allowed: c.allowed,
            denied: c.denied,
            degraded: c.degraded,
            unknown: c.unknown_decisions,
        }),
        answered_ok: auth.then_some(c.answered),
        latency_us: LatencySummary::of(&stats.latency),
        service_time_us: if open {
            LatencySummary::of(&stats.service_time)
        } else {
            None
        },
    }
}

/// The verdict with names.
fn correctness_summary(v: &Verdict, (tenants, keys): (&[String], &[String])) -> CorrectnessSummary {
    let name = |names: &[String], i: u32| names.get(i as usize).cloned().unwrap_or_default();
    CorrectnessSummary {
        limit: v.limit.to_string(),
        keys: v.keys,
        admitted: v.admitted,
        allowed: v.allowed,
        over_admitted: v.over_admitted,
        policy_mismatches: v.policy_mismatches,
        worst_keys: v
            .worst
            .iter()
            .map(|w| WorstKey {
                scenario: w.key.scenario.name(),
                tenant: name(tenants, w.key.tenant),
                key: name(keys, w.key.key),
                admitted: w.admitted,
                allowed: w.allowed,
                elapsed_secs: (w.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            })
            .collect(),
    }
}

/// The lines of one scenario summary.
fn render_scenario(out: &mut String, indent: &str, s: &ScenarioSummary) -> std::fmt::Result {
    writeln!(
        out,
        "{indent}requests        {}  ({} req/s)",
        s.requests, s.throughput_rps
    )?;
    if let Some(d) = &s.decisions {
        write!(
            out,
            "{indent}decisions       allowed {}  denied {}",
            d.allowed, d.denied
        )?;
        if d.degraded > 0 {
            write!(out, "  degraded {}", d.degraded)?;
        }
        if d.unknown > 0 {
            write!(out, "  unknown {}", d.unknown)?;
        }
        writeln!(out)?;
    }
    if let Some(ok) = s.answered_ok {
        writeln!(out, "{indent}answered OK     {ok}")?;
    }
    write!(out, "{indent}errors          {}", s.errors.total)?;
    for (code, n) in &s.errors.by_code {
        write!(out, "  {code} {n}")?;
    }
    writeln!(out)?;
    let line = |label: &str, l: &Option<LatencySummary>| match l {
        Some(l) => format!(
            "{indent}{label:<16}p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (µs)\n",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        ),
        None => format!("{indent}{label:<16}no calls\n"),
    };
    out.push_str(&line("latency", &s.latency_us));
    if s.service_time_us.is_some() {
        out.push_str(&line("service time", &s.service_time_us));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correctness::Ledger;
    use crate::scenario::Outcome;
    use crate::stats::Completed;
    use std::time::Instant;

    fn info(mix: &str, mode: Mode) -> RunInfo {
        RunInfo {
            mix: mix.parse().unwrap(),
            mode,
            targets: vec!["http://127.0.0.1:50051".into()],
            connections: 8,
            tenants: 1,
            keys: 1,
            distribution: "uniform".into(),
            seed: 9,
            warmup: Duration::from_secs(1),
            measured: Duration::from_secs(2),
            interrupted: false,
            dropped: 3,
        }
    }

    fn record(r: &mut Recorder, t0: Instant, scenario: ScenarioKind, ms: u64, outcome: Outcome) {
        r.record(&Completed {
            scenario,
            key: Some((0, 0)),
            intended: t0,
            sent: t0,
            received: t0 + Duration::from_millis(ms),
            outcome,
        });
    }

    fn sample_recorder(t0: Instant) -> Recorder {
        let mut r = Recorder::new(t0, true);
        let allowed = Outcome::Decision {
            allowed: true,
            degraded: false,
            policy_mismatch: false,
        };
        for ms in 1..=100 {
            record(&mut r, t0, ScenarioKind::Check, ms, allowed);
        }
        for _ in 0..10 {
            record(
                &mut r,
                t0,
                ScenarioKind::Verify,
                1,
                Outcome::Error(tonic::Code::Unimplemented),
            );
        }
        r
    }

    #[test]
    fn json_has_the_documented_shape() {
        let t0 = Instant::now();
        let r = sample_recorder(t0);
        let i = info(
            "check=8,verify=1",
            Mode::Open {
                rate: 55.0,
                max_in_flight: 100,
            },
        );
        let mut ledger = Ledger::default();
        for _ in 0..3 {
            ledger.record(
                crate::correctness::LedgerKey {
                    scenario: ScenarioKind::Check,
                    tenant: 0,
                    key: 0,
                },
                t0,
                t0,
                true,
            );
        }
        let verdict = ledger.verdict(&"2/1h".parse().unwrap());
        let names = (vec!["lt-1-t0".to_owned()], vec!["k0".to_owned()]);
        let s = Summary::build(&i, &r, Some(&verdict), (&names.0, &names.1));
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["scenario"], "mixed(check=8,verify=1)");
        assert_eq!(v["mode"]["kind"], "open_loop");
        assert_eq!(v["mode"]["rate"], 55.0);
        assert_eq!(v["requests"], 110);
        assert_eq!(v["throughput_rps"], 55.0);
        assert_eq!(v["dropped"], 3);
        assert_eq!(v["errors"]["total"], 10);
        assert_eq!(v["errors"]["by_code"]["UNIMPLEMENTED"], 10);
        assert_eq!(v["decisions"]["allowed"], 100);
        assert_eq!(v["answered_ok"], 0);
        for p in ["count", "mean", "p50", "p90", "p99", "p99.9", "max"] {
            assert!(v["latency_us"][p].is_number(), "latency_us.{p}");
        }
        assert_eq!(v["latency_us"]["count"], 110);
        assert!(v["service_time_us"]["p99"].is_number());
        assert_eq!(v["scenarios"]["check"]["requests"], 100);
        assert_eq!(
            v["scenarios"]["check"]["answered_ok"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["scenarios"]["verify"]["decisions"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["scenarios"]["verify"]["errors"]["by_code"]["UNIMPLEMENTED"],
            10
        );
        let c = &v["correctness"];
        assert_eq!(c["over_admitted"], 1);
        assert_eq!(c["allowed"], 2);
        assert_eq!(c["worst_keys"][0]["tenant"], "lt-1-t0");
        assert_eq!(c["worst_keys"][0]["admitted"], 3);
    }

    #[test]
    fn single_scenario_closed_loop_json_and_text() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, false);
        for ms in 1..=1000 {
            record(
                &mut r,
                t0,
                ScenarioKind::Check,
                ms,
                Outcome::Decision {
                    allowed: ms % 2 == 0,
                    degraded: false,
                    policy_mismatch: false,
                },
            );
        }
        let s = Summary::build(
            &info("check=1", Mode::Closed { concurrency: 64 }),
            &r,
            None,
            (&[], &[]),
        );
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["scenario"], "check");
        assert_eq!(v["mode"]["kind"], "closed_loop");
        assert_eq!(v["dropped"], serde_json::Value::Null);
        assert_eq!(v["service_time_us"], serde_json::Value::Null);
        assert_eq!(v["correctness"], serde_json::Value::Null);
        assert_eq!(v["scenarios"], serde_json::json!({}));
        assert_eq!(v["throughput_rps"], 500.0);
        // 1..=1000 ms: p50 = 500 ms, p99 = 990 ms, p99.9 = 999 ms (within 0.1 %).
        let p = |k: &str| v["latency_us"][k].as_u64().unwrap();
        assert!((499_500..=500_500).contains(&p("p50")), "{}", p("p50"));
        assert!((989_000..=991_000).contains(&p("p99")), "{}", p("p99"));
        assert!(
            (998_000..=1_000_000).contains(&p("p99.9")),
            "{}",
            p("p99.9")
        );
        let text = s.render();
        assert!(text.contains("requests        1000  (500 req/s)"), "{text}");
        assert!(text.contains("allowed 500  denied 500"), "{text}");
        assert!(text.contains("p50 "), "{text}");
        assert!(!text.contains("over-admitted"), "{text}");
    }

    #[test]
    fn text_reports_over_admission_and_errors_by_name() {
        let t0 = Instant::now();
        let r = sample_recorder(t0);
        let verdict = r.ledger().unwrap().verdict(&"10/1h".parse().unwrap());
        let names = (vec!["t".to_owned()], vec!["k".to_owned()]);
        let s = Summary::build(
            &info("check=1,verify=1", Mode::Closed { concurrency: 1 }),
            &r,
            Some(&verdict),
            (&names.0, &names.1),
        );
        let text = s.render();
        assert!(text.contains("over-admitted: 90\n"), "{text}");
        assert!(text.contains("UNIMPLEMENTED 10"), "{text}");
        assert!(text.contains("[verify]"), "{text}");
    }
}
