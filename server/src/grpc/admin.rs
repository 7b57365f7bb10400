//! `portcullis.v1.AdminService`, behind the admin bearer token.

use std::sync::Arc;

use portcullis_proto::pb;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use super::from_proto_duration;
use super::ratelimit::limit_policy;
use crate::config::AdminToken;
use crate::ratelimit::Limiter;
use crate::ratelimit::policy::Limit;
use crate::store::AnyStore;

/// Checks `authorization: Bearer <token>` in constant time. Both sides are hashed first so
/// the comparison time does not even depend on the token's length.
#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of the configured token; `None` when no token is configured (admin disabled).
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.expected.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// Guards with `token`; with `None` every admin call is refused.
    pub fn new(token: Option<&AdminToken>) -> Self {
        Self {
            expected: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
        }
    }

    /// A tonic interceptor admitting only calls that carry the token.
    #[allow(clippy::result_large_err)] // the interceptor signature is tonic's
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Err(Status::unauthenticated(
                "admin API disabled: no admin token is configured (PORTCULLIS_ADMIN_TOKEN or PORTCULLIS_ADMIN_TOKEN_FILE)",
            ));
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("missing admin bearer token"))?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid admin bearer token"))
        }
    }
}

/// Runtime limits (and, with authentication, user administration).
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// The limiter whose runtime overrides this edits.
    pub limiter: Arc<Limiter<AnyStore>>,
}

const USERS_UNIMPLEMENTED: &str =
    "user administration is not implemented yet in this version of Portcullis";

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn set_tenant_limit(
        &self,
        request: Request<pb::SetTenantLimitRequest>,
    ) -> Result<Response<pb::TenantLimit>, Status> {
        let r = request.into_inner();
        let period = from_proto_duration("period", r.period.as_ref())?;
        let limit =
            Limit::new(r.rate, period, r.burst).map_err(crate::ratelimit::RateLimitError::from)?;
        let policy = self
            .limiter
            .set_override(&r.tenant_id, &r.resource, limit)
            .await?;
        tracing::info!(%limit, "runtime limit set");
        Ok(Response::new(pb::TenantLimit {
            tenant_id: r.tenant_id,
            resource: r.resource,
            policy: Some(limit_policy(&policy)),
        }))
    }

    async fn get_tenant_limit(
        &self,
        request: Request<pb::GetTenantLimitRequest>,
    ) -> Result<Response<pb::TenantLimit>, Status> {
        let r = request.into_inner();
        // Read-your-writes across replicas: pick up a change made through another one.
        // A store outage must not hide the policy in force, so a failed refresh is ignored.
        let _ = self.limiter.refresh_policies().await;
        let policy = self.limiter.policy_for(&r.tenant_id, &r.resource)?;
        Ok(Response::new(pb::TenantLimit {
            tenant_id: r.tenant_id,
            resource: r.resource,
            policy: Some(limit_policy(&policy)),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn delete_tenant_limit(
        &self,
        request: Request<pb::DeleteTenantLimitRequest>,
    ) -> Result<Response<pb::DeleteTenantLimitResponse>, Status> {
        let r = request.get_ref();
        let deleted = self
            .limiter
            .delete_override(&r.tenant_id, &r.resource)
            .await?;
        tracing::info!(deleted, "runtime limit deleted");
        Ok(Response::new(pb::DeleteTenantLimitResponse { deleted }))
    }

    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn unlock_user(
        &self,
        _: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn delete_user(
        &self,
        _: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn export_user_data(
        &self,
        _: Request<pb::ExportUserDataRequest>,
    ) -> Result<Response<pb::ExportUserDataResponse>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn revoke_sessions(
        &self,
        _: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }

    async fn list_audit_events(
        &self,
        _: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Err(Status::unimplemented(USERS_UNIMPLEMENTED))
    }
}
