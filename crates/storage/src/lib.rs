//! The storage service (`/storage/v1`): buckets with policies over an object-store
//! backend. This first cut serves buckets; objects land with issue 4.

mod buckets;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use futures::FutureExt as _;
use minicloud_authz::Authz;
use minicloud_proto::storage::v1::storage_service_server::StorageServiceServer;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, ServiceHost, check_writable_dir};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "storage";

/// The REST API of this service, served at `/storage/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "minicloud storage",
        description = "Buckets (objects land with issue 4)."
    ),
    paths(buckets::create, buckets::get, buckets::list),
    components(schemas(minicloud_proto::error::ErrorBody))
)]
pub struct ApiDoc;

#[derive(Debug, Clone, clap::Args)]
pub struct StorageConfig {
    /// Root directory of the `fs` backend.
    #[arg(long = "storage-fs-root", env = "MINICLOUD_STORAGE_FS_ROOT")]
    pub fs_root: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Storage(Arc<StorageState>);

pub struct StorageState {
    pub(crate) pool: PgPool,
    pub(crate) config: StorageConfig,
    pub(crate) authz: Arc<Authz>,
}

impl std::ops::Deref for Storage {
    type Target = StorageState;
    fn deref(&self) -> &StorageState {
        &self.0
    }
}

impl FromRef<Storage> for Arc<Authz> {
    fn from_ref(storage: &Storage) -> Self {
        Arc::clone(&storage.0.authz)
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

impl Storage {
    pub async fn new(
        config: StorageConfig,
        pool: PgPool,
        authz: Arc<Authz>,
    ) -> Result<Storage, sqlx::migrate::MigrateError> {
        migrate(&pool).await?;
        Ok(Storage(Arc::new(StorageState {
            pool,
            config,
            authz,
        })))
    }

    pub fn into_router(self) -> Router {
        let pool = self.pool.clone();
        let root = self
            .config
            .fs_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(".minicloud/objects"));
        let readiness: Readiness = Arc::new(move || {
            let pool = pool.clone();
            let root = root.clone();
            async move {
                let db = sqlx::query("SELECT 1").execute(&pool).await.map(|_| ());
                vec![
                    DependencyCheck::from_result("postgres", db),
                    DependencyCheck {
                        name: "backend".into(),
                        ..check_writable_dir(root).await
                    },
                ]
            }
            .boxed()
        });
        let rest = Router::new()
            .route(
                "/storage/v1/bucket",
                get(buckets::list).post(buckets::create),
            )
            .route("/storage/v1/bucket/{name}", get(buckets::get))
            .route(
                "/storage/v1/openapi.json",
                get(|| async { axum::Json(<ApiDoc as utoipa::OpenApi>::openapi()) }),
            )
            .with_state(self.clone());
        ServiceHost::new(
            "storage",
            rest,
            readiness,
            ServiceMetrics::new("storage", |_| {}),
        )
        .body_limit(64 * 1024)
        .grpc(StorageServiceServer::new(buckets::StorageGrpc(self)))
        .into_router()
    }
}

pub async fn run(
    storage: Storage,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    minicloud_telemetry::server::serve(listener, storage.into_router(), shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod openapi_spec {
    /// docs/api/openapi/storage.json is the spec the code serves; `UPDATE_OPENAPI=1`
    /// rewrites it after an API change.
    #[test]
    fn the_committed_spec_matches_the_code() {
        let generated = serde_json::to_string_pretty(&<super::ApiDoc as utoipa::OpenApi>::openapi())
            .unwrap() + "\n";
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/api/openapi/storage.json"
        );
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is stale: run UPDATE_OPENAPI=1 cargo nextest run -p minicloud-storage openapi"
        );
    }
}
