//! Quantities held over time rather than served by a request — bytes stored,
//! instances kept provisioned — metered as quantity × seconds. Every sample
//! interval one replica claims the whole seconds since the last sample of that kind
//! (a row in the service's own schema, moved in whole seconds, so no second is
//! counted twice or lost across replicas and restarts) and records what is held
//! times those seconds.

use std::future::Future;
use std::time::Duration;

use minicloud_telemetry::server::BackgroundTask;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::Meters;

/// Creates the sample table in the pool's schema and starts each of `samplers`'
/// clock now (a sampler already known keeps its time).
pub async fn ensure_samplers(pool: &PgPool, samplers: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS meter_samples (
             sampler    text PRIMARY KEY,
             sampled_at timestamptz NOT NULL
         )",
    )
    .execute(pool)
    .await?;
    for sampler in samplers {
        sqlx::query(
            "INSERT INTO meter_samples (sampler, sampled_at) VALUES ($1, now())
             ON CONFLICT (sampler) DO NOTHING",
        )
        .bind(sampler)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Claims, in the caller's transaction, the whole seconds since `sampler` last
/// sampled; the remainder stays for the next sample. 0 when another replica sampled
/// less than a second ago. The caller records its quantities before it commits: a
/// crash in between counts the interval again at the next sample rather than
/// losing it.
pub async fn claim_seconds(tx: &mut PgConnection, sampler: &str) -> Result<i64, sqlx::Error> {
    let claimed: Option<(i64,)> = sqlx::query_as(
        "WITH previous AS (
             SELECT sampled_at, floor(extract(epoch FROM now() - sampled_at))::bigint AS seconds
             FROM meter_samples WHERE sampler = $1 FOR UPDATE)
         UPDATE meter_samples s
         SET sampled_at = previous.sampled_at + make_interval(secs => previous.seconds)
         FROM previous WHERE s.sampler = $1 AND previous.seconds >= 1
         RETURNING previous.seconds",
    )
    .bind(sampler)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(claimed.map_or(0, |(seconds,)| seconds))
}

impl Meters {
    /// Runs `sample` every sample interval (`--metering-sample-interval`) until
    /// `cancel`, as a service's background task; `None` when metering is off.
    pub fn sampling_task<F, Fut>(
        &self,
        name: &'static str,
        cancel: &CancellationToken,
        sample: F,
    ) -> Option<BackgroundTask>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<i64, sqlx::Error>> + Send,
    {
        let interval = self.0.as_ref()?.sample_interval;
        let cancel = cancel.clone();
        Some(BackgroundTask::new(
            name,
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(error) = sample().await {
                        tracing::warn!(sampler = name, %error, "sampling a meter failed");
                    }
                }
            }),
        ))
    }
}

/// The sample interval's default, seconds.
pub(crate) const DEFAULT_SAMPLE_INTERVAL_S: u64 = 60;

pub(crate) fn interval(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}
