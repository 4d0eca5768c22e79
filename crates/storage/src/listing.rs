//! Listing by prefix with an optional delimiter and cursor pagination, S3-style:
//! keys sharing the part up to the next delimiter collapse into one prefix.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minicloud_proto::error::ApiError;
use serde::{Deserialize, Serialize};

use crate::Storage;
use crate::objects::{ObjectRecord, object_columns};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListIn {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListOut {
    pub objects: Vec<ObjectRecord>,
    pub prefixes: Vec<String>,
    pub next_cursor: Option<String>,
}

/// The smallest string greater than every string starting with `prefix`, or `None`
/// when there is none (all of `prefix` is U+10FFFF).
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Where the next page starts: after an object, or past a whole common prefix.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// The next key to consider is strictly greater than this (object) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    /// ... or at least this (first key past a common prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
}

fn encode(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default())
}

fn decode(text: &str) -> Result<Cursor, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::invalid("invalid cursor"))
}

impl Storage {
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ListOut, ApiError> {
        let cursor = cursor.map(decode).transpose()?.unwrap_or(Cursor {
            after: None,
            from: None,
        });
        // Start at the later of the prefix and the cursor position.
        let mut after = cursor.after;
        let mut from = cursor.from.unwrap_or_default();
        if from.as_str() < prefix {
            from = prefix.to_owned();
        }
        let mut objects = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last: Option<Cursor> = None;
        'pages: loop {
            let rows = sqlx::query_as::<_, ObjectRecord>(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE bucket = $1 AND path >= $2 AND ($3::text IS NULL OR path > $3)
                  AND starts_with(path, $4) ORDER BY path LIMIT $5"
            ))
            .bind(bucket)
            .bind(&from)
            .bind(&after)
            .bind(prefix)
            .bind((limit + 1) as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(ApiError::internal)?;
            let exhausted = rows.len() <= limit;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if objects.len() + prefixes.len() == limit {
                    // One more entry exists: the page is full and there is a next one.
                    let next = last.take().map(|c| encode(&c));
                    return Ok(ListOut {
                        objects,
                        prefixes,
                        next_cursor: next,
                    });
                }
                let rest = &row.name[prefix.len()..];
                match delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
                    Some(end) => {
                        let common = format!("{prefix}{}", &rest[..end]);
                        let next_from = successor(&common);
                        prefixes.push(common);
                        match next_from {
                            Some(next_from) => {
                                last = Some(Cursor {
                                    after: None,
                                    from: Some(next_from.clone()),
                                });
                                from = next_from;
                                after = None;
                                continue 'pages;
                            }
                            None => break 'pages,
                        }
                    }
                    None => {
                        last = Some(Cursor {
                            after: Some(row.name.clone()),
                            from: None,
                        });
                        after = Some(row.name.clone());
                        objects.push(row);
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(ListOut {
            objects,
            prefixes,
            next_cursor: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_is_the_first_string_past_a_prefix() {
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("").as_deref(), None);
        assert_eq!(successor("\u{10FFFF}").as_deref(), None);
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
