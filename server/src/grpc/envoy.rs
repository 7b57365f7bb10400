//! `envoy.service.ratelimit.v3.RateLimitService`: Envoy's and Istio's rate limit API.

use std::sync::Arc;

use portcullis_proto::envoy::{core, rls};
use tonic::{Request, Response, Status};

use super::to_proto_duration;
use crate::ratelimit::envoy::{DescriptorStatus, EnvoyDescriptor, EnvoyRequest};
use crate::ratelimit::envoy_config::{EnvoyRate, EnvoyUnit};
use crate::ratelimit::{Limiter, RateLimitError};
use crate::store::AnyStore;

/// Serves `ShouldRateLimit` from the shared limiter.
#[derive(Debug, Clone)]
pub struct EnvoyApi {
    /// The limiter shared with the other services.
    pub limiter: Arc<Limiter<AnyStore>>,
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for EnvoyApi {
    #[tracing::instrument(level = "debug", skip_all, fields(domain = %request.get_ref().domain, descriptors = request.get_ref().descriptors.len()))]
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        let request = envoy_request(request.into_inner())?;
        let decision = self.limiter.should_rate_limit(&request).await?;
        let code = |over: bool| if over { rls::rate_limit_response::Code::OverLimit } else { rls::rate_limit_response::Code::Ok } as i32;
        Ok(Response::new(rls::RateLimitResponse {
            overall_code: code(decision.over_limit),
            statuses: decision
                .statuses
                .iter()
                .map(
                    |s: &DescriptorStatus| rls::rate_limit_response::DescriptorStatus {
                        code: code(s.over_limit),
                        current_limit: s.limit.as_ref().map(|l| {
                            rls::rate_limit_response::RateLimit {
                                name: l.name.clone().unwrap_or_default(),
                                requests_per_unit: l.requests_per_unit,
                                unit: l.unit.proto_number(),
                            }
                        }),
                        limit_remaining: s.remaining,
                        duration_until_reset: s
                            .limit
                            .as_ref()
                            .map(|_| to_proto_duration(s.reset_after)),
                    },
                )
                .collect(),
            response_headers_to_add: decision
                .response_headers
                .into_iter()
                .map(|(key, value)| core::HeaderValue {
                    key: key.to_owned(),
                    value,
                })
                .collect(),
            request_headers_to_add: Vec::new(),
        }))
    }
}

/// Unpacks the wire request; an override with an unknown unit is rejected by name.
fn envoy_request(r: rls::RateLimitRequest) -> Result<EnvoyRequest, RateLimitError> {
    let descriptors = r
        .descriptors
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let limit_override = d
                .limit
                .map(|l| {
                    let unit = EnvoyUnit::from_proto_number(l.unit).ok_or_else(|| {
                        RateLimitError::InvalidArgument {
                            field: format!("descriptors[{i}].limit.unit"),
                            reason: format!("unknown unit {}", l.unit),
                        }
                    })?;
                    Ok::<_, RateLimitError>(EnvoyRate {
                        requests_per_unit: l.requests_per_unit,
                        unit,
                    })
                })
                .transpose()?;
            Ok(EnvoyDescriptor {
                entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
                limit_override,
                hits_addend: d.hits_addend,
            })
        })
        .collect::<Result<_, RateLimitError>>()?;
    Ok(EnvoyRequest {
        domain: r.domain,
        descriptors,
        hits_addend: r.hits_addend,
    })
}
