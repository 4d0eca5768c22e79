//! Collections: create and list, each with a resource policy.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::Action;
use minicloud_authz::{Caller, Policy};
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use serde::{Deserialize, Serialize};

use crate::Docdb;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct CollectionOut {
    pub name: String,
    #[schema(value_type = Vec<IndexIn>)]
    pub indexes: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub policy: serde_json::Value,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CollectionList {
    pub collections: Vec<CollectionOut>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CollectionIn {
    pub name: String,
    #[serde(default)]
    pub indexes: Vec<IndexIn>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexIn {
    pub fields: Vec<String>,
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
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

#[utoipa::path(post, path = "/db/v1/collections", tag = "collections", request_body = CollectionIn, responses((status = 201, body = CollectionOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn create(
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
            crate::query::check_path(field)?;
        }
    }
    let policy = Policy::from_json(input.policy.as_ref().unwrap_or(&serde_json::Value::Null))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    docdb
        .authz
        .authorize(
            &caller,
            Action::DbCreateCollection,
            &format!("db:{}", input.name),
            &[],
        )
        .await?;
    // The row, the table and its indexes in one transaction: a collection exists
    // whole or not at all.
    let mut tx = docdb.pool.begin().await.map_err(ApiError::internal)?;
    let collection = sqlx::query_as::<_, CollectionOut>(
        "INSERT INTO collections (name, indexes, policy, owner) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING RETURNING name, indexes, policy, owner, created_at",
    )
    .bind(&input.name)
    .bind(serde_json::to_value(&input.indexes).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&policy).map_err(ApiError::internal)?)
    .bind(caller.owner())
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::conflict(format!("collection {} already exists", input.name)))?;
    let table = table(&input.name);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (
            id         text COLLATE \"C\" PRIMARY KEY,
            version    bigint NOT NULL,
            owner      text,
            data       jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )"
    )))
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    for (i, index) in input.indexes.iter().enumerate() {
        // Field paths were checked by the grammar; the expressions are the ones
        // queries use, so the planner can match them.
        let expressions: Vec<String> = index
            .fields
            .iter()
            .map(|f| format!("({})", crate::query::expression(f)))
            .collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX \"docs_{}_i{i}\" ON {table} ({})",
            input.name,
            expressions.join(", ")
        )))
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(collection)))
}

#[utoipa::path(get, path = "/db/v1/collections", tag = "collections", responses((status = 200, description = "the collections the caller may query", body = CollectionList), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn list(
    State(docdb): State<Docdb>,
    caller: Caller,
) -> Result<Json<CollectionList>, ApiError> {
    Ok(Json(CollectionList {
        collections: visible_collections(&docdb, &caller).await?,
    }))
}

/// The collections `caller` may query: the one listing behind REST and gRPC alike.
pub(crate) async fn visible_collections(
    docdb: &Docdb,
    caller: &Caller,
) -> Result<Vec<CollectionOut>, ApiError> {
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
            .authorize_scoped(caller, Action::DbQuery, &resource, &[&policy])
            .await
        {
            Ok(_) => collections.push(collection),
            Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {}
            Err(error) => return Err(error),
        }
    }
    Ok(collections)
}

#[utoipa::path(get, path = "/db/v1/collections/{c}", tag = "collections", params(("c" = String, Path)),
    responses((status = 200, body = CollectionOut), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<CollectionOut>, ApiError> {
    check_name(&name)?;
    let collection = sqlx::query_as::<_, CollectionOut>(
        "SELECT name, indexes, policy, owner, created_at FROM collections WHERE name = $1",
    )
    .bind(&name)
    .fetch_optional(&docdb.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found(format!("collection {name} not found")))?;
    let policy = Policy::from_json(&collection.policy).unwrap_or_default();
    match docdb
        .authz
        .authorize_scoped(&caller, Action::DbQuery, &format!("db:{name}"), &[&policy])
        .await
    {
        Ok(_) => Ok(Json(collection)),
        Err(error) if error.code == minicloud_proto::error::ErrorCode::PermissionDenied => {
            Err(ApiError::not_found(format!("collection {name} not found")))
        }
        Err(error) => Err(error),
    }
}

#[utoipa::path(delete, path = "/db/v1/collections/{c}", tag = "collections", params(("c" = String, Path)),
    responses((status = 204, description = "dropped with its documents"), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn delete(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    // Dropping a collection is an admin act: the same permission as creating one.
    docdb
        .authz
        .authorize(
            &caller,
            Action::DbCreateCollection,
            &format!("db:{name}"),
            &[],
        )
        .await?;
    let mut tx = docdb.pool.begin().await.map_err(ApiError::internal)?;
    let deleted = sqlx::query("DELETE FROM collections WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("collection {name} not found")));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        table(&name)
    )))
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    docdb.forget_collection(&name).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The table that holds a collection's documents.
pub(crate) fn table(collection: &str) -> String {
    // Collection names are checked (`[a-z][a-z0-9_]{0,62}`), so this is a safe identifier.
    format!("\"docs_{collection}\"")
}
