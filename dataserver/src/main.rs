//! `cairn-dataserver`: serve shards, or scrub a data directory on demand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cairn_common::config::Config;
use cairn_common::versions::Versions;
use cairn_dataserver::metrics::Metrics;
use cairn_dataserver::node::Node;
use cairn_dataserver::scrub::scrub_pass;
use cairn_dataserver::{disk, store::ShardStore};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(version, about = "Cairn dataserver: erasure-coded shards on local disk")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve shards over TCP until SIGTERM or SIGINT.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the protocol and format versions this build reads and writes (one JSON
    /// line), which a rolling upgrade compares with the running nodes'.
    Versions,
    /// Re-read every stored shard and check every block once; exits 3 if any is corrupt.
    /// Works beside a running dataserver.
    Scrub {
        #[arg(long)]
        config: PathBuf,
        /// Read rate limit in bytes per second; 0 reads as fast as the disk allows.
        #[arg(long, default_value_t = 0)]
        bytes_per_sec: u64,
    },
}

fn main() -> ExitCode {
    cairn_common::logging::init("info");
    cairn_common::allocator::keep_freed_buffers();
    let cli = Cli::parse();
    if let Command::Versions = cli.command {
        println!("{}", Versions::this_build().json());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Scrub { config, bytes_per_sec } => scrub(config, bytes_per_sec).await,
        Command::Versions => Ok(ExitCode::SUCCESS),
    }
}

async fn serve(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let config = Config::load(&config_path)?;
    let node = Node::start(&config).await?;
    let usage = node.store.usage()?;
    info!(
        addr = %node.addr,
        metrics = ?node.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        shards = usage.shard_count,
        io = node.store.io_mode(),
        startup_ms = started.elapsed().as_millis() as u64,
        "dataserver serving"
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        signal.cancel();
    });
    node.run(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn scrub(config_path: PathBuf, bytes_per_sec: u64) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_path)?;
    let ds = config.dataserver()?;
    let choice = disk::choose(&ds.data_dir, ds.io, ds.uring_entries).await?;
    let store = ShardStore::open_read_only(&ds.data_dir, choice, Metrics::new())
        .with_context(|| format!("open shard store in {}", ds.data_dir.display()))?;
    let report = scrub_pass(&store, bytes_per_sec, &CancellationToken::new()).await?;
    for (shard, blocks) in &report.corrupt {
        println!("corrupt shard {shard} blocks {blocks:?}");
    }
    println!(
        "scrubbed {} shards, {} bytes: {} corrupt",
        report.shards,
        report.bytes,
        report.corrupt.len()
    );
    Ok(if report.corrupt.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
