//! What the object operations (`objects.rs`) can fail with, in storage's own terms.
//! Every front end maps it once: REST and gRPC through `ApiError` (below); an S3
//! front end can map the same variants to `NoSuchKey`, `NoSuchBucket`,
//! `PreconditionFailed` and `EntityTooLarge` without parsing messages.

use minicloud_proto::error::{ApiError, ErrorCode};

use crate::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bucket {0} not found")]
    BucketNotFound(String),
    #[error("object not found")]
    ObjectNotFound,
    /// A create (`POST`, `x-upsert: false`) found the object there.
    #[error("the object already exists")]
    AlreadyExists,
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("{0}")]
    PreconditionFailed(&'static str),
    #[error("{0}")]
    Invalid(String),
    /// A multipart upload that does not exist (any more).
    #[error("no such upload")]
    UploadNotFound,
    #[error("{0}")]
    InvalidPart(String),
    #[error("the parts must be listed in ascending order of their numbers")]
    InvalidPartOrder,
    #[error("part {0} is smaller than 5 MiB and is not the last")]
    PartTooSmall(i32),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    TypeNotAllowed(String),
    /// The caller may not: the authorisation decision, already in the API's terms
    /// (403, or 503 when policies could not be read).
    #[error("{0}")]
    Denied(ApiError),
    #[error("object backend: {0}")]
    Backend(#[from] BackendError),
    #[error("storage database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<minicloud_outbox::OutboxError> for StorageError {
    /// An event over the size limit is the request's fault; anything else internal.
    fn from(error: minicloud_outbox::OutboxError) -> Self {
        match error {
            minicloud_outbox::OutboxError::TooLarge { .. } => {
                StorageError::TooLarge(error.to_string())
            }
            other => StorageError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for StorageError {
    fn from(error: ApiError) -> Self {
        StorageError::Denied(error)
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        let message = error.to_string();
        match error {
            StorageError::BucketNotFound(_)
            | StorageError::ObjectNotFound
            | StorageError::UploadNotFound => ApiError::not_found(message),
            StorageError::AlreadyExists => ApiError::conflict(message),
            StorageError::PreconditionFailed(_) => {
                ApiError::new(ErrorCode::PreconditionFailed, message)
            }
            StorageError::Invalid(_)
            | StorageError::InvalidPart(_)
            | StorageError::InvalidPartOrder
            | StorageError::PartTooSmall(_) => ApiError::invalid(message),
            StorageError::TooLarge(_) => ApiError::new(ErrorCode::PayloadTooLarge, message),
            StorageError::TypeNotAllowed(_) => {
                ApiError::new(ErrorCode::UnsupportedMediaType, message)
            }
            StorageError::Denied(error) => error,
            StorageError::Backend(error) => error.into(),
            StorageError::Database(error) => ApiError::internal(error),
            StorageError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<StorageError> for tonic::Status {
    fn from(error: StorageError) -> Self {
        ApiError::from(error).into()
    }
}

/// Adds Supabase Storage's fields to an error body — `statusCode` (the status as a
/// string) and `message` beside our own `error` object — which supabase-js and
/// supabase-py read into their `StorageApiError`.
pub(crate) async fn with_storage_api_fields(
    response: axum::response::Response,
) -> axum::response::Response {
    minicloud_telemetry::server::add_error_fields(response, |_, message, status| {
        let mut fields = serde_json::Map::new();
        fields.insert("statusCode".into(), status.to_string().into());
        fields.insert("message".into(), message.into());
        fields
    })
    .await
}
