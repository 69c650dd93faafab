//! Prometheus counters of one dataserver, served at `GET /metrics`
//! (`cairn_common::metrics::serve`).

use cairn_common::metrics::{counter, counter_vec, gauge, registry};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by operation and outcome ("ok" or an error code).
    pub requests: IntCounterVec,
    pub bytes_written: IntCounter,
    pub bytes_read: IntCounter,
    /// Corrupt blocks found here by reads ("read": a shard file missing or short) and by
    /// scrub ("scrub"). Flipped bits are for the reader to find, on receipt.
    pub corrupt_blocks: IntCounterVec,
    pub scrubbed_bytes: IntCounter,
    pub scrubbed_shards: IntCounter,
    /// Corrupt shards replaced by a verified copy, by who rebuilt it: "put" (a logic node
    /// that decoded around it on a read) or "scrub" (this node, after scrub found it).
    pub repaired_shards: IntCounterVec,
    /// Unreferenced shards deleted by the orphan collector.
    pub orphans_deleted: IntCounter,
    /// Shards of draining or lost dataservers this node rebuilt (stored here or on the
    /// peer that is their new home).
    pub rebuilt_shards: IntCounter,
    pub rebuilt_bytes: IntCounter,
    pub connections: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = registry("cairn_dataserver");
        Metrics {
            requests: counter_vec(
                &r,
                "requests_total",
                "Requests by operation and outcome",
                &["op", "outcome"],
            ),
            bytes_written: counter(&r, "written_bytes_total", "Shard bytes stored"),
            bytes_read: counter(&r, "read_bytes_total", "Shard bytes served"),
            corrupt_blocks: counter_vec(
                &r,
                "corrupt_blocks_total",
                "Blocks that failed their checksum",
                &["found_by"],
            ),
            scrubbed_bytes: counter(&r, "scrubbed_bytes_total", "Bytes re-read by scrub"),
            scrubbed_shards: counter(&r, "scrubbed_shards_total", "Shards re-read by scrub"),
            repaired_shards: counter_vec(
                &r,
                "repaired_shards_total",
                "Corrupt shards replaced by a verified copy",
                &["by"],
            ),
            orphans_deleted: counter(&r, "orphans_deleted_total", "Unreferenced shards deleted"),
            rebuilt_shards: counter(
                &r,
                "rebuilt_shards_total",
                "Shards of drained dataservers rebuilt by this node",
            ),
            rebuilt_bytes: counter(&r, "rebuilt_bytes_total", "Bytes of shards rebuilt by this node"),
            connections: gauge(&r, "connections", "Open client connections"),
            registry: r,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
