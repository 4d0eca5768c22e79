//! The billing service (`/billing/v1`, docs/billing.md): usage from every service's
//! meters (ingested over gRPC from their journals, exactly once), summed by period,
//! service, resource and owner, and priced with a price sheet.

mod budgets;
mod ingest;
mod month;
pub mod prices;
mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use minicloud_authz::Authz;
use minicloud_proto::billing::v1::billing_service_server::BillingServiceServer;
use minicloud_proto::openapi::ErrorResponses;
use minicloud_proto::services::ServiceName;
use minicloud_telemetry::metrics::ServiceMetrics;
use minicloud_telemetry::server::{
    BackgroundTask, DependencyCheck, Service, ServiceHost, readiness,
};
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use prices::PricingConfig;

pub const SCHEMA: &str = "billing";

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&ErrorResponses),
    info(
        title = "minicloud billing",
        description = "Usage metered by every service, and its estimated cost from the price sheet."
    ),
    paths(
        usage::usage,
        usage::cost,
        usage::forecast,
        usage::prices,
        budgets::create,
        budgets::list,
        budgets::get,
        budgets::replace,
        budgets::delete
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct BillingConfig {
    #[command(flatten)]
    pub pricing: PricingConfig,
    /// Billing's clock when not the wall clock's (tests of periods and forecasts).
    #[arg(skip)]
    pub clock: Option<Clock>,
}

/// What time it is for billing (periods, forecasts): the wall clock, or a test's.
#[derive(Clone)]
pub struct Clock(pub Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", (self.0)())
    }
}

#[derive(Debug, Clone)]
pub struct Billing(Arc<BillingState>);

pub struct BillingState {
    pub(crate) pool: PgPool,
    pub(crate) authz: Arc<Authz>,
    pub(crate) pricing: PricingConfig,
    pub(crate) metrics: BillingMetrics,
    pub(crate) relay: minicloud_outbox::Relay,
    /// Wakes the budget evaluator (new usage, a changed budget).
    pub(crate) budgets_changed: tokio::sync::Notify,
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
    #[error("outbox: {0}")]
    Outbox(#[from] minicloud_outbox::OutboxError),
    #[error("bus URL: {0}")]
    BusUrl(#[from] tonic::transport::Error),
}

impl Billing {
    /// Migrates and connects the outbox relay (budget alerts) to the bus at
    /// `bus_grpc_url`.
    pub async fn new(
        config: BillingConfig,
        pool: PgPool,
        authz: Arc<Authz>,
        bus_grpc_url: &str,
    ) -> Result<Billing, BillingStartError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        minicloud_outbox::ensure_table(&pool).await?;
        let relay = minicloud_outbox::Relay::new(
            pool.clone(),
            bus_grpc_url,
            authz.service_credential(),
            minicloud_outbox::RelayConfig::default(),
        )?;
        Ok(Billing(Arc::new(BillingState {
            pool,
            authz,
            pricing: config.pricing,
            metrics: BillingMetrics::default(),
            relay,
            budgets_changed: tokio::sync::Notify::new(),
            clock: config.clock.unwrap_or_else(|| Clock(Arc::new(Utc::now))),
        })))
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock.0)()
    }
}

/// How often budgets are evaluated without new usage (the forecast moves with time,
/// a period rolls over).
const EVALUATE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Service for Billing {
    const NAME: ServiceName = ServiceName::Billing;

    /// The outbox relay (budget alerts to the bus) and the budget evaluator.
    fn background(&self, cancel: &CancellationToken) -> Vec<BackgroundTask> {
        let billing = self.clone();
        let stop = cancel.clone();
        let evaluator = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = billing.budgets_changed.notified() => {}
                    _ = tokio::time::sleep(EVALUATE_EVERY) => {}
                }
                if let Err(error) = billing.evaluate_budgets().await {
                    tracing::warn!(%error, "evaluating budgets failed");
                }
            }
        });
        vec![
            BackgroundTask::new("outbox relay", self.relay.clone().spawn(cancel.clone())),
            BackgroundTask::new("budget evaluator", evaluator),
        ]
    }

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
            .route(
                "/billing/v1/budgets",
                post(budgets::create).get(budgets::list),
            )
            .route(
                "/billing/v1/budgets/{name}",
                get(budgets::get)
                    .put(budgets::replace)
                    .delete(budgets::delete),
            )
            .with_state(self.clone());
        let records = self.metrics.records.clone();
        ServiceHost::new(
            Self::NAME,
            rest,
            readiness,
            ServiceMetrics::new("billing", |registry| {
                self.relay.register_metrics(registry);
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
