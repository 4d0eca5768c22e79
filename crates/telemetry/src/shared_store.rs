//! The trace and log store every process of a multi-process deployment shares
//! (`minicloud serve`, issue 20): each process forwards the spans and log lines it
//! would keep into Postgres (schema [`SCHEMA`]) instead of its own memory, and the
//! gateway answers `/traces/v1` from there — so a request's spans from every process
//! and every gateway replica are one trace, and they outlive a restart.
//!
//! Bounded like the in-process store by span count and age (and lines by count);
//! its bytes are Postgres's disk, not memory. Forwarding never slows a request: a
//! bounded queue per process, drained in batches by a task; when Postgres falls
//! behind, batches are dropped and counted (a trace may then miss spans — the
//! requests themselves are unaffected).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::log_store::{LogFilter, LogRecord, LogStore};
use crate::trace_store::{
    SpanStatus, StoredSpan, TraceFilter, TraceStore, TraceStoreLimits, TraceSummary,
    inherit_services,
};

/// What reading or writing the store fails with.
pub type Error = sqlx::Error;

/// The Postgres schema the store owns.
pub const SCHEMA: &str = "telemetry";

/// Spans or lines written per statement at most.
const BATCH: usize = 1000;
/// How often each process trims the store to its bounds.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SharedStore {
    pool: PgPool,
    limits: TraceStoreLimits,
    max_lines: usize,
    dropped: Arc<AtomicU64>,
}

impl SharedStore {
    /// Migrates the schema (the pool's search path must put [`SCHEMA`] first).
    pub async fn open(
        pool: PgPool,
        limits: TraceStoreLimits,
    ) -> Result<SharedStore, sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SharedStore {
            pool,
            limits,
            max_lines: 50_000,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn limits(&self) -> TraceStoreLimits {
        self.limits
    }

    /// Sends what this process keeps ([`TraceStore::global`], [`LogStore::global`])
    /// here from now on, and trims the store every 30 s, until `cancel`.
    pub fn forward_this_process(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (spans_in, mut spans) = mpsc::channel::<Vec<StoredSpan>>(1024);
        let (lines_in, mut lines) = mpsc::channel::<LogRecord>(16 * 1024);
        TraceStore::global().forward_to(spans_in, Arc::clone(&self.dropped));
        LogStore::global().forward_to(lines_in, Arc::clone(&self.dropped));
        let store = self.clone();
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    Some(mut batch) = spans.recv() => {
                        while batch.len() < BATCH {
                            match spans.try_recv() {
                                Ok(more) => batch.extend(more),
                                Err(_) => break,
                            }
                        }
                        if let Err(error) = store.insert_spans(&batch).await {
                            store.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            tracing::warn!(%error, spans = batch.len(), "spans not stored");
                        }
                    }
                    Some(line) = lines.recv() => {
                        let mut batch = vec![line];
                        while batch.len() < BATCH {
                            match lines.try_recv() {
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        if let Err(error) = store.insert_lines(&batch).await {
                            store.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            // Not `warn!`: that line would be forwarded too, and fail again.
                            eprintln!("log lines not stored: {error}");
                        }
                    }
                    _ = prune.tick() => {
                        if let Err(error) = store.prune().await {
                            tracing::warn!(%error, "trimming the shared trace store failed");
                        }
                    }
                }
            }
            // What was queued before the stop still goes in.
            let mut rest = Vec::new();
            while let Ok(batch) = spans.try_recv() {
                rest.extend(batch);
            }
            let _ = store.insert_spans(&rest).await;
            let mut rest = Vec::new();
            while let Ok(line) = lines.try_recv() {
                rest.push(line);
            }
            let _ = store.insert_lines(&rest).await;
        })
    }

    /// Spans and lines this process could not store (queue full or Postgres failing).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn insert_spans(&self, spans: &[StoredSpan]) -> Result<(), sqlx::Error> {
        if spans.is_empty() {
            return Ok(());
        }
        let mut columns = SpanColumns::default();
        for span in spans {
            columns.push(span);
        }
        sqlx::query(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, name, service, named_service, kind, \
             start_unix_nano, end_unix_nano, status, status_message, attributes, request_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], \
             $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[], $12::jsonb[], $13::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(columns.trace_id)
        .bind(columns.span_id)
        .bind(columns.parent_span_id)
        .bind(columns.name)
        .bind(columns.service)
        .bind(columns.named_service)
        .bind(columns.kind)
        .bind(columns.start)
        .bind(columns.end)
        .bind(columns.status)
        .bind(columns.status_message)
        .bind(columns.attributes)
        .bind(columns.request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn insert_lines(&self, lines: &[LogRecord]) -> Result<(), sqlx::Error> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut time = Vec::with_capacity(lines.len());
        let mut level = Vec::with_capacity(lines.len());
        let mut target = Vec::with_capacity(lines.len());
        let mut message = Vec::with_capacity(lines.len());
        let mut service = Vec::with_capacity(lines.len());
        let mut request_id = Vec::with_capacity(lines.len());
        let mut fields = Vec::with_capacity(lines.len());
        for line in lines {
            time.push(line.time_unix_nano as i64);
            level.push(line.level.clone());
            target.push(line.target.clone());
            message.push(line.message.clone());
            service.push(line.service.clone());
            request_id.push(line.request_id.clone());
            fields.push(serde_json::to_value(&line.fields).unwrap_or_default());
        }
        sqlx::query(
            "INSERT INTO log_lines (time_unix_nano, level, target, message, service, request_id, fields) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])",
        )
        .bind(time)
        .bind(level)
        .bind(target)
        .bind(message)
        .bind(service)
        .bind(request_id)
        .bind(fields)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spans beyond the age and count bounds go, oldest first; lines beyond theirs.
    pub async fn prune(&self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM spans WHERE stored_at < now() - make_interval(secs => $1)")
            .bind(self.limits.max_age.as_secs_f64())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id FROM spans \
             ORDER BY start_unix_nano LIMIT GREATEST((SELECT count(*) FROM spans) - $1, 0))",
        )
        .bind(self.limits.max_spans as i64)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM log_lines WHERE id <= (SELECT id FROM log_lines ORDER BY id DESC OFFSET $1 LIMIT 1)",
        )
        .bind(self.max_lines as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spans held now.
    pub async fn span_count(&self) -> Result<usize, sqlx::Error> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM spans")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as usize)
    }

    /// The newest traces that pass `filter`, newest first (as [`TraceStore::list`]).
    pub async fn list(&self, filter: &TraceFilter) -> Result<Vec<TraceSummary>, sqlx::Error> {
        // Each trace's summary from its spans; the root is the span without a parent
        // or, failing that, the earliest.
        let rows: Vec<SummaryRow> = sqlx::query_as(
            "WITH traces AS ( \
               SELECT trace_id, \
                 min(start_unix_nano) AS start_ns, max(end_unix_nano) AS end_ns, count(*) AS span_count, \
                 bool_or(status = 'error') AS error, \
                 coalesce(array_agg(DISTINCT service) FILTER (WHERE named_service), '{}') AS services, \
                 coalesce(array_agg(DISTINCT request_id) FILTER (WHERE request_id IS NOT NULL), '{}') AS request_ids, \
                 (array_agg(name ORDER BY parent_span_id IS NOT NULL, start_unix_nano))[1] AS root_name, \
                 (array_agg(attributes->>'url.path' ORDER BY parent_span_id IS NOT NULL, start_unix_nano))[1] AS root_path, \
                 (array_agg(service ORDER BY parent_span_id IS NOT NULL, start_unix_nano))[1] AS root_service, \
                 (array_agg(attributes->>'http.response.status_code' ORDER BY parent_span_id IS NOT NULL, start_unix_nano))[1] AS http_status, \
                 CASE WHEN $6::text IS NULL THEN true \
                   ELSE bool_or(strpos(lower(name), $6) > 0 OR strpos(lower(attributes::text), $6) > 0) END AS text_match \
               FROM spans GROUP BY trace_id) \
             SELECT trace_id, start_ns, end_ns, span_count, error, services, request_ids, root_name, root_path, \
               root_service, http_status FROM traces \
             WHERE ($1::text IS NULL OR $1 = ANY(services)) \
               AND ($2::text IS NULL OR strpos(root_name, $2) > 0 OR strpos(coalesce(root_path, ''), $2) > 0) \
               AND ($3::bool IS NULL OR error = $3) \
               AND ($4::int8 IS NULL OR end_ns - start_ns >= $4) \
               AND ($5::int8 IS NULL OR start_ns >= $5) \
               AND text_match \
             ORDER BY start_ns DESC LIMIT $7",
        )
        .bind(filter.service.as_deref())
        .bind(filter.route.as_deref())
        .bind(filter.error)
        .bind(filter.min_duration.map(|d| d.as_nanos() as i64))
        .bind(filter.since_unix_nano.map(|t| t as i64))
        .bind(filter.text.as_deref().map(str::to_lowercase))
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SummaryRow::into_summary).collect())
    }

    /// Every span of the trace, by start time (as [`TraceStore::trace`]).
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Vec<StoredSpan>>, sqlx::Error> {
        let rows: Vec<SpanRow> = sqlx::query_as(
            "SELECT trace_id, span_id, parent_span_id, name, service, kind, start_unix_nano, end_unix_nano, \
             status, status_message, attributes FROM spans WHERE trace_id = $1 ORDER BY start_unix_nano",
        )
        .bind(trace_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut spans: Vec<StoredSpan> = rows.into_iter().map(SpanRow::into_span).collect();
        inherit_services(&mut spans);
        Ok(Some(spans))
    }

    /// The newest trace a request id was seen in.
    pub async fn trace_of_request(&self, request_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT trace_id FROM spans WHERE request_id = $1 ORDER BY start_unix_nano DESC LIMIT 1",
        )
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// The newest lines that pass `filter`, oldest first (as [`LogStore::query`]).
    pub async fn lines(&self, filter: &LogFilter) -> Result<Vec<LogRecord>, sqlx::Error> {
        let rank = |level: tracing::Level| match level {
            tracing::Level::ERROR => 1i32,
            tracing::Level::WARN => 2,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        };
        let rows: Vec<LineRow> = sqlx::query_as(
            "SELECT time_unix_nano, level, target, message, service, request_id, fields FROM log_lines \
             WHERE ($1::text[] IS NULL OR request_id = ANY($1)) \
               AND ($2::text IS NULL OR service = $2) \
               AND ($3::int4 IS NULL OR (CASE level WHEN 'ERROR' THEN 1 WHEN 'WARN' THEN 2 WHEN 'INFO' THEN 3 \
                    WHEN 'DEBUG' THEN 4 ELSE 5 END) <= $3) \
               AND ($4::text IS NULL OR strpos(lower(message), $4) > 0 OR strpos(lower(fields::text), $4) > 0) \
             ORDER BY time_unix_nano DESC, id DESC LIMIT $5",
        )
        .bind(filter.request_ids.as_deref())
        .bind(filter.service.as_deref())
        .bind(filter.level.map(rank))
        .bind(filter.text.as_deref().map(str::to_lowercase))
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut lines: Vec<LogRecord> = rows.into_iter().map(LineRow::into_record).collect();
        lines.reverse();
        Ok(lines)
    }
}

#[derive(Default)]
struct SpanColumns {
    trace_id: Vec<String>,
    span_id: Vec<String>,
    parent_span_id: Vec<Option<String>>,
    name: Vec<String>,
    service: Vec<String>,
    named_service: Vec<bool>,
    kind: Vec<String>,
    start: Vec<i64>,
    end: Vec<i64>,
    status: Vec<&'static str>,
    status_message: Vec<Option<String>>,
    attributes: Vec<serde_json::Value>,
    request_id: Vec<Option<String>>,
}

impl SpanColumns {
    fn push(&mut self, span: &StoredSpan) {
        self.trace_id.push(span.trace_id.clone());
        self.span_id.push(span.span_id.clone());
        self.parent_span_id.push(span.parent_span_id.clone());
        self.name.push(span.name.clone());
        self.service.push(span.service.clone());
        self.named_service.push(span.names_its_service());
        self.kind.push(span.kind.clone());
        self.start.push(span.start_unix_nano as i64);
        self.end.push(span.end_unix_nano as i64);
        self.status.push(match span.status {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        });
        self.status_message.push(span.status_message.clone());
        self.attributes
            .push(serde_json::to_value(&span.attributes).unwrap_or_default());
        self.request_id
            .push(span.attributes.get("request_id").cloned());
    }
}

#[derive(sqlx::FromRow)]
struct SpanRow {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    service: String,
    kind: String,
    start_unix_nano: i64,
    end_unix_nano: i64,
    status: String,
    status_message: Option<String>,
    attributes: sqlx::types::Json<BTreeMap<String, String>>,
}

impl SpanRow {
    fn into_span(self) -> StoredSpan {
        StoredSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            name: self.name,
            service: self.service,
            kind: self.kind,
            start_unix_nano: self.start_unix_nano as u64,
            end_unix_nano: self.end_unix_nano as u64,
            status: match self.status.as_str() {
                "ok" => SpanStatus::Ok,
                "error" => SpanStatus::Error,
                _ => SpanStatus::Unset,
            },
            status_message: self.status_message,
            attributes: self.attributes.0,
        }
    }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    trace_id: String,
    start_ns: i64,
    end_ns: i64,
    span_count: i64,
    error: bool,
    services: Vec<String>,
    request_ids: Vec<String>,
    root_name: String,
    root_path: Option<String>,
    root_service: String,
    http_status: Option<String>,
}

impl SummaryRow {
    fn into_summary(self) -> TraceSummary {
        TraceSummary {
            trace_id: self.trace_id,
            root_name: self.root_name,
            root_path: self.root_path,
            root_service: self.root_service,
            start_unix_nano: self.start_ns as u64,
            duration_ns: (self.end_ns - self.start_ns).max(0) as u64,
            span_count: self.span_count as usize,
            error: self.error,
            services: self.services,
            request_ids: self.request_ids,
            http_status: self.http_status.and_then(|s| s.parse().ok()),
        }
    }
}

#[derive(sqlx::FromRow)]
struct LineRow {
    time_unix_nano: i64,
    level: String,
    target: String,
    message: String,
    service: Option<String>,
    request_id: Option<String>,
    fields: sqlx::types::Json<BTreeMap<String, String>>,
}

impl LineRow {
    fn into_record(self) -> LogRecord {
        LogRecord {
            time_unix_nano: self.time_unix_nano as u64,
            level: self.level,
            target: self.target,
            message: self.message,
            service: self.service,
            request_id: self.request_id,
            fields: self.fields.0,
        }
    }
}
