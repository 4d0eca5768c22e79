//! Streaming reverse proxy to the services: bodies are passed through as they
//! arrive in both directions, never buffered whole. A service running in the
//! gateway's own process (`minicloud up`) is called straight through its router.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use minicloud_proto::error::{ApiError, ErrorCode};
use minicloud_proto::services::{PerService, ServiceName};
use std::sync::Arc;
use tower::ServiceExt as _;
use tracing::Instrument;

use crate::{GatewayConfig, GatewayError};

/// Time to the response head; functions may run for up to 15 minutes.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(15 * 60 + 10);
const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where one service's requests go.
#[derive(Clone)]
enum Upstream {
    Remote(Uri),
    /// The service's own router in this process: no loopback HTTP hop (measured at
    /// 65–100 µs per request on two cores, a third of a warm function call), and
    /// bodies are handed over without being re-framed.
    InProcess(Router),
}

#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpConnector, Body>,
    /// `None` for the gateway itself.
    services: PerService<Option<Upstream>>,
    trusted_proxies: usize,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

/// The header in which the gateway tells services the client's address: set here
/// on every request (a client's own is replaced), read by auth's rate limits.
pub(crate) const CLIENT_IP_HEADER: &str = "x-minicloud-client-ip";

/// The client's address: the peer, or with `trusted` proxies in front, the entry of
/// `X-Forwarded-For` that many hops left of it (the leftmost if the chain is
/// shorter). Entries further left are the client's own claims and never believed.
pub(crate) fn client_address(
    forwarded_for: Option<&str>,
    peer: std::net::IpAddr,
    trusted: usize,
) -> std::net::IpAddr {
    if trusted == 0 {
        return peer;
    }
    let mut chain: Vec<std::net::IpAddr> = forwarded_for
        .unwrap_or_default()
        .split(',')
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    chain.push(peer);
    let index = chain.len().saturating_sub(1 + trusted);
    chain[index]
}

fn parse(url: &str) -> Result<Uri, GatewayError> {
    let uri: Uri = url
        .trim_end_matches('/')
        .parse()
        .map_err(|e: http::uri::InvalidUri| GatewayError::BadUpstream {
            url: url.into(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(GatewayError::BadUpstream {
            url: url.into(),
            reason: "expected http://host:port".into(),
        });
    }
    Ok(uri)
}

impl Upstreams {
    pub fn new(
        config: &GatewayConfig,
        urls: &PerService<String>,
    ) -> Result<Upstreams, GatewayError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let mut services = PerService::default();
        for service in ServiceName::BEHIND_GATEWAY {
            services[service] = Some(Upstream::Remote(parse(&urls[service])?));
        }
        Ok(Upstreams {
            client,
            services,
            trusted_proxies: config.trusted_proxies,
        })
    }

    /// Sends `service`'s requests into `router` (its `into_router()`) instead of over
    /// HTTP.
    pub fn set_in_process(&mut self, service: ServiceName, router: Router) {
        if service != ServiceName::Gateway {
            self.services[service] = Some(Upstream::InProcess(router));
        }
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An S3 API call: signed with SigV4 (header or presigned query) anywhere but the
/// Lambda API's paths, or addressed to a `<bucket>.localhost` host.
fn is_s3_request(parts: &http::request::Parts, owner: Option<ServiceName>) -> bool {
    if owner == Some(ServiceName::Invoker) {
        return false;
    }
    let signed_header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS4-HMAC-SHA256 "));
    let presigned = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Algorithm=")));
    let virtual_host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|host| host.rsplit_once(':').map_or(host, |(name, _)| name))
        .is_some_and(|name| name.len() > ".localhost".len() && name.ends_with(".localhost"));
    signed_header || presigned || (virtual_host && owner.is_none())
}

/// The request's path and query under storage's S3 prefix, bytes unchanged (the
/// signature covers them).
fn s3_uri(uri: &Uri) -> Result<Uri, ApiError> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{path_and_query}", minicloud_proto::services::S3_PREFIX)
        .parse()
        .map_err(|_| ApiError::invalid("malformed request path"))
}

pub(crate) async fn forward(State(upstreams): State<Arc<Upstreams>>, request: Request) -> Response {
    match forward_inner(&upstreams, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward_inner(upstreams: &Upstreams, request: Request) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let (mut parts, body) = request.into_parts();
    let owner = ServiceName::owning(parts.uri.path());
    let owner = if is_s3_request(&parts, owner) {
        parts.uri = s3_uri(&parts.uri)?;
        // An HTTP/1 request with neither length nor chunking has no body (RFC 9112
        // §6.3); s3s checks a signed payload's hash against a declared length, and
        // the hop to storage would otherwise leave it unknown.
        if parts.version <= http::Version::HTTP_11
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
            && !parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        Some(ServiceName::Storage)
    } else {
        owner
    };
    let (routed, upstream) = owner
        .and_then(|service| Some((service, upstreams.services[service].as_ref()?)))
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    let service = routed.as_str();

    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(CLIENT_IP_HEADER);
    if let Some(peer) = peer {
        let previous = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = client_address(previous, peer.ip(), upstreams.trusted_proxies);
        let forwarded = match previous {
            Some(previous) => format!("{previous}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            parts.headers.insert("x-forwarded-for", value);
        }
        if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
            parts.headers.insert(CLIENT_IP_HEADER, value);
        }
    }
    if let Some(host) = parts.headers.get(http::header::HOST).cloned() {
        parts.headers.insert("x-forwarded-host", host);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    parts.headers.remove(http::header::HOST);

    // A hop span times the call to a service elsewhere. Dispatched in-process, the
    // service's request span is the gateway's child directly: a hop span there would
    // time the same call twice, at a span's cost on every request.
    let remote = matches!(upstream, Upstream::Remote(_));
    let span = if remote {
        tracing::info_span!(
            "proxy",
            otel.name = %format!("{} {service}", parts.method),
            otel.kind = "client",
            peer.service = service,
            http.response.status_code = tracing::field::Empty,
        )
    } else {
        tracing::Span::current()
    };
    minicloud_telemetry::trace_context::inject(&span, &mut parts.headers);
    let timeout = if routed == ServiceName::Invoker {
        FUNCTION_TIMEOUT
    } else {
        SERVICE_TIMEOUT
    };
    let response = match upstream {
        Upstream::Remote(base) => {
            let path_and_query = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(base.authority().map(|a| a.as_str()).unwrap_or_default())
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| ApiError::invalid("malformed request path"))?;
            // A request body that fails on the client's side (it stalled past the
            // body-idle timeout, or was cut) is the client's error, not the
            // upstream's: told apart by where the failure came from.
            let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let body = {
                let body_failed = Arc::clone(&body_failed);
                Body::new(http_body_util::BodyExt::map_err(body, move |error| {
                    body_failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    error
                }))
            };
            let outbound = http::Request::from_parts(parts, body);
            let result = tokio::time::timeout(timeout, upstreams.client.request(outbound))
                .instrument(span.clone())
                .await;
            match result {
                Err(_) => None,
                Ok(Err(error)) if body_failed.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(ApiError::invalid(
                        "reading the request body failed (it stalled or was cut off)",
                    )
                    .with_source(error));
                }
                Ok(Err(error)) => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        format!("{service} is unavailable"),
                    )
                    .with_source(error));
                }
                Ok(Ok(response)) => Some(response.map(Body::new)),
            }
        }
        Upstream::InProcess(router) => {
            // A fresh request: the gateway's own extensions (its matched path above
            // all, which axum would prefix to the service's) must not leak in. The
            // service sees the client as its peer, as it would see the gateway.
            let mut outbound = http::Request::new(body);
            *outbound.method_mut() = parts.method;
            *outbound.uri_mut() = parts.uri;
            *outbound.version_mut() = parts.version;
            *outbound.headers_mut() = parts.headers;
            outbound.extensions_mut().insert(ConnectInfo(
                peer.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            ));
            // Not instrumented: this runs inside the gateway's request span already
            // (the middleware's), and entering it again cost an enter and exit of
            // the same span on every poll.
            let call = router.clone().oneshot(outbound);
            match tokio::time::timeout(timeout, call).await {
                Err(_) => None,
                Ok(Ok(response)) => Some(response),
                Ok(Err(infallible)) => match infallible {},
            }
        }
    };
    let Some(response) = response else {
        return Err(ApiError::new(
            ErrorCode::Timeout,
            format!("{service} did not answer in time"),
        ));
    };
    if remote {
        span.record("http.response.status_code", response.status().as_u16());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;

    #[test]
    fn only_trusted_hops_of_x_forwarded_for_are_believed() {
        let peer = "192.0.2.9".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // No trusted proxy: the peer, whatever the client claims.
        assert_eq!(client_address(Some("1.2.3.4"), peer, 0), peer);
        // One trusted proxy (the peer): the entry it appended.
        assert_eq!(
            client_address(Some("6.6.6.6, 203.0.113.7"), peer, 1),
            ip("203.0.113.7")
        );
        // Two: one more hop to the left.
        assert_eq!(
            client_address(Some("6.6.6.6, 203.0.113.7, 198.51.100.1"), peer, 2),
            ip("203.0.113.7")
        );
        // A shorter chain than trusted hops, or garbage in it: the leftmost address.
        assert_eq!(client_address(None, peer, 3), peer);
        assert_eq!(client_address(Some("nonsense"), peer, 1), peer);
    }
}
