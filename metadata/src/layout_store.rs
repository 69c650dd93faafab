//! Where a file's layout lives in `Cf::Layouts`: a header (code, version, inline bytes)
//! and one key per stripe, by offset, so that a commit writes only the stripes it changes
//! and a reader of a range reads only that range's stripes (DESIGN.md, "Files, versions
//! and writes"). Groups whose entries predate `STRIPE_KEYS_FORMAT` keep a layout as one
//! value under the inode's key, which the build before reads; a layout of that form is
//! split when it is next written, and both forms are read.

use std::ops::Range;

use cairn_common::namespace::stripe_part;
use cairn_common::proto::metadata::{Errno, Layout, Stripe};
use prost::Message;

use crate::db::{u64_key, Cf};
use crate::errors::{refuse, OpResult};
use crate::records::shard_ref_key;
use crate::txn::{Records, Txn};

const HEADER: u8 = b'h';
const STRIPE: u8 = b's';

fn header_key(ino: u64) -> [u8; 9] {
    let mut k = [HEADER; 9];
    k[..8].copy_from_slice(&u64_key(ino));
    k
}

fn stripe_key(ino: u64, offset: u64) -> [u8; 17] {
    let mut k = [STRIPE; 17];
    k[..8].copy_from_slice(&u64_key(ino));
    k[9..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// The stripe keys of `ino` for stripes starting in `offsets`; the end of the last range
/// (`u64::MAX`) takes the key past every offset.
fn stripe_keys(ino: u64, offsets: &Range<u64>) -> ([u8; 17], Vec<u8>) {
    let end = if offsets.end == u64::MAX {
        let mut k = u64_key(ino).to_vec();
        k.push(STRIPE + 1);
        k
    } else {
        stripe_key(ino, offsets.end).to_vec()
    };
    (stripe_key(ino, offsets.start), end)
}

/// Up to `limit` stripes of `ino` starting in `offsets`, in file order or from the last.
fn stripes(r: &impl Records, ino: u64, offsets: Range<u64>, reverse: bool, limit: usize) -> OpResult<Vec<Stripe>> {
    let (start, end) = stripe_keys(ino, &offsets);
    r.scan(Cf::Layouts, &start[..]..&end[..], reverse, limit)?
        .into_iter()
        .map(|(_, v)| Ok(Stripe::decode(v.as_slice())?))
        .collect()
}

/// The last stripe of `ino` starting below `offset`.
fn stripe_before(r: &impl Records, ino: u64, offset: u64) -> OpResult<Option<Stripe>> {
    Ok(stripes(r, ino, 0..offset, true, 1)?.pop())
}

fn end(s: &Stripe) -> u64 {
    s.offset.saturating_add(s.length)
}

fn decode(bytes: Option<Vec<u8>>) -> OpResult<Option<Layout>> {
    Ok(bytes.map(|b| Layout::decode(b.as_slice())).transpose()?)
}

/// Which stripes a read of a layout wants.
#[derive(Clone, Debug)]
pub enum Wanted {
    All,
    /// Those holding bytes of the range.
    Range(Range<u64>),
    /// None: the code, version and inline bytes only.
    None,
}

/// The layout of `ino` with the stripes `wanted`.
pub fn layout(r: &impl Records, ino: u64, wanted: Wanted) -> OpResult<Layout> {
    let Some(mut head) = decode(r.get(Cf::Layouts, &header_key(ino))?)? else {
        let mut whole = decode(r.get(Cf::Layouts, &u64_key(ino))?)?.unwrap_or_default();
        match wanted {
            Wanted::All => {}
            Wanted::Range(range) => whole.stripes.retain(|s| stripe_part(s, &range).is_some()),
            Wanted::None => whole.stripes.clear(),
        }
        return Ok(whole);
    };
    head.stripes = match wanted {
        Wanted::All => stripes(r, ino, 0..u64::MAX, false, usize::MAX)?,
        Wanted::Range(range) => {
            let first = stripe_before(r, ino, range.start)?.filter(|s| end(s) > range.start);
            let rest = stripes(r, ino, range.start..range.end.max(range.start), false, usize::MAX)?;
            first.into_iter().chain(rest).collect()
        }
        Wanted::None => Vec::new(),
    };
    Ok(head)
}

/// The header of `ino`'s layout in its split form (default: none yet).
fn header(txn: &Txn<'_>, ino: u64) -> OpResult<Layout> {
    Ok(decode(txn.get(Cf::Layouts, &header_key(ino))?)?.unwrap_or_default())
}

fn put_header(txn: &mut Txn<'_>, ino: u64, head: &Layout) {
    txn.put(Cf::Layouts, header_key(ino), head.encode_to_vec());
}

fn refs(ino: u64, s: &Stripe) -> impl Iterator<Item = Vec<u8>> + '_ {
    s.shards
        .iter()
        .map(move |sh| shard_ref_key(sh.dataserver, &s.stripe_id, sh.index, ino))
}

/// Stores a stripe the layout did not name before, with its shard references.
fn add_stripe(txn: &mut Txn<'_>, ino: u64, s: &Stripe) {
    for r in refs(ino, s) {
        txn.put(Cf::ShardRefs, r, Vec::new());
    }
    txn.put(Cf::Layouts, stripe_key(ino, s.offset), s.encode_to_vec());
}

fn drop_stripe(txn: &mut Txn<'_>, ino: u64, s: &Stripe) {
    for r in refs(ino, s) {
        txn.delete(Cf::ShardRefs, r);
    }
    txn.delete(Cf::Layouts, stripe_key(ino, s.offset));
}

/// Puts a layout kept as one value into the split form (same shards, same references).
pub fn split(txn: &mut Txn<'_>, ino: u64) -> OpResult<()> {
    let Some(mut whole) = decode(txn.get(Cf::Layouts, &u64_key(ino))?)? else {
        return Ok(());
    };
    for s in std::mem::take(&mut whole.stripes) {
        txn.put(Cf::Layouts, stripe_key(ino, s.offset), s.encode_to_vec());
    }
    put_header(txn, ino, &whole);
    txn.delete(Cf::Layouts, u64_key(ino));
    Ok(())
}

/// Puts a split layout back into one value, the form entries before
/// `STRIPE_KEYS_FORMAT` store.
pub fn join(txn: &mut Txn<'_>, ino: u64) -> OpResult<()> {
    let Some(mut whole) = decode(txn.get(Cf::Layouts, &header_key(ino))?)? else {
        return Ok(());
    };
    whole.stripes = stripes(txn, ino, 0..u64::MAX, false, usize::MAX)?;
    for s in &whole.stripes {
        txn.delete(Cf::Layouts, stripe_key(ino, s.offset));
    }
    txn.delete(Cf::Layouts, header_key(ino));
    txn.put(Cf::Layouts, u64_key(ino), whole.encode_to_vec());
    Ok(())
}

/// Removes the layout of `ino`, whatever its form, and its shard references.
pub fn remove(txn: &mut Txn<'_>, ino: u64) -> OpResult<()> {
    split(txn, ino)?;
    for s in stripes(txn, ino, 0..u64::MAX, false, usize::MAX)? {
        drop_stripe(txn, ino, &s);
    }
    txn.delete(Cf::Layouts, header_key(ino));
    Ok(())
}

/// A change to a split layout: a commit of changed stripes, of a whole layout, or a
/// truncate (no stripes).
#[derive(Debug)]
pub struct Change {
    /// Committed bytes below this stay; stripes past it go, the one across it is shortened.
    pub keep_below: u64,
    /// Stripes that take the place of those they cover, and the code they share; checked
    /// by the caller against the file's new size.
    pub layout: Layout,
    /// Whether `layout` is the file's whole layout (`keep_below` is 0): its code and inline
    /// bytes replace the file's even when it has no stripes.
    pub whole: bool,
    pub size: u64,
    pub version: u64,
}

/// Applies `c` to the split layout of `ino`; returns its new header (no stripes). Writes
/// only the stripes that change: a commit of one stripe to a file of a million writes one
/// stripe, and a truncate drops only the stripes past the new end.
pub fn change(txn: &mut Txn<'_>, ino: u64, c: Change) -> OpResult<Layout> {
    let bad = |m: String| Err(refuse(Errno::Einval, m));
    if c.keep_below > c.size {
        return bad(format!("bytes kept below {} past the size {}", c.keep_below, c.size));
    }
    if c.whole {
        return replace(txn, ino, c);
    }
    let mut head = header(txn, ino)?;
    if let Some(mut across) = stripe_before(txn, ino, c.keep_below)?.filter(|s| end(s) > c.keep_below) {
        across.length = c.keep_below - across.offset;
        txn.put(Cf::Layouts, stripe_key(ino, across.offset), across.encode_to_vec());
    }
    for s in stripes(txn, ino, c.keep_below..u64::MAX, false, usize::MAX)? {
        drop_stripe(txn, ino, &s);
    }
    let new = c.layout;
    let code = |l: &Layout| (l.data_shards, l.parity_shards, l.shard_unit_bytes);
    head.inline_data
        .truncate(usize::try_from(c.keep_below).unwrap_or(usize::MAX));
    if !new.stripes.is_empty() {
        if !head.inline_data.is_empty() {
            return bad("a layout has either inline bytes or stripes, not both".into());
        }
        let kept = !stripes(txn, ino, 0..u64::MAX, false, 1)?.is_empty();
        if kept && code(&head) != code(&new) {
            return bad(format!(
                "stripes of code {:?} beside kept stripes of code {:?}",
                code(&new),
                code(&head)
            ));
        }
        (head.data_shards, head.parity_shards, head.shard_unit_bytes) = code(&new);
        for s in &new.stripes {
            let overlaps = |o: &Stripe| {
                format!(
                    "stripe at {}..{} covers part of the stripe at {}..{}",
                    s.offset,
                    end(s),
                    o.offset,
                    end(o)
                )
            };
            if let Some(before) = stripe_before(txn, ino, s.offset)?.filter(|b| end(b) > s.offset) {
                return bad(overlaps(&before));
            }
            for covered in stripes(txn, ino, s.offset..end(s), false, usize::MAX)? {
                if end(&covered) > end(s) {
                    return bad(overlaps(&covered));
                }
                drop_stripe(txn, ino, &covered);
            }
            add_stripe(txn, ino, s);
        }
    }
    head.version = c.version;
    put_header(txn, ino, &head);
    Ok(head)
}

/// A whole layout (checked: stripes in file order) in place of `ino`'s: the header is the
/// new layout's, and of the stripes only those that differ are written, so a writer that
/// sends the whole layout of a big file costs the leader reads, not a rewrite.
fn replace(txn: &mut Txn<'_>, ino: u64, c: Change) -> OpResult<Layout> {
    let mut old = stripes(txn, ino, 0..u64::MAX, false, usize::MAX)?
        .into_iter()
        .peekable();
    for s in &c.layout.stripes {
        while let Some(gone) = old.next_if(|o| o.offset < s.offset) {
            drop_stripe(txn, ino, &gone);
        }
        match old.next_if(|o| o.offset == s.offset) {
            Some(same) if same == *s => {}
            Some(other) => {
                drop_stripe(txn, ino, &other);
                add_stripe(txn, ino, s);
            }
            None => add_stripe(txn, ino, s),
        }
    }
    for gone in old {
        drop_stripe(txn, ino, &gone);
    }
    let head = Layout {
        version: c.version,
        stripes: Vec::new(),
        ..c.layout
    };
    put_header(txn, ino, &head);
    Ok(head)
}

/// The stripe of `ino` with id `stripe_id`: at `offset` when the caller knows it, else
/// found by a scan of the layout.
pub fn find_stripe(txn: &Txn<'_>, ino: u64, stripe_id: &[u8], offset: Option<u64>) -> OpResult<Option<Stripe>> {
    let found = match offset {
        Some(at) => decode_stripe(txn.get(Cf::Layouts, &stripe_key(ino, at))?)?,
        None => stripes(txn, ino, 0..u64::MAX, false, usize::MAX)?
            .into_iter()
            .find(|s| s.stripe_id == stripe_id),
    };
    Ok(found.filter(|s| s.stripe_id == stripe_id))
}

fn decode_stripe(bytes: Option<Vec<u8>>) -> OpResult<Option<Stripe>> {
    Ok(bytes.map(|b| Stripe::decode(b.as_slice())).transpose()?)
}

/// Stores `new` in place of `old` (the same stripe, its shards moved), the header at
/// `version`.
pub fn replace_stripe(txn: &mut Txn<'_>, ino: u64, old: &Stripe, new: &Stripe, version: u64) -> OpResult<Layout> {
    drop_stripe(txn, ino, old);
    add_stripe(txn, ino, new);
    let mut head = header(txn, ino)?;
    head.version = version;
    put_header(txn, ino, &head);
    Ok(head)
}
