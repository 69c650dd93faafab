//! Removals (unlink, rename over a name) in flight on this mount, so that an `open`
//! racing one never hands out a handle to an inode the removal is about to delete.
//!
//! A removal keeps alive every inode this mount has open before it asks the metadata
//! group to drop the name (see `CairnFs::pin_if_open`). An open registers its handle
//! first and then takes a mark: removals that begin after the mark see the handle and
//! pin its inode; removals that began before it may have looked already, so the open
//! waits for them to finish before it checks that the inode still exists.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct Removals {
    tickets: Mutex<Tickets>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct Tickets {
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// One removal in flight; it finishes when dropped.
#[derive(Debug)]
pub struct Removal<'a> {
    removals: &'a Removals,
    ticket: u64,
}

impl Removals {
    fn tickets(&self) -> MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a removal: take it before looking at which inodes are open.
    pub fn begin(&self) -> Removal<'_> {
        let mut t = self.tickets();
        let ticket = t.next;
        t.next += 1;
        t.in_flight.insert(ticket);
        Removal { removals: self, ticket }
    }

    /// Blocks until every removal that began before this call has finished. Call it
    /// after registering a handle and before checking that its inode exists.
    pub fn wait_for_earlier(&self) {
        let mut t = self.tickets();
        let mark = t.next;
        while t.in_flight.first().is_some_and(|&first| first < mark) {
            t = self.finished.wait(t).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        self.removals.tickets().in_flight.remove(&self.ticket);
        self.removals.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_open_waits_only_for_removals_that_began_before_it() {
        let removals = Arc::new(Removals::default());
        let earlier = removals.begin();
        let waited = Arc::new(AtomicBool::new(false));
        let opener = {
            let (removals, waited) = (removals.clone(), waited.clone());
            std::thread::spawn(move || {
                removals.wait_for_earlier();
                waited.store(true, Ordering::Release);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waited.load(Ordering::Acquire),
            "the open did not wait for the earlier removal"
        );
        // A removal that begins later does not hold the open back once the earlier ends.
        let later = removals.begin();
        drop(earlier);
        opener.join().expect("opener");
        assert!(waited.load(Ordering::Acquire));
        drop(later);
        removals.wait_for_earlier();
    }
}
