//! Issue 8's pipeline benchmark: 12-megapixel photos uploaded through the gateway
//! until their `photo_meta` document is visible — one after another, then 20 at
//! once — against the floor of the thumbnail computation alone (decode, orient,
//! resize, encode in this process, the function's own code) in the same run.
//!
//! Needs `target/release/thumbnail` (`make bench` builds it). Writes
//! `target/bench-pipeline.json` for `scripts/bench_report.py`.

use std::time::{Duration, Instant};

use minicloud_bench::{sequential_summary, summary};
use minicloud_cli::demo::{self, COLLECTION, PHOTOS};
use minicloud_sdk::Client;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

const WIDTH: u32 = 4000;
const HEIGHT: u32 = 3000;

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Uploads `photo` as `path` and waits until its document is readable.
async fn through_pipeline(
    user: &Client,
    admin: &Client,
    path: &str,
    photo: Vec<u8>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    user.upload(PHOTOS, path, photo, "image/jpeg", false)
        .await?;
    let document = format!(
        "/db/v1/collections/{COLLECTION}/docs/{}",
        thumbnail::document_id(path)
    );
    loop {
        match admin.get::<Value>(&document).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(error) if error.status() == Some(404) => {}
            Err(error) => return Err(error.into()),
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{path} never got its document"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sequential = count("BENCH_PHOTOS", 15);
    let parallel = count("BENCH_PARALLEL", 20);
    let photo = thumbnail::sample_photo(WIDTH, HEIGHT, 1);
    println!(
        "photo: {WIDTH}×{HEIGHT} ({:.1} MP), {:.1} MiB",
        f64::from(WIDTH * HEIGHT) / 1e6,
        photo.len() as f64 / 1048576.0
    );

    // The floor: the function's computation alone, in this process.
    let mut floor = Vec::new();
    for i in 0..sequential + 3 {
        let started = Instant::now();
        let thumbnail = thumbnail::make_thumbnail(&photo)?;
        anyhow::ensure!(thumbnail.width == 256);
        if i >= 3 {
            floor.push(started.elapsed());
        }
    }
    let floor = sequential_summary(floor);
    println!("floor (thumbnail computation): {floor}");

    let cloud = TestCloud::start().await?;
    let admin = cloud.admin();
    let zip = demo::function_zip(std::path::Path::new("target/release/thumbnail"))?;
    demo::set_up(&admin, &zip, serde_json::Map::new()).await?;
    let session = cloud
        .client()
        .signup("bench@example.com", "correct horse battery")
        .await?;
    let uid = session.user_id().to_owned();
    let user = cloud.client().with_token(session.access_token.clone());

    // Warm-up: the first photo starts the function's instance.
    through_pipeline(&user, &admin, &format!("{uid}/warm.jpg"), photo.clone()).await?;

    let mut one_by_one = Vec::new();
    for i in 0..sequential {
        let path = format!("{uid}/seq-{i}.jpg");
        one_by_one.push(through_pipeline(&user, &admin, &path, photo.clone()).await?);
    }
    let one_by_one = sequential_summary(one_by_one);
    println!("pipeline, one after another: {one_by_one}");

    let started = Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|i| {
            let (user, admin, photo) = (user.clone(), admin.clone(), photo.clone());
            let path = format!("{uid}/par-{i}.jpg");
            tokio::spawn(async move { through_pipeline(&user, &admin, &path, photo).await })
        })
        .collect();
    let mut together = Vec::new();
    for task in tasks {
        together.push(task.await??);
    }
    let together = summary(together, started.elapsed());
    println!("pipeline, {parallel} at once: {together}");

    let results = json!({
        "photo": {"width": WIDTH, "height": HEIGHT, "bytes": photo.len()},
        "floor": floor,
        "sequential": one_by_one,
        "parallel": together,
        "parallel_count": parallel,
        "max_in_flight": 4,
    });
    std::fs::create_dir_all("target")?;
    std::fs::write(
        "target/bench-pipeline.json",
        serde_json::to_string_pretty(&results)?,
    )?;
    cloud.stop().await?;
    Ok(())
}
