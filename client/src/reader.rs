//! Read-ahead for one open file. Reads are served from a window fetched in one request
//! (the logic node reads its stripes in parallel); while a sequential reader consumes
//! one window, the next `WINDOWS_AHEAD` are being fetched (over several connections, so
//! from both logic nodes at once). A read that does not follow the one before fetches
//! only what it asks for (at least one checksum block, which the dataservers read
//! anyway), so a random reader does not pay for bytes it will not read; once reads
//! follow each other, windows start at one stripe and double up to the largest reply.
//!
//! A large read into the caller's memory (a tensor being restored) skips the windows for
//! what they do not already hold: its bytes are received straight into that memory,
//! `READ_BYTES_MAX` per request, several requests at once, with no copy in between.
//!
//! A reader opened at a layout version sends the newest version it has seen with every
//! request, so a logic node may answer from its cached layout of that version or a
//! newer one (close-to-open consistency); one opened without reads the newest layout
//! every time.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_common::file_wire::{FILE_BLOCK_BYTES, READ_BYTES_MAX};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::task::JoinHandle;

use crate::{CairnClient, ClientError};

#[derive(Debug)]
struct Window {
    offset: u64,
    data: Bytes,
    /// The file's size when the window was read.
    size: u64,
}

/// A window's bytes, the file's size and the layout version they were read from.
type Fetch = JoinHandle<Result<(Bytes, u64, u64), ClientError>>;

/// Windows fetched ahead of a sequential reader.
const WINDOWS_AHEAD: usize = 3;
/// Windows kept after use, for requests that arrive late.
const RECENT_WINDOWS: usize = 2;
/// A read into the caller's memory with at least this much left that no window holds
/// goes straight into that memory.
const DIRECT_BYTES_MIN: u64 = READ_BYTES_MAX;
/// Requests in flight for one direct read.
const DIRECT_IN_FLIGHT: usize = WINDOWS_AHEAD + 1;

#[derive(Debug)]
pub struct FileReader {
    client: Arc<CairnClient>,
    inode: u64,
    /// The windows read last, oldest first.
    recent: VecDeque<Window>,
    /// Windows being fetched ahead, in file order: offset, length asked and task.
    ahead: VecDeque<(u64, u64, Fetch)>,
    window_bytes: u64,
    /// The newest layout version seen, sent with each read; `None`: read the newest.
    seen: Option<u64>,
}

impl Drop for FileReader {
    fn drop(&mut self) {
        self.abort_ahead();
    }
}

impl CairnClient {
    /// A reader of file `inode` with sequential read-ahead. With `opened_at`, the layout
    /// version its opener read from the metadata group, it reads layouts of at least
    /// that version (and then of the newest it has read); without, always the newest
    /// (a mount whose locks and page cache rules rely on that).
    pub fn open_reader(self: &Arc<Self>, inode: u64, opened_at: Option<u64>) -> FileReader {
        FileReader {
            client: self.clone(),
            inode,
            recent: VecDeque::new(),
            ahead: VecDeque::new(),
            window_bytes: self.stripe_bytes() as u64,
            seen: opened_at,
        }
    }
}

impl FileReader {
    /// Forgets what was read ahead (the file changed); the next read is of the newest
    /// layout.
    pub fn invalidate(&mut self) {
        self.recent.clear();
        self.abort_ahead();
        if let Some(seen) = &mut self.seen {
            *seen = 0;
        }
    }

    fn min_version(&self) -> u64 {
        self.seen.unwrap_or(0)
    }

    /// A reply was read from layout `version`: later reads ask for at least that one.
    fn saw(&mut self, version: u64) {
        if let Some(seen) = &mut self.seen {
            *seen = (*seen).max(version);
        }
    }

    fn abort_ahead(&mut self) {
        for (_, _, task) in self.ahead.drain(..) {
            task.abort();
        }
    }

    /// Up to `len` bytes from `offset`: fewer only at the end of the file.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes, ClientError> {
        let mut out = BytesMut::new();
        let mut whole = None;
        self.read_pieces(offset, len, |piece| {
            if whole.is_none() && out.is_empty() && piece.len() as u64 == len {
                // The whole answer lies in one window: no copy.
                whole = Some(piece);
            } else {
                out.extend_from_slice(&piece);
            }
        })
        .await?;
        Ok(whole.unwrap_or_else(|| out.freeze()))
    }

    /// Fills `buf` from `offset`; returns how many bytes it holds: fewer than its length
    /// only at the end of the file. What the windows hold or are fetching is copied from
    /// them; a large rest is received straight into `buf`.
    pub async fn read_into(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, ClientError> {
        let end = offset.saturating_add(buf.len() as u64);
        let mut pos = offset;
        while pos < end && (self.holds(pos) || end - pos < DIRECT_BYTES_MIN) {
            let piece = self.piece_at(pos, end).await?;
            if piece.is_empty() {
                return Ok((pos - offset) as usize);
            }
            let at = (pos - offset) as usize;
            buf[at..at + piece.len()].copy_from_slice(&piece);
            pos += piece.len() as u64;
        }
        let mut filled = (pos - offset) as usize;
        if pos < end {
            // Nothing fetched ahead lies in the rest (it would be held): drop it.
            self.abort_ahead();
            filled += self.read_direct(pos, &mut buf[filled..]).await?;
        }
        Ok(filled)
    }

    /// Whether a window read or being read holds `pos`.
    fn holds(&self, pos: u64) -> bool {
        self.recent
            .iter()
            .any(|w| pos >= w.offset && pos < w.offset + w.data.len() as u64)
            || self.ahead.iter().any(|(at, len, _)| pos >= *at && pos < at + len)
    }

    /// Fills `buf` from `offset` with requests received straight into it.
    async fn read_direct(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, ClientError> {
        let (client, inode, min_version) = (&self.client, self.inode, self.min_version());
        let mut parts = stream::iter(buf.chunks_mut(READ_BYTES_MAX as usize).enumerate())
            .map(|(i, part)| {
                let at = offset + i as u64 * READ_BYTES_MAX;
                let want = part.len();
                async move {
                    let (got, _, version) = client.read_range_into(inode, at, min_version, part).await?;
                    Ok::<_, ClientError>((got, want, version))
                }
            })
            .buffered(DIRECT_IN_FLIGHT);
        let (mut filled, mut newest) = (0, 0);
        while let Some((got, want, version)) = parts.try_next().await? {
            filled += got;
            newest = newest.max(version);
            if got < want {
                // The end of the file.
                break;
            }
        }
        drop(parts);
        self.saw(newest);
        Ok(filled)
    }

    /// Hands `sink` the bytes from `offset` to `offset + len` in order, window by window.
    async fn read_pieces(&mut self, offset: u64, len: u64, mut sink: impl FnMut(Bytes)) -> Result<(), ClientError> {
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let piece = self.piece_at(pos, end).await?;
            if piece.is_empty() {
                break;
            }
            pos += piece.len() as u64;
            sink(piece);
        }
        Ok(())
    }

    /// The bytes from `pos` (before `end`) that the window holding it has; none at or
    /// past the end of the file.
    async fn piece_at(&mut self, pos: u64, end: u64) -> Result<Bytes, ClientError> {
        let w = self.window_at(pos, end - pos).await?;
        let Some(from) = pos.checked_sub(w.offset).filter(|f| *f < w.data.len() as u64) else {
            return Ok(Bytes::new());
        };
        let to = (end - w.offset).min(w.data.len() as u64);
        Ok(w.data.slice(from as usize..to as usize))
    }

    /// The window holding `pos` (or the one that ends the file before it), for a read of
    /// `want` bytes. Requests may arrive a little out of order (the kernel reads ahead
    /// from several threads), so the last two windows are kept and a position inside any
    /// window being fetched ahead counts as sequential.
    async fn window_at(&mut self, pos: u64, want: u64) -> Result<&Window, ClientError> {
        let held = |w: &Window| pos >= w.offset && (pos < w.offset + w.data.len() as u64 || pos >= w.size);
        if let Some(i) = self.recent.iter().position(held) {
            return Ok(&self.recent[i]);
        }
        let ahead_at = self.ahead.iter().position(|(at, len, _)| pos >= *at && pos < at + len);
        let (window, sequential) = match ahead_at {
            Some(i) => {
                // The reader moved past the windows before it.
                for (_, _, task) in self.ahead.drain(..i) {
                    task.abort();
                }
                let (at, _, task) = self
                    .ahead
                    .pop_front()
                    .ok_or_else(|| ClientError::BadReply("read-ahead window vanished".into()))?;
                let (data, size, version) = task
                    .await
                    .map_err(|e| ClientError::BadReply(format!("read-ahead task: {e}")))??;
                self.saw(version);
                (Window { offset: at, data, size }, true)
            }
            None => {
                let last_end = self.recent.back().map(|w| w.offset + w.data.len() as u64);
                let sequential = last_end == Some(pos) || (last_end.is_none() && pos == 0);
                self.abort_ahead();
                let len = if sequential {
                    self.window_bytes
                } else {
                    self.window_bytes = self.client.stripe_bytes() as u64;
                    want.clamp(u64::from(FILE_BLOCK_BYTES), READ_BYTES_MAX)
                };
                let (data, size, version) = self
                    .client
                    .read_range_at(self.inode, pos, len, self.min_version())
                    .await?;
                self.saw(version);
                let window = Window {
                    offset: pos,
                    data,
                    size,
                };
                (window, sequential)
            }
        };
        if sequential {
            self.window_bytes = (self.window_bytes * 2).min(READ_BYTES_MAX);
            let mut next = match self.ahead.back() {
                Some((at, len, _)) => at + len,
                None => window.offset + window.data.len() as u64,
            };
            while self.ahead.len() < WINDOWS_AHEAD && next < window.size {
                let (client, inode, len) = (self.client.clone(), self.inode, self.window_bytes);
                let min_version = self.min_version();
                let task = tokio::spawn(async move { client.read_range_at(inode, next, len, min_version).await });
                self.ahead.push_back((next, len, task));
                next += len;
            }
        }
        if self.recent.len() == RECENT_WINDOWS {
            self.recent.pop_front();
        }
        self.recent.push_back(window);
        self.recent
            .back()
            .ok_or_else(|| ClientError::BadReply("no window after a read".into()))
    }
}
