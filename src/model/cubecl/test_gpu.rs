//! The WebGPU backend the CubeCL kernels are tested on (Mesa's lavapipe on a machine
//! without a GPU), with [`Kernels`] that run the norms and the cross-entropy on the fused
//! row kernels, and attention on the flash kernels or blocked with its softmax on the
//! fused row kernels, whichever the test's device stands for ([`device_for`]). Without a
//! Vulkan driver [`device`] says so and the tests pass, unless `SOFTTUNE_TEST_WGPU=require`
//! (`.ci/run` installs lavapipe and sets it).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use burn::backend::Autodiff;
use burn::tensor::{DType, Int, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::{CubeBackend, tensor::CubeTensor};
use burn_fusion::Fusion;
use cubecl::wgpu::{
    AutoGraphicsApi, RuntimeOptions, WgpuDevice, WgpuRuntime, init_device, init_setup,
};

use super::flash::{self, Unroll};
use super::{cross_entropy, norm, score_rows};
use crate::device::CpuBackend;
use crate::model::kernels::{
    Kernels, ScoreBlock, blocked_attention_backward, blocked_attention_forward,
};
use crate::model::ops::AttnOpts;
use crate::parity::{kernel_checks, tolerance};

pub type Gpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// Which of the backend's own kernels a test thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// Attention on the flash kernels (blocked attention's softmax in Burn operations
    /// where flash does not take the shapes).
    Flash,
    /// Blocked attention, its softmax on the fused row kernels.
    Fused,
}

/// How many products [`Gpu`]'s own matmul ran in this process, by operands (shapes and
/// dtypes; fusion runs them on a thread of its own).
static OWN_MATMULS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn own_matmuls_of(lhs: [usize; 3], rhs: [usize; 3], dtype: DType) -> usize {
    let key = format!("{lhs:?} {dtype:?} · {rhs:?} {dtype:?}");
    OWN_MATMULS.lock().unwrap().get(&key).copied().unwrap_or(0)
}

thread_local! {
    static OWN: Cell<Own> = const { Cell::new(Own::Flash) };
}

/// Makes this thread's [`Gpu`] take attention as `own` says where it sees only shapes
/// ([`Kernels::own_attention`], asked on the thread that builds the graph). [`device_for`]
/// calls it, so a test picks its kernels by picking its device.
fn use_kernels(own: Own) {
    OWN.with(|o| o.set(own));
}

fn own() -> Own {
    OWN.with(|o| o.get())
}

/// How many times [`Gpu`] chose kernels for a tensor on the [`Own::Fused`] device as one of
/// Burn fusion's custom operations: the tests check that fusion reaches that choice.
static UNDER_FUSION: AtomicUsize = AtomicUsize::new(0);

/// Whether this thread is a CubeCL device service's (named "DS…"), where Burn's fusion runs
/// its custom operations.
fn under_fusion() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("DS"))
}

/// Asserts that fusion's thread reached the fused row kernels since [`UNDER_FUSION`] read
/// `before`.
fn assert_reached_under_fusion(before: usize, dtype: DType) {
    assert!(
        UNDER_FUSION.load(Ordering::Relaxed) > before,
        "{dtype:?}: under fusion the fused row kernels were never chosen"
    );
}

/// Which kernels [`Gpu`] runs for a tensor on `device`. Burn's fusion runs custom
/// operations on a thread of the device's own (CubeCL's device service), not on the thread
/// that registered them, so the choice goes with the device: [`Own::Flash`] on WebGPU's
/// default device, [`Own::Fused`] on a second device on the same adapter ([`device_for`]).
fn own_on(device: &WgpuDevice) -> Own {
    if *device != WgpuDevice::DefaultDevice && under_fusion() {
        UNDER_FUSION.fetch_add(1, Ordering::Relaxed);
    }
    match device {
        WgpuDevice::DefaultDevice => Own::Flash,
        _ => Own::Fused,
    }
}

/// `lhs · rhs` (rank 2 to 4, batch dimensions broadcast) as a broadcast product summed over
/// `k`: no CubeCL matmul kernel. Burn 0.21's CubeCL matmul on WebGPU (lavapipe) returns
/// wrong values for some shapes with a transposed operand, depending on which kernel its
/// autotuning picked in that process (seen at `[2, 300, 600]ᵀ · [2, 600, 16]`, and
/// intermittently in the kernel checks' attention over 280 positions), which made the
/// plain reference, not the kernels under test, wrong.
fn reference_matmul<const D: usize>(lhs: Tensor<Gpu, D>, rhs: Tensor<Gpu, D>) -> Tensor<Gpu, D> {
    assert!((2..=4).contains(&D), "matmul of rank {D}");
    let four = |d: [usize; D]| {
        let mut v = [1usize; 4];
        v[4 - D..].copy_from_slice(&d);
        v
    };
    let (ld, rd) = (four(lhs.dims()), four(rhs.dims()));
    // Products and sums in float32, the result in the operands' dtype: as cuBLAS computes
    // 16-bit products on the GPU (float32 accumulation).
    let dtype = lhs.dtype();
    let l = lhs.cast(DType::F32).reshape(ld).unsqueeze_dim::<5>(4);
    let r = rhs.cast(DType::F32).reshape(rd).unsqueeze_dim::<5>(2);
    let product = (l * r).sum_dim(3).cast(dtype);
    let mut out = [0usize; D];
    for i in 0..D - 2 {
        out[i] = ld[4 - D + i].max(rd[4 - D + i]);
    }
    out[D - 2] = ld[2];
    out[D - 1] = rd[3];
    product.reshape(out)
}

/// The matmul is [`reference_matmul`], called "own" so that under fusion it runs as a
/// custom operation too.
impl Kernels for Gpu {
    fn own_matmul() -> bool {
        true
    }

    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let key = format!(
            "{:?} {:?} · {:?} {:?}",
            lhs.dims(),
            lhs.dtype(),
            rhs.dims(),
            rhs.dtype()
        );
        *OWN_MATMULS.lock().unwrap().entry(key).or_default() += 1;
        reference_matmul(lhs, rhs)
    }

    fn own_attention(q: &[usize], k: &[usize], v: &[usize], dtypes: &[DType]) -> bool {
        own() == Own::Flash && flash::unsupported(q, k, v, dtypes).is_none()
    }

    fn own_fused() -> bool {
        true
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        match own_on(&q.device()) {
            // The flash kernels do not soft-cap (see `owns_attention`).
            Own::Flash if opts.softcap.is_none() => {
                flash::tensor_forward(q, k, v, opts, Unroll::Never)
            }
            _ => blocked_attention_forward(q, k, v, opts),
        }
    }

    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 5>,
        grad: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> [Tensor<Self, 4>; 3] {
        match own_on(&q.device()) {
            Own::Flash if opts.softcap.is_none() => {
                flash::tensor_backward(q, k, v, out, lse, grad, opts, Unroll::Never)
            }
            _ => blocked_attention_backward(q, k, v, out, lse, grad, opts),
        }
    }

    fn attention_probs(
        scores: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        let fused = own_on(&scores.device()) == Own::Fused;
        score_rows::probs_or_plain(fused, scores, block, dtype)
    }

    fn attention_score_grads(
        scores: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        delta: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        let fused = own_on(&scores.device()) == Own::Fused;
        score_rows::score_grads_or_plain(fused, scores, dp, lse, delta, block, dtype)
    }

    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        norm::forward_or_plain(true, x, w, Some(b), eps)
    }

    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        norm::forward_or_plain(true, x, w, None, eps)
    }

    fn norm_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        grad: Tensor<Self, 3>,
        eps: f64,
        rms: bool,
    ) -> Tensor<Self, 3> {
        norm::backward_or_plain(true, x, w, grad, eps, rms)
    }

    fn cross_entropy_forward(
        logits: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 3>) {
        cross_entropy::forward_or_plain(true, logits, targets)
    }

    fn cross_entropy_backward(
        logits: Tensor<Self, 3>,
        lse: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        cross_entropy::backward_or_plain(true, logits, lse, targets, grad)
    }
}

/// WebGPU's default device and a second device on the same adapter, or `None` (said on
/// stderr) when there is no adapter and the tests are not required.
static DEVICES: OnceLock<Option<(WgpuDevice, WgpuDevice)>> = OnceLock::new();

fn devices() -> Option<&'static (WgpuDevice, WgpuDevice)> {
    DEVICES
        .get_or_init(|| {
            let found = std::panic::catch_unwind(|| {
                let options = || RuntimeOptions::default();
                let first = WgpuDevice::DefaultDevice;
                let setup = init_setup::<AutoGraphicsApi>(&first, options());
                let second = init_device(setup, options());
                let sum = |dev: &WgpuDevice| {
                    Tensor::<Gpu, 1>::from_floats([1.0, 2.0], dev)
                        .sum()
                        .into_scalar()
                };
                ((sum(&first), sum(&second)), (first, second))
            });
            match found {
                Ok(((3.0, 3.0), devices)) => Some(devices),
                other => {
                    let required =
                        std::env::var("SOFTTUNE_TEST_WGPU").is_ok_and(|v| v == "require");
                    let what = other.map(|(sums, _)| sums);
                    assert!(
                        !required,
                        "SOFTTUNE_TEST_WGPU=require but WebGPU does not work here ({what:?}): \
                         install a Vulkan driver (Debian: mesa-vulkan-drivers)"
                    );
                    eprintln!(
                        "no WebGPU adapter (install mesa-vulkan-drivers): kernel tests skipped"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The WebGPU device whose [`Gpu`] runs `own`'s kernels ([`own_on`]), this thread set to
/// match; `None` without WebGPU (see [`devices`]).
pub fn device_for(own: Own) -> Option<WgpuDevice> {
    let (flash, fused) = devices()?;
    use_kernels(own);
    Some(match own {
        Own::Flash => flash.clone(),
        Own::Fused => fused.clone(),
    })
}

/// A WebGPU device for tests whose kernels do not depend on [`Own`] (the flash one).
pub fn device() -> Option<WgpuDevice> {
    device_for(Own::Flash)
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn to_gpu<const D: usize>(t: &Tensor<CpuBackend, D>, dev: &WgpuDevice) -> Tensor<Gpu, D> {
    Tensor::from_data(t.to_data(), dev)
}

pub fn float<const D: usize>(t: CubeTensor<WgpuRuntime>) -> Tensor<Gpu, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Runs the whole kernel-check suite through autodiff with this thread's [`Gpu`] running
/// `own`, on the backend alone and under Burn's fusion wrapper (where its kernels and
/// matmuls are custom operations, as on the default CUDA backend), in float32 and in
/// float16 (the 16-bit paths the GPU runs in bf16; lavapipe has no bf16), and asserts every
/// check within its dtype's bound.
pub fn assert_kernel_checks_pass(own: Own) {
    let Some(dev) = device_for(own) else { return };
    for dtype in [DType::F32, DType::F16] {
        let bound = tolerance(dtype);
        let before = UNDER_FUSION.load(Ordering::Relaxed);
        let checks = [
            (
                "alone",
                kernel_checks::<Autodiff<Gpu>>(&dev, dtype).unwrap(),
            ),
            (
                "fused",
                kernel_checks::<Autodiff<Fusion<Gpu>>>(&dev, dtype).unwrap(),
            ),
        ];
        if own == Own::Fused {
            assert_reached_under_fusion(before, dtype);
        }
        for (how, results) in checks {
            assert!(
                results
                    .iter()
                    .any(|(what, _)| what.starts_with("attention"))
            );
            for (what, err) in results {
                assert!(
                    err <= bound,
                    "{own:?}, {how}, {dtype:?}: {what}: {err:e} > {bound:e}"
                );
            }
        }
    }
}

/// Under fusion, a product of operands in two dtypes still runs on the backend's own matmul
/// (both operands cast to the result's dtype first, as the plain path computes them), not
/// on Burn's fused matmul.
#[test]
fn mixed_dtype_products_run_on_the_backends_own_matmul_under_fusion() {
    let Some(dev) = device() else { return };
    type F = Fusion<Gpu>;
    let a = Tensor::<F, 3>::random([2, 5, 8], burn::tensor::Distribution::Default, &dev);
    let b = Tensor::<F, 3>::random([2, 8, 3], burn::tensor::Distribution::Default, &dev);
    let b16 = b.cast(DType::F16);
    let mixed = <F as Kernels>::matmul_f32(a.clone(), b16.clone());
    let want = a.clone().matmul(b16.clone().cast(DType::F32));
    assert_eq!(mixed.dtype(), DType::F32);
    let (got, want) = (values(mixed), values(want));
    let err = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-5, "{err}");
    assert_eq!(own_matmuls_of([2, 5, 8], [2, 8, 3], DType::F32), 1);
    // In the left operand's dtype (16-bit) when that is the result's.
    let half = <F as Kernels>::matmul(b16.swap_dims(1, 2), a.swap_dims(1, 2));
    assert_eq!(half.dtype(), DType::F16);
    values(half);
    assert_eq!(own_matmuls_of([2, 3, 8], [2, 8, 5], DType::F16), 1);
}

/// The fixtures through the structure of the default CUDA backend (autodiff over Burn's
/// fusion wrapper, the backend's matmul and kernels as custom operations), within the
/// bounds `softtune parity` holds CUDA to: blocked (the default) and flash attention, each
/// in float32 and float16 (the 16-bit paths the GPU runs in bf16). In float16 flash lands
/// at 5.1e-2 on `opt_proj_postln`'s prompt gradient and blocked (on the fused row kernels)
/// at 2.7e-3: three ReLU signs fall differently, which is why ReLU models get a wider
/// 16-bit gradient bound ([`crate::parity::tolerance_for`]); with blocked attention's
/// forward pass, flash's backward pass lands at 2.6e-3.
#[test]
fn fixture_parity_on_webgpu_under_fusion() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dirs = crate::parity::fixture_dirs(&root).unwrap();
    assert!(dirs.len() >= 9, "{} fixtures", dirs.len());
    for (own, dtype) in [
        (Own::Fused, DType::F32),
        (Own::Fused, DType::F16),
        (Own::Flash, DType::F32),
        (Own::Flash, DType::F16),
    ] {
        let Some(dev) = device_for(own) else { return };
        let before = UNDER_FUSION.load(Ordering::Relaxed);
        for dir in &dirs {
            let errs =
                crate::parity::check_fixture::<Autodiff<Fusion<Gpu>>>(dir, &dev, dtype).unwrap();
            for c in errs {
                assert!(
                    c.pass(),
                    "{own:?}, {dtype:?}, {}: {}: {:e} > {:e}",
                    dir.display(),
                    c.what,
                    c.err,
                    c.bound
                );
            }
        }
        if own == Own::Fused {
            assert_reached_under_fusion(before, dtype);
        }
    }
}

/// The cuBLAS event order (`cublas.rs`) runs each product inside `client.exclusive`, on
/// CubeCL's device thread, and reads its operands' device memory there. CubeCL's runtime
/// (the same client and device thread on WebGPU as on CUDA) must run those reads at once on
/// that thread rather than queue them behind the running closure, which would deadlock.
#[test]
fn device_memory_is_reachable_inside_exclusive_on_the_device_thread() {
    let Some(dev) = device() else { return };
    let queued = Tensor::<Gpu, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &dev) * 2.0;
    let t: CubeTensor<WgpuRuntime> = queued.clone().into_primitive().tensor();
    let (client, handle) = (t.client.clone(), t.handle.clone());
    let caller = std::thread::current().id();
    let (sender, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let asking = std::thread::current().id();
        let inside = client.exclusive(|| {
            let here = std::thread::current().id();
            let read = client.get_resource(handle).is_ok();
            (here != asking && here != caller, read)
        });
        let _ = sender.send(inside.map_err(|e| format!("{e:?}")));
    });
    let (on_device_thread, read) = answer
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("get_resource inside exclusive did not return (deadlock?)")
        .unwrap();
    assert!(on_device_thread, "the closure ran on the asking thread");
    assert!(read, "get_resource failed inside exclusive");
    assert_eq!(
        queued.into_data().to_vec::<f32>().unwrap(),
        [2.0, 4.0, 6.0, 8.0]
    );
}
