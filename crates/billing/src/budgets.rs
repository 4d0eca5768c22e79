//! Budgets (`/billing/v1/budgets`, docs/billing.md): an amount per month over a
//! scope, thresholds that each fire once per period (a CloudEvent on the `billing`
//! topic, through the outbox: published if and only if the firing is recorded), and
//! an optional cap that refuses the scope's function calls and writes while the
//! month's actual cost is at or over the amount.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::{Action, Caller};
use minicloud_metering::Meter;
use minicloud_outbox::OutboxEvent;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Billing;
use crate::month::{money, month_start, next_month_start};

const MAX_BUDGETS: i64 = 1_000;
const MAX_THRESHOLDS: usize = 10;
const MAX_SCOPE_BYTES: usize = 1_024;
/// The topic threshold events go to (a built-in topic of the bus).
pub(crate) const TOPIC: &str = "billing";

/// What a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    /// Everything (the account's free tier applies).
    All,
    /// One service's meters: `functions`, `storage`, `db`, `events` or `auth` (free tier applies).
    Service(String),
    /// One function, bucket, collection, key namespace or topic, by name.
    Resource(String),
    /// One owner (`<role>` or `<role>:<subject>`).
    Owner(String),
}

impl Scope {
    fn check(&self) -> Result<(), ApiError> {
        let value = match self {
            Scope::All => return Ok(()),
            Scope::Service(service) => {
                if !Meter::ALL.iter().any(|m| m.service() == service) {
                    return Err(ApiError::invalid(format!(
                        "scope service {service:?}: expected functions, storage, db or events"
                    )));
                }
                service
            }
            Scope::Resource(value) | Scope::Owner(value) => value,
        };
        if value.is_empty() || value.len() > MAX_SCOPE_BYTES || value.contains('\0') {
            return Err(ApiError::invalid(format!(
                "scope: 1 to {MAX_SCOPE_BYTES} bytes, without NUL"
            )));
        }
        Ok(())
    }

    fn meters(&self) -> Vec<Meter> {
        match self {
            Scope::Service(service) => Meter::ALL
                .into_iter()
                .filter(|m| m.service() == service)
                .collect(),
            _ => Meter::ALL.to_vec(),
        }
    }

    /// The free tier is the account's: it applies to whole-account and per-service
    /// budgets, not to one resource's or one owner's share.
    fn free_tier_applies(&self) -> bool {
        matches!(self, Scope::All | Scope::Service(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Basis {
    /// The month's cost so far.
    #[default]
    Actual,
    /// The month's cost at its end, at the rate so far.
    Forecast,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BudgetAction {
    /// A CloudEvent on the `billing` topic, once per threshold per period.
    Notify,
    /// Beyond 100% of the actual cost: function calls in scope get 429, writes to
    /// buckets, collections and keys in scope 402; reads keep working.
    Cap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Period {
    #[default]
    Month,
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

fn default_actions() -> Vec<BudgetAction> {
    vec![BudgetAction::Notify]
}

/// A budget as written.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetIn {
    name: String,
    /// USD, as a decimal string or a number.
    #[schema(value_type = String, example = "10.00")]
    amount: serde_json::Value,
    #[serde(default)]
    period: Period,
    scope: Scope,
    /// Percentages of the amount, 1-1000 (default 50, 80, 100).
    #[serde(default = "default_thresholds")]
    thresholds: Vec<u32>,
    #[serde(default)]
    basis: Basis,
    /// Default: notify.
    #[serde(default = "default_actions")]
    actions: Vec<BudgetAction>,
}

/// A budget's checked definition.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    pub(crate) name: String,
    pub(crate) amount: Decimal,
    pub(crate) scope: Scope,
    pub(crate) thresholds: Vec<u32>,
    pub(crate) basis: Basis,
    pub(crate) actions: Vec<BudgetAction>,
    pub(crate) period: Period,
    pub(crate) version: i64,
}

impl BudgetIn {
    fn check(self, name_in_path: Option<&str>) -> Result<Budget, ApiError> {
        check_name(&self.name)?;
        if let Some(path) = name_in_path
            && path != self.name
        {
            return Err(ApiError::invalid("the body's name is not the path's"));
        }
        let amount = match &self.amount {
            serde_json::Value::String(text) => Decimal::from_str(text.trim()).ok(),
            serde_json::Value::Number(number) => Decimal::from_str(&number.to_string()).ok(),
            _ => None,
        }
        .filter(|a| *a > Decimal::ZERO && *a <= Decimal::from(1_000_000_000u64))
        .ok_or_else(|| ApiError::invalid("amount: a positive number of USD (at most 1e9)"))?;
        self.scope.check()?;
        let mut thresholds = self.thresholds;
        thresholds.sort_unstable();
        thresholds.dedup();
        if thresholds.is_empty()
            || thresholds.len() > MAX_THRESHOLDS
            || thresholds.iter().any(|t| !(1..=1000).contains(t))
        {
            return Err(ApiError::invalid(format!(
                "thresholds: 1 to {MAX_THRESHOLDS} percentages of 1-1000"
            )));
        }
        let mut actions = self.actions;
        actions.sort_unstable();
        actions.dedup();
        if actions.is_empty() {
            return Err(ApiError::invalid("actions: notify, cap or both"));
        }
        Ok(Budget {
            name: self.name,
            amount,
            scope: self.scope,
            thresholds,
            basis: self.basis,
            actions,
            period: self.period,
            version: 1,
        })
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    // 80: room for `function.` and a 64-character function name.
    let ok = !name.is_empty()
        && name.len() <= 80
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name: 1 to 80 letters, digits, '-', '_' or '.'",
        ))
    }
}

/// Where a budget stands this period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BudgetState {
    period_start: DateTime<Utc>,
    /// USD so far this period.
    actual: String,
    /// USD by the period's end at the rate so far.
    forecast: String,
    /// The basis as a percentage of the amount.
    percent: f64,
    /// Thresholds fired this period.
    fired: Vec<u32>,
    /// Calls and writes in scope are refused.
    capped: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BudgetOut {
    name: String,
    amount: String,
    period: Period,
    scope: Scope,
    thresholds: Vec<u32>,
    basis: Basis,
    actions: Vec<BudgetAction>,
    state: BudgetState,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BudgetList {
    budgets: Vec<BudgetOut>,
}

type BudgetRow = (
    String,
    String,
    serde_json::Value,
    Vec<i32>,
    String,
    Vec<String>,
    i64,
);

fn from_row(row: BudgetRow) -> Option<Budget> {
    let (name, amount, scope, thresholds, basis, actions, version) = row;
    Some(Budget {
        name,
        amount: Decimal::from_str(&amount).ok()?,
        scope: serde_json::from_value(scope).ok()?,
        thresholds: thresholds.into_iter().map(|t| t.max(0) as u32).collect(),
        basis: serde_json::from_value(serde_json::Value::String(basis)).ok()?,
        actions: actions
            .into_iter()
            .filter_map(|a| serde_json::from_value(serde_json::Value::String(a)).ok())
            .collect(),
        period: Period::Month,
        version,
    })
}

const BUDGET_COLUMNS: &str = "name, amount, scope, thresholds, basis, actions, version";

/// What an evaluation found for one budget.
#[derive(Debug, Clone)]
pub(crate) struct Evaluated {
    pub(crate) actual: Decimal,
    pub(crate) forecast: Decimal,
    pub(crate) capped: bool,
}

impl Billing {
    pub(crate) async fn budgets(&self) -> Result<Vec<Budget>, ApiError> {
        let rows: Vec<BudgetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows.into_iter().filter_map(from_row).collect())
    }

    async fn budget(&self, name: &str) -> Result<Budget, ApiError> {
        let row: Option<BudgetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        row.and_then(from_row)
            .ok_or_else(|| ApiError::not_found(format!("budget {name} not found")))
    }

    /// The scope's cost from `start` to `end` (every hourly row of the period).
    async fn scope_cost(
        &self,
        scope: &Scope,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<BTreeMap<Meter, u64>, ApiError> {
        let meters: Vec<&str> = scope.meters().iter().map(|m| m.as_str()).collect();
        let (resource, owner) = match scope {
            Scope::Resource(r) => (Some(r.as_str()), None),
            Scope::Owner(o) => (None, Some(o.as_str())),
            _ => (None, None),
        };
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT meter, sum(quantity)::bigint FROM usage_hourly
             WHERE hour >= $1 AND hour < $2 AND meter = ANY($3)
               AND ($4::text IS NULL OR resource = $4) AND ($5::text IS NULL OR owner = $5)
             GROUP BY meter",
        )
        .bind(start)
        .bind(end)
        .bind(&meters)
        .bind(resource)
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter_map(|(meter, quantity)| Some((meter.parse().ok()?, quantity.max(0) as u64)))
            .collect())
    }

    /// The cost of `usage` (a month's), with the free tier when the scope has it.
    fn priced(&self, scope: &Scope, usage: &BTreeMap<Meter, Decimal>) -> Decimal {
        usage
            .iter()
            .map(|(&meter, &quantity)| {
                let free = if scope.free_tier_applies() {
                    Decimal::from(self.pricing.free_base_units(meter))
                } else {
                    Decimal::ZERO
                };
                let (price, _) = self.pricing.of(meter);
                price.0 * (quantity - free).max(Decimal::ZERO)
                    / Decimal::from(meter.billing_unit().1)
            })
            .sum()
    }

    /// The scope's cost this month so far and at its end at the rate so far (each
    /// meter's usage extrapolated, then priced), and the share of the month elapsed.
    pub(crate) async fn month_cost(
        &self,
        scope: &Scope,
        now: DateTime<Utc>,
    ) -> Result<(Decimal, Decimal, f64), ApiError> {
        let (start, end) = (month_start(now), next_month_start(now));
        let usage = self.scope_cost(scope, start, end).await?;
        let elapsed = ((now - start).num_milliseconds() as f64
            / (end - start).num_milliseconds() as f64)
            .clamp(1e-6, 1.0);
        let scale = Decimal::from_f64_retain(1.0 / elapsed).unwrap_or(Decimal::ONE);
        let actual_usage: BTreeMap<Meter, Decimal> =
            usage.iter().map(|(&m, &q)| (m, Decimal::from(q))).collect();
        let forecast_usage: BTreeMap<Meter, Decimal> =
            actual_usage.iter().map(|(&m, &q)| (m, q * scale)).collect();
        Ok((
            self.priced(scope, &actual_usage),
            self.priced(scope, &forecast_usage),
            elapsed,
        ))
    }

    /// A budget's actual and forecast cost at `now`, and whether it caps.
    pub(crate) async fn evaluate(
        &self,
        budget: &Budget,
        now: DateTime<Utc>,
    ) -> Result<Evaluated, ApiError> {
        let (actual, forecast, _) = self.month_cost(&budget.scope, now).await?;
        Ok(Evaluated {
            actual,
            forecast,
            capped: budget.actions.contains(&BudgetAction::Cap) && actual >= budget.amount,
        })
    }

    /// Evaluates every budget at the clock's now: fires each threshold crossed and
    /// not yet fired this period (once, across replicas and restarts: the firing is a
    /// row, inserted with its event in one transaction), and records which caps hold.
    pub(crate) async fn evaluate_budgets(&self) -> Result<(), ApiError> {
        let now = self.now();
        let period_start = month_start(now);
        for budget in self.budgets().await? {
            let evaluated = self.evaluate(&budget, now).await?;
            let basis = match budget.basis {
                Basis::Actual => evaluated.actual,
                Basis::Forecast => evaluated.forecast,
            };
            for &threshold in &budget.thresholds {
                if basis * Decimal::from(100) < budget.amount * Decimal::from(threshold) {
                    continue;
                }
                self.fire(&budget, period_start, threshold, &evaluated)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO budget_state (budget, version, period_start, actual, forecast, capped, evaluated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now())
                 ON CONFLICT (budget) DO UPDATE SET version = EXCLUDED.version,
                   period_start = EXCLUDED.period_start, actual = EXCLUDED.actual,
                   forecast = EXCLUDED.forecast, capped = EXCLUDED.capped, evaluated_at = now()
                 WHERE budget_state.version <= EXCLUDED.version",
            )
            .bind(&budget.name)
            .bind(budget.version)
            .bind(period_start)
            .bind(evaluated.actual.to_string())
            .bind(evaluated.forecast.to_string())
            .bind(evaluated.capped)
            .execute(&self.pool)
            .await
            .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    async fn fire(
        &self,
        budget: &Budget,
        period_start: DateTime<Utc>,
        threshold: u32,
        evaluated: &Evaluated,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await.map_err(ApiError::internal)?;
        let inserted = sqlx::query(
            "INSERT INTO budget_alerts (budget, version, period_start, threshold)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&budget.name)
        .bind(budget.version)
        .bind(period_start)
        .bind(threshold as i32)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
        if inserted == 0 {
            return Ok(());
        }
        if budget.actions.contains(&BudgetAction::Notify) {
            let event = OutboxEvent::new(
                "/minicloud/billing",
                "minicloud.billing.budget.threshold",
                Some(budget.name.clone()),
                serde_json::json!({
                    "budget": budget.name,
                    "threshold": threshold,
                    "basis": budget.basis,
                    "amount": budget.amount.normalize().to_string(),
                    "actual": money(evaluated.actual),
                    "forecast": money(evaluated.forecast),
                    "currency": "USD",
                    "period_start": period_start,
                    "scope": budget.scope,
                    "capped": evaluated.capped,
                }),
            );
            minicloud_outbox::enqueue(&mut tx, TOPIC, &event)
                .await
                .map_err(ApiError::from)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        tracing::info!(budget = %budget.name, threshold, "budget threshold crossed");
        self.relay.wake();
        Ok(())
    }

    /// The scopes capped now (what services refuse), with their budget's name.
    pub(crate) async fn caps(&self) -> Result<Vec<(String, Scope)>, ApiError> {
        let now = self.now();
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT b.name, b.scope FROM budgets b JOIN budget_state s ON s.budget = b.name
             WHERE s.capped AND s.version = b.version AND s.period_start = $1",
        )
        .bind(month_start(now))
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, scope)| Some((name, serde_json::from_value(scope).ok()?)))
            .collect())
    }

    async fn out(&self, budget: Budget) -> Result<BudgetOut, ApiError> {
        let now = self.now();
        let evaluated = self.evaluate(&budget, now).await?;
        let period_start = month_start(now);
        let fired: Vec<(i32,)> = sqlx::query_as(
            "SELECT threshold FROM budget_alerts WHERE budget = $1 AND version = $2 AND period_start = $3 ORDER BY threshold",
        )
        .bind(&budget.name)
        .bind(budget.version)
        .bind(period_start)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        let basis = match budget.basis {
            Basis::Actual => evaluated.actual,
            Basis::Forecast => evaluated.forecast,
        };
        let percent = (basis * Decimal::from(100) / budget.amount)
            .round_dp(4)
            .to_string()
            .parse()
            .unwrap_or(0.0);
        Ok(BudgetOut {
            amount: budget.amount.normalize().to_string(),
            period: budget.period,
            state: BudgetState {
                period_start,
                actual: money(evaluated.actual),
                forecast: money(evaluated.forecast),
                percent,
                fired: fired.into_iter().map(|(t,)| t as u32).collect(),
                capped: evaluated.capped,
            },
            name: budget.name,
            scope: budget.scope,
            thresholds: budget.thresholds,
            basis: budget.basis,
            actions: budget.actions,
        })
    }

    async fn check_manager(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        self.authz
            .authorize(
                caller,
                Action::BillingManageBudgets,
                &format!("billing:budgets/{name}"),
                &[],
            )
            .await
    }

    /// Writes `budget` (a new version when it exists), then evaluates at once: a
    /// raised amount lifts a cap now, not at the next tick.
    async fn save(&self, budget: Budget, create: bool) -> Result<BudgetOut, ApiError> {
        let mut tx = self.pool.begin().await.map_err(ApiError::internal)?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM budgets")
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        let thresholds: Vec<i32> = budget.thresholds.iter().map(|&t| t as i32).collect();
        let actions: Vec<String> = budget
            .actions
            .iter()
            .map(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        let basis = match budget.basis {
            Basis::Actual => "actual",
            Basis::Forecast => "forecast",
        };
        let scope = serde_json::to_value(&budget.scope).map_err(ApiError::internal)?;
        let row: Option<BudgetRow> = if create {
            if count >= MAX_BUDGETS {
                return Err(ApiError::invalid(format!("at most {MAX_BUDGETS} budgets")));
            }
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO budgets (name, amount, scope, thresholds, basis, actions)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING
                 RETURNING {BUDGET_COLUMNS}"
            )))
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE budgets SET amount = $2, scope = $3, thresholds = $4, basis = $5,
                   actions = $6, version = version + 1, updated_at = now()
                 WHERE name = $1 RETURNING {BUDGET_COLUMNS}"
            )))
        }
        .bind(&budget.name)
        .bind(budget.amount.normalize().to_string())
        .bind(scope)
        .bind(&thresholds)
        .bind(basis)
        .bind(&actions)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
        let Some(saved) = row.and_then(from_row) else {
            return Err(if create {
                ApiError::conflict(format!("budget {} exists", budget.name))
            } else {
                ApiError::not_found(format!("budget {} not found", budget.name))
            });
        };
        tx.commit().await.map_err(ApiError::internal)?;
        self.evaluate_budgets().await?;
        self.out(saved).await
    }
}

/// A function's `max_monthly_cost` as its budget's name.
pub(crate) fn function_budget(function: &str) -> String {
    format!("function.{function}")
}

impl Billing {
    /// Keeps (or, with an empty amount, removes) the budget that caps `function` at
    /// `amount` USD a month: cap and notify at 100% of the actual cost.
    pub(crate) async fn set_function_cap(
        &self,
        function: &str,
        amount: &str,
    ) -> Result<(), ApiError> {
        let valid_function = !function.is_empty()
            && function.len() <= 64
            && function
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_function {
            return Err(ApiError::invalid("function name: 1-64 of A-Z a-z 0-9 - _"));
        }
        let name = function_budget(function);
        if amount.is_empty() {
            sqlx::query("DELETE FROM budgets WHERE name = $1")
                .bind(&name)
                .execute(&self.pool)
                .await
                .map_err(ApiError::internal)?;
            return Ok(());
        }
        let budget = BudgetIn {
            name: name.clone(),
            amount: serde_json::Value::String(amount.to_owned()),
            period: Period::Month,
            scope: Scope::Resource(function.to_owned()),
            thresholds: vec![100],
            basis: Basis::Actual,
            actions: vec![BudgetAction::Notify, BudgetAction::Cap],
        }
        .check(None)?;
        sqlx::query(
            "INSERT INTO budgets (name, amount, scope, thresholds, basis, actions)
             VALUES ($1, $2, $3, '{100}', 'actual', '{notify,cap}')
             ON CONFLICT (name) DO UPDATE SET amount = EXCLUDED.amount, scope = EXCLUDED.scope,
               thresholds = EXCLUDED.thresholds, basis = EXCLUDED.basis, actions = EXCLUDED.actions,
               version = budgets.version + 1, updated_at = now()",
        )
        .bind(&name)
        .bind(budget.amount.normalize().to_string())
        .bind(serde_json::to_value(&budget.scope).map_err(ApiError::internal)?)
        .execute(&self.pool)
        .await
        .map_err(ApiError::internal)?;
        Ok(())
    }
}

#[utoipa::path(post, path = "/billing/v1/budgets", tag = "budgets", request_body = BudgetIn,
    responses((status = 201, body = BudgetOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn create(
    State(billing): State<Billing>,
    caller: Caller,
    Json(input): Json<BudgetIn>,
) -> Result<(StatusCode, Json<BudgetOut>), ApiError> {
    check_name(&input.name)?;
    billing.check_manager(&caller, &input.name).await?;
    let budget = input.check(None)?;
    Ok((StatusCode::CREATED, Json(billing.save(budget, true).await?)))
}

#[utoipa::path(put, path = "/billing/v1/budgets/{name}", tag = "budgets", params(("name" = String, Path)), request_body = BudgetIn,
    responses((status = 200, body = BudgetOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn replace(
    State(billing): State<Billing>,
    caller: Caller,
    Path(name): Path<String>,
    Json(input): Json<BudgetIn>,
) -> Result<Json<BudgetOut>, ApiError> {
    check_name(&name)?;
    billing.check_manager(&caller, &name).await?;
    let budget = input.check(Some(&name))?;
    Ok(Json(billing.save(budget, false).await?))
}

#[utoipa::path(get, path = "/billing/v1/budgets", tag = "budgets",
    responses((status = 200, body = BudgetList), (status = 403, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn list(
    State(billing): State<Billing>,
    caller: Caller,
) -> Result<Json<BudgetList>, ApiError> {
    billing.check_reader(&caller).await?;
    let mut budgets = Vec::new();
    for budget in billing.budgets().await? {
        budgets.push(billing.out(budget).await?);
    }
    Ok(Json(BudgetList { budgets }))
}

#[utoipa::path(get, path = "/billing/v1/budgets/{name}", tag = "budgets", params(("name" = String, Path)),
    responses((status = 200, body = BudgetOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn get(
    State(billing): State<Billing>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<BudgetOut>, ApiError> {
    check_name(&name)?;
    billing.check_reader(&caller).await?;
    let budget = billing.budget(&name).await?;
    Ok(Json(billing.out(budget).await?))
}

#[utoipa::path(delete, path = "/billing/v1/budgets/{name}", tag = "budgets", params(("name" = String, Path)),
    responses((status = 204, description = "deleted (its cap lifted)"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "no valid token", body = ErrorBody)))]
pub(crate) async fn delete(
    State(billing): State<Billing>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    billing.check_manager(&caller, &name).await?;
    let deleted = sqlx::query("DELETE FROM budgets WHERE name = $1")
        .bind(&name)
        .execute(&billing.pool)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("budget {name} not found")));
    }
    // Its alerts and state go with it (ON DELETE CASCADE): its cap is lifted.
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(body: serde_json::Value) -> Result<Budget, ApiError> {
        serde_json::from_value::<BudgetIn>(body)
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .check(None)
    }

    #[test]
    fn budgets_are_checked_when_written() {
        let ok = input(
            serde_json::json!({"name":"team","amount":"10.5","scope":{"service":"functions"}}),
        )
        .unwrap();
        assert_eq!(ok.thresholds, vec![50, 80, 100]);
        assert_eq!(ok.actions, vec![BudgetAction::Notify]);
        assert_eq!(ok.amount, Decimal::new(105, 1));
        let numeric = input(serde_json::json!({"name":"n","amount":2,"scope":"all","thresholds":[100,50,50],"actions":["cap","notify","cap"]})).unwrap();
        assert_eq!(numeric.thresholds, vec![50, 100]);
        assert_eq!(
            numeric.actions,
            vec![BudgetAction::Notify, BudgetAction::Cap]
        );
        for bad in [
            serde_json::json!({"name":"","amount":"1","scope":"all"}),
            serde_json::json!({"name":"a/b","amount":"1","scope":"all"}),
            serde_json::json!({"name":"a","amount":"0","scope":"all"}),
            serde_json::json!({"name":"a","amount":"-1","scope":"all"}),
            serde_json::json!({"name":"a","amount":"1e99","scope":"all"}),
            serde_json::json!({"name":"a","amount":true,"scope":"all"}),
            serde_json::json!({"name":"a","amount":"1","scope":{"service":"compute"}}),
            serde_json::json!({"name":"a","amount":"1","scope":{"resource":""}}),
            serde_json::json!({"name":"a","amount":"1","scope":{"owner":"a\u{0}b"}}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","thresholds":[]}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","thresholds":[0]}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","thresholds":[1001]}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","actions":[]}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","actions":["email"]}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","period":"week"}),
            serde_json::json!({"name":"a","amount":"1","scope":"all","colour":"red"}),
        ] {
            assert!(input(bad.clone()).is_err(), "{bad}");
        }
    }
}
