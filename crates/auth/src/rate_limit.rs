//! Limits on signup, sign-in and refresh per client address, and per email *and*
//! client address (governor's GCRA, keyed), so that guessing passwords or minting
//! accounts is slow. Keying the email's limit by address too means failures from
//! elsewhere cannot lock an account's owner out; the address is the one the gateway
//! saw ([`crate::client_ip`]), never a header the client wrote.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::{AuthError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Signup,
    SignIn,
    Refresh,
    /// Recovery and sign-in mails (`/recover`, `/otp`).
    SendMail,
    /// One-time codes and links (`/verify`).
    Verify,
}

const ENDPOINTS: usize = 5;

pub(crate) struct RateLimits {
    per_ip: [DefaultKeyedRateLimiter<IpAddr>; ENDPOINTS],
    per_email: [DefaultKeyedRateLimiter<(String, IpAddr)>; ENDPOINTS],
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    /// Requests per minute allowed for each endpoint.
    pub(crate) fn new(per_ip_per_minute: u32, per_email_per_minute: u32) -> Self {
        let ip = || DefaultKeyedRateLimiter::keyed(quota(per_ip_per_minute));
        let email = || DefaultKeyedRateLimiter::keyed(quota(per_email_per_minute));
        RateLimits {
            per_ip: std::array::from_fn(|_| ip()),
            per_email: std::array::from_fn(|_| email()),
        }
    }

    fn index(endpoint: Endpoint) -> usize {
        match endpoint {
            Endpoint::Signup => 0,
            Endpoint::SignIn => 1,
            Endpoint::Refresh => 2,
            Endpoint::SendMail => 3,
            Endpoint::Verify => 4,
        }
    }

    pub(crate) fn check(
        &self,
        endpoint: Endpoint,
        ip: Option<IpAddr>,
        email: Option<&str>,
    ) -> Result<()> {
        let i = Self::index(endpoint);
        let now = DefaultClock::default().now();
        if let Some(ip) = ip
            && let Err(not_until) = self.per_ip[i].check_key(&ip)
        {
            return Err(limited(not_until.wait_time_from(now)));
        }
        let address = ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        if let Some(email) = email
            && let Err(not_until) = self.per_email[i].check_key(&(email.to_owned(), address))
        {
            return Err(limited(not_until.wait_time_from(now)));
        }
        Ok(())
    }

    /// Forgets keys whose buckets are full again, so memory stays bounded.
    pub(crate) fn prune(&self) {
        for limiter in &self.per_ip {
            limiter.retain_recent();
        }
        for limiter in &self.per_email {
            limiter.retain_recent();
        }
    }
}

fn limited(wait: Duration) -> AuthError {
    AuthError::RateLimited {
        retry_after_s: wait.as_secs().max(1),
    }
}
