#!/usr/bin/env bash
# Dataserver benchmark, in one run:
#   1. the machine's limits on the same file system: sequential O_DIRECT disk write/read
#      and loopback TCP (shared/bench/limits.sh). The disk is measured right before and
#      right after the Cairn run and the mean is the limit, because a shared virtual disk
#      drifts (2x within minutes has been seen here); both are printed;
#   2. 1 MiB shard put and get throughput against one dataserver over loopback, several
#      connections with several requests in flight each, and the dataserver's peak RSS;
#   3. dataserver start-up time with 10k and with 200k stored shards.
# Prints each Cairn figure beside its limit. Run as root from the repository root:
#   bench/dataserver.sh            (env: TOTAL_BYTES, CONNECTIONS, DEPTH, SIZE, SHARDS_SMALL, SHARDS_LARGE)
source "$(dirname "$0")/../scripts/env.sh"
SHARED_BENCH="${CAIRN_SHARED_BENCH:-$CAIRN_ROOT/../shared/bench}"
OUT="${BENCH_OUT:-$CAIRN_ROOT/bench-out}"
DATA="$OUT/data"
TOTAL_BYTES="${TOTAL_BYTES:-4294967296}"
CONNECTIONS="${CONNECTIONS:-4}"
DEPTH="${DEPTH:-4}"
SHARDS_SMALL="${SHARDS_SMALL:-10000}"
SHARDS_LARGE="${SHARDS_LARGE:-200000}"
export SIZE="${SIZE:-4G}"
mkdir -p "$OUT" "$DATA"

(cd "$CAIRN_ROOT" && cargo build --quiet --release -p cairn-dataserver -p cairn-tools --bins)
BIN="$CARGO_TARGET_DIR/release"

log "limits: disk (O_DIRECT, same file system as the dataserver) and loopback TCP"
BENCH_OUT="$OUT" SECTIONS="disk net" bash "$SHARED_BENCH/limits.sh" "$DATA/limits" | tee "$OUT/limits.txt"
best() { grep -E "$1" "$3" | grep -oE "$2=[0-9.]+" | cut -d= -f2 | sort -g | tail -1; }
disk_w0=$(best '^disk direct=1' seqwrite_MBps "$OUT/limits.txt")
disk_r0=$(best '^disk direct=1' seqread_MBps "$OUT/limits.txt")
net=$(best '^net iperf3' recv_MBps "$OUT/limits.txt")

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
write_config() { # write_config DIR PORT
  cat >"$1/ds.toml" <<TOML
[dataserver]
node_id = 1
hall = "bench"
listen = "127.0.0.1:$2"
data_dir = "$1/data"
scrub_bytes_per_sec = 0
TOML
}
DS_PID=""
cleanup() { [ -n "$DS_PID" ] && kill "$DS_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
start_ds() { # start_ds DIR PORT
  "$BIN/cairn-dataserver" serve --config "$1/ds.toml" >>"$1/ds.log" 2>&1 &
  DS_PID=$!
}
stop_ds() { kill "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=""; }

log "shard put/get: $CONNECTIONS connections x $DEPTH in flight, 1 MiB shards, $TOTAL_BYTES bytes"
dir="$DATA/throughput"; rm -rf "$dir"; mkdir -p "$dir"; p=$(port); write_config "$dir" "$p"
start_ds "$dir" "$p"
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
drop_caches
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
read -r busy0 total0 < <(cpu_busy)
result=$("$BIN/cairn-bench" shards --addr "127.0.0.1:$p" --connections "$CONNECTIONS" --depth "$DEPTH" --total-bytes "$TOTAL_BYTES")
read -r busy1 total1 < <(cpu_busy)
cpu_pct=$(python3 -c "print('%.0f' % (100*($busy1-$busy0)/max(1,$total1-$total0)))")
echo "$result"
rss_kib=$(awk '/VmHWM/{print $2}' "/proc/$DS_PID/status")
stop_ds
rm -rf "$dir"
log "limits again: disk, right after the Cairn run"
BENCH_OUT="$OUT" SECTIONS="disk" bash "$SHARED_BENCH/limits.sh" "$DATA/limits" | tee "$OUT/limits-after.txt"
disk_w1=$(best '^disk direct=1' seqwrite_MBps "$OUT/limits-after.txt")
disk_r1=$(best '^disk direct=1' seqread_MBps "$OUT/limits-after.txt")
disk_w=$(python3 -c "print('%.1f' % (($disk_w0+$disk_w1)/2))")
disk_r=$(python3 -c "print('%.1f' % (($disk_r0+$disk_r1)/2))")
put=$(grep -oE 'put_MBps=[0-9.]+' <<<"$result" | cut -d= -f2)
get=$(grep -oE 'get_MBps=[0-9.]+' <<<"$result" | cut -d= -f2)

log "start-up time against shard count"
dir="$DATA/startup"; rm -rf "$dir"; mkdir -p "$dir"; p=$(port); write_config "$dir" "$p"
startup=()
have=0
for n in "$SHARDS_SMALL" "$SHARDS_LARGE"; do
  start_ds "$dir" "$p"
  "$BIN/cairn-bench" fill --addr "127.0.0.1:$p" --count $((n - have)) --shard-bytes 4096
  have=$n
  kill -9 "$DS_PID"; wait "$DS_PID" 2>/dev/null || true; DS_PID=""
  drop_caches
  line=$("$BIN/cairn-bench" startup --dataserver-bin "$BIN/cairn-dataserver" --config "$dir/ds.toml" --addr "127.0.0.1:$p")
  echo "$line (after kill -9, caches dropped)"
  startup+=("$(grep -oE 'ready_ms=[0-9.]+' <<<"$line" | cut -d= -f2)")
done
rm -rf "$dir"

pct() { python3 -c "print('%.0f%%' % (100*$1/$2))"; }
lim_w=$(python3 -c "print(min($disk_w,$net))")
lim_r=$(python3 -c "print(min($disk_r,$net))")
{
  echo "# dataserver bench $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, fs=$(stat -f -c %T "$DATA")"
  printf '%-34s %10s %10s %8s\n' figure cairn limit ratio
  printf '%-34s %10s %10s %8s\n' "shard put MB/s (1 MiB)" "$put" "$lim_w" "$(pct "$put" "$lim_w")"
  printf '%-34s %10s %10s %8s\n' "shard get MB/s (1 MiB)" "$get" "$lim_r" "$(pct "$get" "$lim_r")"
  printf '%-34s %10s   (before %s, after %s)\n' "disk O_DIRECT seq write MB/s" "$disk_w" "$disk_w0" "$disk_w1"
  printf '%-34s %10s   (before %s, after %s)\n' "disk O_DIRECT seq read MB/s" "$disk_r" "$disk_r0" "$disk_r1"
  printf '%-34s %10s\n' "loopback TCP MB/s" "$net"
  printf '%-34s %10s\n' "CPU busy during put+get, %" "$cpu_pct"
  printf '%-34s %10s\n' "dataserver peak RSS MiB" "$((rss_kib / 1024))"
  printf '%-34s %10s\n' "start-up ms, $SHARDS_SMALL shards" "${startup[0]}"
  printf '%-34s %10s\n' "start-up ms, $SHARDS_LARGE shards" "${startup[1]}"
} | tee "$OUT/dataserver-summary.txt"
