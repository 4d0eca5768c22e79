//! Issue 20's trace store benchmark, every figure beside its baseline from this run:
//! - the store at 100,000 spans (10,000 traces of 10 spans with a request's usual
//!   attributes): its memory (the store's own count and the process's resident
//!   growth), a trace by id and filtered lists (p50/p99);
//! - what keeping traces costs a request: the warm invoke of an echo function and a
//!   1 KiB storage PUT/GET, in a cloud that keeps its traces against one that does not
//!   (`MINICLOUD_TRACES=off`), each a child process of this one, taking turns.
//!
//! Writes `target/bench-traces.json` for `scripts/bench_report.py`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use minicloud_bench::{as_client, sequential_summary, time};
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
        .unwrap_or(2000)
}

/// One cloud, keeping its traces or not: warm invoke and storage rows.
async fn child(keep: bool) -> anyhow::Result<Value> {
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
    let base = cloud.gateway_url().to_owned();
    let token = cloud.keys.service_key.clone();
    let n = iterations();
    let result = as_client(move || async move {
        let http = reqwest::Client::new();
        let invoke = format!("{base}/functions/v1/echo/invoke");
        let warm = time(n, |_| {
            let request = http
                .post(&invoke)
                .bearer_auth(&token)
                .body(r#"{"n":1}"#)
                .send();
            async move {
                anyhow::ensure!(request.await?.status().is_success());
                Ok(())
            }
        })
        .await?;
        let body = vec![7u8; 1024];
        let put = time(n / 2, |i| {
            let request = http
                .put(format!("{base}/storage/v1/object/bench/k{}", i % 64))
                .bearer_auth(&token)
                .header("content-type", "application/octet-stream")
                .body(body.clone())
                .send();
            async move {
                anyhow::ensure!(request.await?.status().is_success());
                Ok(())
            }
        })
        .await?;
        let get = time(n / 2, |i| {
            let request = http
                .get(format!("{base}/storage/v1/object/bench/k{}", i % 64))
                .bearer_auth(&token)
                .send();
            async move {
                let response = request.await?;
                anyhow::ensure!(response.status().is_success());
                response.bytes().await?;
                Ok(())
            }
        })
        .await?;
        anyhow::Ok(json!({
            "warm_invoke": sequential_summary(warm),
            "storage_put_1k": sequential_summary(put),
            "storage_get_1k": sequential_summary(get),
        }))
    })
    .await?;
    let (spans, _) = minicloud_telemetry::trace_store::TraceStore::global().usage();
    cloud.stop().await?;
    Ok(json!({"keep": keep, "spans_kept": spans, "rows": result}))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let keep = args.get(2).map(String::as_str) == Some("on");
        println!("{}", child(keep).await?);
        return Ok(());
    }
    let store = tokio::task::spawn_blocking(store_bench).await?;
    // Children take turns, so both modes span the same minutes.
    let me = std::env::current_exe()?;
    let mut runs: Vec<Value> = Vec::new();
    for round in 0..7 {
        for mode in ["off", "on"] {
            let output = std::process::Command::new(&me)
                .args(["--child", mode])
                .env("RUST_LOG", "warn")
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "child {mode} (round {round}) failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let line = String::from_utf8(output.stdout)?;
            let last = line.lines().last().unwrap_or_default();
            runs.push(serde_json::from_str(last)?);
        }
    }
    let mut overhead = serde_json::Map::new();
    for row in ["warm_invoke", "storage_put_1k", "storage_get_1k"] {
        let of = |keep: bool| {
            let mut p50s: Vec<f64> = runs
                .iter()
                .filter(|r| r["keep"] == keep)
                .filter_map(|r| r["rows"][row]["p50_us"].as_f64())
                .collect();
            median(&mut p50s)
        };
        let (off, on) = (of(false), of(true));
        overhead.insert(
            row.into(),
            json!({"off_p50_us": off, "on_p50_us": on, "ratio": on / off}),
        );
    }
    let out = json!({"store": store, "overhead": overhead, "runs": runs});
    std::fs::write("target/bench-traces.json", serde_json::to_vec_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
