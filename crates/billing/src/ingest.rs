//! `BillingService.Ingest`: journal records into hourly rows, exactly once.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use minicloud_metering::Meter;
use minicloud_proto::billing::v1::billing_service_server::BillingService;
use minicloud_proto::billing::v1::{
    CappedScope, CapsRequest, CapsResponse, IngestRequest, IngestResponse, SetFunctionCapRequest,
    SetFunctionCapResponse, UsageRecord,
};
use minicloud_proto::error::ApiError;
use tonic::{Request, Response, Status};

use crate::Billing;
use crate::budgets::Scope;

/// Records per call (the shipper sends at most 5,000).
pub(crate) const MAX_RECORDS: usize = 10_000;
const MAX_QUANTITIES: usize = 16;
const MAX_RESOURCE_BYTES: usize = 1_024;
const MAX_OWNER_BYTES: usize = 512;
const MAX_JOURNAL_BYTES: usize = 128;

#[derive(Debug)]
pub(crate) struct BillingGrpc(pub(crate) Billing);

type HourlyKey = (DateTime<Utc>, Meter, String, String);

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        self.0.authz.grpc_service_caller(request.metadata()).await?;
        let request = request.into_inner();
        let rows = validate(&request)?;
        let through = self.0.ingest(&request.journal, rows).await?;
        // New usage may cross a budget's threshold: evaluate now, not at the tick.
        self.0.budgets_changed.notify_one();
        Ok(Response::new(IngestResponse {
            ingested_through: through,
        }))
    }

    async fn set_function_cap(
        &self,
        request: Request<SetFunctionCapRequest>,
    ) -> Result<Response<SetFunctionCapResponse>, Status> {
        self.0.authz.grpc_service_caller(request.metadata()).await?;
        let request = request.into_inner();
        self.0
            .set_function_cap(&request.function, &request.amount)
            .await?;
        self.0.budgets_changed.notify_one();
        Ok(Response::new(SetFunctionCapResponse {}))
    }

    async fn caps(&self, request: Request<CapsRequest>) -> Result<Response<CapsResponse>, Status> {
        self.0.authz.grpc_service_caller(request.metadata()).await?;
        let caps = self
            .0
            .caps()
            .await?
            .into_iter()
            .map(|(budget, scope)| {
                let (kind, value) = match scope {
                    Scope::All => ("all", String::new()),
                    Scope::Service(v) => ("service", v),
                    Scope::Resource(v) => ("resource", v),
                    Scope::Owner(v) => ("owner", v),
                };
                CappedScope {
                    budget,
                    kind: kind.to_owned(),
                    value,
                }
            })
            .collect();
        Ok(Response::new(CapsResponse { caps }))
    }
}

/// The records as `(seq, hourly key, amount)`, refused whole if any is malformed.
fn validate(request: &IngestRequest) -> Result<Vec<(u64, HourlyKey, u64)>, Status> {
    let journal = &request.journal;
    if journal.is_empty()
        || journal.len() > MAX_JOURNAL_BYTES
        || !journal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Status::invalid_argument(
            "journal must be 1-128 letters, digits, '-' or '_'",
        ));
    }
    if request.records.len() > MAX_RECORDS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_RECORDS} records per call"
        )));
    }
    let mut rows = Vec::new();
    let mut previous = 0;
    for record in &request.records {
        if record.seq <= previous {
            return Err(Status::invalid_argument(
                "records' seq must start at 1 and increase",
            ));
        }
        previous = record.seq;
        let hour = hour_of(record)?;
        check_text("resource", &record.resource, MAX_RESOURCE_BYTES)?;
        check_text("owner", &record.owner, MAX_OWNER_BYTES)?;
        if record.quantities.len() > MAX_QUANTITIES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_QUANTITIES} quantities per record"
            )));
        }
        for quantity in &record.quantities {
            let meter: Meter = quantity
                .meter
                .parse()
                .map_err(|e| Status::invalid_argument(format!("{e}")))?;
            if quantity.amount > i64::MAX as u64 / 2 {
                return Err(Status::invalid_argument("quantity out of range"));
            }
            rows.push((
                record.seq,
                (hour, meter, record.resource.clone(), record.owner.clone()),
                quantity.amount,
            ));
        }
    }
    Ok(rows)
}

fn hour_of(record: &UsageRecord) -> Result<DateTime<Utc>, Status> {
    // Between 2000 and 2200: anything else is a clock gone wrong, not usage.
    const RANGE: std::ops::Range<i64> = 946_684_800_000..7_258_118_400_000;
    if !RANGE.contains(&record.at_ms) {
        return Err(Status::invalid_argument("at_ms out of range"));
    }
    DateTime::from_timestamp_millis(record.at_ms)
        .and_then(|at| at.duration_trunc(TimeDelta::hours(1)).ok())
        .ok_or_else(|| Status::invalid_argument("at_ms out of range"))
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max || value.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field} must be at most {max} bytes, without NUL"
        )));
    }
    Ok(())
}

impl Billing {
    /// Adds the records above the journal's ingested sequence to the hourly rows and
    /// moves the sequence, in one transaction; returns the new sequence.
    async fn ingest(
        &self,
        journal: &str,
        rows: Vec<(u64, HourlyKey, u64)>,
    ) -> Result<u64, ApiError> {
        let mut tx = self.pool.begin().await.map_err(ApiError::internal)?;
        sqlx::query("INSERT INTO journals (journal, ingested_through) VALUES ($1, 0) ON CONFLICT (journal) DO NOTHING")
            .bind(journal)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        let (ingested,): (i64,) =
            sqlx::query_as("SELECT ingested_through FROM journals WHERE journal = $1 FOR UPDATE")
                .bind(journal)
                .fetch_one(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        let ingested = ingested as u64;
        let mut through = ingested;
        // Sorted by key: concurrent ingests lock shared rows in one order.
        let mut sums: BTreeMap<HourlyKey, u64> = BTreeMap::new();
        let mut records = 0u64;
        for (seq, key, amount) in rows {
            if seq <= ingested {
                continue;
            }
            if seq > through {
                through = seq;
                records += 1;
            }
            *sums.entry(key).or_default() += amount;
        }
        if through == ingested {
            tx.rollback().await.map_err(ApiError::internal)?;
            return Ok(ingested);
        }
        let mut hours = Vec::with_capacity(sums.len());
        let mut meters = Vec::with_capacity(sums.len());
        let mut resources = Vec::with_capacity(sums.len());
        let mut owners = Vec::with_capacity(sums.len());
        let mut quantities = Vec::with_capacity(sums.len());
        for ((hour, meter, resource, owner), amount) in sums {
            hours.push(hour);
            meters.push(meter.as_str());
            resources.push(resource);
            owners.push(owner);
            quantities.push(amount as i64);
        }
        sqlx::query(
            "INSERT INTO usage_hourly (hour, meter, resource, owner, quantity)
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[])
             ON CONFLICT (hour, meter, resource, owner)
             DO UPDATE SET quantity = usage_hourly.quantity + EXCLUDED.quantity",
        )
        .bind(&hours)
        .bind(&meters)
        .bind(&resources)
        .bind(&owners)
        .bind(&quantities)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
        sqlx::query(
            "UPDATE journals SET ingested_through = $2, updated_at = now() WHERE journal = $1",
        )
        .bind(journal)
        .bind(through as i64)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        if ingested + records != through {
            tracing::warn!(
                journal,
                ingested,
                through,
                records,
                "a meter journal skipped sequence numbers"
            );
        }
        self.metrics.records.inc_by(records);
        Ok(through)
    }
}
