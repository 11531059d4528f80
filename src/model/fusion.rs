//! [`Kernels`] for Burn's fusion wrapper around any backend that has them (on CUDA the
//! default backend, `Fusion<CubeBackend<CudaRuntime>>`): where the inner backend runs a
//! matmul or attention its own way ([`Kernels::own_matmul`], [`Kernels::own_attention`]),
//! or the blocked attention's softmax, the norms and the cross-entropy
//! ([`Kernels::own_fused`]),
//! it is registered in the fusion stream as a custom operation that runs the inner
//! backend's kernel on the inner tensors. Burn's fusion keeps the stream's order around
//! it (element-wise chains before and after still fuse). Everything else is plain Burn on
//! the wrapper, which fusion can fuse.

use std::fmt;
use std::marker::PhantomData;

use burn::tensor::{
    DType, Int, Shape, Tensor, TensorMetadata, TensorPrimitive, backend::Backend, ops::FloatTensor,
};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::cublas::broadcast_batch;
use super::kernels;
use super::kernels::{
    Kernels, ScoreBlock, as_dtype, blocked_attention_backward, blocked_attention_forward,
    owns_attention, plain_attention_probs, plain_attention_score_grads,
};
use super::ops::{self, AttnOpts};

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// A custom operation of the inner backend `B`; `what` says which.
struct Custom<B, const D: usize> {
    desc: CustomOpIr,
    what: What,
    _inner: PhantomData<fn() -> B>,
}

#[derive(Clone, Copy, Debug)]
enum What {
    Matmul,
    AttentionForward(AttnOpts),
    AttentionBackward(AttnOpts),
    /// The blocked attention's softmax, its outputs in the dtype.
    Probs(ScoreBlock, DType),
    ScoreGrads(ScoreBlock, DType),
    /// LayerNorm (with a bias) or RMSNorm (without), and their input gradient.
    Norm {
        eps: f64,
        bias: bool,
    },
    NormBackward {
        eps: f64,
        rms: bool,
    },
    /// The training cross-entropy and its gradient (the targets are the integer input).
    XentForward,
    XentBackward,
}

impl<B, const D: usize> fmt::Debug for Custom<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Custom")
            .field("desc", &self.desc)
            .field("what", &self.what)
            .finish()
    }
}

impl<B: FusionBackend + Kernels, const D: usize> Operation<B::FusionRuntime> for Custom<B, D> {
    fn execute(&self, handles: &mut Handles<B>) {
        // Float inputs in order, and integer ones (the cross-entropy's targets) apart.
        let (mut floats, mut ints) = (Vec::new(), Vec::new());
        for t in &self.desc.inputs {
            if t.dtype.is_int() || t.dtype.is_uint() {
                ints.push(handles.get_int_tensor::<B>(t));
            } else {
                floats.push(handles.get_float_tensor::<B>(t));
            }
        }
        let mut inputs = floats.into_iter();
        let mut ints = ints.into_iter();
        // `register` gave each operation its number of inputs.
        let mut next = || inputs.next().expect("an input of the custom operation");
        let mut next_int =
            || Tensor::<B, 2, Int>::from_primitive(ints.next().expect("an integer input"));
        let outputs: Vec<FloatTensor<B>> = match self.what {
            What::Matmul => {
                let (l, r) = (float::<B, D>(next()), float::<B, D>(next()));
                let product = if self.desc.outputs[0].dtype == l.dtype() {
                    B::matmul(l, r)
                } else {
                    B::matmul_f32(l, r)
                };
                vec![prim(product)]
            }
            What::AttentionForward(opts) => {
                let [q, k, v] = [(); 3].map(|_| float(next()));
                let (out, lse) = B::attention_forward(q, k, v, opts);
                vec![prim(out), prim(lse)]
            }
            What::AttentionBackward(opts) => {
                let [q, k, v, out, grad] = [(); 5].map(|_| float(next()));
                let lse = float(next());
                B::attention_backward(q, k, v, out, lse, grad, opts)
                    .map(prim)
                    .to_vec()
            }
            What::Probs(block, dtype) => {
                let (p, lse) = B::attention_probs(float(next()), block, dtype);
                vec![prim(p), prim(lse)]
            }
            What::ScoreGrads(block, dtype) => {
                let [scores, dp, lse, delta] = [(); 4].map(|_| float(next()));
                let (p, ds) = B::attention_score_grads(scores, dp, lse, delta, block, dtype);
                vec![prim(p), prim(ds)]
            }
            What::Norm { eps, bias } => {
                let (x, w) = (float(next()), float(next()));
                vec![prim(if bias {
                    <B as Kernels>::layer_norm(x, w, float(next()), eps)
                } else {
                    B::rms_norm(x, w, eps)
                })]
            }
            What::NormBackward { eps, rms } => {
                let (x, w, grad) = (float(next()), float(next()), float(next()));
                vec![prim(B::norm_backward(x, w, grad, eps, rms))]
            }
            What::XentForward => {
                let (loss, lse) = B::cross_entropy_forward(float(next()), next_int());
                vec![prim(loss), prim(lse)]
            }
            What::XentBackward => {
                let (logits, lse, grad) = (float(next()), float(next()), float(next()));
                vec![prim(B::cross_entropy_backward(
                    logits,
                    lse,
                    next_int(),
                    grad,
                ))]
            }
        };
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Registers `what` with `inputs` and outputs of `shapes` and `dtypes`.
fn register<B: FusionBackend + Kernels, const D: usize>(
    name: &'static str,
    what: What,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    outputs: Vec<(Vec<usize>, DType)>,
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| {
            TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype)
        })
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = Custom::<B, D> {
        desc: desc.clone(),
        what,
        _inner: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

/// `lhs · rhs` with its result in `dtype`: the inner backend's matmul as a custom
/// operation when it has its own and the operands fit, plain Burn otherwise.
fn fused_matmul<B: FusionBackend + Kernels, const D: usize>(
    lhs: Tensor<Fusion<B>, D>,
    rhs: Tensor<Fusion<B>, D>,
    dtype: DType,
) -> Tensor<Fusion<B>, D> {
    let plain = |l: Tensor<Fusion<B>, D>, r: Tensor<Fusion<B>, D>| {
        as_dtype(l, dtype).matmul(as_dtype(r, dtype))
    };
    let (ld, rd) = (lhs.dims(), rhs.dims());
    if !B::own_matmul() || ld[D - 1] != rd[D - 2] {
        return plain(lhs, rhs);
    }
    // Operands of two dtypes: both in `dtype`, as the plain path computes them, so that
    // the product still runs on the backend's own matmul (Burn's fused matmul autotunes
    // many large kernels on first use).
    let (lhs, rhs) = if lhs.dtype() == rhs.dtype() {
        (lhs, rhs)
    } else {
        (as_dtype(lhs, dtype), as_dtype(rhs, dtype))
    };
    let Some(mut shape) = broadcast_batch(&ld, &rd) else {
        return plain(lhs, rhs);
    };
    shape.extend([ld[D - 2], rd[D - 1]]);
    let [out] = register::<B, D>(
        "softtune_matmul",
        What::Matmul,
        vec![prim(lhs), prim(rhs)],
        vec![(shape, dtype)],
    )
    .try_into()
    .expect("one output");
    float(out)
}

impl<B: FusionBackend + Kernels> Kernels for Fusion<B> {
    fn matmul_off_queue() -> bool {
        B::matmul_off_queue()
    }

    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = lhs.dtype();
        fused_matmul(lhs, rhs, dtype)
    }

    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        fused_matmul(lhs, rhs, DType::F32)
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        if !owns_attention::<B, Self>(&q, &k, &v, &[], opts) {
            return blocked_attention_forward(q, k, v, opts);
        }
        let [b, h, s, hd] = q.dims();
        let kvh = k.dims()[1];
        let outputs = vec![
            (vec![b, h, s, hd], q.dtype()),
            (vec![b, kvh, h / kvh, s, 1], DType::F32),
        ];
        let [out, lse] = register::<B, 4>(
            "softtune_attention_forward",
            What::AttentionForward(opts),
            vec![prim(q), prim(k), prim(v)],
            outputs,
        )
        .try_into()
        .expect("two outputs");
        (float(out), float(lse))
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
        if !owns_attention::<B, Self>(&q, &k, &v, &[&out, &grad], opts) {
            return blocked_attention_backward(q, k, v, out, lse, grad, opts);
        }
        let outputs = [
            (q.dims(), q.dtype()),
            (k.dims(), k.dtype()),
            (v.dims(), v.dtype()),
        ]
        .map(|(d, t)| (d.to_vec(), t))
        .to_vec();
        let inputs = vec![prim(q), prim(k), prim(v), prim(out), prim(grad), prim(lse)];
        let [dq, dk, dv] = register::<B, 4>(
            "softtune_attention_backward",
            What::AttentionBackward(opts),
            inputs,
            outputs,
        )
        .try_into()
        .expect("three outputs");
        [float(dq), float(dk), float(dv)]
    }

    fn attention_probs(
        scores: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        if !B::own_fused() {
            return plain_attention_probs(scores, block, dtype);
        }
        let [b, g, rows, keys] = scores.dims();
        let outputs = vec![
            (vec![b, g, rows, keys], dtype),
            (vec![b, g, rows, 1], DType::F32),
        ];
        let [p, lse] = register::<B, 4>(
            "softtune_attention_probs",
            What::Probs(block, dtype),
            vec![prim(scores)],
            outputs,
        )
        .try_into()
        .expect("two outputs");
        (float(p), float(lse))
    }

    fn attention_score_grads(
        scores: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        delta: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        if !B::own_fused() {
            return plain_attention_score_grads(scores, dp, lse, delta, block, dtype);
        }
        let shape = scores.dims().to_vec();
        let [p, ds] = register::<B, 4>(
            "softtune_attention_score_grads",
            What::ScoreGrads(block, dtype),
            vec![prim(scores), prim(dp), prim(lse), prim(delta)],
            vec![(shape.clone(), dtype), (shape, dtype)],
        )
        .try_into()
        .expect("two outputs");
        (float(p), float(ds))
    }

    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        if !B::own_fused() {
            return ops::plain_layer_norm(x, w, b, eps);
        }
        norm_op::<B>(x, w, Some(b), eps)
    }

    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        if !B::own_fused() {
            return ops::plain_rms_norm(x, w, eps);
        }
        norm_op::<B>(x, w, None, eps)
    }

    fn norm_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        grad: Tensor<Self, 3>,
        eps: f64,
        rms: bool,
    ) -> Tensor<Self, 3> {
        if !B::own_fused() {
            return kernels::norm_backward(x, w, grad, eps, rms);
        }
        let output = (x.dims().to_vec(), x.dtype());
        let what = What::NormBackward { eps, rms };
        let inputs = vec![prim(x), prim(w), prim(grad)];
        let [dx] = register::<B, 3>("softtune_norm_backward", what, inputs, vec![output])
            .try_into()
            .expect("one output");
        float(dx)
    }

    fn cross_entropy_forward(
        logits: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 3>) {
        if !B::own_fused() {
            return kernels::xent_forward(logits, targets);
        }
        let [loss, lse] = xent_op::<B>(true, vec![prim(logits)], targets)
            .try_into()
            .expect("two outputs");
        (float(loss), float(lse))
    }

    fn cross_entropy_backward(
        logits: Tensor<Self, 3>,
        lse: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        if !B::own_fused() {
            return kernels::xent_backward(logits, lse, targets, grad);
        }
        let grad = as_dtype(grad, DType::F32);
        let [dlogits] = xent_op::<B>(false, vec![prim(logits), prim(lse), prim(grad)], targets)
            .try_into()
            .expect("one output");
        float(dlogits)
    }
}

/// The cross-entropy's forward (`forward`: outputs the mean loss and `lse`) or backward
/// pass (the logits' gradient) as one custom operation running the inner backend's.
fn xent_op<B: FusionBackend + Kernels>(
    forward: bool,
    floats: Vec<FloatTensor<Fusion<B>>>,
    targets: Tensor<Fusion<B>, 2, Int>,
) -> Vec<FloatTensor<Fusion<B>>> {
    let logits = &floats[0];
    let shape = logits.shape().to_vec();
    let (name, what, outputs) = if forward {
        let lse = vec![shape[0], shape[1], 1];
        let outputs = vec![(vec![1], DType::F32), (lse, DType::F32)];
        ("softtune_cross_entropy_forward", What::XentForward, outputs)
    } else {
        let outputs = vec![(shape, logits.dtype())];
        (
            "softtune_cross_entropy_backward",
            What::XentBackward,
            outputs,
        )
    };
    let mut inputs = floats;
    inputs.push(targets.into_primitive());
    register::<B, 3>(name, what, inputs, outputs)
}

/// LayerNorm (with `b`) or RMSNorm as one custom operation running the inner backend's norm.
fn norm_op<B: FusionBackend + Kernels>(
    x: Tensor<Fusion<B>, 3>,
    w: Tensor<Fusion<B>, 1>,
    b: Option<Tensor<Fusion<B>, 1>>,
    eps: f64,
) -> Tensor<Fusion<B>, 3> {
    let output = (x.dims().to_vec(), x.dtype());
    let (name, what) = match b {
        Some(_) => ("softtune_layer_norm", What::Norm { eps, bias: true }),
        None => ("softtune_rms_norm", What::Norm { eps, bias: false }),
    };
    let mut inputs = vec![prim(x), prim(w)];
    inputs.extend(b.map(prim));
    let [y] = register::<B, 3>(name, what, inputs, vec![output])
        .try_into()
        .expect("one output");
    float(y)
}
