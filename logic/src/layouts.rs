//! The logic node's cache of file layouts, so that a reader's small reads do not each
//! cost a metadata request.
//!
//! A committed layout never changes: a commit makes a new version. A read that carries
//! the version its reader already saw (at open, from the metadata group, or in an earlier
//! reply) may be served from any layout of at least that version. That is the
//! close-to-open consistency DESIGN.md promises: a file reopened after another client's
//! `close` names the newer version, which no older cached layout satisfies.
//!
//! An entry holds one window of a file's layout (`WINDOW_STRIPES` stripes), so a huge
//! file's layout is never held whole, and lives at most `TTL`, so shards a rebuild moved
//! are found at their new place soon (reads decode around the old one meanwhile). A read
//! from a cached layout that fails is retried once with a fresh one: the shards of a
//! layout replaced since may have been collected.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_common::proto::metadata::{Attr, Layout};
use lru::LruCache;

/// Stripes of one cached window: 512 MiB of file under the default 4+2 of 2 MiB units.
const WINDOW_STRIPES: u64 = 64;
/// Windows kept (each at most `WINDOW_STRIPES` stripe records, about 20 KB).
const WINDOWS_MAX: usize = 1024;
/// How long a cached window is used.
const TTL: Duration = Duration::from_secs(10);

/// A window of one version of a file's layout, with the file's attributes at that
/// version.
#[derive(Debug)]
pub struct Window {
    pub attr: Attr,
    /// The layout, its inline bytes moved to `inline`.
    pub layout: Layout,
    pub inline: Bytes,
    fetched: Instant,
}

#[derive(Debug)]
pub struct LayoutCache {
    windows: Mutex<LruCache<(u64, u64), Arc<Window>>>,
    window_bytes: u64,
}

impl LayoutCache {
    pub fn new(stripe_bytes: u64) -> LayoutCache {
        LayoutCache {
            windows: Mutex::new(LruCache::new(
                NonZeroUsize::new(WINDOWS_MAX).unwrap_or(NonZeroUsize::MIN),
            )),
            window_bytes: stripe_bytes.max(1).saturating_mul(WINDOW_STRIPES),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(u64, u64), Arc<Window>>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window holding bytes `offset..offset + length` of a file, when one holds them
    /// all.
    pub fn window_of(&self, offset: u64, length: u64) -> Option<u64> {
        let last = offset.checked_add(length.max(1) - 1)?;
        let w = offset / self.window_bytes;
        (last / self.window_bytes == w).then_some(w)
    }

    /// The bytes of a file window `w` covers, as offset and length.
    pub fn window_range(&self, w: u64) -> (u64, u64) {
        (w.saturating_mul(self.window_bytes), self.window_bytes)
    }

    /// Window `w` of file `inode` if it is cached, fresh, and of at least `min_version`.
    pub fn get(&self, inode: u64, w: u64, min_version: u64) -> Option<Arc<Window>> {
        let mut windows = self.lock();
        let hit = windows.get(&(inode, w))?;
        if hit.fetched.elapsed() >= TTL {
            windows.pop(&(inode, w));
            return None;
        }
        (hit.attr.layout_version >= min_version).then(|| hit.clone())
    }

    /// Caches window `w` of file `inode` as fetched from the metadata group (unless a
    /// newer version of it is cached already) and returns it.
    pub fn put(&self, inode: u64, w: u64, attr: Attr, mut layout: Layout) -> Arc<Window> {
        let inline = Bytes::from(std::mem::take(&mut layout.inline_data));
        let fetched = Arc::new(Window {
            attr,
            layout,
            inline,
            fetched: Instant::now(),
        });
        let mut windows = self.lock();
        if let Some(cached) = windows.get(&(inode, w)) {
            if cached.attr.layout_version > fetched.attr.layout_version {
                return fetched;
            }
        }
        windows.put((inode, w), fetched.clone());
        fetched
    }

    /// Drops window `w` of file `inode`: reading from it failed.
    pub fn forget(&self, inode: u64, w: u64) {
        self.lock().pop(&(inode, w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64) -> (Attr, Layout) {
        let attr = Attr {
            layout_version: version,
            size: 10,
            ..Attr::default()
        };
        let layout = Layout {
            version,
            inline_data: vec![version as u8; 10],
            ..Layout::default()
        };
        (attr, layout)
    }

    #[test]
    fn reads_in_one_window_share_it_and_others_do_not() {
        let c = LayoutCache::new(4 << 20);
        let w = 256 << 20;
        assert_eq!(c.window_of(0, 64 << 10), Some(0));
        assert_eq!(c.window_of(w - 10, 10), Some(0));
        assert_eq!(c.window_of(w - 10, 11), None, "spans two windows");
        assert_eq!(c.window_of(w, 0), Some(1));
        assert_eq!(c.window_of(u64::MAX - 5, 10), None, "past the last byte");
        assert_eq!(c.window_range(2), (2 * w, w));
    }

    #[test]
    fn a_window_serves_readers_that_saw_its_version_or_an_older_one() {
        let c = LayoutCache::new(4 << 20);
        let (attr, layout) = at(5);
        let put = c.put(7, 0, attr, layout);
        assert_eq!(put.inline, Bytes::from(vec![5u8; 10]));
        assert!(put.layout.inline_data.is_empty());
        assert!(c.get(7, 0, 5).is_some());
        assert!(c.get(7, 0, 3).is_some());
        // A reader that saw version 6 (reopened after another client's close) does not
        // get version 5.
        assert!(c.get(7, 0, 6).is_none());
        assert!(c.get(7, 1, 1).is_none(), "another window");
        assert!(c.get(8, 0, 1).is_none(), "another file");
        // An older fetch finishing late does not replace a newer one.
        let (attr, layout) = at(9);
        c.put(7, 0, attr, layout);
        let (attr, layout) = at(6);
        assert_eq!(c.put(7, 0, attr, layout).attr.layout_version, 6);
        assert_eq!(c.get(7, 0, 1).map(|w| w.attr.layout_version), Some(9));
        c.forget(7, 0);
        assert!(c.get(7, 0, 1).is_none());
    }
}
