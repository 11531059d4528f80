//! GPT-2: learned absolute positions, `Conv1D` weights stored `[in, out]`, fused `c_attn`
//! (= [q | k | v] along the output axis), pre-LN blocks, tied head.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader};

struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    c_attn: Linear<B>,
    attn_proj: Linear<B>,
    ln_2: LayerNorm<B>,
    c_fc: Linear<B>,
    mlp_proj: Linear<B>,
    scale: f64,
}

pub struct Gpt2<B: Backend> {
    cfg: ModelConfig,
    wpe: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
}

impl<B: Kernels> Gpt2<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::Gpt2 {
            scale_attn_weights,
            scale_attn_by_inverse_layer_idx,
        } = cfg.spec
        else {
            unreachable!("gpt2 loader called with another architecture")
        };
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("transformer.h.{i}");
            let mut scale = if scale_attn_weights {
                1.0 / (cfg.head_dim as f64).sqrt()
            } else {
                1.0
            };
            if scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: ld.layer_norm(&format!("{p}.ln_1"), h, eps)?,
                c_attn: ld.conv1d(&format!("{p}.attn.c_attn"), h, 3 * h)?,
                attn_proj: ld.conv1d(&format!("{p}.attn.c_proj"), h, h)?,
                ln_2: ld.layer_norm(&format!("{p}.ln_2"), h, eps)?,
                c_fc: ld.conv1d(&format!("{p}.mlp.c_fc"), h, cfg.intermediate)?,
                mlp_proj: ld.conv1d(&format!("{p}.mlp.c_proj"), cfg.intermediate, h)?,
                scale,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            wpe: ld.tensor("transformer.wpe.weight", [cfg.max_positions, h])?,
            blocks,
            ln_f: ld.layer_norm("transformer.ln_f", h, eps)?,
        })
    }

    /// Input embeddings `[b, s, d]` → final hidden states `[b, s, d]`.
    pub fn forward(&self, x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let p0 = ops::first_position(&cache);
        let mut x = x + self.wpe.clone().narrow(0, p0, s).unsqueeze::<3>();
        let heads = self.cfg.n_heads;
        for (i, blk) in self.blocks.iter().enumerate() {
            let qkv = blk.c_attn.forward(blk.ln_1.forward(x.clone()));
            let h = self.cfg.hidden;
            let q = ops::split_heads(qkv.clone().narrow(2, 0, h), heads);
            let k = ops::split_heads(qkv.clone().narrow(2, h, h), heads);
            let v = ops::split_heads(qkv.narrow(2, 2 * h, h), heads);
            let opts = AttnOpts {
                scale: blk.scale,
                window: None,
                softcap: None,
            };
            let a = ops::merge_heads(ops::attend(cache.as_deref_mut(), i, q, k, v, opts));
            x = x + blk.attn_proj.forward(a);
            let m = ops::activate(
                blk.c_fc.forward(blk.ln_2.forward(x.clone())),
                self.cfg.activation,
            );
            x = x + blk.mlp_proj.forward(m);
        }
        self.ln_f.forward(x)
    }
}
