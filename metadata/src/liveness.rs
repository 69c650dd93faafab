//! Which dataservers are alive, as the leader hears it: every dataserver sends the leader
//! a heartbeat every few seconds (`Heartbeat`, not logged), so liveness costs one small
//! request per dataserver per interval however large the cluster, instead of every
//! dataserver probing every other. The leader answers `ListDraining` with the dataservers
//! it has not heard from lately (`silent`: rebuild places nothing on them), and marks one
//! lost (drained, its shards rebuilt elsewhere) once it has been silent for
//! `dataserver_lost_after_secs`, and clears that mark when it is heard again.
//!
//! The table lives in the leader's memory only. A new leader starts an empty one and
//! counts a dataserver silent only once it has led for the silent interval with no word
//! from it, so a leader change never looks like a dataserver failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Table {
    /// The leadership term the table belongs to.
    term: u64,
    since: Instant,
    heard: HashMap<u32, Instant>,
}

#[derive(Debug)]
pub struct Liveness {
    table: Mutex<Table>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            table: Mutex::new(Table {
                term: 0,
                since: Instant::now(),
                heard: HashMap::new(),
            }),
        }
    }
}

impl Liveness {
    /// The table of leadership term `term`, a fresh one when the term changed.
    fn table(&self, term: u64, now: Instant) -> std::sync::MutexGuard<'_, Table> {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.term != term {
            *t = Table {
                term,
                since: now,
                heard: HashMap::new(),
            };
        }
        t
    }

    /// Dataserver `id` sent a heartbeat to the leader of term `term`.
    pub fn heard(&self, term: u64, id: u32, now: Instant) {
        self.table(term, now).heard.insert(id, now);
    }

    /// Of `known` and every dataserver heard from, those not heard from for `after`
    /// (never heard counts from when this leadership began), in id order.
    pub fn silent_for(&self, term: u64, known: &[u32], after: Duration, now: Instant) -> Vec<u32> {
        let t = self.table(term, now);
        let mut ids: Vec<u32> = known.iter().chain(t.heard.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| {
            let last = t.heard.get(id).copied().unwrap_or(t.since);
            now.saturating_duration_since(last) >= after
        });
        ids
    }

    /// The dataservers heard from within `within` by the leader of term `term`.
    pub fn heard_within(&self, term: u64, within: Duration, now: Instant) -> Vec<u32> {
        let t = self.table(term, now);
        let mut ids: Vec<u32> = t
            .heard
            .iter()
            .filter(|(_, &at)| now.saturating_duration_since(at) < within)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::config::DATASERVER_SILENT_AFTER as SILENT_AFTER;

    #[test]
    fn silence_counts_from_the_last_heartbeat_or_from_the_start_of_leadership() {
        let l = Liveness::default();
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        l.heard(3, 1, t0);
        // A new leader hears nothing for its first seconds: nobody is silent yet.
        assert!(l.silent_for(3, &[1, 2], SILENT_AFTER, s(5)).is_empty());
        l.heard(3, 1, s(5));
        assert_eq!(l.silent_for(3, &[1, 2], SILENT_AFTER, s(7)), vec![2]);
        assert_eq!(l.silent_for(3, &[1, 2], SILENT_AFTER, s(12)), vec![1, 2]);
        // A dataserver missing from the config but heard from is tracked too.
        l.heard(3, 9, s(12));
        assert_eq!(l.silent_for(3, &[1, 2], SILENT_AFTER, s(19)), vec![1, 2, 9]);
        // Another term: a new table, a new grace period.
        assert!(l.silent_for(4, &[1, 2], SILENT_AFTER, s(20)).is_empty());
        assert_eq!(l.silent_for(4, &[1, 2], SILENT_AFTER, s(26)), vec![1, 2]);
        // Only a heartbeat of this leadership counts as heard.
        assert!(l.heard_within(4, SILENT_AFTER, s(26)).is_empty());
        l.heard(4, 2, s(26));
        assert_eq!(l.heard_within(4, SILENT_AFTER, s(27)), vec![2]);
    }
}
