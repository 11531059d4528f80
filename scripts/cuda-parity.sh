#!/usr/bin/env bash
# Checks CUDA against the PyTorch reference fixtures with an already built release binary,
# so a GPU machine needs no Rust toolchain.
#
#   scripts/cuda-parity.sh [BINARY] [FIXTURES] [DEVICE]
#
# BINARY defaults to target/release/softtune, FIXTURES to tests/fixtures, DEVICE to cuda:0.
# Runs the fixture parity suite (logits, losses, soft-prompt gradient) on the GPU in float32
# (bound 1e-4, like the CPU tests) and in bfloat16 (bound 5e-2), then on the CPU for
# comparison. Exits non-zero if any check fails.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fixtures="${2:-$here/tests/fixtures}"
device="${3:-cuda:0}"

. "$here/scripts/cuda-env.sh" "${1:-}"

status=0
for precision in f32 bf16; do
    echo "== $device, $precision"
    "$bin" parity --fixtures "$fixtures" --device "$device" --precision "$precision" || status=1
done
echo "== cpu, f32"
"$bin" parity --fixtures "$fixtures" --device cpu --precision f32 || status=1
exit $status
