//! `cairn-bench`: load generators. Each prints one result line of key=value pairs that
//! the scripts under `bench/` put beside the machine's limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use cairn_common::ids::{ShardId, StripeId};
use cairn_tools::{connect_when_ready, run_parallel};
use clap::{Parser, Subcommand};
use rand::RngCore;

/// How long a bench waits for its dataserver to answer.
const READY_WAIT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(version, about = "Cairn benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Shard put throughput, then get throughput of the same shards, against one dataserver.
    Shards {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight on each connection.
        #[arg(long, default_value_t = 4)]
        depth: usize,
        #[arg(long, default_value_t = 1 << 20)]
        shard_bytes: usize,
        /// Bytes to put (and then get) in all.
        #[arg(long, default_value_t = 4 << 30)]
        total_bytes: u64,
        #[arg(long, default_value_t = 65_536)]
        block_bytes: u32,
    },
    /// Store `count` small shards (to measure start-up time against shard count).
    Fill {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 4096)]
        shard_bytes: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Metadata creates, then getattrs of the created files, from concurrent clients.
    Meta {
        /// Metadata node addresses, comma separated.
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Skip the getattr phase (to fill a namespace).
        #[arg(long)]
        creates_only: bool,
    },
    /// Commit and read costs of one file's layout as it grows (synthetic stripes).
    MetaLayout {
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        /// Sizes of the layout measured, in stripes of 4 MiB.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        stripes: Vec<u64>,
        /// Commits of each kind measured at each size.
        #[arg(long, default_value_t = 20)]
        commits: u64,
        /// Ranged layout reads measured at each size.
        #[arg(long, default_value_t = 200)]
        reads: u64,
    },
    /// Time from `since_ns` (ns since the epoch) to the first linearizable read served.
    MetaReady {
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        #[arg(long)]
        since_ns: u128,
    },
    /// The transport limit of the file path on one host: MB/s through two hops
    /// (sender -> relay -> receiver) of loopback TCP or Unix sockets.
    SocketLimit {
        #[arg(long, value_enum)]
        kind: cairn_tools::socket_limit::SocketKind,
        #[arg(long, default_value_t = 8 << 30)]
        total_bytes: u64,
    },
    /// The metadata limit: synced RocksDB WriteBatches per second in `dir`.
    RocksdbSync {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        count: u64,
    },
    /// Start a dataserver and time it until it answers `stat`, then stop it (SIGTERM).
    Startup {
        #[arg(long)]
        dataserver_bin: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Mount a local directory through a minimal pass-through FUSE file system (what FUSE
    /// itself costs), until unmounted.
    Passthrough {
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Stage an outage on a local cluster (`cairnctl local up`) under a checksummed
    /// read/write workload; print failed I/Os, the longest gap and the time to full
    /// redundancy as one JSON line. Fails if an I/O failed or a byte was lost.
    Outage {
        #[arg(long, value_enum)]
        scenario: cairn_tools::outage::Scenario,
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
        /// Seconds of workload before the outage, of outage, and after recovery.
        #[arg(long, default_value_t = 5)]
        before_secs: u64,
        #[arg(long, default_value_t = 10)]
        down_secs: u64,
        #[arg(long, default_value_t = 5)]
        after_secs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// rolling-restart: start the nodes from the binaries in this directory (an
        /// upgrade).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Kill and restart random processes of a local cluster, one hall at a time at most,
    /// under a checksummed read/write workload; then verify every acknowledged byte.
    /// Prints one JSON line; fails if an I/O failed or a byte was lost.
    Chaos {
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
        #[arg(long, default_value_t = 180)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Power cuts of random halls and of the whole site under a checked workload, on a
    /// cluster started with `cairnctl local up --power-cut-harness`: nothing acknowledged
    /// may be lost.
    PowerCuts {
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        hall_cuts: u64,
        #[arg(long, default_value_t = 5)]
        site_cuts: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Bench::Shards {
            addr,
            connections,
            depth,
            shard_bytes,
            total_bytes,
            block_bytes,
        } => shards(addr, connections, depth, shard_bytes, total_bytes, block_bytes).await,
        Bench::Fill {
            addr,
            count,
            shard_bytes,
            concurrency,
        } => fill(addr, count, shard_bytes, concurrency).await,
        Bench::Startup {
            dataserver_bin,
            config,
            addr,
        } => startup(&dataserver_bin, &config, addr).await,
        Bench::Meta {
            addrs,
            clients,
            count,
            creates_only,
        } => cairn_tools::meta_bench::load(&addrs, clients, count, creates_only).await,
        Bench::MetaLayout {
            addrs,
            stripes,
            commits,
            reads,
        } => cairn_tools::meta_bench::layouts(&addrs, &stripes, commits, reads).await,
        Bench::MetaReady { addrs, since_ns } => cairn_tools::meta_bench::ready(&addrs, since_ns, READY_WAIT).await,
        Bench::SocketLimit { kind, total_bytes } => cairn_tools::socket_limit::two_hops_mbps(kind, total_bytes)
            .map(|mbps| println!("socket_limit kind={kind:?} hops=2 MBps={mbps:.0}"))
            .map_err(anyhow::Error::from),
        Bench::RocksdbSync { dir, count } => cairn_tools::meta_bench::rocksdb_sync(&dir, count),
        Bench::Passthrough {
            source,
            mountpoint,
            threads,
        } => cairn_fuse::passthrough::mount(&source, &mountpoint, threads),
        Bench::Outage {
            scenario,
            dir,
            before_secs,
            down_secs,
            after_secs,
            seed,
            binary,
        } => {
            let timing = cairn_tools::outage::Timing {
                before: Duration::from_secs(before_secs),
                down: Duration::from_secs(down_secs),
                after: Duration::from_secs(after_secs),
            };
            match cairn_tools::outage::run(&dir, scenario, &timing, seed, binary.as_deref()).await {
                Ok(r) => judged(&r, &r.workload),
                Err(e) => Err(e),
            }
        }
        Bench::Chaos { dir, seconds, seed } => match cairn_tools::outage::chaos(&dir, seconds, seed).await {
            Ok(r) => {
                eprintln!(
                    "chaos: {} kills, {} I/Os, {} failed, {} bytes in {} files verified",
                    r.kills,
                    r.workload.writes_ok + r.workload.reads_ok,
                    r.workload.failed_ios,
                    r.workload.bytes_verified,
                    r.workload.files_verified
                );
                judged(&r, &r.workload)
            }
            Err(e) => Err(e),
        },
        Bench::PowerCuts {
            dir,
            hall_cuts,
            site_cuts,
            seed,
        } => match cairn_tools::outage::power_cuts(&dir, hall_cuts, site_cuts, seed).await {
            Ok(r) => {
                eprintln!(
                    "power cuts: {} of a hall, {} of the site; {} bytes and {} directory entries dropped; \
                     {} I/Os, {} failed, {} bytes in {} files verified",
                    r.hall_cuts,
                    r.site_cuts,
                    r.dropped_bytes,
                    r.dropped_entries,
                    r.workload.writes_ok + r.workload.reads_ok,
                    r.workload.failed_ios,
                    r.workload.bytes_verified,
                    r.workload.files_verified
                );
                // What power cuts must never cost is acknowledged data; the failed I/Os
                // they still cause are reported (see bench/RESULTS.md) and judged by
                // the caller.
                judged_by(&r, &r.workload, false)
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints `report` as one JSON line; an error if the workload saw a failed I/O or lost
/// an acknowledged byte.
fn judged(report: &impl serde::Serialize, w: &cairn_tools::workload::Report) -> anyhow::Result<()> {
    judged_by(report, w, true)
}

/// [`judged`], where a failed I/O fails the run only with `failed_io_fails`.
fn judged_by(
    report: &impl serde::Serialize,
    w: &cairn_tools::workload::Report,
    failed_io_fails: bool,
) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    if (failed_io_fails && w.failed_ios > 0) || w.verify_failures > 0 {
        bail!(
            "{} failed I/Os, {} acknowledged files lost or wrong: {:?}",
            w.failed_ios,
            w.verify_failures,
            w.failures
        );
    }
    Ok(())
}

async fn shards(
    addr: SocketAddr,
    connections: usize,
    depth: usize,
    shard_bytes: usize,
    total: u64,
    block_bytes: u32,
) -> anyhow::Result<()> {
    let count = total / shard_bytes as u64;
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(connect_when_ready(addr, READY_WAIT).await?));
    }
    // A few distinct buffers, so the bench measures the store, not a compressible pattern.
    let buffers: Arc<Vec<Bytes>> = Arc::new(
        (0..16)
            .map(|_| {
                let mut v = vec![0u8; shard_bytes];
                rand::rng().fill_bytes(&mut v);
                Bytes::from(v)
            })
            .collect(),
    );
    let run: u128 = rand::random::<u64>().into();
    let id = move |i: u64| ShardId::new(StripeId(run << 64 | u128::from(i)), 0);

    let start = Instant::now();
    let b = buffers.clone();
    run_parallel(&clients, depth, count, move |c, i| {
        let data = b[(i % 16) as usize].clone();
        async move {
            c.put(id(i), block_bytes, data).await.context("put")?;
            Ok(())
        }
    })
    .await?;
    let put_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    run_parallel(&clients, depth, count, move |c, i| {
        let want = buffers[(i % 16) as usize].len();
        async move {
            let got = c.get(id(i), 0, None).await.context("get")?;
            if got.len() != want {
                bail!("shard {} came back with {} bytes, expected {want}", id(i), got.len());
            }
            Ok(())
        }
    })
    .await?;
    let get_s = start.elapsed().as_secs_f64();
    let mb = (count * shard_bytes as u64) as f64 / 1e6;
    println!(
        "cairn shards connections={connections} depth={depth} shard_bytes={shard_bytes} count={count} \
         put_MBps={:.1} get_MBps={:.1} put_ops={:.0} get_ops={:.0}",
        mb / put_s,
        mb / get_s,
        count as f64 / put_s,
        count as f64 / get_s
    );
    Ok(())
}

async fn fill(addr: SocketAddr, count: u64, shard_bytes: usize, concurrency: usize) -> anyhow::Result<()> {
    let clients = vec![Arc::new(connect_when_ready(addr, READY_WAIT).await?)];
    let run: u128 = rand::random::<u64>().into();
    let data = Bytes::from(vec![0xa5u8; shard_bytes]);
    let start = Instant::now();
    run_parallel(&clients, concurrency, count, move |c, i| {
        let data = data.clone();
        async move {
            let id = ShardId::new(StripeId(run << 64 | u128::from(i)), (i % 6) as u8);
            c.put(id, 4096, data).await.context("put")?;
            Ok(())
        }
    })
    .await?;
    println!(
        "cairn fill count={count} shard_bytes={shard_bytes} put_ops={:.0}",
        count as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn startup(bin: &std::path::Path, config: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let ready = connect_when_ready(addr, READY_WAIT).await;
    let elapsed = start.elapsed();
    let stat = match ready {
        Ok(c) => c.stat().await,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    // SIGTERM for a clean stop; the measurement is done.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let shards = stat.map(|s| s.shard_count).unwrap_or(0);
    println!(
        "cairn startup shards={shards} ready_ms={:.1}",
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}
