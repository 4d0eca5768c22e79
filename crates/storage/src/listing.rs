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

/// A cursor that starts a listing after `key` (S3's `start-after`).
pub(crate) fn cursor_after(key: &str) -> String {
    encode(&Cursor {
        after: Some(key.to_owned()),
        from: None,
    })
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

/// Supabase Storage's `list` body (what supabase-js and supabase-py send): a folder,
/// a page by offset, a sort and a name filter.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FolderListIn {
    /// The folder (`""` for the bucket's top level); a trailing `/` is optional.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub offset: Option<i64>,
    #[serde(default, rename = "sortBy")]
    pub sort_by: Option<SortBy>,
    /// Only entries whose name starts with this (case-insensitive).
    #[serde(default)]
    pub search: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SortBy {
    /// `name` (default), `created_at`, `updated_at` or `last_accessed_at`.
    #[serde(default)]
    pub column: Option<String>,
    /// `asc` (default) or `desc`.
    #[serde(default)]
    pub order: Option<String>,
}

/// One entry of a folder as Supabase lists it: an object (`id` set) or a sub-folder
/// (`id` and the rest `null`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FolderEntry {
    /// The name inside the folder.
    pub name: String,
    pub id: Option<String>,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_accessed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `{eTag, size, mimetype, cacheControl, lastModified, contentLength,
    /// httpStatusCode}` as Supabase reports it.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Sorting in memory needs every entry of the folder; past this many, refuse.
const MAX_SORTED_ENTRIES: usize = 10_000;

fn uuid_of(version: &str) -> String {
    uuid::Uuid::parse_str(version)
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_else(|_| version.to_owned())
}

impl FolderEntry {
    fn object(folder: &str, object: ObjectRecord) -> FolderEntry {
        let metadata = serde_json::json!({
            "eTag": format!("\"{}\"", object.etag),
            "size": object.size,
            "mimetype": object.content_type,
            "cacheControl": object.cache_control.as_deref().unwrap_or("no-cache"),
            "lastModified": object.updated_at,
            "contentLength": object.size,
            "httpStatusCode": 200,
        });
        FolderEntry {
            name: object.name[folder.len()..].to_owned(),
            id: Some(uuid_of(&object.version)),
            created_at: Some(object.created_at),
            updated_at: Some(object.updated_at),
            last_accessed_at: Some(object.updated_at),
            metadata: Some(metadata),
        }
    }

    fn folder(folder: &str, prefix: &str) -> FolderEntry {
        FolderEntry {
            name: prefix[folder.len()..].trim_end_matches('/').to_owned(),
            id: None,
            created_at: None,
            updated_at: None,
            last_accessed_at: None,
            metadata: None,
        }
    }
}

impl Storage {
    /// One page of a folder, Supabase's way: objects and sub-folders by name (or by
    /// a date, folders first), `offset` entries skipped, `search` a name prefix.
    pub(crate) async fn list_folder(
        &self,
        bucket: &str,
        folder: &str,
        input: &FolderListIn,
    ) -> Result<Vec<FolderEntry>, ApiError> {
        let limit = match input.limit {
            None => 100,
            Some(n) if (1..=1000).contains(&n) => n as usize,
            Some(_) => return Err(ApiError::invalid("limit must be 1 to 1000")),
        };
        let offset = match input.offset {
            None => 0,
            Some(n) if (0..=1_000_000).contains(&n) => n as usize,
            Some(_) => return Err(ApiError::invalid("offset must be 0 to 1000000")),
        };
        let (column, descending) = match &input.sort_by {
            None => ("name", false),
            Some(sort) => {
                let column = match sort.column.as_deref().unwrap_or("name") {
                    c @ ("name" | "created_at" | "updated_at" | "last_accessed_at") => c,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "sortBy.column {other:?}: name, created_at, updated_at or last_accessed_at"
                        )));
                    }
                };
                let descending = match sort.order.as_deref().map(str::to_ascii_lowercase) {
                    None => false,
                    Some(o) if o == "asc" => false,
                    Some(o) if o == "desc" => true,
                    Some(_) => return Err(ApiError::invalid("sortBy.order: asc or desc")),
                };
                (column, descending)
            }
        };
        let search = input.search.as_deref().unwrap_or("").to_lowercase();
        // In key order the folder's entries come sorted by name: a name-ascending
        // page skips its offset without keeping it and stops once full, however
        // deep the offset. Any other order needs the whole folder in memory.
        let by_key_order = column == "name" && !descending;
        let mut skipped = 0usize;
        let mut entries: Vec<FolderEntry> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_objects(bucket, folder, Some("/"), 1000, cursor.as_deref())
                .await?;
            let mut found: Vec<FolderEntry> = page
                .prefixes
                .iter()
                .map(|p| FolderEntry::folder(folder, p))
                .chain(
                    page.objects
                        .into_iter()
                        .map(|o| FolderEntry::object(folder, o)),
                )
                .filter(|e| e.name.to_lowercase().starts_with(&search))
                .collect();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            if by_key_order {
                let skip = (offset - skipped).min(found.len());
                skipped += skip;
                entries.extend(found.into_iter().skip(skip).take(limit - entries.len()));
                if entries.len() == limit || page.next_cursor.is_none() {
                    return Ok(entries);
                }
            } else {
                entries.extend(found);
                if page.next_cursor.is_none() {
                    break;
                }
                if entries.len() > MAX_SORTED_ENTRIES {
                    return Err(ApiError::invalid(format!(
                        "sorting by {column} or descending is done for folders of at most \
                         {MAX_SORTED_ENTRIES} entries; list by name instead"
                    )));
                }
            }
            cursor = page.next_cursor;
        }
        entries.sort_by(|a, b| {
            let by = match column {
                "name" => a.name.cmp(&b.name),
                "created_at" => a.created_at.cmp(&b.created_at),
                _ => a.updated_at.cmp(&b.updated_at),
            };
            if descending { by.reverse() } else { by }
        });
        Ok(entries.into_iter().skip(offset).take(limit).collect())
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
