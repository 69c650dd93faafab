//! Applying one Raft entry's proposal: decode each request, answer a retry from the
//! dedupe table, otherwise run the mutation and remember its answer.

use cairn_common::proto::metadata::{meta_request::Op, Errno, MetaReply, MetaRequest};
use prost::Message;
use rocksdb::{Direction, IteratorMode};

use crate::db::{u64_key, Cf, Db};
use crate::errors::{error_reply, refuse, OpError, OpResult};
use crate::namespace::Apply;
use crate::records::{dedupe_key, parse_session_expiry_key, DedupeRecord};
use crate::txn::Txn;
use crate::types::Proposal;

pub const CLIENT_ID_BYTES: usize = 16;
/// Sessions ended by one expiry sweep; the rest wait for the next.
const EXPIRED_PER_SWEEP_MAX: usize = 10_000;

/// The idempotency key of a mutation, or why it has none.
pub fn idempotency_key(req: &MetaRequest) -> OpResult<Vec<u8>> {
    if req.client_id.len() != CLIENT_ID_BYTES || req.request_id == 0 {
        return Err(refuse(
            Errno::Einval,
            format!("a mutation needs a {CLIENT_ID_BYTES}-byte client id and a non-zero request id"),
        ));
    }
    Ok(dedupe_key(&req.client_id, req.request_id))
}

/// Apply one proposal; returns the encoded replies in request order. An `Err` is a storage
/// failure, never a client's fault.
pub fn apply_proposal(db: &Db, txn: &mut Txn<'_>, p: &Proposal, dedupe_max: u64) -> Result<Vec<Vec<u8>>, String> {
    // The leader's clock, never going back across leader changes.
    txn.counters.clock_ns = txn.counters.clock_ns.max(p.now_ns);
    let now = txn.counters.clock_ns;
    txn.keep();
    let mut replies = Vec::with_capacity(p.requests.len());
    for bytes in &p.requests {
        replies.push(apply_request(txn, now, p.format, bytes, dedupe_max)?.encode_to_vec());
    }
    if p.expire_sessions {
        expire_sessions(db, txn, now, p.format)?;
    }
    Ok(replies)
}

fn storage(e: OpError) -> String {
    match e {
        OpError::Storage(s) => s,
        OpError::Refused(e) => e.message,
    }
}

fn apply_request(txn: &mut Txn<'_>, now: i64, format: u16, bytes: &[u8], dedupe_max: u64) -> Result<MetaReply, String> {
    let req = match MetaRequest::decode(bytes) {
        Ok(r) => r,
        Err(e) => return Ok(refuse(Errno::Einval, format!("request does not decode: {e}")).into_reply()),
    };
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(e) => return Ok(e.into_reply()),
    };
    if let Some(rec) = txn.get(Cf::Dedupe, &key).map_err(|e| e.to_string())? {
        let rec = DedupeRecord::decode(rec.as_slice()).map_err(|e| e.to_string())?;
        return MetaReply::decode(rec.reply.as_slice()).map_err(|e| e.to_string());
    }
    let result = match req.op {
        Some(op) => run(&mut Apply { txn, now, format }, op),
        None => Err(refuse(Errno::Einval, "request names no operation")),
    };
    let reply = match result {
        Ok(reply) => {
            txn.keep();
            reply
        }
        Err(OpError::Refused(e)) => {
            txn.roll_back();
            error_reply(e)
        }
        Err(e @ OpError::Storage(_)) => return Err(storage(e)),
    };
    remember(txn, key, &reply, dedupe_max);
    txn.keep();
    Ok(reply)
}

fn run(a: &mut Apply<'_, '_>, op: Op) -> OpResult<MetaReply> {
    match op {
        Op::Create(c) => a.create(c),
        Op::Mkdir(m) => a.mkdir(m),
        Op::Symlink(s) => a.symlink(s),
        Op::Link(l) => a.link(l),
        Op::Unlink(u) => a.unlink(u.parent, &u.name),
        Op::Rmdir(r) => a.rmdir(r.parent, &r.name),
        Op::Rename(r) => a.rename(r),
        Op::Setattr(s) => a.setattr(s),
        Op::OpenSession(o) => a.open_session(o),
        Op::RenewSession(r) => a.renew_session(r.session, r.ttl_ms),
        Op::CloseSession(c) => a.close_session(c.session),
        Op::CommitLayout(c) => a.commit_layout(c),
        Op::CommitStripes(c) => a.commit_stripes(c),
        Op::ReplaceShard(r) => a.replace_shard(r),
        Op::SetDraining(d) => a.set_draining(d),
        Op::SetEntryFormat(s) => a.set_entry_format(s),
        Op::SetXattr(s) => a.set_xattr(s),
        Op::RemoveXattr(r) => a.remove_xattr(r),
        Op::OpenLockSession(o) => a.open_lock_session(o),
        Op::SetLock(l) => a.set_lock(l),
        // What `is_mutation` calls a read is answered without the log.
        _ => Err(refuse(Errno::Einval, "reads are not proposed to the log")),
    }
}

/// Keep the answer for retries; the oldest answers go once the table is full.
fn remember(txn: &mut Txn<'_>, key: Vec<u8>, reply: &MetaReply, dedupe_max: u64) {
    let seq = txn.counters.dedupe_next;
    txn.counters.dedupe_next += 1;
    txn.counters.dedupe_count += 1;
    let rec = DedupeRecord {
        seq,
        reply: reply.encode_to_vec(),
    };
    txn.put(Cf::DedupeAge, u64_key(seq), key.clone());
    txn.put(Cf::Dedupe, key, rec.encode_to_vec());
    while txn.counters.dedupe_count > dedupe_max {
        let oldest = txn.counters.dedupe_oldest;
        txn.counters.dedupe_oldest += 1;
        txn.counters.dedupe_count -= 1;
        if let Ok(Some(old_key)) = txn.get(Cf::DedupeAge, &u64_key(oldest)) {
            txn.delete(Cf::Dedupe, old_key);
        }
        txn.delete(Cf::DedupeAge, u64_key(oldest));
    }
}

fn expire_sessions(db: &Db, txn: &mut Txn<'_>, now: i64, format: u16) -> Result<(), String> {
    let mut due = Vec::new();
    for item in db
        .raw()
        .iterator_cf(db.cf(Cf::SessionExpiry), IteratorMode::From(&[], Direction::Forward))
    {
        let (key, _) = item.map_err(|e| e.to_string())?;
        let Some((expires, session)) = parse_session_expiry_key(&key) else {
            continue;
        };
        if expires > now || due.len() >= EXPIRED_PER_SWEEP_MAX {
            break;
        }
        due.push(session);
    }
    for session in due {
        let mut a = Apply { txn, now, format };
        match a.expire_session(session) {
            Ok(()) => txn.keep(),
            Err(e) => return Err(storage(e)),
        }
    }
    Ok(())
}

/// The earliest lease expiry, for the leader's sweep timer.
pub fn earliest_expiry(db: &Db) -> Result<Option<i64>, rocksdb::Error> {
    let first = db
        .raw()
        .iterator_cf(db.cf(Cf::SessionExpiry), IteratorMode::Start)
        .next()
        .transpose()?;
    Ok(first.and_then(|(k, _)| parse_session_expiry_key(&k)).map(|(e, _)| e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cairn_common::namespace::{overlay_stripes, truncate_layout, ROOT};
    use cairn_common::proto::metadata::{
        meta_reply, Attr, CommitLayout, CommitStripes, Create, GetLayout, Layout, Mkdir, ReplaceShard, SetAttr,
        ShardLocation, Stripe, Unlink,
    };
    use cairn_common::versions::{SESSIONLESS_COMMIT_FORMAT, STRIPE_KEYS_FORMAT};

    use crate::records::shard_ref_key;

    use super::*;

    /// Applies `op` alone in an entry of `format`; returns its reply.
    fn apply(db: &Db, format: u16, id: u64, op: Op) -> MetaReply {
        apply_sized(db, format, id, op).0
    }

    /// `apply`, with the bytes of the batch it wrote.
    fn apply_sized(db: &Db, format: u16, id: u64, op: Op) -> (MetaReply, usize) {
        let mut txn = Txn::new(db).expect("txn");
        let request = MetaRequest {
            client_id: vec![7; CLIENT_ID_BYTES],
            request_id: id,
            op: Some(op),
            ..MetaRequest::default()
        };
        let proposal = Proposal {
            format,
            now_ns: 1,
            requests: vec![request.encode_to_vec()],
            expire_sessions: false,
        };
        let replies = apply_proposal(db, &mut txn, &proposal, 100).expect("applies");
        let batch = txn.into_batch().expect("batch");
        let bytes = batch.size_in_bytes();
        db.raw().write(batch).expect("writes");
        (MetaReply::decode(replies[0].as_slice()).expect("reply"), bytes)
    }

    fn errno(r: &MetaReply) -> Option<Errno> {
        match &r.result {
            Some(meta_reply::Result::Error(e)) => Some(e.errno()),
            _ => None,
        }
    }

    fn inode(r: &MetaReply) -> u64 {
        match &r.result {
            Some(meta_reply::Result::Attr(a)) => a.inode,
            other => panic!("not an attr: {other:?}"),
        }
    }

    fn commit(inode: u64, expected_version: u64) -> Op {
        Op::CommitLayout(CommitLayout {
            session: 0,
            inode,
            expected_version,
            layout: Some(Layout {
                inline_data: b"hello".to_vec(),
                ..Layout::default()
            }),
            size: 5,
        })
    }

    #[test]
    fn a_commit_without_a_session_applies_only_in_entries_that_allow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), 8 << 20).expect("db");
        let file = create_file(&db, 1, 1, b"f");
        // Older entries refuse it as an expired session, so writers open one and retry.
        let old = SESSIONLESS_COMMIT_FORMAT - 1;
        assert_eq!(errno(&apply(&db, old, 2, commit(file, 0))), Some(Errno::Estale));
        // From the format on, the layout version alone guards it.
        let now = SESSIONLESS_COMMIT_FORMAT;
        assert_eq!(errno(&apply(&db, now, 3, commit(file, 0))), None);
        assert_eq!(errno(&apply(&db, now, 4, commit(file, 0))), Some(Errno::Eagain));
        assert_eq!(errno(&apply(&db, now, 5, commit(file, 1))), None);
        assert_eq!(errno(&apply(&db, now, 6, commit(999, 0))), Some(Errno::Enoent));
        let dir = Op::Mkdir(Mkdir {
            parent: ROOT,
            name: b"d".to_vec(),
            mode: 0o755,
            ..Mkdir::default()
        });
        let d = inode(&apply(&db, now, 7, dir));
        assert_eq!(errno(&apply(&db, now, 8, commit(d, 0))), Some(Errno::Einval));
    }

    // ----- layouts stored one key per stripe -----

    /// Stripes of 4 data bytes (a 4+2 code of 1-byte units): slot i starts at 4 i.
    const SLOT: u64 = 4;

    fn stripe(slot: u64, length: u64, id: u64, dataservers: [u32; 6]) -> Stripe {
        Stripe {
            stripe_id: [id.to_be_bytes(), slot.to_be_bytes()].concat(),
            offset: slot * SLOT,
            length,
            shards: (0..6)
                .map(|i| ShardLocation {
                    index: i,
                    dataserver: dataservers[i as usize],
                    crc32c: 0,
                })
                .collect(),
        }
    }

    fn code(stripes: Vec<Stripe>) -> Layout {
        Layout {
            data_shards: 4,
            parity_shards: 2,
            shard_unit_bytes: 1,
            stripes,
            ..Layout::default()
        }
    }

    fn create_file(db: &Db, format: u16, id: u64, name: &[u8]) -> u64 {
        inode(&apply(
            db,
            format,
            id,
            Op::Create(Create {
                parent: ROOT,
                name: name.to_vec(),
                mode: 0o644,
                exclusive: true,
                ..Create::default()
            }),
        ))
    }

    fn commit_stripes(inode: u64, expected_version: u64, keep_below: u64, stripes: Vec<Stripe>, size: u64) -> Op {
        Op::CommitStripes(CommitStripes {
            session: 0,
            inode,
            expected_version,
            layout: Some(code(stripes)),
            size,
            keep_below,
        })
    }

    fn commit_whole(inode: u64, expected_version: u64, stripes: Vec<Stripe>, size: u64) -> Op {
        Op::CommitLayout(CommitLayout {
            session: 0,
            inode,
            expected_version,
            layout: Some(code(stripes)),
            size,
        })
    }

    /// The file's attributes and the stripes a reader of `range` (None: all) gets.
    fn read_layout(db: &Db, inode: u64, range: Option<(u64, u64)>) -> (Attr, Vec<Stripe>) {
        let (offset, length) = range.unwrap_or((0, 0));
        let op = Op::GetLayout(GetLayout {
            inode,
            offset,
            length,
            ..GetLayout::default()
        });
        match crate::reads::read(db, &op).expect("reads").result {
            Some(meta_reply::Result::Layout(l)) => (l.attr.unwrap_or_default(), l.layout.unwrap_or_default().stripes),
            other => panic!("not a layout: {other:?}"),
        }
    }

    /// Every shard reference the database holds.
    fn shard_refs(db: &Db) -> BTreeSet<Vec<u8>> {
        db.raw()
            .iterator_cf(db.cf(Cf::ShardRefs), IteratorMode::Start)
            .map(|r| r.expect("reads").0.into_vec())
            .collect()
    }

    fn refs_of(inode: u64, stripes: &[Stripe]) -> BTreeSet<Vec<u8>> {
        stripes
            .iter()
            .flat_map(|s| {
                s.shards
                    .iter()
                    .map(move |sh| shard_ref_key(sh.dataserver, &s.stripe_id, sh.index, inode))
            })
            .collect()
    }

    /// A small deterministic generator, so a failure replays.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    /// Runs random commits (of changed stripes from `delta_from` on, else whole),
    /// truncates and shard moves on one file, checking after each that the layout a reader
    /// gets, whole and by range, and the shard references are what the rules of
    /// `overlay_stripes` and `truncate_layout` give. The entry format steps from `first`
    /// to `STRIPE_KEYS_FORMAT` halfway, as a finalized upgrade raises it.
    fn random_history(seed: u64, first: u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), 8 << 20).expect("db");
        let mut rng = Lcg(seed);
        let file = create_file(&db, first, 1, b"f");
        let (mut model, mut size, mut version) = (Vec::<Stripe>::new(), 0u64, 0u64);
        for step in 0..300u64 {
            let format = if step < 150 { first } else { STRIPE_KEYS_FORMAT };
            let id = step + 2;
            let slots = 12;
            let op_kind = rng.below(10);
            let fresh = |rng: &mut Lcg| {
                let ds = [1, 2, 3, 4, 5, 6].map(|d| d + 10 * (rng.below(3) as u32));
                (0..slots)
                    .filter(|_| rng.below(4) == 0)
                    .map(|slot| stripe(slot, SLOT, id, ds))
                    .collect::<Vec<_>>()
            };
            let reply = if op_kind < 5 && format >= STRIPE_KEYS_FORMAT {
                let new = fresh(&mut rng);
                let keep_below = rng.below(size + 1);
                let end = new.last().map_or(0, |s| s.offset + s.length);
                let new_size = end.max(keep_below) + rng.below(3);
                model = overlay_stripes(&code(model), keep_below, &new);
                size = new_size;
                apply(
                    &db,
                    format,
                    id,
                    commit_stripes(file, version, keep_below, new, new_size),
                )
            } else if op_kind < 7 {
                let new = fresh(&mut rng);
                let new_size = new.last().map_or(0, |s| s.offset + s.length) + rng.below(3);
                model = new.clone();
                size = new_size;
                apply(&db, format, id, commit_whole(file, version, new, new_size))
            } else if op_kind < 9 {
                let new_size = rng.below(slots * SLOT + 2);
                if new_size == size {
                    continue;
                }
                model = truncate_layout(&code(model), new_size).stripes;
                size = new_size;
                let truncate = Op::Setattr(SetAttr {
                    inode: file,
                    size: Some(new_size),
                    ..SetAttr::default()
                });
                apply(&db, format, id, truncate)
            } else {
                let Some(i) = (!model.is_empty()).then(|| rng.below(model.len() as u64) as usize) else {
                    continue;
                };
                let from = model[i].shards[0].dataserver;
                let to = 100 + id as u32;
                model[i].shards[0].dataserver = to;
                let stripe_offset = (rng.below(2) == 0).then_some(model[i].offset);
                let moved = Op::ReplaceShard(ReplaceShard {
                    inode: file,
                    stripe_id: model[i].stripe_id.clone(),
                    index: 0,
                    from_dataserver: from,
                    to_dataserver: to,
                    stripe_offset,
                });
                apply(&db, format, id, moved)
            };
            assert_eq!(errno(&reply), None, "step {step}: {reply:?}");
            version += 1;
            let (attr, stored) = read_layout(&db, file, None);
            assert_eq!((attr.size, attr.layout_version), (size, version), "step {step}");
            assert_eq!(stored, model, "step {step}");
            let (from, length) = (rng.below(size + 2), rng.below(3 * SLOT) + 1);
            let range = from..from + length;
            let want: Vec<Stripe> = model
                .iter()
                .filter(|s| cairn_common::namespace::stripe_part(s, &range).is_some())
                .cloned()
                .collect();
            assert_eq!(
                read_layout(&db, file, Some((from, length))).1,
                want,
                "step {step}: {range:?}"
            );
            assert_eq!(shard_refs(&db), refs_of(file, &model), "step {step}");
            let legacy = db.get(Cf::Layouts, &u64_key(file)).expect("reads").is_some();
            assert_eq!(
                legacy,
                format < STRIPE_KEYS_FORMAT,
                "step {step}: the form follows the format"
            );
        }
        // Gone with the file: every key of its layout and every reference.
        let unlink = Op::Unlink(Unlink {
            parent: ROOT,
            name: b"f".to_vec(),
        });
        assert_eq!(errno(&apply(&db, STRIPE_KEYS_FORMAT, 1000, unlink)), None);
        assert!(shard_refs(&db).is_empty());
        let left = db.raw().iterator_cf(db.cf(Cf::Layouts), IteratorMode::Start).count();
        assert_eq!(left, 0);
    }

    #[test]
    fn layouts_stored_by_stripe_read_as_the_commits_and_truncates_made_them() {
        for seed in 1..=4 {
            random_history(seed, STRIPE_KEYS_FORMAT);
        }
    }

    #[test]
    fn layouts_kept_whole_by_older_entries_are_split_once_the_format_is_raised() {
        for seed in 5..=8 {
            random_history(seed, STRIPE_KEYS_FORMAT - 1);
        }
    }

    /// A commit of one stripe to a file of thousands writes one stripe, where a commit of
    /// the whole layout writes them all; older entries refuse it, so a writer knows to
    /// send the whole layout.
    #[test]
    fn a_commit_of_changed_stripes_writes_only_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), 8 << 20).expect("db");
        let format = STRIPE_KEYS_FORMAT;
        let file = create_file(&db, format, 1, b"big");
        let n = 4000;
        let ds = [1, 2, 3, 4, 5, 6];
        let all: Vec<Stripe> = (0..n).map(|slot| stripe(slot, SLOT, 1, ds)).collect();
        let (r, whole_bytes) = apply_sized(&db, format, 2, commit_stripes(file, 0, 0, all.clone(), n * SLOT));
        assert_eq!(errno(&r), None);
        // Replace one stripe in the middle and append one.
        let changed = vec![stripe(n / 2, SLOT, 2, ds), stripe(n, 1, 2, ds)];
        let (r, delta_bytes) = apply_sized(
            &db,
            format,
            3,
            commit_stripes(file, 1, n * SLOT, changed.clone(), n * SLOT + 1),
        );
        assert_eq!(errno(&r), None);
        assert!(whole_bytes > 400_000, "{whole_bytes}");
        assert!(delta_bytes < 4_096, "a commit of two stripes wrote {delta_bytes} bytes");
        match &r.result {
            Some(meta_reply::Result::Layout(l)) => {
                assert!(l
                    .layout
                    .as_ref()
                    .is_some_and(|l| l.stripes.is_empty() && l.version == 2));
            }
            other => panic!("not a layout: {other:?}"),
        }
        let want = overlay_stripes(&code(all), n * SLOT, &changed);
        assert_eq!(read_layout(&db, file, None).1, want);
        // A truncate drops only what lies past the new end.
        let truncate = Op::Setattr(SetAttr {
            inode: file,
            size: Some(n * SLOT - 2),
            ..SetAttr::default()
        });
        let (r, truncate_bytes) = apply_sized(&db, format, 4, truncate);
        assert_eq!(errno(&r), None);
        assert!(
            truncate_bytes < 4_096,
            "a truncate of two stripes wrote {truncate_bytes} bytes"
        );
        // Entries of the format before refuse it, and nothing changes.
        let older = commit_stripes(file, 3, 0, vec![stripe(0, SLOT, 3, ds)], SLOT);
        assert_eq!(errno(&apply(&db, format - 1, 5, older)), Some(Errno::Eopnotsupp));
        assert_eq!(read_layout(&db, file, None).0.layout_version, 3);
    }

    /// What a commit of changed stripes may not do: cover part of a stripe, keep bytes past
    /// the size, change the code beside kept stripes, carry inline bytes. Each refusal
    /// leaves the layout as it was.
    #[test]
    fn bad_commits_of_changed_stripes_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), 8 << 20).expect("db");
        let format = STRIPE_KEYS_FORMAT;
        let file = create_file(&db, format, 1, b"f");
        let ds = [1, 2, 3, 4, 5, 6];
        let base: Vec<Stripe> = (0..4).map(|slot| stripe(slot, SLOT, 1, ds)).collect();
        assert_eq!(
            errno(&apply(&db, format, 2, commit_stripes(file, 0, 0, base.clone(), 16))),
            None
        );
        let mut half = stripe(1, SLOT, 2, ds);
        half.offset += 2;
        let mut other_code = commit_stripes(file, 1, 16, vec![stripe(4, SLOT, 2, ds)], 20);
        if let Op::CommitStripes(c) = &mut other_code {
            c.layout.as_mut().expect("layout").shard_unit_bytes = 2;
        }
        let mut inline = commit_stripes(file, 1, 16, Vec::new(), 16);
        if let Op::CommitStripes(c) = &mut inline {
            c.layout.as_mut().expect("layout").inline_data = b"x".to_vec();
        }
        let bad = [
            commit_stripes(file, 1, 16, vec![half], 16),
            commit_stripes(file, 1, 16, Vec::new(), 12),
            other_code,
            inline,
            commit_stripes(file, 0, 16, Vec::new(), 16),
        ];
        let want = [
            Errno::Einval,
            Errno::Einval,
            Errno::Einval,
            Errno::Einval,
            Errno::Eagain,
        ];
        for (i, (op, want)) in bad.into_iter().zip(want).enumerate() {
            assert_eq!(errno(&apply(&db, format, 10 + i as u64, op)), Some(want), "case {i}");
            let (attr, stripes) = read_layout(&db, file, None);
            assert_eq!((attr.layout_version, attr.size), (1, 16), "case {i}");
            assert_eq!(stripes, base, "case {i}");
            assert_eq!(shard_refs(&db), refs_of(file, &base), "case {i}");
        }
    }
}
