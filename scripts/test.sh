#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests (real dataserver processes
# on 127.0.0.1, real RocksDB, real io_uring, a real FUSE mount, real torch). Safe to run
# twice.
source "$(dirname "$0")/env.sh"
cd "$CAIRN_ROOT"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
ensure_python_venv
# End-to-end tests start the binaries, so build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
