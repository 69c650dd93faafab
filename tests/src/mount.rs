//! A `cairn-fuse` mount for tests: started against a cluster's client config, waited for,
//! and unmounted (its process killed) when dropped, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Process;

#[derive(Debug)]
pub struct Mount {
    pub path: PathBuf,
    process: Process,
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*path.to_string_lossy()))
}

impl Mount {
    /// Mounts directory `subtree` of the cluster ("/": all of it) at `path`.
    pub async fn start(config: &Path, path: &Path, subtree: &str, log: &Path) -> anyhow::Result<Mount> {
        Mount::start_with(config, path, subtree, log, &[]).await
    }

    /// As `start`, with `extra` arguments for `cairn-fuse`.
    pub async fn start_with(
        config: &Path,
        path: &Path,
        subtree: &str,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(path)?;
        let mut args = vec![
            "--config".as_ref(),
            config.as_os_str(),
            "--mountpoint".as_ref(),
            path.as_os_str(),
            "--subtree".as_ref(),
            subtree.as_ref(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let mut mount = Mount {
            path: path.to_owned(),
            process: Process::start("cairn-fuse", &args, log)?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(path) {
            if let Some(status) = mount.process.exited() {
                anyhow::bail!(
                    "cairn-fuse exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "not mounted after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.process.kill9();
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
