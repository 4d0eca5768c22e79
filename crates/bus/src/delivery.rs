//! Delivery: one Redis consumer group per subscription; a worker per subscription
//! reads new entries (and claims entries another consumer left pending past the
//! visibility timeout, XAUTOCLAIM), filters by pattern, delivers with retries and
//! exponential backoff with jitter, and dead-letters what fails for good. An entry is
//! acknowledged only once delivered or dead-lettered: at-least-once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minicloud_proto::error::ApiError;
use rand::Rng as _;
use redis::Value as RedisValue;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Bus;
use crate::model::{SubscriptionOut, Target, subscription_columns};
use crate::pattern::Pattern;

impl Bus {
    /// Creates the subscription's consumer group if missing (`start`: `$` or `0`).
    pub(crate) async fn ensure_group(
        &self,
        topic: &str,
        group: &str,
        start: &str,
    ) -> Result<(), ApiError> {
        let mut redis = self.redis.clone();
        let created: Result<String, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(topic))
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut redis)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("BUSYGROUP") => Ok(()),
            Err(error) => Err(ApiError::unavailable("event store unavailable").with_source(error)),
        }
    }
}

pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) event: Value,
    only: Option<String>,
}

pub(crate) fn text(value: &RedisValue) -> Option<String> {
    match value {
        RedisValue::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[id, [field, value, …]], …]` as XREADGROUP (per stream) and XAUTOCLAIM return it.
pub(crate) fn entries(value: &RedisValue) -> Vec<Entry> {
    let RedisValue::Array(items) = value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let RedisValue::Array(pair) = item else {
            continue;
        };
        let (Some(id), Some(RedisValue::Array(fields))) =
            (pair.first().and_then(text), pair.get(1))
        else {
            continue;
        };
        let mut event = None;
        let mut only = None;
        for kv in fields.chunks(2) {
            match (
                kv.first().and_then(text).as_deref(),
                kv.get(1).and_then(text),
            ) {
                (Some("event"), Some(v)) => event = serde_json::from_str(&v).ok(),
                (Some("only"), Some(v)) => only = Some(v),
                _ => {}
            }
        }
        out.push(Entry {
            id,
            event: event.unwrap_or(Value::Null),
            only,
        });
    }
    out
}

/// `min × 2^(attempt-1)`, capped, with ±50 % jitter so retries of many events spread.
fn backoff(subscription: &SubscriptionOut, attempt: i32) -> Duration {
    let exponent = (attempt - 1).clamp(0, 30) as u32;
    let base = (subscription.min_backoff_ms as f64 * 2f64.powi(exponent as i32))
        .min(subscription.max_backoff_ms as f64);
    let jittered = base * rand::rng().random_range(0.5..1.5);
    Duration::from_millis(jittered.min(subscription.max_backoff_ms as f64).max(1.0) as u64)
}

fn event_age(event: &Value) -> Option<Duration> {
    let time = chrono::DateTime::parse_from_rfc3339(event.get("time")?.as_str()?).ok()?;
    (chrono::Utc::now() - time.with_timezone(&chrono::Utc))
        .to_std()
        .ok()
}

fn label(subscription: &SubscriptionOut) -> crate::metrics::SubscriptionLabel {
    crate::metrics::SubscriptionLabel {
        subscription: subscription.id.clone(),
    }
}

/// One attempt's span, a child of the trace the event carries (`traceparent`), so a
/// function or webhook continues the trace of the change that caused the event.
fn delivery_span(subscription: &SubscriptionOut, event: &Value, attempt: i32) -> tracing::Span {
    let span = tracing::info_span!(
        "deliver",
        otel.name = %format!("deliver {}", subscription.topic),
        otel.kind = "producer",
        minicloud.service = "bus",
        subscription = %subscription.id,
        event_id = %event.get("id").and_then(serde_json::Value::as_str).unwrap_or_default(),
        attempt,
    );
    if let Some(traceparent) = event.get("traceparent").and_then(Value::as_str) {
        minicloud_telemetry::trace_context::continue_from_traceparent(&span, traceparent);
    }
    span
}

/// Delivers one event once.
async fn deliver_once(
    bus: &Bus,
    target: &Target,
    secret: Option<&str>,
    event: &Value,
    attempt: i32,
) -> Result<(), String> {
    match target {
        Target::Topic(topic) => bus
            .publish(topic, std::slice::from_ref(event), "service")
            .await
            .map(|_| ())
            .map_err(|e| e.message),
        Target::Function(function) => {
            let Some(invoker) = &bus.invoker else {
                return Err("no invoker is configured for function targets".into());
            };
            let request = minicloud_proto::invoker::v1::InvokeRequest {
                function: function.clone(),
                payload: serde_json::to_vec(event).unwrap_or_default(),
                is_cloud_event: true,
            };
            let response = invoker
                .clone()
                .invoke(request)
                .await
                .map_err(|status| format!("invoking {function}: {}", status.message()))?
                .into_inner();
            if response.function_error.is_empty() {
                Ok(())
            } else {
                // Lambda's error JSON; its message is what a dead letter should show.
                let detail = serde_json::from_slice::<Value>(&response.payload)
                    .ok()
                    .and_then(|v| v["errorMessage"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                Err(format!(
                    "function {function} failed ({}): {detail}",
                    response.function_error
                ))
            }
        }
        Target::Webhook(url) => {
            crate::webhook::deliver(&bus.http, &bus.webhook_policy, url, secret, event, attempt)
                .await
        }
    }
}

/// Delivers with the subscription's retry policy; `Err` carries the last error
/// once attempts or age run out.
async fn deliver(
    bus: &Bus,
    subscription: &SubscriptionOut,
    target: &Target,
    secret: Option<&str>,
    event: &Value,
    cancel: &CancellationToken,
) -> Result<(), (i32, String)> {
    let mut attempt = 1;
    let owner = minicloud_metering::owner(&subscription.owner_role, subscription.owner.as_deref());
    loop {
        bus.meters.record(
            &subscription.topic,
            &owner,
            &[(minicloud_metering::Meter::EventsDelivered, 1)],
        );
        match deliver_once(bus, target, secret, event, attempt)
            .instrument(delivery_span(subscription, event, attempt))
            .await
        {
            Ok(()) => return Ok(()),
            Err(error) => {
                let too_old = event_age(event)
                    .is_some_and(|age| age > Duration::from_secs(subscription.max_age_s as u64));
                if attempt >= subscription.max_attempts || too_old {
                    return Err((attempt, error));
                }
                tracing::debug!(subscription = %subscription.id, attempt, %error, "retrying delivery");
                bus.metrics
                    .retried
                    .get_or_create(&label(subscription))
                    .inc();
                tokio::select! {
                    _ = cancel.cancelled() => return Err((attempt, "shutting down".into())),
                    _ = tokio::time::sleep(backoff(subscription, attempt)) => {}
                }
                attempt += 1;
            }
        }
    }
}

async fn dead_letter(
    bus: &Bus,
    subscription: &SubscriptionOut,
    event: &Value,
    attempts: i32,
    error: &str,
    to_topic: bool,
) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO dead_letters (subscription_id, event, attempts, last_error) VALUES ($1, $2, $3, $4)")
        .bind(&subscription.id)
        .bind(event)
        .bind(attempts)
        .bind(error)
        .execute(&bus.pool)
        .await
        .map_err(ApiError::internal)?;
    if let Some(topic) = subscription.dead_letter_topic.as_ref().filter(|_| to_topic) {
        let mut dead = event.clone();
        if let Value::Object(map) = &mut dead {
            map.insert(
                "deadletterreason".into(),
                Value::String(error.chars().take(500).collect()),
            );
            map.insert(
                "deadlettersubscription".into(),
                Value::String(subscription.id.clone()),
            );
        }
        bus.publish(topic, &[dead], "service").await?;
    }
    bus.metrics
        .dead_lettered
        .get_or_create(&label(subscription))
        .inc();
    tracing::warn!(subscription = %subscription.id, attempts, error, "event dead-lettered");
    Ok(())
}

async fn ack(bus: &Bus, subscription: &SubscriptionOut, id: &str) {
    let mut redis = bus.redis.clone();
    let acked: Result<i64, _> = redis::cmd("XACK")
        .arg(bus.stream_key(&subscription.topic))
        .arg(&subscription.id)
        .arg(id)
        .query_async(&mut redis)
        .await;
    if let Err(error) = acked {
        tracing::warn!(subscription = %subscription.id, id, %error, "acknowledging failed; the entry will be delivered again");
    }
}

/// Handles one entry to the end: skipped, delivered, or dead-lettered, then acked.
async fn handle(
    bus: Bus,
    subscription: Arc<SubscriptionOut>,
    pattern: Arc<Pattern>,
    target: Arc<Target>,
    secret: Option<Arc<str>>,
    entry: Entry,
    cancel: CancellationToken,
) {
    let mine = entry
        .only
        .as_deref()
        .is_none_or(|only| only == subscription.id);
    if mine && !entry.event.is_null() && pattern.matches(&entry.event) {
        // A document change reaches only an owner who may read the document.
        if subscription.topic == "db" {
            match crate::access::owner_may_read_document(&bus, &subscription, &entry.event).await {
                Ok(true) => {}
                Ok(false) => {
                    ack(&bus, &subscription, &entry.id).await;
                    return;
                }
                Err(error) => {
                    tracing::warn!(subscription = %subscription.id, %error, "could not check the owner's read right");
                    return;
                }
            }
        }
        // The owner's rights now, not when it subscribed.
        match crate::access::owner_may_deliver(&bus, &subscription, &target).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                // Recorded for the owner to read (and redrive once allowed again),
                // not published to a dead-letter topic it may no longer write.
                if let Err(failure) =
                    dead_letter(&bus, &subscription, &entry.event, 0, &reason, false).await
                {
                    tracing::warn!(%failure, "dead-lettering failed; the entry stays pending");
                    return;
                }
                ack(&bus, &subscription, &entry.id).await;
                return;
            }
            Err(error) => {
                // Left pending: claimed and checked again after the visibility timeout.
                tracing::warn!(subscription = %subscription.id, %error, "could not check the owner's rights");
                return;
            }
        }
        match deliver(
            &bus,
            &subscription,
            &target,
            secret.as_deref(),
            &entry.event,
            &cancel,
        )
        .await
        {
            Ok(()) => {
                let label = label(&subscription);
                bus.metrics.delivered.get_or_create(&label).inc();
                // Stream ids start with the append time in milliseconds.
                if let Some(appended) = entry
                    .id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse::<i64>().ok())
                {
                    let seconds =
                        (chrono::Utc::now().timestamp_millis() - appended).max(0) as f64 / 1000.0;
                    bus.metrics
                        .delivery_latency
                        .get_or_create(&label)
                        .observe(seconds);
                }
            }
            Err((_, error)) if cancel.is_cancelled() => {
                // Left pending: another worker claims it after the visibility timeout.
                tracing::debug!(%error, "delivery interrupted by shutdown");
                return;
            }
            Err((attempts, error)) => {
                if let Err(failure) =
                    dead_letter(&bus, &subscription, &entry.event, attempts, &error, true).await
                {
                    tracing::warn!(%failure, "dead-lettering failed; the entry stays pending");
                    return;
                }
            }
        }
    }
    ack(&bus, &subscription, &entry.id).await;
}

async fn worker(
    bus: Bus,
    subscription: SubscriptionOut,
    consumer: String,
    cancel: CancellationToken,
) {
    let Ok(pattern) = Pattern::parse(&subscription.pattern) else {
        return;
    };
    let Ok(target) = Target::parse(&subscription.target) else {
        return;
    };
    // Kept out of `SubscriptionOut`, which the API serialises.
    let secret: Option<Arc<str>> = loop {
        match sqlx::query_scalar::<_, Option<String>>(
            "SELECT webhook_secret FROM subscriptions WHERE id = $1",
        )
        .bind(&subscription.id)
        .fetch_optional(&bus.pool)
        .await
        {
            Ok(secret) => break secret.flatten().map(Arc::from),
            Err(error) => {
                tracing::warn!(subscription = %subscription.id, %error, "reading the signing secret failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    if bus
        .ensure_group(&subscription.topic, &subscription.id, "$")
        .await
        .is_err()
    {
        return;
    }
    let (pattern, target, subscription) =
        (Arc::new(pattern), Arc::new(target), Arc::new(subscription));
    let stream = bus.stream_key(&subscription.topic);
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(
        subscription.max_in_flight.max(1) as usize,
    ));
    // A connection of its own: the blocking read must not hold up anyone else.
    let mut redis = loop {
        match bus.blocking_connection().await {
            Ok(connection) => break connection,
            Err(error) => {
                tracing::warn!(subscription = %subscription.id, %error, "connecting the delivery worker failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut claim_from = "0-0".to_owned();
    // An idle subscription costs Redis a claim and a blocking read per wake-up, and a
    // deployed function has one (its async invocations): wake-ups are spaced by the
    // claim interval, not every half second — a claim can only find entries idle for
    // the visibility timeout, and new entries end the blocking read as they arrive.
    let claim_every = Duration::from_millis(
        (bus.config.visibility_timeout_s.max(1) * 1000 / 4).clamp(500, 5_000),
    );
    let mut next_claim = tokio::time::Instant::now();
    while !cancel.is_cancelled() {
        let mut batch = Vec::new();
        // Entries a crashed consumer left pending, then new ones.
        if tokio::time::Instant::now() >= next_claim {
            let claimed: Result<RedisValue, _> = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&subscription.id)
                .arg(&consumer)
                .arg(bus.config.visibility_timeout_s.max(1) * 1000)
                .arg(&claim_from)
                .arg("COUNT")
                .arg(16)
                .query_async(&mut redis)
                .await;
            if let Ok(RedisValue::Array(parts)) = &claimed {
                claim_from = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
                if let Some(list) = parts.get(1) {
                    batch.extend(entries(list));
                }
            }
            // More pending past the cursor: claim again at once.
            if claim_from == "0-0" {
                next_claim = tokio::time::Instant::now() + claim_every;
            }
        }
        let block_ms = next_claim
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis()
            .max(1) as u64;
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&subscription.id)
            .arg(&consumer)
            .arg("COUNT")
            .arg(subscription.max_in_flight.max(1) * 4)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        let read = command.query_async::<RedisValue>(&mut redis);
        // A deleted subscription or a shutdown does not wait out the block (the
        // connection is this worker's own: the abandoned answer is dropped with it).
        let read = tokio::select! {
            _ = cancel.cancelled() => break,
            read = read => read,
        };
        match read {
            Ok(RedisValue::Array(streams)) => {
                for stream_reply in streams {
                    if let RedisValue::Array(pair) = stream_reply
                        && let Some(list) = pair.get(1)
                    {
                        batch.extend(entries(list));
                    }
                }
            }
            Ok(RedisValue::Map(streams)) => {
                for (_, list) in streams {
                    batch.extend(entries(&list));
                }
            }
            Ok(_) => {}
            Err(error) => {
                if error.to_string().contains("NOGROUP") {
                    let _ = bus
                        .ensure_group(&subscription.topic, &subscription.id, "$")
                        .await;
                } else {
                    tracing::warn!(subscription = %subscription.id, %error, "reading the topic failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    // A multiplexed connection does not come back by itself once Redis
                    // has restarted (every later read failed with "broken pipe"): a
                    // new one, or the old one again when Redis is still away.
                    if let Ok(connection) = bus.blocking_connection().await {
                        redis = connection;
                    }
                }
                continue;
            }
        }
        for entry in batch {
            // A claimed entry this worker is still delivering is not started twice.
            if !in_flight
                .lock()
                .map(|mut set| set.insert(entry.id.clone()))
                .unwrap_or(false)
            {
                continue;
            }
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                break;
            };
            let (bus, subscription, pattern, target, secret, cancel, in_flight) = (
                bus.clone(),
                Arc::clone(&subscription),
                Arc::clone(&pattern),
                Arc::clone(&target),
                secret.clone(),
                cancel.clone(),
                Arc::clone(&in_flight),
            );
            let id = entry.id.clone();
            tokio::spawn(async move {
                handle(bus, subscription, pattern, target, secret, entry, cancel).await;
                if let Ok(mut set) = in_flight.lock() {
                    set.remove(&id);
                }
                drop(permit);
            });
        }
    }
}

/// Reads each subscription's consumer-group lag (Redis 7 reports it per group): one
/// `XINFO GROUPS` per topic, not per subscription — every deployed function has a
/// subscription on `functions`.
async fn update_lag(bus: &Bus, subscriptions: &[SubscriptionOut]) {
    let mut redis = bus.redis.clone();
    let mut by_topic: HashMap<&str, Vec<&SubscriptionOut>> = HashMap::new();
    for subscription in subscriptions {
        by_topic
            .entry(subscription.topic.as_str())
            .or_default()
            .push(subscription);
    }
    for (topic, subscriptions) in by_topic {
        let groups: Result<Vec<HashMap<String, RedisValue>>, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(bus.stream_key(topic))
            .query_async(&mut redis)
            .await;
        let Ok(groups) = groups else { continue };
        let lags: HashMap<String, i64> = groups
            .iter()
            .filter_map(
                |group| match (group.get("name").and_then(text), group.get("lag")) {
                    (Some(name), Some(RedisValue::Int(lag))) => Some((name, *lag)),
                    _ => None,
                },
            )
            .collect();
        for subscription in subscriptions {
            if let Some(lag) = lags.get(&subscription.id) {
                bus.metrics
                    .lag
                    .get_or_create(&label(subscription))
                    .set(*lag);
            }
        }
    }
}

/// Keeps one worker per subscription running, following creations and deletions.
pub(crate) fn spawn_manager(bus: Bus, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let consumer = format!("worker-{}", uuid::Uuid::new_v4().simple());
        let mut workers: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        loop {
            let subscriptions: Result<Vec<SubscriptionOut>, _> = sqlx::query_as(concat!(
                "SELECT ",
                subscription_columns!(),
                " FROM subscriptions"
            ))
            .fetch_all(&bus.pool)
            .await;
            match subscriptions {
                Ok(subscriptions) => {
                    update_lag(&bus, &subscriptions).await;
                    let live: HashSet<String> =
                        subscriptions.iter().map(|s| s.id.clone()).collect();
                    workers.retain(|id, (token, _)| {
                        let keep = live.contains(id);
                        if !keep {
                            token.cancel();
                        }
                        keep
                    });
                    for subscription in subscriptions {
                        if !workers.contains_key(&subscription.id) {
                            let token = cancel.child_token();
                            let id = subscription.id.clone();
                            let handle = tokio::spawn(worker(
                                bus.clone(),
                                subscription,
                                consumer.clone(),
                                token.clone(),
                            ));
                            workers.insert(id, (token, handle));
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "loading subscriptions failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        for (_, (token, handle)) in workers {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    })
}
