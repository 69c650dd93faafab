//! `cairnctl`: the admin command line: the metadata group, and single dataservers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cairn_common::ids::ShardId;
use cairn_tools::connect_when_ready;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Cairn admin command line")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Talk to one dataserver directly (debugging and checks).
    Dataserver {
        /// The dataserver's address, e.g. 127.0.0.1:7001.
        #[arg(long)]
        addr: SocketAddr,
        /// Keep trying to connect for this many seconds.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
        #[command(subcommand)]
        command: DsCommand,
    },
    /// A whole cluster on this machine (loopback), every node a real process.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Files through the cluster's logic nodes.
    File {
        /// The cluster's config (for a local cluster: <dir>/cluster.toml).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        command: cairn_tools::file_cmd::FileCommand,
    },
    /// Halls, nodes, leader, capacity and health of a cluster.
    Status {
        /// The cluster's config (for a local cluster: <dir>/cluster.toml).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Take a dataserver out of service: no new shards go to it, and the dataservers
    /// rebuild every shard of it from the rest of its stripe onto dataservers that keep
    /// the hall rule (paced by their `rebuild_bytes_per_sec`).
    Drain {
        /// The dataserver's node id.
        node: u32,
        /// The cluster's config (for a local cluster: <dir>/cluster.toml).
        #[arg(long)]
        config: PathBuf,
        /// Follow the rebuild with a progress bar until no file references the node.
        #[arg(long)]
        wait: bool,
        /// Put the dataserver back in service instead.
        #[arg(long)]
        cancel: bool,
    },
    /// Restart every node of a local cluster in turn (logic nodes, dataservers, then
    /// metadata voters with the leader last, which hands leadership over before it stops),
    /// each once the cluster is healthy again.
    RollingRestart {
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
        /// Start the nodes from the binaries in this directory (an upgrade).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Restart only the nodes of this kind (upgrade one tier at a time).
        #[arg(long, value_enum)]
        only: Option<cairn_tools::rolling::Tier>,
    },
    /// The metadata group: status and membership changes.
    Metadata {
        /// Addresses of the group's members, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<String>,
        #[command(subcommand)]
        command: cairn_tools::metadata_admin::MdCommand,
    },
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start the cluster (processes already running are kept), wait until it is healthy,
    /// and mount it.
    Up {
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        halls: u32,
        #[arg(long, default_value_t = 2)]
        dataservers_per_hall: u32,
        #[arg(long, default_value_t = 2)]
        logic_nodes: u32,
        /// First of the consecutive loopback ports the nodes listen on.
        #[arg(long, default_value_t = 17200)]
        base_port: u16,
        /// Where to mount the cluster (FUSE); default <dir>/mnt.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Do not mount the cluster.
        #[arg(long, conflicts_with = "mount")]
        no_mount: bool,
        /// A test tool: keep every voter's and dataserver's data on a power-cut disk of
        /// its own (cairn-powercut), so that `local power-cut` drops what was not synced.
        #[arg(long)]
        power_cut_harness: bool,
    },
    /// Unmount, then stop every process of the cluster (SIGTERM, then SIGKILL after 10 s).
    Down {
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
    },
    /// Crash a hall: SIGKILL every process that runs in it. The kernel keeps what they
    /// wrote (for a power cut that loses it, see `power-cut`).
    KillHall {
        /// The hall's number (1 for hall-1).
        hall: u32,
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
    },
    /// Bring a hall back: start its processes and wait until the cluster is healthy.
    StartHall {
        /// The hall's number (1 for hall-1).
        hall: u32,
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
    },
    /// A test tool, for a cluster started with `up --power-cut-harness`: cut the power of
    /// a hall (of the whole site without --hall). Its processes are frozen, every write
    /// and directory change on their disks that was not synced is dropped, then they are
    /// killed. `up` (or `start-hall`) brings them back.
    PowerCut {
        /// The hall's number (1 for hall-1); every hall when left out.
        #[arg(long)]
        hall: Option<u32>,
        #[arg(long, default_value_os_t = cairn_tools::local::default_dir())]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DsCommand {
    /// Hall, capacity, free space, shard count, I/O engine.
    Stat,
    /// Store a file's bytes as one shard.
    Put {
        #[arg(long)]
        shard: ShardId,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 65_536)]
        block_bytes: u32,
    },
    /// Read a shard (or a range of it) to a file or standard output.
    Get {
        #[arg(long)]
        shard: ShardId,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long)]
        length: Option<u64>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List stored shards.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete a shard.
    Delete {
        #[arg(long)]
        shard: ShardId,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (addr, wait_secs, command) = match cli.command {
        Top::Dataserver {
            addr,
            wait_secs,
            command,
        } => (addr, wait_secs, command),
        Top::Metadata { addrs, command } => return cairn_tools::metadata_admin::run(&addrs, command).await,
        Top::Status { config, json } => return cairn_tools::local::status(&config, json).await,
        Top::Drain {
            node,
            config,
            wait,
            cancel,
        } => {
            let c = cairn_common::config::Config::load(&config)?;
            if cancel {
                cairn_tools::drain::undrain(&c, node).await?;
                println!("dataserver {node} is back in service");
            } else {
                let held = cairn_tools::drain::drain(&c, node, wait, true).await?;
                if wait {
                    println!(
                        "dataserver {node} drained: {held} shards rebuilt elsewhere; it holds nothing a file needs"
                    );
                } else {
                    println!(
                        "dataserver {node} draining: {held} shards to rebuild elsewhere \
                         (`cairnctl status` shows what is left; --wait follows it)"
                    );
                }
            }
            return Ok(());
        }
        Top::RollingRestart { dir, binary, only } => {
            use cairn_tools::rolling::Step;
            let done = cairn_tools::rolling::rolling_restart(&dir, binary.as_deref(), only, |step| match step {
                Step::HandedOver { from, to, took } => println!(
                    "metadata-{from} handed leadership to metadata-{to} ({:.2} s)",
                    took.as_secs_f64()
                ),
                Step::Restarted { name, took } => {
                    println!("{name} restarted, cluster healthy ({:.1} s)", took.as_secs_f64())
                }
            })
            .await?;
            println!("rolling restart done: {} nodes", done.len());
            return Ok(());
        }
        Top::File { config, command } => return cairn_tools::file_cmd::run(&config, command).await,
        Top::Local {
            command:
                LocalCommand::Up {
                    dir,
                    halls,
                    dataservers_per_hall,
                    logic_nodes,
                    base_port,
                    mount,
                    no_mount,
                    power_cut_harness,
                },
        } => {
            let layout = cairn_tools::local::Layout {
                halls,
                dataservers_per_hall,
                logic_nodes,
                base_port,
            };
            let mount = (!no_mount).then(|| mount.unwrap_or_else(|| dir.join("mnt")));
            return cairn_tools::local::up(&dir, &layout, mount.as_deref(), power_cut_harness).await;
        }
        Top::Local {
            command: LocalCommand::Down { dir },
        } => return cairn_tools::local::down(&dir),
        Top::Local {
            command: LocalCommand::KillHall { hall, dir },
        } => {
            let killed = cairn_tools::local::kill_hall(&dir, hall)?;
            println!("hall-{hall} is dark: killed {}", killed.join(", "));
            return Ok(());
        }
        Top::Local {
            command: LocalCommand::PowerCut { hall, dir },
        } => {
            let (killed, dropped) = cairn_tools::local::power_cut(&dir, hall)?;
            let what = hall.map_or("the site".to_owned(), |h| format!("hall-{h}"));
            println!("{what} lost power: killed {}", killed.join(", "));
            for line in dropped {
                println!("  {line}");
            }
            return Ok(());
        }
        Top::Local {
            command: LocalCommand::StartHall { hall, dir },
        } => {
            let started = cairn_tools::local::start_hall(&dir, hall).await?;
            println!("hall-{hall} is back: {started} processes started, cluster healthy");
            return Ok(());
        }
    };
    let client = connect_when_ready(addr, Duration::from_secs(wait_secs)).await?;
    match command {
        DsCommand::Stat => {
            let s = client.stat().await?;
            println!("node       {}", s.node_id);
            println!("hall       {}", s.hall);
            println!("capacity   {} bytes", s.capacity_bytes);
            println!("free       {} bytes", s.free_bytes);
            println!("used       {} bytes", s.used_bytes);
            println!("shards     {}", s.shard_count);
            println!("corrupt    {} blocks found", s.corrupt_blocks);
            println!("io         {}", s.io_mode);
            println!("version    {} (protocol {})", s.build_version, s.protocol_version);
        }
        DsCommand::Put {
            shard,
            file,
            block_bytes,
        } => {
            let data = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            let len = data.len();
            let created = client.put(shard, block_bytes, Bytes::from(data)).await?;
            let what = if created { "stored" } else { "already stored" };
            println!("{what} shard {shard}: {len} bytes");
        }
        DsCommand::Get {
            shard,
            offset,
            length,
            out,
        } => {
            let data = client.get(shard, offset, length).await?;
            match out {
                Some(path) => std::fs::write(&path, &data).with_context(|| format!("write {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &data)?,
            }
        }
        DsCommand::List { limit } => {
            let (shards, more) = client.list(None, limit).await?;
            for (id, len) in shards {
                println!("{id} {len}");
            }
            if more {
                println!("(more)");
            }
        }
        DsCommand::Delete { shard } => {
            let existed = client.delete(shard).await?;
            println!("{}", if existed { "deleted" } else { "no such shard" });
        }
    }
    Ok(())
}
