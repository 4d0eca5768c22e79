//! The traces minicloud keeps itself (issue 20): every finished span of this process
//! (an OpenTelemetry exporter beside the OTLP one) and the spans functions send to
//! the gateway's OTLP receiver, in a store bounded by span count, bytes and age, so
//! one request can be followed from the gateway into a function and back without
//! running a collector.
//!
//! Traces are kept whole: eviction drops the oldest trace (by first span seen), never
//! part of one. Every trace keeps a running summary (root, duration, services,
//! errors) so listing does not rescan spans.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde::Serialize;

use crate::forward::Forward;

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct TraceStoreLimits {
    pub max_spans: usize,
    /// Approximate bytes of span data (names, ids, attributes) kept.
    pub max_bytes: usize,
    pub max_age: Duration,
}

impl Default for TraceStoreLimits {
    fn default() -> Self {
        TraceStoreLimits {
            max_spans: 100_000,
            // 100,000 spans of a request's usual attributes take about 190 MB.
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(3600),
        }
    }
}

impl TraceStoreLimits {
    /// `MINICLOUD_TRACES_MAX_SPANS`, `MINICLOUD_TRACES_MAX_MB`,
    /// `MINICLOUD_TRACES_MAX_AGE_S` over the defaults.
    pub fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(default)
        };
        let default = TraceStoreLimits::default();
        TraceStoreLimits {
            max_spans: number("MINICLOUD_TRACES_MAX_SPANS", default.max_spans),
            max_bytes: number("MINICLOUD_TRACES_MAX_MB", default.max_bytes / 1024 / 1024)
                * 1024
                * 1024,
            max_age: Duration::from_secs(number(
                "MINICLOUD_TRACES_MAX_AGE_S",
                default.max_age.as_secs() as usize,
            ) as u64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `minicloud.service` of the span or, failing that, its resource's
    /// `service.name` (a function's spans: the function's).
    pub service: String,
    /// `server`, `client`, `internal`, `producer`, `consumer`.
    pub kind: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: SpanStatus,
    pub status_message: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl StoredSpan {
    fn bytes(&self) -> usize {
        // Calibrated against the process's resident growth (traces-bench): each
        // string costs its header and allocation besides its bytes, each attribute
        // its two strings and a share of a map node, each span its trace's
        // bookkeeping too.
        400 + self.trace_id.len()
            + self.span_id.len()
            + self.parent_span_id.as_ref().map_or(0, String::len)
            + self.name.len()
            + self.service.len()
            + self.kind.len()
            + self.status_message.as_ref().map_or(0, String::len)
            + self
                .attributes
                .iter()
                .map(|(k, v)| 140 + k.len() + v.len())
                .sum::<usize>()
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// Whether the span says which service it is (a function's spans do, by who sent
    /// them); one that does not belongs to its parent's service.
    pub fn names_its_service(&self) -> bool {
        self.attributes.contains_key("minicloud.service")
            || self.attributes.contains_key("minicloud.ingested_by")
    }
}

/// One trace as a list shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's name (`GET /storage/v1/…`), or the earliest span's while the
    /// root has not arrived.
    pub root_name: String,
    /// The root's `url.path` (the path asked for, where `root_name` has the route).
    pub root_path: Option<String>,
    pub root_service: String,
    pub start_unix_nano: u64,
    pub duration_ns: u64,
    pub span_count: usize,
    pub error: bool,
    pub services: Vec<String>,
    /// `x-request-id`s seen in the trace's spans.
    pub request_ids: Vec<String>,
    /// The root's `http.response.status_code`, when it has one.
    pub http_status: Option<u16>,
}

struct Entry {
    spans: Vec<StoredSpan>,
    first_seen: Instant,
    bytes: usize,
    summary: TraceSummary,
    has_root: bool,
    /// Every span's name and attribute values, lowercased, one per line: a text
    /// search is one `memmem` scan per trace instead of a comparison per string
    /// (100,000 spans: ~60 ms → a few).
    text: String,
}

#[derive(Default)]
struct State {
    /// foldhash (hashbrown's default, seeded per process) rather than SipHash: ids
    /// are hashed for every kept span, and SipHash showed in the request path's
    /// profile.
    traces: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Trace ids by first span seen, oldest first.
    order: VecDeque<String>,
    spans: usize,
    bytes: usize,
}

/// What a trace list may be narrowed to.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub service: Option<String>,
    /// A substring of the root's name or path (`/storage/v1/object`).
    pub route: Option<String>,
    pub error: Option<bool>,
    pub min_duration: Option<Duration>,
    pub since_unix_nano: Option<u64>,
    /// A substring of any span's name or attribute value.
    pub text: Option<String>,
    pub limit: usize,
}

pub struct TraceStore {
    limits: TraceStoreLimits,
    state: Mutex<State>,
    /// Set when the spans go to the store every process shares instead
    /// (`shared_store`): nothing is then kept here.
    forward: OnceLock<Forward<Vec<StoredSpan>>>,
}

impl std::fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceStore")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TraceStore {
    pub fn new(limits: TraceStoreLimits) -> TraceStore {
        TraceStore {
            limits,
            state: Mutex::new(State::default()),
            forward: OnceLock::new(),
        }
    }

    /// From now on, spans go to `to` instead of being kept here (once per process).
    pub(crate) fn forward_to(
        &self,
        to: tokio::sync::mpsc::Sender<Vec<StoredSpan>>,
        dropped: Arc<std::sync::atomic::AtomicU64>,
    ) {
        let _ = self.forward.set(Forward { to, dropped });
    }

    /// This process's store (what the gateway's `/traces/v1` reads).
    pub fn global() -> &'static Arc<TraceStore> {
        static STORE: OnceLock<Arc<TraceStore>> = OnceLock::new();
        STORE.get_or_init(|| Arc::new(TraceStore::new(TraceStoreLimits::from_env())))
    }

    pub fn limits(&self) -> TraceStoreLimits {
        self.limits
    }

    /// (spans, approximate bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.spans, state.bytes)
    }

    pub fn insert(&self, spans: impl IntoIterator<Item = StoredSpan>) {
        if let Some(forward) = self.forward.get() {
            let spans: Vec<StoredSpan> = spans.into_iter().collect();
            let count = spans.len();
            forward.send(spans, count);
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for span in spans {
            let bytes = span.bytes();
            if bytes > self.limits.max_bytes {
                continue;
            }
            let State {
                traces,
                order,
                spans: count,
                bytes: total,
            } = &mut *state;
            // Most spans join a trace already held: its id is cloned only for a new one.
            if !traces.contains_key(&span.trace_id) {
                order.push_back(span.trace_id.clone());
                traces.insert(
                    span.trace_id.clone(),
                    Entry {
                        spans: Vec::new(),
                        first_seen: now,
                        bytes: 0,
                        summary: TraceSummary {
                            trace_id: span.trace_id.clone(),
                            root_name: span.name.clone(),
                            root_path: None,
                            root_service: span.service.clone(),
                            start_unix_nano: span.start_unix_nano,
                            duration_ns: 0,
                            span_count: 0,
                            error: false,
                            services: Vec::new(),
                            request_ids: Vec::new(),
                            http_status: None,
                        },
                        has_root: false,
                        text: String::new(),
                    },
                );
            }
            let Some(entry) = traces.get_mut(&span.trace_id) else {
                continue;
            };
            summarise(entry, &span);
            // Counted by capacity: the text grows by doubling, and its spare room is
            // memory too.
            let text_before = entry.text.capacity();
            for part in std::iter::once(span.name.as_str())
                .chain(span.attributes.values().map(String::as_str))
            {
                push_lowercase(&mut entry.text, part);
                entry.text.push('\n');
            }
            let bytes = bytes + entry.text.capacity() - text_before;
            entry.bytes += bytes;
            entry.spans.push(span);
            *count += 1;
            *total += bytes;
        }
        self.evict(&mut state, now);
    }

    fn evict(&self, state: &mut State, now: Instant) {
        while let Some(oldest) = state.order.front() {
            let too_old = state
                .traces
                .get(oldest)
                .is_none_or(|e| now.duration_since(e.first_seen) > self.limits.max_age);
            if !too_old
                && state.spans <= self.limits.max_spans
                && state.bytes <= self.limits.max_bytes
            {
                break;
            }
            let id = state.order.pop_front().unwrap_or_default();
            if let Some(entry) = state.traces.remove(&id) {
                state.spans -= entry.spans.len();
                state.bytes -= entry.bytes;
            }
        }
    }

    /// Every span of the trace, by start time.
    pub fn trace(&self, trace_id: &str) -> Option<Vec<StoredSpan>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut spans = state.traces.get(trace_id)?.spans.clone();
        drop(state);
        spans.sort_by_key(|s| s.start_unix_nano);
        inherit_services(&mut spans);
        Some(spans)
    }

    /// The newest traces that pass `filter`, newest first.
    pub fn list(&self, filter: &TraceFilter) -> Vec<TraceSummary> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = filter.text.as_deref().map(str::to_lowercase);
        let mut out = Vec::new();
        for id in state.order.iter().rev() {
            if out.len() >= filter.limit {
                break;
            }
            let Some(entry) = state.traces.get(id) else {
                continue;
            };
            let summary = &entry.summary;
            let keep = filter
                .service
                .as_ref()
                .is_none_or(|s| summary.services.iter().any(|x| x == s))
                && filter.route.as_ref().is_none_or(|r| {
                    summary.root_name.contains(r.as_str())
                        || summary
                            .root_path
                            .as_ref()
                            .is_some_and(|p| p.contains(r.as_str()))
                })
                && filter.error.is_none_or(|e| summary.error == e)
                && filter
                    .min_duration
                    .is_none_or(|d| summary.duration_ns >= d.as_nanos() as u64)
                && filter
                    .since_unix_nano
                    .is_none_or(|t| summary.start_unix_nano >= t)
                && text.as_ref().is_none_or(|t| {
                    memchr::memmem::find(entry.text.as_bytes(), t.as_bytes()).is_some()
                });
            if keep {
                out.push(summary.clone());
            }
        }
        out
    }

    /// The trace a request id was seen in, if it is still kept.
    pub fn trace_of_request(&self, request_id: &str) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.order.iter().rev().find_map(|id| {
            state
                .traces
                .get(id)
                .filter(|e| e.summary.request_ids.iter().any(|r| r == request_id))
                .map(|_| id.clone())
        })
    }
}

/// A span that does not name its service (a gRPC or proxy client span, say) belongs
/// to its parent's: parents start first, so one pass over `spans` in start order.
pub(crate) fn inherit_services(spans: &mut [StoredSpan]) {
    let mut service_of: HashMap<String, String> = HashMap::new();
    for span in spans {
        if !span.names_its_service()
            && let Some(parent) = span.parent_span_id.as_ref().and_then(|p| service_of.get(p))
        {
            span.service = parent.clone();
        }
        service_of.insert(span.span_id.clone(), span.service.clone());
    }
}

/// Appends `part` lowercased as `str::to_lowercase` would, without its temporary
/// `String` and Unicode tables for the usual ASCII text (ids, routes, names).
fn push_lowercase(text: &mut String, part: &str) {
    if part.is_ascii() {
        let from = text.len();
        text.push_str(part);
        text[from..].make_ascii_lowercase();
    } else {
        text.push_str(&part.to_lowercase());
    }
}

/// Folds one span into its trace's summary.
fn summarise(entry: &mut Entry, span: &StoredSpan) {
    let summary = &mut entry.summary;
    summary.span_count += 1;
    summary.error |= span.status == SpanStatus::Error;
    // A span that names no service of its own is its parent's (see `trace`).
    if span.names_its_service() && !summary.services.contains(&span.service) {
        summary.services.push(span.service.clone());
    }
    if let Some(id) = span.attributes.get("request_id")
        && !summary.request_ids.contains(id)
    {
        summary.request_ids.push(id.clone());
    }
    let end = summary.start_unix_nano + summary.duration_ns;
    let start = summary.start_unix_nano.min(span.start_unix_nano);
    summary.start_unix_nano = start;
    summary.duration_ns = end.max(span.end_unix_nano) - start;
    let is_root = span.parent_span_id.is_none();
    if is_root || (!entry.has_root && span.start_unix_nano <= summary.start_unix_nano) {
        summary.root_name = span.name.clone();
        summary.root_path = span.attributes.get("url.path").cloned();
        summary.root_service = span.service.clone();
        summary.http_status = span
            .attributes
            .get("http.response.status_code")
            .and_then(|v| v.parse().ok());
        entry.has_root |= is_root;
    }
}

fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn unix_nano(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Keeps this process's spans in a [`TraceStore`].
#[derive(Debug)]
pub struct StoreExporter {
    store: Arc<TraceStore>,
    resource_service: String,
}

impl StoreExporter {
    pub fn new(store: Arc<TraceStore>) -> StoreExporter {
        StoreExporter {
            store,
            resource_service: "minicloud".into(),
        }
    }

    fn convert(&self, span: SpanData) -> StoredSpan {
        // What `tracing` adds to every span (source location, thread, busy/idle
        // times) says nothing about the request and would double a span's size.
        let attributes: BTreeMap<String, String> = span
            .attributes
            .iter()
            .filter(|kv| {
                let key = kv.key.as_str();
                !(key.starts_with("code.")
                    || key.starts_with("thread.")
                    || matches!(key, "busy_ns" | "idle_ns" | "target"))
            })
            .map(|kv| (kv.key.as_str().to_owned(), kv.value.to_string()))
            .collect();
        let parent = span.parent_span_id;
        let (status, status_message) = match &span.status {
            Status::Unset => (SpanStatus::Unset, None),
            Status::Ok => (SpanStatus::Ok, None),
            Status::Error { description } => (
                SpanStatus::Error,
                Some(description.to_string()).filter(|d| !d.is_empty()),
            ),
        };
        StoredSpan {
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: (parent != opentelemetry::trace::SpanId::INVALID)
                .then(|| parent.to_string()),
            name: span.name.into_owned(),
            service: attributes
                .get("minicloud.service")
                .cloned()
                .unwrap_or_else(|| self.resource_service.clone()),
            kind: kind_name(&span.span_kind).to_owned(),
            start_unix_nano: unix_nano(span.start_time),
            end_unix_nano: unix_nano(span.end_time),
            status,
            status_message,
            attributes,
        }
    }
}

impl SpanExporter for StoreExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans: Vec<StoredSpan> = batch.into_iter().map(|s| self.convert(s)).collect();
        self.store.insert(spans);
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(name) = resource.get(&opentelemetry::Key::new("service.name")) {
            self.resource_service = name.to_string();
        }
    }
}

/// Spans an OTLP client sent (a function's), as stored; `ingested_by` is recorded on
/// each, so a span is always traceable to the credential that sent it.
pub fn from_otlp(
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    ingested_by: &str,
) -> Vec<StoredSpan> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource_service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_else(|| "function".into());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                if span.trace_id.len() != 16 || span.span_id.len() != 8 {
                    continue;
                }
                let mut attributes: BTreeMap<String, String> = span
                    .attributes
                    .iter()
                    .take(128)
                    .map(|kv| {
                        (
                            kv.key.chars().take(256).collect(),
                            text(&kv.value).chars().take(4096).collect(),
                        )
                    })
                    .collect();
                attributes.insert("minicloud.ingested_by".into(), ingested_by.to_owned());
                let (status, status_message) = match span.status.as_ref() {
                    Some(s) if s.code == 2 => (
                        SpanStatus::Error,
                        Some(s.message.clone()).filter(|m| !m.is_empty()),
                    ),
                    Some(s) if s.code == 1 => (SpanStatus::Ok, None),
                    _ => (SpanStatus::Unset, None),
                };
                let kind = match span.kind {
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "internal",
                };
                out.push(StoredSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: (span.parent_span_id.len() == 8
                        && span.parent_span_id.iter().any(|b| *b != 0))
                    .then(|| hex::encode(&span.parent_span_id)),
                    name: span.name.chars().take(512).collect(),
                    service: resource_service.chars().take(128).collect(),
                    kind: kind.to_owned(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano.max(span.start_time_unix_nano),
                    status,
                    status_message,
                    attributes,
                });
            }
        }
    }
    out
}

/// Seconds since the epoch as the store's nanoseconds (for `since=` filters).
pub fn unix_nano_of_seconds(seconds: u64) -> u64 {
    seconds.saturating_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_unix_nano() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// A span of `trace` under `parent`.
    fn sample_span(
        trace: u128,
        span: u64,
        parent: Option<u64>,
        service: &str,
        name: &str,
    ) -> StoredSpan {
        let start = now_unix_nano();
        StoredSpan {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{span:016x}"),
            parent_span_id: parent.map(|p| format!("{p:016x}")),
            name: name.to_owned(),
            service: service.to_owned(),
            kind: "server".into(),
            start_unix_nano: start,
            end_unix_nano: start + 1_000_000,
            status: SpanStatus::Unset,
            status_message: None,
            attributes: BTreeMap::from([
                ("minicloud.service".to_owned(), service.to_owned()),
                ("http.request.method".to_owned(), "GET".to_owned()),
                ("request_id".to_owned(), format!("req_{trace:032x}")),
            ]),
        }
    }

    #[test]
    fn traces_are_kept_whole_and_the_oldest_go_first() {
        let store = TraceStore::new(TraceStoreLimits {
            max_spans: 10,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        for trace in 0..5u128 {
            store.insert([
                sample_span(trace, 1, None, "gateway", "GET /a"),
                sample_span(trace, 2, Some(1), "storage", "GET /a"),
                sample_span(trace, 3, Some(2), "storage", "sql"),
            ]);
        }
        // 15 spans offered, 10 allowed: the two oldest traces went, whole.
        assert_eq!(store.usage().0, 9);
        assert!(store.trace(&format!("{:032x}", 0)).is_none());
        assert!(store.trace(&format!("{:032x}", 1)).is_none());
        assert_eq!(store.trace(&format!("{:032x}", 4)).unwrap().len(), 3);
        let listed = store.list(&TraceFilter {
            limit: 10,
            ..TraceFilter::default()
        });
        let ids: Vec<_> = listed.iter().map(|t| t.trace_id.clone()).collect();
        assert_eq!(
            ids,
            [4u128, 3, 2].map(|t| format!("{t:032x}")),
            "newest first"
        );
        assert_eq!(listed[0].services, ["gateway", "storage"]);
        assert_eq!(listed[0].span_count, 3);
        assert_eq!(listed[0].root_name, "GET /a");
    }

    #[test]
    fn filters_narrow_the_list() {
        let store = TraceStore::new(TraceStoreLimits::default());
        let mut failed = sample_span(1, 1, None, "gateway", "PUT /storage/v1/object");
        failed.status = SpanStatus::Error;
        failed.end_unix_nano = failed.start_unix_nano + 250_000_000;
        store.insert([failed, sample_span(2, 1, None, "docdb", "GET /db/v1/x")]);
        let list = |filter: TraceFilter| {
            store
                .list(&TraceFilter {
                    limit: 10,
                    ..filter
                })
                .into_iter()
                .map(|t| t.trace_id)
                .collect::<Vec<_>>()
        };
        let first = format!("{:032x}", 1);
        let second = format!("{:032x}", 2);
        assert_eq!(
            list(TraceFilter {
                error: Some(true),
                ..Default::default()
            }),
            vec![first.clone()]
        );
        assert_eq!(
            list(TraceFilter {
                service: Some("docdb".into()),
                ..Default::default()
            }),
            vec![second.clone()]
        );
        assert_eq!(
            list(TraceFilter {
                min_duration: Some(Duration::from_millis(100)),
                ..Default::default()
            }),
            vec![first.clone()]
        );
        assert_eq!(
            list(TraceFilter {
                route: Some("/db/v1".into()),
                ..Default::default()
            }),
            vec![second.clone()]
        );
        assert_eq!(
            list(TraceFilter {
                text: Some("req_".into()),
                ..Default::default()
            })
            .len(),
            2
        );
        assert_eq!(
            store.trace_of_request(&format!("req_{:032x}", 2)),
            Some(second)
        );
    }

    #[test]
    fn text_search_ignores_case_and_sees_names_and_attribute_values() {
        let store = TraceStore::new(TraceStoreLimits::default());
        let mut span = sample_span(1, 1, None, "storage", "PUT /Storage/v1");
        span.attributes
            .insert("url.path".into(), "/storage/v1/object/Ünïcode/xxABC".into());
        store.insert([span, sample_span(2, 2, None, "docdb", "GET /db/v1")]);
        let found = |text: &str| {
            store
                .list(&TraceFilter {
                    text: Some(text.to_lowercase()),
                    limit: 10,
                    ..TraceFilter::default()
                })
                .len()
        };
        assert_eq!(found("STORAGE/v1"), 1);
        assert_eq!(found("xxabc"), 1);
        assert_eq!(found("ünïcode"), 1);
        assert_eq!(found("xxabd"), 0);
        // Attribute values count, their keys do not.
        assert_eq!(found("url.path"), 0);
        assert_eq!(found("req_"), 2);
        assert_eq!(found(""), 2);
    }

    #[test]
    fn the_byte_bound_holds() {
        let store = TraceStore::new(TraceStoreLimits {
            max_spans: usize::MAX,
            max_bytes: 100_000,
            max_age: Duration::from_secs(3600),
        });
        for trace in 0..10_000u128 {
            store.insert([sample_span(trace, 1, None, "gateway", "GET /")]);
        }
        let (spans, bytes) = store.usage();
        assert!(
            bytes <= 100_000 && spans > 50,
            "{spans} spans, {bytes} bytes"
        );
    }
}
