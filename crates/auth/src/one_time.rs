//! One-time tokens, mailed to the local outbox: password recovery
//! (`resetPasswordForEmail` → `/recover`) and email sign-in (`signInWithOtp` →
//! `/otp`), each verified with `verifyOtp` (`/verify`) by the 6-digit code the mail
//! shows (with the email) or by its link token (`token_hash`). Either signs the user
//! in. Tokens live an hour, are spent by one use, by a newer token of the same kind
//! or by five wrong codes; only their SHA-256 is stored.

use axum::extract::State;
use chrono::Utc;
use minicloud_proto::error::{ApiError, ErrorBody, Json};
use rand::Rng as _;
use serde::Deserialize;
use uuid::Uuid;

use crate::Auth;
use crate::account::{ClientIp, NewUser, check_metadata, create_user, mark_signed_in};
use crate::error::{AuthError, Result};
use crate::rate_limit::Endpoint;
use crate::sessions::{TokenOut, random_token, sha256};
use crate::users::normalise_email;

const TOKEN_TTL_MINUTES: i64 = 60;
/// Wrong codes a user's live tokens absorb before they are spent.
const MAX_FAILURES: i32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Recovery,
    MagicLink,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Recovery => "recovery",
            Kind::MagicLink => "magiclink",
        }
    }
}

/// What `resetPasswordForEmail` sends; the captcha and PKCE fields are accepted
/// and unused (no captcha, no redirect flow here).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct RecoverIn {
    pub email: String,
}

#[utoipa::path(post, path = "/auth/v1/recover", tag = "users", request_body = RecoverIn,
    responses((status = 200, description = "a recovery mail is in the outbox if the address has a user (the answer is the same either way)", body = Object), (status = 429, description = "rate limited", body = ErrorBody), (status = 400, description = "invalid input", body = ErrorBody)))]
pub(crate) async fn recover(
    State(auth): State<Auth>,
    ClientIp(ip): ClientIp,
    Json(input): Json<RecoverIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = normalise_email(&input.email)?;
    auth.limits.check(Endpoint::SendMail, ip, Some(&email))?;
    if let Some(user_id) = user_of(&auth, &email).await? {
        issue(&auth, user_id, &email, Kind::Recovery).await?;
    }
    Ok(Json(serde_json::json!({})))
}

/// What `signInWithOtp({email})` sends.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct OtpIn {
    pub email: String,
    /// Create the user when the address has none (the clients' default).
    #[serde(default = "yes")]
    pub create_user: bool,
    /// Metadata of a user created here.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/auth/v1/otp", tag = "users", request_body = OtpIn,
    responses((status = 200, description = "a sign-in code is in the outbox (the answer is the same whether the address had a user)", body = Object), (status = 429, description = "rate limited", body = ErrorBody), (status = 400, description = "invalid input", body = ErrorBody)))]
pub(crate) async fn otp(
    State(auth): State<Auth>,
    ClientIp(ip): ClientIp,
    Json(input): Json<OtpIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = normalise_email(&input.email)?;
    auth.limits.check(Endpoint::SendMail, ip, Some(&email))?;
    let user_id = match user_of(&auth, &email).await? {
        Some(id) => Some(id),
        None if input.create_user => {
            let metadata = input.data.unwrap_or_else(|| serde_json::json!({}));
            check_metadata(&metadata)?;
            match create_user(&auth, NewUser::EmailOnly(&email), metadata).await {
                Ok(user) => Some(user.id),
                // Created by a concurrent request in between.
                Err(AuthError::EmailTaken) => user_of(&auth, &email).await?,
                Err(error) => return Err(error.into()),
            }
        }
        // GoTrue answers 422 here, which tells who has an account; the same 200
        // as for a known address does not.
        None => None,
    };
    if let Some(user_id) = user_id {
        issue(&auth, user_id, &email, Kind::MagicLink).await?;
    }
    Ok(Json(serde_json::json!({})))
}

/// The user with this address, unless banned.
async fn user_of(auth: &Auth, email: &str) -> Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1 AND NOT banned")
            .bind(email)
            .fetch_optional(&auth.pool)
            .await?,
    )
}

/// Replaces the user's live token of `kind` with a new one and mails it.
async fn issue(auth: &Auth, user_id: Uuid, email: &str, kind: Kind) -> Result<()> {
    let token = random_token();
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let mut tx = auth.pool.begin().await?;
    sqlx::query(
        "UPDATE one_time_tokens SET used_at = now() WHERE user_id = $1 AND kind = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(kind.name())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO one_time_tokens (user_id, kind, token_hash, code_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(kind.name())
    .bind(sha256(&token))
    .bind(sha256(&code))
    .bind(Utc::now() + chrono::Duration::minutes(TOKEN_TTL_MINUTES))
    .execute(&mut *tx)
    .await?;
    let (subject, purpose) = match kind {
        Kind::Recovery => ("Reset your password", "reset your password"),
        Kind::MagicLink => ("Your sign-in code", "sign in"),
    };
    let body = format!(
        "To {purpose}, enter this code: {code}\n\n\
         Or verify the link token: POST /auth/v1/verify \
         {{\"type\": \"{kind}\", \"token_hash\": \"{token}\"}}\n\n\
         Both expire in {TOKEN_TTL_MINUTES} minutes.\n",
        kind = kind.name(),
    );
    crate::mail::send(&mut *tx, email, subject, &body).await?;
    tx.commit().await?;
    Ok(())
}

/// What `verifyOtp` sends: a code with the address it was mailed to, or the link
/// token alone.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct VerifyIn {
    /// `recovery`, `magiclink` or `email` (a sign-in code).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub email: Option<String>,
    /// The 6-digit code.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_hash: Option<String>,
}

#[utoipa::path(post, path = "/auth/v1/verify", tag = "users", request_body = VerifyIn,
    responses((status = 200, description = "verified and signed in", body = TokenOut), (status = 403, description = "the code or link is wrong, spent or expired", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody), (status = 400, description = "invalid input", body = ErrorBody)))]
pub(crate) async fn verify(
    State(auth): State<Auth>,
    ClientIp(ip): ClientIp,
    Json(input): Json<VerifyIn>,
) -> Result<Json<TokenOut>, ApiError> {
    let kind = match input.kind.as_str() {
        "recovery" => Kind::Recovery,
        "magiclink" | "email" => Kind::MagicLink,
        other => {
            return Err(ApiError::invalid(format!(
                "unsupported verification type {other:?}: use recovery, magiclink or email \
                 (addresses are confirmed at sign-up here, phones are not offered)"
            )));
        }
    };
    let user_id = match (input.token_hash, input.email, input.token) {
        (Some(token_hash), None, None) => {
            if token_hash.is_empty() || token_hash.len() > 256 {
                return Err(AuthError::OtpInvalid.into());
            }
            auth.limits.check(Endpoint::Verify, ip, None)?;
            spend(&auth, sha256(&token_hash), kind, None).await?
        }
        (None, Some(email), Some(code)) => {
            let email = normalise_email(&email).map_err(|_| AuthError::OtpInvalid)?;
            auth.limits.check(Endpoint::Verify, ip, Some(&email))?;
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AuthError::OtpInvalid.into());
            }
            let user_id = user_of(&auth, &email).await?.ok_or(AuthError::OtpInvalid)?;
            spend(&auth, sha256(&code), kind, Some(user_id)).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "send either token_hash, or email and token (the code)",
            ));
        }
    };
    let user = mark_signed_in(&auth, user_id).await?;
    Ok(Json(auth.start_session(user).await?))
}

/// Spends the live token whose link hash is `hash` (no `user_id`), or the user's
/// whose code hash is `hash`, and returns its user; a wrong code counts against
/// every live token of the user.
async fn spend(auth: &Auth, hash: Vec<u8>, kind: Kind, user_id: Option<Uuid>) -> Result<Uuid> {
    let spent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
         WHERE id = (SELECT id FROM one_time_tokens
                     WHERE kind = $2 AND used_at IS NULL AND expires_at > now() AND failures < $3
                       AND CASE WHEN $4::uuid IS NULL THEN token_hash = $1
                                ELSE user_id = $4 AND code_hash = $1 END
                     ORDER BY id DESC LIMIT 1 FOR UPDATE)
         RETURNING user_id",
    )
    .bind(hash)
    .bind(kind.name())
    .bind(MAX_FAILURES)
    .bind(user_id)
    .fetch_optional(&auth.pool)
    .await?;
    if let Some(user_id) = spent {
        return Ok(user_id);
    }
    if let Some(user_id) = user_id {
        sqlx::query(
            "UPDATE one_time_tokens SET failures = failures + 1 WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .execute(&auth.pool)
        .await?;
    }
    Err(AuthError::OtpInvalid)
}

/// Forgets tokens a day after they expired.
pub(crate) async fn prune(pool: &sqlx::PgPool) -> Result<u64> {
    let result =
        sqlx::query("DELETE FROM one_time_tokens WHERE expires_at < now() - interval '1 day'")
            .execute(pool)
            .await?;
    Ok(result.rows_affected())
}
