//! GPT-J: interleaved partial rotary (`rotary_dim` of each head), one LayerNorm feeding
//! attention and MLP in parallel (`x + attn(ln(x)) + mlp(ln(x))`), q/k/v/out without bias,
//! untied `lm_head` with bias.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::ModelConfig;
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader, RotaryTables};

struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    fc_in: Linear<B>,
    fc_out: Linear<B>,
}

pub struct GptJ<B: Backend> {
    cfg: ModelConfig,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
}

impl<B: Kernels> GptJ<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: ld.layer_norm(&format!("{p}.ln_1"), h, eps)?,
                q: ld.linear(&format!("{p}.attn.q_proj"), h, h, false)?,
                k: ld.linear(&format!("{p}.attn.k_proj"), h, h, false)?,
                v: ld.linear(&format!("{p}.attn.v_proj"), h, h, false)?,
                out: ld.linear(&format!("{p}.attn.out_proj"), h, h, false)?,
                fc_in: ld.linear(&format!("{p}.mlp.fc_in"), h, cfg.intermediate, true)?,
                fc_out: ld.linear(&format!("{p}.mlp.fc_out"), cfg.intermediate, h, true)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            blocks,
            ln_f: ld.layer_norm("transformer.ln_f", h, eps)?,
        })
    }

    pub fn forward(&self, mut x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let p0 = ops::first_position(&cache);
        let s = x.dims()[1];
        let rot = self.cfg.rotary.as_ref().expect("gptj has rotary settings");
        let (hd, dev) = (self.cfg.head_dim, x.device());
        let tables = RotaryTables::<B>::new(rot, hd, p0..p0 + s, &dev, x.dtype());
        let heads = self.cfg.n_heads;
        let opts = AttnOpts {
            scale: 1.0 / (self.cfg.head_dim as f64).sqrt(),
            window: None,
            softcap: None,
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            let hn = blk.ln_1.forward(x.clone());
            let q = tables.apply(ops::split_heads(blk.q.forward(hn.clone()), heads));
            let k = tables.apply(ops::split_heads(blk.k.forward(hn.clone()), heads));
            let v = ops::split_heads(blk.v.forward(hn.clone()), heads);
            let a = ops::attend(cache.as_deref_mut(), i, q, k, v, opts);
            let a = blk.out.forward(ops::merge_heads(a));
            let m = blk
                .fc_out
                .forward(ops::activate(blk.fc_in.forward(hn), self.cfg.activation));
            x = x + a + m;
        }
        self.ln_f.forward(x)
    }
}
