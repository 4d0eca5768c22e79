//! Collections and documents: each collection is a table `docs_<name>` with its
//! declared indexes; writes are authorised, preconditioned, versioned and produce an
//! event in the same transaction (through the outbox).

use minicloud_authz::Action;
use minicloud_metering::Meter;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use minicloud_authz::{Caller, Policy};
use minicloud_outbox::OutboxEvent;
use minicloud_proto::error::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Row as _};

use crate::Docdb;
use crate::query::{self, QueryIn};

pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DocOut {
    pub id: String,
    pub version: i64,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: Value,
}

pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "document id: 1-255 of A-Z a-z 0-9 _ - . : @",
        ))
    }
}

fn check_data(data: &Value) -> Result<(), ApiError> {
    if !data.is_object() {
        return Err(ApiError::invalid("a document is a JSON object"));
    }
    minicloud_proto::error::check_json_text(data, "document")?;
    if data.to_string().len() > MAX_DOCUMENT_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("document larger than {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// How long a collection's policy is served from memory.
pub(crate) const POLICY_CACHE_TTL: Duration = Duration::from_secs(5);

fn db(error: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(e) = &error {
        match e.code().as_deref() {
            Some("57014") => {
                return ApiError::new(ErrorCode::Timeout, "the statement took too long");
            }
            // The collection was dropped (another replica's cache may lag).
            Some("42P01") => return ApiError::not_found("collection not found"),
            _ => {}
        }
    }
    ApiError::internal(error)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    /// A new document; `id` optional (server-chosen when absent).
    Create,
    /// Create or replace.
    Put,
    /// JSON merge patch (RFC 7396) of an existing document.
    Patch,
    Delete,
}

/// One write, as REST routes and `POST /batch` express it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Write {
    pub op: WriteKind,
    pub collection: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Compare-and-set on the current version.
    #[serde(default)]
    pub if_match: Option<i64>,
    /// Create-only.
    #[serde(default)]
    pub if_none_match: bool,
}

#[derive(Debug)]
pub struct Applied {
    pub document: Option<DocOut>,
    pub created: bool,
}

impl Docdb {
    /// The collection's resource policy (404 if there is no such collection),
    /// cached briefly: every document call needs it, and it only changes when the
    /// collection is dropped and created again.
    pub(crate) async fn collection_policy(
        &self,
        collection: &str,
    ) -> Result<Arc<Policy>, ApiError> {
        crate::collections::check_name(collection)?;
        if let Some(policy) = self.policies.get(collection) {
            return Ok(policy);
        }
        let policy: Option<Value> =
            sqlx::query_scalar("SELECT policy FROM collections WHERE name = $1")
                .bind(collection)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        let policy = policy
            .ok_or_else(|| ApiError::not_found(format!("collection {collection} not found")))?;
        let policy = Arc::new(Policy::from_json(&policy).unwrap_or_default());
        self.policies
            .insert(collection.to_owned(), Arc::clone(&policy));
        Ok(policy)
    }

    pub(crate) async fn forget_collection(&self, collection: &str) {
        self.policies.remove(collection);
    }

    pub(crate) async fn authorize_doc(
        &self,
        caller: &Caller,
        action: Action,
        collection: &str,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(), ApiError> {
        let policy = self.collection_policy(collection).await?;
        self.authz
            .authorize_owned(
                caller,
                action,
                &format!("db:{collection}/{id}"),
                owner,
                &[&*policy],
            )
            .await
    }

    /// The owner a write is judged by: the document's, or the caller's for a new one.
    async fn owner_of(
        &self,
        caller: &Caller,
        collection: &str,
        id: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let Some(id) = id else {
            return Ok(caller.owner().map(str::to_owned));
        };
        let row: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT owner FROM {} WHERE id = $1",
            crate::collections::table(collection)
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(match row {
            Some(owner) => owner,
            None => caller.owner().map(str::to_owned),
        })
    }

    /// The documents with these ids, without authorisation: for an upsert to merge
    /// into, whose writes are authorised by [`Docdb::apply_writes`] (by these
    /// documents' owners) before anything is written or answered.
    pub(crate) async fn documents_by_id(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, DocOut>, ApiError> {
        self.collection_policy(collection).await?;
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let documents = sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(format!(
            "SELECT id, version, owner, created_at, updated_at, data FROM {} WHERE id = ANY($1)",
            crate::collections::table(collection)
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(documents.into_iter().map(|d| (d.id.clone(), d)).collect())
    }

    pub async fn get_document(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
    ) -> Result<DocOut, ApiError> {
        check_id(id)?;
        self.collection_policy(collection).await?;
        let document = sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(format!(
            "SELECT id, version, owner, created_at, updated_at, data FROM {} WHERE id = $1",
            crate::collections::table(collection)
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        // Judged by the document's owner; a missing one as if the caller owned it, so
        // a caller without rights learns nothing about which ids exist.
        let owner = match &document {
            Some(document) => document.owner.clone(),
            None => caller.owner().map(str::to_owned),
        };
        self.authorize_doc(
            caller,
            Action::DbGetDocument,
            collection,
            id,
            owner.as_deref(),
        )
        .await?;
        // A read that finds nothing is still a read.
        self.meters.record(
            collection,
            &minicloud_metering::owner_of(caller),
            &[(Meter::DbReads, 1)],
        );
        document.ok_or_else(|| ApiError::not_found("document not found"))
    }

    /// Applies writes in one transaction: all or nothing. Errors of a batch name the
    /// failing write's index.
    pub async fn apply_writes(
        &self,
        caller: &Caller,
        mut writes: Vec<Write>,
    ) -> Result<Vec<Applied>, ApiError> {
        let batch = writes.len() > 1;
        let owner = minicloud_metering::owner_of(caller);
        for write in &writes {
            self.check_cap(&write.collection, &owner)?;
        }
        for (i, write) in writes.iter().enumerate() {
            let id = write.id.clone().unwrap_or_default();
            let action = match write.op {
                WriteKind::Delete => Action::DbDeleteDocument,
                _ => Action::DbPutDocument,
            };
            if let Some(id) = &write.id {
                check_id(id).map_err(|e| ApiError::invalid(format!("write {i}: {}", e.message)))?;
            } else if !matches!(write.op, WriteKind::Create) {
                return Err(ApiError::invalid(format!("write {i}: id is required")));
            }
            if !matches!(write.op, WriteKind::Delete) {
                let data = write
                    .data
                    .as_ref()
                    .ok_or_else(|| ApiError::invalid(format!("write {i}: data is required")))?;
                if !matches!(write.op, WriteKind::Patch) {
                    check_data(data)?;
                } else if !data.is_object() {
                    return Err(ApiError::invalid(format!(
                        "write {i}: a merge patch is a JSON object"
                    )));
                }
            }
            // The service role may do anything: no need to look the owner up.
            let owner = if caller.is_service() {
                None
            } else {
                self.owner_of(caller, &write.collection, write.id.as_deref())
                    .await?
            };
            self.authorize_doc(
                caller,
                action,
                &write.collection,
                if id.is_empty() { "*" } else { &id },
                owner.as_deref(),
            )
            .await?;
        }
        if let [write] = writes.as_slice()
            && matches!(write.op, WriteKind::Put)
            && write.if_match.is_none()
            && write.id.is_some()
            && let Some(write) = writes.pop()
        {
            let collection = write.collection.clone();
            let applied = self.put_in_one_statement(caller, write).await?;
            self.relay.wake();
            self.meter_writes(caller, [collection.as_str()]);
            return Ok(vec![applied]);
        }
        let collections: Vec<String> = writes.iter().map(|w| w.collection.clone()).collect();
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut applied = Vec::with_capacity(writes.len());
        for (i, write) in writes.into_iter().enumerate() {
            let result = apply_one(&mut tx, caller, write).await.map_err(|e| {
                if batch {
                    ApiError::new(e.code, format!("write {i}: {}", e.message))
                } else {
                    e
                }
            })?;
            applied.push(result);
        }
        tx.commit().await.map_err(db)?;
        self.relay.wake();
        self.meter_writes(caller, collections.iter().map(String::as_str));
        Ok(applied)
    }

    /// Writes to a collection or namespace a budget caps are refused (402).
    pub(crate) fn check_cap(&self, resource: &str, owner: &str) -> Result<(), ApiError> {
        match self.meters.capped("db", resource, owner) {
            None => Ok(()),
            Some(budget) => Err(ApiError::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "budget {budget} is used up: writes to {resource} are refused until the month ends or the budget changes"
                ),
            )),
        }
    }

    /// One write per document written, per collection.
    fn meter_writes<'a>(&self, caller: &Caller, collections: impl IntoIterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        for collection in collections {
            *counts.entry(collection).or_default() += 1;
        }
        let owner = minicloud_metering::owner_of(caller);
        for (collection, count) in counts {
            self.meters
                .record(collection, &owner, &[(Meter::DbWrites, count)]);
        }
    }

    /// A PUT without `If-Match` as one autocommitted statement: the upsert and its
    /// event in the outbox together, all or nothing as in [`apply_one`]'s transaction,
    /// but one round trip to Postgres instead of five (BEGIN, SELECT … FOR UPDATE,
    /// write, outbox insert, COMMIT). The row lock taken by the upsert orders two
    /// writers of one document, so their events keep commit order.
    async fn put_in_one_statement(
        &self,
        caller: &Caller,
        write: Write,
    ) -> Result<Applied, ApiError> {
        let collection = write.collection.as_str();
        let id = write.id.as_deref().unwrap_or_default();
        let on_conflict = if write.if_none_match {
            "DO NOTHING"
        } else {
            "DO UPDATE SET data = EXCLUDED.data, version = d.version + 1, updated_at = now()"
        };
        // The event as `event()` builds it; version, owner and the document are only
        // known once written, so the statement adds them (and the type, on an update).
        let unwritten = DocOut {
            id: id.to_owned(),
            version: 0,
            owner: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            data: Value::Null,
        };
        let template = event("created", collection, &unwritten, false);
        let updated_type = event("updated", collection, &unwritten, false).event_type;
        let template = serde_json::to_value(&template).map_err(ApiError::internal)?;
        let sql = format!(
            "WITH written AS (
                INSERT INTO {t} AS d (id, version, owner, data) VALUES ($1, 1, $2, $3)
                ON CONFLICT (id) {on_conflict}
                RETURNING d.id, d.version, d.owner, d.created_at, d.updated_at, d.data
            ), event AS (
                {insert} SELECT 'db', jsonb_set(
                    CASE WHEN version = 1 THEN $4::jsonb
                         ELSE jsonb_set($4::jsonb, '{{type}}', to_jsonb($5::text))
                    END,
                    '{{data}}',
                    ($4::jsonb -> 'data')
                        || jsonb_build_object('version', version, 'owner', owner, 'document', data))
                FROM written
            )
            SELECT id, version, owner, created_at, updated_at, data FROM written",
            t = crate::collections::table(collection),
            insert = minicloud_outbox::INSERT_INTO,
        );
        let document = sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(caller.owner())
            .bind(write.data.unwrap_or_default())
            .bind(template)
            .bind(updated_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let document =
            document.ok_or_else(|| precondition_failed("If-None-Match: the document exists"))?;
        Ok(Applied {
            created: document.version == 1,
            document: Some(document),
        })
    }

    pub async fn query(
        &self,
        caller: &Caller,
        collection: &str,
        query: &QueryIn,
    ) -> Result<QueryOut, ApiError> {
        let policy = self.collection_policy(collection).await?;
        let scope = self
            .authz
            .authorize_scoped(
                caller,
                Action::DbQuery,
                &format!("db:{collection}"),
                &[&*policy],
            )
            .await?;
        let mut compiled = query::compile(query)?;
        if let minicloud_authz::Scope::OwnedBy(owner) = scope {
            // The caller may only see what it owns: say so in the SQL.
            let placeholder = compiled.sql.bind(owner)?;
            compiled.filter_where =
                format!("({}) AND owner = {placeholder}", compiled.filter_where);
        }
        let count = if query.count {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE {}",
                crate::collections::table(collection),
                compiled.filter_where
            );
            let args = compiled.sql.args.clone();
            Some(
                sqlx::query_scalar_with::<_, i64, _>(sqlx::AssertSqlSafe(sql), args)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?,
            )
        } else {
            None
        };
        let mut where_sql = compiled.filter_where.clone();
        if let Some(cursor) = &query.cursor {
            where_sql = format!("{where_sql} AND {}", compiled.cursor_where(cursor)?);
        }
        // One document at most: no sort (a Sort node was a quarter of a by-id select).
        let order_by = if compiled.at_most_one {
            String::new()
        } else {
            format!("ORDER BY {}", compiled.order_by_sql())
        };
        let sql = format!(
            "SELECT id, version, owner, created_at, updated_at, data, {} AS sort_key FROM {} WHERE {} {order_by} LIMIT {} OFFSET {}",
            query::order_key_select(&compiled.order),
            crate::collections::table(collection),
            where_sql,
            compiled.limit + 1,
            compiled.offset
        );
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), compiled.sql.args)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        // One read per result page.
        self.meters.record(
            collection,
            &minicloud_metering::owner_of(caller),
            &[(Meter::DbReads, 1)],
        );
        let mut documents = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            documents.push(DocOut {
                id: row.try_get("id").map_err(db)?,
                version: row.try_get("version").map_err(db)?,
                owner: row.try_get("owner").map_err(db)?,
                created_at: row.try_get("created_at").map_err(db)?,
                updated_at: row.try_get("updated_at").map_err(db)?,
                data: row.try_get("data").map_err(db)?,
            });
            keys.push(row.try_get::<Value, _>("sort_key").map_err(db)?);
        }
        let next_cursor = if documents.len() as i64 > compiled.limit {
            documents.truncate(compiled.limit as usize);
            keys.get(compiled.limit as usize - 1)
                .map(query::encode_cursor)
        } else {
            None
        };
        Ok(QueryOut {
            documents,
            next_cursor,
            count,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryOut {
    pub documents: Vec<DocOut>,
    pub next_cursor: Option<String>,
    pub count: Option<i64>,
}

fn event(kind: &str, collection: &str, document: &DocOut, with_data: bool) -> OutboxEvent {
    let mut data = serde_json::json!({
        "collection": collection,
        "id": document.id,
        "version": document.version,
        "owner": document.owner,
    });
    if with_data {
        data["document"] = document.data.clone();
    }
    OutboxEvent::new(
        "/minicloud/db",
        &format!("minicloud.db.document.{kind}"),
        Some(format!("{collection}/{}", document.id)),
        data,
    )
}

fn precondition_failed(message: &str) -> ApiError {
    ApiError::new(ErrorCode::PreconditionFailed, message)
}

async fn apply_one(
    tx: &mut PgConnection,
    caller: &Caller,
    write: Write,
) -> Result<Applied, ApiError> {
    let t = crate::collections::table(&write.collection);
    let current: Option<DocOut> = match &write.id {
        Some(id) => sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(format!(
            "SELECT id, version, owner, created_at, updated_at, data FROM {t} WHERE id = $1 FOR UPDATE"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?,
        None => None,
    };
    if write.if_none_match && current.is_some() {
        return Err(precondition_failed("If-None-Match: the document exists"));
    }
    if let Some(expected) = write.if_match {
        match &current {
            Some(doc) if doc.version == expected => {}
            _ => {
                return Err(precondition_failed(
                    "If-Match: the document's version differs",
                ));
            }
        }
    }
    let returning = "RETURNING id, version, owner, created_at, updated_at, data";
    match (write.op, current) {
        (WriteKind::Create, Some(_)) => Err(ApiError::conflict("the document exists")),
        (WriteKind::Create | WriteKind::Put, None) => {
            let id = write
                .id
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            let doc = sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {t} (id, version, owner, data) VALUES ($1, 1, $2, $3) {returning}"
            )))
            .bind(&id)
            .bind(caller.owner())
            .bind(write.data.unwrap_or_default())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
                    ApiError::conflict("the document exists")
                }
                _ => db(e),
            })?;
            minicloud_outbox::enqueue(tx, "db", &event("created", &write.collection, &doc, true))
                .await
                .map_err(ApiError::from)?;
            Ok(Applied {
                document: Some(doc),
                created: true,
            })
        }
        (WriteKind::Put | WriteKind::Patch, Some(existing)) => {
            let data = match write.op {
                WriteKind::Patch => {
                    let mut data = existing.data.clone();
                    json_patch::merge(&mut data, &write.data.unwrap_or_default());
                    check_data(&data)?;
                    data
                }
                _ => write.data.unwrap_or_default(),
            };
            let doc = sqlx::query_as::<_, DocOut>(sqlx::AssertSqlSafe(format!(
                "UPDATE {t} SET data = $2, version = version + 1, updated_at = now() WHERE id = $1 {returning}"
            )))
            .bind(&existing.id)
            .bind(data)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            minicloud_outbox::enqueue(tx, "db", &event("updated", &write.collection, &doc, true))
                .await
                .map_err(ApiError::from)?;
            Ok(Applied {
                document: Some(doc),
                created: false,
            })
        }
        (WriteKind::Patch | WriteKind::Delete, None) => {
            Err(ApiError::not_found("document not found"))
        }
        (WriteKind::Delete, Some(existing)) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {t} WHERE id = $1"
            )))
            .bind(&existing.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            minicloud_outbox::enqueue(
                tx,
                "db",
                &event("deleted", &write.collection, &existing, false),
            )
            .await
            .map_err(ApiError::from)?;
            Ok(Applied {
                document: Some(existing),
                created: false,
            })
        }
    }
}
