//! W3C trace context (`traceparent`/`tracestate`) in and out of HTTP headers, which
//! gRPC metadata also is.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::span_keeper::SpanIds;

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

/// `00-<trace id>-<span id>-01`: a sampled W3C `traceparent`.
fn traceparent(ids: SpanIds) -> String {
    format!("00-{:032x}-{:016x}-01", ids.trace_id, ids.span_id)
}

/// The trace and parent span of a W3C `traceparent` (version 00 and the fields any
/// later version starts with), if it is well formed and names real ids.
fn parse_traceparent(value: &str) -> Option<SpanIds> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let ids = SpanIds {
        trace_id: u128::from_str_radix(trace, 16).ok()?,
        span_id: u64::from_str_radix(span, 16).ok()?,
    };
    (ids.trace_id != 0 && ids.span_id != 0).then_some(ids)
}

/// Writes `span`'s context into `headers` as `traceparent`/`tracestate`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if let Some(ids) = crate::span_keeper::ids_of(span) {
        if let Ok(value) = http::HeaderValue::from_str(&traceparent(ids)) {
            headers.insert("traceparent", value);
        }
        return;
    }
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
    let kept = crate::span_keeper::with_recording(span, |recording| {
        if let Some(parent) = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            recording.continue_remote(parent);
        }
    });
    if kept.is_some() {
        return;
    }
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
    if let Some(ids) = crate::span_keeper::ids_of(span) {
        let trace = format!("{:032x}", ids.trace_id);
        return Some(format!(
            "Root=1-{}-{};Parent={:016x};Sampled=1",
            &trace[..8],
            &trace[8..],
            ids.span_id
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let ids =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(ids.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(ids.span_id, 0xb7ad6b7169203331);
        assert_eq!(
            traceparent(ids),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later")
                .is_some()
        );
    }
}
