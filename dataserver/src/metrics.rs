//! Prometheus counters of one dataserver, and the plain-HTTP endpoint Prometheus scrapes
//! (`GET /metrics`). Each store has its own registry so several stores in one process
//! (tests) never collide.

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
        let registry = Registry::new_custom(Some("cairn_dataserver".into()), None)
            .unwrap_or_else(|e| unreachable!("static registry prefix: {e}"));
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by operation and outcome"),
            &["op", "outcome"],
        );
        let corrupt = IntCounterVec::new(
            Opts::new("corrupt_blocks_total", "Blocks that failed their checksum"),
            &["found_by"],
        );
        let m = Metrics {
            requests: requests.unwrap_or_else(|e| unreachable!("{e}")),
            bytes_written: IntCounter::new("written_bytes_total", "Shard bytes stored")
                .unwrap_or_else(|e| unreachable!("{e}")),
            bytes_read: IntCounter::new("read_bytes_total", "Shard bytes served")
                .unwrap_or_else(|e| unreachable!("{e}")),
            corrupt_blocks: corrupt.unwrap_or_else(|e| unreachable!("{e}")),
            scrubbed_bytes: IntCounter::new("scrubbed_bytes_total", "Bytes re-read by scrub")
                .unwrap_or_else(|e| unreachable!("{e}")),
            scrubbed_shards: IntCounter::new("scrubbed_shards_total", "Shards re-read by scrub")
                .unwrap_or_else(|e| unreachable!("{e}")),
            repaired_shards: IntCounterVec::new(
                Opts::new("repaired_shards_total", "Corrupt shards replaced by a verified copy"),
                &["by"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            orphans_deleted: IntCounter::new("orphans_deleted_total", "Unreferenced shards deleted")
                .unwrap_or_else(|e| unreachable!("{e}")),
            rebuilt_shards: IntCounter::new(
                "rebuilt_shards_total",
                "Shards of drained dataservers rebuilt by this node",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            rebuilt_bytes: IntCounter::new("rebuilt_bytes_total", "Bytes of shards rebuilt by this node")
                .unwrap_or_else(|e| unreachable!("{e}")),
            connections: IntGauge::new("connections", "Open client connections")
                .unwrap_or_else(|e| unreachable!("{e}")),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 11] = [
            Box::new(m.requests.clone()),
            Box::new(m.bytes_written.clone()),
            Box::new(m.bytes_read.clone()),
            Box::new(m.corrupt_blocks.clone()),
            Box::new(m.scrubbed_bytes.clone()),
            Box::new(m.scrubbed_shards.clone()),
            Box::new(m.repaired_shards.clone()),
            Box::new(m.orphans_deleted.clone()),
            Box::new(m.rebuilt_shards.clone()),
            Box::new(m.rebuilt_bytes.clone()),
            Box::new(m.connections.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| unreachable!("metric names are distinct: {e}"));
        }
        m
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}

/// Serves `GET /metrics` (the text exposition format) on `listener` until `shutdown`
/// fires; any other path is 404, and a malformed request gets 400 from the HTTP library
/// without reaching this code.
pub async fn serve(metrics: Metrics, listener: TcpListener, shutdown: CancellationToken) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let body = metrics.render();
            async move { ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], body) }
        }),
    );
    let stopped = async move { shutdown.cancelled().await };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        warn!("metrics endpoint stopped: {e}");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
