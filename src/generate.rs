//! `softtune generate`: continues a text with a soft prompt, and with `--compare` without it
//! too (same seed), printing each continuation as it is written: the user's way to try a
//! prompt from the terminal, on the server it was trained on, before loading it into a
//! front-end.
//!
//! Generation is the dashboard's ([`crate::model::generate`]): the prompt's soft tokens, then
//! the text's tokens (no BOS, as in training), each new token drawn from the last position's
//! logits with the repetition penalty, temperature, top-k and top-p given (transformers'
//! order, [`Sampling`]), ending at the model's EOS token. Without a
//! text, the continuation starts after an EOS token: where training saw every file and story
//! begin.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use burn::tensor::Tensor;

use crate::data;
use crate::device::DeviceSpec;
use crate::eval::prompt_tensor;
use crate::model::generate::{Sampling, TextStream, generate_rows};
use crate::model::lm::Precision;
use crate::model::source::{self, HubOptions};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{Weights, dtype_name};
use crate::model::{CausalLm, Kernels, LoadOptions, ModelConfig};
use crate::prompt::{self, SoftPrompt};
use crate::train::checkpoint::Checkpoint;

/// Top-k of the dashboard's samples, and `softtune generate`'s default.
pub const DEFAULT_TOP_K: usize = 40;

/// Tokens of recent text the repetition penalty looks at, unless told (KoboldAI's
/// `rep_pen_range` does the same job).
pub const DEFAULT_REPETITION_RANGE: usize = 1024;

/// Continuations `softtune generate` writes at once, unless told.
pub const DEFAULT_BATCH: usize = 8;

/// What to continue, with what, and how: `softtune generate`'s options (their help is the
/// command's).
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A local model folder or a Hugging Face id.
    #[arg(long, required_unless_present = "run")]
    pub model: Option<String>,
    /// Soft prompt: a KoboldAI .zip, a PEFT adapter folder, an .mtjsp or an mkultra .json.
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// A detached run (id, unique prefix or folder; see `softtune runs`): its model, device
    /// and precision, and the prompt of its latest checkpoint, also while it trains.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["model", "prompt"])]
    pub run: Option<String>,
    /// The text to continue, printed before its continuation.
    pub text: Option<String>,
    /// Continue the text of this file instead (a text file, EPUB, .docx, …); only the
    /// continuation is printed.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// New tokens per continuation, at most (it ends earlier at the end-of-text token).
    #[arg(long, default_value_t = 100)]
    pub tokens: usize,
    /// 0 always takes the most likely token; higher is more varied.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Draw only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    pub top_k: usize,
    /// Then draw only among the most likely tokens whose probabilities first add up to P
    /// (1: all; 0.9 is usual).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Make the tokens of the recent text less likely: their logits are divided by this
    /// (1: off; 1.1 to 1.3 is usual, as KoboldAI's rep_pen). Small models loop without it.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// How many of the last tokens of the text and its continuation the penalty looks at
    /// (0: all).
    #[arg(long, default_value_t = DEFAULT_REPETITION_RANGE)]
    pub repetition_range: usize,
    /// Seed of the draw (default: from the clock; printed, so a continuation can be
    /// written again). Further samples take the following seeds.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of continuations.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Continuations written at once (a batch): on a GPU several cost little more than
    /// one; each needs memory for its key/value cache. Each is printed whole in turn, the
    /// first as it grows.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Also continue without the prompt, with the same seed, to compare.
    #[arg(long)]
    pub compare: bool,
    /// Write a story with the model, the model loaded once: each line typed is added to
    /// the story and continued (an empty line continues it as it is; /retry, /new, /help;
    /// Ctrl-D ends). A TEXT or --file starts the story.
    #[arg(long, short = 'i', conflicts_with = "compare")]
    pub interactive: bool,
    /// cpu or cuda:N (default: the run's with --run, else cpu).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Precision of the frozen weights: auto (f32 on CPU, the checkpoint's bf16/f16 on
    /// GPU), f32, bf16, f16 (default: the run's with --run, else auto).
    #[arg(long, value_parser = Precision::parse)]
    pub precision: Option<Precision>,
    /// Where the model comes from (the command line's hub options).
    #[arg(skip)]
    pub hub: HubOptions,
}

/// The model and prompt to continue with: given, or a run's.
struct Source {
    model: String,
    hub: HubOptions,
    /// A run's prompt, and how stderr names it.
    prompt: Option<(SoftPrompt, String)>,
    device: DeviceSpec,
    precision: Precision,
}

/// The model and prompt of `args`, or of the run it names: the run's model (and revision),
/// device and precision, and the prompt of its latest checkpoint (float32, as trained).
fn source(args: &GenerateArgs) -> Result<Source> {
    let Some(run) = &args.run else {
        let Some(model) = args.model.clone() else {
            bail!("give --model MODEL (or --run RUN for a run's model and prompt)");
        };
        return Ok(Source {
            model,
            hub: args.hub.clone(),
            prompt: None,
            device: args.device.unwrap_or_default(),
            precision: args.precision.unwrap_or(Precision::Auto),
        });
    };
    if args.model.is_some() || args.prompt.is_some() {
        bail!("--run takes the run's model and prompt: give --run, or --model and --prompt");
    }
    let info = crate::runs::find(Some(run))?;
    let config = info.dir.join(crate::runs::CONFIG_FILE);
    let cfg = crate::config::RunConfig::from_file(&config)?
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", config.display()))?;
    let checkpoint = info
        .state
        .checkpoint
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| info.dir.join("checkpoint.safetensors"));
    if !checkpoint.is_file() {
        bail!(
            "run {} has no checkpoint yet (it writes one every {} steps and is at step {}): try again later, or give --model and --prompt",
            info.id,
            cfg.save_every,
            info.state.step
        );
    }
    let c = Checkpoint::load(&checkpoint)?;
    let mut hub = args.hub.clone();
    if hub.revision.is_none() {
        hub.revision = cfg.revision.clone();
    }
    Ok(Source {
        model: cfg.model.clone(),
        hub,
        prompt: Some((
            SoftPrompt::new(c.rows, c.dim, c.prompt)?,
            format!(
                "run {} at step {} of {} ({} soft tokens)",
                info.id, c.step, c.total_steps, c.rows
            ),
        )),
        device: args.device.unwrap_or(cfg.device),
        precision: args.precision.unwrap_or(cfg.precision),
    })
}

/// Checks the arguments that need no file.
fn check(args: &GenerateArgs) -> Result<()> {
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1 (continuations written at once)");
    }
    if let Some((setting, what)) = sampling(args, 0).problem() {
        let (flag, value) = match setting {
            "temperature" => ("--temperature", args.temperature),
            "top_p" => ("--top-p", args.top_p),
            _ => ("--repetition-penalty", args.repetition_penalty),
        };
        bail!("{flag} {value}: {what}");
    }
    if args.text.is_some() && args.file.is_some() {
        bail!("give the text to continue or --file, not both");
    }
    if args.interactive && args.compare {
        bail!("--interactive writes one story, with the prompt: leave out --compare");
    }
    if args.interactive && args.samples > 1 {
        bail!(
            "--interactive writes one continuation at a time (/retry writes another): leave out --samples"
        );
    }
    if args.compare && args.prompt.is_none() && args.run.is_none() {
        bail!(
            "--compare compares a prompt's continuation with the model's alone: give --prompt (or --run)"
        );
    }
    Ok(())
}

/// How `args` draws tokens, from `seed`.
fn sampling(args: &GenerateArgs, seed: u64) -> Sampling {
    Sampling {
        max_new: args.tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        repetition_range: args.repetition_range,
        seed,
    }
}

/// `sampling`'s settings as the log line names them: those not at their defaults beyond
/// the temperature and top-k.
fn describe(s: &Sampling) -> String {
    let mut out = format!("temperature {}, top-k {}", s.temperature, s.top_k);
    if s.top_p < 1.0 {
        out += &format!(", top-p {}", s.top_p);
    }
    if s.repetition_penalty != 1.0 {
        out += &format!(", repetition penalty {} over ", s.repetition_penalty);
        out += &match s.repetition_range {
            0 => "the whole text".to_string(),
            r => format!("the last {r} tokens"),
        };
    }
    out
}

/// The tokens to continue: the text's, the file's, or an EOS token (a new text).
fn context(args: &GenerateArgs, tok: &Tokenizer, cfg: &ModelConfig) -> Result<Vec<u32>> {
    let ids = match (&args.text, &args.file) {
        (Some(text), _) => tok.encode(text)?,
        (None, Some(file)) => {
            let ids = tok.encode(&data::read_dataset_text(file, false)?.text)?;
            if ids.is_empty() {
                bail!(
                    "{}: the file holds no text to continue; give another file, or no text to start a new one",
                    file.display()
                );
            }
            ids
        }
        (None, None) => Vec::new(),
    };
    if !ids.is_empty() {
        return Ok(ids);
    }
    match tok.eos_id(cfg) {
        Some(eos) => Ok(vec![eos]),
        None => bail!(
            "the model names no end-of-text token to start a new text after (eos_token_id in config.json); give a text to continue"
        ),
    }
}

/// Writes the continuations to `out` as they grow, and what is being done to `log`;
/// `--interactive` reads the story's lines from `input`.
pub fn run(
    args: &GenerateArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    log: &mut dyn Write,
) -> Result<()> {
    check(args)?;
    let src = source(args)?;
    let files = source::resolve(&src.model, &src.hub)?;
    let config = ModelConfig::from_file(&files.config)?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer_path()?)?;
    tokenizer.check_fits(config.vocab_size)?;
    let (soft, prompt_label) = match (&args.prompt, src.prompt) {
        (Some(path), _) => {
            let p = prompt::load_for_model(path, &config)?;
            let label = format!("prompt {} ({} soft tokens)", path.display(), p.rows);
            (Some(p), label)
        }
        (None, Some((p, label))) => {
            if p.dim != config.d_embed {
                bail!(
                    "the run's checkpoint holds a prompt {} wide, but {} embeds tokens {} wide",
                    p.dim,
                    files.id,
                    config.d_embed
                );
            }
            (Some(p), label)
        }
        (None, None) => (None, "no prompt".to_string()),
    };
    let n_soft = soft.as_ref().map_or(0, |p| p.rows);
    let ctx = config.context_length();
    if n_soft + 1 >= ctx {
        bail!(
            "the prompt has {n_soft} soft tokens, which leave no room in the model's context of {ctx} tokens"
        );
    }
    let context = context(args, &tokenizer, &config)?;
    let seed = args.seed.unwrap_or_else(clock_seed);
    let weights = Weights::open(&files.weights)?;
    let device = src.device;
    let dtype = src
        .precision
        .resolve(device.is_gpu(), weights.stored_dtype());
    writeln!(
        log,
        "{} on {device} ({}), {prompt_label}; {}; up to {} new tokens, {}, seed {seed}",
        files.id,
        dtype_name(dtype),
        match (&args.text, &args.file) {
            (None, None) => "a new text".to_string(),
            _ => format!("{} tokens of text", context.len()),
        },
        args.tokens,
        describe(&sampling(args, seed)),
    )?;
    let echo = args.text.as_deref().unwrap_or("");
    let stop: Vec<u32> = tokenizer.eos_id(&config).into_iter().collect();
    let many = args.samples > 1 || args.compare;
    crate::with_backend!(device, |B, dev| {
        let model = CausalLm::<B>::load(&config, &weights, &dev, LoadOptions { dtype })?;
        drop(weights);
        let p = soft
            .as_ref()
            .map(|s| prompt_tensor::<B>(&s.data, s.rows, s.dim, &dev));
        let start = Instant::now();
        let mut tokens = 0;
        let writer = Writer {
            model: &model,
            tokenizer: &tokenizer,
            context_len: ctx,
            stop: &stop,
        };
        if args.interactive {
            let story = Story {
                text: match (&args.text, &args.file) {
                    (Some(text), _) => text.clone(),
                    (None, Some(_)) => tokenizer.decode(&context)?,
                    (None, None) => String::new(),
                },
                started: args.text.is_some() || args.file.is_some(),
            };
            tokens = story.write(&writer, p.as_ref(), args, seed, input, out, log)?;
        } else {
            let runs: &[bool] = if args.compare {
                &[true, false]
            } else {
                &[true]
            };
            // Printed in this order: each sample with the prompt, then (--compare) without.
            let mut slots = Vec::new();
            for i in 0..args.samples {
                for &with in runs {
                    let mut head = String::new();
                    if many {
                        let mut which = Vec::new();
                        if args.samples > 1 {
                            which.push(format!("sample {} of {}", i + 1, args.samples));
                        }
                        if p.is_some() {
                            which.push(
                                if with {
                                    "with the prompt"
                                } else {
                                    "without a prompt"
                                }
                                .into(),
                            );
                        }
                        which.push(format!("seed {}", seed.wrapping_add(i as u64)));
                        if !slots.is_empty() {
                            head.push('\n');
                        }
                        head += &format!("--- {} ---\n", which.join(", "));
                    }
                    slots.push(head + echo);
                }
            }
            let mut printer = InTurn::new(slots, out, log)?;
            for (w, &with) in runs.iter().enumerate() {
                let prompt = if with { p.as_ref() } else { None };
                let all: Vec<usize> = (0..args.samples).collect();
                for batch in all.chunks(args.batch) {
                    let rows: Vec<Sampling> = batch
                        .iter()
                        .map(|&i| sampling(args, seed.wrapping_add(i as u64)))
                        .collect();
                    let slot = |r: usize| batch[r] * runs.len() + w;
                    tokens += writer
                        .write_rows(prompt, &context, &rows, &mut printer, slot)?
                        .0;
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        writeln!(
            log,
            "{tokens} new tokens in {seconds:.1} s ({:.1} tokens/s); --seed {seed} writes the same again",
            tokens as f64 / seconds.max(1e-9)
        )?;
        Ok(())
    })
}

/// What continuations are written with: the model, its tokenizer and context.
struct Writer<'a, B: Kernels> {
    model: &'a CausalLm<B>,
    tokenizer: &'a Tokenizer,
    context_len: usize,
    stop: &'a [u32],
}

impl<B: Kernels> Writer<'_, B> {
    /// Writes one continuation of `context` to `out` as it grows, then a line end; says on
    /// `log` when the model ended the text early. Returns its new tokens and its text.
    fn write(
        &self,
        prompt: Option<&Tensor<B, 2>>,
        context: &[u32],
        sampling: &Sampling,
        out: &mut dyn Write,
        log: &mut dyn Write,
    ) -> Result<(usize, String)> {
        let mut printer = InTurn::new(vec![String::new()], out, log)?;
        let rows = std::slice::from_ref(sampling);
        let (tokens, mut texts) = self.write_rows(prompt, context, rows, &mut printer, |_| 0)?;
        Ok((tokens, texts.pop().unwrap_or_default()))
    }

    /// Writes the continuations `rows` of `context` together, through `printer` (each then
    /// a line end, and a note when the model ended it early): row `r` as its slot
    /// `slot(r)`. Returns their new tokens, and their texts.
    fn write_rows(
        &self,
        prompt: Option<&Tensor<B, 2>>,
        context: &[u32],
        rows: &[Sampling],
        printer: &mut InTurn,
        slot: impl Fn(usize) -> usize,
    ) -> Result<(usize, Vec<String>)> {
        let mut streams = Vec::with_capacity(rows.len());
        for _ in rows {
            streams.push(TextStream::new(self.tokenizer, context)?);
        }
        let mut texts = vec![String::new(); rows.len()];
        let ids = generate_rows(
            self.model,
            prompt,
            context,
            self.tokenizer.id_bound(),
            self.context_len,
            self.stop,
            rows,
            |r, id| {
                let piece = streams[r].push(id)?;
                texts[r] += &piece;
                printer.push(slot(r), &piece)
            },
        )?;
        let mut tokens = 0;
        for (r, (ids, stream)) in ids.iter().zip(&mut streams).enumerate() {
            let rest = stream.finish()?;
            texts[r] += &rest;
            printer.push(slot(r), &(rest + "\n"))?;
            let note = (ids.len() < rows[r].max_new)
                .then(|| format!("(the model ended the text after {} new tokens)", ids.len()));
            printer.finish(slot(r), note)?;
            tokens += ids.len();
        }
        Ok((tokens, texts))
    }
}

/// Continuations written together but printed one after another, in their order: the
/// first unfinished one is printed as it grows, the others wait in memory for their turn.
struct InTurn<'o> {
    out: &'o mut dyn Write,
    log: &'o mut dyn Write,
    /// Per continuation: its text not yet printed, whether it is written, and what to say
    /// on `log` after it.
    slots: Vec<(String, bool, Option<String>)>,
    /// The continuation being printed.
    next: usize,
}

impl<'o> InTurn<'o> {
    /// Continuations starting with `starts` (their headings); the first is printed at once.
    fn new(starts: Vec<String>, out: &'o mut dyn Write, log: &'o mut dyn Write) -> Result<Self> {
        let mut printer = InTurn {
            out,
            log,
            slots: starts.into_iter().map(|s| (s, false, None)).collect(),
            next: 0,
        };
        printer.print_due()?;
        Ok(printer)
    }

    /// More text of continuation `slot`.
    fn push(&mut self, slot: usize, text: &str) -> Result<()> {
        if slot == self.next {
            self.out.write_all(text.as_bytes())?;
            self.out.flush()?;
        } else {
            self.slots[slot].0 += text;
        }
        Ok(())
    }

    /// Continuation `slot` is written; `note` goes to the log after it.
    fn finish(&mut self, slot: usize, note: Option<String>) -> Result<()> {
        self.slots[slot].1 = true;
        self.slots[slot].2 = note;
        self.print_due()
    }

    /// Prints what waits, in order, up to the first continuation not yet written.
    fn print_due(&mut self) -> Result<()> {
        while let Some((text, done, note)) = self.slots.get_mut(self.next) {
            self.out.write_all(std::mem::take(text).as_bytes())?;
            if !*done {
                break;
            }
            if let Some(note) = note.take() {
                writeln!(self.log, "{note}")?;
            }
            self.next += 1;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// What `--interactive` says its commands do.
const STORY_HELP: &str = "Type text and press Enter: it is added to the story, which is then continued (\\n in it starts a new line). \
Enter alone continues the story as it is. /retry writes another continuation in place of the last, /new starts a new story, \
/save FILE writes the story to FILE, /set shows the settings and /set NAME VALUE changes one (tokens, temperature, top-k, top-p, repetition-penalty, repetition-range), /quit or Ctrl-D ends.";

/// `/set` in `--interactive`: with no arguments, `s`'s settings; with `NAME VALUE`, changes
/// that setting (named as its flag, without `--`; KoboldAI's `temp`, `rep_pen` and
/// `rep_pen_range` too) if the value is valid. Returns what to tell the user.
fn set(s: &mut Sampling, what: &str) -> String {
    let words: Vec<&str> = what.split_whitespace().collect();
    let (name, value) = match words[..] {
        [] => return format!("tokens {}, {}", s.max_new, describe_all(s)),
        [name] => return format!("/set {name} VALUE: give the new value"),
        [name, value] => (name.trim_start_matches("--").replace('_', "-"), value),
        _ => return "/set NAME VALUE: one setting at a time".to_string(),
    };
    let mut new = *s;
    let bad = |what: &str| format!("{name} {value}: {what}; the setting is unchanged");
    let whole = |least: usize| match value.parse::<usize>() {
        Ok(v) if v >= least => Ok(v),
        _ => Err(bad(&format!("use a whole number from {least}"))),
    };
    let number = || value.parse::<f64>().map_err(|_| bad("use a number"));
    let parsed = match name.as_str() {
        "tokens" => whole(1).map(|v| new.max_new = v),
        "temperature" | "temp" => number().map(|v| new.temperature = v),
        "top-k" => whole(0).map(|v| new.top_k = v),
        "top-p" => number().map(|v| new.top_p = v),
        "repetition-penalty" | "rep-pen" => number().map(|v| new.repetition_penalty = v),
        "repetition-range" | "rep-pen-range" => whole(0).map(|v| new.repetition_range = v),
        _ => {
            return format!(
                "no setting {name}: tokens, temperature, top-k, top-p, repetition-penalty, repetition-range"
            );
        }
    };
    if let Err(message) = parsed {
        return message;
    }
    if let Some((_, what)) = new.problem() {
        return bad(what);
    }
    *s = new;
    format!("now: tokens {}, {}", s.max_new, describe_all(s))
}

/// Every drawing setting of `s`, as `/set` shows them.
fn describe_all(s: &Sampling) -> String {
    let range = match s.repetition_range {
        0 => "all".to_string(),
        r => r.to_string(),
    };
    format!(
        "temperature {}, top-k {}, top-p {}, repetition-penalty {}, repetition-range {range}",
        s.temperature, s.top_k, s.top_p, s.repetition_penalty
    )
}

/// `--interactive`'s story: the text so far (what was typed and the continuations).
struct Story {
    text: String,
    /// Whether a TEXT or --file started it (then it is continued at once).
    started: bool,
}

impl Story {
    /// Adds typed text: `\n` in it is a line end, and a space goes between words that would
    /// otherwise run together (not before closing punctuation; quotes may open, so they get
    /// one).
    fn add(&mut self, typed: &str) {
        let typed = typed.replace("\\n", "\n");
        let joins = |c: char| c.is_whitespace() || ",.;:!?)]}’”…".contains(c);
        if self.text.chars().last().is_some_and(|c| !c.is_whitespace())
            && typed.chars().next().is_some_and(|c| !joins(c))
        {
            self.text.push(' ');
        }
        self.text += &typed;
    }

    /// Reads lines from `input` and writes continuations until the input ends or /quit;
    /// returns the new tokens written. Each continuation takes the next seed.
    #[allow(clippy::too_many_arguments)]
    fn write<B: Kernels>(
        mut self,
        writer: &Writer<'_, B>,
        prompt: Option<&Tensor<B, 2>>,
        args: &GenerateArgs,
        seed: u64,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
        log: &mut dyn Write,
    ) -> Result<usize> {
        writeln!(log, "{STORY_HELP}")?;
        let mut tokens = 0;
        let mut settings = sampling(args, seed);
        let mut next_seed = seed;
        // Where the story stood before the last continuation (for /retry).
        let mut before_last: Option<usize> = None;
        let mut continue_now = self.started;
        if self.started && args.text.is_some() {
            write!(out, "{}", self.text)?;
        }
        loop {
            if continue_now {
                let context = match writer.tokenizer.encode(&self.text)? {
                    ids if !ids.is_empty() => ids,
                    // A new story starts after an end-of-text token, as a new text does.
                    _ => match writer.stop.first() {
                        Some(&eos) => vec![eos],
                        None => bail!(
                            "the model names no end-of-text token to start a new story after (eos_token_id in config.json); type its first words"
                        ),
                    },
                };
                let sampling = Sampling {
                    seed: next_seed,
                    ..settings
                };
                next_seed = next_seed.wrapping_add(1);
                before_last = Some(self.text.len());
                let (n, text) = writer.write(prompt, &context, &sampling, out, log)?;
                tokens += n;
                self.text += &text;
            }
            continue_now = false;
            write!(log, "> ")?;
            log.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                writeln!(log)?;
                break;
            }
            let line = line.trim_end_matches(['\n', '\r']);
            match line.trim() {
                "/quit" | "/exit" => break,
                "/help" => writeln!(log, "{STORY_HELP}")?,
                "/new" => {
                    self.text.clear();
                    before_last = None;
                    writeln!(
                        log,
                        "(a new story: type its first words, or Enter to let the model start one)"
                    )?;
                }
                "/retry" => match before_last {
                    Some(at) => {
                        self.text.truncate(at);
                        continue_now = true;
                    }
                    None => writeln!(log, "(nothing to retry yet)")?,
                },
                cmd if cmd.starts_with("/save") && cmd[5..].starts_with([' ', '\t']) => {
                    let path = std::path::Path::new(cmd[5..].trim());
                    match crate::export::write_atomic(path, self.text.as_bytes()) {
                        Ok(()) => writeln!(
                            log,
                            "(the story, {} characters, is in {})",
                            self.text.chars().count(),
                            path.display()
                        )?,
                        Err(e) => writeln!(log, "({e:#})")?,
                    }
                }
                "/save" => writeln!(log, "(/save FILE: name the file to write the story to)")?,
                cmd if cmd == "/set" || cmd.starts_with("/set ") || cmd.starts_with("/set\t") => {
                    writeln!(log, "({})", set(&mut settings, &cmd[4..]))?
                }
                cmd if cmd.starts_with('/') && !cmd.contains(' ') => {
                    writeln!(log, "(no command {cmd}; /help lists them)")?
                }
                "" => continue_now = true,
                _ => {
                    self.add(line);
                    continue_now = true;
                }
            }
        }
        Ok(tokens)
    }
}

/// A seed from the clock, small enough to type back.
fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos % 1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GenerateArgs {
        GenerateArgs {
            model: Some("unused".into()),
            prompt: None,
            run: None,
            text: None,
            file: None,
            tokens: 10,
            temperature: 0.7,
            top_k: 40,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_range: DEFAULT_REPETITION_RANGE,
            seed: None,
            samples: 1,
            batch: DEFAULT_BATCH,
            compare: false,
            interactive: false,
            device: None,
            precision: None,
            hub: HubOptions::default(),
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let err = |a: GenerateArgs| check(&a).unwrap_err().to_string();
        assert!(check(&args()).is_ok());
        assert!(
            err(GenerateArgs {
                tokens: 0,
                ..args()
            })
            .contains("--tokens")
        );
        assert!(
            err(GenerateArgs {
                samples: 0,
                ..args()
            })
            .contains("--samples")
        );
        assert!(err(GenerateArgs { batch: 0, ..args() }).starts_with("--batch "));
        for t in [-0.1, f64::NAN, f64::INFINITY] {
            assert!(
                err(GenerateArgs {
                    temperature: t,
                    ..args()
                })
                .contains("--temperature")
            );
        }
        for p in [0.0, 1.01, f64::NAN] {
            assert!(err(GenerateArgs { top_p: p, ..args() }).starts_with("--top-p "));
        }
        for p in [0.0, -1.0, 20.0] {
            assert!(
                err(GenerateArgs {
                    repetition_penalty: p,
                    ..args()
                })
                .starts_with("--repetition-penalty ")
            );
        }
        assert!(
            check(&GenerateArgs {
                top_p: 0.9,
                repetition_penalty: 1.1,
                ..args()
            })
            .is_ok()
        );
        let both = GenerateArgs {
            text: Some("x".into()),
            file: Some("f.txt".into()),
            ..args()
        };
        assert!(err(both).contains("--file"));
        assert!(
            err(GenerateArgs {
                compare: true,
                ..args()
            })
            .contains("--prompt")
        );
    }

    #[test]
    fn typed_text_joins_the_story_as_written() {
        let mut story = Story {
            text: String::new(),
            started: false,
        };
        story.add("The rain");
        assert_eq!(story.text, "The rain");
        story.add("fell");
        story.add(", and fell.");
        story.add("\\n\\n\"Again,\" she said");
        story.add("\"Yes.\"");
        assert_eq!(
            story.text,
            "The rain fell, and fell.\n\n\"Again,\" she said \"Yes.\""
        );
        story.text += " ";
        story.add("No");
        assert_eq!(story.text.matches("  ").count(), 0, "{:?}", story.text);
    }

    #[test]
    fn set_changes_one_setting_or_says_why_not() {
        let mut s = sampling(&args(), 7);
        let before = s;
        assert!(set(&mut s, "").starts_with("tokens 10, temperature 0.7, top-k 40, top-p 1, "));
        assert_eq!(s, before);
        assert!(set(&mut s, "temp 1.2").starts_with("now: tokens 10, temperature 1.2, "));
        set(&mut s, "--top_p 0.9");
        set(&mut s, "rep_pen 1.2");
        set(&mut s, "rep-pen-range 0");
        set(&mut s, "tokens 3");
        set(&mut s, "top-k 0");
        let want = Sampling {
            max_new: 3,
            temperature: 1.2,
            top_k: 0,
            top_p: 0.9,
            repetition_penalty: 1.2,
            repetition_range: 0,
            seed: 7,
        };
        assert_eq!(s, want);
        assert!(set(&mut s, "").ends_with("repetition-range all"));
        // Bad values and names change nothing.
        for (what, says) in [
            ("tokens 0", "tokens 0: use a whole number from 1"),
            ("top-k -1", "top-k -1: use a whole number from 0"),
            ("temperature warm", "temperature warm: use a number"),
            ("temperature -1", "temperature -1: use a number from 0"),
            ("top-p 1.5", "top-p 1.5: use a number above 0 and at most 1"),
            (
                "repetition-penalty 0",
                "repetition-penalty 0: use a number above 0",
            ),
            ("top-p", "/set top-p VALUE"),
            (
                "top-p 0.5 top-k 3",
                "/set NAME VALUE: one setting at a time",
            ),
            ("heat 3", "no setting heat: tokens, temperature"),
        ] {
            let told = set(&mut s, what);
            assert!(told.starts_with(says), "{what}: {told}");
            assert_eq!(s, want, "{what}");
        }
    }

    #[test]
    fn interactive_takes_one_story_at_a_time() {
        let err = |a: GenerateArgs| check(&a).unwrap_err().to_string();
        let i = || GenerateArgs {
            interactive: true,
            ..args()
        };
        assert!(check(&i()).is_ok());
        assert!(err(GenerateArgs { samples: 2, ..i() }).contains("--samples"));
        assert!(
            err(GenerateArgs {
                compare: true,
                ..i()
            })
            .contains("--compare")
        );
    }
}
