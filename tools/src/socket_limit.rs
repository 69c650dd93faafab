//! The transport limit of the file path on one host: bytes moved sender -> relay ->
//! receiver, the two hops a file byte takes (client -> logic node -> dataserver), over
//! loopback TCP or over Unix sockets, in 1 MiB writes with a thread at each end and in
//! the relay. The same code for both, so the two figures compare the kernels' paths
//! alone; `bench/lib.sh` prints them beside the iperf3 and socat relay.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use clap::ValueEnum;

const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SocketKind {
    Tcp,
    Unix,
}

/// Two connected ends of a new stream of `kind`.
fn pair(kind: SocketKind) -> io::Result<(Box<dyn ReadWrite>, Box<dyn ReadWrite>)> {
    Ok(match kind {
        SocketKind::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let a = TcpStream::connect(listener.local_addr()?)?;
            let (b, _) = listener.accept()?;
            a.set_nodelay(true)?;
            b.set_nodelay(true)?;
            (Box::new(a), Box::new(b))
        }
        SocketKind::Unix => {
            let (a, b) = UnixStream::pair()?;
            (Box::new(a), Box::new(b))
        }
    })
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Copies everything `from` yields into `to`, in reads of up to [`CHUNK`] (std's
/// `io::copy` reads 8 KiB at a time, which would measure system calls, not the path).
fn relay(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut moved = 0;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(moved);
        }
        to.write_all(&buf[..n])?;
        moved += n as u64;
    }
}

/// Moves `total_bytes` through two hops of `kind`; returns MB/s (10^6 bytes) as the
/// receiver saw them.
pub fn two_hops_mbps(kind: SocketKind, total_bytes: u64) -> io::Result<f64> {
    let (mut send, relay_in) = pair(kind)?;
    let (relay_out, mut receive) = pair(kind)?;
    let relayer = std::thread::spawn(move || {
        let (mut from, mut to) = (relay_in, relay_out);
        relay(&mut from, &mut to)
    });
    let sender = std::thread::spawn(move || -> io::Result<()> {
        let buf = vec![0x5au8; CHUNK];
        let mut left = total_bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let started = Instant::now();
    // Until the sender's end closes and the relay passes that on.
    let got = relay(&mut receive, &mut io::sink())?;
    let secs = started.elapsed().as_secs_f64();
    let joined =
        |r: std::thread::Result<io::Result<()>>| r.unwrap_or_else(|_| Err(io::Error::other("thread panicked")));
    joined(sender.join())?;
    joined(relayer.join().map(|r| r.map(drop)))?;
    if got != total_bytes {
        return Err(io::Error::other(format!("received {got} of {total_bytes} bytes")));
    }
    Ok(got as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_move_every_byte() {
        for kind in [SocketKind::Tcp, SocketKind::Unix] {
            let mbps = two_hops_mbps(kind, 8 * CHUNK as u64 + 123).unwrap();
            assert!(mbps > 0.0, "{kind:?}");
        }
    }
}
