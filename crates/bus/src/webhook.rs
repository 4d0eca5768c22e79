//! Webhook deliveries: where they may go, and how a receiver knows they are ours.
//!
//! - Destinations are checked when the connection is made, after DNS (a resolver of
//!   our own filters every address a name resolves to, and IP literals are checked
//!   before the request), so a name that resolves to a forbidden address is refused
//!   too. Link-local addresses (the clouds' metadata services among them),
//!   unspecified, broadcast and multicast addresses, and minicloud's own internal
//!   ports are always refused; loopback and private ranges only where the operator
//!   allows them (`--bus-webhook-private`, on under `minicloud up`) or lists them
//!   (`--bus-webhook-allow`). Redirects are not followed.
//! - Every delivery is signed as the Standard Webhooks specification says
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256
//!   of "id.timestamp.body">`) with a per-subscription secret returned once at
//!   creation, so receivers verify with the existing libraries.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use ipnet::IpNet;
use minicloud_proto::error::ApiError;
use rand::RngCore as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where webhooks may connect.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressPolicy {
    /// Loopback and private ranges are allowed (local development).
    pub private: bool,
    /// Ranges allowed although private (never the always-refused ones).
    pub allow: Vec<IpNet>,
    /// minicloud's own servers' ports: refused on every host.
    pub internal_ports: Vec<u16>,
}

impl AddressPolicy {
    /// Why `ip` may not be reached, if it may not.
    pub(crate) fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            // ::ffff:a.b.c.d is a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let always = match ip {
            IpAddr::V4(v4) => {
                v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.is_multicast()
                    // Alibaba's metadata service lives outside link-local.
                    || v4.octets() == [100, 100, 100, 200]
            }
            IpAddr::V6(v6) => {
                v6.is_unicast_link_local()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    // AWS's IPv6 metadata address.
                    || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
            }
        };
        if always {
            return Some("a link-local, metadata, unspecified or multicast address");
        }
        let private = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_private()
                    // Carrier-grade NAT, 100.64.0.0/10.
                    || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
            }
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
        };
        if private && !self.private && !self.allow.iter().any(|net| net.contains(&ip)) {
            return Some(
                "a loopback or private address (allow with --bus-webhook-private or --bus-webhook-allow)",
            );
        }
        None
    }

    /// Checks what can be checked before any DNS: the port, and the host when it is
    /// an IP literal.
    pub(crate) fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let port = url.port_or_known_default().unwrap_or(0);
        if self.internal_ports.contains(&port) {
            return Err(format!(
                "webhook port {port} is a port of minicloud's own servers"
            ));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Some(why) = self.refusal(ip)
        {
            return Err(format!("webhook address {ip} is {why}"));
        }
        Ok(())
    }
}

/// Resolves names for webhook connections and keeps only the addresses the policy
/// allows: the check happens where the connection is made, not on the URL's text.
struct GuardedResolver(Arc<AddressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.refusal(addr.ip()) {
                    Some(why) => {
                        refused = Some(format!("{host} resolves to {}, {why}", addr.ip()));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let message = refused.unwrap_or_else(|| format!("{host} resolves to nothing"));
                return Err(message.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client for webhooks: the guarded resolver, no redirects.
pub(crate) fn client(policy: Arc<AddressPolicy>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(policy)))
        // No proxy from the environment: it would connect on our behalf, past
        // the resolver's checks.
        .no_proxy()
        .build()
}

/// A new subscription's signing secret, `whsec_<base64 of 24 random bytes>`.
pub(crate) fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// `webhook-signature` for `body`, per Standard Webhooks.
pub(crate) fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// `webhook-id`: the same for every attempt of one event (receivers dedupe on it),
/// and header-safe whatever the event's own id holds.
fn message_id(event: &Value) -> String {
    let digest = Sha256::digest(
        format!(
            "{}\n{}",
            event["source"].as_str().unwrap_or_default(),
            event["id"].as_str().unwrap_or_default()
        )
        .as_bytes(),
    );
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// One attempt: CloudEvents binary mode (attributes as `ce-` headers, data as the
/// body), signed when the subscription has a secret.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    policy: &AddressPolicy,
    url: &reqwest::Url,
    secret: Option<&str>,
    event: &Value,
    attempt: i32,
) -> Result<(), String> {
    policy.check_url(url)?;
    let mut request = http.post(url.clone()).timeout(WEBHOOK_TIMEOUT);
    let mut content_type = "application/json".to_owned();
    if let Value::Object(map) = event {
        for (name, value) in map {
            match name.as_str() {
                "data" | "data_base64" => {}
                "datacontenttype" => {
                    content_type = value.as_str().unwrap_or("application/json").to_owned()
                }
                _ => {
                    let value = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    request = request.header(format!("ce-{name}"), value);
                }
            }
        }
        if let Some(traceparent) = map.get("traceparent").and_then(Value::as_str) {
            request = request.header("traceparent", traceparent);
        }
    }
    let body: Vec<u8> = match (event.get("data"), event.get("data_base64")) {
        (Some(Value::String(s)), _)
            if !event["datacontenttype"]
                .as_str()
                .unwrap_or("application/json")
                .contains("json") =>
        {
            s.clone().into_bytes()
        }
        (Some(data), _) => data.to_string().into_bytes(),
        (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if let Some(secret) = secret {
        let id = message_id(event);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, &id, timestamp, &body)
            .ok_or_else(|| "the subscription's signing secret is malformed".to_owned())?;
        request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
    }
    let response = request
        .header("ce-deliveryattempt", attempt.to_string())
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook request failed: {}", error_chain(&e)))?;
    if response.status().is_success() {
        Ok(())
    } else if response.status().is_redirection() {
        Err(format!(
            "webhook answered {} (redirects are not followed)",
            response.status()
        ))
    } else {
        Err(format!("webhook answered {}", response.status()))
    }
}

/// The error and its causes: the resolver's refusal is a cause of reqwest's error.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A subscription's webhook URL, checked at creation (names are checked again, after
/// DNS, at every delivery).
pub(crate) fn check_target(policy: &AddressPolicy, url: &reqwest::Url) -> Result<(), ApiError> {
    policy.check_url(url).map_err(ApiError::invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_refused_addresses_stay_refused_even_when_private_ones_are_allowed() {
        let policy = AddressPolicy {
            private: true,
            allow: vec!["169.254.0.0/16".parse().unwrap()],
            internal_ports: vec![5432],
        };
        for ip in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(policy.refusal(ip.parse().unwrap()).is_some(), "{ip}");
        }
        assert!(policy.refusal("127.0.0.1".parse().unwrap()).is_none());
        let url = reqwest::Url::parse("http://example.com:5432/").unwrap();
        assert!(policy.check_url(&url).is_err());
    }

    #[test]
    fn private_ranges_need_the_flag_or_the_allow_list() {
        let policy = AddressPolicy {
            private: false,
            allow: vec!["10.1.0.0/16".parse().unwrap()],
            internal_ports: Vec::new(),
        };
        for ip in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
        ] {
            assert!(policy.refusal(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["10.1.2.3", "93.184.216.34", "2606:2800:220:1::1"] {
            assert!(policy.refusal(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signatures_match_the_specifications_example() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("nope", "id", 1, b""), None);
    }
}
