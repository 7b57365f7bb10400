//! `portcullis.v1.AdminService`, behind the admin bearer token (`admin_guard.rs`).

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::pb;
use tonic::{Request, Response, Status};

use super::auth::{call_context, timestamp, timestamp_ms};
use super::ratelimit::limit_policy;
use super::{from_proto_duration, to_proto_duration};
use crate::auth::audit::CallContext;
use crate::auth::model::{AuditEvent, Session};
use crate::auth::password::Secret;
use crate::auth::users::{UserRef, UserView};
use crate::auth::{Authenticator, NewUser};
use crate::ratelimit::policy::Limit;
use crate::ratelimit::{Limiter, RateLimitError};
use crate::store::AnyStore;

/// Runtime limits and user administration; every call is an audit event.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// The limiter whose runtime overrides this edits.
    pub limiter: Arc<Limiter<AnyStore>>,
    /// Users, sessions and the audit log.
    pub auth: Arc<Authenticator<AnyStore>>,
}

impl AdminApi {
    /// Records a rate-limit admin call (user calls are audited by the core itself).
    async fn audit_limit_call<T>(
        &self,
        ctx: &CallContext,
        tenant: &str,
        action: &'static str,
        result: &Result<T, RateLimitError>,
    ) {
        let outcome = match result {
            Ok(_) => "success",
            Err(RateLimitError::InvalidArgument { .. }) => "invalid_argument",
            Err(_) => "store_error",
        };
        self.auth.record_admin(ctx, tenant, action, outcome).await;
    }
}

fn user_message(v: UserView) -> pb::User {
    pb::User {
        user_id: v.user.user_id,
        tenant_id: v.user.tenant_id,
        username: v.user.username,
        roles: v.user.roles,
        must_change_password: v.user.must_change_password,
        locked: v.lock.locked,
        locked_until: v.lock.locked_until_unix_ms.map(timestamp_ms),
        failed_attempts: v.lock.failures,
        created_at: Some(timestamp(v.user.created_at_unix)),
        last_login_at: v.user.last_login_unix.map(timestamp),
    }
}

fn session_message(s: Session) -> pb::Session {
    pb::Session {
        expires_at: Some(timestamp(s.expires_unix())),
        session_id: s.session_id,
        user_id: s.user_id,
        created_at: Some(timestamp(s.created_at_unix)),
        last_refreshed_at: Some(timestamp(s.last_used_unix)),
        client_ip: s.client_ip,
    }
}

fn audit_message(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        time: Some(timestamp_ms(e.time_unix_ms)),
        tenant_id: e.tenant_id,
        user_id: e.user_id.unwrap_or_default(),
        action: e.action,
        outcome: e.outcome,
        client_ip: e.client_ip,
        username_hash: e.username_hash,
        trace_id: e.trace_id,
        latency: Some(to_proto_duration(Duration::from_millis(e.latency_ms))),
        count: e.count,
        sample_client_ips: e.sample_client_ips,
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn set_tenant_limit(
        &self,
        request: Request<pb::SetTenantLimitRequest>,
    ) -> Result<Response<pb::TenantLimit>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.into_inner();
        let result = async {
            let period = from_proto_duration("period", r.period.as_ref())?;
            let limit = Limit::new(r.rate, period, r.burst).map_err(RateLimitError::from)?;
            let policy = self
                .limiter
                .set_override(&r.tenant_id, &r.resource, limit)
                .await?;
            tracing::info!(%limit, "runtime limit set");
            Ok(policy)
        }
        .await;
        self.audit_limit_call(&ctx, &r.tenant_id, "admin.set_tenant_limit", &result)
            .await;
        Ok(Response::new(pb::TenantLimit {
            policy: Some(limit_policy(&result?)),
            tenant_id: r.tenant_id,
            resource: r.resource,
        }))
    }

    async fn get_tenant_limit(
        &self,
        request: Request<pb::GetTenantLimitRequest>,
    ) -> Result<Response<pb::TenantLimit>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.into_inner();
        // Read-your-writes across replicas: pick up a change made through another one.
        // A store outage must not hide the policy in force, so a failed refresh is ignored.
        let _ = self.limiter.refresh_policies().await;
        let result = self.limiter.policy_for(&r.tenant_id, &r.resource);
        self.audit_limit_call(&ctx, &r.tenant_id, "admin.get_tenant_limit", &result)
            .await;
        Ok(Response::new(pb::TenantLimit {
            policy: Some(limit_policy(&result?)),
            tenant_id: r.tenant_id,
            resource: r.resource,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn delete_tenant_limit(
        &self,
        request: Request<pb::DeleteTenantLimitRequest>,
    ) -> Result<Response<pb::DeleteTenantLimitResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let result = self
            .limiter
            .delete_override(&r.tenant_id, &r.resource)
            .await;
        self.audit_limit_call(&ctx, &r.tenant_id, "admin.delete_tenant_limit", &result)
            .await;
        let deleted = result?;
        tracing::info!(deleted, "runtime limit deleted");
        Ok(Response::new(pb::DeleteTenantLimitResponse { deleted }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn reset_counters(
        &self,
        request: Request<pb::ResetCountersRequest>,
    ) -> Result<Response<pb::ResetCountersResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let result = self
            .limiter
            .reset_counters(&r.tenant_id, &r.resource, &r.key)
            .await;
        self.audit_limit_call(&ctx, &r.tenant_id, "admin.reset_counters", &result)
            .await;
        let counters_reset = result?;
        tracing::info!(
            counters_reset,
            one_key = !r.key.is_empty(),
            "counters reset"
        );
        Ok(Response::new(pb::ResetCountersResponse { counters_reset }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = call_context(request.metadata());
        let mut r = request.into_inner();
        let password = Secret::new(std::mem::take(&mut r.initial_password));
        let view = self
            .auth
            .admin_create_user(
                NewUser {
                    tenant: &r.tenant_id,
                    username: &r.username,
                    password: &password,
                    roles: r.roles,
                    // Unset means the safe choice: the first login must change it.
                    must_change_password: r.must_change_password.unwrap_or(true),
                },
                &ctx,
            )
            .await?;
        Ok(Response::new(user_message(view)))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let who = if r.user_id.is_empty() {
            UserRef::Username(&r.username)
        } else {
            UserRef::Id(&r.user_id)
        };
        let view = self.auth.get_user(&r.tenant_id, who, &ctx).await?;
        Ok(Response::new(user_message(view)))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn unlock_user(
        &self,
        request: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let view = self
            .auth
            .unlock_user(&r.tenant_id, &r.user_id, &ctx)
            .await?;
        Ok(Response::new(user_message(view)))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let deleted = self
            .auth
            .delete_user(&r.tenant_id, &r.user_id, &ctx)
            .await?;
        Ok(Response::new(pb::DeleteUserResponse { deleted }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn export_user_data(
        &self,
        request: Request<pb::ExportUserDataRequest>,
    ) -> Result<Response<pb::ExportUserDataResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let json = self
            .auth
            .export_user_data(&r.tenant_id, &r.user_id, &ctx)
            .await?;
        Ok(Response::new(pb::ExportUserDataResponse { json }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let sessions = self
            .auth
            .list_sessions(&r.tenant_id, &r.user_id, &ctx)
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.into_iter().map(session_message).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let revoked = self
            .auth
            .revoke_sessions(&r.tenant_id, &r.user_id, &r.session_ids, &ctx)
            .await?;
        Ok(Response::new(pb::RevokeSessionsResponse { revoked }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        let after = (!r.after_id.is_empty()).then_some(r.after_id.as_str());
        let events = self
            .auth
            .list_audit_events(&r.tenant_id, limit, after, &ctx)
            .await?;
        let full = limit > 0 && events.len() >= limit
            || limit == 0 && events.len() >= crate::auth::users::DEFAULT_AUDIT_PAGE;
        let next_after_id = if full {
            events.last().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(audit_message).collect(),
            next_after_id,
        }))
    }
}
