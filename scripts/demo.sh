#!/usr/bin/env bash
# The main job, for now: build Cairn, start a dataserver on 127.0.0.1, store a shard,
# read it back and compare, and show the dataserver's status. Safe to run twice: a
# dataserver left by an earlier run is stopped first. `scripts/demo.sh stop` stops it.
source "$(dirname "$0")/env.sh"
DEMO_DIR="${CAIRN_DEMO_DIR:-$HOME/.cache/cairn/demo}"
PORT="${CAIRN_DEMO_PORT:-17100}"
ADDR="127.0.0.1:$PORT"
BIN="$CARGO_TARGET_DIR/debug"
mkdir -p "$DEMO_DIR"

stop() {
  if [ -s "$DEMO_DIR/dataserver.pid" ] && kill -0 "$(cat "$DEMO_DIR/dataserver.pid")" 2>/dev/null; then
    kill "$(cat "$DEMO_DIR/dataserver.pid")"
    while kill -0 "$(cat "$DEMO_DIR/dataserver.pid")" 2>/dev/null; do sleep 0.1; done
    log "stopped the dataserver"
  fi
  rm -f "$DEMO_DIR/dataserver.pid"
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi
stop

log "building (the first build compiles RocksDB: about 15 minutes on 2 cores)"
(cd "$CAIRN_ROOT" && cargo build --quiet -p cairn-dataserver -p cairn-tools --bins)

cat >"$DEMO_DIR/dataserver.toml" <<TOML
[dataserver]
node_id = 1
hall = "hall-a"
listen = "$ADDR"
data_dir = "$DEMO_DIR/data"
TOML
"$BIN/cairn-dataserver" serve --config "$DEMO_DIR/dataserver.toml" >>"$DEMO_DIR/dataserver.log" 2>&1 &
echo $! >"$DEMO_DIR/dataserver.pid"
log "dataserver started (pid $(cat "$DEMO_DIR/dataserver.pid"), log $DEMO_DIR/dataserver.log)"

ctl() { "$BIN/cairnctl" dataserver --addr "$ADDR" --wait-secs 30 "$@"; }
shard="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')-0"
head -c 1048576 /dev/urandom >"$DEMO_DIR/shard.in"
ctl put --shard "$shard" --file "$DEMO_DIR/shard.in"
ctl get --shard "$shard" --out "$DEMO_DIR/shard.out"
cmp "$DEMO_DIR/shard.in" "$DEMO_DIR/shard.out"
log "shard $shard read back identical ($(stat -c %s "$DEMO_DIR/shard.out") bytes, crc32c checked on both sides)"
ctl stat
log "the dataserver keeps running at $ADDR; stop it with: scripts/demo.sh stop"
