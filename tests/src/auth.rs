//! A client for the authentication API, and helpers that read and assert its error details.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use portcullis_client::pb;
use portcullis_client::pb::admin_service_client::AdminServiceClient;
use portcullis_client::pb::auth_service_client::AuthServiceClient;

use crate::server::{ADMIN_TOKEN, unique};

/// The end-user address [`AuthApi::login`] sends (only a request field; no traffic goes there).
pub const CLIENT_IP: &str = "203.0.113.7";

/// Deadline of one gRPC call; generous, it only stops a hung call from hanging the test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Domain prefix of the kid derived from an environment secret (see auth-spec.md).
const KID_DOMAIN: &[u8] = b"portcullis jwt kid v1\0";

/// AuthService and AdminService of one server over one connection, on one tenant.
#[derive(Debug, Clone)]
pub struct AuthApi {
    /// The connection every call goes over (clones share it).
    pub channel: Channel,
    /// The tenant requests name.
    pub tenant: String,
    /// The bearer token of admin requests ([`AuthApi::as_admin`]).
    pub admin_token: String,
}

impl AuthApi {
    /// Connects to `endpoint` (`http://host:port`), calls timing out after [`CALL_TIMEOUT`].
    pub async fn connect(endpoint: &str) -> AuthApi {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .expect("a valid endpoint URL")
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        AuthApi::from_channel(channel)
    }

    /// A client over `channel` on a fresh tenant, with the test servers' [`ADMIN_TOKEN`].
    pub fn from_channel(channel: Channel) -> AuthApi {
        AuthApi {
            channel,
            tenant: unique("t"),
            admin_token: ADMIN_TOKEN.to_owned(),
        }
    }

    /// The same client on `tenant`.
    pub fn with_tenant(self, tenant: &str) -> AuthApi {
        AuthApi {
            tenant: tenant.to_owned(),
            ..self
        }
    }

    /// A handle on AuthService (clones share the connection).
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    /// A handle on AdminService; wrap requests in [`AuthApi::as_admin`].
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// `message` in a request carrying this client's admin bearer token.
    pub fn as_admin<T>(&self, message: T) -> Request<T> {
        admin_request(message, &self.admin_token)
    }

    /// Creates `username` on the tenant through the admin API; panics if that fails.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        roles: &[&str],
        must_change_password: Option<bool>,
    ) -> pb::User {
        let request = self.as_admin(pb::CreateUserRequest {
            tenant_id: self.tenant.clone(),
            username: username.to_owned(),
            initial_password: password.to_owned(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            must_change_password,
        });
        self.admin()
            .create_user(request)
            .await
            .unwrap_or_else(|e| panic!("CreateUser {username}: {e:?}"))
            .into_inner()
    }

    /// A login request for the tenant from `client_ip`.
    pub fn login_request(
        &self,
        username: &str,
        password: &str,
        client_ip: &str,
    ) -> pb::LoginRequest {
        pb::LoginRequest {
            tenant_id: self.tenant.clone(),
            username: username.to_owned(),
            password: password.to_owned(),
            client_ip: client_ip.to_owned(),
        }
    }

    /// Logs in from [`CLIENT_IP`].
    pub async fn login(&self, username: &str, password: &str) -> Result<pb::LoginResponse, Status> {
        self.login_from(username, password, CLIENT_IP).await
    }

    /// Logs in from `client_ip`.
    pub async fn login_from(
        &self,
        username: &str,
        password: &str,
        client_ip: &str,
    ) -> Result<pb::LoginResponse, Status> {
        let request = self.login_request(username, password, client_ip);
        Ok(self.auth().login(request).await?.into_inner())
    }

    /// Verifies an access token, requiring `tenant_id` when it is not empty.
    pub async fn verify_in(
        &self,
        access_token: &str,
        tenant_id: &str,
    ) -> Result<pb::VerifyTokenResponse, Status> {
        let request = pb::VerifyTokenRequest {
            access_token: access_token.to_owned(),
            tenant_id: tenant_id.to_owned(),
            ..Default::default()
        };
        Ok(self.auth().verify_token(request).await?.into_inner())
    }

    /// Verifies an access token that must carry every one of `scopes` and `roles`.
    pub async fn verify_demanding(
        &self,
        access_token: &str,
        scopes: &[&str],
        roles: &[&str],
    ) -> Result<pb::VerifyTokenResponse, Status> {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        let request = pb::VerifyTokenRequest {
            access_token: access_token.to_owned(),
            required_scopes: strings(scopes),
            required_roles: strings(roles),
            ..Default::default()
        };
        Ok(self.auth().verify_token(request).await?.into_inner())
    }

    /// Verifies an access token without a tenant requirement.
    pub async fn verify(&self, access_token: &str) -> Result<pb::VerifyTokenResponse, Status> {
        self.verify_in(access_token, "").await
    }

    /// Exchanges a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::LoginResponse, Status> {
        let request = pb::RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        Ok(self.auth().refresh(request).await?.into_inner())
    }

    /// Logs out naming the session by either token (an empty string leaves a field unset).
    pub async fn logout(
        &self,
        refresh_token: &str,
        access_token: &str,
    ) -> Result<pb::LogoutResponse, Status> {
        let request = pb::LogoutRequest {
            refresh_token: refresh_token.to_owned(),
            access_token: access_token.to_owned(),
        };
        Ok(self.auth().logout(request).await?.into_inner())
    }

    /// Changes the password of the access token's user.
    pub async fn change_password(
        &self,
        access_token: &str,
        current: &str,
        new: &str,
    ) -> Result<pb::ChangePasswordResponse, Status> {
        let request = pb::ChangePasswordRequest {
            access_token: access_token.to_owned(),
            current_password: current.to_owned(),
            new_password: new.to_owned(),
        };
        Ok(self.auth().change_password(request).await?.into_inner())
    }

    /// Deletes the tenant's user with this id (admin); whether there was one.
    pub async fn delete_user(&self, user_id: &str) -> Result<bool, Status> {
        let request = self.as_admin(pb::DeleteUserRequest {
            tenant_id: self.tenant.clone(),
            user_id: user_id.to_owned(),
        });
        Ok(self
            .admin()
            .delete_user(request)
            .await?
            .into_inner()
            .deleted)
    }

    /// The tenant's user with this id (admin).
    pub async fn get_user(&self, user_id: &str) -> Result<pb::User, Status> {
        let request = self.as_admin(pb::GetUserRequest {
            tenant_id: self.tenant.clone(),
            user_id: user_id.to_owned(),
            username: String::new(),
        });
        Ok(self.admin().get_user(request).await?.into_inner())
    }

    /// The user's live sessions (admin); panics if the call fails.
    pub async fn list_sessions(&self, user_id: &str) -> Vec<pb::Session> {
        let request = self.as_admin(pb::ListSessionsRequest {
            tenant_id: self.tenant.clone(),
            user_id: user_id.to_owned(),
        });
        self.admin()
            .list_sessions(request)
            .await
            .unwrap_or_else(|e| panic!("ListSessions: {e:?}"))
            .into_inner()
            .sessions
    }

    /// One page of the tenant's audit events, newest first (admin); panics if the call fails.
    pub async fn audit_page(&self, limit: u32, after_id: &str) -> pb::ListAuditEventsResponse {
        let request = self.as_admin(pb::ListAuditEventsRequest {
            tenant_id: self.tenant.clone(),
            limit,
            after_id: after_id.to_owned(),
        });
        self.admin()
            .list_audit_events(request)
            .await
            .unwrap_or_else(|e| panic!("ListAuditEvents: {e:?}"))
            .into_inner()
    }

    /// The JWKS document exactly as GetJwks returns it; panics if the call fails.
    pub async fn jwks_json(&self) -> String {
        self.auth()
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap_or_else(|e| panic!("GetJwks: {e:?}"))
            .into_inner()
            .jwks_json
    }

    /// The JWKS, parsed.
    pub async fn jwks(&self) -> Value {
        let json = self.jwks_json().await;
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("JWKS is not JSON ({e}): {json}"))
    }
}

/// `message` in a request with `authorization: Bearer <token>` metadata.
pub fn admin_request<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token that fits a header"),
    );
    request
}

/// The `reason` of the status's ErrorInfo, which must be there with domain `portcullis`.
#[track_caller]
pub fn reason(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "portcullis", "{status:?}");
    info.reason.clone()
}

/// Asserts that `result` failed with `code` and ErrorInfo reason `expected`; returns the status.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    expected: &str,
) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
    status
}

/// The code and ErrorInfo reason ("" without one) of a call that must have been refused.
#[track_caller]
pub fn refusal<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    let status = result.expect_err("the call must be refused");
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    (status.code(), reason)
}

/// Asserts that `result` failed with INVALID_ARGUMENT and a BadRequest naming `field`.
#[track_caller]
pub fn invalid_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "{field} not named in {status:?}"
    );
    status
}

/// The RetryInfo delay of `status`, which must be present and positive.
#[track_caller]
pub fn retry_delay(status: &Status) -> Duration {
    let details = status.get_error_details();
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo delay in {status:?}"));
    assert!(delay > Duration::ZERO, "{status:?}");
    delay
}

/// The kid the spec derives from an environment secret: hex of SHA-256(domain ‖ secret)[..8].
pub fn env_kid(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(KID_DOMAIN)
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
