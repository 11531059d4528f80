//! The training engine end to end on a fixture model (CPU): loss falls, held-out loss
//! improves, exports are valid, a stopped-and-resumed run equals an uninterrupted one bit
//! for bit, a failed step keeps the last finished one, and bad inputs give clear errors.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use softtune::config::RunConfig;
use softtune::model::ModelConfig;
use softtune::train::events::{Event, EventSink, VecSink, read_events};
use softtune::train::{self, Outcome, Plan};

mod common;
use common::{dataset, fixtures, hard_wrap};

fn config(dir: &Path, model: &str, extra: &str) -> RunConfig {
    let data = dataset(dir, 60_000);
    let toml = format!(
        r#"
[dataset]
path = "{data}"
[prompt]
soft_tokens = 8
[model]
id = "{model}"
[training]
tokens_per_sequence = 64
batch_size = 2
grad_accumulation = 2
lr = 0.5
warmup = 0.1
eval_fraction = 0.05
save_every = 5
seed = 7
{extra}
[output]
name = "Test prompt"
author = "softtune tests"
folder = "{out}"
[device]
device = "cpu"
"#,
        data = data.display(),
        model = fixtures().join(model).display(),
        out = dir.join("out").display(),
    );
    RunConfig::from_toml(&toml).unwrap()
}

/// Plans with `epochs` chosen so the run has exactly `steps` optimizer steps.
fn plan_steps(cfg: &mut RunConfig, run_dir: &Path, steps: usize) -> Plan {
    let probe = train::plan(&cfg.validate().unwrap(), run_dir).unwrap();
    let per_step = probe.per_step();
    cfg.training.epochs = Some((steps * per_step) as f64 / probe.rows.train.len() as f64 + 1e-9);
    let plan = train::plan(&cfg.validate().unwrap(), run_dir).unwrap();
    assert_eq!(plan.total_steps, steps);
    plan
}

fn run(plan: &Plan, stop_at: Option<usize>) -> (Outcome, Vec<Event>) {
    struct StopAt {
        inner: VecSink,
        at: Option<usize>,
        flag: Arc<AtomicBool>,
    }
    impl EventSink for StopAt {
        fn emit(&mut self, e: &Event) {
            if let (Event::Step { step, .. }, Some(at)) = (e, self.at)
                && *step == at
            {
                self.flag.store(true, Ordering::SeqCst);
            }
            self.inner.emit(e);
        }
    }
    let flag = Arc::new(AtomicBool::new(false));
    let mut sink = StopAt {
        inner: VecSink::default(),
        at: stop_at,
        flag: flag.clone(),
    };
    let out = train::run(plan, &train::Control::with_stop(flag), &mut sink).unwrap();
    (out, sink.inner.0)
}

/// The float bits of a run's final prompt.
fn prompt_bits(o: &Outcome) -> Vec<u32> {
    o.prompt.data.iter().map(|x| x.to_bits()).collect()
}

fn step_losses(events: &[Event]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect()
}

#[test]
fn twenty_steps_learn_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "llama", "");
    let run_dir = dir.path().join("run");
    let plan = plan_steps(&mut cfg, &run_dir, 20);
    let (out, events) = run(&plan, None);
    assert!(!out.stopped);
    assert_eq!(out.step, 20);

    let losses = step_losses(&events);
    assert_eq!(losses.len(), 20);
    let first: f64 = losses[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = losses[16..].iter().sum::<f64>() / 4.0;
    assert!(
        last < first - 0.05,
        "training loss did not fall: {first:.4} -> {last:.4}"
    );
    let (initial, fin) = (out.eval_initial.unwrap(), out.eval_final.unwrap());
    eprintln!("train loss {first:.4} -> {last:.4}; held-out {initial:.4} -> {fin:.4}");
    assert!(
        fin < initial - 0.05,
        "held-out loss did not improve: {initial:.4} -> {fin:.4}"
    );
    assert!(out.eval_no_prompt.is_some());

    // Exports: KoboldAI zip and PEFT adapter, read back through the prompt readers.
    let zip = plan.kobold_path();
    let peft = plan.peft_dir();
    assert_eq!(out.exports, vec![zip.clone(), peft.clone()]);
    let (p, _) = softtune::prompt::load(&zip).unwrap();
    assert_eq!((p.rows, p.dim), (8, 64));
    assert_eq!(p.data, out.prompt.data, "the zip holds the trained prompt");
    let (q, _) = softtune::prompt::load(&peft).unwrap();
    assert_eq!(
        q.data, out.prompt.data,
        "the adapter holds the trained prompt"
    );
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["num_virtual_tokens"], 8);
    assert_eq!(cfg_json["token_dim"], 64);
    assert_eq!(cfg_json["prompt_tuning_init"], "SAMPLE_VOCAB");

    // The exported prompt reproduces the reported held-out loss.
    let model_dir = fixtures().join("llama");
    let mcfg = softtune::model::ModelConfig::from_file(&model_dir.join("config.json")).unwrap();
    let w =
        softtune::model::weights::Weights::open(&[model_dir.join("model.safetensors")]).unwrap();
    let dev = Default::default();
    let model = softtune::model::CausalLm::<burn::backend::Flex>::load(
        &mcfg,
        &w,
        &dev,
        softtune::model::LoadOptions {
            dtype: burn::tensor::DType::F32,
        },
    )
    .unwrap();
    let rows: Vec<&[u32]> = plan.rows.eval.iter().map(Vec::as_slice).collect();
    let (_, with, _, _) = softtune::eval::evaluate(&model, &rows, Some(&p), 2, &dev, 2).unwrap();
    let with = with.unwrap();
    assert!((with - fin).abs() < 1e-4, "eval {with} vs reported {fin}");

    // Events went through the typed stream in order.
    assert!(matches!(
        events.first(),
        Some(Event::Started {
            total_steps: 20,
            ..
        })
    ));
    assert!(matches!(
        events.last(),
        Some(Event::Finished { stopped: false, .. })
    ));
    let checkpoints = events
        .iter()
        .filter(|e| matches!(e, Event::Checkpoint { .. }))
        .count();
    assert_eq!(checkpoints, 4, "steps 5, 10, 15 and the end");

    // Samples: at the start, every `samples.every` (= save_every) steps and at the end; the
    // continuation without a prompt never changes (frozen model, same seed); the text is the
    // start of the first held-out sequence.
    let samples: Vec<(usize, &str, &str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Sample {
                step,
                prompt,
                with_prompt,
                without_prompt,
            } => Some((
                *step,
                prompt.as_str(),
                with_prompt.as_str(),
                without_prompt.as_str(),
            )),
            _ => None,
        })
        .collect();
    let steps: Vec<usize> = samples.iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![0, 5, 10, 15, 20]);
    assert!(samples.iter().all(|s| s.3 == samples[0].3));
    assert!(samples.iter().all(|s| !s.2.is_empty() || !s.3.is_empty()));
    let start = plan
        .tokenizer
        .decode(&plan.rows.eval[0][..train::samples::DEFAULT_CONTEXT_TOKENS])
        .unwrap();
    assert_eq!(samples[0].1, start);
}

#[test]
fn samples_follow_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        "gpt2",
        "[samples]\nprompt = \"Once upon a time\"\nevery = 2\ntokens = 5\ntemperature = 0",
    );
    let plan = plan_steps(&mut cfg, &dir.path().join("run"), 4);
    let (_, events) = run(&plan, None);
    let samples: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Sample { .. }))
        .collect();
    assert_eq!(samples.len(), 3, "steps 0, 2 and 4");
    for e in &samples {
        let Event::Sample {
            prompt,
            without_prompt,
            ..
        } = e
        else {
            unreachable!()
        };
        assert_eq!(prompt, "Once upon a time");
        let n = plan.tokenizer.encode(without_prompt).unwrap().len();
        assert!(n <= 6, "at most 5 new tokens: {without_prompt:?}");
    }
    // The repetition penalty reaches the samples: the tiny model's greedy text repeats
    // itself, and penalised it does not write the same.
    let greedy_text = |extra: &str, folder: &str| {
        let mut cfg = config(
            dir.path(),
            "gpt2",
            &format!(
                "[samples]\nprompt = \"Once upon a time\"\nevery = 2\ntokens = 12\ntemperature = 0\n{extra}"
            ),
        );
        let plan = plan_steps(&mut cfg, &dir.path().join(folder), 2);
        let (_, events) = run(&plan, None);
        let text = events
            .into_iter()
            .find_map(|e| match e {
                Event::Sample { without_prompt, .. } => Some(without_prompt),
                _ => None,
            })
            .unwrap();
        let ids = plan.tokenizer.encode(&text).unwrap();
        (text, ids)
    };
    let (plain, plain_ids) = greedy_text("", "run-plain");
    let (penalised, _) = greedy_text(
        "repetition_penalty = 1.5\nrepetition_range = 0\ntop_k = 5\ntop_p = 0.9",
        "run-penalised",
    );
    assert_ne!(plain, penalised);
    let mut distinct = plain_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() < plain_ids.len(),
        "greedy repeats: {plain:?}"
    );

    let mut off = config(dir.path(), "gpt2", "[samples]\nevery = 0");
    let plan = plan_steps(&mut off, &dir.path().join("run-off"), 2);
    let (_, events) = run(&plan, None);
    assert!(!events.iter().any(|e| matches!(e, Event::Sample { .. })));
    assert!(matches!(
        events.first(),
        Some(Event::Started {
            sample_every: 0,
            ..
        })
    ));
}

#[test]
fn resume_equals_uninterrupted_bit_for_bit() {
    for optimizer in ["adamw", "adafactor"] {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("optimizer = \"{optimizer}\"");
        let mut cfg = config(dir.path(), "gpt_neox", &extra);
        let plan = plan_steps(&mut cfg, &dir.path().join("full"), 9);
        let (full, _) = run(&plan, None);

        let dir2 = tempfile::tempdir().unwrap();
        let mut cfg2 = config(dir2.path(), "gpt_neox", &extra);
        let run_dir = dir2.path().join("run");
        let plan2 = plan_steps(&mut cfg2, &run_dir, 9);
        let (part, events) = run(&plan2, Some(4));
        assert!(part.stopped, "{optimizer}: the stop flag ends the run");
        assert_eq!(part.step, 4);
        assert!(matches!(
            events.last(),
            Some(Event::Finished {
                stopped: true,
                step: 4,
                ..
            })
        ));

        cfg2.continue_from = Some(plan2.checkpoint_path());
        let plan3 = train::plan(&cfg2.validate().unwrap(), &run_dir).unwrap();
        let (resumed, events) = run(&plan3, None);
        assert!(matches!(
            events.first(),
            Some(Event::Started { start_step: 4, .. })
        ));
        assert_eq!(resumed.step, 9);
        assert_eq!(
            prompt_bits(&full),
            prompt_bits(&resumed),
            "{optimizer}: resumed run differs"
        );
        assert_eq!(full.eval_final, resumed.eval_final);
    }
}

#[test]
fn a_failed_step_keeps_the_last_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "gpt2", "");
    let run_dir = dir.path().join("run");
    let mut plan = plan_steps(&mut cfg, &run_dir, 9);
    // Step 7 fails: its first sequence holds a token the model has no embedding for (as
    // an out-of-memory error or a crashed kernel would, hours into a run). The last
    // checkpoint (save_every = 5) holds step 5.
    let per_step = plan.per_step();
    let rows = train::data_indices(plan.rows.train.len(), plan.cfg.seed, 6 * per_step, per_step);
    plan.rows.train[rows[0]][3] = plan.model_cfg.vocab_size as u32 + 1000;
    let mut sink = VecSink::default();
    let err = train::run(&plan, &train::Control::default(), &mut sink)
        .expect_err("the step with a token outside the vocabulary fails");
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("step 7 failed: ")
            && msg.contains("index 1512 out of bounds")
            && msg.ends_with("; the prompt after step 6 is saved (checkpoint and exports)"),
        "{msg}"
    );
    let events = sink.0;
    let steps: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    match &events[events.len() - 2] {
        Event::Checkpoint {
            step: 6, exports, ..
        } => {
            assert_eq!(exports.len(), 2);
            assert!(exports.iter().all(|e| Path::new(e).exists()), "{exports:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(events.last(), Some(Event::Error { message }) if *message == msg));
    let ck = softtune::train::checkpoint::Checkpoint::load(&plan.checkpoint_path()).unwrap();
    assert_eq!(ck.step, 6);

    // Resumed from that checkpoint (the data whole again), the run ends with the prompt of
    // one that never failed.
    cfg.continue_from = Some(plan.checkpoint_path());
    let resumed = train::plan(&cfg.validate().unwrap(), &run_dir).unwrap();
    let (resumed, _) = run(&resumed, None);
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg2 = config(dir2.path(), "gpt2", "");
    let (full, _) = run(&plan_steps(&mut cfg2, &dir2.path().join("run"), 9), None);
    assert_eq!(prompt_bits(&resumed), prompt_bits(&full));

    // A failure right after a checkpoint saves nothing new, and says where the prompt is.
    let mut cfg3 = config(dir2.path(), "gpt2", "");
    let mut plan = plan_steps(&mut cfg3, &dir2.path().join("again"), 9);
    let rows = train::data_indices(plan.rows.train.len(), plan.cfg.seed, 5 * per_step, per_step);
    plan.rows.train[rows[1]][0] = u32::MAX;
    let mut sink = VecSink::default();
    let err = train::run(&plan, &train::Control::default(), &mut sink).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("step 6 failed: ")
            && msg.ends_with("; the checkpoint holds the prompt after step 5"),
        "{msg}"
    );
    let checkpoints = sink
        .0
        .iter()
        .filter(|e| matches!(e, Event::Checkpoint { .. }))
        .count();
    assert_eq!(checkpoints, 1);
}

#[test]
fn the_command_line_trains_headless() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 30_000);
    let toml = format!(
        "[dataset]\npath = \"{}\"\n[prompt]\ntext = \"Permission is hereby granted\"\nsoft_tokens = 4\n[model]\nid = \"{}\"\n[training]\ntokens_per_sequence = 32\nbatch_size = 2\ngrad_accumulation = 2\nepochs = 0.05\nlr = 0.05\n[output]\nname = \"cli\"\nfolder = \"out\"\n[device]\ndevice = \"cpu\"\n",
        data.display(),
        fixtures().join("gpt2").display()
    );
    let path = dir.path().join("run.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softtune"))
        .args(["train", "--foreground", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("finished at step"), "{stdout}");
    assert!(stdout.contains("with the trained prompt"), "{stdout}");
    // The hint to try the prompt is a command that works on the exported zip.
    let hint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("try it: softtune "))
        .unwrap_or_else(|| panic!("no generate hint in {stdout}"));
    let args: Vec<&str> = hint
        .split(" [")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(args.contains(&"--compare"), "{hint}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softtune"))
        .args(&args)
        .args(["--tokens", "5", "--seed", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("--- with the prompt, seed 1 ---\n"),
        "{text}"
    );
    assert!(
        text.contains("\n--- without a prompt, seed 1 ---\n"),
        "{text}"
    );
    let run_dir = dir.path().join("out/cli-v1-run");
    let events = read_events(&run_dir.join("events.jsonl")).unwrap();
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    assert!(dir.path().join("out/cli-v1.zip").is_file());
    assert!(
        dir.path()
            .join("out/cli-v1-peft/adapter_model.safetensors")
            .is_file()
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/cli-v1-peft/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["prompt_tuning_init"], "TEXT");
    assert_eq!(
        cfg["prompt_tuning_init_text"],
        "Permission is hereby granted"
    );
}

fn plan_err(cfg: &RunConfig, dir: &Path) -> String {
    match cfg.validate() {
        Err(e) => format!("{e:#}"),
        Ok(v) => match train::plan(&v, &dir.join("run")) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("expected an error"),
        },
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();

    // Unknown key: names the key and the line.
    let e = RunConfig::from_toml("[training]\nlearning_rate = 0.1\n").unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("learning_rate") && msg.contains("line 2"),
        "{msg}"
    );

    // Bad values name key and what is allowed.
    let mut cfg = config(dir.path(), "gpt2", "");
    cfg.training.optimizer = Some("sgd".into());
    cfg.training.lr = Some(-1.0);
    let msg = plan_err(&cfg, dir.path());
    assert!(
        msg.contains("training.optimizer") && msg.contains("adamw or adafactor"),
        "{msg}"
    );
    assert!(msg.contains("training.lr"), "{msg}");

    // Sampling settings out of range: each named, with what is usual.
    let mut cfg = config(dir.path(), "gpt2", "");
    cfg.samples.top_p = Some(0.0);
    cfg.samples.repetition_penalty = Some(-1.0);
    let msg = plan_err(&cfg, dir.path());
    assert!(
        msg.contains("`samples.top_p` = 0: use a number above 0 and at most 1"),
        "{msg}"
    );
    assert!(
        msg.contains("`samples.repetition_penalty` = -1: use a number above 0"),
        "{msg}"
    );

    // Too small for one sequence.
    let mut cfg = config(dir.path(), "gpt2", "");
    let tiny = dir.path().join("tiny.txt");
    std::fs::write(&tiny, "Just a few words.").unwrap();
    cfg.dataset.path = Some(tiny);
    let msg = plan_err(&cfg, dir.path());
    assert!(msg.contains("fewer than one sequence of 64"), "{msg}");

    // Fewer rows than one optimizer step.
    let mut cfg = config(dir.path(), "gpt2", "");
    cfg.training.grad_accumulation = Some(5000);
    let msg = plan_err(&cfg, dir.path());
    assert!(
        msg.contains("fewer than one optimizer step needs")
            && msg.contains("grad_accumulation 5000"),
        "{msg}"
    );

    // Non-UTF-8 file: names the file and the byte offset.
    let mut cfg = config(dir.path(), "gpt2", "");
    let bad = dir.path().join("latin1.txt");
    let mut bytes = b"caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b" au lait");
    std::fs::write(&bad, bytes).unwrap();
    cfg.dataset.path = Some(bad);
    let msg = plan_err(&cfg, dir.path());
    assert!(
        msg.contains("latin1.txt") && msg.contains("byte offset 3"),
        "{msg}"
    );

    // Continue from a prompt of the wrong width.
    let mut cfg = config(dir.path(), "gpt2", "");
    let zip = dir.path().join("narrow.zip");
    let p = softtune::prompt::SoftPrompt::new(4, 32, vec![0.1; 128]).unwrap();
    softtune::export::write_kobold_zip(&zip, &p, &Default::default(), false).unwrap();
    cfg.continue_from = Some(zip);
    let msg = plan_err(&cfg, dir.path());
    assert!(msg.contains("32") && msg.contains("64"), "{msg}");

    // A pickle is refused.
    let mut cfg = config(dir.path(), "gpt2", "");
    let pt = dir.path().join("prompt.pt");
    std::fs::write(&pt, b"\x80\x02}q\x00.").unwrap();
    cfg.continue_from = Some(pt);
    let msg = plan_err(&cfg, dir.path());
    assert!(msg.to_lowercase().contains("pickle"), "{msg}");

    // Sequence longer than the context.
    let mut cfg = config(dir.path(), "gpt2", "");
    cfg.training.tokens_per_sequence = Some(200);
    let msg = plan_err(&cfg, dir.path());
    assert!(msg.contains("context length 128"), "{msg}");
}

#[test]
fn continue_from_a_kobold_zip_starts_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "gpt2", "");
    let zip = dir.path().join("start.zip");
    let p = softtune::prompt::SoftPrompt::new(5, 64, (0..320).map(|i| (i as f32) * 1e-3).collect())
        .unwrap();
    softtune::export::write_kobold_zip(&zip, &p, &Default::default(), false).unwrap();
    cfg.continue_from = Some(zip);
    let plan = plan_steps(&mut cfg, &dir.path().join("run"), 2);
    assert_eq!(
        plan.soft_tokens, 5,
        "the prompt file decides the soft-token count"
    );
    let (out, _) = run(&plan, None);
    assert_eq!((out.prompt.rows, out.prompt.dim), (5, 64));
    assert_ne!(out.prompt.data, p.data, "training moved the prompt");
}

#[test]
fn the_demo_configuration_and_dataset_work() {
    // examples/demo.toml as shipped, with the Hub model swapped for a fixture of the same
    // family (no network in tests) and sequences that fit its 128-token context.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml");
    let mut cfg = RunConfig::from_file(&path).unwrap();
    assert_eq!(cfg.model.id.as_deref(), Some("HuggingFaceTB/SmolLM-135M"));
    let dir = tempfile::tempdir().unwrap();
    cfg.model.id = Some(fixtures().join("llama").display().to_string());
    cfg.training.tokens_per_sequence = Some(100);
    cfg.output.folder = Some(dir.path().join("out"));
    cfg.device.device = Some("cpu".into());
    let plan = plan_steps(&mut cfg, &dir.path().join("run"), 2);
    assert!(
        plan.rows.train.len() > 1000,
        "the demo text makes {} rows",
        plan.rows.train.len()
    );
    let (out, _) = run(&plan, None);
    assert_eq!(out.step, 2);
    assert!(dir.path().join("out/kjv-demo.zip").is_file());
}

/// Splitting a step's sequences over threads (the CPU path) gives the sequential result: the
/// same loss and gradient up to float rounding, with one thread exactly the sequential sum.
#[test]
fn threaded_accumulation_equals_sequential() {
    use burn::backend::{Autodiff, Flex};
    use softtune::model::weights::Weights;
    use softtune::model::{CausalLm, LoadOptions, ModelConfig};
    use softtune::train::{accumulate, micro_step};

    type B = Autodiff<Flex>;
    let dir = fixtures().join("llama");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = Weights::open(&[dir.join("model.safetensors")]).unwrap();
    let dev = Default::default();
    let model = CausalLm::<B>::load(
        &cfg,
        &w,
        &dev,
        LoadOptions {
            dtype: burn::tensor::DType::F32,
        },
    )
    .unwrap();
    let (n, d) = (4, cfg.d_embed);
    let prompt: Vec<f32> = (0..n * d).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let data: Vec<Vec<u32>> = (0..8)
        .map(|r| (0..24).map(|t| ((r * 31 + t * 7) % 97) as u32).collect())
        .collect();
    let rows: Vec<&[u32]> = data.iter().map(Vec::as_slice).collect();

    // Batch 4, accumulation 2: one thread is exactly the sequential sum of micro-steps.
    let (l1, g1) = accumulate(&model, &prompt, n, d, &rows, 4, 1).unwrap();
    let mut sum = vec![0f32; n * d];
    let mut loss = 0.0;
    for micro in rows.chunks(4) {
        let ids = softtune::eval::ids_tensor::<B>(micro, &dev);
        let (l, g) = micro_step(&model, &prompt, n, d, ids).unwrap();
        loss += l;
        for (a, b) in sum.iter_mut().zip(g) {
            *a += b;
        }
    }
    let seq: Vec<f32> = sum.iter().map(|x| x / 2.0).collect();
    assert_eq!(l1, loss / 2.0);
    assert_eq!(g1, seq);

    let max_rel = |a: &[f32], b: &[f32]| {
        let m = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
    };
    // Held-out loss: batches side by side give the sequential value bit for bit.
    let p = softtune::eval::prompt_tensor::<B>(&prompt, n, d, &dev);
    for batch in [1, 3] {
        let one = softtune::eval::mean_loss(&model, &rows, Some(&p), batch, &dev, 1).unwrap();
        let three = softtune::eval::mean_loss(&model, &rows, Some(&p), batch, &dev, 3).unwrap();
        assert_eq!(one.to_bits(), three.to_bits(), "batch {batch}");
    }

    // Two and three threads: micro-batches split in parts, or run side by side.
    for (batch, threads) in [(4, 2), (4, 3), (2, 3), (1, 2)] {
        let (l, g) = accumulate(&model, &prompt, n, d, &rows, batch, threads).unwrap();
        let (lr, gr) = accumulate(&model, &prompt, n, d, &rows, batch, 1).unwrap();
        assert!(
            (l - lr).abs() < 1e-6 * lr.abs(),
            "{batch}/{threads}: {l} vs {lr}"
        );
        let e = max_rel(&g, &gr);
        assert!(e < 1e-5, "{batch}/{threads}: gradient differs by {e:e}");
        assert!(g.iter().any(|x| *x != 0.0));
    }
}

/// XGLM (fairseq dense) scales token embeddings by √d_model: the PEFT adapter holds the
/// model's input as trained, KoboldAI's zip the same prompt before that scale (as KoboldAI
/// inserts it), and reading the zip back for this model gives the trained prompt again.
#[test]
fn xglm_kobold_prompts_sit_before_the_embedding_scale() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "xglm", "");
    let plan = plan_steps(&mut cfg, &dir.path().join("run"), 2);
    let (out, _) = run(&plan, None);
    let (peft, _) = softtune::prompt::load(&plan.peft_dir()).unwrap();
    assert_eq!(peft.data, out.prompt.data);
    let (zip, _) = softtune::prompt::load(&plan.kobold_path()).unwrap();
    let scale = plan.model_cfg.kobold_scale().unwrap();
    assert_eq!(scale, 8.0, "√64");
    let unscaled: Vec<f32> = out.prompt.data.iter().map(|v| v / scale).collect();
    assert_eq!(zip.data, unscaled);
    let back = softtune::prompt::load_for_model(&plan.kobold_path(), &plan.model_cfg).unwrap();
    assert_eq!(back.data, out.prompt.data);
    let peft_back = softtune::prompt::load_for_model(&plan.peft_dir(), &plan.model_cfg).unwrap();
    assert_eq!(peft_back.data, out.prompt.data);
    // Other families take KoboldAI's prompts as they are.
    let gpt2 = ModelConfig::from_file(&fixtures().join("gpt2/config.json")).unwrap();
    assert_eq!(gpt2.kobold_scale(), None);
}

/// A folder of a Word document, an OpenDocument text, a work downloaded from the Archive of
/// Our Own as HTML and the Word document converted to RTF by pandoc, with a `.docx` starter
/// file, plans the rows and the starter a folder of the text they were made from does
/// (`tests/fixtures/docx/make_docx.py`, `tests/fixtures/rtf/make_rtf.py`): the documents
/// reach training as their text (the AO3 page without its preface, notes and afterword),
/// each followed by EOS like a text file.
#[test]
fn documents_train_as_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures().join("docx");
    let expected = std::fs::read_to_string(fixture.join("book.txt")).unwrap();
    let chapter: String = expected
        .split("\n\n")
        .map(|p| format!("<p>{}</p>\n", p.replace('\n', "<br>\n")))
        .collect();
    let page = format!(
        r#"<!DOCTYPE html><html><head><meta charset="UTF-8"><title>Book</title></head><body>
<div id="preface"><h2 class="toc-heading">Preface</h2><p class="message"><b>Book</b><br/>
Posted originally on the <a href="http://archiveofourown.org/">Archive of Our Own</a> at
<a href="http://archiveofourown.org/works/1">http://archiveofourown.org/works/1</a>.</p>
<div class="meta"><dl class="tags"><dt>Rating:</dt><dd>Not Rated</dd></dl><h1>Book</h1>
<p>Summary</p><blockquote class="userstuff"><p>Terms.</p></blockquote></div></div>
<div id="chapters" class="userstuff"><div class="userstuff">
{chapter}</div></div>
<div id="afterword"><h2 class="toc-heading">Afterword</h2><p class="message">Please drop by the Archive and comment to let the creator know if you enjoyed their work!</p></div>
</body></html>"#
    );
    std::fs::write(dir.path().join("book.html"), page).unwrap();
    let plan_of = |name: &str, files: &[(&str, &str)], glob: &str| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        for (from, to) in files {
            let from = if from.ends_with(".html") {
                dir.path().join(from)
            } else {
                fixture.join(from)
            };
            std::fs::copy(from, data.join(to)).unwrap();
        }
        let mut cfg = config(dir.path(), "llama", "");
        cfg.dataset.path = Some(data.clone());
        cfg.dataset.glob = Some(glob.into());
        cfg.prompt.file = Some(fixture.join("book.docx"));
        cfg.training.tokens_per_sequence = Some(48);
        let valid = cfg.validate().unwrap();
        assert_eq!(valid.starter.as_deref(), Some(expected.as_str()));
        train::plan(&valid, &dir.path().join(format!("{name}-run"))).unwrap()
    };
    let documents = plan_of(
        "documents",
        &[
            ("book.docx", "a.docx"),
            ("book.odt", "b.odt"),
            ("book.html", "c.html"),
            ("../rtf/book.rtf", "d.rtf"),
        ],
        "[abcd].*",
    );
    let texts = plan_of(
        "texts",
        &[
            ("book.txt", "a.txt"),
            ("book.txt", "b.txt"),
            ("book.txt", "c.txt"),
            ("book.txt", "d.txt"),
        ],
        "*.txt",
    );
    assert!(documents.rows.train.len() > 20);
    assert_eq!(documents.rows.train, texts.rows.train);
    assert_eq!(documents.rows.eval, texts.rows.eval);
}

/// A hard-wrapped book (its paragraphs broken at 70 columns) trains as the book with whole
/// paragraphs when `dataset.unwrap` is on. With it off, the plan trains on the wrapped text
/// and its note names the file and the setting. The setting enters the token cache's key
/// and the run's fingerprint.
#[test]
fn wrapped_books_train_unwrapped() {
    let dir = tempfile::tempdir().unwrap();
    let book = std::fs::read_to_string(fixtures().join("docx/book.txt")).unwrap();
    let plan_of = |name: &str, text: &str, unwrap: Option<bool>| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("book.txt"), text).unwrap();
        let mut cfg = config(dir.path(), "llama", "");
        cfg.dataset.path = Some(data);
        cfg.dataset.unwrap = unwrap;
        cfg.training.tokens_per_sequence = Some(48);
        let valid = cfg.validate().unwrap();
        train::plan(&valid, &dir.path().join(format!("{name}-run"))).unwrap()
    };
    let wrapped = hard_wrap(&book, 70);
    assert!(wrapped.lines().count() > book.lines().count() + 100);
    let plain = plan_of("plain", &book, None);
    assert!(plain.notes.is_empty(), "{:?}", plain.notes);
    assert!(plain.rows.train.len() > 20);

    let joined = plan_of("joined", &wrapped, Some(true));
    assert_eq!(joined.rows.train, plain.rows.train);
    assert_eq!(joined.rows.eval, plain.rows.eval);
    assert_eq!(joined.notes.len(), 1, "{:?}", joined.notes);
    assert!(
        joined.notes[0].contains("1 file is hard-wrapped at about 70 characters (book.txt)")
            && joined.notes[0].contains("joined"),
        "{}",
        joined.notes[0]
    );

    let kept = plan_of("kept", &wrapped, Some(false));
    assert_ne!(kept.rows.train, plain.rows.train);
    assert_ne!(kept.fingerprint, joined.fingerprint);
    let note = &kept.notes[0];
    assert!(
        note.contains("(book.txt)") && note.contains("`dataset.unwrap = true`"),
        "{note}"
    );
    // Planned again from the token cache: no file is read, and the notes are the same
    // (kept beside the cache); a cache made before that record existed only loses them.
    let again = plan_of("kept", &wrapped, Some(false));
    assert!(again.cache_hit);
    assert_eq!(again.notes, kept.notes);
    assert_eq!(again.fingerprint, kept.fingerprint);
    let records: Vec<_> = std::fs::read_dir(dir.path().join("kept-run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".found.json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    std::fs::remove_file(&records[0]).unwrap();
    let old_cache = plan_of("kept", &wrapped, Some(false));
    assert!(old_cache.cache_hit && old_cache.notes.is_empty());
    assert_eq!(old_cache.rows.train, kept.rows.train);
}

/// Stories kept in one text file, each ended by `<|endoftext|>` as KoboldAI datasets are,
/// train exactly as the same stories in files of their own: each ends with the model's EOS
/// token, not the tokenizer's `<|endoftext|>` token (the fixture model is copied with
/// another EOS id, as Llama's `</s>` is), and the plan's note counts them.
#[test]
fn stories_separated_in_one_file_train_as_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("llama").join(f), model.join(f)).unwrap();
    }
    let config_json = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(config_json.contains("\"eos_token_id\": 0,"));
    std::fs::write(
        model.join("config.json"),
        config_json.replace("\"eos_token_id\": 0,", "\"eos_token_id\": 2,"),
    )
    .unwrap();
    let book = std::fs::read_to_string(fixtures().join("docx/book.txt")).unwrap();
    let paragraphs: Vec<&str> = book.split("\n\n").collect();
    let third = paragraphs.len() / 3;
    let stories: Vec<String> = paragraphs
        .chunks(third)
        .take(3)
        .map(|p| format!("{}\n", p.join("\n\n")))
        .collect();
    let plan_of = |name: &str, files: &[(String, String)]| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        for (file, text) in files {
            std::fs::write(data.join(file), text).unwrap();
        }
        let mut cfg = config(dir.path(), model.to_str().unwrap(), "");
        cfg.dataset.path = Some(data);
        cfg.training.tokens_per_sequence = Some(48);
        let valid = cfg.validate().unwrap();
        train::plan(&valid, &dir.path().join(format!("{name}-run"))).unwrap()
    };
    let apart = plan_of(
        "apart",
        &stories
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{i}.txt"), s.clone()))
            .collect::<Vec<_>>(),
    );
    assert!(apart.notes.is_empty(), "{:?}", apart.notes);
    assert!(apart.rows.train.len() > 20);

    let one = format!(
        "<|endoftext|>\n{}<|endoftext|>\n\n{}<|endoftext|>  \r\n{}\n<|endoftext|>\n",
        stories[0], stories[1], stories[2]
    );
    let together = plan_of("together", &[("stories.txt".into(), one)]);
    assert_eq!(together.rows.train, apart.rows.train);
    assert_eq!(together.rows.eval, apart.rows.eval);
    // The tokenizer's own `<|endoftext|>` (id 0) is not trained on.
    assert!(!together.rows.train.iter().flatten().any(|&id| id == 0));
    assert_eq!(
        together.notes,
        [
            "1 file (stories.txt) holds 3 stories separated by <|endoftext|>: each ends with the model's EOS token, as a file does"
        ]
    );
}

/// A book saved after it was decoded the wrong way (UTF-8 read as Windows-1252: `’` reads
/// `â€™`, `í` reads `Ã` and a soft hyphen), as a text file and as an HTML page, trains as
/// the book; the plan's note names the files and how many characters were put back.
#[test]
fn mangled_text_trains_as_it_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let book = std::fs::read_to_string(fixtures().join("docx/book.txt")).unwrap();
    let book = format!("“It’s late,” said Zoë — the café’s last customer… Sí, María.\n\n{book}");
    let mangled = encoding_rs::WINDOWS_1252
        .decode_without_bom_handling(book.as_bytes())
        .0
        .into_owned();
    assert!(mangled.contains("â€™"));
    let page: String = book
        .split("\n\n")
        .map(|p| format!("<p>{}</p>\n", p.replace('\n', "<br>\n")))
        .collect();
    let plan_of = |name: &str, files: &[(&str, &str)]| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        for (file, text) in files {
            std::fs::write(data.join(file), text).unwrap();
        }
        let mut cfg = config(dir.path(), "llama", "");
        cfg.dataset.path = Some(data);
        cfg.dataset.glob = Some("*".into());
        cfg.training.tokens_per_sequence = Some(48);
        let valid = cfg.validate().unwrap();
        train::plan(&valid, &dir.path().join(format!("{name}-run"))).unwrap()
    };
    let written = plan_of("written", &[("a.txt", &book), ("b.txt", &book)]);
    assert!(written.notes.is_empty(), "{:?}", written.notes);
    let html = encoding_rs::WINDOWS_1252
        .decode_without_bom_handling(
            format!("<html><head><meta charset=\"utf-8\"></head><body>{page}</body></html>")
                .as_bytes(),
        )
        .0
        .into_owned();
    let mangled = plan_of("mangled", &[("a.txt", &mangled), ("b.html", &html)]);
    assert_eq!(mangled.rows.train, written.rows.train);
    assert_eq!(mangled.rows.eval, written.rows.eval);
    let characters = 2 * book.chars().filter(|c| !c.is_ascii()).count();
    assert_eq!(
        mangled.notes,
        [format!(
            "2 files (a.txt, b.html) had text decoded the wrong way before it was saved (\"â€œ\" for \"“\"): {characters} characters put back"
        )]
    );
}
