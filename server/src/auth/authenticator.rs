//! The authentication core: its settings, the [`Authenticator`] over a store, the username
//! hash that keys lockouts and audit events, audited calls and user creation. Logins are in
//! `login.rs`, sessions and tokens in `sessions.rs`, administration in `users.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::admin_failures::AdminFailures;
use super::audit::{self, CallContext, PendingAudit};
use super::audit_counting::{AuditCounter, CountingLimits};
use super::client_ip::InFlightByNetwork;
use super::error::AuthError;
use super::model::{AuditEvent, LockoutSettings, ReplaceOutcome, UserRecord, VersionedUser};
use super::password::{PasswordHasher, PasswordPolicy, Secret};
use super::security_events::SecurityFeed;
use super::store::{AuthStore, StoreError};
use super::tokens::ReloadingKeyRing;
use super::username::{lookup_name, normalise_username};
use crate::clock::unix_time;
use crate::keys::{self, hex};
use crate::periodic::{OutageMessages, run_every};
use crate::ratelimit::Limiter;
use crate::ratelimit::policy::Limit;
use crate::ratelimit::store::RateLimitStore;

/// What the authentication core needs to know.
#[derive(Clone)]
pub struct AuthSettings {
    /// `iss` of issued tokens, checked on verify.
    pub issuer: String,
    /// `aud` of issued tokens, checked on verify.
    pub audience: String,
    /// Access-token lifetime (the guide: 30 minutes).
    pub access_ttl: Duration,
    /// A session ends when not refreshed for this long.
    pub session_idle: Duration,
    /// A session ends this long after the login, refreshed or not.
    pub session_lifetime: Duration,
    /// How long the refresh token rotated away last may be presented again for the same
    /// successor (a retry whose answer was lost) instead of counting as a reuse; zero: never.
    pub refresh_grace: Duration,
    /// Failed logins before a lock, the counting window, and the lock's length.
    pub lockout: LockoutSettings,
    /// When true a locked account says so (`AccountLocked`); by default it looks exactly like
    /// a wrong password, against user enumeration.
    pub reveal_lockout: bool,
    /// The rules a new password must meet, unless the tenant has its own.
    pub default_policy: PasswordPolicy,
    /// Tenants with their own password rules.
    pub tenant_policies: HashMap<String, PasswordPolicy>,
    /// Logins per (tenant, client IP) and per tenant, checked before any hashing.
    pub login_limits: LoginLimits,
    /// Audit events older than this are dropped from the store.
    pub audit_retention_days: u32,
    /// How audit events that prove nothing are counted instead of stored one by one (and how
    /// long failed admin authentications are tallied before the log gives their count).
    pub audit_counting: CountingLimits,
    /// Failed admin authentications per peer address (IPv6: per /64), across replicas, before
    /// its further admin calls are refused without comparing their token.
    pub admin_failure_limit: Limit,
    /// Keys the username hash used as lockout subject and in audit events, so neither reveals
    /// usernames nor can be precomputed from a list of them. `None`: the store's shared
    /// `username-hash` secret, fetched on first use, so every replica hashes alike.
    pub subject_key: Option<Zeroizing<[u8; 32]>>,
}

/// The login throttles, all decided before any hashing.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Per (tenant, client IP): slows one source guessing many accounts of a tenant.
    pub per_ip: Limit,
    /// Per client IP across all tenants: a source naming a new tenant on every call is still
    /// one source.
    pub per_ip_all_tenants: Limit,
    /// Per tenant: caps what a distributed guesser can make a tenant cost.
    pub per_tenant: Limit,
    /// Logins one client IP may have queued for or holding a hashing permit at once, so no
    /// source holds more than its share of the hasher.
    pub hashing_per_ip: usize,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("session_idle", &self.session_idle)
            .field("session_lifetime", &self.session_lifetime)
            .field("refresh_grace", &self.refresh_grace)
            .field("lockout", &self.lockout)
            .field("reveal_lockout", &self.reveal_lockout)
            .field("default_policy", &self.default_policy)
            .field("tenant_policies", &self.tenant_policies)
            .field("login_limits", &self.login_limits)
            .field("audit_retention_days", &self.audit_retention_days)
            .field("audit_counting", &self.audit_counting)
            .field("admin_failure_limit", &self.admin_failure_limit)
            .field("subject_key", &"<redacted>")
            .finish()
    }
}

impl AuthSettings {
    /// The password rules of `tenant`.
    pub fn policy_for(&self, tenant: &str) -> PasswordPolicy {
        self.tenant_policies
            .get(tenant)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

/// A new user.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The login name, unique within the tenant.
    pub username: &'a str,
    /// The initial password; must meet the policy.
    pub password: &'a Secret,
    /// Roles copied into access tokens.
    pub roles: Vec<String>,
    /// Whether the first login must change the password.
    pub must_change_password: bool,
}

/// Sessions known to be revoked, fed from the store's revocation feed, so verifying an access
/// token needs no store round trip yet a revocation reaches every replica within one poll.
#[derive(Debug, Default)]
pub(super) struct RevocationCache {
    /// Session id → (tenant, Unix second after which no token of that session can be valid).
    /// Keyed by the id alone so a lookup borrows the token's `sid` without allocating; ids are
    /// 128 random bits chosen by us, and the tenant is compared on a hit.
    pub(super) revoked: DashMap<String, (String, u64)>,
    /// Where the next poll of the feed continues.
    pub(super) cursor: tokio::sync::Mutex<Option<String>>,
    /// The feed has been read to its end once, from its oldest entry. Until then a session
    /// revoked through another replica (or before this one started) is unknown here, so no
    /// token is verified.
    pub(super) loaded: AtomicBool,
    /// The polls' revocations and key changes, fanned out to subscribers.
    pub(super) feed: SecurityFeed,
}

/// The authentication core.
#[derive(Debug)]
pub struct Authenticator<S> {
    /// Users, lockouts, sessions, revocations, audit events.
    pub(super) store: S,
    /// Argon2id under a bounded semaphore.
    pub(super) hasher: PasswordHasher,
    /// Signing and verification keys; reloaded when the key-set file changes.
    pub(super) keys: Arc<ReloadingKeyRing>,
    /// Lifetimes, lockout, policy.
    pub(super) settings: AuthSettings,
    /// Revoked sessions, for token verification without a store call.
    pub(super) revocations: RevocationCache,
    /// The rate limiter the login throttles run on (the same store's counters).
    pub(super) throttle: Option<Arc<Limiter<S>>>,
    /// Audit events that prove nothing, being counted.
    pub(super) counted_audit: AuditCounter,
    /// Logins in flight per client network, for [`LoginLimits::hashing_per_ip`].
    pub(super) hashing_by_ip: InFlightByNetwork,
    /// Peers refused without comparing after failed admin authentications, and the log's
    /// tally of them.
    pub(super) admin_failures: AdminFailures,
    /// The username-hash key in force (see [`AuthSettings::subject_key`]).
    subject_key: tokio::sync::OnceCell<Zeroizing<[u8; 32]>>,
    /// The store's shared key of refresh successors (see `sessions::successor_secret`).
    pub(super) successor_key: tokio::sync::OnceCell<Zeroizing<[u8; 32]>>,
}

/// Compare-and-set rounds a user record update makes before giving up. A round is one read and
/// one conditional write, with no hashing in between, so only a storm of writes to one user
/// exhausts them; the caller then gets a retryable error rather than a lost update.
const RECORD_WRITE_ROUNDS: usize = 8;

/// The name of the store-wide secret that keys username hashes.
const SUBJECT_KEY_NAME: &str = "username-hash";

pub(super) fn unix_now() -> u64 {
    unix_time().as_secs()
}

pub(super) fn unix_now_ms() -> u64 {
    u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX)
}

/// `n` random bytes, base64url: ids (16 bytes) and refresh secrets (32 bytes).
pub(super) fn random_token(n: usize) -> Result<String, AuthError> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Internal)?;
    Ok(B64URL.encode(&*bytes))
}

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
    /// A core over `store` with these keys and settings, without login throttles.
    pub fn new(
        store: S,
        hasher: PasswordHasher,
        keys: Arc<ReloadingKeyRing>,
        settings: AuthSettings,
    ) -> Self {
        Self {
            store,
            hasher,
            keys,
            revocations: RevocationCache::default(),
            throttle: None,
            hashing_by_ip: InFlightByNetwork::default(),
            counted_audit: AuditCounter::new(settings.audit_counting),
            admin_failures: AdminFailures::new(settings.audit_counting.window),
            subject_key: tokio::sync::OnceCell::new_with(settings.subject_key.clone()),
            successor_key: tokio::sync::OnceCell::new(),
            settings,
        }
    }

    /// Throttles logins with `limiter` (per `settings.login_limits`).
    pub fn with_login_throttle(mut self, limiter: Arc<Limiter<S>>) -> Self {
        self.throttle = Some(limiter);
        self
    }

    /// The keys in force.
    pub fn keys(&self) -> &Arc<ReloadingKeyRing> {
        &self.keys
    }

    /// The password hasher (for its queue depth and bounds).
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// The store-wide secret `name`, fetched into `cell` on first use (a random candidate
    /// becomes it when the store has none yet).
    pub(super) async fn shared_key<'a>(
        &self,
        cell: &'a tokio::sync::OnceCell<Zeroizing<[u8; 32]>>,
        name: &str,
    ) -> Result<&'a Zeroizing<[u8; 32]>, AuthError> {
        cell.get_or_try_init(|| async {
            let mut candidate = Zeroizing::new([0u8; 32]);
            getrandom::fill(candidate.as_mut_slice()).map_err(|_| AuthError::Internal)?;
            let shared = self.store.shared_secret(name, &candidate).await?;
            Ok::<_, AuthError>(Zeroizing::new(shared))
        })
        .await
    }

    /// The lockout subject (and audit name) of a username: a keyed hash, so unknown users are
    /// counted like known ones and no username is stored in clear outside its record. Taken of
    /// the normalised name, so every spelling of an account shares its lockout count (a name
    /// stored before normalisation that does not normalise is taken as it is).
    pub async fn subject(&self, tenant: &str, username: &str) -> Result<String, AuthError> {
        let username = normalise_username(username).unwrap_or_else(|_| username.to_owned());
        let key = self.shared_key(&self.subject_key, SUBJECT_KEY_NAME).await?;
        let mut h = Sha256::new();
        h.update(key.as_slice());
        h.update((tenant.len() as u64).to_be_bytes());
        h.update(tenant.as_bytes());
        h.update(username.as_bytes());
        Ok(hex(&h.finalize()))
    }

    /// The user a username names: the account under its normalised form or, for accounts
    /// stored before usernames were normalised, under exactly the name given (trimmed).
    pub(super) async fn find_by_username(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<UserRecord>, AuthError> {
        let name = lookup_name(username)?;
        if let Some(normalised) = &name.normalised {
            if let Some(user) = self.store.find_user(tenant, normalised).await? {
                return Ok(Some(user));
            }
            if *normalised == name.given {
                return Ok(None);
            }
        }
        Ok(self.store.find_user(tenant, &name.given).await?)
    }

    /// Writes a finished event to the log and to the tenant's stream. A store failure is
    /// logged, not returned: the call's own outcome stands, and the log line keeps the event.
    ///
    /// An event that proves nothing about any account (a failure any caller can repeat at
    /// will) is counted instead: the first of its kind in a window is written, the rest as one
    /// event with a count when the window ends (see `audit_counting`).
    pub async fn record(&self, event: AuditEvent) {
        if audit::proves_nothing(&event) {
            for counted in self.counted_audit.add(event) {
                self.write_audit(counted).await;
            }
        } else {
            self.write_audit(event).await;
        }
    }

    async fn write_audit(&self, event: AuditEvent) {
        audit::log(&event);
        if !audit::has_stream(&event) {
            return;
        }
        if let Err(e) = self
            .store
            .append_audit(&event, self.settings.audit_retention_days)
            .await
        {
            tracing::warn!(error = %e, action = %event.action, "audit event not stored");
        }
    }

    /// Writes the counted events of windows that have ended (and logs the tallies of failed
    /// admin authentications), every `every` until `stop`, then whatever is still counted.
    pub async fn write_counted_audit_every(
        self: Arc<Self>,
        every: Duration,
        stop: impl Future<Output = ()>,
    ) {
        let messages = OutageMessages {
            failing: "counted audit events could not be written",
            recovered: "counted audit events written again",
        };
        run_every(every, every, stop, messages, || async {
            let now_ms = u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX);
            for event in self.counted_audit.due(now_ms) {
                self.write_audit(event).await;
            }
            self.admin_failures.log_due(now_ms);
            Ok::<(), std::convert::Infallible>(())
        })
        .await;
        for event in self.counted_audit.drain() {
            self.write_audit(event).await;
        }
        self.admin_failures.log_all();
    }

    /// Runs `call` as the audited action `action` of `tenant`.
    pub(super) async fn audited<T>(
        &self,
        ctx: &CallContext,
        tenant: &str,
        action: &'static str,
        call: impl AsyncFnOnce(&mut PendingAudit) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let mut pending = PendingAudit::new(ctx, tenant, action);
        let result = call(&mut pending).await;
        self.record(pending.finish(&result)).await;
        result
    }

    /// Applies `change` to the user's current record and writes the result only if no other
    /// write came between the read and the write (compare-and-set on the record's version),
    /// reading again after a conflict: no write rests on a stale read. `change` says whether
    /// there is anything to write, or refuses. `Ok(None)`: the user no longer exists.
    pub(super) async fn modify_user(
        &self,
        tenant: &str,
        user_id: &str,
        mut change: impl FnMut(&mut UserRecord) -> Result<bool, AuthError>,
    ) -> Result<Option<UserRecord>, AuthError> {
        for _ in 0..RECORD_WRITE_ROUNDS {
            let Some(VersionedUser { mut user, version }) =
                self.store.get_user_versioned(tenant, user_id).await?
            else {
                return Ok(None);
            };
            if !change(&mut user)? {
                return Ok(Some(user));
            }
            match self.store.replace_user(&version, &user).await? {
                ReplaceOutcome::Replaced => return Ok(Some(user)),
                ReplaceOutcome::Gone => return Ok(None),
                ReplaceOutcome::Changed => {}
            }
        }
        Err(AuthError::Store(StoreError::transient(
            "the user record kept changing under concurrent writes",
        )))
    }

    /// Creates a user; the password must meet the tenant's policy. Not audited: admins go
    /// through [`admin_create_user`](Self::admin_create_user).
    pub async fn create_user(&self, new: NewUser<'_>) -> Result<UserRecord, AuthError> {
        keys::validate_id("tenant_id", new.tenant, true)?;
        let username = normalise_username(new.username)?;
        for (i, role) in new.roles.iter().enumerate() {
            keys::validate_id(&format!("roles[{i}]"), role, true)?;
        }
        let hash = self
            .hasher
            .hash_new(
                self.settings.policy_for(new.tenant),
                new.password,
                &[&username, new.tenant],
            )
            .await
            .map_err(|e| AuthError::new_password("initial_password", e))?;
        let user = UserRecord {
            user_id: random_token(16)?,
            tenant_id: new.tenant.to_owned(),
            username,
            password_hash: hash,
            roles: new.roles,
            must_change_password: new.must_change_password,
            created_at_unix: unix_now(),
            last_login_unix: None,
        };
        if !self.store.create_user(&user).await? {
            return Err(AuthError::UsernameTaken);
        }
        Ok(user)
    }
}
