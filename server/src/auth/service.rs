//! The authentication core over any store: logins with lockout and throttling, access-token
//! verification with revocation, refresh rotation, logout and password changes, each recorded
//! as an audit event. Knows neither tonic nor Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::audit::{self, CallContext, PendingAudit};
use super::model::{AttemptGate, AuditEvent, LockoutSettings, RotateOutcome, Session, UserRecord};
use super::password::{
    HashError, NewPasswordError, PasswordHasher, PasswordPolicy, PolicyViolation, Secret, Verified,
};
use super::store::{AuthStore, REVOCATIONS_BATCH, StoreError};
use super::tokens::{
    AccessClaims, IssueRequest, IssueSettings, ReloadingKeyRing, TokenError, VerifyExpectations,
};
use crate::clock::unix_time;
use crate::keys::hex;
use crate::keys::{self, InvalidId};
use crate::periodic::{OutageMessages, run_every};
use crate::ratelimit::policy::Limit;
use crate::ratelimit::store::RateLimitStore;
use crate::ratelimit::{Limiter, RateLimitError};
use crate::telemetry::metrics::{LOCKOUTS, TOKEN_VERIFICATIONS};

/// The only scope of a token issued while the password must be changed.
pub const PASSWORD_CHANGE_SCOPE: &str = "password:change";
/// The scope of an ordinary access token.
pub const API_SCOPE: &str = "api";
/// Clock leeway for `exp`/`nbf`: the most the tokens module honours.
const LEEWAY: Duration = Duration::from_secs(60);

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
    /// Keys the username hash used as lockout subject and in audit events, so neither reveals
    /// usernames nor can be precomputed from a list of them. `None`: the store's shared
    /// `username-hash` secret, fetched on first use, so every replica hashes alike.
    pub subject_key: Option<Zeroizing<[u8; 32]>>,
}

/// The login throttles.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Per (tenant, client IP): slows one source guessing many accounts.
    pub per_ip: Limit,
    /// Per tenant: caps what a distributed guesser can make a tenant cost.
    pub per_tenant: Limit,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("session_idle", &self.session_idle)
            .field("session_lifetime", &self.session_lifetime)
            .field("lockout", &self.lockout)
            .field("reveal_lockout", &self.reveal_lockout)
            .field("default_policy", &self.default_policy)
            .field("tenant_policies", &self.tenant_policies)
            .field("login_limits", &self.login_limits)
            .field("audit_retention_days", &self.audit_retention_days)
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

/// Why an authentication call failed. Messages never carry a password, token or hash.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the request.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Unknown user, wrong password, or (unless revealed) a locked account: one answer for all.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The account is locked (only with `reveal_lockout`).
    #[error("account locked")]
    AccountLocked {
        /// When a retry may succeed; `None` until an admin unlocks.
        retry_after: Option<Duration>,
    },
    /// Too many logins from this client or for this tenant; retry after the hint.
    #[error("too many login attempts")]
    Throttled {
        /// When a retry may be admitted.
        retry_after: Duration,
    },
    /// Password hashing is at capacity; retry after the hint.
    #[error("password hashing is overloaded")]
    Overloaded {
        /// A hint for the retry.
        retry_after: Duration,
    },
    /// The new password breaks the policy.
    #[error("{field}: {violation}")]
    WeakPassword {
        /// The request field that held the password.
        field: &'static str,
        /// The rule that failed.
        violation: PolicyViolation,
    },
    /// The new password equals the current one.
    #[error("new_password: must differ from the current password")]
    PasswordReused,
    /// The access token is not valid.
    #[error("invalid access token: {}", .0.reason())]
    InvalidToken(TokenError),
    /// The token's scope does not allow the call.
    #[error("the token's scope does not allow this call")]
    InsufficientScope,
    /// The session was revoked or has expired.
    #[error("session ended")]
    SessionEnded,
    /// An already-used refresh token was presented: the session is now revoked.
    #[error("session ended")]
    RefreshTokenReused,
    /// The username is taken in this tenant.
    #[error("username already exists in this tenant")]
    UsernameTaken,
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a broken record (logged where it happened).
    #[error("internal error")]
    Internal,
}

impl From<InvalidId> for AuthError {
    fn from(e: InvalidId) -> Self {
        Self::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            other => {
                tracing::error!(error = %other, "password hashing failed");
                Self::Internal
            }
        }
    }
}

impl From<RateLimitError> for AuthError {
    fn from(e: RateLimitError) -> Self {
        match e {
            RateLimitError::InvalidArgument { field, reason } => {
                Self::InvalidArgument { field, reason }
            }
            RateLimitError::StoreUnavailable(e) | RateLimitError::Store(e) => Self::Store(e),
        }
    }
}

impl AuthError {
    /// The error a new password's problem means, for the request field `field`.
    fn new_password(field: &'static str, e: NewPasswordError) -> Self {
        match e {
            NewPasswordError::Policy(violation) => Self::WeakPassword { field, violation },
            NewPasswordError::Hash(h) => h.into(),
        }
    }
}

/// A login request.
#[derive(Debug)]
pub struct LoginInput<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The username.
    pub username: &'a str,
    /// The password, compared exactly as sent.
    pub password: &'a Secret,
    /// The end user's address, for throttling, the session record and the audit log.
    pub client_ip: &'a str,
}

/// Tokens handed out by a login or a refresh.
pub struct Tokens {
    /// The signed access token.
    pub access_token: String,
    /// The opaque refresh token (single use).
    pub refresh_token: Zeroizing<String>,
    /// The access token's lifetime.
    pub expires_in: Duration,
    /// True when the password must be changed first (the token only has that scope).
    pub password_change_required: bool,
    /// The user.
    pub user_id: String,
    /// The session.
    pub session_id: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_in", &self.expires_in)
            .field("password_change_required", &self.password_change_required)
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
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
struct RevocationCache {
    /// Session id → (tenant, Unix second after which no token of that session can be valid).
    /// Keyed by the id alone so a lookup borrows the token's `sid` without allocating; ids are
    /// 128 random bits chosen by us, and the tenant is compared on a hit.
    revoked: DashMap<String, (String, u64)>,
    /// Where the next poll of the feed continues.
    cursor: tokio::sync::Mutex<Option<String>>,
}

/// The authentication core.
#[derive(Debug)]
pub struct Authenticator<S> {
    /// Users, lockouts, sessions, revocations, audit events.
    pub(super) store: S,
    /// Argon2id under a bounded semaphore.
    pub(super) hasher: PasswordHasher,
    /// Signing and verification keys; reloaded when the key-set file changes.
    keys: Arc<ReloadingKeyRing>,
    /// Lifetimes, lockout, policy.
    pub(super) settings: AuthSettings,
    /// Revoked sessions, for token verification without a store call.
    revocations: RevocationCache,
    /// The rate limiter the login throttles run on (the same store's counters).
    throttle: Option<Arc<Limiter<S>>>,
    /// The username-hash key in force (see [`AuthSettings::subject_key`]).
    subject_key: tokio::sync::OnceCell<Zeroizing<[u8; 32]>>,
}

/// The name of the store-wide secret that keys username hashes.
const SUBJECT_KEY_NAME: &str = "username-hash";

fn unix_now() -> u64 {
    unix_time().as_secs()
}

fn unix_now_ms() -> u64 {
    u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX)
}

/// `n` random bytes, base64url: ids (16 bytes) and refresh secrets (32 bytes).
pub(super) fn random_token(n: usize) -> Result<String, AuthError> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Internal)?;
    Ok(B64URL.encode(&*bytes))
}

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// A refresh token names its session so it can be found: `<tenant b64>.<session id>.<secret>`.
/// Only the SHA-256 of the secret is stored.
fn refresh_token(tenant: &str, session_id: &str, secret: &str) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{}.{session_id}.{secret}",
        B64URL.encode(tenant.as_bytes())
    ))
}

/// Splits a refresh token into (tenant, session id, secret); `None` when malformed.
fn parse_refresh_token(token: &str) -> Option<(String, &str, &str)> {
    let mut parts = token.splitn(3, '.');
    let tenant = B64URL.decode(parts.next()?).ok()?;
    let tenant = String::from_utf8(tenant).ok()?;
    let (sid, secret) = (parts.next()?, parts.next()?);
    (!sid.is_empty() && secret.len() >= 43).then_some((tenant, sid, secret))
}

/// The (tenant, session id) a refresh token names, or INVALID_ARGUMENT on `refresh_token`.
fn refresh_target(token: &str) -> Result<(String, &str, &str), AuthError> {
    let parsed = parse_refresh_token(token).ok_or_else(|| AuthError::InvalidArgument {
        field: "refresh_token".into(),
        reason: "is malformed".into(),
    })?;
    keys::validate_id("refresh_token", &parsed.0, true)?;
    Ok(parsed)
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
            subject_key: tokio::sync::OnceCell::new_with(settings.subject_key.clone()),
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

    /// The lockout subject (and audit name) of a username: a keyed hash, so unknown users are
    /// counted like known ones and no username is stored in clear outside its record.
    pub async fn subject(&self, tenant: &str, username: &str) -> Result<String, AuthError> {
        let key = self
            .subject_key
            .get_or_try_init(|| async {
                let mut candidate = Zeroizing::new([0u8; 32]);
                getrandom::fill(candidate.as_mut_slice()).map_err(|_| AuthError::Internal)?;
                let shared = self
                    .store
                    .shared_secret(SUBJECT_KEY_NAME, &candidate)
                    .await?;
                Ok::<_, AuthError>(Zeroizing::new(shared))
            })
            .await?;
        let mut h = Sha256::new();
        h.update(key.as_slice());
        h.update((tenant.len() as u64).to_be_bytes());
        h.update(tenant.as_bytes());
        h.update(username.as_bytes());
        Ok(hex(&h.finalize()))
    }

    /// Writes a finished event to the log and to the tenant's stream. A store failure is
    /// logged, not returned: the call's own outcome stands, and the log line keeps the event.
    pub async fn record(&self, event: AuditEvent) {
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

    /// Creates a user; the password must meet the tenant's policy. Not audited: admins go
    /// through [`admin_create_user`](Self::admin_create_user).
    pub(crate) async fn create_user(&self, new: NewUser<'_>) -> Result<UserRecord, AuthError> {
        keys::validate_id("tenant_id", new.tenant, true)?;
        keys::validate_id("username", new.username, true)?;
        for (i, role) in new.roles.iter().enumerate() {
            keys::validate_id(&format!("roles[{i}]"), role, true)?;
        }
        let hash = self
            .hasher
            .hash_new(
                self.settings.policy_for(new.tenant),
                new.password,
                &[new.username, new.tenant],
            )
            .await
            .map_err(|e| AuthError::new_password("initial_password", e))?;
        let user = UserRecord {
            user_id: random_token(16)?,
            tenant_id: new.tenant.to_owned(),
            username: new.username.to_owned(),
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

    /// Verifies a password and opens a session; audited as `login`.
    ///
    /// Throttles come first, then the attempt is counted before the password is evaluated, so
    /// parallel guesses across replicas cannot get more than the lockout allows. An unknown
    /// user and a locked account cost one dummy verify through the same queue, so they look
    /// like a wrong password in status, message and timing.
    pub async fn login(
        &self,
        input: LoginInput<'_>,
        ctx: &CallContext,
    ) -> Result<Tokens, AuthError> {
        let ctx = CallContext {
            client_ip: input.client_ip.to_owned(),
            ..ctx.clone()
        };
        self.audited(&ctx, input.tenant, "login", async |audit| {
            keys::validate_id("tenant_id", input.tenant, true)?;
            keys::validate_id("username", input.username, true)?;
            keys::validate_id("client_ip", input.client_ip, false)?;
            let subject = self.subject(input.tenant, input.username).await?;
            audit.event.username_hash = subject.clone();
            self.check_login_throttles(input.tenant, input.client_ip)
                .await?;
            self.login_verified(&input, &subject, audit).await
        })
        .await
    }

    async fn check_login_throttles(&self, tenant: &str, client_ip: &str) -> Result<(), AuthError> {
        let Some(limiter) = &self.throttle else {
            return Ok(());
        };
        let limits = self.settings.login_limits;
        // Without a client IP there is no source to throttle; the tenant limit still applies.
        let per_ip = (!client_ip.is_empty()).then(|| {
            (
                keys::throttle_key(tenant, "login-ip", client_ip),
                limits.per_ip,
            )
        });
        let per_tenant = Some((keys::throttle_key(tenant, "login", ""), limits.per_tenant));
        for (key, limit) in [per_ip, per_tenant].into_iter().flatten() {
            if let Some(retry_after) = limiter.throttle(key, limit).await? {
                return Err(AuthError::Throttled { retry_after });
            }
        }
        Ok(())
    }

    async fn login_verified(
        &self,
        input: &LoginInput<'_>,
        subject: &str,
        audit: &mut PendingAudit,
    ) -> Result<Tokens, AuthError> {
        let user = self.store.find_user(input.tenant, input.username).await?;
        if let Some(u) = &user {
            audit.user(&u.user_id);
        }
        let verified = self
            .verify_counted(input.tenant, subject, input.password, user.as_ref(), audit)
            .await?;
        let Some(mut user) = user else {
            // verify_counted never matches without a user.
            return Err(AuthError::Internal);
        };
        if verified.needs_rehash {
            // Upgrade to the configured parameters while the password is at hand; a failure
            // here must not fail the login, the next one tries again.
            match self.hasher.hash(input.password).await {
                Ok(hash) => user.password_hash = hash,
                Err(e) => tracing::warn!(error = %e, "password rehash skipped"),
            }
        }
        user.last_login_unix = Some(unix_now());
        self.store.update_user(&user).await?;
        self.open_session(&user, input.client_ip).await
    }

    /// Checks `password` against `user` (a dummy hash when `None`, so an unknown user costs
    /// the same) under the lockout of `subject`; `Ok` only on a match.
    ///
    /// The hashing permit is taken first, so an overloaded hasher refuses before anything is
    /// counted (a user retrying under load is never locked out by the load). Then the attempt
    /// is counted, atomically in the store, before the password is evaluated: parallel
    /// guesses on any number of replicas cannot get more evaluations than the lockout allows.
    /// A locked subject costs a dummy verify too, so it answers in the same time.
    async fn verify_counted(
        &self,
        tenant: &str,
        subject: &str,
        password: &Secret,
        user: Option<&UserRecord>,
        audit: &mut PendingAudit,
    ) -> Result<Verified, AuthError> {
        let lockout = &self.settings.lockout;
        let permit = self.hasher.reserve().await?;
        let gate = self
            .store
            .begin_attempt(tenant, subject, lockout, unix_now_ms())
            .await?;
        if let AttemptGate::Locked { retry_after } = gate {
            self.hasher.verify_reserved(permit, password, None).await?;
            audit.outcome = Some("locked");
            return Err(if self.settings.reveal_lockout {
                AuthError::AccountLocked { retry_after }
            } else {
                AuthError::InvalidCredentials
            });
        }
        let phc = user.map(|u| u.password_hash.as_str());
        let verified = self.hasher.verify_reserved(permit, password, phc).await?;
        let locked_now = self
            .store
            .finish_attempt(tenant, subject, verified.matches, lockout, unix_now_ms())
            .await?;
        if locked_now {
            metrics::counter!(LOCKOUTS).increment(1);
            // The moment of the lock is an event of its own, for alerting.
            let mut lock = PendingAudit::new(&audit.context(), tenant, "account.lock");
            lock.event.user_id = audit.event.user_id.clone();
            lock.event.username_hash = subject.to_owned();
            self.record(lock.finish_as("success")).await;
        }
        if verified.matches {
            Ok(verified)
        } else {
            Err(AuthError::InvalidCredentials)
        }
    }

    async fn open_session(&self, user: &UserRecord, client_ip: &str) -> Result<Tokens, AuthError> {
        let now = unix_now();
        let secret = Zeroizing::new(random_token(32)?);
        let session = Session {
            session_id: random_token(16)?,
            tenant_id: user.tenant_id.clone(),
            user_id: user.user_id.clone(),
            refresh_hash: sha256_hex(&secret),
            created_at_unix: now,
            last_used_unix: now,
            idle_expires_unix: now + self.settings.session_idle.as_secs(),
            absolute_expires_unix: now + self.settings.session_lifetime.as_secs(),
            client_ip: client_ip.to_owned(),
        };
        if !self.store.create_session(&session).await? {
            // 128 random bits collided: treat as a bug rather than retry silently.
            return Err(AuthError::Internal);
        }
        self.tokens_for(user, &session, &secret)
    }

    fn tokens_for(
        &self,
        user: &UserRecord,
        session: &Session,
        secret: &str,
    ) -> Result<Tokens, AuthError> {
        let scopes = if user.must_change_password {
            vec![PASSWORD_CHANGE_SCOPE.to_owned()]
        } else {
            vec![API_SCOPE.to_owned()]
        };
        // An access token never outlives its session.
        let left = session.expires_unix().saturating_sub(unix_now());
        let ttl = self
            .settings
            .access_ttl
            .min(Duration::from_secs(left.max(1)));
        let issued = self
            .keys
            .current()
            .issue(
                &IssueRequest {
                    user_id: user.user_id.clone(),
                    tenant_id: user.tenant_id.clone(),
                    session_id: session.session_id.clone(),
                    roles: user.roles.clone(),
                    scopes,
                },
                &IssueSettings {
                    issuer: &self.settings.issuer,
                    audience: &self.settings.audience,
                    ttl,
                    now: SystemTime::now(),
                },
            )
            .map_err(|e| {
                tracing::error!(reason = e.reason(), "cannot issue an access token");
                AuthError::Internal
            })?;
        Ok(Tokens {
            access_token: issued.token,
            refresh_token: refresh_token(&user.tenant_id, &session.session_id, secret),
            expires_in: ttl,
            password_change_required: user.must_change_password,
            user_id: user.user_id.clone(),
            session_id: session.session_id.clone(),
        })
    }

    /// Verifies an access token: signature, lifetime, issuer, audience, type, the expected
    /// tenant when given, and that its session was not revoked (as of the last feed poll).
    pub fn verify(&self, token: &str, tenant: Option<&str>) -> Result<AccessClaims, AuthError> {
        self.verify_keyed(token, tenant).map(|(claims, _)| claims)
    }

    /// [`verify`](Self::verify), also returning the kid of the key that verified the token.
    pub fn verify_keyed(
        &self,
        token: &str,
        tenant: Option<&str>,
    ) -> Result<(AccessClaims, String), AuthError> {
        let verified = self.verify_unrecorded(token, tenant);
        let outcome = match &verified {
            Ok(_) => "valid",
            Err(AuthError::InvalidToken(problem)) => problem.reason(),
            Err(AuthError::SessionEnded) => "revoked",
            Err(_) => "error",
        };
        metrics::counter!(TOKEN_VERIFICATIONS, "outcome" => outcome).increment(1);
        verified
    }

    fn verify_unrecorded(
        &self,
        token: &str,
        tenant: Option<&str>,
    ) -> Result<(AccessClaims, String), AuthError> {
        let ring = self.keys.current();
        let (claims, key) = ring
            .verify_keyed(
                token,
                &VerifyExpectations {
                    issuer: &self.settings.issuer,
                    audience: &self.settings.audience,
                    leeway: LEEWAY,
                    now: SystemTime::now(),
                },
            )
            .map_err(AuthError::InvalidToken)?;
        if tenant.is_some_and(|t| t != claims.tid) {
            return Err(AuthError::InvalidToken(TokenError::WrongAudience));
        }
        let revoked = self
            .revocations
            .revoked
            .get(claims.sid.as_str())
            .is_some_and(|entry| entry.0 == claims.tid);
        if revoked {
            return Err(AuthError::SessionEnded);
        }
        Ok((claims, key.kid().to_owned()))
    }

    /// Reads new revocations from the store's feed; every replica calls this often (the
    /// interval bounds how long a revoked session's access tokens keep verifying elsewhere).
    pub async fn poll_revocations(&self) -> Result<usize, AuthError> {
        let mut cursor = self.revocations.cursor.lock().await;
        let (revoked, next) = self.store.revocations_since(cursor.as_deref()).await?;
        // Remembered until every token the session could still hold has expired.
        let forget_after = unix_now() + self.settings.access_ttl.as_secs() + LEEWAY.as_secs();
        let count = revoked.len();
        for (tenant, sid) in revoked {
            self.revocations.revoked.insert(sid, (tenant, forget_after));
        }
        *cursor = Some(next);
        let now = unix_now();
        self.revocations
            .revoked
            .retain(|_, (_, until)| *until > now);
        Ok(count)
    }

    /// Polls the revocation feed every `every` until `stop` resolves, draining full batches
    /// at once; a store outage is logged when it starts and when it ends.
    pub async fn poll_revocations_every(
        self: Arc<Self>,
        every: Duration,
        stop: impl Future<Output = ()>,
    ) {
        let messages = OutageMessages {
            failing: "cannot read the revocation feed; sessions revoked through other \
                      replicas may verify here until it recovers",
            recovered: "revocation feed reachable again",
        };
        run_every(Duration::ZERO, every, stop, messages, || async {
            while self.poll_revocations().await? >= REVOCATIONS_BATCH {}
            Ok::<(), AuthError>(())
        })
        .await;
    }

    /// Exchanges a refresh token for new tokens; the refresh token rotates. Presenting an
    /// earlier one again ends the whole session (it was stolen or replayed). Audited as
    /// `refresh`.
    pub async fn refresh(&self, token: &str, ctx: &CallContext) -> Result<Tokens, AuthError> {
        let tenant = parse_refresh_token(token).map(|t| t.0).unwrap_or_default();
        self.audited(ctx, &tenant, "refresh", async |audit| {
            let (tenant, sid, secret) = refresh_target(token)?;
            let new_secret = Zeroizing::new(random_token(32)?);
            let outcome = self
                .store
                .rotate_refresh(
                    &tenant,
                    sid,
                    &sha256_hex(secret),
                    &sha256_hex(&new_secret),
                    unix_now(),
                    self.settings.session_idle,
                )
                .await?;
            let session = match outcome {
                RotateOutcome::Rotated(session) => session,
                RotateOutcome::Reused => return Err(AuthError::RefreshTokenReused),
                RotateOutcome::NotFound => return Err(AuthError::SessionEnded),
            };
            audit.user(&session.user_id);
            let user = self
                .store
                .get_user(&tenant, &session.user_id)
                .await?
                .ok_or(AuthError::SessionEnded)?;
            self.tokens_for(&user, &session, &new_secret)
        })
        .await
    }

    /// Ends the session named by either token; false when it had already ended. Audited as
    /// `logout`.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        access_token: Option<&str>,
        ctx: &CallContext,
    ) -> Result<bool, AuthError> {
        let target = match (refresh_token, access_token) {
            (Some(r), _) => {
                refresh_target(r).map(|(tenant, sid, _)| (tenant, sid.to_owned(), None))
            }
            (None, Some(a)) => self
                .verify(a, None)
                .map(|claims| (claims.tid, claims.sid, Some(claims.sub))),
            (None, None) => Err(AuthError::InvalidArgument {
                field: "refresh_token".into(),
                reason: "or access_token is required".into(),
            }),
        };
        let tenant = target.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        self.audited(ctx, &tenant, "logout", async |audit| {
            let (tenant, sid, user) = target?;
            if let Some(user) = &user {
                audit.user(user);
            }
            let revoked = self.store.revoke_session(&tenant, &sid).await?;
            if !revoked {
                audit.outcome = Some("not_found");
            }
            Ok(revoked)
        })
        .await
    }

    /// Changes the caller's password: needs the current one, applies the tenant's policy,
    /// refuses the same password, clears the must-change flag and ends the user's other
    /// sessions. Returns the number of sessions ended. Audited as `password.change`.
    pub async fn change_password(
        &self,
        access_token: &str,
        current: &Secret,
        new: &Secret,
        ctx: &CallContext,
    ) -> Result<u32, AuthError> {
        let claims = self.verify(access_token, None);
        let tenant = claims.as_ref().map(|c| c.tid.clone()).unwrap_or_default();
        self.audited(ctx, &tenant, "password.change", async |audit| {
            let claims = claims?;
            audit.user(&claims.sub);
            if !claims.has_scope(PASSWORD_CHANGE_SCOPE) && !claims.has_scope(API_SCOPE) {
                return Err(AuthError::InsufficientScope);
            }
            let mut user = self
                .store
                .get_user(&claims.tid, &claims.sub)
                .await?
                .ok_or(AuthError::SessionEnded)?;
            let subject = self.subject(&user.tenant_id, &user.username).await?;
            audit.event.username_hash = subject.clone();
            // Guesses of the current password count towards the lockout like login guesses,
            // so a stolen access token cannot be used to brute-force it.
            self.verify_counted(&claims.tid, &subject, current, Some(&user), audit)
                .await?;
            if current.expose() == new.expose() {
                return Err(AuthError::PasswordReused);
            }
            user.password_hash = self
                .hasher
                .hash_new(
                    self.settings.policy_for(&claims.tid),
                    new,
                    &[&user.username, &claims.tid],
                )
                .await
                .map_err(|e| AuthError::new_password("new_password", e))?;
            user.must_change_password = false;
            if !self.store.update_user(&user).await? {
                return Err(AuthError::SessionEnded);
            }
            Ok(self
                .store
                .revoke_user_sessions(&claims.tid, &claims.sub, Some(&claims.sid))
                .await?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::Argon2Params;
    use crate::auth::tokens::{Key, KeyRing, KeyState};
    use crate::store::MemoryStore;

    /// Cheap Argon2 so tests run fast; the policy and flow are what is under test.
    fn authenticator(lockout: LockoutSettings, reveal_lockout: bool) -> Authenticator<MemoryStore> {
        authenticator_with_queue(lockout, reveal_lockout, 2, Duration::from_secs(5))
    }

    fn authenticator_with_queue(
        lockout: LockoutSettings,
        reveal_lockout: bool,
        permits: usize,
        queue_timeout: Duration,
    ) -> Authenticator<MemoryStore> {
        let hasher = PasswordHasher::new(
            Argon2Params::new(1024, 1, 1).unwrap(),
            permits,
            queue_timeout,
        )
        .unwrap();
        let key = Key::hs256("k1", &[7u8; 32], KeyState::Active).unwrap();
        let keys = Arc::new(ReloadingKeyRing::fixed(KeyRing::new(vec![key]).unwrap()));
        let settings = AuthSettings {
            issuer: "portcullis".into(),
            audience: "portcullis".into(),
            access_ttl: Duration::from_secs(1800),
            session_idle: Duration::from_secs(3600),
            session_lifetime: Duration::from_secs(86_400),
            lockout,
            reveal_lockout,
            default_policy: PasswordPolicy::Guide,
            tenant_policies: HashMap::new(),
            login_limits: LoginLimits {
                per_ip: Limit::new(1000, Duration::from_secs(60), 1000).unwrap(),
                per_tenant: Limit::new(1000, Duration::from_secs(60), 1000).unwrap(),
            },
            audit_retention_days: 1,
            subject_key: Some(Zeroizing::new([9u8; 32])),
        };
        Authenticator::new(MemoryStore::new(), hasher, keys, settings)
    }

    fn ctx() -> CallContext {
        CallContext::default()
    }

    const GOOD: &str = "Vq7#mLx2!pRz9w";
    const OTHER: &str = "Kd4$hTy8@nBc3e";

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_owned())
    }

    async fn user(a: &Authenticator<MemoryStore>, must_change: bool) -> UserRecord {
        a.create_user(NewUser {
            tenant: "acme",
            username: "alice",
            password: &secret(GOOD),
            roles: vec!["reader".into()],
            must_change_password: must_change,
        })
        .await
        .unwrap()
    }

    async fn login(a: &Authenticator<MemoryStore>, password: &str) -> Result<Tokens, AuthError> {
        a.login(
            LoginInput {
                tenant: "acme",
                username: "alice",
                password: &secret(password),
                client_ip: "10.0.0.1",
            },
            &ctx(),
        )
        .await
    }

    #[tokio::test]
    async fn login_then_verify_refresh_and_logout() {
        let a = authenticator(LockoutSettings::default(), false);
        let u = user(&a, false).await;
        let t = login(&a, GOOD).await.unwrap();
        assert!(!t.password_change_required);
        let claims = a.verify(&t.access_token, Some("acme")).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.sid.as_str()),
            (u.user_id.as_str(), t.session_id.as_str())
        );
        assert!(claims.has_scope(API_SCOPE));
        assert!(matches!(
            a.verify(&t.access_token, Some("globex")),
            Err(AuthError::InvalidToken(_))
        ));

        let r = a.refresh(&t.refresh_token, &ctx()).await.unwrap();
        assert_eq!(r.session_id, t.session_id);
        assert_ne!(
            *r.refresh_token, *t.refresh_token,
            "the refresh token rotates"
        );
        assert!(
            a.logout(Some(&r.refresh_token), None, &ctx())
                .await
                .unwrap()
        );
        a.poll_revocations().await.unwrap();
        assert!(matches!(
            a.verify(&r.access_token, None),
            Err(AuthError::SessionEnded)
        ));
        assert!(matches!(
            a.refresh(&r.refresh_token, &ctx()).await,
            Err(AuthError::SessionEnded)
        ));
    }

    #[tokio::test]
    async fn a_reused_refresh_token_ends_the_session() {
        let a = authenticator(LockoutSettings::default(), false);
        user(&a, false).await;
        let t = login(&a, GOOD).await.unwrap();
        let r = a.refresh(&t.refresh_token, &ctx()).await.unwrap();
        assert!(matches!(
            a.refresh(&t.refresh_token, &ctx()).await,
            Err(AuthError::RefreshTokenReused)
        ));
        assert!(
            matches!(
                a.refresh(&r.refresh_token, &ctx()).await,
                Err(AuthError::SessionEnded)
            ),
            "the thief's use killed the legitimate one too"
        );
        a.poll_revocations().await.unwrap();
        assert!(matches!(
            a.verify(&r.access_token, None),
            Err(AuthError::SessionEnded)
        ));
    }

    #[tokio::test]
    async fn unknown_user_wrong_password_and_lock_look_the_same() {
        let a = authenticator(LockoutSettings::default(), false);
        user(&a, false).await;
        let unknown = a
            .login(
                LoginInput {
                    tenant: "acme",
                    username: "mallory",
                    password: &secret(GOOD),
                    client_ip: "",
                },
                &ctx(),
            )
            .await
            .unwrap_err();
        assert!(matches!(unknown, AuthError::InvalidCredentials));
        for _ in 0..5 {
            assert!(matches!(
                login(&a, OTHER).await,
                Err(AuthError::InvalidCredentials)
            ));
        }
        // Locked now: even the right password gets the same answer.
        let locked = login(&a, GOOD).await.unwrap_err();
        assert!(matches!(locked, AuthError::InvalidCredentials));
        assert_eq!(locked.to_string(), unknown.to_string());
    }

    #[tokio::test]
    async fn parallel_guesses_evaluate_at_most_the_lockout_limit() {
        let a = Arc::new(authenticator(LockoutSettings::default(), true));
        user(&a, false).await;
        let guesses = (0..20).map(|_| {
            let a = a.clone();
            tokio::spawn(async move { login(&a, OTHER).await })
        });
        let mut evaluated = 0;
        for g in guesses {
            match g.await.unwrap() {
                Err(AuthError::InvalidCredentials) => evaluated += 1,
                Err(AuthError::AccountLocked { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(evaluated, 5, "only five passwords were checked");
        assert!(matches!(
            login(&a, GOOD).await,
            Err(AuthError::AccountLocked {
                retry_after: Some(_)
            })
        ));
    }

    #[tokio::test]
    async fn first_login_must_change_the_password() {
        let a = authenticator(LockoutSettings::default(), false);
        user(&a, true).await;
        let t = login(&a, GOOD).await.unwrap();
        assert!(t.password_change_required);
        let claims = a.verify(&t.access_token, None).unwrap();
        assert_eq!(claims.scope, PASSWORD_CHANGE_SCOPE);
        let other_session = login(&a, GOOD).await.unwrap();

        let weak = a
            .change_password(&t.access_token, &secret(GOOD), &secret("short"), &ctx())
            .await;
        assert!(matches!(weak, Err(AuthError::WeakPassword { .. })));
        let same = a
            .change_password(&t.access_token, &secret(GOOD), &secret(GOOD), &ctx())
            .await;
        assert!(matches!(same, Err(AuthError::PasswordReused)));
        let wrong = a
            .change_password(&t.access_token, &secret(OTHER), &secret(OTHER), &ctx())
            .await;
        assert!(matches!(wrong, Err(AuthError::InvalidCredentials)));
        assert_eq!(
            a.change_password(&t.access_token, &secret(GOOD), &secret(OTHER), &ctx())
                .await
                .unwrap(),
            1
        );

        a.poll_revocations().await.unwrap();
        assert!(matches!(
            a.verify(&other_session.access_token, None),
            Err(AuthError::SessionEnded)
        ));
        assert!(
            a.verify(&t.access_token, None).is_ok(),
            "the caller's own session stays"
        );
        let after = login(&a, OTHER).await.unwrap();
        assert!(!after.password_change_required);
        assert_eq!(
            a.verify(&after.access_token, None).unwrap().scope,
            API_SCOPE
        );
    }

    #[tokio::test]
    async fn usernames_are_unique_per_tenant_and_policy_applies() {
        let a = authenticator(LockoutSettings::default(), false);
        user(&a, false).await;
        let again = a
            .create_user(NewUser {
                tenant: "acme",
                username: "alice",
                password: &secret(OTHER),
                roles: vec![],
                must_change_password: true,
            })
            .await;
        assert!(matches!(again, Err(AuthError::UsernameTaken)));
        let weak = a
            .create_user(NewUser {
                tenant: "acme",
                username: "bob",
                password: &secret("Password123!"),
                roles: vec![],
                must_change_password: true,
            })
            .await;
        assert!(matches!(weak, Err(AuthError::WeakPassword { .. })));
        let bad = a
            .create_user(NewUser {
                tenant: "",
                username: "bob",
                password: &secret(OTHER),
                roles: vec![],
                must_change_password: true,
            })
            .await;
        assert!(
            matches!(bad, Err(AuthError::InvalidArgument { field, .. }) if field == "tenant_id")
        );
    }

    #[test]
    fn refresh_tokens_parse_back_and_reject_garbage() {
        let t = refresh_token("acme}:{x", "sid1", &"s".repeat(43));
        let (tenant, sid, secret) = parse_refresh_token(&t).unwrap();
        assert_eq!(
            (tenant.as_str(), sid, secret.len()),
            ("acme}:{x", "sid1", 43)
        );
        for bad in [
            "",
            "a.b",
            "!!.sid.ssssssssssssssssssssssssssssssssssssssssss",
            "YWNtZQ..x",
            "YWNtZQ.sid.short",
        ] {
            assert!(parse_refresh_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let a = authenticator(LockoutSettings::default(), false);
        let shown = format!("{:?}", a.settings);
        assert!(shown.contains("<redacted>") && !shown.contains("9, 9"));
    }

    #[tokio::test]
    async fn an_overloaded_hasher_refuses_without_counting_an_attempt() {
        let a = authenticator_with_queue(
            LockoutSettings::default(),
            true,
            1,
            Duration::from_millis(5),
        );
        user(&a, false).await;
        let busy = a.hasher.reserve().await.unwrap();
        for _ in 0..10 {
            assert!(matches!(
                login(&a, GOOD).await,
                Err(AuthError::Overloaded { .. })
            ));
        }
        drop(busy);
        assert!(
            login(&a, GOOD).await.is_ok(),
            "ten refusals under load did not lock the account"
        );
    }

    #[tokio::test]
    async fn wrong_current_passwords_count_towards_the_lockout() {
        let a = authenticator(LockoutSettings::default(), true);
        user(&a, false).await;
        let t = login(&a, GOOD).await.unwrap();
        for _ in 0..5 {
            let r = a
                .change_password(&t.access_token, &secret(OTHER), &secret(OTHER), &ctx())
                .await;
            assert!(matches!(r, Err(AuthError::InvalidCredentials)), "{r:?}");
        }
        let r = a
            .change_password(&t.access_token, &secret(GOOD), &secret(OTHER), &ctx())
            .await;
        assert!(matches!(r, Err(AuthError::AccountLocked { .. })), "{r:?}");
        assert!(matches!(
            login(&a, GOOD).await,
            Err(AuthError::AccountLocked { .. })
        ));
    }
}
