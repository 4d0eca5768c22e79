//! A small client for the minicloud REST APIs, used by the CLI, the tests and
//! functions. Every request carries the current span's W3C trace context, so a
//! function's calls continue the trace it was invoked in.

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Http(error) => error.status().map(|s| s.as_u16()),
            Error::Decode(_) => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A session from signup, sign-in or refresh (GoTrue's shape).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub expires_at: i64,
    pub refresh_token: String,
    pub user: serde_json::Value,
}

impl Session {
    pub fn user_id(&self) -> &str {
        self.user
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The same few lines as `minicloud_telemetry::trace_context`'s injector, on purpose:
/// the SDK is linked into functions and apps, and must not pull in the servers'
/// telemetry crate (axum, tonic, the OTLP exporter) for ten lines.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The current invocation's trace as a W3C `traceparent`, when running as a function.
pub fn invocation_traceparent() -> Option<String> {
    traceparent_from_xray(&std::env::var("_X_AMZN_TRACE_ID").ok()?)
}

/// The W3C `traceparent` equivalent of an X-Ray trace header, if it is well formed.
pub fn traceparent_from_xray(header: &str) -> Option<String> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = "01";
    for part in header.split(';') {
        match part.trim().split_once('=') {
            Some(("Root", value)) => root = Some(value),
            Some(("Parent", value)) => parent = Some(value),
            Some(("Sampled", "0")) => sampled = "00",
            _ => {}
        }
    }
    let mut pieces = root?.split('-');
    let (Some("1"), Some(time), Some(rest), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return None;
    };
    let trace = format!("{time}{rest}");
    let parent = parent?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&trace, 32) || !hex(parent, 16) {
        return None;
    }
    Some(format!(
        "00-{}-{}-{sampled}",
        trace.to_ascii_lowercase(),
        parent.to_ascii_lowercase()
    ))
}

impl Client {
    /// A client of the gateway at `base` (`http://127.0.0.1:4600`).
    pub fn new(base: impl Into<String>) -> Client {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap_or_default();
        Client {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// `MINICLOUD_URL` and `MINICLOUD_TOKEN`, as the invoker gives them to functions.
    pub fn from_env() -> Client {
        let base =
            std::env::var("MINICLOUD_URL").unwrap_or_else(|_| "http://127.0.0.1:4600".into());
        let client = Client::new(base);
        match std::env::var("MINICLOUD_TOKEN") {
            Ok(token) if !token.is_empty() => client.with_token(token),
            _ => client,
        }
    }

    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(token.into()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A request to `path` with the token and trace context set.
    pub fn request(&self, method: http::Method, path: &str) -> reqwest::RequestBuilder {
        let mut headers = http::HeaderMap::new();
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject_context(&context, &mut HeaderInjector(&mut headers))
            });
        } else if let Some(traceparent) = invocation_traceparent() {
            // Inside a function without tracing of its own: the call continues the
            // invocation's trace, which Lambda runtimes put in `_X_AMZN_TRACE_ID`.
            if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                headers.insert("traceparent", value);
            }
        }
        let mut builder = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .headers(headers);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        builder
    }

    /// Sends and decodes a JSON answer, turning error bodies into [`Error::Api`].
    pub async fn send<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T> {
        let response = builder.send().await?;
        let status = response.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return serde_json::from_value(serde_json::Value::Null)
                    .map_err(|e| Error::Decode(e.to_string()));
            }
            let bytes = response.bytes().await?;
            return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
        }
        Err(self.error_of(response).await)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(http::Method::GET, path)).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send(self.request(http::Method::POST, path).json(body))
            .await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send(self.request(http::Method::PUT, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send::<serde_json::Value>(self.request(http::Method::DELETE, path))
            .await
            .map(|_| ())
    }

    pub async fn signup(&self, email: &str, password: &str) -> Result<Session> {
        self.post(
            "/auth/v1/signup",
            &serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Session> {
        self.post(
            "/auth/v1/token?grant_type=password",
            &serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        self.post(
            "/auth/v1/token?grant_type=refresh_token",
            &serde_json::json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// The signed-in user (needs a user token).
    pub async fn user(&self) -> Result<serde_json::Value> {
        self.get("/auth/v1/user").await
    }

    /// An object's bytes (`storage:GetObject`).
    pub async fn download(&self, bucket: &str, path: &str) -> Result<bytes::Bytes> {
        let response = self
            .request(http::Method::GET, &object_path(bucket, path))
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(response.bytes().await?);
        }
        Err(self.error_of(response).await)
    }

    /// Writes an object (`storage:PutObject`): replaces it with `upsert`, else 409 if it
    /// exists. Returns the object's metadata.
    pub async fn upload(
        &self,
        bucket: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
        upsert: bool,
    ) -> Result<serde_json::Value> {
        let method = if upsert {
            http::Method::PUT
        } else {
            http::Method::POST
        };
        self.send(
            self.request(method, &object_path(bucket, path))
                .header(http::header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await
    }

    /// Creates or replaces a document (`db:PutDocument`); returns the stored document.
    pub async fn put_document(
        &self,
        collection: &str,
        id: &str,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.put(
            &format!(
                "/db/v1/collections/{}/docs/{}",
                encode_segment(collection),
                encode_segment(id)
            ),
            data,
        )
        .await
    }

    async fn error_of(&self, response: reqwest::Response) -> Error {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error = &body["error"];
        Error::Api {
            status: status.as_u16(),
            code: error["code"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
            request_id: error["request_id"].as_str().map(str::to_owned),
        }
    }
}

/// Characters kept as they are in a path segment; everything else is %-encoded, so
/// names with `#`, `?`, `%` or spaces reach the server as sent.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// `/storage/v1/object/<bucket>/<path>` with each segment encoded, slashes kept.
fn object_path(bucket: &str, path: &str) -> String {
    let mut out = format!("/storage/v1/object/{}", encode_segment(bucket));
    for segment in path.split('/') {
        out.push('/');
        out.push_str(&encode_segment(segment));
    }
    out
}

#[cfg(test)]
mod xray_tests {
    #[test]
    fn xray_headers_map_to_traceparent() {
        assert_eq!(
            super::traceparent_from_xray(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            )
            .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
        );
        assert_eq!(
            super::traceparent_from_xray(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
            )
            .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00")
        );
        for bad in [
            "",
            "Root=1-xyz;Parent=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Parent=53995c3f42cd8ad8",
        ] {
            assert_eq!(super::traceparent_from_xray(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn object_paths_encode_each_segment_and_keep_slashes() {
        assert_eq!(
            super::object_path("photos", "u1/a b#1?.jpg"),
            "/storage/v1/object/photos/u1/a%20b%231%3F.jpg"
        );
        assert_eq!(
            super::object_path("photos", "ü/x"),
            "/storage/v1/object/photos/%C3%BC/x"
        );
    }
}
