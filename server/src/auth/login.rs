//! Logins: throttles per client and per tenant, the attempt counted before its password is
//! verified (lockout across replicas), rehashing, and the session a success opens.

use std::time::Duration;

use super::audit::{CallContext, PendingAudit};
use super::authenticator::{Authenticator, unix_now, unix_now_ms};
use super::client_ip::{ClientIp, parse_client_ip};
use super::error::AuthError;
use super::model::{AttemptGate, UserRecord};
use super::password::{Secret, Verified};
use super::sessions::Tokens;
use super::store::AuthStore;
use super::username::lookup_name;
use crate::keys;
use crate::ratelimit::store::RateLimitStore;
use crate::telemetry::metrics::LOCKOUTS;

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

/// When a source that already has its share of logins in flight may try again: about one
/// password verification.
const HASHING_SHARE_RETRY: Duration = Duration::from_millis(200);

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
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
            lookup_name(input.username)?;
            let client = parse_client_ip(input.client_ip)?;
            let subject = self.subject(input.tenant, input.username).await?;
            audit.event.username_hash = subject.clone();
            self.check_login_throttles(input.tenant, client.as_ref())
                .await?;
            // One source's share of the hasher, held until the login ends.
            let _slot = match &client {
                Some(c) => Some(
                    self.hashing_by_ip
                        .try_take(&c.network, self.settings.login_limits.hashing_per_ip)
                        .ok_or(AuthError::Throttled {
                            retry_after: HASHING_SHARE_RETRY,
                        })?,
                ),
                None => None,
            };
            let client_ip = client.map(|c| c.address).unwrap_or_default();
            self.login_verified(&input, &client_ip, &subject, audit)
                .await
        })
        .await
    }

    /// The login throttles, decided together in one store call (all or nothing) before any
    /// hashing: per client network across all tenants, per (tenant, client network), per
    /// tenant. Without a client address there is no source to throttle; the tenant limit
    /// still applies.
    async fn check_login_throttles(
        &self,
        tenant: &str,
        client: Option<&ClientIp>,
    ) -> Result<(), AuthError> {
        let Some(limiter) = &self.throttle else {
            return Ok(());
        };
        let limits = self.settings.login_limits;
        let mut throttles = Vec::with_capacity(3);
        if let Some(c) = client {
            throttles.push((
                keys::global_throttle_key("login", &c.network),
                limits.per_ip_all_tenants,
            ));
            throttles.push((
                keys::throttle_key(tenant, "login-ip", &c.network),
                limits.per_ip,
            ));
        }
        throttles.push((keys::throttle_key(tenant, "login", ""), limits.per_tenant));
        match limiter.throttle(&throttles).await? {
            None => Ok(()),
            Some(retry_after) => Err(AuthError::Throttled { retry_after }),
        }
    }

    async fn login_verified(
        &self,
        input: &LoginInput<'_>,
        client_ip: &str,
        subject: &str,
        audit: &mut PendingAudit,
    ) -> Result<Tokens, AuthError> {
        let user = self.find_by_username(input.tenant, input.username).await?;
        if let Some(u) = &user {
            audit.user(&u.user_id);
        }
        let verified = self
            .verify_counted(input.tenant, subject, input.password, user.as_ref(), audit)
            .await?;
        let Some(found) = user else {
            // verify_counted never matches without a user.
            return Err(AuthError::Internal);
        };
        // Upgrade to the configured parameters while the password is at hand; a failure here
        // must not fail the login, the next one tries again.
        let rehash = if verified.needs_rehash {
            match self.hasher.hash(input.password).await {
                Ok(hash) => Some(hash),
                Err(e) => {
                    tracing::warn!(error = %e, "password rehash skipped");
                    None
                }
            }
        } else {
            None
        };
        // The record may have changed while the password was being verified: the last-login
        // stamp and the rehash go onto the record as it is now, and only while its hash is
        // still the one verified (else the password was changed meanwhile and this login
        // proved the old one).
        let verified_hash = found.password_hash;
        let now = unix_now();
        let user = self
            .modify_user(input.tenant, &found.user_id, |u| {
                if u.password_hash != verified_hash {
                    return Err(AuthError::InvalidCredentials);
                }
                let mut write = false;
                if let Some(hash) = &rehash {
                    u.password_hash = hash.clone();
                    write = true;
                }
                if u.last_login_unix.is_none_or(|last| last < now) {
                    u.last_login_unix = Some(now);
                    write = true;
                }
                Ok(write)
            })
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        // The store opens the session only while the user exists with this hash, in the same
        // step: a deletion or password change after this point leaves no session behind.
        self.open_session(&user, client_ip).await
    }

    /// Checks `password` against `user` (a dummy hash when `None`, so an unknown user costs
    /// the same) under the lockout of `subject`; `Ok` only on a match.
    ///
    /// The hashing permit is taken first, so an overloaded hasher refuses before anything is
    /// counted (a user retrying under load is never locked out by the load). Then the attempt
    /// is counted, atomically in the store, before the password is evaluated: parallel
    /// guesses on any number of replicas cannot get more evaluations than the lockout allows.
    /// A locked subject costs a dummy verify too, so it answers in the same time.
    pub(super) async fn verify_counted(
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
}
