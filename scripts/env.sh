# Sourced by the scripts: installs what building Cairn needs on Debian 12 (only what is
# missing, so it is safe to run any number of times) and shares one cargo target
# directory outside the clone, so every clone and CI run reuses the RocksDB build.
set -euo pipefail
CAIRN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
mkdir -p "$CARGO_TARGET_DIR"
# Incremental state is for editing loops; in a shared target it only grows the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log() { printf '[cairn] %s\n' "$*" >&2; }

# Every clone path gets its own build hashes in the shared target, so linked executables
# (about 0.5 GB each in debug) pile up across clones and CI runs until a link dies with
# SIGBUS on a full disk. Below the space one whole build needs, drop them and any
# incremental state: relinking costs minutes, while the compiled libraries (RocksDB's
# 15-minute build among them) stay.
prune_target_when_low() {
  local need_kib=$((30 * 1024 * 1024)) avail_kib
  avail_kib="$(df --output=avail -k "$CARGO_TARGET_DIR" | tail -1 | tr -d ' ')"
  ((avail_kib >= need_kib)) && return 0
  log "$((avail_kib / 1024 / 1024)) GiB free under $CARGO_TARGET_DIR: removing linked executables and incremental state"
  local profile
  for profile in "$CARGO_TARGET_DIR"/debug "$CARGO_TARGET_DIR"/release; do
    [ -d "$profile/deps" ] || continue
    find "$profile/deps" -maxdepth 1 -type f -perm -u+x ! -name '*.so' -delete
    rm -rf "$profile/incremental"
  done
}
prune_target_when_low

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_debian_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# RocksDB is built from source by the rocksdb crate: it needs a C++ compiler and libclang.
# The gRPC code of the control plane is generated from common/proto by protoc.
ensure_debian_packages build-essential clang libclang-dev pkg-config protobuf-compiler
# The FUSE mount: /dev/fuse and fusermount3 (cairn-fuse mounts directly when root).
ensure_debian_packages fuse3
command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain (rustup) first"; exit 1; }

# Python for the end-to-end tests that run real PyTorch (torch.save/torch.load through the
# mount): one virtual environment shared by every clone, torch installed into it once.
export CAIRN_VENV="${CAIRN_VENV:-$HOME/.cache/cairn/venv}"
ensure_python_venv() {
  ensure_debian_packages python3-venv python3-pip
  [ -x "$CAIRN_VENV/bin/python" ] || python3 -m venv "$CAIRN_VENV"
  if ! "$CAIRN_VENV/bin/python" -c 'import torch, numpy' >/dev/null 2>&1; then
    log "installing torch and numpy into $CAIRN_VENV (several GB, once)"
    "$CAIRN_VENV/bin/pip" install -q --no-cache-dir torch numpy
  fi
}

# The Python package (client/python): built as a wheel by maturin and installed into the
# shared virtual environment, with pytest for its tests.
ensure_python_package() {
  ensure_python_venv
  "$CAIRN_VENV/bin/python" -c 'import maturin, pytest' >/dev/null 2>&1 ||
    "$CAIRN_VENV/bin/pip" install -q 'maturin>=1.8,<2' pytest
  local wheels="$CARGO_TARGET_DIR/wheels"
  rm -rf "$wheels"
  "$CAIRN_VENV/bin/maturin" build --quiet --release --manifest-path "$CAIRN_ROOT/client/python/Cargo.toml" --out "$wheels"
  "$CAIRN_VENV/bin/pip" install -q --force-reinstall --no-deps "$wheels"/cairn-*.whl
}
