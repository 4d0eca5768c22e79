//! The price sheet (`[pricing]` in `minicloud.toml`, `--pricing-*` flags): a unit
//! price per meter and a monthly free allowance, defaulting to AWS us-east-1's
//! public on-demand list prices and always-free tiers (docs/billing.md says which
//! service each mirrors and when the prices were read).

use std::str::FromStr;

use minicloud_metering::Meter;
use rust_decimal::Decimal;
use serde::Serialize;

/// A price in US dollars per billing unit, as text (`"0.0000166667"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(pub Decimal);

impl FromStr for Price {
    type Err = String;
    fn from_str(text: &str) -> Result<Price, String> {
        let price = Decimal::from_str(text.trim()).map_err(|e| format!("{text:?}: {e}"))?;
        if price.is_sign_negative() {
            return Err(format!("{text:?}: a price cannot be negative"));
        }
        Ok(Price(price))
    }
}

macro_rules! price_sheet {
    ($($meter:ident => $price:ident, $free:ident, $price_flag:literal, $price_env:literal,
        $price_default:literal, $free_flag:literal, $free_env:literal, $free_default:literal;)*) => {
        /// Unit prices (USD per billing unit) and monthly free allowances (billing
        /// units), per meter.
        #[derive(Debug, Clone, clap::Args)]
        pub struct PricingConfig {
            $(
                #[arg(long = $price_flag, env = $price_env, default_value = $price_default)]
                pub $price: Price,
                #[arg(long = $free_flag, env = $free_env, default_value_t = $free_default)]
                pub $free: u64,
            )*
        }

        impl Default for PricingConfig {
            fn default() -> Self {
                PricingConfig {
                    $(
                        $price: $price_default.parse().expect("a valid default price"),
                        $free: $free_default,
                    )*
                }
            }
        }

        impl PricingConfig {
            /// The price and free allowance (billing units per month) of `meter`.
            pub fn of(&self, meter: Meter) -> (Price, u64) {
                match meter {
                    $(Meter::$meter => (self.$price, self.$free),)*
                }
            }
        }
    };
}

// AWS us-east-1 list prices: Lambda (x86) $0.20 per 1M requests and $0.0000166667 per
// GB-second, always free 1M requests and 400,000 GB-seconds a month; S3 Standard
// $0.023 per GB-month stored (first 50 TB), $0.005 per 1,000 PUT/COPY/POST/LIST and
// $0.0004 per 1,000 GET/HEAD, transfer out
// $0.09 per GB with 100 GB a month free; DynamoDB on-demand $0.625 per 1M write and
// $0.125 per 1M read request units; EventBridge $1.00 per 1M custom events, deliveries
// to AWS targets free; Lambda provisioned concurrency $0.0000041667 per GB-second
// configured; DynamoDB storage $0.25 per GB-month, first 25 GB free; Cognito's Lite
// tier $0.0055 per monthly active user, first 10,000 free.
price_sheet! {
    FunctionRequests => function_requests, function_requests_free,
        "pricing-function-requests", "MINICLOUD_PRICING_FUNCTION_REQUESTS", "0.0000002",
        "pricing-function-requests-free", "MINICLOUD_PRICING_FUNCTION_REQUESTS_FREE", 1_000_000;
    FunctionBilledMs => function_seconds, function_seconds_free,
        "pricing-function-seconds", "MINICLOUD_PRICING_FUNCTION_SECONDS", "0",
        "pricing-function-seconds-free", "MINICLOUD_PRICING_FUNCTION_SECONDS_FREE", 0;
    FunctionMbMs => function_gb_seconds, function_gb_seconds_free,
        "pricing-function-gb-seconds", "MINICLOUD_PRICING_FUNCTION_GB_SECONDS", "0.0000166667",
        "pricing-function-gb-seconds-free", "MINICLOUD_PRICING_FUNCTION_GB_SECONDS_FREE", 400_000;
    FunctionProvisionedMbMs => function_provisioned_gb_seconds, function_provisioned_gb_seconds_free,
        "pricing-function-provisioned-gb-seconds", "MINICLOUD_PRICING_FUNCTION_PROVISIONED_GB_SECONDS", "0.0000041667",
        "pricing-function-provisioned-gb-seconds-free", "MINICLOUD_PRICING_FUNCTION_PROVISIONED_GB_SECONDS_FREE", 0;
    StorageWriteRequests => storage_write_requests, storage_write_requests_free,
        "pricing-storage-write-requests", "MINICLOUD_PRICING_STORAGE_WRITE_REQUESTS", "0.000005",
        "pricing-storage-write-requests-free", "MINICLOUD_PRICING_STORAGE_WRITE_REQUESTS_FREE", 0;
    StorageReadRequests => storage_read_requests, storage_read_requests_free,
        "pricing-storage-read-requests", "MINICLOUD_PRICING_STORAGE_READ_REQUESTS", "0.0000004",
        "pricing-storage-read-requests-free", "MINICLOUD_PRICING_STORAGE_READ_REQUESTS_FREE", 0;
    StorageBytesOut => storage_gb_out, storage_gb_out_free,
        "pricing-storage-gb-out", "MINICLOUD_PRICING_STORAGE_GB_OUT", "0.09",
        "pricing-storage-gb-out-free", "MINICLOUD_PRICING_STORAGE_GB_OUT_FREE", 100;
    StorageByteSeconds => storage_gb_months, storage_gb_months_free,
        "pricing-storage-gb-months", "MINICLOUD_PRICING_STORAGE_GB_MONTHS", "0.023",
        "pricing-storage-gb-months-free", "MINICLOUD_PRICING_STORAGE_GB_MONTHS_FREE", 0;
    DbReads => db_reads, db_reads_free,
        "pricing-db-reads", "MINICLOUD_PRICING_DB_READS", "0.000000125",
        "pricing-db-reads-free", "MINICLOUD_PRICING_DB_READS_FREE", 0;
    DbWrites => db_writes, db_writes_free,
        "pricing-db-writes", "MINICLOUD_PRICING_DB_WRITES", "0.000000625",
        "pricing-db-writes-free", "MINICLOUD_PRICING_DB_WRITES_FREE", 0;
    KvReads => kv_reads, kv_reads_free,
        "pricing-kv-reads", "MINICLOUD_PRICING_KV_READS", "0.000000125",
        "pricing-kv-reads-free", "MINICLOUD_PRICING_KV_READS_FREE", 0;
    KvWrites => kv_writes, kv_writes_free,
        "pricing-kv-writes", "MINICLOUD_PRICING_KV_WRITES", "0.000000625",
        "pricing-kv-writes-free", "MINICLOUD_PRICING_KV_WRITES_FREE", 0;
    DbByteSeconds => db_gb_months, db_gb_months_free,
        "pricing-db-gb-months", "MINICLOUD_PRICING_DB_GB_MONTHS", "0.25",
        "pricing-db-gb-months-free", "MINICLOUD_PRICING_DB_GB_MONTHS_FREE", 25;
    EventsPublished => events_published, events_published_free,
        "pricing-events-published", "MINICLOUD_PRICING_EVENTS_PUBLISHED", "0.000001",
        "pricing-events-published-free", "MINICLOUD_PRICING_EVENTS_PUBLISHED_FREE", 0;
    EventsDelivered => events_delivered, events_delivered_free,
        "pricing-events-delivered", "MINICLOUD_PRICING_EVENTS_DELIVERED", "0",
        "pricing-events-delivered-free", "MINICLOUD_PRICING_EVENTS_DELIVERED_FREE", 0;
    AuthMonthlyActiveUsers => auth_monthly_active_users, auth_monthly_active_users_free,
        "pricing-auth-monthly-active-users", "MINICLOUD_PRICING_AUTH_MONTHLY_ACTIVE_USERS", "0.0055",
        "pricing-auth-monthly-active-users-free", "MINICLOUD_PRICING_AUTH_MONTHLY_ACTIVE_USERS_FREE", 10_000;
}

/// One meter's line of the price sheet, as `GET /billing/v1/prices` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PriceOut {
    pub meter: &'static str,
    pub service: &'static str,
    /// USD per `unit`.
    pub unit_price: String,
    pub unit: &'static str,
    /// How many of the meter's base units make one `unit`.
    pub base_units_per_unit: u64,
    pub base_unit: &'static str,
    /// `unit`s a month that cost nothing.
    pub free_per_month: u64,
}

impl PricingConfig {
    pub fn sheet(&self) -> Vec<PriceOut> {
        Meter::ALL
            .into_iter()
            .map(|meter| {
                let (price, free) = self.of(meter);
                let (unit, per) = meter.billing_unit();
                PriceOut {
                    meter: meter.as_str(),
                    service: meter.service(),
                    unit_price: price.0.normalize().to_string(),
                    unit,
                    base_units_per_unit: per,
                    base_unit: meter.unit(),
                    free_per_month: free,
                }
            })
            .collect()
    }

    /// What `quantity` base units of `meter` cost, before free allowances.
    pub fn cost(&self, meter: Meter, quantity: u64) -> Decimal {
        let (price, _) = self.of(meter);
        let (_, per) = meter.billing_unit();
        price.0 * Decimal::from(quantity) / Decimal::from(per)
    }

    /// The free allowance of `meter` in its base units.
    pub fn free_base_units(&self, meter: Meter) -> u64 {
        let (_, free) = self.of(meter);
        free.saturating_mul(meter.billing_unit().1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_convert_base_units_to_billing_units_exactly() {
        let prices = PricingConfig::default();
        // 1,000 invocations of 128 MB for 100 ms each: 12.5 GB-seconds.
        let mb_ms = 1_000 * 128 * 100;
        assert_eq!(
            prices.cost(Meter::FunctionMbMs, mb_ms),
            Decimal::from_str("0.000208333750").unwrap()
        );
        assert_eq!(
            prices.cost(Meter::FunctionRequests, 1_000_000),
            Decimal::from_str("0.2").unwrap()
        );
        assert_eq!(
            prices.cost(Meter::StorageBytesOut, 1 << 30),
            Decimal::from_str("0.09").unwrap()
        );
        assert_eq!(
            prices.free_base_units(Meter::FunctionMbMs),
            400_000 * 1_024_000
        );
    }

    #[test]
    fn a_negative_or_malformed_price_is_refused() {
        assert!("-1".parse::<Price>().is_err());
        assert!("1e3x".parse::<Price>().is_err());
        assert_eq!("0.5".parse::<Price>().unwrap().0, Decimal::new(5, 1));
    }
}
