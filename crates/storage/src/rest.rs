//! REST handlers for objects (Supabase Storage shapes). Thin: parse the request,
//! call the shared operations in `objects`, shape the answer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;
use minicloud_authz::Action;
use minicloud_authz::Caller;
use minicloud_metering::Meter;
use minicloud_proto::error::{ApiError, ErrorBody, ErrorCode, Json, Path, Query};
use serde::{Deserialize, Serialize};

use crate::Storage;
use crate::backend::{ByteRange, ByteStream};
use crate::error::StorageError;
use crate::form_upload;
use crate::listing::{FolderListIn, ListIn, ListOut};
use crate::objects::{ObjectRecord, Preconditions, WriteRequest};
use crate::paths::{normalise_path, normalise_prefix};
use crate::signing::{Grant, MAX_EXPIRES_IN, Operation};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("header {name} is not text"))),
    }
}

fn etag_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|t| {
            t.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_owned()
        })
        .collect()
}

fn preconditions(headers: &HeaderMap, create_only: bool) -> Result<Preconditions, ApiError> {
    let if_match = header_str(headers, "if-match")?.map(etag_list);
    let if_none_match = header_str(headers, "if-none-match")?;
    let must_not_exist = if_none_match.is_some_and(|v| v.trim() == "*");
    if if_none_match.is_some_and(|v| v.trim() != "*") {
        return Err(ApiError::invalid("on writes If-None-Match only takes *"));
    }
    Ok(Preconditions {
        if_match,
        must_not_exist,
        create_only,
    })
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn object_path(bucket: String, path: String) -> Result<(String, String), ApiError> {
    crate::buckets::check_bucket_name(&bucket)?;
    Ok((bucket, normalise_path(&path)?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UploadOut {
    /// `<bucket>/<path>`, as Supabase answers.
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(flatten)]
    pub object: ObjectRecord,
}

fn upload_answer(status: StatusCode, object: ObjectRecord) -> Response {
    let etag = format!("\"{}\"", object.etag);
    let out = UploadOut {
        key: format!("{}/{}", object.bucket, object.name),
        object,
    };
    let mut response = (status, Json(out)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn write(
    storage: &Storage,
    caller: &Caller,
    bucket: String,
    path: String,
    create_only: bool,
    owner: Option<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let declared_length =
        header_str(&parts.headers, "content-length")?.and_then(|v| v.parse().ok());
    let stream = body_stream(body);
    let parsed = (|| {
        let (bucket, path) = object_path(bucket, path)?;
        let upsert = header_str(&parts.headers, "x-upsert")?.is_some_and(|v| v == "true");
        let metadata = match header_str(&parts.headers, "x-metadata")? {
            None => None,
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|_| ApiError::invalid("x-metadata must be a JSON object"))?,
            ),
        };
        let content_type = header_str(&parts.headers, "content-type")?.map(str::to_owned);
        // supabase-js sends its `cacheControl` option as this header on raw uploads.
        let cache_control = header_str(&parts.headers, "cache-control")?.map(str::to_owned);
        Ok::<_, ApiError>(WriteRequest {
            bucket,
            path,
            content_type,
            metadata,
            cache_control,
            content_encoding: None,
            content_disposition: None,
            declared_length,
            preconditions: preconditions(&parts.headers, create_only && !upsert)?,
        })
    })();
    let request = match parsed {
        Ok(request) => request,
        Err(error) => {
            Storage::discard(stream, declared_length).await;
            return Err(error);
        }
    };
    let Some(boundary) = form_upload::boundary(request.content_type.as_deref()) else {
        let object = storage.write_object(caller, request, stream, owner).await?;
        return Ok(upload_answer(StatusCode::OK, object));
    };
    // A form: its file part is the object (never the envelope).
    let form = form_upload::open(stream, boundary).await?;
    let request = WriteRequest {
        content_type: form.content_type.clone(),
        metadata: form.metadata.clone().or(request.metadata),
        cache_control: form.cache_control.clone().or(request.cache_control),
        // The envelope's length is not the file's.
        declared_length: None,
        ..request
    };
    let (file, rest) = form.split();
    let written = storage.write_object(caller, request, file, owner).await;
    form_upload::FormFile::finish(rest).await;
    Ok(upload_answer(StatusCode::OK, written?))
}

#[utoipa::path(post, path = "/storage/v1/object/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bytes; Content-Type is stored; x-metadata: JSON object; x-upsert: true replaces. Or multipart/form-data as Supabase clients send it: the file part (with its Content-Type) is the object; cacheControl, metadata (JSON object) and contentType fields before it"),
    responses((status = 200, body = UploadOut), (status = 409, description = "exists", body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create(
    State(storage): State<Storage>,
    caller: Caller,
    Path((bucket, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let owner = caller.owner().map(str::to_owned);
    write(&storage, &caller, bucket, path, true, owner, request).await
}

#[utoipa::path(put, path = "/storage/v1/object/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = UploadOut), (status = 412, description = "If-Match failed", body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn upsert(
    State(storage): State<Storage>,
    caller: Caller,
    Path((bucket, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let owner = caller.owner().map(str::to_owned);
    write(&storage, &caller, bucket, path, false, owner, request).await
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`; `Err` for unsatisfiable.
fn parse_range(value: &str, size: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges: serve the whole object, as RFC 9110 allows.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ())?;
            let end: u64 = end.parse().map_err(|_| ())?;
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start >= size || start > end {
        return Err(());
    }
    Ok(Some(ByteRange { start, end }))
}

/// Types a browser renders as a document or runs: HTML, SVG, XML, JavaScript.
pub(crate) fn is_active_content(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
            | "text/ecmascript"
            | "application/ecmascript"
            | "text/jscript"
    ) || essence.ends_with("+xml")
}

/// Who a download was served to, for the caches on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// A public bucket's public URL: anyone may keep a copy.
    Anyone,
    /// A caller's token or a signed URL: shared caches must not keep it.
    Private,
}

/// The `Cache-Control` of a download: the object's own (Supabase's `cacheControl`),
/// made `private` unless it came through a public URL, so a proxy never hands one
/// user's object to another.
fn cache_control(object: &ObjectRecord, audience: Audience) -> String {
    match (object.cache_control.as_deref(), audience) {
        (None, _) => "no-cache".into(),
        (Some(value), Audience::Anyone) => value.into(),
        (Some(value), Audience::Private) => {
            let directives: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
                .collect();
            let kept_private = directives
                .iter()
                .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"));
            if kept_private {
                directives.join(", ")
            } else {
                std::iter::once("private")
                    .chain(directives)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
    }
}

async fn serve(
    storage: &Storage,
    object: ObjectRecord,
    reader: String,
    audience: Audience,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", object.etag);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache_control(&object, audience))
        .header(
            header::LAST_MODIFIED,
            object
                .updated_at
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(candidates) = header_str(headers, "if-none-match")?
        && etag_list(candidates)
            .iter()
            .any(|t| t == "*" || *t == object.etag)
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let size = object.size as u64;
    let range = match header_str(headers, "range")? {
        None => None,
        Some(value) => match parse_range(value, size) {
            Ok(range) => range,
            Err(()) => {
                let mut response = ApiError::new(
                    ErrorCode::RangeNotSatisfiable,
                    format!("range {value} not satisfiable for {size} bytes"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        },
    };
    builder = builder
        .header(header::CONTENT_TYPE, &object.content_type)
        // Browsers take the stored type as it is, never guess a more active one.
        .header("x-content-type-options", "nosniff");
    if is_active_content(&object.content_type)
        && !storage
            .load_bucket(&object.bucket)
            .await?
            .inline_active_content
    {
        // An uploaded page or script would run with the gateway's origin.
        builder = builder.header(header::CONTENT_DISPOSITION, "attachment");
    }
    if object.metadata.as_object().is_some_and(|m| !m.is_empty())
        && let Ok(v) = HeaderValue::from_str(&object.metadata.to_string())
    {
        builder = builder.header("x-metadata", v);
    }
    let (status, length) = match range {
        Some(range) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", range.start, range.end),
            );
            (StatusCode::PARTIAL_CONTENT, range.len())
        }
        None => (StatusCode::OK, size),
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, length);
    if method == Method::HEAD {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    let (_, stream) = storage.open(object, range, Some(reader)).await?;
    builder
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

#[utoipa::path(method(get, head), path = "/storage/v1/object/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "a Range"), (status = 304, description = "If-None-Match matched"), (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(crate) async fn get(
    State(storage): State<Storage>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    Path((bucket, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    let object = storage.authorize_read(&caller, &bucket, &path).await?;
    let reader = minicloud_metering::owner_of(&caller);
    serve(
        &storage,
        object,
        reader,
        Audience::Private,
        &method,
        &headers,
    )
    .await
}

/// `GET /object/public/{bucket}/{path}`: public buckets only, no token needed.
#[utoipa::path(method(get, head), path = "/storage/v1/object/public/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)),
    responses((status = 200, description = "the bytes (no token needed: public buckets only)", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "a Range"), (status = 304, description = "If-None-Match matched"), (status = 404, description = "no such object, or the bucket is not public", body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(crate) async fn get_public(
    State(storage): State<Storage>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    let bucket_row = storage.load_bucket(&bucket).await?;
    if !bucket_row.public {
        return Err(ApiError::not_found(format!(
            "bucket {bucket} is not public"
        )));
    }
    let object = storage.object_info(&bucket, &path).await?;
    storage.meter_request(&bucket, "anon", Meter::StorageReadRequests);
    serve(
        &storage,
        object,
        "anon".into(),
        Audience::Anyone,
        &method,
        &headers,
    )
    .await
}

#[utoipa::path(get, path = "/storage/v1/object/info/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)), responses((status = 200, body = ObjectRecord), (status = 404, body = ErrorBody)))]
pub(crate) async fn info(
    State(storage): State<Storage>,
    caller: Caller,
    Path((bucket, path)): Path<(String, String)>,
) -> Result<Json<ObjectRecord>, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    Ok(Json(storage.authorize_read(&caller, &bucket, &path).await?))
}

#[utoipa::path(delete, path = "/storage/v1/object/{bucket}/{path}", tag = "objects",
    params(("bucket" = String, Path), ("path" = String, Path)), responses((status = 200, body = ObjectRecord), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(crate) async fn delete(
    State(storage): State<Storage>,
    caller: Caller,
    headers: HeaderMap,
    Path((bucket, path)): Path<(String, String)>,
) -> Result<Json<ObjectRecord>, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    let preconditions = preconditions(&headers, false)?;
    Ok(Json(
        storage
            .delete_object(&caller, &bucket, &path, &preconditions)
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkDeleteIn {
    /// Paths of the objects to delete (Supabase calls them prefixes).
    pub prefixes: Vec<String>,
}

#[utoipa::path(delete, path = "/storage/v1/object/{bucket}", tag = "objects", params(("bucket" = String, Path)), request_body = BulkDeleteIn,
    responses((status = 200, description = "the deleted objects; missing ones are skipped", body = Vec<ObjectRecord>)))]
pub(crate) async fn bulk_delete(
    State(storage): State<Storage>,
    caller: Caller,
    Path(bucket): Path<String>,
    Json(input): Json<BulkDeleteIn>,
) -> Result<Json<Vec<ObjectRecord>>, ApiError> {
    crate::buckets::check_bucket_name(&bucket)?;
    if input.prefixes.len() > 1000 {
        return Err(ApiError::invalid("at most 1000 objects per request"));
    }
    let paths = input
        .prefixes
        .iter()
        .map(|p| normalise_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut deleted = Vec::new();
    for path in paths {
        match storage
            .delete_object(&caller, &bucket, &path, &Preconditions::default())
            .await
        {
            Ok(object) => deleted.push(object),
            Err(StorageError::ObjectNotFound | StorageError::BucketNotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Json(deleted))
}

#[utoipa::path(post, path = "/storage/v1/object/list/{bucket}", tag = "objects", params(("bucket" = String, Path)),
    request_body(content = ListIn, description = "ours: `prefix`, `delimiter`, `limit`, `cursor` → `ListOut`. A body with `offset`, `sortBy` or `search` is Supabase Storage's (`FolderListIn`) and is answered with its array of `FolderEntry`"),
    responses((status = 200, body = ListOut, description = "`ListOut`, or for a Supabase-style body an array of `FolderEntry`"), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(storage): State<Storage>,
    caller: Caller,
    Path(bucket): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    crate::buckets::check_bucket_name(&bucket)?;
    let supabase = ["offset", "sortBy", "search"]
        .iter()
        .any(|key| body.get(key).is_some());
    if supabase {
        let input: FolderListIn = serde_json::from_value(body)
            .map_err(|e| ApiError::invalid(format!("invalid list request: {e}")))?;
        let folder = input.prefix.as_deref().unwrap_or("").trim_matches('/');
        let folder = if folder.is_empty() {
            String::new()
        } else {
            normalise_prefix(&format!("{folder}/"))?
        };
        let bucket_row = storage.load_bucket(&bucket).await?;
        storage
            .authorize_object(&caller, Action::StorageListObjects, &bucket_row, &folder)
            .await?;
        let entries = storage.list_folder(&bucket, &folder, &input).await?;
        return Ok(Json(entries).into_response());
    }
    let input: ListIn = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("invalid list request: {e}")))?;
    let prefix = normalise_prefix(input.prefix.as_deref().unwrap_or(""))?;
    let limit = match input.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(_) => return Err(ApiError::invalid("limit must be 1 to 1000")),
    };
    let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
    if delimiter.is_some_and(|d| d.len() > 8 || d.chars().any(char::is_control)) {
        return Err(ApiError::invalid("delimiter: 1 to 8 printable characters"));
    }
    let bucket_row = storage.load_bucket(&bucket).await?;
    storage
        .authorize_object(&caller, Action::StorageListObjects, &bucket_row, &prefix)
        .await?;
    let owner = minicloud_metering::owner_of(&caller);
    storage.meter_request(&bucket, &owner, Meter::StorageWriteRequests);
    Ok(Json(
        storage
            .list_objects(&bucket, &prefix, delimiter, limit, input.cursor.as_deref())
            .await?,
    )
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CopyIn {
    pub bucket_id: String,
    pub source_key: String,
    pub destination_key: String,
    #[serde(default)]
    pub destination_bucket: Option<String>,
}

async fn copy_or_move(
    storage: &Storage,
    caller: &Caller,
    input: CopyIn,
    remove_source: bool,
) -> Result<ObjectRecord, ApiError> {
    let destination_bucket = input
        .destination_bucket
        .unwrap_or_else(|| input.bucket_id.clone());
    let (from_bucket, from_path) = object_path(input.bucket_id, input.source_key)?;
    let (to_bucket, to_path) = object_path(destination_bucket, input.destination_key)?;
    storage
        .copy_object(
            caller,
            (&from_bucket, &from_path),
            (&to_bucket, &to_path),
            remove_source,
            None,
        )
        .await
        .map_err(ApiError::from)
}

#[utoipa::path(post, path = "/storage/v1/object/copy", tag = "objects", request_body = CopyIn, responses((status = 200, body = ObjectRecord), (status = 404, body = ErrorBody)))]
pub(crate) async fn copy_object(
    State(storage): State<Storage>,
    caller: Caller,
    Json(input): Json<CopyIn>,
) -> Result<Json<ObjectRecord>, ApiError> {
    Ok(Json(copy_or_move(&storage, &caller, input, false).await?))
}

#[utoipa::path(post, path = "/storage/v1/object/move", tag = "objects", request_body = CopyIn, responses((status = 200, body = ObjectRecord), (status = 404, body = ErrorBody)))]
pub(crate) async fn move_object(
    State(storage): State<Storage>,
    caller: Caller,
    Json(input): Json<CopyIn>,
) -> Result<Json<ObjectRecord>, ApiError> {
    Ok(Json(copy_or_move(&storage, &caller, input, true).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    /// Seconds the URL stays valid (1 to 604800); `expiresIn` as Supabase sends it
    /// (supabase-py sends it as a string).
    #[serde(alias = "expiresIn", deserialize_with = "seconds")]
    #[schema(value_type = u64)]
    pub expires_in: u64,
}

/// Whole seconds as a number or a string of digits.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| D::Error::custom("expires_in: whole seconds"))
}

/// A signed upload URL's options; the body may be absent (Supabase sends none).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignUploadIn {
    /// Seconds the URL stays valid (1 to 604800; default 7200).
    #[serde(default, alias = "expiresIn")]
    pub expires_in: Option<u64>,
    /// The URL uploads once: a second upload with it is refused (403).
    #[serde(default)]
    pub single_use: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUrlOut {
    /// The URL's path from the gateway's root.
    pub signed_url: String,
    /// The same path from `/storage/v1`, as Supabase Storage answers (its clients
    /// prepend their storage URL).
    #[serde(rename = "signedURL")]
    pub signed_url_supabase: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUploadOut {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    /// The token from the signing answer.
    pub token: String,
}

/// What a path segment keeps unencoded in a URL: RFC 3986's unreserved characters.
const URL_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `path` with each segment percent-encoded, `/` kept.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| percent_encoding::utf8_percent_encode(segment, URL_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn expiry(expires_in: u64) -> Result<i64, ApiError> {
    if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(ApiError::invalid(format!(
            "expires_in must be 1 to {MAX_EXPIRES_IN} seconds"
        )));
    }
    Ok(chrono::Utc::now().timestamp() + expires_in as i64)
}

#[utoipa::path(post, path = "/storage/v1/object/sign/{bucket}/{path}", tag = "signed URLs", params(("bucket" = String, Path), ("path" = String, Path)), request_body = SignIn,
    responses((status = 200, body = SignedUrlOut), (status = 404, body = ErrorBody)))]
pub(crate) async fn sign_download(
    State(storage): State<Storage>,
    caller: Caller,
    Path((bucket, path)): Path<(String, String)>,
    Json(input): Json<SignIn>,
) -> Result<Json<SignedUrlOut>, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    let expires = expiry(input.expires_in)?;
    storage.authorize_read(&caller, &bucket, &path).await?;
    let token = storage.signer.sign(&Grant {
        operation: Operation::Download,
        bucket: bucket.clone(),
        path: path.clone(),
        expires,
        owner: None,
        nonce: None,
    });
    let relative = format!("/object/sign/{bucket}/{}?token={token}", encode_path(&path));
    Ok(Json(SignedUrlOut {
        signed_url: format!("/storage/v1{relative}"),
        signed_url_supabase: relative,
    }))
}

/// Supabase's batch signing (`createSignedUrls`): several paths of one bucket.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignManyIn {
    /// Seconds the URLs stay valid (1 to 604800), a number or a string of digits.
    #[serde(alias = "expiresIn", deserialize_with = "seconds")]
    #[schema(value_type = u64)]
    pub expires_in: u64,
    /// 1 to 1000 object paths.
    pub paths: Vec<String>,
}

/// One path's answer: its URL, or why there is none.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedEntry {
    pub path: String,
    #[serde(rename = "signedURL")]
    pub signed_url: Option<String>,
    pub error: Option<String>,
}

#[utoipa::path(post, path = "/storage/v1/object/sign/{bucket}", tag = "signed URLs", params(("bucket" = String, Path)),
    request_body = SignManyIn,
    responses((status = 200, body = Vec<SignedEntry>, description = "one entry per path, in order: `signedURL` (relative to /storage/v1) or `error`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn sign_many(
    State(storage): State<Storage>,
    caller: Caller,
    Path(bucket): Path<String>,
    Json(input): Json<SignManyIn>,
) -> Result<Json<Vec<SignedEntry>>, ApiError> {
    crate::buckets::check_bucket_name(&bucket)?;
    if input.paths.is_empty() || input.paths.len() > 1000 {
        return Err(ApiError::invalid("paths: 1 to 1000 object paths"));
    }
    let expires = expiry(input.expires_in)?;
    storage.load_bucket(&bucket).await?;
    let mut entries = Vec::with_capacity(input.paths.len());
    for asked in input.paths {
        let signed = async {
            let path = normalise_path(&asked)?;
            storage.authorize_read(&caller, &bucket, &path).await?;
            let token = storage.signer.sign(&Grant {
                operation: Operation::Download,
                bucket: bucket.clone(),
                path: path.clone(),
                expires,
                owner: None,
                nonce: None,
            });
            Ok::<_, ApiError>(format!(
                "/object/sign/{bucket}/{}?token={token}",
                encode_path(&path)
            ))
        }
        .await;
        entries.push(match signed {
            Ok(url) => SignedEntry {
                path: asked,
                signed_url: Some(url),
                error: None,
            },
            // One path the caller may not read (or that does not exist) does not
            // spoil the others; which of the two it was is not said.
            Err(_) => SignedEntry {
                path: asked,
                signed_url: None,
                error: Some(
                    "Either the object does not exist or you do not have access to it".into(),
                ),
            },
        });
    }
    Ok(Json(entries))
}

#[utoipa::path(method(get, head), path = "/storage/v1/object/sign/{bucket}/{path}", tag = "signed URLs",
    params(("bucket" = String, Path), ("path" = String, Path), TokenQuery),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "a Range"), (status = 304, description = "If-None-Match matched"), (status = 400, description = "a bad or expired token", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_signed(
    State(storage): State<Storage>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, path)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    storage
        .signer
        .verify(&query.token, Operation::Download, &bucket, &path)?;
    let object = storage.object_info(&bucket, &path).await?;
    // A signed URL is the signer's grant, but who follows it is not known.
    storage.meter_request(&bucket, "anon", Meter::StorageReadRequests);
    serve(
        &storage,
        object,
        "anon".into(),
        Audience::Private,
        &method,
        &headers,
    )
    .await
}

#[utoipa::path(post, path = "/storage/v1/object/upload/sign/{bucket}/{path}", tag = "signed URLs", params(("bucket" = String, Path), ("path" = String, Path)),
    request_body(content = Option<SignUploadIn>, description = "optional: {\"expires_in\": seconds, \"single_use\": true}"),
    responses((status = 200, body = SignedUploadOut), (status = 403, body = ErrorBody)))]
pub(crate) async fn sign_upload(
    State(storage): State<Storage>,
    caller: Caller,
    Path((bucket, path)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<SignedUploadOut>, ApiError> {
    let (bucket, path) = object_path(bucket, path)?;
    // The body is optional (Supabase sends none): two hours by default.
    minicloud_proto::error::check_no_nul(&body)?;
    let options = if body.is_empty() {
        SignUploadIn::default()
    } else {
        serde_json::from_slice::<SignUploadIn>(&body)
            .map_err(|e| ApiError::invalid(format!("invalid body: {e}")))?
    };
    let expires = expiry(options.expires_in.unwrap_or(2 * 3600))?;
    let bucket_row = storage.load_bucket(&bucket).await?;
    storage
        .authorize_object(&caller, Action::StoragePutObject, &bucket_row, &path)
        .await?;
    let token = storage.signer.sign(&Grant {
        operation: Operation::Upload,
        bucket: bucket.clone(),
        path: path.clone(),
        expires,
        owner: caller.owner().map(str::to_owned),
        nonce: options
            .single_use
            .then(|| uuid::Uuid::new_v4().simple().to_string()),
    });
    Ok(Json(SignedUploadOut {
        url: format!(
            "/storage/v1/object/upload/sign/{bucket}/{}?token={token}",
            encode_path(&path)
        ),
        token,
    }))
}

#[utoipa::path(put, path = "/storage/v1/object/upload/sign/{bucket}/{path}", tag = "signed URLs",
    params(("bucket" = String, Path), ("path" = String, Path), TokenQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = UploadOut), (status = 400, description = "a bad, expired or spent token", body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn put_signed(
    State(storage): State<Storage>,
    Path((bucket, path)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (bucket_name, normalised) = object_path(bucket.clone(), path.clone())?;
    let grant =
        match storage
            .signer
            .verify(&query.token, Operation::Upload, &bucket_name, &normalised)
        {
            Ok(grant) => grant,
            Err(error) => {
                let declared =
                    header_str(request.headers(), "content-length")?.and_then(|v| v.parse().ok());
                Storage::discard(body_stream(request.into_body()), declared).await;
                return Err(error);
            }
        };
    // A single-use URL is spent by its first upload (given back if that fails).
    if let Some(nonce) = &grant.nonce {
        let first: bool = sqlx::query_scalar(
            "WITH pruned AS (DELETE FROM used_upload_tokens WHERE expires_at < now())
             INSERT INTO used_upload_tokens (nonce, expires_at) VALUES ($1, to_timestamp($2))
             ON CONFLICT (nonce) DO NOTHING RETURNING true",
        )
        .bind(nonce)
        .bind(grant.expires as f64)
        .fetch_optional(&storage.pool)
        .await
        .map_err(ApiError::internal)?
        .unwrap_or(false);
        if !first {
            let declared =
                header_str(request.headers(), "content-length")?.and_then(|v| v.parse().ok());
            Storage::discard(body_stream(request.into_body()), declared).await;
            return Err(ApiError::forbidden(
                "this single-use signed upload URL has been used",
            ));
        }
    }
    // The signature stands for the signer's permission to write this path.
    let written = write(
        &storage,
        &Caller::service(),
        bucket,
        path,
        false,
        grant.owner,
        request,
    )
    .await;
    if written.is_err()
        && let Some(nonce) = &grant.nonce
    {
        let _ = sqlx::query("DELETE FROM used_upload_tokens WHERE nonce = $1")
            .bind(nonce)
            .execute(&storage.pool)
            .await;
    }
    written
}

#[cfg(test)]
mod cache_control_tests {
    use super::*;

    fn object(cache_control: Option<&str>) -> ObjectRecord {
        ObjectRecord {
            bucket: "b".into(),
            name: "o".into(),
            version: "v".into(),
            size: 0,
            content_type: "text/plain".into(),
            etag: "e".into(),
            metadata: serde_json::json!({}),
            cache_control: cache_control.map(str::to_owned),
            content_encoding: None,
            content_disposition: None,
            owner: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn downloads_through_a_token_are_never_shared_cacheable() {
        use Audience::{Anyone, Private};
        for (stored, audience, served) in [
            (None, Anyone, "no-cache"),
            (None, Private, "no-cache"),
            (Some("max-age=60"), Anyone, "max-age=60"),
            (Some("max-age=60"), Private, "private, max-age=60"),
            (Some("public, max-age=60"), Private, "private, max-age=60"),
            (
                Some("PUBLIC,max-age=60,immutable"),
                Private,
                "private, max-age=60, immutable",
            ),
            (Some("no-store"), Private, "no-store"),
            (Some("private, max-age=5"), Private, "private, max-age=5"),
        ] {
            assert_eq!(
                cache_control(&object(stored), audience),
                served,
                "{stored:?}"
            );
        }
    }

    #[test]
    fn upload_cache_settings_are_seconds_or_a_header_value() {
        use crate::objects::cache_control_of;
        assert_eq!(cache_control_of("3600").unwrap(), "max-age=3600");
        assert_eq!(cache_control_of(" 0 ").unwrap(), "max-age=0");
        assert_eq!(
            cache_control_of("public, max-age=31536000, immutable").unwrap(),
            "public, max-age=31536000, immutable"
        );
        for bad in [
            "",
            "  ",
            "max-age=1\r\nx-injected: 1",
            "a\u{0}b",
            "é",
            &"x".repeat(257),
        ] {
            assert!(cache_control_of(bad).is_err(), "{bad:?}");
        }
    }
}
