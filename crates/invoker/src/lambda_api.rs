//! The AWS Lambda control plane's calls that map directly onto ours (issue 19):
//! `CreateFunction` (a zip in `Code.ZipFile` or in storage by `S3Bucket`/`S3Key`), `GetFunction`,
//! `GetFunctionConfiguration`, `ListFunctions`, `DeleteFunction`,
//! `UpdateFunctionCode`, `UpdateFunctionConfiguration` and
//! `Put/DeleteFunctionConcurrency`, in Lambda's
//! paths, shapes and exceptions, for boto3, the `aws` CLI and the AWS SDKs. Each is
//! a translation in front of the `/functions/v1` handler that does the work, so the
//! same validation, authorisation (`functions:Deploy`, `functions:PassRole`, …) and
//! events apply.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use minicloud_proto::error::{ApiError, ErrorCode, Json};
use serde::{Deserialize, Serialize};

use crate::Invoker;
use crate::invoke::{lambda_error, lambda_request};
use crate::registry::{CodeIn, FunctionIn, FunctionRecord};

/// Requests without a zip are small.
const MAX_CONTROL_BODY: usize = 256 * 1024;

/// Lambda's name for one of our errors on the control plane.
fn exception(error: &ApiError) -> Option<&'static str> {
    Some(match error.code {
        ErrorCode::NotFound => "ResourceNotFoundException",
        ErrorCode::Conflict => "ResourceConflictException",
        ErrorCode::InvalidArgument | ErrorCode::UnsupportedMediaType => {
            "InvalidParameterValueException"
        }
        ErrorCode::PayloadTooLarge => "RequestTooLargeException",
        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => "AccessDeniedException",
        ErrorCode::TooManyRequests | ErrorCode::BudgetExceeded => "TooManyRequestsException",
        _ => return None,
    })
}

fn refuse(error: ApiError) -> Response {
    let kind = exception(&error);
    lambda_error(error, kind)
}

/// Lambda's runtime names, as ours.
fn runtime_of(lambda: &str) -> Result<&'static str, ApiError> {
    match lambda {
        "provided" | "provided.al2" | "provided.al2023" => Ok("provided"),
        r if r.starts_with("python3.") => Ok("python3"),
        r if r.starts_with("nodejs") && r.ends_with(".x") => Ok("nodejs"),
        other => Err(ApiError::invalid(format!(
            "Value {other} at 'runtime' failed to satisfy constraint: minicloud runs provided.al2023, provided.al2, python3.x and nodejsNN.x"
        ))),
    }
}

/// The minicloud role an IAM role ARN (`arn:aws:iam::…:role/NAME`) or a bare name
/// stands for.
fn role_of(arn: &str) -> String {
    arn.rsplit_once(":role/")
        .map(|(_, name)| name.rsplit('/').next().unwrap_or(name))
        .unwrap_or(arn)
        .to_owned()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateFunctionIn {
    pub function_name: String,
    pub runtime: String,
    /// An IAM role ARN; its last path segment names the minicloud role.
    pub role: String,
    pub handler: Option<String>,
    pub code: LambdaCode,
    pub timeout: Option<i32>,
    pub memory_size: Option<i32>,
    pub environment: Option<LambdaEnvironment>,
    /// Accepted and unused.
    #[serde(default, rename = "Description")]
    pub _description: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LambdaCode {
    /// The zip, base64 (what the SDKs send for `ZipFile`).
    pub zip_file: Option<String>,
    /// Or a zip in minicloud storage, read as the caller (so they must be allowed to).
    #[serde(default, rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(default, rename = "S3Key")]
    pub s3_key: Option<String>,
}

/// The zip of a deploy, base64: given inline (`ZipFile`) or read from storage
/// (`S3Bucket` + `S3Key`) with the caller's own rights — a short role token, so the
/// bucket's policy decides as it would for the caller's own download.
async fn zip_of(
    invoker: &Invoker,
    caller: &minicloud_authz::Caller,
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    s3_key: Option<String>,
) -> Result<String, ApiError> {
    use base64::Engine as _;
    use minicloud_proto::storage::v1::GetObjectRequest;
    match (zip_file, s3_bucket, s3_key) {
        (Some(zip), None, None) => Ok(zip),
        (None, Some(bucket), Some(key)) => {
            let Some(storage) = invoker.0.storage.clone() else {
                return Err(ApiError::invalid(
                    "this invoker has no storage to read S3Bucket from: send ZipFile",
                ));
            };
            let mut request = tonic::Request::new(GetObjectRequest {
                bucket,
                path: key,
                ..Default::default()
            });
            if !caller.is_service() {
                let token = invoker
                    .0
                    .authz
                    .issue_role_token(
                        caller.role.name(),
                        // A key's role has no user: a subject that is nobody's id,
                        // so owner conditions never match on its behalf.
                        caller.uid.as_deref().unwrap_or("aws-access-key"),
                        std::time::Duration::from_secs(60),
                    )
                    .await?;
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ApiError::internal("a role token is not a header value"))?;
                request.metadata_mut().insert("authorization", value);
            }
            // Lambda's own words for a missing object: a bad parameter.
            let missing = |status: tonic::Status| match status.code() {
                tonic::Code::NotFound => ApiError::invalid(format!(
                    "Error occurred while GetObject. S3 Error Code: NoSuchKey. S3 Error Message: {}",
                    status.message()
                )),
                _ => ApiError::from(status),
            };
            let mut stream = storage
                .clone()
                .get_object(request)
                .await
                .map_err(missing)?
                .into_inner();
            let mut zip = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(missing)? {
                if zip.len() + chunk.data.len() > crate::bundle::MAX_ZIPPED {
                    return Err(ApiError::invalid(format!(
                        "the code in S3 is larger than {} MiB",
                        crate::bundle::MAX_ZIPPED / 1024 / 1024
                    )));
                }
                zip.extend_from_slice(&chunk.data);
            }
            Ok(base64::engine::general_purpose::STANDARD.encode(zip))
        }
        (None, None, None) => Err(ApiError::invalid(
            "Code needs ZipFile or S3Bucket and S3Key",
        )),
        _ => Err(ApiError::invalid(
            "Code takes either ZipFile or S3Bucket with S3Key",
        )),
    }
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LambdaEnvironment {
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// Lambda's `FunctionConfiguration`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct FunctionConfiguration {
    pub function_name: String,
    pub function_arn: String,
    pub runtime: String,
    pub role: String,
    pub handler: String,
    pub timeout: i32,
    pub memory_size: i32,
    pub code_sha256: String,
    pub version: &'static str,
    pub last_modified: String,
    pub environment: LambdaEnvironment,
    pub state: &'static str,
    pub package_type: &'static str,
    pub architectures: [&'static str; 1],
}

fn configuration(invoker: &Invoker, record: FunctionRecord) -> FunctionConfiguration {
    let config = record.config;
    let runtime = match config.runtime.as_str() {
        "python3" => "python3.12",
        "nodejs" => "nodejs20.x",
        _ => "provided.al2023",
    };
    // Our code hash is a hex SHA-256; Lambda's field is base64.
    let code_sha256 = config
        .code_hash
        .as_deref()
        .and_then(|hex_hash| hex::decode(hex_hash).ok())
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        .unwrap_or_default();
    FunctionConfiguration {
        function_arn: invoker.0.engine.arn(&config.name),
        role: format!(
            "arn:aws:iam::000000000000:role/{}",
            config.role.as_deref().unwrap_or("service")
        ),
        function_name: config.name,
        runtime: runtime.to_owned(),
        handler: config.handler,
        timeout: config.timeout_s,
        memory_size: config.memory_mb,
        code_sha256,
        version: "$LATEST",
        last_modified: record
            .updated_at
            .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
            .to_string(),
        environment: LambdaEnvironment {
            variables: config.env.0,
        },
        state: "Active",
        package_type: "Zip",
        architectures: ["x86_64"],
    }
}

/// The function name of a path parameter that may be an ARN or `name:qualifier`.
fn name_of(raw: &str) -> String {
    raw.rsplit(":function:")
        .next()
        .unwrap_or(raw)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[utoipa::path(post, path = "/2015-03-31/functions", tag = "lambda",
    request_body = CreateFunctionIn,
    responses((status = 201, description = "created", body = FunctionConfiguration), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn create_function(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = crate::bundle::MAX_ZIPPED * 4 / 3 + 64 * 1024;
    let (caller, payload) =
        match lambda_request(&invoker, &method, &uri, &headers, body, limit).await {
            Ok(request) => request,
            Err(refusal) => return *refusal,
        };
    let input: CreateFunctionIn = match serde_json::from_slice(&payload) {
        Ok(input) => input,
        Err(error) => return refuse(ApiError::invalid(format!("CreateFunction: {error}"))),
    };
    let zip = match zip_of(
        &invoker,
        &caller,
        input.code.zip_file,
        input.code.s3_bucket,
        input.code.s3_key,
    )
    .await
    {
        Ok(zip) => zip,
        Err(error) => return refuse(error),
    };
    let runtime = match runtime_of(&input.runtime) {
        Ok(runtime) => runtime,
        Err(error) => return refuse(error),
    };
    let function = FunctionIn {
        name: Some(input.function_name),
        runtime: runtime.to_owned(),
        handler: input.handler,
        memory_mb: input.memory_size,
        timeout_s: input.timeout,
        env: input.environment.map(|e| e.variables),
        role: Some(role_of(&input.role)),
        reserved_concurrency: None,
        provisioned_concurrency: None,
        keep_warm_s: None,
        max_instances: None,
        max_monthly_cost: None,
        ephemeral_storage_mb: None,
        network: None,
        code: Some(CodeIn { zip_base64: zip }),
    };
    match crate::registry::create(State(invoker.clone()), caller, Json(function)).await {
        Ok((_, Json(record))) => (
            StatusCode::CREATED,
            axum::Json(configuration(&invoker, record)),
        )
            .into_response(),
        Err(error) => refuse(error),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetFunctionOut {
    pub configuration: FunctionConfiguration,
    pub code: CodeLocation,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CodeLocation {
    pub repository_type: &'static str,
    /// Where the zip can be fetched (with a token that may deploy the function).
    pub location: String,
}

/// What a control-plane read needs: the caller, from an empty (but signed) body.
async fn read_caller(
    invoker: &Invoker,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<minicloud_authz::Caller, Box<Response>> {
    lambda_request(invoker, method, uri, headers, body, MAX_CONTROL_BODY)
        .await
        .map(|(caller, _)| caller)
}

#[utoipa::path(get, path = "/2015-03-31/functions/{name}", tag = "lambda", params(("name" = String, Path)),
    responses((status = 200, body = GetFunctionOut), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn get_function(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let caller = match read_caller(&invoker, &method, &uri, &headers, body).await {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    let name = name_of(&name);
    match crate::registry::get(State(invoker.clone()), caller, Path(name.clone())).await {
        Ok(Json(record)) => axum::Json(GetFunctionOut {
            configuration: configuration(&invoker, record),
            code: CodeLocation {
                repository_type: "S3",
                location: format!("/functions/v1/{name}/code"),
            },
        })
        .into_response(),
        Err(error) => refuse(error),
    }
}

#[utoipa::path(get, path = "/2015-03-31/functions/{name}/configuration", tag = "lambda", params(("name" = String, Path)),
    responses((status = 200, body = FunctionConfiguration), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn get_configuration(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let caller = match read_caller(&invoker, &method, &uri, &headers, body).await {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    match crate::registry::get(State(invoker.clone()), caller, Path(name_of(&name))).await {
        Ok(Json(record)) => axum::Json(configuration(&invoker, record)).into_response(),
        Err(error) => refuse(error),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Where the previous page ended (`NextMarker`).
    #[serde(rename = "Marker")]
    pub marker: Option<String>,
    /// 1 to 50 (default 50).
    #[serde(rename = "MaxItems")]
    pub max_items: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListFunctionsOut {
    pub functions: Vec<FunctionConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `GET /2015-03-31/functions/` as botocore sends it; the gateway hands it on
/// without its trailing slash.
#[utoipa::path(get, path = "/2015-03-31/functions", tag = "lambda", params(ListQuery),
    responses((status = 200, description = "the functions the caller may invoke, by name", body = ListFunctionsOut), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn list_functions(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match read_caller(&invoker, &method, &uri, &headers, body).await {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    // Read here, so a malformed query gets the Lambda API's error too.
    let query: ListQuery = match axum::extract::Query::try_from_uri(&uri) {
        Ok(axum::extract::Query(query)) => query,
        Err(error) => return refuse(ApiError::invalid(error.body_text())),
    };
    let page = query.max_items.unwrap_or(50);
    if !(1..=50).contains(&page) {
        return refuse(ApiError::invalid("MaxItems must be 1 to 50"));
    }
    let functions = match crate::registry::visible_functions(&invoker, &caller).await {
        Ok(functions) => functions,
        Err(error) => return refuse(error),
    };
    // Names order the listing; the marker is the last name of the previous page.
    let mut rest: Vec<FunctionRecord> = functions
        .into_iter()
        .filter(|f| {
            query
                .marker
                .as_deref()
                .is_none_or(|m| f.config.name.as_str() > m)
        })
        .collect();
    let next_marker = (rest.len() > page).then(|| rest[page - 1].config.name.clone());
    rest.truncate(page);
    axum::Json(ListFunctionsOut {
        functions: rest
            .into_iter()
            .map(|f| configuration(&invoker, f))
            .collect(),
        next_marker,
    })
    .into_response()
}

#[utoipa::path(delete, path = "/2015-03-31/functions/{name}", tag = "lambda", params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn delete_function(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let caller = match read_caller(&invoker, &method, &uri, &headers, body).await {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    match crate::registry::delete(State(invoker), caller, Path(name_of(&name))).await {
        Ok(status) => status.into_response(),
        Err(error) => refuse(error),
    }
}

/// Our deploy of the function as it is now, for an update to change one part of.
fn as_deployed(record: &FunctionRecord) -> FunctionIn {
    let config = &record.config;
    FunctionIn {
        name: Some(config.name.clone()),
        runtime: config.runtime.clone(),
        handler: Some(config.handler.clone()),
        memory_mb: Some(config.memory_mb),
        timeout_s: Some(config.timeout_s),
        env: Some(config.env.0.clone()),
        role: config.role.clone(),
        reserved_concurrency: config.reserved_concurrency,
        provisioned_concurrency: Some(config.provisioned_concurrency),
        keep_warm_s: Some(config.keep_warm_s),
        ephemeral_storage_mb: config.ephemeral_storage_mb,
        network: config.network.as_ref().map(|n| n.0.clone()),
        max_instances: config.max_instances,
        max_monthly_cost: config
            .max_monthly_cost
            .clone()
            .map(serde_json::Value::String),
        code: None,
    }
}

/// Reads the function, changes what `change` says and redeploys it through
/// `PUT /functions/v1/{name}` (which checks `functions:Deploy` before anything, so
/// a caller without it never sees the hidden env values read here).
async fn update(
    invoker: Invoker,
    caller: minicloud_authz::Caller,
    name: String,
    change: impl FnOnce(&mut FunctionIn) -> Result<(), ApiError>,
) -> Result<FunctionRecord, ApiError> {
    let Json(current) =
        crate::registry::get(State(invoker.clone()), caller.clone(), Path(name.clone())).await?;
    let mut deploy = as_deployed(&current);
    change(&mut deploy)?;
    let (_, Json(record)) =
        crate::registry::replace(State(invoker), caller, Path(name), Json(deploy)).await?;
    Ok(record)
}

/// A control-plane write: the caller and the JSON body (a zip at most).
async fn write_request<T: serde::de::DeserializeOwned>(
    invoker: &Invoker,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(minicloud_authz::Caller, T), Box<Response>> {
    let limit = crate::bundle::MAX_ZIPPED * 4 / 3 + 64 * 1024;
    let (caller, payload) = lambda_request(invoker, method, uri, headers, body, limit).await?;
    let input = serde_json::from_slice(&payload).map_err(|error| {
        Box::new(refuse(ApiError::invalid(format!(
            "the request body: {error}"
        ))))
    })?;
    Ok((caller, input))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateCodeIn {
    /// The zip, base64.
    pub zip_file: Option<String>,
    #[serde(default, rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(default, rename = "S3Key")]
    pub s3_key: Option<String>,
    /// Accepted; every deploy here is `$LATEST`.
    #[serde(default, rename = "Publish")]
    pub _publish: Option<bool>,
}

#[utoipa::path(put, path = "/2015-03-31/functions/{name}/code", tag = "lambda", params(("name" = String, Path)),
    request_body = UpdateCodeIn,
    responses((status = 200, body = FunctionConfiguration), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn update_code(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let (caller, input) =
        match write_request::<UpdateCodeIn>(&invoker, &method, &uri, &headers, body).await {
            Ok(request) => request,
            Err(refusal) => return *refusal,
        };
    let zip = match zip_of(
        &invoker,
        &caller,
        input.zip_file,
        input.s3_bucket,
        input.s3_key,
    )
    .await
    {
        Ok(zip) => zip,
        Err(error) => return refuse(error),
    };
    let result = update(invoker.clone(), caller, name_of(&name), |deploy| {
        deploy.code = Some(CodeIn { zip_base64: zip });
        Ok(())
    })
    .await;
    match result {
        Ok(record) => axum::Json(configuration(&invoker, record)).into_response(),
        Err(error) => refuse(error),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateConfigurationIn {
    pub role: Option<String>,
    pub handler: Option<String>,
    pub runtime: Option<String>,
    pub timeout: Option<i32>,
    pub memory_size: Option<i32>,
    pub environment: Option<LambdaEnvironment>,
    #[serde(default, rename = "Description")]
    pub _description: Option<String>,
}

#[utoipa::path(put, path = "/2015-03-31/functions/{name}/configuration", tag = "lambda", params(("name" = String, Path)),
    request_body = UpdateConfigurationIn,
    responses((status = 200, body = FunctionConfiguration), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn update_configuration(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let (caller, input) =
        match write_request::<UpdateConfigurationIn>(&invoker, &method, &uri, &headers, body).await
        {
            Ok(request) => request,
            Err(refusal) => return *refusal,
        };
    let result = update(invoker.clone(), caller, name_of(&name), |deploy| {
        if let Some(runtime) = &input.runtime {
            deploy.runtime = runtime_of(runtime)?.to_owned();
        }
        if let Some(role) = &input.role {
            deploy.role = Some(role_of(role));
        }
        if let Some(handler) = input.handler {
            deploy.handler = Some(handler);
        }
        deploy.timeout_s = input.timeout.or(deploy.timeout_s);
        deploy.memory_mb = input.memory_size.or(deploy.memory_mb);
        if let Some(environment) = input.environment {
            deploy.env = Some(environment.variables);
        }
        Ok(())
    })
    .await;
    match result {
        Ok(record) => axum::Json(configuration(&invoker, record)).into_response(),
        Err(error) => refuse(error),
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Concurrency {
    pub reserved_concurrent_executions: i32,
}

#[utoipa::path(put, path = "/2017-10-31/functions/{name}/concurrency", tag = "lambda", params(("name" = String, Path)),
    request_body = Concurrency,
    responses((status = 200, body = Concurrency), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn put_concurrency(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let (caller, input) =
        match write_request::<Concurrency>(&invoker, &method, &uri, &headers, body).await {
            Ok(request) => request,
            Err(refusal) => return *refusal,
        };
    let wanted = input.reserved_concurrent_executions;
    match update(invoker, caller, name_of(&name), |deploy| {
        deploy.reserved_concurrency = Some(wanted);
        Ok(())
    })
    .await
    {
        Ok(record) => axum::Json(Concurrency {
            reserved_concurrent_executions: record.config.reserved_concurrency.unwrap_or(wanted),
        })
        .into_response(),
        Err(error) => refuse(error),
    }
}

#[utoipa::path(delete, path = "/2017-10-31/functions/{name}/concurrency", tag = "lambda", params(("name" = String, Path)),
    responses((status = 204, description = "the function's reservation is lifted"), (status = "default", description = "an error in the Lambda API's shape (`x-amzn-ErrorType` names it)", body = crate::invoke::LambdaErrorBody)))]
pub(crate) async fn delete_concurrency(
    State(invoker): State<Invoker>,
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let caller = match read_caller(&invoker, &method, &uri, &headers, body).await {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    match update(invoker, caller, name_of(&name), |deploy| {
        deploy.reserved_concurrency = None;
        Ok(())
    })
    .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => refuse(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_names_map_onto_ours() {
        assert_eq!(runtime_of("provided.al2023").unwrap(), "provided");
        assert_eq!(runtime_of("python3.12").unwrap(), "python3");
        assert_eq!(runtime_of("nodejs20.x").unwrap(), "nodejs");
        assert!(runtime_of("java21").is_err());
        assert!(runtime_of("nodejs").is_err());
        assert_eq!(role_of("arn:aws:iam::123456789012:role/thumbs"), "thumbs");
        assert_eq!(role_of("arn:aws:iam::1:role/path/to/fn-role"), "fn-role");
        assert_eq!(role_of("plain"), "plain");
        assert_eq!(
            name_of("arn:aws:lambda:us-east-1:1:function:echo:$LATEST"),
            "echo"
        );
        assert_eq!(name_of("echo"), "echo");
    }
}
