//! softtune: train soft prompts (prompt tuning) for Hugging Face causal language models.
//!
//! Layout: `config` (run configuration, profiles, validation), `train` (the engine:
//! loop, optimizers, schedule, checkpoints, events), `export` (KoboldAI zip, PEFT adapter),
//! `model` (config, weights, tokenizer, one file per architecture family, the ops
//! layer), `device` (CPU / CUDA selection and probing), `data` (text → token blocks),
//! `eval` (held-out loss and perplexity), `runs` (detached training runs: run folders,
//! worker, state), `inspect` (model summary), `tui` (the wizard), `prompt` (reading soft
//! prompts from the formats front-ends use).

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod model;
pub mod parity;
pub mod prompt;
pub mod rng;
pub mod runs;
pub mod train;
pub mod tui;
