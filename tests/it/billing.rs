//! Metering and billing end to end (issue 22): a known workload through the gateway
//! — invocations of a function that sleeps, uploads and downloads of known sizes,
//! documents and keys written and read, events published — is metered exactly (the
//! GB-seconds to Lambda's rounding, read back from the function's REPORT lines),
//! priced against the sheet with its free tiers, and ingestion is idempotent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use minicloud_proto::billing::v1::billing_service_client::BillingServiceClient;
use minicloud_proto::billing::v1::{
    CapsRequest, IngestRequest, Quantity, SetFunctionCapRequest, UsageRecord,
};
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

use super::invoker::{deploy_ok, zip_of};

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn usage(cloud: &TestCloud, query: &str) -> Value {
    let (status, body) = send(
        http()
            .get(format!("{}/billing/v1/usage?{query}", cloud.gateway_url()))
            .bearer_auth(&cloud.keys.service_key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `meter → quantity` over the whole month, summed over resources and owners.
async fn totals(cloud: &TestCloud, query: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    let body = usage(cloud, &format!("granularity=month&{query}")).await;
    for row in body["rows"].as_array().unwrap() {
        *totals
            .entry(row["meter"].as_str().unwrap().to_owned())
            .or_default() += row["quantity"].as_u64().unwrap();
    }
    totals
}

/// This month's `/billing/v1/cost`, every line.
async fn month_cost(cloud: &TestCloud) -> Value {
    let (status, cost) = send(
        http()
            .get(format!(
                "{}/billing/v1/cost?granularity=month",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key),
    )
    .await;
    assert_eq!(status, 200, "{cost}");
    cost
}

/// The one line of `meter` in a cost answer.
fn cost_line(cost: &Value, meter: &str) -> Value {
    cost["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meter"] == meter)
        .cloned()
        .unwrap_or_else(|| panic!("no {meter} line in {cost}"))
}

/// Waits until `meter` reaches `expected` (shipping runs every 100 ms in tests), then
/// returns every total, checked again a moment later: nothing counted twice.
async fn settled(cloud: &TestCloud, meter: &str, expected: u64) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = totals(cloud, "").await;
        let reached = now.get(meter).copied().unwrap_or(0);
        assert!(
            reached <= expected,
            "{meter}: {reached} > {expected}: {now:?}"
        );
        if reached == expected {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = totals(cloud, "").await;
            assert_eq!(again, now, "meters grew after the workload was shipped");
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{meter} stayed at {reached}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_known_workload_is_metered_exactly_and_priced_with_the_free_tier() {
    // Three free requests a month instead of a million, so the free tier is seen
    // covering part of a line.
    let mut builder = TestCloud::builder();
    builder.billing.pricing.function_requests_free = 3;
    let cloud = builder.start().await.unwrap();
    let key = cloud.keys.service_key.clone();
    let gateway = cloud.gateway_url().to_owned();

    // Functions: 5 invocations of 256 MB that sleep 30 ms.
    let code = zip_of(&[(
        "main.py",
        b"import time\ndef handler(event, context):\n    time.sleep(0.03)\n    return {'ok': True}\n",
        0o644,
    )]);
    deploy_ok(
        &cloud,
        json!({"name":"sleeper","runtime":"python3","handler":"main.handler","memory_mb":256}),
        &code,
    )
    .await;
    for _ in 0..5 {
        let (status, body) = send(
            http()
                .post(format!("{gateway}/functions/v1/sleeper/invoke"))
                .bearer_auth(&key)
                .json(&json!({})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // Storage: a public bucket, 3 uploads of known sizes, a listing, 3 downloads,
    // a 100-byte range and an anonymous public download of the largest.
    let (status, body) = send(
        http()
            .post(format!("{gateway}/storage/v1/bucket"))
            .bearer_auth(&key)
            .json(&json!({"name":"files","public":true})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let sizes = [1_000usize, 2_000, 3_000];
    for (i, size) in sizes.iter().enumerate() {
        let (status, body) = send(
            http()
                .post(format!("{gateway}/storage/v1/object/files/f{i}.bin"))
                .bearer_auth(&key)
                .header("content-type", "application/octet-stream")
                .body(vec![b'x'; *size]),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = send(
        http()
            .post(format!("{gateway}/storage/v1/object/list/files"))
            .bearer_auth(&key)
            .json(&json!({"prefix":""})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (i, size) in sizes.iter().enumerate() {
        let bytes = http()
            .get(format!("{gateway}/storage/v1/object/files/f{i}.bin"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len(), *size);
    }
    let ranged = http()
        .get(format!("{gateway}/storage/v1/object/files/f0.bin"))
        .bearer_auth(&key)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
    let public = http()
        .get(format!("{gateway}/storage/v1/object/public/files/f2.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(public.len(), 3_000);

    // Documents: 2 single writes and a batch of 3; 2 reads by id and a query page.
    let (status, body) = send(
        http()
            .post(format!("{gateway}/db/v1/collections"))
            .bearer_auth(&key)
            .json(&json!({"name":"notes"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    for id in ["a", "b"] {
        let (status, body) = send(
            http()
                .put(format!("{gateway}/db/v1/collections/notes/docs/{id}"))
                .bearer_auth(&key)
                .json(&json!({"v": id})),
        )
        .await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let (status, body) = send(
        http()
            .post(format!("{gateway}/db/v1/batch"))
            .bearer_auth(&key)
            .json(&json!({"writes":[
                {"op":"put","collection":"notes","id":"c","data":{"v":"c"}},
                {"op":"put","collection":"notes","id":"d","data":{"v":"d"}},
                {"op":"put","collection":"notes","id":"e","data":{"v":"e"}}
            ]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for id in ["a", "e"] {
        let (status, body) = send(
            http()
                .get(format!("{gateway}/db/v1/collections/notes/docs/{id}"))
                .bearer_auth(&key),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = send(
        http()
            .post(format!("{gateway}/db/v1/collections/notes/query"))
            .bearer_auth(&key)
            .json(&json!({"limit": 10})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["documents"].as_array().unwrap().len(), 5);

    // Keys: 2 writes, 1 read.
    for k in ["k1", "k2"] {
        let (status, body) = send(
            http()
                .put(format!("{gateway}/db/v1/kv/counters/{k}"))
                .bearer_auth(&key)
                .json(&json!(1)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = send(
        http()
            .get(format!("{gateway}/db/v1/kv/counters/k1"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Events: a batch of 3 on a topic of our own (the services' own change events
    // on `storage` and `db` are not billed).
    let (status, body) = send(
        http()
            .post(format!("{gateway}/events/v1/topics"))
            .bearer_auth(&key)
            .json(&json!({"name":"orders"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"specversion":"1.0","id":format!("o{i}"),"source":"/shop","type":"order.placed","data":{}}))
        .collect();
    let (status, body) = send(
        http()
            .post(format!("{gateway}/events/v1/topics/orders/events"))
            .bearer_auth(&key)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The function's own account of its billed durations.
    let billed: u64 = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, logs) = send(
                http()
                    .get(format!(
                        "{gateway}/functions/v1/sleeper/logs?limit=1000&stream=platform&contains=REPORT"
                    ))
                    .bearer_auth(&key),
            )
            .await;
            let reports: Vec<u64> = logs["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|line| {
                    let message = line["message"].as_str()?;
                    let rest = message.split("Billed Duration: ").nth(1)?;
                    rest.split(" ms").next()?.parse().ok()
                })
                .collect();
            if reports.len() == 5 {
                break reports.iter().sum();
            }
            assert!(Instant::now() < deadline, "REPORT lines: {logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(billed >= 5 * 30, "each call slept 30 ms: {billed}");

    let totals = settled(&cloud, "events.published", 3).await;
    let expected: BTreeMap<String, u64> = [
        ("function.requests", 5),
        ("function.billed_ms", billed),
        ("function.mb_ms", 256 * billed),
        // 3 uploads and a listing (class A); bucket creation is not metered.
        ("storage.write_requests", 4),
        // 3 downloads, the range, the public download.
        ("storage.read_requests", 5),
        ("storage.bytes_out", 1_000 + 2_000 + 3_000 + 100 + 3_000),
        ("db.writes", 5),
        ("db.reads", 3),
        ("kv.writes", 2),
        ("kv.reads", 1),
        ("events.published", 3),
    ]
    .into_iter()
    .map(|(meter, quantity)| (meter.to_owned(), quantity))
    .collect();
    assert_eq!(totals, expected);

    // Attribution: the public download is the anonymous caller's, in the bucket.
    let by_owner = usage(
        &cloud,
        "granularity=month&group_by=resource,owner&meter=storage.bytes_out",
    )
    .await;
    let mut rows: Vec<(String, String, u64)> = by_owner["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["resource"].as_str().unwrap().to_owned(),
                row["owner"].as_str().unwrap().to_owned(),
                row["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("files".to_owned(), "anon".to_owned(), 3_000),
            ("files".to_owned(), "service".to_owned(), 6_100),
        ]
    );

    // Cost: each line is quantity × the sheet's price; the free tier covers 3 of
    // the 5 requests, all the GB-seconds and all the bytes out.
    let cost = month_cost(&cloud).await;
    let line = |meter: &str| cost_line(&cost, meter);
    assert_eq!(line("function.requests")["cost"], "0.000001");
    assert_eq!(line("storage.write_requests")["cost"], "0.00002");
    assert_eq!(line("storage.read_requests")["cost"], "0.000002");
    assert_eq!(line("db.writes")["cost"], "0.000003125");
    assert_eq!(line("db.reads")["cost"], "0.000000375");
    assert_eq!(line("kv.writes")["cost"], "0.00000125");
    assert_eq!(line("kv.reads")["cost"], "0.000000125");
    assert_eq!(line("events.published")["cost"], "0.000003");
    assert_eq!(line("function.mb_ms")["billing_unit"], "GB-second");
    let credits: BTreeMap<String, u64> = cost["free_tier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["meter"].as_str().unwrap().to_owned(),
                c["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        credits,
        [
            ("function.mb_ms".to_owned(), 256 * billed),
            ("function.requests".to_owned(), 3),
            ("storage.bytes_out".to_owned(), 9_100),
        ]
        .into_iter()
        .collect()
    );
    // 0.00002 + 0.000002 + 0.000003125 + 0.000000375 + 0.00000125 + 0.000000125
    // + 0.000003, and the 2 requests beyond the free 3: 0.0000004.
    assert_eq!(cost["total"], "0.000030275");
    assert_eq!(cost["free_tier_applied"], true);

    // Filtered to a resource, the account's free tier is not applied.
    let (_, sleeper) = send(
        http()
            .get(format!(
                "{gateway}/billing/v1/cost?granularity=month&resource=sleeper&group_by=resource"
            ))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(sleeper["free_tier_applied"], false);
    assert_eq!(sleeper["free_tier"], json!([]));
    assert!(
        sleeper["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["resource"] == "sleeper")
    );

    // The meters are Prometheus counters too.
    let metrics = http()
        .get(format!("{}/metrics", cloud.urls.storage))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "minicloud_meter_quantity_total{service=\"storage\",meter=\"storage.bytes_out\"} 9100"
        ),
        "{metrics}"
    );
    cloud.stop().await.unwrap();
}

fn record(seq: u64, resource: &str, meter: &str, amount: u64) -> UsageRecord {
    UsageRecord {
        seq,
        at_ms: chrono::Utc::now().timestamp_millis(),
        resource: resource.to_owned(),
        owner: "service".to_owned(),
        quantities: vec![Quantity {
            meter: meter.to_owned(),
            amount,
        }],
    }
}

#[tokio::test]
async fn a_batch_shipped_twice_is_counted_once_and_bad_batches_are_refused_whole() {
    let cloud = TestCloud::start().await.unwrap();
    let mut billing = BillingServiceClient::new(cloud.service_channel(&cloud.urls.billing));
    let batch = |records: Vec<UsageRecord>| IngestRequest {
        journal: "replayed-journal".into(),
        records,
    };
    let first: Vec<UsageRecord> = (1..=3)
        .map(|seq| record(seq, "t", "events.published", 10))
        .collect();
    let through = billing.ingest(batch(first.clone())).await.unwrap();
    assert_eq!(through.into_inner().ingested_through, 3);
    // Re-sent after a lost answer, then overlapping with one new record.
    billing.ingest(batch(first.clone())).await.unwrap();
    let mut overlapping = first;
    overlapping.push(record(4, "t", "events.published", 1));
    let through = billing.ingest(batch(overlapping)).await.unwrap();
    assert_eq!(through.into_inner().ingested_through, 4);
    let ingested = totals(&cloud, "resource=t").await;
    assert_eq!(ingested.get("events.published"), Some(&31));

    // Malformed: every one refused, nothing of it counted.
    let bad = [
        batch(vec![record(5, "t\0x", "events.published", 1)]),
        batch(vec![record(5, "t", "events.publishd", 1)]),
        batch(vec![
            record(6, "t", "events.published", 1),
            record(6, "t", "events.published", 1),
        ]),
        batch(vec![record(0, "t", "events.published", 1)]),
        batch(vec![record(5, &"r".repeat(2_000), "events.published", 1)]),
        batch(vec![UsageRecord {
            at_ms: 0,
            ..record(5, "t", "events.published", 1)
        }]),
        batch(vec![record(5, "t", "events.published", u64::MAX)]),
        IngestRequest {
            journal: "../etc".into(),
            records: vec![record(5, "t", "events.published", 1)],
        },
        IngestRequest {
            journal: String::new(),
            records: vec![],
        },
        batch(
            (5..=10_005)
                .map(|seq| record(seq, "t", "events.published", 1))
                .collect(),
        ),
    ];
    for request in bad {
        let status = billing.ingest(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let totals_after = totals(&cloud, "resource=t").await;
    assert_eq!(totals_after.get("events.published"), Some(&31));

    // Only minicloud's own services may ship meters.
    let anon =
        minicloud_telemetry::grpc_client::TracedChannel::connect_lazy("test", &cloud.urls.billing)
            .unwrap()
            .with_credential(
                minicloud_telemetry::grpc_client::ServiceCredential::with_key(&cloud.keys.anon_key),
            );
    let mut anon = BillingServiceClient::new(anon);
    let refused = anon
        .ingest(batch(vec![record(5, "t", "events.published", 1)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = anon.caps(CapsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = anon
        .set_function_cap(SetFunctionCapRequest {
            function: "f".into(),
            amount: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // A function cap with a bad name or amount is refused and leaves no budget.
    for (function, amount) in [
        ("../f", "1"),
        ("", "1"),
        ("f\0", "1"),
        ("f", "-1"),
        ("f", "1e99"),
        ("f", "lots"),
    ] {
        let refused = billing
            .set_function_cap(SetFunctionCapRequest {
                function: function.into(),
                amount: amount.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{function:?} {amount:?}"
        );
    }
    assert_eq!(
        billing
            .caps(CapsRequest {})
            .await
            .unwrap()
            .into_inner()
            .caps,
        vec![]
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn the_billing_api_refuses_bad_queries_and_callers_without_the_right() {
    let cloud = TestCloud::start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    for path in ["usage", "cost", "forecast", "prices"] {
        // No token (anon) and the anon key: no `billing:ReadUsage`.
        let (status, body) = send(http().get(format!("{gateway}/billing/v1/{path}"))).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        let (status, _) = send(
            http()
                .get(format!("{gateway}/billing/v1/{path}"))
                .bearer_auth(&cloud.keys.anon_key),
        )
        .await;
        assert_eq!(status, 403);
        let (status, body) = send(
            http()
                .get(format!("{gateway}/billing/v1/{path}"))
                .bearer_auth("not-a-token"),
        )
        .await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let long_owner = format!("owner={}", "o".repeat(2_000));
    for query in [
        "granularity=week",
        "from=2026-12-05T00:00:00Z&to=2026-12-01T00:00:00Z",
        "from=yesterday",
        "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "group_by=colour",
        "service=compute",
        "meter=function.gb",
        "resource=a%00b",
        long_owner.as_str(),
        "limit=0",
        "limit=10001",
        "cursor=-5",
        "cursor=abc",
        "bogus=1",
    ] {
        let (status, body) = send(
            http()
                .get(format!("{gateway}/billing/v1/usage?{query}"))
                .bearer_auth(&key),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{query}: {body}");
    }
    let (status, body) = send(
        http()
            .get(format!("{gateway}/billing/v1/cost?limit=5"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Pages: one row per page, the cursor walks them all once.
    let mut billing = BillingServiceClient::new(cloud.service_channel(&cloud.urls.billing));
    billing
        .ingest(IngestRequest {
            journal: "pages".into(),
            records: (1..=3)
                .map(|seq| record(seq, &format!("r{seq}"), "kv.reads", seq))
                .collect(),
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("granularity=month&group_by=resource&limit=1&cursor={c}"),
            None => "granularity=month&group_by=resource&limit=1".into(),
        };
        let page = usage(&cloud, &query).await;
        let rows = page["rows"].as_array().unwrap();
        assert!(rows.len() <= 1);
        seen.extend(
            rows.iter()
                .map(|r| r["resource"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["r1", "r2", "r3"]);

    // A role granted `billing:ReadUsage` may read usage and prices, nothing more.
    let admin = cloud.admin();
    let _: Value = admin
        .post(
            "/auth/v1/admin/roles",
            &json!({"name":"finance","policies":[{"effect":"allow","actions":["billing:ReadUsage"],"resources":["billing:usage"]}]}),
        )
        .await
        .unwrap();
    let created: Value = admin
        .post(
            "/auth/v1/admin/api-keys",
            &json!({"name":"finance","role":"finance"}),
        )
        .await
        .unwrap();
    let finance = created["api_key"].as_str().unwrap().to_owned();
    let (status, body) = send(
        http()
            .get(format!("{gateway}/billing/v1/prices"))
            .bearer_auth(&finance),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let requests = body["prices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["meter"] == "function.requests")
        .unwrap();
    assert_eq!(requests["unit_price"], "0.0000002");
    assert_eq!(requests["free_per_month"], 1_000_000);
    let (status, body) = send(
        http()
            .get(format!("{gateway}/billing/v1/usage?granularity=month"))
            .bearer_auth(&finance),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = send(
        http()
            .post(format!("{gateway}/events/v1/topics"))
            .bearer_auth(&finance)
            .json(&json!({"name":"finance-topic"})),
    )
    .await;
    assert_eq!(status, 403, "the grant is for billing only");
    // Policies naming a billing action that does not exist are refused.
    let typo: Result<Value, _> = admin
        .post(
            "/auth/v1/admin/roles",
            &json!({"name":"typo","policies":[{"effect":"allow","actions":["billing:ReadUsag"],"resources":["billing:usage"]}]}),
        )
        .await;
    assert!(typo.is_err());
    cloud.stop().await.unwrap();
}

/// Billing's clock for a test: starts where `at` says, moved with `set`.
fn test_clock(
    at: chrono::DateTime<chrono::Utc>,
) -> (
    minicloud_testkit::minicloud_billing::Clock,
    std::sync::Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>>,
) {
    let now = std::sync::Arc::new(std::sync::Mutex::new(at));
    let read = std::sync::Arc::clone(&now);
    (
        minicloud_testkit::minicloud_billing::Clock(std::sync::Arc::new(move || {
            *read.lock().unwrap()
        })),
        now,
    )
}

fn month_start(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike as _, TimeZone as _};
    chrono::Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .unwrap()
}

/// The threshold events the webhook got: `(budget, threshold)` in arrival order.
fn alerts(receiver: &super::bus::webhook::Receiver) -> Vec<(String, u64)> {
    receiver
        .successes()
        .iter()
        .filter_map(|(_, body)| {
            let event: Value = serde_json::from_str(body).ok()?;
            let data = if event["data"].is_object() {
                &event["data"]
            } else {
                &event
            };
            Some((
                data["budget"].as_str()?.to_owned(),
                data["threshold"].as_u64()?,
            ))
        })
        .collect()
}

async fn publish(cloud: &TestCloud, topic: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|_| json!({"specversion":"1.0","id":uuid(),"source":"/test","type":"t","data":{}}))
        .collect();
    let (status, body) = send(
        http()
            .post(format!(
                "{}/events/v1/topics/{topic}/events",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn uuid() -> String {
    format!("{:x}", rand_id())
}

fn rand_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u128::from(std::process::id()) << 64) | u128::from(NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_fire_once_each_forecast_first_and_caps_refuse_exactly_their_scope() {
    // A day into this month: the forecast is 31 (or so) times the month so far.
    let real_now = chrono::Utc::now();
    let (clock, now) = test_clock(month_start(real_now) + chrono::TimeDelta::days(1));
    let mut builder = TestCloud::builder();
    builder.billing.clock = Some(clock);
    let cloud = builder.start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    let admin = cloud.admin();
    let (url, receiver) = super::bus::webhook::start().await;
    let _: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"billing","target":{"webhook": url}}),
        )
        .await
        .unwrap();
    for topic in ["alerts-a", "alerts-f"] {
        let _: Value = admin
            .post("/events/v1/topics", &json!({"name": topic}))
            .await
            .unwrap();
    }
    // $0.00001: ten events at $0.000001.
    let budget = |name: &str, topic: &str, basis: &str| json!({"name":name,"amount":"0.00001","scope":{"resource":topic},"basis":basis,"thresholds":[50,80,100],"actions":["notify"]});
    for (name, topic, basis) in [
        ("actual", "alerts-a", "actual"),
        ("forecast", "alerts-f", "forecast"),
    ] {
        let (status, body) = send(
            http()
                .post(format!("{gateway}/billing/v1/budgets"))
                .bearer_auth(&key)
                .json(&budget(name, topic, basis)),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"]["fired"], json!([]));
    }

    // One event each (10% actual, ~300% forecast): only the forecast budget fires,
    // all three of its thresholds.
    publish(&cloud, "alerts-a", 1).await;
    publish(&cloud, "alerts-f", 1).await;
    eventually("the forecast budget's three alerts", async || {
        alerts(&receiver)
            .iter()
            .filter(|(b, _)| b == "forecast")
            .count()
            == 3
    })
    .await;
    assert!(
        alerts(&receiver).iter().all(|(b, _)| b == "forecast"),
        "{:?}",
        alerts(&receiver)
    );

    // Four more (50%): the actual budget's first threshold, once.
    publish(&cloud, "alerts-a", 4).await;
    eventually("the actual budget at 50%", async || {
        alerts(&receiver).contains(&("actual".to_owned(), 50))
    })
    .await;
    // Five more (100%): 80 and 100.
    publish(&cloud, "alerts-a", 5).await;
    eventually("the actual budget at 100%", async || {
        alerts(&receiver).contains(&("actual".to_owned(), 100))
    })
    .await;
    // Evaluations go on every second: nothing fires twice.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut fired = alerts(&receiver);
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("actual".to_owned(), 50),
            ("actual".to_owned(), 80),
            ("actual".to_owned(), 100),
            ("forecast".to_owned(), 50),
            ("forecast".to_owned(), 80),
            ("forecast".to_owned(), 100),
        ]
    );
    let (_, state) = send(
        http()
            .get(format!("{gateway}/billing/v1/budgets/actual"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(state["state"]["fired"], json!([50, 80, 100]));
    // A day into the month, the month-end forecast is about 30 times the cost so far.
    let (status, forecast) = send(
        http()
            .get(format!("{gateway}/billing/v1/forecast"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 200, "{forecast}");
    let so_far: f64 = forecast["month_to_date"].as_str().unwrap().parse().unwrap();
    let projected: f64 = forecast["forecast"].as_str().unwrap().parse().unwrap();
    let elapsed = forecast["elapsed"].as_f64().unwrap();
    assert!(so_far >= 0.000011, "{forecast}");
    assert!((projected - so_far / elapsed).abs() < 1e-9, "{forecast}");
    assert_eq!(state["state"]["actual"], "0.00001");
    assert_eq!(state["state"]["capped"], false, "notify only");

    // Caps: one for a function, one for a bucket, one for a key namespace.
    let echo = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    for name in ["capped-fn", "free-fn"] {
        deploy_ok(
            &cloud,
            json!({"name":name,"runtime":"provided"}),
            &zip_of(&[("bootstrap", &echo, 0o755)]),
        )
        .await;
    }
    for (name, scope, amount) in [
        ("fn-cap", json!({"resource":"capped-fn"}), "0.0000004"),
        (
            "bucket-cap",
            json!({"resource":"capped-bucket"}),
            "0.000005",
        ),
        ("kv-cap", json!({"resource":"capped_ns"}), "0.000000625"),
    ] {
        let (status, body) = send(
            http()
                .post(format!("{gateway}/billing/v1/budgets"))
                .bearer_auth(&key)
                .json(&json!({"name":name,"amount":amount,"scope":scope,"actions":["cap"]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let invoke = |name: &str| {
        http()
            .post(format!("{gateway}/functions/v1/{name}/invoke"))
            .bearer_auth(&key)
            .json(&json!({"n": 1}))
    };
    let lambda_invoke = |name: &str| {
        http()
            .post(format!("{gateway}/2015-03-31/functions/{name}/invocations"))
            .bearer_auth(&key)
            .json(&json!({"n": 1}))
    };
    // Two calls of $0.0000002 and their GB-seconds: over the amount.
    for _ in 0..2 {
        let (status, body) = send(invoke("capped-fn")).await;
        assert_eq!(status, 200, "{body}");
    }
    eventually("calls to the capped function refused", async || {
        send(invoke("capped-fn")).await.0 == 429
    })
    .await;
    let (status, body) = send(invoke("capped-fn")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("budget_exceeded")),
        "{body}"
    );
    let refused = lambda_invoke("capped-fn").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(
        refused.headers()["x-amzn-errortype"],
        "TooManyRequestsException"
    );
    assert_eq!(
        send(invoke("free-fn")).await.0,
        200,
        "another function runs"
    );

    // A bucket: one upload ($0.000005) uses it up; reads go on.
    let (status, body) = send(
        http()
            .post(format!("{gateway}/storage/v1/bucket"))
            .bearer_auth(&key)
            .json(&json!({"name":"capped-bucket"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let upload = |path: &str| {
        http()
            .post(format!("{gateway}/storage/v1/object/capped-bucket/{path}"))
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body("x")
    };
    assert_eq!(send(upload("first.txt")).await.0, 200);
    eventually("uploads to the capped bucket refused", async || {
        send(upload("later.txt")).await.0 == 402
    })
    .await;
    let (status, body) = send(upload("later.txt")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("budget_exceeded")),
        "{body}"
    );
    let read = http()
        .get(format!(
            "{gateway}/storage/v1/object/capped-bucket/first.txt"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200, "reads keep working");

    // A key namespace: one put uses it up; gets go on.
    let put = || {
        http()
            .put(format!("{gateway}/db/v1/kv/capped_ns/k"))
            .bearer_auth(&key)
            .json(&json!(1))
    };
    assert_eq!(send(put()).await.0, 200);
    eventually("puts to the capped namespace refused", async || {
        send(put()).await.0 == 402
    })
    .await;
    let (status, _) = send(
        http()
            .get(format!("{gateway}/db/v1/kv/capped_ns/k"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 200, "gets keep working");

    // A changed budget lifts its cap at once.
    let (status, body) = send(
        http()
            .put(format!("{gateway}/billing/v1/budgets/kv-cap"))
            .bearer_auth(&key)
            .json(&json!({"name":"kv-cap","amount":"1","scope":{"resource":"capped_ns"},"actions":["cap"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"]["capped"], false);
    eventually("puts to the namespace allowed again", async || {
        send(put()).await.0 == 200
    })
    .await;

    // The month rolls over: the function's cap lifts, its budget starts again.
    *now.lock().unwrap() = month_start(real_now) + chrono::TimeDelta::days(40);
    eventually("the capped function runs again next month", async || {
        send(invoke("capped-fn")).await.0 == 200
    })
    .await;
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn budget_writes_need_the_right_and_bad_budgets_are_refused() {
    let cloud = TestCloud::start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    let good = json!({"name":"ok","amount":"5","scope":"all"});
    // Anonymous and anon-key callers may neither write nor read budgets.
    for token in [None, Some(cloud.keys.anon_key.as_str())] {
        let with = |request: reqwest::RequestBuilder| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let (status, _) = send(with(
            http()
                .post(format!("{gateway}/billing/v1/budgets"))
                .json(&good),
        ))
        .await;
        assert_eq!(status, 403);
        let (status, _) = send(with(http().get(format!("{gateway}/billing/v1/budgets")))).await;
        assert_eq!(status, 403);
    }
    for bad in [
        json!({"name":"a","amount":"1e99","scope":"all"}),
        json!({"name":"a","amount":"-1","scope":"all"}),
        json!({"name":"a b","amount":"1","scope":"all"}),
        json!({"name":"a","amount":"1","scope":{"service":"compute"}}),
        json!({"name":"a","amount":"1","scope":{"owner":"x\u{0}y"}}),
        json!({"name":"a","amount":"1","scope":"all","thresholds":[0]}),
        json!({"name":"a","amount":"1","scope":"all","actions":["email"]}),
        json!({"name":"a","amount":"1","scope":"all","period":"year"}),
        json!({"name":"a","amount":"1","scope":"all","extra":1}),
        json!([1, 2]),
    ] {
        let (status, body) = send(
            http()
                .post(format!("{gateway}/billing/v1/budgets"))
                .bearer_auth(&key)
                .json(&bad),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = send(
        http()
            .post(format!("{gateway}/billing/v1/budgets"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"name\":"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send(
        http()
            .post(format!("{gateway}/billing/v1/budgets"))
            .bearer_auth(&key)
            .json(&good),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = send(
        http()
            .post(format!("{gateway}/billing/v1/budgets"))
            .bearer_auth(&key)
            .json(&good),
    )
    .await;
    assert_eq!(status, 409, "names are unique");
    let (status, _) = send(
        http()
            .put(format!("{gateway}/billing/v1/budgets/other"))
            .bearer_auth(&key)
            .json(&good),
    )
    .await;
    assert_eq!(status, 400, "the body names another budget");
    let (status, _) = send(
        http()
            .get(format!("{gateway}/billing/v1/budgets/nope"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        http()
            .delete(format!("{gateway}/billing/v1/budgets/ok"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = send(
        http()
            .delete(format!("{gateway}/billing/v1/budgets/ok"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 404);
    cloud.stop().await.unwrap();
}

/// Polls `meter` of `resource` until it reaches `at_least`; returns it.
async fn held(cloud: &TestCloud, meter: &str, resource: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = totals(cloud, &format!("resource={resource}"))
            .await
            .get(meter)
            .copied()
            .unwrap_or(0);
        if now >= at_least {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{meter} of {resource} stayed at {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_quantities_are_metered_for_every_second_they_are_held() {
    let started = Instant::now();
    let mut builder = TestCloud::builder();
    builder.metering.sample_interval_s = 1;
    let cloud = builder.start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    // Storage: 1,000 bytes in a bucket.
    let (status, body) = send(
        http()
            .post(format!("{gateway}/storage/v1/bucket"))
            .bearer_auth(&key)
            .json(&json!({"name":"kept"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = send(
        http()
            .post(format!("{gateway}/storage/v1/object/kept/a.bin"))
            .bearer_auth(&key)
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 1_000]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Documents: id "d1" (2 bytes) and the JSON text Postgres keeps,
    // `{"v": "x…x"}` (1,000 + 9 bytes).
    let (status, body) = send(
        http()
            .post(format!("{gateway}/db/v1/collections"))
            .bearer_auth(&key)
            .json(&json!({"name":"kept_docs"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = send(
        http()
            .put(format!("{gateway}/db/v1/collections/kept_docs/docs/d1"))
            .bearer_auth(&key)
            .json(&json!({"v": "x".repeat(1_000)})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    // Keys: "k" (1 byte) and `"a…a"` (500 + 2 bytes); an expired key counts nothing.
    for (path, value) in [
        ("kept_keys/k", json!("a".repeat(500))),
        ("kept_keys/gone?ttl=1", json!("b".repeat(10_000))),
    ] {
        let (status, body) = send(
            http()
                .put(format!("{gateway}/db/v1/kv/{path}"))
                .bearer_auth(&key)
                .json(&value),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // A function kept provisioned: 2 instances of 256 MB.
    let echo = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    let bundle = zip_of(&[("bootstrap", &echo, 0o755)]);
    deploy_ok(
        &cloud,
        json!({"name":"warm","runtime":"provided","memory_mb":256,"provisioned_concurrency":2}),
        &bundle,
    )
    .await;

    let bucket = held(&cloud, "storage.byte_seconds", "kept", 3_000).await;
    let docs = held(&cloud, "db.byte_seconds", "kept_docs", 3 * 1_011).await;
    let provisioned = held(
        &cloud,
        "function.provisioned_mb_ms",
        "warm",
        3 * 2 * 256 * 1_000,
    )
    .await;
    // The expired key stops counting within a second or two; whole seconds of the
    // live key from then on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = held(&cloud, "db.byte_seconds", "kept_keys", 1).await;
    let keys = held(&cloud, "db.byte_seconds", "kept_keys", before + 2 * 503).await;
    assert_eq!((keys - before) % 503, 0, "{before} → {keys}");
    let lived = started.elapsed().as_secs() + 1;
    // Whole seconds of exactly what was held, never more seconds than the cloud lived.
    for (what, quantity, per_second) in [
        ("bucket", bucket, 1_000),
        ("documents", docs, 1_011),
        ("provisioned", provisioned, 2 * 256 * 1_000),
    ] {
        assert_eq!(quantity % per_second, 0, "{what}: {quantity}");
        assert!(quantity <= per_second * lived, "{what}: {quantity}");
    }
    let cost = month_cost(&cloud).await;
    let line = |meter: &str| cost_line(&cost, meter);
    assert_eq!(line("storage.byte_seconds")["billing_unit"], "GB-month");
    assert_eq!(line("storage.byte_seconds")["unit_price"], "0.023");
    assert_eq!(line("db.byte_seconds")["billing_unit"], "GB-month");
    assert_eq!(line("db.byte_seconds")["unit_price"], "0.25");
    assert_eq!(
        line("function.provisioned_mb_ms")["billing_unit"],
        "GB-second"
    );
    assert_eq!(
        line("function.provisioned_mb_ms")["unit_price"],
        "0.0000041667"
    );
    // Provisioned concurrency off: no more provisioned seconds.
    let (status, body) = send(
        http()
            .put(format!("{gateway}/functions/v1/warm"))
            .bearer_auth(&key)
            .json(&json!({"name":"warm","runtime":"provided","memory_mb":256,
                "provisioned_concurrency":0,"code":{"zip_base64": b64(&bundle)}})),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stopped = held(&cloud, "function.provisioned_mb_ms", "warm", 1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        held(&cloud, "function.provisioned_mb_ms", "warm", 1).await,
        stopped
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_user_is_one_monthly_active_user_however_often_they_sign_in() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let ada = client
        .signup("ada@example.com", "password1234")
        .await
        .unwrap();
    for _ in 0..3 {
        client
            .sign_in("ada@example.com", "password1234")
            .await
            .unwrap();
    }
    client.refresh(&ada.refresh_token).await.unwrap();
    let bob = client
        .signup("bob@example.com", "password1234")
        .await
        .unwrap();
    // A wrong password is not activity.
    assert!(
        client
            .sign_in("cy@example.com", "password1234")
            .await
            .is_err()
    );
    let mau = |totals: &BTreeMap<String, u64>| {
        totals
            .get("auth.monthly_active_users")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        mau(&settled(&cloud, "auth.monthly_active_users", 2).await),
        2
    );
    let ada_owner = format!("owner=authenticated:{}", ada.user_id());
    assert_eq!(mau(&totals(&cloud, &ada_owner).await), 1);
    // Ada was last active in an earlier month: her next sign-in counts her again.
    use minicloud_testkit::sqlx;
    let pool = sqlx::PgPool::connect(&cloud.database_url).await.unwrap();
    sqlx::query("UPDATE auth.users SET last_active_month = date '2020-01-01' WHERE id = $1::uuid")
        .bind(ada.user_id())
        .execute(&pool)
        .await
        .unwrap();
    client
        .sign_in("ada@example.com", "password1234")
        .await
        .unwrap();
    client
        .sign_in("ada@example.com", "password1234")
        .await
        .unwrap();
    assert_eq!(
        mau(&settled(&cloud, "auth.monthly_active_users", 3).await),
        3
    );
    assert_eq!(mau(&totals(&cloud, &ada_owner).await), 2);
    let bob_owner = format!("owner=authenticated:{}", bob.user_id());
    assert_eq!(mau(&totals(&cloud, &bob_owner).await), 1);
    // Priced per user with Cognito's 10,000 free.
    let (status, cost) = send(
        http()
            .get(format!(
                "{}/billing/v1/cost?granularity=month&meter=auth.monthly_active_users",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key),
    )
    .await;
    assert_eq!(status, 200, "{cost}");
    assert_eq!(cost["lines"][0]["billing_unit"], "user");
    assert_eq!(cost["lines"][0]["unit_price"], "0.0055");
    assert_eq!(cost["total"], "0");
    pool.close().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_with_a_max_monthly_cost_is_capped_past_it() {
    let cloud = TestCloud::start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    let echo = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    let bundle = zip_of(&[("bootstrap", &echo, 0o755)]);
    let deploy = |cap: Value| {
        let mut body =
            json!({"name":"capfn","runtime":"provided","code":{"zip_base64": b64(&bundle)}});
        if !cap.is_null() {
            body["max_monthly_cost"] = cap;
        }
        http()
            .put(format!("{gateway}/functions/v1/capfn"))
            .bearer_auth(&key)
            .json(&body)
    };
    for bad in [
        json!("-1"),
        json!("abc"),
        json!(0),
        json!("1e3"),
        json!("99999999999"),
        json!("1.5.0"),
        json!(true),
    ] {
        let (status, body) = send(deploy(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = send(
        http()
            .get(format!("{gateway}/functions/v1/capfn"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 404, "a refused deploy saves nothing");

    // Two calls at $0.0000002 and their GB-seconds: over $0.0000004.
    let (status, body) = send(deploy(json!("0.0000004"))).await;
    assert!(status == 200 || status == 201, "{body}");
    assert_eq!(body["max_monthly_cost"], "0.0000004");
    let (status, budget) = send(
        http()
            .get(format!("{gateway}/billing/v1/budgets/function.capfn"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 200, "{budget}");
    assert_eq!(budget["actions"], json!(["notify", "cap"]));
    assert_eq!(budget["scope"], json!({"resource":"capfn"}));
    let invoke = || {
        http()
            .post(format!("{gateway}/functions/v1/capfn/invoke"))
            .bearer_auth(&key)
            .json(&json!({}))
    };
    for _ in 0..2 {
        assert_eq!(send(invoke()).await.0, 200);
    }
    eventually("calls past the cap refused", async || {
        send(invoke()).await.0 == 429
    })
    .await;
    let (_, body) = send(invoke()).await;
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");

    // A higher cap lifts it; no cap removes the budget.
    let (status, body) = send(deploy(json!(5))).await;
    assert_eq!(status, 200, "{body}");
    eventually("calls allowed under the higher cap", async || {
        send(invoke()).await.0 == 200
    })
    .await;
    let (status, _) = send(deploy(Value::Null)).await;
    assert_eq!(status, 200);
    let (status, _) = send(
        http()
            .get(format!("{gateway}/billing/v1/budgets/function.capfn"))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(status, 404, "no cap, no budget");
    cloud.stop().await.unwrap();
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
