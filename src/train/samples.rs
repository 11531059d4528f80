//! The dashboard's sample generations: every `samples.every` steps, a short continuation of
//! one text with the current soft prompt beside one without it, so the user sees the style
//! arrive. Both use the same seed, so the only difference is the prompt.

use anyhow::Result;

use super::Plan;
use super::events::Event;
use crate::eval::prompt_tensor;
use crate::model::generate::{Sampling, generate};
use crate::model::{CausalLm, Kernels};

/// Tokens of a held-out sequence used as the sample text when none is configured.
pub const DEFAULT_CONTEXT_TOKENS: usize = 32;

pub struct Sampler {
    context: Vec<u32>,
    text: String,
    sampling: Sampling,
    vocab: usize,
    context_len: usize,
    stop: Vec<u32>,
    /// The continuation without a prompt never changes (frozen model, same seed).
    without: Option<String>,
}

impl Sampler {
    /// `None` when samples are turned off (`samples.every = 0`) or there is no text.
    pub fn new(plan: &Plan) -> Result<Option<Sampler>> {
        let cfg = &plan.cfg;
        if cfg.sample_every == 0 {
            return Ok(None);
        }
        let context = match &cfg.sample_prompt {
            Some(t) => plan.tokenizer.encode(t)?,
            None => plan
                .rows
                .eval
                .first()
                .or(plan.rows.train.first())
                .map(|r| r[..r.len().min(DEFAULT_CONTEXT_TOKENS)].to_vec())
                .unwrap_or_default(),
        };
        if context.is_empty() {
            return Ok(None);
        }
        let text = plan.tokenizer.decode(&context)?;
        Ok(Some(Sampler {
            context,
            text,
            sampling: Sampling {
                max_new: cfg.sample_tokens,
                temperature: cfg.sample_temperature,
                top_k: 40,
                seed: cfg.seed ^ 0x5a3d_1e00,
            },
            vocab: plan.tokenizer.id_bound(),
            context_len: plan.model_cfg.context_length(),
            stop: plan.tokenizer.eos_id(&plan.model_cfg).into_iter().collect(),
            without: None,
        }))
    }

    /// Whether a sample is due after optimizer step `step`.
    pub fn due(plan: &Plan, step: usize) -> bool {
        plan.cfg.sample_every > 0 && step.is_multiple_of(plan.cfg.sample_every)
    }

    /// Decodes `ids` as the continuation of the sample text (so a tokenizer that drops a
    /// leading space when decoding a fragment still reads naturally).
    fn continuation(&self, plan: &Plan, ids: &[u32]) -> Result<String> {
        let mut all = self.context.clone();
        all.extend_from_slice(ids);
        let whole = plan.tokenizer.decode(&all)?;
        Ok(match whole.strip_prefix(&self.text) {
            Some(rest) => rest.to_string(),
            None => plan.tokenizer.decode(ids)?,
        })
    }

    /// The sample event for the prompt `prompt` (`[soft_tokens, d_embed]`, row-major).
    pub fn sample<B: Kernels>(
        &mut self,
        plan: &Plan,
        model: &CausalLm<B>,
        prompt: &[f32],
        step: usize,
    ) -> Result<Event> {
        let (n, d) = (plan.soft_tokens, plan.model_cfg.d_embed);
        let p = prompt_tensor::<B>(prompt, n, d, &model.device());
        let run = |p: Option<&_>| {
            generate(
                model,
                p,
                &self.context,
                self.vocab,
                self.context_len,
                &self.stop,
                &self.sampling,
            )
        };
        let with = run(Some(&p))?;
        let with_prompt = self.continuation(plan, &with)?;
        let without_prompt = match &self.without {
            Some(t) => t.clone(),
            None => {
                let ids = run(None)?;
                let t = self.continuation(plan, &ids)?;
                self.without = Some(t.clone());
                t
            }
        };
        Ok(Event::Sample {
            step,
            prompt: self.text.clone(),
            with_prompt,
            without_prompt,
        })
    }
}
