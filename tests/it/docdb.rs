//! The docdb service end to end over REST, against the real Postgres.

use std::time::Duration;

use minicloud_sdk::Client;
use minicloud_testkit::TestCloud;
use minicloud_testkit::sqlx::{self, Connection as _, PgConnection};
use reqwest::Method;
use serde_json::{Value, json};

async fn error(result: Result<Value, minicloud_sdk::Error>) -> (u16, String) {
    match result {
        Ok(value) => panic!("expected an error, got {value}"),
        Err(e) => (
            e.status().unwrap_or(0),
            e.code().unwrap_or_default().to_owned(),
        ),
    }
}

async fn collection(admin: &Client, name: &str, indexes: Value) {
    let _: Value = admin
        .post(
            "/db/v1/collections",
            &json!({"name": name, "indexes": indexes}),
        )
        .await
        .unwrap();
}

async fn send(
    client: &Client,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = client.request(method, path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn documents_crud_with_versions_and_preconditions() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(&admin, "notes", json!([])).await;
    let response = send(
        &admin,
        Method::POST,
        "/db/v1/collections/notes/docs",
        &[],
        Some(json!({"title":"a","n":1})),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], 1);
    assert_eq!(created["data"], json!({"title":"a","n":1}));
    let path = format!("/db/v1/collections/notes/docs/{id}");

    let got: Value = admin.get(&path).await.unwrap();
    assert_eq!(got["data"]["title"], "a");
    let stale = send(
        &admin,
        Method::PUT,
        &path,
        &[("if-match", "\"7\"")],
        Some(json!({"title":"b"})),
    )
    .await;
    assert_eq!(stale.status(), 412);
    // Entity-tags are opaque (RFC 9110): one that is not a version of ours matches
    // nothing, so it is a failed precondition too, not a bad request (issue 16).
    for tag in ["\"abc\"", "W/\"xyz\"", "garbage", "\"\""] {
        let foreign = send(
            &admin,
            Method::PUT,
            &path,
            &[("if-match", tag)],
            Some(json!({"title":"b"})),
        )
        .await;
        assert_eq!(foreign.status(), 412, "{tag}");
    }
    let replaced = send(
        &admin,
        Method::PUT,
        &path,
        &[("if-match", "\"1\"")],
        Some(json!({"title":"b","tags":["x"],"gone":1})),
    )
    .await;
    assert_eq!(replaced.status(), 200);
    assert_eq!(replaced.headers()["etag"], "\"2\"");
    let exists = send(
        &admin,
        Method::PUT,
        &path,
        &[("if-none-match", "*")],
        Some(json!({})),
    )
    .await;
    assert_eq!(exists.status(), 412);
    // Merge patch: null removes, objects merge.
    let patched = send(
        &admin,
        Method::PATCH,
        &path,
        &[],
        Some(json!({"gone": null, "meta": {"k": 1}})),
    )
    .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        patched["data"],
        json!({"title":"b","tags":["x"],"meta":{"k":1}})
    );
    assert_eq!(patched["version"], 3);
    // PUT creates with a client id.
    let made = send(
        &admin,
        Method::PUT,
        "/db/v1/collections/notes/docs/my-id",
        &[("if-none-match", "*")],
        Some(json!({"x":1})),
    )
    .await;
    assert_eq!(made.status(), 201);
    // Delete with a stale version fails, with the right one succeeds.
    assert_eq!(
        send(
            &admin,
            Method::DELETE,
            &path,
            &[("if-match", "\"2\"")],
            None
        )
        .await
        .status(),
        412
    );
    assert_eq!(
        send(
            &admin,
            Method::DELETE,
            &path,
            &[("if-match", "\"3\"")],
            None
        )
        .await
        .status(),
        200
    );
    assert_eq!(error(admin.get(&path).await).await.0, 404);
    assert_eq!(
        error(
            admin
                .send(
                    admin
                        .request(Method::PATCH, "/db/v1/collections/notes/docs/nope")
                        .json(&json!({}))
                )
                .await
        )
        .await
        .0,
        404
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn queries_filter_order_and_page_with_a_keyset_cursor() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(&admin, "items", json!([{"fields":["kind","size"]}])).await;
    let mut writes = Vec::new();
    for i in 0..60 {
        let kind = if i % 3 == 0 { "a" } else { "b" };
        writes.push(json!({"op":"put","collection":"items","id":format!("i{i:02}"),
            "data":{"kind":kind,"size":i,"name":format!("n{i}"),"tags":if i % 2 == 0 {json!(["even"])} else {json!(["odd"])},"deep":{"x":i % 5}}}));
    }
    // A string that looks like a large number, and a document without `size`.
    writes
        .push(json!({"op":"put","collection":"items","id":"str","data":{"kind":"a","size":"999"}}));
    writes.push(json!({"op":"put","collection":"items","id":"none","data":{"kind":"a"}}));
    let _: Value = admin
        .post("/db/v1/batch", &json!({"writes": writes}))
        .await
        .unwrap();

    let ids = |v: &Value| -> Vec<String> {
        v["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let q = |body: Value| {
        let admin = admin.clone();
        async move {
            admin
                .post::<_, Value>("/db/v1/collections/items/query", &body)
                .await
        }
    };

    let r =
        q(json!({"filter":{"field":"size","op":"gt","value":55},"order_by":[{"field":"size"}]}))
            .await
            .unwrap();
    assert_eq!(
        ids(&r),
        ["i56", "i57", "i58", "i59"],
        "numbers compare as numbers; the string \"999\" is not > 55"
    );
    let r = q(json!({"filter":{"field":"size","op":"lt","value":3}}))
        .await
        .unwrap();
    assert_eq!(
        ids(&r),
        ["i00", "i01", "i02"],
        "missing fields and strings are not < 3"
    );
    let r = q(json!({"filter":{"and":[{"field":"kind","op":"eq","value":"a"},{"field":"size","op":"gte","value":50}]},"order_by":[{"field":"size","direction":"desc"}]})).await.unwrap();
    assert_eq!(ids(&r), ["i57", "i54", "i51"]);
    let r = q(json!({"filter":{"or":[{"field":"name","op":"in","value":["n1","n2"]},{"field":"deep.x","op":"eq","value":4}]},"limit":100})).await.unwrap();
    assert_eq!(r["documents"].as_array().unwrap().len(), 2 + 12);
    let r = q(json!({"filter":{"not":{"field":"tags","op":"contains","value":"even"}},"count":true,"limit":1})).await.unwrap();
    assert_eq!(r["count"], 32, "30 odd ones plus the two without tags");
    let r = q(json!({"filter":{"field":"size","op":"exists","value":false}}))
        .await
        .unwrap();
    assert_eq!(ids(&r), ["none"]);
    let r = q(
        json!({"filter":{"field":"name","op":"prefix","value":"n5"},"order_by":[{"field":"$id"}]}),
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&r),
        [
            "i05", "i50", "i51", "i52", "i53", "i54", "i55", "i56", "i57", "i58", "i59"
        ]
    );
    let r = q(json!({"filter":{"field":"size","op":"ne","value":1},"count":true,"limit":1}))
        .await
        .unwrap();
    assert_eq!(r["count"], 61);

    // Paging by (kind desc, size asc) while documents are inserted between pages:
    // every document present from the start is seen exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 0;
    loop {
        let page = q(json!({"order_by":[{"field":"kind","direction":"desc"},{"field":"size"}],"limit":7,"cursor":cursor})).await.unwrap();
        seen.extend(ids(&page));
        let _: Value = admin
            .put(
                &format!("/db/v1/collections/items/docs/new{extra}"),
                &json!({"kind":"c","size":-1}),
            )
            .await
            .unwrap();
        extra += 1;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let originals: Vec<&String> = seen.iter().filter(|id| !id.starts_with("new")).collect();
    let mut unique = originals.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(originals.len(), 62, "no original skipped");
    assert_eq!(unique.len(), 62, "none seen twice");
    assert_eq!(
        error(q(json!({"cursor":"garbage"})).await).await,
        (400, "invalid_argument".into())
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_query_on_indexed_fields_uses_the_index() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(
        &admin,
        "photo_meta",
        json!([{"fields":["owner","created_at"]}]),
    )
    .await;
    let mut connection = PgConnection::connect(&cloud.database_url).await.unwrap();
    let expr = minicloud_testkit::minicloud_docdb::query::expression("owner");
    let order = minicloud_testkit::minicloud_docdb::query::expression("created_at");
    sqlx::raw_sql("SET enable_seqscan = off")
        .execute(&mut connection)
        .await
        .unwrap();
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN SELECT id FROM docdb.\"docs_photo_meta\" WHERE {expr} = '\"u1\"'::jsonb ORDER BY {order} DESC LIMIT 20"
    )))
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let plan: String = plan
        .into_iter()
        .map(|(line,)| line)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("docs_photo_meta_i0"), "{plan}");
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(&admin, "a", json!([])).await;
    collection(&admin, "b", json!([])).await;
    let _: Value = admin
        .put("/db/v1/collections/a/docs/x", &json!({"v":1}))
        .await
        .unwrap();
    let failing = admin
        .post::<_, Value>(
            "/db/v1/batch",
            &json!({"writes":[
                {"op":"put","collection":"a","id":"y","data":{"v":2}},
                {"op":"put","collection":"b","id":"z","data":{"v":3}},
                {"op":"put","collection":"a","id":"x","data":{"v":9},"if_match":5}
            ]}),
        )
        .await;
    let (status, _) = error(failing).await;
    assert_eq!(status, 412);
    assert_eq!(
        error(admin.get("/db/v1/collections/a/docs/y").await)
            .await
            .0,
        404,
        "nothing of a failed batch is written"
    );
    assert_eq!(
        error(admin.get("/db/v1/collections/b/docs/z").await)
            .await
            .0,
        404
    );
    let ok: Value = admin
        .post(
            "/db/v1/batch",
            &json!({"writes":[
                {"op":"put","collection":"a","id":"y","data":{"v":2}},
                {"op":"delete","collection":"a","id":"x","if_match":1},
                {"op":"create","collection":"b","data":{"v":3}}
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(ok["results"].as_array().unwrap().len(), 3);
    assert_eq!(
        error(admin.get("/db/v1/collections/a/docs/x").await)
            .await
            .0,
        404
    );
    let too_many: Vec<Value> = (0..501)
        .map(|i| json!({"op":"put","collection":"a","id":format!("k{i}"),"data":{}}))
        .collect();
    assert_eq!(
        error(
            admin
                .post("/db/v1/batch", &json!({"writes": too_many}))
                .await
        )
        .await
        .0,
        400
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn key_value_with_ttl_cas_listing_and_increments() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let put: Value = admin
        .put("/db/v1/kv/settings/theme", &json!({"dark": true}))
        .await
        .unwrap();
    assert_eq!(
        (put["key"].as_str(), put["version"].as_i64()),
        (Some("theme"), Some(1))
    );
    let got: Value = admin.get("/db/v1/kv/settings/theme").await.unwrap();
    assert_eq!(got["value"], json!({"dark": true}));
    assert_eq!(
        send(
            &admin,
            Method::PUT,
            "/db/v1/kv/settings/theme",
            &[("if-match", "\"9\"")],
            Some(json!(1))
        )
        .await
        .status(),
        412
    );
    assert_eq!(
        send(
            &admin,
            Method::PUT,
            "/db/v1/kv/settings/theme",
            &[("if-match", "\"1\"")],
            Some(json!("light"))
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        send(
            &admin,
            Method::PUT,
            "/db/v1/kv/settings/theme",
            &[("if-none-match", "*")],
            Some(json!(1))
        )
        .await
        .status(),
        412
    );
    // Keys may contain slashes.
    let _: Value = admin
        .put("/db/v1/kv/settings/users/u1/lang", &json!("fr"))
        .await
        .unwrap();
    let got: Value = admin.get("/db/v1/kv/settings/users/u1/lang").await.unwrap();
    assert_eq!(got["value"], "fr");

    // TTL: gone after expiry, and never listed.
    let _: Value = admin
        .put("/db/v1/kv/sessions/s1?ttl=1", &json!("token"))
        .await
        .unwrap();
    let _: Value = admin.get("/db/v1/kv/sessions/s1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(error(admin.get("/db/v1/kv/sessions/s1").await).await.0, 404);
    let listed: Value = admin.get("/db/v1/kv/sessions").await.unwrap();
    assert_eq!(listed["items"], json!([]));

    // Listing by prefix with a cursor.
    for i in 0..5 {
        let _: Value = admin
            .put(&format!("/db/v1/kv/pages/p{i}"), &json!(i))
            .await
            .unwrap();
    }
    let _: Value = admin.put("/db/v1/kv/pages/q", &json!(0)).await.unwrap();
    let first: Value = admin.get("/db/v1/kv/pages?prefix=p&limit=3").await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = admin
        .get(&format!("/db/v1/kv/pages?prefix=p&limit=3&cursor={cursor}"))
        .await
        .unwrap();
    let keys: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p3", "p4"]);
    assert!(second["next_cursor"].is_null());

    // Atomic increments, also concurrent ones.
    let one: Value = admin
        .post("/db/v1/kv/counters/hits/incr", &json!({}))
        .await
        .unwrap();
    assert_eq!(one["value"], 1);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            admin
                .post::<_, Value>("/db/v1/kv/counters/hits/incr", &json!({"by": 2}))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: Value = admin.get("/db/v1/kv/counters/hits").await.unwrap();
    assert_eq!(total["value"].as_f64(), Some(41.0));
    assert_eq!(
        error(
            admin
                .post("/db/v1/kv/settings/theme/incr", &json!({}))
                .await
        )
        .await
        .0,
        409,
        "not a number"
    );
    assert_eq!(
        send(
            &admin,
            Method::DELETE,
            "/db/v1/kv/settings/theme",
            &[],
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        send(
            &admin,
            Method::DELETE,
            "/db/v1/kv/settings/theme",
            &[],
            None
        )
        .await
        .status(),
        404
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn permissions_come_from_the_collection_policy() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let policy = json!({"effect":"allow","principals":["role:authenticated"],"actions":["db:GetDocument","db:PutDocument"],"resources":["db:notes/${auth.uid}-*"]});
    let _: Value = admin
        .post(
            "/db/v1/collections",
            &json!({"name":"notes","policy":policy}),
        )
        .await
        .unwrap();
    let session = cloud
        .client()
        .signup("writer@example.com", "password1234")
        .await
        .unwrap();
    let uid = session.user_id().to_owned();
    let user = cloud.client().with_token(session.access_token);
    let mine = format!("/db/v1/collections/notes/docs/{uid}-1");
    let doc: Value = user.put(&mine, &json!({"text":"hi"})).await.unwrap();
    assert_eq!(doc["owner"], uid.as_str());
    let _: Value = user.get(&mine).await.unwrap();
    assert_eq!(
        error(
            user.put("/db/v1/collections/notes/docs/someone-else-1", &json!({}))
                .await
        )
        .await
        .0,
        403
    );
    assert_eq!(
        error(
            user.post("/db/v1/collections/notes/query", &json!({}))
                .await
        )
        .await
        .0,
        403,
        "no db:Query granted"
    );
    assert_eq!(
        error(user.send(user.request(Method::DELETE, &mine)).await)
            .await
            .0,
        403
    );
    assert_eq!(
        error(cloud.client().get(&mine).await).await.0,
        403,
        "anonymous"
    );
    assert_eq!(error(user.get("/db/v1/kv/any/key").await).await.0, 403);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_nothing_written() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(&admin, "things", json!([])).await;
    for (body, status) in [
        (
            json!({"filter":{"field":"a'; DROP TABLE docdb.kv; --","op":"eq","value":1}}),
            400,
        ),
        (
            json!({"filter":{"field":"a","op":"regex","value":".*"}}),
            400,
        ),
        (json!({"order_by":[{"field":"a}b"}]}), 400),
        (json!({"limit": 5000}), 400),
        (
            json!({"filter":{"field":"a","op":"in","value":(0..101).collect::<Vec<_>>()}}),
            400,
        ),
        (json!({"unknown": true}), 400),
    ] {
        assert_eq!(
            error(admin.post("/db/v1/collections/things/query", &body).await)
                .await
                .0,
            status,
            "{body}"
        );
    }
    let big = "x".repeat(1024 * 1024 + 10);
    for (path, body, status) in [
        ("/db/v1/collections/things/docs", json!([1, 2]), 400),
        ("/db/v1/collections/things/docs", json!("text"), 400),
        ("/db/v1/collections/things/docs", json!({"big": big}), 413),
        ("/db/v1/collections/Bad-Name/docs", json!({}), 400),
        ("/db/v1/collections/missing/docs", json!({}), 404),
        (
            "/db/v1/collections",
            json!({"name":"x","indexes":[{"fields":["a; DROP"]}]}),
            400,
        ),
        ("/db/v1/collections", json!({"name":"1bad"}), 400),
    ] {
        assert_eq!(
            error(admin.post(path, &body).await).await.0,
            status,
            "{path} {}",
            body.to_string().chars().take(60).collect::<String>()
        );
    }
    let bad_id = send(
        &admin,
        Method::PUT,
        "/db/v1/collections/things/docs/bad%20id",
        &[],
        Some(json!({})),
    )
    .await;
    assert_eq!(bad_id.status(), 400);
    let none: Value = admin
        .post("/db/v1/collections/things/query", &json!({"count": true}))
        .await
        .unwrap();
    assert_eq!(none["count"], 0, "nothing was written");
    // The kv table survived the hostile path above.
    let _: Value = admin.put("/db/v1/kv/ns/k", &json!(1)).await.unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn change_events_follow_commits_in_order() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    collection(&admin, "orders", json!([])).await;
    let _: Value = admin
        .put("/db/v1/collections/orders/docs/o1", &json!({"n":1}))
        .await
        .unwrap();
    let _: Value = admin
        .send(
            admin
                .request(Method::PATCH, "/db/v1/collections/orders/docs/o1")
                .json(&json!({"n":2})),
        )
        .await
        .unwrap();
    // A PUT of an existing document (one statement, not a transaction) is an update.
    let _: Value = admin
        .put("/db/v1/collections/orders/docs/o1", &json!({"n":3}))
        .await
        .unwrap();
    // A failed batch commits nothing and so publishes nothing; nor does a refused
    // create-only PUT.
    let _ = admin.post::<_, Value>("/db/v1/batch", &json!({"writes":[{"op":"put","collection":"orders","id":"o2","data":{}},{"op":"delete","collection":"orders","id":"missing"}]})).await;
    let refused = admin
        .send::<Value>(
            admin
                .request(Method::PUT, "/db/v1/collections/orders/docs/o1")
                .header("if-none-match", "*")
                .json(&json!({"n":4})),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let _: Value = admin
        .send(admin.request(Method::DELETE, "/db/v1/collections/orders/docs/o1"))
        .await
        .unwrap();
    let client = redis::Client::open(minicloud_testkit::test_redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut events: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}topic:db", cloud.redis_prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        events = entries
            .into_iter()
            .map(|(_, f)| serde_json::from_str(&f[0].1).unwrap())
            .collect();
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kinds: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("minicloud.db.document.created", 1),
            ("minicloud.db.document.updated", 2),
            ("minicloud.db.document.updated", 3),
            ("minicloud.db.document.deleted", 3)
        ]
    );
    assert_eq!(events[0]["data"]["document"], json!({"n": 1}));
    assert_eq!(events[1]["data"]["document"], json!({"n": 2}));
    assert_eq!(events[2]["data"]["document"], json!({"n": 3}));
    for event in &events {
        assert_eq!(event["subject"], "orders/o1", "{event}");
        assert_eq!(event["source"], "/minicloud/db", "{event}");
        assert_eq!(event["data"]["collection"], "orders", "{event}");
        assert_eq!(event["data"]["id"], "o1", "{event}");
        assert!(
            event["data"].as_object().unwrap().contains_key("owner"),
            "{event}"
        );
    }
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    assert!(events[3]["data"].get("document").is_none());
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_documents_and_kv_with_the_callers_token() {
    use minicloud_proto::docdb::v1::docdb_service_client::DocdbServiceClient;
    use minicloud_proto::docdb::v1::{
        DocumentRef, KvIncrRequest, KvPutRequest, KvRef, QueryRequest, WriteOp, WriteRequest,
    };

    let cloud = TestCloud::start().await.unwrap();
    collection(&cloud.admin(), "meta", json!([{"fields":["owner"]}])).await;
    let mut client = DocdbServiceClient::connect(cloud.urls.docdb.clone())
        .await
        .unwrap();
    let key = cloud.keys.service_key.clone();
    fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    }
    let write = |op: &str, id: &str, data: Value| WriteOp {
        op: op.into(),
        collection: "meta".into(),
        id: id.into(),
        data_json: data.to_string(),
        if_match: None,
        if_none_match: false,
    };
    let written = client
        .write(authed(
            &key,
            WriteRequest {
                writes: vec![
                    write("put", "p1", json!({"owner":"u1","w":10})),
                    write("put", "p2", json!({"owner":"u2"})),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.documents.len(), 2);
    let doc = client
        .get_document(authed(
            &key,
            DocumentRef {
                collection: "meta".into(),
                id: "p1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serde_json::from_str::<Value>(&doc.data_json).unwrap()["w"],
        10
    );
    let found = client
        .query(authed(
            &key,
            QueryRequest {
                collection: "meta".into(),
                query_json: r#"{"filter":{"field":"owner","op":"eq","value":"u2"},"count":true}"#
                    .into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((found.documents.len(), found.count), (1, Some(1)));
    let patched = client
        .write(authed(
            &key,
            WriteRequest {
                writes: vec![WriteOp {
                    if_match: Some(1),
                    ..write("patch", "p1", json!({"w": 11}))
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(patched.documents[0].version, 2);
    let stale = client
        .write(authed(
            &key,
            WriteRequest {
                writes: vec![WriteOp {
                    if_match: Some(1),
                    ..write("patch", "p1", json!({}))
                }],
            },
        ))
        .await;
    assert_eq!(stale.unwrap_err().code(), tonic::Code::FailedPrecondition);

    let put = client
        .kv_put(authed(
            &key,
            KvPutRequest {
                namespace: "cfg".into(),
                key: "a".into(),
                value_json: "5".into(),
                ttl_seconds: None,
                if_match: None,
                if_none_match: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.version, 1);
    let incremented = client
        .kv_incr(authed(
            &key,
            KvIncrRequest {
                namespace: "cfg".into(),
                key: "a".into(),
                by: 2.0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(incremented.value_json, "7");
    let got = client
        .kv_get(authed(
            &key,
            KvRef {
                namespace: "cfg".into(),
                key: "a".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 2);
    let anonymous = client
        .get_document(DocumentRef {
            collection: "meta".into(),
            id: "p1".into(),
        })
        .await;
    // gRPC takes no call without a credential (REST would treat it as anon).
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let hostile = client
        .query(authed(
            &key,
            QueryRequest {
                collection: "meta".into(),
                query_json: r#"{"filter":{"field":"x') --","op":"eq","value":1}}"#.into(),
            },
        ))
        .await;
    assert_eq!(hostile.unwrap_err().code(), tonic::Code::InvalidArgument);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn owner_conditions_give_each_user_only_their_own_documents() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let policy = json!({"effect":"allow","principals":["role:authenticated"],
        "actions":["db:GetDocument","db:PutDocument","db:DeleteDocument","db:Query"],
        "resources":["db:notes","db:notes/*"],"condition":{"owner":"${auth.uid}"}});
    let _: Value = admin
        .post(
            "/db/v1/collections",
            &json!({"name":"notes","policy":policy}),
        )
        .await
        .unwrap();
    let alice = cloud
        .client()
        .signup("alice@example.com", "password1234")
        .await
        .unwrap();
    let bob = cloud
        .client()
        .signup("bob@example.com", "password1234")
        .await
        .unwrap();
    let (alice_id, bob_id) = (alice.user_id().to_owned(), bob.user_id().to_owned());
    let alice = cloud.client().with_token(alice.access_token);
    let bob = cloud.client().with_token(bob.access_token);

    let a1: Value = alice
        .post("/db/v1/collections/notes/docs", &json!({"text":"alice 1"}))
        .await
        .unwrap();
    let _: Value = alice
        .put(
            "/db/v1/collections/notes/docs/shared-name",
            &json!({"text":"alice 2"}),
        )
        .await
        .unwrap();
    let _: Value = bob
        .post("/db/v1/collections/notes/docs", &json!({"text":"bob 1"}))
        .await
        .unwrap();
    assert_eq!(a1["owner"], alice_id.as_str());
    let a1_path = format!(
        "/db/v1/collections/notes/docs/{}",
        a1["id"].as_str().unwrap()
    );

    // Bob can neither read, replace, patch nor delete Alice's documents…
    assert_eq!(error(bob.get(&a1_path).await).await.0, 403);
    assert_eq!(
        error(bob.put(&a1_path, &json!({"text":"mine now"})).await)
            .await
            .0,
        403
    );
    assert_eq!(
        error(
            bob.put("/db/v1/collections/notes/docs/shared-name", &json!({}))
                .await
        )
        .await
        .0,
        403
    );
    assert_eq!(
        error(bob.send(bob.request(Method::DELETE, &a1_path)).await)
            .await
            .0,
        403
    );
    // …and his queries see only his own, counts included.
    let bobs: Value = bob
        .post("/db/v1/collections/notes/query", &json!({"count": true}))
        .await
        .unwrap();
    assert_eq!(bobs["count"], 1);
    assert!(
        bobs["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["owner"] == bob_id.as_str())
    );
    let alices: Value = alice
        .post("/db/v1/collections/notes/query", &json!({"count": true}))
        .await
        .unwrap();
    assert_eq!(alices["count"], 2);
    let _: Value = alice.get(&a1_path).await.unwrap();
    let listed: Value = bob.get("/db/v1/collections").await.unwrap();
    assert_eq!(
        listed["collections"].as_array().unwrap().len(),
        1,
        "the collection itself is visible"
    );
    // Anonymous callers have no uid, so no owner condition holds for them.
    assert_eq!(
        error(
            cloud
                .client()
                .post("/db/v1/collections/notes/query", &json!({}))
                .await
        )
        .await
        .0,
        403
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_key_value_input_is_refused_with_nothing_written() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let big = "x".repeat(300 * 1024);
    for (method, path, headers, body, status) in [
        (
            Method::PUT,
            "/db/v1/kv/Bad-NS/k",
            vec![],
            Some(json!(1)),
            400,
        ),
        (
            Method::PUT,
            "/db/v1/kv/ns/a%01b",
            vec![],
            Some(json!(1)),
            400,
        ),
        (
            Method::PUT,
            "/db/v1/kv/ns/k?ttl=0",
            vec![],
            Some(json!(1)),
            400,
        ),
        (
            Method::PUT,
            "/db/v1/kv/ns/k?ttl=-5",
            vec![],
            Some(json!(1)),
            400,
        ),
        (
            Method::PUT,
            "/db/v1/kv/ns/k?ttl=999999999999",
            vec![],
            Some(json!(1)),
            400,
        ),
        (Method::PUT, "/db/v1/kv/ns/k", vec![], Some(json!(big)), 413),
        (
            Method::PUT,
            "/db/v1/kv/ns/k",
            // An opaque tag matches no version: 412 (RFC 9110), not 400.
            vec![("if-match", "\"abc\"")],
            Some(json!(1)),
            412,
        ),
        (
            Method::PUT,
            "/db/v1/kv/ns/k",
            vec![("if-none-match", "\"3\"")],
            Some(json!(1)),
            400,
        ),
        (
            Method::POST,
            "/db/v1/kv/ns/k/incr",
            vec![],
            Some(json!({"by": "ten"})),
            400,
        ),
        (Method::POST, "/db/v1/kv/ns/k", vec![], Some(json!({})), 405),
        (Method::GET, "/db/v1/kv/ns?limit=0", vec![], None, 400),
        (Method::GET, "/db/v1/kv/ns?limit=abc", vec![], None, 400),
    ] {
        let response = send(&admin, method.clone(), path, &headers, body).await;
        let code = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(code, status, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"].is_string(),
            "{method} {path}: {answer}"
        );
    }
    let listed: Value = admin.get("/db/v1/kv/ns").await.unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was written");
    cloud.stop().await.unwrap();
}

/// The PostgREST view (issue 18) under hostile input: who may call it, oversized,
/// malformed and NUL-bearing input, injection through filters and columns, and a
/// stalled body. Every refusal is a 4xx with PostgREST's fields and ours, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgrest_view_refuses_hostile_input_with_nothing_written() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Read by every listener when it starts; this test's process is its own.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("MINICLOUD_BODY_IDLE_TIMEOUT", "1");
    }
    let cloud = TestCloud::builder()
        .gateway_over_http()
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let policy = json!({"effect":"allow","principals":["role:authenticated"],
        "actions":["db:GetDocument","db:PutDocument","db:DeleteDocument","db:Query"],
        "resources":["db:notes","db:notes/*"],"condition":{"owner":"${auth.uid}"}});
    let _: Value = admin
        .post(
            "/db/v1/collections",
            &json!({"name":"notes","policy":policy}),
        )
        .await
        .unwrap();
    let user = cloud
        .client()
        .signup("rest@example.com", "password1234")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", cloud.gateway_url());
    let call = |method: Method, path: &str, token: &str| {
        http.request(method, url(path))
            .header("apikey", &cloud.keys.anon_key)
            .bearer_auth(token)
    };
    let anon = cloud.keys.anon_key.clone();
    let token = user.access_token.clone();

    // Who may call: the anon key neither reads nor writes a collection whose policy
    // names only signed-in users; the admin sees everything.
    let denied = call(Method::POST, "/rest/v1/notes", &anon)
        .json(&json!({"text": "spam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["code"], "42501");
    assert_eq!(body["error"]["code"], "permission_denied");
    assert!(
        body["message"].is_string() && body.get("hint").is_some() && body.get("details").is_some()
    );
    let read = call(Method::GET, "/rest/v1/notes", &anon)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);
    let created = call(Method::POST, "/rest/v1/notes", &token)
        .header("prefer", "return=representation")
        .json(&json!({"id": "n1", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Malformed and hostile input.
    let huge_text = "x".repeat(1024 * 1024 + 10);
    let many: Vec<Value> = (0..501).map(|i| json!({"n": i})).collect();
    /// What is sent, and the status and PostgREST code it must get.
    type Case = (
        &'static str,
        Method,
        String,
        Option<Vec<u8>>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(b"{\"text\":".to_vec()),
            400,
            "PGRST100",
        ),
        (
            "not a row",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(b"[1,2]".to_vec()),
            400,
            "PGRST100",
        ),
        (
            "NUL in a value",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(br#"{"text":"a\u0000b"}"#.to_vec()),
            400,
            "PGRST100",
        ),
        (
            "NUL in a filter",
            Method::GET,
            "/rest/v1/notes?text=eq.a%00b".into(),
            None,
            400,
            "PGRST100",
        ),
        (
            "injection as a column",
            Method::GET,
            "/rest/v1/notes?text%27%3Bdrop%20table%20x--=eq.1".into(),
            None,
            400,
            "PGRST100",
        ),
        (
            "injection in select",
            Method::GET,
            "/rest/v1/notes?select=id,%22x%22%29%3Bdrop".into(),
            None,
            400,
            "PGRST100",
        ),
        (
            "unknown operator",
            Method::GET,
            "/rest/v1/notes?text=regex.a".into(),
            None,
            400,
            "PGRST100",
        ),
        (
            "embedding",
            Method::GET,
            "/rest/v1/notes?select=*,users(*)".into(),
            None,
            400,
            "PGRST100",
        ),
        (
            "deep or",
            Method::GET,
            format!(
                "/rest/v1/notes?or=({}a.eq.1{})",
                "or(".repeat(20),
                ")".repeat(20)
            ),
            None,
            400,
            "PGRST100",
        ),
        (
            "too many rows",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(serde_json::to_vec(&many).unwrap()),
            400,
            "PGRST100",
        ),
        (
            "a document over 1 MiB",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(serde_json::to_vec(&json!({"text": huge_text})).unwrap()),
            413,
            "PGRST413",
        ),
        (
            "a body over 8 MiB",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(vec![b' '; 9 * 1024 * 1024]),
            413,
            "PGRST413",
        ),
        (
            "bad id",
            Method::POST,
            "/rest/v1/notes".into(),
            Some(br#"{"id":"../x"}"#.to_vec()),
            400,
            "PGRST100",
        ),
        (
            "changing an id",
            Method::PATCH,
            "/rest/v1/notes?id=eq.n1".into(),
            Some(br#"{"id":"n2"}"#.to_vec()),
            400,
            "PGRST100",
        ),
        (
            "upsert on another column",
            Method::POST,
            "/rest/v1/notes?on_conflict=text".into(),
            Some(br#"{"text":"x"}"#.to_vec()),
            400,
            "PGRST100",
        ),
        (
            "a table no collection can be",
            Method::GET,
            "/rest/v1/Not%20A%20Table".into(),
            None,
            404,
            "PGRST205",
        ),
        (
            "a missing collection",
            Method::DELETE,
            "/rest/v1/nothing_here?id=eq.1".into(),
            None,
            404,
            "PGRST205",
        ),
        (
            "RPC",
            Method::POST,
            "/rest/v1/rpc/drop_everything".into(),
            Some(b"{}".to_vec()),
            404,
            "PGRST202",
        ),
        (
            "range backwards",
            Method::GET,
            "/rest/v1/notes".into(),
            None,
            400,
            "PGRST100",
        ),
    ];
    for (what, method, path, body, status, code) in cases {
        let mut request = call(method, &path, &token).header("content-type", "application/json");
        if what == "range backwards" {
            request = request.header("range", "9-2");
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    // A value that looks like SQL is a value: it matches nothing and breaks nothing.
    let sneaky = call(
        Method::GET,
        "/rest/v1/notes?text=eq.x%27)%20OR%201%3D1%20--&or=(text.like.*%27*)",
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(sneaky.status(), 200);
    assert_eq!(sneaky.json::<Value>().await.unwrap(), json!([]));
    // Nothing of the refused writes is there.
    let all: Value = call(Method::GET, "/rest/v1/notes?select=id", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all, json!([{"id": "n1"}]));
    // A delete without a single allowed row deletes nothing of anyone else's.
    let other = cloud
        .client()
        .signup("other@example.com", "password1234")
        .await
        .unwrap();
    let wiped = call(Method::DELETE, "/rest/v1/notes", &other.access_token)
        .header("prefer", "return=representation")
        .send()
        .await
        .unwrap();
    assert_eq!(wiped.status(), 200);
    assert_eq!(wiped.json::<Value>().await.unwrap(), json!([]));
    assert_eq!(
        call(Method::GET, "/rest/v1/notes?select=id", &token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!([{"id": "n1"}])
    );

    // A stalled body is cut off after the body-idle timeout, and writes nothing.
    let address = cloud.gateway_url().trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /rest/v1/notes HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"id\":\"stalled\","
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("a stalled body is cut off")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    let stalled_row: Value = call(Method::GET, "/rest/v1/notes?id=eq.stalled", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stalled_row, json!([]));
    cloud.stop().await.unwrap();
}
