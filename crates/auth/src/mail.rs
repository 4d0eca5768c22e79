//! The local mail outbox: no mail server exists in a local cloud, so the mails auth
//! would send (password recovery, sign-in codes) are kept in Postgres for the
//! developer to read through the admin API or `minicloud auth mail`. Kept a week.

use axum::extract::State;
use chrono::{DateTime, Utc};
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Query};
use serde::{Deserialize, Serialize};

use crate::Auth;
use crate::error::{AuthError, Result};
use crate::users::normalise_email;

/// Queues a mail for `recipient`.
pub(crate) async fn send<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    recipient: &str,
    subject: &str,
    body: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO mail_outbox (recipient, subject, body) VALUES ($1, $2, $3)")
        .bind(recipient)
        .bind(subject)
        .bind(body)
        .execute(executor)
        .await?;
    tracing::info!(subject, "mail queued in the local outbox");
    Ok(())
}

/// Forgets mails past their retention.
pub(crate) async fn prune(pool: &sqlx::PgPool) -> Result<u64> {
    let result =
        sqlx::query("DELETE FROM mail_outbox WHERE created_at < now() - interval '7 days'")
            .execute(pool)
            .await?;
    Ok(result.rows_affected())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MailQuery {
    /// Only mails to this address.
    #[serde(default)]
    pub to: Option<String>,
    /// At most this many, newest first (1 to 100, default 20).
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Mail {
    pub id: i64,
    #[sqlx(rename = "recipient")]
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MailList {
    pub mails: Vec<Mail>,
}

#[utoipa::path(get, path = "/auth/v1/admin/mail", tag = "admin", params(MailQuery),
    responses((status = 200, description = "mails in the local outbox, newest first", body = MailList), (status = 400, description = "invalid input", body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn list(
    State(auth): State<Auth>,
    caller: Caller,
    Query(query): Query<MailQuery>,
) -> Result<Json<MailList>, ApiError> {
    crate::admin::require_service(&caller)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 100"));
    }
    let to = query.to.as_deref().map(normalise_email).transpose()?;
    let mails = sqlx::query_as::<_, Mail>(
        "SELECT id, recipient, subject, body, created_at FROM mail_outbox
         WHERE ($1::text IS NULL OR recipient = $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(to)
    .bind(limit)
    .fetch_all(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    Ok(Json(MailList { mails }))
}
