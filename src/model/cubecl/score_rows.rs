//! The blocked attention's softmax as CubeCL kernels: one pass over a block of scores
//! instead of Burn's chain of element-wise kernels and reductions.
//!
//! The blocked attention ([`crate::model::kernels`]) runs the products on the backend's matmuls
//! (cuBLAS on CUDA) and holds one block of scores at a time. Between the products, plain
//! Burn scales, masks, takes the row maximum, subtracts, exponentiates, sums, divides and
//! casts: on the GPU each is a kernel reading and writing the whole block in float32, about
//! 60 bytes of memory traffic per score in the forward pass and 100 in the backward pass,
//! which makes the element-wise work, not the products, most of attention's time. Here:
//!
//! * [`probs`] (forward): reads the raw float32 products once for the row maximum, once for
//!   the sum (mostly from cache), and writes the probabilities in the model's dtype and the
//!   row's log-sum-exp: 4 + 2 bytes a score through DRAM;
//! * [`score_grads`] (backward): reads the raw products and `dp = dO·vᵀ`, writes the
//!   recomputed probabilities and `ds = p·(dp − delta)·scale` in the model's dtype: 12 bytes.
//!
//! The causal and local-window mask comes from the block's position (no mask tensor).
//! One cube per row; its units stride over the keys, so reads and writes are coalesced.
//! Behind [`Kernels::attention_probs`] and [`Kernels::attention_score_grads`]
//! (on CUDA unless `SOFTTUNE_CUDA_FUSED=off`).
//!
//! [`Kernels::attention_probs`]: crate::model::kernels::Kernels::attention_probs
//! [`Kernels::attention_score_grads`]: crate::model::kernels::Kernels::attention_score_grads

use burn::tensor::{DType, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{ROW_UNITS, burn_tensor, cube, dims, empty, reduce};
use crate::model::kernels::{
    Kernels, ScoreBlock, plain_attention_probs, plain_attention_score_grads,
};

/// Where a cube's row stands: cube `(x, y)` is stacked row `x` of head `y` (over `b·kvh`).
#[derive(CubeType, Clone, Copy)]
struct Row {
    /// Batch and key head.
    b: usize,
    g: usize,
    row: usize,
    keys: usize,
    /// The visible keys: `lo..hi`.
    lo: usize,
    hi: usize,
}

#[cube]
fn row_of(scores: &Tensor<f32>, n: u32, p0: u32, k0: u32, window: u32) -> Row {
    let heads = scores.shape(1);
    let keys = scores.shape(3);
    let bg = CUBE_POS_Y as usize;
    let row = CUBE_POS_X as usize;
    let pos = p0 as usize + row % n as usize;
    let k0 = k0 as usize;
    let w = window as usize;
    // Causal: keys up to the row's position.
    let hi = min(max(pos + 1, k0) - k0, keys);
    // Local: keys after `pos − window`.
    let reach = k0 + w;
    let lo = select(w > 0, max(pos + 1, reach) - reach, 0usize);
    Row {
        b: bg / heads,
        g: bg % heads,
        row,
        keys,
        lo,
        hi,
    }
}

/// Offset of element `(r.b, r.g, r.row, j)` of `t`.
#[cube]
fn at<F: Float>(t: &Tensor<F>, r: Row, j: usize) -> usize {
    r.b * t.stride(0) + r.g * t.stride(1) + r.row * t.stride(2) + j * t.stride(3)
}

/// A raw score scaled, and soft-capped when `capped`: `cap · tanh(x·scale / cap)`.
#[cube]
fn scaled(x: f32, scale: f32, cap: f32, #[comptime] capped: bool) -> f32 {
    let mut y = x * scale;
    if capped {
        y = cap * (y / cap).tanh();
    }
    y
}

/// `p = softmax(scaled(scores))` over the visible keys (0 elsewhere) and `lse` per row.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn probs_kernel<F: Float>(
    scores: &Tensor<f32>,
    p: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    cap: f32,
    n: u32,
    p0: u32,
    k0: u32,
    window: u32,
    #[comptime] capped: bool,
    #[define(F)] _dtype: StorageType,
) {
    let r = row_of(scores, n, p0, k0, window);
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut sm = SharedMemory::<f32>::new(ROW_UNITS);
    // Below every score (WGSL has no infinity literal); the row's own position is visible.
    let mut m = f32::new(-1.0e30);
    let mut j = r.lo + u;
    while j < r.hi {
        m = max(m, scaled(scores[at(scores, r, j)], scale, cap, capped));
        j += step;
    }
    let m = reduce(&mut sm, m, true);
    let mut l = 0.0f32;
    j = r.lo + u;
    while j < r.hi {
        l += (scaled(scores[at(scores, r, j)], scale, cap, capped) - m).exp();
        j += step;
    }
    let l = reduce(&mut sm, l, false);
    let inv = l.recip();
    j = u;
    while j < r.keys {
        let mut x = 0.0f32;
        if j >= r.lo && j < r.hi {
            x = (scaled(scores[at(scores, r, j)], scale, cap, capped) - m).exp() * inv;
        }
        p[at(p, r, j)] = F::cast_from(x);
        j += step;
    }
    if u == 0 {
        lse[at(lse, r, 0)] = m + l.ln();
    }
}

/// `p = exp(scaled(scores) − lse)` and `ds = p·(dp − delta)·scale` (0 where masked), times
/// the soft cap's slope `1 − (scaled / cap)²` when `capped`.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn grads_kernel<F: Float>(
    scores: &Tensor<f32>,
    dp: &Tensor<f32>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    p: &mut Tensor<F>,
    ds: &mut Tensor<F>,
    scale: f32,
    cap: f32,
    n: u32,
    p0: u32,
    k0: u32,
    window: u32,
    #[comptime] capped: bool,
    #[define(F)] _dtype: StorageType,
) {
    let r = row_of(scores, n, p0, k0, window);
    let row_lse = lse[at(lse, r, 0)];
    let row_delta = delta[at(delta, r, 0)];
    let mut j = UNIT_POS_X as usize;
    while j < r.keys {
        let mut pj = 0.0f32;
        let mut dsj = 0.0f32;
        if j >= r.lo && j < r.hi {
            let x = scaled(scores[at(scores, r, j)], scale, cap, capped);
            pj = (x - row_lse).exp();
            dsj = pj * (dp[at(dp, r, j)] - row_delta) * scale;
            if capped {
                let t = x / cap;
                dsj *= 1.0 - t * t;
            }
        }
        p[at(p, r, j)] = F::cast_from(pj);
        ds[at(ds, r, j)] = F::cast_from(dsj);
        j += CUBE_DIM_X as usize;
    }
}

/// Why the kernels cannot take a block of scores shaped `scores` in `dtypes` (the inputs')
/// with outputs in `out`: `None` when they can.
pub fn unsupported(scores: &[usize], dtypes: &[DType], out: DType) -> Option<String> {
    if scores.len() != 4 || scores.contains(&0) {
        return Some(format!("scores shaped {scores:?}"));
    }
    if dtypes.iter().any(|d| *d != DType::F32) {
        return Some(format!("inputs in {dtypes:?} (the kernels take float32)"));
    }
    if !matches!(out, DType::F32 | DType::F16 | DType::BF16) {
        return Some(format!("outputs in {out:?}"));
    }
    // Grid limits: rows along x, heads along y.
    if scores[2] > i32::MAX as usize || scores[0] * scores[1] > u16::MAX as usize {
        return Some(format!("scores shaped {scores:?} (too many rows or heads)"));
    }
    None
}

fn grid(shape: &[usize]) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(shape[2] as u32, (shape[0] * shape[1]) as u32, 1),
        CubeDim::new_1d(ROW_UNITS as u32),
    )
}

/// The block's scalar arguments: `(scale, cap, n, p0, k0, window, capped)` (`cap` 1 when
/// the scores are not capped).
fn args(block: ScoreBlock) -> (f32, f32, u32, u32, u32, u32, bool) {
    (
        block.opts.scale as f32,
        block.opts.softcap.unwrap_or(1.0) as f32,
        block.n as u32,
        block.p0 as u32,
        block.k0 as u32,
        block.window() as u32,
        block.opts.softcap.is_some(),
    )
}

/// [`Kernels::attention_probs`]: `(p in dtype,
/// lse)`. The caller has checked [`unsupported`].
pub fn probs<R: CubeRuntime>(
    scores: &CubeTensor<R>,
    block: ScoreBlock,
    dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let shape = dims(scores);
    debug_assert!(unsupported(&shape, &[scores.dtype], dtype).is_none());
    let p = empty(scores, shape.clone(), dtype);
    let lse = empty(scores, vec![shape[0], shape[1], shape[2], 1], DType::F32);
    let (count, dim) = grid(&shape);
    let (scale, cap, n, p0, k0, window, capped) = args(block);
    probs_kernel::launch::<R>(
        &scores.client,
        count,
        dim,
        scores.clone().into_tensor_arg(),
        p.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scale,
        cap,
        n,
        p0,
        k0,
        window,
        capped,
        dtype.into(),
    );
    (p, lse)
}

/// [`Kernels::attention_score_grads`]:
/// `(p, ds)` in `dtype`. The caller has checked [`unsupported`] (all four inputs float32).
pub fn score_grads<R: CubeRuntime>(
    scores: &CubeTensor<R>,
    dp: &CubeTensor<R>,
    lse: &CubeTensor<R>,
    delta: &CubeTensor<R>,
    block: ScoreBlock,
    dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let shape = dims(scores);
    debug_assert!(
        unsupported(
            &shape,
            &[scores.dtype, dp.dtype, lse.dtype, delta.dtype],
            dtype
        )
        .is_none()
    );
    let p = empty(scores, shape.clone(), dtype);
    let ds = empty(scores, shape.clone(), dtype);
    let (count, dim) = grid(&shape);
    let (scale, cap, n, p0, k0, window, capped) = args(block);
    grads_kernel::launch::<R>(
        &scores.client,
        count,
        dim,
        scores.clone().into_tensor_arg(),
        dp.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        p.clone().into_tensor_arg(),
        ds.clone().into_tensor_arg(),
        scale,
        cap,
        n,
        p0,
        k0,
        window,
        capped,
        dtype.into(),
    );
    (p, ds)
}

/// Whether the kernels take these tensors: `scores` and `more` (the backward pass's `dp`,
/// `lse`, `delta`) with outputs in `dtype`.
pub fn takes<B: Backend>(
    scores: &BurnTensor<B, 4>,
    more: &[&BurnTensor<B, 4>],
    dtype: DType,
) -> bool {
    let mut dtypes = vec![scores.dtype()];
    dtypes.extend(more.iter().map(|t| t.dtype()));
    let shapes_match = more.is_empty() || {
        let [b, g, rows, _] = scores.dims();
        let [mb, mg, mr, _] = more[0].dims();
        (mb, mg, mr) == (b, g, rows)
            && more[1..].iter().all(|t| t.dims() == [b, g, rows, 1])
            && more[0].dims() == scores.dims()
    };
    shapes_match && unsupported(&scores.dims(), &dtypes, dtype).is_none()
}

/// [`Kernels::attention_probs`] of a CubeCL
/// backend `B`: the kernel when `on` and it takes the tensors, plain Burn otherwise.
pub fn probs_or_plain<R, B>(
    on: bool,
    scores: BurnTensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>)
where
    R: CubeRuntime,
    B: Kernels + Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    if on && takes(&scores, &[], dtype) {
        return tensor_probs(scores, block, dtype);
    }
    plain_attention_probs(scores, block, dtype)
}

/// [`Kernels::attention_score_grads`]
/// of a CubeCL backend `B`: the kernel when `on` and it takes the tensors, plain Burn
/// otherwise.
pub fn score_grads_or_plain<R, B>(
    on: bool,
    scores: BurnTensor<B, 4>,
    dp: BurnTensor<B, 4>,
    lse: BurnTensor<B, 4>,
    delta: BurnTensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>)
where
    R: CubeRuntime,
    B: Kernels + Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    if on && takes(&scores, &[&dp, &lse, &delta], dtype) {
        return tensor_score_grads(scores, dp, lse, delta, block, dtype);
    }
    plain_attention_score_grads(scores, dp, lse, delta, block, dtype)
}

/// [`probs`] on the Burn tensors of a CubeCL backend `B`.
pub fn tensor_probs<R, B>(
    scores: BurnTensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>)
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    let (p, lse) = probs(&cube(scores), block, dtype);
    (burn_tensor(p), burn_tensor(lse))
}

/// [`score_grads`] on the Burn tensors of a CubeCL backend `B`.
pub fn tensor_score_grads<R, B>(
    scores: BurnTensor<B, 4>,
    dp: BurnTensor<B, 4>,
    lse: BurnTensor<B, 4>,
    delta: BurnTensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (BurnTensor<B, 4>, BurnTensor<B, 4>)
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    let [s, d, l, e] = [scores, dp, lse, delta].map(cube);
    let (p, ds) = score_grads(&s, &d, &l, &e, block, dtype);
    (burn_tensor(p), burn_tensor(ds))
}

/// The kernels on WebGPU/Vulkan ([`super::test_gpu`]) against plain Burn on the CPU, alone
/// and inside the blocked attention, and through autodiff against plain Burn on the device.
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor};

    use super::super::nvrtc;
    use super::super::test_gpu::{
        Gpu, Own, assert_kernel_checks_pass, device, device_for, to_gpu, values,
    };
    use crate::device::CpuBackend;
    use crate::model::kernels::{blocked_attention_backward, blocked_attention_forward, key_range};
    use crate::model::ops::AttnOpts;
    use crate::parity::rel_err;
    use cubecl::wgpu::WgpuRuntime;

    fn random(shape: [usize; 4]) -> Tensor<CpuBackend, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 2.0), &Default::default())
    }

    #[test]
    fn score_row_kernels_match_plain_burn() {
        let Some(dev) = device() else { return };
        // (batch, key heads, query heads per key head, first position, positions, window,
        // scores as a strided view): the first block, later blocks (keys from 0 or from the
        // window's reach), windows of 1 and shorter than a block, more keys than units;
        // soft-capped scores (Gemma 2).
        for (b, g, rep, p0, n, window, strided, softcap) in [
            (2, 2, 2, 0, 33, None, false, None),
            (1, 3, 1, 128, 64, None, true, None),
            (1, 2, 4, 100, 50, Some(30), false, None),
            (2, 1, 1, 256, 7, Some(1), true, None),
            (1, 1, 3, 300, 40, Some(600), false, None),
            (2, 2, 2, 0, 33, None, false, Some(0.8)),
            (1, 2, 4, 100, 50, Some(30), true, Some(3.0)),
        ] {
            let opts = AttnOpts {
                scale: 0.7,
                window,
                softcap,
            };
            let (k0, keys) = key_range(p0, n, window);
            let block = ScoreBlock { p0, n, k0, opts };
            let rows = rep * n;
            let case = format!("b{b} g{g} rep{rep} p0 {p0} n{n} window {window:?} cap {softcap:?}");
            let scores = if strided {
                random([b, g, keys, rows]).swap_dims(2, 3)
            } else {
                random([b, g, rows, keys])
            };
            let dp = random([b, g, rows, keys]);
            let delta = random([b, g, rows, 1]);

            let (p, lse) = plain_attention_probs(scores.clone(), block, DType::F32);
            let (gp, glse) = {
                let scores = to_gpu(&scores, &dev);
                assert!(takes(&scores, &[], DType::F32), "{case}");
                tensor_probs(scores, block, DType::F32)
            };
            assert!(rel_err(&values(gp), &values(p.clone())) < 1e-5, "p, {case}");
            assert!(
                rel_err(&values(glse.clone()), &values(lse.clone())) < 1e-5,
                "lse, {case}"
            );

            let (p2, ds) = plain_attention_score_grads(
                scores.clone(),
                dp.clone(),
                lse,
                delta.clone(),
                block,
                DType::F32,
            );
            assert!(
                rel_err(&values(p2.clone()), &values(p)) < 1e-5,
                "recomputed p, {case}"
            );
            let [gs, gdp, gdelta] = [&scores, &dp, &delta].map(|t| to_gpu(t, &dev));
            assert!(takes(&gs, &[&gdp, &glse, &gdelta], DType::F32), "{case}");
            let (gp2, gds) = tensor_score_grads(gs, gdp, glse, gdelta, block, DType::F32);
            assert!(
                rel_err(&values(gp2), &values(p2)) < 1e-5,
                "backward p, {case}"
            );
            assert!(rel_err(&values(gds), &values(ds)) < 1e-5, "ds, {case}");
        }
    }

    /// Both kernels through CubeCL's CUDA compiler and NVRTC, in every dtype they write.
    #[test]
    // Scalars register as `()` compilation arguments, as in the code CubeCL generates.
    #[allow(clippy::let_unit_value, clippy::unit_arg)]
    fn score_row_kernels_compile_for_cuda() {
        use cubecl::prelude::Tensor as Cube;
        let Some(toolkit) = nvrtc::toolkit() else {
            return;
        };
        let Some(dev) = device() else { return };
        let t = |shape: [usize; 4]| cube(Tensor::<Gpu, 4>::zeros(shape, &dev)).into_tensor_arg();
        let client = cube(Tensor::<Gpu, 1>::zeros([1], &dev)).client;
        let dim = CubeDim::new_1d(ROW_UNITS as u32);
        let cases = [DType::F32, DType::BF16, DType::F16]
            .into_iter()
            .flat_map(|d| [(d, false), (d, true)]);
        for (dtype, capped) in cases {
            let st: StorageType = dtype.into();
            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<probs_kernel::_F>>(st)
            });
            let kernel = probs_kernel::ProbsKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                <Cube<f32> as LaunchArg>::register(t([1, 2, 8, 8]), &mut l),
                <Cube<f32> as LaunchArg>::register(t([1, 2, 8, 8]), &mut l),
                <Cube<f32> as LaunchArg>::register(t([1, 2, 8, 1]), &mut l),
                <f32 as LaunchArg>::register(0.5, &mut l),
                <f32 as LaunchArg>::register(2.0, &mut l),
                <u32 as LaunchArg>::register(8, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                capped,
                st,
            );
            let probs = nvrtc::check(kernel, &toolkit);
            assert!(
                probs.is_ok(),
                "probs_kernel, {dtype:?}, capped {capped}: {}",
                probs.unwrap_err()
            );

            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<grads_kernel::_F>>(st)
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let args = [
                tensor([1, 2, 8, 8]),
                tensor([1, 2, 8, 8]),
                tensor([1, 2, 8, 1]),
                tensor([1, 2, 8, 1]),
                tensor([1, 2, 8, 8]),
                tensor([1, 2, 8, 8]),
            ];
            let [scores, dp, lse, delta, p, ds] = args;
            let kernel = grads_kernel::GradsKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                scores,
                dp,
                lse,
                delta,
                p,
                ds,
                <f32 as LaunchArg>::register(0.5, &mut l),
                <f32 as LaunchArg>::register(2.0, &mut l),
                <u32 as LaunchArg>::register(8, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
                capped,
                st,
            );
            let grads = nvrtc::check(kernel, &toolkit);
            assert!(
                grads.is_ok(),
                "grads_kernel, {dtype:?}, capped {capped}: {}",
                grads.unwrap_err()
            );
        }
    }

    /// The blocked attention over several blocks (sequences of 600 positions: four blocks of
    /// 150), its softmax on the kernels, against the same on the CPU.
    #[test]
    fn blocked_attention_on_the_score_row_kernels_matches_the_cpu() {
        let Some(dev) = device_for(Own::Fused) else {
            return;
        };
        for (window, softcap) in [(None, None), (Some(200), None), (Some(200), Some(1.5))] {
            let opts = AttnOpts {
                scale: 0.3,
                window,
                softcap,
            };
            let (q, k, v, g) = (
                random([1, 4, 600, 8]),
                random([1, 2, 600, 8]),
                random([1, 2, 600, 8]),
                random([1, 4, 600, 8]),
            );
            let (out, lse) = blocked_attention_forward(q.clone(), k.clone(), v.clone(), opts);
            let want = blocked_attention_backward(
                q.clone(),
                k.clone(),
                v.clone(),
                out.clone(),
                lse.clone(),
                g.clone(),
                opts,
            );
            let [gq, gk, gv, gg] = [&q, &k, &v, &g].map(|t| to_gpu(t, &dev));
            let (gout, glse) = blocked_attention_forward(gq.clone(), gk.clone(), gv.clone(), opts);
            assert!(
                rel_err(&values(gout.clone()), &values(out)) < 1e-5,
                "out, {window:?}"
            );
            assert!(
                rel_err(&values(glse.clone()), &values(lse)) < 1e-5,
                "lse, {window:?}"
            );
            let got = blocked_attention_backward(gq, gk, gv, gout, glse, gg, opts);
            for ((name, g), w) in ["dq", "dk", "dv"].iter().zip(got).zip(want) {
                let err = rel_err(&values(g), &values(w));
                assert!(err < 1e-5, "{name}: {err:e}, window {window:?}");
            }
        }
    }

    /// Through autodiff, with the norms' kernels too ([`super::super::norm`]), on the
    /// backend alone and under Burn's fusion wrapper (where the kernels run as custom
    /// operations).
    #[test]
    fn kernel_checks_pass_on_webgpu_with_the_fused_row_kernels_alone_and_under_fusion() {
        assert_kernel_checks_pass(Own::Fused);
    }
}
