//! Detached runs end to end through the binary, on the gpt2 fixture (CPU): the worker
//! survives SIGHUP and its launcher's end, `runs`/`attach` report and replay it, its
//! exports equal a foreground run's, a killed worker is reported failed, `stop` ends a
//! run as stopped with a checkpoint and `resume` takes a stopped or killed run on to the
//! prompt an uninterrupted run gives. Each test has its own data folder (SOFTTUNE_DATA_DIR).

#![cfg(unix)]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use softtune::train::events::{Event, read_events};

mod common;
use common::{dataset, fixtures};

/// A configuration file in `dir` (30 kB of text: 104 steps per epoch); exports go to
/// `dir/<out>`. Relative paths, as a user writes them.
fn config(dir: &Path, name: &str, epochs: f64, out: &str) -> PathBuf {
    dataset(dir, 30_000);
    let toml = format!(
        r#"[dataset]
path = "data"
[prompt]
text = "Permission is hereby granted"
soft_tokens = 4
[model]
id = "{model}"
[training]
tokens_per_sequence = 32
batch_size = 2
grad_accumulation = 2
epochs = {epochs}
lr = 0.05
seed = 11
save_every = 1000
[output]
name = "detached"
folder = "{out}"
[device]
device = "cpu"
"#,
        model = fixtures().join("gpt2").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

fn softtune(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_softtune"));
    c.env("SOFTTUNE_DATA_DIR", data).env("HF_HUB_OFFLINE", "1");
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a softtune command to its end (at most `secs` seconds). Its output is read while it
/// runs, so a long one never blocks on a full pipe.
fn run(data: &Path, args: &[&str], secs: u64) -> Output {
    use std::io::Read;
    let mut child = softtune(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut late = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            late = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !late,
        "softtune {args:?} took more than {secs} s:\n{}",
        text(&out).0
    );
    out
}

/// The float bits of an exported prompt (a KoboldAI zip or a PEFT adapter folder).
fn prompt_bits(path: &Path) -> Vec<u32> {
    let (p, _) = softtune::prompt::load(path).unwrap();
    p.data.iter().map(|x| x.to_bits()).collect()
}

/// Trains `config` uninterrupted in the foreground, its exports going to `dir/<out>`
/// instead; returns that folder.
fn uninterrupted(data: &Path, dir: &Path, config: &Path, out: &str) -> PathBuf {
    let copy = dir.join(format!("{out}.toml"));
    let toml = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        &copy,
        toml.replace("folder = \"out\"", &format!("folder = \"{out}\"")),
    )
    .unwrap();
    let result = run_fg(data, &copy, &dir.join(format!("{out}-run")));
    assert!(result.status.success(), "{:?}", text(&result));
    dir.join(out)
}

/// Polls `f` every 50 ms until it gives a value, for at most `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(
            Instant::now() < until,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The only run folder under `data`.
fn run_dir(data: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(data.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn state(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Launches a detached run and returns its folder and its worker's pid (killed when the
/// guard drops, so a failing test leaves no worker behind).
fn launch(data: &Path, config: &Path) -> (PathBuf, Worker) {
    let t0 = Instant::now();
    let out = run(data, &["train", "--config", config.to_str().unwrap()], 60);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the launcher returns at once"
    );
    assert!(stdout.contains("started in the background"), "{stdout}");
    let dir = run_dir(data);
    let id = dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        stdout.contains(&format!("softtune attach {id}")),
        "{stdout}"
    );
    let pid = wait_for(20, "the worker's pid", || {
        state(&dir)?["pid"].as_u64().map(|p| p as i32)
    });
    (dir, Worker(pid))
}

struct Worker(i32);

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: sends a signal to the worker this test started.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

fn step(st: &Value) -> u64 {
    st["step"].as_u64().unwrap_or(0)
}

/// Waits until the worker has done at least `n` steps (and is still running).
fn wait_steps(dir: &Path, n: u64) -> Value {
    wait_for(60, "training steps", || {
        state(dir).filter(|s| s["state"] == "running" && step(s) >= n)
    })
}

fn wait_done(dir: &Path, secs: u64) -> Value {
    wait_for(secs, "the run to end", || {
        state(dir).filter(|s| s["state"] != "running")
    })
}

/// Field `n` (1-based) of /proc/PID/stat.
fn proc_stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

#[test]
fn a_detached_worker_survives_hangup_and_attach_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 5.0, "out");

    // The launcher runs in a shell with its own process group, standing in for a login
    // session: the shell waits on after the launcher returns, and then the whole group gets
    // SIGHUP, as when the SSH connection drops.
    let mut session = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" train --config \"$1\" && exec sleep 60")
        .arg(env!("CARGO_BIN_EXE_softtune"))
        .arg(&cfg)
        .env("SOFTTUNE_DATA_DIR", &data)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let folder = wait_for(20, "the run folder", || {
        let d = std::fs::read_dir(data.join("runs"))
            .ok()?
            .next()?
            .ok()?
            .path();
        Some(d)
    });
    let id = folder.file_name().unwrap().to_str().unwrap().to_string();
    let pid = wait_for(20, "the worker's pid", || {
        state(&folder)?["pid"].as_u64().map(|p| p as i32)
    });
    let _guard = Worker(pid);
    let st = wait_steps(&folder, 2);
    let total = st["total_steps"].as_u64().unwrap();
    assert_eq!(total, 520);
    assert!(step(&st) < total);

    // The worker has its own session (it is its leader), without the launcher's terminal.
    let test_sid = proc_stat_field(std::process::id() as i32, 6).unwrap();
    assert_ne!(proc_stat_field(pid, 6).unwrap(), test_sid, "own session");
    assert_eq!(proc_stat_field(pid, 6).unwrap(), pid.to_string());
    // Hang up the "session": the shell dies of it; a hang-up sent to the worker itself is
    // ignored.
    unsafe {
        assert_eq!(libc::kill(-(session.id() as i32), libc::SIGHUP), 0);
        assert_eq!(libc::kill(pid, libc::SIGHUP), 0);
    }
    let status = session.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
    std::thread::sleep(Duration::from_millis(300));
    let st = state(&folder).unwrap();
    assert_eq!(
        st["state"], "running",
        "SIGHUP did not stop the worker: {st}"
    );
    assert!(step(&st) < total, "{st}");

    // attach follows the live run to its end.
    let out = run(&data, &["attach", &id], 60);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("following"), "{stdout}");
    assert!(
        stdout.contains(&format!("finished at step {total}")),
        "{stdout}"
    );

    let st = wait_done(&folder, 30);
    assert_eq!(st["state"], "finished", "{st}");
    assert_eq!(step(&st), total);
    let zip = dir.path().join("out/detached-v1.zip");
    assert!(zip.is_file());
    assert_eq!(st["exports"][0], zip.display().to_string());
    assert!(folder.join("checkpoint.safetensors").is_file());
    assert!(folder.join("config.toml").is_file());
    let log = std::fs::read_to_string(folder.join("worker.log")).unwrap();
    assert!(log.contains(&format!("step {total}/{total}")), "{log}");
    assert!(
        log.contains("dataset tokens read from the cache"),
        "the launcher planned (and tokenized) before detaching: {log}"
    );

    // runs: one line, finished, with the progress and the exports.
    let out = run(&data, &["runs"], 20);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let line = stdout.lines().next().unwrap();
    assert!(line.starts_with(&id), "{stdout}");
    assert!(line.contains("finished"), "{stdout}");
    assert!(line.contains(&format!("step {total}/{total}")), "{stdout}");
    assert!(line.contains("detached-v1.zip"), "{stdout}");

    // attach (newest run by default) replays the whole recorded history.
    let out = run(&data, &["attach"], 20);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = read_events(&folder.join("events.jsonl")).unwrap();
    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::Step { .. }))
        .count();
    assert_eq!(steps as u64, total);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("step ")).count() as u64,
        total,
        "{stdout}"
    );
    assert!(stdout.contains("started: "), "{stdout}");
    assert!(
        stdout.contains(&format!("finished at step {total}")),
        "{stdout}"
    );
    assert!(stdout.contains("with the trained prompt"), "{stdout}");
    assert!(
        !stdout.contains("following"),
        "a finished run is not followed"
    );
}

#[test]
fn a_detached_run_exports_what_a_foreground_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let detached = config(dir.path(), "a.toml", 0.5, "out-a");
    let foreground = config(dir.path(), "b.toml", 0.5, "out-b");

    let (folder, _worker) = launch(&data, &detached);
    let out = run_fg(&data, &foreground, &dir.path().join("fg-run"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("finished at step 52"), "{stdout}");
    let st = wait_done(&folder, 60);
    assert_eq!(st["state"], "finished", "{st}");
    assert!(
        !data.join("runs").join("fg-run").exists(),
        "foreground runs are not listed"
    );

    let bits = |p: &Path| {
        let (p, _) = softtune::prompt::load(p).unwrap();
        assert_eq!((p.rows, p.dim), (4, 64));
        p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let a = dir.path().join("out-a/detached-v1.zip");
    let b = dir.path().join("out-b/detached-v1.zip");
    assert_eq!(bits(&a), bits(&b), "KoboldAI exports differ");

    // The run's worker printed how to try its prompt, and that command continues a text
    // with the run's checkpoint as the exported zip does with the same model.
    let id = folder.file_name().unwrap().to_str().unwrap();
    let log = std::fs::read_to_string(folder.join("worker.log")).unwrap();
    assert!(
        log.contains(&format!("try it: softtune generate --run {id} --compare")),
        "{log}"
    );
    let greedy = [
        "--temperature",
        "0",
        "--tokens",
        "8",
        "--seed",
        "3",
        "--compare",
        "It was",
    ];
    let from_run = softtune(&data)
        .args(["generate", "--run", &id[..id.len() - 2]])
        .args(greedy)
        .output()
        .unwrap();
    let (run_out, run_err) = text(&from_run);
    assert!(from_run.status.success(), "{run_err}");
    assert!(
        run_err.contains(&format!("run {id} at step 52 of 52 (4 soft tokens)")),
        "{run_err}"
    );
    let from_zip = softtune(&data)
        .args([
            "generate",
            "--model",
            fixtures().join("gpt2").to_str().unwrap(),
        ])
        .args(["--prompt", a.to_str().unwrap()])
        .args(greedy)
        .output()
        .unwrap();
    let (zip_out, zip_err) = text(&from_zip);
    assert!(from_zip.status.success(), "{zip_err}");
    assert_eq!(run_out, zip_out);
    assert!(
        run_out.starts_with("--- with the prompt, seed "),
        "{run_out}"
    );
    let both = softtune(&data)
        .args([
            "generate",
            "--run",
            id,
            "--prompt",
            a.to_str().unwrap(),
            "x",
        ])
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert_eq!(
        bits(&dir.path().join("out-a/detached-v1-peft")),
        bits(&dir.path().join("out-b/detached-v1-peft")),
        "PEFT exports differ"
    );
    let last = |p: &Path| read_events(p).unwrap().pop().unwrap();
    let (ea, eb) = (
        last(&folder.join("events.jsonl")),
        last(&dir.path().join("fg-run/events.jsonl")),
    );
    match (ea, eb) {
        (
            Event::Finished {
                eval_final: fa,
                step: sa,
                ..
            },
            Event::Finished {
                eval_final: fb,
                step: sb,
                ..
            },
        ) => {
            assert_eq!((sa, fa), (sb, fb));
        }
        other => panic!("{other:?}"),
    }
}

fn run_fg(data: &Path, config: &Path, run_dir: &Path) -> Output {
    run(
        data,
        &[
            "train",
            "--foreground",
            "--config",
            config.to_str().unwrap(),
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
        60,
    )
}

#[test]
fn a_killed_worker_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 50.0, "out");
    let (folder, worker) = launch(&data, &cfg);
    wait_steps(&folder, 3);
    unsafe {
        assert_eq!(libc::kill(worker.0, libc::SIGKILL), 0);
    }
    let id = folder.file_name().unwrap().to_str().unwrap().to_string();
    let line = wait_for(20, "`runs` to report the dead worker", || {
        let out = run_cmd(&data, &["runs"]);
        let line = out.lines().next()?.to_string();
        (!line.contains("running")).then_some(line)
    });
    assert!(line.starts_with(&id), "{line}");
    assert!(line.contains("failed"), "{line}");
    assert!(line.contains("worker died"), "{line}");
    // Recorded, not only reported.
    let st = state(&folder).unwrap();
    assert_eq!(st["state"], "failed", "{st}");
    assert!(st["message"].as_str().unwrap().contains("is gone"), "{st}");
    // attach says so too, and exits non-zero.
    let out = run(&data, &["attach", &id], 20);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("failed") && stderr.contains("worker died"),
        "{stderr}"
    );
    assert!(
        stdout.contains("step 1/"),
        "the history is replayed: {stdout}"
    );
}

fn run_cmd(data: &Path, args: &[&str]) -> String {
    let out = run(data, args, 20);
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out).0
}

#[test]
fn stop_ends_a_run_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 50.0, "out");
    let (folder, _worker) = launch(&data, &cfg);
    wait_steps(&folder, 3);
    let id = folder.file_name().unwrap().to_str().unwrap().to_string();

    // Pause: the worker holds between two steps, says so in state.json, the event log and
    // `runs`; resume goes on.
    let out = run_cmd(&data, &["pause"]);
    assert!(out.contains("to pause"), "{out}");
    let st = wait_for(30, "the pause", || {
        state(&folder).filter(|s| s["paused"] == true)
    });
    let held = step(&st);
    std::thread::sleep(Duration::from_millis(1500));
    let st = state(&folder).unwrap();
    assert_eq!(step(&st), held, "no step while paused: {st}");
    assert_eq!(st["state"], "running", "{st}");
    let out = run_cmd(&data, &["runs"]);
    assert!(out.lines().next().unwrap().contains("paused"), "{out}");
    run_cmd(&data, &["resume", &id]);
    wait_for(30, "training to go on", || {
        state(&folder).filter(|s| s["paused"].is_null() && step(s) > held)
    });
    let events = read_events(&folder.join("events.jsonl")).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Paused { step } if *step as u64 == held)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Resumed { paused_s, .. } if *paused_s >= 1.0)),
        "{events:?}"
    );

    let out = run_cmd(&data, &["stop", &id[..id.len() - 3]]);
    assert!(out.contains("asked run"), "{out}");
    let st = wait_done(&folder, 60);
    assert_eq!(st["state"], "stopped", "{st}");
    let at = step(&st);
    assert!(at >= 3 && at < st["total_steps"].as_u64().unwrap(), "{st}");
    assert!(folder.join("checkpoint.safetensors").is_file());
    assert!(dir.path().join("out/detached-v1.zip").is_file());
    let events = read_events(&folder.join("events.jsonl")).unwrap();
    assert!(
        matches!(events.last(), Some(Event::Finished { stopped: true, step, .. }) if *step as u64 == at),
        "{:?}",
        events.last()
    );
    let out = run_cmd(&data, &["runs"]);
    assert!(out.lines().next().unwrap().contains("stopped"), "{out}");
    // Nothing is left running to stop.
    let out = run(&data, &["stop"], 20);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("no run is running"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn a_stopped_or_killed_run_resumes_to_the_prompt_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 12.0, "out");
    let text_of = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text_of.replace("save_every = 1000", "save_every = 50"),
    )
    .unwrap();
    let (folder, first) = launch(&data, &cfg);
    let id = folder.file_name().unwrap().to_str().unwrap().to_string();
    let checkpoint_step = |out: &str| -> u64 {
        let rest = out
            .split("from its checkpoint at step ")
            .nth(1)
            .unwrap_or_else(|| panic!("{out}"));
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let new_worker = |old: i32| {
        Worker(wait_for(20, "the new worker's pid", || {
            let st = state(&folder)?;
            let pid = st["pid"].as_u64()? as i32;
            (st["state"] == "running" && pid != old).then_some(pid)
        }))
    };

    // Stopped: goes on from the checkpoint written when it stopped.
    wait_steps(&folder, 3);
    run_cmd(&data, &["stop", &id]);
    let st = wait_done(&folder, 60);
    assert_eq!(st["state"], "stopped", "{st}");
    let stopped_at = step(&st);
    let out = run_cmd(&data, &["resume"]);
    assert_eq!(checkpoint_step(&out), stopped_at, "{out}");
    assert!(out.contains(&format!("softtune attach {id}")), "{out}");
    let second = new_worker(first.0);

    // Killed while paused, past its last checkpoint: goes on from that checkpoint, and the
    // steps after it are done again.
    wait_steps(&folder, stopped_at + 1);
    run_cmd(&data, &["pause", &id]);
    let paused = wait_for(30, "the pause", || {
        state(&folder).filter(|s| s["paused"] == true)
    });
    // SAFETY: kills the worker this test started.
    unsafe {
        assert_eq!(libc::kill(second.0, libc::SIGKILL), 0);
    }
    wait_for(20, "`runs` to report the dead worker", || {
        let out = run_cmd(&data, &["runs"]);
        out.lines().next()?.contains("failed").then_some(())
    });
    let out = run_cmd(&data, &["resume", &id[..id.len() - 2]]);
    let from = checkpoint_step(&out);
    // The newest checkpoint at or before the paused step: a periodic one (every 50 steps), or
    // the stop's own when no periodic one came after it.
    assert_eq!(
        from,
        (step(&paused) / 50 * 50).max(stopped_at),
        "{out} {paused}"
    );
    assert!(from >= stopped_at, "{out}");
    let third = new_worker(second.0);
    // A second worker on the same run folder (two resumes at once) leaves at once and
    // touches nothing.
    let out = run(&data, &["worker", folder.to_str().unwrap()], 20);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("another worker already trains it"),
        "{:?}",
        text(&out)
    );
    let st = state(&folder).unwrap();
    assert_eq!(st["pid"].as_u64(), Some(third.0 as u64), "{st}");
    let st = wait_done(&folder, 120);
    assert_eq!(st["state"], "finished", "{st}");

    // The same prompt, bit for bit, as one uninterrupted run.
    let reference = uninterrupted(&data, dir.path(), &cfg, "out-fg");
    for export in ["detached-v1.zip", "detached-v1-peft"] {
        assert_eq!(
            prompt_bits(&dir.path().join("out").join(export)),
            prompt_bits(&reference.join(export)),
            "{export} differs from an uninterrupted run's"
        );
    }

    // One history: three starts in the event log, every step once in the dashboard's view.
    let events = read_events(&folder.join("events.jsonl")).unwrap();
    let starts: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Started { start_step, .. } => Some(*start_step as u64),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec![0, stopped_at, from]);
    let view = softtune::tui::RunView::from_events(&events);
    let steps: Vec<usize> = view.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=view.total_steps).collect::<Vec<_>>());
    assert!(
        view.steps
            .windows(2)
            .all(|w| w[0].elapsed_s <= w[1].elapsed_s),
        "training time never goes back"
    );
    assert_eq!(view.finished, Some(false));

    // Nothing is left to resume.
    let out = run(&data, &["resume", &id], 20);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("has finished"), "{:?}", text(&out));
}

#[test]
fn a_foreground_run_goes_on_when_run_again() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 3.0, "out");
    let run_dir = dir.path().join("fg-run");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "train".to_string(),
            "--foreground".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Ctrl-C after a few steps: it stops with a checkpoint.
    let mut child = softtune(&data)
        .args(args(&[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 3/") {
            break;
        }
    }
    // SAFETY: signals the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    let stopped = rest
        .iter()
        .find_map(|l| l.strip_prefix("stopped at step "))
        .and_then(|l| l.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{rest:?}"));
    assert!(
        rest.iter()
            .any(|l| l.contains("the same command goes on from its checkpoint")),
        "{rest:?}"
    );

    let checkpoint = run_dir.join("checkpoint.safetensors");
    let kept = dir.path().join("stopped.safetensors");
    std::fs::copy(&checkpoint, &kept).unwrap();

    // The same command again goes on from there, to an uninterrupted run's prompt.
    let again: Vec<String> = args(&[]);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let out = run(&data, &again, 60);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "holds this run's checkpoint at step {stopped} of 312: going on from it"
        )),
        "{stdout}"
    );
    let reference = uninterrupted(&data, dir.path(), &cfg, "out-2");
    assert_eq!(
        prompt_bits(&dir.path().join("out/detached-v1.zip")),
        prompt_bits(&reference.join("detached-v1.zip"))
    );

    // Finished: the same command starts over; so does --fresh on an unfinished checkpoint.
    let started_at = || match read_events(&run_dir.join("events.jsonl"))
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| matches!(e, Event::Started { .. }))
    {
        Some(Event::Started { start_step, .. }) => start_step,
        other => panic!("{other:?}"),
    };
    let starts_over = |extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run(&data, &a, 60);
        assert!(out.status.success(), "{:?}", text(&out));
        assert!(
            !text(&out).0.contains("going on from it"),
            "{:?}",
            text(&out)
        );
        assert_eq!(started_at(), 0);
    };
    starts_over(&[]);
    std::fs::copy(&kept, &checkpoint).unwrap();
    starts_over(&["--fresh"]);
}

#[test]
fn bad_input_is_reported_before_detaching() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 1.0, "out");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 0.05", "lr = -1");
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = run(&data, &["train", "--config", cfg.to_str().unwrap()], 20);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("training.lr"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Planning errors too (too few sequences for one step), and no run folder is left.
    let cfg = config(dir.path(), "run.toml", 1.0, "out");
    let t = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("grad_accumulation = 2", "grad_accumulation = 5000");
    std::fs::write(&cfg, t).unwrap();
    let out = run(&data, &["train", "--config", cfg.to_str().unwrap()], 20);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("fewer than one optimizer step"), "{stderr}");
    let left = std::fs::read_dir(data.join("runs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no run folder for a run that never started");

    let out = run_cmd(&data, &["runs"]);
    assert!(out.starts_with("no runs in"), "{out}");
    let out = run(&data, &["attach", "nope"], 20);
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(stderr.contains("no run \"nope\""), "{stderr}");
}

/// A terminal for a child process: the master side of a pseudo-terminal (80×24), drained by
/// a thread into `screen`; `hang_up` closes it, as a dropped SSH connection does.
struct Pty {
    slave: std::os::fd::OwnedFd,
    master_writer: std::fs::File,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    close: std::sync::Arc<std::sync::atomic::AtomicBool>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    fn open() -> Pty {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two descriptors; the winsize outlives the call.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty failed");
        // openpty leaves both open across exec: a child holding the master would keep the
        // terminal alive.
        for fd in [m, s] {
            // SAFETY: sets a flag on a descriptor owned here.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: both descriptors were just opened and are owned here.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let master_writer = std::fs::File::from(master.try_clone().unwrap());
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let close = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (scr, cl) = (screen.clone(), close.clone());
        let drain = std::thread::spawn(move || {
            use std::io::Read;
            use std::os::fd::AsRawFd;
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 4096];
            while !cl.load(std::sync::atomic::Ordering::SeqCst) {
                let mut p = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 50) } > 0 {
                    match f.read(&mut buf) {
                        Ok(n) if n > 0 => scr.lock().unwrap().extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
            }
            // Dropping `f` closes this copy of the master.
        });
        Pty {
            slave,
            master_writer,
            screen,
            close,
            drain: Some(drain),
        }
    }

    /// `cmd` in a new session with the pty as stdin/stdout/stderr and, if `controlling`,
    /// as its controlling terminal (then closing the pty sends it SIGHUP).
    fn spawn(&self, mut cmd: Command, controlling: bool) -> std::process::Child {
        let s = || Stdio::from(self.slave.try_clone().unwrap());
        cmd.stdin(s()).stdout(s()).stderr(s());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || (controlling && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    fn type_keys(&mut self, s: &str) {
        use std::io::Write;
        self.master_writer.write_all(s.as_bytes()).unwrap();
    }

    /// Closes every descriptor of the master side: the terminal is gone.
    fn hang_up(mut self) {
        self.close.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drain.take().unwrap().join().unwrap();
        drop(self.master_writer);
        drop(self.slave);
    }
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn the_dashboard_detaches_on_q_and_ends_with_its_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("share");
    let cfg = config(dir.path(), "run.toml", 50.0, "out");
    let (folder, _worker) = launch(&data, &cfg);
    wait_steps(&folder, 2);

    // On a terminal, attach is the dashboard; q leaves it and the run goes on.
    let mut pty = Pty::open();
    let mut dash = pty.spawn(
        {
            let mut c = softtune(&data);
            c.args(["attach", "--theme", "mono"]);
            c
        },
        true,
    );
    wait_for(20, "the dashboard", || {
        pty.screen().contains("softtune · run").then_some(())
    });
    let screen = pty.screen();
    assert!(screen.contains("\x1b[?1049h"), "alternate screen");
    assert!(screen.contains("q detach"), "{screen}");
    pty.type_keys("q");
    let st = wait_exit(&mut dash, 10).expect("q leaves the dashboard");
    assert!(st.success(), "{st:?}");
    wait_for(5, "the goodbye line", || {
        pty.screen()
            .contains("the run goes on in the background")
            .then_some(())
    });
    assert!(pty.screen().contains("\x1b[?1049l"), "terminal restored");
    assert_eq!(state(&folder).unwrap()["state"], "running");
    pty.hang_up();

    // Two dashboards watch the run at once. A dashboard whose terminal disappears ends by
    // itself (it neither lingers nor spins), with the hang-up signal (a controlling
    // terminal) or without it (end of input only), and the run goes on.
    let ptys: Vec<(Pty, std::process::Child, bool)> = [true, false]
        .into_iter()
        .map(|controlling| {
            let pty = Pty::open();
            let child = pty.spawn(
                {
                    let mut c = softtune(&data);
                    c.arg("attach");
                    c
                },
                controlling,
            );
            (pty, child, controlling)
        })
        .collect();
    for (pty, _, _) in &ptys {
        wait_for(20, "both dashboards", || {
            pty.screen().contains("softtune · run").then_some(())
        });
    }
    for (pty, mut dash, controlling) in ptys {
        let pid = dash.id() as i32;
        pty.hang_up();
        assert!(
            wait_exit(&mut dash, 10).is_some(),
            "the dashboard outlived its terminal (pid {pid}, controlling terminal: {controlling})"
        );
        let st = state(&folder).unwrap();
        assert_eq!(st["state"], "running", "{st}");
    }
}
