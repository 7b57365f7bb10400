//! When a failed call is tried again: which errors, how long to wait, and the shared budget.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tower::retry::budget::{Budget, TpsBudget};

use crate::error::{Error, Reason};

/// Whether a call may be repeated after it may have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Reads and verifications: repeating one changes nothing.
    Idempotent,
    /// Check (may have taken units), Refresh (a second one is reuse), logins and every write:
    /// repeated only when the request never left this process.
    NeverSentOnly,
}

/// The retry settings of a handle, shared by its clones.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Attempts of one call, the first included (1 = no retries).
    pub(crate) max_attempts: usize,
    /// First backoff delay (doubled per retry, with jitter).
    pub(crate) min_delay: Duration,
    /// Largest backoff delay (a server's RetryInfo may ask for more).
    pub(crate) max_delay: Duration,
    /// Retries allowed in proportion to calls, shared by every clone so a dead deployment
    /// does not see each call multiplied by `max_attempts`.
    pub(crate) budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    /// The delays between attempts: exponential with jitter, `max_attempts - 1` of them.
    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1))
            .build()
    }

    /// Records a first attempt: it earns the budget its share of retries.
    pub(crate) fn record_call(&self) {
        self.budget.deposit();
    }

    /// The delay before the next attempt after `error`, or None to give up: the error must be
    /// one this call may repeat, `backoff` must have a delay left, and the budget must allow
    /// a retry. The server's RetryInfo is the least delay.
    pub(crate) fn next_delay(
        &self,
        idempotency: Idempotency,
        error: &Error,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Option<Duration> {
        if !retryable(idempotency, error) {
            return None;
        }
        let delay = backoff.next()?;
        if !self.budget.withdraw() {
            return None;
        }
        Some(error.retry_after().map_or(delay, |hint| delay.max(hint)))
    }
}

/// Whether `error` may be retried for a call of this idempotency.
fn retryable(idempotency: Idempotency, error: &Error) -> bool {
    match (idempotency, error) {
        // Nothing was sent: safe for every call.
        (
            _,
            Error::Unavailable {
                never_sent: true, ..
            },
        ) => true,
        (Idempotency::NeverSentOnly, _) => false,
        // A broken connection, or a replica or store that is briefly unavailable.
        (Idempotency::Idempotent, Error::Unavailable { .. }) => true,
        (
            Idempotency::Idempotent,
            Error::Status {
                reason: Some(Reason::StoreUnavailable | Reason::RevocationsNotLoaded),
                ..
            },
        ) => true,
        // A deadline is the whole call's: no time is left for another attempt.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget: TpsBudget) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            budget: Arc::new(budget),
        }
    }

    fn refused(never_sent: bool) -> Error {
        Error::Unavailable {
            message: "connection refused".into(),
            never_sent,
        }
    }

    #[test]
    fn never_sent_errors_retry_every_call_other_errors_only_idempotent_ones() {
        let policy = policy(TpsBudget::new(Duration::from_secs(10), 100, 0.2));
        let mut backoff = policy.backoff();
        assert!(
            policy
                .next_delay(Idempotency::NeverSentOnly, &refused(true), &mut backoff)
                .is_some()
        );
        assert!(
            policy
                .next_delay(Idempotency::NeverSentOnly, &refused(false), &mut backoff)
                .is_none()
        );
        assert!(
            policy
                .next_delay(Idempotency::Idempotent, &refused(false), &mut backoff)
                .is_some()
        );
        let deadline = Error::DeadlineExceeded {
            deadline: Duration::from_millis(250),
        };
        assert!(
            policy
                .next_delay(Idempotency::Idempotent, &deadline, &mut backoff)
                .is_none()
        );
    }

    #[test]
    fn attempts_are_bounded_and_retry_info_is_the_least_delay() {
        let policy = policy(TpsBudget::new(Duration::from_secs(10), 100, 0.2));
        let store_down = Error::Status {
            code: tonic::Code::Unavailable,
            reason: Some(Reason::RevocationsNotLoaded),
            message: String::new(),
            retry_after: Some(Duration::from_secs(2)),
            field_violations: Vec::new(),
        };
        let mut backoff = policy.backoff();
        for _ in 0..3 {
            let delay = policy
                .next_delay(Idempotency::Idempotent, &store_down, &mut backoff)
                .expect("a retry");
            assert!(delay >= Duration::from_secs(2), "{delay:?}");
        }
        assert!(
            policy
                .next_delay(Idempotency::Idempotent, &store_down, &mut backoff)
                .is_none(),
            "a fourth retry of four attempts"
        );
    }

    #[test]
    fn an_exhausted_budget_stops_retries() {
        // A reserve of 1 retry per second over 1 s, and no share earned by calls.
        let policy = policy(TpsBudget::new(Duration::from_secs(1), 1, 0.0));
        let mut granted = 0;
        for _ in 0..10 {
            policy.record_call();
            let mut backoff = policy.backoff();
            if policy
                .next_delay(Idempotency::Idempotent, &refused(true), &mut backoff)
                .is_some()
            {
                granted += 1;
            }
        }
        assert!(granted >= 1, "the reserve allows a retry");
        assert!(granted < 10, "the budget ran out: {granted} of 10 retried");
        // Clones share the budget.
        let clone = policy.clone();
        let mut backoff = clone.backoff();
        assert!(
            clone
                .next_delay(Idempotency::Idempotent, &refused(true), &mut backoff)
                .is_none()
        );
    }
}
