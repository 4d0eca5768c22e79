//! The engine: per function a pool of instances — cold start on demand, warm
//! reuse, idle stop, provisioned instances kept started, crashed ones replaced —
//! behind a concurrency limit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use minicloud_authz::Authz;
use minicloud_proto::error::{ApiError, ErrorCode};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use minicloud_metering::Meter;

use crate::instance::{Failure, Instance, Invocation, Launch, Outcome, Timing};
use crate::logs::{FunctionLogs, LogStore, LogStream};
use crate::metrics::{FunctionLabel, InvokerMetrics};
use crate::prestart::{PrestartPool, Recipe};
use crate::sandbox::Sandbox;

/// How long a log tail waits for the capture of what the function printed before
/// answering, when a line is left without its newline (it may never get one)…
const TAIL_PARTIAL_LINE_LIMIT: Duration = Duration::from_millis(20);
/// …and when bytes are still in a pipe (a capture task the scheduler has not run
/// yet: they are sure to come).
const TAIL_UNREAD_LIMIT: Duration = Duration::from_secs(2);

/// Role tokens live an hour; instances are retired before theirs runs out.
const ROLE_TOKEN_TTL: Duration = Duration::from_secs(3600);
const INSTANCE_MAX_AGE: Duration = Duration::from_secs(45 * 60);
/// Room above `memory_mb` for the runtime's own mappings (docs/operations.md).
pub const MEMORY_MARGIN_MB: u64 = 64;
/// A function's memory size unless it asks for another (Lambda's default).
pub const DEFAULT_MEMORY_MB: i32 = 128;
/// How long after a cold start's call ends the pre-start pool is refilled: the
/// answer's way back to its caller takes well under a millisecond.
const REFILL_AFTER_ANSWER: Duration = Duration::from_millis(5);

/// A function's deployed configuration, what its instances run: one row of
/// `functions` without its timestamps (a `FunctionRecord` adds them).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FunctionConfig {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: i32,
    pub timeout_s: i32,
    #[schema(value_type = BTreeMap<String, String>)]
    pub env: sqlx::types::Json<BTreeMap<String, String>>,
    pub role: Option<String>,
    pub reserved_concurrency: Option<i32>,
    pub provisioned_concurrency: i32,
    pub keep_warm_s: i32,
    pub code_hash: Option<String>,
    /// Increases with every deploy.
    pub revision: i64,
    pub ephemeral_storage_mb: Option<i32>,
    #[schema(value_type = Option<crate::sandbox::NetworkPolicy>)]
    pub network: Option<sqlx::types::Json<crate::sandbox::NetworkPolicy>>,
    /// At most this many instances; calls beyond wait for one (`null`: an
    /// instance per concurrent call, as Lambda).
    pub max_instances: Option<i32>,
    /// USD a month (a decimal): past it, calls are refused until the month ends
    /// (billing's budget `function.<name>`; docs/billing.md).
    pub max_monthly_cost: Option<String>,
}

/// The columns of [`FunctionConfig`], as a literal so that queries can `concat!` it.
macro_rules! config_columns {
    () => {
        "name, runtime, handler, memory_mb, timeout_s, env, role, \
     reserved_concurrency, provisioned_concurrency, keep_warm_s, code_hash, revision, \
     ephemeral_storage_mb, network, max_instances, max_monthly_cost"
    };
}
pub(crate) use config_columns;

/// Synchronous calls that may wait for an instance of a function with
/// `max_instances` before more are throttled.
const MAX_QUEUED: usize = 1000;

pub const CONFIG_COLUMNS: &str = config_columns!();

/// Where things live and which interpreters run the built-in runtimes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub code_cache: PathBuf,
    pub run_dir: PathBuf,
    pub runtimes: PathBuf,
    /// Configured, or resolved on first need ([`Engine::python`]).
    pub python: Option<PathBuf>,
    pub node: PathBuf,
}

/// One invocation as the API layer asks for it.
#[derive(Debug)]
pub struct InvokeRequest {
    pub payload: Bytes,
    /// Async invocations wait for a free slot; sync ones are throttled.
    pub wait_for_slot: bool,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    /// The caller wants the log tail: the report is written before returning.
    pub log_tail: bool,
    /// Who the invocation is metered to ([`minicloud_metering::owner_of`]).
    pub owner: String,
    /// The request's span, which names the invocation once it has an id
    /// (`faas.invocation_id`). Passed rather than entered around the invocation:
    /// entering it would cost an enter and exit on every poll of the invoke task.
    pub span: tracing::Span,
}

/// The answer in Lambda's terms.
#[derive(Debug)]
pub struct Invoked {
    pub request_id: Arc<str>,
    /// `Ok(payload)` or `Err((error body, error type))` — a function error.
    pub result: Result<Bytes, (Bytes, String)>,
    pub logs: Arc<FunctionLogs>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("Function not found: {0}")]
    NotFound(String),
    #[error("Rate Exceeded.")]
    Throttled,
    /// A budget's cap covers the function (docs/billing.md); names the budget.
    #[error("budget {0} is used up")]
    BudgetExceeded(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// Endpoints of the platform a function's instances are told about.
#[derive(Debug)]
pub struct FunctionUrls {
    /// `MINICLOUD_URL`.
    pub gateway: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, unless the function sets its own.
    pub otlp: Option<String>,
    /// `otlp` is minicloud's own receiver (the gateway), which wants the function's
    /// token on every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub otlp_is_minicloud: bool,
}

#[derive(Debug)]
pub struct Engine {
    db: PgPool,
    paths: Paths,
    region: String,
    urls: FunctionUrls,
    default_concurrency: u32,
    authz: Arc<Authz>,
    pub logs: LogStore,
    pub metrics: InvokerMetrics,
    pools: RwLock<HashMap<String, Arc<FunctionPool>>>,
    python: tokio::sync::OnceCell<PathBuf>,
    /// One loader per function at a time, so a burst of cold invokes reads the row once.
    loading: tokio::sync::Mutex<()>,
    pub sandbox: Arc<Sandbox>,
    /// Code hashes whose cached tree this process unpacked or checked.
    verified_code: Mutex<std::collections::HashSet<String>>,
    /// How many interpreters to keep pre-started, and the pool of them (made on
    /// first need; `None` when off).
    prestart_size: usize,
    prestart_pool: tokio::sync::OnceCell<Option<Arc<PrestartPool>>>,
    /// Whether python3 code is compiled to bytecode when it is unpacked.
    python_bytecode: bool,
    pub(crate) meters: minicloud_metering::Meters,
}

/// Lambda's billed duration: rounded up to the millisecond, at least 1. REPORT
/// lines and meters use this one rounding.
fn billed_ms(duration: Duration) -> u64 {
    (duration.as_nanos().div_ceil(1_000_000) as u64).max(1)
}

#[derive(Debug)]
pub struct FunctionPool {
    spec: FunctionConfig,
    code_dir: PathBuf,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Arc<Instance>>>,
    /// Started and not yet stopped.
    live: AtomicUsize,
    /// Calls waiting for an instance (functions with `max_instances`).
    queued: AtomicUsize,
    retired: AtomicBool,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    logs: Arc<FunctionLogs>,
    label: FunctionLabel,
}

impl Engine {
    // Each argument is one independent piece of the invoker's wiring (lib.rs builds
    // them from its config); a struct of them would only rename this list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: PgPool,
        paths: Paths,
        region: String,
        urls: FunctionUrls,
        default_concurrency: u32,
        authz: Arc<Authz>,
        metrics: InvokerMetrics,
        sandbox: Arc<Sandbox>,
        prestart_size: usize,
        python_bytecode: bool,
        meters: minicloud_metering::Meters,
    ) -> Engine {
        Engine {
            db,
            paths,
            region,
            urls,
            default_concurrency,
            authz,
            logs: LogStore::default(),
            metrics,
            pools: RwLock::new(HashMap::new()),
            python: tokio::sync::OnceCell::new(),
            loading: tokio::sync::Mutex::new(()),
            sandbox,
            verified_code: Mutex::new(std::collections::HashSet::new()),
            prestart_size,
            prestart_pool: tokio::sync::OnceCell::new(),
            python_bytecode,
            meters,
        }
    }

    /// Replaces the pre-started interpreters cold starts have taken.
    fn refill_prestart(&self) {
        if let Some(Some(pool)) = self.prestart_pool.get() {
            pool.refill();
        }
    }

    /// [`Engine::refill_prestart`] once a cold call's caller has its answer:
    /// spawning the replacement (the sandbox's set-up, clone, exec) while the
    /// answer was on its way back cost each cold start ~0.7 ms on two cores
    /// (measured: 2.42 → 1.72 ms p50). It is only needed by the next cold start.
    fn refill_prestart_after_answer(&self) {
        if let Some(Some(pool)) = self.prestart_pool.get() {
            let pool = Arc::clone(pool);
            tokio::spawn(async move {
                tokio::time::sleep(REFILL_AFTER_ANSWER).await;
                pool.refill();
            });
        }
    }

    pub fn prestart_status(&self) -> crate::prestart::PrestartStatus {
        match self.prestart_pool.get() {
            Some(Some(pool)) => pool.status(),
            _ => Default::default(),
        }
    }

    /// The pre-started interpreters (`crate::prestart`), started on first need;
    /// `None` when turned off or when functions run unsandboxed. They are python3
    /// interpreters; an instance of another runtime execs its program from one.
    pub async fn prestart(&self) -> Option<&Arc<PrestartPool>> {
        self.prestart_pool
            .get_or_init(|| async {
                if self.prestart_size == 0 || !self.sandbox.is_on() {
                    return None;
                }
                let python = self.python().await.clone();
                let recipe = Recipe {
                    args: vec![
                        "-u".into(),
                        self.paths.runtimes.join("python3/bootstrap.py").into(),
                        "--prestarted".into(),
                    ],
                    read_only: vec![
                        self.paths.code_cache.clone(),
                        self.paths.runtimes.clone(),
                        interpreter_prefix(&python),
                        interpreter_prefix(&self.paths.node),
                    ],
                    run_dir: self.paths.run_dir.clone(),
                    path: instance_path(&python),
                    program: python,
                    memory_mb: DEFAULT_MEMORY_MB as u64,
                    memory_limit: memory_limit(DEFAULT_MEMORY_MB),
                };
                let pool = PrestartPool::new(Arc::clone(&self.sandbox), recipe, self.prestart_size);
                pool.refill();
                Some(pool)
            })
            .await
            .as_ref()
    }

    /// The python3 runtime's interpreter; its directory also heads every
    /// instance's PATH, so a bootstrap script's `python3` is the real one.
    pub async fn python(&self) -> &PathBuf {
        self.python
            .get_or_init(|| async {
                let resolved = match &self.paths.python {
                    Some(python) => python.clone(),
                    None => tokio::task::spawn_blocking(crate::resolve_python)
                        .await
                        .unwrap_or_else(|_| PathBuf::from("/usr/bin/python3")),
                };
                // Instances of a root invoker run under uids of their own, which
                // cannot reach an interpreter under a private home (pyenv in /root).
                if self.sandbox.protections().separate_uid
                    && !crate::sandbox::reachable_by_others(&resolved)
                    && Path::new("/usr/bin/python3").exists()
                {
                    tracing::info!(interpreter = %resolved.display(), "not reachable by instance uids; python3 functions use /usr/bin/python3");
                    return PathBuf::from("/usr/bin/python3");
                }
                resolved
            })
            .await
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:000000000000:function:{name}",
            self.region
        )
    }

    /// The live pool of `name`, loading it from the registry on first use.
    async fn pool(&self, name: &str) -> Result<Arc<FunctionPool>, InvokeError> {
        if let Some(pool) = self.pools.read().unwrap().get(name) {
            return Ok(Arc::clone(pool));
        }
        let _loading = self.loading.lock().await;
        if let Some(pool) = self.pools.read().unwrap().get(name) {
            return Ok(Arc::clone(pool));
        }
        let spec: Option<FunctionConfig> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONFIG_COLUMNS} FROM functions WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        let spec = spec.ok_or_else(|| InvokeError::NotFound(name.to_owned()))?;
        let pool = self.open_pool(spec).await?;
        self.pools
            .write()
            .unwrap()
            .insert(name.to_owned(), Arc::clone(&pool));
        Ok(pool)
    }

    async fn open_pool(&self, spec: FunctionConfig) -> Result<Arc<FunctionPool>, ApiError> {
        let hash = spec
            .code_hash
            .clone()
            .ok_or_else(|| ApiError::invalid(format!("function {} has no code", spec.name)))?;
        let code_dir = self.paths.code_cache.join(&hash);
        // A tree cached by an earlier run is reused only if it is what was unpacked
        // (checked once per process; instances cannot write it).
        if code_dir.is_dir() && !self.verified_code.lock().unwrap().contains(&hash) {
            let (cache, checked) = (self.paths.code_cache.clone(), hash.clone());
            let intact =
                tokio::task::spawn_blocking(move || crate::bundle::is_intact(&cache, &checked))
                    .await
                    .unwrap_or(false);
            if !intact {
                tracing::warn!(function = %spec.name, hash = %hash, "cached code changed since it was unpacked; unpacking it again");
                crate::bundle::discard(&self.paths.code_cache, &hash);
            }
        }
        if !code_dir.is_dir() {
            let zip: Vec<u8> = sqlx::query_scalar("SELECT zip FROM code_bundles WHERE hash = $1")
                .bind(&hash)
                .fetch_one(&self.db)
                .await
                .map_err(ApiError::internal)?;
            let (cache, unpacked) = (self.paths.code_cache.clone(), hash.clone());
            let compiler = if spec.runtime == "python3" && self.python_bytecode {
                Some(self.python().await.clone())
            } else {
                None
            };
            tokio::task::spawn_blocking(move || {
                crate::bundle::unpack(&zip, &unpacked, &cache, compiler.as_deref())
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        }
        self.verified_code.lock().unwrap().insert(hash.clone());
        let concurrency = spec
            .reserved_concurrency
            .map_or(self.default_concurrency as usize, |n| n.max(0) as usize);
        // With `max_instances` the slots are instances, and calls queue for them.
        let limit = match spec.max_instances {
            Some(max) => concurrency.min(max.max(1) as usize),
            None => concurrency,
        };
        Ok(Arc::new(FunctionPool {
            label: FunctionLabel {
                function: spec.name.clone(),
            },
            logs: self.logs.of(&spec.name),
            spec,
            code_dir,
            slots: Arc::new(Semaphore::new(limit)),
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            token: tokio::sync::Mutex::new(None),
        }))
    }

    /// Drops the pool of `name` (after a deploy or delete): idle instances stop now,
    /// busy ones when their invocation ends — in-flight calls finish on the old code.
    pub fn retire(&self, name: &str) {
        let pool = self.pools.write().unwrap().remove(name);
        if let Some(pool) = pool {
            pool.retired.store(true, Ordering::SeqCst);
            for instance in pool.idle.lock().unwrap().drain(..) {
                pool.stop(&instance);
            }
        }
    }

    /// After a deploy through this replica: the old instances go, and the new pool
    /// (config read, code unpacked) is ready before the first call, so a cold start
    /// pays for the process only.
    pub async fn redeployed(&self, name: &str) {
        self.retire(name);
        match self.pool(name).await {
            Ok(pool) if prestart_eligible(&pool.spec) => {
                self.prestart().await;
            }
            Ok(_) => {}
            // The first invocation tries again and reports what fails.
            Err(error) => {
                tracing::warn!(function = name, %error, "preparing a deployed function failed")
            }
        }
    }

    pub fn forget(&self, name: &str) {
        self.retire(name);
        self.logs.remove(name);
    }

    /// Instances running now, per function (for tests and the API).
    pub fn live_instances(&self, name: &str) -> usize {
        self.pools
            .read()
            .unwrap()
            .get(name)
            .map_or(0, |pool| pool.live.load(Ordering::SeqCst))
    }

    /// Process ids of the idle instances of `name`.
    pub fn idle_pids(&self, name: &str) -> Vec<i32> {
        self.pools
            .read()
            .unwrap()
            .get(name)
            .map_or(Vec::new(), |pool| {
                pool.idle.lock().unwrap().iter().map(|i| i.pid()).collect()
            })
    }

    pub async fn invoke(&self, name: &str, request: InvokeRequest) -> Result<Invoked, InvokeError> {
        if let Some(budget) = self.meters.capped("functions", name, &request.owner) {
            return Err(InvokeError::BudgetExceeded(budget));
        }
        let pool = self.pool(name).await?;
        let metrics = &self.metrics;
        let permit = if request.wait_for_slot {
            Arc::clone(&pool.slots)
                .acquire_owned()
                .await
                .map_err(|_| InvokeError::Throttled)?
        } else if pool.spec.max_instances.is_some() {
            // Queued (issue 21): FIFO for a free instance, for at most the function's
            // timeout and behind at most MAX_QUEUED others; throttled past either.
            let timeout = Duration::from_secs(pool.spec.timeout_s.max(1) as u64);
            let queued = pool.queued.fetch_add(1, Ordering::SeqCst);
            let _queued = scopeguard(|| {
                pool.queued.fetch_sub(1, Ordering::SeqCst);
            });
            let acquired = match queued < MAX_QUEUED {
                true => tokio::time::timeout(timeout, Arc::clone(&pool.slots).acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                false => None,
            };
            match acquired {
                Some(permit) => permit,
                None => {
                    metrics.throttles.get_or_create(&pool.label).inc();
                    return Err(InvokeError::Throttled);
                }
            }
        } else {
            match Arc::clone(&pool.slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    metrics.throttles.get_or_create(&pool.label).inc();
                    return Err(InvokeError::Throttled);
                }
            }
        };
        metrics.concurrent.get_or_create(&pool.label).inc();
        let _concurrency = scopeguard(|| {
            metrics.concurrent.get_or_create(&pool.label).dec();
        });

        let request_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        // The invoke span names the invocation, so a trace finds the function's own
        // log lines (`GET /functions/v1/{name}/logs?request_id=`).
        request.span.record("faas.invocation_id", &*request_id);
        let (instance, cold) = match pool.take_idle() {
            Some(instance) => (instance, false),
            None => {
                metrics.cold_starts.get_or_create(&pool.label).inc();
                (self.start_instance(&pool, false).await?, true)
            }
        };
        let logs = Arc::clone(&pool.logs);
        logs.push(
            Some(Arc::clone(&request_id)),
            LogStream::Platform,
            format!("START RequestId: {request_id} Version: $LATEST"),
        );
        let timeout = Duration::from_secs(pool.spec.timeout_s.max(1) as u64);
        let invocation = Invocation {
            request_id: Arc::clone(&request_id),
            payload: request.payload,
            timeout,
            function_arn: self.arn(name),
            trace_id: request.trace_id,
            client_context: request.client_context,
            cognito_identity: None,
        };
        let (outcome, timing) = instance.invoke(invocation, timeout).await;
        if cold {
            self.refill_prestart_after_answer();
        }
        let result = match outcome {
            Ok(Outcome::Response(body)) => Ok(body),
            Ok(Outcome::Error { body, error_type }) => Err((body, error_type)),
            Err(failure) => Err(self.describe_failure(&pool, &request_id, failure, timeout)),
        };
        if request.log_tail {
            // What the function printed before answering belongs in its tail.
            instance
                .settle_output(TAIL_PARTIAL_LINE_LIMIT, TAIL_UNREAD_LIMIT)
                .await;
            pool.report(&request_id, timing, &instance);
        } else {
            // Max Memory Used is a /proc read (~30 µs): off the caller's path.
            let (pool, instance, id) = (
                Arc::clone(&pool),
                Arc::clone(&instance),
                Arc::clone(&request_id),
            );
            tokio::spawn(async move { pool.report(&id, timing, &instance) });
        }
        // GB-seconds as Lambda bills them: the configured memory times REPORT's
        // Billed Duration.
        let billed_ms = billed_ms(timing.duration);
        self.meters.record(
            name,
            &request.owner,
            &[
                (Meter::FunctionRequests, 1),
                (Meter::FunctionBilledMs, billed_ms),
                (
                    Meter::FunctionMbMs,
                    billed_ms * pool.spec.memory_mb.max(0) as u64,
                ),
            ],
        );
        metrics.invocations.get_or_create(&pool.label).inc();
        metrics
            .duration
            .get_or_create(&pool.label)
            .observe(timing.duration.as_secs_f64());
        if result.is_err() {
            metrics.errors.get_or_create(&pool.label).inc();
        }
        pool.release(instance);
        drop(permit);
        Ok(Invoked {
            request_id,
            result,
            logs,
        })
    }

    fn describe_failure(
        &self,
        pool: &FunctionPool,
        request_id: &Arc<str>,
        failure: Failure,
        timeout: Duration,
    ) -> (Bytes, String) {
        let (message, error_type) = match failure {
            Failure::Init(body) => {
                let error_type = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["errorType"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "Runtime.Unknown".into());
                pool.logs.push(
                    Some(Arc::clone(request_id)),
                    LogStream::Platform,
                    format!("INIT_REPORT Status: error Error Type: {error_type}"),
                );
                return (body, error_type);
            }
            Failure::TimedOut => (
                format!(
                    "{} {request_id} Task timed out after {}.00 seconds",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    timeout.as_secs()
                ),
                "Sandbox.Timedout",
            ),
            Failure::Exited(reason) => (
                format!("RequestId: {request_id} Error: {reason}"),
                "Runtime.ExitError",
            ),
        };
        pool.logs.push(
            Some(Arc::clone(request_id)),
            LogStream::Platform,
            message.clone(),
        );
        let body = serde_json::json!({"errorMessage": message, "errorType": error_type});
        (
            serde_json::to_vec(&body).unwrap_or_default().into(),
            error_type.to_owned(),
        )
    }
}

/// `<prefix>/bin/python3.11` → `<prefix>`, with its standard library.
fn interpreter_prefix(binary: &Path) -> PathBuf {
    binary
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| binary.to_path_buf())
}

/// An instance's PATH: the python3 interpreter's dir first, so a bootstrap
/// script's `python3` is the real one.
fn instance_path(python: &Path) -> String {
    let interpreter_dir = python
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{interpreter_dir}:/usr/local/bin:/usr/bin:/bin")
}

/// An instance's `RLIMIT_DATA` (and, with its scratch, its cgroup's memory): its
/// memory size and a margin for the runtime.
fn memory_limit(memory_mb: i32) -> u64 {
    (memory_mb.max(1) as u64 + MEMORY_MARGIN_MB) * 1024 * 1024
}

/// Whether a cold start of this function may take a pre-started interpreter: any
/// function with the default scratch size (its tmpfs is mounted at pre-start); a
/// python3 one, which runs in that interpreter, only if its environment sets
/// nothing that an interpreter or the loader reads only when it starts. Other
/// runtimes exec their program from it, which reads its environment afresh.
fn prestart_eligible(spec: &FunctionConfig) -> bool {
    let read_at_start = |name: &str| {
        (name.starts_with("PYTHON") && name != "PYTHONPATH")
            || ["LD_", "LC_", "MALLOC_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            || matches!(name, "LANG" | "LANGUAGE" | "TZ" | "GLIBC_TUNABLES")
    };
    spec.ephemeral_storage_mb.is_none()
        && (spec.runtime != "python3" || !spec.env.0.keys().any(|name| read_at_start(name)))
}

impl FunctionPool {
    /// `END` and `REPORT`, with the instance's peak memory so far.
    fn report(&self, request_id: &Arc<str>, timing: Timing, instance: &Instance) {
        let memory_mb = instance.peak_memory_mb();
        let ms = timing.duration.as_secs_f64() * 1000.0;
        let mut report = format!(
            "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
            billed_ms(timing.duration),
            self.spec.memory_mb,
            memory_mb.unwrap_or(0),
        );
        if let Some(init) = timing.init {
            report.push_str(&format!(
                "\tInit Duration: {:.2} ms",
                init.as_secs_f64() * 1000.0
            ));
        }
        self.logs.push(
            Some(Arc::clone(request_id)),
            LogStream::Platform,
            format!("END RequestId: {request_id}"),
        );
        self.logs
            .push(Some(Arc::clone(request_id)), LogStream::Platform, report);
    }
}

impl Engine {
    async fn start_instance(
        &self,
        pool: &Arc<FunctionPool>,
        provisioned: bool,
    ) -> Result<Arc<Instance>, ApiError> {
        let spec = &pool.spec;
        self.sandbox
            .check_runnable()
            .map_err(|message| ApiError::new(ErrorCode::Unavailable, message))?;
        let python = self.python().await;
        let mut read_only = vec![pool.code_dir.clone()];
        match spec.runtime.as_str() {
            "python3" => {
                read_only.push(self.paths.runtimes.join("python3"));
                read_only.push(interpreter_prefix(python));
            }
            "nodejs" => {
                read_only.push(self.paths.runtimes.join("nodejs"));
                read_only.push(interpreter_prefix(&self.paths.node));
            }
            _ => {}
        }
        let (program, args) = match spec.runtime.as_str() {
            "python3" => (
                python.clone(),
                vec![
                    "-u".into(),
                    self.paths.runtimes.join("python3/bootstrap.py").into(),
                ],
            ),
            "nodejs" => (
                self.paths.node.clone(),
                vec![self.paths.runtimes.join("nodejs/bootstrap.js").into()],
            ),
            _ => (pool.code_dir.join("bootstrap"), Vec::new()),
        };
        let mut env: Vec<(String, String)> = spec
            .env
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let name = &spec.name;
        let platform = [
            ("PATH", instance_path(python)),
            ("LANG", "C.UTF-8".into()),
            ("TZ", ":UTC".into()),
            ("PYTHONUNBUFFERED", "1".into()),
            ("LAMBDA_TASK_ROOT", pool.code_dir.display().to_string()),
            (
                "LAMBDA_RUNTIME_DIR",
                self.paths.runtimes.display().to_string(),
            ),
            ("_HANDLER", spec.handler.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            ),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!(
                    "{}/[$LATEST]{}",
                    chrono::Utc::now().format("%Y/%m/%d"),
                    uuid::Uuid::new_v4().simple()
                ),
            ),
            ("AWS_REGION", self.region.clone()),
            ("AWS_DEFAULT_REGION", self.region.clone()),
            ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{}", spec.runtime)),
            (
                "AWS_LAMBDA_INITIALIZATION_TYPE",
                if provisioned {
                    "provisioned-concurrency"
                } else {
                    "on-demand"
                }
                .into(),
            ),
            ("MINICLOUD_FUNCTION", name.clone()),
        ];
        env.extend(platform.into_iter().map(|(k, v)| (k.to_owned(), v)));
        if let Some(url) = &self.urls.gateway {
            env.push(("MINICLOUD_URL".into(), url.clone()));
        }
        let token = self.role_token(pool).await?;
        if let Some(url) = &self.urls.otlp
            && !env.iter().any(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT")
        {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), url.clone()));
            if self.urls.otlp_is_minicloud {
                // The function's spans go to the gateway's store, not its own.
                env.push(("MINICLOUD_TRACES".into(), "off".into()));
                if let Some(token) = &token
                    && !env.iter().any(|(k, _)| k == "OTEL_EXPORTER_OTLP_HEADERS")
                {
                    env.push((
                        "OTEL_EXPORTER_OTLP_HEADERS".into(),
                        format!("authorization=Bearer%20{token}"),
                    ));
                }
            }
        }
        if let Some(token) = token {
            env.push(("MINICLOUD_TOKEN".into(), token));
        }
        let launch = Launch {
            program,
            args,
            env,
            run_dir: self.paths.run_dir.clone(),
            memory_limit: memory_limit(spec.memory_mb),
            memory_mb: spec.memory_mb.max(1) as u64,
            sandbox: self.sandbox.is_on().then(|| Arc::clone(&self.sandbox)),
            read_only,
            platform_ports: [&self.urls.gateway, &self.urls.otlp]
                .into_iter()
                .flatten()
                .filter_map(|url| url_port(url))
                .collect(),
            network: spec.network.as_ref().map(|n| n.0.clone()),
            scratch_mb: spec.ephemeral_storage_mb.map(|mb| mb.max(1) as u64),
        };
        let prestarted = match prestart_eligible(spec) {
            true => self.prestart().await.and_then(|prestart| prestart.take()),
            false => None,
        };
        let instance = Instance::start(launch, Arc::clone(&pool.logs), prestarted).await;
        if provisioned || instance.is_err() {
            // No call follows (`invoke` refills after a cold start's first call).
            self.refill_prestart();
        }
        let instance = instance.map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("starting an instance of {name}: {e}"),
            )
            .with_source(e)
        })?;
        pool.live.fetch_add(1, Ordering::SeqCst);
        Ok(instance)
    }

    /// The function's role token, reissued when half its life is gone.
    async fn role_token(&self, pool: &FunctionPool) -> Result<Option<String>, ApiError> {
        let Some(role) = &pool.spec.role else {
            return Ok(None);
        };
        let mut cached = pool.token.lock().await;
        if let Some((token, at)) = &*cached
            && at.elapsed() < ROLE_TOKEN_TTL / 2
        {
            return Ok(Some(token.clone()));
        }
        let token = self
            .authz
            .issue_role_token(role, &format!("fn:{}", pool.spec.name), ROLE_TOKEN_TTL)
            .await?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(Some(token))
    }

    /// Once a second: stop instances idle past keep-warm, keep provisioned ones
    /// started, notice deploys made through other replicas.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sync = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if last_sync.elapsed() >= Duration::from_secs(2) {
                last_sync = Instant::now();
                if let Err(error) = self.sync_registry().await {
                    tracing::warn!(%error, "reading the function registry failed");
                }
            }
            let pools: Vec<_> = self.pools.read().unwrap().values().cloned().collect();
            for pool in pools {
                pool.reap_idle();
                let wanted = pool.spec.provisioned_concurrency.max(0) as usize;
                while pool.live.load(Ordering::SeqCst) < wanted
                    && !pool.retired.load(Ordering::SeqCst)
                {
                    match self.start_instance(&pool, true).await {
                        Ok(instance) => pool.idle.lock().unwrap().push(instance),
                        Err(error) => {
                            tracing::warn!(function = %pool.spec.name, %error, "starting a provisioned instance failed");
                            break;
                        }
                    }
                }
            }
        }
        // Shutting down: no instance outlives the invoker.
        let pools: Vec<_> = self
            .pools
            .write()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for pool in pools {
            pool.retired.store(true, Ordering::SeqCst);
            for instance in pool.idle.lock().unwrap().drain(..) {
                pool.stop(&instance);
            }
        }
    }

    /// Retires pools whose function changed or went away, and opens pools for
    /// functions with provisioned concurrency.
    async fn sync_registry(&self) -> Result<(), sqlx::Error> {
        let rows: Vec<(String, i64, i32)> =
            sqlx::query_as("SELECT name, revision, provisioned_concurrency FROM functions")
                .fetch_all(&self.db)
                .await?;
        let current: HashMap<_, _> = rows.iter().map(|(n, r, _)| (n.as_str(), *r)).collect();
        let stale: Vec<String> = self
            .pools
            .read()
            .unwrap()
            .iter()
            .filter(|(name, pool)| current.get(name.as_str()) != Some(&pool.spec.revision))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.retire(&name);
        }
        for (name, _, provisioned) in rows {
            if provisioned > 0
                && !self.pools.read().unwrap().contains_key(&name)
                && let Err(error) = self.pool(&name).await
            {
                tracing::warn!(function = %name, %error, "opening a provisioned function failed");
            }
        }
        Ok(())
    }
}

impl FunctionPool {
    fn take_idle(&self) -> Option<Arc<Instance>> {
        let mut idle = self.idle.lock().unwrap();
        while let Some(instance) = idle.pop() {
            if instance.is_alive() {
                return Some(instance);
            }
            // Crashed while idle: replaced by a cold start (or the provisioner).
            self.stop(&instance);
        }
        None
    }

    fn release(&self, instance: Arc<Instance>) {
        let too_old = instance.started_at().elapsed() > INSTANCE_MAX_AGE;
        if self.retired.load(Ordering::SeqCst) || !instance.is_alive() || too_old {
            self.stop(&instance);
        } else {
            self.idle.lock().unwrap().push(instance);
        }
    }

    fn stop(&self, instance: &Instance) {
        instance.stop();
        if !instance.mark_counted_stopped() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn reap_idle(&self) {
        let keep_warm = Duration::from_secs(self.spec.keep_warm_s.max(0) as u64);
        let provisioned = self.spec.provisioned_concurrency.max(0) as usize;
        let mut idle = self.idle.lock().unwrap();
        let mut index = 0;
        while index < idle.len() {
            let instance = &idle[index];
            let expired = instance.last_used.lock().unwrap().elapsed() >= keep_warm
                && self.live.load(Ordering::SeqCst) > provisioned;
            if !instance.is_alive() || expired {
                let instance = idle.swap_remove(index);
                self.stop(&instance);
            } else {
                index += 1;
            }
        }
    }
}

/// Runs `f` when dropped, so a gauge comes down on every return path.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The port of `http://host:port/…` (the scheme's default without one).
fn url_port(url: &str) -> Option<u16> {
    let url = url::Url::parse(url).ok()?;
    url.port_or_known_default()
}
