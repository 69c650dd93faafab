//! The Rust client of the metadata group: finds the leader (following `NotLeader` hints),
//! retries through leader changes and node failures with the same request id, so a
//! mutation applies at most once and the caller gets its first answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::namespace::is_mutation;
use cairn_common::proto::metadata::admin_client::AdminClient;
use cairn_common::proto::metadata::metadata_client::MetadataClient as GrpcClient;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, CloseSession, CommitLayout, Create, Dataservers, DirEntry, Errno, GetAttr,
    Layout, LayoutReply, Link, ListDraining, Lookup, MetaError, MetaReply, MetaRequest, Mkdir, NodeStatus, OpenSession,
    ReadDir, Rename, Rmdir, SessionReply, SetAttr, StatFs, StatFsReply, StatusRequest, Symlink, Unlink,
};
use cairn_common::versions::API_VERSION_MIN;
use tonic::transport::{Channel, Endpoint};

use crate::apply::CLIENT_ID_BYTES;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Membership changes wait for a Raft round or a learner's catch-up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
const MESSAGE_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetaClientError {
    /// The group answered: the operation was refused (nothing changed).
    #[error("{errno:?}: {message}")]
    Refused { errno: Errno, message: String },
    /// No leader answered within the client's deadline; a mutation may or may not have
    /// applied (retrying it with the same request id is safe).
    #[error("metadata group unavailable after {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    #[error("unexpected reply: {0}")]
    BadReply(String),
}

impl MetaClientError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            MetaClientError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn refused(e: MetaError) -> MetaClientError {
    MetaClientError::Refused {
        errno: Errno::try_from(e.errno).unwrap_or(Errno::Unspecified),
        message: e.message,
    }
}

#[derive(Debug)]
struct Route {
    addrs: Vec<String>,
    leader: usize,
    channels: Vec<Option<GrpcClient<Channel>>>,
}

#[derive(Debug)]
pub struct MetadataClient {
    route: Mutex<Route>,
    client_id: [u8; CLIENT_ID_BYTES],
    next_request: AtomicU64,
    deadline: Duration,
}

impl MetadataClient {
    /// A client of the group whose members listen on `addrs`; calls give up after `deadline`.
    pub fn new(addrs: Vec<String>, deadline: Duration) -> MetadataClient {
        let n = addrs.len();
        MetadataClient {
            route: Mutex::new(Route {
                addrs,
                leader: 0,
                channels: vec![None; n],
            }),
            client_id: rand::random(),
            next_request: AtomicU64::new(1),
            deadline,
        }
    }

    fn route(&self) -> std::sync::MutexGuard<'_, Route> {
        self.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self) -> Result<(usize, GrpcClient<Channel>), String> {
        let mut r = self.route();
        if r.addrs.is_empty() {
            return Err("no metadata node addresses".into());
        }
        let i = r.leader % r.addrs.len();
        if let Some(c) = &r.channels[i] {
            return Ok((i, c.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", r.addrs[i]))
            .map_err(|e| format!("address {}: {e}", r.addrs[i]))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .tcp_nodelay(true);
        let client = GrpcClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        r.channels[i] = Some(client.clone());
        Ok((i, client))
    }

    /// After a failure at `i`: go to the leader named, else to the next member.
    fn redirect(&self, i: usize, leader_addr: &str, drop_channel: bool) {
        let mut r = self.route();
        if drop_channel {
            r.channels[i] = None;
        }
        if r.leader % r.addrs.len().max(1) != i {
            return; // another caller already moved on
        }
        if let Some(j) = r.addrs.iter().position(|a| a == leader_addr) {
            r.leader = j;
        } else if !leader_addr.is_empty() {
            r.addrs.push(leader_addr.to_owned());
            r.channels.push(None);
            r.leader = r.addrs.len() - 1;
        } else {
            r.leader = (i + 1) % r.addrs.len();
        }
    }

    /// A fresh request id; callers that retry by hand reuse it with [`Self::call_as`].
    pub fn new_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Run `op`, retrying until the deadline; a mutation gets a new request id.
    pub async fn call(&self, op: Op) -> Result<meta_reply::Result, MetaClientError> {
        let id = if is_mutation(&op) { self.new_request_id() } else { 0 };
        self.call_as(id, op).await
    }

    /// Run `op` under request id `request_id` (0 for reads).
    pub async fn call_as(&self, request_id: u64, op: Op) -> Result<meta_reply::Result, MetaClientError> {
        let req = MetaRequest {
            client_id: self.client_id.to_vec(),
            request_id,
            api_version: API_VERSION_MIN,
            op: Some(op),
        };
        match self.send(req).await?.result {
            Some(meta_reply::Result::Error(e)) => Err(refused(e)),
            Some(r) => Ok(r),
            None => Err(MetaClientError::BadReply("empty reply".into())),
        }
    }

    /// Sends `req` as it is (its idempotency key included: a logic node forwards its
    /// clients' requests this way) until the leader answers or the deadline passes. A
    /// refusal is an answer: it comes back as the reply's error.
    pub async fn send(&self, req: MetaRequest) -> Result<MetaReply, MetaClientError> {
        let start = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            let last = match self.channel() {
                Err(e) => e,
                Ok((i, mut client)) => match client.call(req.clone()).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        match &reply.result {
                            Some(meta_reply::Result::Error(e)) => match Errno::try_from(e.errno) {
                                Ok(Errno::NotLeader) => {
                                    self.redirect(i, &e.leader_addr, false);
                                    if !e.leader_addr.is_empty() {
                                        continue; // go straight to the leader named
                                    }
                                    e.message.clone()
                                }
                                Ok(Errno::Unavailable) => e.message.clone(),
                                _ => return Ok(reply),
                            },
                            _ => return Ok(reply),
                        }
                    }
                    Err(status) => {
                        self.redirect(i, "", true);
                        status.to_string()
                    }
                },
            };
            if start.elapsed() >= self.deadline {
                return Err(MetaClientError::Unavailable {
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    // ----- typed helpers -----

    async fn attr(&self, op: Op) -> Result<Attr, MetaClientError> {
        match self.call(op).await? {
            meta_reply::Result::Attr(a) => Ok(a),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    async fn done(&self, op: Op) -> Result<(), MetaClientError> {
        match self.call(op).await? {
            meta_reply::Result::Done(_) => Ok(()),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, MetaClientError> {
        self.attr(Op::Lookup(Lookup {
            parent,
            name: name.to_vec(),
        }))
        .await
    }

    pub async fn getattr(&self, inode: u64) -> Result<Attr, MetaClientError> {
        self.attr(Op::Getattr(GetAttr { inode })).await
    }

    pub async fn create(&self, parent: u64, name: &[u8], mode: u32, exclusive: bool) -> Result<Attr, MetaClientError> {
        self.attr(Op::Create(Create {
            parent,
            name: name.to_vec(),
            mode,
            exclusive,
            ..Create::default()
        }))
        .await
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<Attr, MetaClientError> {
        self.attr(Op::Mkdir(Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            ..Mkdir::default()
        }))
        .await
    }

    pub async fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr, MetaClientError> {
        self.attr(Op::Symlink(Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            ..Symlink::default()
        }))
        .await
    }

    pub async fn link(&self, inode: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, MetaClientError> {
        self.attr(Op::Link(Link {
            inode,
            new_parent,
            new_name: new_name.to_vec(),
        }))
        .await
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), MetaClientError> {
        self.done(Op::Unlink(Unlink {
            parent,
            name: name.to_vec(),
        }))
        .await
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), MetaClientError> {
        self.done(Op::Rmdir(Rmdir {
            parent,
            name: name.to_vec(),
        }))
        .await
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<(), MetaClientError> {
        self.done(Op::Rename(Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            ..Rename::default()
        }))
        .await
    }

    pub async fn setattr(&self, set: SetAttr) -> Result<Attr, MetaClientError> {
        self.attr(Op::Setattr(set)).await
    }

    /// One page of a directory listing.
    pub async fn readdir(&self, dir: u64, after: &[u8], limit: u32) -> Result<(Vec<DirEntry>, bool), MetaClientError> {
        match self
            .call(Op::Readdir(ReadDir {
                dir,
                after: after.to_vec(),
                limit,
            }))
            .await?
        {
            meta_reply::Result::Entries(e) => Ok((e.entries, e.done)),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    /// A whole directory, page by page.
    pub async fn readdir_all(&self, dir: u64) -> Result<Vec<DirEntry>, MetaClientError> {
        let mut all: Vec<DirEntry> = Vec::new();
        loop {
            let after = all.last().map(|e| e.name.clone()).unwrap_or_default();
            let (page, done) = self.readdir(dir, &after, 0).await?;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    pub async fn statfs(&self) -> Result<StatFsReply, MetaClientError> {
        match self.call(Op::Statfs(StatFs {})).await? {
            meta_reply::Result::Statfs(s) => Ok(s),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    /// The draining dataservers (`ids`) and those of them marked lost (`lost`).
    pub async fn draining(&self) -> Result<Dataservers, MetaClientError> {
        match self.call(Op::ListDraining(ListDraining {})).await? {
            meta_reply::Result::Draining(d) => Ok(d),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    pub async fn open_session(&self, inode: u64, ttl_ms: u32) -> Result<SessionReply, MetaClientError> {
        match self
            .call(Op::OpenSession(OpenSession {
                inode,
                ttl_ms,
                ..OpenSession::default()
            }))
            .await?
        {
            meta_reply::Result::Session(s) => Ok(s),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }

    pub async fn close_session(&self, session: u64) -> Result<(), MetaClientError> {
        self.done(Op::CloseSession(CloseSession { session })).await
    }

    /// Commit `layout` (the file's new content) if the file is still at `expected_version`.
    pub async fn commit_layout(
        &self,
        session: u64,
        inode: u64,
        expected_version: u64,
        layout: Layout,
        size: u64,
    ) -> Result<LayoutReply, MetaClientError> {
        match self
            .call(Op::CommitLayout(CommitLayout {
                session,
                inode,
                expected_version,
                layout: Some(layout),
                size,
            }))
            .await?
        {
            meta_reply::Result::Layout(l) => Ok(l),
            other => Err(MetaClientError::BadReply(format!("{other:?}"))),
        }
    }
}

/// The admin service of the member at `addr` (status, membership, entry format).
pub async fn admin(addr: &str) -> Result<AdminClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ADMIN_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| format!("{addr}: {e}"))?;
    Ok(AdminClient::new(channel))
}

/// What the member at `addr` reports of itself.
pub async fn member_status(addr: &str) -> Result<NodeStatus, String> {
    admin(addr)
        .await?
        .status(StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{addr}: {}", e.message()))
}
