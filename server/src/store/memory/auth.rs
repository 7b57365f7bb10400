//! The memory store's accounts: users, lockouts, sessions, revocations and audit events; every
//! operation runs under one lock, hence atomically.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use super::MemoryStore;
use crate::auth::model::{
    AttemptGate, AuditEvent, EndOutcome, LockState, LockoutSettings, OpenOutcome, RecordVersion,
    ReplaceOutcome, RotateOutcome, Session, UserRecord, VersionedUser,
};
use crate::auth::store::{
    AuthStore, REVOCATIONS_BATCH, REVOCATIONS_KEPT, StoreError, sort_oldest_first,
};
use crate::clock::{Clock, millis};

/// Events the memory store keeps per tenant; past it the oldest go first. The store is for one
/// replica and a test bench, not a year of audit, and its memory must stay bounded whatever
/// callers do (the counting of failures that prove nothing bounds the rate at which strangers
/// add events; this bounds what even a busy real tenant can hold).
const AUDIT_EVENTS_PER_TENANT: usize = 100_000;

/// Whether a presented refresh hash is the stored one, compared in constant time so the time
/// taken says nothing about how much of it matched.
fn same_hash(stored: &str, presented: &str) -> bool {
    bool::from(stored.as_bytes().ct_eq(presented.as_bytes()))
}

/// Tenant and id: every map is keyed by both, so tenants never meet.
type Scoped = (String, String);

fn scoped(tenant: &str, id: &str) -> Scoped {
    (tenant.to_owned(), id.to_owned())
}

/// Users, lockouts, sessions, revocations and audit events of the memory store.
#[derive(Debug)]
pub(super) struct MemoryAuth {
    /// The time sessions, audit retention and the refresh grace window are judged by (lockout
    /// and rotation's expiries take the caller's `now`); the memory store's own clock,
    /// replaceable in tests.
    clock: Arc<dyn Clock>,
    /// One lock over everything: auth calls are rare next to rate-limit checks, and one lock
    /// makes every multi-step operation (uniqueness, lockout, rotation) trivially atomic.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<Scoped, UserRecord>,
    /// (tenant, user id) → the write that made the record's current state, for
    /// compare-and-set; from `next_write`, so a deleted and re-created id never repeats one.
    user_versions: HashMap<Scoped, u64>,
    next_write: u64,
    /// (tenant, username) → user id.
    usernames: HashMap<Scoped, String>,
    lockouts: HashMap<Scoped, Lockout>,
    sessions: HashMap<Scoped, SessionEntry>,
    /// (tenant, user id) → session ids; stale ids are dropped when seen.
    user_sessions: HashMap<Scoped, BTreeSet<String>>,
    /// (sequence, tenant, session id), oldest first, at most `REVOCATIONS_KEPT`.
    revocations: VecDeque<(u64, String, String)>,
    next_revocation: u64,
    /// Per tenant: (sequence, appended at ms, event), oldest first.
    audit: HashMap<String, VecDeque<(u64, u64, AuditEvent)>>,
    next_audit: u64,
    /// Store-wide secrets by name.
    secrets: HashMap<String, [u8; 32]>,
}

#[derive(Debug, Default)]
struct Lockout {
    /// Attempts counted in the window; meaningless once `window_ends_ms` has passed.
    failures: u32,
    window_ends_ms: u64,
    /// `None`: not locked; `Some(None)`: until unlocked; `Some(Some(t))`: until `t` ms.
    lock: Option<Option<u64>>,
}

impl Lockout {
    /// Forgets what has expired by `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        if now_ms >= self.window_ends_ms {
            self.failures = 0;
        }
        if let Some(Some(until)) = self.lock
            && now_ms >= until
        {
            self.lock = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.failures == 0 && self.lock.is_none()
    }
}

#[derive(Debug)]
struct SessionEntry {
    session: Session,
    /// Refresh hashes already rotated away.
    used: HashSet<String>,
    /// The hash rotated away last and when, ms by the store's clock (for the grace window).
    previous: Option<(String, u64)>,
}

impl MemoryAuth {
    /// Empty state judged by `clock`.
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::default(),
        }
    }

    fn now_unix(&self) -> u64 {
        self.clock.now_us() / 1_000_000
    }

    /// Drops expired lockouts and sessions (their absence means the same).
    pub(super) fn sweep(&self) {
        let now_us = self.clock.now_us();
        let mut state = self.state.lock();
        state.lockouts.retain(|_, l| {
            l.expire(now_us / 1000);
            !l.is_empty()
        });
        let now = now_us / 1_000_000;
        state.sessions.retain(|_, e| e.session.is_alive_at(now));
        let State {
            sessions,
            user_sessions,
            ..
        } = &mut *state;
        user_sessions.retain(|(tenant, _), ids| {
            ids.retain(|sid| sessions.contains_key(&scoped(tenant, sid)));
            !ids.is_empty()
        });
    }
}

impl State {
    /// The version of a user record (of any id: an absent record has none that matches).
    fn version_of(&self, id: &Scoped) -> RecordVersion {
        RecordVersion(
            self.user_versions
                .get(id)
                .map_or_else(String::new, u64::to_string),
        )
    }

    /// Records a write of a user record.
    fn bump_version(&mut self, id: &Scoped) {
        self.next_write += 1;
        self.user_versions.insert(id.clone(), self.next_write);
    }

    fn publish(&mut self, tenant: &str, session_id: &str) {
        self.next_revocation += 1;
        self.revocations.push_back((
            self.next_revocation,
            tenant.to_owned(),
            session_id.to_owned(),
        ));
        while self.revocations.len() > REVOCATIONS_KEPT {
            self.revocations.pop_front();
        }
    }

    /// Removes a session and publishes its revocation; false when it was not alive.
    fn revoke(&mut self, tenant: &str, session_id: &str, now: u64) -> bool {
        match self.sessions.remove(&scoped(tenant, session_id)) {
            Some(entry) if entry.session.is_alive_at(now) => {
                self.publish(tenant, session_id);
                true
            }
            _ => false,
        }
    }

    fn revoke_user(&mut self, tenant: &str, user_id: &str, except: Option<&str>, now: u64) -> u32 {
        let key = scoped(tenant, user_id);
        let ids: Vec<String> = self
            .user_sessions
            .get(&key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut revoked = 0;
        for sid in ids {
            if except == Some(sid.as_str()) {
                continue;
            }
            if self.revoke(tenant, &sid, now) {
                revoked += 1;
            }
            if let Some(set) = self.user_sessions.get_mut(&key) {
                set.remove(&sid);
            }
        }
        if self.user_sessions.get(&key).is_some_and(BTreeSet::is_empty) {
            self.user_sessions.remove(&key);
        }
        revoked
    }
}

impl AuthStore for MemoryStore {
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let mut state = self.auth.state.lock();
        let name = scoped(&user.tenant_id, &user.username);
        let id = scoped(&user.tenant_id, &user.user_id);
        if state.usernames.contains_key(&name) {
            return Ok(false);
        }
        if state.users.contains_key(&id) {
            return Err(StoreError::permanent("a user with this id exists already"));
        }
        state.usernames.insert(name, user.user_id.clone());
        state.users.insert(id.clone(), user.clone());
        state.bump_version(&id);
        Ok(true)
    }

    async fn get_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .auth
            .state
            .lock()
            .users
            .get(&scoped(tenant, user_id))
            .cloned())
    }

    async fn find_user(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let state = self.auth.state.lock();
        Ok(state
            .usernames
            .get(&scoped(tenant, username))
            .and_then(|id| state.users.get(&scoped(tenant, id)))
            .cloned())
    }

    async fn get_user_versioned(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<VersionedUser>, StoreError> {
        let state = self.auth.state.lock();
        let id = scoped(tenant, user_id);
        Ok(state.users.get(&id).map(|user| VersionedUser {
            user: user.clone(),
            version: state.version_of(&id),
        }))
    }

    async fn replace_user(
        &self,
        expected: &RecordVersion,
        user: &UserRecord,
    ) -> Result<ReplaceOutcome, StoreError> {
        let mut state = self.auth.state.lock();
        let id = scoped(&user.tenant_id, &user.user_id);
        let Some(current) = state.users.get(&id) else {
            return Ok(ReplaceOutcome::Gone);
        };
        if current.username != user.username {
            return Err(StoreError::permanent(
                "replace_user cannot change the username",
            ));
        }
        if state.version_of(&id) != *expected {
            return Ok(ReplaceOutcome::Changed);
        }
        state.users.insert(id.clone(), user.clone());
        state.bump_version(&id);
        Ok(ReplaceOutcome::Replaced)
    }

    async fn delete_user(
        &self,
        tenant: &str,
        user_id: &str,
        lockout_subject: &str,
    ) -> Result<bool, StoreError> {
        let now = self.auth.now_unix();
        let mut state = self.auth.state.lock();
        state.revoke_user(tenant, user_id, None, now);
        state.lockouts.remove(&scoped(tenant, lockout_subject));
        state.user_versions.remove(&scoped(tenant, user_id));
        let Some(user) = state.users.remove(&scoped(tenant, user_id)) else {
            return Ok(false);
        };
        state.usernames.remove(&scoped(tenant, &user.username));
        Ok(true)
    }

    async fn begin_attempt(
        &self,
        tenant: &str,
        subject: &str,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> Result<AttemptGate, StoreError> {
        let mut state = self.auth.state.lock();
        let l = state.lockouts.entry(scoped(tenant, subject)).or_default();
        l.expire(now_unix_ms);
        match l.lock {
            Some(None) => return Ok(AttemptGate::Locked { retry_after: None }),
            Some(Some(until)) => {
                return Ok(AttemptGate::Locked {
                    retry_after: Some(Duration::from_millis(until - now_unix_ms)),
                });
            }
            None => {}
        }
        if l.failures == 0 {
            l.window_ends_ms = now_unix_ms.saturating_add(millis(settings.window));
        }
        l.failures = l.failures.saturating_add(1);
        if l.failures > settings.max_failures {
            // Attempts still in flight will set the lock if they fail; this one waits as if
            // they had.
            return Ok(AttemptGate::Locked {
                retry_after: settings.lock_for,
            });
        }
        Ok(AttemptGate::Proceed)
    }

    async fn finish_attempt(
        &self,
        tenant: &str,
        subject: &str,
        success: bool,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut state = self.auth.state.lock();
        let key = scoped(tenant, subject);
        if success {
            state.lockouts.remove(&key);
            return Ok(false);
        }
        let Some(l) = state.lockouts.get_mut(&key) else {
            return Ok(false);
        };
        l.expire(now_unix_ms);
        let locks = l.failures >= settings.max_failures && l.lock.is_none();
        if locks {
            match settings.lock_for {
                None => l.lock = Some(None),
                Some(d) => {
                    let until = now_unix_ms.saturating_add(millis(d));
                    l.lock = Some(Some(until));
                    // The count ends with the lock at the latest, so the next window starts fresh.
                    l.window_ends_ms = l.window_ends_ms.min(until);
                }
            }
        }
        Ok(locks)
    }

    async fn lock_state(
        &self,
        tenant: &str,
        subject: &str,
        now_unix_ms: u64,
    ) -> Result<LockState, StoreError> {
        let mut state = self.auth.state.lock();
        let Some(l) = state.lockouts.get_mut(&scoped(tenant, subject)) else {
            return Ok(LockState::default());
        };
        l.expire(now_unix_ms);
        Ok(LockState {
            failures: l.failures,
            locked: l.lock.is_some(),
            locked_until_unix_ms: l.lock.flatten(),
        })
    }

    async fn unlock(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let mut state = self.auth.state.lock();
        Ok(state
            .lockouts
            .remove(&scoped(tenant, subject))
            .is_some_and(|l| !l.is_empty()))
    }

    async fn open_session(
        &self,
        session: &Session,
        password_hash: &str,
    ) -> Result<OpenOutcome, StoreError> {
        let now = self.auth.now_unix();
        let mut state = self.auth.state.lock();
        let user = state
            .users
            .get(&scoped(&session.tenant_id, &session.user_id));
        match user {
            None => return Ok(OpenOutcome::UserGone),
            Some(u) if !same_hash(&u.password_hash, password_hash) => {
                return Ok(OpenOutcome::PasswordChanged);
            }
            Some(_) => {}
        }
        let key = scoped(&session.tenant_id, &session.session_id);
        if state
            .sessions
            .get(&key)
            .is_some_and(|e| e.session.is_alive_at(now))
        {
            return Ok(OpenOutcome::IdTaken);
        }
        state.sessions.insert(
            key,
            SessionEntry {
                session: session.clone(),
                used: HashSet::new(),
                previous: None,
            },
        );
        state
            .user_sessions
            .entry(scoped(&session.tenant_id, &session.user_id))
            .or_default()
            .insert(session.session_id.clone());
        Ok(OpenOutcome::Opened)
    }

    async fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<Session>, StoreError> {
        let now = self.auth.now_unix();
        let state = self.auth.state.lock();
        Ok(state
            .sessions
            .get(&scoped(tenant, session_id))
            .filter(|e| e.session.is_alive_at(now))
            .map(|e| e.session.clone()))
    }

    async fn rotate_refresh(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now_unix: u64,
        idle_timeout: Duration,
        grace: Duration,
    ) -> Result<RotateOutcome, StoreError> {
        let now_ms = self.auth.clock.now_us() / 1000;
        let mut state = self.auth.state.lock();
        let key = scoped(tenant, session_id);
        let Some(entry) = state.sessions.get_mut(&key) else {
            return Ok(RotateOutcome::NotFound);
        };
        if !entry.session.is_alive_at(now_unix) {
            state.sessions.remove(&key);
            return Ok(RotateOutcome::NotFound);
        }
        if same_hash(&entry.session.refresh_hash, presented_hash) {
            let s = &mut entry.session;
            let old = std::mem::replace(&mut s.refresh_hash, new_hash.to_owned());
            entry.used.insert(old.clone());
            entry.previous = Some((old, now_ms));
            s.last_used_unix = now_unix;
            s.idle_expires_unix = now_unix
                .saturating_add(idle_timeout.as_secs())
                .min(s.absolute_expires_unix);
            return Ok(RotateOutcome::Rotated(s.clone()));
        }
        let in_grace = entry.previous.as_ref().is_some_and(|(hash, at_ms)| {
            same_hash(hash, presented_hash) && now_ms < at_ms.saturating_add(millis(grace))
        });
        if in_grace {
            return Ok(RotateOutcome::Replayed(entry.session.clone()));
        }
        if entry.used.contains(presented_hash) {
            state.revoke(tenant, session_id, now_unix);
            return Ok(RotateOutcome::Reused);
        }
        Ok(RotateOutcome::NotFound)
    }

    async fn end_session(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
    ) -> Result<EndOutcome, StoreError> {
        let now = self.auth.now_unix();
        let mut state = self.auth.state.lock();
        let Some(entry) = state.sessions.get(&scoped(tenant, session_id)) else {
            return Ok(EndOutcome::NotFound);
        };
        let outcome = if !entry.session.is_alive_at(now) {
            EndOutcome::NotFound
        } else if same_hash(&entry.session.refresh_hash, presented_hash) {
            EndOutcome::Ended
        } else if entry.used.contains(presented_hash) {
            EndOutcome::Reused
        } else {
            return Ok(EndOutcome::WrongSecret);
        };
        if outcome != EndOutcome::NotFound {
            state.revoke(tenant, session_id, now);
        }
        Ok(outcome)
    }

    async fn revoke_session(&self, tenant: &str, session_id: &str) -> Result<bool, StoreError> {
        let now = self.auth.now_unix();
        Ok(self.auth.state.lock().revoke(tenant, session_id, now))
    }

    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u32, StoreError> {
        let now = self.auth.now_unix();
        Ok(self
            .auth
            .state
            .lock()
            .revoke_user(tenant, user_id, except, now))
    }

    async fn list_sessions(&self, tenant: &str, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let now = self.auth.now_unix();
        let mut state = self.auth.state.lock();
        let state = &mut *state;
        let Some(ids) = state.user_sessions.get_mut(&scoped(tenant, user_id)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        ids.retain(|sid| match state.sessions.get(&scoped(tenant, sid)) {
            Some(e) if e.session.is_alive_at(now) => {
                out.push(e.session.clone());
                true
            }
            _ => false,
        });
        sort_oldest_first(&mut out);
        Ok(out)
    }

    async fn revocations_since(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        let after = match cursor {
            None => 0,
            Some(c) => c
                .parse::<u64>()
                .map_err(|_| StoreError::permanent("malformed revocation cursor"))?,
        };
        let state = self.auth.state.lock();
        let mut last = after;
        let out: Vec<(String, String)> = state
            .revocations
            .iter()
            .filter(|(seq, _, _)| *seq > after)
            .take(REVOCATIONS_BATCH)
            .map(|(seq, t, s)| {
                last = *seq;
                (t.clone(), s.clone())
            })
            .collect();
        if cursor.is_none() && out.is_empty() {
            last = state.next_revocation;
        }
        Ok((out, last.to_string()))
    }

    async fn revocations_dropped_until_ms(&self) -> Result<u64, StoreError> {
        // The feed lives in the process that reads it, and is first read before the service
        // takes a call: nothing can have been published, let alone dropped, before that.
        Ok(0)
    }

    async fn append_audit(
        &self,
        event: &AuditEvent,
        retention_days: u32,
    ) -> Result<String, StoreError> {
        let now_ms = self.auth.clock.now_us() / 1000;
        let keep_from = now_ms.saturating_sub(u64::from(retention_days) * 86_400_000);
        let mut state = self.auth.state.lock();
        state.next_audit += 1;
        let seq = state.next_audit;
        let id = seq.to_string();
        let mut stored = event.clone();
        stored.id.clone_from(&id);
        let log = state.audit.entry(event.tenant_id.clone()).or_default();
        while log.front().is_some_and(|(_, at, _)| *at < keep_from)
            || log.len() >= AUDIT_EVENTS_PER_TENANT
        {
            log.pop_front();
        }
        log.push_back((seq, now_ms, stored));
        Ok(id)
    }

    async fn list_audit(
        &self,
        tenant: &str,
        limit: usize,
        after_id: Option<&str>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let before = match after_id {
            None => u64::MAX,
            // The memory store's ids are sequence numbers; a Redis-style `n-m` cursor (the
            // domain accepts both forms) pages from `n`.
            Some(id) => id
                .split('-')
                .next()
                .and_then(|seq| seq.parse::<u64>().ok())
                .ok_or_else(|| StoreError::permanent("malformed audit event id"))?,
        };
        let state = self.auth.state.lock();
        Ok(state
            .audit
            .get(tenant)
            .map(|log| {
                log.iter()
                    .rev()
                    .filter(|(seq, _, _)| *seq < before)
                    .take(limit)
                    .map(|(_, _, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn audit_for_user(
        &self,
        tenant: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let state = self.auth.state.lock();
        Ok(state
            .audit
            .get(tenant)
            .map(|log| {
                log.iter()
                    .rev()
                    .filter(|(_, _, e)| e.user_id.as_deref() == Some(user_id))
                    .take(limit)
                    .map(|(_, _, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let mut state = self.auth.state.lock();
        Ok(*state.secrets.entry(name.to_owned()).or_insert(*candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn sweep_drops_expired_sessions_lockouts_and_their_listing() {
        let clock = Arc::new(ManualClock::new(1_000_000_000_000));
        let store = MemoryStore::with_clock(clock.clone());
        let now = 1_000_000;
        let session = Session {
            session_id: "s".into(),
            tenant_id: "t".into(),
            user_id: "u".into(),
            refresh_hash: "h".into(),
            created_at_unix: now,
            last_used_unix: now,
            idle_expires_unix: now + 10,
            absolute_expires_unix: now + 20,
            client_ip: String::new(),
        };
        let user = UserRecord {
            user_id: "u".into(),
            tenant_id: "t".into(),
            username: "u".into(),
            password_hash: "phc".into(),
            roles: Vec::new(),
            must_change_password: false,
            created_at_unix: now,
            last_login_unix: None,
        };
        assert!(store.create_user(&user).await.unwrap());
        assert_eq!(
            store.open_session(&session, "phc").await.unwrap(),
            OpenOutcome::Opened
        );
        let settings = LockoutSettings::default();
        store
            .begin_attempt("t", "x", &settings, now * 1000)
            .await
            .unwrap();
        store.sweep();
        assert_eq!(store.auth.state.lock().sessions.len(), 1);
        assert_eq!(store.auth.state.lock().lockouts.len(), 1);
        clock.advance_us(16 * 60 * 1_000_000);
        store.sweep();
        let state = store.auth.state.lock();
        assert!(state.sessions.is_empty());
        assert!(state.user_sessions.is_empty());
        assert!(state.lockouts.is_empty());
    }

    #[test]
    fn a_lockout_forgets_what_expired() {
        let mut l = Lockout {
            failures: 3,
            window_ends_ms: 100,
            lock: Some(Some(50)),
        };
        l.expire(49);
        assert_eq!((l.failures, l.lock), (3, Some(Some(50))));
        l.expire(50);
        assert_eq!((l.failures, l.lock), (3, None));
        l.expire(100);
        assert!(l.is_empty());
        l.lock = Some(None);
        l.expire(u64::MAX);
        assert!(!l.is_empty(), "an admin lock never expires");
    }
}
