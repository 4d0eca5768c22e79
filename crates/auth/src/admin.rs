//! Admin API (service role only): users, roles with identity policies, API keys,
//! signing-key rotation.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use minicloud_authz::{Caller, Policy};
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path, Query};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{UserPatch, check_metadata};
use crate::error::{AuthError, Result, is_foreign_key_violation, is_unique_violation};
use crate::sessions::sha256;
use crate::users::{UserOut, UserRow, normalise_email, user_columns};
use crate::{Auth, BuiltinKeys};

pub(crate) fn routes() -> Router<Auth> {
    Router::new()
        .route("/auth/v1/admin/users", get(list_users).post(create_user))
        .route(
            "/auth/v1/admin/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/auth/v1/admin/users/{id}/logout", post(sign_out_user))
        .route("/auth/v1/admin/roles", get(list_roles).post(create_role))
        .route(
            "/auth/v1/admin/roles/{name}",
            get(get_role).put(update_role).delete(delete_role),
        )
        .route(
            "/auth/v1/admin/api-keys",
            get(list_api_keys).post(create_api_key),
        )
        .route(
            "/auth/v1/admin/api-keys/{id}",
            axum::routing::delete(revoke_api_key),
        )
        .route("/auth/v1/admin/keys/rotate", post(rotate_signing_key))
        .route("/auth/v1/admin/roles/{name}/simulate", post(simulate))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimulateIn {
    /// One action, as policies name it (`storage:GetObject`).
    pub action: String,
    /// `storage:photos/a.jpg`, `db:notes/n1`, `functions:thumbnail`, …
    pub resource: String,
    /// Act as this user of the role (for `${auth.uid}` in resources and owner conditions).
    #[serde(default)]
    pub uid: Option<String>,
    /// The resource's owner, for owner-conditioned statements (unknown when absent).
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SimulateOut {
    pub allowed: bool,
    /// `allow`, `implicit_deny` (no statement allows it) or `explicit_deny`.
    pub decision: &'static str,
    pub note: &'static str,
}

/// "May role X do action Y on resource Z?", answered by the evaluator every service
/// runs, over the role's identity policies.
#[utoipa::path(post, path = "/auth/v1/admin/roles/{name}/simulate", tag = "admin", params(("name" = String, Path)), request_body = SimulateIn,
    responses((status = 200, body = SimulateOut), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn simulate(
    State(auth): State<Auth>,
    caller: Caller,
    Path(name): Path<String>,
    Json(input): Json<SimulateIn>,
) -> Result<Json<SimulateOut>, ApiError> {
    require_service(&caller)?;
    if !minicloud_authz::Action::ALL
        .iter()
        .any(|a| a.as_str() == input.action)
    {
        return Err(AuthError::Invalid(format!(
            "{:?} is not an action (e.g. storage:GetObject)",
            input.action
        ))
        .into());
    }
    for (field, value) in [
        ("resource", Some(&input.resource)),
        ("uid", input.uid.as_ref()),
        ("owner", input.owner.as_ref()),
    ] {
        if value.is_some_and(|v| v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control))
        {
            return Err(AuthError::Invalid(format!(
                "{field}: 1-1024 characters, no control characters"
            ))
            .into());
        }
    }
    let policies: serde_json::Value =
        sqlx::query_scalar("SELECT policies FROM roles WHERE name = $1")
            .bind(&name)
            .fetch_optional(&auth.pool)
            .await
            .map_err(AuthError::from)?
            .ok_or(AuthError::NotFound("role"))?;
    let policy = Policy::from_json(&policies).map_err(|e| AuthError::Internal(e.to_string()))?;
    let subject = Caller::role(&name, input.uid.as_deref());
    let owner = match &input.owner {
        Some(owner) => minicloud_authz::Owner::Known(Some(owner)),
        None => minicloud_authz::Owner::Unknown,
    };
    let decision = minicloud_authz::policy::evaluate(
        &subject,
        minicloud_authz::Access {
            action: &input.action,
            resource: &input.resource,
            owner,
        },
        &[policy],
        &[],
    );
    Ok(Json(SimulateOut {
        allowed: decision.is_allowed(),
        decision: match decision {
            minicloud_authz::Decision::Allow => "allow",
            minicloud_authz::Decision::ImplicitDeny => "implicit_deny",
            minicloud_authz::Decision::ExplicitDeny => "explicit_deny",
        },
        note: "the role's identity policies only: a bucket's or collection's own policy can allow or deny more",
    }))
}

pub(crate) fn require_service(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_service() {
        Ok(())
    } else {
        Err(ApiError::forbidden("the admin API needs the service key"))
    }
}

/// Users by keyset (`cursor`, `limit`), or by page as GoTrue pages them (`page`,
/// `per_page`: what the Supabase clients' `listUsers` sends).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserPage {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    /// 1-based page number.
    #[serde(default)]
    #[param(value_type = Option<i64>)]
    pub page: Option<String>,
    #[serde(default)]
    #[param(value_type = Option<i64>)]
    pub per_page: Option<String>,
}

/// A paging number; supabase-js sends `page=&per_page=` when the app gave none.
fn page_number(value: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{name} must be a number"))),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserList {
    pub users: Vec<UserOut>,
    pub next_cursor: Option<String>,
    /// GoTrue's field, always `authenticated`.
    #[schema(value_type = String)]
    pub aud: &'static str,
}

#[utoipa::path(get, path = "/auth/v1/admin/users", tag = "admin", params(UserPage), responses((status = 200, body = UserList, headers(("x-total-count" = i64, description = "how many users exist (paged requests)"), ("link" = String, description = "next and last pages (paged requests)"))), (status = 400, description = "invalid input", body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn list_users(
    State(auth): State<Auth>,
    caller: Caller,
    Query(page): Query<UserPage>,
) -> Result<Response, ApiError> {
    require_service(&caller)?;
    let number = page_number(page.page.as_deref(), "page")?;
    let per_page = page_number(page.per_page.as_deref(), "per_page")?;
    if page.page.is_some() || page.per_page.is_some() {
        return list_users_by_page(&auth, number, per_page).await;
    }
    let limit = match page.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit must be 1 to 1000")),
    };
    let after = match &page.cursor {
        Some(cursor) => {
            Some(Uuid::parse_str(cursor).map_err(|_| ApiError::invalid("invalid cursor"))?)
        }
        None => None,
    };
    // User ids are UUIDv7, so id order is creation order and a stable keyset.
    let rows = sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    let mut users: Vec<UserOut> = rows.into_iter().map(UserRow::into_out).collect();
    let next_cursor = if users.len() as i64 > limit {
        users.truncate(limit as usize);
        users.last().map(|u| u.id.to_string())
    } else {
        None
    };
    Ok(Json(UserList {
        users,
        next_cursor,
        aud: "authenticated",
    })
    .into_response())
}

/// GoTrue's paging: an offset page and the total in `x-total-count`.
async fn list_users_by_page(
    auth: &Auth,
    number: Option<i64>,
    per_page: Option<i64>,
) -> Result<Response, ApiError> {
    let number = number.unwrap_or(1);
    let per_page = per_page.unwrap_or(50);
    if !(1..=1000).contains(&per_page) {
        return Err(ApiError::invalid("per_page must be 1 to 1000"));
    }
    if !(1..=1_000_000).contains(&number) {
        return Err(ApiError::invalid("page must be 1 to 1000000"));
    }
    let rows = sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(per_page)
    .bind((number - 1) * per_page)
    .fetch_all(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&auth.pool)
        .await
        .map_err(AuthError::from)?;
    let users = rows.into_iter().map(UserRow::into_out).collect();
    // GoTrue's Link header; supabase-js reads the total only when it is there.
    let last = ((total + per_page - 1) / per_page).max(1);
    let mut links = Vec::new();
    if number < last {
        links.push(format!(
            "</admin/users?page={}&per_page={per_page}>; rel=\"next\"",
            number + 1
        ));
    }
    links.push(format!(
        "</admin/users?page={last}&per_page={per_page}>; rel=\"last\""
    ));
    Ok((
        [
            ("x-total-count", total.to_string()),
            ("link", links.join(", ")),
        ],
        Json(UserList {
            users,
            next_cursor: None,
            aud: "authenticated",
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminUserIn {
    pub email: String,
    /// Without one, the user signs in by one-time code (`/otp`).
    #[serde(default)]
    pub password: Option<String>,
    /// What supabase-js `admin.createUser` sends: accepted and unused, as every
    /// address counts as confirmed here.
    #[serde(default, rename = "email_confirm")]
    pub _email_confirm: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub user_metadata: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/auth/v1/admin/users", tag = "admin", request_body = AdminUserIn, responses((status = 201, body = UserOut), (status = 409, description = "email taken", body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn create_user(
    State(auth): State<Auth>,
    caller: Caller,
    Json(input): Json<AdminUserIn>,
) -> Result<(StatusCode, Json<UserOut>), ApiError> {
    require_service(&caller)?;
    let email = normalise_email(&input.email)?;
    let metadata = input.user_metadata.unwrap_or_else(|| serde_json::json!({}));
    check_metadata(&metadata)?;
    let new = match input.password {
        Some(password) => crate::account::NewUser::Password(&email, password),
        None => crate::account::NewUser::EmailOnly(&email),
    };
    let user = crate::account::create_user(&auth, new, metadata).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

fn parse_user_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("user not found"))
}

#[utoipa::path(get, path = "/auth/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)), responses((status = 200, body = UserOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn get_user(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserOut>, ApiError> {
    require_service(&caller)?;
    Ok(Json(
        crate::users::load_user(&auth.pool, parse_user_id(&id)?)
            .await?
            .into_out(),
    ))
}

#[utoipa::path(put, path = "/auth/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)), request_body = UserPatch, responses((status = 200, body = UserOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn update_user(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
    Json(patch): Json<UserPatch>,
) -> Result<Json<UserOut>, ApiError> {
    require_service(&caller)?;
    Ok(Json(
        crate::account::apply_user_patch(&auth, parse_user_id(&id)?, patch).await?,
    ))
}

/// Answers with the deleted user, as GoTrue does (supabase-js `admin.deleteUser`
/// parses the body, so an empty 204 would fail it).
#[utoipa::path(delete, path = "/auth/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)), responses((status = 200, description = "deleted", body = UserOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn delete_user(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserOut>, ApiError> {
    require_service(&caller)?;
    let deleted = sqlx::query_as::<_, UserRow>(concat!(
        "DELETE FROM users WHERE id = $1 RETURNING ",
        user_columns!()
    ))
    .bind(parse_user_id(&id)?)
    .fetch_optional(&auth.pool)
    .await
    .map_err(AuthError::from)?
    .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(Json(deleted.into_out()))
}

/// Signs a user out everywhere: every refresh token of theirs is revoked, so no
/// session is renewed (access tokens already issued live out their short lifetime,
/// as with `POST /auth/v1/logout?scope=global`, which is the user's own way).
#[utoipa::path(post, path = "/auth/v1/admin/users/{id}/logout", tag = "admin", params(("id" = String, Path)), responses((status = 200, description = "signed out everywhere", body = SignedOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn sign_out_user(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SignedOut>, ApiError> {
    require_service(&caller)?;
    let user = parse_user_id(&id)?;
    // A 404 for a user who does not exist, rather than "0 sessions".
    crate::users::load_user(&auth.pool, user).await?;
    let sessions = auth.revoke_sessions(user, None).await?;
    Ok(Json(SignedOut {
        revoked_sessions: sessions,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedOut {
    /// How many live refresh tokens were revoked (one per session).
    pub revoked_sessions: u64,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct RoleOut {
    pub name: String,
    pub description: String,
    /// The role's identity policy: a list of statements (see docs/api/policies.md).
    #[schema(value_type = Vec<Object>)]
    pub policies: serde_json::Value,
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RoleList {
    pub roles: Vec<RoleOut>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKeyList {
    pub api_keys: Vec<ApiKeyOut>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RotatedKey {
    /// The new signing key's id.
    pub kid: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleIn {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policies: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolePatch {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policies: Option<serde_json::Value>,
}

fn check_role_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if valid {
        Ok(())
    } else {
        Err(AuthError::Invalid(
            "role name: 1-64 of a-z 0-9 _ -, starting with a letter".into(),
        ))
    }
}

/// Validates a policy document and returns it as the canonical statement list.
fn normalise_policies(value: &serde_json::Value) -> Result<serde_json::Value> {
    let policy = Policy::from_json(value).map_err(|e| AuthError::Invalid(e.to_string()))?;
    serde_json::to_value(&policy).map_err(|e| AuthError::Internal(e.to_string()))
}

macro_rules! role_columns {
    () => {
        "name, description, policies, builtin, created_at, updated_at"
    };
}

#[utoipa::path(get, path = "/auth/v1/admin/roles", tag = "admin", responses((status = 200, body = RoleList), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn list_roles(State(auth): State<Auth>, caller: Caller) -> Result<Json<RoleList>, ApiError> {
    require_service(&caller)?;
    let roles = sqlx::query_as::<_, RoleOut>(concat!(
        "SELECT ",
        role_columns!(),
        " FROM roles ORDER BY name LIMIT 1000"
    ))
    .fetch_all(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    Ok(Json(RoleList { roles }))
}

#[utoipa::path(post, path = "/auth/v1/admin/roles", tag = "admin", request_body = RoleIn, responses((status = 201, body = RoleOut), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn create_role(
    State(auth): State<Auth>,
    caller: Caller,
    Json(input): Json<RoleIn>,
) -> Result<(StatusCode, Json<RoleOut>), ApiError> {
    require_service(&caller)?;
    check_role_name(&input.name)?;
    let policies = normalise_policies(&input.policies.unwrap_or(serde_json::Value::Null))?;
    let role = sqlx::query_as::<_, RoleOut>(concat!(
        "INSERT INTO roles (name, description, policies) VALUES ($1, $2, $3) RETURNING ",
        role_columns!()
    ))
    .bind(&input.name)
    .bind(input.description.unwrap_or_default())
    .bind(policies)
    .fetch_one(&auth.pool)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            AuthError::Conflict(format!("role {} exists", input.name))
        } else {
            e.into()
        }
    })?;
    Ok((StatusCode::CREATED, Json(role)))
}

#[utoipa::path(get, path = "/auth/v1/admin/roles/{name}", tag = "admin", params(("name" = String, Path)), responses((status = 200, body = RoleOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn get_role(
    State(auth): State<Auth>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RoleOut>, ApiError> {
    require_service(&caller)?;
    let role = sqlx::query_as::<_, RoleOut>(concat!(
        "SELECT ",
        role_columns!(),
        " FROM roles WHERE name = $1"
    ))
    .bind(&name)
    .fetch_optional(&auth.pool)
    .await
    .map_err(AuthError::from)?
    .ok_or(AuthError::NotFound("role"))?;
    Ok(Json(role))
}

#[utoipa::path(put, path = "/auth/v1/admin/roles/{name}", tag = "admin", params(("name" = String, Path)), request_body = RolePatch, responses((status = 200, body = RoleOut), (status = 404, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn update_role(
    State(auth): State<Auth>,
    caller: Caller,
    Path(name): Path<String>,
    Json(patch): Json<RolePatch>,
) -> Result<Json<RoleOut>, ApiError> {
    require_service(&caller)?;
    if name == "service" && patch.policies.is_some() {
        return Err(ApiError::invalid(
            "the service role bypasses policies; it has none",
        ));
    }
    let policies = patch
        .policies
        .as_ref()
        .map(normalise_policies)
        .transpose()?;
    let role = sqlx::query_as::<_, RoleOut>(concat!("UPDATE roles SET description = COALESCE($2, description), policies = COALESCE($3, policies), updated_at = now()
         WHERE name = $1 RETURNING ", role_columns!()))
    .bind(&name)
    .bind(patch.description)
    .bind(policies)
    .fetch_optional(&auth.pool)
    .await
    .map_err(AuthError::from)?
    .ok_or(AuthError::NotFound("role"))?;
    Ok(Json(role))
}

#[utoipa::path(delete, path = "/auth/v1/admin/roles/{name}", tag = "admin", params(("name" = String, Path)), responses((status = 204, description = "deleted"), (status = 400, description = "built-in role", body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn delete_role(
    State(auth): State<Auth>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_service(&caller)?;
    let builtin: Option<bool> = sqlx::query_scalar("SELECT builtin FROM roles WHERE name = $1")
        .bind(&name)
        .fetch_optional(&auth.pool)
        .await
        .map_err(AuthError::from)?;
    match builtin {
        None => Err(ApiError::not_found("role not found")),
        Some(true) => Err(ApiError::invalid("built-in roles cannot be deleted")),
        Some(false) => {
            sqlx::query("DELETE FROM roles WHERE name = $1")
                .bind(&name)
                .execute(&auth.pool)
                .await
                .map_err(AuthError::from)?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKeyOut {
    pub id: String,
    pub name: String,
    pub role: String,
    pub subject: String,
    /// AWS key pairs: the access key id (`AKIA…`).
    pub access_key_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKeyOut,
    /// Bearer keys: the key, shown only in this response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// AWS key pairs: the secret access key, shown only in this response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

/// What kind of credential a key is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyKind {
    /// `Authorization: Bearer mck_…`.
    #[default]
    Bearer,
    /// An access key id and a secret access key, for AWS clients (SigV4).
    Aws,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyIn {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub kind: KeyKind,
}

fn new_api_key() -> (String, String) {
    let mut id = [0u8; 9];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = format!("ak_{}", hex::encode(id));
    let key = format!(
        "{}{}.{}",
        minicloud_authz::verifier::API_KEY_PREFIX,
        id,
        URL_SAFE_NO_PAD.encode(secret)
    );
    (id, key)
}

async fn insert_api_key(
    pool: &sqlx::PgPool,
    name: &str,
    role: &str,
    subject: &str,
    builtin: bool,
) -> Result<ApiKeyCreated> {
    let (id, key) = new_api_key();
    let row = sqlx::query_as::<_, ApiKeyOut>(
        "INSERT INTO api_keys (id, name, role, subject, key_hash, builtin_secret) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, role, subject, access_key_id, created_at, revoked_at",
    )
    .bind(&id)
    .bind(name)
    .bind(role)
    .bind(subject)
    .bind(sha256(&key))
    .bind(builtin.then_some(&key))
    .fetch_one(pool)
    .await
    .map_err(|e| if is_foreign_key_violation(&e) { AuthError::Invalid(format!("no role named {role:?}")) } else { e.into() })?;
    Ok(ApiKeyCreated {
        key: row,
        api_key: Some(key),
        secret_access_key: None,
    })
}

/// `AKIA` and 16 of base32's letters (80 random bits), as AWS's access key ids look;
/// a 40-character secret (240 random bits).
fn new_aws_key_pair() -> (String, String) {
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id_bytes = [0u8; 16];
    let mut secret = [0u8; 30];
    rand::rng().fill_bytes(&mut id_bytes);
    rand::rng().fill_bytes(&mut secret);
    let id: String = id_bytes
        .iter()
        .map(|b| BASE32[(b & 31) as usize] as char)
        .collect();
    (format!("AKIA{id}"), URL_SAFE_NO_PAD.encode(secret))
}

async fn insert_aws_key(
    pool: &sqlx::PgPool,
    name: &str,
    role: &str,
    subject: &str,
) -> Result<ApiKeyCreated> {
    let (id, _) = new_api_key();
    let (access_key_id, secret) = new_aws_key_pair();
    let row = sqlx::query_as::<_, ApiKeyOut>(
        "INSERT INTO api_keys (id, name, role, subject, key_hash, access_key_id, secret_access_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, name, role, subject, access_key_id, created_at, revoked_at",
    )
    .bind(&id)
    .bind(name)
    .bind(role)
    .bind(subject)
    // No bearer key hashes to this: the row is found by its access key id only.
    .bind(sha256(&format!("aws-key-pair:{access_key_id}")))
    .bind(&access_key_id)
    .bind(&secret)
    .fetch_one(pool)
    .await
    .map_err(|e| {
        if is_foreign_key_violation(&e) {
            AuthError::Invalid(format!("no role named {role:?}"))
        } else {
            e.into()
        }
    })?;
    Ok(ApiKeyCreated {
        key: row,
        api_key: None,
        secret_access_key: Some(secret),
    })
}

#[utoipa::path(get, path = "/auth/v1/admin/api-keys", tag = "admin", responses((status = 200, body = ApiKeyList), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn list_api_keys(
    State(auth): State<Auth>,
    caller: Caller,
) -> Result<Json<ApiKeyList>, ApiError> {
    require_service(&caller)?;
    let keys = sqlx::query_as::<_, ApiKeyOut>(
        "SELECT id, name, role, subject, access_key_id, created_at, revoked_at FROM api_keys ORDER BY created_at, id LIMIT 1000",
    )
    .fetch_all(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    Ok(Json(ApiKeyList { api_keys: keys }))
}

#[utoipa::path(post, path = "/auth/v1/admin/api-keys", tag = "admin", request_body = ApiKeyIn, responses((status = 201, body = ApiKeyCreated), (status = 400, body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn create_api_key(
    State(auth): State<Auth>,
    caller: Caller,
    Json(input): Json<ApiKeyIn>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    require_service(&caller)?;
    if input.name.trim().is_empty() || input.name.len() > 128 {
        return Err(ApiError::invalid("name must be 1 to 128 bytes"));
    }
    let subject = input.subject.unwrap_or_default();
    if subject.len() > 256 {
        return Err(ApiError::invalid("subject longer than 256 bytes"));
    }
    let created = match input.kind {
        KeyKind::Bearer => {
            insert_api_key(&auth.pool, &input.name, &input.role, &subject, false).await?
        }
        KeyKind::Aws => insert_aws_key(&auth.pool, &input.name, &input.role, &subject).await?,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/auth/v1/admin/api-keys/{id}", tag = "admin", params(("id" = String, Path)), responses((status = 204, description = "revoked"), (status = 404, body = ErrorBody), (status = 409, description = "the built-in or the last live service key", body = ErrorBody), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn revoke_api_key(
    State(auth): State<Auth>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_service(&caller)?;
    // The built-in service key is how minicloud's services call each other, and
    // the last live service key is every admin's way in: revoking either would
    // lock the cloud out of itself until a restart. Checked and revoked in one
    // statement, so two revocations cannot each leave the other as the last.
    let refusal: Option<String> = sqlx::query_scalar(
        "WITH target AS (
             SELECT id, role, builtin_secret IS NOT NULL AS builtin FROM api_keys
             WHERE id = $1 AND revoked_at IS NULL FOR UPDATE
         ), others AS (
             SELECT count(*) AS n FROM api_keys
             WHERE role = 'service' AND revoked_at IS NULL AND id <> $1
               AND access_key_id IS NULL
         ), refused AS (
             SELECT CASE
                 WHEN target.role = 'service' AND target.builtin THEN 'builtin'
                 WHEN target.role = 'service' AND others.n = 0 THEN 'last'
             END AS why FROM target, others
         ), revoked AS (
             UPDATE api_keys SET revoked_at = now(), builtin_secret = NULL
             WHERE id = $1 AND revoked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM refused WHERE why IS NOT NULL)
             RETURNING id
         )
         SELECT COALESCE((SELECT why FROM refused), CASE WHEN EXISTS (SELECT 1 FROM revoked) THEN 'revoked' ELSE 'none' END)",
    )
    .bind(&id)
    .fetch_one(&auth.pool)
    .await
    .map_err(AuthError::from)?;
    match refusal.as_deref() {
        Some("revoked") => Ok(StatusCode::NO_CONTENT),
        Some("builtin") => Err(ApiError::conflict(
            "the built-in service key cannot be revoked: minicloud's services use it to call \
             each other (issue further service keys for people and tools, and revoke those)",
        )),
        Some("last") => Err(ApiError::conflict(
            "this is the last live service key: revoking it would lock every admin out \
             (`minicloud keys issue --role service` mints another from the database)",
        )),
        _ => Err(ApiError::not_found("no live API key with that id")),
    }
}

#[utoipa::path(post, path = "/auth/v1/admin/keys/rotate", tag = "admin", responses((status = 200, body = RotatedKey), (status = 403, description = "not the service key", body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn rotate_signing_key(
    State(auth): State<Auth>,
    caller: Caller,
) -> Result<Json<RotatedKey>, ApiError> {
    require_service(&caller)?;
    let kid = auth.keys.rotate().await?;
    Ok(Json(RotatedKey { kid }))
}

/// Mints an API key straight in the database (`minicloud keys issue`): the way back
/// in for an operator who has no working service key. `pool` is on auth's schema.
/// An AWS-style key pair for `role`, straight in the database (the CLI's way).
pub async fn issue_aws_key(pool: &sqlx::PgPool, name: &str, role: &str) -> Result<ApiKeyCreated> {
    insert_aws_key(pool, name, role, "").await
}

pub async fn issue_api_key(pool: &sqlx::PgPool, name: &str, role: &str) -> Result<ApiKeyCreated> {
    insert_api_key(pool, name, role, "", false).await
}

/// Creates the anon and service keys on first start.
pub(crate) async fn ensure_builtin_keys(auth: &Auth) -> Result<()> {
    for (name, role) in [("anon key", "anon"), ("service key", "service")] {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = $1 AND builtin_secret IS NOT NULL AND revoked_at IS NULL)",
        )
        .bind(name)
        .fetch_one(&auth.pool)
        .await?;
        if !exists {
            insert_api_key(&auth.pool, name, role, "", true).await?;
            tracing::info!(role, "created the built-in key");
        }
    }
    Ok(())
}

pub(crate) async fn adopt_service_key(auth: &Auth, key: &str) -> Result<()> {
    if !key.starts_with(minicloud_authz::verifier::API_KEY_PREFIX)
        || key.len() < 32
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AuthError::Invalid(
            "the service key must be `mck_` followed by at least 28 printable characters".into(),
        ));
    }
    let mut tx = auth.pool.begin().await?;
    let current: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = 'service key' AND key_hash = $1
                        AND builtin_secret IS NOT NULL AND revoked_at IS NULL)",
    )
    .bind(sha256(key))
    .fetch_one(&mut *tx)
    .await?;
    if current {
        return Ok(());
    }
    sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE name = 'service key' AND builtin_secret IS NOT NULL AND revoked_at IS NULL",
    )
    .execute(&mut *tx)
    .await?;
    let (id, _) = new_api_key();
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, subject, key_hash, builtin_secret)
         VALUES ($1, 'service key', 'service', '', $2, $3)",
    )
    .bind(&id)
    .bind(sha256(key))
    .bind(key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("adopted the configured service key");
    Ok(())
}

pub(crate) async fn builtin_keys(auth: &Auth) -> Result<BuiltinKeys> {
    let get = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT builtin_secret FROM api_keys WHERE name = $1 AND builtin_secret IS NOT NULL AND revoked_at IS NULL
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(name)
        .fetch_one(&auth.pool)
        .await
    };
    Ok(BuiltinKeys {
        anon_key: get("anon key").await?,
        service_key: get("service key").await?,
    })
}
