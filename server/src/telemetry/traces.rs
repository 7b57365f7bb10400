//! OpenTelemetry traces: the OTLP/gRPC exporter, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and a tower layer that opens a span for every
//! RPC as a child of the caller's W3C `traceparent`.
//!
//! Spans are `tracing` spans; the `tracing-opentelemetry` layer turns them into OpenTelemetry
//! spans only when an exporter is configured. Without one there is no exporter, no header
//! parsing and no OpenTelemetry context: only the `tracing` spans the logs already show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::registry::LookupSpan;
use zeroize::Zeroizing;

use crate::env::EnvSource;

use super::methods::method_label;

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "portcullis";

/// How long exit waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Only this crate's spans and events are exported: not the audit log (its own record), not
/// the HTTP/2 and exporter internals (which would trace their own exports).
const EXPORTED_TARGET: &str = "portcullis_server";

/// Health checks (Kubernetes probes every few seconds) get no span: a trace per probe says
/// nothing and drowns the others.
const UNTRACED_SERVICE: &str = "/grpc.health.v1.Health/";

/// True once an exporter is installed: only then is `traceparent` parsed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Why traces could not be set up: a configuration error, reported at start.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A standard OTEL_* variable has a value Portcullis does not support, or names a file
    /// that cannot be read.
    #[error("{variable}: {reason}")]
    Invalid {
        /// The variable.
        variable: String,
        /// What is wrong.
        reason: String,
    },
    /// The OTLP exporter rejected its settings (endpoint, headers, timeout...).
    #[error("OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The installed tracer provider; [`Traces::shutdown`] exports what is still buffered.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sets up the OTLP/gRPC exporter when the environment asks for one; `None` when it does
    /// not (no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    ///
    /// The exporter and the batch span processor read the other standard variables themselves
    /// (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `_TIMEOUT`, `_COMPRESSION`, `OTEL_BSP_*`), as do
    /// the sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; default parent-based
    /// always-on) and the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    ///
    /// Must run inside the tokio runtime: the batch processor is a task on it.
    pub fn from_env(env: &dyn EnvSource) -> Result<Option<Self>, TracesError> {
        let is_true = |v: String| v.trim().eq_ignore_ascii_case("true");
        if env.non_empty("OTEL_SDK_DISABLED").is_some_and(is_true) {
            return Ok(None);
        }
        if let Some(exporter) = env.non_empty("OTEL_TRACES_EXPORTER") {
            match exporter.trim().to_ascii_lowercase().as_str() {
                "otlp" => {}
                "none" => return Ok(None),
                other => {
                    return Err(TracesError::Invalid {
                        variable: "OTEL_TRACES_EXPORTER".into(),
                        reason: format!("only otlp (or none) is supported, not {other:?}"),
                    });
                }
            }
        }
        let Some((_, endpoint)) = signal_var(env, "ENDPOINT") else {
            return Ok(None);
        };
        if let Some((variable, protocol)) = signal_var(env, "PROTOCOL")
            && protocol.trim() != "grpc"
        {
            return Err(TracesError::Invalid {
                variable,
                reason: format!("only grpc is supported, not {:?}", protocol.trim()),
            });
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if uses_tls(env, &endpoint) {
            exporter = exporter.with_tls_config(tls_config(env)?);
        }
        let exporter = exporter.build()?;
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource(env))
            .build();
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer that turns this crate's spans into OpenTelemetry spans (at debug
    /// level and above, so store calls are included; events at info and above become span
    /// events).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let scope = InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = self.provider.tracer_with_scope(scope);
        tracing_subscriber::Layer::with_filter(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false),
            exported(),
        )
    }

    /// Exports the spans still buffered and stops the exporter, waiting at most a few seconds
    /// for the collector.
    pub async fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        let provider = self.provider;
        // The provider blocks until the batch task (on this runtime) has exported.
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Err(_) => tracing::warn!(
                timeout = ?SHUTDOWN_TIMEOUT,
                "trace exporter did not finish in time; the last spans may be lost"
            ),
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_<suffix>`, else `OTEL_EXPORTER_OTLP_<suffix>`: the variable set
/// and its value.
fn signal_var(env: &dyn EnvSource, suffix: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| env.non_empty(&name).map(|value| (name, value)))
}

/// Whether the exporter talks TLS: an `https://` endpoint, or one without a scheme unless
/// `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE=true` (as the exporter reads it).
fn uses_tls(env: &dyn EnvSource, endpoint: &str) -> bool {
    let endpoint = endpoint.trim();
    if endpoint.starts_with("https://") {
        return true;
    }
    let insecure = signal_var(env, "INSECURE").is_some_and(|(_, v)| v.trim() == "true");
    !endpoint.contains("://") && !insecure
}

/// TLS to the collector: trusting the PEM bundle of `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`,
/// else the public web roots; presenting the client certificate of
/// `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` with the key of `..._CLIENT_KEY` (mTLS).
fn tls_config(env: &dyn EnvSource) -> Result<ClientTlsConfig, TracesError> {
    let read = |(name, path): (String, String)| {
        std::fs::read(&path)
            .map(Zeroizing::new)
            .map_err(|e| TracesError::Invalid {
                variable: name,
                reason: format!("cannot read {path}: {e}"),
            })
    };
    let mut tls = ClientTlsConfig::new();
    tls = match signal_var(env, "CERTIFICATE") {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(&*read(ca)?)),
        None => tls.with_webpki_roots(),
    };
    match (
        signal_var(env, "CLIENT_CERTIFICATE"),
        signal_var(env, "CLIENT_KEY"),
    ) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(&*read(cert)?, &*read(key)?));
        }
        (None, None) => {}
        (cert, _) => {
            return Err(TracesError::Invalid {
                variable: if cert.is_some() {
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY".into()
                } else {
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into()
                },
                reason: "a client certificate needs both the certificate and its key".into(),
            });
        }
    }
    Ok(tls)
}

/// What the OpenTelemetry layer sees: this crate's spans at debug and above, its events at
/// info and above.
fn exported() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|m: &tracing::Metadata<'_>| {
        let ours = m.target() == EXPORTED_TARGET
            || m.target()
                .strip_prefix(EXPORTED_TARGET)
                .is_some_and(|rest| rest.starts_with("::"));
        let level = if m.is_span() {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        ours && *m.level() <= level
    })
    .with_max_level_hint(tracing::Level::DEBUG)
}

/// The resource: `service.name` "portcullis" and `service.version`, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` (later wins).
fn resource(env: &dyn EnvSource) -> Resource {
    let builder = Resource::builder_empty()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match env.non_empty("OTEL_SERVICE_NAME") {
        Some(name) => builder.with_service_name(name),
        None => builder,
    }
    .build()
}

/// gRPC metadata as an OpenTelemetry carrier.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span name, `rpc.service` and `rpc.method` of a request path, from the bounded set of
/// served methods (anything else is "other").
fn rpc_names(path: &str) -> (&'static str, &'static str, &'static str) {
    let label = method_label(path);
    let name = label.strip_prefix('/').unwrap_or(label);
    match name.split_once('/') {
        Some((service, method)) => (name, service, method),
        None => (name, name, name),
    }
}

/// Status codes that mean the server failed (the OpenTelemetry RPC conventions): the span's
/// status is set to error for these only, not for a caller's mistake.
fn is_server_error(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    )
}

/// The server span of a call to `path`, child of the caller's `traceparent`/`tracestate` in
/// `headers`; `None` without an exporter and for health checks. Without an exporter the span
/// would only label log lines, and keeping a span per call in the subscriber's registry cost
/// about a third of a cheap call's CPU (measured with h2load and perf).
pub(crate) fn server_span(path: &str, headers: &http::HeaderMap) -> Option<tracing::Span> {
    if path.starts_with(UNTRACED_SERVICE) || !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let (name, service, method) = rpc_names(path);
    let span = tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        trace_id = Empty,
    );
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
        // The trace id in the log lines of this call, to find its trace.
        let trace_id = span.context().span().span_context().trace_id();
        span.record("trace_id", tracing::field::display(trace_id));
    }
    Some(span)
}

/// Records how the call of `span` ended; server-side failures mark the span as an error.
pub(crate) fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if is_server_error(code) {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_names_come_from_served_methods_only() {
        assert_eq!(
            rpc_names("/portcullis.v1.RateLimitService/Check"),
            (
                "portcullis.v1.RateLimitService/Check",
                "portcullis.v1.RateLimitService",
                "Check"
            )
        );
        assert_eq!(
            rpc_names("/portcullis.v1.RateLimitService/Nope"),
            ("other", "other", "other")
        );
    }

    #[test]
    fn only_server_failures_mark_the_span_as_error() {
        assert!(is_server_error(tonic::Code::Internal));
        assert!(is_server_error(tonic::Code::Unavailable));
        assert!(!is_server_error(tonic::Code::Ok));
        assert!(!is_server_error(tonic::Code::InvalidArgument));
        assert!(!is_server_error(tonic::Code::Unauthenticated));
        assert!(!is_server_error(tonic::Code::ResourceExhausted));
    }

    #[test]
    fn traceparent_is_read_from_grpc_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert("tracestate", http::HeaderValue::from_static("vendor=x"));
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
    }
}
