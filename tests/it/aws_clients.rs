//! The official AWS clients against a test cloud (issue 19), signing with key pairs
//! auth issued: `tests/clients/aws` (boto3, pytest) makes the calls an app makes.

use std::path::PathBuf;
use std::process::Command;

use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

const ECHO: &[u8] = b"def handler(event, context):\n    return {\"got\": event}\n";

/// An AWS-style key pair for `role`: (access key id, secret access key).
pub(crate) async fn aws_key(cloud: &TestCloud, role: &str) -> (String, String, String) {
    let created: Value = cloud
        .admin()
        .post(
            "/auth/v1/admin/api-keys",
            &json!({"name": format!("{role} pair"), "role": role, "kind": "aws"}),
        )
        .await
        .unwrap();
    let id = created["access_key_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("AKIA") && id.len() == 20, "{created}");
    assert!(created.get("api_key").is_none(), "a pair has no bearer key");
    (
        created["id"].as_str().unwrap().to_owned(),
        id,
        created["secret_access_key"].as_str().unwrap().to_owned(),
    )
}

/// Runs `suite` of `tests/clients/aws` under pytest with the pinned clients and
/// `env`, against `cloud`; fails the test with pytest's output unless it passed.
fn run_suite(cloud: &TestCloud, suite: &str, env: &[(&str, &str)]) {
    let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps-aws");
    let mut pytest = Command::new("python3");
    pytest
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/aws"))
        .env("PYTHONPATH", &deps)
        .env("MINICLOUD_URL", cloud.gateway_url())
        // Nothing of the machine's own AWS setup may leak into the suite.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .envs(env.iter().copied())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", suite]);
    let output = tokio::task::block_in_place(|| pytest.output()).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed") && !stdout.contains("no tests ran"),
        "{suite} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_lambda_calls_verify_sigv4_with_issued_key_pairs() {
    let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps-aws");
    assert!(
        deps.join("boto3").is_dir(),
        "boto3 is not installed in {}: run `make test-deps`",
        deps.display()
    );
    let cloud = TestCloud::start().await.unwrap();
    crate::invoker::deploy_ok(
        &cloud,
        json!({"name":"aws-echo","runtime":"python3","handler":"app.handler"}),
        &crate::invoker::zip_of(&[("app.py", ECHO, 0o644)]),
    )
    .await;
    let admin = cloud.admin();
    for (role, policies) in [
        (
            "invokers",
            json!([{"effect":"allow","actions":["functions:Invoke"],"resources":["functions:aws-echo"]}]),
        ),
        ("nobody", json!([])),
        (
            "deployers",
            json!([
                {"effect":"allow","actions":["functions:*"],"resources":["functions:*"]},
                {"effect":"allow","actions":["functions:PassRole"],"resources":["roles:invokers"]},
                {"effect":"allow","actions":["storage:GetObject","storage:PutObject"],"resources":["storage:lambda-code/*"]}
            ]),
        ),
    ] {
        let _: Value = admin
            .post(
                "/auth/v1/admin/roles",
                &json!({"name": role, "policies": policies}),
            )
            .await
            .unwrap();
    }
    // Code from S3: a bucket the deployers may use, and one they may not read.
    for bucket in ["lambda-code", "secret-code"] {
        let _: Value = admin
            .post("/storage/v1/bucket", &json!({"name": bucket}))
            .await
            .unwrap();
    }
    let secret_zip = crate::invoker::zip_of(&[("app.py", ECHO, 0o644)]);
    admin
        .upload(
            "secret-code",
            "app.zip",
            secret_zip,
            "application/zip",
            false,
        )
        .await
        .unwrap();
    let (_, key_id, secret) = aws_key(&cloud, "invokers").await;
    let (_, other_id, other_secret) = aws_key(&cloud, "nobody").await;
    let (_, deploy_id, deploy_secret) = aws_key(&cloud, "deployers").await;
    let (revoked, revoked_id, _) = aws_key(&cloud, "invokers").await;
    admin
        .delete(&format!("/auth/v1/admin/api-keys/{revoked}"))
        .await
        .unwrap();

    // The secret is shown once: the listing has the key id, never the secret.
    let listed: Value = admin.get("/auth/v1/admin/api-keys").await.unwrap();
    let text = listed.to_string();
    assert!(text.contains(&key_id) && !text.contains(&secret));
    // A pair is no bearer credential: neither half opens the REST API.
    for bearer in [&key_id, &secret] {
        let status = cloud
            .client()
            .with_token(bearer)
            .get::<Value>("/storage/v1/bucket")
            .await
            .unwrap_err()
            .status();
        assert_eq!(status, Some(401), "{bearer}");
    }
    // Unknown kinds are refused.
    let bad = admin
        .post::<_, Value>(
            "/auth/v1/admin/api-keys",
            &json!({"name": "x", "role": "invokers", "kind": "gcp"}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400));

    run_suite(
        &cloud,
        "test_lambda.py",
        &[
            ("AWS_KEY_ID", &key_id),
            ("AWS_SECRET", &secret),
            ("OTHER_KEY_ID", &other_id),
            ("OTHER_SECRET", &other_secret),
            ("REVOKED_KEY_ID", &revoked_id),
            ("DEPLOY_KEY_ID", &deploy_id),
            ("DEPLOY_SECRET", &deploy_secret),
            ("CODE_BUCKET", "lambda-code"),
            ("SECRET_CODE", "secret-code/app.zip"),
        ],
    );
    cloud.stop().await.unwrap();
}

/// The Lambda control plane's routes under hostile input: malformed, NUL-bearing and
/// oversized bodies, bad paging, unknown functions and anonymous callers get the
/// Lambda API's typed errors, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_control_plane_refuses_hostile_input() {
    let cloud = TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", cloud.gateway_url());
    let service = &cloud.keys.service_key;
    /// What is sent (with the service key or none), and the status and exception
    /// it must get.
    type Case = (
        &'static str,
        reqwest::Method,
        &'static str,
        Option<Vec<u8>>,
        bool,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("malformed JSON", reqwest::Method::POST, "/2015-03-31/functions", Some(b"{".to_vec()), true, 400, "InvalidParameterValueException"),
        ("NUL in the name", reqwest::Method::POST, "/2015-03-31/functions", Some(serde_json::to_vec(&json!({"FunctionName":"a\u{0}b","Runtime":"python3.12","Role":"r","Handler":"a.b","Code":{"ZipFile":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}})).unwrap()), true, 400, "InvalidParameterValueException"),
        ("code from S3", reqwest::Method::POST, "/2015-03-31/functions", Some(serde_json::to_vec(&json!({"FunctionName":"s3code","Runtime":"python3.12","Role":"r","Handler":"a.b","Code":{"S3Bucket":"b"}})).unwrap()), true, 400, "InvalidParameterValueException"),
        ("not a zip", reqwest::Method::POST, "/2015-03-31/functions", Some(serde_json::to_vec(&json!({"FunctionName":"notzip","Runtime":"python3.12","Role":"service","Handler":"a.b","Code":{"ZipFile":"bm90IGEgemlw"}})).unwrap()), true, 400, "InvalidParameterValueException"),
        ("a read with a 1 MiB body", reqwest::Method::GET, "/2015-03-31/functions/nope", Some(vec![b' '; 1024 * 1024]), true, 413, "RequestTooLargeException"),
        ("bad page size", reqwest::Method::GET, "/2015-03-31/functions?MaxItems=0", None, true, 400, "InvalidParameterValueException"),
        ("unknown function", reqwest::Method::GET, "/2015-03-31/functions/nope", None, true, 404, "ResourceNotFoundException"),
        ("unknown configuration", reqwest::Method::GET, "/2015-03-31/functions/nope/configuration", None, true, 404, "ResourceNotFoundException"),
        ("anonymous create", reqwest::Method::POST, "/2015-03-31/functions", Some(serde_json::to_vec(&json!({"FunctionName":"anon","Runtime":"python3.12","Role":"service","Handler":"a.b","Code":{"ZipFile":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}})).unwrap()), false, 403, "AccessDeniedException"),
        ("anonymous delete", reqwest::Method::DELETE, "/2015-03-31/functions/anything", None, false, 403, "AccessDeniedException"),
        ("malformed code update", reqwest::Method::PUT, "/2015-03-31/functions/nope/code", Some(b"[".to_vec()), true, 400, "InvalidParameterValueException"),
        ("concurrency of an unknown function", reqwest::Method::PUT, "/2017-10-31/functions/nope/concurrency", Some(br#"{"ReservedConcurrentExecutions":1}"#.to_vec()), true, 404, "ResourceNotFoundException"),
        ("anonymous configuration update", reqwest::Method::PUT, "/2015-03-31/functions/anything/configuration", Some(br#"{"Timeout":1}"#.to_vec()), false, 403, "AccessDeniedException"),
    ];
    for (what, method, path, body, signed_in, status, kind) in cases {
        let mut request = http.request(method, url(path));
        if signed_in {
            request = request.bearer_auth(service);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        let got = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{what}: {text}");
        assert_eq!(
            headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some(kind),
            "{what}: {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(body["message"].is_string(), "{what}: {body}");
    }
    let listed: Value = http
        .get(url("/2015-03-31/functions"))
        .bearer_auth(service)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["Functions"], json!([]), "nothing was created");
    cloud.stop().await.unwrap();
}

/// boto3 and the `aws` CLI against the S3 API (`tests/clients/aws/test_s3.py`):
/// buckets, objects, listings, copies, multipart (a 100 MiB `upload_file`),
/// presigned URLs over plain HTTP and the typed errors, signed with issued key pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_speak_s3_with_issued_key_pairs() {
    let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps-aws");
    assert!(
        deps.join("boto3").is_dir(),
        "boto3 is not installed in {}: run `make test-deps`",
        deps.display()
    );
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    for (role, policies) in [
        (
            "s3-writers",
            json!([{"effect":"allow","actions":["storage:*"],"resources":["storage:*"]}]),
        ),
        ("s3-nobody", json!([])),
    ] {
        let _: Value = admin
            .post(
                "/auth/v1/admin/roles",
                &json!({"name": role, "policies": policies}),
            )
            .await
            .unwrap();
    }
    let (_, key_id, secret) = aws_key(&cloud, "s3-writers").await;
    let (_, other_id, other_secret) = aws_key(&cloud, "s3-nobody").await;
    let (revoked, revoked_id, _) = aws_key(&cloud, "s3-writers").await;
    admin
        .delete(&format!("/auth/v1/admin/api-keys/{revoked}"))
        .await
        .unwrap();

    run_suite(
        &cloud,
        "test_s3.py",
        &[
            ("S3_KEY_ID", &key_id),
            ("S3_SECRET", &secret),
            ("OTHER_KEY_ID", &other_id),
            ("OTHER_SECRET", &other_secret),
            ("REVOKED_KEY_ID", &revoked_id),
        ],
    );
    cloud.stop().await.unwrap();
}
