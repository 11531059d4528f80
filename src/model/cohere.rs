//! Cohere family (`cohere`: Command R, Aya): one mean-centred norm without a bias feeding
//! attention and the MLP in parallel (`x + attn(ln(x)) + mlp(ln(x))`), interleaved rotary
//! (GPT-J's pairing), grouped-query attention with optional per-head norms (`use_qk_norm`,
//! one weight per head), a SwiGLU MLP, a tied head and `logit_scale` on the logits.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{DType, Tensor, backend::Backend};

use super::config::{ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader, RotaryTables};

/// `use_qk_norm`: a LayerNorm over each head's features, with a weight per head.
struct HeadNorm<B: Backend> {
    /// Unit weight, zero bias: the normalisation alone.
    norm: LayerNorm<B>,
    /// `[1, 1, heads · head_dim]`, in the compute dtype.
    w: Tensor<B, 3>,
}

impl<B: Kernels> HeadNorm<B> {
    fn load(ld: &Loader<B>, name: &str, heads: usize, hd: usize, eps: f64) -> Result<Self> {
        let w = ld.tensor_f32(&format!("{name}.weight"), [heads, hd])?;
        Ok(Self {
            norm: LayerNorm {
                w: Tensor::ones([hd], (&ld.device, DType::F32)),
                b: Tensor::zeros([hd], (&ld.device, DType::F32)),
                eps,
            },
            w: w.reshape([1, 1, heads * hd]).cast(ld.dtype),
        })
    }

    /// `x [b, s, heads · head_dim]`.
    fn forward(&self, x: Tensor<B, 3>, hd: usize) -> Tensor<B, 3> {
        ops::per_head(x, hd, |t| self.norm.forward(t)) * self.w.clone()
    }
}

struct Block<B: Backend> {
    ln: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    qk_norm: Option<(HeadNorm<B>, HeadNorm<B>)>,
    /// `gate_proj` and `up_proj` as one product.
    gate_up: Linear<B>,
    down: Linear<B>,
}

pub struct Cohere<B: Backend> {
    cfg: ModelConfig,
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    logit_scale: f64,
}

impl<B: Kernels> Cohere<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::Cohere {
            attention_bias,
            qk_norm,
            logit_scale,
        } = cfg.spec
        else {
            unreachable!("cohere loader called with another architecture")
        };
        let (h, eps, hd) = (cfg.hidden, cfg.norm_eps, cfg.head_dim);
        let q_dim = cfg.n_heads * hd;
        let kv_dim = cfg.n_kv_heads * hd;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let bias = attention_bias;
            blocks.push(Block {
                ln: ld.layer_norm_without_bias(&format!("{p}.input_layernorm"), h, eps)?,
                q: ld.linear(&format!("{a}.q_proj"), h, q_dim, bias)?,
                k: ld.linear(&format!("{a}.k_proj"), h, kv_dim, bias)?,
                v: ld.linear(&format!("{a}.v_proj"), h, kv_dim, bias)?,
                o: ld.linear(&format!("{a}.o_proj"), q_dim, h, bias)?,
                qk_norm: match qk_norm {
                    true => Some((
                        HeadNorm::load(ld, &format!("{a}.q_norm"), cfg.n_heads, hd, eps)?,
                        HeadNorm::load(ld, &format!("{a}.k_norm"), cfg.n_kv_heads, hd, eps)?,
                    )),
                    false => None,
                },
                gate_up: ld.stacked_linear(
                    &[
                        (&format!("{p}.mlp.gate_proj"), cfg.intermediate),
                        (&format!("{p}.mlp.up_proj"), cfg.intermediate),
                    ],
                    h,
                )?,
                down: ld.linear(&format!("{p}.mlp.down_proj"), cfg.intermediate, h, false)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            blocks,
            norm: ld.layer_norm_without_bias("model.norm", h, eps)?,
            logit_scale,
        })
    }

    /// Final hidden states, already multiplied by `logit_scale`: `(s·h)·Wᵀ = s·(h·Wᵀ)`, so
    /// the tied head needs no scaled copy of the embedding (exact for the powers of two
    /// the released checkpoints use).
    pub fn forward(&self, mut x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let p0 = ops::first_position(&cache);
        let s = x.dims()[1];
        let hd = self.cfg.head_dim;
        let rot = self
            .cfg
            .rotary
            .as_ref()
            .expect("cohere has rotary settings");
        let tables = RotaryTables::<B>::new(rot, hd, p0..p0 + s, &x.device(), x.dtype());
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let hn = blk.ln.forward(x.clone());
            let (mut q, mut k) = (blk.q.forward(hn.clone()), blk.k.forward(hn.clone()));
            if let Some((q_norm, k_norm)) = &blk.qk_norm {
                q = q_norm.forward(q, hd);
                k = k_norm.forward(k, hd);
            }
            let q = tables.apply(ops::split_heads(q, self.cfg.n_heads));
            let k = tables.apply(ops::split_heads(k, self.cfg.n_kv_heads));
            let v = ops::split_heads(blk.v.forward(hn.clone()), self.cfg.n_kv_heads);
            let opts = AttnOpts {
                scale,
                window: None,
                softcap: None,
            };
            let a = ops::attend(cache.as_deref_mut(), i, q, k, v, opts);
            let attn = blk.o.forward(ops::merge_heads(a));
            let mlp = blk
                .down
                .forward(ops::gated(blk.gate_up.forward(hn), self.cfg.activation));
            x = x + attn + mlp;
        }
        self.norm.forward(x).mul_scalar(self.logit_scale)
    }
}
