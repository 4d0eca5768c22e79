//! Issue 20's trace store benchmark, every figure beside its baseline from this run:
//! - the store at 100,000 spans (10,000 traces of 10 spans with a request's usual
//!   attributes): its memory (the store's own count and the process's resident
//!   growth), a trace by id and filtered lists (p50/p99);
//! - what keeping traces costs a request: the warm invoke of an echo function and a
//!   1 KiB storage PUT/GET, in a cloud that keeps its traces against one that does not
//!   (`MINICLOUD_TRACES=off`), each a child process of this one, both serving at once
//!   while this process sends them requests in alternating blocks of a few
//!   milliseconds; also each cloud's CPU time per request.
//!
//! Writes `target/bench-traces.json` for `scripts/bench_report.py`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use minicloud_bench::as_client;
use minicloud_telemetry::trace_store::{
    SpanStatus, StoredSpan, TraceFilter, TraceStore, TraceStoreLimits,
};
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// A span as a request leaves them: ids, a route, the usual HTTP attributes.
fn span(trace: u64, index: u64, services: &[&str]) -> StoredSpan {
    let start = 1_700_000_000_000_000_000 + trace * 10_000_000 + index * 100_000;
    let service = services[(index as usize) % services.len()];
    let mut attributes = BTreeMap::new();
    for (key, value) in [
        ("http.request.method", "PUT".to_owned()),
        (
            "http.route",
            "/storage/v1/object/{bucket}/{*path}".to_owned(),
        ),
        (
            "url.path",
            format!("/storage/v1/object/photos/u{trace}/p{index}.jpg"),
        ),
        ("minicloud.service", service.to_owned()),
        ("request_id", format!("req_{trace:032x}")),
        ("http.response.status_code", "200".to_owned()),
        ("otel.kind", "server".to_owned()),
        ("rpc.system", String::new()),
    ] {
        attributes.insert(key.to_owned(), value);
    }
    StoredSpan {
        trace_id: format!("{:032x}", u128::from(trace) * 7919 + 1),
        span_id: format!("{:016x}", trace * 100 + index + 1),
        parent_span_id: (index > 0).then(|| format!("{:016x}", trace * 100 + index)),
        name: format!("PUT /storage/v1/object/{{bucket}}/{{*path}} {index}"),
        service: service.to_owned(),
        kind: "server".into(),
        start_unix_nano: start,
        end_unix_nano: start + 2_000_000 + (trace % 50) * 1_000_000,
        status: if trace.is_multiple_of(97) {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        },
        status_message: None,
        attributes,
    }
}

fn summarise(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    json!({"p50_us": pick(0.5).as_secs_f64() * 1e6, "p99_us": pick(0.99).as_secs_f64() * 1e6})
}

fn store_bench() -> Value {
    let spans_wanted = 100_000u64;
    let limits = TraceStoreLimits::default();
    let before = resident_bytes();
    let store = TraceStore::new(limits);
    let services = ["gateway", "storage", "bus", "invoker", "thumbnail", "docdb"];
    let started = Instant::now();
    for trace in 0..spans_wanted / 10 {
        store.insert((0..10).map(|i| span(trace, i, &services)));
    }
    let fill = started.elapsed();
    let after = resident_bytes();
    let (spans, bytes) = store.usage();
    let ids: Vec<String> = (0..1000u64)
        .map(|i| format!("{:032x}", u128::from(i * 9 % 10_000) * 7919 + 1))
        .collect();
    let mut by_id = Vec::new();
    for id in &ids {
        let t = Instant::now();
        let found = store.trace(id).expect("a kept trace");
        assert_eq!(found.len(), 10);
        by_id.push(t.elapsed());
    }
    let list = |filter: TraceFilter| {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let found = store.list(&filter);
            std::hint::black_box(found);
            samples.push(t.elapsed());
        }
        summarise(samples)
    };
    let newest = list(TraceFilter {
        limit: 50,
        ..TraceFilter::default()
    });
    let filtered = list(TraceFilter {
        service: Some("thumbnail".into()),
        error: Some(true),
        min_duration: Some(Duration::from_millis(20)),
        limit: 50,
        ..TraceFilter::default()
    });
    let text = list(TraceFilter {
        text: Some("req_nothing_has_this".into()),
        limit: 50,
        ..TraceFilter::default()
    });
    json!({
        "spans": spans,
        "store_bytes": bytes,
        "max_bytes": limits.max_bytes,
        "resident_growth_bytes": after.saturating_sub(before),
        "fill_ms": fill.as_secs_f64() * 1e3,
        "by_id": summarise(by_id),
        "list_newest": newest,
        "list_filtered": filtered,
        "list_text_scan": text,
    })
}

fn iterations() -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

/// Requests to one cloud before the client turns to the other: a few milliseconds,
/// so both modes see the same moment of this VM (whose speed drifts by ±5% and more
/// from one minute to the next — turns of whole runs were not enough).
const BLOCK: usize = 25;

/// One cloud, keeping its traces or not, serving until its stdin closes. Prints the
/// gateway's address and the service key as one JSON line, then (on the way out) how
/// many spans it kept.
async fn serve(keep: bool) -> anyhow::Result<()> {
    let _telemetry = minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: None,
        json_logs: false,
        keep_traces: keep,
    });
    let echo_path = "target/release/echo-function";
    let echo = std::fs::read(echo_path).map_err(|e| {
        anyhow::anyhow!(
            "{echo_path}: {e} (cargo build --release -p minicloud-e2e --bin echo-function)"
        )
    })?;
    let cloud = TestCloud::start().await?;
    let admin = cloud.admin();
    let zip = minicloud_bench::zip_of(&[("bootstrap", &echo, 0o755)])?;
    let _: Value = admin
        .put(
            "/functions/v1/echo",
            &json!({"runtime":"provided","code":{"zip_base64": zip}}),
        )
        .await?;
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name": "bench"}))
        .await?;
    println!(
        "{}",
        json!({"url": cloud.gateway_url(), "token": cloud.keys.service_key})
    );
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    let (spans, _) = minicloud_telemetry::trace_store::TraceStore::global().usage();
    println!("{}", json!({"spans_kept": spans}));
    cloud.stop().await?;
    Ok(())
}

/// CPU time so far of every live thread of process `pid` (the cloud: gateway,
/// services, invoker — not the function process, the same in both modes).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Cloud {
    child: std::process::Child,
    url: String,
    token: String,
}

fn start_cloud(mode: &str) -> anyhow::Result<Cloud> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--serve", mode])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.as_mut().expect("piped"));
    let mut line = String::new();
    // Anything before the ready line (none expected) is skipped, not mistaken for it.
    let ready: Value = loop {
        line.clear();
        anyhow::ensure!(
            out.read_line(&mut line)? > 0,
            "cloud {mode} exited before it was ready"
        );
        if let Ok(ready @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
            break ready;
        }
    };
    Ok(Cloud {
        url: ready["url"].as_str().unwrap_or_default().to_owned(),
        token: ready["token"].as_str().unwrap_or_default().to_owned(),
        child,
    })
}

fn stop_cloud(mut cloud: Cloud) -> anyhow::Result<u64> {
    use std::io::Read as _;
    drop(cloud.child.stdin.take());
    let mut rest = String::new();
    cloud
        .child
        .stdout
        .as_mut()
        .expect("piped")
        .read_to_string(&mut rest)?;
    cloud.child.wait()?;
    let last: Value = serde_json::from_str(rest.lines().last().unwrap_or("{}"))?;
    Ok(last["spans_kept"].as_u64().unwrap_or(0))
}

/// One request of a row against the cloud at `base`.
async fn request(
    http: &reqwest::Client,
    row: &str,
    base: &str,
    token: &str,
    i: usize,
) -> anyhow::Result<()> {
    let response = match row {
        "warm_invoke" => {
            http.post(format!("{base}/functions/v1/echo/invoke"))
                .bearer_auth(token)
                .body(r#"{"n":1}"#)
                .send()
                .await?
        }
        "storage_put_1k" => {
            http.put(format!("{base}/storage/v1/object/bench/k{}", i % 64))
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(vec![7u8; 1024])
                .send()
                .await?
        }
        _ => {
            http.get(format!("{base}/storage/v1/object/bench/k{}", i % 64))
                .bearer_auth(token)
                .send()
                .await?
        }
    };
    anyhow::ensure!(
        response.status().is_success(),
        "{row}: {}",
        response.status()
    );
    response.bytes().await?;
    Ok(())
}

/// Both clouds serve at once; the client (this process) sends each row's requests in
/// blocks of [`BLOCK`], turning from one cloud to the other (which goes first
/// alternates), and reads each cloud's CPU time around its own blocks.
async fn overhead(clouds: [(String, String, u32); 2]) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let n = iterations();
    let mut rows = serde_json::Map::new();
    // GET before PUT would find nothing: PUT writes the keys GET reads.
    // `TRACES_BENCH_ROWS=warm_invoke` (say) measures fewer rows, for profiling one.
    let only = std::env::var("TRACES_BENCH_ROWS").ok();
    for (row, count) in [
        ("warm_invoke", n),
        ("storage_put_1k", n / 2),
        ("storage_get_1k", n / 2),
    ] {
        if only
            .as_deref()
            .is_some_and(|only| !only.split(',').any(|r| r == row))
        {
            continue;
        }
        for (base, token, _) in &clouds {
            for i in 0..(count / 10).max(5) {
                request(&http, row, base, token, usize::MAX - i).await?;
            }
        }
        let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let mut cpu = [0u64; 2];
        let mut block_ratios = Vec::new();
        for round in 0..count / BLOCK {
            let mut block_p50 = [0.0f64; 2];
            for turn in 0..2 {
                let which = (round + turn) % 2;
                let (base, token, pid) = &clouds[which];
                let cpu_before = cpu_ns(*pid);
                let mut block = Vec::with_capacity(BLOCK);
                for i in round * BLOCK..(round + 1) * BLOCK {
                    let started = Instant::now();
                    request(&http, row, base, token, i).await?;
                    block.push(started.elapsed());
                }
                cpu[which] += cpu_ns(*pid).saturating_sub(cpu_before);
                block.sort();
                block_p50[which] = block[BLOCK / 2].as_secs_f64();
                samples[which].extend(block);
            }
            block_ratios.push(block_p50[1] / block_p50[0]);
        }
        let done = samples[0].len() as f64;
        let [off, on] = samples.map(summarise);
        let (off_p50, on_p50) = (
            off["p50_us"].as_f64().unwrap_or(0.0),
            on["p50_us"].as_f64().unwrap_or(0.0),
        );
        let cpu_us = cpu.map(|ns| ns as f64 / 1e3 / done);
        rows.insert(
            row.into(),
            json!({
                "off_p50_us": off_p50,
                "on_p50_us": on_p50,
                "off_p99_us": off["p99_us"],
                "on_p99_us": on["p99_us"],
                "ratio": on_p50 / off_p50,
                "median_block_ratio": median(&mut block_ratios),
                "off_cpu_us_per_request": cpu_us[0],
                "on_cpu_us_per_request": cpu_us[1],
                "cpu_ratio": cpu_us[1] / cpu_us[0],
                "requests_each": done,
            }),
        );
    }
    Ok(Value::Object(rows))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(args.get(2).map(String::as_str) == Some("on")).await;
    }
    let store = tokio::task::spawn_blocking(store_bench).await?;
    let off = start_cloud("off")?;
    let on = start_cloud("on")?;
    let clouds = [&off, &on].map(|c| (c.url.clone(), c.token.clone(), c.child.id()));
    let overhead = as_client(move || overhead(clouds)).await;
    let spans_kept = [stop_cloud(off)?, stop_cloud(on)?];
    let overhead = overhead?;
    anyhow::ensure!(
        spans_kept[0] == 0 && spans_kept[1] > 0,
        "the off cloud must keep nothing and the on cloud something: {spans_kept:?}"
    );
    let out = json!({
        "store": store,
        "overhead": overhead,
        "block": BLOCK,
        "spans_kept": {"off": spans_kept[0], "on": spans_kept[1]},
    });
    std::fs::write("target/bench-traces.json", serde_json::to_vec_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
