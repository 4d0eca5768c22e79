//! The trust boundary (issue 15): hostile functions stay in their sandbox; handing a
//! role to code needs `functions:PassRole`; env values are for deployers only.
//! The same hostile suite runs against a `minicloud up` of an unprivileged user in
//! `crates/cli/tests/sandbox_unprivileged.rs`.

use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use minicloud_testkit::TestCloud;
use minicloud_testkit::hostile;
use serde_json::{Value, json};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// On pre-started interpreters (the default): their first Landlock layer lets them
/// read every function's code until their function's layer narrows it.
#[tokio::test]
async fn hostile_functions_cannot_leave_their_sandbox() {
    hostile_python_suite(2).await;
}

/// On interpreters spawned for the function.
#[tokio::test]
async fn hostile_functions_cannot_leave_a_freshly_spawned_sandbox() {
    hostile_python_suite(0).await;
}

async fn hostile_python_suite(prestart: usize) {
    let cloud = TestCloud::builder()
        .invoker(|invoker| {
            invoker.scratch_mb = 32;
            invoker.prestart = prestart;
        })
        .start()
        .await
        .unwrap();
    hostile::plant_credentials(&cloud.data_dir, &cloud.keys.service_key);
    let service_ports: BTreeMap<String, u16> = [
        ("auth", &cloud.urls.auth),
        ("storage", &cloud.urls.storage),
        ("docdb", &cloud.urls.docdb),
        ("bus", &cloud.urls.bus),
        ("invoker", &cloud.urls.invoker),
    ]
    .into_iter()
    .map(|(name, url)| (name.to_owned(), port_of(url)))
    .collect();
    hostile::run(&hostile::Target {
        gateway_url: cloud.gateway_url().to_owned(),
        service_key: cloud.keys.service_key.clone(),
        invoker_pid: std::process::id(),
        data_dir: cloud.data_dir.clone(),
        code_dir: cloud.data_dir.join("functions"),
        service_ports,
        scratch_mb: 32,
        pids: 64,
        prestarted: prestart > 0,
    })
    .await;

    // Which protections were on is public to signed-in callers.
    let http = reqwest::Client::new();
    let sandbox: Value = http
        .get(format!("{}/functions/v1/sandbox", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sandbox["mode"], "on", "{sandbox}");
    assert_eq!(sandbox["enforced"], true, "{sandbox}");
    assert_eq!(sandbox["scratch_mb"], 32);
    assert_eq!(sandbox["prestart"]["size"], prestart, "{sandbox}");
    let anonymous = http
        .get(format!("{}/functions/v1/sandbox", cloud.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    cloud.stop().await.unwrap();
}

/// On a pre-started interpreter that execs the function's `bootstrap` (the
/// default): its first Landlock layer could read every function's code.
#[tokio::test]
async fn a_native_hostile_function_cannot_leave_its_sandbox() {
    native_hostile_suite(2).await;
}

/// Spawned for the function.
#[tokio::test]
async fn a_freshly_spawned_native_hostile_function_cannot_leave_its_sandbox() {
    native_hostile_suite(0).await;
}

/// The pool's state (`GET /functions/v1/sandbox`'s `prestart`).
async fn prestart_of(http: &reqwest::Client, gw: &str, service: &str) -> Value {
    call(
        http,
        reqwest::Method::GET,
        format!("{gw}/functions/v1/sandbox"),
        service,
        None,
    )
    .await
    .1["prestart"]
        .clone()
}

async fn native_hostile_suite(prestart: usize) {
    let cloud = TestCloud::builder()
        .invoker(|invoker| invoker.prestart = prestart)
        .start()
        .await
        .unwrap();
    hostile::plant_credentials(&cloud.data_dir, &cloud.keys.service_key);
    let binary = std::fs::read(env!("CARGO_BIN_EXE_hostile-function")).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file(
        "bootstrap",
        zip::write::SimpleFileOptions::default().unix_permissions(0o755),
    )
    .unwrap();
    zip.write_all(&binary).unwrap();
    zip.finish().unwrap();
    let code = base64::engine::general_purpose::STANDARD.encode(out.into_inner());
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    let (status, body) = call(
        &http,
        reqwest::Method::PUT,
        format!("{gw}/functions/v1/native"),
        &service,
        Some(json!({"runtime":"provided","timeout_s":20,"code":{"zip_base64":code}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let service_ports: BTreeMap<String, u16> = [
        ("auth", &cloud.urls.auth),
        ("storage", &cloud.urls.storage),
        ("docdb", &cloud.urls.docdb),
        ("bus", &cloud.urls.bus),
        ("invoker", &cloud.urls.invoker),
    ]
    .into_iter()
    .map(|(name, url)| (name.to_owned(), port_of(url)))
    .collect();
    let targets = json!({
        "invoker_pid": std::process::id(),
        "credentials": cloud.data_dir.join("credentials.json"),
        "code_cache": cloud.data_dir.join("functions"),
        "postgres_port": 5432,
        "redis_port": 6379,
        "postgres_socket": "/var/run/postgresql/.s.PGSQL.5432",
        "service_ports": service_ports,
        "fork_count": 100,
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while prestart_of(&http, &gw, &service).await["ready"].as_u64() < Some(prestart as u64) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let taken = prestart_of(&http, &gw, &service).await["taken"]
        .as_u64()
        .unwrap();
    let (status, report) = call(
        &http,
        reqwest::Method::POST,
        format!("{gw}/functions/v1/native/invoke"),
        &service,
        Some(json!({"targets": targets})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    // Its instance was a pre-started interpreter exactly when the pool has any.
    let taken_now = prestart_of(&http, &gw, &service).await["taken"]
        .as_u64()
        .unwrap();
    assert_eq!(taken_now - taken, u64::from(prestart > 0));
    let attempts = report["attempts"].as_object().expect("attempts");
    let escaped: Vec<String> = attempts
        .iter()
        .filter(|(_, outcome)| outcome["blocked"] != true)
        .map(|(name, outcome)| format!("{name}: {}", outcome["detail"]))
        .collect();
    assert!(
        escaped.is_empty(),
        "the native function got out: {escaped:#?}"
    );
    assert!(attempts.len() >= 20, "{report}");
    let forks = attempts["fork_beyond_pids_limit"]["detail"]
        .as_str()
        .unwrap();
    assert!(forks.starts_with("stopped after"), "{forks}");
    cloud.stop().await.unwrap();
}

fn python_zip(source: &str) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file("app.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(source.as_bytes()).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn handing_a_role_to_code_needs_pass_role_and_env_values_need_deploy() {
    let cloud = TestCloud::builder()
        .policy_cache_ttl(std::time::Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    use reqwest::Method;
    let role = |name: &'static str, policies: Value| {
        let (http, gw, service) = (http.clone(), gw.clone(), service.clone());
        async move {
            let (status, body) = call(
                &http,
                Method::POST,
                format!("{gw}/auth/v1/admin/roles"),
                &service,
                Some(json!({"name":name,"policies":policies})),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            let (status, key) = call(
                &http,
                Method::POST,
                format!("{gw}/auth/v1/admin/api-keys"),
                &service,
                Some(json!({"name":name,"role":name})),
            )
            .await;
            assert_eq!(status, 201, "{key}");
            key["api_key"].as_str().unwrap().to_owned()
        }
    };
    role(
        "admin-ish",
        json!([{"effect":"allow","actions":["*"],"resources":["*"]}]),
    )
    .await;
    // A deployer may deploy and invoke every function, but not hand out roles.
    let deployer = role(
        "deployer",
        json!([{"effect":"allow","actions":["functions:Deploy","functions:Invoke"],"resources":["functions:*"]}]),
    )
    .await;
    let reader_key = role(
        "invoker-only",
        json!([{"effect":"allow","actions":["functions:Invoke"],"resources":["functions:*"]}]),
    )
    .await;

    let zip = python_zip("def handler(event, context):\n    return 'mine'\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&zip);
    let with_role = json!({"name":"privileged","runtime":"python3","handler":"app.handler",
        "role":"admin-ish","env":{"API_SECRET":"s3cr3t"},"code":{"zip_base64":b64}});

    // Create with a role: refused to the deployer, allowed to the service role.
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &deployer,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("functions:PassRole"),
        "{body}"
    );
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &service,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Replace keeping the role, and raw code upload under it: refused.
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/functions/v1/privileged"),
        &deployer,
        Some(with_role.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let evil = python_zip("def handler(event, context):\n    return 'evil'\n");
    let response = http
        .put(format!("{gw}/functions/v1/privileged/code"))
        .bearer_auth(&deployer)
        .header("content-type", "application/zip")
        .body(evil.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // The function still runs the owner's code.
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1/privileged/invoke"),
        &deployer,
        Some(json!({})),
    )
    .await;
    assert_eq!((status, body), (200, json!("mine")));
    // Without a role the deployer may deploy freely, and the service role may
    // upload code under a role.
    let mut no_role = with_role.clone();
    no_role["name"] = json!("plain");
    no_role["role"] = Value::Null;
    let (status, body) = call(
        &http,
        Method::POST,
        format!("{gw}/functions/v1"),
        &deployer,
        Some(no_role),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let response = http
        .put(format!("{gw}/functions/v1/privileged/code"))
        .bearer_auth(&service)
        .header("content-type", "application/zip")
        .body(evil)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A role granted PassRole on it may hand it out.
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/auth/v1/admin/roles/deployer"),
        &service,
        Some(json!({"policies":[
            {"effect":"allow","actions":["functions:Deploy","functions:Invoke"],"resources":["functions:*"]},
            {"effect":"allow","actions":["functions:PassRole"],"resources":["roles:admin-ish"]}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut granted = false;
    for _ in 0..80 {
        let (status, _) = call(
            &http,
            Method::PUT,
            format!("{gw}/functions/v1/privileged"),
            &deployer,
            Some(with_role.clone()),
        )
        .await;
        if status == 200 {
            granted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(granted, "PassRole granted by policy did not take effect");
    // The service role itself is never handed to a function.
    let mut as_service = with_role.clone();
    as_service["role"] = json!("service");
    let (status, body) = call(
        &http,
        Method::PUT,
        format!("{gw}/functions/v1/privileged"),
        &service,
        Some(as_service),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Env values: deployers and the service role see them; invokers see names.
    for (token, visible) in [(&service, true), (&deployer, true), (&reader_key, false)] {
        let (status, body) = call(
            &http,
            Method::GET,
            format!("{gw}/functions/v1/privileged"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let value = &body["env"]["API_SECRET"];
        assert_eq!(value == "s3cr3t", visible, "{body}");
        assert!(body["env"].get("API_SECRET").is_some(), "{body}");
        let (status, list) = call(
            &http,
            Method::GET,
            format!("{gw}/functions/v1"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let listed = list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "privileged")
            .unwrap();
        assert_eq!(listed["env"]["API_SECRET"] == "s3cr3t", visible, "{list}");
    }
    cloud.stop().await.unwrap();
}

mod grpc {
    //! Internal gRPC is authenticated and authorised like REST.
    use minicloud_proto::auth::v1 as auth;
    use minicloud_proto::bus::v1 as bus;
    use minicloud_proto::docdb::v1 as docdb;
    use minicloud_proto::invoker::v1 as invoker;
    use minicloud_proto::storage::v1 as storage;
    use minicloud_testkit::TestCloud;
    use serde_json::{Value, json};
    use tonic::Code;
    use tonic::transport::Channel;

    fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    async fn channel(url: &str) -> Channel {
        Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
        result.err().map_or(Code::Ok, |s| s.code())
    }

    /// The status code of every RPC called with `token` (`None`: no credential),
    /// `Code::Ok` where it answered.
    async fn every_rpc(cloud: &TestCloud, token: Option<&str>) -> Vec<(&'static str, Code)> {
        let mut a =
            auth::auth_service_client::AuthServiceClient::new(channel(&cloud.urls.auth).await);
        let mut b = bus::bus_service_client::BusServiceClient::new(channel(&cloud.urls.bus).await);
        let mut i = invoker::invoker_service_client::InvokerServiceClient::new(
            channel(&cloud.urls.invoker).await,
        );
        let mut s = storage::storage_service_client::StorageServiceClient::new(
            channel(&cloud.urls.storage).await,
        );
        let mut d =
            docdb::docdb_service_client::DocdbServiceClient::new(channel(&cloud.urls.docdb).await);
        let t = token;
        let event = bus::CloudEvent {
            id: "e1".into(),
            source: "/test".into(),
            spec_version: "1.0".into(),
            r#type: "test.event".into(),
            ..Default::default()
        };
        let put = futures::stream::iter(vec![storage::PutObjectChunk {
            part: Some(storage::put_object_chunk::Part::Header(
                storage::PutObjectHeader {
                    bucket: "open".into(),
                    path: "x.txt".into(),
                    ..Default::default()
                },
            )),
        }]);
        vec![
            (
                "auth.GetJwks",
                code(a.get_jwks(with_token(auth::GetJwksRequest {}, t)).await),
            ),
            (
                "auth.IssueRoleToken",
                code(
                    a.issue_role_token(with_token(
                        auth::IssueRoleTokenRequest {
                            role: "authenticated".into(),
                            subject: "00000000-0000-0000-0000-000000000001".into(),
                            ttl_seconds: 60,
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "auth.GetRolePolicies",
                code(
                    a.get_role_policies(with_token(
                        auth::GetRolePoliciesRequest {
                            role: "authenticated".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "auth.VerifyApiKey",
                code(
                    a.verify_api_key(with_token(
                        auth::VerifyApiKeyRequest {
                            key: cloud.keys.service_key.clone(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "auth.GetAccessKey",
                code(
                    a.get_access_key(with_token(
                        auth::GetAccessKeyRequest {
                            access_key_id: "AKIAAAAAAAAAAAAAAAAA".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "auth.RevokeUserSessions",
                code(
                    a.revoke_user_sessions(with_token(
                        auth::RevokeUserSessionsRequest {
                            user_id: "00000000-0000-0000-0000-000000000001".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "bus.Publish",
                code(
                    b.publish(with_token(
                        bus::PublishRequest {
                            topic: "storage".into(),
                            events: vec![event],
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "bus.EnsureSubscription",
                code(
                    b.ensure_subscription(with_token(
                        bus::EnsureSubscriptionRequest {
                            id: "sub_x".into(),
                            subscription_json: json!({"topic":"storage","target":{"function":"f"}})
                                .to_string(),
                            owner: String::new(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "bus.DeleteSubscription",
                code(
                    b.delete_subscription(with_token(
                        bus::DeleteSubscriptionRequest { id: "sub_x".into() },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "invoker.ListFunctions",
                code(
                    i.list_functions(with_token(invoker::ListFunctionsRequest {}, t))
                        .await,
                ),
            ),
            (
                "invoker.Invoke",
                code(
                    i.invoke(with_token(
                        invoker::InvokeRequest {
                            function: "f".into(),
                            payload: b"{}".to_vec(),
                            is_cloud_event: false,
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "storage.ListBuckets",
                code(
                    s.list_buckets(with_token(storage::ListBucketsRequest {}, t))
                        .await,
                ),
            ),
            (
                "storage.HeadObject",
                code(
                    s.head_object(with_token(
                        storage::ObjectRef {
                            bucket: "closed".into(),
                            path: "x.txt".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "storage.GetObject",
                code(
                    s.get_object(with_token(
                        storage::GetObjectRequest {
                            bucket: "closed".into(),
                            path: "x.txt".into(),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "storage.PutObject",
                code(s.put_object(with_token(put, t)).await),
            ),
            (
                "storage.DeleteObject",
                code(
                    s.delete_object(with_token(
                        storage::ObjectRef {
                            bucket: "closed".into(),
                            path: "x.txt".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "storage.ListObjects",
                code(
                    s.list_objects(with_token(
                        storage::ListObjectsRequest {
                            bucket: "closed".into(),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.ListCollections",
                code(
                    d.list_collections(with_token(docdb::ListCollectionsRequest {}, t))
                        .await,
                ),
            ),
            (
                "docdb.GetDocument",
                code(
                    d.get_document(with_token(
                        docdb::DocumentRef {
                            collection: "closed".into(),
                            id: "d1".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.CanRead",
                code(
                    d.can_read(with_token(
                        docdb::CanReadRequest {
                            collection: "closed".into(),
                            id: "d1".into(),
                            owner: String::new(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.Write",
                code(
                    d.write(with_token(docdb::WriteRequest { writes: vec![] }, t))
                        .await,
                ),
            ),
            (
                "docdb.Query",
                code(
                    d.query(with_token(
                        docdb::QueryRequest {
                            collection: "closed".into(),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.KvGet",
                code(
                    d.kv_get(with_token(
                        docdb::KvRef {
                            namespace: "ns".into(),
                            key: "k".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.KvPut",
                code(
                    d.kv_put(with_token(
                        docdb::KvPutRequest {
                            namespace: "ns".into(),
                            key: "k".into(),
                            value_json: "1".into(),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.KvDelete",
                code(
                    d.kv_delete(with_token(
                        docdb::KvRef {
                            namespace: "ns".into(),
                            key: "k".into(),
                        },
                        t,
                    ))
                    .await,
                ),
            ),
            (
                "docdb.KvIncr",
                code(
                    d.kv_incr(with_token(
                        docdb::KvIncrRequest {
                            namespace: "ns".into(),
                            key: "k".into(),
                            ..Default::default()
                        },
                        t,
                    ))
                    .await,
                ),
            ),
        ]
    }

    #[tokio::test]
    async fn internal_grpc_needs_a_credential_and_answers_as_rest_does() {
        let cloud = TestCloud::start().await.unwrap();
        let admin = cloud.admin();
        // A public and a private bucket and collection: users see the open ones.
        for (name, public) in [("open", true), ("closed", false)] {
            let _: Value = admin
                .post("/storage/v1/bucket", &json!({"name":name,"public":public}))
                .await
                .unwrap();
        }
        let _: Value = admin
            .post(
                "/db/v1/collections",
                &json!({"name":"shared","policy":{"effect":"allow","principals":["role:authenticated"],"actions":["db:Query","db:GetDocument"],"resources":["db:shared","db:shared/*"]}}),
            )
            .await
            .unwrap();
        let _: Value = admin
            .post("/db/v1/collections", &json!({"name":"closed"}))
            .await
            .unwrap();

        // No credential: every RPC is refused before it does anything.
        let anonymous = every_rpc(&cloud, None).await;
        let answered: Vec<_> = anonymous
            .iter()
            .filter(|(_, code)| *code != Code::Unauthenticated)
            .collect();
        assert!(
            answered.is_empty(),
            "answered without a credential: {answered:?}"
        );
        assert_eq!(anonymous.len(), 26);

        // A user's token: the internal RPCs are refused, the others decide as REST.
        let session = cloud
            .client()
            .signup("grpc@example.com", "password1234")
            .await
            .unwrap();
        let token = session.access_token.clone();
        let as_user: std::collections::BTreeMap<_, _> =
            every_rpc(&cloud, Some(&token)).await.into_iter().collect();
        for rpc in [
            "auth.IssueRoleToken",
            "auth.GetRolePolicies",
            "auth.VerifyApiKey",
            "auth.GetAccessKey",
            "auth.RevokeUserSessions",
            "bus.EnsureSubscription",
            "bus.DeleteSubscription",
            // REST answers 403 to these for a user too.
            "bus.Publish",
            "invoker.Invoke",
            "storage.HeadObject",
            "storage.GetObject",
            "storage.DeleteObject",
            "storage.ListObjects",
            "docdb.GetDocument",
            "docdb.Query",
        ] {
            assert_eq!(as_user[rpc], Code::PermissionDenied, "{rpc}: {as_user:?}");
        }
        assert_eq!(as_user["auth.GetJwks"], Code::Ok);
        // It answers (no) rather than refusing: the bus asks it as each owner.
        assert_eq!(as_user["docdb.CanRead"], Code::Ok);
        let mut d =
            docdb::docdb_service_client::DocdbServiceClient::new(channel(&cloud.urls.docdb).await);
        let verdict = d
            .can_read(with_token(
                docdb::CanReadRequest {
                    collection: "closed".into(),
                    id: "d1".into(),
                    owner: String::new(),
                },
                Some(&token),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!verdict.allowed);

        // The lists hold what REST shows the same user (gRPC used to list all).
        let user = cloud.client().with_token(token.clone());
        let rest_buckets: Value = user.get("/storage/v1/bucket").await.unwrap();
        let mut rest_buckets: Vec<String> = rest_buckets
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect();
        rest_buckets.sort();
        let mut s = storage::storage_service_client::StorageServiceClient::new(
            channel(&cloud.urls.storage).await,
        );
        let grpc_buckets: Vec<String> = s
            .list_buckets(with_token(storage::ListBucketsRequest {}, Some(&token)))
            .await
            .unwrap()
            .into_inner()
            .buckets
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(grpc_buckets, rest_buckets);
        assert_eq!(grpc_buckets, vec!["open".to_owned()]);

        let rest_collections: Value = user.get("/db/v1/collections").await.unwrap();
        let rest_collections: Vec<String> = rest_collections["collections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        let mut d =
            docdb::docdb_service_client::DocdbServiceClient::new(channel(&cloud.urls.docdb).await);
        let grpc_collections: Vec<String> = d
            .list_collections(with_token(docdb::ListCollectionsRequest {}, Some(&token)))
            .await
            .unwrap()
            .into_inner()
            .collections
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(grpc_collections, rest_collections);
        assert_eq!(grpc_collections, vec!["shared".to_owned()]);

        // The service key (what the services present to each other) may do it all.
        let as_service: std::collections::BTreeMap<_, _> =
            every_rpc(&cloud, Some(&cloud.keys.service_key))
                .await
                .into_iter()
                .collect();
        for rpc in [
            "auth.IssueRoleToken",
            "auth.GetRolePolicies",
            "auth.VerifyApiKey",
            "bus.Publish",
            "invoker.ListFunctions",
        ] {
            assert_eq!(as_service[rpc], Code::Ok, "{rpc}: {as_service:?}");
        }
        // An AWS key pair's secret only for the service key, and none for a key id
        // nobody was issued.
        assert_eq!(as_service["auth.GetAccessKey"], Code::NotFound);
        cloud.stop().await.unwrap();
    }
}

/// A port outside the ephemeral range that nothing listens on yet (deployers may
/// not open ports in that range, where instances' Runtime APIs listen).
fn listener_below_ephemeral_range() -> std::net::TcpListener {
    (20_000..30_000)
        .step_by(7)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free port below the ephemeral range")
}

#[tokio::test]
async fn functions_carry_their_own_network_and_scratch_settings() {
    let cloud = TestCloud::builder()
        .invoker(|invoker| invoker.scratch_mb = 32)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    let listener = listener_below_ephemeral_range();
    let open_port = listener.local_addr().unwrap().port();
    let source = r#"
import os, socket
def handler(event, context):
    out = {}
    for name, port in event["ports"].items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            out[name] = "connected"
        except OSError as e:
            out[name] = repr(e)
    written = 0
    try:
        with open(os.path.join(os.environ["TMPDIR"], "fill"), "wb") as f:
            while written < event["fill_mb"] << 20:
                f.write(b"\0" * (1 << 20)); f.flush(); written += 1 << 20
    except OSError as e:
        out["fill_error"] = repr(e)
    out["written_mb"] = written >> 20
    return out
"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(python_zip(source));
    let deploy = |name: &str, extra: Value| {
        let mut body =
            json!({"runtime":"python3","handler":"app.handler","code":{"zip_base64":b64}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (http, url, service) = (
            http.clone(),
            format!("{gw}/functions/v1/{name}"),
            service.clone(),
        );
        async move { call(&http, reqwest::Method::PUT, url, &service, Some(body)).await }
    };
    let ports = json!({"gateway": port_of(&gw), "listed": open_port});

    // `none`: its own Runtime API only — not even the gateway.
    let (status, body) = deploy("closed", json!({"network":{"egress":"none"}})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["network"], json!({"egress":"none"}));
    let invoke = |name: &str, event: Value| {
        let (http, url, service) = (
            http.clone(),
            format!("{gw}/functions/v1/{name}/invoke"),
            service.clone(),
        );
        async move { call(&http, reqwest::Method::POST, url, &service, Some(event)).await }
    };
    let (status, out) = invoke("closed", json!({"ports":ports,"fill_mb":1})).await;
    assert_eq!(status, 200, "{out}");
    assert_ne!(out["gateway"], "connected", "{out}");
    assert_ne!(out["listed"], "connected", "{out}");

    // `any` with its own port list: the gateway and that port.
    let (status, body) = deploy(
        "open",
        json!({"network":{"egress":"any","ports":[open_port]},"ephemeral_storage_mb":64}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ephemeral_storage_mb"], 64);
    let (status, out) = invoke("open", json!({"ports":ports,"fill_mb":48})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["gateway"], "connected", "{out}");
    assert_eq!(out["listed"], "connected", "{out}");
    // 48 MiB fit in its own 64 MiB, past the invoker's 32 MiB default...
    assert_eq!(out["written_mb"], 48, "{out}");
    // ...which a function without a setting of its own gets.
    let (status, _) = deploy("default", json!({})).await;
    assert_eq!(status, 201);
    let (status, out) = invoke("default", json!({"ports":{},"fill_mb":48})).await;
    assert_eq!(status, 200, "{out}");
    assert!(out["written_mb"].as_u64().unwrap() < 33, "{out}");
    assert!(
        out["fill_error"].as_str().unwrap().contains("No space"),
        "{out}"
    );
    drop(listener);

    // Deployers cannot open minicloud's own ports, nor the Runtime APIs' range.
    for (network, why) in [
        (json!({"egress":"any","ports":[5432]}), "own servers"),
        (json!({"egress":"any","ports":[6379]}), "own servers"),
        (json!({"egress":"any","ports":[4602]}), "own servers"),
        (json!({"egress":"any","ports":[45000]}), "ephemeral range"),
        (json!({"egress":"any","ports":[0]}), "1 to 65535"),
        (
            json!({"egress":"any","ports":(1..=17).collect::<Vec<u16>>()}),
            "at most",
        ),
    ] {
        let (status, body) = deploy("refused", json!({ "network": network })).await;
        assert_eq!(status, 400, "{network}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{network}: {message}");
    }
    for bad in [
        json!({"network":{"egress":"everywhere"}}),
        json!({"network":{"egress":"any","hosts":["x"]}}),
        json!({"network":{"egress":"any","ports":[70000]}}),
        json!({"ephemeral_storage_mb":63}),
        json!({"ephemeral_storage_mb":10241}),
    ] {
        let (status, body) = deploy("refused", bad.clone()).await;
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        assert!(body["error"]["message"].is_string(), "{bad}: {body}");
    }
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_root_invoker_gives_each_instance_cgroups_with_its_limits() {
    let cloud = TestCloud::builder()
        .invoker(|invoker| invoker.scratch_mb = 32)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let gw = cloud.gateway_url().to_owned();
    let service = cloud.keys.service_key.clone();
    let sandbox_status = || async {
        let url = format!("{gw}/functions/v1/sandbox");
        call(&http, reqwest::Method::GET, url, &service, None)
            .await
            .1
    };
    let sandbox = sandbox_status().await;
    let as_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !as_root {
        assert_eq!(sandbox["cgroups"], Value::Null, "{sandbox}");
        return;
    }
    let kind = sandbox["cgroups"]
        .as_str()
        .expect("a root invoker uses cgroups");
    // Both from pre-started interpreters: one of the default size, whose cgroups
    // were made at that size (nothing written when it is taken), and a larger one,
    // whose limits are written when it is taken.
    let source = "def handler(event, context):\n    return {'cgroup': open('/proc/self/cgroup').read(),\n            'prestarted': b'--prestarted' in open('/proc/self/cmdline', 'rb').read()}\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(python_zip(source));
    let mut pids_file = String::new();
    for (name, memory_mb) in [("grouped", 128u64), ("grouped-large", 1024)] {
        let (status, body) = call(
            &http,
            reqwest::Method::PUT,
            format!("{gw}/functions/v1/{name}"),
            &service,
            Some(json!({"runtime":"python3","handler":"app.handler","memory_mb":memory_mb,"code":{"zip_base64":b64}})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let sandbox = sandbox_status().await;
            if sandbox["prestart"]["ready"].as_u64() >= Some(1) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{sandbox}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (status, out) = call(
            &http,
            reqwest::Method::POST,
            format!("{gw}/functions/v1/{name}/invoke"),
            &service,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["prestarted"], true, "{out}");
        let membership = out["cgroup"].as_str().unwrap().to_owned();
        // The memory size + the 64 MiB runtime margin, plus the 32 MiB scratch tmpfs.
        let memory = (memory_mb + 64 + 32) * 1024 * 1024;
        // One CPU's share per 1,769 MB, as Lambda.
        let shares = memory_mb * 1024 / 1769;
        let (pids, memory_file, cpu_file, cpu_value) = if kind == "v2" {
            let path = membership
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap();
            let dir = format!("/sys/fs/cgroup{path}");
            (
                format!("{dir}/pids.max"),
                format!("{dir}/memory.max"),
                format!("{dir}/cpu.weight"),
                (shares * 100 / 1024).clamp(1, 10_000).to_string(),
            )
        } else {
            let of = |controller: &str| {
                let path = membership
                    .lines()
                    .find_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                        names
                            .split(',')
                            .any(|n| n == controller)
                            .then(|| path.to_owned())
                    })
                    .unwrap_or_else(|| panic!("no {controller} cgroup in {membership}"));
                format!("/sys/fs/cgroup/{controller}{path}")
            };
            (
                format!("{}/pids.max", of("pids")),
                format!("{}/memory.limit_in_bytes", of("memory")),
                format!("{}/cpu.shares", of("cpu")),
                shares.to_string(),
            )
        };
        assert!(pids.contains("/minicloud/"), "{membership}");
        let read = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_owned();
        assert_eq!(read(&pids), "64", "{name}");
        assert_eq!(read(&memory_file), memory.to_string(), "{name}");
        assert_eq!(read(&cpu_file), cpu_value, "{name}");
        if name == "grouped" {
            pids_file = pids;
        }
    }
    // The instance's cgroups go with it.
    let (status, _) = call(
        &http,
        reqwest::Method::DELETE,
        format!("{gw}/functions/v1/grouped"),
        &service,
        None,
    )
    .await;
    assert!(status < 300, "{status}");
    let dir = std::path::Path::new(&pids_file)
        .parent()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dir.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
    cloud.stop().await.unwrap();
}
