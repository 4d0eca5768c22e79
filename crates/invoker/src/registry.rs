//! The function registry: deploy (config + code), get, list, delete.

use minicloud_authz::{Action, Resource};
use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use minicloud_authz::{Caller, Role};
use minicloud_proto::error::{ApiError, ErrorCode, Json};
use serde::{Deserialize, Serialize};

use crate::Invoker;
use crate::bundle;
use crate::engine::FunctionConfig;

pub const RUNTIMES: [&str; 3] = ["provided", "python3", "nodejs"];

/// `POST /functions/v1` and `PUT /functions/v1/{name}` (docs/design.md §5.6).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionIn {
    /// Required by `POST`; `PUT` takes it from the path.
    pub name: Option<String>,
    /// `provided` (an executable `bootstrap`), `python3` or `nodejs`.
    pub runtime: String,
    /// `file.function` for python3/nodejs; passed as `_HANDLER` to `provided`.
    pub handler: Option<String>,
    pub memory_mb: Option<i32>,
    pub timeout_s: Option<i32>,
    pub env: Option<BTreeMap<String, String>>,
    /// The role the function acts as (its `MINICLOUD_TOKEN`); giving a function a
    /// role needs `functions:PassRole` on `roles:<role>`.
    pub role: Option<String>,
    pub reserved_concurrency: Option<i32>,
    pub provisioned_concurrency: Option<i32>,
    pub keep_warm_s: Option<i32>,
    /// Size of its scratch space (`/tmp`, `HOME`) in MB, 64 to 10240, like Lambda's
    /// ephemeral storage (default: the invoker's `--invoker-scratch-mb`).
    pub ephemeral_storage_mb: Option<i32>,
    /// Where it may connect (default: the invoker's `--invoker-network` and ports);
    /// ports of minicloud's own servers and the ephemeral range are refused.
    pub network: Option<crate::sandbox::NetworkPolicy>,
    /// At most this many instances (1 to 1000): synchronous calls beyond them
    /// wait for a free one (for at most `timeout_s`, behind at most 1,000 others)
    /// instead of starting more. Unset: an instance per concurrent call, as Lambda.
    pub max_instances: Option<i32>,
    /// At most this many USD a month (a decimal string or a number, up to 1e9): past
    /// it, calls get 429 until the month ends or this changes. Kept by billing as
    /// the budget `function.<name>` (docs/billing.md); needs metering on.
    #[schema(value_type = Option<String>, example = "5.00")]
    pub max_monthly_cost: Option<serde_json::Value>,
    pub code: Option<CodeIn>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeIn {
    /// The zip archive, base64.
    pub zip_base64: String,
}

/// A function as stored and shown: its configuration and when it was deployed.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FunctionRecord {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub config: FunctionConfig,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const RECORD_COLUMNS: &str = concat!(crate::engine::config_columns!(), ", created_at, updated_at");

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionRecord>,
}

/// Lambda's rule: 1 to 64 of letters, digits, `-` and `_`.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid("function name: 1-64 of A-Z a-z 0-9 - _"))
    }
}

/// Names the platform sets; a function's env may not override them.
fn reserved_env(key: &str) -> bool {
    key.starts_with("AWS_")
        || key.starts_with("LAMBDA_")
        || key.starts_with("MINICLOUD_")
        || matches!(
            key,
            "_HANDLER" | "_X_AMZN_TRACE_ID" | "PATH" | "TZ" | "HOME" | "TMPDIR" | "LD_PRELOAD"
        )
}

/// A validated deploy.
struct Deploy {
    runtime: String,
    handler: String,
    memory_mb: i32,
    timeout_s: i32,
    env: BTreeMap<String, String>,
    role: Option<String>,
    reserved_concurrency: Option<i32>,
    provisioned_concurrency: i32,
    keep_warm_s: i32,
    ephemeral_storage_mb: Option<i32>,
    network: Option<crate::sandbox::NetworkPolicy>,
    max_instances: Option<i32>,
    max_monthly_cost: Option<String>,
}

/// A cost cap as stored: a plain positive decimal of at most 1e9, at most 10 places.
fn monthly_cost(value: &serde_json::Value) -> Result<String, ApiError> {
    let text = match value {
        serde_json::Value::String(text) => text.trim().to_owned(),
        serde_json::Value::Number(number) => number.to_string(),
        _ => String::new(),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let plain = !whole.is_empty()
        && whole.len() <= 10
        && fraction.len() <= 10
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    let amount: f64 = text.parse().unwrap_or(0.0);
    if plain && amount > 0.0 && amount <= 1e9 {
        Ok(text)
    } else {
        Err(ApiError::invalid(
            "max_monthly_cost: USD as a plain decimal, more than 0 and at most 1000000000",
        ))
    }
}

fn validate(input: &FunctionIn) -> Result<Deploy, ApiError> {
    if !RUNTIMES.contains(&input.runtime.as_str()) {
        return Err(ApiError::invalid(format!(
            "runtime must be one of {}, not {:?}",
            RUNTIMES.join(", "),
            input.runtime
        )));
    }
    let handler = input.handler.clone().unwrap_or_default();
    if input.runtime != "provided" {
        let valid = handler.rsplit_once('.').is_some_and(|(file, function)| {
            !file.is_empty()
                && !function.is_empty()
                && !file
                    .split('/')
                    .any(|s| s.is_empty() || s == ".." || s == ".")
                && function
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !valid {
            return Err(ApiError::invalid(
                "handler must be file.function (e.g. app.handler) for python3 and nodejs",
            ));
        }
    }
    if handler.len() > 128 || handler.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "handler: at most 128 printable characters",
        ));
    }
    let memory_mb = input.memory_mb.unwrap_or(crate::engine::DEFAULT_MEMORY_MB);
    if !(128..=10_240).contains(&memory_mb) {
        return Err(ApiError::invalid("memory_mb must be 128 to 10240"));
    }
    let timeout_s = input.timeout_s.unwrap_or(3);
    if !(1..=900).contains(&timeout_s) {
        return Err(ApiError::invalid("timeout_s must be 1 to 900"));
    }
    let env = input.env.clone().unwrap_or_default();
    let mut env_size = 0;
    for (key, value) in &env {
        let valid = key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ApiError::invalid(format!(
                "env name {key:?}: letters, digits and _, starting with a letter"
            )));
        }
        if reserved_env(key) {
            return Err(ApiError::invalid(format!(
                "env name {key} is reserved by the platform"
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(format!("env {key} contains a NUL byte")));
        }
        env_size += key.len() + value.len();
    }
    if env_size > 4096 {
        return Err(ApiError::invalid("env: at most 4 KB in total (as Lambda)"));
    }
    if let Some(role) = &input.role {
        if role.is_empty() || role.len() > 64 {
            return Err(ApiError::invalid("role: 1 to 64 characters"));
        }
        if role == "service" {
            return Err(ApiError::invalid(
                "functions never run as the service role; create a role with the rights they need",
            ));
        }
    }
    if let Some(n) = input.reserved_concurrency
        && !(0..=1000).contains(&n)
    {
        return Err(ApiError::invalid("reserved_concurrency must be 0 to 1000"));
    }
    let provisioned_concurrency = input.provisioned_concurrency.unwrap_or(0);
    if !(0..=100).contains(&provisioned_concurrency)
        || input
            .reserved_concurrency
            .is_some_and(|r| provisioned_concurrency > r)
    {
        return Err(ApiError::invalid(
            "provisioned_concurrency must be 0 to 100 and at most reserved_concurrency",
        ));
    }
    if let Some(n) = input.max_instances
        && (!(1..=1000).contains(&n) || provisioned_concurrency > n)
    {
        return Err(ApiError::invalid(
            "max_instances must be 1 to 1000 and at least provisioned_concurrency",
        ));
    }
    let keep_warm_s = input.keep_warm_s.unwrap_or(60);
    if !(0..=3600).contains(&keep_warm_s) {
        return Err(ApiError::invalid("keep_warm_s must be 0 to 3600"));
    }
    if let Some(mb) = input.ephemeral_storage_mb
        && !crate::sandbox::EPHEMERAL_STORAGE_MB.contains(&mb)
    {
        return Err(ApiError::invalid(
            "ephemeral_storage_mb must be 64 to 10240 (MB)",
        ));
    }
    let max_monthly_cost = input
        .max_monthly_cost
        .as_ref()
        .map(monthly_cost)
        .transpose()?;
    Ok(Deploy {
        max_monthly_cost,
        ephemeral_storage_mb: input.ephemeral_storage_mb,
        network: input.network.clone(),
        runtime: input.runtime.clone(),
        handler,
        memory_mb,
        timeout_s,
        env,
        role: input.role.clone(),
        reserved_concurrency: input.reserved_concurrency,
        provisioned_concurrency,
        keep_warm_s,
        max_instances: input.max_instances,
    })
}

fn decode_zip(code: &CodeIn) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(code.zip_base64.trim())
        .map_err(|e| ApiError::invalid(format!("code.zip_base64 is not base64: {e}")))
}

/// Checks the bundle off the async threads (a large zip takes a while).
async fn check_bundle(zip: Vec<u8>, runtime: &str, handler: &str) -> Result<Vec<u8>, ApiError> {
    let (runtime, handler) = (runtime.to_owned(), handler.to_owned());
    tokio::task::spawn_blocking(move || bundle::check(&zip, &runtime, &handler).map(|()| zip))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

pub async fn exists(invoker: &Invoker, name: &str) -> Result<bool, ApiError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM functions WHERE name = $1)")
        .bind(name)
        .fetch_one(&invoker.0.pool)
        .await
        .map_err(ApiError::internal)
}

/// Handing a role to code needs the right to hand out that role: without it, anyone
/// allowed to deploy could run their code with any role already attached to a
/// function (checked on create, replace and code upload).
async fn check_pass_role(
    invoker: &Invoker,
    caller: &Caller,
    role: Option<&str>,
) -> Result<(), ApiError> {
    let Some(role) = role else {
        return Ok(());
    };
    invoker
        .0
        .authz
        .authorize_on(caller, Action::FunctionsPassRole, Resource::Role(role))
        .await
}

async fn authorize(
    invoker: &Invoker,
    caller: &Caller,
    action: Action,
    name: &str,
) -> Result<(), ApiError> {
    invoker
        .0
        .authz
        .authorize_on(caller, action, Resource::Function(name))
        .await
}

/// Stores the bundle and the config in one transaction, then retires the old
/// instances.
async fn store(
    invoker: &Invoker,
    name: &str,
    deploy: &Deploy,
    zip: Option<Vec<u8>>,
    create_only: bool,
    caller: &Caller,
) -> Result<(StatusCode, FunctionRecord), ApiError> {
    if let Some(ports) = deploy.network.as_ref().and_then(|n| n.ports.as_deref()) {
        invoker
            .0
            .engine
            .sandbox
            .check_ports(ports)
            .map_err(ApiError::invalid)?;
    }
    let mut tx = invoker.0.pool.begin().await.map_err(ApiError::internal)?;
    let hash = match &zip {
        Some(zip) => {
            let hash = bundle::hash(zip);
            sqlx::query(
                "INSERT INTO code_bundles (hash, size, zip) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&hash)
            .bind(zip.len() as i64)
            .bind(zip)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
            Some(hash)
        }
        None => None,
    };
    let existed: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT code_hash, max_monthly_cost FROM functions WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    if existed.is_some() && create_only {
        return Err(ApiError::conflict(format!(
            "function {name} already exists"
        )));
    }
    if existed.is_none() && hash.is_none() {
        return Err(ApiError::invalid(
            "a new function needs code: {\"code\":{\"zip_base64\":\"…\"}}",
        ));
    }
    // The cap first, while the function's row is locked: if billing cannot take it,
    // nothing of the deploy is saved.
    let cap_before = existed.as_ref().and_then(|(_, cap)| cap.clone());
    if cap_before != deploy.max_monthly_cost {
        invoker
            .0
            .engine
            .meters
            .set_function_cap(name, deploy.max_monthly_cost.as_deref())
            .await
            .map_err(|status| match status.code() {
                tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                    ApiError::invalid(status.message().to_owned())
                }
                _ => ApiError::unavailable("billing is unavailable: the cost cap could not be set")
                    .with_source(status),
            })?;
    }
    let row: FunctionRecord = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO functions (name, runtime, handler, memory_mb, timeout_s, env, role,
             reserved_concurrency, provisioned_concurrency, keep_warm_s, code_hash, owner,
             ephemeral_storage_mb, network, max_instances, max_monthly_cost)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (name) DO UPDATE SET runtime = EXCLUDED.runtime, handler = EXCLUDED.handler,
             memory_mb = EXCLUDED.memory_mb, timeout_s = EXCLUDED.timeout_s, env = EXCLUDED.env,
             role = EXCLUDED.role, reserved_concurrency = EXCLUDED.reserved_concurrency,
             provisioned_concurrency = EXCLUDED.provisioned_concurrency,
             keep_warm_s = EXCLUDED.keep_warm_s,
             ephemeral_storage_mb = EXCLUDED.ephemeral_storage_mb, network = EXCLUDED.network,
             max_instances = EXCLUDED.max_instances,
             max_monthly_cost = EXCLUDED.max_monthly_cost,
             code_hash = COALESCE(EXCLUDED.code_hash, functions.code_hash),
             revision = functions.revision + 1, updated_at = now()
         RETURNING {RECORD_COLUMNS}"
    )))
    .bind(name)
    .bind(&deploy.runtime)
    .bind(&deploy.handler)
    .bind(deploy.memory_mb)
    .bind(deploy.timeout_s)
    .bind(sqlx::types::Json(&deploy.env))
    .bind(&deploy.role)
    .bind(deploy.reserved_concurrency)
    .bind(deploy.provisioned_concurrency)
    .bind(deploy.keep_warm_s)
    .bind(&hash)
    .bind(caller.uid.as_deref())
    .bind(deploy.ephemeral_storage_mb)
    .bind(deploy.network.as_ref().map(sqlx::types::Json))
    .bind(deploy.max_instances)
    .bind(&deploy.max_monthly_cost)
    .fetch_one(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    invoker.0.engine.redeployed(name).await;
    crate::function_subscriptions::ensure_async_subscription(invoker, name).await?;
    let status = if existed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, row))
}

#[utoipa::path(post, path = "/functions/v1", tag = "functions", request_body = FunctionIn,
    responses((status = 201, body = FunctionRecord), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 409, body = minicloud_proto::error::ErrorBody), (status = 413, body = minicloud_proto::error::ErrorBody)))]
pub async fn create(
    State(invoker): State<Invoker>,
    caller: Caller,
    Json(input): Json<FunctionIn>,
) -> Result<(StatusCode, Json<FunctionRecord>), ApiError> {
    let name = input
        .name
        .clone()
        .ok_or_else(|| ApiError::invalid("name is required"))?;
    check_name(&name)?;
    authorize(&invoker, &caller, Action::FunctionsDeploy, &name).await?;
    let deploy = validate(&input)?;
    check_pass_role(&invoker, &caller, deploy.role.as_deref()).await?;
    let code = input
        .code
        .as_ref()
        .ok_or_else(|| ApiError::invalid("code is required: {\"zip_base64\":\"…\"}"))?;
    let zip = check_bundle(decode_zip(code)?, &deploy.runtime, &deploy.handler).await?;
    let (status, out) = store(&invoker, &name, &deploy, Some(zip), true, &caller).await?;
    Ok((status, Json(out)))
}

#[utoipa::path(put, path = "/functions/v1/{name}", tag = "functions", request_body = FunctionIn, params(("name" = String, Path)),
    responses((status = 200, body = FunctionRecord), (status = 201, body = FunctionRecord), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub async fn replace(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
    Json(input): Json<FunctionIn>,
) -> Result<(StatusCode, Json<FunctionRecord>), ApiError> {
    check_name(&name)?;
    if input.name.as_ref().is_some_and(|n| n != &name) {
        return Err(ApiError::invalid("name in the body differs from the path"));
    }
    authorize(&invoker, &caller, Action::FunctionsDeploy, &name).await?;
    let deploy = validate(&input)?;
    check_pass_role(&invoker, &caller, deploy.role.as_deref()).await?;
    let zip = match &input.code {
        Some(code) => {
            Some(check_bundle(decode_zip(code)?, &deploy.runtime, &deploy.handler).await?)
        }
        None => {
            // Config only: the stored code must still suit the (maybe new) runtime
            // and handler; a new function without code is refused by `store`.
            let stored: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT b.zip FROM functions f JOIN code_bundles b ON b.hash = f.code_hash
                 WHERE f.name = $1",
            )
            .bind(&name)
            .fetch_optional(&invoker.0.pool)
            .await
            .map_err(ApiError::internal)?;
            if let Some(stored) = stored {
                check_bundle(stored, &deploy.runtime, &deploy.handler).await?;
            }
            None
        }
    };
    let (status, out) = store(&invoker, &name, &deploy, zip, false, &caller).await?;
    Ok((status, Json(out)))
}

#[utoipa::path(put, path = "/functions/v1/{name}/code", tag = "functions", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/zip"),
    responses((status = 200, body = FunctionRecord), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody), (status = 415, body = minicloud_proto::error::ErrorBody)))]
pub async fn put_code(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<FunctionRecord>, ApiError> {
    check_name(&name)?;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/zip" | "application/x-zip-compressed" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the zip with Content-Type: application/zip",
        ));
    }
    authorize(&invoker, &caller, Action::FunctionsDeploy, &name).await?;
    let current = get_row(&invoker, &name).await?;
    let deploy = Deploy {
        runtime: current.config.runtime,
        handler: current.config.handler,
        memory_mb: current.config.memory_mb,
        timeout_s: current.config.timeout_s,
        env: current.config.env.0,
        role: current.config.role,
        reserved_concurrency: current.config.reserved_concurrency,
        provisioned_concurrency: current.config.provisioned_concurrency,
        keep_warm_s: current.config.keep_warm_s,
        ephemeral_storage_mb: current.config.ephemeral_storage_mb,
        network: current.config.network.map(|n| n.0),
        max_instances: current.config.max_instances,
        max_monthly_cost: current.config.max_monthly_cost,
    };
    // New code under the function's role is that role handed to new code.
    check_pass_role(&invoker, &caller, deploy.role.as_deref()).await?;
    let zip = check_bundle(body.to_vec(), &deploy.runtime, &deploy.handler).await?;
    let (_, out) = store(&invoker, &name, &deploy, Some(zip), false, &caller).await?;
    Ok(Json(out))
}

async fn get_row(invoker: &Invoker, name: &str) -> Result<FunctionRecord, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RECORD_COLUMNS} FROM functions WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found(format!("function {name} not found")))
}

#[utoipa::path(get, path = "/functions/v1/{name}", tag = "functions", params(("name" = String, Path)),
    responses((status = 200, body = FunctionRecord), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody)))]
pub async fn get(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionRecord>, ApiError> {
    check_name(&name)?;
    authorize(&invoker, &caller, Action::FunctionsInvoke, &name).await?;
    let mut function = get_row(&invoker, &name).await?;
    // Env values are often secrets: only those who may deploy the function see
    // them; others see the names.
    if authorize(&invoker, &caller, Action::FunctionsDeploy, &name)
        .await
        .is_err()
    {
        hide_env_values(&mut function);
    }
    Ok(Json(function))
}

fn hide_env_values(function: &mut FunctionRecord) {
    for value in function.config.env.0.values_mut() {
        *value = String::new();
    }
}

#[utoipa::path(get, path = "/functions/v1/sandbox", tag = "functions",
    responses((status = 200, description = "which protections function instances run with on this host", body = SandboxStatus), (status = 401, body = minicloud_proto::error::ErrorBody)))]
pub async fn sandbox(
    State(invoker): State<Invoker>,
    caller: Caller,
) -> Result<Json<SandboxStatus>, ApiError> {
    if caller.role == Role::Anon {
        return Err(ApiError::unauthenticated(
            "sign in to see the function sandbox",
        ));
    }
    Ok(Json(SandboxStatus {
        protections: invoker.0.engine.sandbox.protections().clone(),
        prestart: invoker.0.engine.prestart_status(),
    }))
}

/// `GET /functions/v1/sandbox`: what this host enforces, and the interpreters
/// pre-started for cold starts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SandboxStatus {
    #[serde(flatten)]
    pub protections: crate::sandbox::Protections,
    pub prestart: crate::prestart::PrestartStatus,
}

#[utoipa::path(get, path = "/functions/v1", tag = "functions", responses((status = 200, description = "the functions the caller may invoke", body = FunctionList), (status = 401, body = minicloud_proto::error::ErrorBody)))]
pub async fn list(
    State(invoker): State<Invoker>,
    caller: Caller,
) -> Result<Json<FunctionList>, ApiError> {
    Ok(Json(FunctionList {
        functions: visible_functions(&invoker, &caller).await?,
    }))
}

/// The functions `caller` may invoke (env values only where it may deploy): the one
/// listing behind REST and gRPC alike.
pub(crate) async fn visible_functions(
    invoker: &Invoker,
    caller: &Caller,
) -> Result<Vec<FunctionRecord>, ApiError> {
    let rows: Vec<FunctionRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RECORD_COLUMNS} FROM functions ORDER BY name LIMIT 1000"
    )))
    .fetch_all(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut functions = Vec::new();
    for mut function in rows {
        match authorize(
            invoker,
            caller,
            Action::FunctionsInvoke,
            &function.config.name,
        )
        .await
        {
            Ok(()) => {
                if authorize(
                    invoker,
                    caller,
                    Action::FunctionsDeploy,
                    &function.config.name,
                )
                .await
                .is_err()
                {
                    hide_env_values(&mut function);
                }
                functions.push(function)
            }
            Err(error) if error.code == ErrorCode::PermissionDenied => {}
            Err(error) => return Err(error),
        }
    }
    Ok(functions)
}

#[utoipa::path(delete, path = "/functions/v1/{name}", tag = "functions", params(("name" = String, Path)),
    responses((status = 204, description = "deleted with its triggers; running instances stopped"), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody)))]
pub async fn delete(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    authorize(&invoker, &caller, Action::FunctionsDelete, &name).await?;
    crate::function_subscriptions::remove_all(&invoker, &name).await?;
    let deleted = sqlx::query("DELETE FROM functions WHERE name = $1")
        .bind(&name)
        .execute(&invoker.0.pool)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("function {name} not found")));
    }
    invoker.0.engine.forget(&name);
    // Its cap goes with it; a failure leaves a budget on a name nothing answers to.
    if let Err(error) = invoker.0.engine.meters.set_function_cap(&name, None).await {
        tracing::warn!(function = %name, %error, "removing the function's cost cap failed");
    }
    Ok(StatusCode::NO_CONTENT)
}
