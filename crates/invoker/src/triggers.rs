//! What starts a function besides a direct call: bus events (a subscription whose
//! target is the function), async invocations (events on the `functions` topic),
//! and HTTP routes on the gateway (`/fn/{name}/…`, API Gateway HTTP API v2.0 events).

use minicloud_authz::{Action, Resource};
use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use minicloud_authz::Caller;
use minicloud_proto::bus::v1::{DeleteSubscriptionRequest, EnsureSubscriptionRequest};
use minicloud_proto::error::{ApiError, ErrorCode, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Invoker;
use crate::engine::InvokeRequest;

/// `POST /functions/v1/{name}/triggers`: one of the two shapes (docs/design.md §5.6).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerIn {
    /// Bus topic to subscribe the function to (`storage`, `db`, `schedules`, or a user topic).
    pub topic: Option<String>,
    /// EventBridge-style pattern on the CloudEvent (docs/design.md §5.4).
    #[schema(value_type = Option<Object>)]
    pub pattern: Option<Value>,
    /// Retry policy as for subscriptions; default 3 attempts.
    #[schema(value_type = Option<Object>)]
    pub retry: Option<Value>,
    /// Default `functions.dead-letter`.
    pub dead_letter_topic: Option<String>,
    pub max_in_flight: Option<i32>,
    pub http: Option<HttpRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// Empty or absent: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Under `/fn/{name}`: exact (`/hello`) or a prefix (`/api/*`, `/*`).
    pub path: String,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TriggerOut {
    pub id: String,
    pub function: String,
    pub topic: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub pattern: Option<Value>,
    pub subscription_id: Option<String>,
    pub http_methods: Option<Vec<String>>,
    pub http_path: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerOut>,
}

const TRIGGER_COLUMNS: &str =
    "id, function, topic, pattern, subscription_id, http_methods, http_path, created_at";

fn check_route(route: &HttpRoute) -> Result<(), ApiError> {
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    for method in &route.methods {
        if !METHODS.contains(&method.as_str()) {
            return Err(ApiError::invalid(format!(
                "http.methods: one of {}, not {method:?}",
                METHODS.join(" ")
            )));
        }
    }
    let path = &route.path;
    let valid = path.starts_with('/')
        && path.len() <= 256
        && !path.contains("//")
        && !path.split('/').any(|s| s == "..")
        && !path[..path.len() - 1].contains('*')
        && path.chars().all(|c| c.is_ascii_graphic());
    if !valid {
        return Err(ApiError::invalid(
            "http.path: /exact/path or /prefix/* (printable ASCII, no .. or //)",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/functions/v1/{name}/triggers", tag = "triggers", params(("name" = String, Path)), request_body = TriggerIn,
    responses((status = 201, body = TriggerOut), (status = 400, body = minicloud_proto::error::ErrorBody), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody)))]
pub async fn create(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
    Json(input): Json<TriggerIn>,
) -> Result<(StatusCode, Json<TriggerOut>), ApiError> {
    crate::registry::check_name(&name)?;
    let authz = &invoker.0.authz;
    authz
        .authorize_on(&caller, Action::FunctionsDeploy, Resource::Function(&name))
        .await?;
    if !crate::registry::exists(&invoker, &name).await? {
        return Err(ApiError::not_found(format!("function {name} not found")));
    }
    let id = format!("trg_{}", uuid::Uuid::now_v7().simple());
    let row = match (&input.topic, &input.http) {
        (Some(topic), None) => {
            authz
                .authorize_on(&caller, Action::EventsSubscribe, Resource::Topic(topic))
                .await?;
            let subscription_id = format!("sub_fn_{}", uuid::Uuid::now_v7().simple());
            let spec = json!({
                "topic": topic,
                "pattern": input.pattern.clone().unwrap_or_else(|| json!({})),
                "target": {"function": name},
                "retry": input.retry.clone().unwrap_or_else(|| json!({"max_attempts": 3, "min_backoff_ms": 500, "max_backoff_ms": 60_000, "max_age_s": 6 * 3600})),
                "dead_letter_topic": input.dead_letter_topic.clone().unwrap_or_else(|| crate::function_subscriptions::DEAD_LETTER_TOPIC.into()),
                "max_in_flight": input.max_in_flight.unwrap_or(1),
            });
            // The bus validates pattern, retry and topics and says what is wrong.
            crate::function_subscriptions::bus(&invoker)?
                .ensure_subscription(EnsureSubscriptionRequest {
                    id: subscription_id.clone(),
                    subscription_json: spec.to_string(),
                    owner: caller.uid.clone().unwrap_or_default(),
                })
                .await
                .map_err(ApiError::from)?;
            let inserted = sqlx::query_as::<_, TriggerOut>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO triggers (id, function, topic, pattern, subscription_id)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {TRIGGER_COLUMNS}"
            )))
            .bind(&id)
            .bind(&name)
            .bind(topic)
            .bind(&spec["pattern"])
            .bind(&subscription_id)
            .fetch_one(&invoker.0.pool)
            .await;
            match inserted {
                Ok(row) => row,
                Err(error) => {
                    // Do not leave a subscription no trigger row points at.
                    let _ = crate::function_subscriptions::bus(&invoker)?
                        .delete_subscription(DeleteSubscriptionRequest {
                            id: subscription_id,
                        })
                        .await;
                    return Err(ApiError::internal(error));
                }
            }
        }
        (None, Some(route)) => {
            if input.pattern.is_some() || input.retry.is_some() || input.dead_letter_topic.is_some()
            {
                return Err(ApiError::invalid("an http trigger takes only http"));
            }
            check_route(route)?;
            sqlx::query_as::<_, TriggerOut>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO triggers (id, function, http_methods, http_path)
                 VALUES ($1, $2, $3, $4) RETURNING {TRIGGER_COLUMNS}"
            )))
            .bind(&id)
            .bind(&name)
            .bind(&route.methods)
            .bind(&route.path)
            .fetch_one(&invoker.0.pool)
            .await
            .map_err(ApiError::internal)?
        }
        _ => {
            return Err(ApiError::invalid(
                "a trigger is {\"topic\":…,\"pattern\":…} or {\"http\":{\"methods\":[…],\"path\":\"/…\"}}",
            ));
        }
    };
    Ok((StatusCode::CREATED, Json(row)))
}

#[utoipa::path(get, path = "/functions/v1/{name}/triggers", tag = "triggers", params(("name" = String, Path)),
    responses((status = 200, body = TriggerList), (status = 403, body = minicloud_proto::error::ErrorBody)))]
pub async fn list(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TriggerList>, ApiError> {
    crate::registry::check_name(&name)?;
    invoker
        .0
        .authz
        .authorize_on(&caller, Action::FunctionsInvoke, Resource::Function(&name))
        .await?;
    let triggers = sqlx::query_as::<_, TriggerOut>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE function = $1 ORDER BY id"
    )))
    .bind(&name)
    .fetch_all(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(TriggerList { triggers }))
}

#[utoipa::path(delete, path = "/functions/v1/{name}/triggers/{id}", tag = "triggers", params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "removed (and its bus subscription)"), (status = 404, body = minicloud_proto::error::ErrorBody)))]
pub async fn delete(
    State(invoker): State<Invoker>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    crate::registry::check_name(&name)?;
    invoker
        .0
        .authz
        .authorize_on(&caller, Action::FunctionsDeploy, Resource::Function(&name))
        .await?;
    let subscription: Option<Option<String>> = sqlx::query_scalar(
        "DELETE FROM triggers WHERE id = $1 AND function = $2 RETURNING subscription_id",
    )
    .bind(&id)
    .bind(&name)
    .fetch_optional(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    match subscription {
        None => Err(ApiError::not_found(format!("trigger {id} not found"))),
        Some(subscription) => {
            if let Some(subscription) = subscription {
                crate::function_subscriptions::bus(&invoker)?
                    .delete_subscription(DeleteSubscriptionRequest { id: subscription })
                    .await
                    .map_err(ApiError::from)?;
            }
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

fn route_matches(path: &str, route_path: &str) -> bool {
    match route_path.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix) || path == prefix.trim_end_matches('/'),
        None => path == route_path,
    }
}

/// `ANY /fn/{name}/{*path}`: an HTTP request as an API Gateway HTTP API v2.0 event;
/// the function's answer (`{"statusCode","headers","body","isBase64Encoded","cookies"}`,
/// or any other JSON as a 200 body) as the response.
pub async fn http_route(
    State(invoker): State<Invoker>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    match http_route_inner(&invoker, peer, &parts, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn http_route_inner(
    invoker: &Invoker,
    peer: std::net::SocketAddr,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let method = &parts.method;
    let rest = parts.uri.path().strip_prefix("/fn/").unwrap_or_default();
    let (name, path) = match rest.split_once('/') {
        Some((name, path)) => (name, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    crate::registry::check_name(name)?;
    let routes: Vec<(Option<Vec<String>>, Option<String>)> = sqlx::query_as(
        "SELECT http_methods, http_path FROM triggers WHERE function = $1 AND http_path IS NOT NULL",
    )
    .bind(name)
    .fetch_all(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    let matched = routes.iter().any(|(methods, route)| {
        let method_ok = methods
            .as_ref()
            .is_none_or(|m| m.is_empty() || m.iter().any(|m| m == method.as_str()));
        method_ok && route.as_deref().is_some_and(|r| route_matches(&path, r))
    });
    if !matched {
        return Err(ApiError::not_found(format!(
            "no HTTP route {method} {path} on function {name}"
        )));
    }
    let invoked =
        invoke_with_http_event(invoker, name, &path, parts, body, peer, "anon".into()).await?;
    match invoked.result {
        Ok(payload) => Ok(api_gateway_v2_response(&payload)),
        Err((body, _)) => {
            tracing::info!(function = name, error = %String::from_utf8_lossy(&body), "HTTP route function failed");
            Ok((
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"message": "Internal Server Error"})),
            )
                .into_response())
        }
    }
}

/// Supabase's `functions.invoke(name)`: `POST /functions/v1/{name}` with any body
/// (JSON, text or bytes) and the caller's own headers, authorised as every invoke is
/// (`functions:Invoke`). The function gets the request as an API Gateway HTTP event
/// (path `/`), as Edge Functions get a request, and its answer is the response: an
/// HTTP-style result (`statusCode`, `headers`, `body`) as it says, any other payload
/// as a 200 JSON body. A function that fails answers 500 with its error object, which
/// supabase-js raises as `FunctionsHttpError`.
#[utoipa::path(post, path = "/functions/v1/{name}", tag = "functions", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "any body (at most 4.5 MB), passed as an API Gateway HTTP event"),
    responses((status = 200, description = "the function's HTTP-style answer, or its payload as JSON"), (status = 403, body = minicloud_proto::error::ErrorBody), (status = 404, body = minicloud_proto::error::ErrorBody), (status = 413, body = minicloud_proto::error::ErrorBody), (status = 500, description = "the function failed: its error object")))]
pub async fn edge_invoke(
    State(invoker): State<Invoker>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    crate::registry::check_name(&name)?;
    invoker
        .0
        .authz
        .authorize_on(&caller, Action::FunctionsInvoke, Resource::Function(&name))
        .await?;
    let invoked = invoke_with_http_event(
        &invoker,
        &name,
        "/",
        &parts,
        body,
        peer,
        minicloud_metering::owner_of(&caller),
    )
    .await?;
    Ok(match invoked.result {
        Ok(payload) => api_gateway_v2_response(&payload),
        Err((error, _)) => {
            let mut response = (StatusCode::INTERNAL_SERVER_ERROR, error).into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            response
        }
    })
}

/// Reads a request body (limited while it streams: a public route must not buffer a
/// body of any size before refusing it — a 400 MB upload once grew the process by
/// 650 MB) and invokes `name` with it as an API Gateway HTTP event for `path`.
async fn invoke_with_http_event(
    invoker: &Invoker,
    name: &str,
    path: &str,
    parts: &http::request::Parts,
    body: Body,
    peer: std::net::SocketAddr,
    owner: String,
) -> Result<crate::engine::Invoked, ApiError> {
    let body = crate::invoke::read_payload(body, crate::invoke::MAX_SYNC_PAYLOAD * 3 / 4)
        .await
        .map_err(|error| match error.code {
            ErrorCode::PayloadTooLarge => ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body too large for a function",
            ),
            _ => error,
        })?;
    let event = api_gateway_v2_event(
        name,
        &parts.method,
        &parts.uri,
        path,
        &parts.headers,
        &body,
        peer,
    );
    let request = InvokeRequest {
        payload: serde_json::to_vec(&event).unwrap_or_default().into(),
        wait_for_slot: false,
        trace_id: None,
        client_context: None,
        log_tail: false,
        owner,
        span: tracing::Span::none(),
    };
    crate::invoke::sync_invoke(invoker, name, request).await
}

fn api_gateway_v2_event(
    name: &str,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    peer: std::net::SocketAddr,
) -> Value {
    let mut header_map: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (key, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        if key == "cookie" {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        header_map
            .entry(key.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    let query = uri.query().unwrap_or_default();
    let mut parameters: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in form_urlencoded_pairs(query) {
        parameters
            .entry(key)
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let text = std::str::from_utf8(body).ok();
    let now = Utc::now();
    let source_ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| peer.ip().to_string());
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": cookies,
        "headers": header_map,
        "queryStringParameters": parameters,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "minicloud",
            "domainName": headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("localhost"),
            "domainPrefix": "minicloud",
            "http": {
                "method": method.as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "pathParameters": {"function": name},
        "stageVariables": {},
        "body": match text { Some(t) => t.to_owned(), None => base64::engine::general_purpose::STANDARD.encode(body) },
        "isBase64Encoded": text.is_none(),
    })
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn api_gateway_v2_response(payload: &[u8]) -> Response {
    let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let Some(status) = value.get("statusCode").and_then(Value::as_u64) else {
        // Format 2.0: anything else is a 200 JSON body.
        let mut response = (StatusCode::OK, Bytes::copy_from_slice(payload)).into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return response;
    };
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match (value.get("body"), value["isBase64Encoded"].as_bool()) {
        (Some(Value::String(b)), Some(true)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default(),
        (Some(Value::String(b)), _) => b.clone().into_bytes(),
        (Some(Value::Null) | None, _) => Vec::new(),
        (Some(other), _) => other.to_string().into_bytes(),
    };
    let mut response = (status, body).into_response();
    if let Some(Value::Object(headers)) = value.get("headers") {
        for (key, value) in headers {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    if let Some(Value::Array(cookies)) = value.get("cookies") {
        for cookie in cookies.iter().filter_map(Value::as_str) {
            if let Ok(value) = HeaderValue::from_str(cookie) {
                response.headers_mut().append("set-cookie", value);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        assert!(route_matches("/hello", "/hello"));
        assert!(!route_matches("/hello/x", "/hello"));
        assert!(route_matches("/api/x/y", "/api/*"));
        assert!(route_matches("/api", "/api/*"));
        assert!(!route_matches("/apix", "/api/*"));
        assert!(route_matches("/", "/*"));
        assert!(route_matches("/anything", "/*"));
    }

    #[test]
    fn bad_routes_are_refused() {
        for path in ["hello", "/a/../b", "/a//b", "/a*/b", "/sp ace"] {
            let route = HttpRoute {
                methods: vec![],
                path: path.into(),
            };
            assert!(check_route(&route).is_err(), "{path}");
        }
        let route = HttpRoute {
            methods: vec!["FETCH".into()],
            path: "/x".into(),
        };
        assert!(check_route(&route).is_err());
    }

    #[test]
    fn responses_follow_format_2() {
        let plain = api_gateway_v2_response(br#"{"hello":"world"}"#);
        assert_eq!(plain.status(), StatusCode::OK);
        let shaped = api_gateway_v2_response(
            br#"{"statusCode":201,"headers":{"x-a":"1"},"body":"aGk=","isBase64Encoded":true,"cookies":["a=b"]}"#,
        );
        assert_eq!(shaped.status(), StatusCode::CREATED);
        assert_eq!(shaped.headers()["x-a"], "1");
        assert_eq!(shaped.headers()["set-cookie"], "a=b");
    }
}
