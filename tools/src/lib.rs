//! Shared pieces of Cairn's command-line tools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_dataserver::client::DataserverClient;

pub mod drain;
pub mod file_cmd;
pub mod local;
pub mod meta_bench;
pub mod metadata_admin;
pub mod outage;
pub mod rolling;
pub mod socket_limit;
pub mod workload;

/// Connects to a dataserver, retrying until it answers `stat` or `wait` has passed.
pub async fn connect_when_ready(addr: std::net::SocketAddr, wait: Duration) -> anyhow::Result<DataserverClient> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = async {
            let c = DataserverClient::connect(addr).await?;
            c.stat().await?;
            anyhow::Ok(c)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("dataserver {addr} not ready after {wait:?}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Runs `op(i)` for i in 0..count with `workers` tasks per client, spread over `clients`.
pub async fn run_parallel<C, F, Fut>(clients: &[Arc<C>], workers: usize, count: u64, op: F) -> anyhow::Result<()>
where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..workers {
            let (c, next, op) = (c.clone(), next.clone(), op.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(());
                    }
                    op(c.clone(), i).await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
