//! The one-port server every service runs: its REST routes and gRPC services on one
//! listener, `/healthz`, `/readyz`, `/metrics`, the standard gRPC health service,
//! JSON 404/405 bodies and the telemetry middleware.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use minicloud_proto::error::{ApiError, ErrorCode};
use minicloud_proto::health::v1::health_check_response::ServingStatus;
use minicloud_proto::health::v1::health_server::{Health, HealthServer};
use minicloud_proto::health::v1::{HealthCheckRequest, HealthCheckResponse};
use minicloud_proto::services::ServiceName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

use crate::http_server::{ServerTelemetry, middleware};
use crate::metrics::ServiceMetrics;

/// The result of checking one dependency (Postgres, Redis, the object store, …).
#[derive(Debug, Clone)]
pub struct DependencyCheck {
    pub name: String,
    pub result: Result<(), String>,
}

impl DependencyCheck {
    pub fn from_result<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> Self {
        DependencyCheck {
            name: name.to_owned(),
            result: result.map_err(|e| e.to_string()),
        }
    }
}

impl DependencyCheck {
    /// One round trip to Postgres.
    pub async fn postgres(pool: &sqlx::PgPool) -> DependencyCheck {
        let result = sqlx::query("SELECT 1").execute(pool).await.map(|_| ());
        DependencyCheck::from_result("postgres", result)
    }
}

/// Checks that `dir` exists (creating it) and takes a write: the local object store
/// and the function code cache need both.
pub async fn check_writable_dir(dir: std::path::PathBuf) -> DependencyCheck {
    let result = async {
        tokio::fs::create_dir_all(&dir).await?;
        let probe = dir.join(".readyz-probe");
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await
    }
    .await;
    DependencyCheck::from_result("directory", result)
}

/// Checks a service's dependencies for `/readyz` and the gRPC health service.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Vec<DependencyCheck>> + Send + Sync>;

/// A [`Readiness`] from a closure that checks the dependencies it captured.
pub fn readiness<F, Fut>(check: F) -> Readiness
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<DependencyCheck>> + Send + 'static,
{
    use futures::FutureExt as _;
    Arc::new(move || check().boxed())
}

/// How long one readiness check may take before the dependency counts as down.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

async fn check_all(readiness: &Readiness) -> Vec<DependencyCheck> {
    match tokio::time::timeout(READINESS_TIMEOUT, readiness()).await {
        Ok(checks) => checks,
        Err(_) => vec![DependencyCheck {
            name: "readiness".into(),
            result: Err("timed out".into()),
        }],
    }
}

/// Rewrites an error response into a client library's dialect (see
/// [`ServiceHost::error_dialect`]).
pub type ErrorDialect = Arc<dyn Fn(Response) -> BoxFuture<'static, Response> + Send + Sync>;

/// A service's REST routes, gRPC services and readiness, assembled into one router.
pub struct ServiceHost {
    service: ServiceName,
    router: Router,
    body_limit: Option<usize>,
    readiness: Readiness,
    metrics: Arc<ServiceMetrics>,
    dialects: Vec<(&'static str, ErrorDialect)>,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost").finish_non_exhaustive()
    }
}

impl ServiceHost {
    pub fn new(
        service: ServiceName,
        rest: Router,
        readiness: Readiness,
        metrics: Arc<ServiceMetrics>,
    ) -> Self {
        let health = HealthServer::new(HealthService {
            readiness: Arc::clone(&readiness),
        });
        let host = ServiceHost {
            service,
            router: rest,
            body_limit: None,
            readiness,
            metrics,
            dialects: Vec::new(),
        };
        host.grpc(health)
    }

    /// Passes the responses to requests under `prefix` through `rewrite` (which adds
    /// a client library's error fields, e.g. GoTrue's or PostgREST's) outside every
    /// other layer, so the host's own refusals — an oversized body, an unknown route,
    /// a wrong method — reach those clients in their dialect too.
    pub fn error_dialect<F, Fut>(mut self, prefix: &'static str, rewrite: F) -> Self
    where
        F: Fn(Response) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.dialects.push((
            prefix,
            Arc::new(move |response| Box::pin(rewrite(response))),
        ));
        self
    }

    /// Serves a tonic service on the same port, under `/{package.Service}/…`.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        use tower::ServiceExt as _;
        self.router = self.router.route_service(
            &format!("/{}/{{*rest}}", S::NAME),
            service.map_request(|request: http::Request<axum::body::Body>| {
                request.map(tonic::body::Body::new)
            }),
        );
        self
    }

    /// Serves the service's OpenAPI document at `{prefix}/openapi.json` (serialised
    /// once, here).
    pub fn openapi(mut self, spec: &impl serde::Serialize) -> Self {
        let prefix = self
            .service
            .public_prefixes()
            .first()
            .copied()
            .unwrap_or("");
        let body = bytes::Bytes::from(serde_json::to_vec(spec).unwrap_or_default());
        self.router = self.router.route(
            &format!("{prefix}/openapi.json"),
            get(move || {
                let body = body.clone();
                async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        );
        self
    }

    /// Refuses request bodies over `bytes` with 413 (REST extractors and declared
    /// `Content-Length` alike).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = Some(bytes);
        self
    }

    pub fn into_router(self) -> Router {
        let readiness = Arc::clone(&self.readiness);
        let metrics = Arc::clone(&self.metrics);
        let service = self.service.as_str();
        let telemetry = ServerTelemetry {
            service,
            metrics: Arc::clone(&self.metrics),
        };
        let mut router = self.router;
        if let Some(limit) = self.body_limit {
            router = router
                .layer(axum::extract::DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn_with_state(
                    limit,
                    reject_declared_oversize,
                ));
        }
        router
            .route(
                "/healthz",
                get(move || async move {
                    axum::Json(serde_json::json!({"status":"ok","service":service}))
                }),
            )
            .route(
                "/readyz",
                get(move || readyz(service, Arc::clone(&readiness))),
            )
            .route(
                "/metrics",
                get(move || async move { metrics_response(&metrics) }),
            )
            .fallback(minicloud_proto::error::route_not_found)
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    "method not allowed on this route",
                )
            })
            .layer(axum::middleware::from_fn_with_state(telemetry, middleware))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(self.dialects),
                in_dialect,
            ))
    }
}

async fn in_dialect(
    axum::extract::State(dialects): axum::extract::State<Arc<Vec<(&'static str, ErrorDialect)>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let dialect = dialects
        .iter()
        .find(|(prefix, _)| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(|(_, rewrite)| Arc::clone(rewrite));
    let response = next.run(request).await;
    match dialect {
        Some(rewrite) => rewrite(response).await,
        None => response,
    }
}

/// Adds `extra(code, message, status)`'s fields at the top level of a JSON error
/// body, beside its `error` object: the dialects the Supabase clients parse (GoTrue's
/// `msg`/`error_code`, Storage's `statusCode`/`message`) without changing our own
/// error contract. Only error bodies (4xx/5xx, JSON, at most 64 KiB) are read.
pub async fn add_error_fields(
    response: Response,
    extra: impl FnOnce(&str, &str, u16) -> serde_json::Map<String, serde_json::Value>,
) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "").into_response();
    };
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(&bytes) else {
        return Response::from_parts(parts, bytes.into());
    };
    let error = &object["error"];
    let code = error["code"].as_str().unwrap_or("internal").to_owned();
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    object.extend(extra(&code, &message, status.as_u16()));
    let body = serde_json::to_vec(&object).unwrap_or_default();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, body.into())
}

/// Most bodies are sent as many bytes as they declare, so refuse an oversized one
/// before reading it. Its bytes are read and dropped first (up to a bound): a server
/// that answers and closes with unread input makes the kernel reset the connection,
/// and the reset can destroy the 413 before a proxy or client reads it.
pub async fn reject_declared_oversize(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    const DRAIN_AT_MOST: u64 = 32 * 1024 * 1024;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    let error = ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body larger than {limit} bytes"),
    );
    if declared <= DRAIN_AT_MOST {
        use http_body_util::BodyExt as _;
        let mut body = request.into_body();
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    error.into_response()
}

fn metrics_response(metrics: &ServiceMetrics) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn readyz(service: &'static str, readiness: Readiness) -> Response {
    let checks = check_all(&readiness).await;
    let ready = checks.iter().all(|check| check.result.is_ok());
    let mut body = serde_json::Map::new();
    for check in &checks {
        let state = match &check.result {
            Ok(()) => "ok".to_owned(),
            Err(error) => {
                tracing::warn!(service, dependency = %check.name, %error, "dependency not ready");
                "unavailable".to_owned()
            }
        };
        body.insert(check.name.clone(), serde_json::Value::String(state));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "service": service,
        "checks": body,
    });
    (status, axum::Json(json)).into_response()
}

#[derive(Clone)]
struct HealthService {
    readiness: Readiness,
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let checks = check_all(&self.readiness).await;
        let status = if checks.iter().all(|check| check.result.is_ok()) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

/// What one listener allows its clients, from the environment (docs/operations.md):
/// a client that sends its headers slowly, a body that stops moving, and more open
/// connections than the process can afford are each cut off.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the connection (or the end of the previous request) to a request's last
    /// header line (HTTP/1; `MINICLOUD_HEADER_READ_TIMEOUT`, seconds, default 10).
    pub header_read_timeout: Duration,
    /// Between two pieces of a request body (`MINICLOUD_BODY_IDLE_TIMEOUT`, seconds,
    /// default 30): a stalled upload fails instead of holding its connection.
    pub body_idle_timeout: Duration,
    /// Open connections per listener (`MINICLOUD_MAX_CONNECTIONS`, default 4096); one
    /// more is answered 503 and closed.
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_env() -> ConnectionLimits {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(number("MINICLOUD_HEADER_READ_TIMEOUT", 10)),
            body_idle_timeout: Duration::from_secs(number("MINICLOUD_BODY_IDLE_TIMEOUT", 30)),
            max_connections: number("MINICLOUD_MAX_CONNECTIONS", 4096) as usize,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight
/// requests. Nagle is off on every accepted socket: small responses must not wait.
/// HTTP/1 and HTTP/2 (gRPC) on the same port, within [`ConnectionLimits`]: written
/// on hyper's connection builder because `axum::serve` offers neither a header-read
/// timeout nor a connection cap.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let limits = ConnectionLimits::from_env();
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_idle_timeout,
    ));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, limits.max_connections));
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move {
                    use tower::Service as _;
                    router.call(request.map(axum::body::Body::new)).await
                }
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors are the client's (a reset, a timeout); nothing to report.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The answer to a connection over the cap: a 503 with the standard error body,
/// then close. Written by hand because no request has been read from it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::json!({"error": {
        "code": ErrorCode::Unavailable.as_str(),
        "message": format!("too many open connections (at most {cap}); retry shortly"),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A task a service runs beside its server (outbox relay, delivery workers, sweeps,
/// key reloads, instance maintenance), named for the shutdown log.
#[derive(Debug)]
pub struct BackgroundTask {
    pub name: &'static str,
    pub handle: tokio::task::JoinHandle<()>,
}

impl BackgroundTask {
    pub fn new(name: &'static str, handle: tokio::task::JoinHandle<()>) -> Self {
        BackgroundTask { name, handle }
    }
}

/// The skeleton every minicloud service fills in: what the process running it (`up`,
/// `serve a,b`, a test) needs to know. Constructors stay the service's own — what a
/// service needs to start differs (a pool, Redis, the bus's URL) — and end in a value
/// of this trait.
pub trait Service: Clone + Send + Sync + 'static {
    const NAME: ServiceName;

    /// Its REST routes (state applied), gRPC services, readiness and metrics.
    fn host(self) -> ServiceHost;

    /// The tasks it runs beside its server (relays, workers, sweeps), watching
    /// `shutdown`; each gets [`BACKGROUND_DEADLINE`] to finish its round after the
    /// server has drained.
    fn background(&self, shutdown: &CancellationToken) -> Vec<BackgroundTask> {
        let _ = shutdown;
        Vec::new()
    }

    /// The whole router: its routes plus `/healthz`, `/readyz`, `/metrics`, gRPC
    /// health, the JSON 404/405 and the telemetry middleware.
    fn into_router(self) -> Router {
        self.host().into_router()
    }
}

/// A service made ready to serve, with its kind erased so that one process can
/// hold a list of them (`serve auth,storage`, `up`).
#[derive(Debug)]
pub struct Hosted {
    pub name: ServiceName,
    /// Cloneable: `up`'s gateway dispatches into the same router in-process.
    pub router: Router,
    background: Vec<BackgroundTask>,
}

impl Hosted {
    /// Builds the router and starts the background tasks, which stop on `shutdown`.
    pub fn new<S: Service>(service: S, shutdown: &CancellationToken) -> Hosted {
        let background = service.background(shutdown);
        Hosted {
            name: S::NAME,
            router: service.into_router(),
            background,
        }
    }

    /// Serves on `listener` until `shutdown`, then drains and lets the background
    /// tasks finish ([`serve_with_background`]).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        serve_with_background(listener, self.router, shutdown, self.background).await
    }
}

/// Serves `service` on `listener` until `shutdown`; the way every service runs.
pub async fn run<S: Service>(
    service: S,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    Hosted::new(service, &shutdown)
        .run(listener, shutdown)
        .await
}

/// How long background tasks get, once the server has drained, to finish the round
/// they are in (a relay publishing and marking its batch, a delivery being acked).
pub const BACKGROUND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`serve`] for a service with background tasks, shut down in order: the server
/// stops accepting and drains its requests; then the tasks, which watch the same
/// `shutdown`, finish their round within [`BACKGROUND_DEADLINE`]; whatever still
/// runs is aborted and logged. Every service stops this way.
pub async fn serve_with_background(
    listener: TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
    background: Vec<BackgroundTask>,
) -> std::io::Result<()> {
    let result = serve(listener, router, shutdown.cancelled_owned()).await;
    finish_background(background, BACKGROUND_DEADLINE).await;
    result
}

/// Waits for `tasks` until `deadline`, then aborts the rest; returns their names.
pub async fn finish_background(
    tasks: Vec<BackgroundTask>,
    deadline: std::time::Duration,
) -> Vec<&'static str> {
    let until = tokio::time::Instant::now() + deadline;
    let mut cut = Vec::new();
    for mut task in tasks {
        match tokio::time::timeout_at(until, &mut task.handle).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(task = task.name, %error, "a background task ended abnormally")
            }
            Err(_) => {
                task.handle.abort();
                tracing::warn!(
                    task = task.name,
                    deadline_ms = deadline.as_millis() as u64,
                    "a background task did not finish its round in time and was aborted"
                );
                cut.push(task.name);
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// A task that finishes its round after the shutdown is waited for, not cut; one
    /// that ignores the shutdown is aborted at the deadline and named.
    #[tokio::test]
    async fn background_tasks_finish_their_round_or_are_cut_at_the_deadline() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cancel, done) = (shutdown.clone(), Arc::clone(&finished));
        let careful = tokio::spawn(async move {
            cancel.cancelled().await;
            // The rest of its round.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let stubborn = tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        });
        shutdown.cancel();
        let cut = finish_background(
            vec![
                BackgroundTask::new("careful", careful),
                BackgroundTask::new("stubborn", stubborn),
            ],
            std::time::Duration::from_millis(500),
        )
        .await;
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(cut, ["stubborn"]);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_an_internal_error_with_the_request_id() {
        let rest = Router::new().route(
            "/boom",
            get(|| async {
                let nothing: Option<&'static str> = None;
                #[allow(clippy::unnecessary_literal_unwrap)]
                nothing.expect("the handler's own bug")
            }),
        );
        let readiness: Readiness = Arc::new(|| futures::FutureExt::boxed(async { Vec::new() }));
        let router = ServiceHost::new(
            ServiceName::Auth,
            rest,
            readiness,
            ServiceMetrics::new("test", |_| {}),
        )
        .into_router();
        let response = router
            .oneshot(
                http::Request::get("/boom")
                    .header("x-request-id", "req_panic_1")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "req_panic_1");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["message"], "internal error");
        assert_eq!(body["error"]["request_id"], "req_panic_1");
    }
}
