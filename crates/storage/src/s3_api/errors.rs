//! Storage's errors in S3's words: the one place they are mapped, so SDKs raise
//! their typed exceptions (`NoSuchKey`, `NoSuchBucket`, `AccessDenied`, …).

use minicloud_proto::error::{ApiError, ErrorCode};
use s3s::{S3Error, S3ErrorCode};

use crate::BackendError;
use crate::error::StorageError;

/// A body s3s refused while it streamed in (its hash or a chunk's signature).
#[derive(Debug, thiserror::Error)]
#[error("the payload does not match its signature: {0:?}")]
pub(crate) struct PayloadRejected(pub(crate) S3ErrorCode);

pub(crate) fn from_storage(error: StorageError) -> S3Error {
    let message = error.to_string();
    let code = match error {
        StorageError::BucketNotFound(_) => S3ErrorCode::NoSuchBucket,
        StorageError::ObjectNotFound => S3ErrorCode::NoSuchKey,
        StorageError::UploadNotFound => S3ErrorCode::NoSuchUpload,
        StorageError::AlreadyExists | StorageError::PreconditionFailed(_) => {
            S3ErrorCode::PreconditionFailed
        }
        StorageError::Invalid(_) | StorageError::TypeNotAllowed(_) => S3ErrorCode::InvalidArgument,
        StorageError::InvalidPart(_) => S3ErrorCode::InvalidPart,
        StorageError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        StorageError::PartTooSmall(_) => S3ErrorCode::EntityTooSmall,
        StorageError::TooLarge(_) => S3ErrorCode::EntityTooLarge,
        StorageError::Denied(error) => return from_api(error),
        StorageError::Backend(BackendError::TooLarge { .. }) => S3ErrorCode::EntityTooLarge,
        StorageError::Backend(BackendError::NotFound) => S3ErrorCode::NoSuchKey,
        StorageError::Backend(BackendError::Body(error)) => {
            match error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<PayloadRejected>())
            {
                Some(PayloadRejected(code)) => {
                    return S3Error::with_message(
                        code.clone(),
                        "the payload does not match what was signed",
                    );
                }
                None => S3ErrorCode::IncompleteBody,
            }
        }
        StorageError::Backend(other) => {
            tracing::warn!(error = %other, "object backend failed under the S3 API");
            return S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "object store unavailable",
            );
        }
        StorageError::Database(_) | StorageError::Internal(_) => {
            tracing::error!(error = %message, "storage failed under the S3 API");
            return S3Error::new(S3ErrorCode::InternalError);
        }
    };
    S3Error::with_message(code, message)
}

/// An `ApiError` (authorisation, bucket calls) in S3's words.
pub(crate) fn from_api(error: ApiError) -> S3Error {
    let code = match error.code {
        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => S3ErrorCode::AccessDenied,
        ErrorCode::NotFound => S3ErrorCode::NoSuchBucket,
        ErrorCode::InvalidArgument => S3ErrorCode::InvalidArgument,
        ErrorCode::Conflict => S3ErrorCode::OperationAborted,
        ErrorCode::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge => S3ErrorCode::EntityTooLarge,
        ErrorCode::TooManyRequests => S3ErrorCode::SlowDown,
        ErrorCode::BudgetExceeded => {
            // S3 has no such refusal: a code of our own, with our status.
            let mut refused =
                S3Error::with_message(S3ErrorCode::Custom("BudgetExceeded".into()), error.message);
            refused.set_status_code(http::StatusCode::PAYMENT_REQUIRED);
            return refused;
        }
        ErrorCode::Unavailable | ErrorCode::Timeout => S3ErrorCode::ServiceUnavailable,
        ErrorCode::RangeNotSatisfiable => S3ErrorCode::InvalidRange,
        ErrorCode::MethodNotAllowed => S3ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedMediaType => S3ErrorCode::InvalidArgument,
        ErrorCode::Internal => {
            tracing::error!(error = %error.message, "storage failed under the S3 API");
            return S3Error::new(S3ErrorCode::InternalError);
        }
    };
    S3Error::with_message(code, error.message)
}
