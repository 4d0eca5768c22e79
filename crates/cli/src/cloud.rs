//! Composes the six services into one cloud: pools per schema, the authz client of
//! each service, one listener each, gRPC between them over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use minicloud_auth::{Auth, AuthConfig, BuiltinKeys};
use minicloud_authz::Authz;
use minicloud_bus::{Bus, BusConfig};
use minicloud_docdb::{Docdb, DocdbConfig};
use minicloud_gateway::{Gateway, GatewayConfig, Service};
use minicloud_invoker::{Invoker, InvokerConfig};
use minicloud_storage::{Storage, StorageConfig};
use minicloud_telemetry::grpc_client::ServiceCredential;
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

#[derive(Debug)]
pub struct CloudListeners {
    pub gateway: TcpListener,
    pub auth: TcpListener,
    pub storage: TcpListener,
    pub docdb: TcpListener,
    pub bus: TcpListener,
    pub invoker: TcpListener,
}

impl CloudListeners {
    /// Binds the six ports on `host`, in the order gateway, auth, storage, docdb, bus,
    /// invoker; port 0 picks a free one.
    pub async fn bind(host: &str, ports: [u16; 6]) -> std::io::Result<CloudListeners> {
        let bind = |port: u16| TcpListener::bind((host.to_owned(), port));
        Ok(CloudListeners {
            gateway: bind(ports[0]).await?,
            auth: bind(ports[1]).await?,
            storage: bind(ports[2]).await?,
            docdb: bind(ports[3]).await?,
            bus: bind(ports[4]).await?,
            invoker: bind(ports[5]).await?,
        })
    }
}

fn url_of(listener: &TcpListener) -> std::io::Result<String> {
    let addr: SocketAddr = listener.local_addr()?;
    Ok(format!("http://{addr}"))
}

#[derive(Debug, Clone)]
pub struct ServiceUrls {
    pub gateway: String,
    pub auth: String,
    pub storage: String,
    pub docdb: String,
    pub bus: String,
    pub invoker: String,
}

type ServiceTask = (&'static str, std::io::Result<()>);

#[derive(Debug)]
pub struct RunningCloud {
    pub urls: ServiceUrls,
    pub keys: BuiltinKeys,
    shutdown: CancellationToken,
    tasks: JoinSet<ServiceTask>,
}

/// Starts every service; returns once all are listening and auth's keys exist.
pub async fn start(
    config: CloudConfig,
    listeners: CloudListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningCloud> {
    let urls = ServiceUrls {
        gateway: url_of(&listeners.gateway)?,
        auth: url_of(&listeners.auth)?,
        storage: url_of(&listeners.storage)?,
        docdb: url_of(&listeners.docdb)?,
        bus: url_of(&listeners.bus)?,
        invoker: url_of(&listeners.invoker)?,
    };
    ensure_database(&config.database_url)
        .await
        .context("preparing the database")?;
    let pool =
        |schema: &'static str| schema_pool(&config.database_url, schema, config.db_pool_size);
    // The services' own credential on their gRPC calls to each other: the service
    // key, known once auth has started (below).
    let credential = ServiceCredential::pending();
    let authz = || {
        Authz::connect_with_policy_ttl(&urls.auth, config.policy_cache_ttl, credential.clone())
            .context("auth URL")
    };

    // Independent start-ups run concurrently; migrations serialise on sqlx's lock.
    let redis = async { redis::Client::open(config.redis_url.as_str()).context("REDIS_URL") };

    let (auth, storage, docdb, bus, invoker) = tokio::try_join!(
        async {
            let auth = Auth::new(
                config.auth.clone(),
                pool(minicloud_auth::SCHEMA).await?,
                authz()?,
            )
            .await?;
            credential.set(&auth.builtin_keys().await?.service_key);
            anyhow::Ok(auth)
        },
        async {
            let pool = pool(minicloud_storage::SCHEMA).await?;
            anyhow::Ok(Storage::new(config.storage.clone(), pool, authz()?, &urls.bus).await?)
        },
        async {
            let pool = pool(minicloud_docdb::SCHEMA).await?;
            anyhow::Ok(Docdb::new(config.docdb.clone(), pool, authz()?, &urls.bus).await?)
        },
        async {
            let (pool, redis) = tokio::try_join!(pool(minicloud_bus::SCHEMA), redis)?;
            // Every service's own port is refused to webhooks; loopback and private
            // addresses are allowed (one machine, local development) unless the
            // operator said otherwise.
            let mut internal_ports = config.bus.internal_ports.clone();
            internal_ports.extend(
                [
                    &urls.auth,
                    &urls.storage,
                    &urls.docdb,
                    &urls.bus,
                    &urls.invoker,
                ]
                .iter()
                .filter_map(|u| {
                    u.trim_end_matches('/')
                        .rsplit(':')
                        .next()?
                        .parse::<u16>()
                        .ok()
                }),
            );
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
            anyhow::Ok(Bus::new(bus, pool, redis, authz()?).await?)
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
            anyhow::Ok(Invoker::new(invoker, pool, authz()?, Some(&urls.bus)).await?)
        },
    )?;
    let keys = auth
        .builtin_keys()
        .await
        .context("reading the built-in keys")?;
    let mut gateway = Gateway::new(&GatewayConfig {
        auth_url: urls.auth.clone(),
        storage_url: urls.storage.clone(),
        docdb_url: urls.docdb.clone(),
        bus_url: urls.bus.clone(),
        invoker_url: urls.invoker.clone(),
        // `minicloud up` is reached directly; behind a proxy, run `serve gateway`.
        trusted_proxies: 0,
    })?;
    if config.gateway_dispatch == GatewayDispatch::InProcess {
        // The routers share their service's state with the ones served below.
        gateway = gateway
            .in_process(Service::Auth, auth.clone().into_router())
            .in_process(Service::Storage, storage.clone().into_router())
            .in_process(Service::Docdb, docdb.clone().into_router())
            .in_process(Service::Bus, bus.clone().into_router())
            .in_process(Service::Invoker, invoker.clone().into_router());
    }

    let mut tasks = JoinSet::new();
    let token = || shutdown.clone();
    let CloudListeners {
        gateway: gl,
        auth: al,
        storage: sl,
        docdb: dl,
        bus: bl,
        invoker: il,
    } = listeners;
    tasks.spawn({
        let t = token();
        async move { ("auth", minicloud_auth::run(auth, al, t).await) }
    });
    tasks.spawn({
        let t = token();
        async move { ("storage", minicloud_storage::run(storage, sl, t).await) }
    });
    tasks.spawn({
        let t = token();
        async move { ("docdb", minicloud_docdb::run(docdb, dl, t).await) }
    });
    tasks.spawn({
        let t = token();
        async move { ("bus", minicloud_bus::run(bus, bl, t).await) }
    });
    tasks.spawn({
        let t = token();
        async move { ("invoker", minicloud_invoker::run(invoker, il, t).await) }
    });
    tasks.spawn({
        let t = token();
        async move { ("gateway", minicloud_gateway::run(gateway, gl, t).await) }
    });
    Ok(RunningCloud {
        urls,
        keys,
        shutdown,
        tasks,
    })
}

impl RunningCloud {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
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
