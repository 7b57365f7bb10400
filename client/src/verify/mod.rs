//! A local access-token verifier (`feature = "verify"`): checks tokens in-process against the
//! published key set, hears revocations and key changes from `WatchSecurityEvents`, caches
//! verified tokens until they expire, and falls back to the `VerifyToken` RPC whenever its view
//! may be stale.
//!
//! Staleness is bounded: the server sends a heartbeat about every 500 ms while its view of the
//! revocation feed is current; when none has arrived for [`VerifierBuilder::staleness_bound`]
//! (2 s by default) every verification goes to the server until the stream is back. So a
//! session revoked through any replica stops verifying here within about one feed poll plus
//! one heartbeat, and never later than the bound plus one poll.
//!
//! Local verification needs the server to sign with EdDSA keys (`--jwt-key-set`): their
//! public halves are published. A server signing with an HS256 secret publishes nothing, and
//! every call then goes to the server, unless the application opts in to holding the secret
//! itself with [`VerifierBuilder::shared_hs256_secret`]. That secret lets its holder mint
//! tokens for every user of every tenant; share it only with services trusted that far.

mod follow;
mod remote;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use self::token::KeySet;

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user_id: String,
    /// The user's tenant.
    pub tenant_id: String,
    /// The session the token belongs to.
    pub session_id: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// What the token may be used for.
    pub scopes: Vec<String>,
    /// When the token expires.
    pub expires_at: SystemTime,
    /// The key that signed it.
    pub key_id: String,
}

impl Principal {
    /// True when the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// True when the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a token is not valid in itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Not a well-formed JWT of ours.
    #[error("malformed token")]
    Malformed,
    /// A header member that would let the token name its own key, or a critical extension.
    #[error("forbidden header member")]
    ForbiddenHeader,
    /// Its `kid` names no key in force.
    #[error("unknown signing key")]
    UnknownKey,
    /// Its `alg` is not the algorithm of the key its `kid` names.
    #[error("algorithm does not match the key")]
    AlgorithmMismatch,
    /// Not an access token (`typ` is not `at+jwt`).
    #[error("not an access token")]
    WrongType,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Another issuer's token.
    #[error("wrong issuer")]
    WrongIssuer,
    /// Another audience's token (or, answered by the server, another tenant's).
    #[error("wrong audience")]
    WrongAudience,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Not valid yet.
    #[error("not yet valid")]
    NotYetValid,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is not valid (HTTP 401, `invalid_token`).
    #[error("invalid token: {0}")]
    Invalid(TokenProblem),
    /// Valid, but issued in another tenant than the one the request addresses (401).
    #[error("the token belongs to another tenant")]
    WrongTenant,
    /// Its session was revoked or has ended (401).
    #[error("session ended")]
    SessionEnded,
    /// It lacks a required scope (HTTP 403, `insufficient_scope`).
    #[error("insufficient scope")]
    InsufficientScope,
    /// Its user lacks a required role (403).
    #[error("insufficient role")]
    InsufficientRole,
    /// Neither this process nor the server could decide (HTTP 503): no key set yet and the
    /// server unreachable, or the server's answer was an error.
    #[error("cannot verify now: {0}")]
    Unavailable(String),
}

/// What a request demands of its token besides validity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demands<'a> {
    /// The tenant the request addresses; the token must belong to it.
    pub tenant: Option<&'a str>,
    /// Scopes the token must all carry.
    pub scopes: &'a [&'a str],
    /// Roles the user must all hold.
    pub roles: &'a [&'a str],
}

/// The scope a first-login token carries alone, good for nothing but changing the password.
const PASSWORD_CHANGE_SCOPE: &str = "password:change";

impl Demands<'_> {
    /// The server's rule: a token whose only scope is `password:change` meets no demand but
    /// that scope; otherwise every demanded scope and role must be there.
    fn check(&self, p: &Principal) -> Result<(), VerifyError> {
        if self.tenant.is_some_and(|t| t != p.tenant_id) {
            return Err(VerifyError::WrongTenant);
        }
        let first_login_only =
            !p.scopes.is_empty() && p.scopes.iter().all(|s| s == PASSWORD_CHANGE_SCOPE);
        if first_login_only && !self.scopes.contains(&PASSWORD_CHANGE_SCOPE) {
            return Err(VerifyError::InsufficientScope);
        }
        if !self.scopes.iter().all(|s| p.has_scope(s)) {
            return Err(VerifyError::InsufficientScope);
        }
        if !self.roles.iter().all(|r| p.has_role(r)) {
            return Err(VerifyError::InsufficientRole);
        }
        Ok(())
    }
}

/// Where tokens are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-process; through the server only while the stream is stale.
    Local,
    /// Always through the server's `VerifyToken`, remembering an accepted token for
    /// `cache_for` when set (a revocation can then take that long to be seen here).
    Remote {
        /// How long an accepted token is taken without asking again.
        cache_for: Option<Duration>,
    },
    /// In-process, and through the server when this process cannot decide (a `kid` it does
    /// not know yet, no key set) or its view is stale.
    LocalElseRemote,
}

/// Settings of a [`Verifier`].
pub struct VerifierBuilder {
    /// The channel to Portcullis (a balanced one spreads the stream and RPCs over replicas).
    channel: Channel,
    /// The service credential `WatchSecurityEvents` needs.
    watch_token: Option<Zeroizing<String>>,
    /// See [`Mode`].
    mode: Mode,
    /// Silence on the stream after which the local view counts as stale.
    staleness_bound: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (the server allows 60 s).
    leeway: Duration,
    /// The most verified tokens remembered.
    cache_entries: usize,
    /// Deadline of a `VerifyToken` call.
    rpc_timeout: Duration,
    /// An HS256 secret to verify with locally (explicit opt-in), with its kid.
    hs256: Option<(String, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("mode", &self.mode)
            .field("staleness_bound", &self.staleness_bound)
            .field("leeway", &self.leeway)
            .field("cache_entries", &self.cache_entries)
            .field(
                "watch_token",
                &self.watch_token.as_ref().map(|_| "<redacted>"),
            )
            .field("hs256", &self.hs256.as_ref().map(|(kid, _)| kid))
            .finish()
    }
}

impl VerifierBuilder {
    /// The credential for `WatchSecurityEvents` (the server's watch or admin token).
    pub fn watch_token(mut self, token: impl Into<String>) -> Self {
        self.watch_token = Some(Zeroizing::new(token.into()));
        self
    }

    /// Where tokens are verified (default [`Mode::Local`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Silence on the stream after which verification goes to the server (default 2 s).
    pub fn staleness_bound(mut self, bound: Duration) -> Self {
        self.staleness_bound = bound;
        self
    }

    /// Clock skew allowed (default 60 s, as the server; at most 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(Duration::from_secs(60));
        self
    }

    /// The most verified tokens remembered (default 100,000).
    pub fn cache_entries(mut self, entries: usize) -> Self {
        self.cache_entries = entries;
        self
    }

    /// Deadline of a `VerifyToken` call (default 500 ms).
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Verifies HS256 tokens locally with the server's shared secret (`JWT_SECRET_KEY`).
    /// Whoever holds this secret can mint a token for any user of any tenant: opt in only
    /// for services trusted that far, and prefer EdDSA keys. Logged as a warning.
    pub fn shared_hs256_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        self.hs256 = Some((derive_kid(secret), Zeroizing::new(secret.to_vec())));
        self
    }

    /// Starts the verifier: a task follows `WatchSecurityEvents` (reconnecting with backoff)
    /// until the last clone of the verifier is dropped. Must be called within a Tokio runtime;
    /// touches no network itself.
    pub fn build(self) -> Verifier {
        if self.hs256.is_some() {
            tracing::warn!(
                "portcullis verifier holds the HS256 signing secret: this process can mint \
                 tokens for every tenant; prefer EdDSA keys and local verification from the JWKS"
            );
        }
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            keys: ArcSwapOption::empty(),
            revoked: DashMap::new(),
            cache: DashMap::new(),
            remote_cache: DashMap::new(),
            last_heartbeat_ms: AtomicU64::new(0),
            last_forget_ms: AtomicU64::new(0),
            hs256: self.hs256,
        });
        let task = (!matches!(self.mode, Mode::Remote { .. })).then(|| {
            tokio::spawn(follow::follow(
                Arc::downgrade(&shared),
                self.channel.clone(),
                self.watch_token,
            ))
            .abort_handle()
        });
        Verifier {
            inner: Arc::new(Inner {
                shared,
                channel: self.channel,
                mode: self.mode,
                staleness_bound: self.staleness_bound,
                leeway: self.leeway,
                cache_entries: self.cache_entries,
                rpc_timeout: self.rpc_timeout,
                _task: TaskGuard(task),
            }),
        }
    }
}

impl crate::Portcullis {
    /// A verifier over this handle's balanced channel (its stream and fallback calls spread
    /// over the live replicas) with the handle's watch token.
    pub fn verifier(&self) -> VerifierBuilder {
        let builder = Verifier::builder(self.channel());
        match self.watch_token() {
            Some(token) => builder.watch_token(token),
            None => builder,
        }
    }
}

/// The kid the server derives for an environment HS256 secret.
fn derive_kid(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"portcullis jwt kid v1\0")
        .chain_update(secret)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// State the stream task writes and verifications read.
struct Shared {
    /// Instants are kept as milliseconds since this, to fit an atomic.
    epoch: Instant,
    /// The key set in force, once heard.
    keys: ArcSwapOption<KeySet>,
    /// Revoked session id → (tenant, Unix second after which it no longer matters).
    revoked: DashMap<String, (String, u64)>,
    /// Token → its principal, for tokens verified here; cleared when the keys change.
    cache: DashMap<String, Principal>,
    /// Token → (principal, until) in [`Mode::Remote`] with a cache.
    remote_cache: DashMap<String, (Principal, Instant)>,
    /// When the last heartbeat came, ms since `epoch`; 0 before the first.
    last_heartbeat_ms: AtomicU64,
    /// When expired revocations and tokens were last dropped, ms since `epoch`.
    last_forget_ms: AtomicU64,
    /// The opted-in HS256 secret and its kid.
    hs256: Option<(String, Zeroizing<Vec<u8>>)>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// Time since the last heartbeat; `None` before the first.
    fn silence(&self) -> Option<Duration> {
        match self.last_heartbeat_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(self.now_ms().saturating_sub(at))),
        }
    }

    fn is_revoked(&self, p: &Principal) -> bool {
        self.revoked
            .get(&p.session_id)
            .is_some_and(|entry| entry.0 == p.tenant_id)
    }
}

/// Aborts the stream task when the verifier goes.
struct TaskGuard(Option<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    channel: Channel,
    mode: Mode,
    staleness_bound: Duration,
    leeway: Duration,
    cache_entries: usize,
    rpc_timeout: Duration,
    _task: TaskGuard,
}

/// Verifies access tokens; cheap to clone (clones share the key set, caches and stream).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mode", &self.inner.mode)
            .field("current", &self.is_current())
            .field("cached", &self.inner.shared.cache.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier over `channel` (see [`VerifierBuilder`] for the settings).
    pub fn builder(channel: Channel) -> VerifierBuilder {
        VerifierBuilder {
            channel,
            watch_token: None,
            mode: Mode::Local,
            staleness_bound: Duration::from_secs(2),
            leeway: Duration::from_secs(60),
            cache_entries: 100_000,
            rpc_timeout: Duration::from_millis(500),
            hs256: None,
        }
    }

    /// True while the stream is fresh (a heartbeat within the staleness bound) and a key set
    /// is known: verifications are then local.
    pub fn is_current(&self) -> bool {
        let shared = &self.inner.shared;
        shared.keys.load().is_some()
            && shared
                .silence()
                .is_some_and(|s| s <= self.inner.staleness_bound)
    }

    /// Time since the last heartbeat (`None` before the first): how stale the local view of
    /// revocations may be.
    pub fn staleness(&self) -> Option<Duration> {
        self.inner.shared.silence()
    }

    /// Verifies `token` and checks `demands`.
    pub async fn verify(
        &self,
        token: &str,
        demands: &Demands<'_>,
    ) -> Result<Principal, VerifyError> {
        let verified = match self.inner.mode {
            Mode::Remote { cache_for } => self.remote(token, demands, cache_for).await,
            Mode::Local | Mode::LocalElseRemote if !self.is_current() => {
                self.remote(token, demands, None).await
            }
            Mode::Local => self.local(token, demands),
            Mode::LocalElseRemote => match self.local(token, demands) {
                Err(VerifyError::Invalid(TokenProblem::UnknownKey)) => {
                    self.remote(token, demands, None).await
                }
                decided => decided,
            },
        };
        record(&verified);
        verified
    }

    /// Verifies in-process; the caller checked that the view is current.
    fn local(&self, token: &str, demands: &Demands<'_>) -> Result<Principal, VerifyError> {
        let shared = &self.inner.shared;
        let now = SystemTime::now();
        if let Some(hit) = shared.cache.get(token) {
            let principal = hit.value();
            if now < principal.expires_at + self.inner.leeway {
                metrics::counter!(VERIFIER_CACHE, "result" => "hit").increment(1);
                if shared.is_revoked(principal) {
                    return Err(VerifyError::SessionEnded);
                }
                demands.check(principal)?;
                return Ok(principal.clone());
            }
        }
        metrics::counter!(VERIFIER_CACHE, "result" => "miss").increment(1);
        let keys = shared
            .keys
            .load_full()
            .ok_or_else(|| VerifyError::Unavailable("no key set heard yet".into()))?;
        let principal = keys
            .verify(token, now, self.inner.leeway)
            .map_err(VerifyError::Invalid)?;
        if shared.is_revoked(&principal) {
            return Err(VerifyError::SessionEnded);
        }
        if shared.cache.len() >= self.inner.cache_entries {
            shared.cache.retain(|_, p| now < p.expires_at);
            if shared.cache.len() >= self.inner.cache_entries {
                shared.cache.clear();
            }
        }
        // Only while the same key set is in force: a key change clears the cache, and an
        // entry made from the old set after that must not survive it.
        if shared
            .keys
            .load()
            .as_ref()
            .is_some_and(|k| Arc::ptr_eq(k, &keys))
        {
            shared.cache.insert(token.to_owned(), principal.clone());
        }
        demands.check(&principal)?;
        Ok(principal)
    }

    async fn remote(
        &self,
        token: &str,
        demands: &Demands<'_>,
        cache_for: Option<Duration>,
    ) -> Result<Principal, VerifyError> {
        let shared = &self.inner.shared;
        if cache_for.is_some()
            && let Some(hit) = shared.remote_cache.get(token)
        {
            let (principal, until) = hit.value();
            if Instant::now() < *until && SystemTime::now() < principal.expires_at {
                metrics::counter!(VERIFIER_CACHE, "result" => "hit").increment(1);
                demands.check(principal)?;
                return Ok(principal.clone());
            }
        }
        // Asked without demands so the answer can be cached for any demand, then checked here.
        let principal =
            remote::verify_token(&self.inner.channel, token, self.inner.rpc_timeout).await?;
        if let Some(ttl) = cache_for {
            if shared.remote_cache.len() >= self.inner.cache_entries {
                let now = Instant::now();
                shared.remote_cache.retain(|_, (_, until)| now < *until);
                if shared.remote_cache.len() >= self.inner.cache_entries {
                    shared.remote_cache.clear();
                }
            }
            shared
                .remote_cache
                .insert(token.to_owned(), (principal.clone(), Instant::now() + ttl));
        }
        demands.check(&principal)?;
        Ok(principal)
    }
}

/// `portcullis_client_verifications_total{path, outcome}`.
pub const VERIFICATIONS: &str = "portcullis_client_verifications_total";
/// `portcullis_client_verifier_cache_total{result}`: hits and misses of the verified-token
/// cache.
pub const VERIFIER_CACHE: &str = "portcullis_client_verifier_cache_total";
/// `portcullis_client_verifier_staleness_seconds`: time since the last heartbeat, set as each
/// event arrives and by the stream task while it waits.
pub const VERIFIER_STALENESS: &str = "portcullis_client_verifier_staleness_seconds";

fn record(verified: &Result<Principal, VerifyError>) {
    let outcome = match verified {
        Ok(_) => "valid",
        Err(VerifyError::Invalid(_)) => "invalid",
        Err(VerifyError::WrongTenant) => "wrong_tenant",
        Err(VerifyError::SessionEnded) => "session_ended",
        Err(VerifyError::InsufficientScope) => "insufficient_scope",
        Err(VerifyError::InsufficientRole) => "insufficient_role",
        Err(VerifyError::Unavailable(_)) => "unavailable",
    };
    metrics::counter!(VERIFICATIONS, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests;
