//! Where state lives: the memory and Redis implementations of the domains' store interfaces
//! ([`RateLimitStore`], [`AuthStore`]), and [`AnyStore`], the one configuration chooses.

/// Forwards a call on [`AnyStore`] to the chosen store, timing it for the store metrics
/// (`op` is the method's name), in a debug-level span `store.<op>` when the call is part of
/// a span (an RPC's; background polls outside any span would each start a trace of their
/// own). When neither traces nor debug logs are on, only a global level check is added.
macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        let span = if tracing::level_enabled!(tracing::Level::DEBUG)
            && !tracing::Span::current().is_none()
        {
            tracing::debug_span!(
                concat!("store.", stringify!($method)),
                otel.kind = "client",
                db.system.name = match $self {
                    AnyStore::Memory(_) => "memory",
                    AnyStore::Redis(_) => "redis",
                },
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        tracing::Instrument::instrument(
            async {
                let started = Instant::now();
                let result = match $self {
                    AnyStore::Memory(s) => s.$method($($arg),*).await,
                    AnyStore::Redis(s) => s.$method($($arg),*).await,
                };
                store_call(stringify!($method), started, &result);
                if result.is_err() {
                    tracing::Span::current().record("otel.status_code", "error");
                }
                result
            },
            span,
        )
        .await
    }};
}

pub mod memory;
pub mod redis;

use std::time::{Duration, Instant};

use crate::auth::model::{
    AttemptGate, AuditEvent, EndOutcome, LockState, LockoutSettings, OpenOutcome, RecordVersion,
    ReplaceOutcome, RotateOutcome, Session, UserRecord, VersionedUser,
};
use crate::auth::store::AuthStore;
use crate::ratelimit::policy::PolicyOverride;
use crate::ratelimit::store::{
    BatchOutcome, LimitRequest, OverrideSnapshot, RateLimitStore, StoreError,
};
use crate::telemetry::metrics::{STORE_DURATION, STORE_ERRORS};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// The store chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// In-process, for a single replica.
    Memory(std::sync::Arc<MemoryStore>),
    /// Redis or Redis Cluster, shared by replicas.
    Redis(RedisStore),
}

impl RateLimitStore for AnyStore {
    async fn decide(&self, batch: &[LimitRequest]) -> Result<BatchOutcome, StoreError> {
        delegate!(self, decide(batch))
    }

    async fn set_override(&self, policy: &PolicyOverride) -> Result<(), StoreError> {
        delegate!(self, set_override(policy))
    }

    async fn delete_override(
        &self,
        tenant: &str,
        resource: Option<&str>,
    ) -> Result<bool, StoreError> {
        delegate!(self, delete_override(tenant, resource))
    }

    async fn load_overrides(
        &self,
        known: Option<u64>,
    ) -> Result<Option<OverrideSnapshot>, StoreError> {
        delegate!(self, load_overrides(known))
    }

    async fn reset_counters(&self, key: &str, with_children: bool) -> Result<u64, StoreError> {
        delegate!(self, reset_counters(key, with_children))
    }

    fn is_remote(&self) -> bool {
        match self {
            Self::Memory(s) => s.is_remote(),
            Self::Redis(s) => s.is_remote(),
        }
    }
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

    async fn get_user_versioned(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<VersionedUser>, StoreError> {
        delegate!(self, get_user_versioned(tenant, user_id))
    }

    async fn replace_user(
        &self,
        expected: &RecordVersion,
        user: &UserRecord,
    ) -> Result<ReplaceOutcome, StoreError> {
        delegate!(self, replace_user(expected, user))
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

    async fn open_session(
        &self,
        session: &Session,
        password_hash: &str,
    ) -> Result<OpenOutcome, StoreError> {
        delegate!(self, open_session(session, password_hash))
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
        grace: Duration,
    ) -> Result<RotateOutcome, StoreError> {
        delegate!(
            self,
            rotate_refresh(
                tenant,
                session_id,
                presented_hash,
                new_hash,
                now_unix,
                idle_timeout,
                grace
            )
        )
    }

    async fn end_session(
        &self,
        tenant: &str,
        session_id: &str,
        presented_hash: &str,
    ) -> Result<EndOutcome, StoreError> {
        delegate!(self, end_session(tenant, session_id, presented_hash))
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

    async fn revocations_dropped_until_ms(&self) -> Result<u64, StoreError> {
        delegate!(self, revocations_dropped_until_ms())
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

/// Records one store call: its latency and, when it failed, the error's kind.
fn store_call<T>(op: &'static str, started: Instant, result: &Result<T, StoreError>) {
    metrics::histogram!(STORE_DURATION, "op" => op).record(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        let kind = if e.transient {
            "transient"
        } else {
            "permanent"
        };
        metrics::counter!(STORE_ERRORS, "op" => op, "kind" => kind).increment(1);
    }
}
