//! Shared pieces of Cairn's command-line tools.

use std::time::Duration;

use anyhow::Context;
use cairn_dataserver::client::DataserverClient;

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
