//! `softtune bench`: full training steps (forward, backward to the soft prompt, optimizer) of
//! a real model's shape with random weights (no download), on the CPU or a GPU; with
//! `--generate`, the speed of `softtune generate` instead ([`run_generate`]).
//!
//! Reports text tokens/s, ms/step, peak memory (process peak RSS on the CPU, device memory
//! in use from NVML on a GPU) and MFU = 4 · parameters · tokens/s / the card's dense bf16
//! peak (forward 2 FLOP per parameter and token, input gradients 2 more; no weight gradients).

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::tensor::{Tensor, TensorData};
use serde_json::json;

use crate::config::OptimizerKind;
use crate::device::DeviceSpec;
use crate::model::generate::{Sampling, generate_rows};
use crate::model::lm::Precision;
use crate::model::weights::dtype_name;
use crate::model::{CausalLm, Kernels, LoadOptions, ModelConfig, TrainKernels};
use crate::rng::SplitMix64;
use crate::train::accumulate;
use crate::train::optimizer::Optimizer;

/// Shapes of real checkpoints (config.json values), by preset name.
pub fn preset(name: &str) -> Result<serde_json::Value> {
    Ok(match name {
        "smollm-135m" => json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": true, "eos_token_id": 0
        }),
        "tinyllama-1.1b" => json!({
            "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048,
            "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": false, "eos_token_id": 2
        }),
        "gptj-6b" => json!({
            "model_type": "gptj", "vocab_size": 50400, "n_embd": 4096, "n_layer": 28,
            "n_head": 16, "rotary_dim": 64, "n_positions": 2048, "activation_function": "gelu_new",
            "tie_word_embeddings": false, "eos_token_id": 50256
        }),
        "opt-6.7b" => json!({
            "model_type": "opt", "vocab_size": 50272, "hidden_size": 4096, "num_hidden_layers": 32,
            "num_attention_heads": 32, "ffn_dim": 16384, "max_position_embeddings": 2048,
            "word_embed_proj_dim": 4096, "do_layer_norm_before": true, "activation_function": "relu",
            "eos_token_id": 2
        }),
        "pythia-1.4b" => json!({
            "model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 2048,
            "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 8192,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "max_position_embeddings": 2048,
            "use_parallel_residual": true, "hidden_act": "gelu", "eos_token_id": 0
        }),
        "gpt2-xl" => json!({
            "model_type": "gpt2", "vocab_size": 50257, "n_embd": 1600, "n_layer": 48, "n_head": 25,
            "n_positions": 1024, "activation_function": "gelu_new", "eos_token_id": 50256
        }),
        other => bail!(
            "unknown benchmark shape \"{other}\"; choose from {}",
            PRESETS.join(", ")
        ),
    })
}

pub const PRESETS: &[&str] = &[
    "smollm-135m",
    "tinyllama-1.1b",
    "pythia-1.4b",
    "gpt2-xl",
    "gptj-6b",
    "opt-6.7b",
];

pub struct BenchArgs {
    pub shape: String,
    pub batch: usize,
    pub seq: usize,
    pub soft: usize,
    pub steps: usize,
    pub warmup: usize,
    pub device: DeviceSpec,
    pub precision: Precision,
}

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub soft: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub peak_bytes: Option<u64>,
    pub mfu: Option<f64>,
}

impl BenchResult {
    pub fn header() -> String {
        format!(
            "{:<15} {:<13} {:<9} {:>8} {:>10} {:>5} {:>11} {:>10} {:>11} {:>6}",
            "shape",
            "device",
            "dtype",
            "params",
            "batch×seq",
            "soft",
            "tokens/s",
            "ms/step",
            "peak mem",
            "MFU"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "{:<15} {:<13} {:<9} {:>8} {:>10} {:>5} {:>11.1} {:>10.1} {:>11} {:>6}",
            self.shape,
            self.device,
            self.dtype,
            crate::inspect::human_count(self.params),
            format!("{}×{}", self.batch, self.seq),
            self.soft,
            self.tokens_per_s,
            self.ms_per_step,
            self.peak_bytes
                .map_or("n/a".into(), |b| crate::inspect::human_bytes(b as usize)),
            self.mfu
                .map_or("n/a".into(), |m| format!("{:.1}%", m * 100.0)),
        )
    }
}

/// Peak resident memory of this process (Linux), bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Device memory in use on GPU `index` (NVML; device level).
fn gpu_used(index: usize) -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let dev = nvml.device_by_index(index as u32).ok()?;
    dev.memory_info().ok().map(|m| m.used)
}

/// Dense bf16 tensor-core peak of a card, FLOP/s, from its name.
pub fn bf16_peak(name: &str) -> Option<f64> {
    let n = name.to_uppercase();
    let tflops = if n.contains("H100") && n.contains("PCIE") {
        756.0
    } else if n.contains("H100") || n.contains("H200") || n.contains("GH200") {
        989.0
    } else if n.contains("B200") {
        2250.0
    } else if n.contains("A100") {
        312.0
    } else if n.contains("L40S") {
        362.0
    } else if n.contains("A10") && !n.contains("A100") {
        125.0
    } else if n.contains("4090") {
        165.0
    } else if n.contains("3090") {
        71.0
    } else {
        return None;
    };
    Some(tflops * 1e12)
}

pub fn run(args: &BenchArgs) -> Result<BenchResult> {
    if args.batch == 0 || args.seq < 2 || args.soft == 0 || args.steps == 0 {
        bail!("--batch, --soft and --steps must be at least 1 and --seq at least 2");
    }
    let config = ModelConfig::from_json(&preset(&args.shape)?)?;
    if args.seq + args.soft > config.context_length() {
        bail!(
            "--seq {} plus --soft {} exceeds {}'s context of {} tokens",
            args.seq,
            args.soft,
            args.shape,
            config.context_length()
        );
    }
    let gpu_name = match args.device {
        DeviceSpec::Cuda(i) => Some(crate::device::probe_cuda(i)?.name),
        DeviceSpec::Cpu => None,
    };
    let dtype = args
        .precision
        .resolve(args.device.is_gpu(), Some(burn::tensor::DType::BF16));
    // What the wizard predicts for this run (printed first, so a run cut short has it too);
    // the table's peak is the measured one.
    let estimate = crate::model::memory::training_memory(
        &config,
        crate::model::memory::parameter_count(&config),
        crate::model::memory::RunShape {
            batch: args.batch,
            soft: args.soft,
            text: args.seq,
            dtype,
            gpu: args.device.is_gpu(),
        },
    );
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "{}: memory estimate {:.2} GiB (weights {:.2}, kept {:.2}, working {:.2}, runtime {:.2})",
        args.shape,
        gib(estimate.total()),
        gib(estimate.weights),
        gib(estimate.kept),
        gib(estimate.working),
        gib(estimate.runtime),
    );
    let (params, ms) = crate::with_backend!(args.device, |B, dev| {
        run_on::<burn::backend::Autodiff<B>>(&config, args, &dev, dtype)?
    });
    if args.device.is_gpu() && crate::model::cublas::enabled() {
        // gpu-check.sh reads this line: every product should have run on cuBLAS.
        eprintln!(
            "{}: matmuls on CubeCL instead of cuBLAS: {}",
            args.shape,
            crate::model::cublas::fallback_count()
        );
    }
    let text_tokens = (args.batch * args.seq) as f64;
    let tokens_per_s = text_tokens / (ms / 1000.0);
    let (peak_bytes, mfu) = match args.device {
        DeviceSpec::Cpu => (peak_rss(), None),
        DeviceSpec::Cuda(i) => (
            gpu_used(i),
            gpu_name
                .as_deref()
                .and_then(bf16_peak)
                .map(|peak| 4.0 * params as f64 * tokens_per_s / peak),
        ),
    };
    Ok(BenchResult {
        shape: args.shape.clone(),
        device: device_label(args.device)?,
        dtype: dtype_name(dtype).to_string(),
        params,
        batch: args.batch,
        seq: args.seq,
        soft: args.soft,
        ms_per_step: ms,
        tokens_per_s,
        peak_bytes,
        mfu,
    })
}

/// The device column: `cpu`, or the GPU with the CUDA backend and the kernels that ran.
fn device_label(device: DeviceSpec) -> Result<String> {
    Ok(match device {
        DeviceSpec::Cuda(_) => {
            let kind = crate::device::CudaKind::from_env()?;
            // Matmuls on cuBLAS unless SOFTTUNE_CUDA_MATMUL=cubecl, attention on the flash
            // kernels with SOFTTUNE_CUDA_ATTENTION=flash, the fused row kernels unless
            // SOFTTUNE_CUDA_FUSED=off (a fallback is reported on stderr).
            // "+cublas-sync" when the products were synchronised on the host
            // (SOFTTUNE_CUBLAS_ORDER=sync, or the event order failed).
            use crate::model::cublas::{self, Order};
            let matmul = match (cublas::enabled(), cublas::order()) {
                (false, _) => "",
                (true, Order::Events) => "+cublas",
                (true, Order::Sync) => "+cublas-sync",
            };
            let flash = crate::model::cubecl::flash::enabled();
            let fused = crate::model::cubecl::fused();
            format!(
                "{}/{}{}{}{}",
                device,
                kind.name(),
                matmul,
                if flash { "+flash" } else { "" },
                if fused { "+fused" } else { "" }
            )
        }
        DeviceSpec::Cpu => device.to_string(),
    })
}

/// Builds the model and times `steps` optimizer steps after `warmup` untimed ones; returns
/// the parameter count and the mean ms per step.
fn run_on<B: TrainKernels>(
    config: &ModelConfig,
    args: &BenchArgs,
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> Result<(usize, f64)>
where
    CausalLm<B>: Sync,
{
    let t = Instant::now();
    let (model, params) = CausalLm::<B>::random(config, device, LoadOptions { dtype })?;
    eprintln!(
        "{}: random weights made in {:.1} s",
        args.shape,
        t.elapsed().as_secs_f64()
    );
    let (n, d) = (args.soft, config.d_embed);
    let mut rng = SplitMix64::new(42);
    let mut prompt: Vec<f32> = (0..n * d).map(|_| (rng.normal() * 0.02) as f32).collect();
    let mut opt = Optimizer::new(OptimizerKind::AdamW, 0.0, n, d);
    let vocab = config.vocab_size as u64;
    let threads = args.device.threads();
    let mut elapsed = 0.0;
    for step in 0..args.warmup + args.steps {
        let ids: Vec<u32> = (0..args.batch * args.seq)
            .map(|_| rng.below(vocab) as u32)
            .collect();
        let rows: Vec<&[u32]> = ids.chunks(args.seq).collect();
        let t = Instant::now();
        let before = crate::model::cublas::stats();
        let (_, g) = accumulate(&model, &prompt, n, d, &rows, args.batch, threads)
            .map_err(|e| anyhow!("{}: step {step}: {e:#}", args.shape))?;
        opt.step(&mut prompt, &g, 1e-3);
        let secs = t.elapsed().as_secs_f64();
        if step >= args.warmup {
            elapsed += secs;
        }
        // On CUDA with cuBLAS: how much host time the step spent around the products
        // (ordered by events, or waiting for CubeCL's queue and then for cuBLAS).
        let products = crate::model::cublas::stats().since(before);
        // On stderr, so the table stays clean: on a GPU the first steps include compiling
        // and autotuning the kernels, which this shows apart from the timed steps.
        eprintln!(
            "{}: step {}/{}: {secs:.2} s{}{}",
            args.shape,
            step + 1,
            args.warmup + args.steps,
            if step < args.warmup { " (warm-up)" } else { "" },
            if products.products > 0 {
                format!(" ({})", products.describe())
            } else {
                String::new()
            }
        );
    }
    Ok((params, elapsed * 1000.0 / args.steps as f64))
}

/// A generation benchmark: `new` tokens after a text of `context` tokens and `soft` soft
/// tokens, with the key/value cache and, for comparison, reading the whole window for every
/// token (what generation does once the window slides, and did before it had a cache).
#[derive(Debug, Clone)]
pub struct GenerateResult {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub params: usize,
    pub context: usize,
    pub soft: usize,
    pub new: usize,
    /// Texts written at once.
    pub texts: usize,
    /// Reading the prompt and the text: until the first new tokens, ms.
    pub read_ms: f64,
    /// Each further step (a token for every text) with the cache, ms.
    pub ms_per_step: f64,
    /// Each further step reading the whole window, ms.
    pub whole_ms_per_step: f64,
    pub peak_bytes: Option<u64>,
}

impl GenerateResult {
    pub fn header() -> String {
        format!(
            "{:<15} {:<13} {:<9} {:>8} {:>8} {:>5} {:>4} {:>5} {:>9} {:>9} {:>9} {:>13} {:>11}",
            "shape",
            "device",
            "dtype",
            "params",
            "context",
            "soft",
            "new",
            "texts",
            "read ms",
            "ms/step",
            "tokens/s",
            "whole ms/step",
            "peak mem"
        )
    }

    /// New tokens per second, all texts together, with the cache.
    pub fn tokens_per_s(&self) -> f64 {
        self.texts as f64 * 1000.0 / self.ms_per_step
    }

    pub fn row(&self) -> String {
        format!(
            "{:<15} {:<13} {:<9} {:>8} {:>8} {:>5} {:>4} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>13.1} {:>11}",
            self.shape,
            self.device,
            self.dtype,
            crate::inspect::human_count(self.params),
            self.context,
            self.soft,
            self.new,
            self.texts,
            self.read_ms,
            self.ms_per_step,
            self.tokens_per_s(),
            self.whole_ms_per_step,
            self.peak_bytes
                .map_or("n/a".into(), |b| crate::inspect::human_bytes(b as usize)),
        )
    }
}

/// Times `new` greedy tokens (at least 2) for each of `args.batch` texts written at once,
/// after the same `args.seq` random text tokens and `args.soft` soft tokens (`--steps` does
/// not apply); `args.warmup` untimed generations of two tokens first.
pub fn run_generate(args: &BenchArgs, new: usize) -> Result<GenerateResult> {
    if new < 2 || args.seq < 2 || args.soft == 0 || args.batch == 0 {
        bail!("--generate and --seq must be at least 2, --soft and --batch at least 1");
    }
    let config = ModelConfig::from_json(&preset(&args.shape)?)?;
    let window = args.soft + args.seq;
    if window + new > config.context_length() {
        bail!(
            "--seq {} plus --soft {} plus --generate {new} exceeds {}'s context of {} tokens",
            args.seq,
            args.soft,
            args.shape,
            config.context_length()
        );
    }
    let dtype = args
        .precision
        .resolve(args.device.is_gpu(), Some(burn::tensor::DType::BF16));
    let (params, [read_ms, ms_per_step, whole_ms_per_step]) =
        crate::with_backend!(args.device, |B, dev| {
            time_generation::<B>(&config, args, new, &dev, dtype)?
        });
    Ok(GenerateResult {
        shape: args.shape.clone(),
        device: device_label(args.device)?,
        dtype: dtype_name(dtype).to_string(),
        params,
        context: args.seq,
        soft: args.soft,
        new,
        texts: args.batch,
        read_ms,
        ms_per_step,
        whole_ms_per_step,
        peak_bytes: match args.device {
            DeviceSpec::Cpu => peak_rss(),
            DeviceSpec::Cuda(i) => gpu_used(i),
        },
    })
}

/// The parameter count, and in ms: reading the prompt and text, each further token with
/// the cache, each further token reading the whole window.
fn time_generation<B: Kernels>(
    config: &ModelConfig,
    args: &BenchArgs,
    new: usize,
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> Result<(usize, [f64; 3])> {
    let (model, params) = CausalLm::<B>::random(config, device, LoadOptions { dtype })?;
    let mut rng = SplitMix64::new(42);
    let (n, d) = (args.soft, config.d_embed);
    let prompt: Vec<f32> = (0..n * d).map(|_| (rng.normal() * 0.02) as f32).collect();
    let prompt = Tensor::<B, 2>::from_data(TensorData::new(prompt, [n, d]), device);
    let context: Vec<u32> = (0..args.seq)
        .map(|_| rng.below(config.vocab_size as u64) as u32)
        .collect();
    // Greedy, with no stop tokens: always `max_new` tokens per text, each step's first
    // passed to `each`.
    let run = |context_len: usize, max_new: usize, each: &mut dyn FnMut(u32) -> Result<()>| {
        let rows = vec![Sampling::greedy(max_new); args.batch];
        let (vocab, prompt) = (config.vocab_size, Some(&prompt));
        generate_rows(
            &model,
            prompt,
            &context,
            vocab,
            context_len,
            &[],
            &rows,
            |r, id| if r == 0 { each(id) } else { Ok(()) },
        )
    };
    // Token times from the start: with the whole model context, and with a window of just
    // the prompt and the text, which slides at every new token.
    let timed = |context_len: usize, label: &str| -> Result<Vec<f64>> {
        let start = Instant::now();
        let mut at = Vec::with_capacity(new);
        run(context_len, new, &mut |_| {
            at.push(start.elapsed().as_secs_f64() * 1000.0);
            Ok(())
        })?;
        let texts = match args.batch {
            1 => String::new(),
            b => format!(" for each of {b} texts"),
        };
        eprintln!(
            "{}: {new} tokens{texts} {label} in {:.2} s",
            args.shape,
            start.elapsed().as_secs_f64()
        );
        Ok(at)
    };
    for _ in 0..args.warmup {
        run(config.context_length(), 2, &mut |_| Ok(()))?;
    }
    let per_token = |at: &[f64]| (at[at.len() - 1] - at[0]) / (at.len() - 1) as f64;
    let cached = timed(config.context_length(), "with the cache")?;
    let whole = timed(n + args.seq, "reading the whole window")?;
    Ok((params, [cached[0], per_token(&cached), per_token(&whole)]))
}
