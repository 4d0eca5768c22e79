//! Bytes stored, time-weighted (`storage.byte_seconds`, billed per GB-month): each
//! sample meters every bucket's bytes, from the object rows, times the seconds
//! claimed since the last sample (`minicloud_metering::sampled`).

use minicloud_metering::Meter;
use minicloud_metering::sampled::claim_seconds;

use crate::Storage;

/// The sampler's name in `meter_samples`.
pub(crate) const SAMPLER: &str = "stored_bytes";

impl Storage {
    /// Meters the stored bytes of every bucket since the last sample; returns the
    /// seconds claimed (0 when another replica sampled moments ago).
    pub async fn meter_stored_bytes(&self) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let seconds = claim_seconds(&mut tx, SAMPLER).await?;
        if seconds == 0 {
            return Ok(0);
        }
        let buckets: Vec<(String, i64)> = sqlx::query_as(
            "SELECT bucket, sum(size)::bigint FROM objects GROUP BY bucket HAVING sum(size) > 0",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (bucket, bytes) in buckets {
            let byte_seconds = (bytes.max(0) as u64).saturating_mul(seconds as u64);
            self.meters
                .record(&bucket, "", &[(Meter::StorageByteSeconds, byte_seconds)]);
        }
        tx.commit().await?;
        Ok(seconds)
    }
}
