//! The orphan sweep: blobs that no object row (nor part of an upload in progress) points at — left by a crash between
//! writing bytes and committing metadata, or by a failed delete — are removed once
//! they are older than the configured age (younger ones may be uploads in flight).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::Storage;
use crate::backend::parse_blob_key;

impl Storage {
    /// Removes orphaned blobs older than `min_age` in every bucket; returns how many.
    pub async fn sweep_orphans(
        &self,
        min_age: Duration,
    ) -> Result<usize, crate::StorageStartError> {
        let buckets: Vec<String> = sqlx::query_scalar("SELECT name FROM buckets")
            .fetch_all(&self.pool)
            .await?;
        let cutoff = SystemTime::now() - min_age;
        let mut removed = 0;
        for bucket in buckets {
            let candidates: Vec<(String, String, String)> = self
                .backend
                .list(&bucket)
                .await?
                .into_iter()
                .filter(|(_, modified)| *modified <= cutoff)
                .filter_map(|(key, _)| {
                    let (path, version) = parse_blob_key(&key)?;
                    Some((key.clone(), path.to_owned(), version.to_owned()))
                })
                .collect();
            for chunk in candidates.chunks(1000) {
                let paths: Vec<&str> = chunk.iter().map(|(_, p, _)| p.as_str()).collect();
                let versions: Vec<&str> = chunk.iter().map(|(_, _, v)| v.as_str()).collect();
                let live: HashSet<(String, String)> = sqlx::query_as(
                    "SELECT path, version FROM objects WHERE bucket = $1
                     AND (path, version) IN (SELECT * FROM unnest($2::text[], $3::text[]))
                     UNION ALL
                     SELECT u.path, p.version FROM multipart_parts p
                       JOIN multipart_uploads u USING (upload_id)
                     WHERE u.bucket = $1
                     AND (u.path, p.version) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
                )
                .bind(&bucket)
                .bind(&paths)
                .bind(&versions)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
                for (key, path, version) in chunk {
                    if !live.contains(&(path.clone(), version.clone())) {
                        self.backend.delete(&bucket, key).await?;
                        removed += 1;
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed orphaned blobs");
        }
        Ok(removed)
    }
}

pub(crate) fn spawn(
    storage: Storage,
    every: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let min_age = Duration::from_secs(storage.config.orphan_age_s);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(error) = storage.sweep_orphans(min_age).await {
                tracing::warn!(%error, "orphan sweep failed");
            }
        }
    })
}
