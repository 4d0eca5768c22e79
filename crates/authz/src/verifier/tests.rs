//! Tests of [`super`] (verifier.rs), kept beside it but out of its way.
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore as _;

struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public: PublicKey,
}

fn key(kid: &str) -> TestKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    TestKey {
        kid: kid.into(),
        algorithm: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        public: PublicKey::Ed25519 {
            x: URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
        },
    }
}

fn es256_key(kid: &str) -> TestKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use p256::pkcs8::EncodePrivateKey as _;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let secret = p256::SecretKey::from_slice(&seed).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    TestKey {
        kid: kid.into(),
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
        public: PublicKey::P256 {
            x: URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            y: URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        },
    }
}

fn now() -> i64 {
    chrono_now()
}

fn claims(exp_in: i64) -> Claims {
    Claims {
        sub: "u1".into(),
        role: "authenticated".into(),
        exp: now() + exp_in,
        iat: now(),
        nbf: Some(now()),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        session_id: None,
        email: None,
        aal: None,
        is_anonymous: None,
    }
}

fn sign(key: &TestKey, claims: &Claims) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn verifier(keys: &[&TestKey]) -> Verifier {
    Verifier::with_fixed_keys(
        keys.iter()
            .map(|k| (k.kid.clone(), k.public.clone()))
            .collect(),
    )
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn a_valid_token_yields_its_caller() {
    let k = key("k1");
    let caller = verifier(&[&k])
        .verify_bearer(&sign(&k, &claims(60)))
        .await
        .unwrap();
    assert_eq!(caller.role, Role::Authenticated);
    assert_eq!(caller.uid.as_deref(), Some("u1"));
}

#[tokio::test]
async fn an_es256_token_verifies_and_carries_supabase_claims() {
    let k = es256_key("ec1");
    let mut user = claims(60);
    user.aud = USER_AUDIENCE.into();
    user.session_id = Some("s1".into());
    user.aal = Some("aal1".into());
    user.is_anonymous = Some(false);
    let token = sign(&k, &user);
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["session_id"], "s1");
    assert_eq!(payload["aud"], "authenticated");
    let caller = verifier(&[&k]).verify_bearer(&token).await.unwrap();
    assert_eq!(caller.uid.as_deref(), Some("u1"));
    assert_eq!(caller.session_id.as_deref(), Some("s1"));
}

#[tokio::test]
async fn a_token_naming_another_algorithm_than_its_key_is_refused() {
    // An ES256 signature presented under an Ed25519 key's kid (and the reverse):
    // the key decides the algorithm, never the token's header.
    let ed = key("shared");
    let ec = es256_key("shared");
    let token = sign(&ec, &claims(60));
    assert_eq!(
        verifier(&[&ed]).verify_bearer(&token).await.unwrap_err(),
        VerifyError::Algorithm
    );
    let token = sign(&ed, &claims(60));
    assert_eq!(
        verifier(&[&ec]).verify_bearer(&token).await.unwrap_err(),
        VerifyError::Algorithm
    );
}

#[tokio::test]
async fn tokens_issued_with_the_old_sid_claim_still_carry_their_session() {
    let k = key("k1");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let mut payload = serde_json::to_value(claims(60)).unwrap();
    payload["sid"] = "old-session".into();
    let token = jsonwebtoken::encode(&header, &payload, &k.encoding).unwrap();
    let caller = verifier(&[&k]).verify_bearer(&token).await.unwrap();
    assert_eq!(caller.session_id.as_deref(), Some("old-session"));
}

#[tokio::test]
async fn tampered_payload_is_rejected() {
    let k = key("k1");
    let token = sign(&k, &claims(60));
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims(60);
    forged.role = "service".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_value(&forged).unwrap()),
        parts[2]
    );
    assert!(matches!(
        verifier(&[&k]).verify_access_token(&tampered).await,
        Err(VerifyError::Invalid(_))
    ));
}

#[tokio::test]
async fn expired_beyond_leeway_is_rejected_but_within_leeway_accepted() {
    let k = key("k1");
    let v = verifier(&[&k]);
    assert_eq!(
        v.verify_access_token(&sign(&k, &claims(-31 - 5))).await,
        Err(VerifyError::Expired)
    );
    assert!(
        v.verify_access_token(&sign(&k, &claims(-10))).await.is_ok(),
        "30 s leeway"
    );
}

#[tokio::test]
async fn not_yet_valid_is_rejected() {
    let k = key("k1");
    let mut future = claims(3600);
    future.nbf = Some(now() + 600);
    assert_eq!(
        verifier(&[&k])
            .verify_access_token(&sign(&k, &future))
            .await,
        Err(VerifyError::NotYetValid)
    );
    let mut issued_later = claims(3600);
    issued_later.nbf = None;
    issued_later.iat = now() + 600;
    assert_eq!(
        verifier(&[&k])
            .verify_access_token(&sign(&k, &issued_later))
            .await,
        Err(VerifyError::NotYetValid)
    );
}

/// A flood of tokens with unknown kids is not queued one refetch interval apart
/// (issue 16: 20 such tokens used to take 20 s, holding every request behind
/// them): one issued before the keys were fetched is refused at once, one that
/// claims to be newer waits at most for the next fetch.
#[tokio::test]
async fn unknown_kids_are_refused_without_a_queue() {
    let known = key("k1");
    let v = std::sync::Arc::new(verifier(&[&known]));
    // The keys are fetched now.
    assert!(
        v.verify_access_token(&sign(&known, &claims(60)))
            .await
            .is_ok()
    );
    let flood = |iat_age: i64| {
        let started = std::time::Instant::now();
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let v = std::sync::Arc::clone(&v);
                let mut forged_claims = claims(600);
                forged_claims.iat -= iat_age;
                forged_claims.nbf = Some(forged_claims.iat);
                let token = sign(&key(&format!("forged-{iat_age}-{i}")), &forged_claims);
                tokio::spawn(async move { v.verify_access_token(&token).await })
            })
            .collect();
        async move {
            for handle in handles {
                assert_eq!(handle.await.unwrap(), Err(VerifyError::UnknownKey));
            }
            started.elapsed()
        }
    };
    let old = flood(60).await;
    assert!(
        old < MIN_REFETCH_INTERVAL,
        "issued before the fetch: {old:?}"
    );
    let fresh = flood(0).await;
    assert!(
        fresh < 3 * MIN_REFETCH_INTERVAL,
        "claiming to be new: {fresh:?}"
    );
    // A known kid still verifies.
    assert!(
        v.verify_access_token(&sign(&known, &claims(60)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn unknown_kid_and_key_mismatch_are_rejected() {
    let known = key("k1");
    let stranger = key("k2");
    let v = verifier(&[&known]);
    assert_eq!(
        v.verify_access_token(&sign(&stranger, &claims(60))).await,
        Err(VerifyError::UnknownKey)
    );
    // Signed by another key but claiming a known kid.
    let impostor = TestKey {
        kid: "k1".into(),
        algorithm: Algorithm::EdDSA,
        encoding: stranger.encoding.clone(),
        public: stranger.public.clone(),
    };
    assert!(matches!(
        v.verify_access_token(&sign(&impostor, &claims(60))).await,
        Err(VerifyError::Invalid(_))
    ));
    // No kid at all.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = None;
    let no_kid = jsonwebtoken::encode(&header, &claims(60), &known.encoding).unwrap();
    assert_eq!(
        v.verify_access_token(&no_kid).await,
        Err(VerifyError::UnknownKey)
    );
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let k = key("k1");
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"});
    let token = format!(
        "{}.{}.",
        b64(&header),
        b64(&serde_json::to_value(claims(60)).unwrap())
    );
    let result = verifier(&[&k]).verify_access_token(&token).await;
    assert!(
        matches!(result, Err(VerifyError::Malformed | VerifyError::Algorithm)),
        "{result:?}"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let k = key("k1");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let PublicKey::Ed25519 { x: public_x } = &k.public else {
        unreachable!("key() makes Ed25519 keys")
    };
    let secret = EncodingKey::from_secret(public_x.as_bytes());
    let token = jsonwebtoken::encode(&header, &claims(60), &secret).unwrap();
    assert_eq!(
        verifier(&[&k]).verify_access_token(&token).await,
        Err(VerifyError::Algorithm)
    );
    let raw = EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(public_x).unwrap());
    let token = jsonwebtoken::encode(&header, &claims(60), &raw).unwrap();
    assert_eq!(
        verifier(&[&k]).verify_access_token(&token).await,
        Err(VerifyError::Algorithm)
    );
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_rejected() {
    let k = key("k1");
    let mut other_aud = claims(60);
    other_aud.aud = "someone-else".into();
    assert!(matches!(
        verifier(&[&k])
            .verify_access_token(&sign(&k, &other_aud))
            .await,
        Err(VerifyError::Invalid(_))
    ));
    let mut other_iss = claims(60);
    other_iss.iss = "evil".into();
    assert!(matches!(
        verifier(&[&k])
            .verify_access_token(&sign(&k, &other_iss))
            .await,
        Err(VerifyError::Invalid(_))
    ));
}

#[tokio::test]
async fn garbage_is_malformed() {
    let v = verifier(&[&key("k1")]);
    for junk in ["", "a.b", "a.b.c", "....", "not a token", "eyJ.eyJ.sig"] {
        assert_eq!(
            v.verify_access_token(junk).await,
            Err(VerifyError::Malformed),
            "{junk:?}"
        );
    }
}

#[tokio::test]
async fn a_remembered_token_still_expires_and_a_tampered_one_is_checked_anew() {
    let k = es256_key("ec1");
    let v = verifier(&[&k]);
    // Valid for 1 s beyond the leeway: remembered, then expired all the same.
    let short = claims(-(LEEWAY_SECONDS as i64) + 1);
    let token = sign(&k, &short);
    v.verify_access_token(&token).await.unwrap();
    v.verify_access_token(&token).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        v.verify_access_token(&token).await.unwrap_err(),
        VerifyError::Expired
    );
    // A token differing from a remembered one in any byte is a different token.
    let good = sign(&k, &claims(60));
    v.verify_access_token(&good).await.unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims(60);
    forged.role = "service".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_value(&forged).unwrap()),
        parts[2]
    );
    assert!(v.verify_access_token(&forged).await.is_err());
}
