# Sourced by the GPU scripts: checks the binary given as $1 (default target/release/softtune;
# a .xz from scripts/pack-gpu-binary.sh is unpacked to a temporary file first) and puts the
# CUDA toolkit's libraries (NVRTC compiles the kernels at run time) on LD_LIBRARY_PATH.
# Sets `bin`.
bin="${1:-$here/target/release/softtune}"
if [ "${bin%.xz}" != "$bin" ] && [ -f "$bin" ]; then
    unpacked="${TMPDIR:-/tmp}/softtune-gpu-$$"
    if ! xz -dc "$bin" > "$unpacked" || ! chmod +x "$unpacked"; then
        echo "could not unpack $bin" >&2
        exit 2
    fi
    trap 'rm -f "$unpacked"' EXIT
    bin="$unpacked"
fi
if [ ! -x "$bin" ]; then
    echo "no softtune binary at $bin: build one with 'cargo build --release' (or" \
        "scripts/pack-gpu-binary.sh) and pass its path" >&2
    exit 2
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
