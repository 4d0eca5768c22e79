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

/// Opens the `orders` tail with the service key (`query` appended): the streaming
/// response, or the refusal's status and body.
async fn open_tail(cloud: &TestCloud, query: &str) -> Result<reqwest::Response, (u16, Value)> {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/events/v1/topics/orders/tail{query}",
            cloud.gateway_url()
        ))
        .header(
            "authorization",
            format!("Bearer {}", cloud.keys.service_key),
        )
        .send()
        .await
        .unwrap();
    if response.status() != 200 {
        let status = response.status().as_u16();
        return Err((status, response.json().await.unwrap_or(Value::Null)));
    }
    Ok(response)
}

/// Reads a tail's stream until it holds `needle` (or 10 s pass): everything read.
async fn read_tail_until<B: AsRef<[u8]>>(
    body: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    needle: &str,
) -> String {
    use futures::StreamExt as _;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains(needle) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(std::time::Duration::from_secs(1), body.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    }
    seen
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

pub(crate) mod webhook {
    //! A webhook receiver for the tests: records deliveries, fails on request.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    #[derive(Clone, Default)]
    pub(crate) struct Receiver {
        pub deliveries: Arc<Mutex<Vec<(HeaderMap, String)>>>,
        /// Answer 500 to this many requests before succeeding.
        pub fail_next: Arc<AtomicUsize>,
    }

    async fn receive(
        State(receiver): State<Receiver>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        let failing = receiver.fail_next.load(Ordering::SeqCst) > 0;
        if failing {
            receiver.fail_next.fetch_sub(1, Ordering::SeqCst);
        }
        receiver.deliveries.lock().unwrap().push((headers, body));
        if failing {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    }

    pub(crate) async fn start() -> (String, Receiver) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, receiver)
    }

    impl Receiver {
        pub(crate) fn successes(&self) -> Vec<(HeaderMap, String)> {
            self.deliveries
                .lock()
                .unwrap()
                .iter()
                .filter(|(h, _)| h.contains_key("ce-id"))
                .cloned()
                .collect()
        }

        pub(crate) fn count(&self) -> usize {
            self.deliveries.lock().unwrap().len()
        }
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..150 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_filter_retry_dead_letter_and_redrive() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let key = cloud.keys.service_key.clone();
    for name in ["orders", "orders-dlq"] {
        let _: Value = admin
            .post("/events/v1/topics", &json!({"name": name}))
            .await
            .unwrap();
    }
    let (url, receiver) = webhook::start().await;
    let subscription: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"orders","pattern":{"type":["order.placed"],"data":{"total":[{"numeric":[">",10]}]}},
                    "target":{"webhook": url},"retry":{"max_attempts":3,"min_backoff_ms":20,"max_backoff_ms":100,"max_age_s":3600},
                    "dead_letter_topic":"orders-dlq"}),
        )
        .await
        .unwrap();
    let id = subscription["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sub_"));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;

    // Ordered delivery of matching events only; the second one needs two retries.
    let matching = |id: &str, total: i64| json!({"specversion":"1.0","id":id,"source":"/shop","type":"order.placed","data":{"total":total}});
    publish(&cloud, &key, "application/json", matching("m1", 50)).await;
    publish(&cloud, &key, "application/json", matching("skip-small", 5)).await;
    publish(&cloud, &key, "application/json", json!({"specversion":"1.0","id":"skip-type","source":"/shop","type":"order.cancelled","data":{"total":99}})).await;
    wait_until(|| receiver.successes().len() == 1).await;
    receiver
        .fail_next
        .store(2, std::sync::atomic::Ordering::SeqCst);
    publish(&cloud, &key, "application/json", matching("m2", 60)).await;
    wait_until(|| {
        receiver
            .successes()
            .iter()
            .filter(|(h, _)| h["ce-id"] == "m2")
            .count()
            == 3
    })
    .await;
    let delivered = receiver.successes();
    let ids: Vec<&str> = delivered
        .iter()
        .map(|(h, _)| h["ce-id"].to_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["m1", "m2", "m2", "m2"],
        "only matching events, m2 retried twice"
    );
    let (headers, body) = &delivered[0];
    assert_eq!(headers["ce-type"], "order.placed");
    assert_eq!(headers["ce-source"], "/shop");
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-deliveryattempt"], "1");
    assert_eq!(delivered[3].0["ce-deliveryattempt"], "3");
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap(),
        json!({"total": 50}),
        "binary mode: the body is the data"
    );

    // Always failing: dead-lettered after three attempts, with the last error.
    receiver
        .fail_next
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let before = receiver.count();
    publish(&cloud, &key, "application/json", matching("m3", 70)).await;
    let mut letters = Value::Null;
    for _ in 0..100 {
        letters = admin
            .get(&format!("/events/v1/subscriptions/{id}/dead-letters"))
            .await
            .unwrap();
        if !letters["dead_letters"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.count() - before, 3);
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["event"]["id"], "m3");
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["last_error"].as_str().unwrap().contains("500"),
        "{letter}"
    );
    assert_eq!(
        stream_len(&cloud, "orders-dlq").await,
        1,
        "also published to the dead-letter topic"
    );

    // Redrive once the webhook is healthy: delivered, and the dead letters are gone.
    receiver
        .fail_next
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let redriven: Value = admin
        .post(
            &format!("/events/v1/subscriptions/{id}/dead-letters/redrive"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(redriven["redriven"], 1);
    // Its first attempt before dead-lettering matches this too: wait for the second.
    wait_until(|| {
        receiver
            .successes()
            .iter()
            .filter(|(h, body)| {
                h["ce-id"] == "m3" && body.contains("70") && h["ce-deliveryattempt"] == "1"
            })
            .count()
            >= 2
    })
    .await;
    assert!(
        receiver
            .successes()
            .iter()
            .filter(|(h, _)| h["ce-id"] == "m3")
            .count()
            >= 4
    );
    let letters: Value = admin
        .get(&format!("/events/v1/subscriptions/{id}/dead-letters"))
        .await
        .unwrap();
    assert_eq!(letters["dead_letters"], json!([]));

    // Bad subscriptions are refused with a reason.
    for bad in [
        json!({"topic":"orders","pattern":{"type":"not a list"},"target":{"webhook":url}}),
        json!({"topic":"orders","target":{"webhook":"ftp://x"}}),
        json!({"topic":"orders","target":{"function":"bad name!"}}),
        json!({"topic":"orders","target":{"webhook":url},"retry":{"max_attempts":0}}),
    ] {
        let result: Result<Value, _> = admin.post("/events/v1/subscriptions", &bad).await;
        assert_eq!(result.unwrap_err().status(), Some(400), "{bad}");
    }
    let missing: Result<Value, _> = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"nope","target":{"webhook":url}}),
        )
        .await;
    assert_eq!(missing.unwrap_err().status(), Some(404));
    let metrics = reqwest::get(format!("{}/metrics", cloud.urls.bus))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("subscription=\"{id}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        series("minicloud_bus_delivered_events_total") >= 3.0,
        "{metrics}"
    );
    assert_eq!(series("minicloud_bus_dead_lettered_events_total"), 1.0);
    assert!(series("minicloud_bus_retried_deliveries_total") >= 4.0);
    admin
        .delete(&format!("/events/v1/subscriptions/{id}"))
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_target_forwards_and_storage_events_reach_subscribers() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"uploads"}))
        .await
        .unwrap();
    let (url, receiver) = webhook::start().await;
    // storage → (pattern) → uploads → webhook
    let _: Value = admin
        .post("/events/v1/subscriptions", &json!({"topic":"storage","pattern":{"data":{"bucket":["photos"]}},"target":{"topic":"uploads"}}))
        .await
        .unwrap();
    let _: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"uploads","target":{"webhook":url}}),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for bucket in ["photos", "other"] {
        let _: Value = admin
            .post("/storage/v1/bucket", &json!({"name": bucket}))
            .await
            .unwrap();
        let response = admin
            .request(
                reqwest::Method::PUT,
                &format!("/storage/v1/object/{bucket}/a.txt"),
            )
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    wait_until(|| !receiver.successes().is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let delivered = receiver.successes();
    assert_eq!(
        delivered.len(),
        1,
        "only the photos upload passes the pattern"
    );
    assert_eq!(
        delivered[0].0["ce-type"],
        "minicloud.storage.object.created"
    );
    assert_eq!(delivered[0].0["ce-subject"], "photos/a.txt");
    let data: Value = serde_json::from_str(&delivered[0].1).unwrap();
    assert_eq!(data["bucket"], "photos");
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_new_events_and_metrics_count_them() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    let response = open_tail(&cloud, "").await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = Box::pin(response.bytes_stream());
    // The tail follows from now: publish after it is open.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    publish(
        &cloud,
        &cloud.keys.service_key,
        "application/json",
        event("t1"),
    )
    .await;
    let seen = read_tail_until(&mut body, "\"t1\"").await;
    assert!(seen.contains("event: cloudevent"), "{seen}");
    assert!(seen.contains("\"id\":\"t1\""), "{seen}");
    drop(body);
    let denied = reqwest::Client::new()
        .get(format!(
            "{}/events/v1/topics/orders/tail",
            cloud.gateway_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let metrics = reqwest::get(format!("{}/metrics", cloud.urls.bus))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("minicloud_bus_published_events_total")
                && l.contains("topic=\"orders\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_with_a_pattern_shows_only_matching_events() {
    let cloud = TestCloud::start().await.unwrap();
    let _: Value = cloud
        .admin()
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    let pattern = json!({"type": ["order.paid"]}).to_string();
    let query = format!(
        "?pattern={}",
        percent_encoding::utf8_percent_encode(&pattern, percent_encoding::NON_ALPHANUMERIC)
    );
    let mut body = Box::pin(open_tail(&cloud, &query).await.unwrap().bytes_stream());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut placed = event("p1");
    placed["type"] = json!("order.placed");
    let mut paid = event("p2");
    paid["type"] = json!("order.paid");
    for e in [placed, paid] {
        let (status, _) = publish(&cloud, &cloud.keys.service_key, "application/json", e).await;
        assert_eq!(status, 200);
    }
    let seen = read_tail_until(&mut body, "\"p2\"").await;
    assert!(seen.contains("\"id\":\"p2\""), "{seen}");
    // Read in stream order: had p1 passed the filter, it would be here before p2.
    assert!(!seen.contains("\"p1\""), "{seen}");

    // Bad patterns are refused before any streaming, with the reason.
    let long = format!("{{\"type\":[\"{}\"]}}", "x".repeat(5000));
    for (bad, why) in [
        ("{not json", "not JSON"),
        ("[1, 2]", "pattern"),
        ("{\"type\": \"order.paid\"}", "pattern"),
        ("{\"type\": [\"a\u{0}b\"]}", "JSON"),
        (long.as_str(), "at most"),
    ] {
        let query = format!(
            "?pattern={}",
            percent_encoding::utf8_percent_encode(bad, percent_encoding::NON_ALPHANUMERIC)
        );
        match open_tail(&cloud, &query).await {
            Ok(_) => panic!("{bad:?} was accepted"),
            Err((status, body)) => {
                assert_eq!(status, 400, "{bad:?}: {body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(why), "{bad:?}: {message}");
            }
        }
    }
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_stats_count_deliveries_and_dead_letters() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    // Nothing listens on the discard port: every attempt fails at once.
    let subscription: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"orders","target":{"webhook":"http://127.0.0.1:9/"},
                    "retry":{"max_attempts":2,"min_backoff_ms":10,"max_backoff_ms":10}}),
        )
        .await
        .unwrap();
    let id = subscription["id"].as_str().unwrap().to_owned();
    let path = format!("/events/v1/subscriptions/{id}/stats");
    let before: Value = admin.get(&path).await.unwrap();
    assert_eq!(before["dead_letters"], 0, "{before}");
    assert_eq!(before["delivered_since_start"], 0, "{before}");
    for n in ["s1", "s2"] {
        // Without `time`: an event older than the subscription's max age is not retried.
        let mut fresh = event(n);
        fresh.as_object_mut().unwrap().remove("time");
        let (status, _) = publish(&cloud, &cloud.keys.service_key, "application/json", fresh).await;
        assert_eq!(status, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stats = loop {
        let stats: Value = admin.get(&path).await.unwrap();
        if stats["dead_letters"] == 2 {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(stats["dead_lettered_since_start"], 2, "{stats}");
    // Two attempts each: one retry each.
    assert_eq!(stats["retried_since_start"], 2, "{stats}");
    assert_eq!(stats["delivered_since_start"], 0, "{stats}");
    assert_eq!(stats["lag"], 0, "{stats}");
    assert_eq!(stats["pending"], 0, "{stats}");
    assert!(stats["last_dead_letter_at"].is_string(), "{stats}");
    // Unknown ids: a clear 404; anonymous callers: refused.
    let code = |result: Result<Value, minicloud_sdk::Error>| match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    };
    assert_eq!(
        code(admin.get("/events/v1/subscriptions/nope/stats").await),
        404
    );
    assert!([401, 403, 404].contains(&code(cloud.client().get(&path).await)));
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_tick() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let created: Value = admin
        .post(
            "/events/v1/schedules",
            &json!({"name":"heartbeat","schedule":"rate(1 second)","data":{"beat":true}}),
        )
        .await
        .unwrap();
    assert_eq!(created["topic"], "schedules");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let client = redis::Client::open(minicloud_testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{}topic:schedules", cloud.redis_prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let events: Vec<Value> = entries
        .into_iter()
        .map(|(_, f)| serde_json::from_str(&f[0].1).unwrap())
        .collect();
    assert!(
        (2..=4).contains(&events.len()),
        "{} ticks in 3.5 s",
        events.len()
    );
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = events
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap())
        .collect();
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "one event per tick, none doubled or skipped"
        );
    }
    assert_eq!(events[0]["type"], "minicloud.schedule.fired");
    assert_eq!(events[0]["data"], json!({"beat": true}));
    assert!(events[0]["id"].as_str().unwrap().starts_with("heartbeat@"));
    for bad in [
        json!({"name":"x","schedule":"rate(5 fortnights)"}),
        json!({"name":"y","schedule":"0 9 * * *","timezone":"Mars/Base"}),
    ] {
        let result: Result<Value, _> = admin.post("/events/v1/schedules", &bad).await;
        assert_eq!(result.unwrap_err().status(), Some(400), "{bad}");
    }
    let duplicate: Result<Value, _> = admin
        .post(
            "/events/v1/schedules",
            &json!({"name":"heartbeat","schedule":"rate(1 minute)"}),
        )
        .await;
    assert_eq!(duplicate.unwrap_err().status(), Some(409));
    admin
        .delete("/events/v1/schedules/heartbeat")
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

/// The bus acts on a subscription's behalf long after the request that made it, so
/// it must act with its owner's rights only (issue 16). Each step is an attack that
/// worked before: a subscriber making any function run, publishing forged events to
/// minicloud's own topics, managing another owner's subscription, and a subscription
/// that keeps forwarding after its owner lost the right.
#[tokio::test]
async fn the_bus_acts_only_with_its_owners_current_rights() {
    let cloud = TestCloud::builder()
        .policy_cache_ttl(std::time::Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    for topic in ["in", "out", "private"] {
        let _: Value = admin
            .post("/events/v1/topics", &json!({"name": topic}))
            .await
            .unwrap();
    }
    let role = |name: &'static str, policies: Value| {
        let admin = admin.clone();
        async move {
            let _: Value = admin
                .post(
                    "/auth/v1/admin/roles",
                    &json!({"name": name, "policies": policies}),
                )
                .await
                .unwrap();
            let key: Value = admin
                .post(
                    "/auth/v1/admin/api-keys",
                    &json!({"name": name, "role": name}),
                )
                .await
                .unwrap();
            key["api_key"].as_str().unwrap().to_owned()
        }
    };
    let subscriber = cloud.client().with_token(
        role(
            "subscriber",
            json!([{"effect":"allow","actions":["events:Subscribe"],"resources":["events:*"]}]),
        )
        .await,
    );
    let publisher = cloud.client().with_token(
        role(
            "publisher",
            json!([{"effect":"allow","actions":["events:Publish"],"resources":["events:*"]}]),
        )
        .await,
    );
    let relay_policies = |publish: bool| {
        let mut policies = vec![
            json!({"effect":"allow","actions":["events:Subscribe"],"resources":["events:in"]}),
        ];
        if publish {
            policies.push(
                json!({"effect":"allow","actions":["events:Publish"],"resources":["events:out"]}),
            );
        }
        json!(policies)
    };
    let relay = cloud
        .client()
        .with_token(role("relay", relay_policies(true)).await);
    let status = |result: Result<Value, minicloud_sdk::Error>| match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    };

    // Subscribing to `storage` does not let it run a function it may not invoke,
    // nor write to a topic or dead-letter topic it may not publish to.
    for target in [
        json!({"topic":"storage","target":{"function":"victim"}}),
        json!({"topic":"storage","target":{"topic":"functions"}}),
        json!({"topic":"storage","target":{"topic":"out"}}),
        json!({"topic":"storage","target":{"webhook":"http://example.com/"},"dead_letter_topic":"functions.dead-letter"}),
    ] {
        assert_eq!(
            status(subscriber.post("/events/v1/subscriptions", &target).await),
            403,
            "{target}"
        );
    }
    // Publishing a forged invocation or upload needs the service role, even with
    // events:Publish on every topic.
    let forged = json!({"specversion":"1.0","id":"f1","source":"/forged","type":"minicloud.function.invoke","subject":"victim","data":{}});
    for topic in [
        "functions",
        "storage",
        "db",
        "schedules",
        "functions.dead-letter",
    ] {
        assert_eq!(
            status(
                publisher
                    .post(&format!("/events/v1/topics/{topic}/events"), &forged)
                    .await
            ),
            403,
            "{topic}"
        );
    }
    assert_eq!(
        status(
            publisher
                .post("/events/v1/topics/out/events", &forged)
                .await
        ),
        200
    );
    // A schedule must not fire into them either.
    assert_eq!(
        status(
            publisher
                .post(
                    "/events/v1/schedules",
                    &json!({"name":"forge","schedule":"rate(1 minute)","topic":"functions"})
                )
                .await
        ),
        403
    );

    // Another owner's subscription is invisible: not listed, not readable,
    // deletable or redrivable.
    let theirs: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"private","target":{"webhook":"http://127.0.0.1:9/"}}),
        )
        .await
        .unwrap();
    let theirs = theirs["id"].as_str().unwrap();
    let mine: Value = subscriber
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"private","target":{"webhook":"http://127.0.0.1:9/"}}),
        )
        .await
        .unwrap();
    let mine = mine["id"].as_str().unwrap();
    let listed: Value = subscriber.get("/events/v1/subscriptions").await.unwrap();
    let ids: Vec<&str> = listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine]);
    for path in [
        format!("/events/v1/subscriptions/{theirs}"),
        format!("/events/v1/subscriptions/{theirs}/dead-letters"),
        format!("/events/v1/subscriptions/{theirs}/stats"),
    ] {
        assert_eq!(status(subscriber.get(&path).await), 404, "{path}");
    }
    assert_eq!(
        status(
            subscriber
                .post(
                    &format!("/events/v1/subscriptions/{theirs}/dead-letters/redrive"),
                    &json!({})
                )
                .await
        ),
        404
    );
    assert_eq!(
        subscriber
            .delete(&format!("/events/v1/subscriptions/{theirs}"))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let _: Value = admin
        .get(&format!("/events/v1/subscriptions/{theirs}"))
        .await
        .unwrap();
    let _: Value = subscriber
        .get(&format!("/events/v1/subscriptions/{mine}"))
        .await
        .unwrap();
    subscriber
        .delete(&format!("/events/v1/subscriptions/{mine}"))
        .await
        .unwrap();

    // A relay forwards `in` to `out` while its owner may publish to `out`...
    let forward: Value = relay
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"in","target":{"topic":"out"},"retry":{"max_attempts":1}}),
        )
        .await
        .unwrap();
    let forward = forward["id"].as_str().unwrap().to_owned();
    let publish_in = |id: &'static str| {
        let admin = admin.clone();
        async move {
            let _: Value = admin
                .post("/events/v1/topics/in/events", &event(id))
                .await
                .unwrap();
        }
    };
    let out_before = stream_len(&cloud, "out").await;
    publish_in("r1").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stream_len(&cloud, "out").await == out_before {
        assert!(std::time::Instant::now() < deadline, "r1 was not forwarded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // ...and stops once that right is taken away: the event is dead-lettered with
    // the reason, for the owner to see.
    let _: Value = admin
        .put(
            "/auth/v1/admin/roles/relay",
            &json!({"policies": relay_policies(false)}),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let out_after_revoke = stream_len(&cloud, "out").await;
    publish_in("r2").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let letters = loop {
        let letters: Value = relay
            .get(&format!("/events/v1/subscriptions/{forward}/dead-letters"))
            .await
            .unwrap();
        if !letters["dead_letters"].as_array().unwrap().is_empty() {
            break letters;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "r2 was not dead-lettered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["event"]["id"], "r2");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("may no longer"),
        "{letter}"
    );
    assert_eq!(stream_len(&cloud, "out").await, out_after_revoke);
    cloud.stop().await.unwrap();
}

/// Verifies a delivery with the Standard Webhooks reference library (Python).
fn verify_with_standard_webhooks(
    secret: &str,
    headers: &axum::http::HeaderMap,
    body: &str,
) -> bool {
    let pydeps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps");
    assert!(
        pydeps.join("standardwebhooks").is_dir(),
        "standardwebhooks missing: `make test` installs it into target/pydeps"
    );
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let status = std::process::Command::new("python3")
        .env("PYTHONPATH", &pydeps)
        .args([
            "-c",
            "import sys\nfrom standardwebhooks.webhooks import Webhook\n\
             secret, id, ts, sig, body = sys.argv[1:]\n\
             Webhook(secret).verify(body.encode(), {'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': sig})",
            secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
            body,
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    status.success()
}

async fn subscribe(
    client: &minicloud_sdk::Client,
    topic: &str,
    url: &str,
) -> Result<Value, minicloud_sdk::Error> {
    client
        .post(
            "/events/v1/subscriptions",
            &json!({"topic": topic, "target": {"webhook": url}, "retry": {"max_attempts": 1}}),
        )
        .await
}

async fn dead_letter_reason(client: &minicloud_sdk::Client, id: &str) -> String {
    for _ in 0..100 {
        let letters: Value = client
            .get(&format!("/events/v1/subscriptions/{id}/dead-letters"))
            .await
            .unwrap();
        if let Some(reason) = letters["dead_letters"][0]["last_error"].as_str() {
            return reason.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no dead letter for {id}");
}

/// Webhooks cannot be pointed at the metadata service, minicloud's own ports or (on
/// a server) private addresses, by their text or through DNS; redirects are not
/// followed; deliveries are signed so the standard libraries verify them (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_reach_only_allowed_addresses() {
    // As under `minicloud up`: loopback allowed.
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"hooks"}))
        .await
        .unwrap();
    let (url, receiver) = webhook::start().await;
    let created = subscribe(&admin, "hooks", &url).await.unwrap();
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    let id = created["id"].as_str().unwrap();
    // Shown once: not in what is read back.
    let read: Value = admin
        .get(&format!("/events/v1/subscriptions/{id}"))
        .await
        .unwrap();
    assert!(read.get("webhook_secret").is_none(), "{read}");
    let _: Value = admin
        .post("/events/v1/topics/hooks/events", &event("w1"))
        .await
        .unwrap();
    wait_until(|| receiver.count() >= 1).await;
    let (headers, body) = receiver.successes()[0].clone();
    assert!(verify_with_standard_webhooks(&secret, &headers, &body));
    // A tampered body or another secret fails the same verification.
    assert!(!verify_with_standard_webhooks(
        &secret,
        &headers,
        &format!("{body} ")
    ));
    assert!(!verify_with_standard_webhooks(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &headers,
        &body
    ));

    // Always refused, whatever the mode: metadata and link-local addresses (also
    // written as IPv4-mapped IPv6), and minicloud's own servers' ports.
    let auth_port = cloud.urls.auth.rsplit(':').next().unwrap().to_owned();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://0.0.0.0:8080/".to_owned(),
        format!("http://127.0.0.1:{auth_port}/"),
        "http://127.0.0.1:5432/".to_owned(),
        "http://localhost:6379/".to_owned(),
    ] {
        let refused = subscribe(&admin, "hooks", &url).await.unwrap_err();
        assert_eq!(refused.status(), Some(400), "{url}: {refused}");
    }

    // A redirect is not followed: the delivery fails, the redirect's target gets
    // nothing.
    let redirect = axum::Router::new().route(
        "/",
        axum::routing::post({
            let url = url.clone();
            move || async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, url)],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirect).await.unwrap() });
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"redirected"}))
        .await
        .unwrap();
    let redirected = subscribe(&admin, "redirected", &redirect_url)
        .await
        .unwrap();
    let before = receiver.count();
    let _: Value = admin
        .post("/events/v1/topics/redirected/events", &event("w2"))
        .await
        .unwrap();
    let reason = dead_letter_reason(&admin, redirected["id"].as_str().unwrap()).await;
    assert!(reason.contains("redirects are not followed"), "{reason}");
    assert_eq!(receiver.count(), before);
    cloud.stop().await.unwrap();

    // As under `serve`: private addresses refused, by their text at creation and
    // after DNS at delivery; an allow-listed range is reachable.
    let cloud = TestCloud::builder()
        .bus(|c| c.webhook_private = Some(false))
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"hooks"}))
        .await
        .unwrap();
    let (url, receiver) = webhook::start().await;
    let refused = subscribe(&admin, "hooks", &url).await.unwrap_err();
    assert_eq!(refused.status(), Some(400), "{refused}");
    let by_name = url.replace("127.0.0.1", "localhost");
    let created = subscribe(&admin, "hooks", &by_name).await.unwrap();
    let _: Value = admin
        .post("/events/v1/topics/hooks/events", &event("w3"))
        .await
        .unwrap();
    let reason = dead_letter_reason(&admin, created["id"].as_str().unwrap()).await;
    assert!(reason.contains("resolves to"), "{reason}");
    assert_eq!(receiver.count(), 0);
    cloud.stop().await.unwrap();

    let cloud = TestCloud::builder()
        .bus(|c| {
            c.webhook_private = Some(false);
            c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
        })
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"hooks"}))
        .await
        .unwrap();
    subscribe(&admin, "hooks", &by_name).await.unwrap();
    let _: Value = admin
        .post("/events/v1/topics/hooks/events", &event("w4"))
        .await
        .unwrap();
    wait_until(|| receiver.count() >= 1).await;
    assert_eq!(receiver.successes().len(), 1);
    cloud.stop().await.unwrap();
}

/// A subscriber that falls behind a topic's retention loses nothing: appends do not
/// trim, and the trimmer spares every entry a subscription still needs (issue 16:
/// with `XADD MAXLEN ~` most of a burst vanished before the worker read it). Once
/// delivered, the topic is trimmed back to its retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_the_retention_loses_nothing() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"burst","retention":10}))
        .await
        .unwrap();
    let (url, receiver) = webhook::start().await;
    subscribe(&admin, "burst", &url).await.unwrap();
    let batch: Vec<Value> = (0..200).map(|i| event(&format!("b{i}"))).collect();
    let (status, body) = {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/events/v1/topics/burst/events",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    wait_until(|| receiver.count() >= 200).await;
    let mut ids: Vec<String> = receiver
        .successes()
        .iter()
        .map(|(headers, _)| headers["ce-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every event delivered, none lost");
    // Then trimmed back to the retention (the trimmer runs every 2 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while stream_len(&cloud, "burst").await > 10 {
        assert!(std::time::Instant::now() < deadline, "never trimmed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(stream_len(&cloud, "burst").await, 10);
    cloud.stop().await.unwrap();
}

/// `db` change events carry whole documents: a subscriber gets only those its
/// owner may read — owner conditions and collection policies included, as docdb
/// judges a read — not every collection's (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_events_reach_only_owners_who_may_read_the_document() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let policy = json!({"effect":"allow","principals":["role:authenticated"],
        "actions":["db:GetDocument","db:PutDocument","db:Query"],
        "resources":["db:notes","db:notes/*"],"condition":{"owner":"${auth.uid}"}});
    let _: Value = admin
        .post(
            "/db/v1/collections",
            &json!({"name":"notes","policy":policy}),
        )
        .await
        .unwrap();
    let _: Value = admin
        .post("/db/v1/collections", &json!({"name":"secrets"}))
        .await
        .unwrap();
    let _: Value = admin
        .put(
            "/auth/v1/admin/roles/authenticated",
            &json!({"policies":[{"effect":"allow","actions":["events:Subscribe"],"resources":["events:db"]}]}),
        )
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for email in ["alice@example.com", "bob@example.com"] {
        let session = cloud.client().signup(email, "password1234").await.unwrap();
        sessions.push(cloud.client().with_token(session.access_token));
    }
    let (alice, bob) = (sessions[0].clone(), sessions[1].clone());
    let (alice_url, alice_hook) = webhook::start().await;
    let (admin_url, admin_hook) = webhook::start().await;
    subscribe(&alice, "db", &alice_url).await.unwrap();
    subscribe(&admin, "db", &admin_url).await.unwrap();

    let mine: Value = alice
        .post("/db/v1/collections/notes/docs", &json!({"text":"alice's"}))
        .await
        .unwrap();
    let _: Value = bob
        .post("/db/v1/collections/notes/docs", &json!({"text":"bob's"}))
        .await
        .unwrap();
    let _: Value = admin
        .post(
            "/db/v1/collections/secrets/docs",
            &json!({"text":"the service's"}),
        )
        .await
        .unwrap();
    // The service role's subscription sees all three; by then alice's has had its
    // chance at them too (one worker per subscription, same topic).
    wait_until(|| admin_hook.count() >= 3).await;
    assert_eq!(admin_hook.successes().len(), 3);
    wait_until(|| alice_hook.count() >= 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let received = alice_hook.successes();
    let subjects: Vec<&str> = received
        .iter()
        .map(|(headers, _)| headers["ce-subject"].to_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [format!("notes/{}", mine["id"].as_str().unwrap())],
        "only her own note"
    );
    assert!(received[0].1.contains("alice's"));
    cloud.stop().await.unwrap();
}
