//! The wizard driven by key events, drawn into ratatui's TestBackend and snapshotted.
//! Paths are relative to the crate root (cargo test's working folder) so the screens are
//! the same everywhere; the GPU list is injected.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use softtune::config::RunConfig;
use softtune::tui::steps::device::GpuInfo;
use softtune::tui::steps::{Report, Step};
use softtune::tui::{Action, App, Machine, Theme};

mod common;

const SCRATCH: &str = "target/wizard-tests";

fn machine() -> Machine {
    Machine {
        gpus: Some(vec![GpuInfo {
            index: 0,
            name: "Test GPU 24GB".into(),
            total: 24 << 30,
            free: 20 << 30,
        }]),
        cpu_cores: 8,
    }
}

/// A fresh configuration whose output folder is a scratch folder (so checks create nothing
/// in the crate root).
fn base(sub: &str) -> RunConfig {
    let mut c = RunConfig::default();
    c.output.folder = Some(PathBuf::from(format!("{SCRATCH}/{sub}")));
    c
}

fn app(cfg: RunConfig) -> App {
    App::new(cfg, None, Theme::default(), machine())
}

fn press(app: &mut App, code: KeyCode) -> Action {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl(app: &mut App, c: char) -> Action {
    app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn type_str(app: &mut App, s: &str) {
    for c in s.chars() {
        press(app, KeyCode::Char(c));
    }
}

/// Goes to `step` with PageDown / PageUp.
fn goto(app: &mut App, step: Step) {
    while app.step().index() < step.index() {
        press(app, KeyCode::PageDown);
    }
    while app.step().index() > step.index() {
        press(app, KeyCode::PageUp);
    }
}

/// Tabs to the field `key` of the current step.
fn focus(app: &mut App, key: &str) {
    let fields = app.step().fields();
    let Some(want) = fields.iter().position(|f| f.key == key) else {
        panic!("no field {key} on step {:?}", app.step());
    };
    loop {
        let now = app
            .focused_field()
            .and_then(|f| fields.iter().position(|g| g.key == f.key));
        match now {
            Some(i) if i == want => return,
            Some(i) if i > want => press(app, KeyCode::BackTab),
            _ => press(app, KeyCode::Tab),
        };
    }
}

fn set(app: &mut App, key: &str, value: &str) {
    focus(app, key);
    ctrl(app, 'u');
    press(app, KeyCode::End);
    ctrl(app, 'u');
    type_str(app, value);
}

fn screen(app: &App, w: u16, h: u16) -> TestBackend {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| app.draw(f)).unwrap();
    t.backend().clone()
}

/// Fills every step for the gpt2 fixture, with the output in `out`.
fn fill(app: &mut App, out: &str) {
    set(app, "dataset.path", "tests/fixtures/tokenizer_corpus.txt");
    goto(app, Step::Prompt);
    set(app, "prompt.text", "Once upon a time");
    goto(app, Step::Model);
    set(app, "model.id", "tests/fixtures/gpt2");
    goto(app, Step::Parameters);
    focus(app, "prompt.soft_tokens");
    press(app, KeyCode::Down); // quick pick: 20
    set(app, "training.tokens_per_sequence", "64");
    set(app, "training.batch_size", "2");
    set(app, "training.grad_accumulation", "2");
    set(app, "training.lr", "0.3");
    goto(app, Step::Names);
    set(app, "output.name", "Fairy tales");
    set(app, "output.author", "tests");
    set(app, "output.folder", out);
    goto(app, Step::Device);
    set(app, "device.device", "cpu");
    press(app, KeyCode::Tab);
}

#[test]
fn dataset_step() {
    let mut a = app(base("dataset"));
    insta::assert_snapshot!("dataset_empty", screen(&a, 80, 24));
    type_str(&mut a, "tests/fixtures/nope");
    press(&mut a, KeyCode::Tab);
    insta::assert_snapshot!("dataset_missing", screen(&a, 80, 24));
    press(&mut a, KeyCode::BackTab);
    set(
        &mut a,
        "dataset.path",
        "tests/fixtures/tokenizer_corpus.txt",
    );
    press(&mut a, KeyCode::Tab);
    insta::assert_snapshot!("dataset_small_warning", screen(&a, 80, 24));
}

#[test]
fn dataset_names_the_non_utf8_file() {
    let dir = Path::new(SCRATCH).join("latin1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "fine text\n").unwrap();
    std::fs::write(dir.join("b.txt"), b"caf\xe9\n").unwrap();
    let mut a = app(base("latin1-out"));
    type_str(&mut a, &format!("{SCRATCH}/latin1"));
    press(&mut a, KeyCode::Tab);
    insta::assert_snapshot!("dataset_not_utf8", screen(&a, 80, 24));
}

/// A hard-wrapped book is named in a warning on the dataset step until "Join wrapped
/// lines" is yes; the answer must be yes or no, and reaches the configuration.
#[test]
fn dataset_step_finds_hard_wrapped_books() {
    let dir = Path::new(SCRATCH).join("wrapped");
    std::fs::create_dir_all(&dir).unwrap();
    let book = std::fs::read_to_string("tests/fixtures/docx/book.txt").unwrap();
    std::fs::write(dir.join("novel.txt"), common::hard_wrap(&book, 70)).unwrap();
    std::fs::write(dir.join("notes.txt"), &book).unwrap();
    let mut a = app(base("wrapped-out"));
    set(&mut a, "dataset.path", &format!("{SCRATCH}/wrapped"));
    press(&mut a, KeyCode::Tab);
    let r = a.report(Step::Dataset);
    let warning = r.warnings.iter().find(|w| w.contains("hard-wrapped"));
    assert!(
        warning.is_some_and(|w| w.contains("1 file is hard-wrapped (novel.txt)")
            && w.contains("about 70 characters")
            && w.ends_with("set Join wrapped lines to yes")),
        "{:?}",
        r.warnings
    );
    assert_eq!(a.to_config().dataset.unwrap, None);

    set(&mut a, "dataset.unwrap", "maybe");
    let r = a.report(Step::Dataset);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].0, "dataset.unwrap");
    assert!(r.errors[0].1.contains("yes or no"), "{:?}", r.errors);

    set(&mut a, "dataset.unwrap", "yes");
    let r = a.report(Step::Dataset);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(!r.warnings.iter().any(|w| w.contains("hard-wrapped")));
    assert!(
        r.info
            .iter()
            .any(|i| i.contains("novel.txt") && i.contains("joined into paragraphs")),
        "{:?}",
        r.info
    );
    assert_eq!(a.to_config().dataset.unwrap, Some(true));
    // The answer is kept in a profile and shown again.
    let b = app(a.to_config());
    assert_eq!(b.value("dataset.unwrap"), "yes");
}

#[test]
fn prompt_and_model_steps() {
    let mut a = app(base("prompt"));
    goto(&mut a, Step::Prompt);
    set(&mut a, "prompt.text", "Once upon a time");
    insta::assert_snapshot!("prompt_no_model", screen(&a, 80, 24));
    goto(&mut a, Step::Model);
    set(&mut a, "model.id", "tests/fixtures/gpt2");
    press(&mut a, KeyCode::Tab);
    insta::assert_snapshot!("model_gpt2", screen(&a, 80, 24));
    goto(&mut a, Step::Prompt);
    insta::assert_snapshot!("prompt_token_count", screen(&a, 80, 24));

    // The starter is a multi-line editor: Enter breaks the line, ↑ moves up a line, Tab
    // leaves it; the token count follows.
    focus(&mut a, "prompt.text");
    press(&mut a, KeyCode::Enter);
    type_str(&mut a, "in a land far away,");
    press(&mut a, KeyCode::Enter);
    type_str(&mut a, "there lived a writer.");
    press(&mut a, KeyCode::Up);
    press(&mut a, KeyCode::Home);
    type_str(&mut a, "deep ");
    insta::assert_snapshot!("prompt_multiline", screen(&a, 80, 24));
    assert_eq!(
        a.to_config().prompt.text.as_deref(),
        Some("Once upon a time\ndeep in a land far away,\nthere lived a writer.")
    );
    press(&mut a, KeyCode::Tab);
    assert_eq!(a.focused_field().unwrap().key, "prompt.file");
    let toml = a.to_config().to_toml().unwrap();
    let back = softtune::config::RunConfig::from_toml(&toml).unwrap();
    assert_eq!(back.prompt.text, a.to_config().prompt.text, "{toml}");

    set(&mut a, "prompt.file", "tests/fixtures/nope.txt");
    insta::assert_snapshot!("prompt_conflict", screen(&a, 80, 24));
}

#[test]
fn unsupported_architecture_is_an_error_on_the_model_step() {
    let dir = Path::new(SCRATCH).join("bert");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64, "vocab_size": 100}"#,
    )
    .unwrap();
    let mut a = app(base("bert-out"));
    goto(&mut a, Step::Model);
    type_str(&mut a, &format!("{SCRATCH}/bert"));
    press(&mut a, KeyCode::Tab);
    let s = screen(&a, 80, 24);
    insta::assert_snapshot!("model_unsupported", s);
}

/// The model step's report after the model `dir` is entered (Tab leaves the field).
fn model_step(dir: &Path) -> Report {
    let mut a = app(base("no-tok-out"));
    goto(&mut a, Step::Model);
    set(&mut a, "model.id", dir.to_str().unwrap());
    press(&mut a, KeyCode::Tab);
    Step::Model.check(&a)
}

/// A local folder gets nothing downloaded, so a missing tokenizer stops the model step; one
/// with GPT-2's slow tokenizer files passes it, unless they cannot be built.
#[test]
fn a_local_model_without_a_tokenizer_is_an_error_on_the_model_step() {
    let dir = Path::new(SCRATCH).join("no-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new("tests/fixtures/gpt2").join(f), dir.join(f)).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("vocab.json"));
    let r = model_step(&dir);
    assert!(
        r.errors.iter().any(|(k, e)| *k == "model.id"
            && e.contains("no tokenizer.json, no vocab.json with merges.txt")),
        "{:?}",
        r.errors
    );

    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            Path::new("tests/fixtures/slow_tokenizer/plain").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    let r = model_step(&dir);
    assert!(r.errors.is_empty(), "{:?}", r.errors);

    // Slow tokenizer files that cannot be built (a refused class) stop the step too, naming
    // the class.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "Qwen2Tokenizer"}"#,
    )
    .unwrap();
    let r = model_step(&dir);
    assert!(
        r.errors
            .iter()
            .any(|(k, e)| *k == "model.id" && e.contains("Qwen2Tokenizer")),
        "{:?}",
        r.errors
    );
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
}

#[test]
fn parameters_step() {
    let mut a = app(base("params"));
    set(
        &mut a,
        "dataset.path",
        "tests/fixtures/tokenizer_corpus.txt",
    );
    goto(&mut a, Step::Model);
    set(&mut a, "model.id", "tests/fixtures/gpt2");
    goto(&mut a, Step::Parameters);
    press(&mut a, KeyCode::Down);
    press(&mut a, KeyCode::Down); // 40
    set(&mut a, "training.tokens_per_sequence", "64");
    insta::assert_snapshot!("parameters_estimates", screen(&a, 80, 24));
    set(&mut a, "training.lr", "fast");
    set(&mut a, "training.tokens_per_sequence", "100");
    set(&mut a, "training.optimizer", "sgd");
    insta::assert_snapshot!("parameters_errors", screen(&a, 80, 24));
}

#[test]
fn names_and_device_steps() {
    let mut a = app(base("names"));
    goto(&mut a, Step::Names);
    set(&mut a, "output.name", "My prompt");
    set(&mut a, "output.stem", "my prompt/1");
    set(&mut a, "continue_from", "tests/fixtures/missing.zip");
    press(&mut a, KeyCode::BackTab);
    insta::assert_snapshot!("names_errors", screen(&a, 80, 24));
    goto(&mut a, Step::Device);
    insta::assert_snapshot!("device_injected_gpu", screen(&a, 80, 24));
    set(&mut a, "device.device", "cuda:3");
    set(&mut a, "device.precision", "f8");
    insta::assert_snapshot!("device_errors", screen(&a, 80, 24));
}

#[test]
fn start_jumps_to_the_first_invalid_field() {
    let mut a = app(base("jump"));
    goto(&mut a, Step::Run);
    insta::assert_snapshot!("run_invalid", screen(&a, 80, 24));
    assert_eq!(press(&mut a, KeyCode::Enter), Action::Continue);
    assert_eq!(a.step(), Step::Dataset);
    assert_eq!(a.focused_field().unwrap().key, "dataset.path");
    insta::assert_snapshot!("run_jumped", screen(&a, 80, 24));
}

#[test]
fn overlays_and_quitting() {
    let mut a = app(base("keys"));
    press(&mut a, KeyCode::F(1));
    insta::assert_snapshot!("help_overlay", screen(&a, 80, 24));
    press(&mut a, KeyCode::Char('x')); // closes the help, types nothing
    assert_eq!(a.value("dataset.path"), "");
    // q is text while typing in a field.
    press(&mut a, KeyCode::Char('q'));
    assert_eq!(a.value("dataset.path"), "q");
    press(&mut a, KeyCode::Esc); // leaves the field
    assert_eq!(press(&mut a, KeyCode::Char('q')), Action::Continue); // unsaved: confirm
    insta::assert_snapshot!("quit_confirm", screen(&a, 80, 24));
    assert_eq!(press(&mut a, KeyCode::Char('y')), Action::Quit);
    // Nothing changed: q quits at once.
    let mut b = app(base("keys"));
    press(&mut b, KeyCode::Esc);
    assert_eq!(press(&mut b, KeyCode::Char('q')), Action::Quit);
    ctrl(&mut b, 'n');
    assert_eq!(b.step(), Step::Prompt);
    ctrl(&mut b, 'p');
    assert_eq!(b.step(), Step::Dataset);
}

#[test]
fn small_terminal() {
    let a = app(base("small"));
    insta::assert_snapshot!("too_small", screen(&a, 60, 20));
    // Esc quits at once there (nothing typed yet), even while a field has the focus.
    let mut a = a;
    assert_eq!(press(&mut a, KeyCode::Esc), Action::Quit);
    // 80×24 is enough.
    assert!(!format!("{}", screen(&a, 80, 24)).contains("too small"));
}

#[test]
fn themes_load() {
    let mut out = String::new();
    for (name, _) in softtune::tui::theme::BUILTIN {
        let t = Theme::load(name, None).unwrap();
        out.push_str(&format!(
            "{name}: title {:?} / error {:?} / focus {:?}\n",
            t.title, t.error, t.focus
        ));
        // Every theme draws the wizard.
        let a = App::new(base("themes"), None, t, machine());
        let s = screen(&a, 80, 24);
        assert!(format!("{s}").contains("1. Dataset"));
    }
    insta::assert_snapshot!("themes", out);
    // The default theme uses named ANSI colours only, and colours errors red.
    let t = Theme::default();
    for s in [
        t.title, t.text, t.muted, t.focus, t.current, t.ok, t.warning, t.error,
    ] {
        for c in [s.fg, s.bg].into_iter().flatten() {
            assert!(
                !matches!(
                    c,
                    ratatui::style::Color::Rgb(..) | ratatui::style::Color::Indexed(_)
                ),
                "{c:?}"
            );
        }
    }
    let a = app(base("themes"));
    let s = screen(&a, 80, 24);
    let buf = s.buffer();
    let (x, y) = (0..24)
        .flat_map(|y| (0..80).map(move |x| (x, y)))
        .find(|&(x, y)| buf[(x, y)].symbol() == "✖")
        .expect("an error mark");
    assert_eq!(buf[(x, y)].fg, ratatui::style::Color::Red);
    // A user theme overrides by name; bad ones are explained.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        std::fs::read_to_string("themes/mono.toml").unwrap(),
    )
    .unwrap();
    assert_eq!(Theme::load("mine", Some(dir.path())).unwrap().name, "mine");
    std::fs::write(dir.path().join("bad.toml"), "title = \"plaid\"").unwrap();
    let e = Theme::load("bad", Some(dir.path())).unwrap_err();
    assert!(format!("{e:#}").contains("plaid"), "{e:#}");
    assert!(Theme::load("nope", None).is_err());
}

#[test]
fn profile_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tales.toml");
    let mut a = App::new(
        base("profile"),
        Some(("tales".into(), path.clone())),
        Theme::default(),
        machine(),
    );
    set(
        &mut a,
        "dataset.path",
        "tests/fixtures/tokenizer_corpus.txt",
    );
    goto(&mut a, Step::Parameters);
    focus(&mut a, "prompt.soft_tokens");
    press(&mut a, KeyCode::Down);
    assert!(a.dirty());
    ctrl(&mut a, 's');
    assert!(!a.dirty());
    let text = std::fs::read_to_string(&path).unwrap();
    // Only what was set.
    assert!(text.contains("soft_tokens = 20"), "{text}");
    assert!(!text.contains("lr"), "{text}");
    assert!(!text.contains("device"), "{text}");
    let back = RunConfig::from_file(&path).unwrap();
    let b = App::new(
        back.clone(),
        Some(("tales".into(), path)),
        Theme::default(),
        machine(),
    );
    assert_eq!(b.to_config(), back);
    assert!(Path::new(b.value("dataset.path")).is_absolute());
    assert!(
        b.value("dataset.path")
            .ends_with("tests/fixtures/tokenizer_corpus.txt")
    );
    assert_eq!(b.value("prompt.soft_tokens"), "20");
}

#[test]
fn filled_wizard_gives_a_config_the_headless_path_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut a = app(base("e2e"));
    fill(&mut a, &out.display().to_string());
    for s in &Step::ALL[..6] {
        assert!(
            a.report(*s).errors.is_empty(),
            "{s:?}: {:?}",
            a.report(*s).errors
        );
    }
    goto(&mut a, Step::Run);
    let Action::Start(cfg) = press(&mut a, KeyCode::Enter) else {
        panic!("Start refused");
    };
    assert_eq!(cfg.prompt.soft_tokens, Some(20));
    assert_eq!(cfg.training.tokens_per_sequence, Some(64));
    assert_eq!(cfg.device.device.as_deref(), Some("cpu"));
    assert_eq!(cfg.training.weight_decay, None);
    // The same configuration through a TOML file, as `softtune train --config` reads it.
    let file = dir.path().join("run.toml");
    std::fs::write(
        &file,
        softtune::tui::app::absolutize(*cfg.clone())
            .to_toml()
            .unwrap(),
    )
    .unwrap();
    let reread = RunConfig::from_file(&file).unwrap();
    let valid = reread.validate().unwrap();
    let plan = softtune::train::plan(&valid, &dir.path().join("run")).unwrap();
    assert!(plan.total_steps >= 1);
    assert_eq!(plan.cfg.soft_tokens, 20);
    cfg.validate().unwrap();
}

#[test]
fn run_step_summary() {
    let dir = Path::new(SCRATCH).join("summary-out");
    let mut a = app(base("summary"));
    fill(&mut a, &dir.display().to_string());
    goto(&mut a, Step::Run);
    insta::assert_snapshot!("run_ready", screen(&a, 80, 24));
}

#[test]
fn without_a_terminal_softtune_explains_the_headless_commands() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softtune"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("softtune train --config FILE"), "{err}");
    assert!(err.contains("--profile NAME"), "{err}");
}

#[test]
fn tab_completes_paths_then_moves_on() {
    let mut a = app(base("tab"));
    type_str(&mut a, "demo/kj");
    press(&mut a, KeyCode::Tab);
    assert_eq!(a.value("dataset.path"), "demo/kjv/");
    assert_eq!(a.focused_field().map(|f| f.key), Some("dataset.path"));
    // An existing folder: Tab moves to the next field.
    press(&mut a, KeyCode::Tab);
    assert_eq!(a.focused_field().map(|f| f.key), Some("dataset.glob"));
}

#[test]
fn device_step_names_the_largest_batch_that_fits() {
    use softtune::tui::steps::parameters::memory_estimate;
    // The wizard's run on a GPU with `free` bytes free, at batch 4.
    let open = |free: u64| {
        let mut m = machine();
        m.gpus.as_mut().unwrap()[0].free = free;
        let mut a = App::new(base("fit"), None, Theme::default(), m);
        goto(&mut a, Step::Model);
        set(&mut a, "model.id", "tests/fixtures/gpt2");
        goto(&mut a, Step::Parameters);
        set(&mut a, "training.batch_size", "4");
        goto(&mut a, Step::Device);
        set(&mut a, "device.device", "cuda:0");
        a
    };
    let errors = |a: &App| {
        a.report(Step::Device)
            .errors
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let a = open(20 << 30);
    assert_eq!(errors(&a), "", "20 GiB free: batch 4 fits");
    let need = |b| memory_estimate(&a, b).unwrap().memory.total();
    assert!(need(1) < need(2) && need(2) < need(4));
    // Free memory between one and two sequences' needs.
    let free = (need(1) + need(2)) / 2;
    let msg = errors(&open(free));
    let shown = softtune::inspect::human_bytes(free as usize);
    assert!(msg.contains(&format!("cuda:0 has {shown} free")), "{msg}");
    assert!(msg.contains("the largest batch that fits is 1"), "{msg}");
    // Less than one sequence needs: the float32 fixture is told about bf16.
    let msg = errors(&open(need(1) - 1));
    assert!(msg.contains("even one sequence does not fit"), "{msg}");
    assert!(msg.contains("pick bf16 precision"), "{msg}");
}

#[test]
fn memory_estimate_follows_the_device_and_precision() {
    use burn::tensor::DType;
    use softtune::tui::steps::parameters::memory_estimate;
    let mut a = app(base("estimate"));
    goto(&mut a, Step::Model);
    set(&mut a, "model.id", "tests/fixtures/gpt2");
    goto(&mut a, Step::Device);
    set(&mut a, "device.device", "cuda:0");
    let f32 = memory_estimate(&a, 2).unwrap();
    assert_eq!(f32.dtype, DType::F32, "the fixture is stored in float32");
    assert!(f32.memory.runtime > 0);
    set(&mut a, "device.precision", "bf16");
    let bf16 = memory_estimate(&a, 2).unwrap();
    assert_eq!(bf16.dtype, DType::BF16);
    assert_eq!(2 * bf16.memory.weights, f32.memory.weights);
    assert!(bf16.memory.kept < f32.memory.kept);
    // Auto precision on the CPU is float32, with no CUDA allowance.
    set(&mut a, "device.precision", "auto");
    set(&mut a, "device.device", "cpu");
    let cpu = memory_estimate(&a, 2).unwrap();
    assert_eq!(
        (cpu.dtype, cpu.place, cpu.memory.runtime),
        (DType::F32, "CPU", 0)
    );
    assert_eq!(cpu.memory.kept, f32.memory.kept);
}

#[test]
fn continue_from_is_checked_against_the_models_width() {
    use softtune::export::{KoboldMeta, write_kobold_zip};
    use softtune::prompt::SoftPrompt;
    let dir = Path::new(SCRATCH).join("continue");
    std::fs::create_dir_all(&dir).unwrap();
    let meta = KoboldMeta {
        name: "old".into(),
        author: String::new(),
        supported: vec![],
        description: String::new(),
    };
    for (name, width) in [("w64.zip", 64), ("w32.zip", 32)] {
        let p = SoftPrompt::new(3, width, vec![0.5; 3 * width]).unwrap();
        write_kobold_zip(&dir.join(name), &p, &meta, false).unwrap();
    }
    let mut a = app(base("continue-out"));
    goto(&mut a, Step::Model);
    set(&mut a, "model.id", "tests/fixtures/gpt2");
    goto(&mut a, Step::Names);
    set(
        &mut a,
        "continue_from",
        &format!("{SCRATCH}/continue/w32.zip"),
    );
    press(&mut a, KeyCode::BackTab);
    let errors = Step::Names.check(&a).errors;
    assert!(
        errors
            .iter()
            .any(|(k, m)| *k == "continue_from" && m.contains("32") && m.contains("64")),
        "{errors:?}"
    );
    insta::assert_snapshot!("names_continue_wrong_width", screen(&a, 80, 24));
    set(
        &mut a,
        "continue_from",
        &format!("{SCRATCH}/continue/w64.zip"),
    );
    press(&mut a, KeyCode::BackTab);
    let r = Step::Names.check(&a);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(
        r.info.iter().any(|i| i.contains("3 soft tokens")),
        "{:?}",
        r.info
    );
}
