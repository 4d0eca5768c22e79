//! The middleware every server runs: request ids, the server span continuing the
//! caller's W3C trace context, request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use futures::FutureExt as _;
use http::HeaderValue;
use tracing::Instrument;

use crate::metrics::{RequestLabels, ServiceMetrics};
use minicloud_proto::error::{ApiError, REQUEST_ID};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ServerTelemetry {
    pub service: &'static str,
    pub metrics: Arc<ServiceMetrics>,
}

/// Accepts a caller's request id when it is short and printable, so that a chain of
/// hops shares one id; otherwise mints `req_<uuidv7>`.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()))
}

/// On a response whose access line this process has written.
#[derive(Debug, Clone, Copy)]
struct AccessLogged;

pub async fn middleware(
    State(telemetry): State<ServerTelemetry>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(&request);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let route = if is_grpc {
        path.clone()
    } else {
        request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| matched.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".to_owned())
    };
    let span_name = if is_grpc {
        path.trim_start_matches('/').to_owned()
    } else {
        format!("{method} {route}")
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %span_name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
        rpc.system = if is_grpc { "grpc" } else { "" },
        minicloud.service = telemetry.service,
        request_id = %request_id,
        // Filled in by the invoker when the request invokes a function.
        function = tracing::field::Empty,
        faas.invocation_id = tracing::field::Empty,
    );
    crate::trace_context::continue_from(&span, request.headers());

    let handled = async move {
        // A panicking handler must not cost the caller its connection (and, with the
        // gateway dispatching in-process, everyone else's on that connection): it is
        // an internal error like any other, logged with its request id.
        match std::panic::AssertUnwindSafe(next.run(request))
            .catch_unwind()
            .await
        {
            Ok(response) => response,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a handler panicked".to_owned());
                ApiError::internal(format!("handler panicked: {message}")).into_response()
            }
        }
    };
    let mut response = REQUEST_ID
        .scope(request_id.clone(), handled)
        .instrument(span.clone())
        .await;

    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // The access line: kept with the request's id (the console's logs), printed only
    // when `RUST_LOG` asks for `minicloud_access`. One per request and process: a
    // gateway that dispatched the request to a service in the same process finds
    // the service's line already written (its response says so), and a second line
    // would cost every request an event and say nothing new.
    if response.extensions().get::<AccessLogged>().is_none() {
        span.in_scope(|| {
            tracing::info!(
                target: "minicloud_access",
                status = status.as_u16(),
                duration_us = started.elapsed().as_micros() as u64,
                "{method} {path}"
            );
        });
        response.extensions_mut().insert(AccessLogged);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let labels = RequestLabels {
        method: method.to_string(),
        route,
        status: status.as_u16(),
    };
    telemetry.metrics.http_requests.get_or_create(&labels).inc();
    telemetry
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
