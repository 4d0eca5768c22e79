//! The docdb service (`/db/v1`): collections of JSON documents with declared
//! indexes, queries, batches and key-value namespaces over Postgres, with change
//! events through the transactional outbox.

mod collections;
mod documents;
mod grpc;
mod kv;
pub mod query;
mod rest;

use minicloud_telemetry::server::BackgroundTask;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use futures::FutureExt as _;
use minicloud_authz::Authz;
use minicloud_proto::docdb::v1::docdb_service_server::DocdbServiceServer;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, ServiceHost};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "docdb";
/// A 1 MiB document with room for JSON framing; a batch may carry several.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The REST API of this service, served at `/db/v1/openapi.json`.
use minicloud_proto::openapi::ErrorResponses;

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud docdb",
        description = "Collections, documents, queries, batches and key-value namespaces."
    ),
    paths(
        collections::create,
        collections::list,
        collections::get,
        collections::delete,
        rest::create,
        rest::put,
        rest::patch,
        rest::get,
        rest::delete,
        rest::query,
        rest::batch,
        rest::kv_list,
        rest::kv_get,
        rest::kv_put,
        rest::kv_delete,
        rest::kv_incr
    ),
    components(schemas(minicloud_proto::error::ErrorBody))
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct DocdbConfig {}

#[derive(Debug, Clone)]
pub struct Docdb(Arc<DocdbState>);

#[derive(Debug)]
pub struct DocdbState {
    pub(crate) pool: PgPool,
    pub(crate) authz: Arc<Authz>,
    pub(crate) relay: minicloud_outbox::Relay,
    /// Collection policies, every document call needs one.
    pub(crate) policies: minicloud_authz::TtlCache<Arc<minicloud_authz::Policy>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DocdbStartError {
    #[error("migrating the docdb schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("outbox: {0}")]
    Outbox(#[from] minicloud_outbox::OutboxError),
    #[error("bus URL: {0}")]
    BusUrl(#[from] tonic::transport::Error),
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
    /// Migrates and connects the outbox relay to the bus at `bus_grpc_url`.
    pub async fn new(
        _config: DocdbConfig,
        pool: PgPool,
        authz: Arc<Authz>,
        bus_grpc_url: &str,
    ) -> Result<Docdb, DocdbStartError> {
        migrate(&pool).await?;
        minicloud_outbox::ensure_table(&pool).await?;
        let relay = minicloud_outbox::Relay::new(
            pool.clone(),
            bus_grpc_url,
            authz.service_credential(),
            minicloud_outbox::RelayConfig::default(),
        )?;
        Ok(Docdb(Arc::new(DocdbState {
            pool,
            authz,
            relay,
            policies: minicloud_authz::TtlCache::new(documents::POLICY_CACHE_TTL),
        })))
    }

    /// The outbox relay and the purge of expired keys, until cancelled.
    pub fn spawn_background(&self, cancel: CancellationToken) -> Vec<BackgroundTask> {
        let docdb = self.clone();
        let purge_cancel = cancel.clone();
        let purge = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = purge_cancel.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                }
                match docdb.purge_expired().await {
                    Ok(0) => {}
                    Ok(purged) => tracing::debug!(purged, "purged expired keys"),
                    Err(error) => tracing::warn!(%error, "purging expired keys failed"),
                }
            }
        });
        vec![
            BackgroundTask::new("outbox relay", self.relay.clone().spawn(cancel)),
            BackgroundTask::new("expired key purge", purge),
        ]
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
                "/db/v1/collections/{c}",
                get(collections::get).delete(collections::delete),
            )
            .route("/db/v1/collections/{c}/docs", post(rest::create))
            .route(
                "/db/v1/collections/{c}/docs/{id}",
                get(rest::get)
                    .put(rest::put)
                    .patch(rest::patch)
                    .delete(rest::delete),
            )
            .route("/db/v1/collections/{c}/query", post(rest::query))
            .route("/db/v1/batch", post(rest::batch))
            .route("/db/v1/kv/{ns}", get(rest::kv_list))
            .route(
                "/db/v1/kv/{ns}/{*key}",
                get(rest::kv_get)
                    .put(rest::kv_put)
                    .delete(rest::kv_delete)
                    .post(rest::kv_incr),
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
            ServiceMetrics::new("docdb", |registry| self.relay.register_metrics(registry)),
        )
        .body_limit(MAX_BODY_BYTES)
        .grpc(DocdbServiceServer::new(grpc::DocdbGrpc(self)))
        .into_router()
    }
}

pub async fn run(
    docdb: Docdb,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let background = docdb.spawn_background(shutdown.clone());
    minicloud_telemetry::server::serve_with_background(
        listener,
        docdb.into_router(),
        shutdown,
        background,
    )
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
            "/../../docs/api/openapi/docdb.json"
        );
        minicloud_proto::openapi::check_committed_spec(&generated, path);
    }
}
