//! The live progress line on stderr (elapsed, phase, calls per second, errors), terminals only.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::driver::{Counters, Plan};

/// How often the line is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// The window the shown rate is averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A running progress line; [`Progress::finish`] clears it.
#[derive(Debug)]
pub struct Progress {
    /// The bar (its length is the run's length in milliseconds).
    bar: ProgressBar,
    /// The task refreshing it.
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Shows the line when stderr is a terminal; `None` otherwise (logs and pipes stay clean).
    pub fn start(counters: Arc<Counters>, plan: Plan) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let total = u64::try_from((plan.end - plan.start).as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(8));
        if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut ticker = tokio::time::interval(TICK);
            loop {
                ticker.tick().await;
                let now = Instant::now();
                let completed = counters.completed.load(Ordering::Relaxed);
                window.push_back((now, completed));
                while window.len() > 2
                    && window
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
                {
                    window.pop_front();
                }
                let rate = match window.front() {
                    Some(&(t, n)) if now > t => (completed - n) as f64 / (now - t).as_secs_f64(),
                    _ => 0.0,
                };
                let phase = if now < plan.measure_from {
                    "warmup"
                } else {
                    "measuring"
                };
                shown.set_position(
                    u64::try_from(now.saturating_duration_since(plan.start).as_millis())
                        .unwrap_or(u64::MAX),
                );
                shown.set_message(format!(
                    "{phase}  {rate:.0} req/s  {completed} calls  {} errors  {} dropped",
                    counters.errors.load(Ordering::Relaxed),
                    counters.dropped.load(Ordering::Relaxed),
                ));
            }
        });
        Some(Self { bar, task })
    }

    /// Stops refreshing and clears the line.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
