//! LayerNorm and RMSNorm over the last axis as CubeCL kernels: the forward pass and the
//! input gradient, one cube per row, statistics in float32.
//!
//! Burn's compositions ([`plain_layer_norm`], [`plain_rms_norm`], [`norm_backward`]) cast
//! the input to float32 and take five to ten passes over the whole tensor, each a kernel
//! with a float32 buffer of its own; these read the row (and the output's gradient) from
//! memory once and write the result once, in the model's dtype. Same formulas, the same
//! rounding points: RMSNorm rounds `x·rstd` to the model's dtype before the weight
//! multiplies it (as Hugging Face's llama does), LayerNorm rounds once at the end.
//! Behind [`Kernels::layer_norm`], [`Kernels::rms_norm`] and [`Kernels::norm_backward`]
//! (on CUDA unless `SOFTTUNE_CUDA_FUSED=off`).
//!
//! Shapes: `x`, `y`, `grad`, `dx` `[b, s, d]` (`x` and `grad` may be strided views); `w`
//! and LayerNorm's bias `[d]`, in their own dtype (float32 for LayerNorm, the model's
//! dtype for RMSNorm, as the models load them).
//!
//! [`plain_layer_norm`]: crate::model::ops::plain_layer_norm
//! [`plain_rms_norm`]: crate::model::ops::plain_rms_norm
//! [`norm_backward`]: crate::model::kernels::norm_backward
//! [`Kernels::layer_norm`]: crate::model::kernels::Kernels::layer_norm
//! [`Kernels::rms_norm`]: crate::model::kernels::Kernels::rms_norm
//! [`Kernels::norm_backward`]: crate::model::kernels::Kernels::norm_backward

use burn::tensor::{DType, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{ROW_UNITS, burn_tensor, cube, dims, empty, reduce, row_grid};
use crate::model::kernels::norm_backward;
use crate::model::ops::{plain_layer_norm, plain_rms_norm};

/// Offset of element `j` of row `r` (over `b·s`) of `t` (`[b, s, d]`).
#[cube]
fn at<F: Float>(t: &Tensor<F>, r: usize, j: usize) -> usize {
    let s = t.shape(1);
    (r / s) * t.stride(0) + (r % s) * t.stride(1) + j * t.stride(2)
}

/// A row's mean (0 for RMSNorm) and `1/√(var + eps)`.
#[derive(CubeType, Clone, Copy)]
struct Stats {
    mean: f32,
    rstd: f32,
}

/// The [`Stats`] of row `r` of `x`.
#[cube]
fn row_stats<F: Float>(
    x: &Tensor<F>,
    sm: &mut SharedMemory<f32>,
    r: usize,
    eps: f32,
    #[comptime] rms: bool,
) -> Stats {
    let d = x.shape(2);
    let n = d as f32;
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut mean = 0.0f32;
    if !rms {
        let mut acc = 0.0f32;
        let mut j = u;
        while j < d {
            acc += f32::cast_from(x[at(x, r, j)]);
            j += step;
        }
        mean = reduce(sm, acc, false) / n;
    }
    let mut acc = 0.0f32;
    let mut j = u;
    while j < d {
        let c = f32::cast_from(x[at(x, r, j)]) - mean;
        acc += c * c;
        j += step;
    }
    let var = reduce(sm, acc, false) / n;
    Stats {
        mean,
        rstd: (var + eps).sqrt().recip(),
    }
}

/// Row `CUBE_POS_X` of `y`: LayerNorm `(x − μ)·rstd·w + b`, or RMSNorm
/// `round(x·rstd)·w` (`b` unused).
#[cube(launch)]
fn forward_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    w: &Tensor<W>,
    b: &Tensor<W>,
    y: &mut Tensor<F>,
    eps: f32,
    #[comptime] rms: bool,
    #[define(F)] _x_dtype: StorageType,
    #[define(W)] _w_dtype: StorageType,
) {
    let r = CUBE_POS_X as usize;
    let mut sm = SharedMemory::<f32>::new(ROW_UNITS);
    let stats = row_stats::<F>(x, &mut sm, r, eps, rms);
    let (mean, rstd) = (stats.mean, stats.rstd);
    let d = x.shape(2);
    let mut j = UNIT_POS_X as usize;
    while j < d {
        let c = (f32::cast_from(x[at(x, r, j)]) - mean) * rstd;
        let wj = w[j * w.stride(0)];
        if rms {
            y[at(y, r, j)] = F::cast_from(c) * F::cast_from(wj);
        } else {
            let bj = f32::cast_from(b[j * b.stride(0)]);
            y[at(y, r, j)] = F::cast_from(c * f32::cast_from(wj) + bj);
        }
        j += CUBE_DIM_X as usize;
    }
}

/// Row `CUBE_POS_X` of `dx = rstd·(g' − mean(g') − x̂·mean(g'·x̂))`, `g' = grad·w`, RMSNorm
/// without the `mean(g')` term.
#[cube(launch)]
fn backward_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    w: &Tensor<W>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    eps: f32,
    #[comptime] rms: bool,
    #[define(F)] _x_dtype: StorageType,
    #[define(W)] _w_dtype: StorageType,
) {
    let r = CUBE_POS_X as usize;
    let mut sm = SharedMemory::<f32>::new(ROW_UNITS);
    let stats = row_stats::<F>(x, &mut sm, r, eps, rms);
    let (mean, rstd) = (stats.mean, stats.rstd);
    let d = x.shape(2);
    let n = d as f32;
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut proj = 0.0f32;
    let mut gsum = 0.0f32;
    let mut j = u;
    while j < d {
        let xhat = (f32::cast_from(x[at(x, r, j)]) - mean) * rstd;
        let gw = f32::cast_from(grad[at(grad, r, j)]) * f32::cast_from(w[j * w.stride(0)]);
        proj += gw * xhat;
        gsum += gw;
        j += step;
    }
    let proj = reduce(&mut sm, proj, false) / n;
    let mut gmean = 0.0f32;
    if !rms {
        gmean = reduce(&mut sm, gsum, false) / n;
    }
    j = u;
    while j < d {
        let xhat = (f32::cast_from(x[at(x, r, j)]) - mean) * rstd;
        let gw = f32::cast_from(grad[at(grad, r, j)]) * f32::cast_from(w[j * w.stride(0)]);
        dx[at(dx, r, j)] = F::cast_from((gw - gmean - xhat * proj) * rstd);
        j += step;
    }
}

fn float_dtype(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// Whether the kernels take a norm of `x` (`[b, s, d]`) with weight `w` and, for
/// LayerNorm, bias `b` (same dtype as `w`), and in the backward pass `grad` (same shape and
/// dtype as `x`).
pub fn takes<B: Backend>(
    x: &BurnTensor<B, 3>,
    w: &BurnTensor<B, 1>,
    b: Option<&BurnTensor<B, 1>>,
    grad: Option<&BurnTensor<B, 3>>,
) -> bool {
    let [rows_b, rows_s, d] = x.dims();
    let rows = rows_b * rows_s;
    d > 0
        && rows > 0
        && rows <= i32::MAX as usize
        && float_dtype(x.dtype())
        && float_dtype(w.dtype())
        && w.dims() == [d]
        && b.is_none_or(|b| b.dims() == [d] && b.dtype() == w.dtype())
        && grad.is_none_or(|g| g.dims() == x.dims() && g.dtype() == x.dtype())
}

/// LayerNorm (with `b`) or RMSNorm (without) of `x`. The caller has checked [`takes`].
pub fn forward<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &CubeTensor<R>,
    b: Option<&CubeTensor<R>>,
    eps: f64,
) -> CubeTensor<R> {
    let shape = dims(x);
    let y = empty(x, shape.clone(), x.dtype);
    let (count, dim) = row_grid(shape[0] * shape[1]);
    forward_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        w.clone().into_tensor_arg(),
        b.unwrap_or(w).clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        eps as f32,
        b.is_none(),
        x.dtype.into(),
        w.dtype.into(),
    );
    y
}

/// The input gradient of [`forward`] (`rms`: RMSNorm). The caller has checked [`takes`].
pub fn backward<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &CubeTensor<R>,
    grad: &CubeTensor<R>,
    eps: f64,
    rms: bool,
) -> CubeTensor<R> {
    let shape = dims(x);
    let dx = empty(x, shape.clone(), x.dtype);
    let (count, dim) = row_grid(shape[0] * shape[1]);
    backward_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        w.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        eps as f32,
        rms,
        x.dtype.into(),
        w.dtype.into(),
    );
    dx
}

/// [`Kernels::layer_norm`](crate::model::kernels::Kernels::layer_norm) (with `b`) or
/// [`Kernels::rms_norm`](crate::model::kernels::Kernels::rms_norm) of a CubeCL backend `B`:
/// the kernel when `on` and it takes the tensors, plain Burn otherwise.
pub fn forward_or_plain<R, B>(
    on: bool,
    x: BurnTensor<B, 3>,
    w: BurnTensor<B, 1>,
    b: Option<BurnTensor<B, 1>>,
    eps: f64,
) -> BurnTensor<B, 3>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    if on && takes(&x, &w, b.as_ref(), None) {
        return tensor_forward(x, w, b, eps);
    }
    match b {
        Some(b) => plain_layer_norm(x, w, b, eps),
        None => plain_rms_norm(x, w, eps),
    }
}

/// [`Kernels::norm_backward`](crate::model::kernels::Kernels::norm_backward) of a CubeCL
/// backend `B`: the kernel when `on` and it takes the tensors, plain Burn otherwise.
pub fn backward_or_plain<R, B>(
    on: bool,
    x: BurnTensor<B, 3>,
    w: BurnTensor<B, 1>,
    grad: BurnTensor<B, 3>,
    eps: f64,
    rms: bool,
) -> BurnTensor<B, 3>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    if on && takes(&x, &w, None, Some(&grad)) {
        return tensor_backward(x, w, grad, eps, rms);
    }
    norm_backward(x, w, grad, eps, rms)
}

/// [`forward`] on the Burn tensors of a CubeCL backend `B`.
pub fn tensor_forward<R, B>(
    x: BurnTensor<B, 3>,
    w: BurnTensor<B, 1>,
    b: Option<BurnTensor<B, 1>>,
    eps: f64,
) -> BurnTensor<B, 3>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    let b = b.map(cube);
    burn_tensor(forward(&cube(x), &cube(w), b.as_ref(), eps))
}

/// [`backward`] on the Burn tensors of a CubeCL backend `B`.
pub fn tensor_backward<R, B>(
    x: BurnTensor<B, 3>,
    w: BurnTensor<B, 1>,
    grad: BurnTensor<B, 3>,
    eps: f64,
    rms: bool,
) -> BurnTensor<B, 3>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    burn_tensor(backward(&cube(x), &cube(w), &cube(grad), eps, rms))
}

/// The kernels on WebGPU/Vulkan ([`super::test_gpu`]) against plain Burn on the CPU
/// (through autodiff the kernel checks cover them, see [`super::score_rows`]' tests).
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor};

    use super::super::nvrtc;
    use super::super::test_gpu::{Gpu, device, to_gpu, values};
    use crate::device::CpuBackend;
    use crate::parity::rel_err;
    use cubecl::wgpu::WgpuRuntime;

    fn random<const D: usize>(shape: [usize; D], mean: f64) -> Tensor<CpuBackend, D> {
        Tensor::random(shape, Distribution::Normal(mean, 2.0), &Default::default())
    }

    /// Both kernels through CubeCL's CUDA compiler and NVRTC: LayerNorm's float32 weights
    /// on 16-bit rows, RMSNorm's weights in the rows' dtype, all float32.
    #[test]
    // Scalars register as `()` compilation arguments, as in the code CubeCL generates.
    #[allow(clippy::let_unit_value, clippy::unit_arg)]
    fn norm_kernels_compile_for_cuda() {
        use cubecl::prelude::Tensor as Cube;
        let Some(toolkit) = nvrtc::toolkit() else {
            return;
        };
        let Some(dev) = device() else { return };
        let t = |shape: [usize; 3]| cube(Tensor::<Gpu, 3>::zeros(shape, &dev)).into_tensor_arg();
        let client = cube(Tensor::<Gpu, 1>::zeros([1], &dev)).client;
        let dim = CubeDim::new_1d(ROW_UNITS as u32);
        let cases = [
            (DType::BF16, DType::F32, false),
            (DType::F16, DType::F32, false),
            (DType::BF16, DType::BF16, true),
            (DType::F32, DType::F32, true),
        ];
        for (x_dtype, w_dtype, rms) in cases {
            let (xs, ws): (StorageType, StorageType) = (x_dtype.into(), w_dtype.into());
            let case = format!("x {x_dtype:?}, w {w_dtype:?}, rms {rms}");
            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<forward_kernel::_F>>(xs);
                scope.register_type::<DynamicScalar<forward_kernel::_W>>(ws);
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [x, w, b, y] = [[2, 3, 8], [1, 1, 8], [1, 1, 8], [2, 3, 8]].map(&mut tensor);
            let eps = <f32 as LaunchArg>::register(1e-5, &mut l);
            let kernel = forward_kernel::ForwardKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                x,
                w,
                b,
                y,
                eps,
                rms,
                xs,
                ws,
            );
            let forward = nvrtc::check(kernel, &toolkit);
            assert!(forward.is_ok(), "forward, {case}: {}", forward.unwrap_err());

            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<backward_kernel::_F>>(xs);
                scope.register_type::<DynamicScalar<backward_kernel::_W>>(ws);
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [x, w, grad, dx] = [[2, 3, 8], [1, 1, 8], [2, 3, 8], [2, 3, 8]].map(&mut tensor);
            let eps = <f32 as LaunchArg>::register(1e-5, &mut l);
            let kernel = backward_kernel::BackwardKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                x,
                w,
                grad,
                dx,
                eps,
                rms,
                xs,
                ws,
            );
            let backward = nvrtc::check(kernel, &toolkit);
            assert!(
                backward.is_ok(),
                "backward, {case}: {}",
                backward.unwrap_err()
            );
        }
    }

    #[test]
    fn norm_kernels_match_plain_burn() {
        let Some(dev) = device() else { return };
        // Rows shorter and longer than a cube's units, not a multiple of them, and a
        // strided input (a transposed view).
        for (b, s, d, strided) in [(2, 5, 48, false), (1, 3, 700, true), (3, 1, 257, false)] {
            let x = if strided {
                random([b, d, s], 1.5).swap_dims(1, 2)
            } else {
                random([b, s, d], 1.5)
            };
            let (w, bias, grad) = (random([d], 0.0), random([d], 0.0), random([b, s, d], 0.0));
            let [gx, ggrad] = [&x, &grad].map(|t| to_gpu(t, &dev));
            let [gw, gbias] = [&w, &bias].map(|t| to_gpu(t, &dev));
            for rms in [false, true] {
                let case = format!("b{b} s{s} d{d} strided {strided} rms {rms}");
                let (want, got) = if rms {
                    assert!(takes(&gx, &gw, None, None));
                    (
                        plain_rms_norm(x.clone(), w.clone(), 1e-5),
                        tensor_forward(gx.clone(), gw.clone(), None, 1e-5),
                    )
                } else {
                    assert!(takes(&gx, &gw, Some(&gbias), None));
                    (
                        plain_layer_norm(x.clone(), w.clone(), bias.clone(), 1e-5),
                        tensor_forward(gx.clone(), gw.clone(), Some(gbias.clone()), 1e-5),
                    )
                };
                assert!(rel_err(&values(got), &values(want)) < 1e-5, "y, {case}");
                assert!(takes(&gx, &gw, None, Some(&ggrad)));
                let want = norm_backward(x.clone(), w.clone(), grad.clone(), 1e-5, rms);
                let got = tensor_backward(gx.clone(), gw.clone(), ggrad.clone(), 1e-5, rms);
                assert!(rel_err(&values(got), &values(want)) < 1e-5, "dx, {case}");
            }
        }
    }
}
