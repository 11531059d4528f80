//! `scripts/gpu-check.sh` without a GPU: a stand-in binary answers its `bench` and `parity`
//! calls (the table row itself is printed by the real `softtune bench` on the CPU, so the
//! script's column parsing follows the real format), and the test checks the table: a row
//! that finished, a row cut short after its warm-up ("~" from its last step), the products
//! that fell back to CubeCL, and the host time around the cuBLAS products in either order.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The stand-in: canned step lines per shape; the row line from the real binary (run once,
/// then reused), renamed to the shape asked for.
const FAKE: &str = r#"#!/usr/bin/env bash
here="$(dirname "$0")"
cmd=$1; shift
case "$cmd" in
parity) echo "all fixtures ok"; exit 0 ;;
bench) ;;
*) echo "unexpected command $cmd" >&2; exit 2 ;;
esac
shape=""; batch=""; generate=""
while [ $# -gt 0 ]; do
    case "$1" in
    --shape) shape=$2; shift ;;
    --batch) batch=$2; shift ;;
    --generate) generate=$2; shift ;;
    esac
    shift
done
# The generation benchmark: the real binary's table, renamed.
if [ -n "$generate" ]; then
    "$here/real" bench --device cpu --shape smollm-135m --seq 8 --soft 2 --generate 2 \
        --batch "$batch" | sed "s/^smollm-135m/$shape/"
    exit "${PIPESTATUS[0]}"
fi
# The products' line as `softtune bench` words it in each order.
if [ "$SOFTTUNE_CUBLAS_ORDER" = sync ]; then
    p1="900 cuBLAS products: 29000.0 ms waiting for CubeCL's queue, 80.0 ms in cuBLAS"
    p2="836 cuBLAS products: 120.3 ms waiting for CubeCL's queue, 70.1 ms in cuBLAS"
    p3="836 cuBLAS products: 110.0 ms waiting for CubeCL's queue, 70.0 ms in cuBLAS"
else
    p1="900 cuBLAS products ordered by events: 29000.0 ms waiting for CubeCL's device thread, 9.0 ms launching"
    p2="836 cuBLAS products ordered by events: 4.2 ms waiting for CubeCL's device thread, 6.1 ms launching"
    p3="836 cuBLAS products ordered by events: 4.0 ms waiting for CubeCL's device thread, 6.0 ms launching"
fi
# The first row's compilation log: softtune's switch, never CubeCL's CUBECL_DEBUG_LOG (whose
# profiler would wait for the GPU before every launch).
[ -n "$CUBECL_DEBUG_LOG" ] && { echo "CUBECL_DEBUG_LOG set" >&2; exit 5; }
if [ -n "$SOFTTUNE_COMPILE_LOG" ]; then
    printf '[START_KERNEL_COMPILATION]\nname: rms_norm_rows<f32>\n[START_KERNEL_COMPILATION]\nname: rms_norm_rows<f32>\n' >>"$SOFTTUNE_COMPILE_LOG"
fi
echo "$shape: memory estimate 11.49 GiB (weights 2.05, kept 6.93, working 1.09, runtime 1.43)" >&2
echo "$shape: random weights made in 1.0 s" >&2
[ "$shape" = opt-6.7b ] && echo "softtune: cuBLAS products fall back to host synchronisation (slower): cuCtxRecordEvent: CUDA_ERROR_NOT_SUPPORTED" >&2
echo "$shape: step 1/5: 30.00 s (warm-up) ($p1)" >&2
echo "$shape: step 2/5: 0.50 s (warm-up) ($p2)" >&2
if [ "$shape" = gptj-6b ]; then
    # Cut short by its time limit after the warm-up steps.
    exit 124
fi
echo "$shape: step 3/5: 0.25 s ($p3)" >&2
[ "$shape" = opt-6.7b ] && echo "$shape: matmuls on CubeCL instead of cuBLAS: 3" >&2
if [ ! -s "$here/row" ]; then
    "$here/real" bench --device cpu --shape smollm-135m --batch 1 --seq 8 --soft 2 --steps 1 \
        --warmup 0 >"$here/row" 2>/dev/null || exit 3
fi
sed "s/^smollm-135m/$shape/" "$here/row"
"#;

/// The card's name, and one reading of the device memory in use (MiB) when polled.
const NVIDIA_SMI: &str = r#"#!/usr/bin/env bash
case "$*" in
*name*) echo "NVIDIA H100 80GB HBM3, 81559 MiB, 580.00.00" ;;
*memory.used*) echo 20480 ;;
esac
"#;

#[test]
fn gpu_check_prints_finished_cut_short_and_fallback_rows_and_the_host_time_around_products() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("softtune");
    std::fs::write(&fake, FAKE).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_softtune"), dir.path().join("real")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(&smi, NVIDIA_SMI).unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg(&fake)
        .arg("cuda:0")
        .env("BACKENDS", "cube cube+sync")
        .env("SAMPLE_AT", "off")
        .env("COMPILE_LOG", dir.path().join("compile.log"))
        .env("HOME", &home)
        .env("PATH", path)
        .env("TMPDIR", dir.path())
        .env_remove("CACHE_IN")
        .env_remove("CACHE_OUT")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    // The cut-short row makes the check fail as a whole.
    assert_eq!(out.status.code(), Some(1), "{all}");

    // The table: from its header to the host times.
    let table = stdout
        .split("shape           backend")
        .nth(1)
        .and_then(|t| t.split("host time").next())
        .unwrap_or_else(|| panic!("no table in:\n{all}"));
    let row = |shape: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{shape} ")))
            .unwrap_or_else(|| panic!("no {shape} row in:\n{all}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    // Finished: tokens/s from the real binary's row, the ratio to PEFT's H100 number.
    let tiny = row("tinyllama-1.1b");
    assert_eq!(tiny[1], "cube", "{all}");
    let tps: f64 = tiny[2]
        .parse()
        .unwrap_or_else(|_| panic!("tokens/s in {tiny:?}"));
    assert!(tps > 0.0);
    assert_eq!(tiny[3], "59848");
    assert_eq!(tiny[4], format!("{:.2}", tps / 59848.0), "{tiny:?}");
    assert!(
        tiny[6] == "MiB" || tiny[6] == "GiB",
        "peak memory in {tiny:?}"
    );
    assert!(stdout.starts_with("NVIDIA H100 80GB HBM3"), "{all}");
    // Cut short after the warm-up: 4 × 1024 tokens over its last step's 0.50 s, and the
    // memory nvidia-smi saw.
    let gptj = row("gptj-6b");
    assert_eq!(
        &gptj[2..7],
        ["~8192", "10659", "~0.77", "~20.0", "GiB"],
        "{all}"
    );
    assert!(stdout.contains("== gptj-6b on cube cut short: 8192 tokens/s from step 2/5: 0.50 s"));
    // Fallbacks are said.
    row("opt-6.7b");
    assert!(
        stdout.contains("== opt-6.7b on cube: 3 matmuls fell back to CubeCL"),
        "{all}"
    );
    // TinyLlama again with the products synchronised on the host.
    let synced = table
        .lines()
        .find(|l| l.starts_with("tinyllama-1.1b ") && l.contains(" cube+sync "))
        .unwrap_or_else(|| panic!("no cube+sync row in:\n{all}"));
    assert!(
        synced
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<f64>()
            .is_ok(),
        "{all}"
    );
    // The host time around the products of each row's last step, under the table.
    let waits = stdout
        .split("host time around the cuBLAS products:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no host times in:\n{all}"));
    for line in [
        "tinyllama-1.1b on cube, last step: 836 cuBLAS products ordered by events: 4.0 ms waiting for CubeCL's device thread, 6.0 ms launching",
        "gptj-6b on cube, last step: 836 cuBLAS products ordered by events: 4.2 ms waiting for CubeCL's device thread, 6.1 ms launching",
        "tinyllama-1.1b on cube+sync, last step: 836 cuBLAS products: 110.0 ms waiting for CubeCL's queue, 70.0 ms in cuBLAS",
        "opt-6.7b on cube: cuBLAS products fall back to host synchronisation (slower): cuCtxRecordEvent: CUDA_ERROR_NOT_SUPPORTED",
    ] {
        assert!(waits.contains(line), "{line} in:\n{all}");
    }
    // softtune's memory estimate of every row, under the host times; the cut-short row's too.
    let estimates = stdout
        .split("memory estimates (compare with the peak column):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no memory estimates in:\n{all}"));
    for shape in [
        "tinyllama-1.1b on cube:",
        "gptj-6b on cube:",
        "opt-6.7b on cube:",
    ] {
        assert!(
            estimates.contains(&format!(
                "{shape} 11.49 GiB (weights 2.05, kept 6.93, working 1.09, runtime 1.43)"
            )),
            "{shape} in:\n{all}"
        );
    }
    // The first row's compilation log, summarised by kernel name.
    assert!(
        stdout.contains("== kernels compiled for the first row: 2, by name:")
            && stdout.contains("2 rms_norm_rows"),
        "{all}"
    );
    // The generation benchmark's table, under the estimates.
    let generation = stdout
        .split("softtune generate on cube (bf16):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no generation table in:\n{all}"));
    let mut lines = generation.lines();
    assert!(
        lines.next().unwrap().starts_with("shape ") && generation.contains("ms/step"),
        "{all}"
    );
    let gen_row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(gen_row[0], "tinyllama-1.1b", "{all}");
    assert!(
        gen_row[9].parse::<f64>().unwrap() > 0.0,
        "ms/step in {gen_row:?}"
    );
    // One text, then eight at once.
    let texts: Vec<&str> = generation
        .lines()
        .skip(1)
        .take(2)
        .map(|l| l.split_whitespace().nth(7).unwrap_or(""))
        .collect();
    assert_eq!(texts, ["1", "8"], "{all}");
    // The parity runs ran (f32 on the backend, then bf16).
    assert_eq!(stdout.matches("all fixtures ok").count(), 2, "{all}");
}
