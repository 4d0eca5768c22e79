//! Access tokens and rotating refresh tokens. A sign-in starts a family; each refresh
//! spends one token and mints the next in the same family; presenting a spent token
//! again means it was stolen or replayed, so the whole family is revoked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use minicloud_authz::Claims;
use minicloud_authz::caller::{AUDIENCE, ISSUER, USER_AUDIENCE};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{AuthError, Result};
use crate::{AuthState, UserOut};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenOut {
    pub access_token: String,
    #[schema(value_type = String, example = "bearer")]
    pub token_type: &'static str,
    pub expires_in: i64,
    pub expires_at: i64,
    pub refresh_token: String,
    pub user: UserOut,
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    id: i64,
    user_id: Uuid,
    family_id: Uuid,
    used_at: Option<DateTime<Utc>>,
    revoked: bool,
    expires_at: DateTime<Utc>,
}

pub(crate) fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a user's access token says about the user and the session.
#[derive(Debug)]
pub struct UserSession<'a> {
    pub session: Uuid,
    /// Empty for anonymous users, as GoTrue has it.
    pub email: &'a str,
    pub is_anonymous: bool,
}

impl AuthState {
    /// A signed access token for `subject` in `role`; `user` for users' sessions.
    pub async fn access_token(
        &self,
        subject: &str,
        role: &str,
        ttl_s: i64,
        user: Option<UserSession<'_>>,
    ) -> Result<(String, i64)> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            role: role.to_owned(),
            exp: now + ttl_s,
            iat: now,
            nbf: Some(now),
            iss: ISSUER.to_owned(),
            // Users' tokens carry Supabase's audience and claims; role tokens ours.
            aud: if user.is_some() {
                USER_AUDIENCE
            } else {
                AUDIENCE
            }
            .to_owned(),
            session_id: user.as_ref().map(|u| u.session.to_string()),
            email: user.as_ref().map(|u| u.email.to_owned()),
            aal: user.as_ref().map(|_| "aal1".to_owned()),
            is_anonymous: user.as_ref().map(|u| u.is_anonymous),
        };
        Ok((self.keys.sign(&claims).await?, now + ttl_s))
    }

    /// Starts a new session (refresh-token family) for `user`.
    pub async fn start_session(&self, user: UserOut) -> Result<TokenOut> {
        let family = Uuid::now_v7();
        let refresh = random_token();
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(sha256(&refresh))
        .bind(user.id)
        .bind(family)
        .bind(Utc::now() + self.refresh_ttl())
        .execute(&self.pool)
        .await?;
        self.token_out(user, family, refresh).await
    }

    /// Counts `user` once this calendar month (UTC) as a monthly active user. The
    /// meter is written before the month is committed: a crash in between counts
    /// the user again at the next sign-in rather than not at all.
    async fn mark_active(&self, user: Uuid) -> Result<()> {
        if !self.meters.is_on() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE users SET last_active_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
             WHERE id = $1
               AND last_active_month IS DISTINCT FROM date_trunc('month', now() AT TIME ZONE 'UTC')::date",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            let owner = minicloud_metering::owner("authenticated", Some(&user.to_string()));
            self.meters.record(
                "",
                &owner,
                &[(minicloud_metering::Meter::AuthMonthlyActiveUsers, 1)],
            );
        }
        tx.commit().await?;
        Ok(())
    }

    /// A signed-in user's tokens; every sign-in and refresh comes here, so this is
    /// where the user counts as active.
    async fn token_out(&self, user: UserOut, family: Uuid, refresh: String) -> Result<TokenOut> {
        self.mark_active(user.id).await?;
        let ttl = self.config.access_token_ttl_s as i64;
        let (access_token, expires_at) = self
            .access_token(
                &user.id.to_string(),
                "authenticated",
                ttl,
                Some(UserSession {
                    session: family,
                    email: &user.email,
                    is_anonymous: user.is_anonymous,
                }),
            )
            .await?;
        Ok(TokenOut {
            access_token,
            token_type: "bearer",
            expires_in: ttl,
            expires_at,
            refresh_token: refresh,
            user,
        })
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.config.refresh_token_ttl_s as i64)
    }

    /// Spends `refresh_token` and returns a new pair in the same family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenOut> {
        let mut tx = self.pool.begin().await?;
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT id, user_id, family_id, used_at, revoked, expires_at FROM refresh_tokens
             WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(sha256(refresh_token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(RefreshRow {
            id,
            user_id,
            family_id: family,
            used_at,
            revoked,
            expires_at,
        }) = row
        else {
            return Err(AuthError::InvalidRefreshToken("invalid refresh token"));
        };
        if revoked {
            return Err(AuthError::InvalidRefreshToken("refresh token revoked"));
        }
        if used_at.is_some() {
            // Reuse of a spent token: revoke the whole family, committed even though
            // the request fails.
            let revoked =
                sqlx::query("UPDATE refresh_tokens SET revoked = true WHERE family_id = $1")
                    .bind(family)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            tracing::warn!(%user_id, %family, revoked, "refresh token reused; session revoked");
            return Err(AuthError::InvalidRefreshToken(
                "refresh token already used; session revoked",
            ));
        }
        if expires_at <= Utc::now() {
            return Err(AuthError::InvalidRefreshToken("refresh token expired"));
        }
        let user = crate::users::load_user(&mut *tx, user_id).await?;
        if user.banned {
            return Err(AuthError::InvalidRefreshToken("user is banned"));
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let next = random_token();
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(sha256(&next))
        .bind(user_id)
        .bind(family)
        .bind(Utc::now() + self.refresh_ttl())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.token_out(user.into_out(), family, next).await
    }

    /// Revokes one session, or every session of the user.
    pub async fn revoke_sessions(&self, user_id: Uuid, family: Option<Uuid>) -> Result<u64> {
        let result = match family {
            Some(family) => {
                sqlx::query("UPDATE refresh_tokens SET revoked = true WHERE user_id = $1 AND family_id = $2 AND NOT revoked")
                    .bind(user_id)
                    .bind(family)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("UPDATE refresh_tokens SET revoked = true WHERE user_id = $1 AND NOT revoked")
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(result.rows_affected())
    }
}
