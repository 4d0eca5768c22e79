//! REST handlers for documents, queries, batches and key-value (thin: parse, call,
//! shape the answer).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Docdb;
use crate::documents::{DocOut, QueryOut, Write, WriteKind};
use crate::kv::{KvCondition, KvList, KvOut};
use crate::query::QueryIn;

pub(crate) const MAX_BATCH: usize = 500;

/// The version an `If-Match` names. Entity-tags are opaque (RFC 9110): one that is
/// not a version of ours matches nothing, so the write fails with 412, not 400. Of a
/// list, the first version in it counts.
fn version_header(headers: &HeaderMap, name: &str) -> Result<Option<i64>, ApiError> {
    /// Below every version a document can have.
    const MATCHES_NOTHING: i64 = i64::MIN;
    match headers.get(name) {
        None => Ok(None),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::invalid(format!("{name} is not text")))?;
            let version = text
                .split(',')
                .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"'))
                .find_map(|tag| tag.parse::<i64>().ok());
            Ok(Some(version.unwrap_or(MATCHES_NOTHING)))
        }
    }
}

fn if_none_match_star(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get("if-none-match").map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if v.trim() == "*" => Ok(true),
        Some(_) => Err(ApiError::invalid("on writes If-None-Match only takes *")),
    }
}

fn with_etag(status: StatusCode, document: DocOut) -> Response {
    let etag = format!("\"{}\"", document.version);
    let mut response = (status, Json(document)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn single(docdb: &Docdb, caller: &Caller, write: Write) -> Result<Response, ApiError> {
    let applied = docdb
        .apply_writes(caller, vec![write])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no result"))?;
    let document = applied
        .document
        .ok_or_else(|| ApiError::internal("no document"))?;
    Ok(with_etag(
        if applied.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        document,
    ))
}

#[utoipa::path(post, path = "/db/v1/collections/{c}/docs", tag = "documents", params(("c" = String, Path)),
    request_body(content = Object, description = "the document's data: a JSON object"),
    responses((status = 201, body = DocOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn create(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path(collection): Path<String>,
    Json(data): Json<Value>,
) -> Result<Response, ApiError> {
    single(
        &docdb,
        &caller,
        Write {
            op: WriteKind::Create,
            collection,
            id: None,
            data: Some(data),
            if_match: None,
            if_none_match: false,
        },
    )
    .await
}

#[utoipa::path(put, path = "/db/v1/collections/{c}/docs/{id}", tag = "documents", params(("c" = String, Path), ("id" = String, Path)),
    request_body(content = Object, description = "the document's data; If-Match: \"<version>\" compares and sets, If-None-Match: * creates only"),
    responses((status = 200, body = DocOut), (status = 201, body = DocOut), (status = 412, body = ErrorBody)))]
pub(crate) async fn put(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path((collection, id)): Path<(String, String)>,
    Json(data): Json<Value>,
) -> Result<Response, ApiError> {
    let write = Write {
        op: WriteKind::Put,
        collection,
        id: Some(id),
        data: Some(data),
        if_match: version_header(&headers, "if-match")?,
        if_none_match: if_none_match_star(&headers)?,
    };
    single(&docdb, &caller, write).await
}

#[utoipa::path(patch, path = "/db/v1/collections/{c}/docs/{id}", tag = "documents", params(("c" = String, Path), ("id" = String, Path)),
    request_body(content = Object, description = "a JSON merge patch (RFC 7396)"),
    responses((status = 200, body = DocOut), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(crate) async fn patch(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path((collection, id)): Path<(String, String)>,
    Json(patch): Json<Value>,
) -> Result<Response, ApiError> {
    let write = Write {
        op: WriteKind::Patch,
        collection,
        id: Some(id),
        data: Some(patch),
        if_match: version_header(&headers, "if-match")?,
        if_none_match: false,
    };
    single(&docdb, &caller, write).await
}

#[utoipa::path(get, path = "/db/v1/collections/{c}/docs/{id}", tag = "documents", params(("c" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = DocOut), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(with_etag(
        StatusCode::OK,
        docdb.get_document(&caller, &collection, &id).await?,
    ))
}

#[utoipa::path(delete, path = "/db/v1/collections/{c}/docs/{id}", tag = "documents", params(("c" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "the deleted document", body = DocOut), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(crate) async fn delete(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let write = Write {
        op: WriteKind::Delete,
        collection,
        id: Some(id),
        data: None,
        if_match: version_header(&headers, "if-match")?,
        if_none_match: false,
    };
    single(&docdb, &caller, write).await
}

#[utoipa::path(post, path = "/db/v1/collections/{c}/query", tag = "documents", params(("c" = String, Path)), request_body = QueryIn,
    responses((status = 200, body = QueryOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn query(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path(collection): Path<String>,
    Json(query): Json<QueryIn>,
) -> Result<Json<QueryOut>, ApiError> {
    Ok(Json(docdb.query(&caller, &collection, &query).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchIn {
    pub writes: Vec<Write>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchOut {
    /// One entry per write, in order: the document as written (or as deleted).
    pub results: Vec<DocOut>,
}

#[utoipa::path(post, path = "/db/v1/batch", tag = "documents", request_body = BatchIn,
    responses((status = 200, body = BatchOut), (status = 412, description = "a precondition failed; nothing was written", body = ErrorBody)))]
pub(crate) async fn batch(
    State(docdb): State<Docdb>,
    caller: Caller,
    Json(input): Json<BatchIn>,
) -> Result<Json<BatchOut>, ApiError> {
    if input.writes.is_empty() || input.writes.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "a batch has 1 to {MAX_BATCH} writes"
        )));
    }
    let applied = docdb.apply_writes(&caller, input.writes).await?;
    Ok(Json(BatchOut {
        results: applied.into_iter().filter_map(|a| a.document).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TtlQuery {
    /// Seconds until the key expires.
    #[serde(default)]
    pub ttl: Option<u64>,
}

fn kv_condition(headers: &HeaderMap) -> Result<KvCondition, ApiError> {
    Ok(KvCondition {
        if_match: version_header(headers, "if-match")?,
        if_none_match: if_none_match_star(headers)?,
    })
}

#[utoipa::path(get, path = "/db/v1/kv/{ns}/{key}", tag = "kv", params(("ns" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = KvOut), (status = 404, body = ErrorBody)))]
pub(crate) async fn kv_get(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Json<KvOut>, ApiError> {
    Ok(Json(docdb.kv_get(&caller, &namespace, &key).await?))
}

#[utoipa::path(put, path = "/db/v1/kv/{ns}/{key}", tag = "kv", params(("ns" = String, Path), ("key" = String, Path), TtlQuery),
    request_body(content = Object, description = "any JSON value; If-Match: \"<version>\" compares and sets"),
    responses((status = 200, body = KvOut), (status = 412, body = ErrorBody)))]
pub(crate) async fn kv_put(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path((namespace, key)): Path<(String, String)>,
    Query(ttl): Query<TtlQuery>,
    Json(value): Json<Value>,
) -> Result<Json<KvOut>, ApiError> {
    Ok(Json(
        docdb
            .kv_put(
                &caller,
                &namespace,
                &key,
                value,
                ttl.ttl,
                kv_condition(&headers)?,
            )
            .await?,
    ))
}

#[utoipa::path(delete, path = "/db/v1/kv/{ns}/{key}", tag = "kv", params(("ns" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(crate) async fn kv_delete(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    docdb
        .kv_delete(&caller, &namespace, &key, kv_condition(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/db/v1/kv/{ns}", tag = "kv", params(("ns" = String, Path), ListQuery), responses((status = 200, body = KvList)))]
pub(crate) async fn kv_list(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path(namespace): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<KvList>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    Ok(Json(
        docdb
            .kv_list(
                &caller,
                &namespace,
                &prefix,
                query.cursor.as_deref(),
                query.limit.unwrap_or(100),
            )
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncrIn {
    /// Added to the value (default 1).
    #[serde(default)]
    pub by: Option<f64>,
}

/// `POST /kv/{ns}/{key}/incr`: the key may contain `/`, so the route takes the rest
/// of the path and requires it to end in `/incr`.
#[utoipa::path(post, path = "/db/v1/kv/{ns}/{key}/incr", tag = "kv", params(("ns" = String, Path), ("key" = String, Path)), request_body = IncrIn,
    responses((status = 200, body = KvOut), (status = 409, description = "the value is not a number", body = ErrorBody)))]
pub(crate) async fn kv_incr(
    State(docdb): State<Docdb>,
    caller: Caller,
    Path((namespace, rest)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<KvOut>, ApiError> {
    let key = rest.strip_suffix("/incr").ok_or_else(|| {
        ApiError::new(
            minicloud_proto::error::ErrorCode::MethodNotAllowed,
            "POST on a key is /incr only",
        )
    })?;
    let input: IncrIn = if body.is_empty() {
        IncrIn::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid body: {e}")))?
    };
    Ok(Json(
        docdb
            .kv_incr(&caller, &namespace, key, input.by.unwrap_or(1.0))
            .await?,
    ))
}
