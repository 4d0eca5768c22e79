//! Issue 5's docdb benchmark, every figure beside its baseline from the same run:
//! - GET by id and PUT of a 1 KiB document through the gateway (ops/s, p50, p99)
//!   against the same statement run directly with sqlx on the same Postgres;
//! - an indexed query returning 20 documents, at 10,000 and at 1,000,000 documents.
//!
//! Writes `target/bench-docdb.json` for `scripts/bench_report.py`.

use std::time::Instant;

use minicloud_bench::{as_client, sequential_summary, time};
use minicloud_testkit::TestCloud;
use rand::Rng as _;
use serde_json::{Value, json};

fn iterations() -> usize {
    std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// Fills `docs_<collection>` with `count` documents, 20 per owner, straight in SQL.
async fn fill(pool: &sqlx::PgPool, collection: &str, count: i64) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO docdb.\"docs_{collection}\" (id, version, owner, data)
         SELECT 'd' || i, 1, NULL, jsonb_build_object('owner', 'u' || (i % ($1 / 20)), 'created_at', lpad(i::text, 8, '0'), 'body', repeat('x', 200))
         FROM generate_series(1, $1) AS i"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(count)
        .execute(pool)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ANALYZE docdb.\"docs_{collection}\""
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Timings of 1 KiB PUTs and GETs through the gateway, then of the same statements
/// run directly with sqlx: (ours PUT, ours GET, direct PUT, direct GET).
async fn kib_rows(
    base: String,
    token: String,
    database_url: String,
    n: usize,
) -> anyhow::Result<[Vec<std::time::Duration>; 4]> {
    // The services' own pool settings: no ping before a recently used connection.
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let pool = minicloud_testkit::minicloud_cli::postgres::pool_options(2)
        .connect(&database_url)
        .await?;
    let document = json!({ "owner": "u1", "payload": "x".repeat(1000) });

    let ours_put = time(n, |i| {
        let (http, base, token, document) =
            (http.clone(), base.clone(), token.clone(), document.clone());
        async move {
            let response = http
                .put(format!("{base}/db/v1/collections/kib/docs/k{}", i % 200))
                .bearer_auth(token)
                .json(&document)
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "PUT: {}", response.status());
            Ok(())
        }
    })
    .await?;
    let ours_get = time(n, |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let response = http
                .get(format!("{base}/db/v1/collections/kib/docs/k{}", i % 200))
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "GET: {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let direct_put = time(n, |i| {
        let (pool, document) = (pool.clone(), document.clone());
        async move {
            sqlx::query(
                "INSERT INTO docdb.\"docs_kib\" (id, version, owner, data) VALUES ($1, 1, NULL, $2)
                 ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, version = docs_kib.version + 1, updated_at = now()",
            )
            .bind(format!("k{}", i % 200))
            .bind(document)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await?;
    let direct_get = time(n, |i| {
        let pool = pool.clone();
        async move {
            let row: Option<(String, i64, Value)> =
                sqlx::query_as("SELECT id, version, data FROM docdb.\"docs_kib\" WHERE id = $1")
                    .bind(format!("k{}", i % 200))
                    .fetch_optional(&pool)
                    .await?;
            anyhow::ensure!(row.is_some(), "missing");
            Ok(())
        }
    })
    .await?;

    pool.close().await;
    Ok([ours_put, ours_get, direct_put, direct_get])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cloud = TestCloud::start().await?;
    let admin = cloud.admin();
    let pool = minicloud_testkit::minicloud_cli::postgres::pool_options(2)
        .connect(&cloud.database_url)
        .await?;
    let _: Value = admin
        .post("/db/v1/collections", &json!({"name": "kib", "indexes": []}))
        .await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let base = cloud.gateway_url().to_owned();
    let token = cloud.keys.service_key.clone();
    let n = iterations();
    let [ours_put, ours_get, direct_put, direct_get] = as_client({
        let (base, token, database_url) = (base.clone(), token.clone(), cloud.database_url.clone());
        move || kib_rows(base, token, database_url, n)
    })
    .await?;

    let mut query_results = serde_json::Map::new();
    for (collection, count) in [("small", 10_000i64), ("large", 1_000_000)] {
        let _: Value = admin
            .post(
                "/db/v1/collections",
                &json!({"name": collection, "indexes": [{"fields": ["owner", "created_at"]}]}),
            )
            .await?;
        let filled = Instant::now();
        fill(&pool, collection, count).await?;
        eprintln!("{collection}: {count} documents in {:?}", filled.elapsed());
        let owners = count / 20;
        let samples = time(n, |_| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            let owner = format!("u{}", rand::rng().random_range(0..owners));
            async move {
                let response = http
                    .post(format!("{base}/db/v1/collections/{collection}/query"))
                    .bearer_auth(token)
                    .json(&json!({"filter": {"field": "owner", "op": "eq", "value": owner}, "order_by": [{"field": "created_at", "direction": "desc"}], "limit": 20}))
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "query: {}", response.status());
                let body: Value = response.json().await?;
                anyhow::ensure!(body["documents"].as_array().map(Vec::len) == Some(20), "expected 20 documents");
                Ok(())
            }
        })
        .await?;
        query_results.insert(count.to_string(), sequential_summary(samples));
    }

    let out = json!({
        "iterations": n,
        "get": { "ours": sequential_summary(ours_get), "direct": sequential_summary(direct_get) },
        "put": { "ours": sequential_summary(ours_put), "direct": sequential_summary(direct_put) },
        "indexed_query": query_results,
    });
    eprintln!("{out}");
    std::fs::write(
        "target/bench-docdb.json",
        serde_json::to_string_pretty(&out)?,
    )?;
    pool.close().await;
    cloud.stop().await?;
    Ok(())
}
