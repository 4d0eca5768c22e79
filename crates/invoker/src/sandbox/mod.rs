//! The sandbox every function instance runs in (docs/architecture.md, "Trust
//! boundary"). Built on what Linux gives an unprivileged process, so it works for
//! `minicloud up` as root, as a developer's own user and in a Kubernetes pod:
//!
//! - a user namespace and a mount namespace of its own, in which a size-capped tmpfs
//!   is the instance's only writable place (`HOME`, `TMPDIR`, the working dir), and
//!   whose `RLIMIT_NPROC` counts only the instance's own processes and threads;
//! - Landlock: read-only access to its code, its runtime, system libraries and
//!   interpreters, nothing else of the filesystem; TCP connect only to its own Runtime
//!   API port, the gateway's (and the trace collector's), and the allowed outside
//!   ports; no signals to and no abstract-socket connections out of the sandbox,
//!   and no `ptrace` or `/proc/<pid>` of processes outside it (Landlock's own rule);
//! - seccomp: no `setsid`/`setpgid` (every process it starts stays in its process
//!   group, so a kill of the group kills them all), no namespaces, mounts, `ptrace`,
//!   BPF, keyrings, io_uring, file handles, no Unix-domain sockets (Postgres and
//!   others listen on them);
//! - `no_new_privs`, `RLIMIT_DATA` for memory, and when minicloud runs as root a
//!   uid/gid of its own per instance, so DAC applies too.
//!
//! Everything is prepared in the invoker; the child, started without forking the
//! invoker ([`spawn`]), only makes the syscalls that must run in it
//! ([`InstanceSandbox::enter`]) before `exec`.

use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible as _, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Serialize;

mod spawn;
pub use spawn::{Child, Command};

/// The Landlock ABIs asked for: filesystem rights of ABI 5 (with `ioctl` on
/// devices), TCP rules of ABI 4, signal and abstract-socket scopes of ABI 6.
const FS_ABI: ABI = ABI::V5;
const NET_ABI: ABI = ABI::V4;
const SCOPE_ABI: ABI = ABI::V6;

/// Read-only system trees every runtime needs (libraries, interpreters, certs).
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"];
/// Of `/etc`, only what the C library, TLS and time zones read — never `shadow`,
/// `ssh`, or minicloud's own configuration.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/crypto-policies",
    "/etc/alternatives",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/group",
];
/// Devices an instance may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
/// Host-wide `/proc` and `/sys` files that runtimes read for memory and CPU counts;
/// `/proc/self` is added in the child (it names the child's own directory there).
const PROC_FILES: &[&str] = &[
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/sys/devices/system/cpu",
];

/// Whether functions run sandboxed (`--invoker-sandbox`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Every instance is sandboxed; functions are refused on a host that lacks a
    /// protection.
    #[default]
    On,
    /// Instances run as plain processes (the operator chose it; warned at start).
    Off,
}

/// Where an instance may connect (`--invoker-network`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    Serialize,
    serde::Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Only its own Runtime API.
    None,
    /// Also the gateway (`MINICLOUD_URL`) and the trace collector.
    Minicloud,
    /// Also the allowed ports (`--invoker-network-ports`) anywhere.
    #[default]
    Any,
}

/// A function's own network settings (`"network"` in a deploy); what it leaves
/// out comes from the invoker's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    pub egress: Egress,
    /// TCP ports it may connect to on any host under `any` (default: the invoker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
}

/// Most ports one function may list.
pub const MAX_PORTS: usize = 16;
/// Lambda's ephemeral storage range, in MB.
pub const EPHEMERAL_STORAGE_MB: std::ops::RangeInclusive<i32> = 64..=10240;

/// The sandbox's settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub egress: Egress,
    /// TCP ports functions may connect to anywhere under [`Egress::Any`].
    pub ports: Vec<u16>,
    /// Size of each instance's scratch tmpfs.
    pub scratch_mb: u64,
    /// Processes and threads per instance.
    pub pids: u64,
    /// First of the uids instances get when minicloud runs as root.
    pub uid_base: u32,
    /// Ports of minicloud's own servers (its database, the services): never
    /// allowed to a function, whatever its deployer asks.
    pub internal_ports: Vec<u16>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: SandboxMode::On,
            egress: Egress::Any,
            ports: vec![80, 443],
            scratch_mb: 512,
            pids: 64,
            uid_base: DEFAULT_UID_BASE,
            internal_ports: Vec::new(),
        }
    }
}

pub const DEFAULT_UID_BASE: u32 = 1_900_000_000;
/// Instances cycle through this many uids.
const UID_RANGE: u32 = 65_536;

/// What this host enforces, found at start (`GET /functions/v1/sandbox`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Protections {
    pub mode: SandboxMode,
    /// True when instances run with every required protection.
    pub enforced: bool,
    pub landlock_filesystem: bool,
    pub landlock_network: bool,
    pub landlock_scopes: bool,
    pub seccomp: bool,
    pub user_namespace: bool,
    pub scratch_tmpfs: bool,
    /// Root only: a uid and gid of its own per instance.
    pub separate_uid: bool,
    /// Root only, where the hierarchy is writable: a cgroup per instance with
    /// memory (memory + scratch), pids, and CPU weight in proportion to memory
    /// (`v1`, `v2`, or null).
    pub cgroups: Option<String>,
    pub egress: Egress,
    pub ports: Vec<u16>,
    pub scratch_mb: u64,
    pub pids: u64,
    /// Required protections this host lacks, with why.
    pub missing: Vec<String>,
}

/// The sandbox of one invoker: settings, what the host offers, the prepared seccomp
/// programs.
pub struct Sandbox {
    config: SandboxConfig,
    /// The system paths every instance may read, opened once (`O_PATH`) with the
    /// rights each gets: a cold start only adds their rules, without opening or
    /// checking ~40 paths again.
    system_paths: Vec<(PathFd, BitFlags<AccessFs>)>,
    cgroups: Option<Cgroups>,
    protections: Protections,
    seccomp: Arc<[BpfProgram; 2]>,
    /// As root: instances get uids of their own.
    as_root: bool,
    next_uid: AtomicU32,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// Where one instance may reach, as the engine knows it.
#[derive(Debug)]
pub struct InstanceRules<'a> {
    /// The instance's dir: the scratch tmpfs is mounted on it.
    pub dir: &'a Path,
    /// Read-only trees: the function's code, its runtime and interpreter.
    pub read_only: Vec<PathBuf>,
    pub runtime_api_port: u16,
    /// The gateway and trace collector ports (allowed unless egress is `none`).
    pub platform_ports: Vec<u16>,
    /// RLIMIT_DATA.
    pub memory_bytes: u64,
    /// The memory size the function was given (its CPU weight follows it).
    pub memory_mb: u64,
    /// The function's own network settings, if it has any.
    pub network: Option<NetworkPolicy>,
    /// The function's own scratch size in MB, if it has one.
    pub scratch_mb: Option<u64>,
}

impl<'a> InstanceRules<'a> {
    /// Rules for a throwaway instance in `dir`: nothing to read beyond the system,
    /// no network but a closed port, the default limits (the start-up trial run).
    pub fn trial(dir: &'a Path) -> InstanceRules<'a> {
        InstanceRules {
            dir,
            read_only: Vec::new(),
            runtime_api_port: 9,
            platform_ports: Vec::new(),
            memory_bytes: 256 * 1024 * 1024,
            memory_mb: 128,
            network: None,
            scratch_mb: None,
        }
    }
}

impl Sandbox {
    /// Reads the host's capabilities; `probe_dir` is a scratch dir for a trial run.
    pub fn new(config: SandboxConfig, probe_dir: &Path) -> Sandbox {
        let as_root = rustix::process::geteuid().is_root();
        let seccomp = Arc::new(seccomp_programs().expect("the fixed seccomp filter compiles"));
        let mut sandbox = Sandbox {
            protections: Protections {
                mode: config.mode,
                enforced: false,
                landlock_filesystem: false,
                landlock_network: false,
                landlock_scopes: false,
                seccomp: false,
                user_namespace: false,
                scratch_tmpfs: false,
                separate_uid: false,
                cgroups: None,
                egress: config.egress,
                ports: config.ports.clone(),
                scratch_mb: config.scratch_mb,
                pids: config.pids,
                missing: Vec::new(),
            },
            next_uid: AtomicU32::new(0),
            system_paths: system_paths(),
            cgroups: None,
            config,
            seccomp,
            as_root,
        };
        if sandbox.config.mode == SandboxMode::On {
            sandbox.detect(probe_dir);
        }
        sandbox
    }

    pub fn protections(&self) -> &Protections {
        &self.protections
    }

    pub fn is_on(&self) -> bool {
        self.config.mode == SandboxMode::On
    }

    fn detect(&mut self, probe_dir: &Path) {
        let hard = |ruleset: Ruleset| ruleset.set_compatibility(CompatLevel::HardRequirement);
        let p = &mut self.protections;
        p.landlock_filesystem = hard(Ruleset::default())
            .handle_access(AccessFs::from_all(FS_ABI))
            .and_then(|r| r.create())
            .is_ok();
        p.landlock_network = hard(Ruleset::default())
            .handle_access(AccessNet::from_all(NET_ABI))
            .and_then(|r| r.create())
            .is_ok();
        p.landlock_scopes = hard(Ruleset::default())
            .scope(Scope::from_all(SCOPE_ABI))
            .and_then(|r| r.create())
            .is_ok();
        p.seccomp = std::fs::read_to_string("/proc/self/status")
            .map(|status| status.lines().any(|l| l.starts_with("Seccomp:")))
            .unwrap_or(false);
        for (ok, what) in [
            (
                p.landlock_filesystem,
                "Landlock filesystem rules (ABI 5, Linux 6.10)",
            ),
            (p.landlock_network, "Landlock TCP rules (ABI 4, Linux 6.7)"),
            (
                p.landlock_scopes,
                "Landlock signal and socket scopes (ABI 6, Linux 6.12)",
            ),
            (p.seccomp, "seccomp filters"),
        ] {
            if !ok {
                p.missing.push(what.to_owned());
            }
        }
        // Namespaces, the tmpfs and the uid switch are tried for real: a trial
        // instance of `true` with every protection on.
        p.separate_uid = self.as_root;
        if self.as_root {
            self.cgroups = Cgroups::find();
            self.protections.cgroups = self.cgroups.as_ref().map(|c| c.kind().to_owned());
        }
        match self.trial(probe_dir) {
            Ok(()) => {
                self.protections.user_namespace = true;
                self.protections.scratch_tmpfs = true;
            }
            Err(error) => self.protections.missing.push(format!(
                "a user and mount namespace with a tmpfs (trial run failed: {error}); \
                 unprivileged user namespaces may be disabled (kernel.unprivileged_userns_clone, \
                 AppArmor's apparmor_restrict_unprivileged_userns)"
            )),
        }
        self.protections.enforced = self.protections.missing.is_empty();
    }

    fn trial(&self, probe_dir: &Path) -> std::io::Result<()> {
        if !self.protections.missing.is_empty() {
            return Err(std::io::Error::other("Landlock or seccomp missing"));
        }
        let program = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| std::io::Error::other("no `true` to try with"))?;
        let dir = probe_dir.join(format!("probe-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let result = (|| {
            let prepared = self.prepare(&InstanceRules::trial(&dir))?;
            let cgroups = prepared.cgroup_dirs();
            let status = prepared
                .spawn(&Command {
                    program: Path::new(program),
                    args: &[],
                    env: &[],
                    capture: false,
                    stdin: None,
                })
                .and_then(|mut child| child.wait_blocking());
            remove_cgroups(&cgroups);
            let status = status?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("`true` ended with {status}")))
            }
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Refuses ports a deployer may not open to a function: minicloud's own servers
    /// (its database, Redis, the services) and the kernel's ephemeral range, where
    /// other instances' Runtime APIs listen.
    pub fn check_ports(&self, ports: &[u16]) -> Result<(), String> {
        if ports.len() > MAX_PORTS {
            return Err(format!("network.ports: at most {MAX_PORTS} ports"));
        }
        let (low, high) = ephemeral_range();
        for &port in ports {
            if port == 0 {
                return Err("network.ports: 1 to 65535".into());
            }
            if self.config.internal_ports.contains(&port) || INTERNAL_DEFAULT_PORTS.contains(&port)
            {
                return Err(format!(
                    "network.ports: {port} is a port of minicloud's own servers"
                ));
            }
            if (low..=high).contains(&port) {
                return Err(format!(
                    "network.ports: {port} is in the ephemeral range {low}-{high}, where \
                     instances' Runtime APIs listen"
                ));
            }
        }
        Ok(())
    }

    /// Refuses to start an instance when the sandbox is on but not enforceable.
    pub fn check_runnable(&self) -> Result<(), String> {
        if self.is_on() && !self.protections.enforced {
            return Err(format!(
                "functions cannot run sandboxed on this host: missing {}; start minicloud \
                 with --invoker-sandbox=off to run them unsandboxed (not recommended)",
                self.protections.missing.join("; ")
            ));
        }
        Ok(())
    }

    /// Everything the child will need, prepared here (files opened, rules built).
    pub fn prepare(&self, rules: &InstanceRules<'_>) -> std::io::Result<InstanceSandbox> {
        let ruleset = self.ruleset(&rules.read_only, Some(&self.instance_ports(rules)))?;
        self.instance_sandbox(
            ruleset,
            rules.dir,
            rules.memory_bytes,
            rules.memory_mb,
            rules.scratch_mb,
        )
    }

    /// The sandbox of a pre-started interpreter (the invoker's `prestart` module),
    /// which is not yet any function's: everything of [`Sandbox::prepare`] but a
    /// first Landlock layer that lets it read `read_only` (every function's code,
    /// its runtime, its interpreter) and leaves TCP unhandled, and `memory_bytes`
    /// (the largest limit a function may get). It runs only minicloud's bootstrap
    /// until [`Sandbox::function_layer`]'s layer, which narrows both to one
    /// function's, is in force.
    pub fn prepare_prestarted(
        &self,
        dir: &Path,
        read_only: &[PathBuf],
        memory_bytes: u64,
        (cgroup_memory_bytes, cgroup_memory_mb): (u64, u64),
    ) -> std::io::Result<InstanceSandbox> {
        let ruleset = self.ruleset(read_only, None)?;
        let mut sandbox =
            self.instance_sandbox(ruleset, dir, cgroup_memory_bytes, cgroup_memory_mb, None)?;
        sandbox.memory_bytes = memory_bytes;
        Ok(sandbox)
    }

    /// The part of the Landlock layer that makes pre-started process `pid` one
    /// function's instance that is the same for every function: the system paths,
    /// its scratch and `/proc` dir (named through `/proc/<pid>`: its working dir is
    /// the root of the tmpfs it mounted in its own namespace), TCP handled. Built
    /// while it waits (the whole layer took ~150 µs of each cold start, the rest
    /// ~65, measured);
    /// [`Sandbox::function_layer`] completes it.
    pub fn function_layer_base(&self, pid: i32) -> std::io::Result<landlock::RulesetCreated> {
        let scratch = PathFd::new(format!("/proc/{pid}/cwd")).map_err(std::io::Error::other)?;
        let own_proc = PathFd::new(format!("/proc/{pid}")).map_err(std::io::Error::other)?;
        self.base_ruleset(true)?
            .add_rule(PathBeneath::new(scratch, AccessFs::from_all(FS_ABI)))
            .and_then(|r| r.add_rule(PathBeneath::new(own_proc, AccessFs::from_read(FS_ABI))))
            .map_err(std::io::Error::other)
    }

    /// The Landlock layer that makes a pre-started process one function's
    /// instance: `base` ([`Sandbox::function_layer_base`]) with the function's
    /// read-only trees and ports, i.e. the rules [`Sandbox::prepare`] would give
    /// it. Layers only ever narrow: what it may do afterwards is what both layers
    /// allow, i.e. this one's rules.
    pub fn function_layer(
        &self,
        base: landlock::RulesetCreated,
        rules: &InstanceRules<'_>,
    ) -> std::io::Result<std::os::fd::OwnedFd> {
        let ruleset = extend_ruleset(base, &rules.read_only, &self.instance_ports(rules))?;
        Option::<std::os::fd::OwnedFd>::from(ruleset)
            .ok_or_else(|| std::io::Error::other("Landlock made no ruleset"))
    }

    /// Sets a pre-started instance's cgroup limits to its function's: those of
    /// memory limit and size `to`, made as those of `from` (root only; without
    /// cgroups there is nothing to change). Only the values that differ are
    /// written.
    pub fn resize_cgroups(
        &self,
        dirs: &[PathBuf],
        from: (u64, u64),
        to: (u64, u64),
    ) -> std::io::Result<()> {
        let Some(cgroups) = &self.cgroups else {
            return Ok(());
        };
        let scratch = self.config.scratch_mb * 1024 * 1024;
        let was = cgroups.limits(from.0 + scratch, self.config.pids, from.1);
        for (file, value) in cgroups.limits(to.0 + scratch, self.config.pids, to.1) {
            if was.contains(&(file, value.clone())) {
                continue;
            }
            if let Some(dir) = dirs.iter().find(|dir| dir.starts_with(file.0)) {
                std::fs::write(dir.join(file.1), value)?;
            }
        }
        Ok(())
    }

    /// A ruleset with every instance's system paths and `read_only`; TCP connects
    /// handled (and only `ports` allowed) unless `ports` is `None`.
    fn ruleset(
        &self,
        read_only: &[PathBuf],
        ports: Option<&[u16]>,
    ) -> std::io::Result<landlock::RulesetCreated> {
        let base = self.base_ruleset(ports.is_some())?;
        extend_ruleset(base, read_only, ports.unwrap_or_default())
    }

    /// A ruleset that handles every file access (and TCP connects if
    /// `handle_tcp`) and allows the system paths every instance gets.
    fn base_ruleset(&self, handle_tcp: bool) -> std::io::Result<landlock::RulesetCreated> {
        let abi_fs = AccessFs::from_all(FS_ABI);
        let ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(abi_fs)
            .map_err(std::io::Error::other)?;
        let ruleset = match handle_tcp {
            true => ruleset.handle_access(AccessNet::from_all(NET_ABI)),
            false => Ok(ruleset),
        };
        let mut ruleset = ruleset
            .and_then(|r| r.scope(Scope::from_all(SCOPE_ABI)))
            .and_then(|r| r.create())
            .map_err(std::io::Error::other)?;
        for (fd, access) in &self.system_paths {
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, *access))
                .map_err(std::io::Error::other)?;
        }
        Ok(ruleset)
    }

    /// The TCP ports an instance may connect to: its Runtime API, the platform's
    /// unless egress is `none`, the allowed outside ports under `any`.
    fn instance_ports(&self, rules: &InstanceRules<'_>) -> Vec<u16> {
        let egress = rules
            .network
            .as_ref()
            .map_or(self.config.egress, |n| n.egress);
        let allowed = rules
            .network
            .as_ref()
            .and_then(|n| n.ports.clone())
            .unwrap_or_else(|| self.config.ports.clone());
        let mut ports = vec![rules.runtime_api_port];
        if egress != Egress::None {
            ports.extend(&rules.platform_ports);
        }
        if egress == Egress::Any {
            // Checked at deploy; checked again here, as the flags may have changed.
            ports.extend(allowed.iter().filter(|&&p| self.check_ports(&[p]).is_ok()));
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    fn instance_sandbox(
        &self,
        ruleset: landlock::RulesetCreated,
        dir: &Path,
        memory_bytes: u64,
        memory_mb: u64,
        scratch_mb: Option<u64>,
    ) -> std::io::Result<InstanceSandbox> {
        let uid = self.as_root.then(|| {
            let n = self.next_uid.fetch_add(1, Ordering::Relaxed) % UID_RANGE;
            self.config.uid_base.saturating_add(n)
        });
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| std::io::Error::other("a path holds a NUL byte"))
        };
        let scratch = cstring(dir.as_os_str().as_bytes())?;
        let scratch_tmp = cstring(dir.join("tmp").as_os_str().as_bytes())?;
        let scratch_mb = scratch_mb.unwrap_or(self.config.scratch_mb);
        let tmpfs_options = cstring(
            format!(
                "size={scratch_mb}m,nr_inodes={},mode=0700",
                // Inodes in proportion: a flood of empty files is capped too.
                (scratch_mb * 256).max(4096)
            )
            .as_bytes(),
        )?;
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(
                cgroups.create(
                    dir.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("instance"),
                    memory_bytes + scratch_mb * 1024 * 1024,
                    self.config.pids,
                    memory_mb,
                )?,
            ),
            None => None,
        };
        Ok(InstanceSandbox {
            cgroup,
            // Created with a hard requirement, so it has a descriptor.
            ruleset: Option::<std::os::fd::OwnedFd>::from(ruleset)
                .ok_or_else(|| std::io::Error::other("Landlock made no ruleset"))?,
            seccomp: Arc::clone(&self.seccomp),
            uid,
            scratch,
            scratch_tmp,
            tmpfs_options,
            pids: self.config.pids,
            memory_bytes,
            read_write: AccessFs::from_all(FS_ABI),
            read: AccessFs::from_read(FS_ABI),
        })
    }
}

/// One instance's sandbox, prepared in the invoker and entered by the child.
#[derive(Debug)]
pub struct InstanceSandbox {
    /// The instance's cgroups: their dirs, and their `cgroup.procs` opened for the
    /// child to join before it drops root.
    cgroup: Option<(Vec<PathBuf>, Vec<std::os::fd::OwnedFd>)>,
    /// The Landlock ruleset, all but the child's own two rules added.
    ruleset: std::os::fd::OwnedFd,
    seccomp: Arc<[BpfProgram; 2]>,
    uid: Option<u32>,
    scratch: CString,
    scratch_tmp: CString,
    tmpfs_options: CString,
    pids: u64,
    memory_bytes: u64,
    read_write: BitFlags<AccessFs>,
    read: BitFlags<AccessFs>,
}

impl InstanceSandbox {
    /// The cgroup dirs to remove once the instance's processes are gone.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(|(dirs, _)| dirs.clone())
            .unwrap_or_default()
    }

    /// Runs in the child ([`spawn`]): each step narrows what the next one may do, so
    /// the order matters (uid first, then namespaces, the tmpfs, limits, Landlock,
    /// seccomp). The child shares the invoker's memory until it execs, so this makes
    /// raw syscalls only and allocates nothing but an error.
    fn enter(&self) -> std::io::Result<()> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        use rustix::thread::UnshareFlags;
        // Join the cgroups while still root ("0" is the writing process).
        if let Some((_, procs)) = &self.cgroup {
            for fd in procs {
                rustix::io::write(fd, b"0")?;
            }
        }
        if let Some(uid) = self.uid {
            let (uid, gid) = (
                rustix::process::Uid::from_raw(uid),
                rustix::process::Gid::from_raw(uid),
            );
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            // Changing uid made the process non-dumpable, which hands its /proc
            // files to root; it must write its own uid_map below.
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable)?;
        }
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        // SAFETY: the child is single-threaded; no descriptor table is unshared.
        #[allow(unsafe_code)]
        unsafe {
            rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS)?;
        }
        // Map the uid and gid onto themselves: files the instance creates on its
        // tmpfs need a mapped owner, and a non-zero uid gets no capabilities at exec.
        write_proc(c"/proc/self/setgroups", format_args!("deny"))?;
        write_proc(c"/proc/self/uid_map", format_args!("{uid} {uid} 1"))?;
        write_proc(c"/proc/self/gid_map", format_args!("{gid} {gid} 1"))?;
        // Mounts made here stay in this namespace (an unprivileged user namespace
        // turns inherited shared mounts into slaves).
        rustix::mount::mount(
            c"tmpfs",
            self.scratch.as_c_str(),
            c"tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            self.tmpfs_options.as_c_str(),
        )?;
        rustix::fs::mkdir(
            self.scratch_tmp.as_c_str(),
            rustix::fs::Mode::from_raw_mode(0o700),
        )?;
        rustix::process::chdir(self.scratch.as_c_str())?;

        let limit = |n: u64| Rlimit {
            current: Some(n),
            maximum: Some(n),
        };
        // Counted per user namespace: this instance's processes and threads only.
        setrlimit(Resource::Nproc, limit(self.pids))?;
        setrlimit(Resource::Data, limit(self.memory_bytes))?;
        setrlimit(Resource::Core, limit(0))?;

        // The two rules only the child can name (the tmpfs it mounted, its own
        // /proc dir), then the ruleset built in the invoker: raw syscalls, as the
        // crate's `restrict_self` would consume a value the invoker still owns.
        let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC;
        let scratch = rustix::fs::open(self.scratch.as_c_str(), flags, rustix::fs::Mode::empty())?;
        landlock_add_path_rule(&self.ruleset, &scratch, self.read_write)?;
        let own_proc = rustix::fs::open(c"/proc/self", flags, rustix::fs::Mode::empty())?;
        landlock_add_path_rule(&self.ruleset, &own_proc, self.read)?;
        rustix::thread::set_no_new_privs(true)?;
        // SAFETY: landlock_restrict_self(2) with the ruleset's descriptor, no flags.
        #[allow(unsafe_code)]
        let restricted = unsafe {
            libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0,
            )
        };
        if restricted != 0 {
            return Err(std::io::Error::last_os_error());
        }

        for program in self.seccomp.iter() {
            seccompiler::apply_filter(program).map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// The cgroup hierarchies a root invoker can write: v2 (unified at
/// `/sys/fs/cgroup`) or v1 (one mount per controller).
enum Cgroups {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
}

/// Lambda gives a function one vCPU at 1,769 MB; the CPU weight follows memory
/// the same way, as a share under contention rather than a hard quota (a quota
/// would make a 128 MB function's cold start 14× slower).
const MB_PER_CPU: u64 = 1769;

impl Cgroups {
    /// Nested under the invoker's own cgroups, so whatever limits the invoker runs
    /// under (a container's, a session's) still hold for its functions.
    fn find() -> Option<Cgroups> {
        let root = Path::new("/sys/fs/cgroup");
        let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        // `<id>:<controllers>:<path>` per hierarchy; `0::<path>` on v2.
        let own_path = |controller: &str| {
            membership.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                let matches = if controller.is_empty() {
                    names.is_empty()
                } else {
                    names.split(',').any(|n| n == controller)
                };
                matches.then(|| path.trim_start_matches('/').to_owned())
            })
        };
        if root.join("cgroup.controllers").exists() {
            // Where the invoker's own cgroup holds processes, v2 cannot enable
            // controllers below it (no internal processes): then none are used.
            let own = root.join(own_path("")?);
            let dir = own.join("minicloud");
            std::fs::write(own.join("cgroup.subtree_control"), "+memory +pids +cpu").ok()?;
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu").ok()?;
            return Some(Cgroups::V2(dir));
        }
        let v1 = |controller: &str| {
            let dir = root
                .join(controller)
                .join(own_path(controller)?)
                .join("minicloud");
            std::fs::create_dir_all(&dir).ok().map(|()| dir)
        };
        Some(Cgroups::V1 {
            memory: v1("memory")?,
            pids: v1("pids")?,
            cpu: v1("cpu")?,
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Cgroups::V2(_) => "v2",
            Cgroups::V1 { .. } => "v1",
        }
    }

    /// Each limit of an instance's cgroups: (the hierarchy's dir, the file), value.
    fn limits(
        &self,
        memory_bytes: u64,
        pids: u64,
        memory_mb: u64,
    ) -> Vec<((&Path, &'static str), String)> {
        let weight = (memory_mb * 1024 / MB_PER_CPU).max(2);
        match self {
            Cgroups::V2(parent) => vec![
                ((parent.as_path(), "memory.max"), memory_bytes.to_string()),
                ((parent.as_path(), "pids.max"), pids.to_string()),
                // cpu.weight is 1..10000, 100 being one default share.
                (
                    (parent.as_path(), "cpu.weight"),
                    (weight * 100 / 1024).clamp(1, 10_000).to_string(),
                ),
            ],
            Cgroups::V1 {
                memory,
                pids: p,
                cpu,
            } => vec![
                (
                    (memory.as_path(), "memory.limit_in_bytes"),
                    memory_bytes.to_string(),
                ),
                ((p.as_path(), "pids.max"), pids.to_string()),
                // cpu.shares: 1024 is one CPU's default share.
                ((cpu.as_path(), "cpu.shares"), weight.to_string()),
            ],
        }
    }

    /// Makes the instance's cgroups with their limits; returns their dirs and
    /// their `cgroup.procs`, opened for writing.
    fn create(
        &self,
        name: &str,
        memory_bytes: u64,
        pids: u64,
        memory_mb: u64,
    ) -> std::io::Result<(Vec<PathBuf>, Vec<std::os::fd::OwnedFd>)> {
        let mut settings: Vec<(PathBuf, Vec<(&str, String)>)> = Vec::new();
        for ((parent, file), value) in self.limits(memory_bytes, pids, memory_mb) {
            let dir = parent.join(name);
            match settings.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, limits)) => limits.push((file, value)),
                None => settings.push((dir, vec![(file, value)])),
            }
        }
        let mut dirs = Vec::new();
        let mut procs = Vec::new();
        let result = (|| {
            for (dir, limits) in &settings {
                std::fs::create_dir(dir)?;
                dirs.push(dir.clone());
                for (file, value) in limits {
                    std::fs::write(dir.join(file), value)?;
                }
                procs.push(std::os::fd::OwnedFd::from(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("cgroup.procs"))?,
                ));
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok((dirs, procs)),
            Err(error) => {
                remove_cgroups(&dirs);
                Err(error)
            }
        }
    }
}

/// Removes an instance's cgroups (once its processes are gone; a cgroup with
/// members cannot be removed).
pub fn remove_cgroups(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// [`remove_cgroups`] once the instance's last processes (killed with its
/// group) have been reaped: a cgroup with members cannot be removed.
pub async fn remove_cgroups_when_empty(dirs: Vec<PathBuf>) {
    for _ in 0..40 {
        remove_cgroups(&dirs);
        if dirs.iter().all(|dir| !dir.exists()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::warn!(
        ?dirs,
        "an instance's cgroup still has processes; left in place"
    );
}

/// `ruleset` with read access to `read_only` and TCP connects to `ports`.
fn extend_ruleset(
    mut ruleset: landlock::RulesetCreated,
    read_only: &[PathBuf],
    ports: &[u16],
) -> std::io::Result<landlock::RulesetCreated> {
    let read = AccessFs::from_read(FS_ABI);
    for dir in read_only {
        if let Some((fd, access)) = open_rule_path(dir, read) {
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(std::io::Error::other)?;
        }
    }
    for &port in ports {
        ruleset = ruleset
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(std::io::Error::other)?;
    }
    Ok(ruleset)
}

/// A path opened for a Landlock rule, with `access` narrowed to file rights when it
/// is a file; `None` when it does not exist (then it is simply not granted).
fn open_rule_path(path: &Path, access: BitFlags<AccessFs>) -> Option<(PathFd, BitFlags<AccessFs>)> {
    let fd = PathFd::new(path).ok()?;
    let access = if path.is_dir() {
        access
    } else {
        access & AccessFs::from_file(FS_ABI)
    };
    Some((fd, access))
}

/// The system trees, `/etc` files, `/proc` files and devices of every instance.
fn system_paths() -> Vec<(PathFd, BitFlags<AccessFs>)> {
    let read = AccessFs::from_read(FS_ABI);
    let device = AccessFs::from_file(FS_ABI);
    SYSTEM_DIRS
        .iter()
        .chain(ETC_FILES)
        .chain(PROC_FILES)
        .map(|path| (path, read))
        .chain(DEVICES.iter().map(|path| (path, device)))
        .filter_map(|(path, access)| open_rule_path(Path::new(path), access))
        .collect()
}

/// `landlock_add_rule(2)` for a path-beneath rule, made in the child.
fn landlock_add_path_rule(
    ruleset: &std::os::fd::OwnedFd,
    path: &std::os::fd::OwnedFd,
    access: BitFlags<AccessFs>,
) -> std::io::Result<()> {
    /// `struct landlock_path_beneath_attr` (packed in the kernel's header).
    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }
    let attr = PathBeneathAttr {
        allowed_access: access.bits(),
        parent_fd: path.as_raw_fd(),
    };
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
    // SAFETY: the attribute outlives the call; the descriptors are open.
    #[allow(unsafe_code)]
    let added = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &raw const attr,
            0,
        )
    };
    if added != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a short formatted line to a `/proc` file without allocating.
fn write_proc(path: &std::ffi::CStr, text: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut buffer = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    cursor.write_fmt(text)?;
    let len = cursor.position() as usize;
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::io::write(&fd, &buffer[..len])?;
    Ok(())
}

/// Two programs: syscalls refused with `EPERM`, and `clone3` with `ENOSYS` (its
/// flags sit in a struct seccomp cannot read, so the C library falls back to
/// `clone`, whose flags the first program checks).
fn seccomp_programs() -> Result<[BpfProgram; 2], seccompiler::BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    fn always(numbers: &[i64]) -> impl Iterator<Item = (i64, Vec<SeccompRule>)> + '_ {
        numbers.iter().map(|&n| (n, Vec::new()))
    }
    let mut refused: std::collections::BTreeMap<i64, Vec<SeccompRule>> = always(&[
        libc::SYS_setsid,
        libc::SYS_setpgid,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
    ])
    .collect();
    let masked = |arg: u8, mask: u64| {
        SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        )?])
    };
    // clone with any namespace flag.
    let namespaces = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    refused.insert(
        libc::SYS_clone,
        namespaces
            .iter()
            .map(|&flag| masked(0, flag as u64))
            .collect::<Result<_, _>>()?,
    );
    // Unix-domain sockets (socketpair stays: it connects to nothing outside).
    refused.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    let refused: BpfProgram = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?
    .try_into()?;
    let clone3: BpfProgram = SeccompFilter::new(
        always(&[libc::SYS_clone3]).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?
    .try_into()?;
    Ok([refused, clone3])
}

/// The default ports of Postgres, Redis and minicloud's services (not the gateway,
/// which functions call): refused in a function's port list even when this invoker
/// does not know them as its own.
const INTERNAL_DEFAULT_PORTS: [u16; 7] = [5432, 6379, 4601, 4602, 4603, 4604, 4605];

/// The kernel's ephemeral port range (where loopback listeners on port 0 land).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// True when a process of another uid could execute `path`: the file and every
/// directory above it grant "others" the execute bit.
pub fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    path.ancestors().all(|p| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}
