//! Host names of endpoints, resolved ahead of time. grpc's xDS client takes only IP
//! literals, and resources are built on the server's tasks, which must not wait on DNS:
//! so names are looked up when an instance brings them ([`HostCache::resolve`]) and looked
//! up again periodically ([`HostCache::refresh`]); building reads only what is cached.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use super::resources::HostResolver;
use crate::sync::lock;

/// The addresses of every host name in use, as last resolved.
#[derive(Debug, Default)]
pub struct HostCache {
    /// Host → its addresses, sorted (a name that did not resolve maps to none, so it is not
    /// looked up again until the next refresh).
    resolved: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl HostCache {
    /// Looks up the names among `hosts` not resolved yet (IP literals need no lookup).
    /// True if that changed what [`HostResolver::lookup`] answers.
    pub async fn resolve<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> bool {
        let missing: Vec<String> = {
            let resolved = lock(&self.resolved);
            hosts
                .into_iter()
                .filter(|host| host.parse::<IpAddr>().is_err() && !resolved.contains_key(*host))
                .map(str::to_string)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        let mut changed = false;
        for host in missing {
            let addresses = look_up(&host).await;
            changed |= !addresses.is_empty();
            lock(&self.resolved).insert(host, addresses);
        }
        changed
    }

    /// Forgets the names not among `in_use` and looks up the others again. True if any
    /// answer changed.
    pub async fn refresh(&self, in_use: &HashSet<String>) -> bool {
        let known: Vec<String> = {
            let mut resolved = lock(&self.resolved);
            resolved.retain(|host, _| in_use.contains(host));
            resolved.keys().cloned().collect()
        };
        let mut changed = false;
        for host in known {
            let addresses = look_up(&host).await;
            let mut resolved = lock(&self.resolved);
            if resolved.get(&host) != Some(&addresses) {
                changed = true;
                resolved.insert(host, addresses);
            }
        }
        changed
    }

    /// How many host names are cached.
    pub fn len(&self) -> usize {
        lock(&self.resolved).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HostResolver for HostCache {
    fn lookup(&self, host: &str) -> Vec<IpAddr> {
        lock(&self.resolved).get(host).cloned().unwrap_or_default()
    }
}

/// The addresses of `host`, sorted and without repeats; none when it does not resolve.
async fn look_up(host: &str) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(found) => found.map(|address| address.ip()).collect(),
        Err(_) => Vec::new(),
    };
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_are_resolved_once_then_served_from_the_cache() {
        let hosts = HostCache::default();
        assert!(hosts.lookup("localhost").is_empty(), "nothing is looked up while building");
        assert!(hosts.resolve(["localhost", "127.0.0.1", "localhost"]).await);
        assert!(hosts.lookup("localhost").iter().any(IpAddr::is_loopback));
        assert_eq!(hosts.len(), 1, "IP literals are not cached");
        assert!(!hosts.resolve(["localhost"]).await, "a known name is not looked up again");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_has_no_address_and_unused_names_are_forgotten() {
        let hosts = HostCache::default();
        assert!(!hosts.resolve(["no-such-host.invalid"]).await);
        assert!(hosts.lookup("no-such-host.invalid").is_empty());
        hosts.resolve(["localhost"]).await;
        assert_eq!(hosts.len(), 2);
        let in_use: HashSet<String> = ["localhost".to_string()].into();
        assert!(!hosts.refresh(&in_use).await, "localhost resolves as before");
        assert_eq!(hosts.len(), 1);
    }
}
