//! XGLM, and fairseq's dense models converted to it (KoboldAI's fairseq-dense Nerys,
//! Janeway, Shinen fine-tunes): fixed sinusoidal positions with offset 2, token embeddings
//! scaled by `√d_model` (`scale_embedding`, applied by the embedding module, see
//! [`super::config::embed_scale`]), OPT's fairseq layers (`opt::Block`) with their
//! norms first, q scaled by 1/√d before q·k, a GELU MLP, a final LayerNorm and a tied head.

use super::kernels::Kernels;
use anyhow::Result;
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use super::config::ModelConfig;
use super::ops::{self, Cache, LayerNorm, Loader};
use super::opt::{Block, run_layers};

/// transformers' `XGLMSinusoidalPositionalEmbedding` offset: position p reads row p + 2.
const POSITION_OFFSET: usize = 2;

pub struct Xglm<B: Backend> {
    cfg: ModelConfig,
    /// Rows for positions `0..max_positions` (offset already applied), in the model's dtype.
    positions: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    final_ln: LayerNorm<B>,
}

/// The sinusoidal table's rows `from..from + n` for width `d`, computed as transformers
/// does in float32: frequencies `exp(-i · ln(10000) / (d/2 − 1))`, the sines of all of
/// them, then the cosines (not interleaved), a zero column when `d` is odd.
pub fn sinusoidal_rows(from: usize, n: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut out = Vec::with_capacity(n * d);
    for p in from..from + n {
        let args = freqs.iter().map(|f| p as f32 * f);
        out.extend(args.clone().map(|a| (a as f64).sin() as f32));
        out.extend(args.map(|a| (a as f64).cos() as f32));
        if d % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

impl<B: Kernels> Xglm<B> {
    pub fn load(cfg: &ModelConfig, ld: &Loader<B>) -> Result<Self> {
        let (h, eps) = (cfg.hidden, cfg.norm_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block::load(ld, &p, h, cfg.intermediate, eps)?);
        }
        let n = cfg.max_positions;
        let table = TensorData::new(sinusoidal_rows(POSITION_OFFSET, n, h), [n, h]);
        let positions = Tensor::<B, 2>::from_data(table, (&ld.device, DType::F32)).cast(ld.dtype);
        Ok(Self {
            cfg: cfg.clone(),
            positions,
            blocks,
            final_ln: ld.layer_norm("model.layer_norm", h, eps)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, cache: Cache<'_, B>) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let p0 = ops::first_position(&cache);
        let x = x + self.positions.clone().narrow(0, p0, s).unsqueeze::<3>();
        self.final_ln
            .forward(run_layers(&self.blocks, x, true, &self.cfg, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::sinusoidal_rows;

    #[test]
    fn sinusoidal_table_matches_its_definition() {
        // d = 6: frequencies 1, 10000^-1/2, 10000^-1; row p = [sin(p·f)…, cos(p·f)…].
        let rows = sinusoidal_rows(2, 2, 6);
        let f = [1.0f64, 0.01, 0.0001];
        for (r, p) in [2.0f64, 3.0].iter().enumerate() {
            for (i, fi) in f.iter().enumerate() {
                assert!((rows[r * 6 + i] as f64 - (p * fi).sin()).abs() < 1e-6);
                assert!((rows[r * 6 + 3 + i] as f64 - (p * fi).cos()).abs() < 1e-6);
            }
        }
        // An odd width gets a zero column.
        let odd = sinusoidal_rows(0, 1, 7);
        assert_eq!(odd.len(), 7);
        assert_eq!(odd[6], 0.0);
    }
}
