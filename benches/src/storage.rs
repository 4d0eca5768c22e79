//! Issue 4's storage benchmark, every figure beside its baseline from the same run:
//! - PUT and GET of 1 KiB objects through the gateway (ops/s, p50, p99) against the
//!   same operation straight on the backend: files for `fs` (write, fsync, rename;
//!   read), the S3 server's own API for `s3`;
//! - PUT and GET of a 256 MiB object (MiB/s), likewise;
//! - the process RSS growth while 1 GiB goes up and down through the gateway.
//!
//! The S3 server is `s3s-fs` embedded here with TCP_NODELAY on accepted sockets:
//! the stock binary leaves Nagle on and turns small GETs into 40 ms waits.
//! Writes `target/bench-storage.json` for `scripts/bench_report.py`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use minicloud_bench::{Op, sequential_summary, time_in_turns};
use minicloud_testkit::TestCloud;
use minicloud_testkit::minicloud_storage::{BackendKind, StorageConfig};
use serde_json::{Value, json};

const SMALL: usize = 1024;
const LARGE: usize = 256 * 1024 * 1024;
const RSS_BYTES: usize = 1024 * 1024 * 1024;

fn iterations() -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// Starts s3s-fs in this process, with Nagle off on every accepted socket.
async fn start_s3(root: &std::path::Path) -> anyhow::Result<String> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single("bench", "bench"));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = connection
                    .serve_connection(TokioIo::new(socket), service)
                    .into_owned()
                    .await;
            });
        }
    });
    Ok(format!("http://{address}"))
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn pattern(
    len: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunk = Bytes::from(vec![0x5au8; 256 * 1024]);
    let chunks = len / chunk.len();
    futures::stream::iter((0..chunks).map(move |_| Ok(chunk.clone())))
}

async fn mib_per_s<F, Fut>(bytes: usize, op: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    op().await?;
    Ok(bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

struct Gateway {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Gateway {
    async fn put(&self, path: &str, body: reqwest::Body) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/storage/v1/object/bench/{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<usize> {
        let response = self
            .http
            .get(format!("{}/storage/v1/object/bench/{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        let mut stream = response.bytes_stream();
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk?.len();
        }
        Ok(total)
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn bench_backend(
    kind: BackendKind,
    s3_endpoint: &str,
    scratch: &std::path::Path,
) -> anyhow::Result<Value> {
    let mut config = StorageConfig {
        backend: kind,
        ..StorageConfig::default()
    };
    let name = match kind {
        BackendKind::Fs => {
            config.fs_root = Some(scratch.join("minicloud-objects"));
            "fs"
        }
        BackendKind::S3 => {
            config.s3_endpoint = s3_endpoint.to_owned();
            config.s3_access_key = "bench".into();
            config.s3_secret_key = "bench".into();
            config.s3_bucket_prefix = "mc-".into();
            "s3"
        }
    };
    let cloud = TestCloud::builder().storage(config).start().await?;
    let admin = cloud.admin();
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name": "bench"}))
        .await?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .build()?;
    let gateway = Gateway {
        http,
        base: cloud.gateway_url().to_owned(),
        token: cloud.keys.service_key.clone(),
    };
    let small = Bytes::from(vec![0x42u8; SMALL]);
    let n = iterations();

    // The direct baseline's places, and the ceiling of any HTTP API on this
    // machine: a bare axum handler answering the same 1 KiB over loopback to the
    // same client.
    let direct_root = scratch.join(format!("direct-{name}"));
    std::fs::create_dir_all(&direct_root)?;
    let s3 = s3_client(s3_endpoint);
    if kind == BackendKind::S3 {
        let _ = s3.create_bucket().bucket("direct").send().await;
    }
    let bare = axum::Router::new().route(
        "/small",
        axum::routing::get(|| async { Bytes::from(vec![0x42u8; SMALL]) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let floor_url = format!("http://{}/small", listener.local_addr()?);
    let bare_server = tokio::spawn(async move { axum::serve(listener, bare).await });

    // Each GET reads the object its PUT wrote earlier in the same round (warm-up
    // ones too: they run after the PUT's warm-up, with the same indices).
    let (gateway_ref, small_ref, root_ref, s3_ref) = (&gateway, &small, &direct_root, &s3);
    let ours_put: Op<'_> = Box::new(move |i| {
        let body = reqwest::Body::from(small_ref.clone());
        Box::pin(async move { gateway_ref.put(&format!("small/{i}"), body).await })
    });
    let ours_get: Op<'_> = Box::new(move |i| {
        Box::pin(async move {
            anyhow::ensure!(
                gateway_ref.get(&format!("small/{i}")).await? == SMALL,
                "short read"
            );
            Ok(())
        })
    });
    let (direct_put, direct_get): (Op<'_>, Op<'_>) = match kind {
        BackendKind::Fs => (
            Box::new(move |i| {
                let (root, body) = (root_ref.clone(), small_ref.clone());
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        let temp = root.join(format!(".tmp-{i}"));
                        let mut file = std::fs::File::create(&temp)?;
                        file.write_all(&body)?;
                        file.sync_all()?;
                        std::fs::rename(&temp, root.join(format!("small-{i}")))?;
                        std::fs::File::open(&root)?.sync_all()
                    })
                    .await??;
                    Ok(())
                })
            }),
            Box::new(move |i| {
                let path = root_ref.join(format!("small-{i}"));
                Box::pin(async move {
                    let bytes = tokio::fs::read(path).await?;
                    anyhow::ensure!(bytes.len() == SMALL, "short read");
                    Ok(())
                })
            }),
        ),
        BackendKind::S3 => (
            Box::new(move |i| {
                let request = s3_ref
                    .put_object()
                    .bucket("direct")
                    .key(format!("small/{i}"))
                    .body(small_ref.clone().into());
                Box::pin(async move {
                    request.send().await?;
                    Ok(())
                })
            }),
            Box::new(move |i| {
                let request = s3_ref
                    .get_object()
                    .bucket("direct")
                    .key(format!("small/{i}"));
                Box::pin(async move {
                    let out = request.send().await?;
                    anyhow::ensure!(
                        out.body.collect().await?.into_bytes().len() == SMALL,
                        "short read"
                    );
                    Ok(())
                })
            }),
        ),
    };
    let floor_get: Op<'_> = Box::new(|_| {
        let request = gateway_ref.http.get(&floor_url);
        Box::pin(async move {
            let bytes = request.send().await?.bytes().await?;
            anyhow::ensure!(bytes.len() == SMALL, "short read");
            Ok(())
        })
    });
    let mut ops = [ours_put, ours_get, direct_put, direct_get, floor_get];
    let [ours_put, ours_get, direct_put, direct_get, http_floor_get] =
        <[_; 5]>::try_from(time_in_turns(n, &mut ops).await?)
            .map_err(|_| anyhow::anyhow!("five rows"))?;
    drop(ops);
    bare_server.abort();

    // RSS while 1 GiB goes up and then down through the gateway, measured before any
    // other large transfer so that memory the allocator kept from one cannot hide
    // this one's growth.
    let rss = {
        let before = rss_bytes();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
        let sampler = {
            let peak = std::sync::Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        gateway
            .put("gib", reqwest::Body::wrap_stream(pattern(RSS_BYTES)))
            .await?;
        anyhow::ensure!(gateway.get("gib").await? == RSS_BYTES, "short read");
        sampler.abort();
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        json!({ "before_mib": before as f64 / 1048576.0, "peak_mib": peak as f64 / 1048576.0, "growth_mib": (peak.saturating_sub(before)) as f64 / 1048576.0 })
    };

    // One large object each way.
    let ours_large_put = mib_per_s(LARGE, || {
        gateway.put("large", reqwest::Body::wrap_stream(pattern(LARGE)))
    })
    .await?;
    let ours_large_get = mib_per_s(LARGE, || async {
        anyhow::ensure!(gateway.get("large").await? == LARGE, "short read");
        Ok(())
    })
    .await?;
    let large_file = direct_root.join("large");
    let (direct_large_put, direct_large_get) = match kind {
        BackendKind::Fs => {
            let put = mib_per_s(LARGE, || async {
                let mut file = tokio::fs::File::create(&large_file).await?;
                let mut chunks = Box::pin(pattern(LARGE));
                use tokio::io::AsyncWriteExt as _;
                while let Some(chunk) = chunks.next().await {
                    file.write_all(&chunk?).await?;
                }
                file.sync_all().await?;
                Ok(())
            })
            .await?;
            let get = mib_per_s(LARGE, || async {
                use tokio::io::AsyncReadExt as _;
                let mut file = tokio::fs::File::open(&large_file).await?;
                let mut buffer = vec![0u8; 256 * 1024];
                let mut total = 0;
                loop {
                    let n = file.read(&mut buffer).await?;
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                anyhow::ensure!(total == LARGE, "short read");
                Ok(())
            })
            .await?;
            (put, get)
        }
        BackendKind::S3 => {
            // The same multipart upload an S3 client does for a large object.
            let put = mib_per_s(LARGE, || async {
                let upload = s3
                    .create_multipart_upload()
                    .bucket("direct")
                    .key("large")
                    .send()
                    .await?;
                let id = upload.upload_id().unwrap_or_default().to_owned();
                let mut parts = Vec::new();
                let part = Bytes::from(vec![0x5au8; 16 * 1024 * 1024]);
                for number in 1..=(LARGE / part.len()) as i32 {
                    let out = s3
                        .upload_part()
                        .bucket("direct")
                        .key("large")
                        .upload_id(&id)
                        .part_number(number)
                        .body(part.clone().into())
                        .send()
                        .await?;
                    parts.push(
                        aws_sdk_s3::types::CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .build(),
                    );
                }
                s3.complete_multipart_upload()
                    .bucket("direct")
                    .key("large")
                    .upload_id(&id)
                    .multipart_upload(
                        aws_sdk_s3::types::CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await?;
                Ok(())
            })
            .await?;
            let get = mib_per_s(LARGE, || async {
                let out = s3.get_object().bucket("direct").key("large").send().await?;
                let mut body = out.body;
                let mut total = 0;
                while let Some(chunk) = body.try_next().await? {
                    total += chunk.len();
                }
                anyhow::ensure!(total == LARGE, "short read");
                Ok(())
            })
            .await?;
            (put, get)
        }
    };

    // What the ETag alone costs: MD5 over the large object's bytes on one core.
    let md5_mib_s = {
        use md5::Digest as _;
        let chunk = vec![0x5au8; 1024 * 1024];
        let started = std::time::Instant::now();
        let mut hasher = md5::Md5::new();
        for _ in 0..LARGE / chunk.len() {
            hasher.update(&chunk);
        }
        std::hint::black_box(hasher.finalize());
        LARGE as f64 / 1048576.0 / started.elapsed().as_secs_f64()
    };

    // The ceiling for large objects: a bare axum handler over loopback that drains
    // an upload of the same size, and one that streams the same bytes from memory.
    let http_floor_large_mib_s = {
        let bare = axum::Router::new().route(
            "/large",
            axum::routing::get(|| async { axum::body::Body::from_stream(pattern(LARGE)) }).put(
                |body: axum::body::Body| async move {
                    let mut stream = body.into_data_stream();
                    let mut total = 0;
                    while let Some(chunk) = stream.next().await {
                        total += chunk
                            .map_err(|_| axum::http::StatusCode::BAD_REQUEST)?
                            .len();
                    }
                    Ok::<_, axum::http::StatusCode>(total.to_string())
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/large", listener.local_addr()?);
        let server = tokio::spawn(async move { axum::serve(listener, bare).await });
        let http = &gateway.http;
        let put = mib_per_s(LARGE, || async {
            let response = http
                .put(&url)
                .body(reqwest::Body::wrap_stream(pattern(LARGE)))
                .send()
                .await?;
            anyhow::ensure!(response.text().await? == LARGE.to_string(), "short upload");
            Ok(())
        })
        .await?;
        let get = mib_per_s(LARGE, || async {
            let mut stream = http.get(&url).send().await?.bytes_stream();
            let mut total = 0;
            while let Some(chunk) = stream.next().await {
                total += chunk?.len();
            }
            anyhow::ensure!(total == LARGE, "short read");
            Ok(())
        })
        .await?;
        server.abort();
        json!({ "put": put, "get": get })
    };

    cloud.stop().await?;
    Ok(json!({
        "http_floor_large_mib_s": http_floor_large_mib_s,
        "small_put": { "ours": sequential_summary(ours_put), "direct": sequential_summary(direct_put) },
        "small_get": { "ours": sequential_summary(ours_get), "direct": sequential_summary(direct_get) },
        "large_put_mib_s": { "ours": ours_large_put, "direct": direct_large_put },
        "large_get_mib_s": { "ours": ours_large_get, "direct": direct_large_get },
        "md5_mib_s": md5_mib_s,
        "http_floor_get": sequential_summary(http_floor_get),
        "rss_1gib": rss,
        "iterations": n,
    }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let scratch = std::env::current_dir()?
        .join("target")
        .join("bench-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(scratch.join("s3"))?;
    let s3_endpoint = start_s3(&scratch.join("s3")).await?;
    let fs = bench_backend(BackendKind::Fs, &s3_endpoint, &scratch).await?;
    eprintln!("fs: {fs}");
    let s3 = bench_backend(BackendKind::S3, &s3_endpoint, &scratch).await?;
    eprintln!("s3: {s3}");
    let out = json!({ "fs": fs, "s3": s3 });
    std::fs::write(
        "target/bench-storage.json",
        serde_json::to_string_pretty(&out)?,
    )?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
