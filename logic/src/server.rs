//! The logic node's file-protocol server: frames in, one task per request (bounded per
//! connection, so a client that floods waits), replies batched out. A bad frame gets an
//! error frame (request id 0) and the connection is closed; a bad request gets an error
//! reply. Nothing here keeps state between requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_common::config::FRAME_META_BYTES_MAX;
use cairn_common::file_wire::{FileReply, FileRequest};
use cairn_common::frame::{write_replies_lent, Frame, FrameDecoder};
use cairn_common::ids::RequestId;
use cairn_common::metrics::errno_label;
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, Errno, MetaError, MetaReply, MetaRequest};
use cairn_common::transport::{Listener, Stream};
use cairn_common::wire::ErrorCode;
use cairn_metadata::client::{MetaClientError, MetadataClient};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::files::{FileError, Files};

/// Replies gathered into one vectored write.
const REPLIES_PER_WRITE: usize = 32;

#[derive(Debug)]
pub struct LogicNode {
    pub meta: Arc<MetadataClient>,
    pub files: Files,
    pub requests_per_connection: usize,
}

fn error(code: ErrorCode, message: impl Into<String>) -> FileReply {
    FileReply::Error {
        code,
        message: message.into(),
    }
}

fn meta_error(errno: Errno, message: String) -> FileReply {
    FileReply::Meta(MetaReply {
        result: Some(meta_reply::Result::Error(MetaError {
            errno: errno as i32,
            message,
            leader_id: 0,
            leader_addr: String::new(),
        })),
        ..Default::default()
    })
}

/// A metadata failure as the client sees it: a refusal keeps its errno; a group that
/// did not answer is Unavailable, which the client retries.
fn from_meta(e: MetaClientError) -> FileReply {
    match e {
        MetaClientError::Refused { errno, message } => meta_error(errno, message),
        other => meta_error(Errno::Unavailable, other.to_string()),
    }
}

impl LogicNode {
    /// The largest frame payload a client may send: the largest stripe this node takes
    /// and its message.
    pub fn payload_bytes_max(&self) -> u32 {
        u32::try_from(self.files.stripe_bytes_taken())
            .unwrap_or(u32::MAX)
            .saturating_add(FRAME_META_BYTES_MAX)
    }

    /// Answers `req`, counting it in the node's metrics.
    pub async fn handle(&self, req: FileRequest) -> FileReply {
        let op = match &req {
            FileRequest::Meta(_) => "meta",
            FileRequest::WriteStripe { .. } => "write_stripe",
            FileRequest::Read { .. } => "read",
            FileRequest::Capacity => "capacity",
        };
        let started = Instant::now();
        let reply = self.answer(req).await;
        let m = self.files.metrics();
        m.latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &reply {
            FileReply::Error { code, .. } => code.label().to_owned(),
            FileReply::Meta(MetaReply {
                result: Some(meta_reply::Result::Error(e)),
                ..
            }) => errno_label(e.errno),
            FileReply::Stripe(s) => {
                m.written_bytes.inc_by(s.length);
                "ok".to_owned()
            }
            FileReply::Data { data, .. } => {
                m.read_bytes.inc_by(data.len());
                "ok".to_owned()
            }
            _ => "ok".to_owned(),
        };
        m.requests.with_label_values(&[op, &outcome]).inc();
        reply
    }

    async fn answer(&self, req: FileRequest) -> FileReply {
        match req {
            // Moving shards, draining dataservers, their heartbeats and raising the entry
            // format are the admin tools' and the dataservers' (they talk to the metadata
            // group directly); a client cannot redirect a stripe's shards or keep a dead
            // dataserver from being declared lost.
            FileRequest::Meta(MetaRequest {
                op: Some(Op::ReplaceShard(_) | Op::SetDraining(_) | Op::SetEntryFormat(_) | Op::Heartbeat(_)),
                ..
            }) => meta_error(Errno::Eperm, "an admin operation, not taken from clients".into()),
            FileRequest::Meta(m) => match self.meta.send(m).await {
                Ok(mut reply) => {
                    reply.stripe_code = Some(self.files.stripe_code());
                    FileReply::Meta(reply)
                }
                Err(e) => from_meta(e),
            },
            FileRequest::WriteStripe {
                offset,
                data,
                checksums,
            } => {
                if data.is_empty() || data.len() > self.files.stripe_bytes_taken() {
                    return error(
                        ErrorCode::BadRequest,
                        format!(
                            "a stripe holds 1 to {} bytes, got {}",
                            self.files.stripe_bytes_taken(),
                            data.len()
                        ),
                    );
                }
                match self.files.write_stripe(offset, data, Some(&checksums)).await {
                    Ok(stripe) => FileReply::Stripe(stripe),
                    Err(e) => error(ErrorCode::Busy, e.to_string()),
                }
            }
            FileRequest::Read {
                inode,
                offset,
                length,
                min_version,
            } => match self.files.read_range(inode, offset, length, min_version).await {
                Ok((attr, data)) => FileReply::Data {
                    size: attr.size,
                    layout_version: attr.layout_version,
                    data,
                },
                Err(FileError::Meta(e)) => from_meta(e),
                Err(e) => error(ErrorCode::Io, e.to_string()),
            },
            FileRequest::Capacity => FileReply::Capacity(self.files.capacity().await),
        }
    }
}

/// Serves clients until `drain` fires, then drains: stops accepting, stops reading new
/// requests, answers those already taken and closes each connection (clients send the
/// rest to another logic node). Returns once every connection is closed or `drain_for`
/// has passed.
pub async fn serve(
    listener: Listener,
    node: Arc<LogicNode>,
    max_connections: usize,
    drain: CancellationToken,
    drain_for: Duration,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p,
            _ = drain.cancelled() => break,
        };
        let Ok(permit) = permit else { return };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!("accept: {e}");
                    continue;
                }
            },
            _ = drain.cancelled() => break,
        };
        let (node, drain) = (node.clone(), drain.clone());
        tokio::spawn(async move {
            debug!(%peer, "client connected");
            let connections = node.files.metrics().connections.clone();
            connections.inc();
            connection(stream, node, drain).await;
            connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_for, connections.acquire_many(all))
        .await
        .is_err()
    {
        warn!("connections still busy after {drain_for:?}: closing them");
    }
}

async fn connection(stream: Stream, node: Arc<LogicNode>, drain: CancellationToken) {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameDecoder::new(node.payload_bytes_max()));
    let (tx, mut rx) = mpsc::channel::<Frame>(node.requests_per_connection * 2);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < REPLIES_PER_WRITE {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            if write_replies_lent(&mut wr, &batch).await.is_err() {
                return;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(node.requests_per_connection));
    loop {
        let item = tokio::select! {
            item = frames.next() => item,
            _ = drain.cancelled() => break,
        };
        let Some(item) = item else { break };
        let frame = match item {
            Ok(f) => f,
            Err(e) => {
                // The stream cannot be trusted past a bad frame: say why, then close.
                let reply = error(ErrorCode::BadRequest, format!("bad frame: {e}")).to_frame(RequestId(0));
                let _ = tx.send(reply).await;
                break;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (node, tx) = (node.clone(), tx.clone());
        tokio::spawn(async move {
            let (id, version) = (frame.request_id, frame.version);
            let reply = match FileRequest::from_frame(&frame) {
                Ok(req) => node.handle(req).await,
                Err(e) => error(ErrorCode::BadRequest, e.to_string()),
            };
            let _ = tx.send(reply.to_frame(id).answering(version)).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}
