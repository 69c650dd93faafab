//! A metadata group of real `cairn-metadata` processes on loopback, one per hall.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_common::proto::metadata::admin_client::AdminClient;
use cairn_common::proto::metadata::{NodeStatus, StatusRequest};
use cairn_metadata::client::MetadataClient;

use crate::{free_port, Process};

#[derive(Debug)]
pub struct MetadataNode {
    pub id: u64,
    pub addr: SocketAddr,
    /// Its `GET /metrics` endpoint.
    pub metrics: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Process,
}

impl MetadataNode {
    /// Start (or restart) the process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.child = Process::start(
            "cairn-metadata",
            &[
                "serve".as_ref(),
                "--bootstrap".as_ref(),
                "--config".as_ref(),
                self.config.as_os_str(),
            ],
            &self.log,
        )?;
        Ok(())
    }

    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }

    /// SIGKILL, as a power loss looks to the process.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Its process (while it runs), for a power cut.
    pub fn process(&mut self) -> &mut Process {
        &mut self.child
    }

    /// SIGSTOP (`frozen`) or SIGCONT.
    pub fn freeze(&self, frozen: bool) {
        self.child.freeze(frozen);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> anyhow::Result<NodeStatus> {
        let mut admin = AdminClient::connect(format!("http://{}", self.addr)).await?;
        Ok(admin.status(StatusRequest {}).await?.into_inner())
    }
}

#[derive(Debug)]
pub struct MetadataCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<MetadataNode>,
}

impl MetadataCluster {
    /// `n` nodes, each in its own hall, with `extra` lines added to each `[metadata]`.
    pub async fn start(n: usize, extra: &str) -> anyhow::Result<MetadataCluster> {
        MetadataCluster::start_some(n, extra, n).await
    }

    /// Like [`MetadataCluster::start`], with only the first `running` nodes started (a
    /// quorum at least); the others can be started later.
    pub async fn start_some(n: usize, extra: &str, running: usize) -> anyhow::Result<MetadataCluster> {
        MetadataCluster::start_with(n, extra, running, None).await
    }

    /// Like [`MetadataCluster::start`], node `i`'s data directory at `data_dirs[i]` (on
    /// power-cut disks, say).
    pub async fn start_on(extra: &str, data_dirs: Vec<PathBuf>) -> anyhow::Result<MetadataCluster> {
        let n = data_dirs.len();
        MetadataCluster::start_with(n, extra, n, Some(data_dirs)).await
    }

    async fn start_with(
        n: usize,
        extra: &str,
        running: usize,
        data_dirs: Option<Vec<PathBuf>>,
    ) -> anyhow::Result<MetadataCluster> {
        let dir = tempfile::tempdir()?;
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()).parse())
            .collect::<Result<_, _>>()?;
        let mut members = String::new();
        for (i, a) in addrs.iter().enumerate() {
            members.push_str(&format!(
                "[[metadata_nodes]]\nnode_id = {}\nhall = \"hall-{i}\"\naddr = \"{a}\"\n",
                i + 1
            ));
        }
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = dir.path().join(format!("m{id}.toml"));
            let data = match &data_dirs {
                Some(d) => d[i].clone(),
                None => dir.path().join(format!("m{id}")),
            };
            let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            std::fs::write(
                &config,
                format!(
                    "[metadata]\nnode_id = {id}\ndata_dir = \"{}\"\nmetrics_listen = \"{metrics}\"\n{extra}\n\n{members}",
                    data.display()
                ),
            )?;
            nodes.push(MetadataNode {
                id,
                addr: *addr,
                metrics,
                config,
                log: dir.path().join(format!("m{id}.log")),
                child: Process::default(),
            });
        }
        for node in nodes.iter_mut().take(running) {
            node.start()?;
        }
        let cluster = MetadataCluster { dir, nodes };
        cluster.wait_serving(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn client(&self) -> MetadataClient {
        MetadataClient::new(self.addrs(), Duration::from_secs(60))
    }

    /// Waits until a linearizable read succeeds.
    pub async fn wait_serving(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let client = MetadataClient::new(self.addrs(), limit);
        match client.statfs().await {
            Ok(_) => Ok(start.elapsed()),
            Err(e) => bail!("metadata group not serving after {limit:?}: {e}\n{}", self.logs()),
        }
    }

    /// The node that reports itself leader, if one does.
    pub async fn leader(&self) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Ok(s) = n.status().await {
                if s.role == "leader" {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Every shard of `dataserver` that a committed layout references: (stripe id, index),
    /// as the leader answers the orphan collector.
    pub async fn shard_refs(&self, dataserver: u32) -> anyhow::Result<Vec<(Vec<u8>, u32)>> {
        let refs = cairn_dataserver::metadata::shard_refs(&self.socket_addrs(), dataserver)
            .await
            .map_err(|e| anyhow::anyhow!("shard references of dataserver {dataserver}: {e}"))?;
        Ok(refs
            .into_iter()
            .map(|(id, _)| (id.stripe.0.to_be_bytes().to_vec(), u32::from(id.index)))
            .collect())
    }

    /// How many shards of `dataserver` committed layouts reference, as the leader counts
    /// them for `cairnctl drain --wait`.
    pub async fn shard_ref_count(&self, dataserver: u32) -> anyhow::Result<u64> {
        cairn_dataserver::metadata::shard_ref_count(&self.socket_addrs(), dataserver)
            .await
            .map_err(|e| anyhow::anyhow!("shard references of dataserver {dataserver}: {e}"))
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = n.log_text();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- node {} ---\n{}",
                    n.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
