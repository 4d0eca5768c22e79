//! Issue 7's invoker benchmark, every figure beside its floor from the same run:
//! - warm invoke of an echo function (`provided`, built with `lambda_runtime`)
//!   through the gateway at concurrency 1 and 32, against a bare axum echo
//!   handler over loopback;
//! - cold start (first invoke of a freshly deployed function) against spawning
//!   the same binary and having it fetch one event from, and answer it to, a
//!   loopback Runtime API stub; the same for a Python handler on our runtime;
//! - 200 deployed, idle functions: processes and memory they cost;
//! - issue 15: the same cold starts and warm calls on a second cloud whose invoker
//!   runs functions unsandboxed, and a bare `python3 -S` start as the Python floor.
//!
//! Needs `target/release/echo-function` (`make bench` builds it). Writes
//! `target/bench-invoker.json` for `scripts/bench_report.py`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use minicloud_bench::{ROUNDS, as_client, cpu_time, summary, zip_of};
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

fn iterations() -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// One thing to call in [`load`]: a URL and the token to call it with.
struct Target<'a> {
    url: &'a str,
    token: Option<&'a str>,
}

/// `total` requests to each target from `concurrency` workers: per-target latency
/// summaries. The targets take turns in [`ROUNDS`] blocks.
async fn load(
    http: &reqwest::Client,
    targets: &[Target<'_>],
    concurrency: usize,
    total: usize,
) -> anyhow::Result<Vec<Value>> {
    let run = |target: &Target<'_>, count: usize| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, token) = (
                    http.clone(),
                    target.url.to_owned(),
                    target.token.map(str::to_owned),
                );
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(count / concurrency + 1);
                    for _ in 0..count / concurrency {
                        let started = Instant::now();
                        let mut request = http.post(&url).body(r#"{"echo":1}"#);
                        if let Some(token) = &token {
                            request = request.bearer_auth(token);
                        }
                        let response = request.send().await?;
                        anyhow::ensure!(response.status().is_success(), "{}", response.status());
                        response.bytes().await?;
                        samples.push(started.elapsed());
                    }
                    anyhow::Ok(samples)
                })
            })
            .collect();
        async move {
            let started = Instant::now();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await??);
            }
            anyhow::Ok((all, started.elapsed()))
        }
    };
    for target in targets {
        run(target, (total / 10).max(concurrency * 4)).await?; // warm-up: instances, connections
    }
    let mut measured = vec![(Vec::new(), Duration::ZERO); targets.len()];
    for _ in 0..ROUNDS {
        for (target, (samples, wall)) in targets.iter().zip(&mut measured) {
            let (more, took) = run(target, total / ROUNDS).await?;
            samples.extend(more);
            *wall += took;
        }
    }
    Ok(measured
        .into_iter()
        .map(|(samples, wall)| summary(samples, wall))
        .collect())
}

/// A loopback Runtime API that hands every `next` the event of the current
/// generation and reports the answers to that one only: a process answers again
/// and again until it is killed, and an answer of the last process's must not end
/// the next one's timing (until the ninth session one could: the python3
/// bootstrap's spawn floor once read 3.5 ms so, below `python3 -S`).
struct RuntimeStub {
    api: String,
    answered: tokio::sync::mpsc::Receiver<()>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl RuntimeStub {
    async fn start() -> anyhow::Result<RuntimeStub> {
        use std::sync::atomic::Ordering;
        let (done, answered) = tokio::sync::mpsc::channel(16);
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (serving, answering) = (Arc::clone(&generation), Arc::clone(&generation));
        let router = axum::Router::new()
            .route(
                "/2018-06-01/runtime/invocation/next",
                get(move || {
                    let id = format!("r{}", serving.load(Ordering::SeqCst));
                    async move {
                        let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis()
                            .to_string();
                        (
                            [
                                ("lambda-runtime-aws-request-id", id),
                                ("lambda-runtime-deadline-ms", deadline),
                                (
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:us-east-1:000000000000:function:f".to_owned(),
                                ),
                            ],
                            r#"{"echo":1}"#,
                        )
                    }
                }),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(
                    move |axum::extract::Path(id): axum::extract::Path<String>| {
                        let done = done.clone();
                        let current = format!("r{}", answering.load(Ordering::SeqCst));
                        async move {
                            if id == current {
                                let _ = done.send(()).await;
                            }
                            axum::http::StatusCode::ACCEPTED
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = listener.local_addr()?.to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(RuntimeStub {
            api,
            answered,
            generation,
        })
    }

    /// A new process's turn (the last one is dead): from now on only answers to
    /// the events it is handed count.
    fn next_generation(&mut self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while self.answered.try_recv().is_ok() {}
    }

    async fn answer(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), self.answered.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stub stopped"))
    }
}

/// The least any invoker speaking the Lambda Runtime API does on a warm call, as a
/// floor for ours: take an HTTP request, hand its body to an instance's pending
/// `GET next`, and answer with what the instance posts back. Nothing else — no
/// token, policy, logs, metering, tracing or sandbox — and the same echo binary,
/// spawned bare, `instances` times (one per caller, as the invoker does).
struct Relay {
    url: String,
    _instances: Vec<tokio::process::Child>,
}

/// An event waiting for an instance: its body and where its answer goes.
type Event = (bytes::Bytes, tokio::sync::oneshot::Sender<bytes::Bytes>);
type Pending = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<bytes::Bytes>>>,
>;

#[derive(Clone)]
struct RelayState {
    events: tokio::sync::mpsc::Sender<Event>,
    next: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Event>>>,
    pending: Pending,
    ids: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

async fn runtime_relay(
    program: &str,
    env: &[(&str, &str)],
    instances: usize,
) -> anyhow::Result<Relay> {
    use axum::extract::{Path, State};
    let (events, next) = tokio::sync::mpsc::channel(1024);
    let state = RelayState {
        events,
        next: std::sync::Arc::new(tokio::sync::Mutex::new(next)),
        pending: Default::default(),
        ids: Default::default(),
    };
    let router = axum::Router::new()
        .route(
            "/invoke",
            post(|State(state): State<RelayState>, body: bytes::Bytes| async move {
                let (reply, answer) = tokio::sync::oneshot::channel();
                if state.events.send((body, reply)).await.is_err() {
                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                }
                answer
                    .await
                    .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)
            }),
        )
        .route(
            "/2018-06-01/runtime/invocation/next",
            get(|State(state): State<RelayState>| async move {
                let event = state.next.lock().await.recv().await;
                let Some((body, reply)) = event else {
                    return Err(axum::http::StatusCode::GONE);
                };
                let id = state.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                state.pending.lock().unwrap().insert(id, reply);
                let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis()
                    .to_string();
                Ok((
                    [
                        ("lambda-runtime-aws-request-id", id.to_string()),
                        ("lambda-runtime-deadline-ms", deadline),
                        (
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:us-east-1:000000000000:function:f".to_owned(),
                        ),
                    ],
                    body,
                ))
            }),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(
                |State(state): State<RelayState>, Path(id): Path<u64>, body: bytes::Bytes| async move {
                    if let Some(reply) = state.pending.lock().unwrap().remove(&id) {
                        let _ = reply.send(body);
                    }
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut children = Vec::new();
    for _ in 0..instances {
        children.push(bare_instance(program, &[], env, &address).spawn()?);
    }
    Ok(Relay {
        url: format!("http://{address}/invoke"),
        _instances: children,
    })
}

/// What a Runtime API client reads from its environment besides `env`, as a fixed
/// function "f" (the floors' instances).
const FLOOR_FUNCTION_ENV: [(&str, &str); 5] = [
    ("AWS_LAMBDA_FUNCTION_NAME", "f"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
    ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/f"),
    ("AWS_LAMBDA_LOG_STREAM_NAME", "s"),
];

/// `program` as a floor's instance of the Runtime API at `api`: a bare process,
/// its output discarded, killed with its handle.
fn bare_instance(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    api: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .envs(FLOOR_FUNCTION_ENV)
        .env("AWS_LAMBDA_RUNTIME_API", api)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Spawn → the process's answer to the stub's one event; each `idle` after the
/// last process's end (zero: back to back; 50 ms: spaced as [`cold_starts`]).
async fn spawn_floor(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    n: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut stub = RuntimeStub::start().await?;
    let mut samples = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        stub.next_generation();
        let started = Instant::now();
        let mut child = bare_instance(program, args, env, &stub.api).spawn()?;
        stub.answer().await?;
        samples.push(started.elapsed());
        child.kill().await?;
    }
    Ok(samples)
}

/// Spawn into the invoker's own sandbox (the rules a native instance gets: its
/// namespaces, tmpfs, uid, cgroups, limits, Landlock, seccomp) → the process's
/// answer to the stub's one event: what any sandboxed native cold start costs
/// before the invoker's own work. Spaced 50 ms apart, as [`cold_starts`] are (a
/// cgroup join after a pause waits for an RCU grace period).
async fn sandboxed_spawn_floor(echo: &[u8], n: usize) -> anyhow::Result<Vec<Duration>> {
    use minicloud_invoker::sandbox::{Command, InstanceRules, Sandbox, SandboxConfig};
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::env::temp_dir().join(format!("bench-sandboxed-{}", std::process::id()));
    let code = root.join("code");
    std::fs::create_dir_all(&code)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let program = code.join("bootstrap");
    std::fs::write(&program, echo)?;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    let sandbox = Sandbox::new(SandboxConfig::default(), &root.join("probe"));
    anyhow::ensure!(
        sandbox.protections().enforced,
        "the sandbox is not enforced here: {:?}",
        sandbox.protections().missing
    );
    let mut stub = RuntimeStub::start().await?;
    let port: u16 = stub.api.rsplit(':').next().unwrap_or_default().parse()?;
    let env: Vec<(String, String)> = FLOOR_FUNCTION_ENV
        .into_iter()
        .chain([("AWS_LAMBDA_RUNTIME_API", stub.api.as_str())])
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut samples = Vec::new();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stub.next_generation();
        let dir = root.join(format!("instance{i}"));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let started = Instant::now();
        let rules = InstanceRules {
            dir: &dir,
            read_only: vec![code.clone()],
            runtime_api_port: port,
            platform_ports: Vec::new(),
            memory_bytes: (128 + 64) * 1024 * 1024,
            memory_mb: 128,
            network: None,
            scratch_mb: None,
        };
        let prepared = sandbox.prepare(&rules)?;
        let cgroups = prepared.cgroup_dirs();
        let mut child = prepared.spawn(&Command {
            program: &program,
            args: &[],
            env: &env,
            capture: false,
            stdin: None,
        })?;
        stub.answer().await?;
        samples.push(started.elapsed());
        if let Some(pid) = rustix::process::Pid::from_raw(child.id()) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        child.wait().await?;
        minicloud_invoker::sandbox::remove_cgroups_when_empty(cgroups).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(samples)
}

/// First invocations of `n` freshly deployed copies of `function` on `cloud`.
async fn cold_starts(
    cloud: &TestCloud,
    prefix: &str,
    function: &Value,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    calls_after_deploys(cloud, function, n, |i| {
        let name = format!("{prefix}{i}");
        (name.clone(), name)
    })
    .await
}

/// `n` times: deploys `function` as the first name `names(i)` gives, waits as
/// [`deploy_and_settle`] does, then times one call of the second.
async fn calls_after_deploys(
    cloud: &TestCloud,
    function: &Value,
    n: usize,
    names: impl Fn(usize) -> (String, String),
) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let admin = cloud.admin();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (deployed, called) = names(i);
        deploy_and_settle(&admin, &deployed, function).await?;
        let started = Instant::now();
        let response = http
            .post(format!(
                "{}/functions/v1/{called}/invoke",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key)
            .body(r#"{"echo":1}"#)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        response.bytes().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `BENCH_PYTHON_COLD_ONLY=1`: the python3 cold start against its floor (a warm
/// invoke of the same function + a fork of a pre-imported interpreter), alone and
/// in a minute rather than the whole bench's five, for A/B runs of a cold-path
/// change; prints one line, writes nothing.
async fn python_cold_only(cloud: &TestCloud, python_fn: &Value) -> anyhow::Result<()> {
    let cold = median_ms(cold_starts(cloud, "coldpy", python_fn, 51).await?);
    let warm = warm_p50_ms(cloud, "coldpy0", 1000).await?;
    let warm_isolated = median_ms(isolated_warm_calls(cloud, "coldpy0", python_fn, 25).await?);
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let fork = python_fork_floor(python, 101, 0)?;
    let fork_isolated = python_fork_floor(python, 51, 50)?;
    println!(
        "python3 cold {cold:.3} ms; warm {warm:.3} + fork {fork:.3} = {:.3} ms, ratio {:.2}; \
         isolated: warm {warm_isolated:.3} + fork {fork_isolated:.3} = {:.3} ms, ratio {:.2}",
        warm + fork,
        cold / (warm + fork),
        warm_isolated + fork_isolated,
        cold / (warm_isolated + fork_isolated)
    );
    Ok(())
}

/// `BENCH_WARM_ONLY=1`: the c = 1 and c = 32 warm rows of the echo (both tokio
/// runtimes, and straight to the invoker) beside the bare echo and the Runtime API
/// relay, in seconds, for A/B runs of a warm-path change; prints one line per
/// concurrency, writes nothing. `BENCH_WARM_ONLY=profile`: only the current-thread
/// echo at `BENCH_CONCURRENCY` (1), `BENCH_ITERATIONS` calls, a steady load to attach
/// a profiler to, and this process's CPU per call — read in 10 ms ticks, so give it
/// a second or more of calls (10,000 at c = 32 here).
async fn warm_only(
    cloud: &TestCloud,
    bare_url: &str,
    echo_path: &str,
    n: usize,
) -> anyhow::Result<()> {
    let profile = std::env::var("BENCH_WARM_ONLY").is_ok_and(|v| v == "profile");
    let current_thread_env: &[(&str, &str)] = &[("ECHO_TOKIO_RUNTIME", "current_thread")];
    let mut relays = Vec::new();
    if !profile {
        for (env, instances) in [
            (&[][..], 1),
            (current_thread_env, 1),
            (&[][..], 32),
            (current_thread_env, 32),
        ] {
            relays.push(runtime_relay(echo_path, env, instances).await?);
        }
    }
    let urls: Vec<String> = relays.iter().map(|relay| relay.url.clone()).collect();
    let (base, token, bare_url) = (
        cloud.gateway_url().to_owned(),
        cloud.keys.service_key.clone(),
        bare_url.to_owned(),
    );
    let direct = format!("{}/functions/v1/echo/invoke", cloud.urls.invoker);
    let lines = as_client(move || async move {
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let (echo, echo1) = (
            format!("{base}/functions/v1/echo/invoke"),
            format!("{base}/functions/v1/echo1/invoke"),
        );
        let token = Some(token.as_str());
        let mut lines = Vec::new();
        if profile {
            let concurrency: usize = match std::env::var("BENCH_CONCURRENCY") {
                Ok(value) => value.parse()?,
                Err(_) => 1,
            };
            anyhow::ensure!(
                concurrency > 0 && n / ROUNDS >= concurrency,
                "BENCH_CONCURRENCY must be at least 1 and BENCH_ITERATIONS at least {ROUNDS} times it"
            );
            let cpu = cpu_time(std::process::id());
            let summaries = load(&http, &[Target { url: &echo1, token }], concurrency, n).await?;
            let cpu = cpu_time(std::process::id()).saturating_sub(cpu);
            // `load` splits each block evenly between the callers, dropping the rest.
            let calls_made = |total: usize| total / concurrency * concurrency;
            let calls = calls_made((n / 10).max(concurrency * 4)) + ROUNDS * calls_made(n / ROUNDS);
            lines.push(format!(
                "c={concurrency} current-thread invoke: {} ops/s, p50 {} µs; this process's CPU (cloud and client) {:.1} µs a call",
                summaries[0]["ops_per_s"], summaries[0]["p50_us"],
                cpu.as_secs_f64() * 1e6 / calls as f64
            ));
            return anyhow::Ok(lines);
        }
        for (concurrency, relays) in [(1, &urls[..2]), (32, &urls[2..])] {
            let targets = [
                Target { url: &bare_url, token: None },
                Target { url: &echo, token },
                Target { url: &echo1, token },
                Target { url: &relays[0], token: None },
                Target { url: &relays[1], token: None },
                Target { url: &direct, token },
            ];
            let summaries = load(&http, &targets, concurrency, n).await?;
            let p50 = |i: usize| summaries[i]["p50_us"].as_f64().unwrap_or_default();
            let rate = |i: usize| summaries[i]["ops_per_s"].as_f64().unwrap_or_default();
            lines.push(format!(
                "c={concurrency}: floor p50 {:.0} µs; over it (p50): invoke {:.0}, current-thread {:.0}, \
                 relay {:.0}, relay current-thread {:.0}, invoke without the gateway {:.0} µs; \
                 throughput ratios {:.3} {:.3} relay {:.3} {:.3} without the gateway {:.3}",
                p50(0), p50(1) - p50(0), p50(2) - p50(0), p50(3) - p50(0), p50(4) - p50(0), p50(5) - p50(0),
                rate(1) / rate(0), rate(2) / rate(0), rate(3) / rate(0), rate(4) / rate(0), rate(5) / rate(0),
            ));
        }
        anyhow::Ok(lines)
    })
    .await?;
    drop(relays);
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// `BENCH_NATIVE_COLD_ONLY=1`: the native (`provided`) cold start against spawning
/// the binary bare, back to back and spaced as cold starts are, with the median
/// Init Duration of the cold starts' REPORT lines (the instance's start to its
/// first `GET next`); for A/B runs of a cold-path change, in a minute.
async fn native_cold_only(
    cloud: &TestCloud,
    provided: &Value,
    echo_path: &str,
) -> anyhow::Result<()> {
    let n = 51;
    let cold = median_ms(cold_starts(cloud, "cold", provided, n).await?);
    let admin = cloud.admin();
    let mut inits = Vec::with_capacity(n);
    for i in 0..n {
        let page: Value = admin
            .get(&format!("/functions/v1/cold{i}/logs?stream=platform"))
            .await?;
        let init_ms = page["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|line| {
                let message = line["message"].as_str()?;
                let (_, rest) = message.split_once("Init Duration: ")?;
                rest.trim_end_matches(" ms").parse::<f64>().ok()
            })
            .ok_or_else(|| anyhow::anyhow!("cold{i}: no Init Duration in its REPORT"))?;
        inits.push(Duration::from_secs_f64(init_ms / 1000.0));
    }
    let init = median_ms(inits);
    let floor = median_ms(spawn_floor(echo_path, &[], &[], n, Duration::ZERO).await?);
    let spaced = median_ms(spawn_floor(echo_path, &[], &[], n, Duration::from_millis(50)).await?);
    println!(
        "provided cold {cold:.3} ms (init {init:.3}); spawn {floor:.3} ms, ratio {:.2}; \
         spaced spawn {spaced:.3} ms, ratio {:.2}",
        cold / floor,
        cold / spaced
    );
    Ok(())
}

/// Deploys `function` as `name`, then waits as a cold start of the bench does:
/// cold starts one at a time and spaced, as they come in practice — the
/// pre-started interpreters (issue 21) have been replaced since the last, and a
/// cgroup join pays its RCU grace period (docs/benchmarks.md) as it would; back
/// to back, one join would ride on the last one's.
async fn deploy_and_settle(
    admin: &minicloud_sdk::Client,
    name: &str,
    function: &Value,
) -> anyhow::Result<()> {
    admin
        .put::<_, Value>(&format!("/functions/v1/{name}"), function)
        .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sandbox: Value = admin.get("/functions/v1/sandbox").await?;
        let prestart = &sandbox["prestart"];
        if prestart["ready"] == prestart["size"] || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// p50 of `n` back-to-back warm calls of `name` through the gateway, in ms.
async fn warm_p50_ms(cloud: &TestCloud, name: &str, n: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = format!("{}/functions/v1/{name}/invoke", cloud.gateway_url());
    let target = Target {
        url: &url,
        token: Some(&cloud.keys.service_key),
    };
    let summaries = load(&http, &[target], 1, n).await?;
    Ok(summaries[0]["p50_us"].as_f64().unwrap_or_default() / 1000.0)
}

/// `n` warm calls of `name` (its instance running and idle), each made as a cold
/// start of [`cold_starts`] is: after a deploy (of another function) and the
/// same wait. What a cold start costs beyond a warm call in the same
/// circumstances — not only after a run of back-to-back calls, whose code and
/// data every cache on the way already holds.
async fn isolated_warm_calls(
    cloud: &TestCloud,
    name: &str,
    function: &Value,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    calls_after_deploys(cloud, function, n, |i| {
        (format!("{name}-idle{i}"), name.to_owned())
    })
    .await
}

/// The most instances of the queued rows and bursts: twice the cores, where the
/// hand-measured trade-off (docs/benchmarks.md) peaked.
const MAX_INSTANCES: u32 = 4;

/// `n` concurrent first calls to a freshly deployed `function`: the time until the
/// last answer, and how many were throttled.
async fn burst(cloud: &TestCloud, name: &str, function: &Value, n: usize) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let admin = cloud.admin();
    admin
        .put::<_, Value>(&format!("/functions/v1/{name}"), function)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("{}/functions/v1/{name}/invoke", cloud.gateway_url());
    let started = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let request = http
                .post(&url)
                .bearer_auth(&cloud.keys.service_key)
                .body(r#"{"echo":1}"#)
                .send();
            tokio::spawn(async move {
                let response = request.await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                anyhow::Ok(status)
            })
        })
        .collect();
    let mut throttled = 0;
    for call in calls {
        match call.await?? {
            429 => throttled += 1,
            status => anyhow::ensure!(status == 200, "burst call: {status}"),
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    admin.delete(&format!("/functions/v1/{name}")).await?;
    Ok(json!({"total_ms": total_ms, "throttled": throttled, "calls": n}))
}

/// Spawn → exit of `node -e 0`: Node alone, the floor under any Node cold start.
fn node_bare_start(n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = std::process::Command::new("node")
            .args(["-e", "0"])
            .env_clear()
            .status()?;
        anyhow::ensure!(status.success(), "node -e 0 failed");
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Spawn → exit of `python -S -c pass`: the interpreter alone (issue 15's floor).
fn python_bare_start(python: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = std::process::Command::new(python)
            .args(["-S", "-c", "pass"])
            .env_clear()
            .status()?;
        anyhow::ensure!(status.success(), "{python} -S failed");
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Median of `n` forks (fork → child `_exit` → `waitpid`) of an interpreter that
/// has imported the Python bootstrap, as a zygote would have: issue 21's floor;
/// each after `idle_ms` of sleep (0: back to back).
fn python_fork_floor(python: &str, n: usize, idle_ms: u64) -> anyhow::Result<f64> {
    let script = format!(
        "import os, sys, time, ctypes, resource\n\
         sys.path.insert(0, 'crates/invoker/runtimes/python3')\n\
         import bootstrap\n\
         samples = []\n\
         for _ in range({n}):\n\
         \x20   time.sleep({idle_ms} / 1000)\n\
         \x20   t = time.perf_counter(); pid = os.fork()\n\
         \x20   if pid == 0: os._exit(0)\n\
         \x20   os.waitpid(pid, 0); samples.append(time.perf_counter() - t)\n\
         print(sorted(samples)[len(samples) // 2] * 1000)\n"
    );
    let output = std::process::Command::new(python)
        .args(["-c", &script])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// Resident KiB of each pre-started interpreter that waits for a function (its
/// pid is in no function's instances: every python3 function is deleted by then).
async fn waiting_interpreters(gateway: &str, token: &str) -> anyhow::Result<Vec<u64>> {
    let sandbox: Value = reqwest::Client::new()
        .get(format!("{gateway}/functions/v1/sandbox"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let waiting = prestarted_processes();
    anyhow::ensure!(
        sandbox["prestart"]["ready"].as_u64() == Some(waiting.len() as u64),
        "{} interpreters pre-started, the pool says {sandbox}",
        waiting.len()
    );
    Ok(waiting)
}

/// Resident KiB of each pre-started interpreter among this process's children.
fn prestarted_processes() -> Vec<u64> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let prestarted = cmdline.split(|&b| b == 0).any(|arg| arg == b"--prestarted");
            (field("PPid:")? == me && prestarted).then(|| field("VmRSS:")?.parse().ok())?
        })
        .collect()
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn child_processes() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit(')')
                            .next()
                            .and_then(|rest| rest.split_whitespace().nth(1))
                            == Some(me.as_str())
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// `invoker-bench --client <targets> <n>`: the c=1 rows from a process of its own,
/// as every real client of minicloud is (issue 21: measured from a separate client
/// the warm overhead read higher than from the in-process one). `targets` is a JSON
/// list of `[url, token or null]`; prints one summary per target.
async fn client_process(targets: &str, n: usize) -> anyhow::Result<()> {
    let targets: Vec<(String, Option<String>)> = serde_json::from_str(targets)?;
    let targets: Vec<Target<'_>> = targets
        .iter()
        .map(|(url, token)| Target {
            url,
            token: token.as_deref(),
        })
        .collect();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let summaries = load(&http, &targets, 1, n).await?;
    println!("{}", serde_json::to_string(&summaries)?);
    Ok(())
}

/// Runs [`client_process`] in a child process and reads its summaries.
async fn separate_client(targets: Value, n: usize) -> anyhow::Result<Vec<Value>> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--client")
        .arg(targets.to_string())
        .arg(n.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "the client process failed");
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, targets, n] = args.as_slice()
        && flag == "--client"
    {
        return client_process(targets, n.parse()?).await;
    }
    let echo_path = "target/release/echo-function";
    let echo = std::fs::read(echo_path).map_err(|e| {
        anyhow::anyhow!(
            "{echo_path}: {e} (cargo build --release -p minicloud-e2e --bin echo-function)"
        )
    })?;
    let cloud = TestCloud::start().await?;
    let base = cloud.gateway_url().to_owned();
    let token = cloud.keys.service_key.clone();
    let admin = cloud.admin();
    let echo_zip = zip_of(&[("bootstrap", &echo, 0o755)])?;
    let deploy = |name: String, body: Value| {
        let admin = admin.clone();
        async move {
            let out: Value = admin.put(&format!("/functions/v1/{name}"), &body).await?;
            anyhow::Ok(out)
        }
    };
    deploy(
        "echo".into(),
        json!({"runtime":"provided","code":{"zip_base64":echo_zip}}),
    )
    .await?;
    // The same echo on a single-threaded tokio runtime: no hand-offs between the
    // `lambda_runtime` client's connection task and the handler in the function's
    // own process, so what is left is minicloud's part.
    deploy(
        "echo1".into(),
        json!({"runtime":"provided","code":{"zip_base64":echo_zip},
               "env":{"ECHO_TOKIO_RUNTIME":"current_thread"}}),
    )
    .await?;
    // Both again with at most MAX_INSTANCES instances, calls queued for them
    // (issue 21's trade-off, measured by hand before `max_instances` existed).
    deploy(
        "echoq".into(),
        json!({"runtime":"provided","code":{"zip_base64":echo_zip},"max_instances":MAX_INSTANCES}),
    )
    .await?;
    deploy(
        "echo1q".into(),
        json!({"runtime":"provided","code":{"zip_base64":echo_zip},"max_instances":MAX_INSTANCES,
               "env":{"ECHO_TOKIO_RUNTIME":"current_thread"}}),
    )
    .await?;

    // The floor: a bare axum echo over loopback.
    let bare =
        axum::Router::new().route("/echo", post(|body: axum::body::Bytes| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/echo", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, bare).await });

    let n = iterations();
    if std::env::var_os("BENCH_WARM_ONLY").is_some() {
        return warm_only(&cloud, &bare_url, echo_path, n).await;
    }
    // Cold starts first, while no other instance runs: a fresh function each time.
    let cold_n = 25;
    let provided = json!({"runtime":"provided","code":{"zip_base64":echo_zip}});
    if std::env::var_os("BENCH_NATIVE_COLD_ONLY").is_some() {
        return native_cold_only(&cloud, &provided, echo_path).await;
    }
    let cold_rust = cold_starts(&cloud, "cold", &provided, cold_n).await?;
    // The sandbox's own cost: the same on an invoker that runs functions bare.
    let bare_cloud = TestCloud::builder()
        .invoker(|invoker| invoker.sandbox = minicloud_invoker::sandbox::SandboxMode::Off)
        .start()
        .await?;
    bare_cloud
        .admin()
        .put::<_, Value>("/functions/v1/echo", &provided)
        .await?;
    let cold_rust_unsandboxed = cold_starts(&bare_cloud, "cold", &provided, cold_n).await?;
    let rust_floor = spawn_floor(echo_path, &[], &[], cold_n, Duration::ZERO).await?;
    let rust_floor_isolated =
        spawn_floor(echo_path, &[], &[], cold_n, Duration::from_millis(50)).await?;
    // Only where the sandbox is enforced (as root on a host with Landlock).
    let rust_sandboxed_floor = match sandboxed_spawn_floor(&echo, cold_n).await {
        Ok(samples) => Some(median_ms(samples)),
        Err(error) => {
            eprintln!("no sandboxed spawn floor: {error:#}");
            None
        }
    };

    let handler = b"def handler(event, context):\n    return event\n";
    let py_zip = zip_of(&[("app.py", handler, 0o644)])?;
    let python_fn =
        json!({"runtime":"python3","handler":"app.handler","code":{"zip_base64":py_zip}});
    // Node (issue 21's "< 40 ms"): our bootstrap's cold start against Node itself.
    let node_fn = json!({"runtime":"nodejs","handler":"index.handler","code":{"zip_base64":
        zip_of(&[("index.mjs", b"export const handler = async (event) => event;\n".as_slice(), 0o644)])?}});
    if std::env::var_os("BENCH_PYTHON_COLD_ONLY").is_some() {
        return python_cold_only(&cloud, &python_fn).await;
    }
    let cold_python = cold_starts(&cloud, "coldpy", &python_fn, cold_n).await?;
    let cold_python_unsandboxed = cold_starts(&bare_cloud, "coldpy", &python_fn, cold_n).await?;
    // A handler that imports a module of its bundle's (3,000 small functions,
    // ~300 KB, as a bundled dependency would be): with its bytecode compiled when
    // the code is unpacked, and on a cloud that leaves compiling to each cold start.
    let big_module: String = (0..3000)
        .map(|i| {
            format!("def f{i}(x):\n    y = x * {i} + 1\n    return [y, y + 1, {{'k': y}}]\n\n")
        })
        .collect();
    let big_fn = json!({"runtime":"python3","handler":"app.handler","code":{"zip_base64":
        zip_of(&[("app.py", b"import big\ndef handler(event, context):\n    return event\n".as_slice(), 0o644),
                 ("big.py", big_module.as_bytes(), 0o644)])?}});
    let cold_python_big = cold_starts(&cloud, "coldbig", &big_fn, cold_n).await?;
    let uncompiled_cloud = TestCloud::builder()
        .invoker(|invoker| invoker.python_bytecode = false)
        .start()
        .await?;
    let cold_python_big_uncompiled =
        cold_starts(&uncompiled_cloud, "coldbig", &big_fn, cold_n).await?;
    uncompiled_cloud.stop().await?;
    // The same cold start on a fresh interpreter: an invoker that pre-starts none.
    let fresh_cloud = TestCloud::builder()
        .invoker(|invoker| invoker.prestart = 0)
        .start()
        .await?;
    let cold_python_fresh = cold_starts(&fresh_cloud, "coldpy", &python_fn, cold_n).await?;
    let cold_rust_fresh = cold_starts(&fresh_cloud, "cold", &provided, cold_n).await?;
    let cold_node_fresh = cold_starts(&fresh_cloud, "coldjs", &node_fn, cold_n).await?;
    fresh_cloud.stop().await?;
    // Issue 21's floor for a pre-started cold start: a warm invoke of the same
    // function plus a fork of an interpreter that has imported the bootstrap.
    let warm_python_ms = warm_p50_ms(&cloud, "coldpy0", 200).await?;
    let warm_python_isolated_ms =
        median_ms(isolated_warm_calls(&cloud, "coldpy0", &python_fn, cold_n).await?);
    // Issue 21: 100 concurrent first calls to a cold python3 function, all answered
    // within 1 s: with max_instances (queued), and as Lambda (an instance per call,
    // throttled past the concurrency limit of 64).
    let mut bursts = Vec::new();
    for (i, max_instances) in [
        Some(MAX_INSTANCES),
        None,
        Some(MAX_INSTANCES),
        None,
        Some(MAX_INSTANCES),
    ]
    .into_iter()
    .enumerate()
    {
        let mut function = python_fn.clone();
        if let Some(max) = max_instances {
            function["max_instances"] = json!(max);
        }
        bursts.push((
            max_instances,
            burst(&cloud, &format!("burst{i}"), &function, 100).await?,
        ));
    }
    let python = String::from_utf8(
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()?
            .stdout,
    )?;
    // The interpreter the sandboxed functions ran on: a root invoker's instances
    // cannot reach one under a private home (pyenv in /root) and use /usr/bin/python3.
    let sandbox: Value = admin.get("/functions/v1/sandbox").await?;
    let python = if sandbox["separate_uid"] == true
        && !minicloud_invoker::sandbox::reachable_by_others(std::path::Path::new(python.trim()))
    {
        "/usr/bin/python3".to_owned()
    } else {
        python.trim().to_owned()
    };
    let python_bare = python_bare_start(&python, cold_n)?;
    let python_fork_ms = python_fork_floor(&python, 101, 0)?;
    let python_fork_isolated_ms = python_fork_floor(&python, 51, 50)?;
    let cold_node = cold_starts(&cloud, "coldjs", &node_fn, cold_n).await?;
    let cold_node_unsandboxed = cold_starts(&bare_cloud, "coldjs", &node_fn, cold_n).await?;
    let node_bare = node_bare_start(cold_n)?;
    let task_root = std::env::temp_dir().join(format!("bench-py-{}", std::process::id()));
    std::fs::create_dir_all(&task_root)?;
    std::fs::write(task_root.join("app.py"), handler)?;
    let python_floor = spawn_floor(
        &python,
        &["-u", "crates/invoker/runtimes/python3/bootstrap.py"],
        &[
            ("_HANDLER", "app.handler"),
            ("LAMBDA_TASK_ROOT", task_root.to_str().unwrap_or_default()),
        ],
        cold_n,
        Duration::ZERO,
    )
    .await?;

    // The Runtime API relay (the floor of any invoker that speaks it): one echo
    // instance for c = 1, one per caller for c = 32, on either tokio runtime.
    let relay_env: &[(&str, &str)] = &[];
    let current_thread_env: &[(&str, &str)] = &[("ECHO_TOKIO_RUNTIME", "current_thread")];
    let relays = [
        runtime_relay(echo_path, relay_env, 1).await?,
        runtime_relay(echo_path, current_thread_env, 1).await?,
        runtime_relay(echo_path, relay_env, 32).await?,
        runtime_relay(echo_path, current_thread_env, 32).await?,
    ];
    let relay_urls: Vec<String> = relays.iter().map(|relay| relay.url.clone()).collect();

    // The same call straight to the invoker: what the gateway hop adds.
    let direct_url = format!("{}/functions/v1/echo/invoke", cloud.urls.invoker);
    let unsandboxed_url = format!("{}/functions/v1/echo/invoke", bare_cloud.gateway_url());
    let bare_token = bare_cloud.keys.service_key.clone();
    let warm = as_client({
        let (bare_url, base, token) = (bare_url.clone(), base.clone(), token.clone());
        let (unsandboxed_url, bare_token) = (unsandboxed_url.clone(), bare_token.clone());
        let relay_urls = relay_urls.clone();
        move || async move {
            let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
            let invoke_url = |name: &str| format!("{base}/functions/v1/{name}/invoke");
            let (echo, echo1) = (invoke_url("echo"), invoke_url("echo1"));
            let (echo_q, echo1_q) = (invoke_url("echoq"), invoke_url("echo1q"));
            let token = Some(token.as_str());
            let mut warm = serde_json::Map::new();
            for (concurrency, relays) in [(1, &relay_urls[..2]), (32, &relay_urls[2..])] {
                let targets = [
                    Target { url: &bare_url, token: None },
                    Target { url: &echo, token },
                    Target { url: &echo1, token },
                    Target { url: &direct_url, token },
                    Target { url: &unsandboxed_url, token: Some(bare_token.as_str()) },
                    Target { url: &echo_q, token },
                    Target { url: &echo1_q, token },
                    Target { url: &relays[0], token: None },
                    Target { url: &relays[1], token: None },
                ];
                let [floor, ours, current_thread, direct, unsandboxed, queued, queued_current_thread, relay, relay_current_thread] =
                    <[Value; 9]>::try_from(load(&http, &targets, concurrency, n).await?)
                        .map_err(|_| anyhow::anyhow!("one summary per target"))?;
                warm.insert(
                    concurrency.to_string(),
                    json!({"floor": floor, "invoke": ours, "invoke_current_thread": current_thread, "invoker_direct": direct, "invoke_unsandboxed": unsandboxed,
                           "invoke_max_instances": queued, "invoke_current_thread_max_instances": queued_current_thread,
                           "relay": relay, "relay_current_thread": relay_current_thread}),
                );
            }
            Ok(warm)
        }
    })
    .await?;

    // The same c=1 rows from a client process of its own (the Runtime API's and the
    // gateway's figures then include what a real client's connection costs).
    let separate = {
        let invoke_url = |name: &str| format!("{base}/functions/v1/{name}/invoke");
        let [floor, ours, current_thread, relay, relay_current_thread] = <[Value; 5]>::try_from(
            separate_client(
                json!([
                    [bare_url, null],
                    [invoke_url("echo"), token],
                    [invoke_url("echo1"), token],
                    [relay_urls[0], null],
                    [relay_urls[1], null]
                ]),
                n,
            )
            .await?,
        )
        .map_err(|_| anyhow::anyhow!("one summary per target"))?;
        json!({"floor": floor, "invoke": ours, "invoke_current_thread": current_thread,
               "relay": relay, "relay_current_thread": relay_current_thread})
    };
    // Their 66 echo processes must not count among the idle functions' below.
    drop(relays);

    bare_cloud.stop().await?;
    // 200 idle functions: stop every instance first (keep_warm_s 0 reaps them).
    for name in ["echo", "echo1", "echoq", "echo1q"]
        .map(str::to_owned)
        .into_iter()
        .chain((0..cold_n).map(|i| format!("cold{i}")))
        .chain((0..cold_n).map(|i| format!("coldpy{i}")))
        .chain((0..cold_n).map(|i| format!("coldjs{i}")))
        .chain((0..cold_n).map(|i| format!("coldbig{i}")))
    {
        admin.delete(&format!("/functions/v1/{name}")).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib();
    for i in 0..200 {
        deploy(
            format!("idle{i}"),
            json!({"runtime":"provided","code":{"zip_base64":echo_zip}}),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();
    // What they cost while nothing happens: the cloud's CPU and Redis commands over
    // 10 s (each has a bus subscription for its async invocations).
    let mut redis = redis::Client::open(minicloud_testkit::test_redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let commands = async |redis: &mut redis::aio::MultiplexedConnection| -> anyhow::Result<u64> {
        let info: String = redis::cmd("INFO").arg("stats").query_async(redis).await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    };
    let idle_window = Duration::from_secs(10);
    let (cpu_before, commands_before) = (cpu_time(std::process::id()), commands(&mut redis).await?);
    tokio::time::sleep(idle_window).await;
    let idle_cpu = cpu_time(std::process::id()).saturating_sub(cpu_before);
    // Less the INFO call that reads the count.
    let idle_commands = commands(&mut redis)
        .await?
        .saturating_sub(commands_before + 1);
    // The interpreters waiting for a function (no python3 function is left).
    let prestarted = waiting_interpreters(cloud.gateway_url(), &token).await?;
    // The pre-started interpreters belong to no function (reported apart).
    let processes = child_processes() - prestarted_processes().len();

    let out = json!({
        "iterations": n,
        "warm": warm,
        "warm_separate_client": separate,
        "cold": {
            "provided_ms": median_ms(cold_rust), "provided_floor_ms": median_ms(rust_floor),
            "provided_floor_isolated_ms": median_ms(rust_floor_isolated),
            "provided_sandboxed_floor_ms": rust_sandboxed_floor,
            "python_ms": median_ms(cold_python), "python_floor_ms": median_ms(python_floor),
            "provided_unsandboxed_ms": median_ms(cold_rust_unsandboxed),
            "python_unsandboxed_ms": median_ms(cold_python_unsandboxed),
            "python_bare_start_ms": median_ms(python_bare),
            "python_fresh_ms": median_ms(cold_python_fresh),
            "provided_fresh_ms": median_ms(cold_rust_fresh),
            "node_fresh_ms": median_ms(cold_node_fresh),
            "python_warm_ms": warm_python_ms,
            "python_fork_ms": python_fork_ms,
            "python_warm_isolated_ms": warm_python_isolated_ms,
            "python_fork_isolated_ms": python_fork_isolated_ms,
            "python_big_ms": median_ms(cold_python_big),
            "python_big_uncompiled_ms": median_ms(cold_python_big_uncompiled),
            "node_ms": median_ms(cold_node),
            "node_bare_start_ms": median_ms(node_bare),
            "node_unsandboxed_ms": median_ms(cold_node_unsandboxed),
            "python_interpreter": python,
        },
        "idle": {"functions": 200, "processes": processes, "rss_delta_mib": (after as f64 - before as f64) / 1024.0,
                 "cpu_percent": idle_cpu.as_secs_f64() / idle_window.as_secs_f64() * 100.0,
                 "redis_commands_per_s": idle_commands as f64 / idle_window.as_secs_f64()},
        "burst": bursts.iter().map(|(max_instances, out)| json!({"max_instances": max_instances, "result": out})).collect::<Vec<_>>(),
        "prestarted": {
            "processes": prestarted.len(),
            "rss_mib": prestarted.iter().map(|kib| *kib as f64 / 1024.0).collect::<Vec<_>>(),
        },
    });
    std::fs::write(
        "target/bench-invoker.json",
        serde_json::to_string_pretty(&out)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    let _ = std::fs::remove_dir_all(task_root);
    cloud.stop().await?;
    Ok(())
}
