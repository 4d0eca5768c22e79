//! The gateway: the one public entry. Routes each API prefix to its service (and
//! SigV4-signed requests elsewhere to storage's S3 API) with
//! streaming bodies, adds request ids, CORS, forwarding headers and the root span,
//! and reports every service's readiness at `/readyz`.

mod console;
mod proxy;
mod traces;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use futures::FutureExt as _;
use minicloud_proto::health::v1::HealthCheckRequest;
use minicloud_proto::health::v1::health_check_response::ServingStatus;
use minicloud_proto::health::v1::health_client::HealthClient;
use minicloud_proto::services::{PerService, ServiceName};
use minicloud_telemetry::grpc_client::TracedChannel;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, Service, ServiceHost};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use proxy::Upstreams;

/// The gateway's own settings; where the services are comes with the service URLs
/// every process is given (`--service-url`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewayConfig {
    /// Reverse proxies in front of the gateway whose `X-Forwarded-For` entries are
    /// believed: the client is that many hops left of the peer. 0 (default): the
    /// peer itself, whatever the request claims.
    #[arg(
        long = "gateway-trusted-proxies",
        env = "MINICLOUD_GATEWAY_TRUSTED_PROXIES",
        default_value_t = 0
    )]
    pub trusted_proxies: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid upstream URL {url}: {reason}")]
    BadUpstream { url: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Gateway {
    upstreams: Upstreams,
    health: Arc<Vec<(&'static str, HealthClient<TracedChannel>)>>,
    authz: Arc<minicloud_authz::Authz>,
    /// The store every process shares (`serve`); `None`: this process's own (`up`).
    shared_store: Option<minicloud_telemetry::shared_store::SharedStore>,
}

use minicloud_proto::openapi::ErrorResponses;

/// The gateway's own API (the traces it keeps), at `/traces/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud traces",
        description = "The traces minicloud keeps (the console's): query them with the service key; functions send theirs over OTLP."
    ),
    paths(traces::list, traces::get, traces::logs, traces::receive_http)
)]
#[derive(Debug)]
pub struct TracesApiDoc;

impl Gateway {
    /// A gateway in front of the services at `urls` (the gateway's own is unused).
    pub fn new(
        config: &GatewayConfig,
        urls: &PerService<String>,
        authz: Arc<minicloud_authz::Authz>,
    ) -> Result<Gateway, GatewayError> {
        let mut health = Vec::new();
        for service in ServiceName::BEHIND_GATEWAY {
            let (name, url) = (service.as_str(), &urls[service]);
            let channel =
                TracedChannel::connect_lazy(name, url).map_err(|e| GatewayError::BadUpstream {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            health.push((name, HealthClient::new(channel)));
        }
        Ok(Gateway {
            upstreams: Upstreams::new(config, urls)?,
            health: Arc::new(health),
            authz,
            shared_store: None,
        })
    }

    /// Answers `/traces/v1` from the store every process shares (each forwards its
    /// spans and lines there) instead of this process's own.
    pub fn with_shared_store(
        mut self,
        store: minicloud_telemetry::shared_store::SharedStore,
    ) -> Gateway {
        self.shared_store = Some(store);
        self
    }

    /// Dispatches `service`'s requests into `router` — the service's own
    /// `into_router()`, in this process — instead of to its URL. Readiness still asks
    /// the service's gRPC health at the URL.
    pub fn in_process(mut self, service: ServiceName, router: Router) -> Gateway {
        self.upstreams.set_in_process(service, router);
        self
    }

    /// Every service's gRPC health, asked concurrently.
    fn readiness(&self) -> Readiness {
        let health = Arc::clone(&self.health);
        Arc::new(move || {
            let health = Arc::clone(&health);
            async move {
                let checks = health.iter().map(|(name, client)| {
                    let mut client = client.clone();
                    async move {
                        let result = tokio::time::timeout(
                            Duration::from_millis(1500),
                            client.check(HealthCheckRequest {
                                service: String::new(),
                            }),
                        )
                        .await;
                        let result = match result {
                            Ok(Ok(response))
                                if response.get_ref().status == ServingStatus::Serving as i32 =>
                            {
                                Ok(())
                            }
                            Ok(Ok(_)) => Err("not serving".to_owned()),
                            Ok(Err(status)) => Err(status.to_string()),
                            Err(_) => Err("timed out".to_owned()),
                        };
                        DependencyCheck {
                            name: (*name).to_owned(),
                            result,
                        }
                    }
                });
                let mut results = vec![DependencyCheck {
                    name: "gateway".into(),
                    result: Ok(()),
                }];
                results.extend(futures::future::join_all(checks).await);
                results
            }
            .boxed()
        })
    }
}

impl Service for Gateway {
    const NAME: ServiceName = ServiceName::Gateway;

    fn host(self) -> ServiceHost {
        let readiness = self.readiness();
        let mut rest = Router::new();
        for prefix in ServiceName::BEHIND_GATEWAY
            .iter()
            .flat_map(|service| service.public_prefixes())
        {
            rest = rest
                .route(prefix, any(proxy::forward))
                .route(&format!("{prefix}/{{*rest}}"), any(proxy::forward));
        }
        // Everything else may be the S3 API (signed, at any path); the proxy decides.
        let rest = rest
            .route("/", any(proxy::forward))
            .route("/{*rest}", any(proxy::forward))
            .with_state(Arc::new(self.upstreams));
        let traces_state = traces::TracesState {
            authz: Arc::clone(&self.authz),
            ingest: Arc::clone(minicloud_telemetry::trace_store::TraceStore::global()),
            kept: match self.shared_store.clone() {
                Some(shared) => traces::Kept::Shared(shared),
                None => traces::Kept::InProcess {
                    traces: Arc::clone(minicloud_telemetry::trace_store::TraceStore::global()),
                    logs: Arc::clone(minicloud_telemetry::log_store::LogStore::global()),
                },
            },
        };
        let spec = bytes::Bytes::from(
            serde_json::to_vec(&<TracesApiDoc as utoipa::OpenApi>::openapi()).unwrap_or_default(),
        );
        let traces = Router::new()
            .route("/traces/v1/traces", get(traces::list))
            .route("/traces/v1/traces/{trace_id}", get(traces::get))
            .route("/traces/v1/logs", get(traces::logs))
            .route("/v1/traces", post(traces::receive_http))
            .route(
                "/traces/v1/openapi.json",
                get(move || {
                    let spec = spec.clone();
                    async move { ([(http::header::CONTENT_TYPE, "application/json")], spec) }
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(
                traces::MAX_EXPORT_BYTES,
            ))
            .with_state(traces_state.clone());
        let console = Router::new()
            .route("/console", get(console::index))
            .route("/console/", get(console::index))
            .route("/console/console.js", get(console::script))
            .route("/console/console.css", get(console::style));
        let rest = traces.merge(console).merge(rest);
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            ServiceMetrics::new("gateway", |_| {}),
        )
        .grpc(
            opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
                traces::OtlpGrpc(traces_state),
            )
            .max_decoding_message_size(traces::MAX_EXPORT_BYTES),
        )
    }

    fn into_router(self) -> Router {
        self.host().into_router().layer(cors())
    }
}

/// CORS for browser apps: any origin (credentials are bearer tokens, never cookies),
/// the headers the APIs read, and the ones clients need to see.
fn cors() -> CorsLayer {
    use http::{HeaderName, Method};
    let allow = [
        "authorization",
        "content-type",
        "x-request-id",
        "if-match",
        "if-none-match",
        "range",
        "x-upsert",
        "traceparent",
        "tracestate",
        "x-amz-invocation-type",
        "x-amz-log-type",
        "x-amz-client-context",
        "apikey",
        "x-client-info",
        "cache-control",
    ];
    let expose = [
        "x-request-id",
        "etag",
        "content-range",
        "content-length",
        "retry-after",
        "x-amz-function-error",
        "x-amz-log-result",
        "x-amz-executed-version",
        "location",
    ];
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(allow.map(HeaderName::from_static))
        .expose_headers(expose.map(HeaderName::from_static))
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::TracesApiDoc>("traces");
    }
}
