//! The CPU backend's kernels (Burn's `flex` backend, float32): what [`Kernels`] runs its own
//! way on the CPU, and the code behind it.
//!
//! * [`matmul`]: two-dimensional products straight on gemm (the linear layers, the LM head).
//! * [`attention`]: causal attention forward and backward on gemm tiles, flash-style.
//! * [`cross_entropy`]: the training loss in one parallel pass per direction.
//! * [`norm`]: LayerNorm and RMSNorm, forward and input gradient, one pass per row.
//! * [`vector_math`]: vectorised `exp`, SiLU and tanh-GELU, run here on all cores.
//!
//! A training step of a 135M llama-family model at 4 × (20 + 256) tokens on two cores is
//! then almost all matmul time (`softtune bench --device cpu`).

pub mod attention;
pub mod cross_entropy;
pub mod matmul;
pub mod norm;
pub mod vector_math;

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::device::CpuBackend;

use super::config::Activation;
use super::kernels::{
    Kernels, blocked_attention_backward, blocked_attention_forward, norm_backward,
    plain_activation_backward, plain_gated_backward, xent_backward, xent_forward,
};
use super::ops::{self, AttnOpts};

/// A CPU tensor around `t`.
fn float<const D: usize>(t: FlexTensor) -> Tensor<CpuBackend, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A contiguous float32 tensor of `shape` owning `values` (no copy).
fn from_values<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<CpuBackend, D> {
    float(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// A float32 tensor's values in order: its own buffer when contiguous, else a copy.
struct Values(FlexTensor);

impl Values {
    /// `None` unless `t` is float32.
    fn of<const D: usize>(t: &Tensor<CpuBackend, D>) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let p = t.clone().into_primitive().tensor();
        Some(Self(if p.layout().contiguous_offsets().is_some() {
            p
        } else {
            p.to_contiguous()
        }))
    }

    fn slice(&self) -> &[f32] {
        let (start, end) = self
            .0
            .layout()
            .contiguous_offsets()
            .expect("contiguous: made so in Values::of");
        &self.0.storage::<f32>()[start..end]
    }
}

/// Runs `f` on `x`'s float32 elements in place, on a copy when its buffer is a view or
/// shared with another tensor; gives `x` back when it is not float32.
// The `Err` hands the moved tensor back to the caller (no allocation, unlike a box).
#[allow(clippy::result_large_err)]
fn cpu_in_place<const D: usize>(
    x: Tensor<CpuBackend, D>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor<CpuBackend, D>, Tensor<CpuBackend, D>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let t = x.into_primitive().tensor();
    let mut t = if t.is_contiguous() && t.is_unique() {
        t
    } else {
        FlexTensor::from_data(t.into_data())
    };
    let range = t.layout().contiguous_offsets();
    match (range, t.try_storage_mut::<f32>()) {
        (Some((start, end)), Some(storage)) => {
            f(&mut storage[start..end]);
            Ok(float(t))
        }
        _ => Err(float(t)),
    }
}

/// The vectorised activation `act` in place, where there is one.
fn in_place_kernel(act: Activation) -> Option<fn(&mut [f32])> {
    match act {
        Activation::Silu => Some(vector_math::silu_in_place),
        Activation::GeluTanh => Some(vector_math::gelu_tanh_in_place),
        _ => None,
    }
}

/// `g ← g · act'(x)` over matching `x` and `g`.
type GradKernel = fn(&[f32], &mut [f32]);

/// The vectorised `g ← g · act'(x)`, where there is one.
fn grad_kernel(act: Activation) -> Option<GradKernel> {
    match act {
        Activation::Silu => Some(vector_math::silu_grad_in_place),
        Activation::GeluTanh => Some(vector_math::gelu_tanh_grad_in_place),
        _ => None,
    }
}

/// [`Kernels::gated`] as Burn operations on the CPU (its activation kernels on views).
fn plain_gated<const D: usize>(x: Tensor<CpuBackend, D>, act: Activation) -> Tensor<CpuBackend, D> {
    let n = x.dims()[D - 1] / 2;
    let (g, u) = (x.clone().narrow(D - 1, 0, n), x.narrow(D - 1, n, n));
    <CpuBackend as Kernels>::activation(g, act) * u
}

/// Elements per task of the CPU backend's element-wise kernels (256 KiB of float32).
const CPU_CHUNK: usize = 1 << 16;

/// `f` over `v` in chunks on rayon's threads.
fn cpu_parallel(v: &mut [f32], f: fn(&mut [f32])) {
    v.par_chunks_mut(CPU_CHUNK).for_each(f);
}

/// `f(x, g)` over matching chunks of `x` and `g` on rayon's threads.
fn cpu_parallel2(x: &[f32], g: &mut [f32], f: fn(&[f32], &mut [f32])) {
    x.par_chunks(CPU_CHUNK)
        .zip(g.par_chunks_mut(CPU_CHUNK))
        .for_each(|(x, g)| f(x, g));
}

/// The CPU backend: vectorised `exp`, SiLU and tanh-GELU on float32 ([`vector_math`]),
/// in place when the tensor's buffer is its own, on all cores; attention on gemm tiles
/// ([`attention`]).
impl Kernels for CpuBackend {
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        if D == 2 {
            let two =
                |t: &Tensor<Self, D>| Tensor::<Self, 2>::from_primitive(t.clone().into_primitive());
            if let Some(out) = matmul::matmul(&two(&lhs), &two(&rhs)) {
                return Tensor::from_primitive(out.into_primitive());
            }
        }
        lhs.matmul(rhs)
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> Tensor<Self, 4> {
        match attention::forward(&q, &k, &v, opts) {
            Some((out, _)) => out,
            None => ops::plain_attention(q, k, v, opts),
        }
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        attention::forward(&q, &k, &v, opts)
            .unwrap_or_else(|| blocked_attention_forward(q, k, v, opts))
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
        attention::backward((&q, &k, &v), &out, &lse, &grad, opts)
            .unwrap_or_else(|| blocked_attention_backward(q, k, v, out, lse, grad, opts))
    }

    /// gemm's kernels read a column-major right operand slowly when its inner dimension is
    /// long (`x · Wᵀ` of a down projection: 1536 → 576 runs at ~170 GFLOP/s, a row-major
    /// copy at ~215 on two AVX-512 cores), so weights with `in > out` are copied row-major.
    /// Their input gradient then reads `Wᵀ` column-major over the short dimension, which
    /// is as fast.
    fn linear_weight(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let [d_out, d_in] = w.dims();
        let view = w.transpose();
        if d_in <= d_out {
            return view;
        }
        float(view.into_primitive().tensor().to_contiguous())
    }

    fn cross_entropy(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 1> {
        match cross_entropy::forward(&logits, &targets) {
            Some((loss, _)) => loss,
            None => ops::plain_cross_entropy(logits, targets),
        }
    }

    fn cross_entropy_forward(
        logits: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 3>) {
        cross_entropy::forward(&logits, &targets).unwrap_or_else(|| xent_forward(logits, targets))
    }

    fn cross_entropy_backward(
        logits: Tensor<Self, 3>,
        lse: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        let g = grad.clone().into_scalar();
        cross_entropy::backward(logits, &lse, &targets, g)
            .unwrap_or_else(|logits| xent_backward(logits, lse, targets, grad))
    }

    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        norm::forward(&x, &w, Some(&b), eps).unwrap_or_else(|| ops::plain_layer_norm(x, w, b, eps))
    }

    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        norm::forward(&x, &w, None, eps).unwrap_or_else(|| ops::plain_rms_norm(x, w, eps))
    }

    fn norm_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        grad: Tensor<Self, 3>,
        eps: f64,
        rms: bool,
    ) -> Tensor<Self, 3> {
        norm::backward(&x, &w, &grad, eps, rms)
            .unwrap_or_else(|| norm_backward(x, w, grad, eps, rms))
    }

    fn exp<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        cpu_in_place(x, |v| cpu_parallel(v, vector_math::exp_in_place)).unwrap_or_else(|x| x.exp())
    }

    fn activation<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        let Some(kernel) = in_place_kernel(act) else {
            return ops::plain_activation(x, act);
        };
        cpu_in_place(x, |v| cpu_parallel(v, kernel))
            .unwrap_or_else(|x| ops::plain_activation(x, act))
    }

    /// SiLU and tanh-GELU gates row by row on all cores (the halves of `x` are views that
    /// Burn's element-wise operations would walk element by element).
    fn gated<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        let Some(kernel) = in_place_kernel(act) else {
            return plain_gated(x, act);
        };
        let Some(xs) = Values::of(&x) else {
            return plain_gated(x, act);
        };
        let mut shape = x.dims();
        let n = shape[D - 1] / 2;
        shape[D - 1] = n;
        let mut out = vec![0f32; xs.slice().len() / 2];
        if let Some(rows) = CPU_CHUNK.checked_div(n) {
            let rows = rows.max(1);
            out.par_chunks_mut(rows * n)
                .zip(xs.slice().par_chunks(rows * 2 * n))
                .for_each(|(out, x)| {
                    for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(2 * n)) {
                        let (g, u) = x.split_at(n);
                        o.copy_from_slice(g);
                        kernel(o);
                        o.iter_mut().zip(u).for_each(|(o, u)| *o *= u);
                    }
                });
        }
        from_values(out, shape)
    }

    /// Row by row on all cores: `du = grad · act(g)`, `dg = grad · u · act'(g)`.
    fn gated_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        act: Activation,
    ) -> Tensor<Self, D> {
        let (Some(kernel), Some(grad_kernel)) = (in_place_kernel(act), grad_kernel(act)) else {
            return plain_gated_backward(x, grad, act);
        };
        let (Some(xs), Some(gs)) = (Values::of(&x), Values::of(&grad)) else {
            return plain_gated_backward(x, grad, act);
        };
        let shape = x.dims();
        let n = shape[D - 1] / 2;
        if gs.slice().len() * 2 != xs.slice().len() {
            return plain_gated_backward(x, grad, act);
        }
        let mut dx = vec![0f32; xs.slice().len()];
        if let Some(rows) = CPU_CHUNK.checked_div(n) {
            let rows = rows.max(1);
            dx.par_chunks_mut(rows * 2 * n)
                .zip(xs.slice().par_chunks(rows * 2 * n))
                .zip(gs.slice().par_chunks(rows * n))
                .for_each(|((dx, x), grad)| {
                    let rows = dx.chunks_exact_mut(2 * n).zip(x.chunks_exact(2 * n));
                    for ((dx, x), grad) in rows.zip(grad.chunks_exact(n)) {
                        let (g, u) = x.split_at(n);
                        let (dg, du) = dx.split_at_mut(n);
                        du.copy_from_slice(g);
                        kernel(du);
                        du.iter_mut().zip(grad).for_each(|(d, y)| *d *= y);
                        dg.iter_mut()
                            .zip(grad.iter().zip(u))
                            .for_each(|(d, (y, u))| *d = y * u);
                        grad_kernel(g, dg);
                    }
                });
        }
        from_values(dx, shape)
    }

    fn activation_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        act: Activation,
    ) -> Tensor<Self, D> {
        let Some(kernel) = grad_kernel(act) else {
            return plain_activation_backward(x, grad, act);
        };
        if x.dtype() != DType::F32 || x.dims() != grad.dims() {
            return plain_activation_backward(x, grad, act);
        }
        let xt = x.into_primitive().tensor();
        let xt = if xt.is_contiguous() {
            xt
        } else {
            xt.to_contiguous()
        };
        let Some(xs) = xt.as_slice::<f32>() else {
            return plain_activation_backward(float(xt), grad, act);
        };
        match cpu_in_place(grad, |g| cpu_parallel2(xs, g, kernel)) {
            Ok(g) => g,
            Err(grad) => plain_activation_backward(float(xt), grad, act),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend as F;
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    type A = Autodiff<F>;

    fn random(shape: [usize; 4]) -> Tensor<F, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn max_diff(a: Tensor<F, 4>, b: Tensor<F, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Down projections (`in > out`) get a row-major copy, the others a view; the values
    /// are `nn.Linear`'s transpose either way, under autodiff too (untracked).
    #[test]
    fn cpu_linear_weights_are_copied_row_major_only_when_wider_in_than_out() {
        for (d_out, d_in, copied) in [(3, 5, true), (5, 3, false), (4, 4, false)] {
            let w =
                Tensor::<F, 2>::random([d_out, d_in], Distribution::Default, &Default::default());
            let got = <F as Kernels>::linear_weight(w.clone());
            let t = got.clone().into_primitive().tensor();
            assert_eq!(t.is_contiguous(), copied, "{d_out}×{d_in}");
            got.into_data()
                .assert_eq(&w.clone().transpose().into_data(), true);
            let a = <A as Kernels>::linear_weight(Tensor::from_inner(w.clone()));
            assert!(!a.is_require_grad());
            a.inner()
                .into_data()
                .assert_eq(&w.transpose().into_data(), true);
        }
    }

    #[test]
    fn cpu_exp_leaves_shared_and_viewed_tensors_alone() {
        let a = random([2, 3, 4, 5]);
        let before: Vec<f32> = a.to_data().to_vec().unwrap();
        let want = a.clone().exp();
        // Relative: `exp` is within 2 ulp, and e^x of a normal sample reaches ~50 (an ulp
        // of 4e-6), which an absolute 1e-6 failed now and then.
        let close = |x: Tensor<F, 4>, y: Tensor<F, 4>| {
            let scale: f32 = y.clone().abs().max().into_scalar();
            max_diff(x, y) <= 1e-6 * scale
        };
        // Shared buffer, a transposed view, and a view at an offset.
        assert!(close(<F as Kernels>::exp(a.clone()), want.clone()));
        assert!(close(
            <F as Kernels>::exp(a.clone().swap_dims(1, 3)),
            want.clone().swap_dims(1, 3)
        ));
        assert!(close(
            <F as Kernels>::exp(a.clone().narrow(1, 1, 2)),
            want.clone().narrow(1, 1, 2)
        ));
        assert_eq!(a.to_data().to_vec::<f32>().unwrap(), before);
        // Its own buffer: computed in place.
        assert!(close(<F as Kernels>::exp(a.clone() * 1.0), want));
    }
}
