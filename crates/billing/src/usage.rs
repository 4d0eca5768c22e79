//! `GET /billing/v1/usage`, `/cost`, `/forecast` and `/prices`: the hourly rows
//! summed by period and group, priced with the sheet.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use minicloud_authz::{Action, Caller};
use minicloud_metering::Meter;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Query};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Billing;
use crate::budgets::Scope;
use crate::month::{money, month_start};
use crate::prices::PriceOut;

const DEFAULT_LIMIT: u32 = 1_000;
const MAX_LIMIT: u32 = 10_000;
/// Lines a cost answer may hold (it is not paginated: its total covers them all).
const MAX_COST_LINES: usize = 10_000;
const MAX_FILTER_BYTES: usize = 1_024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Granularity {
    Hour,
    #[default]
    Day,
    Month,
}

impl Granularity {
    fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }
}

/// Which usage, summed how.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// RFC 3339; rounded down to the hour. Default: the start of this month (UTC).
    from: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive; rounded up to the hour. Default: now.
    to: Option<DateTime<Utc>>,
    /// `hour`, `day` (default) or `month` periods (UTC).
    granularity: Option<Granularity>,
    /// Comma-separated dimensions besides the meter: `service` (always implied by
    /// the meter), `resource`, `owner`.
    group_by: Option<String>,
    /// Only this service's meters (`functions`, `storage`, `db`, `events`, `auth`).
    service: Option<String>,
    /// Only this meter.
    meter: Option<String>,
    /// Only this function, bucket, collection, namespace or topic.
    resource: Option<String>,
    /// Only this owner (`<role>` or `<role>:<subject>`).
    owner: Option<String>,
    /// Rows per page (usage only): 1-10000, default 1000.
    limit: Option<u32>,
    /// `next_cursor` of the previous page (usage only).
    cursor: Option<String>,
}

/// The checked form of a [`UsageQuery`].
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) granularity: Granularity,
    pub(crate) by_resource: bool,
    pub(crate) by_owner: bool,
    pub(crate) meters: Vec<Meter>,
    pub(crate) resource: Option<String>,
    pub(crate) owner: Option<String>,
}

impl Selection {
    fn from_query(query: &UsageQuery, now: DateTime<Utc>) -> Result<Selection, ApiError> {
        let hour = TimeDelta::hours(1);
        let from = query.from.unwrap_or_else(|| month_start(now));
        let to = query.to.unwrap_or(now);
        let from = from
            .duration_trunc(hour)
            .map_err(|_| ApiError::invalid("from is out of range"))?;
        let to = match to.duration_trunc(hour) {
            Ok(down) if down == to => down,
            Ok(down) => down + hour,
            Err(_) => return Err(ApiError::invalid("to is out of range")),
        };
        if from >= to {
            return Err(ApiError::invalid("from must be before to"));
        }
        if to - from > TimeDelta::days(3 * 366) {
            return Err(ApiError::invalid("a range spans at most three years"));
        }
        let (mut by_resource, mut by_owner) = (false, false);
        for dimension in query.group_by.as_deref().unwrap_or("").split(',') {
            match dimension.trim() {
                "" | "service" | "meter" => {}
                "resource" => by_resource = true,
                "owner" => by_owner = true,
                other => {
                    return Err(ApiError::invalid(format!(
                        "group_by {other:?}: expected service, resource or owner"
                    )));
                }
            }
        }
        let mut meters: Vec<Meter> = Meter::ALL.to_vec();
        if let Some(service) = &query.service {
            meters.retain(|m| m.service() == service);
            if meters.is_empty() {
                return Err(ApiError::invalid(format!(
                    "service {service:?}: expected functions, storage, db or events"
                )));
            }
        }
        if let Some(meter) = &query.meter {
            let meter: Meter = meter
                .parse()
                .map_err(|e| ApiError::invalid(format!("{e}")))?;
            meters.retain(|&m| m == meter);
        }
        for (name, value) in [("resource", &query.resource), ("owner", &query.owner)] {
            if let Some(value) = value
                && (value.len() > MAX_FILTER_BYTES || value.contains('\0'))
            {
                return Err(ApiError::invalid(format!(
                    "{name} must be at most {MAX_FILTER_BYTES} bytes, without NUL"
                )));
            }
        }
        Ok(Selection {
            from,
            to,
            granularity: query.granularity.unwrap_or_default(),
            by_resource,
            by_owner,
            meters,
            resource: query.resource.clone(),
            owner: query.owner.clone(),
        })
    }

    fn filtered_to_part_of_the_account(&self) -> bool {
        self.resource.is_some() || self.owner.is_some()
    }
}

/// One period's quantity of one meter (and resource, owner when grouped by them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageRow {
    pub(crate) start: DateTime<Utc>,
    pub(crate) service: &'static str,
    pub(crate) meter: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<String>,
    /// In the meter's base `unit`.
    pub(crate) quantity: u64,
    pub(crate) unit: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageOut {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    rows: Vec<UsageRow>,
    next_cursor: Option<String>,
}

impl Billing {
    pub(crate) async fn check_reader(&self, caller: &Caller) -> Result<(), ApiError> {
        self.authz
            .authorize(caller, Action::BillingReadUsage, "billing:usage", &[])
            .await
    }

    /// The selection's rows, ordered by period, meter, resource and owner.
    pub(crate) async fn rows(
        &self,
        selection: &Selection,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<UsageRow>, ApiError> {
        let meters: Vec<&str> = selection.meters.iter().map(|m| m.as_str()).collect();
        let rows: Vec<(DateTime<Utc>, String, String, String, i64)> = sqlx::query_as(
            "SELECT date_trunc($3, hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start, meter,
                    CASE WHEN $4 THEN resource ELSE '' END AS grouped_resource,
                    CASE WHEN $5 THEN owner ELSE '' END AS grouped_owner,
                    sum(quantity)::bigint
             FROM usage_hourly
             WHERE hour >= $1 AND hour < $2 AND meter = ANY($6)
               AND ($7::text IS NULL OR resource = $7) AND ($8::text IS NULL OR owner = $8)
             GROUP BY 1, 2, 3, 4
             ORDER BY 1, 2, 3, 4
             LIMIT $9 OFFSET $10",
        )
        .bind(selection.from)
        .bind(selection.to)
        .bind(selection.granularity.as_str())
        .bind(selection.by_resource)
        .bind(selection.by_owner)
        .bind(&meters)
        .bind(&selection.resource)
        .bind(&selection.owner)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter_map(|(start, meter, resource, owner, quantity)| {
                let meter: Meter = meter.parse().ok()?;
                Some(UsageRow {
                    start,
                    service: meter.service(),
                    meter: meter.as_str(),
                    resource: selection.by_resource.then_some(resource),
                    owner: selection.by_owner.then_some(owner),
                    quantity: quantity.max(0) as u64,
                    unit: meter.unit(),
                })
            })
            .collect())
    }

    /// Each meter's account-wide total over `[from, to)`, per calendar month.
    async fn monthly_totals(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        meters: &[Meter],
    ) -> Result<BTreeMap<(DateTime<Utc>, Meter), u64>, ApiError> {
        let names: Vec<&str> = meters.iter().map(|m| m.as_str()).collect();
        let rows: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
            "SELECT date_trunc('month', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', meter, sum(quantity)::bigint
             FROM usage_hourly WHERE hour >= $1 AND hour < $2 AND meter = ANY($3)
             GROUP BY 1, 2",
        )
        .bind(from)
        .bind(to)
        .bind(&names)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter_map(|(month, meter, quantity)| {
                Some(((month, meter.parse().ok()?), quantity.max(0) as u64))
            })
            .collect())
    }
}

#[utoipa::path(get, path = "/billing/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn usage(
    State(billing): State<Billing>,
    caller: Caller,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageOut>, ApiError> {
    billing.check_reader(&caller).await?;
    let selection = Selection::from_query(&query, billing.now())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let offset: i64 = match &query.cursor {
        None => 0,
        Some(cursor) => cursor
            .parse()
            .ok()
            .filter(|&o: &i64| o >= 0)
            .ok_or_else(|| ApiError::invalid("cursor is not one this API returned"))?,
    };
    let mut rows = billing
        .rows(&selection, i64::from(limit) + 1, offset)
        .await?;
    let next_cursor = (rows.len() > limit as usize).then(|| {
        rows.truncate(limit as usize);
        (offset + i64::from(limit)).to_string()
    });
    Ok(Json(UsageOut {
        from: selection.from,
        to: selection.to,
        granularity: selection.granularity,
        rows,
        next_cursor,
    }))
}

/// A usage row priced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CostLine {
    #[serde(flatten)]
    usage: UsageRow,
    /// The quantity in `billing_unit`s.
    billable: String,
    billing_unit: &'static str,
    /// USD per billing unit.
    unit_price: String,
    /// USD, before free allowances.
    cost: String,
}

/// A month's free allowance of one meter, used against the range's usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FreeTierCredit {
    month: DateTime<Utc>,
    meter: &'static str,
    /// Base units that cost nothing.
    quantity: u64,
    /// The same in `billing_unit`s.
    billable: String,
    billing_unit: &'static str,
    /// USD, negative.
    cost: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CostOut {
    currency: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
    lines: Vec<CostLine>,
    /// Present when the query covers the whole account (no resource or owner filter).
    free_tier: Vec<FreeTierCredit>,
    free_tier_applied: bool,
    /// USD: the lines less the free tier.
    total: String,
}

#[utoipa::path(get, path = "/billing/v1/cost", tag = "usage", params(UsageQuery),
    responses((status = 200, body = CostOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn cost(
    State(billing): State<Billing>,
    caller: Caller,
    Query(query): Query<UsageQuery>,
) -> Result<Json<CostOut>, ApiError> {
    billing.check_reader(&caller).await?;
    if query.limit.is_some() || query.cursor.is_some() {
        return Err(ApiError::invalid(
            "cost is not paginated (its total covers every line): narrow the range or grouping instead of limit/cursor",
        ));
    }
    let selection = Selection::from_query(&query, billing.now())?;
    let rows = billing
        .rows(&selection, MAX_COST_LINES as i64 + 1, 0)
        .await?;
    if rows.len() > MAX_COST_LINES {
        return Err(ApiError::invalid(format!(
            "more than {MAX_COST_LINES} cost lines: narrow the range, the grouping or the granularity"
        )));
    }
    let prices = &billing.pricing;
    let mut total = Decimal::ZERO;
    let lines: Vec<CostLine> = rows
        .into_iter()
        .filter_map(|usage| {
            let meter: Meter = usage.meter.parse().ok()?;
            let (price, _) = prices.of(meter);
            let (unit, per) = meter.billing_unit();
            let cost = prices.cost(meter, usage.quantity);
            total += cost;
            Some(CostLine {
                billable: money(Decimal::from(usage.quantity) / Decimal::from(per)),
                billing_unit: unit,
                unit_price: price.0.normalize().to_string(),
                cost: money(cost),
                usage,
            })
        })
        .collect();
    let free_tier_applied = !selection.filtered_to_part_of_the_account();
    let mut free_tier = Vec::new();
    if free_tier_applied {
        let within = billing
            .monthly_totals(selection.from, selection.to, &selection.meters)
            .await?;
        for ((month, meter), used) in within {
            let free = prices.free_base_units(meter);
            if free == 0 {
                continue;
            }
            // Usage earlier in the same month (before the range) used the allowance first.
            let before = if selection.from > month {
                billing
                    .monthly_totals(month, selection.from, &[meter])
                    .await?
                    .values()
                    .sum()
            } else {
                0
            };
            let credited = used.min(free.saturating_sub(before));
            if credited == 0 {
                continue;
            }
            let credit = -prices.cost(meter, credited);
            total += credit;
            let (unit, per) = meter.billing_unit();
            free_tier.push(FreeTierCredit {
                month,
                meter: meter.as_str(),
                quantity: credited,
                billable: money(Decimal::from(credited) / Decimal::from(per)),
                billing_unit: unit,
                cost: money(credit),
            });
        }
    }
    Ok(Json(CostOut {
        currency: "USD",
        from: selection.from,
        to: selection.to,
        granularity: selection.granularity,
        lines,
        free_tier,
        free_tier_applied,
        total: money(total),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ForecastOut {
    currency: &'static str,
    month: DateTime<Utc>,
    /// The share of the month elapsed, 0-1.
    elapsed: f64,
    /// USD so far this month, free tier applied.
    month_to_date: String,
    /// USD by the month's end at this month's rate so far, free tier applied.
    forecast: String,
}

#[utoipa::path(get, path = "/billing/v1/forecast", tag = "usage",
    responses((status = 200, body = ForecastOut), (status = 403, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn forecast(
    State(billing): State<Billing>,
    caller: Caller,
) -> Result<Json<ForecastOut>, ApiError> {
    billing.check_reader(&caller).await?;
    let now = billing.now();
    let (month_to_date, forecast, elapsed) = billing.month_cost(&Scope::All, now).await?;
    Ok(Json(ForecastOut {
        currency: "USD",
        month: month_start(now),
        elapsed,
        month_to_date: money(month_to_date),
        forecast: money(forecast),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PricesOut {
    currency: &'static str,
    prices: Vec<PriceOut>,
}

#[utoipa::path(get, path = "/billing/v1/prices", tag = "usage",
    responses((status = 200, body = PricesOut), (status = 403, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn prices(
    State(billing): State<Billing>,
    caller: Caller,
) -> Result<Json<PricesOut>, ApiError> {
    billing.check_reader(&caller).await?;
    Ok(Json(PricesOut {
        currency: "USD",
        prices: billing.pricing.sheet(),
    }))
}
