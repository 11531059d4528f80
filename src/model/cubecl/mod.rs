//! softtune's own CubeCL kernels. They run on any CubeCL runtime: CUDA in training (the
//! CUDA backends' [`Kernels`](super::kernels::Kernels) in [`super::cuda`], custom
//! operations under Burn's fusion in [`super::fusion`]), WebGPU/Vulkan in the tests
//! (`test_gpu`: Mesa's lavapipe on a machine without a GPU).
//!
//! * [`flash`]: flash-style causal attention, forward and backward
//!   (`SOFTTUNE_CUDA_ATTENTION=flash`);
//! * the fused row kernels (`SOFTTUNE_CUDA_FUSED=on`, [`fused`]): [`score_rows`], the
//!   blocked attention's softmax and its backward over a block of scores; [`norm`],
//!   LayerNorm and RMSNorm forward and their input gradient. Each replaces a chain of Burn
//!   element-wise kernels and reductions over float32 copies with one pass per row.
//!
//! Shared here: the cube-wide [`reduce()`], and moving between Burn tensors and CubeCL ones.

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

pub mod flash;
pub mod norm;
pub mod score_rows;
#[cfg(test)]
pub(crate) mod test_gpu;

/// Whether the CUDA backends run the fused row kernels ([`score_rows`], [`norm`]):
/// `SOFTTUNE_CUDA_FUSED=on`; the default, `off`, is plain Burn operations there.
/// Read once per process.
pub fn fused() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SOFTTUNE_CUDA_FUSED").is_ok_and(|v| v == "on"))
}

/// Units per row of the row kernels (a power of two: [`reduce()`] halves it).
pub const ROW_UNITS: usize = 256;

/// The maximum (`is_max`) or the sum of every unit's `x`, returned to every unit of the
/// cube (`sm` holds one float per unit; the cube's units are a power of two).
#[cube]
pub fn reduce(sm: &mut SharedMemory<f32>, x: f32, #[comptime] is_max: bool) -> f32 {
    let u = UNIT_POS_X as usize;
    sm[u] = x;
    sync_cube();
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if u < half {
            if is_max {
                sm[u] = max(sm[u], sm[u + half]);
            } else {
                sm[u] += sm[u + half];
            }
        }
        sync_cube();
        half /= 2;
    }
    let total = sm[0];
    sync_cube();
    total
}

/// The shape of a CubeCL tensor.
pub fn dims<R: CubeRuntime>(t: &CubeTensor<R>) -> Vec<usize> {
    t.meta.shape.iter().copied().collect()
}

/// A new contiguous tensor on `like`'s device.
pub fn empty<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// The CubeCL tensor under a Burn float tensor of a CubeCL backend `B`.
pub fn cube<R, B, const D: usize>(t: Tensor<B, D>) -> CubeTensor<R>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    t.into_primitive().tensor()
}

/// A CubeCL tensor as a Burn float tensor of a CubeCL backend `B`.
pub fn burn_tensor<R, B, const D: usize>(t: CubeTensor<R>) -> Tensor<B, D>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    Tensor::from_primitive(TensorPrimitive::Float(t))
}
