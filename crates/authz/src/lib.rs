//! Who is calling and what they may do, decided locally in every service:
//! tokens verified against auth's cached JWKS ([`verifier`]), callers ([`caller`]),
//! and the policy language and evaluator ([`policy`]).

pub mod action;
pub mod caller;
pub mod policy;
pub mod sigv4;
pub mod ttl_cache;
pub mod verifier;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use http::request::Parts;
use minicloud_proto::auth::v1::GetRolePoliciesRequest;
use minicloud_proto::auth::v1::auth_service_client::AuthServiceClient;
use minicloud_proto::error::{ApiError, ErrorCode};
use minicloud_telemetry::grpc_client::{ServiceCredential, TracedChannel};

pub use action::{Action, Resource};
pub use caller::{Caller, Claims, Credential, Role};
pub use policy::{Access, Decision, Owner, Policy, Scope};
pub use ttl_cache::TtlCache;
pub use verifier::{Verifier, VerifyError};

/// Identity policies are refetched after this long, so a policy change reaches
/// every service within it (docs/design.md §4 asks for 60 s).
pub const POLICY_CACHE_TTL: Duration = Duration::from_secs(30);

pub struct Authz {
    /// What this service presents on its own calls to other services.
    credential: ServiceCredential,
    verifier: Verifier,
    client: AuthServiceClient<TracedChannel>,
    policies: TtlCache<Arc<Vec<Policy>>>,
    /// `minicloud up`: a SigV4 access key id may be a minicloud token or API key,
    /// taken without checking the signature (see [`Authz::connect_local`]).
    tokens_as_access_key_ids: bool,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz").finish_non_exhaustive()
    }
}

impl Authz {
    /// An authz client of the auth service at `auth_grpc_url` (`http://127.0.0.1:4601`).
    /// Connects lazily: a service starts even while auth is still starting.
    pub fn connect(
        auth_grpc_url: &str,
        credential: ServiceCredential,
    ) -> Result<Arc<Authz>, tonic::transport::Error> {
        Self::connect_local(auth_grpc_url, POLICY_CACHE_TTL, credential, false)
    }

    /// Like [`Authz::connect`], refetching role policies after `policy_ttl` (tests
    /// shorten it to watch a policy change arrive); `local` (`minicloud up` on one's
    /// own machine) also takes a minicloud token or API key as a SigV4 access key id
    /// without checking the signature, for AWS clients configured with no more than
    /// a token.
    pub fn connect_local(
        auth_grpc_url: &str,
        policy_ttl: Duration,
        credential: ServiceCredential,
        local: bool,
    ) -> Result<Arc<Authz>, tonic::transport::Error> {
        let channel =
            TracedChannel::connect_lazy("auth", auth_grpc_url)?.with_credential(credential.clone());
        let client = AuthServiceClient::new(channel);
        Ok(Arc::new(Authz {
            credential,
            verifier: Verifier::new(client.clone()),
            client,
            policies: TtlCache::new(policy_ttl),
            tokens_as_access_key_ids: local,
        }))
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The credential this service presents to the others (for its other gRPC
    /// clients: the outbox relay, the bus's invoker client, …).
    pub fn service_credential(&self) -> ServiceCredential {
        self.credential.clone()
    }

    /// The caller behind an `Authorization` header value (`None`: anonymous).
    pub async fn caller(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let Some(value) = authorization else {
            return Ok(Caller::anonymous());
        };
        let token = match value.strip_prefix("AWS4-HMAC-SHA256 ") {
            Some(_) if !self.tokens_as_access_key_ids => {
                return Err(ApiError::unauthenticated(
                    "sign AWS requests with an access key from POST /auth/v1/admin/api-keys {\"kind\":\"aws\"} (minicloud tokens as access key ids are for `minicloud up` only)",
                ));
            }
            Some(signed) => sigv4_access_key(signed).ok_or_else(|| {
                ApiError::unauthenticated("AWS SigV4 Authorization without Credential=<key>/…")
            })?,
            None => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::unauthenticated("Authorization must be \"Bearer <token>\"")
                })?,
        };
        self.verifier
            .verify_bearer(token)
            .await
            .map_err(verify_error)
    }

    /// The caller of a request signed with SigV4 by an AWS-style access key auth
    /// issued (issue 19): the key's role, once its signature checks out.
    pub async fn aws_caller(
        &self,
        signed: &sigv4::SignedRequest,
        request: &sigv4::RequestParts<'_>,
    ) -> Result<Caller, AwsAuthError> {
        let key = self
            .verifier
            .access_key(&signed.access_key_id)
            .await
            .map_err(|error| match error {
                VerifyError::Unavailable => AwsAuthError::Unavailable,
                _ => AwsAuthError::UnknownKey,
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        sigv4::verify(signed, &key.secret_access_key, request, now)
            .map_err(AwsAuthError::Signature)?;
        Ok(key.caller)
    }

    /// A token for `role` (the identity a function runs as), signed by auth.
    pub async fn issue_role_token(
        &self,
        role: &str,
        subject: &str,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let request = minicloud_proto::auth::v1::IssueRoleTokenRequest {
            role: role.to_owned(),
            subject: subject.to_owned(),
            ttl_seconds: ttl.as_secs().try_into().unwrap_or(u32::MAX),
        };
        match self.client.clone().issue_role_token(request).await {
            Ok(response) => Ok(response.into_inner().access_token),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(ApiError::not_found(format!("role {role} not found")))
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) =>
            {
                Err(ApiError::invalid(status.message().to_owned()))
            }
            Err(status) => {
                tracing::warn!(role, %status, "issuing a role token failed");
                Err(ApiError::unavailable("auth temporarily unavailable"))
            }
        }
    }

    /// The identity policies of `role`, cached for [`POLICY_CACHE_TTL`].
    pub async fn role_policies(&self, role: &str) -> Result<Arc<Vec<Policy>>, ApiError> {
        if let Some(policies) = self.policies.get(role) {
            return Ok(policies);
        }
        let request = GetRolePoliciesRequest {
            role: role.to_owned(),
        };
        let policies = match self.client.clone().get_role_policies(request).await {
            Ok(response) => response
                .into_inner()
                .policies_json
                .iter()
                .filter_map(|json| match Policy::from_json_str(json) {
                    Ok(policy) => Some(policy),
                    Err(error) => {
                        tracing::warn!(role, %error, "ignoring an invalid stored policy");
                        None
                    }
                })
                .collect(),
            Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
            Err(status) => {
                tracing::warn!(role, %status, "fetching role policies failed");
                return Err(ApiError::unavailable(
                    "authorization temporarily unavailable",
                ));
            }
        };
        let policies = Arc::new(policies);
        self.policies.insert(role.to_owned(), Arc::clone(&policies));
        Ok(policies)
    }

    /// Like [`Authz::authorize`] for a resource with a known owner, so that
    /// owner-conditioned statements (`"condition":{"owner":"${auth.uid}"}`) apply.
    pub async fn authorize_owned(
        &self,
        caller: &Caller,
        action: Action,
        resource: &str,
        owner: Option<&str>,
        resource_policies: &[&Policy],
    ) -> Result<(), ApiError> {
        if caller.is_service() {
            return Ok(());
        }
        let identity = self.role_policies(caller.role.name()).await?;
        let access = Access {
            action: action.as_str(),
            resource,
            owner: Owner::Known(owner),
        };
        if policy::evaluate(caller, access, &identity, resource_policies).is_allowed() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{action} on {resource} is not allowed for this caller"
            )))
        }
    }

    /// What of a listing the caller may see: everything, one owner's items, or (403)
    /// nothing.
    pub async fn authorize_scoped(
        &self,
        caller: &Caller,
        action: Action,
        resource: &str,
        resource_policies: &[&Policy],
    ) -> Result<Scope, ApiError> {
        if caller.is_service() {
            return Ok(Scope::All);
        }
        let identity = self.role_policies(caller.role.name()).await?;
        match policy::evaluate_scoped(
            caller,
            action.as_str(),
            resource,
            &identity,
            resource_policies,
        ) {
            Scope::Nothing => Err(ApiError::forbidden(format!(
                "{action} on {resource} is not allowed for this caller"
            ))),
            scope => Ok(scope),
        }
    }

    /// [`Authz::authorize`] for a resource with no policy of its own (a topic, a
    /// function, a role).
    pub async fn authorize_on(
        &self,
        caller: &Caller,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        self.authorize(caller, action, &resource.to_string(), &[])
            .await
    }

    /// Allows or refuses `action` on `resource` for `caller`, given the resource's own
    /// policies. Refusals are 403 `permission_denied`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        resource: &str,
        resource_policies: &[&Policy],
    ) -> Result<(), ApiError> {
        if caller.is_service() {
            return Ok(());
        }
        let identity = self.role_policies(caller.role.name()).await?;
        let decision = policy::evaluate(
            caller,
            Access {
                action: action.as_str(),
                resource,
                owner: Owner::Unknown,
            },
            &identity,
            resource_policies,
        );
        if decision.is_allowed() {
            Ok(())
        } else {
            tracing::debug!(
                role = caller.role.name(),
                %action,
                resource,
                ?decision,
                "access denied"
            );
            Err(ApiError::forbidden(format!(
                "{action} on {resource} is not allowed for this caller"
            )))
        }
    }
}

fn verify_error(error: VerifyError) -> ApiError {
    match error {
        VerifyError::Unavailable => {
            ApiError::unavailable("token verification temporarily unavailable")
        }
        other => ApiError::new(ErrorCode::Unauthenticated, other.to_string()),
    }
}

impl Authz {
    /// The caller of a gRPC request, from its `authorization` metadata: gRPC APIs
    /// authorise exactly like REST, but a call without a credential is refused
    /// (`UNAUTHENTICATED`) — the services' ports are not a public entry.
    pub async fn grpc_caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, tonic::Status> {
        let header = grpc_authorization(metadata)?;
        Ok(self.caller(Some(header)).await?)
    }

    /// Like [`Authz::grpc_caller`], for RPCs only minicloud's own services may call.
    pub async fn grpc_service_caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, tonic::Status> {
        let caller = self.grpc_caller(metadata).await?;
        require_service_caller(&caller)?;
        Ok(caller)
    }
}

/// The `authorization` of a gRPC call; none is `UNAUTHENTICATED`.
pub fn grpc_authorization(metadata: &tonic::metadata::MetadataMap) -> Result<&str, tonic::Status> {
    metadata
        .get("authorization")
        .ok_or_else(|| {
            tonic::Status::unauthenticated(
                "gRPC calls need a credential (authorization: Bearer <token or key>)",
            )
        })?
        .to_str()
        .map_err(|_| tonic::Status::unauthenticated("authorization is not text"))
}

/// Internal RPCs (token issuing, policies, subscriptions for functions) are for the
/// service role: minicloud's own services present the service key.
pub fn require_service_caller(caller: &Caller) -> Result<(), tonic::Status> {
    if caller.is_service() {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(
            "this RPC is for minicloud's own services (the service key)",
        ))
    }
}

/// Why a SigV4-signed request was refused; each AWS surface names these its own way
/// (`InvalidAccessKeyId`/`SignatureDoesNotMatch` in S3, `UnrecognizedClientException`/
/// `InvalidSignatureException` in Lambda).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsAuthError {
    #[error("The security token included in the request is invalid: no such access key")]
    UnknownKey,
    #[error("{0}")]
    Signature(sigv4::SigV4Error),
    #[error("auth service unavailable")]
    Unavailable,
}

/// The access key id of a SigV4 `Authorization` value (after the algorithm):
/// `Credential=<key id>/<date>/<region>/<service>/aws4_request, SignedHeaders=…, Signature=…`.
///
/// AWS SDKs (the Lambda client pointed at the gateway) sign requests rather than send
/// a bearer token; their access key id carries a minicloud token or API key, and the
/// signature is not checked, as LocalStack does: the key id is the secret here.
fn sigv4_access_key(signed: &str) -> Option<&str> {
    signed
        .split(',')
        .find_map(|part| part.trim().strip_prefix("Credential="))
        .and_then(|credential| credential.split('/').next())
        .filter(|key| !key.is_empty())
}

/// Axum extractor: the verified caller of this request (anonymous without a token).
impl<S> FromRequestParts<S> for Caller
where
    Arc<Authz>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let authz = Arc::<Authz>::from_ref(state);
        let header = match parts.headers.get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::unauthenticated("Authorization header is not text"))?,
            ),
        };
        authz.caller(header).await
    }
}

#[cfg(test)]
mod sigv4_tests {
    #[test]
    fn the_access_key_id_is_read_from_a_sigv4_header() {
        let signed = "Credential=mck_abc123/20261126/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=deadbeef";
        assert_eq!(super::sigv4_access_key(signed), Some("mck_abc123"));
        for bad in [
            "",
            "SignedHeaders=host, Signature=x",
            "Credential=/20261126/us-east-1/lambda/aws4_request",
        ] {
            assert_eq!(super::sigv4_access_key(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn outside_minicloud_up_a_token_is_no_access_key_id() {
        let header = "AWS4-HMAC-SHA256 Credential=mck_abc123/20261126/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=deadbeef";
        let credential = minicloud_telemetry::grpc_client::ServiceCredential::pending();
        // No auth service is reachable there: the refusal comes before any call.
        let served = super::Authz::connect("http://127.0.0.1:9", credential).unwrap();
        let error = served.caller(Some(header)).await.unwrap_err();
        assert_eq!(
            error.code,
            minicloud_proto::error::ErrorCode::Unauthenticated
        );
        assert!(error.message.contains("kind"), "{}", error.message);
    }
}
