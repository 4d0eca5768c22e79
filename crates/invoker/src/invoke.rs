//! Invoking over HTTP: `POST /functions/v1/{name}/invoke` and the AWS Lambda Invoke
//! API (`POST /2015-03-31/functions/{name}/invocations`), and the logs endpoint.

use minicloud_authz::sigv4;
use minicloud_authz::{Action, AwsAuthError, Resource};
use sha2::Digest as _;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorCode, Json};
use serde::Deserialize;

use crate::Invoker;
use crate::engine::{InvokeError, InvokeRequest};
use crate::logs::{LogFilter, LogLine, LogStream};

/// Lambda's payload limits.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
pub const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;

/// Which surface is asking: errors are shaped for it.
#[derive(Clone, Copy, PartialEq)]
enum Surface {
    Minicloud,
    Lambda,
}

/// An error on either surface: ours is `{"error":{code,message,request_id}}`, the
/// Lambda API's is `{"Type":"User","message"}` with `x-amzn-ErrorType`, which is
/// what AWS SDKs parse.
struct InvokeFailure {
    surface: Surface,
    error: ApiError,
    lambda_type: &'static str,
}

impl InvokeFailure {
    fn new(surface: Surface, error: ApiError) -> InvokeFailure {
        let lambda_type = match error.code {
            ErrorCode::NotFound => "ResourceNotFoundException",
            ErrorCode::TooManyRequests | ErrorCode::BudgetExceeded => "TooManyRequestsException",
            ErrorCode::PayloadTooLarge => "RequestTooLargeException",
            ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => "AccessDeniedException",
            ErrorCode::InvalidArgument | ErrorCode::UnsupportedMediaType => {
                "InvalidRequestContentException"
            }
            _ => "ServiceException",
        };
        InvokeFailure {
            surface,
            error,
            lambda_type,
        }
    }
}

impl InvokeFailure {
    /// Names the Lambda exception where the error code alone does not.
    fn with_type(mut self, lambda_type: &'static str) -> InvokeFailure {
        self.lambda_type = lambda_type;
        self
    }
}

impl IntoResponse for InvokeFailure {
    fn into_response(self) -> Response {
        let lambda_type = HeaderValue::from_static(self.lambda_type);
        // A capped function is throttled, as Lambda throttles (429), whatever the
        // body's code says.
        let capped = self.error.code == ErrorCode::BudgetExceeded;
        let mut response = match self.surface {
            Surface::Minicloud => self.error.into_response(),
            Surface::Lambda => {
                let status = match capped {
                    true => StatusCode::TOO_MANY_REQUESTS,
                    false => self.error.code.http_status(),
                };
                let kind = if self.error.code.is_server_error() {
                    "Service"
                } else {
                    "User"
                };
                let body = serde_json::json!({
                    "Type": kind,
                    "message": self.error.public_message(),
                });
                (status, axum::Json(body)).into_response()
            }
        };
        if capped {
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        }
        response
            .headers_mut()
            .insert("x-amzn-errortype", lambda_type);
        response
    }
}

/// Reads at most `limit` bytes; a larger body is drained (so the 413 reaches the
/// client rather than a reset) and refused.
pub(crate) async fn read_payload(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    const DRAIN_AT_MOST: usize = 32 * 1024 * 1024;
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                out.extend_from_slice(&data);
            } else if seen > DRAIN_AT_MOST {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("Request must be smaller than {limit} bytes for the invoke operation"),
        ));
    }
    Ok(out.freeze())
}

#[utoipa::path(post, path = "/functions/v1/{name}/invoke", tag = "functions", params(("name" = String, Path)),
    request_body(content = Object, description = "the event: any JSON (at most 6 MB; `X-Amz-Invocation-Type: Event` queues it)"),
    responses((status = 200, description = "the function's answer, as it returned it", body = Object), (status = 202, description = "queued (Event)"), (status = 404, body = minicloud_proto::error::ErrorBody), (status = 413, body = minicloud_proto::error::ErrorBody)))]
pub async fn invoke(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(invoker, caller, name, headers, body, Surface::Minicloud).await
}

/// The Lambda API's error body, in AWS's shape so the AWS SDKs raise their typed
/// errors; only described here, for the OpenAPI spec ([`InvokeFailure`] writes it).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LambdaErrorBody {
    #[serde(rename = "Type")]
    #[schema(example = "User")]
    kind: String,
    message: String,
}

/// AWS Lambda's own `Invoke` (its path and headers), for the AWS SDKs and CLI.
#[utoipa::path(post, path = "/2015-03-31/functions/{name}/invocations", tag = "lambda", params(("name" = String, Path)),
    request_body(content = Object, description = "the event: any JSON (at most 6 MB)"),
    responses((status = 200, description = "the function's answer (`X-Amz-Function-Error` set when it failed)", body = Object), (status = 202, description = "queued (InvocationType Event)"), (status = 404, description = "no such function (ResourceNotFoundException)", body = LambdaErrorBody), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = LambdaErrorBody)))]
pub async fn lambda_invoke(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The Lambda API also accepts a full ARN or `name:qualifier`.
    let name = name
        .rsplit(":function:")
        .next()
        .unwrap_or(&name)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let limit = match payload_limit(&headers) {
        Ok(limit) => limit,
        Err(error) => return InvokeFailure::new(Surface::Lambda, error).into_response(),
    };
    match lambda_request(&invoker, &method, &uri, &headers, body, limit).await {
        Ok((caller, payload)) => {
            run_payload(invoker, caller, name, headers, payload, Surface::Lambda).await
        }
        Err(refusal) => *refusal,
    }
}

/// The caller and the body (at most `limit` bytes) of a request to the Lambda API.
/// Signed with an access key auth issued, the signature covers the body, so the
/// caller is known once it is read; otherwise the caller is whoever its bearer
/// token (or, under `minicloud up`, its token as access key id) says. A refusal is
/// the Lambda API's error.
pub(crate) async fn lambda_request(
    invoker: &Invoker,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Caller, Bytes), Box<Response>> {
    let fail =
        |error: ApiError| Box::new(InvokeFailure::new(Surface::Lambda, error).into_response());
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let signed = match sigv4::parse(authorization, uri.query(), headers) {
        Ok(signed) => signed,
        // AWS's common error for a signature that does not parse (400).
        Err(error) => {
            return Err(Box::new(
                InvokeFailure::new(Surface::Lambda, ApiError::invalid(error.to_string()))
                    .with_type("IncompleteSignatureException")
                    .into_response(),
            ));
        }
    };
    let Some(signed) = signed.filter(|s| is_access_key_id(&s.access_key_id)) else {
        let caller = invoker.0.authz.caller(authorization).await.map_err(fail)?;
        let payload = read_payload(body, limit).await.map_err(fail)?;
        return Ok((caller, payload));
    };
    let payload = read_payload(body, limit).await.map_err(fail)?;
    let payload_hash = hex::encode(sha2::Sha256::digest(&payload));
    let declared = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let request = sigv4::RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers,
        payload_hash: declared.unwrap_or(&payload_hash),
        double_encode_path: true,
    };
    let verified = match declared {
        Some(declared) if declared != payload_hash && declared != "UNSIGNED-PAYLOAD" => {
            Err(AwsAuthError::Signature(sigv4::SigV4Error::Mismatch))
        }
        _ => invoker.0.authz.aws_caller(&signed, &request).await,
    };
    match verified {
        Ok(caller) => Ok((caller, payload)),
        Err(error) => Err(Box::new(aws_auth_failure(error))),
    }
}

/// An error in the Lambda API's shape, named `lambda_type` where given (else by its
/// code, as for `Invoke`).
pub(crate) fn lambda_error(error: ApiError, lambda_type: Option<&'static str>) -> Response {
    let failure = InvokeFailure::new(Surface::Lambda, error);
    match lambda_type {
        Some(lambda_type) => failure.with_type(lambda_type).into_response(),
        None => failure.into_response(),
    }
}

/// AWS's access key ids (`AKIA…`, 20 characters), as auth issues them.
fn is_access_key_id(id: &str) -> bool {
    id.len() == 20 && id.starts_with("AKIA")
}

/// The Lambda API's answer to a refused signature: the exception types boto3 and
/// the AWS SDKs raise.
fn aws_auth_failure(error: AwsAuthError) -> Response {
    let (code, kind) = match &error {
        AwsAuthError::UnknownKey => (ErrorCode::PermissionDenied, "UnrecognizedClientException"),
        AwsAuthError::Signature(_) => (ErrorCode::PermissionDenied, "InvalidSignatureException"),
        AwsAuthError::Unavailable => (ErrorCode::Unavailable, "ServiceException"),
    };
    InvokeFailure::new(Surface::Lambda, ApiError::new(code, error.to_string()))
        .with_type(kind)
        .into_response()
}

/// The most an invocation of this type may carry (6 MB synchronous, 256 KB queued).
fn payload_limit(headers: &HeaderMap) -> Result<usize, ApiError> {
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation_type {
        "RequestResponse" | "DryRun" => Ok(MAX_SYNC_PAYLOAD),
        "Event" => Ok(MAX_ASYNC_PAYLOAD),
        other => Err(ApiError::invalid(format!(
            "X-Amz-Invocation-Type must be RequestResponse, Event or DryRun, not {other:?}"
        ))),
    }
}

async fn run(
    invoker: Invoker,
    caller: Caller,
    name: String,
    headers: HeaderMap,
    body: Body,
    surface: Surface,
) -> Response {
    let fail = |error: ApiError| InvokeFailure::new(surface, error).into_response();
    let payload = match payload_limit(&headers) {
        Ok(limit) => match read_payload(body, limit).await {
            Ok(payload) => payload,
            Err(error) => return fail(error),
        },
        Err(error) => return fail(error),
    };
    run_payload(invoker, caller, name, headers, payload, surface).await
}

async fn run_payload(
    invoker: Invoker,
    caller: Caller,
    name: String,
    headers: HeaderMap,
    payload: Bytes,
    surface: Surface,
) -> Response {
    let fail = |error: ApiError| InvokeFailure::new(surface, error).into_response();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let invocation_type = header("x-amz-invocation-type").unwrap_or("RequestResponse");
    if let Err(error) = crate::registry::check_name(&name) {
        return fail(error);
    }
    if let Err(error) = invoker
        .0
        .authz
        .authorize_on(&caller, Action::FunctionsInvoke, Resource::Function(&name))
        .await
    {
        return fail(error);
    }
    if !payload.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return fail(ApiError::invalid(
            "Could not parse request body into json: the payload must be JSON",
        ));
    }
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    match invocation_type {
        "DryRun" => match crate::registry::exists(&invoker, &name).await {
            Ok(true) => StatusCode::NO_CONTENT.into_response(),
            Ok(false) => fail(not_found(&invoker, &name)),
            Err(error) => fail(error),
        },
        "Event" => match crate::registry::exists(&invoker, &name).await {
            Ok(false) => fail(not_found(&invoker, &name)),
            Err(error) => fail(error),
            Ok(true) => {
                match crate::function_subscriptions::enqueue_async(&invoker, &name, payload).await {
                    Ok(request_id) => {
                        let mut response = (
                            StatusCode::ACCEPTED,
                            axum::Json(serde_json::json!({"request_id": request_id})),
                        )
                            .into_response();
                        if let Ok(value) = HeaderValue::from_str(&request_id) {
                            response.headers_mut().insert("x-amzn-requestid", value);
                        }
                        response
                    }
                    Err(error) => fail(error),
                }
            }
        },
        _ => {
            let tail = header("x-amz-log-type") == Some("Tail");
            let request = InvokeRequest {
                log_tail: tail,
                owner: minicloud_metering::owner_of(&caller),
                span: tracing::Span::none(),
                payload,
                wait_for_slot: false,
                trace_id: None,
                client_context: header("x-amz-client-context").and_then(|b64| {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                    String::from_utf8(bytes).ok()
                }),
            };
            match sync_invoke(&invoker, &name, request).await {
                Ok(invoked) => invoked_response(invoked, tail),
                Err(error) => fail(error),
            }
        }
    }
}

fn not_found(invoker: &Invoker, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "Function not found: {}",
        invoker.0.engine.arn(name)
    ))
}

/// Runs a synchronous invocation for the request's span, whose context the function gets.
pub async fn sync_invoke(
    invoker: &Invoker,
    name: &str,
    mut request: InvokeRequest,
) -> Result<crate::engine::Invoked, ApiError> {
    // The request's own span (the invoker's server span, REST or gRPC) names the
    // function and, once chosen, the invocation: a span of its own per invoke added
    // its cost to every call and no bar worth seeing to the waterfall.
    let span = tracing::Span::current();
    span.record("function", name);
    // Lambda always sends a trace header; without a recorded trace, a fresh root.
    request.trace_id = minicloud_telemetry::trace_context::xray_header(&span).or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Some(format!(
            "Root=1-{}-{};Parent={};Sampled=0",
            &id[..8],
            &id[8..],
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ))
    });
    // Its own task: a caller that hangs up does not cancel the function (as on
    // Lambda) nor drop its instance mid-call. The task is not instrumented with the
    // span (an enter and exit on each of its polls, measured on the warm invoke with
    // traces kept); nothing in it logs per call, and it records the invocation's id
    // on the span it is handed.
    request.span = span;
    let engine = Arc::clone(&invoker.0.engine);
    let function = name.to_owned();
    tokio::spawn(async move { engine.invoke(&function, request).await })
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| match error {
            InvokeError::NotFound(_) => not_found(invoker, name),
            InvokeError::Throttled => ApiError::new(ErrorCode::TooManyRequests, "Rate Exceeded."),
            InvokeError::BudgetExceeded(budget) => ApiError::new(
                ErrorCode::BudgetExceeded,
                format!("budget {budget} is used up: calls to this function are capped until the month ends or the budget changes"),
            ),
            InvokeError::Api(error) => error,
        })
}

fn invoked_response(invoked: crate::engine::Invoked, tail: bool) -> Response {
    let (body, function_error) = match invoked.result {
        Ok(body) => (body, None),
        Err((body, _error_type)) => (body, Some("Unhandled")),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-amz-executed-version",
        HeaderValue::from_static("$LATEST"),
    );
    if let Ok(value) = HeaderValue::from_str(&invoked.request_id) {
        headers.insert("x-amzn-requestid", value);
    }
    if let Some(kind) = function_error {
        headers.insert("x-amz-function-error", HeaderValue::from_static(kind));
    }
    if tail {
        let text = invoked.logs.tail_of(&invoked.request_id);
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("x-amz-log-result", value);
        }
    }
    response
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only this invocation's lines.
    pub request_id: Option<String>,
    /// Lines with a larger `seq` (resume after the last one seen).
    pub after: Option<u64>,
    /// RFC 3339; lines at or after it.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Lines containing this text.
    pub contains: Option<String>,
    /// `stdout`, `stderr` or `platform`.
    pub stream: Option<String>,
    /// At most this many (newest), 1 to 1000, default 100.
    pub limit: Option<usize>,
    /// Keep the response open and stream new lines (Server-Sent Events).
    pub follow: Option<bool>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
}

#[utoipa::path(get, path = "/functions/v1/{name}/logs", tag = "functions", params(("name" = String, Path), LogQuery),
    responses((status = 200, description = "log lines, oldest first (or an SSE stream of them with follow=true)", body = LogPage), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody)))]
pub async fn logs(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
    minicloud_proto::error::Query(query): minicloud_proto::error::Query<LogQuery>,
) -> Result<Response, ApiError> {
    crate::registry::check_name(&name)?;
    invoker
        .0
        .authz
        .authorize_on(
            &caller,
            Action::FunctionsReadLogs,
            Resource::Function(&name),
        )
        .await?;
    if !crate::registry::exists(&invoker, &name).await? {
        return Err(not_found(&invoker, &name));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let stream = match query.stream.as_deref() {
        None => None,
        Some("stdout") => Some(LogStream::Stdout),
        Some("stderr") => Some(LogStream::Stderr),
        Some("platform") => Some(LogStream::Platform),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "stream must be stdout, stderr or platform, not {other:?}"
            )));
        }
    };
    let filter = LogFilter {
        request_id: query.request_id,
        after: query.after,
        since: query.since,
        contains: query.contains,
        stream,
    };
    let logs = invoker.0.engine.logs.of(&name);
    if query.follow != Some(true) {
        let lines = logs
            .query(&filter, limit)
            .iter()
            .map(|l| (**l).clone())
            .collect();
        return Ok(Json(LogPage { lines }).into_response());
    }
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = logs.subscribe();
    let backlog = logs.query(&filter, limit);
    let last = backlog.last().map(|l| l.seq);
    let filter = Arc::new(filter);
    let backlog = futures::stream::iter(backlog);
    let live = tokio_stream::wrappers::BroadcastStream::new(live).filter_map({
        let filter = Arc::clone(&filter);
        move |line| {
            let keep = match line {
                Ok(line) if last.is_none_or(|last| line.seq > last) && filter.matches(&line) => {
                    Some(line)
                }
                _ => None,
            };
            async move { keep }
        }
    });
    let events = backlog.chain(live).map(|line| {
        Ok::<_, Infallible>(
            Event::default()
                .id(line.seq.to_string())
                .json_data(&*line)
                .unwrap_or_default(),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct InstancesOut {
    /// Instances this invoker replica runs for the function now (busy or idle).
    pub live: usize,
    /// Process ids of the idle (warm) ones.
    pub idle_pids: Vec<i32>,
}

#[utoipa::path(get, path = "/functions/v1/{name}/instances", tag = "functions", params(("name" = String, Path)),
    responses((status = 200, body = InstancesOut), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub async fn instances(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<InstancesOut>, ApiError> {
    crate::registry::check_name(&name)?;
    invoker
        .0
        .authz
        .authorize_on(&caller, Action::FunctionsDeploy, Resource::Function(&name))
        .await?;
    let engine = &invoker.0.engine;
    Ok(Json(InstancesOut {
        live: engine.live_instances(&name),
        idle_pids: engine.idle_pids(&name),
    }))
}
