//! User administration on the authentication core: create, look up, unlock, delete, export,
//! sessions and the audit log; every call audited as `admin.<call>`.

use serde_json::json;

use super::audit::{self, CallContext};
use super::authenticator::{Authenticator, NewUser};
use super::error::AuthError;
use super::model::{AuditEvent, LockState, Session, UserRecord};
use super::store::AuthStore;
use crate::keys;
use crate::ratelimit::store::RateLimitStore;

/// Events returned by one `ListAuditEvents` page when the caller asks for none in particular.
pub const DEFAULT_AUDIT_PAGE: usize = 100;
/// The largest `ListAuditEvents` page.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// The most audit events a GDPR export includes (newest first).
pub const MAX_EXPORTED_EVENTS: usize = 10_000;

/// A user as an administrator sees it: the record (whose `Debug` hides the hash) and its
/// lockout state.
#[derive(Debug, Clone)]
pub struct UserView {
    /// The stored record.
    pub user: UserRecord,
    /// Failures counted and lock.
    pub lock: LockState,
}

/// Which user an admin call names.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    /// By id.
    Id(&'a str),
    /// By login name.
    Username(&'a str),
}

fn require(field: &str, value: &str) -> Result<(), AuthError> {
    Ok(keys::validate_id(field, value, true)?)
}

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
    /// Records an admin call made outside this module (e.g. a rate-limit change) as `action`
    /// with `outcome`.
    pub async fn record_admin(
        &self,
        ctx: &CallContext,
        tenant: &str,
        action: &'static str,
        outcome: &'static str,
    ) {
        let pending = audit::PendingAudit::new(ctx, tenant, action);
        self.record(pending.finish_as(outcome)).await;
    }

    /// Creates a user (admin); audited as `admin.create_user`.
    pub async fn admin_create_user(
        &self,
        new: NewUser<'_>,
        ctx: &CallContext,
    ) -> Result<UserView, AuthError> {
        let tenant = new.tenant.to_owned();
        self.audited(ctx, &tenant, "admin.create_user", async |audit| {
            audit.event.username_hash = self.subject(new.tenant, new.username).await?;
            let user = self.create_user(new).await?;
            audit.user(&user.user_id);
            Ok(UserView {
                user,
                lock: LockState::default(),
            })
        })
        .await
    }

    async fn view(&self, tenant: &str, who: UserRef<'_>) -> Result<UserView, AuthError> {
        let user = match who {
            UserRef::Id(id) => {
                require("user_id", id)?;
                self.store.get_user(tenant, id).await?
            }
            UserRef::Username(name) => self.find_by_username(tenant, name).await?,
        }
        .ok_or(AuthError::NotFound)?;
        let subject = self.subject(tenant, &user.username).await?;
        let lock = self
            .store
            .lock_state(
                tenant,
                &subject,
                crate::clock::unix_time().as_millis() as u64,
            )
            .await?;
        Ok(UserView { user, lock })
    }

    /// A user with its lockout state; audited as `admin.get_user`.
    pub async fn get_user(
        &self,
        tenant: &str,
        who: UserRef<'_>,
        ctx: &CallContext,
    ) -> Result<UserView, AuthError> {
        self.audited(ctx, tenant, "admin.get_user", async |audit| {
            require("tenant_id", tenant)?;
            let view = self.view(tenant, who).await?;
            audit.user(&view.user.user_id);
            Ok(view)
        })
        .await
    }

    /// Clears failures and lock; audited as `admin.unlock_user`.
    pub async fn unlock_user(
        &self,
        tenant: &str,
        user_id: &str,
        ctx: &CallContext,
    ) -> Result<UserView, AuthError> {
        self.audited(ctx, tenant, "admin.unlock_user", async |audit| {
            require("tenant_id", tenant)?;
            audit.user(user_id);
            let view = self.view(tenant, UserRef::Id(user_id)).await?;
            let subject = self.subject(tenant, &view.user.username).await?;
            audit.event.username_hash = subject.clone();
            self.store.unlock(tenant, &subject).await?;
            Ok(UserView {
                lock: LockState::default(),
                ..view
            })
        })
        .await
    }

    /// Erases the user, their sessions (revoked everywhere) and lockout state; false when
    /// there was no such user. Audited as `admin.delete_user`.
    pub async fn delete_user(
        &self,
        tenant: &str,
        user_id: &str,
        ctx: &CallContext,
    ) -> Result<bool, AuthError> {
        self.audited(ctx, tenant, "admin.delete_user", async |audit| {
            require("tenant_id", tenant)?;
            require("user_id", user_id)?;
            audit.user(user_id);
            let subject = match self.store.get_user(tenant, user_id).await? {
                Some(u) => self.subject(tenant, &u.username).await?,
                None => String::new(),
            };
            audit.event.username_hash = subject.clone();
            let deleted = self.store.delete_user(tenant, user_id, &subject).await?;
            if !deleted {
                audit.outcome = Some("not_found");
            }
            Ok(deleted)
        })
        .await
    }

    /// The user's alive sessions, oldest first; audited as `admin.list_sessions`.
    pub async fn list_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        ctx: &CallContext,
    ) -> Result<Vec<Session>, AuthError> {
        self.audited(ctx, tenant, "admin.list_sessions", async |audit| {
            require("tenant_id", tenant)?;
            require("user_id", user_id)?;
            audit.user(user_id);
            Ok(self.store.list_sessions(tenant, user_id).await?)
        })
        .await
    }

    /// Revokes the named sessions of the user (all of them when `session_ids` is empty);
    /// sessions of other users are ignored. Returns how many were revoked. Audited as
    /// `admin.revoke_sessions`.
    pub async fn revoke_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        session_ids: &[String],
        ctx: &CallContext,
    ) -> Result<u32, AuthError> {
        self.audited(ctx, tenant, "admin.revoke_sessions", async |audit| {
            require("tenant_id", tenant)?;
            require("user_id", user_id)?;
            audit.user(user_id);
            if session_ids.is_empty() {
                return Ok(self
                    .store
                    .revoke_user_sessions(tenant, user_id, None)
                    .await?);
            }
            let mut revoked = 0;
            for (i, sid) in session_ids.iter().enumerate() {
                require(&format!("session_ids[{i}]"), sid)?;
                let owned = self
                    .store
                    .get_session(tenant, sid)
                    .await?
                    .is_some_and(|s| s.user_id == user_id);
                if owned && self.store.revoke_session(tenant, sid).await? {
                    revoked += 1;
                }
            }
            Ok(revoked)
        })
        .await
    }

    /// A page of the tenant's audit log, newest first; audited as `admin.list_audit_events`.
    pub async fn list_audit_events(
        &self,
        tenant: &str,
        limit: usize,
        after_id: Option<&str>,
        ctx: &CallContext,
    ) -> Result<Vec<AuditEvent>, AuthError> {
        self.audited(ctx, tenant, "admin.list_audit_events", async |_| {
            require("tenant_id", tenant)?;
            if let Some(after) = after_id {
                audit::check_event_id("after_id", after)?;
                if audit::is_first_event_id(after) {
                    return Ok(Vec::new());
                }
            }
            let limit = match limit {
                0 => DEFAULT_AUDIT_PAGE,
                n => n.min(MAX_AUDIT_PAGE),
            };
            Ok(self.store.list_audit(tenant, limit, after_id).await?)
        })
        .await
    }

    /// Everything stored about a user, as JSON: the record (never the password hash), its
    /// lockout state, live sessions (never refresh hashes) and audit events. Audited as
    /// `admin.export_user_data`.
    pub async fn export_user_data(
        &self,
        tenant: &str,
        user_id: &str,
        ctx: &CallContext,
    ) -> Result<String, AuthError> {
        self.audited(ctx, tenant, "admin.export_user_data", async |audit| {
            require("tenant_id", tenant)?;
            audit.user(user_id);
            let view = self.view(tenant, UserRef::Id(user_id)).await?;
            let sessions = self.store.list_sessions(tenant, user_id).await?;
            let events = self
                .store
                .audit_for_user(tenant, user_id, MAX_EXPORTED_EVENTS)
                .await?;
            let u = &view.user;
            let document = json!({
                "user": {
                    "user_id": u.user_id,
                    "tenant_id": u.tenant_id,
                    "username": u.username,
                    "roles": u.roles,
                    "must_change_password": u.must_change_password,
                    "created_at_unix": u.created_at_unix,
                    "last_login_unix": u.last_login_unix,
                    "failed_attempts": view.lock.failures,
                    "locked": view.lock.locked,
                    "locked_until_unix_ms": view.lock.locked_until_unix_ms,
                },
                "sessions": sessions.iter().map(|s| json!({
                    "session_id": s.session_id,
                    "created_at_unix": s.created_at_unix,
                    "last_used_unix": s.last_used_unix,
                    "expires_at_unix": s.expires_unix(),
                    "client_ip": s.client_ip,
                })).collect::<Vec<_>>(),
                "audit_events": events,
            });
            serde_json::to_string_pretty(&document).map_err(|e| {
                tracing::error!(error = %e, "cannot encode a user export");
                AuthError::Internal
            })
        })
        .await
    }
}
