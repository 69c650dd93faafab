#!/usr/bin/env bash
# Random-read benchmark, in one run: 64 KiB reads at random 64 KiB-aligned offsets of a
# 1 GiB file, 4 threads, page cache dropped first:
#   1. the limit: fio on the raw disk (O_DIRECT, psync, 4 jobs), before and after;
#   2. Cairn: the Python client (bench/randread.py, default buffering) against
#      `cairnctl local up` (release build; 4 halls, 8 dataservers, 2 logic nodes, 4+2).
# Run as root from the repository root:  bench/randread.sh     (env: SECONDS_EACH=15)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
SECONDS_EACH="${SECONDS_EACH:-15}"
ensure_python_package
ensure_debian_packages fio
bench_begin randread
cleanup() { "$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT
limit() {
  sync && echo 3 >/proc/sys/vm/drop_caches
  fio --name=randread --filename="$DATA/fio.dat" --size=1G --rw=randread --bs=64k --direct=1 \
    --ioengine=psync --numjobs=4 --time_based --runtime="$SECONDS_EACH" --group_reporting \
    --output-format=json | python3 -c "import json,sys; r=json.load(sys.stdin)['jobs'][0]['read']
print('disk random read bs=65536 jobs=4 O_DIRECT reads/s=%.0f MB/s=%.1f' % (r['iops'], r['bw_bytes'] / 1e6))" |
    tee -a "$RESULTS"
  rm -f "$DATA/fio.dat"
}

log "limit (before)"
limit
log "Cairn cluster"
cleanup
rm -rf "$DATA/cluster"
"$BIN/cairnctl" local up --dir "$DATA/cluster" --base-port 17600 --no-mount
CAIRN_CLUSTER="$DATA/cluster/cluster.toml" "$CAIRN_VENV/bin/python" "$CAIRN_ROOT/bench/randread.py" \
  --seconds "$SECONDS_EACH" | tee -a "$RESULTS"
cluster_peak_rss "$DATA/cluster" | tee -a "$RESULTS"
cleanup
rm -rf "$DATA/cluster"
log "limit (after)"
limit
log "results in $RESULTS"
