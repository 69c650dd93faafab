//! Configuration in TOML, validated on load. Unknown keys, values out of range and
//! topologies that cannot hold a stripe are rejected with a message naming the key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::erasure::ErasureCode;
use crate::ids::{HallId, NodeId};
use crate::placement::{placeable_shards, Candidate};
use crate::proto::metadata::StripeCode;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid TOML for Cairn: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// One configuration file. Each process reads the sections it needs; every section
/// present is validated.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub erasure: ErasureConfig,
    /// Settings of the dataserver process reading this file.
    pub dataserver: Option<DataserverConfig>,
    /// The cluster's dataservers, for tools and logic nodes that address them.
    #[serde(default)]
    pub dataservers: Vec<DataserverEntry>,
    /// Settings of the metadata node process reading this file.
    pub metadata: Option<MetadataConfig>,
    /// The metadata group's members, for every process that talks to it.
    #[serde(default)]
    pub metadata_nodes: Vec<MetadataEntry>,
    /// Settings of the logic node process reading this file.
    pub logic: Option<LogicConfig>,
    /// The cluster's logic nodes, for clients and tools.
    #[serde(default)]
    pub logic_nodes: Vec<LogicEntry>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogicEntry {
    pub addr: SocketAddr,
    /// The hall the logic node runs in (for status and for taking a hall down).
    #[serde(default)]
    pub hall: Option<String>,
}

/// A stateless logic node: serves the file protocol to clients.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogicConfig {
    pub listen: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP); none when left out.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Requests handled at once on one connection (more wait: backpressure).
    #[serde(default = "defaults::requests_per_connection")]
    pub requests_per_connection: u32,
}

/// How stripes are coded and checksummed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ErasureConfig {
    /// k: data shards per stripe.
    pub data_shards: u8,
    /// m: parity shards per stripe; also the most shards of a stripe in one hall.
    pub parity_shards: u8,
    /// Bytes of one full shard.
    pub shard_unit_bytes: u32,
    /// Bytes covered by one crc32c.
    pub block_bytes: u32,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            data_shards: 4,
            parity_shards: 2,
            shard_unit_bytes: 2 * MIB as u32,
            block_bytes: (64 * KIB) as u32,
        }
    }
}

/// How the dataserver does disk I/O; `auto` probes io_uring and O_DIRECT at start-up.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    #[default]
    Auto,
    Uring,
    Posix,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataserverConfig {
    pub node_id: u32,
    pub hall: String,
    pub listen: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP); none when left out.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub io: IoMode,
    /// Capacity reported to placement; defaults to the data directory's file system size.
    pub capacity_bytes: Option<u64>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Request bytes (frames being handled) held in memory at once, across connections.
    #[serde(default = "defaults::inflight_bytes_max")]
    pub inflight_bytes_max: u64,
    /// io_uring submission queue depth.
    #[serde(default = "defaults::uring_entries")]
    pub uring_entries: u32,
    /// Background scrub read rate; 0 turns background scrub off.
    #[serde(default = "defaults::scrub_bytes_per_sec")]
    pub scrub_bytes_per_sec: u64,
    /// Background scrub passes start at most this often.
    #[serde(default = "defaults::scrub_interval_secs")]
    pub scrub_interval_secs: u64,
    /// Shards no committed layout references are deleted once older than this: it must
    /// outlast the longest a writer keeps stored stripes before committing them.
    #[serde(default = "defaults::orphan_grace_secs")]
    pub orphan_grace_secs: u64,
    /// How often the orphan collector runs; 0 turns it off.
    #[serde(default = "defaults::orphan_pass_secs")]
    pub orphan_pass_secs: u64,
    /// How often the rebuild worker looks at the draining and silent dataservers; 0 turns
    /// it off.
    #[serde(default = "defaults::rebuild_pass_secs")]
    pub rebuild_pass_secs: u64,
    /// The most bytes per second this dataserver rebuilds, so that foreground I/O keeps
    /// most of the disks and the network; 0 is no limit.
    #[serde(default = "defaults::rebuild_bytes_per_sec")]
    pub rebuild_bytes_per_sec: u64,
}

/// A metadata node: one member of the Raft group.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// This node's id; must be listed in `metadata_nodes`, whose address it listens on.
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP); none when left out.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Followers start an election after a random time in [timeout, 2 × timeout]. It
    /// bounds how long a lost leader (a hall gone dark) stops the namespace: the default
    /// keeps that under about 1.5 s while riding out a few missed heartbeats. It is also
    /// the leader's read lease: how long after the quorum confirmed it the leader serves
    /// reads without asking again.
    #[serde(default = "defaults::election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// A snapshot (RocksDB checkpoint) is taken after this many applied entries; the log
    /// is purged behind it.
    #[serde(default = "defaults::snapshot_every_entries")]
    pub snapshot_every_entries: u64,
    /// Answers kept for retried mutations (oldest dropped first).
    #[serde(default = "defaults::dedupe_entries_max")]
    pub dedupe_entries_max: u64,
    /// How many voters each hall gets when the group is formed; other nodes are learners.
    #[serde(default = "defaults::voters_per_hall")]
    pub voters_per_hall: u32,
    /// RocksDB block cache; with the memtables this bounds the node's memory.
    #[serde(default = "defaults::cache_bytes")]
    pub cache_bytes: u64,
    /// The leader marks a dataserver lost (drained, its shards rebuilt elsewhere) once it
    /// has heard no heartbeat from it for this long, until it is heard again; 0 never
    /// marks one.
    #[serde(default = "defaults::dataserver_lost_after_secs")]
    pub dataserver_lost_after_secs: u64,
    /// Threads that run requests, Raft and applying. A request is a chain of short steps
    /// bound by latency, not CPU (log syncs and RocksDB compaction have threads of their
    /// own), and every step handed to another thread costs a wake-up: one thread serves a
    /// single client's creates faster and 16 clients' as fast as two (bench/RESULTS.md).
    /// Raise it when the leader's CPU use nears one core.
    #[serde(default = "defaults::worker_threads")]
    pub worker_threads: u32,
}

/// Every dataserver sends the metadata leader a heartbeat this often.
pub const DATASERVER_HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A dataserver whose heartbeats the leader has missed for this long (three of them) is
/// silent: no rebuild places a shard on it.
pub const DATASERVER_SILENT_AFTER: Duration = Duration::from_secs(6);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetadataEntry {
    pub node_id: u64,
    pub hall: String,
    pub addr: SocketAddr,
}

/// Background scrub read rate of a dataserver (one disk) unless configured: a 10 TB disk
/// is scrubbed about every four days, at a few percent of its bandwidth.
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 32 * MIB;

mod defaults {
    pub fn requests_per_connection() -> u32 {
        16
    }
    pub fn heartbeat_ms() -> u64 {
        100
    }
    pub fn election_timeout_ms() -> u64 {
        600
    }
    pub fn snapshot_every_entries() -> u64 {
        20_000
    }
    pub fn dedupe_entries_max() -> u64 {
        100_000
    }
    pub fn voters_per_hall() -> u32 {
        1
    }
    pub fn cache_bytes() -> u64 {
        64 * super::MIB
    }
    pub fn max_connections() -> u32 {
        256
    }
    pub fn inflight_bytes_max() -> u64 {
        256 * super::MIB
    }
    pub fn uring_entries() -> u32 {
        256
    }
    pub fn scrub_interval_secs() -> u64 {
        30
    }
    pub fn orphan_grace_secs() -> u64 {
        6 * 3600
    }
    pub fn orphan_pass_secs() -> u64 {
        600
    }
    pub fn rebuild_pass_secs() -> u64 {
        5
    }
    /// Ten minutes, as Ceph marks a down OSD out: a hall back from a short power cut is
    /// not worth rebuilding everything it holds.
    pub fn dataserver_lost_after_secs() -> u64 {
        600
    }
    pub fn worker_threads() -> u32 {
        1
    }
    pub fn rebuild_bytes_per_sec() -> u64 {
        64 << 20
    }
    pub fn scrub_bytes_per_sec() -> u64 {
        super::SCRUB_BYTES_PER_SEC_DEFAULT
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataserverEntry {
    pub node_id: u32,
    pub hall: String,
    pub addr: SocketAddr,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.erasure.validate()?;
        if let Some(ds) = &self.dataserver {
            ds.validate(&self.erasure)?;
        }
        self.validate_metadata_nodes()?;
        if let Some(md) = &self.metadata {
            md.validate(&self.metadata_nodes)?;
        }
        if let Some(l) = &self.logic {
            metrics_apart("logic.metrics_listen", l.metrics_listen, l.listen)?;
            in_range("logic.max_connections", l.max_connections, 1, 65_536)?;
            in_range("logic.requests_per_connection", l.requests_per_connection, 1, 1024)?;
            if self.metadata_nodes.is_empty() {
                return Err(invalid(
                    "metadata_nodes",
                    "a logic node needs the metadata group's members",
                ));
            }
            if self.dataservers.is_empty() {
                return Err(invalid("dataservers", "a logic node needs the dataservers"));
            }
        }
        self.validate_topology()
    }

    /// The logic section, or an error naming it.
    pub fn logic(&self) -> Result<&LogicConfig, ConfigError> {
        self.logic
            .as_ref()
            .ok_or_else(|| invalid("logic", "section is required to run a logic node"))
    }

    /// The metadata section, or an error naming it.
    pub fn metadata(&self) -> Result<&MetadataConfig, ConfigError> {
        self.metadata
            .as_ref()
            .ok_or_else(|| invalid("metadata", "section is required to run a metadata node"))
    }

    fn validate_metadata_nodes(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, n) in self.metadata_nodes.iter().enumerate() {
            let key = |field: &str| format!("metadata_nodes[{i}].{field}");
            if n.node_id == 0 {
                return Err(invalid(key("node_id"), "must not be 0"));
            }
            if !ids.insert(n.node_id) {
                return Err(invalid(key("node_id"), format!("node {} is listed twice", n.node_id)));
            }
            if !addrs.insert(n.addr) {
                return Err(invalid(
                    key("addr"),
                    format!("{} is used by two metadata nodes", n.addr),
                ));
            }
            HallId::new(n.hall.clone()).map_err(|e| invalid(key("hall"), e.to_string()))?;
        }
        Ok(())
    }

    /// The dataserver section, or an error naming it.
    pub fn dataserver(&self) -> Result<&DataserverConfig, ConfigError> {
        self.dataserver
            .as_ref()
            .ok_or_else(|| invalid("dataserver", "section is required to run a dataserver"))
    }

    /// The largest frame payload a node must accept: the largest shard it takes
    /// ([`ErasureConfig::shard_bytes_taken`]) plus its message.
    pub fn payload_bytes_max(&self) -> u32 {
        self.erasure.shard_bytes_taken().saturating_add(FRAME_META_BYTES_MAX)
    }

    fn validate_topology(&self) -> Result<(), ConfigError> {
        if self.dataservers.is_empty() {
            return Ok(());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut candidates = Vec::new();
        for (i, d) in self.dataservers.iter().enumerate() {
            let key = |field: &str| format!("dataservers[{i}].{field}");
            if !ids.insert(d.node_id) {
                return Err(invalid(key("node_id"), format!("node {} is listed twice", d.node_id)));
            }
            if !addrs.insert(d.addr) {
                return Err(invalid(key("addr"), format!("{} is used by two dataservers", d.addr)));
            }
            let hall = HallId::new(d.hall.clone()).map_err(|e| invalid(key("hall"), e.to_string()))?;
            candidates.push(Candidate {
                node: NodeId(d.node_id),
                hall,
                free_bytes: 1,
            });
        }
        let (k, m) = (
            usize::from(self.erasure.data_shards),
            usize::from(self.erasure.parity_shards),
        );
        let placeable = placeable_shards(&candidates, m);
        if placeable < k + m {
            let halls: HashMap<_, _> = candidates.iter().map(|c| (&c.hall, ())).collect();
            return Err(invalid(
                "dataservers",
                format!(
                    "{} dataservers in {} halls can hold only {placeable} shards of a {k}+{m} stripe \
                     with at most {m} per hall; add halls or dataservers",
                    candidates.len(),
                    halls.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Room for a frame's message part beside the shard bytes (ids, checksums of every block).
pub const FRAME_META_BYTES_MAX: u32 = 64 * 1024;
const SHARD_UNIT_BYTES_MAX: u32 = 64 * MIB as u32;
/// Direct I/O works in units of the logical block size; 4 KiB covers every device.
pub const IO_ALIGN_BYTES: u32 = 4096;
/// The largest checksum block accepted, in config and in a put.
pub const BLOCK_BYTES_MAX: u32 = 4 * MIB as u32;

/// The metrics endpoint speaks plain HTTP, so it cannot share the node's own address.
fn metrics_apart(key: &str, metrics: Option<SocketAddr>, listen: SocketAddr) -> Result<(), ConfigError> {
    if metrics == Some(listen) {
        return Err(invalid(
            key,
            format!("must differ from the node's own address {listen}"),
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, format!("must be between {lo} and {hi}, got {v}")));
    }
    Ok(())
}

impl ErasureConfig {
    /// Refuses a code that cannot be used: shard counts out of range, block and shard
    /// sizes that do not divide or do not fit a frame.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("erasure.data_shards", self.data_shards, 1, 32)?;
        in_range("erasure.parity_shards", self.parity_shards, 1, 16)?;
        ErasureCode::new(self.data_shards.into(), self.parity_shards.into())
            .map_err(|e| invalid("erasure", e.to_string()))?;
        in_range("erasure.block_bytes", self.block_bytes, IO_ALIGN_BYTES, BLOCK_BYTES_MAX)?;
        if !self.block_bytes.is_multiple_of(IO_ALIGN_BYTES) {
            return Err(invalid(
                "erasure.block_bytes",
                format!("must be a multiple of {IO_ALIGN_BYTES}"),
            ));
        }
        in_range(
            "erasure.shard_unit_bytes",
            self.shard_unit_bytes,
            self.block_bytes,
            SHARD_UNIT_BYTES_MAX,
        )?;
        if !self.shard_unit_bytes.is_multiple_of(self.block_bytes) {
            return Err(invalid(
                "erasure.shard_unit_bytes",
                format!("must be a multiple of erasure.block_bytes ({})", self.block_bytes),
            ));
        }
        // Every block's checksum must fit in one frame's message part.
        let blocks = self.shard_unit_bytes / self.block_bytes;
        if blocks * 4 > FRAME_META_BYTES_MAX / 2 {
            return Err(invalid(
                "erasure.block_bytes",
                format!("too small: {blocks} blocks per shard"),
            ));
        }
        Ok(())
    }

    pub fn code(&self) -> ErasureCode {
        // validate() has checked the pair is supported.
        ErasureCode::new(self.data_shards.into(), self.parity_shards.into())
            .unwrap_or_else(|_| unreachable!("erasure config validated on load"))
    }

    /// The most file bytes one stripe of this code holds: k shard units.
    pub fn stripe_bytes(&self) -> usize {
        self.shard_unit_bytes as usize * usize::from(self.data_shards)
    }

    /// The largest shard a dataserver stores, and (times k) the largest stripe a logic
    /// node takes: twice the shard unit where that is still a valid unit, else the unit.
    /// A rolling upgrade restarts logic nodes before dataservers, and clients follow the
    /// code the logic nodes announce, so a build that raises the unit must find every
    /// node still on the build before it taking shards and stripes of the new size.
    pub fn shard_bytes_taken(&self) -> u32 {
        let doubled = ErasureConfig {
            shard_unit_bytes: self.shard_unit_bytes.saturating_mul(2),
            ..self.clone()
        };
        match doubled.validate() {
            Ok(()) => doubled.shard_unit_bytes,
            Err(_) => self.shard_unit_bytes,
        }
    }

    /// This code as a logic node announces it to its clients.
    pub fn stripe_code(&self) -> StripeCode {
        StripeCode {
            data_shards: self.data_shards.into(),
            parity_shards: self.parity_shards.into(),
            shard_unit_bytes: self.shard_unit_bytes,
            block_bytes: self.block_bytes,
        }
    }

    /// The code a logic node announced, if it is one this build can use.
    pub fn from_stripe_code(c: &StripeCode) -> Result<ErasureConfig, ConfigError> {
        let shards = |name: &'static str, n: u32| u8::try_from(n).map_err(|_| invalid(name, format!("{n} shards")));
        let erasure = ErasureConfig {
            data_shards: shards("erasure.data_shards", c.data_shards)?,
            parity_shards: shards("erasure.parity_shards", c.parity_shards)?,
            shard_unit_bytes: c.shard_unit_bytes,
            block_bytes: c.block_bytes,
        };
        erasure.validate()?;
        Ok(erasure)
    }
}

impl DataserverConfig {
    fn validate(&self, erasure: &ErasureConfig) -> Result<(), ConfigError> {
        HallId::new(self.hall.clone()).map_err(|e| invalid("dataserver.hall", e.to_string()))?;
        metrics_apart("dataserver.metrics_listen", self.metrics_listen, self.listen)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("dataserver.data_dir", "must not be empty"));
        }
        in_range("dataserver.max_connections", self.max_connections, 1, 65_536)?;
        let frame = u64::from(erasure.shard_unit_bytes) + u64::from(FRAME_META_BYTES_MAX);
        in_range(
            "dataserver.inflight_bytes_max",
            self.inflight_bytes_max,
            frame,
            64 * 1024 * MIB,
        )?;
        in_range("dataserver.uring_entries", self.uring_entries, 8, 4096)?;
        if let Some(c) = self.capacity_bytes {
            in_range("dataserver.capacity_bytes", c, 64 * MIB, u64::MAX)?;
        }
        in_range(
            "dataserver.scrub_bytes_per_sec",
            self.scrub_bytes_per_sec,
            0,
            64 * 1024 * MIB,
        )?;
        Ok(())
    }

    pub fn hall_id(&self) -> HallId {
        HallId::new(self.hall.clone()).unwrap_or_else(|_| unreachable!("hall validated on load"))
    }
}

impl MetadataConfig {
    fn validate(&self, nodes: &[MetadataEntry]) -> Result<(), ConfigError> {
        let Some(me) = self.entry(nodes) else {
            return Err(invalid(
                "metadata.node_id",
                format!("node {} is not listed in metadata_nodes", self.node_id),
            ));
        };
        metrics_apart("metadata.metrics_listen", self.metrics_listen, me.addr)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("metadata.data_dir", "must not be empty"));
        }
        in_range("metadata.heartbeat_ms", self.heartbeat_ms, 10, 10_000)?;
        in_range(
            "metadata.election_timeout_ms",
            self.election_timeout_ms,
            self.heartbeat_ms.saturating_mul(3),
            60_000,
        )?;
        in_range(
            "metadata.snapshot_every_entries",
            self.snapshot_every_entries,
            100,
            100_000_000,
        )?;
        in_range(
            "metadata.dedupe_entries_max",
            self.dedupe_entries_max,
            1_000,
            100_000_000,
        )?;
        in_range("metadata.voters_per_hall", self.voters_per_hall, 1, 7)?;
        in_range("metadata.cache_bytes", self.cache_bytes, MIB, 64 * 1024 * MIB)?;
        in_range("metadata.worker_threads", self.worker_threads, 1, 256)?;
        Ok(())
    }

    /// This node's entry in `nodes` (checked on load).
    pub fn entry<'a>(&self, nodes: &'a [MetadataEntry]) -> Option<&'a MetadataEntry> {
        nodes.iter().find(|n| n.node_id == self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DS: &str = r#"
        [dataserver]
        node_id = 1
        hall = "h1"
        listen = "127.0.0.1:7001"
        data_dir = "/tmp/ds1"
    "#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_4_plus_2_with_2_mib_units() {
        let c = Config::parse(DS).unwrap();
        assert_eq!(c.erasure, ErasureConfig::default());
        assert_eq!(
            (
                c.erasure.data_shards,
                c.erasure.parity_shards,
                c.erasure.shard_unit_bytes
            ),
            (4, 2, 2 << 20)
        );
        let ds = c.dataserver().unwrap();
        assert_eq!(ds.io, IoMode::Auto);
        assert_eq!(ds.max_connections, 256);
    }

    #[test]
    fn nodes_take_shards_of_twice_their_unit_where_that_is_a_valid_unit() {
        let ours = ErasureConfig::default();
        assert_eq!(ours.shard_bytes_taken(), 2 * ours.shard_unit_bytes);
        let largest = ErasureConfig {
            shard_unit_bytes: SHARD_UNIT_BYTES_MAX,
            ..ours.clone()
        };
        largest.validate().unwrap();
        assert_eq!(largest.shard_bytes_taken(), SHARD_UNIT_BYTES_MAX);
        // Twice the unit would need more block checksums than a frame's message holds.
        let crowded = ErasureConfig {
            block_bytes: IO_ALIGN_BYTES,
            shard_unit_bytes: IO_ALIGN_BYTES * (FRAME_META_BYTES_MAX / 8),
            ..ours
        };
        crowded.validate().unwrap();
        assert_eq!(crowded.shard_bytes_taken(), crowded.shard_unit_bytes);
    }

    #[test]
    fn an_announced_code_is_taken_only_when_usable() {
        let ours = ErasureConfig::default();
        assert_eq!(ErasureConfig::from_stripe_code(&ours.stripe_code()).unwrap(), ours);
        let announced = |f: fn(&mut StripeCode)| {
            let mut c = ours.stripe_code();
            f(&mut c);
            ErasureConfig::from_stripe_code(&c)
        };
        for (bad, field) in [
            (announced(|c| c.data_shards = 300), "erasure.data_shards"),
            (announced(|c| c.parity_shards = 0), "erasure.parity_shards"),
            (announced(|c| c.shard_unit_bytes = 100_000), "erasure.shard_unit_bytes"),
            (announced(|c| c.block_bytes = 0), "erasure.block_bytes"),
        ] {
            let err = bad.unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{DS}\nmax_conections = 3"));
        assert!(e.contains("max_conections"), "{e}");
        let e = err("[erasure]\ndata_shard = 3");
        assert!(e.contains("data_shard"), "{e}");
        let e = err("[nonsense]\nx = 1");
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn bad_ranges_are_named() {
        for (text, key) in [
            ("[erasure]\nparity_shards = 0", "erasure.parity_shards"),
            ("[erasure]\ndata_shards = 200", "erasure.data_shards"),
            ("[erasure]\nblock_bytes = 1000", "erasure.block_bytes"),
            ("[erasure]\nblock_bytes = 6144", "erasure.block_bytes"),
            ("[erasure]\nshard_unit_bytes = 100000", "erasure.shard_unit_bytes"),
            (&format!("{DS}\nmax_connections = 0"), "dataserver.max_connections"),
            (
                &format!("{DS}\ninflight_bytes_max = 10"),
                "dataserver.inflight_bytes_max",
            ),
            (&DS.replace("\"h1\"", "\"Hall 1\""), "dataserver.hall"),
            (&DS.replace("127.0.0.1:7001", "nowhere"), "listen"),
            (
                &format!("{DS}\nmetrics_listen = \"127.0.0.1:7001\""),
                "dataserver.metrics_listen",
            ),
            (&format!("{DS}\nmetrics_listen = \"port 80\""), "metrics_listen"),
            (&format!("{DS}\nio = \"magic\""), "io"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "error for {key} does not name it: {e}");
        }
    }

    #[test]
    fn impossible_topologies_are_rejected() {
        let mut text = String::new();
        for (i, hall) in ["a", "a", "a", "b", "b", "b"].iter().enumerate() {
            text += &format!(
                "[[dataservers]]\nnode_id = {i}\nhall = \"{hall}\"\naddr = \"127.0.0.1:{}\"\n",
                7000 + i
            );
        }
        let e = err(&text);
        assert!(e.contains("`dataservers`") && e.contains("only 4 shards"), "{e}");
        let three_halls = text.replace(
            "hall = \"b\"\naddr = \"127.0.0.1:7005\"",
            "hall = \"c\"\naddr = \"127.0.0.1:7005\"",
        );
        let e = err(&three_halls);
        assert!(e.contains("only 5 shards"), "{e}");
        let ok = three_halls.replace(
            "hall = \"a\"\naddr = \"127.0.0.1:7002\"",
            "hall = \"c\"\naddr = \"127.0.0.1:7002\"",
        );
        Config::parse(&ok).unwrap();
        let dup = ok.replace("node_id = 1\n", "node_id = 0\n");
        assert!(err(&dup).contains("dataservers[1].node_id"));
    }

    const MD: &str = r#"
        [metadata]
        node_id = 2
        data_dir = "/tmp/m2"

        [[metadata_nodes]]
        node_id = 1
        hall = "h1"
        addr = "127.0.0.1:7101"
        [[metadata_nodes]]
        node_id = 2
        hall = "h2"
        addr = "127.0.0.1:7102"
    "#;

    #[test]
    fn metadata_sections_are_checked() {
        let c = Config::parse(MD).unwrap();
        let md = c.metadata().unwrap();
        assert_eq!((md.heartbeat_ms, md.voters_per_hall), (100, 1));
        assert_eq!(md.entry(&c.metadata_nodes).map(|e| e.hall.as_str()), Some("h2"));
        for (from, to, key) in [
            (
                "node_id = 2\n        data_dir",
                "node_id = 9\n        data_dir",
                "metadata.node_id",
            ),
            (
                "data_dir = \"/tmp/m2\"",
                "data_dir = \"/tmp/m2\"\nheartbeat_ms = 1",
                "metadata.heartbeat_ms",
            ),
            (
                "data_dir = \"/tmp/m2\"",
                "data_dir = \"/tmp/m2\"\nelection_timeout_ms = 150",
                "metadata.election_timeout_ms",
            ),
            (
                "data_dir = \"/tmp/m2\"",
                "data_dir = \"/tmp/m2\"\nvoters_per_hall = 0",
                "metadata.voters_per_hall",
            ),
            (
                "data_dir = \"/tmp/m2\"",
                "data_dir = \"/tmp/m2\"\nmetrics_listen = \"127.0.0.1:7102\"",
                "metadata.metrics_listen",
            ),
            ("127.0.0.1:7102", "127.0.0.1:7101", "metadata_nodes[1].addr"),
            ("hall = \"h2\"", "hall = \"../x\"", "metadata_nodes[1].hall"),
            (
                "node_id = 1\n        hall",
                "node_id = 0\n        hall",
                "metadata_nodes[0].node_id",
            ),
        ] {
            let text = MD.replace(from, to);
            assert_ne!(text, MD, "{from}");
            let e = err(&text);
            assert!(e.contains(key), "error for {key} does not name it: {e}");
        }
        let apart = MD.replace("data_dir", "metrics_listen = \"127.0.0.1:9102\"\ndata_dir");
        let c = Config::parse(&apart).unwrap();
        assert_eq!(
            c.metadata().unwrap().metrics_listen,
            Some("127.0.0.1:9102".parse().unwrap())
        );
    }

    #[test]
    fn logic_sections_are_checked() {
        let logic = |extra: &str| {
            format!(
                "[erasure]\ndata_shards = 1\nparity_shards = 1\n\
                 [logic]\nlisten = \"127.0.0.1:7201\"\n{extra}\n\
                 [[metadata_nodes]]\nnode_id = 1\nhall = \"h1\"\naddr = \"127.0.0.1:7101\"\n\
                 [[dataservers]]\nnode_id = 1\nhall = \"h1\"\naddr = \"127.0.0.1:7001\"\n\
                 [[dataservers]]\nnode_id = 2\nhall = \"h2\"\naddr = \"127.0.0.1:7002\"\n"
            )
        };
        let ok = Config::parse(&logic("metrics_listen = \"127.0.0.1:9201\"")).unwrap();
        assert_eq!(
            ok.logic().unwrap().metrics_listen,
            Some("127.0.0.1:9201".parse().unwrap())
        );
        let e = err(&logic("metrics_listen = \"127.0.0.1:7201\""));
        assert!(e.contains("logic.metrics_listen"), "{e}");
    }
}
