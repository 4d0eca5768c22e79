//! Issue 22: no meter is lost when `minicloud up` is killed (SIGKILL) with usage not
//! yet shipped to billing, and none is counted twice when the next start ships the
//! journal the dead process left behind.

use super::support::{drop_database, gateway_url, lines_of, test_database};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Up {
    child: Child,
    gateway: String,
    service_key: String,
}

impl Up {
    fn start(data_dir: &Path, database_url: &str, ship_interval_ms: u64) -> Up {
        let redis_url = std::env::var("MINICLOUD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_minicloud"))
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--port",
                "gateway=0,auth=0,storage=0,docdb=0,bus=0,invoker=0,billing=0",
            ])
            .args(["--metering-ship-interval-ms", &ship_interval_ms.to_string()])
            .args([
                "--bus-redis-prefix",
                &format!("mc_meter_crash_{}:", std::process::id()),
            ])
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("MINICLOUD_METERING_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap(), None);
        let gateway = gateway_url(&lines, Duration::from_secs(60));
        let credentials: Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("credentials.json")).unwrap(),
        )
        .unwrap();
        Up {
            child,
            gateway,
            service_key: credentials["service_key"].as_str().unwrap().to_owned(),
        }
    }

    fn kill_9(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn put_keys(client: &reqwest::Client, up: &Up, from: usize, to: usize) {
    for i in from..to {
        let status = client
            .put(format!("{}/db/v1/kv/crash/k{i}", up.gateway))
            .bearer_auth(&up.service_key)
            .json(&json!(i))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    }
}

async fn kv_writes(client: &reqwest::Client, up: &Up) -> u64 {
    let body: Value = client
        .get(format!(
            "{}/billing/v1/usage?granularity=month&meter=kv.writes",
            up.gateway
        ))
        .bearer_auth(&up.service_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["quantity"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn meters_of_a_killed_process_are_shipped_by_the_next_once() {
    let (database, database_url) = test_database("meter_crash");
    let data_dir =
        std::env::temp_dir().join(format!("minicloud-meter-crash-{}", std::process::id()));
    let client = reqwest::Client::new();

    // Shipping once a minute: the 40 writes are only in the journal when it dies.
    let first = Up::start(&data_dir, &database_url, 60_000);
    put_keys(&client, &first, 0, 40).await;
    assert_eq!(kv_writes(&client, &first).await, 0, "nothing shipped yet");
    first.kill_9();
    let left: Vec<_> = std::fs::read_dir(data_dir.join("meters"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "journal"))
        .collect();
    assert!(!left.is_empty(), "the killed process left its journals");

    let second = Up::start(&data_dir, &database_url, 100);
    put_keys(&client, &second, 40, 50).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counted = kv_writes(&client, &second).await;
        assert!(counted <= 50, "counted twice: {counted}");
        if counted == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {counted} of 50 writes metered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Shipped orphans are deleted; a later scan finds nothing to count again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kv_writes(&client, &second).await, 50);
    drop(second);
    drop_database(&database);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Budget alerts seen by a webhook: `(budget, threshold)`.
type Alerts = std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>;

async fn receive(axum::extract::State(alerts): axum::extract::State<Alerts>, body: String) {
    // Webhooks get CloudEvents in binary mode: the body is the event's data.
    if let Ok(data) = serde_json::from_str::<Value>(&body)
        && let (Some(budget), Some(threshold)) =
            (data["budget"].as_str(), data["threshold"].as_u64())
    {
        alerts.lock().unwrap().push((budget.to_owned(), threshold));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fired_threshold_does_not_fire_again_after_a_restart() {
    let (database, database_url) = test_database("budget_restart");
    let data_dir =
        std::env::temp_dir().join(format!("minicloud-budget-restart-{}", std::process::id()));
    let client = reqwest::Client::new();
    let alerts = Alerts::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(std::sync::Arc::clone(&alerts));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let first = Up::start(&data_dir, &database_url, 100);
    let admin = |up: &Up, path: &str, body: Value| {
        client
            .post(format!("{}{path}", up.gateway))
            .bearer_auth(&up.service_key)
            .json(&body)
    };
    let status = admin(
        &first,
        "/events/v1/subscriptions",
        json!({"topic":"billing","target":{"webhook": hook}}),
    )
    .send()
    .await
    .unwrap()
    .status();
    assert!(status.is_success(), "{status}");
    // Four key writes at $0.000000625: 50% of $0.000005.
    let status = admin(
        &first,
        "/billing/v1/budgets",
        json!({"name":"crash","amount":"0.000005","scope":{"resource":"crash"},"thresholds":[50]}),
    )
    .send()
    .await
    .unwrap()
    .status();
    assert_eq!(status.as_u16(), 201);
    put_keys(&client, &first, 0, 4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alerts.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the threshold did not fire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill_9();

    // The next start evaluates the same budget over the same usage (and ships
    // whatever the first had not): the firing is recorded, so no second alert.
    let second = Up::start(&data_dir, &database_url, 100);
    put_keys(&client, &second, 4, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *alerts.lock().unwrap(),
        vec![("crash".to_owned(), 50)],
        "one alert across the restart"
    );
    drop(second);
    drop_database(&database);
    let _ = std::fs::remove_dir_all(&data_dir);
}
