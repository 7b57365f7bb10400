//! A tower layer that counts every gRPC call by method and status code, times it, and (when
//! traces are exported) runs it in a span joined to the caller's trace.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tower::{Layer, Service};

use tracing::Instrument;

use super::metrics::{RPC_DURATION, RPC_REQUESTS, code_name};
use super::traces;

/// The label of a path that names no served method, so unknown paths cannot grow the labels.
const OTHER: &str = "other";

/// Every method path (`/package.Service/Method`) in the served descriptor sets, built once.
fn known_methods() -> &'static HashSet<&'static str> {
    static METHODS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let sets = [
            portcullis_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashSet::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        let path =
                            format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        // Leaked once per process: a fixed set of label values lives as long
                        // as the recorder that holds them.
                        methods.insert(&*Box::leak(path.into_boxed_str()));
                    }
                }
            }
        }
        methods
    })
}

/// The method label of a request path.
pub(crate) fn method_label(path: &str) -> &'static str {
    known_methods().get(path).copied().unwrap_or(OTHER)
}

/// Adds [`RpcTelemetry`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTelemetryLayer;

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// Counts and times the calls `inner` answers and, when traces are exported, runs each in a
/// server span joined to the caller's trace.
#[derive(Debug, Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
}

/// The gRPC status of an answer: tonic puts an error's `grpc-status` in the response headers
/// (a trailers-only response); a response without it carries OK in its trailers.
fn grpc_code<R, E>(result: &Result<http::Response<R>, E>) -> tonic::Code {
    match result {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(tonic::Code::Ok, tonic::Code::from_i32),
        Err(_) => tonic::Code::Unknown,
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = method_label(path);
        let span = traces::server_span(path, request.headers());
        let started = Instant::now();
        let call = match &span {
            Some(span) => span.in_scope(|| self.inner.call(request)),
            None => self.inner.call(request),
        };
        let status_to = span.clone();
        let observed = async move {
            let result = call.await;
            let code = grpc_code(&result);
            metrics::counter!(RPC_REQUESTS, "method" => method, "code" => code_name(code))
                .increment(1);
            metrics::histogram!(RPC_DURATION, "method" => method)
                .record(started.elapsed().as_secs_f64());
            if let Some(span) = &status_to {
                traces::record_status(span, code);
            }
            result
        };
        match span {
            Some(span) => Box::pin(observed.instrument(span)),
            None => Box::pin(observed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/portcullis.v1.RateLimitService/Check"),
            "/portcullis.v1.RateLimitService/Check"
        );
        assert_eq!(
            method_label("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/portcullis.v1.RateLimitService/Nope"), OTHER);
        assert_eq!(method_label("/x"), OTHER);
    }
}
