//! Multipart uploads (the S3 API's CreateMultipartUpload … Complete/Abort). Each part
//! is a blob of its own, written as it streams in; completing streams the parts, in
//! order, into the object's new blob and commits it like any other write (same
//! checks, row and `object.created` event), so the object appears whole or not at all
//! and no part is ever held in memory.

use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use md5::{Digest as _, Md5};
use minicloud_authz::{Action, Caller};

use crate::Storage;
use crate::backend::{ByteRange, ByteStream, blob_key};
use crate::error::StorageError;
use crate::objects::{ObjectRecord, Preconditions, WriteRequest};

/// S3's floor for every part but the last.
pub(crate) const MIN_PART_SIZE: i64 = 5 * 1024 * 1024;
pub(crate) const MAX_PART_NUMBER: i32 = 10_000;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadRecord {
    pub upload_id: String,
    pub bucket: String,
    pub path: String,
    pub content_type: String,
    pub metadata: serde_json::Value,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PartRecord {
    pub part_number: i32,
    pub version: String,
    pub size: i64,
    pub etag: String,
    pub created_at: DateTime<Utc>,
}

/// Which upload a part call names.
#[derive(Debug, Clone, Copy)]
pub struct UploadRef<'a> {
    pub bucket: &'a str,
    pub path: &'a str,
    pub upload_id: &'a str,
}

const UPLOAD_COLUMNS: &str = "upload_id, bucket, path, content_type, metadata, cache_control, content_encoding, content_disposition, owner, created_at";

fn db(error: sqlx::Error) -> StorageError {
    StorageError::Database(error)
}

/// S3's multipart ETag: the MD5 of the parts' binary MD5s, then `-<count>`.
pub(crate) fn multipart_etag<'a>(part_etags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut hasher = Md5::new();
    let mut count = 0;
    for etag in part_etags {
        hasher.update(hex::decode(etag).ok()?);
        count += 1;
    }
    Some(format!("{}-{count}", hex::encode(hasher.finalize())))
}

impl Storage {
    /// Starts an upload: everything a write is checked for, bar the bytes, is
    /// checked now.
    pub async fn create_upload(
        &self,
        caller: &Caller,
        request: &WriteRequest,
    ) -> Result<UploadRecord, StorageError> {
        self.prepare_write(caller, request).await?;
        let upload_id = uuid::Uuid::now_v7().simple().to_string();
        let cache_control = request
            .cache_control
            .as_deref()
            .map(crate::objects::cache_control_of)
            .transpose()?;
        sqlx::query_as::<_, UploadRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO multipart_uploads (upload_id, bucket, path, content_type, metadata,
               cache_control, content_encoding, content_disposition, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {UPLOAD_COLUMNS}"
        )))
        .bind(&upload_id)
        .bind(&request.bucket)
        .bind(&request.path)
        .bind(
            request
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        )
        .bind(
            request
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        )
        .bind(cache_control)
        .bind(&request.content_encoding)
        .bind(&request.content_disposition)
        .bind(caller.owner())
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    /// The upload, once `caller` may write its object.
    async fn authorized_upload(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
    ) -> Result<UploadRecord, StorageError> {
        let bucket = self.load_bucket(upload.bucket).await?;
        self.authorize_object(caller, Action::StoragePutObject, &bucket, upload.path)
            .await?;
        sqlx::query_as::<_, UploadRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLOAD_COLUMNS} FROM multipart_uploads
             WHERE upload_id = $1 AND bucket = $2 AND path = $3"
        )))
        .bind(upload.upload_id)
        .bind(upload.bucket)
        .bind(upload.path)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StorageError::UploadNotFound)
    }

    /// Streams one part into its own blob; a part sent again replaces the earlier one.
    pub async fn upload_part(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
        part_number: i32,
        body: ByteStream,
        declared_length: Option<u64>,
    ) -> Result<PartRecord, StorageError> {
        let prepared = async {
            check_part_number(part_number)?;
            self.authorized_upload(caller, upload).await?;
            let bucket = self.load_bucket(upload.bucket).await?;
            let limit = self.size_limit(&bucket);
            if declared_length.is_some_and(|n| n > limit) {
                return Err(StorageError::TooLarge(format!(
                    "part larger than the limit of {limit} bytes"
                )));
            }
            Ok(limit)
        }
        .await;
        let limit = match prepared {
            Ok(limit) => limit,
            Err(error) => {
                Self::discard(body, declared_length).await;
                return Err(error);
            }
        };
        self.store_part(upload, part_number, body, limit).await
    }

    /// Copies a byte range of an existing object as one part (UploadPartCopy).
    pub async fn upload_part_copy(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
        part_number: i32,
        source: (&str, &str),
        range: Option<ByteRange>,
    ) -> Result<(PartRecord, ObjectRecord), StorageError> {
        check_part_number(part_number)?;
        self.authorized_upload(caller, upload).await?;
        let object = self.authorize_read(caller, source.0, source.1).await?;
        if let Some(range) = range
            && (range.end >= object.size as u64 || range.start > range.end)
        {
            return Err(StorageError::Invalid(format!(
                "the copy range is outside the source object's {} bytes",
                object.size
            )));
        }
        let limit = self.size_limit(&self.load_bucket(upload.bucket).await?);
        let (object, stream) = self.open(object, range, None).await?;
        let part = self.store_part(upload, part_number, stream, limit).await?;
        Ok((part, object))
    }

    async fn store_part(
        &self,
        upload: UploadRef<'_>,
        part_number: i32,
        body: ByteStream,
        limit: u64,
    ) -> Result<PartRecord, StorageError> {
        let version = uuid::Uuid::now_v7().simple().to_string();
        let key = blob_key(upload.path, &version);
        let written = self
            .backend
            .put(upload.bucket, &key, body, limit)
            .await
            .map_err(StorageError::from)?;
        let row = sqlx::query_as::<_, (i32, String, i64, String, DateTime<Utc>, Option<String>)>(
            "WITH old AS (
                SELECT version FROM multipart_parts WHERE upload_id = $1 AND part_number = $2
             )
             INSERT INTO multipart_parts (upload_id, part_number, version, size, etag)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (upload_id, part_number) DO UPDATE SET version = EXCLUDED.version,
               size = EXCLUDED.size, etag = EXCLUDED.etag, created_at = now()
             RETURNING part_number, version, size, etag, created_at, (SELECT version FROM old)",
        )
        .bind(upload.upload_id)
        .bind(part_number)
        .bind(&version)
        .bind(written.size as i64)
        .bind(&written.md5_hex)
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok((part_number, version, size, etag, created_at, replaced)) => {
                if let Some(old) = replaced {
                    self.remove_blob(upload.bucket, &blob_key(upload.path, &old))
                        .await;
                }
                Ok(PartRecord {
                    part_number,
                    version,
                    size,
                    etag,
                    created_at,
                })
            }
            Err(error) => {
                self.remove_blob(upload.bucket, &key).await;
                match &error {
                    // Aborted (or completed) while the part was streaming in.
                    sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                        Err(StorageError::UploadNotFound)
                    }
                    _ => Err(db(error)),
                }
            }
        }
    }

    /// Parts after `after`, at most `max`; and whether more follow.
    pub async fn list_parts(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
        after: i32,
        max: i32,
    ) -> Result<(UploadRecord, Vec<PartRecord>, bool), StorageError> {
        let record = self.authorized_upload(caller, upload).await?;
        let mut parts = sqlx::query_as::<_, PartRecord>(
            "SELECT part_number, version, size, etag, created_at FROM multipart_parts
             WHERE upload_id = $1 AND part_number > $2 ORDER BY part_number LIMIT $3",
        )
        .bind(upload.upload_id)
        .bind(after)
        .bind(i64::from(max) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let truncated = parts.len() > max as usize;
        parts.truncate(max as usize);
        Ok((record, parts, truncated))
    }

    /// Uploads in progress in `bucket` under `prefix`, by path then age, after the
    /// `(path, upload id)` marker; and whether more follow.
    pub async fn list_uploads(
        &self,
        caller: &Caller,
        bucket: &str,
        prefix: &str,
        marker: Option<(&str, &str)>,
        max: i32,
    ) -> Result<(Vec<UploadRecord>, bool), StorageError> {
        let bucket_row = self.load_bucket(bucket).await?;
        self.authorize_object(caller, Action::StorageListObjects, &bucket_row, prefix)
            .await?;
        let (after_path, after_id) = marker.unwrap_or(("", ""));
        let mut uploads = sqlx::query_as::<_, UploadRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {UPLOAD_COLUMNS} FROM multipart_uploads
             WHERE bucket = $1 AND starts_with(path, $2) AND (path, upload_id) > ($3, $4)
             ORDER BY path, upload_id LIMIT $5"
        )))
        .bind(bucket)
        .bind(prefix)
        .bind(after_path)
        .bind(after_id)
        .bind(i64::from(max) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let truncated = uploads.len() > max as usize;
        uploads.truncate(max as usize);
        Ok((uploads, truncated))
    }

    /// Drops the upload and its parts' blobs.
    pub async fn abort_upload(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
    ) -> Result<(), StorageError> {
        self.authorized_upload(caller, upload).await?;
        self.drop_upload(upload).await.map_err(db)
    }

    /// Deletes the upload's rows, then its parts' blobs.
    async fn drop_upload(&self, upload: UploadRef<'_>) -> Result<(), sqlx::Error> {
        let versions: Vec<String> = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM multipart_uploads WHERE upload_id = $1 RETURNING upload_id)
             SELECT version FROM multipart_parts WHERE upload_id IN (SELECT upload_id FROM gone)",
        )
        .bind(upload.upload_id)
        .fetch_all(&self.pool)
        .await?;
        for version in versions {
            self.remove_blob(upload.bucket, &blob_key(upload.path, &version))
                .await;
        }
        Ok(())
    }

    /// Joins the named parts, in order, into the object: each must be there with the
    /// ETag given, in ascending order, and all but the last at least 5 MiB.
    pub async fn complete_upload(
        &self,
        caller: &Caller,
        upload: UploadRef<'_>,
        chosen: &[(i32, String)],
        preconditions: Preconditions,
    ) -> Result<ObjectRecord, StorageError> {
        let record = self.authorized_upload(caller, upload).await?;
        if chosen.is_empty() {
            return Err(StorageError::InvalidPart(
                "name at least one part to complete an upload".into(),
            ));
        }
        if chosen.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StorageError::InvalidPartOrder);
        }
        let stored = sqlx::query_as::<_, PartRecord>(
            "SELECT part_number, version, size, etag, created_at FROM multipart_parts
             WHERE upload_id = $1 ORDER BY part_number",
        )
        .bind(upload.upload_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut parts = Vec::with_capacity(chosen.len());
        for (number, etag) in chosen {
            let part = stored
                .iter()
                .find(|p| p.part_number == *number && p.etag == etag.trim_matches('"'))
                .ok_or_else(|| {
                    StorageError::InvalidPart(format!(
                        "part {number} was not uploaded or its ETag is not {etag}"
                    ))
                })?;
            parts.push(part.clone());
        }
        if let Some(small) = parts[..parts.len() - 1]
            .iter()
            .find(|p| p.size < MIN_PART_SIZE)
        {
            return Err(StorageError::PartTooSmall(small.part_number));
        }
        let request = WriteRequest {
            bucket: record.bucket.clone(),
            path: record.path.clone(),
            content_type: Some(record.content_type.clone()),
            metadata: Some(record.metadata.clone()),
            cache_control: record.cache_control.clone(),
            content_encoding: record.content_encoding.clone(),
            content_disposition: record.content_disposition.clone(),
            declared_length: Some(parts.iter().map(|p| p.size as u64).sum()),
            preconditions,
        };
        let (_, limit) = self.prepare_write(caller, &request).await?;
        let etag = multipart_etag(parts.iter().map(|p| p.etag.as_str()))
            .ok_or_else(|| StorageError::Internal("a stored part ETag is not hex".into()))?;
        // The parts one after the other, each opened only when the one before ends.
        let backend = std::sync::Arc::clone(&self.backend);
        let bucket = record.bucket.clone();
        let keys: Vec<String> = parts
            .iter()
            .map(|p| blob_key(&record.path, &p.version))
            .collect();
        let joined: ByteStream = Box::pin(
            futures::stream::iter(keys)
                .then(move |key| {
                    let backend = std::sync::Arc::clone(&backend);
                    let bucket = bucket.clone();
                    async move {
                        backend
                            .get(&bucket, &key, None)
                            .await
                            .map_err(|e| std::io::Error::other(e.to_string()))
                    }
                })
                .try_flatten(),
        );
        let version = uuid::Uuid::now_v7().simple().to_string();
        let key = blob_key(&record.path, &version);
        let written = self
            .backend
            .put(&record.bucket, &key, joined, limit)
            .await
            .map_err(StorageError::from)?;
        let new = ObjectRecord {
            bucket: record.bucket.clone(),
            name: record.path.clone(),
            version,
            size: written.size as i64,
            content_type: record.content_type.clone(),
            etag,
            metadata: record.metadata.clone(),
            cache_control: record.cache_control.clone(),
            content_encoding: record.content_encoding.clone(),
            content_disposition: record.content_disposition.clone(),
            owner: record.owner.clone(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let (object, replaced) = match self.commit_write(&request, &new).await {
            Ok(done) => done,
            Err(error) => {
                self.remove_blob(&record.bucket, &key).await;
                return Err(error);
            }
        };
        if let Some(old) = replaced {
            self.remove_blob(&record.bucket, &blob_key(&record.path, &old))
                .await;
        }
        self.relay.wake();
        // The object is committed; the upload and every part (named or not) go.
        if let Err(error) = self.drop_upload(upload).await {
            tracing::warn!(%error, "dropping a completed upload failed; its parts stay until aborted");
        }
        Ok(object)
    }
}

fn check_part_number(part_number: i32) -> Result<(), StorageError> {
    if (1..=MAX_PART_NUMBER).contains(&part_number) {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "part numbers are 1 to {MAX_PART_NUMBER}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s_and_the_count() {
        // Two parts "a" and "b": md5("a") = 0cc1…, md5("b") = 92eb….
        let a = hex::encode(Md5::digest(b"a"));
        let b = hex::encode(Md5::digest(b"b"));
        let mut joined = hex::decode(&a).unwrap();
        joined.extend(hex::decode(&b).unwrap());
        let expected = format!("{}-2", hex::encode(Md5::digest(&joined)));
        assert_eq!(multipart_etag([a.as_str(), b.as_str()]), Some(expected));
        assert_eq!(multipart_etag(["not hex"]), None);
    }
}
