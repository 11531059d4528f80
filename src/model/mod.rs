//! Hugging Face causal language models in Burn.
//!
//! * [`config`]: `config.json` → [`config::ModelConfig`] (one typed spec per architecture family).
//! * [`weights`]: safetensors files and `pytorch_model.bin` archives (single or sharded),
//!   validated, converted to the target dtype; [`torch_bin`] reads the latter without
//!   running their pickle program.
//! * [`source`]: where the files come from: a local folder or the Hugging Face hub cache.
//! * [`ops`]: the small ops layer every architecture is written against (linear, norms,
//!   rotary, attention, embedding).
//! * [`kernels`]: the backend extension behind it ([`kernels::Kernels`]): what a backend runs
//!   its own way, such as the training backend's memory-saving attention;
//!   [`cpu`]: the CPU backend's impl and kernels (gemm matmuls, attention on gemm tiles,
//!   the loss, vectorised `exp` and activations); [`cuda`]: the CUDA backends' impls, their
//!   matmuls on [`cublas`], softtune's own CubeCL kernels in [`cubecl`] (flash attention;
//!   the blocked attention's softmax and the norms fused), inside Burn's fusion wrapper
//!   [`fusion`].
//! * one file per family: [`gpt2`], [`gptj`], [`gpt_neox`], [`gpt_neo`], [`opt`], [`llama`]
//!   (llama, mistral, qwen2, qwen3, phi3), [`gemma`] (gemma, gemma2, gemma3), [`cohere`],
//!   [`xglm`] (XGLM, fairseq dense).
//! * [`lm`]: the loaded model, soft-prompt forward and the loss over text positions.
//! * [`generate`]: sampled continuations with a key/value cache (`softtune generate`, the
//!   dashboard's sample generations).

pub mod cohere;
pub mod config;
pub mod cpu;
pub mod cubecl;
pub mod cublas;
pub mod cuda;
pub mod fusion;
pub mod gemma;
pub mod generate;
pub mod gpt2;
pub mod gpt_neo;
pub mod gpt_neox;
pub mod gptj;
pub mod kernels;
pub mod llama;
pub mod lm;
pub mod memory;
pub mod ops;
pub mod opt;
pub mod slow_bpe;
pub mod source;
pub mod spm;
pub mod tokenizer;
pub mod tokenizer_files;
pub mod torch_bin;
pub mod weights;
pub mod xglm;

pub use config::{Arch, ModelConfig};
pub use kernels::{Kernels, TrainKernels};
pub use lm::{CausalLm, LoadOptions};
