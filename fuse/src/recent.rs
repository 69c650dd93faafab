//! A bounded map of answers the mount received recently, each served only while it is
//! younger than `fresh_for` (the attribute TTL: the kernel keeps what it is told no longer
//! than that either). Forgetting is always safe, so a full map drops what it holds.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Entries held at most.
pub const REMEMBERED_MAX: usize = 4096;

#[derive(Debug)]
pub struct Recent<K, V> {
    fresh_for: Duration,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V> Recent<K, V> {
    pub fn new(fresh_for: Duration) -> Self {
        Recent {
            fresh_for,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `value` for `key`, received now, unless `keeps(held, value)` says the
    /// value already held stays.
    pub fn insert(&self, key: K, value: V, keeps: impl Fn(&V, &V) -> bool) {
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= REMEMBERED_MAX {
            entries.retain(|_, (_, at)| now.duration_since(*at) < self.fresh_for);
            if entries.len() >= REMEMBERED_MAX {
                entries.clear();
            }
        }
        if !entries.get(&key).is_some_and(|(held, _)| keeps(held, &value)) {
            entries.insert(key, (value, now));
        }
    }

    /// The value for `key` if it is still fresh; taken, so it is served once.
    pub fn take(&self, key: &K) -> Option<V> {
        let (value, at) = self.entries().remove(key)?;
        (at.elapsed() < self.fresh_for).then_some(value)
    }

    /// Whether a fresh value for `key` is held.
    pub fn is_fresh(&self, key: &K) -> bool {
        self.entries()
            .get(key)
            .is_some_and(|(_, at)| at.elapsed() < self.fresh_for)
    }

    /// Forgets every key for which `forget` holds.
    pub fn forget(&self, forget: impl Fn(&K) -> bool) {
        self.entries().retain(|k, _| !forget(k));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_served_only_while_fresh() {
        let recent = Recent::new(Duration::from_millis(50));
        recent.insert(1, "a", |_, _| false);
        assert!(recent.is_fresh(&1));
        assert_eq!(recent.take(&1), Some("a"));
        assert_eq!(recent.take(&1), None, "taken once");
        recent.insert(2, "b", |_, _| false);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!recent.is_fresh(&2));
        assert_eq!(recent.take(&2), None, "stale after fresh_for");
    }

    #[test]
    fn the_held_value_stays_when_it_keeps() {
        let recent = Recent::new(Duration::from_secs(1));
        recent.insert(1, 20, |_, _| false);
        recent.insert(1, 10, |held, new| held > new);
        assert_eq!(recent.take(&1), Some(20));
    }

    #[test]
    fn memory_stays_bounded_even_when_everything_is_fresh() {
        let recent = Recent::new(Duration::from_secs(60));
        for i in 0..(REMEMBERED_MAX * 3) {
            recent.insert(i, (), |_, _| false);
            assert!(recent.len() <= REMEMBERED_MAX);
        }
        recent.forget(|k| k % 2 == 0);
        assert!(recent.is_fresh(&(REMEMBERED_MAX * 3 - 1)));
        assert!(!recent.is_fresh(&(REMEMBERED_MAX * 3 - 2)));
    }
}
