//! The gRPC API other services call.

use minicloud_authz::verifier::{API_KEY_PREFIX, PublicKey};
use minicloud_authz::{Caller, Credential, Role, Verifier};
use minicloud_proto::auth::v1::auth_service_server::AuthService;
use minicloud_proto::auth::v1::{
    GetAccessKeyRequest, GetAccessKeyResponse, GetJwksRequest, GetJwksResponse,
    GetRolePoliciesRequest, GetRolePoliciesResponse, IssueRoleTokenRequest, IssueRoleTokenResponse,
    Jwk, RevokeUserSessionsRequest, RevokeUserSessionsResponse, VerifyApiKeyRequest,
    VerifyApiKeyResponse,
};
use tonic::{Request, Response, Status};

use crate::Auth;
use crate::error::AuthError;
use crate::sessions::sha256;

pub(crate) struct AuthGrpc(pub Auth);

impl AuthGrpc {
    /// The caller of an RPC, verified here rather than through the authz client
    /// every other service uses: that client's own calls land on this server, and
    /// verifying them through it would loop. API keys are looked up in auth's own
    /// table, tokens checked against auth's own published keys.
    async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let header = minicloud_authz::grpc_authorization(metadata)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        if token.starts_with(API_KEY_PREFIX) {
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT role, subject FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            )
            .bind(sha256(token))
            .fetch_optional(&self.0.pool)
            .await
            .map_err(AuthError::from)?;
            let (role, subject) = row.ok_or_else(|| Status::unauthenticated("invalid API key"))?;
            return Ok(Caller {
                role: Role::parse(&role),
                uid: (!subject.is_empty()).then_some(subject),
                session_id: None,
                credential: Credential::ApiKey,
            });
        }
        let keys = self
            .0
            .keys
            .jwks()
            .await
            .into_iter()
            .filter_map(|jwk| {
                PublicKey::from_jwk(jwk.alg, jwk.crv, jwk.x, jwk.y.unwrap_or_default())
                    .map(|key| (jwk.kid, key))
            })
            .collect();
        Verifier::with_fixed_keys(keys)
            .verify_bearer(token)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    async fn service_caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let caller = self.caller(metadata).await?;
        minicloud_authz::require_service_caller(&caller)
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn get_jwks(
        &self,
        request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        // Public keys, but still only for callers with a credential (the anon key
        // is one): the services' ports are not a public entry.
        self.caller(request.metadata()).await?;
        let keys = self
            .0
            .keys
            .jwks()
            .await
            .into_iter()
            .map(|jwk| Jwk {
                kid: jwk.kid,
                kty: jwk.kty.into(),
                crv: jwk.crv.into(),
                alg: jwk.alg.into(),
                x: jwk.x,
                y: jwk.y.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(GetJwksResponse { keys }))
    }

    async fn issue_role_token(
        &self,
        request: Request<IssueRoleTokenRequest>,
    ) -> Result<Response<IssueRoleTokenResponse>, Status> {
        self.service_caller(request.metadata()).await?;
        let request = request.into_inner();
        if request.role == "service" {
            return Err(Status::permission_denied(
                "role tokens are never issued for the service role",
            ));
        }
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM roles WHERE name = $1)")
                .bind(&request.role)
                .fetch_one(&self.0.pool)
                .await
                .map_err(AuthError::from)?;
        if !exists {
            return Err(Status::not_found(format!(
                "no role named {:?}",
                request.role
            )));
        }
        if request.subject.is_empty() || request.subject.len() > 256 {
            return Err(Status::invalid_argument("subject must be 1 to 256 bytes"));
        }
        let max = self.0.config.max_role_token_ttl_s;
        let ttl = if request.ttl_seconds == 0 {
            max
        } else {
            u64::from(request.ttl_seconds).min(max)
        };
        let (access_token, expires_at) = self
            .0
            .access_token(&request.subject, &request.role, ttl as i64, None)
            .await?;
        Ok(Response::new(IssueRoleTokenResponse {
            access_token,
            expires_at,
        }))
    }

    async fn get_role_policies(
        &self,
        request: Request<GetRolePoliciesRequest>,
    ) -> Result<Response<GetRolePoliciesResponse>, Status> {
        self.service_caller(request.metadata()).await?;
        let role = request.into_inner().role;
        let row: Option<(serde_json::Value, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT policies, updated_at FROM roles WHERE name = $1")
                .bind(&role)
                .fetch_optional(&self.0.pool)
                .await
                .map_err(AuthError::from)?;
        let Some((policies, updated_at)) = row else {
            return Err(Status::not_found(format!("no role named {role:?}")));
        };
        Ok(Response::new(GetRolePoliciesResponse {
            policies_json: vec![policies.to_string()],
            updated_at: updated_at.timestamp(),
        }))
    }

    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        self.service_caller(request.metadata()).await?;
        let key = request.into_inner().key;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, role, subject FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(sha256(&key))
        .fetch_optional(&self.0.pool)
        .await
        .map_err(AuthError::from)?;
        let Some((key_id, role, subject)) = row else {
            return Err(Status::unauthenticated("invalid API key"));
        };
        Ok(Response::new(VerifyApiKeyResponse {
            key_id,
            role,
            subject,
        }))
    }

    async fn get_access_key(
        &self,
        request: Request<GetAccessKeyRequest>,
    ) -> Result<Response<GetAccessKeyResponse>, Status> {
        self.service_caller(request.metadata()).await?;
        let access_key_id = request.into_inner().access_key_id;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT secret_access_key, role, subject FROM api_keys
             WHERE access_key_id = $1 AND secret_access_key IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(&access_key_id)
        .fetch_optional(&self.0.pool)
        .await
        .map_err(AuthError::from)?;
        let Some((secret_access_key, role, subject)) = row else {
            return Err(Status::not_found("no such access key"));
        };
        Ok(Response::new(GetAccessKeyResponse {
            secret_access_key,
            role,
            subject,
        }))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        self.service_caller(request.metadata()).await?;
        let user_id = uuid::Uuid::parse_str(&request.into_inner().user_id)
            .map_err(|_| Status::invalid_argument("user_id must be a UUID"))?;
        let revoked = self.0.revoke_sessions(user_id, None).await?;
        Ok(Response::new(RevokeUserSessionsResponse {
            revoked: revoked as u32,
        }))
    }
}
