//! POSIX record locks (`fcntl`) and `flock` through the mount. The kernel alone would
//! lock only among the processes of this machine; here every lock is a record of the
//! metadata group, so the processes of every mount of the cluster exclude each other.
//!
//! The mount opens one lock session when it takes a lock, renews it while it may hold
//! one, and closes it once it holds none; a mount that dies (or loses the cluster for
//! longer than the lease) loses its locks when the lease runs out, so a crashed machine
//! never holds a lock for good. A waiting lock (`F_SETLKW`, blocking `flock`) polls
//! with a read (5 ms, then doubling up to 50 ms) and proposes only when the conflict is
//! gone; locks are not granted in arrival order, and deadlocks between mounts are not
//! detected (EDEADLK is never returned).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{CairnClient, ClientError};
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, CloseSession, Errno as MetaErrno, GetLock, Lock, LockKind, OpenLockSession,
    RenewSession, SetLock,
};
use fuser::Errno;
use tracing::{error, warn};

use crate::attrs::errno;
use crate::lock;

/// The kernel's end of a lock that reaches past the end of the file (OFFSET_MAX).
const TO_END_OF_FILE: u64 = i64::MAX as u64;

/// The first and the longest pause of a waiting lock between two looks: a freed lock is
/// seen within 50 ms, for at most 20 reads a second per waiter.
const WAIT_FIRST: Duration = Duration::from_millis(5);
const WAIT_MAX: Duration = Duration::from_millis(50);

/// The kernel's lock types (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`) as Cairn's.
pub fn kind_of(typ: i32) -> Result<LockKind, Errno> {
    match typ {
        libc::F_RDLCK => Ok(LockKind::Read),
        libc::F_WRLCK => Ok(LockKind::Write),
        libc::F_UNLCK => Ok(LockKind::Unlock),
        _ => Err(Errno::EINVAL),
    }
}

pub fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    }
}

/// What one lock request names, before the session is known.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub inode: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

impl Want {
    fn lock(&self, session: u64) -> Lock {
        Lock {
            session,
            owner: self.owner,
            start: self.start,
            end: self.end,
            kind: self.kind as i32,
            pid: self.pid,
        }
    }

    /// The owner's every lock on the inode: what a close releases.
    pub fn everything(inode: u64, owner: u64) -> Want {
        Want {
            inode,
            owner,
            start: 0,
            end: u64::MAX,
            kind: LockKind::Unlock,
            pid: 0,
        }
    }
}

#[derive(Debug)]
pub struct MountLocks {
    client: Arc<CairnClient>,
    lease: Duration,
    session: tokio::sync::Mutex<Option<u64>>,
    /// The (inode, owner) pairs that took a lock here: a close that holds none sends nothing.
    takers: Mutex<HashSet<(u64, u64)>>,
}

fn refused_with(e: &ClientError, what: MetaErrno) -> bool {
    e.errno() == Some(what)
}

impl MountLocks {
    pub fn new(client: Arc<CairnClient>, lease: Duration) -> Arc<MountLocks> {
        Arc::new(MountLocks {
            client,
            lease,
            session: tokio::sync::Mutex::new(None),
            takers: Mutex::new(HashSet::new()),
        })
    }

    fn lease_ms(&self) -> u32 {
        u32::try_from(self.lease.as_millis()).unwrap_or(u32::MAX)
    }

    async fn open_session(&self) -> Result<u64, ClientError> {
        let opened = self
            .client
            .meta(Op::OpenLockSession(OpenLockSession {
                ttl_ms: self.lease_ms(),
            }))
            .await?;
        match opened {
            meta_reply::Result::Session(s) => Ok(s.session),
            other => Err(ClientError::BadReply(format!("{other:?}"))),
        }
    }

    /// The session's lease ran out (the cluster was out of reach for longer than it):
    /// every lock of this mount is gone, and others may hold them now.
    fn lapsed(&self, current: &mut Option<u64>, session: u64) {
        error!(session, "the lock session expired: this mount's locks were released");
        *current = None;
        lock(&self.takers).clear();
    }

    /// Renews the lease every third of it while the mount may hold a lock, and closes
    /// the session once it holds none (an idle mount costs the group nothing).
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            // Held across the request: no lock is taken under a session being closed.
            let mut current = self.session.lock().await;
            let Some(session) = *current else {
                continue;
            };
            if lock(&self.takers).is_empty() {
                *current = None;
                if let Err(e) = self.client.meta(Op::CloseSession(CloseSession { session })).await {
                    // Its lease runs out on its own.
                    warn!(session, "closing the idle lock session: {e}");
                }
                continue;
            }
            let renew = Op::RenewSession(RenewSession {
                session,
                ttl_ms: self.lease_ms(),
            });
            match self.client.meta(renew).await {
                Ok(_) => {}
                Err(e) if refused_with(&e, MetaErrno::Estale) => self.lapsed(&mut current, session),
                Err(e) => warn!(session, "renewing the lock session: {e}"),
            }
        }
    }

    /// Takes or releases `want` once: EAGAIN when another owner holds a conflicting lock.
    pub async fn set(&self, want: Want) -> Result<(), Errno> {
        let mut current = self.session.lock().await;
        let mut fresh = false;
        loop {
            let session = match *current {
                Some(s) => s,
                None => {
                    let s = self.open_session().await.map_err(|e| errno(&e))?;
                    *current = Some(s);
                    fresh = true;
                    s
                }
            };
            let op = Op::SetLock(SetLock {
                inode: want.inode,
                lock: Some(want.lock(session)),
            });
            match self.client.meta(op).await {
                Ok(_) => break,
                Err(e) if refused_with(&e, MetaErrno::Estale) && !fresh => {
                    self.lapsed(&mut current, session);
                    if want.kind == LockKind::Unlock {
                        return Ok(());
                    }
                }
                Err(e) => return Err(errno(&e)),
            }
        }
        let mut takers = lock(&self.takers);
        if want.kind != LockKind::Unlock {
            takers.insert((want.inode, want.owner));
        } else if want.start == 0 && want.end >= TO_END_OF_FILE {
            takers.remove(&(want.inode, want.owner));
        }
        Ok(())
    }

    /// Takes `want`, waiting while another owner holds a conflicting lock, until
    /// `interrupted` says the caller gave up (EINTR).
    pub async fn wait(&self, want: Want, interrupted: impl Fn() -> bool) -> Result<(), Errno> {
        let mut pause = WAIT_FIRST;
        loop {
            match self.set(want).await {
                Err(Errno::EAGAIN) => {}
                done => return done,
            }
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WAIT_MAX);
                if interrupted() {
                    return Err(Errno::EINTR);
                }
                if self.conflict(want).await?.is_none() {
                    break;
                }
            }
        }
    }

    /// The first lock another owner holds that `want` conflicts with.
    pub async fn conflict(&self, want: Want) -> Result<Option<Lock>, Errno> {
        // A mount that holds no session asks as a session no one holds.
        let session = self.session.lock().await.unwrap_or(0);
        let op = Op::GetLock(GetLock {
            inode: want.inode,
            lock: Some(want.lock(session)),
        });
        match self.client.meta(op).await.map_err(|e| errno(&e))? {
            meta_reply::Result::Lock(l) => Ok(l.conflict),
            _ => Err(Errno::EIO),
        }
    }

    /// Whether `owner` took a lock on `inode` through this mount (and may still hold one).
    pub fn took(&self, inode: u64, owner: u64) -> bool {
        lock(&self.takers).contains(&(inode, owner))
    }
}

/// Whether the thread `tid` that waits for a lock has a signal to take (or is being
/// killed). fuser does not pass the kernel's FUSE_INTERRUPT on, and the kernel waits for
/// the answer of a request already read, so without this a killed or interrupted waiter
/// would hang until the lock frees.
pub fn caller_interrupted(tid: u32) -> bool {
    if tid == 0 {
        // The caller lives in a pid namespace this mount cannot see.
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_types_map_both_ways_and_others_are_refused() {
        for kind in [LockKind::Read, LockKind::Write, LockKind::Unlock] {
            assert_eq!(kind_of(typ_of(kind)), Ok(kind));
        }
        assert_eq!(kind_of(7), Err(Errno::EINVAL));
    }

    #[test]
    fn a_pending_signal_interrupts_a_waiter() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!caller_interrupted(tid));
        assert!(caller_interrupted(u32::MAX), "a thread that does not exist gave up");
        assert!(!caller_interrupted(0));
        // A stopped process keeps a signal pending: as a waiter in the kernel does.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let pid = child.id();
        let signal = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .expect("kill runs")
        };
        signal("-STOP");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") T ")) {
            assert!(std::time::Instant::now() < deadline, "sleep did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!caller_interrupted(pid));
        signal("-TERM");
        let interrupted = caller_interrupted(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(interrupted, "a pending SIGTERM interrupts");
    }
}
