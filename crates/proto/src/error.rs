//! One closed set of error codes, mapped in exactly one place to HTTP statuses,
//! gRPC codes and the JSON error body of the REST APIs:
//! `{"error":{"code":"not_found","message":"…","request_id":"…"}}`.
//!
//! Server errors (5xx) never carry internal detail to the caller: the detail goes
//! to the log, keyed by the request id the caller sees.

use std::fmt;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The request id of the request being served, set by the server middleware so
    /// that error bodies can name it without threading it through every handler.
    pub static REQUEST_ID: String;
}

/// The request id of the current request, if one is being served on this task.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    TooManyRequests,
    /// A budget's cap refuses the call (docs/billing.md).
    BudgetExceeded,
    Internal,
    Unavailable,
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::TooManyRequests,
        ErrorCode::BudgetExceeded,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorCode::Conflict => tonic::Code::AlreadyExists,
            ErrorCode::PreconditionFailed => tonic::Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorCode::RangeNotSatisfiable => tonic::Code::OutOfRange,
            ErrorCode::TooManyRequests => tonic::Code::Unavailable,
            ErrorCode::BudgetExceeded => tonic::Code::FailedPrecondition,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
        }
    }

    /// The code a gRPC status from another service maps back to.
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists | tonic::Code::Aborted => ErrorCode::Conflict,
            tonic::Code::FailedPrecondition => ErrorCode::PreconditionFailed,
            tonic::Code::ResourceExhausted => ErrorCode::PayloadTooLarge,
            tonic::Code::OutOfRange => ErrorCode::RangeNotSatisfiable,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
            _ => ErrorCode::Internal,
        }
    }

    pub fn is_server_error(self) -> bool {
        self.http_status().is_server_error()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body of every REST error (for OpenAPI; [`ApiError::body`] builds it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// The id under which the service log has the detail.
    pub request_id: Option<String>,
}

/// An error as the API reports it. Service crates keep their own `thiserror` enums
/// and convert into this at the edge.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for `Retry-After` on 429/503.
    pub retry_after: Option<u64>,
    /// Internal detail: logged, never sent.
    source: Option<Source>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// A server-side failure: the caller sees "internal error", the log sees `source`.
    pub fn internal(source: impl Into<Source>) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            retry_after: None,
            source: Some(source.into()),
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The message the caller may see: for server errors, only a generic one.
    pub fn public_message(&self) -> &str {
        if self.code.is_server_error() && self.code == ErrorCode::Internal {
            "internal error"
        } else {
            &self.message
        }
    }

    fn log(&self) {
        if self.code.is_server_error() {
            let request_id = current_request_id().unwrap_or_default();
            tracing::error!(
                code = %self.code,
                message = %self.message,
                source = ?self.source,
                request_id,
                "request failed"
            );
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.public_message(),
                "request_id": current_request_id(),
            }
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.code.http_status(), axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        error.log();
        tonic::Status::new(error.code.grpc_code(), error.public_message().to_owned())
    }
}

impl From<tonic::Status> for ApiError {
    /// A failed call to another service. Its message is only passed on for client
    /// errors; anything else becomes a generic 5xx with the status in the log.
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_grpc(status.code());
        if code.is_server_error() {
            ApiError::new(code, "upstream service error").with_source(status)
        } else {
            ApiError::new(code, status.message().to_owned())
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ErrorCode::PayloadTooLarge
            }
            _ => ErrorCode::InvalidArgument,
        };
        ApiError::new(code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid(rejection.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, so malformed input gets the
/// standard JSON error body. Text with a NUL character (`\u0000`) anywhere, in a
/// key or a value, is refused here with the field named: Postgres cannot store it
/// in `text` or `jsonb`, and every service would otherwise answer 500.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ErrorCode::PayloadTooLarge
                } else {
                    ErrorCode::InvalidArgument
                };
                ApiError::new(code, rejection.body_text())
            })?;
        check_no_nul(&bytes)?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// `application/json` or `application/<anything>+json`, as axum's own extractor.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// Refuses a JSON body holding a NUL in any string, naming where (`a.b[2]`). The
/// byte scan keeps the common case free; only a body with the escape is parsed.
pub fn check_no_nul(body: &[u8]) -> Result<(), ApiError> {
    // memchr's SIMD search rather than a window compare at every byte: this runs
    // over every JSON body, and a deploy's is megabytes of base64.
    if memchr::memmem::find(body, b"\\u0000").is_none() {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Malformed: the deserializer reports it.
        return Ok(());
    };
    match nul_path(&value, String::new()) {
        Some(path) if path.is_empty() => Err(ApiError::invalid(
            "the body holds a NUL character (\\u0000), which text may not contain",
        )),
        Some(path) => Err(ApiError::invalid(format!(
            "{path}: text may not contain a NUL character (\\u0000)"
        ))),
        None => Ok(()),
    }
}

/// Refuses a JSON value (a document, a KV value, metadata) that holds a NUL in a
/// key or a string, naming where, under `field`. For values that arrive other than
/// through [`Json`] (gRPC, headers).
pub fn check_json_text(value: &serde_json::Value, field: &str) -> Result<(), ApiError> {
    match nul_path(value, field.to_owned()) {
        Some(path) => Err(ApiError::invalid(format!(
            "{path}: text may not contain a NUL character (\\u0000)"
        ))),
        None => Ok(()),
    }
}

/// Where the first string or key holding a NUL is, as a path.
pub fn nul_path(value: &serde_json::Value, at: String) -> Option<String> {
    match value {
        serde_json::Value::String(s) => s.contains('\0').then_some(at),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = if at.is_empty() {
                key.replace('\0', "\\u0000")
            } else {
                format!("{at}.{}", key.replace('\0', "\\u0000"))
            };
            if key.contains('\0') {
                Some(here)
            } else {
                nul_path(item, here)
            }
        }),
        _ => None,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with [`ApiError`] rejections.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Fallback for unknown routes.
pub async fn route_not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_anywhere_in_a_body_and_named_by_its_path() {
        let big = "x".repeat(3 << 20);
        assert!(check_no_nul(format!(r#"{{"code":"{big}"}}"#).as_bytes()).is_ok());
        // Not a NUL: an escaped backslash before "u0000".
        assert!(check_no_nul(br#"{"a":"\\u0000"}"#).is_ok());
        for (body, path) in [
            (format!(r#"{{"code":"{big}\u0000"}}"#), "code"),
            (r#"{"k\u0000":1}"#.to_owned(), "k\\u0000"),
            (r#"{"a":[1,{"b":"x\u0000"}]}"#.to_owned(), "a[1].b"),
        ] {
            let error = check_no_nul(body.as_bytes()).unwrap_err();
            assert!(error.message.contains("NUL"), "{}", error.message);
            assert!(error.message.starts_with(path), "{path}: {}", error.message);
        }
    }

    #[test]
    fn every_code_maps_to_a_distinct_snake_case_name_and_a_4xx_or_5xx() {
        let mut names = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let name = serde_json::to_value(code).unwrap();
            assert_eq!(name, serde_json::Value::String(code.as_str().into()));
            assert!(names.insert(code.as_str()));
            let status = code.http_status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code}"
            );
        }
    }

    #[test]
    fn internal_errors_hide_their_source_from_the_body_and_the_grpc_status() {
        let error = ApiError::internal("connection to 10.0.0.7:5432 refused (password=hunter2)");
        let body = error.body().to_string();
        assert!(
            !body.contains("hunter2") && !body.contains("10.0.0.7"),
            "{body}"
        );
        assert!(body.contains("\"internal\""));
        let status: tonic::Status = ApiError::internal("disk /var/lib/minicloud full").into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("/var/lib"));
    }

    #[test]
    fn upstream_server_errors_are_not_passed_through() {
        let error: ApiError = tonic::Status::internal("pg: relation auth.keys missing").into();
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(!error.public_message().contains("relation"));
        let error: ApiError = tonic::Status::not_found("no such role").into();
        assert_eq!(error.code, ErrorCode::NotFound);
        assert_eq!(error.public_message(), "no such role");
    }
}
