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

# relay_limit PORT: loopback TCP through a user-space relay (iperf3 -> socat -> iperf3),
# the transport alone of the path file bytes take (client -> logic node -> dataserver),
# 10 s, on ports PORT and PORT+1. Prints one line in MB/s.
relay_limit() {
  local port=$1 relay_pid mbps
  ensure_debian_packages socat iperf3
  iperf3 -s -1 -p "$((port + 1))" >/dev/null 2>&1 &
  socat -b 1048576 "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$((port + 1))" 2>/dev/null &
  relay_pid=$!
  sleep 0.5
  mbps=$(iperf3 -c 127.0.0.1 -p "$port" -t 10 -J | python3 -c \
    "import json,sys; print('%.1f' % (json.load(sys.stdin)['end']['sum_received']['bits_per_second'] / 8e6))")
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  echo "net relay (2 loopback hops through socat, 1 stream) MB/s=$mbps"
}

# socket_limits: the same two-hop transport measured by cairn-bench's own code over
# loopback TCP and over Unix sockets (what nodes of one host use between them, see
# common/src/transport.rs), 8 GiB each. Prints one line per kind.
socket_limits() {
  local kind
  for kind in tcp unix; do "$BIN/cairn-bench" socket-limit --kind "$kind"; done
}
