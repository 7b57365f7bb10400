//! A tower layer that counts every gRPC call by method and status code, times it, and (when
//! traces are exported) runs it in a span joined to the caller's trace.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use tracing::Instrument;

use super::methods::method_label;
use super::metrics::{RPC_DURATION, RPC_REQUESTS, code_name};
use super::traces;

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
