//! Backend extension: operations a backend may run its own way.
//!
//! Every model is generic over `B: Kernels`. The trait's default methods are the plain Burn
//! compositions in [`super::ops`]; a backend overrides one when it has something better:
//!
//! * the training backend (`Autodiff<_>`): causal attention that keeps no `[s, s]` matrix
//!   for the backward pass (it saves the output and one log-sum-exp per query and
//!   recomputes the probabilities block by block, skipping the keys a block cannot see:
//!   the flash-attention recipe in Burn operations, so on every backend), the LM head's
//!   loss by chunks of rows with its gradient made in the forward pass (no whole logits
//!   tensor, kept or not), a cross-entropy that keeps the logits and one log-sum-exp per
//!   position, norms and SiLU / tanh-GELU that keep only their input, and a matmul whose
//!   backward runs through the inner backend's kernel;
//! * the CPU backend ([`super::cpu`]): matmuls straight on gemm, attention on gemm tiles,
//!   a one-pass cross-entropy, vectorised `exp`, SiLU and tanh-GELU;
//! * the CUDA backends ([`super::cuda`]): matmuls on cuBLAS, attention on the CubeCL
//!   kernels of [`super::cubecl::flash`] (opt-in) or the blocked attention's softmax and
//!   the norms on the row kernels of [`super::cubecl`], run inside Burn's fusion wrapper by
//!   [`super::fusion`].

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::{
    Bool, DType, IndexingUpdateOp, Int, Tensor, TensorMetadata, TensorPrimitive, activation,
    backend::{AutodiffBackend, Backend},
    ops::{BoolTensor, FloatTensor, IntTensor},
};

use super::config::Activation;
use super::ops::{self, AttnOpts};

/// Operations a backend may implement its own way; the defaults are plain Burn.
pub trait Kernels: Backend {
    /// `lhs [.., m, k] · rhs [.., k, n]`, broadcast over the batch dimensions like Burn's
    /// matmul (every matmul of the models and of the attention above goes through here).
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        lhs.matmul(rhs)
    }

    /// [`Kernels::matmul`] with a float32 result whatever the inputs' dtype: attention
    /// scores and their gradients from 16-bit operands (on a GPU: 16-bit tensor-core
    /// inputs, float32 accumulation and output, the precision flash attention keeps).
    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        Self::matmul(as_dtype(lhs, DType::F32), as_dtype(rhs, DType::F32))
    }

    /// Causal attention, see [`ops::causal_attention`].
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> Tensor<Self, 4> {
        ops::plain_attention(q, k, v, opts)
    }

    /// A linear layer's frozen weight as the `[in, out]` right operand of its matmuls, from
    /// `nn.Linear`'s `[out, in]` storage: by default a transposed view (no copy); a backend
    /// whose matmul kernels run faster on the other layout may copy it.
    fn linear_weight(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        w.transpose()
    }

    /// Whether [`Kernels::matmul`] is the backend's own rather than Burn's: Burn's fusion
    /// wrapper around the backend then runs it as a custom operation ([`super::fusion`]),
    /// otherwise as Burn's matmul, which it can fuse.
    fn own_matmul() -> bool {
        false
    }

    /// Whether [`Kernels::matmul`] runs outside the queue of the backend's other kernels
    /// (cuBLAS beside CubeCL's stream, ordered against it): the kernel checks then race a
    /// large product against queued work ([`crate::parity::kernel_checks`]).
    fn matmul_off_queue() -> bool {
        false
    }

    /// Whether [`Kernels::attention_forward`] and [`Kernels::attention_backward`] run the
    /// backend's own kernels on queries shaped `q`, keys `k`, values `v` and tensors of
    /// `dtypes` (see [`Kernels::own_matmul`]).
    fn own_attention(q: &[usize], k: &[usize], v: &[usize], dtypes: &[DType]) -> bool {
        let _ = (q, k, v, dtypes);
        false
    }

    /// The forward pass of the memory-saving attention ([`Kernels::causal_attention`] under
    /// autodiff): `(out [b, h, s, hd], lse [b, kvh, rep, s, 1])`, the log-sum-exp of every
    /// query row's scaled scores in float32. By blocks of query positions on the default path.
    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        blocked_attention_forward(q, k, v, opts)
    }

    /// The gradients `[dq, dk, dv]` of [`Kernels::attention_forward`]'s output, the
    /// probabilities recomputed from `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 5>,
        grad: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> [Tensor<Self, 4>; 3] {
        blocked_attention_backward(q, k, v, out, lse, grad, opts)
    }

    /// Whether [`Kernels::attention_probs`], [`Kernels::attention_score_grads`], the norms
    /// and [`Kernels::norm_backward`] run the backend's own kernels (see
    /// [`Kernels::own_matmul`]).
    fn own_fused() -> bool {
        false
    }

    /// The blocked attention's softmax over one block of scores: from the raw products
    /// `q·kᵀ` of the block's stacked query rows (`scores [b, kvh, rows, keys]`, float32),
    /// the probabilities of the scaled, masked scores in `dtype` (zero where masked) and
    /// the log-sum-exp of every row (`[b, kvh, rows, 1]`, float32).
    fn attention_probs(
        scores: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        plain_attention_probs(scores, block, dtype)
    }

    /// The blocked attention's backward pass over one block: from the raw products
    /// `scores` (as in [`Kernels::attention_probs`]), `dp = dO·vᵀ` (float32), the rows'
    /// log-sum-exp `lse` and `delta = Σ dO·O` (`[b, kvh, rows, 1]`, float32), the
    /// recomputed probabilities `p` and the scores' gradient `ds = p·(dp − delta)·scale`,
    /// both in `dtype`.
    fn attention_score_grads(
        scores: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        lse: Tensor<Self, 4>,
        delta: Tensor<Self, 4>,
        block: ScoreBlock,
        dtype: DType,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        plain_attention_score_grads(scores, dp, lse, delta, block, dtype)
    }

    /// Mean next-token cross-entropy of `logits [b, t, V]` against `targets [b, t]`, in
    /// float32: by default the loss of
    /// [`Kernels::cross_entropy_forward`] (so evaluation runs the backend's own kernels too).
    fn cross_entropy(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 1> {
        Self::cross_entropy_forward(logits, targets).0
    }

    /// The forward pass of the training backend's cross-entropy (which keeps the logits, in
    /// their own dtype, and one log-sum-exp per position): `(mean loss [1], lse [b, t, 1])`
    /// of `logits` in any float dtype, computed in float32.
    fn cross_entropy_forward(
        logits: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 3>) {
        xent_forward(logits, targets)
    }

    /// Its backward pass: `d loss / d logits = (softmax(logits) − onehot(targets)) · grad /
    /// (b·t)`, computed in float32 and returned in the logits' dtype (as PyTorch's loss on
    /// `logits.float()` hands its gradient back through the cast).
    fn cross_entropy_backward(
        logits: Tensor<Self, 3>,
        lse: Tensor<Self, 3>,
        targets: Tensor<Self, 2, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 3> {
        xent_backward(logits, lse, targets, grad)
    }

    /// The mean next-token loss of the LM head, see [`ops::head_loss`]: the cross-entropy
    /// of the logits `h·w (+ b)` against `targets`, by chunks of rows so that no `[n, V]`
    /// logits tensor is ever whole. The training backend also computes the gradient to `h`
    /// chunk by chunk during the forward pass and keeps only that (`[n, d]`, the hidden
    /// states' size) for the backward pass, instead of the logits (`[n, V]`, float32).
    /// With `softcap` the logits are soft-capped first (Gemma 2's `final_logit_softcapping`).
    fn head_loss(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Option<Tensor<Self, 1>>,
        targets: Tensor<Self, 1, Int>,
        softcap: Option<f64>,
    ) -> Tensor<Self, 1> {
        let rows = head_chunk_rows(h.dims()[0], w.dims()[1]);
        chunked_head_loss(h, w, b, targets, rows, softcap)
    }

    /// `e^x` element-wise (the softmax and cross-entropy kernels above use it).
    fn exp<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        x.exp()
    }

    /// LayerNorm over the last axis in float32, `w` and `b` frozen (see
    /// [`ops::plain_layer_norm`]). The training backend keeps only `x` for the backward pass.
    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        ops::plain_layer_norm(x, w, b, eps)
    }

    /// RMSNorm over the last axis in float32, `w` frozen (see [`ops::plain_rms_norm`]).
    /// The training backend keeps only `x` for the backward pass.
    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        ops::plain_rms_norm(x, w, eps)
    }

    /// The input gradient of [`Kernels::layer_norm`] (`rms` false) or [`Kernels::rms_norm`]
    /// from `x` alone, see [`norm_backward`].
    fn norm_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        grad: Tensor<Self, 3>,
        eps: f64,
        rms: bool,
    ) -> Tensor<Self, 3> {
        norm_backward(x, w, grad, eps, rms)
    }

    /// The MLP's non-linearity. The training backend differentiates SiLU and tanh-GELU
    /// with [`Kernels::activation_backward`], keeping only `x`.
    fn activation<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        ops::plain_activation(x, act)
    }

    /// A gated MLP's hidden values (SwiGLU): `act(g) · u` of `x = [g | u]` along the last
    /// axis (the gate and up projections as one product). The training backend keeps only
    /// `x` and recomputes `act(g)` in the backward pass, whose gradient comes out as one
    /// `[dg | du]` for the one product's input gradient.
    fn gated<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        let (g, u) = halves(x);
        Self::activation(g, act) * u
    }

    /// The gradient of [`Kernels::gated`] with respect to its input `x = [g | u]`:
    /// `[grad · u · act'(g) | grad · act(g)]`.
    fn gated_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        act: Activation,
    ) -> Tensor<Self, D> {
        plain_gated_backward(x, grad, act)
    }

    /// `grad · act'(x)`: SiLU `σ(x)·(1 + x·(1 − σ(x)))`; tanh-GELU, written `x·σ(2u)` with
    /// `u = √(2/π)(x + 0.044715·x³)`, `σ + x·σ(1 − σ)·2u'`; GELU `Φ(x) + x·φ(x)`; ReLU
    /// `[x > 0]`.
    fn activation_backward<const D: usize>(
        x: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        act: Activation,
    ) -> Tensor<Self, D> {
        plain_activation_backward(x, grad, act)
    }
}

/// The two halves of `x` along its last axis (views, no copy).
fn halves<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let n = x.dims()[D - 1] / 2;
    (x.clone().narrow(D - 1, 0, n), x.narrow(D - 1, n, n))
}

/// [`Kernels::gated_backward`] in Burn operations (the backend's activation and its
/// derivative).
pub fn plain_gated_backward<B: Kernels, const D: usize>(
    x: Tensor<B, D>,
    grad: Tensor<B, D>,
    act: Activation,
) -> Tensor<B, D> {
    let (g, u) = halves(x);
    let du = B::activation(g.clone(), act) * grad.clone();
    let dg = B::activation_backward(g, grad * u, act);
    Tensor::cat(vec![dg, du], D - 1)
}

/// `d loss / d x` of a norm over the last axis with frozen weight `w`, in float32 from
/// `x` alone: with `x̂ = (x − μ)·rstd` (LayerNorm; RMSNorm has no `μ`) and `g' = g·w`,
/// `dx = rstd·(g' − mean(g') − x̂·mean(g'·x̂))`, RMSNorm without the `mean(g')` term.
pub fn norm_backward<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    grad: Tensor<B, 3>,
    eps: f64,
    rms: bool,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let centered = if rms { x } else { x.clone() - x.mean_dim(2) };
    let rstd = (centered.clone().powi_scalar(2).mean_dim(2) + eps)
        .sqrt()
        .recip();
    let xhat = centered * rstd.clone();
    let gw = grad.cast(DType::F32) * w.cast(DType::F32).unsqueeze::<3>();
    let proj = (gw.clone() * xhat.clone()).mean_dim(2);
    let inner = if rms {
        gw - xhat * proj
    } else {
        gw.clone() - gw.mean_dim(2) - xhat * proj
    };
    (inner * rstd).cast(dtype)
}

/// [`Kernels::activation_backward`] in plain Burn operations.
pub fn plain_activation_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    grad: Tensor<B, D>,
    act: Activation,
) -> Tensor<B, D> {
    match act {
        Activation::Silu => {
            let s = activation::sigmoid(x.clone());
            grad * s.clone() * ((s.neg() + 1.0) * x + 1.0)
        }
        Activation::GeluTanh => {
            // ½x(1 + tanh u) = x·σ(2u): the derivative is σ + x·σ(1 − σ)·2u'.
            let x2 = x.clone().powi_scalar(2);
            let two_u = (x2.clone() * GELU_CUBIC + 1.0) * x.clone() * (2.0 * SQRT_2_OVER_PI);
            let s = activation::sigmoid(two_u);
            let two_du = (x2 * (3.0 * GELU_CUBIC) + 1.0) * (2.0 * SQRT_2_OVER_PI);
            grad * (s.clone() + x * s.clone() * (s.neg() + 1.0) * two_du)
        }
        Activation::Gelu => {
            // Φ(x) + x·φ(x).
            let cdf = ((x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
            let pdf = (x.clone().powi_scalar(2) * -0.5).exp()
                * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
            grad * (cdf + x * pdf)
        }
        Activation::Relu => grad.mask_fill(x.lower_equal_elem(0.0), 0.0),
    }
}

/// `√(2/π)` and the cubic coefficient of the tanh approximation of GELU.
pub const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
pub const GELU_CUBIC: f64 = 0.044_715;

/// A training backend: autodiff with kernels, over an inner backend with kernels (held-out
/// evaluation and samples run on the inner one).
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> TrainKernels for B
where
    B: AutodiffBackend + Kernels,
    B::InnerBackend: Kernels,
{
}

// The CPU backend's impl is in `super::cpu`, the CUDA backends' in `super::cuda`.

/// Which attention the training backend runs (`SOFTTUNE_ATTENTION`): `saving` (default)
/// keeps one float per query for the backward pass, `plain` keeps Burn's whole graph
/// (the `[b, h, s, s]` scores and probabilities), for comparisons.
/// Read once per process.
pub fn memory_saving_attention() -> bool {
    static SAVING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAVING.get_or_init(|| std::env::var("SOFTTUNE_ATTENTION").map_or(true, |v| v != "plain"))
}

/// Elements of one block of scores (`[b, kv heads, rows, keys]`, float32): 64 Mi = 256 MiB.
const BLOCK_ELEMENTS: usize = 1 << 26;

/// Fewest positions in a block: smaller blocks skip more of the causal triangle, but every
/// block is a handful of kernel launches.
const MIN_BLOCK_POSITIONS: usize = 128;

/// Query positions per block for `b·h` query heads over `s` positions: at least four
/// blocks on long sequences (a block at positions `p0..p1` only scores keys `..p1`, so four
/// blocks do 62.5 % of the square's work, one does all of it) but no fewer than
/// `MIN_BLOCK_POSITIONS` positions, and in any case at most `BLOCK_ELEMENTS` scores
/// against all `s` keys.
pub fn block_positions(heads: usize, s: usize) -> usize {
    let fits = (BLOCK_ELEMENTS / (heads * s).max(1)).max(1);
    fits.min(MIN_BLOCK_POSITIONS.max(s.div_ceil(4)))
        .min(s)
        .max(1)
}

/// The keys a block of query positions `p0..p0 + n` can see: `(first, count)`. Causal
/// attention stops at the block's last position; a local window starts `window − 1`
/// positions before its first.
pub fn key_range(p0: usize, n: usize, window: Option<usize>) -> (usize, usize) {
    let first = window.map_or(0, |w| (p0 + 1).saturating_sub(w));
    (first, p0 + n - first)
}

/// `[rows, keys]` mask for stacked query rows of a block (row `r` is position
/// `p0 + r % n`: the block's `n` positions repeated for each query head sharing a key
/// head) against keys `k0..k0 + keys`, true where attention is forbidden: later keys, and
/// keys at least `window` positions back for local attention. Built on the device.
pub fn stacked_mask<B: Backend>(
    n: usize,
    p0: usize,
    rows: usize,
    k0: usize,
    keys: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let pos = Tensor::<B, 1, Int>::arange(0..rows as i64, device)
        .remainder_scalar(n as i64)
        .add_scalar(p0 as i64)
        .reshape([rows, 1])
        .expand([rows, keys]);
    let key = Tensor::<B, 1, Int>::arange(k0 as i64..(k0 + keys) as i64, device)
        .reshape([1, keys])
        .expand([rows, keys]);
    let later = key.clone().greater(pos.clone());
    match window {
        Some(w) => later.bool_or(pos.sub(key).greater_equal_elem(w as i64)),
        None => later,
    }
}

/// What the backward pass needs: the inputs, the output, and the log-sum-exp of every
/// query row (`[b, kvh, rep, s, 1]`, float32).
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

/// Positions `p0..p0 + n` of `t` (`[b, kvh, rep, s, d]`) as stacked rows
/// `[b, kvh, rep·n, d]` (row `r` is position `p0 + r % n`), no copy for the whole sequence.
fn stacked_rows<B: Backend>(t: &Tensor<B, 5>, p0: usize, n: usize) -> Tensor<B, 4> {
    let [b, g, r, s, d] = t.dims();
    if n == s {
        t.clone().reshape([b, g, r * s, d])
    } else {
        t.clone().narrow(3, p0, n).reshape([b, g, r * n, d])
    }
}

/// One block of the blocked attention: `rows = rep·n` stacked query rows (row `r` is
/// position `p0 + r % n`, see [`stacked_mask`]) against the keys from `k0` on.
#[derive(Debug, Clone, Copy)]
pub struct ScoreBlock {
    pub p0: usize,
    pub n: usize,
    pub k0: usize,
    pub opts: AttnOpts,
}

impl ScoreBlock {
    /// The window as the kernels take it: 0 for none.
    pub fn window(&self) -> usize {
        self.opts.window.map_or(0, |w| w.max(1))
    }
}

/// Raw scores scaled and, with a soft cap `c`, capped: `c · tanh(x·scale / c)`.
fn scaled<B: Backend, const D: usize>(raw: Tensor<B, D>, opts: AttnOpts) -> Tensor<B, D> {
    soft_capped(raw * opts.scale, opts.softcap)
}

/// `c · tanh(x / c)` (Gemma 2's soft-capping of attention scores and logits); `x` without a cap.
pub fn soft_capped<B: Backend, const D: usize>(x: Tensor<B, D>, cap: Option<f64>) -> Tensor<B, D> {
    match cap {
        Some(c) => (x / c).tanh() * c,
        None => x,
    }
}

/// The derivative of [`soft_capped`] at the point whose capped value is `y`: `1 − (y / c)²`.
pub fn soft_cap_slope<B: Backend, const D: usize>(y: Tensor<B, D>, c: f64) -> Tensor<B, D> {
    let t = y / c;
    t.clone().mul(t).neg() + 1.0
}

/// `x` masked where `block` forbids keys (`-inf`).
fn mask_block<B: Backend>(x: Tensor<B, 4>, block: ScoreBlock) -> Tensor<B, 4> {
    let [b, kvh, rows, keys] = x.dims();
    let ScoreBlock { p0, n, k0, opts } = block;
    let mask = stacked_mask::<B>(n, p0, rows, k0, keys, opts.window, &x.device())
        .unsqueeze::<4>()
        .expand([b, kvh, rows, keys]);
    x.mask_fill(mask, f32::NEG_INFINITY)
}

/// Raw scores `[b, kvh, rows, keys]` of `block`, scaled (and soft-capped), with forbidden
/// keys at `-inf`.
fn mask_scaled<B: Backend>(raw: Tensor<B, 4>, block: ScoreBlock) -> Tensor<B, 4> {
    mask_block(scaled(raw, block.opts), block)
}

/// Scaled scores of a block's stacked query rows (`q [b, kvh, rep·n, hd]`, positions
/// `p0..p0 + n`) against keys `k0..` (`kt [b, kvh, hd, keys]`), float32 from operands of
/// any dtype ([`Kernels::matmul_f32`]), with forbidden keys at `-inf`.
pub fn masked_scores<B: Kernels>(
    q: Tensor<B, 4>,
    kt: Tensor<B, 4>,
    p0: usize,
    n: usize,
    k0: usize,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    mask_scaled(B::matmul_f32(q, kt), ScoreBlock { p0, n, k0, opts })
}

/// [`Kernels::attention_probs`] in plain Burn operations.
pub fn plain_attention_probs<B: Kernels>(
    scores: Tensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let scores = mask_scaled(scores, block);
    // Every row sees its own position, so the row maximum is finite.
    let max = scores.clone().max_dim(3);
    let e = B::exp(scores - max.clone());
    let sum = e.clone().sum_dim(3);
    (as_dtype(e / sum.clone(), dtype), max + sum.log())
}

/// [`Kernels::attention_score_grads`] in plain Burn operations.
pub fn plain_attention_score_grads<B: Kernels>(
    scores: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    delta: Tensor<B, 4>,
    block: ScoreBlock,
    dtype: DType,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let x = scaled(scores, block.opts);
    // A soft cap's slope, from the capped scores.
    let slope = block.opts.softcap.map(|c| soft_cap_slope(x.clone(), c));
    let p = B::exp(mask_block(x, block) - lse);
    let mut ds = p.clone() * (dp - delta) * block.opts.scale;
    if let Some(slope) = slope {
        ds = ds * slope;
    }
    (as_dtype(p, dtype), as_dtype(ds, dtype))
}

/// [`Kernels::own_attention`] of `B` for tensors of any backend `C` (`B` itself, or a wrapper
/// around it): the forward pass's `q`, `k`, `v`, and in the backward pass also `more` (its
/// output and the output's gradient), whose dtypes must match. Soft-capped scores always
/// take the blocked path (the backends' own attention kernels do not cap).
pub fn owns_attention<B: Kernels, C: Backend>(
    q: &Tensor<C, 4>,
    k: &Tensor<C, 4>,
    v: &Tensor<C, 4>,
    more: &[&Tensor<C, 4>],
    opts: AttnOpts,
) -> bool {
    if opts.softcap.is_some() {
        return false;
    }
    let mut dtypes = vec![q.dtype(), k.dtype(), v.dtype()];
    dtypes.extend(more.iter().map(|t| t.dtype()));
    B::own_attention(&q.dims(), &k.dims(), &v.dims(), &dtypes)
}

/// [`Kernels::attention_forward`] by blocks of [`block_positions`] query positions, on the
/// backend's matmuls.
pub fn blocked_attention_forward<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
) -> (Tensor<B, 4>, Tensor<B, 5>) {
    let [b, h, s, _] = q.dims();
    saving_forward(q, k, v, opts, block_positions(b * h, s))
}

/// [`Kernels::attention_backward`] by blocks of [`block_positions`] query positions.
pub fn blocked_attention_backward<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 5>,
    grad: Tensor<B, 4>,
    opts: AttnOpts,
) -> [Tensor<B, 4>; 3] {
    let [b, h, s, _] = q.dims();
    saving_backward(q, k, v, out, lse, grad, opts, block_positions(b * h, s))
}

/// Forward pass by blocks of `step` query positions: `(out [b, h, s, hd],
/// lse [b, kvh, rep, s, 1])`.
fn saving_forward<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
    step: usize,
) -> (Tensor<B, 4>, Tensor<B, 5>) {
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let rep = h / kvh;
    let dtype = q.dtype();
    let q5 = q.reshape([b, kvh, rep, s, hd]);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for p0 in (0..s).step_by(step) {
        let n = step.min(s - p0);
        let (qb, (k0, keys)) = (stacked_rows(&q5, p0, n), key_range(p0, n, opts.window));
        let kt = k.clone().narrow(2, k0, keys).swap_dims(2, 3);
        let block = ScoreBlock { p0, n, k0, opts };
        let (p, lse) = B::attention_probs(B::matmul_f32(qb, kt), block, dtype);
        let o = B::matmul(p, v.clone().narrow(2, k0, keys));
        outs.push(o.reshape([b, kvh, rep, n, hd]));
        lses.push(lse.reshape([b, kvh, rep, n, 1]));
    }
    let out = Tensor::cat(outs, 3).reshape([b, h, s, hd]);
    (out, Tensor::cat(lses, 3))
}

/// `acc + part`, with `part` covering rows `k0..k0 + part's length` of `acc`'s dimension 2.
fn add_rows<B: Backend>(acc: Tensor<B, 4>, k0: usize, part: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, g, s, d] = acc.dims();
    let n = part.dims()[2];
    if k0 == 0 && n == s {
        return acc + part;
    }
    let ranges = [0..b, 0..g, k0..k0 + n, 0..d];
    let sum = acc.clone().slice(ranges.clone()) + part;
    acc.slice_assign(ranges, sum)
}

/// Gradients `(dq, dk, dv)` by blocks of `step` query positions, recomputing the
/// probabilities from `lse`.
#[allow(clippy::too_many_arguments)]
fn saving_backward<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 5>,
    grad: Tensor<B, 4>,
    opts: AttnOpts,
    step: usize,
) -> [Tensor<B, 4>; 3] {
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let rep = h / kvh;
    let (q_dtype, k_dtype, v_dtype) = (q.dtype(), k.dtype(), v.dtype());
    let device = q.device();
    // The operands of the products stay in their own dtype (16-bit on a GPU: tensor cores);
    // every product comes out in float32 and the gradients accumulate in float32.
    let shape5 = [b, kvh, rep, s, hd];
    let q5 = q.reshape(shape5);
    let do5 = grad.reshape(shape5);
    let g_dtype = do5.dtype();
    // D_i = Σ_d dO_id · O_id = Σ_j P_ij dP_ij (softmax backward's row term).
    let delta =
        (as_dtype(do5.clone(), DType::F32) * as_dtype(out.reshape(shape5), DType::F32)).sum_dim(4);
    let mut dq = Vec::new();
    let mut dk = Tensor::<B, 4>::zeros([b, kvh, s, hd], (&device, DType::F32));
    let mut dv = dk.clone();
    for p0 in (0..s).step_by(step) {
        let n = step.min(s - p0);
        let (qb, (k0, keys)) = (stacked_rows(&q5, p0, n), key_range(p0, n, opts.window));
        let dob = stacked_rows(&do5, p0, n);
        let (kb, vb) = (k.clone().narrow(2, k0, keys), v.clone().narrow(2, k0, keys));
        let scores = B::matmul_f32(qb.clone(), kb.clone().swap_dims(2, 3));
        let dp = B::matmul_f32(dob.clone(), vb.swap_dims(2, 3));
        let (lse, delta) = (stacked_rows(&lse, p0, n), stacked_rows(&delta, p0, n));
        let block = ScoreBlock { p0, n, k0, opts };
        // One dtype for both (the model's); the other operands follow when theirs differ.
        let (p, ds) = B::attention_score_grads(scores, dp, lse, delta, block, k_dtype);
        let pt = as_dtype(p, g_dtype).swap_dims(2, 3);
        dv = add_rows(dv, k0, B::matmul_f32(pt, dob));
        let ds_q = as_dtype(ds.clone(), q_dtype);
        dq.push(B::matmul_f32(ds, kb).reshape([b, kvh, rep, n, hd]));
        dk = add_rows(dk, k0, B::matmul_f32(ds_q.swap_dims(2, 3), qb));
    }
    let dq = as_dtype(Tensor::cat(dq, 3).reshape([b, h, s, hd]), q_dtype);
    [dq, as_dtype(dk, k_dtype), as_dtype(dv, v_dtype)]
}

/// `t` in `dtype`, untouched (no copy) when it already is.
pub fn as_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

#[derive(Debug)]
struct SavingAttention;

impl<B: Kernels> Backward<B, 3> for SavingAttention {
    type State = AttnState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = float::<B, 4>(grads.consume::<B>(&ops.node));
        let st = ops.state;
        let [dq, dk, dv] = B::attention_backward(
            float(st.q),
            float(st.k),
            float(st.v),
            float(st.out),
            float(st.lse),
            grad,
            st.opts,
        );
        for (parent, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, prim(g));
            }
        }
    }
}

/// Cross-entropy state: the logits `[b, t, V]` in their own dtype, their log-sum-exp
/// `[b, t, 1]` (float32), targets.
#[derive(Debug, Clone)]
struct XentState<B: Backend> {
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    targets: IntTensor<B>,
}

/// `(mean loss [1], lse [b, t, 1])` of logits in any float dtype, as Burn operations in
/// float32.
pub fn xent_forward<B: Kernels>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 3>) {
    let logits = as_dtype(logits, DType::F32);
    let max = logits.clone().max_dim(2);
    let lse = max.clone() + B::exp(logits.clone() - max).sum_dim(2).log();
    let picked = logits.gather(2, targets.unsqueeze_dim::<3>(2));
    ((lse.clone() - picked).mean(), lse)
}

/// `d loss / d logits = (softmax(logits) − onehot(targets)) · grad / (b·t)`, as Burn
/// operations in float32, in the logits' dtype.
pub fn xent_backward<B: Kernels>(
    logits: Tensor<B, 3>,
    lse: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    grad: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let dtype = logits.dtype();
    let logits = as_dtype(logits, DType::F32);
    let [b, t, _] = logits.dims();
    let device = logits.device();
    let minus_one = Tensor::<B, 3>::ones([b, t, 1], (&device, DType::F32)).neg();
    let d = B::exp(logits - lse).scatter(
        2,
        targets.unsqueeze_dim::<3>(2),
        minus_one,
        IndexingUpdateOp::Add,
    );
    as_dtype(
        d * (grad.cast(DType::F32) / (b * t) as f64).reshape([1, 1, 1]),
        dtype,
    )
}

/// Logits a chunk of the LM head's loss holds at most (`rows × V`) unless that is under
/// [`HEAD_CHUNK_MIN_ROWS`] rows: 16 Mi values, 64 MiB in float32.
pub const HEAD_CHUNK_VALUES: usize = 1 << 24;

/// Rows a chunk of the LM head's loss has at least (the products stay large enough for the
/// matmul kernels to run near full speed).
pub const HEAD_CHUNK_MIN_ROWS: usize = 256;

/// Rows per chunk of the LM head's loss over `n` rows and a vocabulary of `v`: as few
/// chunks as the limits allow, of equal size. TinyLlama at 8 × 1024 text tokens
/// (V = 32,000): 16 chunks of 512 rows; the CPU benchmark's 4 × 256 (V = 49,152): 4 of 256.
pub fn head_chunk_rows(n: usize, v: usize) -> usize {
    let most = (HEAD_CHUNK_VALUES / v.max(1)).max(HEAD_CHUNK_MIN_ROWS);
    let chunks = n.div_ceil(most).max(1);
    n.div_ceil(chunks).max(1)
}

/// `h [n, d]` through the LM head `w [d, V]` (+ `b [V]`): the logits of one chunk in the
/// model's dtype, as [`ops::Linear::forward`] computes them. The cross-entropy reads them
/// as float32 (the cast is exact) and hands its gradient back in their dtype, as the
/// cast's backward would.
fn head_logits<B: Kernels>(
    h: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    b: &Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let y = B::matmul(h, w.clone());
    match b {
        Some(bias) => y + bias.clone().unsqueeze::<2>(),
        None => y,
    }
}

/// A chunk's logits soft-capped, `c · tanh(l / c)` computed in float32 and handed back in
/// the logits' dtype; untouched without a cap.
pub fn cap_logits<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    cap: Option<f64>,
) -> Tensor<B, D> {
    match cap {
        Some(c) => {
            let dtype = logits.dtype();
            as_dtype(soft_capped(as_dtype(logits, DType::F32), Some(c)), dtype)
        }
        None => logits,
    }
}

/// `(start, len)` of the chunks of `rows` rows over `n` rows.
fn row_chunks(n: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = rows.max(1);
    (0..n)
        .step_by(rows)
        .map(move |start| (start, rows.min(n - start)))
}

/// The running mean loss over `n` rows after a chunk of `len` rows whose own mean is `loss`.
fn add_chunk_loss<B: Backend>(
    total: Option<Tensor<B, 1>>,
    loss: Tensor<B, 1>,
    len: usize,
    n: usize,
) -> Option<Tensor<B, 1>> {
    let loss = if len == n {
        loss
    } else {
        loss * (len as f64 / n as f64)
    };
    Some(match total {
        Some(sum) => sum + loss,
        None => loss,
    })
}

/// [`Kernels::head_loss`] on any backend: by chunks of `rows` rows, each chunk's logits made,
/// reduced to its loss by [`Kernels::cross_entropy`] and dropped before the next. Under
/// autodiff this keeps every chunk's logits for the backward pass; the training backend
/// runs [`head_loss_and_grad`] instead. With `softcap`, each chunk's logits are capped
/// ([`cap_logits`]).
pub fn chunked_head_loss<B: Kernels>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    targets: Tensor<B, 1, Int>,
    rows: usize,
    softcap: Option<f64>,
) -> Tensor<B, 1> {
    let n = h.dims()[0];
    let mut total = None;
    for (start, len) in row_chunks(n, rows) {
        let logits = cap_logits(
            head_logits(h.clone().narrow(0, start, len), &w, &b),
            softcap,
        );
        let t = targets.clone().narrow(0, start, len);
        let loss = B::cross_entropy(logits.unsqueeze::<3>(), t.unsqueeze::<2>());
        total = add_chunk_loss(total, loss, len, n);
    }
    total.unwrap_or_else(|| Tensor::zeros([1], (&h.device(), DType::F32)))
}

/// The LM head's mean loss and its gradient to `h` for an upstream gradient of 1, by chunks
/// of `rows` rows: each chunk's logits go through [`Kernels::cross_entropy_forward`] and
/// straight on through [`Kernels::cross_entropy_backward`] (computed in float32, handed
/// back in the model's dtype), and `dlogits · wᵀ` is that chunk's rows of `dh`. Same
/// products and roundings as the autodiff graph of [`chunked_head_loss`], with at most one
/// chunk of logits alive. With `softcap` the chunk's logits are capped ([`cap_logits`])
/// and the loss's gradient to them goes back through the cap's slope, `1 − (capped / c)²`.
pub fn head_loss_and_grad<B: Kernels>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    targets: Tensor<B, 1, Int>,
    rows: usize,
    softcap: Option<f64>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [n, _] = h.dims();
    let dtype = h.dtype();
    let device = h.device();
    let wt = w.clone().transpose();
    let mut total = None;
    let mut dh = Vec::new();
    for (start, len) in row_chunks(n, rows) {
        let logits = head_logits(h.clone().narrow(0, start, len), &w, &b);
        let logits = cap_logits(logits, softcap).unsqueeze::<3>();
        let t = targets.clone().narrow(0, start, len).unsqueeze::<2>();
        let (loss, lse) = B::cross_entropy_forward(logits.clone(), t.clone());
        // The chunk's mean loss counts `len / n` of the whole mean; its gradient too.
        let share = Tensor::<B, 1>::full([1], len as f64 / n as f64, (&device, DType::F32));
        let slope = softcap.map(|c| soft_cap_slope(as_dtype(logits.clone(), DType::F32), c));
        let mut dlogits = B::cross_entropy_backward(logits, lse, t, share);
        if let Some(slope) = slope {
            dlogits = as_dtype(dlogits, DType::F32) * slope;
        }
        let dlogits = as_dtype(dlogits.reshape([len, w.dims()[1]]), dtype);
        dh.push(B::matmul(dlogits, wt.clone()));
        total = add_chunk_loss(total, loss, len, n);
    }
    let loss = total.unwrap_or_else(|| Tensor::zeros([1], (&device, DType::F32)));
    let dh = if dh.len() == 1 {
        dh.pop().expect("one chunk")
    } else if dh.is_empty() {
        h.zeros_like()
    } else {
        Tensor::cat(dh, 0)
    };
    (loss, dh)
}

#[derive(Debug)]
struct SavingHeadLoss;

impl<B: Kernels> Backward<B, 1> for SavingHeadLoss {
    /// `d loss / d h` for an upstream gradient of 1, in `h`'s dtype.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_parent::<B, _, 1, 2>(ops, grads, |dh, grad| {
            let dh = float::<B, 2>(dh);
            let dtype = dh.dtype();
            as_dtype(as_dtype(dh, DType::F32) * grad.reshape([1, 1]), dtype)
        });
    }
}

/// The training backend's [`Kernels::head_loss`] with chunks of `rows` rows: keeps only
/// `d loss / d h` from [`head_loss_and_grad`] for the backward pass, which scales it by the
/// loss's upstream gradient. The weights are frozen: no gradient flows to `w` or `b`.
pub fn saving_head_loss<B: Kernels, C: CheckpointStrategy>(
    h: Tensor<Autodiff<B, C>, 2>,
    w: Tensor<Autodiff<B, C>, 2>,
    b: Option<Tensor<Autodiff<B, C>, 1>>,
    targets: Tensor<Autodiff<B, C>, 1, Int>,
    rows: usize,
    softcap: Option<f64>,
) -> Tensor<Autodiff<B, C>, 1> {
    let h = prim(h);
    let (w, b, targets) = (w.inner(), b.map(|b| b.inner()), targets.inner());
    let loss = match SavingHeadLoss
        .prepare::<C>([h.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (loss, dh) = head_loss_and_grad(float(h.primitive), w, b, targets, rows, softcap);
            prep.finish(prim(dh), prim(loss))
        }
        OpsKind::UnTracked(prep) => prep.finish(prim(chunked_head_loss(
            float(h.primitive),
            w,
            b,
            targets,
            rows,
            softcap,
        ))),
    };
    float(loss)
}

/// The backward step of an op with one input: takes the output's gradient (rank `G`) and
/// registers `f(state, gradient)` (rank `O`) as the input's, when the input is tracked.
fn one_parent<B: Backend, S, const G: usize, const O: usize>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    f: impl FnOnce(S, Tensor<B, G>) -> Tensor<B, O>,
) {
    let grad = float::<B, G>(grads.consume::<B>(&ops.node));
    let [parent] = ops.parents;
    if let Some(node) = parent {
        grads.register::<B>(node.id, prim(f(ops.state, grad)));
    }
}

#[derive(Debug)]
struct SavingCrossEntropy;

impl<B: Kernels> Backward<B, 1> for SavingCrossEntropy {
    type State = XentState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_parent::<B, _, 1, 3>(ops, grads, |st, grad| {
            B::cross_entropy_backward(
                float(st.logits),
                float(st.lse),
                Tensor::from_primitive(st.targets),
                grad,
            )
        });
    }
}

/// Matmul state: the operand each gradient needs (`rhs` for the left gradient, `lhs` for
/// the right one; a frozen weight's gradient is never computed, so the activation is not
/// kept), and both shapes for reducing broadcast batch dimensions.
#[derive(Debug, Clone)]
struct MatmulState<B: Backend> {
    lhs: Option<FloatTensor<B>>,
    rhs: Option<FloatTensor<B>>,
    lhs_shape: Vec<usize>,
    rhs_shape: Vec<usize>,
}

#[derive(Debug)]
struct KernelMatmul<const D: usize>;

/// Sums `grad` over the batch dimensions where `shape` was broadcast (size 1).
fn unbroadcast<B: Backend, const D: usize>(
    mut grad: Tensor<B, D>,
    shape: &[usize],
) -> Tensor<B, D> {
    for (i, &n) in shape.iter().enumerate().take(D - 2) {
        if n == 1 && grad.dims()[i] != 1 {
            grad = grad.sum_dim(i);
        }
    }
    grad
}

impl<B: Kernels, const D: usize> Backward<B, 2> for KernelMatmul<D> {
    type State = MatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = float::<B, D>(grads.consume::<B>(&ops.node));
        let [lhs_node, rhs_node] = ops.parents;
        let st = ops.state;
        let t = |x: FloatTensor<B>| float::<B, D>(x).swap_dims(D - 2, D - 1);
        if let (Some(node), Some(rhs)) = (lhs_node, st.rhs) {
            let g = unbroadcast(B::matmul(grad.clone(), t(rhs)), &st.lhs_shape);
            grads.register::<B>(node.id, prim(g));
        }
        if let (Some(node), Some(lhs)) = (rhs_node, st.lhs) {
            let g = unbroadcast(B::matmul(t(lhs), grad), &st.rhs_shape);
            grads.register::<B>(node.id, prim(g));
        }
    }
}

/// Norm state: the input, the frozen weight, epsilon, and RMSNorm or LayerNorm.
#[derive(Debug, Clone)]
struct NormState<B: Backend> {
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    eps: f64,
    rms: bool,
}

#[derive(Debug)]
struct KernelNorm;

impl<B: Kernels> Backward<B, 1> for KernelNorm {
    type State = NormState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_parent::<B, _, 3, 3>(ops, grads, |st, grad| {
            B::norm_backward(float(st.x), float(st.w), grad, st.eps, st.rms)
        });
    }
}

/// A norm on the training backend: the inner backend's forward, [`Kernels::norm_backward`] for the
/// input's gradient, only `x` kept. A weight or bias that wants a gradient (never in
/// softtune: the model is frozen) takes Burn's own path so it gets one.
fn autodiff_norm<B: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 3>,
    w: Tensor<Autodiff<B, C>, 1>,
    b: Option<Tensor<Autodiff<B, C>, 1>>,
    eps: f64,
) -> Tensor<Autodiff<B, C>, 3> {
    let rms = b.is_none();
    let frozen = !w.is_require_grad() && b.as_ref().is_none_or(|b| !b.is_require_grad());
    if !frozen {
        return match b {
            Some(b) => ops::plain_layer_norm(x, w, b, eps),
            None => ops::plain_rms_norm(x, w, eps),
        };
    }
    let (wi, bi) = (w.inner(), b.map(|b| b.inner()));
    let inner = |x: FloatTensor<B>| -> FloatTensor<B> {
        let x = float::<B, 3>(x);
        prim(match &bi {
            Some(b) => <B as Kernels>::layer_norm(x, wi.clone(), b.clone(), eps),
            None => B::rms_norm(x, wi.clone(), eps),
        })
    };
    let x = prim(x);
    let out = match KernelNorm
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = inner(x.primitive.clone());
            let state = NormState {
                x: x.primitive,
                w: prim(wi.clone()),
                eps,
                rms,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(inner(x.primitive)),
    };
    float(out)
}

/// ReLU whose backward pass needs only where its input was not positive: [`keeping_mask`].
#[derive(Debug)]
struct KeepingMask<const D: usize>;

impl<B: Kernels, const D: usize> Backward<B, 1> for KeepingMask<D> {
    /// Where the input was `≤ 0`, so the gradient is zero.
    type State = BoolTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_parent::<B, _, D, D>(ops, grads, |off, grad| {
            grad.mask_fill(Tensor::<B, D, Bool>::from_primitive(off), 0.0)
        });
    }
}

/// ReLU under autodiff keeping a bool a value for its backward pass (`x ≤ 0`: a byte on
/// the CPU and the CubeCL backends) instead of the input Burn's op keeps, an MLP-wide
/// tensor a layer in the model's dtype (OPT-6.7B at 4 × 1024 tokens: 137 MB a layer in
/// bfloat16, 68 MB as a mask). Same gradient as Burn's (zero at `x = 0`).
fn keeping_mask<B, C, const D: usize>(x: Tensor<Autodiff<B, C>, D>) -> Tensor<Autodiff<B, C>, D>
where
    B: Kernels,
    C: CheckpointStrategy,
{
    let x = prim(x);
    let out = match KeepingMask::<D>
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = float::<B, D>(x.primitive);
            let off = x.clone().lower_equal_elem(0.0);
            let y = x.mask_fill(off.clone(), 0.0);
            prep.finish(off.into_primitive(), prim(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(prim(activation::relu(float::<B, D>(x.primitive)))),
    };
    float(out)
}

/// An input gradient computed from the input alone: `backward(x, grad, act)`.
type FromInput<B, const D: usize> = fn(Tensor<B, D>, Tensor<B, D>, Activation) -> Tensor<B, D>;

/// An element-wise operation (an activation, the gated MLP) whose backward pass needs only
/// its input: [`keeping_input`].
#[derive(Debug)]
struct KeepingInput<const D: usize>;

impl<B: Kernels, const D: usize> Backward<B, 1> for KeepingInput<D> {
    /// The input `x`, the activation, and the input gradient's function.
    type State = (FloatTensor<B>, Activation, FromInput<B, D>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        one_parent::<B, _, D, D>(ops, grads, |(x, act, backward), grad| {
            backward(float(x), grad, act)
        });
    }
}

/// `forward(x, act)` under autodiff, keeping only `x` (and `act`) for its backward pass,
/// which runs `backward(x, grad, act)` on the inner backend.
fn keeping_input<B, C, const D: usize>(
    x: Tensor<Autodiff<B, C>, D>,
    act: Activation,
    forward: fn(Tensor<B, D>, Activation) -> Tensor<B, D>,
    backward: FromInput<B, D>,
) -> Tensor<Autodiff<B, C>, D>
where
    B: Kernels,
    C: CheckpointStrategy,
{
    let x = prim(x);
    let out = match KeepingInput::<D>
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = forward(float(x.primitive.clone()), act);
            prep.finish((x.primitive, act, backward), prim(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(prim(forward(float(x.primitive), act))),
    };
    float(out)
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    /// The inner backend's layout; frozen, so untracked.
    fn linear_weight(w: Tensor<Self, 2>) -> Tensor<Self, 2> {
        Tensor::from_inner(B::linear_weight(w.inner()))
    }

    /// Keeps only `x` (Burn's composition keeps a float32 copy of `x`, the normalised
    /// values and more, several model-wide tensors per norm).
    fn layer_norm(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        b: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        autodiff_norm(x, w, Some(b), eps)
    }

    fn rms_norm(x: Tensor<Self, 3>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        autodiff_norm(x, w, None, eps)
    }

    /// SiLU, tanh-GELU and GELU keep only their input for the backward pass, which runs
    /// [`Kernels::activation_backward`] on the inner backend (Burn's compositions keep the
    /// sigmoid, or the tanh and `1 + tanh`, as well: MLP-wide tensors, one or two a layer).
    /// Exact GELU is ours too because Burn 0.21's default `gelu_backward`, which the
    /// CubeCL backends (CUDA, WebGPU) use, is the derivative of the tanh approximation
    /// (off by up to 1e-3 against the erf GELU's forward; the CPU backend's is exact).
    /// ReLU keeps only where its input was not positive, a byte a value.
    fn activation<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        match act {
            Activation::Relu => keeping_mask::<B, C, D>(x),
            Activation::Silu | Activation::GeluTanh | Activation::Gelu => {
                keeping_input::<B, C, D>(x, act, B::activation, B::activation_backward)
            }
        }
    }

    /// Keeps only `x = [g | u]`: Burn's graph would keep `g`, `act(g)` and `u`, three
    /// MLP-wide tensors a layer instead of two.
    fn gated<const D: usize>(x: Tensor<Self, D>, act: Activation) -> Tensor<Self, D> {
        keeping_input::<B, C, D>(x, act, B::gated, B::gated_backward)
    }

    /// Burn's own matmul backward, with both products through the inner backend's
    /// [`Kernels::matmul`] (so the gradients run on the same fast path as the forward).
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let (lhs, rhs) = (prim(lhs), prim(rhs));
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let out = match KernelMatmul::<D>
            .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (l, r) = (lhs.primitive, rhs.primitive);
                let out = B::matmul(float::<B, D>(l.clone()), float(r.clone()));
                let state = MatmulState {
                    lhs_shape: l.shape().to_vec(),
                    rhs_shape: r.shape().to_vec(),
                    lhs: rhs_tracked.then_some(l),
                    rhs: lhs_tracked.then_some(r),
                };
                prep.finish(state, prim(out))
            }
            OpsKind::UnTracked(prep) => prep.finish(prim(B::matmul(
                float::<B, D>(lhs.primitive),
                float(rhs.primitive),
            ))),
        };
        float(out)
    }

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
                let (out, lse) = B::attention_forward(
                    float(qi.clone()),
                    float(ki.clone()),
                    float(vi.clone()),
                    opts,
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

    /// Keeps `d loss / d h` (the hidden states' size) instead of the logits, see
    /// [`saving_head_loss`].
    fn head_loss(
        h: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Option<Tensor<Self, 1>>,
        targets: Tensor<Self, 1, Int>,
        softcap: Option<f64>,
    ) -> Tensor<Self, 1> {
        let rows = head_chunk_rows(h.dims()[0], w.dims()[1]);
        saving_head_loss(h, w, b, targets, rows, softcap)
    }

    /// Saves the logits in their own dtype (no float32 copy of 16-bit logits) and one
    /// log-sum-exp per position; the plain path keeps a float32 copy and the whole
    /// log-softmax as well, and differentiates through a gather and the cast.
    fn cross_entropy(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 1> {
        let logits = prim(logits);
        let targets = targets.into_primitive();
        let loss = match SavingCrossEntropy
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, lse) = B::cross_entropy_forward(
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
        // Grouped-query (4 query heads on 2 key heads), causal and local windows, with and
        // without soft-capped scores, blocks of 1, 3 (the last one short) and all 7
        // positions.
        let cases = [None, Some(3)]
            .into_iter()
            .flat_map(|w| [(w, None), (w, Some(0.7))]);
        for (window, softcap) in cases {
            let opts = AttnOpts {
                scale: 0.35,
                window,
                softcap,
            };
            let (q, k, v) = (
                random::<F>([2, 4, 7, 8]),
                random([2, 2, 7, 8]),
                random([2, 2, 7, 8]),
            );
            let w = random::<F>([2, 4, 7, 8]);
            let (out, [dq, dk, dv]) = plain(&q, &k, &v, &w, opts, false);
            for step in [1, 3, 7] {
                let (o, lse) = saving_forward(q.clone(), k.clone(), v.clone(), opts, step);
                assert!(
                    max_diff(o.clone(), out.clone()) < 1e-5,
                    "output, block {step}"
                );
                let [gq, gk, gv] = saving_backward(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    o,
                    lse,
                    w.clone(),
                    opts,
                    step,
                );
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

    /// The matmul op's gradients against Burn's own, with a broadcast batch dimension (its
    /// gradient must be summed back) and a frozen right operand (no gradient, nothing kept).
    #[test]
    fn kernel_matmul_gradients_equal_burns() {
        let a = random::<F>([2, 3, 5, 4]);
        let b = random::<F>([1, 3, 4, 6]);
        let w = random::<F>([2, 3, 5, 6]);
        let run = |kernel: bool, frozen_b: bool| {
            let x = Tensor::<A, 4>::from_inner(a.clone()).require_grad();
            let mut y = Tensor::<A, 4>::from_inner(b.clone().swap_dims(2, 3).swap_dims(2, 3));
            if !frozen_b {
                y = y.require_grad();
            }
            let out = if kernel {
                <A as Kernels>::matmul(x.clone(), y.clone())
            } else {
                x.clone().matmul(y.clone())
            };
            let g = (out.clone() * Tensor::from_inner(w.clone()))
                .sum()
                .backward();
            (out.inner(), x.grad(&g), y.grad(&g))
        };
        for frozen_b in [false, true] {
            let (o1, ga1, gb1) = run(true, frozen_b);
            let (o2, ga2, gb2) = run(false, frozen_b);
            assert!(max_diff(o1, o2) < 1e-6);
            assert!(max_diff(ga1.unwrap(), ga2.unwrap()) < 1e-5);
            assert_eq!(gb1.is_some(), !frozen_b);
            if let (Some(g1), Some(g2)) = (gb1, gb2) {
                assert_eq!(g1.dims(), [1, 3, 4, 6]);
                assert!(max_diff(g1, g2) < 1e-5);
            }
        }
    }

    /// The activation derivatives written out (the GPU's path for SiLU and tanh-GELU; GELU
    /// and ReLU for completeness) against Burn's autodiff of the plain activations, and
    /// the training backend's activation op against the same.
    /// The gated MLP op (one `[g | u]` input) against Burn's autodiff of `act(g) · u` on two
    /// separate inputs: values and both halves of the gradient.
    #[test]
    fn gated_op_equals_burns_autodiff_of_the_two_halves() {
        let (g, u) = (random::<F>([2, 3, 5, 6]) * 3.0, random::<F>([2, 3, 5, 6]));
        let w = random::<F>([2, 3, 5, 6]);
        // SiLU and tanh-GELU on the CPU backend's row kernels, the others in Burn operations.
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::Gelu,
            Activation::Relu,
        ] {
            let ga = Tensor::<A, 4>::from_inner(g.clone()).require_grad();
            let ua = Tensor::<A, 4>::from_inner(u.clone()).require_grad();
            let want = ops::plain_activation(ga.clone(), act) * ua.clone();
            let grads = (want.clone() * Tensor::from_inner(w.clone()))
                .sum()
                .backward();
            let want_dx = Tensor::cat(vec![ga.grad(&grads).unwrap(), ua.grad(&grads).unwrap()], 3);

            let x = Tensor::<A, 4>::from_inner(Tensor::cat(vec![g.clone(), u.clone()], 3))
                .require_grad();
            let got = <A as Kernels>::gated(x.clone(), act);
            assert!(
                max_diff(got.clone().inner(), want.inner()) < 1e-5,
                "{act:?}"
            );
            let grads = (got * Tensor::from_inner(w.clone())).sum().backward();
            let dx = x.grad(&grads).expect("a gradient");
            assert_eq!(dx.dims(), [2, 3, 5, 12]);
            assert!(max_diff(dx, want_dx) < 1e-5, "{act:?} gradient");
        }
    }

    #[test]
    fn activation_derivatives_equal_burns_autodiff() {
        let x = random::<F>([2, 3, 5, 7]) * 4.0;
        let g = random::<F>([2, 3, 5, 7]);
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::Gelu,
            Activation::Relu,
        ] {
            let burn_grad = |kernel: bool| {
                let xa = Tensor::<A, 4>::from_inner(x.clone()).require_grad();
                let y = if kernel {
                    <A as Kernels>::activation(xa.clone(), act)
                } else {
                    ops::plain_activation(xa.clone(), act)
                };
                let out = y.clone().inner();
                let grads = (y * Tensor::from_inner(g.clone())).sum().backward();
                (out, xa.grad(&grads).expect("a gradient"))
            };
            let (plain_out, want) = burn_grad(false);
            let written = plain_activation_backward(x.clone(), g.clone(), act);
            assert!(
                max_diff(written, want.clone()) < 1e-5,
                "{act:?} written out"
            );
            let (out, grad) = burn_grad(true);
            assert!(
                max_diff(out, plain_out) < 1e-6,
                "{act:?} training op's values"
            );
            assert!(max_diff(grad, want) < 1e-5, "{act:?} training op");
        }
    }

    /// The norms' input gradient against Burn's autodiff of the plain norms; a weight that
    /// wants a gradient takes Burn's path and gets one.
    #[test]
    fn norm_gradients_equal_burns_and_trainable_weights_still_get_theirs() {
        let dev = Default::default();
        let x = Tensor::<F, 3>::random([2, 5, 16], Distribution::Normal(1.0, 2.0), &dev);
        let w = Tensor::<F, 1>::random([16], Distribution::Normal(0.0, 1.0), &dev);
        let b = Tensor::<F, 1>::random([16], Distribution::Normal(0.0, 1.0), &dev);
        let g = Tensor::<F, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &dev);
        for rms in [false, true] {
            let run = |kernel: bool, train_w: bool| {
                let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
                let mut wa = Tensor::<A, 1>::from_inner(w.clone());
                if train_w {
                    wa = wa.require_grad();
                }
                let ba = Tensor::<A, 1>::from_inner(b.clone());
                let y = match (kernel, rms) {
                    (true, true) => <A as Kernels>::rms_norm(xa.clone(), wa.clone(), 1e-5),
                    (true, false) => <A as Kernels>::layer_norm(xa.clone(), wa.clone(), ba, 1e-5),
                    (false, true) => ops::plain_rms_norm(xa.clone(), wa.clone(), 1e-5),
                    (false, false) => ops::plain_layer_norm(xa.clone(), wa.clone(), ba, 1e-5),
                };
                let grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
                let y: Tensor<F, 4> = y.inner().unsqueeze();
                let dx: Tensor<F, 4> = xa.grad(&grads).expect("dx").unsqueeze();
                (y, dx, wa.grad(&grads))
            };
            let (y0, dx0, _) = run(false, false);
            let (y1, dx1, dw1) = run(true, false);
            // A few float32 roundings of the largest output (the inputs are unseeded: |y|
            // reaches 5 to 10, where one rounding step is 5e-7 to 1e-6).
            let scale = y0.clone().abs().max().into_scalar().max(1.0);
            let diff = max_diff(y0, y1);
            assert!(
                diff < 1e-6 * scale,
                "rms {rms}: output {diff:e} (|y| ≤ {scale})"
            );
            assert!(max_diff(dx0, dx1) < 1e-5, "rms {rms}: dx");
            assert!(dw1.is_none(), "rms {rms}: a frozen weight got a gradient");
            let (_, dx2, dw2) = run(true, true);
            let (_, dx3, dw3) = run(false, true);
            assert!(max_diff(dx2, dx3) < 1e-5);
            let (dw2, dw3) = (dw2.expect("dw"), dw3.expect("dw"));
            assert!((dw2 - dw3).abs().max().into_scalar() < 1e-5);
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
    fn head_chunks_are_equal_and_bounded() {
        assert_eq!(head_chunk_rows(8192, 32_000), 512);
        assert_eq!(head_chunk_rows(1024, 49_152), 256);
        assert_eq!(head_chunk_rows(4096, 50_272), 316);
        // Few rows or a huge vocabulary: one chunk, or chunks of the minimum.
        assert_eq!(head_chunk_rows(10, 50_000), 10);
        assert_eq!(head_chunk_rows(1000, 1 << 24), 250);
        assert_eq!(head_chunk_rows(0, 100), 1);
    }

    /// The LM head's loss by uneven chunks, with and without a bias, under autodiff (the
    /// gradient computed during the forward pass) and on the plain backend, against the
    /// whole logits through Burn's autodiff.
    #[test]
    fn head_loss_by_chunks_equals_the_whole_logits() {
        let dev = Default::default();
        let (n, d, v) = (7, 5, 13);
        let h = Tensor::<F, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<F, 2>::random([d, v], Distribution::Normal(0.0, 1.0), &dev);
        let bias = Tensor::<F, 1>::random([v], Distribution::Normal(0.0, 1.0), &dev);
        let targets = Tensor::<F, 1, Int>::from_data(
            TensorData::new(vec![0i64, 3, 12, 7, 7, 1, 2], [n]),
            &dev,
        );
        // With a soft cap the reference differentiates Burn's tanh.
        let cases = [None, Some(bias)]
            .into_iter()
            .flat_map(|b| [(b.clone(), None), (b, Some(1.5))]);
        for (b, softcap) in cases {
            let run = |rows: Option<usize>| {
                let x = Tensor::<A, 2>::from_inner(h.clone()).require_grad();
                let wa = Tensor::<A, 2>::from_inner(w.clone());
                let ba = b.clone().map(Tensor::<A, 1>::from_inner);
                let t = Tensor::<A, 1, Int>::from_inner(targets.clone());
                let loss = match rows {
                    Some(rows) => saving_head_loss(x.clone(), wa, ba, t, rows, softcap),
                    None => {
                        let logits = soft_capped(head_logits(x.clone(), &wa, &ba), softcap);
                        ops::plain_cross_entropy(logits.unsqueeze::<3>(), t.unsqueeze::<2>())
                    }
                };
                // A non-unit upstream gradient, as under loss scaling.
                let grads = (loss.clone() * 3.0).backward();
                let g = x.grad(&grads).expect("a gradient");
                (loss.inner().into_scalar(), g)
            };
            let (want, want_g) = run(None);
            for rows in [1, 3, 7, 100] {
                let (got, got_g) = run(Some(rows));
                assert!((got - want).abs() < 1e-5, "rows {rows}: {got} vs {want}");
                let diff: f32 = (got_g - want_g.clone()).abs().max().into_scalar();
                assert!(diff < 1e-6, "rows {rows}: gradient differs by {diff}");
                let plain: f32 = chunked_head_loss(
                    h.clone(),
                    w.clone(),
                    b.clone(),
                    targets.clone(),
                    rows,
                    softcap,
                )
                .into_scalar();
                assert!(
                    (plain - want).abs() < 1e-5,
                    "rows {rows}, plain: {plain} vs {want}"
                );
            }
            // Without a tracked input, no gradient is computed and the loss is the same.
            let x = Tensor::<A, 2>::from_inner(h.clone());
            let loss = saving_head_loss(
                x,
                Tensor::from_inner(w.clone()),
                b.clone().map(Tensor::from_inner),
                Tensor::from_inner(targets.clone()),
                3,
                softcap,
            );
            assert!((loss.inner().into_scalar() - want).abs() < 1e-5);
        }
    }

    #[test]
    fn device_masks_block_later_and_far_keys() {
        let dev = Default::default();
        // Positions 2 and 3 of a block, stacked for two query heads (rows 2, 3, 2, 3),
        // against keys 1..4 with a window of 2.
        let m: Vec<bool> = stacked_mask::<F>(2, 2, 4, 1, 3, Some(2), &dev)
            .into_data()
            .to_vec()
            .unwrap();
        #[rustfmt::skip]
        let want = [
            // keys 1      2      3
            false, false, true, // position 2 sees 1 and 2
            true,  false, false, // position 3 sees 2 and 3
            false, false, true,
            true,  false, false,
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn blocks_cover_the_causal_triangle_and_local_windows() {
        // Four blocks on long sequences, never under 128 positions, within the budget.
        assert_eq!(block_positions(256, 1024), 256);
        assert_eq!(block_positions(36, 276), 128);
        assert_eq!(block_positions(4, 100), 100);
        // The memory budget wins over the minimum: 64 Mi scores / (1024 heads × 4096 keys).
        assert_eq!(block_positions(1024, 4096), 16);
        // Keys a block sees: causal prefix, or the window reaching back from its start.
        assert_eq!(key_range(0, 128, None), (0, 128));
        assert_eq!(key_range(256, 128, None), (0, 384));
        assert_eq!(key_range(256, 128, Some(256)), (1, 383));
        assert_eq!(key_range(10, 5, Some(256)), (0, 15));
    }
}
