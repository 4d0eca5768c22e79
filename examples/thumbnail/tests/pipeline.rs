//! The reference pipeline end to end (docs/design.md §6): a whole cloud, this function deployed
//! into it the way `minicloud demo thumbnail` does, photos uploaded by users.

use std::time::Duration;

use minicloud_cli::demo::{self, COLLECTION, FUNCTION, PHOTOS, THUMBNAILS};
use minicloud_sdk::Client;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

fn function_zip() -> Vec<u8> {
    demo::function_zip(std::path::Path::new(env!("CARGO_BIN_EXE_thumbnail"))).unwrap()
}

async fn user(cloud: &TestCloud, email: &str) -> (Client, String) {
    let session = cloud
        .client()
        .signup(email, "correct horse battery")
        .await
        .unwrap();
    let uid = session.user_id().to_owned();
    (cloud.client().with_token(session.access_token), uid)
}

fn status<T>(result: Result<T, minicloud_sdk::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    }
}

fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
        .with_timezone(&chrono::Utc)
}

async fn owned_documents(admin: &Client, uid: &str) -> Vec<Value> {
    let found: Value = admin
        .post(
            &format!("/db/v1/collections/{COLLECTION}/query"),
            &json!({"filter": {"field": "owner", "op": "eq", "value": uid}, "limit": 100}),
        )
        .await
        .unwrap();
    found["documents"].as_array().unwrap().clone()
}

async fn thumbnails_of(admin: &Client, uid: &str) -> Vec<Value> {
    let listed: Value = admin
        .post(
            &format!("/storage/v1/object/list/{THUMBNAILS}"),
            &json!({"prefix": format!("{uid}/")}),
        )
        .await
        .unwrap();
    listed["objects"].as_array().unwrap().clone()
}

/// A token for the function's role, as the invoker gets one from auth.
async fn role_token(cloud: &TestCloud) -> String {
    let mut auth = minicloud_proto::auth::v1::auth_service_client::AuthServiceClient::new(
        cloud.service_channel(&cloud.urls.auth),
    );
    auth.issue_role_token(minicloud_proto::auth::v1::IssueRoleTokenRequest {
        role: demo::ROLE.into(),
        subject: "fn:thumbnail".into(),
        ttl_seconds: 600,
    })
    .await
    .unwrap()
    .into_inner()
    .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_become_thumbnails_and_metadata_and_bad_files_are_dead_lettered() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let pipeline = demo::set_up(&admin, &function_zip(), serde_json::Map::new())
        .await
        .unwrap();
    // Setting up again changes nothing and makes no second trigger.
    let again = demo::set_up(&admin, &function_zip(), serde_json::Map::new())
        .await
        .unwrap();
    assert_eq!(again.subscription_id, pipeline.subscription_id);

    let (alice, alice_uid) = user(&cloud, "alice@example.com").await;
    let (bob, bob_uid) = user(&cloud, "bob@example.com").await;

    // The bad file goes first: its retries must not hold up the photos behind it.
    let mut photos = demo::sample_photos();
    photos.sort_by_key(|p| p.display.is_some());
    assert!(photos[0].display.is_none());
    for photo in &photos {
        alice
            .upload(
                PHOTOS,
                &format!("{alice_uid}/{}", photo.name),
                photo.bytes.clone(),
                "image/jpeg",
                false,
            )
            .await
            .unwrap();
    }
    let (processed, dead) = demo::wait_for_results(
        &admin,
        &pipeline,
        &alice_uid,
        &photos,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    for photo in photos.iter().filter(|p| p.display.is_some()) {
        let result = processed
            .iter()
            .find(|r| r.path == format!("{alice_uid}/{}", photo.name))
            .unwrap();
        demo::check(photo, result).unwrap();
        let data = &result.document["data"];
        assert_eq!(data["owner"], alice_uid.as_str());
        assert_eq!(data["content_type"], "image/jpeg");
        assert_eq!(data["original"], format!("photos/{}", result.path));
        assert_eq!(
            data["thumbnail"],
            format!("thumbnails/{}", thumbnail::thumbnail_path(&result.path))
        );
        assert!(data["created_at"].is_string());
    }
    // The panorama really is fitted, not cropped: 3000×600 → 256×51.
    let panorama = processed
        .iter()
        .find(|r| r.path.ends_with("panorama.jpg"))
        .unwrap();
    assert_eq!(panorama.thumbnail_size, (256, 51));

    // The bad file: three attempts, then the dead letters with the decoder's error,
    // after every good photo was done.
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter["attempts"], 3, "{letter}");
    let error = letter["last_error"].as_str().unwrap();
    assert!(
        error.contains("thumbnail failed") && error.to_lowercase().contains("format"),
        "{error}"
    );
    for result in &processed {
        assert!(
            time(&result.document["updated_at"]) < time(&letter["created_at"]),
            "{} waited for the bad file",
            result.path
        );
    }
    let good = photos.iter().filter(|p| p.display.is_some()).count();
    assert_eq!(owned_documents(&admin, &alice_uid).await.len(), good);
    assert_eq!(thumbnails_of(&admin, &alice_uid).await.len(), good);
    // A redelivered event rewrites the same thumbnail and document, nothing more.
    let landscape = processed
        .iter()
        .find(|r| r.path.ends_with("landscape.jpg"))
        .unwrap();
    let event = json!({
        "specversion": "1.0", "id": "evt_redelivered", "source": "/minicloud/storage",
        "type": "minicloud.storage.object.created",
        "time": landscape.document["data"]["created_at"],
        "data": {"bucket": PHOTOS, "path": landscape.path, "owner": alice_uid,
                 "content_type": "image/jpeg", "size": landscape.document["data"]["bytes"]},
    });
    let answer: Value = admin
        .post(&format!("/functions/v1/{FUNCTION}/invoke"), &event)
        .await
        .unwrap();
    assert_eq!(answer["document"], thumbnail::document_id(&landscape.path));
    let id = thumbnail::document_id(&landscape.path);
    let after: Value = admin
        .get(&format!("/db/v1/collections/{COLLECTION}/docs/{id}"))
        .await
        .unwrap();
    assert_eq!(after["data"], landscape.document["data"]);
    assert!(after["version"].as_i64() > landscape.document["version"].as_i64());
    assert_eq!(owned_documents(&admin, &alice_uid).await.len(), good);
    assert_eq!(thumbnails_of(&admin, &alice_uid).await.len(), good);
    // The photos bucket: each user reads and writes only under their own uid.
    let mine = format!("{alice_uid}/landscape.jpg");
    assert_eq!(status(alice.download(PHOTOS, &mine).await), 200);
    assert_eq!(status(bob.download(PHOTOS, &mine).await), 403);
    assert_eq!(
        status(
            bob.upload(
                PHOTOS,
                &format!("{alice_uid}/bob.jpg"),
                vec![1],
                "image/jpeg",
                false
            )
            .await
        ),
        403
    );
    assert_eq!(
        status(
            bob.upload(
                PHOTOS,
                &format!("{bob_uid}/bob.jpg"),
                photos[1].bytes.clone(),
                "image/jpeg",
                false
            )
            .await
        ),
        200
    );
    assert_eq!(
        status(
            cloud
                .client()
                .upload(PHOTOS, "anon/x.jpg", vec![1], "image/jpeg", false)
                .await
        ),
        403
    );
    assert_eq!(
        status(
            alice
                .download(THUMBNAILS, &format!("{alice_uid}/tiny.jpg"))
                .await
        ),
        403
    );
    // The function's role may do exactly its three things.
    let role = cloud.client().with_token(role_token(&cloud).await);
    assert_eq!(status(role.download(PHOTOS, &mine).await), 200);
    assert_eq!(
        status(
            role.upload(THUMBNAILS, "probe/p.jpg", vec![1], "image/jpeg", true)
                .await
        ),
        200
    );
    assert_eq!(
        status(
            role.put_document(COLLECTION, "probe", &json!({"owner": "probe"}))
                .await
        ),
        200
    );
    admin
        .post::<_, Value>("/db/v1/collections", &json!({"name": "other"}))
        .await
        .unwrap();
    let refused: Vec<(&str, u16)> = vec![
        (
            "write a photo",
            status(
                role.upload(PHOTOS, &mine, vec![1], "image/jpeg", true)
                    .await,
            ),
        ),
        (
            "read a thumbnail",
            status(role.download(THUMBNAILS, "probe/p.jpg").await),
        ),
        (
            "delete a thumbnail",
            status(
                role.delete(&format!("/storage/v1/object/{THUMBNAILS}/probe/p.jpg"))
                    .await,
            ),
        ),
        (
            "list photos",
            status(
                role.post::<_, Value>(
                    &format!("/storage/v1/object/list/{PHOTOS}"),
                    &json!({"prefix": ""}),
                )
                .await,
            ),
        ),
        (
            "create a bucket",
            status(
                role.post::<_, Value>("/storage/v1/bucket", &json!({"name": "mine"}))
                    .await,
            ),
        ),
        (
            "read a document",
            status(
                role.get::<Value>(&format!("/db/v1/collections/{COLLECTION}/docs/probe"))
                    .await,
            ),
        ),
        (
            "query documents",
            status(
                role.post::<_, Value>(
                    &format!("/db/v1/collections/{COLLECTION}/query"),
                    &json!({}),
                )
                .await,
            ),
        ),
        (
            "delete a document",
            status(
                role.delete(&format!("/db/v1/collections/{COLLECTION}/docs/probe"))
                    .await,
            ),
        ),
        (
            "write another collection",
            status(role.put_document("other", "x", &json!({})).await),
        ),
        (
            "write a key",
            status(role.put::<_, Value>("/db/v1/kv/ns/k", &json!(1)).await),
        ),
        (
            "publish an event",
            status(
                role.post::<_, Value>(
                    "/events/v1/topics/storage/events",
                    &json!({"specversion": "1.0", "id": "x", "source": "/x", "type": "x"}),
                )
                .await,
            ),
        ),
        (
            "invoke a function",
            status(
                role.post::<_, Value>(&format!("/functions/v1/{FUNCTION}/invoke"), &json!({}))
                    .await,
            ),
        ),
    ];
    for (what, code) in refused {
        assert_eq!(code, 403, "the role may not {what}");
    }
    cloud.stop().await.unwrap();
}

/// The upload's trace: gateway → storage → (outbox) bus → invoker → the function →
/// gateway → storage and docdb, one trace id, every span's parent in the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_upload_into_the_function_and_back() {
    use minicloud_testkit::otlp::{OtlpReceiver, ReceivedSpan, Trace};
    let receiver = OtlpReceiver::start().await.unwrap();
    let telemetry = minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: Some(receiver.endpoint.clone()),
        json_logs: false,
        keep_traces: false,
    });
    // The invoker hands its collector to functions (and lets them connect to it:
    // a port in a function's own env would not be, its sandbox allows only the
    // platform's ports and the configured outside ones).
    let cloud = TestCloud::builder()
        .invoker(|invoker| invoker.functions_otlp_endpoint = Some(receiver.endpoint.clone()))
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let pipeline = demo::set_up(&admin, &function_zip(), serde_json::Map::new())
        .await
        .unwrap();
    let (alice, uid) = user(&cloud, "trace@example.com").await;

    let photo = thumbnail::sample_photo(640, 480, 1);
    let path = format!("{uid}/traced.jpg");
    let response = alice
        .request(
            reqwest::Method::POST,
            &format!("/storage/v1/object/{PHOTOS}/{path}"),
        )
        .header("content-type", "image/jpeg")
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let photos = [demo::SamplePhoto {
        name: "traced.jpg".into(),
        bytes: Vec::new(),
        display: Some((640, 480)),
    }];
    demo::wait_for_results(&admin, &pipeline, &uid, &photos, Duration::from_secs(60))
        .await
        .unwrap();
    telemetry.flush();

    let service = |s: &ReceivedSpan| -> String {
        s.attribute("minicloud.service")
            .unwrap_or_default()
            .to_owned()
    };
    let is_root = |s: &ReceivedSpan| {
        s.attribute("minicloud.service") == Some("gateway")
            && s.attribute("request_id") == Some(&request_id)
    };
    // Done when docdb's span for the metadata write has arrived in the upload's trace
    // and every span's parent has too: the invoker's span around the function ends,
    // and is exported, after the function's own spans (seen missing once in CI).
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            let Some(root) = spans.iter().find(|s| is_root(s)) else {
                return false;
            };
            spans.iter().any(|s| {
                s.trace_id == root.trace_id
                    && s.attribute("minicloud.service") == Some("docdb")
                    && s.name.starts_with("PUT /db/v1/collections")
            }) && Trace::of(root, spans).is_connected()
        })
        .await;
    let root = spans
        .iter()
        .find(|s| is_root(s))
        .expect("the gateway's span of the upload");
    let trace = Trace::of(root, &spans);
    trace.assert_connected();
    let upload = trace.find("storage upload", |s| {
        service(s) == "storage" && s.name.starts_with("POST /storage/v1/object")
    });
    let deliver = trace.find("bus delivery", |s| {
        service(s) == "bus" && s.name.starts_with("deliver")
    });
    let invoker = trace.find("invoker", |s| {
        service(s) == "invoker" && s.name.ends_with("/Invoke")
    });
    let function = trace.find("function", |s| {
        s.resource_service == "thumbnail" && s.name == "thumbnail"
    });
    let read = trace.find("storage read by the function", |s| {
        service(s) == "storage"
            && s.name.starts_with("GET /storage/v1/object")
            && trace.descends(s, function)
    });
    let write = trace.find("thumbnail write", |s| {
        service(s) == "storage"
            && s.name.starts_with("PUT /storage/v1/object")
            && trace.descends(s, function)
    });
    let metadata = trace.find("docdb write", |s| {
        service(s) == "docdb"
            && s.name.starts_with("PUT /db/v1/collections")
            && trace.descends(s, function)
    });
    let chain = [root, upload, deliver, invoker, function];
    for pair in chain.windows(2) {
        assert!(
            trace.descends(pair[1], pair[0]),
            "{} does not descend from {}: {:#?}",
            pair[1].name,
            pair[0].name,
            trace.names()
        );
    }
    for span in [read, write, metadata] {
        // Through the gateway, as any client's calls (dispatched in-process here: the
        // service's span is the gateway's child, with no hop span between).
        let gateway = trace.parent_of(span);
        assert_eq!(service(gateway), "gateway", "{}", span.name);
    }

    cloud.stop().await.unwrap();
    telemetry.shutdown();
}

/// Issue 19's acceptance: a photo copied in with `aws s3 cp` (the S3 API, signed with
/// an access key bound to the user) runs the same pipeline as a REST upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_copied_in_with_the_aws_cli_becomes_a_thumbnail() {
    let deps = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pydeps-aws");
    assert!(
        deps.join("awscli").is_dir(),
        "the aws CLI is not installed in {}: run `make test-deps`",
        deps.display()
    );
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let pipeline = demo::set_up(&admin, &function_zip(), serde_json::Map::new())
        .await
        .unwrap();
    let (_, uid) = user(&cloud, "carol@example.com").await;
    // Carol's own key pair: her role and her id, so the bucket's per-user policy holds.
    let pair: Value = admin
        .post(
            "/auth/v1/admin/api-keys",
            &json!({"name": "carol's laptop", "role": "authenticated", "subject": uid, "kind": "aws"}),
        )
        .await
        .unwrap();
    let mut photos = demo::sample_photos();
    photos.retain(|p| p.name == "landscape.jpg");
    let photo = &photos[0];
    let dir = cloud.data_dir.join("aws-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(&photo.name);
    std::fs::write(&file, &photo.bytes).unwrap();
    let aws = |args: &[&str]| {
        std::process::Command::new("python3")
            .env("PYTHONPATH", &deps)
            .env("AWS_ACCESS_KEY_ID", pair["access_key_id"].as_str().unwrap())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                pair["secret_access_key"].as_str().unwrap(),
            )
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .args(["-m", "awscli", "--endpoint-url", cloud.gateway_url()])
            .args(args)
            .output()
            .unwrap()
    };
    let target = format!("s3://{PHOTOS}/{uid}/{}", photo.name);
    let copied =
        tokio::task::block_in_place(|| aws(&["s3", "cp", file.to_str().unwrap(), &target]));
    assert!(
        copied.status.success(),
        "aws s3 cp failed: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    // Another user's folder stays closed to her key.
    let elsewhere = format!("s3://{PHOTOS}/someone-else/{}", photo.name);
    let refused =
        tokio::task::block_in_place(|| aws(&["s3", "cp", file.to_str().unwrap(), &elsewhere]));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("AccessDenied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let (processed, dead) =
        demo::wait_for_results(&admin, &pipeline, &uid, &photos, Duration::from_secs(60))
            .await
            .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(processed.len(), 1);
    demo::check(photo, &processed[0]).unwrap();
    assert_eq!(processed[0].document["data"]["owner"], uid.as_str());
    assert_eq!(thumbnails_of(&admin, &uid).await.len(), 1);
    cloud.stop().await.unwrap();
}

/// Issue 20: with no collector configured, minicloud keeps the trace itself — the
/// functions' spans arrive at the gateway's OTLP receiver with their tokens — and
/// `/traces/v1` shows one upload from the gateway through storage, the bus, the
/// invoker and the function to docdb, with the request's log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minicloud_keeps_the_uploads_trace_into_the_function() {
    let telemetry = minicloud_telemetry::init(&minicloud_telemetry::TelemetryConfig {
        service_name: "minicloud".into(),
        otlp_endpoint: None,
        json_logs: false,
        keep_traces: true,
    });
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let pipeline = demo::set_up(&admin, &function_zip(), serde_json::Map::new())
        .await
        .unwrap();
    let (alice, uid) = user(&cloud, "kept@example.com").await;
    let path = format!("{uid}/kept.jpg");
    let response = alice
        .request(
            reqwest::Method::POST,
            &format!("/storage/v1/object/{PHOTOS}/{path}"),
        )
        .header("content-type", "image/jpeg")
        .body(thumbnail::sample_photo(640, 480, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let photos = [demo::SamplePhoto {
        name: "kept.jpg".into(),
        bytes: Vec::new(),
        display: Some((640, 480)),
    }];
    demo::wait_for_results(&admin, &pipeline, &uid, &photos, Duration::from_secs(60))
        .await
        .unwrap();

    let wanted = ["gateway", "storage", "bus", "invoker", "thumbnail", "docdb"];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let trace = loop {
        telemetry.flush();
        let found: Result<Value, _> = admin.get(&format!("/traces/v1/traces/{request_id}")).await;
        if let Ok(trace) = found {
            let services: Vec<&str> = trace["spans"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["service"].as_str())
                .collect();
            if wanted.iter().all(|w| services.contains(w)) {
                break trace;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the kept trace never held {wanted:?}: {services:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spans = trace["spans"].as_array().unwrap();
    // The function's own span came over OTLP, signed by its role's token.
    let function = spans
        .iter()
        .find(|s| s["service"] == "thumbnail" && s["name"] == "thumbnail")
        .expect("the function's span");
    assert!(
        function["attributes"]["minicloud.ingested_by"]
            .as_str()
            .unwrap()
            .starts_with(demo::ROLE),
        "{function}"
    );
    // Every span's parent is in the trace but the root's: one waterfall.
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let orphans: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            s["parent_span_id"]
                .as_str()
                .is_some_and(|p| !ids.contains(&p))
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "spans whose parent is missing: {orphans:#?}"
    );
    // The listing finds it by the function's name, and the logs by its request ids.
    let listed: Value = admin
        .get("/traces/v1/traces?service=thumbnail&limit=100")
        .await
        .unwrap();
    assert!(
        listed["traces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["trace_id"] == trace["trace_id"])
    );
    let lines: Value = admin
        .get(&format!(
            "/traces/v1/logs?trace_id={}",
            trace["trace_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let lines = lines["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["request_id"] == request_id.as_str()),
        "{lines:#?}"
    );
    cloud.stop().await.unwrap();
    telemetry.shutdown();
}
