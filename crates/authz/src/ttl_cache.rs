//! What a service reads on every request but changes rarely — a role's policies, a
//! collection's policy, a bucket's settings — kept for a fixed time. Written here
//! rather than taken from a cache crate: the uses need get, insert and remove with one
//! TTL, and `moka` would bring a dependency tree and background threads for that.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Past this many entries an insert first drops the expired ones.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug)]
pub struct TtlCache<V> {
    ttl: Duration,
    entries: RwLock<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The value stored under `key` less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(value, _)| value.clone())
    }

    pub fn insert(&self, key: String, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= PRUNE_ABOVE {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(key, (value, Instant::now()));
    }

    /// Forgets `key`, so the next read goes to the source (after a local change).
    pub fn remove(&self, key: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_removed() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert("a".into(), 1);
        cache.insert("b".into(), 2);
        assert_eq!(cache.get("a"), Some(1));
        cache.remove("a");
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(2));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("b"), None);
    }

    #[test]
    fn expired_entries_are_pruned_once_the_cache_is_large() {
        let cache = TtlCache::new(Duration::from_millis(10));
        for i in 0..PRUNE_ABOVE {
            cache.insert(i.to_string(), i);
        }
        std::thread::sleep(Duration::from_millis(20));
        cache.insert("fresh".into(), 0);
        assert_eq!(cache.entries.read().unwrap().len(), 1);
    }
}
