//! A power-cut disk for tests: a FUSE file system that keeps every write in memory until
//! its file is fsynced and every directory change until its directory is fsynced, and on
//! command drops what was not synced, as a power cut does (see [`disk`] for the model).
//! A test tool, not a file system to keep data on.
//!
//! `cairn-powercut --backing DIR --mountpoint M --control SOCK` serves one disk. The
//! control socket takes one line, `cut PID...`: the processes named (stopped by the
//! caller, and killed by it afterwards) lose their power: their calls are refused from
//! then on and everything unsynced is dropped. It answers `ok bytes=B entries=E inodes=I`
//! with what was dropped, or `error ...`.

pub mod disk;
mod fs;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fuser::MountOption;
use tracing::{info, warn};

use crate::session;
use disk::Disk;
use fs::{PowerCutFs, State};

/// The file system type FUSE mounts report in `statfs`.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Serves the disk kept in `backing` at `mountpoint` until unmounted or sent SIGTERM or
/// SIGINT (then it unmounts, syncing everything as a clean unmount does).
pub fn serve(backing: &Path, mountpoint: &Path, control: &Path) -> anyhow::Result<()> {
    let disk = Disk::open(backing).with_context(|| format!("opening the disk in {}", backing.display()))?;
    let state = Arc::new(Mutex::new(State::new(disk)));
    match std::fs::remove_file(control) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", control.display())),
    }
    let listener = UnixListener::bind(control).with_context(|| format!("binding {}", control.display()))?;
    let for_control = state.clone();
    std::thread::spawn(move || serve_control(listener, for_control));
    let options = session::config(vec![MountOption::FSName("cairn-powercut".into())], 4);
    let mounted = fuser::spawn_mount(PowerCutFs::new(state), mountpoint, &options)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    info!(mountpoint = %mountpoint.display(), "power-cut disk mounted");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signalled = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        loop {
            tokio::select! {
                _ = term.recv() => return io::Result::Ok(true),
                _ = int.recv() => return Ok(true),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if mounted.guard.is_finished() {
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    if signalled {
        mounted.umount_and_join().context("unmounting")?;
    } else {
        mounted.join().context("serving")?;
    }
    Ok(())
}

fn serve_control(listener: UnixListener, state: Arc<Mutex<State>>) {
    for conn in listener.incoming() {
        let answer = conn.and_then(|c| answer(&c, &state));
        if let Err(e) = answer {
            warn!(error = %e, "control connection");
        }
    }
}

fn answer(conn: &UnixStream, state: &Mutex<State>) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let reply = match parse_cut(&line) {
        Ok(pids) => match state.lock().unwrap_or_else(|p| p.into_inner()).cut(&pids) {
            Ok(r) => {
                info!(
                    ?pids,
                    bytes = r.bytes,
                    entries = r.entries,
                    inodes = r.inodes,
                    "power cut"
                );
                format!("ok bytes={} entries={} inodes={}\n", r.bytes, r.entries, r.inodes)
            }
            Err(e) => format!("error {e}\n"),
        },
        Err(e) => format!("error {e}\n"),
    };
    (&*conn).write_all(reply.as_bytes())
}

/// The process ids of a `cut PID...` line.
fn parse_cut(line: &str) -> Result<Vec<u32>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("cut") {
        return Err(format!("unknown command {:?}: expected `cut PID...`", line.trim()));
    }
    words
        .map(|w| w.parse::<u32>().map_err(|_| format!("not a process id: {w:?}")))
        .collect()
}

/// Cuts the power of the disk served with control socket `control`, for the processes
/// `pids`; returns the disk's answer (`ok bytes=...`).
pub fn cut(control: &Path, pids: &[u32]) -> anyhow::Result<String> {
    let mut conn = UnixStream::connect(control).with_context(|| format!("connecting to {}", control.display()))?;
    let line = pids.iter().fold(String::from("cut"), |l, p| format!("{l} {p}"));
    conn.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply)?;
    let reply = reply.trim().to_owned();
    anyhow::ensure!(reply.starts_with("ok"), "power cut at {}: {reply}", control.display());
    Ok(reply)
}

/// Whether `path` is a FUSE mount now.
pub fn is_mounted(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::parse_cut;

    #[test]
    fn control_lines_are_checked() {
        assert_eq!(parse_cut("cut 12 34\n"), Ok(vec![12, 34]));
        assert_eq!(parse_cut("cut\n"), Ok(vec![]));
        assert!(parse_cut("drop 12\n").is_err());
        assert!(parse_cut("cut 12 x\n").is_err());
        assert!(parse_cut("cut -1\n").is_err());
    }
}
