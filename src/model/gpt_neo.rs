//! GPT-Neo: learned positions, alternating global / local (windowed) attention, no
//! 1/√d scaling of attention scores, q/k/v without bias, out_proj with bias, tied head.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader};

struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    ln_2: LayerNorm<B>,
    c_fc: Linear<B>,
    c_proj: Linear<B>,
    window: Option<usize>,
}

pub struct GptNeo<B: Backend> {
    cfg: ModelConfig,
    wpe: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
}

impl<B: Kernels> GptNeo<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::GptNeo { windows } = &cfg.spec else {
            unreachable!("gpt_neo loader called with another architecture")
        };
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for (i, window) in windows.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            let a = format!("{p}.attn.attention");
            blocks.push(Block {
                ln_1: ld.layer_norm(&format!("{p}.ln_1"), h, eps)?,
                q: ld.linear(&format!("{a}.q_proj"), h, h, false)?,
                k: ld.linear(&format!("{a}.k_proj"), h, h, false)?,
                v: ld.linear(&format!("{a}.v_proj"), h, h, false)?,
                out: ld.linear(&format!("{a}.out_proj"), h, h, true)?,
                ln_2: ld.layer_norm(&format!("{p}.ln_2"), h, eps)?,
                c_fc: ld.linear(&format!("{p}.mlp.c_fc"), h, cfg.intermediate, true)?,
                c_proj: ld.linear(&format!("{p}.mlp.c_proj"), cfg.intermediate, h, true)?,
                window: *window,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            wpe: ld.tensor("transformer.wpe.weight", [cfg.max_positions, h])?,
            blocks,
            ln_f: ld.layer_norm("transformer.ln_f", h, eps)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let p0 = ops::first_position(&cache);
        let mut x = x + self.wpe.clone().narrow(0, p0, s).unsqueeze::<3>();
        let heads = self.cfg.n_heads;
        for (i, blk) in self.blocks.iter().enumerate() {
            let hn = blk.ln_1.forward(x.clone());
            let q = ops::split_heads(blk.q.forward(hn.clone()), heads);
            let k = ops::split_heads(blk.k.forward(hn.clone()), heads);
            let v = ops::split_heads(blk.v.forward(hn), heads);
            let opts = AttnOpts {
                scale: 1.0,
                window: blk.window,
                softcap: None,
            };
            let a = ops::attend(cache.as_deref_mut(), i, q, k, v, opts);
            x = x + blk.out.forward(ops::merge_heads(a));
            let m = ops::activate(
                blk.c_fc.forward(blk.ln_2.forward(x.clone())),
                self.cfg.activation,
            );
            x = x + blk.c_proj.forward(m);
        }
        self.ln_f.forward(x)
    }
}
