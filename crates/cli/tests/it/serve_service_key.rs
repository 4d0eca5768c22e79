//! `minicloud serve` and the service key the services present to each other: auth
//! adopts a configured key (refusing a malformed one) or writes its own to a shared
//! file for the others.

use super::support::{Served, drop_database, free_port, test_database};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve_auth(database_url: &str, port: u16, env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minicloud"));
    command
        .args([
            "serve",
            "auth",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("DATABASE_URL", database_url)
        .env_remove("MINICLOUD_SERVICE_KEY")
        .env_remove("MINICLOUD_SERVICE_KEY_FILE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    Served(command.spawn().unwrap())
}

/// The status of `GET /auth/v1/admin/users` with `key`, once auth answers.
async fn admin_status(port: u16, key: &str) -> u16 {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http
            .get(format!("http://127.0.0.1:{port}/auth/v1/admin/users"))
            .bearer_auth(key)
            .send()
            .await;
        match answer {
            Ok(response) => return response.status().as_u16(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("auth never answered: {error}"),
        }
    }
}

#[tokio::test]
async fn auth_adopts_a_configured_service_key_or_writes_its_own_to_the_shared_file() {
    let (database, database_url) = test_database("servekey");
    let dir = std::env::temp_dir().join(format!("minicloud-servekey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A malformed key is refused at start, with a message, never adopted.
    for bad in [
        "short",
        "mck_short",
        "not-a-key-but-long-enough-to-pass-a-length-check",
    ] {
        let mut auth = serve_auth(
            &database_url,
            free_port(),
            &[("MINICLOUD_SERVICE_KEY", bad)],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = auth.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "auth ran with the bad key {bad:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "{bad:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(auth.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("service key"), "{bad:?}: {stderr}");
    }

    // A good one becomes the service key; anything else is not.
    let key = format!("mck_{}", "7f3a".repeat(10));
    let port = free_port();
    let auth = serve_auth(&database_url, port, &[("MINICLOUD_SERVICE_KEY", &key)]);
    assert_eq!(admin_status(port, &key).await, 200);
    assert_eq!(admin_status(port, &format!("{key}x")).await, 401);
    drop(auth);

    // Without a key but with a key file, auth writes its service key there (0600)
    // for the other services: the one it adopted before.
    let file = dir.join("service_key");
    let path = file.to_str().unwrap();
    let port = free_port();
    let auth = serve_auth(&database_url, port, &[("MINICLOUD_SERVICE_KEY_FILE", path)]);
    assert_eq!(admin_status(port, &key).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(auth);

    drop_database(&database);
    let _ = std::fs::remove_dir_all(&dir);
}

/// No API call may lock the cloud out of itself: the built-in service key and the
/// last live service key cannot be revoked (409), and `minicloud keys issue` mints
/// a working service key straight from the database (issue 16).
#[tokio::test]
async fn service_keys_cannot_all_be_revoked_and_keys_issue_mints_one_offline() {
    let cloud = minicloud_testkit::TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let gateway = cloud.gateway_url().to_owned();
    let call = |method: reqwest::Method, path: &str, key: &str| {
        http.request(method, format!("{gateway}{path}"))
            .bearer_auth(key)
    };
    let keys: serde_json::Value = call(
        reqwest::Method::GET,
        "/auth/v1/admin/api-keys",
        &cloud.keys.service_key,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let builtin = keys["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "service")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = call(
        reqwest::Method::DELETE,
        &format!("/auth/v1/admin/api-keys/{builtin}"),
        &cloud.keys.service_key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(revoke.status(), 409);

    // Minted offline, from the database alone...
    let output = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .args([
            "keys",
            "issue",
            "--role",
            "service",
            "--name",
            "break-glass",
        ])
        .env("DATABASE_URL", &cloud.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    // ...it works as a service key.
    let listed = call(reqwest::Method::GET, "/auth/v1/admin/users", &minted)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    // A further service key can be revoked while another stays live...
    let extra: serde_json::Value = call(
        reqwest::Method::POST,
        "/auth/v1/admin/api-keys",
        &cloud.keys.service_key,
    )
    .json(&serde_json::json!({"name":"extra","role":"service"}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let revoke_as = |id: String, key: String| {
        call(
            reqwest::Method::DELETE,
            &format!("/auth/v1/admin/api-keys/{id}"),
            &key,
        )
        .send()
    };
    let revoked = revoke_as(extra["id"].as_str().unwrap().to_owned(), minted.clone())
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    // ...but not the last one: with the built-in key gone (revoked in the database,
    // as by hand), the break-glass key cannot revoke itself.
    let pool = minicloud_testkit::sqlx::PgPool::connect(&cloud.database_url)
        .await
        .unwrap();
    minicloud_testkit::sqlx::query(
        "UPDATE auth.api_keys SET revoked_at = now() WHERE role = 'service' AND name <> 'break-glass'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let id: String = minicloud_testkit::sqlx::query_scalar(
        "SELECT id FROM auth.api_keys WHERE name = 'break-glass'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let last = revoke_as(id, minted.clone()).await.unwrap();
    assert_eq!(last.status(), 409);
    let body: serde_json::Value = last.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last live service key"),
        "{body}"
    );
    pool.close().await;
    // An unknown role is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_minicloud"))
        .args(["keys", "issue", "--role", "no-such-role"])
        .env("DATABASE_URL", &cloud.database_url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    cloud.stop().await.unwrap();
}
