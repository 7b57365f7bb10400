//! The typed calls of [`Portcullis`]: rate limit, authentication and administration.

use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use pb::admin_service_client::AdminServiceClient;
use pb::auth_service_client::AuthServiceClient;
use pb::rate_limit_service_client::RateLimitServiceClient;
use portcullis_proto::pb;

use crate::error::Error;
use crate::handle::{Auth, CallKind, Method, Portcullis};
use crate::retry::Idempotency::{Idempotent, NeverSentOnly};

/// A method of the rate limit service (never repeated once sent: it takes units).
const fn rate(name: &'static str) -> Method {
    Method {
        name,
        kind: CallKind::RateLimit,
        idempotency: NeverSentOnly,
        auth: Auth::None,
    }
}

const CHECK: Method = rate("Check");
const CHECK_MANY: Method = rate("CheckMany");
const LOGIN: Method = Method {
    name: "Login",
    kind: CallKind::PasswordHashing,
    idempotency: NeverSentOnly,
    auth: Auth::None,
};
const VERIFY_TOKEN: Method = Method {
    name: "VerifyToken",
    kind: CallKind::Verify,
    idempotency: Idempotent,
    auth: Auth::None,
};
const REFRESH: Method = Method {
    name: "Refresh",
    kind: CallKind::Session,
    idempotency: NeverSentOnly,
    auth: Auth::None,
};
const LOGOUT: Method = Method {
    name: "Logout",
    kind: CallKind::Session,
    idempotency: NeverSentOnly,
    auth: Auth::None,
};
const CHANGE_PASSWORD: Method = Method {
    name: "ChangePassword",
    kind: CallKind::PasswordHashing,
    idempotency: NeverSentOnly,
    auth: Auth::None,
};
const GET_JWKS: Method = Method {
    name: "GetJwks",
    kind: CallKind::Jwks,
    idempotency: Idempotent,
    auth: Auth::None,
};
const WATCH: Method = Method {
    name: "WatchSecurityEvents",
    kind: CallKind::Session,
    idempotency: NeverSentOnly,
    auth: Auth::Watch,
};

/// An admin method: reads are repeated, writes only when never sent.
const fn admin(name: &'static str, read: bool) -> Method {
    Method {
        name,
        kind: CallKind::Admin,
        idempotency: if read { Idempotent } else { NeverSentOnly },
        auth: Auth::Admin,
    }
}

const SET_TENANT_LIMIT: Method = admin("SetTenantLimit", false);
const GET_TENANT_LIMIT: Method = admin("GetTenantLimit", true);
const DELETE_TENANT_LIMIT: Method = admin("DeleteTenantLimit", false);
const RESET_COUNTERS: Method = admin("ResetCounters", false);
const CREATE_USER: Method = Method {
    kind: CallKind::PasswordHashing,
    ..admin("CreateUser", false)
};
const GET_USER: Method = admin("GetUser", true);
const UNLOCK_USER: Method = admin("UnlockUser", false);
const DELETE_USER: Method = admin("DeleteUser", false);
const EXPORT_USER_DATA: Method = admin("ExportUserData", true);
const LIST_SESSIONS: Method = admin("ListSessions", true);
const REVOKE_SESSIONS: Method = admin("RevokeSessions", false);
const LIST_AUDIT_EVENTS: Method = admin("ListAuditEvents", true);

/// The signing keys and the claims a local verifier must check (`GetJwks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwks {
    /// The public keys as a JWKS document (Ed25519 only; empty with HS256).
    pub jwks_json: String,
    /// The `iss` every token carries.
    pub issuer: String,
    /// The `aud` every token carries.
    pub audience: String,
    /// How long the keys may be cached.
    pub max_age: Option<Duration>,
}

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    Some(Duration::new(
        u64::try_from(d.seconds).ok()?,
        u32::try_from(d.nanos).ok()?,
    ))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Portcullis {
    /// Takes `cost` units from (tenant, resource, key): empty resource = `default`, empty key
    /// = one counter for the whole resource, cost 0 = 1. Retried only if never sent.
    pub async fn check(
        &self,
        tenant: &str,
        resource: &str,
        key: &str,
        cost: u32,
    ) -> Result<pb::CheckResponse, Error> {
        let request = pb::CheckRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            key: key.to_owned(),
            cost,
        };
        self.unary(&CHECK, request, |ch, r| async move {
            RateLimitServiceClient::new(ch).check(r).await
        })
        .await
    }

    /// Takes every item's units or none (one store step). Retried only if never sent.
    pub async fn check_many(
        &self,
        tenant: &str,
        items: impl IntoIterator<Item = pb::CheckItem>,
    ) -> Result<pb::CheckManyResponse, Error> {
        let request = pb::CheckManyRequest {
            tenant_id: tenant.to_owned(),
            items: items.into_iter().collect(),
        };
        self.unary(&CHECK_MANY, request, |ch, r| async move {
            RateLimitServiceClient::new(ch).check_many(r).await
        })
        .await
    }

    /// Logs in (opens a session). Retried only if never sent.
    pub async fn login(
        &self,
        tenant: &str,
        username: &str,
        password: &str,
    ) -> Result<pb::LoginResponse, Error> {
        self.login_with(pb::LoginRequest {
            tenant_id: tenant.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            client_ip: String::new(),
        })
        .await
    }

    /// Logs in with every field of the request (e.g. the end user's `client_ip`).
    pub async fn login_with(&self, request: pb::LoginRequest) -> Result<pb::LoginResponse, Error> {
        self.unary(&LOGIN, request, |ch, r| async move {
            AuthServiceClient::new(ch).login(r).await
        })
        .await
    }

    /// Verifies an access token: with `tenant`, a token of another tenant is refused; the
    /// token must carry every scope of `required_scopes` and role of `required_roles`.
    /// Idempotent: retried on unavailability.
    pub async fn verify_token(
        &self,
        access_token: &str,
        tenant: Option<&str>,
        required_scopes: &[&str],
        required_roles: &[&str],
    ) -> Result<pb::VerifyTokenResponse, Error> {
        let request = pb::VerifyTokenRequest {
            access_token: access_token.to_owned(),
            tenant_id: tenant.unwrap_or_default().to_owned(),
            required_scopes: strings(required_scopes),
            required_roles: strings(required_roles),
        };
        self.unary(&VERIFY_TOKEN, request, |ch, r| async move {
            AuthServiceClient::new(ch).verify_token(r).await
        })
        .await
    }

    /// New tokens for a refresh token (which rotates). Retried only if never sent: a second
    /// Refresh with the same token would be reuse and end the session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::LoginResponse, Error> {
        let request = pb::RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.unary(&REFRESH, request, |ch, r| async move {
            AuthServiceClient::new(ch).refresh(r).await
        })
        .await
    }

    /// Ends the session of a refresh token or an access token; false if it had ended.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<bool, Error> {
        let request = pb::LogoutRequest {
            refresh_token: refresh_token.unwrap_or_default().to_owned(),
            access_token: access_token.unwrap_or_default().to_owned(),
        };
        let response = self
            .unary(&LOGOUT, request, |ch, r| async move {
                AuthServiceClient::new(ch).logout(r).await
            })
            .await?;
        Ok(response.revoked)
    }

    /// Changes the password of the token's user; answers how many other sessions ended.
    pub async fn change_password(
        &self,
        access_token: &str,
        current_password: &str,
        new_password: &str,
    ) -> Result<u32, Error> {
        let request = pb::ChangePasswordRequest {
            access_token: access_token.to_owned(),
            current_password: current_password.to_owned(),
            new_password: new_password.to_owned(),
        };
        let response = self
            .unary(&CHANGE_PASSWORD, request, |ch, r| async move {
                AuthServiceClient::new(ch).change_password(r).await
            })
            .await?;
        Ok(response.revoked_sessions)
    }

    /// The public keys, issuer, audience and cache lifetime.
    pub async fn get_jwks(&self) -> Result<Jwks, Error> {
        let response = self
            .unary(&GET_JWKS, pb::GetJwksRequest {}, |ch, r| async move {
                AuthServiceClient::new(ch).get_jwks(r).await
            })
            .await?;
        Ok(Jwks {
            jwks_json: response.jwks_json,
            issuer: response.issuer,
            audience: response.audience,
            max_age: duration(response.max_age),
        })
    }

    /// The security event stream from `cursor` (empty: from now, with a snapshot), with the
    /// watch token. The stream has no deadline; opening it has the `Session` one. Errors
    /// (opening included) come as items; the caller reconnects with the last cursor.
    pub fn watch_security_events(
        &self,
        cursor: &str,
    ) -> impl Stream<Item = Result<pb::SecurityEvent, Error>> + Send + Unpin + 'static {
        let this = self.clone();
        let cursor = cursor.to_owned();
        // Boxed so callers can poll it without pinning it themselves.
        futures::stream::once(async move { this.open_watch(cursor).await })
            .try_flatten()
            .boxed()
    }

    async fn open_watch(
        &self,
        cursor: String,
    ) -> Result<impl Stream<Item = Result<pb::SecurityEvent, Error>> + Send + use<>, Error> {
        let deadline = self.deadline(WATCH.kind);
        // No grpc-timeout: it would end the stream.
        let request = self.request(&WATCH, pb::WatchSecurityEventsRequest { cursor }, None);
        let mut client = AuthServiceClient::new(self.channel());
        let opened = tokio::time::timeout(deadline, client.watch_security_events(request)).await;
        let result = match opened {
            Ok(Ok(response)) => Ok(response
                .into_inner()
                .map_err(move |status| Error::from_status(&status, deadline))),
            Ok(Err(status)) => Err(Error::from_status(&status, deadline)),
            Err(_) => Err(Error::DeadlineExceeded { deadline }),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics_names::CALLS, "method" => WATCH.name, "outcome" => outcome)
            .increment(1);
        result
    }

    /// Sets a runtime limit (admin); an empty `resource` is the tenant-wide limit.
    pub async fn set_tenant_limit(
        &self,
        tenant: &str,
        resource: &str,
        rate: u64,
        period: Duration,
        burst: u64,
    ) -> Result<pb::TenantLimit, Error> {
        let request = pb::SetTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            rate,
            period: Some(prost_types::Duration {
                seconds: i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(period.subsec_nanos()).unwrap_or_default(),
            }),
            burst,
        };
        self.unary(&SET_TENANT_LIMIT, request, |ch, r| async move {
            AdminServiceClient::new(ch).set_tenant_limit(r).await
        })
        .await
    }

    /// The limit that applies to (tenant, resource) (admin).
    pub async fn get_tenant_limit(
        &self,
        tenant: &str,
        resource: &str,
    ) -> Result<pb::TenantLimit, Error> {
        let request = pb::GetTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
        };
        self.unary(&GET_TENANT_LIMIT, request, |ch, r| async move {
            AdminServiceClient::new(ch).get_tenant_limit(r).await
        })
        .await
    }

    /// Deletes a runtime limit (admin); false when there was none.
    pub async fn delete_tenant_limit(&self, tenant: &str, resource: &str) -> Result<bool, Error> {
        let request = pb::DeleteTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
        };
        let response = self
            .unary(&DELETE_TENANT_LIMIT, request, |ch, r| async move {
                AdminServiceClient::new(ch).delete_tenant_limit(r).await
            })
            .await?;
        Ok(response.deleted)
    }

    /// Forgets the counters of one key (or, with an empty `key`, every key) of a resource
    /// (admin); answers how many.
    pub async fn reset_counters(
        &self,
        tenant: &str,
        resource: &str,
        key: &str,
    ) -> Result<u64, Error> {
        let request = pb::ResetCountersRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            key: key.to_owned(),
        };
        let response = self
            .unary(&RESET_COUNTERS, request, |ch, r| async move {
                AdminServiceClient::new(ch).reset_counters(r).await
            })
            .await?;
        Ok(response.counters_reset)
    }

    /// Creates a user (admin). With `must_change_password` the first login only yields a
    /// password-change session.
    pub async fn create_user(
        &self,
        tenant: &str,
        username: &str,
        initial_password: &str,
        roles: &[&str],
        must_change_password: bool,
    ) -> Result<pb::User, Error> {
        let request = pb::CreateUserRequest {
            tenant_id: tenant.to_owned(),
            username: username.to_owned(),
            initial_password: initial_password.to_owned(),
            roles: strings(roles),
            must_change_password: Some(must_change_password),
        };
        self.unary(&CREATE_USER, request, |ch, r| async move {
            AdminServiceClient::new(ch).create_user(r).await
        })
        .await
    }

    /// A user by id or by username (admin).
    pub async fn get_user(&self, request: pb::GetUserRequest) -> Result<pb::User, Error> {
        self.unary(&GET_USER, request, |ch, r| async move {
            AdminServiceClient::new(ch).get_user(r).await
        })
        .await
    }

    /// Lifts a user's lock (admin).
    pub async fn unlock_user(&self, tenant: &str, user_id: &str) -> Result<pb::User, Error> {
        let request = pb::UnlockUserRequest {
            tenant_id: tenant.to_owned(),
            user_id: user_id.to_owned(),
        };
        self.unary(&UNLOCK_USER, request, |ch, r| async move {
            AdminServiceClient::new(ch).unlock_user(r).await
        })
        .await
    }

    /// Deletes a user with its sessions (admin); false when there was none.
    pub async fn delete_user(&self, tenant: &str, user_id: &str) -> Result<bool, Error> {
        let request = pb::DeleteUserRequest {
            tenant_id: tenant.to_owned(),
            user_id: user_id.to_owned(),
        };
        let response = self
            .unary(&DELETE_USER, request, |ch, r| async move {
                AdminServiceClient::new(ch).delete_user(r).await
            })
            .await?;
        Ok(response.deleted)
    }

    /// Everything stored about a user, as JSON (admin).
    pub async fn export_user_data(&self, tenant: &str, user_id: &str) -> Result<String, Error> {
        let request = pb::ExportUserDataRequest {
            tenant_id: tenant.to_owned(),
            user_id: user_id.to_owned(),
        };
        let response = self
            .unary(&EXPORT_USER_DATA, request, |ch, r| async move {
                AdminServiceClient::new(ch).export_user_data(r).await
            })
            .await?;
        Ok(response.json)
    }

    /// A user's live sessions (admin).
    pub async fn list_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<pb::Session>, Error> {
        let request = pb::ListSessionsRequest {
            tenant_id: tenant.to_owned(),
            user_id: user_id.to_owned(),
        };
        let response = self
            .unary(&LIST_SESSIONS, request, |ch, r| async move {
                AdminServiceClient::new(ch).list_sessions(r).await
            })
            .await?;
        Ok(response.sessions)
    }

    /// Ends some (or, with none named, all) of a user's sessions (admin); answers how many.
    pub async fn revoke_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        session_ids: &[&str],
    ) -> Result<u32, Error> {
        let request = pb::RevokeSessionsRequest {
            tenant_id: tenant.to_owned(),
            user_id: user_id.to_owned(),
            session_ids: strings(session_ids),
        };
        let response = self
            .unary(&REVOKE_SESSIONS, request, |ch, r| async move {
                AdminServiceClient::new(ch).revoke_sessions(r).await
            })
            .await?;
        Ok(response.revoked)
    }

    /// A page of a tenant's audit events, newest first, after `after_id` (admin).
    pub async fn list_audit_events(
        &self,
        tenant: &str,
        limit: u32,
        after_id: &str,
    ) -> Result<pb::ListAuditEventsResponse, Error> {
        let request = pb::ListAuditEventsRequest {
            tenant_id: tenant.to_owned(),
            limit,
            after_id: after_id.to_owned(),
        };
        self.unary(&LIST_AUDIT_EVENTS, request, |ch, r| async move {
            AdminServiceClient::new(ch).list_audit_events(r).await
        })
        .await
    }
}
