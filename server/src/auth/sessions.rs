//! Sessions: opening one with its tokens, verifying access tokens against the revocation
//! cache (fed by the store's feed), refresh-token rotation with reuse detection (and an optional
//! grace window for retries), logout and password changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::audit::CallContext;
use super::authenticator::{Authenticator, random_token, unix_now, unix_now_ms};
use super::error::AuthError;
use super::model::{EndOutcome, OpenOutcome, RotateOutcome, Session, UserRecord};
use super::password::Secret;
use super::security_events::{FeedPoll, RevokedSession};
use super::store::{AuthStore, REVOCATIONS_BATCH, StoreError};
use super::token_demands::{API_SCOPE, PASSWORD_CHANGE_SCOPE, TokenDemands};
use super::tokens::{AccessClaims, IssueRequest, IssueSettings, TokenError, VerifyExpectations};
use crate::keys::{self, hex};
use crate::periodic::{OutageMessages, run_every};
use crate::ratelimit::store::RateLimitStore;
use crate::telemetry::metrics::TOKEN_VERIFICATIONS;

/// The name of the store-wide secret that keys refresh successors.
const SUCCESSOR_KEY_NAME: &str = "refresh-successor";

/// Clock leeway for `exp`/`nbf`: the most the tokens module honours.
const LEEWAY: Duration = Duration::from_secs(60);
/// The retry hint of a verification refused before the revocation feed was read: about a
/// poll or two of the feed.
const UNLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Tokens handed out by a login or a refresh.
pub struct Tokens {
    /// The signed access token.
    pub access_token: String,
    /// The opaque refresh token (single use, but for the grace window of `refresh`).
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

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Counts a verification by its outcome.
fn record_verification<T>(verified: &Result<T, AuthError>) {
    let outcome = match verified {
        Ok(_) => "valid",
        Err(AuthError::InvalidToken(problem)) => problem.reason(),
        Err(AuthError::SessionEnded) => "revoked",
        Err(AuthError::RevocationsNotLoaded { .. }) => "revocations_not_loaded",
        Err(AuthError::InsufficientScope) => "insufficient_scope",
        Err(AuthError::InsufficientRole) => "insufficient_role",
        Err(_) => "error",
    };
    metrics::counter!(TOKEN_VERIFICATIONS, "outcome" => outcome).increment(1);
}

/// The session a logout ends, and what shows the caller may end it.
struct LogoutTarget {
    tenant: String,
    session_id: String,
    proof: SessionProof,
}

/// What entitles a caller to end a session.
enum SessionProof {
    /// A verified access token of this user (its signature is the proof).
    AccessTokenOf(String),
    /// The hash of a refresh token's secret, for the store to check against the session's.
    RefreshHash(String),
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
    pub(super) async fn open_session(
        &self,
        user: &UserRecord,
        client_ip: &str,
    ) -> Result<Tokens, AuthError> {
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
        match self
            .store
            .open_session(&session, &user.password_hash)
            .await?
        {
            OpenOutcome::Opened => {}
            // Deleted, or the password changed, since the login verified it: as if unknown.
            OpenOutcome::UserGone | OpenOutcome::PasswordChanged => {
                return Err(AuthError::InvalidCredentials);
            }
            // 128 random bits collided: treat as a bug rather than retry silently.
            OpenOutcome::IdTaken => return Err(AuthError::Internal),
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
    /// Any scope will do: the calls of the core that take a token check the scope they need.
    pub fn verify(&self, token: &str, tenant: Option<&str>) -> Result<AccessClaims, AuthError> {
        let verified = self.verify_unrecorded(token, tenant);
        record_verification(&verified);
        verified.map(|(claims, _)| claims)
    }

    /// [`verify`](Self::verify) for a service that asks whether to let the token's user in:
    /// the token must also meet `demands` (and a first-login token is refused unless its
    /// scope is demanded). Returns the claims and the kid of the key that verified the token.
    pub fn verify_demanding(
        &self,
        token: &str,
        tenant: Option<&str>,
        demands: &TokenDemands<'_>,
    ) -> Result<(AccessClaims, String), AuthError> {
        let verified = self
            .verify_unrecorded(token, tenant)
            .and_then(|(claims, kid)| demands.check(&claims).map(|()| (claims, kid)));
        record_verification(&verified);
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
        // A bad token is refused for what it is; a good one waits for the feed, which alone
        // can say whether its session was revoked before this replica started.
        if !self.revocations.loaded.load(Ordering::Acquire) {
            return Err(AuthError::RevocationsNotLoaded {
                retry_after: UNLOADED_RETRY_AFTER,
            });
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

    /// Reads new revocations from the store's feed, one batch; every replica calls this often
    /// (the interval bounds how long a revoked session's access tokens keep verifying
    /// elsewhere). The first poll starts at the feed's oldest entry; the first batch that is
    /// not full marks the feed loaded, if the feed has dropped no revocation of a token that
    /// may still be valid, and only then are tokens verified.
    pub async fn poll_revocations(&self) -> Result<usize, AuthError> {
        let mut cursor = self.revocations.cursor.lock().await;
        let (revoked, next) = self.store.revocations_since(cursor.as_deref()).await?;
        // Remembered until every token the session could still hold has expired.
        let forget_after = unix_now() + self.settings.access_ttl.as_secs() + LEEWAY.as_secs();
        let count = revoked.len();
        let sessions = revoked
            .into_iter()
            .map(|(tenant, session_id)| RevokedSession {
                tenant,
                session_id,
                until_unix: forget_after,
            })
            .collect();
        self.revocations.feed.record_poll(
            FeedPoll {
                from: cursor.as_deref(),
                cursor: &next,
                sessions,
                ring: self.keys.current(),
                now_unix_ms: unix_now_ms(),
            },
            &self.revocations.revoked,
            || self.published_keys(),
        );
        *cursor = Some(next);
        let now = unix_now();
        self.revocations
            .revoked
            .retain(|_, (_, until)| *until > now);
        if count < REVOCATIONS_BATCH && !self.revocations.loaded.load(Ordering::Acquire) {
            self.check_feed_covers_live_tokens().await?;
            self.revocations.loaded.store(true, Ordering::Release);
        }
        Ok(count)
    }

    /// Whether the feed, read from its start, still holds every revocation whose session's
    /// access tokens may be valid: it drops its oldest entries to stay bounded, and a dropped
    /// revocation younger than a token's lifetime leaves this replica blind to that session
    /// until the tokens have expired.
    async fn check_feed_covers_live_tokens(&self) -> Result<(), AuthError> {
        let dropped_ms = self.store.revocations_dropped_until_ms().await?;
        let live_ms =
            u64::try_from((self.settings.access_ttl + LEEWAY).as_millis()).unwrap_or(u64::MAX);
        if dropped_ms.saturating_add(live_ms) > unix_now_ms() {
            return Err(AuthError::Store(StoreError::transient(
                "the revocation feed has dropped revocations of access tokens that may still be \
                 valid; verifying no token until they have expired",
            )));
        }
        Ok(())
    }

    /// Reads the revocation feed up to its end, a batch at a time.
    pub async fn load_revocations(&self) -> Result<(), AuthError> {
        while self.poll_revocations().await? >= REVOCATIONS_BATCH {}
        Ok(())
    }

    /// Whether the revocation feed has been read to its end once (tokens are verified only
    /// then; a replica is not ready before).
    pub fn revocations_loaded(&self) -> bool {
        self.revocations.loaded.load(Ordering::Acquire)
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
                      replicas may verify here until it recovers (until it is first read, no \
                      token verifies here)",
            recovered: "revocation feed reachable again",
        };
        run_every(Duration::ZERO, every, stop, messages, || {
            self.load_revocations()
        })
        .await;
    }

    /// The refresh secret that replaces `presented`. Without a grace window, random. With one,
    /// HMAC-SHA256 of `presented` under the store's shared `refresh-successor` key: every
    /// replica can then hand a replayed refresh the successor it rotated to, and no secret is
    /// stored in clear.
    async fn successor_secret(&self, presented: &str) -> Result<Zeroizing<String>, AuthError> {
        if self.settings.refresh_grace.is_zero() {
            return Ok(Zeroizing::new(random_token(32)?));
        }
        let key = self
            .shared_key(&self.successor_key, SUCCESSOR_KEY_NAME)
            .await?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.as_slice()).map_err(|_| AuthError::Internal)?;
        mac.update(presented.as_bytes());
        let successor = Zeroizing::new(mac.finalize().into_bytes());
        Ok(Zeroizing::new(B64URL.encode(successor.as_slice())))
    }

    /// Exchanges a refresh token for new tokens; the refresh token rotates. Presenting an
    /// earlier one again ends the whole session (it was stolen or replayed), except the one
    /// rotated away last within `refresh_grace` of its rotation: that gets the same successor
    /// again (and a fresh access token), rotating and extending nothing. Audited as `refresh`
    /// (a replay within the window with outcome `replayed`).
    pub async fn refresh(&self, token: &str, ctx: &CallContext) -> Result<Tokens, AuthError> {
        let tenant = parse_refresh_token(token).map(|t| t.0).unwrap_or_default();
        self.audited(ctx, &tenant, "refresh", async |audit| {
            let (tenant, sid, secret) = refresh_target(token)?;
            let new_secret = self.successor_secret(secret).await?;
            let new_hash = sha256_hex(&new_secret);
            let outcome = self
                .store
                .rotate_refresh(
                    &tenant,
                    sid,
                    &sha256_hex(secret),
                    &new_hash,
                    unix_now(),
                    self.settings.session_idle,
                    self.settings.refresh_grace,
                )
                .await?;
            let (session, replayed) = match outcome {
                RotateOutcome::Rotated(session) => (session, false),
                // The successor is the session's current secret only if it was derived from
                // this one (a replica without the window rotates to a random one): otherwise
                // this replay cannot be answered and counts as the reuse it would have been.
                RotateOutcome::Replayed(session)
                    if bool::from(session.refresh_hash.as_bytes().ct_eq(new_hash.as_bytes())) =>
                {
                    (session, true)
                }
                RotateOutcome::Replayed(_) => {
                    self.store.revoke_session(&tenant, sid).await?;
                    return Err(AuthError::RefreshTokenReused);
                }
                RotateOutcome::Reused => return Err(AuthError::RefreshTokenReused),
                RotateOutcome::NotFound => return Err(AuthError::SessionEnded),
            };
            audit.user(&session.user_id);
            let user = self
                .store
                .get_user(&tenant, &session.user_id)
                .await?
                .ok_or(AuthError::SessionEnded)?;
            let tokens = self.tokens_for(&user, &session, &new_secret)?;
            if replayed {
                audit.outcome = Some("replayed");
            }
            Ok(tokens)
        })
        .await
    }

    /// Ends the session named by either token; false when it had already ended. Audited as
    /// `logout`.
    ///
    /// A refresh token must carry its session's secret, checked as [`refresh`](Self::refresh)
    /// checks it: the session id alone is no proof, since every access token shows it. A wrong
    /// secret ends nothing; an earlier one ends the session, as a reuse at refresh would.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        access_token: Option<&str>,
        ctx: &CallContext,
    ) -> Result<bool, AuthError> {
        let target = match (refresh_token, access_token) {
            (Some(r), _) => refresh_target(r).map(|(tenant, sid, secret)| LogoutTarget {
                tenant,
                session_id: sid.to_owned(),
                proof: SessionProof::RefreshHash(sha256_hex(secret)),
            }),
            (None, Some(a)) => self.verify(a, None).map(|claims| LogoutTarget {
                tenant: claims.tid,
                session_id: claims.sid,
                proof: SessionProof::AccessTokenOf(claims.sub),
            }),
            (None, None) => Err(AuthError::InvalidArgument {
                field: "refresh_token".into(),
                reason: "or access_token is required".into(),
            }),
        };
        let tenant = target
            .as_ref()
            .map(|t| t.tenant.clone())
            .unwrap_or_default();
        self.audited(ctx, &tenant, "logout", async |audit| {
            let target = target?;
            let ended = match &target.proof {
                SessionProof::AccessTokenOf(user) => {
                    audit.user(user);
                    self.store
                        .revoke_session(&target.tenant, &target.session_id)
                        .await?
                }
                SessionProof::RefreshHash(hash) => {
                    match self
                        .store
                        .end_session(&target.tenant, &target.session_id, hash)
                        .await?
                    {
                        EndOutcome::Ended => true,
                        EndOutcome::Reused => {
                            audit.outcome = Some("reused");
                            true
                        }
                        EndOutcome::NotFound => false,
                        EndOutcome::WrongSecret => return Err(AuthError::WrongRefreshSecret),
                    }
                }
            };
            if !ended {
                audit.outcome = Some("not_found");
            }
            Ok(ended)
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
            let user = self
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
            let new_hash = self
                .hasher
                .hash_new(
                    self.settings.policy_for(&claims.tid),
                    new,
                    &[&user.username, &claims.tid],
                )
                .await
                .map_err(|e| AuthError::new_password("new_password", e))?;
            // Written onto the record as it is now, and only while its hash is still the one
            // the current password was verified against: of two concurrent changes from the
            // same password, one wins and the other finds its current password stale.
            let verified_hash = &user.password_hash;
            self.modify_user(&claims.tid, &claims.sub, |u| {
                if u.password_hash != *verified_hash {
                    return Err(AuthError::InvalidCredentials);
                }
                u.password_hash.clone_from(&new_hash);
                u.must_change_password = false;
                Ok(true)
            })
            .await?
            .ok_or(AuthError::SessionEnded)?;
            // Sessions opened before the change (by logins that proved the old password
            // included) end now; later ones cannot open with the old hash.
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
}
