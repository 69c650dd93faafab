//! The dataserver's TCP service. Each connection pipelines requests: frames are decoded
//! as they arrive, handled concurrently, and replies go back (in completion order, tagged
//! with the request id) in batched vectored writes.
//!
//! Memory is bounded by configuration, not by traffic: at most `max_connections`
//! connections, each holding at most one frame being received, and a byte budget
//! (`inflight_bytes_max`) for requests being handled and replies not yet written. A
//! connection waiting for budget stops reading, which pushes back on its client.
//!
//! Hostile input: a frame that fails to decode (bad magic, version, kind, length or
//! checksum) gets an error frame with request id 0 and the connection is closed; a
//! well-framed but invalid request gets a typed error reply and the connection goes on.

use std::sync::Arc;
use std::time::Duration;

use cairn_common::frame::{write_replies_lent, AlignedFrameReader, Frame};
use cairn_common::ids::{HallId, NodeId, RequestId};
use cairn_common::transport::{Listener, Stream};
use cairn_common::wire::{ErrorCode, Reply, Request, StatReport, WireError, LIST_LIMIT_MAX};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::aligned::is_aligned;
use crate::store::ShardStore;

/// Budget unit: permits are KiB so that budgets over 4 GiB fit the semaphore's u32.
const PERMIT_BYTES: u64 = 1024;
/// A client that sends nothing for this long (mid-frame or between frames) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies queued per connection before handlers wait for the writer.
const REPLY_QUEUE: usize = 64;
/// Replies written in one vectored write at most.
const REPLY_BATCH: usize = 32;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node: NodeId,
    pub hall: HallId,
    pub max_connections: u32,
    pub inflight_bytes_max: u64,
    pub payload_bytes_max: u32,
}

#[derive(Debug)]
pub struct Server {
    store: ShardStore,
    config: ServerConfig,
    inflight: Arc<Semaphore>,
    inflight_permits: u32,
    connections: Arc<Semaphore>,
}

impl Server {
    pub fn new(store: ShardStore, config: ServerConfig) -> Arc<Server> {
        let inflight_permits = u32::try_from(config.inflight_bytes_max / PERMIT_BYTES).unwrap_or(u32::MAX);
        Arc::new(Server {
            inflight: Arc::new(Semaphore::new(inflight_permits as usize)),
            inflight_permits,
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
            store,
            config,
        })
    }

    /// Accepts connections until `shutdown` fires, then waits for open connections to
    /// finish the requests they have started.
    pub async fn serve(self: Arc<Self>, listener: Listener, shutdown: CancellationToken) {
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = self.connections.clone().try_acquire_owned() else {
                warn!(%peer, max = self.config.max_connections, "connection limit reached; refusing");
                continue;
            };
            let server = self.clone();
            let stop = shutdown.clone();
            conns.spawn(async move {
                server.store.metrics().connections.inc();
                server.clone().connection(stream, stop).await;
                server.store.metrics().connections.dec();
                drop(slot);
            });
            while conns.try_join_next().is_some() {}
        }
        info!("stopped accepting; finishing open connections");
        while conns.join_next().await.is_some() {}
    }

    async fn connection(self: Arc<Self>, stream: Stream, shutdown: CancellationToken) {
        let (rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<(Frame, Option<OwnedSemaphorePermit>)>(REPLY_QUEUE);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(REPLY_BATCH);
            let mut permits = Vec::with_capacity(REPLY_BATCH);
            while let Some((frame, permit)) = rx.recv().await {
                batch.push(frame);
                permits.push(permit);
                while batch.len() < REPLY_BATCH {
                    let Ok((frame, permit)) = rx.try_recv() else { break };
                    batch.push(frame);
                    permits.push(permit);
                }
                match tokio::time::timeout(WRITE_TIMEOUT, write_replies_lent(&mut wr, &batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(error = %e, "client went away");
                        return;
                    }
                    Err(_) => {
                        warn!("client stopped reading replies; closing");
                        return;
                    }
                }
                batch.clear();
                permits.clear();
            }
        });
        let mut frames = AlignedFrameReader::new(rd, self.config.payload_bytes_max);
        let mut handlers = JoinSet::new();
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(IDLE_TIMEOUT, frames.next()) => n,
                _ = shutdown.cancelled() => break,
            };
            match next {
                Ok(Some(Ok(frame))) => {
                    let (id, version) = (frame.request_id, frame.version);
                    let request = Request::from_frame(&frame);
                    let cost = self.cost_permits(&frame, &request);
                    drop(frame);
                    let Ok(permit) = self.inflight.clone().acquire_many_owned(cost).await else {
                        break;
                    };
                    let server = self.clone();
                    let tx = tx.clone();
                    handlers.spawn(async move {
                        let reply = match request {
                            Ok(request) => server.handle(id, request).await,
                            Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                        };
                        // A closed queue means the client is gone; the reply has no reader.
                        let _ = tx.send((reply.to_frame(id).answering(version), Some(permit))).await;
                    });
                }
                Ok(Some(Err(e))) => {
                    debug!(error = %e, "bad frame; closing connection");
                    let reply = Reply::error(ErrorCode::BadRequest, format!("bad frame: {e}"));
                    let _ = tx.send((reply.to_frame(RequestId(0)), None)).await;
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    debug!("idle connection closed");
                    break;
                }
            }
            while handlers.try_join_next().is_some() {}
        }
        while handlers.join_next().await.is_some() {}
        drop(tx);
        let _ = writer.await;
    }

    /// Budget a request holds while it is handled: its own bytes, and the aligned copy a
    /// put of unaligned bytes makes or the bytes a get will return.
    fn cost_permits(&self, frame: &Frame, request: &Result<Request, WireError>) -> u32 {
        let own = (frame.meta.len() + frame.data.len()) as u64;
        let extra = match request {
            Ok(Request::Put { data, .. }) if !is_aligned(data) => data.len() as u64,
            Ok(Request::Get { length, .. }) => length.unwrap_or(u64::MAX).min(u64::from(self.config.payload_bytes_max)),
            _ => 0,
        };
        let permits = (own + extra).div_ceil(PERMIT_BYTES).max(1);
        u32::try_from(permits).unwrap_or(u32::MAX).min(self.inflight_permits)
    }

    async fn handle(&self, id: RequestId, request: Request) -> Reply {
        let op = match &request {
            Request::Put { .. } => "put",
            Request::Get { .. } => "get",
            Request::Delete { .. } => "delete",
            Request::List { .. } => "list",
            Request::Stat => "stat",
        };
        let store = &self.store;
        let result = match request {
            Request::Put {
                shard,
                block_bytes,
                checksums,
                data,
            } => store
                .put(shard, block_bytes, checksums, data)
                .await
                .map(|created| Reply::PutDone { created }),
            Request::Get { shard, offset, length } => store.read(shard, offset, length).await.map(|r| Reply::Data {
                shard_len: r.shard_len,
                offset: r.offset,
                length: r.length,
                blocks: r.blocks,
            }),
            Request::Delete { shard } => store.delete(shard).await.map(|existed| Reply::DeleteDone { existed }),
            Request::List { start_after, limit } => store
                .list(start_after, limit.min(LIST_LIMIT_MAX) as usize)
                .await
                .map(|(shards, more)| Reply::List { shards, more }),
            Request::Stat => self.stat(),
        };
        let (outcome, reply) = match result {
            Ok(reply) => ("ok", reply),
            Err(e) => {
                debug!(request = %id, error = %e, "request failed");
                let code = e.code();
                (code.label(), Reply::error(code, e.to_string()))
            }
        };
        store.metrics().requests.with_label_values(&[op, outcome]).inc();
        reply
    }

    fn stat(&self) -> Result<Reply, crate::store::StoreError> {
        let usage = self.store.usage()?;
        let metrics = self.store.metrics();
        let corrupt = metrics.corrupt_blocks.with_label_values(&["scrub"]).get()
            + metrics.corrupt_blocks.with_label_values(&["read"]).get();
        Ok(Reply::Stat(StatReport {
            node_id: self.config.node.0,
            hall: self.config.hall.to_string(),
            capacity_bytes: usage.capacity_bytes,
            free_bytes: usage.free_bytes,
            used_bytes: usage.used_bytes,
            shard_count: usage.shard_count,
            corrupt_blocks: corrupt,
            io_mode: self.store.io_mode().to_owned(),
            build_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: u32::from(cairn_common::frame::VERSION),
        }))
    }
}
