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

/// The W3C `traceparent` equivalent of an X-Ray trace header, if it is well formed.
pub fn traceparent_from_xray(header: &str) -> Option<String> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = "01";
    for part in header.split(';') {
        match part.trim().split_once('=') {
            Some(("Root", value)) => root = Some(value),
            Some(("Parent", value)) => parent = Some(value),
            Some(("Sampled", "0")) => sampled = "00",
            _ => {}
        }
    }
    let mut pieces = root?.split('-');
    let (Some("1"), Some(time), Some(rest), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return None;
    };
    let trace = format!("{time}{rest}");
    let parent = parent?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&trace, 32) || !hex(parent, 16) {
        return None;
    }
    Some(format!(
        "00-{}-{}-{sampled}",
        trace.to_ascii_lowercase(),
        parent.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod xray_tests {
    #[test]
    fn xray_headers_map_to_traceparent() {
        assert_eq!(
            super::traceparent_from_xray(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            )
            .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
        );
        assert_eq!(
            super::traceparent_from_xray(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
            )
            .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00")
        );
        for bad in [
            "",
            "Root=1-xyz;Parent=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Parent=53995c3f42cd8ad8",
        ] {
            assert_eq!(super::traceparent_from_xray(bad), None, "{bad}");
        }
    }
}
