//! Issue 5's docdb benchmark, every figure beside its baseline from the same run:
//! - GET by id and PUT of a 1 KiB document through the gateway (ops/s, p50, p99)
//!   against the same statement run directly with sqlx on the same Postgres;
//! - issue 18's PostgREST view: `GET /rest/v1/kib?id=eq.<id>` as `single()` sends
//!   it, against the native GET by id of the same documents, in turns;
//! - an indexed query returning 20 documents, at 10,000 and at 1,000,000 documents.
//!
//! Writes `target/bench-docdb.json` for `scripts/bench_report.py`.

use std::time::Instant;

use minicloud_bench::{Op, as_client, sequential_summary, time, time_in_turns};
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

/// The baseline's statements, run directly and behind the bare handler.
const DIRECT_PUT: &str = "INSERT INTO docdb.\"docs_kib\" (id, version, owner, data) VALUES ($1, 1, NULL, $2)
     ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, version = docs_kib.version + 1, updated_at = now()";
const DIRECT_GET: &str = "SELECT id, version, data FROM docdb.\"docs_kib\" WHERE id = $1";

/// The ceiling of any HTTP API in front of those statements: a bare axum handler
/// that runs the baseline's statement and answers — no token, no policy, no event.
/// It runs on the cloud's runtime with a pool like the services' own. Its URL.
async fn bare_server(database_url: &str) -> anyhow::Result<String> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    let pool = minicloud_testkit::minicloud_cli::postgres::pool_options(2)
        .connect(database_url)
        .await?;
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let app = axum::Router::new()
        .route(
            "/docs/{id}",
            axum::routing::get(
                move |State(pool): State<sqlx::PgPool>, Path(id): Path<String>| async move {
                    let (id, version, data): (String, i64, Value) = sqlx::query_as(DIRECT_GET)
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .map_err(fail)?
                        .ok_or(StatusCode::NOT_FOUND)?;
                    Ok::<_, StatusCode>(axum::Json(
                        json!({"id": id, "version": version, "data": data}),
                    ))
                },
            )
            .put(
                move |State(pool): State<sqlx::PgPool>,
                      Path(id): Path<String>,
                      axum::Json(document): axum::Json<Value>| async move {
                    sqlx::query(DIRECT_PUT)
                        .bind(id)
                        .bind(document)
                        .execute(&pool)
                        .await
                        .map_err(fail)?;
                    Ok::<_, StatusCode>(StatusCode::OK)
                },
            ),
        )
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Timings of 1 KiB PUTs and GETs through the gateway, through the bare handler,
/// and of the same statements run directly with sqlx, in that order (PUT, GET each),
/// then the PostgREST view's GET by id.
async fn kib_rows(
    base: String,
    bare: String,
    token: String,
    database_url: String,
    n: usize,
) -> anyhow::Result<Vec<Vec<std::time::Duration>>> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    // The services' own pool settings: no ping before a recently used connection.
    let pool = minicloud_testkit::minicloud_cli::postgres::pool_options(2)
        .connect(&database_url)
        .await?;
    let document = json!({ "owner": "u1", "payload": "x".repeat(1000) });
    let put = |url: String, token: Option<String>| -> Op<'_> {
        let (http, document) = (&http, &document);
        Box::new(move |i| {
            let mut request = http.put(format!("{url}/k{}", i % 200)).json(document);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            Box::pin(async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "PUT: {}", response.status());
                Ok(())
            })
        })
    };
    let get = |url: String, token: Option<String>| -> Op<'_> {
        let http = &http;
        Box::new(move |i| {
            let mut request = http.get(format!("{url}/k{}", i % 200));
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            Box::pin(async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "GET: {}", response.status());
                response.bytes().await?;
                Ok(())
            })
        })
    };
    let ours = format!("{base}/db/v1/collections/kib/docs");
    let bare = format!("{bare}/docs");
    // The PostgREST view's select of one row by id, as supabase-js's `single()`.
    let rest_get: Op<'_> = {
        let (http, url, token) = (&http, format!("{base}/rest/v1/kib"), token.clone());
        Box::new(move |i| {
            let request = http
                .get(format!("{url}?id=eq.k{}", i % 200))
                .header("accept", "application/vnd.pgrst.object+json")
                .bearer_auth(&token);
            Box::pin(async move {
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "REST GET: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            })
        })
    };
    let mut ops = [
        put(ours.clone(), Some(token.clone())),
        get(ours, Some(token)),
        put(bare.clone(), None),
        get(bare, None),
        Box::new(|i| {
            let query = sqlx::query(DIRECT_PUT)
                .bind(format!("k{}", i % 200))
                .bind(document.clone());
            Box::pin(async {
                query.execute(&pool).await?;
                Ok(())
            })
        }),
        Box::new(|i| {
            let query =
                sqlx::query_as::<_, (String, i64, Value)>(DIRECT_GET).bind(format!("k{}", i % 200));
            Box::pin(async {
                anyhow::ensure!(query.fetch_optional(&pool).await?.is_some(), "missing");
                Ok(())
            })
        }),
        rest_get,
    ];
    let out = time_in_turns(n, &mut ops).await?;
    drop(ops);
    pool.close().await;
    Ok(out)
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
    let bare = bare_server(&cloud.database_url).await?;
    let rows = as_client({
        let (base, token, database_url) = (base.clone(), token.clone(), cloud.database_url.clone());
        move || kib_rows(base, bare, token, database_url, n)
    })
    .await?;
    let [
        ours_put,
        ours_get,
        bare_put,
        bare_get,
        direct_put,
        direct_get,
        rest_get,
    ] = <[_; 7]>::try_from(rows).map_err(|_| anyhow::anyhow!("seven rows"))?;

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
        "get": { "ours": sequential_summary(ours_get), "bare_http": sequential_summary(bare_get), "direct": sequential_summary(direct_get) },
        "put": { "ours": sequential_summary(ours_put), "bare_http": sequential_summary(bare_put), "direct": sequential_summary(direct_put) },
        "rest_get": sequential_summary(rest_get),
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
