//! The official AWS clients against a test cloud (issue 19), signing with key pairs
//! auth issued: `tests/clients/aws` (boto3, pytest) makes the calls an app makes.

use std::path::PathBuf;
use std::process::Command;

use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

const ECHO: &[u8] = b"def handler(event, context):\n    return {\"got\": event}\n";

/// An AWS-style key pair for `role`: (access key id, secret access key).
async fn aws_key(cloud: &TestCloud, role: &str) -> (String, String, String) {
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
    ] {
        let _: Value = admin
            .post(
                "/auth/v1/admin/roles",
                &json!({"name": role, "policies": policies}),
            )
            .await
            .unwrap();
    }
    let (_, key_id, secret) = aws_key(&cloud, "invokers").await;
    let (_, other_id, other_secret) = aws_key(&cloud, "nobody").await;
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

    let mut pytest = Command::new("python3");
    pytest
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/aws"))
        .env("PYTHONPATH", &deps)
        .env("MINICLOUD_URL", cloud.gateway_url())
        .env("AWS_KEY_ID", &key_id)
        .env("AWS_SECRET", &secret)
        .env("OTHER_KEY_ID", &other_id)
        .env("OTHER_SECRET", &other_secret)
        .env("REVOKED_KEY_ID", &revoked_id)
        // Nothing of the machine's own AWS setup may leak into the suite.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_lambda.py",
        ]);
    let output = tokio::task::block_in_place(|| pytest.output()).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed") && !stdout.contains("no tests ran"),
        "boto3 suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cloud.stop().await.unwrap();
}
