//! W3C trace context (`traceparent`/`tracestate`) in and out of HTTP headers, which
//! gRPC metadata also is.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent carried by these headers (an empty context when there is none).
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Writes `span`'s context into `headers` as `traceparent`/`tracestate`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// Writes the current span's context into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&tracing::Span::current(), headers);
}

/// Makes `span` a child of the remote parent in `headers`, if there is one.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    let parent = extract(headers);
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled, in which case there is nothing to link.
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of a remote parent given as a W3C `traceparent` value (as
/// CloudEvents and Lambda's trace header carry it), if it is well formed.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", value);
        continue_from(span, &headers);
    }
}

/// `span`'s context in the X-Ray form Lambda passes in `Lambda-Runtime-Trace-Id`
/// (`Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1`): the same 128-bit trace id
/// as W3C, split, so a function continues the caller's trace.
pub fn xray_header(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let trace = format!("{:032x}", span_context.trace_id());
    Some(format!(
        "Root=1-{}-{};Parent={:016x};Sampled={}",
        &trace[..8],
        &trace[8..],
        span_context.span_id(),
        u8::from(span_context.is_sampled())
    ))
}
