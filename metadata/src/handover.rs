//! Handing leadership to another voter before the leader stops (a rolling restart or
//! upgrade), so that the group elects its next leader at once instead of after an election
//! timeout, and picks one that is up to date.
//!
//! openraft 0.9 has no leader transfer (0.10's `transfer_leader`), and its voters refuse
//! every vote for `election_timeout_max` (the lease) after they last heard from the leader;
//! `read_lease` relies on that. A target therefore needs the votes of voters that have not
//! heard from the leader for a lease:
//!
//! - the leader itself: openraft stamps its vote when it begins to lead, and heartbeats do
//!   not refresh it, so it grants once it has led for a lease;
//! - in a group of more than three voters, a few followers as well (a quorum less the
//!   target and the leader): the leader stops sending them entries and heartbeats
//!   (`Network::silence`) and keeps serving with the rest of the voters, which are a
//!   quorum, until their lease has run out.
//!
//! Then the leader pauses (requests wait here, `Proposer::pause`), waits until the target
//! holds its whole log, and asks it to stand. The leader steps down as it grants the vote;
//! the requests that waited here are refused with NOT_LEADER naming the new leader, which
//! clients follow. Requests wait only for that last part: milliseconds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_common::proto::metadata::{CampaignRequest, Errno, MetaError};
use openraft::{Raft, RaftMetrics, ServerState};
use tokio::sync::watch;

use crate::client::{admin, member_status};
use crate::errors::meta_error;
use crate::network::Network;
use crate::proposer::{leading_term, unavailable, Proposer};
use crate::types::{NodeInfo, TypeConfig};

/// How long the target may take to receive the rest of the log, while requests wait: it
/// answered just before and was behind by the entries of the last moments at most.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
/// Beyond the voters' lease: messages already on their way, and clocks that run at
/// slightly different rates on different machines.
const LEASE_MARGIN: Duration = Duration::from_millis(100);

type Metrics = RaftMetrics<u64, NodeInfo>;

/// When this node last began to lead, and in which term: openraft stamps its own vote
/// then, and it refuses every vote for the lease after that stamp.
#[derive(Debug, Default)]
pub struct LeadingSince(Mutex<Option<(u64, Instant)>>);

impl LeadingSince {
    /// Follows this node's metrics until it shuts down.
    pub async fn track(self: Arc<Self>, mut metrics: watch::Receiver<Metrics>) {
        loop {
            let (state, term) = {
                let m = metrics.borrow_and_update();
                (m.state, m.current_term)
            };
            if state == ServerState::Leader {
                let mut since = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                if since.is_none_or(|(t, _)| t != term) {
                    *since = Some((term, Instant::now()));
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// When this node began to lead in `term` (now, if that was not seen).
    fn of(&self, term: u64) -> Instant {
        let since = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        since
            .filter(|(t, _)| *t == term)
            .map_or_else(Instant::now, |(_, at)| at)
    }
}

/// The voter to hand over to: `to`, checked, or with 0 the other voter whose log reaches
/// furthest (the lowest id among equals).
fn target(m: &Metrics, to: u64) -> Result<u64, MetaError> {
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() != 1 {
        return Err(meta_error(
            Errno::Eagain,
            "a membership change is in progress; hand over once it is done",
        ));
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    if to == m.id {
        return Err(meta_error(Errno::Einval, format!("metadata-{to} already leads")));
    }
    if to != 0 {
        return if voters.contains(&to) {
            Ok(to)
        } else if membership.get_node(&to).is_some() {
            Err(meta_error(
                Errno::Einval,
                format!("metadata-{to} is a learner, not a voter"),
            ))
        } else {
            Err(meta_error(Errno::Enoent, format!("metadata-{to} is not a member")))
        };
    }
    voters
        .iter()
        .filter(|&&id| id != m.id)
        .max_by_key(|&&id| (matched(m, id), std::cmp::Reverse(id)))
        .copied()
        .ok_or_else(|| meta_error(Errno::Einval, "no other voter to hand over to"))
}

/// A leader's hand-over: its Raft, its network, its proposer, and when it began to lead.
#[allow(missing_debug_implementations)] // openraft::Raft has no Debug.
pub struct Leader<'a> {
    pub raft: &'a Raft<TypeConfig>,
    pub network: &'a Network,
    pub proposer: &'a Proposer,
    pub since: &'a LeadingSince,
}

/// The followers to silence so that the target, the leader and they are a quorum: those
/// whose log reaches least far (a silenced follower no longer counts towards commits).
fn to_silence(m: &Metrics, to: u64) -> BTreeSet<u64> {
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let needed = (voters.len() / 2 + 1).saturating_sub(2);
    let mut others: Vec<u64> = voters.into_iter().filter(|&id| id != m.id && id != to).collect();
    others.sort_by_key(|id| (matched(m, *id), *id));
    others.into_iter().take(needed).collect()
}

fn matched(m: &Metrics, id: u64) -> u64 {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map_or(0, |l| l.index)
}

/// On the leader: hands leadership to voter `to` (0: the one furthest along) and returns
/// once it leads. On an error this node resumes serving if it still leads.
pub async fn hand_over(leader: Leader<'_>, to: u64) -> Result<(), MetaError> {
    let raft = leader.raft;
    // The voters' lease: openraft's `election_timeout_max`.
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let m = raft.metrics().borrow().clone();
    leading_term(&m)?;
    let to = target(&m, to)?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&to)
        .map(|n| n.addr.clone())
        .ok_or_else(|| meta_error(Errno::Enoent, format!("metadata-{to} has no address")))?;

    // A target that does not answer, or does not follow, would only be found out after
    // the pause.
    let status = member_status(&addr)
        .await
        .map_err(|e| unavailable(format!("metadata-{to} does not answer: {e}")))?;
    if status.role != "follower" {
        return Err(meta_error(
            Errno::Eagain,
            format!("metadata-{to} is a {}, not a follower", status.role),
        ));
    }
    let silenced = to_silence(&m, to);
    // The leader's own vote refuses others for a lease after it began to lead, a silenced
    // follower's for a lease after the last message it had from here.
    let lease_from = if silenced.is_empty() {
        leader.since.of(m.current_term)
    } else {
        Instant::now()
    };
    let _silence = leader.network.silence(silenced);
    tokio::time::sleep_until((lease_from + lease + LEASE_MARGIN).into()).await;

    let _paused = leader.proposer.pause().await?;
    let caught_up = raft
        .wait(Some(CATCH_UP_WAIT))
        .metrics(
            |m| m.state != ServerState::Leader || m.last_log_index.is_some_and(|last| matched(m, to) >= last),
            "the target holds the whole log",
        )
        .await
        .map_err(|_| {
            meta_error(
                Errno::Eagain,
                format!("metadata-{to} has not caught up with the log after {CATCH_UP_WAIT:?}"),
            )
        })?;
    leading_term(&caught_up)?;
    let campaign = CampaignRequest {
        term: caught_up.current_term,
        last_log_index: caught_up.last_log_index.unwrap_or(0),
    };
    let reply = admin(&addr)
        .await
        .map_err(unavailable)?
        .campaign(campaign)
        .await
        .map_err(|e| unavailable(format!("metadata-{to} campaign: {}", e.message())))?
        .into_inner();
    if let Some(e) = reply.error {
        return Err(e);
    }
    // A first campaign that a voter refused (its lease ran on a little longer) is retried
    // by the target after its election timeout, by when it has run out.
    let elected_within = lease * 3;
    raft.wait(Some(elected_within))
        .metrics(|m| m.current_leader == Some(to), "the target leads")
        .await
        .map_err(|_| unavailable(format!("metadata-{to} was not elected within {elected_within:?}")))?;
    Ok(())
}

/// On the voter a leader hands over to: stand for election now, if this node still follows
/// the leader of `req.term` and holds its log up to `req.last_log_index`.
pub async fn campaign(raft: &Raft<TypeConfig>, req: &CampaignRequest) -> Result<(), MetaError> {
    let m = raft.metrics().borrow().clone();
    if !m.membership_config.membership().voter_ids().any(|id| id == m.id) {
        return Err(meta_error(Errno::Einval, format!("metadata-{} is not a voter", m.id)));
    }
    if m.state == ServerState::Leader {
        return Err(meta_error(Errno::Einval, format!("metadata-{} already leads", m.id)));
    }
    if m.current_term != req.term {
        return Err(meta_error(
            Errno::Estale,
            format!(
                "a hand-over of term {} is stale: metadata-{} is at term {}",
                req.term, m.id, m.current_term
            ),
        ));
    }
    if m.last_log_index.unwrap_or(0) < req.last_log_index {
        return Err(meta_error(
            Errno::Eagain,
            format!(
                "metadata-{} holds the log up to {}, not {}",
                m.id,
                m.last_log_index.unwrap_or(0),
                req.last_log_index
            ),
        ));
    }
    raft.trigger().elect().await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn metrics(voters: &[u64], learners: &[u64], matched: &[(u64, u64)]) -> Metrics {
        let node = |id: u64| {
            (
                id,
                NodeInfo {
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    hall: format!("hall-{id}"),
                },
            )
        };
        let nodes: BTreeMap<u64, NodeInfo> = voters.iter().chain(learners).map(|&id| node(id)).collect();
        let membership = Membership::new(vec![voters.iter().copied().collect()], nodes);
        let mut m = Metrics::new_initial(1);
        m.state = ServerState::Leader;
        m.membership_config = Arc::new(StoredMembership::new(None, membership));
        m.replication = Some(
            matched
                .iter()
                .map(|&(id, index)| (id, Some(LogId::new(CommittedLeaderId::new(1, 1), index))))
                .collect(),
        );
        m
    }

    #[test]
    fn the_target_is_a_voter_and_by_default_the_one_furthest_along() {
        let m = metrics(&[1, 2, 3, 4], &[5], &[(2, 7), (3, 9), (4, 9)]);
        assert_eq!(target(&m, 0).ok(), Some(3), "furthest along, lowest id");
        assert_eq!(target(&m, 2).ok(), Some(2));
        let errno = |to| target(&m, to).err().map(|e| e.errno());
        assert_eq!(errno(1), Some(Errno::Einval), "itself");
        assert_eq!(errno(5), Some(Errno::Einval), "a learner");
        assert_eq!(errno(9), Some(Errno::Enoent), "not a member");
        let alone = metrics(&[1], &[], &[]);
        assert_eq!(target(&alone, 0).err().map(|e| e.errno()), Some(Errno::Einval));
    }

    #[test]
    fn the_followers_furthest_behind_are_silenced_to_make_a_quorum_with_the_target() {
        let silenced = |voters: &[u64], matched: &[(u64, u64)], to| -> Vec<u64> {
            to_silence(&metrics(voters, &[], matched), to).into_iter().collect()
        };
        assert_eq!(silenced(&[1, 2, 3], &[(2, 5), (3, 5)], 2), Vec::<u64>::new());
        assert_eq!(silenced(&[1, 2], &[(2, 5)], 2), Vec::<u64>::new());
        assert_eq!(silenced(&[1, 2, 3, 4], &[(2, 9), (3, 9), (4, 8)], 2), vec![4]);
        assert_eq!(
            silenced(&[1, 2, 3, 4, 5], &[(2, 9), (3, 7), (4, 9), (5, 9)], 4),
            vec![3]
        );
        assert_eq!(
            silenced(
                &[1, 2, 3, 4, 5, 6, 7],
                &[(2, 9), (3, 9), (4, 9), (5, 9), (6, 9), (7, 9)],
                2
            ),
            vec![3, 4]
        );
    }
}
