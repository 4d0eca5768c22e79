//! The cloud as a whole: readiness through the gateway, health and metrics on every
//! service, request ids, CORS, JSON errors for unknown routes and bad input, gRPC
//! between services.

use minicloud_proto::health::v1::HealthCheckRequest;
use minicloud_proto::health::v1::health_client::HealthClient;
use minicloud_testkit::TestCloud;
use serde_json::Value;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn gateway_readyz_asks_every_service() {
    let cloud = TestCloud::start().await.unwrap();
    let (status, body) = json(
        reqwest::get(format!("{}/readyz", cloud.gateway_url()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for service in ["gateway", "auth", "storage", "docdb", "bus", "invoker"] {
        assert_eq!(body["checks"][service], "ok", "{service} in {body}");
    }
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn every_service_serves_health_readiness_metrics_and_grpc_health() {
    let cloud = TestCloud::start().await.unwrap();
    let urls = &cloud.urls;
    for (name, url) in [
        ("auth", &urls.auth),
        ("storage", &urls.storage),
        ("docdb", &urls.docdb),
        ("bus", &urls.bus),
        ("invoker", &urls.invoker),
        ("gateway", &urls.gateway),
    ] {
        let (status, body) = json(reqwest::get(format!("{url}/healthz")).await.unwrap()).await;
        assert_eq!((status, body["service"].as_str()), (200, Some(name)));
        let (status, body) = json(reqwest::get(format!("{url}/readyz")).await.unwrap()).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["status"], "ready");
        if name != "gateway" {
            assert_eq!(
                body["checks"]["postgres"], "ok",
                "{name} checks Postgres: {body}"
            );
        }
        let metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("minicloud_http_requests_total"),
            "{name}: {metrics}"
        );
        assert!(
            metrics.contains(&format!("service=\"{name}\"")),
            "{name}: {metrics}"
        );
        let mut health = HealthClient::connect(url.clone()).await.unwrap();
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().status, 1, "{name} is SERVING over gRPC");
    }
    let (_, bus) = json(reqwest::get(format!("{}/readyz", urls.bus)).await.unwrap()).await;
    assert_eq!(bus["checks"]["redis"], "ok");
    let (_, storage) = json(
        reqwest::get(format!("{}/readyz", urls.storage))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(storage["checks"]["backend"], "ok");
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_service_whose_database_is_gone_is_not_ready() {
    let cloud = TestCloud::start().await.unwrap();
    // Kill every connection of the cloud's database and forbid new ones.
    let admin = reqwest::Client::new();
    let server = minicloud_testkit::test_database_server_url();
    let mut connection = sqlx_connect(&server).await;
    exec(
        &mut connection,
        &format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
            cloud.database
        ),
    )
    .await;
    exec(
        &mut connection,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            cloud.database
        ),
    )
    .await;
    let (status, body) = json(
        admin
            .get(format!("{}/readyz", cloud.gateway_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["auth"], "unavailable", "{body}");
    exec(
        &mut connection,
        &format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
            cloud.database
        ),
    )
    .await;
    cloud.stop().await.unwrap();
}

async fn sqlx_connect(url: &str) -> sqlx_lite::Connection {
    sqlx_lite::connect(url).await
}

async fn exec(connection: &mut sqlx_lite::Connection, sql: &str) {
    sqlx_lite::execute(connection, sql).await;
}

/// The few Postgres calls these tests make, through the testkit's sqlx.
mod sqlx_lite {
    pub(super) use minicloud_testkit::sqlx::PgConnection as Connection;
    use minicloud_testkit::sqlx::{self, Connection as _};

    pub(super) async fn connect(url: &str) -> Connection {
        Connection::connect(url).await.unwrap()
    }

    pub(super) async fn execute(connection: &mut Connection, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(connection)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn errors_are_json_with_request_ids_and_unknown_routes_are_404() {
    let cloud = TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let gateway = cloud.gateway_url();

    let response = http.get(format!("{gateway}/nope")).send().await.unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = json(response).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["request_id"], request_id.as_str());

    // Unknown path inside a service prefix: the service's own 404, same shape.
    let (status, body) = json(
        http.get(format!("{gateway}/storage/v1/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Wrong method: 405 with a JSON body.
    let (status, body) = json(
        http.delete(format!("{gateway}/auth/v1/signup"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // A caller's request id is kept through the gateway and the service.
    let response = http
        .get(format!("{gateway}/nope"))
        .header("x-request-id", "req_mine_1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req_mine_1");
    let response = http
        .get(format!("{gateway}/storage/v1/bucket"))
        .header("x-request-id", "req_mine_2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req_mine_2");
    cloud.stop().await.unwrap();
}

/// The services' pools skip sqlx's ping before every query, but a connection that
/// sat idle is still checked: one the server dropped meanwhile is replaced, not
/// handed to a query.
#[tokio::test]
async fn a_connection_dropped_while_idle_is_replaced_before_use() {
    use minicloud_testkit::sqlx::{self, Executor as _};
    let url = minicloud_testkit::test_database_server_url();
    let pool = minicloud_testkit::minicloud_cli::postgres::pool_options_pinging_after(
        1,
        std::time::Duration::from_millis(100),
    )
    .connect(&url)
    .await
    .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut admin = sqlx_connect(&url).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend({pid})"
        )))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the dead connection was pinged and replaced");
    assert_ne!(again, pid);
}

/// `minicloud up` hands requests to the services' routers in-process; a gateway run
/// on its own (compose, Kubernetes) proxies them over HTTP. Both must behave the same.
#[tokio::test]
async fn the_gateway_behaves_the_same_in_process_and_over_http() {
    for over_http in [false, true] {
        let mut builder = TestCloud::builder();
        if over_http {
            builder = builder.gateway_over_http();
        }
        let cloud = builder.start().await.unwrap();
        let mode = if over_http { "http" } else { "in-process" };
        let http = reqwest::Client::new();
        let gateway = cloud.gateway_url();
        let auth = format!("Bearer {}", cloud.keys.service_key);

        let response = http
            .post(format!("{gateway}/storage/v1/bucket"))
            .header("authorization", &auth)
            .header("x-request-id", "req_dispatch_1")
            .json(&serde_json::json!({"name": "files"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["x-request-id"],
            "req_dispatch_1",
            "{mode}"
        );
        assert_eq!(response.status(), 201, "{mode}");

        // A body larger than any buffer on the way, both ways, byte for byte.
        let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let url = format!("{gateway}/storage/v1/object/files/dir/blob.bin");
        let response = http
            .put(&url)
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{mode}");
        let response = http
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{mode}");
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            bytes.as_slice(),
            "{mode}"
        );
        let response = http
            .get(&url)
            .header("authorization", &auth)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{mode}");
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            &bytes[10..20],
            "{mode}"
        );
        let response = http
            .head(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{mode}");
        assert_eq!(
            response.headers()["content-length"],
            bytes.len().to_string().as_str(),
            "{mode}"
        );

        // The services' own errors come back as they were sent.
        let (status, body) = json(
            http.get(format!("{gateway}/storage/v1/nope"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{mode}"
        );
        let (status, body) = json(
            http.delete(format!("{gateway}/auth/v1/signup"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (405, Some("method_not_allowed")),
            "{mode}"
        );
        let (status, _) = json(
            http.get(format!("{gateway}/db/v1/collections"))
                .header("authorization", "Bearer not.a.jwt")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{mode}");
        cloud.stop().await.unwrap();
    }
}

#[tokio::test]
async fn bad_input_gets_4xx_json_never_5xx() {
    let cloud = TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/storage/v1/bucket", cloud.gateway_url());
    let auth = format!("Bearer {}", cloud.keys.service_key);
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            b"{\"name\":".to_vec(),
            400,
        ),
        (
            "wrong type",
            Some("application/json"),
            br#"{"name":42}"#.to_vec(),
            400,
        ),
        (
            "unknown field",
            Some("application/json"),
            br#"{"name":"abc","colour":"red"}"#.to_vec(),
            400,
        ),
        (
            "not JSON content type",
            Some("text/plain"),
            br#"{"name":"abc"}"#.to_vec(),
            415,
        ),
        ("no content type", None, br#"{"name":"abc"}"#.to_vec(), 415),
        (
            "huge body",
            Some("application/json"),
            vec![b' '; 2 * 1024 * 1024],
            413,
        ),
        (
            "bad name",
            Some("application/json"),
            br#"{"name":"../etc"}"#.to_vec(),
            400,
        ),
        (
            "invalid policy",
            Some("application/json"),
            br#"{"name":"abc","policy":{"effect":"maybe"}}"#.to_vec(),
            400,
        ),
        (
            "not UTF-8",
            Some("application/json"),
            vec![0xff, 0xfe, 0x00],
            400,
        ),
    ];
    for (name, content_type, body, expected) in cases {
        let mut request = http.post(&url).header("authorization", &auth).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{name}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{name}: {body}"
        );
    }
    // Nothing was half-written by any of those.
    let buckets: Value = cloud.admin().get("/storage/v1/bucket").await.unwrap();
    assert_eq!(buckets, serde_json::json!([]));

    // A bad Authorization header is a 401, not a 500.
    for header in [
        "Basic abc",
        "Bearer ",
        "Bearer not.a.jwt",
        "Bearer mck_forged.key",
    ] {
        let (status, body) = json(
            http.get(&url)
                .header("authorization", header)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{header}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let cloud = TestCloud::start().await.unwrap();
    let response = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/storage/v1/bucket", cloud.gateway_url()),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allowed.contains("authorization"), "{allowed}");
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn services_call_each_other_over_grpc() {
    // Storage resolves the anon key through auth's VerifyApiKey and an access
    // token through auth's GetJwks: both over gRPC.
    let cloud = TestCloud::start().await.unwrap();
    let anon = cloud.client().with_token(cloud.keys.anon_key.clone());
    let buckets: Value = anon.get("/storage/v1/bucket").await.unwrap();
    assert_eq!(buckets, serde_json::json!([]));
    let metrics = reqwest::get(format!("{}/metrics", cloud.urls.auth))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .contains("route=\"/minicloud.auth.v1.AuthService/VerifyApiKey\"")
            && l.starts_with("minicloud_http_requests_total")),
        "{metrics}"
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_500_carries_no_internal_detail() {
    let cloud = TestCloud::start().await.unwrap();
    // Break storage's schema under it: its next query fails inside Postgres.
    let mut connection = sqlx_connect(&cloud.database_url).await;
    exec(
        &mut connection,
        "ALTER TABLE storage.buckets RENAME TO buckets_gone",
    )
    .await;
    let response = reqwest::Client::new()
        .get(format!("{}/storage/v1/bucket", cloud.gateway_url()))
        .header(
            "authorization",
            format!("Bearer {}", cloud.keys.service_key),
        )
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = json(response).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "internal");
    assert_eq!(body["error"]["message"], "internal error");
    assert_eq!(
        body["error"]["request_id"],
        request_id.as_str(),
        "the id to find the detail in the log"
    );
    let text = body.to_string();
    for leak in [
        "buckets",
        "relation",
        "does not exist",
        "sqlx",
        "postgres",
        "42P01",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    exec(
        &mut connection,
        "ALTER TABLE storage.buckets_gone RENAME TO buckets",
    )
    .await;
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn every_rest_api_serves_its_openapi_spec_through_the_gateway() {
    let cloud = TestCloud::start().await.unwrap();
    for (prefix, title, path) in [
        ("/auth/v1", "minicloud auth", "/auth/v1/token"),
        ("/storage/v1", "minicloud storage", "/storage/v1/bucket"),
        ("/db/v1", "minicloud docdb", "/db/v1/collections"),
        ("/events/v1", "minicloud bus", "/events/v1/topics"),
        ("/functions/v1", "minicloud invoker", "/functions/v1"),
    ] {
        let (status, spec) = json(
            reqwest::get(format!("{}{prefix}/openapi.json", cloud.gateway_url()))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{prefix}");
        assert_eq!(spec["info"]["title"], title);
        assert!(spec["paths"][path].is_object(), "{prefix} documents {path}");
        assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    }
    cloud.stop().await.unwrap();
}

/// Postgres stores no NUL character in `text` or `jsonb`: every route that takes
/// text answers 400 naming the field instead of a 500 (issue 16). Each request is
/// valid but for one `\u0000`.
#[tokio::test]
async fn a_nul_character_anywhere_is_a_400_naming_the_field() {
    let cloud = TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/db/v1/collections", &serde_json::json!({"name":"notes"}))
        .await
        .unwrap();
    let _: Value = admin
        .post("/events/v1/topics", &serde_json::json!({"name":"t"}))
        .await
        .unwrap();
    let _: Value = admin
        .post(
            "/storage/v1/bucket",
            &serde_json::json!({"name":"nul-test"}),
        )
        .await
        .unwrap();
    let cases: Vec<(reqwest::Method, &str, &str, &str)> = vec![
        (
            reqwest::Method::POST,
            "/auth/v1/signup",
            r#"{"email":"a\u0000@example.com","password":"correct horse battery"}"#,
            "email",
        ),
        (
            reqwest::Method::POST,
            "/auth/v1/admin/users",
            r#"{"email":"b@example.com","password":"correct horse battery","user_metadata":{"nick\u0000":"x"}}"#,
            "user_metadata.nick",
        ),
        (
            reqwest::Method::POST,
            "/auth/v1/admin/roles",
            r#"{"name":"r1","policies":[{"effect":"allow","actions":["db:Read"],"resources":["db:x\u0000"]}]}"#,
            "policies[0].resources[0]",
        ),
        (
            reqwest::Method::POST,
            "/db/v1/collections/notes/docs",
            r#"{"title":"hi\u0000there"}"#,
            "title",
        ),
        (
            reqwest::Method::PUT,
            "/db/v1/kv/ns/k",
            r#"{"a":["ok","\u0000"]}"#,
            "a[1]",
        ),
        (
            reqwest::Method::POST,
            "/db/v1/collections",
            r#"{"name":"c2","policy":{"read":"x\u0000"}}"#,
            "policy.read",
        ),
        (
            reqwest::Method::POST,
            "/events/v1/subscriptions",
            r#"{"topic":"t","pattern":{"type":["a\u0000"]},"target":{"topic":"t"}}"#,
            "pattern.type[0]",
        ),
    ];
    for (method, path, body, field) in cases {
        let response = http
            .request(method, format!("{gw}{path}"))
            .bearer_auth(&service)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = json(response).await;
        assert_eq!(status, 400, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(field) && message.contains("NUL"),
            "{path}: {answer}"
        );
    }
    // Object metadata arrives in a header.
    let response = http
        .post(format!("{gw}/storage/v1/object/nul-test/x.txt"))
        .bearer_auth(&service)
        .header("content-type", "text/plain")
        .header("x-metadata", r#"{"k":"v\u0000"}"#)
        .body("hello")
        .send()
        .await
        .unwrap();
    let (status, answer) = json(response).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("metadata.k"),
        "{answer}"
    );
    // Nothing of them was stored.
    let users: Value = admin.get("/auth/v1/admin/users").await.unwrap();
    assert_eq!(users["users"].as_array().map(Vec::len), Some(0), "{users}");
    cloud.stop().await.unwrap();
}

/// Half-sent requests, stalled bodies and a flood of connections cannot hold a
/// service (issue 16): headers must arrive within the header-read timeout, a body
/// must keep moving, and a listener takes a bounded number of connections,
/// answering one more with a 503 and the standard error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_connection_floods_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Read by every listener when it starts; this test's process is its own.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("MINICLOUD_HEADER_READ_TIMEOUT", "1");
        std::env::set_var("MINICLOUD_BODY_IDLE_TIMEOUT", "1");
        std::env::set_var("MINICLOUD_MAX_CONNECTIONS", "8");
    }
    let cloud = TestCloud::builder()
        .gateway_over_http()
        .start()
        .await
        .unwrap();
    let address = cloud.gateway_url().trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();

    // Eight half-sent requests fill the gateway's listener...
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ...so a ninth is refused at once, with a JSON 503.
    let mut extra = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        extra.read_to_string(&mut answer),
    )
    .await
    .expect("the refusal comes at once")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    // The half-sent ones are closed by the header-read timeout (1 s here).
    for mut stream in slow {
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut rest),
        )
        .await
        .expect("a half-sent request is cut off")
        .ok();
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // And the listener serves again once they are gone.
    let health = reqwest::get(format!("{}/healthz", cloud.gateway_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A body that stops moving fails after the body-idle timeout, not never.
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            b"POST /auth/v1/signup HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stalled.read_to_end(&mut answer),
    )
    .await
    .expect("a stalled body is cut off")
    .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    cloud.stop().await.unwrap();
}

/// The bounded fuzz pass over every public REST operation (issue 16): schemathesis
/// generates requests from each service's OpenAPI spec (served by the gateway) and
/// fails on any 5xx, an undocumented status, or a response that breaks the spec's
/// schema or content type. Deterministic and capped at 10 examples per operation,
/// stateful phase included, with the service key (so operations run, not only
/// their 401s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_operation_survives_a_bounded_fuzz_pass() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps-fuzz");
    assert!(
        fuzz.join("schemathesis").is_dir(),
        "schemathesis missing: `make test` installs it into target/pydeps-fuzz"
    );
    let cloud = TestCloud::start().await.unwrap();
    let gateway = cloud.gateway_url().to_owned();
    for api in [
        "auth/v1",
        "storage/v1",
        "db/v1",
        "events/v1",
        "functions/v1",
        "billing/v1",
    ] {
        let output = tokio::process::Command::new("python3")
            .env("PYTHONPATH", &fuzz)
            .env("SCHEMATHESIS_HOOKS", "")
            .args([
                "-m",
                "schemathesis.cli",
                "run",
                &format!("{gateway}/{api}/openapi.json"),
                "--url",
                &gateway,
                "--header",
                &format!("Authorization: Bearer {}", cloud.keys.service_key),
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "10",
                "--generation-deterministic",
                // A zip body: nothing schemathesis can generate (its abuse tests are
                // in tests/it/invoker.rs).
                "--exclude-path",
                "/functions/v1/{name}/code",
                // A stream that stays open (server-sent events): its tests are in
                // tests/it/bus.rs and crates/cli/tests/it/events_tail.rs.
                "--exclude-path",
                "/events/v1/topics/{topic}/tail",
            ])
            .output()
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{api}: {report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(report.contains("passed"), "{api}: {report}");
    }
    cloud.stop().await.unwrap();
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The routes a service crate registers (`.route("<path>", get(…).post(…))`), as
/// `(method, path)` with `{*rest}` written `{rest}` as OpenAPI does. Read from the
/// source: axum cannot list a router's routes.
fn registered_routes(crate_dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in rust_files(&crate_dir.join("src")) {
        let source = std::fs::read_to_string(&path).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let Some(route) = call.split('"').nth(1) else {
                continue;
            };
            let route = route.replace("{*", "{");
            let handlers = &call[call.find(',').unwrap_or(0)..];
            for method in ["get", "post", "put", "patch", "delete", "head", "any"] {
                let called = handlers
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric());
                if called {
                    out.push((method.to_owned(), route.clone()));
                }
            }
        }
    }
    out
}

/// A route cannot exist without its spec (issue 17): every method and path a service
/// registers is an operation of its committed OpenAPI spec (which the spec tests
/// keep equal to the code, and the fuzz pass exercises), except the few that are not
/// that service's REST API, each with its reason.
#[test]
fn every_registered_route_is_in_its_openapi_spec() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let not_rest_apis = [
        // The spec itself.
        "/openapi.json",
        // AWS's Runtime API, served to each function instance on a port of its own.
        "/2018-06-01/runtime/",
        // HTTP triggers: any method, the function's own API.
        "/fn/{name}",
        // The console's own files (HTML, script, style).
        "/console",
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    // The gateway's own API is the traces it keeps; the rest of it is the proxy
    // (`any` method, routed by prefix to the services' specs).
    for (service, spec_name) in [
        ("auth", "auth"),
        ("storage", "storage"),
        ("docdb", "docdb"),
        ("bus", "bus"),
        ("invoker", "invoker"),
        ("gateway", "traces"),
    ] {
        let spec: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("docs/api/openapi/{spec_name}.json")))
                .unwrap(),
        )
        .unwrap();
        let routes = registered_routes(&root.join("crates").join(service));
        assert!(!routes.is_empty(), "{service}: no routes read");
        for (method, path) in routes {
            if not_rest_apis.iter().any(|p| path.contains(p))
                || (service == "gateway" && method == "any")
            {
                continue;
            }
            checked += 1;
            // Keys may hold `/`, so the route takes the rest of the path and requires
            // it to end in `/incr`: the spec writes the path a client calls.
            let path = match (method.as_str(), path.as_str()) {
                ("post", "/db/v1/kv/{ns}/{key}") => "/db/v1/kv/{ns}/{key}/incr".to_owned(),
                _ => path,
            };
            if spec["paths"][&path].get(&method).is_none() {
                missing.push(format!("{service}: {} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(checked > 60, "only {checked} routes read");
    assert!(
        missing.is_empty(),
        "routes missing from their spec: {missing:#?}"
    );
}

/// The top-level modules of `crate_dir/src` and the sibling modules each names as
/// `crate::<module>` (outside its unit tests).
fn module_imports(
    crate_dir: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = crate_dir.join("src");
    let mut imports: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let named = imports.entry(top.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != top {
                named.insert(name);
            }
        }
    }
    let modules: std::collections::BTreeSet<String> = imports.keys().cloned().collect();
    for named in imports.values_mut() {
        named.retain(|m| modules.contains(m));
    }
    imports
}

/// Layers, not a web (issue 17): within each crate, no module reaches, through the
/// modules it imports, back to itself — rows, validators and domain operations sit
/// below the REST and gRPC handlers that use them.
#[test]
fn no_crate_has_modules_that_import_each_other() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut cycles = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let imports = module_imports(&entry.path());
        for start in imports.keys() {
            // Every module reachable from `start`; a cycle if `start` is among them.
            let mut seen = std::collections::BTreeSet::new();
            let mut stack: Vec<&String> = imports[start].iter().collect();
            while let Some(module) = stack.pop() {
                if seen.insert(module.clone()) {
                    stack.extend(imports.get(module).into_iter().flatten());
                }
            }
            if seen.contains(start) {
                cycles.push(format!(
                    "{}: {start} imports {:?}",
                    entry.file_name().to_string_lossy(),
                    imports[start]
                ));
            }
        }
    }
    assert!(cycles.is_empty(), "modules in a cycle: {cycles:#?}");
}
