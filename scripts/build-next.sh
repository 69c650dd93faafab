#!/usr/bin/env bash
# The node binaries of the next protocol minor version (cargo feature
# cairn-common/protocol-next) in $CARGO_TARGET_DIR/protocol-next, for the test that runs
# version N and N+1 side by side through a rolling upgrade. The feature gives these
# crates their own build hashes, so both builds stay cached in one target directory; the
# normal binaries are linked back in place afterwards.
source "$(dirname "$0")/env.sh"
cd "$CAIRN_ROOT"
cargo build --workspace --bins --features cairn-common/protocol-next
mkdir -p "$CARGO_TARGET_DIR/protocol-next"
for bin in cairn-logic cairn-dataserver cairn-metadata; do
  cp -f "$CARGO_TARGET_DIR/debug/$bin" "$CARGO_TARGET_DIR/protocol-next/$bin"
done
cargo build --workspace --bins
