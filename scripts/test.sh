#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests (real dataserver processes
# on 127.0.0.1, real RocksDB, real io_uring, a real FUSE mount, real torch) and the
# Python package's tests (pytest, against a cluster `cairnctl local up` starts; run
# first, so the Rust runner's summary line ends the output). Safe to run twice.
source "$(dirname "$0")/env.sh"
cd "$CAIRN_ROOT"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
ensure_python_package
# End-to-end tests start the binaries, so build them first, and those of the next
# protocol version for the rolling-upgrade test.
scripts/build-next.sh
python_status=0
"$CAIRN_VENV/bin/python" -m pytest -q -p no:cacheprovider client/python/tests || python_status=$?
cargo nextest run --workspace --no-fail-fast
exit "$python_status"
