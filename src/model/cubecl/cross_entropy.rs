//! The training cross-entropy as CubeCL kernels: one pass over the logits per direction,
//! reading them in their own dtype.
//!
//! A step's logits are the largest tensor of training: positions × vocabulary, 8 × 1024 ×
//! 32 000 for TinyLlama at batch 8 (0.5 GB in bfloat16). As Burn operations, the loss first
//! casts them to a float32 copy (1 GB), which the backward pass keeps, and then walks that
//! copy in about four kernels each way (maximum, subtract, exponentiate, sum; exponentiate,
//! scatter, scale, cast back), each writing a tensor of its size. Those temporaries come on
//! top of every saved activation at the start of the backward pass, where a step's memory
//! peaks. Here:
//!
//! * [`forward`]: one cube per position reads its row twice (maximum, then the sum of
//!   exponentials, mostly from cache) and writes the row's log-sum-exp and loss. The
//!   backward pass keeps the logits as they came (16-bit stays 16-bit) and `lse`.
//! * [`backward`]: one cube per position reads its row once and writes
//!   `(softmax − onehot(target)) · grad / rows` in the logits' dtype, computed in float32.
//!
//! Targets outside the vocabulary (which the data loader refuses) give a NaN loss, never a
//! read outside the row. Behind [`Kernels::cross_entropy_forward`] and
//! [`Kernels::cross_entropy_backward`] (on CUDA unless `SOFTTUNE_CUDA_FUSED=off`).
//!
//! [`Kernels::cross_entropy_forward`]: crate::model::kernels::Kernels::cross_entropy_forward
//! [`Kernels::cross_entropy_backward`]: crate::model::kernels::Kernels::cross_entropy_backward

use burn::tensor::{
    DType, Int as BurnInt, Tensor as BurnTensor, TensorPrimitive, backend::Backend,
};
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{ROW_UNITS, burn_tensor, cube, dims, empty, reduce, row_grid};
use crate::model::kernels::{Kernels, as_dtype, xent_backward, xent_forward};

/// Where a cube's row of logits stands: offsets of its first logit and of its target.
#[derive(CubeType, Clone, Copy)]
struct Row {
    /// Batch and position.
    b: usize,
    t: usize,
    base: usize,
    vocab: usize,
}

#[cube]
fn row_of<F: Float>(logits: &Tensor<F>) -> Row {
    let positions = logits.shape(1);
    let row = CUBE_POS_X as usize;
    let b = row / positions;
    let t = row % positions;
    Row {
        b,
        t,
        base: b * logits.stride(0) + t * logits.stride(1),
        vocab: logits.shape(2),
    }
}

/// The row's target as an index, `vocab` when it is outside `0..vocab`.
#[cube]
fn target_of<I: Int>(targets: &Tensor<I>, r: Row) -> usize {
    let id = targets[r.b * targets.stride(0) + r.t * targets.stride(1)];
    let mut index = r.vocab;
    if id >= I::new(0) {
        let id = usize::cast_from(id);
        if id < r.vocab {
            index = id;
        }
    }
    index
}

/// Per row: `lse = log Σ exp(logits)` and `loss = lse − logits[target]`.
// `x − x` over `x − x`: a NaN made at run time.
#[allow(clippy::eq_op)]
#[cube(launch)]
fn forward_kernel<F: Float, I: Int>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    lse: &mut Tensor<f32>,
    loss: &mut Tensor<f32>,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let r = row_of(logits);
    let step = logits.stride(2);
    let u = UNIT_POS_X as usize;
    let units = CUBE_DIM_X as usize;
    let mut sm = SharedMemory::<f32>::new(ROW_UNITS);
    // Below every logit (WGSL has no infinity literal).
    let mut m = f32::new(-1.0e30);
    let mut j = u;
    while j < r.vocab {
        m = max(m, f32::cast_from(logits[r.base + j * step]));
        j += units;
    }
    let m = reduce(&mut sm, m, true);
    let mut l = 0.0f32;
    j = u;
    while j < r.vocab {
        l += (f32::cast_from(logits[r.base + j * step]) - m).exp();
        j += units;
    }
    let l = reduce(&mut sm, l, false);
    if u == 0 {
        let row_lse = m + l.ln();
        let target = target_of(targets, r);
        // NaN for a target outside the vocabulary (0/0 at run time: WGSL has no NaN literal).
        let mut picked = (row_lse - row_lse) / (row_lse - row_lse);
        if target < r.vocab {
            picked = f32::cast_from(logits[r.base + target * step]);
        }
        let row = r.b * logits.shape(1) + r.t;
        lse[row] = row_lse;
        loss[row] = row_lse - picked;
    }
}

/// `dlogits = (exp(logits − lse) − onehot(target)) · grad[0] · scale`, in the logits' dtype.
#[cube(launch)]
fn backward_kernel<F: Float, I: Int>(
    logits: &Tensor<F>,
    lse: &Tensor<f32>,
    targets: &Tensor<I>,
    grad: &Tensor<f32>,
    dlogits: &mut Tensor<F>,
    scale: f32,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let r = row_of(logits);
    let step = logits.stride(2);
    let row_lse = lse[r.b * lse.stride(0) + r.t * lse.stride(1)];
    let target = target_of(targets, r);
    let g = grad[0] * scale;
    let out = r.b * dlogits.stride(0) + r.t * dlogits.stride(1);
    let out_step = dlogits.stride(2);
    let mut j = UNIT_POS_X as usize;
    while j < r.vocab {
        let p = (f32::cast_from(logits[r.base + j * step]) - row_lse).exp();
        let d = select(j == target, p - 1.0, p);
        dlogits[out + j * out_step] = F::cast_from(d * g);
        j += CUBE_DIM_X as usize;
    }
}

/// Why the kernels cannot take logits shaped `logits` in `dtype` against targets shaped
/// `targets` in `target_dtype`: `None` when they can.
pub fn unsupported(
    logits: &[usize],
    dtype: DType,
    targets: &[usize],
    target_dtype: DType,
) -> Option<String> {
    if logits.len() != 3 || logits.contains(&0) || targets != &logits[..2] {
        return Some(format!("logits shaped {logits:?}, targets {targets:?}"));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Some(format!("logits in {dtype:?}"));
    }
    if !matches!(target_dtype, DType::I32 | DType::I64 | DType::U32) {
        return Some(format!("targets in {target_dtype:?}"));
    }
    // One cube per row along x.
    if logits[0] * logits[1] > i32::MAX as usize {
        return Some(format!("logits shaped {logits:?} (too many rows)"));
    }
    None
}

/// `(loss [b, t], lse [b, t, 1])` per position, float32. The caller has checked
/// [`unsupported`].
pub fn forward<R: CubeRuntime>(
    logits: &CubeTensor<R>,
    targets: &CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let shape = dims(logits);
    let (b, t) = (shape[0], shape[1]);
    let lse = empty(logits, vec![b, t, 1], DType::F32);
    let loss = empty(logits, vec![b, t], DType::F32);
    let (count, dim) = row_grid(b * t);
    forward_kernel::launch::<R>(
        &logits.client,
        count,
        dim,
        logits.clone().into_tensor_arg(),
        targets.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        [logits.dtype.into(), targets.dtype.into()],
    );
    (loss, lse)
}

/// The logits' gradient in their dtype, from `grad` (`[1]`, float32) of the mean loss.
/// The caller has checked [`unsupported`].
pub fn backward<R: CubeRuntime>(
    logits: &CubeTensor<R>,
    lse: &CubeTensor<R>,
    targets: &CubeTensor<R>,
    grad: &CubeTensor<R>,
) -> CubeTensor<R> {
    let shape = dims(logits);
    let rows = shape[0] * shape[1];
    let dlogits = empty(logits, shape, logits.dtype);
    let (count, dim) = row_grid(rows);
    backward_kernel::launch::<R>(
        &logits.client,
        count,
        dim,
        logits.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        targets.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        dlogits.clone().into_tensor_arg(),
        1.0 / rows as f32,
        [logits.dtype.into(), targets.dtype.into()],
    );
    dlogits
}

/// Whether the kernels take `logits` against `targets`.
pub fn takes<B: Backend>(logits: &BurnTensor<B, 3>, targets: &BurnTensor<B, 2, BurnInt>) -> bool {
    unsupported(
        &logits.dims(),
        logits.dtype(),
        &targets.dims(),
        targets.dtype(),
    )
    .is_none()
}

fn int<R, B>(t: BurnTensor<B, 2, BurnInt>) -> CubeTensor<R>
where
    R: CubeRuntime,
    B: Backend<IntTensorPrimitive = CubeTensor<R>>,
{
    t.into_primitive()
}

/// [`Kernels::cross_entropy_forward`]
/// of a CubeCL backend `B`: the kernel when `on` and it takes the tensors, Burn operations
/// otherwise. The mean over positions is Burn's.
pub fn forward_or_plain<R, B>(
    on: bool,
    logits: BurnTensor<B, 3>,
    targets: BurnTensor<B, 2, BurnInt>,
) -> (BurnTensor<B, 1>, BurnTensor<B, 3>)
where
    R: CubeRuntime,
    B: Kernels + Backend<FloatTensorPrimitive = CubeTensor<R>, IntTensorPrimitive = CubeTensor<R>>,
{
    if !(on && takes(&logits, &targets)) {
        return xent_forward(logits, targets);
    }
    let (loss, lse) = forward(&cube(logits), &int(targets));
    let loss: BurnTensor<B, 2> = burn_tensor(loss);
    (loss.mean(), burn_tensor(lse))
}

/// [`Kernels::cross_entropy_backward`]
/// of a CubeCL backend `B`: the kernel when `on` and it takes the tensors, Burn operations
/// otherwise.
pub fn backward_or_plain<R, B>(
    on: bool,
    logits: BurnTensor<B, 3>,
    lse: BurnTensor<B, 3>,
    targets: BurnTensor<B, 2, BurnInt>,
    grad: BurnTensor<B, 1>,
) -> BurnTensor<B, 3>
where
    R: CubeRuntime,
    B: Kernels + Backend<FloatTensorPrimitive = CubeTensor<R>, IntTensorPrimitive = CubeTensor<R>>,
{
    let fits = lse.dtype() == DType::F32 && lse.dims()[..2] == logits.dims()[..2];
    if !(on && fits && takes(&logits, &targets)) {
        return xent_backward(logits, lse, targets, grad);
    }
    let grad = as_dtype(grad, DType::F32);
    let dlogits = backward(&cube(logits), &cube(lse), &int(targets), &cube(grad));
    BurnTensor::from_primitive(TensorPrimitive::Float(dlogits))
}

/// The kernels on WebGPU/Vulkan ([`super::test_gpu`]) against Burn operations on the CPU;
/// through autodiff and under fusion the kernel checks cover them (see
/// [`super::score_rows`]' tests).
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor};

    use super::super::nvrtc;
    use super::super::test_gpu::{Gpu, device, to_gpu, values};
    use crate::device::CpuBackend;
    use crate::parity::rel_err;
    use cubecl::wgpu::WgpuRuntime;

    /// Rows shorter and longer than a cube's units and not a multiple of them, logits as a
    /// strided view, targets as a narrowed view, in float32 and float16 (WebGPU has no
    /// bfloat16; its kernels are compiled for CUDA below).
    #[test]
    fn cross_entropy_kernels_match_burn_operations() {
        let Some(dev) = device() else { return };
        for (b, t, vocab, strided, dtype) in [
            (2, 5, 50, false, DType::F32),
            (1, 7, 700, true, DType::F32),
            (3, 2, 257, false, DType::F16),
            (2, 3, 1000, true, DType::F16),
        ] {
            let case = format!("b{b} t{t} vocab {vocab} strided {strided} {dtype:?}");
            let cpu = Default::default();
            let logits: Tensor<CpuBackend, 3> = if strided {
                Tensor::random([b, vocab, t], Distribution::Normal(0.0, 3.0), &cpu).swap_dims(1, 2)
            } else {
                Tensor::random([b, t, vocab], Distribution::Normal(0.0, 3.0), &cpu)
            };
            let ids = Tensor::<CpuBackend, 2, BurnInt>::random(
                [b, t + 1],
                Distribution::Uniform(0.0, vocab as f64),
                &cpu,
            );
            let targets = ids.clone().narrow(1, 1, t);
            let grad = Tensor::<CpuBackend, 1>::from_floats([2.5], &cpu);

            let gpu_logits = to_gpu(&logits, &dev).cast(dtype);
            // The reference sees the logits rounded to the dtype, as the kernels do.
            let logits =
                Tensor::<CpuBackend, 3>::from_data(gpu_logits.to_data().convert::<f32>(), &cpu);
            let gpu_targets =
                Tensor::<Gpu, 2, BurnInt>::from_data(ids.to_data(), &dev).narrow(1, 1, t);
            assert!(takes(&gpu_logits, &gpu_targets), "{case}");

            let (want_loss, want_lse) = xent_forward(logits.clone(), targets.clone());
            let (loss, lse) = forward_or_plain(true, gpu_logits.clone(), gpu_targets.clone());
            let err = rel_err(&values(loss), &values(want_loss));
            assert!(err < 1e-5, "loss, {case}: {err:e}");
            let err = rel_err(&values(lse.clone()), &values(want_lse.clone()));
            assert!(err < 1e-5, "lse, {case}: {err:e}");

            let want = xent_backward(logits, want_lse, targets, grad.clone());
            let got = backward_or_plain(true, gpu_logits, lse, gpu_targets, to_gpu(&grad, &dev));
            assert_eq!(got.dtype(), dtype, "{case}");
            // 16-bit gradients: one rounding of a float32 value.
            let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            let err = rel_err(&values(got), &values(want.cast(DType::F32)));
            assert!(err < bound, "dlogits, {case}: {err:e}");
        }
    }

    /// A target outside the vocabulary gives a NaN loss, not a read outside the row.
    #[test]
    fn a_target_outside_the_vocabulary_gives_nan() {
        let Some(dev) = device() else { return };
        let logits = Tensor::<Gpu, 3>::random([1, 2, 40], Distribution::Default, &dev);
        let targets = Tensor::<Gpu, 2, BurnInt>::from_data([[3, 40]], &dev);
        let (loss, _) = forward(&cube(logits), &int(targets));
        let rows = values(burn_tensor::<WgpuRuntime, Gpu, 2>(loss));
        assert!(rows[0].is_finite() && rows[1].is_nan(), "{rows:?}");
    }

    /// Both kernels through CubeCL's CUDA compiler and NVRTC, for every logits dtype.
    #[test]
    // Scalars register as `()` compilation arguments, as in the code CubeCL generates.
    #[allow(clippy::let_unit_value, clippy::unit_arg)]
    fn cross_entropy_kernels_compile_for_cuda() {
        use cubecl::prelude::Tensor as Cube;
        let Some(toolkit) = nvrtc::toolkit() else {
            return;
        };
        let Some(dev) = device() else { return };
        let t = |shape: [usize; 3]| cube(Tensor::<Gpu, 3>::zeros(shape, &dev)).into_tensor_arg();
        let client = cube(Tensor::<Gpu, 1>::zeros([1], &dev)).client;
        let dim = CubeDim::new_1d(ROW_UNITS as u32);
        let is: StorageType = DType::I32.into();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let st: StorageType = dtype.into();
            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<forward_kernel::_F>>(st);
                scope.register_type::<DynamicScalar<forward_kernel::_I>>(is);
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [logits, targets, lse, loss] =
                [[2, 3, 8], [2, 3, 1], [2, 3, 1], [2, 3, 1]].map(&mut tensor);
            let kernel = forward_kernel::ForwardKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                logits,
                targets,
                lse,
                loss,
                [st, is],
            );
            let forward = nvrtc::check(kernel, &toolkit);
            assert!(
                forward.is_ok(),
                "forward, {dtype:?}: {}",
                forward.unwrap_err()
            );

            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<backward_kernel::_F>>(st);
                scope.register_type::<DynamicScalar<backward_kernel::_I>>(is);
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [logits, lse, targets, grad, dlogits] =
                [[2, 3, 8], [2, 3, 1], [2, 3, 1], [1, 1, 1], [2, 3, 8]].map(&mut tensor);
            let kernel = backward_kernel::BackwardKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                logits,
                lse,
                targets,
                grad,
                dlogits,
                <f32 as LaunchArg>::register(0.5, &mut l),
                [st, is],
            );
            let backward = nvrtc::check(kernel, &toolkit);
            assert!(
                backward.is_ok(),
                "backward, {dtype:?}: {}",
                backward.unwrap_err()
            );
        }
    }
}
