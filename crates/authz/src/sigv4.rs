//! AWS Signature Version 4 verification, for the AWS clients' requests signed with an
//! access key auth issued (issue 19): the `Authorization: AWS4-HMAC-SHA256 …` header
//! form and the presigned query form (`X-Amz-Signature=…`).
//!
//! Written here rather than taken from a crate: `aws-sigv4` signs but does not verify
//! (it chooses the headers to sign itself, where a verifier must take the client's
//! list), and the S3 protocol crate's verifier is private to it. The algorithm is
//! AWS's (docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html); the
//! tests check it against requests `aws-sigv4` signed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A request's clock may differ from ours by this much (AWS's own bound).
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// The longest a presigned URL may be valid (AWS: 7 days).
const MAX_PRESIGNED_EXPIRY: i64 = 7 * 24 * 3600;

/// What a signature claims, read before anything is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub timestamp: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// Presigned: seconds the URL is valid from `timestamp`.
    pub expires: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("malformed AWS signature: {0}")]
    Malformed(&'static str),
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
    #[error("Signature expired: the request's time is more than 15 minutes from the server's")]
    Skewed,
    #[error("Request has expired")]
    Expired,
}

/// The `AWS4-HMAC-SHA256` header value or presigned query of a request, if it has one.
pub fn parse(
    authorization: Option<&str>,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<Option<SignedRequest>, SigV4Error> {
    if let Some(value) = authorization {
        let Some(rest) = value.strip_prefix("AWS4-HMAC-SHA256 ") else {
            return Ok(None);
        };
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let timestamp = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or(SigV4Error::Malformed("X-Amz-Date header missing"))?;
        return build(
            credential.ok_or(SigV4Error::Malformed("Credential missing"))?,
            signed_headers.ok_or(SigV4Error::Malformed("SignedHeaders missing"))?,
            signature.ok_or(SigV4Error::Malformed("Signature missing"))?,
            timestamp,
            None,
        )
        .map(Some);
    }
    let Some(query) = query else {
        return Ok(None);
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match get("X-Amz-Algorithm") {
        None => Ok(None),
        Some("AWS4-HMAC-SHA256") => {
            let expires = get("X-Amz-Expires")
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| (1..=MAX_PRESIGNED_EXPIRY).contains(v))
                .ok_or(SigV4Error::Malformed("X-Amz-Expires must be 1 to 604800"))?;
            build(
                get("X-Amz-Credential").ok_or(SigV4Error::Malformed("X-Amz-Credential missing"))?,
                get("X-Amz-SignedHeaders")
                    .ok_or(SigV4Error::Malformed("X-Amz-SignedHeaders missing"))?,
                get("X-Amz-Signature").ok_or(SigV4Error::Malformed("X-Amz-Signature missing"))?,
                get("X-Amz-Date").ok_or(SigV4Error::Malformed("X-Amz-Date missing"))?,
                Some(expires),
            )
            .map(Some)
        }
        Some(_) => Err(SigV4Error::Malformed("only AWS4-HMAC-SHA256 is supported")),
    }
}

fn build(
    credential: &str,
    signed_headers: &str,
    signature: &str,
    timestamp: &str,
    expires: Option<i64>,
) -> Result<SignedRequest, SigV4Error> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err(SigV4Error::Malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    let valid_timestamp = timestamp.len() == 16
        && timestamp.as_bytes()[8] == b'T'
        && timestamp.ends_with('Z')
        && timestamp.starts_with(date);
    if !valid_timestamp || date.len() != 8 || access_key_id.is_empty() || access_key_id.len() > 128
    {
        return Err(SigV4Error::Malformed(
            "the credential's date and X-Amz-Date disagree",
        ));
    }
    let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    if signed_headers.iter().any(|h| h.is_empty() || h.len() > 128) || signed_headers.len() > 64 {
        return Err(SigV4Error::Malformed("SignedHeaders"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigV4Error::Malformed("Signature must be 64 hex digits"));
    }
    Ok(SignedRequest {
        access_key_id: (*access_key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        timestamp: timestamp.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        expires,
    })
}

/// What the signature covers of a request.
#[derive(Debug)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// `x-amz-content-sha256`'s value, or the hex SHA-256 of the body.
    pub payload_hash: &'a str,
    /// S3 signs the path as sent; every other service encodes it once more.
    pub double_encode_path: bool,
}

/// Checks `signed` against `secret` for `request` at `now` (Unix seconds).
pub fn verify(
    signed: &SignedRequest,
    secret: &str,
    request: &RequestParts<'_>,
    now: i64,
) -> Result<(), SigV4Error> {
    let at = timestamp_seconds(&signed.timestamp).ok_or(SigV4Error::Malformed("X-Amz-Date"))?;
    match signed.expires {
        Some(expires) => {
            if now > at + expires {
                return Err(SigV4Error::Expired);
            }
            if at > now + MAX_SKEW_SECONDS {
                return Err(SigV4Error::Skewed);
            }
        }
        None => {
            if (now - at).abs() > MAX_SKEW_SECONDS {
                return Err(SigV4Error::Skewed);
            }
        }
    }
    let canonical = canonical_request(signed, request)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        signed.date, signed.region, signed.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        signed.timestamp,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), signed.date.as_bytes());
    for part in [
        signed.region.as_bytes(),
        signed.service.as_bytes(),
        b"aws4_request",
    ] {
        key = hmac(&key, part);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SigV4Error::Mismatch)?;
    mac.update(string_to_sign.as_bytes());
    let expected =
        hex::decode(&signed.signature).map_err(|_| SigV4Error::Malformed("Signature"))?;
    // Constant time: the comparison reveals nothing of the right signature.
    mac.verify_slice(&expected)
        .map_err(|_| SigV4Error::Mismatch)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn timestamp_seconds(timestamp: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(timestamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// RFC 3986 unreserved characters stay; everything else is `%XX` (uppercase).
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn canonical_request(
    signed: &SignedRequest,
    request: &RequestParts<'_>,
) -> Result<String, SigV4Error> {
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let canonical_path = if request.double_encode_path {
        uri_encode(path, true)
    } else {
        path.to_owned()
    };
    let mut query: Vec<(String, String)> =
        form_urlencoded::parse(request.query.unwrap_or("").as_bytes())
            .filter(|(k, _)| k != "X-Amz-Signature")
            .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
            .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &signed.signed_headers {
        // The gateway hands the client's Host on as `x-forwarded-host` (it sets that
        // header from Host itself, over anything the client wrote).
        let source = if name == "host" && !request.headers.contains_key(http::header::HOST) {
            "x-forwarded-host"
        } else {
            name.as_str()
        };
        let values: Vec<String> = request
            .headers
            .get_all(source)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::Mismatch);
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(format!(
        "{}\n{canonical_path}\n{canonical_query}\n{canonical_headers}\n{}\n{}",
        request.method,
        signed.signed_headers.join(";"),
        request.payload_hash
    ))
}

/// Checked against requests the AWS SDK's own signer (`aws-sigv4`) signed.
#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;

    use super::*;

    const KEY_ID: &str = "AKIAEXAMPLEEXAMPLE00";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    struct Signed {
        request: http::Request<Vec<u8>>,
        now: i64,
    }

    fn signed(
        method: &str,
        uri: &str,
        body: &[u8],
        service: &str,
        presign: Option<Duration>,
    ) -> Signed {
        let time = SystemTime::now();
        let identity = Credentials::new(KEY_ID, SECRET, None, None, "test").into();
        let mut settings = SigningSettings::default();
        if let Some(expires) = presign {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(expires);
        }
        if service == "s3" {
            settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
            settings.payload_checksum_kind =
                aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(service)
            .time(time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let headers = [
            ("host", "127.0.0.1:4600"),
            ("content-type", "application/json"),
        ];
        let body_kind = if presign.is_some() {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(body)
        };
        let signable = SignableRequest::new(
            method,
            format!("http://127.0.0.1:4600{uri}"),
            headers.into_iter(),
            body_kind,
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:4600{uri}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request.body(body.to_vec()).unwrap();
        instructions.apply_to_request_http1x(&mut request);
        let now = time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        Signed { request, now }
    }

    fn check(
        signed: &Signed,
        secret: &str,
        body: &[u8],
        double: bool,
        now: i64,
    ) -> Result<(), SigV4Error> {
        let request = &signed.request;
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let claim =
            parse(authorization, request.uri().query(), request.headers())?.expect("a signature");
        assert_eq!(claim.access_key_id, KEY_ID);
        let hash = hex::encode(Sha256::digest(body));
        let declared = request
            .headers()
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| claim.expires.map(|_| "UNSIGNED-PAYLOAD".to_owned()));
        verify(
            &claim,
            secret,
            &RequestParts {
                method: request.method().as_str(),
                path: request.uri().path(),
                query: request.uri().query(),
                headers: request.headers(),
                payload_hash: declared.as_deref().unwrap_or(&hash),
                double_encode_path: double,
            },
            now,
        )
    }

    #[test]
    fn a_lambda_invoke_signed_by_the_sdk_verifies_and_a_changed_one_does_not() {
        let body = br#"{"n":41}"#;
        // An ARN as the name: the path carries percent-encoded colons.
        let uri = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A0%3Afunction%3Aecho/invocations?Qualifier=%24LATEST";
        let s = signed("POST", uri, body, "lambda", None);
        assert_eq!(check(&s, SECRET, body, true, s.now), Ok(()));
        assert_eq!(
            check(&s, "another secret", body, true, s.now),
            Err(SigV4Error::Mismatch)
        );
        assert_eq!(
            check(&s, SECRET, br#"{"n":666}"#, true, s.now),
            Err(SigV4Error::Mismatch),
            "a different body"
        );
        assert_eq!(
            check(&s, SECRET, body, true, s.now + MAX_SKEW_SECONDS + 5),
            Err(SigV4Error::Skewed)
        );
        let mut moved = signed("POST", uri, body, "lambda", None);
        *moved.request.uri_mut() = "http://127.0.0.1:4600/2015-03-31/functions/other/invocations"
            .parse()
            .unwrap();
        assert_eq!(
            check(&moved, SECRET, body, true, moved.now),
            Err(SigV4Error::Mismatch)
        );
    }

    #[test]
    fn an_s3_presigned_url_verifies_until_it_expires() {
        let s = signed(
            "GET",
            "/photos/a%20b/c.png",
            b"",
            "s3",
            Some(Duration::from_secs(60)),
        );
        assert!(
            s.request
                .uri()
                .query()
                .unwrap()
                .contains("X-Amz-Signature=")
        );
        assert_eq!(check(&s, SECRET, b"", false, s.now + 30), Ok(()));
        assert_eq!(
            check(&s, SECRET, b"", false, s.now + 61),
            Err(SigV4Error::Expired)
        );
        assert_eq!(
            check(&s, "wrong", b"", false, s.now),
            Err(SigV4Error::Mismatch)
        );
    }

    #[test]
    fn malformed_signatures_are_refused_before_any_key_is_looked_up() {
        let headers = http::HeaderMap::new();
        for bad in [
            "AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/lambda, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=zz",
        ] {
            assert!(parse(Some(bad), None, &headers).is_err(), "{bad}");
        }
        assert_eq!(parse(Some("Bearer x"), None, &headers), Ok(None));
        assert!(parse(None, Some("X-Amz-Algorithm=AWS4-HMAC-SHA1"), &headers).is_err());
        assert!(
            parse(
                None,
                Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=9999999"),
                &headers
            )
            .is_err(),
            "presigned for longer than 7 days"
        );
    }
}
