#!/usr/bin/env bash
# Checkpoint benchmark, in one run (bench/ckpt.py holds the training-loop stand-in):
#   1. the limits: disk (O_DIRECT and buffered sequential write/read), memcpy, loopback
#      TCP (../shared/bench/limits.sh), loopback TCP through a relay (the two hops of
#      the file path) and the same two hops over TCP and over Unix sockets, which nodes
#      of one host use between them (bench/lib.sh), before and after;
#   2. a bare memcpy of the state into preallocated tensors;
#   3. (a) torch.save + fsync to local disk, (b) dcp.save with FileSystemWriter to local
#      disk, (c) dcp.async_save with FileSystemWriter to the Cairn FUSE mount,
#      (d) dcp.async_save with cairn.torch.CairnStorageWriter (the Python package);
#      each in its own process: stall and completion per checkpoint, restore (page cache
#      dropped), peak RSS beside the state size, and the disk limits measured again
#      right before and after the checkpoints and the restore (--disk-file);
#   4. (d) again on a cluster whose processes speak TCP alone (CAIRN_TRANSPORT=tcp).
# Cairn: `cairnctl local up` (release build; 4 halls, 8 dataservers, 2 logic nodes, 4+2).
# Run as root from the repository root:  bench/ckpt.sh     (env: GIB=2 EVERY=5 CHECKPOINTS=2)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
SHARED="$CAIRN_ROOT/../shared/bench"
GIB="${GIB:-2}" EVERY="${EVERY:-5}" CHECKPOINTS="${CHECKPOINTS:-2}"
ensure_python_package
bench_begin ckpt
cleanup() {
  local dir
  for dir in "$DATA/cluster" "$DATA/cluster-tcp"; do
    "$BIN/cairnctl" local down --dir "$dir" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
limits() {
  SECTIONS="disk mem net" bash "$SHARED/limits.sh" "$DATA/limits" | grep -E "^(disk|mem memcpy|net)" | tee -a "$RESULTS"
  relay_limit 17590 | tee -a "$RESULTS"
  socket_limits | tee -a "$RESULTS"
}
bench() { "$CAIRN_VENV/bin/python" "$CAIRN_ROOT/bench/ckpt.py" "$@" --gib "$GIB" --every "$EVERY" --checkpoints "$CHECKPOINTS" | tee -a "$RESULTS"; }

log "limits (before)"
limits

log "Cairn cluster"
cleanup
rm -rf "$DATA/cluster" "$DATA/cluster-tcp"
"$BIN/cairnctl" local up --dir "$DATA/cluster" --base-port 17500 --mount "$DATA/cairn-mnt"
export CAIRN_CLUSTER="$DATA/cluster/cluster.toml"

log "checkpoints of a ${GIB} GiB state"
bench memcpy --dir "$DATA/none"
ADJACENT=(--disk-file "$DATA/adjacent.dat")
bench torch-save --dir "$DATA/local" "${ADJACENT[@]}"
bench dcp-fs --dir "$DATA/local" "${ADJACENT[@]}"
bench dcp-fs-async --dir "$DATA/cairn-mnt/fuse-ckpt" "${ADJACENT[@]}"
bench cairn-async --dir /ckpt "${ADJACENT[@]}"
cluster_peak_rss "$DATA/cluster" | tee -a "$RESULTS"

# (d) again on a cluster whose every process, the benchmark's included, speaks TCP alone
# (CAIRN_TRANSPORT=tcp): what local sockets between the processes of one host bring.
log "(d) on a cluster that speaks TCP only"
# The first cluster's shard files stay until the end: removing thousands of files just
# before would cost the next cluster's every shard create a scan past the inodes just
# freed (ext4 without a journal skips those for minutes), which is not Cairn's cost.
cleanup
export CAIRN_TRANSPORT=tcp
"$BIN/cairnctl" local up --dir "$DATA/cluster-tcp" --base-port 17500 --no-mount
export CAIRN_CLUSTER="$DATA/cluster-tcp/cluster.toml"
bench cairn-async --dir /ckpt "${ADJACENT[@]}"
unset CAIRN_TRANSPORT
cleanup
# The orphan collector would free the shards only after its grace period: drop the clusters.
rm -rf "$DATA/cluster" "$DATA/cluster-tcp" "$DATA/local"

log "limits (after)"
limits
log "results in $RESULTS"
