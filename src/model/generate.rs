//! Short continuations of a text, with or without a soft prompt: the dashboard's sample
//! generations. No key/value cache: each new token runs the model over the whole window,
//! which is cheap at the lengths samples use (tens of tokens) and keeps one forward path
//! for training, evaluation and generation.

use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;

use super::{CausalLm, Kernels};
use crate::eval::ids_tensor;
use crate::rng::SplitMix64;

/// How tokens are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// New tokens at most (generation also ends at a stop token).
    pub max_new: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Draw only among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    pub seed: u64,
}

/// The token to emit from one position's logits: greedy at temperature 0, else a seeded draw
/// from the softmax of the `top_k` best logits divided by the temperature. Ties go to the
/// lowest id. Non-finite logits are never picked.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> Option<u32> {
    let mut order: Vec<(usize, f32)> = logits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .collect();
    if order.is_empty() {
        return None;
    }
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.temperature <= 0.0 {
        return Some(order[0].0 as u32);
    }
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let top = order[0].1 as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&(_, x)| ((x as f64 - top) / s.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.unit() * total;
    for (&(id, _), w) in order.iter().zip(&weights) {
        if r < *w {
            return Some(id as u32);
        }
        r -= w;
    }
    Some(order[order.len() - 1].0 as u32)
}

/// Continues `context` (token ids, at least one) by up to `s.max_new` tokens, with `prompt`
/// (`[n, d_embed]`) prepended when given. Only ids below `vocab` are drawn (embedding rows
/// past the tokenizer's vocabulary are padding). Generation ends early at any of `stop`,
/// which is not included. The window slides so prompt + text never exceed `context_len`.
pub fn generate<B: Kernels>(
    model: &CausalLm<B>,
    prompt: Option<&Tensor<B, 2>>,
    context: &[u32],
    vocab: usize,
    context_len: usize,
    stop: &[u32],
    s: &Sampling,
) -> Result<Vec<u32>> {
    if context.is_empty() {
        bail!("a sample needs at least one token of text to continue");
    }
    let n = prompt.map_or(0, |p| p.dims()[0]);
    if n + 1 >= context_len {
        bail!("{n} soft tokens leave no room in the model's context of {context_len}");
    }
    let device = model.device();
    let vocab = vocab.min(model.embed_rows());
    let mut rng = SplitMix64::new(s.seed);
    let mut ids = context.to_vec();
    let mut out = Vec::with_capacity(s.max_new);
    for _ in 0..s.max_new {
        let from = ids.len().saturating_sub(context_len - n);
        let t = ids_tensor::<B>(&[&ids[from..]], &device);
        let x = match prompt {
            Some(p) => model.prompt_inputs(p.clone(), t),
            None => model.embed_tokens(t),
        };
        let h = model.hidden(x);
        let len = h.dims()[1];
        let logits = model
            .head(h.narrow(1, len - 1, 1))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow!("reading logits back failed: {e:?}"))?;
        let Some(next) = pick(&logits[..vocab.min(logits.len())], s, &mut rng) else {
            bail!("the model produced no finite logits while sampling");
        };
        if stop.contains(&next) {
            break;
        }
        ids.push(next);
        out.push(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: usize) -> Sampling {
        Sampling {
            max_new: 1,
            temperature,
            top_k,
            seed: 7,
        }
    }

    #[test]
    fn greedy_takes_the_best_and_skips_non_finite() {
        let mut rng = SplitMix64::new(1);
        let l = [0.5, f32::NAN, 2.0, 2.0, -1.0];
        assert_eq!(pick(&l, &sampling(0.0, 0), &mut rng), Some(2));
        assert_eq!(pick(&[f32::NAN], &sampling(0.7, 0), &mut rng), None);
    }

    #[test]
    fn top_k_limits_the_draw_and_temperature_shapes_it() {
        let l = [3.0f32, 2.9, 2.8, -5.0, -6.0];
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 5];
        for _ in 0..3000 {
            seen[pick(&l, &sampling(1.0, 2), &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3] + seen[4], 0, "{seen:?}");
        // p(0) / p(1) = e^0.1 ≈ 1.105 at temperature 1.
        let ratio = seen[0] as f64 / seen[1] as f64;
        assert!((1.0..1.25).contains(&ratio), "{seen:?}");
        // A low temperature almost always takes the best.
        let mut best = 0;
        for _ in 0..1000 {
            best += usize::from(pick(&l, &sampling(0.01, 0), &mut rng) == Some(0));
        }
        assert!(best > 990, "{best}");
    }
}
