//! What a dataserver asks the metadata group: which of its shards committed layouts
//! reference (the orphan collector, rebuild), a file's layout (scrub repair, rebuild) and
//! the draining and silent dataservers, and what it tells it: that it is alive
//! (heartbeats), that a rebuilt shard moved in a layout. Each request goes to the members
//! in turn until the leader answers. The metadata crate's client is not used: the
//! dataserver sits beside the metadata crate, not above it (DESIGN.md).

use std::net::SocketAddr;
use std::time::Duration;

use cairn_common::config::DATASERVER_HEARTBEAT_EVERY;
use cairn_common::ids::{ShardId, StripeId};
use cairn_common::namespace::STRIPE_ID_BYTES;
use cairn_common::proto::metadata::metadata_client::MetadataClient;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Dataservers, Errno, GetLayout, Heartbeat, Layout, ListDraining, MetaError,
    MetaRequest, ShardRefsRequest,
};
use cairn_common::versions::API_VERSION_MIN;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The reference stream of a node with many shards takes a while; this bounds a stuck one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

async fn connect(addr: SocketAddr) -> Result<MetadataClient<Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(MetadataClient::new(
        endpoint.connect().await.map_err(|e| e.to_string())?,
    ))
}

/// `ask` of each member in turn until one answers (a follower refuses); the last error.
async fn first_answer<T, F, Fut>(metadata: &[SocketAddr], ask: F) -> Result<T, String>
where
    F: Fn(MetadataClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = "no metadata nodes configured".to_owned();
    for addr in metadata {
        let attempt = async { ask(connect(*addr).await?).await };
        match tokio::time::timeout(ANSWER_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer in {ANSWER_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// Every shard of dataserver `node` that a committed layout references, with the inode
/// whose layout does.
pub async fn shard_refs(metadata: &[SocketAddr], node: u32) -> Result<Vec<(ShardId, u64)>, String> {
    shard_refs_in(metadata, node, None).await
}

/// [`shard_refs`] of the stripes in part `part.0` of `part.1` (`placement::partition_of`).
pub async fn shard_refs_in(
    metadata: &[SocketAddr],
    node: u32,
    part: Option<(u32, u32)>,
) -> Result<Vec<(ShardId, u64)>, String> {
    let (partition, partitions) = part.unwrap_or((0, 0));
    first_answer(metadata, |mut client| async move {
        let mut stream = client
            .shard_refs(ShardRefsRequest {
                dataserver: node,
                partition,
                partitions,
                count_only: false,
            })
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        let mut refs = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| e.message().to_owned())? {
            for r in chunk.refs {
                let id: [u8; STRIPE_ID_BYTES] = r
                    .stripe_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| "a reference with a malformed stripe id".to_owned())?;
                let index = u8::try_from(r.index).map_err(|_| "a reference with a shard index past 255")?;
                refs.push((ShardId::new(StripeId(u128::from_be_bytes(id)), index), r.inode));
            }
        }
        Ok(refs)
    })
    .await
}

/// How many shards of dataserver `node` committed layouts reference: [`shard_refs`]
/// without the list.
pub async fn shard_ref_count(metadata: &[SocketAddr], node: u32) -> Result<u64, String> {
    first_answer(metadata, |mut client| async move {
        let mut stream = client
            .shard_refs(ShardRefsRequest {
                dataserver: node,
                count_only: true,
                ..ShardRefsRequest::default()
            })
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        let mut count = 0;
        while let Some(chunk) = stream.message().await.map_err(|e| e.message().to_owned())? {
            count += chunk.counted + chunk.refs.len() as u64;
        }
        Ok(count)
    })
    .await
}

/// Runs `op` on the leader: its answer, or `Err(Ok(refusal))` when the leader refused
/// it, or `Err(Err(why))` when no member answered. A mutation carries one idempotency key
/// through every member it is sent to, so it applies once.
pub async fn call(metadata: &[SocketAddr], op: Op) -> Result<meta_reply::Result, Result<MetaError, String>> {
    let client_id: [u8; 16] = rand::random();
    let answer = first_answer(metadata, |mut client| {
        let request = MetaRequest {
            client_id: client_id.to_vec(),
            request_id: 1,
            api_version: API_VERSION_MIN,
            op: Some(op.clone()),
        };
        async move {
            let reply = client
                .call(request)
                .await
                .map_err(|e| e.message().to_owned())?
                .into_inner();
            match reply.result {
                Some(meta_reply::Result::Error(e)) if e.errno == Errno::NotLeader as i32 => Err(e.message),
                Some(r) => Ok(r),
                None => Err("an empty answer".to_owned()),
            }
        }
    })
    .await
    .map_err(Err)?;
    match answer {
        meta_reply::Result::Error(e) => Err(Ok(e)),
        r => Ok(r),
    }
}

/// `call`, with a refusal as its message.
async fn ask(metadata: &[SocketAddr], op: Op) -> Result<meta_reply::Result, String> {
    call(metadata, op)
        .await
        .map_err(|e| e.map_or_else(|why| why, |refusal| refusal.message))
}

/// The committed layout of file `inode`.
pub async fn layout(metadata: &[SocketAddr], inode: u64) -> Result<Layout, String> {
    match ask(
        metadata,
        Op::GetLayout(GetLayout {
            inode,
            ..Default::default()
        }),
    )
    .await?
    {
        meta_reply::Result::Layout(l) => Ok(l.layout.unwrap_or_default()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The draining dataservers, and which of them are marked lost.
pub async fn draining(metadata: &[SocketAddr]) -> Result<Dataservers, String> {
    match ask(metadata, Op::ListDraining(ListDraining {})).await? {
        meta_reply::Result::Draining(d) => Ok(d),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Tells the metadata leader every `DATASERVER_HEARTBEAT_EVERY` that dataserver `node`
/// is alive, until `stop` fires. The connection to the member that last answered is
/// kept; a refusal (a follower) or an error moves on to the next member.
pub async fn send_heartbeats(metadata: Vec<SocketAddr>, node: u32, stop: CancellationToken) {
    let mut leader: Option<MetadataClient<Channel>> = None;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(DATASERVER_HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for _ in 0..metadata.len() {
            let mut client = match leader.take() {
                Some(c) => c,
                None => {
                    let addr = metadata[next % metadata.len()];
                    next += 1;
                    match connect(addr).await {
                        Ok(c) => c,
                        Err(_) => continue,
                    }
                }
            };
            let request = MetaRequest {
                api_version: API_VERSION_MIN,
                op: Some(Op::Heartbeat(Heartbeat { dataserver: node })),
                ..MetaRequest::default()
            };
            let answer = tokio::time::timeout(DATASERVER_HEARTBEAT_EVERY, client.call(request)).await;
            if let Ok(Ok(reply)) = answer {
                if !matches!(reply.get_ref().result, Some(meta_reply::Result::Error(_))) {
                    leader = Some(client);
                    break;
                }
            }
        }
    }
}
