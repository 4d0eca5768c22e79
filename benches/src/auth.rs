//! Issue 16's auth benchmark, measured as a user's app meets the service: `minicloud
//! serve auth` runs as its own process and this program is the client, so the
//! server's memory and CPU are its own (read from `/proc/<pid>`).
//! - 1,000 sign-ups then 1,000 sign-ins one after another, then 1,000 of each with
//!   64 in flight; the server's RSS after each phase and its peak;
//! - the server's CPU per sign-up and per sign-in;
//! - sign-in latency (p50) against argon2id verifying the same password with the
//!   same parameters in this process, measured in the same run, in turns.
//!
//! Writes `target/bench-auth.json` for `scripts/bench_report.py`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use futures::StreamExt as _;
use minicloud_bench::{cpu_time, sequential_summary};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn post(http: &reqwest::Client, url: &str, email: &str) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{url}: {status} {}", response.text().await?);
    }
    Ok(())
}

struct Phase {
    samples: Vec<Duration>,
    wall: Duration,
    cpu: Duration,
}

/// `n` requests to `url` for emails `{prefix}{i}`, `concurrency` in flight.
async fn phase(
    http: &reqwest::Client,
    pid: u32,
    url: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    let cpu = cpu_time(pid);
    let started = Instant::now();
    let samples: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let began = Instant::now();
            post(http, url, &format!("{prefix}{i}@bench.example")).await?;
            Ok(began.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Ok(Phase {
        samples: samples.into_iter().collect::<anyhow::Result<_>>()?,
        wall: started.elapsed(),
        cpu: cpu_time(pid).saturating_sub(cpu),
    })
}

fn phase_json(phase: &Phase, pid: u32) -> Value {
    let n = phase.samples.len();
    let mut summary = minicloud_bench::summary(phase.samples.clone(), phase.wall);
    summary["cpu_ms_per_op"] = json!(phase.cpu.as_secs_f64() * 1e3 / n as f64);
    summary["rss_mib_after"] = json!(mib(status_kib(pid, "VmRSS:")));
    summary["n"] = json!(n);
    summary
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(
        minicloud_testkit::minicloud_auth::MEMORY_KIB,
        minicloud_testkit::minicloud_auth::ITERATIONS,
        minicloud_testkit::minicloud_auth::PARALLELISM,
        None,
    )
    .unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n = count("BENCH_AUTH_N", 1000);
    let concurrency = count("BENCH_AUTH_CONCURRENCY", 64);
    let server_url = minicloud_testkit::test_database_server_url();
    let database = format!("mc_bench_auth_{}", std::process::id());
    let database_url = format!("{}/{database}", server_url.rsplit_once('/').unwrap().0);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let binary = std::env::current_exe()?.with_file_name("minicloud");
    let key_file = std::env::temp_dir().join(format!("mc-bench-auth-key-{}", std::process::id()));
    let server = Server {
        child: Command::new(&binary)
            .args(["serve", "auth", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            // Every request comes from one address: the limits would stop the
            // benchmark, not measure anything.
            .args(["--auth-rate-limit-per-ip", "100000000"])
            .args(["--auth-rate-limit-per-email", "100000000"])
            .env("DATABASE_URL", &database_url)
            .env("MINICLOUD_SERVICE_KEY_FILE", &key_file)
            .env_remove("MINICLOUD_SERVICE_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?,
    };
    let pid = server.child.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if matches!(&ready, Ok(r) if r.status().is_success()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "auth did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_started = status_kib(pid, "VmRSS:");
    let signup = format!("{base}/auth/v1/signup");
    let sign_in = format!("{base}/auth/v1/token?grant_type=password");

    let seq_signup = phase(&http, pid, &signup, "s", n, 1).await?;
    let seq_signup_json = phase_json(&seq_signup, pid);
    let seq_sign_in = phase(&http, pid, &sign_in, "s", n, 1).await?;
    let seq_sign_in_json = phase_json(&seq_sign_in, pid);
    let rss_sequential = status_kib(pid, "VmRSS:");
    let con_signup = phase(&http, pid, &signup, "c", n, concurrency).await?;
    let con_signup_json = phase_json(&con_signup, pid);
    let con_sign_in = phase(&http, pid, &sign_in, "c", n, concurrency).await?;
    let con_sign_in_json = phase_json(&con_sign_in, pid);
    let rss_end = status_kib(pid, "VmRSS:");
    let rss_peak = status_kib(pid, "VmHWM:");

    // Sign-in against argon2 alone, in turns (10 blocks each), so both span the same
    // minutes: one sequential sign-in, then one verify in this process.
    let hash = hasher().hash_password(PASSWORD.as_bytes())?.to_string();
    let parsed = PasswordHash::new(&hash)?;
    let rounds = count("BENCH_AUTH_TURNS", 200);
    let (mut turns_sign_in, mut turns_verify) = (Vec::new(), Vec::new());
    for block in 0..10 {
        for i in 0..rounds / 10 {
            let began = Instant::now();
            post(
                &http,
                &sign_in,
                &format!("s{}@bench.example", (block * 31 + i) % n),
            )
            .await?;
            turns_sign_in.push(began.elapsed());
        }
        for _ in 0..rounds / 10 {
            let began = Instant::now();
            hasher().verify_password(PASSWORD.as_bytes(), &parsed)?;
            turns_verify.push(began.elapsed());
        }
    }
    let sign_in_turns = sequential_summary(turns_sign_in);
    let verify = sequential_summary(turns_verify);

    let result = json!({
        "n": n,
        "concurrency": concurrency,
        "rss_mib": {
            "started": mib(rss_started),
            "after_sequential": mib(rss_sequential),
            "after_concurrent": mib(rss_end),
            "peak": mib(rss_peak),
        },
        "sequential": {"signup": seq_signup_json, "sign_in": seq_sign_in_json},
        "concurrent": {"signup": con_signup_json, "sign_in": con_sign_in_json},
        "turns": {"rounds": rounds, "sign_in": sign_in_turns, "argon2_verify": verify},
    });
    drop(server);
    let _ = std::fs::remove_file(&key_file);
    let admin = sqlx::PgPool::connect(&server_url).await?;
    // The name is this program's own (a prefix and its pid).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-auth.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
