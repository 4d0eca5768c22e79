//! One setup function for logs and traces.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
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
    /// Keep this process's spans and log lines ([`crate::trace_store::TraceStore::global`],
    /// [`crate::log_store::LogStore::global`]: the console's traces and logs);
    /// `MINICLOUD_TRACES=off` turns it off.
    pub keep_traces: bool,
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
            keep_traces: !std::env::var("MINICLOUD_TRACES").is_ok_and(|v| v == "off"),
        }
    }
}

/// Flushes and shuts the trace pipeline down when dropped or on [`TelemetryGuard::shutdown`].
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    keeper: Option<Arc<crate::span_keeper::SpanKeeper>>,
}

impl TelemetryGuard {
    /// Exports (or keeps) every finished span now.
    pub fn flush(&self) {
        if let Some(keeper) = &self.keeper {
            keeper.flush();
        }
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
        if let Some(keeper) = self.keeper.take() {
            keeper.flush();
        }
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

    const QUIET: &str = "info,h2=warn,hyper=warn,tower=warn,sqlx=warn,opentelemetry=warn";
    // What is printed: `RUST_LOG`, by default without the per-request access lines.
    let printed = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(format!("{QUIET},minicloud_access=off")))
    };
    // What is kept for the console: access lines included, whatever is printed.
    // `Targets`, not `EnvFilter`: a static filter, where an `EnvFilter` in a layer
    // also tracks every span it enables on each enter and exit (every poll) for its
    // span-scoped directives, which these filters have none of.
    let kept = || {
        Targets::new().with_default(LevelFilter::INFO).with_targets(
            ["h2", "hyper", "tower", "sqlx", "opentelemetry"]
                .map(|target| (target, LevelFilter::WARN)),
        )
    };
    let kept_spans = || kept().with_target("minicloud_access", LevelFilter::OFF);
    let fmt_layer = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    };

    // Keeping traces without exporting them elsewhere (the default): the span
    // keeper, several times cheaper per span than the OpenTelemetry pipeline
    // (crate::span_keeper). With a collector, the OpenTelemetry SDK exports and
    // keeps.
    let keeper = (config.keep_traces && config.otlp_endpoint.is_none()).then(|| {
        crate::span_keeper::SpanKeeper::new(
            Arc::clone(crate::trace_store::TraceStore::global()),
            config.service_name.clone(),
        )
    });
    let provider = if keeper.is_some() {
        None
    } else {
        build_provider(config)
    };
    let otel_layer = provider.as_ref().map(|provider| {
        // Source locations, threads and busy/idle times on every span cost time on
        // every request and say nothing about it. Context activation attaches an
        // OpenTelemetry context on every enter of a span — every poll of an
        // instrumented future — for code that reads `Context::current()`; nothing
        // here does (propagation reads the span's own context), so it is off.
        tracing_opentelemetry::layer()
            .with_context_activation(false)
            .with_tracer(provider.tracer("minicloud"))
            .with_error_records_to_exceptions(true)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
    });

    // The kept log lines and, without a collector, the span keeper: one layer. A
    // per-layer filter looks the span up in the registry again on every enter and
    // exit (every poll of an instrumented future) and on every record, so each one
    // costs every request; the kept layer does without one when it can: when all
    // that is printed is also kept (the default, or a `RUST_LOG` of plain levels no
    // more verbose than `warn`), `kept` becomes the subscriber's global filter and
    // the kept layer sees exactly what it passes. Otherwise (`RUST_LOG=debug`, say)
    // it is filtered on its own, as the printed lines are. The keeper sees the
    // access lines too, and ignores them (it only reads errors).
    let kept_is_global = config.keep_traces && printed_is_kept(std::env::var("RUST_LOG").ok());
    let kept_global = kept_is_global.then(kept);
    let kept_unfiltered = kept_is_global.then(|| kept_layer(keeper.as_ref()));
    let kept_filtered = (config.keep_traces && !kept_is_global)
        .then(|| kept_layer(keeper.as_ref()).with_filter(kept()));
    // The access line is a log line, not a span event: kept out of the span
    // pipeline, where each event would be copied into its span.
    let otel_layer = otel_layer.map(|layer| {
        let spans = if config.keep_traces {
            FilterExt::boxed(kept_spans())
        } else {
            FilterExt::boxed(printed())
        };
        layer.with_filter(spans)
    });
    let installed = tracing_subscriber::registry()
        .with(kept_global)
        .with(fmt_layer.with_filter(printed()))
        .with(kept_filtered)
        .with(kept_unfiltered)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if !installed {
        return TelemetryGuard {
            provider: None,
            keeper: None,
        };
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    TelemetryGuard { provider, keeper }
}

/// The layer keeping log lines and, with a keeper, spans.
fn kept_layer<S>(keeper: Option<&Arc<crate::span_keeper::SpanKeeper>>) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    crate::log_store::LogStoreLayer::new(Arc::clone(crate::log_store::LogStore::global()))
        .and_then(keeper.map(|keeper| keeper.layer()))
}

/// Whether everything `RUST_LOG` (unset: the default) prints is also kept, which
/// lets the kept filter be the subscriber's global one: directives of plain levels
/// no more verbose than `warn` (the kept filter passes every `warn` and `error`).
/// Anything else, or what only an `EnvFilter` parses (span and field directives),
/// is not known to be.
fn printed_is_kept(rust_log: Option<String>) -> bool {
    let Some(rust_log) = rust_log else {
        return true;
    };
    let Ok(targets) = rust_log.parse::<Targets>() else {
        return false;
    };
    targets
        .default_level()
        .into_iter()
        .chain(targets.iter().map(|(_, level)| level))
        .all(|level| level <= LevelFilter::WARN)
}

/// The span pipeline: the in-process store and/or the OTLP exporter, each batched;
/// none when neither is wanted.
fn build_provider(config: &TelemetryConfig) -> Option<SdkTracerProvider> {
    let otlp = config.otlp_endpoint.as_deref().and_then(|endpoint| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .inspect_err(|error| eprintln!("OTLP exporter not started: {error}"))
            .ok()
    });
    if otlp.is_none() && !config.keep_traces {
        return None;
    }
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(exporter) = otlp {
        builder = builder.with_batch_exporter(exporter);
    }
    if config.keep_traces {
        builder = builder.with_batch_exporter(crate::trace_store::StoreExporter::new(Arc::clone(
            crate::trace_store::TraceStore::global(),
        )));
    }
    Some(builder.build())
}

#[cfg(test)]
mod tests {
    use super::printed_is_kept;

    #[test]
    fn only_what_is_surely_kept_makes_the_kept_filter_global() {
        for kept in [
            None,
            Some(""),
            Some("warn"),
            Some("error,sqlx=off"),
            Some("h2=warn"),
        ] {
            assert!(printed_is_kept(kept.map(str::to_owned)), "{kept:?}");
        }
        for printed_more in [
            "info",
            "debug",
            "warn,minicloud_storage=debug",
            "h2=info",
            "warn,[request]=debug",
            "warn,x[{a=1}]=info",
        ] {
            assert!(
                !printed_is_kept(Some(printed_more.to_owned())),
                "{printed_more}"
            );
        }
    }
}
