#!/usr/bin/env bash
# The main job, for now: build Cairn, start on 127.0.0.1 a metadata group of three voters
# (one per simulated hall) and a dataserver, then show them working: a directory made
# through the group and listed back, the group's status, a shard stored and read back
# identical. Safe to run twice: processes left by an earlier run are stopped first.
# `scripts/demo.sh stop` stops them.
source "$(dirname "$0")/env.sh"
DEMO_DIR="${CAIRN_DEMO_DIR:-$HOME/.cache/cairn/demo}"
PORT="${CAIRN_DEMO_PORT:-17100}"
ADDR="127.0.0.1:$PORT"
MD_ADDRS="127.0.0.1:$((PORT + 11)),127.0.0.1:$((PORT + 12)),127.0.0.1:$((PORT + 13))"
BIN="$CARGO_TARGET_DIR/debug"
mkdir -p "$DEMO_DIR"

stop() {
  local f pid
  for f in "$DEMO_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      log "stopped $(basename "$f" .pid)"
    fi
    rm -f "$f"
  done
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi
stop

log "building (the first build compiles RocksDB: about 15 minutes on 2 cores)"
(cd "$CAIRN_ROOT" && cargo build --quiet -p cairn-dataserver -p cairn-metadata -p cairn-tools --bins)

members=""
for i in 1 2 3; do
  members+=$'[[metadata_nodes]]\n'"node_id = $i"$'\n'"hall = \"hall-$i\""$'\n'"addr = \"127.0.0.1:$((PORT + 10 + i))\""$'\n'
done
for i in 1 2 3; do
  printf '[metadata]\nnode_id = %s\ndata_dir = "%s"\n\n%s' "$i" "$DEMO_DIR/metadata-$i" "$members" >"$DEMO_DIR/metadata-$i.toml"
  "$BIN/cairn-metadata" serve --bootstrap --config "$DEMO_DIR/metadata-$i.toml" >>"$DEMO_DIR/metadata-$i.log" 2>&1 &
  echo $! >"$DEMO_DIR/metadata-$i.pid"
done
log "metadata voters started (logs $DEMO_DIR/metadata-*.log)"

cat >"$DEMO_DIR/dataserver.toml" <<TOML
[dataserver]
node_id = 1
hall = "hall-1"
listen = "$ADDR"
data_dir = "$DEMO_DIR/data"
TOML
"$BIN/cairn-dataserver" serve --config "$DEMO_DIR/dataserver.toml" >>"$DEMO_DIR/dataserver.log" 2>&1 &
echo $! >"$DEMO_DIR/dataserver.pid"
log "dataserver started (pid $(cat "$DEMO_DIR/dataserver.pid"), log $DEMO_DIR/dataserver.log)"

md() { "$BIN/cairnctl" metadata --addrs "$MD_ADDRS" "$@"; }
dir="demo-$(date +%s)"
md mkdir "/$dir"
md mkdir "/$dir/checkpoints"
log "made /$dir/checkpoints through the Raft group; listing /$dir:"
md ls "/$dir"
md status

ctl() { "$BIN/cairnctl" dataserver --addr "$ADDR" --wait-secs 30 "$@"; }
shard="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')-0"
head -c 1048576 /dev/urandom >"$DEMO_DIR/shard.in"
ctl put --shard "$shard" --file "$DEMO_DIR/shard.in"
ctl get --shard "$shard" --out "$DEMO_DIR/shard.out"
cmp "$DEMO_DIR/shard.in" "$DEMO_DIR/shard.out"
log "shard $shard read back identical ($(stat -c %s "$DEMO_DIR/shard.out") bytes, crc32c checked on both sides)"
ctl stat
log "the cluster keeps running (metadata at $MD_ADDRS, dataserver at $ADDR); stop it with: scripts/demo.sh stop"
