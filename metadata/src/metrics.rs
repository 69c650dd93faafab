//! Prometheus metrics of one metadata node, served at `GET /metrics`
//! (`cairn_common::metrics::serve`): the client requests it answered, and its view of
//! the Raft group (term, leader, log and apply positions, and on the leader how far each
//! follower lags), read from openraft's metrics at each scrape.

use cairn_common::metrics::{counter_vec, gauge, gauge_vec, latency_vec, registry};
use openraft::{RaftMetrics, ServerState};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::types::NodeInfo;

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Client requests by operation ("create", "get_layout", ...) and outcome ("ok" or
    /// the errno of the refusal).
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its reply, by operation.
    pub latency: HistogramVec,
    term: IntGauge,
    /// The leader this node knows of; 0 when it knows none.
    leader: IntGauge,
    is_leader: IntGauge,
    voters: IntGauge,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    /// On the leader: log entries each follower has yet to acknowledge.
    follower_lag: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = registry("cairn_metadata");
        Metrics {
            requests: counter_vec(
                &r,
                "requests_total",
                "Client requests by operation and outcome",
                &["op", "outcome"],
            ),
            latency: latency_vec(&r, "request_seconds", "Client request latency by operation", &["op"]),
            term: gauge(&r, "raft_term", "Current Raft term"),
            leader: gauge(&r, "raft_leader", "Id of the leader this node knows; 0 for none"),
            is_leader: gauge(&r, "raft_is_leader", "1 on the leader, 0 elsewhere"),
            voters: gauge(&r, "raft_voters", "Voters in the group's membership"),
            last_log_index: gauge(&r, "raft_last_log_index", "Index of the last log entry here"),
            applied_index: gauge(&r, "raft_applied_index", "Index of the last entry applied here"),
            snapshot_index: gauge(&r, "raft_snapshot_index", "Index of the last entry in the snapshot"),
            follower_lag: gauge_vec(
                &r,
                "raft_follower_lag_entries",
                "Log entries a follower has yet to acknowledge (leader only)",
                &["follower"],
            ),
            registry: r,
        }
    }

    /// Sets the Raft gauges from openraft's view of this node.
    pub fn observe_raft(&self, m: &RaftMetrics<u64, NodeInfo>) {
        let index = |i: Option<u64>| i64::try_from(i.unwrap_or(0)).unwrap_or(i64::MAX);
        self.term.set(index(Some(m.current_term)));
        self.leader.set(index(m.current_leader));
        self.is_leader.set(i64::from(m.state == ServerState::Leader));
        self.voters
            .set(m.membership_config.membership().voter_ids().count() as i64);
        self.last_log_index.set(index(m.last_log_index));
        self.applied_index.set(index(m.last_applied.map(|l| l.index)));
        self.snapshot_index.set(index(m.snapshot.map(|l| l.index)));
        // Followers come and go with leadership: only the current ones are shown.
        self.follower_lag.reset();
        let last = m.last_log_index.unwrap_or(0);
        for (id, matched) in m.replication.iter().flatten() {
            if *id == m.id {
                continue;
            }
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            self.follower_lag
                .with_label_values(&[&id.to_string()])
                .set(index(Some(lag)));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
