//! The billing service (`/billing/v1`, docs/billing.md): usage from every service's
//! meters (ingested over gRPC from their journals, exactly once), summed by period,
//! service, resource and owner, and priced with a price sheet.

mod ingest;
pub mod prices;
mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use chrono::{DateTime, Utc};
use minicloud_authz::Authz;
use minicloud_proto::billing::v1::billing_service_server::BillingServiceServer;
use minicloud_proto::openapi::ErrorResponses;
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{DependencyCheck, Service, ServiceHost, readiness};
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;

pub use prices::PricingConfig;

pub const SCHEMA: &str = "billing";

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud billing",
        description = "Usage metered by every service, and its estimated cost from the price sheet."
    ),
    paths(usage::usage, usage::cost, usage::forecast, usage::prices),
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct BillingConfig {
    #[command(flatten)]
    pub pricing: PricingConfig,
}

/// What time it is for billing: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Billing(Arc<BillingState>);

pub struct BillingState {
    pub(crate) pool: PgPool,
    pub(crate) authz: Arc<Authz>,
    pub(crate) pricing: PricingConfig,
    pub(crate) metrics: BillingMetrics,
    clock: Clock,
}

impl std::fmt::Debug for BillingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingState").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(crate) struct BillingMetrics {
    pub(crate) records: Counter,
}

impl std::ops::Deref for Billing {
    type Target = BillingState;
    fn deref(&self) -> &BillingState {
        &self.0
    }
}

impl FromRef<Billing> for Arc<Authz> {
    fn from_ref(billing: &Billing) -> Self {
        Arc::clone(&billing.0.authz)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BillingStartError {
    #[error("migrating the billing schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Billing {
    pub async fn new(
        config: BillingConfig,
        pool: PgPool,
        authz: Arc<Authz>,
    ) -> Result<Billing, BillingStartError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Billing(Arc::new(BillingState {
            pool,
            authz,
            pricing: config.pricing,
            metrics: BillingMetrics::default(),
            clock: Arc::new(Utc::now),
        })))
    }

    /// The same service reading time from `clock` (tests move it).
    pub fn with_clock(self, clock: Clock) -> Billing {
        let state = Arc::try_unwrap(self.0).unwrap_or_else(|shared| BillingState {
            pool: shared.pool.clone(),
            authz: Arc::clone(&shared.authz),
            pricing: shared.pricing.clone(),
            metrics: BillingMetrics::default(),
            clock: Arc::clone(&shared.clock),
        });
        Billing(Arc::new(BillingState { clock, ..state }))
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

impl Service for Billing {
    const NAME: ServiceName = ServiceName::Billing;

    fn host(self) -> ServiceHost {
        let pool = self.pool.clone();
        let readiness = readiness(move || {
            let pool = pool.clone();
            async move { vec![DependencyCheck::postgres(&pool).await] }
        });
        let rest = Router::new()
            .route("/billing/v1/usage", get(usage::usage))
            .route("/billing/v1/cost", get(usage::cost))
            .route("/billing/v1/forecast", get(usage::forecast))
            .route("/billing/v1/prices", get(usage::prices))
            .with_state(self.clone());
        let records = self.metrics.records.clone();
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            ServiceMetrics::new("billing", |registry| {
                registry.register(
                    "billing_ingested_records",
                    "Meter journal records added to usage",
                    records,
                )
            }),
        )
        .openapi(&<ApiDoc as utoipa::OpenApi>::openapi())
        .grpc(
            BillingServiceServer::new(ingest::BillingGrpc(self))
                .max_decoding_message_size(16 * 1024 * 1024),
        )
    }
}

#[cfg(test)]
mod openapi_spec {
    #[test]
    fn the_committed_spec_matches_the_code() {
        minicloud_proto::openapi::check_committed_spec_of::<super::ApiDoc>("billing");
    }
}
