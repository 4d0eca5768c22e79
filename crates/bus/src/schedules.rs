//! Schedules: `rate(N seconds|minutes|hours|days)` or cron expressions in UTC or a
//! named time zone, each publishing a CloudEvent per tick to a topic.
//!
//! Exactly once per tick across replicas: every replica polls, but a due schedule is
//! taken with `FOR UPDATE SKIP LOCKED`, and its event id is `<name>@<tick>`, so a
//! replica that dies between publishing and advancing the schedule re-publishes the
//! same id, which the bus's dedupe stores once.
//!
//! Catch-up: ticks missed while no bus ran collapse into one event for the latest
//! missed tick; the schedule then resumes at its next future tick.

use minicloud_authz::{Action, Resource};
use std::str::FromStr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use minicloud_authz::Caller;
use minicloud_proto::error::{ApiError, ErrorBody, Json, Path};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Bus;

/// A parsed schedule expression.
#[derive(Debug, Clone)]
pub(crate) enum Every {
    Rate(chrono::Duration),
    Cron(Box<cron::Schedule>),
}

impl Every {
    pub(crate) fn parse(expression: &str) -> Result<Every, ApiError> {
        let expression = expression.trim();
        if let Some(inner) = expression
            .strip_prefix("rate(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let mut parts = inner.split_whitespace();
            let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ApiError::invalid("rate(N unit): e.g. rate(5 minutes)"));
            };
            let n: i64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0 && *n <= 1_000_000)
                .ok_or_else(|| ApiError::invalid("rate: N must be a positive whole number"))?;
            let period = match unit.trim_end_matches('s') {
                "second" => chrono::Duration::seconds(n),
                "minute" => chrono::Duration::minutes(n),
                "hour" => chrono::Duration::hours(n),
                "day" => chrono::Duration::days(n),
                _ => {
                    return Err(ApiError::invalid(
                        "rate units: seconds, minutes, hours, days",
                    ));
                }
            };
            return Ok(Every::Rate(period));
        }
        let body = expression
            .strip_prefix("cron(")
            .and_then(|c| c.strip_suffix(')'))
            .unwrap_or(expression);
        // Standard cron has 5 fields; the parser wants seconds first.
        let fields = body.split_whitespace().count();
        let normalised = match fields {
            5 => format!("0 {body}"),
            6 | 7 => body.to_owned(),
            _ => {
                return Err(ApiError::invalid(
                    "cron: 5 fields (or 6-7 with seconds and years)",
                ));
            }
        };
        let schedule = cron::Schedule::from_str(&normalised)
            .map_err(|e| ApiError::invalid(format!("cron: {e}")))?;
        Ok(Every::Cron(Box::new(schedule)))
    }

    /// The first tick strictly after `after`, in `zone`.
    pub(crate) fn next_after(
        &self,
        after: DateTime<Utc>,
        zone: chrono_tz::Tz,
    ) -> Option<DateTime<Utc>> {
        match self {
            Every::Rate(period) => Some(after + *period),
            Every::Cron(schedule) => schedule
                .after(&after.with_timezone(&zone))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The latest tick at or before `now`, starting from the due tick `due`.
    fn latest_due(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        zone: chrono_tz::Tz,
    ) -> DateTime<Utc> {
        let mut latest = due;
        // Bounded: a schedule that was down for years does not spin.
        for _ in 0..100_000 {
            match self.next_after(latest, zone) {
                Some(next) if next <= now => latest = next,
                _ => break,
            }
        }
        latest
    }
}

fn zone(name: &str) -> Result<chrono_tz::Tz, ApiError> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| ApiError::invalid(format!("unknown time zone {name:?}")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleIn {
    pub name: String,
    /// `rate(5 minutes)` or a cron expression (`0 * * * *`, `cron(0 9 * * MON-FRI)`).
    pub schedule: String,
    #[serde(default)]
    pub timezone: Option<String>,
    /// Where the ticks go (default `schedules`).
    #[serde(default)]
    pub topic: Option<String>,
    /// The `data` of every tick's event.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct ScheduleOut {
    pub name: String,
    pub expression: String,
    pub timezone: String,
    pub topic: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub next_fire_at: DateTime<Utc>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

macro_rules! schedule_columns {
    () => {
        "name, expression, timezone, topic, data, next_fire_at, last_fired_at, created_at"
    };
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ScheduleList {
    pub schedules: Vec<ScheduleOut>,
}

#[utoipa::path(post, path = "/events/v1/schedules", tag = "schedules", request_body = ScheduleIn,
    responses((status = 201, body = ScheduleOut), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(bus): State<Bus>,
    caller: Caller,
    Json(input): Json<ScheduleIn>,
) -> Result<(StatusCode, Json<ScheduleOut>), ApiError> {
    crate::model::check_topic_name(&input.name)
        .map_err(|_| ApiError::invalid("schedule name: 1-128 of A-Z a-z 0-9 _ - ."))?;
    let every = Every::parse(&input.schedule)?;
    let timezone = input.timezone.unwrap_or_else(|| "UTC".into());
    let tz = zone(&timezone)?;
    let topic = input.topic.unwrap_or_else(|| "schedules".into());
    crate::model::check_topic_name(&topic)?;
    let data = input.data.unwrap_or_else(|| serde_json::json!({}));
    if data.to_string().len() > 64 * 1024 {
        return Err(ApiError::invalid("data larger than 64 KiB"));
    }
    // `schedules` is where schedules fire by default: `events:Publish` on it is
    // what a schedule there needs. Other built-in topics stay the service role's.
    if topic == "schedules" {
        bus.authz
            .authorize(&caller, Action::EventsPublish, "events:schedules", &[])
            .await?;
    } else {
        crate::access::authorize_publish(&bus, &caller, &topic).await?;
    }
    let next = every
        .next_after(Utc::now(), tz)
        .ok_or_else(|| ApiError::invalid("the schedule never fires"))?;
    let schedule = sqlx::query_as::<_, ScheduleOut>(concat!(
        "INSERT INTO schedules (name, expression, timezone, topic, data, next_fire_at, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING ",
        schedule_columns!()
    ))
    .bind(&input.name)
    .bind(&input.schedule)
    .bind(&timezone)
    .bind(&topic)
    .bind(&data)
    .bind(next)
    .bind(caller.owner())
    .fetch_optional(&bus.pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
            ApiError::not_found(format!("topic {topic} not found"))
        }
        _ => ApiError::internal(e),
    })?
    .ok_or_else(|| ApiError::conflict(format!("schedule {} exists", input.name)))?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

#[utoipa::path(get, path = "/events/v1/schedules", tag = "schedules", responses((status = 200, body = ScheduleList)))]
pub(crate) async fn list(State(bus): State<Bus>) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = sqlx::query_as::<_, ScheduleOut>(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM schedules ORDER BY name LIMIT 1000"
    ))
    .fetch_all(&bus.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(ScheduleList { schedules }))
}

#[utoipa::path(delete, path = "/events/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(bus): State<Bus>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let topic: Option<String> = sqlx::query_scalar("SELECT topic FROM schedules WHERE name = $1")
        .bind(&name)
        .fetch_optional(&bus.pool)
        .await
        .map_err(ApiError::internal)?;
    let topic = topic.ok_or_else(|| ApiError::not_found("schedule not found"))?;
    bus.authz
        .authorize_on(&caller, Action::EventsPublish, Resource::Topic(&topic))
        .await?;
    sqlx::query("DELETE FROM schedules WHERE name = $1")
        .bind(&name)
        .execute(&bus.pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fires every due schedule once; returns how many fired.
pub(crate) async fn fire_due(bus: &Bus) -> Result<usize, ApiError> {
    let mut tx = bus.pool.begin().await.map_err(ApiError::internal)?;
    let due = sqlx::query_as::<_, ScheduleOut>(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM schedules WHERE next_fire_at <= now() ORDER BY next_fire_at LIMIT 100 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let now = Utc::now();
    for schedule in &due {
        let (Ok(every), Ok(tz)) = (Every::parse(&schedule.expression), zone(&schedule.timezone))
        else {
            continue;
        };
        let tick = every.latest_due(schedule.next_fire_at, now, tz);
        let stamp = tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": format!("{}@{stamp}", schedule.name),
            "source": format!("/minicloud/schedules/{}", schedule.name),
            "type": "minicloud.schedule.fired",
            "time": stamp,
            "subject": schedule.name,
            "data": schedule.data,
        });
        bus.publish(&schedule.topic, &[event], "service").await?;
        // From the tick, not from now: a rate keeps its cadence instead of drifting.
        let next = every
            .next_after(tick, tz)
            .unwrap_or(now + chrono::Duration::days(36500));
        sqlx::query("UPDATE schedules SET next_fire_at = $2, last_fired_at = $3 WHERE name = $1")
            .bind(&schedule.name)
            .bind(next)
            .bind(tick)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(due.len())
}

pub(crate) fn spawn(bus: Bus, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(error) = fire_due(&bus).await {
                tracing::warn!(%error, "firing schedules failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn expressions() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 7, 30).unwrap();
        let utc = chrono_tz::UTC;
        let rate = Every::parse("rate(5 minutes)").unwrap();
        assert_eq!(
            rate.next_after(t, utc),
            Some(t + chrono::Duration::minutes(5))
        );
        let hourly = Every::parse("0 * * * *").unwrap();
        assert_eq!(
            hourly.next_after(t, utc),
            Some(Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap())
        );
        let wrapped = Every::parse("cron(30 9 * * *)").unwrap();
        assert_eq!(
            wrapped.next_after(t, utc),
            Some(Utc.with_ymd_and_hms(2026, 3, 2, 9, 30, 0).unwrap())
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = Every::parse("0 9 * * *").unwrap();
        assert_eq!(
            paris.next_after(t, chrono_tz::Europe::Paris),
            Some(Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap())
        );
        for bad in [
            "rate(0 minutes)",
            "rate(5 fortnights)",
            "rate(five minutes)",
            "* * *",
            "61 * * * *",
            "cron(nope)",
        ] {
            assert!(Every::parse(bad).is_err(), "{bad}");
        }
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn missed_ticks_collapse_into_the_latest() {
        let every = Every::parse("rate(1 minutes)").unwrap();
        let due = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let now = due + chrono::Duration::seconds(3 * 60 + 20);
        assert_eq!(
            every.latest_due(due, now, chrono_tz::UTC),
            due + chrono::Duration::minutes(3)
        );
        assert_eq!(every.latest_due(due, due, chrono_tz::UTC), due);
    }
}
