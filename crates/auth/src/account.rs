//! The public REST API: signup, sign-in, refresh, sign-out, the current user, JWKS.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use minicloud_authz::{Caller, Credential, Role};
use minicloud_proto::error::{ApiError, ErrorBody, Json, Query};

use crate::sessions::TokenOut;
use crate::users::{UserOut, UserRow, load_user, normalise_email, user_columns};
use serde::Deserialize;
use uuid::Uuid;

use crate::Auth;
use crate::error::{AuthError, Result, is_unique_violation};
use crate::passwords;
use crate::rate_limit::Endpoint;

/// Limits user metadata to a JSON object of modest size.
pub(crate) fn check_metadata(data: &serde_json::Value) -> Result<()> {
    if !data.is_object() {
        return Err(AuthError::Invalid(
            "user metadata must be a JSON object".into(),
        ));
    }
    if data.to_string().len() > 16 * 1024 {
        return Err(AuthError::Invalid(
            "user metadata is larger than 16 KiB".into(),
        ));
    }
    Ok(())
}

/// The client address, for rate limits.
pub(crate) struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Ok(ClientIp(crate::client_ip(&parts.headers, peer)))
    }
}

/// Email and password sign up a user; neither signs one in anonymously
/// (supabase-js `signInAnonymously`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SignupIn {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// User metadata (GoTrue's `data`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/auth/v1/signup", tag = "users", request_body = SignupIn,
    responses((status = 200, description = "signed up (or in anonymously) and signed in", body = TokenOut), (status = 409, description = "email taken", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody), (status = 400, description = "invalid input", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn signup(
    State(auth): State<Auth>,
    ClientIp(ip): ClientIp,
    Json(input): Json<SignupIn>,
) -> Result<Response, ApiError> {
    let metadata = input.data.unwrap_or_else(|| serde_json::json!({}));
    check_metadata(&metadata)?;
    let user = match (input.email, input.password) {
        (None, None) => {
            auth.limits.check(Endpoint::Signup, ip, None)?;
            let user = create_user(&auth, NewUser::Anonymous, metadata).await?;
            tracing::info!(user_id = %user.id, "anonymous user signed in");
            user
        }
        (Some(email), Some(password)) => {
            let email = normalise_email(&email)?;
            auth.limits.check(Endpoint::Signup, ip, Some(&email))?;
            create_user(&auth, NewUser::Password(&email, password), metadata).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "email and password are required (or neither, to sign in anonymously)",
            ));
        }
    };
    // Signing up signs in (GoTrue with autoconfirm).
    let user = mark_signed_in(&auth, user.id).await?;
    let tokens = auth.start_session(user).await?;
    Ok((StatusCode::OK, Json(tokens)).into_response())
}

/// How a new user will sign in.
pub(crate) enum NewUser<'a> {
    Password(&'a str, String),
    /// By one-time code or link mailed to the address.
    EmailOnly(&'a str),
    /// No email: the session is all there is until the user adds one.
    Anonymous,
}

pub(crate) async fn create_user(
    auth: &Auth,
    new: NewUser<'_>,
    metadata: serde_json::Value,
) -> Result<UserOut> {
    let (email, hash) = match new {
        NewUser::Password(email, password) => (Some(email), Some(passwords::hash(password).await?)),
        NewUser::EmailOnly(email) => (Some(email), None),
        NewUser::Anonymous => (None, None),
    };
    let row = sqlx::query_as::<_, UserRow>(concat!("INSERT INTO users (id, email, password_hash, user_metadata, is_anonymous) VALUES ($1, $2, $3, $4, $2 IS NULL) RETURNING ", user_columns!()))
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(hash)
    .bind(metadata)
    .fetch_one(&auth.pool)
    .await
    .map_err(|e| if is_unique_violation(&e) { AuthError::EmailTaken } else { e.into() })?;
    tracing::info!(user_id = %row.id, "user signed up");
    Ok(row.into_out())
}

/// Records the sign-in and returns the user as it now is.
pub(crate) async fn mark_signed_in(auth: &Auth, id: Uuid) -> Result<UserOut> {
    let row = sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET last_sign_in_at = now() WHERE id = $1 RETURNING ",
        user_columns!()
    ))
    .bind(id)
    .fetch_optional(&auth.pool)
    .await?
    .ok_or(AuthError::NotFound("user"))?;
    Ok(row.into_out())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    pub grant_type: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenIn {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[utoipa::path(post, path = "/auth/v1/token", tag = "users", params(TokenQuery), request_body = TokenIn,
    responses((status = 200, description = "a new session", body = TokenOut), (status = 429, description = "rate limited", body = ErrorBody), (status = 400, description = "invalid input", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn token(
    State(auth): State<Auth>,
    ClientIp(ip): ClientIp,
    Query(query): Query<TokenQuery>,
    Json(input): Json<TokenIn>,
) -> Result<Response, ApiError> {
    let tokens = match query.grant_type.as_str() {
        "password" => {
            let (Some(email), Some(password)) = (input.email, input.password) else {
                return Err(ApiError::invalid("email and password are required"));
            };
            let email = normalise_email(&email).map_err(|_| AuthError::InvalidCredentials)?;
            auth.limits.check(Endpoint::SignIn, ip, Some(&email))?;
            sign_in(&auth, &email, password).await?
        }
        "refresh_token" => {
            let Some(refresh_token) = input
                .refresh_token
                .filter(|t| !t.is_empty() && t.len() <= 256)
            else {
                return Err(ApiError::invalid("refresh_token is required"));
            };
            auth.limits.check(Endpoint::Refresh, ip, None)?;
            auth.refresh(&refresh_token).await?
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unsupported grant_type {other:?}: use password or refresh_token"
            )));
        }
    };
    Ok(Json(tokens).into_response())
}

async fn sign_in(auth: &Auth, email: &str, password: String) -> Result<crate::sessions::TokenOut> {
    if password.len() > passwords::MAX_PASSWORD_BYTES {
        return Err(AuthError::InvalidCredentials);
    }
    let row = sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(&auth.pool)
    .await?;
    let stored = row.as_ref().and_then(|r| r.password_hash.clone());
    // Same work and same answer whether or not the email exists.
    if !passwords::verify(password, stored).await? {
        return Err(AuthError::InvalidCredentials);
    }
    let Some(row) = row else {
        return Err(AuthError::InvalidCredentials);
    };
    if row.banned {
        return Err(AuthError::InvalidCredentials);
    }
    let user = mark_signed_in(auth, row.id).await?;
    auth.start_session(user).await
}

/// The signed-in user behind the request, or 401.
pub(crate) fn require_user(caller: &Caller) -> Result<Uuid, ApiError> {
    if caller.role != Role::Authenticated || caller.credential != Credential::AccessToken {
        return Err(ApiError::unauthenticated("a user access token is required"));
    }
    caller
        .uid
        .as_deref()
        .and_then(|uid| Uuid::parse_str(uid).ok())
        .ok_or_else(|| ApiError::unauthenticated("a user access token is required"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogoutQuery {
    #[serde(default)]
    pub scope: Option<String>,
}

#[utoipa::path(post, path = "/auth/v1/logout", tag = "users", params(LogoutQuery),
    responses((status = 204, description = "signed out"), (status = 400, description = "invalid input", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn logout(
    State(auth): State<Auth>,
    caller: Caller,
    Query(query): Query<LogoutQuery>,
) -> Result<StatusCode, ApiError> {
    let user_id = require_user(&caller)?;
    let session = caller
        .session_id
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok());
    match query.scope.as_deref().unwrap_or("local") {
        "local" => {
            let session =
                session.ok_or_else(|| ApiError::invalid("this token carries no session"))?;
            auth.revoke_sessions(user_id, Some(session)).await?;
        }
        "global" => {
            auth.revoke_sessions(user_id, None).await?;
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unknown scope {other:?}: use local or global"
            )));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/auth/v1/user", tag = "users",
    responses((status = 200, description = "the signed-in user", body = UserOut), (status = 400, description = "invalid input", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn get_user(
    State(auth): State<Auth>,
    caller: Caller,
) -> Result<Json<UserOut>, ApiError> {
    let user_id = require_user(&caller)?;
    Ok(Json(load_user(&auth.pool, user_id).await?.into_out()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// What supabase-js sends along (PKCE for email changes, a reauthentication
    /// nonce): accepted and unused, as no confirmation mail is sent here.
    #[serde(default, rename = "code_challenge")]
    #[schema(value_type = Option<String>)]
    pub _code_challenge: Option<serde_json::Value>,
    #[serde(default, rename = "code_challenge_method")]
    #[schema(value_type = Option<String>)]
    pub _code_challenge_method: Option<serde_json::Value>,
    #[serde(default, rename = "nonce")]
    #[schema(value_type = Option<String>)]
    pub _nonce: Option<serde_json::Value>,
}

#[utoipa::path(put, path = "/auth/v1/user", tag = "users", request_body = UserPatch,
    responses((status = 200, description = "the updated user", body = UserOut), (status = 400, description = "invalid input", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn update_user(
    State(auth): State<Auth>,
    caller: Caller,
    Json(patch): Json<UserPatch>,
) -> Result<Json<UserOut>, ApiError> {
    let user_id = require_user(&caller)?;
    Ok(Json(apply_user_patch(&auth, user_id, patch).await?))
}

pub(crate) async fn apply_user_patch(
    auth: &Auth,
    user_id: Uuid,
    patch: UserPatch,
) -> Result<UserOut> {
    let email = patch.email.as_deref().map(normalise_email).transpose()?;
    if let Some(data) = &patch.data {
        check_metadata(data)?;
    }
    let hash = match patch.password {
        Some(password) => Some(passwords::hash(password).await?),
        None => None,
    };
    let row = sqlx::query_as::<_, UserRow>(concat!("UPDATE users SET
            email = COALESCE($2, email),
            password_hash = COALESCE($3, password_hash),
            user_metadata = CASE WHEN $4::jsonb IS NULL THEN user_metadata ELSE user_metadata || $4::jsonb END,
            -- An anonymous user who adds an email address becomes a permanent one.
            is_anonymous = is_anonymous AND $2::text IS NULL,
            updated_at = now()
         WHERE id = $1 RETURNING ", user_columns!()))
    .bind(user_id)
    .bind(email)
    .bind(hash)
    .bind(patch.data)
    .fetch_optional(&auth.pool)
    .await
    .map_err(|e| if is_unique_violation(&e) { AuthError::EmailTaken } else { e.into() })?
    .ok_or(AuthError::NotFound("user"))?;
    Ok(row.into_out())
}

#[utoipa::path(get, path = "/auth/v1/.well-known/jwks.json", tag = "keys",
    responses((status = 200, description = "the public signing keys", body = crate::keys::JwkSet)))]
pub(crate) async fn jwks(State(auth): State<Auth>) -> Response {
    let keys = auth.keys.jwks().await;
    (
        [(http::header::CACHE_CONTROL, "public, max-age=60")],
        Json(serde_json::json!({ "keys": keys })),
    )
        .into_response()
}
