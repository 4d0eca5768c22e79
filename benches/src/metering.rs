//! What metering costs (issue 22): the same warm invoke, small-object PUT and GET and
//! small-document PUT and GET against one cloud (shipping every second, as
//! deployed), in blocks with recording off and on by turns
//! (`minicloud_metering::set_recording`), so both span the same minutes, database
//! and instances — an A/A run of two separate clouds differed by up to ±40 µs
//! (±12%) on the docdb PUT row, more than metering costs. Then how long a
//! budget alert takes: from the answer to the request that crosses a threshold to
//! the alert's arrival at a webhook subscribed to the `billing` topic. Writes
//! `target/bench-metering.json` for `scripts/bench_report.py`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minicloud_bench::{Op, ROUNDS, as_client, sequential_summary, zip_of};
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

/// Calls per row and cloud.
const N: usize = 10_000;
/// Budgets crossed, one alert each.
const ALERTS: usize = 15;

/// When each budget's alert reached the webhook.
type Arrivals = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

async fn receive(
    axum::extract::State(arrivals): axum::extract::State<Arrivals>,
    body: String,
) -> axum::http::StatusCode {
    let at = Instant::now();
    // Webhooks get CloudEvents in binary mode: the body is the event's data.
    if let Ok(data) = serde_json::from_str::<Value>(&body)
        && let Some(budget) = data["budget"].as_str()
    {
        arrivals
            .lock()
            .unwrap()
            .entry(budget.to_owned())
            .or_insert(at);
    }
    axum::http::StatusCode::NO_CONTENT
}

/// What one `Meters::record` costs on this machine, alone: an invocation's three
/// quantities appended to a journal in a temp dir, 200,000 times; the mean in ns.
fn record_cost() -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("metering-bench-{}", std::process::id()));
    let meters = minicloud_metering::Meters::open(
        &minicloud_metering::MeteringConfig::default(),
        &dir,
        "invoker",
        None,
        minicloud_telemetry::grpc_client::ServiceCredential::pending(),
    )?;
    let calls = 200_000;
    let started = Instant::now();
    for i in 0..calls {
        let billed = 1 + (i % 7) as u64;
        meters.record(
            "echo",
            &minicloud_metering::owner_of(&minicloud_authz_caller()),
            &[
                (minicloud_metering::Meter::FunctionRequests, 1),
                (minicloud_metering::Meter::FunctionBilledMs, billed),
                (minicloud_metering::Meter::FunctionMbMs, 128 * billed),
            ],
        );
    }
    let mean = started.elapsed().as_nanos() as f64 / calls as f64;
    drop(meters);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(mean)
}

fn minicloud_authz_caller() -> minicloud_authz::Caller {
    minicloud_authz::Caller::user("0b9d6f8e-1c2a-4c55-9f0e-2d1b6a7c8e90")
}

/// Alert latency: for each budget, 9 of its 10 events are published and shipped,
/// then the 10th (the crossing request) is timed from its answer to its alert's
/// arrival.
async fn alert_latency(cloud: &TestCloud) -> anyhow::Result<Vec<Duration>> {
    let arrivals = Arrivals::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let admin = cloud.admin();
    let _: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"billing","target":{"webhook": hook}}),
        )
        .await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let publish = |topic: String, n: usize| {
        let http = http.clone();
        let url = format!("{}/events/v1/topics/{topic}/events", cloud.gateway_url());
        let token = cloud.keys.service_key.clone();
        async move {
            let events: Vec<Value> = (0..n)
                .map(|_| json!({"specversion":"1.0","id":uuid::Uuid::new_v4().to_string(),"source":"/bench","type":"t","data":{}}))
                .collect();
            check(
                http.post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(serde_json::to_vec(&events)?)
                    .send()
                    .await?,
            )
            .await
        }
    };
    let mut latencies = Vec::new();
    for i in 0..ALERTS {
        let (topic, budget) = (format!("alerts{i}"), format!("alert{i}"));
        let _: Value = admin
            .post("/events/v1/topics", &json!({"name": topic}))
            .await?;
        // $0.00001: ten events at $0.000001.
        let _: Value = admin
            .post(
                "/billing/v1/budgets",
                &json!({"name":budget,"amount":"0.00001","scope":{"resource":topic},"thresholds":[100]}),
            )
            .await?;
        publish(topic.clone(), 9).await?;
        // Shipped (every second) and evaluated, below the threshold; a random phase
        // against the shipping tick, as a real crossing has.
        tokio::time::sleep(Duration::from_millis(1_500 + rand::random_range(0..1_000))).await;
        anyhow::ensure!(
            !arrivals.lock().unwrap().contains_key(&budget),
            "{budget} fired early"
        );
        publish(topic, 1).await?;
        let answered = Instant::now();
        let deadline = answered + Duration::from_secs(30);
        loop {
            if let Some(&at) = arrivals.lock().unwrap().get(&budget) {
                latencies.push(at.saturating_duration_since(answered));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no alert for {budget} in 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(latencies)
}

struct Cloud {
    base: String,
    token: String,
}

async fn prepare(cloud: &TestCloud, echo_zip: &str) -> anyhow::Result<Cloud> {
    let admin = cloud.admin();
    let _: Value = admin
        .put(
            "/functions/v1/echo",
            &json!({"runtime":"provided","code":{"zip_base64":echo_zip}}),
        )
        .await?;
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name":"bench"}))
        .await?;
    let _: Value = admin
        .post("/db/v1/collections", &json!({"name":"bench"}))
        .await?;
    Ok(Cloud {
        base: cloud.gateway_url().to_owned(),
        token: cloud.keys.service_key.clone(),
    })
}

async fn check(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// The four operations of one cloud, in the order rows are reported.
fn ops<'a>(http: &'a reqwest::Client, cloud: &'a Cloud) -> Vec<Op<'a>> {
    let object = vec![b'x'; 1024];
    vec![
        Box::new(move |_| {
            Box::pin(async move {
                check(
                    http.post(format!("{}/functions/v1/echo/invoke", cloud.base))
                        .bearer_auth(&cloud.token)
                        .body(r#"{"n":1}"#)
                        .send()
                        .await?,
                )
                .await
            })
        }),
        Box::new(move |i| {
            let object = object.clone();
            Box::pin(async move {
                check(
                    http.put(format!(
                        "{}/storage/v1/object/bench/o{}",
                        cloud.base,
                        i % 100
                    ))
                    .bearer_auth(&cloud.token)
                    .header("content-type", "application/octet-stream")
                    .body(object)
                    .send()
                    .await?,
                )
                .await
            })
        }),
        Box::new(move |i| {
            Box::pin(async move {
                check(
                    http.get(format!(
                        "{}/storage/v1/object/bench/o{}",
                        cloud.base,
                        i % 100
                    ))
                    .bearer_auth(&cloud.token)
                    .send()
                    .await?,
                )
                .await
            })
        }),
        Box::new(move |i| {
            Box::pin(async move {
                check(
                    http.put(format!(
                        "{}/db/v1/collections/bench/docs/d{}",
                        cloud.base,
                        i % 100
                    ))
                    .bearer_auth(&cloud.token)
                    .json(&json!({"n": i, "name": "a small document"}))
                    .send()
                    .await?,
                )
                .await
            })
        }),
        Box::new(move |i| {
            Box::pin(async move {
                check(
                    http.get(format!(
                        "{}/db/v1/collections/bench/docs/d{}",
                        cloud.base,
                        i % 100
                    ))
                    .bearer_auth(&cloud.token)
                    .send()
                    .await?,
                )
                .await
            })
        }),
    ]
}

/// Each operation timed with recording off and on, the two sides of a row side by
/// side and taking the lead in turn (off on, on off, …) over [`ROUNDS`] blocks.
/// Returns each row's samples as `[off, on]`, row after row.
async fn time_off_and_on(n: usize, ops: &mut [Op<'_>]) -> anyhow::Result<Vec<Vec<Duration>>> {
    for op in ops.iter_mut() {
        for i in 0..(n / 10).max(5) {
            op(usize::MAX - i).await?;
        }
    }
    let mut out: Vec<Vec<Duration>> = (0..ops.len() * 2).map(|_| Vec::with_capacity(n)).collect();
    let block = n / ROUNDS;
    for round in 0..ROUNDS {
        for (index, op) in ops.iter_mut().enumerate() {
            let sides = match round % 2 {
                0 => [false, true],
                _ => [true, false],
            };
            for recording in sides {
                minicloud_metering::set_recording(recording);
                let slot = 2 * index + usize::from(recording);
                for i in round * block..(round + 1) * block {
                    let started = Instant::now();
                    op(i).await?;
                    out[slot].push(started.elapsed());
                }
            }
        }
    }
    minicloud_metering::set_recording(true);
    Ok(out)
}

const ROWS: [&str; 5] = [
    "warm invoke",
    "storage PUT 1 KiB",
    "storage GET 1 KiB",
    "docdb PUT",
    "docdb GET",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let echo_path = "target/release/echo-function";
    let echo = std::fs::read(echo_path).map_err(|e| {
        anyhow::anyhow!(
            "{echo_path}: {e} (cargo build --release -p minicloud-e2e --bin echo-function)"
        )
    })?;
    let echo_zip = zip_of(&[("bootstrap", &echo, 0o755)])?;
    // As deployed: shipping every second.
    let mut metered = TestCloud::builder();
    metered.metering.ship_interval_ms = 1_000;
    let metered = metered.start().await?;
    let cloud = prepare(&metered, &echo_zip).await?;

    let rows = as_client(move || async move {
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let mut ops = ops(&http, &cloud);
        let samples = time_off_and_on(N, &mut ops).await?;
        drop(ops);
        let rows: Vec<Value> = ROWS
            .iter()
            .zip(samples.chunks(2))
            .map(|(name, pair)| {
                let (off, on) = (&pair[0], &pair[1]);
                let off = sequential_summary(off.clone());
                let on = sequential_summary(on.clone());
                let delta = on["p50_us"].as_f64().unwrap_or(0.0) - off["p50_us"].as_f64().unwrap_or(0.0);
                let ratio = on["p50_us"].as_f64().unwrap_or(0.0) / off["p50_us"].as_f64().unwrap_or(1.0);
                json!({"row": name, "unmetered": off, "metered": on, "p50_delta_us": delta, "p50_ratio": ratio})
            })
            .collect();
        anyhow::Ok(rows)
    })
    .await?;

    let record_ns = record_cost()?;
    let mut alerts = alert_latency(&metered).await?;
    alerts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let alert_latency = json!({
        "alerts": alerts.len(),
        "p50_ms": ms(alerts[alerts.len() / 2]),
        "max_ms": ms(alerts[alerts.len() - 1]),
        "min_ms": ms(alerts[0]),
        "ship_interval_ms": 1_000,
    });

    // Let the last second's journal lines ship, then check they all arrived.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let usage: Value = metered
        .admin()
        .get("/billing/v1/usage?granularity=month&meter=function.requests")
        .await?;
    let invocations: u64 = usage["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["quantity"].as_u64())
        .sum();
    let out = json!({
        "calls_per_row": N,
        // The invoke row's calls with recording on (warm-up ones included).
        "invocations_expected": N + (N / 10).max(5),
        "rounds": ROUNDS,
        "rows": rows,
        "invocations_metered": invocations,
        "record_ns": record_ns,
        "alert_latency": alert_latency,
    });
    std::fs::write(
        "target/bench-metering.json",
        serde_json::to_string_pretty(&out)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    metered.stop().await?;
    Ok(())
}
