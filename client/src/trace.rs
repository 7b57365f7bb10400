//! The W3C `traceparent` of the current span, when the `otel` feature is on.

use tonic::metadata::{Ascii, MetadataValue};

/// The current tracing span's OpenTelemetry context as a `traceparent` value, if it has a
/// valid one.
#[cfg(feature = "otel")]
pub(crate) fn current() -> Option<MetadataValue<Ascii>> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    )
    .parse()
    .ok()
}

/// Without the `otel` feature there is no context to propagate.
#[cfg(not(feature = "otel"))]
pub(crate) fn current() -> Option<MetadataValue<Ascii>> {
    None
}
