//! Signed URLs: a token naming the operation, bucket, path, expiry (and, for
//! uploads, the owner), MACed with HMAC-SHA256 under a secret kept in the storage
//! schema so every replica signs and verifies alike.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use minicloud_proto::error::ApiError;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;

type HmacSha256 = Hmac<Sha256>;

pub(crate) const MAX_EXPIRES_IN: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Operation {
    Download,
    Upload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Grant {
    #[serde(rename = "o")]
    pub operation: Operation,
    #[serde(rename = "b")]
    pub bucket: String,
    #[serde(rename = "p")]
    pub path: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub expires: i64,
    /// Owner recorded on a signed upload.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A single-use upload's nonce: the first upload with it records it, later ones
    /// are refused.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

pub(crate) struct UrlSigner {
    key: Vec<u8>,
}

impl UrlSigner {
    /// The secret from the database, created on first use.
    pub(crate) async fn load(pool: &PgPool) -> Result<UrlSigner, sqlx::Error> {
        let mut fresh = vec![0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        sqlx::query("INSERT INTO secrets (name, value) VALUES ('url_signing', $1) ON CONFLICT (name) DO NOTHING")
            .bind(&fresh)
            .execute(pool)
            .await?;
        let key: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = 'url_signing'")
                .fetch_one(pool)
                .await?;
        Ok(UrlSigner { key })
    }

    fn mac(&self) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub(crate) fn sign(&self, grant: &Grant) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The grant a token carries, if its MAC is right, it has not expired and it is
    /// for this operation, bucket and path. Every failure is the same 403.
    pub(crate) fn verify(
        &self,
        token: &str,
        operation: Operation,
        bucket: &str,
        path: &str,
    ) -> Result<Grant, ApiError> {
        let denied = || ApiError::forbidden("invalid or expired signature");
        let (payload, signature) = token.split_once('.').ok_or_else(denied)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| denied())?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| denied())?;
        let grant: Grant = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(denied)?;
        let fresh = grant.expires > chrono::Utc::now().timestamp();
        if !fresh || grant.operation != operation || grant.bucket != bucket || grant.path != path {
            return Err(denied());
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner {
            key: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    fn grant(expires_in: i64) -> Grant {
        Grant {
            operation: Operation::Download,
            bucket: "photos".into(),
            path: "u1/a.jpg".into(),
            expires: chrono::Utc::now().timestamp() + expires_in,
            owner: None,
            nonce: None,
        }
    }

    #[test]
    fn a_signed_grant_verifies_only_for_what_it_names() {
        let s = signer();
        let token = s.sign(&grant(60));
        assert!(
            s.verify(&token, Operation::Download, "photos", "u1/a.jpg")
                .is_ok()
        );
        assert!(
            s.verify(&token, Operation::Upload, "photos", "u1/a.jpg")
                .is_err()
        );
        assert!(
            s.verify(&token, Operation::Download, "photos", "u1/b.jpg")
                .is_err()
        );
        assert!(
            s.verify(&token, Operation::Download, "other", "u1/a.jpg")
                .is_err()
        );
    }

    #[test]
    fn expired_and_tampered_tokens_are_refused() {
        let s = signer();
        assert!(
            s.verify(
                &s.sign(&grant(-1)),
                Operation::Download,
                "photos",
                "u1/a.jpg"
            )
            .is_err()
        );
        let token = s.sign(&grant(60));
        let (payload, mac) = token.split_once('.').unwrap();
        let mut forged = grant(60);
        forged.path = "u2/secret.jpg".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(
            s.verify(
                &format!("{forged_payload}.{mac}"),
                Operation::Download,
                "photos",
                "u2/secret.jpg"
            )
            .is_err()
        );
        let mut flipped = mac.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        assert!(
            s.verify(
                &format!("{payload}.{}", String::from_utf8(flipped).unwrap()),
                Operation::Download,
                "photos",
                "u1/a.jpg"
            )
            .is_err()
        );
        let other = UrlSigner {
            key: b"another key".to_vec(),
        };
        assert!(
            other
                .verify(&token, Operation::Download, "photos", "u1/a.jpg")
                .is_err()
        );
        for junk in ["", ".", "abc", "a.b.c", "%%%.%%%"] {
            assert!(
                s.verify(junk, Operation::Download, "photos", "u1/a.jpg")
                    .is_err()
            );
        }
    }
}
