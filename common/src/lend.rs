//! Lending bulk bytes to a local socket instead of copying them into it.
//!
//! `vmsplice` puts references to the sender's pages in a pipe and `splice` moves them
//! into the Unix socket's queue (Linux 6.5+ attaches spliced pages to a Unix stream's
//! buffers without copying), so the only copy left on the hop is the receiver's. On a
//! 2-core machine, 8 GiB in 2 MiB pieces cost the sender 0.33 s of CPU lent against
//! 0.9-1.5 s written, and a checkpoint's shards and stripes cross two such hops.
//!
//! The catch is the whole contract: the receiver reads the sender's pages when it gets
//! to them, so the bytes must stay as they are until then.
//! - A request's sender keeps its data until the reply comes, by which time the peer
//!   has read the request: requests are lent as they are.
//! - A reply's sender drops it once written, so the writer keeps what it lent until the
//!   unread bytes in the socket (`SIOCOUTQ`) show the peer has read past it, and past
//!   [`KEPT_BYTES_MAX`] kept it copies instead. A writer dropped with pieces still
//!   unread hands them to a task that frees them once the peer has read them or closed.
//!
//! Memory freed early would be no hazard to either process (the kernel holds the
//! pages), only to the bytes.
//!
//! No crate wraps `vmsplice`/`splice` for tokio sockets, hence the system calls here.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::{unix, UnixStream};
use tracing::debug;

/// Pieces smaller than this are copied: two system calls and pinning pages cost more
/// than copying a few pages.
pub const LEND_MIN_BYTES: usize = 64 << 10;

/// The pipe's size asked for: each round of `vmsplice` and `splice` moves up to this.
/// Above `fs.pipe-max-size` (1 MiB by default) only a privileged process gets it, and
/// a smaller pipe only means more rounds.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Lent reply bytes a connection keeps for its peer to read; past this it copies.
pub const KEPT_BYTES_MAX: usize = 16 << 20;

/// How often a dropped writer's task looks whether the peer has read its pieces, at most.
const UNREAD_POLL_MAX: Duration = Duration::from_secs(1);

/// The writing half of a local connection: [`AsyncWrite`] copies, [`LocalWriter::lend`]
/// lends.
#[derive(Debug)]
pub struct LocalWriter {
    half: unix::OwnedWriteHalf,
    pipe: Lending,
    /// Bytes put into the socket so far, copied or lent.
    written: u64,
    /// Lent reply pieces, each with the stream position where it ends.
    kept: VecDeque<(Bytes, u64)>,
}

/// Whether a connection lends its large pieces.
#[derive(Debug)]
enum Lending {
    /// Not asked yet: the pipe is made at the first large piece.
    Untried,
    Pipe(LendingPipe),
    /// The kernel refused (no pipe, or no `vmsplice`): this connection copies.
    Refused,
}

impl LocalWriter {
    pub fn new(half: unix::OwnedWriteHalf) -> LocalWriter {
        LocalWriter {
            half,
            pipe: Lending::Untried,
            written: 0,
            kept: VecDeque::new(),
        }
    }

    /// Whether this connection lends large pieces (the kernel has not refused).
    pub fn lends(&self) -> bool {
        !matches!(self.pipe, Lending::Refused)
    }

    /// Bytes of lent replies kept for the peer to read.
    fn kept_bytes(&self) -> usize {
        self.kept.iter().map(|(piece, _)| piece.len()).sum()
    }

    /// Sends `piece` by lending its pages; returns `Ok(false)`, having sent nothing,
    /// when the caller must write (copy) it instead.
    ///
    /// With `keep` (a reply, which the caller drops once written) this writer keeps the
    /// piece until the peer has read past it. Without, the caller keeps `piece`
    /// unchanged until the peer's reply (a request).
    pub async fn lend(&mut self, piece: &Bytes, keep: bool) -> io::Result<bool> {
        if keep {
            self.release_read();
            if self.kept_bytes() + piece.len() > KEPT_BYTES_MAX {
                return Ok(false);
            }
        }
        if let Lending::Untried = self.pipe {
            self.pipe = match LendingPipe::new() {
                Ok(pipe) => Lending::Pipe(pipe),
                Err(e) => {
                    debug!(error = %e, "no pipe to lend pages through; copying");
                    Lending::Refused
                }
            };
        }
        let Lending::Pipe(pipe) = &mut self.pipe else {
            return Ok(false);
        };
        if !pipe.send(self.half.as_ref(), piece).await? {
            debug!("the kernel refused to lend pages to a local socket; copying");
            self.pipe = Lending::Refused;
            return Ok(false);
        }
        self.written += piece.len() as u64;
        if keep {
            self.kept.push_back((piece.clone(), self.written));
        }
        Ok(true)
    }

    /// Frees the kept pieces the peer has read past. The kernel counts every byte still
    /// queued in the socket at least once among its unread bytes (with some overhead
    /// per buffer), so while a piece is unread they exceed the bytes written after it.
    /// The overhead makes this free a piece only once the peer has nearly caught up with
    /// the stream, which a peer reading its replies soon does.
    fn release_read(&mut self) {
        if self.kept.is_empty() {
            return;
        }
        let Ok(unread) = unread_bytes(self.half.as_ref()) else {
            return;
        };
        while let Some((_, end)) = self.kept.front() {
            if self.written - end < unread {
                break;
            }
            self.kept.pop_front();
        }
    }

    fn count(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.written += n as u64;
        }
        written
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        self.release_read();
        if self.kept.is_empty() {
            return;
        }
        // The peer can still read what is queued after this end closes: a task keeps the
        // pieces until it has, or has closed its end (which empties the queue).
        let kept = std::mem::take(&mut self.kept);
        let socket = self.half.as_ref().as_fd().try_clone_to_owned();
        match (tokio::runtime::Handle::try_current(), socket) {
            (Ok(runtime), Ok(socket)) => {
                runtime.spawn(async move {
                    let mut wait = Duration::from_millis(10);
                    while unread_bytes(&socket).is_ok_and(|n| n > 0) {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(UNREAD_POLL_MAX);
                    }
                    drop(kept);
                });
            }
            // No runtime or no descriptor to watch: never freed, as the peer may read
            // them yet (at most KEPT_BYTES_MAX, and only on this rare path).
            _ => std::mem::forget(kept),
        }
    }
}

impl AsyncWrite for LocalWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.half).poll_write(cx, buf);
        this.count(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.half).poll_write_vectored(cx, bufs);
        this.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.half.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_shutdown(cx)
    }
}

/// Bytes this end has put into a Unix socket that its peer has not read yet, counted as
/// the kernel charges them (at least their length).
fn unread_bytes(socket: &impl AsFd) -> io::Result<u64> {
    let mut unread: libc::c_int = 0;
    // SAFETY: the descriptor is open for the call and SIOCOUTQ (TIOCOUTQ's number on
    // Linux) writes one c_int.
    if unsafe { libc::ioctl(socket.as_fd().as_raw_fd(), libc::TIOCOUTQ, &raw mut unread) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unread.max(0) as u64)
}

/// The pipe through which one connection lends its pages.
#[derive(Debug)]
struct LendingPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes lent to the pipe and not yet moved into the socket.
    queued: usize,
}

impl LendingPipe {
    fn new() -> io::Result<LendingPipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: a valid descriptor and an integer argument; failure leaves the default size.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        Ok(LendingPipe { read, write, queued: 0 })
    }

    /// Sends `data` on `socket` by lending its pages. Returns `Ok(false)`, having sent
    /// nothing, when the kernel refuses to lend (then the caller writes the bytes).
    /// A call cancelled halfway leaves the stream inside a frame, as a cancelled write
    /// does; the next call says so.
    async fn send(&mut self, socket: &UnixStream, data: &[u8]) -> io::Result<bool> {
        if self.queued > 0 {
            return Err(io::Error::other("a cancelled write left this stream inside a frame"));
        }
        let mut rest = data;
        while !rest.is_empty() || self.queued > 0 {
            if self.queued == 0 {
                match self.vmsplice(rest) {
                    Ok(n) => {
                        self.queued = n;
                        rest = &rest[n..];
                    }
                    // EINVAL/ENOSYS/EPERM (old kernel, seccomp) before anything was lent.
                    Err(e) if rest.len() == data.len() && e.kind() != io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            let moved = loop {
                socket.writable().await?;
                match socket.try_io(Interest::WRITABLE, || self.splice_into(socket)) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if moved == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.queued -= moved;
        }
        Ok(true)
    }

    /// Lends the pipe as much of `data` as fits; the pipe is empty when called.
    fn vmsplice(&self, data: &[u8]) -> io::Result<usize> {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: `iov` describes `data`, valid for the call; without SPLICE_F_GIFT the
        // kernel only takes references to the pages and never writes to them.
        let n = unsafe { libc::vmsplice(self.write.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Moves queued pages from the pipe into `socket` (non-blocking, like the socket).
    fn splice_into(&self, socket: &UnixStream) -> io::Result<usize> {
        // SAFETY: both descriptors are open for the call; null offsets mean "current
        // position", as pipes and sockets require.
        let n = unsafe {
            libc::splice(
                self.read.as_raw_fd(),
                std::ptr::null_mut(),
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                self.queued,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A send cancelled while the peer is not reading leaves pages in the pipe: the
    /// next send on that connection fails instead of writing after half a piece.
    #[tokio::test]
    async fn a_cancelled_send_poisons_the_connection() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let mut pipe = LendingPipe::new().unwrap();
        let data = vec![5u8; 16 << 20];
        let stalled = tokio::time::timeout(Duration::from_millis(200), pipe.send(&near, &data)).await;
        assert!(stalled.is_err(), "16 MiB fit in an unread socket");
        let again = pipe.send(&near, &data[..LEND_MIN_BYTES]).await;
        assert!(again.unwrap_err().to_string().contains("inside a frame"));
        // What did go out is the start of the piece, unchanged.
        drop(near);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(!got.is_empty() && got.len() < data.len());
        assert!(got.iter().all(|b| *b == 5));
    }

    /// Kept reply pieces are freed once the peer has read them, not before.
    #[tokio::test]
    async fn kept_pieces_go_once_the_peer_has_read_them() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let (_near_rd, near_wr) = near.into_split();
        let mut writer = LocalWriter::new(near_wr);
        let piece = Bytes::from(vec![3u8; 100_000]);
        assert!(writer.lend(&piece, true).await.unwrap());
        assert!(writer.lend(&piece.slice(..LEND_MIN_BYTES), true).await.unwrap());
        writer.release_read();
        assert_eq!(writer.kept_bytes(), 100_000 + LEND_MIN_BYTES);
        let mut got = vec![0u8; 100_000];
        far.read_exact(&mut got[..99_999]).await.unwrap();
        writer.release_read();
        assert_eq!(writer.kept.len(), 2, "the first piece is not read whole yet");
        far.read_exact(&mut got[..1 + LEND_MIN_BYTES]).await.unwrap();
        writer.release_read();
        assert_eq!((writer.kept_bytes(), writer.kept.len()), (0, 0));
        // A request's piece is the caller's to keep.
        assert!(writer.lend(&piece, false).await.unwrap());
        assert_eq!(writer.kept_bytes(), 0);
    }
}
