//! `minicloud up` as a user runs it: prints the gateway URL quickly, every service is
//! ready, Ctrl-C exits 0 and leaves no process behind, private servers included.

use super::support::{self, free_ports, lines_of};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Up {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Up {
    /// A test that failed half-way must not leave `minicloud up` running (one ran on
    /// for hours after a failed assertion, loading the machine under later benchmarks).
    /// SIGINT first, so it also stops the private servers it started.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_up(ports: &[u16], data_dir: &std::path::Path, database_url: &str, redis_url: &str) -> Up {
    // Relative to the working dir, as `make up` runs it (`.minicloud`).
    let relative = data_dir.strip_prefix(std::env::temp_dir()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .current_dir(std::env::temp_dir())
        .arg("up")
        .args(["--data-dir", relative.to_str().unwrap()])
        .args([
            "--port",
            &format!(
                "gateway={},auth={},storage={},docdb={}",
                ports[0], ports[1], ports[2], ports[3]
            ),
        ])
        // Repeated, as the other form.
        .args(["--port", &format!("bus={}", ports[4])])
        .args(["--port", &format!("invoker={}", ports[5])])
        .args(["--port", &format!("billing={}", ports[6])])
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        // Into the test's own stderr: shown when a test fails (why `up` stopped).
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap(), None);
    Up { child, lines }
}

fn wait_for_line(up: &Up, prefix: &str, timeout: Duration) -> String {
    support::wait_for_line(&up.lines, prefix, timeout)
}

fn gateway_url(up: &Up) -> String {
    support::gateway_url(&up.lines, Duration::from_secs(10))
}

fn interrupt_and_wait(mut up: Up) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-INT", &up.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "minicloud did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(url: &str) -> (u16, serde_json::Value) {
    // A blocking HTTP GET without pulling in a client: curl is on every machine
    // this suite runs on (.ci/run installs it).
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn up_prints_the_gateway_fast_serves_ready_and_exits_cleanly_on_ctrl_c() {
    let ports = free_ports(7);
    let data_dir = std::env::temp_dir().join(format!("minicloud-up-test-{}", std::process::id()));
    let (database_url, database) = {
        let (name, url) = super::support::test_database("up");
        (url, name)
    };
    let redis_url = std::env::var("MINICLOUD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let started = Instant::now();
    let up = start_up(&ports, &data_dir, &database_url, &redis_url);
    let line = wait_for_line(&up, "minicloud is up in", Duration::from_secs(30));
    let wall = started.elapsed();
    let reported: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    eprintln!(
        "minicloud up: {reported} ms reported, {} ms observed",
        wall.as_millis()
    );
    let gateway_line = wait_for_line(&up, "gateway", Duration::from_secs(1));
    assert!(
        gateway_line.contains(&format!("http://127.0.0.1:{}", ports[0])),
        "{gateway_line}"
    );

    let (status, body) = get(&format!("http://127.0.0.1:{}/readyz", ports[0]));
    assert_eq!(status, 200, "{body}");
    for service in ["gateway", "auth", "storage", "docdb", "bus", "invoker"] {
        assert_eq!(body["checks"][service], "ok", "{body}");
    }
    let credentials: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("credentials.json")).unwrap())
            .unwrap();
    assert!(
        credentials["service_key"]
            .as_str()
            .unwrap()
            .starts_with("mck_")
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data_dir.join("credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A function runs under the relative data dir too (its code dir was once relative,
    // so instances, which run in their own dir, could not find their bootstrap). The
    // bootstrap is AWS's shell example of the Runtime API.
    let code = data_dir.join("hello-fn");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(
        code.join("bootstrap"),
        "#!/bin/sh\nset -e\nAPI=\"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation\"\n\
         while true; do\n  H=$(mktemp)\n  EVENT=$(curl -sS -D \"$H\" \"$API/next\")\n\
         ID=$(grep -i '^lambda-runtime-aws-request-id:' \"$H\" | cut -d' ' -f2 | tr -d '\\r')\n\
         curl -sS -X POST -d \"{\\\"got\\\":$EVENT}\" \"$API/$ID/response\" >/dev/null\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(
        code.join("bootstrap"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let relative = data_dir.strip_prefix(std::env::temp_dir()).unwrap();
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_minicloud"))
            .current_dir(std::env::temp_dir())
            .args(args)
            .args(["--data-dir", relative.to_str().unwrap()])
            .env_remove("MINICLOUD_URL")
            .env_remove("MINICLOUD_TOKEN")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    cli(&[
        "fn",
        "deploy",
        "hello",
        "--runtime",
        "provided",
        "--dir",
        code.to_str().unwrap(),
    ]);
    let answer = cli(&["fn", "invoke", "hello", "--payload", r#"{"n":7}"#]);
    assert!(
        answer.contains(r#""got""#) && answer.contains('7'),
        "{answer}"
    );

    let status = interrupt_and_wait(up);
    assert!(status.success(), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err(),
        "gateway port released"
    );
    super::support::drop_database(&database);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn up_starts_a_private_redis_when_none_answers_and_stops_it_on_exit() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server must be installed for this test (.ci/run installs it)");
    }
    let dead_redis = format!("redis://127.0.0.1:{}", free_ports(1)[0]);
    let data_dir =
        std::env::temp_dir().join(format!("minicloud-up-private-{}", std::process::id()));
    let (database_url, database) = {
        let (name, url) = super::support::test_database("up");
        (url, name)
    };
    let database_url = format!("{database_url}_p");
    let up = start_up(&[0; 7], &data_dir, &database_url, &dead_redis);
    wait_for_line(&up, "minicloud is up in", Duration::from_secs(60));
    let gateway = gateway_url(&up);
    let (status, body) = get(&format!("{gateway}/readyz"));
    assert_eq!(status, 200, "{body}");
    let redis_dir = data_dir.join("redis");
    assert!(
        redis_dir.exists(),
        "the private redis keeps its data under the data dir"
    );
    let pattern = "redis-server.*";
    let running = |pid: u32| {
        Command::new("pgrep")
            .args(["-P", &pid.to_string(), "-f", pattern])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let pid = up.child.id();
    assert!(
        running(pid),
        "a private redis-server runs as a child of minicloud"
    );
    // It has a password, kept 0600 beside its data and never on its command line.
    let password = std::fs::read_to_string(data_dir.join("redis.password")).unwrap();
    assert_eq!(mode_of(&data_dir.join("redis.password")), 0o600);
    // redis-server retitles itself `redis-server 127.0.0.1:<port>`.
    let child = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", pattern])
        .output()
        .unwrap();
    let child = String::from_utf8_lossy(&child.stdout).trim().to_owned();
    let args = std::fs::read(format!("/proc/{child}/cmdline")).unwrap();
    let args = String::from_utf8_lossy(&args).replace('\0', " ");
    assert!(!args.contains(password.trim()), "{args}");
    let port = args
        .split_whitespace()
        .find_map(|word| word.strip_prefix("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no port in {args:?}"))
        .to_owned();
    let anonymous = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "ping"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&anonymous.stdout).to_string();
    assert!(answer.contains("NOAUTH"), "{answer}");
    let status = interrupt_and_wait(up);
    assert!(status.success(), "exit status {status}");
    let orphan = Command::new("pgrep")
        .args(["-f", &format!("redis-server.*{}", redis_dir.display())])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let leftover = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ps -eo args | grep -F -- '{}' | grep -v grep",
            redis_dir.display()
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(!orphan && !leftover, "the private redis was stopped");
    super::support::drop_database(&format!("{database}_p"));
    let _ = std::fs::remove_dir_all(&data_dir);
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The command line of the process whose arguments contain `marker`.
fn process_args(marker: &str) -> String {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.contains(marker) && !line.contains("grep"))
        .unwrap_or_else(|| panic!("no process with {marker:?}"))
        .to_owned()
}

fn arg_after(args: &str, flag: &str) -> String {
    let mut words = args.split_whitespace();
    words.find(|w| *w == flag);
    words
        .next()
        .unwrap_or_else(|| panic!("no {flag} in {args}"))
        .to_owned()
}

#[test]
fn up_starts_a_private_postgres_when_none_answers_and_stops_it_on_exit() {
    let dead_postgres = format!(
        "postgres://postgres@127.0.0.1:{}/minicloud",
        free_ports(1)[0]
    );
    let data_dir =
        std::env::temp_dir().join(format!("minicloud-up-private-pg-{}", std::process::id()));
    let redis_url = std::env::var("MINICLOUD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let up = start_up(&[0; 7], &data_dir, &dead_postgres, &redis_url);
    wait_for_line(&up, "minicloud is up in", Duration::from_secs(120));
    let gateway = gateway_url(&up);
    let (status, body) = get(&format!("{gateway}/readyz"));
    assert_eq!(status, 200, "{body}");
    assert!(
        data_dir.join("postgres").join("PG_VERSION").exists(),
        "initdb ran under the data dir"
    );
    let cluster = data_dir.join("postgres");
    let running = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ps -eo args | grep -F -- '-D {}' | grep -v grep",
                cluster.display()
            ))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(running(), "a private postgres runs");
    // Its superuser has a password (SCRAM), kept 0600 beside its data.
    assert_eq!(mode_of(&data_dir.join("postgres.password")), 0o600);
    let port = arg_after(&process_args(&format!("-D {}", cluster.display())), "-p");
    let without_password = Command::new("psql")
        .args([
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-tAc", "select 1"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        !without_password.status.success(),
        "the private postgres let a client in without a password"
    );
    let password = std::fs::read_to_string(data_dir.join("postgres.password")).unwrap();
    let with_password = Command::new("psql")
        .args([
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-tAc", "select 1"])
        .env("PGPASSWORD", password.trim())
        .output()
        .unwrap();
    assert!(
        with_password.status.success(),
        "{}",
        String::from_utf8_lossy(&with_password.stderr)
    );
    let status = interrupt_and_wait(up);
    assert!(status.success(), "exit status {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!running(), "the private postgres was stopped");
    let _ = std::fs::remove_dir_all(&data_dir);
}
