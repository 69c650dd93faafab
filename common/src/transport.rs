//! Data-plane connections: TCP between hosts, a Unix socket between processes of one host.
//!
//! A node listening on a TCP address also listens on the abstract Unix socket named
//! after that address (`cairn/<ip>:<port>`), and a node connecting to an address tries
//! that name first, then TCP. Only the process holding the TCP address holds the name:
//! it binds the name after the port, both live in the host's network namespace, and an
//! abstract name goes away with its process (no socket file to go stale). A name held by
//! a process of another user is passed over for TCP. The peers speak the same frames
//! either way.
//!
//! Why: on one host a Unix stream carries bytes for less CPU than loopback TCP (no
//! TCP/IP stack, no softirqs): on a 2-core machine one stream moved 8.5-9.5 GB/s
//! against 2.4-3.1, and two hops through a relay (`cairn-bench socket-limit`) 3.4-4.3
//! against 2.4-3.0, where the copies in and out of the kernel are what is left. Every
//! byte of a file crosses two hops, client to logic node and logic node to dataserver;
//! where those share a host (a logic node beside the training job, a converged
//! deployment, the local cluster) the CPU saved goes to the data. The same idea as
//! Linux NFS's LOCALIO.
//!
//! `CAIRN_TRANSPORT=tcp` in a process's environment turns the shortcut off for what it
//! listens on and what it connects to.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::lend::LocalWriter;

/// The environment variable that picks the transport; `tcp` turns local sockets off.
pub const TRANSPORT_ENV: &str = "CAIRN_TRANSPORT";

/// The send buffer asked for on a local socket (the kernel doubles it for its own
/// bookkeeping). A Unix stream's sender blocks once its queued bytes pass this, and the
/// default (`net.core.wmem_default`, 208 KiB) made each 2 MiB shard or 8 MiB stripe a
/// dozen sleeps and wake-ups on both sides. With 4 MiB effective, three 2 GiB
/// checkpoints and restores each way on 2 cores: CPU per GB 2.09 -> 1.99 s (checkpoint)
/// and 0.99 -> 0.92 s (restore).
const LOCAL_SEND_BUFFER_BYTES: libc::c_int = 2 << 20;

/// Whether this process may use local sockets (see the module comment).
pub fn local_sockets_enabled() -> bool {
    std::env::var(TRANSPORT_ENV).map_or(true, |v| !v.eq_ignore_ascii_case("tcp"))
}

/// The abstract socket name of the node that holds TCP address `addr`, with the leading
/// NUL that tells tokio it is abstract.
fn local_name(addr: SocketAddr) -> String {
    format!("\0cairn/{addr}")
}

/// Which way a connection came: over TCP from an address, or from a process of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Local => f.write_str("a local socket"),
        }
    }
}

/// A connected data-plane stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Local(UnixStream),
}

impl Stream {
    /// Connects to the node at `addr`: through its local socket when it runs on this
    /// host, else over TCP (with Nagle off: frames are written whole).
    pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        if local_sockets_enabled() {
            if let Some(local) = connect_local(addr).await {
                return Ok(Stream::Local(local));
            }
        }
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Stream::Tcp(tcp))
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Local(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Local(r), WriteHalf::Local(LocalWriter::new(w)))
            }
        }
    }
}

/// The local socket of the node at `addr`, if one of this host holds it and runs as
/// this user or root.
async fn connect_local(addr: SocketAddr) -> Option<UnixStream> {
    let stream = UnixStream::connect(local_name(addr)).await.ok()?;
    let owner = stream.peer_cred().ok()?.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner != 0 && owner != me {
        warn!(%addr, owner, "the local socket of this address belongs to another user; using TCP");
        return None;
    }
    widen_send_buffer(&stream);
    Some(stream)
}

/// Sets a local socket's send buffer to [`LOCAL_SEND_BUFFER_BYTES`]: past
/// `net.core.wmem_max` where the process may (CAP_NET_ADMIN), else up to it. A socket
/// left at the default still works, at more CPU per byte.
fn widen_send_buffer(stream: &UnixStream) {
    let set = |option: libc::c_int| {
        let bytes = LOCAL_SEND_BUFFER_BYTES;
        // SAFETY: the descriptor is open for the call (`stream` is borrowed), and the
        // option value is a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if let Err(e) = set(libc::SO_SNDBUFFORCE).or_else(|_| set(libc::SO_SNDBUF)) {
        debug!(error = %e, "could not widen a local socket's send buffer");
    }
}

/// Accepts data-plane connections on a TCP address and on its local socket.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    local: Option<UnixListener>,
}

impl Listener {
    /// Binds `addr` over TCP, then its local socket.
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Ok(Listener::new(TcpListener::bind(addr).await?))
    }

    /// Serves `tcp`'s address, and its local socket unless that is turned off or taken
    /// (then TCP alone serves, and says why).
    pub fn new(tcp: TcpListener) -> Listener {
        let local = match tcp.local_addr() {
            Ok(addr) if local_sockets_enabled() => match UnixListener::bind(local_name(addr)) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(%addr, error = %e, "no local socket for this address; serving TCP only");
                    None
                }
            },
            _ => None,
        };
        Listener { tcp, local }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection, from either socket.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        let accepted = match &self.local {
            Some(local) => tokio::select! {
                t = self.tcp.accept() => t.map(|(s, a)| (Stream::Tcp(s), Peer::Tcp(a))),
                l = local.accept() => l.map(|(s, _)| (Stream::Local(s), Peer::Local)),
            },
            None => self.tcp.accept().await.map(|(s, a)| (Stream::Tcp(s), Peer::Tcp(a))),
        };
        if let Ok((stream, peer)) = &accepted {
            match stream {
                Stream::Tcp(s) => {
                    if let Err(e) = s.set_nodelay(true) {
                        debug!(%peer, error = %e, "could not turn Nagle off");
                    }
                }
                Stream::Local(s) => widen_send_buffer(s),
            }
        }
        accepted
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Local(unix::OwnedReadHalf),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Local(LocalWriter),
}

impl WriteHalf {
    /// Whether large pieces may be lent here: a local socket whose kernel has not refused.
    pub fn lends(&self) -> bool {
        match self {
            WriteHalf::Local(w) => w.lends(),
            WriteHalf::Tcp(_) => false,
        }
    }

    /// Sends `piece` by lending its pages to the kernel when this is a local socket that
    /// can; returns `Ok(false)`, having sent nothing, when the caller must write it.
    /// `keep`: see [`LocalWriter::lend`].
    pub async fn lend(&mut self, piece: &Bytes, keep: bool) -> io::Result<bool> {
        match self {
            WriteHalf::Local(w) => w.lend(piece, keep).await,
            WriteHalf::Tcp(_) => Ok(false),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Local(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Local(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Local(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Local(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Local(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Local(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_once(listener: Listener) -> Peer {
        let (stream, peer) = listener.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).await.unwrap();
        w.write_all(&buf).await.unwrap();
        peer
    }

    /// Sends five bytes through a new connection to `addr` and checks they come back;
    /// returns whether the connection was local.
    async fn round_trip(addr: SocketAddr) -> bool {
        let stream = Stream::connect(addr).await.unwrap();
        let local = matches!(stream, Stream::Local(_));
        let (mut r, mut w) = stream.into_split();
        let n = w
            .write_vectored(&[IoSlice::new(b"he"), IoSlice::new(b"llo")])
            .await
            .unwrap();
        w.write_all(&b"hello"[n..]).await.unwrap();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        local
    }

    async fn listener() -> (Listener, SocketAddr) {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn a_node_of_this_host_is_reached_through_its_local_socket() {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(echo_once(listener));
        assert!(round_trip(addr).await);
        assert_eq!(server.await.unwrap(), Peer::Local);
    }

    #[tokio::test]
    async fn a_plain_tcp_client_is_served_beside_local_ones() {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(echo_once(listener));
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(server.await.unwrap(), Peer::Tcp(_)));
    }

    #[tokio::test]
    async fn tcp_alone_serves_when_the_local_name_is_taken() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let squatter = UnixListener::bind(local_name(addr)).unwrap();
        let listener = Listener::new(tcp);
        assert!(listener.local.is_none());
        drop(squatter);
        let server = tokio::spawn(echo_once(listener));
        assert!(!round_trip(addr).await);
        assert!(matches!(server.await.unwrap(), Peer::Tcp(_)));
    }

    fn send_buffer(stream: &UnixStream) -> libc::c_int {
        let mut bytes: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open, and the value and its length are a c_int's.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw mut bytes).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        bytes
    }

    #[tokio::test]
    async fn both_ends_of_a_local_connection_get_the_wide_send_buffer() {
        let (listener, addr) = listener().await;
        let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let near = connect_local(addr).await.expect("local socket");
        let Stream::Local(far) = accepted.await.unwrap() else {
            panic!("accepted over TCP");
        };
        // The kernel doubles what it is asked for; without CAP_NET_ADMIN it stops at
        // twice net.core.wmem_max.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let want = if unsafe { libc::geteuid() } == 0 {
            2 * LOCAL_SEND_BUFFER_BYTES
        } else {
            let max: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            (2 * LOCAL_SEND_BUFFER_BYTES).min(2 * max)
        };
        assert_eq!(send_buffer(&near), want);
        assert_eq!(send_buffer(&far), want);
    }

    #[tokio::test]
    async fn the_local_name_goes_with_its_listener() {
        let (listener, addr) = listener().await;
        assert!(connect_local(addr).await.is_some());
        drop(listener);
        assert!(connect_local(addr).await.is_none());
        assert!(Stream::connect(addr).await.is_err());
    }
}
