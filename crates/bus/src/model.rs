//! Topics and subscriptions as stored and validated: below the REST and gRPC
//! handlers (`topics`, `subscriptions`), the rights checks (`access`) and the
//! delivery workers, which all use them.

use chrono::{DateTime, Utc};
use minicloud_proto::error::ApiError;
use serde::Serialize;
use serde_json::Value;

pub(crate) fn check_topic_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "topic name: 1-128 of A-Z a-z 0-9 _ - ., starting with a letter or digit",
        ))
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct SubscriptionOut {
    pub id: String,
    pub topic: String,
    #[schema(value_type = Object)]
    pub pattern: Value,
    #[schema(value_type = Object)]
    pub target: Value,
    pub max_attempts: i32,
    pub min_backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub max_age_s: i64,
    pub dead_letter_topic: Option<String>,
    pub max_in_flight: i32,
    pub owner: Option<String>,
    /// The role the owner subscribed with; deliveries re-check its current rights.
    pub owner_role: String,
    pub created_at: DateTime<Utc>,
}

macro_rules! subscription_columns {
    () => {
        "id, topic, pattern, target, max_attempts, min_backoff_ms, max_backoff_ms, max_age_s, dead_letter_topic, max_in_flight, owner, owner_role, created_at"
    };
}
pub(crate) use subscription_columns;

/// Where a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Webhook(reqwest::Url),
    Topic(String),
    /// Invoked through the invoker's gRPC; a function error is a failed delivery.
    Function(String),
}

impl Target {
    pub(crate) fn parse(value: &Value) -> Result<Target, ApiError> {
        let Value::Object(map) = value else {
            return Err(ApiError::invalid("target is an object"));
        };
        if map.len() != 1 {
            return Err(ApiError::invalid(
                "target names exactly one of webhook, topic, function",
            ));
        }
        match map.iter().next() {
            Some((kind, Value::String(url))) if kind == "webhook" => {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| ApiError::invalid(format!("webhook URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(ApiError::invalid("webhook URL must be http(s)://host/…"));
                }
                Ok(Target::Webhook(url))
            }
            Some((kind, Value::String(topic))) if kind == "topic" => {
                check_topic_name(topic)?;
                Ok(Target::Topic(topic.clone()))
            }
            Some((kind, Value::String(function))) if kind == "function" => {
                let valid = !function.is_empty()
                    && function.len() <= 64
                    && function
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return Err(ApiError::invalid(
                        "target function name: 1-64 of A-Z a-z 0-9 - _",
                    ));
                }
                Ok(Target::Function(function.clone()))
            }
            _ => Err(ApiError::invalid(
                "target: {\"webhook\": \"http://…\"}, {\"topic\": \"name\"} or {\"function\": \"name\"}",
            )),
        }
    }
}
