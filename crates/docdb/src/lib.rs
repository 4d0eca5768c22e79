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
