//! Issue 6's bus benchmark, each figure beside its floor from the same run:
//! - publish → webhook delivery latency at low load (one event at a time), against a
//!   bare XADD → XREADGROUP → XACK round on the same Redis;
//! - sustained events/s from publishing (batches through the gateway) to webhook
//!   deliveries, against a bare loop of XADDs read back with XREADGROUP and acked.
//!
//! Writes `target/bench-bus.json` for `scripts/bench_report.py`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use minicloud_bench::sequential_summary;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bare loop: one connection appends, another reads as a consumer group and acks.
async fn bare_redis(latency_rounds: usize, total: usize) -> anyhow::Result<(Value, Value)> {
    let client = redis::Client::open(minicloud_testkit::test_redis_url())?;
    let mut writer = client.get_multiplexed_async_connection().await?;
    let mut reader = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;
    let key = format!("bench_bus_{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut writer)
        .await?;
    let event =
        json!({"specversion":"1.0","id":"x","source":"/bench","type":"bench","data":{"n":1}})
            .to_string();

    // Read-and-ack loop; reports how many entries each round acked.
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel::<usize>();
    let consumer_key = key.clone();
    let consumer = tokio::spawn(async move {
        loop {
            let reply: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(500)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&consumer_key)
                .arg(">")
                .query_async(&mut reader)
                .await?;
            let ids = stream_ids(&reply);
            if ids.is_empty() {
                continue;
            }
            let _: i64 = redis::cmd("XACK")
                .arg(&consumer_key)
                .arg("g")
                .arg(&ids)
                .query_async(&mut reader)
                .await?;
            if acked_tx.send(ids.len()).is_err() {
                return anyhow::Ok(());
            }
        }
    });

    let mut rounds = Vec::new();
    for _ in 0..latency_rounds {
        let started = Instant::now();
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event")
            .arg(&event)
            .query_async(&mut writer)
            .await?;
        let mut got = 0;
        while got < 1 {
            got += acked_rx.recv().await.unwrap_or(1);
        }
        rounds.push(started.elapsed());
    }
    let latency = sequential_summary(rounds);

    let started = Instant::now();
    let producer_key = key.clone();
    let producer_event = event.clone();
    let producer = tokio::spawn(async move {
        for _ in 0..total {
            let _: String = redis::cmd("XADD")
                .arg(&producer_key)
                .arg("*")
                .arg("event")
                .arg(&producer_event)
                .query_async(&mut writer)
                .await?;
        }
        anyhow::Ok(())
    });
    let mut got = 0;
    while got < total {
        got += acked_rx.recv().await.unwrap_or(0);
    }
    let wall = started.elapsed();
    producer.await??;

    // The same shape as the bus's publishers: 4 of them, 100 XADDs per round trip.
    let started = Instant::now();
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (client, key, event) = (client.clone(), key.clone(), event.clone());
            tokio::spawn(async move {
                let mut connection = client.get_multiplexed_async_connection().await?;
                for _ in 0..total / 400 {
                    let mut pipe = redis::pipe();
                    for _ in 0..100 {
                        pipe.cmd("XADD").arg(&key).arg("*").arg("event").arg(&event);
                    }
                    let _: Vec<String> = pipe.query_async(&mut connection).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut got = 0;
    while got < total / 400 * 400 {
        got += acked_rx.recv().await.unwrap_or(0);
    }
    let batched_wall = started.elapsed();
    for producer in producers {
        producer.await??;
    }
    consumer.abort();
    let mut cleanup = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut cleanup)
        .await?;
    Ok((
        latency,
        json!({
            "events_per_s": total as f64 / wall.as_secs_f64(),
            "batched_events_per_s": (total / 400 * 400) as f64 / batched_wall.as_secs_f64(),
            "events": total,
        }),
    ))
}

fn stream_ids(reply: &redis::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let redis::Value::Array(streams) = reply {
        for stream in streams {
            if let redis::Value::Array(pair) = stream
                && let Some(redis::Value::Array(entries)) = pair.get(1)
            {
                for entry in entries {
                    if let redis::Value::Array(fields) = entry
                        && let Some(redis::Value::BulkString(id)) = fields.first()
                    {
                        out.push(String::from_utf8_lossy(id).into_owned());
                    }
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct Received {
    at: HashMap<String, Instant>,
    waiters: Vec<(String, tokio::sync::oneshot::Sender<Instant>)>,
    total: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = count("BENCH_ROUNDS", 500);
    let total = count("BENCH_EVENTS", 10_000);

    let (bare_latency, bare_throughput) = bare_redis(rounds, total).await?;
    println!("bare redis: latency {bare_latency}, throughput {bare_throughput}");

    // The webhook: records when each event id arrived.
    let received = Arc::new(Mutex::new(Received::default()));
    let hook_state = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let state = Arc::clone(&hook_state);
            async move {
                let now = Instant::now();
                let id = headers
                    .get("ce-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.total += 1;
                if let Some(index) = state.waiters.iter().position(|(w, _)| *w == id) {
                    let (_, sender) = state.waiters.swap_remove(index);
                    let _ = sender.send(now);
                } else {
                    state.at.insert(id, now);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cloud = TestCloud::start().await?;
    let admin = cloud.admin();
    let base = cloud.gateway_url().to_owned();
    for (topic, in_flight) in [("bench_latency", 1), ("bench_load", 64)] {
        admin
            .post::<_, Value>(
                "/events/v1/topics",
                &json!({"name": topic, "retention": 1_000_000}),
            )
            .await?;
        admin
            .post::<_, Value>(
                "/events/v1/subscriptions",
                &json!({"topic": topic, "target": {"webhook": hook}, "max_in_flight": in_flight}),
            )
            .await?;
    }
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let token = cloud.keys.service_key.clone();

    // Latency: one event at a time, publish → the webhook has it.
    let mut samples = Vec::new();
    for i in 0..rounds + 20 {
        let id = format!("lat-{i}");
        let (sender, arrived) = tokio::sync::oneshot::channel();
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .push((id.clone(), sender));
        let started = Instant::now();
        let response = http
            .post(format!("{base}/events/v1/topics/bench_latency/events"))
            .bearer_auth(&token)
            .json(&json!({"specversion":"1.0","id":id,"source":"/bench","type":"bench","data":{"n":i}}))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        let at = tokio::time::timeout(Duration::from_secs(10), arrived).await??;
        if i >= 20 {
            samples.push(at - started);
        }
    }
    let latency = sequential_summary(samples);
    println!("publish → webhook: {latency}");

    // Throughput: batches of 100 from 4 publishers; done when the webhook has all.
    let before = received.lock().unwrap_or_else(|e| e.into_inner()).total;
    let started = Instant::now();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                for batch in 0..total / 400 {
                    let events: Vec<Value> = (0..100)
                        .map(|i| json!({"specversion":"1.0","id":format!("load-{p}-{batch}-{i}"),"source":"/bench","type":"bench","data":{"n":i}}))
                        .collect();
                    let response = http
                        .post(format!("{base}/events/v1/topics/bench_load/events"))
                        .bearer_auth(&token)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(serde_json::to_vec(&events)?)
                        .send()
                        .await?;
                    anyhow::ensure!(response.status().is_success(), "{}", response.status());
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await??;
    }
    let published = started.elapsed();
    let expected = before + total / 400 * 400;
    while received.lock().unwrap_or_else(|e| e.into_inner()).total < expected {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = started.elapsed();
    let delivered = total / 400 * 400;
    let throughput = json!({
        "events_per_s": delivered as f64 / wall.as_secs_f64(),
        "published_per_s": delivered as f64 / published.as_secs_f64(),
        "events": delivered,
    });
    println!("publish → webhook, sustained: {throughput}");

    let results = json!({
        "bare": {"latency": bare_latency, "throughput": bare_throughput},
        "bus": {"latency": latency, "throughput": throughput, "max_in_flight": 64},
        "rounds": rounds,
    });
    std::fs::write(
        "target/bench-bus.json",
        serde_json::to_string_pretty(&results)?,
    )?;
    cloud.stop().await?;
    Ok(())
}
