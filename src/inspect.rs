//! `softtune inspect MODEL`: what a model is and what it will cost, checked before any
//! training: config, every safetensors header, the embedding, the tokenizer.

use anyhow::{Result, bail};
use burn::tensor::DType;

use crate::model::ModelConfig;
use crate::model::lm::{embed_name, head_name};
use crate::model::ops::{outside_text_model, stored_name};
use crate::model::source::{self, HubOptions};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{Weights, dtype_bytes, dtype_name};

#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    pub model_type: String,
    pub parameters: usize,
    pub d_embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab_size: usize,
    pub tokenizer_vocab: Option<usize>,
    pub context_length: usize,
    pub stored_dtype: DType,
    pub weight_files: usize,
    /// The parsed config.json.
    pub config: ModelConfig,
}

impl Summary {
    /// Bytes the frozen weights take in `dtype`.
    pub fn weight_bytes(&self, dtype: DType) -> usize {
        self.parameters * dtype_bytes(dtype)
    }

    pub fn print(&self) {
        let gpu = match self.stored_dtype {
            DType::BF16 | DType::F16 => self.stored_dtype,
            _ => DType::F32,
        };
        println!("model           {}", self.id);
        println!("architecture    {}", self.model_type);
        println!(
            "parameters      {} ({})",
            self.parameters,
            human_count(self.parameters)
        );
        println!("embedding width {} (soft-prompt width)", self.d_embed);
        if self.hidden != self.d_embed {
            println!("hidden size     {}", self.hidden);
        }
        println!("layers          {}", self.layers);
        if self.kv_heads != self.heads {
            println!(
                "attention heads {} ({} key/value heads)",
                self.heads, self.kv_heads
            );
        } else {
            println!("attention heads {}", self.heads);
        }
        match self.tokenizer_vocab {
            Some(t) => println!(
                "vocabulary      {} tokens ({} embedding rows)",
                t, self.vocab_size
            ),
            None => println!(
                "vocabulary      {} embedding rows (no tokenizer on disk)",
                self.vocab_size
            ),
        }
        println!("context length  {} tokens", self.context_length);
        println!(
            "stored dtype    {} in {} file(s)",
            dtype_name(self.stored_dtype),
            self.weight_files
        );
        println!(
            "weight memory   {} on GPU ({}), {} on CPU (float32)",
            human_bytes(self.weight_bytes(gpu)),
            dtype_name(gpu),
            human_bytes(self.weight_bytes(DType::F32))
        );
        if let Some(line) = self.training_line(gpu) {
            println!("{line}");
        }
    }

    /// What training needs on a GPU in `dtype` (softtune's estimate, `model::memory`): one
    /// sequence filling the context behind 20 soft tokens, and each further sequence of a
    /// micro-batch. `None` when the context is too short for 20 soft tokens.
    pub fn training_line(&self, dtype: DType) -> Option<String> {
        use crate::model::memory::{RunShape, training_memory};
        let soft = 20;
        let text = self.context_length.checked_sub(soft).filter(|&t| t > 0)?;
        let total = |batch| {
            let run = RunShape {
                batch,
                soft,
                text,
                dtype,
                gpu: true,
            };
            training_memory(&self.config, self.parameters, run).total() as usize
        };
        let (one, two) = (total(1), total(2));
        Some(format!(
            "training memory ~{} on GPU ({}) at batch 1 × {} tokens ({soft} soft); +{} per extra sequence",
            human_bytes(one),
            dtype_name(dtype),
            self.context_length,
            human_bytes(two.saturating_sub(one))
        ))
    }
}

/// Non-parameter buffers some checkpoints store (GPT-2's causal mask, rotary tables).
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with("masked_bias")
        || name.ends_with("inv_freq")
}

pub fn inspect(model: &str, hub: &HubOptions) -> Result<Summary> {
    let files = source::resolve(model, hub)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let weights = Weights::open(&files.weights)?;
    let embed = embed_name(cfg.arch);
    let Some(stored_embed) = stored_name(&weights, embed) else {
        bail!(
            "{}: no token embedding `{embed}` in the weights; config.json and the weights do not belong together",
            files.root.display()
        );
    };
    let shape = weights.shape(&stored_embed).unwrap_or(&[]).to_vec();
    if shape != [cfg.vocab_size, cfg.d_embed] {
        bail!(
            "{}: `{stored_embed}` has shape {shape:?} but config.json says [{}, {}]",
            files.root.display(),
            cfg.vocab_size,
            cfg.d_embed
        );
    }
    let tokenizer_vocab = match &files.tokenizer {
        Some(p) => {
            let t = Tokenizer::from_file(p)?;
            t.check_fits(cfg.vocab_size)?;
            Some(t.id_bound())
        }
        None => None,
    };
    // A tied head stored beside the embedding (transformers 4's .bin files) is the same
    // parameter; the model uses the embedding.
    let tied_copy = cfg.tie_word_embeddings.then(|| head_name(cfg.arch));
    let parameters = weights
        .names()
        .filter(|n| !is_buffer(n) && !outside_text_model(n) && Some(*n) != tied_copy)
        .map(|n| weights.shape(n).unwrap_or(&[]).iter().product::<usize>())
        .sum();
    Ok(Summary {
        id: files.id.clone(),
        model_type: cfg.arch.model_type().to_string(),
        parameters,
        d_embed: cfg.d_embed,
        hidden: cfg.hidden,
        layers: cfg.n_layers,
        heads: cfg.n_heads,
        kv_heads: cfg.n_kv_heads,
        vocab_size: cfg.vocab_size,
        tokenizer_vocab,
        context_length: cfg.context_length(),
        stored_dtype: weights.stored_dtype().unwrap_or(DType::F32),
        weight_files: files.weights.len(),
        config: cfg,
    })
}

pub fn human_count(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

pub fn human_bytes(n: usize) -> String {
    let n = n as f64;
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if n >= GIB {
        format!("{:.2} GiB", n / GIB)
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}
