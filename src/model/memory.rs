//! How much memory a training run needs, worked out from the model's shape and from what
//! softtune's training ops keep for the backward pass (see [`super::kernels`]), before any
//! weight is loaded. The wizard checks it against the GPU's free memory; `softtune bench`
//! prints it beside the measured peak.
//!
//! Four parts:
//! * **weights**: the frozen parameters in the run's dtype;
//! * **kept**: what the forward pass keeps for the backward pass. Per layer and position:
//!   the norms' inputs, q, k and v (after the rotary embedding), the attention output, one
//!   float32 log-sum-exp per head, and the MLP's activation input (a byte mask for ReLU,
//!   both halves for a gated MLP). Per forward pass: the final norm's input, the LM head's
//!   gradient to the hidden states, and the rotary tables repeated for the heads;
//! * **working**: the largest set of temporaries alive at once: a block of attention scores
//!   in the backward pass (float32 scores and their gradient, probabilities and score
//!   gradients in the model's dtype) with its float32 accumulators, the MLP's backward
//!   pass, or one chunk of the LM head's logits; plus the residual stream's gradients;
//! * **runtime** (GPU only): the CUDA context, cuBLAS's workspace and the compiled kernels,
//!   and the slack of the device's memory pool, taken as a tenth of the activations.
//!
//! `tests/memory.rs` measures the kept part on the CPU backend with a counting allocator
//! for every family.

use burn::tensor::DType;

use super::config::{Activation, Arch, ArchSpec, ModelConfig};
use super::kernels::{block_positions, head_chunk_rows};
use super::weights::dtype_bytes;

/// CUDA context, cuBLAS workspace and compiled kernels on one GPU (an allowance, not a
/// measurement).
pub const GPU_RUNTIME_BYTES: u64 = 640 << 20;

/// One run's memory needs, in bytes. See the module documentation for the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingMemory {
    pub weights: u64,
    pub kept: u64,
    pub working: u64,
    pub runtime: u64,
}

impl TrainingMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.activations() + self.runtime
    }

    /// Kept plus working: what grows with the batch and the sequence length.
    pub fn activations(&self) -> u64 {
        self.kept + self.working
    }
}

/// The run being estimated.
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Soft tokens.
    pub soft: usize,
    /// Text tokens per sequence.
    pub text: usize,
    /// The dtype the frozen weights and activations run in.
    pub dtype: DType,
    pub gpu: bool,
}

impl RunShape {
    /// `(bytes a value, batch, positions a sequence, text positions a sequence)`.
    fn sizes(&self) -> (u64, u64, u64, u64) {
        (
            dtype_bytes(self.dtype) as u64,
            self.batch as u64,
            (self.soft + self.text) as u64,
            self.text as u64,
        )
    }
}

/// Memory of one training step of `cfg` with `parameters` frozen weights (from the
/// checkpoint, or [`parameter_count`] before it is downloaded).
pub fn training_memory(cfg: &ModelConfig, parameters: usize, run: RunShape) -> TrainingMemory {
    let e = dtype_bytes(run.dtype) as u64;
    let weights = parameters as u64 * e;
    let kept = kept_bytes(cfg, run);
    let working = working_bytes(cfg, run);
    let runtime = if run.gpu {
        GPU_RUNTIME_BYTES + (kept + working) / 10
    } else {
        0
    };
    TrainingMemory {
        weights,
        kept,
        working,
        runtime,
    }
}

struct Widths {
    /// Residual stream.
    d: u64,
    /// All query heads together.
    q: u64,
    /// All key (or value) heads together.
    kv: u64,
    /// MLP width.
    f: u64,
}

fn widths(cfg: &ModelConfig) -> Widths {
    Widths {
        d: cfg.hidden as u64,
        q: (cfg.n_heads * cfg.head_dim) as u64,
        kv: (cfg.n_kv_heads * cfg.head_dim) as u64,
        f: cfg.intermediate as u64,
    }
}

/// Bytes the forward pass keeps for the backward pass.
pub fn kept_bytes(cfg: &ModelConfig, run: RunShape) -> u64 {
    let (e, b, s, t) = run.sizes();
    let Widths { d, q, kv, f } = widths(cfg);
    // The MLP activation's input, or a byte a value for ReLU.
    let act = |n: u64| match cfg.activation {
        Activation::Relu => n,
        _ => n * e,
    };
    // q, k and v as the attention op receives them, its output, one float32 per head.
    let attention = (2 * q + 2 * kv) * e + 4 * cfg.n_heads as u64;
    let per_position = match &cfg.spec {
        // Norm inputs before attention and before the MLP; gate and up together; qwen3's
        // per-head norms keep q and k as they come out of their products too.
        ArchSpec::Llama { qk_norm, .. } => {
            let head_norms = if *qk_norm { (q + kv) * e } else { 0 };
            2 * d * e + attention + 2 * f * e + head_norms
        }
        // Gemma 2 and 3 also normalise the attention's and the MLP's outputs, Gemma 3 each
        // query and key head.
        ArchSpec::Gemma {
            post_norms,
            qk_norm,
            ..
        } => {
            let norms = if *post_norms { 4 } else { 2 };
            let head_norms = if *qk_norm { (q + kv) * e } else { 0 };
            norms * d * e + attention + 2 * f * e + head_norms
        }
        // One norm for attention and MLP together.
        ArchSpec::Cohere { qk_norm, .. } => {
            let head_norms = if *qk_norm { (q + kv) * e } else { 0 };
            d * e + attention + 2 * f * e + head_norms
        }
        // One norm; attention and MLP read the same normalised input.
        ArchSpec::GptJ => d * e + attention + act(f),
        // A parallel block normalises the same input twice: one tensor kept.
        ArchSpec::GptNeoX { parallel_residual } => {
            let norms = if *parallel_residual { 1 } else { 2 };
            norms * d * e + attention + act(f)
        }
        ArchSpec::Gpt2 { .. }
        | ArchSpec::GptNeo { .. }
        | ArchSpec::Opt { .. }
        | ArchSpec::Xglm { .. } => 2 * d * e + attention + act(f),
    };
    let layers = cfg.n_layers as u64 * b * s * per_position;
    // The final norm's input (OPT-350m has none) and the head's gradient to the hidden
    // states at the text positions.
    let final_norm = match cfg.spec {
        ArchSpec::Opt {
            final_layer_norm: false,
            ..
        } => 0,
        _ => b * s * d * e,
    };
    let head = b * t * cfg.d_embed as u64 * e;
    // cos and sin repeated for the query heads, and again for the key heads when fewer.
    let rotary = match cfg.rotary {
        None => 0,
        Some(_) if kv != q => 2 * s * (q + kv) * e,
        Some(_) => 2 * s * q * e,
    };
    // Gemma 3's local layers have tables of their own.
    let tables = match &cfg.spec {
        ArchSpec::Gemma {
            local_rotary: Some(_),
            windows,
            ..
        } if windows.iter().any(Option::is_some) => 2,
        _ => 1,
    };
    let rotary = rotary * tables;
    layers + final_norm + head + rotary
}

/// Bytes of the largest set of temporaries alive at once (an upper bound: the attention
/// block is counted as if every block saw all keys).
pub fn working_bytes(cfg: &ModelConfig, run: RunShape) -> u64 {
    let (e, b, s, t) = run.sizes();
    let Widths { d, q, kv, f } = widths(cfg);
    let heads = run.batch * cfg.n_heads;
    let block = (heads * block_positions(heads, s as usize)) as u64 * s;
    // Scores and their gradient in float32, probabilities and score gradients in the model's
    // dtype; dq by blocks and joined, dk and dv, the row terms: float32.
    let attention = block * (8 + 2 * e) + b * s * (2 * q + 2 * kv + cfg.n_heads as u64) * 4;
    let mlp = match cfg.spec {
        // The gated output's gradient, then both halves'.
        ArchSpec::Llama { .. } | ArchSpec::Gemma { .. } | ArchSpec::Cohere { .. } => {
            3 * b * s * f * e
        }
        _ => 2 * b * s * f * e,
    };
    // One chunk of logits, its float32 copy and its gradient (with a soft cap, also the
    // capped logits and the cap's slope in float32); the chunks of the head's gradient and
    // their join.
    let v = cfg.vocab_size as u64;
    let rows = head_chunk_rows(run.batch * run.text, cfg.vocab_size) as u64;
    let capped = if cfg.final_softcap().is_some() { 8 } else { 0 };
    let head = rows * v * (2 * e + 4 + capped) + 2 * b * t * cfg.d_embed as u64 * e;
    // The residual stream's gradient, a branch's, and their sum (float32 at worst).
    let residual = 3 * b * s * d * 4;
    attention.max(mlp).max(head) + residual
}

/// The largest batch below `batch` whose `need(batch)` fits in `free` bytes.
pub fn largest_batch_below(need: impl Fn(usize) -> u64, batch: usize, free: u64) -> Option<usize> {
    (1..batch).rev().find(|&b| need(b) <= free)
}

/// Frozen parameters of `cfg` as softtune loads them (the tied head counted once), for a
/// model whose weights are not downloaded yet.
pub fn parameter_count(cfg: &ModelConfig) -> usize {
    let Widths { d, q, kv, f } = widths(cfg);
    let (d, q, kv, f) = (d as usize, q as usize, kv as usize, f as usize);
    let (v, de) = (cfg.vocab_size, cfg.d_embed);
    let layer_norm = 2 * d;
    let per_layer = match &cfg.spec {
        ArchSpec::Llama {
            qkv_bias,
            o_bias,
            qk_norm,
            ..
        } => {
            let bias = if *qkv_bias { q + 2 * kv } else { 0 };
            let o_bias = if *o_bias { d } else { 0 };
            let head_norms = if *qk_norm { 2 * cfg.head_dim } else { 0 };
            2 * d + d * (q + 2 * kv) + bias + q * d + o_bias + head_norms + 3 * d * f
        }
        ArchSpec::Gemma {
            attention_bias,
            post_norms,
            qk_norm,
            ..
        } => {
            let bias = if *attention_bias { q + 2 * kv + d } else { 0 };
            let post = if *post_norms { 2 * d } else { 0 };
            let head_norms = if *qk_norm { 2 * cfg.head_dim } else { 0 };
            let norms = 2 * d + post + head_norms;
            norms + d * (q + 2 * kv) + bias + q * d + 3 * d * f
        }
        ArchSpec::Cohere {
            attention_bias,
            qk_norm,
            ..
        } => {
            let bias = if *attention_bias { q + 2 * kv + d } else { 0 };
            let head_norms = if *qk_norm { q + kv } else { 0 };
            d + d * (q + 2 * kv) + bias + q * d + head_norms + 3 * d * f
        }
        ArchSpec::GptJ => layer_norm + 4 * d * d + 2 * d * f + f + d,
        ArchSpec::GptNeoX { .. } => 2 * layer_norm + 4 * d * d + 4 * d + 2 * d * f + f + d,
        ArchSpec::Gpt2 { .. } | ArchSpec::Opt { .. } | ArchSpec::Xglm { .. } => {
            2 * layer_norm + 4 * d * d + 4 * d + 2 * d * f + f + d
        }
        ArchSpec::GptNeo { .. } => 2 * layer_norm + 4 * d * d + d + 2 * d * f + f + d,
    };
    let embed = v * de;
    let head = if cfg.tie_word_embeddings && cfg.arch != Arch::GptJ {
        0
    } else {
        v * de + if cfg.arch == Arch::GptJ { v } else { 0 }
    };
    let rest = match &cfg.spec {
        ArchSpec::Llama { .. } | ArchSpec::Gemma { .. } | ArchSpec::Cohere { .. } => d,
        // XGLM's sinusoidal positions are computed, not stored.
        ArchSpec::GptJ | ArchSpec::GptNeoX { .. } | ArchSpec::Xglm { .. } => layer_norm,
        ArchSpec::Gpt2 { .. } | ArchSpec::GptNeo { .. } => layer_norm + cfg.max_positions * d,
        ArchSpec::Opt {
            final_layer_norm, ..
        } => {
            let project = if de != d { 2 * de * d } else { 0 };
            let norm = if *final_layer_norm { layer_norm } else { 0 };
            project + norm + (cfg.max_positions + 2) * d
        }
    };
    cfg.n_layers * per_layer + embed + head + rest
}

/// The dtype config.json says the weights are stored in (`torch_dtype` / `dtype`), for a
/// model whose weights are not downloaded yet.
pub fn stated_dtype(cfg: &ModelConfig) -> Option<DType> {
    match cfg.torch_dtype.as_deref()? {
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        "float32" => Some(DType::F32),
        _ => None,
    }
}
