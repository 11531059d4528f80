//! The run configuration: the seven steps of the guide as one TOML document.
//!
//! Every field is optional in the file: a profile holds only what the user set, and
//! [`RunConfig::validate`] fills the defaults (those of the KoboldAI tuner, see
//! `shared/anchors.md`) and checks every value. Unknown keys are errors naming the file,
//! line and key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub mod profile;
pub mod validate;

pub use validate::{InitKind, OptimizerKind, ValidConfig};

/// Step 1: the text to learn from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// A text file, or a folder searched recursively.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// File-name pattern inside a folder (default `*.txt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Join the lines of hard-wrapped files (plain-text books broken every ~70 characters)
    /// back into paragraphs (default false; see [`crate::data::unwrap`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwrap: Option<bool>,
}

/// Step 2: the starter prompt the soft tokens are initialised from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    /// Inline starter text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A file holding the starter text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `text`, `vocab_sample` or `random` (default: `text` when a starter is given, else `vocab_sample`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Number of soft tokens (default 80, the KoboldAI tuner's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_tokens: Option<usize>,
}

/// Step 3: the frozen model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face id or local folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Step 4: training parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Text tokens per sequence (default: context length minus soft tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_sequence: Option<usize>,
    /// Sequences per micro-batch (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_accumulation: Option<usize>,
    /// Passes over the training rows; fractions allowed (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// Peak learning rate (default 3e-5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// `adamw` or `adafactor` (default adamw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
    /// Decoupled weight decay (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Fraction of steps spent warming up linearly (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// Final learning rate as a multiple of `lr`, reached by cosine decay (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_lr: Option<f64>,
    /// Global gradient-norm clip (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Seed for initialisation, data order and the held-out split (default 1234).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Fraction of rows held out for evaluation (default 0.05, at least one row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    /// Checkpoint and export every this many optimizer steps (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_every: Option<usize>,
    /// Held-out rows scored at each evaluation (default 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_rows: Option<usize>,
}

/// Step 5: names, version and where the files go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Models the prompt is meant for (default: the model id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Folder for the exports (default `softprompts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    /// File name stem of the exports (default: the name, sanitised, plus the version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stem: Option<String>,
    /// Also write the KoboldAI tensor as float16 (default false: float32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float16: Option<bool>,
}

/// Step 6: where it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// `cpu`, `cuda:N` or `auto` (default: cuda:0 when a GPU is usable, else cpu).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Precision of the frozen weights: auto, f32, bf16, f16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// Sample generations shown on the dashboard while training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesSection {
    /// The text to continue (default: the start of the first held-out sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Generate every this many optimizer steps; 0 turns samples off (default: `save_every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<usize>,
    /// New tokens per sample (default 40).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy (default 0.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Draw among the K most likely tokens (default 40; 0: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Then among the most likely tokens whose probabilities first add up to this
    /// (default 1: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Divides the logits of the recent text's tokens (default 1: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Tokens of recent text the penalty looks at (default 1024; 0: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_range: Option<usize>,
}

/// A whole run configuration (a profile file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "is_default")]
    pub dataset: DatasetSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub prompt: PromptSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub model: ModelSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub training: TrainingSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub output: OutputSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub device: DeviceSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub samples: SamplesSection,
    /// Continue from our checkpoint (full resume), a KoboldAI zip, a PEFT adapter folder
    /// or an npz `.mtjsp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_from: Option<PathBuf>,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

impl RunConfig {
    /// Parses TOML; errors carry line, column and the offending key.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// Reads a file; relative paths inside it are taken relative to the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the configuration", path.display()))?;
        let mut cfg = Self::from_toml(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(base) = path.parent() {
            cfg.rebase(base);
        }
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(x) = p
                && x.is_relative()
            {
                *x = base.join(&*x);
            }
        };
        fix(&mut self.dataset.path);
        fix(&mut self.prompt.file);
        fix(&mut self.output.folder);
        fix(&mut self.continue_from);
        // A model given as a relative folder that exists relative to the file.
        if let Some(id) = &self.model.id {
            let p = base.join(id);
            if Path::new(id).is_relative() && p.is_dir() {
                self.model.id = Some(p.to_string_lossy().into_owned());
            }
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// The `key` = value error helper used by validation.
pub(crate) fn bad(key: &str, value: impl std::fmt::Display, allowed: &str) -> anyhow::Error {
    anyhow::anyhow!("`{key}` = {value}: {allowed}")
}

/// Fails unless `x` is finite and within `[lo, hi]`.
pub(crate) fn check_range(key: &str, x: f64, lo: f64, hi: f64) -> Result<()> {
    if !x.is_finite() || x < lo || x > hi {
        bail!(bad(key, x, &format!("must be between {lo} and {hi}")));
    }
    Ok(())
}
