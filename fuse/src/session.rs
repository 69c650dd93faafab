//! What every fuser file system of this crate sets up the same way: request sizes asked
//! of the kernel, the mount's threads, replying to calls that return nothing, and
//! `statfs` of a file system that keeps its data in a local directory.

use std::path::Path;

use fuser::{Errno, KernelConfig, MountOption, ReplyEmpty, ReplyStatfs};

/// The largest read and write request asked of the kernel; also the preferred I/O size
/// reported to programs (`st_blksize`).
pub const REQUEST_BYTES_MAX: u32 = 1 << 20;

/// Asks the kernel for 1 MiB reads, writes and read-ahead (or the nearest it accepts).
pub fn request_sizes(config: &mut KernelConfig) {
    if let Err(nearest) = config.set_max_write(REQUEST_BYTES_MAX) {
        let _ = config.set_max_write(nearest);
    }
    if let Err(nearest) = config.set_max_readahead(REQUEST_BYTES_MAX) {
        let _ = config.set_max_readahead(nearest);
    }
}

/// Mount options: requests served by `threads` threads, each with its own /dev/fuse
/// descriptor.
pub fn config(mount_options: Vec<MountOption>, threads: usize) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.mount_options = mount_options;
    c.n_threads = Some(threads.max(1));
    c.clone_fd = true;
    c
}

pub fn done(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers `statfs` with the figures of the file system holding `dir`.
pub fn statfs_of(dir: &Path, reply: ReplyStatfs) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            255,
            s.f_frsize as u32,
        ),
        Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
    }
}
