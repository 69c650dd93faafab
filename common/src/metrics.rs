//! What every node's Prometheus metrics share: a registry per node (several nodes in one
//! test process never collide), metrics registered as they are made, and the plain-HTTP
//! endpoint Prometheus scrapes (`GET /metrics`, the text exposition format).
//!
//! Metric names and label names here are static, so making and registering them can only
//! fail on a programming error (a name used twice), which the first start of any node
//! shows: those failures are `unreachable!`.

use std::future::Future;
use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::net::TcpListener;
use tracing::warn;

use crate::proto::metadata::Errno;

/// A registry whose metric names all start with `prefix` and an underscore.
pub fn registry(prefix: &str) -> Registry {
    Registry::new_custom(Some(prefix.into()), None)
        .unwrap_or_else(|e| unreachable!("static registry prefix {prefix}: {e}"))
}

fn registered<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
    let c = made.unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("metric names are distinct: {e}"));
    c
}

pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// Request latency buckets: 100 µs to about 13 s, doubling.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-4, 2.0, 18).unwrap_or_else(|e| unreachable!("static buckets: {e}"))
}

/// A latency histogram in seconds.
pub fn latency_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    registered(registry, HistogramVec::new(opts, labels))
}

/// A metadata refusal's errno as a label: "enoent", "eexist", ...
pub fn errno_label(errno: i32) -> String {
    Errno::try_from(errno).map_or_else(
        |_| "unknown".to_owned(),
        |e| e.as_str_name().trim_start_matches("ERRNO_").to_ascii_lowercase(),
    )
}

/// The text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// Binds the `GET /metrics` listener when the node's config names an address.
pub async fn bind(at: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match at {
        Some(at) => TcpListener::bind(at).await.map(Some),
        None => Ok(None),
    }
}

/// Serves `GET /metrics` on `listener`, with the body `render` gives at each scrape (a
/// node may refresh gauges from its state first), until `shutdown` completes. Any other
/// path is 404, another method 405, and a malformed request gets 400 from the HTTP
/// library without reaching this code.
pub async fn serve<R, S>(render: R, listener: TcpListener, shutdown: S)
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let body = render();
            async move { ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], body) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        warn!("metrics endpoint stopped: {e}");
    }
}
