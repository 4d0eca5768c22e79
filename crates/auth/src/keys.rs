//! Signing keys — ES256 (P-256) by default, which the Supabase clients can verify,
//! or Ed25519: created on first start, rotated on demand or when the configured
//! algorithm changes, published in the JWKS until every token they signed has
//! expired.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use minicloud_authz::Claims;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::RwLock;

use crate::error::{AuthError, Result};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Jwk {
    pub kid: String,
    #[schema(value_type = String)]
    pub kty: &'static str,
    #[schema(value_type = String)]
    pub crv: &'static str,
    #[schema(value_type = String)]
    pub alg: &'static str,
    #[serde(rename = "use")]
    #[schema(value_type = String)]
    pub use_: &'static str,
    pub x: String,
    /// P-256 keys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// The algorithm new tokens are signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SigningAlgorithm {
    /// ECDSA over P-256 (what Supabase issues; verifiable by its clients' `getClaims`).
    #[value(name = "ES256")]
    Es256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
}

impl SigningAlgorithm {
    fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::EdDsa => "EdDSA",
        }
    }

    fn jws(self) -> Algorithm {
        match self {
            SigningAlgorithm::Es256 => Algorithm::ES256,
            SigningAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }

    fn parse(name: &str) -> Result<SigningAlgorithm> {
        match name {
            "ES256" => Ok(SigningAlgorithm::Es256),
            "EdDSA" => Ok(SigningAlgorithm::EdDsa),
            other => Err(AuthError::Internal(format!(
                "a signing key with unknown algorithm {other:?}"
            ))),
        }
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    kid: String,
    alg: String,
    private_pkcs8: Vec<u8>,
    public_x: String,
    public_y: Option<String>,
    retired_at: Option<DateTime<Utc>>,
}

/// A freshly made key, as stored.
struct NewKey {
    kid: String,
    der: Vec<u8>,
    x: String,
    y: Option<String>,
}

/// `{"keys": [...]}`, as served at `/.well-known/jwks.json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JwkSet {
    pub keys: Vec<Jwk>,
}

struct ActiveKey {
    kid: String,
    algorithm: SigningAlgorithm,
    encoding: EncodingKey,
}

struct KeyState {
    active: ActiveKey,
    published: Vec<Jwk>,
}

/// The signing keys, cached from the database.
pub(crate) struct Keys {
    pool: PgPool,
    /// How long published keys outlive their retirement: the access-token lifetime
    /// plus verification leeway.
    publish_grace: Duration,
    /// What new keys are made with.
    algorithm: SigningAlgorithm,
    state: RwLock<Arc<KeyState>>,
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}

fn new_key(algorithm: SigningAlgorithm) -> Result<NewKey> {
    let internal = |e: &dyn std::fmt::Display| AuthError::Internal(e.to_string());
    let kid = format!("key_{}", uuid::Uuid::now_v7().simple());
    match algorithm {
        SigningAlgorithm::EdDsa => {
            let key = SigningKey::from_bytes(&random_seed());
            let der = key.to_pkcs8_der().map_err(|e| internal(&e))?;
            Ok(NewKey {
                kid,
                der: der.as_bytes().to_vec(),
                x: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
                y: None,
            })
        }
        SigningAlgorithm::Es256 => {
            // A uniformly random scalar; the rare seed outside [1, n) is redrawn
            // (p256's own generator wants a rand_core older than ours).
            let secret = loop {
                if let Ok(secret) = p256::SecretKey::from_slice(&random_seed()) {
                    break secret;
                }
            };
            let der =
                p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret).map_err(|e| internal(&e))?;
            let point = secret.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(AuthError::Internal(
                    "P-256 point without coordinates".into(),
                ));
            };
            Ok(NewKey {
                kid,
                der: der.as_bytes().to_vec(),
                x: URL_SAFE_NO_PAD.encode(x),
                y: Some(URL_SAFE_NO_PAD.encode(y)),
            })
        }
    }
}

async fn insert_key<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    algorithm: SigningAlgorithm,
    key: &NewKey,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, private_pkcs8, public_x, public_y) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&key.kid)
    .bind(algorithm.name())
    .bind(&key.der)
    .bind(&key.x)
    .bind(&key.y)
    .execute(executor)
    .await?;
    Ok(())
}

impl Keys {
    /// Loads the keys, creating the first one when there is none, and rotating to a
    /// new one when the active key is of another algorithm than `algorithm`.
    pub(crate) async fn load_or_create(
        pool: PgPool,
        access_ttl: Duration,
        algorithm: SigningAlgorithm,
    ) -> Result<Keys> {
        let active: Option<String> = sqlx::query_scalar(
            "SELECT alg FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid DESC LIMIT 1",
        )
        .fetch_optional(&pool)
        .await?;
        let publish_grace =
            access_ttl + Duration::seconds(minicloud_authz::verifier::LEEWAY_SECONDS as i64);
        match active {
            None => {
                let key = new_key(algorithm)?;
                // Two replicas starting at once may both insert: harmless, the
                // newest unretired key signs and both are published.
                insert_key(&pool, algorithm, &key).await?;
                tracing::info!(
                    kid = key.kid,
                    alg = algorithm.name(),
                    "created the first signing key"
                );
            }
            Some(alg) if alg != algorithm.name() => {
                let kid = Self::rotate_in(&pool, algorithm).await?;
                tracing::info!(
                    kid,
                    from = alg,
                    to = algorithm.name(),
                    "signing algorithm changed; rotated the signing key"
                );
            }
            Some(_) => {}
        }
        let state = Self::read_state(&pool, publish_grace).await?;
        Ok(Keys {
            pool,
            publish_grace,
            algorithm,
            state: RwLock::new(Arc::new(state)),
        })
    }

    async fn read_state(pool: &PgPool, grace: Duration) -> Result<KeyState> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, alg, private_pkcs8, public_x, public_y, retired_at FROM signing_keys ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(pool)
        .await?;
        let now = Utc::now();
        let mut active = None;
        let mut published = Vec::new();
        for KeyRow {
            kid,
            alg,
            private_pkcs8: der,
            public_x: x,
            public_y: y,
            retired_at,
        } in rows
        {
            let algorithm = SigningAlgorithm::parse(&alg)?;
            if retired_at.is_none() && active.is_none() {
                let encoding = match algorithm {
                    SigningAlgorithm::EdDsa => EncodingKey::from_ed_der(&der),
                    SigningAlgorithm::Es256 => EncodingKey::from_ec_der(&der),
                };
                active = Some(ActiveKey {
                    kid: kid.clone(),
                    algorithm,
                    encoding,
                });
            }
            if retired_at.is_none_or(|at| at + grace > now) {
                let (kty, crv) = match algorithm {
                    SigningAlgorithm::EdDsa => ("OKP", "Ed25519"),
                    SigningAlgorithm::Es256 => ("EC", "P-256"),
                };
                published.push(Jwk {
                    kid,
                    kty,
                    crv,
                    alg: algorithm.name(),
                    use_: "sig",
                    x,
                    y,
                });
            }
        }
        let active = active.ok_or_else(|| AuthError::Internal("no active signing key".into()))?;
        Ok(KeyState { active, published })
    }

    /// Re-reads keys from the database (another replica may have rotated).
    pub(crate) async fn reload(&self) -> Result<()> {
        let state = Self::read_state(&self.pool, self.publish_grace).await?;
        *self.state.write().await = Arc::new(state);
        Ok(())
    }

    /// Makes a new key the signing key; the old ones stay published for the grace period.
    pub(crate) async fn rotate(&self) -> Result<String> {
        let kid = Self::rotate_in(&self.pool, self.algorithm).await?;
        self.reload().await?;
        tracing::info!(kid, "rotated the signing key");
        Ok(kid)
    }

    async fn rotate_in(pool: &PgPool, algorithm: SigningAlgorithm) -> Result<String> {
        let key = new_key(algorithm)?;
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
            .execute(&mut *tx)
            .await?;
        insert_key(&mut *tx, algorithm, &key).await?;
        tx.commit().await?;
        Ok(key.kid)
    }

    pub(crate) async fn jwks(&self) -> Vec<Jwk> {
        self.state.read().await.published.clone()
    }

    pub(crate) async fn sign(&self, claims: &Claims) -> Result<String> {
        let state = Arc::clone(&*self.state.read().await);
        let mut header = Header::new(state.active.algorithm.jws());
        header.kid = Some(state.active.kid.clone());
        jsonwebtoken::encode(&header, claims, &state.active.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use sqlx::ConnectOptions as _;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;

    fn header_alg(token: &str) -> String {
        jsonwebtoken::decode_header(token)
            .map(|h| format!("{:?}", h.alg))
            .unwrap()
    }

    fn claims() -> Claims {
        let now = Utc::now().timestamp();
        Claims {
            sub: "u".into(),
            role: "authenticated".into(),
            exp: now + 60,
            iat: now,
            nbf: None,
            iss: "t".into(),
            aud: "t".into(),
            session_id: None,
            email: None,
            aal: None,
            is_anonymous: None,
        }
    }

    #[tokio::test]
    async fn changing_the_algorithm_rotates_and_keeps_the_old_key_published() {
        let server =
            PgConnectOptions::from_str(&minicloud_testkit::test_database_server_url()).unwrap();
        let name = format!("mc_keys_{}", uuid::Uuid::now_v7().simple());
        let mut admin = server.connect().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(server.clone().database(&name))
            .await
            .unwrap();
        crate::migrate(&pool).await.unwrap();
        let ttl = Duration::seconds(3600);

        let es = Keys::load_or_create(pool.clone(), ttl, SigningAlgorithm::Es256)
            .await
            .unwrap();
        assert_eq!(header_alg(&es.sign(&claims()).await.unwrap()), "ES256");
        let jwks = es.jwks().await;
        assert_eq!(jwks.len(), 1);
        assert_eq!((jwks[0].kty, jwks[0].crv), ("EC", "P-256"));
        assert!(jwks[0].y.is_some());

        // Same algorithm again: the key is kept.
        let same = Keys::load_or_create(pool.clone(), ttl, SigningAlgorithm::Es256)
            .await
            .unwrap();
        assert_eq!(same.jwks().await.len(), 1);

        let ed = Keys::load_or_create(pool.clone(), ttl, SigningAlgorithm::EdDsa)
            .await
            .unwrap();
        assert_eq!(header_alg(&ed.sign(&claims()).await.unwrap()), "EdDSA");
        let algorithms: Vec<&str> = ed.jwks().await.iter().map(|k| k.alg).collect();
        assert_eq!(
            algorithms,
            ["EdDSA", "ES256"],
            "the old key stays published"
        );

        pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}
