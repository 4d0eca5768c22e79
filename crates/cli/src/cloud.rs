//! Composes every service into one cloud: pools per schema, the authz client of
//! each service, one listener each, gRPC between them over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use minicloud_auth::{Auth, AuthConfig, BuiltinKeys};
use minicloud_authz::Authz;
use minicloud_billing::{Billing, BillingConfig};
use minicloud_bus::{Bus, BusConfig};
use minicloud_docdb::{Docdb, DocdbConfig};
use minicloud_gateway::{Gateway, GatewayConfig};
use minicloud_invoker::{Invoker, InvokerConfig};
use minicloud_metering::{MeteringConfig, Meters};
use minicloud_proto::services::{PerService, ServiceName};
use minicloud_storage::{Storage, StorageConfig};
use minicloud_telemetry::grpc_client::ServiceCredential;
use minicloud_telemetry::server::Hosted;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::postgres::{ensure_database, schema_pool};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub database_url: String,
    pub redis_url: String,
    pub db_pool_size: u32,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub docdb: DocdbConfig,
    pub bus: BusConfig,
    pub invoker: InvokerConfig,
    pub billing: BillingConfig,
    /// Where the services' meter journals go (`dir` unset: `.minicloud/meters`).
    pub metering: MeteringConfig,
    /// How long services cache a role's policies (at most 60 s by design).
    pub policy_cache_ttl: Duration,
    pub gateway_dispatch: GatewayDispatch,
}

/// How the gateway reaches the services it runs beside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GatewayDispatch {
    /// Straight into each service's router: one HTTP hop per request instead of two.
    #[default]
    InProcess,
    /// Over loopback HTTP to each service's port, as a gateway run on its own does.
    Http,
}

/// One listener per service.
pub type CloudListeners = PerService<TcpListener>;

/// Where each service is reached (`http://host:port`).
pub type ServiceUrls = PerService<String>;

/// Binds every service's port on `host`; port 0 picks a free one.
pub async fn bind_listeners(
    host: &str,
    ports: &PerService<u16>,
) -> std::io::Result<CloudListeners> {
    let mut bound = PerService::<Option<TcpListener>>::default();
    for (name, &port) in ports.iter() {
        bound[name] = Some(TcpListener::bind((host, port)).await?);
    }
    Ok(bound.map(|_, listener| listener.expect("every service was bound above")))
}

/// `http://addr` of each listener.
pub fn urls_of(listeners: &CloudListeners) -> std::io::Result<ServiceUrls> {
    let mut urls = PerService::default();
    for (name, listener) in listeners.iter() {
        let addr: SocketAddr = listener.local_addr()?;
        urls[name] = format!("http://{addr}");
    }
    Ok(urls)
}

type ServiceTask = (ServiceName, std::io::Result<()>);

#[derive(Debug)]
pub struct RunningCloud {
    pub urls: ServiceUrls,
    pub keys: BuiltinKeys,
    services: RunningServices,
}

/// Services serving in this process, stopped together.
#[derive(Debug)]
pub struct RunningServices {
    shutdown: CancellationToken,
    tasks: JoinSet<ServiceTask>,
}

/// Starts every service; returns once all are listening and auth's keys exist.
pub async fn start(
    config: CloudConfig,
    listeners: CloudListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningCloud> {
    let urls = urls_of(&listeners)?;
    ensure_database(&config.database_url)
        .await
        .context("preparing the database")?;
    let pool =
        |schema: &'static str| schema_pool(&config.database_url, schema, config.db_pool_size);
    // The services' own credential on their gRPC calls to each other: the service
    // key, known once auth has started (below).
    let credential = ServiceCredential::pending();
    let authz = || {
        // One's own machine: AWS clients may use a minicloud token as their key id.
        Authz::connect_local(
            &urls.auth,
            config.policy_cache_ttl,
            credential.clone(),
            true,
        )
        .context("auth URL")
    };

    // Each metering service appends to its own journal, shipped to billing.
    let meters = |service: &'static str| {
        Meters::open(
            &config.metering,
            std::path::Path::new(".minicloud/meters"),
            service,
            Some(&urls.billing),
            credential.clone(),
        )
        .with_context(|| format!("opening {service}'s meter journal"))
    };

    // Independent start-ups run concurrently; migrations serialise on sqlx's lock.
    let redis = async { redis::Client::open(config.redis_url.as_str()).context("REDIS_URL") };

    let (auth, storage, docdb, bus, invoker, billing) = tokio::try_join!(
        async {
            let auth = Auth::new(
                config.auth.clone(),
                pool(minicloud_auth::SCHEMA).await?,
                authz()?,
                meters("auth")?,
            )
            .await?;
            credential.set(&auth.builtin_keys().await?.service_key);
            anyhow::Ok(auth)
        },
        async {
            let pool = pool(minicloud_storage::SCHEMA).await?;
            anyhow::Ok(
                Storage::new(
                    config.storage.clone(),
                    pool,
                    authz()?,
                    &urls.bus,
                    meters("storage")?,
                )
                .await?,
            )
        },
        async {
            let pool = pool(minicloud_docdb::SCHEMA).await?;
            anyhow::Ok(
                Docdb::new(
                    config.docdb.clone(),
                    pool,
                    authz()?,
                    &urls.bus,
                    meters("docdb")?,
                )
                .await?,
            )
        },
        async {
            let (pool, redis) = tokio::try_join!(pool(minicloud_bus::SCHEMA), redis)?;
            // Every service's own port is refused to webhooks; loopback and private
            // addresses are allowed (one machine, local development) unless the
            // operator said otherwise.
            let mut internal_ports = config.bus.internal_ports.clone();
            internal_ports.extend(listeners.iter().filter_map(|(name, listener)| {
                let port = listener.local_addr().ok()?.port();
                (name != ServiceName::Gateway).then_some(port)
            }));
            let bus = BusConfig {
                invoker_url: config
                    .bus
                    .invoker_url
                    .clone()
                    .or_else(|| Some(urls.invoker.clone())),
                docdb_url: config
                    .bus
                    .docdb_url
                    .clone()
                    .or_else(|| Some(urls.docdb.clone())),
                webhook_private: config.bus.webhook_private.or(Some(true)),
                internal_ports,
                ..config.bus.clone()
            };
            anyhow::Ok(Bus::new(bus, pool, redis, authz()?, meters("bus")?).await?)
        },
        async {
            let pool = pool(minicloud_invoker::SCHEMA).await?;
            let invoker = InvokerConfig {
                gateway_url: config
                    .invoker
                    .gateway_url
                    .clone()
                    .or_else(|| Some(urls.gateway.clone())),
                ..config.invoker.clone()
            };
            anyhow::Ok(
                Invoker::new(
                    invoker,
                    pool,
                    authz()?,
                    Some(&urls.bus),
                    Some(&urls.storage),
                    meters("invoker")?,
                )
                .await?,
            )
        },
        async {
            let pool = pool(minicloud_billing::SCHEMA).await?;
            anyhow::Ok(Billing::new(config.billing.clone(), pool, authz()?, &urls.bus).await?)
        },
    )?;
    let keys = auth
        .builtin_keys()
        .await
        .context("reading the built-in keys")?;
    // `minicloud up` is reached directly; behind a proxy, run `serve gateway`.
    let mut gateway = Gateway::new(&GatewayConfig::default(), &urls, authz()?)?;
    let hosted = [
        Hosted::new(auth, &shutdown),
        Hosted::new(storage, &shutdown),
        Hosted::new(docdb, &shutdown),
        Hosted::new(bus, &shutdown),
        Hosted::new(invoker, &shutdown),
        Hosted::new(billing, &shutdown),
    ];
    if config.gateway_dispatch == GatewayDispatch::InProcess {
        // The routers share their service's state with the ones served below.
        for service in &hosted {
            gateway = gateway.in_process(service.name, service.router.clone());
        }
    }
    let mut listeners = listeners.map(|_, listener| Some(listener));
    let services = RunningServices::spawn(
        hosted
            .into_iter()
            .chain([Hosted::new(gateway, &shutdown)])
            .map(|service| {
                let listener = listeners[service.name]
                    .take()
                    .expect("one listener per service");
                (service, listener)
            }),
        shutdown,
    );
    Ok(RunningCloud {
        urls,
        keys,
        services,
    })
}

impl RunningCloud {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.services.shutdown.clone()
    }

    /// Runs until shutdown is requested or a service fails ([`RunningServices::wait`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.services.wait().await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.services.stop().await
    }
}

impl RunningServices {
    /// Serves each service on its listener until `shutdown`.
    pub fn spawn(
        services: impl IntoIterator<Item = (Hosted, TcpListener)>,
        shutdown: CancellationToken,
    ) -> RunningServices {
        let mut tasks = JoinSet::new();
        for (service, listener) in services {
            let shutdown = shutdown.clone();
            tasks.spawn(async move { (service.name, service.run(listener, shutdown).await) });
        }
        RunningServices { shutdown, tasks }
    }

    /// Runs until shutdown is requested (or a service fails, which stops the rest),
    /// then drains for at most [`DRAIN_TIMEOUT`].
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                failure = Some(describe(joined));
                self.shutdown.cancel();
            }
        }
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Err(error) = describe(joined)
                    && failure.is_none()
                {
                    failure = Some(Err(error));
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("services did not drain in time; stopping them");
            self.tasks.abort_all();
        }
        match failure {
            Some(Err(error)) => Err(error),
            _ => Ok(()),
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn describe(joined: Result<ServiceTask, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok((_, Ok(()))) => Ok(()),
        Ok((service, Err(error))) => Err(anyhow::anyhow!("{service} stopped: {error}")),
        Err(error) => Err(anyhow::anyhow!("a service task failed: {error}")),
    }
}
