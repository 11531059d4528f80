//! Backend extension: operations a backend may run its own way.
//!
//! Every model is generic over `B: Kernels`. The trait's default methods are the plain Burn
//! compositions in [`super::ops`]; a backend overrides one when it has something better.
//! Today that is the training backend (`Autodiff<_>`), whose causal attention keeps no
//! `[s, s]` matrix for the backward pass: it saves the output and one log-sum-exp per
//! query and recomputes the probabilities block by block when the gradient arrives
//! (the flash-attention recipe, written with Burn's own operations so it runs on every
//! backend). The CUDA kernels of issue 6 (cuBLASLt linear layers, a CubeCL flash kernel)
//! go behind the same trait, in the CUDA backends' impls.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::{
    Bool, DType, IndexingUpdateOp, Int, Tensor, TensorMetadata, TensorPrimitive,
    backend::{AutodiffBackend, Backend},
    ops::{FloatTensor, IntTensor},
};

use super::ops::{self, AttnOpts};

/// Operations a backend may implement its own way; the defaults are plain Burn.
pub trait Kernels: Backend {
    /// Causal attention, see [`ops::causal_attention`].
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> Tensor<Self, 4> {
        ops::plain_attention(q, k, v, opts)
    }

    /// Mean next-token cross-entropy, see [`ops::cross_entropy`].
    fn cross_entropy(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 1> {
        ops::plain_cross_entropy(logits, targets)
    }

    /// `e^x` element-wise (the softmax and cross-entropy kernels above use it).
    fn exp<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        x.exp()
    }
}

/// A training backend: autodiff with kernels, over an inner backend with kernels (held-out
/// evaluation and samples run on the inner one).
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> TrainKernels for B
where
    B: AutodiffBackend + Kernels,
    B::InnerBackend: Kernels,
{
}

/// The CPU backend: a vectorised `exp` on float32 ([`super::fast_exp`]), in place when the
/// tensor's buffer is its own.
impl Kernels for crate::device::CpuBackend {
    fn exp<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        if x.dtype() != DType::F32 {
            return x.exp();
        }
        let t = x.into_primitive().tensor();
        let mut t = if t.is_contiguous() && t.is_unique() {
            t
        } else {
            // A view, or a buffer shared with another tensor: exponentiate a copy.
            burn::backend::flex::FlexTensor::from_data(t.into_data())
        };
        let range = t.layout().contiguous_offsets();
        match (range, t.try_storage_mut::<f32>()) {
            (Some((start, end)), Some(storage)) => {
                super::fast_exp::exp_in_place(&mut storage[start..end]);
                float(t)
            }
            _ => float::<Self, D>(t).exp(),
        }
    }
}
impl Kernels for crate::device::CudaBackend {}
impl Kernels for crate::device::CudaCubeBackend {}

/// Which attention the training backend runs (`SOFTTUNE_ATTENTION`): `saving` (default)
/// keeps one float per query for the backward pass, `plain` keeps Burn's whole graph
/// (the `[b, h, s, s]` scores and probabilities), for comparisons.
/// Read once per process.
pub fn memory_saving_attention() -> bool {
    static SAVING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAVING.get_or_init(|| std::env::var("SOFTTUNE_ATTENTION").map_or(true, |v| v != "plain"))
}

/// Elements of one block of scores (`[b, kv heads, rows, s]`, float32): 64 Mi = 256 MiB.
const BLOCK_ELEMENTS: usize = 1 << 26;

/// Query rows per block for `groups` (batch × kv heads) groups over `s` keys.
fn block_rows(groups: usize, s: usize) -> usize {
    (BLOCK_ELEMENTS / (groups * s).max(1)).max(1)
}

/// `[rows, s]` mask for stacked query rows `row0..row0 + rows` (row `r` is position
/// `r % s`), true where attention is forbidden: later keys, and keys at least `window`
/// positions back for local attention. Built on the device.
pub fn stacked_mask<B: Backend>(
    s: usize,
    row0: usize,
    rows: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let pos = Tensor::<B, 1, Int>::arange(row0 as i64..(row0 + rows) as i64, device)
        .remainder_scalar(s as i64)
        .reshape([rows, 1])
        .expand([rows, s]);
    let key = Tensor::<B, 1, Int>::arange(0..s as i64, device)
        .reshape([1, s])
        .expand([rows, s]);
    let later = key.clone().greater(pos.clone());
    match window {
        Some(w) => later.bool_or(pos.sub(key).greater_equal_elem(w as i64)),
        None => later,
    }
}

/// What the backward pass needs: the inputs, the output, and the log-sum-exp of every
/// stacked query row (`[b, kvh, rep·s, 1]`, float32).
#[derive(Debug, Clone)]
struct AttnState<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    opts: AttnOpts,
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Scaled scores of stacked query rows `row0..` (`q [b, kvh, n, hd]`) against all keys
/// (`kt [b, kvh, hd, s]`), float32, with forbidden keys at `-inf`.
pub fn masked_scores<B: Backend>(
    q: Tensor<B, 4>,
    kt: Tensor<B, 4>,
    row0: usize,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    let [b, kvh, n, _] = q.dims();
    let s = kt.dims()[3];
    let mask = stacked_mask::<B>(s, row0, n, opts.window, &q.device())
        .unsqueeze::<4>()
        .expand([b, kvh, n, s]);
    (q.matmul(kt) * opts.scale).mask_fill(mask, f32::NEG_INFINITY)
}

/// Forward pass by query blocks: `(out [b, h, s, hd], lse [b, kvh, rep·s, 1])`.
fn saving_forward<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
    step: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let rows = (h / kvh) * s;
    let dtype = q.dtype();
    let qg = q.reshape([b, kvh, rows, hd]).cast(DType::F32);
    let kt = k.cast(DType::F32).swap_dims(2, 3);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for r0 in (0..rows).step_by(step) {
        let n = step.min(rows - r0);
        let scores = masked_scores(qg.clone().narrow(2, r0, n), kt.clone(), r0, opts);
        // Every row sees its own position, so the row maximum is finite.
        let max = scores.clone().max_dim(3);
        let e = B::exp(scores - max.clone());
        let sum = e.clone().sum_dim(3);
        let p = e / sum.clone();
        outs.push(p.cast(dtype).matmul(v.clone()));
        lses.push(max + sum.log());
    }
    let out = Tensor::cat(outs, 2).reshape([b, h, s, hd]);
    (out, Tensor::cat(lses, 2))
}

/// Gradients `(dq, dk, dv)` by query blocks, recomputing the probabilities from `lse`.
fn saving_backward<B: Kernels>(
    st: AttnState<B>,
    grad: Tensor<B, 4>,
    step: usize,
) -> [Tensor<B, 4>; 3] {
    let q: Tensor<B, 4> = float(st.q);
    let (k, v): (Tensor<B, 4>, Tensor<B, 4>) = (float(st.k), float(st.v));
    let out: Tensor<B, 4> = float(st.out);
    let lse: Tensor<B, 4> = float(st.lse);
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let rows = (h / kvh) * s;
    let (q_dtype, k_dtype, v_dtype) = (q.dtype(), k.dtype(), v.dtype());
    let device = q.device();
    let f32 = |t: Tensor<B, 4>| t.cast(DType::F32);
    let qg = f32(q.reshape([b, kvh, rows, hd]));
    let (k, v) = (f32(k), f32(v));
    let dout = f32(grad.reshape([b, kvh, rows, hd]));
    // D_i = Σ_d dO_id · O_id = Σ_j P_ij dP_ij (softmax backward's row term).
    let delta = (dout.clone() * f32(out.reshape([b, kvh, rows, hd]))).sum_dim(3);
    let mut dq = Vec::new();
    let mut dk = Tensor::<B, 4>::zeros([b, kvh, s, hd], (&device, DType::F32));
    let mut dv = dk.clone();
    for r0 in (0..rows).step_by(step) {
        let n = step.min(rows - r0);
        let qb = qg.clone().narrow(2, r0, n);
        let dob = dout.clone().narrow(2, r0, n);
        let scores = masked_scores(qb.clone(), k.clone().swap_dims(2, 3), r0, st.opts);
        let p = B::exp(scores - lse.clone().narrow(2, r0, n));
        dv = dv + p.clone().swap_dims(2, 3).matmul(dob.clone());
        let dp = dob.matmul(v.clone().swap_dims(2, 3));
        let ds = p * (dp - delta.clone().narrow(2, r0, n)) * st.opts.scale;
        dq.push(ds.clone().matmul(k.clone()));
        dk = dk + ds.swap_dims(2, 3).matmul(qb);
    }
    let dq = Tensor::cat(dq, 2).reshape([b, h, s, hd]).cast(q_dtype);
    [dq, dk.cast(k_dtype), dv.cast(v_dtype)]
}

#[derive(Debug)]
struct SavingAttention;

impl<B: Kernels> Backward<B, 3> for SavingAttention {
    type State = AttnState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = float::<B, 4>(grads.consume::<B>(&ops.node));
        let [b, _, s, _] = grad.dims();
        let groups = b * ops.state.k.shape().dims::<4>()[1];
        let [dq, dk, dv] = saving_backward(ops.state, grad, block_rows(groups, s));
        for (parent, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, prim(g));
            }
        }
    }
}

/// Cross-entropy state: float32 logits `[b, t, V]`, their log-sum-exp `[b, t, 1]`, targets.
#[derive(Debug, Clone)]
struct XentState<B: Backend> {
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    targets: IntTensor<B>,
}

/// `(mean loss [1], lse [b, t, 1])` of float32 logits.
fn xent_forward<B: Kernels>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 3>) {
    let max = logits.clone().max_dim(2);
    let lse = max.clone() + B::exp(logits.clone() - max).sum_dim(2).log();
    let picked = logits.gather(2, targets.unsqueeze_dim::<3>(2));
    ((lse.clone() - picked).mean(), lse)
}

/// `d loss / d logits = (softmax(logits) − onehot(targets)) · grad / (b·t)`.
fn xent_backward<B: Kernels>(st: XentState<B>, grad: Tensor<B, 1>) -> Tensor<B, 3> {
    let logits: Tensor<B, 3> = float(st.logits);
    let lse: Tensor<B, 3> = float(st.lse);
    let targets = Tensor::<B, 2, Int>::from_primitive(st.targets);
    let [b, t, _] = logits.dims();
    let device = logits.device();
    let minus_one = Tensor::<B, 3>::ones([b, t, 1], (&device, DType::F32)).neg();
    let d = B::exp(logits - lse).scatter(
        2,
        targets.unsqueeze_dim::<3>(2),
        minus_one,
        IndexingUpdateOp::Add,
    );
    d * (grad.cast(DType::F32) / (b * t) as f64).reshape([1, 1, 1])
}

#[derive(Debug)]
struct SavingCrossEntropy;

impl<B: Kernels> Backward<B, 1> for SavingCrossEntropy {
    type State = XentState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = float::<B, 1>(grads.consume::<B>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<B>(node.id, prim(xent_backward(ops.state, grad)));
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> Tensor<Self, 4> {
        if !memory_saving_attention() {
            return ops::plain_attention(q, k, v, opts);
        }
        let (q, k, v) = (prim(q), prim(k), prim(v));
        let out = match SavingAttention
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (qi, ki, vi) = (q.primitive, k.primitive, v.primitive);
                let [b, kvh, s, _] = ki.shape().dims::<4>();
                let (out, lse) = saving_forward::<B>(
                    float(qi.clone()),
                    float(ki.clone()),
                    float(vi.clone()),
                    opts,
                    block_rows(b * kvh, s),
                );
                let out = prim(out);
                let state = AttnState {
                    q: qi,
                    k: ki,
                    v: vi,
                    out: out.clone(),
                    lse: prim(lse),
                    opts,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                let out = B::causal_attention(
                    float(q.primitive),
                    float(k.primitive),
                    float(v.primitive),
                    opts,
                );
                prep.finish(prim(out))
            }
        };
        float(out)
    }

    /// Saves the float32 logits and one log-sum-exp per position; the plain path keeps the
    /// whole log-softmax as well, and differentiates through a gather.
    fn cross_entropy(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 1> {
        let logits = prim(logits.cast(DType::F32));
        let targets = targets.into_primitive();
        let loss = match SavingCrossEntropy
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, lse) = xent_forward::<B>(
                    float(logits.primitive.clone()),
                    Tensor::from_primitive(targets.clone()),
                );
                let state = XentState {
                    logits: logits.primitive,
                    lse: prim(lse),
                    targets,
                };
                prep.finish(state, prim(loss))
            }
            OpsKind::UnTracked(prep) => prep.finish(prim(B::cross_entropy(
                float(logits.primitive),
                Tensor::from_primitive(targets),
            ))),
        };
        float(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend as F;
    use burn::tensor::{Distribution, TensorData};

    type A = Autodiff<F>;

    fn random<B: Backend>(shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn max_diff(a: Tensor<F, 4>, b: Tensor<F, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Plain attention under autodiff: output and (dq, dk, dv) of `sum(out * w)`.
    fn plain(
        q: &Tensor<F, 4>,
        k: &Tensor<F, 4>,
        v: &Tensor<F, 4>,
        w: &Tensor<F, 4>,
        opts: AttnOpts,
        saving: bool,
    ) -> (Tensor<F, 4>, [Tensor<F, 4>; 3]) {
        let [q, k, v] = [q, k, v].map(|t| Tensor::<A, 4>::from_inner(t.clone()).require_grad());
        let out = if saving {
            <A as Kernels>::causal_attention(q.clone(), k.clone(), v.clone(), opts)
        } else {
            ops::plain_attention(q.clone(), k.clone(), v.clone(), opts)
        };
        let grads = (out.clone() * Tensor::from_inner(w.clone()))
            .sum()
            .backward();
        let g = |t: &Tensor<A, 4>| t.grad(&grads).expect("a gradient");
        (out.inner(), [g(&q), g(&k), g(&v)])
    }

    #[test]
    fn saving_attention_equals_plain_in_blocks_and_through_autodiff() {
        // Grouped-query (4 query heads on 2 key heads), causal and local windows, blocks of
        // 1, 5 and all 14 stacked rows (7 positions × 2 heads per key head).
        for window in [None, Some(3)] {
            let opts = AttnOpts {
                scale: 0.35,
                window,
            };
            let (q, k, v) = (
                random::<F>([2, 4, 7, 8]),
                random([2, 2, 7, 8]),
                random([2, 2, 7, 8]),
            );
            let w = random::<F>([2, 4, 7, 8]);
            let (out, [dq, dk, dv]) = plain(&q, &k, &v, &w, opts, false);
            for step in [1, 5, 14] {
                let (o, lse) = saving_forward(q.clone(), k.clone(), v.clone(), opts, step);
                assert!(
                    max_diff(o.clone(), out.clone()) < 1e-5,
                    "output, block {step}"
                );
                let st = AttnState::<F> {
                    q: prim(q.clone()),
                    k: prim(k.clone()),
                    v: prim(v.clone()),
                    out: prim(o),
                    lse: prim(lse),
                    opts,
                };
                let [gq, gk, gv] = saving_backward(st, w.clone(), step);
                assert!(max_diff(gq, dq.clone()) < 1e-4, "dq, block {step}");
                assert!(max_diff(gk, dk.clone()) < 1e-4, "dk, block {step}");
                assert!(max_diff(gv, dv.clone()) < 1e-4, "dv, block {step}");
            }
            // The autodiff op: same output and gradients, registered on the right inputs.
            let (o, [gq, gk, gv]) = plain(&q, &k, &v, &w, opts, true);
            assert!(max_diff(o, out) < 1e-5);
            assert!(max_diff(gq, dq) < 1e-4);
            assert!(max_diff(gk, dk) < 1e-4);
            assert!(max_diff(gv, dv) < 1e-4);
        }
    }

    #[test]
    fn saving_cross_entropy_equals_plain() {
        let dev = Default::default();
        let logits = Tensor::<F, 3>::random([2, 5, 11], Distribution::Normal(0.0, 3.0), &dev);
        let targets = Tensor::<F, 2, Int>::from_data(
            TensorData::new(vec![0i64, 3, 10, 7, 7, 1, 2, 9, 4, 5], [2, 5]),
            &dev,
        );
        let run = |saving: bool| {
            let x = Tensor::<A, 3>::from_inner(logits.clone()).require_grad();
            let t = Tensor::<A, 2, Int>::from_inner(targets.clone());
            let loss = if saving {
                <A as Kernels>::cross_entropy(x.clone(), t)
            } else {
                ops::plain_cross_entropy(x.clone(), t)
            };
            // A non-unit upstream gradient, as under loss scaling.
            let grads = (loss.clone() * 3.0).backward();
            (
                loss.inner().into_scalar(),
                x.grad(&grads).expect("a gradient"),
            )
        };
        let ((l1, g1), (l2, g2)) = (run(true), run(false));
        assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
        let diff: f32 = (g1 - g2).abs().max().into_scalar();
        assert!(diff < 1e-6, "gradient differs by {diff}");
    }

    #[test]
    fn cpu_exp_leaves_shared_and_viewed_tensors_alone() {
        let a = random::<F>([2, 3, 4, 5]);
        let before: Vec<f32> = a.to_data().to_vec().unwrap();
        let want = a.clone().exp();
        let close = |x: Tensor<F, 4>, y: Tensor<F, 4>| max_diff(x, y) < 1e-6;
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

    #[test]
    fn device_masks_block_later_and_far_keys() {
        let dev = Default::default();
        let m: Vec<bool> = stacked_mask::<F>(3, 2, 4, Some(2), &dev)
            .into_data()
            .to_vec()
            .unwrap();
        // Rows 2..6 are positions 2, 0, 1, 2 of a 3-long sequence with a window of 2.
        #[rustfmt::skip]
        let want = [
            true, false, false,
            false, true, true,
            false, false, true,
            true, false, false,
        ];
        assert_eq!(m, want);
    }
}
