#!/usr/bin/env bash
# Builds the release binary for a GPU machine and packs it small enough to carry there:
#
#   scripts/pack-gpu-binary.sh [OUT]        (default bin/softtune.xz)
#
# The release binary is about 100 MB (80 MB stripped); xz makes it about 14 MB. The GPU
# scripts (gpu-check.sh, cuda-parity.sh) take the .xz as their BINARY and unpack it first.
# CUDARC_CUDA_VERSION (default 13000, the CUDA 13.0 driver API) pins the bindings to a
# driver version: without nvcc, cudarc would pick the newest it knows.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/bin/softtune.xz}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
(cd "$here" && cargo build --release --offline)
target="${CARGO_TARGET_DIR:-$here/target}"
mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$out.XXXXXX")"
strip -o "$tmp.bin" "$target/release/softtune"
xz -T0 -6 -c "$tmp.bin" > "$tmp"
rm -f "$tmp.bin"
chmod 644 "$tmp"
mv "$tmp" "$out"
ls -l "$out"
