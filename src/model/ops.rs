//! The ops layer: the handful of operations every architecture is written against.
//!
//! Architectures never call Burn's matmul, softmax or norm code directly; they call these.
//! A faster kernel (cuBLAS linear, flash attention, fused norms) replaces the body of one
//! function here and every architecture picks it up.
//!
//! Numerics follow transformers: norms and attention softmax are computed in float32 even
//! when the frozen weights run in bf16/f16, then cast back to the compute dtype.

use std::cell::Cell;

use anyhow::{Result, anyhow};
use burn::tensor::{
    Bool, DType, Distribution, Int, Tensor, TensorData, activation, backend::Backend,
};

use super::config::{Activation, RopeScaling, Rotary, RotaryStyle};
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

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(source: Source<'a>, device: &B::Device, dtype: DType) -> Self {
        Self {
            source,
            device: device.clone(),
            dtype,
            loaded: Cell::new(0),
        }
    }

    /// The stored name for `name`, allowing for an omitted class prefix.
    pub fn resolve(&self, name: &str) -> Option<String> {
        let weights = match self.source {
            Source::Checkpoint(w) => w,
            Source::Random { tied } => {
                let head = name.starts_with("lm_head.") || name.starts_with("embed_out.");
                return (!(tied && head)).then(|| name.to_string());
            }
        };
        if weights.contains(name) {
            return Some(name.to_string());
        }
        OPTIONAL_PREFIXES
            .iter()
            .filter_map(|p| name.strip_prefix(p))
            .find(|s| weights.contains(s))
            .map(str::to_string)
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
            w: w.transpose(),
            b,
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

impl<B: Backend> Linear<B> {
    pub fn d_in(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.w.dims()[1]
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let y = x.reshape([b * s, d]).matmul(self.w.clone());
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

impl<B: Backend> LayerNorm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let y = centered * (var + self.eps).sqrt().recip();
        let y = y * self.w.clone().unsqueeze::<3>() + self.b.clone().unsqueeze::<3>();
        y.cast(dtype)
    }
}

/// Llama's RMSNorm: `w * (x * rsqrt(mean(x²) + eps))`, the normalisation in float32.
#[derive(Clone)]
pub struct RmsNorm<B: Backend> {
    pub w: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let ms = x.clone().powi_scalar(2).mean_dim(2);
        let y = (x * (ms + self.eps).sqrt().recip()).cast(dtype);
        y * self.w.clone().unsqueeze::<3>()
    }
}

pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
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

/// Rotary position embedding tables for positions `0..s`.
pub struct RotaryTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    style: RotaryStyle,
    dims: usize,
}

/// Inverse frequencies `1 / theta^(2i/dims)`, with `rope_scaling` applied.
fn inv_freq(r: &Rotary) -> Vec<f64> {
    let half = r.dims / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / r.theta.powf((2 * i) as f64 / r.dims as f64))
        .collect();
    match r.scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
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

impl<B: Backend> RotaryTables<B> {
    pub fn new(r: &Rotary, s: usize, device: &B::Device, dtype: DType) -> Self {
        // transformers computes the angles in float32; so do we.
        let freqs: Vec<f32> = inv_freq(r).into_iter().map(|f| f as f32).collect();
        let half = freqs.len();
        // Interleaved style pairs (2i, 2i+1) with frequency i; half style uses the frequency
        // table twice ([f0..f_{h-1}, f0..f_{h-1}]).
        let width = match r.style {
            RotaryStyle::Interleaved => half,
            RotaryStyle::Half => 2 * half,
        };
        let mut cos = Vec::with_capacity(s * width);
        let mut sin = Vec::with_capacity(s * width);
        for p in 0..s {
            for j in 0..width {
                let angle = p as f32 * freqs[j % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let mk = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, s, width]), (device, DType::F32))
                .cast(dtype)
        };
        Self {
            cos: mk(cos),
            sin: mk(sin),
            style: r.style,
            dims: r.dims,
        }
    }

    /// Rotates the first `dims` features of every head of `x [b, h, s, hd]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, s, hd] = x.dims();
        let r = self.dims;
        if r == 0 {
            return x;
        }
        let xr = if r < hd {
            x.clone().narrow(3, 0, r)
        } else {
            x.clone()
        };
        let rotated = match self.style {
            RotaryStyle::Half => {
                let x1 = xr.clone().narrow(3, 0, r / 2);
                let x2 = xr.clone().narrow(3, r / 2, r / 2);
                let rot = Tensor::cat(vec![x2.neg(), x1], 3);
                xr * self.cos.clone() + rot * self.sin.clone()
            }
            RotaryStyle::Interleaved => {
                let pairs = xr.reshape([b, h, s, r / 2, 2]);
                let xe = pairs.clone().narrow(4, 0, 1).reshape([b, h, s, r / 2]);
                let xo = pairs.narrow(4, 1, 1).reshape([b, h, s, r / 2]);
                let (c, sn) = (self.cos.clone(), self.sin.clone());
                let oe = xe.clone() * c.clone() - xo.clone() * sn.clone();
                let oo = xo * c + xe * sn;
                Tensor::stack::<5>(vec![oe, oo], 4).reshape([b, h, s, r])
            }
        };
        if r < hd {
            Tensor::cat(vec![rotated, x.narrow(3, r, hd - r)], 3)
        } else {
            rotated
        }
    }
}

/// Causal self-attention settings.
#[derive(Debug, Clone, Copy)]
pub struct AttnOpts {
    /// Multiplier of `q·k` (1/√hd for most models, 1 for GPT-Neo).
    pub scale: f64,
    /// Local attention: query i sees key j iff `0 <= i - j < window`.
    pub window: Option<usize>,
}

/// `[s, s]` mask, true where attention is forbidden.
fn causal_mask<B: Backend>(
    s: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let mut m = Vec::with_capacity(s * s);
    for i in 0..s {
        for j in 0..s {
            let blocked = j > i || window.is_some_and(|w| i - j >= w);
            m.push(blocked);
        }
    }
    Tensor::from_data(TensorData::new(m, [s, s]), device)
}

/// Causal attention: `q [b, h, s, hd]`, `k`/`v [b, kvh, s, hd]` (grouped-query when
/// `kvh < h`) → `[b, h, s, hd]`. Scores and softmax in float32.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    opts: AttnOpts,
) -> Tensor<B, 4> {
    let [b, h, s, hd] = q.dims();
    let kvh = k.dims()[1];
    let dtype = q.dtype();
    let (k, v) = if kvh == h {
        (k, v)
    } else {
        let rep = h / kvh;
        let widen = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, kvh, rep, s, hd])
                .reshape([b, h, s, hd])
        };
        (widen(k), widen(v))
    };
    let scores = q
        .cast(DType::F32)
        .matmul(k.cast(DType::F32).swap_dims(2, 3))
        * opts.scale;
    let mask = causal_mask::<B>(s, opts.window, &scores.device())
        .unsqueeze::<4>()
        .expand([b, h, s, s]);
    let probs = activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    probs.cast(dtype).matmul(v)
}

/// Mean next-token cross-entropy: `logits [b, t, V]` scored against `targets [b, t]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let logp = activation::log_softmax(logits.cast(DType::F32), 2);
    let picked = logp.gather(2, targets.unsqueeze_dim::<3>(2));
    picked.mean().neg()
}
