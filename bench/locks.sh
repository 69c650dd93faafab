#!/usr/bin/env bash
# Lock benchmark, in one run:
#   1. the limit: synced RocksDB WriteBatches per second on the file system that holds the
#      voters' data (cairn-bench rocksdb-sync), right before and right after (every lock
#      and unlock is one Raft entry, synced by a quorum of voters);
#   2. Cairn: `cairnctl local up` (4 halls, 8 dataservers, 4 voters, 2 logic nodes)
#      mounted twice (two cairn-fuse daemons, as two machines would); bench/locks.py
#      takes and releases a lock on one mount, then hands a lock from a holder on one
#      mount to a waiter on the other.
# Run as root from the repository root:  bench/locks.sh      (env: PAIRS=500 ROUNDS=40)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
bench_begin locks
FUSE_B=""
cleanup() {
  umount "$DATA/mnt-b" 2>/dev/null || true
  [ -n "$FUSE_B" ] && kill -9 "$FUSE_B" 2>/dev/null
  "$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
limit() { echo "limit rocksdb synced batches_per_s=$(rocksdb_sync_limit "$DATA/limit-db")" | tee -a "$RESULTS"; }

log "limit (before)"
limit
log "Cairn, two mounts"
"$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true
rm -rf "$DATA/cluster"
"$BIN/cairnctl" local up --dir "$DATA/cluster" --base-port 17600 --mount "$DATA/mnt-a"
mkdir -p "$DATA/mnt-b"
"$BIN/cairn-fuse" --config "$DATA/cluster/cluster.toml" --mountpoint "$DATA/mnt-b" >"$DATA/fuse-b.log" 2>&1 &
FUSE_B=$!
for _ in $(seq 100); do mountpoint -q "$DATA/mnt-b" && break; sleep 0.1; done
mountpoint -q "$DATA/mnt-b" || { log "the second mount did not come up (see $DATA/fuse-b.log)"; exit 1; }
python3 "$CAIRN_ROOT/bench/locks.py" "$DATA/mnt-a" "$DATA/mnt-b" "${PAIRS:-500}" "${ROUNDS:-40}" | tee -a "$RESULTS"
umount "$DATA/mnt-b"; kill "$FUSE_B" 2>/dev/null; wait "$FUSE_B" 2>/dev/null || true; FUSE_B=""
"$BIN/cairnctl" local down --dir "$DATA/cluster"
rm -rf "$DATA/cluster"
log "limit (after)"
limit
log "results in $RESULTS"
