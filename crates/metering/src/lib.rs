//! Meters (docs/billing.md): what each request served — an invocation's billed
//! duration and GB-seconds, a storage request's class and bytes sent, documents
//! read and written, events published and delivered — attributed to a resource
//! and an owner.
//!
//! A service records a request's quantities with [`Meters::record`] before it
//! answers: one line appended to this process's journal ([`journal`]), a few
//! microseconds, no network. A background shipper sends the journal's new lines to
//! the billing service every second; billing adds them to hourly rows and remembers
//! how far each journal was ingested in the same transaction, so a batch shipped
//! twice (a lost answer, a restart) is counted once. A process killed with lines not
//! yet shipped leaves its journal behind, and the next process to start with the
//! same directory ships it.

mod journal;
mod meter;
pub mod sampled;
mod shipper;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minicloud_authz::Caller;
use minicloud_telemetry::grpc_client::ServiceCredential;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use journal::Record;
pub use meter::{Meter, UnknownMeter};
pub use shipper::{ShipError, Shipper};

/// Where meters go, shared by every service of a process.
#[derive(Debug, Clone, clap::Args)]
pub struct MeteringConfig {
    /// Record and ship meters (usage, cost estimates and budgets need them).
    #[arg(
        long = "metering",
        env = "MINICLOUD_METERING",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,
    /// The journals' directory (default: `<data-dir>/meters` under `up`,
    /// `./.minicloud/meters` under `serve`). It must outlive the process: a journal
    /// left behind is shipped by the next process that starts with it.
    #[arg(long = "metering-dir", env = "MINICLOUD_METERING_DIR")]
    pub dir: Option<PathBuf>,
    /// How often journals are shipped to billing, in milliseconds.
    #[arg(
        long = "metering-ship-interval-ms",
        env = "MINICLOUD_METERING_SHIP_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub ship_interval_ms: u64,
    /// How often quantities held over time (bytes stored, provisioned instances)
    /// are sampled, in seconds.
    #[arg(
        long = "metering-sample-interval",
        env = "MINICLOUD_METERING_SAMPLE_INTERVAL",
        default_value_t = sampled::DEFAULT_SAMPLE_INTERVAL_S
    )]
    pub sample_interval_s: u64,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            enabled: true,
            dir: None,
            ship_interval_ms: 1_000,
            sample_interval_s: sampled::DEFAULT_SAMPLE_INTERVAL_S,
        }
    }
}

/// Whether this process records meters: always, except while a benchmark turns it
/// off to measure metering's own cost against the same cloud (`metering-bench`:
/// two clouds differ from each other by more than metering costs).
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns recording on or off for every [`Meters`] of this process (benchmarks).
pub fn set_recording(on: bool) {
    RECORDING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Who a request is metered to: the role, and the subject when there is one
/// (`authenticated:<uid>`, `reporting:fn:thumbnail`, `service`, `anon`).
pub fn owner_of(caller: &Caller) -> String {
    owner(caller.role.name(), caller.uid.as_deref())
}

/// [`owner_of`] for a role and subject held apart (a subscription's owner).
pub fn owner(role: &str, subject: Option<&str>) -> String {
    match subject {
        Some(subject) => format!("{role}:{subject}"),
        None => role.to_owned(),
    }
}

/// A service's meters; cheap to clone. [`Meters::off`] records nothing.
#[derive(Debug, Clone)]
pub struct Meters(Option<Arc<Inner>>);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    service: &'static str,
    writer: Mutex<journal::Writer>,
    quantities: Family<MeterLabel, Counter>,
    /// `quantities`' counter of each meter, by `Meter as usize`: found once, so a
    /// record adds to atomics without a label lookup.
    counters: Vec<Counter>,
    write_errors: Counter,
    billing: Option<(String, ServiceCredential)>,
    ship_interval: Duration,
    sample_interval: Duration,
    /// The scopes budgets cap, as billing last said (refreshed after each shipment).
    caps: std::sync::RwLock<Arc<Vec<Cap>>>,
}

/// A scope a budget caps: `kind` is `all`, `service`, `resource` or `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub budget: String,
    pub kind: String,
    pub value: String,
}

impl Cap {
    fn covers(&self, service: &str, resource: &str, owner: &str) -> bool {
        match self.kind.as_str() {
            "all" => true,
            "service" => self.value == service,
            "resource" => self.value == resource,
            "owner" => self.value == owner,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MeterLabel {
    meter: &'static str,
}

impl Meters {
    pub fn off() -> Meters {
        Meters(None)
    }

    /// A new journal for `service` in `dir`; shipped to `billing_url` (gRPC) with
    /// `credential` once the shipper runs ([`Meters::shipper`]).
    pub fn open(
        config: &MeteringConfig,
        default_dir: &Path,
        service: &'static str,
        billing_url: Option<&str>,
        credential: ServiceCredential,
    ) -> std::io::Result<Meters> {
        if !config.enabled {
            return Ok(Meters::off());
        }
        let dir = config.dir.clone().unwrap_or_else(|| default_dir.to_owned());
        let writer = journal::Writer::create(&dir, service)?;
        let quantities = Family::<MeterLabel, Counter>::default();
        let counters = Meter::ALL
            .iter()
            .map(|meter| {
                quantities
                    .get_or_create(&MeterLabel {
                        meter: meter.as_str(),
                    })
                    .clone()
            })
            .collect();
        Ok(Meters(Some(Arc::new(Inner {
            dir,
            service,
            writer: Mutex::new(writer),
            quantities,
            counters,
            write_errors: Counter::default(),
            billing: billing_url.map(|url| (url.to_owned(), credential)),
            ship_interval: Duration::from_millis(config.ship_interval_ms.max(10)),
            sample_interval: sampled::interval(config.sample_interval_s),
            caps: Default::default(),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The budget that caps a request to `service` (`functions`, `storage`, `db`,
    /// `events`) on `resource` by `owner`, if one does — as of the last shipment
    /// (at most a ship interval old).
    pub fn capped(&self, service: &str, resource: &str, owner: &str) -> Option<String> {
        let inner = self.0.as_ref()?;
        let caps = Arc::clone(&inner.caps.read().unwrap());
        caps.iter()
            .find(|cap| cap.covers(service, resource, owner))
            .map(|cap| cap.budget.clone())
    }

    /// Records what one request served. Called before the answer leaves, so a
    /// request that was answered is in the journal. A failed write (a full disk) is
    /// logged and counted (`meter_write_errors_total`), and the request still served.
    pub fn record(&self, resource: &str, owner: &str, quantities: &[(Meter, u64)]) {
        let Some(inner) = &self.0 else { return };
        if !RECORDING.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let record = Record {
            seq: 0,
            at_ms: now_ms(),
            resource: Cow::Borrowed(resource),
            owner: Cow::Borrowed(owner),
            quantities: Cow::Borrowed(quantities),
        };
        let written = inner.writer.lock().unwrap().append(record);
        match written {
            Ok(()) => {
                for &(meter, amount) in quantities {
                    inner.counters[meter as usize].inc_by(amount);
                }
            }
            Err(error) => {
                inner.write_errors.inc();
                tracing::error!(service = inner.service, %error, "writing a meter failed");
            }
        }
    }

    /// Asks billing to cap `function` at `amount` USD a month (`None`: no cap) — a
    /// function's `max_monthly_cost`, kept by billing as a budget.
    pub async fn set_function_cap(
        &self,
        function: &str,
        amount: Option<&str>,
    ) -> Result<(), tonic::Status> {
        let (url, credential) = self
            .0
            .as_ref()
            .and_then(|inner| inner.billing.clone())
            .ok_or_else(|| {
                tonic::Status::failed_precondition(
                    "metering is off here: a monthly cost cap needs it (--metering)",
                )
            })?;
        let channel =
            minicloud_telemetry::grpc_client::TracedChannel::connect_lazy("billing", &url)
                .map_err(|e| tonic::Status::unavailable(format!("billing URL: {e}")))?
                .with_credential(credential);
        minicloud_proto::billing::v1::billing_service_client::BillingServiceClient::new(channel)
            .set_function_cap(minicloud_proto::billing::v1::SetFunctionCapRequest {
                function: function.to_owned(),
                amount: amount.unwrap_or_default().to_owned(),
            })
            .await?;
        Ok(())
    }

    /// `meter_quantity_total{meter}` and `meter_write_errors_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let Some(inner) = &self.0 else { return };
        registry.register(
            "meter_quantity",
            "Quantities metered by this process, in each meter's base unit",
            inner.quantities.clone(),
        );
        registry.register(
            "meter_write_errors",
            "Meters that could not be written to the journal",
            inner.write_errors.clone(),
        );
    }

    /// The shipper as a service's background task (see [`Meters::shipper`]).
    pub fn shipping_task(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<minicloud_telemetry::server::BackgroundTask> {
        let shipper = self.shipper()?;
        Some(minicloud_telemetry::server::BackgroundTask::new(
            "meter shipper",
            tokio::spawn(shipper.run(cancel.clone())),
        ))
    }

    /// The task that ships this process's journal (and orphans it finds) to billing;
    /// `None` when metering is off or no billing URL was given.
    pub fn shipper(&self) -> Option<Shipper> {
        let inner = self.0.as_ref()?;
        let (url, credential) = inner.billing.clone()?;
        Shipper::new(Arc::clone(inner), &url, credential)
            .inspect_err(|error| tracing::error!(%error, "billing URL"))
            .ok()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::Cap;

    #[test]
    fn a_cap_covers_what_it_names() {
        let cap = |kind: &str, value: &str| Cap {
            budget: "b".into(),
            kind: kind.into(),
            value: value.into(),
        };
        assert!(cap("all", "").covers("functions", "f", "anon"));
        assert!(cap("service", "storage").covers("storage", "b", "anon"));
        assert!(!cap("service", "storage").covers("db", "b", "anon"));
        assert!(cap("resource", "f").covers("functions", "f", "x"));
        assert!(!cap("resource", "f").covers("functions", "g", "x"));
        assert!(cap("owner", "authenticated:u1").covers("db", "c", "authenticated:u1"));
        assert!(!cap("owner", "authenticated:u1").covers("db", "c", "authenticated:u2"));
        assert!(!cap("bogus", "f").covers("functions", "f", "x"));
    }
}
