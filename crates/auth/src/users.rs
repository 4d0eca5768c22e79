//! Users as stored: the row, its columns, loading one, and the rules for emails —
//! shared by the public API, the admin API and sessions, below all three.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{AuthError, Result};

/// A user as GoTrue shows one, so the Supabase clients can parse it (supabase-py
/// requires `aud` and `app_metadata`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    /// Always `authenticated`, as GoTrue's audience for signed-in users.
    pub aud: &'static str,
    /// Empty for anonymous users, as GoTrue shows them.
    pub email: String,
    /// Addresses count as confirmed when the user is created (GoTrue's
    /// autoconfirm): confirmation mails are not sent. None for anonymous users.
    pub email_confirmed_at: Option<DateTime<Utc>>,
    /// Phone sign-in is not offered: always empty.
    pub phone: &'static str,
    pub role: &'static str,
    pub app_metadata: AppMetadata,
    #[schema(value_type = Object)]
    pub user_metadata: serde_json::Value,
    /// Email and password is the one identity provider: no linked identities.
    #[schema(value_type = Vec<Object>)]
    pub identities: Vec<serde_json::Value>,
    pub is_anonymous: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

/// What GoTrue keeps about how a user signs in.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AppMetadata {
    pub provider: &'static str,
    pub providers: [&'static str; 1],
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub id: Uuid,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub user_metadata: serde_json::Value,
    pub banned: bool,
    pub is_anonymous: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

impl UserRow {
    pub(crate) fn into_out(self) -> UserOut {
        let provider = if self.is_anonymous {
            "anonymous"
        } else {
            "email"
        };
        UserOut {
            id: self.id,
            aud: "authenticated",
            email_confirmed_at: self.email.as_ref().map(|_| self.created_at),
            email: self.email.unwrap_or_default(),
            phone: "",
            role: "authenticated",
            app_metadata: AppMetadata {
                provider,
                providers: [provider],
            },
            user_metadata: self.user_metadata,
            identities: Vec::new(),
            is_anonymous: self.is_anonymous,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_sign_in_at: self.last_sign_in_at,
        }
    }
}

/// The columns of [`UserRow`], as a literal so queries stay `&'static str`.
macro_rules! user_columns {
    () => {
        "id, email, password_hash, user_metadata, banned, is_anonymous, created_at, updated_at, last_sign_in_at"
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
