//! `minicloud serve` in several processes shares one trace store in Postgres (issue
//! 20): storage in one process, gateway and auth in another, a second gateway replica
//! in a third. A request's spans from the gateway's process and from storage's are
//! one trace, and either gateway answers it, with the log lines of both processes.

use super::support::{Served, drop_database, free_ports, test_database};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One `minicloud serve`, its output left in `log` (read it when the test fails).
fn serve(args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Served {
    let output = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_minicloud"));
    command
        .arg("serve")
        .args(args)
        .args(["--host", "127.0.0.1"])
        .env_remove("MINICLOUD_PORT")
        .env_remove("MINICLOUD_SERVICE_URLS")
        .env_remove("MINICLOUD_SERVICE_KEY_FILE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("MINICLOUD_TRACES")
        .env_remove("MINICLOUD_TRACES_STORE")
        .env("MINICLOUD_METERING_DIR", super::support::meters_dir())
        .stdout(Stdio::null())
        .stderr(output);
    for (key, value) in env {
        command.env(key, value);
    }
    Served(command.spawn().unwrap())
}

#[tokio::test]
async fn processes_share_one_trace_store_and_either_gateway_shows_it() {
    let (database, database_url) = test_database("serve_traces");
    let dir = std::env::temp_dir().join(format!("minicloud-serve-traces-{}", std::process::id()));
    let key = format!("mck_{}", "7ace".repeat(10));
    let ports = free_ports(4);
    let (gateway, auth, storage, second_gateway) = (ports[0], ports[1], ports[2], ports[3]);
    let objects = dir.join("objects");
    let urls = format!(
        "gateway=http://127.0.0.1:{gateway},auth=http://127.0.0.1:{auth},storage=http://127.0.0.1:{storage},bus=http://127.0.0.1:9"
    );
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("MINICLOUD_SERVICE_KEY", key.as_str()),
        ("MINICLOUD_STORAGE_FS_ROOT", objects.to_str().unwrap()),
        ("MINICLOUD_SERVICE_URLS", urls.as_str()),
    ];
    std::fs::create_dir_all(&dir).unwrap();
    let _front = serve(
        &[
            "gateway,auth",
            "--port",
            &format!("gateway={gateway},auth={auth}"),
        ],
        &env,
        &dir.join("front.log"),
    );
    let _storage = serve(
        &["storage", "--port", &storage.to_string()],
        &env,
        &dir.join("storage.log"),
    );
    let _replica = serve(
        &["gateway", "--port", &second_gateway.to_string()],
        &env,
        &dir.join("replica.log"),
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gateway}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http
            .post(format!("{base}/storage/v1/bucket"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"name": "shared"}))
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 201 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!(
                "storage never answered through the gateway: {other:?} (logs in {})",
                dir.display()
            ),
        }
    }
    let put = http
        .post(format!("{base}/storage/v1/object/shared/a.txt"))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("kept by everyone")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let request_id = put.headers()["x-request-id"].to_str().unwrap().to_owned();

    // The second gateway never saw the request, yet shows its whole trace: the
    // gateway's spans from the first process and storage's from its own.
    let replica = format!("http://127.0.0.1:{second_gateway}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let trace: Value = loop {
        let response = http
            .get(format!("{replica}/traces/v1/traces/{request_id}"))
            .bearer_auth(&key)
            .send()
            .await;
        if let Ok(response) = response
            && response.status() == 200
        {
            let trace: Value = response.json().await.unwrap();
            let services: Vec<&str> = trace["spans"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["service"].as_str())
                .collect();
            if services.contains(&"gateway") && services.contains(&"storage") {
                break trace;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the shared store never held the upload's trace"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let trace_id = trace["trace_id"].as_str().unwrap();
    let spans = trace["spans"].as_array().unwrap();
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let roots = spans
        .iter()
        .filter(|s| {
            s["parent_span_id"]
                .as_str()
                .is_none_or(|p| !ids.contains(&p))
        })
        .count();
    assert_eq!(roots, 1, "one waterfall across processes: {trace}");

    // Listed by route on either gateway, with both services.
    for at in [&base, &replica] {
        let list: Value = http
            .get(format!(
                "{at}/traces/v1/traces?route=/storage/v1/object/shared/a.txt"
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = list["traces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["trace_id"] == trace_id)
            .unwrap_or_else(|| panic!("{at}: {list}"));
        assert_eq!(listed["http_status"], 200, "{listed}");
        assert!(
            listed["services"].as_array().unwrap().len() >= 2,
            "{listed}"
        );
        assert!(list["spans"].as_u64().unwrap() >= spans.len() as u64);
    }

    // The request's log lines from both processes (each logs an access line).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Value = http
            .get(format!("{replica}/traces/v1/logs?request_id={request_id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let services: Vec<&str> = lines["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["service"].as_str())
            .collect();
        if services.contains(&"gateway") && services.contains(&"storage") {
            break;
        }
        assert!(Instant::now() < deadline, "{lines}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Reading stays the service key's, and bad ids stay 400s.
    let refused = http
        .get(format!("{replica}/traces/v1/traces"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let bad = http
        .get(format!("{replica}/traces/v1/logs?trace_id=nope"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    drop((_front, _storage, _replica));
    drop_database(&database);
    let _ = std::fs::remove_dir_all(&dir);
}
