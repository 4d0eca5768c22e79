//! One request crossing gateway → storage → auth (gRPC) yields one trace with
//! correct parent links, exported over OTLP to an in-process receiver.

use std::time::Duration;

use minicloud_telemetry::{TelemetryConfig, init};
use minicloud_testkit::TestCloud;
use minicloud_testkit::otlp::{
    OtlpReceiver, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, Trace,
};

fn service(span: &ReceivedSpan) -> &str {
    span.attribute("minicloud.service").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_gateway_service_and_grpc() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let telemetry = init(&TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: Some(receiver.endpoint.clone()),
        json_logs: false,
        keep_traces: false,
    });
    let cloud = TestCloud::start().await.unwrap();
    let session = cloud
        .client()
        .signup("trace@example.com", "correct horse battery")
        .await
        .unwrap();
    let user = cloud.client().with_token(session.access_token);

    // Storage has never verified a token, so it fetches auth's JWKS over gRPC
    // inside this request.
    let response = user
        .request(reqwest::Method::GET, "/storage/v1/bucket")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    telemetry.flush();

    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| service(s) == "auth" && s.name.ends_with("GetJwks"))
                && spans.iter().any(|s| {
                    service(s) == "gateway" && s.attribute("request_id") == Some(&request_id)
                })
        })
        .await;

    let root = spans
        .iter()
        .find(|s| service(s) == "gateway" && s.attribute("request_id") == Some(&request_id))
        .expect("the gateway's server span");
    let trace = Trace::of(root, &spans);
    let parent_of = |span: &ReceivedSpan| trace.parent_of(span);

    let storage = trace.find("storage server", |s| {
        service(s) == "storage"
            && s.kind == SPAN_KIND_SERVER
            && s.name.starts_with("GET /storage/v1/bucket")
    });
    // The gateway dispatches in-process here (as under `up`): no hop span, the
    // service's server span is the gateway's child (a remote hop has a client span
    // between them: serve_traces.rs in the cli's tests).
    assert_eq!(
        parent_of(storage).span_id,
        root.span_id,
        "storage's parent is the gateway's server span"
    );
    assert_eq!(root.kind, SPAN_KIND_SERVER);

    let auth = trace.find("auth's gRPC server", |s| {
        service(s) == "auth" && s.name == "minicloud.auth.v1.AuthService/GetJwks"
    });
    let grpc_client = parent_of(auth);
    assert_eq!(auth.kind, SPAN_KIND_SERVER);
    assert_eq!(grpc_client.kind, SPAN_KIND_CLIENT);
    assert_eq!(grpc_client.attribute("rpc.system"), Some("grpc"));
    assert_eq!(grpc_client.attribute("peer.service"), Some("auth"));
    // The client span sits under storage's server span (through authz's spans).
    let mut ancestor = grpc_client;
    while ancestor.span_id != storage.span_id {
        assert!(
            !ancestor.parent_span_id.is_empty(),
            "gRPC client span does not descend from storage's span"
        );
        ancestor = parent_of(ancestor);
    }
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.resource_service == "minicloud")
    );

    cloud.stop().await.unwrap();
    telemetry.shutdown();
}
