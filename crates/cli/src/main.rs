//! `minicloud`: parses arguments and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use minicloud_auth::AuthConfig;
use minicloud_bus::BusConfig;
use minicloud_cli::cloud::{self, CloudConfig, CloudListeners};
use minicloud_cli::config::{layered_args, redact_url};
use minicloud_cli::private_servers::{PrivateServer, ensure_postgres, ensure_redis};
use minicloud_docdb::DocdbConfig;
use minicloud_gateway::GatewayConfig;
use minicloud_invoker::InvokerConfig;
use minicloud_storage::StorageConfig;
use minicloud_telemetry::grpc_client::ServiceCredential;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "minicloud",
    version,
    about = "A mini cloud you run yourself",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process.
    Up(Box<UpArgs>),
    /// Run one service (docker compose, Kubernetes).
    Serve(Box<ServeArgs>),
    /// Events on the bus.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Functions: deploy, list, get, delete, invoke, logs.
    #[command(subcommand)]
    Fn(minicloud_cli::functions::FnCommand),
    /// Reference apps, set up and checked against a running cloud.
    #[command(subcommand)]
    Demo(minicloud_cli::demo::DemoCommand),
    /// API keys, straight from the database (no running cloud needed).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Mint an API key for a role and print it (shown once). The way back in when no
    /// working service key is left: `minicloud keys issue --role service`.
    Issue {
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "issued with minicloud keys")]
        name: String,
        /// Postgres URL of the cloud's database.
        #[arg(
            long = "database-url",
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/minicloud"
        )]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print a topic's new events as JSON lines until interrupted.
    Tail {
        topic: String,
        #[command(flatten)]
        connection: minicloud_cli::user::Connection,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// Postgres URL; the database is created when missing.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/minicloud"
    )]
    database_url: String,
    /// Redis URL.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Postgres connections per service.
    #[arg(
        long = "db-pool-size",
        env = "MINICLOUD_DB_POOL_SIZE",
        default_value_t = 8
    )]
    db_pool_size: u32,
    /// Config file (default: ./minicloud.toml when present).
    #[arg(long = "config", env = "MINICLOUD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where local state lives: objects, function code, private servers, credentials.
    #[arg(
        long = "data-dir",
        env = "MINICLOUD_DATA_DIR",
        default_value = ".minicloud"
    )]
    data_dir: PathBuf,
    /// Address every service listens on.
    #[arg(long = "host", env = "MINICLOUD_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(
        long = "gateway-port",
        env = "MINICLOUD_GATEWAY_PORT",
        default_value_t = 4600
    )]
    gateway_port: u16,
    #[arg(
        long = "auth-port",
        env = "MINICLOUD_AUTH_PORT",
        default_value_t = 4601
    )]
    auth_port: u16,
    #[arg(
        long = "storage-port",
        env = "MINICLOUD_STORAGE_PORT",
        default_value_t = 4602
    )]
    storage_port: u16,
    #[arg(
        long = "docdb-port",
        env = "MINICLOUD_DOCDB_PORT",
        default_value_t = 4603
    )]
    docdb_port: u16,
    #[arg(long = "bus-port", env = "MINICLOUD_BUS_PORT", default_value_t = 4604)]
    bus_port: u16,
    #[arg(
        long = "invoker-port",
        env = "MINICLOUD_INVOKER_PORT",
        default_value_t = 4605
    )]
    invoker_port: u16,
    #[command(flatten)]
    auth: AuthConfig,
    #[command(flatten)]
    storage: StorageConfig,
    #[command(flatten)]
    docdb: DocdbConfig,
    #[command(flatten)]
    bus: BusConfig,
    #[command(flatten)]
    invoker: InvokerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceName {
    Auth,
    Storage,
    Docdb,
    Bus,
    Invoker,
    Gateway,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// The service to run.
    service: ServiceName,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long = "host", env = "MINICLOUD_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (default: the service's standard port, 4600-4605).
    #[arg(long = "port", env = "MINICLOUD_PORT")]
    port: Option<u16>,
    /// gRPC URL of the auth service, for token verification.
    #[arg(
        long = "auth-url",
        env = "MINICLOUD_AUTH_URL",
        default_value = "http://127.0.0.1:4601"
    )]
    auth_url: String,
    /// gRPC URL of the bus, where outbox relays publish events.
    #[arg(
        long = "bus-url",
        env = "MINICLOUD_BUS_URL",
        default_value = "http://127.0.0.1:4604"
    )]
    bus_url: String,
    /// The service key every service presents on its gRPC calls to the others (and
    /// auth adopts as its built-in service key). Set the same value in every
    /// service (the Kubernetes Secret); `mck_` followed by at least 28 characters.
    #[arg(long = "service-key", env = "MINICLOUD_SERVICE_KEY")]
    service_key: Option<String>,
    /// A file holding the service key instead (docker compose: a shared volume).
    /// Auth writes its key there when the file does not exist yet; the other
    /// services wait for it.
    #[arg(long = "service-key-file", env = "MINICLOUD_SERVICE_KEY_FILE")]
    service_key_file: Option<PathBuf>,
    #[command(flatten)]
    gateway: GatewayConfig,
    #[command(flatten)]
    auth: AuthConfig,
    #[command(flatten)]
    storage: StorageConfig,
    #[command(flatten)]
    docdb: DocdbConfig,
    #[command(flatten)]
    bus: BusConfig,
    #[command(flatten)]
    invoker: InvokerConfig,
}

fn main() -> ExitCode {
    let started = Instant::now();
    let argv = match layered_args(&Cli::command(), std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("minicloud: {error:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("minicloud: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(*args, started).await,
            Command::Serve(args) => serve(*args).await,
            Command::Events(EventsCommand::Tail { topic, connection }) => {
                minicloud_cli::user::tail(&connection, &topic, std::io::stdout()).await
            }
            Command::Fn(command) => minicloud_cli::functions::run(command, std::io::stdout()).await,
            Command::Demo(command) => minicloud_cli::demo::run(command, std::io::stdout()).await,
            Command::Keys(KeysCommand::Issue {
                role,
                name,
                database_url,
            }) => {
                let pool =
                    minicloud_cli::postgres::schema_pool(&database_url, minicloud_auth::SCHEMA, 1)
                        .await?;
                let created = minicloud_auth::issue_api_key(&pool, &name, &role).await?;
                println!("{}", created.api_key);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("minicloud: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

fn log_store_config(store: &StoreArgs) {
    tracing::info!(
        database_url = %redact_url(&store.database_url),
        redis_url = %redact_url(&store.redis_url),
        db_pool_size = store.db_pool_size,
        "effective store config"
    );
}

fn write_credentials(
    data_dir: &Path,
    gateway_url: &str,
    keys: &minicloud_auth::BuiltinKeys,
) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("credentials.json");
    let body = serde_json::json!({
        "gateway_url": gateway_url,
        "anon_key": keys.anon_key,
        "service_key": keys.service_key,
    });
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    // An existing file keeps its old mode through `open`; make sure it is private.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(file, "{}", serde_json::to_string_pretty(&body)?)?;
    Ok(path)
}

async fn up(mut args: UpArgs, started: Instant) -> anyhow::Result<()> {
    let telemetry =
        minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig::from_env("minicloud"));
    log_store_config(&args.store);
    tracing::info!(config = ?Redacted(&args), "effective config");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());

    // Absolute from here on: private servers and function instances run in other
    // working dirs, where `.minicloud/…` would point elsewhere.
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let mut private: Vec<PrivateServer> = Vec::new();
    let (database_url, pg) = ensure_postgres(&args.store.database_url, &args.data_dir).await?;
    private.extend(pg);
    let (redis_url, redis) = ensure_redis(&args.store.redis_url, &args.data_dir).await?;
    private.extend(redis);

    args.storage
        .fs_root
        .get_or_insert_with(|| args.data_dir.join("objects"));
    args.invoker
        .code_dir
        .get_or_insert_with(|| args.data_dir.join("functions"));
    let ports = [
        args.gateway_port,
        args.auth_port,
        args.storage_port,
        args.docdb_port,
        args.bus_port,
        args.invoker_port,
    ];
    let result = async {
        let listeners = CloudListeners::bind(&args.host, ports).await.context("binding the service ports")?;
        let config = CloudConfig {
            database_url,
            redis_url,
            db_pool_size: args.store.db_pool_size,
            auth: args.auth.clone(),
            storage: args.storage.clone(),
            docdb: args.docdb.clone(),
            bus: args.bus.clone(),
            invoker: args.invoker.clone(),
            policy_cache_ttl: minicloud_authz::POLICY_CACHE_TTL,
            gateway_dispatch: cloud::GatewayDispatch::InProcess,
        };
        let running = cloud::start(config, listeners, shutdown.clone()).await?;
        let credentials = write_credentials(&args.data_dir, &running.urls.gateway, &running.keys)?;
        let elapsed = started.elapsed();
        println!("minicloud is up in {} ms", elapsed.as_millis());
        println!("  gateway      {}", running.urls.gateway);
        println!("  anon key     {}", running.keys.anon_key);
        println!("  service key  {}", running.keys.service_key);
        println!("  credentials  {}", credentials.display());
        println!("Press Ctrl-C to stop.");
        tracing::info!(startup_ms = elapsed.as_millis() as u64, gateway = %running.urls.gateway, "minicloud is up");
        running.wait().await
    }
    .await;
    for server in private {
        server.stop().await;
    }
    telemetry.shutdown();
    result
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    let name = format!("minicloud-{:?}", args.service).to_lowercase();
    let telemetry =
        minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig::from_env(name));
    log_store_config(&args.store);
    tracing::info!(config = ?Redacted(&args), "effective config");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let default_port = match args.service {
        ServiceName::Gateway => 4600,
        ServiceName::Auth => 4601,
        ServiceName::Storage => 4602,
        ServiceName::Docdb => 4603,
        ServiceName::Bus => 4604,
        ServiceName::Invoker => 4605,
    };
    let listener =
        tokio::net::TcpListener::bind((args.host.as_str(), args.port.unwrap_or(default_port)))
            .await
            .context("binding the port")?;
    tracing::info!(service = ?args.service, addr = %listener.local_addr()?, "listening");
    let store = &args.store;
    let pool = |schema: &'static str| async move {
        minicloud_cli::postgres::ensure_database(&store.database_url).await?;
        minicloud_cli::postgres::schema_pool(&store.database_url, schema, store.db_pool_size).await
    };
    let service_key = service_key(&args).await?;
    let credential = match &service_key {
        Some(key) => ServiceCredential::with_key(key),
        None => {
            tracing::warn!(
                "no service key (MINICLOUD_SERVICE_KEY or MINICLOUD_SERVICE_KEY_FILE): \
                 this service's calls to the others will be refused"
            );
            ServiceCredential::pending()
        }
    };
    let authz =
        || minicloud_authz::Authz::connect(&args.auth_url, credential.clone()).context("auth URL");
    let result = match args.service {
        ServiceName::Gateway => {
            let gateway = minicloud_gateway::Gateway::new(&args.gateway)?;
            minicloud_gateway::run(gateway, listener, shutdown).await
        }
        ServiceName::Auth => {
            let auth = minicloud_auth::Auth::new(
                args.auth.clone(),
                pool(minicloud_auth::SCHEMA).await?,
                authz()?,
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
            minicloud_auth::run(auth, listener, shutdown).await
        }
        ServiceName::Storage => {
            args.storage
                .fs_root
                .get_or_insert_with(|| PathBuf::from("/var/lib/minicloud/objects"));
            let storage = minicloud_storage::Storage::new(
                args.storage.clone(),
                pool(minicloud_storage::SCHEMA).await?,
                authz()?,
                &args.bus_url,
            )
            .await?;
            minicloud_storage::run(storage, listener, shutdown).await
        }
        ServiceName::Docdb => {
            let docdb = minicloud_docdb::Docdb::new(
                args.docdb.clone(),
                pool(minicloud_docdb::SCHEMA).await?,
                authz()?,
                &args.bus_url,
            )
            .await?;
            minicloud_docdb::run(docdb, listener, shutdown).await
        }
        ServiceName::Bus => {
            let redis = redis::Client::open(args.store.redis_url.as_str())?;
            let bus = minicloud_bus::Bus::new(
                args.bus.clone(),
                pool(minicloud_bus::SCHEMA).await?,
                redis,
                authz()?,
            )
            .await?;
            minicloud_bus::run(bus, listener, shutdown).await
        }
        ServiceName::Invoker => {
            args.invoker
                .code_dir
                .get_or_insert_with(|| PathBuf::from("/var/lib/minicloud/functions"));
            let invoker = minicloud_invoker::Invoker::new(
                args.invoker.clone(),
                pool(minicloud_invoker::SCHEMA).await?,
                authz()?,
                Some(&args.bus_url),
            )
            .await?;
            minicloud_invoker::run(invoker, listener, shutdown).await
        }
    };
    telemetry.shutdown();
    Ok(result?)
}

/// Debug-prints a config with every URL's password replaced.
/// The service key from the flag, or from its file: auth reads an existing file
/// (and otherwise writes its own key there once started), the others wait up to a
/// minute for auth to write it.
async fn service_key(args: &ServeArgs) -> anyhow::Result<Option<String>> {
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
            _ if args.service == ServiceName::Auth => return Ok(None),
            _ if Instant::now() > deadline => anyhow::bail!(
                "no service key in {} after a minute (auth writes it there)",
                path.display()
            ),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
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

struct Redacted<'a, T>(&'a T);

impl<T: std::fmt::Debug> std::fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = format!("{:?}", self.0);
        // Service keys (`mck_…`) never reach the log.
        let text = text
            .split('"')
            .enumerate()
            .map(|(i, part)| {
                if i % 2 == 1 && part.starts_with("mck_") {
                    "mck_<redacted>".to_owned()
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\"");
        // Debug output quotes URLs; redact each quoted token that looks like one.
        let redacted: Vec<String> = text
            .split('"')
            .enumerate()
            .map(|(i, part)| {
                if i % 2 == 1 && part.contains("://") {
                    redact_url(part)
                } else {
                    part.to_owned()
                }
            })
            .collect();
        f.write_str(&redacted.join("\""))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        // Catches clashing argument ids between flattened configs, which clap
        // reports only at run time.
        super::Cli::command().debug_assert();
    }
}
