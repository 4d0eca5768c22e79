//! The bus service (`/events/v1`): CloudEvents on Redis Streams — topics, publishing
//! (REST, and the gRPC the outbox relays call), subscriptions delivering to webhooks,
//! topics and functions with retries and dead letters, schedules, and the tail.

mod access;
mod delivery;
mod metrics;
mod model;
pub mod pattern;
mod retention;
mod schedules;
mod subscriptions;
mod topics;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use minicloud_authz::Authz;
use minicloud_proto::bus::v1::bus_service_server::BusServiceServer;
use minicloud_proto::invoker::v1::invoker_service_client::InvokerServiceClient;
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::grpc_client::TracedChannel;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, readiness,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "bus";

/// The REST API of this service, served at `/events/v1/openapi.json`.
use minicloud_proto::openapi::ErrorResponses;

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud bus",
        description = "Topics, publishing, subscriptions (webhook, topic and function targets, retries, dead letters) and schedules."
    ),
    paths(
        topics::create,
        topics::list,
        topics::publish_rest,
        subscriptions::create,
        subscriptions::list,
        subscriptions::get,
        subscriptions::delete,
        subscriptions::dead_letters,
        subscriptions::stats,
        subscriptions::redrive,
        topics::tail,
        schedules::create,
        schedules::list,
        schedules::delete,
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, clap::Args)]
pub struct BusConfig {
    /// Prefix of every Redis key the bus writes, so several clouds can share a Redis.
    #[arg(
        long = "bus-redis-prefix",
        env = "MINICLOUD_BUS_REDIS_PREFIX",
        default_value_t = BusConfig::default().redis_prefix
    )]
    pub redis_prefix: String,
    /// Publishing the same `source` + `id` again within this many seconds stores it once.
    #[arg(long = "bus-dedupe-window", env = "MINICLOUD_BUS_DEDUPE_WINDOW", default_value_t = BusConfig::default().dedupe_window_s)]
    pub dedupe_window_s: u64,
    /// A delivery pending this long is presumed abandoned by a crashed worker and
    /// claimed by another, seconds.
    #[arg(
        long = "bus-visibility-timeout",
        env = "MINICLOUD_BUS_VISIBILITY_TIMEOUT",
        default_value_t = BusConfig::default().visibility_timeout_s
    )]
    pub visibility_timeout_s: u64,
    /// The invoker's gRPC URL, for subscriptions that target functions (from the
    /// service URLs, filled in by whoever starts the bus).
    #[arg(skip)]
    pub invoker_url: Option<String>,
    /// Docdb's gRPC URL: `db` change events reach a subscriber only for documents its
    /// owner may read, which docdb judges. Without it they reach only subscriptions
    /// of the service role. From the service URLs, like `invoker_url`.
    #[arg(skip)]
    pub docdb_url: Option<String>,
    /// Whether webhooks may reach loopback and private addresses: on under
    /// `minicloud up` (local development), off under `serve`.
    #[arg(long = "bus-webhook-private", env = "MINICLOUD_BUS_WEBHOOK_PRIVATE")]
    pub webhook_private: Option<bool>,
    /// Private ranges webhooks may reach even so (CIDRs, comma-separated). Link-local
    /// and metadata addresses stay refused.
    #[arg(
        long = "bus-webhook-allow",
        env = "MINICLOUD_BUS_WEBHOOK_ALLOW",
        value_delimiter = ','
    )]
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Ports of minicloud's own servers, never a webhook's (filled in by whoever
    /// starts the bus; its database's, Redis's and the default service ports are
    /// always added).
    #[arg(skip)]
    pub internal_ports: Vec<u16>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            redis_prefix: "minicloud:".into(),
            dedupe_window_s: 24 * 3600,
            visibility_timeout_s: 30,
            invoker_url: None,
            docdb_url: None,
            webhook_private: None,
            webhook_allow: Vec::new(),
            internal_ports: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bus(Arc<BusState>);

#[derive(Debug)]
pub struct BusState {
    pub(crate) pool: PgPool,
    pub(crate) redis: ConnectionManager,
    pub(crate) redis_client: redis::Client,
    /// The webhook client: destinations checked after DNS, no redirects.
    pub(crate) http: reqwest::Client,
    pub(crate) webhook_policy: Arc<webhook::AddressPolicy>,
    pub(crate) metrics: metrics::BusMetrics,
    service_metrics: Arc<ServiceMetrics>,
    pub(crate) config: BusConfig,
    pub(crate) authz: Arc<Authz>,
    pub(crate) invoker: Option<InvokerServiceClient<TracedChannel>>,
    /// Judges whether a subscription's owner may read a `db` event's document.
    pub(crate) docdb:
        Option<minicloud_proto::docdb::v1::docdb_service_client::DocdbServiceClient<TracedChannel>>,
    /// Tokens for subscription owners, by `role\nsubject` (for docdb's judgement).
    pub(crate) owner_tokens: minicloud_authz::TtlCache<String>,
    pub(crate) meters: minicloud_metering::Meters,
}

impl std::ops::Deref for Bus {
    type Target = BusState;
    fn deref(&self) -> &BusState {
        &self.0
    }
}

impl FromRef<Bus> for Arc<Authz> {
    fn from_ref(bus: &Bus) -> Self {
        Arc::clone(&bus.0.authz)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusStartError {
    #[error("migrating the bus schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("connecting to Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("connecting to Redis timed out")]
    RedisTimeout,
    #[error("HTTP client: {0}")]
    Http(String),
}

/// Where webhooks may go: the flags, plus every port of minicloud's own servers
/// this bus knows of (its database, Redis, the invoker, the default service ports).
fn webhook_policy(
    config: &BusConfig,
    pool: &PgPool,
    redis: &redis::Client,
) -> webhook::AddressPolicy {
    let mut internal_ports = config.internal_ports.clone();
    internal_ports.extend([5432, 6379, 4601, 4602, 4603, 4604, 4605]);
    internal_ports.push(pool.connect_options().get_port());
    if let redis::ConnectionAddr::Tcp(_, port) | redis::ConnectionAddr::TcpTls { port, .. } =
        redis.get_connection_info().addr()
    {
        internal_ports.push(*port);
    }
    if let Some(port) = config
        .invoker_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.port_or_known_default())
    {
        internal_ports.push(port);
    }
    internal_ports.sort_unstable();
    internal_ports.dedup();
    webhook::AddressPolicy {
        private: config.webhook_private.unwrap_or(false),
        allow: config.webhook_allow.clone(),
        internal_ports,
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

impl Bus {
    /// Migrates and connects to Redis through `redis` (delivery workers open their
    /// own connections from it: their blocking reads must not stall publishing).
    pub async fn new(
        config: BusConfig,
        pool: PgPool,
        redis: redis::Client,
        authz: Arc<Authz>,
        meters: minicloud_metering::Meters,
    ) -> Result<Bus, BusStartError> {
        migrate(&pool).await?;
        let manager = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            redis.get_connection_manager(),
        )
        .await
        .map_err(|_| BusStartError::RedisTimeout)??;
        let webhook_policy = Arc::new(webhook_policy(&config, &pool, &redis));
        let http = webhook::client(Arc::clone(&webhook_policy))
            .map_err(|e| BusStartError::Http(e.to_string()))?;
        let (service_metrics, metrics) = metrics::BusMetrics::new(&meters);
        let invoker = match &config.invoker_url {
            Some(url) => Some(InvokerServiceClient::new(
                TracedChannel::connect_lazy("invoker", url)
                    .map_err(|e| BusStartError::Http(e.to_string()))?
                    .with_credential(authz.service_credential()),
            )),
            None => None,
        };
        let docdb = match &config.docdb_url {
            Some(url) => Some(
                minicloud_proto::docdb::v1::docdb_service_client::DocdbServiceClient::new(
                    TracedChannel::connect_lazy("docdb", url)
                        .map_err(|e| BusStartError::Http(e.to_string()))?
                        .with_credential(authz.service_credential()),
                ),
            ),
            None => None,
        };
        Ok(Bus(Arc::new(BusState {
            invoker,
            docdb,
            owner_tokens: minicloud_authz::TtlCache::new(access::OWNER_TOKEN_TTL / 2),
            pool,
            redis: manager,
            redis_client: redis,
            http,
            webhook_policy,
            metrics,
            service_metrics,
            config,
            authz,
            meters,
        })))
    }

    /// A connection of its own for blocking reads (`XREAD`/`XREADGROUP … BLOCK`): on
    /// a shared connection they would stall every other command, and the client's
    /// default 500 ms response timeout would cut them short.
    pub(crate) async fn blocking_connection(
        &self,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.redis_client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub(crate) fn stream_key(&self, topic: &str) -> String {
        format!("{}topic:{}", self.config.redis_prefix, topic)
    }
}

impl Service for Bus {
    const NAME: ServiceName = ServiceName::Bus;

    /// The delivery workers, the retention trimmer and the schedule ticker. Workers
    /// stop between deliveries; one cut at the deadline leaves its entry pending, and
    /// another worker claims it after the visibility timeout.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
        vec![
            BackgroundTask::new(
                "delivery workers",
                delivery::spawn_manager(self.clone(), cancel.clone()),
            ),
            BackgroundTask::new(
                "retention trimmer",
                retention::spawn(self.clone(), cancel.clone()),
            ),
            BackgroundTask::new(
                "schedule ticker",
                schedules::spawn(self.clone(), cancel.clone()),
            ),
        ]
        .into_iter()
        .chain(self.meters.shipping_task(cancel))
        .collect()
    }

    fn host(self) -> ServiceHost {
        let pool = self.pool.clone();
        let redis = self.redis.clone();
        let readiness = readiness(move || {
            let pool = pool.clone();
            let mut redis = redis.clone();
            async move {
                let ping = redis::cmd("PING")
                    .query_async::<String>(&mut redis)
                    .await
                    .map(|_| ());
                vec![
                    DependencyCheck::postgres(&pool).await,
                    DependencyCheck::from_result("redis", ping),
                ]
            }
        });
        let rest = Router::new()
            .route("/events/v1/topics", get(topics::list).post(topics::create))
            .route(
                "/events/v1/topics/{topic}/events",
                axum::routing::post(topics::publish_rest),
            )
            .route(
                "/events/v1/schedules",
                get(schedules::list).post(schedules::create),
            )
            .route(
                "/events/v1/schedules/{name}",
                axum::routing::delete(schedules::delete),
            )
            .route("/events/v1/topics/{topic}/tail", get(topics::tail))
            .route(
                "/events/v1/subscriptions",
                get(subscriptions::list).post(subscriptions::create),
            )
            .route(
                "/events/v1/subscriptions/{id}",
                get(subscriptions::get).delete(subscriptions::delete),
            )
            .route(
                "/events/v1/subscriptions/{id}/dead-letters",
                get(subscriptions::dead_letters),
            )
            .route(
                "/events/v1/subscriptions/{id}/stats",
                get(subscriptions::stats),
            )
            .route(
                "/events/v1/subscriptions/{id}/dead-letters/redrive",
                axum::routing::post(subscriptions::redrive),
            )
            .with_state(self.clone());
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            Arc::clone(&self.service_metrics),
        )
        .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
        .body_limit(1024 * 1024)
        // Set explicitly, above the relays' 3 MiB publishes (tonic's default is
        // 4 MiB): a batch of the largest events (2 MiB) still fits.
        .grpc(
            BusServiceServer::new(topics::BusGrpc(self)).max_decoding_message_size(8 * 1024 * 1024),
        )
    }
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("bus");
    }
}
