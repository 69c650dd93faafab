//! Power-cut disks for tests: `cairn-powercut` processes, each a FUSE mount that keeps
//! unsynced writes and directory changes in memory and drops them on a power cut. A node
//! whose data directory sits on one is cut as a real power cut would: frozen (SIGSTOP),
//! its disk's unsynced state dropped, then killed (SIGKILL).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_fuse::powercut::{cut, is_mounted};

use crate::Process;

#[derive(Debug)]
pub struct PowerCutDisk {
    /// Where the disk is mounted: put a node's data directory under it.
    pub mountpoint: PathBuf,
    control: PathBuf,
    log: PathBuf,
    child: Process,
}

impl PowerCutDisk {
    /// Starts a disk kept under `dir` (backing, mount point, control socket, log) and
    /// waits until it is mounted.
    pub fn start(dir: &Path) -> anyhow::Result<PowerCutDisk> {
        let (backing, mountpoint) = (dir.join("backing"), dir.join("mnt"));
        std::fs::create_dir_all(&mountpoint)?;
        let disk = PowerCutDisk {
            control: dir.join("control.sock"),
            log: dir.join("powercut.log"),
            child: Process::start(
                "cairn-powercut",
                &[
                    "--backing".as_ref(),
                    backing.as_os_str(),
                    "--mountpoint".as_ref(),
                    mountpoint.as_os_str(),
                    "--control".as_ref(),
                    dir.join("control.sock").as_os_str(),
                ],
                &dir.join("powercut.log"),
            )?,
            mountpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(is_mounted(&disk.mountpoint) && disk.control.exists()) {
            if Instant::now() > deadline {
                bail!("power-cut disk not mounted after 20 s; log:\n{}", disk.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(disk)
    }

    /// Drops everything unsynced, refusing from now on the calls of processes `pids`
    /// (which the caller has frozen and kills next). Returns the disk's report.
    pub fn cut(&self, pids: &[u32]) -> anyhow::Result<String> {
        cut(&self.control, pids)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PowerCutDisk {
    fn drop(&mut self) {
        // Detach the mount first, so that nothing hangs on a dead FUSE daemon.
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        self.child.kill9();
    }
}

/// A power cut of the processes `nodes` whose disks are `disks`: all frozen, every
/// disk's unsynced state dropped, then all killed. Returns the disks' reports.
pub fn power_cut(nodes: &mut [&mut Process], disks: &[&PowerCutDisk]) -> anyhow::Result<Vec<String>> {
    let pids: Vec<u32> = nodes.iter().filter_map(|n| n.pid()).collect();
    for n in nodes.iter() {
        n.freeze(true);
    }
    let reports = disks.iter().map(|d| d.cut(&pids)).collect::<anyhow::Result<Vec<_>>>();
    for n in nodes.iter_mut() {
        n.kill9();
    }
    reports
}
