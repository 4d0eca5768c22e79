//! `minicloud serve auth,storage,…`: one or several services in this process, each
//! on its own port, finding the others at the service URLs (docker compose,
//! Kubernetes). The settings shared with `up` live here too.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context as _;
use minicloud_auth::AuthConfig;
use minicloud_bus::BusConfig;
use minicloud_docdb::DocdbConfig;
use minicloud_gateway::GatewayConfig;
use minicloud_invoker::InvokerConfig;
use minicloud_proto::services::{PerService, ServiceName};
use minicloud_storage::StorageConfig;
use minicloud_telemetry::grpc_client::ServiceCredential;
use minicloud_telemetry::server::Hosted;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cloud::RunningServices;

/// Where the cloud's state lives, shared by `up` and `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Postgres URL; the database is created when missing.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/minicloud"
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Postgres connections per service.
    #[arg(
        long = "db-pool-size",
        env = "MINICLOUD_DB_POOL_SIZE",
        default_value_t = 8
    )]
    pub db_pool_size: u32,
    /// Config file (default: ./minicloud.toml when present).
    #[arg(long = "config", env = "MINICLOUD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `SERVICE=VALUE`, or a bare `VALUE` where only one service can be meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSetting<T> {
    pub service: Option<ServiceName>,
    pub value: T,
}

impl<T: FromStr> FromStr for ServiceSetting<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (service, value) = match text.split_once('=') {
            Some((service, value)) => (
                Some(service.trim().parse().map_err(|e| format!("{e}"))?),
                value.trim(),
            ),
            None => (None, text.trim()),
        };
        let value = value.parse().map_err(|e| format!("{value:?}: {e}"))?;
        Ok(ServiceSetting { service, value })
    }
}

/// Each of `services`' values: its default, overridden by `settings` (a bare value
/// only when `services` is a single one).
pub fn per_service<T: Clone>(
    settings: &[ServiceSetting<T>],
    services: &[ServiceName],
    default: impl Fn(ServiceName) -> T,
    what: &str,
) -> anyhow::Result<PerService<T>> {
    let mut values = PerService::from_fn(default);
    for setting in settings {
        let service = match (setting.service, services) {
            (Some(service), _) => service,
            (None, [only]) => *only,
            (None, _) => anyhow::bail!(
                "which service's {what}? name it: --{what} SERVICE={}",
                what.to_uppercase()
            ),
        };
        values[service] = setting.value.clone();
    }
    Ok(values)
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The services to run, comma-separated: gateway, auth, storage, docdb, bus,
    /// invoker, billing.
    #[arg(value_delimiter = ',', required = true)]
    pub services: Vec<ServiceName>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long = "host", env = "MINICLOUD_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Ports, as `SERVICE=PORT` (comma-separated or repeated); a bare `PORT` when
    /// serving one service. Default: each service's standard port (4600-4606).
    #[arg(
        long = "port",
        env = "MINICLOUD_PORT",
        value_delimiter = ',',
        value_name = "[SERVICE=]PORT"
    )]
    pub ports: Vec<ServiceSetting<u16>>,
    /// Where the other services are, as `SERVICE=URL` (comma-separated or
    /// repeated). Default: `http://127.0.0.1:` and the service's standard port. The
    /// services served here are always reached on their own listeners.
    #[arg(
        long = "service-url",
        env = "MINICLOUD_SERVICE_URLS",
        value_delimiter = ',',
        value_name = "SERVICE=URL"
    )]
    pub service_urls: Vec<ServiceSetting<String>>,
    /// The service key every service presents on its gRPC calls to the others (and
    /// auth adopts as its built-in service key). Set the same value in every
    /// service (the Kubernetes Secret); `mck_` followed by at least 28 characters.
    #[arg(long = "service-key", env = "MINICLOUD_SERVICE_KEY")]
    pub service_key: Option<String>,
    /// A file holding the service key instead (docker compose: a shared volume).
    /// Auth writes its key there when the file does not exist yet; the other
    /// services wait for it.
    #[arg(long = "service-key-file", env = "MINICLOUD_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// Where kept traces and log lines go: `postgres` — every process of the
    /// deployment forwards them into the database (schema `telemetry`) and the
    /// gateway answers `/traces/v1` from there, across replicas and restarts — or
    /// `memory`, each process keeping its own (the gateway then shows its own and
    /// the functions' spans only).
    #[arg(
        long = "traces-store",
        env = "MINICLOUD_TRACES_STORE",
        value_enum,
        default_value_t = TracesStore::Postgres
    )]
    pub traces_store: TracesStore,
    #[command(flatten)]
    pub gateway: GatewayConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub docdb: DocdbConfig,
    #[command(flatten)]
    pub bus: BusConfig,
    #[command(flatten)]
    pub invoker: InvokerConfig,
    #[command(flatten)]
    pub billing: minicloud_billing::BillingConfig,
    #[command(flatten)]
    pub metering: minicloud_metering::MeteringConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TracesStore {
    Postgres,
    Memory,
}

impl ServeArgs {
    /// The services asked for, once each, gateway last (it may dispatch into the
    /// others' routers).
    fn services(&self) -> Vec<ServiceName> {
        let mut services = self.services.clone();
        services.sort_by_key(|&s| (s == ServiceName::Gateway, s));
        services.dedup();
        services
    }
}

/// Serves `args.services` until `shutdown`; the first to fail stops the rest.
pub async fn serve(mut args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services = args.services();
    let ports = per_service(&args.ports, &services, ServiceName::default_port, "port")?;
    let mut urls = per_service(
        &args.service_urls,
        &services,
        ServiceName::default_url,
        "service-url",
    )?;
    let mut listeners = PerService::<Option<TcpListener>>::default();
    for &service in &services {
        let listener = TcpListener::bind((args.host.as_str(), ports[service]))
            .await
            .with_context(|| format!("binding {service}'s port {}", ports[service]))?;
        let addr = listener.local_addr()?;
        tracing::info!(%service, %addr, "listening");
        // Served here: reached on its own listener, over loopback.
        urls[service] = format!("http://127.0.0.1:{}", addr.port());
        listeners[service] = Some(listener);
    }

    let store = &args.store;
    let pool_of = |schema: &'static str, size: u32| async move {
        crate::postgres::ensure_database(&store.database_url).await?;
        crate::postgres::schema_pool(&store.database_url, schema, size).await
    };
    let pool = |schema: &'static str| pool_of(schema, store.db_pool_size);
    let service_key = service_key(&args, services.contains(&ServiceName::Auth)).await?;
    let credential = match &service_key {
        Some(key) => ServiceCredential::with_key(key),
        None if services.contains(&ServiceName::Auth) => ServiceCredential::pending(),
        None => {
            tracing::warn!(
                "no service key (MINICLOUD_SERVICE_KEY or MINICLOUD_SERVICE_KEY_FILE): \
                 this service's calls to the others will be refused"
            );
            ServiceCredential::pending()
        }
    };
    let authz =
        || minicloud_authz::Authz::connect(&urls.auth, credential.clone()).context("auth URL");
    let keep_traces = minicloud_telemetry::TelemetryConfig::from_env("").keep_traces;
    let shared_store = if keep_traces && args.traces_store == TracesStore::Postgres {
        use minicloud_telemetry::shared_store::{SCHEMA, SharedStore};
        // Two connections: one batched insert at a time, and the gateway's reads.
        let pool = pool_of(SCHEMA, 2).await?;
        let shared = SharedStore::open(
            pool,
            minicloud_telemetry::trace_store::TraceStoreLimits::from_env(),
        )
        .await
        .context("the shared trace store")?;
        shared.forward_this_process(shutdown.clone());
        Some(shared)
    } else {
        None
    };

    // Each metering service appends to its own journal, shipped to billing.
    let meters = |service: &'static str| {
        minicloud_metering::Meters::open(
            &args.metering,
            Path::new(".minicloud/meters"),
            service,
            Some(&urls.billing),
            credential.clone(),
        )
        .with_context(|| format!("opening {service}'s meter journal"))
    };
    let mut hosted: Vec<Hosted> = Vec::new();
    for &service in &services {
        hosted.push(match service {
            ServiceName::Auth => {
                let auth = minicloud_auth::Auth::new(
                    args.auth.clone(),
                    pool(minicloud_auth::SCHEMA).await?,
                    authz()?,
                    meters("auth")?,
                )
                .await?;
                if let Some(key) = &service_key {
                    auth.adopt_service_key(key).await?;
                }
                // Like `up`, show the built-in keys (compose users read them with
                // `docker compose logs auth`).
                let keys = auth.builtin_keys().await?;
                credential.set(&keys.service_key);
                if let Some(path) = &args.service_key_file
                    && service_key.is_none()
                {
                    write_secret_file(path, &keys.service_key)?;
                }
                println!("anon key     {}", keys.anon_key);
                println!("service key  {}", keys.service_key);
                Hosted::new(auth, &shutdown)
            }
            ServiceName::Storage => {
                args.storage
                    .fs_root
                    .get_or_insert_with(|| PathBuf::from("/var/lib/minicloud/objects"));
                let storage = minicloud_storage::Storage::new(
                    args.storage.clone(),
                    pool(minicloud_storage::SCHEMA).await?,
                    authz()?,
                    &urls.bus,
                    meters("storage")?,
                )
                .await?;
                Hosted::new(storage, &shutdown)
            }
            ServiceName::Docdb => {
                let docdb = minicloud_docdb::Docdb::new(
                    args.docdb.clone(),
                    pool(minicloud_docdb::SCHEMA).await?,
                    authz()?,
                    &urls.bus,
                    meters("docdb")?,
                )
                .await?;
                Hosted::new(docdb, &shutdown)
            }
            ServiceName::Bus => {
                let redis = redis::Client::open(args.store.redis_url.as_str())?;
                let config = BusConfig {
                    invoker_url: Some(urls.invoker.clone()),
                    docdb_url: Some(urls.docdb.clone()),
                    ..args.bus.clone()
                };
                let bus = minicloud_bus::Bus::new(
                    config,
                    pool(minicloud_bus::SCHEMA).await?,
                    redis,
                    authz()?,
                    meters("bus")?,
                )
                .await?;
                Hosted::new(bus, &shutdown)
            }
            ServiceName::Invoker => {
                let config = InvokerConfig {
                    code_dir: args
                        .invoker
                        .code_dir
                        .clone()
                        .or_else(|| Some(PathBuf::from("/var/lib/minicloud/functions"))),
                    gateway_url: Some(urls.gateway.clone()),
                    ..args.invoker.clone()
                };
                let invoker = minicloud_invoker::Invoker::new(
                    config,
                    pool(minicloud_invoker::SCHEMA).await?,
                    authz()?,
                    Some(&urls.bus),
                    Some(&urls.storage),
                    meters("invoker")?,
                )
                .await?;
                Hosted::new(invoker, &shutdown)
            }
            ServiceName::Billing => {
                let billing = minicloud_billing::Billing::new(
                    args.billing.clone(),
                    pool(minicloud_billing::SCHEMA).await?,
                    authz()?,
                    &urls.bus,
                )
                .await?;
                Hosted::new(billing, &shutdown)
            }
            ServiceName::Gateway => {
                let mut gateway = minicloud_gateway::Gateway::new(&args.gateway, &urls, authz()?)?;
                if let Some(shared) = &shared_store {
                    gateway = gateway.with_shared_store(shared.clone());
                }
                // Services served beside it are called straight through their
                // routers, as under `up`.
                for other in &hosted {
                    gateway = gateway.in_process(other.name, other.router.clone());
                }
                Hosted::new(gateway, &shutdown)
            }
        });
    }
    let running = RunningServices::spawn(
        hosted.into_iter().map(|service| {
            let listener = listeners[service.name]
                .take()
                .expect("a listener per service served");
            (service, listener)
        }),
        shutdown,
    );
    running.wait().await
}

/// The service key from the flag, or from its file: auth reads an existing file
/// (and otherwise writes its own key there once started), the others wait up to a
/// minute for auth to write it.
async fn service_key(args: &ServeArgs, serving_auth: bool) -> anyhow::Result<Option<String>> {
    if let Some(key) = &args.service_key {
        return Ok(Some(key.trim().to_owned()));
    }
    let Some(path) = &args.service_key_file else {
        return Ok(None);
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match std::fs::read_to_string(path) {
            Ok(key) if !key.trim().is_empty() => return Ok(Some(key.trim().to_owned())),
            _ if serving_auth => return Ok(None),
            _ if Instant::now() > deadline => anyhow::bail!(
                "no service key in {} after a minute (auth writes it there)",
                path.display()
            ),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let staging = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("writing {}", staging.display()))?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: FromStr>(text: &str) -> ServiceSetting<T>
    where
        T::Err: std::fmt::Display,
    {
        text.parse().unwrap()
    }

    #[test]
    fn named_settings_apply_to_their_service_and_bare_ones_only_to_a_single_service() {
        let ports = per_service(
            &[parse("auth=5601"), parse("gateway=0")],
            &ServiceName::ALL,
            ServiceName::default_port,
            "port",
        )
        .unwrap();
        assert_eq!((ports.gateway, ports.auth, ports.storage), (0, 5601, 4602));

        let one = per_service(
            &[parse("8080")],
            &[ServiceName::Storage],
            ServiceName::default_port,
            "port",
        )
        .unwrap();
        assert_eq!((one.storage, one.auth), (8080, 4601));

        let ambiguous = per_service(
            &[parse::<u16>("8080")],
            &[ServiceName::Auth, ServiceName::Storage],
            ServiceName::default_port,
            "port",
        );
        assert!(
            ambiguous
                .unwrap_err()
                .to_string()
                .contains("--port SERVICE=PORT")
        );
    }

    #[test]
    fn bad_settings_are_refused_with_what_was_wrong() {
        let unknown = "authz=1".parse::<ServiceSetting<u16>>().unwrap_err();
        assert!(unknown.contains("unknown service"), "{unknown}");
        let not_a_port = "auth=70000".parse::<ServiceSetting<u16>>().unwrap_err();
        assert!(not_a_port.contains("70000"), "{not_a_port}");
        let url = "bus=http://bus:4604"
            .parse::<ServiceSetting<String>>()
            .unwrap();
        assert_eq!(url.service, Some(ServiceName::Bus));
        assert_eq!(url.value, "http://bus:4604");
    }
}
