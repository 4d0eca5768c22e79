//! `minicloud`: parses arguments and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use minicloud_auth::AuthConfig;
use minicloud_bus::BusConfig;
use minicloud_cli::cloud::{self, CloudConfig};
use minicloud_cli::config::{layered_args, redact_url};
use minicloud_cli::private_servers::{PrivateServer, ensure_postgres, ensure_redis};
use minicloud_cli::serve::{ServeArgs, ServiceSetting, StoreArgs, per_service};
use minicloud_docdb::DocdbConfig;
use minicloud_invoker::InvokerConfig;
use minicloud_proto::services::ServiceName;
use minicloud_storage::StorageConfig;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: a warm invoke allocates and frees a few
/// hundred small buffers (headers, bodies, futures) across threads, and glibc's
/// malloc and free took ~18% of the invoker bench's CPU at c = 32
/// (`malloc_consolidate` alone ~3%: it runs on every allocation of 1 KiB or more
/// while freed small chunks wait); mimalloc cut the CPU per call by 16–20% and
/// raised c = 32 throughput ~15% (docs/benchmarks.md, issue 21).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run some services, each on its own port (docker compose, Kubernetes):
    /// `serve auth`, `serve auth,storage`.
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
    /// This month's usage and estimated cost (`--by function`, `--json`).
    Usage(minicloud_cli::usage::UsageArgs),
    /// The web console: prints its URL and opens a browser where one exists.
    Console {
        #[command(flatten)]
        connection: minicloud_cli::user::Connection,
    },
    /// Auth's local mail outbox: recovery and sign-in mails, newest first (no
    /// mail server exists in a local cloud).
    Mail {
        /// Only mails to this address.
        #[arg(long)]
        to: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        connection: minicloud_cli::user::Connection,
    },
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
        /// An AWS-style key pair (access key id and secret access key, for the AWS
        /// SDKs and CLI) instead of a bearer key.
        #[arg(long)]
        aws: bool,
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
    /// Ports, as `SERVICE=PORT` (comma-separated or repeated); 0 picks a free one.
    /// Default: 4600 for the gateway, 4601-4606 for auth, storage, docdb, bus,
    /// invoker and billing.
    #[arg(
        long = "port",
        env = "MINICLOUD_PORT",
        value_delimiter = ',',
        value_name = "SERVICE=PORT"
    )]
    ports: Vec<ServiceSetting<u16>>,
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
    #[command(flatten)]
    billing: minicloud_billing::BillingConfig,
    #[command(flatten)]
    metering: minicloud_metering::MeteringConfig,
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
            Command::Mail {
                to,
                limit,
                connection,
            } => {
                minicloud_cli::user::mail(&connection, to.as_deref(), limit, std::io::stdout())
                    .await
            }
            Command::Usage(args) => minicloud_cli::usage::run(args, std::io::stdout()).await,
            Command::Console { connection } => {
                minicloud_cli::user::console(&connection, std::io::stdout())
            }
            Command::Demo(command) => minicloud_cli::demo::run(command, std::io::stdout()).await,
            Command::Keys(KeysCommand::Issue {
                role,
                name,
                aws,
                database_url,
            }) => {
                let pool =
                    minicloud_cli::postgres::schema_pool(&database_url, minicloud_auth::SCHEMA, 1)
                        .await?;
                if aws {
                    let created = minicloud_auth::issue_aws_key(&pool, &name, &role).await?;
                    println!(
                        "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}",
                        created.key.access_key_id.unwrap_or_default(),
                        created.secret_access_key.unwrap_or_default()
                    );
                } else {
                    let created = minicloud_auth::issue_api_key(&pool, &name, &role).await?;
                    println!("{}", created.api_key.unwrap_or_default());
                }
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
    args.metering
        .dir
        .get_or_insert_with(|| args.data_dir.join("meters"));
    let result = async {
        let ports = per_service(&args.ports, &ServiceName::ALL, ServiceName::default_port, "port")?;
        let listeners = cloud::bind_listeners(&args.host, &ports).await.context("binding the service ports")?;
        let config = CloudConfig {
            database_url,
            redis_url,
            db_pool_size: args.store.db_pool_size,
            auth: args.auth.clone(),
            storage: args.storage.clone(),
            docdb: args.docdb.clone(),
            bus: args.bus.clone(),
            invoker: args.invoker.clone(),
            billing: args.billing.clone(),
            metering: args.metering.clone(),
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = args.services.iter().map(|s| s.as_str()).collect();
    let name = format!("minicloud-{}", names.join("-"));
    let telemetry =
        minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig::from_env(name));
    log_store_config(&args.store);
    tracing::info!(config = ?Redacted(&args), "effective config");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let result = minicloud_cli::serve::serve(args, shutdown).await;
    telemetry.shutdown();
    result
}

/// Debug-prints a config with every URL's password replaced.
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
