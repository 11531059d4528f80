//! GPT-NeoX (Pythia): rotate-half partial rotary (`rotary_pct` of each head), fused
//! `query_key_value` laid out per head as [q_h, k_h, v_h], parallel residual
//! (`x + attn(ln1(x)) + mlp(ln2(x))`) or sequential when `use_parallel_residual` is false.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader, RotaryTables};

struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    ln_2: LayerNorm<B>,
    qkv: Linear<B>,
    dense: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

pub struct GptNeoX<B: Backend> {
    cfg: ModelConfig,
    parallel: bool,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
}

impl<B: Kernels> GptNeoX<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::GptNeoX { parallel_residual } = cfg.spec else {
            unreachable!("gpt_neox loader called with another architecture")
        };
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("gpt_neox.layers.{i}");
            blocks.push(Block {
                ln_1: ld.layer_norm(&format!("{p}.input_layernorm"), h, eps)?,
                ln_2: ld.layer_norm(&format!("{p}.post_attention_layernorm"), h, eps)?,
                qkv: ld.linear(&format!("{p}.attention.query_key_value"), h, 3 * h, true)?,
                dense: ld.linear(&format!("{p}.attention.dense"), h, h, true)?,
                up: ld.linear(&format!("{p}.mlp.dense_h_to_4h"), h, cfg.intermediate, true)?,
                down: ld.linear(&format!("{p}.mlp.dense_4h_to_h"), cfg.intermediate, h, true)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            parallel: parallel_residual,
            blocks,
            ln_f: ld.layer_norm("gpt_neox.final_layer_norm", h, eps)?,
        })
    }

    pub fn forward(&self, mut x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let p0 = ops::first_position(&cache);
        let [b, s, _] = x.dims();
        let (heads, hd) = (self.cfg.n_heads, self.cfg.head_dim);
        let rot = self
            .cfg
            .rotary
            .as_ref()
            .expect("gpt_neox has rotary settings");
        let tables = RotaryTables::<B>::new(rot, hd, p0..p0 + s, &x.device(), x.dtype());
        let opts = AttnOpts {
            scale: 1.0 / (hd as f64).sqrt(),
            window: None,
            softcap: None,
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            // [b, s, heads·3·hd] viewed as [b, s, heads, 3, hd]
            let qkv = blk
                .qkv
                .forward(blk.ln_1.forward(x.clone()))
                .reshape([b, s, heads, 3, hd]);
            let part = |i: usize| {
                qkv.clone()
                    .narrow(3, i, 1)
                    .reshape([b, s, heads, hd])
                    .swap_dims(1, 2)
            };
            let q = tables.apply(part(0));
            let k = tables.apply(part(1));
            let a = ops::attend(cache.as_deref_mut(), i, q, k, part(2), opts);
            let a = blk.dense.forward(ops::merge_heads(a));
            let mlp = |y: Tensor<B, 3>| {
                blk.down.forward(ops::activate(
                    blk.up.forward(blk.ln_2.forward(y)),
                    self.cfg.activation,
                ))
            };
            x = if self.parallel {
                let m = mlp(x.clone());
                x + a + m
            } else {
                let y = x + a;
                y.clone() + mlp(y)
            };
        }
        self.ln_f.forward(x)
    }
}
