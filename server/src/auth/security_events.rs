//! What services verifying tokens themselves need to know: the published key set, and the
//! revocations and key changes each replica fans out to its subscribers from the revocation
//! feed it already polls (so subscribers cost the store nothing).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::broadcast;

use super::error::AuthError;
use super::tokens::KeyRing;

/// How long a verifier may use a fetched key set before fetching it again. A key removed from
/// the key set (its tokens no longer valid) may be accepted by such a verifier this long; one
/// that watches the security events hears of the change at once.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(60);

/// A subscriber hears a heartbeat about this often while the feed is read successfully: often
/// enough that a client's staleness bound of a couple of seconds never fires on a healthy
/// stream, rarely enough to cost nothing.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Events one subscriber may fall behind by before it is dropped: a subscriber that does not
/// read must not hold memory without bound, nor slow the others (the channel never blocks the
/// publisher).
const SUBSCRIBER_BUFFER: usize = 1024;

/// Subscribers one replica serves at once: each is a service replica, so a few hundred is a
/// large platform; the bound keeps a misbehaving credential holder from holding unbounded
/// streams.
pub const MAX_SUBSCRIBERS: usize = 1024;

/// Revocations kept for subscribers resuming from a cursor; one resuming from further back
/// gets a snapshot instead.
const RESUMABLE_REVOCATIONS: usize = 10_000;

/// Revoked sessions sent per snapshot event, so no event grows past a client's message limit.
const SNAPSHOT_CHUNK: usize = 1_000;

/// The key set as published for verifiers: the public keys and the claims every token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKeys {
    /// The JSON Web Key Set of the public verification keys (never an HS256 secret).
    pub jwks_json: String,
    /// The `iss` of every access token.
    pub issuer: String,
    /// The `aud` of every access token.
    pub audience: String,
    /// See [`JWKS_MAX_AGE`].
    pub max_age: Duration,
}

/// One revoked session, as subscribers hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSession {
    /// The session's tenant.
    pub tenant: String,
    /// The session.
    pub session_id: String,
    /// Unix second after which no access token of the session can be valid.
    pub until_unix: u64,
}

/// Revocations read from the feed in one poll (or a part of a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedBatch {
    /// The feed position before the batch (`None`: the feed's start).
    pub from: Option<String>,
    /// The feed position the batch reaches.
    pub cursor: String,
    /// The sessions.
    pub sessions: Vec<RevokedSession>,
    /// True for a part of the snapshot a subscription starts with.
    pub snapshot: bool,
}

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// Sessions revoked.
    Revoked(Arc<RevokedBatch>),
    /// The key set in force changed (or, first on a stream, what it is).
    KeysChanged(Arc<PublishedKeys>),
    /// The feed was read up to `cursor` at `read_at_unix_ms`, and everything read was sent.
    Heartbeat {
        /// The feed position reached.
        cursor: String,
        /// When the feed was read.
        read_at_unix_ms: u64,
    },
}

/// The fan-out of one replica: a broadcast of every poll's outcome, the recent revocations for
/// resuming subscribers, and the key set last published.
#[derive(Debug)]
pub(super) struct SecurityFeed {
    /// Every poll's events; a subscriber is a receiver.
    sender: broadcast::Sender<SecurityEvent>,
    /// Guarded together so a subscription's snapshot and its live events neither miss nor
    /// repeat a poll: polls publish, and subscriptions start, under this lock.
    state: parking_lot::Mutex<FeedState>,
    /// Subscribers now served.
    pub(super) subscribers: Arc<AtomicUsize>,
    /// True once the replica is shutting down: every stream ends.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct FeedState {
    /// The last poll's position and time.
    last_read: Option<(String, u64)>,
    /// Recent polls' revocations, oldest first.
    recent: VecDeque<Arc<RevokedBatch>>,
    /// Sessions in `recent`.
    recent_sessions: usize,
    /// The key ring last published, to notice a reload by pointer.
    ring: Option<Arc<KeyRing>>,
    /// The key set last published.
    keys: Option<Arc<PublishedKeys>>,
}

impl Default for SecurityFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(SUBSCRIBER_BUFFER).0,
            state: parking_lot::Mutex::new(FeedState::default()),
            subscribers: Arc::new(AtomicUsize::new(0)),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

/// One poll of the revocation feed, for [`SecurityFeed::record_poll`].
pub(super) struct FeedPoll<'a> {
    /// The position the poll started from.
    pub from: Option<&'a str>,
    /// The position it reached.
    pub cursor: &'a str,
    /// What it read.
    pub sessions: Vec<RevokedSession>,
    /// The key ring in force.
    pub ring: Arc<KeyRing>,
    /// When it read, Unix ms.
    pub now_unix_ms: u64,
}

impl SecurityFeed {
    /// Records a poll: its revocations go into `revoked` (the replica's cache) and to every
    /// subscriber, a key ring that changed since the last poll is published as `keys()`, and a
    /// heartbeat says the poll happened.
    pub(super) fn record_poll(
        &self,
        poll: FeedPoll<'_>,
        revoked: &DashMap<String, (String, u64)>,
        keys: impl FnOnce() -> PublishedKeys,
    ) {
        let mut state = self.state.lock();
        for s in &poll.sessions {
            revoked.insert(s.session_id.clone(), (s.tenant.clone(), s.until_unix));
        }
        let ring_changed = state
            .ring
            .as_ref()
            .is_none_or(|seen| !Arc::ptr_eq(seen, &poll.ring));
        if ring_changed {
            let published = Arc::new(keys());
            state.ring = Some(poll.ring);
            if state.keys.as_ref() != Some(&published) {
                state.keys = Some(published.clone());
                // An error only means nobody is subscribed.
                let _ = self.sender.send(SecurityEvent::KeysChanged(published));
            }
        }
        if !poll.sessions.is_empty() {
            let batch = Arc::new(RevokedBatch {
                from: poll.from.map(str::to_owned),
                cursor: poll.cursor.to_owned(),
                sessions: poll.sessions,
                snapshot: false,
            });
            state.recent_sessions += batch.sessions.len();
            state.recent.push_back(batch.clone());
            while state.recent_sessions > RESUMABLE_REVOCATIONS {
                match state.recent.pop_front() {
                    Some(old) => state.recent_sessions -= old.sessions.len(),
                    None => break,
                }
            }
            let _ = self.sender.send(SecurityEvent::Revoked(batch));
        }
        state.last_read = Some((poll.cursor.to_owned(), poll.now_unix_ms));
        let _ = self.sender.send(SecurityEvent::Heartbeat {
            cursor: poll.cursor.to_owned(),
            read_at_unix_ms: poll.now_unix_ms,
        });
    }

    /// Starts a subscription: the key set, then the revocations after `cursor` when the recent
    /// ones reach back to it, else a snapshot of every revocation in `revoked`; then live
    /// events. `None` before the first poll (nothing to say yet).
    pub(super) fn subscribe(
        &self,
        cursor: Option<&str>,
        revoked: &DashMap<String, (String, u64)>,
    ) -> Result<Subscription, AuthError> {
        let slot = SubscriberSlot::take(&self.subscribers)?;
        let state = self.state.lock();
        let (Some((position, read_at)), Some(keys)) = (&state.last_read, &state.keys) else {
            return Err(AuthError::RevocationsNotLoaded {
                retry_after: HEARTBEAT_INTERVAL,
            });
        };
        let mut initial = vec![SecurityEvent::KeysChanged(keys.clone())];
        match cursor.and_then(|c| state.resume_from(c, position)) {
            Some(batches) => initial.extend(batches.into_iter().map(SecurityEvent::Revoked)),
            None => initial.extend(snapshot(revoked, position)),
        }
        initial.push(SecurityEvent::Heartbeat {
            cursor: position.clone(),
            read_at_unix_ms: *read_at,
        });
        Ok(Subscription {
            initial: initial.into(),
            live: self.sender.subscribe(),
            closing: self.closing.subscribe(),
            last_heartbeat: Instant::now(),
            _slot: slot,
        })
    }
}

impl FeedState {
    /// The recent batches after `cursor`, when they reach back to it (a batch straddling it is
    /// sent whole: a revocation heard twice is harmless). `None` when they do not, or the
    /// cursor is not a feed position.
    fn resume_from(&self, cursor: &str, position: &str) -> Option<Vec<Arc<RevokedBatch>>> {
        let at = feed_order(cursor)?;
        if at > feed_order(position)? {
            return None;
        }
        let covered = match self.recent.front() {
            None => true,
            Some(oldest) => match &oldest.from {
                None => true,
                Some(from) => feed_order(from)? <= at,
            },
        };
        if !covered {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|b| feed_order(&b.cursor).is_some_and(|end| end > at))
                .cloned()
                .collect(),
        )
    }
}

/// Every revocation the replica knows, in events of [`SNAPSHOT_CHUNK`] sessions (at least one
/// event, so a subscriber always hears that its snapshot is complete).
fn snapshot(revoked: &DashMap<String, (String, u64)>, position: &str) -> Vec<SecurityEvent> {
    let sessions: Vec<RevokedSession> = revoked
        .iter()
        .map(|entry| RevokedSession {
            tenant: entry.value().0.clone(),
            session_id: entry.key().clone(),
            until_unix: entry.value().1,
        })
        .collect();
    let mut chunks: Vec<Vec<RevokedSession>> = sessions
        .chunks(SNAPSHOT_CHUNK)
        .map(<[RevokedSession]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    chunks
        .into_iter()
        .map(|sessions| {
            SecurityEvent::Revoked(Arc::new(RevokedBatch {
                from: None,
                cursor: position.to_owned(),
                sessions,
                snapshot: true,
            }))
        })
        .collect()
}

/// A feed position as a comparable pair: Redis stream ids are `<ms>-<seq>`, the memory
/// store's are sequence numbers. `None` for anything else.
fn feed_order(cursor: &str) -> Option<(u64, u64)> {
    match cursor.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((cursor.parse().ok()?, 0)),
    }
}

/// A place among the [`MAX_SUBSCRIBERS`], given back on drop.
#[derive(Debug)]
struct SubscriberSlot(Arc<AtomicUsize>);

impl SubscriberSlot {
    fn take(count: &Arc<AtomicUsize>) -> Result<Self, AuthError> {
        let taken = count.fetch_add(1, Ordering::AcqRel);
        let slot = Self(count.clone());
        if taken >= MAX_SUBSCRIBERS {
            return Err(AuthError::TooManySubscribers {
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(slot)
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One subscriber's stream of events.
#[derive(Debug)]
pub struct Subscription {
    /// What the subscriber hears before live events.
    initial: VecDeque<SecurityEvent>,
    /// Live events.
    live: broadcast::Receiver<SecurityEvent>,
    /// Turns true when the replica shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
    /// When this subscriber last heard a heartbeat: polls are more frequent than heartbeats.
    last_heartbeat: Instant,
    /// Held while the subscription lives.
    _slot: SubscriberSlot,
}

impl Subscription {
    /// The next event; heartbeats are passed on about every [`HEARTBEAT_INTERVAL`].
    /// `Err(SubscriberTooSlow)` when the subscriber fell too far behind (it resubscribes with
    /// its last cursor); `Ok(None)` when the replica stops.
    pub async fn next(&mut self) -> Result<Option<SecurityEvent>, AuthError> {
        if let Some(event) = self.initial.pop_front() {
            return Ok(Some(event));
        }
        if *self.closing.borrow() {
            return Ok(None);
        }
        loop {
            let received = tokio::select! {
                biased;
                _ = self.closing.wait_for(|closing| *closing) => return Ok(None),
                received = self.live.recv() => received,
            };
            match received {
                Ok(SecurityEvent::Heartbeat { .. })
                    if self.last_heartbeat.elapsed() < HEARTBEAT_INTERVAL => {}
                Ok(event) => {
                    if matches!(event, SecurityEvent::Heartbeat { .. }) {
                        self.last_heartbeat = Instant::now();
                    }
                    return Ok(Some(event));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(AuthError::SubscriberTooSlow { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> RevokedSession {
        RevokedSession {
            tenant: "acme".into(),
            session_id: id.into(),
            until_unix: 100,
        }
    }

    fn ring() -> Arc<KeyRing> {
        Arc::new(KeyRing::generate_ephemeral().unwrap())
    }

    fn keys(jwks: &str) -> PublishedKeys {
        PublishedKeys {
            jwks_json: jwks.into(),
            issuer: "i".into(),
            audience: "a".into(),
            max_age: JWKS_MAX_AGE,
        }
    }

    fn poll<'a>(
        from: Option<&'a str>,
        cursor: &'a str,
        ids: &[&str],
        ring: &Arc<KeyRing>,
    ) -> FeedPoll<'a> {
        FeedPoll {
            from,
            cursor,
            sessions: ids.iter().map(|id| session(id)).collect(),
            ring: ring.clone(),
            now_unix_ms: 1,
        }
    }

    fn revoked_ids(events: &[SecurityEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                SecurityEvent::Revoked(b) => Some(b.sessions.iter().map(|s| s.session_id.clone())),
                _ => None,
            })
            .flatten()
            .collect()
    }

    async fn drain_initial(sub: &mut Subscription) -> Vec<SecurityEvent> {
        let mut out = Vec::new();
        while !sub.initial.is_empty() {
            out.push(sub.next().await.unwrap().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_subscription_starts_with_keys_then_a_snapshot_then_hears_new_polls() {
        let feed = SecurityFeed::default();
        let map = DashMap::new();
        let r = ring();
        feed.record_poll(poll(None, "1-0", &["s1", "s2"], &r), &map, || keys("k1"));
        let mut sub = feed.subscribe(None, &map).unwrap();
        let initial = drain_initial(&mut sub).await;
        assert_eq!(initial[0], SecurityEvent::KeysChanged(Arc::new(keys("k1"))));
        let mut ids = revoked_ids(&initial);
        ids.sort();
        assert_eq!(ids, ["s1", "s2"]);
        assert!(
            matches!(initial.last(), Some(SecurityEvent::Heartbeat { cursor, .. }) if cursor == "1-0")
        );

        // A new poll with a revocation and a reloaded ring: both reach the subscriber.
        let r2 = ring();
        feed.record_poll(poll(Some("1-0"), "2-0", &["s3"], &r2), &map, || keys("k2"));
        assert_eq!(
            sub.next().await.unwrap(),
            Some(SecurityEvent::KeysChanged(Arc::new(keys("k2"))))
        );
        let next = sub.next().await.unwrap().unwrap();
        assert_eq!(revoked_ids(&[next]), ["s3"]);
        assert!(map.contains_key("s3"), "the replica's cache is fed too");
    }

    #[tokio::test]
    async fn a_subscriber_resumes_after_its_cursor_or_gets_a_snapshot() {
        let feed = SecurityFeed::default();
        let map = DashMap::new();
        let r = ring();
        feed.record_poll(poll(None, "1-0", &["s1"], &r), &map, || keys("k"));
        feed.record_poll(poll(Some("1-0"), "2-0", &["s2"], &r), &map, || keys("k"));
        feed.record_poll(poll(Some("2-0"), "3-5", &["s3"], &r), &map, || keys("k"));

        let mut sub = feed.subscribe(Some("2-0"), &map).unwrap();
        let events = drain_initial(&mut sub).await;
        assert_eq!(
            revoked_ids(&events),
            ["s3"],
            "only what came after the cursor"
        );
        assert!(
            events
                .iter()
                .all(|e| !matches!(e, SecurityEvent::Revoked(b) if b.snapshot))
        );

        // A cursor inside a batch (another replica's batches end elsewhere): the batch is sent.
        let mut sub = feed.subscribe(Some("3-1"), &map).unwrap();
        assert_eq!(revoked_ids(&drain_initial(&mut sub).await), ["s3"]);

        // Up to date: nothing but keys and a heartbeat.
        let mut sub = feed.subscribe(Some("3-5"), &map).unwrap();
        assert!(revoked_ids(&drain_initial(&mut sub).await).is_empty());

        // Unknown or future cursors get the snapshot.
        for cursor in ["garbage", "9-0"] {
            let mut sub = feed.subscribe(Some(cursor), &map).unwrap();
            let events = drain_initial(&mut sub).await;
            let mut ids = revoked_ids(&events);
            ids.sort();
            assert_eq!(ids, ["s1", "s2", "s3"], "cursor {cursor}");
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_dropped_and_the_publisher_never_waits() {
        let feed = SecurityFeed::default();
        let map = DashMap::new();
        let r = ring();
        feed.record_poll(poll(None, "1", &[], &r), &map, || keys("k"));
        let mut slow = feed.subscribe(None, &map).unwrap();
        drain_initial(&mut slow).await;
        for i in 0..(SUBSCRIBER_BUFFER as u64 + 10) {
            let (from, to) = ((i + 1).to_string(), (i + 2).to_string());
            feed.record_poll(poll(Some(&from), &to, &["x"], &r), &map, || keys("k"));
        }
        assert!(matches!(
            slow.next().await,
            Err(AuthError::SubscriberTooSlow { .. })
        ));
    }

    #[tokio::test]
    async fn subscribers_are_bounded_and_give_their_place_back() {
        let feed = SecurityFeed::default();
        let map = DashMap::new();
        feed.record_poll(poll(None, "1", &[], &ring()), &map, || keys("k"));
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| feed.subscribe(None, &map).unwrap())
            .collect();
        assert!(matches!(
            feed.subscribe(None, &map),
            Err(AuthError::TooManySubscribers { .. })
        ));
        drop(subs);
        assert!(feed.subscribe(None, &map).is_ok());
    }

    #[test]
    fn feed_positions_compare_as_numbers() {
        assert!(feed_order("10-0") > feed_order("9-5"));
        assert!(feed_order("9-10") > feed_order("9-9"));
        assert!(feed_order("12") > feed_order("9"));
        assert_eq!(feed_order("a-b"), None);
    }
}
