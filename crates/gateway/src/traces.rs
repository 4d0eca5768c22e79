//! The traces this process keeps (issue 20), served by the gateway: the query API the
//! console reads (`/traces/v1`) and the OTLP receivers functions export to
//! (`POST /v1/traces`, HTTP/protobuf; gRPC `TraceService/Export`).
//!
//! Reading traces is the service key's (the admin view): a trace shows every
//! caller's requests. Sending spans needs any valid credential (a function's token);
//! each stored span records who sent it (`minicloud.ingested_by`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::HeaderMap;
use minicloud_authz::{Authz, Caller};
use minicloud_proto::error::ApiError;
use minicloud_telemetry::log_store::{LogFilter, LogRecord, LogStore};
use minicloud_telemetry::shared_store::SharedStore;
use minicloud_telemetry::trace_store::{
    StoredSpan, TraceFilter, TraceStore, TraceSummary, from_otlp, unix_nano_of_seconds,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// Largest OTLP export accepted.
pub(crate) const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct TracesState {
    pub(crate) authz: Arc<Authz>,
    /// Where spans received over OTLP go: this process's store, which forwards them
    /// to the shared one when there is one.
    pub(crate) ingest: Arc<TraceStore>,
    pub(crate) kept: Kept,
}

/// Where kept traces and lines are read from: this process's stores (`up`: every
/// service runs here) or the store every process shares (`serve`).
#[derive(Debug, Clone)]
pub(crate) enum Kept {
    InProcess {
        traces: Arc<TraceStore>,
        logs: Arc<LogStore>,
    },
    Shared(SharedStore),
}

fn unavailable(error: minicloud_telemetry::shared_store::Error) -> ApiError {
    ApiError::unavailable("the shared trace store is unavailable").with_source(error)
}

impl Kept {
    async fn list(&self, filter: TraceFilter) -> Result<Vec<TraceSummary>, ApiError> {
        match self {
            Kept::InProcess { traces, .. } => {
                let traces = Arc::clone(traces);
                tokio::task::spawn_blocking(move || traces.list(&filter))
                    .await
                    .map_err(ApiError::internal)
            }
            Kept::Shared(shared) => shared.list(&filter).await.map_err(unavailable),
        }
    }

    async fn trace(&self, trace_id: &str) -> Result<Option<Vec<StoredSpan>>, ApiError> {
        match self {
            Kept::InProcess { traces, .. } => Ok(traces.trace(trace_id)),
            Kept::Shared(shared) => shared.trace(trace_id).await.map_err(unavailable),
        }
    }

    async fn trace_of_request(&self, request_id: &str) -> Result<Option<String>, ApiError> {
        match self {
            Kept::InProcess { traces, .. } => Ok(traces.trace_of_request(request_id)),
            Kept::Shared(shared) => shared
                .trace_of_request(request_id)
                .await
                .map_err(unavailable),
        }
    }

    async fn lines(&self, filter: &LogFilter) -> Result<Vec<LogRecord>, ApiError> {
        match self {
            Kept::InProcess { logs, .. } => Ok(logs.query(filter)),
            Kept::Shared(shared) => shared.lines(filter).await.map_err(unavailable),
        }
    }

    /// (spans held, the bound).
    async fn usage(&self) -> Result<(usize, usize), ApiError> {
        match self {
            Kept::InProcess { traces, .. } => Ok((traces.usage().0, traces.limits().max_spans)),
            Kept::Shared(shared) => Ok((
                shared.span_count().await.map_err(unavailable)?,
                shared.limits().max_spans,
            )),
        }
    }
}

impl FromRef<TracesState> for Arc<Authz> {
    fn from_ref(state: &TracesState) -> Self {
        Arc::clone(&state.authz)
    }
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_service() {
        Ok(())
    } else if caller.uid.is_none() && caller.role == minicloud_authz::Role::Anon {
        Err(ApiError::unauthenticated(
            "traces are the admin's: send the service key",
        ))
    } else {
        Err(ApiError::forbidden(
            "traces show every caller's requests: only the service key may read them",
        ))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TraceQuery {
    /// Traces with a span of this service (`gateway`, `storage`, a function's name).
    service: Option<String>,
    /// A substring of the root span's name (`/storage/v1/object`).
    route: Option<String>,
    /// `error` or `ok`.
    status: Option<String>,
    min_duration_ms: Option<u64>,
    /// Unix seconds: traces that started at or after.
    since: Option<u64>,
    /// A substring of any span's name or attribute value (a request id, a path).
    text: Option<String>,
    /// 1–1000, default 50.
    limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TraceList {
    traces: Vec<TraceSummary>,
    /// Spans held and the store's bound.
    spans: usize,
    max_spans: usize,
}

#[utoipa::path(get, path = "/traces/v1/traces", tag = "traces", params(TraceQuery),
    responses((status = 200, body = TraceList), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<TracesState>,
    caller: Caller,
    query: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TraceList>, ApiError> {
    admin_only(&caller)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let error = match query.status.as_deref() {
        None => None,
        Some("error") => Some(true),
        Some("ok") => Some(false),
        Some(_) => return Err(ApiError::invalid("status is error or ok")),
    };
    for (name, value) in [
        ("service", &query.service),
        ("route", &query.route),
        ("text", &query.text),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(ApiError::invalid(format!("{name} longer than 256 bytes")));
        }
    }
    let filter = TraceFilter {
        service: query.service,
        route: query.route,
        error,
        min_duration: query.min_duration_ms.map(Duration::from_millis),
        since_unix_nano: query.since.map(unix_nano_of_seconds),
        text: query.text,
        limit,
    };
    let traces = state.kept.list(filter).await?;
    let (spans, max_spans) = state.kept.usage().await?;
    Ok(Json(TraceList {
        traces,
        spans,
        max_spans,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TraceOut {
    trace_id: String,
    /// By start time; `parent_span_id` links them into the waterfall.
    spans: Vec<StoredSpan>,
}

#[utoipa::path(get, path = "/traces/v1/traces/{trace_id}", tag = "traces", params(("trace_id" = String, Path, description = "32 hex digits, or a request id (`req_…`)")),
    responses((status = 200, body = TraceOut), (status = 404, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub(crate) async fn get(
    State(state): State<TracesState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TraceOut>, ApiError> {
    admin_only(&caller)?;
    let trace_id = if id.starts_with("req_") && id.len() <= 64 {
        state
            .kept
            .trace_of_request(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("no kept trace has this request id"))?
    } else if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id.to_ascii_lowercase()
    } else {
        return Err(ApiError::invalid(
            "a trace id is 32 hex digits (or give a request id, req_…)",
        ));
    };
    let spans = state
        .kept
        .trace(&trace_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such trace (or it aged out of the store)"))?;
    Ok(Json(TraceOut { trace_id, spans }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    request_id: Option<String>,
    /// The lines of every request of this trace.
    trace_id: Option<String>,
    service: Option<String>,
    /// `error`, `warn`, `info`, `debug`: this level and more severe.
    level: Option<String>,
    /// A substring of the message or a field.
    text: Option<String>,
    /// 1–1000, default 200.
    limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LogList {
    /// Oldest first.
    lines: Vec<LogRecord>,
}

#[utoipa::path(get, path = "/traces/v1/logs", tag = "traces", params(LogQuery),
    responses((status = 200, body = LogList), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<TracesState>,
    caller: Caller,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogList>, ApiError> {
    admin_only(&caller)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let level = query
        .level
        .as_deref()
        .map(|l| l.parse::<tracing::Level>())
        .transpose()
        .map_err(|_| ApiError::invalid("level is error, warn, info, debug or trace"))?;
    let mut request_ids = query.request_id.map(|id| vec![id]);
    if let Some(trace_id) = &query.trace_id {
        if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid("trace_id is 32 hex digits"));
        }
        let spans = state
            .kept
            .trace(&trace_id.to_ascii_lowercase())
            .await?
            .unwrap_or_default();
        let mut ids: Vec<String> = spans
            .iter()
            .filter_map(|s| s.attributes.get("request_id").cloned())
            .collect();
        ids.sort();
        ids.dedup();
        request_ids = Some(match request_ids {
            Some(given) => given.into_iter().filter(|id| ids.contains(id)).collect(),
            None => ids,
        });
    }
    let filter = LogFilter {
        request_ids,
        service: query.service,
        level,
        text: query.text,
        limit,
    };
    let lines = state.kept.lines(&filter).await?;
    Ok(Json(LogList { lines }))
}

fn ingested_by(caller: &Caller) -> String {
    match &caller.uid {
        Some(uid) => format!("{}:{uid}", caller.role.name()),
        None => caller.role.name().to_owned(),
    }
}

fn must_be_signed_in(caller: &Caller) -> Result<(), ApiError> {
    if caller.uid.is_none() && caller.role == minicloud_authz::Role::Anon {
        return Err(ApiError::unauthenticated(
            "send spans with a credential (a function's MINICLOUD_TOKEN)",
        ));
    }
    Ok(())
}

/// OTLP/HTTP with protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`).
#[utoipa::path(post, path = "/v1/traces", tag = "traces",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf", description = "an OTLP ExportTraceServiceRequest"),
    responses((status = 200, description = "kept", content_type = "application/x-protobuf"), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 401, body = minicloud_proto::error::ErrorBody), (status = 413, body = minicloud_proto::error::ErrorBody), (status = 415, body = minicloud_proto::error::ErrorBody)))]
pub(crate) async fn receive_http(
    State(state): State<TracesState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    must_be_signed_in(&caller)?;
    let body = body.map_err(|rejection| {
        let code = if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
            minicloud_proto::error::ErrorCode::PayloadTooLarge
        } else {
            minicloud_proto::error::ErrorCode::InvalidArgument
        };
        ApiError::new(
            code,
            format!(
                "an OTLP export up to {} MiB: {}",
                MAX_EXPORT_BYTES / 1024 / 1024,
                rejection.body_text()
            ),
        )
    })?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return Err(ApiError::new(
            minicloud_proto::error::ErrorCode::UnsupportedMediaType,
            "OTLP/HTTP here is protobuf (application/x-protobuf)",
        ));
    }
    let request = ExportTraceServiceRequest::decode(body)
        .map_err(|e| ApiError::invalid(format!("not an OTLP ExportTraceServiceRequest: {e}")))?;
    state
        .ingest
        .insert(from_otlp(request, &ingested_by(&caller)));
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    axum::response::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(axum::body::Body::from(answer))
        .map_err(ApiError::internal)
}

/// OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
#[derive(Debug, Clone)]
pub(crate) struct OtlpGrpc(pub(crate) TracesState);

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        must_be_signed_in(&caller)?;
        self.0
            .ingest
            .insert(from_otlp(request.into_inner(), &ingested_by(&caller)));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
