//! Gemma family (gemma, gemma2, gemma3): like llama, with RMSNorms that scale by
//! `1 + weight` (in float32), token embeddings multiplied by `√hidden` (see
//! [`super::config::embed_scale`]), a GELU-gated MLP and a tied head. Gemma 2 adds a norm
//! on the attention's and the MLP's outputs before each residual add, sliding-window layers
//! between global ones, `query_pre_attn_scalar` for the attention's scale, and soft-capping
//! (`c · tanh(x / c)`) of the attention scores and of the logits (the latter in
//! [`super::lm`]). Gemma 3 keeps the output norms and the windows (with a rotary base of
//! their own), drops the soft caps and adds an RMSNorm over each query and key head.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, Linear, Loader, RmsNorm, RotaryTables};

/// Gemma 2 and 3's norms on the branches' outputs, before each residual add.
struct PostNorms<B: Backend> {
    attention: RmsNorm<B>,
    mlp: RmsNorm<B>,
}

/// Gemma 3's norms over each query and key head.
struct HeadNorms<B: Backend> {
    q: RmsNorm<B>,
    k: RmsNorm<B>,
}

struct Block<B: Backend> {
    ln_1: RmsNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    /// Before the MLP (`post_attention_layernorm` in the first generation,
    /// `pre_feedforward_layernorm` in Gemma 2 and 3).
    ln_2: RmsNorm<B>,
    post: Option<PostNorms<B>>,
    heads: Option<HeadNorms<B>>,
    /// `gate_proj` and `up_proj` as one product.
    gate_up: Linear<B>,
    down: Linear<B>,
    window: Option<usize>,
}

pub struct Gemma<B: Backend> {
    cfg: ModelConfig,
    blocks: Vec<Block<B>>,
    norm: RmsNorm<B>,
    attn_scale: f64,
    attn_softcap: Option<f64>,
}

impl<B: Kernels> Gemma<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::Gemma {
            windows,
            attn_scale,
            attention_bias,
            post_norms,
            qk_norm,
            attn_softcap,
            ..
        } = &cfg.spec
        else {
            unreachable!("gemma loader called with another architecture")
        };
        let (h, eps, bias) = (cfg.hidden, cfg.norm_eps, *attention_bias);
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let norm = |name: &str, dim: usize| ld.offset_rms_norm(name, dim, eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for (i, window) in windows.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let (ln_2, post) = if *post_norms {
                let post = PostNorms {
                    attention: norm(&format!("{p}.post_attention_layernorm"), h)?,
                    mlp: norm(&format!("{p}.post_feedforward_layernorm"), h)?,
                };
                (
                    norm(&format!("{p}.pre_feedforward_layernorm"), h)?,
                    Some(post),
                )
            } else {
                (norm(&format!("{p}.post_attention_layernorm"), h)?, None)
            };
            let heads = if *qk_norm {
                Some(HeadNorms {
                    q: norm(&format!("{a}.q_norm"), cfg.head_dim)?,
                    k: norm(&format!("{a}.k_norm"), cfg.head_dim)?,
                })
            } else {
                None
            };
            blocks.push(Block {
                ln_1: norm(&format!("{p}.input_layernorm"), h)?,
                q: ld.linear(&format!("{a}.q_proj"), h, q_dim, bias)?,
                k: ld.linear(&format!("{a}.k_proj"), h, kv_dim, bias)?,
                v: ld.linear(&format!("{a}.v_proj"), h, kv_dim, bias)?,
                o: ld.linear(&format!("{a}.o_proj"), q_dim, h, bias)?,
                ln_2,
                post,
                heads,
                gate_up: ld.stacked_linear(
                    &[
                        (&format!("{p}.mlp.gate_proj"), cfg.intermediate),
                        (&format!("{p}.mlp.up_proj"), cfg.intermediate),
                    ],
                    h,
                )?,
                down: ld.linear(&format!("{p}.mlp.down_proj"), cfg.intermediate, h, false)?,
                window: *window,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            blocks,
            norm: norm("model.norm", h)?,
            attn_scale: *attn_scale,
            attn_softcap: *attn_softcap,
        })
    }

    /// Scaled input embeddings `[b, s, hidden]` → final hidden states.
    pub fn forward(&self, mut x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let p0 = ops::first_position(&cache);
        let s = x.dims()[1];
        let (device, dtype) = (x.device(), x.dtype());
        let hd = self.cfg.head_dim;
        let global = self.cfg.rotary.as_ref().expect("gemma has rotary settings");
        let global = RotaryTables::<B>::new(global, hd, p0..p0 + s, &device, dtype);
        let local = match &self.cfg.spec {
            ArchSpec::Gemma {
                local_rotary: Some(r),
                ..
            } => Some(RotaryTables::<B>::new(r, hd, p0..p0 + s, &device, dtype)),
            _ => None,
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            let tables = match (&local, blk.window) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            let hn = blk.ln_1.forward(x.clone());
            let (mut q, mut k) = (blk.q.forward(hn.clone()), blk.k.forward(hn.clone()));
            if let Some(n) = &blk.heads {
                q = ops::per_head(q, hd, |t| n.q.forward(t));
                k = ops::per_head(k, hd, |t| n.k.forward(t));
            }
            let q = tables.apply(ops::split_heads(q, self.cfg.n_heads));
            let k = tables.apply(ops::split_heads(k, self.cfg.n_kv_heads));
            let v = ops::split_heads(blk.v.forward(hn), self.cfg.n_kv_heads);
            let opts = AttnOpts {
                scale: self.attn_scale,
                window: blk.window,
                softcap: self.attn_softcap,
            };
            let a = ops::attend(cache.as_deref_mut(), i, q, k, v, opts);
            let mut attn = blk.o.forward(ops::merge_heads(a));
            if let Some(n) = &blk.post {
                attn = n.attention.forward(attn);
            }
            x = x + attn;
            let hn = blk.ln_2.forward(x.clone());
            let mut mlp = blk
                .down
                .forward(ops::gated(blk.gate_up.forward(hn), self.cfg.activation));
            if let Some(n) = &blk.post {
                mlp = n.mlp.forward(mlp);
            }
            x = x + mlp;
        }
        self.norm.forward(x)
    }
}
