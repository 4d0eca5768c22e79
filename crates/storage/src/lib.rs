//! The storage service (`/storage/v1`): buckets with policies and objects over a
//! backend (`fs`: local files, `s3`: any S3 API such as MinIO), metadata in
//! Postgres, `object.created`/`.deleted` events through the transactional outbox.

mod backend;
mod buckets;
mod error;
mod form_upload;
mod grpc;
mod listing;
mod multipart;
mod objects;
mod paths;
mod rest;
mod s3_api;
mod signing;
mod stored_bytes;
mod sweep;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post};
use minicloud_authz::Authz;
use minicloud_outbox::{Relay, RelayConfig};
use minicloud_proto::services::ServiceName;
use minicloud_proto::storage::v1::storage_service_server::StorageServiceServer;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, readiness, reject_declared_oversize,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, BackendError, FsBackend};
pub use error::StorageError;

pub const SCHEMA: &str = "storage";
/// Where this service serves the S3 API; the gateway serves it at its root.
pub use minicloud_proto::services::S3_PREFIX;
/// JSON request bodies (buckets, listing, signing) are small.
const MAX_JSON_BODY: usize = 64 * 1024;

/// The REST API of this service, served at `/storage/v1/openapi.json`.
use minicloud_proto::openapi::ErrorResponses;

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud storage",
        description = "Buckets and objects (Supabase Storage shapes). Authenticate with `Authorization: Bearer <token>`; public buckets are readable by anyone."
    ),
    paths(
        buckets::create,
        buckets::get,
        buckets::list,
        buckets::update,
        buckets::empty,
        buckets::delete,
        rest::create,
        rest::upsert,
        rest::get,
        rest::info,
        rest::delete,
        rest::bulk_delete,
        rest::list,
        rest::copy_object,
        rest::move_object,
        rest::sign_download,
        rest::sign_many,
        rest::sign_upload,
        rest::get_public,
        rest::get_signed,
        rest::put_signed,
    ),
    components(schemas(listing::FolderListIn, listing::FolderEntry)),
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Fs,
    S3,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StorageConfig {
    /// Where object bytes live.
    #[arg(
        long = "storage-backend",
        env = "MINICLOUD_STORAGE_BACKEND",
        value_enum,
        default_value_t = StorageConfig::default().backend
    )]
    pub backend: BackendKind,
    /// Root directory of the `fs` backend.
    #[arg(long = "storage-fs-root", env = "MINICLOUD_STORAGE_FS_ROOT")]
    pub fs_root: Option<PathBuf>,
    /// S3 endpoint of the `s3` backend (MinIO: `http://minio:9000`).
    #[arg(
        long = "storage-s3-endpoint",
        env = "MINICLOUD_STORAGE_S3_ENDPOINT",
        default_value_t = StorageConfig::default().s3_endpoint
    )]
    pub s3_endpoint: String,
    #[arg(
        long = "storage-s3-region",
        env = "MINICLOUD_STORAGE_S3_REGION",
        default_value_t = StorageConfig::default().s3_region
    )]
    pub s3_region: String,
    #[arg(
        long = "storage-s3-access-key",
        env = "MINICLOUD_STORAGE_S3_ACCESS_KEY",
        default_value_t = StorageConfig::default().s3_access_key
    )]
    pub s3_access_key: String,
    #[arg(
        long = "storage-s3-secret-key",
        env = "MINICLOUD_STORAGE_S3_SECRET_KEY",
        default_value_t = StorageConfig::default().s3_secret_key
    )]
    pub s3_secret_key: String,
    /// Prepended to every S3 bucket name, so several clouds can share one S3 server.
    #[arg(
        long = "storage-s3-bucket-prefix",
        env = "MINICLOUD_STORAGE_S3_BUCKET_PREFIX",
        default_value_t = StorageConfig::default().s3_bucket_prefix
    )]
    pub s3_bucket_prefix: String,
    /// Largest object any bucket accepts, bytes.
    #[arg(long = "storage-max-object-size", env = "MINICLOUD_STORAGE_MAX_OBJECT_SIZE", default_value_t = StorageConfig::default().max_object_size)]
    pub max_object_size: u64,
    /// How often the orphan sweep runs, seconds.
    #[arg(
        long = "storage-sweep-interval",
        env = "MINICLOUD_STORAGE_SWEEP_INTERVAL",
        default_value_t = StorageConfig::default().sweep_interval_s
    )]
    pub sweep_interval_s: u64,
    /// Blobs no object points at are removed once older than this, seconds.
    #[arg(
        long = "storage-orphan-age",
        env = "MINICLOUD_STORAGE_ORPHAN_AGE",
        default_value_t = StorageConfig::default().orphan_age_s
    )]
    pub orphan_age_s: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: BackendKind::Fs,
            fs_root: None,
            s3_endpoint: "http://127.0.0.1:9000".into(),
            s3_region: "us-east-1".into(),
            s3_access_key: "minioadmin".into(),
            s3_secret_key: "minioadmin".into(),
            s3_bucket_prefix: String::new(),
            max_object_size: 5 * 1024 * 1024 * 1024,
            orphan_age_s: 3600,
            sweep_interval_s: 600,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Storage(Arc<StorageState>);

pub struct StorageState {
    pub(crate) pool: PgPool,
    pub(crate) config: StorageConfig,
    pub(crate) authz: Arc<Authz>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) relay: Relay,
    pub(crate) signer: signing::UrlSigner,
    /// Bucket settings as every object call reads them; a change made here applies
    /// at once, one made through another replica within [`BUCKET_CACHE_TTL`].
    pub(crate) buckets: minicloud_authz::TtlCache<buckets::BucketRecord>,
    pub(crate) meters: minicloud_metering::Meters,
}

impl std::fmt::Debug for StorageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageState").finish_non_exhaustive()
    }
}

/// How long a replica keeps a bucket's settings (public, limits, types, policy).
pub const BUCKET_CACHE_TTL: Duration = Duration::from_secs(5);

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

#[derive(Debug, thiserror::Error)]
pub enum StorageStartError {
    #[error("migrating the storage schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("storage database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] minicloud_outbox::OutboxError),
    #[error("bus URL: {0}")]
    BusUrl(#[from] tonic::transport::Error),
    #[error("object backend: {0}")]
    Backend(#[from] BackendError),
    #[error("object backend: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

async fn open_backend(config: &StorageConfig) -> Result<Arc<dyn Backend>, StorageStartError> {
    Ok(match config.backend {
        BackendKind::Fs => {
            let root = config
                .fs_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(".minicloud/objects"));
            Arc::new(FsBackend::open(root).await?)
        }
        BackendKind::S3 => Arc::new(backend::s3::S3Backend::new(config)),
    })
}

impl Storage {
    /// Migrates, opens the backend, and connects the outbox relay to the bus at
    /// `bus_grpc_url`.
    pub async fn new(
        config: StorageConfig,
        pool: PgPool,
        authz: Arc<Authz>,
        bus_grpc_url: &str,
        meters: minicloud_metering::Meters,
    ) -> Result<Storage, StorageStartError> {
        migrate(&pool).await?;
        minicloud_outbox::ensure_table(&pool).await?;
        if meters.is_on() {
            minicloud_metering::sampled::ensure_samplers(&pool, &[stored_bytes::SAMPLER]).await?;
        }
        let backend = open_backend(&config).await?;
        let relay = Relay::new(
            pool.clone(),
            bus_grpc_url,
            authz.service_credential(),
            RelayConfig::default(),
        )?;
        let signer = signing::UrlSigner::load(&pool).await?;
        Ok(Storage(Arc::new(StorageState {
            pool,
            config,
            authz,
            backend,
            relay,
            signer,
            buckets: minicloud_authz::TtlCache::new(BUCKET_CACHE_TTL),
            meters,
        })))
    }
}

impl Service for Storage {
    const NAME: ServiceName = ServiceName::Storage;

    fn host(self) -> ServiceHost {
        let pool = self.pool.clone();
        let backend = Arc::clone(&self.backend);
        let readiness = readiness(move || {
            let pool = pool.clone();
            let backend = Arc::clone(&backend);
            async move {
                vec![
                    DependencyCheck::postgres(&pool).await,
                    DependencyCheck::from_result("backend", backend.check().await),
                ]
            }
        });
        let json = Router::new()
            .route(
                "/storage/v1/bucket",
                get(buckets::list).post(buckets::create),
            )
            .route(
                "/storage/v1/bucket/{name}",
                get(buckets::get)
                    .put(buckets::update)
                    .delete(buckets::delete),
            )
            .route("/storage/v1/bucket/{name}/empty", post(buckets::empty))
            .route("/storage/v1/object/list/{bucket}", post(rest::list))
            .route("/storage/v1/object/copy", post(rest::copy_object))
            .route("/storage/v1/object/move", post(rest::move_object))
            .route("/storage/v1/object/sign/{bucket}", post(rest::sign_many))
            .route(
                "/storage/v1/object/sign/{bucket}/{*path}",
                post(rest::sign_download).get(rest::get_signed),
            )
            .route(
                "/storage/v1/object/upload/sign/{bucket}/{*path}",
                post(rest::sign_upload),
            )
            .route("/storage/v1/object/info/{bucket}/{*path}", get(rest::info))
            .route(
                "/storage/v1/object/{bucket}",
                axum::routing::delete(rest::bulk_delete),
            )
            .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
            .layer(axum::middleware::from_fn_with_state(
                MAX_JSON_BODY,
                reject_declared_oversize,
            ));
        // Object bodies stream straight to the backend, limited per bucket.
        let objects = Router::new()
            .route(
                "/storage/v1/object/{bucket}/{*path}",
                get(rest::get)
                    .post(rest::create)
                    .put(rest::upsert)
                    .delete(rest::delete),
            )
            .route(
                "/storage/v1/object/public/{bucket}/{*path}",
                get(rest::get_public),
            )
            .route(
                "/storage/v1/object/upload/sign/{bucket}/{*path}",
                axum::routing::put(rest::put_signed),
            )
            .layer(DefaultBodyLimit::disable());
        // The S3 API (the gateway sends SigV4-signed requests here, path prefixed).
        let s3 = Router::new()
            .nest_service(S3_PREFIX, s3_api::service(self.clone()))
            .layer(axum::middleware::from_fn(s3_api::restore_signed_parts));
        let rest = json.merge(objects).with_state(self.clone()).merge(s3);
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            ServiceMetrics::new("storage", |registry| {
                self.relay.register_metrics(registry);
                self.meters.register_metrics(registry);
            }),
        )
        .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
        .error_dialect("/storage/v1", error::with_storage_api_fields)
        .grpc(StorageServiceServer::new(grpc::StorageGrpc(self)))
    }

    /// The outbox relay and the orphan sweep.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
        let mut tasks = vec![
            BackgroundTask::new("outbox relay", self.relay.clone().spawn(cancel.clone())),
            BackgroundTask::new(
                "orphan sweep",
                sweep::spawn(
                    self.clone(),
                    Duration::from_secs(self.config.sweep_interval_s.max(1)),
                    cancel.clone(),
                ),
            ),
        ];
        let storage = self.clone();
        tasks.extend(
            self.meters
                .sampling_task("stored bytes meter", cancel, move || {
                    let storage = storage.clone();
                    async move { storage.meter_stored_bytes().await }
                }),
        );
        tasks.extend(self.meters.shipping_task(cancel));
        tasks
    }
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("storage");
    }
}
