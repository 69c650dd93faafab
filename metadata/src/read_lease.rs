//! The leader's read lease: for a while after a quorum confirmed its leadership, a leader
//! serves linearizable reads without asking the quorum again.
//!
//! A linearizable read needs proof that no other leader can have committed a write the
//! reader would miss. openraft's check is a heartbeat round to a quorum: a round trip per
//! batch of reads, the largest part of a lookup or a stat. The lease takes that proof from
//! time instead, as etcd and TiKV do. openraft's voters refuse to vote for anyone for
//! `election_timeout_max` after they last accepted the leader's heartbeat (and right after
//! their own restart, which starts that wait again from a committed vote), and a new leader
//! needs a quorum, which shares a voter with every quorum that acknowledged this one. So
//! if a quorum acknowledged heartbeats that the leader sent after `t0`, no other leader
//! exists before `t0 + election_timeout_max`. The lease runs to `t0 + election_timeout_min`
//! (half as long): the other half covers clock rate differences between voters.
//!
//! The one voter of such a quorum that does not refuse is the leader itself (heartbeats do
//! not refresh its own vote), and a leader that grants a vote stops leading at once, which
//! ends the lease. A leader that hands over on purpose (`handover`) also ends its lease
//! before the target stands.
//!
//! Reads under the lease see every acknowledged write: a write is acknowledged after this
//! leader applied it, and the round that granted the lease waited until this term's first
//! entry (behind every earlier term's commits) was applied. The lease is bound to the term
//! and the membership it was granted under; a change of either ends it.

use std::time::{Duration, Instant};

use openraft::{LogId, RaftMetrics, ServerState};

use crate::types::NodeInfo;

type Metrics = RaftMetrics<u64, NodeInfo>;

/// What a lease is granted under: the term this node leads and the membership it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    term: u64,
    membership: Option<LogId<u64>>,
}

impl Leadership {
    /// This node's leadership as `metrics` show it, if it is the leader.
    pub fn of(metrics: &Metrics) -> Option<Leadership> {
        (metrics.state == ServerState::Leader).then(|| Leadership {
            term: metrics.current_term,
            membership: *metrics.membership_config.log_id(),
        })
    }
}

#[derive(Debug)]
pub struct ReadLease {
    length: Duration,
    held: Option<(Leadership, Instant)>,
}

impl ReadLease {
    /// A lease of `length`: at most half of the voters' `election_timeout_max`.
    pub fn new(length: Duration) -> ReadLease {
        ReadLease { length, held: None }
    }

    /// Whether a read arriving `now` may be served without a quorum round.
    pub fn holds(&self, metrics: &Metrics, now: Instant) -> bool {
        match &self.held {
            Some((granted_under, until)) => now < *until && Leadership::of(metrics).as_ref() == Some(granted_under),
            None => false,
        }
    }

    /// A quorum round that started at `started`, when this node led as `before`, confirmed
    /// the leadership; `after` is the node's state now. The lease is granted only if the
    /// leadership did not change in between.
    pub fn confirmed(&mut self, before: Option<Leadership>, started: Instant, after: &Metrics) {
        self.held = match before {
            Some(before) if Leadership::of(after).as_ref() == Some(&before) => Some((before, started + self.length)),
            _ => None,
        };
    }

    /// A round failed: this node may no longer lead.
    pub fn end(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, Membership, StoredMembership};

    use super::*;

    fn metrics(state: ServerState, term: u64, membership_index: u64) -> Metrics {
        let mut m = Metrics::new_initial(1);
        m.state = state;
        m.current_term = term;
        m.membership_config = Arc::new(StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(term, 1), membership_index)),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], None),
        ));
        m
    }

    #[test]
    fn a_lease_runs_from_the_start_of_the_round_that_granted_it() {
        let leader = metrics(ServerState::Leader, 3, 10);
        let mut lease = ReadLease::new(Duration::from_millis(300));
        let started = Instant::now();
        assert!(!lease.holds(&leader, started), "no lease before a round");
        lease.confirmed(Leadership::of(&leader), started, &leader);
        assert!(lease.holds(&leader, started + Duration::from_millis(299)));
        assert!(!lease.holds(&leader, started + Duration::from_millis(300)));
        lease.end();
        assert!(!lease.holds(&leader, started), "a failed round ends it");
    }

    #[test]
    fn a_lease_ends_with_the_term_or_membership_it_was_granted_under() {
        let leader = metrics(ServerState::Leader, 3, 10);
        let started = Instant::now();
        let mut lease = ReadLease::new(Duration::from_secs(60));
        lease.confirmed(Leadership::of(&leader), started, &leader);
        assert!(lease.holds(&leader, started));
        assert!(!lease.holds(&metrics(ServerState::Follower, 3, 10), started));
        assert!(
            !lease.holds(&metrics(ServerState::Leader, 4, 10), started),
            "re-elected"
        );
        assert!(
            !lease.holds(&metrics(ServerState::Leader, 3, 11), started),
            "membership changed"
        );

        // Leadership lost and regained during the round: nothing is granted.
        lease.confirmed(Leadership::of(&leader), started, &metrics(ServerState::Leader, 4, 10));
        assert!(!lease.holds(&metrics(ServerState::Leader, 4, 10), started));
        lease.confirmed(None, started, &leader);
        assert!(!lease.holds(&leader, started), "not leader when the round started");
    }
}
