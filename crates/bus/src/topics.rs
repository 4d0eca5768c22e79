//! Topics and publishing onto their Redis streams.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::Caller;
use minicloud_authz::{Action, Resource};
use minicloud_proto::bus::v1::bus_service_server::BusService;
use minicloud_proto::bus::v1::cloud_event::Data;
use minicloud_proto::bus::v1::cloud_event_attribute_value::Attr;
use minicloud_proto::bus::v1::{
    CloudEvent, DeleteSubscriptionRequest, DeleteSubscriptionResponse, EnsureSubscriptionRequest,
    EnsureSubscriptionResponse, PublishRequest, PublishResponse,
};
use minicloud_proto::error::{ApiError, ErrorBody, Json};
use serde::{Deserialize, Serialize};

use sha2::{Digest as _, Sha256};

use crate::Bus;
use crate::model::check_topic_name;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct TopicOut {
    pub name: String,
    pub retention: i64,
    pub builtin: bool,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TopicList {
    pub topics: Vec<TopicOut>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicIn {
    pub name: String,
    #[serde(default)]
    pub retention: Option<i64>,
}

#[utoipa::path(post, path = "/events/v1/topics", tag = "topics", request_body = TopicIn, responses((status = 201, body = TopicOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn create(
    State(bus): State<Bus>,
    caller: Caller,
    Json(input): Json<TopicIn>,
) -> Result<(StatusCode, Json<TopicOut>), ApiError> {
    check_topic_name(&input.name)?;
    let retention = input.retention.unwrap_or(100_000);
    if !(1..=100_000_000).contains(&retention) {
        return Err(ApiError::invalid("retention must be 1 to 100000000 events"));
    }
    // Creating a topic is an admin act: topics have no resource policies of their own
    // (who may publish or subscribe is in identity policies).
    if !caller.is_service() {
        return Err(ApiError::forbidden("creating topics needs the service key"));
    }
    let topic = sqlx::query_as::<_, TopicOut>(
        "INSERT INTO topics (name, retention, owner) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING
         RETURNING name, retention, builtin, owner, created_at",
    )
    .bind(&input.name)
    .bind(retention)
    .bind(caller.owner())
    .fetch_optional(&bus.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::conflict(format!("topic {} already exists", input.name)))?;
    Ok((StatusCode::CREATED, Json(topic)))
}

#[utoipa::path(get, path = "/events/v1/topics", tag = "topics", responses((status = 200, body = TopicList)))]
pub(crate) async fn list(State(bus): State<Bus>) -> Result<Json<TopicList>, ApiError> {
    let topics = sqlx::query_as::<_, TopicOut>(
        "SELECT name, retention, builtin, owner, created_at FROM topics ORDER BY name LIMIT 1000",
    )
    .fetch_all(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(TopicList { topics }))
}

/// The structured-mode JSON form of a protobuf CloudEvent.
fn to_structured_json(event: &CloudEvent) -> Result<serde_json::Value, ApiError> {
    for (field, value) in [
        ("id", &event.id),
        ("source", &event.source),
        ("type", &event.r#type),
    ] {
        if value.is_empty() {
            return Err(ApiError::invalid(format!(
                "CloudEvent attribute {field} is required"
            )));
        }
    }
    if event.spec_version != "1.0" {
        return Err(ApiError::invalid("CloudEvent specversion must be \"1.0\""));
    }
    let mut json = serde_json::Map::new();
    json.insert("specversion".into(), "1.0".into());
    json.insert("id".into(), event.id.clone().into());
    json.insert("source".into(), event.source.clone().into());
    json.insert("type".into(), event.r#type.clone().into());
    for (name, value) in &event.attributes {
        let valid_name = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_name {
            return Err(ApiError::invalid(format!(
                "CloudEvent attribute name {name:?} must be 1-20 of a-z 0-9"
            )));
        }
        let value = match &value.attr {
            Some(Attr::CeBoolean(b)) => serde_json::Value::from(*b),
            Some(Attr::CeInteger(i)) => serde_json::Value::from(*i),
            Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s) | Attr::CeTimestamp(s)) => {
                s.clone().into()
            }
            Some(Attr::CeBytes(bytes)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into()
            }
            None => continue,
        };
        json.insert(name.clone(), value);
    }
    match &event.data {
        Some(Data::TextData(text)) => {
            let is_json = json
                .get("datacontenttype")
                .and_then(|v| v.as_str())
                .is_none_or(|ct| ct.starts_with("application/json") || ct.ends_with("+json"));
            let data = if is_json {
                serde_json::from_str(text)
                    .map_err(|_| ApiError::invalid("CloudEvent data is not valid JSON"))?
            } else {
                serde_json::Value::String(text.clone())
            };
            json.insert("data".into(), data);
        }
        Some(Data::BinaryData(bytes)) => {
            use base64::Engine as _;
            json.insert(
                "data_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        None => {}
    }
    Ok(serde_json::Value::Object(json))
}

impl Bus {
    /// Appends events to a topic's stream; returns their stream ids in order.
    /// Appends events to a topic's stream; returns their stream ids in order. An
    /// event whose `source` + `id` was published to this topic within the dedupe
    /// window is not stored again: its first stream id is returned.
    /// `publisher` is who the events are metered to.
    pub async fn publish(
        &self,
        topic: &str,
        events: &[serde_json::Value],
        publisher: &str,
    ) -> Result<Vec<String>, ApiError> {
        // Appends never trim: `crate::retention` does, sparing what a subscription
        // still needs.
        let builtin: bool = sqlx::query_scalar("SELECT builtin FROM topics WHERE name = $1")
            .bind(topic)
            .fetch_optional(&self.pool)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("topic {topic} not found")))?;
        let stream = self.stream_key(topic);
        // Check-and-append in one atomic script per event: two publishers of the same
        // event cannot both append it. A batch's scripts go in one pipelined round
        // trip, in order (EVAL, not EVALSHA: Redis caches the compiled script, and a
        // pipeline cannot recover from NOSCRIPT).
        const CHECK_AND_APPEND: &str = r"
            local existing = redis.call('GET', KEYS[2])
            if existing then return existing end
            local id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
            redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
            return id
            ";
        let mut pipe = redis::pipe();
        for event in events {
            let source = event["source"].as_str().unwrap_or_default();
            let id = event["id"].as_str().unwrap_or_default();
            let digest = Sha256::digest(format!("{}\n{}", source, id).as_bytes());
            let dedupe = format!(
                "{}dedupe:{topic}:{}",
                self.config.redis_prefix,
                hex::encode(digest)
            );
            pipe.cmd("EVAL")
                .arg(CHECK_AND_APPEND)
                .arg(2)
                .arg(&stream)
                .arg(&dedupe)
                .arg(event.to_string())
                .arg(self.config.dedupe_window_s);
        }
        let mut redis = self.redis.clone();
        let ids: Vec<String> = pipe
            .query_async(&mut redis)
            .await
            .map_err(|e| ApiError::unavailable("event store unavailable").with_source(e))?;
        self.metrics
            .published
            .get_or_create(&crate::metrics::TopicLabel {
                topic: topic.to_owned(),
            })
            .inc_by(ids.len() as u64);
        // Every event accepted counts, a deduplicated one too (EventBridge bills
        // each PutEvents entry), but not minicloud's own change events on the
        // built-in topics (`storage`, `db`: AWS's service events are free).
        if !(builtin && publisher == "service") {
            self.meters.record(
                topic,
                publisher,
                &[(minicloud_metering::Meter::EventsPublished, ids.len() as u64)],
            );
        }
        Ok(ids)
    }
}

pub(crate) struct BusGrpc(pub Bus);

#[tonic::async_trait]
impl BusService for BusGrpc {
    async fn publish(
        &self,
        request: tonic::Request<PublishRequest>,
    ) -> Result<tonic::Response<PublishResponse>, tonic::Status> {
        let caller = self.0.authz.grpc_caller(request.metadata()).await?;
        let request = request.into_inner();
        check_topic_name(&request.topic)?;
        if request.events.is_empty() || request.events.len() > 1000 {
            return Err(ApiError::invalid("publish 1 to 1000 events at a time").into());
        }
        let events = request
            .events
            .iter()
            .map(to_structured_json)
            .collect::<Result<Vec<_>, _>>()?;
        for event in &events {
            validate_event(event)?;
        }
        // The same check as the REST route.
        crate::access::authorize_publish(&self.0, &caller, &request.topic).await?;
        let publisher = minicloud_metering::owner_of(&caller);
        let ids = self.0.publish(&request.topic, &events, &publisher).await?;
        Ok(tonic::Response::new(PublishResponse { ids }))
    }

    async fn ensure_subscription(
        &self,
        request: tonic::Request<EnsureSubscriptionRequest>,
    ) -> Result<tonic::Response<EnsureSubscriptionResponse>, tonic::Status> {
        // Subscriptions for functions (triggers, async invokes) are set up by the
        // invoker, which authorised its own caller; nobody else calls this.
        self.0.authz.grpc_service_caller(request.metadata()).await?;
        let request = request.into_inner();
        if !request.id.starts_with("sub_") || request.id.len() > 128 {
            return Err(
                ApiError::invalid("subscription ids start with sub_ (at most 128 bytes)").into(),
            );
        }
        let input: crate::subscriptions::SubscriptionIn =
            serde_json::from_str(&request.subscription_json)
                .map_err(|e| ApiError::invalid(format!("subscription: {e}")))?;
        let owner = (!request.owner.is_empty()).then_some(request.owner);
        // The invoker's own triggers: delivered with the service role's rights.
        let subscription =
            crate::subscriptions::insert(&self.0, &request.id, input, owner, "service").await?;
        Ok(tonic::Response::new(EnsureSubscriptionResponse {
            id: subscription.subscription.id,
        }))
    }

    async fn delete_subscription(
        &self,
        request: tonic::Request<DeleteSubscriptionRequest>,
    ) -> Result<tonic::Response<DeleteSubscriptionResponse>, tonic::Status> {
        self.0.authz.grpc_service_caller(request.metadata()).await?;
        let deleted = crate::subscriptions::remove(&self.0, &request.into_inner().id).await?;
        Ok(tonic::Response::new(DeleteSubscriptionResponse { deleted }))
    }
}

/// Checks a structured-mode CloudEvent (JSON) and names the first problem.
pub(crate) fn validate_event(event: &serde_json::Value) -> Result<(), ApiError> {
    let serde_json::Value::Object(map) = event else {
        return Err(ApiError::invalid("a CloudEvent is a JSON object"));
    };
    for required in ["id", "source", "specversion", "type"] {
        match map.get(required) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "CloudEvent attribute {required} must be a non-empty string"
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "CloudEvent attribute {required} is required"
                )));
            }
        }
    }
    if map["specversion"] != "1.0" {
        return Err(ApiError::invalid("CloudEvent specversion must be \"1.0\""));
    }
    if map.contains_key("data") && map.contains_key("data_base64") {
        return Err(ApiError::invalid(
            "a CloudEvent has data or data_base64, not both",
        ));
    }
    if let Some(time) = map.get("time") {
        let valid = time
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
        if !valid {
            return Err(ApiError::invalid(
                "CloudEvent time must be an RFC 3339 timestamp",
            ));
        }
    }
    for (name, value) in map {
        if matches!(name.as_str(), "data" | "data_base64") {
            continue;
        }
        let valid_name = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_name {
            return Err(ApiError::invalid(format!(
                "CloudEvent attribute name {name:?} must be 1-20 of a-z 0-9"
            )));
        }
        if value.is_object() || value.is_array() || value.is_null() {
            return Err(ApiError::invalid(format!(
                "CloudEvent attribute {name} must be a string, number or boolean"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PublishOut {
    /// The stream id of each event, in order (an already published event's first id).
    pub ids: Vec<String>,
}

/// `POST /events/v1/topics/{t}/events`: one structured CloudEvent
/// (`application/cloudevents+json` or `application/json`) or a batch
/// (`application/cloudevents-batch+json`).
#[utoipa::path(post, path = "/events/v1/topics/{topic}/events", tag = "topics", params(("topic" = String, Path)),
    request_body(content = Object, description = "a structured CloudEvent, or a JSON array of them with Content-Type application/cloudevents-batch+json"),
    responses((status = 200, body = PublishOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn publish_rest(
    State(bus): State<Bus>,
    caller: Caller,
    minicloud_proto::error::Path(topic): minicloud_proto::error::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<PublishOut>, ApiError> {
    check_topic_name(&topic)?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    let events = match content_type.as_str() {
        "application/cloudevents-batch+json" => match parsed {
            serde_json::Value::Array(events) => events,
            _ => return Err(ApiError::invalid("a batch is a JSON array of CloudEvents")),
        },
        "application/cloudevents+json" | "application/json" => vec![parsed],
        other => {
            return Err(ApiError::new(
                minicloud_proto::error::ErrorCode::UnsupportedMediaType,
                format!(
                    "content type {other:?}: use application/cloudevents+json, application/json or application/cloudevents-batch+json"
                ),
            ));
        }
    };
    if events.is_empty() || events.len() > 1000 {
        return Err(ApiError::invalid("publish 1 to 1000 events at a time"));
    }
    for (i, event) in events.iter().enumerate() {
        validate_event(event).map_err(|e| {
            if events.len() > 1 {
                ApiError::invalid(format!("event {i}: {}", e.message))
            } else {
                e
            }
        })?;
    }
    crate::access::authorize_publish(&bus, &caller, &topic).await?;
    let publisher = minicloud_metering::owner_of(&caller);
    Ok(Json(PublishOut {
        ids: bus.publish(&topic, &events, &publisher).await?,
    }))
}

/// The entries of an `XREAD` reply (RESP2 arrays or RESP3 maps).
fn read_reply(value: &redis::Value) -> Vec<crate::delivery::Entry> {
    let mut out = Vec::new();
    match value {
        redis::Value::Array(streams) => {
            for stream in streams {
                if let redis::Value::Array(pair) = stream
                    && let Some(list) = pair.get(1)
                {
                    out.extend(crate::delivery::entries(list));
                }
            }
        }
        redis::Value::Map(streams) => {
            for (_, list) in streams {
                out.extend(crate::delivery::entries(list));
            }
        }
        _ => {}
    }
    out
}

/// The longest `pattern` a tail takes (a query string).
const MAX_TAIL_PATTERN_BYTES: usize = 4096;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TailQuery {
    /// Only events matching this event pattern (JSON, the subscriptions' pattern language).
    pub pattern: Option<String>,
}

/// `GET /events/v1/topics/{t}/tail`: the topic's new events as server-sent events
/// (`event: cloudevent`, `id:` the stream id, `data:` the structured CloudEvent), for
/// debugging. It follows the topic until the client goes away.
#[utoipa::path(get, path = "/events/v1/topics/{topic}/tail", tag = "topics", params(("topic" = String, Path), TailQuery),
    responses((status = 200, description = "text/event-stream of CloudEvents"), (status = 400, description = "invalid pattern", body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn tail(
    State(bus): State<Bus>,
    caller: Caller,
    minicloud_proto::error::Path(topic): minicloud_proto::error::Path<String>,
    minicloud_proto::error::Query(query): minicloud_proto::error::Query<TailQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    use axum::response::sse::{Event, KeepAlive, Sse};

    check_topic_name(&topic)?;
    let pattern = match query.pattern.as_deref() {
        None | Some("") => crate::pattern::Pattern::parse(&serde_json::Value::Null),
        Some(text) if text.len() > MAX_TAIL_PATTERN_BYTES => {
            return Err(ApiError::invalid(format!(
                "pattern: at most {MAX_TAIL_PATTERN_BYTES} bytes"
            )));
        }
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| ApiError::invalid(format!("pattern is not JSON: {e}")))?;
            crate::pattern::Pattern::parse(&value)
        }
    }
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM topics WHERE name = $1)")
        .bind(&topic)
        .fetch_one(&bus.pool)
        .await
        .map_err(ApiError::internal)?;
    if !exists {
        return Err(ApiError::not_found(format!("topic {topic} not found")));
    }
    bus.authz
        .authorize_on(&caller, Action::EventsSubscribe, Resource::Topic(&topic))
        .await?;
    // Its own connection: the blocking read must not stall other commands.
    let connection = bus
        .blocking_connection()
        .await
        .map_err(|e| ApiError::unavailable("event store unavailable").with_source(e))?;
    let key = bus.stream_key(&topic);
    let state = (
        connection,
        "$".to_owned(),
        key,
        std::collections::VecDeque::<Event>::new(),
    );
    let events = futures::stream::unfold(
        (state, pattern),
        |((mut connection, mut last, key, mut queue), pattern)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        ((connection, last, key, queue), pattern),
                    ));
                }
                let reply: Result<redis::Value, _> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(10_000)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last)
                    .query_async(&mut connection)
                    .await;
                match reply {
                    Ok(value) => {
                        for entry in read_reply(&value) {
                            last = entry.id.clone();
                            if pattern.matches(&entry.event) {
                                queue.push_back(
                                    Event::default()
                                        .event("cloudevent")
                                        .id(entry.id)
                                        .data(entry.event.to_string()),
                                );
                            }
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "tail ended");
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
