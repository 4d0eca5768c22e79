//! Subscriptions: a topic, a pattern, a target (a webhook or another topic), a retry
//! policy and a dead-letter topic; REST to manage them and their dead letters.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Bus;
use crate::model::{SubscriptionOut, Target, subscription_columns};
use crate::pattern::Pattern;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryPolicy {
    #[serde(default = "default_attempts")]
    pub max_attempts: i32,
    #[serde(default = "default_min_backoff")]
    pub min_backoff_ms: i64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: i64,
    #[serde(default = "default_max_age")]
    pub max_age_s: i64,
}

fn default_attempts() -> i32 {
    5
}
fn default_min_backoff() -> i64 {
    100
}
fn default_max_backoff() -> i64 {
    60_000
}
fn default_max_age() -> i64 {
    86_400
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_attempts(),
            min_backoff_ms: default_min_backoff(),
            max_backoff_ms: default_max_backoff(),
            max_age_s: default_max_age(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionIn {
    pub topic: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub pattern: Value,
    /// `{"webhook": "http://…"}` or `{"topic": "name"}`.
    #[schema(value_type = Object)]
    pub target: Value,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Deliveries in flight at once; 1 keeps the topic's order.
    #[serde(default)]
    pub max_in_flight: Option<i32>,
}

/// A new subscription, with its webhook signing secret: shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionCreated {
    #[serde(flatten)]
    pub subscription: SubscriptionOut,
    /// `whsec_…`, for verifying deliveries (Standard Webhooks); webhook targets only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

fn check_retry(retry: &RetryPolicy) -> Result<(), ApiError> {
    if !(1..=100).contains(&retry.max_attempts) {
        return Err(ApiError::invalid("retry.max_attempts must be 1 to 100"));
    }
    if retry.min_backoff_ms < 1
        || retry.max_backoff_ms < retry.min_backoff_ms
        || retry.max_backoff_ms > 3_600_000
    {
        return Err(ApiError::invalid(
            "retry backoff: 1 ms ≤ min_backoff_ms ≤ max_backoff_ms ≤ 1 h",
        ));
    }
    if !(1..=7 * 86_400).contains(&retry.max_age_s) {
        return Err(ApiError::invalid("retry.max_age_s must be 1 s to 7 days"));
    }
    Ok(())
}

async fn topic_exists(bus: &Bus, topic: &str) -> Result<bool, ApiError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM topics WHERE name = $1)")
        .bind(topic)
        .fetch_one(&bus.pool)
        .await
        .map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/events/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionIn,
    responses((status = 201, body = SubscriptionCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create(
    State(bus): State<Bus>,
    caller: Caller,
    Json(input): Json<SubscriptionIn>,
) -> Result<(StatusCode, Json<SubscriptionCreated>), ApiError> {
    crate::model::check_topic_name(&input.topic)?;
    let target = Target::parse(&input.target)?;
    crate::access::authorize_subscription(
        &bus,
        &caller,
        &input.topic,
        &target,
        input.dead_letter_topic.as_deref(),
    )
    .await?;
    let id = format!("sub_{}", uuid::Uuid::now_v7().simple());
    let owner = crate::access::owner_of(&caller);
    let subscription = insert(&bus, &id, input, owner, caller.role.name()).await?;
    Ok((StatusCode::CREATED, Json(subscription)))
}

/// Validates and stores a subscription under `id`; an existing subscription with
/// that id is kept as it is (so services can ensure theirs idempotently). The
/// caller has authorised `owner` ([`crate::access::authorize_subscription`]).
pub(crate) async fn insert(
    bus: &Bus,
    id: &str,
    input: SubscriptionIn,
    owner: Option<String>,
    owner_role: &str,
) -> Result<SubscriptionCreated, ApiError> {
    crate::model::check_topic_name(&input.topic)?;
    Pattern::parse(&input.pattern).map_err(|e| ApiError::invalid(e.to_string()))?;
    let target = Target::parse(&input.target)?;
    let webhook_secret = match &target {
        Target::Webhook(url) => {
            crate::webhook::check_target(&bus.webhook_policy, url)?;
            Some(crate::webhook::new_secret())
        }
        _ => None,
    };
    let retry = input.retry.unwrap_or_default();
    check_retry(&retry)?;
    let max_in_flight = input.max_in_flight.unwrap_or(1);
    if !(1..=64).contains(&max_in_flight) {
        return Err(ApiError::invalid("max_in_flight must be 1 to 64"));
    }
    for topic in [
        Some(&input.topic),
        input.dead_letter_topic.as_ref(),
        if let Target::Topic(t) = &target {
            Some(t)
        } else {
            None
        },
    ]
    .into_iter()
    .flatten()
    {
        if !topic_exists(bus, topic).await? {
            return Err(ApiError::not_found(format!("topic {topic} not found")));
        }
    }
    let inserted = sqlx::query_as::<_, SubscriptionOut>(concat!(
        "INSERT INTO subscriptions (id, topic, pattern, target, max_attempts, min_backoff_ms, max_backoff_ms, max_age_s, dead_letter_topic, max_in_flight, owner, owner_role, webhook_secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING RETURNING ",
        subscription_columns!()
    ))
    .bind(id)
    .bind(&input.topic)
    .bind(if input.pattern.is_null() { serde_json::json!({}) } else { input.pattern })
    .bind(&input.target)
    .bind(retry.max_attempts)
    .bind(retry.min_backoff_ms)
    .bind(retry.max_backoff_ms)
    .bind(retry.max_age_s)
    .bind(&input.dead_letter_topic)
    .bind(max_in_flight)
    .bind(owner)
    .bind(owner_role)
    .bind(&webhook_secret)
    .fetch_optional(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    // An existing subscription (ensured again) keeps its secret, not shown again.
    let (subscription, webhook_secret) = match inserted {
        Some(subscription) => (subscription, webhook_secret),
        None => (
            sqlx::query_as::<_, SubscriptionOut>(concat!(
                "SELECT ",
                subscription_columns!(),
                " FROM subscriptions WHERE id = $1"
            ))
            .bind(id)
            .fetch_one(&bus.pool)
            .await
            .map_err(ApiError::internal)?,
            None,
        ),
    };
    // The consumer group starts at the end of the stream: a new subscription gets
    // the events published from now on.
    bus.ensure_group(&subscription.topic, &subscription.id, "$")
        .await?;
    Ok(SubscriptionCreated {
        subscription,
        webhook_secret,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionOut>,
}

/// The caller's own subscriptions (all of them for the service role).
#[utoipa::path(get, path = "/events/v1/subscriptions", tag = "subscriptions", responses((status = 200, body = SubscriptionList)))]
pub(crate) async fn list(
    State(bus): State<Bus>,
    caller: Caller,
) -> Result<Json<SubscriptionList>, ApiError> {
    let owner = crate::access::owner_of(&caller);
    if !caller.is_service() && owner.is_none() {
        return Ok(Json(SubscriptionList {
            subscriptions: Vec::new(),
        }));
    }
    let subscriptions = sqlx::query_as::<_, SubscriptionOut>(concat!(
        "SELECT ",
        subscription_columns!(),
        " FROM subscriptions WHERE $1::text IS NULL OR owner = $1 ORDER BY id LIMIT 1000"
    ))
    .bind(owner.filter(|_| !caller.is_service()))
    .fetch_all(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(SubscriptionList { subscriptions }))
}

pub(crate) async fn load(bus: &Bus, id: &str) -> Result<SubscriptionOut, ApiError> {
    sqlx::query_as::<_, SubscriptionOut>(concat!(
        "SELECT ",
        subscription_columns!(),
        " FROM subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&bus.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found("subscription not found"))
}

/// The subscription, if the caller manages it ([`crate::access::manages`]).
async fn authorized(bus: &Bus, caller: &Caller, id: &str) -> Result<SubscriptionOut, ApiError> {
    let subscription = load(bus, id).await?;
    crate::access::manages(caller, &subscription)?;
    Ok(subscription)
}

#[utoipa::path(get, path = "/events/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), responses((status = 200, body = SubscriptionOut), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(bus): State<Bus>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionOut>, ApiError> {
    Ok(Json(authorized(&bus, &caller, &id).await?))
}

/// How a subscription's deliveries stand. `lag`, `pending` and the dead letters are
/// shared state (Redis, Postgres), true for every replica; the counters are this
/// process's since it started (each replica counts what its workers delivered).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionStats {
    /// Events on the topic not yet handed to this subscription.
    pub lag: Option<i64>,
    /// Handed out and not yet acknowledged (being delivered or awaiting a retry).
    pub pending: Option<i64>,
    pub dead_letters: i64,
    pub last_dead_letter_at: Option<DateTime<Utc>>,
    pub delivered_since_start: u64,
    pub retried_since_start: u64,
    pub dead_lettered_since_start: u64,
}

#[utoipa::path(get, path = "/events/v1/subscriptions/{id}/stats", tag = "subscriptions", params(("id" = String, Path)), responses((status = 200, body = SubscriptionStats), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn stats(
    State(bus): State<Bus>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionStats>, ApiError> {
    let subscription = authorized(&bus, &caller, &id).await?;
    let (dead_letters, last_dead_letter_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), max(created_at) FROM dead_letters WHERE subscription_id = $1",
    )
    .bind(&id)
    .fetch_one(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut redis = bus.redis.clone();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(bus.stream_key(&subscription.topic))
        .query_async(&mut redis)
        .await
        // No stream yet (nothing published): no group to report on.
        .unwrap_or_default();
    let group = groups
        .iter()
        .find(|g| g.get("name").and_then(crate::delivery::text).as_deref() == Some(id.as_str()));
    let int = |name: &str| match group.and_then(|g| g.get(name)) {
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    let label = crate::metrics::SubscriptionLabel {
        subscription: id.clone(),
    };
    Ok(Json(SubscriptionStats {
        lag: int("lag"),
        pending: int("pending"),
        dead_letters,
        last_dead_letter_at,
        delivered_since_start: bus.metrics.delivered.get_or_create(&label).get(),
        retried_since_start: bus.metrics.retried.get_or_create(&label).get(),
        dead_lettered_since_start: bus.metrics.dead_lettered.get_or_create(&label).get(),
    }))
}

#[utoipa::path(delete, path = "/events/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(bus): State<Bus>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorized(&bus, &caller, &id).await?;
    remove(&bus, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a subscription and its consumer group; false if there was none.
pub(crate) async fn remove(bus: &Bus, id: &str) -> Result<bool, ApiError> {
    let topic: Option<String> =
        sqlx::query_scalar("DELETE FROM subscriptions WHERE id = $1 RETURNING topic")
            .bind(id)
            .fetch_optional(&bus.pool)
            .await
            .map_err(ApiError::internal)?;
    let Some(topic) = topic else {
        return Ok(false);
    };
    let mut redis = bus.redis.clone();
    let _: Result<i64, _> = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(bus.stream_key(&topic))
        .arg(id)
        .query_async(&mut redis)
        .await;
    Ok(true)
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct DeadLetterOut {
    pub id: i64,
    #[schema(value_type = Object)]
    pub event: Value,
    pub attempts: i32,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterOut>,
}

#[utoipa::path(get, path = "/events/v1/subscriptions/{id}/dead-letters", tag = "subscriptions", params(("id" = String, Path)), responses((status = 200, body = DeadLetterList)))]
pub(crate) async fn dead_letters(
    State(bus): State<Bus>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterList>, ApiError> {
    authorized(&bus, &caller, &id).await?;
    let dead_letters = sqlx::query_as::<_, DeadLetterOut>(
        "SELECT id, event, attempts, last_error, created_at FROM dead_letters WHERE subscription_id = $1 ORDER BY id LIMIT 1000",
    )
    .bind(&id)
    .fetch_all(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(DeadLetterList { dead_letters }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RedriveOut {
    pub redriven: usize,
}

/// Sends a subscription's dead letters again, to that subscription only, with a
/// fresh retry budget.
#[utoipa::path(post, path = "/events/v1/subscriptions/{id}/dead-letters/redrive", tag = "subscriptions", params(("id" = String, Path)), responses((status = 200, body = RedriveOut)))]
pub(crate) async fn redrive(
    State(bus): State<Bus>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RedriveOut>, ApiError> {
    let subscription = authorized(&bus, &caller, &id).await?;
    let mut tx = bus.pool.begin().await.map_err(ApiError::internal)?;
    let letters: Vec<(i64, Value)> =
        sqlx::query_as("DELETE FROM dead_letters WHERE subscription_id = $1 RETURNING id, event")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
    let stream = bus.stream_key(&subscription.topic);
    let mut redis = bus.redis.clone();
    let mut pipe = redis::pipe();
    for (_, event) in &letters {
        // `only` keeps other subscriptions of the topic from seeing it again.
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("event")
            .arg(event.to_string())
            .arg("only")
            .arg(&id);
    }
    if !letters.is_empty() {
        pipe.query_async::<Vec<String>>(&mut redis)
            .await
            .map_err(|e| ApiError::unavailable("event store unavailable").with_source(e))?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(Json(RedriveOut {
        redriven: letters.len(),
    }))
}
