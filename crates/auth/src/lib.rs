//! The auth service (`/auth/v1`): users with email and password, ES256 (or EdDSA) access tokens
//! and rotating refresh tokens (GoTrue's shapes), roles with identity policies, API
//! keys, signing-key rotation, and the gRPC API other services use.

mod account;
mod admin;
mod error;
mod grpc;
mod keys;
mod mail;
mod one_time;
mod passwords;
mod rate_limit;
mod sessions;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use minicloud_authz::Authz;
use minicloud_proto::auth::v1::auth_service_server::AuthServiceServer;
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, readiness,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use admin::{ApiKeyCreated, issue_api_key, issue_aws_key};
pub use error::AuthError;
pub use keys::SigningAlgorithm;
pub use passwords::{ITERATIONS, MEMORY_KIB, PARALLELISM};
pub use users::UserOut;

/// The REST API of this service, served at `/auth/v1/openapi.json`.
use minicloud_proto::openapi::ErrorResponses;

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud auth",
        description = "Users, sessions, roles, API keys and signing keys (GoTrue shapes). Authenticate with `Authorization: Bearer <token>`."
    ),
    paths(
        account::signup,
        account::token,
        account::logout,
        account::get_user,
        account::update_user,
        account::jwks,
        one_time::recover,
        one_time::otp,
        one_time::verify,
        mail::list,
        admin::list_users,
        admin::create_user,
        admin::get_user,
        admin::update_user,
        admin::delete_user,
        admin::sign_out_user,
        admin::list_roles,
        admin::create_role,
        admin::simulate,
        admin::get_role,
        admin::update_role,
        admin::delete_role,
        admin::list_api_keys,
        admin::create_api_key,
        admin::revoke_api_key,
        admin::rotate_signing_key,
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "auth";
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// Lifetime of access tokens, seconds.
    #[arg(
        long = "auth-access-token-ttl",
        env = "MINICLOUD_AUTH_ACCESS_TOKEN_TTL",
        default_value_t = AuthConfig::default().access_token_ttl_s
    )]
    pub access_token_ttl_s: u64,
    /// Lifetime of refresh tokens, seconds.
    #[arg(long = "auth-refresh-token-ttl", env = "MINICLOUD_AUTH_REFRESH_TOKEN_TTL", default_value_t = AuthConfig::default().refresh_token_ttl_s)]
    pub refresh_token_ttl_s: u64,
    /// Longest role token the invoker may ask for, seconds.
    #[arg(
        long = "auth-max-role-token-ttl",
        env = "MINICLOUD_AUTH_MAX_ROLE_TOKEN_TTL",
        default_value_t = AuthConfig::default().max_role_token_ttl_s
    )]
    pub max_role_token_ttl_s: u64,
    /// Signups, sign-ins and refreshes per minute from one IP address (each).
    #[arg(
        long = "auth-rate-limit-per-ip",
        env = "MINICLOUD_AUTH_RATE_LIMIT_PER_IP",
        default_value_t = AuthConfig::default().rate_limit_per_ip
    )]
    pub rate_limit_per_ip: u32,
    /// Signups and sign-ins per minute for one email address from one client
    /// address (each).
    #[arg(
        long = "auth-rate-limit-per-email",
        env = "MINICLOUD_AUTH_RATE_LIMIT_PER_EMAIL",
        default_value_t = AuthConfig::default().rate_limit_per_email
    )]
    pub rate_limit_per_email: u32,
    /// The algorithm access tokens are signed with. Changing it rotates the
    /// signing key at the next start; tokens signed before stay valid until they
    /// expire.
    #[arg(
        long = "auth-signing-algorithm",
        env = "MINICLOUD_AUTH_SIGNING_ALGORITHM",
        value_enum,
        default_value = "ES256"
    )]
    pub signing_algorithm: SigningAlgorithm,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl_s: 3600,
            refresh_token_ttl_s: 30 * 24 * 3600,
            max_role_token_ttl_s: 3600,
            rate_limit_per_ip: 60,
            rate_limit_per_email: 10,
            signing_algorithm: SigningAlgorithm::Es256,
        }
    }
}

/// The built-in keys created on first start.
#[derive(Clone)]
pub struct BuiltinKeys {
    pub anon_key: String,
    pub service_key: String,
}

/// Never the keys themselves: a debug print must not leak the service key into a log.
impl std::fmt::Debug for BuiltinKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinKeys").finish_non_exhaustive()
    }
}

pub struct AuthState {
    pub(crate) pool: PgPool,
    pub(crate) config: AuthConfig,
    pub(crate) keys: keys::Keys,
    pub(crate) limits: rate_limit::RateLimits,
    pub(crate) authz: Arc<Authz>,
    pub(crate) meters: minicloud_metering::Meters,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState").finish_non_exhaustive()
    }
}

/// Shared state of the handlers; `Arc<Authz>` is extracted from it for [`minicloud_authz::Caller`].
#[derive(Debug, Clone)]
pub struct Auth(Arc<AuthState>);

impl FromRef<Auth> for Arc<Authz> {
    fn from_ref(auth: &Auth) -> Self {
        Arc::clone(&auth.0.authz)
    }
}

impl std::ops::Deref for Auth {
    type Target = AuthState;
    fn deref(&self) -> &AuthState {
        &self.0
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

impl Auth {
    /// Migrates the schema, loads or creates the signing key and the built-in keys.
    /// `authz` verifies callers of this service like in every other one (it fetches
    /// this service's own JWKS over gRPC).
    pub async fn new(
        config: AuthConfig,
        pool: PgPool,
        authz: Arc<Authz>,
        meters: minicloud_metering::Meters,
    ) -> Result<Auth, AuthError> {
        migrate(&pool)
            .await
            .map_err(|e| AuthError::Internal(format!("migrating: {e}")))?;
        let access_ttl = chrono::Duration::seconds(config.access_token_ttl_s as i64);
        let keys =
            keys::Keys::load_or_create(pool.clone(), access_ttl, config.signing_algorithm).await?;
        let limits =
            rate_limit::RateLimits::new(config.rate_limit_per_ip, config.rate_limit_per_email);
        let auth = Auth(Arc::new(AuthState {
            pool,
            config,
            keys,
            limits,
            authz,
            meters,
        }));
        admin::ensure_builtin_keys(&auth).await?;
        Ok(auth)
    }

    pub async fn builtin_keys(&self) -> Result<BuiltinKeys, AuthError> {
        admin::builtin_keys(self).await
    }

    /// Makes `key` the built-in service key (the one every service of a
    /// `minicloud serve` deployment is configured with); a different previous one is
    /// revoked.
    pub async fn adopt_service_key(&self, key: &str) -> Result<(), AuthError> {
        admin::adopt_service_key(self, key).await
    }
}

impl Service for Auth {
    const NAME: ServiceName = ServiceName::Auth;

    /// Reloads signing keys and prunes rate-limit state periodically.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
        let auth = self.clone();
        let stop = cancel.clone();
        let maintenance = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        auth.limits.prune();
                        for (what, pruned) in [
                            ("mails", mail::prune(&auth.pool).await),
                            ("one-time tokens", one_time::prune(&auth.pool).await),
                        ] {
                            if let Err(error) = pruned {
                                tracing::warn!(%error, what, "pruning failed");
                            }
                        }
                        if let Err(error) = auth.keys.reload().await {
                            tracing::warn!(%error, "reloading signing keys failed");
                        }
                    }
                }
            }
        });
        let mut tasks = vec![BackgroundTask::new(
            "key reload and rate-limit pruning",
            maintenance,
        )];
        tasks.extend(self.meters.shipping_task(cancel));
        tasks
    }

    fn host(self) -> ServiceHost {
        let pool = self.pool.clone();
        let readiness = readiness(move || {
            let pool = pool.clone();
            async move { vec![DependencyCheck::postgres(&pool).await] }
        });
        let metrics = ServiceMetrics::new("auth", |registry| {
            self.meters.register_metrics(registry);
        });
        let rest = Router::new()
            .route("/auth/v1/signup", post(account::signup))
            .route("/auth/v1/token", post(account::token))
            .route("/auth/v1/logout", post(account::logout))
            .route(
                "/auth/v1/user",
                get(account::get_user).put(account::update_user),
            )
            .route("/auth/v1/.well-known/jwks.json", get(account::jwks))
            .route("/auth/v1/recover", post(one_time::recover))
            .route("/auth/v1/otp", post(one_time::otp))
            .route("/auth/v1/verify", post(one_time::verify))
            .route("/auth/v1/admin/mail", get(mail::list))
            .merge(admin::routes())
            .with_state(self.clone());
        ServiceHost::new(Self::NAME, rest, readiness, metrics)
            .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
            .body_limit(MAX_BODY_BYTES)
            .error_dialect("/auth/v1", error::with_gotrue_fields)
            .grpc(AuthServiceServer::new(grpc::AuthGrpc(self)))
    }
}

/// The address a request came from: what the gateway (the only public entry) says
/// in `x-minicloud-client-ip`, or the peer address. Never `X-Forwarded-For`, whose
/// first entry is whatever the client wrote.
pub(crate) fn client_ip(
    headers: &http::HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<std::net::IpAddr> {
    headers
        .get("x-minicloud-client-ip")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .or_else(|| peer.map(|addr| addr.ip()))
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("auth");
    }
}
