//! Ships journals to billing: this process's own as it grows, and orphans — the
//! journals of processes that died — whole, then deletes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use minicloud_proto::billing::v1::billing_service_client::BillingServiceClient;
use minicloud_proto::billing::v1::{CapsRequest, IngestRequest, Quantity, UsageRecord};
use minicloud_telemetry::grpc_client::{ServiceCredential, TracedChannel};
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::journal::{self, Record};

/// Records per `Ingest` call: well under gRPC's 4 MiB message limit.
const BATCH_RECORDS: usize = 5_000;
/// A fully shipped journal larger than this is replaced by a fresh one and deleted.
const ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// How often the directory is scanned for journals of dead processes.
const ORPHAN_SCAN: Duration = Duration::from_secs(30);
/// Longest wait between attempts while billing is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("reading the journal: {0}")]
    Io(#[from] std::io::Error),
    #[error("billing refused or was unreachable: {0}")]
    Billing(#[from] tonic::Status),
}

/// Ships one process's journal; see [`crate::Meters::shipper`].
#[derive(Debug)]
pub struct Shipper {
    inner: Arc<Inner>,
    client: BillingServiceClient<TracedChannel>,
    /// The journal being shipped and how far: its id, byte offset, last sequence.
    journal: String,
    offset: u64,
    shipped_seq: u64,
}

impl Shipper {
    pub(crate) fn new(
        inner: Arc<Inner>,
        billing_url: &str,
        credential: ServiceCredential,
    ) -> Result<Shipper, tonic::transport::Error> {
        let channel =
            TracedChannel::connect_lazy("billing", billing_url)?.with_credential(credential);
        Ok(Shipper {
            inner,
            client: BillingServiceClient::new(channel),
            journal: String::new(),
            offset: 0,
            shipped_seq: 0,
        })
    }

    /// Ships every ship interval until `cancel`, then once more (best effort, as
    /// the process drains: what is left is shipped by the next start).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut next_orphan_scan = Instant::now();
        let mut backoff = self.inner.ship_interval;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            let mut result = self.ship_now().await;
            if result.is_ok() {
                result = self.refresh_caps().await;
            }
            if result.is_ok() && Instant::now() >= next_orphan_scan {
                result = self.ship_orphans().await;
                next_orphan_scan = Instant::now() + ORPHAN_SCAN;
            }
            backoff = match result {
                Ok(()) => self.inner.ship_interval,
                Err(error) => {
                    tracing::warn!(service = self.inner.service, %error, "shipping meters failed; retrying");
                    (backoff * 2).min(MAX_BACKOFF)
                }
            };
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ship_now()).await;
    }

    /// Ships everything this process's journal holds now.
    pub async fn ship_now(&mut self) -> Result<(), ShipError> {
        let (id, file) = {
            let writer = self.inner.writer.lock().unwrap();
            (writer.id.clone(), Arc::clone(&writer.file))
        };
        if id != self.journal {
            self.journal = id.clone();
            self.offset = 0;
            self.shipped_seq = 0;
        }
        loop {
            let offset = self.offset;
            let file = Arc::clone(&file);
            let (records, end) = tokio::task::spawn_blocking(move || {
                journal::read_from(&file, offset, BATCH_RECORDS)
            })
            .await
            .map_err(std::io::Error::other)??;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            self.send(&id, records).await?;
            self.offset = end;
            self.shipped_seq = last;
        }
        self.rotate_if_shipped(&id)?;
        Ok(())
    }

    /// What budgets cap now, for [`crate::Meters::capped`].
    pub async fn refresh_caps(&mut self) -> Result<(), ShipError> {
        let caps = self.client.caps(CapsRequest {}).await?.into_inner().caps;
        let caps: Vec<crate::Cap> = caps
            .into_iter()
            .map(|cap| crate::Cap {
                budget: cap.budget,
                kind: cap.kind,
                value: cap.value,
            })
            .collect();
        let mut current = self.inner.caps.write().unwrap();
        if **current != caps {
            tracing::info!(
                service = self.inner.service,
                caps = caps.len(),
                "budget caps changed"
            );
            *current = Arc::new(caps);
        }
        Ok(())
    }

    /// A long journal everything of which is ingested starts over in a new file.
    fn rotate_if_shipped(&self, id: &str) -> std::io::Result<()> {
        let mut writer = self.inner.writer.lock().unwrap();
        if writer.id != id || writer.last_seq != self.shipped_seq || writer.bytes < ROTATE_BYTES {
            return Ok(());
        }
        let fresh = journal::Writer::create(&self.inner.dir, self.inner.service)?;
        let old = std::mem::replace(&mut *writer, fresh);
        drop(writer);
        std::fs::remove_file(&old.path)
    }

    /// Ships, then deletes, the journals no live process holds.
    pub async fn ship_orphans(&mut self) -> Result<(), ShipError> {
        let dir = self.inner.dir.clone();
        let orphans = tokio::task::spawn_blocking(move || journal::orphans(&dir))
            .await
            .map_err(std::io::Error::other)??;
        for orphan in orphans {
            let file = Arc::new(orphan.file);
            let mut offset = 0;
            let mut shipped = 0;
            loop {
                let reading = Arc::clone(&file);
                let (records, end) = tokio::task::spawn_blocking(move || {
                    journal::read_from(&reading, offset, BATCH_RECORDS)
                })
                .await
                .map_err(std::io::Error::other)??;
                if records.is_empty() {
                    break;
                }
                shipped += records.len();
                self.send(&orphan.id, records).await?;
                offset = end;
            }
            tracing::info!(journal = %orphan.id, records = shipped, "shipped a journal left by an earlier process");
            std::fs::remove_file(&orphan.path)?;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        journal: &str,
        records: Vec<Record<'static>>,
    ) -> Result<(), ShipError> {
        let request = IngestRequest {
            journal: journal.to_owned(),
            records: records
                .into_iter()
                .map(|record| UsageRecord {
                    seq: record.seq,
                    at_ms: record.at_ms,
                    resource: record.resource.into_owned(),
                    owner: record.owner.into_owned(),
                    quantities: record
                        .quantities
                        .iter()
                        .map(|&(meter, amount)| Quantity {
                            meter: meter.as_str().to_owned(),
                            amount,
                        })
                        .collect(),
                })
                .collect(),
        };
        self.client.ingest(request).await?;
        Ok(())
    }
}
