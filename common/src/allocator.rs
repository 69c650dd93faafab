//! glibc malloc settings for the daemons that move bulk data (dataservers, logic nodes).
//!
//! Every shard put and get allocates and frees buffers of 1 to 16 MiB. glibc serves an
//! allocation that large from its own `mmap` and unmaps it on free, so each request paid
//! for page faults on fresh pages and for unmapping them: about a fifth of a dataserver's
//! CPU in a profile of a 2 GiB read. Serving them from the heap and keeping freed memory
//! for reuse makes writes about 10% and reads about 4% faster through the Python client
//! (bench/RESULTS.md, file path run 7). jemalloc and mimalloc, tried the same way, were
//! slower.
//!
//! The cost: a daemon keeps up to `KEEP_FREED_BYTES` of freed heap instead of returning
//! it, so its resident memory stays near its high-water mark, which the request memory
//! budgets bound.

/// Allocations below this come from the heap (glibc's largest allowed threshold).
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Freed memory at the top of a heap that is kept rather than returned to the kernel.
const KEEP_FREED_BYTES: i32 = 256 << 20;

/// Applies the settings; call once at start-up, before the daemon allocates its buffers.
/// A failure leaves glibc's defaults, which are slower but correct.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters, under glibc's own locks.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
        };
        if !ok {
            tracing::warn!("glibc refused the malloc settings: large buffers stay mmap-backed");
        }
    }
}
