//! The ops layer: the handful of operations every architecture is written against.
//!
//! Architectures never call Burn's matmul, softmax or norm code directly; they call these.
//! A faster kernel (cuBLAS linear, flash attention, fused norms) replaces the body of one
//! function here and every architecture picks it up.
//!
//! Numerics follow transformers: norms and attention softmax are computed in float32 even
//! when the frozen weights run in bf16/f16, then cast back to the compute dtype.

use std::cell::{Cell, RefCell};
use std::ops::Range;

use anyhow::{Result, anyhow};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData, activation, backend::Backend};

use super::config::{Activation, RopeScaling, Rotary, RotaryStyle};
use super::kernels::{Kernels, masked_scores};
use super::weights::Weights;

/// Where weights come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A safetensors checkpoint.
    Checkpoint(&'a Weights),
    /// Random weights of the right shapes, made on the device (benchmarks: no download).
    /// `tied`: the LM head shares the embedding.
    Random { tied: bool },
}

/// Builds ops from a weight source on one device in one compute dtype.
pub struct Loader<'a, B: Backend> {
    pub source: Source<'a>,
    pub device: B::Device,
    /// Dtype of the frozen weights and activations (bf16/f16 on GPU, f32 on CPU).
    pub dtype: DType,
    /// Elements loaded so far (the model's parameter count once built).
    pub loaded: Cell<usize>,
}

/// Prefixes some checkpoints omit (`openai-community/gpt2` stores `h.0…`, not `transformer.h.0…`).
pub const OPTIONAL_PREFIXES: &[&str] = &["transformer.", "model.", "gpt_neox."];

/// Where multimodal checkpoints keep their text model's tensors: transformers 5's layout
/// (`model.language_model.…`) and 4's (`language_model.model.…`).
const NESTED_TEXT_MODEL: &[(&str, &str)] = &[
    ("model.", "model.language_model."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
];

/// The name under which `weights` store the tensor softtune calls `name` (the name in
/// transformers' class layout), allowing for an omitted class prefix and for a text model
/// nested in a multimodal checkpoint.
pub fn stored_name(weights: &Weights, name: &str) -> Option<String> {
    if weights.contains(name) {
        return Some(name.to_string());
    }
    let stripped = OPTIONAL_PREFIXES
        .iter()
        .filter_map(|p| name.strip_prefix(p));
    let nested = NESTED_TEXT_MODEL
        .iter()
        .filter_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")));
    stripped
        .map(str::to_string)
        .chain(nested)
        .find(|s| weights.contains(s))
}

/// Whether a stored tensor belongs to a multimodal checkpoint's other towers (Gemma 3's
/// vision tower and projector), which softtune does not load.
pub fn outside_text_model(stored: &str) -> bool {
    let name = stored.strip_prefix("model.").unwrap_or(stored);
    name.starts_with("vision_tower.") || name.starts_with("multi_modal_projector.")
}

impl<'a, B: Kernels> Loader<'a, B> {
    pub fn new(source: Source<'a>, device: &B::Device, dtype: DType) -> Self {
        Self {
            source,
            device: device.clone(),
            dtype,
            loaded: Cell::new(0),
        }
    }

    /// The stored name for `name` ([`stored_name`]).
    pub fn resolve(&self, name: &str) -> Option<String> {
        let weights = match self.source {
            Source::Checkpoint(w) => w,
            Source::Random { tied } => {
                let head = name.starts_with("lm_head.") || name.starts_with("embed_out.");
                return (!(tied && head)).then(|| name.to_string());
            }
        };
        stored_name(weights, name)
    }

    fn load<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>> {
        let stored = self.name(name)?;
        self.loaded
            .set(self.loaded.get() + shape.iter().product::<usize>());
        match self.source {
            Source::Checkpoint(w) => w.tensor(&stored, shape, &self.device, dtype),
            Source::Random { .. } => {
                // Norm weights near 1, everything else small: finite activations at any depth.
                let is_norm_weight = D == 1
                    && stored.ends_with(".weight")
                    && (stored.contains("norm") || stored.contains("ln"));
                let t: Tensor<B, D> = if is_norm_weight {
                    Tensor::ones(shape, (&self.device, DType::F32))
                } else {
                    Tensor::random(
                        shape,
                        Distribution::Normal(0.0, 0.02),
                        (&self.device, DType::F32),
                    )
                };
                Ok(t.cast(dtype))
            }
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn name(&self, name: &str) -> Result<String> {
        self.resolve(name).ok_or_else(|| {
            anyhow!("the checkpoint has no tensor `{name}`; is config.json from the same model?")
        })
    }

    /// A tensor in the compute dtype.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        self.load(name, shape, self.dtype)
    }

    /// A tensor kept in float32 (norm parameters).
    pub fn tensor_f32<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>> {
        self.load(name, shape, DType::F32)
    }

    /// `nn.Linear`: weight stored `[out, in]`, optional bias `[out]`.
    pub fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let w = self.tensor(&format!("{prefix}.weight"), [d_out, d_in])?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(Linear {
            w: B::linear_weight(w),
            b,
        })
    }

    /// Several `nn.Linear` layers of one input as one: their `[out_i, in]` weights stacked
    /// into `[Σ out_i, in]`, so that one product computes all their outputs side by side
    /// (`parts`: each layer's prefix and output size).
    pub fn stacked_linear(&self, parts: &[(&str, usize)], d_in: usize) -> Result<Linear<B>> {
        let ws = parts
            .iter()
            .map(|(prefix, d_out)| self.tensor(&format!("{prefix}.weight"), [*d_out, d_in]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear {
            w: B::linear_weight(Tensor::cat(ws, 0)),
            b: None,
        })
    }

    /// transformers' GPT-2 `Conv1D`: weight stored `[in, out]`, bias `[out]`.
    pub fn conv1d(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        Ok(Linear {
            w: self.tensor(&format!("{prefix}.weight"), [d_in, d_out])?,
            b: Some(self.tensor(&format!("{prefix}.bias"), [d_out])?),
        })
    }

    pub fn layer_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            w: self.tensor_f32(&format!("{prefix}.weight"), [dim])?,
            b: self.tensor_f32(&format!("{prefix}.bias"), [dim])?,
            eps,
        })
    }

    /// A LayerNorm whose checkpoint has no bias (Cohere's).
    pub fn layer_norm_without_bias(
        &self,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            w: self.tensor_f32(&format!("{prefix}.weight"), [dim])?,
            b: Tensor::zeros([dim], (&self.device, DType::F32)),
            eps,
        })
    }

    /// Gemma's RMSNorm, which scales by `1 + weight`: the offset is added in float32.
    pub fn offset_rms_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>> {
        let w = self.tensor_f32(&format!("{prefix}.weight"), [dim])?;
        Ok(RmsNorm {
            w: (w + 1.0).cast(self.dtype),
            eps,
        })
    }

    pub fn rms_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            w: self.tensor(&format!("{prefix}.weight"), [dim])?,
            eps,
        })
    }
}

/// `y = x W + b` with `W` held as `[in, out]` (a transposed view of `nn.Linear`'s storage).
#[derive(Clone)]
pub struct Linear<B: Backend> {
    pub w: Tensor<B, 2>,
    pub b: Option<Tensor<B, 1>>,
}

impl<B: Kernels> Linear<B> {
    pub fn d_in(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.w.dims()[1]
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let y = B::matmul(x.reshape([b * s, d]), self.w.clone());
        let y = match &self.b {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, s, self.d_out()])
    }
}

/// LayerNorm over the last axis, computed in float32.
#[derive(Clone)]
pub struct LayerNorm<B: Backend> {
    pub w: Tensor<B, 1>,
    pub b: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Kernels> LayerNorm<B> {
    /// The backend picks how ([`Kernels::layer_norm`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        <B as Kernels>::layer_norm(x, self.w.clone(), self.b.clone(), self.eps)
    }
}

/// LayerNorm as plain Burn operations.
pub fn plain_layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean = x.clone().mean_dim(2);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(2);
    let y = centered * (var + eps).sqrt().recip();
    let y = y * w.unsqueeze::<3>() + b.unsqueeze::<3>();
    y.cast(dtype)
}

/// Llama's RMSNorm: `w * (x * rsqrt(mean(x²) + eps))`, the normalisation in float32.
#[derive(Clone)]
pub struct RmsNorm<B: Backend> {
    pub w: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Kernels> RmsNorm<B> {
    /// The backend picks how ([`Kernels::rms_norm`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::rms_norm(x, self.w.clone(), self.eps)
    }
}

/// RMSNorm as plain Burn operations.
pub fn plain_rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let ms = x.clone().powi_scalar(2).mean_dim(2);
    let y = (x * (ms + eps).sqrt().recip()).cast(dtype);
    y * w.unsqueeze::<3>()
}

/// The MLP's non-linearity; the backend picks how ([`Kernels::activation`]).
pub fn activate<B: Kernels, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    B::activation(x, act)
}

/// A gated MLP's hidden values, `act(g) · u` of `x = [g | u]` ([`Kernels::gated`]).
pub fn gated<B: Kernels, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    B::gated(x, act)
}

/// The non-linearities as plain Burn operations.
pub fn plain_activation<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    act: Activation,
) -> Tensor<B, D> {
    match act {
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Relu => activation::relu(x),
        Activation::Silu => activation::silu(x),
    }
}

/// Rows of an embedding table: `ids [b, t]` → `[b, t, d]`.
pub fn embedding<B: Backend>(table: &Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, t] = ids.dims();
    let d = table.dims()[1];
    table
        .clone()
        .select(0, ids.reshape([b * t]))
        .reshape([b, t, d])
}

/// `[b, s, h·hd]` → `[b, h, s, hd]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads]).swap_dims(1, 2)
}

/// `[b, h, s, hd]` → `[b, s, h·hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, hd] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * hd])
}

/// Rotary position embedding for a range of positions (from 0, or after a [`KvCache`]'s), as
/// `x·cos + (x·P)·sin` over whole heads.
///
/// `P` is the signed permutation that pairs each rotating feature with its partner (the
/// other half for the rotate-half style, the neighbour for the interleaved one); features
/// past `dims` have `cos = 1`, `sin = 0` and no partner, so partial rotary needs no slicing.
/// Every operation is contiguous: the heads are rotated in their `[b, s, h, hd]` layout,
/// and `x·P` is a small matmul (exact: one ±1 term per output).
pub struct RotaryTables<B: Backend> {
    /// `[1, s, 1, hd]`
    cos: Tensor<B, 4>,
    /// `[1, s, 1, hd]`
    sin: Tensor<B, 4>,
    /// `[hd, hd]`
    partner: Tensor<B, 2>,
    dims: usize,
    /// `(heads, cos, sin)` widened to whole sequences, see `per_head`.
    per_head: RefCell<Vec<PerHead<B>>>,
}

/// `(heads, cos, sin)`: a rotary table widened for `heads` heads.
type PerHead<B> = (usize, Tensor<B, 2>, Tensor<B, 2>);

/// Inverse frequencies `1 / theta^(2i/dims)`, with `rope_scaling` applied.
/// `s`: the sequence length (LongRoPE picks its long factors past the original context).
fn inv_freq(r: &Rotary, s: usize) -> Vec<f64> {
    let half = r.dims / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / r.theta.powf((2 * i) as f64 / r.dims as f64))
        .collect();
    match r.scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::LongRope {
            ref short,
            ref long,
            ..
        } => {
            let ext = if long_factors(r, s) { long } else { short };
            base.into_iter().zip(ext).map(|(f, e)| f / e).collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Whether LongRoPE rotates a sequence of `s` positions with its long factors (past the
/// original context, as transformers switches).
fn long_factors(r: &Rotary, s: usize) -> bool {
    matches!(r.scaling, RopeScaling::LongRope { original_max_position_embeddings, .. }
        if s > original_max_position_embeddings)
}

/// Whether keys rotated for a sequence of `before` positions are rotated the same way in
/// one of `after` positions (not when LongRoPE switches to its long factors in between:
/// every position's rotation then changes).
pub fn rotation_holds(r: &Rotary, before: usize, after: usize) -> bool {
    long_factors(r, before) == long_factors(r, after)
}

impl<B: Kernels> RotaryTables<B> {
    /// Tables for heads of `head_dim` features at `positions` (`0..s` for a whole
    /// sequence; the new ones after a [`KvCache`]'s). LongRoPE's factors follow the
    /// sequence's length, `positions.end`.
    pub fn new(
        r: &Rotary,
        head_dim: usize,
        positions: Range<usize>,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        // transformers computes the angles in float32; so do we.
        let freqs: Vec<f32> = inv_freq(r, positions.end)
            .into_iter()
            .map(|f| f as f32)
            .collect();
        let s = positions.len();
        // LongRoPE scales cos and sin of the rotating features.
        let amplitude = match r.scaling {
            RopeScaling::LongRope {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        };
        let (hd, rot, half) = (head_dim, r.dims.min(head_dim), freqs.len());
        // Frequency of feature j: rotate-half uses [f0..f_{h-1}, f0..f_{h-1}], interleaved
        // pairs (2i, 2i+1) with frequency i.
        let freq_of = |j: usize| match r.style {
            RotaryStyle::Half => j % half,
            RotaryStyle::Interleaved => j / 2,
        };
        let mut cos = Vec::with_capacity(s * hd);
        let mut sin = Vec::with_capacity(s * hd);
        for p in positions {
            for j in 0..hd {
                if j < rot {
                    let angle = p as f32 * freqs[freq_of(j)];
                    cos.push(angle.cos() * amplitude);
                    sin.push(angle.sin() * amplitude);
                } else {
                    cos.push(1.0);
                    sin.push(0.0);
                }
            }
        }
        // (x·P)[j] = Σ_k x[k]·P[k][j]: rotate-half gives -x[j+half] below half and
        // x[j-half] above; interleaved gives -x[2i+1] at 2i and x[2i] at 2i+1.
        let mut partner = vec![0f32; hd * hd];
        for j in 0..rot {
            let (k, sign) = match r.style {
                RotaryStyle::Half if j < rot / 2 => (j + rot / 2, -1.0),
                RotaryStyle::Half => (j - rot / 2, 1.0),
                RotaryStyle::Interleaved if j % 2 == 0 => (j + 1, -1.0),
                RotaryStyle::Interleaved => (j - 1, 1.0),
            };
            partner[k * hd + j] = sign;
        }
        let table = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [1, s, 1, hd]), (device, DType::F32))
                .cast(dtype)
        };
        Self {
            cos: table(cos),
            sin: table(sin),
            partner: Tensor::<B, 2>::from_data(
                TensorData::new(partner, [hd, hd]),
                (device, DType::F32),
            )
            .cast(dtype),
            dims: rot,
            per_head: RefCell::new(Vec::new()),
        }
    }

    /// The tables repeated for `h` heads, `[1, s·h·hd]` (made once per head count).
    fn per_head(&self, h: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let mut made = self.per_head.borrow_mut();
        if let Some((_, c, s)) = made.iter().find(|(n, _, _)| *n == h) {
            return (c.clone(), s.clone());
        }
        let [_, s, _, hd] = self.cos.dims();
        let widen = |t: &Tensor<B, 4>| t.clone().expand([1, s, h, hd]).reshape([1, s * h * hd]);
        let (c, sn) = (widen(&self.cos), widen(&self.sin));
        made.push((h, c.clone(), sn.clone()));
        (c, sn)
    }

    /// Rotates the first `dims` features of every head of `x [b, h, s, hd]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.dims == 0 {
            return x;
        }
        let [b, h, s, hd] = x.dims();
        // Back to the projection's own [b, s, h, hd] layout (contiguous after split_heads),
        // flattened per sequence so the tables broadcast over the batch alone (the CPU
        // backend's fast broadcast path; a [1, s, 1, hd] table takes its slow strided one).
        let x = x.swap_dims(1, 2).reshape([b, s * h * hd]);
        let turned = B::matmul(x.clone().reshape([b * s * h, hd]), self.partner.clone())
            .reshape([b, s * h * hd]);
        let (cos, sin) = self.per_head(h);
        let y = x * cos + turned * sin;
        y.reshape([b, s, h, hd]).swap_dims(1, 2)
    }
}

/// Applies `f` to each head of `x [b, s, heads · head_dim]` as a row of its own: the
/// tensor is viewed as `[b, s · heads, head_dim]` and back (no copy for a fresh product).
pub fn per_head<B: Backend>(
    x: Tensor<B, 3>,
    head_dim: usize,
    f: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, s, width] = x.dims();
    f(x.reshape([b, s * width / head_dim, head_dim])).reshape([b, s, width])
}

/// Causal self-attention settings.
#[derive(Debug, Clone, Copy)]
pub struct AttnOpts {
    /// Multiplier of `q·k` (1/√hd for most models, 1 for GPT-Neo).
    pub scale: f64,
    /// Local attention: query i sees key j iff `0 <= i - j < window`.
    pub window: Option<usize>,
    /// Soft-capping of the scaled scores (Gemma 2's `attn_logit_softcapping`):
    /// `c · tanh(x / c)` before the mask and the softmax.
    pub softcap: Option<f64>,
}

/// Causal attention: `q [b, h, s, hd]`, `k`/`v [b, kvh, s, hd]` (grouped-query when
/// `kvh < h`) → `[b, h, s, hd]`. Scores and softmax in float32. The backend picks how
/// ([`Kernels::causal_attention`]).
pub fn causal_attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    B::causal_attention(q, k, v, opts)
}

/// Causal attention as plain Burn operations (under autodiff Burn keeps the scores and
/// probabilities for the backward pass).
pub fn plain_attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    attention_after(q, k, v, 0, opts)
}

/// Attention of queries at positions `p0..p0 + s` (`q [b, h, s, hd]`) to keys and values
/// at positions `0..p0 + s` (`[b, kvh, p0 + s, hd]`), causal (and windowed) by position:
/// [`plain_attention`] when `p0` is 0, the new tokens' attention after a [`KvCache`]'s
/// positions otherwise.
///
/// Grouped-query attention stacks the `h / kvh` query heads of each key head along the
/// sequence (`[b, kvh, rep·s, hd]`) instead of copying keys and values `rep` times: fewer,
/// larger matmuls and no widened copies to differentiate through.
fn attention_after<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    p0: usize,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let rep = h / kvh;
    let dtype = q.dtype();
    // Head kv·rep + r is query row r·s + i of group kv.
    let q = q.reshape([b, kvh, rep * s, hd]);
    let scores = masked_scores(q, k.swap_dims(2, 3), p0, s, 0, opts);
    let probs = activation::softmax(scores, 3);
    B::matmul(probs.cast(dtype), v).reshape([b, h, s, hd])
}

/// The keys and values of the positions a model has read, layer by layer, so that the
/// next token of a generation runs the model over that token alone (positions
/// `len()..`) instead of the whole text again. Inference only.
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values `[b, kvh, len, hd]` after the rotary.
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// Positions read so far: the next input starts at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counts the `s` positions every layer has just added.
    pub(super) fn advance(&mut self, s: usize) {
        self.len += s;
    }

    /// Texts (batch rows) held.
    pub fn rows(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(0, |(k, _)| k.dims()[0])
    }

    /// Copies a cache of one text `n` times: texts that share their start read it once.
    pub fn repeat(&mut self, n: usize) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().repeat_dim(0, n);
            *v = v.clone().repeat_dim(0, n);
        }
    }

    /// Keeps the texts `rows` (batch rows, in this order) and drops the others: texts that
    /// have ended stop costing work.
    pub fn keep(&mut self, rows: &[usize]) {
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else {
            return;
        };
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
    }
}

impl<B: Kernels> KvCache<B> {
    /// Layer `layer`'s attention for the new positions: their keys and values join the
    /// layer's cached ones, and their queries see both.
    fn attend(
        &mut self,
        layer: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        opts: AttnOpts,
    ) -> Tensor<B, 4> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        match self.len {
            0 => causal_attention(q, k, v, opts),
            p0 => attention_after(q, k, v, p0, opts),
        }
    }
}

/// Where a model's layers are reading: a whole sequence from position 0, or the new
/// positions after a [`KvCache`]'s.
pub type Cache<'a, B> = Option<&'a mut KvCache<B>>;

/// The first position of the input (0 without a cache).
pub fn first_position<B: Backend>(cache: &Cache<'_, B>) -> usize {
    cache.as_ref().map_or(0, |c| c.len())
}

/// Layer `layer`'s causal attention ([`causal_attention`]), after the positions `cache`
/// holds when there is one.
pub fn attend<B: Kernels>(
    cache: Cache<'_, B>,
    layer: usize,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    match cache {
        Some(c) => c.attend(layer, q, k, v, opts),
        None => causal_attention(q, k, v, opts),
    }
}

/// Mean next-token loss of the LM head `head` on hidden states `h [b, t, d]` against
/// `targets [b, t]`: the cross-entropy of `head.forward(h)` in float32, as
/// [`Kernels::cross_entropy`] computes it, without a whole `[b, t, V]` logits tensor
/// ([`Kernels::head_loss`]); with `softcap`, of the soft-capped logits.
pub fn head_loss<B: Kernels>(
    head: &Linear<B>,
    h: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    softcap: Option<f64>,
) -> Tensor<B, 1> {
    let [b, t, d] = h.dims();
    B::head_loss(
        h.reshape([b * t, d]),
        head.w.clone(),
        head.b.clone(),
        targets.reshape([b * t]),
        softcap,
    )
}

/// Cross-entropy as plain Burn operations.
pub fn plain_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let logp = activation::log_softmax(logits.cast(DType::F32), 2);
    let picked = logp.gather(2, targets.unsqueeze_dim::<3>(2));
    picked.mean().neg()
}
