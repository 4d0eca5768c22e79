//! The transactional outbox every event producer uses (docs/design.md §5.4): an event is
//! written to the producer's `outbox` table in the same transaction as the data
//! change, and a relay publishes committed events to the bus over gRPC and marks
//! them sent. So an event is published if and only if its change committed; a crash
//! between publish and mark publishes it again with the same id (the bus dedupes on
//! `source` + `id`), never loses it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use minicloud_proto::bus::v1::bus_service_client::BusServiceClient;
use minicloud_proto::bus::v1::cloud_event::Data;
use minicloud_proto::bus::v1::cloud_event_attribute_value::Attr;
use minicloud_proto::bus::v1::{CloudEvent, CloudEventAttributeValue, PublishRequest};
use minicloud_telemetry::grpc_client::{ServiceCredential, TracedChannel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing to the bus: {0}")]
    Publish(#[from] tonic::Status),
    #[error("stored event {id} is not a CloudEvent: {reason}")]
    Corrupt { id: i64, reason: String },
    #[error("the change's event is {bytes} bytes, over the limit of {MAX_EVENT_BYTES}")]
    TooLarge { bytes: usize },
}

impl From<OutboxError> for minicloud_proto::error::ApiError {
    /// An event over the size limit is the request's fault (413); anything else
    /// is internal.
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::TooLarge { .. } => minicloud_proto::error::ApiError::new(
                minicloud_proto::error::ErrorCode::PayloadTooLarge,
                error.to_string(),
            ),
            other => minicloud_proto::error::ApiError::internal(other),
        }
    }
}

/// The largest event a change may produce (a 1 MiB document with its attributes
/// fits): refused when it is written, so no event too large to publish is ever
/// acknowledged.
pub const MAX_EVENT_BYTES: usize = 2 * 1024 * 1024;

/// A relay's publish carries at most this many bytes of events: under gRPC's 4 MiB
/// default message limit, whatever limit the bus was started with.
const PUBLISH_BYTES: usize = 3 * 1024 * 1024;

/// A row whose publish the bus refused for good (a malformed or oversized event)
/// this many times is set aside, so the rows behind it flow.
const SET_ASIDE_AFTER: i32 = 3;

pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// A CloudEvent as the producer writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: chrono::DateTime<chrono::Utc>,
    pub data: serde_json::Value,
    /// W3C trace context of the change, so the consumer's span continues its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl OutboxEvent {
    /// A new event with a fresh id, the current time and the current trace context.
    pub fn new(
        source: &str,
        event_type: &str,
        subject: Option<String>,
        data: serde_json::Value,
    ) -> Self {
        let mut headers = http::HeaderMap::new();
        minicloud_telemetry::trace_context::inject_current(&mut headers);
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        OutboxEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            subject,
            time: chrono::Utc::now(),
            data,
            traceparent,
        }
    }

    /// The bus's protobuf form, as `Publish` takes it.
    pub fn to_proto(&self) -> CloudEvent {
        let string = |s: &str| CloudEventAttributeValue {
            attr: Some(Attr::CeString(s.to_owned())),
        };
        let mut attributes = std::collections::HashMap::new();
        attributes.insert(
            "time".to_owned(),
            CloudEventAttributeValue {
                attr: Some(Attr::CeTimestamp(
                    self.time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                )),
            },
        );
        attributes.insert("datacontenttype".to_owned(), string("application/json"));
        if let Some(subject) = &self.subject {
            attributes.insert("subject".to_owned(), string(subject));
        }
        if let Some(traceparent) = &self.traceparent {
            attributes.insert("traceparent".to_owned(), string(traceparent));
        }
        CloudEvent {
            id: self.id.clone(),
            source: self.source.clone(),
            spec_version: "1.0".to_owned(),
            r#type: self.event_type.clone(),
            attributes,
            data: Some(Data::TextData(self.data.to_string())),
        }
    }
}

/// Creates the outbox table in the pool's schema. Idempotent; producers call it at
/// start next to their own migrations.
pub async fn ensure_table(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS outbox (
            id         bigserial PRIMARY KEY,
            topic      text NOT NULL,
            event      jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at    timestamptz,
            attempts   integer NOT NULL DEFAULT 0,
            last_error text
        );
        CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
        -- Set aside: the bus refused the event for good; kept with its error.
        ALTER TABLE outbox ADD COLUMN IF NOT EXISTS set_aside_at timestamptz;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The head of an insert into the outbox, for a producer that writes its change and
/// its event in one statement (a data-modifying CTE):
/// `{INSERT_INTO} SELECT <topic>, <event as jsonb> FROM <the change's RETURNING>`.
pub const INSERT_INTO: &str = "INSERT INTO outbox (topic, event)";

/// Writes `event` for `topic` inside the caller's transaction.
pub async fn enqueue(tx: &mut PgConnection, topic: &str, event: &OutboxEvent) -> Result<()> {
    let json = serde_json::to_value(event).map_err(|e| OutboxError::Corrupt {
        id: 0,
        reason: e.to_string(),
    })?;
    let bytes = json.to_string().len();
    if bytes > MAX_EVENT_BYTES {
        return Err(OutboxError::TooLarge { bytes });
    }
    sqlx::query("INSERT INTO outbox (topic, event) VALUES ($1, $2)")
        .bind(topic)
        .bind(json)
        .execute(tx)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events published per round.
    pub batch: i64,
    /// How often the relay looks for events when nobody wakes it.
    pub poll_interval: Duration,
    /// Sent events are deleted after this long.
    pub keep_sent: chrono::Duration,
    /// After a wake-up, wait this long for more commits to publish them together:
    /// one relay round (and one commit) per burst instead of per write.
    pub coalesce: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 100,
            poll_interval: Duration::from_millis(200),
            keep_sent: chrono::Duration::hours(24),
            coalesce: Duration::from_millis(5),
        }
    }
}

/// `events` in order, cut into runs of at most `limit` bytes (one event over the
/// limit goes alone, as does every event `alone` names).
fn cut_by_bytes(
    events: Vec<(i64, CloudEvent)>,
    limit: usize,
    alone: impl Fn(i64) -> bool,
) -> Vec<Vec<(i64, CloudEvent)>> {
    use prost::Message as _;
    let mut chunks: Vec<Vec<(i64, CloudEvent)>> = Vec::new();
    let mut bytes = 0;
    let mut last_alone = false;
    for (id, event) in events {
        let size = event.encoded_len();
        let this_alone = alone(id);
        match chunks.last_mut() {
            Some(chunk) if !this_alone && !last_alone && bytes + size <= limit => {
                bytes += size;
                chunk.push((id, event));
            }
            _ => {
                bytes = size;
                chunks.push(vec![(id, event)]);
            }
        }
        last_alone = this_alone;
    }
    chunks
}

/// Publishes committed outbox events to the bus, in id order per topic.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    bus: BusServiceClient<TracedChannel>,
    config: RelayConfig,
    wake: Arc<Notify>,
    /// Events set aside since this process started (`minicloud_outbox_set_aside_events_total`
    /// on the producing service's `/metrics`; the rows themselves keep `set_aside_at`).
    set_aside: Counter,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    event: serde_json::Value,
    attempts: i32,
}

impl Relay {
    /// `credential` is the producing service's own (the bus takes events only
    /// from minicloud's services).
    pub fn new(
        pool: PgPool,
        bus_grpc_url: &str,
        credential: ServiceCredential,
        config: RelayConfig,
    ) -> Result<Relay, tonic::transport::Error> {
        let channel = TracedChannel::connect_lazy("bus", bus_grpc_url)?.with_credential(credential);
        Ok(Relay {
            pool,
            bus: BusServiceClient::new(channel).max_encoding_message_size(8 * 1024 * 1024),
            config,
            wake: Arc::new(Notify::new()),
            set_aside: Counter::default(),
        })
    }

    /// Adds the relay's series to its service's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "outbox_set_aside_events",
            "Outbox events the bus refused for good, set aside so the rest flow on",
            self.set_aside.clone(),
        );
    }

    /// Tells the relay that events were committed, so it does not wait for the poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes one batch; returns how many events were sent.
    ///
    /// The rows stay locked (`FOR UPDATE SKIP LOCKED`) from selection until they are
    /// marked, so two relays never publish the same rows in one round.
    pub async fn relay_once(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        // Marking events sent need not wait for the WAL flush: a mark lost in a crash
        // only publishes those events again with their ids, which the bus dedupes.
        // The producers' own commits then do not queue behind the relay's fsync.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, topic, event, attempts FROM outbox WHERE sent_at IS NULL AND set_aside_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut by_topic: BTreeMap<&str, Vec<(i64, CloudEvent)>> = BTreeMap::new();
        for row in &rows {
            let event: OutboxEvent =
                serde_json::from_value(row.event.clone()).map_err(|e| OutboxError::Corrupt {
                    id: row.id,
                    reason: e.to_string(),
                })?;
            by_topic
                .entry(&row.topic)
                .or_default()
                .push((row.id, event.to_proto()));
        }
        let mut sent = Vec::with_capacity(rows.len());
        for (topic, events) in by_topic {
            // A row that failed before goes alone, so a bad one is found and set
            // aside instead of failing its whole batch forever.
            let retried: std::collections::HashSet<i64> = rows
                .iter()
                .filter(|r| r.attempts > 0)
                .map(|r| r.id)
                .collect();
            for chunk in cut_by_bytes(events, PUBLISH_BYTES, |id| retried.contains(&id)) {
                let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
                let request = PublishRequest {
                    topic: topic.to_owned(),
                    events: chunk.into_iter().map(|(_, e)| e).collect(),
                };
                if let Err(status) = self.bus.clone().publish(request).await {
                    drop(tx);
                    self.record_failure(&ids, &status).await;
                    // Events already published in this round are marked, so a later
                    // round does not send them again.
                    self.mark_sent(&sent).await?;
                    return Err(status.into());
                }
                sent.extend(ids);
            }
        }
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sent.len())
    }

    async fn mark_sent(&self, ids: &[i64]) -> Result<()> {
        if !ids.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(ids)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Counts a failed publish against its rows. A refusal for good (the bus found
    /// the batch malformed or too large) counts against a single row only when it
    /// was published alone, so one bad event cannot take its batch down with it:
    /// rows of a refused batch are retried one at a time ([`Relay::relay_once`]
    /// cuts a retried row's batch to itself), and a row refused alone
    /// [`SET_ASIDE_AFTER`] times is set aside with its error.
    async fn record_failure(&self, ids: &[i64], status: &tonic::Status) {
        let permanent = matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        );
        let result = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                 set_aside_at = CASE WHEN $3 AND cardinality($1) = 1 AND attempts + 1 >= $4
                                     THEN now() END
             WHERE id = ANY($1)
             RETURNING id, set_aside_at IS NOT NULL",
        )
        .bind(ids)
        .bind(status.to_string())
        .bind(permanent)
        .bind(SET_ASIDE_AFTER)
        .fetch_all(&self.pool)
        .await;
        match result {
            Ok(rows) => {
                for (id, set_aside) in rows.iter().map(|r: &sqlx::postgres::PgRow| {
                    use sqlx::Row as _;
                    (r.get::<i64, _>(0), r.get::<bool, _>(1))
                }) {
                    if set_aside {
                        self.set_aside.inc();
                        tracing::error!(id, %status, "an outbox event the bus refuses was set aside (set_aside_at, last_error); the rest flow on");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "recording an outbox failure"),
        }
    }

    /// Runs until cancelled: relays whenever woken or every poll interval, backing
    /// off (up to 5 s) while the bus fails, and prunes old sent events.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = self.config.poll_interval;
            let mut last_prune = tokio::time::Instant::now();
            loop {
                match self.relay_once().await {
                    Ok(n) if n as i64 == self.config.batch => {
                        backoff = self.config.poll_interval;
                        continue;
                    }
                    Ok(_) => backoff = self.config.poll_interval,
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay round failed");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                if last_prune.elapsed() > Duration::from_secs(60) {
                    last_prune = tokio::time::Instant::now();
                    let cutoff = chrono::Utc::now() - self.config.keep_sent;
                    if let Err(error) = sqlx::query("DELETE FROM outbox WHERE sent_at < $1")
                        .bind(cutoff)
                        .execute(&self.pool)
                        .await
                    {
                        tracing::warn!(%error, "pruning the outbox");
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {
                        tokio::time::sleep(self.config.coalesce).await;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        })
    }
}
