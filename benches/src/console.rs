//! Issue 20's console page-load benchmark: the overview's first contentful paint in
//! headless Chromium (a fresh browser session per run, so nothing is cached; the
//! console's files are served `no-cache` anyway), against the floor — a blank HTML
//! page from a bare server in the same browser — and the console's share of the
//! binary. Writes `target/bench-console.json` for `scripts/bench_report.py`.

use std::time::Duration;

use fantoccini::ClientBuilder;
// Linked for its global allocator only: the console's cloud allocates as the
// `minicloud` binary does.
use minicloud_bench as _;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

async fn session(port: u16) -> anyhow::Result<fantoccini::Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    Ok(ClientBuilder::rustls()?
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?)
}

/// Milliseconds from navigation start to the performance entry `name` of the page
/// the browser shows now (`first-contentful-paint`, or a mark the page sets).
async fn entry(client: &fantoccini::Client, name: &str) -> anyhow::Result<f64> {
    for _ in 0..500 {
        let at = client
            .execute(
                "const e = performance.getEntriesByName(arguments[0])[0]; return e ? e.startTime : null",
                vec![json!(name)],
            )
            .await?;
        if let Some(ms) = at.as_f64() {
            return Ok(ms);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the page never had {name}")
}

fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({"p50_ms": values[values.len() / 2], "max_ms": values[values.len() - 1], "runs": values.len()})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(CHROMEDRIVER).exists(),
        "{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
    );
    let cloud = TestCloud::start().await?;
    let base = cloud.gateway_url().to_owned();
    let key = cloud.keys.service_key.clone();
    // The floor: a blank page from a bare server.
    let bare = axum::Router::new().route(
        "/blank",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><html><body><p>blank</p></body></html>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let blank = format!("http://{}/blank", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, bare).await });

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let mut driver = std::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let runs = 15;
    let (mut console, mut ready, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Each run a new browser session: an empty cache and storage.
        let client = session(port).await?;
        client.goto(&blank).await?;
        floor.push(entry(&client, "first-contentful-paint").await?);
        // Signed in (the key in the tab's storage), then the overview loads afresh.
        client.goto(&format!("{base}/console")).await?;
        client
            .execute(
                "sessionStorage.setItem('minicloud.token', arguments[0]); sessionStorage.setItem('minicloud.label', 'admin')",
                vec![json!(key)],
            )
            .await?;
        client.goto(&format!("{base}/console#/overview")).await?;
        client.refresh().await?;
        console.push(entry(&client, "first-contentful-paint").await?);
        ready.push(entry(&client, "minicloud:overview-ready").await?);
        client.close().await?;
    }
    let _ = driver.kill();
    let _ = driver.wait();
    let assets: usize = ["index.html", "console.js", "console.css"]
        .iter()
        .map(|f| {
            std::fs::metadata(format!("crates/gateway/console/{f}"))
                .map(|m| m.len() as usize)
                .unwrap_or(0)
        })
        .sum();
    let out = json!({
        "console_first_paint": summary(console),
        "console_overview_ready": summary(ready),
        "blank_page": summary(floor),
        "assets_bytes": assets,
    });
    std::fs::write(
        "target/bench-console.json",
        serde_json::to_vec_pretty(&out)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    cloud.stop().await?;
    Ok(())
}
