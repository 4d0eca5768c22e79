//! One function instance: a process of its own (own process group, working and
//! tmp dir, scrubbed environment, memory limit) that speaks the AWS Lambda Runtime
//! API to a loopback endpoint of its own.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::logs::{FunctionLogs, LogStream};
use crate::sandbox::{InstanceRules, Sandbox};

/// Lambda's synchronous response limit.
pub const MAX_RESPONSE: usize = 6 * 1024 * 1024;
/// A longer line is split; a function printing without newlines cannot grow us.
const MAX_LOG_LINE: u64 = 64 * 1024;

/// How to start the process and what it gets.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment; nothing of the invoker's own is inherited.
    pub env: Vec<(String, String)>,
    /// Parent of the per-instance dirs.
    pub run_dir: PathBuf,
    /// RLIMIT_DATA in bytes (heap, anonymous mappings, thread stacks).
    pub memory_limit: u64,
    /// The sandbox to run in (`None`: the operator turned it off).
    pub sandbox: Option<Arc<Sandbox>>,
    /// Trees the instance may read: its code, runtime and interpreter.
    pub read_only: Vec<PathBuf>,
    /// Ports of the gateway and the trace collector.
    pub platform_ports: Vec<u16>,
    /// The function's memory size (its CPU weight follows it).
    pub memory_mb: u64,
    /// The function's own network settings and scratch size, if any.
    pub network: Option<crate::sandbox::NetworkPolicy>,
    pub scratch_mb: Option<u64>,
}

/// Never the environment's values: they hold the function's own secrets and the
/// role token minted for it.
impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Launch")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .finish_non_exhaustive()
    }
}

/// How long a new runtime may take to ask for its first event (Lambda's init limit).
pub const INIT_LIMIT: Duration = Duration::from_secs(10);

/// An event handed to the runtime by `GET …/invocation/next`.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: Arc<str>,
    pub payload: Bytes,
    /// The function's timeout; it runs from delivery, as Lambda's does.
    pub timeout: Duration,
    pub function_arn: String,
    /// X-Ray style (`Root=1-…;Parent=…;Sampled=1`), carrying the W3C trace.
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

/// What the runtime answered.
#[derive(Debug)]
pub enum Outcome {
    Response(Bytes),
    /// `…/error`: the body (Lambda's `{"errorMessage","errorType",…}`) and the
    /// `Lambda-Runtime-Function-Error-Type` header.
    Error {
        body: Bytes,
        error_type: String,
    },
}

/// Why an invocation got no answer; the instance is unusable afterwards.
#[derive(Debug)]
pub enum Failure {
    /// The runtime posted `init/error` (and usually exited).
    Init(Bytes),
    /// `Runtime exited with error: …`.
    Exited(String),
    TimedOut,
}

/// Times the platform reports in `REPORT`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub duration: Duration,
    /// Spawn → first `GET next`, on the instance's first invocation only.
    pub init: Option<Duration>,
}

struct Delivery {
    invocation: Invocation,
    reply: oneshot::Sender<Outcome>,
}

/// The event handed out and not yet answered.
struct Pending {
    request_id: Arc<str>,
    reply: oneshot::Sender<Outcome>,
    /// Kept to hand the same event out again on a repeated `next`.
    headers: HeaderMap,
    payload: Bytes,
}

/// What the Runtime API handlers share with the instance.
struct RuntimeShared {
    next: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    pending: Mutex<Option<Pending>>,
    init_error: Mutex<Option<Bytes>>,
    spawned_at: Instant,
    /// Set by the first `GET next`.
    ready_at: Mutex<Option<Instant>>,
    delivered_at: Mutex<Option<Instant>>,
    /// Signalled by `GET next` as it hands an event over.
    delivered: tokio::sync::Notify,
    /// Tags stdout/stderr lines with the invocation they belong to: set when an
    /// event is handed over, kept after the answer (a line read late was still
    /// written during that invocation).
    current_request: Mutex<Option<Arc<str>>>,
    output: OutputProgress,
}

/// How far the capture of the runtime's stdout and stderr has got, so a log tail
/// taken right after an answer holds what the function printed before answering
/// (the lines are in the pipes by then; the capture tasks may not have read them).
#[derive(Default)]
struct OutputProgress {
    /// Duplicates of the pipes' read ends, to ask how much is unread.
    pipes: Mutex<Vec<std::os::fd::OwnedFd>>,
    /// Bytes read out of the pipes, and bytes of those already in the log.
    read: std::sync::atomic::AtomicU64,
    logged: std::sync::atomic::AtomicU64,
    moved: tokio::sync::Notify,
}

/// What stands between the log and everything the runtime has written so far.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Backlog {
    /// Everything written is in the log.
    None,
    /// Bytes wait in a pipe: the capture task will log them as soon as it runs,
    /// however busy the machine (seen: > 20 ms on a loaded CI run).
    Unread,
    /// Read but not logged: a line still without its newline (which may never
    /// come), or a line being logged at this moment.
    Unfinished,
}

impl OutputProgress {
    fn backlog(&self) -> Backlog {
        use std::sync::atomic::Ordering::Acquire;
        let unread: u64 = self
            .pipes
            .lock()
            .unwrap()
            .iter()
            .map(|pipe| rustix::io::ioctl_fionread(pipe).unwrap_or(0))
            .sum();
        if unread > 0 {
            Backlog::Unread
        } else if self.read.load(Acquire) != self.logged.load(Acquire) {
            Backlog::Unfinished
        } else {
            Backlog::None
        }
    }
}

/// A stream that counts what is read from it into [`OutputProgress::read`].
struct Counted<R> {
    inner: R,
    shared: Arc<RuntimeShared>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            let read = (buf.filled().len() - before) as u64;
            self.shared
                .output
                .read
                .fetch_add(read, std::sync::atomic::Ordering::Release);
        }
        polled
    }
}

pub struct Instance {
    pub id: String,
    pid: i32,
    shared: Arc<RuntimeShared>,
    next_tx: mpsc::Sender<Delivery>,
    exited: watch::Receiver<Option<String>>,
    stop: CancellationToken,
    invocations: std::sync::atomic::AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
    pub last_used: Mutex<Instant>,
    /// `/proc/<pid>/status`, opened once at spawn and read again (one `pread`) at
    /// each invocation's report: opening it by path cost four system calls a call.
    status: Option<std::fs::File>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl Instance {
    /// Spawns the process and its Runtime API endpoint, or makes `prestarted` the
    /// instance (`crate::prestart`); does not wait for init.
    pub async fn start(
        launch: Launch,
        logs: Arc<FunctionLogs>,
        prestarted: Option<crate::prestart::Prestarted>,
    ) -> std::io::Result<Arc<Instance>> {
        let (id, dir) = match &prestarted {
            Some(prestarted) => (prestarted.id.clone(), prestarted.dir.clone()),
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let dir = launch.run_dir.join(&id);
                (id, dir)
            }
        };
        let tmp = dir.join("tmp");
        if prestarted.is_none() {
            // Two mkdirs take microseconds; a hop to the blocking pool took 0.3 ms of
            // each cold start (measured).
            std::fs::create_dir_all(&tmp)?;
        }

        let mut prestarted = prestarted;
        let listener = match &mut prestarted {
            Some(prestarted) => TcpListener::from_std(prestarted.take_runtime_api_listener()?)?,
            None => TcpListener::bind(("127.0.0.1", 0)).await?,
        };
        let api_addr = listener.local_addr()?;
        let api = api_addr.to_string();
        if let Some(prestarted) = &mut prestarted {
            // First thing: the interpreter wakes and sets its environment while
            // the rest of this is done (`Prestarted::specialize` sends the layer).
            let env: Vec<_> = instance_env(&launch, &api, &tmp, &dir).collect();
            prestarted.send_environment(
                &launch.program,
                &launch.args,
                &env,
                launch.memory_limit,
            )?;
        }
        let rules = InstanceRules {
            dir: &dir,
            read_only: launch.read_only.clone(),
            runtime_api_port: api_addr.port(),
            platform_ports: launch.platform_ports.clone(),
            memory_bytes: launch.memory_limit,
            memory_mb: launch.memory_mb,
            network: launch.network.clone(),
            scratch_mb: launch.scratch_mb,
        };
        let sandbox = match (&launch.sandbox, &prestarted) {
            (Some(sandbox), None) => match sandbox.prepare(&rules) {
                Ok(prepared) => Some(prepared),
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
            },
            _ => None,
        };
        let (next_tx, next_rx) = mpsc::channel(1);
        let shared = Arc::new(RuntimeShared {
            next: tokio::sync::Mutex::new(next_rx),
            pending: Mutex::new(None),
            init_error: Mutex::new(None),
            spawned_at: Instant::now(),
            ready_at: Mutex::new(None),
            delivered_at: Mutex::new(None),
            delivered: tokio::sync::Notify::new(),
            current_request: Mutex::new(None),
            output: OutputProgress::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve_runtime_api(
            listener,
            Arc::clone(&shared),
            stop.clone(),
        ));

        let cgroups = match (&sandbox, &prestarted) {
            (Some(sandbox), _) => sandbox.cgroup_dirs(),
            (None, Some(prestarted)) => prestarted.cgroups.clone(),
            (None, None) => Vec::new(),
        };
        let spawned = match (sandbox, prestarted) {
            (_, Some(prestarted)) => specialize(prestarted, &launch, &rules),
            (Some(sandbox), None) => spawn_sandboxed(sandbox, &launch, &api, &tmp, &dir),
            (None, None) => spawn_plain(&launch, &api, &tmp, &dir),
        };
        let (mut child, stdout, stderr) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                stop.cancel();
                crate::sandbox::remove_cgroups_when_empty(cgroups).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(error);
            }
        };
        let pid = child.id();
        let status = std::fs::File::open(format!("/proc/{pid}/status")).ok();
        for (stream, kind) in [(stdout, LogStream::Stdout), (stderr, LogStream::Stderr)] {
            if let Some((stream, pipe)) = stream {
                shared.output.pipes.lock().unwrap().push(pipe);
                let stream = Counted {
                    inner: stream,
                    shared: Arc::clone(&shared),
                };
                tokio::spawn(capture(
                    stream,
                    kind,
                    Arc::clone(&shared),
                    Arc::clone(&logs),
                ));
            }
        }
        let (exited_tx, exited) = watch::channel(None);
        tokio::spawn({
            let stop = stop.clone();
            async move {
                let description = tokio::select! {
                    status = child.wait() => match status {
                        Ok(status) => describe_exit(status),
                        Err(error) => error.to_string(),
                    },
                    // Stopped by us: kill the group, then reap.
                    () = stop.cancelled() => {
                        kill_group(pid);
                        let _ = child.wait().await;
                        "stopped".to_owned()
                    }
                };
                // Whatever the function left running in its group goes with it.
                kill_group(pid);
                stop.cancel();
                exited_tx.send_replace(Some(description));
                crate::sandbox::remove_cgroups_when_empty(cgroups).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        });
        Ok(Arc::new(Instance {
            id,
            pid,
            shared,
            next_tx,
            exited,
            stop,
            invocations: Default::default(),
            stopped: Default::default(),
            last_used: Mutex::new(Instant::now()),
            status,
        }))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn started_at(&self) -> Instant {
        self.shared.spawned_at
    }

    /// True if it was already marked: the pool counts each instance down once.
    pub fn mark_counted_stopped(&self) -> bool {
        self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Kills the process group and closes the endpoint.
    pub fn stop(&self) {
        kill_group(self.pid);
        self.stop.cancel();
    }

    /// The process's peak resident memory (`VmHWM`), as Lambda's Max Memory Used.
    pub fn peak_memory_mb(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt as _;
        // The whole file is about 1.5 KiB; `VmHWM` is in its first kilobyte.
        let mut buffer = [0u8; 4096];
        let read = self.status.as_ref()?.read_at(&mut buffer, 0).ok()?;
        peak_memory_mb_of(&buffer[..read])
    }

    /// Waits until everything the runtime has written so far is in the function's
    /// log: bytes still in a pipe are waited for up to `unread_limit` (they are
    /// sure to come; only a starved capture task delays them), a line without its
    /// newline up to `partial_limit` (it may never be finished).
    pub async fn settle_output(&self, partial_limit: Duration, unread_limit: Duration) {
        let now = tokio::time::Instant::now();
        let (partial_deadline, unread_deadline) = (now + partial_limit, now + unread_limit);
        loop {
            let moved = self.shared.output.moved.notified();
            tokio::pin!(moved);
            // Registered before the check, so progress between the two wakes us.
            moved.as_mut().enable();
            let deadline = match self.shared.output.backlog() {
                Backlog::None => return,
                Backlog::Unread => unread_deadline,
                Backlog::Unfinished => partial_deadline,
            };
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return;
            }
        }
    }

    /// Hands one event to the runtime and waits for its answer, the process's end,
    /// or the time limit (which kills the group): as on Lambda, `timeout` counts from
    /// the moment the runtime takes the event, and a runtime still initialising has
    /// [`INIT_LIMIT`] to ask for it first — a slow cold start does not eat the
    /// function's own time.
    pub async fn invoke(
        &self,
        invocation: Invocation,
        timeout: Duration,
    ) -> (Result<Outcome, Failure>, Timing) {
        let first = self
            .invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0;
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let mut exited = self.exited.clone();
        let result = if self
            .next_tx
            .try_send(Delivery { invocation, reply })
            .is_err()
        {
            Err(Failure::Exited("the runtime is not taking events".into()))
        } else {
            tokio::select! {
                // An answer wins over the exit that may follow it.
                biased;
                answer = answer => answer.map_err(|_| Failure::Exited(
                    "the runtime stopped without answering".into())),
                exit = exited.wait_for(Option::is_some) => {
                    let description = exit
                        .map(|e| e.clone().unwrap_or_default())
                        .unwrap_or_default();
                    match self.shared.init_error.lock().unwrap().clone() {
                        Some(body) => Err(Failure::Init(body)),
                        None => Err(Failure::Exited(description)),
                    }
                }
                () = async {
                    let _ = tokio::time::timeout(INIT_LIMIT, self.shared.delivered.notified()).await;
                    tokio::time::sleep(timeout).await;
                } => {
                    self.stop();
                    Err(Failure::TimedOut)
                }
            }
        };
        let now = Instant::now();
        let ready_at = *self.shared.ready_at.lock().unwrap();
        let delivered_at = self.shared.delivered_at.lock().unwrap().take();
        let timing = Timing {
            duration: now.duration_since(delivered_at.unwrap_or(started)),
            init: if first {
                ready_at.map(|ready| ready.duration_since(self.shared.spawned_at))
            } else {
                None
            },
        };
        *self.last_used.lock().unwrap() = now;
        (result, timing)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An instance's process: started plainly (`posix_spawn`) or inside its sandbox.
enum Process {
    Plain(tokio::process::Child),
    Sandboxed(crate::sandbox::Child),
}

/// A captured stdout or stderr, and a duplicate of its pipe's read end (to ask how
/// much is unread).
type Output = Option<Captured>;
type Captured = (Box<dyn AsyncRead + Unpin + Send>, std::os::fd::OwnedFd);

/// The read end of an output pipe, as captured: the stream and its duplicate.
fn captured<R>(stream: R) -> std::io::Result<Captured>
where
    R: AsyncRead + std::os::fd::AsFd + Unpin + Send + 'static,
{
    let duplicate = rustix::io::dup(&stream)?;
    Ok((Box::new(stream), duplicate))
}

impl Process {
    fn id(&self) -> i32 {
        match self {
            Process::Plain(child) => child.id().map_or(0, |p| p as i32),
            Process::Sandboxed(child) => child.id(),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Process::Plain(child) => child.wait().await,
            Process::Sandboxed(child) => child.wait().await,
        }
    }
}

/// The environment every instance gets on top of its launch's.
fn instance_env<'a>(
    launch: &'a Launch,
    api: &'a str,
    tmp: &'a std::path::Path,
    dir: &'a std::path::Path,
) -> impl Iterator<Item = (String, String)> + 'a {
    launch.env.iter().cloned().chain([
        ("AWS_LAMBDA_RUNTIME_API".to_owned(), api.to_owned()),
        ("TMPDIR".to_owned(), tmp.display().to_string()),
        ("HOME".to_owned(), dir.display().to_string()),
    ])
}

fn spawn_plain(
    launch: &Launch,
    api: &str,
    tmp: &std::path::Path,
    dir: &std::path::Path,
) -> std::io::Result<(Process, Output, Output)> {
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(instance_env(launch, api, tmp, dir))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own group, so a timeout kills whatever the function started too.
        .process_group(0)
        .kill_on_drop(true);
    // Dropping the child on failure kills it (kill_on_drop).
    let mut child = command.spawn()?;
    set_memory_limit(child.id().map_or(0, |p| p as i32), launch.memory_limit)?;
    let stdout = child.stdout.take().map(captured).transpose()?;
    let stderr = child.stderr.take().map(captured).transpose()?;
    Ok((Process::Plain(child), stdout, stderr))
}

/// Limits are set in the child, before exec ([`crate::sandbox`]).
fn spawn_sandboxed(
    sandbox: crate::sandbox::InstanceSandbox,
    launch: &Launch,
    api: &str,
    tmp: &std::path::Path,
    dir: &std::path::Path,
) -> std::io::Result<(Process, Output, Output)> {
    let env: Vec<_> = instance_env(launch, api, tmp, dir).collect();
    let mut child = sandbox.spawn(&crate::sandbox::Command {
        program: &launch.program,
        args: &launch.args,
        env: &env,
        capture: true,
        stdin: None,
    })?;
    let pipe = |fd: std::os::fd::OwnedFd| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd).and_then(captured)
    };
    let stdout = child.stdout.take().map(pipe).transpose()?;
    let stderr = child.stderr.take().map(pipe).transpose()?;
    Ok((Process::Sandboxed(child), stdout, stderr))
}

/// A pre-started interpreter made this instance: its environment sent
/// ([`crate::prestart::Prestarted::send_environment`]), then its cgroups' limits
/// set to the function's and its Landlock layer sent (`crate::prestart`). On
/// failure it is killed and reaped here.
fn specialize(
    mut prestarted: crate::prestart::Prestarted,
    launch: &Launch,
    rules: &InstanceRules<'_>,
) -> std::io::Result<(Process, Output, Output)> {
    let sandbox = launch
        .sandbox
        .as_ref()
        .ok_or_else(|| std::io::Error::other("pre-started interpreters run sandboxed only"))?;
    sandbox.resize_cgroups(
        &prestarted.cgroups,
        prestarted.cgroup_size,
        (launch.memory_limit, launch.memory_mb),
    )?;
    let layer = sandbox.function_layer(prestarted.take_layer_base()?, rules)?;
    let mut child = prestarted.specialize(layer)?;
    let pipe = |fd: std::os::fd::OwnedFd| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd).and_then(captured)
    };
    let stdout = child.stdout.take().map(pipe).transpose()?;
    let stderr = child.stderr.take().map(pipe).transpose()?;
    Ok((Process::Sandboxed(child), stdout, stderr))
}

/// `VmHWM` of a `/proc/<pid>/status` text, in MiB rounded up. Bytes, not `str`: the
/// process's name in the same file is whatever bytes it chose.
fn peak_memory_mb_of(status: &[u8]) -> Option<u64> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"VmHWM:"))?;
    let kib: u64 = std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib.div_ceil(1024))
}

fn kill_group(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(0), _) => "Runtime exited without providing a reason".to_owned(),
        (Some(code), _) => format!("Runtime exited with error: exit status {code}"),
        (None, Some(9)) => "Runtime exited with error: signal: killed".to_owned(),
        (None, Some(signal)) => format!("Runtime exited with error: signal {signal}"),
        (None, None) => "Runtime exited".to_owned(),
    }
}

/// RLIMIT_DATA caps heap, anonymous mappings and thread stacks — what a
/// memory-hungry function grows — but not the address space that Node and Python
/// reserve without touching. cgroup v2 `memory.max` would be exact; this machine
/// has only a v1 hierarchy the invoker cannot delegate, so rlimits it is
/// (docs/operations.md gives the margin).
///
/// Set on the started child with prlimit(2), not in a `pre_exec` hook: a hook makes
/// the standard library fork() the whole invoker instead of using posix_spawn, which
/// costs milliseconds per cold start once the invoker is large. The price is a
/// window of microseconds after exec in which the runtime starts unlimited — before
/// it has asked for its first event, so before any handler runs.
pub(crate) fn set_memory_limit(pid: i32, bytes: u64) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::other("the child has no pid"))?;
    let limit = rustix::process::Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Data, limit)?;
    Ok(())
}

/// Forwards the process's output to the function's log, line by line, tagged with
/// the invocation it was written during.
async fn capture(
    stream: impl AsyncRead + Unpin,
    kind: LogStream,
    shared: Arc<RuntimeShared>,
    logs: Arc<FunctionLogs>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
        let request = shared.current_request.lock().unwrap().clone();
        logs.push(request, kind, text.into_owned());
        shared
            .output
            .logged
            .fetch_add(line.len() as u64, std::sync::atomic::Ordering::Release);
        shared.output.moved.notify_waiters();
    }
}

async fn serve_runtime_api(
    listener: TcpListener,
    shared: Arc<RuntimeShared>,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        // Room to see an oversized response and report it the way Lambda does.
        .layer(DefaultBodyLimit::max(MAX_RESPONSE + 1024 * 1024))
        .with_state(shared);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

/// `202` with no body. Lambda adds `{"status":"OK"}`, but the `lambda_runtime`
/// crate never reads it, and a connection with an unread body cannot go back to
/// its client's pool: every event then cost a new connection (measured: +150 µs).
fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn runtime_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"errorMessage": message, "errorType": error_type})),
    )
        .into_response()
}

async fn next(State(shared): State<Arc<RuntimeShared>>) -> Response {
    shared
        .ready_at
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    // A second `next` before an answer gets the same event again: nothing pending
    // is ever dropped by a repeated (or a stray) request.
    if let Some(pending) = &*shared.pending.lock().unwrap() {
        return (
            StatusCode::OK,
            pending.headers.clone(),
            pending.payload.clone(),
        )
            .into_response();
    }
    let delivery = shared.next.lock().await.recv().await;
    let Some(Delivery { invocation, reply }) = delivery else {
        return runtime_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "the instance is stopping",
        );
    };
    *shared.delivered_at.lock().unwrap() = Some(Instant::now());
    shared.delivered.notify_one();
    *shared.current_request.lock().unwrap() = Some(Arc::clone(&invocation.request_id));

    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", &invocation.request_id);
    let deadline = (SystemTime::now() + invocation.timeout)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    set("lambda-runtime-deadline-ms", &deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        &invocation.function_arn,
    );
    if let Some(trace) = &invocation.trace_id {
        set("lambda-runtime-trace-id", trace);
    }
    if let Some(context) = &invocation.client_context {
        set("lambda-runtime-client-context", context);
    }
    if let Some(identity) = &invocation.cognito_identity {
        set("lambda-runtime-cognito-identity", identity);
    }
    set("content-type", "application/json");
    *shared.pending.lock().unwrap() = Some(Pending {
        request_id: Arc::clone(&invocation.request_id),
        reply,
        headers: headers.clone(),
        payload: invocation.payload.clone(),
    });
    (StatusCode::OK, headers, invocation.payload).into_response()
}

fn take_pending(shared: &RuntimeShared, id: &str) -> Option<oneshot::Sender<Outcome>> {
    let mut pending = shared.pending.lock().unwrap();
    match &*pending {
        Some(current) if &*current.request_id == id => pending.take().map(|p| p.reply),
        _ => None,
    }
}

async fn response(
    State(shared): State<Arc<RuntimeShared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(reply) = take_pending(&shared, &id) else {
        return runtime_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "no invocation with this id is waiting for an answer",
        );
    };
    if body.len() > MAX_RESPONSE {
        let message = format!(
            "Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).",
            body.len()
        );
        let _ = reply.send(Outcome::Error {
            body: serde_json::to_vec(&serde_json::json!({
                "errorMessage": message, "errorType": "Function.ResponseSizeTooLarge"}))
            .unwrap_or_default()
            .into(),
            error_type: "Function.ResponseSizeTooLarge".into(),
        });
        return runtime_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &message,
        );
    }
    let _ = reply.send(Outcome::Response(body));
    accepted()
}

fn error_type(headers: &HeaderMap) -> String {
    headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled")
        .to_owned()
}

async fn error(
    State(shared): State<Arc<RuntimeShared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(reply) = take_pending(&shared, &id) else {
        return runtime_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "no invocation with this id is waiting for an answer",
        );
    };
    let _ = reply.send(Outcome::Error {
        body,
        error_type: error_type(&headers),
    });
    accepted()
}

async fn init_error(State(shared): State<Arc<RuntimeShared>>, body: Bytes) -> Response {
    *shared.init_error.lock().unwrap() = Some(body);
    accepted()
}

#[cfg(test)]
mod tests {
    use super::{Backlog, OutputProgress, peak_memory_mb_of};
    use std::sync::atomic::Ordering::Release;

    /// A log tail waits long for bytes still in a pipe and briefly for a line
    /// without its newline, so the two must be told apart.
    #[test]
    fn the_backlog_tells_bytes_in_a_pipe_from_a_line_without_its_newline() {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let progress = OutputProgress::default();
        progress
            .pipes
            .lock()
            .unwrap()
            .push(rustix::io::dup(&read_end).unwrap());
        assert_eq!(progress.backlog(), Backlog::None);
        rustix::io::write(&write_end, b"printed before answering\npartial").unwrap();
        assert_eq!(progress.backlog(), Backlog::Unread);
        let mut buffer = [0u8; 64];
        let read = rustix::io::read(&read_end, &mut buffer).unwrap();
        assert_eq!(read, 32);
        progress.read.fetch_add(read as u64, Release);
        assert_eq!(progress.backlog(), Backlog::Unfinished);
        progress.logged.fetch_add(25, Release);
        assert_eq!(progress.backlog(), Backlog::Unfinished);
        rustix::io::write(&write_end, b" line\n").unwrap();
        assert_eq!(progress.backlog(), Backlog::Unread);
        let read = rustix::io::read(&read_end, &mut buffer).unwrap();
        progress.read.fetch_add(read as u64, Release);
        progress.logged.fetch_add(13, Release);
        assert_eq!(progress.backlog(), Backlog::None);
    }

    #[test]
    fn peak_memory_is_read_from_vm_hwm_whatever_the_process_is_called() {
        let status = b"Name:\t\xff\xfehostile\nUmask:\t0022\nVmPeak:\t  20000 kB\nVmHWM:\t    2049 kB\nVmRSS:\t    1500 kB\n";
        assert_eq!(peak_memory_mb_of(status), Some(3));
        assert_eq!(peak_memory_mb_of(b"VmHWM:\t 1024 kB\n"), Some(1));
        assert_eq!(peak_memory_mb_of(b"Name:\tx\nVmRSS:\t 1024 kB\n"), None);
        assert_eq!(peak_memory_mb_of(b"VmHWM:\t lots kB\n"), None);
        assert_eq!(peak_memory_mb_of(b""), None);
    }

    #[test]
    fn a_live_process_has_a_peak() {
        let status = std::fs::read("/proc/self/status").unwrap();
        assert!(peak_memory_mb_of(&status).is_some_and(|mb| mb > 0));
    }
}
