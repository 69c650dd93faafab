//! `cairn-logic`: a stateless logic node serving the file protocol.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_common::config::Config;
use cairn_common::metrics;
use cairn_common::versions::Versions;
use cairn_logic::dataservers::Dataservers;
use cairn_logic::files::Files;
use cairn_logic::server::{serve, LogicNode};
use cairn_metadata::client::MetadataClient;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a metadata request may take (leader changes included) before the client is
/// told the group is unavailable.
const METADATA_DEADLINE: Duration = Duration::from_secs(30);
/// How often the list of draining dataservers is read from the metadata group.
const DRAINING_POLL: Duration = Duration::from_secs(2);
/// How long a draining node (SIGTERM: a rolling restart) waits for requests in flight.
const DRAIN_FOR: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(name = "cairn-logic", about = "Cairn logic node (stateless file protocol server)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the file protocol until SIGTERM (drains first) or SIGINT.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the protocol and format versions this build reads and writes (one JSON
    /// line), which a rolling upgrade compares with the running nodes'.
    Versions,
}

async fn run(config: Config) -> anyhow::Result<()> {
    let logic = config.logic()?.clone();
    let addrs = config.metadata_nodes.iter().map(|n| n.addr.to_string()).collect();
    let meta = Arc::new(MetadataClient::new(addrs, METADATA_DEADLINE));
    let ds = Dataservers::new(&config.dataservers).context("dataservers")?;
    tokio::spawn(follow_draining(meta.clone(), ds.clone()));
    let files = Files::new(meta.clone(), ds, &config.erasure);
    let node = Arc::new(LogicNode {
        meta,
        files,
        requests_per_connection: logic.requests_per_connection as usize,
    });
    let listener = cairn_common::transport::Listener::bind(logic.listen)
        .await
        .with_context(|| format!("listening on {}", logic.listen))?;
    let exporter = metrics::bind(logic.metrics_listen)
        .await
        .with_context(|| format!("listening for metrics on {:?}", logic.metrics_listen))?;
    info!(addr = %logic.listen, metrics = ?logic.metrics_listen, "logic node serving");
    let drain = CancellationToken::new();
    if let Some(l) = exporter {
        // Served until the process exits, draining included.
        let m = node.files.metrics().clone();
        tokio::spawn(metrics::serve(
            move || metrics::render(&m.registry),
            l,
            std::future::pending(),
        ));
    }
    let signal = drain.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => { s.recv().await; }
                    Err(_) => std::future::pending::<()>().await,
                }
            } => {}
        }
        info!("draining: no new requests; finishing those in flight");
        signal.cancel();
    });
    serve(listener, node, logic.max_connections as usize, drain, DRAIN_FOR).await;
    info!("drained; shutting down");
    Ok(())
}

/// Keeps the dataservers' draining list in step with the metadata group's, so that new
/// stripes stop landing on a node soon after `cairnctl drain` names it.
async fn follow_draining(meta: Arc<MetadataClient>, ds: Dataservers) {
    loop {
        match meta.draining().await {
            Ok(d) => ds.set_draining(d.ids),
            Err(e) => warn!("draining list: {e}"),
        }
        tokio::time::sleep(DRAINING_POLL).await;
    }
}

fn main() -> ExitCode {
    cairn_common::logging::init("info");
    cairn_common::allocator::keep_freed_buffers();
    let config = match Cli::parse().command {
        Command::Serve { config } => config,
        Command::Versions => {
            println!("{}", Versions::this_build().json());
            return ExitCode::SUCCESS;
        }
    };
    let config = match Config::load(&config).and_then(|c| c.logic().map(|_| ()).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-logic: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn-logic: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-logic: {e:#}");
            ExitCode::FAILURE
        }
    }
}
