#!/usr/bin/env bash
# A CUDA toolkit tree without the toolkit, for compiling softtune's CubeCL kernels with NVRTC
# on a machine without a GPU (the tests' CUDA compilation checks, src/model/cubecl/mod.rs):
# NVIDIA's pip wheels of NVRTC, the runtime headers and CCCL, unpacked into DIR.
#
#   scripts/cuda-headers.sh DIR
#
# Prints the tree's path (DIR/nvidia/cu13): pass it as SOFTTUNE_TEST_CUDA and put its lib/
# on LD_LIBRARY_PATH. Needs python3 with pip and the package registry; nothing is installed.
set -euo pipefail
dir="${1:?usage: scripts/cuda-headers.sh DIR}"
tree="$dir/nvidia/cu13"
if [ ! -e "$tree/lib/libnvrtc.so.13" ] || [ ! -e "$tree/include/cuda_bf16.h" ]; then
    mkdir -p "$dir/wheels"
    python3 -m pip download --quiet --no-deps --dest "$dir/wheels" \
        nvidia-cuda-nvrtc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 >&2
    for wheel in "$dir"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$dir"
    done
fi
echo "$tree"
