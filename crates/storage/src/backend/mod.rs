//! Where object bytes live. Bytes are written as immutable blobs keyed
//! `<path>#<version>`; Postgres maps a path to its current version, so an object
//! becomes visible (or is replaced) only when its metadata commits, and a blob no
//! row points at is an orphan for the sweep to remove.

pub(crate) mod fs;
pub(crate) mod s3;

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

pub use fs::FsBackend;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob not found")]
    NotFound,
    #[error("reading the request body: {0}")]
    Body(io::Error),
    #[error("backend I/O: {0}")]
    Io(#[from] io::Error),
    #[error("backend: {0}")]
    Other(String),
}

/// What a completed write measured.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    /// Hex MD5 of the bytes: the object's ETag (as S3 gives for single-part uploads).
    pub md5_hex: String,
}

/// An inclusive byte range within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

pub(crate) fn blob_key(path: &str, version: &str) -> String {
    format!("{path}#{version}")
}

/// `(path, version)` of a blob key.
pub(crate) fn parse_blob_key(key: &str) -> Option<(&str, &str)> {
    key.rsplit_once('#')
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reachable and writable.
    async fn check(&self) -> Result<(), BackendError>;
    async fn create_bucket(&self, bucket: &str) -> Result<(), BackendError>;
    /// Removes the (empty) bucket.
    async fn delete_bucket(&self, bucket: &str) -> Result<(), BackendError>;
    /// Writes a new blob from `body`, refusing (and removing what was written) past
    /// `limit` bytes. Nothing is visible under `key` unless this returns `Ok`.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        limit: u64,
    ) -> Result<Written, BackendError>;
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, BackendError>;
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError>;
    async fn copy(
        &self,
        bucket: &str,
        from: &str,
        to_bucket: &str,
        to: &str,
    ) -> Result<(), BackendError>;
    /// Every blob key in the bucket with its last-modified time, for the orphan sweep.
    async fn list(&self, bucket: &str) -> Result<Vec<(String, SystemTime)>, BackendError>;
}

/// What a caller is told when the backend fails: its own limits and a missing
/// object as such, anything else as the store being unavailable (details logged).
impl From<BackendError> for minicloud_proto::error::ApiError {
    fn from(error: BackendError) -> Self {
        use minicloud_proto::error::{ApiError, ErrorCode};
        match error {
            BackendError::TooLarge { limit } => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("object larger than the limit of {limit} bytes"),
            ),
            BackendError::NotFound => ApiError::not_found("object not found"),
            BackendError::Body(error) => {
                ApiError::invalid(format!("reading the upload failed: {error}"))
            }
            other => ApiError::unavailable("object store unavailable").with_source(other),
        }
    }
}
