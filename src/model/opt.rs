//! OPT: learned positions with offset 2, `project_in` / `project_out` when
//! `word_embed_proj_dim` ≠ `hidden_size` (opt-350m), pre-LN or post-LN blocks
//! (`do_layer_norm_before`), q scaled by 1/√d before q·k, ReLU MLP, tied head.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{Tensor, backend::Backend};

use super::config::{Activation, ArchSpec, ModelConfig};
use super::ops::{self, AttnOpts, Cache, LayerNorm, Linear, Loader};

/// transformers' `OPTLearnedPositionalEmbedding` offset.
const POSITION_OFFSET: usize = 2;

/// A fairseq decoder layer as transformers names it (OPT, and XGLM, see
/// [`super::xglm`]): a LayerNorm and q, k, v, out projections with biases, then a LayerNorm
/// and the `fc1` → activation → `fc2` MLP.
pub(super) struct Block<B: Backend> {
    attn_ln: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    mlp_ln: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// Where a layer reads: its model's cache (if any) and the layer's index.
type Layer<'a, B> = (Cache<'a, B>, usize);

impl<B: Kernels> Block<B> {
    /// The layer at `p` (`….layers.{i}`), width `h`, MLP width `ffn`.
    pub(super) fn load(ld: &Loader<B>, p: &str, h: usize, ffn: usize, eps: f64) -> Result<Self> {
        Ok(Block {
            attn_ln: ld.layer_norm(&format!("{p}.self_attn_layer_norm"), h, eps)?,
            q: ld.linear(&format!("{p}.self_attn.q_proj"), h, h, true)?,
            k: ld.linear(&format!("{p}.self_attn.k_proj"), h, h, true)?,
            v: ld.linear(&format!("{p}.self_attn.v_proj"), h, h, true)?,
            out: ld.linear(&format!("{p}.self_attn.out_proj"), h, h, true)?,
            mlp_ln: ld.layer_norm(&format!("{p}.final_layer_norm"), h, eps)?,
            fc1: ld.linear(&format!("{p}.fc1"), h, ffn, true)?,
            fc2: ld.linear(&format!("{p}.fc2"), ffn, h, true)?,
        })
    }

    fn attn(
        &self,
        y: Tensor<B, 3>,
        heads: usize,
        opts: AttnOpts,
        at: Layer<'_, B>,
    ) -> Tensor<B, 3> {
        let q = ops::split_heads(self.q.forward(y.clone()), heads);
        let k = ops::split_heads(self.k.forward(y.clone()), heads);
        let v = ops::split_heads(self.v.forward(y), heads);
        let (cache, layer) = at;
        self.out
            .forward(ops::merge_heads(ops::attend(cache, layer, q, k, v, opts)))
    }

    fn mlp(&self, y: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
        self.fc2.forward(ops::activate(self.fc1.forward(y), act))
    }

    /// The layer with its norms before each branch (`do_layer_norm_before`), or after each
    /// residual add (OPT-350m).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        pre_ln: bool,
        heads: usize,
        opts: AttnOpts,
        act: Activation,
        at: Layer<'_, B>,
    ) -> Tensor<B, 3> {
        if pre_ln {
            let x = x.clone() + self.attn(self.attn_ln.forward(x), heads, opts, at);
            x.clone() + self.mlp(self.mlp_ln.forward(x), act)
        } else {
            let x = self
                .attn_ln
                .forward(x.clone() + self.attn(x, heads, opts, at));
            self.mlp_ln.forward(x.clone() + self.mlp(x, act))
        }
    }
}

/// The fairseq layers `blocks` over `x` (OPT's and XGLM's): full causal attention scaled by
/// 1/√head_dim (transformers scales q before q·k; scaling the scores is the same product).
pub(super) fn run_layers<B: Kernels>(
    blocks: &[Block<B>],
    mut x: Tensor<B, 3>,
    pre_ln: bool,
    cfg: &ModelConfig,
    mut cache: Cache<'_, B>,
) -> Tensor<B, 3> {
    let opts = AttnOpts {
        scale: 1.0 / (cfg.head_dim as f64).sqrt(),
        window: None,
        softcap: None,
    };
    for (i, blk) in blocks.iter().enumerate() {
        let at = (cache.as_deref_mut(), i);
        x = blk.forward(x, pre_ln, cfg.n_heads, opts, cfg.activation, at);
    }
    x
}

pub struct Opt<B: Backend> {
    cfg: ModelConfig,
    pre_ln: bool,
    positions: Tensor<B, 2>,
    project_in: Option<Linear<B>>,
    project_out: Option<Linear<B>>,
    blocks: Vec<Block<B>>,
    final_ln: Option<LayerNorm<B>>,
}

impl<B: Kernels> Opt<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let ArchSpec::Opt {
            pre_layer_norm,
            final_layer_norm,
        } = cfg.spec
        else {
            unreachable!("opt loader called with another architecture")
        };
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let d = "model.decoder";
        let (project_in, project_out) = if cfg.d_embed != h {
            (
                Some(ld.linear(&format!("{d}.project_in"), cfg.d_embed, h, false)?),
                Some(ld.linear(&format!("{d}.project_out"), h, cfg.d_embed, false)?),
            )
        } else {
            (None, None)
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("{d}.layers.{i}");
            blocks.push(Block::load(ld, &p, h, cfg.intermediate, eps)?);
        }
        let final_ln = if final_layer_norm {
            Some(ld.layer_norm(&format!("{d}.final_layer_norm"), h, eps)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            pre_ln: pre_layer_norm,
            positions: ld.tensor(
                &format!("{d}.embed_positions.weight"),
                [cfg.max_positions + POSITION_OFFSET, h],
            )?,
            project_in,
            project_out,
            blocks,
            final_ln,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, cache: Cache<'_, B>) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let p0 = ops::first_position(&cache);
        let x = match &self.project_in {
            Some(p) => p.forward(x),
            None => x,
        };
        let pos = self
            .positions
            .clone()
            .narrow(0, POSITION_OFFSET + p0, s)
            .unsqueeze::<3>();
        let mut x = run_layers(&self.blocks, x + pos, self.pre_ln, &self.cfg, cache);
        if let Some(ln) = &self.final_ln {
            x = ln.forward(x);
        }
        match &self.project_out {
            Some(p) => p.forward(x),
            None => x,
        }
    }
}
