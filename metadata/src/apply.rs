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
    use cairn_common::namespace::ROOT;
    use cairn_common::proto::metadata::{meta_reply, CommitLayout, Create, Layout, Mkdir};
    use cairn_common::versions::SESSIONLESS_COMMIT_FORMAT;

    use super::*;

    /// Applies `op` alone in an entry of `format`; returns its reply.
    fn apply(db: &Db, format: u16, id: u64, op: Op) -> MetaReply {
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
        db.raw().write(txn.into_batch().expect("batch")).expect("writes");
        MetaReply::decode(replies[0].as_slice()).expect("reply")
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
        let create = |name: &[u8]| {
            Op::Create(Create {
                parent: ROOT,
                name: name.to_vec(),
                mode: 0o644,
                exclusive: true,
                ..Create::default()
            })
        };
        let file = inode(&apply(&db, 1, 1, create(b"f")));
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
}
