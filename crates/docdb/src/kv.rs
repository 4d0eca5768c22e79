//! Key-value namespaces: any JSON value per key, versions for compare-and-set,
//! optional TTL (expired keys are never returned and are purged in the background),
//! prefix listing with a cursor, atomic increments.

use chrono::{DateTime, Utc};
use minicloud_authz::Action;
use minicloud_authz::Caller;
use minicloud_metering::Meter;
use minicloud_proto::error::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::Value;

use crate::Docdb;

pub(crate) const MAX_VALUE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KvOut {
    pub key: String,
    #[schema(value_type = Object)]
    pub value: Value,
    pub version: i64,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KvList {
    pub items: Vec<KvOut>,
    pub next_cursor: Option<String>,
}

pub(crate) fn check_namespace(namespace: &str) -> Result<(), ApiError> {
    crate::collections::check_name(namespace)
        .map_err(|_| ApiError::invalid("namespace: 1-63 of a-z 0-9 _, starting with a letter"))
}

pub(crate) fn check_key(key: &str) -> Result<(), ApiError> {
    let valid = !key.is_empty() && key.len() <= 512 && !key.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "key: 1-512 bytes without control characters",
        ))
    }
}

fn db(error: sqlx::Error) -> ApiError {
    ApiError::internal(error)
}

/// What a conditional write expects of the current value.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvCondition {
    pub if_match: Option<i64>,
    pub if_none_match: bool,
}

impl Docdb {
    async fn authorize_kv(
        &self,
        caller: &Caller,
        action: Action,
        namespace: &str,
        key: &str,
    ) -> Result<(), ApiError> {
        check_namespace(namespace)?;
        self.authz
            .authorize(caller, action, &format!("kv:{namespace}/{key}"), &[])
            .await?;
        let owner = minicloud_metering::owner_of(caller);
        let meter = match action {
            Action::KvGet | Action::KvList => Meter::KvReads,
            _ => {
                self.check_cap(namespace, &owner)?;
                Meter::KvWrites
            }
        };
        // Metered once authorised, as DynamoDB bills a conditional write that fails.
        self.meters.record(namespace, &owner, &[(meter, 1)]);
        Ok(())
    }

    pub async fn kv_get(
        &self,
        caller: &Caller,
        namespace: &str,
        key: &str,
    ) -> Result<KvOut, ApiError> {
        check_key(key)?;
        self.authorize_kv(caller, Action::KvGet, namespace, key)
            .await?;
        sqlx::query_as::<_, KvOut>(
            "SELECT key, value, version, expires_at FROM kv
             WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(namespace)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::not_found("key not found"))
    }

    pub async fn kv_put(
        &self,
        caller: &Caller,
        namespace: &str,
        key: &str,
        value: Value,
        ttl_s: Option<u64>,
        condition: KvCondition,
    ) -> Result<KvOut, ApiError> {
        check_key(key)?;
        minicloud_proto::error::check_json_text(&value, "value")?;
        if value.to_string().len() > MAX_VALUE_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("value larger than {MAX_VALUE_BYTES} bytes"),
            ));
        }
        if ttl_s.is_some_and(|t| t == 0 || t > 10 * 365 * 24 * 3600) {
            return Err(ApiError::invalid("ttl must be 1 second to 10 years"));
        }
        self.authorize_kv(caller, Action::KvPut, namespace, key)
            .await?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        // A live current version, if any (an expired key counts as absent).
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM kv WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE",
        )
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if condition.if_none_match && current.is_some() {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "If-None-Match: the key exists",
            ));
        }
        if condition.if_match.is_some() && condition.if_match != current {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "If-Match: the key's version differs",
            ));
        }
        let out = sqlx::query_as::<_, KvOut>(
            "INSERT INTO kv (namespace, key, value, version, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::double precision))
             ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version,
               expires_at = EXCLUDED.expires_at, updated_at = now()
             RETURNING key, value, version, expires_at",
        )
        .bind(namespace)
        .bind(key)
        .bind(value)
        .bind(current.unwrap_or(0) + 1)
        .bind(ttl_s.map(|t| t as f64))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    pub async fn kv_delete(
        &self,
        caller: &Caller,
        namespace: &str,
        key: &str,
        condition: KvCondition,
    ) -> Result<(), ApiError> {
        check_key(key)?;
        self.authorize_kv(caller, Action::KvDelete, namespace, key)
            .await?;
        let deleted = sqlx::query(
            "DELETE FROM kv WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > now())
             AND ($3::bigint IS NULL OR version = $3)",
        )
        .bind(namespace)
        .bind(key)
        .bind(condition.if_match)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if deleted == 0 {
            return if condition.if_match.is_some() {
                Err(ApiError::new(
                    ErrorCode::PreconditionFailed,
                    "If-Match: missing or another version",
                ))
            } else {
                Err(ApiError::not_found("key not found"))
            };
        }
        Ok(())
    }

    pub async fn kv_list(
        &self,
        caller: &Caller,
        namespace: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<KvList, ApiError> {
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid("limit must be 1 to 1000"));
        }
        self.authorize_kv(caller, Action::KvList, namespace, prefix)
            .await?;
        let mut items = sqlx::query_as::<_, KvOut>(
            "SELECT key, value, version, expires_at FROM kv
             WHERE namespace = $1 AND starts_with(key, $2) AND key >= $2 AND ($3::text IS NULL OR key > $3)
               AND (expires_at IS NULL OR expires_at > now())
             ORDER BY key LIMIT $4",
        )
        .bind(namespace)
        .bind(prefix)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|item| item.key.clone())
        } else {
            None
        };
        Ok(KvList { items, next_cursor })
    }

    /// Adds `by` to a numeric value (a missing or expired key counts as 0).
    pub async fn kv_incr(
        &self,
        caller: &Caller,
        namespace: &str,
        key: &str,
        by: f64,
    ) -> Result<KvOut, ApiError> {
        check_key(key)?;
        if !by.is_finite() {
            return Err(ApiError::invalid("by must be a finite number"));
        }
        self.authorize_kv(caller, Action::KvPut, namespace, key)
            .await?;
        let result = sqlx::query_as::<_, KvOut>(
            "INSERT INTO kv (namespace, key, value, version) VALUES ($1, $2, to_jsonb($3::numeric), 1)
             ON CONFLICT (namespace, key) DO UPDATE SET
               value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= now() THEN to_jsonb($3::numeric)
                            ELSE to_jsonb((kv.value #>> '{}')::numeric + $3::numeric) END,
               version = kv.version + 1,
               expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= now() THEN NULL ELSE kv.expires_at END,
               updated_at = now()
             WHERE jsonb_typeof(kv.value) = 'number' OR (kv.expires_at IS NOT NULL AND kv.expires_at <= now())
             RETURNING key, value, version, expires_at",
        )
        .bind(namespace)
        .bind(key)
        .bind(by)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        result.ok_or_else(|| ApiError::conflict("the key's value is not a number"))
    }

    /// Deletes expired keys; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM kv WHERE expires_at <= now()")
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
