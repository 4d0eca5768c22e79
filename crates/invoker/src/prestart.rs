//! Pre-started interpreters (issue 21): python3 processes that are already
//! running, already sandboxed (cgroups joined, namespaces, tmpfs) and have already
//! imported the bootstrap, waiting to be told which function they are. A cold
//! start of an eligible function takes one instead of spawning: a python3
//! instance runs in it (~2.5 ms instead of ~33), a native or Node instance is
//! exec'd from it once it is restricted.
//!
//! Why pre-started rather than forked from a zygote: a fork inherits its parent's
//! sandbox, so a zygote would have to enter each instance's sandbox itself after
//! the fork — the user and mount namespaces, the tmpfs, the uid, limits, Landlock
//! and seccomp — reimplemented in Python over ctypes. Here every instance is still
//! started by the invoker's own spawn path ([`crate::sandbox::spawn`]), which the
//! hostile-function suite exercises, and the only step left to the interpreter is
//! one `landlock_restrict_self` with a ruleset the invoker built:
//!
//! 1. The invoker spawns `python -u bootstrap.py --prestarted` in a sandbox of
//!    its own ([`Sandbox::prepare_prestarted`]): its own namespaces, tmpfs, uid,
//!    cgroups, limits and seccomp, and a first Landlock layer that lets it read
//!    every function's code and does not handle TCP. Its stdin is a Unix socket
//!    to the invoker; its environment holds no function's anything. It joins the
//!    pool once it has written `R` on the socket (its imports are done). While it
//!    waits, the invoker makes what does not depend on the function: the base of
//!    its future Landlock layer ([`Sandbox::function_layer_base`]) and its
//!    instance's Runtime API listener, with a connection to it.
//! 2. A cold start takes one and sends it the instance's complete environment
//!    and memory limit over the socket at once; then it sets its cgroups' limits
//!    to the function's (made at the default memory size's, so mostly nothing to
//!    write), completes the function's Landlock layer
//!    ([`Sandbox::function_layer`]) and sends it, with the Runtime API
//!    connection. Two messages, so that the interpreter wakes and sets its
//!    environment while the invoker builds the layer.
//! 3. The interpreter sets the environment and lowers its `RLIMIT_DATA`, waits
//!    for the layer, restricts itself with it (exiting if it cannot), closes the
//!    socket, then runs the bootstrap, which imports the handler, or execs the
//!    function's program (the sandbox, limits, both layers and the seccomp
//!    filters survive `execve`).
//!    Function code runs only after step 3, under both layers, i.e. exactly the
//!    rules a freshly spawned instance gets.
//!
//! A pre-started process serves one instance of one function and dies with it: no
//! state of one function can reach another. Functions that ask for their own
//! scratch size get a fresh process instead (the tmpfs is mounted at pre-start),
//! and so do python3 functions whose environment sets what an interpreter or the
//! loader reads only at start (`PYTHON*` but `PYTHONPATH`, `LD_*`, locale and
//! time-zone variables, malloc tunables); an exec'd program reads it afresh.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::sandbox::{Child, Command, Sandbox};

/// RLIMIT_DATA of a process not yet any function's: the largest a function may
/// get (10,240 MB + the margin), lowered to its function's when it is taken.
const PRESTART_MEMORY_BYTES: u64 = (10_240 + 64) * 1024 * 1024;

/// What a pre-started interpreter is: the program and its arguments, the trees it
/// may read before it is any function's (all functions' code, the runtimes, the
/// interpreters an instance may exec) and where its instance dir goes.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub read_only: Vec<PathBuf>,
    pub run_dir: PathBuf,
    /// PATH (the interpreter's dir first, as for a spawned instance).
    pub path: String,
    /// The memory size and limit its cgroups are made with: a function of the
    /// default size's, so that taking one for such a function (most) writes
    /// nothing to them (~75 µs of three cgroup writes, measured). Its
    /// `RLIMIT_DATA` is the largest a function may get until it is taken.
    pub memory_mb: u64,
    pub memory_limit: u64,
}

/// How many interpreters the pool keeps, how many wait now, and how many cold
/// starts have taken one since the invoker started (all 0 until a function is
/// deployed or called, and when turned off).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct PrestartStatus {
    pub size: usize,
    pub ready: usize,
    pub taken: u64,
}

/// A few pre-started interpreters of one runtime, refilled as they are taken.
#[derive(Debug)]
pub struct PrestartPool {
    sandbox: Arc<Sandbox>,
    recipe: Recipe,
    size: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: VecDeque<Prestarted>,
    starting: usize,
    taken: u64,
}

/// A started interpreter waiting for its function.
#[derive(Debug)]
pub struct Prestarted {
    pub id: String,
    pub dir: PathBuf,
    pub cgroups: Vec<PathBuf>,
    /// The memory limit and size its cgroups were made with.
    pub cgroup_size: (u64, u64),
    child: Option<Child>,
    control: UnixStream,
    /// What it runs as an instance without exec'ing anything: its program and
    /// arguments but the `--prestarted` flag.
    runs: (PathBuf, Vec<OsString>),
    /// Made while it waits, off the cold path: the function-independent part of
    /// its function's Landlock layer ([`Sandbox::function_layer_base`]), and its
    /// instance's Runtime API listener with a connection already made to it (a
    /// bind and a ~70 µs connect a cold start no longer pays, measured). The
    /// listener goes to the instance's server, the connection to the interpreter.
    layer_base: Option<landlock::RulesetCreated>,
    runtime_api_listener: Option<std::net::TcpListener>,
    runtime_api_connection: Option<std::net::TcpStream>,
    /// Whether it will exec another program (then it gets no Runtime API
    /// connection); `None` until [`Prestarted::send_environment`] has told it.
    execs: Option<bool>,
}

impl PrestartPool {
    /// A pool of `size` (0: never starts any); call [`PrestartPool::refill`] to fill it.
    pub fn new(sandbox: Arc<Sandbox>, recipe: Recipe, size: usize) -> Arc<PrestartPool> {
        Arc::new(PrestartPool {
            sandbox,
            recipe,
            size,
            state: Mutex::new(PoolState::default()),
        })
    }

    /// The oldest live interpreter, if any. The caller refills the pool
    /// ([`PrestartPool::refill`]) once the instance it made has answered its first
    /// call and that answer has reached its caller: a replacement's start-up
    /// (~25 ms of CPU) would otherwise compete with both on two cores (Node's cold
    /// start read ~8 ms slower; Python's ~0.7 ms).
    pub fn take(self: &Arc<Self>) -> Option<Prestarted> {
        let taken = loop {
            let next = self.state.lock().unwrap().ready.pop_front();
            match next {
                // Killed (by the OOM killer, an operator) while it waited: dropped.
                Some(prestarted) if prestarted.has_exited() => continue,
                other => break other,
            }
        };
        if taken.is_some() {
            self.state.lock().unwrap().taken += 1;
        }
        taken
    }

    pub fn status(&self) -> PrestartStatus {
        let state = self.state.lock().unwrap();
        PrestartStatus {
            size: self.size,
            ready: state.ready.len(),
            taken: state.taken,
        }
    }

    /// Starts interpreters until `size` are ready or starting.
    pub fn refill(self: &Arc<Self>) {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.ready.len() + state.starting >= self.size {
                    return;
                }
                state.starting += 1;
            }
            let pool = Arc::clone(self);
            // clone + exec take ~1 ms; then this blocking thread waits (~25 ms)
            // for the interpreter to say it has imported what it needs.
            tokio::task::spawn_blocking(move || {
                let started = pool
                    .start_one()
                    .and_then(Prestarted::await_ready)
                    .and_then(|prestarted| prestarted.prepare(&pool.sandbox));
                let mut state = pool.state.lock().unwrap();
                state.starting -= 1;
                match started {
                    Ok(prestarted) => state.ready.push_back(prestarted),
                    Err(error) => {
                        drop(state);
                        tracing::warn!(%error, "pre-starting an interpreter failed");
                    }
                }
            });
        }
    }

    fn start_one(&self) -> std::io::Result<Prestarted> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.recipe.run_dir.join(&id);
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let sandbox = match self.sandbox.prepare_prestarted(
            &dir,
            &self.recipe.read_only,
            PRESTART_MEMORY_BYTES,
            (self.recipe.memory_limit, self.recipe.memory_mb),
        ) {
            Ok(sandbox) => sandbox,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        let cgroups = sandbox.cgroup_dirs();
        let cleanup = |error: std::io::Error| {
            crate::sandbox::remove_cgroups(&cgroups);
            let _ = std::fs::remove_dir_all(&dir);
            error
        };
        let (control, theirs) = UnixStream::pair().map_err(cleanup)?;
        // Nothing of any function: the platform's fixed variables only.
        let env = [
            ("PATH", self.recipe.path.clone()),
            ("LANG", "C.UTF-8".to_owned()),
            ("TZ", ":UTC".to_owned()),
            ("PYTHONUNBUFFERED", "1".to_owned()),
            ("HOME", dir.display().to_string()),
            ("TMPDIR", tmp.display().to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let child = sandbox
            .spawn(&Command {
                program: &self.recipe.program,
                args: &self.recipe.args,
                env: &env,
                capture: true,
                stdin: Some(theirs.as_fd()),
            })
            .map_err(cleanup)?;
        let mut args = self.recipe.args.clone();
        args.pop();
        Ok(Prestarted {
            id,
            dir,
            cgroups,
            cgroup_size: (self.recipe.memory_limit, self.recipe.memory_mb),
            child: Some(child),
            control,
            runs: (self.recipe.program.clone(), args),
            layer_base: None,
            runtime_api_listener: None,
            runtime_api_connection: None,
            execs: None,
        })
    }
}

/// How long an interpreter may take to import the bootstrap and say so.
const READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Prestarted {
    /// Waits for the interpreter's one-byte "ready" (sent once it has imported
    /// the bootstrap), so that a cold start takes only interpreters past their
    /// start-up. One that dies or stays silent is dropped (killed).
    fn await_ready(self) -> std::io::Result<Prestarted> {
        use std::io::Read as _;
        self.control.set_read_timeout(Some(READY_LIMIT))?;
        let mut byte = [0u8; 1];
        (&self.control).read_exact(&mut byte)?;
        if byte != *b"R" {
            return Err(std::io::Error::other(
                "the interpreter said something else than ready",
            ));
        }
        Ok(self)
    }

    /// What a cold start would otherwise make on its path: the base of its
    /// layer (once it has said it is ready, its working dir is its tmpfs) and its
    /// Runtime API socket.
    fn prepare(mut self, sandbox: &Sandbox) -> std::io::Result<Prestarted> {
        self.layer_base = Some(sandbox.function_layer_base(self.pid())?);
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        // Loopback to a listening socket: connected without waiting for an accept.
        let connection = std::net::TcpStream::connect(listener.local_addr()?)?;
        connection.set_nodelay(true)?;
        listener.set_nonblocking(true)?;
        self.runtime_api_listener = Some(listener);
        self.runtime_api_connection = Some(connection);
        Ok(self)
    }

    /// Its instance's Runtime API listener, for the instance's server; the
    /// connection made to it goes to the interpreter with
    /// [`Prestarted::specialize`].
    pub fn take_runtime_api_listener(&mut self) -> std::io::Result<std::net::TcpListener> {
        self.runtime_api_listener
            .take()
            .ok_or_else(|| std::io::Error::other("the Runtime API listener is taken"))
    }

    /// The base of its function's Landlock layer.
    pub fn take_layer_base(&mut self) -> std::io::Result<landlock::RulesetCreated> {
        self.layer_base
            .take()
            .ok_or_else(|| std::io::Error::other("the layer is taken"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn has_exited(&self) -> bool {
        self.child.as_ref().is_none_or(Child::has_exited)
    }

    /// Makes it an instance, first step: sends its whole environment and its
    /// `RLIMIT_DATA`, which it applies while the caller sets its cgroups' limits
    /// and completes its Landlock layer ([`Prestarted::specialize`]). The message
    /// is a 4-byte big-endian length and a JSON object `{"env": [[name, value], …],
    /// "memory_limit": bytes, "exec": null | [program, args…]}`. The interpreter
    /// lowers its own limit: prlimit(2) on another uid's process needs
    /// `CAP_SYS_RESOURCE`, which a root invoker in a container often lacks.
    ///
    /// An instance of another program (`program` and `args` other than what it
    /// runs itself: a native `bootstrap`, Node) gets `"exec"`, which the
    /// interpreter execs once restricted: the exec'd program keeps the sandbox,
    /// the limits, both Landlock layers and the seccomp filters.
    pub fn send_environment(
        &mut self,
        program: &std::path::Path,
        args: &[OsString],
        env: &[(String, String)],
        memory_limit: u64,
    ) -> std::io::Result<()> {
        let exec = if (program, args) == (self.runs.0.as_path(), self.runs.1.as_slice()) {
            None
        } else {
            let utf8 = |s: &std::ffi::OsStr| {
                s.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| std::io::Error::other("a program argument is not UTF-8"))
            };
            let argv = std::iter::once(utf8(program.as_os_str()))
                .chain(args.iter().map(|a| utf8(a)))
                .collect::<std::io::Result<Vec<_>>>()?;
            Some(argv)
        };
        let mut message = vec![0; 4];
        serde_json::to_writer(
            &mut message,
            &serde_json::json!({ "env": env, "memory_limit": memory_limit, "exec": exec }),
        )
        .map_err(std::io::Error::other)?;
        let length = u32::try_from(message.len() - 4)
            .map_err(|_| std::io::Error::other("environment too large"))?;
        message[..4].copy_from_slice(&length.to_be_bytes());
        // A few KB into an empty socket buffer: sent whole, without blocking.
        let sent = rustix::net::send(&self.control, &message, rustix::net::SendFlags::NOSIGNAL)?;
        if sent != message.len() {
            return Err(std::io::Error::other("the environment was sent in part"));
        }
        self.execs = Some(exec.is_some());
        Ok(())
    }

    /// Makes it an instance, second step: sends its function's Landlock layer
    /// (the caller has set its cgroups' limits), with which it restricts itself
    /// before any function code runs, and hands back its process. The message is
    /// one byte, `L`, the layer's descriptor riding along (SCM_RIGHTS).
    ///
    /// One that runs as itself also gets the connection to its Runtime API made
    /// while it waited (the second descriptor): the server accepts it while the
    /// interpreter restricts itself and imports the handler, so its first `GET
    /// next` waits for neither (175 → ~100 µs, measured). Its layer still allows
    /// that port, for a reconnect. An exec'd program connects by itself (it would
    /// not know the descriptor).
    pub fn specialize(mut self, layer: OwnedFd) -> std::io::Result<Child> {
        let execs = self
            .execs
            .ok_or_else(|| std::io::Error::other("the environment was not sent"))?;
        let runtime_api = self
            .runtime_api_connection
            .take()
            .ok_or_else(|| std::io::Error::other("no Runtime API connection"))?;
        let fds = [layer.as_fd(), runtime_api.as_fd()];
        let fds = if execs { &fds[..1] } else { &fds[..] };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
        if !ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
            return Err(std::io::Error::other("no room for the descriptors"));
        }
        let sent = rustix::net::sendmsg(
            &self.control,
            &[IoSlice::new(b"L")],
            &mut ancillary,
            rustix::net::SendFlags::NOSIGNAL,
        )?;
        if sent != 1 {
            return Err(std::io::Error::other("the layer was not sent"));
        }
        self.child
            .take()
            .ok_or_else(|| std::io::Error::other("already specialised"))
    }
}

impl Drop for Prestarted {
    /// One never taken (the pool dropped at shutdown, or found dead): killed,
    /// reaped, its cgroups and dir removed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id()) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait_blocking();
            crate::sandbox::remove_cgroups(&self.cgroups);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
