//! Defaults and checks: [`RunConfig`] → [`ValidConfig`].
//!
//! Checks that need no model: required fields, ranges, the dataset path, the starter file,
//! the output folder (created if needed, then probed for writing), the device string.
//! Model-dependent checks (context length, embedding width) happen when the run is planned.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

use super::{RunConfig, bad, check_range};
use crate::device::DeviceSpec;
use crate::model::generate::Sampling;
use crate::model::lm::Precision;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// Token embeddings of the starter text, repeated or cut to the soft-token count.
    Text,
    /// Random rows of the embedding matrix (ids below the tokenizer's vocabulary).
    VocabSample,
    /// Normal noise scaled to the embedding matrix's standard deviation.
    Random,
}

impl InitKind {
    /// The name PEFT's `prompt_tuning_init` uses.
    pub fn peft_name(self) -> &'static str {
        match self {
            InitKind::Text => "TEXT",
            InitKind::VocabSample => "SAMPLE_VOCAB",
            InitKind::Random => "RANDOM",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    AdamW,
    Adafactor,
}

/// A configuration with every default filled in and every value checked.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub dataset: PathBuf,
    pub glob: String,
    /// Join the wrapped lines of hard-wrapped files.
    pub unwrap: bool,
    pub starter: Option<String>,
    pub init: InitKind,
    pub soft_tokens: usize,
    pub model: String,
    pub revision: Option<String>,
    pub tokens_per_sequence: Option<usize>,
    pub batch_size: usize,
    pub grad_accumulation: usize,
    pub epochs: f64,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    pub warmup: f64,
    pub end_lr: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub eval_fraction: f64,
    pub save_every: usize,
    pub eval_rows: usize,
    pub name: String,
    pub author: String,
    pub description: String,
    pub supported: Vec<String>,
    pub version: String,
    pub folder: PathBuf,
    pub stem: String,
    pub float16: bool,
    pub device: DeviceSpec,
    pub precision: Precision,
    pub continue_from: Option<PathBuf>,
    /// Text the dashboard's samples continue (`None`: the start of a held-out sequence).
    pub sample_prompt: Option<String>,
    /// Optimizer steps between samples; 0 means no samples.
    pub sample_every: usize,
    pub sample_tokens: usize,
    pub sample_temperature: f64,
    pub sample_top_k: usize,
    pub sample_top_p: f64,
    pub sample_repetition_penalty: f64,
    pub sample_repetition_range: usize,
}

/// Keeps letters, digits, `-`, `_` and `.`; everything else becomes `_`.
pub fn sanitize_stem(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches(|c| c == '.' || c == '_').to_string();
    if out.is_empty() {
        "softprompt".to_string()
    } else {
        out
    }
}

/// Checks that `dir` exists or can be created, and is writable (creates and removes a probe file).
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow!(
            "output folder {}: cannot create it ({e}); choose another folder",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".softtune-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(|e| {
        anyhow!(
            "output folder {}: not writable ({e}); choose another folder",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Collects every problem so the user sees them all at once.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn add(&mut self, e: anyhow::Error) {
        self.0.push(format!("{e:#}"));
    }

    fn positive(&mut self, key: &str, v: Option<usize>, default: usize) -> usize {
        let x = v.unwrap_or(default);
        if x == 0 {
            self.add(bad(key, x, "must be at least 1"));
        }
        x
    }

    fn num(&mut self, key: &str, v: Option<f64>, default: f64, lo: f64, hi: f64) -> f64 {
        let x = v.unwrap_or(default);
        if let Err(e) = check_range(key, x, lo, hi) {
            self.add(e);
        }
        x
    }

    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(self.0.join("; ")))
        }
    }
}

impl RunConfig {
    /// Fills defaults and checks every value; all problems are reported together.
    pub fn validate(&self) -> Result<ValidConfig> {
        let mut errs = Errors::default();

        let dataset = match &self.dataset.path {
            None => {
                errs.add(anyhow!(
                    "`dataset.path` is missing: name a text file or a folder of .txt files"
                ));
                PathBuf::new()
            }
            Some(p) if !p.exists() => {
                errs.add(anyhow!(
                    "`dataset.path` = {}: no such file or folder",
                    p.display()
                ));
                p.clone()
            }
            Some(p) => p.clone(),
        };
        let glob = self
            .dataset
            .glob
            .clone()
            .unwrap_or_else(|| "*.txt".to_string());
        if let Err(e) = glob::Pattern::new(&glob) {
            errs.add(bad(
                "dataset.glob",
                format!("\"{glob}\""),
                &format!("not a valid pattern ({e})"),
            ));
        }

        let starter = match (&self.prompt.text, &self.prompt.file) {
            (Some(_), Some(_)) => {
                errs.add(anyhow!(
                    "`prompt.text` and `prompt.file` are both set: keep one"
                ));
                None
            }
            (Some(t), None) => Some(t.clone()),
            // Read as a dataset file is: text, or an EPUB book or document.
            (None, Some(f)) => match crate::data::read_text(f) {
                Ok(s) => Some(s),
                Err(e) => {
                    errs.add(anyhow!("`prompt.file` = {e:#}"));
                    None
                }
            },
            (None, None) => None,
        };
        if starter.as_deref().is_some_and(|s| s.trim().is_empty()) {
            errs.add(anyhow!(
                "the starter prompt is empty: write some text or remove it"
            ));
        }
        let init = match self.prompt.init.as_deref() {
            None if starter.is_some() => InitKind::Text,
            None => InitKind::VocabSample,
            Some("text") => {
                if starter.is_none() {
                    errs.add(anyhow!(
                        "`prompt.init` = \"text\" needs `prompt.text` or `prompt.file`"
                    ));
                }
                InitKind::Text
            }
            Some("vocab_sample") => InitKind::VocabSample,
            Some("random") => InitKind::Random,
            Some(other) => {
                errs.add(bad(
                    "prompt.init",
                    format!("\"{other}\""),
                    "must be text, vocab_sample or random",
                ));
                InitKind::VocabSample
            }
        };
        let soft_tokens = self.prompt.soft_tokens.unwrap_or(80);
        if soft_tokens == 0 || soft_tokens >= 2048 {
            errs.add(bad(
                "prompt.soft_tokens",
                soft_tokens,
                "must be between 1 and 2047 (KoboldAI refuses 2048 or more)",
            ));
        }

        let model = match &self.model.id {
            Some(m) if !m.trim().is_empty() => m.clone(),
            _ => {
                errs.add(anyhow!("`model.id` is missing: a Hugging Face id (e.g. EleutherAI/pythia-160m) or a model folder"));
                String::new()
            }
        };

        let t = &self.training;
        if let Some(n) = t.tokens_per_sequence
            && n < 2
        {
            errs.add(bad("training.tokens_per_sequence", n, "must be at least 2"));
        }
        let batch_size = errs.positive("training.batch_size", t.batch_size, 1);
        let grad_accumulation =
            errs.positive("training.grad_accumulation", t.grad_accumulation, 16);
        let save_every = errs.positive("training.save_every", t.save_every, 50);
        let eval_rows = errs.positive("training.eval_rows", t.eval_rows, 32);
        let epochs = errs.num("training.epochs", t.epochs, 1.0, 1e-6, 1e6);
        let lr = errs.num("training.lr", t.lr, 3e-5, 1e-12, 10.0);
        let weight_decay = errs.num("training.weight_decay", t.weight_decay, 0.1, 0.0, 10.0);
        let warmup = errs.num("training.warmup", t.warmup, 0.1, 0.0, 1.0);
        let end_lr = errs.num("training.end_lr", t.end_lr, 0.1, 0.0, 1.0);
        let max_grad_norm = errs.num("training.max_grad_norm", t.max_grad_norm, 10.0, 1e-12, 1e12);
        let eval_fraction = errs.num("training.eval_fraction", t.eval_fraction, 0.05, 0.0, 0.5);
        let optimizer = match t.optimizer.as_deref() {
            None | Some("adamw") => OptimizerKind::AdamW,
            Some("adafactor") => OptimizerKind::Adafactor,
            Some(other) => {
                errs.add(bad(
                    "training.optimizer",
                    format!("\"{other}\""),
                    "must be adamw or adafactor",
                ));
                OptimizerKind::AdamW
            }
        };

        let o = &self.output;
        let name = o.name.clone().unwrap_or_else(|| {
            dataset
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "softprompt".to_string())
        });
        let version = o.version.clone().unwrap_or_else(|| "1".to_string());
        let stem = match &o.stem {
            Some(s) => {
                let clean = sanitize_stem(s);
                if clean != *s {
                    errs.add(anyhow!(
                        "`output.stem` = \"{s}\": use only letters, digits, '-', '_' and '.' (e.g. \"{clean}\")"
                    ));
                }
                clean
            }
            None => sanitize_stem(&format!("{name}-v{version}")),
        };
        let folder = o
            .folder
            .clone()
            .unwrap_or_else(|| PathBuf::from("softprompts"));
        if let Err(e) = check_writable_dir(&folder) {
            errs.add(e);
        }

        let device = match self.device.device.as_deref() {
            None | Some("auto") => {
                if crate::device::probe_cuda(0).is_ok() {
                    DeviceSpec::Cuda(0)
                } else {
                    DeviceSpec::Cpu
                }
            }
            Some(d) => d.parse().unwrap_or_else(|e: anyhow::Error| {
                errs.add(e.context("`device.device`"));
                DeviceSpec::Cpu
            }),
        };
        let precision = Precision::parse(self.device.precision.as_deref().unwrap_or("auto"))
            .unwrap_or_else(|e| {
                errs.add(e.context("`device.precision`"));
                Precision::Auto
            });
        if let Some(c) = &self.continue_from
            && !c.exists()
        {
            errs.add(anyhow!(
                "`continue_from` = {}: no such file or folder",
                c.display()
            ));
        }
        let sm = &self.samples;
        if sm.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
            errs.add(anyhow!(
                "`samples.prompt` is empty: write the text samples should continue, or remove the key"
            ));
        }
        let sample_every = sm.every.unwrap_or(save_every);
        let sample_tokens = sm.tokens.unwrap_or(40);
        if sample_tokens == 0 || sample_tokens > 1024 {
            errs.add(bad(
                "samples.tokens",
                sample_tokens,
                "must be between 1 and 1024",
            ));
        }
        let sample_temperature = errs.num("samples.temperature", sm.temperature, 0.7, 0.0, 10.0);
        let sample_top_p = sm.top_p.unwrap_or(1.0);
        let sample_repetition_penalty = sm.repetition_penalty.unwrap_or(1.0);
        let greedy = Sampling::greedy(1);
        for (key, value, probe) in [
            (
                "samples.top_p",
                sample_top_p,
                Sampling {
                    top_p: sample_top_p,
                    ..greedy
                },
            ),
            (
                "samples.repetition_penalty",
                sample_repetition_penalty,
                Sampling {
                    repetition_penalty: sample_repetition_penalty,
                    ..greedy
                },
            ),
        ] {
            if let Some((_, what)) = probe.problem() {
                errs.add(bad(key, value, what));
            }
        }
        errs.finish()?;
        Ok(ValidConfig {
            dataset,
            glob,
            unwrap: self.dataset.unwrap.unwrap_or(false),
            starter,
            init,
            soft_tokens,
            supported: o.supported.clone().unwrap_or_else(|| vec![model.clone()]),
            model,
            revision: self.model.revision.clone(),
            tokens_per_sequence: t.tokens_per_sequence,
            batch_size,
            grad_accumulation,
            epochs,
            lr,
            optimizer,
            weight_decay,
            warmup,
            end_lr,
            max_grad_norm,
            seed: t.seed.unwrap_or(1234),
            eval_fraction,
            save_every,
            eval_rows,
            name,
            author: o.author.clone().unwrap_or_default(),
            description: o.description.clone().unwrap_or_default(),
            version,
            folder,
            stem,
            float16: o.float16.unwrap_or(false),
            device,
            precision,
            continue_from: self.continue_from.clone(),
            sample_prompt: sm.prompt.clone(),
            sample_every,
            sample_tokens,
            sample_temperature,
            sample_top_k: sm.top_k.unwrap_or(crate::generate::DEFAULT_TOP_K),
            sample_top_p,
            sample_repetition_penalty,
            sample_repetition_range: sm
                .repetition_range
                .unwrap_or(crate::generate::DEFAULT_REPETITION_RANGE),
        })
    }
}
