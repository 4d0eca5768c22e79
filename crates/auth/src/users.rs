//! Users as stored: the row, its columns, loading one, and the rules for emails —
//! shared by the public API, the admin API and sessions, below all three.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{AuthError, Result};

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub email: String,
    pub role: &'static str,
    #[schema(value_type = Object)]
    pub user_metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub user_metadata: serde_json::Value,
    pub banned: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

impl UserRow {
    pub(crate) fn into_out(self) -> UserOut {
        UserOut {
            id: self.id,
            email: self.email,
            role: "authenticated",
            user_metadata: self.user_metadata,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_sign_in_at: self.last_sign_in_at,
        }
    }
}

/// The columns of [`UserRow`], as a literal so queries stay `&'static str`.
macro_rules! user_columns {
    () => {
        "id, email, password_hash, user_metadata, banned, created_at, updated_at, last_sign_in_at"
    };
}
pub(crate) use user_columns;

pub(crate) async fn load_user<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    id: Uuid,
) -> Result<UserRow> {
    sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or(AuthError::NotFound("user"))
}

/// Trims and lowercases an email address and checks its shape.
pub(crate) fn normalise_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        })
        && email.matches('@').count() == 1
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(AuthError::Invalid("invalid email address".into()))
    }
}
