//! Background jobs run on a period until shutdown, with failures logged once per outage.

use std::fmt::Display;
use std::time::Duration;

/// What the log says when a job starts failing (with the error) and when it recovers.
#[derive(Debug, Clone, Copy)]
pub struct OutageMessages {
    /// Logged at WARN with the first error of an outage.
    pub failing: &'static str,
    /// Logged at INFO when the job succeeds again.
    pub recovered: &'static str,
}

/// Runs `job` every `every` (the first run `first_after` from now) until `stop` resolves.
/// A run that overruns delays the next instead of bunching runs up; a failing job is logged
/// when it starts failing and when it recovers, not on every run.
pub async fn run_every<E, Fut>(
    first_after: Duration,
    every: Duration,
    stop: impl Future<Output = ()>,
    messages: OutageMessages,
    mut job: impl FnMut() -> Fut,
) where
    E: Display,
    Fut: Future<Output = Result<(), E>>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first_after, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut failing = false;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match job().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("{}", messages.recovered);
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "{}", messages.failing);
            }
            Err(_) => {}
        }
    }
}

/// Shortest period [`poll_blocking`] accepts: `tokio::time::interval` panics on zero, and a
/// tiny setting would spin on the files.
const MIN_POLL: Duration = Duration::from_millis(10);

/// Runs `check` on the blocking pool (file reads and hashing stay off the async workers) every
/// `every`, at least 10 ms, until `stop` resolves; the first run is one period away, the files
/// having just been read. Each outcome goes to `report`, a panicked check as the `Err`.
pub async fn poll_blocking<T, C, R>(
    every: Duration,
    stop: impl Future<Output = ()>,
    check: C,
    report: R,
) where
    T: Send + 'static,
    C: Fn() -> T + Clone + Send + 'static,
    R: Fn(Result<T, tokio::task::JoinError>) + Clone,
{
    let every = every.max(MIN_POLL);
    // `report` logs every outcome itself: there is no outage for `run_every` to track.
    let messages = OutageMessages {
        failing: "",
        recovered: "",
    };
    run_every(every, every, stop, messages, || {
        let outcome = tokio::task::spawn_blocking(check.clone());
        let report = report.clone();
        async move {
            report(outcome.await);
            Ok::<(), std::convert::Infallible>(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_on_the_period_until_stopped() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_every(
            Duration::from_secs(1),
            Duration::from_secs(1),
            async {
                let _ = stopped.await;
            },
            OutageMessages {
                failing: "failing",
                recovered: "recovered",
            },
            move || {
                let n = counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n.is_multiple_of(2) {
                        Ok(())
                    } else {
                        Err("odd run")
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 3, "runs at 1 s, 2 s and 3 s");
        let _ = stop.send(());
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 3, "no run after stop");
    }
}
