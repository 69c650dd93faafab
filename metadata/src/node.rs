//! Starting a metadata node: open RocksDB, start openraft on it, serve gRPC, and (on the
//! leader) keep the group's housekeeping going.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_common::config::{Config, MetadataEntry, DATASERVER_SILENT_AFTER};
use cairn_common::durable_dir::create_dir_durable;
use cairn_common::proto::metadata::{
    admin_server::AdminServer, meta_request::Op, metadata_server::MetadataServer, raft_server::RaftServer, SetDraining,
};
use cairn_common::versions::ENTRY_FORMAT_MIN;
use openraft::{Raft, ServerState, SnapshotPolicy};
use tracing::{info, warn};

use crate::apply::earliest_expiry;
use crate::db::Db;
use crate::handover::LeadingSince;
use crate::liveness::Liveness;
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::network::{Network, RAFT_MESSAGE_BYTES_MAX};
use crate::proposer::{now_ns, Proposer};
use crate::records::{ids, DRAINING_KEY, LOST_KEY};
use crate::service::{AdminService, MetadataService, RaftService};
use crate::state_machine::StateMachine;
use crate::types::{NodeInfo, TypeConfig};

/// Client requests carry at most one layout; a layout of a very large file is the biggest.
const CLIENT_MESSAGE_BYTES_MAX: usize = 16 << 20;
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);
/// A new group asks its members for the newest entry format they all apply this often,
/// until they all answer (they start at about the same time).
const FORMAT_RAISE_TRIES: u32 = 120;
const FORMAT_RAISE_PAUSE: Duration = Duration::from_millis(500);
/// Log entries kept behind a snapshot (at most half the snapshot interval), so a briefly
/// lagging follower catches up from the log instead of receiving a whole snapshot.
const LOGS_KEPT_AFTER_SNAPSHOT_MAX: u64 = 5_000;

pub fn node_info(e: &MetadataEntry) -> NodeInfo {
    NodeInfo {
        addr: e.addr.to_string(),
        hall: e.hall.clone(),
    }
}

/// The first voters: `per_hall` nodes of each hall (lowest ids first), so that losing a
/// hall loses at most that hall's share of the quorum.
pub fn initial_voters(nodes: &[MetadataEntry], per_hall: u32) -> BTreeMap<u64, NodeInfo> {
    let mut sorted: Vec<&MetadataEntry> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.node_id);
    let mut taken: BTreeMap<&str, u32> = BTreeMap::new();
    let mut voters = BTreeMap::new();
    for n in sorted {
        let count = taken.entry(n.hall.as_str()).or_default();
        if *count < per_hall {
            *count += 1;
            voters.insert(n.node_id, node_info(n));
        }
    }
    voters
}

/// Run a metadata node until SIGINT/SIGTERM. With `bootstrap`, the node with the lowest id
/// forms the group if it holds no Raft state yet.
pub async fn run(config: Config, bootstrap: bool) -> anyhow::Result<()> {
    let md = config.metadata()?.clone();
    let me = md
        .entry(&config.metadata_nodes)
        .context("metadata.node_id is not in metadata_nodes")?
        .clone();
    // RocksDB syncs what it creates inside its own directory, not that directory's
    // entry: it and the snapshots' directory are made durable here.
    for dir in [md.data_dir.join("db"), md.data_dir.join("snapshots")] {
        create_dir_durable(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let db = Db::open(&md.data_dir.join("db"), md.cache_bytes).context("opening RocksDB")?;
    let sm = StateMachine::open(db.clone(), md.data_dir.join("snapshots"), md.dedupe_entries_max)?;
    let raft_config = openraft::Config {
        cluster_name: "cairn-metadata".into(),
        heartbeat_interval: md.heartbeat_ms,
        election_timeout_min: md.election_timeout_ms,
        election_timeout_max: md.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(md.snapshot_every_entries),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT_MAX.min(md.snapshot_every_entries / 2),
        snapshot_max_chunk_size: 4 << 20,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .context("raft settings")?;
    // Half of how long voters refuse votes after a heartbeat (see read_lease).
    let read_lease = Duration::from_millis(raft_config.election_timeout_max / 2);
    let network = Network::default();
    let raft = Raft::new(
        me.node_id,
        Arc::new(raft_config),
        network.clone(),
        LogStore::new(db.clone()).context("starting the log's sync thread")?,
        sm,
    )
    .await?;
    let proposer = Proposer::start(raft.clone(), db.clone(), read_lease);
    let leading_since = Arc::new(LeadingSince::default());
    tokio::spawn(leading_since.clone().track(raft.metrics()));
    let admin = AdminService {
        raft: raft.clone(),
        db: db.clone(),
        proposer: proposer.clone(),
        network,
        leading_since,
    };
    let liveness = Arc::new(Liveness::default());
    let metrics = Metrics::new();
    let dataservers: Arc<Vec<u32>> = Arc::new(config.dataservers.iter().map(|d| d.node_id).collect());

    let listener = tokio::net::TcpListener::bind(me.addr)
        .await
        .with_context(|| format!("listening on {}", me.addr))?;
    let exporter = cairn_common::metrics::bind(md.metrics_listen)
        .await
        .with_context(|| format!("listening for metrics on {:?}", md.metrics_listen))?;
    info!(node = me.node_id, addr = %me.addr, metrics = ?md.metrics_listen, "metadata node serving");
    if let Some(l) = exporter {
        let (metrics, raft) = (metrics.clone(), raft.clone());
        let render = move || {
            metrics.observe_raft(&raft.metrics().borrow());
            cairn_common::metrics::render(&metrics.registry)
        };
        // Served until the process exits.
        tokio::spawn(cairn_common::metrics::serve(render, l, std::future::pending()));
    }
    let server = tonic::transport::Server::builder()
        .add_service(
            RaftServer::new(RaftService { raft: raft.clone() })
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
        )
        .add_service(
            MetadataServer::new(MetadataService {
                db: db.clone(),
                proposer: proposer.clone(),
                raft: raft.clone(),
                liveness: liveness.clone(),
                dataservers: dataservers.clone(),
                metrics: metrics.clone(),
            })
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(AdminServer::new(admin.clone()))
        .serve_with_incoming_shutdown(no_delay(listener), shutdown_signal());

    if bootstrap {
        let lowest = config.metadata_nodes.iter().map(|n| n.node_id).min();
        if lowest == Some(me.node_id) && !raft.is_initialized().await? {
            let voters = initial_voters(&config.metadata_nodes, md.voters_per_hall);
            info!(voters = ?voters.keys().collect::<Vec<_>>(), "forming the metadata group");
            raft.initialize(voters).await.context("forming the group")?;
            tokio::spawn(start_at_the_newest_format(admin));
        }
    }
    let lost = Lost {
        liveness,
        dataservers,
        after: (md.dataserver_lost_after_secs > 0).then(|| Duration::from_secs(md.dataserver_lost_after_secs)),
    };
    let housekeeping = tokio::spawn(housekeeping(
        raft.clone(),
        db,
        proposer,
        config.metadata_nodes.clone(),
        lost,
    ));
    let served = server.await;
    housekeeping.abort();
    let _ = raft.shutdown().await;
    served.context("gRPC server")
}

/// Accepted connections with Nagle off: replies are small and written in several frames;
/// with Nagle on, each waits for the peer's delayed ACK (40 ms on Linux).
fn no_delay(listener: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}

/// What the leader needs to mark dataservers lost.
struct Lost {
    liveness: Arc<Liveness>,
    /// The configured dataservers: silent until heard from.
    dataservers: Arc<Vec<u32>>,
    after: Option<Duration>,
}

impl Lost {
    /// Marks lost the dataservers silent past `after`, and clears the mark of those heard
    /// from again (an operator's drain stays: `SetDraining` with `lost` keeps it).
    async fn mark(&self, term: u64, db: &Db, proposer: &Proposer) -> Result<(), String> {
        let Some(after) = self.after else {
            return Ok(());
        };
        let now = Instant::now();
        let (draining, lost) = (ids(db, DRAINING_KEY)?, ids(db, LOST_KEY)?);
        let gone = self.liveness.silent_for(term, &self.dataservers, after, now);
        let back = self.liveness.heard_within(term, DATASERVER_SILENT_AFTER, now);
        for id in gone.into_iter().filter(|id| !draining.contains(id)) {
            warn!(
                dataserver = id,
                "no heartbeat past the lost timeout: marked lost, its shards are rebuilt"
            );
            set_lost(proposer, id, true).await?;
        }
        for id in back.into_iter().filter(|id| lost.contains(id)) {
            info!(dataserver = id, "a lost dataserver is heard again: back in service");
            set_lost(proposer, id, false).await?;
        }
        Ok(())
    }
}

async fn set_lost(proposer: &Proposer, dataserver: u32, lost: bool) -> Result<(), String> {
    let op = Op::SetDraining(SetDraining {
        dataserver,
        draining: lost,
        lost: true,
    });
    proposer.propose_op(op).await.map(|_| ()).map_err(|e| e.message)
}

/// A group formed now has written nothing yet, so it starts at the newest entry format
/// every member applies (`raise_entry_format` asks them all, and refuses while one does
/// not answer). A group formed by an older build keeps its format until `cairnctl
/// finalize-upgrade`.
async fn start_at_the_newest_format(admin: AdminService) {
    let mut last = None;
    for _ in 0..FORMAT_RAISE_TRIES {
        match admin.raise_entry_format().await {
            Ok(()) => return,
            Err(e) => last = Some(e.message),
        }
        tokio::time::sleep(FORMAT_RAISE_PAUSE).await;
    }
    warn!(
        "the new group keeps entry format {ENTRY_FORMAT_MIN} ({}); cairnctl finalize-upgrade raises it",
        last.unwrap_or_default()
    );
}

/// On the leader: bring configured nodes in as learners, end expired write sessions, and
/// mark dataservers lost or back.
async fn housekeeping(raft: Raft<TypeConfig>, db: Db, proposer: Proposer, nodes: Vec<MetadataEntry>, lost: Lost) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tick.tick().await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            continue;
        }
        let known: BTreeSet<u64> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        for n in nodes.iter().filter(|n| !known.contains(&n.node_id)) {
            if let Err(e) = raft.add_learner(n.node_id, node_info(n), false).await {
                warn!(node = n.node_id, "adding learner: {e}");
            }
        }
        let due = match earliest_expiry(&db) {
            Ok(Some(expiry)) => expiry <= now_ns(),
            Ok(None) => false,
            Err(e) => {
                warn!("reading session expiries: {e}");
                false
            }
        };
        if due {
            if let Err(e) = proposer.expire_sessions(&raft, &db).await {
                warn!("expiring sessions: {}", e.message);
            }
        }
        if let Err(e) = lost.mark(metrics.current_term, &db, &proposer).await {
            warn!("marking lost dataservers: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, hall: &str) -> MetadataEntry {
        MetadataEntry {
            node_id: id,
            hall: hall.into(),
            addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
        }
    }

    #[test]
    fn first_voters_are_spread_over_halls() {
        let nodes = [
            entry(5, "b"),
            entry(1, "a"),
            entry(2, "a"),
            entry(3, "b"),
            entry(4, "c"),
        ];
        let one: Vec<u64> = initial_voters(&nodes, 1).into_keys().collect();
        assert_eq!(one, vec![1, 3, 4]);
        let two: Vec<u64> = initial_voters(&nodes, 2).into_keys().collect();
        assert_eq!(two, vec![1, 2, 3, 4, 5]);
    }
}
