//! Provisioned concurrency, time-weighted (`function.provisioned_mb_ms`, billed per
//! GB-second as Lambda bills provisioned concurrency): each sample meters every
//! function's configured memory × `provisioned_concurrency` × the milliseconds of
//! the seconds claimed since the last sample (`minicloud_metering::sampled`). Like
//! Lambda, the configured amount is billed, whether or not the instances are up or
//! serving; a change within an interval counts from the next sample.

use minicloud_metering::Meter;
use minicloud_metering::sampled::claim_seconds;

use crate::Invoker;

/// The sampler's name in `meter_samples`.
pub(crate) const SAMPLER: &str = "provisioned_concurrency";

impl Invoker {
    /// Meters provisioned instances since the last sample; returns the seconds
    /// claimed (0 when another replica sampled moments ago).
    pub async fn meter_provisioned(&self) -> Result<i64, sqlx::Error> {
        let mut tx = self.0.pool.begin().await?;
        let seconds = claim_seconds(&mut tx, SAMPLER).await?;
        if seconds == 0 {
            return Ok(0);
        }
        let functions: Vec<(String, i32, i32)> = sqlx::query_as(
            "SELECT name, memory_mb, provisioned_concurrency FROM functions
             WHERE provisioned_concurrency > 0",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (name, memory_mb, instances) in functions {
            let mb_ms = (memory_mb.max(0) as u64)
                .saturating_mul(instances.max(0) as u64)
                .saturating_mul(seconds as u64 * 1_000);
            self.0
                .engine
                .meters
                .record(&name, "", &[(Meter::FunctionProvisionedMbMs, mb_ms)]);
        }
        tx.commit().await?;
        Ok(seconds)
    }
}
