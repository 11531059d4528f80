//! `softtune eval`: mean next-token loss and perplexity of a text, without and with a soft
//! prompt: the user's way to judge a prompt.
//!
//! The text (or a `.u32` token file, such as a run's `heldout.u32`) is tokenized without BOS and cut into consecutive non-overlapping blocks of
//! `block_size` tokens. Without a prompt, positions `0..N-1` predict tokens `1..N` (N−1
//! terms per block). With a prompt of n soft tokens the block follows the prompt and all N
//! tokens are scored, token 0 from the last soft position: exactly the training loss.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::data;
use crate::device::DeviceSpec;
use crate::model::Kernels;
use crate::model::lm::Precision;
use crate::model::source::{self, HubOptions};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Weights;
use crate::model::{CausalLm, LoadOptions, ModelConfig};
use crate::prompt::{self, SoftPrompt};

pub struct EvalArgs {
    pub model: String,
    pub text: PathBuf,
    pub prompt: Option<PathBuf>,
    pub block_size: Option<usize>,
    pub max_blocks: Option<usize>,
    pub batch: usize,
    pub device: DeviceSpec,
    pub precision: Precision,
    pub hub: HubOptions,
}

#[derive(Debug, Clone)]
pub struct EvalReport {
    pub model: String,
    pub device: String,
    pub blocks: usize,
    pub block_size: usize,
    pub loss: f64,
    pub loss_with_prompt: Option<f64>,
    pub prompt_tokens: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

impl EvalReport {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }

    pub fn print(&self) {
        println!(
            "model {}  on {}  |  {} blocks × {} tokens",
            self.model, self.device, self.blocks, self.block_size
        );
        println!(
            "without prompt: loss {:.4}  perplexity {:.3}",
            self.loss,
            self.perplexity()
        );
        if let Some(l) = self.loss_with_prompt {
            let change = (l.exp() / self.perplexity() - 1.0) * 100.0;
            println!(
                "with prompt ({} soft tokens): loss {:.4}  perplexity {:.3}  ({:+.1}% perplexity)",
                self.prompt_tokens,
                l,
                l.exp(),
                change
            );
        }
        println!("{:.1} tokens/s ({:.1} s)", self.tokens_per_s, self.seconds);
    }
}

pub fn run(args: &EvalArgs) -> Result<EvalReport> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let files = source::resolve(&args.model, &args.hub)?;
    let config = ModelConfig::from_file(&files.config)?;
    let tok_path = files.tokenizer_path()?;
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    tokenizer.check_fits(config.vocab_size)?;
    let prompt = match &args.prompt {
        Some(p) => Some(prompt::load_for_model(p, &config)?),
        None => None,
    };
    let n_soft = prompt.as_ref().map_or(0, |p| p.rows);
    let ctx = config.context_length();
    if n_soft >= ctx {
        bail!("the prompt has {n_soft} soft tokens but the model's context is {ctx} tokens");
    }
    let block = args.block_size.unwrap_or_else(|| (ctx - n_soft).min(1024));
    if block + n_soft > ctx {
        bail!(
            "--block-size {block} plus {n_soft} soft tokens exceeds the model's context length {ctx}; use --block-size {} or less",
            ctx - n_soft
        );
    }
    let tokens = if args.text.extension().is_some_and(|e| e == "u32") {
        data::read_token_file(&args.text, config.vocab_size)?
    } else {
        let text = data::read_dataset_text(&args.text, false)?;
        data::dataset::tokenize_eval_text(&tokenizer, &text, tokenizer.eos_id(&config))?
    };
    let blocks = data::blocks(&tokens, block, args.max_blocks)?;
    if blocks.is_empty() {
        bail!(
            "{}: {} tokens, fewer than one block of {block}; use a longer text or a smaller --block-size",
            args.text.display(),
            tokens.len()
        );
    }
    let weights = Weights::open(&files.weights)?;
    let device = args.device;
    let stored = weights.stored_dtype();
    let dtype = args.precision.resolve(device.is_gpu(), stored);
    crate::with_backend!(device, |B, dev| {
        let model = CausalLm::<B>::load(&config, &weights, &dev, LoadOptions { dtype })?;
        drop(weights);
        evaluate(
            &model,
            &blocks,
            prompt.as_ref(),
            args.batch,
            &dev,
            device.threads(),
        )
        .map(|(l, lp, tps, secs)| EvalReport {
            model: files.id.clone(),
            device: device.to_string(),
            blocks: blocks.len(),
            block_size: block,
            loss: l,
            loss_with_prompt: lp,
            prompt_tokens: n_soft,
            tokens_per_s: tps,
            seconds: secs,
        })
    })
}

/// Token ids `[b, t]` on the device.
pub fn ids_tensor<B: Backend>(rows: &[&[u32]], device: &B::Device) -> Tensor<B, 2, Int> {
    let t = rows[0].len();
    let flat: Vec<i32> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as i32))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

/// A `[rows, dim]` soft prompt as a float32 tensor on the device.
pub fn prompt_tensor<B: Backend>(
    data: &[f32],
    rows: usize,
    dim: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(data.to_vec(), [rows, dim]),
        (device, burn::tensor::DType::F32),
    )
}

/// Reads a one-element loss back to the host; a NaN or infinite loss is an error.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f64> {
    let v = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("could not read the loss back from the device: {e:?}"))?;
    let x = v[0] as f64;
    if !x.is_finite() {
        bail!("the loss is {x}: the computation overflowed (when training, lower training.lr)");
    }
    Ok(x)
}

/// Mean loss over `blocks` (equal-length token rows), `batch` rows per forward pass, with
/// the prompt prepended when given. With `threads` > 1 the batches run side by side; each
/// batch is computed as it would be alone and the sum is taken in order, so the result is
/// the same bit for bit.
pub fn mean_loss<B: Kernels>(
    model: &CausalLm<B>,
    blocks: &[&[u32]],
    prompt: Option<&Tensor<B, 2>>,
    batch: usize,
    device: &B::Device,
    threads: usize,
) -> Result<f64>
where
    CausalLm<B>: Sync,
{
    let chunks: Vec<&[&[u32]]> = blocks.chunks(batch.max(1)).collect();
    let one = |chunk: &[&[u32]]| -> Result<f64> {
        let ids = ids_tensor::<B>(chunk, device);
        let loss = match prompt {
            Some(p) => model.loss_with_prompt(p.clone(), ids),
            None => model.loss(ids),
        };
        Ok(scalar(loss)? * chunk.len() as f64)
    };
    let threads = threads.clamp(1, chunks.len().max(1));
    let per_chunk: Vec<f64> = if threads == 1 {
        chunks.iter().map(|c| one(c)).collect::<Result<_>>()?
    } else {
        let mut out = vec![0.0; chunks.len()];
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (chunks, one) = (&chunks, &one);
                    scope.spawn(move || {
                        (t..chunks.len())
                            .step_by(threads)
                            .map(|i| one(chunks[i]).map(|v| (i, v)))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            for h in handles {
                let part = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an evaluation thread crashed")))?;
                for (i, v) in part {
                    out[i] = v;
                }
            }
            Ok(())
        })?;
        out
    };
    let mut sum = 0.0;
    for v in per_chunk {
        sum += v;
    }
    Ok(sum / blocks.len() as f64)
}

/// Mean loss without and (if given) with the prompt, tokens/s and seconds.
pub fn evaluate<B: Kernels>(
    model: &CausalLm<B>,
    blocks: &[&[u32]],
    prompt: Option<&SoftPrompt>,
    batch: usize,
    device: &B::Device,
    threads: usize,
) -> Result<(f64, Option<f64>, f64, f64)>
where
    CausalLm<B>: Sync,
{
    let start = Instant::now();
    let loss = mean_loss(model, blocks, None, batch, device, threads)?;
    let p = prompt.map(|p| prompt_tensor::<B>(&p.data, p.rows, p.dim, device));
    let with = match &p {
        Some(p) => Some(mean_loss(model, blocks, Some(p), batch, device, threads)?),
        None => None,
    };
    let passes = if p.is_some() { 2 } else { 1 };
    let tokens = passes * blocks.iter().map(|b| b.len()).sum::<usize>();
    let secs = start.elapsed().as_secs_f64();
    Ok((loss, with, tokens as f64 / secs.max(1e-9), secs))
}
