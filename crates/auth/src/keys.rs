//! Ed25519 signing keys: created on first start, rotated on demand, published in the
//! JWKS until every token they signed has expired.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use minicloud_authz::Claims;
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
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    kid: String,
    private_pkcs8: Vec<u8>,
    public_x: String,
    retired_at: Option<DateTime<Utc>>,
}

/// `{"keys": [...]}`, as served at `/.well-known/jwks.json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JwkSet {
    pub keys: Vec<Jwk>,
}

struct ActiveKey {
    kid: String,
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
    state: RwLock<Arc<KeyState>>,
}

fn new_key() -> Result<(String, Vec<u8>, String)> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let der = key
        .to_pkcs8_der()
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let kid = format!("key_{}", uuid::Uuid::now_v7().simple());
    Ok((kid, der.as_bytes().to_vec(), x))
}

impl Keys {
    /// Loads the keys, creating the first one when there is none.
    pub(crate) async fn load_or_create(pool: PgPool, access_ttl: Duration) -> Result<Keys> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE retired_at IS NULL")
                .fetch_one(&pool)
                .await?;
        if count == 0 {
            let (kid, der, x) = new_key()?;
            // Two replicas starting at once may both insert: harmless, the newest
            // unretired key signs and both are published.
            sqlx::query(
                "INSERT INTO signing_keys (kid, private_pkcs8, public_x) VALUES ($1, $2, $3)",
            )
            .bind(&kid)
            .bind(&der)
            .bind(&x)
            .execute(&pool)
            .await?;
            tracing::info!(kid, "created the first signing key");
        }
        let publish_grace =
            access_ttl + Duration::seconds(minicloud_authz::verifier::LEEWAY_SECONDS as i64);
        let state = Self::read_state(&pool, publish_grace).await?;
        Ok(Keys {
            pool,
            publish_grace,
            state: RwLock::new(Arc::new(state)),
        })
    }

    async fn read_state(pool: &PgPool, grace: Duration) -> Result<KeyState> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, private_pkcs8, public_x, retired_at FROM signing_keys ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(pool)
        .await?;
        let now = Utc::now();
        let mut active = None;
        let mut published = Vec::new();
        for KeyRow {
            kid,
            private_pkcs8: der,
            public_x: x,
            retired_at,
        } in rows
        {
            if retired_at.is_none() && active.is_none() {
                active = Some(ActiveKey {
                    kid: kid.clone(),
                    encoding: EncodingKey::from_ed_der(&der),
                });
            }
            if retired_at.is_none_or(|at| at + grace > now) {
                published.push(Jwk {
                    kid,
                    kty: "OKP",
                    crv: "Ed25519",
                    alg: "EdDSA",
                    use_: "sig",
                    x,
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
        let (kid, der, x) = new_key()?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO signing_keys (kid, private_pkcs8, public_x) VALUES ($1, $2, $3)")
            .bind(&kid)
            .bind(&der)
            .bind(&x)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.reload().await?;
        tracing::info!(kid, "rotated the signing key");
        Ok(kid)
    }

    pub(crate) async fn jwks(&self) -> Vec<Jwk> {
        self.state.read().await.published.clone()
    }

    pub(crate) async fn sign(&self, claims: &Claims) -> Result<String> {
        let state = Arc::clone(&*self.state.read().await);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(state.active.kid.clone());
        jsonwebtoken::encode(&header, claims, &state.active.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))
    }
}
