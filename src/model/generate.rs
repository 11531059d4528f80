//! Continuations of a text, with or without a soft prompt: `softtune generate` and the
//! dashboard's sample generations. A key/value cache ([`KvCache`]) keeps what the model
//! read, so each new token runs the model over that token alone; once the text fills the
//! model's context, the window slides and is read again whole for every token, as
//! transformers' references were made.

use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;

use super::ops::KvCache;
use super::tokenizer::Tokenizer;
use super::{CausalLm, Kernels};
use crate::eval::ids_tensor;
use crate::rng::SplitMix64;

/// How tokens are drawn. Each position's logits go through transformers' processors, in
/// their order: the repetition penalty, the temperature, top-k, then top-p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// New tokens at most (generation also ends at a stop token).
    pub max_new: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Draw only among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Nucleus sampling: draw only among the most likely tokens whose probabilities (after
    /// the temperature and top-k) first add up to `top_p` (1: all).
    pub top_p: f64,
    /// The logits of tokens in the recent text are divided by this (multiplied when
    /// negative), as transformers' `repetition_penalty` and KoboldAI's `rep_pen`; 1: off.
    pub repetition_penalty: f64,
    /// How many of the last tokens of the text and its continuation the penalty looks at
    /// (0: all of them). The soft prompt is not tokens, so it is never penalised.
    pub repetition_range: usize,
    pub seed: u64,
}

impl Sampling {
    /// The most likely token each time, nothing penalised: transformers' greedy search.
    pub fn greedy(max_new: usize) -> Self {
        Self {
            max_new,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_range: 0,
            seed: 0,
        }
    }

    /// The first setting out of range, as `(setting, what to do)`; the caller names it as
    /// its user wrote it (a command-line flag or a profile key).
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Some((
                "temperature",
                "use a number from 0 (always the most likely token) up; 0.7 is usual",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Some((
                "top_p",
                "use a number above 0 and at most 1 (1: all tokens); 0.9 is usual",
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return Some((
                "repetition_penalty",
                "use a number above 0 and at most 10 (1: off); 1.1 to 1.3 is usual",
            ));
        }
        None
    }

    /// The tokens of `ids` (a text and its continuation so far) the penalty looks at.
    pub fn recent<'a>(&self, ids: &'a [u32]) -> &'a [u32] {
        match self.repetition_range {
            0 => ids,
            r => &ids[ids.len().saturating_sub(r)..],
        }
    }
}

/// The tokens a draw may take from one position's logits and their probabilities, most
/// likely first (ties to the lowest id): the logits of `recent` tokens penalised, then at
/// temperature 0 the best token alone; else the softmax at the temperature, cut to the
/// `top_k` best and then to the fewest whose probabilities reach `top_p`, renormalised.
/// Non-finite logits are never candidates; no finite logit gives an empty list.
pub fn candidates(logits: &[f32], s: &Sampling, recent: &[u32]) -> Vec<(u32, f64)> {
    let penalty = s.repetition_penalty as f32;
    let mut penalised = Vec::new();
    if penalty != 1.0 {
        penalised.extend(
            recent
                .iter()
                .map(|&id| id as usize)
                .filter(|&i| i < logits.len()),
        );
        penalised.sort_unstable();
        penalised.dedup();
    }
    let mut order: Vec<(usize, f32)> = logits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .collect();
    if !penalised.is_empty() {
        for (id, x) in &mut order {
            if penalised.binary_search(id).is_ok() {
                *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
            }
        }
    }
    if order.is_empty() {
        return Vec::new();
    }
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.temperature <= 0.0 {
        return vec![(order[0].0 as u32, 1.0)];
    }
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let top = order[0].1 as f64;
    let mut probs: Vec<(u32, f64)> = order
        .iter()
        .map(|&(id, x)| (id as u32, ((x as f64 - top) / s.temperature).exp()))
        .collect();
    let normalise = |probs: &mut Vec<(u32, f64)>| {
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    };
    normalise(&mut probs);
    if s.top_p < 1.0 {
        // Keep each token while the tokens before it hold less than `top_p`.
        let mut before = 0.0;
        let keep = probs
            .iter()
            .take_while(|p| {
                let kept = before < s.top_p;
                before += p.1;
                kept
            })
            .count();
        probs.truncate(keep.max(1));
        normalise(&mut probs);
    }
    probs
}

/// The token to emit from one position's logits: the best of [`candidates`] at temperature
/// 0, else a seeded draw from them. `None` when no logit is finite.
pub fn pick(logits: &[f32], s: &Sampling, recent: &[u32], rng: &mut SplitMix64) -> Option<u32> {
    let probs = candidates(logits, s, recent);
    let &(best, _) = probs.first()?;
    if s.temperature <= 0.0 {
        return Some(best);
    }
    let mut r = rng.unit();
    for &(id, p) in &probs {
        if r < p {
            return Some(id);
        }
        r -= p;
    }
    // Rounding left a sliver past the last probability.
    probs.last().map(|p| p.0)
}

/// Continues `context` (token ids, at least one) by up to `s.max_new` tokens, with `prompt`
/// (`[n, d_embed]`) prepended when given, calling `each` with every new token as soon as it
/// is drawn (to print a continuation as it grows; an error from it ends generation with
/// that error). Only ids below `vocab` are drawn (embedding rows past the tokenizer's
/// vocabulary are padding). Generation ends early at any of `stop`, which is not included.
/// The window slides so prompt + text never exceed `context_len`: it keeps the last
/// `context_len - soft tokens` tokens. The positions read before are kept in a key/value
/// cache until the window slides (or LongRoPE changes its factors, see
/// [`CausalLm::cache_holds`]).
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Kernels>(
    model: &CausalLm<B>,
    prompt: Option<&Tensor<B, 2>>,
    context: &[u32],
    vocab: usize,
    context_len: usize,
    stop: &[u32],
    s: &Sampling,
    mut each: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let rows = std::slice::from_ref(s);
    let out = generate_rows(
        model,
        prompt,
        context,
        vocab,
        context_len,
        stop,
        rows,
        |_, id| each(id),
    )?;
    Ok(out.into_iter().next().unwrap_or_default())
}

/// Several continuations of the same `context` at once, one per entry of `rows` (each with
/// its own settings and seed), as a batch: a token for every unfinished continuation per
/// pass of the model, which costs little more than one on a GPU. `each` gets the row and
/// the token. Each continuation is the one [`generate`] writes with its settings (up to
/// rounding: a batched product may round differently). The shared context is read once;
/// a continuation that ends leaves the batch.
#[allow(clippy::too_many_arguments)]
pub fn generate_rows<B: Kernels>(
    model: &CausalLm<B>,
    prompt: Option<&Tensor<B, 2>>,
    context: &[u32],
    vocab: usize,
    context_len: usize,
    stop: &[u32],
    rows: &[Sampling],
    mut each: impl FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    if context.is_empty() {
        bail!("a sample needs at least one token of text to continue");
    }
    let n = prompt.map_or(0, |p| p.dims()[0]);
    if n + 1 >= context_len {
        bail!("{n} soft tokens leave no room in the model's context of {context_len}");
    }
    let device = model.device();
    let vocab = vocab.min(model.embed_rows());
    let mut rngs: Vec<SplitMix64> = rows.iter().map(|s| SplitMix64::new(s.seed)).collect();
    // Each row's text: the context, then its new tokens.
    let mut ids = vec![context.to_vec(); rows.len()];
    // The unfinished rows, in the cache's (and the batch's) order.
    let mut active: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].max_new > 0).collect();
    let mut cache = KvCache::default();
    while !active.is_empty() {
        // Unfinished rows have drawn as many tokens: their texts are as long.
        let len = ids[active[0]].len();
        let from = len.saturating_sub(context_len - n);
        // The cache holds the prompt and `ids[..cache.len() - n]` at their positions; once
        // the window slides every position moves, so the window is read again whole.
        let reuse = from == 0 && !cache.is_empty() && model.cache_holds(cache.len(), n + len);
        // At first every row holds the context alone: it is read once, for all of them.
        let shared = len == context.len() && active.len() > 1;
        let x = if reuse {
            let new: Vec<&[u32]> = active.iter().map(|&r| &ids[r][cache.len() - n..]).collect();
            model.embed_tokens(ids_tensor::<B>(&new, &device))
        } else {
            cache = KvCache::default();
            let window: Vec<&[u32]> = match shared {
                true => vec![&ids[active[0]][from..]],
                false => active.iter().map(|&r| &ids[r][from..]).collect(),
            };
            let t = ids_tensor::<B>(&window, &device);
            match prompt {
                Some(p) => model.prompt_inputs(p.clone(), t),
                None => model.embed_tokens(t),
            }
        };
        let h = model.hidden_cached(x, Some(&mut cache));
        if shared {
            cache.repeat(active.len());
        }
        let [b, s, _] = h.dims();
        let logits = model
            .head(h.narrow(1, s - 1, 1))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow!("reading logits back failed: {e:?}"))?;
        let width = logits.len() / b;
        let mut going = Vec::with_capacity(active.len());
        for (i, &r) in active.iter().enumerate() {
            let at = if shared { 0 } else { i * width };
            let row = &logits[at..at + vocab.min(width)];
            let s = &rows[r];
            let Some(next) = pick(row, s, s.recent(&ids[r]), &mut rngs[r]) else {
                bail!("the model produced no finite logits while sampling");
            };
            if stop.contains(&next) {
                continue;
            }
            ids[r].push(next);
            each(r, next)?;
            if ids[r].len() - context.len() < s.max_new {
                going.push(i);
            }
        }
        if going.len() < active.len() && !going.is_empty() {
            cache.keep(&going);
        }
        active = going.iter().map(|&i| active[i]).collect();
    }
    Ok(ids
        .into_iter()
        .map(|mut t| t.split_off(context.len()))
        .collect())
}

/// The text of a continuation, as its tokens come: each call to [`TextStream::push`] gives
/// the text that became readable. Tokens are decoded after the end of the text they continue
/// (its last [`TextStream::ANCHOR`] tokens), so a tokenizer that drops a word's leading space
/// when decoding a fragment still reads naturally; a token that holds only part of a
/// character's bytes waits for the rest, and a character whose first bytes end the context
/// is given whole.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    anchor: Vec<u32>,
    anchor_text: String,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> TextStream<'a> {
    /// Tokens of the continued text decoded before the continuation.
    pub const ANCHOR: usize = 64;

    pub fn new(tok: &'a Tokenizer, context: &[u32]) -> Result<Self> {
        let anchor = context[context.len().saturating_sub(Self::ANCHOR)..].to_vec();
        // Bytes of a character the context cut short are completed by the continuation.
        let anchor_text = tok
            .decode(&anchor)?
            .trim_end_matches('\u{FFFD}')
            .to_string();
        Ok(Self {
            tok,
            anchor,
            anchor_text,
            ids: Vec::new(),
            shown: String::new(),
        })
    }

    /// The whole continuation `ids` of `context` as text, as [`TextStream::finish`] ends it.
    pub fn text_of(tok: &Tokenizer, context: &[u32], ids: &[u32]) -> Result<String> {
        let mut s = TextStream::new(tok, context)?;
        s.ids = ids.to_vec();
        s.finish()
    }

    fn text(&self) -> Result<String> {
        let mut all = self.anchor.clone();
        all.extend_from_slice(&self.ids);
        let whole = self.tok.decode(&all)?;
        Ok(match whole.strip_prefix(&self.anchor_text) {
            Some(rest) => rest.to_string(),
            None => self.tok.decode(&self.ids)?,
        })
    }

    /// Adds a token; returns the text that became readable (often empty while a character's
    /// bytes are incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.text()?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.show(text))
    }

    /// The text not given yet, once the continuation has ended (without the first bytes of
    /// a character that generation stopped inside).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.text()?.trim_end_matches('\u{FFFD}').to_string();
        Ok(self.show(text))
    }

    /// What `text` adds to what was shown. Text that decoding changed after it was shown
    /// (rare: a decoder cleaning up spaces across tokens) is not shown twice.
    fn show(&mut self, text: String) -> String {
        match text.strip_prefix(self.shown.as_str()) {
            Some(new) => {
                let new = new.to_string();
                self.shown = text;
                new
            }
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: usize) -> Sampling {
        Sampling {
            temperature,
            top_k,
            seed: 7,
            ..Sampling::greedy(1)
        }
    }

    #[test]
    fn a_continuation_streams_whole_characters() {
        let tok = Tokenizer::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gpt2/tokenizer.json"),
        )
        .unwrap();
        let context = tok.encode("Café au").unwrap();
        let text = " lait crème brûlée, “Oui”";
        let ids = tok.encode(text).unwrap();
        let mut stream = TextStream::new(&tok, &context).unwrap();
        let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        pieces.push(stream.finish().unwrap());
        // Each of è, û, “ and ” takes several byte tokens: the first ones give nothing, the
        // last the whole character.
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(
            pieces.iter().filter(|p| p.is_empty()).count() >= 6,
            "{pieces:?}"
        );
        assert!(pieces.contains(&"è".to_string()), "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert_eq!(TextStream::text_of(&tok, &context, &ids).unwrap(), text);
        // A context cut inside a character (its last byte token missing) still continues.
        let cut = &context[..context.len() - 3];
        let rest = &context[context.len() - 3..];
        assert_eq!(TextStream::text_of(&tok, cut, rest).unwrap(), "é au");
        // A continuation that stops inside a character ends before it.
        let mut stream = TextStream::new(&tok, &context).unwrap();
        let stopped = &ids[..6]; // " lait cr" and the first byte of è
        let shown: String = stopped.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(shown + &stream.finish().unwrap(), " lait cr");
        assert_eq!(
            TextStream::text_of(&tok, &context, stopped).unwrap(),
            " lait cr"
        );
    }

    #[test]
    fn greedy_takes_the_best_and_skips_non_finite() {
        let mut rng = SplitMix64::new(1);
        let l = [0.5, f32::NAN, 2.0, 2.0, -1.0];
        assert_eq!(pick(&l, &sampling(0.0, 0), &[], &mut rng), Some(2));
        assert_eq!(pick(&[f32::NAN], &sampling(0.7, 0), &[], &mut rng), None);
    }

    #[test]
    fn top_k_limits_the_draw_and_temperature_shapes_it() {
        let l = [3.0f32, 2.9, 2.8, -5.0, -6.0];
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 5];
        for _ in 0..3000 {
            seen[pick(&l, &sampling(1.0, 2), &[], &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3] + seen[4], 0, "{seen:?}");
        // p(0) / p(1) = e^0.1 ≈ 1.105 at temperature 1.
        let ratio = seen[0] as f64 / seen[1] as f64;
        assert!((1.0..1.25).contains(&ratio), "{seen:?}");
        // A low temperature almost always takes the best.
        let mut best = 0;
        for _ in 0..1000 {
            best += usize::from(pick(&l, &sampling(0.01, 0), &[], &mut rng) == Some(0));
        }
        assert!(best > 990, "{best}");
    }

    /// Each case of `tests/fixtures/sampling.json` (see `make_sampling.py`): the same tokens
    /// as transformers' processors leave, in the same order, with the same probabilities.
    #[test]
    fn candidates_match_transformers() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling.json");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let cases = json["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 10);
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        for (i, c) in cases.iter().enumerate() {
            let s = Sampling {
                temperature: c["temperature"].as_f64().unwrap(),
                top_k: c["top_k"].as_u64().unwrap() as usize,
                top_p: c["top_p"].as_f64().unwrap(),
                repetition_penalty: c["repetition_penalty"].as_f64().unwrap(),
                ..Sampling::greedy(1)
            };
            let logits: Vec<f32> = floats(&c["logits"]).iter().map(|&x| x as f32).collect();
            let got = candidates(&logits, &s, &ids(&c["recent"]));
            let want_ids = ids(&c["kept"]);
            let got_ids: Vec<u32> = got.iter().map(|p| p.0).collect();
            assert_eq!(got_ids, want_ids, "case {i}: {s:?}");
            for ((_, p), q) in got.iter().zip(floats(&c["probs"])) {
                assert!((p - q).abs() < 1e-6, "case {i}: {p} against {q}");
            }
        }
    }

    #[test]
    fn the_penalty_looks_at_the_recent_tokens_once_each() {
        // Token 0 leads by a little; penalised it falls behind token 1, and a negative
        // logit is pushed further down (multiplied).
        let l = [2.0f32, 1.8, -1.0, -1.1];
        let s = Sampling {
            repetition_penalty: 1.2,
            ..Sampling::greedy(1)
        };
        let mut rng = SplitMix64::new(1);
        assert_eq!(pick(&l, &s, &[], &mut rng), Some(0));
        assert_eq!(pick(&l, &s, &[0], &mut rng), Some(1));
        // A token seen three times is penalised once: 2.0 / 1.2 = 1.67, still above 1.5.
        let l2 = [2.0f32, 1.5];
        assert_eq!(pick(&l2, &s, &[0, 0, 0], &mut rng), Some(0));
        let at_one = Sampling {
            temperature: 1.0,
            ..s
        };
        let p = candidates(&l, &at_one, &[2]);
        let p3 = p.iter().find(|x| x.0 == 3).unwrap().1;
        let p2 = p.iter().find(|x| x.0 == 2).unwrap().1;
        // -1.0 · 1.2 = -1.2 now ranks below -1.1.
        assert!(p2 < p3, "{p:?}");
        // Ids past the logits (padding rows) are ignored.
        assert_eq!(candidates(&l, &s, &[99]), vec![(0, 1.0)]);
        // The range: the last N tokens of the text, or all of it.
        let ranged = Sampling {
            repetition_range: 2,
            ..s
        };
        assert_eq!(ranged.recent(&[5, 6, 7]), &[6, 7]);
        assert_eq!(ranged.recent(&[7]), &[7]);
        assert_eq!(s.recent(&[5, 6, 7]), &[5, 6, 7]);
    }

    #[test]
    fn top_p_keeps_the_fewest_tokens_that_reach_it() {
        // At temperature 1: probabilities ≈ 0.51, 0.31, 0.11, 0.04, 0.02.
        let l = [2.0f32, 1.5, 0.5, -0.5, -1.0];
        let s = |top_p| Sampling {
            temperature: 1.0,
            top_p,
            ..Sampling::greedy(1)
        };
        let kept = |top_p| candidates(&l, &s(top_p), &[]).len();
        assert_eq!(kept(1.0), 5);
        assert_eq!(kept(0.9), 3);
        assert_eq!(kept(0.5), 1);
        assert_eq!(kept(0.52), 2);
        assert_eq!(kept(1e-9), 1);
        let p = candidates(&l, &s(0.9), &[]);
        assert!((p.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        let mut rng = SplitMix64::new(9);
        for _ in 0..500 {
            assert!(pick(&l, &s(0.9), &[], &mut rng).unwrap() < 3);
        }
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let ok = Sampling::greedy(1);
        assert_eq!(ok.problem(), None);
        for (bad, name) in [
            (
                Sampling {
                    temperature: -1.0,
                    ..ok
                },
                "temperature",
            ),
            (
                Sampling {
                    temperature: f64::NAN,
                    ..ok
                },
                "temperature",
            ),
            (Sampling { top_p: 0.0, ..ok }, "top_p"),
            (Sampling { top_p: 1.5, ..ok }, "top_p"),
            (
                Sampling {
                    top_p: f64::NAN,
                    ..ok
                },
                "top_p",
            ),
            (
                Sampling {
                    repetition_penalty: 0.0,
                    ..ok
                },
                "repetition_penalty",
            ),
            (
                Sampling {
                    repetition_penalty: 11.0,
                    ..ok
                },
                "repetition_penalty",
            ),
        ] {
            assert_eq!(bad.problem().map(|p| p.0), Some(name), "{bad:?}");
        }
    }
}
