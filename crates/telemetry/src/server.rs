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
use axum::serve::ListenerExt;
use futures::future::BoxFuture;
use minicloud_proto::error::{ApiError, ErrorCode};
use minicloud_proto::health::v1::health_check_response::ServingStatus;
use minicloud_proto::health::v1::health_server::{Health, HealthServer};
use minicloud_proto::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tokio::net::TcpListener;
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
        DependencyCheck { name: name.to_owned(), result: result.map_err(|e| e.to_string()) }
    }
}

/// Checks a service's dependencies for `/readyz` and the gRPC health service.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Vec<DependencyCheck>> + Send + Sync>;

/// How long one readiness check may take before the dependency counts as down.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

async fn check_all(readiness: &Readiness) -> Vec<DependencyCheck> {
    match tokio::time::timeout(READINESS_TIMEOUT, readiness()).await {
        Ok(checks) => checks,
        Err(_) => vec![DependencyCheck { name: "readiness".into(), result: Err("timed out".into()) }],
    }
}

/// A service's REST routes, gRPC services and readiness, assembled into one router.
pub struct ServiceHost {
    service: &'static str,
    router: Router,
    readiness: Readiness,
    metrics: Arc<ServiceMetrics>,
}

impl ServiceHost {
    pub fn new(
        service: &'static str,
        rest: Router,
        readiness: Readiness,
        metrics: Arc<ServiceMetrics>,
    ) -> Self {
        let health = HealthServer::new(HealthService { readiness: Arc::clone(&readiness) });
        let host = ServiceHost { service, router: rest, readiness, metrics };
        host.grpc(health)
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

    pub fn into_router(self) -> Router {
        let readiness = Arc::clone(&self.readiness);
        let metrics = Arc::clone(&self.metrics);
        let telemetry = ServerTelemetry { service: self.service, metrics: Arc::clone(&self.metrics) };
        let service = self.service;
        self.router
            .route("/healthz", get(move || async move { axum::Json(serde_json::json!({"status":"ok","service":service})) }))
            .route("/readyz", get(move || readyz(service, Arc::clone(&readiness))))
            .route("/metrics", get(move || async move { metrics_response(&metrics) }))
            .fallback(minicloud_proto::error::route_not_found)
            .method_not_allowed_fallback(|| async {
                ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
            })
            .layer(axum::middleware::from_fn_with_state(telemetry, middleware))
    }
}

fn metrics_response(metrics: &ServiceMetrics) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
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
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
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
        Ok(tonic::Response::new(HealthCheckResponse { status: status as i32 }))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight
/// requests. Nagle is off on every accepted socket: small responses must not wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
