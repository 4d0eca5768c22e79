//! The bus's publish API over REST: CloudEvents validated, batches, dedupe on
//! `source` + `id`, permissions.

use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

async fn publish(cloud: &TestCloud, token: &str, content_type: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/events/v1/topics/orders/events",
            cloud.gateway_url()
        ))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn stream_len(cloud: &TestCloud, topic: &str) -> usize {
    let client = redis::Client::open(minicloud_testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(format!("{}topic:{topic}", cloud.redis_prefix))
        .query_async(&mut connection)
        .await
        .unwrap()
}

fn event(id: &str) -> Value {
    json!({"specversion":"1.0","id":id,"source":"/shop","type":"order.placed","time":"2026-11-26T10:00:00Z","data":{"total":42}})
}

#[tokio::test]
async fn publish_validate_batch_and_dedupe() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    let key = cloud.keys.service_key.clone();

    let (status, body) = publish(&cloud, &key, "application/cloudevents+json", event("o1")).await;
    assert_eq!(status, 200, "{body}");
    let first_id = body["ids"][0].as_str().unwrap().to_owned();
    // The same source + id again: stored once, answered with the first stream id.
    let (_, again) = publish(&cloud, &key, "application/json", event("o1")).await;
    assert_eq!(again["ids"][0], first_id.as_str());
    let (status, batch) = publish(
        &cloud,
        &key,
        "application/cloudevents-batch+json",
        json!([event("o2"), event("o3"), event("o1")]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(batch["ids"].as_array().unwrap().len(), 3);
    assert_eq!(batch["ids"][2], first_id.as_str());
    assert_eq!(stream_len(&cloud, "orders").await, 3);

    for (name, body, content_type, expected) in [
        (
            "missing type",
            json!({"specversion":"1.0","id":"x","source":"/s"}),
            "application/json",
            400,
        ),
        (
            "bad specversion",
            json!({"specversion":"0.3","id":"x","source":"/s","type":"t"}),
            "application/json",
            400,
        ),
        (
            "bad time",
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","time":"yesterday"}),
            "application/json",
            400,
        ),
        (
            "bad attribute",
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","Bad-Name":"v"}),
            "application/json",
            400,
        ),
        (
            "data and data_base64",
            json!({"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}),
            "application/json",
            400,
        ),
        ("not an object", json!([1]), "application/json", 400),
        (
            "batch not array",
            event("z"),
            "application/cloudevents-batch+json",
            400,
        ),
        (
            "bad event in batch",
            json!([event("y"), {"id":"nope"}]),
            "application/cloudevents-batch+json",
            400,
        ),
        ("wrong content type", event("w"), "text/plain", 415),
    ] {
        let (status, body) = publish(&cloud, &key, content_type, body).await;
        assert_eq!(status, expected, "{name}: {body}");
        assert!(body["error"]["message"].is_string(), "{name}");
    }
    assert_eq!(
        stream_len(&cloud, "orders").await,
        3,
        "nothing of the refused events was stored"
    );

    // Unknown topic, and a caller without events:Publish.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/events/v1/topics/nope/events",
            cloud.gateway_url()
        ))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(event("q").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, _) = publish(&cloud, &cloud.keys.anon_key, "application/json", event("a")).await;
    assert_eq!(status, 403);
    cloud.stop().await.unwrap();
}
