//! An in-process OTLP/gRPC trace receiver: tests point the exporter at it and read
//! back the spans every service exported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub name: String,
    /// OTLP span kind: 2 server, 3 client.
    pub kind: i32,
    /// `service.name` of the exporting resource.
    pub resource_service: String,
    pub attributes: Vec<(String, String)>,
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The spans of one trace, with the lookups trace tests make.
#[derive(Debug)]
pub struct Trace<'a> {
    pub root: &'a ReceivedSpan,
    pub spans: Vec<&'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    /// The trace `root` starts (it must have no parent), out of every span received.
    pub fn of(root: &'a ReceivedSpan, all: &'a [ReceivedSpan]) -> Trace<'a> {
        assert!(
            root.parent_span_id.is_empty(),
            "{} does not start its trace: {root:?}",
            root.name
        );
        Trace {
            root,
            spans: all.iter().filter(|s| s.trace_id == root.trace_id).collect(),
        }
    }

    pub fn by_id(&self, id: &[u8]) -> Option<&'a ReceivedSpan> {
        self.spans.iter().find(|s| s.span_id == id).copied()
    }

    /// `span`'s parent; panics if it is not in the trace.
    pub fn parent_of(&self, span: &ReceivedSpan) -> &'a ReceivedSpan {
        self.by_id(&span.parent_span_id).unwrap_or_else(|| {
            panic!(
                "the parent of {} is not in the trace: {:#?}",
                span.name,
                self.names()
            )
        })
    }

    /// Whether `ancestor` is on `span`'s parent chain.
    pub fn descends(&self, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
        let mut at = span;
        while let Some(parent) = self.by_id(&at.parent_span_id) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            at = parent;
        }
        false
    }

    /// The first span matching `predicate`; panics naming `what` and the trace if none.
    pub fn find(&self, what: &str, predicate: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
        self.spans
            .iter()
            .copied()
            .find(|s| predicate(s))
            .unwrap_or_else(|| panic!("no {what} span in {:#?}", self.names()))
    }

    /// Whether every span but the root has its parent in the trace (for waiting until
    /// the last exporter has delivered).
    pub fn is_connected(&self) -> bool {
        self.spans.iter().all(|span| {
            span.span_id == self.root.span_id || self.by_id(&span.parent_span_id).is_some()
        })
    }

    /// Every span but the root has its parent in the trace: one connected tree.
    /// Panics naming the first span whose parent is missing.
    pub fn assert_connected(&self) {
        for span in &self.spans {
            if span.span_id != self.root.span_id {
                self.parent_of(span);
            }
        }
    }

    /// `name [resource|minicloud.service]` of each span, for failure messages.
    pub fn names(&self) -> Vec<String> {
        self.spans
            .iter()
            .map(|s| {
                format!(
                    "{} [{}|{}]",
                    s.name,
                    s.resource_service,
                    s.attribute("minicloud.service").unwrap_or_default()
                )
            })
            .collect()
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        name: span.name,
                        kind: span.kind,
                        resource_service: service.clone(),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect(),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(received);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub struct OtlpReceiver {
    pub endpoint: String,
    collector: Collector,
    stop: CancellationToken,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver").finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let collector = Collector::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Ok(OtlpReceiver {
            endpoint,
            collector,
            stop,
        })
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until `done` holds for the received spans, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
