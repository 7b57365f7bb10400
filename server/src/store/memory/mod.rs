//! The embedded store, for a single replica: rate-limit counters (`ratelimit.rs`) and accounts
//! (`auth.rs`) in process memory, behind the same interfaces and with the same atomicity as
//! Redis. Idle keys (TAT in the past, which is the same as absent), expired lockouts and
//! sessions are swept out, so memory follows what is active, not all that was ever seen.

mod auth;
mod ratelimit;

pub use self::ratelimit::KeyCaps;

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// In-process counters, runtime overrides and accounts.
#[derive(Debug)]
pub struct MemoryStore {
    /// The time GCRA decides at and sessions expire by; replaceable in tests.
    clock: Arc<dyn Clock>,
    /// Rate-limit counters and runtime overrides.
    counters: ratelimit::Counters,
    /// Users, lockouts, sessions and the audit log.
    auth: auth::MemoryAuth,
}

impl MemoryStore {
    /// A store on the system clock, with the default key caps.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock::new()))
    }

    /// A store on the system clock holding at most `caps` keys.
    pub fn with_caps(caps: KeyCaps) -> Self {
        Self::with_clock_and_caps(Arc::new(SystemClock::new()), caps)
    }

    /// A store on a given clock (tests pass a manual one).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::with_clock_and_caps(clock, KeyCaps::default())
    }

    /// A store on a given clock holding at most `caps` keys.
    pub fn with_clock_and_caps(clock: Arc<dyn Clock>, caps: KeyCaps) -> Self {
        Self {
            counters: ratelimit::Counters::new(caps),
            auth: auth::MemoryAuth::new(clock.clone()),
            clock,
        }
    }

    /// Number of counter keys held (idle ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// True when no counter key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes keys whose TAT has passed: they decide exactly as absent keys do. Also drops
    /// expired lockouts and sessions.
    pub fn sweep(&self) {
        self.counters.sweep(&*self.clock);
        self.auth.sweep();
    }

    /// Sweeps every `every` until the store is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.sweep();
            }
        });
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}
