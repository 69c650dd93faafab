# Sourced by the benchmark scripts (after scripts/env.sh).

# bench_begin NAME: sets OUT (exported as BENCH_OUT for the shared scripts), DATA
# ($OUT/NAME, created) and RESULTS ($OUT/NAME-results.txt, emptied), builds the release
# binaries and sets BIN to them.
bench_begin() {
  OUT="${BENCH_OUT:-$CAIRN_ROOT/bench-out}"
  export BENCH_OUT="$OUT"
  DATA="$OUT/$1"
  RESULTS="$OUT/$1-results.txt"
  mkdir -p "$DATA"
  : >"$RESULTS"
  (cd "$CAIRN_ROOT" && cargo build --quiet --release --workspace --bins)
  BIN="$CARGO_TARGET_DIR/release"
}

# cluster_peak_rss DIR: one line per process of the local cluster in DIR (the FUSE
# daemon, logic nodes, dataservers): its peak RSS so far (VmHWM).
cluster_peak_rss() {
  local dir=$1 name pid
  for name in $(cd "$dir" && ls fuse.pid logic-*.pid dataserver-*.pid 2>/dev/null | sed 's/\.pid$//'); do
    pid=$(cat "$dir/$name.pid")
    echo "rss $name peak_MiB=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")"
  done
}

# rocksdb_sync_limit DIR: synced RocksDB WriteBatches per second in DIR (the rate a Raft
# voter's log can sync entries at), with the release binaries in $BIN.
rocksdb_sync_limit() {
  "$BIN/cairn-bench" rocksdb-sync --dir "$1" --count 1000 | grep -oE 'batches_per_s=[0-9.]+' | cut -d= -f2
}
