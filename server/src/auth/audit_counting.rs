//! Audit events that prove nothing, counted instead of stored one by one: a caller with no
//! valid credential can make any number of failed calls, and one stored event each would let
//! it fill the store. Each (tenant, action, outcome) gets its first event of a window stored
//! at once and one counted event for the rest at the window's end, under caps per tenant and
//! in total; what no cap admits goes to the log only, still counted.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::model::AuditEvent;

/// Client addresses a counted event keeps as samples.
pub const SAMPLE_IPS: usize = 5;

/// How many (tenant, action, outcome) series may be counted at once; further ones spill.
const MAX_SERIES: usize = 10_000;

/// The bounds of counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountingLimits {
    /// How long calls are counted together.
    pub window: Duration,
    /// Events of one tenant a window may store (first events and counted ones).
    pub per_tenant: u32,
    /// Events all tenants together may store per window.
    pub total: u32,
}

impl Default for CountingLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            per_tenant: 30,
            total: 600,
        }
    }
}

/// Calls counted into one event.
#[derive(Debug)]
struct Series {
    /// The first call's event: the counted event is written in its image.
    template: AuditEvent,
    /// Calls since the first (the first was written on its own).
    count: u64,
    /// Some of their client addresses.
    ips: Vec<String>,
    /// When the last of them happened, ms since the Unix epoch.
    last_ms: u64,
}

impl Series {
    fn new(template: AuditEvent) -> Self {
        Self {
            last_ms: template.time_unix_ms,
            template,
            count: 0,
            ips: Vec::new(),
        }
    }

    fn add(&mut self, event: &AuditEvent) {
        self.count += 1;
        self.last_ms = self.last_ms.max(event.time_unix_ms);
        if self.ips.len() < SAMPLE_IPS
            && !event.client_ip.is_empty()
            && !self.ips.contains(&event.client_ip)
        {
            self.ips.push(event.client_ip.clone());
        }
    }

    /// The counted event, when calls came after the first.
    fn finish(self) -> Option<AuditEvent> {
        (self.count > 0).then(|| AuditEvent {
            time_unix_ms: self.last_ms,
            user_id: None,
            client_ip: String::new(),
            username_hash: String::new(),
            trace_id: String::new(),
            latency_ms: 0,
            count: self.count,
            sample_client_ips: self.ips,
            ..self.template
        })
    }
}

/// What one window has counted and stored.
#[derive(Debug, Default)]
struct Window {
    /// Which window, as a multiple of the window length since the Unix epoch.
    index: u64,
    /// Series by (tenant, action, outcome).
    series: HashMap<(String, String, String), Series>,
    /// Calls no cap admitted, by (action, outcome): logged at the window's end, never stored.
    spilled: HashMap<(String, String), Series>,
    /// Events each tenant has stored this window.
    stored_by_tenant: HashMap<String, u32>,
    /// Events stored this window in all.
    stored: u32,
}

/// Counts the events that prove nothing (see the module docs).
#[derive(Debug)]
pub struct AuditCounter {
    /// The bounds.
    limits: CountingLimits,
    /// The window being counted.
    window: Mutex<Window>,
}

impl AuditCounter {
    /// A counter with these bounds.
    pub fn new(limits: CountingLimits) -> Self {
        Self {
            limits,
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts `event`; returns the events to write now: the ones a past window left (when the
    /// window has turned) and `event` itself when it is the first of its series. An event with
    /// an empty tenant goes to the log only.
    pub fn add(&self, event: AuditEvent) -> Vec<AuditEvent> {
        let index = self.window_of(event.time_unix_ms);
        let mut window = self.window.lock();
        let mut out = Self::turn(&mut window, index);
        let key = (
            event.tenant_id.clone(),
            event.action.clone(),
            event.outcome.clone(),
        );
        if let Some(series) = window.series.get_mut(&key) {
            series.add(&event);
            return out;
        }
        let tenant_stored = window
            .stored_by_tenant
            .get(&event.tenant_id)
            .copied()
            .unwrap_or(0);
        let admitted = window.series.len() < MAX_SERIES
            && window.stored < self.limits.total
            && tenant_stored < self.limits.per_tenant;
        if admitted {
            // The first event and, later, the counted one: two stored events.
            window.stored += 2;
            *window
                .stored_by_tenant
                .entry(event.tenant_id.clone())
                .or_default() += 2;
            window.series.insert(key, Series::new(event.clone()));
            out.push(event);
        } else {
            let spill_key = (event.action.clone(), event.outcome.clone());
            window
                .spilled
                .entry(spill_key)
                .or_insert_with(|| {
                    Series::new(AuditEvent {
                        tenant_id: String::new(),
                        ..event.clone()
                    })
                })
                .add(&event);
        }
        out
    }

    /// The events windows that have ended by `now_ms` left behind.
    pub fn due(&self, now_ms: u64) -> Vec<AuditEvent> {
        let index = self.window_of(now_ms);
        Self::turn(&mut self.window.lock(), index)
    }

    /// Everything counted so far, window over or not (at shutdown).
    pub fn drain(&self) -> Vec<AuditEvent> {
        let mut window = self.window.lock();
        let index = window.index.saturating_add(1);
        Self::turn(&mut window, index)
    }

    fn window_of(&self, time_ms: u64) -> u64 {
        let length = u64::try_from(self.limits.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        time_ms / length
    }

    /// Starts window `index` if it is later than the current one, returning what the ended
    /// one counted.
    fn turn(window: &mut Window, index: u64) -> Vec<AuditEvent> {
        if index <= window.index {
            return Vec::new();
        }
        let ended = std::mem::replace(
            window,
            Window {
                index,
                ..Window::default()
            },
        );
        ended
            .series
            .into_values()
            .chain(ended.spilled.into_values())
            .filter_map(Series::finish)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, outcome: &str, ip: &str, at: u64) -> AuditEvent {
        AuditEvent {
            id: String::new(),
            time_unix_ms: at,
            tenant_id: tenant.into(),
            user_id: None,
            action: "refresh".into(),
            outcome: outcome.into(),
            client_ip: ip.into(),
            username_hash: String::new(),
            trace_id: "t".into(),
            latency_ms: 3,
            count: 1,
            sample_client_ips: Vec::new(),
        }
    }

    const LIMITS: CountingLimits = CountingLimits {
        window: Duration::from_secs(60),
        per_tenant: 4,
        total: 8,
    };

    #[test]
    fn a_flood_is_one_event_then_one_count() {
        let counter = AuditCounter::new(LIMITS);
        let first = counter.add(event("acme", "session_ended", "10.0.0.1", 60_000));
        assert_eq!(first.len(), 1, "the first call is written at once");
        for i in 1..10_000u64 {
            let ip = format!("10.0.{}.{}", i / 250, i % 250);
            assert!(
                counter
                    .add(event("acme", "session_ended", &ip, 60_000 + i))
                    .is_empty()
            );
        }
        assert!(counter.due(119_999).is_empty(), "the window is not over");
        let counted = counter.due(120_000);
        assert_eq!(counted.len(), 1);
        let c = &counted[0];
        assert_eq!((c.tenant_id.as_str(), c.count), ("acme", 9_999));
        assert_eq!(c.sample_client_ips.len(), SAMPLE_IPS);
        assert_eq!(c.time_unix_ms, 60_000 + 9_999);
        assert!(c.trace_id.is_empty() && c.client_ip.is_empty());
        assert!(counter.due(200_000).is_empty(), "nothing is counted twice");
    }

    #[test]
    fn caps_spill_to_the_log_and_lose_no_count() {
        let counter = AuditCounter::new(LIMITS);
        let mut stored = 0;
        let mut logged_only = 0;
        let mut calls = 0u64;
        for t in 0..10 {
            for outcome in ["a", "b", "c"] {
                for _ in 0..3 {
                    calls += 1;
                    for e in counter.add(event(&format!("t{t}"), outcome, "10.0.0.1", 1_000)) {
                        if e.tenant_id.is_empty() {
                            logged_only += e.count;
                        } else {
                            stored += 1;
                        }
                    }
                }
            }
        }
        let ended = counter.due(61_000);
        let mut counted = stored;
        for e in &ended {
            if e.tenant_id.is_empty() {
                logged_only += e.count;
            } else {
                stored += 1;
                counted += e.count;
            }
        }
        assert!(stored <= 8, "the total cap bounds what is stored: {stored}");
        assert_eq!(
            counted + logged_only,
            calls,
            "every call is counted somewhere"
        );
        assert!(logged_only > 0);
        let per_tenant = AuditCounter::new(CountingLimits {
            total: 1000,
            ..LIMITS
        });
        let firsts: usize = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|o| per_tenant.add(event("one", o, "", 1)).len())
            .sum();
        assert_eq!(firsts, 2, "four stored events per tenant: two series");
    }

    #[test]
    fn drain_empties_the_window() {
        let counter = AuditCounter::new(LIMITS);
        counter.add(event("acme", "x", "", 5));
        counter.add(event("acme", "x", "", 6));
        assert_eq!(counter.drain().iter().map(|e| e.count).sum::<u64>(), 1);
        assert!(counter.drain().is_empty());
    }
}
