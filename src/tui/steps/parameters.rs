//! Step 4: training parameters, with what they add up to.

use super::{FieldDef, Report, parse_f64, parse_usize};
use burn::tensor::DType;

use crate::inspect::{human_bytes, human_count};
use crate::model::lm::Precision;
use crate::model::memory::{self, RunShape, TrainingMemory};
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "prompt.soft_tokens",
        label: "Soft tokens",
        help: "Length of the soft prompt; ↑/↓ picks 20 40 60 80 (default 80)",
        choices: &["20", "40", "60", "80"],
        lines: 1,
    },
    FieldDef {
        key: "training.tokens_per_sequence",
        label: "Tokens per sequence",
        help: "Text tokens per training sequence (default: context minus soft tokens; lower it to fit memory)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "training.batch_size",
        label: "Batch size",
        help: "Sequences per forward pass (default 1; raise it if memory allows)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "training.grad_accumulation",
        label: "Accumulation",
        help: "Batches per optimizer step (default 16)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "training.epochs",
        label: "Epochs",
        help: "Passes over the data; fractions allowed (default 1)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "training.lr",
        label: "Learning rate",
        help: "Peak learning rate (default 3e-5; short runs often use 3e-2 to 3e-1)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "training.optimizer",
        label: "Optimizer",
        help: "adamw (default) or adafactor (less memory); ↑/↓ to switch",
        choices: &["adamw", "adafactor"],
        lines: 1,
    },
    FieldDef {
        key: "samples.every",
        label: "Sample every",
        help: "Steps between the dashboard's samples, with vs without the prompt (default: each checkpoint; 0: off)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "samples.prompt",
        label: "Sample text",
        help: "Text the samples continue, e.g. a first line in your style (default: a held-out passage)",
        choices: &[],
        lines: 1,
    },
];

/// Rough tokens per byte of English text, for estimates before tokenizing.
const BYTES_PER_TOKEN: f64 = 4.0;

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let soft = parse_usize(&mut r, app, "prompt.soft_tokens");
    if let Some(s) = soft
        && s >= 2048
    {
        r.error(
            "prompt.soft_tokens",
            "must be below 2048 (KoboldAI refuses more)",
        );
    }
    let len = parse_usize(&mut r, app, "training.tokens_per_sequence");
    if len == Some(1) {
        r.error("training.tokens_per_sequence", "must be at least 2");
    }
    let batch = parse_usize(&mut r, app, "training.batch_size").unwrap_or(1);
    let accum = parse_usize(&mut r, app, "training.grad_accumulation").unwrap_or(16);
    let epochs = parse_f64(&mut r, app, "training.epochs").unwrap_or(1.0);
    if let Some(lr) = parse_f64(&mut r, app, "training.lr")
        && lr > 10.0
    {
        r.error("training.lr", "must be at most 10");
    }
    let every = app.value("samples.every").trim();
    if !every.is_empty() && every.parse::<usize>().is_err() {
        r.error(
            "samples.every",
            format!("\"{every}\" is not a whole number (0 turns samples off)"),
        );
    }
    match app.value("training.optimizer").trim() {
        "" | "adamw" | "adafactor" => {}
        o => r.error(
            "training.optimizer",
            format!("\"{o}\": use adamw or adafactor"),
        ),
    }
    let soft = soft.unwrap_or(80);
    let model = app.model_info().and_then(|m| m.as_ref().ok());
    let Some(m) = model else {
        r.info("steps, tokens and memory are shown once the model (step 3) is known");
        return r;
    };
    if soft >= m.context {
        r.error(
            "prompt.soft_tokens",
            format!("does not fit the model's context of {} tokens", m.context),
        );
        return r;
    }
    let len = len.unwrap_or(m.context - soft);
    if len + soft > m.context {
        r.error(
            "training.tokens_per_sequence",
            format!(
                "{len} + {soft} soft tokens exceeds the context of {}; use {} or less",
                m.context,
                m.context - soft
            ),
        );
        return r;
    }
    r.info(format!(
        "each sequence: {soft} soft + {len} text tokens; {} sequences per optimizer step",
        batch * accum
    ));
    if let Some(Ok(d)) = app.dataset_info() {
        let (per_token, how) = match app.bytes_per_token() {
            Some(b) => (
                b,
                format!("{b:.2} bytes per token, measured with the model's tokenizer"),
            ),
            None => (
                BYTES_PER_TOKEN,
                "estimated at 4 bytes per token".to_string(),
            ),
        };
        let tokens = d.bytes as f64 / per_token;
        let rows = (tokens / (len + 1) as f64).floor() as usize;
        let train = rows.saturating_sub((rows as f64 * 0.05).ceil().max(1.0) as usize);
        let steps = ((epochs * train as f64) as usize / (batch * accum)).max(1);
        if train < batch * accum {
            r.warn(format!(
                "about {train} training sequences: fewer than one optimizer step needs ({})",
                batch * accum
            ));
        }
        r.info(format!(
            "about {} optimizer steps, {} tokens seen ({how})",
            steps,
            human_count(steps * batch * accum * len)
        ));
    } else {
        r.info("steps and tokens seen are shown once the dataset (step 1) is known");
    }
    if let Some(est) = memory_estimate(app, batch) {
        let m = est.memory;
        let runtime = if m.runtime > 0 {
            format!(", CUDA {}", human_bytes(m.runtime as usize))
        } else {
            String::new()
        };
        r.info(format!(
            "{} memory, {}: {} (weights {}{}, activations {}{runtime})",
            est.place,
            crate::model::weights::dtype_name(est.dtype),
            human_bytes(m.total() as usize),
            human_bytes(m.weights as usize),
            if est.counted { "" } else { " from config.json" },
            human_bytes(m.activations() as usize),
        ));
    }
    r
}

/// The configured run's memory needs ([`crate::model::memory`]) at `batch` sequences per
/// micro-batch, where it will run (step 6's device; auto: the first GPU, else the CPU) and
/// in the dtype step 6's precision gives it.
pub struct MemoryEstimate {
    pub memory: TrainingMemory,
    pub dtype: DType,
    /// "GPU" or "CPU".
    pub place: &'static str,
    /// False when the weights are not downloaded: their count comes from config.json.
    pub counted: bool,
}

pub fn memory_estimate(app: &App, batch: usize) -> Option<MemoryEstimate> {
    let m = app.model_info().and_then(|m| m.as_ref().ok())?;
    let num = |k: &str| -> Option<usize> {
        match app.value(k).trim() {
            "" => None,
            v => v.parse().ok(),
        }
    };
    let soft = num("prompt.soft_tokens").unwrap_or(80);
    let text = num("training.tokens_per_sequence").unwrap_or(m.context.saturating_sub(soft));
    let gpu = match app.value("device.device").trim() {
        "" | "auto" => app.gpus().is_some_and(|g| !g.is_empty()),
        d => d.starts_with("cuda"),
    };
    let precision = match app.value("device.precision").trim() {
        "" => Precision::Auto,
        p => Precision::parse(p).unwrap_or_default(),
    };
    let stored = m.stored_dtype.or_else(|| memory::stated_dtype(&m.config));
    let dtype = precision.resolve(gpu, stored);
    let parameters = m
        .parameters
        .unwrap_or_else(|| memory::parameter_count(&m.config));
    let run = RunShape {
        batch: batch.max(1),
        soft,
        text,
        dtype,
        gpu,
    };
    Some(MemoryEstimate {
        memory: memory::training_memory(&m.config, parameters, run),
        dtype,
        place: if gpu { "GPU" } else { "CPU" },
        counted: m.parameters.is_some(),
    })
}
