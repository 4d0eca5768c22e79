//! The trust boundary (issue 15): hostile functions stay in their sandbox; handing a
//! role to code needs `functions:PassRole`; env values are for deployers only.
//! The same hostile suite runs against a `minicloud up` of an unprivileged user in
//! `crates/cli/tests/sandbox_unprivileged.rs`.

use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use minicloud_testkit::TestCloud;
use minicloud_testkit::hostile;
use serde_json::{Value, json};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn hostile_functions_cannot_leave_their_sandbox() {
    let cloud = TestCloud::builder()
        .invoker(|invoker| invoker.scratch_mb = 32)
        .start()
        .await
        .unwrap();
    hostile::plant_credentials(&cloud.data_dir, &cloud.keys.service_key);
    let service_ports: BTreeMap<String, u16> = [
        ("auth", &cloud.urls.auth),
        ("storage", &cloud.urls.storage),
        ("docdb", &cloud.urls.docdb),
        ("bus", &cloud.urls.bus),
        ("invoker", &cloud.urls.invoker),
    ]
    .into_iter()
    .map(|(name, url)| (name.to_owned(), port_of(url)))
    .collect();
    hostile::run(&hostile::Target {
        gateway_url: cloud.gateway_url().to_owned(),
        service_key: cloud.keys.service_key.clone(),
        invoker_pid: std::process::id(),
        data_dir: cloud.data_dir.clone(),
        code_dir: cloud.data_dir.join("functions"),
        service_ports,
        scratch_mb: 32,
        pids: 64,
    })
    .await;

    // Which protections were on is public to signed-in callers.
    let http = reqwest::Client::new();
    let sandbox: Value = http
        .get(format!("{}/functions/v1/sandbox", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sandbox["mode"], "on", "{sandbox}");
    assert_eq!(sandbox["enforced"], true, "{sandbox}");
    assert_eq!(sandbox["scratch_mb"], 32);
    let anonymous = http
        .get(format!("{}/functions/v1/sandbox", cloud.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    cloud.stop().await.unwrap();
}

fn python_zip(source: &str) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file("app.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(source.as_bytes()).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn handing_a_role_to_code_needs_pass_role_and_env_values_need_deploy() {
    let cloud = TestCloud::builder()
        .policy_cache_ttl(std::time::Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    use reqwest::Method;
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/auth/v1/admin/roles"),
        &service,
        Some(json!({"name":"admin-ish","policies":[{"effect":"allow","actions":["*"],"resources":["*"]}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A deployer may deploy and invoke every function, but not hand out roles.
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/auth/v1/admin/roles"),
        &service,
        Some(json!({"name":"deployer","policies":[{"effect":"allow","actions":["functions:Deploy","functions:Invoke"],"resources":["functions:*"]}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, key) = call(
        &http,
        Method::POST,
        format!("{gw}/auth/v1/admin/api-keys"),
        &service,
        Some(json!({"name":"ci deployer","role":"deployer"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let deployer = key["api_key"].as_str().unwrap().to_owned();
    let reader_key = {
        let (status, body) = call(
            &http,
            Method::POST,
            format!("{gw}/auth/v1/admin/roles"),
            &service,
            Some(json!({"name":"invoker-only","policies":[{"effect":"allow","actions":["functions:Invoke"],"resources":["functions:*"]}]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, key) = call(
            &http,
            Method::POST,
            format!("{gw}/auth/v1/admin/api-keys"),
            &service,
            Some(json!({"name":"reader","role":"invoker-only"})),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        key["api_key"].as_str().unwrap().to_owned()
    };

    let zip = python_zip("def handler(event, context):\n    return 'mine'\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&zip);
    let with_role = json!({"name":"privileged","runtime":"python3","handler":"app.handler",
        "role":"admin-ish","env":{"API_SECRET":"s3cr3t"},"code":{"zip_base64":b64}});

    // Create with a role: refused to the deployer, allowed to the service role.
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &deployer,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("functions:PassRole"),
        "{body}"
    );
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &service,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Replace keeping the role, and raw code upload under it: refused.
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/functions/v1/privileged"),
        &deployer,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let evil = python_zip("def handler(event, context):\n    return 'evil'\n");
    let response = http
        .put(format!("{gw}/functions/v1/privileged/code"))
        .bearer_auth(&deployer)
        .header("content-type", "application/zip")
        .body(evil.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // The function still runs the owner's code.
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1/privileged/invoke"),
        &deployer,
        Some(json!({})),
    )
    .await;
    assert_eq!((status, body), (200, json!("mine")));
    // Without a role the deployer may deploy freely, and the service role may
    // upload code under a role.
    let mut no_role = with_role.clone();
    no_role["name"] = json!("plain");
    no_role["role"] = Value::Null;
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &deployer,
        Some(no_role),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let response = http
        .put(format!("{gw}/functions/v1/privileged/code"))
        .bearer_auth(&service)
        .header("content-type", "application/zip")
        .body(evil)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A role granted PassRole on it may hand it out.
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/auth/v1/admin/roles/deployer"),
        &service,
        Some(json!({"policies":[
            {"effect":"allow","actions":["functions:Deploy","functions:Invoke"],"resources":["functions:*"]},
            {"effect":"allow","actions":["functions:PassRole"],"resources":["roles:admin-ish"]}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut granted = false;
    for _ in 0..80 {
        let (status, _) = call(
            &http,
            Method::PUT,
            format!("{gw}/functions/v1/privileged"),
            &deployer,
            Some(with_role.clone()),
        )
        .await;
        if status == 200 {
            granted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(granted, "PassRole granted by policy did not take effect");
    // The service role itself is never handed to a function.
    let mut as_service = with_role.clone();
    as_service["role"] = json!("service");
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/functions/v1/privileged"),
        &service,
        Some(as_service),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Env values: deployers and the service role see them; invokers see names.
    for (token, visible) in [(&service, true), (&deployer, true), (&reader_key, false)] {
        let (status, body) = call(
            &http,
            Method::GET,
            format!("{gw}/functions/v1/privileged"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let value = &body["env"]["API_SECRET"];
        assert_eq!(value == "s3cr3t", visible, "{body}");
        assert!(body["env"].get("API_SECRET").is_some(), "{body}");
        let (status, list) = call(
            &http,
            Method::GET,
            format!("{gw}/functions/v1"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let listed = list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "privileged")
            .unwrap();
        assert_eq!(listed["env"]["API_SECRET"] == "s3cr3t", visible, "{list}");
    }
    cloud.stop().await.unwrap();
}
