//! `minicloud events tail <topic>` prints a topic's new events as JSON lines.

use std::process::{Command, Stdio};
use std::time::Duration;

use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_published_events() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .args([
            "events",
            "tail",
            "orders",
            "--url",
            cloud.gateway_url(),
            "--token",
            &cloud.keys.service_key,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = super::support::lines_of(child.stdout.take().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let event = json!({"specversion":"1.0","id":"cli-1","source":"/shop","type":"order.placed","data":{"total":1}});
    let response = reqwest::Client::new()
        .post(format!(
            "{}/events/v1/topics/orders/events",
            cloud.gateway_url()
        ))
        .header(
            "authorization",
            format!("Bearer {}", cloud.keys.service_key),
        )
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a line for the event");
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["id"], "cli-1");
    assert_eq!(printed["data"], json!({"total": 1}));
    let _ = child.kill();
    let _ = child.wait();
    cloud.stop().await.unwrap();
}
