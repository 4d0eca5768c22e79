//! Bytes stored, time-weighted (`storage.byte_seconds`, billed per GB-month): every
//! interval one replica claims the time since the last sample (a row moved in
//! whole seconds, so no second is counted twice or lost across replicas and
//! restarts) and meters each bucket's bytes, from the object rows, times it.

use std::time::Duration;

use minicloud_metering::Meter;
use tokio_util::sync::CancellationToken;

use crate::Storage;

impl Storage {
    /// Meters the stored bytes of every bucket since the last sample; returns the
    /// seconds claimed (0 when another replica sampled moments ago).
    pub async fn meter_stored_bytes(&self) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Whole seconds only: the remainder stays for the next sample.
        let claimed: Option<(i64,)> = sqlx::query_as(
            "WITH previous AS (
                 SELECT sampled_at, floor(extract(epoch FROM now() - sampled_at))::bigint AS seconds
                 FROM stored_bytes_sample WHERE id = 1 FOR UPDATE)
             UPDATE stored_bytes_sample s
             SET sampled_at = previous.sampled_at + make_interval(secs => previous.seconds)
             FROM previous WHERE s.id = 1 AND previous.seconds >= 1
             RETURNING previous.seconds",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seconds,)) = claimed else {
            return Ok(0);
        };
        let buckets: Vec<(String, i64)> = sqlx::query_as(
            "SELECT bucket, sum(size)::bigint FROM objects GROUP BY bucket HAVING sum(size) > 0",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Recorded before the claim commits: a crash in between counts the
        // interval again at the next sample rather than losing it.
        for (bucket, bytes) in buckets {
            let byte_seconds = (bytes.max(0) as u64).saturating_mul(seconds as u64);
            self.meters
                .record(&bucket, "", &[(Meter::StorageByteSeconds, byte_seconds)]);
        }
        tx.commit().await?;
        Ok(seconds)
    }
}

/// Samples every `interval` until `cancel`.
pub(crate) fn spawn(
    storage: Storage,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(error) = storage.meter_stored_bytes().await {
                tracing::warn!(%error, "metering stored bytes failed");
            }
        }
    })
}
