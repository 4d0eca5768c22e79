//! Buckets: create, get, list, with a resource policy each (design §4, §5.2).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::{Caller, Policy};
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use minicloud_proto::storage::v1::storage_service_server::StorageService;
use minicloud_proto::storage::v1::{Bucket, ListBucketsRequest, ListBucketsResponse};
use serde::{Deserialize, Serialize};

use crate::Storage;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BucketOut {
    pub id: String,
    pub name: String,
    pub public: bool,
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Option<Vec<String>>,
    /// The bucket's resource policy: a list of statements.
    #[schema(value_type = Vec<Object>)]
    pub policy: serde_json::Value,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! bucket_columns {
    () => {
        "name AS id, name, public, file_size_limit, allowed_mime_types, policy, owner, created_at, updated_at"
    };
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketIn {
    #[serde(default)]
    pub name: Option<String>,
    /// Supabase's synonym of `name`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub file_size_limit: Option<i64>,
    #[serde(default)]
    pub allowed_mime_types: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

/// S3's bucket naming rules, so every bucket maps to an S3 bucket of the same name.
pub fn check_bucket_name(name: &str) -> Result<(), ApiError> {
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

#[utoipa::path(post, path = "/storage/v1/bucket", tag = "buckets", request_body = BucketIn, responses((status = 201, body = BucketOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub async fn create(
    State(storage): State<Storage>,
    caller: Caller,
    Json(input): Json<BucketIn>,
) -> Result<(StatusCode, Json<BucketOut>), ApiError> {
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
            &caller,
            "storage:CreateBucket",
            &format!("storage:{name}"),
            &[],
        )
        .await?;
    let bucket = sqlx::query_as::<_, BucketOut>(concat!(
        "INSERT INTO buckets (name, public, file_size_limit, allowed_mime_types, policy, owner)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING ",
        bucket_columns!()
    ))
    .bind(&name)
    .bind(input.public)
    .bind(input.file_size_limit)
    .bind(input.allowed_mime_types)
    .bind(serde_json::to_value(&policy).map_err(ApiError::internal)?)
    .bind(caller.owner())
    .fetch_optional(&storage.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::conflict(format!("bucket {name} already exists")))?;
    Ok((StatusCode::CREATED, Json(bucket)))
}

async fn load(storage: &Storage, name: &str) -> Result<Option<BucketOut>, ApiError> {
    sqlx::query_as::<_, BucketOut>(concat!(
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
async fn visible(storage: &Storage, caller: &Caller, bucket: &BucketOut) -> Result<bool, ApiError> {
    if bucket.public || caller.is_service() {
        return Ok(true);
    }
    let policy = Policy::from_json(&bucket.policy).unwrap_or_default();
    let resource = format!("storage:{}", bucket.name);
    match storage
        .authz
        .authorize(caller, "storage:ListObjects", &resource, &[&policy])
        .await
    {
        Ok(()) => Ok(true),
        Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

#[utoipa::path(get, path = "/storage/v1/bucket/{name}", tag = "buckets", params(("name" = String, Path)), responses((status = 200, body = BucketOut), (status = 404, description = "missing or not visible to the caller", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub async fn get(
    State(storage): State<Storage>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<BucketOut>, ApiError> {
    let not_found = || ApiError::not_found(format!("bucket {name} not found"));
    let bucket = load(&storage, &name).await?.ok_or_else(not_found)?;
    // A bucket the caller may not see is reported as missing, not as forbidden.
    if !visible(&storage, &caller, &bucket).await? {
        return Err(not_found());
    }
    Ok(Json(bucket))
}

#[utoipa::path(get, path = "/storage/v1/bucket", tag = "buckets", responses((status = 200, description = "the buckets the caller may see", body = Vec<BucketOut>), (status = 401, description = "no valid token", body = ErrorBody)))]
pub async fn list(
    State(storage): State<Storage>,
    caller: Caller,
) -> Result<Json<Vec<BucketOut>>, ApiError> {
    let buckets = sqlx::query_as::<_, BucketOut>(concat!(
        "SELECT ",
        bucket_columns!(),
        " FROM buckets ORDER BY name LIMIT 1000"
    ))
    .fetch_all(&storage.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        if visible(&storage, &caller, &bucket).await? {
            out.push(bucket);
        }
    }
    Ok(Json(out))
}

pub struct StorageGrpc(pub Storage);

#[tonic::async_trait]
impl StorageService for StorageGrpc {
    async fn list_buckets(
        &self,
        _request: tonic::Request<ListBucketsRequest>,
    ) -> Result<tonic::Response<ListBucketsResponse>, tonic::Status> {
        let rows: Vec<(String, bool, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT name, public, owner, created_at FROM buckets ORDER BY name LIMIT 1000",
        )
        .fetch_all(&self.0.pool)
        .await
        .map_err(ApiError::internal)?;
        let buckets = rows
            .into_iter()
            .map(|(name, public, owner, created_at)| Bucket {
                name,
                public,
                owner: owner.unwrap_or_default(),
                created_at: created_at.to_rfc3339(),
            })
            .collect();
        Ok(tonic::Response::new(ListBucketsResponse { buckets }))
    }
}
