//! The dashboard's sample generations: every `samples.every` steps, a short continuation of
//! one text with the current soft prompt beside one without it, so the user sees the style
//! arrive. Both use the same seed, so the only difference is the prompt.

use anyhow::Result;

use super::Plan;
use super::events::Event;
use crate::eval::prompt_tensor;
use crate::model::generate::{Sampling, TextStream, generate};
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
        let mut context = match &cfg.sample_prompt {
            Some(t) => plan.tokenizer.encode(t)?,
            None => plan
                .rows
                .eval
                .first()
                .or(plan.rows.train.first())
                .map(|r| r[..r.len().min(DEFAULT_CONTEXT_TOKENS)].to_vec())
                .unwrap_or_default(),
        };
        let mut text = plan.tokenizer.decode(&context)?;
        // A held-out passage cut inside a character: end the sample text before it.
        while text.ends_with('\u{FFFD}') && !context.is_empty() {
            context.pop();
            text = plan.tokenizer.decode(&context)?;
        }
        if context.is_empty() {
            return Ok(None);
        }
        Ok(Some(Sampler {
            context,
            text,
            sampling: Sampling {
                max_new: cfg.sample_tokens,
                temperature: cfg.sample_temperature,
                top_k: cfg.sample_top_k,
                top_p: cfg.sample_top_p,
                repetition_penalty: cfg.sample_repetition_penalty,
                repetition_range: cfg.sample_repetition_range,
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
                |_| Ok(()),
            )
        };
        let with = run(Some(&p))?;
        let with_prompt = TextStream::text_of(&plan.tokenizer, &self.context, &with)?;
        let without_prompt = match &self.without {
            Some(t) => t.clone(),
            None => {
                let ids = run(None)?;
                let t = TextStream::text_of(&plan.tokenizer, &self.context, &ids)?;
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
