//! A whole file path on loopback: a three-voter metadata group, eight dataservers in four
//! halls and logic nodes, every one a real process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_client::CairnClient;
use cairn_common::config::ErasureConfig;

use crate::metadata::MetadataCluster;
use crate::{free_port, Dataserver, Process};

/// A 4+2 code with small shard units, so that a few MiB make many stripes (a short last
/// one included).
pub fn small_stripes() -> ErasureConfig {
    ErasureConfig {
        data_shards: 4,
        parity_shards: 2,
        shard_unit_bytes: 64 * 1024,
        block_bytes: 4096,
    }
}

/// `len` bytes of a pattern that differs for each `seed` and does not repeat per block.
pub fn pattern(len: usize, seed: u8) -> bytes::Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Debug)]
pub struct LogicProcess {
    pub addr: SocketAddr,
    /// Its `GET /metrics` endpoint.
    pub metrics: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Process,
}

impl LogicProcess {
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.child = Process::start(
            "cairn-logic",
            &["serve".as_ref(), "--config".as_ref(), self.config.as_os_str()],
            &self.log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if let Some(status) = self.child.exited() {
                bail!(
                    "logic node exited with {status}:\n{}",
                    std::fs::read_to_string(&self.log)?
                );
            }
            if Instant::now() > deadline {
                bail!("logic node not listening after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct FileCluster {
    pub dir: tempfile::TempDir,
    pub meta: MetadataCluster,
    pub dataservers: Vec<Dataserver>,
    pub logic: Vec<LogicProcess>,
    pub erasure: ErasureConfig,
}

impl FileCluster {
    pub async fn start(logic_nodes: usize, erasure: ErasureConfig) -> anyhow::Result<FileCluster> {
        FileCluster::start_with(logic_nodes, erasure, "", "").await
    }

    /// Like [`FileCluster::start`], with `dataserver_extra` lines in each dataserver's
    /// `[dataserver]` section (then each dataserver also knows the others, for repair)
    /// and `metadata_extra` lines in each voter's `[metadata]`.
    pub async fn start_with(
        logic_nodes: usize,
        erasure: ErasureConfig,
        dataserver_extra: &str,
        metadata_extra: &str,
    ) -> anyhow::Result<FileCluster> {
        let meta = MetadataCluster::start(3, metadata_extra).await?;
        FileCluster::start_on(meta, logic_nodes, erasure, dataserver_extra).await
    }

    /// Like [`FileCluster::start_with`], on the metadata group `meta`.
    pub async fn start_on(
        meta: MetadataCluster,
        logic_nodes: usize,
        erasure: ErasureConfig,
        dataserver_extra: &str,
    ) -> anyhow::Result<FileCluster> {
        let dir = tempfile::tempdir()?;
        let mut dataservers = Vec::new();
        let mut members = String::new();
        for n in &meta.nodes {
            members.push_str(&format!(
                "[[metadata_nodes]]\nnode_id = {}\nhall = \"hall-{}\"\naddr = \"{}\"\n",
                n.id,
                n.id - 1,
                n.addr
            ));
        }
        let metadata_members = members.clone();
        for i in 0..8u32 {
            let hall = format!("hall-{}", i / 2);
            // The metadata group's members last: a table ends the [dataserver] section.
            let scrub = match dataserver_extra.contains("scrub_bytes_per_sec") {
                true => "",
                false => "scrub_bytes_per_sec = 0\n",
            };
            let extra = format!("{scrub}{dataserver_extra}\n{metadata_members}");
            let ds = Dataserver::start_in(i + 1, &hall, &extra).await?;
            members.push_str(&format!(
                "[[dataservers]]\nnode_id = {}\nhall = \"{hall}\"\naddr = \"{}\"\n",
                i + 1,
                ds.addr
            ));
            dataservers.push(ds);
        }
        if !dataserver_extra.is_empty() {
            let peers = members.strip_prefix(&metadata_members).unwrap_or_default().to_owned();
            for ds in &mut dataservers {
                let mut text = std::fs::read_to_string(&ds.config)?;
                text.push_str(&peers);
                std::fs::write(&ds.config, text)?;
                ds.kill9();
                ds.restart().await?;
            }
        }
        let mut logic = Vec::new();
        for i in 0..logic_nodes {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let config = dir.path().join(format!("logic{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[erasure]\ndata_shards = {}\nparity_shards = {}\nshard_unit_bytes = {}\nblock_bytes = {}\n\n\
                     [logic]\nlisten = \"{addr}\"\nmetrics_listen = \"{metrics}\"\n\n{members}",
                    erasure.data_shards, erasure.parity_shards, erasure.shard_unit_bytes, erasure.block_bytes
                ),
            )?;
            let mut p = LogicProcess {
                addr,
                metrics,
                config,
                log: dir.path().join(format!("logic{i}.log")),
                child: Process::default(),
            };
            p.start().await?;
            logic.push(p);
        }
        Ok(FileCluster {
            dir,
            meta,
            dataservers,
            logic,
            erasure,
        })
    }

    /// A config for clients: the logic nodes and the erasure code.
    pub fn client_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("client.toml");
        let e = &self.erasure;
        let mut text = format!(
            "[erasure]\ndata_shards = {}\nparity_shards = {}\nshard_unit_bytes = {}\nblock_bytes = {}\n",
            e.data_shards, e.parity_shards, e.shard_unit_bytes, e.block_bytes
        );
        for l in &self.logic {
            text.push_str(&format!("[[logic_nodes]]\naddr = \"{}\"\n", l.addr));
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }

    pub fn client(&self) -> Arc<CairnClient> {
        CairnClient::new(
            self.logic.iter().map(|l| l.addr).collect(),
            self.erasure.clone(),
            Duration::from_secs(60),
        )
    }
}
