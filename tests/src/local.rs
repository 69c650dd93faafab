//! A cluster started by `cairnctl local up` in a temporary directory on free ports, and
//! stopped (`cairnctl local down`) when dropped, even when a test fails.

use std::path::Path;
use std::process::{Command, Output};

use crate::{bin_path, free_ports};

/// Ports of the default local cluster: 4 voters, 8 dataservers, 2 logic nodes, then the
/// metrics endpoints of the dataservers, the voters and the logic nodes.
pub const PORTS: u16 = 28;

pub fn cairnctl(args: &[&str]) -> Output {
    Command::new(bin_path("cairnctl"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cairnctl {args:?}: {e}"))
}

/// `n` consecutive free loopback ports.

#[derive(Debug)]
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub base_port: u16,
}

impl LocalCluster {
    /// `cairnctl local up` of the default cluster, without a mount.
    pub fn up() -> anyhow::Result<LocalCluster> {
        LocalCluster::up_with(&[])
    }

    /// [`LocalCluster::up`] with more arguments to `cairnctl local up`.
    pub fn up_with(args: &[&str]) -> anyhow::Result<LocalCluster> {
        let cluster = LocalCluster {
            dir: tempfile::tempdir()?,
            base_port: free_ports(PORTS),
        };
        let (dir, port) = (cluster.dir_arg(), cluster.base_port.to_string());
        let mut all = vec!["local", "up", "--no-mount", "--dir", &dir, "--base-port", &port];
        all.extend_from_slice(args);
        let up = cairnctl(&all);
        anyhow::ensure!(
            up.status.success(),
            "cairnctl local up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        Ok(cluster)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn dir_arg(&self) -> String {
        self.dir.path().display().to_string()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = cairnctl(&["local", "down", "--dir", &self.dir_arg()]);
    }
}
