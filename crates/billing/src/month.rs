//! Billing periods (calendar months, UTC) and how money is written.

use chrono::{DateTime, Datelike as _, NaiveDate, TimeZone as _, Utc};
use rust_decimal::Decimal;

pub(crate) fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(at)
}

pub(crate) fn next_month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = match at.month() {
        12 => (at.year() + 1, 1),
        month => (at.year(), month + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(at, |d| d.and_utc())
}

/// USD as a decimal string, to 10 places, without trailing zeros.
pub(crate) fn money(amount: Decimal) -> String {
    amount.round_dp(10).normalize().to_string()
}
