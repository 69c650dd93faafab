//! Cairn's Rust client. It speaks the file protocol to a list of logic nodes; when the one
//! in use fails or times out it moves to the next and sends the same request again
//! (namespace mutations keep their idempotency key, so a retry applies once; a stripe is
//! simply stored again and the unreferenced copy becomes an orphan). Stripes are cut by
//! the erasure code the logic nodes announce with every namespace reply, and by the one
//! the client was given until it has seen one, so a client whose configuration differs
//! from the cluster's (or predates a change of it) still writes stripes the nodes take.
//! A file's content is visible only after the commit of its layout, which `write_file`
//! and [`FileWriter::commit`] return after. Requests travel over several connections at
//! once, spread over the logic nodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_common::config::ErasureConfig;
use cairn_common::file_wire::{Capacity, FileBytes, FileReply, FileRequest, READ_BYTES_MAX};
use cairn_common::frame::{write_request_lent, AlignedFrameReader};
use cairn_common::ids::RequestId;
use cairn_common::namespace::is_mutation;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, Errno, GetAttr, Lookup, MetaError, MetaRequest, Mkdir, StripeCode,
};
use cairn_common::transport::{ReadHalf, Stream, WriteHalf};
use cairn_common::versions::API_VERSION_MIN;
use cairn_common::wire::ErrorCode;
use thiserror::Error;
use tracing::warn;

mod paths;
mod reader;
mod writer;

pub use paths::components;
pub use reader::FileReader;
pub use writer::FileWriter;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request's answer, a stripe write included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
pub(crate) const SESSION_TTL_MS: u32 = 120_000;
/// How long a client keeps to what it learnt of the metadata group's entry format (see
/// [`Learnt`]) before it tries the newer way again.
const LEARNT_FOR: Duration = Duration::from_secs(60);
/// Connections to the logic nodes, and so requests in flight at once (each opened at its
/// first use). A stripe write waits for k+m shards to be synced on their dataservers, so
/// throughput is what is in flight over that wait. 2 GiB checkpoints on 2 cores, A/B on
/// fresh clusters: 16 instead of 8 took completion from 896 to 996 MB/s, and 32 instead
/// of 16 from 854 to 979 MB/s and restores from 1902 to 2203 MB/s; 64 (with 8 stripes
/// in flight per file) gained no completion beyond the spread and took each logic node's
/// peak RSS from about 340 to 550 MiB. A logic node bounds what it holds by its own
/// connection and request limits, whatever a client opens.
const CONNECTIONS: usize = 32;
/// Replies carry at most this much file data plus their message.
const REPLY_BYTES_MAX: u32 = (READ_BYTES_MAX as u32) + (1 << 20);

#[derive(Debug, Error)]
pub enum ClientError {
    /// The namespace refused the request (nothing changed).
    #[error("{errno:?}: {message}")]
    Refused { errno: Errno, message: String },
    /// A logic node refused the request as malformed: retrying will not help.
    #[error("refused by the logic node: {0}")]
    BadRequest(String),
    /// No logic node answered within the deadline.
    #[error("no logic node answered after {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    #[error("unexpected reply: {0}")]
    BadReply(String),
}

impl ClientError {
    /// A refusal (nothing changed) with its POSIX reason.
    pub fn refused(errno: Errno, message: impl Into<String>) -> ClientError {
        ClientError::Refused {
            errno,
            message: message.into(),
        }
    }

    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The POSIX error number to report: the namespace's own (its numbers are POSIX's),
    /// EIO for anything else (no logic node answered, a stripe could not be read).
    pub fn os_errno(&self) -> i32 {
        match self.errno() {
            Some(n) if (1..1000).contains(&(n as i32)) => n as i32,
            _ => Errno::Eio as i32,
        }
    }
}

/// An answer of a kind the request does not get.
pub(crate) fn bad_reply(r: impl std::fmt::Debug) -> ClientError {
    ClientError::BadReply(format!("{r:?}"))
}

fn refused(e: MetaError) -> ClientError {
    ClientError::refused(Errno::try_from(e.errno).unwrap_or(Errno::Unspecified), e.message)
}

type Connection = (AlignedFrameReader<ReadHalf>, WriteHalf);

#[derive(Debug)]
struct Route {
    index: usize,
    conn: Option<Connection>,
    next_frame: u64,
}

#[derive(Debug)]
pub struct CairnClient {
    addrs: Vec<SocketAddr>,
    /// Connections, each carrying one request at a time; route i starts at logic node
    /// i mod n, so load spreads over every logic node.
    routes: Vec<tokio::sync::Mutex<Route>>,
    next_route: AtomicUsize,
    client_id: [u8; 16],
    next_request: AtomicU64,
    deadline: Duration,
    /// The code stripes are cut by: the one given, until a logic node announces its own.
    erasure: std::sync::RwLock<ErasureConfig>,
    /// Writers open a session before they commit: the metadata group refused a commit
    /// without one (its entries are older than `SESSIONLESS_COMMIT_FORMAT`).
    sessions_needed: Learnt,
    /// Writers commit whole layouts: the group refused a commit of changed stripes (its
    /// entries are older than `STRIPE_KEYS_FORMAT`).
    whole_commits_needed: Learnt,
}

/// A refusal the metadata group gave because its entries predate a newer way of doing
/// something: until when the client does it the older way. It asks again after
/// [`LEARNT_FOR`], as a finalized upgrade lifts it.
#[derive(Debug, Default)]
struct Learnt(std::sync::Mutex<Option<Instant>>);

impl Learnt {
    fn holds(&self) -> bool {
        let until = self.0.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn learn(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + LEARNT_FOR);
    }
}

/// What one attempt produced: an answer (with the count of bytes it placed in the
/// caller's buffer), or a reason to try again.
enum Attempt {
    /// Boxed: a reply is hundreds of bytes, a retry a few dozen.
    Done(Box<Result<(FileReply, usize), ClientError>>),
    Retry(String),
}

impl CairnClient {
    /// A client of the logic nodes at `addrs`, for a cluster coded with `erasure` (until
    /// a logic node announces its code); a request gives up after `deadline` without an
    /// answer.
    pub fn new(addrs: Vec<SocketAddr>, erasure: ErasureConfig, deadline: Duration) -> Arc<CairnClient> {
        Arc::new(CairnClient {
            routes: (0..CONNECTIONS)
                .map(|index| {
                    tokio::sync::Mutex::new(Route {
                        index,
                        conn: None,
                        next_frame: 1,
                    })
                })
                .collect(),
            next_route: AtomicUsize::new(0),
            addrs,
            client_id: rand::random(),
            next_request: AtomicU64::new(1),
            deadline,
            erasure: std::sync::RwLock::new(erasure),
            sessions_needed: Learnt::default(),
            whole_commits_needed: Learnt::default(),
        })
    }

    /// A free connected route if there is one, else a free one to connect, else the next
    /// in turn (waiting for it). Connected routes come first so that a client opens only
    /// as many connections as it has had requests in flight at once.
    async fn route(&self) -> tokio::sync::MutexGuard<'_, Route> {
        let first = self.next_route.fetch_add(1, Ordering::Relaxed);
        let mut unconnected = None;
        for i in 0..self.routes.len() {
            if let Ok(route) = self.routes[(first + i) % self.routes.len()].try_lock() {
                if route.conn.is_some() {
                    return route;
                }
                unconnected.get_or_insert(route);
            }
        }
        match unconnected {
            Some(route) => route,
            None => self.routes[first % self.routes.len()].lock().await,
        }
    }

    async fn attempt(&self, req: &FileRequest, dest: &mut [u8]) -> Attempt {
        let mut route = self.route().await;
        if self.addrs.is_empty() {
            return Attempt::Done(Box::new(Err(ClientError::BadRequest("no logic node addresses".into()))));
        }
        let addr = self.addrs[route.index % self.addrs.len()];
        if route.conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let (rd, wr) = stream.into_split();
                    route.conn = Some((AlignedFrameReader::new(rd, REPLY_BYTES_MAX), wr));
                }
                Ok(Err(e)) => return self.fail_over(&mut route, format!("connect to {addr}: {e}")),
                Err(_) => return self.fail_over(&mut route, format!("connect to {addr}: timed out")),
            }
        }
        let id = RequestId(route.next_frame);
        route.next_frame += 1;
        // Out of the route until its reply has been read whole: a caller that gives up
        // halfway (a read-ahead aborted) leaves the stream inside a frame, so the
        // connection is dropped with it rather than reused.
        let Some((mut frames, mut wr)) = route.conn.take() else {
            return Attempt::Retry("not connected".into());
        };
        // Lent, not copied: the caller holds `req` until a logic node has answered it.
        if let Err(e) = write_request_lent(&mut wr, &req.to_frame(id)).await {
            return self.fail_over(&mut route, format!("send to {addr}: {e}"));
        }
        let (frame, placed) = match tokio::time::timeout(REQUEST_TIMEOUT, frames.next_into(dest)).await {
            Ok(Ok(Some((f, placed)))) if f.request_id == id => (f, placed),
            Ok(Ok(Some((f, _)))) => {
                return self.fail_over(&mut route, format!("{addr} answered request {}", f.request_id.0))
            }
            Ok(Err(e)) => return self.fail_over(&mut route, format!("from {addr}: {e}")),
            Ok(Ok(None)) => return self.fail_over(&mut route, format!("{addr} closed the connection")),
            Err(_) => return self.fail_over(&mut route, format!("{addr}: no answer in {REQUEST_TIMEOUT:?}")),
        };
        route.conn = Some((frames, wr));
        match FileReply::from_frame_placed(&frame, &dest[..placed]) {
            Ok(FileReply::Error {
                code: ErrorCode::BadRequest,
                message,
            }) => Attempt::Done(Box::new(Err(ClientError::BadRequest(message)))),
            // The logic node could not finish it (dataservers or metadata busy): again.
            Ok(FileReply::Error { message, .. }) => Attempt::Retry(message),
            Ok(FileReply::Meta(m)) => match &m.result {
                Some(meta_reply::Result::Error(e)) if e.errno == Errno::Unavailable as i32 => {
                    Attempt::Retry(e.message.clone())
                }
                _ => Attempt::Done(Box::new(Ok((FileReply::Meta(m), 0)))),
            },
            Ok(reply) => Attempt::Done(Box::new(Ok((reply, placed)))),
            Err(e) => self.fail_over(&mut route, format!("bad reply from {addr}: {e}")),
        }
    }

    fn fail_over(&self, route: &mut Route, why: String) -> Attempt {
        route.conn = None;
        route.index = route.index.wrapping_add(1);
        warn!("{why}; trying the next logic node");
        Attempt::Retry(why)
    }

    /// Sends `req` until a logic node answers it or the deadline passes.
    async fn exchange(&self, req: FileRequest) -> Result<FileReply, ClientError> {
        Ok(self.exchange_into(req, &mut []).await?.0)
    }

    /// [`CairnClient::exchange`], with the reply's data part read into `dest` where it
    /// fits; returns how many bytes of `dest` it filled.
    async fn exchange_into(&self, req: FileRequest, dest: &mut [u8]) -> Result<(FileReply, usize), ClientError> {
        let start = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.attempt(&req, dest).await {
                Attempt::Done(r) => return *r,
                Attempt::Retry(last) => {
                    if start.elapsed() >= self.deadline {
                        return Err(ClientError::Unavailable {
                            waited: start.elapsed(),
                            last,
                        });
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// A namespace operation; a mutation gets a fresh request id that every retry keeps.
    pub async fn meta(&self, op: Op) -> Result<meta_reply::Result, ClientError> {
        self.meta_and_dirs(op).await.map(|(result, _)| result)
    }

    /// [`Self::meta`], with the attributes of the directories a mutation changed
    /// (`MetaReply.changed_dirs`).
    pub async fn meta_and_dirs(&self, op: Op) -> Result<(meta_reply::Result, Vec<Attr>), ClientError> {
        let request_id = if is_mutation(&op) {
            self.next_request.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let req = MetaRequest {
            client_id: self.client_id.to_vec(),
            request_id,
            api_version: API_VERSION_MIN,
            op: Some(op),
        };
        match self.exchange(FileRequest::Meta(req)).await? {
            FileReply::Meta(m) => {
                if let Some(code) = &m.stripe_code {
                    self.learn_code(code);
                }
                match m.result {
                    Some(meta_reply::Result::Error(e)) => Err(refused(e)),
                    Some(r) => Ok((r, m.changed_dirs)),
                    None => Err(ClientError::BadReply("empty namespace reply".into())),
                }
            }
            other => Err(bad_reply(other)),
        }
    }

    async fn attr(&self, op: Op) -> Result<Attr, ClientError> {
        match self.meta(op).await? {
            meta_reply::Result::Attr(a) => Ok(a),
            other => Err(bad_reply(other)),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, ClientError> {
        self.attr(Op::Lookup(Lookup {
            parent,
            name: name.to_vec(),
        }))
        .await
    }

    pub async fn getattr(&self, inode: u64) -> Result<Attr, ClientError> {
        self.attr(Op::Getattr(GetAttr { inode })).await
    }

    /// Creates the file `name` in `parent`; refused if the name exists.
    pub async fn create(&self, parent: u64, name: &[u8], mode: u32) -> Result<Attr, ClientError> {
        self.create_in(parent, name, mode, true).await
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<Attr, ClientError> {
        self.attr(Op::Mkdir(Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            ..Mkdir::default()
        }))
        .await
    }

    /// The erasure code stripes are cut by now.
    pub fn erasure(&self) -> ErasureConfig {
        self.erasure.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the code a logic node announced, if this build can use it.
    fn learn_code(&self, announced: &StripeCode) {
        match ErasureConfig::from_stripe_code(announced) {
            Ok(code) => {
                // Every namespace reply announces it: write only when it changed.
                if code != self.erasure() {
                    *self.erasure.write().unwrap_or_else(|p| p.into_inner()) = code;
                }
            }
            Err(e) => warn!("a logic node announced an erasure code this client cannot use ({e}): keeping its own"),
        }
    }

    pub(crate) fn stripe_bytes(&self) -> usize {
        self.erasure().stripe_bytes()
    }

    /// Up to `length` bytes of file `inode` from `offset` (fewer at its end), read from
    /// its newest committed layout, and the file's size.
    pub async fn read_range(&self, inode: u64, offset: u64, length: u64) -> Result<(Bytes, u64), ClientError> {
        let (data, size, _) = self.read_range_at(inode, offset, length, 0).await?;
        Ok((data, size))
    }

    /// [`CairnClient::read_range`] from any layout of at least `min_version` (0: the
    /// newest), which a logic node may have cached; also returns the version read.
    pub async fn read_range_at(
        &self,
        inode: u64,
        offset: u64,
        length: u64,
        min_version: u64,
    ) -> Result<(Bytes, u64, u64), ClientError> {
        let read = self.read_request(inode, offset, length, min_version, &mut []).await?;
        Ok((read.data.into_bytes(), read.size, read.version))
    }

    /// Fills `dest` from offset `offset` of file `inode` (one request, so at most
    /// `READ_BYTES_MAX` bytes) of a layout of at least `min_version`, receiving the bytes
    /// straight into it; returns how many it holds (fewer only at the end of the file),
    /// the file's size and the version read.
    pub async fn read_range_into(
        &self,
        inode: u64,
        offset: u64,
        min_version: u64,
        dest: &mut [u8],
    ) -> Result<(usize, u64, u64), ClientError> {
        let asked = dest.len();
        let read = self
            .read_request(inode, offset, asked as u64, min_version, dest)
            .await?;
        if !read.data.is_empty() {
            // Only a reply longer than the request does not fit in `dest`.
            return Err(ClientError::BadReply(format!(
                "a read of {asked} bytes at {offset} got more"
            )));
        }
        Ok((read.placed, read.size, read.version))
    }

    /// One read request of up to `length` bytes.
    async fn read_request(
        &self,
        inode: u64,
        offset: u64,
        length: u64,
        min_version: u64,
        dest: &mut [u8],
    ) -> Result<ReadReply, ClientError> {
        let req = FileRequest::Read {
            inode,
            offset,
            length: length.min(READ_BYTES_MAX),
            min_version,
        };
        match self.exchange_into(req, dest).await? {
            (
                FileReply::Data {
                    size,
                    layout_version,
                    data,
                },
                placed,
            ) => Ok(ReadReply {
                data,
                placed,
                size,
                version: layout_version,
            }),
            (FileReply::Meta(m), _) => match m.result {
                Some(meta_reply::Result::Error(e)) => Err(refused(e)),
                other => Err(bad_reply(other)),
            },
            (other, _) => Err(bad_reply(other)),
        }
    }

    /// The cluster's space for file bytes.
    pub async fn capacity(&self) -> Result<Capacity, ClientError> {
        match self.exchange(FileRequest::Capacity).await? {
            FileReply::Capacity(c) => Ok(c),
            other => Err(bad_reply(other)),
        }
    }

    /// The whole content of file `inode`.
    pub async fn read_file(&self, inode: u64) -> Result<Bytes, ClientError> {
        let mut out = BytesMut::new();
        loop {
            let (data, size) = self.read_range(inode, out.len() as u64, READ_BYTES_MAX).await?;
            out.extend_from_slice(&data);
            if data.is_empty() || out.len() as u64 >= size {
                return Ok(out.freeze());
            }
        }
    }
}

/// What one read request got.
struct ReadReply {
    /// The bytes that did not go into the caller's memory.
    data: FileBytes,
    /// How many did.
    placed: usize,
    /// The file's size.
    size: u64,
    /// The layout version read.
    version: u64,
}
