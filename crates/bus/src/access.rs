//! Who may make the bus act, and for whom. The bus is a deputy: a subscription
//! reads a topic and writes to a function, a topic and a dead-letter topic on its
//! owner's behalf, long after the request that made it. So each of those rights is
//! checked when the subscription is made, and again with the owner's current
//! policies before every delivery; and the topics minicloud writes itself take
//! events from the service role only.

use minicloud_authz::{Action, Resource};
use minicloud_authz::{Caller, Credential, Role};
use minicloud_proto::error::{ApiError, ErrorCode};

use crate::Bus;
use crate::model::{SubscriptionOut, Target};

/// Topics whose events minicloud's services write (object and document changes,
/// schedules, async invocations and their dead letters): publishing a forged
/// `minicloud.function.invoke` or object-created event would run functions as
/// whoever subscribed to them, so only the service role publishes there.
pub(crate) const BUILTIN_TOPICS: &[&str] = &[
    "storage",
    "db",
    "schedules",
    "functions",
    "functions.dead-letter",
];

/// `events:Publish` on `topic`, and the service role for a built-in topic.
pub(crate) async fn authorize_publish(
    bus: &Bus,
    caller: &Caller,
    topic: &str,
) -> Result<(), ApiError> {
    if BUILTIN_TOPICS.contains(&topic) && !caller.is_service() {
        return Err(ApiError::forbidden(format!(
            "topic {topic} carries minicloud's own events: only the service role publishes to it"
        )));
    }
    bus.authz
        .authorize_on(caller, Action::EventsPublish, Resource::Topic(topic))
        .await
}

/// Every right a subscription exercises for `caller`: reading its topic, invoking a
/// target function, publishing to a target or dead-letter topic.
pub(crate) async fn authorize_subscription(
    bus: &Bus,
    caller: &Caller,
    topic: &str,
    target: &Target,
    dead_letter_topic: Option<&str>,
) -> Result<(), ApiError> {
    bus.authz
        .authorize_on(caller, Action::EventsSubscribe, Resource::Topic(topic))
        .await?;
    match target {
        Target::Function(function) => {
            bus.authz
                .authorize_on(
                    caller,
                    Action::FunctionsInvoke,
                    Resource::Function(function),
                )
                .await?
        }
        Target::Topic(target) => authorize_publish(bus, caller, target).await?,
        Target::Webhook(_) => {}
    }
    if let Some(dead_letter_topic) = dead_letter_topic {
        authorize_publish(bus, caller, dead_letter_topic).await?;
    }
    Ok(())
}

/// Who owns what `caller` subscribes: its user id or token subject, or for a
/// subject-less credential of a custom role (a role's API key) the role itself,
/// shared by every key of that role; anonymous callers own nothing.
pub(crate) fn owner_of(caller: &Caller) -> Option<String> {
    match (caller.owner(), &caller.role) {
        (Some(uid), _) => Some(uid.to_owned()),
        (None, Role::Custom(role)) => Some(format!("{ROLE_OWNER}{role}")),
        (None, _) => None,
    }
}

const ROLE_OWNER: &str = "role:";

/// The owner as a caller, with the role it subscribed with: its policies are
/// re-read (through the policy cache) at delivery.
pub(crate) fn owner_caller(subscription: &SubscriptionOut) -> Caller {
    Caller {
        role: Role::parse(&subscription.owner_role),
        uid: subscription
            .owner
            .clone()
            .filter(|owner| !owner.starts_with(ROLE_OWNER)),
        session_id: None,
        credential: Credential::AccessToken,
    }
}

/// Whether the owner may still have this event delivered: `Ok(Err(reason))` when a
/// right is gone (the event is dead-lettered with the reason), `Err` when it could
/// not be told (authorisation unavailable: the entry stays pending and is retried).
pub(crate) async fn owner_may_deliver(
    bus: &Bus,
    subscription: &SubscriptionOut,
    target: &Target,
) -> Result<Result<(), String>, ApiError> {
    let owner = owner_caller(subscription);
    match authorize_subscription(
        bus,
        &owner,
        &subscription.topic,
        target,
        subscription.dead_letter_topic.as_deref(),
    )
    .await
    {
        Ok(()) => Ok(Ok(())),
        Err(error) if error.code == ErrorCode::PermissionDenied => Ok(Err(format!(
            "the subscription's owner may no longer do this: {}",
            error.message
        ))),
        Err(error) => Err(error),
    }
}

/// A subscription is managed (read, deleted, its dead letters read and redriven) by
/// its owner or the service role; to anyone else it does not exist.
pub(crate) fn manages(caller: &Caller, subscription: &SubscriptionOut) -> Result<(), ApiError> {
    let owner = owner_of(caller);
    let own = owner.is_some() && owner == subscription.owner;
    if caller.is_service() || own {
        Ok(())
    } else {
        Err(ApiError::not_found("subscription not found"))
    }
}

/// How long a token minted for a subscription's owner lives (cached for half).
pub(crate) const OWNER_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// For a `db` change event: whether the subscription's owner may read the document
/// (its identity policies, the collection's policy and owner conditions, judged by
/// docdb as for `GetDocument`). `db` events otherwise carried every collection's
/// documents to anyone allowed to subscribe to `db`. `Err` when it cannot be told
/// (the entry stays pending).
pub(crate) async fn owner_may_read_document(
    bus: &Bus,
    subscription: &SubscriptionOut,
    event: &serde_json::Value,
) -> Result<bool, ApiError> {
    if subscription.owner_role == "service" {
        return Ok(true);
    }
    let Some(docdb) = &bus.docdb else {
        return Ok(false);
    };
    let data = &event["data"];
    let (Some(collection), Some(id)) = (data["collection"].as_str(), data["id"].as_str()) else {
        return Ok(false);
    };
    let subject = subscription
        .owner
        .clone()
        .unwrap_or_else(|| subscription.owner_role.clone());
    let key = format!("{}\n{subject}", subscription.owner_role);
    let token = match bus.owner_tokens.get(&key) {
        Some(token) => token,
        None => {
            let token = bus
                .authz
                .issue_role_token(&subscription.owner_role, &subject, OWNER_TOKEN_TTL)
                .await?;
            bus.owner_tokens.insert(key, token.clone());
            token
        }
    };
    let mut request = tonic::Request::new(minicloud_proto::docdb::v1::CanReadRequest {
        collection: collection.to_owned(),
        id: id.to_owned(),
        owner: data["owner"].as_str().unwrap_or_default().to_owned(),
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| ApiError::internal("an owner token is not a header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    match docdb.clone().can_read(request).await {
        Ok(response) => Ok(response.into_inner().allowed),
        // The collection is gone, or the id is not one: nothing to read.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            Ok(false)
        }
        Err(status) => Err(ApiError::unavailable("docdb unavailable").with_source(status)),
    }
}
