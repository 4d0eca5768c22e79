//! Issue 3's benchmarks, each beside its baseline measured in the same run:
//! - token verification on one core: `authz::Verifier` vs `jsonwebtoken::decode`
//!   with the same key and validation rules;
//! - sign-in: `POST /auth/v1/token?grant_type=password` through the gateway and
//!   straight to auth, vs one argon2id verification with the same parameters.
//!
//! `scripts/bench_report.py` turns the results into docs/benchmarks.md.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use minicloud_authz::caller::{ISSUER, USER_AUDIENCE};
use minicloud_authz::verifier::PublicKey;
use minicloud_authz::{Claims, Verifier};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use rand::RngCore as _;

/// A user's token signed as auth signs by default (ES256), and its public key.
fn token_and_keys() -> (String, String, String) {
    let secret = loop {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        if let Ok(secret) = p256::SecretKey::from_slice(&seed) {
            break secret;
        }
    };
    let encoding = EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes());
    let point = secret.public_key().to_encoded_point(false);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        sub: "0196f1a2-0000-7000-8000-000000000001".into(),
        role: "authenticated".into(),
        exp: now + 3600,
        iat: now,
        nbf: Some(now),
        iss: ISSUER.into(),
        aud: USER_AUDIENCE.into(),
        session_id: Some("0196f1a2-0000-7000-8000-000000000002".into()),
        email: Some("bench@example.com".into()),
        aal: Some("aal1".into()),
        is_anonymous: Some(false),
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
    (
        token,
        URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    )
}

fn verification(c: &mut Criterion) {
    let (token, x, y) = token_and_keys();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = Verifier::with_fixed_keys(HashMap::from([(
        "bench".to_owned(),
        PublicKey::P256 {
            x: x.clone(),
            y: y.clone(),
        },
    )]));
    runtime
        .block_on(verifier.verify_access_token(&token))
        .unwrap();

    // The signature check on every call, as on a token's first use.
    let uncached = Verifier::with_fixed_keys(HashMap::from([(
        "bench".to_owned(),
        PublicKey::P256 {
            x: x.clone(),
            y: y.clone(),
        },
    )]))
    .without_token_cache();
    runtime
        .block_on(uncached.verify_access_token(&token))
        .unwrap();

    let mut group = c.benchmark_group("verify");
    group.bench_function("minicloud_authz", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify_access_token(std::hint::black_box(&token)))
                .unwrap()
        })
    });
    group.bench_function("minicloud_authz_first_use", |b| {
        b.iter(|| {
            runtime
                .block_on(uncached.verify_access_token(std::hint::black_box(&token)))
                .unwrap()
        })
    });
    let key = DecodingKey::from_ec_components(&x, &y).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 30;
    validation.set_audience(&[USER_AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    group.bench_function("jsonwebtoken_direct", |b| {
        b.iter(|| {
            jsonwebtoken::decode_header(std::hint::black_box(&token)).unwrap();
            jsonwebtoken::decode::<Claims>(std::hint::black_box(&token), &key, &validation).unwrap()
        })
    });
    group.finish();
}

fn sign_in(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cloud = runtime
        .block_on(minicloud_testkit::TestCloud::start())
        .unwrap();
    let email = "bench@example.com";
    let password = "correct horse battery staple";
    runtime
        .block_on(cloud.client().signup(email, password))
        .unwrap();
    let through_gateway = cloud.client();
    let straight_to_auth = minicloud_sdk::Client::new(cloud.urls.auth.clone());

    let mut group = c.benchmark_group("sign_in");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("gateway_http", |b| {
        b.iter(|| {
            runtime
                .block_on(through_gateway.sign_in(email, password))
                .unwrap()
        })
    });
    group.bench_function("auth_http", |b| {
        b.iter(|| {
            runtime
                .block_on(straight_to_auth.sign_in(email, password))
                .unwrap()
        })
    });
    use argon2::password_hash::phc::PasswordHash;
    use argon2::{PasswordHasher as _, PasswordVerifier as _};
    let hasher = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(
            minicloud_testkit::minicloud_auth::MEMORY_KIB,
            minicloud_testkit::minicloud_auth::ITERATIONS,
            minicloud_testkit::minicloud_auth::PARALLELISM,
            None,
        )
        .unwrap(),
    );
    let hash = hasher
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string();
    group.bench_function("argon2id_direct", |b| {
        b.iter(|| {
            let parsed = PasswordHash::new(&hash).unwrap();
            hasher
                .verify_password(password.as_bytes(), &parsed)
                .unwrap()
        })
    });
    group.finish();
    runtime.block_on(cloud.stop()).unwrap();
}

criterion_group!(benches, verification, sign_in);
criterion_main!(benches);
