//! The thumbnail pipeline set up and followed from the console (issue 20): the
//! function deployed from its zip and given its storage trigger in the Functions
//! screen, a photo uploaded through the Storage screen's file picker, and that
//! upload's trace opened as a waterfall across gateway, storage, bus, invoker, the
//! function and docdb, with the function's own log lines for that invocation.

use std::time::Duration;

use minicloud_cli::demo::{self, COLLECTION, PHOTOS, ROLE, THUMBNAILS};
use minicloud_testkit::TestCloud;
use minicloud_testkit::browser::Browser;
use serde_json::{Value, json};

const WANTED: [&str; 6] = ["gateway", "storage", "bus", "invoker", "thumbnail", "docdb"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_deploys_the_pipeline_from_the_console_and_follows_a_photo() {
    let telemetry = minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: None,
        json_logs: false,
        keep_traces: true,
    });
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    // What the function needs besides itself, over the API (the console's own
    // bucket, collection and role forms have their tests in tests/it/console.rs).
    for (path, body) in [
        (
            "/storage/v1/bucket",
            json!({"name": PHOTOS, "policy": demo::photos_policy()}),
        ),
        ("/storage/v1/bucket", json!({"name": THUMBNAILS})),
        ("/db/v1/collections", json!({"name": COLLECTION})),
        (
            "/auth/v1/admin/roles",
            json!({"name": ROLE, "policies": demo::role_policy()}),
        ),
    ] {
        let _: Value = admin.post(path, &body).await.unwrap();
    }
    let zip = cloud.data_dir.join("thumbnail.zip");
    std::fs::write(
        &zip,
        demo::function_zip(std::path::Path::new(env!("CARGO_BIN_EXE_thumbnail"))).unwrap(),
    )
    .unwrap();
    let photo = cloud.data_dir.join("beach.jpg");
    std::fs::write(&photo, thumbnail::sample_photo(640, 480, 1)).unwrap();

    let base = cloud.gateway_url().to_owned();
    let browser = Browser::start("thumbnail").await;
    browser
        .sign_in_as_admin(&base, &cloud.keys.service_key)
        .await;

    // Functions: deploy the zip, then the storage trigger.
    browser.go(&format!("{base}/console#/functions")).await;
    browser.type_into("#function-name", "thumbnail").await;
    browser.choose("#function-runtime", "provided").await;
    browser.type_into("#function-role", ROLE).await;
    let memory = browser.find("#function-memory").await;
    memory.clear().await.unwrap();
    memory.send_keys("512").await.unwrap();
    let timeout = browser.find("#function-timeout").await;
    timeout.clear().await.unwrap();
    timeout.send_keys("60").await.unwrap();
    browser
        .type_into("#function-zip", zip.to_str().unwrap())
        .await;
    browser.click("#deploy-form button").await;
    browser.text_of("#function-config", "\"provided\"").await;
    browser.type_into("#trigger-topic", "storage").await;
    browser
        .type_into(
            "#trigger-pattern",
            &json!({"type": ["minicloud.storage.object.created"], "data": {"bucket": [PHOTOS]}})
                .to_string(),
        )
        .await;
    browser.click("#trigger-form button").await;
    browser
        .text_of("#trigger-table", "deliveries and dead letters")
        .await;
    browser.shot("deployed").await;

    // Storage: the photo through the file picker.
    browser
        .go(&format!("{base}/console#/storage/{PHOTOS}"))
        .await;
    browser
        .type_into("#file-picker", photo.to_str().unwrap())
        .await;
    browser.text_of("#objects", "beach.jpg").await;

    // The function ran: its thumbnail is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while admin.download(THUMBNAILS, "beach.jpg").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no thumbnail was written"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every service's spans are kept before the waterfall is opened (the function's
    // come over OTLP from its own process, batched).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        telemetry.flush();
        let found: Value = admin
            .get(&format!(
                "/traces/v1/traces?route=/storage/v1/object/{PHOTOS}/beach.jpg&limit=5"
            ))
            .await
            .unwrap();
        let complete = found["traces"].as_array().unwrap().iter().any(|t| {
            WANTED
                .iter()
                .all(|w| t["services"].as_array().unwrap().iter().any(|s| s == w))
        });
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload's trace never held {WANTED:?}: {found}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Traces: the upload's trace from the list, as a waterfall.
    browser.go(&format!("{base}/console#/traces")).await;
    browser
        .type_into(
            "#trace-filter input[name=route]",
            &format!("/storage/v1/object/{PHOTOS}/beach.jpg"),
        )
        .await;
    browser.click("#trace-filter button").await;
    browser.text_of("#traces", "thumbnail").await;
    browser.click("#traces tr.clickable").await;
    browser.find("#waterfall .row").await;
    let services = browser.attributes("#waterfall .row", "data-service").await;
    for wanted in WANTED {
        assert!(
            services.iter().any(|s| s == wanted),
            "no {wanted} span in the waterfall: {services:?}"
        );
    }
    // The function's own lines for this invocation, beside the waterfall.
    browser
        .text_of(
            ".function-logs[data-function=thumbnail]",
            "thumbnail written",
        )
        .await;
    browser
        .text_of(
            ".function-logs[data-function=thumbnail]",
            "REPORT RequestId",
        )
        .await;
    browser.shot("waterfall").await;
    browser.stop().await;
    cloud.stop().await.unwrap();
    telemetry.shutdown();
}
