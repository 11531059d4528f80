//! A loaded causal LM: token embedding, the family's transformer body, and the LM head;
//! soft-prompt forward and the loss over text positions.
//!
//! The soft prompt `[n, d_embed]` is prepended to the token embeddings (KoboldAI and PEFT
//! inject it as the output of the input-embedding module), takes positions `0..n`, and the
//! loss covers the text tokens only: text token 0 is predicted from the last soft position.
//! Frozen weights are plain (untracked) tensors, so under `Autodiff` only the prompt gets
//! a gradient.

use super::kernels::{Kernels, cap_logits};
use anyhow::{Result, bail};
use burn::tensor::{DType, Int, Tensor, backend::Backend};

use super::cohere::Cohere;
use super::config::{Arch, ArchSpec, ModelConfig};
use super::gemma::Gemma;
use super::gpt_neo::GptNeo;
use super::gpt_neox::GptNeoX;
use super::gpt2::Gpt2;
use super::gptj::GptJ;
use super::llama::Llama;
use super::ops::{self, Cache, Linear, Loader, Source};
use super::opt::Opt;
use super::weights::Weights;
use super::xglm::Xglm;

/// Precision of the frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 on CPU; the checkpoint's own dtype (bf16/f16) on CUDA.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Precision::Auto,
            "f32" | "float32" => Precision::F32,
            "bf16" | "bfloat16" => Precision::Bf16,
            "f16" | "float16" => Precision::F16,
            other => bail!("precision \"{other}\" is not one of auto, f32, bf16, f16"),
        })
    }

    /// The dtype weights will run in, given where they run and how they are stored.
    pub fn resolve(self, on_gpu: bool, stored: Option<DType>) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
            Precision::Auto if !on_gpu => DType::F32,
            Precision::Auto => match stored {
                Some(d @ (DType::BF16 | DType::F16)) => d,
                _ => DType::F32,
            },
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Dtype of the frozen weights and activations.
    pub dtype: DType,
}

enum Body<B: Backend> {
    Gpt2(Gpt2<B>),
    GptJ(GptJ<B>),
    GptNeoX(GptNeoX<B>),
    GptNeo(GptNeo<B>),
    Opt(Opt<B>),
    Llama(Llama<B>),
    Gemma(Gemma<B>),
    Cohere(Cohere<B>),
    Xglm(Xglm<B>),
}

/// The LM head's weight as checkpoints name it.
pub fn head_name(arch: Arch) -> &'static str {
    if arch == Arch::GptNeoX {
        "embed_out.weight"
    } else {
        "lm_head.weight"
    }
}

/// Name of the token-embedding tensor of each family.
pub fn embed_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 | Arch::GptJ | Arch::GptNeo => "transformer.wte.weight",
        Arch::GptNeoX => "gpt_neox.embed_in.weight",
        Arch::Opt => "model.decoder.embed_tokens.weight",
        Arch::Llama
        | Arch::Mistral
        | Arch::Qwen2
        | Arch::Qwen3
        | Arch::Gemma
        | Arch::Gemma2
        | Arch::Gemma3
        | Arch::Cohere
        | Arch::Phi3
        | Arch::Xglm => "model.embed_tokens.weight",
    }
}

/// A frozen causal language model.
pub struct CausalLm<B: Backend> {
    pub config: ModelConfig,
    pub dtype: DType,
    /// Token embedding `[vocab rows, d_embed]`.
    embed: Tensor<B, 2>,
    /// What the embedding module multiplies its rows by (Gemma's `√hidden`, XGLM's
    /// `√d_model`).
    embed_scale: Option<f32>,
    head: Linear<B>,
    body: Body<B>,
}

impl<B: Kernels> CausalLm<B> {
    /// Loads a checkpoint.
    pub fn load(
        config: &ModelConfig,
        weights: &Weights,
        device: &B::Device,
        opts: LoadOptions,
    ) -> Result<Self> {
        Self::build(config, Source::Checkpoint(weights), device, opts).map(|(m, _)| m)
    }

    /// Random weights of the configured shapes (benchmarks); returns the parameter count too.
    pub fn random(
        config: &ModelConfig,
        device: &B::Device,
        opts: LoadOptions,
    ) -> Result<(Self, usize)> {
        Self::build(
            config,
            Source::Random {
                tied: config.tie_word_embeddings,
            },
            device,
            opts,
        )
    }

    fn build(
        config: &ModelConfig,
        source: Source<'_>,
        device: &B::Device,
        opts: LoadOptions,
    ) -> Result<(Self, usize)> {
        let ld = Loader::<B>::new(source, device, opts.dtype);
        let (v, d) = (config.vocab_size, config.d_embed);
        let body = match config.arch {
            Arch::Gpt2 => Body::Gpt2(Gpt2::load(config, &ld)?),
            Arch::GptJ => Body::GptJ(GptJ::load(config, &ld)?),
            Arch::GptNeoX => Body::GptNeoX(GptNeoX::load(config, &ld)?),
            Arch::GptNeo => Body::GptNeo(GptNeo::load(config, &ld)?),
            Arch::Opt => Body::Opt(Opt::load(config, &ld)?),
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 => {
                Body::Llama(Llama::load(config, &ld)?)
            }
            Arch::Gemma | Arch::Gemma2 | Arch::Gemma3 => Body::Gemma(Gemma::load(config, &ld)?),
            Arch::Cohere => Body::Cohere(Cohere::load(config, &ld)?),
            Arch::Xglm => Body::Xglm(Xglm::load(config, &ld)?),
        };
        let embed: Tensor<B, 2> = ld.tensor(embed_name(config.arch), [v, d])?;
        let head_name = head_name(config.arch);
        let head = if config.tie_word_embeddings {
            // Tied head: the embedding, as transformers ties it, whether or not the checkpoint
            // also stores a copy (transformers 4's .bin checkpoints do).
            Linear {
                w: embed.clone().transpose(),
                b: None,
            }
        } else if ld.has(head_name) {
            let prefix = head_name.trim_end_matches(".weight");
            let bias = match source {
                Source::Checkpoint(_) => ld.has(&format!("{prefix}.bias")),
                // Of the supported families only GPT-J's head has a bias.
                Source::Random { .. } => config.arch == Arch::GptJ,
            };
            ld.linear(prefix, d, v, bias)?
        } else {
            bail!(
                "the checkpoint has no `{head_name}` and config.json does not tie it to the embedding"
            );
        };
        let model = Self {
            config: config.clone(),
            dtype: opts.dtype,
            embed_scale: super::config::embed_scale(config, opts.dtype),
            embed,
            head,
            body,
        };
        Ok((model, ld.loaded.get()))
    }

    pub fn device(&self) -> B::Device {
        self.embed.device()
    }

    /// Rows of the embedding matrix (≥ the tokenizer's vocabulary).
    pub fn embed_rows(&self) -> usize {
        self.embed.dims()[0]
    }

    /// The token-embedding matrix `[rows, d_embed]` (in the compute dtype), as stored:
    /// the embedding of a token is its row times [`Self::embed_scale`].
    pub fn embedding_matrix(&self) -> &Tensor<B, 2> {
        &self.embed
    }

    /// What the model's embedding module multiplies a row by (Gemma's `√hidden`, rounded
    /// to the weights' dtype; XGLM's `√d_model`); 1 for the other families. The soft prompt sits beside the
    /// scaled embeddings, as PEFT puts it.
    pub fn embed_scale(&self) -> f32 {
        self.embed_scale.unwrap_or(1.0)
    }

    /// `ids [b, t]` → token embeddings `[b, t, d_embed]`.
    pub fn embed_tokens(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = ops::embedding(&self.embed, ids);
        match self.embed_scale {
            Some(scale) => x.mul_scalar(scale),
            None => x,
        }
    }

    /// Input embeddings `[b, s, d_embed]` → final hidden states `[b, s, d_embed]`.
    pub fn hidden(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.hidden_cached(x, None)
    }

    /// [`Self::hidden`] of inputs that continue what `cache` holds (positions
    /// `cache.len()..`), whose keys and values join it; without a cache, from position 0.
    pub fn hidden_cached(&self, x: Tensor<B, 3>, mut cache: Cache<'_, B>) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let x = x.cast(self.dtype);
        let c = cache.as_deref_mut();
        let h = match &self.body {
            Body::Gpt2(m) => m.forward(x, c),
            Body::GptJ(m) => m.forward(x, c),
            Body::GptNeoX(m) => m.forward(x, c),
            Body::GptNeo(m) => m.forward(x, c),
            Body::Opt(m) => m.forward(x, c),
            Body::Llama(m) => m.forward(x, c),
            Body::Gemma(m) => m.forward(x, c),
            Body::Cohere(m) => m.forward(x, c),
            Body::Xglm(m) => m.forward(x, c),
        };
        if let Some(c) = cache {
            c.advance(s);
        }
        h
    }

    /// Whether the keys a cache holds for `len` positions are still those of a sequence of
    /// `total`: not when LongRoPE changes every position's rotation in between.
    pub fn cache_holds(&self, len: usize, total: usize) -> bool {
        let local = match &self.config.spec {
            ArchSpec::Gemma { local_rotary, .. } => local_rotary.as_ref(),
            _ => None,
        };
        (self.config.rotary.iter())
            .chain(local)
            .all(|r| ops::rotation_holds(r, len, total))
    }

    /// Hidden states → logits `[b, s, vocab]` (float32), soft-capped where the model says
    /// so (Gemma 2).
    pub fn head(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        cap_logits(self.head.forward(h), self.config.final_softcap()).cast(DType::F32)
    }

    /// `concat(prompt, E(ids))` along the sequence: `[b, n + t, d_embed]`.
    pub fn prompt_inputs(&self, prompt: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, _] = ids.dims();
        let [n, d] = prompt.dims();
        let p = prompt.cast(self.dtype).unsqueeze::<3>().expand([b, n, d]);
        Tensor::cat(vec![p, self.embed_tokens(ids)], 1)
    }

    /// Logits for plain token ids (positions `0..t`).
    pub fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.head(self.hidden(self.embed_tokens(ids)))
    }

    /// Logits with the soft prompt prepended: `[b, n + t, vocab]`.
    pub fn logits_with_prompt(&self, prompt: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.head(self.hidden(self.prompt_inputs(prompt, ids)))
    }

    /// Mean next-token loss without a prompt: positions `0..t-1` predict tokens `1..t`.
    pub fn loss(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let t = ids.dims()[1];
        let h = self.hidden(self.embed_tokens(ids.clone()));
        ops::head_loss(
            &self.head,
            h.narrow(1, 0, t - 1),
            ids.narrow(1, 1, t - 1),
            self.config.final_softcap(),
        )
    }

    /// Mean loss over the text tokens with the prompt prepended (PEFT's prompt-tuning loss):
    /// text token j is predicted from position `n + j - 1`, so token 0 from the last soft
    /// position. Only the text positions go through the LM head.
    pub fn loss_with_prompt(&self, prompt: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let n = prompt.dims()[0];
        if n == 0 {
            return self.loss(ids);
        }
        let t = ids.dims()[1];
        let h = self.hidden(self.prompt_inputs(prompt, ids.clone()));
        ops::head_loss(
            &self.head,
            h.narrow(1, n - 1, t),
            ids,
            self.config.final_softcap(),
        )
    }
}
