//! `cairn-powercut`: a power-cut disk for tests (see `cairn_fuse::powercut`). Mounts the
//! disk kept in `--backing` at `--mountpoint`; `cut PID...` on `--control` drops every
//! write and directory change not synced, as a power cut does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "cairn-powercut",
    about = "A test disk that loses what was not fsynced when told to (a power cut)"
)]
struct Cli {
    /// Where the disk is kept: its synced file contents and namespace.
    #[arg(long)]
    backing: PathBuf,
    #[arg(long)]
    mountpoint: PathBuf,
    /// The Unix socket that takes `cut PID...`.
    #[arg(long)]
    control: PathBuf,
}

fn main() -> ExitCode {
    cairn_common::logging::init("info");
    let cli = Cli::parse();
    match cairn_fuse::powercut::serve(&cli.backing, &cli.mountpoint, &cli.control) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-powercut: {e:#}");
            ExitCode::FAILURE
        }
    }
}
