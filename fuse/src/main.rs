//! `cairn-fuse`: mount a Cairn cluster at a path.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_client::CairnClient;
use cairn_common::config::Config;
use cairn_fuse::CairnFs;
use clap::Parser;
use fuser::MountOption;

#[derive(Parser, Debug)]
#[command(name = "cairn-fuse", about = "Mount a Cairn cluster (FUSE)")]
struct Cli {
    /// The cluster's config (logic nodes and erasure code).
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    mountpoint: PathBuf,
    /// Mount this directory of the namespace instead of its root.
    #[arg(long, default_value = "/")]
    subtree: String,
    /// Threads serving kernel requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// How long the locks of this mount outlive it (or its loss of the cluster); renewed
    /// every third of it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lock_lease_secs: u64,
}

fn main() -> ExitCode {
    cairn_common::logging::init("info");
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) if !c.logic_nodes.is_empty() => c,
        Ok(_) => {
            eprintln!("cairn-fuse: the config lists no logic_nodes");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("cairn-fuse: {e}");
            return ExitCode::from(2);
        }
    };
    let client = CairnClient::new(
        config.logic_nodes.iter().map(|l| l.addr).collect(),
        config.erasure.clone(),
        Duration::from_secs(60),
    );
    let fs = match CairnFs::new(client, &cli.subtree, Duration::from_secs(cli.lock_lease_secs)) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("cairn-fuse: {e}");
            return ExitCode::from(2);
        }
    };
    let mut options = cairn_fuse::session::config(
        vec![MountOption::FSName("cairn".into()), MountOption::DefaultPermissions],
        cli.threads,
    );
    // Every user of the machine (a training job rarely runs as root), with the kernel
    // checking mode bits against the caller (DefaultPermissions).
    options.acl = fuser::SessionACL::All;
    let notifier = fs.notifier_slot();
    let mounted = fuser::Session::new(fs, &cli.mountpoint, &options).and_then(|session| {
        let _ = notifier.set(session.notifier());
        session.run()
    });
    match mounted {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-fuse: mounting at {}: {e}", cli.mountpoint.display());
            ExitCode::FAILURE
        }
    }
}
