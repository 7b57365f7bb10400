//! tower layers for services in front of which Portcullis stands (`feature = "tower"`), usable
//! under axum's `Router::layer` and tonic's `Server::builder().layer`: [`RateLimitLayer`]
//! decides each request with `Check`/`CheckMany`, [`AuthLayer`] verifies its bearer token with
//! a [`crate::verify::Verifier`]. Both answer gRPC requests (`content-type: application/grpc`)
//! with a gRPC status and others with an HTTP status.

mod auth;
mod rate_limit;

use http::HeaderValue;
use tonic::Status;

pub use self::auth::{AuthLayer, AuthService, TenantOf};
pub use self::rate_limit::{
    Decision, FailMode, LimitItem, LimitRequest, RateLimitLayer, RateLimitService, RateLimiter,
    RequestLimits,
};

/// True for a gRPC request, answered with a gRPC status rather than an HTTP one.
fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// An answer made by a layer instead of the inner service: `http` for HTTP clients, `grpc`
/// for gRPC ones, with `headers` on either.
fn refusal<B: Default>(
    grpc: bool,
    http_status: http::StatusCode,
    status: Status,
    headers: &[(http::HeaderName, HeaderValue)],
) -> http::Response<B> {
    let mut response = if grpc {
        status.into_http::<B>()
    } else {
        let mut r = http::Response::new(B::default());
        *r.status_mut() = http_status;
        r
    };
    for (name, value) in headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}
