//! The docdb service (`/db/v1`): collections of JSON documents and key-value
//! namespaces over Postgres. This first cut serves collections; documents, queries
//! and KV land with issue 5.

mod collections;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use futures::FutureExt as _;
use minicloud_authz::Authz;
use minicloud_proto::docdb::v1::docdb_service_server::DocdbServiceServer;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, ServiceHost};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "docdb";

/// The REST API of this service, served at `/db/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "minicloud docdb",
        description = "Collections (documents, queries and KV land with issue 5)."
    ),
    paths(collections::create, collections::list),
    components(schemas(minicloud_proto::error::ErrorBody))
)]
pub struct ApiDoc;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct DocdbConfig {}

#[derive(Clone)]
pub struct Docdb(Arc<DocdbState>);

pub struct DocdbState {
    pub(crate) pool: PgPool,
    pub(crate) authz: Arc<Authz>,
}

impl std::ops::Deref for Docdb {
    type Target = DocdbState;
    fn deref(&self) -> &DocdbState {
        &self.0
    }
}

impl FromRef<Docdb> for Arc<Authz> {
    fn from_ref(docdb: &Docdb) -> Self {
        Arc::clone(&docdb.0.authz)
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

impl Docdb {
    pub async fn new(
        _config: DocdbConfig,
        pool: PgPool,
        authz: Arc<Authz>,
    ) -> Result<Docdb, sqlx::migrate::MigrateError> {
        migrate(&pool).await?;
        Ok(Docdb(Arc::new(DocdbState { pool, authz })))
    }

    pub fn into_router(self) -> Router {
        let pool = self.pool.clone();
        let readiness: Readiness = Arc::new(move || {
            let pool = pool.clone();
            async move {
                let db = sqlx::query("SELECT 1").execute(&pool).await.map(|_| ());
                vec![DependencyCheck::from_result("postgres", db)]
            }
            .boxed()
        });
        let rest = Router::new()
            .route(
                "/db/v1/collections",
                get(collections::list).post(collections::create),
            )
            .route(
                "/db/v1/openapi.json",
                get(|| async { axum::Json(<ApiDoc as utoipa::OpenApi>::openapi()) }),
            )
            .with_state(self.clone());
        ServiceHost::new(
            "docdb",
            rest,
            readiness,
            ServiceMetrics::new("docdb", |_| {}),
        )
        .body_limit(64 * 1024)
        .grpc(DocdbServiceServer::new(collections::DocdbGrpc(self)))
        .into_router()
    }
}

pub async fn run(
    docdb: Docdb,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    minicloud_telemetry::server::serve(listener, docdb.into_router(), shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod openapi_spec {
    /// docs/api/openapi/docdb.json is the spec the code serves; `UPDATE_OPENAPI=1`
    /// rewrites it after an API change.
    #[test]
    fn the_committed_spec_matches_the_code() {
        let generated = serde_json::to_string_pretty(&<super::ApiDoc as utoipa::OpenApi>::openapi())
            .unwrap() + "\n";
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/api/openapi/docdb.json"
        );
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is stale: run UPDATE_OPENAPI=1 cargo nextest run -p minicloud-docdb openapi"
        );
    }
}
