//! Prometheus metrics, one registry per service so that `/metrics` of each service
//! shows that service's series even when all six share a process.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~13 s: warm calls sit at the low end, function timeouts at the top.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 19,
    ))
}

#[derive(Debug)]
pub struct ServiceMetrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl ServiceMetrics {
    /// The standard HTTP/gRPC request series plus whatever `register_more` adds.
    pub fn new(service: &str, register_more: impl FnOnce(&mut Registry)) -> Arc<Self> {
        let service_label = [(Cow::Borrowed("service"), Cow::Owned(service.to_owned()))];
        let mut registry = Registry::with_prefix_and_labels("minicloud", service_label.into_iter());
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_requests",
            "Requests served, REST and gRPC",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head",
            http_duration.clone(),
        );
        register_more(&mut registry);
        Arc::new(ServiceMetrics {
            registry,
            http_requests,
            http_duration,
        })
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
