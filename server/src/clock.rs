//! Time: the wall clock for timestamps that leave the process, and a [`Clock`] the memory
//! store decides by, which tests replace to move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in µs since the Unix epoch; never goes backwards.
    fn now_us(&self) -> u64;
}

/// Wall time read once at start, advanced by the monotonic clock, so that a wall-clock step
/// (NTP, a VM resume) cannot make counters jump back or forward.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
    start_unix_us: u64,
}

/// Wall-clock time since the Unix epoch (zero if the clock is set before 1970): for timestamps
/// and expiry times that leave the process. GCRA decisions use a [`Clock`] instead.
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl SystemClock {
    /// Anchors the clock at the current wall time.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_unix_us: unix_time().as_micros() as u64,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        self.start_unix_us + self.start.elapsed().as_micros() as u64
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_us`.
    pub fn new(now_us: u64) -> Self {
        Self(AtomicU64::new(now_us))
    }

    /// Moves time forward.
    pub fn advance_us(&self, us: u64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds of a duration, saturating (u64 ms is half a billion years).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
