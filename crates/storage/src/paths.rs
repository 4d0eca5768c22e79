//! Object path rules: what a key may be, checked before anything touches a backend.

use minicloud_proto::error::ApiError;
use unicode_normalization::UnicodeNormalization as _;

/// What a backend can hold: S3 keys up to 1,024 bytes, file names up to 255.
const BACKEND_KEY_BYTES: usize = 1024;
const BACKEND_NAME_BYTES: usize = 255;
/// A blob's key is the path and `#<version>` (a 32-digit hex UUID):
/// [`crate::backend::blob_key`].
const BLOB_SUFFIX_BYTES: usize = 1 + 32;
/// The longest path, so its blob key fits an S3 key.
pub(crate) const MAX_PATH_BYTES: usize = BACKEND_KEY_BYTES - BLOB_SUFFIX_BYTES;
pub(crate) const MAX_SEGMENT_BYTES: usize = BACKEND_NAME_BYTES;
/// The longest last segment, so its blob's file name fits the `fs` backend.
pub(crate) const MAX_NAME_BYTES: usize = BACKEND_NAME_BYTES - BLOB_SUFFIX_BYTES;

/// NFC-normalises `raw` and checks it: 1–991 bytes, `/`-separated segments that are
/// non-empty, not `.` or `..`, at most 255 bytes (the last, the object's name, at
/// most 222: its blob adds `#<version>`), without control characters. Unicode is
/// otherwise kept exactly as sent.
pub(crate) fn normalise_path(raw: &str) -> Result<String, ApiError> {
    let path: String = raw.nfc().collect();
    if path.is_empty() {
        return Err(ApiError::invalid("object path is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::invalid(format!(
            "object path longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(ApiError::invalid("object path contains control characters"));
    }
    for segment in path.split('/') {
        match segment {
            "" => {
                return Err(ApiError::invalid(
                    "object path has an empty segment (leading, trailing or double '/')",
                ));
            }
            "." | ".." => {
                return Err(ApiError::invalid(
                    "object path segments may not be '.' or '..'",
                ));
            }
            s if s.len() > MAX_SEGMENT_BYTES => {
                return Err(ApiError::invalid(format!(
                    "object path segment longer than {MAX_SEGMENT_BYTES} bytes"
                )));
            }
            _ => {}
        }
    }
    let name = path.rsplit('/').next().unwrap_or_default();
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::invalid(format!(
            "object name (the path's last segment) longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(path)
}

/// A listing prefix: like a path but may be empty and may end with `/`.
pub(crate) fn normalise_prefix(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let mut prefix = normalise_path(trimmed)?;
    if raw.ends_with('/') {
        prefix.push('/');
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_and_refused_paths() {
        for ok in [
            "a",
            "a/b/c.jpg",
            "ünïcødé/文件.txt",
            ".hidden",
            "a..b",
            "x y/z",
        ] {
            assert!(normalise_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "..", "a/../b", "./a", "a/.", "a\u{0}b", "a\nb", "a\u{7f}",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad:?}");
        }
        assert!(normalise_path(&"a".repeat(256)).is_err());
        // The name's blob adds `#<version>`: 222 bytes is the most a file name allows.
        assert!(normalise_path(&"n".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(normalise_path(&"n".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(normalise_path(&format!("{}/n", "d".repeat(255))).is_ok());
        assert!(
            normalise_path(&vec!["a".repeat(200); 6].join("/")).is_err(),
            "over 1024 bytes"
        );
    }

    #[test]
    fn nfc_normalisation_makes_equivalent_keys_equal() {
        let decomposed = "cafe\u{301}.txt";
        let composed = "caf\u{e9}.txt";
        assert_eq!(normalise_path(decomposed).unwrap(), composed);
    }

    #[test]
    fn prefixes_may_be_empty_or_end_with_a_slash() {
        assert_eq!(normalise_prefix("").unwrap(), "");
        assert_eq!(normalise_prefix("a/b/").unwrap(), "a/b/");
        assert!(normalise_prefix("a//").is_err());
        assert!(normalise_prefix("../").is_err());
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape_or_hide_segments(raw in "[a-z./\\\\\u{0}-\u{1f}é]{0,40}") {
            if let Ok(path) = normalise_path(&raw) {
                prop_assert!(!path.split('/').any(|s| s.is_empty() || s == "." || s == ".."));
                prop_assert!(!path.chars().any(char::is_control));
                prop_assert!(!path.starts_with('/'));
            }
        }
    }
}
