//! What the authentication core needs from a store: users, pre-verify lockout counting,
//! sessions with refresh rotation, the revocation feed, the audit log and shared secrets, each
//! scoped by tenant. The memory and Redis stores implement it.

use std::future::Future;
use std::time::Duration;

use super::model::{
    AttemptGate, AuditEvent, EndOutcome, LockState, LockoutSettings, OpenOutcome, RecordVersion,
    ReplaceOutcome, RotateOutcome, Session, UserRecord, VersionedUser,
};
/// One store backs both domains, so both report its failures alike.
pub use crate::ratelimit::store::StoreError;

/// About this many revocations are kept: far more than happen within an access token's
/// lifetime, which is as long as a replica needs to remember one.
pub const REVOCATIONS_KEPT: usize = 100_000;

/// At most this many revocations are returned per `revocations_since` call; callers loop
/// while a batch is full.
pub const REVOCATIONS_BATCH: usize = 10_000;

/// Puts sessions in the order `list_sessions` promises: oldest first, ties by id.
pub fn sort_oldest_first(sessions: &mut [Session]) {
    sessions.sort_by(|a, b| {
        (a.created_at_unix, &a.session_id).cmp(&(b.created_at_unix, &b.session_id))
    });
}

/// Users, lockout, sessions, revocations and the audit log, each scoped by tenant.
pub trait AuthStore: Send + Sync + 'static {
    /// Creates a user; false when the username is taken in the tenant (decided atomically).
    fn create_user(
        &self,
        user: &UserRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The user with this id.
    fn get_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>, StoreError>> + Send;

    /// The user with this username.
    fn find_user(
        &self,
        tenant: &str,
        username: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>, StoreError>> + Send;

    /// The user with this id, with the version a [`replace_user`](Self::replace_user) of it
    /// must present.
    fn get_user_versioned(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<VersionedUser>, StoreError>> + Send;

    /// Replaces a user's record with `user` only while it is still at `expected` (atomically):
    /// a write based on a read that another write has overtaken changes nothing. The username
    /// cannot change (that is an error).
    fn replace_user(
        &self,
        expected: &RecordVersion,
        user: &UserRecord,
    ) -> impl Future<Output = Result<ReplaceOutcome, StoreError>> + Send;

    /// Erases the user (record, username index), revokes and erases their sessions
    /// (publishing the revocations) and clears the lockout state of `lockout_subject` (the
    /// store cannot derive the subject: it is a keyed hash the service computes). False when
    /// there was no such user (sessions and lockout are still cleared).
    fn delete_user(
        &self,
        tenant: &str,
        user_id: &str,
        lockout_subject: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counts an attempt before its password is verified, atomically: `Locked` while a lock is
    /// in force or when this attempt is beyond `max_failures` in the window, else `Proceed`.
    /// On Redis the server's clock decides and `now_unix_ms` is ignored.
    fn begin_attempt(
        &self,
        tenant: &str,
        subject: &str,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> impl Future<Output = Result<AttemptGate, StoreError>> + Send;

    /// Records the result of a proceeded attempt: success clears count and lock; a failure
    /// with the count at `max_failures` or more sets the lock. True when this call set it.
    fn finish_attempt(
        &self,
        tenant: &str,
        subject: &str,
        success: bool,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The subject's lockout state (Redis: by the server's clock).
    fn lock_state(
        &self,
        tenant: &str,
        subject: &str,
        now_unix_ms: u64,
    ) -> impl Future<Output = Result<LockState, StoreError>> + Send;

    /// Clears count and lock; true when there was either.
    fn unlock(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores a new session for a login that verified `password_hash`, listed under its user,
    /// in one atomic step with the check that the user still exists and still has that hash:
    /// a login that raced a deletion or a password change opens nothing.
    fn open_session(
        &self,
        session: &Session,
        password_hash: &str,
    ) -> impl Future<Output = Result<OpenOutcome, StoreError>> + Send;

    /// The session, when alive (not past either expiry, not revoked).
    fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// Atomically rotates the refresh secret, or detects the reuse of an earlier one (and
    /// then revokes the session and publishes the revocation). The idle expiry moves to
    /// `now + idle_timeout`, never past the absolute one. On Redis the server's clock is now.
    ///
    /// The hash rotated away last, presented again less than `grace` after its rotation (by
    /// the store's clock: Redis TIME, the memory store's clock), is `Replayed` and changes
    /// nothing; later, or with a zero `grace`, it is a reuse like any earlier hash.
    #[allow(clippy::too_many_arguments)] // each is one fact of the step; a struct adds nothing
    fn rotate_refresh(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now_unix: u64,
        idle_timeout: Duration,
        grace: Duration,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

    /// Ends a session for a caller presenting the hash of its refresh secret, checked as
    /// [`rotate_refresh`](Self::rotate_refresh) checks it, atomically: the current hash or an
    /// earlier one (a reuse) revokes the session and publishes the revocation; any other hash
    /// ends nothing.
    fn end_session(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
    ) -> impl Future<Output = Result<EndOutcome, StoreError>> + Send;

    /// Revokes one session; false when it was not alive.
    fn revoke_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every session of the user but `except`; returns how many were alive.
    fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// The user's alive sessions, oldest first.
    fn list_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<Session>, StoreError>> + Send;

    /// Revocations (tenant, session id) published after `cursor` (from the oldest retained
    /// one when `None`), at most [`REVOCATIONS_BATCH`], and the cursor to pass next time.
    /// A revocation is published before (or, for reuse detection, right after) the session is
    /// erased; retries and races may publish one twice, which consumers treat as idempotent.
    fn revocations_since(
        &self,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<(String, String)>, String), StoreError>> + Send;

    /// Unix ms of the newest revocation the feed has dropped to stay bounded, 0 when none (or
    /// when the store cannot tell): a replica that reads the feed from its start has missed
    /// every revocation up to then, and the sessions' access tokens may still be valid.
    fn revocations_dropped_until_ms(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Appends an event (its `id` is ignored) to its tenant's log, dropping events older than
    /// `retention_days`; returns the id assigned, ordered by append time.
    fn append_audit(
        &self,
        event: &AuditEvent,
        retention_days: u32,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Up to `limit` events, newest first, older than `after_id` when given (paging).
    fn list_audit(
        &self,
        tenant: &str,
        limit: usize,
        after_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;

    /// The store-wide secret `name`, set to `candidate` if it has none yet (atomically, so
    /// every replica ends up with the same one). For keys every replica must share but no
    /// operator needs to manage, such as the username-hash key.
    fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8; 32],
    ) -> impl Future<Output = Result<[u8; 32], StoreError>> + Send;

    /// Up to `limit` events of one user, newest first (GDPR export).
    fn audit_for_user(
        &self,
        tenant: &str,
        user_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
}
