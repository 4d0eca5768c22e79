//! The span pipeline of a process that keeps its traces and exports them nowhere else
//! (no `OTEL_EXPORTER_OTLP_ENDPOINT`: the default): a `tracing` layer that records
//! each span straight into what the trace store keeps.
//!
//! Why not `tracing-opentelemetry` and the OpenTelemetry SDK, as with a collector:
//! measured here, they cost 6–7 µs per span (a span builder, an SDK span with its
//! sampler and attribute vectors, `SpanData`, the batch processor's channel) — with
//! four spans per request, 15–20% of a warm invoke, against a budget of 5%. This
//! layer records ids, name, times and attributes in the span's extensions and hands
//! the finished span to a queue that a background thread moves into the store every
//! 100 ms; propagation (`trace_context`) reads and writes the same ids, in
//! the same W3C format, so traces still cross processes and reach functions.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::trace_store::{SpanStatus, StoredSpan, TraceStore};

/// Finished spans waiting for the store at most this many (a stalled mover thread
/// must not grow memory without bound): beyond it, spans are dropped.
const MAX_QUEUED: usize = 100_000;
/// How often the queue moves into the store.
const MOVE_EVERY: Duration = Duration::from_millis(100);

/// A span's identity as W3C trace context carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanIds {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
}

/// What the layer keeps in a span's extensions while it is open.
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) ids: SpanIds,
    pub(crate) parent_span_id: Option<u64>,
    name: Option<String>,
    metadata_name: &'static str,
    kind: &'static str,
    start_unix_nano: u64,
    attributes: Vec<(&'static str, String)>,
    status: SpanStatus,
    status_message: Option<String>,
}

impl Recording {
    /// Continues a remote trace: this span becomes the child of `parent` (set before
    /// any child of its own is created, as the servers do on arrival).
    pub(crate) fn continue_remote(&mut self, parent: SpanIds) {
        self.ids.trace_id = parent.trace_id;
        self.parent_span_id = Some(parent.span_id);
    }

    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "otel.name" => self.name = Some(value),
            "otel.kind" => {
                self.kind = match value.as_str() {
                    "server" => "server",
                    "client" => "client",
                    "producer" => "producer",
                    "consumer" => "consumer",
                    _ => "internal",
                }
            }
            "otel.status_code" => {
                self.status = match value.to_ascii_lowercase().as_str() {
                    "error" => SpanStatus::Error,
                    "ok" => SpanStatus::Ok,
                    _ => SpanStatus::Unset,
                }
            }
            "otel.status_message" => self.status_message = Some(value),
            name => match self.attributes.iter_mut().find(|(key, _)| *key == name) {
                Some((_, old)) => *old = value,
                None => self.attributes.push((name, value)),
            },
        }
    }
}

impl Visit for Recording {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

/// A finished span, converted to a [`StoredSpan`] off the request's path.
#[derive(Debug)]
struct Finished {
    recording: Recording,
    end_unix_nano: u64,
}

/// The layer; build it with [`SpanKeeper::layer`].
#[derive(Debug)]
pub struct KeepSpans {
    keeper: Arc<SpanKeeper>,
}

/// The queue between the layer and the store, and the thread that empties it.
#[derive(Debug)]
pub struct SpanKeeper {
    queue: Mutex<Vec<Finished>>,
    store: Arc<TraceStore>,
    /// The process's `service.name`: the service of spans that name none (and have
    /// no parent to inherit one from).
    service_name: String,
    mover: OnceLock<()>,
}

impl SpanKeeper {
    pub fn new(store: Arc<TraceStore>, service_name: impl Into<String>) -> Arc<SpanKeeper> {
        Arc::new(SpanKeeper {
            queue: Mutex::new(Vec::new()),
            store,
            service_name: service_name.into(),
            mover: OnceLock::new(),
        })
    }

    /// The `tracing` layer recording into this keeper; starts the mover thread.
    pub fn layer(self: &Arc<Self>) -> KeepSpans {
        self.mover.get_or_init(|| {
            let keeper = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("minicloud-span-keeper".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(MOVE_EVERY);
                        match keeper.upgrade() {
                            Some(keeper) => keeper.flush(),
                            None => return,
                        }
                    }
                });
            if let Err(error) = started {
                eprintln!("the span keeper's thread did not start: {error}");
            }
        });
        KeepSpans {
            keeper: Arc::clone(self),
        }
    }

    /// Moves every finished span into the store now.
    pub fn flush(&self) {
        let finished = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        if finished.is_empty() {
            return;
        }
        self.store
            .insert(finished.into_iter().map(|f| self.stored(f)));
    }

    fn stored(&self, finished: Finished) -> StoredSpan {
        let Finished {
            recording,
            end_unix_nano,
        } = finished;
        let attributes: std::collections::BTreeMap<String, String> = recording
            .attributes
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        StoredSpan {
            trace_id: format!("{:032x}", recording.ids.trace_id),
            span_id: format!("{:016x}", recording.ids.span_id),
            parent_span_id: recording.parent_span_id.map(|p| format!("{p:016x}")),
            name: recording
                .name
                .unwrap_or_else(|| recording.metadata_name.to_owned()),
            service: attributes
                .get("minicloud.service")
                .cloned()
                .unwrap_or_else(|| self.service_name.clone()),
            kind: recording.kind.to_owned(),
            start_unix_nano: recording.start_unix_nano,
            end_unix_nano,
            status: recording.status,
            status_message: recording.status_message,
            attributes,
        }
    }
}

fn unix_nano_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Random ids from a per-thread xorshift generator seeded from the OS once: ids
/// must be unique, not unpredictable, and a system call per span would cost more
/// than the rest of the span.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            (uuid::Uuid::new_v4().as_u128() as u64) | 1
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn new_span_id() -> u64 {
    loop {
        let id = random_u64();
        if id != 0 {
            return id;
        }
    }
}

impl<S> Layer<S> for KeepSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = match attrs.parent() {
            Some(parent) => ctx.span(parent),
            None if attrs.is_contextual() => ctx.lookup_current(),
            None => None,
        };
        let parent = parent.and_then(|p| p.extensions().get::<Recording>().map(|r| r.ids));
        let (trace_id, parent_span_id) = match parent {
            Some(parent) => (parent.trace_id, Some(parent.span_id)),
            None => (
                (u128::from(random_u64()) << 64) | u128::from(new_span_id()),
                None,
            ),
        };
        let mut recording = Recording {
            ids: SpanIds {
                trace_id,
                span_id: new_span_id(),
            },
            parent_span_id,
            name: None,
            metadata_name: attrs.metadata().name(),
            kind: "internal",
            start_unix_nano: unix_nano_now(),
            attributes: Vec::with_capacity(attrs.fields().len()),
            status: SpanStatus::Unset,
            status_message: None,
        };
        attrs.record(&mut recording);
        span.extensions_mut().insert(recording);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(recording) = span.extensions_mut().get_mut::<Recording>()
        {
            values.record(recording);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // An error logged inside a span marks it failed, as the OpenTelemetry layer
        // does (`error_events_to_status`).
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        if let Some(span) = ctx.event_span(event)
            && let Some(recording) = span.extensions_mut().get_mut::<Recording>()
        {
            struct Message(Option<String>);
            impl Visit for Message {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = Some(format!("{value:?}"));
                    }
                }
            }
            let mut message = Message(None);
            event.record(&mut message);
            recording.status = SpanStatus::Error;
            recording.status_message = message.0;
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let end_unix_nano = unix_nano_now();
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(recording) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        let mut queue = self.keeper.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() < MAX_QUEUED {
            queue.push(Finished {
                recording,
                end_unix_nano,
            });
        }
    }
}

/// The ids of `span` as this layer recorded them, if it did.
pub(crate) fn ids_of(span: &tracing::Span) -> Option<SpanIds> {
    with_recording(span, |recording| recording.ids)
}

/// Runs `f` on the recording of `span`, if this layer records it.
pub(crate) fn with_recording<R>(
    span: &tracing::Span,
    f: impl FnOnce(&mut Recording) -> R,
) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let data = registry.span_data(id)?;
        let mut extensions = tracing_subscriber::registry::SpanData::extensions_mut(&data);
        extensions.get_mut::<Recording>().map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_store::TraceStoreLimits;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn spans_are_kept_with_their_parents_attributes_and_status() {
        let store = Arc::new(TraceStore::new(TraceStoreLimits::default()));
        let keeper = SpanKeeper::new(Arc::clone(&store), "minicloud");
        let subscriber = tracing_subscriber::registry().with(keeper.layer());
        let (outer_ids, inner_ids) = tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "request",
                otel.name = "GET /storage/v1/object",
                otel.kind = "server",
                minicloud.service = "storage",
                request_id = "req_1",
                http.response.status_code = tracing::field::Empty,
            );
            let inner = outer.in_scope(|| tracing::info_span!("sql", rows = 3u64));
            inner.in_scope(|| tracing::error!("query failed"));
            outer.record("http.response.status_code", 500u16);
            let ids = (ids_of(&outer).unwrap(), ids_of(&inner).unwrap());
            drop(inner);
            drop(outer);
            ids
        });
        keeper.flush();
        let trace_id = format!("{:032x}", outer_ids.trace_id);
        let spans = store.trace(&trace_id).expect("the trace is kept");
        assert_eq!(spans.len(), 2);
        let outer = &spans[0];
        assert_eq!(outer.name, "GET /storage/v1/object");
        assert_eq!(outer.kind, "server");
        assert_eq!(outer.service, "storage");
        assert_eq!(outer.parent_span_id, None);
        assert_eq!(outer.attributes["http.response.status_code"], "500");
        assert_eq!(outer.attributes["request_id"], "req_1");
        assert!(!outer.attributes.contains_key("otel.name"));
        let inner = &spans[1];
        assert_eq!(inner_ids.trace_id, outer_ids.trace_id);
        assert_eq!(
            inner.parent_span_id.as_deref(),
            Some(format!("{:016x}", outer_ids.span_id).as_str())
        );
        // It names no service: it is its parent's.
        assert_eq!(inner.service, "storage");
        assert_eq!(inner.status, SpanStatus::Error);
        assert_eq!(inner.status_message.as_deref(), Some("query failed"));
        assert_eq!(inner.attributes["rows"], "3");
        assert!(inner.end_unix_nano >= inner.start_unix_nano);
    }

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_span_id();
            assert_ne!(id, 0);
            assert!(seen.insert(id));
        }
    }
}
