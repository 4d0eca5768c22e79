//! The one list of minicloud's services. The CLI's `serve`, `up`'s ports,
//! `cloud::start`, the gateway's routing and the service URLs every process is given
//! all derive from [`ServiceName`] and [`PerService`]; adding a service means adding
//! it here (and its crate), not editing six parallel lists.

use std::fmt;
use std::ops::{Index, IndexMut};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    Gateway,
    Auth,
    Storage,
    Docdb,
    Bus,
    Invoker,
    Billing,
}

impl ServiceName {
    /// Every service, in port order.
    pub const ALL: [ServiceName; 7] = [
        ServiceName::Gateway,
        ServiceName::Auth,
        ServiceName::Storage,
        ServiceName::Docdb,
        ServiceName::Bus,
        ServiceName::Invoker,
        ServiceName::Billing,
    ];

    /// The services behind the gateway.
    pub const BEHIND_GATEWAY: [ServiceName; 6] = [
        ServiceName::Auth,
        ServiceName::Storage,
        ServiceName::Docdb,
        ServiceName::Bus,
        ServiceName::Invoker,
        ServiceName::Billing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceName::Gateway => "gateway",
            ServiceName::Auth => "auth",
            ServiceName::Storage => "storage",
            ServiceName::Docdb => "docdb",
            ServiceName::Bus => "bus",
            ServiceName::Invoker => "invoker",
            ServiceName::Billing => "billing",
        }
    }

    /// 4600 for the gateway, then 4601–4606 in [`ServiceName::ALL`]'s order.
    pub const fn default_port(self) -> u16 {
        4600 + self as u16
    }

    /// Where a process finds this service when nobody said otherwise: its default
    /// port on loopback.
    pub fn default_url(self) -> String {
        format!("http://127.0.0.1:{}", self.default_port())
    }

    /// The public path prefixes the gateway sends to this service (REST, the Lambda
    /// Invoke path, HTTP triggers).
    pub const fn public_prefixes(self) -> &'static [&'static str] {
        match self {
            ServiceName::Gateway => &[],
            ServiceName::Auth => &["/auth/v1"],
            ServiceName::Storage => &["/storage/v1"],
            ServiceName::Docdb => &["/db/v1", "/rest/v1"],
            ServiceName::Bus => &["/events/v1"],
            ServiceName::Invoker => &[
                "/functions/v1",
                "/2015-03-31/functions",
                "/2017-10-31/functions",
                "/fn",
            ],
            ServiceName::Billing => &["/billing/v1"],
        }
    }

    /// The service a public request path belongs to: a prefix matches whole segments
    /// (`/fn` takes `/fn/x`, never `/fnord`).
    pub fn owning(path: &str) -> Option<ServiceName> {
        ServiceName::BEHIND_GATEWAY.into_iter().find(|service| {
            service.public_prefixes().iter().any(|prefix| {
                path.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        })
    }
}

/// Where storage serves the S3 API; the gateway serves it at its own root to requests
/// signed with SigV4 and to `<bucket>.localhost` hosts.
pub const S3_PREFIX: &str = "/s3";

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?} (one of gateway, auth, storage, docdb, bus, invoker, billing)")]
pub struct UnknownService(pub String);

impl FromStr for ServiceName {
    type Err = UnknownService;
    fn from_str(name: &str) -> Result<ServiceName, UnknownService> {
        ServiceName::ALL
            .into_iter()
            .find(|service| service.as_str() == name)
            .ok_or_else(|| UnknownService(name.to_owned()))
    }
}

/// One value for each service: its listener, its URL, its port. Named fields for
/// readable call sites, indexable by [`ServiceName`] for code that walks them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerService<T> {
    pub gateway: T,
    pub auth: T,
    pub storage: T,
    pub docdb: T,
    pub bus: T,
    pub invoker: T,
    pub billing: T,
}

impl<T> PerService<T> {
    pub fn from_fn(mut value: impl FnMut(ServiceName) -> T) -> PerService<T> {
        PerService {
            gateway: value(ServiceName::Gateway),
            auth: value(ServiceName::Auth),
            storage: value(ServiceName::Storage),
            docdb: value(ServiceName::Docdb),
            bus: value(ServiceName::Bus),
            invoker: value(ServiceName::Invoker),
            billing: value(ServiceName::Billing),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ServiceName, &T)> {
        ServiceName::ALL.into_iter().map(|name| (name, &self[name]))
    }

    pub fn map<U>(self, mut f: impl FnMut(ServiceName, T) -> U) -> PerService<U> {
        PerService {
            gateway: f(ServiceName::Gateway, self.gateway),
            auth: f(ServiceName::Auth, self.auth),
            storage: f(ServiceName::Storage, self.storage),
            docdb: f(ServiceName::Docdb, self.docdb),
            bus: f(ServiceName::Bus, self.bus),
            invoker: f(ServiceName::Invoker, self.invoker),
            billing: f(ServiceName::Billing, self.billing),
        }
    }
}

impl<T> Index<ServiceName> for PerService<T> {
    type Output = T;
    fn index(&self, name: ServiceName) -> &T {
        match name {
            ServiceName::Gateway => &self.gateway,
            ServiceName::Auth => &self.auth,
            ServiceName::Storage => &self.storage,
            ServiceName::Docdb => &self.docdb,
            ServiceName::Bus => &self.bus,
            ServiceName::Invoker => &self.invoker,
            ServiceName::Billing => &self.billing,
        }
    }
}

impl<T> IndexMut<ServiceName> for PerService<T> {
    fn index_mut(&mut self, name: ServiceName) -> &mut T {
        match name {
            ServiceName::Gateway => &mut self.gateway,
            ServiceName::Auth => &mut self.auth,
            ServiceName::Storage => &mut self.storage,
            ServiceName::Docdb => &mut self.docdb,
            ServiceName::Bus => &mut self.bus,
            ServiceName::Invoker => &mut self.invoker,
            ServiceName::Billing => &mut self.billing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ports_follow_the_list() {
        for (i, service) in ServiceName::ALL.into_iter().enumerate() {
            assert_eq!(service.as_str().parse::<ServiceName>(), Ok(service));
            assert_eq!(service.default_port(), 4600 + i as u16);
        }
        assert!("Auth".parse::<ServiceName>().is_err());
        assert!("".parse::<ServiceName>().is_err());
    }

    #[test]
    fn public_paths_route_by_whole_segments() {
        assert_eq!(ServiceName::owning("/auth/v1"), Some(ServiceName::Auth));
        assert_eq!(
            ServiceName::owning("/storage/v1/object/b/k"),
            Some(ServiceName::Storage)
        );
        assert_eq!(ServiceName::owning("/db/v1/x"), Some(ServiceName::Docdb));
        assert_eq!(
            ServiceName::owning("/events/v1/topics"),
            Some(ServiceName::Bus)
        );
        assert_eq!(
            ServiceName::owning("/2015-03-31/functions/f/invocations"),
            Some(ServiceName::Invoker)
        );
        assert_eq!(ServiceName::owning("/fn/hello"), Some(ServiceName::Invoker));
        assert_eq!(
            ServiceName::owning("/billing/v1/usage"),
            Some(ServiceName::Billing)
        );
        assert_eq!(ServiceName::owning("/fnord"), None);
        assert_eq!(ServiceName::owning("/auth/v10"), None);
        assert_eq!(ServiceName::owning("/"), None);
    }

    #[test]
    fn per_service_indexes_the_field_of_that_name() {
        let ports = PerService::from_fn(ServiceName::default_port);
        for (name, port) in ports.iter() {
            assert_eq!(*port, name.default_port());
        }
        assert_eq!(ports.docdb, 4603);
        let doubled = ports.map(|_, p| u32::from(p) * 2);
        assert_eq!(doubled[ServiceName::Invoker], 9210);
    }
}
