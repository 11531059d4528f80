#!/usr/bin/env bash
# The GPU check for issue 6, with an already built release binary (no Rust toolchain or CUDA
# toolkit needed to build it; the GPU machine needs the driver and libnvrtc):
#
#   scripts/gpu-check.sh [BINARY] [DEVICE]
#
# In order of what matters most, within TOTAL_SECS (default 540) in all:
# 1. the TinyLlama row of issue 6 (bf16, 20 soft tokens, AdamW) on the first backend in
#    BACKENDS, with FIRST_ROW_SECS (default 360): on a machine that has not run softtune
#    before it compiles the kernels (NVRTC, then the driver's PTX compiler: minutes on an
#    H200), and it prints each step's seconds, so compiling shows apart from the timed steps;
# 2. the GPT-J and OPT rows on the same backend, then TinyLlama on the other backends in
#    BACKENDS (default "cube cube+sync cube+flash fusion": CubeCL alone with attention by
#    blocks, the same with the cuBLAS products synchronised on the host instead of ordered
#    by events, then with attention on the flash kernels, then Burn's fusion-wrapped
#    CubeCL, all with their matmuls on cuBLAS and the fused row kernels (softmax, norms) on;
#    "cube-cubecl" and "fusion-cubecl" keep CubeCL's own matmul); each of these gets at
#    most ROW_SECS seconds (default 120);
# 3. the fixture parity suite in f32 (bound 1e-4) on the first backend, then in bf16
#    (bound 5e-2) on the backends in PARITY_BACKENDS (default: the first two in BACKENDS
#    without "+sync");
#    each parity run starts with the kernel checks (every fast path against plain Burn, the
#    matmuls against an exact product, on the GPU);
# 4. with what time is left (GENERATE_SECS at most, default 60): `softtune generate`'s speed
#    for TinyLlama in bf16 (`bench --generate`: reading 20 soft + 1024 text tokens, then 32
#    new tokens with the key/value cache and reading the whole window), for one text and
#    for eight at once, printed under the table; a failure here does not fail the check;
# 5. one table: tokens/s and peak memory beside PyTorch + PEFT's, on the same card where
#    `scripts/peft-baseline.py` measured it (H200), else on an H100 80GB. A row cut short
#    after its first step still gets a rough number ("~"): tokens/s from its last finished
#    step, and the peak of the device memory in use (nvidia-smi, polled every 0.5 s).
# The first row runs with CubeCL's compilation log (COMPILE_LOG, default a temporary file;
# "off" for none; through softtune's SOFTTUNE_COMPILE_LOG, as CubeCL's CUBECL_DEBUG_LOG
# would also profile every launch), summarized after it: how many kernels were compiled,
# by name, and the autotune results. While its warm-up steps run, cuda-gdb
# (where there is one) samples its threads' stacks at SAMPLE_AT seconds (default "45 150";
# "off" for none).
# TinyLlama on backends after the first is skipped once OPTIONAL_SECS (default 300) have
# passed; every run is cut short at TOTAL_SECS, and skipped when less than 10 s are left.
# Prints the card's name first: numbers are only comparable on the same card.
#
# Kernel caches: softtune's PTX cache and the driver's machine-code cache, where softtune
# and the driver keep them. CACHE_IN=PREFIX unpacks the parts PREFIX.* of an earlier
# CACHE_OUT first (a GPU machine starts without them, and compiling costs minutes);
# CACHE_OUT=PREFIX packs them at the end into parts of at most 15 MiB (PREFIX.aa, .ab, …),
# e.g. into $OUT, to carry to the next session's machine of the same driver.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
device="${2:-cuda:0}"
backends="${BACKENDS:-cube cube+sync cube+flash fusion}"
row_secs="${ROW_SECS:-120}"
optional_secs="${OPTIONAL_SECS:-300}"
# The parity runs: the first two backends without "+sync" unless PARITY_BACKENDS says otherwise.
parity_backends="${PARITY_BACKENDS:-$(echo $backends | tr ' ' '\n' | grep -v '+sync' | head -2 | tr '\n' ' ')}"
fixtures="$here/tests/fixtures"

. "$here/scripts/cuda-env.sh" "${1:-}"
kernel_caches=(
    "${SOFTTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/softtune}/cubecl"
    "${CUDA_CACHE_PATH:-$HOME/.nv/ComputeCache}"
)
if [ -n "${CACHE_IN:-}" ] && ls "$CACHE_IN".* >/dev/null 2>&1; then
    cat "$CACHE_IN".* | xz -dc | tar -x -P && echo "== kernel caches unpacked:" && du -sh "${kernel_caches[@]}" 2>/dev/null
fi
card=""
command -v nvidia-smi >/dev/null && card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
echo "$card"
# PyTorch + PEFT on the same card where measured (scripts/peft-baseline.py), else on an H100
# 80GB: "TinyLlama GPT-J OPT" tokens/s, then peak GiB.
case "$card" in
    *H200*) peft_card=H200 peft_tps=(66382 11606 19705) peft_mem=(16.6 46.4 26.9) ;;
    *) peft_card=H100 peft_tps=(59848 10659 18739) peft_mem=(16.2 45.9 26.8) ;;
esac

# backend_env NAME: the environment a BACKENDS name stands for.
# A "+flash" suffix adds SOFTTUNE_CUDA_ATTENTION=flash (the CubeCL flash attention kernels);
# without it attention runs by blocks on the matmuls. A "+sync" suffix orders the cuBLAS
# products by host synchronisation (SOFTTUNE_CUBLAS_ORDER=sync) instead of the driver's
# context-wide events. Every backend runs softtune's fused
# CubeCL row kernels (the blocked attention's softmax, the norms): FUSED=off keeps Burn's
# element-wise operations there instead.
fused="${FUSED:-on}"
backend_env() {
    local name=${1%%+*} attention=blocked order=events
    case "$1" in *+flash*) attention=flash ;; esac
    case "$1" in *+sync*) order=sync ;; esac
    local common="SOFTTUNE_CUDA_ATTENTION=$attention SOFTTUNE_CUDA_FUSED=$fused SOFTTUNE_CUBLAS_ORDER=$order"
    case "$name" in
        *-cubecl) echo "SOFTTUNE_CUDA_BACKEND=${name%-cubecl} SOFTTUNE_CUDA_MATMUL=cubecl $common" ;;
        *) echo "SOFTTUNE_CUDA_BACKEND=$name SOFTTUNE_CUDA_MATMUL=cublas $common" ;;
    esac
}

status=0
extra_env=""
start=$SECONDS
total_secs="${TOTAL_SECS:-540}"
parity_secs="${PARITY_SECS:-150}"
# over_budget WHAT: true (and says so) once OPTIONAL_SECS have passed.
over_budget() {
    if [ $((SECONDS - start)) -ge "$optional_secs" ]; then
        echo "== skipped (past ${optional_secs} s): $1"
        return 0
    fi
    return 1
}
# limit SECS: SECS, or what is left of TOTAL_SECS if less (0 when nothing is).
limit() {
    local left=$((total_secs - (SECONDS - start)))
    [ "$left" -lt 0 ] && left=0
    [ "$1" -lt "$left" ] && left=$1
    echo "$left"
}
# parity BACKEND PRECISION
parity() {
    local secs
    secs=$(limit "$parity_secs")
    if [ "$secs" -lt 10 ]; then
        echo "== skipped (past ${total_secs} s): parity on $1, $2"
        return
    fi
    echo "== parity: $device, $1, $2"
    env $(backend_env "$1") timeout "$secs" "$bin" parity --fixtures "$fixtures" --device "$device" --precision "$2" || status=1
    echo "== parity on $1, $2 done at $((SECONDS - start)) s"
}

# sample_stacks PID LOG SECONDS...: at each SECONDS after the start, while the bench under
# `timeout` PID is still in its warm-up steps (LOG has no "step 2/" yet), the top frames of
# each of its threads (cuda-gdb attaches for a moment): where compiling spends its time.
sample_stacks() {
    local parent=$1 log=$2 t0=$SECONDS child at
    shift 2
    for at in "$@"; do
        while [ $((SECONDS - t0)) -lt "$at" ]; do
            kill -0 "$parent" 2>/dev/null || return 0
            sleep 1
        done
        grep -q 'step 2/' "$log" && return 0
        child=$(pgrep -P "$parent" | head -1)
        [ -z "$child" ] && return 0
        echo "== the bench's threads at ${at} s (top frames):"
        timeout 30 cuda-gdb -p "$child" -batch -ex 'thread apply all bt 6' 2>/dev/null \
            | grep -E '^Thread|^#' | cut -c1-160 | head -80
    done
}
sample_at=""

table=""
syncs=""
# softtune's memory estimate of each row (what the wizard checks against free memory).
estimates=""
# bench SHAPE BATCH PEFT_TOKENS_PER_S PEFT_PEAK_GIB BACKEND: one row.
bench() {
    local shape=$1 batch=$2 peft_tps=$3 peft_mem=$4 b=$5 out rc line tps mem ratio secs fallbacks
    secs=$(limit "$row_secs")
    if [ "$secs" -lt 10 ]; then
        echo "== skipped (past ${total_secs} s): $shape on $b"
        table+=$(printf '%-15s %-11s %12s %12s %8s %10s %10s' "$shape" "$b" "skipped" "$peft_tps" "-" "-" "$peft_mem GiB")$'\n'
        return
    fi
    echo "== bench: $shape ${batch}x1024 on $b"
    local log="${TMPDIR:-/tmp}/softtune-bench-$$.log" pid sampler=""
    env $(backend_env "$b") $extra_env timeout "$secs" "$bin" bench --device "$device" --precision bf16 \
        --shape "$shape" --batch "$batch" --seq 1024 --soft 20 --steps 3 --warmup 2 >"$log" 2>&1 &
    pid=$!
    if [ -n "$sample_at" ] && command -v cuda-gdb >/dev/null; then
        sample_stacks "$pid" "$log" $sample_at &
        sampler=$!
    fi
    # The device's memory in use, every half second, for a row that does not finish.
    local mem_log="${TMPDIR:-/tmp}/softtune-mem-$$.log" poller=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "${device#cuda:}" \
            -lms 500 >"$mem_log" 2>/dev/null &
        poller=$!
    fi
    wait "$pid"
    rc=$?
    [ -n "$sampler" ] && wait "$sampler"
    [ -n "$poller" ] && kill "$poller" 2>/dev/null && wait "$poller" 2>/dev/null
    out=$(cat "$log")
    rm -f "$log"
    echo "$out"
    echo "== bench $shape on $b done at $((SECONDS - start)) s"
    fallbacks=$(echo "$out" | sed -n "s/^$shape: matmuls on CubeCL instead of cuBLAS: //p" | tail -1)
    [ -n "$fallbacks" ] && [ "$fallbacks" != 0 ] && echo "== $shape on $b: $fallbacks matmuls fell back to CubeCL"
    # Host time around the products in the last step (ordered by events, or waiting for
    # CubeCL's queue and then for cuBLAS): collected under the table.
    local waits
    waits=$(echo "$out" | grep -E "^$shape: step [0-9]+/[0-9]+: " | tail -1 | sed -n 's/.*(\(.*cuBLAS products.*\))$/\1/p')
    [ -n "$waits" ] && syncs+="$shape on $b, last step: $waits"$'\n'
    # The event order turned off (a driver without it, or its check failed): said once.
    local unordered
    unordered=$(echo "$out" | grep -m1 'fall back to host synchronisation' | sed 's/^softtune: //')
    [ -n "$unordered" ] && syncs+="$shape on $b: $unordered"$'\n'
    local estimate
    estimate=$(echo "$out" | sed -n "s/^$shape: memory estimate //p" | head -1)
    [ -n "$estimate" ] && estimates+="$shape on $b: $estimate"$'\n'
    line=$(echo "$out" | grep "^$shape " | tail -1)
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        # Cut short (or failed): a rough number from the last step that finished after the
        # first (the first compiles the kernels), marked "~", with the polled peak memory.
        local last secs_step peak
        last=$(echo "$out" | grep -E "^$shape: step [0-9]+/[0-9]+: [0-9.]+ s" | grep -v "step 1/" | tail -1)
        peak=$(sort -n "$mem_log" 2>/dev/null | tail -1)
        rm -f "$mem_log"
        status=1
        if [ -z "$last" ]; then
            table+=$(printf '%-15s %-11s %12s %12s %8s %10s %10s' "$shape" "$b" "failed" "$peft_tps" "-" "-" "$peft_mem GiB")$'\n'
            return
        fi
        secs_step=$(echo "$last" | sed -E 's/^.*: step [0-9]+\/[0-9]+: ([0-9.]+) s.*/\1/')
        tps=$(awk -v b="$batch" -v s="$secs_step" 'BEGIN { printf "~%.0f", b * 1024 / s }')
        ratio=$(awk -v a="${tps#\~}" -v b="$peft_tps" 'BEGIN { printf "~%.2f", a / b }')
        mem="-"
        [ -n "$peak" ] && mem=$(awk -v m="$peak" 'BEGIN { printf "~%.1f GiB", m / 1024 }')
        echo "== $shape on $b cut short: ${tps#\~} tokens/s from ${last#"$shape: "}"
        table+=$(printf '%-15s %-11s %12s %12s %8s %10s %10s' "$shape" "$b" "$tps" "$peft_tps" "$ratio" "$mem" "$peft_mem GiB")$'\n'
        return
    fi
    rm -f "$mem_log"
    tps=$(echo "$line" | awk '{print $7}')
    mem=$(echo "$line" | awk '{print $9" "$10}')
    ratio=$(awk -v a="$tps" -v b="$peft_tps" 'BEGIN { printf "%.2f", a / b }')
    table+=$(printf '%-15s %-11s %12s %12s %8s %10s %10s' "$shape" "$b" "$tps" "$peft_tps" "$ratio" "$mem" "$peft_mem GiB")$'\n'
}

first_backend=$(echo $backends | cut -d' ' -f1)
row_secs_default=$row_secs
row_secs="${FIRST_ROW_SECS:-360}"
compile_log="${COMPILE_LOG:-$(mktemp)}"
if [ "$compile_log" != off ]; then
    : >"$compile_log"
    # softtune's own switch: CubeCL's CUBECL_DEBUG_LOG would also turn on its profiler,
    # which waits for the GPU before every kernel launch, and the row's times would be void.
    extra_env="SOFTTUNE_COMPILE_LOG=$compile_log"
fi
sample_at="${SAMPLE_AT:-45 150}"
[ "$sample_at" = off ] && sample_at=""
bench tinyllama-1.1b 8 ${peft_tps[0]} ${peft_mem[0]} "$first_backend"
extra_env=""
sample_at=""
row_secs=$row_secs_default
if [ "$compile_log" != off ] && [ -s "$compile_log" ]; then
    echo "== kernels compiled for the first row: $(grep -c '^\[START_KERNEL_COMPILATION\]' "$compile_log"), by name:"
    grep '^name:' "$compile_log" | sed -E 's/^name: //; s/<.*//' | sort | uniq -c | sort -rn | head -30
    echo "== autotune log lines: $(grep -c 'key=' "$compile_log"); the first 15 that name the fastest:"
    grep -i 'fastest' "$compile_log" | cut -c1-240 | head -15
fi
[ -z "${COMPILE_LOG:-}" ] && rm -f "$compile_log"
bench gptj-6b 4 ${peft_tps[1]} ${peft_mem[1]} "$first_backend"
bench opt-6.7b 4 ${peft_tps[2]} ${peft_mem[2]} "$first_backend"
for b in $(echo $backends | cut -d' ' -f2-); do
    [ "$b" = "$first_backend" ] && continue
    over_budget "tinyllama-1.1b on $b" || bench tinyllama-1.1b 8 ${peft_tps[0]} ${peft_mem[0]} "$b"
done
parity "$first_backend" f32
for b in $parity_backends; do
    parity "$b" bf16
done
generation=""
# One text, then eight at once (`generate --samples 8`), each with what time is left.
for texts in 1 8; do
    gen_secs=$(limit "${GENERATE_SECS:-60}")
    if [ "$gen_secs" -lt 20 ]; then
        echo "== skipped (past ${total_secs} s): generation of $texts text(s) on $first_backend"
        continue
    fi
    echo "== bench --generate: tinyllama-1.1b, 20 + 1024 tokens, 32 new, $texts text(s), on $first_backend"
    got=$(env $(backend_env "$first_backend") timeout "$gen_secs" "$bin" bench --device "$device" \
        --precision bf16 --shape tinyllama-1.1b --seq 1024 --soft 20 --generate 32 --batch "$texts" 2>&1)
    rc=$?
    echo "$got"
    if [ $rc -ne 0 ]; then
        echo "== generation failed or was cut short (rc $rc)"
    elif [ -z "$generation" ]; then
        generation=$(echo "$got" | grep -E '^(shape |tinyllama-1.1b )')
    else
        generation+=$'\n'$(echo "$got" | grep -E '^tinyllama-1.1b ')
    fi
    echo "== generation done at $((SECONDS - start)) s"
done
echo
printf '%-15s %-11s %12s %12s %8s %10s %10s\n' shape backend "tokens/s" "PEFT $peft_card" "ratio" "peak mem" "PEFT mem"
printf '%s' "$table"
[ -n "$syncs" ] && printf 'host time around the cuBLAS products:\n%s' "$syncs"
[ -n "$estimates" ] && printf 'memory estimates (compare with the peak column):\n%s' "$estimates"
[ -n "$generation" ] && printf 'softtune generate on %s (bf16):\n%s\n' "$first_backend" "$generation"
echo "total $((SECONDS - start)) s"
# The compiled-kernel caches (softtune's PTX cache, the driver's machine-code cache).
existing=()
for d in "${kernel_caches[@]}"; do
    [ -d "$d" ] && existing+=("$d")
done
[ ${#existing[@]} -gt 0 ] && du -sh "${existing[@]}"
if [ -n "${CACHE_OUT:-}" ] && [ ${#existing[@]} -gt 0 ]; then
    rm -f "$CACHE_OUT".*
    tar -c -P "${existing[@]}" | xz -T0 -6 | split -b 15M - "$CACHE_OUT."
    ls -l "$CACHE_OUT".*
fi
exit $status
