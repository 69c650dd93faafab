//! Prometheus metrics of one logic node, served at `GET /metrics`
//! (`cairn_common::metrics::serve`). A logic node keeps no state, so these are what an
//! operator watches it by: the requests it serves and how long they take, the file bytes
//! it moves, and the shards it had to decode around, repair or could not reach.

use cairn_common::metrics::{counter, counter_vec, gauge, latency_vec, registry};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Client requests by kind ("meta", "write_stripe", "read", "capacity") and outcome
    /// ("ok", an error code, or the errno a metadata refusal carried).
    pub requests: IntCounterVec,
    /// Seconds from a request's decoding to its reply, by kind.
    pub latency: HistogramVec,
    /// File bytes received in stripes and stored.
    pub written_bytes: IntCounter,
    /// File bytes sent in read replies.
    pub read_bytes: IntCounter,
    /// Stripes read by decoding from parity, because a data shard was missing,
    /// unreachable or corrupt.
    pub degraded_stripes: IntCounter,
    /// Shards that failed their checksum when read here.
    pub corrupt_shards: IntCounter,
    /// Corrupt shards rewritten from the decoded stripe.
    pub repaired_shards: IntCounter,
    /// Reads that could use the layout cache, by result: "hit", "miss", or "failed" (a
    /// cached layout whose read failed, read again from a fresh one).
    pub layout_cache: IntCounterVec,
    /// Requests to a dataserver that failed (its connection is dropped and placement
    /// avoids it for a while), by dataserver id.
    pub dataserver_failures: IntCounterVec,
    pub connections: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = registry("cairn_logic");
        Metrics {
            requests: counter_vec(
                &r,
                "requests_total",
                "Client requests by kind and outcome",
                &["op", "outcome"],
            ),
            latency: latency_vec(&r, "request_seconds", "Client request latency by kind", &["op"]),
            written_bytes: counter(&r, "written_bytes_total", "File bytes stored"),
            read_bytes: counter(&r, "read_bytes_total", "File bytes served"),
            degraded_stripes: counter(&r, "degraded_stripes_total", "Stripe reads that decoded from parity"),
            corrupt_shards: counter(&r, "corrupt_shards_total", "Shards that failed their checksum on read"),
            repaired_shards: counter(&r, "repaired_shards_total", "Corrupt shards rewritten"),
            layout_cache: counter_vec(
                &r,
                "layout_cache_total",
                "Reads that could use a cached layout, by result",
                &["result"],
            ),
            dataserver_failures: counter_vec(
                &r,
                "dataserver_failures_total",
                "Failed requests to a dataserver",
                &["dataserver"],
            ),
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
