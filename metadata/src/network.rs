//! Raft RPCs between voters over gRPC. openraft's messages travel serialized (postcard)
//! inside a versioned envelope; the receiver checks the version before decoding.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_common::proto::metadata::raft_client::RaftClient;
use cairn_common::proto::metadata::RaftEnvelope;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::types::{NodeInfo, TypeConfig};

/// Version of the Raft envelope's payload encoding.
pub const RAFT_WIRE_VERSION: u32 = 1;
/// Raft messages carry batches of entries and snapshot chunks.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn envelope<T: Serialize>(value: &T) -> Result<RaftEnvelope, postcard::Error> {
    Ok(RaftEnvelope {
        version: RAFT_WIRE_VERSION,
        payload: postcard::to_stdvec(value)?,
    })
}

/// Decode an envelope from the wire; a typed error, never a panic, for anything else.
pub fn open_envelope<T: DeserializeOwned>(env: &RaftEnvelope) -> Result<T, String> {
    if env.version != RAFT_WIRE_VERSION {
        return Err(format!(
            "raft envelope version {} (this node speaks {RAFT_WIRE_VERSION})",
            env.version
        ));
    }
    postcard::from_bytes(&env.payload).map_err(|e| format!("raft message does not decode: {e}"))
}

type Silenced = Arc<Mutex<BTreeSet<u64>>>;

/// Connections to the other members, shared: openraft asks for a new client for every
/// leadership check, and a gRPC channel (one HTTP/2 connection) serves them all.
#[derive(Clone, Debug, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
    /// Members this node sends no entries and no heartbeats to (see `handover`).
    silenced: Silenced,
}

impl Network {
    /// Sends `members` no entries and no heartbeats, as if they were unreachable, until
    /// the guard is dropped.
    pub fn silence(&self, members: BTreeSet<u64>) -> Silence {
        lock(&self.silenced).extend(members.iter().copied());
        Silence {
            silenced: self.silenced.clone(),
            members,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Members silenced while it lives.
#[derive(Debug)]
pub struct Silence {
    silenced: Silenced,
    members: BTreeSet<u64>,
}

impl Drop for Silence {
    fn drop(&mut self) {
        lock(&self.silenced).retain(|id| !self.members.contains(id));
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            silenced: self.silenced.clone(),
        }
    }
}

/// The connection to one other member.
#[derive(Debug)]
pub struct Peer {
    target: u64,
    addr: String,
    channels: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
    silenced: Silenced,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E> = Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

fn network_error<E: std::error::Error>(msg: String) -> RPCError<u64, NodeInfo, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

impl Peer {
    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, RaftClient<Channel>>> {
        lock(&self.channels)
    }

    /// What a leader sends a silenced member fails as if it were unreachable.
    fn silenced(&self) -> Result<(), Unreachable> {
        if lock(&self.silenced).contains(&self.target) {
            return Err(Unreachable::new(&std::io::Error::other(format!(
                "node {} is silenced for a hand-over",
                self.target
            ))));
        }
        Ok(())
    }

    async fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        if let Some(c) = self.cached().get(&self.addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| Unreachable::new(&e))?;
        let client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        self.cached().insert(self.addr.clone(), client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let env = envelope(req).map_err(|e| network_error(e.to_string()))?;
        let mut client = self.client().await.map_err(RPCError::Unreachable)?;
        let mut request = tonic::Request::new(env);
        request.set_timeout(option.hard_ttl());
        let sent = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match sent {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // Reconnect next time: the peer may have restarted.
                self.cached().remove(&self.addr);
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => network_error(format!("{rpc:?} to node {}: {status}", self.target)),
                });
            }
        };
        let result: Result<Resp, RaftError<u64, E>> = open_envelope(&reply).map_err(network_error)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.silenced().map_err(RPCError::Unreachable)?;
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.silenced().map_err(RPCError::Unreachable)?;
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
