//! The training engine: a validated configuration in, typed events out. No UI here.
//!
//! * [`plan`]: model, tokenizer, dataset rows and step counts, all checked before any
//!   weights are loaded.
//! * the loop ([`run`]): frozen model (no dropout exists in our forward), float32 master
//!   prompt and optimizer state on the host, gradient accumulation, global-norm clipping,
//!   warmup + cosine schedule, held-out evaluation, checkpoints and exports every
//!   `save_every` steps and when asked to stop (SIGINT/SIGTERM/SIGHUP set the stop flag).

pub mod checkpoint;
pub mod events;
pub mod init;
pub mod optimizer;
pub mod samples;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use burn::backend::Autodiff;
use burn::tensor::Tensor;
use sha2::{Digest, Sha256};

use crate::config::{InitKind, ValidConfig};
use crate::data::dataset::{self, Rows};
use crate::eval::{ids_tensor, mean_loss, prompt_tensor, scalar};
use crate::export::{KoboldMeta, PeftMeta, write_kobold_zip, write_peft_adapter};
use crate::model::source::{self, HubOptions, ModelFiles};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Weights;
use crate::model::{CausalLm, LoadOptions, ModelConfig, TrainKernels};
use crate::prompt::{self, SoftPrompt};
use crate::rng::SplitMix64;
use checkpoint::Checkpoint;
use events::{Event, EventSink};
use optimizer::{Optimizer, clip_grad_norm};

/// Where the starting prompt comes from.
#[derive(Debug, Clone)]
pub enum Start {
    /// A fresh prompt initialised per `prompt.init`.
    Fresh,
    /// A prompt read from a KoboldAI zip / PEFT adapter / npz `.mtjsp`.
    Prompt(SoftPrompt),
    /// A full resume from our checkpoint.
    Resume(Box<Checkpoint>),
}

/// Where a run folder keeps its checkpoint (written every `save_every` steps and at the end).
pub fn checkpoint_path(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint.safetensors")
}

/// Everything decided before the first weight is loaded.
pub struct Plan {
    pub cfg: ValidConfig,
    pub files: ModelFiles,
    pub model_cfg: ModelConfig,
    pub tokenizer: Tokenizer,
    pub rows: Rows,
    pub soft_tokens: usize,
    pub total_steps: usize,
    pub start: Start,
    pub run_dir: PathBuf,
    pub fingerprint: String,
    pub cache_hit: bool,
    /// What reading the dataset found that the user should know (hard-wrapped files),
    /// said before training; empty when the tokens came from the cache.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn kobold_path(&self) -> PathBuf {
        self.cfg.folder.join(format!("{}.zip", self.cfg.stem))
    }

    pub fn peft_dir(&self) -> PathBuf {
        self.cfg.folder.join(format!("{}-peft", self.cfg.stem))
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        checkpoint_path(&self.run_dir)
    }

    /// The held-out sequences the run evaluates on, as a token file: `softtune eval --text`
    /// on it with `--block-size` = the sequence length reproduces the reported losses.
    pub fn heldout_path(&self) -> PathBuf {
        self.run_dir.join("heldout.u32")
    }

    /// The held-out rows scored at each evaluation.
    pub fn eval_rows(&self) -> &[Vec<u32>] {
        &self.rows.eval[..self.rows.eval.len().min(self.cfg.eval_rows)]
    }

    /// Sequences consumed per optimizer step.
    pub fn per_step(&self) -> usize {
        self.cfg.batch_size * self.cfg.grad_accumulation
    }
}

/// Resolves the model, tokenizes the dataset (cached in `run_dir`) and checks every
/// model-dependent limit. Loads no weights.
pub fn plan(cfg: &ValidConfig, run_dir: &Path) -> Result<Plan> {
    let mut hub = HubOptions::from_env();
    hub.revision = cfg.revision.clone();
    let files = source::resolve(&cfg.model, &hub)?;
    let model_cfg = ModelConfig::from_file(&files.config)?;
    let tok_path = files.tokenizer_path()?;
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    tokenizer.check_fits(model_cfg.vocab_size)?;

    let start = match &cfg.continue_from {
        None => Start::Fresh,
        Some(p) if Checkpoint::is_checkpoint(p) => Start::Resume(Box::new(Checkpoint::load(p)?)),
        Some(p) => Start::Prompt(prompt::load_for_model(p, &model_cfg)?),
    };
    let soft_tokens = match &start {
        Start::Fresh => cfg.soft_tokens,
        Start::Prompt(p) => p.rows,
        Start::Resume(c) => {
            if c.dim != model_cfg.d_embed {
                bail!(
                    "continue_from: the checkpoint's prompt is {} wide but the model's embedding width is {}",
                    c.dim,
                    model_cfg.d_embed
                );
            }
            c.rows
        }
    };
    let ctx = model_cfg.context_length();
    if soft_tokens >= ctx {
        bail!("{soft_tokens} soft tokens do not fit in the model's context of {ctx} tokens");
    }
    let len = cfg.tokens_per_sequence.unwrap_or(ctx - soft_tokens);
    if len + soft_tokens > ctx {
        bail!(
            "`training.tokens_per_sequence` = {len} plus {soft_tokens} soft tokens exceeds the model's context length {ctx}; use {} or less",
            ctx - soft_tokens
        );
    }
    let eos = tokenizer.eos_id(&model_cfg).ok_or_else(|| {
        anyhow!("the model defines no EOS token (config.json `eos_token_id`), which separates the dataset's files")
    })?;
    let data_files = dataset::scan(&cfg.dataset, &cfg.glob)?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("{}: cannot create the run folder", run_dir.display()))?;
    let tokens = dataset::load_or_tokenize(&tokenizer, &data_files, eos, cfg.unwrap, run_dir)?;
    let rows = dataset::make_rows(&tokens.ids, len, cfg.eval_fraction, cfg.seed)?;
    let per_step = cfg.batch_size * cfg.grad_accumulation;
    if rows.train.len() < per_step {
        bail!(
            "the dataset gives {} training sequences of {len} tokens, fewer than one optimizer step needs ({} = batch_size {} × grad_accumulation {}); add text, or lower training.tokens_per_sequence, batch_size or grad_accumulation",
            rows.train.len(),
            per_step,
            cfg.batch_size,
            cfg.grad_accumulation
        );
    }
    let total_steps = ((cfg.epochs * rows.train.len() as f64) as usize / per_step).max(1);
    let mut h = Sha256::new();
    h.update(tokens.key.as_bytes());
    h.update(
        format!(
            "{}|{}|{soft_tokens}|{len}|{}|{}|{}|{}|{total_steps}",
            files.id,
            model_cfg.d_embed,
            cfg.batch_size,
            cfg.grad_accumulation,
            cfg.seed,
            cfg.eval_fraction
        )
        .as_bytes(),
    );
    let fingerprint: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Start::Resume(c) = &start
        && c.fingerprint != fingerprint
    {
        bail!(
            "continue_from: the checkpoint belongs to a different run (dataset, model, soft tokens, sequence length, batch, accumulation, seed or step count changed); train from its exported prompt instead (the .zip)"
        );
    }
    let heldout: Vec<u32> = rows
        .eval
        .iter()
        .take(cfg.eval_rows)
        .flatten()
        .copied()
        .collect();
    crate::data::write_token_file(&run_dir.join("heldout.u32"), &heldout)?;
    Ok(Plan {
        cfg: cfg.clone(),
        files,
        model_cfg,
        tokenizer,
        rows,
        soft_tokens,
        total_steps,
        start,
        run_dir: run_dir.to_path_buf(),
        fingerprint,
        cache_hit: tokens.cache_hit,
        notes: dataset::wrapped_note(&tokens.found.wrapped, cfg.unwrap)
            .map(|note| {
                if cfg.unwrap {
                    note
                } else {
                    format!(
                        "{note}; set `dataset.unwrap = true` to join them (`softtune text --unwrap` shows the result)"
                    )
                }
            })
            .into_iter()
            .chain(dataset::separated_note(&tokens.found.separated))
            .chain(dataset::repaired_note(&tokens.found.repaired))
            .collect(),
    })
}

/// How the outside world steers a running engine: `stop` ends the run gracefully after the
/// current optimizer step (checkpoint + exports); `pause` holds it between two steps until
/// cleared (or until `stop`).
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub stop: Arc<AtomicBool>,
    pub pause: Arc<AtomicBool>,
}

impl Control {
    pub fn with_stop(stop: Arc<AtomicBool>) -> Self {
        Self {
            stop,
            pause: Arc::default(),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: usize,
    pub stopped: bool,
    pub prompt: SoftPrompt,
    pub eval_no_prompt: Option<f64>,
    pub eval_initial: Option<f64>,
    pub eval_final: Option<f64>,
    pub exports: Vec<PathBuf>,
}

/// Runs the plan on its configured device, steered by `control`.
pub fn run(plan: &Plan, control: &Control, sink: &mut dyn EventSink) -> Result<Outcome> {
    let result = run_inner(plan, control, sink);
    if let Err(e) = &result {
        sink.emit(&Event::Error {
            message: format!("{e:#}"),
        });
    }
    result
}

fn run_inner(plan: &Plan, control: &Control, sink: &mut dyn EventSink) -> Result<Outcome> {
    let device = plan.cfg.device;
    let weights = Weights::open(&plan.files.weights)?;
    let dtype = plan
        .cfg
        .precision
        .resolve(device.is_gpu(), weights.stored_dtype());
    if let Some(message) = memory_note(plan, dtype) {
        sink.emit(&Event::Log { message });
    }
    crate::with_backend!(device, |B, dev| {
        let model =
            CausalLm::<Autodiff<B>>::load(&plan.model_cfg, &weights, &dev, LoadOptions { dtype })?;
        drop(weights);
        train_loop::<Autodiff<B>>(plan, &model, &dev, control, sink)
    })
}

/// On a GPU whose free memory NVML reports: the run's memory estimate against it, said
/// before the weights load, with what fits when it does not. A warning, not a refusal (the
/// wizard refuses such a run; the estimate carries allowances, and a configuration file
/// may know better).
fn memory_note(plan: &Plan, dtype: burn::tensor::DType) -> Option<String> {
    use crate::model::memory::{RunShape, parameter_count, training_memory};
    let crate::device::DeviceSpec::Cuda(index) = plan.cfg.device else {
        return None;
    };
    let free = crate::device::probe_gpus()?
        .into_iter()
        .find(|g| g.index == index)?
        .free;
    let parameters = parameter_count(&plan.model_cfg);
    let need = |batch: usize| {
        let run = RunShape {
            batch,
            soft: plan.soft_tokens,
            text: plan.rows.len,
            dtype,
            gpu: true,
        };
        training_memory(&plan.model_cfg, parameters, run).total()
    };
    Some(memory_message(&need, plan.cfg.batch_size, index, free))
}

/// The memory line for a run needing `need(batch)` bytes on `cuda:index` with `free` bytes
/// free, naming the largest batch that fits when `batch` does not.
fn memory_message(need: &dyn Fn(usize) -> u64, batch: usize, index: usize, free: u64) -> String {
    use crate::inspect::human_bytes;
    let (total, free_text) = (need(batch), human_bytes(free as usize));
    let needed = format!("memory: about {} needed", human_bytes(total as usize));
    if total <= free {
        return format!("{needed}, {free_text} free on cuda:{index}");
    }
    let advice = match crate::model::memory::largest_batch_below(need, batch, free) {
        Some(b) => format!(
            "training.batch_size = {b} fits (raise grad_accumulation to keep the step size)"
        ),
        None => "lower training.tokens_per_sequence, set device.precision = \"bf16\" for a \
                 float32 checkpoint, or use a smaller model"
            .to_string(),
    };
    format!(
        "{needed} but cuda:{index} has {free_text} free: the run may run out of memory; {advice}"
    )
}

/// Mean held-out loss over at most `eval_rows` held-out sequences.
fn held_out_loss<B: TrainKernels>(
    plan: &Plan,
    model: &CausalLm<B>,
    prompt: Option<&[f32]>,
    device: &B::Device,
) -> Result<Option<f64>>
where
    CausalLm<B>: Sync,
{
    let rows: Vec<&[u32]> = plan.eval_rows().iter().map(Vec::as_slice).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let p = prompt.map(|p| prompt_tensor::<B>(p, plan.soft_tokens, plan.model_cfg.d_embed, device));
    mean_loss(
        model,
        &rows,
        p.as_ref(),
        plan.cfg.batch_size,
        device,
        plan.cfg.device.threads(),
    )
    .map(Some)
}

/// One forward + backward: the prompted loss of `ids` and its gradient for the prompt
/// (`[n, d]`, row-major, float32, on the host).
pub fn micro_step<B: TrainKernels>(
    model: &CausalLm<B>,
    prompt: &[f32],
    n: usize,
    d: usize,
    ids: Tensor<B, 2, burn::tensor::Int>,
) -> Result<(f64, Vec<f32>)> {
    let device = model.device();
    let p = prompt_tensor::<B>(prompt, n, d, &device).require_grad();
    let loss = model.loss_with_prompt(p.clone(), ids);
    let grads = loss.backward();
    let loss = scalar(loss.detach())?;
    let g = p
        .grad(&grads)
        .ok_or_else(|| anyhow!("the soft prompt received no gradient"))?
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading the gradient back failed: {e:?}"))?;
    Ok((loss, g))
}

/// The prompted loss and its gradient over `rows` (an optimizer step's sequences) taken in
/// micro-batches of `batch` rows, averaged over the micro-batches: (mean loss, gradient).
///
/// With `threads` > 1 (the CPU), parts run side by side on their own threads: a micro-batch
/// of at least `threads` rows is split into `threads` parts, smaller ones run `threads` at
/// a time. Each part's loss and gradient is weighted by its share of a micro-batch, so the
/// result is the same sum; with one thread it is exactly the sequential one.
pub fn accumulate<B: TrainKernels>(
    model: &CausalLm<B>,
    prompt: &[f32],
    n: usize,
    d: usize,
    rows: &[&[u32]],
    batch: usize,
    threads: usize,
) -> Result<(f64, Vec<f32>)>
where
    CausalLm<B>: Sync,
{
    let threads = threads.max(1);
    let batch = batch.max(1);
    let parts: Vec<&[&[u32]]> = if threads > 1 && batch >= threads {
        let size = batch.div_ceil(threads);
        rows.chunks(batch).flat_map(|m| m.chunks(size)).collect()
    } else {
        rows.chunks(batch).collect()
    };
    let device = model.device();
    let mut grad = vec![0f32; n * d];
    let mut loss_sum = 0.0;
    for group in parts.chunks(threads) {
        let results: Vec<Result<(f64, Vec<f32>)>> = if group.len() == 1 {
            vec![micro_step(
                model,
                prompt,
                n,
                d,
                ids_tensor::<B>(group[0], &device),
            )]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|part| {
                        let device = device.clone();
                        scope.spawn(move || {
                            micro_step(model, prompt, n, d, ids_tensor::<B>(part, &device))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|panic| {
                            Err(anyhow!(
                                "a training thread crashed: {}",
                                panic_text(panic.as_ref())
                            ))
                        })
                    })
                    .collect()
            })
        };
        for (part, r) in group.iter().zip(results) {
            let (loss, g) = r?;
            let w = part.len() as f64 / batch as f64;
            loss_sum += loss * w;
            let wf = w as f32;
            for (a, b) in grad.iter_mut().zip(g) {
                *a += b * wf;
            }
        }
    }
    let micro_batches = rows.len().div_ceil(batch);
    let k = micro_batches as f32;
    for x in grad.iter_mut() {
        *x /= k;
    }
    Ok((loss_sum / micro_batches as f64, grad))
}

/// Indices of the training rows for global sequence numbers `from..from+n`: each epoch is a
/// seeded shuffle of all training rows.
pub fn data_indices(n_train: usize, seed: u64, from: usize, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut epoch = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    for g in from..from + n {
        let e = g / n_train;
        if e != epoch {
            epoch = e;
            order = (0..n_train).collect();
            SplitMix64::new(seed.wrapping_add(0x9e37 * (e as u64 + 1))).shuffle(&mut order);
        }
        out.push(order[g % n_train]);
    }
    out
}

fn train_loop<B: TrainKernels>(
    plan: &Plan,
    model: &CausalLm<B>,
    device: &B::Device,
    control: &Control,
    sink: &mut dyn EventSink,
) -> Result<Outcome>
where
    CausalLm<B>: Sync,
{
    let cfg = &plan.cfg;
    let (n, d) = (plan.soft_tokens, plan.model_cfg.d_embed);
    let (mut prompt, initial, mut opt, start_step) = match &plan.start {
        Start::Resume(c) => (
            c.prompt.clone(),
            c.initial.clone(),
            c.optimizer.clone(),
            c.step,
        ),
        Start::Prompt(p) => {
            let o = Optimizer::new(cfg.optimizer, cfg.weight_decay, n, d);
            (p.data.clone(), p.data.clone(), o, 0)
        }
        Start::Fresh => {
            let p = init::initial_prompt(plan, model)?;
            let o = Optimizer::new(cfg.optimizer, cfg.weight_decay, n, d);
            (p.clone(), p, o, 0)
        }
    };
    sink.emit(&Event::Started {
        model: plan.files.id.clone(),
        device: cfg.device.to_string(),
        soft_tokens: n,
        d_embed: d,
        tokens_per_sequence: plan.rows.len,
        batch_size: cfg.batch_size,
        grad_accumulation: cfg.grad_accumulation,
        train_rows: plan.rows.train.len(),
        eval_rows: plan.rows.eval.len(),
        total_steps: plan.total_steps,
        start_step,
        sample_every: cfg.sample_every,
    });
    if plan.cache_hit {
        sink.emit(&Event::Log {
            message: "dataset tokens read from the cache".into(),
        });
    }
    for note in &plan.notes {
        sink.emit(&Event::Log {
            message: format!("dataset: {note}"),
        });
    }
    if cfg.device.is_gpu() {
        // Seen on an H200: minutes of compiling before the first step of a first run.
        sink.emit(&Event::Log {
            message: "the GPU kernels are compiled on first use: on a first run the first \
                      evaluation and steps can take minutes; later runs reuse them"
                .into(),
        });
    }
    let eval_no_prompt = held_out_loss(plan, model, None, device)?;
    let eval_initial = held_out_loss(plan, model, Some(&initial), device)?;
    // Both baselines belong to step 0, also when resuming: the initial prompt is the one
    // training started from.
    for (label, v) in [("no_prompt", eval_no_prompt), ("initial", eval_initial)] {
        if let Some(loss) = v {
            sink.emit(&Event::Eval {
                step: 0,
                label: label.into(),
                loss,
            });
        }
    }

    let mut sampler = samples::Sampler::new(plan)?;
    let mut sample = |step: usize, prompt: &[f32], sink: &mut dyn EventSink| {
        let Some(s) = sampler.as_mut() else { return };
        match guarded(|| s.sample(plan, model, prompt, step)) {
            Ok(e) => sink.emit(&e),
            Err(e) => {
                // Samples are a view on training, never a reason to stop it.
                sink.emit(&Event::Log {
                    message: format!("samples turned off: generating one failed: {e:#}"),
                });
                sampler = None;
            }
        }
    };
    sample(start_step, &prompt, sink);

    let per_step = plan.per_step();
    let threads = cfg.device.threads();
    let t0 = Instant::now();
    let mut paused_total = Duration::ZERO;
    let mut step = start_step;
    // The step the run's checkpoint holds (a resumed run's checkpoint is its start).
    let mut saved_step = start_step;
    let mut exports = Vec::new();
    while step < plan.total_steps {
        if control.pause.load(Ordering::SeqCst) && !control.stopping() {
            sink.emit(&Event::Paused { step });
            let p0 = Instant::now();
            while control.pause.load(Ordering::SeqCst) && !control.stopping() {
                std::thread::sleep(Duration::from_millis(100));
            }
            paused_total += p0.elapsed();
            sink.emit(&Event::Resumed {
                step,
                paused_s: p0.elapsed().as_secs_f64(),
            });
        }
        if control.stopping() {
            break;
        }
        let step_start = Instant::now();
        let lr = schedule::lr_at(step, plan.total_steps, cfg.lr, cfg.warmup, cfg.end_lr);
        let idx = data_indices(plan.rows.train.len(), cfg.seed, step * per_step, per_step);
        let rows: Vec<&[u32]> = idx.iter().map(|&i| plan.rows.train[i].as_slice()).collect();
        let attempt = guarded(|| accumulate(model, &prompt, n, d, &rows, cfg.batch_size, threads));
        let (loss, mut grad) = match attempt {
            Ok(x) => x,
            Err(e) => {
                let failed = format!("step {} failed", step + 1);
                let last = Saved::new(step, &prompt, &initial, &opt);
                return Err(keep_last_good(plan, last, saved_step, &failed, e, sink));
            }
        };
        let norm = clip_grad_norm(&mut grad, cfg.max_grad_norm);
        opt.step(&mut prompt, &grad, lr);
        step += 1;
        let secs = step_start.elapsed().as_secs_f64();
        sink.emit(&Event::Step {
            step,
            total_steps: plan.total_steps,
            loss,
            grad_norm: norm,
            lr,
            tokens_per_s: (per_step * plan.rows.len) as f64 / secs.max(1e-9),
            elapsed_s: t0.elapsed().saturating_sub(paused_total).as_secs_f64(),
        });
        let last = step == plan.total_steps;
        if samples::Sampler::due(plan, step) || last {
            sample(step, &prompt, sink);
        }
        if step % cfg.save_every == 0 && !last {
            let eval = guarded(|| held_out_loss(plan, model, Some(&prompt), device));
            let eval = match eval {
                Ok(v) => v,
                Err(e) => {
                    let failed = format!("the held-out evaluation after step {step} failed");
                    let last = Saved::new(step, &prompt, &initial, &opt);
                    return Err(keep_last_good(plan, last, saved_step, &failed, e, sink));
                }
            };
            if let Some(loss) = eval {
                sink.emit(&Event::Eval {
                    step,
                    label: "step".into(),
                    loss,
                });
            }
            exports = save(plan, step, &prompt, &initial, &opt, sink)?;
            saved_step = step;
        }
    }
    let stopped = step < plan.total_steps;
    let eval_final = match guarded(|| held_out_loss(plan, model, Some(&prompt), device)) {
        Ok(v) => v,
        Err(e) => {
            let failed = format!("the final held-out evaluation (after step {step}) failed");
            let last = Saved::new(step, &prompt, &initial, &opt);
            return Err(keep_last_good(plan, last, saved_step, &failed, e, sink));
        }
    };
    if let Some(loss) = eval_final {
        sink.emit(&Event::Eval {
            step,
            label: "final".into(),
            loss,
        });
    }
    if step > start_step || exports.is_empty() {
        exports = save(plan, step, &prompt, &initial, &opt, sink)?;
    }
    sink.emit(&Event::Finished {
        step,
        stopped,
        eval_no_prompt,
        eval_initial,
        eval_final,
        exports: exports.iter().map(|p| p.display().to_string()).collect(),
    });
    Ok(Outcome {
        step,
        stopped,
        prompt: SoftPrompt::new(n, d, prompt)?,
        eval_no_prompt,
        eval_initial,
        eval_final,
        exports,
    })
}

/// When `plan` starts from scratch and its run folder holds this same run's checkpoint
/// (same data, model and settings: the fingerprint matches) short of the last step, starts
/// from that checkpoint instead: a foreground run stopped with Ctrl-C, or one that failed,
/// goes on when the same command runs again, rather than starting over and overwriting
/// it. Returns the checkpoint's step when it does.
pub fn resume_in_place(plan: &mut Plan) -> Result<Option<usize>> {
    let path = plan.checkpoint_path();
    if !matches!(plan.start, Start::Fresh) || !Checkpoint::is_checkpoint(&path) {
        return Ok(None);
    }
    let ck = Checkpoint::load(&path).with_context(|| {
        format!(
            "{}: the run folder's checkpoint is damaged (--fresh starts over without it)",
            path.display()
        )
    })?;
    if ck.fingerprint != plan.fingerprint || ck.step >= plan.total_steps {
        return Ok(None);
    }
    let step = ck.step;
    plan.start = Start::Resume(Box::new(ck));
    Ok(Some(step))
}

/// A panic's message.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic (a crashed kernel, an allocation failure on the device) into
/// an error with its message.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(anyhow!("it crashed: {}", panic_text(panic.as_ref()))))
}

/// The prompt after `step` completed steps, with what saving it needs.
struct Saved<'a> {
    step: usize,
    prompt: &'a [f32],
    initial: &'a [f32],
    opt: &'a Optimizer,
}

impl<'a> Saved<'a> {
    fn new(step: usize, prompt: &'a [f32], initial: &'a [f32], opt: &'a Optimizer) -> Self {
        Self {
            step,
            prompt,
            initial,
            opt,
        }
    }
}

/// A step or an evaluation failed (out of memory, a NaN loss, a crashed kernel): the
/// prompt of the last completed step is saved with a checkpoint and both exports, unless
/// the checkpoint already holds it, so a failure hours into a run loses no finished step.
/// Returns the error (`what` failed, and why), saying what was kept.
fn keep_last_good(
    plan: &Plan,
    last: Saved,
    saved_step: usize,
    what: &str,
    error: anyhow::Error,
    sink: &mut dyn EventSink,
) -> anyhow::Error {
    let failed = format!("{what}: {error:#}");
    if last.step == 0 {
        return anyhow!(failed);
    }
    if last.step == saved_step {
        return anyhow!(
            "{failed}; the checkpoint holds the prompt after step {}",
            last.step
        );
    }
    match save(plan, last.step, last.prompt, last.initial, last.opt, sink) {
        Ok(_) => anyhow!(
            "{failed}; the prompt after step {} is saved (checkpoint and exports)",
            last.step
        ),
        Err(e) => anyhow!(
            "{failed}; saving the prompt after step {} failed too: {e:#}",
            last.step
        ),
    }
}

/// Checkpoint + both exports.
fn save(
    plan: &Plan,
    step: usize,
    prompt: &[f32],
    initial: &[f32],
    opt: &Optimizer,
    sink: &mut dyn EventSink,
) -> Result<Vec<PathBuf>> {
    let (n, d) = (plan.soft_tokens, plan.model_cfg.d_embed);
    let ck = Checkpoint {
        step,
        total_steps: plan.total_steps,
        seed: plan.cfg.seed,
        fingerprint: plan.fingerprint.clone(),
        rows: n,
        dim: d,
        prompt: prompt.to_vec(),
        initial: initial.to_vec(),
        optimizer: opt.clone(),
    };
    ck.save(&plan.checkpoint_path())?;
    let sp = SoftPrompt::new(n, d, prompt.to_vec())?;
    let cfg = &plan.cfg;
    let zip = plan.kobold_path();
    // KoboldAI's prompts sit before XGLM's embedding scale (see `kobold_scale`).
    let kobold = match plan.model_cfg.kobold_scale() {
        Some(scale) => SoftPrompt::new(n, d, prompt.iter().map(|v| v / scale).collect())?,
        None => sp.clone(),
    };
    write_kobold_zip(
        &zip,
        &kobold,
        &KoboldMeta {
            name: cfg.name.clone(),
            author: cfg.author.clone(),
            supported: cfg.supported.clone(),
            description: cfg.description.clone(),
        },
        cfg.float16,
    )?;
    let peft = plan.peft_dir();
    let init_text = match cfg.init {
        InitKind::Text => cfg.starter.clone(),
        _ => None,
    };
    write_peft_adapter(
        &peft,
        &sp,
        &PeftMeta {
            base_model_name_or_path: plan.files.id.clone(),
            num_attention_heads: plan.model_cfg.n_heads,
            num_layers: plan.model_cfg.n_layers,
            prompt_tuning_init: cfg.init.peft_name().to_string(),
            prompt_tuning_init_text: init_text,
            tokenizer_name_or_path: Some(plan.files.id.clone()),
        },
    )?;
    let exports = vec![zip, peft];
    sink.emit(&Event::Checkpoint {
        step,
        checkpoint: plan.checkpoint_path().display().to_string(),
        exports: exports.iter().map(|p| p.display().to_string()).collect(),
    });
    Ok(exports)
}

#[cfg(test)]
mod tests {
    use super::memory_message;

    #[test]
    fn memory_message_names_what_fits() {
        const GIB: u64 = 1 << 30;
        // 2 GiB of weights and 3 GiB a sequence.
        let need = |b: usize| 2 * GIB + 3 * GIB * b as u64;
        let fits = memory_message(&need, 2, 0, 10 * GIB);
        assert_eq!(
            fits,
            "memory: about 8.00 GiB needed, 10.00 GiB free on cuda:0"
        );
        let over = memory_message(&need, 4, 1, 10 * GIB);
        assert!(
            over.starts_with("memory: about 14.00 GiB needed but cuda:1 has 10.00 GiB free")
                && over.ends_with(
                    "training.batch_size = 2 fits (raise grad_accumulation to keep the step size)"
                ),
            "{over}"
        );
        let none = memory_message(&need, 4, 0, 4 * GIB);
        assert!(
            none.contains("lower training.tokens_per_sequence"),
            "{none}"
        );
    }
}
