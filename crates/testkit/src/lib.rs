//! A whole minicloud per test: every service on an ephemeral port, a fresh Postgres
//! database (dropped afterwards) and a unique Redis key prefix, started through the
//! same code as `minicloud up`.
//!
//! Environment:
//! - `MINICLOUD_TEST_DATABASE_URL`: a Postgres server URL whose user may create
//!   databases (default `postgres://postgres@127.0.0.1:5432/postgres`); each test
//!   gets a database `mc_test_<uuid>` on that server.
//! - `MINICLOUD_TEST_REDIS_URL`: Redis (default `redis://127.0.0.1:6379`).

pub mod browser;
pub mod hostile;
pub mod otlp;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use minicloud_auth::{AuthConfig, BuiltinKeys};
use minicloud_bus::BusConfig;
use minicloud_cli::cloud::{self, CloudConfig, GatewayDispatch, RunningCloud, ServiceUrls};
use minicloud_docdb::DocdbConfig;
use minicloud_invoker::InvokerConfig;
use minicloud_proto::services::PerService;
use minicloud_sdk::Client;
use minicloud_storage::StorageConfig;
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

pub use minicloud_auth;
pub use minicloud_billing;
pub use minicloud_bus;
pub use minicloud_cli;
pub use minicloud_docdb;
pub use minicloud_storage;
pub use sqlx;

pub fn test_database_server_url() -> String {
    std::env::var("MINICLOUD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn test_redis_url() -> String {
    std::env::var("MINICLOUD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// This process's peak resident memory (`VmHWM`) in KiB: the whole test cloud runs
/// in the test's process, so memory-bound tests compare it before and after.
pub fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Settings a test may change before starting its cloud.
#[derive(Debug, Clone)]
pub struct TestCloudBuilder {
    pub auth: AuthConfig,
    pub bus: BusConfig,
    /// How long services cache role policies.
    pub policy_cache_ttl: std::time::Duration,
    /// `None`: the `fs` backend under the test's temp dir.
    pub storage: Option<StorageConfig>,
    pub gateway_dispatch: GatewayDispatch,
    /// The invoker's settings (its code dir is always under the test's temp dir).
    pub invoker: InvokerConfig,
    pub billing: minicloud_billing::BillingConfig,
    /// Meters (their journals are always under the test's temp dir); shipped every
    /// 100 ms unless a test says otherwise.
    pub metering: minicloud_metering::MeteringConfig,
}

impl Default for TestCloudBuilder {
    fn default() -> Self {
        // Tests sign in far more often than people; rate limits get their own tests.
        let auth = AuthConfig {
            rate_limit_per_ip: 100_000,
            rate_limit_per_email: 100_000,
            ..AuthConfig::default()
        };
        TestCloudBuilder {
            auth,
            storage: None,
            bus: BusConfig::default(),
            policy_cache_ttl: std::time::Duration::from_secs(30),
            gateway_dispatch: GatewayDispatch::InProcess,
            invoker: InvokerConfig::default(),
            billing: minicloud_billing::BillingConfig::default(),
            metering: minicloud_metering::MeteringConfig {
                ship_interval_ms: 100,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug)]
pub struct TestCloud {
    pub urls: ServiceUrls,
    pub keys: BuiltinKeys,
    pub database: String,
    pub database_url: String,
    pub redis_prefix: String,
    pub data_dir: PathBuf,
    running: Option<RunningCloud>,
    cleaned: bool,
}

impl TestCloudBuilder {
    pub fn invoker(mut self, change: impl FnOnce(&mut InvokerConfig)) -> Self {
        change(&mut self.invoker);
        self
    }

    pub fn bus(mut self, change: impl FnOnce(&mut BusConfig)) -> Self {
        change(&mut self.bus);
        self
    }

    /// The gateway reaches the services over loopback HTTP, as when it runs alone.
    pub fn gateway_over_http(mut self) -> Self {
        self.gateway_dispatch = GatewayDispatch::Http;
        self
    }

    pub fn policy_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.policy_cache_ttl = ttl;
        self
    }

    pub fn auth(mut self, change: impl FnOnce(&mut AuthConfig)) -> Self {
        change(&mut self.auth);
        self
    }

    pub fn storage(mut self, config: StorageConfig) -> Self {
        self.storage = Some(config);
        self
    }

    pub async fn start(self) -> anyhow::Result<TestCloud> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("mc_test_{id}");
        let server = PgConnectOptions::from_str(&test_database_server_url())?;
        let mut admin = server
            .clone()
            .connect()
            .await
            .context("connecting to the test Postgres server")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&mut admin)
        .await?;
        let database_url = server.database(&database).to_url_lossy().to_string();
        let redis_prefix = format!("mc_test_{id}:");
        let data_dir = std::env::temp_dir().join(format!("minicloud-test-{id}"));
        let config = CloudConfig {
            database_url: database_url.clone(),
            redis_url: test_redis_url(),
            db_pool_size: 4,
            auth: self.auth,
            storage: self.storage.clone().unwrap_or_else(|| StorageConfig {
                fs_root: Some(data_dir.join("objects")),
                ..StorageConfig::default()
            }),
            docdb: DocdbConfig::default(),
            bus: BusConfig {
                redis_prefix: redis_prefix.clone(),
                ..self.bus
            },
            policy_cache_ttl: self.policy_cache_ttl,
            gateway_dispatch: self.gateway_dispatch,
            invoker: InvokerConfig {
                code_dir: Some(data_dir.join("functions")),
                ..self.invoker.clone()
            },
            billing: self.billing.clone(),
            metering: minicloud_metering::MeteringConfig {
                dir: Some(data_dir.join("meters")),
                ..self.metering.clone()
            },
        };
        let listeners = cloud::bind_listeners("127.0.0.1", &PerService::default()).await?;
        let mut cloud = TestCloud {
            urls: ServiceUrls::default(),
            keys: BuiltinKeys {
                anon_key: String::new(),
                service_key: String::new(),
            },
            database,
            database_url,
            redis_prefix,
            data_dir,
            running: None,
            cleaned: false,
        };
        // On a failed start the database is still dropped, by `Drop`.
        let running = cloud::start(config, listeners, CancellationToken::new()).await?;
        cloud.urls = running.urls.clone();
        cloud.keys = running.keys.clone();
        cloud.running = Some(running);
        Ok(cloud)
    }
}

impl TestCloud {
    pub async fn start() -> anyhow::Result<TestCloud> {
        TestCloudBuilder::default().start().await
    }

    pub fn builder() -> TestCloudBuilder {
        TestCloudBuilder::default()
    }

    /// A gRPC channel to one of the services that presents the service key, as the
    /// services' own clients do (gRPC refuses calls without a credential).
    pub fn service_channel(&self, url: &str) -> minicloud_telemetry::grpc_client::TracedChannel {
        minicloud_telemetry::grpc_client::TracedChannel::connect_lazy("test", url)
            .expect("a service URL")
            .with_credential(
                minicloud_telemetry::grpc_client::ServiceCredential::with_key(
                    &self.keys.service_key,
                ),
            )
    }

    pub fn gateway_url(&self) -> &str {
        &self.urls.gateway
    }

    /// An anonymous client of the gateway.
    pub fn client(&self) -> Client {
        Client::new(self.urls.gateway.clone())
    }

    /// A client acting with the service key.
    pub fn admin(&self) -> Client {
        self.client().with_token(self.keys.service_key.clone())
    }

    /// Stops every service and drops the database and Redis keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let result = match self.running.take() {
            Some(running) => running.stop().await,
            None => Ok(()),
        };
        cleanup(&self.database, &self.redis_prefix, &self.data_dir).await?;
        self.cleaned = true;
        result
    }
}

async fn cleanup(
    database: &str,
    redis_prefix: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut admin = PgConnectOptions::from_str(&test_database_server_url())?
        .connect()
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    if let Ok(client) = redis::Client::open(test_redis_url())
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{redis_prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut connection)
                .await;
        }
    }
    let _ = tokio::fs::remove_dir_all(data_dir).await;
    Ok(())
}

impl Drop for TestCloud {
    /// A test that panicked before `stop` still leaves no database behind.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if let Some(running) = self.running.take() {
            running.shutdown_token().cancel();
            drop(running);
        }
        let (database, prefix, dir) = (
            self.database.clone(),
            self.redis_prefix.clone(),
            self.data_dir.clone(),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cleanup(&database, &prefix, &dir))
        })
        .join();
    }
}
