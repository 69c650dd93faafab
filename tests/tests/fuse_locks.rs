//! Locks through two real FUSE mounts of one cluster (two machines, as far as the locks
//! can tell): POSIX record locks and flock exclude each other's holders across mounts, a
//! waiter gets the lock when it frees and reads what the holder wrote under it, and
//! neither a killed process nor a dead mount holds a lock for good.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use cairn_common::proto::metadata::{meta_reply, meta_request::Op, StatFs};
use cairn_tests::cluster::{small_stripes, FileCluster};
use cairn_tests::mount::Mount;

/// Lease of the locks of a mount in this test (the default is 30 s).
const LEASE_SECS: u64 = 3;

/// A Python process that takes commands, one per line, on one open file, and answers
/// each with one line: "ok ...", or "err ERRNO".
const AGENT: &str = r#"
import fcntl, os, struct, sys
fd = None
kinds = {"r": fcntl.LOCK_SH, "w": fcntl.LOCK_EX, "u": fcntl.LOCK_UN}
for line in sys.stdin:
    cmd, *a = line.split()
    try:
        out = ""
        if cmd == "open":
            fd = os.open(a[0], os.O_RDWR)
        elif cmd == "lockf":  # kind wait|nb start len
            nb = fcntl.LOCK_NB if a[1] == "nb" and a[0] != "u" else 0
            fcntl.lockf(fd, kinds[a[0]] | nb, int(a[3]), int(a[2]))
        elif cmd == "flock":  # kind wait|nb
            fcntl.flock(fd, kinds[a[0]] | (fcntl.LOCK_NB if a[1] == "nb" else 0))
        elif cmd == "ofd":  # kind wait|nb start len: a lock of the open file, not the process
            t = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}[a[0]]
            op = fcntl.F_OFD_SETLKW if a[1] == "wait" else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, op, struct.pack("hhqqi", t, 0, int(a[2]), int(a[3]), 0))
        elif cmd == "getlk":  # kind start len -> type start len pid
            t = fcntl.F_WRLCK if a[0] == "w" else fcntl.F_RDLCK
            got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", t, 0, int(a[1]), int(a[2]), 0))
            t, _, start, length, pid = struct.unpack("hhqqi", got)
            names = {fcntl.F_RDLCK: "r", fcntl.F_WRLCK: "w", fcntl.F_UNLCK: "u"}
            out = f" {names[t]} {start} {length} {pid}"
        elif cmd == "read":
            out = " " + os.pread(fd, 100, 0).decode()
        elif cmd == "write":
            os.pwrite(fd, a[0].encode(), 0)
        elif cmd == "fsync":
            os.fsync(fd)
        elif cmd == "close":
            os.close(fd)
        print("ok" + out, flush=True)
    except OSError as e:
        print(f"err {e.errno}", flush=True)
    except ValueError as e:
        print(f"err {e}", flush=True)
"#;

struct Agent {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Agent {
    fn start(file: &Path) -> anyhow::Result<Agent> {
        let mut child = Command::new("python3")
            .args(["-u", "-c", AGENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("python3 starts")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent { child, stdin, lines };
        agent.ask(&format!("open {}", file.display()))?;
        Ok(agent)
    }

    fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        Ok(self.stdin.flush()?)
    }

    fn answer(&self, within: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(within).context("no answer in time")
    }

    /// Runs `cmd` and expects it to succeed; returns what follows "ok".
    fn ask(&mut self, cmd: &str) -> anyhow::Result<String> {
        self.send(cmd)?;
        let a = self.answer(Duration::from_secs(20))?;
        match a.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("{cmd}: {a}"),
        }
    }

    /// Runs `cmd` and expects EAGAIN (EACCES for lockf's F_SETLK, as POSIX allows).
    fn refused(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.send(cmd)?;
        let a = self.answer(Duration::from_secs(20))?;
        ensure!(
            a == format!("err {}", libc::EAGAIN) || a == format!("err {}", libc::EACCES),
            "{cmd}: expected a conflict, got {a:?}"
        );
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        Ok(())
    }

    /// Whether the process ends within `limit` (after a kill).
    fn ends_within(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_exclude_across_mounts_and_go_with_their_holders() -> anyhow::Result<()> {
    let cluster = FileCluster::start(2, small_stripes()).await?;
    let tmp = tempfile::tempdir()?;
    let config = cluster.client_config()?;
    let lease = LEASE_SECS.to_string();
    let extra = ["--lock-lease-secs", lease.as_str()];
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a_log = cluster.dir.path().join("fuse-a.log");
    let b_log = cluster.dir.path().join("fuse-b.log");
    let mount_a = Mount::start_with(&config, &a_dir, "/", &a_log, &extra).await?;
    let _mount_b = Mount::start_with(&config, &b_dir, "/", &b_log, &extra).await?;
    std::fs::write(a_dir.join("shared"), b"v1")?;
    let (a, b) = (a_dir.join("shared"), b_dir.join("shared"));

    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // A write lock on one mount: the other may neither read- nor write-lock any of it,
        // and F_GETLK there names the holder.
        let mut holder = Agent::start(&a)?;
        let mut other = Agent::start(&b)?;
        holder.ask("lockf w nb 0 0")?;
        other.refused("lockf w nb 0 0")?;
        other.refused("lockf r nb 100 10")?;
        let seen = other.ask("getlk r 5 1")?;
        ensure!(seen == format!("w 0 0 {}", holder.pid()), "F_GETLK: {seen}");

        // A waiter on the other mount read the file before; it gets the lock once the
        // holder writes and closes, and then reads what the holder wrote.
        ensure!(other.ask("read")? == "v1");
        other.send("lockf w wait 0 0")?;
        std::thread::sleep(Duration::from_millis(500));
        ensure!(other.answer(Duration::ZERO).is_err(), "the waiter got a held lock");
        holder.ask("write v2")?;
        holder.ask("close")?;
        ensure!(other.answer(Duration::from_secs(10))? == "ok", "the waiter got no lock");
        let read = other.ask("read")?;
        ensure!(
            read == "v2",
            "read {read:?} under the lock, not what its last holder wrote"
        );

        // Byte ranges: the other mount now holds bytes 0..=99 only; a read lock there
        // shares with nobody, ranges beside it are free.
        other.ask("lockf u nb 100 0")?;
        let mut third = Agent::start(&a)?;
        third.ask("lockf w nb 100 50")?;
        third.refused("lockf r nb 99 2")?;
        other.ask("lockf r nb 0 100")?;
        third.ask("lockf r nb 0 50")?;
        ensure!(third.ask("getlk w 0 10")? == format!("r 0 100 {}", other.pid()));
        drop(third);

        // A holder killed with SIGKILL loses its locks as its files close.
        let started = Instant::now();
        other.kill9()?;
        ensure!(other.ends_within(Duration::from_secs(10))?);
        let mut after = Agent::start(&a)?;
        after.ask("lockf w nb 0 0")?;
        eprintln!("lock free {:?} after its holder was killed", started.elapsed());

        // A waiter that is killed ends at once rather than waiting for the lock.
        let mut waiter = Agent::start(&b)?;
        waiter.send("lockf w wait 0 0")?;
        std::thread::sleep(Duration::from_millis(300));
        waiter.kill9()?;
        ensure!(
            waiter.ends_within(Duration::from_secs(5))?,
            "a killed waiter still waits"
        );
        after.ask("close")?;

        // flock: whole-file, shared or exclusive, released by the last close.
        let mut flocker = Agent::start(&a)?;
        let mut rival = Agent::start(&b)?;
        flocker.ask("flock w nb")?;
        rival.refused("flock r nb")?;
        flocker.ask("flock r nb")?;
        rival.ask("flock r nb")?;
        rival.ask("flock u nb")?;
        flocker.ask("flock w nb")?;
        rival.send("flock w wait")?;
        flocker.ask("close")?;
        ensure!(rival.answer(Duration::from_secs(10))? == "ok", "flock waiter");
        rival.ask("close")?;

        // A mount that wrote the file before (and still has it open) builds on what the
        // last holder wrote once it takes the lock, and its unlock publishes its bytes.
        let mut early = Agent::start(&b)?;
        early.ask("write b1")?;
        early.ask("fsync")?;
        let mut holder = Agent::start(&a)?;
        holder.ask("lockf w nb 0 0")?;
        holder.ask("write a2")?;
        holder.ask("close")?;
        early.ask("lockf w wait 0 0")?;
        ensure!(early.ask("read")? == "a2");
        early.ask("write b3")?;
        early.ask("lockf u nb 0 0")?;
        ensure!(Agent::start(&a)?.ask("read")? == "b3");
        drop(early);

        // An open file's own lock (OFD) goes with the file's last close, the process
        // living on.
        let mut ofd = Agent::start(&a)?;
        let mut rival = Agent::start(&b)?;
        ofd.ask("ofd w nb 0 10")?;
        rival.refused("ofd r nb 5 1")?;
        rival.refused("lockf w nb 0 1")?;
        ofd.ask("close")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while rival.ask("ofd w nb 0 10").is_err() {
            ensure!(Instant::now() < deadline, "an OFD lock outlived its open file");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .await??;

    // Holding no lock any more, the mounts close their lock sessions: an idle mount
    // costs the metadata group nothing.
    let c = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS * 3);
    loop {
        let meta_reply::Result::Statfs(s) = c.meta(Op::Statfs(StatFs {})).await? else {
            bail!("not a statfs reply");
        };
        if s.open_sessions == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{} sessions stay open with no lock held",
            s.open_sessions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A mount that dies holds its locks until its lease runs out, then loses them.
    let (a, b) = (a_dir.join("shared"), b_dir.join("shared"));
    let mut holder = tokio::task::spawn_blocking(move || -> anyhow::Result<Agent> {
        let mut holder = Agent::start(&a)?;
        holder.ask("lockf w nb 0 0")?;
        Ok(holder)
    })
    .await??;
    drop(mount_a);
    let waited = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let mut other = Agent::start(&b)?;
        other.refused("lockf w nb 0 0")?;
        let died = Instant::now();
        let deadline = died + Duration::from_secs(LEASE_SECS * 5);
        loop {
            other.send("lockf w nb 0 0")?;
            if other.answer(Duration::from_secs(20))? == "ok" {
                return Ok(died.elapsed());
            }
            ensure!(Instant::now() < deadline, "a dead mount's lock outlived its lease");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await??;
    eprintln!("a dead mount's lock freed after {waited:?} (lease {LEASE_SECS} s)");
    holder.kill9()?;
    Ok(())
}

/// One rank of a gloo group whose rendezvous is a `FileStore` on the mount given: the
/// store takes flock on its file and appends under it, so ranks on different mounts meet
/// only if locks and what is written under them cross mounts.
const RANK: &str = r#"
import datetime, sys, torch, torch.distributed as dist
store, rank = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
t = torch.full((4,), float(rank + 1))
dist.all_reduce(t)
assert t.tolist() == [3.0] * 4, t
dist.barrier()
dist.destroy_process_group()
print("ok", rank)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torch_ranks_on_two_mounts_meet_through_a_file_store() -> anyhow::Result<()> {
    let python = cairn_tests::venv_python()?;
    let cluster = FileCluster::start(2, small_stripes()).await?;
    let tmp = tempfile::tempdir()?;
    let config = cluster.client_config()?;
    let mut mounts = Vec::new();
    for name in ["a", "b"] {
        let dir = tmp.path().join(name);
        let log = cluster.dir.path().join(format!("fuse-{name}.log"));
        mounts.push(Mount::start(&config, &dir, "/", &log).await?);
    }
    let stores: Vec<PathBuf> = mounts.iter().map(|m| m.path.join("rendezvous")).collect();
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<std::process::Output>> {
        let ranks: Vec<Child> = stores
            .iter()
            .enumerate()
            .map(|(rank, store)| {
                Command::new(&python)
                    .args(["-c", RANK])
                    .arg(store)
                    .arg(rank.to_string())
                    .env("GLOO_SOCKET_IFNAME", "lo")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("a rank starts")
            })
            .collect::<anyhow::Result<_>>()?;
        ranks
            .into_iter()
            .map(|r| r.wait_with_output().context("a rank ends"))
            .collect()
    })
    .await??;
    for (rank, o) in out.iter().enumerate() {
        ensure!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == format!("ok {rank}"),
            "rank {rank}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}
