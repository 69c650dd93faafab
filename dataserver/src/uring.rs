//! io_uring disk engine. One thread owns the ring: operations arrive over a channel,
//! are pushed to the submission queue in batches (one `io_uring_enter` for all that
//! arrived together), and complete through oneshot channels. A write is linked to its
//! fdatasync so both go down in one submission. An eventfd read is kept armed on the
//! ring so that new work wakes the thread while it waits for completions.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use rustix::event::{eventfd, EventfdFlags};
use tokio::sync::oneshot;

use crate::aligned::{AlignedBuf, AlignedBytes, UnfilledBuf};
use crate::disk::{DiskFuture, ShardDisk};

/// user_data of the eventfd wake-up read.
const WAKE: u64 = u64::MAX;

enum Op {
    Write {
        file: Arc<File>,
        buf: AlignedBytes,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Read {
        file: Arc<File>,
        offset: u64,
        buf: UnfilledBuf,
        reply: oneshot::Sender<io::Result<AlignedBuf>>,
    },
    Sync {
        file: Arc<File>,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

impl Op {
    fn sqes(&self) -> usize {
        match self {
            Op::Write { buf, .. } if !buf.is_empty() => 2,
            _ => 1,
        }
    }

    fn fail(self, e: io::Error) {
        // A dropped receiver means the caller went away; nothing to tell.
        match self {
            Op::Write { reply, .. } | Op::Sync { reply, .. } => drop(reply.send(Err(e))),
            Op::Read { reply, .. } => drop(reply.send(Err(e))),
        }
    }

    fn complete(self, error: Option<io::Error>) {
        match error {
            Some(e) => self.fail(e),
            None => match self {
                Op::Write { reply, .. } | Op::Sync { reply, .. } => drop(reply.send(Ok(()))),
                // SAFETY: no error means `check` saw the read transfer all `buf.wanted()`
                // bytes into the buffer.
                Op::Read { buf, reply, .. } => drop(reply.send(Ok(unsafe { buf.assume_filled() }))),
            },
        }
    }
}

/// An operation the kernel is working on. It owns its buffer and file until every one of
/// its submission entries has completed, so the kernel never sees freed memory.
struct InFlight {
    op: Op,
    sqes_left: usize,
    error: Option<io::Error>,
}

pub struct UringDisk {
    tx: Option<mpsc::Sender<Op>>,
    wake: Arc<File>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for UringDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringDisk")
    }
}

impl UringDisk {
    pub fn start(entries: u32) -> io::Result<UringDisk> {
        let ring = IoUring::new(entries)?;
        let wake = Arc::new(File::from(eventfd(0, EventfdFlags::CLOEXEC)?));
        let (tx, rx) = mpsc::channel();
        let thread_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-uring".into())
            .spawn(move || run(ring, rx, thread_wake))?;
        Ok(UringDisk {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    fn send(&self, op: Op) {
        let sent = match &self.tx {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        };
        match sent {
            Ok(()) => {
                if let Err(e) = (&*self.wake).write_all(&1u64.to_ne_bytes()) {
                    tracing::error!(error = %e, "cannot wake the io_uring thread");
                }
            }
            Err(op) => op.fail(io::Error::other("io_uring thread has stopped")),
        }
    }
}

impl Drop for UringDisk {
    fn drop(&mut self) {
        drop(self.tx.take());
        let _ = (&*self.wake).write_all(&1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn recv<T>(rx: oneshot::Receiver<io::Result<T>>) -> io::Result<T> {
    rx.await
        .map_err(|_| io::Error::other("io_uring thread dropped an operation"))?
}

impl ShardDisk for UringDisk {
    fn write_durable(&self, file: Arc<File>, buf: AlignedBytes) -> DiskFuture<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Write { file, buf, reply });
        Box::pin(recv(rx))
    }

    fn read_at(&self, file: Arc<File>, offset: u64, len: usize) -> DiskFuture<AlignedBuf> {
        let (reply, rx) = oneshot::channel();
        let buf = UnfilledBuf::new(len);
        self.send(Op::Read {
            file,
            offset,
            buf,
            reply,
        });
        Box::pin(recv(rx))
    }

    fn sync(&self, file: Arc<File>) -> DiskFuture<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Sync { file, reply });
        Box::pin(recv(rx))
    }
}

fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// The ring thread's state.
struct Engine {
    ring: IoUring,
    inflight: HashMap<u64, InFlight>,
    next_id: u64,
    wake_fd: types::Fd,
    wake_buf: *mut u8,
    wake_armed: bool,
}

fn run(ring: IoUring, rx: mpsc::Receiver<Op>, wake: Arc<File>) {
    // Declared before the engine so it is dropped after the ring: the kernel may hold a
    // pointer to it while the wake-up read is armed.
    let mut wake_buf = Box::new([0u8; 8]);
    let mut engine = Engine {
        ring,
        inflight: HashMap::new(),
        next_id: 0,
        wake_fd: types::Fd(wake.as_raw_fd()),
        wake_buf: wake_buf.as_mut_ptr(),
        wake_armed: false,
    };
    let mut pending: VecDeque<Op> = VecDeque::new();
    let mut closed = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(op) => pending.push_back(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed && pending.is_empty() && engine.inflight.is_empty() {
            return;
        }
        engine.push(&mut pending);
        if let Err(e) = engine.ring.submit_and_wait(1) {
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => {
                    tracing::error!(error = %e, "io_uring submit failed; failing all operations");
                    for op in pending.drain(..) {
                        op.fail(io::Error::new(e.kind(), e.to_string()));
                    }
                    engine.fail_all(&e);
                    return;
                }
            }
        }
        engine.reap();
    }
}

impl Engine {
    fn push(&mut self, pending: &mut VecDeque<Op>) {
        let mut sq = self.ring.submission();
        if !self.wake_armed && !sq.is_full() {
            let sqe = opcode::Read::new(self.wake_fd, self.wake_buf, 8)
                .build()
                .user_data(WAKE);
            // SAFETY: wake_buf outlives the ring (see `run`).
            if unsafe { sq.push(&sqe) }.is_ok() {
                self.wake_armed = true;
            }
        }
        while let Some(op) = pending.front() {
            if sq.capacity() - sq.len() < op.sqes() {
                break;
            }
            let Some(mut op) = pending.pop_front() else { break };
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1) & (u64::MAX >> 2);
            let entries = match &mut op {
                Op::Write { file, buf, .. } => {
                    let fd = types::Fd(file.as_raw_fd());
                    let fsync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
                    if buf.is_empty() {
                        vec![fsync.user_data(id << 1)]
                    } else {
                        let write = opcode::Write::new(fd, buf.as_slice().as_ptr(), buf.len() as u32)
                            .offset(0)
                            .build()
                            .flags(squeue::Flags::IO_LINK)
                            .user_data(id << 1);
                        vec![write, fsync.user_data(id << 1 | 1)]
                    }
                }
                Op::Read { file, offset, buf, .. } => {
                    let fd = types::Fd(file.as_raw_fd());
                    vec![opcode::Read::new(fd, buf.as_mut_ptr(), buf.wanted() as u32)
                        .offset(*offset)
                        .build()
                        .user_data(id << 1)]
                }
                Op::Sync { file, .. } => vec![opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                    .build()
                    .user_data(id << 1)],
            };
            let sqes_left = entries.len();
            for sqe in &entries {
                // SAFETY: the buffers and files the entries point to are owned by `op`,
                // which stays in `inflight` until all its entries have completed; room for
                // every entry was checked above.
                if unsafe { sq.push(sqe) }.is_err() {
                    unreachable!("submission queue space was checked");
                }
            }
            self.inflight.insert(
                id,
                InFlight {
                    op,
                    sqes_left,
                    error: None,
                },
            );
        }
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (user_data, res) in done {
            if user_data == WAKE {
                self.wake_armed = false;
                continue;
            }
            let (id, entry) = (user_data >> 1, user_data & 1);
            let Some(f) = self.inflight.get_mut(&id) else {
                tracing::error!(user_data, "io_uring completion for an unknown operation");
                continue;
            };
            if f.error.is_none() {
                f.error = check(&f.op, entry, res);
            }
            f.sqes_left -= 1;
            if f.sqes_left == 0 {
                if let Some(f) = self.inflight.remove(&id) {
                    f.op.complete(f.error);
                }
            }
        }
    }

    fn fail_all(&mut self, e: &io::Error) {
        for (_, f) in self.inflight.drain() {
            f.op.fail(io::Error::new(e.kind(), e.to_string()));
        }
    }
}

/// The error, if any, of entry `entry` of `op` that completed with `res`.
fn check(op: &Op, entry: u64, res: i32) -> Option<io::Error> {
    if res < 0 {
        return Some(os_error(res));
    }
    let expected = match (op, entry) {
        (Op::Write { buf, .. }, 0) => buf.len(),
        (Op::Read { buf, .. }, _) => buf.wanted(),
        _ => return None,
    };
    (res as usize != expected).then(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short transfer: {res} of {expected} bytes"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::open_shard_file;

    #[tokio::test]
    async fn writes_syncs_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let disk = match UringDisk::start(32) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}); the posix engine covers this machine");
                return;
            }
        };
        let path = dir.path().join("f");
        let mut writes = Vec::new();
        for i in 0..20u8 {
            let p = dir.path().join(format!("f{i}"));
            let file = Arc::new(open_shard_file(&p, true, false).unwrap());
            writes.push(disk.write_durable(file, AlignedBytes::padded(vec![i; 10_000].into())));
        }
        for w in writes {
            w.await.unwrap();
        }
        for i in 0..20u8 {
            let file = Arc::new(open_shard_file(&dir.path().join(format!("f{i}")), false, false).unwrap());
            let back = disk.read_at(file, 4096, 8192).await.unwrap();
            assert!(back.as_slice()[..10_000 - 4096].iter().all(|&b| b == i));
        }
        let file = Arc::new(open_shard_file(&path, true, false).unwrap());
        disk.write_durable(file.clone(), AlignedBytes::padded(bytes::Bytes::new()))
            .await
            .unwrap();
        let short = disk
            .read_at(Arc::new(open_shard_file(&path, false, false).unwrap()), 0, 4096)
            .await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        disk.sync(Arc::new(File::open(dir.path()).unwrap())).await.unwrap();
    }
}
