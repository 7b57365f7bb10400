//! GCRA, the generic cell rate algorithm: the pure decision math, with the clock passed in.
//!
//! State per key is one number, the theoretical arrival time (TAT) in microseconds since the
//! Unix epoch. With emission interval `T = period / rate` and tolerance `τ = T × burst`:
//! `tat = min(max(stored, now), now + τ)`, `new_tat = tat + T × cost`; the request fits when
//! `new_tat − τ ≤ now`. A key never admits more than `burst + elapsed / T` units, and a
//! denied request takes nothing. The upper clamp matters only after the key's policy changed:
//! a TAT pushed far ahead by a stricter (or longer) policy would otherwise keep denying under
//! the new one for as long as the old one could; clamped, no decision denies longer than the
//! policy in force could, and the clamped TAT is stored (it means the same under that policy). The Redis Lua script (`store/redis/scripts/gcra.lua`)
//! implements the same steps; the shared behaviour suite holds the two to the same answers.

/// The two numbers GCRA needs, derived from a [`Limit`](super::policy::Limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// Microseconds one unit occupies (`period / rate`, rounded up so rounding never admits
    /// more than the policy allows).
    pub emission_interval_us: u64,
    /// Units that fit at once; the tolerance is `emission_interval_us × burst`.
    pub burst: u64,
}

impl GcraParams {
    /// `τ`: how far ahead of now the TAT may run.
    pub fn tolerance_us(&self) -> u64 {
        self.emission_interval_us.saturating_mul(self.burst)
    }
}

/// What a decision says about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The cost fits now.
    Allowed,
    /// The cost fits after `retry_after_us` (given no other traffic).
    Denied { retry_after_us: u64 },
    /// The cost exceeds the burst: it can never fit, so no retry time is given.
    CostExceedsBurst,
}

/// The outcome of one GCRA step on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOutcome {
    /// Whether the cost fits.
    pub verdict: Verdict,
    /// Units that would fit right after this decision (after taking the cost if allowed).
    pub remaining: u64,
    /// Microseconds until the key is back to a full burst.
    pub reset_after_us: u64,
}

/// A decision before it is committed: what to report, and the TAT to store if it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The outcome if the step is committed (for `Allowed`) or in any case (for denials).
    pub outcome: KeyOutcome,
    /// The new TAT to store when allowed and committed.
    pub new_tat_us: Option<u64>,
    /// The stored TAT clamped to `now + τ`, when it was further ahead (its policy changed):
    /// to be stored whatever the batch decides, since under this policy it means the same
    /// and, unstored, the far TAT would be clamped again on every call and never run out.
    pub clamped_tat_us: Option<u64>,
    /// The outcome to report when the step was allowed but not committed (another limit of the
    /// same request denied): nothing taken, so the numbers are those before this request.
    pub untaken: KeyOutcome,
}

/// One GCRA step: decides whether `cost` units fit at `now_us` given the stored TAT.
pub fn step(params: GcraParams, stored_tat_us: Option<u64>, now_us: u64, cost: u64) -> Step {
    let t = params.emission_interval_us.max(1);
    let tau = params.tolerance_us();
    let ceiling = now_us.saturating_add(tau);
    let clamped_tat_us = stored_tat_us
        .filter(|&stored| stored > ceiling)
        .map(|_| ceiling);
    let tat = stored_tat_us.unwrap_or(now_us).clamp(now_us, ceiling);
    let untaken = KeyOutcome {
        verdict: Verdict::Allowed,
        remaining: tau.saturating_sub(tat - now_us) / t,
        reset_after_us: tat - now_us,
    };
    if cost > params.burst {
        let outcome = KeyOutcome {
            verdict: Verdict::CostExceedsBurst,
            ..untaken
        };
        return Step {
            outcome,
            new_tat_us: None,
            clamped_tat_us,
            untaken: outcome,
        };
    }
    let new_tat = tat.saturating_add(t.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at > now_us {
        let outcome = KeyOutcome {
            verdict: Verdict::Denied {
                retry_after_us: allow_at - now_us,
            },
            ..untaken
        };
        return Step {
            outcome,
            new_tat_us: None,
            clamped_tat_us,
            untaken: outcome,
        };
    }
    Step {
        outcome: KeyOutcome {
            verdict: Verdict::Allowed,
            remaining: (tau - (new_tat - now_us)) / t,
            reset_after_us: new_tat - now_us,
        },
        new_tat_us: Some(new_tat),
        clamped_tat_us,
        untaken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    /// 10 per second, burst 5.
    fn params() -> GcraParams {
        GcraParams {
            emission_interval_us: SECOND / 10,
            burst: 5,
        }
    }

    /// Runs steps on one key, committing the allowed ones, like a store does.
    fn run(tat: &mut Option<u64>, now: u64, cost: u64) -> KeyOutcome {
        let s = step(params(), *tat, now, cost);
        if let Some(new) = s.new_tat_us.or(s.clamped_tat_us) {
            *tat = Some(new);
        }
        s.outcome
    }

    #[test]
    fn a_full_burst_is_admitted_at_once_then_denied_with_exact_retry() {
        let mut tat = None;
        let now = 1_000 * SECOND;
        for expected_remaining in (0..5).rev() {
            let o = run(&mut tat, now, 1);
            assert_eq!(o.verdict, Verdict::Allowed);
            assert_eq!(o.remaining, expected_remaining);
        }
        let denied = run(&mut tat, now, 1);
        assert_eq!(
            denied.verdict,
            Verdict::Denied {
                retry_after_us: SECOND / 10
            }
        );
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.reset_after_us, SECOND / 2);
        // Waiting exactly retry_after succeeds; a microsecond less does not.
        assert!(matches!(
            run(&mut tat, now + SECOND / 10 - 1, 1).verdict,
            Verdict::Denied { retry_after_us: 1 }
        ));
        assert_eq!(
            run(&mut tat, now + SECOND / 10, 1).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn denial_takes_nothing() {
        let mut tat = None;
        let now = 50 * SECOND;
        assert_eq!(run(&mut tat, now, 4).verdict, Verdict::Allowed);
        let before = tat;
        assert!(matches!(
            run(&mut tat, now, 2).verdict,
            Verdict::Denied { .. }
        ));
        assert_eq!(tat, before);
        // The one unit still available is still there.
        assert_eq!(run(&mut tat, now, 1).verdict, Verdict::Allowed);
    }

    #[test]
    fn cost_above_burst_can_never_fit() {
        let s = step(params(), None, SECOND, 6);
        assert_eq!(s.outcome.verdict, Verdict::CostExceedsBurst);
        assert_eq!(s.new_tat_us, None);
        assert_eq!(s.outcome.remaining, 5);
    }

    #[test]
    fn admissions_never_exceed_burst_plus_elapsed_rate() {
        // Hammer one key every 8 µs for 3 s (landing on 3 s exactly) and count admissions.
        let mut tat = None;
        let start = 10 * SECOND;
        let mut admitted = 0u64;
        let mut now = start;
        while now <= start + 3 * SECOND {
            if run(&mut tat, now, 1).verdict == Verdict::Allowed {
                admitted += 1;
                let elapsed = now - start;
                assert!(admitted <= 5 + elapsed / (SECOND / 10), "at {elapsed}µs");
            }
            now += 8;
        }
        assert_eq!(admitted, 5 + 30);
    }

    #[test]
    fn idle_key_refills_to_full_burst() {
        let mut tat = None;
        let now = SECOND;
        assert_eq!(run(&mut tat, now, 5).verdict, Verdict::Allowed);
        let later = run(&mut tat, now + 10 * SECOND, 1);
        assert_eq!(later.verdict, Verdict::Allowed);
        assert_eq!(later.remaining, 4);
    }

    #[test]
    fn untaken_reports_the_state_before_the_request() {
        let s = step(params(), None, SECOND, 2);
        assert_eq!(s.outcome.remaining, 3);
        assert_eq!(s.untaken.remaining, 5);
        assert_eq!(s.untaken.reset_after_us, 0);
    }

    #[test]
    fn a_tat_pushed_ahead_by_an_older_policy_denies_no_longer_than_the_new_one_could() {
        let now = 1_000 * SECOND;
        // One per 30 days, taken: the TAT is 30 days ahead.
        let month = GcraParams {
            emission_interval_us: 30 * 24 * 3600 * SECOND,
            burst: 1,
        };
        let pushed = step(month, None, now, 1).new_tat_us.unwrap();
        // Under 10 per second (burst 5) the key is full at most: denied for one interval.
        let s = step(params(), Some(pushed), now, 1);
        assert_eq!(
            s.outcome.verdict,
            Verdict::Denied {
                retry_after_us: SECOND / 10
            }
        );
        assert_eq!(s.outcome.reset_after_us, SECOND / 2);
        assert_eq!(s.clamped_tat_us, Some(now + SECOND / 2));
        // With the clamp stored, the key refills under the new policy.
        let mut tat = s.clamped_tat_us;
        assert_eq!(
            run(&mut tat, now + SECOND / 10, 1).verdict,
            Verdict::Allowed
        );
        assert_eq!(run(&mut tat, now + SECOND, 5).verdict, Verdict::Allowed);
        // A TAT within the tolerance is never clamped.
        assert_eq!(
            step(params(), Some(now + SECOND / 2), now, 1).clamped_tat_us,
            None
        );
    }
}
