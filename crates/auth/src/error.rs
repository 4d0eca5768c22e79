//! The auth service's errors, mapped to the API's codes in one place.

use minicloud_proto::error::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("invalid login credentials")]
    InvalidCredentials,
    #[error("{0}")]
    InvalidRefreshToken(&'static str),
    #[error("a user with this email address has already been registered")]
    EmailTaken,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests, retry later")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    Forbidden(String),
    /// Password hashing is saturated and the request waited its turn too long.
    #[error("too many sign-ins and sign-ups at once, retry shortly")]
    Busy,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

pub(crate) type Result<T, E = AuthError> = std::result::Result<T, E>;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Invalid(_) => ApiError::invalid(message),
            AuthError::InvalidCredentials => ApiError::new(ErrorCode::InvalidArgument, message),
            AuthError::InvalidRefreshToken(_) => ApiError::unauthenticated(message),
            AuthError::EmailTaken | AuthError::Conflict(_) => ApiError::conflict(message),
            AuthError::NotFound(_) => ApiError::not_found(message),
            AuthError::RateLimited { retry_after_s } => {
                ApiError::new(ErrorCode::TooManyRequests, message).with_retry_after(retry_after_s)
            }
            AuthError::Forbidden(_) => ApiError::forbidden(message),
            AuthError::Busy => ApiError::unavailable(message).with_retry_after(1),
            AuthError::Database(source) => ApiError::internal(source),
            AuthError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        ApiError::from(error).into()
    }
}

/// GoTrue's name for an error, which the Supabase clients put in `AuthApiError.code`.
fn gotrue_code(code: &str, message: &str) -> String {
    if message == AuthError::InvalidCredentials.to_string() {
        return "invalid_credentials".into();
    }
    if message == AuthError::EmailTaken.to_string() {
        return "user_already_exists".into();
    }
    match code {
        "invalid_argument" => "validation_failed",
        "unauthenticated" => "bad_jwt",
        "permission_denied" => "not_admin",
        "too_many_requests" => "over_request_rate_limit",
        "internal" | "unavailable" => "unexpected_failure",
        other => other,
    }
    .into()
}

/// Adds GoTrue's fields to an error body — `msg` and `error_code` beside our own
/// `error` object — so the Supabase clients' `AuthApiError` carries the message
/// and code instead of the whole JSON text. Only error bodies are read.
pub(crate) async fn with_gotrue_fields(
    response: axum::response::Response,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "").into_response();
    };
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(&bytes) else {
        return axum::response::Response::from_parts(parts, bytes.into());
    };
    let error = &object["error"];
    let (code, message) = (
        error["code"]
            .as_str()
            .unwrap_or("unexpected_failure")
            .to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    );
    object.insert("error_code".into(), gotrue_code(&code, &message).into());
    object.insert("msg".into(), message.into());
    let body = serde_json::to_vec(&object).unwrap_or_default();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, body.into())
}

/// Postgres unique violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Postgres foreign-key violation (SQLSTATE 23503).
pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}
