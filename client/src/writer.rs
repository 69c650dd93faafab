//! Streaming writes to one file, with bounded memory.
//!
//! The file is seen as slots of one stripe each (k × shard unit bytes, slot i at i × S).
//! Written bytes gather in per-slot buffers; a full buffer is sent at once as a stripe
//! (several in flight), so a sequential writer streams at the speed of the data path
//! while holding at most `DIRTY_SLOTS_MAX + STRIPES_IN_FLIGHT` stripes. A write into part
//! of a slot that already has committed bytes first loads them (read-modify-write of one
//! stripe: shards are immutable). Nothing is visible to readers until [`FileWriter::commit`]
//! publishes the new layout (compare-and-set on the version this writer started from),
//! which is what `fsync` and `close` wait for: a crash at any point before leaves the
//! previous content whole.
//!
//! A commit sends only the stripes written since the last one (`CommitStripes`), so its
//! cost does not grow with the file. A metadata group whose entries predate that refuses
//! it; the writer then commits the whole layout: the committed one with its stripes in
//! place.
//!
//! Opening a writer reads the file's layout; it commits without a write session (one
//! Raft entry per file written, not three) unless asked to [`FileWriter::hold`] the
//! file: then it keeps a session open (renewed as it is used), so an unlink while the
//! file is open keeps its inode alive until the writer closes. A metadata group whose
//! entries predate sessionless commits refuses them; the writer then opens a session
//! and commits again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_common::config::ErasureConfig;
use cairn_common::file_wire::{FileReply, FileRequest};
use cairn_common::namespace::{overlay_stripes, FILE_BYTES_MAX, INLINE_BYTES_MAX};
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, CloseSession, CommitLayout, CommitStripes, Errno, FileKind, GetLayout, Layout,
    OpenSession, RenewSession, SessionReply, Stripe,
};
use tokio::task::JoinSet;
use tracing::warn;

use crate::{bad_reply, CairnClient, ClientError, SESSION_TTL_MS};

/// Partly written slots kept in memory; past this the lowest is sent as it is (its
/// unwritten tail reads as zeros, and a later write there reloads it).
const DIRTY_SLOTS_MAX: usize = 4;
/// Stripes being stored at once by one writer.
const STRIPES_IN_FLIGHT: usize = 4;
/// Stripe buffers kept once their stripe is stored, for the next slots: a sequential
/// writer then fills memory it has touched before instead of faulting in fresh pages
/// for every stripe.
const SPARE_BUFFERS_MAX: usize = 2;

#[derive(Debug)]
pub struct FileWriter {
    client: Arc<CairnClient>,
    inode: u64,
    /// The code this writer cuts its slots by: the client's when the writer started, so
    /// that its slots stay the same size for its whole life.
    erasure: ErasureConfig,
    /// The write session, once one is needed.
    session: Option<u64>,
    renewed: Instant,
    /// The committed state this writer builds on; its layout version is the commit's
    /// compare-and-set.
    attr: Attr,
    /// Whether the committed layout is cut in this client's slots; if not (inline bytes,
    /// or another code), every slot is rewritten at commit.
    base_aligned: bool,
    /// Committed bytes below this offset are still the file's (a truncate lowers it).
    valid_old: u64,
    size: u64,
    dirty: BTreeMap<u64, BytesMut>,
    /// Empty buffers of a whole slot's capacity, from stripes already stored.
    spare: Vec<BytesMut>,
    written: BTreeMap<u64, Stripe>,
    /// Each stripe's result, with its bytes (whose buffer may be reused).
    in_flight: JoinSet<(u64, Result<Stripe, ClientError>, Bytes)>,
    in_flight_slots: HashSet<u64>,
    /// Why a stripe could not be stored or a commit failed: its bytes are gone, so this
    /// writer commits nothing more.
    failed: Option<String>,
}

/// What a commit publishes.
#[derive(Debug)]
enum Commit {
    /// A small file's bytes, inline in the layout.
    Whole(Layout),
    /// The stripes written since the last commit; the committed bytes below `keep_below`
    /// stay where they are not written over.
    Stripes { layout: Layout, keep_below: u64 },
}

/// Puts `src` at `at` in `buf`, growing it (a gap before `at` reads as zeros). Bytes past
/// the end are appended, not zeroed first and then overwritten: a sequential writer
/// fills each stripe buffer with one copy.
fn put_at(buf: &mut BytesMut, at: usize, src: &[u8]) {
    if buf.len() < at {
        buf.resize(at, 0);
    }
    let over = (buf.len() - at).min(src.len());
    buf[at..at + over].copy_from_slice(&src[..over]);
    buf.extend_from_slice(&src[over..]);
}

impl CairnClient {
    /// A writer of file `inode`, starting from its current content.
    pub async fn open_writer(self: &Arc<Self>, inode: u64) -> Result<FileWriter, ClientError> {
        let (attr, layout) = self.committed(inode, false).await?;
        match attr.kind() {
            FileKind::Regular => {}
            FileKind::Directory => return Err(ClientError::refused(Errno::Eisdir, "cannot write a directory")),
            _ => return Err(ClientError::refused(Errno::Einval, "can only write a regular file")),
        }
        Ok(FileWriter::start(self.clone(), attr, layout))
    }

    /// File `inode`'s committed attributes and layout, with or without its stripes.
    async fn committed(&self, inode: u64, stripes: bool) -> Result<(Attr, Layout), ClientError> {
        match self
            .meta(Op::GetLayout(GetLayout {
                inode,
                no_stripes: !stripes,
                ..Default::default()
            }))
            .await?
        {
            meta_reply::Result::Layout(l) => Ok((l.attr.unwrap_or_default(), l.layout.unwrap_or_default())),
            other => Err(bad_reply(other)),
        }
    }

    /// A writer of `created`, a file this client has just created (empty: there is
    /// nothing to read first).
    pub fn new_file_writer(self: &Arc<Self>, created: Attr) -> FileWriter {
        FileWriter::start(self.clone(), created, Layout::default())
    }

    async fn open_session(&self, inode: u64) -> Result<SessionReply, ClientError> {
        match self
            .meta(Op::OpenSession(OpenSession {
                inode,
                ttl_ms: SESSION_TTL_MS,
                no_stripes: true,
            }))
            .await?
        {
            meta_reply::Result::Session(s) => Ok(s),
            other => Err(bad_reply(other)),
        }
    }

    /// Stores `data` (one stripe at most) as file bytes at `offset`; the record goes into
    /// a layout to commit.
    pub async fn write_stripe(&self, offset: u64, data: Bytes) -> Result<Stripe, ClientError> {
        match self.exchange(FileRequest::write_stripe(offset, data)).await? {
            FileReply::Stripe(s) => Ok(s),
            other => Err(bad_reply(other)),
        }
    }

    /// Replace the content of file `inode` with `data`. Returns after the new layout is
    /// committed: from then on every reader sees the new content, whole.
    pub async fn write_file(self: &Arc<Self>, inode: u64, data: Bytes) -> Result<Attr, ClientError> {
        let mut w = self.open_writer(inode).await?;
        let result = async {
            w.set_len(0).await?;
            w.write(0, &data).await?;
            w.commit().await
        }
        .await;
        w.close().await;
        result
    }
}

impl FileWriter {
    fn start(client: Arc<CairnClient>, attr: Attr, layout: Layout) -> FileWriter {
        let mut w = FileWriter {
            erasure: client.erasure(),
            client,
            inode: attr.inode,
            session: None,
            renewed: Instant::now(),
            attr: Attr::default(),
            base_aligned: true,
            valid_old: 0,
            size: 0,
            dirty: BTreeMap::new(),
            spare: Vec::new(),
            written: BTreeMap::new(),
            in_flight: JoinSet::new(),
            in_flight_slots: HashSet::new(),
            failed: None,
        };
        w.rebase(attr, layout);
        w
    }

    /// The file's size with this writer's changes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether there are changes not committed yet.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
            || !self.written.is_empty()
            || !self.in_flight_slots.is_empty()
            || self.size != self.attr.size
    }

    fn slot_bytes(&self) -> u64 {
        self.erasure.stripe_bytes() as u64
    }

    fn check_failed(&self) -> Result<(), ClientError> {
        match &self.failed {
            Some(why) => Err(ClientError::refused(
                Errno::Eio,
                format!("an earlier write of this file failed: {why}"),
            )),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.failed = Some(e.to_string());
        e
    }

    /// Starts over from a committed state of the file.
    /// `layout` need not list its stripes: every writer cuts a file in stripes of its
    /// code's size, so a layout of this client's code (or of none: no stripes) is cut in
    /// this writer's slots.
    fn rebase(&mut self, attr: Attr, layout: Layout) {
        let erasure = &self.erasure;
        let ours = (
            u32::from(erasure.data_shards),
            u32::from(erasure.parity_shards),
            erasure.shard_unit_bytes,
        );
        let code = (layout.data_shards, layout.parity_shards, layout.shard_unit_bytes);
        self.base_aligned = layout.inline_data.is_empty() && (code == ours || code == (0, 0, 0));
        self.valid_old = attr.size;
        self.size = attr.size;
        self.attr = attr;
        self.written.clear();
    }

    /// A writer with nothing uncommitted starts over from the file's committed state:
    /// another client may have committed since it opened (a mount that takes a lock
    /// does this, so that what it writes under the lock builds on the last holder's).
    pub async fn refresh(&mut self) -> Result<(), ClientError> {
        if self.is_dirty() || self.failed.is_some() {
            return Ok(());
        }
        let (attr, layout) = self.client.committed(self.inode, false).await?;
        self.rebase(attr, layout);
        Ok(())
    }

    /// Keeps the file's inode alive while this writer lives, even once its last name is
    /// gone (a write session, renewed as the writer is used).
    pub async fn hold(&mut self) -> Result<(), ClientError> {
        if self.session.is_none() {
            self.open_session().await?;
        }
        Ok(())
    }

    /// Opens a session. A writer with changes of its own needs the file as it read it
    /// (nobody committed since); one without starts over from what the session shows.
    async fn open_session(&mut self) -> Result<(), ClientError> {
        let s = self.client.open_session(self.inode).await?;
        self.session = Some(s.session);
        self.renewed = Instant::now();
        let attr = s.attr.unwrap_or_default();
        if attr.layout_version != self.attr.layout_version {
            if self.is_dirty() {
                let e = ClientError::refused(Errno::Estale, "the file was rewritten while this writer held it");
                return Err(self.fail(e));
            }
            self.rebase(attr, s.layout.unwrap_or_default());
        }
        Ok(())
    }

    /// Keeps the write session alive; one that lapsed (a file held open and idle) is
    /// replaced as long as nobody committed since.
    async fn renew_if_due(&mut self) -> Result<(), ClientError> {
        let Some(session) = self.session else {
            return Ok(());
        };
        if self.renewed.elapsed() < Duration::from_millis(u64::from(SESSION_TTL_MS / 3)) {
            return Ok(());
        }
        let renew = Op::RenewSession(RenewSession {
            session,
            ttl_ms: SESSION_TTL_MS,
        });
        match self.client.meta(renew).await {
            Ok(_) => self.renewed = Instant::now(),
            Err(e) if e.errno() == Some(Errno::Estale) => self.open_session().await?,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Writes `data` at `offset` (extending the file if it ends past its size).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write_from(offset, data, None).await.map(drop)
    }

    /// Like [`FileWriter::write`], but each whole slot that `data` covers is stored
    /// straight from it, not copied into a stripe buffer first; the other bytes are
    /// copied as usual. For large writes whose memory is kept anyway (staged checkpoint
    /// tensors): the copy was a tenth of a checkpoint's CPU in the client. Returns
    /// whether any stripe went out from `data`.
    pub async fn write_shared(&mut self, offset: u64, data: &Bytes) -> Result<bool, ClientError> {
        self.write_from(offset, data, Some(data)).await
    }

    /// Waits until every stripe sent so far is stored: then the writer holds no
    /// reference to the memory given to [`FileWriter::write_shared`], except where a
    /// stripe failed (the writer has failed; its references go as the client drops the
    /// requests).
    pub async fn wait_sent(&mut self) -> Result<(), ClientError> {
        self.drain().await
    }

    /// Whether stripes sent are still being stored (so may hold memory given to
    /// [`FileWriter::write_shared`]). A commit, or [`FileWriter::wait_sent`], that
    /// succeeds leaves none.
    pub fn is_sending(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// [`FileWriter::write`] of `data`, which is `shared` where given.
    async fn write_from(&mut self, offset: u64, data: &[u8], shared: Option<&Bytes>) -> Result<bool, ClientError> {
        self.check_failed()?;
        if data.is_empty() {
            return Ok(false);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= FILE_BYTES_MAX)
            .ok_or_else(|| {
                ClientError::refused(Errno::Efbig, format!("a write at {offset} ends past {FILE_BYTES_MAX}"))
            })?;
        self.renew_if_due().await?;
        let s = self.slot_bytes();
        let mut pos = offset;
        let mut sent_shared = false;
        while pos < end {
            let slot = pos / s;
            let slot_start = slot * s;
            let (from, to) = ((pos - slot_start) as usize, (end - slot_start).min(s) as usize);
            let src = (pos - offset) as usize;
            let dirty = self.dirty.remove(&slot);
            if dirty.is_none() && (self.written.contains_key(&slot) || self.in_flight_slots.contains(&slot)) {
                // Its bytes went out as a stripe: publish it, then rewrite from it.
                self.commit().await?;
            }
            let whole_slot = from == 0 && to as u64 == s;
            let mut buf = match (dirty, shared.filter(|_| whole_slot)) {
                (None, Some(shared)) => {
                    pos = slot_start + s;
                    self.size = self.size.max(pos);
                    self.send(slot, shared.slice(src..src + to)).await?;
                    sent_shared = true;
                    continue;
                }
                (Some(b), _) => b,
                (None, None) => self.load_slot(slot, from, to).await?,
            };
            put_at(&mut buf, from, &data[src..src + (to - from)]);
            pos = slot_start + to as u64;
            self.size = self.size.max(pos);
            if buf.len() as u64 == s {
                self.send(slot, buf.freeze()).await?;
            } else {
                self.dirty.insert(slot, buf);
            }
        }
        while self.dirty.len() > DIRTY_SLOTS_MAX {
            if let Some((slot, buf)) = self.dirty.pop_first() {
                self.send(slot, buf.freeze()).await?;
            }
        }
        Ok(sent_shared)
    }

    /// The committed bytes of `slot` that are still the file's, when a write of
    /// `from..to` in it does not cover them all (else an empty buffer).
    async fn load_slot(&mut self, slot: u64, from: usize, to: usize) -> Result<BytesMut, ClientError> {
        let slot_start = slot * self.slot_bytes();
        let old = self.valid_old.saturating_sub(slot_start).min(self.slot_bytes()) as usize;
        // A whole slot's capacity from the start: a buffer grown by the writes that fill
        // it would be copied at each doubling. Capacity never written costs no memory.
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.slot_bytes() as usize));
        if old == 0 || (from == 0 && to >= old) {
            return Ok(buf);
        }
        while buf.len() < old {
            let at = slot_start + buf.len() as u64;
            let (data, _) = self.client.read_range(self.inode, at, (old - buf.len()) as u64).await?;
            if data.is_empty() {
                break;
            }
            buf.extend_from_slice(&data);
        }
        // Someone else shortened the file meanwhile: their commit will make ours fail.
        buf.resize(old, 0);
        Ok(buf)
    }

    async fn send(&mut self, slot: u64, data: Bytes) -> Result<(), ClientError> {
        while self.in_flight.len() >= STRIPES_IN_FLIGHT {
            self.reap_one().await?;
        }
        let client = self.client.clone();
        let offset = slot * self.slot_bytes();
        self.in_flight_slots.insert(slot);
        self.in_flight.spawn(async move {
            let stored = client.write_stripe(offset, data.clone()).await;
            (slot, stored, data)
        });
        Ok(())
    }

    /// Keeps the buffer of a stored stripe for a later slot, when nothing else holds it.
    fn keep_spare(&mut self, data: Bytes) {
        if self.spare.len() >= SPARE_BUFFERS_MAX {
            return;
        }
        if let Ok(mut buf) = data.try_into_mut() {
            if buf.capacity() >= self.slot_bytes() as usize {
                buf.clear();
                self.spare.push(buf);
            }
        }
    }

    async fn reap_one(&mut self) -> Result<(), ClientError> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok((slot, Ok(stripe), data))) => {
                self.in_flight_slots.remove(&slot);
                self.written.insert(slot, stripe);
                self.keep_spare(data);
                Ok(())
            }
            Some(Ok((_, Err(e), _))) => Err(self.fail(e)),
            Some(Err(e)) => Err(self.fail(ClientError::BadReply(format!("stripe write task: {e}")))),
        }
    }

    async fn drain(&mut self) -> Result<(), ClientError> {
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        Ok(())
    }

    /// Truncates or extends the file to `size` (extended bytes read as zeros).
    pub async fn set_len(&mut self, size: u64) -> Result<(), ClientError> {
        self.check_failed()?;
        if size > FILE_BYTES_MAX {
            return Err(ClientError::refused(
                Errno::Efbig,
                format!("size {size} beyond {FILE_BYTES_MAX}"),
            ));
        }
        if size < self.size {
            // Stripes being stored are trimmed by their records: wait for them.
            self.drain().await?;
            let s = self.slot_bytes();
            self.dirty.retain(|slot, _| slot * s < size);
            if let Some((slot, buf)) = self.dirty.iter_mut().next_back() {
                buf.truncate(buf.len().min((size - slot * s) as usize));
            }
            self.written.retain(|slot, _| slot * s < size);
            for (slot, stripe) in self.written.iter_mut() {
                stripe.length = stripe.length.min(size - slot * s);
            }
            self.valid_old = self.valid_old.min(size);
        }
        self.size = size;
        Ok(())
    }

    /// Publishes everything written so far (one layout commit through Raft); returns the
    /// file's attributes once every reader sees the new content. This is `fsync`.
    pub async fn commit(&mut self) -> Result<Attr, ClientError> {
        self.check_failed()?;
        if !self.is_dirty() {
            return Ok(self.attr);
        }
        if self.client.sessions_needed.holds() {
            self.hold().await?;
        }
        self.renew_if_due().await?;
        let commit = match self.build_commit().await {
            Ok(c) => c,
            Err(e) => return Err(self.fail(e)),
        };
        let mut result = self.send_commit(&commit).await;
        if self.session.is_none() && result.as_ref().is_err_and(|e| e.errno() == Some(Errno::Estale)) {
            // The group's entries predate commits without a session.
            self.client.sessions_needed.learn();
            self.hold().await?;
            result = self.send_commit(&commit).await;
        }
        match result {
            Ok(meta_reply::Result::Layout(l)) => {
                let attr = l.attr.unwrap_or_default();
                self.rebase(attr, l.layout.unwrap_or_default());
                Ok(attr)
            }
            Ok(other) => Err(self.fail(bad_reply(other))),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sends `commit`: the changed stripes, or, to a group whose entries predate that,
    /// the whole layout they make.
    async fn send_commit(&self, commit: &Commit) -> Result<meta_reply::Result, ClientError> {
        let whole = |layout: Layout| {
            Op::CommitLayout(CommitLayout {
                session: self.session.unwrap_or(0),
                inode: self.inode,
                expected_version: self.attr.layout_version,
                layout: Some(layout),
                size: self.size,
            })
        };
        let (layout, keep_below) = match commit {
            Commit::Whole(layout) => return self.client.meta(whole(layout.clone())).await,
            Commit::Stripes { layout, keep_below } => (layout, *keep_below),
        };
        if !self.client.whole_commits_needed.holds() {
            let result = self
                .client
                .meta(Op::CommitStripes(CommitStripes {
                    session: self.session.unwrap_or(0),
                    inode: self.inode,
                    expected_version: self.attr.layout_version,
                    layout: Some(layout.clone()),
                    size: self.size,
                    keep_below,
                }))
                .await;
            // EOPNOTSUPP: the group's entries predate it; EINVAL: so does the leader's build.
            let older = |e: &ClientError| matches!(e.errno(), Some(Errno::Eopnotsupp | Errno::Einval));
            if !result.as_ref().is_err_and(older) {
                return result;
            }
            self.client.whole_commits_needed.learn();
        }
        let (attr, committed) = self.client.committed(self.inode, true).await?;
        if attr.layout_version != self.attr.layout_version {
            return Err(ClientError::refused(
                Errno::Eagain,
                "another writer committed first: the layout changed since this writer opened",
            ));
        }
        let stripes = overlay_stripes(&committed, keep_below, &layout.stripes);
        self.client
            .meta(whole(Layout {
                stripes,
                ..layout.clone()
            }))
            .await
    }

    /// Stores every pending slot and returns what to commit. A file small enough keeps
    /// its bytes inline in the metadata (no shard I/O at all).
    async fn build_commit(&mut self) -> Result<Commit, ClientError> {
        let s = self.slot_bytes();
        if self.size <= INLINE_BYTES_MAX as u64 && self.written.is_empty() && self.in_flight.is_empty() {
            let mut bytes = match self.dirty.remove(&0) {
                Some(b) => b,
                None => self.load_slot(0, 0, 0).await?,
            };
            bytes.resize(self.size as usize, 0);
            return Ok(Commit::Whole(Layout {
                inline_data: bytes.to_vec(),
                ..Layout::default()
            }));
        }
        if !self.base_aligned {
            // Slots not written here hold their bytes only in the old layout: move them.
            for slot in 0..self.valid_old.div_ceil(s) {
                if self.dirty.contains_key(&slot)
                    || self.written.contains_key(&slot)
                    || self.in_flight_slots.contains(&slot)
                {
                    continue;
                }
                let buf = self.load_slot(slot, 0, 0).await?;
                self.send(slot, buf.freeze()).await?;
            }
        }
        for (slot, buf) in std::mem::take(&mut self.dirty) {
            self.send(slot, buf.freeze()).await?;
        }
        self.drain().await?;
        let erasure = &self.erasure;
        let layout = Layout {
            version: 0,
            data_shards: erasure.data_shards.into(),
            parity_shards: erasure.parity_shards.into(),
            shard_unit_bytes: erasure.shard_unit_bytes,
            stripes: self.written.values().cloned().collect(),
            inline_data: Vec::new(),
        };
        let keep_below = if self.base_aligned { self.valid_old } else { 0 };
        Ok(Commit::Stripes { layout, keep_below })
    }

    /// Ends the write session if there is one (uncommitted changes are dropped: call
    /// `commit` first).
    pub async fn close(mut self) {
        self.in_flight.abort_all();
        let Some(session) = self.session else {
            return;
        };
        if let Err(e) = self.client.meta(Op::CloseSession(CloseSession { session })).await {
            // The lease expires on its own.
            warn!(session, "closing write session: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `put_at` gives what overwriting a zero-extended copy gives.
        #[test]
        fn put_at_is_an_overwrite_that_grows(
            old in proptest::collection::vec(any::<u8>(), 0..64),
            at in 0usize..96,
            src in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut want = old.clone();
            want.resize(want.len().max(at + src.len()), 0);
            want[at..at + src.len()].copy_from_slice(&src);
            let mut buf = BytesMut::from(&old[..]);
            put_at(&mut buf, at, &src);
            prop_assert_eq!(&buf[..], &want[..]);
        }
    }
}
