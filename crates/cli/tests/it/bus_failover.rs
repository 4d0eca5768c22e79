//! Issue 6's failure test: 10,000 events published while a bus replica delivering
//! them is killed (SIGKILL) and restarted twice. Every event must reach the webhook
//! at least once; duplicates are counted and reported. Bounded in time.

use super::support::free_port;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

type Seen = Arc<Mutex<HashMap<String, u32>>>;

async fn receive(State(seen): State<Seen>, headers: HeaderMap) -> StatusCode {
    // A little work per delivery, so a killed worker has deliveries in flight.
    tokio::time::sleep(Duration::from_millis(2)).await;
    if let Some(id) = headers.get("ce-id").and_then(|v| v.to_str().ok()) {
        *seen.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }
    StatusCode::NO_CONTENT
}

/// Another bus process on the same Postgres and Redis: a second consumer in every
/// subscription's group.
fn start_replica(cloud: &TestCloud) -> Child {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .args([
            "serve",
            "bus",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("DATABASE_URL", &cloud.database_url)
        .env("REDIS_URL", minicloud_testkit::test_redis_url())
        .env("MINICLOUD_BUS_REDIS_PREFIX", &cloud.redis_prefix)
        .env(
            "MINICLOUD_SERVICE_URLS",
            format!(
                "auth={},docdb={},invoker={},billing={}",
                cloud.urls.auth, cloud.urls.docdb, cloud.urls.invoker, cloud.urls.billing
            ),
        )
        .env("MINICLOUD_BUS_VISIBILITY_TIMEOUT", "2")
        .env("MINICLOUD_METERING_DIR", super::support::meters_dir())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the replica did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn kill(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_two_killed_workers() {
    const EVENTS: usize = 10_000;
    const BATCH: usize = 500;
    let cloud = TestCloud::builder()
        .bus(|b| b.visibility_timeout_s = 2)
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name": "load"}))
        .await
        .unwrap();
    let _: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"load","target":{"webhook":hook},"max_in_flight":16,
                    "retry":{"max_attempts":20,"min_backoff_ms":10,"max_backoff_ms":500,"max_age_s":3600}}),
        )
        .await
        .unwrap();
    let mut replica = Some(start_replica(&cloud));
    tokio::time::sleep(Duration::from_millis(800)).await;

    let http = reqwest::Client::new();
    let started = Instant::now();
    for batch in 0..EVENTS / BATCH {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| json!({"specversion":"1.0","id":format!("e{}", batch * BATCH + i),"source":"/load","type":"load.tick","data":{"n":i}}))
            .collect();
        let response = http
            .post(format!(
                "{}/events/v1/topics/load/events",
                cloud.gateway_url()
            ))
            .header(
                "authorization",
                format!("Bearer {}", cloud.keys.service_key),
            )
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // Kill the replica mid-stream twice, starting a fresh one each time.
        if batch == 6 || batch == 13 {
            if let Some(child) = replica.take() {
                kill(child);
            }
            replica = Some(start_replica(&cloud));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = seen.lock().unwrap().len();
        if delivered == EVENTS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(child) = replica.take() {
        kill(child);
    }
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<String> = (0..EVENTS)
        .map(|i| format!("e{i}"))
        .filter(|id| !seen.contains_key(id))
        .collect();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "bus failover: {} of {EVENTS} events delivered in {:?}, {duplicates} duplicate deliveries, {} missing",
        seen.len(),
        started.elapsed(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "missing {} events, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The killed replicas really took part: the group knows their consumers.
    let client = redis::Client::open(minicloud_testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let subscription: Value = admin.get("/events/v1/subscriptions").await.unwrap();
    let group = subscription["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("{}topic:load", cloud.redis_prefix))
        .arg(&group)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        consumers.len() >= 3,
        "the cloud's worker and the replicas consumed: {}",
        consumers.len()
    );
    cloud.stop().await.unwrap();
}
