//! The gateway: the one public entry. Routes each API prefix to its service with
//! streaming bodies, adds request ids, CORS, forwarding headers and the root span,
//! and reports every service's readiness at `/readyz`.

mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use futures::FutureExt as _;
use minicloud_proto::health::v1::HealthCheckRequest;
use minicloud_proto::health::v1::health_check_response::ServingStatus;
use minicloud_proto::health::v1::health_client::HealthClient;
use minicloud_telemetry::grpc_client::TracedChannel;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Readiness, ServiceHost};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use proxy::{Service, Upstreams};

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    #[arg(
        id = "gateway_auth_url",
        long = "gateway-auth-url",
        env = "MINICLOUD_GATEWAY_AUTH_URL",
        default_value = "http://127.0.0.1:4601"
    )]
    pub auth_url: String,
    #[arg(
        id = "gateway_storage_url",
        long = "gateway-storage-url",
        env = "MINICLOUD_GATEWAY_STORAGE_URL",
        default_value = "http://127.0.0.1:4602"
    )]
    pub storage_url: String,
    #[arg(
        id = "gateway_docdb_url",
        long = "gateway-docdb-url",
        env = "MINICLOUD_GATEWAY_DOCDB_URL",
        default_value = "http://127.0.0.1:4603"
    )]
    pub docdb_url: String,
    #[arg(
        id = "gateway_bus_url",
        long = "gateway-bus-url",
        env = "MINICLOUD_GATEWAY_BUS_URL",
        default_value = "http://127.0.0.1:4604"
    )]
    pub bus_url: String,
    #[arg(
        id = "gateway_invoker_url",
        long = "gateway-invoker-url",
        env = "MINICLOUD_GATEWAY_INVOKER_URL",
        default_value = "http://127.0.0.1:4605"
    )]
    pub invoker_url: String,
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
}

impl Gateway {
    pub fn new(config: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let services = [
            ("auth", &config.auth_url),
            ("storage", &config.storage_url),
            ("docdb", &config.docdb_url),
            ("bus", &config.bus_url),
            ("invoker", &config.invoker_url),
        ];
        let mut health = Vec::new();
        for (name, url) in services {
            let channel =
                TracedChannel::connect_lazy(name, url).map_err(|e| GatewayError::BadUpstream {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            health.push((name, HealthClient::new(channel)));
        }
        Ok(Gateway {
            upstreams: Upstreams::new(config)?,
            health: Arc::new(health),
        })
    }

    /// Dispatches `service`'s requests into `router` — the service's own
    /// `into_router()`, in this process — instead of to its URL. Readiness still asks
    /// the service's gRPC health at the URL.
    pub fn in_process(mut self, service: Service, router: Router) -> Gateway {
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

    pub fn into_router(self) -> Router {
        let readiness = self.readiness();
        let mut rest = Router::new();
        for prefix in proxy::PREFIXES {
            rest = rest
                .route(prefix, any(proxy::forward))
                .route(&format!("{prefix}/{{*rest}}"), any(proxy::forward));
        }
        let rest = rest.with_state(Arc::new(self.upstreams));
        ServiceHost::new(
            "gateway",
            rest,
            readiness,
            ServiceMetrics::new("gateway", |_| {}),
        )
        .into_router()
        .layer(cors())
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

pub async fn run(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    minicloud_telemetry::server::serve(listener, gateway.into_router(), shutdown.cancelled_owned())
        .await
}
