//! Helpers for end-to-end tests: start real Cairn processes on loopback, each in its own
//! temporary directory, and stop them (SIGKILL) when the handle is dropped, even when a
//! test fails.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_dataserver::client::DataserverClient;
use rustix::process::{kill_process, Pid, Signal};

pub mod cluster;
pub mod local;
pub mod metadata;
pub mod metrics;
pub mod mount;
pub mod powercut;

/// Where the workspace's binaries are: `CAIRN_BIN_DIR`, or the profile directory that
/// holds this test executable (`target/<profile>/deps/..`).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("CAIRN_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins) or set CAIRN_BIN_DIR",
        path.display()
    );
    path
}

/// The Python of the test virtual environment (with torch), where `scripts/test.sh` puts it.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let venv = std::env::var_os("CAIRN_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn/venv")))
        .context("neither CAIRN_VENV nor HOME is set")?;
    let python = venv.join("bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} not found: scripts/test.sh installs torch into that virtual environment",
        python.display()
    );
    Ok(python)
}

/// First port tests hand out, and the end of the range: below Linux's ephemeral ports
/// (32768 and up), so that a node restarted on its port never finds it taken by some
/// connection's local end meanwhile.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// Ports this test process has handed out. A cluster takes all its ports before it
/// starts any node, so a port handed out but not yet bound still looks free: without this
/// list one node's metrics port could be another's listen port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `n` consecutive TCP ports on 127.0.0.1, free now, outside the ephemeral range, and
/// never handed out before by this process.
pub fn free_ports(n: u16) -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let base = TEST_PORTS.start + rand::random::<u16>() % (TEST_PORTS.end - TEST_PORTS.start - n);
        let ports = base..base + n;
        if handed_out.range(ports.clone()).next().is_none()
            && ports.clone().all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed_out.extend(ports);
            return base;
        }
    }
    panic!("no {n} consecutive free ports in {TEST_PORTS:?}");
}

/// A free TCP port on 127.0.0.1 (see `free_ports`).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// A child process, killed with SIGKILL (as a power loss looks to it) when dropped, even
/// when a test fails.
#[derive(Debug, Default)]
pub struct Process(Option<Child>);

impl Process {
    /// Starts the workspace binary `bin` with `args`, appending its output to `log`.
    pub fn start(bin: &str, args: &[&std::ffi::OsStr], log: &Path) -> anyhow::Result<Process> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(bin_path(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {bin}"))?;
        Ok(Process(Some(child)))
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn alive(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its process id, while it has one.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// SIGSTOP (`frozen`) or SIGCONT: a process that stalls for a while (a paused VM, a
    /// swap storm) and then runs on, unaware of the time it lost.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.0 {
            let signal = if frozen { Signal::STOP } else { Signal::CONT };
            let _ = kill_process(Pid::from_child(c), signal);
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A dataserver process with its own data directory and config.
#[derive(Debug)]
pub struct Dataserver {
    pub dir: tempfile::TempDir,
    data: PathBuf,
    pub addr: SocketAddr,
    pub config: PathBuf,
    child: Process,
}

impl Dataserver {
    /// Writes a config (the `[erasure]` defaults plus `extra` lines in `[dataserver]`)
    /// and starts the process; returns once it answers `stat`.
    pub async fn start(extra: &str) -> anyhow::Result<Dataserver> {
        Dataserver::start_in(1, "hall-a", extra).await
    }

    /// Like [`Dataserver::start`], as node `node_id` in hall `hall`.
    pub async fn start_in(node_id: u32, hall: &str, extra: &str) -> anyhow::Result<Dataserver> {
        Dataserver::start_with(node_id, hall, extra, None).await
    }

    /// Like [`Dataserver::start`], with its data directory at `data` (on a power-cut
    /// disk, say) instead of in its own directory.
    pub async fn start_on(data: PathBuf, extra: &str) -> anyhow::Result<Dataserver> {
        Dataserver::start_with(1, "hall-a", extra, Some(data)).await
    }

    async fn start_with(node_id: u32, hall: &str, extra: &str, data: Option<PathBuf>) -> anyhow::Result<Dataserver> {
        let dir = tempfile::tempdir()?;
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let config = dir.path().join("dataserver.toml");
        std::fs::write(
            &config,
            format!(
                "[dataserver]\nnode_id = {node_id}\nhall = \"{hall}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n{extra}\n",
                data.display()
            ),
        )?;
        let mut ds = Dataserver {
            dir,
            data,
            addr,
            config,
            child: Process::default(),
        };
        ds.restart().await?;
        Ok(ds)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Its process (while it runs), for a power cut.
    pub fn process(&mut self) -> &mut Process {
        &mut self.child
    }

    /// The file of shard `id` in this dataserver's store, if it holds one.
    pub fn shard_file(&self, id: cairn_common::ids::ShardId) -> Option<PathBuf> {
        find(&self.data_dir(), &id.to_string())
    }

    /// Starts the process again (after `kill9`) and waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.child = Process::start(
            "cairn-dataserver",
            &["serve".as_ref(), "--config".as_ref(), self.config.as_os_str()],
            &self.dir.path().join("dataserver.log"),
        )?;
        self.wait_ready(Duration::from_secs(60)).await?;
        Ok(started.elapsed())
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.exited() {
                bail!("dataserver exited with {status}; log:\n{}", self.log());
            }
            if let Ok(c) = DataserverClient::connect(self.addr).await {
                if c.stat().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("dataserver not ready after {limit:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dataserver.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }

    /// SIGKILL, as a power loss looks to the process.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    pub async fn client(&self) -> anyhow::Result<DataserverClient> {
        Ok(DataserverClient::connect(self.addr).await?)
    }
}

/// The file named `name` under `dir`, searched recursively.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if entry.file_name().to_string_lossy() == name {
            return Some(path);
        }
    }
    None
}
