//! gRPC clients between services: a channel that opens a client span per call and
//! injects its W3C trace context into the request metadata.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: Channel,
    peer: &'static str,
    credential: Option<ServiceCredential>,
}

/// The credential a service presents on its own gRPC calls to other services (the
/// service key), set once it is known: under `minicloud up` auth creates it while
/// the other services start, under `serve` it comes from the configuration.
/// Calls made on behalf of a caller carry that caller's `authorization` instead.
#[derive(Clone, Default)]
pub struct ServiceCredential(Arc<RwLock<Option<http::HeaderValue>>>);

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|v| v.is_some()).unwrap_or(false);
        f.debug_struct("ServiceCredential")
            .field("set", &set)
            .finish()
    }
}

impl ServiceCredential {
    /// A credential to be set later ([`ServiceCredential::set`]).
    pub fn pending() -> Self {
        Self::default()
    }

    pub fn with_key(key: &str) -> Self {
        let credential = Self::default();
        credential.set(key);
        credential
    }

    pub fn set(&self, key: &str) {
        if let Ok(mut value) = http::HeaderValue::from_str(&format!("Bearer {key}")) {
            value.set_sensitive(true);
            *self.0.write().unwrap() = Some(value);
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.read().unwrap().is_some()
    }

    fn header(&self) -> Option<http::HeaderValue> {
        self.0.read().unwrap().clone()
    }
}

impl TracedChannel {
    /// A lazily connecting channel to `url` (`http://127.0.0.1:4601`); `peer` names
    /// the service on the other end in spans.
    pub fn connect_lazy(peer: &'static str, url: &str) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        Ok(TracedChannel {
            inner: endpoint.connect_lazy(),
            peer,
            credential: None,
        })
    }

    /// Calls without an `authorization` of their own present `credential`.
    pub fn with_credential(mut self, credential: ServiceCredential) -> Self {
        self.credential = Some(credential);
        self
    }
}

impl tower::Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %method,
            otel.kind = "client",
            rpc.system = "grpc",
            peer.service = self.peer,
        );
        crate::trace_context::inject(&span, request.headers_mut());
        if let Some(credential) = &self.credential
            && !request.headers().contains_key(http::header::AUTHORIZATION)
            && let Some(value) = credential.header()
        {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        Box::pin(self.inner.call(request).instrument(span))
    }
}
