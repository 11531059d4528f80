//! The CUDA backend's [`Kernels`] (`CubeBackend<CudaRuntime>`): matmuls on cuBLAS
//! ([`super::cublas`]; `SOFTTUNE_CUDA_MATMUL=cubecl` keeps CubeCL's); the blocked
//! attention's softmax, the norms and the training cross-entropy on the row kernels of
//! [`super::cubecl::score_rows`], [`super::cubecl::norm`] and
//! [`super::cubecl::cross_entropy`] (`SOFTTUNE_CUDA_FUSED=off` keeps Burn's operations); with
//! `SOFTTUNE_CUDA_ATTENTION=flash`, attention on the CubeCL kernels of
//! [`super::cubecl::flash`].
//! Everything else is the trait's plain Burn default. The default CUDA backend wraps this one
//! in Burn's fusion, whose [`Kernels`] ([`super::fusion`]) runs these as custom operations.

use burn::tensor::{
    DType, Int, Tensor, TensorPrimitive,
    backend::Backend,
    ops::{FloatTensor, FloatTensorOps},
};

use super::cubecl::flash::{self, Unroll};
use super::cubecl::{self as own, cross_entropy, norm, score_rows};
use super::cublas;
use super::kernels::{
    Kernels, ScoreBlock, as_dtype, blocked_attention_backward, blocked_attention_forward,
    owns_attention,
};
use super::ops::AttnOpts;
use crate::device::CudaCubeBackend;

type CubeFloat = FloatTensor<CudaCubeBackend>;

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Whether attention over queries shaped `q`, keys `k`, values `v` and tensors of `dtypes`
/// runs on the flash kernels: `SOFTTUNE_CUDA_ATTENTION=flash` and shapes and dtypes they
/// take. Says once why not when it is on but cannot take them.
fn use_flash(q: &[usize], k: &[usize], v: &[usize], dtypes: &[DType]) -> bool {
    if !flash::enabled() {
        return false;
    }
    let why = flash::unsupported(q, k, v, dtypes);
    if let Some(why) = &why {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("flash attention does not take {why}: blocked attention instead")
        });
    }
    why.is_none()
}

/// The unfused CubeCL tensor product, its result in `out_dtype` (the inputs' dtype, or
/// float32 from 16-bit inputs): cuBLAS when it takes the operands, CubeCL's own matmul
/// otherwise (counted and said once per reason, [`cublas::fell_back`]). Operands of two
/// dtypes are both cast to `out_dtype` first, as the plain path computes them.
fn cube_matmul(lhs: CubeFloat, rhs: CubeFloat, out_dtype: DType) -> CubeFloat {
    let cast = |t: CubeFloat| {
        if t.dtype == out_dtype {
            t
        } else {
            CudaCubeBackend::float_cast(t, out_dtype.into())
        }
    };
    let (lhs, rhs) = if lhs.dtype == rhs.dtype {
        (lhs, rhs)
    } else {
        (cast(lhs), cast(rhs))
    };
    if cublas::enabled() {
        match cublas::matmul(&lhs, &rhs, out_dtype) {
            Ok(out) => return out,
            Err(why) => cublas::fell_back(&why),
        }
    }
    CudaCubeBackend::float_matmul(cast(lhs), cast(rhs))
}

impl Kernels for CudaCubeBackend {
    fn own_matmul() -> bool {
        cublas::enabled()
    }

    fn matmul_off_queue() -> bool {
        cublas::enabled()
    }

    fn own_attention(q: &[usize], k: &[usize], v: &[usize], dtypes: &[DType]) -> bool {
        use_flash(q, k, v, dtypes)
    }

    fn own_fused() -> bool {
        own::fused()
    }

    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = lhs.dtype();
        float(cube_matmul(prim(lhs), prim(rhs), dtype))
    }

    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        float(cube_matmul(prim(lhs), prim(rhs), DType::F32))
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        if !owns_attention::<Self, Self>(&q, &k, &v, &[], opts) {
            return blocked_attention_forward(q, k, v, opts);
        }
        flash::tensor_forward(q, k, v, opts, Unroll::Small)
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
        let grad = as_dtype(grad, q.dtype());
        if !owns_attention::<Self, Self>(&q, &k, &v, &[&out, &grad], opts) {
            return blocked_attention_backward(q, k, v, out, lse, grad, opts);
        }
        flash::tensor_backward(q, k, v, out, lse, grad, opts, Unroll::Small)
    }

    fn attention_probs(
        scores: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        score_rows::probs_or_plain(own::fused(), scores, block, dtype)
    }

    fn attention_score_grads(
        scores: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        delta: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        score_rows::score_grads_or_plain(own::fused(), scores, dp, lse, delta, block, dtype)
    }

    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        norm::forward_or_plain(own::fused(), x, w, Some(b), eps)
    }

    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        norm::forward_or_plain(own::fused(), x, w, None, eps)
    }

    fn norm_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        grad: Tensor<Self, 3>,
        eps: f64,
        rms: bool,
    ) -> Tensor<Self, 3> {
        norm::backward_or_plain(own::fused(), x, w, grad, eps, rms)
    }

    fn cross_entropy_forward(
        logits: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 3>) {
        cross_entropy::forward_or_plain(own::fused(), logits, targets)
    }

    fn cross_entropy_backward(
        logits: Tensor<Self, 3>,
        lse: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        cross_entropy::backward_or_plain(own::fused(), logits, lse, targets, grad)
    }
}
