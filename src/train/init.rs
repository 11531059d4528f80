//! The starting soft prompt: the starter text's token embeddings, random rows of the
//! vocabulary, or noise at the embedding matrix's scale.

use anyhow::{Result, bail};
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::Plan;
use crate::config::InitKind;
use crate::model::{CausalLm, Kernels};
use crate::rng::SplitMix64;

/// Repeats or cuts `ids` to exactly `n` entries (as PEFT does for text initialisation).
pub fn fit_ids(ids: &[u32], n: usize) -> Vec<u32> {
    ids.iter().copied().cycle().take(n).collect()
}

/// The embeddings of `ids` as the model's embedding module gives them (scaled where it
/// scales, as PEFT's text initialisation takes them).
fn rows_of<B: Kernels>(model: &CausalLm<B>, ids: &[u32]) -> Result<Vec<f32>> {
    let device = model.device();
    let idx: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), &device);
    model
        .embedding_matrix()
        .clone()
        .select(0, idx)
        .cast(DType::F32)
        .mul_scalar(model.embed_scale())
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading embeddings back failed: {e:?}"))
}

pub fn initial_prompt<B: Kernels>(plan: &Plan, model: &CausalLm<B>) -> Result<Vec<f32>> {
    let n = plan.soft_tokens;
    let mut rng = SplitMix64::new(plan.cfg.seed ^ 0x1417_0000);
    match plan.cfg.init {
        InitKind::Text => {
            let text = plan.cfg.starter.as_deref().unwrap_or_default();
            let ids = plan.tokenizer.encode(text)?;
            if ids.is_empty() {
                bail!("the starter prompt tokenizes to nothing; write some text");
            }
            rows_of(model, &fit_ids(&ids, n))
        }
        InitKind::VocabSample => {
            // Ids the tokenizer really produces (GPT-J's matrix has padding rows past its
            // vocabulary), without special tokens.
            let bound = plan.tokenizer.id_bound().min(model.embed_rows());
            let special = plan.tokenizer.special_ids();
            let mut ids = Vec::with_capacity(n);
            while ids.len() < n {
                let id = rng.below(bound as u64) as u32;
                if !special.contains(&id) {
                    ids.push(id);
                }
            }
            rows_of(model, &ids)
        }
        InitKind::Random => {
            let e = model.embedding_matrix().clone().cast(DType::F32);
            let mean = e.clone().mean();
            let var = (e - mean.unsqueeze::<2>()).powi_scalar(2).mean();
            let std = var
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading back failed: {e:?}"))?[0]
                .sqrt() as f64
                * model.embed_scale() as f64;
            Ok((0..n * plan.model_cfg.d_embed)
                .map(|_| (rng.normal() * std) as f32)
                .collect())
        }
    }
}
