//! `minicloud fn deploy --dir`, `invoke`, `list`, `logs` and `delete` against a
//! running cloud.

use std::process::Command;

use minicloud_testkit::TestCloud;

fn minicloud(cloud: &TestCloud, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .args(args)
        .args([
            "--url",
            cloud.gateway_url(),
            "--token",
            &cloud.keys.service_key,
        ])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_a_directory_invoke_it_and_read_its_logs() {
    let cloud = TestCloud::start().await.unwrap();
    let dir = cloud.data_dir.join("fn-src");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("lib/app.py"),
        "def handler(event, context):\n    print('hello from', context.function_name)\n    return {'sum': event['a'] + event['b']}\n",
    )
    .unwrap();

    let (ok, out, err) = minicloud(
        &cloud,
        &[
            "fn",
            "deploy",
            "adder",
            "--runtime",
            "python3",
            "--handler",
            "lib/app.handler",
            "--dir",
            dir.to_str().unwrap(),
            "--env",
            "MODE=test",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"name\": \"adder\""), "{out}");

    let (ok, out, err) = minicloud(
        &cloud,
        &["fn", "invoke", "adder", "--payload", r#"{"a":2,"b":40}"#],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), r#"{"sum": 42}"#);

    let (ok, out, _) = minicloud(&cloud, &["fn", "list"]);
    assert!(ok);
    assert!(out.starts_with("adder\tpython3"), "{out}");

    let (ok, out, _) = minicloud(&cloud, &["fn", "logs", "adder"]);
    assert!(ok);
    assert!(out.contains("hello from adder"), "{out}");
    assert!(out.contains("REPORT RequestId:"), "{out}");

    // A failing call exits non-zero and prints the error.
    let (ok, out, _) = minicloud(
        &cloud,
        &["fn", "invoke", "adder", "--payload", r#"{"a":1}"#],
    );
    assert!(!ok);
    assert!(out.contains("KeyError"), "{out}");
    let (ok, _, err) = minicloud(&cloud, &["fn", "invoke", "adder", "--payload", "not json"]);
    assert!(!ok && err.contains("--payload must be JSON"), "{err}");

    let (ok, _, err) = minicloud(&cloud, &["fn", "delete", "adder"]);
    assert!(ok, "{err}");
    let (ok, _, err) = minicloud(&cloud, &["fn", "get", "adder"]);
    assert!(!ok && err.contains("404"), "{err}");
    cloud.stop().await.unwrap();
}
