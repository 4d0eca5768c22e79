//! Collections: create and list, each with a resource policy.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::{Caller, Policy};
use minicloud_proto::docdb::v1::docdb_service_server::DocdbService;
use minicloud_proto::docdb::v1::{Collection, ListCollectionsRequest, ListCollectionsResponse};
use minicloud_proto::error::{ApiError, ErrorBody, Json};
use serde::{Deserialize, Serialize};

use crate::Docdb;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CollectionOut {
    pub name: String,
    #[schema(value_type = Vec<IndexIn>)]
    pub indexes: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub policy: serde_json::Value,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionOut>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionIn {
    pub name: String,
    #[serde(default)]
    pub indexes: Vec<IndexIn>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexIn {
    pub fields: Vec<String>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "collection name: 1-63 of a-z 0-9 _, starting with a letter",
        ))
    }
}

/// Dotted JSON paths of identifier segments (`a.b_c.d`).
fn check_field(field: &str) -> Result<(), ApiError> {
    let valid = !field.is_empty()
        && field.len() <= 256
        && field.split('.').all(|segment| {
            !segment.is_empty()
                && segment.len() <= 63
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("invalid field path {field:?}")))
    }
}

#[utoipa::path(post, path = "/db/v1/collections", tag = "collections", request_body = CollectionIn, responses((status = 201, body = CollectionOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub async fn create(
    State(docdb): State<Docdb>,
    caller: Caller,
    Json(input): Json<CollectionIn>,
) -> Result<(StatusCode, Json<CollectionOut>), ApiError> {
    check_name(&input.name)?;
    if input.indexes.len() > 16 {
        return Err(ApiError::invalid("at most 16 indexes"));
    }
    for index in &input.indexes {
        if index.fields.is_empty() || index.fields.len() > 8 {
            return Err(ApiError::invalid("an index has 1 to 8 fields"));
        }
        for field in &index.fields {
            check_field(field)?;
        }
    }
    let policy = Policy::from_json(input.policy.as_ref().unwrap_or(&serde_json::Value::Null))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    docdb
        .authz
        .authorize(
            &caller,
            "db:CreateCollection",
            &format!("db:{}", input.name),
            &[],
        )
        .await?;
    let collection = sqlx::query_as::<_, CollectionOut>(
        "INSERT INTO collections (name, indexes, policy, owner) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING RETURNING name, indexes, policy, owner, created_at",
    )
    .bind(&input.name)
    .bind(serde_json::to_value(&input.indexes).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&policy).map_err(ApiError::internal)?)
    .bind(caller.owner())
    .fetch_optional(&docdb.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::conflict(format!("collection {} already exists", input.name)))?;
    Ok((StatusCode::CREATED, Json(collection)))
}

#[utoipa::path(get, path = "/db/v1/collections", tag = "collections", responses((status = 200, description = "the collections the caller may query", body = CollectionList), (status = 401, description = "no valid token", body = ErrorBody)))]
pub async fn list(
    State(docdb): State<Docdb>,
    caller: Caller,
) -> Result<Json<CollectionList>, ApiError> {
    let rows = sqlx::query_as::<_, CollectionOut>(
        "SELECT name, indexes, policy, owner, created_at FROM collections ORDER BY name LIMIT 1000",
    )
    .fetch_all(&docdb.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut collections = Vec::new();
    for collection in rows {
        let policy = Policy::from_json(&collection.policy).unwrap_or_default();
        let resource = format!("db:{}", collection.name);
        match docdb
            .authz
            .authorize(&caller, "db:Query", &resource, &[&policy])
            .await
        {
            Ok(()) => collections.push(collection),
            Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Json(CollectionList { collections }))
}

pub struct DocdbGrpc(pub Docdb);

#[tonic::async_trait]
impl DocdbService for DocdbGrpc {
    async fn list_collections(
        &self,
        _request: tonic::Request<ListCollectionsRequest>,
    ) -> Result<tonic::Response<ListCollectionsResponse>, tonic::Status> {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, created_at FROM collections ORDER BY name LIMIT 1000")
                .fetch_all(&self.0.pool)
                .await
                .map_err(ApiError::internal)?;
        let collections = rows
            .into_iter()
            .map(|(name, created_at)| Collection {
                name,
                created_at: created_at.to_rfc3339(),
            })
            .collect();
        Ok(tonic::Response::new(ListCollectionsResponse {
            collections,
        }))
    }
}
