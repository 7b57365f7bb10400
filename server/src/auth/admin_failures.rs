//! What failed admin authentication leaves behind on a replica: the peers refused without
//! comparing, and the log's per-peer tally, logged once per peer per window with a count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::client_ip::parse_client_ip;

/// Peers the log tallies one by one per window; the failures of further peers are tallied
/// together, so a flood from many addresses cannot grow the tally without bound.
const MAX_TALLIED_PEERS: usize = 1_000;

/// Peers this replica refuses without comparing, at most; past it a throttled peer is still
/// refused by the shared throttle on its next failure, only compared once more first.
const MAX_BLOCKED_PEERS: usize = 100_000;

/// The tally standing for peers beyond [`MAX_TALLIED_PEERS`].
const OTHER_PEERS: &str = "other peers";

/// Why an admin call was refused before reaching its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// A bearer token that is not the admin token.
    WrongToken,
    /// No bearer token at all.
    MissingToken,
    /// The peer failed too often: refused without comparing its token.
    Throttled,
}

impl AdminRefusal {
    /// The audit outcome.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::WrongToken => "invalid_token",
            Self::MissingToken => "missing_token",
            Self::Throttled => "throttled",
        }
    }
}

/// One peer's refusals in the current log window.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Calls whose token was compared and wrong, or missing.
    failures: u64,
    /// Calls refused without comparing (the peer was throttled).
    throttled: u64,
}

/// The refusals of one log window, by peer.
#[derive(Debug, Default)]
struct LogWindow {
    /// Which window, as a multiple of the window length since the Unix epoch.
    index: u64,
    /// Peer (address, or IPv6 /64) → its refusals.
    peers: HashMap<String, Tally>,
}

/// Failed admin authentication: who is refused without comparing, and what the log has yet
/// to say.
#[derive(Debug)]
pub struct AdminFailures {
    /// How long refusals are tallied before their count is logged.
    log_window: Duration,
    /// Peer → until when it is refused without comparing: learned when the shared throttle
    /// refuses a failure, so later calls cost neither a comparison nor a store call.
    blocked: Mutex<HashMap<String, Instant>>,
    /// The window being tallied.
    window: Mutex<LogWindow>,
}

impl AdminFailures {
    /// Tallies for the log over `log_window`.
    pub fn new(log_window: Duration) -> Self {
        Self {
            log_window,
            blocked: Mutex::new(HashMap::new()),
            window: Mutex::new(LogWindow::default()),
        }
    }

    fn window_of(&self, time_ms: u64) -> u64 {
        time_ms
            / u64::try_from(self.log_window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
    }

    /// Tallies one refusal of `peer`; the first of a peer in a window is logged at once.
    pub fn tally(&self, peer: &str, refusal: AdminRefusal, now_ms: u64) {
        let index = self.window_of(now_ms);
        let mut window = self.window.lock();
        let ended = turn(&mut window, index);
        let known = window.peers.contains_key(peer);
        let name = if known || window.peers.len() < MAX_TALLIED_PEERS {
            peer
        } else {
            OTHER_PEERS
        };
        let tally = window.peers.entry(name.to_owned()).or_default();
        match refusal {
            AdminRefusal::Throttled => tally.throttled += 1,
            _ => tally.failures += 1,
        }
        if !known && name == peer {
            tracing::warn!(
                peer,
                outcome = refusal.outcome(),
                log_window = ?self.log_window,
                "admin authentication failed; this peer's further failures are counted and \
                 logged once per window"
            );
        }
        drop(window);
        log_tallies(ended, self.log_window);
    }

    /// Logs the tallies of windows that have ended by `now_ms`.
    pub fn log_due(&self, now_ms: u64) {
        let index = self.window_of(now_ms);
        let ended = turn(&mut self.window.lock(), index);
        log_tallies(ended, self.log_window);
    }

    /// Logs every tally, window over or not (at shutdown).
    pub fn log_all(&self) {
        let mut window = self.window.lock();
        let index = window.index.saturating_add(1);
        let ended = turn(&mut window, index);
        drop(window);
        log_tallies(ended, self.log_window);
    }

    /// How long `peer` is still refused without comparing, if it is.
    pub fn blocked_for(&self, peer: &str, now: Instant) -> Option<Duration> {
        let blocked = self.blocked.lock();
        let until = *blocked.get(peer)?;
        (until > now).then(|| until - now)
    }

    /// Refuses `peer` without comparing for `wait`.
    pub fn block(&self, peer: &str, wait: Duration, now: Instant) {
        let mut blocked = self.blocked.lock();
        if blocked.len() >= MAX_BLOCKED_PEERS {
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() < MAX_BLOCKED_PEERS || blocked.contains_key(peer) {
            blocked.insert(peer.to_owned(), now + wait);
        }
    }
}

/// Starts window `index` if it is later than the current one, returning the ended tallies.
fn turn(window: &mut LogWindow, index: u64) -> HashMap<String, Tally> {
    if index <= window.index {
        return HashMap::new();
    }
    window.index = index;
    std::mem::take(&mut window.peers)
}

/// One line per peer with the window's counts.
fn log_tallies(tallies: HashMap<String, Tally>, log_window: Duration) {
    for (peer, tally) in tallies {
        tracing::warn!(
            peer = %peer,
            failures = tally.failures,
            throttled = tally.throttled,
            count = tally.failures + tally.throttled,
            log_window = ?log_window,
            "admin calls refused in the last window"
        );
    }
}

/// What a failure is counted by: the address, IPv6 by its /64 (one subscriber's block), so a
/// peer cannot pass for many by rotating addresses within it; "unknown" when the transport
/// gave none. Also the address for the audit event.
pub fn peer_identity(peer: Option<IpAddr>) -> (String, String) {
    peer.and_then(|ip| parse_client_ip(&ip.to_string()).ok().flatten())
        .map_or_else(
            || ("unknown".to_owned(), String::new()),
            |ip| (ip.network, ip.address),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_tallied_once_per_window() {
        let failures = AdminFailures::new(Duration::from_secs(60));
        for i in 0..100 {
            failures.tally("10.0.0.1", AdminRefusal::WrongToken, 60_000 + i);
        }
        failures.tally("10.0.0.1", AdminRefusal::Throttled, 60_500);
        let window = failures.window.lock();
        let tally = window.peers["10.0.0.1"];
        assert_eq!((tally.failures, tally.throttled), (100, 1));
        drop(window);
        failures.log_due(120_000);
        assert!(failures.window.lock().peers.is_empty(), "logged and gone");
    }

    #[test]
    fn tallies_and_blocks_are_bounded() {
        let failures = AdminFailures::new(Duration::from_secs(60));
        for i in 0..(MAX_TALLIED_PEERS + 50) {
            failures.tally(&format!("peer{i}"), AdminRefusal::WrongToken, 1);
        }
        let window = failures.window.lock();
        assert_eq!(window.peers.len(), MAX_TALLIED_PEERS + 1);
        assert_eq!(window.peers[OTHER_PEERS].failures, 50);
        drop(window);
        let now = Instant::now();
        failures.block("a", Duration::from_secs(5), now);
        assert_eq!(failures.blocked_for("a", now), Some(Duration::from_secs(5)));
        assert_eq!(
            failures.blocked_for("a", now + Duration::from_secs(5)),
            None
        );
        assert_eq!(failures.blocked_for("b", now), None);
    }

    #[test]
    fn ipv6_peers_count_by_their_64() {
        let a = peer_identity(Some("2001:db8::1".parse().unwrap()));
        let b = peer_identity(Some("2001:db8::2".parse().unwrap()));
        assert_eq!(a.0, b.0);
        assert_ne!(a.1, b.1);
        assert_eq!(peer_identity(None).0, "unknown");
    }
}
