//! The `softtune` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use softtune::device::DeviceSpec;
use softtune::eval::{self, EvalArgs};
use softtune::generate::GenerateArgs;
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
    /// Without a command: open the wizard prefilled from this saved profile.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Colour theme of the wizard and the dashboard (default, light, high-contrast, mono, or
    /// one in <config dir>/themes/; NO_COLOR picks mono).
    #[arg(long, value_name = "NAME", global = true)]
    theme: Option<String>,
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
        /// Text to score: a text file, an EPUB book, a .docx, .odt or .rtf document, an HTML
        /// page, a Scrivener project (.scriv), or a .u32 token file (a run's heldout.u32).
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
    /// Print the text softtune reads from dataset files, as training reads them: to check
    /// what a book or document becomes, or to save it as plain text.
    ///
    /// Text files, EPUB books, Word (.docx), OpenDocument (.odt) and RTF documents, HTML
    /// pages (.html, .htm); the files of a folder in training's order, a blank line between them. Each file's name and size go
    /// to standard error, with the width of a hard-wrapped file's lines.
    Text {
        /// A file, or a folder searched recursively.
        path: PathBuf,
        /// Which files of a folder are read, as the run configuration's `dataset.glob`.
        #[arg(long, default_value = "*.txt")]
        glob: String,
        /// Join the lines of hard-wrapped files into paragraphs, as the run configuration's
        /// `dataset.unwrap = true`.
        #[arg(long)]
        unwrap: bool,
    },
    /// Continue a text with a soft prompt, and with --compare without it too: to try a
    /// prompt from the terminal. Each continuation is printed as it is written; what runs
    /// goes to standard error.
    ///
    /// Without a text (or --file) a new text starts, as after the end of a training file.
    Generate {
        #[command(flatten)]
        args: GenerateArgs,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Train a soft prompt from a run configuration (TOML) or a saved profile.
    ///
    /// By default the run is checked, then handed to a background worker that survives
    /// logging out or a dropped SSH connection; follow it with `softtune attach`.
    Train {
        /// Run configuration file (TOML).
        #[arg(long, conflicts_with = "profile", required_unless_present = "profile")]
        config: Option<PathBuf>,
        /// Name of a saved profile (see `softtune profiles`).
        #[arg(long)]
        profile: Option<String>,
        /// Train in this process, printing plain progress lines, instead of detaching.
        #[arg(long)]
        foreground: bool,
        /// Run folder for events.jsonl, the token cache and the checkpoint (default:
        /// detached, a new folder under the data folder's runs/; with --foreground,
        /// <output folder>/<stem>-run).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// With --foreground: start over even when the run folder holds this run's
        /// unfinished checkpoint (by default the run goes on from it).
        #[arg(long, requires = "foreground")]
        fresh: bool,
    },
    /// List the detached runs, newest first: state, progress, last loss, output files.
    Runs,
    /// Open a run's live dashboard (history included); without a terminal, or with --plain,
    /// print its history and follow it. Leaving (q, Ctrl-C) never stops the run.
    Attach {
        /// Run id (or a unique prefix, or a run folder); default: the newest run.
        run: Option<String>,
        /// Plain progress lines instead of the dashboard.
        #[arg(long)]
        plain: bool,
    },
    /// Stop a detached run after its current step, with a checkpoint and both exports.
    Stop {
        /// Run id (or a unique prefix, or a run folder); default: the newest running run.
        run: Option<String>,
    },
    /// Pause a detached run after its current step (it keeps its memory; `resume` goes on).
    Pause {
        /// Run id (or a unique prefix, or a run folder); default: the newest running run.
        run: Option<String>,
    },
    /// Resume a paused run, or start a stopped or failed one again from its checkpoint.
    Resume {
        /// Run id (or a unique prefix, or a run folder); default: the newest running run,
        /// else the newest run.
        run: Option<String>,
    },
    /// The detached training worker (started by `softtune train`).
    #[command(hide = true)]
    Worker {
        /// The run folder.
        run_dir: PathBuf,
    },
    /// List saved profiles.
    Profiles,
    /// Time full training steps of a real model's shape with random weights (no download).
    ///
    /// On CUDA, SOFTTUNE_CUDA_BACKEND=cube runs CubeCL without Burn's fusion wrapper
    /// (default: fusion); the device column names the one used.
    Bench {
        /// Shapes, comma-separated, or "all": smollm-135m, tinyllama-1.1b, pythia-1.4b, gpt2-xl, gptj-6b, opt-6.7b.
        #[arg(long, default_value = "smollm-135m")]
        shape: String,
        /// Sequences per step (default 4); with --generate, texts written at once (default 1).
        #[arg(long)]
        batch: Option<usize>,
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
        /// Time `softtune generate` instead: this many new tokens after --seq tokens of
        /// text and the --soft prompt, with the key/value cache and reading the whole
        /// window for every token (--steps does not apply).
        #[arg(long, value_name = "TOKENS")]
        generate: Option<usize>,
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
    softtune::device::keep_freed_host_memory();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return wizard(cli.profile, cli.theme);
    };
    if matches!(
        command,
        Command::Runs
            | Command::Attach { plain: true, .. }
            | Command::Text { .. }
            | Command::Generate { .. }
    ) || matches!(command, Command::Attach { .. }) && !softtune::tui::on_terminal()
    {
        // `softtune runs | head`, `softtune text book.epub | less`: end quietly when the
        // reader goes away, like other tools.
        #[cfg(unix)]
        // SAFETY: restores the default action of SIGPIPE; no other thread runs yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
        Command::Generate { mut args, hub } => {
            args.hub = hub.options();
            softtune::generate::run(
                &args,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
                &mut std::io::stderr(),
            )
        }
        Command::Text { path, glob, unwrap } => print_text(&path, &glob, unwrap),
        Command::Train {
            config,
            profile,
            foreground,
            run_dir,
            fresh,
        } => {
            if foreground {
                return run_train(config, profile, run_dir, fresh);
            }
            launch_train(config, profile, run_dir).map(|_| ())
        }
        Command::Runs => list_runs(),
        Command::Attach { run, plain } => {
            if !plain && softtune::tui::on_terminal() {
                return dashboard(run, cli.theme);
            }
            return attach(run);
        }
        Command::Stop { run } => stop_run(run),
        Command::Pause { run } => steer_run(run, softtune::runs::Request::Pause),
        Command::Resume { run } => resume_run(run),
        Command::Worker { run_dir } => {
            return ExitCode::from(softtune::runs::worker::main(&run_dir));
        }
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
            generate,
        } => run_bench(
            &shape, batch, seq, soft, steps, warmup, device, precision, generate,
        ),
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
        type A = burn::backend::Autodiff<B>;
        let kernels = softtune::parity::run_kernel_checks::<A>(&dev, dtype)?;
        println!();
        softtune::parity::run_all::<A>(fixtures, &dev, dtype)? && kernels
    });
    if ok {
        Ok(())
    } else {
        anyhow::bail!("parity failed on {device}")
    }
}

fn print_text(path: &std::path::Path, glob: &str, unwrap: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let files = softtune::data::dataset::scan(path, glob)?;
    let mut out = std::io::stdout().lock();
    let mut chars = 0;
    let mut found = softtune::data::dataset::Found::default();
    for (i, f) in files.iter().enumerate() {
        let read = softtune::data::read_dataset_text(&f.path, unwrap)?;
        found.add(&f.path, &read);
        let stories = if read.separated {
            format!(", {} stories", read.stories().len())
        } else {
            String::new()
        };
        let fixed = match &read.repaired {
            Some(r) => format!(", {} characters put back", r.characters),
            None => String::new(),
        };
        let text = read.text;
        if i > 0 {
            out.write_all(b"\n\n")?;
        }
        out.write_all(text.trim_end_matches('\n').as_bytes())?;
        let n = text.chars().count();
        chars += n;
        let how = match read.wrapped {
            Some(width) if unwrap => format!(" (hard-wrapped at {width}: lines joined)"),
            Some(width) => format!(" (hard-wrapped at {width} characters)"),
            None => String::new(),
        };
        eprintln!("{}: {n} characters{stories}{fixed}{how}", f.path.display());
    }
    out.write_all(b"\n")?;
    out.flush()?;
    if files.len() > 1 {
        eprintln!("{} files, {chars} characters", files.len());
    }
    let wrapped = found.wrapped.len();
    if wrapped > 0 && !unwrap {
        eprintln!(
            "{wrapped} file(s) hard-wrapped: --unwrap (dataset.unwrap = true) joins their lines into paragraphs"
        );
    }
    if let Some(note) = softtune::data::dataset::separated_note(&found.separated) {
        eprintln!("{note}");
    }
    if let Some(note) = softtune::data::dataset::repaired_note(&found.repaired) {
        eprintln!("{note}");
    }
    Ok(())
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
    fresh: bool,
) -> ExitCode {
    use softtune::train::events::{Fanout, JsonlSink, PrintSink};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let result = (|| -> anyhow::Result<bool> {
        let path = config_path(config, profile)?;
        println!("configuration: {}", path.display());
        let cfg = softtune::config::RunConfig::from_file(&path)?
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        let run_dir = run_dir.unwrap_or_else(|| cfg.folder.join(format!("{}-run", cfg.stem)));
        let mut plan = softtune::train::plan(&cfg, &run_dir)?;
        if !fresh && let Some(step) = softtune::train::resume_in_place(&mut plan)? {
            println!(
                "{} holds this run's checkpoint at step {step} of {}: going on from it \
                 (--fresh starts over)",
                run_dir.display(),
                plan.total_steps
            );
        }
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
        let out =
            softtune::train::run(&plan, &softtune::train::Control::with_stop(stop), &mut sink)?;
        for line in softtune::runs::outcome_hints(&plan, &out, None) {
            println!("{line}");
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

/// The configuration file named by --config or --profile.
fn config_path(config: Option<PathBuf>, profile: Option<String>) -> anyhow::Result<PathBuf> {
    let path = match (config, profile) {
        (Some(c), _) => c,
        (None, Some(p)) => softtune::config::profile::profile_path(&p)?,
        (None, None) => anyhow::bail!("give --config FILE or --profile NAME"),
    };
    if !path.is_file() {
        anyhow::bail!("{}: no such configuration file", path.display());
    }
    Ok(path)
}

/// `softtune train` without --foreground: check, plan, start the worker, return its run
/// folder.
fn launch_train(
    config: Option<PathBuf>,
    profile: Option<String>,
    run_dir: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let path = config_path(config, profile)?;
    println!("configuration: {}", path.display());
    let l = softtune::runs::launch::launch(&path, run_dir.as_deref())?;
    match &l.planned {
        Some(p) => {
            for note in &p.notes {
                println!("note: dataset: {note}");
            }
            println!(
                "run {} started in the background (worker pid {}): {} steps over {} training sequences",
                l.id, l.pid, p.steps, p.rows
            )
        }
        None => println!(
            "run {} started in the background (worker pid {}); the worker downloads the model first",
            l.id, l.pid
        ),
    }
    println!("  folder:  {}", l.dir.display());
    println!("  exports: {}", l.kobold.display());
    println!("  follow:  softtune attach {}", l.id);
    println!("  stop:    softtune stop {}", l.id);
    println!("  list:    softtune runs");
    println!("It keeps running if you log out or the connection drops.");
    Ok(l.dir)
}

/// `softtune attach` on a terminal: the live dashboard, then one line on where the run is.
fn dashboard(run: Option<String>, theme: Option<String>) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let info = softtune::runs::find(run.as_deref())?;
        let theme = softtune::tui::Theme::choose(theme.as_deref())?;
        show_dashboard(&info.dir, theme)
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn show_dashboard(dir: &std::path::Path, theme: softtune::tui::Theme) -> anyhow::Result<()> {
    let info = softtune::runs::RunInfo::open(dir)?;
    softtune::tui::run_dashboard(&info, theme)?;
    let info = softtune::runs::RunInfo::open(dir)?;
    // The terminal may be gone (that is one way to leave): never panic on writing.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", info.summary_line());
    if info.state.state == softtune::runs::state::Status::Running {
        let _ = writeln!(
            out,
            "the run goes on in the background: softtune attach {} · softtune stop {}",
            info.id, info.id
        );
    }
    Ok(())
}

fn list_runs() -> anyhow::Result<()> {
    let runs = softtune::runs::list()?;
    if runs.is_empty() {
        println!(
            "no runs in {}; start one with `softtune train --config FILE`",
            softtune::runs::runs_dir()?.display()
        );
    }
    for r in runs {
        println!("{}", r.summary_line());
    }
    Ok(())
}

fn stop_run(run: Option<String>) -> anyhow::Result<()> {
    steer_run(run, softtune::runs::Request::Stop)
}

/// `softtune resume [RUN]`: a paused run goes on; a stopped or failed one starts again
/// from its checkpoint (default: the newest running run, else the newest run).
fn resume_run(run: Option<String>) -> anyhow::Result<()> {
    use softtune::runs::state::Status;
    let info = match run {
        Some(r) => softtune::runs::find(Some(&r))?,
        None => {
            let runs = softtune::runs::list()?;
            match runs.iter().position(|r| r.state.state == Status::Running) {
                Some(i) => runs[i].clone(),
                None => runs.into_iter().next().ok_or_else(|| {
                    anyhow::anyhow!("no runs yet; start one with `softtune train --config FILE`")
                })?,
            }
        }
    };
    if info.state.state == Status::Running {
        return steer_run(
            Some(info.dir.display().to_string()),
            softtune::runs::Request::Resume,
        );
    }
    let r = softtune::runs::launch::resume(&info)?;
    let id = &info.id;
    match r.from_step {
        Some(step) => println!(
            "resuming run {id} from its checkpoint at step {step}{} (worker pid {})",
            r.total_steps.map_or(String::new(), |t| format!(" of {t}")),
            r.pid
        ),
        None => println!(
            "run {id} had no checkpoint yet: started again from the beginning (worker pid {})",
            r.pid
        ),
    }
    println!("  follow:  softtune attach {id}");
    println!("  stop:    softtune stop {id}");
    println!("It keeps running if you log out or the connection drops.");
    Ok(())
}

/// Sends a stop, pause or resume request to a run (default: the newest running one).
fn steer_run(run: Option<String>, what: softtune::runs::Request) -> anyhow::Result<()> {
    use softtune::runs::Request;
    use softtune::runs::state::Status;
    let info = match run {
        Some(r) => softtune::runs::find(Some(&r))?,
        None => softtune::runs::list()?
            .into_iter()
            .find(|r| r.state.state == Status::Running)
            .ok_or_else(|| anyhow::anyhow!("no run is running; `softtune runs` lists them"))?,
    };
    let pid = softtune::runs::request(&info, what)?;
    let what = match what {
        Request::Stop => {
            "to stop: it finishes the current step, then writes a checkpoint and both exports \
             (`softtune resume` goes on from there later)"
        }
        Request::Pause => "to pause after the current step (`softtune resume` goes on)",
        Request::Resume => "to go on",
    };
    println!("asked run {} (worker pid {pid}) {what}", info.id);
    println!("  watch: softtune attach {}", info.id);
    Ok(())
}

/// Prints a run's recorded history, then follows it while it runs. Ctrl-C only detaches.
fn attach(run: Option<String>) -> ExitCode {
    use softtune::runs::state::{Status, load_checked};
    use softtune::train::events::{Event, EventSink, PrintSink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let result = (|| -> anyhow::Result<ExitCode> {
        let info = softtune::runs::find(run.as_deref())?;
        let id = &info.id;
        println!(
            "run {id} ({}), folder {}",
            info.state.state,
            info.dir.display()
        );
        let mut tail = softtune::runs::tail::EventTail::new(&info.events_path());
        let mut ended = false;
        let show = |events: Vec<Event>, ended: &mut bool| {
            for e in events {
                // A folder reused with --run-dir holds earlier runs: the last one counts.
                match e {
                    Event::Started { .. } => *ended = false,
                    Event::Finished { .. } | Event::Error { .. } => *ended = true,
                    _ => {}
                }
                PrintSink.emit(&e);
            }
        };
        show(tail.poll()?, &mut ended);
        let mut state = info.state.clone();
        if state.state == Status::Running && !ended {
            let detach = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGINT, detach.clone())?;
            println!("-- following {id}; Ctrl-C stops watching, not the run --");
            let mut last_check = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if detach.load(Ordering::SeqCst) {
                    println!("-- detached; run {id} goes on (softtune attach {id}) --");
                    return Ok(ExitCode::SUCCESS);
                }
                show(tail.poll()?, &mut ended);
                if ended || last_check.elapsed() >= Duration::from_secs(1) {
                    last_check = Instant::now();
                    state = load_checked(&info.dir)?;
                    if state.state != Status::Running {
                        show(tail.poll()?, &mut ended);
                        break;
                    }
                }
            }
        } else if state.state == Status::Running {
            // The last event is in; the worker is writing its final state.
            let until = Instant::now() + Duration::from_secs(5);
            while state.state == Status::Running && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
                state = load_checked(&info.dir)?;
            }
        }
        if tail.skipped > 0 {
            println!(
                "({} damaged line(s) of {} skipped)",
                tail.skipped,
                info.events_path().display()
            );
        }
        match state.state {
            Status::Failed => {
                eprintln!(
                    "error: run {id} failed: {}; see {}",
                    state.message.as_deref().unwrap_or("no reason recorded"),
                    info.log_path().display()
                );
                eprintln!(
                    "once the cause is fixed, `softtune resume {id}` starts it again from its last checkpoint"
                );
                Ok(ExitCode::FAILURE)
            }
            s => {
                println!("run {id} {s}");
                if let (Status::Stopped, Some(ck)) = (s, &state.checkpoint) {
                    println!("to go on from its checkpoint ({ck}): softtune resume {id}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })();
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

#[allow(clippy::too_many_arguments)]
fn run_bench(
    shapes: &str,
    batch: Option<usize>,
    seq: usize,
    soft: usize,
    steps: usize,
    warmup: usize,
    device: DeviceSpec,
    precision: Precision,
    generate: Option<usize>,
) -> anyhow::Result<()> {
    use softtune::bench::{BenchArgs, BenchResult, GenerateResult, PRESETS};
    let shapes: Vec<String> = if shapes == "all" {
        PRESETS.iter().map(|s| s.to_string()).collect()
    } else {
        shapes.split(',').map(|s| s.trim().to_string()).collect()
    };
    println!(
        "{}",
        match generate {
            Some(_) => GenerateResult::header(),
            None => BenchResult::header(),
        }
    );
    let batch = batch.unwrap_or(if generate.is_some() { 1 } else { 4 });
    for shape in shapes {
        let args = BenchArgs {
            shape,
            batch,
            seq,
            soft,
            steps,
            warmup,
            device,
            precision,
        };
        let row = match generate {
            Some(new) => softtune::bench::run_generate(&args, new)?.row(),
            None => softtune::bench::run(&args)?.row(),
        };
        println!("{row}");
    }
    Ok(())
}

/// `softtune` without a command: the wizard on a terminal; Start launches the run the way
/// `softtune train --config FILE` does, from `<config dir>/last-run.toml`.
fn wizard(profile: Option<String>, theme: Option<String>) -> ExitCode {
    if !softtune::tui::on_terminal() {
        eprintln!(
            "softtune: the wizard needs a terminal. Without one, train headless:\n  softtune train --config FILE\n  softtune train --profile NAME\nRun `softtune --help` for every command."
        );
        return ExitCode::from(2);
    }
    let result = (|| -> anyhow::Result<()> {
        let theme = softtune::tui::Theme::choose(theme.as_deref())?;
        let dash_theme = theme.clone();
        let (initial, profile) = match profile {
            Some(name) => {
                let path = softtune::config::profile::profile_path(&name)?;
                let cfg = softtune::config::RunConfig::from_file(&path)?;
                (cfg, Some((name, path)))
            }
            None => (softtune::config::RunConfig::default(), None),
        };
        let Some(cfg) = softtune::tui::run_wizard(initial, profile, theme)? else {
            return Ok(());
        };
        let path = softtune::config::profile::config_dir()?.join("last-run.toml");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, softtune::tui::app::absolutize(cfg).to_toml()?)?;
        let dir = launch_train(Some(path), None, None)?;
        show_dashboard(&dir, dash_theme)
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
