//! The invoker service (`/functions/v1`): deploys functions and runs them as
//! processes speaking the AWS Lambda Runtime API (docs/design.md §5.5).
//!
//! - [`registry`]: deploy, get, list, delete; [`bundle`]: zip checks and the code cache.
//! - [`engine`]: instances per function — cold start, warm reuse, idle stop, limits.
//! - [`instance`]: one process and its Runtime API endpoint.
//! - [`invoke`]: invoke (ours and the Lambda Invoke API) and logs; [`triggers`]: bus
//!   events, async invocations and HTTP routes.

pub mod bundle;
pub mod engine;
mod function_subscriptions;
pub mod instance;
pub mod invoke;
mod lambda_api;
pub mod logs;
pub mod metrics;
pub mod prestart;
mod provisioned_meter;
pub mod registry;
pub mod sandbox;
pub mod triggers;

use minicloud_authz::{Action, Resource};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{any, get, post, put};
use minicloud_authz::Authz;
use minicloud_proto::bus::v1::bus_service_client::BusServiceClient;
use minicloud_proto::invoker::v1::invoker_service_server::{InvokerService, InvokerServiceServer};
use minicloud_proto::invoker::v1::{
    Function, InvokeRequest, InvokeResponse, ListFunctionsRequest, ListFunctionsResponse,
};
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::grpc_client::TracedChannel;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, check_writable_dir, readiness,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Paths};
use crate::sandbox::{Egress, Sandbox, SandboxConfig, SandboxMode};

pub const SCHEMA: &str = "invoker";

pub type BusClient = BusServiceClient<TracedChannel>;
pub type StorageClient =
    minicloud_proto::storage::v1::storage_service_client::StorageServiceClient<TracedChannel>;

/// The REST API of this service, served at `/functions/v1/openapi.json`.
use minicloud_proto::openapi::ErrorResponses;

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud invoker",
        description = "Functions: deploy, invoke (also as the AWS Lambda Invoke API at /2015-03-31/functions/{name}/invocations), triggers, logs."
    ),
    paths(
        registry::create,
        registry::replace,
        registry::put_code,
        registry::get,
        registry::list,
        registry::delete,
        registry::sandbox,
        invoke::invoke,
        invoke::lambda_invoke,
        lambda_api::create_function,
        lambda_api::list_functions,
        lambda_api::get_function,
        lambda_api::get_configuration,
        lambda_api::delete_function,
        lambda_api::update_code,
        lambda_api::update_configuration,
        lambda_api::put_concurrency,
        lambda_api::delete_concurrency,
        invoke::logs,
        invoke::instances,
        triggers::create,
        triggers::list,
        triggers::delete,
        triggers::edge_invoke
    ),
    components(schemas(
        minicloud_proto::error::ErrorBody,
        sandbox::Protections,
        sandbox::NetworkPolicy,
        registry::SandboxStatus,
        prestart::PrestartStatus
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, clap::Args)]
pub struct InvokerConfig {
    /// Where unpacked function code is cached, per code hash (instances' working
    /// dirs live beside it).
    #[arg(long = "invoker-code-dir", env = "MINICLOUD_INVOKER_CODE_DIR")]
    pub code_dir: Option<PathBuf>,
    /// The Python interpreter for the python3 runtime (default: the real
    /// interpreter behind `python3` on PATH, resolved once — not a pyenv shim).
    #[arg(long = "invoker-python", env = "MINICLOUD_INVOKER_PYTHON")]
    pub python: Option<PathBuf>,
    /// The Node.js binary for the nodejs runtime (default: `node` on PATH).
    #[arg(long = "invoker-node", env = "MINICLOUD_INVOKER_NODE")]
    pub node: Option<PathBuf>,
    /// What functions see as AWS_REGION and in their ARNs.
    #[arg(
        long = "invoker-region",
        env = "MINICLOUD_INVOKER_REGION",
        default_value_t = InvokerConfig::default().region
    )]
    pub region: String,
    /// The gateway URL functions get as MINICLOUD_URL (from the service URLs,
    /// filled in by whoever starts the invoker).
    #[arg(skip)]
    pub gateway_url: Option<String>,
    /// Where functions send their traces (`OTEL_EXPORTER_OTLP_ENDPOINT` in their
    /// environment unless their own env sets it): by default where minicloud's go, so
    /// one collector shows a request from the gateway into the function and back.
    #[arg(
        long = "invoker-functions-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub functions_otlp_endpoint: Option<String>,
    /// Without an endpoint of the operator's, send functions' spans to the gateway's
    /// OTLP receiver (the traces minicloud keeps); `false` leaves them unexported.
    #[arg(
        long = "invoker-functions-traces-to-gateway",
        env = "MINICLOUD_INVOKER_FUNCTIONS_TRACES_TO_GATEWAY",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub functions_traces_to_gateway: bool,
    /// Concurrent executions per function without reserved concurrency.
    #[arg(
        long = "invoker-concurrency",
        env = "MINICLOUD_INVOKER_CONCURRENCY",
        default_value_t = InvokerConfig::default().default_concurrency
    )]
    pub default_concurrency: u32,
    /// Whether function instances run sandboxed (docs/architecture.md, "Trust
    /// boundary"). `off` runs them as plain processes of minicloud's user.
    #[arg(
        long = "invoker-sandbox",
        env = "MINICLOUD_INVOKER_SANDBOX",
        value_enum,
        default_value_t = InvokerConfig::default().sandbox
    )]
    pub sandbox: SandboxMode,
    /// Where functions may connect: `none` (their Runtime API only), `minicloud`
    /// (also the gateway and the trace collector), `any` (also the allowed ports).
    #[arg(
        long = "invoker-network",
        env = "MINICLOUD_INVOKER_NETWORK",
        value_enum,
        default_value_t = InvokerConfig::default().network
    )]
    pub network: Egress,
    /// TCP ports functions may connect to on any host under `--invoker-network any`.
    #[arg(
        long = "invoker-network-ports",
        env = "MINICLOUD_INVOKER_NETWORK_PORTS",
        value_delimiter = ',',
        default_values_t = InvokerConfig::default().network_ports
    )]
    pub network_ports: Vec<u16>,
    /// Size of each instance's scratch space (`/tmp`, `HOME`), like Lambda's
    /// ephemeral storage.
    #[arg(
        long = "invoker-scratch-mb",
        env = "MINICLOUD_INVOKER_SCRATCH_MB",
        default_value_t = InvokerConfig::default().scratch_mb
    )]
    pub scratch_mb: u64,
    /// Processes and threads per instance.
    #[arg(
        long = "invoker-pids",
        env = "MINICLOUD_INVOKER_PIDS",
        default_value_t = InvokerConfig::default().pids
    )]
    pub pids: u64,
    /// Pre-started python3 interpreters kept waiting for a cold start (issue 21;
    /// ~10 MiB resident each, docs/benchmarks.md). 0 turns them off. Started once
    /// a python3 function is deployed or called; only with the sandbox on.
    #[arg(
        long = "invoker-prestart",
        env = "MINICLOUD_INVOKER_PRESTART",
        default_value_t = InvokerConfig::default().prestart
    )]
    pub prestart: usize,
    /// Compile a python3 function's modules to bytecode once, when its code is
    /// unpacked, instead of in every cold start (the code dir is read-only to
    /// instances, so Python could never cache what it compiled there).
    #[arg(
        long = "invoker-python-bytecode",
        env = "MINICLOUD_INVOKER_PYTHON_BYTECODE",
        default_value_t = InvokerConfig::default().python_bytecode,
        action = clap::ArgAction::Set
    )]
    pub python_bytecode: bool,
}

impl InvokerConfig {
    fn sandbox_config(&self) -> SandboxConfig {
        SandboxConfig {
            mode: self.sandbox,
            egress: self.network,
            ports: self.network_ports.clone(),
            scratch_mb: self.scratch_mb,
            pids: self.pids,
            ..SandboxConfig::default()
        }
    }
}

impl Default for InvokerConfig {
    fn default() -> Self {
        InvokerConfig {
            code_dir: None,
            python: None,
            node: None,
            region: "us-east-1".into(),
            gateway_url: None,
            functions_otlp_endpoint: None,
            functions_traces_to_gateway: true,
            default_concurrency: 64,
            sandbox: SandboxMode::On,
            network: Egress::Any,
            network_ports: vec![80, 443],
            scratch_mb: 512,
            pids: 64,
            prestart: 2,
            python_bytecode: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InvokerStartError {
    #[error("migrating the invoker schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("preparing {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("bus URL: {0}")]
    Bus(#[from] tonic::transport::Error),
    #[error("invoker database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct Invoker(Arc<InvokerState>);

#[derive(Debug)]
pub struct InvokerState {
    pool: PgPool,
    code_dir: PathBuf,
    authz: Arc<Authz>,
    engine: Arc<Engine>,
    bus: Option<BusClient>,
    /// Reads function code from storage (the Lambda API's `Code.S3Bucket`).
    storage: Option<StorageClient>,
    service_metrics: Arc<minicloud_telemetry::metrics::ServiceMetrics>,
}

impl FromRef<Invoker> for Arc<Authz> {
    fn from_ref(invoker: &Invoker) -> Self {
        Arc::clone(&invoker.0.authz)
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// The built-in runtimes' bootstraps, written under the code dir at start.
const PYTHON_BOOTSTRAP: &str = include_str!("../runtimes/python3/bootstrap.py");
const NODE_BOOTSTRAP: &str = include_str!("../runtimes/nodejs/bootstrap.js");

fn write_runtimes(dir: &Path) -> std::io::Result<()> {
    for (path, text) in [
        ("python3/bootstrap.py", PYTHON_BOOTSTRAP),
        ("nodejs/bootstrap.js", NODE_BOOTSTRAP),
    ] {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// `python3` on PATH is often a pyenv shim that costs ~60 ms per start; ask it
/// once for the interpreter it really runs.
pub(crate) fn resolve_python() -> PathBuf {
    std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

fn find_on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{program}")))
}

/// Says at start what the sandbox enforces, and loudly what it does not.
fn log_sandbox(protections: &sandbox::Protections) {
    match protections.mode {
        SandboxMode::Off => tracing::warn!(
            "function sandbox is OFF (--invoker-sandbox=off): functions run as plain processes \
             and can read minicloud's data, reach its databases and take over the cloud"
        ),
        SandboxMode::On if protections.enforced => tracing::info!(
            separate_uid = protections.separate_uid,
            egress = ?protections.egress,
            ports = ?protections.ports,
            scratch_mb = protections.scratch_mb,
            pids = protections.pids,
            "function sandbox on"
        ),
        SandboxMode::On => tracing::error!(
            missing = %protections.missing.join("; "),
            "function sandbox unavailable on this host: functions will be refused \
             (or start with --invoker-sandbox=off)"
        ),
    }
}

impl Invoker {
    /// `bus_grpc_url` carries async invocations and event triggers; `storage_grpc_url`
    /// is where code named by `Code.S3Bucket` is read.
    pub async fn new(
        config: InvokerConfig,
        pool: PgPool,
        authz: Arc<Authz>,
        bus_grpc_url: Option<&str>,
        storage_grpc_url: Option<&str>,
        meters: minicloud_metering::Meters,
    ) -> Result<Invoker, InvokerStartError> {
        migrate(&pool).await?;
        if meters.is_on() {
            minicloud_metering::sampled::ensure_samplers(&pool, &[provisioned_meter::SAMPLER])
                .await?;
        }
        let code_dir = config
            .code_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".minicloud/functions"));
        // Absolute: instances run in their own working dir, where a relative path to
        // their `bootstrap` would point nowhere (`.minicloud/functions` by default).
        let code_dir = std::path::absolute(&code_dir).unwrap_or(code_dir);
        let runtimes = code_dir.join(".runtimes");
        let run_dir = code_dir.join(".instances");
        write_runtimes(&runtimes).map_err(|e| InvokerStartError::Dir(runtimes.clone(), e))?;
        // Instance dirs of a previous run are garbage: their processes died with it.
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| InvokerStartError::Dir(run_dir.clone(), e))?;
        let node = config.node.clone().unwrap_or_else(|| find_on_path("node"));
        let mut sandbox_config = config.sandbox_config();
        // Its own database and the bus: never a port a deployer may open.
        sandbox_config
            .internal_ports
            .push(pool.connect_options().get_port());
        if let Some(port) = bus_grpc_url
            .and_then(|url| url::Url::parse(url).ok())
            .and_then(|url| url.port_or_known_default())
        {
            sandbox_config.internal_ports.push(port);
        }
        let sandbox = Arc::new(Sandbox::new(sandbox_config, &run_dir));
        log_sandbox(sandbox.protections());
        let (service_metrics, metrics) = metrics::InvokerMetrics::new(&meters);
        let engine = Arc::new(Engine::new(
            pool.clone(),
            Paths {
                code_cache: code_dir.clone(),
                run_dir,
                runtimes,
                python: config.python.clone(),
                node,
            },
            config.region.clone(),
            {
                let configured = config
                    .functions_otlp_endpoint
                    .clone()
                    .filter(|url| !url.is_empty());
                // No collector of the operator's: functions send their spans to the
                // gateway, which keeps them beside minicloud's own (issue 20).
                let ours = configured.is_none() && config.functions_traces_to_gateway;
                engine::FunctionUrls {
                    gateway: config.gateway_url.clone(),
                    otlp: configured.or_else(|| config.gateway_url.clone().filter(|_| ours)),
                    otlp_is_minicloud: ours,
                }
            },
            config.default_concurrency,
            Arc::clone(&authz),
            metrics,
            Arc::clone(&sandbox),
            config.prestart,
            config.python_bytecode,
            meters.clone(),
        ));
        // Resolving the interpreter runs python (~60 ms through a pyenv shim): in
        // the background, so start-up does not wait; the first cold start might.
        tokio::spawn({
            let engine = Arc::clone(&engine);
            async move {
                engine.python().await;
            }
        });
        let bus = match bus_grpc_url {
            Some(url) => Some(BusServiceClient::new(
                TracedChannel::connect_lazy("bus", url)?
                    .with_credential(authz.service_credential()),
            )),
            None => None,
        };
        let storage = match storage_grpc_url {
            Some(url) => Some(StorageClient::new(
                TracedChannel::connect_lazy("storage", url)?
                    .with_credential(authz.service_credential()),
            )),
            None => None,
        };
        Ok(Invoker(Arc::new(InvokerState {
            pool,
            code_dir,
            authz,
            engine,
            bus,
            storage,
            service_metrics,
        })))
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.0.engine
    }
}

impl Service for Invoker {
    const NAME: ServiceName = ServiceName::Invoker;

    /// Instance maintenance, which stops every instance when it sees the shutdown.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
        let mut tasks = vec![BackgroundTask::new(
            "instance maintenance",
            tokio::spawn(Arc::clone(&self.0.engine).maintain(cancel.clone())),
        )];
        let invoker = self.clone();
        tasks.extend(self.0.engine.meters.sampling_task(
            "provisioned concurrency meter",
            cancel,
            move || {
                let invoker = invoker.clone();
                async move { invoker.meter_provisioned().await }
            },
        ));
        tasks.extend(self.0.engine.meters.shipping_task(cancel));
        tasks
    }

    fn host(self) -> ServiceHost {
        let pool = self.0.pool.clone();
        let dir = self.0.code_dir.clone();
        let sandbox = Arc::clone(&self.0.engine.sandbox);
        let readiness = readiness(move || {
            let pool = pool.clone();
            let dir = dir.clone();
            let sandbox = sandbox.check_runnable();
            async move {
                vec![
                    DependencyCheck::postgres(&pool).await,
                    DependencyCheck {
                        name: "code_dir".into(),
                        ..check_writable_dir(dir).await
                    },
                    DependencyCheck::from_result("sandbox", sandbox),
                ]
            }
        });
        let rest = Router::new()
            .route("/functions/v1", get(registry::list).post(registry::create))
            .route(
                "/functions/v1/{name}",
                get(registry::get)
                    .put(registry::replace)
                    .delete(registry::delete)
                    .post(triggers::edge_invoke),
            )
            .route("/functions/v1/sandbox", get(registry::sandbox))
            .route("/functions/v1/{name}/code", put(registry::put_code))
            .route("/functions/v1/{name}/invoke", post(invoke::invoke))
            .route("/functions/v1/{name}/logs", get(invoke::logs))
            .route("/functions/v1/{name}/instances", get(invoke::instances))
            .route(
                "/functions/v1/{name}/triggers",
                get(triggers::list).post(triggers::create),
            )
            .route(
                "/functions/v1/{name}/triggers/{id}",
                axum::routing::delete(triggers::delete),
            )
            .route(
                "/2015-03-31/functions/{name}/invocations",
                post(invoke::lambda_invoke),
            )
            // The Lambda control plane.
            .route(
                "/2015-03-31/functions",
                get(lambda_api::list_functions).post(lambda_api::create_function),
            )
            .route(
                "/2015-03-31/functions/{name}",
                get(lambda_api::get_function).delete(lambda_api::delete_function),
            )
            .route(
                "/2015-03-31/functions/{name}/configuration",
                get(lambda_api::get_configuration).put(lambda_api::update_configuration),
            )
            .route(
                "/2015-03-31/functions/{name}/code",
                axum::routing::put(lambda_api::update_code),
            )
            .route(
                "/2017-10-31/functions/{name}/concurrency",
                axum::routing::put(lambda_api::put_concurrency)
                    .delete(lambda_api::delete_concurrency),
            )
            .route("/fn/{name}", any(triggers::http_route))
            // An empty remainder is `/`, which a `/*` route matches too.
            .route("/fn/{name}/", any(triggers::http_route))
            .route("/fn/{name}/{*path}", any(triggers::http_route))
            .with_state(self.clone());
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            Arc::clone(&self.0.service_metrics),
        )
        .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
        // Deploys carry base64 zips of up to 50 MiB; invokes read their own
        // bodies with Lambda's limits.
        .body_limit(bundle::MAX_ZIPPED * 4 / 3 + 64 * 1024)
        .grpc(InvokerServiceServer::new(InvokerGrpc(self)))
    }
}

struct InvokerGrpc(Invoker);

#[tonic::async_trait]
impl InvokerService for InvokerGrpc {
    async fn list_functions(
        &self,
        request: tonic::Request<ListFunctionsRequest>,
    ) -> Result<tonic::Response<ListFunctionsResponse>, tonic::Status> {
        let caller = self.0.0.authz.grpc_caller(request.metadata()).await?;
        let functions = registry::visible_functions(&self.0, &caller)
            .await?
            .into_iter()
            .map(|function| Function {
                name: function.config.name,
                runtime: function.config.runtime,
                created_at: function.created_at.to_rfc3339(),
            })
            .collect();
        Ok(tonic::Response::new(ListFunctionsResponse { functions }))
    }

    async fn invoke(
        &self,
        request: tonic::Request<InvokeRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, tonic::Status> {
        let caller = self.0.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        registry::check_name(&request.function)?;
        // The same check as the REST route.
        self.0
            .0
            .authz
            .authorize_on(
                &caller,
                Action::FunctionsInvoke,
                Resource::Function(&request.function),
            )
            .await?;
        let payload = if request.is_cloud_event {
            function_subscriptions::event_payload(&request.payload)?
        } else {
            request.payload.into()
        };
        let invoked = invoke::sync_invoke(
            &self.0,
            &request.function,
            engine::InvokeRequest {
                payload,
                wait_for_slot: true,
                trace_id: None,
                client_context: None,
                log_tail: false,
                owner: minicloud_metering::owner_of(&caller),
                span: tracing::Span::none(),
            },
        )
        .await?;
        let (payload, function_error) = match invoked.result {
            Ok(payload) => (payload, String::new()),
            Err((body, error_type)) => (body, error_type),
        };
        Ok(tonic::Response::new(InvokeResponse {
            request_id: invoked.request_id.to_string(),
            payload: payload.to_vec(),
            function_error,
        }))
    }
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("invoker");
    }
}

#[cfg(test)]
mod python_runtime_tests {
    /// The Python bootstrap's own HTTP/1.1 client (`runtimes/python3/tests`), on the
    /// interpreter sandboxed functions get when it exists.
    #[test]
    fn python_runtime_client() {
        let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/runtimes/python3/tests");
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let out = std::process::Command::new(python)
            .args(["-m", "unittest", "discover", "-s", tests])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Discovery that finds nothing also exits 0.
        assert!(!String::from_utf8_lossy(&out.stderr).contains("Ran 0 tests"));
    }

    /// Both bootstraps (Python and Node.js) against a fake Runtime API: events,
    /// contexts, errors, init errors, a dropped keep-alive connection (229 checks,
    /// `runtimes/check_bootstraps.py`).
    #[test]
    fn bootstraps_against_a_fake_runtime_api() {
        let check = concat!(env!("CARGO_MANIFEST_DIR"), "/runtimes/check_bootstraps.py");
        let out = std::process::Command::new("python3")
            .arg(check)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(" 0 failed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
