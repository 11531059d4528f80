//! Llama family (llama, mistral, qwen2, qwen3, phi3): RMSNorm, rotate-half RoPE with
//! `rope_theta` and `rope_scaling` (partial for some Phi models), grouped-query attention,
//! SwiGLU MLP, optional q/k/v and output biases (qwen2, `attention_bias`), qwen3's RMSNorm
//! over each query and key head, sliding windows where the config asks for them, tied or
//! untied head. The MLP's gate and up projections run as one product; Phi-3 stores them as
//! one (`gate_up_proj`), and q, k and v as one (`qkv_proj`).

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{Arch, ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, Linear, Loader, RmsNorm, RotaryTables};

/// The attention's input projections.
enum Qkv<B: Backend> {
    Separate {
        q: Linear<B>,
        k: Linear<B>,
        v: Linear<B>,
    },
    /// Phi-3's `qkv_proj`: `[q | k | v]` along the output features.
    Fused(Linear<B>),
}

impl<B: Kernels> Qkv<B> {
    /// `x [b, s, h]` → q, k and v, `[b, s, heads · head_dim]` each.
    fn forward(&self, x: Tensor<B, 3>, q_dim: usize) -> [Tensor<B, 3>; 3] {
        match self {
            Qkv::Separate { q, k, v } => [q.forward(x.clone()), k.forward(x.clone()), v.forward(x)],
            Qkv::Fused(qkv) => {
                let out = qkv.forward(x);
                let kv_dim = (out.dims()[2] - q_dim) / 2;
                [
                    out.clone().narrow(2, 0, q_dim),
                    out.clone().narrow(2, q_dim, kv_dim),
                    out.narrow(2, q_dim + kv_dim, kv_dim),
                ]
            }
        }
    }
}

struct Block<B: Backend> {
    ln_1: RmsNorm<B>,
    qkv: Qkv<B>,
    o: Linear<B>,
    /// qwen3: RMSNorm over each query head and each key head (before the rotary).
    qk_norm: Option<(RmsNorm<B>, RmsNorm<B>)>,
    ln_2: RmsNorm<B>,
    /// `gate_proj` and `up_proj` as one product (`[h, 2·intermediate]`).
    gate_up: Linear<B>,
    down: Linear<B>,
    window: Option<usize>,
}

pub struct Llama<B: Backend> {
    cfg: ModelConfig,
    blocks: Vec<Block<B>>,
    norm: RmsNorm<B>,
}

impl<B: Kernels> Llama<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::Llama {
            windows,
            qkv_bias,
            o_bias,
            qk_norm,
        } = &cfg.spec
        else {
            unreachable!("llama loader called with another architecture")
        };
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for (i, window) in windows.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let fused = cfg.arch == Arch::Phi3;
            let qkv = match fused {
                true => {
                    Qkv::Fused(ld.linear(&format!("{a}.qkv_proj"), h, q_dim + 2 * kv_dim, false)?)
                }
                false => Qkv::Separate {
                    q: ld.linear(&format!("{a}.q_proj"), h, q_dim, *qkv_bias)?,
                    k: ld.linear(&format!("{a}.k_proj"), h, kv_dim, *qkv_bias)?,
                    v: ld.linear(&format!("{a}.v_proj"), h, kv_dim, *qkv_bias)?,
                },
            };
            let gate_up = match fused {
                true => ld.linear(
                    &format!("{p}.mlp.gate_up_proj"),
                    h,
                    2 * cfg.intermediate,
                    false,
                )?,
                false => ld.stacked_linear(
                    &[
                        (&format!("{p}.mlp.gate_proj"), cfg.intermediate),
                        (&format!("{p}.mlp.up_proj"), cfg.intermediate),
                    ],
                    h,
                )?,
            };
            blocks.push(Block {
                ln_1: ld.rms_norm(&format!("{p}.input_layernorm"), h, eps)?,
                qkv,
                o: ld.linear(&format!("{a}.o_proj"), q_dim, h, *o_bias)?,
                qk_norm: match qk_norm {
                    true => Some((
                        ld.rms_norm(&format!("{a}.q_norm"), cfg.head_dim, eps)?,
                        ld.rms_norm(&format!("{a}.k_norm"), cfg.head_dim, eps)?,
                    )),
                    false => None,
                },
                ln_2: ld.rms_norm(&format!("{p}.post_attention_layernorm"), h, eps)?,
                gate_up,
                down: ld.linear(&format!("{p}.mlp.down_proj"), cfg.intermediate, h, false)?,
                window: *window,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            blocks,
            norm: ld.rms_norm("model.norm", h, eps)?,
        })
    }

    pub fn forward(&self, mut x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let p0 = ops::first_position(&cache);
        let s = x.dims()[1];
        let rot = self.cfg.rotary.as_ref().expect("llama has rotary settings");
        let (hd, dev) = (self.cfg.head_dim, x.device());
        let tables = RotaryTables::<B>::new(rot, hd, p0..p0 + s, &dev, x.dtype());
        let scale = 1.0 / (self.cfg.head_dim as f64).sqrt();
        let head_dim = self.cfg.head_dim;
        for (i, blk) in self.blocks.iter().enumerate() {
            let hn = blk.ln_1.forward(x.clone());
            let [mut q, mut k, v] = blk.qkv.forward(hn, self.cfg.n_heads * head_dim);
            if let Some((q_norm, k_norm)) = &blk.qk_norm {
                q = ops::per_head(q, head_dim, |t| q_norm.forward(t));
                k = ops::per_head(k, head_dim, |t| k_norm.forward(t));
            }
            let q = tables.apply(ops::split_heads(q, self.cfg.n_heads));
            let k = tables.apply(ops::split_heads(k, self.cfg.n_kv_heads));
            let v = ops::split_heads(v, self.cfg.n_kv_heads);
            let opts = AttnOpts {
                scale,
                window: blk.window,
                softcap: None,
            };
            let a = ops::attend(cache.as_deref_mut(), i, q, k, v, opts);
            x = x + blk.o.forward(ops::merge_heads(a));
            let hn = blk.ln_2.forward(x.clone());
            let hidden = ops::gated(blk.gate_up.forward(hn), self.cfg.activation);
            x = x + blk.down.forward(hidden);
        }
        self.norm.forward(x)
    }
}
