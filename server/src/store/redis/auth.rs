//! The Redis store's accounts: one Lua script per atomic step, all keys of a script on the
//! tenant's slot.
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
//! | `auth:{t}:session:<sid>` | the session, a hash, with the hash rotated away last and when (expires when the session does) |
//! | `auth:{t}:session-used:<sid>` | hashes of refresh secrets already rotated away (reuse detection) |
//! | `auth:{t}:user-sessions:<user_id>` | the user's session ids (stale ids are dropped lazily) |
//! | `audit:{t}` | the tenant's audit stream |
//! | `auth:secret:<name>` | a store-wide secret shared by the replicas, hex (see `shared_secret`) |
//! | `auth:revocations` | the global revocation feed (not tenant-tagged, see [`REVOCATIONS_KEY`]) |

use std::collections::HashMap;
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::RedisStore;
use super::connection::store_error;
use crate::auth::model::{
    AttemptGate, AuditEvent, EndOutcome, LockState, LockoutSettings, OpenOutcome, RecordVersion,
    ReplaceOutcome, RotateOutcome, Session, UserRecord, VersionedUser,
};
use crate::auth::store::{
    AuthStore, REVOCATIONS_BATCH, REVOCATIONS_KEPT, StoreError, sort_oldest_first,
};
use crate::clock::{millis, unix_time};
use crate::keys::{REVOCATIONS_KEY, audit_key, auth_key, hex, username_digest};

/// The scripts of the authentication store; EVALSHA with EVAL again on NOSCRIPT, like `gcra`.
#[derive(Debug)]
pub(super) struct AuthScripts {
    /// Username uniqueness and record, in one step.
    create_user: Script,
    /// Replaces a record only while it is still the one the caller read.
    replace_user: Script,
    /// Record, username index and lockout state (sessions go first, by `revoke_sessions`).
    delete_user: Script,
    /// Counts an attempt before the password is verified; refuses while locked.
    begin_attempt: Script,
    /// Clears on success; locks after the last allowed failure.
    finish_attempt: Script,
    /// Counter and lock in one snapshot.
    lock_state: Script,
    /// The user's existence and password hash checked, then hash, expiry and the user's list,
    /// in one step.
    open_session: Script,
    /// Rotation and reuse detection in one step.
    rotate_refresh: Script,
    /// Logout by refresh token: the secret checked and the session deleted in one step.
    end_session: Script,
    /// Deletes sessions and their used-hash sets, and unlists them.
    revoke_sessions: Script,
    /// XADD plus retention trimming on the server's clock.
    append_audit: Script,
}

impl AuthScripts {
    pub(super) fn new() -> Self {
        Self {
            create_user: Script::new(include_str!("scripts/auth_create_user.lua")),
            replace_user: Script::new(include_str!("scripts/auth_replace_user.lua")),
            delete_user: Script::new(include_str!("scripts/auth_delete_user.lua")),
            begin_attempt: Script::new(include_str!("scripts/auth_begin_attempt.lua")),
            finish_attempt: Script::new(include_str!("scripts/auth_finish_attempt.lua")),
            lock_state: Script::new(include_str!("scripts/auth_lock_state.lua")),
            open_session: Script::new(include_str!("scripts/auth_open_session.lua")),
            rotate_refresh: Script::new(include_str!("scripts/auth_rotate_refresh.lua")),
            end_session: Script::new(include_str!("scripts/auth_end_session.lua")),
            revoke_sessions: Script::new(include_str!("scripts/auth_revoke_sessions.lua")),
            append_audit: Script::new(include_str!("scripts/auth_append_audit.lua")),
        }
    }
}

/// Key kinds (the `kind` of `auth_key`).
const USER: &str = "user";
const USERNAME: &str = "username";
const FAILS: &str = "fails";
const LOCK: &str = "lock";
const SESSION: &str = "session";
const SESSION_USED: &str = "session-used";
const USER_SESSIONS: &str = "user-sessions";

/// Audit entries read per round trip when filtering by user.
const AUDIT_SCAN_CHUNK: usize = 1000;

fn now_unix() -> u64 {
    unix_time().as_secs()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::permanent(format!("cannot encode a record: {e}")))
}

fn user_from_json(json: &str) -> Result<UserRecord, StoreError> {
    // serde_json's message names the position, never the content.
    serde_json::from_str(json)
        .map_err(|e| StoreError::permanent(format!("malformed stored user record: {e}")))
}

/// The hash fields of a session (see `auth_rotate_refresh.lua`).
fn session_fields(s: &Session) -> [(&'static str, String); 9] {
    [
        ("sid", s.session_id.clone()),
        ("tid", s.tenant_id.clone()),
        ("uid", s.user_id.clone()),
        ("rh", s.refresh_hash.clone()),
        ("created", s.created_at_unix.to_string()),
        ("last", s.last_used_unix.to_string()),
        ("idle", s.idle_expires_unix.to_string()),
        ("abs", s.absolute_expires_unix.to_string()),
        ("ip", s.client_ip.clone()),
    ]
}

/// The inverse of [`session_fields`].
fn session_from_fields(fields: &HashMap<String, String>) -> Result<Session, StoreError> {
    let text = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::permanent(format!("stored session lacks field {name}")))
    };
    let number = |name: &str| {
        text(name)?
            .parse::<u64>()
            .map_err(|_| StoreError::permanent(format!("stored session field {name} is malformed")))
    };
    Ok(Session {
        session_id: text("sid")?,
        tenant_id: text("tid")?,
        user_id: text("uid")?,
        refresh_hash: text("rh")?,
        created_at_unix: number("created")?,
        last_used_unix: number("last")?,
        idle_expires_unix: number("idle")?,
        absolute_expires_unix: number("abs")?,
        client_ip: text("ip")?,
    })
}

/// Pairs a flat `field, value, …` reply.
fn pairs(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// True for a stream id `<ms>-<seq>`, so a malformed cursor is our error, not Redis's.
fn is_stream_id(id: &str) -> bool {
    let number = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok()
    };
    match id.split_once('-') {
        // A plain `n` is `n-0` to Redis.
        None => number(id),
        Some((ms, seq)) => number(ms) && number(seq),
    }
}

/// A stream entry as XRANGE returns it: id, then flat fields.
type StreamEntry = (String, Vec<String>);

/// From an `XINFO STREAM` answer (RESP2 pairs or a RESP3 map): when entries were ever
/// dropped (`entries-added` exceeds `length`), a bound on the newest dropped one, in Unix ms:
/// the first entry kept (every dropped one is older), or the last one added when none is kept.
/// 0 when none was dropped, and before Redis 7, which does not count what was added.
fn dropped_until_ms(info: &redis::Value) -> u64 {
    use redis::Value;
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Array(items) => items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| redis::from_redis_value_ref::<String>(k).ok().as_deref() == Some(name))
            .map(|(_, v)| *v)
    };
    let number = |name: &str| field(name).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok());
    let id_ms = |name: &str| {
        field(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .and_then(|id| {
                id.split_once('-')
                    .and_then(|(ms, _)| ms.parse::<u64>().ok())
            })
    };
    let (Some(added), Some(length)) = (number("entries-added"), number("length")) else {
        return 0;
    };
    if added <= length {
        return 0;
    }
    id_ms("recorded-first-entry-id")
        .filter(|ms| *ms > 0)
        .or_else(|| id_ms("last-generated-id"))
        .unwrap_or(u64::MAX)
}

fn audit_from_entry((id, fields): StreamEntry) -> Result<AuditEvent, StoreError> {
    let fields = pairs(&fields);
    let json = fields
        .get("e")
        .ok_or_else(|| StoreError::permanent("audit entry without an event"))?;
    let mut event: AuditEvent = serde_json::from_str(json)
        .map_err(|e| StoreError::permanent(format!("malformed audit entry: {e}")))?;
    event.id = id;
    Ok(event)
}

impl RedisStore {
    /// Publishes revocations to the global feed (its own slot, so not part of any tenant
    /// script). Called before the sessions are deleted, so a failure leaves them alive and the
    /// caller's retry publishes again: a revocation is never lost, at worst repeated.
    async fn publish_revocations(
        &self,
        tenant: &str,
        session_ids: &[String],
    ) -> Result<(), StoreError> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let at = now_unix();
        let mut pipe = redis::pipe();
        for sid in session_ids {
            pipe.cmd("XADD")
                .arg(REVOCATIONS_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(REVOCATIONS_KEPT)
                .arg("*")
                .arg("t")
                .arg(tenant)
                .arg("s")
                .arg(sid)
                .arg("at")
                .arg(at)
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Publishes, then deletes the given sessions of a user; returns how many were alive.
    async fn revoke_listed(
        &self,
        tenant: &str,
        user_id: &str,
        session_ids: &[String],
    ) -> Result<u32, StoreError> {
        if session_ids.is_empty() {
            return Ok(0);
        }
        self.publish_revocations(tenant, session_ids).await?;
        let mut invocation = self.auth.revoke_sessions.prepare_invoke();
        invocation.key(auth_key(tenant, USER_SESSIONS, user_id));
        for sid in session_ids {
            invocation
                .key(auth_key(tenant, SESSION, sid))
                .key(auth_key(tenant, SESSION_USED, sid))
                .arg(sid);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// The ids listed for a user (stale ones included).
    async fn listed_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .conn
            .clone()
            .smembers(auth_key(tenant, USER_SESSIONS, user_id))
            .await
            .map_err(store_error)?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads audit entries newest first, older than `before` (exclusive) when given.
    async fn audit_page(
        &self,
        tenant: &str,
        count: usize,
        before: Option<&str>,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let end = match before {
            None => "+".to_owned(),
            Some(id) if is_stream_id(id) => format!("({id}"),
            Some(_) => return Err(StoreError::permanent("malformed audit event id")),
        };
        redis::cmd("XREVRANGE")
            .arg(audit_key(tenant))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }
}

fn lock_for_ms(settings: &LockoutSettings) -> i64 {
    settings
        .lock_for
        .map_or(-1, |d| i64::try_from(millis(d)).unwrap_or(i64::MAX))
}

impl AuthStore for RedisStore {
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let created: i64 = self
            .auth
            .create_user
            .key(auth_key(
                &user.tenant_id,
                USERNAME,
                &username_digest(&user.username),
            ))
            .key(auth_key(&user.tenant_id, USER, &user.user_id))
            .arg(&user.user_id)
            .arg(to_json(user)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match created {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(StoreError::permanent("a user with this id exists already")),
        }
    }

    async fn get_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .get_user_versioned(tenant, user_id)
            .await?
            .map(|versioned| versioned.user))
    }

    async fn find_user(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let id: Option<String> = self
            .conn
            .clone()
            .get(auth_key(tenant, USERNAME, &username_digest(username)))
            .await
            .map_err(store_error)?;
        let Some(id) = id else { return Ok(None) };
        // A record deleted between the two reads reads as absent, as it should.
        let user = self.get_user(tenant, &id).await?;
        Ok(user.filter(|u| u.username == username))
    }

    async fn get_user_versioned(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<VersionedUser>, StoreError> {
        let json: Option<String> = self
            .conn
            .clone()
            .get(auth_key(tenant, USER, user_id))
            .await
            .map_err(store_error)?;
        let Some(json) = json else { return Ok(None) };
        Ok(Some(VersionedUser {
            user: user_from_json(&json)?,
            // The stored text itself: the replace script compares it byte for byte.
            version: RecordVersion(json),
        }))
    }

    async fn replace_user(
        &self,
        expected: &RecordVersion,
        user: &UserRecord,
    ) -> Result<ReplaceOutcome, StoreError> {
        let replaced: i64 = self
            .auth
            .replace_user
            .key(auth_key(&user.tenant_id, USER, &user.user_id))
            .key(auth_key(
                &user.tenant_id,
                USERNAME,
                &username_digest(&user.username),
            ))
            .arg(&user.user_id)
            .arg(&expected.0)
            .arg(to_json(user)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match replaced {
            1 => Ok(ReplaceOutcome::Replaced),
            2 => Ok(ReplaceOutcome::Changed),
            0 => Ok(ReplaceOutcome::Gone),
            _ => Err(StoreError::permanent(
                "replace_user cannot change the username",
            )),
        }
    }

    async fn delete_user(
        &self,
        tenant: &str,
        user_id: &str,
        lockout_subject: &str,
    ) -> Result<bool, StoreError> {
        let user = self.get_user(tenant, user_id).await?;
        let username_key = auth_key(
            tenant,
            USERNAME,
            &username_digest(user.as_ref().map_or("", |u| u.username.as_str())),
        );
        let existed: i64 = self
            .auth
            .delete_user
            .key(auth_key(tenant, USER, user_id))
            .key(username_key)
            .key(auth_key(tenant, FAILS, lockout_subject))
            .key(auth_key(tenant, LOCK, lockout_subject))
            .arg(user_id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        // The record goes first: from then on no login can open a session for the user (the
        // open script checks the record), so the sessions listed now are all there will be.
        // A failure here leaves them listed, and a retry (which finds no user) ends them.
        let ids = self.listed_sessions(tenant, user_id).await?;
        self.revoke_listed(tenant, user_id, &ids).await?;
        Ok(existed == 1)
    }

    async fn begin_attempt(
        &self,
        tenant: &str,
        subject: &str,
        settings: &LockoutSettings,
        _now_unix_ms: u64,
    ) -> Result<AttemptGate, StoreError> {
        let (gate, retry_ms): (i64, i64) = self
            .auth
            .begin_attempt
            .key(auth_key(tenant, FAILS, subject))
            .key(auth_key(tenant, LOCK, subject))
            .arg(settings.max_failures)
            .arg(millis(settings.window).max(1))
            .arg(lock_for_ms(settings))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(if gate == 1 {
            AttemptGate::Proceed
        } else {
            AttemptGate::Locked {
                retry_after: u64::try_from(retry_ms).ok().map(Duration::from_millis),
            }
        })
    }

    async fn finish_attempt(
        &self,
        tenant: &str,
        subject: &str,
        success: bool,
        settings: &LockoutSettings,
        _now_unix_ms: u64,
    ) -> Result<bool, StoreError> {
        let locked: i64 = self
            .auth
            .finish_attempt
            .key(auth_key(tenant, FAILS, subject))
            .key(auth_key(tenant, LOCK, subject))
            .arg(if success { "1" } else { "0" })
            .arg(settings.max_failures)
            .arg(lock_for_ms(settings))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(locked == 1)
    }

    async fn lock_state(
        &self,
        tenant: &str,
        subject: &str,
        _now_unix_ms: u64,
    ) -> Result<LockState, StoreError> {
        let (failures, locked, until): (i64, i64, i64) = self
            .auth
            .lock_state
            .key(auth_key(tenant, FAILS, subject))
            .key(auth_key(tenant, LOCK, subject))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(LockState {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked: locked == 1,
            locked_until_unix_ms: u64::try_from(until).ok(),
        })
    }

    async fn unlock(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let removed: u64 = self
            .conn
            .clone()
            .del(&[
                auth_key(tenant, FAILS, subject),
                auth_key(tenant, LOCK, subject),
            ])
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn open_session(
        &self,
        session: &Session,
        password_hash: &str,
    ) -> Result<OpenOutcome, StoreError> {
        let t = &session.tenant_id;
        let mut invocation = self.auth.open_session.prepare_invoke();
        invocation
            .key(auth_key(t, USER, &session.user_id))
            .key(auth_key(t, SESSION, &session.session_id))
            .key(auth_key(t, USER_SESSIONS, &session.user_id))
            .arg(password_hash)
            .arg(&session.session_id)
            .arg(session.expires_unix())
            .arg(session.absolute_expires_unix);
        for (field, value) in session_fields(session) {
            invocation.arg(field).arg(value);
        }
        let opened: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match opened {
            1 => Ok(OpenOutcome::Opened),
            0 => Ok(OpenOutcome::UserGone),
            2 => Ok(OpenOutcome::PasswordChanged),
            3 => Ok(OpenOutcome::IdTaken),
            _ => Err(StoreError::permanent(
                "session-opening script returned a malformed reply",
            )),
        }
    }

    async fn get_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<Session>, StoreError> {
        // The key expires at the session's end on the server's clock: present means alive.
        let fields: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(auth_key(tenant, SESSION, session_id))
            .await
            .map_err(store_error)?;
        if fields.is_empty() {
            return Ok(None);
        }
        session_from_fields(&fields).map(Some)
    }

    async fn rotate_refresh(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
        new_hash: &str,
        _now_unix: u64,
        idle_timeout: Duration,
        grace: Duration,
    ) -> Result<RotateOutcome, StoreError> {
        let reply: Vec<String> = self
            .auth
            .rotate_refresh
            .key(auth_key(tenant, SESSION, session_id))
            .key(auth_key(tenant, SESSION_USED, session_id))
            .arg(presented_hash)
            .arg(new_hash)
            .arg(idle_timeout.as_secs())
            .arg(millis(grace))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match reply.split_first() {
            Some((tag, fields)) if tag == "1" => {
                Ok(RotateOutcome::Rotated(session_from_fields(&pairs(fields))?))
            }
            Some((tag, fields)) if tag == "3" => Ok(RotateOutcome::Replayed(session_from_fields(
                &pairs(fields),
            )?)),
            Some((tag, _)) if tag == "2" => {
                // The script already deleted the session (atomically with the detection);
                // the feed is on another slot, so it is told right after.
                self.publish_revocations(tenant, &[session_id.to_owned()])
                    .await?;
                Ok(RotateOutcome::Reused)
            }
            Some((tag, _)) if tag == "0" => Ok(RotateOutcome::NotFound),
            _ => Err(StoreError::permanent(
                "rotation script returned a malformed reply",
            )),
        }
    }

    async fn end_session(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
    ) -> Result<EndOutcome, StoreError> {
        let reply: String = self
            .auth
            .end_session
            .key(auth_key(tenant, SESSION, session_id))
            .key(auth_key(tenant, SESSION_USED, session_id))
            .arg(presented_hash)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let outcome = match reply.as_str() {
            "1" => EndOutcome::Ended,
            "2" => EndOutcome::Reused,
            "3" => return Ok(EndOutcome::WrongSecret),
            "0" => return Ok(EndOutcome::NotFound),
            _ => {
                return Err(StoreError::permanent(
                    "session-ending script returned a malformed reply",
                ));
            }
        };
        // The script deleted the session after checking the secret; the feed is on another
        // slot, so it is told right after (before, a forged token could revoke access tokens).
        self.publish_revocations(tenant, &[session_id.to_owned()])
            .await?;
        Ok(outcome)
    }

    async fn revoke_session(&self, tenant: &str, session_id: &str) -> Result<bool, StoreError> {
        let user_id: Option<String> = self
            .conn
            .clone()
            .hget(auth_key(tenant, SESSION, session_id), "uid")
            .await
            .map_err(store_error)?;
        let Some(user_id) = user_id else {
            return Ok(false);
        };
        Ok(self
            .revoke_listed(tenant, &user_id, &[session_id.to_owned()])
            .await?
            > 0)
    }

    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u32, StoreError> {
        let mut ids = self.listed_sessions(tenant, user_id).await?;
        ids.retain(|sid| Some(sid.as_str()) != except);
        // Listed ids whose session has expired are unlisted too, but counted by the script
        // as not alive; publishing them as well is harmless.
        self.revoke_listed(tenant, user_id, &ids).await
    }

    async fn list_sessions(&self, tenant: &str, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let ids = self.listed_sessions(tenant, user_id).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sid in &ids {
            pipe.hgetall(auth_key(tenant, SESSION, sid));
        }
        let all: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let mut alive = Vec::new();
        let mut stale = Vec::new();
        for (sid, fields) in ids.iter().zip(all) {
            if fields.is_empty() {
                stale.push(sid.clone());
            } else {
                alive.push(session_from_fields(&fields)?);
            }
        }
        if !stale.is_empty() {
            let _: u64 = self
                .conn
                .clone()
                .srem(auth_key(tenant, USER_SESSIONS, user_id), &stale)
                .await
                .map_err(store_error)?;
        }
        sort_oldest_first(&mut alive);
        Ok(alive)
    }

    async fn revocations_since(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        let start = match cursor {
            None => "-".to_owned(),
            Some(c) if is_stream_id(c) => format!("({c}"),
            Some(_) => return Err(StoreError::permanent("malformed revocation cursor")),
        };
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(REVOCATIONS_KEY)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(REVOCATIONS_BATCH)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let next = entries
            .last()
            .map(|(id, _)| id.clone())
            .or_else(|| cursor.map(str::to_owned))
            .unwrap_or_else(|| "0-0".to_owned());
        let mut out = Vec::with_capacity(entries.len());
        for (_, fields) in entries {
            let mut fields = pairs(&fields);
            match (fields.remove("t"), fields.remove("s")) {
                (Some(t), Some(s)) => out.push((t, s)),
                _ => return Err(StoreError::permanent("malformed revocation entry")),
            }
        }
        Ok((out, next))
    }

    async fn revocations_dropped_until_ms(&self) -> Result<u64, StoreError> {
        let info: redis::Value = match redis::cmd("XINFO")
            .arg("STREAM")
            .arg(REVOCATIONS_KEY)
            .query_async(&mut self.conn.clone())
            .await
        {
            Ok(info) => info,
            // No revocation was ever published (or the stream expired): nothing dropped.
            Err(e) if e.to_string().contains("no such key") => return Ok(0),
            Err(e) => return Err(store_error(e)),
        };
        Ok(dropped_until_ms(&info))
    }

    async fn append_audit(
        &self,
        event: &AuditEvent,
        retention_days: u32,
    ) -> Result<String, StoreError> {
        let mut stored = event.clone();
        stored.id = String::new();
        self.auth
            .append_audit
            .key(audit_key(&event.tenant_id))
            .arg(to_json(&stored)?)
            .arg(u64::from(retention_days) * 86_400_000)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    async fn list_audit(
        &self,
        tenant: &str,
        limit: usize,
        after_id: Option<&str>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.audit_page(tenant, limit, after_id)
            .await?
            .into_iter()
            .map(audit_from_entry)
            .collect()
    }

    async fn audit_for_user(
        &self,
        tenant: &str,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        while out.len() < limit {
            let page = self
                .audit_page(tenant, AUDIT_SCAN_CHUNK, before.as_deref())
                .await?;
            let full = page.len() == AUDIT_SCAN_CHUNK;
            before = page.last().map(|(id, _)| id.clone());
            for entry in page {
                let event = audit_from_entry(entry)?;
                if event.user_id.as_deref() == Some(user_id) && out.len() < limit {
                    out.push(event);
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        // SET NX GET: sets the candidate unless a secret exists, and returns the old one; one
        // round trip, atomic, so concurrent first starts agree.
        let previous: Option<String> = redis::cmd("SET")
            .arg(format!("auth:secret:{name}"))
            .arg(hex(candidate))
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let Some(previous) = previous else {
            return Ok(*candidate);
        };
        let bytes = (0..previous.len())
            .step_by(2)
            .map(|i| {
                previous
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>();
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| StoreError::permanent(format!("stored secret {name} is malformed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_through_hash_fields() {
        let s = Session {
            session_id: "s{1}:x".into(),
            tenant_id: "t".into(),
            user_id: "u".into(),
            refresh_hash: "ab".into(),
            created_at_unix: 1,
            last_used_unix: 2,
            idle_expires_unix: 3,
            absolute_expires_unix: 4,
            client_ip: "::1".into(),
        };
        let fields: HashMap<String, String> = session_fields(&s)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(session_from_fields(&fields).unwrap(), s);
        let mut broken = fields.clone();
        broken.insert("abs".into(), "x".into());
        let e = session_from_fields(&broken).unwrap_err();
        assert!(!e.transient && e.message.contains("abs"));
        broken.remove("rh");
        assert!(session_from_fields(&broken).is_err());
    }

    #[test]
    fn stream_ids_are_validated() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(is_stream_id("1700000000000"), "n is n-0 to Redis");
        assert!(!is_stream_id("18446744073709551616-0"));
        assert!(!is_stream_id("-0"));
        assert!(!is_stream_id("1-2 +"));
        assert!(!is_stream_id("+"));
    }

    #[test]
    fn lock_durations_encode_indefinite_as_minus_one() {
        let mut s = LockoutSettings::default();
        assert_eq!(lock_for_ms(&s), 900_000);
        s.lock_for = None;
        assert_eq!(lock_for_ms(&s), -1);
    }

    #[test]
    fn tenant_scripts_stay_on_one_slot() {
        use redis::cluster_routing::Slot;
        let t = "a}:{b";
        let slot = Slot::for_key(auth_key(t, USER, "x").as_bytes());
        for kind in [USERNAME, FAILS, LOCK, SESSION, SESSION_USED, USER_SESSIONS] {
            assert_eq!(Slot::for_key(auth_key(t, kind, "y{z}").as_bytes()), slot);
        }
    }
}
