//! `cairnctl local up|down` and `cairnctl status`: a whole cluster on loopback, every
//! node a real process. Halls are simulated as groups of processes: by default four
//! halls, each with one metadata voter and two dataservers, plus two logic nodes. The
//! cluster lives in one directory: `cluster.toml` (every member, read by `status`), one
//! config, data directory, log and pid file per process. `up` also mounts the cluster
//! (`cairn-fuse`, by default at `<dir>/mnt`); `down` unmounts it first. `kill-hall`
//! crashes a hall (SIGKILL to each of its processes) and `start-hall` brings it back;
//! `up` after a full power loss starts everything again.
//!
//! A test tool beside it: `up --power-cut-harness` puts every metadata voter's and
//! dataserver's data directory on a power-cut disk of its own (`cairn-powercut`, process
//! `disk-<node>`, kept under `<dir>/disks/<node>/`), and `power-cut` cuts the power of a
//! hall or of the whole site: its processes frozen, the unsynced writes and directory
//! changes of its disks dropped, the processes killed. A SIGKILL alone is a crash, not a
//! power cut: the kernel keeps what was written.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_common::config::{Config, SCRUB_BYTES_PER_SEC_DEFAULT};
use cairn_metadata::client::MetadataClient;
use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use serde::Serialize;

use crate::connect_when_ready;

/// How long `up` waits for the cluster to answer.
const HEALTH_WAIT: Duration = Duration::from_secs(120);
const STOP_WAIT: Duration = Duration::from_secs(10);
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// The mount's process name (`fuse.pid`, `fuse.log`) and the file naming its path.
const FUSE: &str = "fuse";
const MOUNT_FILE: &str = "mount.path";
/// Present in a cluster directory whose nodes keep their data on power-cut disks.
const HARNESS_MARK: &str = "power-cut-harness";
/// The prefix of a power-cut disk's process name (`disk-dataserver-3`).
const DISK_PREFIX: &str = "disk-";

#[derive(Debug, Clone)]
pub struct Layout {
    pub halls: u32,
    pub dataservers_per_hall: u32,
    pub logic_nodes: u32,
    pub base_port: u16,
}

/// One process of the local cluster.
#[derive(Debug, Clone)]
struct Node {
    /// "metadata-1", "dataserver-3", "logic-1": names its files in the directory.
    name: String,
    /// The hall it runs in, 1-based.
    hall: u32,
    binary: &'static str,
    args: Vec<String>,
    addr: SocketAddr,
    /// This process's own section of its config.
    section: String,
}

fn plan(dir: &Path, l: &Layout) -> anyhow::Result<(String, Vec<Node>)> {
    if l.halls < 3 {
        bail!(
            "--halls must be at least 3: the metadata group keeps a quorum only if losing one hall leaves a majority"
        );
    }
    let mut port = l.base_port;
    let mut next = || -> anyhow::Result<SocketAddr> {
        let p = port;
        port = port.checked_add(1).context("--base-port too high")?;
        Ok(SocketAddr::from(([127, 0, 0, 1], p)))
    };
    let (mut shared, mut nodes) = (String::new(), Vec::new());
    for h in 1..=l.halls {
        let addr = next()?;
        shared += &format!("[[metadata_nodes]]\nnode_id = {h}\nhall = \"hall-{h}\"\naddr = \"{addr}\"\n");
        nodes.push(Node {
            name: format!("metadata-{h}"),
            hall: h,
            binary: "cairn-metadata",
            args: vec!["serve".into(), "--bootstrap".into()],
            addr,
            section: format!(
                "[metadata]\nnode_id = {h}\ndata_dir = \"{}\"\n",
                data_dir(dir, &format!("metadata-{h}")).display()
            ),
        });
    }
    // Every dataserver of a local cluster shares this machine's one disk: together they
    // scrub at the rate one dataserver would, not a multiple of it.
    let scrub = SCRUB_BYTES_PER_SEC_DEFAULT / u64::from((l.halls * l.dataservers_per_hall).max(1));
    for h in 1..=l.halls {
        for j in 0..l.dataservers_per_hall {
            let id = (h - 1) * l.dataservers_per_hall + j + 1;
            let addr = next()?;
            shared += &format!("[[dataservers]]\nnode_id = {id}\nhall = \"hall-{h}\"\naddr = \"{addr}\"\n");
            nodes.push(Node {
                name: format!("dataserver-{id}"),
                hall: h,
                binary: "cairn-dataserver",
                args: vec!["serve".into()],
                addr,
                section: format!(
                    "[dataserver]\nnode_id = {id}\nhall = \"hall-{h}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n\
                     scrub_bytes_per_sec = {scrub}\n",
                    data_dir(dir, &format!("dataserver-{id}")).display()
                ),
            });
        }
    }
    for i in 1..=l.logic_nodes {
        let addr = next()?;
        // Logic nodes go round the halls, so losing a hall takes some of them too.
        let h = (i - 1) % l.halls + 1;
        shared += &format!("[[logic_nodes]]\naddr = \"{addr}\"\nhall = \"hall-{h}\"\n");
        nodes.push(Node {
            name: format!("logic-{i}"),
            hall: h,
            binary: "cairn-logic",
            args: vec!["serve".into()],
            addr,
            section: format!("[logic]\nlisten = \"{addr}\"\n"),
        });
    }
    // Every node's `GET /metrics` port comes after the cluster's service ports, the
    // dataservers' first (they were served before the others), so adding them moved none.
    for binary in ["cairn-dataserver", "cairn-metadata", "cairn-logic"] {
        for n in nodes.iter_mut().filter(|n| n.binary == binary) {
            n.section += &format!("metrics_listen = \"{}\"\n", next()?);
        }
    }
    Ok((shared, nodes))
}

/// Whether the cluster in `dir` keeps its data on power-cut disks.
fn harnessed(dir: &Path) -> bool {
    dir.join(HARNESS_MARK).exists()
}

/// Where node `name` keeps its data: on its power-cut disk in a harnessed cluster.
fn data_dir(dir: &Path, name: &str) -> PathBuf {
    if harnessed(dir) {
        disk_dir(dir, name).join("mnt/data")
    } else {
        dir.join(name)
    }
}

/// The folder of node `name`'s power-cut disk: `backing/`, `mnt/`, `control.sock`.
fn disk_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("disks").join(name)
}

/// Whether `binary` keeps data (and so gets a power-cut disk in a harnessed cluster).
fn keeps_data(binary: &str) -> bool {
    binary != "cairn-logic"
}

/// Mounts node `name`'s power-cut disk unless it is mounted already.
async fn ensure_disk(dir: &Path, name: &str) -> anyhow::Result<()> {
    let (disk, process) = (disk_dir(dir, name), format!("{DISK_PREFIX}{name}"));
    let mountpoint = disk.join("mnt");
    if pid_of(dir, &process).is_some() {
        return Ok(());
    }
    if is_mounted(&mountpoint) {
        // Its process is gone: a dead mount, detached before mounting again.
        let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
    }
    std::fs::create_dir_all(&mountpoint)?;
    let args = [
        OsStr::new("--backing"),
        disk.join("backing").as_os_str(),
        OsStr::new("--mountpoint"),
        mountpoint.as_os_str(),
        OsStr::new("--control"),
        disk.join("control.sock").as_os_str(),
    ]
    .map(OsStr::to_owned);
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    spawn(dir, &process, &sibling_binary("cairn-powercut")?, &args)?;
    let deadline = Instant::now() + MOUNT_WAIT;
    while !cairn_fuse::powercut::is_mounted(&mountpoint) {
        if pid_of(dir, &process).is_none() || Instant::now() > deadline {
            bail!(
                "cairn-powercut did not mount {} (see {})",
                mountpoint.display(),
                dir.join(format!("{process}.log")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Cuts the power of `hall` (every hall with `None`): its processes frozen, the unsynced
/// state of their power-cut disks dropped, the processes killed. Returns the processes
/// killed and each disk's report of what it dropped.
pub fn power_cut(dir: &Path, hall: Option<u32>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    if !harnessed(dir) {
        bail!(
            "the cluster in {} keeps its data on the real disk: start it with `cairnctl local up --power-cut-harness`",
            dir.display()
        );
    }
    let (_, _, nodes) = recorded(dir)?;
    if let Some(h) = hall {
        hall_members(dir, h)?;
    }
    let victims: Vec<(&Node, Pid)> = nodes
        .iter()
        .filter(|n| hall.is_none_or(|h| n.hall == h))
        .filter_map(|n| pid_of(dir, &n.name).map(|pid| (n, pid)))
        .collect();
    for (n, pid) in &victims {
        kill_process(*pid, Signal::STOP).with_context(|| format!("freezing {}", n.name))?;
    }
    let pids: Vec<u32> = victims
        .iter()
        .map(|(_, pid)| pid.as_raw_nonzero().get() as u32)
        .collect();
    let mut reports = Vec::new();
    for n in nodes
        .iter()
        .filter(|n| keeps_data(n.binary) && hall.is_none_or(|h| n.hall == h))
    {
        let report = cairn_fuse::powercut::cut(&disk_dir(dir, &n.name).join("control.sock"), &pids)
            .with_context(|| format!("the power-cut disk of {}", n.name))?;
        reports.push(format!("{}: {report}", n.name));
    }
    for (n, pid) in &victims {
        kill_process(*pid, Signal::KILL).with_context(|| format!("killing {}", n.name))?;
    }
    for (_, pid) in &victims {
        while running(*pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok((victims.into_iter().map(|(n, _)| n.name.clone()).collect(), reports))
}

/// Where `cairnctl local` keeps its cluster unless told otherwise.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/cairn/local")
}

/// The running process recorded in `<name>.pid`, if it still runs.
fn pid_of(dir: &Path, name: &str) -> Option<Pid> {
    let raw: i32 = std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Pid::from_raw(raw).filter(|pid| running(*pid))
}

/// The executable that process `name` runs, while it runs. It stays runnable through
/// `/proc` even once the file it was started from has been replaced.
pub fn running_binary(dir: &Path, name: &str) -> Option<PathBuf> {
    pid_of(dir, name).map(|pid| PathBuf::from(format!("/proc/{}/exe", pid.as_raw_nonzero())))
}

/// Whether `pid` runs: a zombie (dead, not yet reaped by whoever adopted it) does not.
fn running(pid: Pid) -> bool {
    if test_kill_process(pid).is_err() {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else {
        return false;
    };
    // The state is the field after the command name, which ends with the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Starts those of `nodes` that are not running, with the binaries in `binaries` (else
/// those beside cairnctl); returns how many it started.
async fn start(dir: &Path, shared: &str, nodes: &[Node], binaries: Option<&Path>) -> anyhow::Result<usize> {
    let mut started = 0;
    for n in nodes {
        if pid_of(dir, &n.name).is_some() {
            continue;
        }
        if harnessed(dir) && keeps_data(n.binary) {
            ensure_disk(dir, &n.name).await?;
        }
        let config = dir.join(format!("{}.toml", n.name));
        std::fs::write(&config, format!("{}\n{shared}", n.section))?;
        let mut args: Vec<&OsStr> = n.args.iter().map(OsStr::new).collect();
        args.extend([OsStr::new("--config"), config.as_os_str()]);
        let binary = match binaries {
            Some(d) => d.join(n.binary),
            None => sibling_binary(n.binary)?,
        };
        spawn(dir, &n.name, &binary, &args)?;
        started += 1;
    }
    Ok(started)
}

/// The layout of the cluster recorded in `dir`, and its plan (which `up` wrote).
fn recorded(dir: &Path) -> anyhow::Result<(Config, String, Vec<Node>)> {
    let cluster_file = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&cluster_file)
        .with_context(|| format!("no local cluster in {}: run `cairnctl local up` first", dir.display()))?;
    let c = Config::parse(&text).with_context(|| format!("reading {}", cluster_file.display()))?;
    let halls = c.metadata_nodes.len() as u32;
    let layout = Layout {
        halls,
        dataservers_per_hall: c.dataservers.len() as u32 / halls.max(1),
        logic_nodes: c.logic_nodes.len() as u32,
        base_port: c.metadata_nodes.first().map_or(0, |n| n.addr.port()),
    };
    let (shared, nodes) = plan(dir, &layout)?;
    if !same_cluster(&text, &shared) {
        bail!("{} was not written by `cairnctl local up`", cluster_file.display());
    }
    Ok((c, shared, nodes))
}

/// Whether two cluster files name the same members at the same addresses. An older
/// cairnctl wrote logic nodes without their hall: that is the same cluster.
fn same_cluster(a: &str, b: &str) -> bool {
    let members = |text: &str| {
        Config::parse(text).ok().map(|mut c| {
            for l in &mut c.logic_nodes {
                l.hall = None;
            }
            c
        })
    };
    members(a).is_some_and(|x| Some(x) == members(b))
}

/// The processes of the local cluster in `dir`: name and hall (1-based).
pub fn members(dir: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    Ok(recorded(dir)?.2.into_iter().map(|n| (n.name, n.hall)).collect())
}

/// The names of `hall`'s processes.
pub fn hall_members(dir: &Path, hall: u32) -> anyhow::Result<Vec<String>> {
    let all = members(dir)?;
    let halls = all.iter().map(|m| m.1).max().unwrap_or(0);
    if hall == 0 || hall > halls {
        bail!("no hall {hall}: the cluster has halls 1 to {halls}");
    }
    Ok(all.into_iter().filter(|m| m.1 == hall).map(|m| m.0).collect())
}

/// Stops process `name` as an operator would: SIGTERM (a logic node drains, the others
/// shut down), SIGKILL if it has not exited after `STOP_WAIT`.
pub fn stop(dir: &Path, name: &str) {
    if let Some(pid) = pid_of(dir, name) {
        terminate(&[(name.to_owned(), pid)]);
    }
}

/// SIGTERMs `processes`, waits up to `STOP_WAIT` for them all, SIGKILLs the rest.
fn terminate(processes: &[(String, Pid)]) {
    for (_, pid) in processes {
        let _ = kill_process(*pid, Signal::TERM);
    }
    let deadline = Instant::now() + STOP_WAIT;
    for (name, pid) in processes {
        while running(*pid) {
            if Instant::now() > deadline {
                eprintln!("{name} did not stop in {STOP_WAIT:?}: killed");
                let _ = kill_process(*pid, Signal::KILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILLs those of `names` that run, as a power cut would; returns the ones killed.
pub fn kill(dir: &Path, names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut killed = Vec::new();
    for name in names {
        if let Some(pid) = pid_of(dir, name) {
            kill_process(pid, Signal::KILL).with_context(|| format!("killing {name}"))?;
            killed.push(name.clone());
        }
    }
    Ok(killed)
}

/// Starts those of `names` (every process with `None`) that do not run, without waiting
/// for them, with the binaries in `binaries` (else those beside cairnctl); returns how
/// many it started.
pub async fn start_stopped(dir: &Path, names: Option<&[String]>, binaries: Option<&Path>) -> anyhow::Result<usize> {
    let (_, shared, nodes) = recorded(dir)?;
    let chosen: Vec<Node> = nodes
        .into_iter()
        .filter(|n| names.is_none_or(|names| names.contains(&n.name)))
        .collect();
    start(dir, &shared, &chosen, binaries).await
}

/// Waits until every node of the cluster in `dir` answers.
pub async fn wait_healthy_in(dir: &Path) -> anyhow::Result<()> {
    wait_healthy(&recorded(dir)?.0).await
}

/// SIGKILLs every process of `hall`; returns their names.
pub fn kill_hall(dir: &Path, hall: u32) -> anyhow::Result<Vec<String>> {
    kill(dir, &hall_members(dir, hall)?)
}

/// Starts the processes of `hall` that are not running and waits until the cluster is
/// healthy again.
pub async fn start_hall(dir: &Path, hall: u32) -> anyhow::Result<usize> {
    let started = start_stopped(dir, Some(&hall_members(dir, hall)?), None).await?;
    wait_healthy_in(dir).await?;
    Ok(started)
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating cairnctl")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to cairnctl: build the workspace's binaries first",
            path.display()
        );
    }
    Ok(path)
}

/// Starts the cluster in `dir` (processes already running are kept), waits until it is
/// healthy and, with `mount`, mounts it there. With `power_cut_harness`, a new cluster
/// keeps its data on power-cut disks (a cluster started so keeps doing so).
pub async fn up(dir: &Path, layout: &Layout, mount: Option<&Path>, power_cut_harness: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cluster_file = dir.join("cluster.toml");
    if power_cut_harness && !harnessed(dir) {
        if cluster_file.exists() {
            bail!(
                "{} holds a cluster whose data is on the real disk: --power-cut-harness needs a new directory",
                dir.display()
            );
        }
        std::fs::write(
            dir.join(HARNESS_MARK),
            "data directories on power-cut disks (cairn-powercut)\n",
        )?;
    }
    let (shared, nodes) = plan(dir, layout)?;
    if let Ok(existing) = std::fs::read_to_string(&cluster_file) {
        if !same_cluster(&existing, &shared) {
            bail!(
                "{} holds a different cluster (other ports or sizes); run `cairnctl local down --dir {}` \
                 and remove the directory, or choose another --dir",
                dir.display(),
                dir.display()
            );
        }
    }
    for n in nodes.iter().filter(|n| pid_of(dir, &n.name).is_none()) {
        if TcpListener::bind(n.addr).is_err() {
            bail!(
                "port {} for {} is taken by another program; choose another --base-port",
                n.addr.port(),
                n.name
            );
        }
    }
    std::fs::write(&cluster_file, &shared)?;
    let started = start(dir, &shared, &nodes, None).await?;
    println!("{started} processes started, {} already running", nodes.len() - started);
    wait_healthy(&Config::load(&cluster_file)?).await?;
    println!("cluster healthy; configuration in {}", cluster_file.display());
    if let Some(path) = mount {
        mount_at(dir, &cluster_file, path).await?;
    }
    Ok(())
}

/// Starts `binary` with `args` in the background, its output appended to `<name>.log`
/// and its pid in `<name>.pid`.
fn spawn(dir: &Path, name: &str, binary: &Path, args: &[&OsStr]) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string())?;
    Ok(())
}

/// Whether `path` is a mount point now.
fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*path))
}

/// Mounts the cluster at `path` with `cairn-fuse` (kept if this cluster's mount is there).
async fn mount_at(dir: &Path, cluster_file: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let path = path.canonicalize()?;
    if is_mounted(&path) {
        if pid_of(dir, FUSE).is_some() {
            println!("mounted at {}", path.display());
            return Ok(());
        }
        bail!(
            "{} is already a mount point of something else; choose another --mount",
            path.display()
        );
    }
    let args = [
        OsStr::new("--config"),
        cluster_file.as_os_str(),
        OsStr::new("--mountpoint"),
        path.as_os_str(),
    ];
    spawn(dir, FUSE, &sibling_binary("cairn-fuse")?, &args)?;
    std::fs::write(dir.join(MOUNT_FILE), path.as_os_str().as_encoded_bytes())?;
    let deadline = Instant::now() + MOUNT_WAIT;
    while !is_mounted(&path) {
        if pid_of(dir, FUSE).is_none() || Instant::now() > deadline {
            bail!(
                "cairn-fuse did not mount {} (see {})",
                path.display(),
                dir.join(format!("{FUSE}.log")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("mounted at {}", path.display());
    Ok(())
}

/// Waits until every member answers on its own: each metadata voter, each dataserver and
/// each logic node (a namespace request through it), which is what `status` calls healthy.
async fn wait_healthy(c: &Config) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + HEALTH_WAIT;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let meta = MetadataClient::new(c.metadata_nodes.iter().map(|n| n.addr.to_string()).collect(), left());
    meta.statfs().await.context("metadata group")?;
    for n in &c.metadata_nodes {
        while let Err(e) = crate::metadata_admin::status(&n.addr.to_string()).await {
            if left().is_zero() {
                return Err(e).with_context(|| format!("metadata voter {}", n.node_id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for d in &c.dataservers {
        connect_when_ready(d.addr, left())
            .await
            .with_context(|| format!("dataserver {}", d.node_id))?;
    }
    for (i, l) in c.logic_nodes.iter().enumerate() {
        let client = cairn_client::CairnClient::new(vec![l.addr], c.erasure.clone(), left());
        client
            .getattr(1)
            .await
            .with_context(|| format!("logic node {} ({})", i + 1, l.addr))?;
    }
    Ok(())
}

pub fn down(dir: &Path) -> anyhow::Result<()> {
    // Every process running now, the mount's included (unmounting ends it); pid files
    // of processes gone already are removed too.
    let (mut pids, mut pid_files) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(node) = name.strip_suffix(".pid") {
            if let Some(pid) = pid_of(dir, node) {
                pids.push((node.to_owned(), pid));
            }
            pid_files.push(dir.join(&name));
        }
    }
    // The mount first: its process dying would leave a dead mount point behind.
    if let Ok(path) = std::fs::read_to_string(dir.join(MOUNT_FILE)) {
        let path = PathBuf::from(path);
        if is_mounted(&path) {
            let ok = Command::new("umount").arg(&path).status().is_ok_and(|s| s.success());
            if !ok {
                eprintln!("{} is busy: detached (lazy unmount)", path.display());
                let _ = Command::new("umount").arg("-l").arg(&path).status();
            }
        }
        std::fs::remove_file(dir.join(MOUNT_FILE))?;
    }
    for file in &pid_files {
        std::fs::remove_file(file)?;
    }
    // Power-cut disks last: a node stops cleanly only while its disk is there.
    let (disks, nodes): (Vec<_>, Vec<_>) = pids.into_iter().partition(|(name, _)| name.starts_with(DISK_PREFIX));
    terminate(&nodes);
    terminate(&disks);
    println!("{} processes stopped", nodes.len() + disks.len());
    Ok(())
}

#[derive(Debug, Serialize)]
struct NodeRow {
    kind: &'static str,
    id: String,
    hall: String,
    addr: String,
    healthy: bool,
    /// Dataservers: the newest data-plane protocol version they read.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<u32>,
    detail: String,
}

fn dataserver_row(rows: &mut [NodeRow], id: u32) -> Option<&mut NodeRow> {
    rows.iter_mut()
        .find(|r| r.kind == "dataserver" && r.id == id.to_string())
}

pub async fn status(config: &Path, json: bool) -> anyhow::Result<()> {
    let c = Config::load(config)?;
    let mut rows = Vec::new();
    let (mut leader, mut entry_format) = (None, None);
    for n in &c.metadata_nodes {
        let s = crate::metadata_admin::status(&n.addr.to_string()).await;
        if let Ok(s) = &s {
            if s.role == "leader" {
                leader = Some(n.node_id);
                entry_format = Some(s.entry_format);
            }
        }
        rows.push(NodeRow {
            kind: "metadata",
            id: n.node_id.to_string(),
            hall: n.hall.clone(),
            addr: n.addr.to_string(),
            healthy: s.is_ok(),
            protocol: None,
            detail: match s {
                Ok(s) => format!(
                    "{} term {} applied {}, entry format {} (build applies {}..={})",
                    s.role, s.term, s.applied_index, s.entry_format, s.entry_format_min, s.entry_format_max
                ),
                Err(e) => format!("unreachable: {e}"),
            },
        });
    }
    let mut capacity = (0u64, 0u64);
    for d in &c.dataservers {
        let s = match cairn_dataserver::client::DataserverClient::connect(d.addr).await {
            Ok(client) => client.stat().await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        if let Ok(s) = &s {
            capacity.0 += s.capacity_bytes;
            capacity.1 += s.free_bytes;
        }
        rows.push(NodeRow {
            kind: "dataserver",
            id: d.node_id.to_string(),
            hall: d.hall.clone(),
            addr: d.addr.to_string(),
            healthy: s.as_ref().is_ok_and(|s| s.corrupt_blocks == 0),
            protocol: s.as_ref().ok().map(|s| s.protocol_version),
            detail: match s {
                Ok(s) => format!(
                    "{} shards, {} GiB free, {} corrupt blocks, {} protocol {}",
                    s.shard_count,
                    s.free_bytes >> 30,
                    s.corrupt_blocks,
                    s.build_version,
                    s.protocol_version
                ),
                Err(e) => format!("unreachable: {e}"),
            },
        });
    }
    for (i, l) in c.logic_nodes.iter().enumerate() {
        let up = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(l.addr))
            .await
            .is_ok_and(|r| r.is_ok());
        rows.push(NodeRow {
            kind: "logic",
            id: (i + 1).to_string(),
            hall: l.hall.clone().unwrap_or_else(|| "-".into()),
            addr: l.addr.to_string(),
            healthy: up,
            protocol: None,
            detail: if up { "listening".into() } else { "unreachable".into() },
        });
    }
    // Draining dataservers (how many referenced shards each still holds) and those the
    // metadata leader has not heard from lately.
    let (draining, silent) = match leader {
        Some(_) => crate::drain::remaining(&c).await.unwrap_or_default(),
        None => (Vec::new(), Vec::new()),
    };
    for &id in &silent {
        if let Some(r) = dataserver_row(&mut rows, id) {
            // It may answer here, but the leader will mark it lost if this goes on.
            r.healthy = false;
            r.detail = format!("SILENT: no heartbeat reaches the metadata leader; {}", r.detail);
        }
    }
    for d in &draining {
        if let Some(r) = dataserver_row(&mut rows, d.node) {
            let what = if d.lost { "LOST" } else { "DRAINING" };
            r.detail = format!("{what}: {} shards to rebuild; {}", d.shards_left, r.detail);
        }
    }
    let healthy = rows.iter().all(|r| r.healthy);
    if json {
        let out = serde_json::json!({
            "healthy": healthy,
            "metadata_leader": leader,
            "entry_format": entry_format,
            "silent_dataservers": silent,
            "capacity_bytes": capacity.0,
            "free_bytes": capacity.1,
            "nodes": rows,
            "draining": draining
                .iter()
                .map(|d| serde_json::json!({"dataserver": d.node, "shards_left": d.shards_left, "lost": d.lost}))
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cluster {}   metadata leader: {}   capacity {} GiB, free {} GiB",
        if healthy { "HEALTHY" } else { "DEGRADED" },
        leader.map_or("none".to_owned(), |l| format!("node {l}")),
        capacity.0 >> 30,
        capacity.1 >> 30
    );
    println!(
        "{:<11} {:>3} {:<8} {:<16} {:<8} detail",
        "kind", "id", "hall", "addr", "health"
    );
    for r in rows {
        println!(
            "{:<11} {:>3} {:<8} {:<16} {:<8} {}",
            r.kind,
            r.id,
            r.hall,
            r.addr,
            if r.healthy { "ok" } else { "DOWN" },
            r.detail
        );
    }
    Ok(())
}
