//! The docdb service (`/db/v1`): collections of JSON documents with declared
//! indexes, queries, batches and key-value namespaces over Postgres, with change
//! events through the transactional outbox.

mod collections;
mod documents;
mod grpc;
mod kv;
mod postgrest;
pub mod query;
mod rest;
mod stored_bytes;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use minicloud_authz::Authz;
use minicloud_proto::docdb::v1::docdb_service_server::DocdbServiceServer;
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, readiness,
};
use sqlx::PgPool;
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
        description = "Collections, documents, queries, batches and key-value namespaces; a PostgREST view of collections at /rest/v1."
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
        rest::kv_incr,
        postgrest::read,
        postgrest::insert,
        postgrest::update,
        postgrest::remove,
        postgrest::rpc
    ),
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
    pub(crate) meters: minicloud_metering::Meters,
}

#[derive(Debug, thiserror::Error)]
pub enum DocdbStartError {
    #[error("migrating the docdb schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("outbox: {0}")]
    Outbox(#[from] minicloud_outbox::OutboxError),
    #[error("bus URL: {0}")]
    BusUrl(#[from] tonic::transport::Error),
    #[error("docdb database: {0}")]
    Database(#[from] sqlx::Error),
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
        meters: minicloud_metering::Meters,
    ) -> Result<Docdb, DocdbStartError> {
        migrate(&pool).await?;
        minicloud_outbox::ensure_table(&pool).await?;
        if meters.is_on() {
            minicloud_metering::sampled::ensure_samplers(&pool, &[stored_bytes::SAMPLER]).await?;
        }
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
            meters,
        })))
    }
}

impl Service for Docdb {
    const NAME: ServiceName = ServiceName::Docdb;

    /// The outbox relay and the purge of expired keys.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
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
        let mut tasks = vec![
            BackgroundTask::new("outbox relay", self.relay.clone().spawn(cancel.clone())),
            BackgroundTask::new("expired key purge", purge),
        ];
        let docdb = self.clone();
        tasks.extend(
            self.meters
                .sampling_task("stored bytes meter", cancel, move || {
                    let docdb = docdb.clone();
                    async move { docdb.meter_stored_bytes().await }
                }),
        );
        tasks.extend(self.meters.shipping_task(cancel));
        tasks
    }

    fn host(self) -> ServiceHost {
        let pool = self.pool.clone();
        let readiness = readiness(move || {
            let pool = pool.clone();
            async move { vec![DependencyCheck::postgres(&pool).await] }
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
            .with_state(self.clone());
        // PostgREST's view (its errors carry PostgREST's fields: see below).
        let postgrest = Router::new()
            .route(
                "/rest/v1/{collection}",
                get(postgrest::read)
                    .post(postgrest::insert)
                    .patch(postgrest::update)
                    .delete(postgrest::remove),
            )
            .route(
                "/rest/v1/rpc/{function}",
                get(postgrest::rpc).post(postgrest::rpc),
            )
            .with_state(self.clone());
        let rest = rest.merge(postgrest);
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            ServiceMetrics::new("docdb", |registry| {
                self.relay.register_metrics(registry);
                self.meters.register_metrics(registry);
            }),
        )
        .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
        .body_limit(MAX_BODY_BYTES)
        .error_dialect("/rest/v1", postgrest::with_postgrest_fields)
        .grpc(DocdbServiceServer::new(grpc::DocdbGrpc(self)))
    }
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("docdb");
    }
}
