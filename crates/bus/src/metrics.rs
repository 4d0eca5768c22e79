//! Bus metrics: published, delivered, retried and dead-lettered events, delivery
//! latency, and consumer lag per subscription.

use std::sync::Arc;

use minicloud_telemetry::metrics::ServiceMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabel {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SubscriptionLabel {
    pub subscription: String,
}

fn latency() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

#[derive(Debug, Clone)]
pub(crate) struct BusMetrics {
    pub published: Family<TopicLabel, Counter>,
    pub delivered: Family<SubscriptionLabel, Counter>,
    pub retried: Family<SubscriptionLabel, Counter>,
    pub dead_lettered: Family<SubscriptionLabel, Counter>,
    /// From publish (the stream id's time) to a successful delivery.
    pub delivery_latency: Family<SubscriptionLabel, Histogram, fn() -> Histogram>,
    /// Entries of the topic not yet delivered to the subscription.
    pub lag: Family<SubscriptionLabel, Gauge>,
}

impl BusMetrics {
    /// The service's registry with the bus series in it.
    pub(crate) fn new(meters: &minicloud_metering::Meters) -> (Arc<ServiceMetrics>, BusMetrics) {
        let bus = BusMetrics {
            published: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            delivery_latency: Family::new_with_constructor(latency),
            lag: Family::default(),
        };
        let registered = bus.clone();
        let service = ServiceMetrics::new("bus", move |registry| {
            meters.register_metrics(registry);
            registry.register(
                "bus_published_events",
                "Events stored on a topic",
                registered.published,
            );
            registry.register(
                "bus_delivered_events",
                "Events delivered to a subscription's target",
                registered.delivered,
            );
            registry.register(
                "bus_retried_deliveries",
                "Delivery attempts after the first",
                registered.retried,
            );
            registry.register(
                "bus_dead_lettered_events",
                "Events given up on",
                registered.dead_lettered,
            );
            registry.register(
                "bus_delivery_latency_seconds",
                "Publish to successful delivery",
                registered.delivery_latency,
            );
            registry.register(
                "bus_consumer_lag",
                "Entries not yet delivered to the subscription",
                registered.lag,
            );
        });
        (service, bus)
    }
}
