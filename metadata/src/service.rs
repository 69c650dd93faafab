//! The gRPC services a metadata node serves: Raft between members, the namespace for
//! clients, admin for cairnctl. Every request is decoded and checked before it reaches
//! openraft or the state machine; bad input gets a typed error and changes nothing.

use std::collections::BTreeSet;
use std::pin::Pin;

use std::sync::Arc;
use std::time::Instant;

use cairn_common::config::DATASERVER_SILENT_AFTER;
use cairn_common::ids::StripeId;
use cairn_common::metrics::errno_label;
use cairn_common::namespace::{changed_dirs, is_mutation, op_name};
use cairn_common::placement::partition_of;
use cairn_common::proto::metadata::{
    admin_server::Admin, meta_reply, meta_request::Op, metadata_server::Metadata, raft_server::Raft as RaftRpc,
    AddLearnerRequest, AdminReply, CampaignRequest, ChangeVotersRequest, Empty, Errno, MetaError, MetaReply,
    MetaRequest, NodeStatus, RaftEnvelope, RaiseEntryFormatRequest, SetEntryFormat, ShardRef, ShardRefsChunk,
    ShardRefsRequest, StatusRequest, TransferLeaderRequest,
};
use cairn_common::versions::{API_VERSION_MAX, API_VERSION_MIN, ENTRY_FORMAT_MAX, ENTRY_FORMAT_MIN};
use futures::Stream;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::apply::idempotency_key;
use crate::client::member_status;
use crate::db::{read_u64, Cf, Db};
use crate::errors::{error_reply, meta_error, reply};
use crate::handover::{campaign, hand_over, Leader, LeadingSince};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::network::{envelope, open_envelope, Network};
use crate::proposer::{leading_term, write_error, Proposer};
use crate::reads::{dir_attrs, read};
use crate::records::entry_format;
use crate::types::{NodeInfo, TypeConfig};

fn encode_reply<T: Serialize>(value: &T) -> Result<Response<RaftEnvelope>, Status> {
    envelope(value)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

// openraft::Raft has no Debug.
#[allow(missing_debug_implementations)]
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let rpc = open_envelope(req.get_ref()).map_err(Status::invalid_argument)?;
        encode_reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let rpc = open_envelope(req.get_ref()).map_err(Status::invalid_argument)?;
        encode_reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let rpc = open_envelope(req.get_ref()).map_err(Status::invalid_argument)?;
        encode_reply(&self.raft.install_snapshot(rpc).await)
    }
}

// openraft::Raft has no Debug.
#[allow(missing_debug_implementations)]
#[derive(Clone)]
pub struct MetadataService {
    pub db: Db,
    pub proposer: Proposer,
    pub raft: Raft<TypeConfig>,
    pub liveness: Arc<Liveness>,
    /// The configured dataservers: silent until heard from.
    pub dataservers: Arc<Vec<u32>>,
    pub metrics: Metrics,
}

/// Shard references per streamed chunk.
const SHARD_REFS_PER_CHUNK: usize = 1024;

impl MetadataService {
    async fn call(&self, req: MetaRequest) -> MetaReply {
        let version = req.api_version.max(1);
        if !(API_VERSION_MIN..=API_VERSION_MAX).contains(&version) {
            return error_reply(meta_error(
                Errno::Version,
                format!("API version {version}: this node serves {API_VERSION_MIN}..={API_VERSION_MAX}"),
            ));
        }
        let Some(op) = &req.op else {
            return error_reply(meta_error(Errno::Einval, "request names no operation"));
        };
        if let Op::Heartbeat(h) = op {
            return self.heartbeat(h.dataserver);
        }
        if is_mutation(op) {
            if let Err(e) = idempotency_key(&req) {
                return e.into_reply();
            }
            return match self.proposer.propose(req.encode_to_vec()).await {
                Ok(bytes) => match MetaReply::decode(bytes.as_slice()) {
                    Ok(reply) => self.with_changed_dirs(op, reply),
                    Err(e) => error_reply(meta_error(Errno::Eio, format!("reply does not decode: {e}"))),
                },
                Err(e) => error_reply(e),
            };
        }
        if let Err(e) = self.proposer.read_barrier().await {
            return error_reply(e);
        }
        let listing_dataservers = matches!(op, Op::ListDraining(_));
        // A point read (a few keys, from the memtable or block cache) costs less than
        // handing it to another thread; a listing may read thousands of entries.
        let result = match op {
            Op::Readdir(_) | Op::ListDraining(_) | Op::Statfs(_) => {
                let db = self.db.clone();
                let op = op.clone();
                tokio::task::spawn_blocking(move || read(&db, &op)).await
            }
            _ => Ok(read(&self.db, op)),
        };
        match result {
            Ok(Ok(mut reply)) => {
                if let (true, Some(meta_reply::Result::Draining(d))) = (listing_dataservers, &mut reply.result) {
                    d.silent = self.silent();
                }
                reply
            }
            Ok(Err(e)) => e.into_reply(),
            Err(e) => error_reply(meta_error(Errno::Eio, e.to_string())),
        }
    }

    /// A successful mutation's reply with the directories it changed, read right after it
    /// was applied here (see `MetaReply.changed_dirs`).
    fn with_changed_dirs(&self, op: &Op, mut reply: MetaReply) -> MetaReply {
        let dirs = changed_dirs(op);
        // Most mutations (layout commits, locks, sessions) change no directory: they take
        // no database snapshot here.
        if dirs.is_empty() || matches!(reply.result, Some(meta_reply::Result::Error(_)) | None) {
            return reply;
        }
        reply.changed_dirs = dir_attrs(&self.db, &dirs);
        reply
    }

    /// A dataserver's heartbeat: only the leader keeps the table.
    fn heartbeat(&self, dataserver: u32) -> MetaReply {
        if dataserver == 0 {
            return error_reply(meta_error(Errno::Einval, "dataserver id 0 is reserved"));
        }
        match leader_term(&self.raft) {
            Ok(term) => {
                self.liveness.heard(term, dataserver, Instant::now());
                reply(meta_reply::Result::Done(Empty {}))
            }
            Err(e) => error_reply(e),
        }
    }

    /// The dataservers this leader has not heard from lately.
    fn silent(&self) -> Vec<u32> {
        let term = self.raft.metrics().borrow().current_term;
        self.liveness
            .silent_for(term, &self.dataservers, DATASERVER_SILENT_AFTER, Instant::now())
    }
}

type ShardRefStream = Pin<Box<dyn Stream<Item = Result<ShardRefsChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn call(&self, req: Request<MetaRequest>) -> Result<Response<MetaReply>, Status> {
        let req = req.into_inner();
        let op = req.op.as_ref().map_or("none", op_name);
        let started = Instant::now();
        let reply = MetadataService::call(self, req).await;
        self.metrics
            .latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &reply.result {
            Some(meta_reply::Result::Error(e)) => errno_label(e.errno),
            _ => "ok".to_owned(),
        };
        self.metrics.requests.with_label_values(&[op, &outcome]).inc();
        Ok(Response::new(reply))
    }

    type ShardRefsStream = ShardRefStream;

    async fn shard_refs(&self, req: Request<ShardRefsRequest>) -> Result<Response<ShardRefStream>, Status> {
        self.proposer
            .read_barrier()
            .await
            .map_err(|e| Status::failed_precondition(format!("{}: {}", e.errno, e.message)))?;
        let r = req.into_inner();
        let part = match (r.partition, r.partitions) {
            (_, 0 | 1) => None,
            (p, n) if p < n => Some((p, n)),
            (p, n) => return Err(Status::invalid_argument(format!("partition {p} of {n}"))),
        };
        let (tx, rx) = mpsc::channel(4);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || stream_shard_refs(&db, r.dataserver, part, r.count_only, &tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn stream_shard_refs(
    db: &Db,
    dataserver: u32,
    part: Option<(u32, u32)>,
    count_only: bool,
    tx: &mpsc::Sender<Result<ShardRefsChunk, Status>>,
) {
    let prefix = dataserver.to_be_bytes();
    let mut chunk = Vec::with_capacity(if count_only { 0 } else { SHARD_REFS_PER_CHUNK });
    let mut counted = 0;
    // One iterator: a consistent view of the references at the time of the barrier.
    for item in db.raw().prefix_iterator_cf(db.cf(Cf::ShardRefs), prefix) {
        let key = match item {
            Ok((k, _)) => k,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
        };
        if !key.starts_with(&prefix) || key.len() != 4 + 16 + 1 + 8 {
            break;
        }
        if let Some((p, n)) = part {
            let stripe = <[u8; 16]>::try_from(&key[4..20]).map_or(0, u128::from_be_bytes);
            if partition_of(StripeId(stripe), n) != p {
                continue;
            }
        }
        if count_only {
            counted += 1;
            continue;
        }
        chunk.push(ShardRef {
            stripe_id: key[4..20].to_vec(),
            index: u32::from(key[20]),
            inode: read_u64(&key[21..]).unwrap_or(0),
        });
        if chunk.len() == SHARD_REFS_PER_CHUNK {
            let refs = std::mem::replace(&mut chunk, Vec::with_capacity(SHARD_REFS_PER_CHUNK));
            if tx.blocking_send(Ok(ShardRefsChunk { refs, counted: 0 })).is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() || count_only {
        let _ = tx.blocking_send(Ok(ShardRefsChunk { refs: chunk, counted }));
    }
}

// openraft::Raft has no Debug.
#[allow(missing_debug_implementations)]
#[derive(Clone)]
pub struct AdminService {
    pub raft: Raft<TypeConfig>,
    pub db: Db,
    pub proposer: Proposer,
    pub network: Network,
    pub leading_since: Arc<LeadingSince>,
}

/// This node's term while it leads; otherwise NotLeader naming the leader it knows. Reads
/// the metrics in place: dataservers' heartbeats come here.
fn leader_term(raft: &Raft<TypeConfig>) -> Result<u64, MetaError> {
    leading_term(&raft.metrics().borrow())
}

pub fn node_status(raft: &Raft<TypeConfig>, db: &Db) -> NodeStatus {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners = membership.learner_ids().collect();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Follower if voters.contains(&m.id) => "follower",
        ServerState::Learner | ServerState::Follower => "learner",
    };
    NodeStatus {
        node_id: m.id,
        role: role.to_owned(),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        leader_id: m.current_leader.unwrap_or(0),
        voters: voters.into_iter().collect(),
        learners,
        quorum_ack_age_ms: m.millis_since_quorum_ack.unwrap_or(0),
        // 0: the record does not read, which the apply path reports as a storage error.
        entry_format: entry_format(db).map_or(0, u32::from),
        entry_format_min: u32::from(ENTRY_FORMAT_MIN),
        entry_format_max: u32::from(ENTRY_FORMAT_MAX),
    }
}

impl AdminService {
    fn reply(&self, result: Result<(), MetaError>) -> Response<AdminReply> {
        Response::new(AdminReply {
            error: result.err(),
            status: Some(node_status(&self.raft, &self.db)),
        })
    }

    /// Raises the group's entry format to the highest one every member applies, asking
    /// each member (voters and learners: a learner becomes a voter without a check) for
    /// the formats its build reads. Refused while one does not answer.
    pub(crate) async fn raise_entry_format(&self) -> Result<(), MetaError> {
        leader_term(&self.raft)?;
        let m = self.raft.metrics().borrow().clone();
        let mut readable = Vec::new();
        for (id, node) in m.membership_config.membership().nodes() {
            let max = if *id == m.id {
                u32::from(ENTRY_FORMAT_MAX)
            } else {
                member_status(&node.addr)
                    .await
                    .map_err(|e| {
                        meta_error(
                            Errno::Unavailable,
                            format!("metadata-{id} does not answer, so the formats it reads are unknown: {e}"),
                        )
                    })?
                    .entry_format_max
            };
            readable.push(max);
        }
        let current = entry_format(&self.db).map_err(|e| meta_error(Errno::Eio, e))?;
        let Some(target) = format_every_member_reads(&readable).filter(|&t| t > u32::from(current)) else {
            return Ok(());
        };
        self.proposer
            .propose_op(Op::SetEntryFormat(SetEntryFormat { format: target }))
            .await
            .map(|_| ())
    }

    async fn change(&self, change: ChangeMembers<u64, NodeInfo>) -> Result<(), MetaError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e: RaftError<u64, ClientWriteError<u64, NodeInfo>>| write_error(e))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(node_status(&self.raft, &self.db)))
    }

    async fn raise_entry_format(&self, _req: Request<RaiseEntryFormatRequest>) -> Result<Response<AdminReply>, Status> {
        let result = AdminService::raise_entry_format(self).await;
        Ok(self.reply(result))
    }

    async fn transfer_leader(&self, req: Request<TransferLeaderRequest>) -> Result<Response<AdminReply>, Status> {
        let leader = Leader {
            raft: &self.raft,
            network: &self.network,
            proposer: &self.proposer,
            since: &self.leading_since,
        };
        let result = hand_over(leader, req.get_ref().to).await;
        Ok(self.reply(result))
    }

    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<AdminReply>, Status> {
        let result = campaign(&self.raft, req.get_ref()).await;
        Ok(self.reply(result))
    }

    async fn add_learner(&self, req: Request<AddLearnerRequest>) -> Result<Response<AdminReply>, Status> {
        let r = req.into_inner();
        let checked = (|| {
            if r.node_id == 0 {
                return Err(meta_error(Errno::Einval, "node id 0 is reserved"));
            }
            r.addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| meta_error(Errno::Einval, format!("address {:?}: {e}", r.addr)))?;
            cairn_common::ids::HallId::new(r.hall.clone()).map_err(|e| meta_error(Errno::Einval, e.to_string()))?;
            Ok(NodeInfo {
                addr: r.addr.clone(),
                hall: r.hall.clone(),
            })
        })();
        let result = match checked {
            Ok(node) => self
                .raft
                .add_learner(r.node_id, node, true)
                .await
                .map(|_| ())
                .map_err(write_error),
            Err(e) => Err(e),
        };
        Ok(self.reply(result))
    }

    async fn change_voters(&self, req: Request<ChangeVotersRequest>) -> Result<Response<AdminReply>, Status> {
        let r = req.into_inner();
        let add: BTreeSet<u64> = r.add.into_iter().collect();
        let remove: BTreeSet<u64> = r.remove.into_iter().collect();
        let result = async {
            if add.is_empty() && remove.is_empty() {
                return Err(meta_error(Errno::Einval, "nothing to change"));
            }
            if !add.is_disjoint(&remove) {
                return Err(meta_error(Errno::Einval, "a node cannot be added and removed at once"));
            }
            let members = self.raft.metrics().borrow().membership_config.membership().clone();
            if let Some(unknown) = add.iter().find(|id| members.get_node(id).is_none()) {
                return Err(meta_error(
                    Errno::Enoent,
                    format!("node {unknown} is not a learner yet; add it as a learner first"),
                ));
            }
            if !add.is_empty() {
                self.change(ChangeMembers::AddVoterIds(add.clone())).await?;
            }
            if !remove.is_empty() {
                let voters: BTreeSet<u64> = members.voter_ids().collect();
                let leaving_voters: BTreeSet<u64> = remove.intersection(&voters).copied().collect();
                if !leaving_voters.is_empty() {
                    self.change(ChangeMembers::RemoveVoters(leaving_voters)).await?;
                }
                self.change(ChangeMembers::RemoveNodes(remove.clone())).await?;
            }
            Ok(())
        }
        .await;
        Ok(self.reply(result))
    }
}

/// The highest entry format that every member reads, from each member's highest; a
/// member that reports none (0) runs a build from before formats were reported, which
/// reads format 1 only.
fn format_every_member_reads(highest: &[u32]) -> Option<u32> {
    highest.iter().map(|&max| max.max(1)).min()
}

#[cfg(test)]
mod tests {
    use super::format_every_member_reads;

    #[test]
    fn the_entry_format_rises_only_as_far_as_the_oldest_member_reads() {
        assert_eq!(format_every_member_reads(&[2, 2, 2]), Some(2));
        assert_eq!(format_every_member_reads(&[2, 1, 2]), Some(1));
        assert_eq!(format_every_member_reads(&[2, 0]), Some(1));
        assert_eq!(format_every_member_reads(&[]), None);
    }
}
