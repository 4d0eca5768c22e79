//! Invoker metrics per function: invocations, errors, throttles, duration, cold
//! starts and concurrent executions.

use std::sync::Arc;

use minicloud_telemetry::metrics::ServiceMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

fn duration() -> Histogram {
    // 100 µs to ~15 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 18,
    ))
}

#[derive(Debug, Clone)]
pub struct InvokerMetrics {
    pub invocations: Family<FunctionLabel, Counter>,
    pub errors: Family<FunctionLabel, Counter>,
    pub throttles: Family<FunctionLabel, Counter>,
    pub cold_starts: Family<FunctionLabel, Counter>,
    pub duration: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    pub concurrent: Family<FunctionLabel, Gauge>,
}

impl InvokerMetrics {
    /// The service's registry with the invoker series in it.
    pub fn new(meters: &minicloud_metering::Meters) -> (Arc<ServiceMetrics>, InvokerMetrics) {
        let invoker = InvokerMetrics {
            invocations: Family::default(),
            errors: Family::default(),
            throttles: Family::default(),
            cold_starts: Family::default(),
            duration: Family::new_with_constructor(duration),
            concurrent: Family::default(),
        };
        let m = invoker.clone();
        let service = ServiceMetrics::new("invoker", move |registry| {
            meters.register_metrics(registry);
            registry.register("invoker_invocations", "Invocations that ran", m.invocations);
            registry.register(
                "invoker_errors",
                "Invocations that ended in a function or runtime error",
                m.errors,
            );
            registry.register(
                "invoker_throttles",
                "Sync invocations refused past the concurrency limit",
                m.throttles,
            );
            registry.register(
                "invoker_cold_starts",
                "Invocations that started an instance",
                m.cold_starts,
            );
            registry.register(
                "invoker_duration_seconds",
                "Time the function took per invocation",
                m.duration,
            );
            registry.register(
                "invoker_concurrent_executions",
                "Invocations running now",
                m.concurrent,
            );
        });
        (service, invoker)
    }
}
