//! The transactional outbox against the real bus: only committed events are
//! published, in order, with their CloudEvent attributes, and each is marked sent.

use minicloud_outbox::{OutboxEvent, Relay, RelayConfig, enqueue, ensure_table};
use minicloud_telemetry::grpc_client::ServiceCredential;
use minicloud_testkit::TestCloud;
use minicloud_testkit::sqlx::{self, PgPool};
use serde_json::{Value, json};

/// A relay publishing to the test cloud's bus as a service does (with the service
/// key: the bus takes events only from minicloud's services).
fn relay_of(cloud: &TestCloud, pool: &PgPool) -> Relay {
    Relay::new(
        pool.clone(),
        &cloud.urls.bus,
        ServiceCredential::with_key(&cloud.keys.service_key),
        RelayConfig::default(),
    )
    .unwrap()
}

async fn producer_pool(cloud: &TestCloud) -> PgPool {
    let pool = PgPool::connect(&cloud.database_url).await.unwrap();
    sqlx::raw_sql("CREATE SCHEMA IF NOT EXISTS producer; SET search_path TO producer")
        .execute(&pool)
        .await
        .unwrap();
    // A pool whose connections all live in the producer's schema.
    let options: sqlx::postgres::PgConnectOptions = cloud.database_url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("search_path", "producer")]))
        .await
        .unwrap();
    ensure_table(&pool).await.unwrap();
    pool
}

async fn stream(cloud: &TestCloud, topic: &str) -> Vec<Value> {
    let client = redis::Client::open(minicloud_testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{}topic:{topic}", cloud.redis_prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            serde_json::from_str(&fields.into_iter().find(|(k, _)| k == "event").unwrap().1)
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn only_committed_events_are_published_in_order_and_marked_sent() {
    let cloud = TestCloud::start().await.unwrap();
    let pool = producer_pool(&cloud).await;
    let relay = relay_of(&cloud, &pool);

    let mut committed = Vec::new();
    for i in 0..3 {
        let mut tx = pool.begin().await.unwrap();
        let event = OutboxEvent::new(
            "/minicloud/storage",
            "minicloud.storage.object.created",
            Some(format!("photos/{i}.jpg")),
            json!({"bucket":"photos","size":i}),
        );
        enqueue(&mut tx, "storage", &event).await.unwrap();
        tx.commit().await.unwrap();
        committed.push(event);
    }
    let mut tx = pool.begin().await.unwrap();
    let rolled_back = OutboxEvent::new(
        "/minicloud/storage",
        "minicloud.storage.object.created",
        None,
        json!({"never": true}),
    );
    enqueue(&mut tx, "storage", &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(
        relay.relay_once().await.unwrap(),
        0,
        "sent events are not sent again"
    );

    let published = stream(&cloud, "storage").await;
    let ids: Vec<&str> = published
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = committed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids, expected,
        "committed events, in commit order, and nothing else"
    );
    let first = &published[0];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["type"], "minicloud.storage.object.created");
    assert_eq!(first["source"], "/minicloud/storage");
    assert_eq!(first["subject"], "photos/0.jpg");
    assert_eq!(first["data"], json!({"bucket":"photos","size":0}));
    assert_eq!(first["datacontenttype"], "application/json");

    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
    pool.close().await;
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn events_wait_in_the_outbox_while_the_bus_refuses_them() {
    let cloud = TestCloud::start().await.unwrap();
    let pool = producer_pool(&cloud).await;
    let relay = relay_of(&cloud, &pool);
    let mut tx = pool.begin().await.unwrap();
    let event = OutboxEvent::new("/test", "test.happened", None, json!({}));
    enqueue(&mut tx, "no-such-topic", &event).await.unwrap();
    tx.commit().await.unwrap();
    assert!(relay.relay_once().await.is_err());
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("no-such-topic"));
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 1, "kept for the next round");
    pool.close().await;
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_relay_that_dies_between_publish_and_mark_republishes_and_the_bus_stores_it_once() {
    let cloud = TestCloud::start().await.unwrap();
    let pool = producer_pool(&cloud).await;
    let relay = relay_of(&cloud, &pool);
    let mut tx = pool.begin().await.unwrap();
    let event = OutboxEvent::new(
        "/minicloud/storage",
        "minicloud.storage.object.created",
        None,
        json!({"n": 1}),
    );
    enqueue(&mut tx, "storage", &event).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    // The mark is lost (the relay died after publishing): the event is sent again.
    sqlx::query("UPDATE outbox SET sent_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    let published = stream(&cloud, "storage").await;
    assert_eq!(
        published.len(),
        1,
        "the bus dedupes on source + id: nothing lost, nothing doubled"
    );
    assert_eq!(published[0]["id"], event.id.as_str());
    pool.close().await;
    cloud.stop().await.unwrap();
}

/// No event is stuck or silently lost on its way out (issue 16): a round whose
/// events add up to more than a gRPC message is cut by bytes (one publish of
/// everything failed forever before), an event over the size limit is refused when
/// it is written, and an event the bus refuses for good is set aside with its error
/// so the ones behind it flow.
#[tokio::test]
async fn big_rounds_are_cut_by_bytes_and_a_refused_event_is_set_aside() {
    let cloud = TestCloud::start().await.unwrap();
    let pool = producer_pool(&cloud).await;
    let relay = relay_of(&cloud, &pool);
    let mut registry = prometheus_client::registry::Registry::with_prefix("minicloud");
    relay.register_metrics(&mut registry);
    let big = "x".repeat(900 * 1024);
    for i in 0..10 {
        let mut tx = pool.begin().await.unwrap();
        let event = OutboxEvent::new("/test", "test.big", None, json!({"i": i, "pad": big}));
        enqueue(&mut tx, "storage", &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(relay.relay_once().await.unwrap(), 10);
    assert_eq!(stream(&cloud, "storage").await.len(), 10);

    let mut tx = pool.begin().await.unwrap();
    let too_big = OutboxEvent::new(
        "/test",
        "test.big",
        None,
        json!({"pad": "y".repeat(3 << 20)}),
    );
    let refused = enqueue(&mut tx, "storage", &too_big).await.unwrap_err();
    assert!(
        matches!(refused, minicloud_outbox::OutboxError::TooLarge { .. }),
        "{refused}"
    );
    tx.rollback().await.unwrap();

    // A stored event the bus will never take (no source), then two good ones.
    sqlx::query("INSERT INTO outbox (topic, event) VALUES ('storage', $1)")
        .bind(json!({"id":"bad","source":"","type":"test.bad","time":"2026-12-04T00:00:00Z","data":{}}))
        .execute(&pool)
        .await
        .unwrap();
    let mut good = Vec::new();
    for i in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        let event = OutboxEvent::new("/test", "test.good", None, json!({"i": i}));
        enqueue(&mut tx, "storage", &event).await.unwrap();
        tx.commit().await.unwrap();
        good.push(event.id);
    }
    for _ in 0..6 {
        let _ = relay.relay_once().await;
    }
    let published: Vec<String> = stream(&cloud, "storage")
        .await
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    for id in &good {
        assert!(published.contains(id), "{id} flowed past the refused event");
    }
    let (set_aside, error): (bool, Option<String>) = sqlx::query_as(
        "SELECT set_aside_at IS NOT NULL, last_error FROM outbox WHERE event->>'id' = 'bad'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(set_aside, "{error:?}");
    assert!(error.unwrap().contains("source"));
    // Counted where an operator looks (the producing service's /metrics).
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
    assert!(
        metrics.contains("minicloud_outbox_set_aside_events_total 1\n"),
        "{metrics}"
    );
    pool.close().await;
    cloud.stop().await.unwrap();
}
