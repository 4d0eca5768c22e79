//! Starting an instance inside its sandbox without forking the invoker.
//!
//! A `pre_exec` hook makes the standard library `fork()` the whole invoker: its page
//! tables are copied, and every page the invoker's other threads then write is
//! copied again until the child execs. For an invoker serving the whole cloud that
//! was 2.0–2.5 ms of a native cold start (docs/benchmarks.md), against ~0.3 ms for
//! the `posix_spawn` the standard library uses without a hook. This does what
//! `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a small stack of its own,
//! so the child borrows the invoker's memory, makes the sandbox's syscalls
//! ([`InstanceSandbox::enter`]) and execs, while the calling thread waits.
//!
//! What that sharing demands of the child, and why it holds here:
//! - It must not disturb the invoker's memory or threads: it makes raw syscalls
//!   (rustix's, which act on the calling thread only — glibc's `setresuid` would
//!   signal the invoker's threads to change theirs too), writes only into the plan
//!   the suspended thread handed it, and allocates only an error on its way out
//!   (the malloc arenas it would use are the suspended thread's own).
//! - Signals: the calling thread blocks all of them before the clone, the child
//!   inherits that mask, resets every handler to its default in its own copy of
//!   the handler table and unblocks them only at exec; the invoker's handlers never
//!   run on the child's stack.
//! - Per-mm state: changing uid makes the (shared) mm non-dumpable until the child
//!   makes it dumpable again, and the child needs it dumpable to write its own
//!   `uid_map`. One spawn at a time ([`SPAWN_LOCK`]) keeps two children from
//!   undoing each other's; the invoker itself is unaffected (it ends dumpable, as it
//!   started).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Mutex;

use super::InstanceSandbox;

/// One child at a time borrows the invoker's memory (see the module's notes).
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// The child's stack: what [`InstanceSandbox::enter`] and the error path need,
/// with room to spare; only the pages touched are ever backed.
const STACK_SIZE: usize = 256 * 1024;

/// What to run, fully resolved: an absolute program path and the whole environment.
#[derive(Debug)]
pub struct Command<'a> {
    pub program: &'a Path,
    pub args: &'a [std::ffi::OsString],
    pub env: &'a [(String, String)],
    /// Pipes for stdout and stderr (the log capture), or `/dev/null`.
    pub capture: bool,
    /// Its stdin (a pre-started interpreter's control socket), else `/dev/null`.
    pub stdin: Option<std::os::fd::BorrowedFd<'a>>,
}

/// A started instance process: its own process group, reaped through a pidfd.
#[derive(Debug)]
pub struct Child {
    pid: rustix::process::Pid,
    pidfd: OwnedFd,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    reaped: bool,
}

impl InstanceSandbox {
    /// Starts `command` inside this sandbox. The sandbox is consumed: its cgroups'
    /// dirs are the caller's to remove ([`InstanceSandbox::cgroup_dirs`] first).
    pub fn spawn(self, command: &Command<'_>) -> std::io::Result<Child> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| std::io::Error::other("a program argument holds a NUL byte"))
        };
        if !command.program.is_absolute() {
            return Err(std::io::Error::other("the program path is not absolute"));
        }
        let program = cstring(command.program.as_os_str().as_bytes())?;
        let args = std::iter::once(Ok(program.clone()))
            .chain(command.args.iter().map(|a| cstring(a.as_bytes())))
            .collect::<std::io::Result<Vec<_>>>()?;
        let env = command
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let argv = null_terminated(&args);
        let envp = null_terminated(&env);

        let null = rustix::fs::open(
            c"/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let (stdout, stdout_child) = if command.capture {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            (Some(read), Some(write))
        } else {
            (None, None)
        };
        let (stderr, stderr_child) = if command.capture {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            (Some(read), Some(write))
        } else {
            (None, None)
        };
        let stdio = [
            command.stdin.map_or(null.as_raw_fd(), |fd| fd.as_raw_fd()),
            stdout_child.as_ref().unwrap_or(&null).as_raw_fd(),
            stderr_child.as_ref().unwrap_or(&null).as_raw_fd(),
        ];
        let mut plan = Plan {
            sandbox: &self,
            program: &program,
            argv: &argv,
            envp: &envp,
            stdio,
            failure: None,
        };
        let stack = Stack::new()?;

        let guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `child_main` only reads the plan and writes its `failure`, from a
        // child that shares this memory while this thread is suspended (CLONE_VFORK:
        // `clone` returns once the child has exec'd or exited), so the plan, the
        // strings it points to and the stack outlive every use. All signals are
        // blocked around it (module notes).
        #[allow(unsafe_code)]
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
            let pid = libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut plan).cast::<c_void>(),
            );
            let error = std::io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
            if pid < 0 { Err(error) } else { Ok(pid) }
        };
        drop(guard);
        drop(stack);
        let pid = pid?;
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| std::io::Error::other("clone returned pid 0"))?;
        if let Some(failure) = plan.failure.take() {
            // It exited before exec: reap it.
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            return Err(failure);
        }
        // Our unreaped child: its pid cannot have been reused, so this names it.
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(error) => {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                return Err(error.into());
            }
        };
        Ok(Child {
            pid,
            pidfd,
            stdout,
            stderr,
            reaped: false,
        })
    }
}

impl Child {
    pub fn id(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Whether the process has ended (its pidfd is readable), without waiting.
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of an open descriptor, no timeout.
        #[allow(unsafe_code)]
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready != 0
    }

    /// Waits for the process to end (it stays in its group; the caller kills that).
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if !self.reaped {
            // A duplicate, so a wait cancelled by `select!` leaves the pidfd intact.
            let duplicate = self.pidfd.try_clone()?;
            // SAFETY: the AsyncFd owns the duplicate, open until it is dropped.
            #[allow(unsafe_code)]
            let pidfd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    duplicate,
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(std::io::Error::from)?;
            // Readable once the process has exited.
            let _ = pidfd.readable().await?;
        }
        self.wait_blocking()
    }

    /// Waits for the process to end, blocking the thread.
    pub fn wait_blocking(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt as _;
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )?
        .ok_or_else(|| std::io::Error::other("waitid returned no status"))?;
        self.reaped = true;
        // Rebuilt as the `wait` status word `ExitStatus` decodes.
        let raw = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => (code & 0xff) << 8,
            (None, Some(signal)) => signal & 0x7f,
            (None, None) => 0,
        };
        Ok(std::process::ExitStatus::from_raw(raw))
    }
}

impl Drop for Child {
    /// A child dropped unreaped (its task was cancelled at shutdown) is killed, as
    /// `kill_on_drop` would, and reaped if it is already gone.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
            );
        }
    }
}

/// What the child needs, on the suspended thread's stack.
struct Plan<'a> {
    sandbox: &'a InstanceSandbox,
    program: &'a CStr,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    stdio: [RawFd; 3],
    /// Set by a child that could not exec, before it exits.
    failure: Option<std::io::Error>,
}

impl Plan<'_> {
    /// Runs in the child; returns only on failure.
    fn run(&self) -> std::io::Error {
        let result = (|| -> std::io::Result<()> {
            // SAFETY (whole block): plain syscalls on the child's own state; the
            // descriptors are open (owned by the suspended parent's frame).
            #[allow(unsafe_code)]
            unsafe {
                // Its own copy of the handler table: back to the defaults, so no
                // handler of the invoker runs here (32 and 33 belong to glibc and
                // are refused; exec resets them anyway).
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                for signal in 1..=libc::SIGRTMAX() {
                    if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                        libc::sigaction(signal, &default, std::ptr::null_mut());
                    }
                }
                // Its own process group, so a timeout kills whatever it started.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (target, &fd) in self.stdio.iter().enumerate() {
                    let target = target as c_int;
                    if fd == target {
                        // dup2 onto itself would keep close-on-exec.
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    } else if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            self.sandbox.enter()?;
            // SAFETY: the pointers are the NUL-terminated strings and
            // null-terminated arrays the plan borrows.
            #[allow(unsafe_code)]
            unsafe {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::execve(
                    self.program.as_ptr(),
                    self.argv.as_ptr(),
                    self.envp.as_ptr(),
                );
            }
            Err(std::io::Error::last_os_error())
        })();
        match result {
            Err(error) => error,
            Ok(()) => std::io::Error::other("exec returned"),
        }
    }
}

extern "C" fn child_main(plan: *mut c_void) -> c_int {
    // SAFETY: `plan` is the `Plan` the suspended parent passed to `clone`.
    #[allow(unsafe_code)]
    let plan = unsafe { &mut *plan.cast::<Plan<'_>>() };
    plan.failure = Some(plan.run());
    // SAFETY: ends this process only (no CLONE_THREAD) without running the
    // invoker's exit handlers.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(127)
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// An mmap'd stack with a guard page below it: an overflow faults instead of
/// writing into the invoker's memory.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> std::io::Result<Stack> {
        let page = rustix::param::page_size();
        let len = STACK_SIZE + page;
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        #[allow(unsafe_code)]
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let stack = Stack { base, len };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Stacks grow down: the child starts at the (page-aligned) end.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, as `clone` expects.
        #[allow(unsafe_code)]
        unsafe {
            self.base.cast::<u8>().add(self.len).cast()
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has exec'd or exited.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::path::PathBuf;

    use super::*;
    use crate::sandbox::{Egress, InstanceRules, Sandbox, SandboxConfig, SandboxMode};

    fn sandbox(dir: &Path) -> Sandbox {
        let sandbox = Sandbox::new(
            SandboxConfig {
                mode: SandboxMode::On,
                egress: Egress::None,
                ports: Vec::new(),
                scratch_mb: 16,
                pids: 16,
                uid_base: 1_900_000_000,
                internal_ports: Vec::new(),
            },
            dir,
        );
        assert!(
            sandbox.protections().enforced,
            "this host runs functions sandboxed: {:?}",
            sandbox.protections().missing
        );
        sandbox
    }

    fn run_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("spawn-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn instance_dir(root: &Path) -> PathBuf {
        let dir = root.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn prepare(sandbox: &Sandbox, dir: &Path) -> InstanceSandbox {
        sandbox.prepare(&InstanceRules::trial(dir)).unwrap()
    }

    /// `sh -c script` in a sandbox, with the cgroup dirs to remove after it.
    fn start(
        sandbox: &Sandbox,
        dir: &Path,
        script: &str,
        env: &[(String, String)],
    ) -> std::io::Result<(Child, Vec<PathBuf>)> {
        let prepared = prepare(sandbox, dir);
        let cgroups = prepared.cgroup_dirs();
        let args = ["-c".into(), script.into()];
        let child = prepared.spawn(&Command {
            program: Path::new("/bin/sh"),
            args: &args,
            env,
            capture: true,
            stdin: None,
        });
        match child {
            Ok(child) => Ok((child, cgroups)),
            Err(error) => {
                crate::sandbox::remove_cgroups(&cgroups);
                Err(error)
            }
        }
    }

    fn read_all(fd: Option<OwnedFd>) -> String {
        let mut text = String::new();
        std::fs::File::from(fd.unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn the_child_gets_its_environment_output_and_exit_status_inside_the_sandbox() {
        let root = run_dir();
        let sandbox = sandbox(&root);
        let dir = instance_dir(&root);
        let env = [("GREETING".to_owned(), "hello".to_owned())];
        let (mut child, cgroups) = start(
            &sandbox,
            &dir,
            // Its scratch is writable; /etc/shadow and the run dir above it are not
            // readable.
            "echo $GREETING; echo x > ./file && cat ./file; \
             cat /etc/shadow 2>/dev/null || echo no-shadow; \
             ls .. 2>/dev/null || echo no-parent; echo oops >&2; exit 3",
            &env,
        )
        .unwrap();
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let status = child.wait_blocking().unwrap();
        crate::sandbox::remove_cgroups(&cgroups);
        assert_eq!(stdout, "hello\nx\nno-shadow\nno-parent\n");
        assert_eq!(stderr, "oops\n");
        assert_eq!(status.code(), Some(3));
        // What it wrote stayed on its tmpfs.
        assert!(!dir.join("file").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_and_leaves_no_process() {
        let root = run_dir();
        let sandbox = sandbox(&root);
        let dir = instance_dir(&root);
        let prepared = prepare(&sandbox, &dir);
        let cgroups = prepared.cgroup_dirs();
        let error = prepared
            .spawn(&Command {
                program: Path::new("/nonexistent/program"),
                args: &[],
                env: &[],
                capture: true,
                stdin: None,
            })
            .expect_err("no such program");
        crate::sandbox::remove_cgroups(&cgroups);
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
        // The child that failed was reaped: this test's process has no children.
        assert_eq!(
            rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG).err(),
            Some(rustix::io::Errno::CHILD)
        );

        let prepared = prepare(&sandbox, &dir);
        let cgroups = prepared.cgroup_dirs();
        let nul = [std::ffi::OsString::from("a\0b")];
        let refused = prepared.spawn(&Command {
            program: Path::new("/bin/sh"),
            args: &nul,
            env: &[],
            capture: false,
            stdin: None,
        });
        crate::sandbox::remove_cgroups(&cgroups);
        assert!(refused.is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Children share the invoker's memory until they exec: many at once, from many
    /// threads, must each come up whole (a uid change flips the shared dumpable
    /// flag that each child needs set to write its own uid map).
    #[test]
    fn concurrent_spawns_from_many_threads_all_start() {
        let root = run_dir();
        let uid = rustix::process::geteuid();
        let sandbox = std::sync::Arc::new(sandbox(&root));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let sandbox = std::sync::Arc::clone(&sandbox);
                let root = root.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let dir = instance_dir(&root);
                        let env = [("N".to_owned(), format!("{t}-{i}"))];
                        let (mut child, cgroups) = start(&sandbox, &dir, "echo $N", &env).unwrap();
                        let stdout = read_all(child.stdout.take());
                        let status = child.wait_blocking().unwrap();
                        crate::sandbox::remove_cgroups(&cgroups);
                        assert!(status.success());
                        assert_eq!(stdout, format!("{t}-{i}\n"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // The invoker's own process is as it was: dumpable, its uids unchanged.
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::Dumpable
        );
        assert_eq!(rustix::process::geteuid(), uid);
        assert_eq!(rustix::process::getuid(), uid);
        let _ = std::fs::remove_dir_all(&root);
    }
}
