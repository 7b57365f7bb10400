//! The authentication half of a store: users, lockout, sessions, the revocation feed and the audit log.
//!
//! Every key of a tenant is `auth:{<tenant>}:<kind>:<id>` (see [`auth_key`]), so one
//! tenant's keys share a Redis Cluster slot and each multi-key script stays on one slot:
//!
//! | key | holds |
//! |---|---|
//! | `auth:{t}:user:<user_id>` | the user record, JSON |
//! | `auth:{t}:username:<sha256 hex of username>` | the user id (uniqueness index) |
//! | `auth:{t}:fails:<subject>` | attempts counted in the lockout window (expires with it) |
//! | `auth:{t}:lock:<subject>` | lock end in ms, or `admin` until unlocked (expires when timed) |
//! | `auth:{t}:session:<sid>` | the session, a hash (expires when the session does) |
//! | `auth:{t}:session-used:<sid>` | hashes of refresh secrets already rotated away (reuse detection) |
//! | `auth:{t}:user-sessions:<user_id>` | the user's session ids (stale ids are dropped lazily) |
//! | `audit:{t}` | the tenant's audit stream |
//! | `auth:secret:<name>` | a store-wide secret shared by the replicas, hex (see `shared_secret`) |
//! | `auth:revocations` | the global revocation feed (not tenant-tagged, see [`REVOCATIONS_KEY`]) |

pub mod memory;

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use crate::auth::model::{
    AttemptGate, AuditEvent, LockState, LockoutSettings, RotateOutcome, Session, UserRecord,
};
pub use crate::keys::{audit_key, auth_key};

use super::{AnyStore, StoreError};

/// The revocation feed. Deliberately one global key (one Cluster slot): revocations are rare
/// (logouts, password changes, admin calls), and every replica tails one stream instead of one
/// per tenant. Entries carry the tenant as data, so no tenant can read or write another's
/// sessions through it.
pub const REVOCATIONS_KEY: &str = "auth:revocations";

/// About this many revocations are kept: far more than happen within an access token's
/// lifetime, which is as long as a replica needs to remember one.
pub const REVOCATIONS_KEPT: usize = 100_000;

/// At most this many revocations are returned per `revocations_since` call; callers loop
/// while a batch is full.
pub const REVOCATIONS_BATCH: usize = 10_000;

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Puts sessions in the order `list_sessions` promises: oldest first, ties by id.
pub(crate) fn sort_oldest_first(sessions: &mut [Session]) {
    sessions.sort_by(|a, b| {
        (a.created_at_unix, &a.session_id).cmp(&(b.created_at_unix, &b.session_id))
    });
}

/// The id of the username index entry: hex SHA-256 of the username, so keys have a fixed
/// length and a key dump does not list usernames in clear.
pub fn username_digest(username: &str) -> String {
    hex(&Sha256::digest(username.as_bytes()))
}

/// Milliseconds of a duration, saturating (u64 ms is half a billion years).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

    /// Replaces a user's record; false when the user is gone. The username cannot change
    /// (that is an error).
    fn update_user(
        &self,
        user: &UserRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

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

    /// Stores a new session; false when the session id exists already.
    fn create_session(
        &self,
        session: &Session,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The session, when alive (not past either expiry, not revoked).
    fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// Atomically rotates the refresh secret, or detects the reuse of an earlier one (and
    /// then revokes the session and publishes the revocation). The idle expiry moves to
    /// `now + idle_timeout`, never past the absolute one. On Redis the server's clock is now.
    fn rotate_refresh(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now_unix: u64,
        idle_timeout: Duration,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

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

impl AuthStore for AnyStore {
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        delegate!(self, create_user(user))
    }

    async fn get_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        delegate!(self, get_user(tenant, user_id))
    }

    async fn find_user(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        delegate!(self, find_user(tenant, username))
    }

    async fn update_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        delegate!(self, update_user(user))
    }

    async fn delete_user(
        &self,
        tenant: &str,
        user_id: &str,
        lockout_subject: &str,
    ) -> Result<bool, StoreError> {
        delegate!(self, delete_user(tenant, user_id, lockout_subject))
    }

    async fn begin_attempt(
        &self,
        tenant: &str,
        subject: &str,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> Result<AttemptGate, StoreError> {
        delegate!(self, begin_attempt(tenant, subject, settings, now_unix_ms))
    }

    async fn finish_attempt(
        &self,
        tenant: &str,
        subject: &str,
        success: bool,
        settings: &LockoutSettings,
        now_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        delegate!(
            self,
            finish_attempt(tenant, subject, success, settings, now_unix_ms)
        )
    }

    async fn lock_state(
        &self,
        tenant: &str,
        subject: &str,
        now_unix_ms: u64,
    ) -> Result<LockState, StoreError> {
        delegate!(self, lock_state(tenant, subject, now_unix_ms))
    }

    async fn unlock(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        delegate!(self, unlock(tenant, subject))
    }

    async fn create_session(&self, session: &Session) -> Result<bool, StoreError> {
        delegate!(self, create_session(session))
    }

    async fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<Session>, StoreError> {
        delegate!(self, get_session(tenant, session_id))
    }

    async fn rotate_refresh(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now_unix: u64,
        idle_timeout: Duration,
    ) -> Result<RotateOutcome, StoreError> {
        delegate!(
            self,
            rotate_refresh(
                tenant,
                session_id,
                presented_hash,
                new_hash,
                now_unix,
                idle_timeout
            )
        )
    }

    async fn revoke_session(&self, tenant: &str, session_id: &str) -> Result<bool, StoreError> {
        delegate!(self, revoke_session(tenant, session_id))
    }

    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u32, StoreError> {
        delegate!(self, revoke_user_sessions(tenant, user_id, except))
    }

    async fn list_sessions(&self, tenant: &str, user_id: &str) -> Result<Vec<Session>, StoreError> {
        delegate!(self, list_sessions(tenant, user_id))
    }

    async fn revocations_since(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        delegate!(self, revocations_since(cursor))
    }

    async fn append_audit(
        &self,
        event: &AuditEvent,
        retention_days: u32,
    ) -> Result<String, StoreError> {
        delegate!(self, append_audit(event, retention_days))
    }

    async fn list_audit(
        &self,
        tenant: &str,
        limit: usize,
        after_id: Option<&str>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        delegate!(self, list_audit(tenant, limit, after_id))
    }

    async fn audit_for_user(
        &self,
        tenant: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        delegate!(self, audit_for_user(tenant, user_id, limit))
    }

    async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        delegate!(self, shared_secret(name, candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_digest_is_hex_sha256() {
        assert_eq!(
            username_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa5]), "000fa5");
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
