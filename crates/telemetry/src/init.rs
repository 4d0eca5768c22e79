//! One setup function for logs and traces.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `service.name` of the OTLP resource, e.g. `minicloud-storage`, or `minicloud`
    /// when all services share one process.
    pub service_name: String,
    /// OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); no export when unset.
    pub otlp_endpoint: Option<String>,
    /// Log lines as JSON objects instead of text.
    pub json_logs: bool,
}

impl TelemetryConfig {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT` and `MINICLOUD_LOG_FORMAT=json`.
    pub fn from_env(service_name: impl Into<String>) -> Self {
        TelemetryConfig {
            service_name: service_name.into(),
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|s| !s.is_empty()),
            json_logs: std::env::var("MINICLOUD_LOG_FORMAT").is_ok_and(|v| v == "json"),
        }
    }
}

/// Flushes and shuts the trace pipeline down when dropped or on [`TelemetryGuard::shutdown`].
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("trace export shutdown failed: {error}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs the global subscriber (env filter from `RUST_LOG`, default `info`),
/// the W3C propagator, and the OTLP exporter when an endpoint is configured.
/// Must be called inside a Tokio runtime when exporting (the tonic channel lives on it).
/// A second call in the same process keeps the first subscriber and returns a guard
/// that owns nothing.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,sqlx=warn,opentelemetry=warn")
    });
    let fmt_layer = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    };

    let provider = config.otlp_endpoint.as_deref().and_then(|endpoint| {
        match build_provider(&config.service_name, endpoint) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("OTLP exporter not started: {error}");
                None
            }
        }
    });
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("minicloud"))
            .with_error_records_to_exceptions(true)
    });

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if !installed {
        return TelemetryGuard { provider: None };
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    TelemetryGuard { provider }
}

fn build_provider(
    service_name: &str,
    endpoint: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
