//! The invoker service (`/functions/v1`): deploys and runs functions over the Lambda
//! Runtime API. This first cut serves the function registry; deploy and invoke land
//! with issue 7.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use minicloud_authz::{Authz, Caller};
use minicloud_proto::error::{ApiError, ErrorBody, ErrorCode, Json};
use minicloud_proto::invoker::v1::invoker_service_server::{InvokerService, InvokerServiceServer};
use minicloud_proto::invoker::v1::{Function, ListFunctionsRequest, ListFunctionsResponse};
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, ServiceHost, check_writable_dir};
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "invoker";

/// The REST API of this service, served at `/functions/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "minicloud invoker",
        description = "The function registry (deploy and invoke land with issue 7)."
    ),
    paths(list),
    components(schemas(minicloud_proto::error::ErrorBody))
)]
pub struct ApiDoc;

#[derive(Debug, Clone, clap::Args)]
pub struct InvokerConfig {
    /// Where unpacked function code is cached, per code hash.
    #[arg(long = "invoker-code-dir", env = "MINICLOUD_INVOKER_CODE_DIR")]
    pub code_dir: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Invoker(Arc<InvokerState>);

pub struct InvokerState {
    pool: PgPool,
    config: InvokerConfig,
    authz: Arc<Authz>,
}

impl FromRef<Invoker> for Arc<Authz> {
    fn from_ref(invoker: &Invoker) -> Self {
        Arc::clone(&invoker.0.authz)
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionOut>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FunctionOut {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: i32,
    pub timeout_s: i32,
    pub role: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/functions/v1", tag = "functions", responses((status = 200, description = "the functions the caller may invoke", body = FunctionList), (status = 401, description = "no valid token", body = ErrorBody)))]
async fn list(
    State(invoker): State<Invoker>,
    caller: Caller,
) -> Result<Json<FunctionList>, ApiError> {
    let rows = sqlx::query_as::<_, FunctionOut>(
        "SELECT name, runtime, handler, memory_mb, timeout_s, role, created_at, updated_at
         FROM functions ORDER BY name LIMIT 1000",
    )
    .fetch_all(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut functions = Vec::new();
    for function in rows {
        let resource = format!("functions:{}", function.name);
        match invoker
            .0
            .authz
            .authorize(&caller, "functions:Invoke", &resource, &[])
            .await
        {
            Ok(()) => functions.push(function),
            Err(error) if error.code == ErrorCode::PermissionDenied => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Json(FunctionList { functions }))
}

impl Invoker {
    pub async fn new(
        config: InvokerConfig,
        pool: PgPool,
        authz: Arc<Authz>,
    ) -> Result<Invoker, sqlx::migrate::MigrateError> {
        migrate(&pool).await?;
        Ok(Invoker(Arc::new(InvokerState {
            pool,
            config,
            authz,
        })))
    }

    pub fn into_router(self) -> Router {
        let pool = self.0.pool.clone();
        let dir = self
            .0
            .config
            .code_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".minicloud/functions"));
        let readiness: Readiness = Arc::new(move || {
            let pool = pool.clone();
            let dir = dir.clone();
            async move {
                let db = sqlx::query("SELECT 1").execute(&pool).await.map(|_| ());
                vec![
                    DependencyCheck::from_result("postgres", db),
                    DependencyCheck {
                        name: "code_dir".into(),
                        ..check_writable_dir(dir).await
                    },
                ]
            }
            .boxed()
        });
        let rest = Router::new()
            .route("/functions/v1", get(list))
            .route(
                "/functions/v1/openapi.json",
                get(|| async { axum::Json(<ApiDoc as utoipa::OpenApi>::openapi()) }),
            )
            .with_state(self.clone());
        ServiceHost::new(
            "invoker",
            rest,
            readiness,
            ServiceMetrics::new("invoker", |_| {}),
        )
        .body_limit(64 * 1024)
        .grpc(InvokerServiceServer::new(InvokerGrpc(self)))
        .into_router()
    }
}

struct InvokerGrpc(Invoker);

#[tonic::async_trait]
impl InvokerService for InvokerGrpc {
    async fn list_functions(
        &self,
        _request: tonic::Request<ListFunctionsRequest>,
    ) -> Result<tonic::Response<ListFunctionsResponse>, tonic::Status> {
        let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT name, runtime, created_at FROM functions ORDER BY name LIMIT 1000",
        )
        .fetch_all(&self.0.0.pool)
        .await
        .map_err(ApiError::internal)?;
        let functions = rows
            .into_iter()
            .map(|(name, runtime, created_at)| Function {
                name,
                runtime,
                created_at: created_at.to_rfc3339(),
            })
            .collect();
        Ok(tonic::Response::new(ListFunctionsResponse { functions }))
    }
}

pub async fn run(
    invoker: Invoker,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    minicloud_telemetry::server::serve(listener, invoker.into_router(), shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        let spec = <super::ApiDoc as utoipa::OpenApi>::openapi();
        let generated = serde_json::to_string_pretty(&spec).unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/api/openapi/invoker.json"
        );
        minicloud_proto::openapi::check_committed_spec(&generated, path);
    }
}
