//! `config.json` → a typed model description.
//!
//! transformers has renamed keys over the years (`n_embd` / `hidden_size`, `rope_theta` /
//! `rope_parameters.rope_theta`, …); every reader here accepts the names in use by the
//! checkpoints people actually load. Anything missing that has no safe default is an error
//! naming the key.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// The architecture families softtune supports, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    GptJ,
    GptNeoX,
    GptNeo,
    Opt,
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Gemma (the first generation).
    Gemma,
    /// Gemma 2: soft-capped attention scores and logits.
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`; `gemma3` checkpoints hold one beside a vision
    /// tower, which is not loaded).
    Gemma3,
    /// Command R, Aya.
    Cohere,
    /// Phi-3, Phi-3.5, Phi-4 (the llama family with fused projections).
    Phi3,
    /// XGLM and the fairseq dense models converted to it (KoboldAI's fairseq-dense).
    Xglm,
}

impl Arch {
    pub const SUPPORTED: &'static [&'static str] = &[
        "gpt2",
        "gptj",
        "gpt_neox",
        "gpt_neo",
        "opt",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "cohere",
        "phi3",
        "xglm",
    ];

    pub fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "gpt2" => Arch::Gpt2,
            "gptj" => Arch::GptJ,
            "gpt_neox" => Arch::GptNeoX,
            "gpt_neo" => Arch::GptNeo,
            "opt" => Arch::Opt,
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "gemma3_text" | "gemma3" => Arch::Gemma3,
            "cohere" => Arch::Cohere,
            "phi3" => Arch::Phi3,
            "xglm" => Arch::Xglm,
            _ => return None,
        })
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::GptJ => "gptj",
            Arch::GptNeoX => "gpt_neox",
            Arch::GptNeo => "gpt_neo",
            Arch::Opt => "opt",
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
            Arch::Cohere => "cohere",
            Arch::Phi3 => "phi3",
            Arch::Xglm => "xglm",
        }
    }
}

/// Element-wise non-linearity of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: exact, with erf.
    Gelu,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    fn parse(s: &str, key: &str) -> Result<Self> {
        Ok(match s {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_approx" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!(
                "`{key}` = \"{other}\" is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ),
        })
    }
}

/// How rotary position embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryStyle {
    /// GPT-J: pairs (0,1), (2,3), … (`rotate_every_two`).
    Interleaved,
    /// GPT-NeoX / Llama: first half with second half (`rotate_half`).
    Half,
}

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Phi-3's LongRoPE: each frequency divided by its own factor, the short ones up to
    /// the original context and the long ones past it, and cos and sin multiplied by
    /// `attention_factor`.
    LongRope {
        short: Vec<f64>,
        long: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
    /// Llama 3.x: low frequencies divided by `factor`, smooth blend in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotary {
    pub style: RotaryStyle,
    /// Number of leading head dimensions that rotate (the rest pass through).
    pub dims: usize,
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// Family-specific details the shared fields do not cover.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchSpec {
    Gpt2 {
        scale_attn_weights: bool,
        scale_attn_by_inverse_layer_idx: bool,
    },
    GptJ,
    GptNeoX {
        parallel_residual: bool,
    },
    GptNeo {
        /// Per layer: `Some(window)` for local attention, `None` for global.
        windows: Vec<Option<usize>>,
    },
    Opt {
        pre_layer_norm: bool,
        final_layer_norm: bool,
    },
    /// llama, mistral, qwen2, qwen3.
    Llama {
        /// Per layer: sliding-window size where one applies.
        windows: Vec<Option<usize>>,
        /// Bias on q/k/v (qwen2 always; llama and qwen3 when `attention_bias`).
        qkv_bias: bool,
        /// Bias on the attention's output projection (llama and qwen3 when
        /// `attention_bias`; never qwen2's).
        o_bias: bool,
        /// An RMSNorm over each query and key head before the rotary embedding (qwen3's
        /// `q_norm` / `k_norm`).
        qk_norm: bool,
    },
    /// gemma, gemma2, gemma3: RMSNorms scaling by `1 + weight`, token embeddings scaled by
    /// `√hidden`, a GELU-gated MLP.
    Gemma {
        /// Per layer: sliding-window size where one applies (the local layers of gemma2
        /// and gemma3).
        windows: Vec<Option<usize>>,
        /// The rotary of the sliding-window layers (gemma3: `rope_local_base_freq`, no
        /// scaling); the global layers use [`ModelConfig::rotary`].
        local_rotary: Option<Rotary>,
        /// Multiplier of `q·k`: `query_pre_attn_scalar^-½` (gemma2, gemma3), `head_dim^-½`.
        attn_scale: f64,
        /// Bias on q, k, v and the output projection (`attention_bias`).
        attention_bias: bool,
        /// gemma2, gemma3: norms on the attention's and the MLP's outputs too (before each
        /// residual add).
        post_norms: bool,
        /// gemma3: an RMSNorm over each query and key head.
        qk_norm: bool,
        /// gemma2: `c · tanh(x / c)` of the scaled attention scores
        /// (`attn_logit_softcapping`).
        attn_softcap: Option<f64>,
        /// gemma2: `c · tanh(x / c)` of the logits (`final_logit_softcapping`).
        final_softcap: Option<f64>,
    },
    /// cohere: parallel attention and MLP on one bias-free LayerNorm, interleaved rotary.
    Cohere {
        /// Bias on q, k, v and the output projection (`attention_bias`).
        attention_bias: bool,
        /// A LayerNorm over each query and key head, with a weight per head
        /// (`use_qk_norm`).
        qk_norm: bool,
        /// `logit_scale`: the logits' multiplier.
        logit_scale: f64,
    },
    /// xglm: sinusoidal positions, pre-LN blocks with biases, a GELU MLP.
    Xglm {
        /// Token embeddings multiplied by `√d_model` (`scale_embedding`).
        scale_embedding: bool,
    },
}

/// A parsed `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    /// Width of the rows of the token-embedding matrix (= soft-prompt width).
    pub d_embed: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub norm_eps: f64,
    pub activation: Activation,
    pub rotary: Option<Rotary>,
    pub tie_word_embeddings: bool,
    pub eos_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written in the file (e.g. "bfloat16").
    pub torch_dtype: Option<String>,
    pub spec: ArchSpec,
}

/// Typed access to the JSON object with key-naming errors.
struct Keys<'a> {
    v: &'a Value,
}

impl<'a> Keys<'a> {
    fn get(&self, names: &[&str]) -> Option<&'a Value> {
        names
            .iter()
            .filter_map(|k| self.v.get(*k))
            .find(|v| !v.is_null())
    }

    fn usize_opt(&self, names: &[&str]) -> Result<Option<usize>> {
        match self.get(names) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| anyhow!("`{}` must be a non-negative integer, found {v}", names[0])),
        }
    }

    fn usize(&self, names: &[&str]) -> Result<usize> {
        self.usize_opt(names)?
            .ok_or_else(|| anyhow!("missing key `{}`", names.join("` / `")))
    }

    fn f64_opt(&self, names: &[&str]) -> Result<Option<f64>> {
        match self.get(names) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| anyhow!("`{}` must be a number, found {v}", names[0])),
        }
    }

    fn bool_or(&self, names: &[&str], default: bool) -> Result<bool> {
        match self.get(names) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| anyhow!("`{}` must be true or false, found {v}", names[0])),
        }
    }

    fn str_opt(&self, names: &[&str]) -> Result<Option<&'a str>> {
        match self.get(names) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| anyhow!("`{}` must be a string, found {v}", names[0])),
        }
    }

    /// A token id that may be written as a number or a list of numbers (first wins).
    fn token_id(&self, name: &str) -> Option<u32> {
        match self.v.get(name)? {
            Value::Number(n) => n.as_u64().map(|x| x as u32),
            Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
            _ => None,
        }
    }
}

impl ModelConfig {
    /// Reads and parses a `config.json` file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let k = Keys { v };
        let model_type = k
            .str_opt(&["model_type"])?
            .ok_or_else(|| anyhow!("missing key `model_type`"))?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            anyhow!(
                "model_type \"{model_type}\" is not supported; supported: {}",
                Arch::SUPPORTED.join(", ")
            )
        })?;
        if matches!(arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3) {
            return gemma(v, arch, model_type);
        }
        let vocab_size = k.usize(&["vocab_size"])?;
        let torch_dtype = k.str_opt(&["torch_dtype", "dtype"])?.map(str::to_string);
        let eos_token_id = k.token_id("eos_token_id");
        let bos_token_id = k.token_id("bos_token_id");

        let cfg = match arch {
            Arch::Gemma | Arch::Gemma2 | Arch::Gemma3 => unreachable!("read by gemma() above"),
            Arch::Phi3 => {
                let (hidden, n_heads, n_kv_heads) = grouped_heads(&k)?;
                let head_dim = match k.usize_opt(&["head_dim"])? {
                    Some(d) => d,
                    None => div_heads(hidden, n_heads)?,
                };
                let rope = v
                    .get("rope_parameters")
                    .filter(|r| r.is_object())
                    .map(|r| Keys { v: r });
                let partial = match k.f64_opt(&["partial_rotary_factor"])? {
                    Some(p) => p,
                    None => match &rope {
                        Some(r) => r.f64_opt(&["partial_rotary_factor"])?.unwrap_or(1.0),
                        None => 1.0,
                    },
                };
                let dims = (head_dim as f64 * partial) as usize;
                check_rotary_dims(dims, head_dim, "partial_rotary_factor")?;
                let n_layers = k.usize(&["num_hidden_layers"])?;
                let max_positions = k.usize(&["max_position_embeddings"])?;
                let window = k.usize_opt(&["sliding_window"])?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    intermediate: k.usize(&["intermediate_size"])?,
                    max_positions,
                    norm_eps: k.f64_opt(&["rms_norm_eps"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["hidden_act"], "silu")?,
                    rotary: Some(Rotary {
                        style: RotaryStyle::Half,
                        dims,
                        theta: rope_theta(&k, &["rope_theta"])?,
                        scaling: phi3_scaling(v, &k, dims, max_positions)?,
                    }),
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], false)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Llama {
                        windows: vec![window; n_layers],
                        qkv_bias: false,
                        o_bias: false,
                        qk_norm: false,
                    },
                }
            }
            Arch::Cohere => {
                let (hidden, n_heads, n_kv_heads) = grouped_heads(&k)?;
                let head_dim = div_heads(hidden, n_heads)?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers: k.usize(&["num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    intermediate: k.usize(&["intermediate_size"])?,
                    max_positions: k.usize(&["max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["layer_norm_eps"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["hidden_act"], "silu")?,
                    rotary: Some(Rotary {
                        style: RotaryStyle::Interleaved,
                        dims: head_dim,
                        theta: rope_theta(&k, &["rope_theta"])?,
                        scaling: rope_scaling(v)?,
                    }),
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Cohere {
                        attention_bias: k.bool_or(&["attention_bias"], false)?,
                        qk_norm: k.bool_or(&["use_qk_norm"], false)?,
                        logit_scale: k.f64_opt(&["logit_scale"])?.unwrap_or(0.0625),
                    },
                }
            }
            Arch::Xglm => {
                let hidden = k.usize(&["d_model"])?;
                let n_heads = k.usize(&["attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers: k.usize(&["num_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize(&["ffn_dim"])?,
                    max_positions: k.usize_opt(&["max_position_embeddings"])?.unwrap_or(2048),
                    // nn.LayerNorm's default; XGLMConfig has no key for it.
                    norm_eps: 1e-5,
                    activation: activation(&k, &["activation_function"], "gelu")?,
                    rotary: None,
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Xglm {
                        scale_embedding: k.bool_or(&["scale_embedding"], true)?,
                    },
                }
            }
            Arch::Gpt2 => {
                let hidden = k.usize(&["n_embd", "hidden_size"])?;
                let n_heads = k.usize(&["n_head", "num_attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers: k.usize(&["n_layer", "num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize_opt(&["n_inner"])?.unwrap_or(4 * hidden),
                    max_positions: k.usize(&["n_positions", "max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["layer_norm_epsilon"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["activation_function"], "gelu_new")?,
                    rotary: None,
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Gpt2 {
                        scale_attn_weights: k.bool_or(&["scale_attn_weights"], true)?,
                        scale_attn_by_inverse_layer_idx: k
                            .bool_or(&["scale_attn_by_inverse_layer_idx"], false)?,
                    },
                }
            }
            Arch::GptJ => {
                let hidden = k.usize(&["n_embd", "hidden_size"])?;
                let n_heads = k.usize(&["n_head", "num_attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                let dims = k.usize_opt(&["rotary_dim"])?.unwrap_or(head_dim);
                check_rotary_dims(dims, head_dim, "rotary_dim")?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers: k.usize(&["n_layer", "num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize_opt(&["n_inner"])?.unwrap_or(4 * hidden),
                    max_positions: k.usize(&["n_positions", "max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["layer_norm_epsilon"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["activation_function"], "gelu_new")?,
                    rotary: Some(Rotary {
                        style: RotaryStyle::Interleaved,
                        dims,
                        theta: 10000.0,
                        scaling: RopeScaling::None,
                    }),
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], false)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::GptJ,
                }
            }
            Arch::GptNeoX => {
                let hidden = k.usize(&["hidden_size"])?;
                let n_heads = k.usize(&["num_attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                let rp = v.get("rope_parameters");
                let pct = match k.f64_opt(&["rotary_pct"])? {
                    Some(p) => p,
                    None => rp
                        .and_then(|r| r.get("partial_rotary_factor"))
                        .and_then(Value::as_f64)
                        .unwrap_or(0.25),
                };
                let dims = (head_dim as f64 * pct) as usize;
                check_rotary_dims(dims, head_dim, "rotary_pct")?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers: k.usize(&["num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize(&["intermediate_size"])?,
                    max_positions: k.usize(&["max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["layer_norm_eps"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["hidden_act"], "gelu")?,
                    rotary: Some(Rotary {
                        style: RotaryStyle::Half,
                        dims,
                        theta: rope_theta(&k, &["rotary_emb_base", "rope_theta"])?,
                        scaling: rope_scaling(v)?,
                    }),
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], false)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::GptNeoX {
                        parallel_residual: k.bool_or(&["use_parallel_residual"], true)?,
                    },
                }
            }
            Arch::GptNeo => {
                let hidden = k.usize(&["hidden_size"])?;
                let n_heads = k.usize(&["num_heads", "num_attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                let n_layers = k.usize(&["num_layers", "num_hidden_layers"])?;
                let window = k.usize_opt(&["window_size"])?.unwrap_or(256);
                let layers = gpt_neo_layers(v, n_layers)?;
                let windows = layers
                    .iter()
                    .map(|t| (t == "local").then_some(window))
                    .collect();
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize_opt(&["intermediate_size"])?.unwrap_or(4 * hidden),
                    max_positions: k.usize(&["max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["layer_norm_epsilon"])?.unwrap_or(1e-5),
                    activation: activation(&k, &["activation_function"], "gelu_new")?,
                    rotary: None,
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::GptNeo { windows },
                }
            }
            Arch::Opt => {
                let hidden = k.usize(&["hidden_size"])?;
                let n_heads = k.usize(&["num_attention_heads"])?;
                let head_dim = div_heads(hidden, n_heads)?;
                let pre = k.bool_or(&["do_layer_norm_before"], true)?;
                let removed = k.bool_or(&["_remove_final_layer_norm"], false)?;
                if !k.bool_or(&["enable_bias"], true)? {
                    bail!("`enable_bias` = false is not supported for opt");
                }
                if !k.bool_or(&["layer_norm_elementwise_affine"], true)? {
                    bail!("`layer_norm_elementwise_affine` = false is not supported for opt");
                }
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: k.usize_opt(&["word_embed_proj_dim"])?.unwrap_or(hidden),
                    hidden,
                    n_layers: k.usize(&["num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim,
                    intermediate: k.usize(&["ffn_dim"])?,
                    max_positions: k.usize(&["max_position_embeddings"])?,
                    norm_eps: 1e-5,
                    activation: activation(&k, &["activation_function"], "relu")?,
                    rotary: None,
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Opt {
                        pre_layer_norm: pre,
                        final_layer_norm: pre && !removed,
                    },
                }
            }
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => {
                let (hidden, n_heads, n_kv_heads) = grouped_heads(&k)?;
                let head_dim = match k.usize_opt(&["head_dim"])? {
                    Some(d) => d,
                    // transformers' Qwen3Config has its own default, not hidden / heads.
                    None if arch == Arch::Qwen3 => 128,
                    None => div_heads(hidden, n_heads)?,
                };
                let n_layers = k.usize(&["num_hidden_layers"])?;
                let windows = llama_windows(&k, arch, n_layers)?;
                if k.bool_or(&["mlp_bias"], false)? {
                    bail!("`mlp_bias` = true is not supported");
                }
                // Mistral's attention has no biases whatever the config says; qwen2's q/k/v
                // always have one, its output projection never.
                let attention_bias =
                    arch != Arch::Mistral && k.bool_or(&["attention_bias"], false)?;
                ModelConfig {
                    arch,
                    vocab_size,
                    d_embed: hidden,
                    hidden,
                    n_layers,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    intermediate: k.usize(&["intermediate_size"])?,
                    max_positions: k.usize(&["max_position_embeddings"])?,
                    norm_eps: k.f64_opt(&["rms_norm_eps"])?.unwrap_or(1e-6),
                    activation: activation(&k, &["hidden_act"], "silu")?,
                    rotary: Some(Rotary {
                        style: RotaryStyle::Half,
                        dims: head_dim,
                        theta: rope_theta(&k, &["rope_theta"])?,
                        scaling: rope_scaling(v)?,
                    }),
                    tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], false)?,
                    eos_token_id,
                    bos_token_id,
                    torch_dtype,
                    spec: ArchSpec::Llama {
                        windows,
                        qkv_bias: arch == Arch::Qwen2 || attention_bias,
                        o_bias: arch != Arch::Qwen2 && attention_bias,
                        qk_norm: arch == Arch::Qwen3,
                    },
                }
            }
        };
        if cfg.vocab_size == 0 || cfg.hidden == 0 || cfg.n_layers == 0 {
            bail!("vocab_size, hidden size and layer count must all be positive");
        }
        Ok(cfg)
    }

    /// The soft cap of the logits, `c · tanh(logits / c)` (Gemma 2's
    /// `final_logit_softcapping`); `None` for every other family.
    pub fn final_softcap(&self) -> Option<f64> {
        match self.spec {
            ArchSpec::Gemma { final_softcap, .. } => final_softcap,
            _ => None,
        }
    }

    /// What KoboldAI's soft prompts (`.zip`, and mtj's `.mtjsp`) are multiplied by to give the
    /// model's input: XGLM's `√d_model` with `scale_embedding`; `None` (1) for every other
    /// family. KoboldAI puts a soft prompt's rows where the embedding module's output is, and
    /// transformers 4's XGLM multiplied that output by `√d_model` in its forward, so KoboldAI's
    /// prompts for the fairseq-dense models are stored unscaled; transformers 5 scales inside
    /// the embedding module, so PEFT's prompt (and softtune's) is the model's input as is.
    pub fn kobold_scale(&self) -> Option<f32> {
        match self.spec {
            ArchSpec::Xglm {
                scale_embedding: true,
            } => Some((self.hidden as f64).sqrt() as f32),
            _ => None,
        }
    }

    /// Context length in tokens (learned position tables or RoPE's trained range).
    pub fn context_length(&self) -> usize {
        self.max_positions
    }
}

/// gemma and gemma3 (`gemma3_text`, or the text model of a `gemma3` checkpoint, whose
/// `text_config` lists only what differs from transformers' Gemma3TextConfig: keys left
/// out take its defaults).
fn gemma(top: &Value, arch: Arch, model_type: &str) -> Result<ModelConfig> {
    let v = match model_type {
        "gemma3" => top
            .get("text_config")
            .filter(|t| t.is_object())
            .ok_or_else(|| anyhow!("a `gemma3` config needs its `text_config` object"))?,
        _ => top,
    };
    let (k, outer) = (Keys { v }, Keys { v: top });
    let g3 = arch == Arch::Gemma3;
    let g2 = arch == Arch::Gemma2;
    // Gemma 2 soft-caps; the other generations have no such step, and a config that asks
    // for one is not what the model was trained with.
    let mut softcaps = [None, None];
    for (key, cap) in ["attn_logit_softcapping", "final_logit_softcapping"]
        .into_iter()
        .zip(&mut softcaps)
    {
        let Some(x) = k.f64_opt(&[key])? else {
            continue;
        };
        if !g2 {
            bail!(
                "`{key}` = {x}: logit soft-capping is Gemma 2's (model_type \"gemma2\"), not {model_type}'s"
            );
        }
        if !(x.is_finite() && x > 0.0) {
            bail!("`{key}` = {x}: a soft cap must be a positive number (or null for none)");
        }
        *cap = Some(x);
    }
    let [attn_softcap, final_softcap] = softcaps;
    if k.bool_or(&["use_bidirectional_attention"], false)? {
        bail!("`use_bidirectional_attention` = true (an embedding model) is not supported");
    }
    // Gemma3TextConfig's defaults; the first generation's configs are complete.
    let num = |names: &[&str], g3_default: usize| -> Result<usize> {
        match k.usize_opt(names)? {
            Some(x) => Ok(x),
            None if g3 => Ok(g3_default),
            None => k.usize(names),
        }
    };
    let hidden = num(&["hidden_size"], 2304)?;
    let n_heads = num(&["num_attention_heads"], 8)?;
    let n_kv_heads = match k.usize_opt(&["num_key_value_heads"])? {
        Some(x) => x,
        None if g3 => 4,
        None => n_heads,
    };
    check_grouped_heads(n_heads, n_kv_heads)?;
    let head_dim = k.usize_opt(&["head_dim"])?.unwrap_or(256);
    let n_layers = num(&["num_hidden_layers"], 26)?;
    // The first generation's configs say "gelu" and mean the tanh approximation
    // (transformers rewrites it so).
    let activation = match k.str_opt(&["hidden_activation", "hidden_act"])? {
        Some("gelu") if arch == Arch::Gemma => Activation::GeluTanh,
        Some(name) => Activation::parse(name, "hidden_activation")?,
        None => Activation::GeluTanh,
    };
    let rope = v.get("rope_parameters").filter(|r| r.is_object());
    let per_layer_type = |kind: &str| rope.and_then(|r| r.get(kind)).filter(|r| r.is_object());
    let global = match per_layer_type("full_attention") {
        Some(r) => Rotary {
            style: RotaryStyle::Half,
            dims: head_dim,
            theta: r.get("rope_theta").and_then(Value::as_f64).unwrap_or(1e6),
            scaling: scaling_of(r)?,
        },
        None => Rotary {
            style: RotaryStyle::Half,
            dims: head_dim,
            theta: match k.f64_opt(&["rope_theta"])? {
                Some(t) => t,
                None if g3 => 1e6,
                None => rope_theta(&k, &["rope_theta"])?,
            },
            scaling: rope_scaling(v)?,
        },
    };
    // The local layers of Gemma 2 and 3: from `layer_types`, else all but every `every`-th.
    let layer_windows = |window: usize, every: usize| -> Result<Vec<Option<usize>>> {
        Ok(match v.get("layer_types").and_then(Value::as_array) {
            Some(types) if types.len() == n_layers => types
                .iter()
                .map(|t| (t.as_str() == Some("sliding_attention")).then_some(window))
                .collect(),
            Some(types) => bail!(
                "`layer_types` has {} entries but `num_hidden_layers` is {n_layers}",
                types.len()
            ),
            None => (0..n_layers)
                .map(|i| (!(i + 1).is_multiple_of(every)).then_some(window))
                .collect(),
        })
    };
    // Gemma 2 and 3 scale `q·k` by `query_pre_attn_scalar^-½`, the first generation by
    // `head_dim^-½`.
    let attn_scale = if g2 || g3 {
        k.f64_opt(&["query_pre_attn_scalar"])?.unwrap_or(256.0)
    } else {
        head_dim as f64
    }
    .powf(-0.5);
    let (windows, local_rotary) = if g2 {
        let window = k.usize_opt(&["sliding_window"])?.unwrap_or(4096);
        (layer_windows(window, 2)?, None)
    } else if g3 {
        let local = match per_layer_type("sliding_attention") {
            Some(r) => Rotary {
                theta: r.get("rope_theta").and_then(Value::as_f64).unwrap_or(1e4),
                scaling: scaling_of(r)?,
                ..global.clone()
            },
            None => Rotary {
                theta: k.f64_opt(&["rope_local_base_freq"])?.unwrap_or(1e4),
                scaling: RopeScaling::None,
                ..global.clone()
            },
        };
        let window = num(&["sliding_window"], 4096)?;
        let pattern = k
            .usize_opt(&["sliding_window_pattern"])?
            .unwrap_or(6)
            .max(1);
        (layer_windows(window, pattern)?, Some(local))
    } else {
        (vec![None; n_layers], None)
    };
    let token = |name: &str, g3_default: u32| {
        k.token_id(name)
            .or_else(|| outer.token_id(name))
            .or(g3.then_some(g3_default))
    };
    let cfg = ModelConfig {
        arch,
        vocab_size: num(&["vocab_size"], 262_208)?,
        d_embed: hidden,
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        intermediate: num(&["intermediate_size"], 9216)?,
        max_positions: num(&["max_position_embeddings"], 131_072)?,
        norm_eps: k.f64_opt(&["rms_norm_eps"])?.unwrap_or(1e-6),
        activation,
        rotary: Some(global),
        tie_word_embeddings: k.bool_or(&["tie_word_embeddings"], true)?,
        eos_token_id: token("eos_token_id", 1),
        bos_token_id: token("bos_token_id", 2),
        torch_dtype: match k.str_opt(&["torch_dtype", "dtype"])? {
            Some(d) => Some(d.to_string()),
            None => outer
                .str_opt(&["torch_dtype", "dtype"])?
                .map(str::to_string),
        },
        spec: ArchSpec::Gemma {
            windows,
            local_rotary,
            attn_scale,
            attention_bias: k.bool_or(&["attention_bias"], false)?,
            post_norms: g2 || g3,
            qk_norm: g3,
            attn_softcap,
            final_softcap,
        },
    };
    if cfg.vocab_size == 0 || cfg.hidden == 0 || cfg.n_layers == 0 {
        bail!("vocab_size, hidden size and layer count must all be positive");
    }
    Ok(cfg)
}

/// The factor the embedding module multiplies token embeddings by: Gemma's `√hidden`,
/// as transformers rounds it (to the dtype of the weights), and XGLM's `√d_model` with
/// `scale_embedding` (a Python float, not rounded).
pub fn embed_scale(cfg: &ModelConfig, dtype: burn::tensor::DType) -> Option<f32> {
    use burn::tensor::DType;
    match cfg.spec {
        ArchSpec::Gemma { .. } => {}
        ArchSpec::Xglm {
            scale_embedding: true,
        } => return Some((cfg.hidden as f64).sqrt() as f32),
        _ => return None,
    }
    let x = (cfg.hidden as f64).sqrt() as f32;
    Some(match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    })
}

/// `hidden_size` and the query and key head counts (`num_key_value_heads`, all heads when
/// absent) of the llama-like readers.
fn grouped_heads(k: &Keys) -> Result<(usize, usize, usize)> {
    let hidden = k.usize(&["hidden_size"])?;
    let n_heads = k.usize(&["num_attention_heads"])?;
    let n_kv_heads = k.usize_opt(&["num_key_value_heads"])?.unwrap_or(n_heads);
    check_grouped_heads(n_heads, n_kv_heads)?;
    Ok((hidden, n_heads, n_kv_heads))
}

/// Grouped-query attention: the query heads share the key heads evenly.
fn check_grouped_heads(n_heads: usize, n_kv_heads: usize) -> Result<()> {
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        bail!(
            "`num_attention_heads` ({n_heads}) must be a multiple of `num_key_value_heads` ({n_kv_heads})"
        );
    }
    Ok(())
}

fn div_heads(hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        bail!("hidden size {hidden} is not divisible by the number of attention heads {heads}");
    }
    Ok(hidden / heads)
}

fn check_rotary_dims(dims: usize, head_dim: usize, key: &str) -> Result<()> {
    if dims > head_dim || !dims.is_multiple_of(2) {
        bail!(
            "`{key}` gives {dims} rotary dimensions; it must be even and at most the head size {head_dim}"
        );
    }
    Ok(())
}

fn activation(k: &Keys, names: &[&str], default: &str) -> Result<Activation> {
    Activation::parse(k.str_opt(names)?.unwrap_or(default), names[0])
}

fn rope_theta(k: &Keys, names: &[&str]) -> Result<f64> {
    if let Some(t) = k.f64_opt(names)? {
        return Ok(t);
    }
    Ok(k.v
        .get("rope_parameters")
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10000.0))
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
fn rope_scaling(v: &Value) -> Result<RopeScaling> {
    rope_object(v).map_or(Ok(RopeScaling::None), scaling_of)
}

/// The object describing the rope scaling: `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5).
fn rope_object(v: &Value) -> Option<&Value> {
    ["rope_scaling", "rope_parameters"]
        .iter()
        .find_map(|key| v.get(*key).filter(|x| !x.is_null()))
}

/// A rope scaling object's kind (`rope_type`, formerly `type`).
fn rope_kind(r: &Value) -> &str {
    r.get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// Phi-3's rope scaling: LongRoPE (`longrope`, formerly `su`) with its short and long
/// factors, one per rotating frequency, or any of the common ones.
fn phi3_scaling(v: &Value, k: &Keys, dims: usize, max_positions: usize) -> Result<RopeScaling> {
    let Some(r) = rope_object(v) else {
        return Ok(RopeScaling::None);
    };
    if !matches!(rope_kind(r), "longrope" | "su") {
        return scaling_of(r);
    }
    let factors = |key: &str| -> Result<Vec<f64>> {
        let list = r
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("`rope_scaling.{key}` is missing or not a list"))?;
        let list: Vec<f64> = list.iter().filter_map(Value::as_f64).collect();
        if list.len() != dims / 2 {
            bail!(
                "`rope_scaling.{key}` has {} numbers; the {dims} rotating features need {}",
                list.len(),
                dims / 2
            );
        }
        Ok(list)
    };
    let original = match r
        .get("original_max_position_embeddings")
        .and_then(Value::as_u64)
    {
        Some(n) => n as usize,
        None => k
            .usize_opt(&["original_max_position_embeddings"])?
            .ok_or_else(|| anyhow!("LongRoPE needs `original_max_position_embeddings`"))?,
    };
    let factor = r
        .get("factor")
        .and_then(Value::as_f64)
        .unwrap_or(max_positions as f64 / original as f64);
    let attention_factor = match r.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short: factors("short_factor")?,
        long: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// The scaling a `rope_scaling` / `rope_parameters` object describes.
fn scaling_of(r: &Value) -> Result<RopeScaling> {
    let kind = rope_kind(r);
    let num = |key: &str| -> Result<f64> {
        r.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("`rope_scaling.{key}` is missing or not a number"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => bail!(
            "`rope_scaling` type \"{other}\" is not supported (supported: default, linear, llama3)"
        ),
    })
}

/// GPT-Neo's per-layer attention kinds: `attention_layers`, or expanded from
/// `attention_types` = [[["global","local"], repeat], …].
fn gpt_neo_layers(v: &Value, n_layers: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(list) = v.get("attention_layers").and_then(Value::as_array) {
        for x in list {
            out.push(
                x.as_str()
                    .ok_or_else(|| anyhow!("`attention_layers` must hold strings"))?
                    .to_string(),
            );
        }
    } else if let Some(types) = v.get("attention_types").and_then(Value::as_array) {
        for group in types {
            let kinds = group.get(0).and_then(Value::as_array);
            let repeat = group.get(1).and_then(Value::as_u64);
            let (Some(kinds), Some(repeat)) = (kinds, repeat) else {
                bail!("`attention_types` must look like [[[\"global\", \"local\"], 12]]");
            };
            for _ in 0..repeat {
                for x in kinds {
                    out.push(x.as_str().unwrap_or("").to_string());
                }
            }
        }
    } else {
        out = vec!["global".to_string(); n_layers];
    }
    if out.len() != n_layers {
        bail!(
            "the attention layer list has {} entries but `num_layers` is {n_layers}",
            out.len()
        );
    }
    if let Some(bad) = out.iter().find(|t| *t != "global" && *t != "local") {
        bail!("attention type \"{bad}\" is not one of global, local");
    }
    Ok(out)
}

/// Sliding windows for the llama family: mistral's `sliding_window`, qwen2's
/// and qwen3's `use_sliding_window` with `layer_types` / `max_window_layers`.
fn llama_windows(k: &Keys, arch: Arch, n_layers: usize) -> Result<Vec<Option<usize>>> {
    let window = k.usize_opt(&["sliding_window"])?;
    Ok(match (arch, window) {
        (_, None) => vec![None; n_layers],
        (Arch::Mistral, Some(w)) => vec![Some(w); n_layers],
        (Arch::Qwen2 | Arch::Qwen3, Some(w)) => {
            if !k.bool_or(&["use_sliding_window"], false)? {
                vec![None; n_layers]
            } else if let Some(types) = k.v.get("layer_types").and_then(Value::as_array) {
                types
                    .iter()
                    .map(|t| (t.as_str() == Some("sliding_attention")).then_some(w))
                    .collect()
            } else {
                let first_full = k.usize_opt(&["max_window_layers"])?.unwrap_or(n_layers);
                (0..n_layers)
                    .map(|i| (i >= first_full).then_some(w))
                    .collect()
            }
        }
        (_, Some(_)) => vec![None; n_layers],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_family(model_type: &str, extra: Value) -> ModelConfig {
        let mut v = json!({"model_type": model_type, "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 256});
        for (key, x) in extra.as_object().unwrap() {
            v[key] = x.clone();
        }
        ModelConfig::from_json(&v).unwrap()
    }

    fn biases_and_norms(c: &ModelConfig) -> (bool, bool, bool) {
        let ArchSpec::Llama {
            qkv_bias,
            o_bias,
            qk_norm,
            ..
        } = c.spec
        else {
            panic!("{:?} is not of the llama family", c.arch)
        };
        (qkv_bias, o_bias, qk_norm)
    }

    /// Which projections carry a bias follows each family's modeling code in transformers.
    #[test]
    fn attention_biases_follow_each_family() {
        let with_bias = json!({"attention_bias": true});
        let cases = [
            ("llama", json!({}), (false, false, false)),
            ("llama", with_bias.clone(), (true, true, false)),
            ("mistral", with_bias.clone(), (false, false, false)),
            ("qwen2", json!({}), (true, false, false)),
            ("qwen2", with_bias.clone(), (true, false, false)),
            ("qwen3", json!({}), (false, false, true)),
            ("qwen3", with_bias, (true, true, true)),
        ];
        for (model_type, extra, want) in cases {
            let c = llama_family(model_type, extra.clone());
            assert_eq!(biases_and_norms(&c), want, "{model_type} {extra}");
        }
    }

    /// Qwen3Config's head size defaults to 128, not hidden / heads; an explicit one wins.
    #[test]
    fn qwen3_head_size() {
        assert_eq!(llama_family("qwen3", json!({})).head_dim, 128);
        assert_eq!(llama_family("qwen3", json!({"head_dim": 32})).head_dim, 32);
        assert_eq!(llama_family("llama", json!({})).head_dim, 16);
        let windows = |c: ModelConfig| match c.spec {
            ArchSpec::Llama { windows, .. } => windows,
            _ => unreachable!(),
        };
        let sliding = json!({"use_sliding_window": true, "sliding_window": 8,
            "max_window_layers": 1});
        assert_eq!(windows(llama_family("qwen3", sliding)), vec![None, Some(8)]);
    }

    fn gemma_spec(c: &ModelConfig) -> (&[Option<usize>], Option<&Rotary>, f64, bool) {
        let ArchSpec::Gemma {
            windows,
            local_rotary,
            attn_scale,
            qk_norm,
            ..
        } = &c.spec
        else {
            panic!("{:?} is not of the gemma family", c.arch)
        };
        (windows, local_rotary.as_ref(), *attn_scale, *qk_norm)
    }

    /// Shaped like KoboldAI's fairseq-dense-2.7B conversions (transformers 4.16 wrote them).
    #[test]
    fn fairseq_dense_as_xglm() {
        let c = ModelConfig::from_json(&serde_json::json!({
            "activation_function": "gelu", "architectures": ["XGLMForCausalLM"],
            "attention_dropout": 0.1, "attention_heads": 32, "bos_token_id": 50257,
            "d_model": 2560, "dropout": 0.1, "eos_token_id": 50259, "ffn_dim": 10240,
            "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "xglm",
            "num_layers": 32, "pad_token_id": 1, "scale_embedding": true,
            "torch_dtype": "float16", "vocab_size": 50261
        }))
        .unwrap();
        assert_eq!(c.arch, Arch::Xglm);
        assert_eq!(
            (c.d_embed, c.n_heads, c.head_dim, c.n_layers),
            (2560, 32, 80, 32)
        );
        assert_eq!((c.intermediate, c.max_positions), (10240, 2048));
        assert_eq!(c.activation, Activation::Gelu);
        assert!(c.tie_word_embeddings && c.rotary.is_none());
        assert_eq!(c.kobold_scale(), Some((2560f64).sqrt() as f32));
        assert_eq!(
            embed_scale(&c, burn::tensor::DType::BF16),
            Some((2560f64).sqrt() as f32),
            "XGLM's scale is a Python float, not rounded to the weights' dtype"
        );
        let unscaled = ModelConfig::from_json(&serde_json::json!({
            "model_type": "xglm", "vocab_size": 8, "d_model": 16, "ffn_dim": 32,
            "num_layers": 1, "attention_heads": 2, "scale_embedding": false
        }))
        .unwrap();
        assert_eq!(unscaled.kobold_scale(), None);
        assert_eq!(embed_scale(&unscaled, burn::tensor::DType::F32), None);
        assert_eq!(unscaled.max_positions, 2048, "XGLMConfig's default");
    }

    /// google/gemma-2-9b's config.json (transformers 4.42): soft caps, every other layer
    /// local from the first, `query_pre_attn_scalar`.
    #[test]
    fn gemma2_config_of_transformers_4() {
        let hub = json!({"architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
            "cache_implementation": "hybrid", "eos_token_id": 1,
            "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584,
            "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 16,
            "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0,
            "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
            "sliding_window": 4096, "sliding_window_size": 4096, "torch_dtype": "float32",
            "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 256000});
        let c = ModelConfig::from_json(&hub).unwrap();
        assert_eq!(c.arch, Arch::Gemma2);
        assert_eq!(
            (c.n_heads, c.n_kv_heads, c.head_dim, c.n_layers),
            (16, 8, 256, 42)
        );
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.rotary.as_ref().unwrap().theta, 10000.0);
        let (windows, local, scale, qk_norm) = gemma_spec(&c);
        assert_eq!(windows.len(), 42);
        assert!(windows.iter().step_by(2).all(|w| *w == Some(4096)));
        assert!(windows.iter().skip(1).step_by(2).all(Option::is_none));
        assert!(local.is_none() && !qk_norm);
        assert_eq!(scale, 1.0 / 16.0);
        let ArchSpec::Gemma {
            post_norms,
            attn_softcap,
            final_softcap,
            ..
        } = c.spec
        else {
            unreachable!()
        };
        assert!(post_norms);
        assert_eq!((attn_softcap, final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.final_softcap(), Some(30.0));
        assert_eq!(
            embed_scale(&c, burn::tensor::DType::F32),
            Some(3584f32.sqrt())
        );

        // gemma-2-27b: another scalar; a null cap is none; a cap of 0 is refused.
        let mut big = hub.clone();
        big["query_pre_attn_scalar"] = json!(144);
        big["attn_logit_softcapping"] = Value::Null;
        let c = ModelConfig::from_json(&big).unwrap();
        let ArchSpec::Gemma {
            attn_scale,
            attn_softcap,
            ..
        } = c.spec
        else {
            unreachable!()
        };
        assert_eq!((attn_scale, attn_softcap), (1.0 / 12.0, None));
        let mut zero = hub.clone();
        zero["final_logit_softcapping"] = json!(0.0);
        let err = ModelConfig::from_json(&zero).unwrap_err().to_string();
        assert!(
            err.contains("final_logit_softcapping") && err.contains("positive"),
            "{err}"
        );
        // transformers 5 lists the layer types.
        let mut typed = hub;
        typed["num_hidden_layers"] = json!(3);
        typed["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention"]);
        let c = ModelConfig::from_json(&typed).unwrap();
        assert_eq!(gemma_spec(&c).0, [None, Some(4096), None]);
    }

    /// google/gemma-3-1b-pt's config.json as transformers 4 wrote it.
    #[test]
    fn gemma3_text_config_of_transformers_4() {
        let c = ModelConfig::from_json(&json!({"architectures": ["Gemma3ForCausalLM"],
            "attention_bias": false, "attn_logit_softcapping": null, "bos_token_id": 2,
            "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
            "intermediate_size": 6912, "max_position_embeddings": 32768,
            "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
            "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000, "rope_scaling": null, "rope_theta": 1000000,
            "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
            "vocab_size": 262144}))
        .unwrap();
        assert_eq!(
            (c.arch, c.hidden, c.head_dim, c.n_kv_heads),
            (Arch::Gemma3, 1152, 256, 1)
        );
        assert_eq!((c.eos_token_id, c.bos_token_id), (Some(1), Some(2)));
        assert_eq!(c.activation, Activation::GeluTanh);
        let global = c.rotary.as_ref().unwrap();
        assert_eq!((global.theta, &global.scaling), (1e6, &RopeScaling::None));
        let (windows, local, scale, g3) = gemma_spec(&c);
        assert!(g3);
        assert_eq!(local.unwrap().theta, 1e4);
        assert_eq!(scale, 1.0 / 16.0);
        // Every sixth layer is global.
        assert_eq!(windows.len(), 26);
        for (i, w) in windows.iter().enumerate() {
            assert_eq!(*w, (i % 6 != 5).then_some(512), "layer {i}");
        }
    }

    /// google/gemma-3-12b-pt: a multimodal config whose `text_config` lists only what
    /// differs from Gemma3TextConfig's defaults.
    #[test]
    fn gemma3_multimodal_config_takes_the_text_defaults() {
        let c = ModelConfig::from_json(&json!({"architectures":
            ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "eos_token_id": [1, 106], "torch_dtype": "bfloat16",
            "text_config": {"hidden_size": 3840, "intermediate_size": 15360,
                "model_type": "gemma3_text", "num_attention_heads": 16,
                "num_hidden_layers": 48, "num_key_value_heads": 8,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model"}}))
        .unwrap();
        assert_eq!(c.arch, Arch::Gemma3);
        assert_eq!(
            (c.vocab_size, c.head_dim, c.max_positions),
            (262_208, 256, 131_072)
        );
        assert_eq!((c.eos_token_id, c.bos_token_id), (Some(1), Some(2)));
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(c.tie_word_embeddings);
        let global = c.rotary.as_ref().unwrap();
        assert_eq!(global.scaling, RopeScaling::Linear { factor: 8.0 });
        let (windows, local, _, _) = gemma_spec(&c);
        assert_eq!(local.unwrap().scaling, RopeScaling::None);
        assert_eq!(windows[4..6], [Some(1024), None]);
        let missing = ModelConfig::from_json(&json!({"model_type": "gemma3"}));
        assert!(format!("{:#}", missing.unwrap_err()).contains("text_config"));
    }

    /// google/gemma-2b's config.json says "gelu" and means the tanh approximation; Gemma 2's
    /// soft-capping is refused by name.
    #[test]
    fn gemma_configs() {
        let c = ModelConfig::from_json(&json!({"model_type": "gemma", "hidden_act": "gelu",
            "head_dim": 256, "hidden_size": 2048, "intermediate_size": 16384,
            "max_position_embeddings": 8192, "num_attention_heads": 8,
            "num_hidden_layers": 18, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0, "vocab_size": 256000}))
        .unwrap();
        assert_eq!(c.activation, Activation::GeluTanh);
        let (windows, local, scale, g3) = gemma_spec(&c);
        assert!(!g3 && local.is_none() && windows.iter().all(Option::is_none));
        assert_eq!(scale, 1.0 / 16.0);
        assert_eq!(
            embed_scale(&c, burn::tensor::DType::F32),
            Some(2048f32.sqrt())
        );
        // bf16 rounds √2048 = 45.25 to 45.25; √3072 = 55.43 to 55.5.
        let mut wide = c.clone();
        wide.hidden = 3072;
        assert_eq!(embed_scale(&wide, burn::tensor::DType::BF16), Some(55.5));
        let err = ModelConfig::from_json(&json!({"model_type": "gemma3_text",
            "final_logit_softcapping": 30.0}))
        .unwrap_err();
        assert!(err.to_string().contains("final_logit_softcapping"), "{err}");
        assert!(err.to_string().contains("gemma2"), "{err}");
    }

    /// microsoft/Phi-3-mini-128k-instruct as transformers 4 wrote it: LongRoPE with the
    /// original context at the top level and 48 factors for 96-feature heads.
    #[test]
    fn phi3_longrope_config_of_transformers_4() {
        let factors: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 / 10.0).collect();
        let c = ModelConfig::from_json(&json!({"model_type": "phi3", "hidden_size": 3072,
            "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0, "sliding_window": 262144, "vocab_size": 32064,
            "rope_scaling": {"type": "longrope", "short_factor": factors,
                "long_factor": factors}}))
        .unwrap();
        let rot = c.rotary.as_ref().unwrap();
        assert_eq!((rot.dims, c.head_dim), (96, 96));
        let RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        } = rot.scaling
        else {
            panic!("{:?}", rot.scaling)
        };
        assert_eq!(original_max_position_embeddings, 4096);
        let want = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert!((attention_factor - want).abs() < 1e-12);
        let short = ModelConfig::from_json(&json!({"model_type": "phi3", "hidden_size": 3072,
            "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 32,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "vocab_size": 32064, "rope_scaling": {"type": "longrope",
                "short_factor": [1.0], "long_factor": [1.0]}}));
        let err = format!("{:#}", short.unwrap_err());
        assert!(err.contains("short_factor") && err.contains("48"), "{err}");
    }
}
