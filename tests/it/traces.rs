//! The traces and logs minicloud keeps (issue 20): a request's spans from the gateway
//! and the service it reached, queried at `/traces/v1` with the service key; the OTLP
//! receivers functions export to; and who may do which.

use minicloud_telemetry::{TelemetryConfig, init};
use minicloud_testkit::TestCloud;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::{Value, json};

fn export(trace_id: [u8; 16], service: &str, name: &str) -> Vec<u8> {
    let text = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.to_owned())),
        })
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: text(service),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                    name: name.into(),
                    kind: 5,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_002_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_kept_as_traces_with_their_log_lines() {
    let telemetry = init(&TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: None,
        json_logs: false,
        keep_traces: true,
    });
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name": "traced"}))
        .await
        .unwrap();
    let upload = admin
        .request(reqwest::Method::POST, "/storage/v1/object/traced/a.txt")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let request_id = upload.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // A refused request logs a warning or an error under its request id.
    let refused = cloud
        .client()
        .request(reqwest::Method::GET, "/storage/v1/object/traced/a.txt")
        .send()
        .await
        .unwrap();
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    telemetry.flush();

    let listed: Value = admin
        .get("/traces/v1/traces?service=storage&route=/storage/v1/object&limit=20")
        .await
        .unwrap();
    let traces = listed["traces"].as_array().unwrap();
    let summary = traces
        .iter()
        .find(|t| {
            t["request_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|id| id == request_id.as_str())
        })
        .unwrap_or_else(|| panic!("no trace with {request_id}: {listed:#}"));
    let services = summary["services"].as_array().unwrap();
    assert!(
        services.iter().any(|s| s == "gateway") && services.iter().any(|s| s == "storage"),
        "{summary}"
    );
    assert!(summary["duration_ns"].as_u64().unwrap() > 0);
    assert_eq!(summary["http_status"], 200);
    assert!(listed["spans"].as_u64().unwrap() > 0);

    // One trace: by id, and by its request id; its spans link into one tree.
    let trace_id = summary["trace_id"].as_str().unwrap();
    let by_id: Value = admin
        .get(&format!("/traces/v1/traces/{trace_id}"))
        .await
        .unwrap();
    let by_request: Value = admin
        .get(&format!("/traces/v1/traces/{request_id}"))
        .await
        .unwrap();
    assert_eq!(by_id["trace_id"], by_request["trace_id"]);
    let spans = by_id["spans"].as_array().unwrap();
    let ids: Vec<&str> = spans
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    let roots: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            s["parent_span_id"]
                .as_str()
                .is_none_or(|p| !ids.contains(&p))
        })
        .collect();
    assert_eq!(roots.len(), 1, "one root: {by_id:#}");
    assert_eq!(roots[0]["service"], "gateway");
    assert!(
        spans
            .iter()
            .any(|s| s["service"] == "storage" && s["kind"] == "server")
    );

    // Filters narrow: an error-only list has no 200, a later `since` nothing.
    let errors: Value = admin
        .get("/traces/v1/traces?status=error&limit=1000")
        .await
        .unwrap();
    assert!(
        errors["traces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["trace_id"] != trace_id)
    );
    let future: Value = admin
        .get("/traces/v1/traces?since=99999999999")
        .await
        .unwrap();
    assert!(future["traces"].as_array().unwrap().is_empty());

    // One access line per request: the upload, dispatched in-process by the gateway,
    // is logged by the storage service that served it, not a second time by the
    // gateway.
    let upload_lines: Value = admin
        .get(&format!("/traces/v1/logs?request_id={request_id}"))
        .await
        .unwrap();
    let access: Vec<&Value> = upload_lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["target"] == "minicloud_access")
        .collect();
    assert_eq!(access.len(), 1, "{upload_lines:#}");
    assert_eq!(access[0]["service"], "storage", "{upload_lines:#}");
    assert_eq!(access[0]["fields"]["status"], "200", "{upload_lines:#}");

    // The refused request's log lines, by request id and level.
    let lines: Value = admin
        .get(&format!("/traces/v1/logs?request_id={refused_id}"))
        .await
        .unwrap();
    let lines = lines["lines"].as_array().unwrap();
    assert!(!lines.is_empty(), "no log line for {refused_id}");
    assert!(lines.iter().all(|l| l["request_id"] == refused_id.as_str()));

    // Who may: the service key only; hostile queries are 400s.
    let anonymous = cloud
        .client()
        .get::<Value>("/traces/v1/traces")
        .await
        .unwrap_err();
    assert_eq!(anonymous.status(), Some(401));
    let session = cloud
        .client()
        .signup("tracer@example.com", "correct horse battery")
        .await
        .unwrap();
    let user = cloud.client().with_token(session.access_token.clone());
    for path in [
        "/traces/v1/traces",
        "/traces/v1/logs",
        &format!("/traces/v1/traces/{trace_id}"),
    ] {
        let denied = user.get::<Value>(path).await.unwrap_err();
        assert_eq!(denied.status(), Some(403), "{path}");
    }
    for path in [
        "/traces/v1/traces?limit=0",
        "/traces/v1/traces?limit=100000",
        "/traces/v1/traces?status=maybe",
        "/traces/v1/traces?bogus=1",
        "/traces/v1/traces?min_duration_ms=-1",
        "/traces/v1/traces/not-a-trace-id",
        "/traces/v1/traces/%00",
        "/traces/v1/logs?level=loud",
    ] {
        let bad = admin.get::<Value>(path).await.unwrap_err();
        assert_eq!(bad.status(), Some(400), "{path}");
    }
    let text = "x".repeat(300);
    let long = admin
        .get::<Value>(&format!("/traces/v1/traces?text={text}"))
        .await
        .unwrap_err();
    assert_eq!(long.status(), Some(400));
    let missing = admin
        .get::<Value>(&format!("/traces/v1/traces/{}", "f".repeat(32)))
        .await
        .unwrap_err();
    assert_eq!(missing.status(), Some(404));

    // OTLP/HTTP: a signed-in sender's spans are kept, marked with who sent them.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/traces", cloud.gateway_url());
    let sent = http
        .post(&url)
        .bearer_auth(&session.access_token)
        .header("content-type", "application/x-protobuf")
        .body(export([7; 16], "my-function", "handler"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let kept: Value = admin
        .get(&format!("/traces/v1/traces/{}", "07".repeat(16)))
        .await
        .unwrap();
    let span = &kept["spans"][0];
    assert_eq!(span["service"], "my-function");
    assert_eq!(span["kind"], "consumer");
    assert!(
        span["attributes"]["minicloud.ingested_by"]
            .as_str()
            .unwrap()
            .starts_with("authenticated:")
    );
    // Refused: no credential, another encoding, garbage, too much.
    let cases: Vec<(Option<&str>, &str, Vec<u8>, u16)> = vec![
        (
            None,
            "application/x-protobuf",
            export([8; 16], "f", "x"),
            401,
        ),
        (
            Some(&session.access_token),
            "application/json",
            b"{}".to_vec(),
            415,
        ),
        (
            Some(&session.access_token),
            "application/x-protobuf",
            b"\xff\xff\xff".to_vec(),
            400,
        ),
        (
            Some(&session.access_token),
            "application/x-protobuf",
            vec![0u8; 5 * 1024 * 1024],
            413,
        ),
    ];
    for (token, content_type, body, status) in cases {
        let mut request = http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{content_type}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let never: Result<Value, _> = admin
        .get(&format!("/traces/v1/traces/{}", "08".repeat(16)))
        .await;
    assert_eq!(never.unwrap_err().status(), Some(404));
    cloud.stop().await.unwrap();
    telemetry.shutdown();
}
