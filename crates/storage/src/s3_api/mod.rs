//! The S3 API on storage (issue 19), served at `/s3` here and at the root of the
//! gateway for SigV4-signed requests and `<bucket>.localhost` hosts.
//!
//! The protocol — routing, XML, SigV4 in every form (header, presigned, `aws-chunked`
//! streaming, `UNSIGNED-PAYLOAD`), typed errors — is the `s3s` crate's; the
//! operations (`ops.rs`) are the same domain calls the REST API makes, so S3 writes
//! get the same authorisation, bucket policies, limits, metadata rows and
//! `object.created` events. Secrets are the access keys auth issues
//! (`POST /auth/v1/admin/api-keys {"kind":"aws"}`); a request signed by none is
//! anonymous and may only read public buckets.

mod errors;
mod ops;

use std::sync::Arc;

use axum::body::Body;
use axum::error_handling::HandleError;
use axum::response::{IntoResponse as _, Response};
use minicloud_authz::{Authz, Caller, VerifyError};
use minicloud_proto::error::ApiError;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};

use crate::Storage;

/// The S3 API as a service axum can mount (`nest_service("/s3", …)`).
pub(crate) fn service(
    storage: Storage,
) -> HandleError<s3s::service::S3Service, fn(s3s::HttpError) -> std::future::Ready<Response>, ()> {
    let authz = Arc::clone(&storage.authz);
    let mut builder = S3ServiceBuilder::new(ops::StorageS3(storage));
    builder.set_auth(IssuedKeys(authz));
    builder.set_access(PerObjectPolicies);
    builder.set_host(LocalhostBuckets);
    HandleError::new(builder.build(), http_error as _)
}

fn http_error(error: s3s::HttpError) -> std::future::Ready<Response> {
    let response = ApiError::internal(format!("S3 front end: {error:?}")).into_response();
    std::future::ready(response.map(Body::new))
}

/// The secret of an access key, from auth (cached by the verifier).
struct IssuedKeys(Arc<Authz>);

#[async_trait::async_trait]
impl S3Auth for IssuedKeys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.verifier().access_key(access_key).await {
            Ok(key) => Ok(SecretKey::from(key.secret_access_key)),
            Err(VerifyError::Unavailable) => Err(s3_error!(
                ServiceUnavailable,
                "access keys cannot be checked right now"
            )),
            Err(_) => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

/// Lets every request through to the operations, which decide with the bucket's
/// policy and the caller's role (anonymous callers may read public buckets), as the
/// REST API does.
struct PerObjectPolicies;

#[async_trait::async_trait]
impl S3Access for PerObjectPolicies {
    async fn check(&self, _cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        Ok(())
    }
}

/// `<bucket>.localhost[:port]` is virtual-hosted style; any other host is path style.
struct LocalhostBuckets;

impl S3Host for LocalhostBuckets {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        match name.strip_suffix(".localhost") {
            Some(bucket) if !bucket.is_empty() => Ok(VirtualHost::new(host).with_bucket(bucket)),
            _ => Ok(VirtualHost::new(host)),
        }
    }
}

/// Who signed the request: the access key's role, or anonymous when unsigned.
async fn caller_of(
    authz: &Authz,
    credentials: Option<&s3s::auth::Credentials>,
) -> S3Result<Caller> {
    let Some(credentials) = credentials else {
        return Ok(Caller::anonymous());
    };
    // The signature was checked with this key's secret: it exists (cached).
    match authz.verifier().access_key(&credentials.access_key).await {
        Ok(key) => Ok(key.caller),
        Err(VerifyError::Unavailable) => Err(s3_error!(ServiceUnavailable)),
        Err(_) => Err(s3_error!(InvalidAccessKeyId)),
    }
}

/// Puts back what the hop through the gateway took from a request and SigV4 needs:
/// the client's `Host` (forwarded as `X-Forwarded-Host`; the signature covers it)
/// and a body length s3s can check the payload hash against (a bodiless GET has no
/// `Content-Length`, and the body's exact size survives only as a size hint).
pub(crate) async fn restore_signed_parts(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(host) = request.headers().get("x-forwarded-host").cloned() {
        request.headers_mut().insert(http::header::HOST, host);
    }
    if !request.headers().contains_key(http::header::CONTENT_LENGTH)
        && let Some(length) = http_body::Body::size_hint(request.body()).exact()
    {
        request.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
    }
    next.run(request).await
}
