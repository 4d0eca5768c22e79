//! Uploads sent as `multipart/form-data`, as Supabase Storage accepts them:
//! supabase-js sends a `Blob`/`File` that way (settings fields, then the file under
//! the name `""`), supabase-py always does (the file under `file`). The file part
//! becomes the object, streamed, with its own content type; the envelope is never
//! stored. Parsed with `multer` (the parser behind axum's `Multipart`), which streams
//! a part's bytes as they arrive.

use futures::TryStreamExt as _;
use minicloud_proto::error::ApiError;

use crate::backend::ByteStream;

/// The most a settings field (`cacheControl`, `metadata`, `contentType`) may hold.
const MAX_SETTING_BYTES: usize = 8 * 1024;
/// Settings fields before the file, at most.
const MAX_SETTINGS: usize = 16;

/// The boundary of a `multipart/form-data` body, `None` for any other type.
pub(crate) fn boundary(content_type: Option<&str>) -> Option<String> {
    multer::parse_boundary(content_type?).ok()
}

/// The form's file part and the settings sent before it.
pub(crate) struct FormFile {
    /// The part's own `Content-Type`, else the form's `contentType` field.
    pub content_type: Option<String>,
    /// The `metadata` field: a JSON object (supabase-js `metadata` option).
    pub metadata: Option<serde_json::Value>,
    /// The `cacheControl` field (seconds, as the clients send it).
    pub cache_control: Option<String>,
    /// The file's bytes as they arrive.
    pub body: ByteStream,
    /// What follows the file, read and dropped once the object is stored: a client
    /// that is answered before its body is read may see its connection reset.
    rest: multer::Multipart<'static>,
}

impl std::fmt::Debug for FormFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormFile")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

fn bad_form(error: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("malformed multipart/form-data upload: {error}"))
}

async fn setting_text(mut field: multer::Field<'static>, name: &str) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
        if text.len() + chunk.len() > MAX_SETTING_BYTES {
            return Err(ApiError::invalid(format!(
                "form field {name} larger than {MAX_SETTING_BYTES} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .map_err(|_| ApiError::invalid(format!("form field {name} is not UTF-8")))
}

/// Reads the settings fields up to the file part and hands the file over as a
/// stream. A field with a filename is the file, or, failing that, any field that is
/// not a setting.
pub(crate) async fn open(body: ByteStream, boundary: String) -> Result<FormFile, ApiError> {
    let mut form = multer::Multipart::new(body.map_err(std::io::Error::other), boundary);
    let mut content_type = None;
    let mut metadata = None;
    let mut cache_control = None;
    for _ in 0..=MAX_SETTINGS {
        let Some(field) = form.next_field().await.map_err(bad_form)? else {
            return Err(ApiError::invalid("the form has no file part"));
        };
        let name = field.name().unwrap_or("").to_owned();
        let is_setting = field.file_name().is_none()
            && matches!(name.as_str(), "cacheControl" | "metadata" | "contentType");
        if !is_setting {
            let part_type = field
                .content_type()
                .map(|mime| mime.to_string())
                .or(content_type);
            let stream: ByteStream = Box::pin(field.map_err(std::io::Error::other));
            return Ok(FormFile {
                content_type: part_type,
                metadata,
                cache_control,
                body: stream,
                rest: form,
            });
        }
        let text = setting_text(field, &name).await?;
        match name.as_str() {
            "metadata" => {
                let value: serde_json::Value = serde_json::from_str(&text)
                    .ok()
                    .filter(serde_json::Value::is_object)
                    .ok_or_else(|| {
                        ApiError::invalid("form field metadata must be a JSON object")
                    })?;
                metadata = Some(value);
            }
            "contentType" => content_type = Some(text),
            _ => cache_control = Some(text),
        }
    }
    Err(ApiError::invalid(format!(
        "more than {MAX_SETTINGS} form fields before the file"
    )))
}

impl FormFile {
    /// Reads (and drops) whatever followed the file, for at most a few seconds.
    pub(crate) async fn finish(mut rest: multer::Multipart<'static>) {
        let drain = async {
            while let Ok(Some(mut field)) = rest.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    }

    /// The file's stream and what to drain afterwards.
    pub(crate) fn split(self) -> (ByteStream, multer::Multipart<'static>) {
        (self.body, self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// `bytes` in 7-byte chunks: part boundaries fall inside chunks.
    fn stream_of(bytes: &'static [u8]) -> ByteStream {
        Box::pin(futures::stream::iter(
            bytes
                .chunks(7)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        ))
    }

    async fn read_all(mut body: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn the_file_part_is_the_object_and_settings_before_it_are_read() {
        // As supabase-js sends a Blob: cacheControl, metadata, then the file as "".
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n3600\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{\"k\":\"v\"}\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: text/plain\r\n\r\n\
hello, form\r\n--XyZ--\r\n";
        let form = open(stream_of(body), "XyZ".into()).await.unwrap();
        assert_eq!(form.content_type.as_deref(), Some("text/plain"));
        assert_eq!(form.metadata, Some(serde_json::json!({"k":"v"})));
        let (file, rest) = form.split();
        assert_eq!(read_all(file).await, b"hello, form");
        FormFile::finish(rest).await;
    }

    #[tokio::test]
    async fn a_form_without_a_file_or_with_bad_settings_is_refused() {
        let no_file =
            b"--b\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n1\r\n--b--\r\n";
        let error = open(stream_of(no_file), "b".into()).await.unwrap_err();
        assert!(error.message.contains("no file part"), "{}", error.message);
        let bad_metadata =
            b"--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n[1]\r\n--b--\r\n";
        let error = open(stream_of(bad_metadata), "b".into()).await.unwrap_err();
        assert!(error.message.contains("JSON object"), "{}", error.message);
        let truncated =
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nabc";
        let form = open(stream_of(truncated), "b".into()).await.unwrap();
        let (mut file, _) = form.split();
        // Ends in an error (multer repeats it if asked again: stop at the first).
        let mut failed = false;
        while let Some(chunk) = file.next().await {
            if chunk.is_err() {
                failed = true;
                break;
            }
        }
        assert!(
            failed,
            "a body cut before its closing boundary must fail, not store"
        );
    }

    #[test]
    fn only_form_data_has_a_boundary() {
        assert_eq!(
            boundary(Some("multipart/form-data; boundary=abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(boundary(Some("text/plain")), None);
        assert_eq!(boundary(Some("multipart/mixed; boundary=abc")), None);
        assert_eq!(boundary(None), None);
    }
}
