//! `RateLimitLayer`: each request's limits decided by Portcullis (`Check` for one, `CheckMany`
//! for several, all or nothing), a denial answered with 429 (gRPC `RESOURCE_EXHAUSTED` with
//! `RetryInfo`) and the `RateLimit`, `RateLimit-Policy` and `Retry-After` headers the server
//! builds; an explicit fail mode when Portcullis cannot be reached; a report-only mode for
//! rollout; and a local cache of denials so an abusive key costs no round trip.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_proto::pb;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::{is_grpc, refusal};
use crate::Portcullis;

/// What to do with a request when Portcullis cannot decide it (unreachable, too slow, or an
/// error). There is no default: protection and availability pull opposite ways, and the
/// service must choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Let the request through.
    Open,
    /// Refuse it with 503 (gRPC `UNAVAILABLE`).
    Closed,
}

/// One limit a request takes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitItem {
    /// The resource ("" is `default`).
    pub resource: String,
    /// The key within it ("" is the whole tenant).
    pub key: String,
    /// Units taken (0 is 1).
    pub cost: u32,
}

/// What one request takes: items of one tenant, decided together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRequest {
    /// The tenant.
    pub tenant: String,
    /// 1 to 16 items.
    pub items: Vec<LimitItem>,
}

/// Reads a request's limits; `None` leaves the request unlimited.
pub type RequestLimits = Arc<dyn Fn(&http::request::Parts) -> Option<LimitRequest> + Send + Sync>;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// When denied: the wait before the same request can be admitted, when it can be.
    pub retry_after: Option<Duration>,
    /// Headers for the response (the server's, or `Retry-After` for a cached denial).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// True when Portcullis could not decide and the fail mode did.
    pub degraded: bool,
}

/// The most denials remembered; past it the cache starts over.
const DENY_CACHE_ENTRIES: usize = 100_000;

/// `portcullis_client_ratelimit_decisions_total{outcome}`: allowed, denied, denied_cached,
/// denied_report_only, failed_open, failed_closed.
pub const RATELIMIT_DECISIONS: &str = "portcullis_client_ratelimit_decisions_total";

/// A (tenant, resource, key) known to be denied.
type DeniedKey = (String, String, String);

/// Decides requests through Portcullis; cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct RateLimiter {
    /// The handle decisions go through: balanced over the replicas, retried when never sent,
    /// under its `CallKind::RateLimit` deadline (250 ms unless the builder says otherwise).
    portcullis: Portcullis,
    /// See [`FailMode`].
    fail_mode: FailMode,
    /// Decide and record, but never refuse.
    report_only: bool,
    /// Denied keys → (until when, the least cost denied). A denial says the cost does not
    /// fit before `retry_after`; others' traffic only pushes that later, so answering from
    /// here until then denies nothing the server would admit (unless its limit is raised
    /// meanwhile, which takes effect here when the entry expires).
    denied: Arc<DashMap<DeniedKey, (Instant, u32)>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("fail_mode", &self.fail_mode)
            .field("report_only", &self.report_only)
            .field("denied", &self.denied.len())
            .finish()
    }
}

impl RateLimiter {
    /// Decides through `portcullis`, with `fail_mode` when Portcullis cannot decide (past the
    /// handle's rate-limit deadline, or on an error).
    pub fn new(portcullis: Portcullis, fail_mode: FailMode) -> Self {
        Self {
            portcullis,
            fail_mode,
            report_only: false,
            denied: Arc::new(DashMap::new()),
        }
    }

    /// Decides and records every request but refuses none (rollout).
    pub fn report_only(mut self, report_only: bool) -> Self {
        self.report_only = report_only;
        self
    }

    /// Decides `request`.
    pub async fn decide(&self, request: &LimitRequest) -> Decision {
        if let Some(cached) = self.cached_denial(request) {
            return self.outcome(cached, "denied_cached");
        }
        let sent_at = Instant::now();
        match self.ask(request).await {
            Ok((decision, denied_items)) => {
                for (item, retry_after) in denied_items {
                    self.remember(request, item, sent_at + retry_after);
                }
                let outcome = if decision.allowed {
                    "allowed"
                } else {
                    "denied"
                };
                self.outcome(decision, outcome)
            }
            Err(error) => {
                tracing::debug!(%error, "rate limit decision failed; fail mode decides");
                self.failed()
            }
        }
    }

    /// Asks Portcullis; returns the decision and, per denied item (first occurrence of its
    /// key), its index and wait.
    async fn ask(
        &self,
        request: &LimitRequest,
    ) -> Result<(Decision, Vec<(usize, Duration)>), crate::Error> {
        let (allowed, results, headers, retry_after) = if let [item] = &request.items[..] {
            let r = self
                .portcullis
                .check(&request.tenant, &item.resource, &item.key, item.cost)
                .await?;
            let retry_after = r.retry_after;
            (r.allowed, vec![r.clone()], r.headers, retry_after)
        } else {
            let items = request.items.iter().map(|i| pb::CheckItem {
                resource: i.resource.clone(),
                key: i.key.clone(),
                cost: i.cost,
            });
            let r = self.portcullis.check_many(&request.tenant, items).await?;
            (r.allowed, r.results, r.headers, r.retry_after)
        };
        let denied_items = if allowed {
            Vec::new()
        } else {
            results
                .iter()
                .enumerate()
                .filter(|(i, r)| !r.allowed && first_occurrence(request, *i))
                .filter_map(|(i, r)| Some((i, duration(r.retry_after.as_ref()?))))
                .collect()
        };
        Ok((
            Decision {
                allowed,
                retry_after: retry_after.as_ref().map(duration),
                headers: headers
                    .iter()
                    .filter_map(|h| {
                        Some((
                            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                            HeaderValue::from_str(&h.value).ok()?,
                        ))
                    })
                    .collect(),
                degraded: false,
            },
            denied_items,
        ))
    }

    /// A denial this process remembers for one of the request's items, if any.
    fn cached_denial(&self, request: &LimitRequest) -> Option<Decision> {
        let now = Instant::now();
        let wait = request
            .items
            .iter()
            .filter_map(|item| {
                let key = (
                    request.tenant.clone(),
                    item.resource.clone(),
                    item.key.clone(),
                );
                let entry = self.denied.get(&key)?;
                let (until, min_cost) = *entry;
                (until > now && item.cost.max(1) >= min_cost).then(|| until - now)
            })
            .max()?;
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(Decision {
            allowed: false,
            retry_after: Some(wait),
            headers: vec![(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))],
            degraded: false,
        })
    }

    fn remember(&self, request: &LimitRequest, index: usize, until: Instant) {
        let Some(item) = request.items.get(index) else {
            return;
        };
        if self.denied.len() >= DENY_CACHE_ENTRIES {
            let now = Instant::now();
            self.denied.retain(|_, (u, _)| *u > now);
            if self.denied.len() >= DENY_CACHE_ENTRIES {
                self.denied.clear();
            }
        }
        let key = (
            request.tenant.clone(),
            item.resource.clone(),
            item.key.clone(),
        );
        let cost = item.cost.max(1);
        self.denied
            .entry(key)
            .and_modify(|e| {
                if until > e.0 {
                    *e = (until, e.1.min(cost));
                }
            })
            .or_insert((until, cost));
    }

    /// The fail mode's decision.
    fn failed(&self) -> Decision {
        let decision = Decision {
            allowed: self.fail_mode == FailMode::Open,
            retry_after: None,
            headers: Vec::new(),
            degraded: true,
        };
        let outcome = match self.fail_mode {
            FailMode::Open => "failed_open",
            FailMode::Closed => "failed_closed",
        };
        self.outcome(decision, outcome)
    }

    /// Records `decision` and, in report-only mode, turns a denial into an admission.
    fn outcome(&self, mut decision: Decision, outcome: &'static str) -> Decision {
        let outcome = if self.report_only && !decision.allowed {
            decision.allowed = true;
            "denied_report_only"
        } else {
            outcome
        };
        metrics::counter!(RATELIMIT_DECISIONS, "outcome" => outcome).increment(1);
        decision
    }
}

/// True when no earlier item of the request has the same (resource, key): a later one was
/// decided on top of the earlier one's take, which a denied call never made.
fn first_occurrence(request: &LimitRequest, index: usize) -> bool {
    let item = &request.items[index];
    !request.items[..index]
        .iter()
        .any(|e| e.resource == item.resource && e.key == item.key)
}

fn duration(d: &prost_types::Duration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

/// Limits every request (see the module docs).
#[derive(Clone)]
pub struct RateLimitLayer {
    /// Decides.
    limiter: RateLimiter,
    /// Reads each request's limits.
    limits: RequestLimits,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Limits the requests `limits` names with `limiter`.
    pub fn new(
        limiter: RateLimiter,
        limits: impl Fn(&http::request::Parts) -> Option<LimitRequest> + Send + Sync + 'static,
    ) -> Self {
        Self {
            limiter,
            limits: Arc::new(limits),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S, B, R> Service<http::Request<B>> for RateLimitService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let grpc = is_grpc(&request);
            let (parts, body) = request.into_parts();
            let Some(limits) = (layer.limits)(&parts) else {
                return inner.call(http::Request::from_parts(parts, body)).await;
            };
            let decision = layer.limiter.decide(&limits).await;
            if !decision.allowed {
                return Ok(denied(grpc, &decision));
            }
            let mut response = inner.call(http::Request::from_parts(parts, body)).await?;
            if !layer.limiter.report_only {
                for (name, value) in decision.headers {
                    response.headers_mut().append(name, value);
                }
            }
            Ok(response)
        })
    }
}

/// 429 (gRPC `RESOURCE_EXHAUSTED` with `RetryInfo`) for a denial, 503 (`UNAVAILABLE`) for
/// the closed fail mode.
fn denied<R: Default>(grpc: bool, decision: &Decision) -> http::Response<R> {
    if decision.degraded {
        return refusal(
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            Status::unavailable("rate limiter unavailable"),
            &[],
        );
    }
    let mut details = ErrorDetails::new();
    if let Some(wait) = decision.retry_after {
        details.set_retry_info(Some(wait));
    }
    let status = Status::with_error_details(Code::ResourceExhausted, "rate limited", details);
    refusal(
        grpc,
        StatusCode::TOO_MANY_REQUESTS,
        status,
        &decision.headers,
    )
}
