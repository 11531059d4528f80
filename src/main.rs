//! The `softtune` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use softtune::device::DeviceSpec;
use softtune::eval::{self, EvalArgs};
use softtune::inspect;
use softtune::model::lm::Precision;
use softtune::model::source::HubOptions;

#[derive(Parser)]
#[command(
    name = "softtune",
    version,
    about = "Train soft prompts for Hugging Face causal language models",
    long_about = "Train soft prompts (prompt tuning) for Hugging Face causal language models on an NVIDIA GPU or the CPU, and save them as KoboldAI soft prompts and PEFT adapters."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the model comes from (shared by every command that loads one).
#[derive(clap::Args)]
struct HubArgs {
    /// Hub revision (branch, tag or commit) when MODEL is a Hugging Face id.
    #[arg(long)]
    revision: Option<String>,
    /// Read only the local Hugging Face cache (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

impl HubArgs {
    fn options(&self) -> HubOptions {
        let mut o = HubOptions::from_env();
        o.offline |= self.offline;
        if self.revision.is_some() {
            o.revision = self.revision.clone();
        }
        o
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, size, embedding width, vocabulary, context and memory.
    Inspect {
        /// A local model folder or a Hugging Face id (e.g. EleutherAI/pythia-160m).
        model: String,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Mean next-token loss and perplexity of a text, without and with a soft prompt.
    Eval {
        /// A local model folder or a Hugging Face id.
        #[arg(long)]
        model: String,
        /// UTF-8 text file to score, or a .u32 token file (a run's heldout.u32).
        #[arg(long)]
        text: PathBuf,
        /// Soft prompt: a KoboldAI .zip, a PEFT adapter folder, or an npz .mtjsp.
        #[arg(long)]
        prompt: Option<PathBuf>,
        /// Tokens per block (default: the context length minus the soft tokens, at most 1024).
        #[arg(long)]
        block_size: Option<usize>,
        /// Score at most this many blocks.
        #[arg(long)]
        max_blocks: Option<usize>,
        /// Blocks per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// Precision of the frozen weights: auto (f32 on CPU, the checkpoint's bf16/f16 on GPU), f32, bf16, f16.
        #[arg(long, default_value = "auto", value_parser = Precision::parse)]
        precision: Precision,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Train a soft prompt from a run configuration (TOML) or a saved profile, without a terminal UI.
    Train {
        /// Run configuration file (TOML).
        #[arg(long, conflicts_with = "profile", required_unless_present = "profile")]
        config: Option<PathBuf>,
        /// Name of a saved profile (see `softtune profiles`).
        #[arg(long)]
        profile: Option<String>,
        /// Run folder for events.jsonl, the token cache and the checkpoint
        /// (default: <output folder>/<stem>-run).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// List saved profiles.
    Profiles,
    /// Time full training steps of a real model's shape with random weights (no download).
    Bench {
        /// Shapes, comma-separated, or "all": smollm-135m, tinyllama-1.1b, pythia-1.4b, gpt2-xl, gptj-6b, opt-6.7b.
        #[arg(long, default_value = "smollm-135m")]
        shape: String,
        /// Sequences per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Text tokens per sequence.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Soft tokens.
        #[arg(long, default_value_t = 20)]
        soft: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Untimed steps first (kernel compilation, autotuning, caches).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// auto (f32 on CPU, bf16 on GPU), f32, bf16, f16.
        #[arg(long, default_value = "auto", value_parser = Precision::parse)]
        precision: Precision,
    },
    /// Check the model code against the PyTorch reference fixtures on a device (e.g. a GPU).
    Parity {
        /// Folder of fixture models (each with reference.safetensors).
        #[arg(long, default_value = "tests/fixtures")]
        fixtures: PathBuf,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// Compute dtype of the frozen weights: f32, bf16 or f16 (auto = f32).
        #[arg(long, default_value = "f32", value_parser = Precision::parse)]
        precision: Precision,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        eprintln!(
            "softtune: no command given. Run `softtune --help` for the commands, e.g.\n  softtune inspect MODEL\n  softtune eval --model MODEL --text FILE [--prompt PROMPT.zip]"
        );
        return ExitCode::from(2);
    };
    let result = match command {
        Command::Inspect { model, hub } => {
            inspect::inspect(&model, &hub.options()).map(|s| s.print())
        }
        Command::Eval {
            model,
            text,
            prompt,
            block_size,
            max_blocks,
            batch,
            device,
            precision,
            hub,
        } => eval::run(&EvalArgs {
            model,
            text,
            prompt,
            block_size,
            max_blocks,
            batch,
            device,
            precision,
            hub: hub.options(),
        })
        .map(|r| r.print()),
        Command::Train {
            config,
            profile,
            run_dir,
        } => return run_train(config, profile, run_dir),
        Command::Profiles => list_profiles(),
        Command::Bench {
            shape,
            batch,
            seq,
            soft,
            steps,
            warmup,
            device,
            precision,
        } => run_bench(&shape, batch, seq, soft, steps, warmup, device, precision),
        Command::Parity {
            fixtures,
            device,
            precision,
        } => run_parity(&fixtures, device, precision),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_parity(
    fixtures: &std::path::Path,
    device: DeviceSpec,
    precision: Precision,
) -> anyhow::Result<()> {
    // The fixtures are stored in float32: auto means float32 here.
    let dtype = precision.resolve(true, Some(burn::tensor::DType::F32));
    println!(
        "parity on {device}, weights in {}",
        softtune::model::weights::dtype_name(dtype)
    );
    let ok = softtune::with_backend!(device, |B, dev| {
        softtune::parity::run_all::<burn::backend::Autodiff<B>>(fixtures, &dev, dtype)?
    });
    if ok {
        Ok(())
    } else {
        anyhow::bail!("parity failed on {device}")
    }
}

fn list_profiles() -> anyhow::Result<()> {
    let dir = softtune::config::profile::profiles_dir()?;
    let list = softtune::config::profile::list_profiles()?;
    if list.is_empty() {
        println!("no profiles in {}", dir.display());
    }
    for (name, path) in list {
        println!("{name}\t{}", path.display());
    }
    Ok(())
}

fn run_train(
    config: Option<PathBuf>,
    profile: Option<String>,
    run_dir: Option<PathBuf>,
) -> ExitCode {
    use softtune::train::events::{Fanout, JsonlSink, PrintSink};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let result = (|| -> anyhow::Result<bool> {
        let path = match (config, profile) {
            (Some(c), _) => c,
            (None, Some(p)) => softtune::config::profile::profile_path(&p)?,
            (None, None) => anyhow::bail!("give --config FILE or --profile NAME"),
        };
        if !path.is_file() {
            anyhow::bail!("{}: no such configuration file", path.display());
        }
        println!("configuration: {}", path.display());
        let cfg = softtune::config::RunConfig::from_file(&path)?
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        let run_dir = run_dir.unwrap_or_else(|| cfg.folder.join(format!("{}-run", cfg.stem)));
        let plan = softtune::train::plan(&cfg, &run_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        let mut sink = Fanout(vec![
            Box::new(JsonlSink::open(&run_dir.join("events.jsonl"))?),
            Box::new(PrintSink),
        ]);
        let out = softtune::train::run(&plan, stop, &mut sink)?;
        if !out.stopped && out.eval_final.is_some() {
            println!(
                "check the prompt: softtune eval --model {} --text {} --block-size {} --prompt {}",
                plan.files.id,
                plan.heldout_path().display(),
                plan.rows.len,
                plan.kobold_path().display()
            );
        }
        if out.stopped {
            println!(
                "stopped at step {}; to resume, set continue_from = \"{}\"",
                out.step,
                plan.checkpoint_path().display()
            );
        }
        Ok(!out.stopped)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_bench(
    shapes: &str,
    batch: usize,
    seq: usize,
    soft: usize,
    steps: usize,
    warmup: usize,
    device: DeviceSpec,
    precision: Precision,
) -> anyhow::Result<()> {
    use softtune::bench::{BenchArgs, BenchResult, PRESETS};
    let shapes: Vec<String> = if shapes == "all" {
        PRESETS.iter().map(|s| s.to_string()).collect()
    } else {
        shapes.split(',').map(|s| s.trim().to_string()).collect()
    };
    println!("{}", BenchResult::header());
    for shape in shapes {
        let r = softtune::bench::run(&BenchArgs {
            shape,
            batch,
            seq,
            soft,
            steps,
            warmup,
            device,
            precision,
        })?;
        println!("{}", r.row());
    }
    Ok(())
}
