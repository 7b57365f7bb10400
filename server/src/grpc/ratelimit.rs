//! `portcullis.v1.RateLimitService`.

use std::sync::Arc;

use portcullis_proto::pb;
use tonic::{Request, Response, Status};

use super::to_proto_duration;
use crate::ratelimit::policy::{AppliedPolicy, PolicySource};
use crate::ratelimit::{CheckDecision, CheckInput, CheckManyDecision, DenyReason, Limiter};
use crate::store::AnyStore;

/// Serves `Check` and `CheckMany` from the shared limiter.
#[derive(Debug, Clone)]
pub struct RateLimitApi {
    /// The limiter shared with the other services.
    pub limiter: Arc<Limiter<AnyStore>>,
}

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for RateLimitApi {
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %request.get_ref().tenant_id, resource = %request.get_ref().resource))]
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let r = request.get_ref();
        let decision = self
            .limiter
            .check(CheckInput {
                tenant: &r.tenant_id,
                resource: &r.resource,
                key: &r.key,
                cost: r.cost,
            })
            .await?;
        Ok(Response::new(check_response(&decision)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %request.get_ref().tenant_id, items = request.get_ref().items.len()))]
    async fn check_many(
        &self,
        request: Request<pb::CheckManyRequest>,
    ) -> Result<Response<pb::CheckManyResponse>, Status> {
        let r = request.get_ref();
        let items: Vec<CheckInput<'_>> = r
            .items
            .iter()
            .map(|item| CheckInput {
                tenant: &r.tenant_id,
                resource: &item.resource,
                key: &item.key,
                cost: item.cost,
            })
            .collect();
        let decision = self.limiter.check_many(&r.tenant_id, &items).await?;
        Ok(Response::new(check_many_response(&decision)))
    }
}

fn check_many_response(d: &CheckManyDecision) -> pb::CheckManyResponse {
    pb::CheckManyResponse {
        allowed: d.allowed,
        results: d.items.iter().map(check_response).collect(),
        retry_after: d.retry_after().map(to_proto_duration),
        headers: d.headline().map(wire_headers).unwrap_or_default(),
        degraded: d.degraded,
    }
}

fn wire_headers(d: &CheckDecision) -> Vec<pb::Header> {
    d.headers()
        .into_iter()
        .map(|(name, value)| pb::Header {
            name: name.to_owned(),
            value,
        })
        .collect()
}

fn check_response(d: &CheckDecision) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: d.allowed,
        limit: d.policy.limit.rate(),
        remaining: d.remaining,
        reset_after: Some(to_proto_duration(d.reset_after)),
        retry_after: d.retry_after.map(to_proto_duration),
        policy: Some(limit_policy(&d.policy)),
        deny_reason: match d.deny_reason {
            None => pb::DenyReason::Unspecified,
            Some(DenyReason::OverLimit) => pb::DenyReason::OverLimit,
            Some(DenyReason::CostExceedsBurst) => pb::DenyReason::CostExceedsBurst,
            Some(DenyReason::StoreUnavailable) => pb::DenyReason::StoreUnavailable,
            Some(DenyReason::KeyLimit) => pb::DenyReason::KeyLimit,
        } as i32,
        headers: wire_headers(d),
        degraded: d.degraded,
    }
}

/// The wire form of an applied policy.
pub(crate) fn limit_policy(p: &AppliedPolicy) -> pb::LimitPolicy {
    pb::LimitPolicy {
        rate: p.limit.rate(),
        period: Some(to_proto_duration(p.limit.period())),
        burst: p.limit.burst(),
        source: match p.source {
            PolicySource::Default => pb::PolicySource::Default,
            PolicySource::Config => pb::PolicySource::Config,
            PolicySource::Runtime => pb::PolicySource::Runtime,
        } as i32,
    }
}
