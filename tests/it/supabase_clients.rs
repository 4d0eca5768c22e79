//! The official Supabase clients against a test cloud (issue 18): the suites under
//! `tests/clients/` make the calls an app makes, and pass or fail here, in
//! `make test` (`make test-deps` installs the pinned clients).

use std::path::PathBuf;
use std::process::Command;

use minicloud_testkit::TestCloud;

fn suite_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// Runs `command` with the cloud's URL and keys; the suite's own output is shown
/// when it fails.
fn run_suite(cloud: &TestCloud, mut command: Command, what: &str, passed: &str) {
    let output = command
        .env("MINICLOUD_URL", cloud.gateway_url())
        .env("MINICLOUD_ANON_KEY", &cloud.keys.anon_key)
        .env("MINICLOUD_SERVICE_KEY", &cloud.keys.service_key)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // A suite that ran nothing would pass too.
    assert!(
        stdout.contains(passed) && !stdout.contains("# pass 0"),
        "{what} ran no tests:\n{stdout}"
    );
}

/// The collection the database suites use as a table: a todo list where an owner
/// condition gives each signed-in user exactly their own rows (Supabase's usual
/// `auth.uid() = user_id` row-level security).
async fn create_todos(cloud: &TestCloud) {
    let policy = serde_json::json!({
        "effect": "allow",
        "principals": ["role:authenticated"],
        "actions": ["db:GetDocument", "db:PutDocument", "db:DeleteDocument", "db:Query"],
        "resources": ["db:todos", "db:todos/*"],
        "condition": {"owner": "${auth.uid}"}
    });
    let _: serde_json::Value = cloud
        .admin()
        .post(
            "/db/v1/collections",
            &serde_json::json!({"name": "todos", "policy": policy}),
        )
        .await
        .unwrap();
}

/// The function the functions suite invokes: an Edge-Function-like handler that
/// answers HTTP-style with what it was sent, and fails when asked to.
const EDGE_ECHO: &[u8] = br#"import json

def handler(event, context):
    headers = event.get("headers") or {}
    if headers.get("x-fail") == "yes":
        raise ValueError("asked to fail")
    if headers.get("x-plain") == "yes":
        return {"plain": True}
    body = event.get("body") or ""
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json", "x-echo": "1"},
        "body": json.dumps({
            "got": json.loads(body) if body else None,
            "method": event["requestContext"]["http"]["method"],
            "authorized": headers.get("authorization", "").startswith("Bearer "),
        }),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_calls_work_unchanged() {
    let dir = suite_dir("supabase-js");
    assert!(
        dir.join("node_modules/@supabase/supabase-js").is_dir(),
        "supabase-js is not installed in {}: run `make test-deps`",
        dir.display()
    );
    let cloud = TestCloud::start().await.unwrap();
    crate::invoker::deploy_ok(
        &cloud,
        serde_json::json!({"name":"sjs-echo","runtime":"python3","handler":"app.handler"}),
        &crate::invoker::zip_of(&[("app.py", EDGE_ECHO, 0o644)]),
    )
    .await;
    create_todos(&cloud).await;
    let mut node = Command::new("node");
    // supabase-js's realtime client wants a WebSocket, built in from Node 22 and
    // behind this flag on Node 20 (the oldest it supports).
    node.current_dir(&dir).args([
        "--experimental-websocket",
        "--test",
        "--test-reporter=tap",
        "auth.test.mjs",
        "storage.test.mjs",
        "functions.test.mjs",
        "database.test.mjs",
    ]);
    let cloud_ref = &cloud;
    tokio::task::block_in_place(|| run_suite(cloud_ref, node, "supabase-js suite", "# pass"));
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_py_calls_work_unchanged() {
    let dir = suite_dir("supabase-py");
    let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps-supabase");
    assert!(
        deps.join("supabase").is_dir(),
        "supabase-py is not installed in {}: run `make test-deps`",
        deps.display()
    );
    let cloud = TestCloud::start().await.unwrap();
    crate::invoker::deploy_ok(
        &cloud,
        serde_json::json!({"name":"sjs-echo","runtime":"python3","handler":"app.handler"}),
        &crate::invoker::zip_of(&[("app.py", EDGE_ECHO, 0o644)]),
    )
    .await;
    create_todos(&cloud).await;
    let mut pytest = Command::new("python3");
    pytest.current_dir(&dir).env("PYTHONPATH", &deps).args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_supabase.py",
    ]);
    let cloud_ref = &cloud;
    tokio::task::block_in_place(|| run_suite(cloud_ref, pytest, "supabase-py suite", " passed"));
    cloud.stop().await.unwrap();
}
