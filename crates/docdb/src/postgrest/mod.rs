//! A PostgREST view of collections at `/rest/v1/{collection}`, so
//! `supabase.from('todos')` works on documents: reads, inserts, upserts, updates
//! and deletes in PostgREST's URL grammar and headers (`Prefer`, `Range`, `Accept`),
//! answered in its shapes. Everything goes through the same calls as the docdb REST
//! API — [`Docdb::query`] and [`Docdb::apply_writes`] — so the same policies,
//! owner conditions, limits and events apply.
//!
//! A row is a document's data with its id as `id`. Errors carry PostgREST's fields
//! (`code`, `message`, `details`, `hint`) beside our `error` object.

mod parse;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use serde_json::{Map, Value};

use crate::Docdb;
use crate::documents::{DocOut, Write, WriteKind};
use crate::query::QueryIn;
use parse::{Column, DEFAULT_LIMIT, RestQuery};

/// Rows one update, delete or insert may touch (the docdb batch limit).
const MAX_ROWS_WRITTEN: usize = crate::rest::MAX_BATCH;

/// PostgREST's code, detail and hint for an error this view answers; errors
/// without one get a code from [`default_code`].
#[derive(Debug, Clone)]
struct PostgrestFields {
    code: &'static str,
    details: Option<String>,
    hint: Option<String>,
}

/// An error with PostgREST's code and, where PostgREST's status is one our codes
/// do not have (406), that status.
fn postgrest_error(
    error: ApiError,
    status: Option<StatusCode>,
    code: &'static str,
    details: Option<String>,
    hint: Option<&str>,
) -> Response {
    let mut response = error.into_response();
    if let Some(status) = status {
        *response.status_mut() = status;
    }
    response.extensions_mut().insert(PostgrestFields {
        code,
        details,
        hint: hint.map(str::to_owned),
    });
    response
}

/// Why a call of the view is refused: one of our errors (PostgREST's code follows
/// from its own), or a refusal with a PostgREST code and status of its own.
pub(crate) enum Refusal {
    Api(ApiError),
    Postgrest(Box<Response>),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::Api(error)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Api(error) => error.into_response(),
            Refusal::Postgrest(response) => *response,
        }
    }
}

/// PostgREST's code for one of our errors.
fn default_code(code: &str, message: &str) -> &'static str {
    match code {
        "invalid_argument" => "PGRST100",
        "not_found" if message.starts_with("collection") => "PGRST205",
        "not_found" => "PGRST116",
        "unauthenticated" => "PGRST301",
        // Postgres's insufficient_privilege, as RLS refusals are reported.
        "permission_denied" => "42501",
        "conflict" => "23505",
        // A row changed between read and write: Postgres's serialization_failure.
        "precondition_failed" => "40001",
        "payload_too_large" => "PGRST413",
        "timeout" => "57014",
        _ => "XX000",
    }
}

/// Adds PostgREST's fields to every error body of this view.
pub(crate) async fn with_postgrest_fields(response: Response) -> Response {
    let fields = response.extensions().get::<PostgrestFields>().cloned();
    let mut response =
        minicloud_telemetry::server::add_error_fields(response, move |code, message, _| {
            let (code, details, hint) = match fields {
                Some(fields) => (fields.code, fields.details, fields.hint),
                None => (default_code(code, message), None, None),
            };
            let mut extra = Map::new();
            extra.insert("code".into(), code.into());
            extra.insert("message".into(), message.into());
            extra.insert("details".into(), details.map_or(Value::Null, Value::from));
            extra.insert("hint".into(), hint.map_or(Value::Null, Value::from));
            extra
        })
        .await;
    // PostgREST's 404 for a missing collection (ours is 404 already); a refusal
    // before a collection was named keeps its status.
    response.extensions_mut().remove::<PostgrestFields>();
    response
}

/// The collection a table name stands for; a name no collection can have is a
/// missing table, as PostgREST says of it.
fn collection_of(table: &str) -> Result<String, ApiError> {
    crate::collections::check_name(table).map_err(|_| {
        ApiError::not_found(format!(
            "collection {table} not found: could not find the table 'public.{table}' in the schema cache"
        ))
    })?;
    Ok(table.to_owned())
}

/// What the `Prefer` headers ask for.
#[derive(Debug, Default)]
struct Prefer {
    representation: bool,
    count: bool,
    resolution: Option<Resolution>,
    max_affected: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Merge,
    Ignore,
}

fn prefer(headers: &HeaderMap) -> Result<Prefer, ApiError> {
    let mut prefer = Prefer::default();
    let mut strict = false;
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid("Prefer is not text"))?;
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=').unwrap_or((item, "")) {
                ("return", "representation") => prefer.representation = true,
                ("return", "minimal" | "headers-only") => prefer.representation = false,
                ("count", "exact" | "planned" | "estimated") => prefer.count = true,
                ("resolution", "merge-duplicates") => prefer.resolution = Some(Resolution::Merge),
                ("resolution", "ignore-duplicates") => prefer.resolution = Some(Resolution::Ignore),
                ("handling", "strict") => strict = true,
                ("handling", "lenient") => strict = false,
                ("max-affected", n) => {
                    prefer.max_affected =
                        Some(n.parse().map_err(|_| {
                            ApiError::invalid("max-affected takes a number of rows")
                        })?);
                }
                // Absent columns are absent fields either way.
                ("missing", "default" | "null") => {}
                ("timezone", _) => {}
                // Writes cannot be rolled back after the fact here: refuse rather
                // than commit what the client means to discard.
                ("tx", "rollback") => {
                    return Err(ApiError::invalid(
                        "Prefer: tx=rollback is not supported: writes here always commit",
                    ));
                }
                ("tx", "commit") => {}
                _ if strict => {
                    return Err(ApiError::invalid(format!(
                        "Prefer: {item} is not supported"
                    )));
                }
                _ => {}
            }
        }
    }
    if !strict {
        // PostgREST honours max-affected only with handling=strict.
        prefer.max_affected = None;
    }
    Ok(prefer)
}

/// Whether the client wants one object rather than an array (`single()`).
fn wants_object(headers: &HeaderMap) -> Result<bool, Refusal> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") || accept.contains("application/vnd.pgrst.plan") {
        return Err(Refusal::Postgrest(Box::new(postgrest_error(
            ApiError::invalid(format!("None of these media types are available: {accept}")),
            Some(StatusCode::NOT_ACCEPTABLE),
            "PGRST107",
            None,
            Some("minicloud's PostgREST view answers JSON only"),
        ))));
    }
    for name in ["accept-profile", "content-profile"] {
        if let Some(schema) = headers.get(name).and_then(|v| v.to_str().ok())
            && schema != "public"
        {
            return Err(Refusal::Postgrest(Box::new(postgrest_error(
                ApiError::invalid(format!(
                    "The schema must be one of the following: public (not {schema})"
                )),
                Some(StatusCode::NOT_ACCEPTABLE),
                "PGRST106",
                None,
                None,
            ))));
        }
    }
    Ok(accept.contains("application/vnd.pgrst.object+json"))
}

/// `Range: 0-9` (items) as an offset and a row count.
fn range_header(headers: &HeaderMap) -> Result<Option<(i64, Option<i64>)>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid("Range is not text"))?;
    let spec = text.trim().trim_start_matches("items=");
    let (from, to) = spec
        .split_once('-')
        .ok_or_else(|| ApiError::invalid("Range takes from-to, e.g. 0-9"))?;
    let from: i64 = from
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid("Range takes from-to, e.g. 0-9"))?;
    let to: Option<i64> = match to.trim() {
        "" => None,
        to => Some(
            to.parse()
                .ok()
                .filter(|to| *to >= from)
                .ok_or_else(|| ApiError::invalid("Range's end is before its start"))?,
        ),
    };
    Ok(Some((from, to.map(|to| to - from + 1))))
}

/// A document as a row: its data, with its id as `id`.
fn row_of(document: DocOut) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("id".into(), Value::String(document.id));
    if let Value::Object(data) = document.data {
        for (key, value) in data {
            if key != "id" {
                row.insert(key, value);
            }
        }
    }
    row
}

/// The row with only the selected columns (renamed where aliased); a column the
/// document lacks is `null`, as a NULL column would be.
fn project(row: Map<String, Value>, select: Option<&[Column]>) -> Value {
    match select {
        None => Value::Object(row),
        Some(columns) => Value::Object(
            columns
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        row.get(&c.column).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
    }
}

/// `Content-Range` as PostgREST sends it: `0-9/42`, `*/42` when empty, `*` for an
/// unknown total.
fn content_range(offset: i64, rows: usize, total: Option<i64>) -> String {
    let total = total.map_or("*".to_owned(), |t| t.to_string());
    if rows == 0 {
        format!("*/{total}")
    } else {
        format!("{offset}-{}/{total}", offset + rows as i64 - 1)
    }
}

fn json_response(status: StatusCode, body: &Value, range: Option<String>) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(range) = range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        response.headers_mut().insert(header::CONTENT_RANGE, range);
    }
    response
}

/// What every call of the view starts from.
struct Call {
    collection: String,
    /// `single()`: one object, not an array.
    single: bool,
    prefer: Prefer,
    rest: RestQuery,
}

fn open(table: &str, headers: &HeaderMap, query: Option<&str>) -> Result<Call, Refusal> {
    Ok(Call {
        collection: collection_of(table)?,
        single: wants_object(headers)?,
        prefer: prefer(headers)?,
        rest: parse::parse(query.unwrap_or(""))?,
    })
}

fn params_in(query: &RestQuery, limit: i64, count: bool) -> QueryIn {
    QueryIn {
        filter: query.filter.clone(),
        order_by: query.order.clone(),
        limit: Some(limit),
        cursor: None,
        offset: query.offset.filter(|o| *o > 0),
        count,
    }
}

#[utoipa::path(get, path = "/rest/v1/{collection}", tag = "PostgREST",
    params(("collection" = String, Path), ("select" = Option<String>, Query, description = "`*` or columns (`id,task`, `alias:column`)"), ("order" = Option<String>, Query, description = "`col.desc.nullslast,…`"), ("limit" = Option<i64>, Query), ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "the rows (an object with `Accept: application/vnd.pgrst.object+json`); `Content-Range`", body = Vec<Object>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 406, description = "one row was asked for, and there are none or several", body = ErrorBody)))]
pub(crate) async fn read(
    State(docdb): State<Docdb>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let Call {
        collection,
        single,
        prefer,
        mut rest,
    } = open(&table, &headers, query.as_deref())?;
    let mut limit = rest.limit.unwrap_or(DEFAULT_LIMIT);
    if let Some((from, rows)) = range_header(&headers)? {
        rest.offset = Some(rest.offset.unwrap_or(0) + from);
        if let Some(rows) = rows {
            limit = limit.min(rows);
        }
    }
    if limit > crate::query::MAX_LIMIT {
        limit = crate::query::MAX_LIMIT;
    }
    // One row is asked for: a second one found is enough to refuse.
    let fetch = if single { limit.min(2) } else { limit };
    let out = docdb
        .query(
            &caller,
            &collection,
            &params_in(&rest, fetch.max(1), prefer.count),
        )
        .await?;
    let mut documents = out.documents;
    documents.truncate(fetch as usize);
    let offset = rest.offset.unwrap_or(0);
    let range = Some(content_range(offset, documents.len(), out.count));
    let rows: Vec<Value> = documents
        .into_iter()
        .map(|d| project(row_of(d), rest.select.as_deref()))
        .collect();
    let body = if single {
        if rows.len() != 1 {
            return Err(Refusal::Postgrest(Box::new(postgrest_error(
                ApiError::invalid("JSON object requested, multiple (or no) rows returned"),
                Some(StatusCode::NOT_ACCEPTABLE),
                "PGRST116",
                Some(format!("The result contains {} rows", rows.len())),
                None,
            ))));
        }
        rows.into_iter().next().unwrap_or(Value::Null)
    } else {
        Value::Array(rows)
    };
    let mut response = json_response(StatusCode::OK, &body, range);
    if method == Method::HEAD {
        *response.body_mut() = axum::body::Body::empty();
    }
    Ok(response)
}

/// A row's id as a document id: a string or an integer; absent, the server picks.
fn id_of(row: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match row.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => {
            crate::documents::check_id(id)?;
            Ok(Some(id.clone()))
        }
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::invalid("id is a string or an integer")),
    }
}

fn without_id(mut row: Map<String, Value>) -> Value {
    row.remove("id");
    Value::Object(row)
}

/// The document with `columns` set (PostgREST's UPDATE: top-level columns are
/// replaced, not merged into).
fn with_columns(data: &Value, columns: &Map<String, Value>) -> Value {
    let mut merged = data.as_object().cloned().unwrap_or_default();
    for (key, value) in columns {
        if key != "id" {
            merged.insert(key.clone(), value.clone());
        }
    }
    Value::Object(merged)
}

fn rows_of(body: Value) -> Result<Vec<Map<String, Value>>, ApiError> {
    let rows = match body {
        Value::Object(row) => vec![row],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(row) => Ok(row),
                _ => Err(ApiError::invalid("each row is a JSON object")),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                "the body is a row (an object) or an array of rows",
            ));
        }
    };
    if rows.len() > MAX_ROWS_WRITTEN {
        return Err(ApiError::invalid(format!(
            "at most {MAX_ROWS_WRITTEN} rows in one request"
        )));
    }
    Ok(rows)
}

/// The answer to a write: the rows (`return=representation`) or nothing.
fn written(
    status: StatusCode,
    documents: Vec<DocOut>,
    prefer: &Prefer,
    select: Option<&[Column]>,
) -> Response {
    let count = prefer.count.then_some(documents.len() as i64);
    let range = content_range(0, documents.len(), count);
    if !prefer.representation {
        let status = if status == StatusCode::OK {
            StatusCode::NO_CONTENT
        } else {
            status
        };
        let mut response = status.into_response();
        if let Ok(value) = HeaderValue::from_str(&range) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return response;
    }
    let rows = documents
        .into_iter()
        .map(|d| project(row_of(d), select))
        .collect();
    json_response(status, &Value::Array(rows), Some(range))
}

#[utoipa::path(post, path = "/rest/v1/{collection}", tag = "PostgREST",
    params(("collection" = String, Path), ("on_conflict" = Option<String>, Query, description = "only `id`")),
    request_body(content = Object, description = "a row or an array of rows (≤ 500); `id` optional"),
    responses((status = 201, description = "inserted; the rows with `Prefer: return=representation`", body = Vec<Object>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, description = "an id exists (no upsert)", body = ErrorBody)))]
pub(crate) async fn insert(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let Call {
        collection,
        prefer,
        rest,
        ..
    } = open(&table, &headers, query.as_deref())?;
    if rest.filter.is_some() {
        return Err(ApiError::invalid("an insert takes no filters").into());
    }
    if rest.on_conflict.as_deref().is_some_and(|c| c != "id") {
        return Err(ApiError::invalid("on_conflict: upserts here resolve on id only").into());
    }
    let rows = rows_of(body)?;
    let mut ids = Vec::new();
    for row in &rows {
        ids.push(id_of(row)?);
    }
    let existing = match prefer.resolution {
        Some(_) => {
            let known: Vec<String> = ids.iter().flatten().cloned().collect();
            docdb.documents_by_id(&collection, &known).await?
        }
        None => Default::default(),
    };
    let mut writes = Vec::with_capacity(rows.len());
    for (row, id) in rows.into_iter().zip(ids) {
        let current = id.as_ref().and_then(|id| existing.get(id));
        let write = match (prefer.resolution, current) {
            (Some(Resolution::Ignore), Some(_)) => continue,
            (Some(Resolution::Merge), Some(current)) => Write {
                op: WriteKind::Put,
                collection: collection.clone(),
                data: Some(with_columns(&current.data, &row)),
                id,
                if_match: Some(current.version),
                if_none_match: false,
            },
            // Upserted ids that are new must still be new when written.
            (Some(_), None) if id.is_some() => Write {
                op: WriteKind::Put,
                collection: collection.clone(),
                id,
                data: Some(without_id(row)),
                if_match: None,
                if_none_match: true,
            },
            _ => Write {
                op: WriteKind::Create,
                collection: collection.clone(),
                id,
                data: Some(without_id(row)),
                if_match: None,
                if_none_match: false,
            },
        };
        writes.push(write);
    }
    let documents = if writes.is_empty() {
        Vec::new()
    } else {
        applied_documents(docdb.apply_writes(&caller, writes).await?)
    };
    Ok(written(
        StatusCode::CREATED,
        documents,
        &prefer,
        rest.select.as_deref(),
    ))
}

fn applied_documents(applied: Vec<crate::documents::Applied>) -> Vec<DocOut> {
    applied.into_iter().filter_map(|a| a.document).collect()
}

/// The documents an update or delete applies to: read with the caller's query
/// rights (owner conditions included), at most [`MAX_ROWS_WRITTEN`].
async fn matching(
    docdb: &Docdb,
    caller: &Caller,
    collection: &str,
    rest: &RestQuery,
    prefer: &Prefer,
) -> Result<Vec<DocOut>, ApiError> {
    let cap = rest.limit.map_or(MAX_ROWS_WRITTEN as i64 + 1, |l| {
        l.min(MAX_ROWS_WRITTEN as i64 + 1)
    });
    let found = docdb
        .query(caller, collection, &params_in(rest, cap.max(1), false))
        .await?
        .documents;
    let found: Vec<DocOut> = found.into_iter().take(cap as usize).collect();
    if rest.limit.is_none() && found.len() > MAX_ROWS_WRITTEN {
        return Err(ApiError::invalid(format!(
            "the filters match more than {MAX_ROWS_WRITTEN} rows: narrow them or page with limit"
        )));
    }
    if let Some(max) = prefer.max_affected
        && found.len() > max
    {
        return Err(ApiError::invalid(format!(
            "Query result exceeds max-affected preference constraint ({} rows)",
            found.len()
        )));
    }
    Ok(found)
}

/// Updates or deletes the rows the filters match: each is written with its version
/// as read (`If-Match`), so a row changed in between fails the call, all or nothing.
async fn change_matching(
    docdb: &Docdb,
    caller: &Caller,
    call: Call,
    change: impl Fn(&DocOut) -> (WriteKind, Option<Value>),
) -> Result<Response, Refusal> {
    let found = matching(docdb, caller, &call.collection, &call.rest, &call.prefer).await?;
    let writes: Vec<Write> = found
        .iter()
        .map(|document| {
            let (op, data) = change(document);
            Write {
                op,
                collection: call.collection.clone(),
                id: Some(document.id.clone()),
                data,
                if_match: Some(document.version),
                if_none_match: false,
            }
        })
        .collect();
    let documents = if writes.is_empty() {
        Vec::new()
    } else {
        applied_documents(docdb.apply_writes(caller, writes).await?)
    };
    Ok(written(
        StatusCode::OK,
        documents,
        &call.prefer,
        call.rest.select.as_deref(),
    ))
}

#[utoipa::path(patch, path = "/rest/v1/{collection}", tag = "PostgREST",
    params(("collection" = String, Path)),
    request_body(content = Object, description = "the columns to set"),
    responses((status = 200, description = "the updated rows (`Prefer: return=representation`)", body = Vec<Object>), (status = 204, description = "updated"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, description = "a row changed meanwhile", body = ErrorBody)))]
pub(crate) async fn update(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let call = open(&table, &headers, query.as_deref())?;
    let Value::Object(columns) = body else {
        return Err(ApiError::invalid("an update's body is an object of columns").into());
    };
    if columns.get("id").is_some() {
        return Err(ApiError::invalid("the id of a row cannot change").into());
    }
    change_matching(&docdb, &caller, call, |document| {
        (WriteKind::Put, Some(with_columns(&document.data, &columns)))
    })
    .await
}

#[utoipa::path(delete, path = "/rest/v1/{collection}", tag = "PostgREST",
    params(("collection" = String, Path)),
    responses((status = 200, description = "the deleted rows (`Prefer: return=representation`)", body = Vec<Object>), (status = 204, description = "deleted"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, description = "a row changed meanwhile", body = ErrorBody)))]
pub(crate) async fn remove(
    State(docdb): State<Docdb>,
    caller: Caller,
    headers: HeaderMap,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let call = open(&table, &headers, query.as_deref())?;
    change_matching(&docdb, &caller, call, |_| (WriteKind::Delete, None)).await
}

/// `/rest/v1/rpc/{function}`: collections have no stored procedures.
#[utoipa::path(method(get, post), path = "/rest/v1/rpc/{function}", tag = "PostgREST",
    params(("function" = String, Path)),
    responses((status = 404, description = "RPC is not offered", body = ErrorBody)))]
pub(crate) async fn rpc(Path(function): Path<String>) -> Response {
    let name: String = function
        .chars()
        .filter(|c| !c.is_control())
        .take(63)
        .collect();
    postgrest_error(
        ApiError::not_found(format!(
            "Could not find the function public.{name} in the schema cache"
        )),
        None,
        "PGRST202",
        None,
        Some(
            "minicloud's PostgREST view has no functions (RPC): call a minicloud function through /functions/v1 instead",
        ),
    )
}

/// `Content-Range` parsing and the error codes, beside the module.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_postgrests() {
        assert_eq!(content_range(0, 10, Some(42)), "0-9/42");
        assert_eq!(content_range(5, 1, None), "5-5/*");
        assert_eq!(content_range(0, 0, Some(0)), "*/0");
    }

    #[test]
    fn prefer_reads_what_the_clients_send() {
        let mut headers = HeaderMap::new();
        headers.append(
            "prefer",
            "return=representation,count=exact".parse().unwrap(),
        );
        headers.append("prefer", "resolution=merge-duplicates".parse().unwrap());
        headers.append("prefer", "missing=default".parse().unwrap());
        let p = prefer(&headers).unwrap();
        assert!(p.representation && p.count);
        assert_eq!(p.resolution, Some(Resolution::Merge));
        headers.append("prefer", "tx=rollback".parse().unwrap());
        assert!(prefer(&headers).is_err(), "a rollback cannot be honoured");
        let mut strict = HeaderMap::new();
        strict.append("prefer", "handling=strict, max-affected=3".parse().unwrap());
        assert_eq!(prefer(&strict).unwrap().max_affected, Some(3));
        strict.append("prefer", "shiny=yes".parse().unwrap());
        assert!(prefer(&strict).is_err());
    }

    #[test]
    fn rows_carry_the_id_and_the_selected_columns() {
        let doc = DocOut {
            id: "t1".into(),
            version: 1,
            owner: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            data: serde_json::json!({"task": "x", "done": false, "id": "ignored"}),
        };
        let row = row_of(doc);
        assert_eq!(row["id"], "t1");
        let columns = [
            Column {
                name: "what".into(),
                column: "task".into(),
            },
            Column {
                name: "missing".into(),
                column: "nope".into(),
            },
        ];
        assert_eq!(
            project(row, Some(&columns)),
            serde_json::json!({"what": "x", "missing": null})
        );
    }
}
