//! Group commit and read barriers. Concurrent mutations are gathered into one Raft entry
//! (one synced log write per voter for the whole batch), and concurrent reads share one
//! linearizability check, so throughput grows with the number of clients instead of being
//! capped by fsyncs or heartbeat round trips. Reads within the leader's read lease skip
//! the check (see `read_lease`). A leader that hands over pauses both (`Proposer::pause`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_common::proto::metadata::{meta_reply, meta_request::Op, Errno, MetaError, MetaReply, MetaRequest};
use cairn_common::versions::API_VERSION_MIN;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState};
use prost::Message;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::apply::CLIENT_ID_BYTES;
use crate::db::Db;
use crate::errors::meta_error;
use crate::read_lease::{Leadership, ReadLease};
use crate::records::entry_format;
use crate::types::{NodeInfo, Proposal, TypeConfig};

/// Requests in one entry.
const BATCH_REQUESTS_MAX: usize = 512;
/// Encoded request bytes in one entry.
const BATCH_BYTES_MAX: usize = 4 << 20;
/// Entries proposed and not yet applied; more requests wait and join the next batch.
const BATCHES_IN_FLIGHT: usize = 4;
const QUEUE_DEPTH: usize = 8192;

type Answer = Result<Vec<u8>, MetaError>;

struct Pending {
    request: Vec<u8>,
    answer: oneshot::Sender<Answer>,
}

#[derive(Clone, Debug)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    barrier: mpsc::Sender<oneshot::Sender<Result<(), MetaError>>>,
    gate: Arc<Gate>,
}

/// Every entry this node proposes holds a batch permit while it is in flight, and every
/// read round (lease check or quorum round) the read permit; a pause takes them all.
#[derive(Debug)]
struct Gate {
    batches: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    /// Set by a pause: the read lease granted before it ends.
    lease_void: AtomicBool,
}

/// While held, this node proposes nothing and starts no read round: requests wait (see
/// `handover`).
#[derive(Debug)]
pub struct Paused {
    _batches: OwnedSemaphorePermit,
    _reads: OwnedSemaphorePermit,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub fn not_leader(leader: Option<(u64, NodeInfo)>) -> MetaError {
    let mut e = meta_error(Errno::NotLeader, "this node is not the leader");
    if let Some((id, node)) = leader {
        e.leader_id = id;
        e.leader_addr = node.addr;
    }
    e
}

/// The term `m`'s node leads in; otherwise NotLeader naming the leader it knows.
pub(crate) fn leading_term(m: &RaftMetrics<u64, NodeInfo>) -> Result<u64, MetaError> {
    if m.state == ServerState::Leader {
        return Ok(m.current_term);
    }
    let leader = m.current_leader.and_then(|id| {
        let node = m.membership_config.membership().get_node(&id).cloned();
        node.map(|n| (id, n))
    });
    Err(not_leader(leader))
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> MetaError {
    meta_error(Errno::Unavailable, format!("metadata group unavailable: {e}"))
}

pub fn write_error(e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_id.zip(f.leader_node)),
        other => unavailable(other),
    }
}

pub fn read_error(e: RaftError<u64, CheckIsLeaderError<u64, NodeInfo>>) -> MetaError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(f.leader_id.zip(f.leader_node)),
        other => unavailable(other),
    }
}

/// An entry in the format the group writes now (the leader's applied state says which).
fn proposal(db: &Db, requests: Vec<Vec<u8>>, expire_sessions: bool) -> Result<Proposal, MetaError> {
    Ok(Proposal {
        format: entry_format(db).map_err(|e| meta_error(Errno::Eio, format!("reading the entry format: {e}")))?,
        now_ns: now_ns(),
        requests,
        expire_sessions,
    })
}

impl Proposer {
    /// `read_lease`: how long after a confirmed leadership check reads skip the next one
    /// (see `read_lease`; at most half of openraft's `election_timeout_max`).
    pub fn start(raft: Raft<TypeConfig>, db: Db, read_lease: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (barrier, barrier_rx) = mpsc::channel(QUEUE_DEPTH);
        let gate = Arc::new(Gate {
            batches: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT)),
            reads: Arc::new(Semaphore::new(1)),
            lease_void: AtomicBool::new(false),
        });
        tokio::spawn(propose_loop(raft.clone(), db, gate.clone(), rx));
        tokio::spawn(barrier_loop(raft, ReadLease::new(read_lease), gate.clone(), barrier_rx));
        Proposer { tx, barrier, gate }
    }

    /// Waits for the entries in flight and the read round under way to finish, then holds
    /// every later one until the guard is dropped; the read lease ends.
    pub async fn pause(&self) -> Result<Paused, MetaError> {
        let closed = |_| unavailable("node is shutting down");
        // BATCHES_IN_FLIGHT is a small constant.
        let all = BATCHES_IN_FLIGHT as u32;
        let batches = self
            .gate
            .batches
            .clone()
            .acquire_many_owned(all)
            .await
            .map_err(closed)?;
        let reads = self.gate.reads.clone().acquire_owned().await.map_err(closed)?;
        self.gate.lease_void.store(true, Ordering::Release);
        Ok(Paused {
            _batches: batches,
            _reads: reads,
        })
    }

    /// Apply one encoded mutation through the log; returns the encoded reply.
    pub async fn propose(&self, request: Vec<u8>) -> Answer {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Pending { request, answer })
            .await
            .map_err(|_| unavailable("node is shutting down"))?;
        rx.await.map_err(|_| unavailable("node is shutting down"))?
    }

    /// Apply `op`, a mutation this node makes itself (housekeeping, admin), under a fresh
    /// idempotency key; a refusal is an error.
    pub async fn propose_op(&self, op: Op) -> Result<meta_reply::Result, MetaError> {
        let request = MetaRequest {
            client_id: rand::random::<[u8; CLIENT_ID_BYTES]>().to_vec(),
            request_id: 1,
            api_version: API_VERSION_MIN,
            op: Some(op),
        };
        let bytes = self.propose(request.encode_to_vec()).await?;
        match MetaReply::decode(bytes.as_slice()).map(|r| r.result) {
            Ok(Some(meta_reply::Result::Error(e))) => Err(e),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(meta_error(Errno::Eio, "empty reply")),
            Err(e) => Err(meta_error(Errno::Eio, format!("reply does not decode: {e}"))),
        }
    }

    /// Returns once this node is the leader and has applied everything committed before
    /// the call: a read served after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), MetaError> {
        let (tx, rx) = oneshot::channel();
        self.barrier
            .send(tx)
            .await
            .map_err(|_| unavailable("node is shutting down"))?;
        rx.await.map_err(|_| unavailable("node is shutting down"))?
    }

    /// An entry of its own that ends expired write sessions.
    pub async fn expire_sessions(&self, raft: &Raft<TypeConfig>, db: &Db) -> Result<(), MetaError> {
        let _in_flight = self
            .gate
            .batches
            .acquire()
            .await
            .map_err(|_| unavailable("node is shutting down"))?;
        let p = proposal(db, Vec::new(), true)?;
        raft.client_write(p).await.map(|_| ()).map_err(write_error)
    }
}

async fn propose_loop(raft: Raft<TypeConfig>, db: Db, gate: Arc<Gate>, mut rx: mpsc::Receiver<Pending>) {
    loop {
        // The permit is taken only once a request is here, so that an idle node holds
        // none (a pause takes them all); requests that arrive meanwhile join the batch.
        let Some(first) = rx.recv().await else {
            return;
        };
        let Ok(permit) = gate.batches.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.request.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_REQUESTS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.request.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (raft, db) = (raft.clone(), db.clone());
        tokio::spawn(async move {
            let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.answer)).unzip();
            let written = match proposal(&db, requests, false) {
                Ok(p) => raft.client_write(p).await.map_err(write_error),
                Err(e) => Err(e),
            };
            match written {
                Ok(resp) => {
                    let mut replies = resp.data.replies.into_iter();
                    for answer in answers {
                        let reply = replies
                            .next()
                            .ok_or_else(|| unavailable("state machine returned too few replies"));
                        let _ = answer.send(reply);
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn barrier_loop(
    raft: Raft<TypeConfig>,
    mut lease: ReadLease,
    gate: Arc<Gate>,
    mut rx: mpsc::Receiver<oneshot::Sender<Result<(), MetaError>>>,
) {
    // A waiter is answered at once under the lease; otherwise it joins the next round that
    // starts after it arrived, so the leadership check and read index of that round are no
    // older than its request.
    while let Some(first) = rx.recv().await {
        let Ok(_round) = gate.reads.acquire().await else {
            return;
        };
        if gate.lease_void.swap(false, Ordering::AcqRel) {
            lease.end();
        }
        if lease.holds(&raft.metrics().borrow(), Instant::now()) {
            let _ = first.send(Ok(()));
            continue;
        }
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let started = Instant::now();
        let before = Leadership::of(&raft.metrics().borrow());
        let result = raft.ensure_linearizable().await.map(|_| ()).map_err(read_error);
        match result {
            Ok(()) => lease.confirmed(before, started, &raft.metrics().borrow()),
            Err(_) => lease.end(),
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
