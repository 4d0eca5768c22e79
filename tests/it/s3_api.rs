//! The S3 API (issue 19) with the Rust `aws-sdk-s3`: one round trip over both storage
//! backends and both gateway dispatches, what it shares with the REST API (objects,
//! metadata rows, policies, limits), and its abuse cases as raw signed HTTP.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use md5::{Digest as _, Md5};
use minicloud_testkit::TestCloud;
use minicloud_testkit::minicloud_cli::cloud::GatewayDispatch;
use serde_json::{Value, json};

use crate::aws_clients::aws_key;
use crate::storage::{Kind, start_with};

fn sdk(url: &str, key_id: &str, secret: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(key_id, secret, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A key pair of a role that may do anything in storage.
async fn writer(cloud: &TestCloud) -> (String, String) {
    let _: Value = cloud
        .admin()
        .post(
            "/auth/v1/admin/roles",
            &json!({"name": "s3-all", "policies": [
                {"effect":"allow","actions":["storage:*"],"resources":["storage:*"]}
            ]}),
        )
        .await
        .unwrap();
    let (_, id, secret) = aws_key(cloud, "s3-all").await;
    (id, secret)
}

fn code<E: aws_sdk_s3::error::ProvideErrorMetadata, R>(
    error: &aws_sdk_s3::error::SdkError<E, R>,
) -> String {
    error
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or("(no service error)")
        .to_owned()
}

async fn round_trip(kind: Kind, dispatch: GatewayDispatch) {
    let mut builder = TestCloud::builder();
    builder.gateway_dispatch = dispatch;
    let env = start_with(kind, |_| {}, builder).await;
    let cloud = &env.cloud;
    let admin = cloud.admin();
    let (id, secret) = writer(cloud).await;
    let s3 = sdk(cloud.gateway_url(), &id, &secret);
    let bucket = "sdk-bucket";
    s3.create_bucket().bucket(bucket).send().await.unwrap();

    // Written through S3 (the SDK streams it aws-chunked, with a CRC trailer) ...
    let text = b"hello from the rust sdk".to_vec();
    let put = s3
        .put_object()
        .bucket(bucket)
        .key("dir/a.txt")
        .content_type("text/plain")
        .cache_control("max-age=60")
        .content_disposition("attachment; filename=\"a.txt\"")
        .metadata("colour", "blue")
        .body(ByteStream::from(text.clone()))
        .send()
        .await
        .unwrap();
    let md5 = hex::encode(Md5::digest(&text));
    assert_eq!(put.e_tag(), Some(format!("\"{md5}\"").as_str()));
    // ... is an object of the REST API, with its metadata row.
    assert_eq!(admin.download(bucket, "dir/a.txt").await.unwrap(), text);
    let info: Value = admin
        .get(&format!("/storage/v1/object/info/{bucket}/dir/a.txt"))
        .await
        .unwrap();
    assert_eq!(info["etag"], md5.as_str());
    assert_eq!(info["metadata"], json!({"colour": "blue"}));
    assert_eq!(info["content_type"], "text/plain");
    // And one written through REST is an S3 object.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    admin
        .upload(
            bucket,
            "dir/b.bin",
            bytes.clone(),
            "application/octet-stream",
            false,
        )
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("dir/b.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_length(), Some(3000));
    assert_eq!(got.body.collect().await.unwrap().into_bytes(), bytes);

    let head = s3
        .head_object()
        .bucket(bucket)
        .key("dir/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(
        head.content_disposition(),
        Some("attachment; filename=\"a.txt\"")
    );
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("colour"))
            .map(String::as_str),
        Some("blue")
    );
    let ranged = s3
        .get_object()
        .bucket(bucket)
        .key("dir/b.bin")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.content_range(), Some("bytes 10-19/3000"));
    assert_eq!(
        ranged.body.collect().await.unwrap().into_bytes(),
        bytes[10..20]
    );

    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = listed
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["dir/"]);
    assert!(listed.contents().is_empty());

    s3.copy_object()
        .bucket(bucket)
        .key("copy.txt")
        .copy_source(format!("{bucket}/dir/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.download(bucket, "copy.txt").await.unwrap(), text);

    // Multipart: two parts (5 MiB and a tail), the S3 ETag, no part left behind.
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key("big.bin")
        .content_type("application/x-big")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let first = vec![7u8; 5 * 1024 * 1024];
    let second = b"the tail".to_vec();
    let mut parts = Vec::new();
    for (number, body) in [(1, first.clone()), (2, second.clone())] {
        let part = s3
            .upload_part()
            .bucket(bucket)
            .key("big.bin")
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    let done = s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key("big.bin")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut digests = Md5::digest(&first).to_vec();
    digests.extend(Md5::digest(&second));
    let expected = format!("\"{}-2\"", hex::encode(Md5::digest(&digests)));
    assert_eq!(done.e_tag(), Some(expected.as_str()));
    let whole = admin.download(bucket, "big.bin").await.unwrap();
    assert_eq!(whole.len(), first.len() + second.len());
    assert!(whole.ends_with(b"the tail"));
    let pending = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(pending.uploads().is_empty());
    // Every blob the backend holds is an object's: the parts went with the upload.
    let objects = 4; // dir/a.txt, dir/b.bin, copy.txt, big.bin
    assert_eq!(env.blobs(bucket).await.len(), objects);

    // A presigned GET works from plain HTTP.
    let presigned = s3
        .get_object()
        .bucket(bucket)
        .key("dir/a.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let fetched = reqwest::get(presigned.uri()).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), text);

    let deleted = s3
        .delete_objects()
        .bucket(bucket)
        .delete(
            Delete::builder()
                .set_objects(Some(
                    ["dir/a.txt", "copy.txt", "never-was"]
                        .iter()
                        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
                        .collect(),
                ))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.deleted().len(), 3);
    assert!(deleted.errors().is_empty());
    let refused = s3.delete_bucket().bucket(bucket).send().await.unwrap_err();
    assert_eq!(code(&refused), "BucketNotEmpty");
    for key in ["dir/b.bin", "big.bin"] {
        s3.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    s3.delete_bucket().bucket(bucket).send().await.unwrap();
    let gone = s3.head_bucket().bucket(bucket).send().await.unwrap_err();
    assert_eq!(gone.raw_response().map(|r| r.status().as_u16()), Some(404));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_round_trips_over_the_fs_backend() {
    round_trip(Kind::Fs, GatewayDispatch::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_round_trips_over_the_s3_backend() {
    round_trip(Kind::S3, GatewayDispatch::InProcess).await;
}

/// The gateway's hop to storage over HTTP (as under `serve`, compose, Kubernetes)
/// keeps what the signature covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_round_trips_through_a_gateway_on_its_own() {
    round_trip(Kind::Fs, GatewayDispatch::Http).await;
}

/// Signs a raw request for S3 with `aws-sigv4`, as an SDK would.
fn signed(
    method: &str,
    url: &str,
    body: &[u8],
    key_id: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = aws_credential_types::Credentials::new(key_id, secret, None, None, "t").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let headers = [("host", host.as_str())];
    let signable =
        SignableRequest::new(method, url, headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let mut request = request.body(body.to_vec()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    let client = reqwest::Client::new();
    let mut builder = client.request(request.method().clone(), request.uri().to_string());
    for (name, value) in request.headers() {
        if name != http::header::HOST {
            builder = builder.header(name, value);
        }
    }
    builder.body(request.into_body())
}

/// What an S3 error answer says: (status, `<Code>`).
async fn s3_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let code = text
        .split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or("")
        .to_owned();
    (status, code)
}

/// Who may call, and hostile input: anonymous callers, keys of other roles, NUL bytes
/// and `..` in keys, objects over a bucket's limit, malformed and oversized XML, bad
/// part numbers, unknown uploads, forged continuation tokens — each a typed S3 error,
/// and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_api_refuses_hostile_input() {
    let cloud = TestCloud::start().await.unwrap();
    let admin = cloud.admin();
    let (id, secret) = writer(&cloud).await;
    let _: Value = admin
        .post("/auth/v1/admin/roles", &json!({"name": "s3-none"}))
        .await
        .unwrap();
    let (_, other_id, other_secret) = aws_key(&cloud, "s3-none").await;
    let url = cloud.gateway_url().to_owned();
    for bucket in [
        json!({"name": "private-b"}),
        json!({"name": "public-b", "public": true}),
        json!({"name": "small-b", "file_size_limit": 1024}),
    ] {
        let _: Value = admin.post("/storage/v1/bucket", &bucket).await.unwrap();
    }
    for bucket in ["private-b", "public-b"] {
        admin
            .upload(bucket, "doc.txt", b"secret".to_vec(), "text/plain", false)
            .await
            .unwrap();
    }
    let s3 = sdk(&url, &id, &secret);
    let other = sdk(&url, &other_id, &other_secret);

    // Another role's key: denied on private objects and on writes everywhere.
    let denied = other
        .get_object()
        .bucket("private-b")
        .key("doc.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&denied), "AccessDenied");
    let denied = other
        .put_object()
        .bucket("public-b")
        .key("mine.txt")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&denied), "AccessDenied");
    let denied = other
        .create_bucket()
        .bucket("other-b")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&denied), "AccessDenied");
    // Private bucket names are not given away.
    let hidden = other
        .list_objects_v2()
        .bucket("private-b")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&hidden), "AccessDenied");

    // Anonymous, through a virtual host: public buckets read, private ones refused.
    let host = url
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost");
    let anonymous = |bucket: &str| {
        reqwest::Client::new()
            .get(format!("{url}/doc.txt"))
            .header("host", format!("{bucket}.{host}"))
    };
    let public = anonymous("public-b").send().await.unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(public.bytes().await.unwrap(), "secret");
    let private = anonymous("private-b").send().await.unwrap();
    assert_eq!(s3_error(private).await, (403, "AccessDenied".into()));
    // Unsigned requests at the root are no S3 calls: the gateway's JSON 404.
    let plain = reqwest::get(format!("{url}/private-b/doc.txt"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);
    assert!(plain.text().await.unwrap().contains("\"error\""));

    // Hostile keys.
    for key in ["nul\0byte", "a/../escape", "trailing/", "ctl\u{7}char"] {
        let refused = s3
            .put_object()
            .bucket("private-b")
            .key(key)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_err();
        let status = refused.raw_response().map(|r| r.status().as_u16());
        assert_eq!(status, Some(400), "{key:?}: {refused:?}");
    }
    // Over the bucket's limit, declared or not.
    let big = s3
        .put_object()
        .bucket("small-b")
        .key("big.bin")
        .body(ByteStream::from(vec![0u8; 4096]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&big), "EntityTooLarge");
    let upload = s3
        .create_multipart_upload()
        .bucket("small-b")
        .key("parts.bin")
        .send()
        .await
        .unwrap();
    let part = s3
        .upload_part()
        .bucket("small-b")
        .key("parts.bin")
        .upload_id(upload.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from(vec![0u8; 4096]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&part), "EntityTooLarge");
    for number in [0, 10_001] {
        let refused = s3
            .upload_part()
            .bucket("small-b")
            .key("parts.bin")
            .upload_id(upload.upload_id().unwrap())
            .part_number(number)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            refused.raw_response().map(|r| r.status().as_u16()),
            Some(400),
            "part {number}"
        );
    }
    let unknown = s3
        .upload_part()
        .bucket("small-b")
        .key("parts.bin")
        .upload_id("0190aaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .part_number(1)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&unknown), "NoSuchUpload");
    // An upload of another key, named with this key's path, is not found.
    let wrong_key = s3
        .list_parts()
        .bucket("small-b")
        .key("other.bin")
        .upload_id(upload.upload_id().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&wrong_key), "NoSuchUpload");
    let forged = s3
        .list_objects_v2()
        .bucket("private-b")
        .continuation_token("not-a-cursor")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&forged), "InvalidArgument");

    // Malformed and oversized XML bodies, signed.
    let garbage = signed(
        "POST",
        &format!("{url}/private-b?delete"),
        b"<Delete><Object><Key>doc.txt",
        &id,
        &secret,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(s3_error(garbage).await, (400, "MalformedXML".into()));
    let huge = format!(
        "<Delete>{}</Delete>",
        "<Object><Key>k</Key></Object>".repeat(300_000)
    );
    let huge = signed(
        "POST",
        &format!("{url}/private-b?delete"),
        huge.as_bytes(),
        &id,
        &secret,
    )
    .send()
    .await
    .unwrap();
    let (status, _) = s3_error(huge).await;
    assert_eq!(
        status / 100,
        4,
        "an oversized XML body is the client's error"
    );
    // A bogus signature header is refused as such.
    let bogus = reqwest::Client::new()
        .get(format!("{url}/private-b/doc.txt"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=nonsense, SignedHeaders=host, Signature=00",
        )
        .send()
        .await
        .unwrap();
    let (status, _) = s3_error(bogus).await;
    assert!(status == 400 || status == 403, "{status}");

    // Nothing of the above was stored.
    let private = s3
        .list_objects_v2()
        .bucket("private-b")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = private.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["doc.txt"]);
    let small = s3.list_objects_v2().bucket("small-b").send().await.unwrap();
    assert!(small.contents().is_empty());
    cloud.stop().await.unwrap();
}
