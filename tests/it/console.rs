//! The console (issue 20) in a real browser: headless Chromium driven over WebDriver
//! ([`minicloud_testkit::browser`]). Each test saves screenshots to
//! `target/console-screenshots/`.

use std::time::Duration;

use fantoccini::Locator;
use minicloud_telemetry::{TelemetryConfig, init};
use minicloud_testkit::TestCloud;
use minicloud_testkit::browser::Browser;
use serde_json::{Value, json};

/// A PNG of `width`×`height`, for the preview.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_signs_in_uploads_an_image_and_follows_its_trace() {
    let telemetry = init(&TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: None,
        json_logs: false,
        keep_traces: true,
    });
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let browser = Browser::start("admin").await;

    // A wrong key is refused next to the field, never a blank page.
    browser.go(&format!("{base}/console")).await;
    browser.type_into("#api-key", "mck_ak_nope.nope").await;
    browser.click("#key-form button").await;
    browser.text_of("#sign-in-error", "not valid").await;
    browser.shot("refused-key").await;

    let key = browser.find("#api-key").await;
    key.clear().await.unwrap();
    key.send_keys(&cloud.keys.service_key).await.unwrap();
    browser.click("#key-form button").await;
    browser.text_of("#health", "storage").await;
    browser.text_of("#who", "admin").await;
    browser.shot("overview").await;

    // Storage: a bucket from the form, an image through the file picker, its preview.
    browser.go(&format!("{base}/console#/storage")).await;
    browser.type_into("#bucket-name", "pictures").await;
    browser.click("#bucket-form button").await;
    let picker = browser.find("#file-picker").await;
    let image = cloud.data_dir.join("sunset.png");
    std::fs::write(&image, png(64, 48)).unwrap();
    picker.send_keys(image.to_str().unwrap()).await.unwrap();
    browser.text_of("#objects", "sunset.png").await;
    browser.click("#objects tr.clickable").await;
    browser.find("#preview").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The decoded image's own width: the bytes came back and are a picture.
        let width = browser
            .client
            .execute(
                "return document.getElementById('preview').naturalWidth",
                vec![],
            )
            .await
            .unwrap();
        if width == json!(64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the preview never loaded: {width:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.shot("storage-preview").await;
    // The upload really is there, as the API sees it.
    let stored = cloud
        .admin()
        .download("pictures", "sunset.png")
        .await
        .unwrap();
    assert_eq!(stored.len(), png(64, 48).len());
    // A signed link reads the object without any credential.
    browser.click("#sign-form button").await;
    let link = browser.find("#signed-link a").await;
    let href = link.attr("href").await.unwrap().unwrap();
    let fetched = reqwest::get(&href).await.unwrap();
    assert_eq!(fetched.status(), 200, "{href}");
    assert_eq!(fetched.bytes().await.unwrap().len(), png(64, 48).len());
    // A folder keeps its layout.
    let album = cloud.data_dir.join("album");
    std::fs::create_dir_all(album.join("day1")).unwrap();
    std::fs::write(album.join("a.txt"), b"first").unwrap();
    std::fs::write(album.join("day1/b.txt"), b"second").unwrap();
    browser
        .type_into("#folder-picker", album.to_str().unwrap())
        .await;
    browser.text_of("#objects", "album/").await;
    browser
        .text_of("#upload-status", "uploaded album/day1/b.txt")
        .await;
    let nested = cloud
        .admin()
        .download("pictures", "album/day1/b.txt")
        .await
        .unwrap();
    assert_eq!(&nested[..], b"second");

    // Traces: the upload's trace, as a waterfall of gateway and storage spans.
    telemetry.flush();
    browser.go(&format!("{base}/console#/traces")).await;
    browser
        .type_into(
            "#trace-filter input[name=route]",
            "/storage/v1/object/pictures/sunset.png",
        )
        .await;
    browser.click("#trace-filter button").await;
    browser.text_of("#traces", "gateway").await;
    browser.shot("traces").await;
    browser.click("#traces tr.clickable").await;
    browser.find("#waterfall .row").await;
    let services: Vec<String> = {
        let mut out = Vec::new();
        for row in browser
            .client
            .find_all(Locator::Css("#waterfall .row"))
            .await
            .unwrap()
        {
            out.push(row.attr("data-service").await.unwrap().unwrap_or_default());
        }
        out
    };
    assert!(
        services.iter().any(|s| s == "gateway") && services.iter().any(|s| s == "storage"),
        "{services:?}"
    );
    browser.click("#waterfall .row").await;
    browser.text_of("#span-detail", "request_id").await;
    browser
        .text_of("#trace-logs", "/storage/v1/object/pictures/sunset.png")
        .await;
    browser.shot("waterfall").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
    telemetry.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_user_sees_what_their_policies_allow() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    cloud
        .client()
        .signup("ada@example.com", "correct horse battery")
        .await
        .unwrap();
    let _: Value = cloud
        .admin()
        .post("/storage/v1/bucket", &json!({"name": "hidden"}))
        .await
        .unwrap();
    let browser = Browser::start("user").await;
    browser.go(&format!("{base}/console")).await;
    // A wrong password: the server's message next to the form.
    browser.type_into("#email", "ada@example.com").await;
    browser.type_into("#password", "wrong password!").await;
    browser.click("#password-form button").await;
    let refused = browser.text_of("#sign-in-error", "").await;
    assert!(!refused.trim().is_empty());
    let password = browser.find("#password").await;
    password.clear().await.unwrap();
    password.send_keys("correct horse battery").await.unwrap();
    browser.click("#password-form button").await;
    browser.text_of("#who", "ada@example.com").await;
    // The admin screens say so, clearly.
    browser.go(&format!("{base}/console#/traces")).await;
    browser.text_of(".denied", "Not allowed").await;
    browser.shot("traces-not-allowed").await;
    browser.go(&format!("{base}/console#/usage")).await;
    browser
        .text_of("#usage-summary .denied", "Not allowed")
        .await;
    browser
        .text_of("#usage-budgets .denied", "Not allowed")
        .await;
    // Storage shows no bucket the user may not see, and refuses to create one.
    browser.go(&format!("{base}/console#/storage")).await;
    browser.type_into("#bucket-name", "mine").await;
    browser.click("#bucket-form button").await;
    browser.text_of(".denied", "Not allowed").await;
    let page = browser.client.source().await.unwrap();
    assert!(
        !page.contains("hidden"),
        "a private bucket leaked into the page"
    );
    browser.shot("storage-not-allowed").await;
    // A session that has expired (its token no longer valid): the screen says to
    // sign in again, never a blank page.
    browser
        .client
        .execute(
            "sessionStorage.setItem('minicloud.token', 'eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln'); return true",
            vec![],
        )
        .await
        .unwrap();
    browser.go(&format!("{base}/console#/functions")).await;
    browser.text_of("#main .error", "sign in again").await;
    browser.shot("session-expired").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_edits_documents_and_is_told_of_a_conflict() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let browser = Browser::start("database").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;

    browser.go(&format!("{base}/console#/database")).await;
    browser.type_into("#collection-name", "notes").await;
    browser
        .type_into("#collection-index", "title, version")
        .await;
    browser.click("#collection-form button").await;
    browser.click("#new-document").await;
    browser.type_into("#document-id", "n1").await;
    browser
        .type_into("#document-data", r#"{"title": "first"}"#)
        .await;
    browser.click("#document-form button").await;
    browser.text_of("#document-status", "version 1").await;
    browser.text_of("#documents", "first").await;
    // Invalid JSON is refused in place.
    let data = browser.find("#document-data").await;
    data.clear().await.unwrap();
    data.send_keys("{not json").await.unwrap();
    browser.click("#document-form button").await;
    browser.text_of("#document-status", "Not JSON").await;

    // Someone else saves meanwhile: the editor's If-Match no longer holds.
    let _: Value = cloud
        .admin()
        .put(
            "/db/v1/collections/notes/docs/n1",
            &json!({"title": "theirs"}),
        )
        .await
        .unwrap();
    data.clear().await.unwrap();
    data.send_keys(r#"{"title": "mine"}"#).await.unwrap();
    browser.click("#document-form button").await;
    browser.text_of("#document-status", "Conflict").await;
    browser.shot("conflict").await;
    let kept: Value = cloud
        .admin()
        .get("/db/v1/collections/notes/docs/n1")
        .await
        .unwrap();
    assert_eq!(
        kept["data"]["title"], "theirs",
        "the conflicting save changed nothing"
    );
    // A bad filter in the query builder: the server's words next to it.
    let filter = browser.find("#query-filter").await;
    filter
        .send_keys(r#"{"field":"title","op":"near","value":1}"#)
        .await
        .unwrap();
    browser.click("#query-form button").await;
    let said = browser.text_of("#query-form .error", "").await;
    assert!(said.contains("filter"), "{said}");
    let collection: Value = cloud.admin().get("/db/v1/collections/notes").await.unwrap();
    assert_eq!(
        collection["indexes"][0]["fields"],
        json!(["title", "version"]),
        "{collection}"
    );

    // Key-value: set a key, see it listed, bad JSON refused in place.
    browser.go(&format!("{base}/console#/database")).await;
    browser.type_into("#kv-namespace", "prefs").await;
    browser.type_into("#kv-key", "theme").await;
    browser.type_into("#kv-value", "{oops").await;
    browser.click("#kv-form button[type=submit]").await;
    browser.text_of("#kv-status", "Not JSON").await;
    let value = browser.find("#kv-value").await;
    value.clear().await.unwrap();
    value.send_keys(r#"{"dark": true}"#).await.unwrap();
    browser.click("#kv-form button[type=submit]").await;
    browser.text_of("#kv-status", "version 1").await;
    browser.text_of("#kv-table", "theme").await;
    let stored: Value = cloud.admin().get("/db/v1/kv/prefs/theme").await.unwrap();
    assert_eq!(stored["value"], json!({"dark": true}));
    browser.shot("key-value").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_redrives_a_dead_letter() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name": "jobs"}))
        .await
        .unwrap();
    // Nothing listens on the discard port: every delivery fails at once.
    let subscription: Value = admin
        .post(
            "/events/v1/subscriptions",
            &json!({"topic":"jobs","target":{"webhook":"http://127.0.0.1:9/"},
                    "retry":{"max_attempts":1,"min_backoff_ms":10,"max_backoff_ms":10}}),
        )
        .await
        .unwrap();
    let id = subscription["id"].as_str().unwrap().to_owned();
    let _: Value = admin
        .post(
            "/events/v1/topics/jobs/events",
            &json!({"specversion":"1.0","id":"job-1","source":"/test","type":"job.done","data":{"n":1}}),
        )
        .await
        .unwrap();
    let path = format!("/events/v1/subscriptions/{id}/dead-letters");
    for _ in 0..100 {
        let letters: Value = admin.get(&path).await.unwrap();
        if !letters["dead_letters"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let browser = Browser::start("events").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;
    browser.go(&format!("{base}/console#/events")).await;
    browser.text_of("#topics", "jobs").await;
    browser.click("#subscriptions tr.clickable").await;
    browser.text_of("#dead-letter-table", "job-1").await;
    let stats = browser.text_of("#stats-table", "dead letters").await;
    assert!(stats.contains("dead letters 1"), "{stats}");
    browser.shot("dead-letters").await;
    browser.click("#redrive").await;
    browser.text_of("#redrive-status", "Redriven: 1").await;

    // The live tail, filtered on the server by a pattern.
    browser.go(&format!("{base}/console#/events")).await;
    browser.choose("#tail-topic", "jobs").await;
    browser
        .type_into("#tail-pattern", r#"{"type": ["job.done"]}"#)
        .await;
    browser.click("#tail-form button").await;
    browser.text_of("#tail-status", "Following jobs").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, kind) in [("job-2", "job.started"), ("job-3", "job.done")] {
        let _: Value = admin
            .post(
                "/events/v1/topics/jobs/events",
                &json!({"specversion":"1.0","id":id,"source":"/test","type":kind,"data":{"id":id}}),
            )
            .await
            .unwrap();
    }
    let seen = browser.text_of("#tail-events", "job-3").await;
    assert!(!seen.contains("job.started"), "{seen}");
    browser.shot("live-tail").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_deploys_a_function_from_a_zip_and_test_invokes_it() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let zip = crate::invoker::zip_of(&[(
        "app.py",
        b"def handler(event, context):\n    print('doubling', event['n'])\n    return {'twice': event['n'] * 2}\n",
        0o644,
    )]);
    let file = cloud.data_dir.join("doubler.zip");
    std::fs::write(&file, zip).unwrap();
    let browser = Browser::start("functions").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;
    browser.go(&format!("{base}/console#/functions")).await;
    browser.type_into("#function-name", "doubler").await;
    browser.type_into("#function-handler", "app.handler").await;
    browser
        .type_into("#function-zip", file.to_str().unwrap())
        .await;
    browser.click("#deploy-form button").await;
    browser.text_of("#function-config", "python3").await;
    let payload = browser.find("#invoke-payload").await;
    payload.clear().await.unwrap();
    payload.send_keys(r#"{"n": 21}"#).await.unwrap();
    browser.click("#invoke-form button").await;
    let output = browser.text_of("#invoke-output", "twice").await;
    assert!(output.contains("42"), "{output}");
    browser.text_of("#invoke-log", "doubling 21").await;
    browser.text_of("#invoke-report", "Billed Duration").await;
    browser.shot("test-invoke").await;
    // Bad input stays in the page: a payload that is not JSON.
    payload.clear().await.unwrap();
    payload.send_keys("{oops").await.unwrap();
    browser.click("#invoke-form button").await;
    browser.text_of("#invoke-result", "not JSON").await;
    // The live log follows what the function printed.
    browser.text_of("#live-logs", "doubling 21").await;
    browser.shot("live-logs").await;

    // A folder deploys as it is (the console zips it).
    let folder = cloud.data_dir.join("tripler");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("app.py"),
        b"def handler(event, context):\n    return {'thrice': event['n'] * 3}\n",
    )
    .unwrap();
    browser.go(&format!("{base}/console#/functions")).await;
    browser.text_of("#functions", "doubler").await;
    browser.type_into("#function-name", "tripler").await;
    browser.type_into("#function-handler", "app.handler").await;
    browser
        .type_into("#function-folder", folder.to_str().unwrap())
        .await;
    browser.click("#deploy-form button").await;
    browser.text_of("#function-config", "tripler").await;
    let payload = browser.find("#invoke-payload").await;
    payload.clear().await.unwrap();
    payload.send_keys(r#"{"n": 5}"#).await.unwrap();
    browser.click("#invoke-form button").await;
    let output = browser.text_of("#invoke-output", "thrice").await;
    assert!(output.contains("15"), "{output}");
    browser.stop().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_manages_users_roles_and_keys() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let _: Value = cloud
        .admin()
        .post("/auth/v1/admin/roles", &json!({"name": "readers"}))
        .await
        .unwrap();
    let browser = Browser::start("auth").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;
    browser.go(&format!("{base}/console#/auth")).await;

    // Users: create, find, delete.
    browser
        .type_into("#new-user-email", "grace@example.com")
        .await;
    browser
        .type_into("#new-user-password", "correct horse battery")
        .await;
    browser.click("#new-user-form button").await;
    browser.text_of("#user-table", "grace@example.com").await;
    browser.type_into("#user-search", "grace").await;
    browser.text_of("#user-table", "grace@example.com").await;
    // Grace signs in elsewhere; the admin signs her out everywhere.
    let grace = cloud
        .client()
        .sign_in("grace@example.com", "correct horse battery")
        .await
        .unwrap();
    let rows = browser
        .client
        .find_all(Locator::Css("#user-table tr"))
        .await
        .unwrap();
    for row in rows {
        if row.text().await.unwrap().contains("grace@example.com") {
            row.find(Locator::Css("button.sign-out-user"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    }
    browser
        .text_of("#user-status", "Signed grace@example.com out everywhere")
        .await;
    assert!(
        cloud.client().refresh(&grace.refresh_token).await.is_err(),
        "her session can no longer be renewed"
    );

    // A policy naming no real action: the server's validation, in place.
    let select = browser.find("#role-select").await;
    select.select_by_value("readers").await.unwrap();
    let editor = browser.find("#role-policies").await;
    editor.clear().await.unwrap();
    editor
        .send_keys(r#"[{"effect":"allow","actions":["storage:Fly"],"resources":["storage:*"]}]"#)
        .await
        .unwrap();
    browser.click("#role-form button").await;
    browser.text_of("#role-status", "storage:Fly").await;
    editor.clear().await.unwrap();
    editor
        .send_keys(
            r#"[{"effect":"allow","actions":["storage:GetObject"],"resources":["storage:*"]}]"#,
        )
        .await
        .unwrap();
    browser.click("#role-form button").await;
    browser.text_of("#role-status", "Saved").await;
    let role: Value = cloud
        .admin()
        .get("/auth/v1/admin/roles/readers")
        .await
        .unwrap();
    assert_eq!(role["policies"][0]["actions"][0], "storage:GetObject");
    // The simulator answers with the real evaluator over what was just saved.
    for (action, answer) in [
        ("storage:GetObject", "Allowed"),
        ("storage:PutObject", "implicit_deny"),
        ("storage:Teleport", "not an action"),
    ] {
        let field = browser.find("#simulate-action").await;
        field.clear().await.unwrap();
        field.send_keys(action).await.unwrap();
        let resource = browser.find("#simulate-resource").await;
        resource.clear().await.unwrap();
        resource.send_keys("storage:photos/a.jpg").await.unwrap();
        browser.click("#simulate-form button").await;
        browser.text_of("#simulate-result", answer).await;
    }

    // API keys: issued once, then revoked.
    browser.type_into("#key-name", "ci reader").await;
    browser.type_into("#key-role", "readers").await;
    browser.click("#key-issue-form button").await;
    let secret = browser.text_of("#issued-secret", "mck_").await;
    browser.text_of("#key-table", "ci reader").await;
    browser.shot("auth").await;
    let status = cloud
        .client()
        .with_token(secret.trim())
        .get::<Value>("/storage/v1/bucket")
        .await
        .map(|_| 200)
        .unwrap_or_else(|e| e.status().unwrap_or(0));
    assert_eq!(status, 200, "the issued key works");
    let rows = browser
        .client
        .find_all(Locator::Css("#key-table tr"))
        .await
        .unwrap();
    for row in rows {
        if row.text().await.unwrap().contains("ci reader") {
            row.find(Locator::Css("button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    }
    browser.text_of("#key-table", "revoked").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_sees_usage_per_service_and_function_and_budgets_with_their_state() {
    let cloud = TestCloud::start().await.unwrap();
    let base = cloud.gateway_url().to_owned();
    let admin = cloud.admin();
    let echo = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    let bundle = super::invoker::zip_of(&[("bootstrap", &echo, 0o755)]);
    for name in ["busy", "quiet"] {
        super::invoker::deploy_ok(&cloud, json!({"name":name,"runtime":"provided"}), &bundle).await;
    }
    let http = reqwest::Client::new();
    for name in ["busy", "busy", "busy", "quiet"] {
        let response = http
            .post(format!("{base}/2015-03-31/functions/{name}/invocations"))
            .bearer_auth(&cloud.keys.service_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name": "metered"}))
        .await
        .unwrap();
    let response = http
        .post(format!("{base}/storage/v1/object/metered/a.txt"))
        .bearer_auth(&cloud.keys.service_key)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A budget far below what `busy` has cost, capping it.
    let _: Value = admin
        .post(
            "/billing/v1/budgets",
            &json!({"name":"busy-cap","amount":"0.0000000001","scope":{"resource":"busy"},
                "actions":["notify","cap"]}),
        )
        .await
        .unwrap();
    // Shipped every 100 ms, evaluated every second: wait for both through the API.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let budget: Value = admin.get("/billing/v1/budgets/busy-cap").await.unwrap();
        let usage: Value = admin
            .get("/billing/v1/usage?granularity=month&meter=function.requests")
            .await
            .unwrap();
        let requests: u64 = usage["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["quantity"].as_u64().unwrap())
            .sum();
        if budget["state"]["capped"] == json!(true) && requests == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not metered: {budget} {usage}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let browser = Browser::start("usage").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;
    browser.go(&format!("{base}/console#/usage")).await;
    // Per function: the busier one first, with its own request count.
    browser.text_of("#function-costs", "busy").await;
    let functions = browser
        .attributes("#function-costs tr[data-function]", "data-function")
        .await;
    assert_eq!(functions, ["busy", "quiet"]);
    browser
        .text_of(
            "#function-costs tr[data-function=busy] td:nth-child(2)",
            "3",
        )
        .await;
    browser
        .text_of(
            "#function-costs tr[data-function=quiet] td:nth-child(2)",
            "1",
        )
        .await;
    // Per service: a row and a bar segment each for functions and storage.
    let services = browser
        .attributes("#service-costs tr[data-service]", "data-service")
        .await;
    assert!(
        services.contains(&"functions".to_owned()) && services.contains(&"storage".to_owned()),
        "{services:?}"
    );
    let segments = browser
        .attributes("#service-chart rect.segment", "data-key")
        .await;
    assert!(segments.contains(&"functions".to_owned()), "{segments:?}");
    assert!(segments.contains(&"storage".to_owned()), "{segments:?}");
    // The budget's state: every threshold fired, capped.
    browser
        .text_of(
            "#budget-table tr[data-budget=busy-cap] .budget-state",
            "capped",
        )
        .await;
    browser
        .text_of("#budget-table tr[data-budget=busy-cap]", "50%, 80%, 100%")
        .await;
    browser.shot("usage").await;
    browser
        .client
        .execute(
            "document.getElementById('usage-functions').scrollIntoView(); return true",
            vec![],
        )
        .await
        .unwrap();
    browser.shot("usage-functions-and-budgets").await;

    // A budget from the form; a bad one is refused with the server's message.
    browser
        .type_into("#budget-form input[name=name]", "storage-watch")
        .await;
    browser
        .type_into("#budget-form input[name=amount]", "-1")
        .await;
    browser
        .choose("#budget-form select[name=scope]", "service")
        .await;
    browser
        .type_into("#budget-form input[name=scope_value]", "storage")
        .await;
    browser.click("#budget-form button").await;
    browser.text_of("#usage-budgets .error", "amount").await;
    let amount = browser.find("#budget-form input[name=amount]").await;
    amount.clear().await.unwrap();
    amount.send_keys("5").await.unwrap();
    browser.click("#budget-form button").await;
    browser
        .text_of(
            "#budget-table tr[data-budget=storage-watch]",
            "service storage",
        )
        .await;
    browser
        .text_of(
            "#budget-table tr[data-budget=storage-watch] .budget-state",
            "ok",
        )
        .await;
    let saved: Value = admin
        .get("/billing/v1/budgets/storage-watch")
        .await
        .unwrap();
    assert_eq!(saved["scope"], json!({"service":"storage"}));
    assert_eq!(saved["actions"], json!(["notify"]));
    // Deleting the cap lifts it.
    browser
        .click("#budget-table tr[data-budget=busy-cap] button")
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while browser
        .client
        .find(Locator::Css("#budget-table tr[data-budget=busy-cap]"))
        .await
        .is_ok()
    {
        assert!(std::time::Instant::now() < deadline, "the budget stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = http
        .get(format!("{base}/billing/v1/budgets/busy-cap"))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    browser.stop().await;
    cloud.stop().await.unwrap();
}
