#!/usr/bin/env bash
# Metadata group benchmark, in one run:
#   1. the limit: synced RocksDB WriteBatches per second on the file system that holds the
#      voters' data (cairn-bench rocksdb-sync), right before and right after the Cairn run;
#   2. creates/s and getattr/s from 1 and from 16 concurrent clients against three voters
#      (one per simulated hall) on loopback;
#   3. restart: namespaces of 10k, 100k and 1M files whose logs are never purged (every
#      entry since the group formed stays in the log), every voter killed with -9 and
#      started again; time from the processes' start to the first linearizable read served;
#   4. each voter's peak RSS (VmHWM) with the 1M-inode namespace;
#   5. one file's layout as it grows to 1k, 10k and 100k stripes of 4 MiB (4 GiB to 400
#      GiB): the latency of a commit of one appended stripe, sent as that stripe and as
#      the whole layout (what every commit cost before layouts were stored by stripe),
#      and of the layout read a 64 KiB file read makes.
# Run as root from the repository root:  bench/metadata.sh   (env: SIZES, LOAD_COUNT,
# LAYOUT_STRIPES, WORKER_THREADS: the voters' metadata.worker_threads, their default
# when unset; SIZES="" leaves out the restarts)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
OUT="${BENCH_OUT:-$CAIRN_ROOT/bench-out}"
DATA="$OUT/metadata"
SIZES="${SIZES-10000 100000 1000000}"
LOAD_COUNT="${LOAD_COUNT:-20000}"
LAYOUT_STRIPES="${LAYOUT_STRIPES:-1000,10000,100000}"
mkdir -p "$DATA"

(cd "$CAIRN_ROOT" && cargo build --quiet --release -p cairn-metadata -p cairn-tools --bins)
BIN="$CARGO_TARGET_DIR/release"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# new_cluster DIR: three configs, one voter per hall. Elections after 300-600 ms.
new_cluster() {
  local dir=$1 members="" i
  rm -rf "$dir"; mkdir -p "$dir"
  ADDRS=""
  for i in 1 2 3; do
    local a="127.0.0.1:$(port)"
    members+=$'[[metadata_nodes]]\n'"node_id = $i"$'\n'"hall = \"hall-$i\""$'\n'"addr = \"$a\""$'\n'
    ADDRS+="${ADDRS:+,}$a"
  done
  for i in 1 2 3; do
    printf '[metadata]\nnode_id = %s\ndata_dir = "%s"\nheartbeat_ms = 50\nelection_timeout_ms = 300\nsnapshot_every_entries = 100000000\n%s\n%s' \
      "$i" "$dir/m$i" "${WORKER_THREADS:+worker_threads = $WORKER_THREADS}" "$members" >"$dir/m$i.toml"
  done
}
start_cluster() { # start_cluster DIR
  PIDS=()
  for i in 1 2 3; do
    "$BIN/cairn-metadata" serve --bootstrap --config "$1/m$i.toml" >>"$1/m$i.log" 2>&1 &
    PIDS+=($!)
  done
}
kill_cluster() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null || true; PIDS=(); }
now_ns() { date +%s%N; }
limit() { rocksdb_sync_limit "$DATA/limit-db"; }

log "limit: synced RocksDB WriteBatches on $(df --output=source "$DATA" | tail -1)"
limit0=$(limit)
echo "limit rocksdb synced batches/s: $limit0"

log "throughput: 3 voters, 1 and 16 clients"
new_cluster "$DATA/load"; start_cluster "$DATA/load"
"$BIN/cairn-bench" meta-ready --addrs "$ADDRS" --since-ns "$(now_ns)" >/dev/null
one=$("$BIN/cairn-bench" meta --addrs "$ADDRS" --clients 1 --count $((LOAD_COUNT / 10)))
echo "$one"
sixteen=$("$BIN/cairn-bench" meta --addrs "$ADDRS" --clients 16 --count "$LOAD_COUNT")
echo "$sixteen"
layouts=$("$BIN/cairn-bench" meta-layout --addrs "$ADDRS" --stripes "$LAYOUT_STRIPES")
echo "$layouts"
kill_cluster
limit1=$(limit)
echo "limit rocksdb synced batches/s (after): $limit1"
lim=$(python3 -c "print('%.0f' % (($limit0+$limit1)/2))")

log "restart: kill -9 every voter, start them, time to the first linearizable read"
declare -A READY RSS LOGLEN INODES
for n in $SIZES; do
  dir="$DATA/restart-$n"
  new_cluster "$dir"; start_cluster "$dir"
  "$BIN/cairn-bench" meta-ready --addrs "$ADDRS" --since-ns "$(now_ns)" >/dev/null
  # n files in all: 90% by a create-only fill, the last 10% with a getattr pass, so that
  # the peak RSS is taken under reads of the full namespace too.
  "$BIN/cairn-bench" meta --addrs "$ADDRS" --clients 64 --count $((n - n / 10)) --creates-only
  "$BIN/cairn-bench" meta --addrs "$ADDRS" --clients 16 --count $((n / 10)) >/dev/null
  RSS[$n]=$(for p in "${PIDS[@]}"; do awk '/VmHWM/{printf "%d ", $2/1024}' "/proc/$p/status"; done)
  LOGLEN[$n]=$("$BIN/cairnctl" metadata --addrs "$ADDRS" status | awk '$3=="leader"{print $5}')
  kill_cluster
  times=()
  for round in 1 2 3; do
    t0=$(now_ns); start_cluster "$dir"
    r=$("$BIN/cairn-bench" meta-ready --addrs "$ADDRS" --since-ns "$t0")
    echo "$r"
    times+=("$(grep -oE 'ready_ms=[0-9.]+' <<<"$r" | cut -d= -f2)")
    INODES[$n]=$(grep -oE 'inodes=[0-9]+' <<<"$r" | cut -d= -f2)
    kill_cluster
  done
  READY[$n]=$(printf '%s\n' "${times[@]}" | sort -g | tr '\n' ' ')
  rm -rf "$dir"
done

ratio() { python3 -c "print('%.0f%%' % (100*$1/$2))"; }
c1=$(grep -oE 'create_ops=[0-9]+' <<<"$one" | cut -d= -f2); g1=$(grep -oE 'getattr_ops=[0-9]+' <<<"$one" | cut -d= -f2)
c16=$(grep -oE 'create_ops=[0-9]+' <<<"$sixteen" | cut -d= -f2); g16=$(grep -oE 'getattr_ops=[0-9]+' <<<"$sixteen" | cut -d= -f2)
echo
echo "== metadata: 3 voters on loopback =="
printf '%-34s %12s %12s\n' "" "cairn" "limit/peer"
printf '%-34s %12s %12s\n' "synced RocksDB WriteBatches/s" "" "$lim"
printf '%-34s %12s %12s\n' "creates/s, 1 client" "$c1" "$(ratio "$c1" "$lim") of limit"
printf '%-34s %12s %12s\n' "creates/s, 16 clients" "$c16" "$(ratio "$c16" "$lim") of limit"
printf '%-34s %12s %12s\n' "  vs GlusterFS 4+2 (120 creates/s)" "" "$(python3 -c "print('%.0fx' % ($c16/120))")"
printf '%-34s %12s\n' "getattr/s, 1 client" "$g1"
printf '%-34s %12s\n' "getattr/s, 16 clients" "$g16"
echo "restart: kill -9 of all three voters, start, first linearizable read (3 rounds, ms, sorted)"
for n in $SIZES; do
  printf '  %8s inodes, log of %8s entries: %-24s peak RSS per voter (MiB): %s\n' \
    "${INODES[$n]}" "${LOGLEN[$n]}" "${READY[$n]}" "${RSS[$n]}"
done
echo "one file's layout: p50 latency (ms) of a commit of one appended stripe, and of the layout read for a 64 KiB read"
printf '  %9s %22s %22s %14s %16s\n' stripes "commit: the stripe" "commit: whole layout" "ranged read" "whole read"
while read -r line; do
  field() { grep -oE "$1=[0-9.]+" <<<"$line" | cut -d= -f2; }
  printf '  %9s %22s %22s %14s %16s\n' "$(field stripes)" "$(field commit_one_stripe_p50_ms)" \
    "$(field commit_whole_layout_p50_ms)" "$(field ranged_read_p50_ms)" "$(field whole_read_ms)"
done <<<"$layouts"
