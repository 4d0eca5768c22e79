//! The closed list of meters: what a request is billed by.

use std::fmt;
use std::str::FromStr;

/// One thing minicloud counts. Quantities are whole numbers in the meter's base
/// unit, so sums are exact; prices convert them to billing units
/// ([`Meter::per_billing_unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Meter {
    /// One per invocation, whatever its outcome.
    FunctionRequests,
    /// The invocation's duration rounded up to the millisecond (at least 1).
    FunctionBilledMs,
    /// Memory × billed duration, in MB·ms (GB-seconds × 1,024,000).
    FunctionMbMs,
    /// Memory × instances × time kept provisioned (`provisioned_concurrency`), in
    /// MB·ms, whether or not they served a call (sampled).
    FunctionProvisionedMbMs,
    /// PUT, COPY, POST and LIST requests (S3's class A).
    StorageWriteRequests,
    /// GET and HEAD requests (S3's class B).
    StorageReadRequests,
    /// Object bytes sent to the caller.
    StorageBytesOut,
    /// Bytes stored × seconds they were stored (sampled; billed per GB-month of
    /// 730 hours).
    StorageByteSeconds,
    /// Documents read: one per document fetched by id, one per query result page.
    DbReads,
    /// Documents written (created, replaced, patched or deleted).
    DbWrites,
    /// Keys read or listed (one per listing page).
    KvReads,
    /// Keys written, deleted or incremented.
    KvWrites,
    /// Bytes of documents (id and JSON) and live keys (key and JSON) × seconds they
    /// were stored (sampled; billed per GB-month of 730 hours).
    DbByteSeconds,
    /// Events accepted on a topic.
    EventsPublished,
    /// Delivery attempts to subscribers (retries included).
    EventsDelivered,
    /// Users who signed in or refreshed a session, once each per calendar month (UTC).
    AuthMonthlyActiveUsers,
}

impl Meter {
    pub const ALL: [Meter; 16] = [
        Meter::FunctionRequests,
        Meter::FunctionBilledMs,
        Meter::FunctionMbMs,
        Meter::FunctionProvisionedMbMs,
        Meter::StorageWriteRequests,
        Meter::StorageReadRequests,
        Meter::StorageBytesOut,
        Meter::StorageByteSeconds,
        Meter::DbReads,
        Meter::DbWrites,
        Meter::KvReads,
        Meter::KvWrites,
        Meter::DbByteSeconds,
        Meter::EventsPublished,
        Meter::EventsDelivered,
        Meter::AuthMonthlyActiveUsers,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Meter::FunctionRequests => "function.requests",
            Meter::FunctionBilledMs => "function.billed_ms",
            Meter::FunctionMbMs => "function.mb_ms",
            Meter::FunctionProvisionedMbMs => "function.provisioned_mb_ms",
            Meter::StorageWriteRequests => "storage.write_requests",
            Meter::StorageReadRequests => "storage.read_requests",
            Meter::StorageBytesOut => "storage.bytes_out",
            Meter::StorageByteSeconds => "storage.byte_seconds",
            Meter::DbReads => "db.reads",
            Meter::DbWrites => "db.writes",
            Meter::KvReads => "kv.reads",
            Meter::KvWrites => "kv.writes",
            Meter::DbByteSeconds => "db.byte_seconds",
            Meter::EventsPublished => "events.published",
            Meter::EventsDelivered => "events.delivered",
            Meter::AuthMonthlyActiveUsers => "auth.monthly_active_users",
        }
    }

    /// The service the meter belongs to, as usage is grouped.
    pub const fn service(self) -> &'static str {
        match self {
            Meter::FunctionRequests
            | Meter::FunctionBilledMs
            | Meter::FunctionMbMs
            | Meter::FunctionProvisionedMbMs => "functions",
            Meter::StorageWriteRequests
            | Meter::StorageReadRequests
            | Meter::StorageBytesOut
            | Meter::StorageByteSeconds => "storage",
            Meter::DbReads
            | Meter::DbWrites
            | Meter::KvReads
            | Meter::KvWrites
            | Meter::DbByteSeconds => "db",
            Meter::EventsPublished | Meter::EventsDelivered => "events",
            Meter::AuthMonthlyActiveUsers => "auth",
        }
    }

    /// The base unit quantities are counted in.
    pub const fn unit(self) -> &'static str {
        match self {
            Meter::FunctionBilledMs => "ms",
            Meter::FunctionMbMs | Meter::FunctionProvisionedMbMs => "MB-ms",
            Meter::StorageBytesOut => "bytes",
            Meter::StorageByteSeconds | Meter::DbByteSeconds => "byte-seconds",
            Meter::AuthMonthlyActiveUsers => "users",
            _ => "requests",
        }
    }

    /// The unit prices are quoted in, and how many base units make one: AWS bills
    /// Lambda compute in GB-seconds (1 GB = 1,024 MB) and transfer in GB (2^30 bytes).
    pub const fn billing_unit(self) -> (&'static str, u64) {
        match self {
            Meter::FunctionBilledMs => ("second", 1_000),
            Meter::FunctionMbMs | Meter::FunctionProvisionedMbMs => ("GB-second", 1_024_000),
            Meter::StorageBytesOut => ("GB", 1 << 30),
            // AWS's GB-month: a GB (2^30 bytes) for 730 hours.
            Meter::StorageByteSeconds | Meter::DbByteSeconds => {
                ("GB-month", (1 << 30) * 730 * 3600)
            }
            Meter::AuthMonthlyActiveUsers => ("user", 1),
            _ => ("request", 1),
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown meter {0:?}")]
pub struct UnknownMeter(pub String);

impl FromStr for Meter {
    type Err = UnknownMeter;
    fn from_str(name: &str) -> Result<Meter, UnknownMeter> {
        Meter::ALL
            .into_iter()
            .find(|meter| meter.as_str() == name)
            .ok_or_else(|| UnknownMeter(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_meter_parses_back_from_its_name_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for (i, meter) in Meter::ALL.into_iter().enumerate() {
            // `Meters` finds a meter's counter at `meter as usize`.
            assert_eq!(meter as usize, i);
            assert_eq!(meter.as_str().parse::<Meter>(), Ok(meter));
            assert!(names.insert(meter.as_str()));
            assert!(meter.billing_unit().1 >= 1);
        }
        assert!("function.requests ".parse::<Meter>().is_err());
    }
}
