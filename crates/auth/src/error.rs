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
    /// GoTrue's words for a wrong, spent or expired one-time code or link.
    #[error("Token has expired or is invalid")]
    OtpInvalid,
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
            AuthError::OtpInvalid => ApiError::forbidden(message),
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
    if message == AuthError::OtpInvalid.to_string() {
        return "otp_expired".into();
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
/// and code instead of the whole JSON text.
pub(crate) async fn with_gotrue_fields(
    response: axum::response::Response,
) -> axum::response::Response {
    minicloud_telemetry::server::add_error_fields(response, |code, message, _| {
        let mut fields = serde_json::Map::new();
        fields.insert("error_code".into(), gotrue_code(code, message).into());
        fields.insert("msg".into(), message.into());
        fields
    })
    .await
}

/// Postgres unique violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Postgres foreign-key violation (SQLSTATE 23503).
pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}
