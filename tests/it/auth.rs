//! The auth service over REST, as an app uses it: signup, sign-in, refresh rotation
//! and reuse detection, sign-out, the current user, rate limits, admin, API keys,
//! key rotation, role tokens and policies enforced by another service.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minicloud_proto::auth::v1::auth_service_client::AuthServiceClient;
use minicloud_proto::auth::v1::{IssueRoleTokenRequest, VerifyApiKeyRequest};
use minicloud_sdk::Error;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

fn status(result: Result<impl std::fmt::Debug, Error>) -> u16 {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error.status().unwrap_or(0),
    }
}

#[tokio::test]
async fn signup_sign_in_refresh_and_user() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let session = client
        .signup("  Ada@Example.COM ", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(session.token_type, "bearer");
    assert_eq!(session.expires_in, 3600);
    assert_eq!(
        session.user["email"], "ada@example.com",
        "emails are normalised"
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(session.access_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["alg"], "ES256",
        "ES256 by default, as Supabase signs"
    );
    assert!(header["kid"].is_string());

    let me = client
        .with_token(&session.access_token)
        .user()
        .await
        .unwrap();
    assert_eq!(me["id"], session.user["id"]);
    assert!(me["last_sign_in_at"].is_string());

    let again = client
        .sign_in("ADA@example.com", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(again.user["id"], session.user["id"]);

    let refreshed = client.refresh(&again.refresh_token).await.unwrap();
    assert_ne!(
        refreshed.refresh_token, again.refresh_token,
        "rotated on every use"
    );
    client
        .with_token(&refreshed.access_token)
        .user()
        .await
        .unwrap();

    // Same email twice is a conflict.
    assert_eq!(
        status(client.signup("ada@example.com", "another password").await),
        409
    );

    // PUT /user changes metadata and password.
    let user = client.with_token(&refreshed.access_token);
    let updated: Value = user
        .put(
            "/auth/v1/user",
            &json!({"data": {"plan": "pro"}, "password": "a new password"}),
        )
        .await
        .unwrap();
    assert_eq!(updated["user_metadata"]["plan"], "pro");
    assert_eq!(
        status(
            client
                .sign_in("ada@example.com", "correct horse battery")
                .await
        ),
        400
    );
    client
        .sign_in("ada@example.com", "a new password")
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_family() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let first = client
        .signup("eve@example.com", "password1234")
        .await
        .unwrap();
    let second = client.refresh(&first.refresh_token).await.unwrap();
    // An attacker replays the spent token.
    let replay = client.refresh(&first.refresh_token).await;
    assert_eq!(status(replay), 401);
    // The legitimate holder's newer token died with the family.
    assert_eq!(status(client.refresh(&second.refresh_token).await), 401);
    // Another session of the same user is untouched.
    let other = client
        .sign_in("eve@example.com", "password1234")
        .await
        .unwrap();
    client.refresh(&other.refresh_token).await.unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    client
        .signup("bob@example.com", "password1234")
        .await
        .unwrap();
    let unknown = client
        .sign_in("nobody@example.com", "password1234")
        .await
        .unwrap_err();
    let wrong = client
        .sign_in("bob@example.com", "wrong password")
        .await
        .unwrap_err();
    match (&unknown, &wrong) {
        (
            Error::Api {
                status: s1,
                code: c1,
                message: m1,
                ..
            },
            Error::Api {
                status: s2,
                code: c2,
                message: m2,
                ..
            },
        ) => {
            assert_eq!((s1, c1, m1), (s2, c2, m2));
            assert_eq!(m1, "invalid login credentials");
        }
        other => panic!("{other:?}"),
    }
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn logout_local_and_global() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let a = client
        .signup("carl@example.com", "password1234")
        .await
        .unwrap();
    let b = client
        .sign_in("carl@example.com", "password1234")
        .await
        .unwrap();
    let response = client
        .with_token(&a.access_token)
        .request(reqwest::Method::POST, "/auth/v1/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        status(client.refresh(&a.refresh_token).await),
        401,
        "session a is gone"
    );
    let b2 = client.refresh(&b.refresh_token).await.unwrap();
    let c = client
        .sign_in("carl@example.com", "password1234")
        .await
        .unwrap();
    let response = client
        .with_token(&b2.access_token)
        .request(reqwest::Method::POST, "/auth/v1/logout?scope=global")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(status(client.refresh(&b2.refresh_token).await), 401);
    assert_eq!(
        status(client.refresh(&c.refresh_token).await),
        401,
        "global ends every session"
    );
    // Logging out needs a user token.
    let response = client
        .request(reqwest::Method::POST, "/auth/v1/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_signs_a_user_out_everywhere() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let a = client
        .signup("dora@example.com", "password1234")
        .await
        .unwrap();
    let b = client
        .sign_in("dora@example.com", "password1234")
        .await
        .unwrap();
    let other = client
        .signup("eve@example.com", "password1234")
        .await
        .unwrap();
    let path = format!("/auth/v1/admin/users/{}/logout", a.user_id());
    // Only the service key: not the user, not another user, not anonymous.
    for token in [
        Some(a.access_token.as_str()),
        Some(other.access_token.as_str()),
        None,
    ] {
        let caller = match token {
            Some(token) => client.with_token(token),
            None => client.clone(),
        };
        let response = caller
            .request(reqwest::Method::POST, &path)
            .send()
            .await
            .unwrap();
        assert!(
            [401, 403].contains(&response.status().as_u16()),
            "{token:?}: {}",
            response.status()
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert!(
        client.refresh(&b.refresh_token).await.is_ok(),
        "nothing was revoked yet"
    );
    let b = client
        .sign_in("dora@example.com", "password1234")
        .await
        .unwrap();
    let done: Value = cloud.admin().post(&path, &json!({})).await.unwrap();
    assert!(done["revoked_sessions"].as_u64().unwrap() >= 2, "{done}");
    for session in [&a, &b] {
        assert_eq!(
            status(client.refresh(&session.refresh_token).await),
            401,
            "every session of the user ends"
        );
    }
    assert!(
        client.refresh(&other.refresh_token).await.is_ok(),
        "another user's session is untouched"
    );
    // Unknown, malformed and NUL-bearing ids: a clear 4xx.
    for id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "%00"] {
        let response = cloud
            .admin()
            .request(
                reqwest::Method::POST,
                &format!("/auth/v1/admin/users/{id}/logout"),
            )
            .send()
            .await
            .unwrap();
        // NUL may already be refused as a bad path (400) before auth sees it.
        assert!(
            [400, 404].contains(&response.status().as_u16()),
            "{id}: {}",
            response.status()
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    for (email, password, expected) in [
        ("not-an-email", "password1234", 400),
        ("a@b", "password1234", 400),
        ("x@example.com", "short", 400),
        ("y@example.com", &"p".repeat(1025), 400),
    ] {
        assert_eq!(
            status(client.signup(email, password).await),
            expected,
            "{email} {}",
            password.len()
        );
    }
    client
        .signup("z@example.com", &"p".repeat(1024))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", cloud.gateway_url());
    let cases: Vec<(&str, String, Vec<u8>, u16)> = vec![
        (
            "malformed",
            url("/auth/v1/signup"),
            b"{\"email\":".to_vec(),
            400,
        ),
        (
            "missing password",
            url("/auth/v1/signup"),
            br#"{"email":"q@example.com"}"#.to_vec(),
            400,
        ),
        ("huge", url("/auth/v1/signup"), vec![b'{'; 1024 * 1024], 413),
        (
            "bad grant",
            url("/auth/v1/token?grant_type=magic"),
            b"{}".to_vec(),
            400,
        ),
        ("no grant", url("/auth/v1/token"), b"{}".to_vec(), 400),
        (
            "refresh missing",
            url("/auth/v1/token?grant_type=refresh_token"),
            b"{}".to_vec(),
            400,
        ),
        (
            "refresh unknown",
            url("/auth/v1/token?grant_type=refresh_token"),
            br#"{"refresh_token":"nope"}"#.to_vec(),
            401,
        ),
        (
            "password missing",
            url("/auth/v1/token?grant_type=password"),
            br#"{"email":"z@example.com"}"#.to_vec(),
            400,
        ),
    ];
    for (name, url, body, expected) in cases {
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(code, expected, "{name}: {body}");
        assert!(body["error"]["message"].is_string(), "{name}: {body}");
    }
    // Tokens that are not ours: tampered, alg none.
    let session = client
        .sign_in("z@example.com", &"p".repeat(1024))
        .await
        .unwrap();
    let mut parts: Vec<String> = session.access_token.split('.').map(str::to_owned).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["role"] = json!("service");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = parts.join(".");
    assert_eq!(status(client.with_token(&tampered).user().await), 401);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(status(client.with_token(&none).user().await), 401);
    assert_eq!(
        status(
            client
                .with_token(&tampered)
                .get::<Value>("/auth/v1/admin/users")
                .await
        ),
        401
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_email_with_retry_after() {
    let cloud = TestCloud::builder()
        .auth(|a| a.rate_limit_per_email = 3)
        .start()
        .await
        .unwrap();
    let client = cloud.client();
    client
        .signup("rl@example.com", "password1234")
        .await
        .unwrap();
    let mut limited = None;
    for _ in 0..6 {
        let response = client
            .request(reqwest::Method::POST, "/auth/v1/token?grant_type=password")
            .json(&json!({"email": "rl@example.com", "password": "wrong password"}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 400);
    }
    let response = limited.expect("a 429 within six attempts at 3 per minute");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    // Another email is not affected.
    client
        .signup("other@example.com", "password1234")
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn admin_api_needs_the_service_key_and_manages_users() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let user = cloud
        .client()
        .signup("u@example.com", "password1234")
        .await
        .unwrap();
    let as_user = cloud.client().with_token(&user.access_token);
    assert_eq!(
        status(as_user.get::<Value>("/auth/v1/admin/users").await),
        403
    );
    assert_eq!(
        status(cloud.client().get::<Value>("/auth/v1/admin/users").await),
        403
    );
    let anon = cloud.client().with_token(cloud.keys.anon_key.clone());
    assert_eq!(status(anon.get::<Value>("/auth/v1/admin/users").await), 403);

    let created: Value = admin
        .post(
            "/auth/v1/admin/users",
            &json!({"email":"made@example.com","password":"password1234"}),
        )
        .await
        .unwrap();
    for i in 0..3 {
        let _: Value = admin
            .post(
                "/auth/v1/admin/users",
                &json!({"email": format!("p{i}@example.com"),"password":"password1234"}),
            )
            .await
            .unwrap();
    }
    let page: Value = admin.get("/auth/v1/admin/users?limit=2").await.unwrap();
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = admin
        .get(&format!("/auth/v1/admin/users?limit=10&cursor={cursor}"))
        .await
        .unwrap();
    assert_eq!(rest["users"].as_array().unwrap().len(), 3);
    assert!(rest["next_cursor"].is_null());

    let id = created["id"].as_str().unwrap();
    let fetched: Value = admin
        .get(&format!("/auth/v1/admin/users/{id}"))
        .await
        .unwrap();
    assert_eq!(fetched["email"], "made@example.com");
    assert!(
        fetched.get("password_hash").is_none(),
        "hashes never leave the service"
    );
    admin
        .delete(&format!("/auth/v1/admin/users/{id}"))
        .await
        .unwrap();
    assert_eq!(
        status(
            admin
                .get::<Value>(&format!("/auth/v1/admin/users/{id}"))
                .await
        ),
        404
    );
    assert_eq!(
        status(admin.get::<Value>("/auth/v1/admin/users/not-a-uuid").await),
        404
    );
    assert_eq!(
        status(admin.get::<Value>("/auth/v1/admin/users?limit=0").await),
        400
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn api_keys_are_shown_once_work_and_stop_working_when_revoked() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let created: Value = admin
        .post(
            "/auth/v1/admin/api-keys",
            &json!({"name":"ci","role":"service"}),
        )
        .await
        .unwrap();
    let secret = created["api_key"].as_str().unwrap().to_owned();
    let listed: Value = admin.get("/auth/v1/admin/api-keys").await.unwrap();
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is never listed"
    );
    // The new key acts as its role in another service.
    let with_key = cloud.client().with_token(&secret);
    let _: Value = with_key
        .post("/storage/v1/bucket", &json!({"name":"made-by-key"}))
        .await
        .unwrap();

    let id = created["id"].as_str().unwrap();
    admin
        .delete(&format!("/auth/v1/admin/api-keys/{id}"))
        .await
        .unwrap();
    let mut grpc = AuthServiceClient::new(cloud.service_channel(&cloud.urls.auth));
    let answer = grpc
        .verify_api_key(VerifyApiKeyRequest {
            key: secret.clone(),
        })
        .await;
    assert_eq!(
        answer.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "revoked at the source at once"
    );
    assert_eq!(
        status(admin.delete(&format!("/auth/v1/admin/api-keys/{id}")).await),
        404
    );
    let bad: Result<Value, _> = admin
        .post(
            "/auth/v1/admin/api-keys",
            &json!({"name":"x","role":"no-such-role"}),
        )
        .await;
    assert_eq!(status(bad), 400);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client();
    let before = client
        .signup("rot@example.com", "password1234")
        .await
        .unwrap();
    let kid = |token: &str| -> String {
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    // Storage caches the JWKS before the rotation...
    let _: Value = client
        .with_token(&before.access_token)
        .get("/storage/v1/bucket")
        .await
        .unwrap();
    let rotated: Value = cloud
        .admin()
        .post("/auth/v1/admin/keys/rotate", &json!({}))
        .await
        .unwrap();
    let jwks: Value = client.get("/auth/v1/.well-known/jwks.json").await.unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&kid(&before.access_token).as_str())
            && kids.contains(&rotated["kid"].as_str().unwrap())
    );
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            (
                key["kty"].as_str(),
                key["crv"].as_str(),
                key["alg"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        assert!(key["x"].is_string() && key["y"].is_string());
        assert!(key.get("d").is_none(), "no private part in the JWKS");
    }
    // ...and after it, the old token still works in auth and in storage, and storage
    // refetches the JWKS when it meets the new kid.
    client
        .with_token(&before.access_token)
        .user()
        .await
        .unwrap();
    let after = client
        .sign_in("rot@example.com", "password1234")
        .await
        .unwrap();
    assert_eq!(kid(&after.access_token), rotated["kid"].as_str().unwrap());
    let _: Value = client
        .with_token(&before.access_token)
        .get("/storage/v1/bucket")
        .await
        .unwrap();
    let _: Value = client
        .with_token(&after.access_token)
        .get("/storage/v1/bucket")
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn role_tokens_carry_exactly_their_roles_policies() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    for name in ["photos", "secrets"] {
        let _: Value = admin
            .post("/storage/v1/bucket", &json!({"name": name}))
            .await
            .unwrap();
    }
    let role: Value = admin
        .post(
            "/auth/v1/admin/roles",
            &json!({"name":"thumbnailer","policies":[{"effect":"allow","actions":["storage:ListObjects","storage:GetObject"],"resources":["storage:photos","storage:photos/*"]}]}),
        )
        .await
        .unwrap();
    assert_eq!(role["policies"][0]["effect"], "allow");
    let bad: Result<Value, _> = admin.post("/auth/v1/admin/roles", &json!({"name":"bad","policies":{"effect":"allow","actions":["s3:*"],"resources":["*"]}})).await;
    assert_eq!(status(bad), 400);
    let dup: Result<Value, _> = admin
        .post("/auth/v1/admin/roles", &json!({"name":"thumbnailer"}))
        .await;
    assert_eq!(status(dup), 409);
    assert_eq!(
        status(admin.delete("/auth/v1/admin/roles/authenticated").await),
        400
    );

    let mut grpc = AuthServiceClient::new(cloud.service_channel(&cloud.urls.auth));
    let token = grpc
        .issue_role_token(IssueRoleTokenRequest {
            role: "thumbnailer".into(),
            subject: "fn:thumbnail".into(),
            ttl_seconds: 300,
        })
        .await
        .unwrap()
        .into_inner();
    let service_token = grpc
        .issue_role_token(IssueRoleTokenRequest {
            role: "service".into(),
            subject: "fn:x".into(),
            ttl_seconds: 60,
        })
        .await;
    assert_eq!(
        service_token.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let unknown = grpc
        .issue_role_token(IssueRoleTokenRequest {
            role: "nobody".into(),
            subject: "fn:x".into(),
            ttl_seconds: 60,
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    let as_role = cloud.client().with_token(&token.access_token);
    let visible: Value = as_role.get("/storage/v1/bucket").await.unwrap();
    let names: Vec<&str> = visible
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["photos"],
        "the role sees only what its policy allows"
    );
    assert_eq!(
        status(as_role.get::<Value>("/storage/v1/bucket/secrets").await),
        404
    );
    let create: Result<Value, _> = as_role
        .post("/storage/v1/bucket", &json!({"name":"mine"}))
        .await;
    assert_eq!(status(create), 403);
    // A user sees nothing without a policy: default deny.
    let user = cloud
        .client()
        .signup("plain@example.com", "password1234")
        .await
        .unwrap();
    let user_view: Value = cloud
        .client()
        .with_token(&user.access_token)
        .get("/storage/v1/bucket")
        .await
        .unwrap();
    assert_eq!(user_view, json!([]));
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn a_role_policy_change_reaches_other_services_within_the_cache_ttl() {
    let cloud = TestCloud::builder()
        .policy_cache_ttl(std::time::Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let admin = cloud.admin();
    let _: Value = admin
        .post("/storage/v1/bucket", &json!({"name": "shared"}))
        .await
        .unwrap();
    let user = cloud
        .client()
        .signup("p@example.com", "password1234")
        .await
        .unwrap();
    let user = cloud.client().with_token(&user.access_token);
    let visible = |v: Value| v.as_array().unwrap().len();
    assert_eq!(visible(user.get("/storage/v1/bucket").await.unwrap()), 0);
    // Grant the authenticated role listing on the bucket: storage sees it once its
    // cached copy of the role's policies expires.
    let _: Value = admin
        .put(
            "/auth/v1/admin/roles/authenticated",
            &json!({"policies": {"effect":"allow","actions":["storage:ListObjects"],"resources":["storage:shared"]}}),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut seen = 0;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        seen = visible(user.get("/storage/v1/bucket").await.unwrap());
        if seen == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1, "the grant arrived");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "within the TTL: {:?}",
        started.elapsed()
    );
    // And a revocation likewise.
    let _: Value = admin
        .put(
            "/auth/v1/admin/roles/authenticated",
            &json!({"policies": []}),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(visible(user.get("/storage/v1/bucket").await.unwrap()), 0);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn signup_is_rate_limited_per_ip() {
    let cloud = TestCloud::builder()
        .auth(|a| a.rate_limit_per_ip = 3)
        .start()
        .await
        .unwrap();
    let client = cloud.client();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = client
            .request(reqwest::Method::POST, "/auth/v1/signup")
            .json(&json!({"email": format!("ip{i}@example.com"), "password": "password1234"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    cloud.stop().await.unwrap();
}

/// Rate limits key on the address the gateway saw, never on headers the client
/// wrote, and an account's limit is per address too: an attacker rotating
/// `X-Forwarded-For` is limited all the same, and cannot lock the owner out from
/// another address (issue 16).
#[tokio::test]
async fn rate_limits_key_on_the_real_address_and_spare_the_owner() {
    let cloud = TestCloud::builder()
        .auth(|a| a.rate_limit_per_email = 3)
        .start()
        .await
        .unwrap();
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(address))
            .build()
            .unwrap()
    };
    let (attacker, owner) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let gateway = cloud.gateway_url().to_owned();
    let sign_in = |client: &reqwest::Client, password: &str, spoof: Option<String>| {
        let mut request = client
            .post(format!("{gateway}/auth/v1/token?grant_type=password"))
            .header("apikey", &cloud.keys.anon_key)
            .json(&json!({"email": "victim@example.com", "password": password}));
        if let Some(spoof) = spoof {
            request = request
                .header("x-forwarded-for", &spoof)
                .header("x-minicloud-client-ip", &spoof);
        }
        request.send()
    };
    cloud
        .client()
        .signup("victim@example.com", "the right password")
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let response = sign_in(&attacker, "a guess", Some(format!("10.0.0.{i}")))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[400, 400, 400], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // The owner, from elsewhere, signs in.
    let response = sign_in(&owner, "the right password", None).await.unwrap();
    assert_eq!(response.status(), 200);
    cloud.stop().await.unwrap();
}

/// A burst of sign-ins hashes one password per core at a time, so memory stays
/// bounded: each argon2id hash holds 19 MiB, and 64 at once used to take over a
/// gigabyte (issue 16). The cloud runs in this test's process, so its peak memory
/// is the cloud's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sign_ins_hashes_within_bounded_memory() {
    let cloud = TestCloud::builder()
        .auth(|a| {
            a.rate_limit_per_ip = 10_000;
            a.rate_limit_per_email = 10_000;
        })
        .start()
        .await
        .unwrap();
    cloud
        .client()
        .signup("burst@example.com", "password1234")
        .await
        .unwrap();
    let peak_mib = || minicloud_testkit::peak_memory_kib() / 1024;
    let before = peak_mib();
    let sign_ins: Vec<_> = (0..64)
        .map(|_| {
            let client = cloud.client();
            tokio::spawn(async move { client.sign_in("burst@example.com", "password1234").await })
        })
        .collect();
    // Each waits its turn, or past the queue's deadline (10 s) is told to retry.
    let mut signed_in = 0;
    for sign_in in sign_ins {
        match sign_in.await.unwrap() {
            Ok(_) => signed_in += 1,
            Err(error) => assert_eq!(error.status(), Some(503), "{error}"),
        }
    }
    assert!(signed_in >= 2, "{signed_in}");
    let grown = peak_mib() - before;
    assert!(
        grown < 200,
        "peak memory grew by {grown} MiB over 64 concurrent sign-ins"
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn eddsa_stays_an_option_and_its_tokens_verify_everywhere() {
    let cloud = TestCloud::builder()
        .auth(|auth| auth.signing_algorithm = minicloud_auth::SigningAlgorithm::EdDsa)
        .start()
        .await
        .unwrap();
    let client = cloud.client();
    let session = client
        .signup("ed@example.com", "password1234")
        .await
        .unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(session.access_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let jwks: Value = client.get("/auth/v1/.well-known/jwks.json").await.unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert!(jwks["keys"][0].get("y").is_none());
    // Another service verifies it against the JWKS it fetched over gRPC.
    let _: Value = client
        .with_token(&session.access_token)
        .get("/storage/v1/bucket")
        .await
        .unwrap();
    cloud.stop().await.unwrap();
}

/// The newest code mailed to `to`, read through the admin API.
async fn mailed_code(cloud: &TestCloud, to: &str) -> (String, String) {
    let mails: Value = cloud
        .admin()
        .get(&format!("/auth/v1/admin/mail?to={to}&limit=1"))
        .await
        .unwrap();
    let body = mails["mails"][0]["body"].as_str().unwrap().to_owned();
    let code = body
        .split("code: ")
        .nth(1)
        .unwrap()
        .chars()
        .take(6)
        .collect();
    let hash = body
        .split("\"token_hash\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (code, hash)
}

#[tokio::test]
async fn one_time_codes_resist_guessing_replay_and_hostile_input() {
    // The production per-address limit, so the mail flood below meets it.
    let cloud = TestCloud::builder()
        .auth(|auth| auth.rate_limit_per_email = 10)
        .start()
        .await
        .unwrap();
    let client = cloud.client();
    let victim = client
        .signup("otp@example.com", "password1234")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", cloud.gateway_url());
    let post = |path: &str, body: Value| {
        http.post(url(path))
            .header("apikey", &cloud.keys.anon_key)
            .json(&body)
            .send()
    };

    // Unknown and known addresses get the same answer.
    for email in ["otp@example.com", "nobody@example.com"] {
        let response = post("/auth/v1/recover", json!({"email": email}))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    }
    let (code, _) = mailed_code(&cloud, "otp@example.com").await;
    let no_mail: Value = cloud
        .admin()
        .get("/auth/v1/admin/mail?to=nobody@example.com")
        .await
        .unwrap();
    assert_eq!(no_mail["mails"], json!([]), "no mail to an unknown address");

    // Five wrong codes spend the token: the right one no longer works.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let response = post(
            "/auth/v1/verify",
            json!({"type": "recovery", "email": "otp@example.com", "token": wrong}),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error_code"], "otp_expired");
    }
    let response = post(
        "/auth/v1/verify",
        json!({"type": "recovery", "email": "otp@example.com", "token": code}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 403, "a guessed-at token is spent");

    // A fresh token works once, by its link hash; a newer one replaces an older one.
    post("/auth/v1/recover", json!({"email": "otp@example.com"}))
        .await
        .unwrap();
    let (old_code, _) = mailed_code(&cloud, "otp@example.com").await;
    post("/auth/v1/recover", json!({"email": "otp@example.com"}))
        .await
        .unwrap();
    let (_, hash) = mailed_code(&cloud, "otp@example.com").await;
    let response = post(
        "/auth/v1/verify",
        json!({"type": "recovery", "email": "otp@example.com", "token": old_code}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 403, "the older token was replaced");
    let response = post(
        "/auth/v1/verify",
        json!({"type": "recovery", "token_hash": hash}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["user"]["id"], victim.user["id"]);
    // A recovery link is no sign-in link, and is spent.
    for kind in ["magiclink", "recovery"] {
        let response = post("/auth/v1/verify", json!({"type": kind, "token_hash": hash}))
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{kind}");
    }

    // Hostile and malformed input: clear 4xx with JSON bodies.
    let cases: Vec<(&str, &str, Value, u16)> = vec![
        (
            "unsupported type",
            "/auth/v1/verify",
            json!({"type": "sms", "token_hash": "x"}),
            400,
        ),
        (
            "both forms",
            "/auth/v1/verify",
            json!({"type": "email", "token_hash": "x", "email": "otp@example.com", "token": "123456"}),
            400,
        ),
        (
            "neither form",
            "/auth/v1/verify",
            json!({"type": "email"}),
            400,
        ),
        (
            "short code",
            "/auth/v1/verify",
            json!({"type": "email", "email": "otp@example.com", "token": "12"}),
            403,
        ),
        (
            "NUL in code",
            "/auth/v1/verify",
            json!({"type": "email", "email": "otp@example.com", "token": "12\u{0}456"}),
            400,
        ),
        (
            "NUL in email",
            "/auth/v1/recover",
            json!({"email": "a\u{0}@example.com"}),
            400,
        ),
        (
            "huge hash",
            "/auth/v1/verify",
            json!({"type": "recovery", "token_hash": "h".repeat(10_000)}),
            403,
        ),
        ("no email", "/auth/v1/recover", json!({}), 400),
        (
            "bad email",
            "/auth/v1/otp",
            json!({"email": "not-an-email"}),
            400,
        ),
        (
            "metadata not an object",
            "/auth/v1/otp",
            json!({"email": "new@example.com", "data": [1]}),
            400,
        ),
    ];
    for (what, path, body, expected) in cases {
        let response = post(path, body).await.unwrap();
        assert_eq!(response.status(), expected, "{what}");
        let body: Value = response.json().await.unwrap();
        assert!(body["msg"].is_string(), "{what}: {body}");
    }
    let huge = http
        .post(url("/auth/v1/verify"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    // Only the service key reads the outbox.
    let user = client.with_token(&victim.access_token);
    assert_eq!(status(user.get::<Value>("/auth/v1/admin/mail").await), 403);
    assert_eq!(
        status(client.get::<Value>("/auth/v1/admin/mail").await),
        403
    );
    assert_eq!(
        status(
            cloud
                .admin()
                .get::<Value>("/auth/v1/admin/mail?limit=0")
                .await
        ),
        400
    );

    // Mails per address are rate limited like sign-ins.
    let mut limited = false;
    for _ in 0..15 {
        let response = post("/auth/v1/recover", json!({"email": "otp@example.com"}))
            .await
            .unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            limited = true;
            break;
        }
    }
    assert!(limited, "recovery mails are rate limited");
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn anonymous_users_are_users_until_they_add_an_email() {
    let cloud = TestCloud::start().await.unwrap();
    let http = reqwest::Client::new();
    let signup = format!("{}/auth/v1/signup", cloud.gateway_url());
    let response = http.post(&signup).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["user"]["is_anonymous"], true);
    assert_eq!(session["user"]["email"], "");
    assert_eq!(session["user"]["email_confirmed_at"], Value::Null);
    let token = session["access_token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["is_anonymous"], true);
    assert_eq!(claims["aud"], "authenticated");
    // An anonymous user is signed in: it owns what it creates like any user.
    let me: Value = cloud.client().with_token(token).user().await.unwrap();
    assert_eq!(me["id"], session["user"]["id"]);
    // Half a credential is neither kind of sign-up.
    for body in [
        json!({"email": "half@example.com"}),
        json!({"password": "password1234"}),
    ] {
        let response = http.post(&signup).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    cloud.stop().await.unwrap();
}

/// The policy simulator (issue 20): the real evaluator over a role's saved policies,
/// for the service key only, hostile input refused.
#[tokio::test]
async fn the_policy_simulator_answers_with_the_evaluator_and_refuses_hostile_input() {
    let cloud = minicloud_testkit::TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let _: serde_json::Value = admin
        .post(
            "/auth/v1/admin/roles",
            &serde_json::json!({"name": "owners", "policies": [
                {"effect":"allow","actions":["db:GetDocument"],"resources":["db:notes/*"],
                 "condition":{"owner":"${auth.uid}"}},
                {"effect":"deny","actions":["db:GetDocument"],"resources":["db:notes/secret"]}
            ]}),
        )
        .await
        .unwrap();
    let ask = |body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            admin
                .post::<_, serde_json::Value>("/auth/v1/admin/roles/owners/simulate", &body)
                .await
        }
    };
    let mine = ask(serde_json::json!({"action":"db:GetDocument","resource":"db:notes/n1","uid":"u1","owner":"u1"}))
        .await
        .unwrap();
    assert_eq!(mine["allowed"], true, "{mine}");
    let theirs = ask(serde_json::json!({"action":"db:GetDocument","resource":"db:notes/n1","uid":"u1","owner":"u2"}))
        .await
        .unwrap();
    assert_eq!(theirs["decision"], "implicit_deny");
    let denied = ask(serde_json::json!({"action":"db:GetDocument","resource":"db:notes/secret","uid":"u1","owner":"u1"}))
        .await
        .unwrap();
    assert_eq!(denied["decision"], "explicit_deny");
    for bad in [
        serde_json::json!({"action":"db:Fly","resource":"db:x"}),
        serde_json::json!({"action":"db:GetDocument","resource":""}),
        serde_json::json!({"action":"db:GetDocument","resource":"db:\u{0}"}),
        serde_json::json!({"action":"db:GetDocument","resource":"db:x","extra":1}),
        serde_json::json!({"action":"db:GetDocument","resource":"x".repeat(2000)}),
    ] {
        let error = ask(bad.clone()).await.unwrap_err();
        assert_eq!(error.status(), Some(400), "{bad}");
    }
    let missing = admin
        .post::<_, serde_json::Value>(
            "/auth/v1/admin/roles/nobody-here/simulate",
            &serde_json::json!({"action":"db:GetDocument","resource":"db:x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.status(), Some(404));
    let session = cloud
        .client()
        .signup("sim@example.com", "correct horse battery")
        .await
        .unwrap();
    let user = cloud.client().with_token(session.access_token);
    let body = serde_json::json!({"action":"db:GetDocument","resource":"db:x"});
    let forbidden = user
        .post::<_, serde_json::Value>("/auth/v1/admin/roles/owners/simulate", &body)
        .await
        .unwrap_err();
    assert_eq!(forbidden.status(), Some(403));
    let anonymous = cloud
        .client()
        .post::<_, serde_json::Value>("/auth/v1/admin/roles/owners/simulate", &body)
        .await
        .unwrap_err();
    // As every admin call: the anonymous key is a role, refused like any non-service one.
    assert_eq!(anonymous.status(), Some(403));
    cloud.stop().await.unwrap();
}
