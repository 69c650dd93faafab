//! Start-up of a dataserver from its configuration: data directory, disk engine, store,
//! listener, background scrub, orphan collection and rebuild.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_common::config::Config;
use cairn_common::durable_dir::create_dir_durable;
use cairn_common::ids::{HallId, NodeId};
use cairn_common::metrics;
use cairn_common::transport::Listener;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::disk;
use crate::metadata;
use crate::metrics::Metrics;
use crate::orphans::{self, OrphanConfig};
use crate::rebuild::{self, RebuildConfig};
use crate::repair::RepairConfig;
use crate::scrub::{self, ScrubConfig};
use crate::server::{Server, ServerConfig};
use crate::store::{ShardStore, StoreLimits};

/// A dataserver that has opened its store and bound its port.
#[derive(Debug)]
pub struct Node {
    pub store: ShardStore,
    pub server: Arc<Server>,
    pub listener: Listener,
    pub addr: SocketAddr,
    /// The bound `GET /metrics` endpoint, when configured.
    pub metrics: Option<TcpListener>,
    scrub: ScrubConfig,
    orphans: Option<OrphanConfig>,
    rebuild: Option<RebuildConfig>,
    /// The metadata members and this node's id, for its heartbeats to the leader.
    heartbeats: Option<(Vec<SocketAddr>, u32)>,
}

impl Node {
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        let ds = config.dataserver()?;
        create_dir_durable(&ds.data_dir).with_context(|| format!("create data directory {}", ds.data_dir.display()))?;
        let choice = disk::choose(&ds.data_dir, ds.io, ds.uring_entries)
            .await
            .context("choose disk I/O engine")?;
        let limits = StoreLimits {
            shard_bytes_max: u64::from(config.erasure.shard_bytes_taken()),
            capacity_bytes: ds.capacity_bytes,
        };
        let store = ShardStore::open(&ds.data_dir, choice, limits, Metrics::new()).context("open shard store")?;
        let listener = Listener::bind(ds.listen)
            .await
            .with_context(|| format!("listen on {}", ds.listen))?;
        let addr = listener.local_addr()?;
        let metrics = metrics::bind(ds.metrics_listen)
            .await
            .with_context(|| format!("listen for metrics on {:?}", ds.metrics_listen))?;
        let server = Server::new(
            store.clone(),
            ServerConfig {
                node: NodeId(ds.node_id),
                hall: ds.hall_id(),
                max_connections: ds.max_connections,
                inflight_bytes_max: ds.inflight_bytes_max,
                payload_bytes_max: config.payload_bytes_max(),
            },
        );
        // Repair and the collector need the metadata group; a dataserver configured
        // without one (a test of the store alone) only counts corrupt shards and keeps
        // every shard.
        let metadata: Vec<SocketAddr> = config.metadata_nodes.iter().map(|n| n.addr).collect();
        let peers: HashMap<u32, SocketAddr> = config.dataservers.iter().map(|d| (d.node_id, d.addr)).collect();
        let scrub = ScrubConfig {
            bytes_per_sec: ds.scrub_bytes_per_sec,
            every: Duration::from_secs(ds.scrub_interval_secs),
            repair: (!metadata.is_empty()).then(|| RepairConfig {
                node: ds.node_id,
                metadata: metadata.clone(),
                peers: peers.clone(),
            }),
        };
        let orphans = (ds.orphan_pass_secs > 0 && !metadata.is_empty()).then(|| OrphanConfig {
            node: ds.node_id,
            metadata: metadata.clone(),
            grace: Duration::from_secs(ds.orphan_grace_secs),
            every: Duration::from_secs(ds.orphan_pass_secs),
        });
        let mut halls = HashMap::new();
        for d in &config.dataservers {
            halls.insert(d.node_id, HallId::new(d.hall.clone())?);
        }
        let heartbeats = (!metadata.is_empty()).then(|| (metadata.clone(), ds.node_id));
        let rebuild = (ds.rebuild_pass_secs > 0 && !metadata.is_empty()).then(|| RebuildConfig {
            node: ds.node_id,
            metadata,
            peers,
            halls,
            block_bytes: config.erasure.block_bytes,
            every: Duration::from_secs(ds.rebuild_pass_secs),
            bytes_per_sec: ds.rebuild_bytes_per_sec,
        });
        Ok(Node {
            store,
            server,
            listener,
            addr,
            metrics,
            scrub,
            orphans,
            rebuild,
            heartbeats,
        })
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let scrubber = (self.scrub.bytes_per_sec > 0)
            .then(|| scrub::spawn_background(self.store.clone(), self.scrub, shutdown.clone()));
        let collector = self
            .orphans
            .map(|c| orphans::spawn_background(self.store.clone(), c, shutdown.clone()));
        let rebuilder = self
            .rebuild
            .map(|c| rebuild::spawn_background(self.store.clone(), c, shutdown.clone()));
        let exporter = self.metrics.map(|l| {
            let m = self.store.metrics().clone();
            let stop = shutdown.clone();
            tokio::spawn(metrics::serve(move || metrics::render(&m.registry), l, async move {
                stop.cancelled().await
            }))
        });
        let heartbeats = self
            .heartbeats
            .map(|(members, node)| tokio::spawn(metadata::send_heartbeats(members, node, shutdown.clone())));
        self.server.serve(self.listener, shutdown).await;
        for task in scrubber
            .into_iter()
            .chain(collector)
            .chain(rebuilder)
            .chain(heartbeats)
            .chain(exporter)
        {
            let _ = task.await;
        }
    }
}
