//! Buckets: create, get, list, with a resource policy each (docs/design.md §4, §5.2).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::Action;
use minicloud_authz::{Caller, Policy};
use minicloud_proto::error::{ApiError, ErrorBody, ErrorCode, Json, Path};
use serde::{Deserialize, Serialize};

use crate::Storage;

/// A bucket as stored: its row, the API's answer, what the settings cache holds.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BucketRecord {
    pub id: String,
    pub name: String,
    pub public: bool,
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Option<Vec<String>>,
    /// The bucket's resource policy: a list of statements.
    #[schema(value_type = Vec<Object>)]
    pub policy: serde_json::Value,
    /// HTML, SVG, XML and JavaScript objects are served inline (true) or as
    /// attachments (false, the default).
    pub inline_active_content: bool,
    /// The creating user; `""` for buckets made with a service key (Supabase's
    /// clients expect a string).
    #[serde(serialize_with = "owner_or_empty")]
    #[schema(value_type = String)]
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn owner_or_empty<S: serde::Serializer>(
    owner: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(owner.as_deref().unwrap_or(""))
}

/// A size limit as the clients send it: bytes as a number, or a string with an
/// optional unit (`"20mb"`, `"1 GB"`, `"500kb"`, `"1024"`; supabase-js passes its
/// `fileSizeLimit` through as given).
fn size_limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom("file_size_limit: a whole number of bytes")),
        Some(serde_json::Value::String(text)) => {
            let text = text.trim().to_ascii_lowercase();
            let digits = text
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .trim();
            let unit = text[digits.len()..].trim();
            let scale: i64 = match unit {
                "" | "b" => 1,
                "kb" => 1024,
                "mb" => 1024 * 1024,
                "gb" => 1024 * 1024 * 1024,
                _ => {
                    return Err(D::Error::custom(
                        "file_size_limit: bytes, or a size in b, kb, mb or gb",
                    ));
                }
            };
            digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(scale))
                .map(Some)
                .ok_or_else(|| {
                    D::Error::custom("file_size_limit: bytes, or a size in b, kb, mb or gb")
                })
        }
        Some(_) => Err(D::Error::custom(
            "file_size_limit: bytes, or a size in b, kb, mb or gb",
        )),
    }
}

macro_rules! bucket_columns {
    () => {
        "name AS id, name, public, file_size_limit, allowed_mime_types, policy, inline_active_content, owner, created_at, updated_at"
    };
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketIn {
    #[serde(default)]
    pub name: Option<String>,
    /// Supabase's synonym of `name`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default, deserialize_with = "size_limit")]
    #[schema(value_type = Option<i64>)]
    pub file_size_limit: Option<i64>,
    #[serde(default)]
    pub allowed_mime_types: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
    #[serde(default)]
    pub inline_active_content: Option<bool>,
}

/// Names that are path segments of the object API (`/object/list/…`).
const RESERVED: [&str; 7] = ["list", "sign", "public", "copy", "move", "info", "upload"];

/// S3's bucket naming rules, so every bucket maps to an S3 bucket of the same name.
pub(crate) fn check_bucket_name(name: &str) -> Result<(), ApiError> {
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid(format!(
            "bucket name {name:?} is reserved"
        )));
    }
    let bytes = name.as_bytes();
    let valid = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..");
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit",
        ))
    }
}

#[utoipa::path(post, path = "/storage/v1/bucket", tag = "buckets", request_body = BucketIn, responses((status = 201, body = BucketRecord), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn create(
    State(storage): State<Storage>,
    caller: Caller,
    Json(input): Json<BucketIn>,
) -> Result<(StatusCode, Json<BucketRecord>), ApiError> {
    let bucket = create_bucket(&storage, &caller, input).await?;
    Ok((StatusCode::CREATED, Json(bucket)))
}

/// Creates a bucket (REST and the S3 API): 409 when the name is taken.
pub(crate) async fn create_bucket(
    storage: &Storage,
    caller: &Caller,
    input: BucketIn,
) -> Result<BucketRecord, ApiError> {
    let name = match (input.name, input.id) {
        (Some(name), None) | (None, Some(name)) => name,
        (Some(name), Some(id)) if name == id => name,
        (Some(_), Some(_)) => return Err(ApiError::invalid("name and id differ")),
        (None, None) => return Err(ApiError::invalid("name is required")),
    };
    check_bucket_name(&name)?;
    if input.file_size_limit.is_some_and(|limit| limit <= 0) {
        return Err(ApiError::invalid("file_size_limit must be positive"));
    }
    let policy = Policy::from_json(input.policy.as_ref().unwrap_or(&serde_json::Value::Null))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    storage
        .authz
        .authorize(
            caller,
            Action::StorageCreateBucket,
            &format!("storage:{name}"),
            &[],
        )
        .await?;
    if load(storage, &name).await?.is_some() {
        return Err(ApiError::conflict(format!("bucket {name} already exists")));
    }
    storage
        .backend
        .create_bucket(&name)
        .await
        .map_err(ApiError::from)?;
    let bucket = sqlx::query_as::<_, BucketRecord>(concat!(
        "INSERT INTO buckets (name, public, file_size_limit, allowed_mime_types, policy, owner, inline_active_content)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING ",
        bucket_columns!()
    ))
    .bind(&name)
    .bind(input.public)
    .bind(input.file_size_limit)
    .bind(input.allowed_mime_types)
    .bind(serde_json::to_value(&policy).map_err(ApiError::internal)?)
    .bind(caller.owner())
    .bind(input.inline_active_content.unwrap_or(false))
    .fetch_optional(&storage.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::conflict(format!("bucket {name} already exists")))?;
    Ok(bucket)
}

pub(crate) async fn load(storage: &Storage, name: &str) -> Result<Option<BucketRecord>, ApiError> {
    sqlx::query_as::<_, BucketRecord>(concat!(
        "SELECT ",
        bucket_columns!(),
        " FROM buckets WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&storage.pool)
    .await
    .map_err(ApiError::internal)
}

/// Whether `caller` may see `bucket` at all: public buckets are visible to everyone,
/// others to whoever may list their objects.
pub(crate) async fn visible(
    storage: &Storage,
    caller: &Caller,
    bucket: &BucketRecord,
) -> Result<bool, ApiError> {
    if bucket.public || caller.is_service() {
        return Ok(true);
    }
    let policy = Policy::from_json(&bucket.policy).unwrap_or_default();
    let resource = format!("storage:{}", bucket.name);
    match storage
        .authz
        .authorize(caller, Action::StorageListObjects, &resource, &[&policy])
        .await
    {
        Ok(()) => Ok(true),
        Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

#[utoipa::path(get, path = "/storage/v1/bucket/{name}", tag = "buckets", params(("name" = String, Path)), responses((status = 200, body = BucketRecord), (status = 404, description = "missing or not visible to the caller", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn get(
    State(storage): State<Storage>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<BucketRecord>, ApiError> {
    let not_found = || ApiError::not_found(format!("bucket {name} not found"));
    let bucket = load(&storage, &name).await?.ok_or_else(not_found)?;
    // A bucket the caller may not see is reported as missing, not as forbidden.
    if !visible(&storage, &caller, &bucket).await? {
        return Err(not_found());
    }
    Ok(Json(bucket))
}

#[utoipa::path(get, path = "/storage/v1/bucket", tag = "buckets", responses((status = 200, description = "the buckets the caller may see", body = Vec<BucketRecord>), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn list(
    State(storage): State<Storage>,
    caller: Caller,
) -> Result<Json<Vec<BucketRecord>>, ApiError> {
    Ok(Json(visible_buckets(&storage, &caller).await?))
}

/// The buckets `caller` may see: the one listing behind REST and gRPC alike.
pub(crate) async fn visible_buckets(
    storage: &Storage,
    caller: &Caller,
) -> Result<Vec<BucketRecord>, ApiError> {
    let buckets = sqlx::query_as::<_, BucketRecord>(concat!(
        "SELECT ",
        bucket_columns!(),
        " FROM buckets ORDER BY name LIMIT 1000"
    ))
    .fetch_all(&storage.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        if visible(storage, caller, &bucket).await? {
            out.push(bucket);
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketPatch {
    /// Supabase's clients send the bucket's own name along (`id` and `name`): it
    /// must be this bucket's (buckets are not renamed).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub public: Option<bool>,
    /// A limit in bytes (or `"20mb"`); `null` keeps the current one.
    #[serde(default, deserialize_with = "size_limit")]
    #[schema(value_type = Option<i64>)]
    pub file_size_limit: Option<i64>,
    #[serde(default)]
    pub allowed_mime_types: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
    #[serde(default)]
    pub inline_active_content: Option<bool>,
}

async fn manage(
    storage: &Storage,
    caller: &Caller,
    action: Action,
    name: &str,
) -> Result<BucketRecord, ApiError> {
    check_bucket_name(name)?;
    let bucket = load(storage, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("bucket {name} not found")))?;
    let policy = Policy::from_json(&bucket.policy).unwrap_or_default();
    storage
        .authz
        .authorize(caller, action, &format!("storage:{name}"), &[&policy])
        .await?;
    Ok(bucket)
}

#[utoipa::path(put, path = "/storage/v1/bucket/{name}", tag = "buckets", params(("name" = String, Path)), request_body = BucketPatch,
    responses((status = 200, body = BucketRecord), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn update(
    State(storage): State<Storage>,
    caller: Caller,
    Path(name): Path<String>,
    Json(patch): Json<BucketPatch>,
) -> Result<Json<BucketRecord>, ApiError> {
    manage(&storage, &caller, Action::StorageCreateBucket, &name).await?;
    if [&patch.id, &patch.name]
        .into_iter()
        .flatten()
        .any(|other| *other != name)
    {
        return Err(ApiError::invalid("buckets cannot be renamed"));
    }
    if patch.file_size_limit.is_some_and(|limit| limit <= 0) {
        return Err(ApiError::invalid("file_size_limit must be positive"));
    }
    let policy = match &patch.policy {
        Some(value) => Some(
            serde_json::to_value(
                Policy::from_json(value).map_err(|e| ApiError::invalid(e.to_string()))?,
            )
            .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let bucket = sqlx::query_as::<_, BucketRecord>(concat!(
        "UPDATE buckets SET public = COALESCE($2, public), file_size_limit = COALESCE($3, file_size_limit),
           allowed_mime_types = COALESCE($4, allowed_mime_types), policy = COALESCE($5, policy),
           inline_active_content = COALESCE($6, inline_active_content), updated_at = now()
         WHERE name = $1 RETURNING ",
        bucket_columns!()
    ))
    .bind(&name)
    .bind(patch.public)
    .bind(patch.file_size_limit)
    .bind(patch.allowed_mime_types)
    .bind(policy)
    .bind(patch.inline_active_content)
    .fetch_optional(&storage.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found(format!("bucket {name} not found")))?;
    storage.buckets.remove(&name);
    Ok(Json(bucket))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MessageOut {
    pub message: String,
}

#[utoipa::path(post, path = "/storage/v1/bucket/{name}/empty", tag = "buckets", params(("name" = String, Path)),
    responses((status = 200, body = MessageOut), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn empty(
    State(storage): State<Storage>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<MessageOut>, ApiError> {
    manage(&storage, &caller, Action::StorageDeleteBucket, &name).await?;
    let deleted = storage.empty_bucket(&name).await?;
    Ok(Json(MessageOut {
        message: format!("emptied: {deleted} objects deleted"),
    }))
}

#[utoipa::path(delete, path = "/storage/v1/bucket/{name}", tag = "buckets", params(("name" = String, Path)),
    responses((status = 200, body = MessageOut), (status = 409, description = "not empty", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(storage): State<Storage>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<MessageOut>, ApiError> {
    delete_bucket(&storage, &caller, &name).await?;
    Ok(Json(MessageOut {
        message: format!("bucket {name} deleted"),
    }))
}

/// Deletes an empty bucket (REST and the S3 API): 409 while it holds objects.
pub(crate) async fn delete_bucket(
    storage: &Storage,
    caller: &Caller,
    name: &str,
) -> Result<(), ApiError> {
    manage(storage, caller, Action::StorageDeleteBucket, name).await?;
    let mut tx = storage.pool.begin().await.map_err(ApiError::internal)?;
    // Lock the bucket: a concurrent upload's foreign-key check waits for this
    // transaction, so no object can slip in between the check and the delete.
    sqlx::query("SELECT 1 FROM buckets WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    let has_objects: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM objects WHERE bucket = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
    if has_objects {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("bucket {name} is not empty: empty it first"),
        ));
    }
    sqlx::query("DELETE FROM buckets WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    storage.buckets.remove(name);
    // Blobs left by uploads that lost the race with this delete go with the bucket.
    storage
        .backend
        .delete_bucket(name)
        .await
        .map_err(ApiError::from)?;
    Ok(())
}
