//! Objects: the operations REST and gRPC share, each authorised, with metadata in
//! Postgres, bytes in the backend and events through the outbox.

use crate::error::StorageError;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use minicloud_authz::Action;
use minicloud_authz::{Caller, Policy};
use minicloud_metering::Meter;
use minicloud_outbox::OutboxEvent;
use minicloud_proto::error::{ApiError, ErrorCode};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, FromRow as _, Row as _};

use crate::Storage;
use crate::backend::{BackendError, ByteRange, ByteStream, blob_key};
use crate::buckets::BucketRecord;

/// An object's metadata as stored: its row, the API's answer, an event's data.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ObjectRecord {
    pub bucket: String,
    #[sqlx(rename = "path")]
    pub name: String,
    #[serde(skip)]
    pub version: String,
    pub size: i64,
    pub content_type: String,
    pub etag: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// What downloads send as `Cache-Control` (`no-cache` when null).
    pub cache_control: Option<String>,
    /// `Content-Encoding` as an S3 client set it (e.g. `gzip`): sent back as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Disposition` as an S3 client set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! object_columns {
    () => {
        "bucket, path, version, size, content_type, etag, metadata, cache_control, content_encoding, content_disposition, owner, created_at, updated_at"
    };
}
pub(crate) use object_columns;

/// Makes `$1..$11` (see [`upsert_args`]) the object's current version.
const UPSERT: &str = concat!(
    "INSERT INTO objects (bucket, path, version, size, content_type, etag, metadata, owner, cache_control,
       content_encoding, content_disposition)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (bucket, path) DO UPDATE SET version = EXCLUDED.version, size = EXCLUDED.size,
       content_type = EXCLUDED.content_type, etag = EXCLUDED.etag, metadata = EXCLUDED.metadata,
       owner = EXCLUDED.owner, cache_control = EXCLUDED.cache_control,
       content_encoding = EXCLUDED.content_encoding,
       content_disposition = EXCLUDED.content_disposition, updated_at = now()
     RETURNING ",
    object_columns!()
);

fn upsert_args(new: &ObjectRecord) -> Result<PgArguments, StorageError> {
    let mut args = PgArguments::default();
    let add = |result: Result<(), sqlx::error::BoxDynError>| {
        result.map_err(|e| StorageError::Internal(e.to_string()))
    };
    add(args.add(new.bucket.clone()))?;
    add(args.add(new.name.clone()))?;
    add(args.add(new.version.clone()))?;
    add(args.add(new.size))?;
    add(args.add(new.content_type.clone()))?;
    add(args.add(new.etag.clone()))?;
    add(args.add(new.metadata.clone()))?;
    add(args.add(new.owner.clone()))?;
    add(args.add(new.cache_control.clone()))?;
    add(args.add(new.content_encoding.clone()))?;
    add(args.add(new.content_disposition.clone()))?;
    Ok(args)
}

fn upsert_error(error: sqlx::Error, new: &ObjectRecord) -> StorageError {
    match &error {
        // The bucket was deleted while the bytes were uploading.
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
            StorageError::BucketNotFound(new.bucket.clone())
        }
        _ => db(error),
    }
}

/// Conditions on the current state of the object a write replaces or removes.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// `If-Match`: the current ETag must be one of these (`*`: must exist).
    pub if_match: Option<Vec<String>>,
    /// `If-None-Match: *`: must not exist (412 otherwise).
    pub must_not_exist: bool,
    /// A create (`POST`): must not exist (409 otherwise).
    pub create_only: bool,
}

impl Preconditions {
    /// A plain upsert: nothing to compare with the current version.
    fn is_none(&self) -> bool {
        self.if_match.is_none() && !self.must_not_exist && !self.create_only
    }

    fn check(&self, current: Option<&str>) -> Result<(), StorageError> {
        if self.create_only && current.is_some() {
            return Err(StorageError::AlreadyExists);
        }
        if self.must_not_exist && current.is_some() {
            return Err(StorageError::PreconditionFailed(
                "If-None-Match: the object exists",
            ));
        }
        if let Some(tags) = &self.if_match {
            let ok = match current {
                None => false,
                Some(etag) => tags.iter().any(|t| t == "*" || t.trim_matches('"') == etag),
            };
            if !ok {
                return Err(StorageError::PreconditionFailed(
                    "If-Match does not match the object's ETag",
                ));
            }
        }
        Ok(())
    }
}

/// What a write carries besides bytes.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub bucket: String,
    pub path: String,
    pub content_type: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// As sent (`3600` or a header value); see [`cache_control_of`].
    pub cache_control: Option<String>,
    /// Kept and sent back as is (S3 clients set them); see [`header_value_of`].
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub declared_length: Option<u64>,
    pub preconditions: Preconditions,
}

/// The `Cache-Control` an upload asks for: Supabase's `cacheControl` option is a
/// number of seconds (`3600` → `max-age=3600`); anything else is kept as a header
/// value, if it is one (printable ASCII, at most 256 bytes).
pub(crate) fn cache_control_of(requested: &str) -> Result<String, StorageError> {
    let value = requested.trim();
    if !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(format!("max-age={value}"));
    }
    if value.is_empty()
        || value.len() > 256
        || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(StorageError::Invalid(format!(
            "invalid cache control {requested:?}"
        )));
    }
    Ok(value.to_owned())
}

/// What a copy sets instead of the source's (S3's `MetadataDirective: REPLACE`).
#[derive(Debug, Clone, Default)]
pub struct ReplacedHeaders {
    pub content_type: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
}

/// A representation header kept as sent (`Content-Encoding`, `Content-Disposition`):
/// printable ASCII, at most 256 bytes, so it can be sent back as a header.
pub(crate) fn header_value_of(name: &str, value: &str) -> Result<(), StorageError> {
    if value.is_empty()
        || value.len() > 256
        || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(StorageError::Invalid(format!("invalid {name} {value:?}")));
    }
    Ok(())
}

/// Whether a bucket's allowed types admit `content_type` (`image/*` wildcards).
pub(crate) fn type_allowed(allowed: &Option<Vec<String>>, content_type: &str) -> bool {
    let Some(allowed) = allowed else { return true };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_suffix("/*") {
            Some(top) => essence.split('/').next() == Some(top),
            None => pattern == essence || pattern == "*/*",
        }
    })
}

pub(crate) fn check_content_type(content_type: &str) -> Result<(), StorageError> {
    let valid = content_type.len() <= 255
        && content_type.split(';').next().is_some_and(|essence| {
            let mut parts = essence.trim().split('/');
            matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
        })
        && !content_type.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "invalid content type {content_type:?}"
        )))
    }
}

pub(crate) fn check_metadata(metadata: &serde_json::Value) -> Result<(), StorageError> {
    if !metadata.is_object() {
        return Err(StorageError::Invalid(
            "object metadata must be a JSON object".to_owned(),
        ));
    }
    minicloud_proto::error::check_json_text(metadata, "metadata")?;
    if metadata.to_string().len() > 8 * 1024 {
        return Err(StorageError::Invalid(
            "object metadata larger than 8 KiB".to_owned(),
        ));
    }
    Ok(())
}

fn db(error: sqlx::Error) -> StorageError {
    StorageError::Database(error)
}

pub(crate) fn resource(bucket: &str, path: &str) -> String {
    format!("storage:{bucket}/{path}")
}

fn event(kind: &str, object: &ObjectRecord) -> OutboxEvent {
    OutboxEvent::new(
        "/minicloud/storage",
        &format!("minicloud.storage.object.{kind}"),
        Some(format!("{}/{}", object.bucket, object.name)),
        serde_json::json!({
            "bucket": object.bucket,
            "path": object.name,
            "size": object.size,
            "content_type": object.content_type,
            "etag": object.etag,
            "owner": object.owner,
        }),
    )
}

impl Storage {
    /// The bucket as object calls see it: cached for [`crate::BUCKET_CACHE_TTL`].
    pub(crate) async fn load_bucket(&self, name: &str) -> Result<BucketRecord, StorageError> {
        if let Some(bucket) = self.buckets.get(name) {
            return Ok(bucket);
        }
        let bucket = crate::buckets::load(self, name)
            .await?
            .ok_or_else(|| StorageError::BucketNotFound(name.to_owned()))?;
        self.buckets.insert(name.to_owned(), bucket.clone());
        Ok(bucket)
    }

    pub(crate) fn bucket_policy(bucket: &BucketRecord) -> Policy {
        Policy::from_json(&bucket.policy).unwrap_or_default()
    }

    pub(crate) async fn authorize_object(
        &self,
        caller: &Caller,
        action: Action,
        bucket: &BucketRecord,
        path: &str,
    ) -> Result<(), StorageError> {
        let policy = Self::bucket_policy(bucket);
        Ok(self
            .authz
            .authorize(caller, action, &resource(&bucket.name, path), &[&policy])
            .await?)
    }

    pub(crate) fn size_limit(&self, bucket: &BucketRecord) -> u64 {
        let global = self.config.max_object_size;
        bucket
            .file_size_limit
            .map(|l| (l as u64).min(global))
            .unwrap_or(global)
    }

    /// Validates a write before any byte is read.
    pub async fn prepare_write(
        &self,
        caller: &Caller,
        request: &WriteRequest,
    ) -> Result<(BucketRecord, u64), StorageError> {
        let bucket = self.load_bucket(&request.bucket).await?;
        self.authorize_object(caller, Action::StoragePutObject, &bucket, &request.path)
            .await?;
        let content_type = request
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        check_content_type(content_type)?;
        if !type_allowed(&bucket.allowed_mime_types, content_type) {
            return Err(StorageError::TypeNotAllowed(format!(
                "content type {content_type} is not allowed in bucket {}",
                bucket.name
            )));
        }
        if let Some(metadata) = &request.metadata {
            check_metadata(metadata)?;
        }
        if let Some(cache_control) = &request.cache_control {
            cache_control_of(cache_control)?;
        }
        for (name, value) in [
            ("Content-Encoding", &request.content_encoding),
            ("Content-Disposition", &request.content_disposition),
        ] {
            if let Some(value) = value {
                header_value_of(name, value)?;
            }
        }
        let limit = self.size_limit(&bucket);
        if request.declared_length.is_some_and(|n| n > limit) {
            return Err(StorageError::TooLarge(format!(
                "object larger than the limit of {limit} bytes"
            )));
        }
        // Fail early, before any byte is stored, on a precondition that already
        // fails; it is checked again under a row lock before commit.
        if !request.preconditions.is_none() {
            let current = self.current_etag(&request.bucket, &request.path).await?;
            request.preconditions.check(current.as_deref())?;
        }
        Ok((bucket, limit))
    }

    async fn current_etag(&self, bucket: &str, path: &str) -> Result<Option<String>, StorageError> {
        sqlx::query_scalar("SELECT etag FROM objects WHERE bucket = $1 AND path = $2")
            .bind(bucket)
            .bind(path)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    /// Streams `body` into a new blob and makes it the object's current version.
    pub async fn write_object(
        &self,
        caller: &Caller,
        request: WriteRequest,
        body: ByteStream,
        owner: Option<String>,
    ) -> Result<ObjectRecord, StorageError> {
        if let Err(error) = self.check_cap(&request.bucket, caller) {
            Self::discard(body, request.declared_length).await;
            return Err(error);
        }
        let (_bucket, limit) = match self.prepare_write(caller, &request).await {
            Ok(prepared) => prepared,
            Err(error) => {
                Self::discard(body, request.declared_length).await;
                return Err(error);
            }
        };
        let version = uuid::Uuid::now_v7().simple().to_string();
        let key = blob_key(&request.path, &version);
        let written = self
            .backend
            .put(&request.bucket, &key, body, limit)
            .await
            .map_err(StorageError::from)?;
        // The row as it will be written (the timestamps are the database's).
        let new = ObjectRecord {
            bucket: request.bucket.clone(),
            name: request.path.clone(),
            version,
            size: written.size as i64,
            content_type: request
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            etag: written.md5_hex,
            metadata: request
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
            cache_control: request
                .cache_control
                .as_deref()
                .map(cache_control_of)
                .transpose()?,
            content_encoding: request.content_encoding.clone(),
            content_disposition: request.content_disposition.clone(),
            owner,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let committed = self.commit_write(&request, &new).await;
        match committed {
            Ok((object, replaced)) => {
                if let Some(old) = replaced {
                    self.remove_blob(&request.bucket, &blob_key(&request.path, &old))
                        .await;
                }
                self.relay.wake();
                self.meter_request(
                    &request.bucket,
                    &minicloud_metering::owner_of(caller),
                    Meter::StorageWriteRequests,
                );
                Ok(object)
            }
            Err(error) => {
                self.remove_blob(&request.bucket, &key).await;
                Err(error)
            }
        }
    }

    /// Makes `new` the object's current version, with its event; returns the row
    /// and the version it replaced.
    pub(crate) async fn commit_write(
        &self,
        request: &WriteRequest,
        new: &ObjectRecord,
    ) -> Result<(ObjectRecord, Option<String>), StorageError> {
        if request.preconditions.is_none() {
            return self.upsert_in_one_statement(new).await;
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let current: Option<(String, String)> = sqlx::query_as(
            "SELECT version, etag FROM objects WHERE bucket = $1 AND path = $2 FOR UPDATE",
        )
        .bind(&request.bucket)
        .bind(&request.path)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        request
            .preconditions
            .check(current.as_ref().map(|(_, etag)| etag.as_str()))?;
        let object = sqlx::query_as_with::<_, ObjectRecord, _>(UPSERT, upsert_args(new)?)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| upsert_error(e, new))?;
        minicloud_outbox::enqueue(&mut tx, "storage", &event("created", &object))
            .await
            .map_err(StorageError::from)?;
        tx.commit().await.map_err(db)?;
        Ok((object, current.map(|(version, _)| version)))
    }

    /// A write without preconditions as one autocommitted statement: the metadata
    /// upsert and its event in the outbox together, one round trip to Postgres
    /// instead of five. The version it replaces is read from the statement's
    /// snapshot: when two writers of one path race, both may name the same old
    /// blob, and the one in between is left to the orphan sweep — never is a blob
    /// still pointed at removed.
    async fn upsert_in_one_statement(
        &self,
        new: &ObjectRecord,
    ) -> Result<(ObjectRecord, Option<String>), StorageError> {
        // Every field of the event is known before the write.
        let event = serde_json::to_value(event("created", new))
            .map_err(|e| StorageError::Internal(e.to_string()))?;
        let sql = format!(
            "WITH old AS (
                SELECT version FROM objects WHERE bucket = $1 AND path = $2
            ), written AS ({UPSERT}
            ), event AS (
                {insert} SELECT 'storage', $12::jsonb FROM written
            )
            SELECT written.*, (SELECT version FROM old) AS replaced FROM written",
            insert = minicloud_outbox::INSERT_INTO,
        );
        let mut args = upsert_args(new)?;
        args.add(event)
            .map_err(|e| StorageError::Internal(e.to_string()))?;
        let row = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| upsert_error(e, new))?;
        let object = ObjectRecord::from_row(&row).map_err(db)?;
        let replaced: Option<String> = row.try_get("replaced").map_err(db)?;
        Ok((object, replaced))
    }

    /// Deletes a blob nobody points at any more; a failure leaves it to the sweep.
    pub(crate) async fn remove_blob(&self, bucket: &str, key: &str) {
        if let Err(error) = self.backend.delete(bucket, key).await {
            tracing::warn!(bucket, key, %error, "removing a blob failed; the orphan sweep will retry");
        }
    }

    pub async fn object_info(
        &self,
        bucket: &str,
        path: &str,
    ) -> Result<ObjectRecord, StorageError> {
        sqlx::query_as::<_, ObjectRecord>(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE bucket = $1 AND path = $2"
        ))
        .bind(bucket)
        .bind(path)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| StorageError::ObjectNotFound)
    }

    /// An authorised read: public buckets need no permission.
    pub async fn authorize_read(
        &self,
        caller: &Caller,
        bucket: &str,
        path: &str,
    ) -> Result<ObjectRecord, StorageError> {
        let bucket_row = self.load_bucket(bucket).await?;
        if !bucket_row.public {
            self.authorize_object(caller, Action::StorageGetObject, &bucket_row, path)
                .await?;
        }
        let object = self.object_info(bucket, path).await?;
        self.meter_request(
            bucket,
            &minicloud_metering::owner_of(caller),
            Meter::StorageReadRequests,
        );
        Ok(object)
    }

    /// Writes to a bucket a budget caps are refused (402); reads go on.
    pub(crate) fn check_cap(&self, bucket: &str, caller: &Caller) -> Result<(), StorageError> {
        match self
            .meters
            .capped("storage", bucket, &minicloud_metering::owner_of(caller))
        {
            None => Ok(()),
            Some(budget) => Err(StorageError::Denied(ApiError::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "budget {budget} is used up: writes to bucket {bucket} are refused until the month ends or the budget changes"
                ),
            ))),
        }
    }

    /// One request of a class (S3's: writes and lists, or reads) on `bucket`.
    pub(crate) fn meter_request(&self, bucket: &str, owner: &str, class: Meter) {
        self.meters.record(bucket, owner, &[(class, 1)]);
    }

    /// Opens the object's bytes for `reader` (the owner its bytes out are metered
    /// to; `None`: read inside the service, as a part copy does); retries once if a
    /// concurrent replace removed the version just read.
    pub async fn open(
        &self,
        object: ObjectRecord,
        range: Option<ByteRange>,
        reader: Option<String>,
    ) -> Result<(ObjectRecord, ByteStream), StorageError> {
        let (object, stream) = self.open_version(object, range).await?;
        let stream = match reader {
            Some(owner) => Box::pin(BytesOut {
                stream,
                sent: 0,
                meters: self.meters.clone(),
                bucket: object.bucket.clone(),
                owner,
            }),
            None => stream,
        };
        Ok((object, stream))
    }

    async fn open_version(
        &self,
        object: ObjectRecord,
        range: Option<ByteRange>,
    ) -> Result<(ObjectRecord, ByteStream), StorageError> {
        // The size is known from the metadata: naming the whole range spares the
        // backend a stat.
        let whole = |size: i64| {
            (size > 0).then(|| ByteRange {
                start: 0,
                end: size as u64 - 1,
            })
        };
        let key = blob_key(&object.name, &object.version);
        match self
            .backend
            .get(&object.bucket, &key, range.or_else(|| whole(object.size)))
            .await
        {
            Ok(stream) => Ok((object, stream)),
            Err(BackendError::NotFound) => {
                let fresh = self.object_info(&object.bucket, &object.name).await?;
                let key = blob_key(&fresh.name, &fresh.version);
                let stream = self
                    .backend
                    .get(&fresh.bucket, &key, range.or_else(|| whole(fresh.size)))
                    .await
                    .map_err(StorageError::from)?;
                Ok((fresh, stream))
            }
            Err(error) => Err(StorageError::from(error)),
        }
    }

    pub async fn delete_object(
        &self,
        caller: &Caller,
        bucket: &str,
        path: &str,
        preconditions: &Preconditions,
    ) -> Result<ObjectRecord, StorageError> {
        let bucket_row = self.load_bucket(bucket).await?;
        self.authorize_object(caller, Action::StorageDeleteObject, &bucket_row, path)
            .await?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let object = sqlx::query_as::<_, ObjectRecord>(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE bucket = $1 AND path = $2 FOR UPDATE"
        ))
        .bind(bucket)
        .bind(path)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| StorageError::ObjectNotFound)?;
        preconditions.check(Some(&object.etag))?;
        sqlx::query("DELETE FROM objects WHERE bucket = $1 AND path = $2")
            .bind(bucket)
            .bind(path)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        minicloud_outbox::enqueue(&mut tx, "storage", &event("deleted", &object))
            .await
            .map_err(StorageError::from)?;
        tx.commit().await.map_err(db)?;
        self.remove_blob(bucket, &blob_key(path, &object.version))
            .await;
        self.relay.wake();
        Ok(object)
    }

    /// Deletes every object of a bucket, with an event each.
    pub async fn empty_bucket(&self, bucket: &str) -> Result<u64, StorageError> {
        let mut deleted = 0;
        loop {
            let mut tx = self.pool.begin().await.map_err(db)?;
            let batch = sqlx::query_as::<_, ObjectRecord>(concat!(
                "DELETE FROM objects WHERE (bucket, path) IN
                   (SELECT bucket, path FROM objects WHERE bucket = $1 ORDER BY path LIMIT 500 FOR UPDATE)
                 RETURNING ",
                object_columns!()
            ))
            .bind(bucket)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            for object in &batch {
                minicloud_outbox::enqueue(&mut tx, "storage", &event("deleted", object))
                    .await
                    .map_err(StorageError::from)?;
            }
            tx.commit().await.map_err(db)?;
            for object in &batch {
                self.remove_blob(bucket, &blob_key(&object.name, &object.version))
                    .await;
            }
            deleted += batch.len() as u64;
            self.relay.wake();
        }
    }

    /// Copies (or moves) an object, possibly across buckets.
    pub async fn copy_object(
        &self,
        caller: &Caller,
        from: (&str, &str),
        to: (&str, &str),
        remove_source: bool,
        replace: Option<ReplacedHeaders>,
    ) -> Result<ObjectRecord, StorageError> {
        self.check_cap(to.0, caller)?;
        let source_bucket = self.load_bucket(from.0).await?;
        let target_bucket = self.load_bucket(to.0).await?;
        if !source_bucket.public {
            self.authorize_object(caller, Action::StorageGetObject, &source_bucket, from.1)
                .await?;
        }
        self.authorize_object(caller, Action::StoragePutObject, &target_bucket, to.1)
            .await?;
        if remove_source {
            self.authorize_object(caller, Action::StorageDeleteObject, &source_bucket, from.1)
                .await?;
        }
        if from == to && (remove_source || replace.is_none()) {
            return Err(StorageError::Invalid(
                "source and destination are the same object".to_owned(),
            ));
        }
        let mut source = self.object_info(from.0, from.1).await?;
        let source_etag = source.etag.clone();
        let source_version = source.version.clone();
        if let Some(replace) = replace {
            let content_type = replace
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into());
            check_content_type(&content_type)?;
            let metadata = replace.metadata.unwrap_or_else(|| serde_json::json!({}));
            check_metadata(&metadata)?;
            for (name, value) in [
                ("Content-Encoding", &replace.content_encoding),
                ("Content-Disposition", &replace.content_disposition),
            ] {
                if let Some(value) = value {
                    header_value_of(name, value)?;
                }
            }
            source = ObjectRecord {
                content_type,
                metadata,
                cache_control: replace
                    .cache_control
                    .as_deref()
                    .map(cache_control_of)
                    .transpose()?,
                content_encoding: replace.content_encoding,
                content_disposition: replace.content_disposition,
                ..source
            };
        }
        if !type_allowed(&target_bucket.allowed_mime_types, &source.content_type) {
            return Err(StorageError::TypeNotAllowed(
                "content type not allowed in the destination bucket".to_owned(),
            ));
        }
        if source.size as u64 > self.size_limit(&target_bucket) {
            return Err(StorageError::TooLarge(
                "object larger than the destination bucket allows".to_owned(),
            ));
        }
        let version = uuid::Uuid::now_v7().simple().to_string();
        let key = blob_key(to.1, &version);
        self.backend
            .copy(from.0, &blob_key(from.1, &source_version), to.0, &key)
            .await
            .map_err(StorageError::from)?;
        let request = WriteRequest {
            bucket: to.0.to_owned(),
            path: to.1.to_owned(),
            content_type: Some(source.content_type.clone()),
            metadata: Some(source.metadata.clone()),
            cache_control: source.cache_control.clone(),
            content_encoding: source.content_encoding.clone(),
            content_disposition: source.content_disposition.clone(),
            declared_length: None,
            preconditions: Preconditions::default(),
        };
        let new = ObjectRecord {
            bucket: request.bucket.clone(),
            name: request.path.clone(),
            version,
            owner: caller.owner().map(str::to_owned),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            ..source.clone()
        };
        let committed = self.commit_write(&request, &new).await;
        let (object, replaced) = match committed {
            Ok(done) => done,
            Err(error) => {
                self.remove_blob(to.0, &key).await;
                return Err(error);
            }
        };
        if let Some(old) = replaced {
            self.remove_blob(to.0, &blob_key(to.1, &old)).await;
        }
        self.meter_request(
            to.0,
            &minicloud_metering::owner_of(caller),
            Meter::StorageWriteRequests,
        );
        if remove_source {
            match self
                .delete_object(
                    caller,
                    from.0,
                    from.1,
                    &Preconditions {
                        if_match: Some(vec![source_etag.clone()]),
                        ..Preconditions::default()
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(
                    StorageError::PreconditionFailed(_)
                    | StorageError::ObjectNotFound
                    | StorageError::BucketNotFound(_),
                ) => {
                    // The source changed meanwhile: the copy stands, the newer source stays.
                    tracing::info!(
                        bucket = from.0,
                        path = from.1,
                        "move kept a source that changed during the copy"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        self.relay.wake();
        Ok(object)
    }

    /// Drains a body nobody will store, so the 4xx that follows is not lost to a
    /// connection reset (see `telemetry::server`).
    pub async fn discard(mut body: ByteStream, declared: Option<u64>) {
        if declared.is_some_and(|n| n > 32 * 1024 * 1024) {
            return;
        }
        let drain = async { while let Some(Ok(_)) = body.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    }
}

/// An object's bytes on their way to a reader, counted: what was sent is metered
/// (`storage.bytes_out`) when the response ends, completed or cut off.
struct BytesOut {
    stream: ByteStream,
    sent: u64,
    meters: minicloud_metering::Meters,
    bucket: String,
    owner: String,
}

impl futures::Stream for BytesOut {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.stream.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            this.sent += chunk.len() as u64;
        }
        polled
    }
}

impl Drop for BytesOut {
    fn drop(&mut self) {
        if self.sent > 0 {
            self.meters.record(
                &self.bucket,
                &self.owner,
                &[(Meter::StorageBytesOut, self.sent)],
            );
        }
    }
}
