//! Data stored, time-weighted (`db.byte_seconds`, billed per GB-month as DynamoDB
//! bills storage): each sample meters every collection's documents (id and JSON
//! text) and every namespace's live keys (key and JSON text) times the seconds
//! claimed since the last sample (`minicloud_metering::sampled`). Index overhead is
//! not counted. Each collection's sum is a scan of its table, once a sample
//! interval (60 s by default).

use minicloud_metering::Meter;
use minicloud_metering::sampled::claim_seconds;

use crate::Docdb;

/// The sampler's name in `meter_samples`.
pub(crate) const SAMPLER: &str = "stored_bytes";

impl Docdb {
    /// Meters the stored bytes of every collection and namespace since the last
    /// sample; returns the seconds claimed (0 when another replica sampled moments
    /// ago).
    pub async fn meter_stored_bytes(&self) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let seconds = claim_seconds(&mut tx, SAMPLER).await?;
        if seconds == 0 {
            return Ok(0);
        }
        // A collection dropped meanwhile waits on the share lock, so its table is
        // still there when it is summed.
        let collections: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM collections ORDER BY name FOR SHARE")
                .fetch_all(&mut *tx)
                .await?;
        let mut stored: Vec<(String, i64)> = Vec::with_capacity(collections.len());
        for (name,) in collections {
            let (bytes,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(sum(octet_length(id) + octet_length(data::text)), 0)::bigint
                 FROM {}",
                crate::collections::table(&name)
            )))
            .fetch_one(&mut *tx)
            .await?;
            stored.push((name, bytes));
        }
        stored.extend(
            sqlx::query_as::<_, (String, i64)>(
                "SELECT namespace, sum(octet_length(key) + octet_length(value::text))::bigint
                 FROM kv WHERE expires_at IS NULL OR expires_at > now() GROUP BY namespace",
            )
            .fetch_all(&mut *tx)
            .await?,
        );
        for (resource, bytes) in stored.into_iter().filter(|(_, bytes)| *bytes > 0) {
            let byte_seconds = (bytes as u64).saturating_mul(seconds as u64);
            self.meters
                .record(&resource, "", &[(Meter::DbByteSeconds, byte_seconds)]);
        }
        tx.commit().await?;
        Ok(seconds)
    }
}
