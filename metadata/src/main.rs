//! `cairn-metadata`: one member of the metadata Raft group.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_common::config::Config;
use cairn_common::versions::Versions;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cairn-metadata", about = "Cairn metadata node (Raft member)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve as a member of the group.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Form the group if this is the lowest-id node and it holds no Raft state yet.
        /// Pass it only when creating a new cluster.
        #[arg(long)]
        bootstrap: bool,
    },
    /// Print the protocol and format versions this build reads and writes (one JSON
    /// line), which a rolling upgrade compares with the running nodes'.
    Versions,
}

fn main() -> ExitCode {
    cairn_common::logging::init("info,openraft=warn");
    let cli = Cli::parse();
    let (config, bootstrap) = match cli.command {
        Command::Serve { config, bootstrap } => (config, bootstrap),
        Command::Versions => {
            println!("{}", Versions::this_build().json());
            return ExitCode::SUCCESS;
        }
    };
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-metadata: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = match config.metadata() {
        Ok(md) => md.worker_threads as usize,
        Err(e) => {
            eprintln!("cairn-metadata: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn-metadata: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cairn_metadata::node::run(config, bootstrap)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-metadata: {e:#}");
            ExitCode::FAILURE
        }
    }
}
