#!/usr/bin/env bash
# File-system benchmark of the whole file path, in one run, with ../shared/bench/fstest.sh
# (4 GiB sequential write with fsync, cold sequential read, create/stat/unlink of 10k
# files) on:
#   1. the physical limits (limits.sh: disk and loopback TCP), measured before and after;
#   2. GlusterFS 4+2 on loopback (setup_gluster.sh), the peer;
#   3. a minimal fuser pass-through mount of a local directory (`cairn-bench
#      passthrough`, 1 MiB requests, 4 threads): what FUSE itself costs here;
#   4. Cairn: `cairnctl local up` (4 halls, 8 dataservers, 3+1 voters, 2 logic nodes, 4+2
#      code) mounted with cairn-fuse; then the peak RSS (VmHWM) of the FUSE daemon, each
#      logic node and each dataserver over the run.
# Run as root from the repository root:  bench/fs.sh      (env: SIZE=4G, SKIP_GLUSTER=1)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
SHARED="$CAIRN_ROOT/../shared/bench"
export SIZE="${SIZE:-4G}"
bench_begin fs
PT_PID=""
cleanup() {
  umount "$DATA/pt-mnt" 2>/dev/null || true
  [ -n "$PT_PID" ] && kill -9 "$PT_PID" 2>/dev/null
  "$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fstest() { bash "$SHARED/fstest.sh" "$@" | tail -1 | tee -a "$RESULTS"; }
limits() {
  SECTIONS="disk net" bash "$SHARED/limits.sh" "$DATA/limits" | grep -E "^(disk|net)" | tee -a "$RESULTS"
  relay_limit 17490 | tee -a "$RESULTS"
  socket_limits | tee -a "$RESULTS"
}

log "limits (before)"
limits

if [ -z "${SKIP_GLUSTER:-}" ]; then
  log "GlusterFS 4+2"
  bash "$SHARED/setup_gluster.sh" >/dev/null
  fstest /mnt/gl gluster
fi

log "pass-through FUSE"
rm -rf "$DATA/pt-src"; mkdir -p "$DATA/pt-src" "$DATA/pt-mnt"
"$BIN/cairn-bench" passthrough --source "$DATA/pt-src" --mountpoint "$DATA/pt-mnt" >"$DATA/pt.log" 2>&1 &
PT_PID=$!
for _ in $(seq 100); do mountpoint -q "$DATA/pt-mnt" && break; sleep 0.1; done
fstest "$DATA/pt-mnt" fuse-passthrough
umount "$DATA/pt-mnt"; wait "$PT_PID" 2>/dev/null || true; PT_PID=""

log "Cairn"
"$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true
rm -rf "$DATA/cluster"
"$BIN/cairnctl" local up --dir "$DATA/cluster" --base-port 17400 --mount "$DATA/cairn-mnt"
fstest "$DATA/cairn-mnt" cairn
cluster_peak_rss "$DATA/cluster" | tee -a "$RESULTS"
"$BIN/cairnctl" local down --dir "$DATA/cluster"
# Deleted files' shards stay on the dataservers until the orphan collector's grace
# period has passed: drop the whole cluster rather than leave 6 GiB behind.
rm -rf "$DATA/cluster"

log "limits (after)"
limits
log "results in $RESULTS"
