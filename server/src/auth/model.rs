//! What the authentication store keeps: users, sessions, lockout settings and audit events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A user account of one tenant, stored as JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Store-wide unique within the tenant; chosen by the service, never reused.
    pub user_id: String,
    /// The tenant the user belongs to; every key of the user carries it.
    pub tenant_id: String,
    /// The login name, unique within the tenant.
    pub username: String,
    /// Argon2id PHC string. Never shown by `Debug`.
    pub password_hash: String,
    /// Roles copied into access tokens.
    pub roles: Vec<String>,
    /// The first login must change the password (the token only gets `password:change`).
    pub must_change_password: bool,
    /// When the user was created, Unix seconds.
    pub created_at_unix: u64,
    /// The last successful login, Unix seconds.
    pub last_login_unix: Option<u64>,
}

impl std::fmt::Debug for UserRecord {
    // The hash is an offline-guessing target: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("user_id", &self.user_id)
            .field("tenant_id", &self.tenant_id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .field("must_change_password", &self.must_change_password)
            .field("created_at_unix", &self.created_at_unix)
            .field("last_login_unix", &self.last_login_unix)
            .finish()
    }
}

/// A login session: what a refresh token renews and what access tokens name in `sid`.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// Random, unique within the tenant.
    pub session_id: String,
    /// The tenant of the session's user.
    pub tenant_id: String,
    /// Whose session it is.
    pub user_id: String,
    /// Hex SHA-256 of the current refresh secret (the secret itself is never stored). Never
    /// shown by `Debug`.
    pub refresh_hash: String,
    /// Login time, Unix seconds.
    pub created_at_unix: u64,
    /// Last login or refresh, Unix seconds.
    pub last_used_unix: u64,
    /// The session dies at this time unless refreshed first, Unix seconds.
    pub idle_expires_unix: u64,
    /// The session dies at this time whatever happens, Unix seconds.
    pub absolute_expires_unix: u64,
    /// The client address of the login, for `ListSessions` and the audit log.
    pub client_ip: String,
}

impl Session {
    /// True when `now_unix` is before both expiries.
    pub fn is_alive_at(&self, now_unix: u64) -> bool {
        now_unix < self.idle_expires_unix && now_unix < self.absolute_expires_unix
    }

    /// When the session ends if nothing happens: the earlier of its two expiries.
    pub fn expires_unix(&self) -> u64 {
        self.idle_expires_unix.min(self.absolute_expires_unix)
    }
}

impl std::fmt::Debug for Session {
    // Even a hash of a refresh secret stays out of logs: it identifies a live credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("refresh_hash", &"<redacted>")
            .field("created_at_unix", &self.created_at_unix)
            .field("last_used_unix", &self.last_used_unix)
            .field("idle_expires_unix", &self.idle_expires_unix)
            .field("absolute_expires_unix", &self.absolute_expires_unix)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

/// When failed logins lock an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutSettings {
    /// Failures within `window` that lock; at most this many passwords are ever evaluated per
    /// lock period.
    pub max_failures: u32,
    /// The failure counter expires this long after its first failure.
    pub window: Duration,
    /// How long a lock lasts; `None` locks until an admin unlocks.
    pub lock_for: Option<Duration>,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lock_for: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// Whether a login attempt may evaluate the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptGate {
    /// Verify the password, then call `finish_attempt`.
    Proceed,
    /// Do not verify anything.
    Locked {
        /// When a retry may proceed; `None` when only an admin unlock ends the lock.
        retry_after: Option<Duration>,
    },
}

/// The lockout state of a subject, for `GetUser`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockState {
    /// Attempts counted in the current window (attempts refused while over the limit included).
    pub failures: u32,
    /// True while a lock is in force.
    pub locked: bool,
    /// When a timed lock ends, ms since the Unix epoch; `None` when not locked or locked
    /// until an admin unlocks.
    pub locked_until_unix_ms: Option<u64>,
}

/// What presenting a refresh secret did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The secret was current: the session now holds the new hash.
    Rotated(Session),
    /// The presented secret is the one rotated away last, presented again within the grace
    /// window (a retry whose answer was lost): the session as it is, unchanged; the caller
    /// hands out the successor it rotated to then.
    Replayed(Session),
    /// The presented secret was an earlier one: the session is now revoked.
    Reused,
    /// Unknown, expired or revoked session, or a secret that never belonged to it.
    NotFound,
}

/// Which state of a user record a read saw: a write made with it succeeds only while the
/// record is still in that state (compare-and-set), so no write rests on a stale read. Opaque
/// to the domain; never shown by `Debug` (on Redis it is the stored record itself).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordVersion(pub String);

impl std::fmt::Debug for RecordVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordVersion(<redacted>)")
    }
}

/// A user record with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedUser {
    /// The record.
    pub user: UserRecord,
    /// What a write of the record must present.
    pub version: RecordVersion,
}

/// What a compare-and-set write of a user record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceOutcome {
    /// The record was still at the expected version and now holds the new one.
    Replaced,
    /// Another write came first: nothing was written; read again and decide again.
    Changed,
    /// The user no longer exists.
    Gone,
}

/// What opening a session for a verified login did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The user exists with the password hash that was verified: the session is stored.
    Opened,
    /// The user's password hash is no longer the one verified (changed meanwhile): no session.
    PasswordChanged,
    /// The user no longer exists: no session.
    UserGone,
    /// The session id exists already: nothing written.
    IdTaken,
}

/// What presenting a refresh secret to end its session did (logout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// The secret was current: the session is revoked.
    Ended,
    /// The secret was an earlier one, as a reuse at refresh would be: the session is revoked.
    Reused,
    /// The session is alive but the secret is none of its own: nothing ended.
    WrongSecret,
    /// No live session (unknown, expired or already revoked).
    NotFound,
}

/// One audit log entry. Never holds a password, token or secret; the username only as a
/// keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by the store on append (ignored there), ordered by append time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// UTC time of the event, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// The tenant the event belongs to.
    pub tenant_id: String,
    /// The user, when known.
    pub user_id: Option<String>,
    /// What happened, e.g. `login`, `refresh`, `admin.delete_user`.
    pub action: String,
    /// How it ended, e.g. `success`, `invalid_credentials`, `locked`.
    pub outcome: String,
    /// The caller's client address.
    pub client_ip: String,
    /// Keyed hash of the username (empty when none applies).
    pub username_hash: String,
    /// From `traceparent` / `x-trace-id`.
    pub trace_id: String,
    /// How long the call took.
    pub latency_ms: u64,
    /// How many calls the event stands for: 1, or, for failures that prove nothing about any
    /// account (see `audit::proves_nothing`), the calls of one window counted together.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
    /// For a counted event: some of the callers' client addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_client_ips: Vec<String>,
}

fn one() -> u64 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_one(count: &u64) -> bool {
    *count == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let u = UserRecord {
            user_id: "u1".into(),
            tenant_id: "t".into(),
            username: "alice".into(),
            password_hash: "$argon2id$v=19$secretstuff".into(),
            roles: vec![],
            must_change_password: true,
            created_at_unix: 1,
            last_login_unix: None,
        };
        let text = format!("{u:?}");
        assert!(!text.contains("secretstuff") && text.contains("alice"));
        let s = Session {
            session_id: "s".into(),
            tenant_id: "t".into(),
            user_id: "u1".into(),
            refresh_hash: "abcdef0123".into(),
            created_at_unix: 1,
            last_used_unix: 1,
            idle_expires_unix: 10,
            absolute_expires_unix: 20,
            client_ip: "10.0.0.1".into(),
        };
        assert!(!format!("{s:?}").contains("abcdef0123"));
        assert!(s.is_alive_at(9) && !s.is_alive_at(10));
        assert_eq!(s.expires_unix(), 10);
    }

    #[test]
    fn audit_events_round_trip_without_an_id() {
        let e = AuditEvent {
            id: String::new(),
            time_unix_ms: 5,
            tenant_id: "t".into(),
            user_id: Some("u".into()),
            action: "login".into(),
            outcome: "success".into(),
            client_ip: "::1".into(),
            username_hash: "h".into(),
            trace_id: "tr".into(),
            latency_ms: 3,
            count: 1,
            sample_client_ips: Vec::new(),
        };
        let json = serde_json::to_string(&e).unwrap_or_default();
        assert!(!json.contains("\"id\""));
        let back: AuditEvent = serde_json::from_str(&json).unwrap_or_else(|_| e.clone());
        assert_eq!(back, e);
    }
}
