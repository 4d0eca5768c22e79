//! The structured log lines a process keeps (issue 20) beside its traces: every event
//! the log filter lets through, with the request id and service of the request it
//! happened in (from the `request` span the server opens), in a ring bounded by count
//! and bytes, so the console shows a request's log lines next to its trace.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogRecord {
    pub time_unix_nano: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub level: String,
    pub target: String,
    pub message: String,
    pub service: Option<String>,
    pub request_id: Option<String>,
    pub fields: BTreeMap<String, String>,
}

impl LogRecord {
    fn bytes(&self) -> usize {
        96 + self.level.len()
            + self.target.len()
            + self.message.len()
            + self.service.as_ref().map_or(0, String::len)
            + self.request_id.as_ref().map_or(0, String::len)
            + self
                .fields
                .iter()
                .map(|(k, v)| 48 + k.len() + v.len())
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Any of these request ids (a trace's).
    pub request_ids: Option<Vec<String>>,
    pub service: Option<String>,
    /// This level or a more severe one.
    pub level: Option<tracing::Level>,
    /// A substring of the message or a field's value.
    pub text: Option<String>,
    pub limit: usize,
}

#[derive(Default)]
struct Ring {
    records: VecDeque<LogRecord>,
    bytes: usize,
}

pub struct LogStore {
    max_records: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
    /// Set when lines go to the store every process shares instead
    /// (`shared_store`): nothing is then kept here.
    forward: OnceLock<crate::forward::Forward<LogRecord>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("max_records", &self.max_records)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    pub fn new(max_records: usize, max_bytes: usize) -> LogStore {
        LogStore {
            max_records,
            max_bytes,
            ring: Mutex::new(Ring::default()),
            forward: OnceLock::new(),
        }
    }

    /// From now on, lines go to `to` instead of being kept here (once per process).
    pub(crate) fn forward_to(
        &self,
        to: tokio::sync::mpsc::Sender<LogRecord>,
        dropped: Arc<std::sync::atomic::AtomicU64>,
    ) {
        let _ = self.forward.set(crate::forward::Forward { to, dropped });
    }

    /// This process's store: 50,000 lines or 32 MiB.
    pub fn global() -> &'static Arc<LogStore> {
        static STORE: OnceLock<Arc<LogStore>> = OnceLock::new();
        STORE.get_or_init(|| Arc::new(LogStore::new(50_000, 32 * 1024 * 1024)))
    }

    pub fn push(&self, record: LogRecord) {
        if let Some(forward) = self.forward.get() {
            forward.send(record, 1);
            return;
        }
        let bytes = record.bytes();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.bytes += bytes;
        ring.records.push_back(record);
        while ring.records.len() > self.max_records || ring.bytes > self.max_bytes {
            match ring.records.pop_front() {
                Some(old) => ring.bytes -= old.bytes(),
                None => break,
            }
        }
    }

    /// The newest lines that pass `filter`, oldest first.
    pub fn query(&self, filter: &LogFilter) -> Vec<LogRecord> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let text = filter.text.as_deref().map(str::to_lowercase);
        let mut out: Vec<LogRecord> = ring
            .records
            .iter()
            .rev()
            .filter(|r| {
                filter.request_ids.as_ref().is_none_or(|ids| {
                    r.request_id
                        .as_ref()
                        .is_some_and(|id| ids.iter().any(|x| x == id))
                }) && filter
                    .service
                    .as_ref()
                    .is_none_or(|s| r.service.as_deref() == Some(s.as_str()))
                    && filter.level.is_none_or(|level| {
                        r.level.parse::<tracing::Level>().is_ok_and(|l| l <= level)
                    })
                    && text.as_ref().is_none_or(|t| {
                        r.message.to_lowercase().contains(t.as_str())
                            || r.fields
                                .values()
                                .any(|v| v.to_lowercase().contains(t.as_str()))
                    })
            })
            .take(filter.limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// What a request span says about the request (`request_id`, `minicloud.service`).
#[derive(Debug, Clone, Default)]
struct RequestOf {
    request_id: Option<String>,
    service: Option<String>,
}

impl Visit for RequestOf {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "request_id" => self.request_id = Some(value.to_owned()),
            "minicloud.service" => self.service = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Only the two fields wanted are formatted: a request span has ten.
        let slot = match field.name() {
            "request_id" => &mut self.request_id,
            "minicloud.service" => &mut self.service,
            _ => return,
        };
        let text = format!("{value:?}");
        *slot = Some(text.trim_matches('"').to_owned());
    }
}

#[derive(Default)]
struct EventFields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
}

/// The layer that fills a [`LogStore`].
#[derive(Debug)]
pub struct LogStoreLayer {
    store: Arc<LogStore>,
}

impl LogStoreLayer {
    pub fn new(store: Arc<LogStore>) -> Self {
        LogStoreLayer { store }
    }
}

impl<S> Layer<S> for LogStoreLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let fields = attrs.fields();
        if fields.field("request_id").is_none() && fields.field("minicloud.service").is_none() {
            return;
        }
        let mut request = RequestOf::default();
        attrs.record(&mut request);
        if (request.request_id.is_some() || request.service.is_some())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(request);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let mut recorded = RequestOf::default();
        values.record(&mut recorded);
        if (recorded.request_id.is_some() || recorded.service.is_some())
            && let Some(span) = ctx.span(id)
        {
            let mut extensions = span.extensions_mut();
            match extensions.get_mut::<RequestOf>() {
                Some(known) => {
                    known.request_id = recorded.request_id.or(known.request_id.take());
                    known.service = recorded.service.or(known.service.take());
                }
                None => extensions.insert(recorded),
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut request = RequestOf::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(found) = span.extensions().get::<RequestOf>() {
                    if request.request_id.is_none() {
                        request.request_id = found.request_id.clone();
                    }
                    if request.service.is_none() {
                        request.service = found.service.clone();
                    }
                }
                if request.request_id.is_some() && request.service.is_some() {
                    break;
                }
            }
        }
        let metadata = event.metadata();
        self.store.push(LogRecord {
            time_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            level: metadata.level().to_string(),
            target: metadata.target().to_owned(),
            message: fields.message,
            service: request.service,
            request_id: request.request_id,
            fields: fields.fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn lines_carry_their_requests_id_and_the_ring_is_bounded() {
        let store = Arc::new(LogStore::new(3, usize::MAX));
        let subscriber =
            tracing_subscriber::registry().with(LogStoreLayer::new(Arc::clone(&store)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before any request");
            let span = tracing::info_span!(
                "request",
                request_id = "req_1",
                minicloud.service = "storage"
            );
            span.in_scope(|| {
                tracing::warn!(bucket = "photos", "slow backend");
                let inner = tracing::info_span!("sql");
                inner.in_scope(|| tracing::error!("query failed"));
            });
            tracing::info!("after");
        });
        // Four lines, three kept: the oldest went.
        let all = store.query(&LogFilter {
            limit: 10,
            ..LogFilter::default()
        });
        let messages: Vec<_> = all.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["slow backend", "query failed", "after"]);
        let of_request = store.query(&LogFilter {
            request_ids: Some(vec!["req_1".into()]),
            limit: 10,
            ..LogFilter::default()
        });
        assert_eq!(of_request.len(), 2);
        assert!(
            of_request
                .iter()
                .all(|r| r.service.as_deref() == Some("storage"))
        );
        assert_eq!(of_request[0].fields["bucket"], "photos");
        let errors = store.query(&LogFilter {
            level: Some(tracing::Level::ERROR),
            limit: 10,
            ..LogFilter::default()
        });
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "query failed");
    }
}
