//! gRPC clients between services: a channel that opens a client span per call and
//! injects its W3C trace context into the request metadata.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: Channel,
    peer: &'static str,
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
        })
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
        Box::pin(self.inner.call(request).instrument(span))
    }
}
