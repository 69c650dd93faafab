//! A client of one dataserver: one TCP connection with any number of requests in flight,
//! matched to replies by request id. Used by logic nodes, tools, tests and benchmarks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_common::checksum::{block_checksums, BlockRangeError, ChecksummedBlocks};
use cairn_common::config::FRAME_META_BYTES_MAX;
use cairn_common::frame::{write_request_lent, FrameDecoder, FrameError};
use cairn_common::ids::{RequestId, ShardId};
use cairn_common::transport::{Stream, WriteHalf};
use cairn_common::wire::{ErrorCode, Reply, Request, StatReport, WireError};
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

/// The largest reply payload accepted: the largest shard unit plus its message.
const REPLY_PAYLOAD_BYTES_MAX: u32 = (64 << 20) + FRAME_META_BYTES_MAX;
/// After a failed write, how long to wait for the server's reason.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connection to the dataserver failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection to the dataserver closed")]
    Closed,
    #[error("bad frame from the dataserver: {0}")]
    Frame(#[from] FrameError),
    #[error("bad reply from the dataserver: {0}")]
    Wire(#[from] WireError),
    #[error("dataserver refused: {code:?}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("shard bytes from the dataserver failed verification: {0}")]
    BadBlocks(#[from] BlockRangeError),
    #[error("unexpected reply {0:?}")]
    Unexpected(Box<Reply>),
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the shard's bytes are bad: a block failed its checksum here, on receipt,
    /// or the dataserver found the shard damaged. The node itself answered: the shard
    /// needs repair, not the node a rest.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            ClientError::BadBlocks(BlockRangeError::Corrupt(_))
                | ClientError::Remote {
                    code: ErrorCode::Corrupt,
                    ..
                }
        )
    }
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Reply, ClientError>>>>>>;

#[derive(Debug)]
pub struct DataserverClient {
    writer: tokio::sync::Mutex<WriteHalf>,
    /// `None` once the connection has failed: later calls fail at once.
    waiters: Waiters,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for DataserverClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl DataserverClient {
    pub async fn connect(addr: SocketAddr) -> Result<DataserverClient, ClientError> {
        let stream = Stream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (rd, wr) = stream.into_split();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_waiters = waiters.clone();
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, FrameDecoder::new(REPLY_PAYLOAD_BYTES_MAX));
            let failure = loop {
                match frames.next().await {
                    Some(Ok(frame)) => {
                        let waiter = lock(&reader_waiters)
                            .as_mut()
                            .and_then(|w| w.remove(&frame.request_id.0));
                        match (waiter, Reply::from_frame(&frame)) {
                            (Some(w), reply) => drop(w.send(reply.map_err(ClientError::from))),
                            // Request id 0: the server rejected our stream and is closing it.
                            (None, Ok(Reply::Error { code, message })) => {
                                break Some(ClientError::Remote { code, message })
                            }
                            (None, _) => {}
                        }
                    }
                    Some(Err(e)) => break Some(ClientError::Frame(e)),
                    None => break None,
                }
            };
            let pending = lock(&reader_waiters).take().unwrap_or_default();
            let refusal = match failure {
                Some(ClientError::Remote { code, message }) => Some((code, message)),
                _ => None,
            };
            for (_, w) in pending {
                let e = match &refusal {
                    Some((code, message)) => ClientError::Remote {
                        code: *code,
                        message: message.clone(),
                    },
                    None => ClientError::Closed,
                };
                let _ = w.send(Err(e));
            }
        });
        Ok(DataserverClient {
            writer: tokio::sync::Mutex::new(wr),
            waiters,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Sends one request and waits for its reply. A `Reply::Error` is returned as
    /// `ClientError::Remote`.
    pub async fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiters).as_mut() {
            Some(w) => w.insert(id, tx),
            None => return Err(ClientError::Closed),
        };
        let frame = request.to_frame(RequestId(id));
        // Lent, not copied: `request` holds the data until its reply. A shard's bytes
        // changed before the server read them would fail its block checksums there.
        let sent = write_request_lent(&mut *self.writer.lock().await, &frame).await;
        if let Err(e) = sent {
            // The server may have refused the stream and closed it while we were still
            // writing; its error frame says why, which beats "broken pipe".
            return match tokio::time::timeout(REFUSAL_WAIT, rx).await {
                Ok(Ok(Err(refusal @ ClientError::Remote { .. }))) => Err(refusal),
                _ => {
                    if let Some(w) = lock(&self.waiters).as_mut() {
                        w.remove(&id);
                    }
                    Err(e.into())
                }
            };
        }
        match rx.await.map_err(|_| ClientError::Closed)?? {
            Reply::Error { code, message } => Err(ClientError::Remote { code, message }),
            reply => Ok(reply),
        }
    }

    /// Stores `data` as shard `shard`, computing its block checksums. Returns false when
    /// the same shard was already stored.
    pub async fn put(&self, shard: ShardId, block_bytes: u32, data: Bytes) -> Result<bool, ClientError> {
        self.put_checksummed(shard, block_bytes, block_checksums(&data, block_bytes), data)
            .await
    }

    /// [`DataserverClient::put`] with the block checksums already computed (the
    /// dataserver verifies them before it stores anything).
    pub async fn put_checksummed(
        &self,
        shard: ShardId,
        block_bytes: u32,
        checksums: Vec<u32>,
        data: Bytes,
    ) -> Result<bool, ClientError> {
        let request = Request::Put {
            shard,
            block_bytes,
            checksums,
            data,
        };
        match self.call(&request).await? {
            Reply::PutDone { created } => Ok(created),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Reads `length` bytes of a shard (to its end when `None`) from `offset`, and
    /// verifies every block received against its checksum.
    pub async fn get(&self, shard: ShardId, offset: u64, length: Option<u64>) -> Result<Bytes, ClientError> {
        let (_, length, blocks) = self.get_blocks(shard, offset, length).await?;
        Ok(blocks.verified_range(offset, length)?)
    }

    /// The blocks that cover `length` bytes of a shard from `offset`, every one verified,
    /// with the shard's length: a reader of part of a stripe checks that the shard is as
    /// long as it expects before it trusts where its bytes lie.
    pub async fn get_part(
        &self,
        shard: ShardId,
        offset: u64,
        length: u64,
    ) -> Result<(u64, ChecksummedBlocks), ClientError> {
        let (shard_len, length, blocks) = self.get_blocks(shard, offset, Some(length)).await?;
        blocks.verified_range(offset, length)?;
        Ok((shard_len, blocks))
    }

    /// The whole shard, every block verified: its bytes and block checksums, and (from
    /// them, without reading the bytes again) the crc32c a layout records for it.
    pub async fn get_whole(&self, shard: ShardId) -> Result<ChecksummedBlocks, ClientError> {
        let (_, length, blocks) = self.get_blocks(shard, 0, None).await?;
        let held = blocks.bytes.len() as u64;
        if blocks.first_block != 0 || held != length {
            // More or fewer bytes than the shard's: its crc would not describe the shard.
            return Err(BlockRangeError::NotHeld {
                offset: 0,
                length,
                first_block: blocks.first_block,
                held,
            }
            .into());
        }
        blocks.verified_range(0, length)?;
        Ok(blocks)
    }

    /// The reply to a read of `length` bytes (to the shard's end when `None`) from
    /// `offset`: the shard's length, the length the reply holds and its blocks, not yet
    /// verified.
    async fn get_blocks(
        &self,
        shard: ShardId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(u64, u64, ChecksummedBlocks), ClientError> {
        match self.call(&Request::Get { shard, offset, length }).await? {
            Reply::Data {
                shard_len,
                offset: got_offset,
                length: got_length,
                blocks,
            } if got_offset == offset && length.is_none_or(|l| l == got_length) => Ok((shard_len, got_length, blocks)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn delete(&self, shard: ShardId) -> Result<bool, ClientError> {
        match self.call(&Request::Delete { shard }).await? {
            Reply::DeleteDone { existed } => Ok(existed),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn list(
        &self,
        start_after: Option<ShardId>,
        limit: u32,
    ) -> Result<(Vec<(ShardId, u64)>, bool), ClientError> {
        match self.call(&Request::List { start_after, limit }).await? {
            Reply::List { shards, more } => Ok((shards, more)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn stat(&self) -> Result<StatReport, ClientError> {
        match self.call(&Request::Stat).await? {
            Reply::Stat(report) => Ok(report),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
