//! The S3 operations minicloud serves, each a call into storage's own operations
//! (`objects.rs`, `buckets.rs`, `listing.rs`, `multipart.rs`). Anything else answers
//! S3's `NotImplemented`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use minicloud_authz::{Action, Caller};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::errors::{from_api, from_storage};
use crate::Storage;
use crate::backend::{ByteRange, ByteStream};
use crate::multipart::UploadRef;
use crate::objects::{ObjectRecord, Preconditions, ReplacedHeaders, WriteRequest};
use crate::paths::{normalise_path, normalise_prefix};

pub(crate) struct StorageS3(pub(crate) Storage);

/// Our byte streams are `Send`; s3s wants `Sync` too. A stream is only ever polled
/// through `&mut`, so the wrapper makes that so without a lock.
struct SyncStream(sync_wrapper::SyncWrapper<ByteStream>);

impl Stream for SyncStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.get_mut().as_mut().poll_next(cx)
    }
}

fn blob(stream: ByteStream) -> StreamingBlob {
    StreamingBlob::wrap(SyncStream(sync_wrapper::SyncWrapper::new(stream)))
}

/// A request body as storage's byte stream. s3s checks the payload as it streams
/// (its SHA-256, each `aws-chunked` chunk's signature) and fails the stream when it
/// does not match; that failure is kept typed so the client hears `BadDigest` or
/// `SignatureDoesNotMatch`, not a cut-off body. s3s's error types are private: they
/// are told apart by their text.
fn body_of(body: Option<StreamingBlob>) -> ByteStream {
    match body {
        None => Box::pin(futures::stream::empty()),
        Some(body) => Box::pin(body.map(|chunk| {
            chunk.map_err(|error| {
                let text = error.to_string();
                let rejected = if text.contains("Sha256Mismatch") {
                    Some(S3ErrorCode::BadDigest)
                } else if text.contains("SignatureMismatch") {
                    Some(S3ErrorCode::SignatureDoesNotMatch)
                } else {
                    None
                };
                match rejected {
                    Some(code) => std::io::Error::other(super::errors::PayloadRejected(code)),
                    None => std::io::Error::other(error),
                }
            })
        })),
    }
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(SystemTime::from(at))
}

fn unix_seconds(at: Timestamp) -> i64 {
    time::OffsetDateTime::from(at).unix_timestamp()
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_owned())
}

fn key_of(key: &str) -> S3Result<String> {
    normalise_path(key).map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, e.message))
}

fn prefix_of(prefix: Option<&str>) -> S3Result<String> {
    normalise_prefix(prefix.unwrap_or(""))
        .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, e.message))
}

/// `x-amz-meta-*` as the object's metadata (a JSON object of strings).
fn metadata_in(metadata: Option<Metadata>) -> Option<serde_json::Value> {
    metadata.map(|m| {
        serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), serde_json::Value::String(v)))
                .collect(),
        )
    })
}

/// The object's metadata as `x-amz-meta-*`: strings as they are, anything else (set
/// through the REST API) as its JSON text.
fn metadata_out(object: &ObjectRecord) -> Option<Metadata> {
    let map = object.metadata.as_object()?;
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    })
}

fn condition_tags(condition: Option<&ETagCondition>) -> Option<Vec<String>> {
    condition.map(|c| match c {
        ETagCondition::Any => vec!["*".to_owned()],
        ETagCondition::ETag(tag) => vec![tag.value().to_owned()],
    })
}

fn matches(condition: &ETagCondition, object: &ObjectRecord) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == object.etag,
    }
}

/// The preconditions of a GET or HEAD.
struct ReadConditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

/// What a GET and a HEAD answer alike.
struct Read {
    object: ObjectRecord,
    range: Option<ByteRange>,
    size: u64,
    headers: http::HeaderMap,
    /// Who the bytes out are metered to.
    reader: String,
}

/// GET/HEAD conditions, in RFC 9110's order.
fn check_read_conditions(object: &ObjectRecord, conditions: ReadConditions<'_>) -> S3Result<()> {
    let ReadConditions {
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    } = conditions;
    let modified = object.updated_at.timestamp();
    if let Some(condition) = if_match {
        if !matches(condition, object) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(since) = if_unmodified_since
        && modified > unix_seconds(since.clone())
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(condition) = if_none_match {
        if matches(condition, object) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(since) = if_modified_since
        && modified <= unix_seconds(since.clone())
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

fn byte_range(range: Option<&Range>, size: u64) -> S3Result<Option<ByteRange>> {
    let Some(range) = range else { return Ok(None) };
    let checked = range.check(size).map_err(|_| {
        s3_error!(
            InvalidRange,
            "the range is outside the object's {size} bytes"
        )
    })?;
    if checked.is_empty() {
        return Err(s3_error!(InvalidRange));
    }
    Ok(Some(ByteRange {
        start: checked.start,
        end: checked.end - 1,
    }))
}

/// `bytes=a-b` of UploadPartCopy's `x-amz-copy-source-range`.
fn copy_range(value: Option<&str>) -> S3Result<Option<ByteRange>> {
    let Some(value) = value else { return Ok(None) };
    let invalid = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last"
        )
    };
    let (first, last) = value
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let start: u64 = first.parse().map_err(|_| invalid())?;
    let end: u64 = last.parse().map_err(|_| invalid())?;
    if start > end {
        return Err(invalid());
    }
    Ok(Some(ByteRange { start, end }))
}

fn copy_source(source: &CopySource) -> S3Result<(String, String)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket.to_string(), key_of(key)?)),
        _ => Err(s3_error!(NotImplemented, "copy sources are bucket/key")),
    }
}

impl StorageS3 {
    async fn caller<T>(&self, req: &S3Request<T>) -> S3Result<Caller> {
        super::caller_of(&self.0.authz, req.credentials.as_ref()).await
    }

    /// The bucket when `caller` may see it; S3 answers `NoSuchBucket` otherwise, so
    /// private bucket names are not given away.
    async fn visible_bucket(
        &self,
        caller: &Caller,
        name: &str,
    ) -> S3Result<crate::buckets::BucketRecord> {
        let bucket = self.0.load_bucket(name).await.map_err(from_storage)?;
        if crate::buckets::visible(&self.0, caller, &bucket)
            .await
            .map_err(from_api)?
        {
            Ok(bucket)
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// What a read of `bucket/key` returns: the object if `caller` may read it.
    async fn readable(&self, caller: &Caller, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        let key = key_of(key)?;
        self.0
            .authorize_read(caller, bucket, &key)
            .await
            .map_err(from_storage)
    }

    /// A GET or HEAD up to the bytes: the caller may read, the conditions hold, the
    /// range fits.
    async fn prepare_read<T>(
        &self,
        req: &S3Request<T>,
        (bucket, key): (&str, &str),
        conditions: ReadConditions<'_>,
        range: Option<&Range>,
        response_content_type: Option<&str>,
    ) -> S3Result<Read> {
        let caller = self.caller(req).await?;
        let object = self.readable(&caller, bucket, key).await?;
        let reader = minicloud_metering::owner_of(&caller);
        check_read_conditions(&object, conditions)?;
        let size = object.size as u64;
        let range = byte_range(range, size)?;
        let headers = self.read_headers(&object, response_content_type).await?;
        Ok(Read {
            object,
            range,
            size,
            headers,
            reader,
        })
    }

    /// The headers every read answers with, as the REST API sends them: a download
    /// of active content (HTML, SVG, scripts) is an attachment unless the bucket
    /// allows it inline, so an object never runs with the gateway's origin.
    async fn read_headers(
        &self,
        object: &ObjectRecord,
        overridden_type: Option<&str>,
    ) -> S3Result<http::HeaderMap> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-content-type-options",
            http::HeaderValue::from_static("nosniff"),
        );
        let effective = overridden_type.unwrap_or(&object.content_type);
        let active = crate::rest::is_active_content(effective)
            || crate::rest::is_active_content(&object.content_type);
        if active
            && !self
                .0
                .load_bucket(&object.bucket)
                .await
                .map_err(from_storage)?
                .inline_active_content
        {
            headers.insert(
                http::header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static("attachment"),
            );
        }
        Ok(headers)
    }
}

#[async_trait::async_trait]
impl S3 for StorageS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let caller = self.caller(&req).await?;
        if req.credentials.is_none() {
            return Err(s3_error!(AccessDenied, "sign the request to list buckets"));
        }
        let buckets = crate::buckets::visible_buckets(&self.0, &caller)
            .await
            .map_err(from_api)?;
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let buckets = buckets
            .into_iter()
            .filter(|b| b.name.starts_with(&prefix))
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created_at)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("minicloud".into()),
                id: Some(caller.owner().unwrap_or("minicloud").to_owned()),
            }),
            prefix: req.input.prefix,
            continuation_token: None,
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let caller = self.caller(&req).await?;
        let name = req.input.bucket.clone();
        let input = crate::buckets::BucketIn {
            name: Some(name.clone()),
            id: None,
            public: matches!(
                req.input.acl.as_ref().map(|a| a.as_str()),
                Some("public-read")
            ),
            file_size_limit: None,
            allowed_mime_types: None,
            policy: None,
            inline_active_content: None,
        };
        match crate::buckets::create_bucket(&self.0, &caller, input).await {
            Ok(_) => Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{name}")),
            })),
            Err(error) if error.code == minicloud_proto::error::ErrorCode::Conflict => {
                let existing = crate::buckets::load(&self.0, &name)
                    .await
                    .map_err(from_api)?;
                let yours = existing.is_some_and(|b| b.owner.as_deref() == caller.owner());
                Err(if yours {
                    s3_error!(BucketAlreadyOwnedByYou)
                } else {
                    s3_error!(BucketAlreadyExists)
                })
            }
            Err(error) if error.code == minicloud_proto::error::ErrorCode::InvalidArgument => Err(
                S3Error::with_message(S3ErrorCode::InvalidBucketName, error.message),
            ),
            Err(error) => Err(from_api(error)),
        }
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let caller = self.caller(&req).await?;
        match crate::buckets::delete_bucket(&self.0, &caller, &req.input.bucket).await {
            Ok(()) => Ok(S3Response::new(DeleteBucketOutput {})),
            Err(error) if error.code == minicloud_proto::error::ErrorCode::Conflict => Err(
                S3Error::with_message(S3ErrorCode::BucketNotEmpty, error.message),
            ),
            Err(error) => Err(from_api(error)),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let caller = self.caller(&req).await?;
        self.visible_bucket(&caller, &req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some("us-east-1".into()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let caller = self.caller(&req).await?;
        self.visible_bucket(&caller, &req.input.bucket).await?;
        // us-east-1 is S3's empty location constraint.
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let prefix = prefix_of(input.prefix.as_deref())?;
        let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
        if delimiter.is_some_and(|d| d.len() > 8 || d.chars().any(char::is_control)) {
            return Err(s3_error!(
                InvalidArgument,
                "delimiter: 1 to 8 printable characters"
            ));
        }
        let max_keys = input.max_keys.unwrap_or(1000);
        if max_keys < 0 {
            return Err(s3_error!(InvalidArgument, "max-keys must not be negative"));
        }
        let bucket = self
            .0
            .load_bucket(&input.bucket)
            .await
            .map_err(from_storage)?;
        self.0
            .authorize_object(&caller, Action::StorageListObjects, &bucket, &prefix)
            .await
            .map_err(from_storage)?;
        // A listing is a class-A (write-priced) request, as in S3.
        self.0.meter_request(
            &input.bucket,
            &minicloud_metering::owner_of(&caller),
            minicloud_metering::Meter::StorageWriteRequests,
        );
        let cursor = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(after)) if !after.is_empty() => Some(crate::listing::cursor_after(after)),
            _ => None,
        };
        let listed = if max_keys == 0 {
            crate::listing::ListOut {
                objects: Vec::new(),
                prefixes: Vec::new(),
                next_cursor: None,
            }
        } else {
            self.0
                .list_objects(
                    &input.bucket,
                    &prefix,
                    delimiter,
                    max_keys.min(1000) as usize,
                    cursor.as_deref(),
                )
                .await
                .map_err(|e| match e.code {
                    minicloud_proto::error::ErrorCode::InvalidArgument => {
                        s3_error!(InvalidArgument, "invalid continuation token")
                    }
                    _ => from_api(e),
                })?
        };
        let key_count = (listed.objects.len() + listed.prefixes.len()) as i32;
        let contents = listed
            .objects
            .into_iter()
            .map(|o| Object {
                key: Some(o.name.clone()),
                e_tag: Some(etag(&o.etag)),
                size: Some(o.size),
                last_modified: Some(timestamp(o.updated_at)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        let common_prefixes = listed
            .prefixes
            .into_iter()
            .map(|p| CommonPrefix { prefix: Some(p) })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: delimiter.map(str::to_owned),
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(listed.next_cursor.is_some()),
            next_continuation_token: listed.next_cursor,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let body = body_of(input.body);
        let path = match key_of(&input.key) {
            Ok(path) => path,
            Err(error) => {
                Storage::discard(body, input.content_length.map(|n| n as u64)).await;
                return Err(error);
            }
        };
        let request = WriteRequest {
            bucket: input.bucket,
            path,
            content_type: input.content_type,
            metadata: metadata_in(input.metadata),
            cache_control: input.cache_control,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            declared_length: input.content_length.map(|n| n.max(0) as u64),
            preconditions: Preconditions {
                if_match: condition_tags(input.if_match.as_ref()),
                must_not_exist: input.if_none_match.as_ref().is_some_and(|c| c.is_any()),
                create_only: false,
            },
        };
        let object = self
            .0
            .write_object(&caller, request, body, caller.owner().map(str::to_owned))
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&object.etag)),
            size: Some(object.size),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = &req.input;
        let Read {
            object,
            range,
            size,
            headers,
            reader,
        } = self
            .prepare_read(
                &req,
                (&input.bucket, &input.key),
                ReadConditions {
                    if_match: input.if_match.as_ref(),
                    if_none_match: input.if_none_match.as_ref(),
                    if_modified_since: input.if_modified_since.as_ref(),
                    if_unmodified_since: input.if_unmodified_since.as_ref(),
                },
                input.range.as_ref(),
                input.response_content_type.as_deref(),
            )
            .await?;
        let (object, stream) = self
            .0
            .open(object, range, Some(reader))
            .await
            .map_err(from_storage)?;
        let output = GetObjectOutput {
            body: Some(blob(stream)),
            accept_ranges: Some("bytes".into()),
            content_length: Some(range.map_or(size, |r| r.len()) as i64),
            content_range: range.map(|r| format!("bytes {}-{}/{size}", r.start, r.end)),
            content_type: Some(object.content_type.clone()),
            // As stored, as S3 does: a response to a signed request is kept by no
            // shared cache unless the object says `public` (RFC 9111 §3.5).
            cache_control: object.cache_control.clone(),
            content_encoding: object.content_encoding.clone(),
            content_disposition: object.content_disposition.clone(),
            e_tag: Some(etag(&object.etag)),
            last_modified: Some(timestamp(object.updated_at)),
            metadata: metadata_out(&object),
            ..Default::default()
        };
        let mut response = S3Response::new(output);
        response.headers = headers;
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = &req.input;
        let Read {
            object,
            range,
            size,
            headers,
            ..
        } = self
            .prepare_read(
                &req,
                (&input.bucket, &input.key),
                ReadConditions {
                    if_match: input.if_match.as_ref(),
                    if_none_match: input.if_none_match.as_ref(),
                    if_modified_since: input.if_modified_since.as_ref(),
                    if_unmodified_since: input.if_unmodified_since.as_ref(),
                },
                input.range.as_ref(),
                input.response_content_type.as_deref(),
            )
            .await?;
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(range.map_or(size, |r| r.len()) as i64),
            content_range: range.map(|r| format!("bytes {}-{}/{size}", r.start, r.end)),
            content_type: Some(object.content_type.clone()),
            cache_control: object.cache_control.clone(),
            content_encoding: object.content_encoding.clone(),
            content_disposition: object.content_disposition.clone(),
            e_tag: Some(etag(&object.etag)),
            last_modified: Some(timestamp(object.updated_at)),
            metadata: metadata_out(&object),
            ..Default::default()
        };
        let mut response = S3Response::new(output);
        response.headers = headers;
        Ok(response)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let caller = self.caller(&req).await?;
        let key = key_of(&req.input.key)?;
        let preconditions = Preconditions {
            if_match: condition_tags(req.input.if_match.as_ref()),
            ..Preconditions::default()
        };
        match self
            .0
            .delete_object(&caller, &req.input.bucket, &key, &preconditions)
            .await
        {
            // S3 deletes are idempotent: a missing key is deleted already.
            Ok(_) | Err(crate::StorageError::ObjectNotFound) => {
                Ok(S3Response::new(DeleteObjectOutput::default()))
            }
            Err(error) => Err(from_storage(error)),
        }
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let caller = self.caller(&req).await?;
        let objects = &req.input.delete.objects;
        if objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        // A missing bucket fails the whole request, as S3 does.
        self.0
            .load_bucket(&req.input.bucket)
            .await
            .map_err(from_storage)?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for identifier in objects {
            let outcome = match key_of(&identifier.key) {
                Err(error) => Err(error),
                Ok(key) => {
                    let preconditions = Preconditions {
                        if_match: identifier
                            .e_tag
                            .as_ref()
                            .map(|t| vec![t.value().to_owned()]),
                        ..Preconditions::default()
                    };
                    match self
                        .0
                        .delete_object(&caller, &req.input.bucket, &key, &preconditions)
                        .await
                    {
                        Ok(_) | Err(crate::StorageError::ObjectNotFound) => Ok(()),
                        Err(error) => Err(from_storage(error)),
                    }
                }
            };
            match outcome {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(identifier.key.clone()),
                    ..Default::default()
                }),
                Err(error) => errors.push(Error {
                    code: Some(error.code().as_str().to_owned()),
                    key: Some(identifier.key.clone()),
                    message: error.message().map(str::to_owned),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let (from_bucket, from_key) = copy_source(&input.copy_source)?;
        let to_key = key_of(&input.key)?;
        let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some(MetadataDirective::COPY) => None,
            Some(MetadataDirective::REPLACE) => Some(ReplacedHeaders {
                content_type: input.content_type,
                metadata: metadata_in(input.metadata),
                cache_control: input.cache_control,
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
            }),
            Some(other) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "unknown metadata directive {other}"
                ));
            }
        };
        if let Some(condition) = &input.copy_source_if_match {
            let source = self.readable(&caller, &from_bucket, &from_key).await?;
            if !matches(condition, &source) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let object = self
            .0
            .copy_object(
                &caller,
                (&from_bucket, &from_key),
                (&input.bucket, &to_key),
                false,
                replace,
            )
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&object.etag)),
                last_modified: Some(timestamp(object.updated_at)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let request = WriteRequest {
            bucket: input.bucket.clone(),
            path: key_of(&input.key)?,
            content_type: input.content_type,
            metadata: metadata_in(input.metadata),
            cache_control: input.cache_control,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            declared_length: None,
            preconditions: Preconditions::default(),
        };
        let upload = self
            .0
            .create_upload(&caller, &request)
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload.upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let body = body_of(input.body);
        let declared = input.content_length.map(|n| n.max(0) as u64);
        let path = match key_of(&input.key) {
            Ok(path) => path,
            Err(error) => {
                Storage::discard(body, declared).await;
                return Err(error);
            }
        };
        let upload = UploadRef {
            bucket: &input.bucket,
            path: &path,
            upload_id: &input.upload_id,
        };
        let part = self
            .0
            .upload_part(&caller, upload, input.part_number, body, declared)
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let (from_bucket, from_key) = copy_source(&input.copy_source)?;
        let path = key_of(&input.key)?;
        let upload = UploadRef {
            bucket: &input.bucket,
            path: &path,
            upload_id: &input.upload_id,
        };
        let range = copy_range(input.copy_source_range.as_deref())?;
        let (part, _) = self
            .0
            .upload_part_copy(
                &caller,
                upload,
                input.part_number,
                (&from_bucket, &from_key),
                range,
            )
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&part.etag)),
                last_modified: Some(timestamp(part.created_at)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let path = key_of(&input.key)?;
        let upload = UploadRef {
            bucket: &input.bucket,
            path: &path,
            upload_id: &input.upload_id,
        };
        let mut chosen = Vec::new();
        for part in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            let (Some(number), Some(tag)) = (part.part_number, part.e_tag) else {
                return Err(s3_error!(
                    InvalidPart,
                    "every part needs its number and ETag"
                ));
            };
            chosen.push((number, tag.value().to_owned()));
        }
        let preconditions = Preconditions {
            if_match: condition_tags(input.if_match.as_ref()),
            must_not_exist: input.if_none_match.as_ref().is_some_and(|c| c.is_any()),
            create_only: false,
        };
        let object = self
            .0
            .complete_upload(&caller, upload, &chosen, preconditions)
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&object.etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let caller = self.caller(&req).await?;
        let path = key_of(&req.input.key)?;
        let upload = UploadRef {
            bucket: &req.input.bucket,
            path: &path,
            upload_id: &req.input.upload_id,
        };
        self.0
            .abort_upload(&caller, upload)
            .await
            .map_err(from_storage)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let path = key_of(&input.key)?;
        let upload = UploadRef {
            bucket: &input.bucket,
            path: &path,
            upload_id: &input.upload_id,
        };
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000);
        let after = input.part_number_marker.unwrap_or(0).max(0);
        let (_, parts, truncated) = self
            .0
            .list_parts(&caller, upload, after, max)
            .await
            .map_err(from_storage)?;
        let next = parts.last().map(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            upload_id: Some(input.upload_id.clone()),
            max_parts: Some(max),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        part_number: Some(p.part_number),
                        e_tag: Some(etag(&p.etag)),
                        size: Some(p.size),
                        last_modified: Some(timestamp(p.created_at)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let caller = self.caller(&req).await?;
        let input = req.input;
        let prefix = prefix_of(input.prefix.as_deref())?;
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000);
        let marker = input.key_marker.as_deref().map(|key| {
            (
                key,
                input.upload_id_marker.as_deref().unwrap_or("\u{10FFFF}"),
            )
        });
        let (uploads, truncated) = self
            .0
            .list_uploads(&caller, &input.bucket, &prefix, marker, max)
            .await
            .map_err(from_storage)?;
        let last = uploads
            .last()
            .map(|u| (u.path.clone(), u.upload_id.clone()));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket.clone()),
            prefix: Some(prefix),
            max_uploads: Some(max),
            key_marker: input.key_marker.clone(),
            upload_id_marker: input.upload_id_marker.clone(),
            is_truncated: Some(truncated),
            next_key_marker: last.as_ref().map(|(k, _)| k.clone()),
            next_upload_id_marker: last.map(|(_, id)| id),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.path),
                        upload_id: Some(u.upload_id),
                        initiated: Some(timestamp(u.created_at)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}
