//! `minicloud demo thumbnail`: the reference pipeline of docs/design.md §6 against a running
//! cloud. Sets up the buckets, the collection, the function's role, the function
//! (`examples/thumbnail`) and its trigger, then uploads photos as a signed-up user and
//! checks that every thumbnail and metadata document appears and the bad file is
//! dead-lettered. The end-to-end tests drive the same steps.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use minicloud_sdk::Client;
use serde_json::{Value, json};
use thumbnail::{document_id, thumbnail_path};

use crate::user::Connection;

pub const FUNCTION: &str = "thumbnail";
/// The function's role: exactly what the pipeline needs.
pub const ROLE: &str = "thumbnail";
pub const PHOTOS: &str = "photos";
pub const THUMBNAILS: &str = "thumbnails";
pub const COLLECTION: &str = "photo_meta";

#[derive(Debug, clap::Subcommand)]
pub enum DemoCommand {
    /// The photo-thumbnail pipeline, end to end.
    Thumbnail(ThumbnailArgs),
}

#[derive(Debug, clap::Args)]
pub struct ThumbnailArgs {
    /// The function's executable (`cargo build --release -p thumbnail`).
    #[arg(long, default_value = "target/release/thumbnail")]
    pub function_binary: PathBuf,
    /// How long to wait for the thumbnails and the dead letter.
    #[arg(long, default_value_t = 60)]
    pub wait_s: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// What `set_up` made that later steps refer to.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The trigger's bus subscription, whose dead letters hold the failed photos.
    pub subscription_id: String,
}

/// The role's policy: read photos, write thumbnails, write metadata — nothing else.
pub fn role_policy() -> Value {
    json!([
        {"effect": "allow", "actions": ["storage:GetObject"], "resources": ["storage:photos/*"]},
        {"effect": "allow", "actions": ["storage:PutObject"], "resources": ["storage:thumbnails/*"]},
        {"effect": "allow", "actions": ["db:PutDocument"], "resources": ["db:photo_meta/*"]},
    ])
}

/// The photos bucket's policy: each user reads and writes only under their uid.
pub fn photos_policy() -> Value {
    json!({
        "effect": "allow",
        "principals": ["role:authenticated"],
        "actions": ["storage:GetObject", "storage:PutObject"],
        "resources": ["storage:photos/${auth.uid}/*"],
    })
}

/// A zip with `binary` as the executable `bootstrap` of a `provided` function.
pub fn function_zip(binary: &Path) -> anyhow::Result<Vec<u8>> {
    let code = std::fs::read(binary).with_context(|| {
        format!(
            "reading the function binary {} (build it with `cargo build --release -p thumbnail`)",
            binary.display()
        )
    })?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // Stored, not deflated: the bundle crosses loopback once, and deflating a 30 MB
    // debug build took seconds in the tests.
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false)
        .unix_permissions(0o755);
    out.start_file("bootstrap", options)?;
    out.write_all(&code)?;
    Ok(out.finish()?.into_inner())
}

/// `Ok(true)` if created, `Ok(false)` if it already existed (409).
async fn create(admin: &Client, path: &str, body: &Value) -> anyhow::Result<bool> {
    match admin.post::<_, Value>(path, body).await {
        Ok(_) => Ok(true),
        Err(error) if error.status() == Some(409) => Ok(false),
        Err(error) => Err(error).with_context(|| format!("POST {path}")),
    }
}

/// Creates (or brings up to date) everything the pipeline needs; safe to run again.
/// `function_env` is the function's environment (e.g. an OTLP endpoint).
pub async fn set_up(
    admin: &Client,
    function_zip: &[u8],
    function_env: serde_json::Map<String, Value>,
) -> anyhow::Result<Pipeline> {
    let photos = json!({"name": PHOTOS, "public": false, "policy": photos_policy()});
    if !create(admin, "/storage/v1/bucket", &photos).await? {
        admin
            .put::<_, Value>(
                &format!("/storage/v1/bucket/{PHOTOS}"),
                &json!({"public": false, "policy": photos_policy()}),
            )
            .await
            .context("updating the photos bucket")?;
    }
    create(
        admin,
        "/storage/v1/bucket",
        &json!({"name": THUMBNAILS, "public": false}),
    )
    .await?;
    create(
        admin,
        "/db/v1/collections",
        &json!({"name": COLLECTION, "indexes": [{"fields": ["owner", "created_at"]}]}),
    )
    .await?;
    let role = json!({
        "name": ROLE,
        "description": "the thumbnail function: reads photos, writes thumbnails and photo_meta",
        "policies": role_policy(),
    });
    if !create(admin, "/auth/v1/admin/roles", &role).await? {
        admin
            .put::<_, Value>(
                &format!("/auth/v1/admin/roles/{ROLE}"),
                &json!({"policies": role_policy()}),
            )
            .await
            .context("updating the thumbnail role")?;
    }
    admin
        .put::<_, Value>(
            &format!("/functions/v1/{FUNCTION}"),
            &json!({
                "name": FUNCTION,
                "runtime": "provided",
                // A 12 MP photo is 36 MB of pixels once decoded.
                "memory_mb": 512,
                "timeout_s": 60,
                "role": ROLE,
                "env": function_env,
                "keep_warm_s": 300,
                "code": {"zip_base64": base64::engine::general_purpose::STANDARD.encode(function_zip)},
            }),
        )
        .await
        .context("deploying the thumbnail function")?;
    let triggers: Value = admin
        .get(&format!("/functions/v1/{FUNCTION}/triggers"))
        .await?;
    let existing = triggers["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["topic"] == "storage")
        .and_then(|t| t["subscription_id"].as_str().map(str::to_owned));
    let subscription_id = match existing {
        Some(id) => id,
        None => {
            let trigger: Value = admin
                .post(
                    &format!("/functions/v1/{FUNCTION}/triggers"),
                    &json!({
                        "topic": "storage",
                        "pattern": {
                            "type": ["minicloud.storage.object.created"],
                            "data": {"bucket": [PHOTOS]},
                        },
                        // Two retries a few seconds apart, then the dead-letter topic;
                        // several photos at once, so a bad one holds up no other.
                        "retry": {"max_attempts": 3, "min_backoff_ms": 2000, "max_backoff_ms": 10_000, "max_age_s": 3600},
                        "max_in_flight": 4,
                    }),
                )
                .await
                .context("adding the storage trigger")?;
            trigger["subscription_id"]
                .as_str()
                .context("the trigger has no subscription")?
                .to_owned()
        }
    };
    Ok(Pipeline { subscription_id })
}

/// A photo the demo uploads: its name and bytes, and the size it displays at.
#[derive(Debug)]
pub struct SamplePhoto {
    pub name: String,
    pub bytes: Vec<u8>,
    pub display: Option<(u32, u32)>,
}

/// Photos of several sizes and EXIF orientations, plus one file that is not an image.
pub fn sample_photos() -> Vec<SamplePhoto> {
    let photo = |name: &str, width, height, orientation, display| SamplePhoto {
        name: name.to_owned(),
        bytes: thumbnail::sample_photo(width, height, orientation),
        display: Some(display),
    };
    vec![
        photo("landscape.jpg", 1600, 1200, 1, (1600, 1200)),
        // Stored sideways, shown upright: EXIF orientation 6 rotates by 90°.
        photo("portrait.jpg", 1600, 1200, 6, (1200, 1600)),
        photo("upside-down.jpg", 800, 600, 3, (800, 600)),
        photo("panorama.jpg", 3000, 600, 1, (3000, 600)),
        photo("tiny.jpg", 120, 90, 1, (120, 90)),
        SamplePhoto {
            name: "not-a-photo.jpg".into(),
            bytes: b"these are my holiday notes, not a JPEG".to_vec(),
            display: None,
        },
    ]
}

/// A random sampled W3C trace context: the upload starts a trace whose id we know.
pub fn new_traceparent() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    (format!("00-{trace_id}-{span_id}-01"), trace_id)
}

/// What the pipeline produced for one good photo.
#[derive(Debug, Clone)]
pub struct Processed {
    pub path: String,
    pub document: Value,
    pub thumbnail_size: (u32, u32),
    pub thumbnail_bytes: usize,
}

/// Waits until every good photo has its document and thumbnail and every bad one a
/// dead letter; `Err` names what is still missing at the deadline.
pub async fn wait_for_results(
    admin: &Client,
    pipeline: &Pipeline,
    uid: &str,
    photos: &[SamplePhoto],
    within: Duration,
) -> anyhow::Result<(Vec<Processed>, Vec<Value>)> {
    let deadline = Instant::now() + within;
    let mut processed: Vec<Processed> = Vec::new();
    loop {
        for photo in photos.iter().filter(|p| p.display.is_some()) {
            let path = format!("{uid}/{}", photo.name);
            if processed.iter().any(|p| p.path == path) {
                continue;
            }
            let document: Value = match admin
                .get(&format!(
                    "/db/v1/collections/{COLLECTION}/docs/{}",
                    document_id(&path)
                ))
                .await
            {
                Ok(document) => document,
                Err(error) if error.status() == Some(404) => continue,
                Err(error) => return Err(error.into()),
            };
            let jpeg = admin
                .download(THUMBNAILS, &thumbnail_path(&path))
                .await
                .context("the document exists but its thumbnail does not")?;
            let image = thumbnail::image::load_from_memory(&jpeg)
                .context("the thumbnail is not a readable image")?;
            processed.push(Processed {
                path,
                document,
                thumbnail_size: (image.width(), image.height()),
                thumbnail_bytes: jpeg.len(),
            });
        }
        let letters: Value = admin
            .get(&format!(
                "/events/v1/subscriptions/{}/dead-letters",
                pipeline.subscription_id
            ))
            .await?;
        let dead: Vec<Value> = letters["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|letter| {
                photos.iter().any(|p| {
                    p.display.is_none()
                        && letter["event"]["data"]["path"] == format!("{uid}/{}", p.name)
                })
            })
            .collect();
        let good = photos.iter().filter(|p| p.display.is_some()).count();
        let bad = photos.len() - good;
        if processed.len() == good && dead.len() >= bad {
            return Ok((processed, dead));
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = photos
                .iter()
                .map(|p| format!("{uid}/{}", p.name))
                .filter(|path| {
                    !processed.iter().any(|p| &p.path == path)
                        && !dead.iter().any(|d| d["event"]["data"]["path"] == *path)
                })
                .collect();
            bail!("after {within:?}, still missing: {}", missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks one result against the photo: dimensions upright and fitted into 256×256.
pub fn check(photo: &SamplePhoto, result: &Processed) -> anyhow::Result<()> {
    let Some((width, height)) = photo.display else {
        bail!("{} is not a photo", photo.name);
    };
    let data = &result.document["data"];
    let max = thumbnail::MAX_SIDE;
    let scale = (f64::from(max) / f64::from(width.max(height))).min(1.0);
    let expected = (
        ((f64::from(width) * scale).round() as u32).max(1),
        ((f64::from(height) * scale).round() as u32).max(1),
    );
    let close = |a: u32, b: u32| a.abs_diff(b) <= 1;
    if data["original_width"] != width || data["original_height"] != height {
        bail!(
            "{}: metadata says {}×{}, the photo displays at {width}×{height}",
            photo.name,
            data["original_width"],
            data["original_height"]
        );
    }
    let (tw, th) = result.thumbnail_size;
    if !close(tw, expected.0) || !close(th, expected.1) {
        bail!(
            "{}: thumbnail is {tw}×{th}, expected {}×{}",
            photo.name,
            expected.0,
            expected.1
        );
    }
    if data["thumbnail_width"] != tw || data["thumbnail_height"] != th {
        bail!("{}: metadata and thumbnail disagree", photo.name);
    }
    if data["bytes"] != photo.bytes.len() {
        bail!("{}: metadata has the wrong byte count", photo.name);
    }
    Ok(())
}

pub async fn run(command: DemoCommand, mut out: impl std::io::Write) -> anyhow::Result<()> {
    let DemoCommand::Thumbnail(args) = command;
    let admin = args.connection.client()?;
    let zip = function_zip(&args.function_binary)?;
    writeln!(
        out,
        "setting up buckets, collection, role, function and trigger"
    )?;
    let pipeline = set_up(&admin, &zip, serde_json::Map::new()).await?;

    let email = format!(
        "demo-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let session = Client::new(admin.base_url())
        .signup(&email, "demo password 1234")
        .await
        .context("signing up the demo user")?;
    let uid = session.user_id().to_owned();
    let user = Client::new(admin.base_url()).with_token(session.access_token.clone());
    writeln!(out, "signed up {email} (uid {uid})")?;

    let photos = sample_photos();
    let mut trace_ids = Vec::new();
    for photo in &photos {
        let path = format!("{uid}/{}", photo.name);
        let (traceparent, trace_id) = new_traceparent();
        let response = user
            .request(
                reqwest::Method::POST,
                &format!("/storage/v1/object/{PHOTOS}/{path}"),
            )
            .header("content-type", "image/jpeg")
            .header("traceparent", traceparent)
            .body(photo.bytes.clone())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "uploading {path}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        writeln!(
            out,
            "uploaded photos/{path} ({} bytes, trace {trace_id})",
            photo.bytes.len()
        )?;
        trace_ids.push(trace_id);
    }

    let (processed, dead) = wait_for_results(
        &admin,
        &pipeline,
        &uid,
        &photos,
        Duration::from_secs(args.wait_s),
    )
    .await?;
    for photo in photos.iter().filter(|p| p.display.is_some()) {
        let path = format!("{uid}/{}", photo.name);
        let result = processed
            .iter()
            .find(|p| p.path == path)
            .context("a processed photo went missing")?;
        check(photo, result)?;
        writeln!(
            out,
            "thumbnail {THUMBNAILS}/{}: {}×{}, {} bytes; photo_meta {}",
            thumbnail_path(&path),
            result.thumbnail_size.0,
            result.thumbnail_size.1,
            result.thumbnail_bytes,
            result.document["data"]
        )?;
    }
    for letter in &dead {
        writeln!(
            out,
            "dead-lettered photos/{} after {} attempts: {}",
            letter["event"]["data"]["path"].as_str().unwrap_or_default(),
            letter["attempts"],
            letter["last_error"].as_str().unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "trace of the first upload: {} (Jaeger: http://localhost:16686/trace/{})",
        trace_ids[0], trace_ids[0]
    )?;
    writeln!(out, "demo passed")?;
    Ok(())
}
