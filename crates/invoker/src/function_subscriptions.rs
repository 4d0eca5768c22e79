//! A function's bus subscriptions: the one that carries its async invocations (events
//! on the `functions` topic, Lambda's retry policy, then the dead-letter topic), and,
//! when the function is deleted, every one its triggers made. Below the registry
//! (deploy, delete), the invocation API (enqueue) and the triggers.

use axum::body::Bytes;
use minicloud_outbox::OutboxEvent;
use minicloud_proto::bus::v1::{
    DeleteSubscriptionRequest, EnsureSubscriptionRequest, PublishRequest,
};
use minicloud_proto::error::ApiError;
use serde_json::{Value, json};

use crate::Invoker;

/// The topic async invocations travel on, and where they land after the retries.
pub(crate) const ASYNC_TOPIC: &str = "functions";
pub(crate) const DEAD_LETTER_TOPIC: &str = "functions.dead-letter";
pub(crate) const ASYNC_EVENT_TYPE: &str = "minicloud.function.invoke";

pub(crate) fn bus(invoker: &Invoker) -> Result<crate::BusClient, ApiError> {
    invoker
        .0
        .bus
        .clone()
        .ok_or_else(|| ApiError::unavailable("no bus is configured (--invoker-bus-url)"))
}

fn async_subscription_id(name: &str) -> String {
    format!("sub_fnasync_{name}")
}

/// Async invocations of `name` are the events on `functions` with its name as
/// subject: Lambda's retry policy (2 retries), then the dead-letter topic.
pub(crate) async fn ensure_async_subscription(
    invoker: &Invoker,
    name: &str,
) -> Result<(), ApiError> {
    let Some(mut bus) = invoker.0.bus.clone() else {
        return Ok(());
    };
    let spec = json!({
        "topic": ASYNC_TOPIC,
        "pattern": {"subject": [name], "type": [ASYNC_EVENT_TYPE]},
        "target": {"function": name},
        "retry": {"max_attempts": 3, "min_backoff_ms": 500, "max_backoff_ms": 60_000, "max_age_s": 6 * 3600},
        "dead_letter_topic": DEAD_LETTER_TOPIC,
        "max_in_flight": 16,
    });
    bus.ensure_subscription(EnsureSubscriptionRequest {
        id: async_subscription_id(name),
        subscription_json: spec.to_string(),
        owner: String::new(),
    })
    .await
    .map_err(ApiError::from)?;
    Ok(())
}

/// Queues an async invocation of a function the caller found to exist; its id is
/// the request id the caller gets.
pub(crate) async fn enqueue_async(
    invoker: &Invoker,
    name: &str,
    payload: Bytes,
) -> Result<String, ApiError> {
    let mut bus = bus(invoker)?;
    let data: Value = serde_json::from_slice(&payload)
        .map_err(|e| ApiError::invalid(format!("the payload must be JSON: {e}")))?;
    // The outbox's event type carries the id, time and trace context for us; the
    // publish itself is direct, as the caller waits for the 202.
    let event = OutboxEvent::new(
        "minicloud/invoker",
        ASYNC_EVENT_TYPE,
        Some(name.to_owned()),
        data,
    );
    bus.publish(PublishRequest {
        topic: ASYNC_TOPIC.into(),
        events: vec![event.to_proto()],
    })
    .await
    .map_err(ApiError::from)?;
    Ok(event.id)
}

/// The event a bus delivery hands the function: an async invocation's own payload,
/// or the CloudEvent itself for a trigger.
pub(crate) fn event_payload(payload: &[u8]) -> Result<Bytes, ApiError> {
    let event: Value = serde_json::from_slice(payload)
        .map_err(|e| ApiError::invalid(format!("the event must be JSON: {e}")))?;
    if event["type"] == ASYNC_EVENT_TYPE {
        Ok(serde_json::to_vec(&event["data"])
            .unwrap_or_default()
            .into())
    } else {
        Ok(Bytes::copy_from_slice(payload))
    }
}

/// Before a function is deleted: its bus subscriptions go first, so no event
/// arrives for a function that no longer exists.
pub(crate) async fn remove_all(invoker: &Invoker, name: &str) -> Result<(), ApiError> {
    let Some(mut bus) = invoker.0.bus.clone() else {
        return Ok(());
    };
    let mut ids: Vec<String> = sqlx::query_scalar(
        "SELECT subscription_id FROM triggers WHERE function = $1 AND subscription_id IS NOT NULL",
    )
    .bind(name)
    .fetch_all(&invoker.0.pool)
    .await
    .map_err(ApiError::internal)?;
    ids.push(async_subscription_id(name));
    for id in ids {
        bus.delete_subscription(DeleteSubscriptionRequest { id })
            .await
            .map_err(ApiError::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_events_unwrap_to_their_data() {
        let event = json!({"type": ASYNC_EVENT_TYPE, "data": {"n": 1}});
        let payload = event_payload(event.to_string().as_bytes()).unwrap();
        assert_eq!(&payload[..], br#"{"n":1}"#);
        let other = json!({"type": "minicloud.storage.object.created", "data": {"n": 1}});
        let payload = event_payload(other.to_string().as_bytes()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), other);
    }
}
