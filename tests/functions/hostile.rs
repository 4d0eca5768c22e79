//! A native hostile function (issue 15), built with the `lambda_runtime` crate like
//! any Rust function: the event names targets, it tries to reach each with system
//! calls of its own and reports which attempts were blocked. `tests/sandbox.rs`
//! asserts that all were.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Map, Value, json};

fn attempt(results: &mut Map<String, Value>, name: &str, outcome: Result<String, String>) {
    let (blocked, detail) = match outcome {
        Ok(detail) => (false, detail),
        Err(detail) => (true, detail),
    };
    results.insert(name.into(), json!({"blocked": blocked, "detail": detail}));
}

fn io<T>(result: std::io::Result<T>, done: impl FnOnce(T) -> String) -> Result<String, String> {
    result.map(done).map_err(|e| e.to_string())
}

fn connect(port: u64) -> Result<String, String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port as u16));
    io(
        TcpStream::connect_timeout(&address, Duration::from_secs(2)),
        |_| format!("connected to {address}"),
    )
}

/// A raw system call's result: `-1` is the kernel saying no.
fn syscall(rc: i64) -> Result<String, String> {
    if rc == -1 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(format!("returned {rc}"))
    }
}

#[allow(unsafe_code)]
fn privileged_calls(results: &mut Map<String, Value>, invoker: i32) {
    // Over its own scratch dir: should the sandbox ever fail, the mount still
    // lands nowhere that matters to the host running the test.
    let scratch =
        std::ffi::CString::new(std::env::var("TMPDIR").unwrap_or_default()).unwrap_or_default();
    // SAFETY: plain system calls with null or constant arguments; each either fails
    // (the point of the test) or does what it says to this process only.
    unsafe {
        attempt(
            results,
            "ptrace_invoker",
            syscall(libc::ptrace(libc::PTRACE_ATTACH, invoker, 0usize, 0usize)),
        );
        attempt(
            results,
            "mount_tmpfs",
            syscall(i64::from(libc::mount(
                c"tmpfs".as_ptr(),
                scratch.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ))),
        );
        attempt(
            results,
            "unshare_user_namespace",
            syscall(i64::from(libc::unshare(libc::CLONE_NEWUSER))),
        );
        attempt(results, "setsid", syscall(i64::from(libc::setsid())));
        attempt(results, "setuid_root", syscall(i64::from(libc::setuid(0))));
        attempt(
            results,
            "kill_invoker",
            syscall(i64::from(libc::kill(invoker, 0))),
        );
    }
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let targets = &event.payload["targets"];
    let text = |key: &str| targets[key].as_str().unwrap_or_default().to_owned();
    let invoker = targets["invoker_pid"].as_i64().unwrap_or(1) as i32;
    let mut results = Map::new();
    let read = |path: String| io(std::fs::read(&path), |b| format!("read {} bytes", b.len()));
    attempt(&mut results, "read_credentials", read(text("credentials")));
    attempt(
        &mut results,
        "read_invoker_environ",
        read(format!("/proc/{invoker}/environ")),
    );
    attempt(&mut results, "read_shadow", read("/etc/shadow".into()));
    attempt(
        &mut results,
        "list_code_cache",
        io(std::fs::read_dir(text("code_cache")), |_| "listed".into()),
    );
    attempt(
        &mut results,
        "modify_own_code",
        io(
            std::fs::OpenOptions::new().append(true).open(format!(
                "{}/bootstrap",
                std::env::var("LAMBDA_TASK_ROOT").unwrap_or_default()
            )),
            |_| "opened for writing".into(),
        ),
    );
    attempt(
        &mut results,
        "write_outside_scratch",
        io(
            std::fs::write("/var/tmp/minicloud-escape-native", b"x"),
            |()| "wrote".into(),
        ),
    );
    for (name, key) in [
        ("postgres_tcp", "postgres_port"),
        ("redis_tcp", "redis_port"),
    ] {
        attempt(
            &mut results,
            name,
            connect(targets[key].as_u64().unwrap_or(0)),
        );
    }
    if let Some(ports) = targets["service_ports"].as_object() {
        for (service, port) in ports {
            attempt(
                &mut results,
                &format!("service_port_{service}"),
                connect(port.as_u64().unwrap_or(0)),
            );
        }
    }
    attempt(
        &mut results,
        "postgres_unix_socket",
        io(
            std::os::unix::net::UnixStream::connect(text("postgres_socket")),
            |_| "connected".into(),
        ),
    );
    attempt(
        &mut results,
        "root",
        if std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        {
            Ok("running as root".into())
        } else {
            Err("not root".into())
        },
    );
    privileged_calls(&mut results, invoker);
    // Processes past the pids limit.
    let limit = targets["fork_count"].as_u64().unwrap_or(100);
    let mut children = Vec::new();
    let mut failure = None;
    for _ in 0..limit {
        match std::process::Command::new("/bin/sleep").arg("30").spawn() {
            Ok(child) => children.push(child),
            Err(error) => {
                failure = Some(error.to_string());
                break;
            }
        }
    }
    let started = children.len();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    attempt(
        &mut results,
        "fork_beyond_pids_limit",
        match failure {
            Some(error) => Err(format!("stopped after {started}: {error}")),
            None => Ok(format!("started {started}")),
        },
    );
    Ok(json!({ "attempts": results }))
}

fn main() -> Result<(), Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(lambda_runtime::run(service_fn(handle)))
}
