//! `minicloud serve gateway,auth,storage`: several services in one process, each on
//! its own port, the gateway calling the ones beside it and finding the rest at the
//! service URLs; and the settings that cannot mean anything refused at start.

use super::support::{Served, drop_database, free_ports, test_database};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minicloud"));
    command
        .arg("serve")
        .args(args)
        .env_remove("MINICLOUD_SERVICE_KEY")
        .env_remove("MINICLOUD_SERVICE_KEY_FILE")
        .env_remove("MINICLOUD_PORT")
        .env_remove("MINICLOUD_SERVICE_URLS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("MINICLOUD_METERING_DIR", super::support::meters_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Exits non-zero at once, saying why on stderr.
fn refused(args: &[&str]) -> String {
    let output = serve(args, &[]).output().unwrap();
    assert!(!output.status.success(), "{args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn settings_that_name_no_service_or_several_are_refused() {
    // A bare port with two services: which one's?
    let stderr = refused(&["auth,storage", "--port", "8080"]);
    assert!(stderr.contains("--port SERVICE=PORT"), "{stderr}");
    // Unknown services, in the list and in a setting.
    let stderr = refused(&["auth,authz"]);
    assert!(stderr.contains("unknown service"), "{stderr}");
    let stderr = refused(&["auth", "--port", "gatway=1"]);
    assert!(stderr.contains("unknown service"), "{stderr}");
    let stderr = refused(&["auth", "--port", "auth=65536"]);
    assert!(stderr.contains("65536"), "{stderr}");
    // Nothing to serve.
    refused(&[]);
}

#[tokio::test]
async fn several_services_serve_from_one_process_behind_its_gateway() {
    let (database, database_url) = test_database("serve_several");
    let dir = std::env::temp_dir().join(format!("minicloud-serve-several-{}", std::process::id()));
    let key = format!("mck_{}", "5e7e".repeat(10));
    let ports = free_ports(3);
    let (gateway, auth, storage) = (ports[0], ports[1], ports[2]);
    let objects = dir.join("objects");
    let port_flag = format!("gateway={gateway},auth={auth}");
    let _served = Served(
        serve(
            &[
                // Listed in any order, a service twice: served once each.
                "storage,gateway,auth,storage",
                "--host",
                "127.0.0.1",
                "--port",
                &port_flag,
                "--port",
                &format!("storage={storage}"),
                // Not served here and not running: the gateway answers for it.
                "--service-url",
                "docdb=http://127.0.0.1:9",
            ],
            &[
                ("DATABASE_URL", &database_url),
                ("MINICLOUD_SERVICE_KEY", &key),
                ("MINICLOUD_STORAGE_FS_ROOT", objects.to_str().unwrap()),
            ],
        )
        .spawn()
        .unwrap(),
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gateway}");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Through the gateway to storage, which asks auth (beside it) about the key.
    let created = loop {
        let answer = http
            .post(format!("{base}/storage/v1/bucket"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"name": "several"}))
            .send()
            .await;
        match answer {
            Ok(response) => break response,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("the gateway never answered: {error}"),
        }
    };
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let put = http
        .post(format!("{base}/storage/v1/object/several/a.txt"))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("from one process")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    // Each service on its own port too.
    let direct = http
        .get(format!(
            "http://127.0.0.1:{storage}/storage/v1/object/several/a.txt"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.text().await.unwrap(), "from one process");
    let healthz: serde_json::Value = http
        .get(format!("http://127.0.0.1:{auth}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(healthz["service"], "auth");
    // A wrong key is refused by auth, through the gateway.
    let refused = http
        .get(format!("{base}/storage/v1/bucket"))
        .bearer_auth(format!("{key}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A service that is not running: a JSON error from the gateway, not a hang.
    let missing = http
        .get(format!("{base}/db/v1/collections"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 503);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    drop(_served);
    drop_database(&database);
    let _ = std::fs::remove_dir_all(&dir);
}
