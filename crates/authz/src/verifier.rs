//! Local token verification: access tokens against the JWKS fetched from auth over
//! gRPC and cached; opaque API keys resolved by auth and cached for a bounded time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use minicloud_proto::auth::v1::auth_service_client::AuthServiceClient;
use minicloud_proto::auth::v1::{GetAccessKeyRequest, GetJwksRequest, VerifyApiKeyRequest};
use minicloud_telemetry::grpc_client::TracedChannel;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::caller::{AUDIENCE, Caller, Claims, Credential, ISSUER, Role, USER_AUDIENCE};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: u64 = 30;
/// An unknown `kid` refetches the JWKS at most this often, so a flood of forged
/// tokens cannot turn into a flood of calls to auth.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Clock difference tolerated between auth and this verifier when judging whether a
/// token was issued before the keys were last fetched.
const ISSUED_BEFORE_FETCH_MARGIN_S: i64 = 5;
/// Keys are refetched at least this often even when every kid is known, so a removed
/// key stops verifying.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// A revoked API key stops working within this long.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_secs(60);
const API_KEY_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const API_KEY_CACHE_MAX: usize = 10_000;
/// How long a verified access token is remembered: no longer than the JWKS, so a
/// removed key stops verifying within the same bound.
const VERIFIED_TOKEN_TTL: Duration = JWKS_MAX_AGE;
const VERIFIED_TOKEN_CACHE_MAX: usize = 10_000;

/// Prefix of opaque API keys (`mck_<id>_<secret>`), to tell them from JWTs.
pub const API_KEY_PREFIX: &str = "mck_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unsupported algorithm")]
    Algorithm,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("auth service unavailable")]
    Unavailable,
}

/// A published verification key, as the JWKS carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// EdDSA: base64url of the raw 32-byte key (RFC 8037).
    Ed25519 { x: String },
    /// ES256: base64url of the point's coordinates (RFC 7518).
    P256 { x: String, y: String },
}

impl PublicKey {
    /// The key a JWK describes, if it is one of the two kinds tokens are signed with.
    pub fn from_jwk(alg: &str, crv: &str, x: String, y: String) -> Option<PublicKey> {
        match (alg, crv) {
            ("EdDSA", "Ed25519") => Some(PublicKey::Ed25519 { x }),
            ("ES256", "P-256") if !y.is_empty() => Some(PublicKey::P256 { x, y }),
            _ => None,
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519 { .. } => Algorithm::EdDSA,
            PublicKey::P256 { .. } => Algorithm::ES256,
        }
    }

    fn decoding_key(&self) -> jsonwebtoken::errors::Result<DecodingKey> {
        match self {
            PublicKey::Ed25519 { x } => DecodingKey::from_ed_components(x),
            PublicKey::P256 { x, y } => DecodingKey::from_ec_components(x, y),
        }
    }
}

/// A key ready to verify with, bound to its algorithm: a token whose header names
/// another one is refused, so no key is ever used with an algorithm it was not
/// made for.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Option<Instant>,
}

/// Where keys come from: auth's gRPC API in services, a fixed set in unit tests.
#[derive(Clone)]
enum KeySource {
    Auth(AuthServiceClient<TracedChannel>),
    #[cfg_attr(not(test), allow(dead_code))]
    Fixed(Arc<HashMap<String, PublicKey>>),
}

/// A token whose signature and claims were checked, and until when that stands.
/// Only tokens auth signed get here, so the cache holds no attacker's input.
struct VerifiedToken {
    claims: Claims,
    until: Instant,
}

/// An AWS-style access key as auth answered for it: its secret and who it stands for.
#[derive(Clone)]
pub struct AccessKey {
    pub secret_access_key: String,
    pub caller: Caller,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AccessKeyEntry {
    key: Option<AccessKey>,
    expires: Instant,
}

#[derive(Clone)]
struct ApiKeyEntry {
    caller: Option<Caller>,
    expires: Instant,
}

pub struct Verifier {
    source: KeySource,
    keys: RwLock<KeySet>,
    /// Serialises refetches and remembers when the last one started.
    refetch: Mutex<Option<Instant>>,
    api_keys: RwLock<HashMap<[u8; 32], ApiKeyEntry>>,
    access_keys: RwLock<HashMap<String, AccessKeyEntry>>,
    /// ES256 verification costs ~220 µs of a core (EdDSA ~30 µs); a token is
    /// presented on every request of its hour, so the check is done once per token.
    verified: Option<RwLock<HashMap<[u8; 32], VerifiedToken>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(client: AuthServiceClient<TracedChannel>) -> Self {
        Self::with_source(KeySource::Auth(client))
    }

    /// A verifier over fixed public keys (kid → key), for tests and tools.
    pub fn with_fixed_keys(keys: HashMap<String, PublicKey>) -> Self {
        Self::with_source(KeySource::Fixed(Arc::new(keys)))
    }

    fn with_source(source: KeySource) -> Self {
        Verifier {
            source,
            keys: RwLock::new(KeySet::default()),
            refetch: Mutex::new(None),
            api_keys: RwLock::new(HashMap::new()),
            access_keys: RwLock::new(HashMap::new()),
            verified: Some(RwLock::new(HashMap::new())),
        }
    }

    /// The caller a bearer credential stands for.
    pub async fn verify_bearer(&self, bearer: &str) -> Result<Caller, VerifyError> {
        if bearer.starts_with(API_KEY_PREFIX) {
            self.verify_api_key(bearer).await
        } else {
            let claims = self.verify_access_token(bearer).await?;
            Ok(Caller {
                role: Role::parse(&claims.role),
                uid: Some(claims.sub),
                session_id: claims.session_id,
                credential: Credential::AccessToken,
            })
        }
    }

    /// This verifier without its cache of verified tokens: every token's signature
    /// is checked each time (for measuring that check).
    pub fn without_token_cache(mut self) -> Self {
        self.verified = None;
        self
    }

    pub async fn verify_access_token(&self, token: &str) -> Result<Claims, VerifyError> {
        let Some(verified) = &self.verified else {
            return self.check_access_token(token).await;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(entry) = verified.read().await.get(&digest)
            && entry.until > Instant::now()
        {
            // The signature stands; time-bound claims are judged now.
            if entry.claims.exp + (LEEWAY_SECONDS as i64) < chrono_now() {
                return Err(VerifyError::Expired);
            }
            return Ok(entry.claims.clone());
        }
        let claims = self.check_access_token(token).await?;
        let now = Instant::now();
        insert_bounded(
            &mut *verified.write().await,
            VERIFIED_TOKEN_CACHE_MAX,
            |entry| entry.until <= now,
            digest,
            VerifiedToken {
                claims: claims.clone(),
                until: now + VERIFIED_TOKEN_TTL,
            },
        );
        Ok(claims)
    }

    /// The full check: key, algorithm, signature and claims.
    async fn check_access_token(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
            return Err(VerifyError::Algorithm);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let key = self.key(&kid, claimed_iat(token)).await?;
        if header.alg != key.algorithm {
            return Err(VerifyError::Algorithm);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[AUDIENCE, USER_AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                    ErrorKind::InvalidAlgorithm => VerifyError::Algorithm,
                    ErrorKind::InvalidSignature => VerifyError::Invalid("bad signature".into()),
                    ErrorKind::InvalidAudience => VerifyError::Invalid("wrong audience".into()),
                    ErrorKind::InvalidIssuer => VerifyError::Invalid("wrong issuer".into()),
                    _ => VerifyError::Malformed,
                }
            })?;
        // `iat` in the future beyond the leeway is as suspicious as `nbf`.
        let now = chrono_now();
        if data.claims.iat > now + LEEWAY_SECONDS as i64 {
            return Err(VerifyError::NotYetValid);
        }
        Ok(data.claims)
    }

    async fn key(
        &self,
        kid: &str,
        claimed_iat: Option<i64>,
    ) -> Result<Arc<VerifyingKey>, VerifyError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys
                .fetched_at
                .is_some_and(|at| at.elapsed() < JWKS_MAX_AGE);
            if fresh && let Some(key) = keys.keys.get(kid) {
                return Ok(Arc::clone(key));
            }
        }
        self.refetch_keys(kid, claimed_iat).await?;
        self.keys
            .read()
            .await
            .keys
            .get(kid)
            .cloned()
            .ok_or(VerifyError::UnknownKey)
    }

    /// Refetches the JWKS, at most once per [`MIN_REFETCH_INTERVAL`], so a flood of
    /// forged tokens is not a flood of calls to auth; and without a queue: a token
    /// waits at most for the next fetch after it arrived, never behind every token
    /// before it (a queue held 20 forged tokens' requests for 19 s). A token issued
    /// before the last fetch (by its unverified `iat`) is refused at once: its key
    /// would have been in it. One issued since may be signed by a just-rotated key,
    /// so it waits for the next fetch (at most a second).
    async fn refetch_keys(&self, kid: &str, claimed_iat: Option<i64>) -> Result<(), VerifyError> {
        let arrived = Instant::now();
        let mut last = loop {
            let last = self.refetch.lock().await;
            {
                // Another caller may have fetched while this one waited for the lock.
                let keys = self.keys.read().await;
                let fresh = keys
                    .fetched_at
                    .is_some_and(|at| at.elapsed() < JWKS_MAX_AGE);
                if fresh && keys.keys.contains_key(kid) {
                    return Ok(());
                }
            }
            match *last {
                // A fetch that began after this token arrived has finished (the
                // lock is free): no key is newer than what it found.
                Some(at) if at >= arrived => return Err(VerifyError::UnknownKey),
                Some(at) if at.elapsed() < MIN_REFETCH_INTERVAL => {
                    let fetched = chrono_now() - at.elapsed().as_secs() as i64;
                    if claimed_iat.is_some_and(|iat| iat + ISSUED_BEFORE_FETCH_MARGIN_S < fetched) {
                        return Err(VerifyError::UnknownKey);
                    }
                    let wait = MIN_REFETCH_INTERVAL.saturating_sub(at.elapsed());
                    drop(last);
                    tokio::time::sleep(wait).await;
                }
                _ => break last,
            }
        };
        *last = Some(Instant::now());
        let fetched: HashMap<String, PublicKey> = match &self.source {
            KeySource::Fixed(keys) => (**keys).clone(),
            KeySource::Auth(client) => {
                let response = client
                    .clone()
                    .get_jwks(GetJwksRequest {})
                    .await
                    .map_err(|status| {
                        tracing::warn!(%status, "fetching the JWKS from auth failed");
                        VerifyError::Unavailable
                    })?
                    .into_inner();
                response
                    .keys
                    .into_iter()
                    .filter_map(|jwk| {
                        PublicKey::from_jwk(&jwk.alg, &jwk.crv, jwk.x, jwk.y)
                            .map(|key| (jwk.kid, key))
                    })
                    .collect()
            }
        };
        let mut keys = HashMap::new();
        for (kid, public) in fetched {
            match public.decoding_key() {
                Ok(key) => {
                    let algorithm = public.algorithm();
                    keys.insert(kid, Arc::new(VerifyingKey { algorithm, key }));
                }
                Err(error) => tracing::warn!(kid, %error, "ignoring an undecodable JWKS key"),
            }
        }
        let mut set = self.keys.write().await;
        set.keys = keys;
        set.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// The AWS-style access key `access_key_id` (issue 19), cached like API keys: a
    /// revoked key stops working within [`API_KEY_CACHE_TTL`].
    pub async fn access_key(&self, access_key_id: &str) -> Result<AccessKey, VerifyError> {
        if access_key_id.is_empty() || access_key_id.len() > 128 {
            return Err(VerifyError::InvalidApiKey);
        }
        if let Some(entry) = self.access_keys.read().await.get(access_key_id)
            && entry.expires > Instant::now()
        {
            return entry.key.clone().ok_or(VerifyError::InvalidApiKey);
        }
        let KeySource::Auth(client) = &self.source else {
            return Err(VerifyError::InvalidApiKey);
        };
        let result = client
            .clone()
            .get_access_key(GetAccessKeyRequest {
                access_key_id: access_key_id.to_owned(),
            })
            .await;
        let (key, ttl) = match result {
            Ok(response) => {
                let response = response.into_inner();
                let caller = Caller {
                    role: Role::parse(&response.role),
                    uid: (!response.subject.is_empty()).then_some(response.subject),
                    session_id: None,
                    credential: Credential::ApiKey,
                };
                let key = AccessKey {
                    secret_access_key: response.secret_access_key,
                    caller,
                };
                (Some(key), API_KEY_CACHE_TTL)
            }
            Err(status) if status.code() == tonic::Code::NotFound => (None, API_KEY_NEGATIVE_TTL),
            Err(status) => {
                tracing::warn!(%status, "looking up an access key with auth failed");
                return Err(VerifyError::Unavailable);
            }
        };
        let now = Instant::now();
        insert_bounded(
            &mut *self.access_keys.write().await,
            API_KEY_CACHE_MAX,
            |entry| entry.expires <= now,
            access_key_id.to_owned(),
            AccessKeyEntry {
                key: key.clone(),
                expires: now + ttl,
            },
        );
        key.ok_or(VerifyError::InvalidApiKey)
    }

    async fn verify_api_key(&self, key: &str) -> Result<Caller, VerifyError> {
        if key.len() > 256 {
            return Err(VerifyError::InvalidApiKey);
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(entry) = self.api_keys.read().await.get(&digest)
            && entry.expires > Instant::now()
        {
            return entry.caller.clone().ok_or(VerifyError::InvalidApiKey);
        }
        let KeySource::Auth(client) = &self.source else {
            return Err(VerifyError::InvalidApiKey);
        };
        let result = client
            .clone()
            .verify_api_key(VerifyApiKeyRequest {
                key: key.to_owned(),
            })
            .await;
        let (caller, ttl) = match result {
            Ok(response) => {
                let response = response.into_inner();
                let role = Role::parse(&response.role);
                let caller = Caller {
                    uid: if response.subject.is_empty() {
                        None
                    } else {
                        Some(response.subject)
                    },
                    role,
                    session_id: None,
                    credential: Credential::ApiKey,
                };
                (Some(caller), API_KEY_CACHE_TTL)
            }
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                (None, API_KEY_NEGATIVE_TTL)
            }
            Err(status) => {
                tracing::warn!(%status, "verifying an API key with auth failed");
                return Err(VerifyError::Unavailable);
            }
        };
        let now = Instant::now();
        insert_bounded(
            &mut *self.api_keys.write().await,
            API_KEY_CACHE_MAX,
            |entry| entry.expires <= now,
            digest,
            ApiKeyEntry {
                caller: caller.clone(),
                expires: now + ttl,
            },
        );
        caller.ok_or(VerifyError::InvalidApiKey)
    }
}

/// Inserts into a cache bounded at `max` entries: past it, the expired ones go, and
/// if that is not enough, all of them (a flood of distinct keys cannot grow memory).
fn insert_bounded<K: std::hash::Hash + Eq, V>(
    cache: &mut HashMap<K, V>,
    max: usize,
    expired: impl Fn(&V) -> bool,
    key: K,
    value: V,
) {
    if cache.len() >= max {
        cache.retain(|_, entry| !expired(entry));
        if cache.len() >= max {
            cache.clear();
        }
    }
    cache.insert(key, value);
}

/// The `iat` a token claims, read before its signature is checked: used only to
/// decide whether to wait for a refetch, never to accept anything.
fn claimed_iat(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("iat")?
        .as_i64()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
